"""VEE: validation, estimation and editing of interval energy derived from register reads.

:func:`validate` turns canonical readings (contracts §1) into *validated readings*: one row
per meter and interval of a fixed grid (default 15 min, aligned to the epoch, i.e. to
:00/:15/:30/:45 UTC), with the billed energy of the interval [kWh] = register delta x
``ct_ratio``, a quality flag (``actual``, ``estimated``, ``edited``, ``missing``), the
method, reason codes, the rule-set version and the data version. The input frames are never
modified.

Interval energy from register reads
-----------------------------------
Meters are read at poll times that need not be on the grid. The register is interpolated
linearly at every grid boundary between the two reads around it, provided those reads are at
most ``max_read_spacing_intervals`` intervals apart (a read exactly on a boundary is used as
is). An interval's energy is the difference of its two boundary values, so a read on every
boundary gives exactly the register deltas, and unaligned polls are apportioned by time. A
boundary that cannot be interpolated (no read within the spacing on one side) makes both
intervals around it ``missing`` with reason ``gap``. Boundaries more than
``alignment_tolerance_s`` from the nearest read add the informational reason ``misaligned``.

Checks (vectorized over a meters x intervals matrix)
----------------------------------------------------
*Hard* failures make an interval untrustworthy: it is replaced by an estimate.
``register_decrease`` (the register fell by more than ``decrease_tolerance_kwh`` and it is
not a rollover; also the step that brings it back above its earlier maximum),
``stuck_register`` (the register did not advance by a count for ``stuck_hours`` while the
current was at least ``stuck_current_fraction`` x Ib), ``runaway`` (the register advanced by
more than ``runaway_factor`` x Un x Imax x phases x interval and more than ``runaway_factor``
x the highest ``power_kw`` read in or at the start of the interval, when there is one),
``future_ts`` (reads after
``now + future_tolerance_s``; they are not used). *Soft* findings keep the interval
``actual`` and add a reason code for review: ``duplicate_ts``, ``out_of_order``,
``clock_error``, ``rollover``, ``spike``, ``high_usage``, ``low_usage``,
``zero_consumption``, ``outage``, ``energy_power_mismatch``, ``multiplier_mismatch``,
``misaligned``.

Estimation
----------
Runs of intervals to estimate (``gap`` or hard failure) are filled, in this order, by
linear interpolation between the actual, non-outage intervals on both sides (runs of at most
``linear_max_gap_s``), by the average of the ``like_days`` nearest like days (same day type,
weekday or weekend in ``timezone``; days whose every interval is actual and without outage;
searched up to ``like_day_search_days`` before and after, nearer first, earlier first on a
tie) at the same local time slot, or, when the register delta across the run is known, by
spreading that delta evenly (``register_prorate``). When both boundary reads of a run are
actual and the run is a pure data gap, its estimates are scaled so that their sum equals the
register delta x ``ct_ratio`` (reason ``scaled_to_register``). Estimates are validated again:
a run with a negative or runaway estimate falls back to ``register_prorate`` when its delta
is known, else those estimates are rejected (``missing`` with ``estimate_rejected``). A run of
consecutive estimated intervals longer than ``max_consecutive_estimated_s`` adds
``estimation_excess``.

Alert-worthy checks are also returned as :attr:`ValidatedReadings.events` (one row per
episode with its evidence) for the billing detectors of :mod:`analytics.detectors.billing_rules`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from meterwatch.analytics.base import (
    REL_TOL,
    at_least,
    episodes,
    strictly_greater,
    strictly_less,
    ts_ns,
)
from meterwatch.analytics.params import RULE_SET_VERSION, VeeParams
from meterwatch.analytics.window import (
    NO_TIME,
    Extent,
    Window,
    build_window,
    prev_present,
    register_reads,
    row_chunks,
    take_prev,
)
from meterwatch.core.schema import CURRENT_COLUMNS, TS_DTYPE, VOLTAGE_COLUMNS

#: Version of this rule set; stored with every validated interval.
#: Quality flags of a validated interval.
QUALITIES: tuple[str, ...] = ("actual", "estimated", "edited", "missing")
#: Reason codes, in bit order.
REASON_CODES: tuple[str, ...] = (
    "gap",
    "future_ts",
    "duplicate_ts",
    "out_of_order",
    "misaligned",
    "clock_error",
    "register_decrease",
    "rollover",
    "stuck_register",
    "runaway",
    "spike",
    "high_usage",
    "low_usage",
    "zero_consumption",
    "outage",
    "energy_power_mismatch",
    "multiplier_mismatch",
    "scaled_to_register",
    "estimate_rejected",
    "estimation_excess",
)
BIT: dict[str, int] = {code: 1 << i for i, code in enumerate(REASON_CODES)}
#: Reasons that make an interval untrustworthy (it is estimated instead).
HARD_REASONS: tuple[str, ...] = ("gap", "register_decrease", "stuck_register", "runaway")
#: Columns of :attr:`ValidatedReadings.intervals`.
VALIDATED_COLUMNS: tuple[str, ...] = (
    "meter_id",
    "interval_start",
    "ts",
    "kwh",
    "quality",
    "method",
    "reasons",
    "rule_set_version",
    "data_version",
)
#: Columns of :attr:`ValidatedReadings.events`.
EVENT_COLUMNS: tuple[str, ...] = ("meter_id", "code", "starts_at", "ends_at", "evidence")
_NS = 10**9


class ValidatedReadings:
    """Result of :func:`validate`.

    Attributes
    ----------
    intervals
        One row per meter and interval (``VALIDATED_COLUMNS``): ``interval_start`` and ``ts``
        (interval end, contracts §1) in UTC, ``kwh`` billed energy [kWh] (NaN when
        ``missing``), ``quality``, ``method``, ``reasons`` (``;``-separated codes). Made from
        the dense result on first use.
    events
        Alert-worthy check results (``EVENT_COLUMNS``), one row per episode.
    counts
        Intervals per quality and per reason code, and input rows per structure problem.
    dense
        The same as meters x intervals arrays (:class:`DenseValidated`), None for a result
        built from a table.
    """

    def __init__(
        self,
        intervals: pd.DataFrame | None,
        events: pd.DataFrame,
        interval_s: int,
        rule_set_version: str,
        data_version: int,
        counts: dict[str, int] | None = None,
        *,
        dense: DenseValidated | None = None,
    ):
        self._intervals = intervals
        self.events = events
        self.interval_s = interval_s
        self.rule_set_version = rule_set_version
        self.data_version = data_version
        self.counts = counts or {}
        self.dense = dense

    @property
    def intervals(self) -> pd.DataFrame:
        if self._intervals is None:
            assert self.dense is not None
            self._intervals = self.dense.frame(self.rule_set_version, self.data_version)
        return self._intervals


# ----------------------------------------------------------------------------- helpers


def _decode(bits: np.ndarray) -> np.ndarray:
    """``;``-joined reason codes per bitmask (decoded once per distinct mask)."""
    uniq, inv = np.unique(bits, return_inverse=True)
    text = np.array(
        [";".join(c for c in REASON_CODES if int(u) & BIT[c]) for u in uniq], dtype=object
    )
    return text[inv.reshape(-1)]


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of True along axis 1 of a 2-D mask: ``(row, first_col, last_col)``."""
    n_rows, n_cols = mask.shape
    starts, ends, _ = episodes(mask.ravel(), np.repeat(np.arange(n_rows), n_cols))
    return starts // max(n_cols, 1), starts % max(n_cols, 1), ends % max(n_cols, 1)


def _run_mask(mask: np.ndarray, min_len: int) -> np.ndarray:
    """Cells of ``mask`` that belong to a run along axis 1 of at least ``min_len`` cells."""
    out = np.zeros_like(mask, dtype=bool)
    rows, c0, c1 = _runs(mask)
    keep = (c1 - c0 + 1) >= min_len
    lengths = (c1 - c0 + 1)[keep]
    if lengths.size:
        r = np.repeat(rows[keep], lengths)
        c = np.repeat(c0[keep], lengths) + (
            np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        )
        out[r, c] = True
    return out


def _empty_events() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype=object) for c in EVENT_COLUMNS})
    df["starts_at"] = pd.Series(dtype=TS_DTYPE)
    df["ends_at"] = pd.Series(dtype=TS_DTYPE)
    return df


def empty_validated() -> pd.DataFrame:
    """An empty validated-readings frame with the canonical dtypes."""
    return pd.DataFrame(
        {
            "meter_id": pd.Series(dtype=object),
            "interval_start": pd.Series(dtype=TS_DTYPE),
            "ts": pd.Series(dtype=TS_DTYPE),
            "kwh": pd.Series(dtype=float),
            "quality": pd.Series(dtype=object),
            "method": pd.Series(dtype=object),
            "reasons": pd.Series(dtype=object),
            "rule_set_version": pd.Series(dtype=object),
            "data_version": pd.Series(dtype=np.int64),
        }
    )


