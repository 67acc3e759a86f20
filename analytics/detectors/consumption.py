"""Consumption detectors against a meter's own history: hourly energy, spikes, drops, zeros."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd

from meterwatch.analytics.base import (
    Detector,
    FittedState,
    check_count,
    check_fraction,
    check_positive,
    episodes,
    findings_frame,
    plain,
    short_ts,
    strictly_greater,
    strictly_less,
)
from meterwatch.analytics.profiles import (
    PROFILE_FIELDS,
    HourlyBaseline,
    HourProfile,
    day_cube,
    fit_profile,
    over_hours,
    per_day_sum,
    rolling_profile,
)
from meterwatch.analytics.registry import register
from meterwatch.analytics.window import (
    Window,
    prev_present,
    register_reads,
    row_chunks,
    take_prev,
)
from meterwatch.core.schema import empty_findings

#: One hour [ns].
HOUR_NS = 3_600 * 10**9


def hourly_energy(w: Window, max_gap_minutes: float) -> tuple[np.ndarray, pd.DatetimeIndex]:
    """Billed energy per meter (window row) and UTC hour, meters x hours [kWh]; once per window.

    The register (``energy_import_kwh`` x ``ct_ratio``) is interpolated linearly at every hour
    boundary between the two reads around it, provided they are at most ``max_gap_minutes``
    [min] apart; an hour's energy is the difference of its two boundaries. So a data gap
    leaves its hours NaN instead of lumping their energy into one hour, and polls that are not
    aligned to the hour are apportioned correctly (for reads exactly on the hour this equals
    summing the interval deltas of the hour). A register decrease (register_decrease's
    business) makes the hours around it NaN: every step that ends below the register's running
    maximum or starts from below it is untrusted, so a single low read neither makes a negative
    hour nor a false "spike" when the register comes back. Missing register values are
    skipped. Shared read-only between the rules of one window.

    Returns ``(kwh, hours)``: ``kwh[m, h]`` is the energy of window row ``m`` in the hour
    starting at ``hours[h]``; NaN where unknown.
    """
    result: tuple[np.ndarray, pd.DatetimeIndex] = w.memo(
        ("hourly_energy", float(max_gap_minutes)), lambda: _hourly_energy(w, max_gap_minutes)
    )
    result[0].setflags(write=False)
    return result


def register_steps(w: Window) -> dict[str, np.ndarray]:
    """Per cell: the register's trusted cumulative advance x ``ct_ratio`` [kWh] since the
    meter's first read (``clean``), decreases so far (``n_bad``), read time (``t``) and which
    cells carry a register read (``has``); shared per window."""

    def build() -> dict[str, np.ndarray]:
        energy, t, k = register_reads(w)
        has = ~np.isnan(energy)
        full = np.asarray(has.all(axis=1))  # read in every position: shifts, not gathers
        ct = w.meters.ct_ratio[:, None]
        clean = np.empty(energy.shape)
        n_bad = np.zeros(energy.shape, dtype=np.int64)  # pages untouched unless a fall
        # Meters in chunks (every step is per meter): the chunk's intermediates, not the
        # window's (a 20,000 x 96 window: 60 MiB less at the peak).
        for rs in row_chunks(energy.shape[0], energy.shape[1]):
            e, h = energy[rs], has[rs]
            prev_col, prev = prev_present(e, h)
            ok_prev = h & (prev_col >= 0)
            delta = np.where(ok_prev, e - prev, 0.0)
            fell = ok_prev & (delta < 0)
            if fell.any():
                # A step from below the running maximum follows a fall: only then look.
                run_max = np.fmax.accumulate(e, axis=1)
                max_prev = take_prev(run_max, prev_col, full[rs])
                with np.errstate(invalid="ignore"):
                    bad = fell | (ok_prev & (prev < max_prev))
                n_bad[rs] = np.cumsum(bad, axis=1)
                delta = np.where(bad, 0.0, delta)
            clean[rs] = np.cumsum(delta * ct[rs], axis=1)
        return {"has": has, "clean": clean, "n_bad": n_bad, "t": t, "k": np.array(k), "full": full}

    out: dict[str, np.ndarray] = w.memo("register_steps", build)
    return out


def _hour_values(
    has: np.ndarray,
    clean: np.ndarray,
    n_bad: np.ndarray,
    t_reg: np.ndarray,
    b: np.ndarray,
    j: np.ndarray,
    cell: np.ndarray,
    kk: int,
    max_gap_minutes: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The register at hour boundaries ``b`` for meters not read exactly on them: linear
    between the reads around each (at most ``max_gap_minutes`` apart), with the decrease
    counts before and after it."""
    n_m, n_c = has.shape  # positions: kk per cell
    cols = np.arange(n_c)
    last_idx = np.maximum.accumulate(np.where(has, cols[None, :], -1), axis=1)
    next_idx = np.minimum.accumulate(np.where(has, cols[None, :], n_c)[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(n_m)[:, None]
    before = last_idx[:, j]
    on_b = has[:, j] & (t_reg[:, j] == b[None, :])
    first_after = (cell + 1) * kk
    after_next = np.where(first_after < n_c, next_idx[:, np.minimum(first_after, n_c - 1)], n_c)
    after = np.where(on_b, j[None, :], after_next)
    ok = (before >= 0) & (after < n_c)
    bc, ac = np.maximum(before, 0), np.minimum(after, n_c - 1)
    t_b = np.where(ok, t_reg[rows, bc], 0).astype(float)
    t_a = np.where(ok, t_reg[rows, ac], 0).astype(float)
    gap = t_a - t_b
    frac = np.divide(b[None, :] - t_b, gap, out=np.zeros(gap.shape), where=gap > 0)
    c_b, c_a = clean[rows, bc], clean[rows, ac]
    value = np.where(ok & (gap <= max_gap_minutes * 60e9), c_b + (c_a - c_b) * frac, np.nan)
    return value, n_bad[rows, bc], n_bad[rows, ac]


def _hourly_energy(w: Window, max_gap_minutes: float) -> tuple[np.ndarray, pd.DatetimeIndex]:
    empty = (np.zeros((w.n_meters, 0)), pd.DatetimeIndex([], tz="UTC"))
    if w.n_cells == 0 or w.step > HOUR_NS or HOUR_NS % w.step:
        return empty
    steps = register_steps(w)
    has, clean, n_bad, t_reg = steps["has"], steps["clean"], steps["n_bad"], steps["t"]
    kk = int(steps["k"])
    # Hour boundaries that are cell ends inside the window.
    ends = w.ends
    first_b = -(-(w.g0 + w.step) // HOUR_NS) * HOUR_NS
    last_b = ends[-1] // HOUR_NS * HOUR_NS
    n_b = int((last_b - first_b) // HOUR_NS) + 1
    if n_b < 2:
        return empty
    b = first_b + np.arange(n_b, dtype=np.int64) * HOUR_NS
    cell = ((b - w.g0) // w.step - 1).astype(np.int64)  # the cell ending at each boundary
    j = cell * kk + kk - 1  # its last read's position
    # Meters read exactly at every hour boundary (the usual case) take the read itself.
    direct = steps["full"] & (kk == 1)
    if direct.any():
        direct &= (t_reg[:, j] == b[None, :]).all(axis=1)
    value = np.full((w.n_meters, n_b), np.nan)
    n_bad_b = np.zeros((w.n_meters, n_b), dtype=np.int64)
    n_bad_a = np.zeros((w.n_meters, n_b), dtype=np.int64)
    d = np.flatnonzero(direct)
    if d.size:
        rs: slice | np.ndarray = slice(None) if d.size == w.n_meters else d
        value[rs] = clean[rs][:, j]
        n_bad_b[rs] = n_bad_a[rs] = n_bad[rs][:, j]
    g = np.flatnonzero(~direct)
    if g.size:
        value[g], n_bad_b[g], n_bad_a[g] = _hour_values(
            has[g], clean[g], n_bad[g], t_reg[g], b, j, cell, kk, max_gap_minutes
        )
    kwh = value[:, 1:] - value[:, :-1]
    decreased = n_bad_a[:, 1:] != n_bad_b[:, :-1]
    kwh = np.where(decreased, np.nan, kwh)
    hours = pd.DatetimeIndex(pd.to_datetime(b[:-1], utc=True))
    return kwh, hours


#: Comparable days a habitual high needs before ``high_factor`` judges against it: the highest
#: hour of a day or two is no habit (a demo judging against one day took a plant's ordinary
#: shift change for a spike).
HABIT_DAYS = 7

_SPIKE_RULE = (
    "consecutive hours (>= min_hours) with kWh > min(ratio*median, high_factor*habitual high; "
    "the latter from >= 7 comparable days) and kWh > habitual high + k*spread, whose energy "
    "above the habitual high sums to > max(min_excess_fraction x the usual day, "
    "min_excess_kwh); median of the "
    "hour and habitual high (highest of the hour +-1 h) over the comparable days (same day "
    "type) of history_days, >= min_history_days of them; spread = max(1.4826*MAD, "
    "min_spread_fraction*median)"
)


class _ProfileRule(Detector):
    """Shared machinery of the consumption rules that judge hours against the meter's own
    profile (:mod:`analytics.profiles`): fitted once from history (``fit``), or, unfitted,
    rolled over the window itself (each day against the days before it)."""

    shares: ClassVar[str] = "hourly"

    history_days: int
    min_history_days: int
    max_gap_minutes: float
    _q_lo: ClassVar[float] = 0.1
    #: The habitual high: the maximum of the comparable hours (quantile 1).
    _q_hi: ClassVar[float] = 1.0

    def fit_window(self, w: Window) -> Detector:
        """Learn each meter's profile from the whole history given (the last
        ``history_days`` days of it): ``profile_`` and ``profile_ids_``."""
        gap, days_kept = float(self.max_gap_minutes), int(self.history_days)
        q_lo, q_hi = self._q_lo, self._q_hi

        def fit() -> HourProfile:
            kwh, hours = hourly_energy(w, gap)
            cube, days, _ = day_cube(kwh, hours)
            keep = slice(max(cube.shape[1] - days_kept, 0), None)
            weekend = np.asarray(days.day_of_week >= 5)[keep]
            return fit_profile(cube[:, keep], weekend, q_lo=q_lo, q_hi=q_hi)

        # Spike and drop rules with the same settings share one fit of the window.
        self.profile_ = w.memo(("profile", gap, days_kept, q_lo, q_hi), fit)
        self.profile_ids_ = np.asarray(w.ids, dtype=object)
        return self

    def state(self) -> FittedState | None:
        profile = getattr(self, "profile_", None)
        if profile is None:
            return None
        return FittedState(self.profile_ids_, {f: getattr(profile, f) for f in PROFILE_FIELDS})

    def load_state(self, state: FittedState) -> Detector:
        self.profile_ = HourProfile(**{f: state.per_meter[f] for f in PROFILE_FIELDS})
        self.profile_ids_ = np.asarray(state.ids, dtype=object)
        return self

    def baseline(self, w: Window, kwh: np.ndarray, hours: pd.DatetimeIndex) -> HourlyBaseline:
        """The baseline of every judged hour: the fitted profile, else rolled over the window."""
        profile = getattr(self, "profile_", None)
        if profile is not None:
            rows = pd.Index(self.profile_ids_).get_indexer(w.ids)
            return over_hours(profile.take(rows), hours)
        days, q_lo, q_hi = int(self.history_days), self._q_lo, self._q_hi
        # Spike and drop rules with the same settings share one rolling profile of the window.
        key = ("rolling_profile", float(self.max_gap_minutes), days, q_lo, q_hi)

        def compute() -> HourlyBaseline:
            b = rolling_profile(kwh, hours, days, q_lo=q_lo, q_hi=q_hi)
            for a in vars(b).values():
                a.setflags(write=False)  # shared: read-only
            return b

        out: HourlyBaseline = w.memo(key, compute)
        return out


@register(cadence="interval", history_days=28, order=210)
class ConsumptionSpike(_ProfileRule):
    """Consumption far above anything the meter has done at that time, for hours.

    Hourly energy comes from :func:`hourly_energy` (register delta x ``ct_ratio``, [kWh]). The
    baseline of an hour (:mod:`analytics.profiles`) is drawn from the comparable days
    (weekday / weekend) among the previous ``history_days`` days: the ``median`` of that UTC
    hour, and the habitual high: the *highest* that hour or a neighbouring one (+-1 h) reached
    on those days -- a household's ordinary evening peaks, heating and laundry are inside it.
    An hour is judged only with at least
    ``min_history_days`` comparable days that have it, and is a spike hour when (strict)::

        kWh > min(ratio x median, high_factor x habitual high)  and
        kWh > habitual high + k x spread

    (a steady load -- a shop or a plant whose highest comparable hour is close to its median --
    is judged against its habitual high: twice its midday median is far beyond its habit).

    A finding is a run of at least ``min_hours`` consecutive spike hours whose energy above
    the habitual high, summed over the run, exceeds ``min_excess_fraction`` of the meter's
    usual day (the sum of its hourly medians for that day type) and ``min_excess_kwh`` (a
    surge beyond anything usual, weighed against how much the meter uses): ``starts_at`` is the start of the first hour, ``ends_at``
    the end of the last one when the following hour is known and not a spike, else NaT. Fitted (``fit``), the baselines
    come from the history given there and a run judges every hour of its window against them;
    unfitted, each day of the window is judged against the days before it in the window.

    The defaults were set on real household data (docs/evaluation.md, "Real data"): one
    Parisian household's single hours go above five times their median several times a
    month, so a lower bar (the 90th percentile of single hours, one hour enough) raised
    spikes every few days; two hours or more above three times the median and above the
    habitual maximum, by 9 % of a usual day in all, raise 0.9 a month there while every
    planted 2-hour spike of five times the usual rate is found.

    Parameters
    ----------
    ratio : float
        Spike hours above this multiple of the median [-]. Default 3 (project choice,
        docs/evaluation.md "Real data").
    high_factor : float
        ... or above this multiple of the habitual high, whichever is lower, where the high
        comes from at least :data:`HABIT_DAYS` (7) comparable days [-]. Default 1.75
        (project choice: simulated commercial and industrial meters, whose habitual high is
        about 1.15 x their median, take a surge to 5 x their daily mean rate at midday as only
        2.2-3 x that hour's median; households' habitual highs are several times their
        medians, so the ratio decides for them: on the real household 0.91 false spikes a
        month with it, 0.89 without, docs/evaluation.md).
    k : float
        Spike hours above the habitual high by this many robust standard deviations
        (``1.4826 x MAD``, floored at ``min_spread_fraction x median``) [-]. Default 0: above
        the highest comparable hour is already beyond habit.
    min_excess_fraction : float
        Energy above the habitual high over the run that a finding needs, as a fraction of the
        meter's usual day [-]. Default 0.09 (project choice, from the real-data trade-off in
        docs/evaluation.md: about 2.2 kWh for a household using 25 kWh a day).
    min_excess_kwh : float
        ... and at least this much [kWh]. Default 0.5 (project choice: ignores noise of
        near-zero baselines).
    min_hours : int
        Consecutive spike hours a finding needs [h]. Default 2 (project choice: a surge
        of an hour -- an oven, a kettle and a washing machine at once -- is habit on real
        household data; the planted and simulated spikes last 2 h).
    history_days : int
        Days of history the baseline draws on [d]. Default 28 (four weeks: about twenty
        weekdays and eight weekend days).
    min_history_days : int
        Fewest comparable days (same day type, hour known) needed to judge an hour [d].
        Default 7 (project choice: a median of one to four days made ordinary evening peaks
        spikes on real household data, docs/evaluation.md).
    min_spread_fraction : float
        Floor of the spread as a fraction of the median [-]. Default 0.1 (project choice).
    max_gap_minutes : float
        Longest interval between two readings across which the register is interpolated at
        an hour boundary [min]. Default 75: hourly polls with some jitter still give hourly
        energy; a longer gap leaves its hours unknown.
    """

    alert_types: ClassVar[tuple[str, ...]] = ("consumption_spike",)

    def __init__(
        self,
        ratio: float = 3.0,
        k: float = 0.0,
        min_excess_fraction: float = 0.09,
        min_excess_kwh: float = 0.5,
        min_hours: int = 2,
        history_days: int = 28,
        min_history_days: int = 7,
        min_spread_fraction: float = 0.1,
        max_gap_minutes: float = 75.0,
        high_factor: float = 1.75,
    ) -> None:
        check_positive("ratio", ratio)
        check_positive("high_factor", high_factor)
        if not float(k) >= 0:
            raise ValueError(f"k must be >= 0, got {k!r}")
        if not 0 <= float(min_excess_fraction) < 1:
            raise ValueError(f"min_excess_fraction must be in [0, 1), got {min_excess_fraction!r}")
        if not float(min_excess_kwh) >= 0:
            raise ValueError(f"min_excess_kwh must be >= 0, got {min_excess_kwh!r}")
        check_count("min_hours", min_hours)
        check_count("history_days", history_days)
        check_count("min_history_days", min_history_days)
        if int(min_history_days) > int(history_days):
            raise ValueError(
                f"min_history_days ({min_history_days}) must not exceed history_days ({history_days})"
            )
        check_fraction("min_spread_fraction", min_spread_fraction, upper_inclusive=True)
        check_positive("max_gap_minutes", max_gap_minutes)
        self.ratio = ratio
        self.high_factor = high_factor
        self.k = k
        self.min_excess_fraction = min_excess_fraction
        self.min_excess_kwh = min_excess_kwh
        self.min_hours = min_hours
        self.history_days = history_days
        self.min_history_days = min_history_days
        self.min_spread_fraction = min_spread_fraction
        self.max_gap_minutes = max_gap_minutes

    def _bar(self, b: HourlyBaseline) -> np.ndarray:
        """``ratio x median``, or ``high_factor x habitual high`` where lower and the high is a
        habit (drawn from at least :data:`HABIT_DAYS` comparable days)."""
        by_ratio = float(self.ratio) * b.median
        habit = b.days >= max(int(self.min_history_days), HABIT_DAYS)
        out: np.ndarray = np.where(
            habit, np.fmin(by_ratio, float(self.high_factor) * b.q_hi), by_ratio
        )
        return out

    def spikes(self, w: Window) -> tuple[np.ndarray, np.ndarray, pd.DatetimeIndex, HourlyBaseline]:
        """``(kwh, spike mask, hours, baseline)`` over the window's hours."""
        kwh, hours = hourly_energy(w, float(self.max_gap_minutes))
        b = self.baseline(w, kwh, hours)
        spread = np.fmax(b.spread, float(self.min_spread_fraction) * b.median)
        spike = (
            (b.days >= int(self.min_history_days))
            & strictly_greater(kwh, self._bar(b))
            & strictly_greater(kwh, b.q_hi + float(self.k) * spread)
        )
        return kwh, spike, hours, b

    def detect_window(self, w: Window) -> pd.DataFrame:
        """One finding per run of consecutive spike hours of a meter."""
        kwh, spike, hours, b = self.spikes(w)
        if kwh.size == 0:
            return empty_findings()
        n_hours = kwh.shape[1]
        rows_of = np.repeat(np.arange(kwh.shape[0]), n_hours)
        starts, ends, _ = episodes(spike.ravel(), rows_of)
        above = np.nan_to_num((kwh - b.q_hi).ravel())
        csum = np.r_[0.0, np.cumsum(above)]
        excess = csum[ends + 1] - csum[starts]
        usual_day = per_day_sum(b.median, hours).ravel()[starts]
        need = np.fmax(
            float(self.min_excess_fraction) * np.nan_to_num(usual_day), float(self.min_excess_kwh)
        )
        keep = (ends - starts + 1 >= int(self.min_hours)) & strictly_greater(excess, need)
        starts, ends = starts[keep], ends[keep]
        if starts.size == 0:
            return empty_findings()
        hours_known = np.sum(~np.isnan(kwh), axis=1)
        hour_starts = list(hours)
        mt = w.meters
        thresholds = plain(self.get_params())
        out = []
        for s, e in zip(starts, ends, strict=True):  # loop over findings only
            m, c0, c1 = s // n_hours, s % n_hours, e % n_hours
            span = kwh[m, c0 : c1 + 1]
            peak = c0 + int(np.argmax(span))
            known_after = c1 + 1 < n_hours and not np.isnan(kwh[m, c1 + 1])
            start_ts = hour_starts[c0]
            end_ts = hour_starts[c1] + pd.Timedelta(hours=1) if known_after else pd.NaT

            def hour_facts(c: int, m: int = m) -> dict[str, Any]:
                med = float(b.median[m, c])
                return {
                    "hour": hour_starts[c],
                    "kwh": kwh[m, c],
                    "baseline_kwh": med,
                    "habitual_high_kwh": b.q_hi[m, c],
                    "spread_kwh": b.spread[m, c],
                    "ratio": kwh[m, c] / med if med > 0 else None,
                    "comparable_days": int(b.days[m, c]),
                }

            p = hour_facts(peak)
            times = short_ts(hour_starts[peak])
            versus = (
                f"vs usual {p['baseline_kwh']:.2f} kWh (at most "
                f"{float(p['habitual_high_kwh']):.2f} kWh on {p['comparable_days']} comparable days"
                + (f"; {p['ratio']:.1f}×)" if p["ratio"] is not None else ")")
            )
            n_spike = c1 - c0 + 1
            if n_spike == 1:
                summary = f"Consumption {p['kwh']:.2f} kWh in the hour from {times} {versus}"
            else:
                when = (
                    f"from {short_ts(start_ts)} to {short_ts(end_ts)}"
                    if known_after
                    else f"since {short_ts(start_ts)}"
                )
                summary = (
                    f"Consumption peaked at {p['kwh']:.2f} kWh in the hour from {times} "
                    f"{versus}; {n_spike} spike hours {when}"
                )
            out.append(
                {
                    "type": "consumption_spike",
                    "severity": self.severity,
                    "meter_id": mt.ids[m],
                    "transformer_id": mt.transformer_id[m],
                    "starts_at": start_ts,
                    "ends_at": end_ts,
                    "summary": summary,
                    "evidence": {
                        "rule": _SPIKE_RULE,
                        "thresholds": dict(thresholds),
                        **plain(
                            {
                                "baseline": "fitted" if hasattr(self, "profile_") else "rolling",
                                "ct_ratio": mt.ct_ratio[m],
                                "hours": n_spike,
                                "kwh_total": float(np.sum(span)),
                                "kwh_above_habitual": float(
                                    np.nansum(span - b.q_hi[m, c0 : c1 + 1])
                                ),
                                "baseline_kwh_total": float(np.nansum(b.median[m, c0 : c1 + 1])),
                                "first": hour_facts(c0),
                                "peak": p,
                                "window": w.meter_window(m) | {"hours_known": hours_known[m]},
                            }
                        ),
                    },
                }
            )
        return findings_frame(out)


# ----------------------------------------------------------------- drops and zeros


def run_lengths(mask: np.ndarray) -> np.ndarray:
    """Per cell of a meters x hours ``mask``: length of the True run it belongs to (0 if False)."""
    n_m, n_h = mask.shape
    flat = mask.ravel()
    starts, ends, _ = episodes(flat, np.repeat(np.arange(n_m), n_h))
    out = np.zeros(flat.size, dtype=np.int64)
    lengths = ends - starts + 1
    ids = np.cumsum(np.isin(np.arange(flat.size), starts)) - 1
    out[flat] = lengths[ids[flat]]
    return out.reshape(n_m, n_h)


def outage_hours(w: Window, hours: pd.DatetimeIndex) -> np.ndarray:
    """meters x hours mask of the hours touched by an area outage (analytics.detectors.equipment).

    The hour a dead reading falls in and the hour before it (whose energy the reading
    closes) are marked, so supply loss is never judged as a consumption change.
    """
    from meterwatch.analytics.detectors.equipment import outage_rows

    out = np.zeros((w.n_meters, hours.size), dtype=bool)
    if hours.size == 0:
        return out
    rows = outage_rows(w).rows
    if not rows.any():
        return out
    m, c = np.nonzero(rows)
    h = (w.t[m, c] - hours[0].value) // HOUR_NS
    for shift in (0, -1):  # the reading's hour and the hour it closes
        hh = h + shift
        ok = (hh >= 0) & (hh < hours.size)
        out[m[ok], hh[ok]] = True
    return out


def _finding_rows(
    detector: Detector,
    kwh: np.ndarray,
    mask: np.ndarray,
    hours: pd.DatetimeIndex,
    w: Window,
    min_hours: int,
    base: np.ndarray | None,
    rule: str,
    title: str,
) -> pd.DataFrame:
    """Findings from runs of ``mask`` (meters x hours) lasting at least ``min_hours``."""
    n_hours = kwh.shape[1]
    starts, ends, _ = episodes(mask.ravel(), np.repeat(np.arange(kwh.shape[0]), n_hours))
    keep = np.flatnonzero(ends - starts + 1 >= min_hours)
    if keep.size == 0:
        return empty_findings()
    params = plain(detector.get_params())
    out = []
    for e in keep:  # loop over findings only
        s, f = starts[e], ends[e]
        m, c0, c1 = s // n_hours, s % n_hours, f % n_hours
        known_after = c1 + 1 < n_hours and not np.isnan(kwh[m, c1 + 1])
        start_ts = hours[c0]
        end_ts = hours[c1] + pd.Timedelta(hours=1) if known_after else pd.NaT
        n = c1 - c0 + 1
        total = float(np.nansum(kwh[m, c0 : c1 + 1]))
        base_total = None if base is None else float(np.nansum(base[m, c0 : c1 + 1]))
        when = (
            f"from {short_ts(start_ts)} to {short_ts(end_ts)}"
            if known_after
            else f"since {short_ts(start_ts)}"
        )
        versus = (
            ""
            if base_total is None
            else f" against a usual {base_total:.2f} kWh ({100 * total / base_total:.0f} %)"
            if base_total > 0
            else f" against a usual {base_total:.2f} kWh"
        )
        out.append(
            {
                "type": detector.alert_types[0],
                "severity": detector.severity,
                "meter_id": w.meters.ids[m],
                "transformer_id": w.meters.transformer_id[m],
                "starts_at": start_ts,
                "ends_at": end_ts,
                "summary": f"{title}: {total:.2f} kWh in {n} hours{versus} {when}",
                "evidence": plain(
                    {
                        "rule": rule,
                        "thresholds": params,
                        "hours": n,
                        "kwh_total": total,
                        "baseline_kwh_total": base_total,
                        "window": w.meter_window(m),
                    }
                ),
            }
        )
    return findings_frame(out)


_CONSUMPTION_REGISTRY = (
    "transformer_id",
    "role",
    "customer_class",
    "phases",
    "nominal_voltage_v",
    "rated_current_a",
    "ct_ratio",
)


@register(cadence="interval", history_days=1, order=230)
class ZeroConsumption(Detector):
    """A customer meter registering (almost) no energy for a day or more, outside outages.

    An hour is zero when its energy (:func:`hourly_energy`, [kWh]) is ``<= zero_kwh``; a
    finding is a run of at least ``min_hours`` consecutive zero hours of a ``customer``
    meter that are not touched by an area outage (:func:`outage_hours`). A vacant home still
    draws standby power, so a whole day of exactly nothing points at a stopped meter, a
    bypass or a disconnection worth checking.

    Parameters
    ----------
    zero_kwh : float
        Hour energy at or below which the hour counts as zero [kWh]. Default 0.0 (register
        resolution 0.01 kWh: a register that does not move).
    min_hours : int
        Consecutive zero hours [h]. Default 24.
    max_gap_minutes : float
        As in :class:`ConsumptionSpike` [min]. Default 75.
    """

    shares: ClassVar[str] = "hourly"

    alert_types: ClassVar[tuple[str, ...]] = ("zero_consumption",)

    def __init__(
        self, zero_kwh: float = 0.0, min_hours: int = 24, max_gap_minutes: float = 75.0
    ) -> None:
        if not float(zero_kwh) >= 0:
            raise ValueError(f"zero_kwh must be >= 0, got {zero_kwh!r}")
        check_count("min_hours", min_hours)
        check_positive("max_gap_minutes", max_gap_minutes)
        self.zero_kwh = zero_kwh
        self.min_hours = min_hours
        self.max_gap_minutes = max_gap_minutes

    def zero_mask(self, w: Window) -> tuple[np.ndarray, np.ndarray, pd.DatetimeIndex]:
        """``(kwh, zero-run mask, hours)`` with runs shorter than min_hours removed."""
        kwh, hours = hourly_energy(w, float(self.max_gap_minutes))
        if kwh.size == 0:
            return kwh, np.zeros(kwh.shape, bool), hours
        customer = w.meters.customer
        with np.errstate(invalid="ignore"):
            zero = (kwh <= float(self.zero_kwh) + 1e-9) & customer[:, None]
        zero &= ~outage_hours(w, hours)
        zero &= run_lengths(zero) >= int(self.min_hours)
        return kwh, zero, hours

    def detect_window(self, w: Window) -> pd.DataFrame:
        """One finding per run of at least ``min_hours`` zero hours."""
        kwh, zero, hours = self.zero_mask(w)
        if kwh.size == 0:
            return empty_findings()
        return _finding_rows(
            self,
            kwh,
            zero,
            hours,
            w,
            int(self.min_hours),
            None,
            "zero_consumption: hour kWh <= zero_kwh for >= min_hours consecutive hours, "
            "customer meter, outside area outages",
            "No consumption",
        )


@register(cadence="interval", history_days=28, order=220)
class ConsumptionDrop(_ProfileRule):
    """Sustained consumption far below the meter's own usual for those hours and day type.

    Baseline as :class:`ConsumptionSpike` (same day type and hour +-1 h over
    ``history_days``, judged with at least ``min_history_days`` comparable days): ``median``,
    the habitual low ``q_lo`` (10th percentile) and the spread ``1.4826 x MAD``. A drop hour
    has (strict)::

        kWh < ratio x median  and  kWh < q_lo  and  median - kWh > k x spread
        and  median - kWh > min_deficit_kwh

    A finding is a run of at least ``min_hours`` consecutive drop hours of a customer meter,
    outside area outages and outside zero-consumption runs (those are
    :class:`ZeroConsumption`'s, one cause one alert).

    Parameters
    ----------
    ratio : float
        Drop hour is below this fraction of the median [-]. Default 0.5.
    k : float
        Deficit exceeds this many robust standard deviations [-]. Default 3 (Leys et al.
        2013's moderate MAD rule).
    min_deficit_kwh : float
        Absolute floor of the hourly deficit [kWh]. Default 0.1 (project choice: ignores
        near-zero night baselines).
    min_hours : int
        Consecutive drop hours [h]. Default 6.
    history_days : int
        Days of history the baseline draws on [d]. Default 28.
    min_history_days : int
        Fewest comparable days needed to judge an hour [d]. Default 7.
    max_gap_minutes : float
        As in :class:`ConsumptionSpike` [min]. Default 75.
    """

    alert_types: ClassVar[tuple[str, ...]] = ("consumption_drop",)

    def __init__(
        self,
        ratio: float = 0.5,
        k: float = 3.0,
        min_deficit_kwh: float = 0.1,
        min_hours: int = 6,
        history_days: int = 28,
        min_history_days: int = 7,
        max_gap_minutes: float = 75.0,
    ) -> None:
        check_fraction("ratio", ratio)
        check_positive("k", k)
        if not float(min_deficit_kwh) >= 0:
            raise ValueError(f"min_deficit_kwh must be >= 0, got {min_deficit_kwh!r}")
        check_count("min_hours", min_hours)
        check_count("history_days", history_days)
        check_count("min_history_days", min_history_days)
        if int(min_history_days) > int(history_days):
            raise ValueError(
                f"min_history_days ({min_history_days}) must not exceed history_days "
                f"({history_days})"
            )
        check_positive("max_gap_minutes", max_gap_minutes)
        self.ratio = ratio
        self.k = k
        self.min_deficit_kwh = min_deficit_kwh
        self.min_hours = min_hours
        self.history_days = history_days
        self.min_history_days = min_history_days
        self.max_gap_minutes = max_gap_minutes

    def drop_mask(self, w: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DatetimeIndex]:
        """``(kwh, drop mask, baseline median, hours)`` before the min_hours filter."""
        zero = ZeroConsumption(max_gap_minutes=self.max_gap_minutes)
        kwh, zeros, hours = zero.zero_mask(w)
        if kwh.size == 0:
            return kwh, zeros, kwh, hours
        b = self.baseline(w, kwh, hours)
        deficit = b.median - kwh
        drop = (
            w.meters.customer[:, None]
            & (b.days >= int(self.min_history_days))
            & strictly_less(kwh, float(self.ratio) * b.median)
            & strictly_less(kwh, b.q_lo)
            & strictly_greater(deficit, float(self.k) * b.spread)
            & strictly_greater(deficit, float(self.min_deficit_kwh))
            & ~outage_hours(w, hours)
            & ~zeros
        )
        return kwh, drop, b.median, hours

    def detect_window(self, w: Window) -> pd.DataFrame:
        """One finding per run of at least ``min_hours`` drop hours."""
        kwh, drop, base, hours = self.drop_mask(w)
        if kwh.size == 0:
            return empty_findings()
        return _finding_rows(
            self,
            kwh,
            drop,
            hours,
            w,
            int(self.min_hours),
            base,
            "consumption_drop: kWh < ratio*median, kWh < q_lo, median - kWh > k*spread and > "
            "min_deficit_kwh for >= min_hours hours; baseline over the same day type and hour "
            "(+-1 h) of history_days, >= min_history_days comparable days",
            "Consumption drop",
        )


def daily_energy(kwh: np.ndarray, hours: pd.DatetimeIndex) -> tuple[np.ndarray, pd.DatetimeIndex]:
    """meters x UTC days energy [kWh] from a meters x hours matrix; NaN unless 24 h known."""
    if kwh.size == 0:
        return np.zeros((kwh.shape[0], 0)), pd.DatetimeIndex([], tz="UTC")
    first = hours[0].floor("D")
    offset = int((hours[0] - first) / pd.Timedelta(hours=1))
    n_days = -(-(offset + hours.size) // 24)
    padded = np.full((kwh.shape[0], n_days * 24), np.nan)
    padded[:, offset : offset + hours.size] = kwh
    days = padded.reshape(kwh.shape[0], n_days, 24)
    known = np.sum(~np.isnan(days), axis=2) == 24
    total = np.where(known, np.nansum(days, axis=2), np.nan)
    return total, pd.date_range(first, periods=n_days, freq="D")


def cusum_drop(z: np.ndarray, k: float = 0.5) -> np.ndarray:
    """One-sided lower CUSUM ``S_t = max(0, S_{t-1} - z_t - k)`` along axis 1 (NaN -> 0 step).

    ``z`` is a meters x time matrix of standardized residuals (observed minus baseline over
    spread). Large ``S`` means a sustained drop; alarm at ``S > h`` (Page 1954; ``k = 0.5``,
    ``h = 4..5`` detect a one-sigma shift, Montgomery, *Statistical Quality Control*).
    """
    out = np.zeros(z.shape)
    s = np.zeros(z.shape[0])
    step = np.nan_to_num(-z - float(k), nan=-float(k))
    for t in range(z.shape[1]):  # loop over time steps, vectorized over meters
        s = np.maximum(0.0, s + step[:, t])
        out[:, t] = s
    return out
