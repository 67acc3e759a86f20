"""DL/T 645-2007: codec against hand-computed and published frames, simulator + client over TCP
and over a serial line (a pty pair), meter clock (device time) and the gateway poller."""

from __future__ import annotations

import asyncio
import math
import os
import select
import threading
import tty
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterwatch.collector.dlt645 import (
    DEFAULT_DIS,
    MeterRead,
    SerialSettings,
    SerialTransport,
    TcpTransport,
    local_to_utc,
    read_meter,
    read_meter_address,
    read_meter_clock,
    read_meter_detailed,
)
from meterwatch.core.errors import DeviceError, DeviceTimeout, ProtocolError
from meterwatch.core.schema import READING_FIELDS
from meterwatch.protocols.dlt645 import (
    CLOCK_DATE_DI,
    CLOCK_TIME_DI,
    DATA_ITEMS,
    READ_FUNCTIONS,
    Dlt645AbnormalReply,
    Dlt645FrameError,
    Frame,
    bcd_limit,
    decode_bcd,
    decode_clock_date,
    decode_clock_time,
    decode_frame,
    encode_abnormal_reply,
    encode_bcd,
    encode_clock_date,
    encode_clock_reply,
    encode_clock_time,
    encode_frame,
    encode_read_reply,
    find_frame,
    parse_clock_date,
    parse_clock_time,
    parse_read_address_reply,
    parse_read_reply,
    parse_read_values,
    read_address_request,
    read_request,
)
from meterwatch.simulators.dlt645_server import Dlt645Server
from tests.unit.test_transports import ListWriter

ADDR = "123456789012"


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# ------------------------------------------------------------------ worked frames, by hand
#
# Address 123456789012 -> wire bytes, least significant first: 12 90 78 56 34 12.
# Sum of the fixed head 68 12 90 78 56 34 12 68 = 0x286 (kept below as HEAD).
HEAD = 0x68 + 0x12 + 0x90 + 0x78 + 0x56 + 0x34 + 0x12 + 0x68
assert HEAD == 0x286

# Read request, DI 00 01 00 00: DI bytes LSB first 00 00 01 00, +33H -> 33 33 34 33.
# CS = 286 + 11 (C) + 04 (L) + 33 + 33 + 34 + 33 = 0x368 -> 68H.
READ_ENERGY = h("68 12 90 78 56 34 12 68 11 04 33 33 34 33 68 16")

# Reply 12345.67 kWh: XXXXXX.XX -> digits 01234567, BCD big-endian 01 23 45 67,
# LSB first 67 45 23 01, +33H -> 9A 78 56 34. L = 4 (DI) + 4 = 08.
# CS = 286 + 91 + 08 + (33+33+34+33 = CD) + 9A + 78 + 56 + 34 = 0x588 -> 88H.
REPLY_ENERGY = h("68 12 90 78 56 34 12 68 91 08 33 33 34 33 9A 78 56 34 88 16")

# Reply phase A voltage 220.1 V, DI 02 01 01 00 -> LSB first 00 01 01 02 -> 33 34 34 35.
# XXX.X -> digits 2201 -> 22 01 -> LSB first 01 22 -> +33H: 34 55. L = 06.
# CS = 286 + 91 + 06 + (33+34+34+35 = D0) + 34 + 55 = 0x476 -> 76H.
REPLY_VOLTAGE = h("68 12 90 78 56 34 12 68 91 06 33 34 34 35 34 55 76 16")

# Abnormal reply D1H, error status 02H (no data requested) -> +33H: 35. L = 01.
# CS = 286 + D1 + 01 + 35 = 0x38D -> 8DH.
REPLY_ABNORMAL = h("68 12 90 78 56 34 12 68 D1 01 35 8D 16")

# Published examples (亿佰特, mbb.eet-china.com forum topic 114707): read DI 00000000 of meter
# 652022122003, and a voltage-block (0201FF00) reply of meter 652022122018 after 4 FEH bytes.
PUBLISHED_READ = h("68 03 20 12 22 20 65 68 11 04 33 33 33 33 8D 16")
PUBLISHED_BLOCK_REPLY = h(
    "FE FE FE FE 68 18 20 12 22 20 65 68 91 0A 33 32 34 35 33 33 33 33 C7 56 13 16"
)
# The read-address request every DL/T 645-2007 tool sends.
READ_ADDRESS_FRAME = h("68 AA AA AA AA AA AA 68 13 00 DF 16")


def test_read_request_worked_frame() -> None:
    assert read_request(ADDR, "00010000", preamble=0) == READ_ENERGY
    assert read_request(ADDR, "00 01 00 00") == b"\xfe" * 4 + READ_ENERGY
    assert encode_frame(ADDR, 0x11, h("00 00 01 00"), preamble=2) == b"\xfe\xfe" + READ_ENERGY


def test_energy_reply_worked_frame() -> None:
    assert encode_read_reply(ADDR, "00010000", {"energy_import_kwh": 12345.67}, 0) == REPLY_ENERGY
    frame = decode_frame(REPLY_ENERGY)
    assert frame == Frame(ADDR, 0x91, h("00 00 01 00 67 45 23 01"))
    assert frame.is_reply and not frame.is_abnormal and not frame.has_followup
    assert parse_read_reply(frame, "00010000") == 12345.67


def test_voltage_reply_worked_frame() -> None:
    assert encode_read_reply(ADDR, "02010100", {"voltage_l1_v": 220.1}, 0) == REPLY_VOLTAGE
    assert parse_read_reply(decode_frame(b"\xfe" * 4 + REPLY_VOLTAGE), "02010100") == 220.1


