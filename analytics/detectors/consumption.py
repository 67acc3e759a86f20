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
    memo_on,
    meter_windows,
    nanmedian,
    plain,
    prepare,
    short_ts,
    strictly_greater,
    strictly_less,
    ts_ns,
)
from meterwatch.analytics.registry import register
from meterwatch.core.schema import empty_findings

#: One hour [ns].
HOUR_NS = 3_600 * 10**9
#: Scale of the median absolute deviation that estimates a normal standard deviation [-]
#: (1 / Phi^-1(3/4); Rousseeuw & Croux 1993, Leys et al. 2013).
MAD_SCALE = 1.4826


def hourly_energy(
    frame: pd.DataFrame, max_gap_minutes: float
) -> tuple[np.ndarray, pd.Index, pd.DatetimeIndex]:
    """Billed energy per meter and UTC hour (see :func:`_hourly_energy`); shared in a session.

    The matrix is shared read-only between the detectors of one suite run
    (:func:`analytics.base.memo_on`): callers must not modify it in place.
    """
    result: tuple[np.ndarray, pd.Index, pd.DatetimeIndex] = memo_on(
        frame,
        "hourly_energy",
        (float(max_gap_minutes),),
        lambda: _read_only(_hourly_energy(frame, max_gap_minutes)),
    )
    return result


def _read_only(
    result: tuple[np.ndarray, pd.Index, pd.DatetimeIndex],
) -> tuple[np.ndarray, pd.Index, pd.DatetimeIndex]:
    result[0].setflags(write=False)  # shared: an in-place change would leak between detectors
    return result


