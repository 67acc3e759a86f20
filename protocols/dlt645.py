"""DL/T 645-2007 frame codec: frames, BCD values and data identifiers, pure bytes (no sockets).

Wire format of one frame::

    [FE]*0..4  68  A0 A1 A2 A3 A4 A5  68  C  L  DATA(L bytes, each +33H)  CS  16

* ``FE`` wake-up bytes precede a frame on RS-485; they are optional and not part of it.
* ``A0..A5``: the 12-digit meter address in BCD, least significant byte first.
  ``AAAAAAAAAAAA`` is the wildcard (read-address) address, ``999999999999`` the broadcast one.
* ``C``: control code. D7 = 1 for a reply (slave to master), D6 = 1 for an abnormal reply,
  D5 = 1 when follow-up frames exist, D4..D0 the function (11H read data, 13H read address).
* ``L``: number of data bytes. Every data byte is sent with 33H added (mod 256).
* ``CS``: sum mod 256 of every byte from the first 68H through the last data byte.

Read request data is the data identifier (DI, 4 bytes, least significant byte first). A normal
reply (91H, or B1H with follow-up frames) echoes the DI followed by the value in BCD, least
significant byte first; for signed formats the top bit of the most significant byte is the
sign (sign and magnitude). An abnormal reply (D1H) carries one error-status byte.

Sources for the details: DL/T 645-2007 as summarised in public implementations and notes —
the 600888/dlt645 library (frame building, ±33H, checksum, error-status bits, sign bit and the
DI format table ``variable_types.json``), chinawrj/esphome-component-dlt645 (DIs used on real
meters), and worked frames published by 亿佰特 (mbb.eet-china.com forum topic 114707), which the
tests replay byte for byte.

Only the vocabulary needed to *read* a meter is defined here: read requests (11H, 13H) and the
replies to them. The simulator also uses the reply encoders.

The meter clock is two parameter-class DIs of the standard's data-identifier table (appendix A):
``04000101`` date and weekday, format YYMMDDWW (WW: 0 = Sunday .. 6 = Saturday), and
``04000102`` time of day, hhmmss, both BCD and sent least significant byte first (WW DD MM YY,
ss mm hh). They are not canonical quantities, so they live in their own small codec
(:data:`CLOCK_DIS`, :func:`parse_clock_date`, :func:`parse_clock_time`); the clock is the meter's
local time, without a zone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, time
from decimal import ROUND_HALF_UP, Decimal
from typing import NamedTuple

# The errors live in the project's one exception tree; re-exported here for existing callers.
from meterwatch.core.errors import Dlt645AbnormalReply, Dlt645FrameError, ProtocolError  # noqa: F401

START = 0x68
END = 0x16
WAKE_UP = 0xFE
DATA_OFFSET = 0x33
#: A frame without data: 68, 6 address bytes, 68, C, L, CS, 16.
MIN_FRAME_LEN = 12
MAX_PREAMBLE = 4
DEFAULT_PREAMBLE = 4

# Control code bits: D7 direction, D6 abnormal reply, D5 follow-up frames, D4..D0 function.
REPLY_BIT = 0x80
ABNORMAL_BIT = 0x40
FOLLOWUP_BIT = 0x20
FUNCTION_MASK = 0x1F

#: Master requests this module can build. Both only read.
READ_DATA = 0x11
READ_ADDRESS = 0x13
READ_FUNCTIONS = frozenset({READ_DATA, READ_ADDRESS})
#: Replies to them.
READ_DATA_REPLY = READ_DATA | REPLY_BIT  # 91H
READ_DATA_REPLY_FOLLOWUP = READ_DATA_REPLY | FOLLOWUP_BIT  # B1H
READ_DATA_ABNORMAL = READ_DATA_REPLY | ABNORMAL_BIT  # D1H
READ_ADDRESS_REPLY = READ_ADDRESS | REPLY_BIT  # 93H

WILDCARD_ADDRESS = "AAAAAAAAAAAA"
BROADCAST_ADDRESS = "999999999999"

#: Error-status byte of an abnormal reply: bit -> reason. Bit 7 is reserved.
ERROR_BITS: dict[int, str] = {
    0x01: "other error",
    0x02: "no data requested",
    0x04: "password error or unauthorized",
    0x08: "baud rate cannot be changed",
    0x10: "annual time zone count exceeded",
    0x20: "daily time slot count exceeded",
    0x40: "tariff count exceeded",
}
ERR_OTHER = 0x01
ERR_NO_DATA = 0x02


class DataItem(NamedTuple):
    """How one data identifier's value is coded: canonical column, size and BCD format."""

    name: str  #: canonical column (meterwatch.core.schema.READING_FIELDS), unit in its suffix
    nbytes: int  #: value bytes on the wire (2 BCD digits each)
    decimals: int  #: implied decimal places
    signed: bool  #: top bit of the most significant byte is the sign