def test_abnormal_reply_worked_frame() -> None:
    assert encode_abnormal_reply(ADDR, 0x11, 0x02, preamble=0) == REPLY_ABNORMAL
    frame = decode_frame(REPLY_ABNORMAL)
    assert frame.is_reply and frame.is_abnormal and frame.data == b"\x02"
    with pytest.raises(Dlt645AbnormalReply) as info:
        parse_read_reply(frame, "00010000")
    err = info.value
    assert isinstance(err, ProtocolError)
    assert (err.status, err.reasons, err.no_data, err.address) == (
        0x02,
        ["no data requested"],
        True,
        ADDR,
    )
    assert "no data requested" in str(err) and "00010000" in str(err)


def test_abnormal_reply_decodes_every_error_bit() -> None:
    frame = decode_frame(encode_abnormal_reply(ADDR, 0x11, 0x45))
    with pytest.raises(Dlt645AbnormalReply) as info:
        parse_read_reply(frame, "00010000")
    assert info.value.reasons == [
        "other error",
        "password error or unauthorized",
        "tariff count exceeded",
    ]


def test_published_frames() -> None:
    assert encode_frame("652022122003", 0x11, h("00 00 00 00"), preamble=0) == PUBLISHED_READ
    frame = decode_frame(PUBLISHED_BLOCK_REPLY)
    assert frame.address == "652022122018"
    assert parse_read_values(frame, "0201FF00") == {
        "voltage_l1_v": 0.0,
        "voltage_l2_v": 0.0,
        "voltage_l3_v": 239.4,
    }
    assert read_address_request(preamble=0) == READ_ADDRESS_FRAME


def test_read_address_reply() -> None:
    # 93H, data = address bytes + 33H: 45 C3 AB 89 67 45; CS = 286 + 93 + 06 + those.
    wire = h("68 12 90 78 56 34 12 68 93 06 45 C3 AB 89 67 45")
    wire += bytes([sum(wire) & 0xFF, 0x16])
    assert parse_read_address_reply(decode_frame(wire)) == ADDR


# ------------------------------------------------------------------ meter clock, by hand
#
# Read DI 04 00 01 01 (date): DI bytes LSB first 01 01 00 04, +33H -> 34 34 33 37.
# CS = 286 + 11 + 04 + (34+34+33+37 = D2) = 0x36D -> 6DH.
READ_DATE = h("68 12 90 78 56 34 12 68 11 04 34 34 33 37 6D 16")
# Date 2026-11-23, a Monday (WW 01): YYMMDDWW 26 11 23 01, LSB first 01 23 11 26,
# +33H -> 34 56 44 59. L = 08. CS = 286 + 91 + 08 + D2 + (34+56+44+59 = 127) = 0x518 -> 18H.
REPLY_DATE = h("68 12 90 78 56 34 12 68 91 08 34 34 33 37 34 56 44 59 18 16")
# Time 14:05:09, DI 04 00 01 02 -> 02 01 00 04 -> 35 34 33 37; hhmmss 14 05 09, LSB first
# 09 05 14, +33H -> 3C 38 47. L = 07. CS = 286 + 91 + 07 + D3 + (3C+38+47 = BB) = 0x4AC -> ACH.
REPLY_TIME = h("68 12 90 78 56 34 12 68 91 07 35 34 33 37 3C 38 47 AC 16")


def test_clock_worked_frames() -> None:
    assert read_request(ADDR, CLOCK_DATE_DI, preamble=0) == READ_DATE
    assert encode_clock_reply(ADDR, CLOCK_DATE_DI, date(2026, 11, 23), 0) == REPLY_DATE
    assert encode_clock_reply(ADDR, CLOCK_TIME_DI, time(14, 5, 9), 0) == REPLY_TIME
    assert parse_clock_date(decode_frame(b"\xfe" * 4 + REPLY_DATE)) == (date(2026, 11, 23), 1)
    assert parse_clock_time(decode_frame(REPLY_TIME)) == time(14, 5, 9)
    # Sunday is weekday 0 (2026-11-22)
    assert encode_clock_date(date(2026, 11, 22)) == h("00 22 11 26")


@pytest.mark.parametrize(
    ("raw", "decoder", "match", "offset"),
    [
        (h("01 23 13 26"), decode_clock_date, "2026-13-23 is not a calendar date", 1),
        (h("01 30 02 26"), decode_clock_date, "2026-02-30 is not a calendar date", 1),
        (h("07 23 11 26"), decode_clock_date, "weekday 7", 0),
        (h("01 2A 11 26"), decode_clock_date, "invalid BCD digit AH .* byte 2AH at offset 1", 1),
        (h("01 23 11"), decode_clock_date, "3 bytes, YYMMDDWW needs 4", 0),
        (h("09 60 14"), decode_clock_time, "14:60:09 is not a time of day", 0),
        (h("09 05 24"), decode_clock_time, "24:05:09 is not a time of day", 0),
        (h("09 05"), decode_clock_time, "2 bytes, hhmmss needs 3", 0),
    ],
)
def test_clock_decode_errors_name_what_and_where(
    raw: bytes, decoder: Callable[..., Any], match: str, offset: int
) -> None:
    with pytest.raises(Dlt645FrameError, match=match) as info:
        decoder(raw)
    assert info.value.offset == offset


def test_clock_refused_or_wrong_reply() -> None:
    with pytest.raises(Dlt645AbnormalReply, match="04000101"):
        parse_clock_date(decode_frame(encode_abnormal_reply(ADDR, 0x11, 0x02)))
    with pytest.raises(Dlt645FrameError, match="echoes DI 04000101, expected 04000102"):
        parse_clock_time(decode_frame(REPLY_DATE))


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59)))
def test_clock_round_trip(moment: datetime) -> None:
    moment = moment.replace(microsecond=0)
    day, weekday = decode_clock_date(encode_clock_date(moment.date()))
    assert day == moment.date() and weekday == moment.isoweekday() % 7
    assert decode_clock_time(encode_clock_time(moment.time())) == moment.time()


