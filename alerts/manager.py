"""Turns detector findings into alerts: one open alert per fingerprint, appended to a JSONL feed."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

import pandas as pd

from alerts.model import Alert, fingerprint

log = logging.getLogger(__name__)

#: Called with (event, alert) for every change: event is "opened", "updated" or "resolved".
Listener = Callable[[str, Alert], None]


def _ts(value: object) -> datetime | None:
    if value is None or pd.isna(value):  # type: ignore[arg-type]
        return None
    return pd.Timestamp(value).to_pydatetime()  # type: ignore[arg-type]


class AlertManager:
    """Deduplicates findings into alerts and keeps the feed.

    The feed is an append-only log: every change to an alert appends its whole current state
    as one JSON line, so the last line of an ``id`` is its state. It is replayed on start, so
    open alerts survive restarts. Findings are matched to alerts by fingerprint: while an alert
    is open (or acknowledged) a new finding updates it; an episode that ended before the
    latest alert of the fingerprint was resolved is one we already reported and is ignored.
    """

    def __init__(
        self,
        feed_path: str | Path,
        auto_resolve_categories: Iterable[str] = ("equipment", "consumption"),
        listeners: Iterable[Listener] = (),
    ):
        self.feed_path = Path(feed_path)
        self.feed_path.parent.mkdir(parents=True, exist_ok=True)
        self.auto_resolve = frozenset(auto_resolve_categories)
        self.listeners = list(listeners)
        self._lock = threading.Lock()
        self.alerts: dict[str, Alert] = {}
        self._latest: dict[str, Alert] = {}
        self._episodes: dict[str, set[str]] = {}
        self._replay()

    # -- public -------------------------------------------------------------------------

    def process(
        self, findings: pd.DataFrame, now: datetime, *, streaming: bool = False
    ) -> list[tuple[str, Alert]]:
        """Apply a findings frame (meterwatch.schema.FINDING_COLUMNS); return the changes.

        ``streaming`` findings come from one batch of fresh readings: they can open an alert,
        but for an alert already open they only mean "still there" (the batch cannot tell
        where an episode started; the scheduled run over the window can).
        """
        if findings.empty:
            return []
        changes: list[tuple[str, Alert]] = []
        rows = findings.sort_values("starts_at", kind="stable").to_dict("records")
        with self._lock:
            for row in rows:
                change = self._apply(row, now, streaming)
                if change is not None:
                    changes.append(change)
            self._append([a for _, a in changes])
        for event, alert in changes:
            for listener in self.listeners:
                listener(event, alert)
        return changes

    def open_alerts(self) -> list[Alert]:
        with self._lock:
            return [a for a in self.alerts.values() if a.status != "resolved"]

    def counts_by_type(self) -> Counter[str]:
        """Alerts raised so far (any status), by type."""
        with self._lock:
            return Counter(a.type for a in self.alerts.values())

    # -- internals ----------------------------------------------------------------------

    def _apply(
        self, row: dict[str, object], now: datetime, streaming: bool = False
    ) -> tuple[str, Alert] | None:
        atype = str(row["type"])
        meter_id = row.get("meter_id") or None
        transformer_id = row.get("transformer_id") or None
        fp = fingerprint(atype, meter_id, transformer_id)  # type: ignore[arg-type]
        starts = _ts(row["starts_at"])
        ends = _ts(row.get("ends_at"))
        assert starts is not None
        episode = starts.isoformat()
        latest = self._latest.get(fp)

        if latest is not None and latest.status != "resolved":
            latest.last_seen = now
            if streaming:
                return None
            event = None
            seen = self._episodes.setdefault(latest.id, set())
            if episode not in seen:
                seen.add(episode)
                latest.count = len(seen)
                latest.summary = str(row["summary"])
                latest.evidence = dict(row["evidence"])  # type: ignore[call-overload]
                event = "updated"
            if ends is not None and latest.category in self.auto_resolve:
                latest.status = "resolved"
                latest.ends_at = ends
                latest.summary = str(row["summary"])
                latest.evidence = dict(row["evidence"])  # type: ignore[call-overload]
                event = "resolved"
            if event:
                latest.updated_at = now
                return event, latest
            return None

        if latest is not None and latest.ends_at is not None and starts <= latest.ends_at:
            return None  # an episode already reported and resolved

        alert = Alert(
            type=atype,
            severity=str(row["severity"]),
            meter_id=meter_id,  # type: ignore[arg-type]
            transformer_id=transformer_id,  # type: ignore[arg-type]
            starts_at=starts,
            summary=str(row["summary"]),
            evidence=dict(row["evidence"]),  # type: ignore[call-overload]
            last_seen=now,
            updated_at=now,
        )
        if ends is not None and alert.category in self.auto_resolve:
            alert.status = "resolved"
            alert.ends_at = ends
        self.alerts[alert.id] = alert
        self._latest[fp] = alert
        self._episodes[alert.id] = {episode}
        return "opened", alert

    def _append(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        with self.feed_path.open("a", encoding="utf-8") as fh:
            for alert in alerts:
                fh.write(json.dumps(alert.to_json(), ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _replay(self) -> None:
        if not self.feed_path.exists():
            return
        with self.feed_path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    alert = Alert.from_json(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning(
                        "%s:%d: unreadable alert line skipped: %s", self.feed_path, lineno, exc
                    )
                    continue
                self.alerts[alert.id] = alert
        for alert in sorted(self.alerts.values(), key=lambda a: a.starts_at):
            self._latest[alert.fingerprint] = alert
            self._episodes[alert.id] = {alert.starts_at.isoformat()}
