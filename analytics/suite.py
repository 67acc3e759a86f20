"""The default detector suite: build it from parameters and run it over a readings window."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from meterwatch.analytics.base import Detector, shared_session
from meterwatch.analytics.registry import build_detectors, detector_key, load_detectors
from meterwatch.core.schema import FINDING_COLUMNS, TS_DTYPE, empty_findings

__all__ = ["default_detectors", "detector_classes", "detector_key", "run_detectors"]


def detector_classes() -> tuple[type[Detector], ...]:
    """Every registered detector class, in run order."""
    return tuple(spec.cls for spec in load_detectors().values())


def default_detectors(params: Mapping[str, Mapping[str, Any]] | None = None) -> list[Detector]:
    """One instance of every registered detector, with ``params[key]`` overriding defaults.

    ``params`` is keyed by :func:`detector_key`, e.g. ``{"consumption_spike": {"ratio": 3.0}}``.
    An unknown detector key or parameter name raises ValueError naming it and the known ones;
    a bad value raises the detector's own ValueError (which names the parameter).
    """
    return build_detectors(params)


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
