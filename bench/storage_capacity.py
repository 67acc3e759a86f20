"""Bytes per reading in the embedded DuckDB store, with simulated fleet data (not a test).

Method: simulate a fleet (residential single-phase, commercial/industrial three-phase,
transformer supply meters; the fleet model's load shapes, grid voltage and frequency noise,
cumulative registers) for ``--days`` at 15-minute intervals; write it into a fresh
:class:`storage.embedded.EmbeddedStore` the way the service does (one committed write per
interval snapshot, i.e. per poll cycle), close the store (DuckDB checkpoints the WAL into the
file) and divide the file size by the number of readings. A second file is written in one bulk
insert for comparison, and the backup Parquet size is reported too.

Run: ``.venv/bin/python -m bench.storage_capacity [--meters-scale 4] [--days 30]``; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from meterwatch.simulators.fleet import Fleet, generate
from meterwatch.storage.backup import backup
from meterwatch.storage.embedded import EmbeddedStore


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=4, help="fleet size multiplier (48 meters × N)")
    ap.add_argument("--days", type=float, default=30.0)
    args = ap.parse_args()
    t0 = pd.Timestamp("2026-01-05T00:00:00Z").to_pydatetime()
    fleet = Fleet(
        start=t0,
        residential=30 * args.scale,
        commercial=10 * args.scale,
        industrial=6 * args.scale,
        transformers=2 * args.scale,
        seed=11,
    )
    readings = generate(fleet, t0 + pd.Timedelta(days=args.days), interval_s=900.0)
    out: dict[str, object] = {
        "meters": len(fleet.registry),
        "days": args.days,
        "readings": len(readings),
        "non_null_fields_per_reading": round(
            float(readings.drop(columns=["meter_id", "ts"]).notna().sum(axis=1).mean()), 2
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        batched = Path(tmp) / "batched.duckdb"
        store = EmbeddedStore(batched)
        started = time.perf_counter()
        for _, snap in readings.groupby("ts", sort=True):
            store.write_readings(snap)
        out["batched_write_s"] = round(time.perf_counter() - started, 1)
        store.close()
        bulk = Path(tmp) / "bulk.duckdb"
        store = EmbeddedStore(bulk)
        store.write_readings(readings)
        store.close()
        res = backup(batched, Path(tmp) / "bk")
        parquet = (Path(tmp) / "bk" / "readings.parquet").stat().st_size
        for name, size in (
            ("batched", batched.stat().st_size),
            ("bulk", bulk.stat().st_size),
            ("parquet_backup", parquet),
        ):
            out[f"{name}_bytes"] = size
            out[f"{name}_bytes_per_reading"] = round(size / res.rows, 1)
            out[f"{name}_gb_per_1e8_readings"] = round(size / res.rows * 1e8 / 1e9, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
