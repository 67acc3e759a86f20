"""Modbus polling throughput [meters/s] against simulated SDM630 meters on loopback.

Three ways to read the same meters behind one simulated gateway, in the same run:
- ``meterwatch``: our poller (one coalesced request per meter from the map's read plan, decode
  to canonical values, hand to the service's writer, which makes frames at its flushes; the store
  behind it only counts);
- ``per-register``: sequential pymodbus reads, one request per mapped quantity (how a quick
  script reads a meter), decoding each value;
- ``raw``: the ceiling — the async pymodbus client issuing the same coalesced request per meter
  back to back, no decoding, nothing stored.

The poller and the raw client alternate round by round (each a full cycle over the meters);
meters/s are medians over the rounds, ``ratio_median`` the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import time
from datetime import UTC, datetime

from pymodbus.client import AsyncModbusTcpClient

from bench.common import peak_rss_mb
from meterwatch.collector.modbus import ModbusDevice, ModbusGatewayPoller
from meterwatch.collector.writer import ReadingWriter
from meterwatch.core.clock import Clock
from meterwatch.core.stats import Stats
from meterwatch.protocols.modbus_types import decode
from meterwatch.protocols.register_map import load_map
from meterwatch.simulators.fleet import Fleet
from meterwatch.simulators.modbus_server import MeterModbusServer


class _NullStore:
    """Takes every frame the real writer flushes and keeps only the count."""

    def __init__(self) -> None:
        self.rows = 0

    def write_readings(self, frame) -> int:  # noqa: ANN001
        self.rows += len(frame)
        return len(frame)


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

    # The service's writer (frames built at its flushes, off the poll loop) before a null store.
    store = _NullStore()
    writer = ReadingWriter(store, Stats())  # type: ignore[arg-type]
    writer.start()
    poller = ModbusGatewayPoller(
        "bench", "127.0.0.1", port, devices, clock=Clock(), writer=writer, stats=Stats()
    )  # type: ignore[arg-type]
    await poller.client.connect()
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    await client.connect()
    block = regmap.plan()[0]

    async def raw_cycle() -> None:
        for d in devices:
            await client.read_input_registers(block.start, count=block.count, device_id=d.unit)

    # Rounds alternate (poller first in even rounds, raw first in odd ones), so neither always
    # meets a warmer server; a round's ratio compares two cycles a moment apart.
    mw_rates: list[float] = []
    raw_rates: list[float] = []
    for r in range(rounds):
        order = ("mw", "raw") if r % 2 == 0 else ("raw", "mw")
        for kind in order:
            t0 = time.perf_counter()
            if kind == "mw":
                await poller.poll_cycle(0.0)
                mw_rates.append(len(devices) / (time.perf_counter() - t0))
            else:
                await raw_cycle()
                raw_rates.append(len(devices) / (time.perf_counter() - t0))
    await writer.close()
    assert store.rows == rounds * len(devices), "poller lost readings"
    await poller.close()
    med = statistics.median
    out["meterwatch"] = med(mw_rates)
    out["raw"] = med(raw_rates)
    out["ratio_median"] = med([m / r for m, r in zip(mw_rates, raw_rates, strict=True)])
    out["ratios"] = [m / r for m, r in zip(mw_rates, raw_rates, strict=True)]  # type: ignore[assignment]

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