def test_local_meter_time_to_utc() -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    assert local_to_utc(datetime(2026, 11, 23, 8, 0, 5), shanghai) == pd.Timestamp(
        "2026-11-23T00:00:05Z"
    )
    # A local hour that happens twice (end of daylight saving) cannot be placed: NaT.
    berlin = ZoneInfo("Europe/Berlin")
    assert pd.isna(local_to_utc(datetime(2026, 10, 25, 2, 30), berlin))
    assert local_to_utc(datetime(2026, 7, 1, 12, 0), berlin) == pd.Timestamp("2026-07-01T10:00Z")


def test_plus_33_wraps_mod_256() -> None:
    # Data byte E0H goes out as 13H (E0 + 33 = 113 -> 13), and FFH as 32H; decode undoes it.
    wire = encode_frame(ADDR, 0x91, h("E0 FF 00"), preamble=0)
    assert wire[10:13] == h("13 32 33")
    assert decode_frame(wire).data == h("E0 FF 00")


# ----------------------------------------------------------------------------------- BCD

BCD_TABLE = [
    # value, nbytes, decimals, signed, bytes LSB first (before +33H)
    (12345.67, 4, 2, False, "67 45 23 01"),
    (0.0, 4, 2, False, "00 00 00 00"),
    (999999.99, 4, 2, False, "99 99 99 99"),
    (220.1, 2, 1, False, "01 22"),
    (50.02, 2, 2, False, "02 50"),
    (5.5, 3, 3, True, "00 55 00"),
    (-1.234, 3, 3, True, "34 12 80"),  # sign = top bit of the most significant byte
    (799.999, 3, 3, True, "99 99 79"),
    (-12.3456, 3, 4, True, "56 34 92"),
    (-0.987, 2, 3, True, "87 89"),
    (1.0, 2, 3, True, "00 10"),
]


@pytest.mark.parametrize(("value", "nbytes", "decimals", "signed", "raw"), BCD_TABLE)
def test_bcd_table(value: float, nbytes: int, decimals: int, signed: bool, raw: str) -> None:
    assert encode_bcd(value, nbytes, decimals, signed) == h(raw)
    assert decode_bcd(h(raw), decimals, signed) == value


def test_bcd_rounds_half_up_to_resolution() -> None:
    assert encode_bcd(220.15, 2, 1) == h("02 22")  # 220.2, not float-truncated 220.1
    assert encode_bcd(-0.00004, 3, 4, True) == h("00 00 00")  # no negative zero on the wire


