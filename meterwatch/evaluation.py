"""The evaluation harness: score the detectors against simulated ground truth (`meterwatch evaluate`).

Per-type precision, recall, F1 and delay; the scenario (fleet, injections, labels) comes from
:func:`meterwatch.simulators.scenarios.build_scenario`. Application layer: it runs analytics
on simulator output, so neither analytics nor alerts import it.
:func:`score_findings` matches findings to labels:
a finding matches a label of the same type and key (``meter_id``, or ``transformer_id`` for
area-level types) when its ``[starts_at, ends_at]`` overlaps the label's period widened by
``tolerance_h`` hours. :func:`theft_metrics` scores the theft ranking (ROC-AUC, PR-AUC, MAP@100).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from meterwatch.core.catalogue import AREA_TYPES

#: Alert types that an injected fault legitimately raises on its meter besides its own
#: (the registered data really changes): counted as "explained", not judged. The
#: ``reverse_power`` injection rewrites only ``power_kw`` (negative) while the import
#: register keeps counting, which is a real energy/power disagreement in the data.
CONSEQUENCES: dict[str, tuple[str, ...]] = {
    # A stopped register under load, or a meter billing nothing for a day, under-registers
    # energy: the theft ranking sees the same sustained drop (and utilities investigate it the
    # same way, on site).
    "meter_stuck": (
        "energy_power_mismatch",
        "consumption_drop",
        "zero_consumption",
        "theft_suspected",
    ),
    "zero_consumption": ("theft_suspected",),
    "consumption_drop": ("theft_suspected",),
    "meter_runaway": ("energy_power_mismatch", "consumption_spike"),
    "multiplier_mismatch": ("energy_power_mismatch",),
    "reverse_power": ("energy_power_mismatch",),
    # A Jokar attack rewrites the registered intervals; power follows only per poll.
    "theft_suspected": ("energy_power_mismatch",),
    # A clock jumping ahead shifts the meter's last hours against the hour grid, its read
    # times off the interval grid, and leaves the hours it jumped over without readings.
    "clock_error": ("consumption_spike", "off_grid_reading", "missing_data"),
    # A meter offline for more than a day leaves more than a day of intervals to estimate.
    "meter_offline": ("estimation_excess",),
    # The estimation_excess injection is a long silence of the meter.
    "estimation_excess": ("missing_data", "meter_offline"),
}


def score_findings(
    findings: pd.DataFrame,
    labels: pd.DataFrame,
    registry: pd.DataFrame,
    days: float,
    tolerance_h: float = 2.0,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-type precision, recall, F1 and detection delay; false alerts on clean meters.

    Returns ``(table, summary)``. ``table`` rows are alert types (labels or findings) with
    ``labels``, ``alerts`` (judged), ``explained`` (drop/zero/spike alerts on theft victims
    during the attack, transformer_loss on their areas: consequences, not judged),
    ``tp_labels``, ``tp_alerts``, ``precision``, ``recall``, ``f1``,
    ``delay_median_h`` (alert start minus label start, over matched labels). ``summary`` has
    ``clean_meter_days``, ``false_alerts_clean`` and ``false_per_1000_meter_days``: alerts on
    meters with no injection at all (area-level alerts on areas without an area label or a
    theft victim count as false too).
    """
    tolerance = pd.Timedelta(hours=tolerance_h)
    f = findings.reset_index(drop=True)  # positions are used as ids below
    lab = labels.copy()
    f["key"] = np.where(f["type"].isin(AREA_TYPES), f["transformer_id"], f["meter_id"])
    lab["key"] = np.where(lab["type"].isin(AREA_TYPES), lab["transformer_id"], lab["meter_id"])
    end_of_window = pd.Timestamp("2200-01-01T00:00:00Z")  # open episodes: still holding
    f_end = f["ends_at"].fillna(end_of_window)
    l_end = lab["ends_at"].fillna(end_of_window)
    pairs = f.reset_index(names="fi").merge(
        lab.assign(l_end=l_end).reset_index(names="li"), on=["type", "key"], suffixes=("", "_l")
    )
    fe = f_end.to_numpy()[pairs["fi"].to_numpy()] if len(pairs) else np.array([])
    if len(pairs):
        overlap = (pairs["starts_at"] <= pairs["l_end"] + tolerance) & (
            pd.Series(fe, index=pairs.index) >= pairs["starts_at_l"] - tolerance
        )
        pairs = pairs[overlap]
    # A thief's billed consumption really changes: drop/zero/spike alerts on a victim during
    # its attack are consequences of the theft label, neither true nor false for their type.
    victims = lab[lab["type"] == "theft_suspected"][["meter_id", "starts_at", "ends_at"]]
    consequence = ["consumption_drop", "zero_consumption", "consumption_spike"]
    cons = f[f["type"].isin(consequence)].reset_index(names="fi")
    cons = cons.merge(victims, on="meter_id", suffixes=("", "_v"))
    explained_ids = set(
        cons.loc[cons["ends_at"].fillna(end_of_window) >= cons["starts_at_v"] - tolerance, "fi"]
    )
    # A fault changes the registered data too: a stuck register's energy drops, a runaway's
    # spikes, and register vs power disagree. Such alerts on the faulty meter within the
    # label's period are consequences as well.
    for fault, consequences in CONSEQUENCES.items():
        faults = lab[lab["type"] == fault][["meter_id", "starts_at", "ends_at"]]
        c = f[f["type"].isin(consequences)].reset_index(names="fi")
        c = c.merge(faults, on="meter_id", suffixes=("", "_v"))
        near = (c["ends_at"].fillna(end_of_window) >= c["starts_at_v"] - tolerance) & (
            c["starts_at"] <= c["ends_at_v"].fillna(end_of_window) + tolerance
        )
        explained_ids |= set(c.loc[near, "fi"])
    # An overloaded transformer's supply meter really registers the extra load.
    supply = registry[registry["role"] == "transformer"][["meter_id", "transformer_id"]]
    over = lab[lab["type"] == "transformer_overload"][["transformer_id", "starts_at", "ends_at"]]
    c = f[f["type"] == "consumption_spike"].reset_index(names="fi")
    c = c.merge(supply, on=["meter_id", "transformer_id"]).merge(
        over, on="transformer_id", suffixes=("", "_v")
    )
    near = (c["ends_at"].fillna(end_of_window) >= c["starts_at_v"] - tolerance) & (
        c["starts_at"] <= c["ends_at_v"].fillna(end_of_window) + tolerance
    )
    explained_ids |= set(c.loc[near, "fi"])
    # An injected consumption spike (x5 load) on a large customer can really overload its
    # area's transformer.
    spikes = lab[lab["type"] == "consumption_spike"][["transformer_id", "starts_at", "ends_at"]]
    c = f[f["type"] == "transformer_overload"].reset_index(names="fi")
    c = c.merge(spikes, on="transformer_id", suffixes=("", "_v"))
    near = (c["ends_at"].fillna(end_of_window) >= c["starts_at_v"] - tolerance) & (
        c["starts_at"] <= c["ends_at_v"].fillna(end_of_window) + tolerance
    )
    explained_ids |= set(c.loc[near, "fi"])
    # Theft raises its area's line loss; whether past the band depends on the victim's share.
    victim_areas = lab.loc[lab["type"] == "theft_suspected", "transformer_id"]
    explained_ids |= set(
        f.index[(f["type"] == "transformer_loss") & f["transformer_id"].isin(victim_areas)]
    )
    # The overload injection lifts the supply meter only: its extra energy is metered by no
    # customer, so the area's line loss that day rises too.
    c = f[f["type"] == "transformer_loss"].reset_index(names="fi")
    c = c.merge(over, on="transformer_id", suffixes=("", "_v"))
    near = (c["ends_at"].fillna(end_of_window) >= c["starts_at_v"] - tolerance) & (
        c["starts_at"] <= c["ends_at_v"].fillna(end_of_window) + tolerance
    )
    explained_ids |= set(c.loc[near, "fi"])
    pairs = pairs[~pairs["fi"].isin(explained_ids)] if len(pairs) else pairs
    types = sorted(set(lab["type"]) | set(f["type"]))
    rows = []
    for t in types:  # loop over alert types (about 20)
        n_lab = int((lab["type"] == t).sum())
        explained = int(((f["type"] == t) & f.index.isin(explained_ids)).sum())
        n_f = int((f["type"] == t).sum()) - explained
        p = pairs[pairs["type"] == t]
        tp_l = int(p["li"].nunique())
        tp_f = int(p["fi"].nunique())
        first = p.sort_values("starts_at").drop_duplicates("li")
        delay = (first["starts_at"] - first["starts_at_l"]).dt.total_seconds() / 3600.0
        precision = tp_f / n_f if n_f else math.nan
        recall = tp_l / n_lab if n_lab else math.nan
        f1 = (
            2 * precision * recall / (precision + recall)
            if n_f and n_lab and precision + recall > 0
            else math.nan
        )
        rows.append(
            {
                "type": t,
                "labels": n_lab,
                "alerts": n_f,
                "explained": explained,
                "tp_labels": tp_l,
                "tp_alerts": tp_f,
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "delay_median_h": float(delay.median()) if len(delay) else math.nan,
            }
        )
    table = pd.DataFrame(rows)
    dirty_meters = set(lab["meter_id"].dropna())
    dirty_areas = set(lab["transformer_id"].dropna()) & set(
        lab.loc[lab["type"].isin(AREA_TYPES), "transformer_id"]
    )
    customers = registry[registry["role"] == "customer"]["meter_id"]
    clean = set(registry["meter_id"]) - dirty_meters
    matched = set(pairs["fi"]) if len(pairs) else set()
    unmatched = f[~f.index.isin(matched) & ~f.index.isin(explained_ids)]
    false_clean = unmatched[
        unmatched["meter_id"].isin(clean)
        | (unmatched["meter_id"].isna() & ~unmatched["transformer_id"].isin(dirty_areas))
    ]
    meter_days = len(clean & set(customers) | (clean - set(customers))) * days
    summary = {
        "clean_meters": len(clean),
        "clean_meter_days": meter_days,
        "false_alerts_clean": len(false_clean),
        "false_per_1000_meter_days": 1000 * len(false_clean) / meter_days if meter_days else 0.0,
        "false_by_type": false_clean["type"].value_counts().to_dict(),
    }
    return table, summary


