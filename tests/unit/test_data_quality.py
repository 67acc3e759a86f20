"""Data-quality rules at their edges: gaps, silent meters, duplicates, off-grid times, non-numbers."""

from __future__ import annotations

import pandas as pd
import pytest

from meterwatch.analytics.detectors.data_quality import (
    DuplicateReading,
    MeterOffline,
    MissingData,
    NonNumericValue,
    OffGridReading,
)
from meterwatch.core.schema import readings_from_records
from tests.unit.test_equipment import registry

T0 = pd.Timestamp("2026-03-02T00:00:00Z")
Q = pd.Timedelta("15min")


def reads(meter: str, times: list[pd.Timestamp], **values: object) -> list[dict[str, object]]:
    return [
        {"meter_id": meter, "ts": t, "energy_import_kwh": 100.0 + k, **values}
        for k, t in enumerate(times)
    ]


def grid(n: int, start: pd.Timestamp = T0) -> list[pd.Timestamp]:
    return [start + k * Q for k in range(n)]


@pytest.mark.parametrize(("missing", "flagged"), [(3, True), (2, False), (46, True), (47, False)])
def test_missing_data_from_min_gap_hours(missing: int, flagged: bool) -> None:
    # 3 missing 15-minute reads: 1 h between the reads around them; 2: 45 min. 47 missing:
    # 12 h, a meter offline (MeterOffline), not missing data.
    times = grid(100)
    times = times[:10] + times[10 + missing :]
    found = MissingData().detect(readings_from_records(reads("A", times)), registry(A={}))
    assert (len(found) == 1) is flagged
    if flagged:
        row = found.iloc[0]
        assert (row["starts_at"], row["ends_at"]) == (T0 + 9 * Q, T0 + (10 + missing) * Q)
        assert row["type"] == "missing_data"
        assert row["evidence"]["longest_gap_h"] == (missing + 1) / 4


def test_gaps_on_one_day_are_one_finding_and_a_silent_end_is_offline_not_missing() -> None:
    times = grid(96)
    keep = [t for k, t in enumerate(times) if not (10 <= k < 30 or 50 <= k < 70)]
    found = MissingData().detect(readings_from_records(reads("A", keep)), registry(A={}))
    assert len(found) == 1 and found["evidence"].iat[0]["gaps"] == 2
    # A meter that stops: no missing_data (no read after the gap), but offline.
    frame = readings_from_records(reads("A", grid(96)) + reads("B", grid(40)))
    reg = registry(A={}, B={})
    assert MissingData().detect(frame, reg).empty
    off = MeterOffline().detect(frame, reg)
    assert list(off["meter_id"]) == ["B"] and pd.isna(off["ends_at"].iat[0])
    assert off["starts_at"].iat[0] == T0 + 39 * Q


@pytest.mark.parametrize(("silent_reads", "flagged"), [(48, True), (47, False)])
def test_meter_offline_edge(silent_reads: int, flagged: bool) -> None:
    # B's last read is silent_reads intervals before A's: 12 h at 48.
    frame = readings_from_records(reads("A", grid(100)) + reads("B", grid(100 - silent_reads)))
    found = MeterOffline().detect(frame, registry(A={}, B={}))
    assert (list(found["meter_id"]) == ["B"]) is flagged


def test_a_silence_that_ended_is_offline_with_its_end() -> None:
    times = grid(200)
    keep = times[:50] + times[50 + 60 :]  # 15 h without a reading in the middle
    found = MeterOffline().detect(readings_from_records(reads("A", keep)), registry(A={}))
    assert len(found) == 1
    row = found.iloc[0]
    assert (row["starts_at"], row["ends_at"]) == (T0 + 49 * Q, T0 + 110 * Q)
    assert MissingData().detect(readings_from_records(reads("A", keep)), registry(A={})).empty


def test_a_registered_meter_without_any_reading_is_offline() -> None:
    frame = readings_from_records(reads("A", grid(60)))
    found = MeterOffline().detect(frame, registry(A={}, Z={}))
    assert list(found["meter_id"]) == ["Z"]
    assert found["evidence"].iat[0]["readings_in_window"] == 0


