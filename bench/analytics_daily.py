"""Issue 14's analytics targets in one run: the daily suite with fitted baselines vs the floor.

A fleet of ``--meters`` (default 1,000,000) in partitions of ``--partition`` meters (whole
transformer areas; bench/analytics_fleet.py), on ``--workers`` processes (spawned: each
measures its own memory):

1. *prepare* (not timed as the target): per partition, make the data, write the judged day
   as Parquet (what a columnar store read returns) and the floor's dense arrays, and fit the
   baselines on its 28 days of hourly history (``analytics.baselines``; fit time reported).
2. *floor*: per partition, load the arrays, time :func:`bench.analytics_floor.floor_pass`.
3. *suite*: per partition, time reading the Parquet day, loading the baselines, building the
   window, VEE and every detector (``analytics.suite.default_detectors()``) and the theft
   ranking (``rank_window``): what a daily run does. Peak RSS of the worker against the
   in-memory size of its input table.

Wall times of phases 2 and 3 are measured by the parent (both workers busy: the 2-core
figure); the per-partition compute seconds are summed for the ratio to the floor.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench.common import peak_rss_mb


def _prepare(args: tuple[str, int, int, int]) -> dict:
    out, k, meters, history_days = args
    from bench.analytics_fleet import make_partition
    from meterwatch.analytics.baselines import LEARN_FIELDS, fit_baselines
    from meterwatch.analytics.suite import default_detectors
    from meterwatch.analytics.window import build_window

    d = Path(out)
    p = make_partition(meters, k, history_days=history_days)
    p.day_frame().to_parquet(d / f"day{k}.parquet", index=False)
    p.registry.to_parquet(d / f"reg{k}.parquet", index=False)
    np.savez(
        d / f"arrays{k}.npz",
        power=p.power,
        energy=p.energy,
        volt=p.volt,
        curr=p.curr,
        pf=p.pf,
        freq=p.freq,
        present=p.present,
        hist_kwh=p.hist_kwh[:, -7:],
        hist_register=p.hist_register[:, -1:, -1:],
    )
    history = p.history_frame()
    t0 = time.perf_counter()
    w = build_window(history, p.registry, fields=LEARN_FIELDS, max_step_s=3600)
    fitted = fit_baselines(w, default_detectors())
    fitted.save(d / f"baselines{k}.npz")
    return {"fit_s": time.perf_counter() - t0, "history_rows": len(history)}


def _floor(args: tuple[str, int]) -> dict:
    out, k = args
    import pandas as pd

    from bench.analytics_fleet import Partition
    from bench.analytics_floor import floor_pass

    d = Path(out)
    with np.load(d / f"arrays{k}.npz") as z:
        a = {name: z[name] for name in z.files}
    p = Partition(registry=pd.read_parquet(d / f"reg{k}.parquet"), **a)
    history = p.hist_interval_kwh
    t0, c0 = time.perf_counter(), time.process_time()
    flags = floor_pass(p, history)
    return {
        "flags": flags,
        "floor_s": time.perf_counter() - t0,
        "floor_cpu_s": time.process_time() - c0,
    }


def _warm() -> None:
    """Each worker's start: import what a partition run needs (process start-up, not
    per-partition work), ``meterwatch`` first as a worker process of the service or of
    ``analyze`` does (it sets up the process's memory before pandas loads Arrow). Not
    scikit-learn: a partition gives its theft features, the parent scores them (90 MiB of a
    worker's memory that only the parent needs)."""
    import meterwatch  # noqa: F401
    import meterwatch.analytics.partition  # noqa: F401
    import meterwatch.analytics.suite  # noqa: F401


def _suite(args: tuple[str, int]) -> tuple[dict, object]:
    """One partition as ``analyze`` runs it (``analytics.partition.run_partition``): every
    detector, the theft detector giving its partial (features judged against its fitted
    references) for the fleet-wide score."""
    out, k = args
    import pandas as pd

    from meterwatch.analytics.baselines import Baselines
    from meterwatch.analytics.partition import Partition, run_partition
    from meterwatch.analytics.suite import default_detectors
    from meterwatch.io import read_readings_file

    d = Path(out)
    registry = pd.read_parquet(d / f"reg{k}.parquet")
    rss0 = peak_rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    day = read_readings_file(d / f"day{k}.parquet")  # as `analyze --readings day.parquet`
    t_read = time.perf_counter() - t0
    input_mib = day.memory_usage(deep=True).sum() / 2**20
    detectors = default_detectors()
    Baselines.load(d / f"baselines{k}.npz").apply(detectors)
    t1, c1 = time.perf_counter(), time.process_time()
    part = Partition(k, registry, day)
    del day  # the partition holds it, and lets it go once the window holds what rules read
    result = run_partition(part, detectors, None, consume=True)
    return (
        {
            "read_s": t_read,
            "suite_s": time.perf_counter() - t1,
            "suite_cpu_s": time.process_time() - c1,
            "total_cpu_s": time.process_time() - c0,
            "findings": len(result.findings),
            "input_mib": float(input_mib),
            "rss_before_mib": rss0,
            "peak_rss_mib": peak_rss_mb(),
        },
        result,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, default=1_000_000)
    ap.add_argument("--partition", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--history-days", type=int, default=28)
    ap.add_argument(
        "--dir",
        default=None,
        help="keep the prepared data here (default: temp); a later run with the same sizes "
        "measures again on it without preparing",
    )
    args = ap.parse_args()
    n_parts = -(-args.meters // args.partition)
    out = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="mw-analytics-"))
    out.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    result: dict = {"meters": n_parts * args.partition, "partition": args.partition}
    try:
        marker = out / "prepared.json"
        plan = {"meters": args.meters, "partition": args.partition, "days": args.history_days}
        kept = json.loads(marker.read_text()) if marker.exists() else {}
        if kept.get("plan") == plan:  # --dir holding this preparation: measure again on it
            prep = kept["prep"]
        else:
            with ProcessPoolExecutor(args.workers, mp_context=ctx, max_tasks_per_child=1) as pool:
                t = time.perf_counter()
                prep = list(
                    pool.map(
                        _prepare,
                        [(str(out), k, args.partition, args.history_days) for k in range(n_parts)],
                    )
                )
                result["prepare_wall_s"] = time.perf_counter() - t
            marker.write_text(json.dumps({"plan": plan, "prep": prep}))
        with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
            t = time.perf_counter()
            floor = list(pool.map(_floor, [(str(out), k) for k in range(n_parts)]))
            result["floor_wall_s"] = time.perf_counter() - t
        # Warm workers (imports) before the clock starts, as a long-running service has.
        with ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_warm) as pool:
            list(pool.map(abs, range(args.workers)))  # every worker started (and warm)
            t = time.perf_counter()
            done = list(pool.map(_suite, [(str(out), k) for k in range(n_parts)]))
            result["suite_wall_s"] = time.perf_counter() - t
        # The fleet-wide step (in the parent, as analyze's combine): the theft score of every
        # partition's meters together, and the ranked suspects from the same scores.
        # Imported before the clock starts, as the workers' libraries are (a running service
        # has them): scikit-learn's import alone takes 1.5 s.
        import sklearn.ensemble  # noqa: F401

        from meterwatch.analytics.detectors.theft import TheftSuspected, _ranked, gather_features

        suite = [s for s, _ in done]
        t = time.perf_counter()
        theft = TheftSuspected()
        features = gather_features([r.partials["theft_features"] for _, r in done])
        theft_findings = theft.combine([features])
        ranked = _ranked(theft.score(features))  # the same scores, not computed again
        result["combine_s"] = time.perf_counter() - t
        result["findings"] = sum(len(r.findings) for _, r in done) + len(theft_findings)
        result["theft_findings"] = len(theft_findings)
        result["ranked"] = len(ranked)
    finally:
        if not args.dir:
            shutil.rmtree(out, ignore_errors=True)
    result["fit_s_sum"] = sum(r["fit_s"] for r in prep)
    for key in ("floor_s", "floor_cpu_s"):
        result[f"{key}_sum"] = sum(r[key] for r in floor)
    for key in ("read_s", "suite_s", "suite_cpu_s", "total_cpu_s"):
        result[f"{key}_sum"] = sum(r[key] for r in suite)
    result["input_mib"] = max(r["input_mib"] for r in suite)
    result["peak_rss_mib"] = max(r["peak_rss_mib"] for r in suite)
    result["rss_before_mib"] = max(r["rss_before_mib"] for r in suite)
    result["workers"] = args.workers
    print(json.dumps(result))


if __name__ == "__main__":
    main()
