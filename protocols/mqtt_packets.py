"""MQTT 3.1.1 / 5 control packets a subscriber needs. Pure: bytes in, packets out; no sockets.

The collector's network loop (:mod:`collector.mqtt_client`) reads the socket in large chunks and
hands them to :class:`PacketReader`, which splits every complete packet out of the stream in one
pass: PUBLISH packets as ``(topic, payload, packet_id, qos)`` tuples (topic and payload stay
bytes), every other packet as ``(type, flags, body)``. Encoders build CONNECT, SUBSCRIBE,
PUBACK (many at once: one bytes object for a whole batch of acknowledgements), PINGREQ and
DISCONNECT. Only what a QoS 0/1 subscriber uses is implemented: no will message, no QoS 2, no
topic aliases (the client never announces a Topic Alias Maximum, so a broker sends none).

References: MQTT Version 3.1.1 (OASIS, 2014) §2-§3; MQTT Version 5.0 (OASIS, 2019) §2-§3.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from meterwatch.core.errors import ProtocolError

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK = 8, 9
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14

#: MQTT 5 property identifiers used here (§2.2.2.2).
PROP_SESSION_EXPIRY = 0x11
PROP_RECEIVE_MAXIMUM = 0x21

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"

#: A received PUBLISH: (topic, payload, packet id (0 for QoS 0), QoS).
Publish = tuple[bytes, bytes, int, int]
#: Any other received packet: (packet type, fixed-header flags, body after the length).
Control = tuple[int, int, bytes]

#: CONNACK return codes of MQTT 3.1.1 (§3.2.2.3); MQTT 5 reason codes are named by number.
CONNACK_V3 = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


def encode_varint(n: int) -> bytes:
    """Variable byte integer (§1.5.5 / §2.2.3): 7 bits per byte, high bit = more follows."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def decode_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it); ProtocolError if longer than 4 bytes or cut short."""
    value = shift = 0
    for i in range(pos, min(pos + 4, len(buf))):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise ProtocolError("malformed variable byte integer in MQTT packet")


def _utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 65535:
        raise ValueError("MQTT string longer than 65535 bytes")
    return struct.pack("!H", len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_varint(len(body)) + body


def encode_connect(
    client_id: str,
    *,
    keepalive_s: int,
    v5: bool = False,
    clean: bool = False,
    username: str | None = None,
    password: str | None = None,
    session_expiry_s: int | None = None,
    receive_maximum: int | None = None,
) -> bytes:
    """CONNECT (§3.1). ``clean`` is Clean Session (3.1.1) / Clean Start (5)."""
    flags = 0x02 if clean else 0
    if username is not None:
        flags |= 0x80
        if password is not None:
            flags |= 0x40
    body = b"\x00\x04MQTT" + bytes([5 if v5 else 4, flags]) + struct.pack("!H", keepalive_s)
    if v5:
        props = b""
        if session_expiry_s is not None:
            props += bytes([PROP_SESSION_EXPIRY]) + struct.pack("!I", session_expiry_s)
        if receive_maximum is not None:
            props += bytes([PROP_RECEIVE_MAXIMUM]) + struct.pack("!H", receive_maximum)
        body += encode_varint(len(props)) + props
    body += _utf8(client_id)
    if username is not None:
        body += _utf8(username)
        if password is not None:
            pw = password.encode("utf-8")
            body += struct.pack("!H", len(pw)) + pw
    return _packet(CONNECT << 4, body)


def encode_subscribe(
    packet_id: int, filters: Sequence[tuple[str, int]], *, v5: bool = False
) -> bytes:
    """SUBSCRIBE (§3.8) of ``(filter, max QoS)`` pairs."""
    body = struct.pack("!H", packet_id) + (b"\x00" if v5 else b"")
    for topic, qos in filters:
        body += _utf8(topic) + bytes([qos])
    return _packet((SUBSCRIBE << 4) | 0x02, body)


_PUBACK = struct.Struct("!BBH")


def encode_pubacks(packet_ids: Sequence[int]) -> bytes:
    """PUBACK (§3.4) for each packet id, concatenated: one write acknowledges a whole batch.

    The 2-byte form is valid in both versions (MQTT 5: no reason code means Success).
    """
    pack = _PUBACK.pack
    return b"".join([pack(0x40, 2, pid) for pid in packet_ids])


def parse_connack(body: bytes, v5: bool) -> tuple[bool, int, str]:
    """(session present, return/reason code, reason text) of a CONNACK body."""
    if len(body) < 2:
        raise ProtocolError("CONNACK too short")
    code = body[1]
    if v5:
        reason = "success" if code == 0 else f"reason code 0x{code:02x}"
    else:
        reason = "accepted" if code == 0 else CONNACK_V3.get(code, f"return code {code}")
    return bool(body[0] & 1), code, reason


def parse_suback(body: bytes, v5: bool) -> tuple[int, list[int]]:
    """(packet id, granted QoS / reason code per filter) of a SUBACK body."""
    if len(body) < 3:
        raise ProtocolError("SUBACK too short")
    pos = 2
    if v5:
        plen, pos = decode_varint(body, pos)
        pos += plen
    return struct.unpack_from("!H", body)[0], list(body[pos:])


class PacketReader:
    """Splits a byte stream into MQTT packets; keeps an incomplete tail for the next chunk."""

    def __init__(self, *, v5: bool = False, max_packet: int = 16 * 1024 * 1024):
        self.v5 = v5
        self.max_packet = max_packet
        self._tail = b""

    def feed(self, data: bytes) -> tuple[list[Publish], list[Control]]:
        """Every complete packet in the stream so far: (PUBLISH tuples, other packets)."""
        buf = self._tail + data if self._tail else data
        n = len(buf)
        pos = 0
        pubs: list[Publish] = []
        other: list[Control] = []
        v5 = self.v5
        while pos + 2 <= n:
            first = buf[pos]
            # Remaining length (variable byte integer), inlined: this loop runs per message.
            i = pos + 1
            byte = buf[i]
            length = byte & 0x7F
            shift = 7
            while byte & 0x80:
                i += 1
                if i >= n:
                    break
                if shift > 21:
                    raise ProtocolError("malformed remaining length in MQTT packet")
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                shift += 7
            else:
                i += 1
                end = i + length
                if end > n:
                    if length > self.max_packet:
                        raise ProtocolError(f"MQTT packet of {length} bytes exceeds the limit")
                    break
                kind = first >> 4
                if kind == PUBLISH:
                    qos = (first >> 1) & 3
                    tlen = (buf[i] << 8) | buf[i + 1]
                    j = i + 2 + tlen
                    topic = buf[i + 2 : j]
                    pid = 0
                    if qos:
                        if qos > 1:
                            raise ProtocolError("QoS 2 PUBLISH on a QoS 1 subscription")
                        pid = (buf[j] << 8) | buf[j + 1]
                        j += 2
                    if v5:
                        plen, j = decode_varint(buf, j)
                        j += plen
                    pubs.append((topic, buf[j:end], pid, qos))
                else:
                    other.append((kind, first & 0x0F, buf[i:end]))
                pos = end
                continue
            break  # remaining length cut short: wait for more bytes
        self._tail = buf[pos:]
        return pubs, other

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete packet kept for the next chunk."""
        return len(self._tail)
