"""The default detector suite: build it from parameters and run it over a readings window."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from meterwatch.analytics.base import Detector, shared_session
from meterwatch.analytics.billing_rules import BILLING_DETECTORS
from meterwatch.analytics.consumption import ConsumptionDrop, ConsumptionSpike, ZeroConsumption
from meterwatch.analytics.equipment import (
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
)
from meterwatch.analytics.rules import PhaseBreak, RegisterDecrease, VoltageLoss
from meterwatch.analytics.theft import TheftSuspected, TransformerLoss
from meterwatch.core.schema import FINDING_COLUMNS, TS_DTYPE, empty_findings

#: Detector classes of the default suite, in run order.
DETECTOR_CLASSES: tuple[type[Detector], ...] = (
    RegisterDecrease,
    *BILLING_DETECTORS,  # meter_stuck, meter_runaway, ... (analytics/billing_rules.py)
    VoltageLoss,
    PhaseBreak,
    CurrentLoss,
    Overvoltage,
    Undervoltage,
    VoltageUnbalance,
    CurrentUnbalance,
    ReversePower,
    LowPowerFactor,
    FrequencyDeviation,
    Outage,
    TransformerOverload,
    CalibrationDue,
    ConsumptionSpike,
    ConsumptionDrop,
    ZeroConsumption,
    TransformerLoss,
    TheftSuspected,
)


def detector_key(cls: type[Detector]) -> str:
    """Parameter key of a detector class: its name in snake_case (``PhaseBreak`` -> ``phase_break``)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()


def default_detectors(params: Mapping[str, Mapping[str, Any]] | None = None) -> list[Detector]:
    """One instance of every default detector, with ``params[key]`` overriding defaults.

    ``params`` is keyed by :func:`detector_key`, e.g. ``{"consumption_spike": {"ratio": 3.0}}``.
    An unknown detector key or parameter name raises ValueError naming it; a bad value
    raises the detector's own ValueError (which names the parameter).
    """
    classes = {detector_key(cls): cls for cls in DETECTOR_CLASSES}
    params = params or {}
    unknown = [key for key in params if key not in classes]
    if unknown:
        raise ValueError(
            f"unknown detector(s) {', '.join(map(repr, unknown))}; known: {', '.join(classes)}"
        )
    detectors: list[Detector] = []
    for key, cls in classes.items():
        kwargs = dict(params.get(key) or {})
        allowed = cls._param_names()
        bad = [name for name in kwargs if name not in allowed]
        if bad:
            raise ValueError(
                f"{key}: unknown parameter(s) {', '.join(map(repr, bad))}; "
                f"known: {', '.join(allowed)}"
            )
        detectors.append(cls(**kwargs))
    return detectors


def run_detectors(
    detectors: Iterable[Detector], readings: pd.DataFrame, meters: pd.DataFrame
) -> pd.DataFrame:
    """Concatenated findings of ``detectors`` (``detect`` only; fit them beforehand if needed).

    Returns a frame with exactly ``FINDING_COLUMNS`` and a fresh index, in detector order;
    ``empty_findings()`` when nothing is found.
    """
    with shared_session():  # prepare the window once for all detectors
        frames = [d.detect(readings, meters) for d in detectors]
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_findings()
    out = pd.concat(frames, ignore_index=True)[list(FINDING_COLUMNS)]
    for col in ("starts_at", "ends_at"):
        out[col] = out[col].astype(TS_DTYPE)
    return out
