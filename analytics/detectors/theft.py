"""Theft analytics: transformer-area line loss, per-meter suspicion features and a ranked score.

Line loss of an area and day [-]::

    loss = (E_supply - sum_customers E_c) / E_supply

with every energy the billed register delta x ``ct_ratio`` [kWh] over the UTC day (days with
an incomplete hour of any meter of the area are unknown). A loss above the band means energy
leaves the area unbilled (theft, a meter under-registering); a *negative* loss means the
customers bill more than the transformer delivered, i.e. a data or topology error (a customer
assigned to the wrong area, a wrong CT ratio).

Per customer meter, features over complete days (all vectorized over meters x days x 24 h):

* ``level``: the worst 7-day mean of the day's energy over the meter's own median of that
  weekday (1 - that) -- whole days scaled down (Jokar et al. 2016 attacks h1, h2, h4);
* ``shape``: the worst 7-day mean of 1 - the correlation of the day's hourly profile with the
  meter's median profile of that weekday -- reshaped days (h3, h4, h5, h6);
* ``flat``: the worst 7-day mean drop of the intraday variation (coefficient of variation)
  against the meter's median -- a day billed at its mean (h5);
* ``zero_hours``: the worst 7-day mean of zero hours per day above the meter's median (h2);
* ``cusum``: the largest one-sided CUSUM of the daily level below 1 (sustained drops, Page
  1954);
* ``loss_corr``: minus the correlation of the meter's daily energy with its area's daily loss
  energy (a thief's billed energy falls exactly when the area loses more).

Each feature becomes a robust z-score against the meter's peers of the same class (median and
1.4826 x MAD of the class) and a 0..1 evidence score; an Isolation Forest (Liu et al. 2008,
scikit-learn) over the z-scores adds an unsupervised view. ``score = (1 - w) x max(evidence) +
w x isolation percentile`` is in 0..1; higher means more suspicious.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
    nanmedian,
    plain,
    short_ts,
)
from meterwatch.analytics.detectors.consumption import cusum_drop, hourly_energy
from meterwatch.analytics.profiles import MAD_SCALE, day_cube
from meterwatch.analytics.registry import register
from meterwatch.analytics.window import Window, build_window, row_chunks
from meterwatch.core.cores import usable_cores
from meterwatch.core.schema import empty_findings

#: Registry columns the theft analytics read.
THEFT_REGISTRY: tuple[str, ...] = ("transformer_id", "role", "customer_class", "ct_ratio")
#: Feature names, in column order of :func:`meter_features`.
FEATURES: tuple[str, ...] = ("level", "shape", "flat", "zero_hours", "cusum", "loss_corr")
#: Human reasons per feature, for ranked suspects and alert summaries.
REASONS: dict[str, str] = {
    "level": "days billed far below its usual",
    "shape": "daily profile unlike its usual",
    "flat": "flattened daily profile",
    "zero_hours": "blocks of zero consumption",
    "cusum": "sustained drop (CUSUM)",
    "loss_corr": "billed energy falls when area loss rises",
}
# Floors of the peer spread per feature [feature units], so a very uniform class does not make
# tiny differences "infinitely" unusual (project choice).
_SPREAD_FLOOR = {
    "level": 0.03,
    "shape": 0.03,
    "flat": 0.03,
    "zero_hours": 0.25,
    "cusum": 0.3,
    "loss_corr": 0.1,
}


def _rowwise_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis; NaN where either side has no variance."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN
        a = a - np.nanmean(a, axis=-1, keepdims=True)
        b = b - np.nanmean(b, axis=-1, keepdims=True)
    num = np.nansum(a * b, axis=-1)
    den = np.sqrt(np.nansum(a * a, axis=-1) * np.nansum(b * b, axis=-1))
    out: np.ndarray = np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 1e-12)
    return out


def _worst_week(x: np.ndarray, window: int) -> np.ndarray:
    """Largest mean of ``window`` consecutive known days per row (NaN days skipped) [-]."""
    known = ~np.isnan(x)
    v = np.where(known, x, 0.0)
    c = np.cumsum(np.c_[np.zeros(x.shape[0]), v], axis=1)
    n = np.cumsum(np.c_[np.zeros(x.shape[0]), known], axis=1)
    if x.shape[1] < window:
        s, k = c[:, -1:], n[:, -1:]
    else:
        s, k = c[:, window:] - c[:, :-window], n[:, window:] - n[:, :-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(k >= max(1, window // 2), s / np.maximum(k, 1), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out: np.ndarray = np.nanmax(mean, axis=1)
    return out


def area_loss(w: Window, max_gap_minutes: float = 75.0) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Daily line loss per area and the hourly data behind it; once per window.

    Returns ``(table, data)``: ``table`` has one row per (area, day) with ``supply_kwh``,
    ``customers_kwh``, ``loss_kwh``, ``loss`` (fraction; NaN when the supply is unknown or
    not > 0, or any meter of the area misses an hour that day) and ``customers`` (count);
    ``data`` holds the meter matrices (``kwh``, ``meter_ids``, ``hours``, ``cube``, ``days``,
    ``complete``, ``role``, ``area``, ``cls``) for :func:`meter_features`. Meters without a
    transformer area are in no area.
    """
    result: tuple[pd.DataFrame, dict[str, Any]] = w.memo(
        ("area_loss", float(max_gap_minutes)), lambda: _area_loss(w, max_gap_minutes)
    )
    return result