@pytest.mark.parametrize(
    ("value", "nbytes", "decimals", "signed", "match"),
    [
        (1000.0, 2, 1, False, "does not fit XXX.X"),
        (-1.0, 2, 1, False, "negative"),
        (800.0, 3, 3, True, "does not fit signed XXX.XXX"),  # 8 in the top digit = sign bit
        (math.nan, 2, 1, False, "cannot encode"),
    ],
)
def test_bcd_encode_refuses(
    value: float, nbytes: int, decimals: int, signed: bool, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        encode_bcd(value, nbytes, decimals, signed)


def test_bcd_decode_names_bad_nibble_and_offset() -> None:
    with pytest.raises(Dlt645FrameError, match=r"invalid BCD digit AH in the low nibble") as info:
        decode_bcd(h("34 1A 00"), 3, True, offset=4, what="current")
    assert info.value.offset == 5
    assert "current" in str(info.value) and "offset 5" in str(info.value)


FORMATS = sorted({(i.nbytes, i.decimals, i.signed) for i in DATA_ITEMS.values()})


@pytest.mark.parametrize(("nbytes", "decimals", "signed"), FORMATS)
@given(data=st.data())
def test_bcd_round_trip(nbytes: int, decimals: int, signed: bool, data: st.DataObject) -> None:
    limit = bcd_limit(nbytes, signed)
    units = data.draw(st.integers(-limit if signed else 0, limit))
    value = units / 10**decimals
    raw = encode_bcd(value, nbytes, decimals, signed)
    assert len(raw) == nbytes
    assert decode_bcd(raw, decimals, signed) == value
    # and bytes -> value -> bytes, for any valid BCD the meter may send
    digits = data.draw(st.lists(st.integers(0, 9), min_size=2 * nbytes, max_size=2 * nbytes))
    if signed:
        digits[0] = min(digits[0], 7)
    big = bytearray.fromhex("".join(map(str, digits)))
    if signed and data.draw(st.booleans()) and any(digits):
        big[0] |= 0x80
    wire = bytes(big[::-1])
    assert encode_bcd(decode_bcd(wire, decimals, signed), nbytes, decimals, signed) == wire


# ------------------------------------------------------------------------- frame errors


@pytest.mark.parametrize(
    ("wire", "match", "offset"),
    [
        (REPLY_ENERGY[:-2] + b"\x89\x16", r"bad checksum at offset 18: frame says 89H.*88H", 18),
        (REPLY_ENERGY[:-1] + b"\x17", r"missing end byte 16H at offset 19, got 17H", 19),
        (REPLY_ENERGY[:-3] + REPLY_ENERGY[-2:], r"bad length: length byte at offset 9", 9),
        (REPLY_ENERGY + b"\x00", r"bad length.*buffer has 21 bytes", 9),
        (b"\xfe\xfe" + REPLY_ENERGY[:10], r"frame too short: 10 bytes after 2 wake-up", 12),
        (b"\x00" + REPLY_ENERGY, r"expected start byte 68H at offset 0, got 00H", 0),
        (REPLY_ENERGY[:7] + b"\x00" + REPLY_ENERGY[8:], r"start byte 68H at offset 7", 7),
    ],
)
def test_decode_errors_name_what_and_where(wire: bytes, match: str, offset: int) -> None:
    with pytest.raises(Dlt645FrameError, match=match) as info:
        decode_frame(wire)
    assert info.value.offset == offset


def test_decode_rejects_non_bcd_address() -> None:
    body = h("68 1F 90 78 56 34 12 68 11 00")
    with pytest.raises(Dlt645FrameError, match=r"address byte 1FH at offset 1.*low nibble"):
        decode_frame(body + bytes([sum(body) & 0xFF, 0x16]))


def test_reply_value_errors() -> None:
    with pytest.raises(Dlt645FrameError, match="echoes DI 00010000, expected 00020000"):
        parse_read_reply(decode_frame(REPLY_ENERGY), "00020000")
    short = encode_frame(ADDR, 0x91, h("00 00 01 00 67 45 23"))
    with pytest.raises(Dlt645FrameError, match="carries 3 value bytes, the format needs 4"):
        parse_read_reply(decode_frame(short), "00010000")
    bad = encode_frame(ADDR, 0x91, h("00 01 01 02 0C 22"))
    with pytest.raises(Dlt645FrameError, match=r"DI 02010100 \(voltage_l1_v\).*offset 4"):
        parse_read_reply(decode_frame(bad), "02010100")
    with pytest.raises(Dlt645FrameError, match="expected a read-data reply"):
        parse_read_reply(decode_frame(READ_ENERGY), "00010000")


# --------------------------------------------------------------------------- find_frame


def test_find_frame_skips_preamble_and_garbage() -> None:
    stream = b"\x00\x68\x16\xff\x68\x01" + b"\xfe" * 4 + REPLY_ENERGY + b"\xfe\xfe"
    frame, consumed = find_frame(stream)
    assert frame == decode_frame(REPLY_ENERGY)
    assert stream[consumed:] == b"\xfe\xfe"
    assert find_frame(stream[consumed:]) == (None, 2)  # wake-up bytes alone: drop, wait


def test_find_frame_reassembles_split_frames() -> None:
    stream = b"\xfe\xfe" + REPLY_ENERGY + b"\xfe" * 4 + REPLY_VOLTAGE + REPLY_ABNORMAL
    buf = bytearray()
    frames = []
    for byte in stream:  # worst case: one byte per read
        buf.append(byte)
        while True:
            frame, consumed = find_frame(buf)
            del buf[:consumed]
            if frame is None:
                break
            frames.append(frame)
    assert frames == [decode_frame(f) for f in (REPLY_ENERGY, REPLY_VOLTAGE, REPLY_ABNORMAL)]
    assert buf == b""


def test_find_frame_waits_when_incomplete() -> None:
    for cut in range(1, len(REPLY_ENERGY)):
        frame, consumed = find_frame(REPLY_ENERGY[:cut])
        assert frame is None and consumed == 0


def test_find_frame_resyncs_after_corruption() -> None:
    corrupt = REPLY_ENERGY[:14] + b"\x00" + REPLY_ENERGY[15:]  # bad checksum now
    frame, consumed = find_frame(corrupt + REPLY_VOLTAGE)
    assert frame == decode_frame(REPLY_VOLTAGE)
    assert consumed == len(corrupt) + len(REPLY_VOLTAGE)
    # a stray 68H with a fake header and a long length byte does not hide a real frame
    stray = h("68 00 00 00 00 00 00 68 91 F0")
    frame, consumed = find_frame(stray + REPLY_VOLTAGE)
    assert frame == decode_frame(REPLY_VOLTAGE)


# ------------------------------------------------------------- simulator + client, TCP

THREE_PHASE = "000000000101"
SINGLE_PHASE = "000000000202"
VALUES: dict[str, dict[str, float]] = {
    THREE_PHASE: {
        "energy_import_kwh": 48213.37,
        "energy_export_kwh": 1520.04,
        "power_kw": -7.4321,  # exporting
        "reactive_power_kvar": 2.1034,
        "voltage_l1_v": 229.8,
        "voltage_l2_v": 231.2,
        "voltage_l3_v": 228.6,
        "current_l1_a": 10.512,
        "current_l2_a": -11.003,
        "current_l3_a": 9.876,
        "power_factor": -0.953,
        "frequency_hz": 49.98,
    },
    SINGLE_PHASE: {
        "energy_import_kwh": 3011.5,
        "energy_export_kwh": 0.0,
        "power_kw": 1.2345,
        "reactive_power_kvar": 0.1234,
        "voltage_l1_v": 221.3,
        "voltage_l2_v": math.nan,  # a single-phase meter has no l2/l3
        "current_l1_a": 5.62,
        "power_factor": 0.991,
        "frequency_hz": 50.01,
    },
}


def resolution(name: str) -> float:
    item = next(i for i in DATA_ITEMS.values() if i.name == name)
    return 0.5 * 10**-item.decimals


T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 15))


async def with_server(
    body: Callable[[Dlt645Server, TcpTransport], Awaitable[T]],
    values: Mapping[str, Mapping[str, float]] = VALUES,
) -> T:
    """Run ``body`` against a simulator on a free loopback port and a connected client."""
    server = Dlt645Server(lambda a: values[a], values.keys())
    port = await server.start()
    transport = TcpTransport()
    await transport.connect("127.0.0.1", port)
    try:
        return await body(server, transport)
    finally:
        transport.close()
        await server.stop()


def test_end_to_end_reads_every_canonical_quantity() -> None:
    async def body(
        server: Dlt645Server, transport: TcpTransport
    ) -> tuple[Dlt645Server, MeterRead, MeterRead, int]:
        full = await read_meter_detailed(transport, THREE_PHASE, timeout=2)
        single = await read_meter_detailed(transport, SINGLE_PHASE, timeout=2)
        return server, full, single, transport.discarded_bytes

    server, full, single, discarded = run(with_server(body))
    assert set(full.values) == set(READING_FIELDS)
    for name, value in VALUES[THREE_PHASE].items():
        assert full.values[name] == pytest.approx(value, abs=resolution(name)), name
    assert full.refused == {} and full.ignored_frames == 0

    # quantities the single-phase meter lacks are absent, and recorded as refused
    assert set(single.values) == set(READING_FIELDS) - {
        "voltage_l2_v",
        "voltage_l3_v",
        "current_l2_a",
        "current_l3_a",
    }
    assert set(single.refused) == {"02010200", "02010300", "02020200", "02020300"}
    assert all(e.no_data for e in single.refused.values())
    for name, value in single.values.items():
        assert value == pytest.approx(VALUES[SINGLE_PHASE][name], abs=resolution(name))

    # what went in: exactly one read request per DI per meter, nothing but reads
    assert len(server.requests) == 2 * len(DEFAULT_DIS)
    assert {r.control for r in server.requests} <= READ_FUNCTIONS
    # what came out: one reply per request, and only the 4 FEH wake-up bytes of each skipped
    assert discarded == 4 * len(server.requests)
    assert [(r.address, r.di) for r in server.requests[: len(DEFAULT_DIS)]] == [
        (THREE_PHASE, di) for di in DEFAULT_DIS
    ]


