"""Consumption drop / zero and theft analytics at the edges of their thresholds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from analytics.consumption import (
    ConsumptionDrop,
    ZeroConsumption,
    cusum_drop,
    daily_energy,
    run_lengths,
)
from meterwatch.registry import check_registry
from meterwatch.schema import readings_from_records

T0 = pd.Timestamp("2026-01-05T00:00:00Z")  # a Monday
WEEK = 168


def registry(**meters: dict[str, Any]) -> pd.DataFrame:
    base = {
        "role": "customer",
        "transformer_id": "T1",
        "customer_class": "residential",
        "phases": 1,
        "nominal_voltage_v": 220.0,
        "rated_current_a": 5.0,
        "max_current_a": 60.0,
        "ct_ratio": 1.0,
        "tariff": "x",
        "last_calibration": "2025-06-01",
        "calibration_interval_days": 3650,
    }
    return check_registry(pd.DataFrame([{**base, "meter_id": m, **o} for m, o in meters.items()]))


def hourly(meter: str, use: np.ndarray, voltage: np.ndarray | None = None) -> pd.DataFrame:
    """Hourly readings whose register grows by ``use[h]`` in hour ``h`` [kWh]."""
    e = np.r_[0.0, np.cumsum(use)] + 100.0
    v = np.full(e.size, 220.0) if voltage is None else voltage
    return readings_from_records(
        [
            {
                "meter_id": meter,
                "ts": T0 + pd.Timedelta(hours=h),
                "energy_import_kwh": e[h],
                "voltage_l1_v": v[h],
                "current_l1_a": 1.0,
            }
            for h in range(e.size)
        ]
    )


def usual(weeks: int = 3) -> np.ndarray:
    """A weekly pattern: 1 kWh/h on weekdays, 0.4 kWh/h on weekends [kWh per hour]."""
    h = np.arange(weeks * WEEK)
    return np.where((h // 24) % 7 >= 5, 0.4, 1.0)


REG = registry(M={})


@pytest.mark.parametrize(
    ("level", "hours", "flagged"),
    [
        (0.49, 6, True),  # below 50 % for 6 h
        (0.5, 6, False),  # exactly 50 %: not strictly below
        (0.49, 5, False),  # too short
        (0.0, 23, True),  # zero for 23 h: a drop (not yet zero_consumption)
    ],
)
def test_consumption_drop_edges(level: float, hours: int, flagged: bool) -> None:
    use = usual()
    start = 2 * WEEK + 10  # a Wednesday, hour 10: weekday baseline 1 kWh
    use[start : start + hours] = level
    found = ConsumptionDrop().detect(hourly("M", use), REG)
    assert (len(found) == 1) is flagged
    if flagged:
        assert found["starts_at"].iat[0] == T0 + pd.Timedelta(hours=start)
        assert found["evidence"].iat[0]["hours"] == hours


def test_weekend_is_not_a_drop_with_hour_of_week_baseline() -> None:
    assert ConsumptionDrop().detect(hourly("M", usual()), REG).empty


def test_drop_needs_min_history_weeks() -> None:
    use = usual()
    use[WEEK + 10 : WEEK + 30] = 0.1  # second week: only one week of history
    assert ConsumptionDrop().detect(hourly("M", use), REG).empty
    assert len(ConsumptionDrop(min_history_weeks=1).detect(hourly("M", use), REG)) == 1


def test_drop_absolute_floor() -> None:
    use = usual() * 0.1  # 0.1 kWh/h usual: a drop to 0.04 is only 0.06 kWh
    use[2 * WEEK + 10 : 2 * WEEK + 20] = 0.04
    assert ConsumptionDrop().detect(hourly("M", use), REG).empty
    assert len(ConsumptionDrop(min_deficit_kwh=0.05).detect(hourly("M", use), REG)) == 1


@pytest.mark.parametrize(("hours", "flagged"), [(24, True), (23, False)])
def test_zero_consumption_edges(hours: int, flagged: bool) -> None:
    use = usual(2)
    use[200 : 200 + hours] = 0.0
    found = ZeroConsumption().detect(hourly("M", use), REG)
    assert (len(found) == 1) is flagged
    # One cause, one alert: a day of zeros is not also a consumption drop.
    if flagged:
        use3 = np.r_[usual(2), usual(1)]
        use3[2 * WEEK + 5 : 2 * WEEK + 5 + hours] = 0.0
        r = hourly("M", use3)
        assert len(ZeroConsumption().detect(r, REG)) == 1
        assert ConsumptionDrop().detect(r, REG).empty


def test_zero_consumption_ignores_outages_and_supply_meters() -> None:
    reg = registry(A={}, B={})
    use = usual(2)
    use[200:230] = 0.0
    v = np.full(use.size + 1, 220.0)
    v[200:232] = 0.0  # both customers of the area without voltage: an outage
    both = pd.concat([hourly("A", use, v), hourly("B", use, v)], ignore_index=True)
    assert ZeroConsumption().detect(both, reg).empty
    supply = registry(A={"role": "transformer", "customer_class": ""})
    assert ZeroConsumption().detect(hourly("A", use), supply).empty


def test_run_lengths_and_daily_energy() -> None:
    mask = np.array([[True, True, False, True], [False, True, True, True]])
    np.testing.assert_array_equal(run_lengths(mask), [[2, 2, 0, 1], [0, 3, 3, 3]])
    hours = pd.date_range("2026-01-05T12:00Z", periods=48, freq="h")
    kwh = np.ones((1, 48))
    kwh[0, 20] = np.nan
    total, days = daily_energy(kwh, hours)
    assert list(days.strftime("%d")) == ["05", "06", "07"]
    assert np.isnan(total[0, 0])  # only 12 h of the first day
    assert np.isnan(total[0, 1])  # a missing hour on the second day
    assert np.isnan(total[0, 2])


def test_cusum_drop_accumulates_sustained_shifts_only() -> None:
    z = np.array([[0.0, -2.0, -2.0, 1.0, 0.0], [-0.5, -0.5, -0.5, -0.5, np.nan]])
    s = cusum_drop(z, k=0.5)
    np.testing.assert_allclose(s[0], [0.0, 1.5, 3.0, 1.5, 1.0])
    np.testing.assert_allclose(s[1], [0.0, 0.0, 0.0, 0.0, 0.0])
