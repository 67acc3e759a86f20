"""Detector contract (scikit-learn style) and the vectorized helpers every detector shares.

A detector is configured by keyword arguments of ``__init__`` (stored as same-named
attributes, validated there), may learn state in ``fit`` (attributes ending in ``_``), and
turns the dense window of a partition (:class:`meterwatch.analytics.window.Window`: readings
as meters x intervals arrays plus the registry) into a findings frame
(:data:`meterwatch.core.schema.FINDING_COLUMNS`) in ``detect_window``; ``detect(readings,
meters)`` builds the window from a canonical frame and the registry first.

Conventions shared by all detectors
-----------------------------------
* Readings of meters that are not in the registry are ignored; rows without a timestamp
  are dropped; the input frames are never modified and their row order does not matter.
* Duplicate ``(meter_id, ts)`` rows are collapsed deterministically (rows are sorted by
  every column first, the first one is kept) so row order cannot change the result.
* Threshold comparisons are *strict* (``<`` / ``>``): a value exactly at a threshold does
  not trigger. Differences smaller than a relative 1e-9 of the threshold (1e-5 for the
  float32 instantaneous quantities) are treated as equality, so that the float product
  ``0.78 * 220`` or a float32 ``224.4`` does not decide an edge case.
* A missing value (NaN) never triggers a rule: every comparison with NaN is false.
* An *episode* is a maximal run of consecutive samples of one meter where the condition
  holds. ``starts_at`` is the first such sample, ``ends_at`` the end of the last one
  (its ``ts`` for instantaneous readings), or NaT when the condition still holds at the
  meter's last sample in the window.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from meterwatch.core.catalogue import CATALOGUE
from meterwatch.core.schema import (
    FINDING_COLUMNS,
    TS_DTYPE,
    empty_findings,
)

#: Relative tolerance under which a value is taken to *equal* its threshold [-].
REL_TOL = 1e-9
#: The same for float32 values (instantaneous quantities of the dense window): a decimal
#: reading such as 224.4 V is stored 6e-6 V below itself, and a ratio of such values
#: (an unbalance) carries a few float32 roundings: neither may decide a threshold.
REL_TOL32 = 1e-5


def _tol(values: np.ndarray, thr: np.ndarray) -> np.ndarray:
    rel = REL_TOL32 if getattr(values, "dtype", None) == np.float32 else REL_TOL
    return rel * np.abs(thr)


@dataclass(frozen=True)
class FittedState:
    """What a detector learned from history: per-meter arrays (first axis = ``ids``) and
    arrays shared by every meter (e.g. the days a kept series covers)."""

    ids: np.ndarray
    per_meter: dict[str, np.ndarray]
    shared: dict[str, np.ndarray] = field(default_factory=dict)

    def rows_for(self, ids: np.ndarray) -> np.ndarray:
        """Row of each of ``ids`` in this state (-1: the meter was not fitted)."""
        out: np.ndarray = pd.Index(self.ids).get_indexer(pd.Index(ids))
        return out

    def take(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The per-meter arrays for ``ids`` in that order; NaN (0 for integers) for meters
        that were not fitted."""
        rows = self.rows_for(ids)
        ok = rows >= 0
        r = np.where(ok, rows, 0)
        # The usual daily run: the window's meters are the fitted ones, in the same order; the
        # kept arrays are handed out as they are (read-only), not copied.
        same = (
            bool(ok.all())
            and rows.size == len(self.ids)
            and np.array_equal(rows, np.arange(rows.size))
        )
        out = {}
        for name, a in self.per_meter.items():
            if same:
                picked = a.view()
                picked.flags.writeable = False
            else:
                picked = a[r] if len(a) else np.zeros((len(ids), *a.shape[1:]), dtype=a.dtype)
                picked[~ok] = np.nan if np.issubdtype(a.dtype, np.floating) else 0
            out[name] = picked
        return out


