"""Consumption baselines: each meter's usual energy per day type and hour, with its spread.

A meter's hours are compared with the same hour of comparable days (same day type, weekday or
weekend, UTC): the baseline is the median of those samples and its spread ``1.4826 x MAD``
(robust standard deviation; Rousseeuw & Croux 1993, Leys et al. 2013); the habitual range is
the ``q_lo``..``q_hi`` quantiles of the hour pooled with its neighbouring hour on each side,
so a habit that shifts by an hour is still itself. A verdict needs ``min_days`` comparable days with that hour
known: no baseline from one or two days.

:func:`fit_profile` summarises a whole history once (the baselines a daily run keeps);
:func:`rolling_profile` gives every day of a long window the profile of the days before it
(an offline analysis over weeks), looping over days, vectorized over meters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Scale of the median absolute deviation that estimates a normal standard deviation [-].
MAD_SCALE = 1.4826


def nanquantiles(a: np.ndarray, qs: tuple[float, ...], axis: int) -> list[np.ndarray]:
    """Linear-interpolation quantiles ``qs`` ignoring NaN along ``axis`` (one sort for all);
    NaN where a slice has no number. Same values as :func:`numpy.nanquantile`."""
    a = np.asarray(a, dtype=np.float32)
    if a.shape[axis] == 0:
        shape = list(a.shape)
        del shape[axis]
        return [np.full(shape, np.nan, dtype=np.float32) for _ in qs]
    s = np.sort(a, axis=axis)  # NaN sorts last
    n = np.sum(~np.isnan(a), axis=axis, keepdims=True)
    out = []
    for q in qs:
        pos = q * np.maximum(n - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
        frac = (pos - lo).astype(np.float32)
        v = (
            np.take_along_axis(s, lo, axis=axis) * (1 - frac)
            + np.take_along_axis(s, hi, axis=axis) * frac
        )
        out.append(np.squeeze(np.where(n > 0, v, np.nan), axis=axis))
    return out


#: The arrays of a :class:`HourProfile`, as kept in fitted baselines.
PROFILE_FIELDS: tuple[str, ...] = ("median", "q_lo", "q_hi", "spread", "days")


@dataclass(frozen=True)
class HourProfile:
    """Per meter (row), day type (0 weekday, 1 weekend) and UTC hour: statistics of hourly
    energy [kWh] over comparable days; ``days`` counts the days with that hour known."""

    median: np.ndarray
    q_lo: np.ndarray
    q_hi: np.ndarray
    spread: np.ndarray
    days: np.ndarray

    @property
    def n_meters(self) -> int:
        return int(self.median.shape[0])

    def take(self, rows: np.ndarray) -> HourProfile:
        """The profile of meter rows ``rows`` (-1: unknown meter, all NaN / 0 days)."""
        ok = rows >= 0
        r = np.where(ok, rows, 0)

        def pick(a: np.ndarray, fill: float) -> np.ndarray:
            out = a[r].copy()
            out[~ok] = fill
            return out

        return HourProfile(
            pick(self.median, np.nan),
            pick(self.q_lo, np.nan),
            pick(self.q_hi, np.nan),
            pick(self.spread, np.nan),
            pick(self.days, 0),
        )


def _pooled(cube: np.ndarray, pool: int, med: np.ndarray | None = None) -> np.ndarray:
    """meters x days x 24 -> meters x (days x (2 pool + 1)) x 24: each hour with its
    neighbours (circular within the day). With ``med`` (meters x 24, each hour's median) a
    neighbour's samples are scaled to the hour's level (x med[h] / med[neighbour]), so the
    steep hours of a morning ramp do not lift the hour's range."""
    parts = []
    for shift in range(-pool, pool + 1):
        part = np.roll(cube, shift, axis=2)
        if med is not None and shift:
            nb = np.roll(med, shift, axis=1)
            scale = np.divide(med, nb, out=np.ones_like(med), where=nb > 0)
            part = part * np.minimum(scale, 1.0)[:, None, :]
        parts.append(part)
    return np.concatenate(parts, axis=1)


def _stats(part: np.ndarray, pool: int, q_lo: float, q_hi: float) -> tuple[np.ndarray, ...]:
    """``(median, q_lo, q_hi, spread, days)`` of meters x days x 24 samples: the median and
    spread of the hour itself, the habitual range over the hour and its neighbours (a habit
    that shifts by an hour stays inside it)."""
    (med,) = nanquantiles(part, (0.5,), axis=1)
    (mad,) = nanquantiles(np.abs(part - med[:, None, :]), (0.5,), axis=1)
    lo, hi = nanquantiles(_pooled(part, pool, med), (q_lo, q_hi), axis=1)
    known = np.sum(~np.isnan(part), axis=1)
    return med, lo, hi, (MAD_SCALE * mad).astype(np.float32), known


def fit_profile(
    cube: np.ndarray, weekend: np.ndarray, *, q_lo: float = 0.1, q_hi: float = 0.9, pool: int = 1
) -> HourProfile:
    """The profile of a history: ``cube`` is meters x days x 24 hourly energy [kWh] (NaN
    unknown), ``weekend`` per day. Each day type summarises the days of that type."""
    n_m = cube.shape[0]
    shape = (n_m, 2, 24)
    out = {
        k: np.full(shape, np.nan, dtype=np.float32) for k in ("median", "q_lo", "q_hi", "spread")
    }
    days = np.zeros(shape, dtype=np.int16)
    for t in (0, 1):  # weekday, weekend
        sel = weekend == bool(t)
        if not sel.any():
            continue
        med, lo, hi, spread, known = _stats(cube[:, sel, :], pool, q_lo, q_hi)
        out["median"][:, t], out["q_lo"][:, t], out["q_hi"][:, t] = med, lo, hi
        out["spread"][:, t], days[:, t] = spread, known
    return HourProfile(out["median"], out["q_lo"], out["q_hi"], out["spread"], days)


@dataclass(frozen=True)
class HourlyBaseline:
    """A profile laid over judged hours: meters x hours arrays (NaN / 0 where none)."""

    median: np.ndarray
    q_lo: np.ndarray
    q_hi: np.ndarray
    spread: np.ndarray
    days: np.ndarray


def over_hours(profile: HourProfile, hours: pd.DatetimeIndex) -> HourlyBaseline:
    """A fitted profile's statistics at each of ``hours`` (UTC hour starts)."""
    t = np.asarray(hours.day_of_week >= 5, dtype=np.int64)
    h = np.asarray(hours.hour, dtype=np.int64)
    return HourlyBaseline(
        profile.median[:, t, h],
        profile.q_lo[:, t, h],
        profile.q_hi[:, t, h],
        profile.spread[:, t, h],
        profile.days[:, t, h],
    )


def rolling_profile(
    kwh: np.ndarray,
    hours: pd.DatetimeIndex,
    history_days: int,
    *,
    q_lo: float = 0.1,
    q_hi: float = 0.9,
    pool: int = 1,
) -> HourlyBaseline:
    """Each hour of ``kwh`` (meters x hours) against the comparable days among the
    ``history_days`` days before its day (loop over days, vectorized over meters)."""
    n_m, n_h = kwh.shape
    nan = np.full((n_m, n_h), np.nan, dtype=np.float32)
    out = HourlyBaseline(
        nan.copy(), nan.copy(), nan.copy(), nan.copy(), np.zeros((n_m, n_h), np.int16)
    )
    if n_h == 0:
        return out
    first = hours[0].floor("D")
    offset = int((hours[0] - first) / pd.Timedelta(hours=1))
    n_days = -(-(offset + n_h) // 24)
    padded = np.full((n_m, n_days * 24), np.nan, dtype=np.float32)
    padded[:, offset : offset + n_h] = kwh
    cube = padded.reshape(n_m, n_days, 24)
    weekend = np.asarray(pd.date_range(first, periods=n_days, freq="D").day_of_week >= 5)
    for d in range(1, n_days):  # loop over days, vectorized over meters
        lo_d = max(0, d - int(history_days))
        prior = np.arange(lo_d, d)
        prior = prior[weekend[prior] == weekend[d]]
        if prior.size == 0:
            continue
        med, lo, hi, spread, known = _stats(cube[:, prior, :], pool, q_lo, q_hi)
        a = d * 24 - offset
        cols = np.arange(max(a, 0), min(a + 24, n_h))
        src = cols - a
        out.median[:, cols] = med[:, src]
        out.q_lo[:, cols] = lo[:, src]
        out.q_hi[:, cols] = hi[:, src]
        out.spread[:, cols] = spread[:, src]
        out.days[:, cols] = known[:, src]
    return out


def day_cube(
    kwh: np.ndarray, hours: pd.DatetimeIndex
) -> tuple[np.ndarray, pd.DatetimeIndex, np.ndarray]:
    """meters x days x 24 hourly energy [kWh] on whole UTC days, NaN outside known hours.

    Returns ``(cube, days, complete)`` where ``complete[m, d]`` says all 24 hours are known.
    """
    n_m = kwh.shape[0]
    if kwh.size == 0 or len(hours) == 0:
        return np.zeros((n_m, 0, 24)), pd.DatetimeIndex([], tz="UTC"), np.zeros((n_m, 0), bool)
    first = hours[0].floor("D")
    offset = int((hours[0] - first) / pd.Timedelta(hours=1))
    n_days = -(-(offset + hours.size) // 24)
    padded = np.full((n_m, n_days * 24), np.nan)
    padded[:, offset : offset + hours.size] = kwh
    cube = padded.reshape(n_m, n_days, 24)
    complete = np.sum(~np.isnan(cube), axis=2) == 24
    return cube, pd.date_range(first, periods=n_days, freq="D"), complete


def per_day_sum(values: np.ndarray, hours: pd.DatetimeIndex) -> np.ndarray:
    """For every hour of ``values`` (meters x hours), the sum over its UTC day's hours (NaN
    ignored; NaN when the day has no value)."""
    n_m, n_h = values.shape
    if n_h == 0:
        return values.copy()
    first = hours[0].floor("D")
    offset = int((hours[0] - first) / pd.Timedelta(hours=1))
    n_days = -(-(offset + n_h) // 24)
    padded = np.full((n_m, n_days * 24), np.nan)
    padded[:, offset : offset + n_h] = values
    cube = padded.reshape(n_m, n_days, 24)
    known = np.isfinite(cube).any(axis=2)
    sums = np.where(known, np.nansum(np.where(np.isfinite(cube), cube, 0.0), axis=2), np.nan)
    return np.repeat(sums, 24, axis=1)[:, offset : offset + n_h]