def test_end_to_end_block_reads_and_live_values() -> None:
    live = {THREE_PHASE: dict(VALUES[THREE_PHASE])}

    async def body(
        server: Dlt645Server, transport: TcpTransport
    ) -> tuple[dict[str, float], dict[str, float]]:
        first = await read_meter(transport, THREE_PHASE, ["0201FF00", "0202FF00"])
        live[THREE_PHASE]["voltage_l1_v"] = 198.7  # the fleet model moves on
        second = await read_meter(transport, THREE_PHASE, ["02010100"])
        return first, second

    first, second = run(with_server(body, live))
    assert first == pytest.approx(
        {k: VALUES[THREE_PHASE][k] for k in ("voltage_l1_v", "voltage_l2_v", "voltage_l3_v")}
        | {k: VALUES[THREE_PHASE][k] for k in ("current_l1_a", "current_l2_a", "current_l3_a")}
    )
    assert second == {"voltage_l1_v": 198.7}


def test_unknown_address_times_out() -> None:
    async def body(
        server: Dlt645Server, transport: TcpTransport
    ) -> tuple[Dlt645Server, DeviceTimeout]:
        with pytest.raises(DeviceTimeout) as info:
            await read_meter(transport, "999900001111", timeout=0.2)
        return server, info.value

    server, err = run(with_server(body))
    assert err.meter_id == "999900001111" and err.address == "999900001111"
    assert "00010000" in str(err)
    # the simulator heard the request and, like a meter on RS-485, stayed silent
    assert [(r.address, r.control) for r in server.requests] == [("999900001111", 0x11)]


def test_required_quantity_refused_raises() -> None:
    async def body(server: Dlt645Server, transport: TcpTransport) -> DeviceError:
        with pytest.raises(DeviceError, match="no data requested") as info:
            await read_meter(
                transport, SINGLE_PHASE, ["02010100", "02010200"], required=["02010200"]
            )
        return info.value

    err = run(with_server(body))
    assert isinstance(err.__cause__, Dlt645AbnormalReply)


def test_read_address_of_single_meter() -> None:
    single = {THREE_PHASE: VALUES[THREE_PHASE]}

    async def body(server: Dlt645Server, transport: TcpTransport) -> tuple[Dlt645Server, str]:
        return server, await read_meter_address(transport)

    server, address = run(with_server(body, single))
    assert address == THREE_PHASE
    assert [r.control for r in server.requests] == [0x13]


def test_client_ignores_echo_and_stale_frames() -> None:
    """Any transport works: here an in-memory bus that echoes requests (half-duplex adapter)
    and replays a late reply to an earlier request before the real answer."""
    server = Dlt645Server(lambda a: VALUES[a], VALUES.keys())
    stale = encode_read_reply(THREE_PHASE, "02800002", {"frequency_hz": 50.0})

    class EchoBus:
        def __init__(self) -> None:
            self.pending: list[bytes] = []

        async def send(self, data: bytes) -> None:
            frame, _ = find_frame(data)
            assert frame is not None
            answer = server.respond(frame)
            self.pending += [data, stale] + ([answer] if answer else [])

        async def read_frame(self, timeout: float) -> Frame:
            if not self.pending:
                raise TimeoutError
            frame, _ = find_frame(self.pending.pop(0))
            assert frame is not None
            return frame

    read = run(read_meter_detailed(EchoBus(), THREE_PHASE, ["00010000", "02020200"]))
    assert read.values == {"energy_import_kwh": 48213.37, "current_l2_a": -11.003}
    assert read.ignored_frames == 4


def test_simulator_refuses_writes_and_keeps_quiet_on_broadcast() -> None:
    server = Dlt645Server(lambda a: VALUES[a], VALUES.keys())
    write = decode_frame(encode_frame(THREE_PHASE, 0x14, h("00 00 01 00") + b"\x00" * 8))
    answer = server.respond(write)
    assert answer is not None and decode_frame(answer).control == 0xD4
    assert server.respond(decode_frame(encode_frame("999999999999", 0x08, b"\x00" * 6))) is None
    unknown_di = decode_frame(read_request(THREE_PHASE, "04000401"))
    reply = server.respond(unknown_di)
    assert reply is not None and decode_frame(reply).data == b"\x02"
    assert [r.control for r in server.requests] == [0x14, 0x08, 0x11]


# ------------------------------------------------------------------ poller (service wiring)