#: DI (most significant byte first, as the standard writes it) -> how its value is coded.
#: Formats from the standard's data-identifier table: energy XXXXXX.XX kWh, voltage XXX.X V, current
#: XXX.XXX A, power XX.XXXX kW/kvar, power factor X.XXX, frequency XX.XX Hz.
DATA_ITEMS: dict[str, DataItem] = {
    "00010000": DataItem("energy_import_kwh", 4, 2, False),  # forward active total energy
    "00020000": DataItem("energy_export_kwh", 4, 2, False),  # reverse active total energy
    "02030000": DataItem("power_kw", 3, 4, True),  # total active power
    "02040000": DataItem("reactive_power_kvar", 3, 4, True),  # total reactive power
    "02010100": DataItem("voltage_l1_v", 2, 1, False),  # phase A voltage
    "02010200": DataItem("voltage_l2_v", 2, 1, False),
    "02010300": DataItem("voltage_l3_v", 2, 1, False),
    "02020100": DataItem("current_l1_a", 3, 3, True),  # phase A current
    "02020200": DataItem("current_l2_a", 3, 3, True),
    "02020300": DataItem("current_l3_a", 3, 3, True),
    "02060000": DataItem("power_factor", 2, 3, True),  # total power factor
    "02800002": DataItem("frequency_hz", 2, 2, False),  # grid frequency
}

#: Block DIs: one request returns the members' values back to back, in this order.
BLOCKS: dict[str, tuple[str, ...]] = {
    "0201FF00": ("02010100", "02010200", "02010300"),  # voltage data block
    "0202FF00": ("02020100", "02020200", "02020300"),  # current data block
}

#: Canonical column -> DI.
DI_BY_NAME: dict[str, str] = {item.name: di for di, item in DATA_ITEMS.items()}

#: Meter clock: date and weekday (YYMMDDWW, 4 bytes) and time of day (hhmmss, 3 bytes).
CLOCK_DATE_DI = "04000101"
CLOCK_TIME_DI = "04000102"
#: DI -> value bytes of the clock DIs.
CLOCK_DIS: dict[str, int] = {CLOCK_DATE_DI: 4, CLOCK_TIME_DI: 3}


def error_reasons(status: int) -> list[str]:
    """Readable reasons for the set bits of an error-status byte (empty byte: unspecified)."""
    reasons = [text for bit, text in ERROR_BITS.items() if status & bit]
    if status & 0x80:
        reasons.append("reserved bit 7")
    return reasons or ["no error bit set"]


@dataclass(frozen=True)
class Frame:
    """One decoded frame. ``data`` has the 33H offset already removed."""

    address: str
    control: int
    data: bytes

    @property
    def function(self) -> int:
        """Function code (D4..D0), e.g. 11H for read data."""
        return self.control & FUNCTION_MASK

    @property
    def is_reply(self) -> bool:
        return bool(self.control & REPLY_BIT)

    @property
    def is_abnormal(self) -> bool:
        return bool(self.control & ABNORMAL_BIT)

    @property
    def has_followup(self) -> bool:
        return bool(self.control & FOLLOWUP_BIT)


# --------------------------------------------------------------------------- addresses, DIs

_ADDRESS_RE = re.compile(r"[0-9A]{1,12}")
_DI_SEPARATORS = re.compile(r"[\s_.:-]")


