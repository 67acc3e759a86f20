"""Equipment rules at the edges of their thresholds, on tiny hand-built frames."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from meterwatch.analytics.base import Detector
from meterwatch.analytics.detectors.equipment import (
    CalibrationDue,
    CurrentLoss,
    CurrentUnbalance,
    FrequencyDeviation,
    LowPowerFactor,
    Outage,
    Overvoltage,
    ReversePower,
    TransformerOverload,
    Undervoltage,
    VoltageUnbalance,
    unbalance,
)
from meterwatch.analytics.suite import default_detectors, run_detectors
from meterwatch.core.registry import check_registry
from meterwatch.core.schema import readings_from_records

T0 = pd.Timestamp("2026-01-05T06:00:00Z")
UN, IB = 220.0, 5.0
STEP = pd.Timedelta("15min")

BASE3 = {
    **{f"voltage_l{k}_v": UN for k in (1, 2, 3)},
    **{f"current_l{k}_a": 2.0 for k in (1, 2, 3)},
    "power_kw": 1.25,
    "reactive_power_kvar": 0.3,
    "power_factor": 0.95,
    "frequency_hz": 50.0,
}
BASE1 = {"voltage_l1_v": UN, "current_l1_a": 2.0, "power_kw": 0.4, "power_factor": 0.97}


def registry(**meters: dict[str, Any]) -> pd.DataFrame:
    base = {
        "role": "customer",
        "transformer_id": "T1",
        "customer_class": "commercial",
        "phases": 3,
        "nominal_voltage_v": UN,
        "rated_current_a": IB,
        "max_current_a": 60.0,
        "ct_ratio": 1.0,
        "tariff": "x",
        "last_calibration": "2025-06-01",
        "calibration_interval_days": 3650,
    }
    return check_registry(pd.DataFrame([{**base, "meter_id": m, **o} for m, o in meters.items()]))


def frame(meter: str, rows: list[dict[str, Any]], base: dict[str, Any] = BASE3) -> pd.DataFrame:
    return readings_from_records(
        [{"meter_id": meter, "ts": T0 + k * STEP, **base, **r} for k, r in enumerate(rows)]
    )


REG3 = registry(M={})
REG1 = registry(M={"phases": 1, "customer_class": "residential"})
REG_SUPPLY = registry(M={"role": "transformer", "customer_class": ""})


def flagged(det: Detector, rows: list[dict[str, Any]], reg: pd.DataFrame = REG3) -> bool:
    base = BASE3 if reg["phases"].iat[0] == 3 else BASE1
    return len(det.detect(frame("M", rows, base), reg)) > 0


# (detector, changed values, registry, expected) -- each row one edge of one threshold.
EDGE_CASES = [
    # current loss: I < 0.5 % Ib (0.025 A) while another > 5 % Ib (0.25 A), all U live
    (CurrentLoss(), {"current_l2_a": 0.0249}, REG3, True),
    (CurrentLoss(), {"current_l2_a": 0.025}, REG3, False),
    (CurrentLoss(), {"current_l2_a": 0.0, "current_l1_a": 0.25, "current_l3_a": 0.25}, REG3, False),
    (CurrentLoss(), {"current_l2_a": 0.0, "current_l1_a": 0.26, "current_l3_a": 0.0}, REG3, True),
    (CurrentLoss(), {"current_l2_a": 0.0, "voltage_l2_v": 171.0}, REG3, False),  # not live
    (CurrentLoss(), {"current_l1_a": 0.0}, REG1, False),  # single-phase: not judged
    # overvoltage: > 1.07 Un = 235.4 V (both 1- and 3-phase)
    (Overvoltage(), {"voltage_l3_v": 235.4}, REG3, False),
    (Overvoltage(), {"voltage_l3_v": 235.5}, REG3, True),
    (Overvoltage(), {"voltage_l1_v": 235.5}, REG1, True),
    (Overvoltage(), {"voltage_l2_v": 300.0}, REG1, False),  # absent phase ignored
    # undervoltage: 1-phase < 0.90 Un = 198 V; 3-phase < 0.93 Un = 204.6 V; not below 78 %
    (Undervoltage(), {"voltage_l1_v": 198.0}, REG1, False),
    (Undervoltage(), {"voltage_l1_v": 197.9}, REG1, True),
    (Undervoltage(), {"voltage_l1_v": 204.6}, REG3, False),
    (Undervoltage(), {"voltage_l1_v": 204.5}, REG3, True),
    (Undervoltage(), {"voltage_l1_v": 171.5}, REG3, False),  # < 78 %: voltage loss territory
    (Undervoltage(), {"voltage_l1_v": 171.6}, REG3, True),
    # voltage unbalance: max dev / mean > 2 %
    (VoltageUnbalance(), {"voltage_l1_v": 224.4, "voltage_l3_v": 215.6}, REG3, False),
    (VoltageUnbalance(), {"voltage_l1_v": 224.5, "voltage_l3_v": 215.5}, REG3, True),
    # current unbalance: > 30 %, mean I > 0.5 A, no phase below 0.025 A
    (CurrentUnbalance(), {"current_l1_a": 2.6, "current_l3_a": 1.4}, REG3, False),
    (CurrentUnbalance(), {"current_l1_a": 2.61, "current_l3_a": 1.39}, REG3, True),
    (
        CurrentUnbalance(),
        {"current_l1_a": 0.9, "current_l2_a": 0.3, "current_l3_a": 0.3},
        REG3,
        False,
    ),  # mean 0.5 A = 10 % Ib: light load not judged
    (CurrentUnbalance(), {"current_l2_a": 0.0}, REG3, False),  # that is current loss
    (CurrentUnbalance(), {"current_l1_a": 2.61, "current_l3_a": 1.39}, REG_SUPPLY, False),
    (
        CurrentUnbalance(include_supply_meters=True),
        {"current_l1_a": 2.61, "current_l3_a": 1.39},
        REG_SUPPLY,
        True,
    ),
    # reverse power: < -0.5 % of 3 x 220 V x 5 A = -0.0165 kW
    (ReversePower(), {"power_kw": -0.0165}, REG3, False),
    (ReversePower(), {"power_kw": -0.017}, REG3, True),
    (ReversePower(), {"power_kw": -1.0}, registry(M={"export_allowed": True}), False),
    (ReversePower(), {"power_kw": -1.0}, registry(M={"role": "transformer"}), False),
    # low power factor: commercial < 0.85, industrial < 0.90, residential not judged
    (LowPowerFactor(), {"power_factor": 0.85}, REG3, False),
    (LowPowerFactor(), {"power_factor": 0.849}, REG3, True),
    (LowPowerFactor(), {"power_factor": -0.849}, REG3, True),
    (LowPowerFactor(), {"power_factor": 0.899}, registry(M={"customer_class": "industrial"}), True),
    (LowPowerFactor(), {"power_factor": 0.9}, registry(M={"customer_class": "industrial"}), False),
    (LowPowerFactor(), {"power_factor": 0.5}, REG1, False),
    (
        LowPowerFactor(),
        {"power_factor": 0.5, **{f"current_l{k}_a": 0.5 for k in (1, 2, 3)}},
        REG3,
        False,
    ),  # light load
    # frequency: |f - 50| > 0.2 Hz
    (FrequencyDeviation(), {"frequency_hz": 50.2}, REG3, False),
    (FrequencyDeviation(), {"frequency_hz": 50.21}, REG3, True),
    (FrequencyDeviation(), {"frequency_hz": 49.79}, REG3, True),
    (FrequencyDeviation(), {"frequency_hz": np.nan}, REG3, False),
    # transformer overload: hypot(P, Q) x CT > rated_kva
    (
        TransformerOverload(),
        {"power_kw": 0.6, "reactive_power_kvar": 0.8},
        registry(
            M={"role": "transformer", "customer_class": "", "ct_ratio": 100, "rated_kva": 100}
        ),
        False,
    ),
    (
        TransformerOverload(),
        {"power_kw": 0.6, "reactive_power_kvar": 0.801},
        registry(
            M={"role": "transformer", "customer_class": "", "ct_ratio": 100, "rated_kva": 100}
        ),
        True,
    ),
    (TransformerOverload(), {"power_kw": 100.0}, registry(M={"rated_kva": 1}), False),  # customer
    (TransformerOverload(), {"power_kw": 100.0}, registry(M={"role": "transformer"}), False),
]


@pytest.mark.parametrize(
    ("det", "change", "reg", "expected"),
    EDGE_CASES,
    ids=[f"{type(c[0]).__name__}-{i}" for i, c in enumerate(EDGE_CASES)],
)
def test_equipment_rule_edges(
    det: Detector, change: dict[str, Any], reg: pd.DataFrame, expected: bool
) -> None:
    rows = [change] * int(getattr(det, "min_readings", 1))
    assert flagged(det, rows, reg) is expected


@pytest.mark.parametrize(
    "det",
    [Overvoltage(), VoltageUnbalance(), CurrentUnbalance(), LowPowerFactor(), ReversePower()],
    ids=lambda d: type(d).__name__,
)
def test_min_readings_is_a_minimum_duration(det: Detector) -> None:
    bad = {
        Overvoltage: {"voltage_l1_v": 250.0},
        VoltageUnbalance: {"voltage_l1_v": 240.0},
        CurrentUnbalance: {"current_l1_a": 5.0},
        LowPowerFactor: {"power_factor": 0.5},
        ReversePower: {"power_kw": -1.0},
    }[type(det)]
    n = int(det.min_readings)  # type: ignore[attr-defined]
    assert n > 1
    assert not flagged(det, [{}] + [bad] * (n - 1) + [{}])
    found = det.detect(frame("M", [{}] + [bad] * n + [{}]), REG3)
    assert len(found) == 1
    assert found["starts_at"].iat[0] == T0 + STEP
    assert found["ends_at"].iat[0] == T0 + n * STEP
    assert found["evidence"].iat[0]["readings"] == n


def test_unbalance_formula() -> None:
    # Phase-major (3 x readings), as the window keeps phases.
    x = np.array([[230.0, 220.0, 210.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0]]).T
    np.testing.assert_allclose(unbalance(x)[:2], [10 / 220, 0.0])
    assert np.isnan(unbalance(x)[2])
    assert unbalance(x)[3] == pytest.approx(2.0)


def _area(out_hours: set[int], *, supply: bool, n: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Area T1 with customers A, B (1-phase) and optionally supply meter S; outage hours."""
    reg = registry(
        A={"phases": 1, "customer_class": "residential"},
        B={"phases": 1, "customer_class": "residential"},
        S={"role": "transformer", "customer_class": "", "ct_ratio": 100},
    )
    if not supply:
        reg = reg[reg["meter_id"] != "S"].reset_index(drop=True)
    recs = []
    for k in range(n):
        dead = k in out_hours
        for m in ("A", "B"):
            # Customer polls are spread over the interval: still one bucket.
            ts = T0 + k * STEP + pd.Timedelta(minutes=3 if m == "B" else 0)
            recs.append(
                {"meter_id": m, "ts": ts, **BASE1, "voltage_l1_v": 2.0 if dead else UN}
                | ({"current_l1_a": 0.0, "power_kw": 0.0} if dead else {})
            )
        if supply:
            recs.append(
                {
                    "meter_id": "S",
                    "ts": T0 + k * STEP,
                    **BASE3,
                    **{f"voltage_l{p}_v": 0.0 if dead else UN for p in (1, 2, 3)},
                    **{f"current_l{p}_a": 0.0 if dead else 2.0 for p in (1, 2, 3)},
                }
            )
    return readings_from_records(recs), reg