def _area_loss(w: Window, max_gap_minutes: float = 75.0) -> tuple[pd.DataFrame, dict[str, Any]]:
    kwh, hours = hourly_energy(w, max_gap_minutes)
    cube, days, complete = day_cube(kwh, hours)
    m = w.meters
    role = m.role
    area_codes = m.area
    daily = np.where(complete, np.nansum(cube, axis=2), np.nan)
    supply = m.supply
    in_area = area_codes >= 0
    n_a, n_d = m.areas.size, days.size
    sup = np.full((n_a, n_d), np.nan)
    cust = np.zeros((n_a, n_d))
    cust_missing = np.zeros((n_a, n_d), dtype=bool)
    is_cust = ~supply & in_area
    n_cust = np.bincount(area_codes[is_cust], minlength=n_a)
    if n_d and n_a:
        # Each area's supply meter (the first, if a registry lists several).
        for_sup = np.flatnonzero(supply & in_area)[::-1]
        sup[area_codes[for_sup]] = daily[for_sup]
        np.add.at(cust, area_codes[is_cust], np.nan_to_num(daily[is_cust]))
        np.logical_or.at(cust_missing, area_codes[is_cust], np.isnan(daily[is_cust]))
    loss_kwh = np.where(cust_missing, np.nan, sup - cust)
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = np.where(sup > 0, loss_kwh / sup, np.nan)
    table = pd.DataFrame(
        {
            "transformer_id": np.repeat(np.asarray(m.areas, dtype=object), n_d),
            "day": np.tile(days, n_a) if n_d else pd.DatetimeIndex([], tz="UTC"),
            "supply_kwh": sup.ravel(),
            "customers_kwh": np.where(cust_missing, np.nan, cust).ravel(),
            "loss_kwh": loss_kwh.ravel(),
            "loss": loss.ravel(),
            "customers": np.repeat(n_cust, n_d),
        }
    )
    meter_loss = np.full((w.n_meters, n_d), np.nan)
    if n_a and n_d:
        meter_loss[in_area] = loss_kwh[area_codes[in_area]]
    data = {
        "kwh": kwh,
        "meter_ids": m.ids,
        "hours": hours,
        "cube": cube,
        "days": days,
        "complete": complete,
        "daily": daily,
        "role": role,
        "area": m.transformer_id,
        "meter_loss_kwh": meter_loss,
        "cls": m.customer_class,
        "has_readings": w.present.any(axis=1) if w.n_cells else np.zeros(w.n_meters, bool),
    }
    return table, data


#: Per-meter references of the theft features (fitted from history, or the window's own).
REFERENCE_FIELDS: tuple[str, ...] = ("profile", "cv_med", "zeros_med", "level_med")
#: Daily values the features are drawn from, per meter and day (:func:`daily_values`).
DAILY_FIELDS: tuple[str, ...] = ("level", "shape", "cv", "zeros", "energy", "area_loss")


def references(data: dict[str, Any]) -> dict[str, np.ndarray]:
    """Each meter's usual, from the complete days of ``data`` (:func:`area_loss`): the median
    hourly profile of every weekday (``profile``, meters x 7 x 24 [kWh]), and the medians of
    the intraday variation (``cv_med``), zero hours (``zeros_med``) and daily level
    (``level_med``) over those days."""
    refs, _ = _references_and_days(data, _weekday_profiles(data))
    return refs