def normalize_address(address: str) -> str:
    """The 12-character form of a meter address (digits, or ``A`` for wildcard nibbles).

    Shorter all-digit addresses are padded with leading zeros, as the standard pads the high
    bytes. Raises ValueError for anything else.
    """
    text = str(address).strip().upper()
    if not _ADDRESS_RE.fullmatch(text) or ("A" in text and len(text) != 12):
        raise ValueError(f"DL/T 645 address must be up to 12 decimal digits, got {address!r}")
    return text.zfill(12)


def encode_address(address: str) -> bytes:
    """The 6 wire bytes of an address, least significant byte first."""
    return bytes.fromhex(normalize_address(address))[::-1]


def decode_address(raw: bytes, offset: int = 0) -> str:
    """Address from its 6 wire bytes; ``offset`` (of raw[0] in the frame) is for errors."""
    for i, byte in enumerate(raw):
        for nibble, half in ((byte >> 4, "high"), (byte & 0x0F, "low")):
            if nibble > 9 and nibble != 0xA:
                raise Dlt645FrameError(
                    f"address byte {byte:02X}H at offset {offset + i} has invalid BCD "
                    f"digit {nibble:X}H in its {half} nibble",
                    offset + i,
                )
    return raw[::-1].hex().upper()


def normalize_di(di: str) -> str:
    """Canonical DI text: 8 upper-case hex digits, most significant byte first.

    Accepts ``"00010000"``, ``"00 01 00 00"``, ``"0x00010000"``; raises ValueError otherwise.
    """
    text = _DI_SEPARATORS.sub("", str(di)).upper().removeprefix("0X")
    if not re.fullmatch(r"[0-9A-F]{8}", text):
        raise ValueError(f"DL/T 645-2007 DI must be 4 bytes of hex, got {di!r}")
    return text


def di_to_bytes(di: str) -> bytes:
    """DI as sent: least significant byte first (before the 33H offset)."""
    return bytes.fromhex(normalize_di(di))[::-1]


def di_from_bytes(raw: bytes) -> str:
    """DI text from its 4 bytes as sent."""
    return raw[::-1].hex().upper()


# --------------------------------------------------------------------------------- BCD values


def _format_name(nbytes: int, decimals: int) -> str:
    digits = 2 * nbytes
    return "X" * (digits - decimals) + ("." + "X" * decimals if decimals else "")


def bcd_limit(nbytes: int, signed: bool) -> int:
    """Largest magnitude (in units of the last digit) a BCD field can hold.

    In signed fields the sign takes the top bit, so the top digit can only be 0..7.
    """
    digits = 2 * nbytes
    return int(8 * 10 ** (digits - 1) - 1 if signed else 10**digits - 1)


def encode_bcd(value: float, nbytes: int, decimals: int, signed: bool = False) -> bytes:
    """Encode ``value`` as ``nbytes`` of BCD, least significant byte first (before +33H).

    Rounds half away from zero to ``decimals`` places. Raises ValueError for NaN/inf, for a
    negative value in an unsigned field, and for a magnitude the field cannot hold.
    """
    if not math.isfinite(value):
        raise ValueError(f"cannot encode {value!r} as BCD")
    if value < 0 and not signed:
        raise ValueError(f"{value!r} is negative but {_format_name(nbytes, decimals)} is unsigned")
    scaled = Decimal(repr(float(abs(value)))).scaleb(decimals)
    magnitude = int(scaled.to_integral_value(rounding=ROUND_HALF_UP))
    if magnitude > bcd_limit(nbytes, signed):
        raise ValueError(
            f"{value!r} does not fit {'signed ' if signed else ''}"
            f"{_format_name(nbytes, decimals)} ({nbytes} bytes)"
        )
    big_endian = bytearray.fromhex(f"{magnitude:0{2 * nbytes}d}")
    if signed and value < 0 and magnitude:
        big_endian[0] |= 0x80
    return bytes(big_endian[::-1])


