"""Read DL/T 645-2007 meters once into canonical values, over a pluggable byte transport.

The reader only ever sends read requests (11H read data, 13H read address); the frames are
built by :mod:`protocols.dlt645`. A *transport* is anything with::

    async def send(self, data: bytes) -> None
    async def read_frame(self, timeout: float) -> Frame   # raises TimeoutError

Two are here: :class:`TcpTransport` talks to a serial device server (RS-485 meters behind a TCP
port), :class:`SerialTransport` to a local serial port (an RS-485 adapter, pyserial; DL/T 645's
default framing 2400 baud 8E1). :class:`Dlt645GatewayPoller` polls the meters of one such bus
for the service, with the Modbus poller's backoff and offline alerts, and optionally reads each
meter's clock (:func:`read_meter_clock`) into ``device_ts`` next to the collector's
``collected_at``.

Bus discipline: one request in flight per transport. Concurrent ``read_meter`` calls on the
same transport queue on a per-transport lock, each meter read done as a whole.

What comes back (the shape the brief left open):

* :func:`read_meter` returns ``{canonical column: value}`` for every quantity the meter
  answered. A DI the meter refused with an abnormal reply is *absent* (the canonical reading
  then has NaN there), unless it was listed in ``required``, which raises DeviceError.
* :func:`read_meter_detailed` returns a :class:`MeterRead` with the same ``values`` plus
  ``refused`` (DI -> the Dlt645AbnormalReply, with its error bits and reasons) and
  ``ignored_frames`` (frames heard that were not the awaited answer: request echoes from
  half-duplex adapters, late replies to an earlier request, other addresses).

Errors, translated here into the project tree: no answer within ``timeout`` -> DeviceTimeout;
the connection failing -> DeviceError; a reply that cannot be decoded -> ProtocolError (from the
codec). Every exception carries ``meter_id`` and ``address``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import termios
import weakref
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
import serial
from pydantic import Field, ValidationInfo, field_validator

from meterwatch.collector.modbus import FindingsCallback, GatewayPoller, MeterTracker
from meterwatch.collector.sources import SourceContext, SourceSpec, register_source
from meterwatch.collector.writer import ReadingWriter
from meterwatch.core.clock import Clock
from meterwatch.core.config import Duration, OptionalTimeZone, Section, TimeZone
from meterwatch.core.errors import DeviceError, DeviceTimeout, ProtocolError
from meterwatch.core.stats import Stats
from meterwatch.protocols.dlt645 import (
    CLOCK_DATE_DI,
    CLOCK_TIME_DI,
    DATA_ITEMS,
    READ_ADDRESS_REPLY,
    READ_DATA,
    Dlt645AbnormalReply,
    Frame,
    check_abnormal,
    di_to_bytes,
    find_frame,
    frame_length,
    items_for,
    normalize_address,
    normalize_di,
    parse_clock_date,
    parse_clock_time,
    parse_read_address_reply,
    parse_read_values,
    read_address_request,
    read_request,
)

log = logging.getLogger(__name__)

#: Every single-quantity DI of the table: one request per canonical column.
DEFAULT_DIS: tuple[str, ...] = tuple(DATA_ITEMS)


class Transport(Protocol):
    """A byte link to one bus of meters (TCP to a device server, or a serial port)."""

    async def send(self, data: bytes) -> None: ...

    async def read_frame(self, timeout: float) -> Frame:
        """The next complete frame heard on the link; TimeoutError if none in ``timeout`` s."""
        ...


class _FramedLink:
    """Frame reassembly shared by the byte links: bytes in, complete frames out.

    Bytes are reassembled into frames with :func:`protocols.dlt645.find_frame`; bytes outside
    any frame (FEH wake-up bytes, line noise, corrupted frames) are dropped and counted in
    ``discarded_bytes``. Subclasses provide ``_receive`` (the next chunk of bytes).
    """

    endpoint: str

    def __init__(self, *, max_buffer: int = 4096) -> None:
        self.max_buffer = max_buffer
        self.discarded_bytes = 0
        self._buf = bytearray()

    async def _receive(self, timeout: float) -> bytes:
        """The next bytes heard (never empty); TimeoutError, or ConnectionError when lost."""
        raise NotImplementedError

    async def read_frame(self, timeout: float) -> Frame:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame, consumed = find_frame(self._buf)
            # Bytes before a frame, or that can never start one: wake-up bytes and noise.
            self.discarded_bytes += consumed - (frame_length(frame) if frame else 0)
            del self._buf[:consumed]
            if frame is not None:
                return frame
            if len(self._buf) > self.max_buffer:
                # A stalled candidate this long is noise; keep the tail for resync.
                drop = len(self._buf) - self.max_buffer // 2
                self.discarded_bytes += drop
                del self._buf[:drop]
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{self.endpoint}: no complete frame within {timeout} s")
            try:
                chunk = await self._receive(remaining)
            except TimeoutError:
                raise TimeoutError(
                    f"{self.endpoint}: no complete frame within {timeout} s"
                ) from None
            self._buf += chunk


class TcpTransport(_FramedLink):
    """DL/T 645 over a TCP connection to a serial device server (transparent mode)."""

    def __init__(self, *, max_buffer: int = 4096) -> None:
        super().__init__(max_buffer=max_buffer)
        self.endpoint = "tcp:(not connected)"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    async def connect(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.endpoint = f"tcp:{host}:{port}"
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), timeout
        )
        self._buf.clear()

    async def send(self, data: bytes) -> None:
        if self._writer is None:
            raise ConnectionError(f"{self.endpoint}: not connected")
        self._writer.write(data)
        await self._writer.drain()

    async def _receive(self, timeout: float) -> bytes:
        if self._reader is None:
            raise ConnectionError(f"{self.endpoint}: not connected")
        chunk = await asyncio.wait_for(self._reader.read(1024), timeout)
        if not chunk:
            raise ConnectionError(f"{self.endpoint}: connection closed by the peer")
        return chunk

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def __aenter__(self) -> TcpTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class SerialSettings:
    """A local serial port and its framing. Defaults: DL/T 645's 2400 baud, 8 data bits, even
    parity, 1 stop bit (8E1), the standard's default rate for RS-485 meters."""

    port: str
    baudrate: int = 2400
    parity: str = "E"  #: N, E or O
    bytesize: int = 8
    stopbits: float = 1

    def describe(self) -> str:
        """Printable endpoint, e.g. ``serial:/dev/ttyUSB0@2400/8E1``."""
        return f"serial:{self.port}@{self.baudrate}/{self.bytesize}{self.parity}{self.stopbits:g}"


