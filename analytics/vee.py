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

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from meterwatch.analytics.base import (
    REL_TOL,
    at_least,
    canonical,
    episodes,
    prepare,
    strictly_greater,
    strictly_less,
    ts_ns,
)
from meterwatch.analytics.config import RULE_SET_VERSION, VeeParams
from meterwatch.core.schema import CURRENT_COLUMNS, TS_DTYPE, VOLTAGE_COLUMNS, to_utc_coerce

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


@dataclass
class ValidatedReadings:
    """Result of :func:`validate`.

    Attributes
    ----------
    intervals
        One row per meter and interval (``VALIDATED_COLUMNS``): ``interval_start`` and ``ts``
        (interval end, contracts §1) in UTC, ``kwh`` billed energy [kWh] (NaN when
        ``missing``), ``quality``, ``method``, ``reasons`` (``;``-separated codes).
    events
        Alert-worthy check results (``EVENT_COLUMNS``), one row per episode.
    counts
        Intervals per quality and per reason code, and input rows per structure problem.
    """

    intervals: pd.DataFrame
    events: pd.DataFrame
    interval_s: int
    rule_set_version: str
    data_version: int
    counts: dict[str, int] = field(default_factory=dict)


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


_REGISTRY = (
    "ct_ratio",
    "phases",
    "nominal_voltage_v",
    "rated_current_a",
    "max_current_a",
)


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
        (contracts §2; needs the columns ``ct_ratio``, ``phases``, ``nominal_voltage_v``,
        ``rated_current_a``, ``max_current_a``).
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
    p = params or VeeParams()
    if int(interval_s) != interval_s or interval_s <= 0 or 86400 % int(interval_s):
        raise ValueError(
            f"interval_s must be a whole number of seconds dividing a day, got {interval_s!r}"
        )
    step = int(interval_s) * _NS

    # --- raw structure checks, in input order -------------------------------------
    reg_ids = pd.Index(meters["meter_id"].astype(str).drop_duplicates())
    raw = canonical(readings)
    raw = raw[raw["ts"].notna() & raw["meter_id"].astype(str).isin(reg_ids)]
    raw_ids = raw["meter_id"].astype(str).to_numpy()
    raw_t = ts_ns(raw["ts"]) if len(raw) else np.zeros(0, dtype=np.int64)
    counts: dict[str, int] = {}
    dup = pd.DataFrame({"m": raw_ids, "t": raw_t}).duplicated(keep=False).to_numpy()
    prev_max = (
        pd.Series(raw_t).groupby(raw_ids).cummax().groupby(raw_ids).shift(1).to_numpy(dtype=float)
    )
    ooo = raw_t < prev_max
    now_ns = None if now is None else _to_ns(pd.Timestamp(now))
    future = (
        raw_t > now_ns + int(p.future_tolerance_s * _NS)
        if now_ns is not None
        else np.zeros(raw_t.size, dtype=bool)
    )
    counts["rows_duplicate_ts"] = int(dup.sum())
    counts["rows_out_of_order"] = int(ooo.sum())
    counts["rows_future_ts"] = int(future.sum())
    read_bits = (
        np.where(dup, BIT["duplicate_ts"], 0)
        | np.where(ooo, BIT["out_of_order"], 0)
        | np.where(future, BIT["future_ts"], 0)
    )

    frame = prepare(readings, meters, list(_REGISTRY))
    if len(raw):
        flag_cols = {
            code: (read_bits & BIT[code]) > 0
            for code in ("duplicate_ts", "out_of_order", "future_ts")
        }
        per_read = (
            pd.DataFrame({"meter_id": raw_ids, "t": raw_t, **flag_cols})
            .groupby(["meter_id", "t"], sort=False)
            .max()
        )
        flags = sum(per_read[code].astype(np.int64) * BIT[code] for code in flag_cols)
        key = pd.MultiIndex.from_arrays([frame["meter_id"].to_numpy(), ts_ns(frame["ts"])])
        fbits = flags.reindex(key).fillna(0).to_numpy(dtype=np.int64)
    else:
        fbits = np.zeros(len(frame), dtype=np.int64)
    keep = (fbits & BIT["future_ts"]) == 0
    future_bits_frame = frame.loc[~keep, ["meter_id", "ts"]]
    future_bits_meta = fbits[~keep]
    frame = frame[keep].reset_index(drop=True)
    fbits = fbits[keep]

    # --- the grid ----------------------------------------------------------------------
    reg = meters.loc[:, ["meter_id", *_REGISTRY]].copy()
    reg["meter_id"] = reg["meter_id"].astype(str)
    reg = reg.drop_duplicates("meter_id").set_index("meter_id")
    t_all = ts_ns(frame["ts"]) if len(frame) else np.zeros(0, dtype=np.int64)
    if start is not None and end is not None:
        g0 = _floor(pd.Timestamp(start), step)
        g1 = -(-_to_ns(pd.Timestamp(end)) // step) * step
        meter_ids = np.array(sorted(reg.index), dtype=object)
    else:
        if t_all.size == 0:
            return _result(
                empty_validated(),
                _empty_events(),
                interval_s,
                rule_set_version,
                data_version,
                counts,
            )
        g0 = (
            int(-(-t_all.min() // step) * step)
            if start is None
            else _floor(pd.Timestamp(start), step)
        )
        g1 = (
            int(t_all.max() // step * step)
            if end is None
            else -(-_to_ns(pd.Timestamp(end)) // step) * step
        )
        meter_ids = np.array(sorted(frame["meter_id"].unique()), dtype=object)
    n_int = int((g1 - g0) // step)
    n_m = meter_ids.size
    if n_int <= 0 or n_m == 0:
        return _result(
            empty_validated(), _empty_events(), interval_s, rule_set_version, data_version, counts
        )
    bounds = g0 + np.arange(n_int + 1, dtype=np.int64) * step
    m_index = pd.Index(meter_ids)
    regm = reg.reindex(meter_ids)
    ct = pd.to_numeric(regm["ct_ratio"], errors="coerce").to_numpy(dtype=float)
    phases = pd.to_numeric(regm["phases"], errors="coerce").to_numpy(dtype=float)
    un = pd.to_numeric(regm["nominal_voltage_v"], errors="coerce").to_numpy(dtype=float)
    ib = pd.to_numeric(regm["rated_current_a"], errors="coerce").to_numpy(dtype=float)
    imax = pd.to_numeric(regm["max_current_a"], errors="coerce").to_numpy(dtype=float)

    bits = np.zeros((n_m, n_int), dtype=np.int64)
    code_all = (
        m_index.get_indexer(frame["meter_id"].to_numpy())
        if len(frame)
        else np.zeros(0, dtype=np.int64)
    )

    def cell(codes: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interval (row, col) containing instants ``t`` (interval = (start, end]); -1 outside."""
        col = -(-(t - g0) // step) - 1
        ok = (codes >= 0) & (col >= 0) & (col < n_int)
        return ok, col

    # Read-level structure flags -> intervals.
    ok, col = cell(code_all, t_all)
    np.bitwise_or.at(bits, (code_all[ok], col[ok]), fbits[ok] & ~BIT["future_ts"])
    if len(future_bits_frame):
        fc = m_index.get_indexer(future_bits_frame["meter_id"].to_numpy())
        ok_f, col_f = cell(fc, ts_ns(future_bits_frame["ts"]))
        np.bitwise_or.at(bits, (fc[ok_f], col_f[ok_f]), BIT["future_ts"])
        del future_bits_meta

    # --- register steps: rollover, decrease, recovery -------------------------------
    e_frame = frame[frame["energy_import_kwh"].notna()].reset_index(drop=True)
    ec = (
        m_index.get_indexer(e_frame["meter_id"].to_numpy())
        if len(e_frame)
        else np.zeros(0, dtype=np.int64)
    )
    et = ts_ns(e_frame["ts"]) if len(e_frame) else np.zeros(0, dtype=np.int64)
    energy = e_frame["energy_import_kwh"].to_numpy(dtype=float)
    same_prev = np.r_[False, ec[1:] == ec[:-1]] if ec.size else np.zeros(0, dtype=bool)
    prev = np.where(same_prev, np.r_[np.nan, energy[:-1]], np.nan)
    top = float(p.register_max_kwh)
    with np.errstate(invalid="ignore"):
        rollover = (
            same_prev
            & (prev >= p.rollover_fraction * top)
            & (energy < (1 - p.rollover_fraction) * top)
        )
    modulus = top + float(p.register_resolution_kwh)
    wraps = (
        pd.Series(rollover.astype(np.int64)).groupby(ec).cumsum().to_numpy()
        if ec.size
        else np.zeros(0)
    )
    unwrapped = energy + wraps * modulus
    delta = np.where(same_prev, unwrapped - np.r_[np.nan, unwrapped[:-1]], 0.0)
    # Rounded to 1e-6 kWh for the comparison only, so float noise of the register
    # representation cannot decide a decrease at the tolerance.
    decrease = same_prev & strictly_greater(-np.round(delta, 6), float(p.decrease_tolerance_kwh))
    runmax = pd.Series(unwrapped).groupby(ec).cummax().to_numpy() if ec.size else np.zeros(0)
    runmax_prev = np.where(same_prev, np.r_[np.nan, runmax[:-1]], np.nan)
    tol = float(p.decrease_tolerance_kwh)
    with np.errstate(invalid="ignore"):
        in_dip_before = same_prev & (np.r_[np.nan, unwrapped[:-1]] < runmax_prev - tol)
        recovery = in_dip_before & (unwrapped >= runmax_prev - tol) & ~decrease
    bad = decrease | recovery
    clean = np.where(bad | ~same_prev, 0.0, delta)
    cum = pd.Series(clean).groupby(ec).cumsum().to_numpy() if ec.size else np.zeros(0)
    nbad = (
        pd.Series(bad.astype(np.int64)).groupby(ec).cumsum().to_numpy() if ec.size else np.zeros(0)
    )
    nroll = wraps

    # --- boundary values (interpolated register) --------------------------------------
    total_b = n_m * (n_int + 1)
    left = pd.DataFrame(
        {
            "code": np.repeat(np.arange(n_m), n_int + 1),
            "b": np.tile(bounds, n_m),
            "pos": np.arange(total_b),
        }
    ).sort_values("b", kind="mergesort")
    right = pd.DataFrame(
        {"code": ec, "t": et, "c": cum, "nb": nbad, "nr": nroll, "e": unwrapped}
    ).sort_values("t", kind="mergesort")
    around = {}
    for direction in ("backward", "forward"):
        m = pd.merge_asof(left, right, left_on="b", right_on="t", by="code", direction=direction)
        around[direction] = m.sort_values("pos")
    bw, fw = around["backward"], around["forward"]
    b_flat = np.tile(bounds, n_m)
    t_b = bw["t"].to_numpy(dtype=float)
    t_a = fw["t"].to_numpy(dtype=float)
    spacing = t_a - t_b
    b_ok = np.isfinite(spacing) & (spacing <= p.max_read_spacing_intervals * step * (1 + REL_TOL))
    frac = np.divide(b_flat - t_b, spacing, out=np.zeros(total_b), where=spacing > 0)
    c_b, c_a = bw["c"].to_numpy(dtype=float), fw["c"].to_numpy(dtype=float)
    value = np.where(b_ok, c_b + (c_a - c_b) * frac, np.nan)
    nb_b, nb_a = bw["nb"].to_numpy(dtype=float), fw["nb"].to_numpy(dtype=float)
    nr_b, nr_a = bw["nr"].to_numpy(dtype=float), fw["nr"].to_numpy(dtype=float)
    nearest = np.fmin(np.abs(b_flat - t_b), np.abs(t_a - b_flat))
    misaligned_b = b_ok & (nearest > p.alignment_tolerance_s * _NS)

    V = value.reshape(n_m, n_int + 1)
    B_ok = b_ok.reshape(n_m, n_int + 1)
    NBb, NBa = nb_b.reshape(n_m, n_int + 1), nb_a.reshape(n_m, n_int + 1)
    NRb, NRa = nr_b.reshape(n_m, n_int + 1), nr_a.reshape(n_m, n_int + 1)
    MIS = misaligned_b.reshape(n_m, n_int + 1)

    valid = B_ok[:, :-1] & B_ok[:, 1:]
    sec = V[:, 1:] - V[:, :-1]  # register delta [kWh, as displayed]
    with np.errstate(invalid="ignore"):
        stepbad = valid & (NBa[:, 1:] != NBb[:, :-1])
        rolled = valid & (NRa[:, 1:] != NRb[:, :-1])
    bits |= np.where(~valid, BIT["gap"], 0)
    bits |= np.where(stepbad, BIT["register_decrease"], 0)
    bits |= np.where(rolled, BIT["rollover"], 0)
    bits |= np.where(MIS[:, :-1] | MIS[:, 1:], BIT["misaligned"], 0)
    sec = np.where(valid & ~stepbad, sec, np.nan)
    kwh = sec * ct[:, None]

    # --- per-interval electrical context ------------------------------------------------
    ok, col = cell(code_all, t_all)
    cur = frame[list(CURRENT_COLUMNS)].to_numpy(dtype=float)
    volt = frame[list(VOLTAGE_COLUMNS)].to_numpy(dtype=float)
    ph_frame = phases[code_all] if code_all.size else np.zeros(0)
    present = (
        np.column_stack([(ph_frame == 1) | (ph_frame == 3), ph_frame == 3, ph_frame == 3])
        if code_all.size
        else np.zeros((0, 3), dtype=bool)
    )
    cur = np.where(present, cur, np.nan)
    volt = np.where(present, volt, np.nan)
    with warnings.catch_warnings():
        # Rows without any phase value are expected: all-NaN rows give NaN.
        warnings.simplefilter("ignore", RuntimeWarning)
        i_read = np.nanmax(cur, axis=1) if cur.size else np.zeros(0)
        v_read = np.nanmax(volt, axis=1) if volt.size else np.zeros(0)
    i_min = np.full((n_m, n_int), np.inf)
    v_max = np.full((n_m, n_int), -np.inf)
    has_i = ok & np.isfinite(i_read)
    np.minimum.at(i_min, (code_all[has_i], col[has_i]), i_read[has_i])
    has_v = ok & np.isfinite(v_read)
    np.maximum.at(v_max, (code_all[has_v], col[has_v]), v_read[has_v])
    i_min = np.where(np.isinf(i_min), np.nan, i_min)
    v_max = np.where(np.isinf(v_max), np.nan, v_max)
    outage = strictly_less(v_max, p.outage_voltage_fraction * un[:, None])
    bits |= np.where(outage, BIT["outage"], 0)

    # --- hard checks --------------------------------------------------------------------
    limit = p.runaway_factor * un * imax * phases * (interval_s / 3600.0) / 1000.0  # [kWh]
    # Power read in or at the start of the interval: when the meter's own power readings
    # account for the advance (within the same factor), the meter is overloaded, not running
    # away, and the energy is kept.
    p_read = frame["power_kw"].to_numpy(dtype=float)
    p_max = np.full((n_m, n_int), -np.inf)
    has_p = ok & np.isfinite(p_read)
    np.maximum.at(p_max, (code_all[has_p], col[has_p]), p_read[has_p])
    p_max = np.fmax(p_max, np.c_[np.full(n_m, -np.inf), p_max[:, :-1]])
    p_max = np.where(np.isinf(p_max), np.nan, p_max)
    supported = at_least(p.runaway_factor * p_max * (interval_s / 3600.0), sec)
    runaway = strictly_greater(sec, limit[:, None]) & ~supported
    bits |= np.where(runaway, BIT["runaway"], 0)
    unchanged = valid & ~stepbad & strictly_less(np.abs(sec), float(p.register_resolution_kwh))
    loaded = at_least(i_min, p.stuck_current_fraction * ib[:, None])
    stuck_len = max(int(math.ceil(p.stuck_hours * 3600 / interval_s - 1e-9)), 1)
    stuck = _run_mask(unchanged & loaded, stuck_len)
    bits |= np.where(stuck, BIT["stuck_register"], 0)
    zero_len = max(int(math.ceil(p.zero_consumption_hours * 3600 / interval_s - 1e-9)), 1)
    zero = _run_mask(unchanged & ~outage, zero_len)
    bits |= np.where(zero, BIT["zero_consumption"], 0)

    hard_mask = sum(BIT[c] for c in HARD_REASONS)
    actual = (bits & hard_mask) == 0

    # --- local days -----------------------------------------------------------------
    starts_utc = pd.DatetimeIndex(pd.to_datetime(bounds[:-1], utc=True))
    local = starts_utc.tz_convert(timezone)
    local_date = local.normalize()
    day_keys, day_idx = np.unique(local_date.asi8, return_inverse=True)
    day_idx = day_idx.reshape(-1)
    slot = ((local.asi8 - local_date.asi8) // step).astype(np.int64)
    days = pd.DatetimeIndex(pd.to_datetime(day_keys, utc=True)).tz_convert(timezone)
    weekend = days.day_of_week.to_numpy() >= 5
    n_days = day_keys.size
    n_slots = int(slot.max()) + 1
    expected_slots = (
        np.array(
            [(d + pd.DateOffset(days=1)).normalize() - d for d in days], dtype="timedelta64[ns]"
        ).astype(np.int64)
        // step
    )
    slots_in_grid = np.bincount(day_idx, minlength=n_days)

    def cube(values: np.ndarray) -> np.ndarray:
        out = np.full((n_m, n_days, n_slots), np.nan)
        out[:, day_idx, slot] = values
        return out

    actual_kwh = np.where(actual, kwh, np.nan)
    A = cube(actual_kwh)
    n_actual = np.sum(~np.isnan(A), axis=2)
    n_outage = np.sum(cube(outage.astype(float)) > 0, axis=2)
    complete = (slots_in_grid == expected_slots)[None, :] & (n_actual == expected_slots[None, :])
    qualifies = complete & (n_outage == 0)

    # Spike: highest interval of the day vs its third-highest.
    with np.errstate(invalid="ignore"):
        srt = -np.sort(-np.where(np.isnan(A), -np.inf, A), axis=2)
    if n_slots >= 3:
        h1, h3 = srt[:, :, 0], srt[:, :, 2]
        h3 = np.where(np.isfinite(h3), h3, np.nan)
        h1 = np.where(np.isfinite(h1), h1, np.nan)
        spike_day = (
            np.isfinite(h3)
            & strictly_greater(h1, p.spike_ratio * h3)
            & strictly_greater(h1 - h3, p.spike_floor_kwh)
        )
        is_max = (A == h1[:, :, None]) & spike_day[:, :, None]
        spike = is_max[:, day_idx, slot]
        bits |= np.where(spike, BIT["spike"], 0)

    # High/low usage: a complete day's total vs the mean of the complete days of the same
    # day type (weekday / weekend) within the previous usage_history_days days.
    total = np.where(complete, np.nansum(A, axis=2), np.nan)
    hist_sum = np.zeros((n_m, n_days))
    hist_n = np.zeros((n_m, n_days))
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
    bits |= np.where(high[:, day_idx], BIT["high_usage"], 0)
    bits |= np.where(low[:, day_idx], BIT["low_usage"], 0)

    # Energy vs integrated power, per meter and window.
    events: list[dict[str, Any]] = []
    mism = _power_check(
        e_frame, ec, et, unwrapped, bad, same_prev, ct, p, g0, n_m, meter_ids, step, n_int
    )
    for code_name, (mm, ww, evid) in mism.items():
        w_len = int(p.mismatch_window_hours * 3600 * _NS)
        for m_i, w_i, ev in zip(mm, ww, evid, strict=True):  # loop over findings only
            w0 = g0 + w_i * w_len
            col_a = max(int((w0 - g0) // step), 0)
            col_b = min(int((w0 + w_len - g0) // step), n_int)
            bits[m_i, col_a:col_b] |= BIT[code_name]
            events.append(
                {
                    "meter_id": meter_ids[m_i],
                    "code": code_name,
                    "starts_at": w0,
                    "ends_at": w0 + w_len,
                    "evidence": ev,
                }
            )

    # Clock. Where the collector's receipt time is known (``collected_at``), every read is
    # judged on its own: the meter's time (``device_ts`` where it reported its clock, else
    # ``ts``) ahead of ``collected_at`` by more than the tolerance. Meters without receipt
    # times: their latest read vs the reference (now, or the latest read of the others).
    judged = np.zeros(n_m, dtype=bool)
    if "collected_at" in readings.columns and len(readings):
        times = [c for c in ("ts", "collected_at", "device_ts") if c in readings.columns]
        rc = pd.DataFrame({c: to_utc_coerce(readings[c]) for c in times}).assign(
            meter_id=readings["meter_id"].astype(str).to_numpy()
        )
        rc = rc[rc["collected_at"].notna() & rc["ts"].notna()]
        rc_code = m_index.get_indexer(rc["meter_id"].to_numpy())
        rc, rc_code = rc[rc_code >= 0], rc_code[rc_code >= 0]
        judged[rc_code] = True
        rc_ts = ts_ns(rc["ts"])
        own = rc_ts
        if "device_ts" in rc.columns:
            dev = rc["device_ts"]
            own = np.where(dev.notna().to_numpy(), ts_ns(dev.fillna(rc["ts"])), rc_ts)
        lead_r = own - ts_ns(rc["collected_at"])
        fast = strictly_greater(lead_r, p.clock_tolerance_s * _NS)
        if fast.any():
            f_code, f_ts, f_lead = rc_code[fast], rc_ts[fast], lead_r[fast]
            okc, colc = cell(f_code, f_ts)
            bits[f_code[okc], colc[okc]] |= BIT["clock_error"]
            ep = pd.DataFrame({"m": f_code, "t": f_ts, "lead": f_lead, "own": own[fast]})
            agg = ep.groupby("m").agg(
                t0=("t", "min"), n=("t", "size"), lead=("lead", "max"), own=("own", "max")
            )
            for m_a, row in zip(agg.index.tolist(), agg.itertuples(), strict=True):
                events.append(  # loop over findings only
                    {
                        "meter_id": meter_ids[m_a],
                        "code": "clock_error",
                        "starts_at": int(row.t0),
                        "ends_at": None,
                        "evidence": {
                            "latest_read": pd.Timestamp(int(row.own), tz="UTC"),
                            "reference": pd.Timestamp(int(row.own - row.lead), tz="UTC"),
                            "reference_kind": "collected_at",
                            "lead_s": float(row.lead) / _NS,
                            "reads_ahead": int(row.n),
                            "thresholds": {"clock_tolerance_s": p.clock_tolerance_s},
                        },
                    }
                )
    if t_all.size:
        last = np.full(n_m, np.iinfo(np.int64).min)
        np.maximum.at(last, code_all, t_all)
        if now_ns is not None:
            ref = np.full(n_m, now_ns, dtype=float)
        else:
            order = np.sort(last)
            top1 = order[-1] if n_m else 0
            top2 = order[-2] if n_m >= 2 else np.iinfo(np.int64).min
            ref = np.where(last == top1, top2, top1).astype(float)
            ref[ref <= np.iinfo(np.int64).min + 1] = np.nan
        lead = last - ref
        ahead = strictly_greater(lead, p.clock_tolerance_s * _NS) & (last > np.iinfo(np.int64).min)
        ahead &= ~judged
        for m_a in np.flatnonzero(ahead).tolist():  # loop over findings only
            sel = (code_all == m_a) & (t_all > ref[m_a] + p.clock_tolerance_s * _NS)
            okc, colc = cell(code_all[sel], t_all[sel])
            bits[m_a, colc[okc]] |= BIT["clock_error"]
            events.append(
                {
                    "meter_id": meter_ids[m_a],
                    "code": "clock_error",
                    "starts_at": int(t_all[sel].min()),
                    "ends_at": None,
                    "evidence": {
                        "latest_read": pd.Timestamp(int(last[m_a]), tz="UTC"),
                        "reference": pd.Timestamp(int(ref[m_a]), tz="UTC"),
                        "reference_kind": "now"
                        if now_ns is not None
                        else "latest read of the other meters",
                        "lead_s": float(lead[m_a]) / _NS,
                        "reads_ahead": int(sel.sum()),
                        "thresholds": {"clock_tolerance_s": p.clock_tolerance_s},
                    },
                }
            )

    # --- estimation -----------------------------------------------------------------
    need = ~actual
    like = _like_days(A, qualifies, weekend, p)[:, day_idx, slot]
    est = np.full((n_m, n_int), np.nan)
    method = np.zeros((n_m, n_int), dtype=np.int8)  # 0 none, 1 linear, 2 like day, 3 prorate
    rows, c0, c1 = _runs(need)
    lengths = c1 - c0 + 1
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
        ld = like[r, c]
        ld_ok_run = pd.Series(np.isfinite(ld)).groupby(run_id).all().to_numpy()
        # Register delta across a pure data gap with actual boundary reads.
        pure = (
            pd.Series((bits[r, c] & (hard_mask & ~BIT["gap"])) == 0)
            .groupby(run_id)
            .all()
            .to_numpy()
        )
        with np.errstate(invalid="ignore"):
            same_steps = (NBb[rows, c0] == NBa[rows, c1 + 1]) & (NRb[rows, c0] == NRa[rows, c1 + 1])
        known = pure & B_ok[rows, c0] & B_ok[rows, c1 + 1] & same_steps
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
        bits[r[scaled & np.isfinite(value)], c[scaled & np.isfinite(value)]] |= BIT[
            "scaled_to_register"
        ]

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
    quality = np.where(actual, 0, np.where(estimated, 1, 3))

    # Consecutive estimation.
    excess_len = int(math.floor(p.max_consecutive_estimated_s / interval_s + 1e-9)) + 1
    excess = _run_mask(estimated, excess_len)
    bits |= np.where(excess, BIT["estimation_excess"], 0)

    # --- events for the billing detectors ---------------------------------------------------
    _episode_events(
        events,
        "register_decrease",
        bits & BIT["register_decrease"] > 0,
        meter_ids,
        bounds,
        sec,
        {"decrease_tolerance_kwh": p.decrease_tolerance_kwh},
    )
    _episode_events(
        events,
        "stuck_register",
        stuck,
        meter_ids,
        bounds,
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
        current=i_min,
    )
    _episode_events(
        events,
        "runaway",
        runaway,
        meter_ids,
        bounds,
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
        meter_ids,
        bounds,
        final,
        {"max_consecutive_estimated_s": p.max_consecutive_estimated_s, "interval_s": interval_s},
    )

    # --- output -------------------------------------------------------------------------
    method_names = np.array(
        ["", "linear_interpolation", "like_day_average", "register_prorate"], dtype=object
    )
    meth = np.where(actual, "register_delta", method_names[method])
    meth = np.where(quality == 3, "", meth)
    qual_names = np.array(["actual", "estimated", "edited", "missing"], dtype=object)
    out = pd.DataFrame(
        {
            "meter_id": np.repeat(meter_ids, n_int),
            "interval_start": _ts(np.tile(bounds[:-1], n_m)),
            "ts": _ts(np.tile(bounds[1:], n_m)),
            "kwh": final.ravel(),
            "quality": qual_names[quality.ravel()],
            "method": meth.ravel().astype(object),
            "reasons": _decode(bits.ravel()),
            "rule_set_version": rule_set_version,
            "data_version": np.int64(data_version),
        }
    )
    for q in QUALITIES:
        counts[f"intervals_{q}"] = int((out["quality"] == q).sum())
    for code in REASON_CODES:
        counts[f"reason_{code}"] = int(((bits & BIT[code]) > 0).sum())
    ev = _events_frame(events)
    return _result(out, ev, interval_s, rule_set_version, data_version, counts)


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


def _power_check(
    e_frame: pd.DataFrame,
    ec: np.ndarray,
    et: np.ndarray,
    unwrapped: np.ndarray,
    bad: np.ndarray,
    same_prev: np.ndarray,
    ct: np.ndarray,
    p: VeeParams,
    g0: int,
    n_m: int,
    meter_ids: np.ndarray,
    step: int,
    n_int: int,
) -> dict[str, tuple[list[int], list[int], list[dict[str, Any]]]]:
    """Register advance vs trapezoid-integrated ``power_kw`` per meter and window.

    Read pairs of one meter with both values, at most ``max_read_spacing_intervals`` apart
    and without a register decrease, are summed per window of ``mismatch_window_hours``
    (from the grid start); windows whose pairs cover less than ``mismatch_min_coverage`` of
    them are not judged. ``r = energy / integrated power``: with ``ct_ratio > 1`` a ratio
    within ``multiplier_tolerance`` of ``ct_ratio`` or ``1/ct_ratio`` is a multiplier
    mismatch (one of the two quantities is on the primary side); otherwise a difference of
    more than ``mismatch_tolerance`` of the larger and more than ``mismatch_floor_kwh`` is an
    energy/power mismatch.
    """
    out: dict[str, tuple[list[int], list[int], list[dict[str, Any]]]] = {
        "energy_power_mismatch": ([], [], []),
        "multiplier_mismatch": ([], [], []),
    }
    if ec.size < 2:
        return out
    power = e_frame["power_kw"].to_numpy(dtype=float)
    p_prev = np.r_[np.nan, power[:-1]]
    t_prev = np.r_[0, et[:-1]]
    dt = (et - t_prev).astype(float)
    pair = (
        same_prev
        & ~bad
        & np.isfinite(power)
        & np.isfinite(p_prev)
        & (dt <= p.max_read_spacing_intervals * step * (1 + REL_TOL))
        & (et > g0)
    )
    if not pair.any():
        return out
    e_pair = (unwrapped - np.r_[np.nan, unwrapped[:-1]])[pair]
    p_pair = ((np.maximum(power, 0) + np.maximum(p_prev, 0)) / 2 * dt / (3600.0 * _NS))[pair]
    w_len = int(p.mismatch_window_hours * 3600 * _NS)
    win = (et[pair] - 1 - g0) // w_len
    g = (
        pd.DataFrame({"m": ec[pair], "w": win, "e": e_pair, "p": p_pair, "dt": dt[pair], "n": 1})
        .groupby(["m", "w"])
        .sum()
    )
    # Only windows mostly covered by read pairs are judged: in a short or patchy window the
    # offset between a poll's timestamp and the instant the meter measured weighs too much.
    g = g[at_least(g["dt"].to_numpy() / w_len, p.mismatch_min_coverage)]
    m_arr = g.index.get_level_values(0).to_numpy()
    w_arr = g.index.get_level_values(1).to_numpy()
    e_w, p_w = g["e"].to_numpy(), g["p"].to_numpy()
    ctm = ct[m_arr]
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
    for name, flag in (("multiplier_mismatch", mult), ("energy_power_mismatch", mism)):
        for k in np.flatnonzero(flag):  # loop over findings only
            out[name][0].append(int(m_arr[k]))
            out[name][1].append(int(w_arr[k]))
            out[name][2].append(
                {
                    "thresholds": thresholds,
                    "register_kwh": float(e_w[k]),
                    "integrated_power_kwh": float(p_w[k]),
                    "ratio": float(r[k]) if np.isfinite(r[k]) else None,
                    "ct_ratio": float(ctm[k]),
                    "read_pairs": int(g["n"].to_numpy()[k]),
                    "coverage": float(g["dt"].to_numpy()[k] / w_len),
                }
            )
    return out


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