def decode_bcd(
    raw: bytes, decimals: int, signed: bool = False, *, offset: int = 0, what: str = "value"
) -> float:
    """Decode BCD bytes (least significant byte first, 33H already removed) to a float.

    ``offset`` is the position of ``raw[0]`` in whatever the caller reports against (e.g. the
    data field) and ``what`` names the quantity; both only shape the error message. Raises
    Dlt645FrameError naming the byte and nibble of an invalid BCD digit.
    """
    if not raw:
        raise Dlt645FrameError(f"{what}: no BCD bytes to decode", offset)
    big_endian = bytearray(raw[::-1])
    negative = False
    if signed:
        negative = bool(big_endian[0] & 0x80)
        big_endian[0] &= 0x7F
    for i, byte in enumerate(big_endian):
        for nibble, half in ((byte >> 4, "high"), (byte & 0x0F, "low")):
            if nibble > 9:
                pos = len(raw) - 1 - i
                raise Dlt645FrameError(
                    f"{what}: invalid BCD digit {nibble:X}H in the {half} nibble of byte "
                    f"{raw[pos]:02X}H at offset {offset + pos}",
                    offset + pos,
                )
    magnitude = int(big_endian.hex())
    result = magnitude / float(10**decimals)
    return -result if negative and magnitude else result


# ------------------------------------------------------------------------------------- frames


def checksum(data: bytes | bytearray) -> int:
    """Sum mod 256 (CS covers the first 68H through the last data byte)."""
    return sum(data) & 0xFF


def _shift(data: bytes | bytearray, delta: int) -> bytes:
    return bytes((b + delta) & 0xFF for b in data)


def encode_frame(
    address: str, control: int, data: bytes = b"", preamble: int = DEFAULT_PREAMBLE
) -> bytes:
    """A complete frame: ``preamble`` FEH bytes (0..4), then 68H … 16H.

    ``data`` is given plain; 33H is added to every byte here.
    """
    if not 0 <= preamble <= MAX_PREAMBLE:
        raise ValueError(f"preamble must be 0..{MAX_PREAMBLE} FEH bytes, got {preamble}")
    if not 0 <= control <= 0xFF:
        raise ValueError(f"control code must be one byte, got {control!r}")
    if len(data) > 0xFF:
        raise ValueError(f"data field is {len(data)} bytes; at most 255 fit the length byte")
    body = bytes([START, *encode_address(address), START, control, len(data)]) + _shift(
        data, DATA_OFFSET
    )
    return bytes([WAKE_UP] * preamble) + body + bytes([checksum(body), END])


def decode_frame(buf: bytes | bytearray) -> Frame:
    """Decode exactly one frame, optionally preceded by FEH wake-up bytes.

    Raises Dlt645FrameError naming the problem and its byte offset in ``buf``: missing start
    byte, invalid address BCD, a length byte that disagrees with the buffer, a bad checksum,
    or a missing 16H end byte.
    """
    start = 0
    while start < len(buf) and buf[start] == WAKE_UP:
        start += 1
    available = len(buf) - start
    if available < MIN_FRAME_LEN:
        raise Dlt645FrameError(
            f"frame too short: {available} bytes after {start} wake-up bytes, "
            f"a frame has at least {MIN_FRAME_LEN}",
            len(buf),
        )
    for pos in (start, start + 7):
        if buf[pos] != START:
            raise Dlt645FrameError(
                f"expected start byte 68H at offset {pos}, got {buf[pos]:02X}H", pos
            )
    length = buf[start + 9]
    expected = start + MIN_FRAME_LEN + length
    if len(buf) != expected:
        raise Dlt645FrameError(
            f"bad length: length byte at offset {start + 9} says {length} data bytes, so the "
            f"frame ends at offset {expected - 1}, but the buffer has {len(buf)} bytes",
            start + 9,
        )
    cs_pos = start + 10 + length
    computed = checksum(buf[start:cs_pos])
    if buf[cs_pos] != computed:
        raise Dlt645FrameError(
            f"bad checksum at offset {cs_pos}: frame says {buf[cs_pos]:02X}H, "
            f"bytes {start}..{cs_pos - 1} sum to {computed:02X}H",
            cs_pos,
        )
    if buf[cs_pos + 1] != END:
        raise Dlt645FrameError(
            f"missing end byte 16H at offset {cs_pos + 1}, got {buf[cs_pos + 1]:02X}H",
            cs_pos + 1,
        )
    return Frame(
        address=decode_address(bytes(buf[start + 1 : start + 7]), start + 1),
        control=buf[start + 8],
        data=_shift(buf[start + 10 : cs_pos], -DATA_OFFSET),
    )


