"""The MQTT subscriber's network loop: one thread, large reads, whole batches out, batched acks.

Why not paho's loop: paho reads a packet at a time (several ``recv`` calls and one callback per
message, under its locks) and queues each PUBACK separately, waking its loop through a socket
pair every time. At tens of thousands of messages per second that per-message Python work is
most of the ingest cost (docs/benchmarks.md). Here one ``recv`` of up to 256 KiB is split into
all its packets by :class:`~meterwatch.protocols.mqtt_packets.PacketReader`, the PUBLISH
packets go to ``on_batch`` as one list, and acknowledgements queued by :meth:`ack` (from any
thread) leave in one ``sendall`` per batch.

Connection: persistent session (3.1.1 clean session off, 5 clean start off with a session
expiry), reconnect with exponential backoff (``reconnect_min_s`` doubling to
``reconnect_max_s``), TLS through an :class:`ssl.SSLContext` (certificate and host name
verified), optional user name and password. Keepalive: a PINGREQ goes out when nothing was sent
for ``keepalive_s``; the connection is given up only when *nothing at all* arrived for
1.5 x ``keepalive_s`` after that PINGREQ. A PINGRESP queued behind megabytes of backlog is
therefore never mistaken for a dead broker (paho's "keep alive timeout" under a full backlog),
while a broker that went silent is still detected.

Packet ids are per connection: every connection gets a new ``generation``; an acknowledgement
for an older generation is dropped (the broker sends that message again on the new connection).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meterwatch.core.errors import ProtocolError
from meterwatch.protocols import mqtt_packets as mp

log = logging.getLogger(__name__)

#: Bytes asked of the socket per read (asyncio's selector transports use the same maximum).
READ_SIZE = 256 * 1024


@dataclass
class ConnectOptions:
    """What CONNECT and SUBSCRIBE carry."""

    client_id: str
    subscriptions: Sequence[tuple[str, int]]
    v5: bool = False
    keepalive_s: int = 60
    username: str | None = None
    password: str | None = None
    session_expiry_s: int = 86400
    receive_maximum: int = 10000


class MqttConnectionError(OSError):
    """The broker refused the connection or broke the protocol; reconnected with backoff."""


class MqttSubscriber:
    """A persistent-session QoS 0/1 subscriber in its own network thread.

    ``on_batch(publishes, generation)`` runs in the network thread with every PUBLISH of one
    read; ``on_connect(session_present)`` and ``on_disconnect(reason)`` run there too.
    """

    def __init__(
        self,
        host: str,
        port: int,
        options: ConnectOptions,
        *,
        on_batch: Callable[[list[mp.Publish], int], None],
        on_connect: Callable[[bool], None] | None = None,
        on_disconnect: Callable[[str], None] | None = None,
        on_subscribed: Callable[[list[int]], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        max_unacked: int | None = None,
        max_unacked_bytes: int | None = None,
    ):
        self.host, self.port = host, port
        #: Stop reading the socket while this many QoS 1 messages wait for their PUBACK: TCP
        #: flow control then holds the rest at the broker (MQTT 3.1.1 has no receive maximum,
        #: and Mosquitto's max_inflight_messages does not bound a resumed session's backlog).
        self.max_unacked = max_unacked
        #: The same bound in payload bytes (batch payloads carry 100 readings or more each).
        self.max_unacked_bytes = max_unacked_bytes
        self._unacked = 0  # network thread
        self._unacked_bytes: dict[int, int] = {}  # packet id -> payload bytes (network thread)
        self._unacked_total = 0
        self._reconnect_requested = False
        self.options = options
        self.on_batch = on_batch
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.on_subscribed = on_subscribed
        self.ssl_context = ssl_context
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.connect_timeout_s = connect_timeout_s
        #: Connection number; bumped when a connection ends (its packet ids become invalid).
        self.generation = 0
        self.connected = threading.Event()
        self.pings_sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._acks: list[int] = []
        self._ack_generation = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sock: socket.socket | None = None

    # -- control (any thread) -----------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (retrying until the broker is up) and subscribe."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mqtt-network", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send the queued acknowledgements and DISCONNECT, then end the thread."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._thread = None

    def reconnect(self) -> None:
        """Close the connection now; the loop connects again (same session) right away."""
        sock = self._sock
        if sock is not None:
            self._reconnect_requested = True
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._wake()  # the loop may not be reading the socket (too many unacknowledged)

    def ack(self, packet_ids: Sequence[int], generation: int) -> bool:
        """Queue PUBACKs (one write per batch); False if their connection is gone."""
        with self._lock:
            if generation != self.generation or not self.connected.is_set():
                return False
            if self._ack_generation != generation:
                self._acks = []
                self._ack_generation = generation
            self._acks.extend(packet_ids)
        self._wake()
        return True

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\x00")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (buffer full) or we are shutting down

    # -- network thread -----------------------------------------------------------------

    def _run(self) -> None:
        delay = self.reconnect_min_s
        failing = False
        while not self._stop.is_set():
            try:
                self._session()
                delay = self.reconnect_min_s
                failing = False
            except (OSError, ProtocolError, ssl.SSLError) as exc:
                if not failing and not self._stop.is_set():
                    log.warning("MQTT %s:%d: %s; reconnecting", self.host, self.port, exc)
                failing = True
            finally:
                self._close()
            if self._stop.wait(delay if failing else 0.0):
                break
            if failing:
                delay = min(delay * 2, self.reconnect_max_s)
        self._wake_r.close()
        self._wake_w.close()

    def _close(self) -> None:
        was = self.connected.is_set()
        with self._lock:
            self.connected.clear()
            self.generation += 1
            self._acks = []
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        if was and self.on_disconnect is not None:
            self.on_disconnect("connection closed" if self._stop.is_set() else "connection lost")

    def _session(self) -> None:
        o = self.options
        raw = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        sock: socket.socket = raw
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(raw, server_hostname=self.host)
        self._sock = sock
        reader = mp.PacketReader(v5=o.v5)
        sock.sendall(
            mp.encode_connect(
                o.client_id,
                keepalive_s=o.keepalive_s,
                v5=o.v5,
                username=o.username,
                password=o.password,
                session_expiry_s=o.session_expiry_s if o.v5 else None,
                receive_maximum=o.receive_maximum if o.v5 else None,
            )
        )
        pending: list[mp.Publish] = []
        deadline = time.monotonic() + self.connect_timeout_s
        connack: mp.Control | None = None
        while connack is None:
            if time.monotonic() > deadline:
                raise MqttConnectionError("no CONNACK from the broker")
            data = sock.recv(READ_SIZE)
            if not data:
                raise MqttConnectionError("broker closed the connection before CONNACK")
            pubs, other = reader.feed(data)
            pending.extend(pubs)
            for packet in other:
                if packet[0] == mp.CONNACK:
                    connack = packet
        session, code, reason = mp.parse_connack(connack[2], o.v5)
        if code != 0:
            log.error("MQTT broker %s:%d refused connection: %s", self.host, self.port, reason)
            raise MqttConnectionError(f"connection refused: {reason}")
        sock.sendall(mp.encode_subscribe(1, o.subscriptions, v5=o.v5))
        sock.settimeout(max(float(o.keepalive_s), 1.0))
        with self._lock:
            self.connected.set()
            generation = self.generation
        if self.on_connect is not None:
            self.on_connect(session)
        self._unacked = sum(1 for p in pending if p[3])
        self._unacked_bytes = {p[2]: len(p[1]) for p in pending if p[3]}
        self._unacked_total = sum(self._unacked_bytes.values())
        self._reconnect_requested = False
        if pending:
            self.on_batch(pending, generation)
        self._loop(sock, reader, generation)

    def _loop(self, sock: socket.socket, reader: mp.PacketReader, generation: int) -> None:
        keepalive = float(self.options.keepalive_s)
        cap = self.max_unacked
        cap_bytes = self.max_unacked_bytes
        last_in = last_out = time.monotonic()
        ping_at: float | None = None
        wake = self._wake_r
        tls = sock if isinstance(sock, ssl.SSLSocket) else None
        while True:
            if self._stop.is_set():
                self._flush_acks(sock)
                try:
                    sock.sendall(mp.DISCONNECT_PACKET)
                except OSError:
                    pass
                return
            if self._reconnect_requested:
                self._reconnect_requested = False
                raise MqttConnectionError("reconnecting to fetch messages left with the broker")
            now = time.monotonic()
            timeout = max(0.0, last_out + keepalive - now) if keepalive else 1.0
            if ping_at is not None:
                timeout = min(timeout, max(0.0, last_in + 1.5 * keepalive - now))
            readable: list[socket.socket]
            paused = (cap is not None and self._unacked >= cap) or (
                cap_bytes is not None and self._unacked_total >= cap_bytes
            )
            if tls is not None and tls.pending() and not paused:
                readable = [sock]
            else:
                watch = [wake] if paused else [sock, wake]
                readable, _, _ = select.select(watch, [], [], min(timeout, 1.0))
            if sock in readable:
                data = sock.recv(READ_SIZE)
                if not data:
                    raise MqttConnectionError("broker closed the connection")
                last_in = time.monotonic()
                ping_at = None  # anything received proves the broker alive
                pubs, other = reader.feed(data)
                for kind, _flags, body in other:
                    if kind == mp.SUBACK and self.on_subscribed is not None:
                        self.on_subscribed(mp.parse_suback(body, self.options.v5)[1])
                    elif kind == mp.DISCONNECT:
                        code = body[0] if body else 0
                        raise MqttConnectionError(f"broker sent DISCONNECT (reason 0x{code:02x})")
                if pubs:
                    self._unacked += sum(1 for p in pubs if p[3])
                    if cap_bytes is not None:
                        sizes = {p[2]: len(p[1]) for p in pubs if p[3]}
                        self._unacked_bytes.update(sizes)
                        self._unacked_total += sum(sizes.values())
                    self.on_batch(pubs, generation)
            if wake in readable:
                try:
                    while wake.recv(4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
            if self._flush_acks(sock):
                last_out = time.monotonic()
            now = time.monotonic()
            if keepalive and now - last_out >= keepalive:
                sock.sendall(mp.PINGREQ_PACKET)
                self.pings_sent += 1
                last_out = now
                if ping_at is None:
                    ping_at = now
            if ping_at is not None and keepalive and now - last_in > 1.5 * keepalive:
                raise MqttConnectionError(
                    f"nothing received for {now - last_in:.0f} s after PINGREQ (keepalive "
                    f"{keepalive:.0f} s)"
                )

    def _flush_acks(self, sock: socket.socket) -> bool:
        with self._lock:
            acks, self._acks = self._acks, []
        if not acks:
            return False
        sock.sendall(mp.encode_pubacks(acks))
        self._unacked = max(0, self._unacked - len(acks))
        if self._unacked_bytes:
            pop = self._unacked_bytes.pop
            self._unacked_total -= sum(pop(pid, 0) for pid in acks)
        return True


def tls_context(
    ca_file: str | os.PathLike[str] | None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A client context that verifies the broker's certificate and host name (never insecure)."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
