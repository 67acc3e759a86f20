"""One-shot reads for `meterwatch probe`: same read plan and decoding as the poller."""

from __future__ import annotations

import pandas as pd
from pymodbus.client import AsyncModbusTcpClient

from collector.modbus import ModbusDevice, ModbusGatewayPoller
from collector.writer import ReadingWriter
from meterwatch.clock import Clock
from meterwatch.errors import DeviceError
from meterwatch.stats import Stats
from protocols.register_map import load_map


async def probe_modbus_once(host: str, port: int, unit: int, model: str, timeout: float) -> dict[str, object]:
    """Read a meter once; return its canonical reading (ts as ISO 8601 Z) or raise DeviceError."""
    regmap = load_map(model)
    dev = ModbusDevice(f"unit{unit}", unit, regmap)
    poller = ModbusGatewayPoller(
        "probe", host, port, [dev], clock=Clock(), writer=None, stats=Stats(), timeout_s=timeout  # type: ignore[arg-type]
    )
    client: AsyncModbusTcpClient = poller.client
    try:
        if not await client.connect():
            raise DeviceError(dev.meter_id, f"{host}:{port}", "connection refused or timed out")
        reading: dict[str, object] = {"meter_id": dev.meter_id, "ts": pd.Timestamp.now("UTC").floor("s")}
        for block in dev.blocks:
            reading.update(regmap.decode_block(block, await poller._read_block(dev, block)))
    finally:
        client.close()
    reading["ts"] = pd.Timestamp(reading["ts"]).strftime("%Y-%m-%dT%H:%M:%SZ")  # type: ignore[arg-type]
    return reading
