"""Modbus polling over TCP, RTU over TCP and serial RTU: one request in flight per bus.

Transports (``make_client``): ``tcp`` (MBAP framing), ``rtu-over-tcp`` (RTU frames with CRC
through a transparent serial device server) and ``serial`` (RTU on a local RS-485 port via
pyserial). Every request on one client holds that client's bus lock, so pollers that share a
gateway (several interval groups) never put two requests on the wire at once.

Failure handling: a busy meter (exception 6) is retried a few times after a short pause; any
error other than a timeout or a Modbus exception closes the link so that the next request
reconnects. A meter that fails is backed off exponentially up to ``backoff_cap_s``; its
offline/online transitions are logged once and reported as ``meter_offline`` findings.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import pandas as pd
from pydantic import Field, model_validator
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from meterwatch.collector.sources import SourceContext, SourceSpec, register_source
from meterwatch.collector.writer import ReadingWriter
from meterwatch.core.catalogue import CATALOGUE
from meterwatch.core.clock import Clock
from meterwatch.core.config import Duration, Section
from meterwatch.core.errors import DeviceError, DeviceException, DeviceTimeout
from meterwatch.core.schema import FINDING_COLUMNS, empty_findings
from meterwatch.core.stats import MeterHealth, Stats
from meterwatch.protocols.register_map import ReadBlock, RegisterMap

log = logging.getLogger(__name__)

#: Only these function codes are ever sent: read holding (03) and read input (04) registers.
READ_FUNCTIONS = {"holding": "read_holding_registers", "input": "read_input_registers"}

#: Modbus exception 6, "server device busy": worth a short bounded retry.
BUSY = 6

Transport = Literal["tcp", "rtu-over-tcp", "serial"]
ModbusClient = AsyncModbusTcpClient | AsyncModbusSerialClient
FindingsCallback = Callable[[pd.DataFrame], Any]


def make_client(
    transport: Transport,
    *,
    host: str = "",
    port: int = 502,
    serial_port: str | None = None,
    baudrate: int = 9600,
    parity: str = "N",
    stopbits: int = 1,
    bytesize: int = 8,
    timeout_s: float = 1.0,
) -> tuple[ModbusClient, str]:
    """A pymodbus client for one bus and a printable address for it (no retries inside)."""
    if transport == "tcp":
        client: ModbusClient = AsyncModbusTcpClient(
            host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0
        )
        return client, f"{host}:{port}"
    if transport == "rtu-over-tcp":
        client = AsyncModbusTcpClient(
            host,
            port=port,
            framer=FramerType.RTU,
            timeout=timeout_s,
            retries=0,
            reconnect_delay=0,
        )
        return client, f"rtu://{host}:{port}"
    if transport == "serial":
        if not serial_port:
            raise ValueError("transport serial needs a serial port (e.g. /dev/ttyUSB0)")
        client = AsyncModbusSerialClient(
            serial_port,
            framer=FramerType.RTU,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            bytesize=bytesize,
            timeout=timeout_s,
            retries=0,
            reconnect_delay=0,
        )
        return client, f"{serial_port}@{baudrate}{parity}{stopbits}"
    raise ValueError(f"unknown Modbus transport {transport!r}; use tcp, rtu-over-tcp or serial")


_bus_locks: weakref.WeakKeyDictionary[object, asyncio.Lock] = weakref.WeakKeyDictionary()


def bus_lock(client: object) -> asyncio.Lock:
    """The lock every request on ``client`` holds: one request in flight per bus/gateway."""
    lock = _bus_locks.get(client)
    if lock is None:
        lock = _bus_locks[client] = asyncio.Lock()
    return lock


@dataclass
class ModbusDevice:
    """A meter behind a gateway: its unit id, register map and read plan."""

    meter_id: str
    unit: int
    regmap: RegisterMap
    blocks: list[ReadBlock] = field(default_factory=list)
    failures: int = 0
    skip_until: datetime | None = None

    def __post_init__(self) -> None:
        if not self.blocks:
            self.blocks = self.regmap.plan()


class MeterTracker:
    """Backoff and online/offline bookkeeping for the meters of one poller (any protocol).

    A meter goes offline after ``offline_after`` consecutive failures: logged once and reported
    as an open ``meter_offline`` finding; its first success after that is logged once and
    reported as the same finding with ``ends_at`` (the alert resolves). Failures in between are
    only counted (``MeterHealth``).
    """

    def __init__(
        self,
        clock: Clock,
        stats: Stats,
        *,
        protocol: str,
        gateway: str,
        offline_after: int = 3,
        backoff_cap_s: float = 300.0,
        on_findings: FindingsCallback | None = None,
    ):
        self.clock = clock
        self.stats = stats
        self.protocol = protocol
        self.gateway = gateway
        self.labels = {"gateway": gateway, "protocol": protocol}
        stats.declare_gateway(gateway, protocol)
        self.offline_after = offline_after
        self.backoff_cap_s = backoff_cap_s
        self.on_findings = on_findings
        self.failures: dict[str, int] = {}
        self.skip_until: dict[str, datetime] = {}
        self.offline_since: dict[str, datetime] = {}

    def due(self, meter_id: str, now: datetime) -> bool:
        until = self.skip_until.get(meter_id)
        return until is None or now >= until

    def request(self, meter_id: str) -> MeterHealth:
        health = self.stats.meter(meter_id)
        health.requests += 1
        self.stats.count("meter_requests", **self.labels)
        return health

    def succeeded(self, meter_id: str, now: datetime, where: str) -> None:
        health = self.stats.meter(meter_id)
        self.failures.pop(meter_id, None)
        self.skip_until.pop(meter_id, None)
        health.consecutive_errors = 0
        health.last_success = now
        health.online = True
        since = self.offline_since.pop(meter_id, None)
        if since is not None:
            log.info("meter %s (%s) back online", meter_id, where)
            self._emit(meter_id, since, now, where, "answered again")

    def failed(self, meter_id: str, now: datetime, exc: Exception, where: str) -> None:
        health = self.stats.meter(meter_id)
        n = self.failures[meter_id] = self.failures.get(meter_id, 0) + 1
        health.errors += 1
        health.consecutive_errors += 1
        health.last_error = str(exc)
        self.stats.count("meter_errors", **self.labels)
        backoff = min(self.backoff_cap_s, 2.0**n)  # wall seconds
        self.skip_until[meter_id] = now + timedelta(seconds=self.clock.service_seconds(backoff))
        if health.consecutive_errors >= self.offline_after and meter_id not in self.offline_since:
            log.warning("meter %s offline: %s", meter_id, exc)
            health.online = False
            self.offline_since[meter_id] = now
            self._emit(meter_id, now, None, where, str(exc))

    def _emit(
        self, meter_id: str, since: datetime, until: datetime | None, where: str, reason: str
    ) -> None:
        self.stats.count(
            "meter_offline_events" if until is None else "meter_online_events", **self.labels
        )
        if self.on_findings is None:
            return
        if until is None:
            summary = (
                f"meter {meter_id} ({self.protocol} at {where}) stopped answering after "
                f"{self.offline_after} failed reads: {reason}"
            )
        else:
            minutes = (until - since).total_seconds() / 60
            summary = f"meter {meter_id} ({self.protocol} at {where}) answered again after {minutes:.1f} min offline"
        row = {
            "type": "meter_offline",
            "severity": CATALOGUE["meter_offline"].severity,
            "meter_id": meter_id,
            "transformer_id": None,
            "starts_at": pd.Timestamp(since),
            "ends_at": pd.Timestamp(until) if until is not None else pd.NaT,
            "summary": summary,
            "evidence": {
                "rule": "consecutive failed reads >= offline_after",
                "offline_after": self.offline_after,
                "protocol": self.protocol,
                "address": where,
                "reason": reason,
            },
        }
        frame = pd.concat(
            [empty_findings(), pd.DataFrame([row], columns=list(FINDING_COLUMNS))],
            ignore_index=True,
        )
        try:
            self.on_findings(frame)
        except Exception:  # an alert sink failure must not stop polling
            self.stats.count("alert_callback_errors")
            log.exception("meter_offline finding for %s could not be delivered", meter_id)


def boundary(now: datetime, interval_s: float) -> pd.Timestamp:
    """The interval boundary at or before ``now`` (UTC epoch grid of ``interval_s`` seconds)."""
    ts = pd.Timestamp(now)
    return ts.floor(pd.Timedelta(seconds=interval_s))


class GatewayPoller:
    """One poll cycle over the meters behind a gateway, shared by the Modbus and DL/T 645 pollers.

    Reads are spaced over ``spread`` of the interval, one at a time (one request in flight per
    bus); meters in backoff are skipped; reads reach the writer every ``submit_every_s`` wall
    seconds and at the end of the cycle, even when it is cut short. Subclasses provide the
    transport: ``_is_connected``, ``_connect``, ``_read_device`` (a reading dict, or None after
    recording the failure) and ``_where``.
    """

    name: str
    devices: Sequence[Any]
    clock: Clock
    writer: ReadingWriter
    tracker: MeterTracker
    pause_s: float
    interval_s: float | None
    align: bool
    stopping: bool
    #: Wall seconds a read may wait in the cycle before it goes to the writer: a cycle spread
    #: over half of a 15-minute interval hands its reads on every few seconds, not at its end.
    submit_every_s: float = 5.0

    def meter_ids(self) -> list[str]:
        """The meters this poller reads."""
        return [d.meter_id for d in self.devices]

    def _is_connected(self) -> bool:
        raise NotImplementedError

    async def _connect(self) -> bool:
        raise NotImplementedError

    async def _read_device(self, dev: Any, now: datetime) -> dict[str, object] | None:
        raise NotImplementedError

    def _where(self, dev: Any) -> str:
        raise NotImplementedError

    async def poll_cycle(self, interval_wall_s: float, spread: float = 0.5) -> int:
        """Read every due meter once, spaced over ``spread × interval``; return readings taken."""
        loop = asyncio.get_running_loop()
        if not self._is_connected() and not await self._connect():
            self._gateway_unreachable()
            return 0
        t0 = loop.time()
        start = self.clock.now()
        aligned = boundary(start, self.interval_s) if self.align and self.interval_s else None
        gap = interval_wall_s * spread / max(len(self.devices), 1)
        rows: list[dict[str, object]] = []
        taken = 0
        last_submit = t0
        try:
            for i, dev in enumerate(self.devices):
                delay = t0 + i * gap - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self.stopping:
                    break
                now = self.clock.now()
                if not self.tracker.due(dev.meter_id, now):
                    continue
                if not self._is_connected() and not await self._connect():
                    break
                reading = await self._read_device(dev, now)
                if reading is not None:
                    if aligned is not None:
                        reading["ts"] = aligned
                    rows.append(reading)
                    taken += 1
                if rows and loop.time() - last_submit >= self.submit_every_s:
                    # Reading dicts: the writer builds one frame per flush, off the event loop
                    # (a frame per submission cost the poll loop ~10 % of its time).
                    self.writer.submit(rows)
                    rows, last_submit = [], loop.time()
                if self.pause_s:
                    await asyncio.sleep(self.pause_s)
        finally:
            # Whatever was read reaches the writer, even if the cycle is cut short.
            if rows:
                self.writer.submit(rows)
        return taken

    def _gateway_unreachable(self) -> None:
        """Every due meter behind an unreachable gateway counts a failed read (may go offline)."""
        now = self.clock.now()
        for dev in self.devices:
            if self.tracker.due(dev.meter_id, now):
                where = self._where(dev)
                exc = DeviceError(dev.meter_id, where, f"gateway {self.name} unreachable")
                self.tracker.failed(dev.meter_id, now, exc, where)


class ModbusGatewayPoller(GatewayPoller):
    """Polls the meters of one Modbus gateway or serial bus, one request at a time.

    Each cycle spreads the meters' reads over ``spread`` of the interval; a meter that fails
    is retried after an exponential backoff (capped), so a dead meter costs at most its own
    timeout per attempt and never delays the others beyond it.

    ``client`` may be shared between pollers (interval groups on one gateway); requests then
    queue on the client's :func:`bus_lock`. With ``align`` the readings of a cycle get the
    interval boundary the cycle started in as ``ts``; otherwise the collector time of the read
    (to the second). The collector time is kept in the reading dict as ``collected_at``.
    """

    protocol = "modbus"

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        devices: list[ModbusDevice],
        *,
        clock: Clock,
        writer: ReadingWriter,
        stats: Stats,
        timeout_s: float = 1.0,
        pause_s: float = 0.0,
        offline_after: int = 3,
        backoff_cap_s: float = 300.0,
        transport: Transport = "tcp",
        client: ModbusClient | None = None,
        address: str | None = None,
        serial: dict[str, Any] | None = None,
        busy_retries: int = 2,
        busy_delay_s: float = 0.2,
        interval_s: float | None = None,
        align: bool = False,
        on_findings: FindingsCallback | None = None,
    ):
        self.name = name
        self.devices = devices
        self.clock = clock
        self.writer = writer
        self.stats = stats
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        self.busy_retries = busy_retries
        self.busy_delay_s = busy_delay_s
        self.interval_s = interval_s
        self.align = align
        self.tracker = MeterTracker(
            clock,
            stats,
            protocol="modbus",
            gateway=name,
            offline_after=offline_after,
            backoff_cap_s=backoff_cap_s,
            on_findings=on_findings,
        )
        if client is None:
            client, address = make_client(
                transport, host=host, port=port, timeout_s=timeout_s, **(serial or {})
            )
        self.client = client
        self.address = address or f"{host}:{port}"
        self._gateway_down = False
        self.stopping = False

    @property
    def offline_after(self) -> int:
        return self.tracker.offline_after

    @property
    def backoff_cap_s(self) -> float:
        return self.tracker.backoff_cap_s

    async def close(self) -> None:
        self.client.close()

    def _is_connected(self) -> bool:
        return bool(self.client.connected)

    def _where(self, dev: ModbusDevice) -> str:
        return f"{self.address} unit {dev.unit}"

    async def _connect(self) -> bool:
        reason = "connection refused or timed out"
        try:
            ok = await self.client.connect()
        except (ConnectionException, OSError) as exc:
            ok = False
            reason = str(exc)
        if not ok:
            self.stats.count("gateway_connect_errors", **self.tracker.labels)
            if not self._gateway_down:
                log.warning(
                    "Modbus gateway %s (%s) unreachable: %s", self.name, self.address, reason
                )
                self._gateway_down = True
            return False
        if self._gateway_down:
            log.info("Modbus gateway %s (%s) reachable again", self.name, self.address)
            self._gateway_down = False
        return True

    async def _read_device(self, dev: ModbusDevice, now: datetime) -> dict[str, object] | None:
        values: dict[str, float] = {}
        try:
            for block in dev.blocks:
                self.tracker.request(dev.meter_id)
                values.update(dev.regmap.decode_block(block, await self._read_block(dev, block)))
        except DeviceError as exc:
            if not isinstance(exc, DeviceTimeout | DeviceException):
                # A broken link or garbled framing: start the next request on a fresh connection.
                self.stats.count("gateway_reconnects", **self.tracker.labels)
                self.client.close()
            self.tracker.failed(dev.meter_id, now, exc, f"{self.address} unit {dev.unit}")
            dev.failures = self.tracker.failures.get(dev.meter_id, 0)
            dev.skip_until = self.tracker.skip_until.get(dev.meter_id)
            return None
        self.tracker.succeeded(dev.meter_id, now, f"{self.address} unit {dev.unit}")
        dev.failures = 0
        dev.skip_until = None
        # Plain datetimes here (pd.Timestamp per reading costs more than decoding it).
        return {
            "meter_id": dev.meter_id,
            "ts": now.replace(microsecond=0),
            "collected_at": now,
            **values,
        }

    async def _read_block(self, dev: ModbusDevice, block: ReadBlock) -> list[int]:
        attempt = 0
        while True:
            try:
                async with bus_lock(self.client):
                    return await read_block(self.client, self.address, dev, block, self.timeout_s)
            except DeviceException as exc:
                if exc.code != BUSY or attempt >= self.busy_retries:
                    raise
                attempt += 1
                self.stats.count("modbus_busy_retries", **self.tracker.labels)
                await asyncio.sleep(self.busy_delay_s)


async def read_block(
    client: ModbusClient,
    address: str,
    dev: ModbusDevice,
    block: ReadBlock,
    timeout_s: float,
) -> list[int]:
    """One read request (function 03 or 04); library errors become DeviceError subclasses."""
    where = f"{address} unit {dev.unit} {block.table} {block.start}+{block.count}"
    method = getattr(client, READ_FUNCTIONS[block.table])
    try:
        # asyncio.timeout, not wait_for: no extra task per request (a hot path). pymodbus has its
        # own per-request timeout; this is the backstop should it not fire.
        async with asyncio.timeout(timeout_s * 1.5):
            rr = await method(block.start, count=block.count, device_id=dev.unit)
    except TimeoutError:
        raise DeviceTimeout(dev.meter_id, where, f"no answer within {timeout_s} s") from None
    except ModbusException as exc:
        text = str(exc).lower()
        if "timeout" in text or "no response" in text:
            raise DeviceTimeout(dev.meter_id, where, f"no answer within {timeout_s} s") from None
        raise DeviceError(dev.meter_id, where, str(exc)) from None
    if rr.isError():
        raise DeviceException(dev.meter_id, where, int(getattr(rr, "exception_code", 0)))
    if len(rr.registers) != block.count:
        raise DeviceError(
            dev.meter_id, where, f"answered {len(rr.registers)} registers, asked {block.count}"
        )
    return list(rr.registers)


def failing_meters(stats: Stats, meter_ids: Iterable[str] | None = None, n: int = 5) -> list[str]:
    """Top-``n`` meters by errors, as ``"id errors/requests (last error)"`` lines for summaries."""
    with stats._lock:
        items = [
            (mid, h)
            for mid, h in stats.meters.items()
            if h.errors and (meter_ids is None or mid in meter_ids)
        ]
    items.sort(key=lambda kv: (-kv[1].errors, kv[0]))
    return [f"{mid} {h.errors}/{h.requests} ({h.last_error})" for mid, h in items[:n]]


# -- config section and registration (collector.modbus) ----------------------------------------


class ModbusDeviceConfig(Section):
    meter_id: str
    unit: int = Field(ge=0, le=247)
    model: str
    interval: Duration | None = Field(None, gt=0)  # poll group; default: the gateway's


class ModbusGatewayConfig(Section):
    name: str
    transport: Literal["tcp", "rtu-over-tcp", "serial"] = "tcp"
    host: str = ""
    port: int = Field(502, ge=1, le=65535)
    serial_port: str | None = None  # transport serial: e.g. /dev/ttyUSB0
    baudrate: int = Field(9600, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    timeout_s: float = Field(1.0, gt=0)
    pause_s: float = Field(0.0, ge=0)
    busy_retries: int = Field(2, ge=0)  # retries after exception 6 (device busy)
    busy_delay_s: float = Field(0.2, ge=0)
    interval: Duration | None = Field(None, gt=0)  # default: collector.modbus.interval
    align: bool | None = None  # default: collector.modbus.align
    devices: Literal["simulator"] | list[ModbusDeviceConfig] = []

    @model_validator(mode="after")
    def _transport_fields(self) -> ModbusGatewayConfig:
        if self.transport == "serial" and not self.serial_port:
            raise ValueError("serial_port is required when transport is serial")
        if self.transport != "serial" and not self.host:
            raise ValueError(f"host is required when transport is {self.transport}")
        return self


class ModbusCollectorConfig(Section):
    enabled: bool = True
    interval: Duration = 900.0
    align: bool = False  # ts = the interval boundary the poll belongs to
    offline_after: int = Field(3, ge=1)  # consecutive failed reads before meter_offline
    backoff_cap: Duration = Field(300.0, gt=0)  # cap of a failing meter's exponential backoff
    gateways: list[ModbusGatewayConfig] = []


def build_pollers(cfg: ModbusCollectorConfig, ctx: SourceContext) -> list[ModbusGatewayPoller]:
    """One poller per (gateway, interval group); the groups of a gateway share its client.

    ``devices: simulator`` takes the demo's simulated Modbus meters (``ctx.simulated["modbus"]``).
    """
    from meterwatch.protocols.register_map import load_map

    pollers = []
    for gw in cfg.gateways:
        groups: dict[float, list[ModbusDevice]] = {}
        host, port = gw.host, gw.port
        gw_interval = gw.interval or cfg.interval
        if gw.devices == "simulator":
            sim = ctx.simulated.get("modbus")
            if sim is None:
                raise ValueError(f"collector.modbus gateway {gw.name}: no simulated Modbus meters")
            host, port = sim.host, sim.port
            for meter_id, unit, regmap in sim.devices:
                groups.setdefault(gw_interval, []).append(ModbusDevice(meter_id, unit, regmap))
        else:
            for d in gw.devices:
                groups.setdefault(d.interval or gw_interval, []).append(
                    ModbusDevice(d.meter_id, d.unit, load_map(d.model, ctx.maps))
                )
        client, address = make_client(
            gw.transport,
            host=host,
            port=port,
            serial_port=gw.serial_port,
            baudrate=gw.baudrate,
            parity=gw.parity,
            stopbits=gw.stopbits,
            timeout_s=gw.timeout_s,
        )
        for group_interval, devices in groups.items():
            name = gw.name if len(groups) == 1 else f"{gw.name}@{group_interval:g}s"
            pollers.append(
                ModbusGatewayPoller(
                    name,
                    host,
                    port,
                    devices,
                    clock=ctx.clock,
                    writer=ctx.writer,
                    stats=ctx.stats,
                    timeout_s=gw.timeout_s,
                    pause_s=gw.pause_s,
                    offline_after=cfg.offline_after,
                    backoff_cap_s=cfg.backoff_cap,
                    client=client,
                    address=address,
                    busy_retries=gw.busy_retries,
                    busy_delay_s=gw.busy_delay_s,
                    interval_s=group_interval,
                    align=cfg.align if gw.align is None else gw.align,
                    on_findings=ctx.on_findings,
                )
            )
    return pollers


register_source(
    SourceSpec(
        "modbus",
        ModbusCollectorConfig,
        build_pollers,  # type: ignore[arg-type]
        "Modbus TCP, RTU over TCP and serial RTU gateways, polled (function codes 03/04 only)",
    )
)
