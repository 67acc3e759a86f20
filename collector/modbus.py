"""Modbus TCP polling: one coalesced read plan per meter, one request in flight per gateway."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pandas as pd
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from collector.writer import ReadingWriter
from meterwatch.clock import Clock
from meterwatch.errors import DeviceError, DeviceException, DeviceTimeout
from meterwatch.schema import readings_from_records
from meterwatch.stats import Stats
from protocols.register_map import ReadBlock, RegisterMap

log = logging.getLogger(__name__)

#: Only these function codes are ever sent: read holding (03) and read input (04) registers.
READ_FUNCTIONS = {"holding": "read_holding_registers", "input": "read_input_registers"}


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


class ModbusGatewayPoller:
    """Polls the meters of one Modbus TCP gateway, sequentially (RS-485 behind it is one bus).

    Each cycle spreads the meters' reads over ``spread`` of the interval; a meter that fails
    is retried after an exponential backoff (capped), so a dead meter costs at most its own
    timeout per attempt and never delays the others beyond it.
    """

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
    ):
        self.name = name
        self.address = f"{host}:{port}"
        self.devices = devices
        self.clock = clock
        self.writer = writer
        self.stats = stats
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        self.offline_after = offline_after
        self.backoff_cap_s = backoff_cap_s
        self.client = AsyncModbusTcpClient(
            host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0
        )
        self._gateway_down = False
        self.stopping = False

    async def close(self) -> None:
        self.client.close()

    async def poll_cycle(self, interval_wall_s: float, spread: float = 0.5) -> int:
        """Read every due meter once, spaced over ``spread × interval``; return readings taken."""
        loop = asyncio.get_running_loop()
        if not self.client.connected and not await self._connect():
            return 0
        t0 = loop.time()
        gap = interval_wall_s * spread / max(len(self.devices), 1)
        rows: list[dict[str, object]] = []
        try:
            for i, dev in enumerate(self.devices):
                delay = t0 + i * gap - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self.stopping:
                    break
                now = self.clock.now()
                if dev.skip_until is not None and now < dev.skip_until:
                    continue
                reading = await self._read_device(dev, now)
                if reading is not None:
                    rows.append(reading)
                if self.pause_s:
                    await asyncio.sleep(self.pause_s)
        finally:
            # Whatever was read reaches the writer, even if the cycle is cut short.
            if rows:
                self.writer.submit(readings_from_records(rows))
        return len(rows)

    async def _connect(self) -> bool:
        try:
            ok = await self.client.connect()
        except (ConnectionException, OSError) as exc:
            ok = False
            reason = str(exc)
        else:
            reason = "connection refused or timed out"
        if not ok:
            self.stats.count("modbus_connect_errors")
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
        health = self.stats.meter(dev.meter_id)
        values: dict[str, float] = {}
        try:
            for block in dev.blocks:
                health.requests += 1
                self.stats.count("modbus_requests")
                values.update(dev.regmap.decode_block(block, await self._read_block(dev, block)))
        except DeviceError as exc:
            self._failed(dev, health, now, exc)
            return None
        dev.failures = 0
        dev.skip_until = None
        health.consecutive_errors = 0
        health.last_success = now
        if health.online is False:
            log.info("meter %s back online", dev.meter_id)
        health.online = True
        ts = pd.Timestamp(now).floor("s")
        return {"meter_id": dev.meter_id, "ts": ts, **values}

    async def _read_block(self, dev: ModbusDevice, block: ReadBlock) -> list[int]:
        return await read_block(self.client, self.address, dev, block, self.timeout_s)

    def _failed(self, dev: ModbusDevice, health, now: datetime, exc: DeviceError) -> None:  # noqa: ANN001
        dev.failures += 1
        health.errors += 1
        health.consecutive_errors += 1
        health.last_error = str(exc)
        self.stats.count("modbus_errors")
        backoff = min(self.backoff_cap_s, 2.0**dev.failures)  # wall seconds
        dev.skip_until = now + timedelta(seconds=self.clock.service_seconds(backoff))
        if health.consecutive_errors >= self.offline_after and health.online is not False:
            log.warning("meter %s offline: %s", dev.meter_id, exc)
            health.online = False


async def read_block(
    client: AsyncModbusTcpClient,
    address: str,
    dev: ModbusDevice,
    block: ReadBlock,
    timeout_s: float,
) -> list[int]:
    """One read request (function 03 or 04); library errors become DeviceError subclasses."""
    where = f"{address} unit {dev.unit} {block.table} {block.start}+{block.count}"
    method = getattr(client, READ_FUNCTIONS[block.table])
    try:
        rr = await asyncio.wait_for(
            method(block.start, count=block.count, device_id=dev.unit), timeout=timeout_s * 1.5
        )
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
