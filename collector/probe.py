"""One-shot reads for `meterwatch probe`: same read plan and decoding as the poller."""

from __future__ import annotations

import pandas as pd
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException

from collector.modbus import ModbusDevice, read_block
from meterwatch.errors import DeviceError
from protocols.register_map import load_map


async def probe_modbus_once(
    host: str, port: int, unit: int, model: str, timeout: float
) -> dict[str, object]:
    """Read a meter once; return its canonical reading (ts as ISO 8601 Z) or raise DeviceError."""
    regmap = load_map(model)
    dev = ModbusDevice(f"unit{unit}", unit, regmap)
    address = f"{host}:{port}"
    client = AsyncModbusTcpClient(host, port=port, timeout=timeout, retries=0, reconnect_delay=0)
    try:
        try:
            connected = await client.connect()
        except (ConnectionException, OSError):
            connected = False
        if not connected:
            raise DeviceError(dev.meter_id, address, "connection refused or timed out")
        ts = pd.Timestamp.now("UTC").floor("s")
        reading: dict[str, object] = {
            "meter_id": dev.meter_id,
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        for block in dev.blocks:
            reading.update(
                regmap.decode_block(block, await read_block(client, address, dev, block, timeout))
            )
    finally:
        client.close()
    return reading