def test_poller_reads_the_bus_and_reports_a_silent_meter_offline_once() -> None:
    """Dlt645GatewayPoller: readings to the writer, a silent meter backed off and alerted once."""
    import pandas as pd

    from meterwatch.collector.dlt645 import Dlt645Device, Dlt645GatewayPoller
    from meterwatch.core.clock import Clock
    from meterwatch.core.stats import Stats

    live = {
        "000000000001": {"energy_import_kwh": 100.25, "voltage_l1_v": 230.1, "power_kw": 1.5},
        "000000000002": {"energy_import_kwh": 7.5, "voltage_l1_v": 229.9, "power_kw": -0.25},
    }
    served = dict(live)
    findings: list[pd.DataFrame] = []

    async def main() -> None:
        server = Dlt645Server(lambda a: served[a], live.keys())
        port = await server.start()
        writer, stats = ListWriter(), Stats()
        poller = Dlt645GatewayPoller(
            "dl",
            "127.0.0.1",
            port,
            [
                Dlt645Device("A", "000000000001"),
                Dlt645Device("B", "000000000002"),
                Dlt645Device("C", "000000000003"),  # nobody answers there
            ],
            clock=Clock(),
            writer=writer,  # type: ignore[arg-type]
            stats=stats,
            timeout_s=0.2,
            offline_after=1,
            backoff_cap_s=0.0,
            on_findings=findings.append,
            dis=["00010000", "0201FF00", "02030000"],
        )
        try:
            assert await poller.poll_cycle(0.0) == 2
            assert await poller.poll_cycle(0.0) == 2
        finally:
            await poller.close()
            await server.stop()
        rows = pd.concat(writer.frames).set_index("meter_id")
        assert rows.loc["A", "energy_import_kwh"].tolist() == [100.25, 100.25]

        assert rows.loc["B", "power_kw"].tolist() == [-0.25, -0.25]
        assert len(findings) == 1 and findings[0]["meter_id"].iloc[0] == "C"
        assert findings[0]["type"].iloc[0] == "meter_offline"
        assert stats.meter("C").errors == 2 and stats.meter("A").errors == 0
        # Only reads went out: 3 DIs + the 2 clock DIs per live meter per cycle; the dead one
        # stops at its first.
        assert {r.control for r in server.requests} == {0x11}
        assert len(server.requests) == 2 * (5 + 5 + 1)

    run(main())


# ------------------------------------------------------------------ serial line (pty pair)


