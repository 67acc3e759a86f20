"""On-time rates of the SLA steps (acknowledge, resolve) per transformer area and alert type."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import pandas as pd

from meterwatch.alerts.model import Alert, parse_iso

REPORT_COLUMNS: tuple[str, ...] = (
    "transformer_id",
    "type",
    "alerts",
    "ack_decided",
    "ack_on_time",
    "ack_rate",
    "resolve_decided",
    "resolve_on_time",
    "resolve_rate",
    "pending",
)


def _outcome(sla: dict[str, object] | None, step: str, now: datetime) -> str | None:
    """met / missed / None (pending or no SLA). A step not done by its deadline is missed."""
    if sla is None:
        return None
    value = sla.get(step)
    if value in ("met", "missed"):
        return str(value)
    due = parse_iso(str(sla.get(f"{step}_due") or "")) if sla.get(f"{step}_due") else None
    if due is not None and now > due:
        return "missed"
    return None


def on_time_report(alerts: Iterable[Alert], now: datetime) -> pd.DataFrame:
    """One row per (transformer area, type): decided steps, on-time counts and rates.

    A step is *decided* once done or once its deadline has passed at ``now``; rates are
    on-time / decided (NaN when nothing is decided yet). ``pending`` counts alerts with an
    undecided step. Alerts without an SLA record are counted in ``alerts`` only.
    """
    rows = []
    for a in alerts:
        ack = _outcome(a.sla, "acknowledge", now)
        res = _outcome(a.sla, "resolve", now)
        rows.append(
            {
                "transformer_id": a.transformer_id or "",
                "type": a.type,
                "ack_decided": ack is not None,
                "ack_on_time": ack == "met",
                "resolve_decided": res is not None,
                "resolve_on_time": res == "met",
                "pending": a.sla is not None and (ack is None or res is None),
            }
        )
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in REPORT_COLUMNS})
    df = pd.DataFrame(rows)
    g = df.groupby(["transformer_id", "type"], sort=True)
    out = g.agg(
        alerts=("type", "size"),
        ack_decided=("ack_decided", "sum"),
        ack_on_time=("ack_on_time", "sum"),
        resolve_decided=("resolve_decided", "sum"),
        resolve_on_time=("resolve_on_time", "sum"),
        pending=("pending", "sum"),
    ).reset_index()
    out["ack_rate"] = out["ack_on_time"] / out["ack_decided"].where(out["ack_decided"] > 0)
    out["resolve_rate"] = out["resolve_on_time"] / out["resolve_decided"].where(
        out["resolve_decided"] > 0
    )
    return out[list(REPORT_COLUMNS)]