def frame_length(frame: Frame) -> int:
    """Wire length of a frame from its first 68H through 16H (wake-up bytes excluded)."""
    return MIN_FRAME_LEN + len(frame.data)


_NEED_MORE = "need more"
_NOT_A_FRAME = "not a frame"


def _frame_at(buf: bytes | bytearray, i: int) -> tuple[str | Frame, int]:
    """Try to read a frame whose first 68H is at ``i``: (Frame, end) or a status string."""
    n = len(buf)
    if i + 7 >= n:
        return _NEED_MORE, i
    if buf[i + 7] != START:
        return _NOT_A_FRAME, i
    try:
        address = decode_address(bytes(buf[i + 1 : i + 7]))
    except Dlt645FrameError:
        return _NOT_A_FRAME, i
    if i + 9 >= n:
        return _NEED_MORE, i
    length = buf[i + 9]
    end = i + MIN_FRAME_LEN + length
    if end > n:
        return _NEED_MORE, i
    cs_pos = end - 2
    if buf[cs_pos] != checksum(buf[i:cs_pos]) or buf[end - 1] != END:
        return _NOT_A_FRAME, i
    return Frame(address, buf[i + 8], _shift(buf[i + 10 : cs_pos], -DATA_OFFSET)), end


def find_frame(buf: bytes | bytearray) -> tuple[Frame | None, int]:
    """Find the next complete frame in a byte stream.

    Returns ``(frame, consumed)``: drop ``consumed`` bytes from the front of the buffer
    either way. With a frame, ``consumed`` runs through its 16H; everything before it
    (wake-up bytes, line noise, frames with a bad checksum) is skipped. Without one,
    ``consumed`` covers only bytes that can never start a frame, and the caller should wait
    for more bytes. When a candidate frame is still incomplete but a complete, valid frame
    follows it, the candidate is taken to be noise and the later frame is returned, so a
    stray 68H cannot stall the stream until the next timeout.
    """
    i = 0
    pending: int | None = None  # first incomplete candidate, kept for when more bytes come
    while True:
        i = buf.find(START, i)
        if i < 0:
            return None, len(buf) if pending is None else pending
        found, end = _frame_at(buf, i)
        if isinstance(found, Frame):
            return found, end
        if found == _NEED_MORE and pending is None:
            pending = i
        i += 1


# ------------------------------------------------------------------------ requests and replies


def read_request(address: str, di: str, preamble: int = DEFAULT_PREAMBLE) -> bytes:
    """Read-data request (11H) for one DI."""
    return encode_frame(address, READ_DATA, di_to_bytes(di), preamble)


def read_address_request(preamble: int = DEFAULT_PREAMBLE) -> bytes:
    """Read-address request (13H) to the wildcard address; only one meter may be listening."""
    return encode_frame(WILDCARD_ADDRESS, READ_ADDRESS, b"", preamble)


def items_for(di: str) -> tuple[tuple[str, DataItem], ...]:
    """The (DI, DataItem) pairs a DI's reply carries: one, or every member of a block."""
    key = normalize_di(di)
    if key in DATA_ITEMS:
        return ((key, DATA_ITEMS[key]),)
    if key in BLOCKS:
        return tuple((member, DATA_ITEMS[member]) for member in BLOCKS[key])
    raise ValueError(f"DI {key} is not in the DL/T 645 table (DATA_ITEMS or BLOCKS)")


def check_abnormal(frame: Frame, di: str | None = None) -> None:
    """Raise Dlt645AbnormalReply if ``frame`` is an abnormal reply."""
    if frame.is_reply and frame.is_abnormal:
        if len(frame.data) != 1:
            raise Dlt645FrameError(
                f"abnormal reply {frame.control:02X}H from {frame.address} must carry one "
                f"error-status byte, got {len(frame.data)}"
            )
        raise Dlt645AbnormalReply(
            frame.address, frame.control, frame.data[0], di, error_reasons(frame.data[0])
        )