def _ts(ns: np.ndarray) -> pd.Series:
    """UTC timestamps from int64 nanoseconds (a view, no per-element parsing)."""
    naive = pd.Series(np.asarray(ns, dtype=np.int64).view("datetime64[ns]"))
    return naive.dt.tz_localize("UTC").astype(TS_DTYPE)


# ---------------------------------------------------------------------------- validate


def validate(
    readings: pd.DataFrame,
    meters: pd.DataFrame,
    params: VeeParams | None = None,
    *,
    interval_s: int = 900,
    rule_set_version: str = RULE_SET_VERSION,
    data_version: int = 1,
    start: Any = None,
    end: Any = None,
    now: Any = None,
    timezone: str = "UTC",
) -> ValidatedReadings:
    """Validate and estimate interval energy for every registered meter (see module doc).

    Parameters
    ----------
    readings, meters
        Canonical readings (any row order; not modified) and the meter registry
        (contracts §2; ``ct_ratio``, ``phases``, ``nominal_voltage_v``, ``rated_current_a``
        and ``max_current_a`` are read, with the registry defaults where absent).
    params
        Thresholds; :class:`VeeParams` defaults when None.
    interval_s
        Interval length [s]; must divide a day.
    start, end
        UTC period of the interval grid (floored/ceiled to the grid); every registered meter
        gets every interval (``missing`` where there is no data). Default: from the first
        boundary after the earliest read to the last boundary before the latest read, for
        the meters that have reads.
    now
        Reads after ``now + future_tolerance_s`` are ``future_ts`` and not used; also the
        reference of the clock check. Default: no future check; the clock reference is the
        latest read of the other meters.
    timezone
        IANA zone of the day boundaries (like days, spike and usage checks).
    """
    _check_interval(interval_s)
    w = build_window(readings, meters, step_s=int(interval_s), start=start, end=end)
    return validate_window(
        w,
        params,
        interval_s=interval_s,
        rule_set_version=rule_set_version,
        data_version=data_version,
        start=start,
        end=end,
        now=now,
        timezone=timezone,
    )


def _check_interval(interval_s: Any) -> None:
    if int(interval_s) != interval_s or interval_s <= 0 or 86400 % int(interval_s):
        raise ValueError(
            f"interval_s must be a whole number of seconds dividing a day, got {interval_s!r}"
        )


def validate_window(
    w: Window,
    params: VeeParams | None = None,
    *,
    interval_s: int = 900,
    rule_set_version: str = RULE_SET_VERSION,
    data_version: int = 1,
    start: Any = None,
    end: Any = None,
    now: Any = None,
    timezone: str = "UTC",
) -> ValidatedReadings:
    """:func:`validate` over a dense window (the suite's shared one when its cells are the
    interval grid; else the window is re-gridded once). Every check below is one function
    over meters x intervals arrays."""
    p = params or VeeParams()
    _check_interval(interval_s)
    step = int(interval_s) * _NS
    if w.step != step or w.g0 % step:
        w = regrid(w, int(interval_s), start=start, end=end)
    counts: dict[str, int] = {}
    # --- read-level structure ------------------------------------------------------------
    now_ns = None if now is None else _to_ns(pd.Timestamp(now))
    reads = usable_reads(w, now_ns, p, counts)
    # --- the interval grid: columns [i0, i1) of the window --------------------------------
    i0, i1, rows = interval_range(w, reads, start, end, fleet=w.fleet if now_ns is None else None)
    n_m, n_int = rows.size, max(i1 - i0, 0)
    if n_int <= 0 or n_m == 0:
        return _result(
            empty_validated(), _empty_events(), interval_s, rule_set_version, data_version, counts
        )
    # Clock reference of meters without receipt times when ``now`` is not given: the two
    # latest reads of the fleet (the window is one partition of it) or of all judged meters.
    latest = None
    if now_ns is None:
        latest = w.fleet.latest if w.fleet is not None else _latest_two(w, reads, rows)
    # Meters in chunks: the checks' intermediates (a few dozen arrays of the chunk's size) stay
    # bounded whatever the window's size; every check is per meter, so chunks are independent.
    events: list[dict[str, Any]] = []
    parts = [
        _validate_rows(w, reads, rows[rs], i0, i1, now_ns, p, interval_s, timezone, latest, events)
        for rs in row_chunks(n_m, n_int)
    ]
    dense = parts[0] if len(parts) == 1 else DenseValidated.concat(parts)
    per_quality = np.bincount(dense.quality.ravel(), minlength=len(QUALITIES))
    for q_code, q in enumerate(QUALITIES):
        counts[f"intervals_{q}"] = int(per_quality[q_code])
    flagged = dense.bits[dense.bits != 0]  # one pass over the window, then its flagged cells
    for code in REASON_CODES:
        counts[f"reason_{code}"] = int(np.count_nonzero(flagged & BIT[code]))
    return ValidatedReadings(
        None,
        _events_frame(events),
        int(interval_s),
        rule_set_version,
        int(data_version),
        counts,
        dense=dense,
    )


def _latest_two(w: Window, reads: _Reads, rows: np.ndarray) -> tuple[int, int]:
    """The latest and second-latest usable read times of the meters ``rows`` (clock_check's
    reference for meters without receipt times), found chunk by chunk."""
    last = np.concatenate(
        [
            np.where(reads.present[r], w.t[r], NO_TIME).max(axis=1)
            for r in (rows[rs] for rs in row_chunks(rows.size, w.n_cells))
        ]
    )
    order = np.sort(last[last != NO_TIME])
    top1 = int(order[-1]) if order.size else 0
    top2 = int(order[-2]) if order.size >= 2 else int(NO_TIME)
    return top1, top2


def _validate_rows(
    w: Window,
    reads: _Reads,
    rows: np.ndarray,
    i0: int,
    i1: int,
    now_ns: int | None,
    p: VeeParams,
    interval_s: int,
    timezone: str,
    latest: tuple[int, int] | None,
    events: list[dict[str, Any]],
) -> DenseValidated:
    """Every check over the meters ``rows`` and intervals ``[i0, i1)``; events appended."""
    n_m, n_int = rows.size, i1 - i0
    step = w.step
    sub = _Sub(w, rows, i0, i1, reads.present[rows])
    bits = np.zeros((n_m, n_int), dtype=np.int64)
    bits |= reads.bits[rows, i0:i1]
    # --- energy --------------------------------------------------------------------------
    steps = register_track(*sub.register(now_ns, p), p)
    bv = boundary_values(sub, steps, p)
    sec, kwh, valid, stepbad = interval_energy(bv, sub.ct)
    bits |= np.where(~valid, BIT["gap"], 0)
    bits |= np.where(stepbad, BIT["register_decrease"], 0)
    bits |= np.where(bv.rolled, BIT["rollover"], 0)
    bits |= np.where(bv.misaligned[:, :-1] | bv.misaligned[:, 1:], BIT["misaligned"], 0)
    ctx = electrical_context(sub)
    outage = outage_check(ctx, sub, p)
    bits |= np.where(outage, BIT["outage"], 0)
    # --- hard checks ---------------------------------------------------------------------
    limit = runaway_limit(sub, p, interval_s)
    runaway = runaway_check(sec, ctx, limit, p, interval_s)
    bits |= np.where(runaway, BIT["runaway"], 0)
    unchanged = valid & ~stepbad & strictly_less(np.abs(sec), float(p.register_resolution_kwh))
    stuck = stuck_check(unchanged, ctx, sub, p, interval_s)
    bits |= np.where(stuck, BIT["stuck_register"], 0)
    zero = zero_check(unchanged, outage, p, interval_s)
    bits |= np.where(zero, BIT["zero_consumption"], 0)
    hard_mask = sum(BIT[c] for c in HARD_REASONS)
    actual = (bits & hard_mask) == 0
    # --- days ----------------------------------------------------------------------------
    days = local_days(sub.bounds, step, timezone, n_m, kwh, actual, outage)
    bits |= spike_check(days, p)
    bits |= usage_check(days, p)
    # --- energy vs power, clock ----------------------------------------------------------
    power_check(sub, steps, p, bits, events, step)
    clock_check(w, sub, reads, now_ns, p, bits, events, latest)
    # --- estimation ----------------------------------------------------------------------
    est = estimate(sub, bits, actual, outage, kwh, bv, days, limit, p, interval_s)
    final, quality, method, estimated = est
    excess_len = int(math.floor(p.max_consecutive_estimated_s / interval_s + 1e-9)) + 1
    excess = _run_mask(estimated, excess_len)
    bits |= np.where(excess, BIT["estimation_excess"], 0)
    # --- events for the billing detectors --------------------------------------------------
    ids = sub.ids
    _episode_events(
        events,
        "register_decrease",
        bits & BIT["register_decrease"] > 0,
        ids,
        sub.bounds,
        sec,
        {"decrease_tolerance_kwh": p.decrease_tolerance_kwh},
    )
    ib = sub.ib
    _episode_events(
        events,
        "stuck_register",
        stuck,
        ids,
        sub.bounds,
        sec,
        {
            "stuck_hours": p.stuck_hours,
            "stuck_current_fraction": p.stuck_current_fraction,
            "register_resolution_kwh": p.register_resolution_kwh,
        },
        extra=lambda m: {
            "rated_current_a": ib[m],
            "current_threshold_a": p.stuck_current_fraction * ib[m],
        },
        current=ctx.i_min,
    )
    un, imax, phases = sub.un, sub.imax, sub.phases
    _episode_events(
        events,
        "runaway",
        runaway,
        ids,
        sub.bounds,
        sec,
        {"runaway_factor": p.runaway_factor},
        extra=lambda m: {
            "limit_kwh_per_interval": limit[m],
            "nominal_voltage_v": un[m],
            "max_current_a": imax[m],
            "phases": phases[m],
        },
    )
    _episode_events(
        events,
        "estimation_excess",
        excess,
        ids,
        sub.bounds,
        final,
        {"max_consecutive_estimated_s": p.max_consecutive_estimated_s, "interval_s": interval_s},
    )
    return DenseValidated(ids, sub.bounds, final, quality, method, bits, actual)


