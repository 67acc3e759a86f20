"""Consumption detectors against a meter's own history: hourly energy, spikes, drops, zeros."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from meterwatch.analytics.base import (
    Detector,
    check_count,
    check_fraction,
    check_positive,
    episodes,
    findings_frame,
    nanmedian,
    plain,
    short_ts,
    strictly_greater,
    strictly_less,
)
from meterwatch.analytics.registry import register
from meterwatch.analytics.window import Window, prev_present, register_reads
from meterwatch.core.schema import empty_findings

#: One hour [ns].
HOUR_NS = 3_600 * 10**9
#: Scale of the median absolute deviation that estimates a normal standard deviation [-]
#: (1 / Phi^-1(3/4); Rousseeuw & Croux 1993, Leys et al. 2013).
MAD_SCALE = 1.4826


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
        prev_col, prev = prev_present(energy, has)
        ok_prev = has & (prev_col >= 0)
        delta = np.where(ok_prev, energy - prev, 0.0)
        run_max = np.fmax.accumulate(energy, axis=1) if w.n_cells else energy
        rows = np.arange(w.n_meters)[:, None]
        max_prev = np.where(prev_col >= 0, run_max[rows, np.maximum(prev_col, 0)], np.nan)
        with np.errstate(invalid="ignore"):
            bad = ok_prev & ((delta < 0) | (prev < max_prev))
        ct = w.meters.ct_ratio[:, None]
        clean = np.cumsum(np.where(bad, 0.0, delta) * ct, axis=1)
        n_bad = np.cumsum(bad, axis=1)
        return {"has": has, "clean": clean, "n_bad": n_bad, "t": t, "k": np.array(k)}

    out: dict[str, np.ndarray] = w.memo("register_steps", build)
    return out


def _hourly_energy(w: Window, max_gap_minutes: float) -> tuple[np.ndarray, pd.DatetimeIndex]:
    empty = (np.zeros((w.n_meters, 0)), pd.DatetimeIndex([], tz="UTC"))
    if w.n_cells == 0 or w.step > HOUR_NS or HOUR_NS % w.step:
        return empty
    steps = register_steps(w)
    has, clean, n_bad, t_reg = steps["has"], steps["clean"], steps["n_bad"], steps["t"]
    kk = int(steps["k"])
    n_c = has.shape[1]  # positions: kk per cell
    cols = np.arange(n_c)
    last_idx = np.maximum.accumulate(np.where(has, cols[None, :], -1), axis=1)
    next_idx = np.minimum.accumulate(np.where(has, cols[None, :], n_c)[:, ::-1], axis=1)[:, ::-1]
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
    rows = np.arange(w.n_meters)[:, None]
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
    kwh = value[:, 1:] - value[:, :-1]
    decreased = n_bad[rows, ac][:, 1:] != n_bad[rows, bc][:, :-1]
    kwh = np.where(decreased, np.nan, kwh)
    hours = pd.DatetimeIndex(pd.to_datetime(b[:-1], utc=True))
    return kwh, hours


def same_hour_history(kwh: np.ndarray, days: int) -> np.ndarray:
    """Samples of the same hour of day on each of the previous ``days`` days.

    ``kwh`` is meters x hours on a contiguous hourly grid; the result is
    ``days x meters x hours`` where ``[d - 1, m, h] = kwh[m, h - 24 d]`` (NaN before the
    start of the grid).
    """
    n_meters, n_hours = kwh.shape
    samples = np.full((days, n_meters, n_hours), np.nan)
    for d in range(1, days + 1):  # loop over days of history, not meters
        lag = 24 * d
        if lag < n_hours:
            samples[d - 1, :, lag:] = kwh[:, : n_hours - lag]
    return samples


_SPIKE_RULE = (
    "kWh > ratio*baseline and kWh > baseline + k*spread and kWh - baseline > min_excess_kwh; "
    "baseline = median of the same UTC hour over history_days, "
    "spread = max(1.4826*MAD, min_spread_fraction*baseline)"
)


@register(cadence="interval", history_days=7, order=210)
class ConsumptionSpike(Detector):
    """Hourly consumption far above the meter's usual for that hour of day.

    Hourly energy comes from :func:`hourly_energy` (register delta x ``ct_ratio``, [kWh]).
    For every (meter, hour) the baseline is the median of the same UTC hour of day on the
    previous ``history_days`` days of the same day type (weekday / weekend), and the spread is ``1.4826 x MAD`` of the same samples
    (a robust standard deviation), floored at ``min_spread_fraction x baseline``. Hours
    with fewer than ``min_history_days`` samples are not judged. An hour is a spike when
    (all strict)::

        kWh > ratio x baseline  and  kWh > baseline + k x spread
        and  kWh - baseline > min_excess_kwh

    Consecutive spike hours of a meter form one finding: ``starts_at`` is the start of the
    first hour, ``ends_at`` the end of the last one when the following hour is known and
    not a spike, else NaT. The readings window must include the history (at least
    ``min_history_days`` days before the hours to judge); ``fit`` learns nothing.

    Parameters
    ----------
    ratio : float
        Spike hour is more than this multiple of the baseline [-]. Default 2.5 (project
        choice, with ``k``: a robust z-score alone flags ordinary evening peaks of meters
        with a very flat history).
    k : float
        Spike hour exceeds the baseline by more than ``k`` robust standard deviations [-].
        Default 6 (project choice; well beyond the 3-3.5 usual for MAD outlier rules,
        Leys et al. 2013, because hourly load is heavy-tailed).
    min_excess_kwh : float
        Spike hour exceeds the baseline by more than this energy [kWh]. Default 0.5
        (project choice: one kettle-hour, ignores noise of near-zero baselines).
    history_days : int
        Days of same-hour history in the baseline [d]. Default 7 (one week covers every
        weekday once).
    min_history_days : int
        Fewest history samples (days with that hour known) needed to judge an hour [d].
        Default 1.
    min_spread_fraction : float
        Floor of the spread as a fraction of the baseline [-]. Default 0.1 (project choice:
        a perfectly flat history would otherwise make any change "infinitely" unusual).
    max_gap_minutes : float
        Longest interval between two readings across which the register is interpolated
        at an hour boundary [min]. Default 75: hourly polls with some jitter still give
        hourly energy; a longer gap leaves its hours unknown.
    history_weeks : int
        Weeks of same-hour-of-week history [weeks]. Default 4. Where at least one such
        sample exists, the hour must pass the same three tests against the hour-of-week
        median too (spread ``1.4826 x MAD`` floored as above), so weekend and shift
        patterns are not spikes. 0 disables the weekly check.
    """

    alert_types: ClassVar[tuple[str, ...]] = ("consumption_spike",)

    def __init__(
        self,
        ratio: float = 2.5,
        k: float = 6.0,
        min_excess_kwh: float = 0.5,
        history_days: int = 7,
        min_history_days: int = 1,
        min_spread_fraction: float = 0.1,
        max_gap_minutes: float = 75.0,
        history_weeks: int = 4,
    ) -> None:
        check_positive("ratio", ratio)
        check_positive("k", k)
        check_count("history_weeks", history_weeks, minimum=0)
        if not float(min_excess_kwh) >= 0:
            raise ValueError(f"min_excess_kwh must be >= 0, got {min_excess_kwh!r}")
        check_count("history_days", history_days)
        check_count("min_history_days", min_history_days)
        if int(min_history_days) > int(history_days):
            raise ValueError(
                f"min_history_days ({min_history_days}) must not exceed history_days ({history_days})"
            )
        check_fraction("min_spread_fraction", min_spread_fraction, upper_inclusive=True)
        check_positive("max_gap_minutes", max_gap_minutes)
        self.ratio = ratio
        self.k = k
        self.min_excess_kwh = min_excess_kwh
        self.history_days = history_days
        self.min_history_days = min_history_days
        self.min_spread_fraction = min_spread_fraction
        self.max_gap_minutes = max_gap_minutes
        self.history_weeks = history_weeks

    def baseline(
        self, kwh: np.ndarray, hours: pd.DatetimeIndex | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(baseline [kWh], spread [kWh], samples [d])`` per (meter, hour) of ``kwh``.

        With ``hours`` (the grid's hour starts), only history days of the same day type
        (Monday-Friday vs Saturday-Sunday, UTC) count: weekends are not weekday spikes.
        """
        samples = same_hour_history(kwh, int(self.history_days))
        if hours is not None and len(hours):
            weekend = np.asarray(hours.day_of_week >= 5)
            for d in range(1, int(self.history_days) + 1):  # loop over history days
                lag = 24 * d
                other = np.ones(weekend.size, dtype=bool)
                other[lag:] = weekend[lag:] != weekend[:-lag]
                samples[d - 1][:, other] = np.nan
        count = np.sum(~np.isnan(samples), axis=0)
        with warnings.catch_warnings():
            # All-NaN slices (no history yet) are expected and give NaN.
            warnings.simplefilter("ignore", RuntimeWarning)
            base = nanmedian(samples, axis=0)
            mad = nanmedian(np.abs(samples - base), axis=0)
        spread = np.fmax(MAD_SCALE * mad, float(self.min_spread_fraction) * base)
        return base, spread, count

    def detect_window(self, w: Window) -> pd.DataFrame:
        """One finding per run of consecutive spike hours of a meter."""
        kwh, hours = hourly_energy(w, float(self.max_gap_minutes))
        if kwh.size == 0:
            return empty_findings()
        base, spread, count = self.baseline(kwh, hours)
        spike = (
            (count >= int(self.min_history_days))
            & strictly_greater(kwh, float(self.ratio) * base)
            & strictly_greater(kwh, base + float(self.k) * spread)
            & strictly_greater(kwh - base, float(self.min_excess_kwh))
        )
        if int(self.history_weeks) > 0:
            # Where the same hour of the week is known, the hour must also stand out
            # against it: a Saturday morning is compared with Saturday mornings.
            w_base, w_mad, w_count = robust_baseline(
                same_hour_of_week_history(kwh, int(self.history_weeks))
            )
            w_spread = np.fmax(w_mad, float(self.min_spread_fraction) * w_base)
            weekly_ok = (
                strictly_greater(kwh, float(self.ratio) * w_base)
                & strictly_greater(kwh, w_base + float(self.k) * w_spread)
                & strictly_greater(kwh - w_base, float(self.min_excess_kwh))
            )
            spike &= (w_count == 0) | weekly_ok
        n_hours = kwh.shape[1]
        rows_of = np.repeat(np.arange(kwh.shape[0]), n_hours)
        starts, ends, _ = episodes(spike.ravel(), rows_of)
        if starts.size == 0:
            return empty_findings()

        hours_known = np.sum(~np.isnan(kwh), axis=1)
        hour_starts = list(hours)
        mt = w.meters
        thresholds = plain(
            {
                "ratio": self.ratio,
                "k": self.k,
                "min_excess_kwh": self.min_excess_kwh,
                "history_days": self.history_days,
                "min_history_days": self.min_history_days,
                "min_spread_fraction": self.min_spread_fraction,
            }
        )
        out = []
        for s, e in zip(starts, ends, strict=True):  # loop over findings only
            m, c0, c1 = s // n_hours, s % n_hours, e % n_hours
            span = kwh[m, c0 : c1 + 1]
            peak = c0 + int(np.argmax(span))
            known_after = c1 + 1 < n_hours and not np.isnan(kwh[m, c1 + 1])
            start_ts = hour_starts[c0]
            end_ts = hour_starts[c1] + pd.Timedelta(hours=1) if known_after else pd.NaT

            def hour_facts(c: int, m: int = m) -> dict[str, Any]:
                b = base[m, c]
                return {
                    "hour": hour_starts[c],
                    "kwh": kwh[m, c],
                    "baseline_kwh": b,
                    "spread_kwh": spread[m, c],
                    "ratio": kwh[m, c] / b if b > 0 else None,
                    "history_samples": count[m, c],
                }

            p = hour_facts(peak)
            times = short_ts(hour_starts[peak])
            if p["ratio"] is None:
                versus = f"vs baseline {p['baseline_kwh']:.2f} kWh"
            else:
                versus = f"vs baseline {p['baseline_kwh']:.2f} kWh ({p['ratio']:.1f}×"
                days = int(p["history_samples"])
                versus += f", median of {days} day{'s' if days != 1 else ''})"
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
                                "ct_ratio": mt.ct_ratio[m],
                                "hours": n_spike,
                                "kwh_total": float(np.sum(span)),
                                "baseline_kwh_total": float(np.sum(base[m, c0 : c1 + 1])),
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


