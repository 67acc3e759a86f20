"""Two three-phase commercial meters and their 15-minute readings, for streaming and service tests."""

from __future__ import annotations

from typing import Any

import pandas as pd

#: Registry of C1 and C2: three-phase, 220 V, Ib 10 A, area T1.
METERS = pd.DataFrame(
    {
        "meter_id": ["C1", "C2"],
        "role": ["customer"] * 2,
        "transformer_id": ["T1"] * 2,
        "customer_class": ["commercial"] * 2,
        "phases": [3, 3],
        "nominal_voltage_v": [220.0] * 2,
        "rated_current_a": [10.0] * 2,
        "max_current_a": [60.0] * 2,
        "ct_ratio": [1.0] * 2,
        "tariff": [""] * 2,
        "last_calibration": ["2025-06-01"] * 2,
        "calibration_interval_days": [3650] * 2,
    }
)
T0 = pd.Timestamp("2026-02-02T08:00:00Z")


def reading(meter: str, i: int, u3: float = 221.0, *, kwh: float | None = None) -> dict[str, Any]:
    """The ``i``-th reading (every 15 min from T0): 4 kW, 6 A per phase, L3 at ``u3`` [V]
    (below ~216 V the phases are unbalanced by more than 2 %); import register ``kwh``, by
    default rising 1 kWh per reading from 100 kWh."""
    return {
        "meter_id": meter,
        "ts": T0 + pd.Timedelta(minutes=15 * i),
        "energy_import_kwh": 100.0 + i if kwh is None else kwh,
        "power_kw": 4.0,
        "voltage_l1_v": 221.0,
        "voltage_l2_v": 220.0,
        "voltage_l3_v": u3,
        "current_l1_a": 6.0,
        "current_l2_a": 6.0,
        "current_l3_a": 6.0,
        "power_factor": 0.95,
        "frequency_hz": 50.0,
    }
