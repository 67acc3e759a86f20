"""analytics.streaming.StreamingDetection without a service: the per-meter tail between batches."""

from __future__ import annotations

import pandas as pd

from meterwatch.analytics.registry import build_detectors
from meterwatch.analytics.streaming import StreamingDetection
from meterwatch.core.schema import readings_from_records
from tests.support.three_phase import METERS, T0, reading

REGISTRY = METERS


def stream() -> StreamingDetection:
    return StreamingDetection(build_detectors(cadences=("streaming",)), spacing_s=900 * 1.5)


def test_only_streaming_detectors_and_a_tail_of_min_readings_minus_one() -> None:
    s = stream()
    from meterwatch.analytics.registry import spec_of

    assert s.detectors and all(spec_of(d).cadence == "streaming" for d in s.detectors)
    assert s.keep == max(int(getattr(d, "min_readings", 1)) for d in s.detectors) - 1 == 3


def test_the_fourth_unbalanced_reading_completes_the_episode_per_meter() -> None:
    s = stream()
    for i in range(3):
        batch = readings_from_records([reading("C1", i, 200.0), reading("C2", i, 221.0)])
        assert "voltage_unbalance" not in set(s.detect(batch, REGISTRY)["type"])
    found = s.detect(readings_from_records([reading("C1", 3, 200.0)]), REGISTRY)
    vu = found[found["type"] == "voltage_unbalance"]
    assert list(vu["meter_id"]) == ["C1"] and vu["ends_at"].isna().all()
    assert s.tail is not None and s.tail.groupby("meter_id").size().max() <= 3


def test_a_gap_longer_than_the_tail_horizon_starts_afresh() -> None:
    s = stream()
    for i in range(3):
        s.detect(readings_from_records([reading("C1", i, 200.0)]), REGISTRY)
    late = s.detect(readings_from_records([reading("C1", 96, 200.0)]), REGISTRY)
    assert "voltage_unbalance" not in set(late["type"])


def test_an_episode_that_ended_within_the_batch_is_left_to_the_interval_run() -> None:
    s = stream()
    rows = [reading("C1", i, 200.0) for i in range(5)] + [reading("C1", 5, 221.0)]
    found = s.detect(readings_from_records(rows), REGISTRY)
    assert "voltage_unbalance" not in set(found["type"])


def test_a_batch_mixing_a_backfill_with_fresh_reads_is_judged_per_time_cluster() -> None:
    """A gateway back from an outage sends last month's readings with this hour's: the batch
    is cut into time clusters (no dense grid of a month at the read spacing), and an episode
    of either cluster is still found."""
    s = StreamingDetection(build_detectors(cadences=("streaming",)), spacing_s=2.0)
    old = [{**reading("C1", i, 200.0), "ts": T0 + pd.Timedelta(seconds=2 * i)} for i in range(4)]
    fresh = [
        {**reading("C2", i, 200.0), "ts": T0 + pd.Timedelta(days=30, seconds=2 * i)}
        for i in range(4)
    ]
    batch = readings_from_records(old + fresh)
    parts = s.segments(s.window(batch))
    assert [sorted(set(p["meter_id"])) for p in parts] == [["C1"], ["C2"]]
    assert sum(len(p) for p in parts) == 8
    found = StreamingDetection(s.detectors, spacing_s=2.0).detect(batch, REGISTRY)
    vu = found[found["type"] == "voltage_unbalance"]
    # Each cluster is judged up to its own end: the backfilled episode is reported too.
    assert sorted(vu["meter_id"]) == ["C1", "C2"]
