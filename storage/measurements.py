"""Columns of the stored measurements besides ``readings`` (docs/storage-schema.md), and builders.

Both backends use these names: the embedded store as table columns, InfluxDB as tags and fields
(:data:`ALERT_EVENT_TAGS` etc. say which is which there).

* ``validated_readings``: VEE output (analytics/vee.py), one row per meter and interval.
* ``alert_events``: one alert state change (contracts §3), built by :func:`alert_event_frame`.
* ``collector_health``: a periodic snapshot of per-gateway counters, built by :func:`health_frame`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from meterwatch.core.schema import TS_DTYPE
from meterwatch.core.stats import Stats

VALIDATED_MEASUREMENT = "validated_readings"
ALERT_EVENTS_MEASUREMENT = "alert_events"
HEALTH_MEASUREMENT = "collector_health"

#: validated_readings in InfluxDB: tags (meter_id + registry tags) and fields by type.
VALIDATED_REGISTRY_TAGS: tuple[str, ...] = ("transformer_id", "customer_class", "phases")
VALIDATED_FLOAT_FIELDS: tuple[str, ...] = ("kwh",)
VALIDATED_INT_FIELDS: tuple[str, ...] = ("data_version",)
VALIDATED_TIME_FIELDS: tuple[str, ...] = ("interval_start", "written_at")
VALIDATED_STR_FIELDS: tuple[str, ...] = (
    "quality",
    "method",
    "reasons",
    "rule_set_version",
    "edited_by",
    "edit_reason",
)

#: alert_events: every column, in order. ``ts`` is the time of the change (service clock).
ALERT_EVENT_COLUMNS: tuple[str, ...] = (
    "ts",
    "event",
    "id",
    "fingerprint",
    "type",
    "category",
    "severity",
    "meter_id",
    "transformer_id",
    "status",
    "starts_at",
    "ends_at",
    "summary",
    "evidence",
    "count",
)
ALERT_EVENT_TAGS: tuple[str, ...] = (
    "event",
    "type",
    "category",
    "severity",
    "meter_id",
    "transformer_id",
)
ALERT_EVENT_TIME_FIELDS: tuple[str, ...] = ("starts_at", "ends_at")
ALERT_EVENT_INT_FIELDS: tuple[str, ...] = ("count",)
ALERT_EVENT_STR_FIELDS: tuple[str, ...] = ("id", "fingerprint", "status", "summary", "evidence")
ALERT_EVENT_TIMES: tuple[str, ...] = ("ts", "starts_at", "ends_at")

#: collector_health: tags, then integer counters and float gauges (NaN: not applicable).
HEALTH_TAGS: tuple[str, ...] = ("gateway", "protocol")
HEALTH_INT_FIELDS: tuple[str, ...] = (
    "meters",
    "meters_online",
    "meters_offline",
    "requests",
    "errors",
    "polls",
    "messages",
    "readings",
    "dead_letters",
    "spool_depth_rows",
    "spool_depth_bytes",
    "readings_stored",
    "readings_refused",
    "store_errors",
)
HEALTH_FLOAT_FIELDS: tuple[str, ...] = ("spool_oldest_pending_s", "store_write_rate_rows_per_s")
HEALTH_COLUMNS: tuple[str, ...] = ("ts", *HEALTH_TAGS, *HEALTH_INT_FIELDS, *HEALTH_FLOAT_FIELDS)
#: The ``gateway`` value of the row that describes the writer, spool and store of the process.
WRITER_ROW = "_writer"


def _utc(value: Any) -> pd.Timestamp:
    """A time (ISO text, datetime; naive = UTC) as a UTC Timestamp; NaT for None/empty."""
    if value is None or value == "":
        return pd.NaT
    ts = pd.Timestamp(value)
    if pd.isna(ts):
        return pd.NaT
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def alert_event_frame(
    events: Iterable[tuple[str, datetime | None, Mapping[str, Any]]],
) -> pd.DataFrame:
    """Rows of ``alert_events`` from (event, time of change, alert as its feed JSON)."""
    rows = []
    for event, at, alert in events:
        when = at if at is not None else (alert.get("updated_at") or alert.get("starts_at"))
        rows.append(
            {
                "ts": _utc(when),
                "event": event,
                "id": alert.get("id"),
                "fingerprint": alert.get("fingerprint"),
                "type": alert.get("type"),
                "category": alert.get("category"),
                "severity": alert.get("severity"),
                "meter_id": alert.get("meter_id"),
                "transformer_id": alert.get("transformer_id"),
                "status": alert.get("status"),
                "starts_at": _utc(alert.get("starts_at")),
                "ends_at": _utc(alert.get("ends_at")),
                "summary": alert.get("summary") or "",
                "evidence": json.dumps(
                    alert.get("evidence") or {}, sort_keys=True, ensure_ascii=False, default=str
                ),
                "count": int(alert.get("count") or 1),
            }
        )
    return normalize_alert_events(pd.DataFrame(rows, columns=list(ALERT_EVENT_COLUMNS)))


def normalize_alert_events(df: pd.DataFrame) -> pd.DataFrame:
    """``alert_events`` columns in order, timestamps UTC, ``count`` int64, text as object."""
    out = pd.DataFrame({c: df[c] if c in df else None for c in ALERT_EVENT_COLUMNS}, index=df.index)
    for col in ALERT_EVENT_TIMES:
        out[col] = pd.to_datetime(out[col], utc=True).astype(TS_DTYPE)
    out["count"] = pd.to_numeric(out["count"], errors="coerce").fillna(1).astype("int64")
    for col in ALERT_EVENT_COLUMNS:
        if col not in ALERT_EVENT_TIMES and col != "count":
            # InfluxDB returns an absent tag as "": the same as no value.
            out[col] = out[col].astype(object).where(out[col].notna() & (out[col] != ""), None)
    out["summary"] = out["summary"].where(out["summary"].notna(), "")
    return out.reset_index(drop=True)


@dataclass(frozen=True)
class GatewaySource:
    """One poller (gateway or bus, per interval group) or the MQTT intake, for a health row."""

    gateway: str
    protocol: str
    meter_ids: Sequence[str]
    polls: int | None = None


def health_frame(
    now: datetime,
    sources: Sequence[GatewaySource],
    stats: Stats,
    *,
    spool: bool = False,
) -> pd.DataFrame:
    """``collector_health`` rows: one per source, plus one ``_writer`` row for writer/spool/store.

    Counters are cumulative since the process started (like Prometheus counters): the rate over
    a period is the difference of two snapshots. Per gateway: ``meters``, ``meters_online``,
    ``meters_offline``, ``requests``, ``errors`` (any failed read, timeouts included) summed over
    its meters, ``polls`` (cycles run). The MQTT row has ``messages``, ``readings``,
    ``dead_letters``. The writer row has the spool depth and oldest pending age (with a spool),
    ``readings_stored``, ``readings_refused``, ``store_errors`` and the write rate.
    """
    ts = pd.Timestamp(now)
    ts = (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).floor("s")
    counters = stats.snapshot()
    gauges = stats.gauge_snapshot()
    with stats._lock:  # a consistent view of the per-meter counters
        meters = {mid: (h.requests, h.errors, h.online) for mid, h in stats.meters.items()}
    rows: list[dict[str, Any]] = []
    for src in sources:
        known = [meters[m] for m in src.meter_ids if m in meters]
        arr = np.array([(r, e) for r, e, _ in known], dtype="int64").reshape(-1, 2)
        row: dict[str, Any] = {
            "gateway": src.gateway,
            "protocol": src.protocol,
            "meters": len(src.meter_ids),
            "meters_online": sum(1 for *_, on in known if on),
            "meters_offline": sum(1 for *_, on in known if on is False),
        }
        if src.protocol == "mqtt":
            row["messages"] = counters.get("mqtt_messages", 0)
            row["readings"] = counters.get("mqtt_readings", 0)
            row["dead_letters"] = counters.get("mqtt_dead_letters", 0)
        else:
            row["requests"] = int(arr[:, 0].sum())
            row["errors"] = int(arr[:, 1].sum())
            row["polls"] = src.polls
        rows.append(row)
    writer: dict[str, Any] = {
        "gateway": WRITER_ROW,
        "protocol": "store",
        "readings_stored": counters.get("readings_stored", 0),
        "readings_refused": counters.get("readings_refused", 0),
        "store_errors": counters.get("store_errors", 0),
        "store_write_rate_rows_per_s": gauges.get("store_write_rows_per_second", 0.0),
    }
    if spool:
        writer["spool_depth_rows"] = int(gauges.get("spool_depth_rows", 0))
        writer["spool_depth_bytes"] = int(gauges.get("spool_depth_bytes", 0))
        writer["spool_oldest_pending_s"] = gauges.get("spool_oldest_pending_seconds", 0.0)
    rows.append(writer)
    df = pd.DataFrame(rows)
    df.insert(0, "ts", ts)
    return normalize_health(df)


def normalize_health(df: pd.DataFrame) -> pd.DataFrame:
    """``collector_health`` columns in order: counters nullable Int64, gauges float64."""
    out = pd.DataFrame({c: df[c] if c in df else None for c in HEALTH_COLUMNS}, index=df.index)
    out["ts"] = pd.to_datetime(out["ts"], utc=True).astype(TS_DTYPE)
    for col in HEALTH_TAGS:
        out[col] = out[col].astype(object)
    for col in HEALTH_INT_FIELDS:
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("Int64")
    for col in HEALTH_FLOAT_FIELDS:
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64")
    return out.reset_index(drop=True)
