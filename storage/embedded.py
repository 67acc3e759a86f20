"""Embedded default store: canonical readings in a local DuckDB file."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd

from meterwatch.errors import StorageError
from meterwatch.schema import READING_COLUMNS, READING_FIELDS, normalize_readings

_COLUMNS_SQL = ", ".join(
    ["meter_id VARCHAR NOT NULL", "ts TIMESTAMP NOT NULL"] + [f"{c} DOUBLE" for c in READING_FIELDS]
)
_SELECT = ", ".join(READING_COLUMNS)


def _naive_utc(t: datetime | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(t)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


class EmbeddedStore:
    """Readings in one DuckDB file (column store, compressed; a gateway's disk holds 10^8 rows).

    Timestamps are stored as naive UTC at microsecond precision. There is no unique index (an
    index over 10^8 keys would cost gigabytes of memory); instead reads collapse duplicate
    (meter_id, ts) rows, so a replayed write is harmless. Every write is one committed
    transaction: DuckDB's write-ahead log makes it durable before ``write_readings`` returns.
    """

    def __init__(self, path: str | Path, retention_days: float | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_days = retention_days
        self._lock = threading.Lock()
        try:
            self._con = duckdb.connect(str(self.path))
        except duckdb.Error as exc:
            raise StorageError(f"cannot open embedded store {self.path}: {exc}") from exc
        self._con.execute(f"CREATE TABLE IF NOT EXISTS readings ({_COLUMNS_SQL})")

    def write_readings(self, df: pd.DataFrame) -> int:
        if df.empty:
            return 0
        frame = normalize_readings(df)
        frame["ts"] = frame["ts"].dt.tz_convert("UTC").dt.tz_localize(None)
        with self._lock:
            try:
                self._con.register("_incoming", frame)
                self._con.execute(f"INSERT INTO readings SELECT {_SELECT} FROM _incoming")
                self._con.unregister("_incoming")
            except duckdb.Error as exc:
                raise StorageError(f"embedded store {self.path}: write failed: {exc}") from exc
        return len(frame)

    def read_readings(
        self,
        meter_ids: Sequence[str] | None = None,
        start: datetime | pd.Timestamp | None = None,
        end: datetime | pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        where, params = self._where(meter_ids, start, end)
        sql = (
            f"SELECT DISTINCT ON (meter_id, ts) {_SELECT} FROM readings {where} "
            "ORDER BY meter_id, ts"
        )
        with self._lock:
            df = self._con.execute(sql, params).df()
        return normalize_readings(df)

    def count_rows(self) -> tuple[int, int]:
        """(stored rows, distinct (meter_id, ts) pairs): equal when nothing was stored twice."""
        with self._lock:
            row = self._con.execute(
                "SELECT count(*), count(DISTINCT (meter_id, ts)) FROM readings"
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def apply_retention(self, now: datetime) -> int:
        """Delete readings older than ``retention_days`` before ``now``; return rows deleted."""
        if not self.retention_days:
            return 0
        cutoff = _naive_utc(now) - pd.Timedelta(days=self.retention_days)
        with self._lock:
            row = self._con.execute(
                "DELETE FROM readings WHERE ts < ? RETURNING 1", [cutoff.to_pydatetime()]
            ).fetchall()
        return len(row)

    def close(self) -> None:
        with self._lock:
            self._con.close()

    @staticmethod
    def _where(
        meter_ids: Sequence[str] | None,
        start: datetime | pd.Timestamp | None,
        end: datetime | pd.Timestamp | None,
    ) -> tuple[str, list[object]]:
        clauses: list[str] = []
        params: list[object] = []
        if meter_ids is not None:
            clauses.append("list_contains(?, meter_id)")
            params.append(list(meter_ids))
        if start is not None:
            clauses.append("ts >= ?")
            params.append(_naive_utc(start).to_pydatetime())
        if end is not None:
            clauses.append("ts < ?")
            params.append(_naive_utc(end).to_pydatetime())
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", params
