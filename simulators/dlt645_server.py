"""Simulated DL/T 645-2007 meters on one TCP port (RS-485 meters behind a device server) or on a
serial / pseudo-terminal device (:meth:`Dlt645Server.start_serial`, an RS-485 bus on a port).

Every connection (and the serial line) is a shared bus: a frame addressed to one of the simulated meters gets that
meter's answer, any other address gets silence (as on RS-485). Values come from a callback,
``values(address) -> {canonical column: value}``, asked at each request, so a fleet model can
feed live numbers; a column that is missing or NaN is a quantity the meter does not have.

Answers, as a meter would give them:

* read data (11H), known DI -> normal reply 91H with the value in BCD;
* read of the meter clock, DI 04000101 (date YYMMDDWW) and 04000102 (time hhmmss) -> the meter's
  local time: ``clock()`` (UTC, default the wall clock) plus the meter's drift
  (``drift_s[address]``, seconds, default 0), in ``clock_timezone`` (default Asia/Shanghai);
  a meter listed in ``no_clock`` refuses both with D1H "no data requested";
* read data, unknown DI or a quantity the meter does not have -> abnormal reply D1H with the
  "no data requested" bit; a value the BCD format cannot hold -> D1H "other error";
* read address (13H) to the wildcard AAAAAAAAAAAA -> 93H with the address, only when a single
  meter is simulated (several would collide on a real bus); wildcard reads of data likewise;
* broadcast 999999999999 -> no reply (broadcasts are never answered);
* any other function -> abnormal reply (C0H | function) "other error": nothing else is
  simulated, and it is recorded, so tests can prove a client never sent it.

Every master frame heard is appended to ``requests`` as (address, control, DI) — including ones
to unknown addresses — so a test can check exactly what a client sent.

Like the Modbus and MQTT simulators, it reuses the pure codec (:mod:`protocols.dlt645`) rather
than duplicating it; the tests pin that codec to hand-computed and published frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import serial

from meterwatch.protocols.dlt645 import (
    BROADCAST_ADDRESS,
    CLOCK_DATE_DI,
    CLOCK_DIS,
    DEFAULT_PREAMBLE,
    ERR_NO_DATA,
    ERR_OTHER,
    READ_ADDRESS,
    READ_DATA,
    WILDCARD_ADDRESS,
    Frame,
    di_from_bytes,
    encode_abnormal_reply,
    encode_clock_reply,
    encode_read_address_reply,
    encode_read_reply,
    find_frame,
    items_for,
    normalize_address,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestRecord:
    """One master frame the simulator heard. ``di`` is None when the frame carries none."""

    address: str
    control: int
    di: str | None


class Dlt645Server:
    """Several simulated meters answering DL/T 645-2007 reads on one TCP port or serial line."""

    def __init__(
        self,
        values: Callable[[str], Mapping[str, float]],
        addresses: Iterable[str],
        *,
        preamble: int = DEFAULT_PREAMBLE,
        clock: Callable[[], datetime] | None = None,
        clock_timezone: str = "Asia/Shanghai",
        drift_s: Mapping[str, float] | None = None,
        no_clock: Iterable[str] = (),
    ) -> None:
        self.values = values
        self.addresses: frozenset[str] = frozenset(normalize_address(a) for a in addresses)
        self.preamble = preamble
        self.clock = clock or (lambda: datetime.now(UTC))
        self.clock_zone = ZoneInfo(clock_timezone)
        #: Meter address -> how far its clock runs ahead (negative: behind) [s]; mutable.
        self.drift_s: dict[str, float] = {
            normalize_address(a): float(v) for a, v in (drift_s or {}).items()
        }
        self.no_clock = frozenset(normalize_address(a) for a in no_clock)
        #: Every master frame heard, in order.
        self.requests: list[RequestRecord] = []
        self.port: int | None = None
        self.serial_port: str | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._serial: serial.Serial | None = None
        self._serial_buf = bytearray()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0 picks a free port) and return the port."""
        self._server = await asyncio.start_server(self._serve, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def start_serial(
        self,
        port: str,
        *,
        baudrate: int = 2400,
        parity: str = "E",
        bytesize: int = 8,
        stopbits: float = 1,
    ) -> None:
        """Answer on a serial (or pseudo-terminal) device instead of TCP: the meters' RS-485 bus.

        Defaults are DL/T 645's 2400 baud 8E1.
        """
        self._serial = serial.Serial(
            port=port,
            baudrate=baudrate,
            parity=parity,
            bytesize=bytesize,
            stopbits=stopbits,
            timeout=0,
            write_timeout=None,  # replies are short; a blocking write never waits long
        )
        self._serial.reset_input_buffer()
        self.serial_port = port
        asyncio.get_running_loop().add_reader(self._serial.fileno(), self._serial_readable)
        log.info("simulated DL/T 645 meters on serial %s (%d meters)", port, len(self.addresses))

    def _serial_readable(self) -> None:
        assert self._serial is not None
        try:
            self._serial_buf += self._serial.read(4096)
        except (serial.SerialException, OSError) as exc:
            log.warning("simulated DL/T 645 bus on %s failed: %s", self.serial_port, exc)
            self._close_serial()
            return
        for answer in self.feed(self._serial_buf):
            self._serial.write(answer)

    def _close_serial(self) -> None:
        if self._serial is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._serial.fileno())
            self._serial.close()
            self._serial = None

    async def stop(self) -> None:
        """Close the listener and every open connection, or the serial port."""
        self._close_serial()
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    def meter_time(self, address: str) -> datetime:
        """The meter's clock now: naive local time in ``clock_timezone``, drift included."""
        now = self.clock() + timedelta(seconds=self.drift_s.get(address, 0.0))
        return now.astimezone(self.clock_zone).replace(tzinfo=None, microsecond=0)

    def feed(self, buf: bytearray) -> list[bytes]:
        """Consume every complete frame at the front of ``buf``; the answers to give, in order.

        Frames from other slaves (replies) are ignored, as on a shared bus; bytes outside
        frames (FEH wake-up bytes, noise) are dropped by the frame finder.
        """
        answers: list[bytes] = []
        while True:
            frame, consumed = find_frame(buf)
            del buf[:consumed]
            if frame is None:
                return answers
            if frame.is_reply:  # another slave's answer on the shared bus
                continue
            answer = self.respond(frame)
            if answer is not None:
                answers.append(answer)

    def _target(self, address: str) -> str | None:
        if address in self.addresses:
            return address
        if address == WILDCARD_ADDRESS and len(self.addresses) == 1:
            return next(iter(self.addresses))
        return None

    def respond(self, frame: Frame) -> bytes | None:
        """Record a master frame and return the bytes a meter would answer (None: silence)."""
        di = di_from_bytes(frame.data[:4]) if len(frame.data) >= 4 else None
        self.requests.append(RequestRecord(frame.address, frame.control, di))
        meter = self._target(frame.address)
        if meter is None or frame.address == BROADCAST_ADDRESS:
            return None
        if frame.function == READ_ADDRESS:
            return encode_read_address_reply(meter, self.preamble)
        if frame.function != READ_DATA or di is None:
            return encode_abnormal_reply(meter, frame.function, ERR_OTHER, self.preamble)
        if di in CLOCK_DIS:
            if meter in self.no_clock:
                return encode_abnormal_reply(meter, READ_DATA, ERR_NO_DATA, self.preamble)
            local = self.meter_time(meter)
            value = local.date() if di == CLOCK_DATE_DI else local.time()
            return encode_clock_reply(meter, di, value, self.preamble)
        try:
            items = items_for(di)
        except ValueError:
            return encode_abnormal_reply(meter, READ_DATA, ERR_NO_DATA, self.preamble)
        current = self.values(meter)
        have = {
            item.name: float(current[item.name])
            for _, item in items
            if item.name in current and not math.isnan(current[item.name])
        }
        if len(have) < len(items):
            return encode_abnormal_reply(meter, READ_DATA, ERR_NO_DATA, self.preamble)
        try:
            return encode_read_reply(meter, di, have, self.preamble)
        except ValueError as exc:
            log.warning("meter %s cannot encode DI %s: %s", meter, di, exc)
            return encode_abnormal_reply(meter, READ_DATA, ERR_OTHER, self.preamble)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        buf = bytearray()
        try:
            while chunk := await reader.read(1024):
                buf += chunk
                for answer in self.feed(buf):
                    writer.write(answer)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._connections.discard(writer)
            writer.close()
