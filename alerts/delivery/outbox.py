"""Persistent outbox (SQLite): one row per (notification, sink), delivered marks fsynced.

A notification is identified by ``key = "<alert id>:<event>:<updated_at>"``; the pair
(key, sink) is unique, so enqueueing the same change twice (for example when a listener is
called again after a restart) adds nothing. ``synchronous=FULL`` makes every commit durable
before it returns: a row marked delivered is never sent again after a crash or restart, and a
row not yet marked is retried (at least once; a crash between the send and the mark can repeat
that one notification, the only duplicate the design allows).
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meterwatch.core.errors import StorageError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    key          TEXT NOT NULL,
    sink         TEXT NOT NULL,
    event        TEXT NOT NULL,
    alert_id     TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL,
    delivered_at REAL,
    failed_at    REAL,
    last_error   TEXT,
    UNIQUE (key, sink)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (sink, seq)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
"""


@dataclass(frozen=True)
class Notification:
    """One alert change to deliver to one sink. ``alert`` is the feed record (contracts §3)."""

    seq: int
    key: str
    sink: str
    event: str
    alert: dict[str, Any]
    attempts: int
    created_at: float

    @property
    def fingerprint(self) -> str:
        return str(self.alert.get("fingerprint", ""))


def json_safe(value: Any) -> Any:
    """``value`` with NaN and ±inf floats replaced by None, so the JSON is valid for receivers.

    Detector evidence may carry NaN (a quantity the meter does not report); Python's json
    would write it as the non-standard ``NaN`` token.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def notification_key(alert: dict[str, Any], event: str) -> str:
    """The identity of a notification: alert id, event and the alert's ``updated_at``."""
    return f"{alert['id']}:{event}:{alert.get('updated_at') or ''}"


#: The outbox file in ``alerts.delivery.state_dir``.
OUTBOX_FILE = "outbox.sqlite"


class Outbox:
    """The durable queue of notifications, shared by the dispatcher thread and listeners."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._con = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=FULL")  # fsync at every commit
            self._con.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"delivery outbox {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            with self._lock:
                return self._con.execute(sql, params)
        except sqlite3.Error as exc:
            raise StorageError(f"delivery outbox {self.path}: {exc}") from exc

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Run a SELECT and fetch every row under the lock (the dispatcher thread, listeners
        and /metrics scrapes share the connection)."""
        try:
            with self._lock:
                return self._con.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"delivery outbox {self.path}: {exc}") from exc

    def enqueue(self, alert: dict[str, Any], event: str, sinks: list[str], now: float) -> int:
        """Add the notification for each sink; return how many rows were new (not duplicates)."""
        key = notification_key(alert, event)
        payload = json.dumps(json_safe(alert), ensure_ascii=False, sort_keys=True, allow_nan=False)
        rows = [
            (key, sink, event, alert["id"], alert.get("fingerprint", ""), payload, now, now)
            for sink in sinks
        ]
        try:
            with self._lock:
                before = self._con.total_changes
                self._con.execute("BEGIN IMMEDIATE")
                self._con.executemany(
                    "INSERT OR IGNORE INTO outbox (key, sink, event, alert_id, fingerprint, "
                    "payload, created_at, next_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self._con.execute("COMMIT")
                return self._con.total_changes - before
        except sqlite3.Error as exc:
            raise StorageError(f"delivery outbox {self.path}: {exc}") from exc

    def pending(self, sink: str, limit: int = 1000) -> list[tuple[Notification, float]]:
        """Undelivered, not given-up notifications of a sink in enqueue order, with their due time."""
        rows = self._query(
            "SELECT seq, key, sink, event, payload, attempts, created_at, next_at FROM outbox "
            "WHERE sink = ? AND delivered_at IS NULL AND failed_at IS NULL ORDER BY seq LIMIT ?",
            (sink, limit),
        )
        return [
            (Notification(seq, key, s, event, json.loads(payload), attempts, created), next_at)
            for seq, key, s, event, payload, attempts, created, next_at in rows
        ]

    def mark_delivered(self, seq: int, now: float) -> None:
        self._exec(
            "UPDATE outbox SET delivered_at = ?, attempts = attempts + 1 WHERE seq = ?",
            (now, seq),
        )

    def mark_retry(self, seq: int, next_at: float, error: str) -> None:
        self._exec(
            "UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ? WHERE seq = ?",
            (next_at, error, seq),
        )

    def mark_failed(self, seq: int, now: float, error: str) -> None:
        self._exec(
            "UPDATE outbox SET attempts = attempts + 1, failed_at = ?, last_error = ? "
            "WHERE seq = ?",
            (now, error, seq),
        )

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per sink and state (pending, delivered, failed), from the persistent table."""
        rows = self._query(
            "SELECT sink, SUM(delivered_at IS NOT NULL), SUM(failed_at IS NOT NULL), "
            "SUM(delivered_at IS NULL AND failed_at IS NULL) FROM outbox GROUP BY sink"
        )
        return {
            sink: {"delivered": int(d or 0), "failed": int(f or 0), "pending": int(p or 0)}
            for sink, d, f, p in rows
        }

    def purge_delivered(self, older_than_s: float, now: float | None = None) -> int:
        """Delete delivered rows older than ``older_than_s`` (keeps the table small)."""
        now = time.time() if now is None else now
        cur = self._exec(
            "DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < ?",
            (now - older_than_s,),
        )
        return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._con.close()
