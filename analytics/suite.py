"""The default detector suite: build it from parameters and run it over a readings window."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from meterwatch.analytics.base import Detector
from meterwatch.analytics.registry import build_detectors, detector_key, load_detectors
from meterwatch.analytics.window import Window, build_window
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
    detectors: Iterable[Detector],
    readings: pd.DataFrame | Window,
    meters: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Concatenated findings of ``detectors`` (``detect`` only; fit them beforehand if needed).

    ``readings`` is a canonical frame (with ``meters``, the registry) or a ready
    :class:`~meterwatch.analytics.window.Window`: the window is built once and shared by every
    detector. Returns a frame with exactly ``FINDING_COLUMNS`` and a fresh index, in detector
    order; ``empty_findings()`` when nothing is found.
    """
    detectors = list(detectors)
    if isinstance(readings, Window):
        w = readings
    else:
        assert meters is not None
        w = build_window(readings, meters)
    return concat_findings(d.detect_window(w) for d in detectors)


def concat_findings(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Findings frames in order as one, with canonical columns and dtypes."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_findings()
    out = pd.concat(frames, ignore_index=True)[list(FINDING_COLUMNS)]
    for col in ("starts_at", "ends_at"):
        out[col] = out[col].astype(TS_DTYPE)
    return out
