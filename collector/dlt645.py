"""Read DL/T 645-2007 meters once into canonical values, over a pluggable byte transport.

The reader only ever sends read requests (11H read data, 13H read address); the frames are
built by :mod:`protocols.dlt645`. A *transport* is anything with::

    async def send(self, data: bytes) -> None
    async def read_frame(self, timeout: float) -> Frame   # raises TimeoutError

so a serial (pyserial) transport can be added next to :class:`TcpTransport`, which talks to a
serial device server (RS-485 meters behind a TCP port). :class:`Dlt645GatewayPoller` polls the
meters of one such server for the service, with the Modbus poller's backoff and offline alerts.

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
import functools
import logging
import weakref
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from collector.modbus import FindingsCallback, GatewayPoller, MeterTracker
from collector.writer import ReadingWriter
from meterwatch.clock import Clock
from meterwatch.errors import DeviceError, DeviceTimeout, ProtocolError
from meterwatch.stats import Stats
from protocols.dlt645 import (
    DATA_ITEMS,
    READ_ADDRESS_REPLY,
    READ_DATA,
    Dlt645AbnormalReply,
    Frame,
    di_to_bytes,
    find_frame,
    frame_length,
    items_for,
    normalize_address,
    normalize_di,
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


class TcpTransport:
    """DL/T 645 over a TCP connection to a serial device server (transparent mode).

    Bytes are reassembled into frames with :func:`protocols.dlt645.find_frame`; bytes outside
    any frame (FEH wake-up bytes, line noise, corrupted frames) are dropped and counted in
    ``discarded_bytes``.
    """

    def __init__(self, *, max_buffer: int = 4096) -> None:
        self.max_buffer = max_buffer
        self.endpoint = "tcp:(not connected)"
        self.discarded_bytes = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buf = bytearray()

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

    async def read_frame(self, timeout: float) -> Frame:
        if self._reader is None:
            raise ConnectionError(f"{self.endpoint}: not connected")
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
                chunk = await asyncio.wait_for(self._reader.read(1024), remaining)
            except TimeoutError:
                raise TimeoutError(
                    f"{self.endpoint}: no complete frame within {timeout} s"
                ) from None
            if not chunk:
                raise ConnectionError(f"{self.endpoint}: connection closed by the peer")
            self._buf += chunk

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def __aenter__(self) -> TcpTransport:
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
    endpoint = getattr(transport, "endpoint", type(transport).__name__)

    async with _bus_lock(transport):
        for di in wanted:
            di_raw = di_to_bytes(di)
            timeout_error = DeviceTimeout(
                meter_id, address, f"no reply to read of DI {di} within {timeout} s via {endpoint}"
            )
            try:
                await transport.send(read_request(address, di))
                frame = await _await_frame(
                    transport,
                    functools.partial(_answers_read, address=address, di_raw=di_raw),
                    timeout,
                    result,
                    timeout_error,
                )
            except OSError as exc:  # ConnectionError and socket errors
                raise DeviceError(meter_id, address, f"link {endpoint} failed: {exc}") from exc
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


class Dlt645GatewayPoller(GatewayPoller):
    """Polls the DL/T 645 meters behind one serial device server (TCP), like the Modbus poller.

    Same discipline as :class:`collector.modbus.ModbusGatewayPoller`: one request in flight on
    the link, polls spread over the interval, a failing meter backed off exponentially (capped),
    offline/online transitions logged once and reported as ``meter_offline`` findings. A link
    error (not a timeout) closes the connection; the next meter reconnects.
    """

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
    ):
        self.name = name
        self.host, self.port = host, port
        self.address = f"tcp:{host}:{port}"
        self.devices = devices
        self.clock = clock
        self.writer = writer
        self.stats = stats
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        self.interval_s = interval_s
        self.align = align
        self.dis = dis
        self.tracker = MeterTracker(
            clock,
            stats,
            protocol="dlt645",
            offline_after=offline_after,
            backoff_cap_s=backoff_cap_s,
            on_findings=on_findings,
        )
        self.transport = TcpTransport()
        self._connected = False
        self._gateway_down = False
        self.stopping = False

    async def close(self) -> None:
        self.transport.close()
        self._connected = False

    async def _connect(self) -> bool:
        try:
            await self.transport.connect(self.host, self.port, timeout=self.timeout_s)
        except (OSError, TimeoutError) as exc:
            self.stats.count("dlt645_connect_errors")
            if not self._gateway_down:
                log.warning(
                    "DL/T 645 gateway %s (%s) unreachable: %s", self.name, self.address, exc
                )
                self._gateway_down = True
            return False
        if self._gateway_down:
            log.info("DL/T 645 gateway %s (%s) reachable again", self.name, self.address)
            self._gateway_down = False
        self._connected = True
        return True

    def _is_connected(self) -> bool:
        return self._connected

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
                self.stats.count("dlt645_reconnects")
                await self.close()
            self.tracker.failed(dev.meter_id, now, exc, where)
            return None
        self.tracker.succeeded(dev.meter_id, now, where)
        return {
            "meter_id": dev.meter_id,
            "ts": now.replace(microsecond=0),
            "collected_at": now,
            **values,
        }