class SerialTransport(_FramedLink):
    """DL/T 645 over a local serial port (an RS-485 adapter), with pyserial.

    The port is opened non-blocking and exclusively (no second process on the same bus); the
    event loop is told when bytes arrive (``add_reader``), so a read never blocks the loop.
    Framing, FEH wake-up bytes and resync are the same as over TCP. Echoes of our own requests
    (half-duplex adapters) are frames the reader ignores. A port that cannot be opened, or
    that fails while open (adapter unplugged), raises ConnectionError naming the endpoint.
    """

    def __init__(self, settings: SerialSettings, *, max_buffer: int = 4096) -> None:
        super().__init__(max_buffer=max_buffer)
        self.settings = settings
        self.endpoint = settings.describe()
        self._serial: serial.Serial | None = None
        self._fd: int | None = None
        self._chunks = bytearray()
        self._error: Exception | None = None
        self._readable: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    async def connect(self, timeout: float = 5.0) -> None:
        """Open the port (``timeout`` is unused: opening a local port does not wait)."""
        self.close()
        s = self.settings
        try:
            port = serial.Serial(
                port=s.port,
                baudrate=s.baudrate,
                bytesize=s.bytesize,
                parity=s.parity,
                stopbits=s.stopbits,
                timeout=0,
                write_timeout=0,
                exclusive=True,
            )
        except (serial.SerialException, ValueError, termios.error) as exc:
            # termios.error: the driver refused the line settings (e.g. an unsupported rate).
            raise ConnectionError(f"{self.endpoint}: cannot open the port: {exc}") from exc
        port.reset_input_buffer()
        self._serial = port
        self._fd = port.fileno()
        self._buf.clear()
        self._chunks.clear()
        self._error = None
        self._readable = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        assert self._serial is not None and self._readable is not None
        try:
            data = self._serial.read(4096)
        except (serial.SerialException, OSError) as exc:
            self._error = exc
            self._stop_reading()
        else:
            self._chunks += data
        self._readable.set()

    def _stop_reading(self) -> None:
        if self._fd is not None and self._loop is not None:
            with contextlib.suppress(Exception):  # the loop may be closed already
                self._loop.remove_reader(self._fd)
        self._fd = None

    async def send(self, data: bytes) -> None:
        if self._serial is None:
            raise ConnectionError(f"{self.endpoint}: port not open")
        rest = memoryview(data)
        try:
            while rest:
                written = self._serial.write(rest) or 0
                rest = rest[written:]
                if rest:  # kernel buffer full (non-blocking write): let it drain
                    await asyncio.sleep(0.005)
        except (serial.SerialException, OSError) as exc:
            raise ConnectionError(f"{self.endpoint}: write failed: {exc}") from exc

    async def _receive(self, timeout: float) -> bytes:
        if self._serial is None or self._readable is None:
            raise ConnectionError(f"{self.endpoint}: port not open")
        if not self._chunks and self._error is None:
            self._readable.clear()
            await asyncio.wait_for(self._readable.wait(), timeout)
        if self._chunks:
            data = bytes(self._chunks)
            self._chunks.clear()
            return data
        raise ConnectionError(f"{self.endpoint}: port failed: {self._error}")

    def close(self) -> None:
        self._stop_reading()
        if self._serial is not None:
            with contextlib.suppress(Exception):
                self._serial.close()
        self._serial = None

    async def __aenter__(self) -> SerialTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


