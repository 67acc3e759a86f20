"""Embedded default store: canonical readings in a local DuckDB file."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from meterwatch.core.errors import StorageError
from meterwatch.core.schema import (
    READING_COLUMNS,
    READING_FIELDS,
    READING_TIME_COLUMNS,
    TS_DTYPE,
    normalize_readings,
    with_time_columns,
)
from meterwatch.storage.measurements import (
    ALERT_EVENT_COLUMNS,
    ALERT_EVENT_TIMES,
    HEALTH_COLUMNS,
    HEALTH_FLOAT_FIELDS,
    HEALTH_INT_FIELDS,
    normalize_alert_events,
    normalize_health,
)

_COLUMNS_SQL = ", ".join(
    ["meter_id VARCHAR NOT NULL", "ts TIMESTAMP NOT NULL"] + [f"{c} DOUBLE" for c in READING_FIELDS]
)
_SELECT = ", ".join(READING_COLUMNS)
#: Stored reading columns: canonical, then the optional timestamps (added by migration).
_STORED = ", ".join((*READING_COLUMNS, *READING_TIME_COLUMNS))
#: Validated interval energy (analytics/vee.py), every data version kept (docs/billing.md).
VALIDATED_STORE_COLUMNS: tuple[str, ...] = (
    "meter_id",
    "interval_start",
    "ts",
    "kwh",
    "quality",
    "method",
    "reasons",
    "rule_set_version",
    "data_version",
    "written_at",
    "edited_by",
    "edit_reason",
)
_VALIDATED_SQL = (
    "CREATE TABLE IF NOT EXISTS validated_readings (meter_id VARCHAR NOT NULL, "
    "interval_start TIMESTAMP NOT NULL, ts TIMESTAMP NOT NULL, kwh DOUBLE, quality VARCHAR NOT NULL, "
    "method VARCHAR, reasons VARCHAR, rule_set_version VARCHAR, data_version BIGINT NOT NULL, "
    "written_at TIMESTAMP NOT NULL, edited_by VARCHAR, edit_reason VARCHAR)"
)

_ALERT_EVENTS_SQL = (
    "CREATE TABLE IF NOT EXISTS alert_events (ts TIMESTAMP NOT NULL, event VARCHAR NOT NULL, "
    "id VARCHAR NOT NULL, fingerprint VARCHAR, type VARCHAR, category VARCHAR, severity VARCHAR, "
    "meter_id VARCHAR, transformer_id VARCHAR, status VARCHAR, starts_at TIMESTAMP, "
    "ends_at TIMESTAMP, summary VARCHAR, evidence VARCHAR, count BIGINT)"
)
_HEALTH_SQL = (
    "CREATE TABLE IF NOT EXISTS collector_health (ts TIMESTAMP NOT NULL, "
    "gateway VARCHAR NOT NULL, protocol VARCHAR, "
    + ", ".join(
        [f"{c} BIGINT" for c in HEALTH_INT_FIELDS] + [f"{c} DOUBLE" for c in HEALTH_FLOAT_FIELDS]
    )
    + ")"
)


def _naive_utc(t: datetime | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(t)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


class EmbeddedStore:
    """Readings in one DuckDB file (column store, compressed; a gateway's disk holds 10^8 rows).

    Timestamps are stored as naive UTC at microsecond precision. One reading per
    (meter_id, ts): a write first looks up its keys among the stored readings of its own time
    range (DuckDB's min/max zone maps skip the rest; no unique index, which over 10^8 keys would
    cost gigabytes of memory). A reading stored already with the same quantities (an MQTT
    redelivery, a spool replay) is skipped and counted (``duplicates``); one with different
    quantities for the same meter and time is not stored over the first, it goes to the
    ``reading_conflicts`` table and is counted (``conflicts``). Reads still collapse duplicate
    keys, for files written before this check. Every write is one committed transaction:
    DuckDB's write-ahead log makes it durable before ``write_readings`` returns.
    """

    def __init__(
        self,
        path: str | Path,
        retention_days: float | None = None,
        memory_limit: str | None = "1GB",
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_days = retention_days
        self._lock = threading.Lock()
        try:
            config: dict[str, str | bool | int | float | list[str]] = (
                {"memory_limit": memory_limit} if memory_limit else {}
            )
            self._con = duckdb.connect(str(self.path), config=config)
        except duckdb.Error as exc:
            raise StorageError(f"cannot open embedded store {self.path}: {exc}") from exc
        self._con.execute(f"CREATE TABLE IF NOT EXISTS readings ({_COLUMNS_SQL})")
        # Migration for files written before the optional timestamps existed (no-op after).
        for col in READING_TIME_COLUMNS:
            self._con.execute(f"ALTER TABLE readings ADD COLUMN IF NOT EXISTS {col} TIMESTAMP")
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS reading_conflicts AS SELECT *, "
            "CAST(NULL AS TIMESTAMP) AS detected_at FROM readings WHERE false"
        )
        self._con.execute(_VALIDATED_SQL)
        self._con.execute(_ALERT_EVENTS_SQL)
        #: Readings skipped because the same reading was stored already; readings kept apart in
        #: ``reading_conflicts`` because another value is stored for their meter and time.
        self.duplicates = 0
        self.conflicts = 0
        self._con.execute(_HEALTH_SQL)

    def write_readings(self, df: pd.DataFrame) -> int:
        if df.empty:
            return 0
        frame = with_time_columns(df, always=True)
        for col in ("ts", *READING_TIME_COLUMNS):
            frame[col] = frame[col].dt.tz_convert("UTC").dt.tz_localize(None)
        # Within the batch: an exact repeat is a duplicate, another value for a key a conflict.
        key_dup = frame.duplicated(["meter_id", "ts"], keep="first").to_numpy()
        if key_dup.any():
            same_dup = frame.duplicated(
                ["meter_id", "ts", *READING_FIELDS], keep="first"
            ).to_numpy()
        else:  # the usual batch: no key twice, so no exact repeat either (one hashing pass)
            same_dup = key_dup
        frame["_row"] = np.arange(len(frame), dtype=np.int64)
        lo, hi = frame["ts"].min().to_pydatetime(), frame["ts"].max().to_pydatetime()
        same = " AND ".join(f"r.{c} IS NOT DISTINCT FROM i.{c}" for c in READING_FIELDS)
        with self._lock:
            try:
                self._con.execute("BEGIN TRANSACTION")
                self._con.register("_incoming", frame)
                hits = self._con.execute(
                    f"SELECT i._row, bool_and({same}) FROM _incoming i JOIN readings r "
                    "ON r.meter_id = i.meter_id AND r.ts = i.ts "
                    "WHERE r.ts BETWEEN ? AND ? GROUP BY i._row",
                    [lo, hi],
                ).fetchall()
                stored_same = np.zeros(len(frame), dtype=bool)
                stored_other = np.zeros(len(frame), dtype=bool)
                for row, equal in hits:  # rows already stored: usually none
                    (stored_same if equal else stored_other)[row] = True
                duplicate = stored_same | same_dup
                conflict = ~duplicate & (stored_other | key_dup)
                keep = ~duplicate & ~conflict
                if keep.all():  # the usual batch: everything new, no second registration
                    self._con.execute(
                        f"INSERT INTO readings ({_STORED}) SELECT {_STORED} FROM _incoming"
                    )
                else:
                    # Which rows go where, as a small numeric table joined on _row.
                    flags = pd.DataFrame(
                        {"_row": frame["_row"].to_numpy(), "_keep": keep, "_conflict": conflict}
                    )
                    self._con.register("_flags", flags)
                    chosen = f"SELECT {_STORED} FROM _incoming JOIN _flags USING (_row)"
                    self._con.execute(
                        f"INSERT INTO readings ({_STORED}) {chosen} WHERE _flags._keep"
                    )
                    if conflict.any():
                        self._con.execute(
                            f"INSERT INTO reading_conflicts ({_STORED}, detected_at) "
                            f"SELECT {_STORED}, ? FROM _incoming JOIN _flags USING (_row) "
                            "WHERE _flags._conflict",
                            [datetime.now(UTC).replace(tzinfo=None)],
                        )
                    self._con.unregister("_flags")
                self._con.unregister("_incoming")
                self._con.execute("COMMIT")
            except duckdb.Error as exc:
                try:
                    self._con.execute("ROLLBACK")
                except duckdb.Error:
                    pass
                raise StorageError(f"embedded store {self.path}: write failed: {exc}") from exc
            self.duplicates += int(duplicate.sum())
            self.conflicts += int(conflict.sum())
        return int(keep.sum())

    def read_conflicts(self) -> pd.DataFrame:
        """Readings kept apart because another value was stored for their meter and time."""
        with self._lock:
            df = self._con.execute(
                f"SELECT {_STORED}, detected_at FROM reading_conflicts ORDER BY meter_id, ts"
            ).df()
        for col in ("ts", *READING_TIME_COLUMNS, "detected_at"):
            df[col] = pd.to_datetime(df[col]).dt.tz_localize("UTC").astype(TS_DTYPE)
        return df

    def read_readings(
        self,
        meter_ids: Sequence[str] | None = None,
        start: datetime | pd.Timestamp | None = None,
        end: datetime | pd.Timestamp | None = None,
        *,
        include_times: bool = False,
    ) -> pd.DataFrame:
        """Readings with ``start <= ts < end``, one per (meter_id, ts), sorted.

        ``include_times`` adds ``collected_at`` and ``device_ts`` (NaT where not stored).
        """
        where, params = self._where(meter_ids, start, end)
        cols = _STORED if include_times else _SELECT
        sql = (
            f"SELECT DISTINCT ON (meter_id, ts) {cols} FROM readings {where} ORDER BY meter_id, ts"
        )
        with self._lock:
            df = self._con.execute(sql, params).df()
        if not include_times:
            return normalize_readings(df)
        for col in READING_TIME_COLUMNS:
            df[col] = pd.to_datetime(df[col]).dt.tz_localize("UTC").astype(TS_DTYPE)
        return with_time_columns(df, always=True)

    def count_rows(self) -> tuple[int, int]:
        """(stored rows, distinct (meter_id, ts) pairs): equal when nothing was stored twice."""
        with self._lock:
            # fetchall, not fetchone: an unfinished result keeps the connection busy and a
            # concurrent write would fail with "Resource In Use".
            (row,) = self._con.execute(
                # A DISTINCT subquery, not count(DISTINCT ...): its hash aggregate spills to
                # disk under memory_limit (count(DISTINCT) ran out of 1 GB at 10^8 rows).
                "SELECT (SELECT count(*) FROM readings), "
                "(SELECT count(*) FROM (SELECT DISTINCT meter_id, ts FROM readings))"
            ).fetchall()
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

    def write_validated_readings(self, df: pd.DataFrame, written_at: datetime | None = None) -> int:
        """Store validated intervals as a new data version; return that version number.

        The version is one more than the highest stored (1 for the first write) and replaces
        the frame's ``data_version``; earlier versions are never changed. Optional columns
        ``edited_by`` / ``edit_reason`` record a manual edit.
        """
        if df.empty:
            raise StorageError(f"embedded store {self.path}: no validated intervals to write")
        frame = df.copy()
        for col in ("edited_by", "edit_reason"):
            if col not in frame:
                frame[col] = None
        for col in ("interval_start", "ts"):
            frame[col] = pd.to_datetime(frame[col], utc=True).dt.tz_localize(None)
        frame["written_at"] = _naive_utc(written_at or pd.Timestamp.now(tz="UTC"))
        cols = ", ".join(c for c in VALIDATED_STORE_COLUMNS if c != "data_version")
        with self._lock:
            try:
                self._con.execute("BEGIN TRANSACTION")
                rows = self._con.execute(
                    "SELECT coalesce(max(data_version), 0) + 1 FROM validated_readings"
                ).fetchall()
                version = int(rows[0][0])
                self._con.register("_validated", frame)
                self._con.execute(
                    f"INSERT INTO validated_readings ({cols}, data_version) "
                    f"SELECT {cols}, ? FROM _validated",
                    [version],
                )
                self._con.unregister("_validated")
                self._con.execute("COMMIT")
            except duckdb.Error as exc:
                self._con.execute("ROLLBACK")
                raise StorageError(
                    f"embedded store {self.path}: validated write failed: {exc}"
                ) from exc
        return version

    def read_validated_readings(
        self,
        meter_ids: Sequence[str] | None = None,
        start: datetime | pd.Timestamp | None = None,
        end: datetime | pd.Timestamp | None = None,
        *,
        version: int | None = None,
        all_versions: bool = False,
    ) -> pd.DataFrame:
        """Validated intervals with ``start <= ts < end``: per (meter_id, ts) the latest data
        version (at most ``version`` when given), or every version with ``all_versions``."""
        where, params = self._where(meter_ids, start, end)
        if version is not None:
            where = (where + " AND " if where else "WHERE ") + "data_version <= ?"
            params.append(int(version))
        cols = ", ".join(VALIDATED_STORE_COLUMNS)
        latest = (
            ""
            if all_versions
            else "QUALIFY row_number() OVER (PARTITION BY meter_id, ts ORDER BY data_version DESC) = 1"
        )
        sql = (
            f"SELECT {cols} FROM validated_readings {where} {latest} "
            "ORDER BY meter_id, ts, data_version"
        )
        with self._lock:
            try:
                df = self._con.execute(sql, params).df()
            except duckdb.Error as exc:
                raise StorageError(
                    f"embedded store {self.path}: validated read failed: {exc}"
                ) from exc
        for col in ("interval_start", "ts", "written_at"):
            df[col] = pd.to_datetime(df[col]).dt.tz_localize("UTC").astype("datetime64[ns, UTC]")
        df["data_version"] = df["data_version"].astype("int64")
        return df

    # ------------------------------------------------------------- alert events, health

    def write_alert_events(self, df: pd.DataFrame) -> int:
        """Append alert state changes (``storage.measurements.ALERT_EVENT_COLUMNS``); rows written."""
        if df.empty:
            return 0
        frame = normalize_alert_events(df)
        for col in ALERT_EVENT_TIMES:
            frame[col] = frame[col].dt.tz_localize(None)
        return self._insert("alert_events", frame, ALERT_EVENT_COLUMNS)

    def read_alert_events(
        self,
        start: datetime | pd.Timestamp | None = None,
        end: datetime | pd.Timestamp | None = None,
        *,
        meter_ids: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Alert events with ``start <= ts < end``, one per (id, event, ts), sorted by ts."""
        where, params = self._where(meter_ids, start, end)
        cols = ", ".join(ALERT_EVENT_COLUMNS)
        df = self._select(
            f"SELECT DISTINCT ON (id, event, ts) {cols} FROM alert_events {where} "
            "ORDER BY ts, id, event",
            params,
        )
        for col in ALERT_EVENT_TIMES:
            df[col] = pd.to_datetime(df[col]).dt.tz_localize("UTC")
        return normalize_alert_events(df)

    def write_collector_health(self, df: pd.DataFrame) -> int:
        """Append a health snapshot (``storage.measurements.HEALTH_COLUMNS``); rows written."""
        if df.empty:
            return 0
        frame = normalize_health(df)
        frame["ts"] = frame["ts"].dt.tz_localize(None)
        return self._insert("collector_health", frame, HEALTH_COLUMNS)

    def read_collector_health(
        self,
        start: datetime | pd.Timestamp | None = None,
        end: datetime | pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """Health rows with ``start <= ts < end``, one per (gateway, ts), sorted by ts, gateway."""
        where, params = self._where(None, start, end)
        cols = ", ".join(HEALTH_COLUMNS)
        df = self._select(
            f"SELECT DISTINCT ON (gateway, ts) {cols} FROM collector_health {where} "
            "ORDER BY ts, gateway",
            params,
        )
        df["ts"] = pd.to_datetime(df["ts"]).dt.tz_localize("UTC")
        return normalize_health(df)

    def _insert(self, table: str, frame: pd.DataFrame, columns: Sequence[str]) -> int:
        cols = ", ".join(columns)
        with self._lock:
            try:
                self._con.register("_rows", frame)
                self._con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _rows")
                self._con.unregister("_rows")
            except duckdb.Error as exc:
                raise StorageError(
                    f"embedded store {self.path}: {table} write failed: {exc}"
                ) from exc
        return len(frame)

    def _select(self, sql: str, params: list[object]) -> pd.DataFrame:
        with self._lock:
            try:
                return self._con.execute(sql, params).df()
            except duckdb.Error as exc:
                raise StorageError(f"embedded store {self.path}: read failed: {exc}") from exc

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A second connection to this store for a long read (a backup) that must not hold up
        writes: in a transaction of its own it sees one consistent snapshot (DuckDB MVCC)."""
        with self._lock:
            con = self._con.cursor()
        try:
            yield con
        finally:
            con.close()

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