class Detector:
    """Base class of every detector.

    Subclasses set :attr:`alert_types` (catalogue types they may emit) and
    :attr:`severity`, take their parameters as keyword arguments of ``__init__`` with
    documented defaults, and implement :meth:`detect`. Detectors here flag conditions;
    they do not rank, so findings carry no ``score``.
    """

    alert_types: ClassVar[tuple[str, ...]] = ()
    #: The window intermediate (:meth:`Window.memo`) this detector computes or reads with
    #: others of the same ``shares``: VEE, hourly energy, area outages. When detectors run on
    #: threads (``analytics.partition.run_partition``), those sharing one run one after the
    #: other on one thread, so no thread waits for another's computation.
    shares: ClassVar[str] = ""

    @property
    def severity(self) -> str:
        """Default severity of the first alert type, from the catalogue (meterwatch.core.catalogue)."""
        return CATALOGUE[self.alert_types[0]].severity

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]

    def get_params(self) -> dict[str, Any]:
        """Parameters as passed to ``__init__``: ``type(d)(**d.get_params())`` is a copy."""
        return {name: getattr(self, name) for name in self._param_names()}

    def fit(self, readings: pd.DataFrame, meters: pd.DataFrame) -> Detector:
        """Learn state from history (a canonical frame and the registry)."""
        from meterwatch.analytics.window import build_window

        return self.fit_window(build_window(readings, meters))

    def fit_window(self, w: Any) -> Detector:
        """Learn state from a history window; the rule-based detectors learn nothing."""
        return self

    def state(self) -> FittedState | None:
        """What ``fit`` learned, to keep (:mod:`meterwatch.analytics.baselines`); None when
        nothing is learned (or not fitted yet)."""
        return None

    def load_state(self, state: FittedState) -> Detector:
        """Take a kept :meth:`state` back (the inverse of :meth:`state`)."""
        raise TypeError(f"{type(self).__name__} learns nothing from history")

    def detect(self, readings: pd.DataFrame, meters: pd.DataFrame) -> pd.DataFrame:
        """Findings (one row per episode) with exactly ``FINDING_COLUMNS``.

        Builds the dense window (:func:`meterwatch.analytics.window.build_window`) and calls
        :meth:`detect_window`; a suite run builds the window once for every detector.
        """
        from meterwatch.analytics.window import build_window

        return self.detect_window(build_window(readings, meters))

    def detect_window(self, w: Any) -> pd.DataFrame:
        """Findings over a :class:`~meterwatch.analytics.window.Window` (the dense core)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------------- validation


def check_positive(name: str, value: float) -> float:
    """``value`` as float if finite and > 0, else ValueError naming the parameter."""
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def check_fraction(name: str, value: float, *, upper_inclusive: bool = False) -> float:
    """``value`` as float if in (0, 1) (or (0, 1]), else ValueError naming the parameter."""
    v = float(value)
    ok = 0 < v <= 1 if upper_inclusive else 0 < v < 1
    if not (math.isfinite(v) and ok):
        raise ValueError(f"{name} must be in (0, 1{']' if upper_inclusive else ')'}, got {value!r}")
    return v


def check_count(name: str, value: int, minimum: int = 1) -> int:
    """``value`` if an integer >= ``minimum``, else ValueError naming the parameter."""
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------- comparisons


def _bound(values: np.ndarray, bound: np.ndarray, up: bool) -> np.ndarray:
    """``bound`` (float64, the threshold's shape) for comparing with ``values``: for float32
    values, the float32 next to it on the side that keeps every comparison as with the
    float64 bound (``up``: the least float32 >= bound, for ``<`` and ``>=``; else the greatest
    <= bound, for ``>``), so the window's float32 arrays are compared as they are instead of
    each value being widened to float64 (half the memory traffic)."""
    if getattr(values, "dtype", None) != np.float32:
        return bound
    with np.errstate(invalid="ignore", over="ignore"):  # beyond float32: +-inf, as wanted
        b32 = bound.astype(np.float32)
        off = b32 < bound if up else b32 > bound
    if off.any():
        toward = np.float32(np.inf if up else -np.inf)
        b32 = np.where(off, np.nextafter(b32, toward), b32)
    out: np.ndarray = b32
    return out


def strictly_less(values: np.ndarray, threshold: np.ndarray | float) -> np.ndarray:
    """``values < threshold`` by more than float rounding; NaN on either side gives False."""
    thr = np.asarray(threshold, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.asarray(values < _bound(values, thr - _tol(values, thr), True), dtype=bool)


def strictly_greater(values: np.ndarray, threshold: np.ndarray | float) -> np.ndarray:
    """``values > threshold`` by more than float rounding; NaN on either side gives False."""
    thr = np.asarray(threshold, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.asarray(values > _bound(values, thr + _tol(values, thr), False), dtype=bool)


def at_least(values: np.ndarray, threshold: np.ndarray | float) -> np.ndarray:
    """``values >= threshold`` (the complement of :func:`strictly_less`); NaN gives False."""
    thr = np.asarray(threshold, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.asarray(values >= _bound(values, thr - _tol(values, thr), True), dtype=bool)


# ---------------------------------------------------------------------------- inputs


# --------------------------------------------------------------------------- episodes


def episodes(mask: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of True in ``mask`` within contiguous ``groups``.

    Rows must be sorted by group (then time). Returns ``(starts, ends, ongoing)``: row
    positions of the first and last sample of each run, and whether the run reaches the
    group's last row (the condition still holds at the end of the window).
    """
    mask = np.asarray(mask, dtype=bool)
    groups = np.asarray(groups)
    n = mask.size
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=bool)
    same_prev = np.r_[False, groups[1:] == groups[:-1]]
    same_next = np.r_[groups[1:] == groups[:-1], False]
    prev = np.r_[False, mask[:-1]] & same_prev
    nxt = np.r_[mask[1:], False] & same_next
    starts = np.flatnonzero(mask & ~prev)
    ends = np.flatnonzero(mask & ~nxt)
    return starts, ends, ~same_next[ends]


