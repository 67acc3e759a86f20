"""VEE (analytics/vee.py): every rule at its threshold edges, exact estimates, a property test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterwatch.analytics.vee import (
    VALIDATED_COLUMNS,
    VeeParams,
    apply_edits,
    last_interpolable_boundary,
    validate,
)
from meterwatch.config import VeeConfig
from meterwatch.core.registry import check_registry
from meterwatch.core.schema import readings_from_records

T0 = pd.Timestamp("2026-01-05T00:00:00Z")  # a Monday
Q = pd.Timedelta(minutes=15)


def registry(**over: object) -> pd.DataFrame:
    """One meter M: 1-phase 230 V, Ib 5 A, Imax 60 A, CT 1 (runaway limit 4.14 kWh / 15 min)."""
    row = {
        "meter_id": "M",
        "role": "customer",
        "transformer_id": "T1",
        "customer_class": "residential",
        "phases": 1,
        "nominal_voltage_v": 230.0,
        "rated_current_a": 5.0,
        "max_current_a": 60.0,
        "ct_ratio": 1.0,
        "tariff": "res",
        "last_calibration": "2025-06-01",
        "calibration_interval_days": 3650,
    }
    row.update(over)
    return check_registry(pd.DataFrame([row]))


def reads(
    increments: list[float] | np.ndarray,
    *,
    start: pd.Timestamp = T0,
    e0: float = 100.0,
    meter: str = "M",
    step: pd.Timedelta = Q,
    **cols: object,
) -> pd.DataFrame:
    """Reads on the grid: the register starts at ``e0`` and adds ``increments[k]`` at read k+1."""
    energy = e0 + np.r_[0.0, np.cumsum(np.asarray(increments, dtype=float))]
    n = energy.size
    data: dict[str, object] = {
        "meter_id": meter,
        "ts": [start + k * step for k in range(n)],
        "energy_import_kwh": energy,
        "voltage_l1_v": 230.0,
    }
    for k, v in cols.items():
        data[k] = v
    return readings_from_records(pd.DataFrame(data).to_dict("records"))


def run(r: pd.DataFrame, reg: pd.DataFrame | None = None, **kw: object) -> pd.DataFrame:
    return validate(r, reg if reg is not None else registry(), **kw).intervals  # type: ignore[arg-type]


def has(intervals: pd.DataFrame, code: str) -> np.ndarray:
    return intervals["reasons"].str.split(";").apply(lambda x: code in x).to_numpy()


# ------------------------------------------------------------------------------ basics


def test_params_are_the_config_section_written_once() -> None:
    """The ``vee`` section is VeeParams plus the grid: one set of fields and defaults."""
    assert issubclass(VeeConfig, VeeParams)
    assert set(VeeConfig.model_fields) - set(VeeParams.model_fields) == {
        "interval",
        "rule_set_version",
    }
    assert VeeConfig().params() == VeeParams()


def test_bad_params_and_interval_are_refused() -> None:
    with pytest.raises(ValueError, match="like_days"):
        VeeParams(like_days=0)
    with pytest.raises(ValueError, match="interval_s"):
        validate(reads([1.0]), registry(), interval_s=7 * 60)


def test_actual_interval_energy_is_register_delta_times_ct() -> None:
    r = reads([0.1, 0.2, 0.3])
    before = r.copy()
    out = validate(r, registry(ct_ratio=40.0), rule_set_version="rs-9", data_version=4).intervals
    pd.testing.assert_frame_equal(r, before)  # raw readings untouched
    assert list(out.columns) == list(VALIDATED_COLUMNS)
    assert out["kwh"].to_numpy() == pytest.approx([4.0, 8.0, 12.0])
    assert set(out["quality"]) == {"actual"}
    assert set(out["method"]) == {"register_delta"}
    assert set(out["reasons"]) == {""}
    assert set(out["rule_set_version"]) == {"rs-9"} and set(out["data_version"]) == {4}
    assert list(out["ts"]) == [T0 + Q, T0 + 2 * Q, T0 + 3 * Q]
    assert list(out["interval_start"]) == [T0, T0 + Q, T0 + 2 * Q]


def test_unaligned_reads_are_interpolated_at_boundaries() -> None:
    # Reads at 00:05 (E=1.0), 00:20 (E=2.5), 00:35 (E=2.8): boundary 00:15 -> 1 + 1.5*10/15
    # = 2.0, boundary 00:30 -> 2.5 + 0.3*10/15 = 2.7; interval 00:15-00:30 = 0.7 kWh.
    r = readings_from_records(
        [
            {"meter_id": "M", "ts": T0 + pd.Timedelta(minutes=m), "energy_import_kwh": e}
            for m, e in ((5, 1.0), (20, 2.5), (35, 2.8))
        ]
    )
    out = run(r)
    assert len(out) == 1
    assert out["kwh"].iloc[0] == pytest.approx(0.7)
    assert out["quality"].iloc[0] == "actual"
    assert has(out, "misaligned").all()


@pytest.mark.parametrize(
    ("third_read_min", "quality"),
    [(37.5, "actual"), (37.5 + 1 / 60, "estimated")],  # spacing 1.5 intervals is still read
)
def test_read_spacing_edge(third_read_min: float, quality: str) -> None:
    r = readings_from_records(
        [
            {"meter_id": "M", "ts": T0 + pd.Timedelta(minutes=m), "energy_import_kwh": e}
            for m, e in ((0, 1.0), (15, 2.0), (third_read_min, 3.0), (45, 4.0))
        ]
    )
    out = run(r, start=T0, end=T0 + 3 * Q, **{"params": VeeParams(linear_max_gap_s=0, like_days=1)})
    # Interval 00:15-00:30 needs boundary 00:30, bracketed by 00:15 and the third read.
    assert list(out["quality"].iloc[1:]) == [quality] * 2
    assert has(out, "gap").tolist() == [False, quality != "actual", quality != "actual"]


def test_duplicate_out_of_order_and_future_rows() -> None:
    r = reads([1.0, 1.0, 1.0, 1.0])
    shuffled = pd.concat([r.iloc[[0, 2, 1]], r.iloc[[2]], r.iloc[[3, 4]]], ignore_index=True)
    v = validate(shuffled, registry(), now=T0 + 3 * Q)
    out = v.intervals
    assert v.counts["rows_duplicate_ts"] == 2 and v.counts["rows_out_of_order"] == 1
    # The read at 00:30 is duplicated, the read at 00:15 came after it.
    assert has(out, "duplicate_ts").tolist()[:2] == [False, True]
    assert has(out, "out_of_order")[0]
    # The read at 01:00 is after now + 5 min: not used, its interval has no end read.
    assert v.counts["rows_future_ts"] == 1
    assert out["ts"].max() == T0 + 3 * Q


@pytest.mark.parametrize(("late_s", "future"), [(300, False), (301, True)])
def test_future_tolerance_edge(late_s: int, future: bool) -> None:
    r = reads([1.0, 1.0])  # last read at 00:30
    v = validate(r, registry(), now=T0 + 2 * Q - pd.Timedelta(seconds=late_s))
    assert v.counts["rows_future_ts"] == int(future)
    assert len(v.intervals) == (1 if future else 2)


@pytest.mark.parametrize(
    ("prev", "cur", "rollover"),
    [(89_999_999.99, 0.5, False), (90_000_000.0, 0.5, True), (99_999_999.0, 10_000_000.0, False)],
)
def test_rollover_fraction_edges(prev: float, cur: float, rollover: bool) -> None:
    # A wrap needs prev >= 90 % of the maximum and cur < 10 % of it.
    r = reads([1.0, 1.0])
    r.loc[1, "energy_import_kwh"] = prev
    r.loc[2, "energy_import_kwh"] = cur
    out = run(r)
    assert has(out, "rollover")[1] == rollover
    assert has(out, "register_decrease")[1] == (not rollover)


# ------------------------------------------------------------------------- hard checks


@pytest.mark.parametrize(
    ("jump", "runaway"),
    [(4.14, False), (4.15, True)],  # limit 1.2 * 230 V * 60 A * 1 * 0.25 h = 4.14 kWh
)
def test_runaway_edge(jump: float, runaway: bool) -> None:
    out = run(reads([0.1, jump, 0.1]))
    assert has(out, "runaway").tolist() == [False, runaway, False]
    assert out["quality"].iloc[1] == ("estimated" if runaway else "actual")
    if runaway:  # estimated by linear interpolation between 0.1 and 0.1 then scaled...
        # ...no: a runaway is not a pure gap, so no scaling: linear 0.1.
        assert out["kwh"].iloc[1] == pytest.approx(0.1)
        assert out["method"].iloc[1] == "linear_interpolation"


@pytest.mark.parametrize(
    ("power_kw", "runaway"),
    [(20.0, False), (16.6, True)],  # 5 kWh in 15 min: 20 kW explains it, 1.2 x 16.6 x 0.25 < 5
)
def test_runaway_not_raised_when_power_readings_explain_it(power_kw: float, runaway: bool) -> None:
    out = run(reads([0.1, 5.0, 0.1], power_kw=power_kw))
    assert has(out, "runaway").tolist() == [False, runaway, False]


@pytest.mark.parametrize(
    ("flat_intervals", "current_a", "stuck"),
    [
        (16, 0.25, True),  # 4 h at exactly 5 % of Ib
        (15, 0.25, False),  # 3.75 h
        (16, 0.249, False),  # below 5 % of Ib
    ],
)
def test_stuck_register_edge(flat_intervals: int, current_a: float, stuck: bool) -> None:
    inc = [0.3] * 4 + [0.0] * flat_intervals + [0.3] * 4
    out = run(reads(inc, current_l1_a=current_a))
    flags = has(out, "stuck_register")
    assert flags[4 : 4 + flat_intervals].all() == stuck
    assert flags.sum() == (flat_intervals if stuck else 0)
    # No history to estimate a stuck register from: its intervals are missing, not actual.
    assert (out["quality"].iloc[4 : 4 + flat_intervals] == "missing").all() == stuck


@pytest.mark.parametrize(
    ("drop", "flagged"),
    [(0.01, False), (0.02, True)],  # tolerance 0.01 kWh (one count)
)
def test_register_decrease_edge(drop: float, flagged: bool) -> None:
    out = run(reads([0.5, 0.5, -drop, 0.5, 0.5]))
    assert has(out, "register_decrease")[2] == flagged
    assert out["quality"].iloc[2] == ("estimated" if flagged else "actual")


def test_rollover_is_not_a_decrease() -> None:
    # 99 999 999.50 -> 0.49: one wrap of 100 000 000.00 (max 99 999 999.99 + one count).
    r = reads([0.2, 0.99 - 0.0, 0.3], e0=99_999_999.30)
    r.loc[2, "energy_import_kwh"] = 0.49
    r.loc[3, "energy_import_kwh"] = 0.79
    r.loc[1, "energy_import_kwh"] = 99_999_999.50
    out = run(r)
    assert out["kwh"].to_numpy() == pytest.approx([0.2, 0.99, 0.3], abs=1e-6)
    assert not has(out, "register_decrease").any()
    assert has(out, "rollover").tolist() == [False, True, False]


# ------------------------------------------------------------------------- soft checks


@pytest.mark.parametrize(("top", "spike"), [(2.0, False), (2.01, True)])
def test_spike_highest_vs_third_highest(top: float, spike: bool) -> None:
    inc = np.full(96, 0.1)
    inc[[10, 20]] = 0.2  # second and third highest
    inc[50] = top  # ratio 10 x third-highest, and 1.8 kWh > 1 kWh floor above it
    out = run(reads(inc))
    assert has(out, "spike").tolist() == [spike and k == 50 for k in range(96)]
    assert set(out["quality"]) == {"actual"}


@pytest.mark.parametrize(
    ("day2_total", "code"),
    [(20.0, None), (20.16, "high_usage"), (5.0, None), (4.8, "low_usage")],
)
def test_high_low_usage_vs_history(day2_total: float, code: str | None) -> None:
    inc = np.r_[np.full(96, 10.0 / 96), np.full(96, day2_total / 96)]
    out = run(reads(inc))
    day2 = out.iloc[96:]
    for c in ("high_usage", "low_usage"):
        assert has(day2, c).all() == (c == code)
        assert not has(out.iloc[:96], c).any()


@pytest.mark.parametrize(
    ("flat", "volts", "zero"),
    [(96, 230.0, True), (95, 230.0, False), (96, 100.0, False)],  # 100 V < 60 % Un: outage
)
def test_zero_consumption_outside_outages(flat: int, volts: float, zero: bool) -> None:
    inc = [0.2] * 2 + [0.0] * flat + [0.2] * 2
    r = reads(inc)
    r.loc[3 : 2 + flat, "voltage_l1_v"] = volts
    out = run(r)
    z = has(out, "zero_consumption")
    assert z.sum() == (flat if zero else 0)
    assert has(out, "outage").any() == (volts < 138)


@pytest.mark.parametrize(
    ("day_kwh", "code"),
    [(26.6, None), (26.7, "energy_power_mismatch"), (21.7, None), (21.5, "energy_power_mismatch")],
)
def test_energy_vs_integrated_power(day_kwh: float, code: str | None) -> None:
    # Power 1 kW for 24 h integrates to 24 kWh; tolerance 10 % of the larger, floor 1 kWh.
    v = validate(reads(np.full(96, day_kwh / 96), power_kw=1.0), registry())
    flagged = has(v.intervals, "energy_power_mismatch")
    assert flagged.all() == (code is not None) and flagged.any() == (code is not None)
    assert (v.events["code"] == "energy_power_mismatch").sum() == (1 if code else 0)
    if code:
        ev = v.events.iloc[0]["evidence"]
        assert ev["register_kwh"] == pytest.approx(day_kwh)
        assert ev["integrated_power_kwh"] == pytest.approx(24.0)


@pytest.mark.parametrize(("hours", "judged"), [(21.5, False), (21.75, True)])  # 90 % = 21.6 h
def test_mismatch_needs_covered_windows(hours: float, judged: bool) -> None:
    n = int(hours * 4)
    v = validate(reads(np.full(n, 0.5), power_kw=1.0), registry(), start=T0, end=T0 + 96 * Q)
    assert (v.events["code"] == "energy_power_mismatch").any() == judged


@pytest.mark.parametrize(
    ("p_over_e", "code"),
    [(50.0, "multiplier_mismatch"), (45.5, "multiplier_mismatch"), (44.0, "energy_power_mismatch")],
)
def test_multiplier_mismatch(p_over_e: float, code: str) -> None:
    # CT 50; the meter reports power p_over_e times what its register integrates.
    v = validate(reads(np.full(96, 0.25), power_kw=p_over_e), registry(ct_ratio=50.0))
    assert list(v.events["code"]) == [code]


@pytest.mark.parametrize(("lead_s", "flagged"), [(900, False), (901, True)])
def test_clock_error_lead_over_other_meters(lead_s: int, flagged: bool) -> None:
    reg = pd.concat([registry(), registry(meter_id="N")], ignore_index=True)
    a = reads([0.1] * 8)
    b = reads([0.1] * 8, meter="N")
    b.loc[len(b)] = b.iloc[-1]
    b.loc[len(b) - 1, "ts"] = a["ts"].max() + pd.Timedelta(seconds=lead_s)
    b.loc[len(b) - 1, "energy_import_kwh"] += 0.1
    v = validate(pd.concat([a, b], ignore_index=True), reg)
    ev = v.events[v.events["code"] == "clock_error"]
    assert list(ev["meter_id"]) == (["N"] if flagged else [])
    if flagged:
        assert ev.iloc[0]["evidence"]["lead_s"] == pytest.approx(lead_s)


@pytest.mark.parametrize(("lead_s", "flagged"), [(900, False), (901, True)])
def test_clock_error_judged_per_read_against_collected_at(lead_s: int, flagged: bool) -> None:
    # One meter, no fleet to compare with: its clock jumps ahead at read 5 (of 9).
    r = reads([0.1] * 8)
    r["collected_at"] = r["ts"]
    jump = r.index >= 5
    r.loc[jump, "ts"] = r.loc[jump, "ts"] + pd.Timedelta(seconds=lead_s)
    v = validate(r, registry())
    ev = v.events[v.events["code"] == "clock_error"]
    assert list(ev["meter_id"]) == (["M"] if flagged else [])
    if flagged:
        e = ev.iloc[0]
        assert e["starts_at"] == r.loc[5, "ts"]
        assert e["evidence"]["reference_kind"] == "collected_at"
        assert e["evidence"]["reads_ahead"] == 4
        assert e["evidence"]["lead_s"] == pytest.approx(lead_s)


def test_clock_error_uses_the_meters_own_clock_when_reported() -> None:
    # Polled meter: ts is the collector's time; device_ts the meter's clock read with it.
    r = reads([0.1] * 4)
    r["collected_at"] = r["ts"]
    r["device_ts"] = r["ts"] + pd.Timedelta(minutes=20)
    ev = validate(r, registry()).events
    assert list(ev.loc[ev["code"] == "clock_error", "meter_id"]) == ["M"]
    r["device_ts"] = r["ts"] - pd.Timedelta(hours=2)  # behind: not judged (see ClockError)
    assert not (validate(r, registry()).events["code"] == "clock_error").any()


def test_many_clocks_ahead_at_once_are_each_found() -> None:
    # Against "the latest read of the others", ten meters ahead together hide each other;
    # against their own receipt times each is found.
    ids = [f"M{i}" for i in range(10)] + ["OK"]
    reg = pd.concat([registry(meter_id=m) for m in ids], ignore_index=True)
    frames = []
    for i, m in enumerate(ids):
        f = reads([0.1] * 8, meter=m)
        f["collected_at"] = f["ts"]
        if m != "OK":
            f.loc[f.index >= 6, "ts"] += pd.Timedelta(minutes=40 + 20 * i)
        frames.append(f)
    with_times = pd.concat(frames, ignore_index=True)
    ev = validate(with_times, reg).events
    assert sorted(ev.loc[ev["code"] == "clock_error", "meter_id"]) == ids[:-1]
    ev = validate(with_times.drop(columns="collected_at"), reg).events
    assert list(ev.loc[ev["code"] == "clock_error", "meter_id"]) == ["M9"]


def test_files_with_receipt_times_are_judged_per_read(tmp_path: Path) -> None:
    # Two of three meters' clocks jump 40 min ahead together: in a CSV with collected_at
    # (as a backup holds them) both are found; without it they hide each other.
    from meterwatch.analytics.detectors.billing_rules import ClockError
    from meterwatch.io import read_readings_file

    ids = ["A", "B", "C"]
    reg = pd.concat([registry(meter_id=m) for m in ids], ignore_index=True)
    frames = []
    for m in ids:
        f = reads([0.1] * 8, meter=m)
        f["collected_at"] = f["ts"]
        if m != "C":
            f.loc[f.index >= 6, "ts"] += pd.Timedelta(minutes=40)
        frames.append(f)
    text = pd.concat(frames, ignore_index=True)
    for c in ("ts", "collected_at"):
        text[c] = text[c].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    text.to_csv(tmp_path / "with.csv", index=False)
    text.drop(columns="collected_at").to_csv(tmp_path / "without.csv", index=False)
    found = ClockError().detect(read_readings_file(tmp_path / "with.csv"), reg)
    assert sorted(found["meter_id"]) == ["A", "B"]
    assert ClockError().detect(read_readings_file(tmp_path / "without.csv"), reg).empty


# -------------------------------------------------------------------------- estimation


@pytest.mark.parametrize(("gap_delta", "expected"), [(5.0, [2.0, 3.0]), (10.0, [4.0, 6.0])])
def test_linear_interpolation_scaled_to_register(gap_delta: float, expected: list[float]) -> None:
    # Intervals 1, [gap of 2], 4: linear gives 2, 3 (sum 5); scaled to the register delta.
    r = reads([1.0, gap_delta / 2, gap_delta / 2, 4.0])
    r = r.drop(index=2).reset_index(drop=True)  # no read at 00:30: intervals 2 and 3 missing
    out = run(r, registry(max_current_a=100.0))  # runaway limit 6.9 kWh per interval
    est = out.iloc[1:3]
    assert list(est["quality"]) == ["estimated"] * 2
    assert list(est["method"]) == ["linear_interpolation"] * 2
    assert est["kwh"].to_numpy() == pytest.approx(expected)
    assert has(est, "scaled_to_register").all() and has(est, "gap").all()
    assert out["kwh"].sum() == pytest.approx(1.0 + gap_delta + 4.0)


@pytest.mark.parametrize(
    ("missing_intervals", "method"),
    [(8, "linear_interpolation"), (9, "register_prorate")],
)
def test_linear_interpolation_up_to_two_hours_inclusive(
    missing_intervals: int, method: str
) -> None:
    # Default linear_max_gap_s = 2 h (California interval VEE: "gaps 2 hours or less",
    # docs/billing.md): 8 missing 15-minute intervals are interpolated, 9 are not (no like days
    # in this history, so the known register delta is prorated instead).
    r = reads(np.full(40, 0.25))
    gone = (r.index > 2) & (r.index < 3 + missing_intervals - 1)
    out = run(r[~gone])
    est = out["quality"] == "estimated"
    assert est.sum() == missing_intervals
    assert set(out.loc[est, "method"]) == {method}
    assert out["kwh"].sum() == pytest.approx(40 * 0.25)


def test_outage_interval_is_never_a_linear_end_point() -> None:
    r = reads([1.0, 1.0, 1.0, 1.0])
    r.loc[1, "voltage_l1_v"] = 0.0  # interval 0 (read at 00:15) is an outage
    r = r.drop(index=2).reset_index(drop=True)
    out = run(r)
    assert list(out["method"].iloc[1:3]) == ["register_prorate"] * 2
    assert out["kwh"].iloc[1:3].to_numpy() == pytest.approx([1.0, 1.0])


def _days(per_day: list[float]) -> pd.DataFrame:
    return reads(np.concatenate([np.full(96, v / 96) for v in per_day]))


def test_like_day_average_of_three_nearest_like_days() -> None:
    # Mon 24, Tue 48, Wed (reads stop at 06:00), Thu 72, Fri 96 kWh; the period runs to Thu end.
    r = _days([24.0, 48.0, 1.0, 72.0, 96.0])
    wed = T0 + pd.Timedelta(days=2)
    r = r[(r["ts"] <= wed + pd.Timedelta(hours=6)) | (r["ts"] > wed + pd.Timedelta(hours=12))]
    out = run(r, start=T0, end=T0 + pd.Timedelta(days=5))
    gap = out[
        (out["interval_start"] >= wed + pd.Timedelta(hours=6))
        & (out["ts"] <= wed + pd.Timedelta(hours=12))
    ]
    assert len(gap) == 24 and set(gap["quality"]) == {"estimated"}
    assert set(gap["method"]) == {"like_day_average"}
    # Tue (-1), Thu (+1), Mon (-2): (0.5 + 0.75 + 0.25) / 3 per interval before scaling;
    # the gap is bounded by actual reads, so it is scaled to the register delta: 6 * 1/96 * 4.
    assert gap["kwh"].sum() == pytest.approx(24 * 1.0 / 96)
    assert gap["kwh"].to_numpy() == pytest.approx(np.full(24, 1.0 / 96))


def test_like_day_average_unscaled_at_the_end_of_data() -> None:
    r = _days([24.0, 48.0, 12.0, 72.0, 96.0])
    fri = T0 + pd.Timedelta(days=4)
    r = r[r["ts"] <= fri + pd.Timedelta(hours=6)]  # Friday stops at 06:00
    out = run(r, start=T0, end=T0 + pd.Timedelta(days=5))
    tail = out[out["interval_start"] >= fri + pd.Timedelta(hours=6)]
    assert set(tail["method"]) == {"like_day_average"}
    # Thu (-1), Wed (-2), Tue (-3) [Mon is -4]: (0.75 + 0.125 + 0.5) / 3 per interval.
    assert tail["kwh"].to_numpy() == pytest.approx(np.full(72, (0.75 + 0.125 + 0.5) / 3))
    assert not has(tail, "scaled_to_register").any()
    # 18 h of consecutive estimates: below the 24 h limit.
    assert not has(out, "estimation_excess").any()


def test_like_day_skips_a_day_with_an_outage() -> None:
    # As above, but Wednesday had a power failure at 10:00: days with an outage are no like
    # days (California interval VEE working group; Itron IEE historical estimation), so the
    # three nearest are Thu (-1), Tue (-3), Mon (-4): (0.75 + 0.5 + 0.25) / 3 per interval.
    r = _days([24.0, 48.0, 12.0, 72.0, 96.0])
    wed_10 = T0 + pd.Timedelta(days=2, hours=10)
    r.loc[r["ts"] == wed_10, "voltage_l1_v"] = 0.0
    fri = T0 + pd.Timedelta(days=4)
    r = r[r["ts"] <= fri + pd.Timedelta(hours=6)]
    out = run(r, start=T0, end=T0 + pd.Timedelta(days=5))
    assert has(out, "outage").sum() >= 1
    tail = out[out["interval_start"] >= fri + pd.Timedelta(hours=6)]
    assert set(tail["method"]) == {"like_day_average"}
    assert tail["kwh"].to_numpy() == pytest.approx(np.full(72, (0.75 + 0.5 + 0.25) / 3))


@pytest.mark.parametrize(("missing_intervals", "excess"), [(96, False), (97, True)])
def test_estimation_excess_edge(missing_intervals: int, excess: bool) -> None:
    r = reads(np.full(200, 0.25))
    gone = (r.index > 2) & (r.index < 3 + missing_intervals - 1)
    r = r[~gone]  # reads 3..(1+missing) removed -> `missing_intervals` estimated in a row
    out = run(r)
    est = out["quality"] == "estimated"
    assert est.sum() == missing_intervals
    assert set(out.loc[est, "method"]) == {"register_prorate"}
    assert has(out, "estimation_excess").sum() == (missing_intervals if excess else 0)


def test_apply_edits_replaces_matching_intervals_only() -> None:
    out = run(reads([1.0, 1.0, 1.0]))
    edit = out.iloc[[1]].assign(kwh=7.5, quality="edited", method="manual_edit")
    merged = apply_edits(out, edit)
    assert list(merged["kwh"]) == [1.0, 7.5, 1.0]
    assert list(merged["quality"]) == ["actual", "edited", "actual"]
    assert list(out["kwh"]) == pytest.approx([1.0, 1.0, 1.0])  # input untouched


# ---------------------------------------------------------------------------- property


@settings(max_examples=60, deadline=None)
@given(
    increments=st.lists(st.floats(0.0, 2.0, allow_nan=False), min_size=2, max_size=150),
    ct=st.sampled_from([1.0, 5.0, 200.0]),
    drop=st.sets(st.integers(1, 149), max_size=60),
    offset_s=st.integers(0, 10),
)
def test_total_equals_register_delta_times_ct(
    increments: list[float], ct: float, drop: set[int], offset_s: int
) -> None:
    """With actual first and last reads, validated kWh sum to the register delta x ct_ratio."""
    r = reads(increments, e0=1234.5)
    last = len(r) - 1
    keep = [k for k in range(len(r)) if k in (0, last) or k not in drop]
    r = r.iloc[keep].reset_index(drop=True)
    # Interior reads may be a few seconds late (still within the alignment tolerance).
    late = r.index.isin(range(1, len(r) - 1))
    r.loc[late, "ts"] = r.loc[late, "ts"] + pd.Timedelta(seconds=offset_s)
    out = run(r, registry(ct_ratio=ct))
    assert (out["quality"] != "missing").all()
    delta = (r["energy_import_kwh"].iloc[-1] - r["energy_import_kwh"].iloc[0]) * ct
    assert out["kwh"].sum() == pytest.approx(delta, rel=1e-9, abs=1e-6)


def test_daylight_saving_day_of_25_hours_is_a_complete_like_day() -> None:
    # Europe/Berlin falls back on Sunday 2026-10-25: that local day has 100 intervals. Reads
    # stop on Saturday 2026-10-31 at 06:00 local; the only complete weekend day is Oct 25.
    t0 = pd.Timestamp("2026-10-24T22:00:00Z")  # local midnight
    end = pd.Timestamp("2026-11-01T23:00:00Z")  # Monday 00:00 local
    r = reads(np.full(int((end - t0) / Q), 0.25), start=t0)
    r = r[r["ts"] <= pd.Timestamp("2026-10-31T05:00:00Z")]
    v = validate(r, registry(), timezone="Europe/Berlin", start=t0, end=end)
    out = v.intervals
    tail = out[out["interval_start"] >= pd.Timestamp("2026-10-31T05:00:00Z")]
    assert len(tail) == 18 * 4 + 24 * 4
    assert set(tail["method"]) == {"like_day_average"}
    assert tail["kwh"].to_numpy() == pytest.approx(0.25)
    assert not has(out[out["quality"] == "actual"], "high_usage").any()


def test_last_interpolable_boundary_follows_the_interpolation_rule() -> None:
    """A read on a boundary, or reads around it at most 1.5 intervals apart; else earlier."""
    reads = pd.DataFrame(
        {
            "meter_id": ["A", "A", "A", "B", "B", "C", "C"],
            "ts": [
                T0 + 8 * Q,  # A: on a boundary, a 40 min gap, then two reads 15 min apart
                T0 + 8 * Q + pd.Timedelta(minutes=40),
                T0 + 8 * Q + pd.Timedelta(minutes=55),
                T0 + 7 * Q + pd.Timedelta(minutes=5),  # B: 20 min apart across 8Q
                T0 + 8 * Q + pd.Timedelta(minutes=10),
                T0 + 3 * Q + pd.Timedelta(minutes=1),  # C: never within the spacing
                T0 + 6 * Q,
            ],
            "energy_import_kwh": [1.0, 2.0, 3.0, 1.0, 2.0, 1.0, np.nan],
        }
    )
    got = last_interpolable_boundary(reads, T0 + 11 * Q)
    assert got.to_dict() == {"A": T0 + 11 * Q, "B": T0 + 8 * Q}  # C: its 6Q read has no value
    got = last_interpolable_boundary(reads, T0 + 10 * Q + pd.Timedelta(minutes=5))
    # A's 9Q and 10Q lie in its 40-minute gap (8Q to 10Q+10 min): back to its read on 8Q.
    assert got.to_dict() == {"A": T0 + 8 * Q, "B": T0 + 8 * Q}


def test_validation_in_chunks_of_meters_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """VEE judges a large window in chunks of meters (bounded memory): the validated intervals,
    events and counts are those of one pass, whatever the chunk size (one meter, a few, all),
    including the clock reference that the latest reads of all meters give."""
    from meterwatch.analytics import vee
    from meterwatch.analytics import window as window_mod
    from meterwatch.simulators.fleet import Injection
    from tests.support.fleets import DAY, T0, faulty_window, small_fleet

    fleet, readings, ids = small_fleet()
    t0, day = T0, DAY
    faults = [
        Injection("meter_stuck", ids[0], t0 + day, t0 + 2 * day),
        Injection("meter_runaway", ids[1], t0 + 1.5 * day, t0 + 1.6 * day),
        Injection("clock_error", ids[2], t0 + 2 * day, t0 + 4 * day),
        Injection("estimation_excess", ids[3], t0 + day, t0 + 2.5 * day),
        Injection("register_decrease", ids[4], t0 + 2.2 * day, t0 + 2.3 * day),
        Injection("duplicate_conflict", ids[5], t0 + 3 * day, t0 + 3.1 * day),
        Injection("off_grid", ids[6], t0 + 1 * day, t0 + 1.2 * day),
    ]
    # Without receipt times: the clock reference is the latest reads of all meters.
    w = faulty_window(fleet, readings, faults, drop=["collected_at"])

    def run(cells: int) -> vee.ValidatedReadings:
        monkeypatch.setattr(window_mod, "CHUNK_CELLS", cells)
        return vee.validate_window(w)

    one = run(10**9)
    n_int = one.dense.kwh.shape[1]
    assert one.counts["reason_clock_error"] > 0 and one.counts["reason_stuck_register"] > 0
    for cells in (1, 3 * n_int):
        got = run(cells)
        for f in ("ids", "bounds", "kwh", "quality", "method", "bits", "actual"):
            np.testing.assert_array_equal(getattr(got.dense, f), getattr(one.dense, f), f)
        pd.testing.assert_frame_equal(got.events, one.events)
        assert got.counts == one.counts
