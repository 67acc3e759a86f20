"""Partitioned analytics: whole areas per partition; same findings as one big run."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from meterwatch.analytics.partition import (
    analyze_partitioned,
    iter_partitions,
    run_partitioned,
    split_readings,
)
from meterwatch.analytics.suite import default_detectors, run_detectors
from meterwatch.simulators.fleet import AnomalySpec, Fleet, generate


def test_partitions_keep_areas_whole_and_bounded() -> None:
    meters = pd.DataFrame(
        {
            "meter_id": [f"M{i}" for i in range(10)],
            "transformer_id": ["A"] * 3 + ["B"] * 3 + ["C"] * 4,
        }
    )
    parts = list(iter_partitions(meters, 6))
    assert [sorted(p["transformer_id"].unique()) for p in parts] == [["A", "B"], ["C"]]
    assert sum(len(p) for p in parts) == 10
    big = list(iter_partitions(meters, 2))  # an area larger than the bound is its own partition
    assert [sorted(p["transformer_id"].unique()) for p in big] == [["A"], ["B"], ["C"]]


def test_partitioned_run_equals_single_run() -> None:
    start = datetime(2026, 1, 5, tzinfo=UTC)
    fleet = Fleet(
        start=start,
        residential=12,
        commercial=4,
        industrial=3,
        transformers=3,
        seed=3,
        anomalies=[
            AnomalySpec("phase_break", None, 3600 * 5, 3600 * 3),
            AnomalySpec("register_decrease", None, 3600 * 9),
        ],
    )
    readings = generate(fleet, start + pd.Timedelta(days=1))
    reg = fleet.registry
    dets = default_detectors()
    whole = run_detectors(dets, readings, reg)
    seen: list[int] = []
    parts = run_partitioned(
        dets,
        lambda ids: readings[readings["meter_id"].isin(ids)],
        reg,
        max_meters=8,
        progress=lambda done, total: seen.append(done),
    )
    key = ["type", "meter_id", "starts_at"]
    assert len(whole) >= 2
    pd.testing.assert_frame_equal(
        whole.sort_values(key).reset_index(drop=True)[key],
        parts.sort_values(key).reset_index(drop=True)[key],
    )
    assert seen[-1] == len(reg) and len(seen) > 1


def test_analyze_partitioned_on_two_workers_equals_single_run() -> None:
    start = datetime(2026, 1, 5, tzinfo=UTC)
    fleet = Fleet(
        start=start,
        residential=12,
        commercial=4,
        industrial=3,
        transformers=3,
        seed=5,
        anomalies=[
            AnomalySpec("voltage_loss", None, 3600 * 4, 3600 * 2),
            AnomalySpec("register_decrease", None, 3600 * 9),
        ],
    )
    readings = generate(fleet, start + pd.Timedelta(days=1))
    reg = fleet.registry
    dets = default_detectors()
    whole = run_detectors(dets, readings, reg)
    seen: list[int] = []
    key = ["type", "meter_id", "starts_at"]
    for workers in (1, 2):
        parts = analyze_partitioned(
            dets, readings, reg, max_meters=8, workers=workers, progress=lambda d, t: seen.append(d)
        )
        assert len(whole) >= 2
        pd.testing.assert_frame_equal(
            whole.sort_values(key).reset_index(drop=True)[key],
            parts.sort_values(key).reset_index(drop=True)[key],
        )
        assert seen[-1] == len(reg)
    # Every registered reading lands in exactly one partition.
    split = list(split_readings(readings, reg, 8))
    assert sum(len(r) for _, r in split) == int(readings["meter_id"].isin(reg["meter_id"]).sum())
    for chunk, rows in split:
        assert set(rows["meter_id"]) <= set(chunk["meter_id"])