# --------------------------------------------------------------------------- outputs


def iso(ts: Any) -> str | None:
    """ISO 8601 UTC text with ``Z`` (seconds precision), None for NaT/None."""
    if ts is None or pd.isna(ts):
        return None
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def short_ts(ts: Any) -> str:
    """Compact UTC time for summaries, e.g. ``2026-01-05 06:00Z``."""
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return t.strftime("%Y-%m-%d %H:%MZ")


def plain(value: Any) -> Any:
    """``value`` as JSON-serializable plain Python (NaN/NaT -> None, times -> ISO text)."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, np.float32):  # the shortest text that reads back: 4.2, not 4.1999998
        f = float(str(value)) if np.isfinite(value) else float("nan")
        return f if math.isfinite(f) else None
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [plain(v) for v in value]
    if isinstance(value, pd.Timestamp | np.datetime64 | datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if value is pd.NaT or value is pd.NA:
        return None
    return str(value)


def utc(ns: int | np.integer) -> pd.Timestamp:
    """UTC timestamp from integer nanoseconds since the epoch."""
    return pd.Timestamp(int(ns), tz="UTC")


def ts_ns(ts: pd.Series) -> np.ndarray:
    """UTC timestamps (tz-aware Series) as int64 nanoseconds since the epoch."""
    naive = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    return naive.to_numpy().astype("datetime64[ns]").view(np.int64)


def findings_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Findings frame from row dicts (keys ``FINDING_COLUMNS``), with canonical dtypes.

    Rows are ordered by ``meter_id``, ``starts_at``, ``type`` so output does not depend on
    input order.
    """
    if not rows:
        return empty_findings()
    data: dict[str, pd.Series] = {}
    for col in FINDING_COLUMNS:
        values = [r.get(col) for r in rows]
        if col in ("starts_at", "ends_at"):
            data[col] = pd.Series(pd.to_datetime(values, utc=True)).astype(TS_DTYPE)
        else:
            data[col] = pd.Series(values, dtype=object)
    out = pd.DataFrame(data)
    out = out.sort_values(["meter_id", "starts_at", "type"], kind="mergesort", na_position="last")
    return out.reset_index(drop=True)


def nanmedian(values: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """Median ignoring NaN along ``axis``; NaN where a slice has no number. No warnings.

    Same result as :func:`numpy.nanmedian`, without its per-slice Python warning for all-NaN
    slices (millions of calls on a fleet): one sort (NaN sorts last) and two gathers.
    """
    a = np.asarray(values, dtype=float)
    if a.shape[axis] == 0:  # no samples at all: NaN everywhere
        shape = list(a.shape)
        shape[axis] = 1
        out0 = np.full(shape, np.nan)
        return out0 if keepdims else np.squeeze(out0, axis=axis)
    s = np.sort(a, axis=axis)
    n = np.sum(~np.isnan(a), axis=axis, keepdims=True)
    lo = np.maximum((n - 1) // 2, 0)
    hi = np.maximum(n // 2, 0)
    mid = (np.take_along_axis(s, lo, axis=axis) + np.take_along_axis(s, hi, axis=axis)) / 2
    out = np.where(n > 0, mid, np.nan)
    return out if keepdims else np.squeeze(out, axis=axis)