@pytest.mark.parametrize("supply", [True, False])
def test_outage_is_one_area_alert_and_silences_meter_rules(supply: bool) -> None:
    readings, reg = _area({3, 4, 5}, supply=supply)
    found = Outage().detect(readings, reg)
    assert len(found) == 1
    row = found.iloc[0]
    assert row["meter_id"] is None and row["transformer_id"] == "T1"
    assert row["starts_at"] == T0 + 3 * STEP
    # The last reading of the last out bucket (customer B polls 3 minutes into it).
    assert row["ends_at"] == T0 + 5 * STEP + pd.Timedelta("3min")
    assert row["evidence"]["supply_meter_dead"] is supply
    everything = run_detectors(default_detectors(), readings, reg)
    assert list(everything["type"]) == ["outage"], everything[["type", "meter_id"]]


def test_outage_needs_all_customers_dead_without_supply_meter() -> None:
    readings, reg = _area({3}, supply=False)
    alive = readings["meter_id"].eq("B") & (readings["ts"] == T0 + 3 * STEP + pd.Timedelta("3min"))
    readings.loc[alive, "voltage_l1_v"] = UN
    assert Outage().detect(readings, reg).empty
    # A lone dead customer is no area outage either.
    one = readings[readings["meter_id"] == "A"]
    assert Outage().detect(one, reg).empty


