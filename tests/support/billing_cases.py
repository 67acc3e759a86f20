"""Meters with billing errors for the detector contract test (tests/test_detector_contract.py).

B1 (1-phase, direct): 15-minute reads at a steady 1 kW; the register sticks for 5 h while
current flows (meter_stuck, energy_power_mismatch), jumps 20 kWh in one interval
(meter_runaway) and its last read is 1 h after every other meter's (clock_error) (clock_error).
B2 (3-phase, CT 50): reports power on the primary side (multiplier_mismatch) and stops
reporting after two days (estimation_excess).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from meterwatch.core.registry import check_registry
from meterwatch.core.schema import readings_from_records

STEP = pd.Timedelta(minutes=15)


def billing_fault_meters() -> pd.DataFrame:
    common = {
        "role": "customer",
        "transformer_id": "T1",
        "customer_class": "commercial",
        "nominal_voltage_v": 220.0,
        "tariff": "res",
        "last_calibration": "2025-06-01",
        "calibration_interval_days": 3650,
    }
    rows = [
        {
            "meter_id": "B1",
            "phases": 1,
            "rated_current_a": 5.0,
            "max_current_a": 60.0,
            "ct_ratio": 1.0,
        },
        {
            "meter_id": "B2",
            "phases": 3,
            "rated_current_a": 1.5,
            "max_current_a": 6.0,
            "ct_ratio": 50.0,
        },
    ]
    return check_registry(pd.DataFrame([{**common, **r} for r in rows]))


def billing_fault_readings(start: pd.Timestamp, hours: int) -> pd.DataFrame:
    """Readings of B1 and B2 from ``start``; B1 runs to ``start + hours`` plus one hour."""
    n4 = hours * 4 + 5  # one hour past the other meters
    inc = np.full(n4, 0.25)
    inc[0] = 0.0
    stuck = np.arange(n4)
    inc[(stuck > 96 + 8) & (stuck <= 96 + 28)] = 0.0  # day 2, 02:00-07:00
    inc[2 * 96 + 49] = 20.0  # day 3, 12:00-12:15
    e4 = 100.0 + np.cumsum(inc)
    t4 = [start + k * STEP for k in range(n4)]
    records = [
        {
            "meter_id": "B1",
            "ts": t,
            "energy_import_kwh": e,
            "power_kw": 1.0,
            "voltage_l1_v": 222.0,
            "current_l1_a": 4.5,
        }
        for t, e in zip(t4, e4, strict=True)
    ]
    n5 = 2 * 96 + 1
    for k in range(n5):
        records.append(
            {
                "meter_id": "B2",
                "ts": start + k * STEP,
                "energy_import_kwh": 500.0 + 0.2 * k,
                "power_kw": 40.0,  # primary side: 0.8 kW secondary x 50
                "voltage_l1_v": 220.0,
                "voltage_l2_v": 221.0,
                "voltage_l3_v": 219.0,
                "current_l1_a": 1.2,
                "current_l2_a": 1.2,
                "current_l3_a": 1.2,
            }
        )
    return readings_from_records(records)