def parse_read_values(frame: Frame, di: str) -> dict[str, float]:
    """Canonical values from a read-data reply to ``di`` (a single or a block DI).

    Raises Dlt645AbnormalReply for an abnormal reply, Dlt645FrameError when the frame is not
    a read-data reply, echoes another DI, or has the wrong value length or bad BCD. Offsets
    in errors count from the start of the data field.
    """
    key = normalize_di(di)
    items = items_for(key)
    if frame.function != READ_DATA or not frame.is_reply:
        raise Dlt645FrameError(
            f"expected a read-data reply (91H/B1H/D1H) from {frame.address}, "
            f"got control {frame.control:02X}H"
        )
    check_abnormal(frame, key)
    if len(frame.data) < 4:
        raise Dlt645FrameError(
            f"read reply from {frame.address} has {len(frame.data)} data bytes, "
            "too few for its 4-byte DI",
            0,
        )
    echoed = di_from_bytes(frame.data[:4])
    if echoed != key:
        raise Dlt645FrameError(f"reply from {frame.address} echoes DI {echoed}, expected {key}", 0)
    need = sum(item.nbytes for _, item in items)
    got = len(frame.data) - 4
    if got != need:
        raise Dlt645FrameError(
            f"reply to DI {key} from {frame.address} carries {got} value bytes, "
            f"the format needs {need}",
            4,
        )
    values: dict[str, float] = {}
    pos = 4
    for member, item in items:
        values[item.name] = decode_bcd(
            frame.data[pos : pos + item.nbytes],
            item.decimals,
            item.signed,
            offset=pos,
            what=f"DI {member} ({item.name}) in data field",
        )
        pos += item.nbytes
    return values


def parse_read_reply(frame: Frame, di: str) -> float:
    """The value of a single-quantity DI from its read-data reply (see parse_read_values)."""
    key = normalize_di(di)
    if key in BLOCKS:
        raise ValueError(f"DI {key} is a block; use parse_read_values")
    return parse_read_values(frame, key)[items_for(key)[0][1].name]


def parse_read_address_reply(frame: Frame) -> str:
    """The meter address from a read-address reply (93H)."""
    if frame.control != READ_ADDRESS_REPLY:
        raise Dlt645FrameError(
            f"expected a read-address reply (93H), got control {frame.control:02X}H"
        )
    if len(frame.data) != 6:
        raise Dlt645FrameError(
            f"read-address reply carries {len(frame.data)} data bytes, expected 6", 0
        )
    return decode_address(frame.data)


def encode_read_reply(
    address: str, di: str, values: Mapping[str, float], preamble: int = DEFAULT_PREAMBLE
) -> bytes:
    """Normal read-data reply (91H) carrying ``values`` (canonical names) for ``di``.

    Raises KeyError for a missing value and ValueError for one the format cannot hold.
    """
    key = normalize_di(di)
    payload = di_to_bytes(key) + b"".join(
        encode_bcd(values[item.name], item.nbytes, item.decimals, item.signed)
        for _, item in items_for(key)
    )
    return encode_frame(address, READ_DATA_REPLY, payload, preamble)


def encode_abnormal_reply(
    address: str, function: int, status: int, preamble: int = DEFAULT_PREAMBLE
) -> bytes:
    """Abnormal reply (C0H | function, e.g. D1H) with one error-status byte."""
    control = REPLY_BIT | ABNORMAL_BIT | (function & FUNCTION_MASK)
    return encode_frame(address, control, bytes([status & 0xFF]), preamble)


def encode_read_address_reply(address: str, preamble: int = DEFAULT_PREAMBLE) -> bytes:
    """Read-address reply (93H): the meter's own address, in the address field and data."""
    return encode_frame(address, READ_ADDRESS_REPLY, encode_address(address), preamble)


# ----------------------------------------------------------------------------- meter clock


def _bcd_bytes(raw: bytes, what: str, offset: int) -> list[int]:
    """Each byte of ``raw`` as a two-digit BCD number (same order as ``raw``)."""
    return [
        int(decode_bcd(raw[i : i + 1], 0, offset=offset + i, what=what)) for i in range(len(raw))
    ]


def encode_clock_date(day: date) -> bytes:
    """DI 04000101 value (before +33H): WW DD MM YY, least significant byte first.

    WW is the weekday with 0 = Sunday. Years 2000..2099 only (two BCD digits).
    """
    if not 2000 <= day.year <= 2099:
        raise ValueError(f"DL/T 645 dates hold years 2000..2099, got {day.year}")
    weekday = day.isoweekday() % 7  # Monday 1 .. Saturday 6, Sunday 0
    return bytes(int(f"{n:02d}", 16) for n in (weekday, day.day, day.month, day.year - 2000))


