"""Consumption detectors against a meter's own history: hourly energy and spikes."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from analytics.base import (
    Detector,
    check_count,
    check_fraction,
    check_positive,
    episodes,
    findings_frame,
    meter_windows,
    plain,
    prepare,
    short_ts,
    strictly_greater,
    ts_ns,
)
from meterwatch.schema import empty_findings

#: One hour [ns].
HOUR_NS = 3_600 * 10**9
#: Scale of the median absolute deviation that estimates a normal standard deviation [-]
#: (1 / Phi^-1(3/4); Rousseeuw & Croux 1993, Leys et al. 2013).
MAD_SCALE = 1.4826


def hourly_energy(
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


class ConsumptionSpike(Detector):
    """Hourly consumption far above the meter's usual for that hour of day.

    Hourly energy comes from :func:`hourly_energy` (register delta x ``ct_ratio``, [kWh]).
    For every (meter, hour) the baseline is the median of the same UTC hour of day on the
    previous ``history_days`` days, and the spread is ``1.4826 x MAD`` of the same samples
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
    """

    alert_types: ClassVar[tuple[str, ...]] = ("consumption_spike",)
    severity: ClassVar[str] = "warning"

    def __init__(
        self,
        ratio: float = 2.5,
        k: float = 6.0,
        min_excess_kwh: float = 0.5,
        history_days: int = 7,
        min_history_days: int = 1,
        min_spread_fraction: float = 0.1,
        max_gap_minutes: float = 75.0,
    ) -> None:
        check_positive("ratio", ratio)
        check_positive("k", k)
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

    def baseline(self, kwh: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(baseline [kWh], spread [kWh], samples [d])`` per (meter, hour) of ``kwh``."""
        samples = same_hour_history(kwh, int(self.history_days))
        count = np.sum(~np.isnan(samples), axis=0)
        with warnings.catch_warnings():
            # All-NaN slices (no history yet) are expected and give NaN.
            warnings.simplefilter("ignore", RuntimeWarning)
            base = np.nanmedian(samples, axis=0)
            mad = np.nanmedian(np.abs(samples - base), axis=0)
        spread = np.fmax(MAD_SCALE * mad, float(self.min_spread_fraction) * base)
        return base, spread, count

    def detect(self, readings: pd.DataFrame, meters: pd.DataFrame) -> pd.DataFrame:
        """One finding per run of consecutive spike hours of a meter."""
        frame = prepare(readings, meters, ["transformer_id", "ct_ratio"])
        kwh, meter_ids, hours = hourly_energy(frame, float(self.max_gap_minutes))
        if kwh.size == 0:
            return empty_findings()
        base, spread, count = self.baseline(kwh)
        spike = (
            (count >= int(self.min_history_days))
            & strictly_greater(kwh, float(self.ratio) * base)
            & strictly_greater(kwh, base + float(self.k) * spread)
            & strictly_greater(kwh - base, float(self.min_excess_kwh))
        )
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
