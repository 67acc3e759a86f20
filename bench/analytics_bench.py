"""Analytics throughput: the vectorized detector suite vs a per-meter loop, per fleet size.

Each size runs in its own subprocess so that peak memory is that run's alone. The data are
synthetic canonical readings (meters × one day at 15 minutes, plus the 7 days of history the
consumption baseline needs, at hourly resolution) made with numpy; making them is not timed.

Baseline: a per-meter loop written the way a time-series toolkit is commonly used — for each
meter, slice its series, then pandas diff / comparisons / rolling median on that Series.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from bench.common import peak_rss_mb


def synth(meters: int, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Canonical readings for ``meters`` three-phase meters: 7 days hourly + 1 day at 15 min."""
    rng = np.random.default_rng(seed)
    hist = pd.date_range("2026-01-05", periods=7 * 24, freq="1h", tz="UTC")
    day = pd.date_range("2026-01-12", periods=96, freq="15min", tz="UTC")
    ts = hist.append(day)
    n_t = len(ts)
    dt_h = np.diff(ts.asi8, prepend=ts.asi8[0] - 3600 * 10**9) / 3.6e12
    hours = ts.hour.to_numpy()
    shape = 0.6 + 0.4 * np.sin((hours - 6) / 24 * 2 * np.pi)
    scale = rng.uniform(0.5, 5.0, meters)
    power = scale[:, None] * shape[None, :] * rng.lognormal(0, 0.1, (meters, n_t))
    energy = 1000 + np.cumsum(power * dt_h[None, :], axis=1)
    volt = 220 + rng.normal(0, 2, (3, meters, n_t))
    curr = power[None, :, :] * 1000 / 3 / (volt * 0.95)
    df = pd.DataFrame(
        {
            "meter_id": np.repeat(np.array([f"M{i:07d}" for i in range(meters)]), n_t),
            "ts": np.tile(ts, meters),
            "energy_import_kwh": energy.ravel(),
            "energy_export_kwh": 0.0,
            "power_kw": power.ravel(),
            "voltage_l1_v": volt[0].ravel(),
            "voltage_l2_v": volt[1].ravel(),
            "voltage_l3_v": volt[2].ravel(),
            "current_l1_a": curr[0].ravel(),
            "current_l2_a": curr[1].ravel(),
            "current_l3_a": curr[2].ravel(),
            "power_factor": 0.95,
            "frequency_hz": 50.0,
        }
    )
    reg = pd.DataFrame(
        {
            "meter_id": [f"M{i:07d}" for i in range(meters)],
            "role": "customer",
            "transformer_id": [f"TA{i // 200:05d}" for i in range(meters)],
            "customer_class": "commercial",
            "phases": 3,
            "nominal_voltage_v": 220.0,
            "rated_current_a": 10.0,
            "max_current_a": 100.0,
            "ct_ratio": 1.0,
            "tariff": "",
            "last_calibration": pd.Timestamp("2025-01-01"),
            "calibration_interval_days": 1825,
        }
    )
    return df, reg


def run_suite(readings: pd.DataFrame, reg: pd.DataFrame) -> int:
    from analytics.suite import default_detectors, run_detectors

    return len(run_detectors(default_detectors(), readings, reg))


def run_loop(readings: pd.DataFrame, reg: pd.DataFrame) -> int:
    """Per-meter loop: the same rules, one meter's Series at a time."""
    un = reg.set_index("meter_id")["nominal_voltage_v"]
    ib = reg.set_index("meter_id")["rated_current_a"]
    found = 0
    for meter_id, g in readings.groupby("meter_id", sort=False):
        g = g.sort_values("ts")
        found += int((g["energy_import_kwh"].diff() < -0.01).sum())
        for p in ("l1", "l2", "l3"):
            v, i = g[f"voltage_{p}_v"], g[f"current_{p}_a"]
            found += int(((v < 0.78 * un[meter_id]) & (i > 0.005 * ib[meter_id])).sum())
            found += int(((v < 0.60 * un[meter_id]) & (i < 0.005 * ib[meter_id])).sum())
        hourly = g.set_index("ts")["energy_import_kwh"].resample("1h").last().diff()
        base = hourly.rolling(24 * 7, min_periods=24).median()
        found += int((hourly > 2.5 * base).sum())
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, required=True)
    ap.add_argument("--mode", choices=["suite", "loop"], required=True)
    ap.add_argument("--chunk", type=int, default=20_000, help="meters per partition (suite)")
    args = ap.parse_args()
    from analytics.suite import default_detectors, run_detectors

    seconds = 0.0
    found = rows = 0
    chunk = args.meters if args.mode == "loop" else min(args.chunk, args.meters)
    detectors = default_detectors()
    for i, first in enumerate(range(0, args.meters, chunk)):
        # One partition's readings, as a store query for whole areas would return them.
        readings, reg = synth(min(chunk, args.meters - first), seed=i)
        rows += len(readings)
        t0 = time.perf_counter()
        if args.mode == "suite":
            found += len(run_detectors(detectors, readings, reg))
        else:
            found += run_loop(readings, reg)
        seconds += time.perf_counter() - t0
        del readings, reg
    print(
        json.dumps(
            {
                "meters": args.meters,
                "mode": args.mode,
                "chunk": chunk,
                "rows": rows,
                "seconds": seconds,
                "meter_days_per_s": args.meters / seconds,
                "findings": found,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


if __name__ == "__main__":
    main()