@dataclass
class MeterRead:
    """Result of one read of one meter (see the module docstring)."""

    address: str
    values: dict[str, float] = field(default_factory=dict)
    #: DI -> abnormal reply, for DIs the meter refused (optional ones only).
    refused: dict[str, Dlt645AbnormalReply] = field(default_factory=dict)
    #: Frames heard while waiting that were not the awaited answer.
    ignored_frames: int = 0


_bus_locks: weakref.WeakKeyDictionary[object, asyncio.Lock] = weakref.WeakKeyDictionary()


def _bus_lock(transport: Transport) -> asyncio.Lock:
    lock = _bus_locks.get(transport)
    if lock is None:
        lock = _bus_locks[transport] = asyncio.Lock()
    return lock


def _answers_read(frame: Frame, address: str, di_raw: bytes) -> bool:
    """Is ``frame`` the reply to our read of ``di_raw`` at ``address``?"""
    if not frame.is_reply or frame.function != READ_DATA or frame.address != address:
        return False
    # An abnormal reply carries only the error byte, no DI to compare.
    return frame.is_abnormal or frame.data[:4] == di_raw


async def _await_frame(
    transport: Transport,
    accept: Callable[[Frame], bool],
    timeout: float,
    result: MeterRead,
    fail: DeviceError,
) -> Frame:
    """Read frames until ``accept(frame)``; others are counted. Raises ``fail`` on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        try:
            if remaining <= 0:
                raise TimeoutError
            frame = await transport.read_frame(remaining)
        except TimeoutError:
            raise fail from None
        if accept(frame):
            return frame
        result.ignored_frames += 1
        log.debug("ignored frame %02XH from %s while waiting", frame.control, frame.address)


async def _request(
    transport: Transport, address: str, di: str, timeout: float, result: MeterRead, meter_id: str
) -> Frame:
    """Send one read of ``di`` and wait for its answer (the caller holds the bus lock)."""
    endpoint = getattr(transport, "endpoint", type(transport).__name__)
    timeout_error = DeviceTimeout(
        meter_id, address, f"no reply to read of DI {di} within {timeout} s via {endpoint}"
    )
    try:
        await transport.send(read_request(address, di))
        return await _await_frame(
            transport,
            functools.partial(_answers_read, address=address, di_raw=di_to_bytes(di)),
            timeout,
            result,
            timeout_error,
        )
    except OSError as exc:  # ConnectionError, socket and serial port errors
        raise DeviceError(meter_id, address, f"link {endpoint} failed: {exc}") from exc


async def read_meter_detailed(
    transport: Transport,
    address: str,
    dis: Sequence[str] | None = None,
    timeout: float = 1.0,
    *,
    required: Collection[str] = (),
    meter_id: str | None = None,
) -> MeterRead:
    """Read each DI of one meter, one request at a time, into a :class:`MeterRead`.

    ``dis`` defaults to :data:`DEFAULT_DIS`; block DIs (e.g. ``0201FF00``) are allowed and
    fill all their members. ``timeout`` is per request. An abnormal reply to a DI in
    ``required`` raises DeviceError; to any other DI it is recorded in ``refused``.
    """
    address = normalize_address(address)
    meter_id = meter_id or address
    wanted = [normalize_di(di) for di in (DEFAULT_DIS if dis is None else dis)]
    for di in wanted:
        items_for(di)  # unknown DIs fail here, before anything is sent
    must = {normalize_di(di) for di in required}
    result = MeterRead(address=address)

    async with _bus_lock(transport):
        for di in wanted:
            frame = await _request(transport, address, di, timeout, result, meter_id)
            try:
                result.values.update(parse_read_values(frame, di))
            except Dlt645AbnormalReply as exc:
                if di in must:
                    raise DeviceError(meter_id, address, str(exc)) from exc
                result.refused[di] = exc
                log.debug("meter %s refused DI %s: %s", meter_id, di, ", ".join(exc.reasons))
    return result


async def read_meter(
    transport: Transport,
    address: str,
    dis: Sequence[str] | None = None,
    timeout: float = 1.0,
    *,
    required: Collection[str] = (),
    meter_id: str | None = None,
) -> dict[str, float]:
    """Read one meter once: ``{canonical column: value}`` (refused DIs absent).

    See :func:`read_meter_detailed` for the arguments and what was refused or ignored.
    """
    read = await read_meter_detailed(
        transport, address, dis, timeout, required=required, meter_id=meter_id
    )
    return read.values


async def read_meter_clock(
    transport: Transport,
    address: str,
    timeout: float = 1.0,
    *,
    meter_id: str | None = None,
) -> datetime:
    """The meter's clock (DIs 04000101 date, 04000102 time) as a naive local datetime.

    The date is read first, then the time. Should the meter's midnight fall between the two
    reads, the time (just after 00:00:00) would be paired with the previous day; so when the
    time of day is no later than the seconds the two reads took (+1), the date is read once more
    and that one is used. Raises DeviceError when the meter refuses a clock DI (the cause is the
    Dlt645AbnormalReply), DeviceTimeout when it is silent, ProtocolError (Dlt645FrameError) when
    the answer is not a valid date or time.
    """
    address = normalize_address(address)
    meter_id = meter_id or address
    scratch = MeterRead(address=address)
    loop = asyncio.get_running_loop()

    async def get(di: str) -> Frame:
        frame = await _request(transport, address, di, timeout, scratch, meter_id)
        if frame.is_abnormal:
            try:
                check_abnormal(frame, di)
            except Dlt645AbnormalReply as exc:
                raise DeviceError(meter_id, address, str(exc)) from exc
        return frame

    async with _bus_lock(transport):
        t0 = loop.time()
        day: date = parse_clock_date(await get(CLOCK_DATE_DI))[0]
        moment: time = parse_clock_time(await get(CLOCK_TIME_DI))
        elapsed = loop.time() - t0
        if moment.hour * 3600 + moment.minute * 60 + moment.second <= elapsed + 1:
            day = parse_clock_date(await get(CLOCK_DATE_DI))[0]
    return datetime.combine(day, moment)


async def read_meter_address(transport: Transport, timeout: float = 1.0) -> str:
    """Ask the only meter on a link for its address (13H to AAAAAAAAAAAA).

    With several meters on the bus their replies collide; use it point to point only.
    """
    endpoint = getattr(transport, "endpoint", type(transport).__name__)
    scratch = MeterRead(address="AAAAAAAAAAAA")
    fail = DeviceTimeout(
        "unknown", "AAAAAAAAAAAA", f"no reply to read-address within {timeout} s via {endpoint}"
    )
    async with _bus_lock(transport):
        try:
            await transport.send(read_address_request())
            frame = await _await_frame(
                transport, lambda f: f.control == READ_ADDRESS_REPLY, timeout, scratch, fail
            )
        except OSError as exc:
            raise DeviceError("unknown", "AAAAAAAAAAAA", f"link {endpoint} failed: {exc}") from exc
    return parse_read_address_reply(frame)


@dataclass
class Dlt645Device:
    """A DL/T 645 meter on a bus: its meter id and 12-digit address."""

    meter_id: str
    address: str


def local_to_utc(local: datetime, zone: ZoneInfo) -> pd.Timestamp:
    """A meter's naive local clock reading as a UTC Timestamp (NaT in a DST gap or overlap).

    An hour that does not exist, or exists twice, at a daylight-saving change cannot be placed
    without guessing, so it becomes NaT (the caller counts it).
    """
    ts = pd.Timestamp(local).tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
    return pd.NaT if pd.isna(ts) else ts.tz_convert("UTC")


class Dlt645GatewayPoller(GatewayPoller):
    """Polls the DL/T 645 meters on one bus (a TCP serial device server, or a local serial port).

    Same discipline as :class:`collector.modbus.ModbusGatewayPoller`: one request in flight on
    the link, polls spread over the interval, a failing meter backed off exponentially (capped),
    offline/online transitions logged once and reported as ``meter_offline`` findings. A link
    error (not a timeout) closes the connection (or port); the next meter reconnects.

    ``serial`` set: the bus is that local port (``host``/``port`` unused). ``link``: an open or
    closed transport to use instead, e.g. one serial port shared by the pollers of several
    interval groups (requests queue on its bus lock; a poller finding it closed reopens it).
    With ``read_clock``
    each reading also carries ``device_ts``: the meter clock, read right after the values and
    taken as local time in ``clock_timezone``, as a UTC Timestamp. A meter whose clock cannot be
    read (refused, silent, invalid) still gives its reading, with ``device_ts`` NaT; that is
    counted (``dlt645_clock_errors``) and logged once per meter until its clock reads again.
    """

    protocol = "dlt645"

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        devices: list[Dlt645Device],
        *,
        clock: Clock,
        writer: ReadingWriter,
        stats: Stats,
        timeout_s: float = 1.0,
        pause_s: float = 0.0,
        offline_after: int = 3,
        backoff_cap_s: float = 300.0,
        interval_s: float | None = None,
        align: bool = False,
        dis: Sequence[str] | None = None,
        on_findings: FindingsCallback | None = None,
        serial: SerialSettings | None = None,
        link: TcpTransport | SerialTransport | None = None,
        read_clock: bool = True,
        clock_timezone: str = "Asia/Shanghai",
    ):
        self.name = name
        self.host, self.port = host, port
        self.devices = devices
        self.clock = clock
        self.writer = writer
        self.stats = stats
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        self.interval_s = interval_s
        self.align = align
        self.dis = dis
        self.read_clock = read_clock
        try:
            self.clock_zone = ZoneInfo(clock_timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"DL/T 645 gateway {name}: clock_timezone {clock_timezone!r} is not an IANA "
                f"time zone ({exc})"
            ) from None
        self.tracker = MeterTracker(
            clock,
            stats,
            protocol="dlt645",
            gateway=name,
            offline_after=offline_after,
            backoff_cap_s=backoff_cap_s,
            on_findings=on_findings,
        )
        self.transport: TcpTransport | SerialTransport
        if link is not None:
            self.transport = link
        elif serial is not None:
            self.transport = SerialTransport(serial)
        else:
            self.transport = TcpTransport()
        if isinstance(self.transport, SerialTransport):
            self.address = self.transport.endpoint
        else:
            self.address = f"tcp:{host}:{port}"
        self._clock_failing: set[str] = set()
        self._gateway_down = False
        self.stopping = False

    async def close(self) -> None:
        self.transport.close()

    async def _connect(self) -> bool:
        try:
            if isinstance(self.transport, SerialTransport):
                await self.transport.connect(timeout=self.timeout_s)
            else:
                await self.transport.connect(self.host, self.port, timeout=self.timeout_s)
        except (OSError, TimeoutError) as exc:
            self.stats.count("gateway_connect_errors", **self.tracker.labels)
            if not self._gateway_down:
                log.warning(
                    "DL/T 645 gateway %s (%s) unreachable: %s", self.name, self.address, exc
                )
                self._gateway_down = True
            return False
        if self._gateway_down:
            log.info("DL/T 645 gateway %s (%s) reachable again", self.name, self.address)
            self._gateway_down = False
        return True

    def _is_connected(self) -> bool:
        return self.transport.is_open

    def _where(self, dev: Dlt645Device) -> str:
        return f"{self.address} address {dev.address}"

    async def _read_device(self, dev: Dlt645Device, now: datetime) -> dict[str, object] | None:
        where = self._where(dev)
        self.tracker.request(dev.meter_id)
        try:
            values = await read_meter(
                self.transport, dev.address, self.dis, self.timeout_s, meter_id=dev.meter_id
            )
        except (DeviceError, ProtocolError) as exc:
            if not isinstance(exc, DeviceTimeout):
                self.stats.count("gateway_reconnects", **self.tracker.labels)
                await self.close()
            self.tracker.failed(dev.meter_id, now, exc, where)
            return None
        self.tracker.succeeded(dev.meter_id, now, where)
        reading: dict[str, object] = {
            "meter_id": dev.meter_id,
            "ts": now.replace(microsecond=0),
            "collected_at": now,
            **values,
        }
        if self.read_clock:
            reading["device_ts"] = await self._device_time(dev, where)
        return reading

    async def _device_time(self, dev: Dlt645Device, where: str) -> pd.Timestamp:
        """The meter clock as UTC, or NaT (counted, logged once) when it cannot be read."""
        try:
            local = await read_meter_clock(
                self.transport, dev.address, self.timeout_s, meter_id=dev.meter_id
            )
        except (DeviceError, ProtocolError) as exc:
            self.stats.count("dlt645_clock_errors", **self.tracker.labels)
            refused = isinstance(exc.__cause__, Dlt645AbnormalReply)
            if isinstance(exc, DeviceError) and not refused and not isinstance(exc, DeviceTimeout):
                self.stats.count(
                    "gateway_reconnects", **self.tracker.labels
                )  # link failed: next meter reconnects
                await self.close()
            if dev.meter_id not in self._clock_failing:
                self._clock_failing.add(dev.meter_id)
                log.warning(
                    "meter %s (%s): clock not read, device_ts empty: %s", dev.meter_id, where, exc
                )
            return pd.NaT
        if dev.meter_id in self._clock_failing:
            self._clock_failing.discard(dev.meter_id)
            log.info("meter %s (%s): clock read again", dev.meter_id, where)
        device_ts = local_to_utc(local, self.clock_zone)
        if pd.isna(device_ts):
            self.stats.count("dlt645_clock_ambiguous", **self.tracker.labels)
        return device_ts


# -- config section and registration (collector.dlt645) ----------------------------------------


class Dlt645DeviceConfig(Section):
    meter_id: str
    address: str = Field(pattern=r"^[0-9A-Fa-f]{12}$")
    interval: Duration | None = Field(None, gt=0)


class Dlt645GatewayConfig(Section):
    name: str
    transport: Literal["tcp", "serial"] = "tcp"  # tcp: serial device server; serial: local port
    host: str = Field("", validate_default=True)
    port: int = Field(8899, ge=1, le=65535)
    serial_port: str | None = Field(None, validate_default=True)  # e.g. /dev/ttyUSB0
    baudrate: int = Field(2400, gt=0)  # DL/T 645 default framing 2400 8E1
    parity: Literal["N", "E", "O"] = "E"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    timeout_s: float = Field(1.0, gt=0)
    pause_s: float = Field(0.0, ge=0)
    interval: Duration | None = Field(None, gt=0)
    align: bool | None = None
    read_clock: bool | None = None  # default: collector.dlt645.read_clock
    clock_timezone: OptionalTimeZone = None  # default: collector's
    devices: list[Dlt645DeviceConfig] = []

    # Field validators (not a model validator) so that errors carry the field's path.
    @field_validator("host")
    @classmethod
    def _host_for_tcp(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("transport", "tcp") == "tcp" and not value:
            raise ValueError("host is required when transport is tcp")
        return value

    @field_validator("serial_port")
    @classmethod
    def _port_for_serial(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("transport") == "serial" and not value:
            raise ValueError("serial_port is required when transport is serial (e.g. /dev/ttyUSB0)")
        return value


class Dlt645CollectorConfig(Section):
    enabled: bool = True
    interval: Duration = 900.0
    align: bool = False
    offline_after: int = Field(3, ge=1)
    backoff_cap: Duration = Field(300.0, gt=0)
    read_clock: bool = True  # read each meter's clock (DI 04000101/04000102) into device_ts
    #: Zone the meter clocks keep (they hold local time without a zone); China's meters: CST.
    clock_timezone: TimeZone = "Asia/Shanghai"
    gateways: list[Dlt645GatewayConfig] = []


def build_pollers(cfg: Dlt645CollectorConfig, ctx: SourceContext) -> list[Dlt645GatewayPoller]:
    """DL/T 645 meters behind serial device servers or on local serial ports, grouped by
    interval like Modbus; the groups of one serial port share its one open port."""
    pollers = []
    for gw in cfg.gateways:
        link = None
        if gw.transport == "serial" and gw.serial_port:
            link = SerialTransport(
                SerialSettings(
                    gw.serial_port,
                    baudrate=gw.baudrate,
                    parity=gw.parity,
                    bytesize=gw.bytesize,
                    stopbits=gw.stopbits,
                )
            )
        gw_interval = gw.interval or cfg.interval
        groups: dict[float, list[Dlt645Device]] = {}
        for d in gw.devices:
            groups.setdefault(d.interval or gw_interval, []).append(
                Dlt645Device(d.meter_id, d.address)
            )
        for group_interval, devices in groups.items():
            name = gw.name if len(groups) == 1 else f"{gw.name}@{group_interval:g}s"
            pollers.append(
                Dlt645GatewayPoller(
                    name,
                    gw.host,
                    gw.port,
                    devices,
                    clock=ctx.clock,
                    writer=ctx.writer,
                    stats=ctx.stats,
                    timeout_s=gw.timeout_s,
                    pause_s=gw.pause_s,
                    offline_after=cfg.offline_after,
                    backoff_cap_s=cfg.backoff_cap,
                    interval_s=group_interval,
                    align=cfg.align if gw.align is None else gw.align,
                    on_findings=ctx.on_findings,
                    link=link,
                    read_clock=cfg.read_clock if gw.read_clock is None else gw.read_clock,
                    clock_timezone=gw.clock_timezone or cfg.clock_timezone,
                )
            )
    return pollers


register_source(
    SourceSpec(
        "dlt645",
        Dlt645CollectorConfig,
        build_pollers,  # type: ignore[arg-type]
        "DL/T 645-2007 meters behind TCP serial device servers or on a local RS-485 port, polled",
    )
)