def encode_clock_time(moment: time) -> bytes:
    """DI 04000102 value (before +33H): ss mm hh, least significant byte first."""
    return bytes(int(f"{n:02d}", 16) for n in (moment.second, moment.minute, moment.hour))


def decode_clock_date(raw: bytes, *, offset: int = 0) -> tuple[date, int]:
    """(date, weekday as the meter sent it) from a DI 04000101 value (33H removed).

    Raises Dlt645FrameError for a wrong length, a non-BCD digit (naming byte and offset), a
    weekday outside 0..6, or a day that is not in the calendar. A weekday that disagrees with
    the date is returned as sent, not refused (the date is what counts).
    """
    what = f"DI {CLOCK_DATE_DI} (meter date) in data field"
    if len(raw) != 4:
        raise Dlt645FrameError(f"{what}: {len(raw)} bytes, YYMMDDWW needs 4", offset)
    weekday, day, month, year = _bcd_bytes(raw, what, offset)
    if weekday > 6:
        raise Dlt645FrameError(f"{what}: weekday {weekday} is not 0 (Sunday) .. 6", offset)
    try:
        return date(2000 + year, month, day), weekday
    except ValueError as exc:
        raise Dlt645FrameError(
            f"{what}: 20{year:02d}-{month:02d}-{day:02d} is not a calendar date ({exc})",
            offset + 1,
        ) from None


def decode_clock_time(raw: bytes, *, offset: int = 0) -> time:
    """Time of day from a DI 04000102 value (33H removed); errors as for the date."""
    what = f"DI {CLOCK_TIME_DI} (meter time) in data field"
    if len(raw) != 3:
        raise Dlt645FrameError(f"{what}: {len(raw)} bytes, hhmmss needs 3", offset)
    second, minute, hour = _bcd_bytes(raw, what, offset)
    try:
        return time(hour, minute, second)
    except ValueError as exc:
        raise Dlt645FrameError(
            f"{what}: {hour:02d}:{minute:02d}:{second:02d} is not a time of day ({exc})", offset
        ) from None


def _clock_value(frame: Frame, di: str) -> bytes:
    """The value bytes of a read reply to a clock DI (after the DI echo), checked."""
    if frame.function != READ_DATA or not frame.is_reply:
        raise Dlt645FrameError(
            f"expected a read-data reply (91H/B1H/D1H) from {frame.address}, "
            f"got control {frame.control:02X}H"
        )
    check_abnormal(frame, di)
    echoed = di_from_bytes(frame.data[:4]) if len(frame.data) >= 4 else None
    if echoed != di:
        raise Dlt645FrameError(f"reply from {frame.address} echoes DI {echoed}, expected {di}", 0)
    return frame.data[4:]


def parse_clock_date(frame: Frame) -> tuple[date, int]:
    """(date, weekday as sent) from the read reply to DI 04000101.

    Raises Dlt645AbnormalReply for an abnormal reply and Dlt645FrameError otherwise (offsets
    count from the start of the data field).
    """
    return decode_clock_date(_clock_value(frame, CLOCK_DATE_DI), offset=4)


def parse_clock_time(frame: Frame) -> time:
    """Time of day from the read reply to DI 04000102 (errors as for the date)."""
    return decode_clock_time(_clock_value(frame, CLOCK_TIME_DI), offset=4)


def encode_clock_reply(
    address: str, di: str, value: date | time, preamble: int = DEFAULT_PREAMBLE
) -> bytes:
    """Normal read reply (91H) to a clock DI: a ``date`` for 04000101, a ``time`` for 04000102."""
    key = normalize_di(di)
    if key == CLOCK_DATE_DI and isinstance(value, date):
        raw = encode_clock_date(value)
    elif key == CLOCK_TIME_DI and isinstance(value, time):
        raw = encode_clock_time(value)
    else:
        raise ValueError(f"DI {key} with {type(value).__name__} is not a meter clock value")
    return encode_frame(address, READ_DATA_REPLY, di_to_bytes(key) + raw, preamble)
