"""Modbus polling throughput [meters/s] against simulated SDM630 meters on loopback.

Three ways to read the same meters behind one simulated gateway, in the same run:
- ``meterwatch``: our poller (one coalesced request per meter from the map's read plan, decode
  to canonical values, hand to the writer);
- ``per-register``: sequential pymodbus reads, one request per mapped quantity (how a quick
  script reads a meter), decoding each value;
- ``raw``: the ceiling — the async pymodbus client issuing the same coalesced request per meter
  back to back, no decoding, nothing stored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import time
from datetime import UTC, datetime

from pymodbus.client import AsyncModbusTcpClient

from bench.common import peak_rss_mb
from meterwatch.collector.modbus import ModbusDevice, ModbusGatewayPoller
from meterwatch.core.clock import Clock
from meterwatch.core.stats import Stats
from meterwatch.protocols.modbus_types import decode
from meterwatch.protocols.register_map import load_map
from meterwatch.simulators.fleet import Fleet
from meterwatch.simulators.modbus_server import MeterModbusServer


class _NullWriter:
    def __init__(self) -> None:
        self.rows = 0

    def submit(self, frame, on_stored=None) -> bool:  # noqa: ANN001
        self.rows += len(frame)
        return True


def _serve(meters: int, port_q: mp.Queue[tuple[int, list[tuple[str, int]]]]) -> None:
    """Child process: the simulated gateway with ``meters`` SDM630 meters."""

    async def run() -> None:
        fleet = Fleet(
            start=datetime(2026, 1, 5, tzinfo=UTC),
            residential=0,
            commercial=meters,
            industrial=0,
            transformers=1,
            mqtt_share=0.0,
        )
        reg = fleet.registry[fleet.registry["role"] == "customer"]
        server = MeterModbusServer("127.0.0.1", 0)
        regmap = load_map("eastron-sdm630")
        for row in reg.itertuples():
            server.add_device(str(row.meter_id), int(row.unit_id), regmap)
        server.update(fleet.snapshot())
        port = await server.start()
        port_q.put((port, [(d.meter_id, d.unit) for d in server.devices.values()]))
        await asyncio.Event().wait()

    asyncio.run(run())


async def bench(meters: int, rounds: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    port_q: mp.Queue[tuple[int, list[tuple[str, int]]]] = ctx.Queue()
    child = ctx.Process(target=_serve, args=(meters, port_q), daemon=True)
    child.start()
    try:
        port, units = port_q.get(timeout=60)
        return await _measure(port, units, rounds)
    finally:
        child.terminate()
        child.join(10)


async def _measure(port: int, units: list[tuple[str, int]], rounds: int) -> dict[str, float]:
    regmap = load_map("eastron-sdm630")
    devices = [ModbusDevice(meter_id, unit, regmap) for meter_id, unit in units]
    out: dict[str, float] = {"meters": float(len(devices))}

    writer = _NullWriter()
    poller = ModbusGatewayPoller(
        "bench", "127.0.0.1", port, devices, clock=Clock(), writer=writer, stats=Stats()
    )  # type: ignore[arg-type]
    await poller.client.connect()
    t0 = time.perf_counter()
    for _ in range(rounds):
        await poller.poll_cycle(0.0)
    out["meterwatch"] = rounds * len(devices) / (time.perf_counter() - t0)
    assert writer.rows == rounds * len(devices), "poller lost readings"
    await poller.close()

    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    await client.connect()
    block = regmap.plan()[0]
    t0 = time.perf_counter()
    for _ in range(rounds):
        for d in devices:
            await client.read_input_registers(block.start, count=block.count, device_id=d.unit)
    out["raw"] = rounds * len(devices) / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    for _ in range(rounds):
        for d in devices:
            for f in regmap.fields:
                rr = await client.read_input_registers(f.address, count=f.count, device_id=d.unit)
                decode(rr.registers, f.dtype, f.order)
    out["per_register"] = rounds * len(devices) / (time.perf_counter() - t0)
    client.close()
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(bench(args.meters, args.rounds))))


if __name__ == "__main__":
    main()