@dataclass(frozen=True)
class DenseValidated:
    """Validated intervals as meters x intervals arrays (the long table is made on demand)."""

    ids: np.ndarray
    bounds: np.ndarray
    kwh: np.ndarray
    #: Index into QUALITIES.
    quality: np.ndarray
    #: Index into METHODS.
    method: np.ndarray
    bits: np.ndarray
    actual: np.ndarray

    @staticmethod
    def concat(parts: list[DenseValidated]) -> DenseValidated:
        """Chunks of meters (same intervals) as one."""
        return DenseValidated(
            np.concatenate([d.ids for d in parts]),
            parts[0].bounds,
            *(
                np.concatenate([getattr(d, f) for d in parts])
                for f in ("kwh", "quality", "method", "bits", "actual")
            ),
        )

    def frame(self, rule_set_version: str, data_version: int) -> pd.DataFrame:
        n_m, n_int = self.kwh.shape
        qual_names = np.array(QUALITIES, dtype=object)
        meth = np.where(self.actual, "register_delta", METHODS[self.method])
        meth = np.where(self.quality == QUALITIES.index("missing"), "", meth)
        return pd.DataFrame(
            {
                "meter_id": np.repeat(self.ids, n_int),
                "interval_start": _ts(np.tile(self.bounds[:-1], n_m)),
                "ts": _ts(np.tile(self.bounds[1:], n_m)),
                "kwh": self.kwh.ravel(),
                "quality": qual_names[self.quality.ravel()],
                "method": meth.ravel().astype(object),
                "reasons": _decode(self.bits.ravel()),
                "rule_set_version": rule_set_version,
                "data_version": np.int64(data_version),
            }
        )


#: Estimation methods by code (0: none).
METHODS = np.array(
    ["", "linear_interpolation", "like_day_average", "register_prorate"], dtype=object
)


@dataclass
class _Reads:
    """Which window cells VEE uses, and read-level reason bits (meters x cells)."""

    present: np.ndarray
    bits: np.ndarray


def usable_reads(w: Window, now_ns: int | None, p: VeeParams, counts: dict[str, int]) -> _Reads:
    """Read-level structure flags: ``duplicate_ts`` (a meter and ts given more than once),
    ``out_of_order`` (a read that came after a later one of its meter), ``future_ts`` (read
    after ``now + future_tolerance_s`` [s]: not used). Counts rows per problem."""
    bits = np.zeros(w.t.shape, dtype=np.int64)
    present = w.present.copy()
    dq = w.dq
    g_code, g_t, g_rows = dq.duplicate_groups
    counts["rows_duplicate_ts"] = int(g_rows.sum())
    _mark(w, bits, g_code, g_t, BIT["duplicate_ts"])
    o_code, o_t = dq.out_of_order
    counts["rows_out_of_order"] = int(o_code.size)
    _mark(w, bits, o_code, o_t, BIT["out_of_order"])
    if now_ns is not None:
        future = present & (w.t > now_ns + int(p.future_tolerance_s * _NS))
        counts["rows_future_ts"] = int(future.sum())
        bits |= np.where(future, BIT["future_ts"], 0)
        present &= ~future
    else:
        counts["rows_future_ts"] = 0
    return _Reads(present, bits)


def _mark(w: Window, bits: np.ndarray, codes: np.ndarray, t: np.ndarray, bit: int) -> None:
    """Set ``bit`` on the cells holding the instants ``t`` of meters ``codes``."""
    if codes.size == 0:
        return
    col = (t - w.g0 - 1) // w.step
    ok = (col >= 0) & (col < w.n_cells)
    bits[codes[ok], col[ok]] |= bit