def test_duplicates_exact_and_conflicting_are_told_apart() -> None:
    rows = reads("A", grid(20))
    exact = dict(rows[5])
    conflicting = dict(rows[8]) | {"energy_import_kwh": 1.0}
    found = DuplicateReading().detect(readings_from_records([*rows, exact]), registry(A={}))
    assert len(found) == 1
    ev = found["evidence"].iat[0]
    assert (ev["exact"], ev["conflicting"], ev["kind"]) == (1, 0, "exact")
    assert found["severity"].iat[0] == "minor"
    both = DuplicateReading().detect(
        readings_from_records([*rows, exact, conflicting]), registry(A={})
    )
    ev = both["evidence"].iat[0]
    assert (ev["exact"], ev["conflicting"], ev["kind"]) == (1, 1, "conflicting")
    assert both["severity"].iat[0] == "major" and "conflicting values" in both["summary"].iat[0]
    assert DuplicateReading().detect(readings_from_records(rows), registry(A={})).empty


def test_a_day_seven_minutes_off_the_grid_is_flagged_a_steady_offset_is_not() -> None:
    times = grid(4 * 96)
    shifted = [t + pd.Timedelta(minutes=7) if 96 <= k < 192 else t for k, t in enumerate(times)]
    found = OffGridReading().detect(readings_from_records(reads("A", shifted)), registry(A={}))
    assert len(found) == 1
    row = found.iloc[0]
    assert row["starts_at"] == times[96] + pd.Timedelta(minutes=7)
    assert row["evidence"]["readings"] == 96 and round(row["evidence"]["mean_shift_min"]) == 7
    # A meter polled 7 minutes into every interval, every time, is on its own grid.
    steady = [t + pd.Timedelta(minutes=7) for t in times]
    assert OffGridReading().detect(readings_from_records(reads("A", steady)), registry(A={})).empty


def test_non_numeric_values_are_counted_per_meter_not_missing_spellings() -> None:
    frame = pd.DataFrame(reads("A", grid(10)) + reads("B", grid(10)))
    frame["voltage_l1_v"] = "230.0"
    frame.loc[2, "voltage_l1_v"] = "err"
    frame.loc[3, "voltage_l1_v"] = "1,5"
    frame.loc[4, "voltage_l1_v"] = ""  # empty: missing, not an error
    frame.loc[15, "voltage_l1_v"] = "nan"
    found = NonNumericValue().detect(frame, registry(A={}, B={}))
    assert list(found["meter_id"]) == ["A"]
    assert found["evidence"].iat[0]["values"] == 2
    assert found["evidence"].iat[0]["columns"] == ["voltage_l1_v"]


def test_rules_in_chunks_of_meters_find_what_one_pass_finds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MissingData and OffGridReading work through a large window in chunks of meters (bounded
    memory): their findings are those of one pass, whatever the chunk size."""
    from meterwatch.analytics import window as window_mod
    from meterwatch.simulators.fleet import Injection
    from tests.support.fleets import DAY, T0, faulty_window, small_fleet

    fleet, readings, ids = small_fleet()
    t0, day, hour = T0, DAY, pd.Timedelta(hours=1)
    faults = [
        Injection("missing_data", ids[0], t0 + day, t0 + day + 8 * hour),
        Injection("missing_data", ids[4], t0 + 2 * day, t0 + 2 * day + 3 * hour),
        Injection("off_grid", ids[2], t0 + day, t0 + 2 * day),
        Injection("off_grid", ids[7], t0 + 2 * day, t0 + 2.5 * day),
    ]
    w = faulty_window(fleet, readings, faults)
    rules = (MissingData(), OffGridReading())

    def run(cells: int) -> list[pd.DataFrame]:
        monkeypatch.setattr(window_mod, "CHUNK_CELLS", cells)
        return [rule.detect_window(w) for rule in rules]

    one = run(10**9)
    assert all(len(f) >= 2 for f in one), one
    for cells in (1, 3 * w.n_cells):
        for got, want in zip(run(cells), one, strict=True):
            pd.testing.assert_frame_equal(got, want)
