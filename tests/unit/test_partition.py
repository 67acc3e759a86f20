"""Partitioned analytics (analytics.partition): whole areas per partition, meters without an
area in partitions of their own, and findings identical to one window over the whole fleet."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from meterwatch.analytics.detectors.theft import (
    gather_features,
    rank_features,
    rank_suspects,
    theft_features,
)
from meterwatch.analytics.partition import (
    InProcess,
    analyze_partitioned,
    iter_partitions,
    plan,
    run_jobs,
    run_partitioned,
)
from meterwatch.analytics.suite import default_detectors, run_detectors
from meterwatch.core.schema import with_time_columns
from meterwatch.simulators.fleet import AnomalySpec, Fleet, generate
from tests.support.partitions import WITHOUT_AREA, canonical_findings


def areas_of(parts: list[pd.DataFrame]) -> list[list[str]]:
    return [sorted(p["transformer_id"].unique()) for p in parts]


def test_partitions_keep_areas_whole_and_bounded() -> None:
    meters = pd.DataFrame(
        {
            "meter_id": [f"M{i}" for i in range(10)],
            "transformer_id": ["A"] * 3 + ["B"] * 3 + ["C"] * 4,
        }
    )
    parts = list(iter_partitions(meters, 6))
    assert areas_of(parts) == [["A", "B"], ["C"]]
    assert sum(len(p) for p in parts) == 10
    big = list(iter_partitions(meters, 2))  # an area larger than the bound is its own partition
    assert areas_of(big) == [["A"], ["B"], ["C"]]
    # An area that would take a partition past the bound starts the next one.
    uneven = pd.DataFrame({"meter_id": [f"M{i}" for i in range(12)]})
    uneven["transformer_id"] = ["A"] * 5 + ["B"] * 2 + ["C"] * 5
    assert [len(p) for p in iter_partitions(uneven, 6)] == [5, 2, 5]


def test_meters_without_an_area_get_partitions_of_their_own() -> None:
    meters = pd.DataFrame(
        {
            "meter_id": ["M0", "M1", "M2", "M3", "M4", "M5", "M6", "M1"],
            "transformer_id": ["A", "", None, "A", np.nan, "B", "", "B"],
        }
    )
    parts = list(iter_partitions(meters, 2))
    # Areas A and B (2 and 1 meters: A fills one partition), then the four meters without an
    # area, two at a time; the duplicated M1 counts once (its first row, area "").
    assert areas_of(parts) == [["A"], ["B"], [""], [""]]
    assert [sorted(p["meter_id"]) for p in parts] == [
        ["M0", "M3"],
        ["M5"],
        ["M1", "M2"],
        ["M4", "M6"],
    ]


def test_partitioned_run_equals_one_window_over_the_fleet(
    several_areas: tuple[pd.DataFrame, pd.DataFrame, list[str]],
) -> None:
    """Same rows and values (evidence, scores) as one window over the whole fleet, whatever the
    partition size: areas stay whole, the grid and data extent are the fleet's, and the theft
    score compares every meter with its class peers across partitions. Meters without an area
    are judged by the meter-level rules in partitions of their own."""
    readings, reg, without_area = several_areas
    dets = default_detectors()
    whole = canonical_findings(run_detectors(dets, readings, reg))
    types = set(whole["type"])
    assert {"theft_suspected", "transformer_loss", "outage", "meter_offline"} <= types
    assert len(without_area) == WITHOUT_AREA
    assert set(without_area) <= set(whole["meter_id"])  # judged although in no area
    ranked = rank_suspects(readings, reg)
    for max_meters in (51, 7, 1):
        seen: list[int] = []
        result = analyze_partitioned(
            dets,
            readings,
            reg,
            max_meters=max_meters,
            progress=lambda done, _total: seen.append(done),  # noqa: B023
            extra={"theft_features": theft_features},
        )
        pd.testing.assert_frame_equal(whole, canonical_findings(result.findings))
        assert seen[-1] == len(reg) and len(seen) > 1
        suspects = rank_features(gather_features(result.partials["theft_features"]))
        pd.testing.assert_frame_equal(ranked, suspects)


def test_a_fleet_in_one_partition_runs_on_its_own_grid(
    several_areas: tuple[pd.DataFrame, pd.DataFrame, list[str]],
) -> None:
    """Every meter in one partition (here: those with an area; the others' readings are then
    unregistered): no fleet grid is computed, the partition's window finds the same grid and
    data extent, and the findings are those of one window."""
    readings, reg, _ = several_areas
    in_areas = reg[reg["transformer_id"].fillna("") != ""].reset_index(drop=True)
    dets = default_detectors()
    whole = canonical_findings(run_detectors(dets, readings, in_areas))
    p = plan(readings, in_areas, max_meters=10_000)
    assert p.count == 1 and p.grid is None
    (part,) = list(p.parts)
    registered = readings["meter_id"].isin(in_areas["meter_id"])
    assert len(part.readings) == int(registered.sum()) < len(readings)
    seen: list[int] = []
    result = analyze_partitioned(
        dets,
        readings,
        in_areas,
        max_meters=10_000,
        progress=lambda done, _total: seen.append(done),
    )
    assert seen == [len(in_areas)]
    pd.testing.assert_frame_equal(whole, canonical_findings(result.findings))


def test_detectors_on_threads_give_the_same_findings_in_the_same_order(
    several_areas: tuple[pd.DataFrame, pd.DataFrame, list[str]],
) -> None:
    """``analyze`` in one process builds the window and runs the detectors on a thread per
    core: the same findings, row for row, and the same theft features, as on one thread."""
    readings, reg, _ = several_areas
    extra = {"theft_features": theft_features}
    one = analyze_partitioned(default_detectors(), readings, reg, 10_000, extra=extra)
    two = analyze_partitioned(
        default_detectors(), readings, reg, 10_000, runner=InProcess(threads=2), extra=extra
    )
    assert len(one.findings) > 0
    pd.testing.assert_frame_equal(one.findings, two.findings)
    for a, b in zip(one.partials["theft_features"], two.partials["theft_features"], strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_a_window_built_on_threads_is_the_same_window(
    several_areas: tuple[pd.DataFrame, pd.DataFrame, list[str]],
) -> None:
    from meterwatch.analytics.window import build_window

    readings, reg, _ = several_areas
    shuffled = readings.sample(frac=1.0, random_state=3)  # scattered, not in grid order
    one = build_window(shuffled, reg)
    two = build_window(shuffled, reg, threads=2)
    assert list(one.values) == list(two.values) and set(one.stacks) == set(two.stacks)
    for name, a in one.values.items():
        np.testing.assert_array_equal(a, two.values[name], err_msg=name)
    for kind, a in one.stacks.items():
        np.testing.assert_array_equal(a, two.stacks[kind], err_msg=kind)
    np.testing.assert_array_equal(one.t, two.t)


def test_jobs_sharing_an_intermediate_wait_for_its_first_and_compute_it_once() -> None:
    """A group's first job (one ``shares``) computes what the others read: the others start
    only once it has finished, on any thread; results come back in job order; two threads
    asking a window for the same memo key compute it once; the first failure is raised and
    no job starts after it."""
    import threading
    import time

    from meterwatch.analytics.window import build_window

    w = build_window(
        pd.DataFrame(
            {
                "meter_id": ["A"],
                "ts": pd.to_datetime(["2026-01-05T00:15Z"]),
                "energy_import_kwh": [1.0],
            }
        ),
        pd.DataFrame({"meter_id": ["A"]}),
    )
    computed: list[str] = []

    def slow() -> int:
        computed.append(threading.current_thread().name)
        time.sleep(0.05)
        return 7

    span: dict[int, tuple[float, float]] = {}

    def job(k: int, pause: float = 0.0) -> Callable[[object], int]:
        def run(win: object) -> int:
            t = time.perf_counter()
            time.sleep(pause)
            value = int(w.memo("shared", slow)) + k
            span[k] = (t, time.perf_counter())
            return value

        return run

    jobs = [("vee", job(0)), ("", job(1, 0.1)), ("vee", job(2)), ("", job(3)), ("vee", job(4))]
    assert run_jobs(w, jobs, threads=3) == [7, 8, 9, 10, 11]
    assert len(computed) == 1
    assert span[2][0] >= span[0][1] and span[4][0] >= span[0][1]  # after the group's first
    assert run_jobs(w, jobs, threads=1) == [7, 8, 9, 10, 11]

    started: list[int] = []

    def boom(win: object) -> int:
        started.append(-1)
        raise ValueError("rule failed")

    def late(k: int) -> Callable[[object], int]:
        def run(win: object) -> int:
            started.append(k)
            return k

        return run

    # Two threads: the failing group head and a lone job start; the head's group never does.
    with pytest.raises(ValueError, match="rule failed"):
        run_jobs(w, [("g", boom), ("g", late(1)), ("g", late(2)), ("", late(3))], threads=2)
    assert 1 not in started and 2 not in started


def test_a_partition_travels_as_arrow_with_its_non_numeric_cells() -> None:
    """A partition pickles its readings as an Arrow table (meter ids dictionary-encoded) and
    comes back equal; non-numeric cells of a file keep pointing at their own rows."""
    raw = pd.DataFrame(
        {
            "meter_id": ["B1", "A1", "B1", "A1"],
            "ts": pd.date_range("2026-01-05", periods=4, freq="15min", tz="UTC"),
            "energy_import_kwh": ["1.0", "2.0", "err", "2.5"],
            "voltage_l1_v": ["230", "#VALUE!", "231", "229"],
        }
    )
    readings = with_time_columns(raw)  # as read from a CSV: rows 1 and 2 hold text
    reg = pd.DataFrame({"meter_id": ["A1", "B1"], "transformer_id": ["TA", "TB"]})
    parts = list(plan(readings, reg, max_meters=1).parts)
    assert [p.meters["meter_id"].tolist() for p in parts] == [["A1"], ["B1"]]
    a, b = parts
    assert a.readings["meter_id"].tolist() == ["A1", "A1"]
    assert isinstance(a.readings["meter_id"].dtype, pd.CategoricalDtype)
    # Row 1 (A1, voltage) is A's first row; row 2 (B1, energy) is B's second.
    assert {c: r.tolist() for c, r in a.readings.attrs["coerced_rows"].items()} == {
        "voltage_l1_v": [0]
    }
    assert {c: r.tolist() for c, r in b.readings.attrs["coerced_rows"].items()} == {
        "energy_import_kwh": [1]
    }
    wire = pickle.dumps(b, protocol=5)
    assert b"pyarrow" in wire  # the readings went as an Arrow table, not pickled rows
    back = pickle.loads(wire)
    pd.testing.assert_frame_equal(back.readings, b.readings)
    assert back.readings.attrs["coerced_rows"]["energy_import_kwh"].tolist() == [1]
    # One partition: the rows of registered meters in file order (C9 is not registered), the
    # non-numeric cells still pointing at their rows.
    extra_row = readings.iloc[[0]].assign(meter_id="C9")
    with_unknown = pd.concat([extra_row, readings], ignore_index=True)
    with_unknown.attrs["coerced_rows"] = {
        c: r + 1 for c, r in readings.attrs["coerced_rows"].items()
    }
    (one,) = list(plan(with_unknown, reg, max_meters=10).parts)
    assert one.readings["meter_id"].tolist() == ["B1", "A1", "B1", "A1"]
    assert {c: r.tolist() for c, r in one.readings.attrs["coerced_rows"].items()} == {
        "voltage_l1_v": [1],
        "energy_import_kwh": [2],
    }
    whole = run_detectors(default_detectors(), readings, reg)
    split = analyze_partitioned(default_detectors(), readings, reg, max_meters=1).findings
    hits = whole[whole["type"] == "non_numeric_value"]
    assert sorted(hits["meter_id"]) == ["A1", "B1"]
    pd.testing.assert_frame_equal(canonical_findings(whole), canonical_findings(split))


def test_run_partitioned_loads_each_partition() -> None:
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
    asked: list[list[str]] = []

    def load(ids: list[str]) -> pd.DataFrame:
        asked.append(ids)
        return readings[readings["meter_id"].isin(ids)]

    parts = run_partitioned(
        dets, load, reg, max_meters=8, progress=lambda done, total: seen.append(done)
    )
    key = ["type", "meter_id", "starts_at"]
    assert len(whole) >= 2
    pd.testing.assert_frame_equal(
        whole.sort_values(key).reset_index(drop=True)[key],
        parts.sort_values(key).reset_index(drop=True)[key],
    )
    assert seen[-1] == len(reg) and len(seen) == len(asked) > 1
    assert sorted(m for ids in asked for m in ids) == sorted(reg["meter_id"])


def test_max_meters_must_be_positive() -> None:
    reg = pd.DataFrame({"meter_id": ["M"]})
    with pytest.raises(ValueError, match="max_meters must be >= 1"):
        list(iter_partitions(reg, 0))


def test_partitions_judge_clocks_against_the_whole_fleet(
    several_areas: tuple[pd.DataFrame, pd.DataFrame, list[str]],
) -> None:
    """Without receipt times a meter's clock is judged against the latest read of the other
    meters of the fleet, wherever they are partitioned (the window's fleet extent)."""
    readings, reg, _ = several_areas
    files = readings.drop(columns=["collected_at"])
    dets = default_detectors()
    whole = canonical_findings(run_detectors(dets, files, reg))
    clocks = whole[whole["type"] == "clock_error"]
    assert len(clocks) >= 1
    assert {e["reference_kind"] for e in clocks["evidence"]} == {"latest read of the other meters"}
    split = analyze_partitioned(dets, files, reg, max_meters=7).findings
    pd.testing.assert_frame_equal(whole, canonical_findings(split))