def interval_range(
    w: Window, reads: _Reads, start: Any, end: Any, fleet: Extent | None = None
) -> tuple[int, int, np.ndarray]:
    """Window columns ``[i0, i1)`` that are the VEE intervals, and the meter rows judged.

    With ``start``/``end``: that period, every registered meter. Else: from the first boundary
    after the earliest usable read to the last boundary before the latest (of the whole fleet
    when ``fleet`` is given: the window is one partition of it), meters with reads.
    """
    if start is not None and end is not None:
        i0 = int((_to_ns(pd.Timestamp(start)) // w.step * w.step - w.g0) // w.step)
        i1 = int((-(-_to_ns(pd.Timestamp(end)) // w.step) * w.step - w.g0) // w.step)
        return max(i0, 0), min(i1, w.n_cells), np.arange(w.n_meters)
    has_any = reads.present
    if not has_any.any():
        return 0, 0, np.zeros(0, dtype=np.int64)
    # Reductions over the usable reads only (no masked copies of the window's times).
    t_max = int(np.max(w.t, where=has_any, initial=NO_TIME))
    t_min = int(np.min(w.t, where=has_any, initial=np.iinfo(np.int64).max))
    if fleet is not None:
        t_min, t_max = fleet.first, fleet.last
    b_first = -(-t_min // w.step) * w.step
    b_last = t_max // w.step * w.step
    if start is not None:
        b_first = _to_ns(pd.Timestamp(start)) // w.step * w.step
    if end is not None:
        b_last = -(-_to_ns(pd.Timestamp(end)) // w.step) * w.step
    i0 = int((b_first - w.g0) // w.step)
    i1 = int((b_last - w.g0) // w.step)
    return i0, i1, np.flatnonzero(has_any.any(axis=1))


class _Sub:
    """The judged meters and intervals of a window, with their registry arrays."""

    def __init__(self, w: Window, rows: np.ndarray, i0: int, i1: int, present: np.ndarray):
        self.w, self.rows, self.i0, self.i1 = w, rows, i0, i1
        #: ``rows`` as a slice when they are consecutive (e.g. a chunk of a window whose
        #: meters are all judged): views instead of copies.
        consecutive = rows.size > 0 and int(rows[-1]) - int(rows[0]) + 1 == rows.size
        self.sel: slice | np.ndarray = (
            slice(int(rows[0]), int(rows[-1]) + 1)
            if consecutive and bool(np.all(np.diff(rows) == 1))
            else rows
        )
        m = w.meters
        self.ids = m.ids[rows]
        self.ct = m.ct_ratio[rows]
        self.phases = m.phases[rows]
        self.un = m.nominal_voltage_v[rows]
        self.ib = m.rated_current_a[rows]
        self.imax = m.max_current_a[rows]
        #: Usable reads of these meters over the whole window (boundaries look beyond i0..i1).
        self.present_all = present
        self.t_all = np.where(present, w.t[rows], NO_TIME)
        self.bounds = w.g0 + np.arange(i0, i1 + 1, dtype=np.int64) * w.step
        self.k = 1

    def register(
        self, now_ns: int | None, p: VeeParams
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The register's usable reads in time order: ``(values, t, usable)`` over positions
        (two per cell when cells hold several reads, :func:`~meterwatch.analytics.window.register_reads`)."""
        v, t, k = register_reads(self.w, rows=self.sel)
        usable = t != NO_TIME
        if now_ns is not None:
            usable &= t <= now_ns + int(p.future_tolerance_s * _NS)
        self.k = k
        self.t_reg = np.where(usable, t, NO_TIME)
        return v, self.t_reg, usable

    def cells(self, name: str) -> np.ndarray:
        """A quantity over the judged intervals, NaN where no usable read."""
        return np.where(self.present_all[:, self.i0 : self.i1], self.raw(name), np.nan)

    def raw(self, name: str) -> np.ndarray:
        """A quantity over the judged meters and intervals as the window holds it (a view
        when every meter is judged)."""
        return self.w.q(name)[self.sel, self.i0 : self.i1]


@dataclass
class _Track:
    """The register per usable read (meters x cells): unwrapped value, trusted cumulative
    advance, decreases and rollovers so far, and the decrease/recovery steps."""

    unwrapped: np.ndarray
    clean: np.ndarray
    n_bad: np.ndarray
    n_roll: np.ndarray
    bad: np.ndarray
    has: np.ndarray
    prev_col: np.ndarray
    t: np.ndarray
    #: Meters read in every position (their previous read is the previous position).
    full: np.ndarray


def register_track(energy: np.ndarray, t: np.ndarray, present: np.ndarray, p: VeeParams) -> _Track:
    """Register steps between consecutive reads of a meter [kWh, as displayed].

    A fall from ``>= rollover_fraction x register_max_kwh`` to ``< (1 - rollover_fraction) x``
    it is a rollover (the register is unwrapped by ``register_max_kwh +
    register_resolution_kwh``); any other fall by more than ``decrease_tolerance_kwh``
    (compared rounded to 1e-6 kWh) is a decrease, and the step that brings the register back
    to its earlier maximum is its recovery. Sources: register-decrease and rollover rules
    [OR-NEG] (docs/billing.md).
    """
    has = present & ~np.isnan(energy)
    full = has.all(axis=1)  # read in every position: previous read = previous position
    prev_col, prev = prev_present(energy, has)
    same_prev = has & (prev_col >= 0)
    top = float(p.register_max_kwh)
    with np.errstate(invalid="ignore"):
        rollover = (
            same_prev
            & (prev >= p.rollover_fraction * top)
            & (energy < (1 - p.rollover_fraction) * top)
        )
    modulus = top + float(p.register_resolution_kwh)
    # Rollovers and decreases are rare: their bookkeeping is paid only when there are some.
    if rollover.any():
        wraps = np.cumsum(rollover, axis=1)
        unwrapped = np.where(has, energy + wraps * modulus, np.nan)
        prev_u = take_prev(unwrapped, prev_col, full)
    else:
        wraps = np.zeros(energy.shape, dtype=np.int64)
        unwrapped = energy if has.all() else np.where(has, energy, np.nan)
        prev_u = prev
    delta = np.where(same_prev, unwrapped - prev_u, 0.0)
    decrease = same_prev & strictly_greater(-np.round(delta, 6), float(p.decrease_tolerance_kwh))
    if decrease.any():
        # A recovery (back to the earlier maximum) can only follow a decrease.
        runmax = np.fmax.accumulate(unwrapped, axis=1)
        runmax_prev = take_prev(runmax, prev_col, full)
        tol = float(p.decrease_tolerance_kwh)
        with np.errstate(invalid="ignore"):
            in_dip_before = same_prev & (prev_u < runmax_prev - tol)
            recovery = in_dip_before & (unwrapped >= runmax_prev - tol) & ~decrease
        bad = decrease | recovery
        clean = np.cumsum(np.where(bad | ~same_prev, 0.0, delta), axis=1)
        n_bad = np.cumsum(bad, axis=1)
    else:
        bad = decrease
        clean = np.cumsum(delta, axis=1)  # delta is 0 where there is no previous read
        n_bad = np.zeros(energy.shape, dtype=np.int64)
    return _Track(unwrapped, clean, n_bad, wraps, bad, has, prev_col, t, full)


@dataclass
class _Boundaries:
    value: np.ndarray
    ok: np.ndarray
    nb_before: np.ndarray
    nb_after: np.ndarray
    nr_before: np.ndarray
    nr_after: np.ndarray
    misaligned: np.ndarray
    rolled: np.ndarray


def boundary_values(sub: _Sub, tr: _Track, p: VeeParams) -> _Boundaries:
    """The register interpolated at every interval boundary [kWh, as displayed].

    Linear between the last read at or before the boundary and the first at or after it, if
    they are at most ``max_read_spacing_intervals`` [intervals] apart (a read on the boundary
    is used as is); else the boundary is unknown (``gap``). Boundaries more than
    ``alignment_tolerance_s`` [s] from the nearest read are ``misaligned``. Source: interval
    energy from register reads, California interval VEE [CA-130], docs/billing.md.

    Meters read exactly at every boundary (one read per cell, at its end: the usual case)
    take the read itself; only the others are interpolated.
    """
    t, kk = tr.t, sub.k
    n_m, n_c = tr.has.shape  # positions: kk per cell
    k = np.arange(sub.i0, sub.i1 + 1)  # boundary k is the end of cell k - 1
    b = sub.bounds
    j = k * kk - 1  # the position of cell k - 1's last read
    known = j >= 0
    direct = tr.full.copy() if kk == 1 else np.zeros(n_m, dtype=bool)
    if direct.any() and known.any():
        direct &= (t[:, j[known]] == b[known][None, :]).all(axis=1)
    n_b = k.size
    value = np.full((n_m, n_b), np.nan)
    ok = np.zeros((n_m, n_b), dtype=bool)
    misaligned = np.zeros((n_m, n_b), dtype=bool)
    nb_b = np.full((n_m, n_b), -1, dtype=np.int64)
    nb_a = np.full((n_m, n_b), -2, dtype=np.int64)
    nr_b = np.full((n_m, n_b), -1, dtype=np.int64)
    nr_a = np.full((n_m, n_b), -2, dtype=np.int64)
    d = np.flatnonzero(direct)
    if d.size and known.any():
        # Boundaries with a read before them are a suffix; their reads are consecutive
        # positions (one per cell): slices, and a row slice when every meter is direct.
        kc = slice(int(np.argmax(known)), None)
        jk = slice(int(j[known][0]), int(j[known][-1]) + 1)
        rs: slice | np.ndarray = slice(None) if d.size == n_m else d
        value[rs, kc] = tr.clean[rs, jk]
        ok[rs, kc] = True
        nb = tr.n_bad[rs, jk]
        nr = tr.n_roll[rs, jk]
        nb_b[rs, kc], nb_a[rs, kc] = nb, nb
        nr_b[rs, kc], nr_a[rs, kc] = nr, nr
    g = np.flatnonzero(~direct)
    if g.size:
        parts = _interpolated(
            tr.has[g], t[g], tr.clean[g], tr.n_bad[g], tr.n_roll[g], j, b, float(sub.w.step), p
        )
        for target, part in zip(
            (value, ok, misaligned, nb_b, nb_a, nr_b, nr_a), parts, strict=True
        ):
            target[g] = part
    valid = ok[:, :-1] & ok[:, 1:]
    rolled = valid & (nr_a[:, 1:] != nr_b[:, :-1])
    return _Boundaries(value, ok, nb_b, nb_a, nr_b, nr_a, misaligned, rolled)


def _interpolated(
    has: np.ndarray,
    t: np.ndarray,
    clean: np.ndarray,
    n_bad: np.ndarray,
    n_roll: np.ndarray,
    j: np.ndarray,
    b: np.ndarray,
    step: float,
    p: VeeParams,
) -> tuple[np.ndarray, ...]:
    """:func:`boundary_values` for meters not read exactly at every boundary: ``(value, ok,
    misaligned, n_bad before, n_bad after, n_roll before, n_roll after)`` per boundary."""
    n_m, n_c = has.shape
    cols = np.arange(n_c)
    last_idx = np.maximum.accumulate(np.where(has, cols[None, :], -1), axis=1)
    next_idx = np.minimum.accumulate(np.where(has, cols[None, :], n_c)[:, ::-1], axis=1)[:, ::-1]
    jc = np.clip(j, 0, n_c - 1)
    before = np.where(j[None, :] >= 0, last_idx[:, jc], -1)
    on_b = (j[None, :] >= 0) & has[:, jc] & (t[:, jc] == b[None, :])
    first_after = j + 1  # the first position of cell k
    nxt = np.where(first_after < n_c, next_idx[:, np.minimum(first_after, n_c - 1)], n_c)
    after = np.where(on_b, j[None, :], nxt)
    rows = np.arange(n_m)[:, None]
    ok_idx = (before >= 0) & (after < n_c)
    bc, ac = np.maximum(before, 0), np.minimum(after, n_c - 1)
    t_b = np.where(ok_idx, t[rows, bc], 0).astype(float)
    t_a = np.where(ok_idx, t[rows, ac], 0).astype(float)
    spacing = np.where(ok_idx, t_a - t_b, np.inf)
    b_ok = np.isfinite(spacing) & (spacing <= p.max_read_spacing_intervals * step * (1 + REL_TOL))
    frac = np.divide(
        b[None, :] - t_b,
        spacing,
        out=np.zeros(spacing.shape),
        where=np.isfinite(spacing) & (spacing > 0),
    )
    c_b, c_a = clean[rows, bc], clean[rows, ac]
    value = np.where(b_ok, c_b + (c_a - c_b) * frac, np.nan)
    nearest = np.fmin(np.abs(b[None, :] - t_b), np.abs(t_a - b[None, :]))
    misaligned = b_ok & (nearest > p.alignment_tolerance_s * _NS)
    nb_b = np.where(ok_idx, n_bad[rows, bc], -1)
    nb_a = np.where(ok_idx, n_bad[rows, ac], -2)
    nr_b = np.where(ok_idx, n_roll[rows, bc], -1)
    nr_a = np.where(ok_idx, n_roll[rows, ac], -2)
    return value, b_ok, misaligned, nb_b, nb_a, nr_b, nr_a


def interval_energy(
    bv: _Boundaries, ct: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(register delta [kWh], billed kWh = delta x ct_ratio, valid, decreased)`` per interval.

    An interval is valid when both its boundaries are known; its delta is untrusted
    (``register_decrease``) when a decrease or its recovery lies between them.
    """
    valid = bv.ok[:, :-1] & bv.ok[:, 1:]
    sec = bv.value[:, 1:] - bv.value[:, :-1]
    stepbad = valid & (bv.nb_after[:, 1:] != bv.nb_before[:, :-1])
    sec = np.where(valid & ~stepbad, sec, np.nan)
    return sec, sec * ct[:, None], valid, stepbad


@dataclass
class _Context:
    i_min: np.ndarray
    v_max: np.ndarray
    p_max: np.ndarray


def electrical_context(sub: _Sub) -> _Context:
    """Per interval: the highest phase current [A] and voltage [V] of its read (present
    phases only), and the highest ``power_kw`` read in the interval or at its start [kW]."""
    pres = sub.w.meters.present[sub.sel]
    used = sub.present_all[:, sub.i0 : sub.i1]

    def phase_max(cols: tuple[str, ...]) -> np.ndarray:
        # fmax ignores NaN: NaN only where no present phase has a value; no warnings.
        out: np.ndarray | None = None
        for ph, col in enumerate(cols):  # the three phases
            v = sub.raw(col)
            if not pres[:, ph].all():
                v = np.where(pres[:, ph, None], v, np.float32(np.nan))
            out = v if out is None else np.fmax(out, v)
        assert out is not None
        return np.where(used, out.astype(float), np.nan)

    i_read = phase_max(CURRENT_COLUMNS)
    v_read = phase_max(VOLTAGE_COLUMNS)
    p_read = np.where(used, sub.raw("power_kw").astype(float), np.nan)
    n_m = p_read.shape[0]
    w = sub.w
    if sub.i0 > 0:  # the read at the start of the first interval
        prev = np.where(
            sub.present_all[:, sub.i0 - 1], w.q("power_kw")[sub.sel, sub.i0 - 1], np.nan
        )
    else:
        prev = np.full(n_m, np.nan)
    p_max = p_read.copy()
    if p_read.shape[1]:
        p_max[:, 0] = np.fmax(p_read[:, 0], prev)
        np.fmax(p_read[:, 1:], p_read[:, :-1], out=p_max[:, 1:])
    return _Context(i_read, v_read, p_max)


def outage_check(ctx: _Context, sub: _Sub, p: VeeParams) -> np.ndarray:
    """Every phase below ``outage_voltage_fraction x Un`` (``outage``; not verified, kept as
    the phase-break level, docs/billing.md)."""
    return strictly_less(ctx.v_max, p.outage_voltage_fraction * sub.un[:, None])


def runaway_limit(sub: _Sub, p: VeeParams, interval_s: int) -> np.ndarray:
    """Largest register advance per interval: ``runaway_factor x Un x Imax x phases x
    interval`` [kWh] (issue #5)."""
    out: np.ndarray = (
        p.runaway_factor * sub.un * sub.imax * sub.phases * (interval_s / 3600.0) / 1000.0
    )
    return out


def runaway_check(
    sec: np.ndarray, ctx: _Context, limit: np.ndarray, p: VeeParams, interval_s: int
) -> np.ndarray:
    """Register advance above the runaway limit, unless the meter's own power reads account for
    it within the same factor (then it is overloaded, not running away, and kept)."""
    supported = at_least(p.runaway_factor * ctx.p_max * (interval_s / 3600.0), sec)
    return strictly_greater(sec, limit[:, None]) & ~supported


def stuck_check(
    unchanged: np.ndarray, ctx: _Context, sub: _Sub, p: VeeParams, interval_s: int
) -> np.ndarray:
    """Register unchanged for ``stuck_hours`` [h] while the current is at least
    ``stuck_current_fraction x Ib`` (issue #5; vendor load condition [VND-3P])."""
    loaded = at_least(ctx.i_min, p.stuck_current_fraction * sub.ib[:, None])
    stuck_len = max(int(math.ceil(p.stuck_hours * 3600 / interval_s - 1e-9)), 1)
    return _run_mask(unchanged & loaded, stuck_len)


def zero_check(
    unchanged: np.ndarray, outage: np.ndarray, p: VeeParams, interval_s: int
) -> np.ndarray:
    """No register count for ``zero_consumption_hours`` [h] outside outages [OR-ZERO]."""
    zero_len = max(int(math.ceil(p.zero_consumption_hours * 3600 / interval_s - 1e-9)), 1)
    return _run_mask(unchanged & ~outage, zero_len)


@dataclass
class _Days:
    A: np.ndarray
    qualifies: np.ndarray
    complete: np.ndarray
    weekend: np.ndarray
    day_idx: np.ndarray
    slot: np.ndarray


@functools.lru_cache(maxsize=16)
def _calendar(
    start_ns: int, n_bounds: int, step: int, timezone: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The local-day layout of the intervals that start at ``start_ns + k x step`` [ns] for
    ``k < n_bounds - 1``: each interval's day and slot, which days are weekend days, the
    slots each day has (23, 24 or 25 hours' worth) and how many of them are in the grid. The
    same for every chunk of meters of a window: computed once (arrays read-only)."""
    starts = start_ns + np.arange(n_bounds - 1, dtype=np.int64) * step
    local = pd.DatetimeIndex(pd.to_datetime(starts, utc=True)).tz_convert(timezone)
    local_date = local.normalize()
    day_keys, day_idx = np.unique(local_date.asi8, return_inverse=True)
    day_idx = day_idx.reshape(-1)
    slot = ((local.asi8 - local_date.asi8) // step).astype(np.int64)
    days = pd.DatetimeIndex(pd.to_datetime(day_keys, utc=True)).tz_convert(timezone)
    weekend = days.day_of_week.to_numpy() >= 5
    expected_slots = (
        np.array(
            [(d + pd.DateOffset(days=1)).normalize() - d for d in days], dtype="timedelta64[ns]"
        ).astype(np.int64)
        // step
    )
    slots_in_grid = np.bincount(day_idx, minlength=day_keys.size)
    out = (day_idx, slot, weekend, expected_slots, slots_in_grid)
    for a in out:
        a.flags.writeable = False
    return out


def local_days(
    bounds: np.ndarray,
    step: int,
    timezone: str,
    n_m: int,
    kwh: np.ndarray,
    actual: np.ndarray,
    outage: np.ndarray,
) -> _Days:
    """Actual interval energy as meters x local days x slots, and which days are complete
    (every slot actual) and qualify as like days (complete, no outage)."""
    day_idx, slot, weekend, expected_slots, slots_in_grid = _calendar(
        int(bounds[0]), int(bounds.size), int(step), timezone
    )
    n_days, n_slots = weekend.size, int(slot.max()) + 1

    def cube(values: np.ndarray) -> np.ndarray:
        out = np.full((n_m, n_days, n_slots), np.nan)
        out[:, day_idx, slot] = values
        return out

    A = cube(np.where(actual, kwh, np.nan))
    n_actual = np.sum(~np.isnan(A), axis=2)
    n_outage = np.sum(cube(outage.astype(float)) > 0, axis=2)
    complete = (slots_in_grid == expected_slots)[None, :] & (n_actual == expected_slots[None, :])
    qualifies = complete & (n_outage == 0)
    return _Days(A, qualifies, complete, weekend, day_idx, slot)


def spike_check(d: _Days, p: VeeParams) -> np.ndarray:
    """The day's highest interval above ``spike_ratio`` x its third-highest and more than
    ``spike_floor_kwh`` above it (Oracle Interval Spike Check [OR-SPIKE], California
    [CA-150]); the reason bits per interval."""
    A = d.A
    n_m = A.shape[0]
    out = np.zeros((n_m, d.day_idx.size), dtype=np.int64)
    if A.shape[2] < 3:
        return out
    with np.errstate(invalid="ignore"):
        srt = -np.sort(-np.where(np.isnan(A), -np.inf, A), axis=2)
    h1, h3 = srt[:, :, 0], srt[:, :, 2]
    h3 = np.where(np.isfinite(h3), h3, np.nan)
    h1 = np.where(np.isfinite(h1), h1, np.nan)
    spike_day = (
        np.isfinite(h3)
        & strictly_greater(h1, p.spike_ratio * h3)
        & strictly_greater(h1 - h3, p.spike_floor_kwh)
    )
    is_max = (A == h1[:, :, None]) & spike_day[:, :, None]
    return np.where(is_max[:, d.day_idx, d.slot], BIT["spike"], 0)


def usage_check(d: _Days, p: VeeParams) -> np.ndarray:
    """A complete day's total above ``high_usage_ratio`` or below ``low_usage_ratio`` x the
    mean of the complete days of the same day type in the previous ``usage_history_days``,
    by more than ``usage_floor_kwh`` (issue #5; [OR-HILO], [CUR-HILO])."""
    total = np.where(d.complete, np.nansum(d.A, axis=2), np.nan)
    n_m, n_days = total.shape
    hist_sum = np.zeros((n_m, n_days))
    hist_n = np.zeros((n_m, n_days))
    weekend = d.weekend
    for k in range(1, int(p.usage_history_days) + 1):  # loop over days of history
        if k >= n_days:
            break
        prior = np.where((weekend[:-k] == weekend[k:])[None, :], total[:, :-k], np.nan)
        hist_sum[:, k:] += np.nan_to_num(prior)
        hist_n[:, k:] += ~np.isnan(prior)
    mean = np.divide(hist_sum, hist_n, out=np.full_like(hist_sum, np.nan), where=hist_n > 0)
    high = strictly_greater(total, p.high_usage_ratio * mean) & strictly_greater(
        total - mean, p.usage_floor_kwh
    )
    low = strictly_less(total, p.low_usage_ratio * mean) & strictly_greater(
        mean - total, p.usage_floor_kwh
    )
    return np.where(high[:, d.day_idx], BIT["high_usage"], 0) | np.where(
        low[:, d.day_idx], BIT["low_usage"], 0
    )


def power_check(
    sub: _Sub, tr: _Track, p: VeeParams, bits: np.ndarray, events: list[dict[str, Any]], step: int
) -> None:
    """Register advance vs trapezoid-integrated ``power_kw`` per meter and window.

    Read pairs of one meter with both values, at most ``max_read_spacing_intervals`` apart
    and without a register decrease, are summed per window of ``mismatch_window_hours``
    (from the grid start); windows whose pairs cover less than ``mismatch_min_coverage`` of
    them are not judged. ``r = energy / integrated power``: with ``ct_ratio > 1`` a ratio
    within ``multiplier_tolerance`` of ``ct_ratio`` or ``1/ct_ratio`` is a multiplier
    mismatch (one of the two quantities is on the primary side); otherwise a difference of
    more than ``mismatch_tolerance`` of the larger and more than ``mismatch_floor_kwh`` is an
    energy/power mismatch. Sets the bits of the windows' intervals and appends events.
    """
    w = sub.w
    cell_power = w.q("power_kw")[sub.sel].astype(float)
    power: np.ndarray
    if sub.k == 2:  # power is kept for a cell's last read only
        power = np.full(tr.has.shape, np.nan)
        power[:, 1::2] = cell_power
    else:
        power = cell_power
    power = np.where(tr.has, power, np.nan)
    p_prev = take_prev(power, tr.prev_col, tr.full)
    t = tr.t
    # Times as float seconds-since-g0 are exact enough for spacing (ns since the grid start).
    g0 = int(sub.bounds[0])
    t_rel = np.where(tr.has, t - g0, 0).astype(float)
    dt = t_rel - np.nan_to_num(take_prev(t_rel, tr.prev_col, tr.full), nan=-float(g0))
    pair = (
        tr.has
        & (tr.prev_col >= 0)
        & ~tr.bad
        & np.isfinite(power)
        & np.isfinite(p_prev)
        & (dt <= p.max_read_spacing_intervals * step * (1 + REL_TOL))
        & (t > g0)
    )
    if not pair.any():
        return
    u_prev = take_prev(tr.unwrapped, tr.prev_col, tr.full)
    e_pos = np.where(pair, tr.unwrapped - u_prev, 0.0)
    p_pos = np.where(
        pair, (np.maximum(power, 0) + np.maximum(p_prev, 0)) / 2 * dt / (3600.0 * _NS), 0.0
    )
    dt_pos = np.where(pair, dt, 0.0)
    w_len = int(p.mismatch_window_hours * 3600 * _NS)
    n_m = power.shape[0]
    kk = sub.k
    if w_len % step == 0:
        # Windows are whole cells: a read's window is its cell's, so sums per (meter,
        # window) are sums over blocks of columns (a reshape, no sort or gather).
        per = (w_len // step) * kk
        first = sub.i0 * kk  # positions before it are at or before the grid start
        n_pos = tr.has.shape[1] - first
        n_win = max(-(-n_pos // per), 1)

        def block_sum(a: np.ndarray) -> np.ndarray:
            x = np.zeros((n_m, n_win * per), dtype=float)
            x[:, :n_pos] = a[:, first:]
            out: np.ndarray = x.reshape(n_m, n_win, per).sum(axis=2)
            return out

        e_all, p_all, dt_all = block_sum(e_pos), block_sum(p_pos), block_sum(dt_pos)
        n_all = block_sum(pair.astype(float)).astype(np.int64)
    else:
        m_idx, c_idx = np.nonzero(pair)
        win = (t[pair] - 1 - g0) // w_len
        n_win = int(win.max()) + 1
        key = m_idx.astype(np.int64) * n_win + win
        size = n_m * n_win

        def key_sum(a: np.ndarray) -> np.ndarray:
            out: np.ndarray = np.bincount(key, weights=a[pair], minlength=size)
            return out.reshape(n_m, n_win)

        e_all, p_all, dt_all = key_sum(e_pos), key_sum(p_pos), key_sum(dt_pos)
        n_all = np.bincount(key, minlength=size).reshape(n_m, n_win)
    m_arr, w_arr = np.nonzero((n_all > 0) & at_least(dt_all / w_len, p.mismatch_min_coverage))
    e_w, p_w = e_all[m_arr, w_arr], p_all[m_arr, w_arr]
    dt_w, n_pairs = dt_all[m_arr, w_arr], n_all[m_arr, w_arr]
    ctm = sub.ct[m_arr]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = e_w / p_w
        inv = p_w / e_w
    tol = p.multiplier_tolerance
    mult = (
        (ctm > 1)
        & ((np.abs(r - ctm) <= tol * ctm) | (np.abs(inv - ctm) <= tol * ctm))
        & strictly_greater(np.abs(e_w - p_w), p.mismatch_floor_kwh)
    )
    diff = np.abs(e_w - p_w)
    mism = (
        ~mult
        & strictly_greater(diff, p.mismatch_tolerance * np.maximum(e_w, p_w))
        & strictly_greater(diff, p.mismatch_floor_kwh)
    )
    thresholds = {
        "mismatch_window_hours": p.mismatch_window_hours,
        "mismatch_tolerance": p.mismatch_tolerance,
        "mismatch_floor_kwh": p.mismatch_floor_kwh,
        "multiplier_tolerance": p.multiplier_tolerance,
        "mismatch_min_coverage": p.mismatch_min_coverage,
    }
    n_int = bits.shape[1]
    for name, flag in (("multiplier_mismatch", mult), ("energy_power_mismatch", mism)):
        for k in np.flatnonzero(flag):  # loop over findings only
            m_i, w_i = int(m_arr[k]), int(w_arr[k])
            w0 = g0 + w_i * w_len
            col_a = max(int((w0 - g0) // step), 0)
            col_b = min(int((w0 + w_len - g0) // step), n_int)
            bits[m_i, col_a:col_b] |= BIT[name]
            events.append(
                {
                    "meter_id": sub.ids[m_i],
                    "code": name,
                    "starts_at": w0,
                    "ends_at": w0 + w_len,
                    "evidence": {
                        "thresholds": thresholds,
                        "register_kwh": float(e_w[k]),
                        "integrated_power_kwh": float(p_w[k]),
                        "ratio": float(r[k]) if np.isfinite(r[k]) else None,
                        "ct_ratio": float(ctm[k]),
                        "read_pairs": int(n_pairs[k]),
                        "coverage": float(dt_w[k] / w_len),
                    },
                }
            )


def clock_check(
    w: Window,
    sub: _Sub,
    reads: _Reads,
    now_ns: int | None,
    p: VeeParams,
    bits: np.ndarray,
    events: list[dict[str, Any]],
    latest: tuple[int, int] | None = None,
) -> None:
    """Meter clock ahead by more than ``clock_tolerance_s`` [s] ([SG-CLK], docs/billing.md).

    Where the collector's receipt time is known (``collected_at``), every read is judged on
    its own: the meter's time (``device_ts`` where it reported its clock, else ``ts``) ahead of
    ``collected_at``. Meters without receipt times: their latest read vs the reference (now,
    or else the latest read of the other meters, from ``latest``: the two latest per-meter
    last reads of all meters, :func:`_latest_two` or the fleet's).
    """
    n_m = sub.rows.size
    t_all = sub.t_all
    present = sub.present_all
    judged = np.zeros(n_m, dtype=bool)
    step = w.step

    def mark(r: np.ndarray, c: np.ndarray) -> None:
        col = c - sub.i0
        ok = (col >= 0) & (col < bits.shape[1])
        bits[r[ok], col[ok]] |= BIT["clock_error"]

    if "collected_at" in w.times:
        col_at = w.times["collected_at"][sub.sel]
        known = present & (col_at != NO_TIME)
        judged = known.any(axis=1)
        own = t_all
        if "device_ts" in w.times:
            dev = w.times["device_ts"][sub.sel]
            own = np.where(dev != NO_TIME, dev, t_all)
        lead = np.where(known, own - col_at, 0)
        fast = known & strictly_greater(lead.astype(float), p.clock_tolerance_s * _NS)
        if fast.any():
            fr, fc = np.nonzero(fast)
            mark(fr, fc)
            for m_a in np.unique(fr).tolist():  # loop over findings only
                sel = fr == m_a
                cs = fc[sel]
                leads = lead[m_a, cs]
                owns = own[m_a, cs]
                events.append(
                    {
                        "meter_id": sub.ids[m_a],
                        "code": "clock_error",
                        "starts_at": int(t_all[m_a, cs].min()),
                        "ends_at": None,
                        "evidence": {
                            "latest_read": pd.Timestamp(int(owns.max()), tz="UTC"),
                            "reference": pd.Timestamp(int(owns.max() - leads.max()), tz="UTC"),
                            "reference_kind": "collected_at",
                            "lead_s": float(leads.max()) / _NS,
                            "reads_ahead": int(cs.size),
                            "thresholds": {"clock_tolerance_s": p.clock_tolerance_s},
                        },
                    }
                )
    if not present.any():
        return
    last = np.where(present, t_all, NO_TIME).max(axis=1)
    has = last != NO_TIME
    if now_ns is not None:
        ref = np.full(n_m, float(now_ns))
    else:
        if latest is None:
            raise ValueError("clock_check needs now_ns or the latest reads of the other meters")
        top1, top2 = latest
        ref = np.where(last == top1, top2, top1).astype(float)
        ref[ref <= NO_TIME + 1] = np.nan
    lead = last - ref
    ahead = has & strictly_greater(lead, p.clock_tolerance_s * _NS) & ~judged
    for m_a in np.flatnonzero(ahead).tolist():  # loop over findings only
        sel = present[m_a] & (t_all[m_a] > ref[m_a] + p.clock_tolerance_s * _NS)
        cs = np.flatnonzero(sel)
        mark(np.full(cs.size, m_a), cs)
        events.append(
            {
                "meter_id": sub.ids[m_a],
                "code": "clock_error",
                "starts_at": int(t_all[m_a, cs].min()),
                "ends_at": None,
                "evidence": {
                    "latest_read": pd.Timestamp(int(last[m_a]), tz="UTC"),
                    "reference": pd.Timestamp(int(ref[m_a]), tz="UTC"),
                    "reference_kind": "now"
                    if now_ns is not None
                    else "latest read of the other meters",
                    "lead_s": float(lead[m_a]) / _NS,
                    "reads_ahead": int(cs.size),
                    "thresholds": {"clock_tolerance_s": p.clock_tolerance_s},
                },
            }
        )
    del step


def estimate(
    sub: _Sub,
    bits: np.ndarray,
    actual: np.ndarray,
    outage: np.ndarray,
    kwh: np.ndarray,
    bv: _Boundaries,
    days: _Days,
    limit: np.ndarray,
    p: VeeParams,
    interval_s: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Estimates for runs of intervals that are not actual (module docstring, "Estimation").

    Returns ``(final kWh, quality code, method code, estimated mask)``.
    """
    n_m, n_int = kwh.shape
    ct = sub.ct
    hard_mask = sum(BIT[c] for c in HARD_REASONS)
    need = ~actual
    est = np.full((n_m, n_int), np.nan)
    method = np.zeros((n_m, n_int), dtype=np.int8)  # 0 none, 1 linear, 2 like day, 3 prorate
    rows, c0, c1 = _runs(need)
    lengths = c1 - c0 + 1
    V = bv.value
    if rows.size:
        run_id = np.repeat(np.arange(rows.size), lengths)
        r = rows[run_id]
        c = np.repeat(c0, lengths) + (
            np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        )
        pos = c - c0[run_id]
        # Neighbours for linear interpolation: actual, not outage.
        lc, rc = c0 - 1, c1 + 1
        l_ok = lc >= 0
        r_ok = rc < n_int
        lcs, rcs = np.clip(lc, 0, n_int - 1), np.clip(rc, 0, n_int - 1)
        k_l = np.where(l_ok & actual[rows, lcs] & ~outage[rows, lcs], kwh[rows, lcs], np.nan)
        k_r = np.where(r_ok & actual[rows, rcs] & ~outage[rows, rcs], kwh[rows, rcs], np.nan)
        linear_ok = (
            (lengths * interval_s <= p.linear_max_gap_s * (1 + REL_TOL))
            & np.isfinite(k_l)
            & np.isfinite(k_r)
        )
        lin = k_l[run_id] + (k_r[run_id] - k_l[run_id]) * (pos + 1) / (lengths[run_id] + 1)
        # Like-day values only for the meters with something to estimate (a few).
        mrows = np.unique(rows)
        like = _like_days(days.A[mrows], days.qualifies[mrows], days.weekend, p)
        ld = like[np.searchsorted(mrows, r), days.day_idx[c], days.slot[c]]
        ld_ok_run = pd.Series(np.isfinite(ld)).groupby(run_id).all().to_numpy()
        # Register delta across a pure data gap with actual boundary reads.
        pure = (
            pd.Series((bits[r, c] & (hard_mask & ~BIT["gap"])) == 0)
            .groupby(run_id)
            .all()
            .to_numpy()
        )
        with np.errstate(invalid="ignore"):
            same_steps = (bv.nb_before[rows, c0] == bv.nb_after[rows, c1 + 1]) & (
                bv.nr_before[rows, c0] == bv.nr_after[rows, c1 + 1]
            )
        known = pure & bv.ok[rows, c0] & bv.ok[rows, c1 + 1] & same_steps
        delta_run = np.where(known, (V[rows, c1 + 1] - V[rows, c0]) * ct[rows], np.nan)
        m_run = np.where(linear_ok, 1, np.where(ld_ok_run, 2, np.where(known, 3, 0)))
        # A run without one complete method still takes like-day values where they exist.
        m_cell = np.where((m_run[run_id] == 0) & np.isfinite(ld), 2, m_run[run_id])
        value = np.select(
            [m_cell == 1, m_cell == 2, m_cell == 3],
            [lin, ld, delta_run[run_id] / lengths[run_id]],
            np.nan,
        )
        s = pd.Series(np.nan_to_num(value)).groupby(run_id).sum().to_numpy()
        scale_ok = known & (m_run > 0) & (m_run < 3)
        factor = np.where(scale_ok & (s > 0), delta_run / np.where(s > 0, s, 1.0), 1.0)
        even = scale_ok & ~(s > 0)
        value = np.where(even[run_id], delta_run[run_id] / lengths[run_id], value * factor[run_id])
        # Estimates validated again: a run whose estimates fail (negative, or above the
        # runaway limit) falls back to spreading its known register delta evenly.
        fails = strictly_less(value, -REL_TOL) | strictly_greater(value / ct[r], limit[r])
        run_fails = pd.Series(fails).groupby(run_id).any().to_numpy() & known & (m_run != 3)
        value = np.where(run_fails[run_id], delta_run[run_id] / lengths[run_id], value)
        m_cell = np.where(run_fails[run_id], 3, m_cell)
        scaled = scale_ok[run_id] | (m_cell == 3)
        est[r, c] = value
        method[r, c] = m_cell
        fin = scaled & np.isfinite(value)
        bits[r[fin], c[fin]] |= BIT["scaled_to_register"]
    # Estimates that still fail (no known delta to fall back on) are rejected.
    est_sec = est / ct[:, None]
    rejected = (
        need
        & np.isfinite(est)
        & (strictly_less(est, -REL_TOL) | strictly_greater(est_sec, limit[:, None]))
    )
    bits |= np.where(rejected, BIT["estimate_rejected"], 0)
    estimated = need & np.isfinite(est) & ~rejected
    final = np.where(actual, kwh, np.where(estimated, est, np.nan))
    quality = np.where(actual, 0, np.where(estimated, 1, 3)).astype(np.int8)
    return final, quality, method, estimated


def regrid(w: Window, step_s: int, *, start: Any = None, end: Any = None) -> Window:
    """The window's reads on cells of ``step_s`` (e.g. 5-minute data for 15-minute VEE):
    rebuilt from its reads, so each keeps its own time; a cell keeps its latest read."""
    pres = w.present
    r, c = np.nonzero(pres)
    frame = pd.DataFrame(
        {
            "meter_id": w.meters.ids[r],
            "ts": pd.to_datetime(w.t[r, c], utc=True),
            **{name: v[r, c].astype(float) for name, v in w.values.items()},
            **{
                name: pd.to_datetime(
                    np.where(v[r, c] == NO_TIME, np.iinfo(np.int64).min, v[r, c]), utc=True
                )
                for name, v in w.times.items()
            },
        }
    )
    for name in w.times:
        frame.loc[w.times[name][r, c] == NO_TIME, name] = pd.NaT
    reg = pd.DataFrame({"meter_id": w.meters.ids})
    if w.fleet is not None and start is None and end is None:
        # One partition of a fleet: cover the fleet's data span (from the cell before its
        # first read, where the fleet's window starts), as the fleet's window would.
        start = pd.Timestamp(w.fleet.first - int(step_s) * _NS, tz="UTC")
        end = pd.Timestamp(w.fleet.last, tz="UTC")
    out = build_window(frame, reg, step_s=step_s, start=start, end=end)
    out.meters = w.meters
    out.dq = w.dq
    out.fleet = w.fleet
    return out


def _to_ns(t: pd.Timestamp) -> int:
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return int(t.value)


def _floor(t: pd.Timestamp, step: int) -> int:
    return _to_ns(t) // step * step


def _result(
    intervals: pd.DataFrame,
    events: pd.DataFrame,
    interval_s: int,
    rule_set_version: str,
    data_version: int,
    counts: dict[str, int],
) -> ValidatedReadings:
    return ValidatedReadings(
        intervals, events, int(interval_s), rule_set_version, int(data_version), counts
    )


def _events_frame(events: list[dict[str, Any]]) -> pd.DataFrame:
    if not events:
        return _empty_events()
    df = pd.DataFrame(events)
    for col in ("starts_at", "ends_at"):
        ns = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        known = np.isfinite(ns)
        t = _ts(np.where(known, ns, 0).astype(np.int64))
        df[col] = t.where(known)
    df = df[list(EVENT_COLUMNS)].sort_values(["meter_id", "code", "starts_at"], kind="mergesort")
    return df.reset_index(drop=True)


def _episode_events(
    events: list[dict[str, Any]],
    code: str,
    mask: np.ndarray,
    meter_ids: np.ndarray,
    bounds: np.ndarray,
    values: np.ndarray,
    thresholds: dict[str, Any],
    extra: Any = None,
    current: np.ndarray | None = None,
) -> None:
    """Append one event per run of ``mask`` along the intervals of a meter."""
    rows, c0, c1 = _runs(np.asarray(mask, dtype=bool))
    n_int = mask.shape[1]
    for m_i, a, b in zip(rows, c0, c1, strict=True):  # loop over findings only
        span = values[m_i, a : b + 1]
        evidence: dict[str, Any] = {
            "thresholds": thresholds,
            "intervals": int(b - a + 1),
            "kwh_max": float(np.nanmax(span)) if np.isfinite(span).any() else None,
            "kwh_total": float(np.nansum(span)),
        }
        if current is not None:
            cur = current[m_i, a : b + 1]
            evidence["current_a_min"] = float(np.nanmin(cur)) if np.isfinite(cur).any() else None
        if extra is not None:
            evidence.update(extra(m_i))
        events.append(
            {
                "meter_id": meter_ids[m_i],
                "code": code,
                "starts_at": int(bounds[a]),
                "ends_at": None if b == n_int - 1 else int(bounds[b + 1]),
                "evidence": evidence,
            }
        )


def _like_days(
    A: np.ndarray, qualifies: np.ndarray, weekend: np.ndarray, p: VeeParams
) -> np.ndarray:
    """Mean of the ``like_days`` nearest qualifying like days per (meter, day, slot) [kWh].

    ``A`` is meters x days x slots of actual interval energy; ``qualifies`` meters x days.
    Days are searched at offsets -1, +1, -2, +2, ... up to ``like_day_search_days``.
    """
    n_m, n_days, n_slots = A.shape
    total = np.zeros_like(A)
    count = np.zeros((n_m, n_days))
    for k in range(1, int(p.like_day_search_days) + 1):  # loop over day offsets, not meters
        for off in (-k, k):
            if abs(off) >= n_days:
                continue
            d = np.arange(n_days)
            src = d + off
            inside = (src >= 0) & (src < n_days)
            d, src = d[inside], src[inside]
            take = (
                qualifies[:, src]
                & (weekend[src] == weekend[d])[None, :]
                & (count[:, d] < p.like_days)
            )
            total[:, d] += np.where(take[:, :, None], np.nan_to_num(A[:, src]), 0.0)
            count[:, d] += take
    return np.where(count[:, :, None] > 0, total / np.maximum(count, 1)[:, :, None], np.nan)


def last_interpolable_boundary(
    readings: pd.DataFrame,
    upto: pd.Timestamp,
    *,
    interval_s: int = 900,
    max_read_spacing_intervals: float = 1.5,
) -> pd.Series:
    """Per meter, the latest grid boundary at or before ``upto`` that :func:`validate` can
    interpolate: a register read on it, or reads on both sides at most
    ``max_read_spacing_intervals`` intervals apart (the rule of the boundary values above).

    A window that ends on such a boundary for every meter closes every gap before it, so its
    estimates are final; a window ending inside a gap leaves the gap's intervals ``missing``.
    Meters with no such boundary are absent from the result (index ``meter_id``, UTC).
    """
    step = interval_s * _NS
    reads = readings.loc[readings["energy_import_kwh"].notna(), ["meter_id", "ts"]]
    reads = reads.sort_values(["meter_id", "ts"], kind="mergesort")
    t = ts_ns(reads["ts"])
    meter = reads["meter_id"].to_numpy()
    limit = _to_ns(pd.Timestamp(upto))
    nxt = np.r_[t[1:], np.iinfo(np.int64).max]
    same = np.r_[meter[1:] == meter[:-1], False] if len(meter) else np.zeros(0, bool)
    pair_ok = same & ((nxt - t) <= max_read_spacing_intervals * step * (1 + REL_TOL))
    hi = np.minimum(np.where(pair_ok, nxt, t), limit)
    cand = hi - hi % step  # latest boundary inside [t, next] (or at t) not after upto
    ok = (cand >= t) & (t <= limit)
    out = pd.Series(cand[ok], index=pd.Index(meter[ok], name="meter_id"))
    out = out.groupby(level=0).max()
    return pd.to_datetime(out, utc=True).rename("boundary")


# ------------------------------------------------------------------------------- edits


def apply_edits(intervals: pd.DataFrame, edits: pd.DataFrame) -> pd.DataFrame:
    """``intervals`` with the rows of ``edits`` (same columns) replacing matching intervals.

    Matching is on ``(meter_id, ts)``; the edited rows keep their quality ``edited``,
    method and reasons. Neither input is modified.
    """
    if edits is None or edits.empty:
        return intervals.copy()
    key = ["meter_id", "ts"]
    e = edits.loc[:, list(VALIDATED_COLUMNS)].drop_duplicates(key, keep="last")
    merged = intervals.merge(e[key].assign(_edited=True), on=key, how="left")
    keep = intervals[merged["_edited"].isna().to_numpy()]
    e = e[e.set_index(key).index.isin(intervals.set_index(key).index)]
    out = pd.concat([keep, e], ignore_index=True)
    return out.sort_values(key, kind="mergesort").reset_index(drop=True)
