"""One contract test run over every detector of the default suite."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pandas as pd
import pytest

from meterwatch.analytics.base import Detector
from meterwatch.analytics.suite import default_detectors, run_detectors
from meterwatch.analytics.window import build_window
from meterwatch.core.catalogue import ALERT_CATEGORIES, SEVERITIES
from meterwatch.core.registry import check_registry
from meterwatch.core.schema import (
    FINDING_COLUMNS,
    empty_findings,
    empty_readings,
    readings_from_records,
)
from tests.support.billing_cases import billing_fault_meters, billing_fault_readings

START = pd.Timestamp("2026-01-01T00:00:00Z")
HOURS = 22 * 24


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
        {
            "meter_id": "M4",
            "phases": 3,
            "nominal_voltage_v": 220.0,
            "ct_ratio": 1.0,
            "customer_class": "commercial",
        },
        {"meter_id": "M5", "phases": 1, "nominal_voltage_v": 220.0, "ct_ratio": 1.0},
        {
            "meter_id": "TS3",
            "role": "transformer",
            "phases": 3,
            "nominal_voltage_v": 220.0,
            "ct_ratio": 100.0,
            "transformer_id": "T3",
            "customer_class": "",
            "rated_kva": 100.0,
        },
    ]
    # Data-quality cases (analytics/detectors/data_quality.py), 1-phase like M2.
    for m in ("M6", "M7", "M8"):
        rows.append({"meter_id": m, "phases": 1, "nominal_voltage_v": 220.0, "ct_ratio": 1.0})
    reg = pd.DataFrame([{**common, **r} for r in rows])
    # M2 was calibrated 2025-06-01 every 200 days: due 2025-12-18, before the window.
    reg.loc[reg["meter_id"] == "M2", "calibration_interval_days"] = 200
    return check_registry(reg)


def _fleet() -> pd.DataFrame:
    """22 days of hourly readings in which every default detector has something to find.

    M1 (1-phase): flat 1 kWh/h, two 4 kWh hours on the last evening, voltage loss for 2 h.
    M2 (1-phase): flat 0.5 kWh/h, register steps back 3 kWh once.
    M3 (3-phase, CT 50): L3 broken for 3 h while L1/L2 are live.
    M4 (3-phase commercial): one case per equipment rule at its own hours -- current loss,
    overvoltage, undervoltage, voltage and current unbalance, reverse power, low power
    factor, frequency deviation.
    M5 (1-phase): about 0.8 kWh/h with a daily shape; 30 h without any consumption, and
    10 h at an eighth of its usual near the end.
    TS3 (supply meter of area T3, CT 100, 100 kVA): outage for 2 h, overload for 5 h.
    M6 (1-phase): no readings for 6 h, an exact and a conflicting duplicate, a day of
    readings 7 minutes off its grid. M7: silent for the last 20 h. M8: one value "err".
    X9: not in the registry, with every fault at once (must be ignored).
    """
    records = []
    t = [START + pd.Timedelta(hours=h) for h in range(HOURS + 1)]
    e1 = np.r_[
        0.0, np.cumsum(np.where(np.isin(np.arange(HOURS), (HOURS - 5, HOURS - 4)), 4.0, 1.0))
    ]
    e1 += 1000
    e2 = np.r_[0.0, np.cumsum(np.full(HOURS, 0.5))] + 20
    e2[100:] -= 3.0
    e3 = np.r_[0.0, np.cumsum(np.full(HOURS, 0.2))] + 500
    hod = np.arange(HOURS) % 24
    use5 = 0.8 + 0.3 * np.sin(2 * np.pi * hod / 24)
    use5[HOURS - 130 : HOURS - 100] = 0.0
    use5[HOURS - 30 : HOURS - 20] /= 8
    e5 = np.r_[0.0, np.cumsum(use5)] + 700
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
        u4 = [221.0, 220.0, 219.0]
        i4 = [2.0, 2.0, 2.0]
        p4, pf4, f4 = 1.254, 0.95, 50.0
        if h in (30, 31):
            i4 = [2.0, 0.0, 2.0]  # current loss on L2
        elif h in (40, 41):
            u4 = [240.0, 230.0, 230.0]  # overvoltage on L1
        elif h in (45, 46):
            u4 = [200.0, 215.0, 215.0]  # undervoltage on L1
        elif 60 <= h < 65:
            u4 = [228.0, 220.0, 212.0]  # voltage unbalance 3.6 %
        elif 80 <= h < 85:
            i4 = [3.0, 1.0, 1.0]  # current unbalance 80 %
        elif h in (90, 91):
            p4 = -1.0  # reverse power
        elif 100 <= h < 105:
            pf4 = 0.8  # low power factor
        elif h in (110, 111):
            f4 = 50.5  # frequency deviation
        records.append(
            {
                "meter_id": "M4",
                "ts": t[h],
                "energy_import_kwh": 300 + 1.25 * h,
                "power_kw": p4,
                "power_factor": pf4,
                "frequency_hz": f4,
                **{f"voltage_l{k + 1}_v": u4[k] for k in range(3)},
                **{f"current_l{k + 1}_a": i4[k] for k in range(3)},
            }
        )
        records.append(
            {
                "meter_id": "M5",
                "ts": t[h],
                "energy_import_kwh": e5[h],
                "voltage_l1_v": 220.0,
                "current_l1_a": 2.0,
            }
        )
        out = h in (120, 121)
        s_kw = 1.5 if 130 <= h < 135 else 0.3  # secondary: x CT 100 -> 150 kW vs 100 kVA
        records.append(
            {
                "meter_id": "TS3",
                "ts": t[h],
                "energy_import_kwh": 5000 + 0.3 * h,
                "power_kw": 0.0 if out else s_kw,
                "reactive_power_kvar": 0.0,
                "power_factor": 0.95,
                **{f"voltage_l{k + 1}_v": 0.0 if out else 220.0 for k in range(3)},
                **{f"current_l{k + 1}_a": 0.0 if out else 1.0 for k in range(3)},
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
    for h in range(HOURS + 1):
        base = {"energy_import_kwh": 900 + 0.5 * h, "voltage_l1_v": 225.0, "current_l1_a": 1.0}
        if not 200 <= h < 206:  # a 6 h gap
            shift = pd.Timedelta(minutes=7) if 400 <= h < 424 else pd.Timedelta(0)
            records.append({"meter_id": "M6", "ts": t[h] + shift, **base})
        if h == 300:
            records.append({"meter_id": "M6", "ts": t[h], **base})  # exact repeat
        if h == 301:
            records.append({"meter_id": "M6", "ts": t[h], **base, "energy_import_kwh": 1.0})
        if h <= HOURS - 20:
            records.append({"meter_id": "M7", "ts": t[h], **base})
        records.append({"meter_id": "M8", "ts": t[h], **base})
    return readings_from_records(records)


# B1, B2: billing-error cases for analytics/billing_rules.py (tests/billing_cases.py).
FLEET = pd.concat([_fleet(), billing_fault_readings(START, HOURS)], ignore_index=True)
# M8's voltage at hour 150 as a file may hold it: not a number.
FLEET["voltage_l1_v"] = FLEET["voltage_l1_v"].astype(object)
FLEET.loc[
    (FLEET["meter_id"] == "M8") & (FLEET["ts"] == START + pd.Timedelta(hours=150)), "voltage_l1_v"
] = "err"
REGISTRY = pd.concat([_registry(), billing_fault_meters()], ignore_index=True)


@pytest.mark.parametrize("detector", default_detectors(), ids=lambda d: type(d).__name__)
def test_detector_contract(detector: Detector) -> None:
    cls = type(detector)

    # Parameters: same-named attributes, defaults from __init__, round trip.
    params = detector.get_params()
    sig = inspect.signature(cls.__init__)
    assert params == {n: p.default for n, p in sig.parameters.items() if n != "self"}
    assert cls(**params).get_params() == params
    assert not [a for a in vars(detector) if a.endswith("_")], "unfitted detector has state"
    # fit returns the detector; what it learns lives in attributes ending in "_" (a clone
    # is fitted: fitted on the judged window itself, a baseline would absorb its anomalies).
    clone = cls(**params)
    assert clone.fit(FLEET, REGISTRY) is clone
    assert set(vars(clone)) - set(vars(detector)) == {a for a in vars(clone) if a.endswith("_")}

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
    per_meter = found[found["meter_id"].notna()]
    assert set(per_meter["meter_id"]) <= set(REGISTRY["meter_id"]), "unknown meter X9 reported"
    expected_area = REGISTRY.set_index("meter_id")["transformer_id"]
    assert (
        per_meter["transformer_id"].to_numpy() == expected_area[per_meter["meter_id"]].to_numpy()
    ).all()
    # A transformer-level finding (no meter id) names an area of the registry.
    assert set(found["transformer_id"]) <= set(REGISTRY["transformer_id"])
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


def test_one_shared_window_gives_the_same_findings_as_separate_runs() -> None:
    """The suite builds one window for every detector (derived arrays are shared through
    Window.memo); nothing may leak between detectors: each one's findings equal a lone run's,
    in any order of the detectors, and the input frame is not modified."""
    detectors = default_detectors()
    alone = [d.detect(FLEET, REGISTRY) for d in detectors]
    fleet_before = FLEET.copy()
    for order in (detectors, detectors[::-1]):
        w = build_window(FLEET, REGISTRY)
        shared = {id(d): d.detect_window(w) for d in order}
        for d, expected in zip(detectors, alone, strict=True):
            pd.testing.assert_frame_equal(shared[id(d)], expected)
    pd.testing.assert_frame_equal(FLEET, fleet_before)
    suite = run_detectors(detectors, FLEET, REGISTRY)
    expected_all = pd.concat([f for f in alone if len(f)], ignore_index=True)
    pd.testing.assert_frame_equal(suite, expected_all[list(FINDING_COLUMNS)], check_dtype=False)


def test_window_memo_computes_once_and_shares_read_only() -> None:
    w = build_window(FLEET, REGISTRY)
    calls: list[int] = []
    first = w.memo("k", lambda: calls.append(1) or np.arange(3))
    again = w.memo("k", lambda: calls.append(1) or np.arange(3))
    assert first is again and calls == [1]
    with pytest.raises(ValueError):
        first[0] = 5  # shared between rules: an in-place change must fail, not leak


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 6), (1, 1), (4, 0)])
def test_nanmedian_equals_numpy(shape: tuple[int, ...]) -> None:
    import warnings

    from meterwatch.analytics.base import nanmedian

    rng = np.random.default_rng(sum(shape))
    a = rng.normal(size=shape)
    a[rng.random(shape) < 0.4] = np.nan
    if a.size:
        a[0] = np.nan  # an all-NaN slice along the last axis
    for axis in range(len(shape)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanmedian(a, axis=axis, keepdims=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # ours warns about nothing
            got = nanmedian(a, axis=axis, keepdims=True)
        np.testing.assert_allclose(got, expected, equal_nan=True)
        np.testing.assert_allclose(nanmedian(a, axis=axis), expected.squeeze(axis), equal_nan=True)
