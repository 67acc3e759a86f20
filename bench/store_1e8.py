"""Write 100 million readings into the embedded store for real, then read from it (not a test).

Issue #4 asks that the embedded store hold at least 10^8 readings on a gateway's disk. This
script does it instead of extrapolating: ``--meters`` three-phase meters at 15 minutes, one day
(``meters x 96`` readings) per committed write, until ``--readings`` are stored. The values are
synthetic but shaped like meter data (cumulative registers, load shape, noisy voltages), so the
columnar compression is representative. It then closes the store, reports the file size per
reading, reopens it, counts the rows and times a one-meter, one-week query and a whole-day query.

Run: ``.venv/bin/python -m bench.store_1e8 --dir D [--readings 100000000]``; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import peak_rss_mb
from meterwatch.storage.embedded import EmbeddedStore


def day_frame(meters: int, day: int, energy0: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """One day of 15-minute readings for ``meters`` meters; advances ``energy0`` in place."""
    ts = pd.date_range(
        pd.Timestamp("2026-01-05", tz="UTC") + pd.Timedelta(days=day), periods=96, freq="15min"
    )
    hours = ts.hour.to_numpy() + ts.minute.to_numpy() / 60
    shape = 0.6 + 0.4 * np.sin((hours - 6) / 24 * 2 * np.pi)
    power = (np.linspace(0.5, 5.0, meters)[:, None] * shape[None, :]) * rng.lognormal(
        0, 0.1, (meters, 96)
    )
    energy = energy0[:, None] + np.cumsum(power * 0.25, axis=1)
    energy0[:] = energy[:, -1]
    volt = np.round(220 + rng.normal(0, 2, (3, meters, 96)), 1)
    curr = np.round(power[None] * 1000 / 3 / (volt * 0.95), 3)
    return pd.DataFrame(
        {
            "meter_id": np.repeat(np.array([f"M{i:07d}" for i in range(meters)]), 96),
            "ts": np.tile(ts.as_unit("ns"), meters),
            "energy_import_kwh": np.round(energy.ravel(), 2),
            "energy_export_kwh": 0.0,
            "power_kw": np.round(power.ravel(), 3),
            "reactive_power_kvar": np.round(power.ravel() * 0.33, 3),
            "voltage_l1_v": volt[0].ravel(),
            "voltage_l2_v": volt[1].ravel(),
            "voltage_l3_v": volt[2].ravel(),
            "current_l1_a": curr[0].ravel(),
            "current_l2_a": curr[1].ravel(),
            "current_l3_a": curr[2].ravel(),
            "power_factor": 0.95,
            "frequency_hz": np.round(50 + rng.normal(0, 0.02, meters * 96), 2),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="directory for the store (needs ~8 GB)")
    ap.add_argument("--readings", type=int, default=100_000_000)
    ap.add_argument("--meters", type=int, default=20_000)
    args = ap.parse_args()
    path = Path(args.dir) / "store.duckdb"
    if path.exists():
        raise SystemExit(f"{path} exists; pass an empty directory")
    rng = np.random.default_rng(7)
    energy0 = rng.uniform(100, 5000, args.meters)
    store = EmbeddedStore(path)
    written = day = 0
    write_s = 0.0
    started = time.perf_counter()
    while written < args.readings:
        frame = day_frame(args.meters, day, energy0, rng)
        t0 = time.perf_counter()
        written += store.write_readings(frame)
        write_s += time.perf_counter() - t0
        day += 1
        if day % 10 == 0:
            print(f"{written:,} readings, {written / write_s:,.0f}/s writing", flush=True)
    store.close()
    size = path.stat().st_size
    store = EmbeddedStore(path)
    rows, _ = store.count_rows()
    t0 = time.perf_counter()
    one = store.read_readings(
        ["M0001234"], pd.Timestamp("2026-01-12", tz="UTC"), pd.Timestamp("2026-01-19", tz="UTC")
    )
    one_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    whole = store.read_readings(
        None, pd.Timestamp("2026-01-20", tz="UTC"), pd.Timestamp("2026-01-21", tz="UTC")
    )
    day_s = time.perf_counter() - t0
    store.close()
    print(
        json.dumps(
            {
                "readings_written": written,
                "rows_counted": rows,
                "meters": args.meters,
                "days": day,
                "file_bytes": size,
                "bytes_per_reading": round(size / rows, 1),
                "write_readings_per_s": round(written / write_s),
                "total_s": round(time.perf_counter() - started, 1),
                "one_meter_week_rows": len(one),
                "one_meter_week_query_s": round(one_s, 3),
                "one_day_all_meters_rows": len(whole),
                "one_day_all_meters_query_s": round(day_s, 2),
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


if __name__ == "__main__":
    main()