def same_hour_of_week_history(kwh: np.ndarray, weeks: int) -> np.ndarray:
    """Samples of the same hour of the week on each of the previous ``weeks`` weeks.

    Like :func:`same_hour_history` with a lag of 168 h: ``[w - 1, m, h] = kwh[m, h - 168 w]``.
    """
    n_meters, n_hours = kwh.shape
    samples = np.full((weeks, n_meters, n_hours), np.nan)
    for w in range(1, weeks + 1):  # loop over weeks of history, not meters
        lag = 168 * w
        if lag < n_hours:
            samples[w - 1, :, lag:] = kwh[:, : n_hours - lag]
    return samples


def robust_baseline(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(median, 1.4826 x MAD, count)`` over axis 0 of ``samples``, NaN-aware."""
    count = np.sum(~np.isnan(samples), axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        base = nanmedian(samples, axis=0)
        mad = nanmedian(np.abs(samples - base), axis=0)
    return base, MAD_SCALE * mad, count


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
class ConsumptionDrop(Detector):
    """Sustained consumption far below the meter's usual for those hours of the week.

    Baseline of a (meter, hour): the median of the same hour of the week over the previous
    ``history_weeks`` weeks, spread ``1.4826 x MAD`` (robust sigma, Leys et al. 2013); hours
    with fewer than ``min_history_weeks`` samples are not judged. A drop hour has (strict)::

        kWh < ratio x baseline  and  baseline - kWh > k x spread
        and  baseline - kWh > min_deficit_kwh

    A finding is a run of at least ``min_hours`` consecutive drop hours of a customer meter,
    outside area outages and outside zero-consumption runs (those are
    :class:`ZeroConsumption`'s, one cause one alert). Hour-of-week baselines keep weekends
    and shift patterns from looking like drops.

    Parameters
    ----------
    ratio : float
        Drop hour is below this fraction of the baseline [-]. Default 0.5.
    k : float
        Drop exceeds this many robust sigmas [-]. Default 3 (Leys et al. 2013's moderate
        MAD rule).
    min_deficit_kwh : float
        Absolute floor of the hourly deficit [kWh]. Default 0.1 (project choice: ignores
        near-zero night baselines).
    min_hours : int
        Consecutive drop hours [h]. Default 6.
    history_weeks : int
        Weeks of same-hour-of-week history [weeks]. Default 4.
    min_history_weeks : int
        Fewest samples needed to judge an hour [weeks]. Default 2.
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
        history_weeks: int = 4,
        min_history_weeks: int = 2,
        max_gap_minutes: float = 75.0,
    ) -> None:
        check_fraction("ratio", ratio)
        check_positive("k", k)
        if not float(min_deficit_kwh) >= 0:
            raise ValueError(f"min_deficit_kwh must be >= 0, got {min_deficit_kwh!r}")
        check_count("min_hours", min_hours)
        check_count("history_weeks", history_weeks)
        check_count("min_history_weeks", min_history_weeks)
        if int(min_history_weeks) > int(history_weeks):
            raise ValueError(
                f"min_history_weeks ({min_history_weeks}) must not exceed history_weeks "
                f"({history_weeks})"
            )
        check_positive("max_gap_minutes", max_gap_minutes)
        self.ratio = ratio
        self.k = k
        self.min_deficit_kwh = min_deficit_kwh
        self.min_hours = min_hours
        self.history_weeks = history_weeks
        self.min_history_weeks = min_history_weeks
        self.max_gap_minutes = max_gap_minutes

    def drop_mask(self, w: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DatetimeIndex]:
        """``(kwh, drop mask, baseline, hours)`` before the min_hours filter."""
        zero = ZeroConsumption(max_gap_minutes=self.max_gap_minutes)
        kwh, zeros, hours = zero.zero_mask(w)
        if kwh.size == 0:
            return kwh, zeros, kwh, hours
        base, spread, count = robust_baseline(
            same_hour_of_week_history(kwh, int(self.history_weeks))
        )
        deficit = base - kwh
        customer = w.meters.customer
        drop = (
            customer[:, None]
            & (count >= int(self.min_history_weeks))
            & strictly_less(kwh, float(self.ratio) * base)
            & strictly_greater(deficit, float(self.k) * spread)
            & strictly_greater(deficit, float(self.min_deficit_kwh))
            & ~outage_hours(w, hours)
            & ~zeros
        )
        return kwh, drop, base, hours

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
            "consumption_drop: kWh < ratio*baseline and baseline - kWh > k*spread and > "
            "min_deficit_kwh for >= min_hours hours; baseline = median of the same hour of "
            "the week over history_weeks, spread = 1.4826*MAD",
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
