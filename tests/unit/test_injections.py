"""Data-quality injections and planted anomalies (simulators.fleet.inject), and the evaluation
scenario that carries them (issue 15 items 1 and 4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from meterwatch.core.schema import normalize_readings
from meterwatch.io import read_readings_file
from meterwatch.simulators.fleet import (
    NON_NUMERIC_TEXTS,
    OFF_GRID_SHIFT,
    Fleet,
    Injection,
    generate,
    inject,
)

START = datetime(2026, 1, 5, tzinfo=UTC)
T0 = pd.Timestamp(START) + pd.Timedelta(hours=30)  # on the 15-minute grid
HOUR = pd.Timedelta(hours=1)


@pytest.fixture(scope="module")
def three_days() -> tuple[Fleet, pd.DataFrame]:
    fleet = Fleet(start=START, residential=6, commercial=2, industrial=1, step_s=900.0)
    readings = generate(fleet, START + timedelta(days=3), interval_s=900.0)
    readings["collected_at"] = readings["ts"]
    return fleet, readings


def run(three_days: tuple[Fleet, pd.DataFrame], *injections: Injection) -> tuple:
    fleet, df = three_days
    return inject(df, fleet.registry, list(injections), seed=1)


def meter(frame: pd.DataFrame, meter_id: str) -> pd.DataFrame:
    return frame[frame["meter_id"] == meter_id].reset_index(drop=True)


def others_untouched(out: pd.DataFrame, df: pd.DataFrame, meter_id: str) -> None:
    keep_out = out[out["meter_id"] != meter_id].reset_index(drop=True)
    before = df.sort_values(["meter_id", "ts"], kind="mergesort")
    keep_in = before[before["meter_id"] != meter_id].reset_index(drop=True)
    pd.testing.assert_frame_equal(keep_out, keep_in, check_dtype=False)


@pytest.mark.parametrize(
    ("kind", "hours", "removed"), [("missing_data", 8, 31), ("meter_offline", 30, 119)]
)
def test_gaps_remove_the_meters_readings_inside_the_period(
    three_days, kind: str, hours: int, removed: int
) -> None:
    _, df = three_days
    out, _, labels = run(three_days, Injection(kind, "R0002", T0, T0 + hours * HOUR))
    got, had = meter(out, "R0002"), meter(df, "R0002")
    assert len(had) - len(got) == removed  # strictly inside (T0, T0 + hours)
    assert not ((got["ts"] > T0) & (got["ts"] < T0 + hours * HOUR)).any()
    assert {T0, T0 + hours * HOUR} <= set(got["ts"])
    others_untouched(out, df, "R0002")
    assert labels[["type", "injection", "meter_id"]].values.tolist() == [[kind, kind, "R0002"]]
    assert (labels["starts_at"].iat[0], labels["ends_at"].iat[0]) == (T0, T0 + hours * HOUR)


@pytest.mark.parametrize("kind", ["duplicate_exact", "duplicate_conflict"])
def test_duplicates_repeat_an_hour_of_readings_next_to_the_originals(three_days, kind: str) -> None:
    _, df = three_days
    out, _, labels = run(three_days, Injection(kind, "C0001", T0, T0 + HOUR))
    got = meter(out, "C0001")
    dup = got[got.duplicated(["meter_id", "ts"], keep=False)]
    assert len(dup) == 10 and set(dup["ts"]) == set(pd.date_range(T0, T0 + HOUR, freq="15min"))
    first, second = dup.iloc[::2].reset_index(drop=True), dup.iloc[1::2].reset_index(drop=True)
    assert (np.diff(dup.index.to_numpy())[::2] == 1).all()  # each copy right after its original
    values = ["energy_import_kwh", "power_kw", "voltage_l1_v", "current_l1_a"]
    if kind == "duplicate_exact":
        pd.testing.assert_frame_equal(first, second)
    else:
        diff = second[values].to_numpy() - first[values].to_numpy()
        assert (diff != 0).all()  # every compared value conflicts
        assert np.allclose(diff[:, 0], 0.05)
    assert len(got) - len(meter(df, "C0001")) == 5
    others_untouched(out, df, "C0001")
    assert labels[["type", "injection"]].values.tolist() == [["duplicate_reading", kind]]


def test_off_grid_readings_are_stamped_seven_minutes_late_for_a_day(three_days) -> None:
    _, df = three_days
    out, _, labels = run(three_days, Injection("off_grid", "R0003", T0, T0 + 24 * HOUR))
    got = meter(out, "R0003")
    off = got["ts"].dt.minute % 15 != 0
    assert off.sum() == 97  # [T0, T0 + 24 h] at 15 minutes
    assert (got.loc[off, "ts"].dt.minute % 15 == 7).all()
    assert (got.loc[off, "collected_at"] == got.loc[off, "ts"]).all()
    assert got["ts"].is_monotonic_increasing
    e = got["energy_import_kwh"].to_numpy()
    assert (np.diff(e) >= 0).all()  # registers interpolated, never backwards
    had = meter(df, "R0003").set_index("ts")["energy_import_kwh"]
    shifted = got.loc[off].set_index(got.loc[off, "ts"] - OFF_GRID_SHIFT)["energy_import_kwh"]
    assert (shifted >= had.reindex(shifted.index)).all()
    assert labels[["type", "injection"]].values.tolist() == [["off_grid_reading", "off_grid"]]


def test_non_numeric_cells_read_as_a_file_with_text_cells(three_days, tmp_path: Path) -> None:
    _, df = three_days
    inj = Injection("non_numeric", "R0004", T0, T0 + HOUR, column="voltage_l1_v")
    out, _, labels = run(three_days, inj)
    cells = out.loc[out["voltage_l1_v"].map(lambda v: isinstance(v, str)), "voltage_l1_v"]
    assert len(cells) == 5 and set(cells) <= set(NON_NUMERIC_TEXTS)
    assert normalize_readings(out).attrs["coerced"] == {"voltage_l1_v": 5}
    path = tmp_path / "readings.csv"
    out.to_csv(path, index=False)
    assert read_readings_file(path).attrs["coerced"] == {"voltage_l1_v": 5}
    assert labels[["type", "injection"]].values.tolist() == [["non_numeric_value", "non_numeric"]]
    with pytest.raises(ValueError, match="not a reading quantity"):
        run(three_days, Injection("non_numeric", "R0004", T0, T0 + HOUR, column="meter_id"))


def test_planted_register_decrease_voltage_loss_and_spike(three_days) -> None:
    fleet, df = three_days
    plan = [
        Injection("register_decrease", "R0001", T0, T0 + HOUR, magnitude=50.0),
        Injection("voltage_loss", "R0002", T0, T0 + 4 * HOUR),
        Injection("consumption_spike", "R0003", T0, T0 + 2 * HOUR, magnitude=5.0),
    ]
    out, _, labels = run(three_days, *plan)
    e0 = meter(df, "R0001").set_index("ts")["energy_import_kwh"]
    e1 = meter(out, "R0001").set_index("ts")["energy_import_kwh"]
    assert np.allclose((e0 - e1)[e0.index >= T0], 50.0) and np.allclose((e0 - e1)[e0.index < T0], 0)
    v = meter(out, "R0002").set_index("ts")
    inside = (v.index >= T0) & (v.index <= T0 + 4 * HOUR)
    assert np.allclose(v.loc[inside, "voltage_l1_v"], 0.5 * 220.0)
    i0 = meter(df, "R0002").set_index("ts")["current_l1_a"]
    pd.testing.assert_series_equal(v["current_l1_a"], i0)  # the current keeps flowing
    d0, d1 = (meter(f, "R0002")["energy_import_kwh"].diff() for f in (df, out))
    ends = meter(df, "R0002")["ts"]
    within = ((ends > T0) & (ends <= T0 + 4 * HOUR)).to_numpy()
    assert (d1[within] < 0.6 * d0[within]).all() and np.allclose(
        d1[~within], d0[~within], equal_nan=True
    )
    s0, s1 = (meter(f, "R0003").set_index("ts")["energy_import_kwh"].diff() for f in (df, out))
    ends = s0.index
    within = (ends > T0) & (ends <= T0 + 2 * HOUR)
    assert within.sum() == 8
    # Five times the meter's usual rate (its mean before the spike), never below what it was.
    usual = usual_energy(s0, T0)
    for at in ends[within]:
        assert s1[at] == pytest.approx(max(s0[at], 5 * usual) if usual == usual else 5 * s0[at])
    assert np.allclose(s1[~within], s0[~within], equal_nan=True)
    assert labels["type"].tolist() == ["register_decrease", "voltage_loss", "consumption_spike"]
    assert labels["ends_at"].iat[0] == labels["starts_at"].iat[0]  # instantaneous


def test_the_scenario_adds_data_quality_faults_without_moving_the_other_labels() -> None:
    from meterwatch.simulators.scenarios import DATA_QUALITY_PLAN, build_scenario

    args = {"meters": 80, "days": 18, "interval_s": 3600, "seed": 5, "per_type": 2}
    with_dq = build_scenario(**args)
    without = build_scenario(**args, data_quality=False)
    lab = with_dq.labels
    dq = lab["injection"].isin({t for t, _ in DATA_QUALITY_PLAN})
    pd.testing.assert_frame_equal(lab[~dq].reset_index(drop=True), without.labels)
    counts = lab[dq].groupby(["type", "injection"]).size().to_dict()
    assert counts == {
        ("duplicate_reading", "duplicate_conflict"): 2,
        ("duplicate_reading", "duplicate_exact"): 2,
        ("meter_offline", "meter_offline"): 2,
        ("missing_data", "missing_data"): 4,  # two 8-hour gaps, two of 1-3 hours
        ("non_numeric_value", "non_numeric"): 2,
        ("off_grid_reading", "off_grid"): 2,
    }
    spans = (lab["ends_at"] - lab["starts_at"])[lab["injection"] == "missing_data"]
    assert sorted(spans.dt.total_seconds() / 3600)[-2:] == [8.0, 8.0]
    offline = (lab["ends_at"] - lab["starts_at"])[lab["injection"] == "meter_offline"]
    assert (offline >= pd.Timedelta(days=1)).all()
    assert lab[dq]["meter_id"].is_unique and not set(lab[dq]["meter_id"]) & set(
        lab[~dq]["meter_id"].dropna()
    )
    # The readings of every meter without a data-quality fault are as before.
    clean = ~with_dq.readings["meter_id"].isin(lab.loc[dq, "meter_id"])
    pd.testing.assert_frame_equal(
        normalize_readings(with_dq.readings[clean]).reset_index(drop=True),
        normalize_readings(
            without.readings[~without.readings["meter_id"].isin(lab.loc[dq, "meter_id"])]
        ).reset_index(drop=True),
    )


def usual_energy(deltas: pd.Series, start: pd.Timestamp, days: int = 28) -> float:
    """Mean interval energy over the ``days`` days up to ``start``, register decreases left out
    (a planted spike's usual rate; NaN without history)."""
    t = pd.DatetimeIndex(deltas.index)
    past = (t <= start) & (t > start - pd.Timedelta(days=days)) & (deltas >= 0).to_numpy()
    return float(deltas[past].mean()) if deltas[past].notna().any() else float("nan")