def test_outage_at_the_end_is_ongoing() -> None:
    readings, reg = _area({6, 7}, supply=True)
    found = Outage().detect(readings, reg)
    assert len(found) == 1 and pd.isna(found["ends_at"].iat[0])


@pytest.mark.parametrize(
    ("interval", "lead", "expected"),
    [(218, 0, True), (219, 0, False), (219, 1, True), (400, 0, False)],
)
def test_calibration_due_edges(interval: float, lead: int, expected: bool) -> None:
    # Last calibration 2025-06-01 + 218 days = 2026-01-05, the day of the readings.
    reg = registry(M={"calibration_interval_days": interval})
    found = CalibrationDue(lead_days=lead).detect(frame("M", [{}] * 3), reg)
    assert (len(found) == 1) is expected
    if expected:
        assert "2026-01-0" in found["summary"].iat[0]


def test_phase_break_reading_raises_only_phase_break() -> None:
    """One cause, one alert: a broken phase is not also current loss or unbalance."""
    broken = {"voltage_l2_v": 3.0, "current_l2_a": 0.0}
    found = run_detectors(default_detectors(), frame("M", [broken] * 6), REG3)
    assert set(found["type"]) == {"phase_break"}
    lost = {"voltage_l2_v": 110.0}
    found = run_detectors(default_detectors(), frame("M", [lost] * 6), REG3)
    assert set(found["type"]) == {"voltage_loss"}


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (CurrentLoss, {"current_fraction": 0}),
        (Overvoltage, {"single_phase_fraction": 1.5}),
        (LowPowerFactor, {"industrial_min_pf": 1.0}),
        (FrequencyDeviation, {"limit_hz": -0.2}),
        (Outage, {"min_meters": 0}),
        (CalibrationDue, {"lead_days": -1}),
        (TransformerOverload, {"min_readings": 0}),
    ],
)
def test_bad_parameters_are_refused_by_name(cls: type[Detector], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        cls(**kwargs)


def test_area_outages_in_chunks_of_meters_equal_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The area outages (shared by the equipment rules) are gathered in chunks of meters for
    bounded memory: every count, time and per-reading mark equals one pass, and the outage
    finding is the same."""
    from meterwatch.analytics import window as window_mod
    from meterwatch.analytics.detectors.equipment import (
        OUTAGE_BUCKET_MINUTES,
        OUTAGE_FRACTION,
        Outage,
        _outage_rows,
    )
    from meterwatch.simulators.fleet import Injection
    from tests.support.fleets import DAY, T0, faulty_window, small_fleet

    fleet, readings, ids = small_fleet(days=3, residential=8, transformers=2)
    outage = Injection("outage", ids[0], T0 + DAY, T0 + DAY + pd.Timedelta(hours=2))
    w = faulty_window(fleet, readings, [outage])

    def run(cells: int) -> tuple[object, pd.DataFrame]:
        monkeypatch.setattr(window_mod, "CHUNK_CELLS", cells)
        w._cache.pop(("outages", OUTAGE_FRACTION, OUTAGE_BUCKET_MINUTES, 2), None)
        return _outage_rows(w, OUTAGE_FRACTION, OUTAGE_BUCKET_MINUTES, 2), Outage().detect_window(w)

    (one, found) = run(10**9)
    assert one.out.any() and len(found) == 1
    for cells in (1, 2 * w.n_cells):
        got, got_found = run(cells)
        for f in ("out", "meters", "dead", "supply_dead", "first_ns", "last_ns", "rows"):
            np.testing.assert_array_equal(getattr(got, f), getattr(one, f), f)
        pd.testing.assert_frame_equal(got_found, found)
