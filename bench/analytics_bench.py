"""Analytics throughput: the vectorized detector suite vs a per-meter loop, per fleet size.

Each size runs in its own subprocess so that peak memory is that run's alone. The data are
synthetic canonical readings made with numpy (making them is not timed): per meter, the day
being judged plus ``HISTORY_DAYS`` days before it, all at 15 minutes, as a store query for
"yesterday with its context" returns them. Throughput counts judged meter-days (one per meter).

With ``--workers N`` the partitions (whole transformer areas, ``--chunk`` meters each) run on N
worker processes (``analytics.partition``'s model). The parent makes two distinct partition
datasets before forking the pool, so workers share them copy-on-write and the timed wall clock
is the detectors' work plus the hand-off of results, not data generation. Peak memory is the
parent's plus each worker's peak resident set (an upper bound: shared pages count twice).

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

#: Days of 15-minute history before the judged day (consumption baselines need >= 1).
HISTORY_DAYS = 2


def synth(meters: int, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Canonical readings for ``meters`` three-phase meters: HISTORY_DAYS + 1 days at 15 min."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2026-01-10", periods=96 * (HISTORY_DAYS + 1), freq="15min", tz="UTC")
    n_t = len(ts)
    dt_h = np.full(n_t, 0.25)
    hours = ts.hour.to_numpy() + ts.minute.to_numpy() / 60
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


_PARTS: list[tuple[pd.DataFrame, pd.DataFrame]] = []  # made before forking the pool


def _work(k: int) -> tuple[int, int, float]:
    """Run the suite over pre-made partition ``k % 2`` (worker process)."""
    from meterwatch.analytics.suite import default_detectors, run_detectors

    readings, reg = _PARTS[k % len(_PARTS)]
    found = len(run_detectors(default_detectors(), readings, reg))
    return found, len(readings), peak_rss_mb()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, required=True)
    ap.add_argument("--mode", choices=["suite", "loop"], required=True)
    ap.add_argument("--chunk", type=int, default=2_500, help="meters per partition (suite)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (suite)")
    args = ap.parse_args()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    found = rows = 0
    worker_peak = 0.0
    if args.mode == "loop":
        readings, reg = synth(args.meters, seed=0)
        rows = len(readings)
        t0 = time.perf_counter()
        found = run_loop(readings, reg)
        seconds = time.perf_counter() - t0
        workers, chunk = 1, args.meters
    else:
        # One-off process start-up (importing pandas, scikit-learn) is not per-partition work:
        # done here, before the pool forks.
        import sklearn.ensemble  # noqa: F401

        import meterwatch.analytics.suite  # noqa: F401

        chunk = min(args.chunk, args.meters)
        n_parts = -(-args.meters // chunk)
        _PARTS.extend(synth(chunk, seed=i) for i in range(min(2, n_parts)))
        workers = args.workers
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            t0 = time.perf_counter()
            for f, n, peak in pool.map(_work, range(n_parts)):
                found += f
                rows += n
                worker_peak = max(worker_peak, peak)
            seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "meters": args.meters,
                "mode": args.mode,
                "chunk": chunk,
                "workers": workers,
                "rows": rows,
                "seconds": seconds,
                "meter_days_per_s": args.meters / seconds,
                "findings": found,
                "peak_rss_mb": peak_rss_mb() + workers * worker_peak,
                "parent_rss_mb": peak_rss_mb(),
                "worker_peak_rss_mb": worker_peak,
            }
        )
    )


if __name__ == "__main__":
    main()
