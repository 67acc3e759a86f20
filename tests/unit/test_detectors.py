"""Edge cases of each detector on tiny hand-built frames, and the suite builder."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from meterwatch.analytics.detectors.consumption import ConsumptionSpike, hourly_energy
from meterwatch.analytics.detectors.rules import PhaseBreak, RegisterDecrease, VoltageLoss
from meterwatch.analytics.suite import default_detectors, run_detectors
from meterwatch.analytics.window import build_window
from meterwatch.core.registry import check_registry
from meterwatch.core.schema import FINDING_COLUMNS, readings_from_records

T0 = pd.Timestamp("2026-01-05T06:00:00Z")
UN = 220.0  # nominal voltage of the test meters [V]
IB = 5.0  # rated current of the test meters [A]; 0.005 Ib = 0.025 A


def registry(**meters: dict[str, Any]) -> pd.DataFrame:
    """Registry with one row per keyword (meter id -> overrides of a 1-phase default)."""
    base = {
        "role": "customer",
        "transformer_id": "T1",
        "customer_class": "residential",
        "phases": 1,
        "nominal_voltage_v": UN,
        "rated_current_a": IB,
        "max_current_a": 60.0,
        "ct_ratio": 1.0,
        "tariff": "res",
        "last_calibration": "2025-06-01",
        "calibration_interval_days": 3650,
    }
    return check_registry(pd.DataFrame([{**base, "meter_id": m, **o} for m, o in meters.items()]))


def readings(meter_id: str, rows: list[dict[str, Any]], step: str = "15min") -> pd.DataFrame:
    """Readings of one meter at T0, T0 + step, ... (a row may give its own ``ts``)."""
    dt = pd.Timedelta(step)
    return readings_from_records(
        [{"meter_id": meter_id, "ts": T0 + k * dt, **r} for k, r in enumerate(rows)]
    )


def ts(k: int, step: str = "15min") -> pd.Timestamp:
    return T0 + k * pd.Timedelta(step)


# ------------------------------------------------------------------ register decrease

ROLL = 99_999_999.99


@pytest.mark.parametrize(
    ("energies", "params", "flagged_at"),
    [
        pytest.param([100.00, 99.99], {}, [], id="drop 0.01 = tolerance: not flagged"),
        pytest.param([100.00, 99.989], {}, [1], id="drop 0.011 > tolerance: flagged"),
        pytest.param([12_345_678.90, 12_345_678.89], {}, [], id="0.01 at large register"),
        pytest.param([100.0, 100.0, 100.5, 100.2, 100.4], {}, [3], id="one step back"),
        pytest.param([100.0, 99.0, 98.0], {}, [1, 2], id="two steps: two findings"),
        pytest.param([ROLL - 0.5, 0.3], {}, [], id="rollover near max: not flagged"),
        pytest.param([0.9 * ROLL, 0.3], {}, [], id="rollover from exactly 0.9 max"),
        pytest.param([0.89 * ROLL, 0.3], {}, [1], id="drop from below 0.9 max: flagged"),
        pytest.param([ROLL - 0.5, 0.2 * ROLL], {}, [1], id="wrap to above 0.1 max: flagged"),
        pytest.param([999_999.5, 1.0], {}, [1], id="6-digit wrap flagged with default max"),
        pytest.param(
            [999_999.5, 1.0], {"register_max_kwh": 999_999.99}, [], id="6-digit wrap configured"
        ),
        pytest.param([100.0, 90.0], {"tolerance_kwh": 10.0}, [], id="tolerance parameter"),
        pytest.param([100.0, math.nan, 99.0], {}, [2], id="decrease across missing value"),
        pytest.param([100.0, math.nan, 100.5], {}, [], id="NaN never triggers"),
    ],
)
def test_register_decrease_table(
    energies: list[float], params: dict[str, float], flagged_at: list[int]
) -> None:
    frame = readings("M1", [{"energy_import_kwh": e} for e in energies])
    found = RegisterDecrease(**params).detect(frame, registry(M1={}))
    assert list(found["starts_at"]) == [ts(k) for k in flagged_at]
    assert (found["ends_at"] == found["starts_at"]).all()
    assert set(found["severity"]) <= {"major"}


def test_register_decrease_evidence_and_unsorted_input() -> None:
    frame = readings("M1", [{"energy_import_kwh": e} for e in (100.0, 101.0, 95.5, 96.0)])
    found = RegisterDecrease().detect(frame.iloc[::-1], registry(M1={}))
    assert len(found) == 1
    ev = found.at[0, "evidence"]
    assert ev["previous"] == {"ts": "2026-01-05T06:15:00Z", "energy_import_kwh": 101.0}
    assert ev["current"] == {"ts": "2026-01-05T06:30:00Z", "energy_import_kwh": 95.5}
    assert ev["drop_kwh"] == pytest.approx(5.5)
    assert ev["thresholds"]["tolerance_kwh"] == 0.01
    assert "5.50 kWh" in found.at[0, "summary"]


def test_duplicate_timestamps_resolved_independently_of_row_order() -> None:
    # Two readings claim the same instant with different registers: whichever comes first
    # in the input, the same one is kept (the lower), so the result cannot flip.
    frame = readings("M1", [{"energy_import_kwh": e} for e in (100.0, 103.0, 104.0)])
    twin = frame.iloc[[1]].assign(energy_import_kwh=105.0)
    first = pd.concat([frame, twin], ignore_index=True)
    second = pd.concat([twin, frame], ignore_index=True)
    found = [RegisterDecrease().detect(f, registry(M1={})) for f in (first, second)]
    pd.testing.assert_frame_equal(found[0], found[1])
    assert found[0].empty


def test_register_decrease_compares_within_one_meter_only() -> None:
    frame = pd.concat(
        [
            readings("A", [{"energy_import_kwh": 500.0}]),
            readings("B", [{"energy_import_kwh": 10.0}]),
        ]
    )
    assert RegisterDecrease().detect(frame, registry(A={}, B={})).empty


# ---------------------------------------------------------------------- voltage loss


@pytest.mark.parametrize(
    ("u", "i", "un", "flagged"),
    [
        pytest.param(0.78 * UN, 1.0, UN, False, id="U = 0.78 Un (product): not flagged"),
        pytest.param(171.6, 1.0, UN, False, id="U = 171.6 V literal: not flagged"),
        # 0.78 * 240 is 187.20000000000002 in floats: 187.2 V is still "at" the threshold.
        pytest.param(187.2, 1.0, 240.0, False, id="U = 187.2 V at Un 240: not flagged"),
        pytest.param(187.1, 1.0, 240.0, True, id="U = 187.1 V at Un 240: flagged"),
        pytest.param(171.5, 1.0, UN, True, id="U just below 0.78 Un: flagged"),
        pytest.param(100.0, 0.025, UN, False, id="I = 0.005 Ib: not flagged"),
        pytest.param(100.0, 0.026, UN, True, id="I just above 0.005 Ib: flagged"),
        pytest.param(0.0, 3.0, UN, True, id="no voltage with load: flagged"),
        pytest.param(math.nan, 3.0, UN, False, id="NaN voltage: not flagged"),
        pytest.param(100.0, math.nan, UN, False, id="NaN current: not flagged"),
        pytest.param(225.0, 3.0, UN, False, id="normal"),
    ],
)
def test_voltage_loss_thresholds(u: float, i: float, un: float, flagged: bool) -> None:
    frame = readings("M1", [{"voltage_l1_v": u, "current_l1_a": i}])
    found = VoltageLoss().detect(frame, registry(M1={"nominal_voltage_v": un}))
    assert len(found) == int(flagged)


def test_single_phase_meter_uses_l1_only() -> None:
    # L2/L3 of a 1-phase meter are not phases of that meter, whatever they contain.
    row = {"voltage_l1_v": 221.0, "current_l1_a": 2.0, "voltage_l2_v": 10.0, "current_l2_a": 9.0}
    row |= {"voltage_l3_v": 0.0, "current_l3_a": 0.0}
    frame = readings("M1", [row])
    assert VoltageLoss().detect(frame, registry(M1={})).empty
    assert not VoltageLoss().detect(frame, registry(M1={"phases": 3})).empty


def test_voltage_loss_three_phase_reports_the_phase() -> None:
    ok = {"voltage_l1_v": 220.0, "voltage_l2_v": 221.0, "voltage_l3_v": 219.0}
    ok |= {"current_l1_a": 4.0, "current_l2_a": 4.0, "current_l3_a": 4.0}
    low = ok | {"voltage_l2_v": 150.0, "current_l2_a": 4.2}
    frame = readings("M3", [ok, low, low | {"voltage_l2_v": 140.0}, ok])
    found = VoltageLoss().detect(frame, registry(M3={"phases": 3}))
    assert len(found) == 1
    row = found.iloc[0]
    assert (row["starts_at"], row["ends_at"]) == (ts(1), ts(2))
    ev = row["evidence"]
    assert ev["phases"] == ["L2"]
    obs = ev["observed"]["L2"]
    assert (obs["voltage_v_start"], obs["voltage_v_min"], obs["voltage_v_max"]) == (150, 140, 150)
    assert (obs["current_a_start"], obs["readings"]) == (4.2, 2)
    assert ev["thresholds"]["voltage_v"] == pytest.approx(171.6)
    assert row["summary"].startswith("Voltage loss: phase L2 voltage 150.0 V (68 % of 220 V)")


@pytest.mark.parametrize(
    ("pattern", "min_readings", "expected"),
    [
        # pattern: 1 = condition holds at that reading; expected: (start, end|None) indices
        pytest.param("0110", 1, [(1, 2)], id="ended episode: ends at last holding reading"),
        pytest.param("0011", 1, [(2, None)], id="holds at last reading: ongoing (NaT)"),
        pytest.param("1", 1, [(0, None)], id="single reading: raise within one poll"),
        pytest.param("101101", 1, [(0, 0), (2, 3), (5, None)], id="three episodes"),
        pytest.param("0100110", 2, [(4, 5)], id="min_readings drops short episodes"),
        pytest.param("0110", 3, [], id="too short for min_readings"),
    ],
)
def test_episode_boundaries(
    pattern: str, min_readings: int, expected: list[tuple[int, int | None]]
) -> None:
    rows = [{"voltage_l1_v": 100.0 if c == "1" else 220.0, "current_l1_a": 1.0} for c in pattern]
    frame = readings("M1", rows)
    # merge_hours=0: episodes as they are (merging is tested below).
    found = VoltageLoss(min_readings=min_readings, merge_hours=0).detect(frame, registry(M1={}))
    got = [
        (s, None if pd.isna(e) else e)
        for s, e in zip(found["starts_at"], found["ends_at"], strict=True)
    ]
    assert got == [(ts(s), None if e is None else ts(e)) for s, e in expected]


def test_nan_reading_interrupts_an_episode() -> None:
    rows = [{"voltage_l1_v": v, "current_l1_a": 1.0} for v in (100.0, math.nan, 100.0, 220.0)]
    found = VoltageLoss(merge_hours=0).detect(readings("M1", rows), registry(M1={}))
    assert list(found["starts_at"]) == [ts(0), ts(2)]
    # With the default hysteresis the two episodes, 30 min apart, are one finding.
    merged = VoltageLoss().detect(readings("M1", rows), registry(M1={}))
    assert list(merged["starts_at"]) == [ts(0)] and merged["ends_at"].iat[0] == ts(2)
    assert merged["evidence"].iat[0]["readings"] == 2


# ----------------------------------------------------------------------- phase break

LIVE = {"voltage_l1_v": 221.0, "voltage_l2_v": 220.0, "voltage_l3_v": 219.0}
LIVE |= {"current_l1_a": 2.0, "current_l2_a": 2.0, "current_l3_a": 2.0}
THREE = {"phases": 3}


@pytest.mark.parametrize(
    ("changes", "meter", "flagged"),
    [
        pytest.param({"voltage_l2_v": 3.1, "current_l2_a": 0.0}, THREE, True, id="L2 broken"),
        pytest.param(
            {"voltage_l2_v": 0.6 * UN, "current_l2_a": 0.0}, THREE, False, id="U = 0.6 Un"
        ),
        pytest.param({"voltage_l2_v": 131.9, "current_l2_a": 0.0}, THREE, True, id="U < 0.6 Un"),
        pytest.param({"voltage_l2_v": 0.0, "current_l2_a": 0.025}, THREE, False, id="I = 0.005 Ib"),
        pytest.param({"voltage_l2_v": 0.0, "current_l2_a": 0.024}, THREE, True, id="I < 0.005 Ib"),
        pytest.param({"voltage_l2_v": 0.0, "current_l2_a": math.nan}, THREE, False, id="NaN I"),
        pytest.param({"voltage_l2_v": math.nan, "current_l2_a": 0.0}, THREE, False, id="NaN U"),
        pytest.param(
            {"voltage_l1_v": 0.0, "voltage_l2_v": 0.0, "voltage_l3_v": 0.0}
            | {"current_l1_a": 0.0, "current_l2_a": 0.0, "current_l3_a": 0.0},
            THREE,
            False,
            id="whole meter dead: outage, not phase break",
        ),
        pytest.param(
            {"voltage_l1_v": 0.78 * UN, "voltage_l2_v": 0.0, "voltage_l3_v": 50.0}
            | {"current_l2_a": 0.0, "current_l3_a": 0.0},
            THREE,
            True,
            id="other phase exactly 0.78 Un counts as live",
        ),
        pytest.param(
            {"voltage_l1_v": 171.5, "voltage_l2_v": 0.0, "voltage_l3_v": 50.0}
            | {"current_l2_a": 0.0, "current_l3_a": 0.0},
            THREE,
            False,
            id="other phases below 0.78 Un: not live",
        ),
        pytest.param(
            {"voltage_l1_v": 0.0, "current_l1_a": 0.0}, {}, False, id="1-phase without voltage"
        ),
    ],
)
def test_phase_break_table(changes: dict[str, float], meter: dict[str, Any], flagged: bool) -> None:
    frame = readings("M3", [LIVE | changes])
    found = PhaseBreak().detect(frame, registry(M3=meter))
    assert len(found) == int(flagged)


def test_phase_break_summary_matches_the_numbers() -> None:
    frame = readings("M3", [LIVE, LIVE | {"voltage_l2_v": 3.1, "current_l2_a": 0.0}])
    found = PhaseBreak().detect(frame, registry(M3=THREE))
    row = found.iloc[0]
    assert row["summary"] == (
        "Phase break: phase L2 voltage 3.1 V (1 % of 220 V) with current 0.00 A "
        "since 2026-01-05 06:15Z"
    )
    assert pd.isna(row["ends_at"])
    assert row["severity"] == "critical"
    assert row["evidence"]["phase"] == "L2"


def test_two_phases_breaking_together_are_one_finding() -> None:
    l1 = {"voltage_l1_v": 0.0, "current_l1_a": 0.0}
    l2 = {"voltage_l2_v": 1.0, "current_l2_a": 0.0}
    # L1 broken at readings 1-3, L2 at 2-4 (overlapping): one episode 1..4 listing both.
    frame = readings("M3", [LIVE, LIVE | l1, LIVE | l1 | l2, LIVE | l1 | l2, LIVE | l2, LIVE])
    found = PhaseBreak().detect(frame, registry(M3=THREE))
    assert len(found) == 1
    row = found.iloc[0]
    assert (row["starts_at"], row["ends_at"]) == (ts(1), ts(4))
    assert row["evidence"]["phases"] == ["L1", "L2"]
    assert row["evidence"]["observed"]["L2"]["readings"] == 3
    assert "phases L1, L2" in row["summary"]


# ------------------------------------------------------------------ consumption spike


HISTORY_START = pd.Timestamp("2026-01-01T00:00Z")


def hourly_meter(
    meter_id: str, per_hour: np.ndarray, start: pd.Timestamp = HISTORY_START
) -> pd.DataFrame:
    """Hourly register readings whose deltas are ``per_hour`` [register kWh]."""
    register = 1000.0 + np.r_[0.0, np.cumsum(per_hour)]
    return readings_from_records(
        [
            {"meter_id": meter_id, "ts": start + pd.Timedelta(hours=h), "energy_import_kwh": e}
            for h, e in enumerate(register)
        ]
    )


def flat_week_then(last_day: dict[int, float], base: float = 1.0, days: int = 28) -> np.ndarray:
    """``days`` days of ``base`` per hour, then one day with ``last_day[hour]`` overrides."""
    day = np.full(24, base)
    for h, v in last_day.items():
        day[h] = v
    return np.r_[np.full(24 * days, base), day]


SPIKE_DAY = HISTORY_START + pd.Timedelta(days=28)  # Thursday 2026-01-29


def test_spike_4x_for_two_hours_flagged_2x_not() -> None:
    frame = hourly_meter("M1", flat_week_then({18: 4.0, 19: 3.5, 21: 2.0, 22: 2.0}))
    found = ConsumptionSpike().detect(frame, registry(M1={}))
    assert len(found) == 1
    row = found.iloc[0]
    assert row["starts_at"] == SPIKE_DAY + pd.Timedelta(hours=18)
    assert row["ends_at"] == SPIKE_DAY + pd.Timedelta(hours=20)
    assert row["severity"] == "warning"
    peak = row["evidence"]["peak"]
    assert (peak["kwh"], peak["baseline_kwh"], peak["ratio"]) == pytest.approx((4.0, 1.0, 4.0))
    # Thursday: the 20 weekdays of the previous 28 days (not the weekends).
    assert peak["comparable_days"] == 20
    assert row["summary"] == (
        "Consumption peaked at 4.00 kWh in the hour from 2026-01-29 18:00Z vs usual 1.00 kWh "
        "(at most 1.00 kWh on 20 comparable days; 4.0×); 2 spike hours from 2026-01-29 18:00Z "
        "to 2026-01-29 20:00Z"
    )


def test_a_spike_needs_energy_beyond_the_habitual_high_and_two_hours() -> None:
    # A usual day of 24 kWh: a spike needs more than 9 % of it (2.16 kWh) above anything
    # usual, over at least two consecutive hours above 3x the median.
    two = hourly_meter("M1", flat_week_then({18: 3.2, 19: 3.2}))  # 4.4 kWh above
    assert len(ConsumptionSpike().detect(two, registry(M1={}))) == 1
    assert ConsumptionSpike(min_excess_fraction=0.2).detect(two, registry(M1={})).empty  # 4.8
    assert ConsumptionSpike(min_hours=3).detect(two, registry(M1={})).empty
    one = hourly_meter("M1", flat_week_then({18: 9.0}))  # one hour, 8 kWh above
    assert ConsumptionSpike().detect(one, registry(M1={})).empty
    assert len(ConsumptionSpike(min_hours=1).detect(one, registry(M1={}))) == 1


@pytest.mark.parametrize(
    ("params", "flagged"),
    [
        pytest.param({}, True, id="defaults"),
        pytest.param(
            {"ratio": 4.0, "high_factor": 4.0}, False, id="ratio 4: exactly 4x is not above"
        ),
        pytest.param({"ratio": 4.0}, True, id="ratio 4, but 4x a steady habitual high"),
        pytest.param({"k": 40.0}, False, id="k: 3 kWh excess < 40 x 0.1 kWh spread"),
        pytest.param({"min_excess_kwh": 6.0}, False, id="min_excess: 6 kWh in all is not above"),
    ],
)
def test_spike_parameters(params: dict[str, float], flagged: bool) -> None:
    frame = hourly_meter("M1", flat_week_then({18: 4.0, 19: 4.0}))
    assert len(ConsumptionSpike(**params).detect(frame, registry(M1={}))) == int(flagged)


def test_a_steady_load_is_judged_against_its_habitual_high() -> None:
    """A load whose every comparable hour is alike (a shop, a plant): 2.3x for two hours is
    far beyond its habit (above 1.75x its habitual high), though below 3x its median."""
    frame = hourly_meter("M1", flat_week_then({18: 2.3, 19: 2.3}))  # 2.6 kWh above habit
    assert len(ConsumptionSpike().detect(frame, registry(M1={}))) == 1
    assert ConsumptionSpike(high_factor=3.0).detect(frame, registry(M1={})).empty
    lower = hourly_meter("M1", flat_week_then({18: 1.7, 19: 1.7, 20: 1.7, 21: 1.7}))
    assert ConsumptionSpike().detect(lower, registry(M1={})).empty  # 1.7x: within 1.75x


def test_spike_without_history_not_flagged() -> None:
    day = np.ones(24)
    day[18:20] = 4.0
    frame = hourly_meter("M1", day)
    assert ConsumptionSpike().detect(frame, registry(M1={})).empty


def test_weekend_is_judged_against_weekends() -> None:
    """Saturday with three times the weekday load is no spike: weekends are alike."""
    weeks = np.tile(np.r_[np.full(5, 1.0), np.full(2, 3.0)].repeat(24), 5)
    frame = hourly_meter("M1", weeks[:-24], start=pd.Timestamp("2025-12-29T00:00Z"))
    assert ConsumptionSpike().detect(frame, registry(M1={})).empty


def test_spike_needs_min_history_days() -> None:
    # Monday and Tuesday as history, the spike on Wednesday 2026-01-07.
    start = pd.Timestamp("2026-01-05T00:00Z")
    frame = hourly_meter("M1", flat_week_then({18: 4.0, 19: 4.0}, days=2), start=start)
    assert ConsumptionSpike().detect(frame, registry(M1={})).empty  # 2 < 7 comparable days
    assert len(ConsumptionSpike(min_history_days=2).detect(frame, registry(M1={}))) == 1


def test_habitual_peaks_are_not_spikes() -> None:
    """A household whose evening hours reach anywhere up to 3 kWh: a 2.9 kWh evening is its
    habit (it was a spike against a one-day median), a 9 kWh one is not."""  # noqa: D401
    rng = np.random.default_rng(3)
    days = 29
    use = np.full((days, 24), 0.3)
    use[:, 19:21] = rng.uniform(0.5, 3.0, (days, 2))
    use[-1, 19:21] = 2.9
    frame = hourly_meter("M1", use.ravel())
    assert ConsumptionSpike().detect(frame, registry(M1={})).empty
    use[-1, 19:21] = 9.0
    found = ConsumptionSpike().detect(hourly_meter("M1", use.ravel()), registry(M1={}))
    assert len(found) == 1 and found["evidence"].iat[0]["peak"]["kwh"] == pytest.approx(9.0)


def test_fitted_baselines_give_the_same_verdict_on_one_day() -> None:
    """fit() on the history, then detect on the judged day alone: as the rolling window."""
    frame = hourly_meter("M1", flat_week_then({18: 4.0, 19: 4.0}))
    reg = registry(M1={})
    rolling = ConsumptionSpike().detect(frame, reg)
    history = frame[frame["ts"] <= SPIKE_DAY]
    day = frame[frame["ts"] >= SPIKE_DAY]
    fitted = ConsumptionSpike().fit(history, reg).detect(day, reg)
    assert len(rolling) == 1
    assert list(fitted["starts_at"]) == list(rolling["starts_at"])
    assert fitted["evidence"].iat[0]["baseline"] == "fitted"
    assert fitted["evidence"].iat[0]["peak"]["comparable_days"] == 20


def test_spike_applies_ct_ratio() -> None:
    # Register moves 0.01 kWh/h and 0.04 in the spike hours: 1 vs 4 kWh billed with CT 100.
    frame = hourly_meter("M1", flat_week_then({18: 0.04, 19: 0.04}, base=0.01))
    assert ConsumptionSpike().detect(frame, registry(M1={})).empty  # 0.06 kWh above habit
    found = ConsumptionSpike().detect(frame, registry(M1={"ct_ratio": 100.0}))
    assert len(found) == 1
    assert found.at[0, "evidence"]["peak"]["kwh"] == pytest.approx(4.0)
    assert found.at[0, "evidence"]["ct_ratio"] == 100.0


def test_spike_episode_spans_consecutive_hours_and_can_be_ongoing() -> None:
    frame = hourly_meter("M1", flat_week_then({18: 4.0, 19: 5.0, 22: 6.0, 23: 6.0}))
    found = ConsumptionSpike().detect(frame, registry(M1={}))
    assert list(found["starts_at"]) == [SPIKE_DAY + pd.Timedelta(hours=h) for h in (18, 22)]
    assert found.at[0, "ends_at"] == SPIKE_DAY + pd.Timedelta(hours=20)
    assert pd.isna(found.at[1, "ends_at"]), "last hour of the window: still ongoing"
    assert found.at[0, "evidence"]["hours"] == 2
    assert found.at[0, "evidence"]["peak"]["kwh"] == pytest.approx(5.0)


def test_spike_not_fooled_by_data_gap() -> None:
    frame = hourly_meter("M1", flat_week_then({}))
    # Readings 10:00-14:00 of the last day missing: the 6 kWh the register gained between
    # 09:00 and 15:00 belong to six hours, not one.
    gap = frame["ts"].between(
        SPIKE_DAY + pd.Timedelta(hours=10), SPIKE_DAY + pd.Timedelta(hours=14)
    )
    assert ConsumptionSpike().detect(frame[~gap], registry(M1={})).empty
    kwh, hours = hourly_energy(build_window(frame[~gap], registry(M1={})), 75.0)
    assert np.isnan(kwh[0, hours.get_loc(SPIKE_DAY + pd.Timedelta(hours=12))])


@pytest.mark.parametrize("dip_readings", [1, 3])
def test_spike_not_fooled_by_register_dip(dip_readings: int) -> None:
    # Register reads 5 kWh low for a while and comes back: register_decrease's business;
    # the rebound interval (5 kWh + 1 kWh) must not look like a 6x hour.
    frame = hourly_meter("M1", flat_week_then({}))
    dip = frame["ts"].between(
        SPIKE_DAY + pd.Timedelta(hours=18), SPIKE_DAY + pd.Timedelta(hours=17 + dip_readings)
    )
    frame.loc[dip, "energy_import_kwh"] -= 5.0
    assert ConsumptionSpike().detect(frame, registry(M1={})).empty
    assert len(RegisterDecrease().detect(frame, registry(M1={}))) == 1


def test_hourly_energy_apportions_unaligned_polls() -> None:
    # 1.2 kWh/h steady, polled every 20 min at :07, :27, :47.
    times = pd.Timestamp("2026-01-01T00:07Z") + pd.to_timedelta(np.arange(20) * 20, unit="min")
    hours_elapsed = (times - times[0]) / pd.Timedelta(hours=1)
    frame = readings_from_records(
        {"meter_id": "M1", "ts": t, "energy_import_kwh": 50 + 1.2 * h}
        for t, h in zip(times, hours_elapsed, strict=True)
    )
    w = build_window(frame, registry(M1={}))
    kwh, hours = hourly_energy(w, 75.0)
    assert list(w.ids) == ["M1"]
    assert hours[0] == pd.Timestamp("2026-01-01T01:00Z")  # first complete hour
    np.testing.assert_allclose(kwh[0], 1.2)


def test_spike_meters_are_independent() -> None:
    a = hourly_meter("A", flat_week_then({18: 4.0, 19: 4.0}))
    b = hourly_meter("B", flat_week_then({}, base=3.0))
    found = ConsumptionSpike().detect(pd.concat([a, b]), registry(A={}, B={}))
    assert list(found["meter_id"]) == ["A"]


# ----------------------------------------------------------------------------- suite


def test_default_detectors_params_and_errors() -> None:
    detectors = default_detectors({"consumption_spike": {"ratio": 3.0}, "phase_break": {}})
    spike = next(d for d in detectors if isinstance(d, ConsumptionSpike))
    assert spike.ratio == 3.0
    with pytest.raises(ValueError, match="'consumption_spikes'"):
        default_detectors({"consumption_spikes": {}})
    with pytest.raises(ValueError, match="voltage_loss: unknown parameter.*'voltage'"):
        default_detectors({"voltage_loss": {"voltage": 0.7}})
    with pytest.raises(ValueError, match="voltage_fraction"):
        default_detectors({"voltage_loss": {"voltage_fraction": 78}})


def test_run_detectors_concatenates() -> None:
    meters = registry(M1={}, M3=THREE)
    frame = pd.concat(
        [
            readings("M1", [{"energy_import_kwh": 10.0}, {"energy_import_kwh": 9.0}]),
            readings("M3", [LIVE | {"voltage_l3_v": 0.0, "current_l3_a": 0.0}]),
        ]
    )
    found = run_detectors(default_detectors(), frame, meters)
    assert list(found.columns) == list(FINDING_COLUMNS)
    assert sorted(found["type"]) == ["phase_break", "register_decrease"]
    assert list(found.index) == [0, 1]
    empty = run_detectors(default_detectors(), frame.iloc[:0], meters)
    assert empty.empty and list(empty.columns) == list(FINDING_COLUMNS)