@contextmanager
def pty_bridge() -> Iterator[tuple[str, str]]:
    """Two pseudo-terminals whose master ends are bridged: a null-modem cable in software.

    Returns the two slave device paths (the client's and the simulator's port)."""
    m1, s1 = os.openpty()
    m2, s2 = os.openpty()
    for fd in (s1, s2):
        tty.setraw(fd)
    stop = threading.Event()

    def bridge() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([m1, m2], [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                os.write(m2 if fd == m1 else m1, data)

    thread = threading.Thread(target=bridge, daemon=True)
    thread.start()
    try:
        yield os.ttyname(s1), os.ttyname(s2)
    finally:
        stop.set()
        thread.join(2)
        for fd in (m1, s1, m2, s2):
            os.close(fd)


def test_serial_transport_reads_every_quantity_over_a_pty_pair() -> None:
    """Same reads, same FEH handling as over TCP, on a serial line at DL/T 645's 2400 8E1."""
    with pty_bridge() as (client_tty, server_tty):

        async def main() -> tuple[Dlt645Server, MeterRead, int, str]:
            server = Dlt645Server(lambda a: VALUES[a], VALUES.keys())
            await server.start_serial(server_tty)  # 2400 baud 8E1 by default
            link = SerialTransport(SerialSettings(client_tty))
            await link.connect()
            try:
                read = await read_meter_detailed(link, THREE_PHASE, timeout=2)
            finally:
                link.close()
                await server.stop()
            return server, read, link.discarded_bytes, link.endpoint

        server, read, discarded, endpoint = run(main())
    assert endpoint == f"serial:{client_tty}@2400/8E1"
    assert set(read.values) == set(READING_FIELDS) and read.refused == {}
    for name, value in VALUES[THREE_PHASE].items():
        assert read.values[name] == pytest.approx(value, abs=resolution(name)), name
    assert [(r.address, r.di) for r in server.requests] == [(THREE_PHASE, di) for di in DEFAULT_DIS]
    # one reply per request; only the 4 FEH wake-up bytes before each were skipped
    assert discarded == 4 * len(server.requests)


def test_serial_settings_are_applied_and_a_missing_port_is_a_clear_error() -> None:
    with pty_bridge() as (client_tty, _server_tty):

        async def main() -> tuple[Any, ...]:
            link = SerialTransport(
                SerialSettings(client_tty, baudrate=9600, parity="O", bytesize=7, stopbits=2)
            )
            await link.connect()
            try:
                port = link._serial
                assert port is not None
                got = (port.baudrate, port.parity, port.bytesize, port.stopbits)
            finally:
                link.close()
            return got

        assert run(main()) == (9600, "O", 7, 2)

    async def missing() -> None:
        await SerialTransport(SerialSettings("/dev/does-not-exist-645")).connect()

    with pytest.raises(
        ConnectionError, match="serial:/dev/does-not-exist-645@2400/8E1: cannot open"
    ):
        run(missing())


# ------------------------------------------------------------------ meter clock (device time)


def test_read_meter_clock_with_drift_and_refusal() -> None:
    now = datetime(2026, 11, 23, 6, 30, 0, tzinfo=UTC)  # 14:30 in Shanghai

    async def body(server: Dlt645Server, transport: TcpTransport) -> tuple[datetime, DeviceError]:
        server.clock = lambda: now
        server.drift_s[SINGLE_PHASE] = -125.0  # this meter's clock is 2 min 5 s slow
        fast = await read_meter_clock(transport, THREE_PHASE, timeout=2)
        slow = await read_meter_clock(transport, SINGLE_PHASE, timeout=2)
        assert slow == datetime(2026, 11, 23, 14, 27, 55)
        server.no_clock = frozenset({SINGLE_PHASE})
        with pytest.raises(DeviceError, match="no data requested") as info:
            await read_meter_clock(transport, SINGLE_PHASE, timeout=2)
        return fast, info.value

    fast, refused = run(with_server(body))
    assert fast == datetime(2026, 11, 23, 14, 30, 0)
    assert isinstance(refused.__cause__, Dlt645AbnormalReply)


def test_read_meter_clock_across_midnight_rereads_the_date() -> None:
    """Date read at 23:59:59, time read at 00:00:00 the next day: the date is read again."""
    ticks = iter(
        [
            datetime(2026, 11, 23, 15, 59, 59, tzinfo=UTC),  # date read: 23:59:59 local, 23rd
            datetime(2026, 11, 23, 16, 0, 0, tzinfo=UTC),  # time read: 00:00:00 local, 24th
            datetime(2026, 11, 23, 16, 0, 0, tzinfo=UTC),  # date read again: 24th
        ]
    )

    async def body(server: Dlt645Server, transport: TcpTransport) -> tuple[datetime, list[Any]]:
        server.clock = lambda: next(ticks)
        got = await read_meter_clock(transport, THREE_PHASE, timeout=2)
        return got, [r.di for r in server.requests]

    got, dis = run(with_server(body))
    assert got == datetime(2026, 11, 24, 0, 0, 0)  # not the 23rd at 00:00:00
    assert dis == [CLOCK_DATE_DI, CLOCK_TIME_DI, CLOCK_DATE_DI]


def spy_records(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The reading dicts the poll cycle hands to the writer (which makes them a frame)."""
    seen: list[dict[str, Any]] = []
    real = ListWriter.submit

    def spy(self: ListWriter, readings: Any, on_stored: Any = None) -> bool:
        assert isinstance(readings, list), "pollers hand reading dicts to the writer"
        seen.extend(readings)
        return real(self, readings, on_stored)

    monkeypatch.setattr(ListWriter, "submit", spy)
    return seen


def test_poller_over_a_serial_line_stores_readings_with_device_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dlt645GatewayPoller on a pty: readings reach the writer, each with collected_at and the
    meter clock as device_ts (UTC); a drifting clock shows, a meter without one still reads."""
    from meterwatch.collector.dlt645 import Dlt645Device, Dlt645GatewayPoller
    from meterwatch.core.clock import Clock
    from meterwatch.core.stats import Stats

    live = {
        "000000000001": {"energy_import_kwh": 100.25, "voltage_l1_v": 230.1},
        "000000000002": {"energy_import_kwh": 7.5, "voltage_l1_v": 229.9},
        "000000000003": {"energy_import_kwh": 1.0, "voltage_l1_v": 231.0},
    }
    seen = spy_records(monkeypatch)
    clock = Clock(start=datetime(2026, 11, 23, 15, 0, tzinfo=UTC))
    writer, stats = ListWriter(), Stats()

    with pty_bridge() as (client_tty, server_tty):

        async def main() -> None:
            server = Dlt645Server(
                lambda a: live[a],
                live.keys(),
                clock=clock.now,
                drift_s={"000000000002": 600.0},  # ten minutes fast
                no_clock=["000000000003"],
            )
            await server.start_serial(server_tty, baudrate=9600, parity="E")
            poller = Dlt645GatewayPoller(
                "bus",
                "",
                0,
                [Dlt645Device(m, a) for m, a in zip("ABC", live, strict=True)],
                clock=clock,
                writer=writer,  # type: ignore[arg-type]
                stats=stats,
                timeout_s=1.0,
                dis=["00010000", "02010100"],
                serial=SerialSettings(client_tty, baudrate=9600, parity="E"),
            )
            assert poller.address == f"serial:{client_tty}@9600/8E1"
            try:
                assert await poller.poll_cycle(0.0) == 3
            finally:
                await poller.close()
                await server.stop()
            assert {r.control for r in server.requests} == {0x11}

        run(main())

    stored = pd.concat(writer.frames).set_index("meter_id")
    assert stored.loc["A", "energy_import_kwh"] == 100.25
    assert stored.loc["B", "voltage_l1_v"] == 229.9 and stored.loc["C", "voltage_l1_v"] == 231.0
    by_id = {r["meter_id"]: r for r in seen}
    assert set(by_id) == {"A", "B", "C"}
    for r in seen:
        assert r["collected_at"].tzinfo is not None
    a, b = by_id["A"], by_id["B"]
    assert isinstance(a["device_ts"], pd.Timestamp) and str(a["device_ts"].tz) == "UTC"
    assert abs(a["device_ts"] - pd.Timestamp(a["collected_at"])) < pd.Timedelta(seconds=3)
    drift = b["device_ts"] - pd.Timestamp(b["collected_at"])
    assert pd.Timedelta(seconds=597) < drift < pd.Timedelta(seconds=603)
    # the meter without a clock: its values are kept, device_ts is empty, and it is counted
    assert pd.isna(by_id["C"]["device_ts"])
    assert stats.counters["dlt645_clock_errors"] == 1
    assert stats.meter("C").errors == 0


def test_poller_clock_reading_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from meterwatch.collector.dlt645 import Dlt645Device, Dlt645GatewayPoller
    from meterwatch.core.clock import Clock
    from meterwatch.core.stats import Stats

    seen = spy_records(monkeypatch)

    async def main() -> Dlt645Server:
        server = Dlt645Server(lambda a: VALUES[a], VALUES.keys())
        port = await server.start()
        poller = Dlt645GatewayPoller(
            "dl",
            "127.0.0.1",
            port,
            [Dlt645Device("X", THREE_PHASE)],
            clock=Clock(),
            writer=ListWriter(),  # type: ignore[arg-type]
            stats=Stats(),
            dis=["00010000"],
            read_clock=False,
        )
        try:
            assert await poller.poll_cycle(0.0) == 1
        finally:
            await poller.close()
            await server.stop()
        return server

    server = run(main())
    assert [r.di for r in server.requests] == ["00010000"]
    assert "device_ts" not in seen[0] and "collected_at" in seen[0]


def test_poller_refuses_an_unknown_clock_timezone() -> None:
    from meterwatch.collector.dlt645 import Dlt645GatewayPoller
    from meterwatch.core.clock import Clock
    from meterwatch.core.stats import Stats

    with pytest.raises(ValueError, match="clock_timezone 'Mars/Olympus'"):
        Dlt645GatewayPoller(
            "dl",
            "127.0.0.1",
            1,
            [],
            clock=Clock(),
            writer=ListWriter(),  # type: ignore[arg-type]
            stats=Stats(),
            clock_timezone="Mars/Olympus",
        )


# ------------------------------------------------------------------ config and service wiring


def _config(tmp_path: Any, dlt645: dict[str, Any]) -> Any:
    from meterwatch.config import parse_config

    return parse_config(
        {
            "simulator": {"enabled": True, "residential": 2, "commercial": 1, "industrial": 1},
            "mqtt": {"enabled": False},
            "collector": {"modbus": {"enabled": False}, "dlt645": dlt645},
            "storage": {"path": str(tmp_path / "store.duckdb")},
            "alerts": {"feed": str(tmp_path / "alerts.jsonl")},
        }
    )


def test_service_builds_serial_pollers_sharing_one_port(tmp_path: Any) -> None:
    """A serial gateway with two interval groups: one port object, the settings from config,
    the clock options from the collector defaults or the gateway."""
    from meterwatch.collector.dlt645 import Dlt645GatewayPoller
    from meterwatch.service import Service
    from meterwatch.wiring import build_all_sources

    cfg = _config(
        tmp_path,
        {
            "interval": "15m",
            "clock_timezone": "Europe/Berlin",
            "gateways": [
                {
                    "name": "rs485",
                    "transport": "serial",
                    "serial_port": "/dev/ttyUSB7",
                    "baudrate": 1200,
                    "devices": [
                        {"meter_id": "a", "address": "000000000001"},
                        {"meter_id": "b", "address": "000000000002", "interval": "1m"},
                    ],
                },
                {
                    "name": "dtu",
                    "host": "10.0.0.7",
                    "read_clock": False,
                    "clock_timezone": "UTC",
                    "devices": [{"meter_id": "c", "address": "000000000003"}],
                },
            ],
        },
    )
    service = Service(cfg)

    async def build() -> list[Dlt645GatewayPoller]:
        sources = build_all_sources(service.c, service._report_findings)
        return [s for s in sources if isinstance(s, Dlt645GatewayPoller)]

    try:
        pollers = {p.name: p for p in asyncio.run(build())}
    finally:
        service.store.close()
    assert set(pollers) == {"rs485@900s", "rs485@60s", "dtu"}
    slow, fast, dtu = pollers["rs485@900s"], pollers["rs485@60s"], pollers["dtu"]
    assert isinstance(slow.transport, SerialTransport)
    assert slow.transport is fast.transport  # one port, one bus lock
    assert slow.transport.settings == SerialSettings("/dev/ttyUSB7", 1200, "E", 8, 1)
    assert slow.address == "serial:/dev/ttyUSB7@1200/8E1"
    assert slow.read_clock and slow.clock_zone == ZoneInfo("Europe/Berlin")
    assert isinstance(dtu.transport, TcpTransport) and dtu.address == "tcp:10.0.0.7:8899"
    assert not dtu.read_clock and dtu.clock_zone == ZoneInfo("UTC")


@pytest.mark.parametrize(
    ("gateway", "path", "message"),
    [
        ({"name": "s", "transport": "serial"}, "gateways.0.serial_port", "serial_port is required"),
        ({"name": "t"}, "gateways.0.host", "host is required when transport is tcp"),
        ({"name": "t", "transport": "rs232", "host": "h"}, "gateways.0.transport", "'serial'"),
        ({"name": "t", "host": "h", "parity": "X"}, "gateways.0.parity", "'E'"),
        ({"name": "t", "host": "h", "bytesize": 9}, "gateways.0.bytesize", "7"),
        ({"name": "t", "host": "h", "clock_timezone": "CST"}, "gateways.0.clock_timezone", "IANA"),
    ],
)
def test_dlt645_gateway_config_errors_name_the_field(
    tmp_path: Any, gateway: dict[str, Any], path: str, message: str
) -> None:
    from meterwatch.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        _config(tmp_path, {"gateways": [gateway]})
    text = str(err.value)
    assert f"collector.dlt645.{path}" in text and message in text, text


def test_serial_link_lost_is_a_device_error_and_the_poller_reopens_the_port() -> None:
    """The adapter goes away (the pty's other end closes): the read fails as a link error
    naming the port, the poller closes the port, and the next cycle tries to open it again
    (here the device is gone, so the bus is reported unreachable)."""
    from meterwatch.collector.dlt645 import Dlt645Device, Dlt645GatewayPoller
    from meterwatch.core.clock import Clock
    from meterwatch.core.stats import Stats

    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    stats = Stats()
    errors: list[str | None] = []

    async def main() -> tuple[int, int]:
        poller = Dlt645GatewayPoller(
            "bus",
            "",
            0,
            [Dlt645Device("A", THREE_PHASE)],
            clock=Clock(),
            writer=ListWriter(),  # type: ignore[arg-type]
            stats=stats,
            timeout_s=1.0,
            offline_after=5,
            backoff_cap_s=0.0,
            serial=SerialSettings(path),
        )
        try:
            assert await poller._connect() and poller._is_connected()
            os.close(master)  # the other end hangs up: reads now fail with EIO
            first = await poller.poll_cycle(0.0)
            errors.append(stats.meter("A").last_error)
            assert not poller._is_connected()  # the failed link was closed
            second = await poller.poll_cycle(0.0)
            errors.append(stats.meter("A").last_error)
        finally:
            await poller.close()
        return first, second

    try:
        assert run(main()) == (0, 0)
    finally:
        os.close(slave)
    assert f"link serial:{path}@2400/8E1 failed" in str(errors[0])
    assert "gateway bus unreachable" in str(errors[1])
    assert stats.total("gateway_reconnects", protocol="dlt645") == 1
    assert stats.total("gateway_connect_errors", protocol="dlt645") == 1  # the reopen was attempted
    assert stats.meter("A").errors == 2
