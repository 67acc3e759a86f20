"""Hysteresis: a quantity hovering at a threshold gives at most one alert per meter per day.

For every threshold rule, three days of 15-minute readings put the judged quantity on its
threshold plus noise, so the condition starts and stops many times a day. Episodes of a meter
less than ``merge_hours`` apart are one finding (and so one alert); with merging off the same
data give many.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from meterwatch.alerts.manager import AlertManager
from meterwatch.analytics.base import Detector
from meterwatch.analytics.detectors.equipment import (
    CurrentLoss,
    CurrentUnbalance,
    FrequencyDeviation,
    LowPowerFactor,
    Overvoltage,
    ReversePower,
    TransformerOverload,
    Undervoltage,
    VoltageUnbalance,
)
from meterwatch.analytics.detectors.rules import PhaseBreak, VoltageLoss
from meterwatch.core.schema import readings_from_records
from tests.unit.test_equipment import BASE3, IB, T0, UN, registry

DAYS = 3
N = DAYS * 96
RNG = np.random.default_rng(5)


def noise(sd: float) -> np.ndarray:
    return RNG.normal(0.0, sd, N)


# rule -> (detector class, per-reading changes around its threshold, registry overrides)
CASES: dict[
    str, tuple[type[Detector], Callable[[int, np.ndarray], dict[str, Any]], dict[str, Any]]
] = {
    "voltage_loss": (
        VoltageLoss,
        lambda k, z: {"voltage_l2_v": 0.78 * UN + 2.0 * z[k]},
        {},
    ),
    "phase_break": (
        PhaseBreak,
        lambda k, z: {"voltage_l2_v": 0.60 * UN + 2.0 * z[k], "current_l2_a": 0.0},
        {},
    ),
    "current_loss": (
        CurrentLoss,
        lambda k, z: {"current_l2_a": max(0.005 * IB + 0.01 * z[k], 0.0)},
        {},
    ),
    "overvoltage": (Overvoltage, lambda k, z: {"voltage_l3_v": 1.07 * UN + 1.0 * z[k]}, {}),
    "undervoltage": (Undervoltage, lambda k, z: {"voltage_l3_v": 0.93 * UN + 1.0 * z[k]}, {}),
    "voltage_unbalance": (
        VoltageUnbalance,
        lambda k, z: {"voltage_l1_v": UN + 4.4 + 0.5 * z[k], "voltage_l3_v": UN - 4.4 - 0.5 * z[k]},
        {},
    ),
    "current_unbalance": (
        CurrentUnbalance,
        lambda k, z: {"current_l1_a": 2.6 + 0.05 * z[k], "current_l3_a": 1.4 - 0.05 * z[k]},
        {},
    ),
    "reverse_power": (
        ReversePower,
        lambda k, z: {"power_kw": -0.0165 + 0.003 * z[k]},
        {},
    ),
    "low_power_factor": (
        LowPowerFactor,
        lambda k, z: {"power_factor": 0.85 + 0.02 * z[k]},
        {},
    ),
    "frequency_deviation": (
        FrequencyDeviation,
        lambda k, z: {"frequency_hz": 50.2 + 0.02 * z[k]},
        {},
    ),
    "transformer_overload": (
        TransformerOverload,
        lambda k, z: {"power_kw": 100.0 + 5.0 * z[k], "reactive_power_kvar": 0.0},
        {"role": "transformer", "customer_class": "", "rated_kva": 100.0},
    ),
}


def hovering(rule: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    _, change, reg = CASES[rule]
    z = noise(1.0)
    rows = [
        {"meter_id": "M", "ts": T0 + k * pd.Timedelta("15min"), **BASE3, **change(k, z)}
        for k in range(N)
    ]
    return readings_from_records(rows), registry(M=reg)


@pytest.mark.parametrize("rule", sorted(CASES))
def test_a_quantity_hovering_at_the_threshold_gives_at_most_one_finding_a_day(rule: str) -> None:
    cls = CASES[rule][0]
    readings, reg = hovering(rule)
    unmerged = cls(merge_hours=0).detect(readings, reg)  # type: ignore[call-arg]
    merged = cls().detect(readings, reg)
    # The noise really makes the condition flap ...
    assert len(unmerged) > DAYS, f"{rule}: the test data should cross the threshold often"
    # ... yet the rule reports at most one episode per meter per day.
    assert 1 <= len(merged) <= DAYS
    per_day = merged["starts_at"].dt.floor("D").value_counts()
    assert (per_day <= 1).all()


@pytest.mark.parametrize("rule", ["low_power_factor", "voltage_loss"])
def test_hovering_opens_at_most_one_alert_per_day(rule: str, tmp_path: Any) -> None:
    """Through the alert manager as the service runs it: one finding per analytics run over
    the growing window, and the feed holds at most one alert per meter per day."""
    cls = CASES[rule][0]
    readings, reg = hovering(rule)
    am = AlertManager(tmp_path / "alerts.jsonl", flap_hold_s=0.0)
    det = cls()
    for hours in range(6, DAYS * 24 + 1, 6):  # an analytics run every 6 h
        end = T0 + pd.Timedelta(hours=hours)
        part = readings[readings["ts"] <= end]
        am.process(det.detect(part, reg), end.to_pydatetime())
    opened = [a for a in am.alerts.values() if a.type == rule]
    assert 1 <= len(opened) <= DAYS