def average_precision_at(y: np.ndarray, scores: np.ndarray, k: int = 100) -> float:
    """AP@k of one ranking: mean of precision@i over the relevant items in the top ``k``,
    divided by ``min(k, number relevant)`` (the MAP@k of Kaggle/SGCC theft studies)."""
    order = np.argsort(-scores, kind="mergesort")[:k]
    rel = np.asarray(y, dtype=bool)[order]
    n_rel = int(np.sum(y))
    if n_rel == 0:
        return math.nan
    hits = np.cumsum(rel)
    prec = hits / np.arange(1, rel.size + 1)
    return float(np.sum(prec * rel) / min(k, n_rel))


def theft_metrics(ranked: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """ROC-AUC, PR-AUC (average precision) and MAP@100 of the theft ranking.

    One row for all attacks and one per attack type (positives: that attack's victims;
    negatives: every meter that is not a theft victim).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    theft = labels[labels["type"] == "theft_suspected"]
    victim = dict(zip(theft["meter_id"], theft["injection"], strict=False))
    attack = ranked["meter_id"].map(victim)
    scores = ranked["score"].to_numpy(dtype=float)
    rows = []
    groups = [("all", attack.notna())] + [
        (a, attack == a) for a in sorted(attack.dropna().unique())
    ]
    for name, pos in groups:  # loop over attack types (7)
        keep = (pos | attack.isna()).to_numpy()
        y = pos.to_numpy()[keep]
        s = scores[keep]
        ok = 0 < y.sum() < y.size
        rows.append(
            {
                "attack": name,
                "victims": int(y.sum()),
                "roc_auc": float(roc_auc_score(y, s)) if ok else math.nan,
                "pr_auc": float(average_precision_score(y, s)) if ok else math.nan,
                "map_at_100": average_precision_at(y, s, 100) if ok else math.nan,
            }
        )
    return pd.DataFrame(rows)


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """``df`` as a GitHub markdown table (floats rounded, NaN as an en dash)."""

    def cell(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return "–" if not np.isfinite(v) else f"{v:.{digits}f}"
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


#: Days per month when alerts are counted per meter-month (365.25 / 12).
DAYS_PER_MONTH = 30.4375


def real_data_figures(
    findings: pd.DataFrame,
    labels: pd.DataFrame,
    registry: pd.DataFrame,
    measured_id: str,
    days: float,
    tolerance_h: float = 2.0,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Figures of a real data set (issue 15 item 1): false alerts on the measured meter and
    planted faults found on its copy.

    The measured meter carries no label, so every alert on it outside the ``data_quality``
    category is counted as false (its data's own gaps and duplicates are real), except the
    consequences (:data:`CONSEQUENCES`) of its own data-quality findings, e.g. an
    ``estimation_excess`` over a five-day gap of the data (``explained``). Returns
    ``(table, summary)``: ``table`` per alert type (of the alerts and the labels) with
    ``measured_alerts`` (false ones, and data quality), ``explained``, ``per_meter_month``
    (false ones on the measured meter), ``planted``,
    ``found`` (labels of the planted copy matched as in :func:`score_findings`);
    ``summary`` has ``months``, ``alerts_outside_data_quality``, ``per_meter_month``,
    ``planted``, ``found``.
    """
    from meterwatch.core.catalogue import ALERT_CATEGORIES

    months = days / DAYS_PER_MONTH
    on_measured = findings[findings["meter_id"] == measured_id].reset_index(drop=True)
    dq = on_measured["type"].map(ALERT_CATEGORIES) == "data_quality"
    # The data's own gaps have consequences as an injected silence has (CONSEQUENCES): an
    # estimation_excess over a real gap of the meter is explained by that gap, not false.
    explained = np.zeros(len(on_measured), dtype=bool)
    tolerance = pd.Timedelta(hours=tolerance_h)
    end_of_window = pd.Timestamp("2200-01-01T00:00:00Z")
    for fault, consequences in CONSEQUENCES.items():  # loop over fault types (a dozen)
        gaps = on_measured[on_measured["type"] == fault]
        if ALERT_CATEGORIES.get(fault) != "data_quality" or gaps.empty:
            continue
        cand = on_measured["type"].isin(consequences).to_numpy()
        for g in gaps.itertuples():  # loop over the meter's gaps (tens)
            g_end = g.ends_at if pd.notna(g.ends_at) else end_of_window
            near = (on_measured["ends_at"].fillna(end_of_window) >= g.starts_at - tolerance) & (
                on_measured["starts_at"] <= g_end + tolerance
            )
            explained |= cand & near.to_numpy()
    explained &= ~dq.to_numpy()
    counted = on_measured[~dq & ~explained]
    planted_ids = set(labels["meter_id"].dropna())
    scored, _ = score_findings(
        findings[findings["meter_id"].isin(planted_ids)], labels, registry, days, tolerance_h
    )
    scored = scored.set_index("type")
    types = sorted(set(on_measured["type"]) | set(labels["type"]))
    per_type = counted["type"].value_counts()
    per_type_explained = on_measured[explained]["type"].value_counts()
    per_type_dq = on_measured[dq]["type"].value_counts()
    rows = []
    for t in types:  # loop over alert types (a handful)
        n = int(per_type.get(t, 0)) + int(per_type_dq.get(t, 0))
        n_lab = int(scored.at[t, "labels"]) if t in scored.index else 0
        rows.append(
            {
                "type": t,
                "category": ALERT_CATEGORIES.get(t, ""),
                "measured_alerts": n,
                "explained": int(per_type_explained.get(t, 0)),
                "per_meter_month": n / months if months else math.nan,
                "planted": n_lab,
                "found": int(scored.at[t, "tp_labels"]) if n_lab else 0,
            }
        )
    table = pd.DataFrame(rows)
    summary = {
        "months": months,
        "alerts_outside_data_quality": len(counted),
        "explained_by_data_gaps": int(explained.sum()),
        "per_meter_month": len(counted) / months if months else math.nan,
        "planted": int(table["planted"].sum()),
        "found": int(table["found"].sum()),
    }
    return table, summary