def _weekday_profiles(data: dict[str, Any]) -> np.ndarray:
    """meters x 7 x 24: the median hourly energy of each weekday over complete days."""
    cube, complete = data["cube"], data["complete"]
    n_m, n_d, _ = cube.shape
    wd = np.asarray(data["days"].day_of_week) if n_d else np.zeros(0, int)
    good = np.where(complete[:, :, None], cube, np.nan)
    profile = np.full((n_m, 7, 24), np.nan)
    for w in range(7):  # loop over the 7 weekdays, vectorized over meters
        sel = wd == w
        if sel.any():
            profile[:, w, :] = nanmedian(good[:, sel, :], axis=1)
    return profile


def _references_and_days(
    data: dict[str, Any], profile: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    refs = {"profile": profile}
    days = daily_values(data, refs)
    refs["cv_med"] = nanmedian(days["cv"], axis=1)
    refs["zeros_med"] = nanmedian(days["zeros"], axis=1)
    refs["level_med"] = nanmedian(days["level"], axis=1)
    return refs, days


def daily_values(data: dict[str, Any], refs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per meter and day of ``data``, against the weekday profiles of ``refs``: the day's
    energy over its expected energy (``level``), 1 - the correlation of its hourly profile
    with the expected one (``shape``; 0 for a flat day), its coefficient of variation
    (``cv``), zero hours (``zeros``), energy [kWh] and its area's loss energy [kWh]; NaN on
    incomplete days."""
    cube, complete, daily = data["cube"], data["complete"], data["daily"]
    n_m, n_d, _ = cube.shape
    wd = np.asarray(data["days"].day_of_week) if n_d else np.zeros(0, int)
    good = np.where(complete[:, :, None], cube, np.nan)
    prof = refs["profile"][:, wd, :] if n_d else np.zeros((n_m, 0, 24))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nansum(prof, axis=2)
        level = np.where(
            complete & (expected > 0), daily / np.where(expected > 0, expected, 1), np.nan
        )
        corr = np.where(complete, _rowwise_corr(good, prof), np.nan)
        corr = np.where(complete & np.isnan(corr), 0.0, corr)  # a flat day has no shape
        mean_h = np.nanmean(good, axis=2)
        cv = np.where(mean_h > 0, np.nanstd(good, axis=2) / np.where(mean_h > 0, mean_h, 1), np.nan)
    zeros = np.where(complete, np.sum(good <= 1e-9, axis=2), np.nan).astype(float)
    return {
        "level": level,
        "shape": 1.0 - corr,
        "cv": cv,
        "zeros": zeros,
        "energy": daily,
        "area_loss": data["meter_loss_kwh"],
    }


def features_of(
    series: dict[str, np.ndarray], refs: dict[str, np.ndarray], window_days: int = 7
) -> dict[str, np.ndarray]:
    """The raw :data:`FEATURES` per meter from daily values (meters x days) and references."""
    level, cv = series["level"], series["cv"]
    cv_med = refs["cv_med"][:, None]
    n_m, n_d = level.shape
    f = {
        "level": _worst_week(1.0 - level, window_days),
        "shape": _worst_week(series["shape"], window_days),
        "flat": _worst_week(
            np.divide(cv_med - cv, cv_med, out=np.full(cv.shape, np.nan), where=cv_med > 0),
            window_days,
        ),
        "zero_hours": _worst_week(series["zeros"] - refs["zeros_med"][:, None], window_days),
        "cusum": np.nanmax(
            np.c_[
                cusum_drop((level - np.fmin(refs["level_med"], 1.0)[:, None]) / 0.1, k=1.0),
                np.zeros(n_m),
            ],
            axis=1,
        )
        if n_d
        else np.full(n_m, np.nan),
    }
    daily, loss = series["energy"], series["area_loss"]
    both = ~np.isnan(daily) & ~np.isnan(loss)
    f["loss_corr"] = -_rowwise_corr(np.where(both, daily, np.nan), np.where(both, loss, np.nan))
    return f


def meter_features(
    data: dict[str, Any],
    window_days: int = 7,
    refs: dict[str, np.ndarray] | None = None,
    history: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Per customer meter, the raw :data:`FEATURES` (see module docstring), NaN if unknown.

    Without ``refs`` the meters' usual comes from the window itself; with fitted ``refs``
    (and the daily values of the fitted history, ``history``, meters x days, placed before
    the window's days) the window's days are judged against them.
    """
    if refs is None:
        refs, series = _references_and_days(data, _weekday_profiles(data))
    else:
        series = daily_values(data, refs)
    known = data["complete"]
    if history is not None:
        series = {k: np.concatenate([history[k], series[k]], axis=1) for k in DAILY_FIELDS}
        known = np.concatenate([~np.isnan(history["energy"]), known], axis=1)
    f = features_of(series, refs, window_days)
    cust = data["role"] != "transformer"
    out = pd.DataFrame(f, index=pd.Index(data["meter_ids"], name="meter_id"))[list(FEATURES)]
    out["customer_class"] = data["cls"]
    out["transformer_id"] = data["area"]
    out["days"] = known.sum(axis=1)
    return out[cust & data["has_readings"]]


def score_meters(
    features: pd.DataFrame,
    *,
    z_full: float = 12.0,
    isolation_weight: float = 0.25,
    min_days: int = 14,
    random_state: int = 0,
) -> pd.DataFrame:
    """0..1 suspicion score per meter from :func:`meter_features` (higher = more suspicious).

    Per feature: robust z against the class peers (median, ``1.4826 x MAD`` floored), evidence
    ``clip((z - 3) / (z_full - 3), 0, 1)`` (z <= 3 is ordinary, Leys et al. 2013). An
    Isolation Forest over the clipped z-scores gives each meter its anomaly percentile.
    Meters with fewer than ``min_days`` complete days score 0 ("insufficient history").
    Returns the features plus ``z_<feature>``, ``evidence``, ``isolation``, ``score``,
    ``reasons``.
    """
    from sklearn.ensemble import IsolationForest

    out = features.copy()
    n = len(out)
    if n == 0:
        return out.assign(evidence=[], isolation=[], score=[], reasons=[])
    enough = out["days"].to_numpy() >= min_days
    # Every feature at once against its class peers (two grouped medians, not two a feature).
    x = out[list(FEATURES)].to_numpy(dtype=float)
    peers = out["customer_class"].to_numpy()
    med = pd.DataFrame(x).groupby(peers).transform("median").to_numpy(dtype=float)
    mad = pd.DataFrame(np.abs(x - med)).groupby(peers).transform("median").to_numpy(dtype=float)
    floor = np.array([_SPREAD_FLOOR[name] for name in FEATURES])
    spread = np.fmax(MAD_SCALE * np.nan_to_num(mad), floor)
    z = np.nan_to_num((x - np.nan_to_num(med)) / spread, nan=0.0)
    zs = np.where(enough[:, None], z, 0.0)
    for j, name in enumerate(FEATURES):
        out[f"z_{name}"] = zs[:, j]
    ev = np.clip((zs - 3.0) / (z_full - 3.0), 0.0, 1.0)
    evidence = ev.max(axis=1)
    iso = np.zeros(n)
    if enough.sum() >= 8:
        model = IsolationForest(n_estimators=100, random_state=random_state)
        clipped = np.clip(zs[enough], -20, 20)
        model.fit(clipped)
        raw = -_score_samples(model, clipped)  # higher = more anomalous
        iso[enough] = pd.Series(raw).rank(pct=True).to_numpy()
    score = np.where(
        enough, (1 - isolation_weight) * evidence + isolation_weight * iso * (evidence > 0), 0.0
    )
    # Without any rule evidence a meter keeps a small IF-only score (< 0.25) for ranking.
    score = np.where(enough & (evidence == 0), isolation_weight * iso * 0.99, score)
    out["evidence"] = evidence
    out["isolation"] = iso
    out["score"] = np.clip(score, 0.0, 1.0)
    names = np.array(FEATURES)
    days = out["days"].to_numpy()
    reasons = np.full(n, "no rule evidence", dtype=object)
    short = ~enough  # the text built for these meters only (most of a fleet has the history)
    reasons[short] = (
        "insufficient history ("
        + days[short].astype(int).astype(str).astype(object)
        + " complete days)"
    )
    for k in np.flatnonzero(enough & (evidence > 0)).tolist():  # the meters with evidence
        hit = names[ev[k] > 0]
        order = np.argsort(-ev[k][ev[k] > 0])
        reasons[k] = "; ".join(REASONS[h] for h in hit[order])
    out["reasons"] = reasons
    return out


#: Meters per thread below which the Isolation Forest scores in one thread.
_SCORE_ROWS_PER_THREAD = 50_000


def _score_samples(model: Any, x: np.ndarray) -> np.ndarray:
    """``model.score_samples(x)`` with the rows split over a thread per core (the trees'
    ``apply`` releases the GIL): the fleet-wide score of a million meters is seconds of one
    core otherwise. Each row is scored by every tree in the same order as in one call, so the
    scores are exactly those of one call."""
    threads = min(usable_cores(), len(x) // _SCORE_ROWS_PER_THREAD)
    if threads <= 1:
        out: np.ndarray = model.score_samples(x)
        return out
    parts = np.array_split(x, threads)
    with ThreadPoolExecutor(threads) as pool:
        return np.concatenate(list(pool.map(model.score_samples, parts)))


def rank_suspects(
    readings: pd.DataFrame, meters: pd.DataFrame, **score_params: Any
) -> pd.DataFrame:
    """Every customer meter with readings, ranked by theft score.

    Returns ``meter_id, score, rank, reasons`` (rank 1 = most suspicious; ties share order by
    meter id). ``score_params`` go to :func:`score_meters`.
    """
    return rank_window(build_window(readings, meters), **score_params)


def rank_window(
    w: Window, theft: TheftSuspected | None = None, **score_params: Any
) -> pd.DataFrame:
    """:func:`rank_suspects` over a window; with ``theft`` (a :class:`TheftSuspected`,
    fitted or not), its features and scores -- the ones the detector judged, computed once --
    and its parameters."""
    if theft is not None:
        return _ranked(theft.score(theft.partial_window(w)))
    return rank_features(theft_features(w), **score_params)


def theft_features(w: Window, theft: TheftSuspected | None = None) -> pd.DataFrame:
    """What the peer-relative theft score needs from one partition: per customer meter with
    readings, the raw :data:`FEATURES` (:func:`meter_features`, which need whole areas) and
    ``first_day``, the meter's first complete day (the first day of the window without one).
    With a fitted ``theft`` detector, the window's days are judged against its references.

    The score itself compares each meter with its class peers over the *whole fleet* (medians,
    MAD, an Isolation Forest), so partitions send these rows to one place, which joins them
    with :func:`gather_features` and scores them once (``analytics.partition``).
    """
    if not w.present.any():
        return _no_features()
    _, data = area_loss(w)
    refs, history = theft._fitted_inputs(w, data) if theft is not None else (None, None)
    n = len(data["meter_ids"])
    # Meters in chunks (every feature is per meter): the days x features intermediates of a
    # chunk, not of the whole partition (70 MiB for 20,000 meters x 29 days).
    out = pd.concat(
        [
            meter_features(
                _meter_rows(data, rs, n),
                refs=_meter_rows(refs, rs, n),
                history=_meter_rows(history, rs, n),
            )
            for rs in row_chunks(n, 1, FEATURE_CHUNK_METERS)
        ]
    )
    complete, days = data["complete"], data["days"]
    if complete.shape[1]:
        first = pd.Series(days[np.argmax(complete, axis=1)], index=data["meter_ids"])
        out["first_day"] = first.reindex(out.index).array
    else:
        out["first_day"] = pd.Series(pd.NaT, index=out.index, dtype="datetime64[ns, UTC]")
    return out


#: Meters whose theft features are computed at a time (:func:`theft_features`).
FEATURE_CHUNK_METERS = 5_000


def _meter_rows(arrays: Any, rows: slice, n: int) -> Any:
    """``arrays`` (a dict of per-meter arrays and shared values, or None) for meters ``rows``
    of ``n``: arrays whose first axis is the meters are sliced (views), the rest kept."""
    if arrays is None:
        return None
    return {
        k: v[rows] if isinstance(v, np.ndarray) and v.ndim and v.shape[0] == n else v
        for k, v in arrays.items()
    }


def _no_features() -> pd.DataFrame:
    cols = {f: pd.Series(dtype=float) for f in FEATURES}
    cols.update(customer_class=pd.Series(dtype=object), transformer_id=pd.Series(dtype=object))
    cols.update(days=pd.Series(dtype=np.int64), first_day=pd.Series(dtype="datetime64[ns, UTC]"))
    return pd.DataFrame(cols, index=pd.Index([], dtype=object, name="meter_id"))


def gather_features(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """:func:`theft_features` of several partitions as the rows one window over all their
    meters would give: in meter-id order (the Isolation Forest's sampling depends on it)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return _no_features()
    if len(parts) == 1:
        return parts[0]
    return pd.concat(parts).sort_index(kind="mergesort")


def rank_features(features: pd.DataFrame, **score_params: Any) -> pd.DataFrame:
    """Every meter of :func:`theft_features` (or :func:`gather_features`) ranked by theft
    score, as :func:`rank_suspects` returns it."""
    return _ranked(score_meters(features, **score_params))


def _ranked(scored: pd.DataFrame) -> pd.DataFrame:
    """:func:`score_meters` output as the ranked suspects list."""
    cols = ["meter_id", "score", "rank", "reasons"]
    if scored.empty:
        return pd.DataFrame(
            {c: pd.Series(dtype=object if c in ("meter_id", "reasons") else float) for c in cols}
        )
    scored = scored.reset_index()
    if scored["meter_id"].is_monotonic_increasing:
        # Rows in meter-id order (gather_features gives them so): a stable sort by score
        # alone keeps ties in that order, without comparing a million id strings.
        order = np.argsort(-scored["score"].to_numpy(dtype=float), kind="stable")
        scored = scored.take(order)
    else:
        scored = scored.sort_values(
            ["score", "meter_id"], ascending=[False, True], kind="mergesort"
        )
    scored["rank"] = np.arange(1, len(scored) + 1)
    return scored[cols].reset_index(drop=True)


@register(cadence="daily", history_days=1, order=240)
class TransformerLoss(Detector):
    """Daily line loss of a transformer area out of its band: one finding per run of days.

    Holds on an area-day when ``loss > max_loss`` (energy unaccounted for: theft or a meter
    under-registering) or ``loss < min_loss`` (customers bill more than the supply meter
    delivered: a data or topology error -- wrong area, wrong CT ratio). Consecutive days of
    one kind form one finding (``meter_id`` None). Band default 0-10 %: low-voltage area
    line-loss management (State Grid 台区线损 practice treats 0-10 % as the qualified range;
    negative loss is always an error).

    Parameters
    ----------
    min_loss, max_loss : float
        Band of the daily loss fraction [-]. Defaults 0.0 and 0.10.
    min_days : int
        Consecutive days out of band [d]. Default 1.
    max_gap_minutes : float
        As in :class:`analytics.detectors.consumption.ConsumptionSpike` [min]. Default 75.
    """

    shares: ClassVar[str] = "hourly"

    alert_types: ClassVar[tuple[str, ...]] = ("transformer_loss",)

    def __init__(
        self,
        min_loss: float = 0.0,
        max_loss: float = 0.10,
        min_days: int = 1,
        max_gap_minutes: float = 75.0,
    ) -> None:
        if not -1.0 <= float(min_loss) < float(max_loss) <= 1.0:
            raise ValueError(
                f"min_loss/max_loss must satisfy -1 <= min_loss < max_loss <= 1, got "
                f"{min_loss!r}/{max_loss!r}"
            )
        check_count("min_days", min_days)
        check_positive("max_gap_minutes", max_gap_minutes)
        self.min_loss = min_loss
        self.max_loss = max_loss
        self.min_days = min_days
        self.max_gap_minutes = max_gap_minutes

    def detect_window(self, w: Window) -> pd.DataFrame:
        """One finding per run of out-of-band days of an area."""
        table, _ = area_loss(w, float(self.max_gap_minutes))
        if table.empty:
            return empty_findings()
        loss = table["loss"].to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            high = loss > float(self.max_loss) + 1e-12
            low = loss < float(self.min_loss) - 1e-12
        codes = pd.factorize(table["transformer_id"], sort=True)[0]
        rows = []
        params = plain(self.get_params())
        for kind, mask in (("high", high), ("negative", low)):
            starts, ends, _ = episodes(mask, codes)
            for s, e in zip(starts, ends, strict=True):  # loop over findings only
                if e - s + 1 < int(self.min_days):
                    continue
                part = table.iloc[s : e + 1]
                area = part["transformer_id"].iat[0]
                d0 = part["day"].iat[0]
                d1 = part["day"].iat[-1] + pd.Timedelta(days=1)
                known_after = (
                    e + 1 < len(table) and codes[e + 1] == codes[e] and not np.isnan(loss[e + 1])
                )
                worst = part["loss"].max() if kind == "high" else part["loss"].min()
                reason = (
                    "energy unaccounted for: theft or under-registering meters"
                    if kind == "high"
                    else "customers billed more than the supply delivered: data or topology "
                    "error (wrong area, CT ratio or missing supply energy)"
                )
                rows.append(
                    {
                        "type": "transformer_loss",
                        "severity": self.severity,
                        "meter_id": None,
                        "transformer_id": area,
                        "starts_at": d0,
                        "ends_at": d1 if known_after else pd.NaT,
                        "summary": (
                            f"Line loss of area {area} {100 * worst:.1f} % "
                            f"(band {100 * self.min_loss:g}-{100 * self.max_loss:g} %) on "
                            f"{len(part)} day(s) from {short_ts(d0)[:10]}: {reason}"
                        ),
                        "evidence": plain(
                            {
                                "rule": "loss = (supply - sum customers*ct) / supply per day "
                                "outside [min_loss, max_loss]",
                                "thresholds": params,
                                "kind": kind,
                                "reason": reason,
                                "days": [
                                    {
                                        "day": d.date().isoformat(),
                                        "loss": lo,
                                        "supply_kwh": su,
                                        "customers_kwh": cu,
                                    }
                                    for d, lo, su, cu in zip(
                                        part["day"],
                                        part["loss"],
                                        part["supply_kwh"],
                                        part["customers_kwh"],
                                        strict=True,
                                    )
                                ],
                            }
                        ),
                    }
                )
        return findings_frame(rows)


@register(cadence="daily", history_days=14, order=250)
class TheftSuspected(Detector):
    """Customer meters whose theft score reaches ``min_score`` (see module docstring).

    One finding per suspected meter over the window; ``evidence.score`` is the 0..1 score,
    with the features, peer z-scores and reasons. ``starts_at`` is the first day of the
    meter's complete data in the window (the score judges the whole window), ``ends_at`` NaT.

    Parameters
    ----------
    min_score : float
        Score from which a meter is alerted [-]. Default 0.6 (project choice, calibrated on
        the evaluation fleet for <= 1 false alert per 1,000 clean meter-days; see
        docs/evaluation.md).
    z_full : float
        Peer z-score at which one feature alone is full evidence [-]. Default 12.
    isolation_weight : float
        Weight of the Isolation Forest percentile in the score [-]. Default 0.25.
    min_days : int
        Complete days a meter needs to be judged [d]. Default 14 (two of each weekday).
    history_days : int
        Days of daily values kept by ``fit`` to judge later days with [d]. Default 28 (the
        window the features look back over when a run judges one day).

    Fitted (``fit``), each meter's references (weekday profiles, usual variation, zero hours
    and level) and its daily values over the last ``history_days`` days of the history are
    kept; a run then judges the days of its window against those references, with the kept
    days before them, instead of reading weeks again. Unfitted, the window is its own
    reference.
    """

    shares: ClassVar[str] = "hourly"

    alert_types: ClassVar[tuple[str, ...]] = ("theft_suspected",)

    def __init__(
        self,
        min_score: float = 0.6,
        z_full: float = 12.0,
        isolation_weight: float = 0.25,
        min_days: int = 14,
        history_days: int = 28,
    ) -> None:
        check_fraction("min_score", min_score, upper_inclusive=True)
        if not float(z_full) > 3.0:
            raise ValueError(f"z_full must be > 3, got {z_full!r}")
        check_fraction("isolation_weight", isolation_weight)
        check_count("min_days", min_days)
        check_count("history_days", history_days)
        self.min_score = min_score
        self.z_full = z_full
        self.isolation_weight = isolation_weight
        self.min_days = min_days
        self.history_days = history_days

    def fit_window(self, w: Window) -> Detector:
        """Learn references and keep the last ``history_days`` days of daily values."""
        _, data = area_loss(w)
        refs, days = _references_and_days(data, _weekday_profiles(data))
        keep = slice(max(len(data["days"]) - int(self.history_days), 0), None)
        # float32: ratios and kWh to 7 digits are plenty for features judged in z-scores, and
        # the kept state of a million meters halves.
        per_meter = {f"ref_{k}": v.astype(np.float32) for k, v in refs.items()}
        per_meter.update({f"day_{k}": days[k][:, keep].astype(np.float32) for k in DAILY_FIELDS})
        day_ns = np.asarray(data["days"][keep].asi8, dtype=np.int64)
        self.fitted_ = FittedState(
            np.asarray(data["meter_ids"], dtype=object), per_meter, {"day_ns": day_ns}
        )
        return self

    def state(self) -> FittedState | None:
        return getattr(self, "fitted_", None)

    def load_state(self, state: FittedState) -> Detector:
        self.fitted_ = state
        return self

    def _fitted_inputs(
        self, w: Window, data: dict[str, Any]
    ) -> tuple[dict[str, np.ndarray] | None, dict[str, np.ndarray] | None]:
        """The fitted references and kept daily values for the window's meters, the kept
        days limited to those before the window's first day."""
        fitted: FittedState | None = getattr(self, "fitted_", None)
        if fitted is None:
            return None, None
        arrays = fitted.take(np.asarray(w.ids, dtype=object))
        refs = {k: arrays[f"ref_{k}"] for k in REFERENCE_FIELDS}
        day_ns = fitted.shared["day_ns"]
        first = int(data["days"][0].value) if len(data["days"]) else np.iinfo(np.int64).max
        before = day_ns < first
        history = {k: arrays[f"day_{k}"][:, before] for k in DAILY_FIELDS}
        return refs, history

    def score(self, features: pd.DataFrame) -> pd.DataFrame:
        """:func:`score_meters` of ``features`` with this detector's parameters; the last
        result is kept, so detection and ranking of the same features score them once."""
        cached = getattr(self, "_scored", None)
        if cached is not None and cached[0] is features:
            out: pd.DataFrame = cached[1]
            return out
        out = score_meters(
            features,
            z_full=float(self.z_full),
            isolation_weight=float(self.isolation_weight),
            min_days=int(self.min_days),
        )
        self._scored = (features, out)
        return out

    #: The score is relative to the whole fleet: each partition contributes
    #: :meth:`partial_window`, and :meth:`combine` judges them together
    #: (``analytics.partition.CrossPartition``).
    partial_key: ClassVar[str] = "theft_features"

    def detect_window(self, w: Window) -> pd.DataFrame:
        """One finding per meter with ``score >= min_score``."""
        return self.combine([self.partial_window(w)])

    def partial_window(self, w: Window) -> pd.DataFrame:
        """This partition's share of the judgement: :func:`theft_features` (against the
        fitted references when fitted); once per window and fit."""
        key = ("theft_features", id(getattr(self, "fitted_", None)))
        out: pd.DataFrame = w.memo(key, lambda: theft_features(w, self))
        return out

    def combine(self, partials: Sequence[pd.DataFrame]) -> pd.DataFrame:
        """Findings over the meters of every partial, scored against each other."""
        features = gather_features(partials)
        if features.empty:
            return empty_findings()
        scored = self.score(features)
        hit = scored[scored["score"] >= float(self.min_score) - 1e-12]
        if hit.empty:
            return empty_findings()
        params = plain(self.get_params())
        rows = []
        for meter, r in hit.iterrows():  # loop over findings only
            rows.append(
                {
                    "type": "theft_suspected",
                    "severity": self.severity,
                    "meter_id": meter,
                    "transformer_id": r["transformer_id"],
                    "starts_at": r["first_day"],
                    "ends_at": pd.NaT,
                    "summary": (
                        f"Theft suspected (score {r['score']:.2f}, {int(r['days'])} days): "
                        f"{r['reasons']}"
                    ),
                    "evidence": plain(
                        {
                            "rule": "theft score = (1-w)*max feature evidence + w*isolation "
                            "percentile >= min_score",
                            "thresholds": params,
                            "score": float(r["score"]),
                            "reasons": r["reasons"],
                            "features": {f: r[f] for f in FEATURES},
                            "peer_z": {f: r[f"z_{f}"] for f in FEATURES},
                            "isolation": r["isolation"],
                            "days": int(r["days"]),
                        }
                    ),
                }
            )
        return findings_frame(rows)
