"""analytics.incremental: VEE windows planned per meter so a gap is never cut and left missing."""

from __future__ import annotations

import pandas as pd

from meterwatch.analytics.config import VeeConfig
from meterwatch.analytics.incremental import IncrementalValidation

STEP = pd.Timedelta(minutes=15)


def registry(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "meter_id": ids,
            "role": "customer",
            "transformer_id": "T1",
            "customer_class": "residential",
            "phases": 1,
            "nominal_voltage_v": 230.0,
            "rated_current_a": 5.0,
            "max_current_a": 60.0,
            "ct_ratio": 1.0,
            "tariff": "",
            "last_calibration": "2025-06-01",
            "calibration_interval_days": 3650,
        }
    )


def reads(meter: str, times: pd.DatetimeIndex) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "meter_id": meter,
            "ts": times,
            "energy_import_kwh": 100.0 + 0.1 * pd.RangeIndex(len(times)),
        }
    )


def test_windows_end_where_each_meter_can_interpolate_and_resume_there() -> None:
    v = IncrementalValidation(VeeConfig(), every_s=6 * 3600)
    regular = pd.date_range("2026-01-05T06:00Z", "2026-01-05T13:00Z", freq="15min")
    skipped = (regular >= "2026-01-05T10:45Z") & (regular <= "2026-01-05T11:00Z")
    b_times = pd.DatetimeIndex(sorted([*regular[~skipped], pd.Timestamp("2026-01-05T11:10Z")]))
    a, b = reads("A", regular), reads("B", b_times)
    now = pd.Timestamp("2026-01-05T11:45Z")
    first = pd.concat([a[a["ts"] <= "2026-01-05T11:10Z"], b[b["ts"] <= "2026-01-05T11:10Z"]])
    reg = registry(["A", "B"])
    assert v.read_since(now) == now - pd.Timedelta(hours=6) - pd.Timedelta(days=28)

    plan = v.plan(first, pd.Index(reg["meter_id"]), now)
    assert plan is not None
    # B's reads around 10:45-11:00 are 40 min apart (> 1.5 intervals): its window ends at
    # 10:30, its last boundary with a read; A's at 11:00.
    assert plan.ends["B"] == pd.Timestamp("2026-01-05T10:30Z")
    assert plan.ends["A"] == pd.Timestamp("2026-01-05T11:00Z")
    iv = v.validate(plan, first, reg, now)
    assert (iv["quality"] != "missing").all()
    last = iv.groupby("meter_id")["interval_start"].max()
    assert last["B"] == pd.Timestamp("2026-01-05T10:15Z") and last["A"] == pd.Timestamp(
        "2026-01-05T10:45Z"
    )

    v.commit(plan)
    assert v.read_since(now) == plan.ends.min() - pd.Timedelta(days=28)
    later = pd.Timestamp("2026-01-05T13:00Z")
    plan2 = v.plan(pd.concat([a, b]), pd.Index(reg["meter_id"]), later)
    assert plan2 is not None
    iv2 = v.validate(plan2, pd.concat([a, b]), reg, later)
    # The second run starts where the first ended, per meter: no overlap, no hole.
    first_new = iv2.groupby("meter_id")["interval_start"].min()
    assert first_new["B"] == pd.Timestamp("2026-01-05T10:30Z")
    assert first_new["A"] == pd.Timestamp("2026-01-05T11:00Z")
    assert (
        iv2[iv2["meter_id"] == "B"]["interval_start"] == pd.Timestamp("2026-01-05T10:45Z")
    ).any()


def test_nothing_to_plan_without_new_complete_intervals() -> None:
    v = IncrementalValidation(VeeConfig(), every_s=3600)
    reg = registry(["A"])
    assert (
        v.plan(reads("A", pd.DatetimeIndex([])), pd.Index(["A"]), pd.Timestamp("2026-01-05T12:00Z"))
        is None
    )
    old = reads("A", pd.date_range("2026-01-01T00:00Z", periods=8, freq="15min"))
    # Every boundary is older than one validation period: nothing is due.
    assert v.plan(old, pd.Index(reg["meter_id"]), pd.Timestamp("2026-01-05T12:00Z")) is None
