"""One contract test run over every detector of the default suite."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pandas as pd
import pytest

from analytics.base import Detector
from analytics.suite import default_detectors
from meterwatch.registry import check_registry
from meterwatch.schema import (
    ALERT_CATEGORIES,
    FINDING_COLUMNS,
    SEVERITIES,
    empty_findings,
    empty_readings,
    readings_from_records,
)

START = pd.Timestamp("2026-01-01T00:00:00Z")
HOURS = 8 * 24


def _registry() -> pd.DataFrame:
    common = {
        "role": "customer",
        "transformer_id": "T1",
        "customer_class": "residential",
        "rated_current_a": 5.0,
        "max_current_a": 60.0,
        "tariff": "res",
        "last_calibration": "2025-06-01",
        "calibration_interval_days": 3650,
    }
    rows = [
        {"meter_id": "M1", "phases": 1, "nominal_voltage_v": 220.0, "ct_ratio": 1.0},
        {"meter_id": "M2", "phases": 1, "nominal_voltage_v": 230.0, "ct_ratio": 1.0},
        {
            "meter_id": "M3",
            "phases": 3,
            "nominal_voltage_v": 220.0,
            "ct_ratio": 50.0,
            "transformer_id": "T2",
            "customer_class": "industrial",
        },
    ]
    return check_registry(pd.DataFrame([{**common, **r} for r in rows]))


def _fleet() -> pd.DataFrame:
    """8 days of hourly readings in which every default detector has something to find.

    M1 (1-phase): flat 1 kWh/h, a 4 kWh hour on the last evening, voltage loss for 2 h.
    M2 (1-phase): flat 0.5 kWh/h, register steps back 3 kWh once.
    M3 (3-phase, CT 50): L3 broken for 3 h while L1/L2 are live.
    X9: not in the registry, with every fault at once (must be ignored).
    """
    records = []
    t = [START + pd.Timedelta(hours=h) for h in range(HOURS + 1)]
    e1 = np.r_[0.0, np.cumsum(np.where(np.arange(HOURS) == HOURS - 5, 4.0, 1.0))] + 1000
    e2 = np.r_[0.0, np.cumsum(np.full(HOURS, 0.5))] + 20
    e2[100:] -= 3.0
    e3 = np.r_[0.0, np.cumsum(np.full(HOURS, 0.2))] + 500
    for h in range(HOURS + 1):
        loss = h in (50, 51)
        records.append(
            {
                "meter_id": "M1",
                "ts": t[h],
                "energy_import_kwh": e1[h],
                "voltage_l1_v": 120.0 if loss else 221.0,
                "current_l1_a": 3.0,
            }
        )
        records.append(
            {
                "meter_id": "M2",
                "ts": t[h],
                "energy_import_kwh": e2[h],
                "voltage_l1_v": 229.0,
                "current_l1_a": 2.0,
            }
        )
        broken = 70 <= h < 73
        records.append(
            {
                "meter_id": "M3",
                "ts": t[h],
                "energy_import_kwh": e3[h],
                "voltage_l1_v": 222.0,
                "voltage_l2_v": 219.0,
                "voltage_l3_v": 2.0 if broken else 220.0,
                "current_l1_a": 1.0,
                "current_l2_a": 1.0,
                "current_l3_a": 0.0 if broken else 1.0,
            }
        )
        records.append(
            {
                "meter_id": "X9",
                "ts": t[h],
                "energy_import_kwh": 1e6 - 50 * h + (500 if h == 120 else 0),
                "voltage_l1_v": 0.0,
                "voltage_l2_v": 230.0,
                "voltage_l3_v": 100.0,
                "current_l1_a": 0.0,
                "current_l2_a": 5.0,
                "current_l3_a": 5.0,
            }
        )
    return readings_from_records(records)


FLEET = _fleet()
REGISTRY = _registry()


@pytest.mark.parametrize("detector", default_detectors(), ids=lambda d: type(d).__name__)
def test_detector_contract(detector: Detector) -> None:
    cls = type(detector)

    # Parameters: same-named attributes, defaults from __init__, round trip.
    params = detector.get_params()
    sig = inspect.signature(cls.__init__)
    assert params == {n: p.default for n, p in sig.parameters.items() if n != "self"}
    assert cls(**params).get_params() == params
    assert not [a for a in vars(detector) if a.endswith("_")], "unfitted detector has state"
    assert detector.fit(FLEET, REGISTRY) is detector

    # Alert types belong to the catalogue.
    assert detector.alert_types
    assert set(detector.alert_types) <= set(ALERT_CATEGORIES)

    # Empty input -> the empty findings frame.
    empty = detector.detect(empty_readings(), REGISTRY)
    assert list(empty.columns) == list(FINDING_COLUMNS)
    assert empty.empty
    assert empty.dtypes.equals(empty_findings().dtypes)

    # Readings and registry are not modified.
    fleet_before, registry_before = FLEET.copy(), REGISTRY.copy()
    found = detector.detect(FLEET, REGISTRY)
    pd.testing.assert_frame_equal(FLEET, fleet_before)
    pd.testing.assert_frame_equal(REGISTRY, registry_before)

    # Shape and content of the findings.
    assert len(found) > 0, "the fleet scenario holds a case for every detector"
    assert list(found.columns) == list(FINDING_COLUMNS)
    assert found.dtypes.equals(empty_findings().dtypes)
    assert set(found["type"]) <= set(detector.alert_types)
    assert set(found["severity"]) <= set(SEVERITIES)
    assert set(found["meter_id"]) <= set(REGISTRY["meter_id"]), "unknown meter X9 reported"
    expected_area = REGISTRY.set_index("meter_id")["transformer_id"]
    assert (found["transformer_id"].to_numpy() == expected_area[found["meter_id"]].to_numpy()).all()
    ended = found["ends_at"].notna()
    assert (found.loc[ended, "starts_at"] <= found.loc[ended, "ends_at"]).all()
    for summary, evidence in zip(found["summary"], found["evidence"], strict=True):
        assert isinstance(summary, str) and summary.strip()
        assert isinstance(evidence, dict) and "rule" in evidence
        json.dumps(evidence, allow_nan=False)

    # Unknown meters are ignored; row order does not matter.
    registered = FLEET[FLEET["meter_id"].isin(REGISTRY["meter_id"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(detector.detect(registered, REGISTRY), found)
    shuffled = FLEET.sample(frac=1.0, random_state=7).reset_index(drop=True)
    pd.testing.assert_frame_equal(detector.detect(shuffled, REGISTRY), found)
    as_text = FLEET.assign(ts=FLEET["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    pd.testing.assert_frame_equal(detector.detect(as_text, REGISTRY), found)
    reversed_registry = REGISTRY.iloc[::-1].reset_index(drop=True)
    pd.testing.assert_frame_equal(detector.detect(FLEET, reversed_registry), found)