def _hourly_energy(
    frame: pd.DataFrame, max_gap_minutes: float
) -> tuple[np.ndarray, pd.Index, pd.DatetimeIndex]:
    """Billed energy per meter and UTC hour, as a meters x hours matrix [kWh].

    ``frame`` is a :func:`analytics.base.prepare` frame with a ``ct_ratio`` column. The
    register (``energy_import_kwh`` x ``ct_ratio``) is interpolated linearly at every hour
    boundary between the two readings around it, provided they are at most
    ``max_gap_minutes`` [min] apart; an hour's energy is the difference of its two
    boundaries. So a data gap leaves its hours NaN instead of lumping their energy into one
    hour, and polls that are not aligned to the hour are apportioned correctly (for
    readings exactly on the hour this equals summing the interval deltas of the hour).
    A register decrease (register_decrease's business) makes the hours around it NaN:
    every interval that ends below the register's running maximum or starts from below it
    is untrusted, so a single low reading neither makes a negative hour nor a false
    "spike" when the register comes back. (After a permanent reset, e.g. a replaced meter,
    the meter has no hourly energy until the reset leaves the window.) Missing register
    values are skipped.

    Returns ``(kwh, meter_ids, hours)``: ``kwh[m, h]`` is the energy of meter
    ``meter_ids[m]`` in the hour starting at ``hours[h]``; NaN where unknown.
    """
    g = frame.loc[
        frame["energy_import_kwh"].notna(), ["meter_id", "ts", "energy_import_kwh", "ct_ratio"]
    ]
    g = g.reset_index(drop=True)
    empty = (np.zeros((0, 0)), pd.Index([], dtype=object), pd.DatetimeIndex([], tz="UTC"))
    if len(g) < 2:
        return empty
    codes, meter_ids = pd.factorize(g["meter_id"], sort=True)
    t = ts_ns(g["ts"])
    energy = g["energy_import_kwh"].to_numpy(dtype=float)
    ct = pd.to_numeric(g["ct_ratio"], errors="coerce").to_numpy(dtype=float)
    same_prev = np.r_[False, codes[1:] == codes[:-1]]
    delta = np.where(same_prev, np.r_[0.0, np.diff(energy)], 0.0)
    by_meter = pd.Series(codes)
    run_max = pd.Series(energy).groupby(by_meter).cummax().to_numpy()
    prev_in_dip = np.r_[False, energy[:-1] < run_max[:-1]]
    bad = same_prev & ((delta < 0) | prev_in_dip)
    clean = pd.Series(np.where(bad, 0.0, delta) * ct).groupby(by_meter).cumsum().to_numpy()
    n_bad = pd.Series(bad.astype(np.int64)).groupby(by_meter).cumsum().to_numpy()

    # Hour boundaries inside each meter's span of readings, vectorized over meters.
    first = t[~same_prev]
    last = t[np.r_[~same_prev[1:], True]]
    b_first = -(-first // HOUR_NS) * HOUR_NS
    b_last = last // HOUR_NS * HOUR_NS
    n_b = np.maximum((b_last - b_first) // HOUR_NS + 1, 0)
    total = int(n_b.sum())
    if total == 0:
        return empty
    b_code = np.repeat(np.arange(n_b.size), n_b)
    b_offset = np.arange(total) - np.repeat(np.cumsum(n_b) - n_b, n_b)
    b = np.repeat(b_first, n_b) + b_offset * HOUR_NS

    left = pd.DataFrame({"code": b_code, "b": b, "pos": np.arange(total)}).sort_values("b")
    right = pd.DataFrame({"code": codes, "t": t, "c": clean, "nb": n_bad}).sort_values("t")
    around = {}
    for direction in ("backward", "forward"):
        m = pd.merge_asof(left, right, left_on="b", right_on="t", by="code", direction=direction)
        around[direction] = m.sort_values("pos")
    bw, fw = around["backward"], around["forward"]
    t_b, t_a = bw["t"].to_numpy(dtype=float), fw["t"].to_numpy(dtype=float)
    c_b, c_a = bw["c"].to_numpy(dtype=float), fw["c"].to_numpy(dtype=float)
    gap = t_a - t_b
    frac = np.divide(b - t_b, gap, out=np.zeros(total), where=gap > 0)
    at_boundary = np.where(gap <= max_gap_minutes * 60e9, c_b + (c_a - c_b) * frac, np.nan)

    # Hour [b_j, b_j+1) of the same meter; invalid if a decrease lies between its brackets.
    j = np.flatnonzero(b_code[1:] == b_code[:-1])
    kwh = at_boundary[j + 1] - at_boundary[j]
    decreased = fw["nb"].to_numpy()[j + 1] != bw["nb"].to_numpy()[j]
    kwh = np.where(decreased, np.nan, kwh)

    h0 = int(b.min())
    n_hours = int((b.max() - h0) // HOUR_NS)
    matrix = np.full((meter_ids.size, n_hours), np.nan)
    matrix[b_code[j], (b[j] - h0) // HOUR_NS] = kwh
    hours = pd.DatetimeIndex(pd.to_datetime(h0 + np.arange(n_hours) * HOUR_NS, utc=True))
    return matrix, pd.Index(meter_ids), hours


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

    def detect(self, readings: pd.DataFrame, meters: pd.DataFrame) -> pd.DataFrame:
        """One finding per run of consecutive spike hours of a meter."""
        frame = prepare(readings, meters, ["transformer_id", "ct_ratio"])
        kwh, meter_ids, hours = hourly_energy(frame, float(self.max_gap_minutes))
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

        windows = meter_windows(frame)
        per_meter = frame.groupby("meter_id", sort=True)[["transformer_id", "ct_ratio"]].first()
        areas = per_meter["transformer_id"].to_dict()
        ct_ratios = per_meter["ct_ratio"].to_dict()
        hours_known = np.sum(~np.isnan(kwh), axis=1)
        hour_starts = list(hours)
        meter_list = list(meter_ids)
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
            meter = meter_list[m]
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
                    "meter_id": meter,
                    "transformer_id": areas[meter],
                    "starts_at": start_ts,
                    "ends_at": end_ts,
                    "summary": summary,
                    "evidence": {
                        "rule": _SPIKE_RULE,
                        "thresholds": dict(thresholds),
                        **plain(
                            {
                                "ct_ratio": ct_ratios[meter],
                                "hours": n_spike,
                                "kwh_total": float(np.sum(span)),
                                "baseline_kwh_total": float(np.sum(base[m, c0 : c1 + 1])),
                                "first": hour_facts(c0),
                                "peak": p,
                                "window": windows[meter] | {"hours_known": hours_known[m]},
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


def outage_hours(frame: pd.DataFrame, meter_ids: pd.Index, hours: pd.DatetimeIndex) -> np.ndarray:
    """meters x hours mask of the hours touched by an area outage (see analytics.detectors.equipment).

    The hour a dead reading falls in and the hour before it (whose energy the reading
    closes) are marked, so supply loss is never judged as a consumption change.
    """
    from meterwatch.analytics.detectors.equipment import REGISTRY_COLUMNS, outage_rows

    out = np.zeros((meter_ids.size, hours.size), dtype=bool)
    if hours.size == 0 or not set(REGISTRY_COLUMNS) <= set(frame.columns):
        return out
    rows, _ = outage_rows(frame)
    if not rows.any():
        return out
    m = meter_ids.get_indexer(frame.loc[rows, "meter_id"])
    h = (ts_ns(frame.loc[rows, "ts"]) - hours[0].value) // HOUR_NS
    for shift in (0, -1):  # the reading's hour and the hour it closes
        hh = h + shift
        ok = (m >= 0) & (hh >= 0) & (hh < hours.size)
        out[m[ok], hh[ok]] = True
    return out


def _finding_rows(
    detector: Detector,
    kwh: np.ndarray,
    mask: np.ndarray,
    meter_ids: pd.Index,
    hours: pd.DatetimeIndex,
    frame: pd.DataFrame,
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
    windows = meter_windows(frame)
    areas = frame.groupby("meter_id", sort=True)["transformer_id"].first().to_dict()
    params = plain(detector.get_params())
    out = []
    for e in keep:  # loop over findings only
        s, f = starts[e], ends[e]
        m, c0, c1 = s // n_hours, s % n_hours, f % n_hours
        meter = meter_ids[m]
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
                "meter_id": meter,
                "transformer_id": areas[meter],
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
                        "window": windows[meter],
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

    def zero_mask(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, pd.Index, Any]:
        """``(kwh, zero-run mask, meter_ids, hours)`` with runs shorter than min_hours removed."""
        kwh, meter_ids, hours = hourly_energy(frame, float(self.max_gap_minutes))
        if kwh.size == 0:
            return kwh, np.zeros(kwh.shape, bool), meter_ids, hours
        role = frame.groupby("meter_id", sort=True)["role"].first().reindex(meter_ids)
        customer = (role.astype(str) == "customer").to_numpy()
        with np.errstate(invalid="ignore"):
            zero = (kwh <= float(self.zero_kwh) + 1e-9) & customer[:, None]
        zero &= ~outage_hours(frame, meter_ids, hours)
        zero &= run_lengths(zero) >= int(self.min_hours)
        return kwh, zero, meter_ids, hours

    def detect(self, readings: pd.DataFrame, meters: pd.DataFrame) -> pd.DataFrame:
        """One finding per run of at least ``min_hours`` zero hours."""
        frame = prepare(readings, meters, list(_CONSUMPTION_REGISTRY))
        kwh, zero, meter_ids, hours = self.zero_mask(frame)
        if kwh.size == 0:
            return empty_findings()
        return _finding_rows(
            self,
            kwh,
            zero,
            meter_ids,
            hours,
            frame,
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

    def drop_mask(
        self, frame: pd.DataFrame
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.Index, Any]:
        """``(kwh, drop mask, baseline, meter_ids, hours)`` before the min_hours filter."""
        zero = ZeroConsumption(max_gap_minutes=self.max_gap_minutes)
        kwh, zeros, meter_ids, hours = zero.zero_mask(frame)
        if kwh.size == 0:
            return kwh, zeros, kwh, meter_ids, hours
        base, spread, count = robust_baseline(
            same_hour_of_week_history(kwh, int(self.history_weeks))
        )
        deficit = base - kwh
        role = frame.groupby("meter_id", sort=True)["role"].first().reindex(meter_ids)
        customer = (role.astype(str) == "customer").to_numpy()
        drop = (
            customer[:, None]
            & (count >= int(self.min_history_weeks))
            & strictly_less(kwh, float(self.ratio) * base)
            & strictly_greater(deficit, float(self.k) * spread)
            & strictly_greater(deficit, float(self.min_deficit_kwh))
            & ~outage_hours(frame, meter_ids, hours)
            & ~zeros
        )
        return kwh, drop, base, meter_ids, hours

    def detect(self, readings: pd.DataFrame, meters: pd.DataFrame) -> pd.DataFrame:
        """One finding per run of at least ``min_hours`` drop hours."""
        frame = prepare(readings, meters, list(_CONSUMPTION_REGISTRY))
        kwh, drop, base, meter_ids, hours = self.drop_mask(frame)
        if kwh.size == 0:
            return empty_findings()
        return _finding_rows(
            self,
            kwh,
            drop,
            meter_ids,
            hours,
            frame,
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
