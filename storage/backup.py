"""The store's side of backups: every stored table to Parquet files, and back.

A backup holds one Parquet file per table (docs/storage-schema.md):

    readings.parquet            one row per (meter_id, ts), sorted; ts, collected_at, device_ts UTC
    validated_readings.parquet  every data version the store keeps (meter_id, ts, data_version)
    alert_events.parquet        one row per (id, event, ts)
    collector_health.parquet    one row per (gateway, ts)

Timestamps are written as UTC timestamps (Parquet ``isAdjustedToUTC``), so pandas, pyarrow,
DuckDB or Spark read them directly.

* **Embedded store** (:func:`dump_embedded`): DuckDB streams each table with ``COPY ... TO``, all
  inside **one read transaction**, so the files are one consistent snapshot even while the
  service keeps writing through its own connection (DuckDB's MVCC: a reader never blocks a
  writer). Memory stays flat for 10^8 readings. The connection is either a second connection of
  the running service's store (:meth:`storage.embedded.EmbeddedStore.reader`, asked for over the
  service's control socket, because DuckDB lets one process open the file) or a read-only
  connection when no service runs.
* **InfluxDB** (:func:`dump_store`): InfluxQL reads, a chunk of meters at a time, appended to the
  Parquet files. InfluxDB keeps only the latest data version of a validated interval, so that is
  what its backup holds.
* Readings (and alert events) still **waiting in a spool** when the backup starts are merged in
  by :func:`merge_pending` (the spool is read first, then the store: a batch drained in between is
  in the store read, and the duplicate collapses on the table's key).

:func:`load_embedded` and :func:`load_store` write a backup's tables into a store: the embedded
store in one transaction (refusing a store with data unless ``force``), InfluxDB through the
store's own write methods (the data version of each validated interval is kept).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from meterwatch.core.errors import StorageError
from meterwatch.core.schema import READING_COLUMNS, READING_TIME_COLUMNS, TS_DTYPE
from meterwatch.storage.embedded import VALIDATED_STORE_COLUMNS, EmbeddedStore
from meterwatch.storage.measurements import ALERT_EVENT_COLUMNS, HEALTH_COLUMNS

FORMAT = "meterwatch-backup"
#: 2: every table (issue 16); 1: readings only (still restored).
VERSION = 2
READ_VERSIONS = (1, 2)
MANIFEST_FILE = "manifest.json"
READINGS_FILE = "readings.parquet"


@dataclass(frozen=True)
class Table:
    """One stored table: its columns, the key a read returns one row for, its time columns."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    times: tuple[str, ...]

    @property
    def file(self) -> str:
        return f"{self.name}.parquet"


TABLES: tuple[Table, ...] = (
    Table(
        "readings",
        (*READING_COLUMNS, *READING_TIME_COLUMNS),
        ("meter_id", "ts"),
        ("ts", *READING_TIME_COLUMNS),
    ),
    Table(
        "validated_readings",
        VALIDATED_STORE_COLUMNS,
        ("meter_id", "ts", "data_version"),
        ("interval_start", "ts", "written_at"),
    ),
    Table(
        "alert_events", ALERT_EVENT_COLUMNS, ("id", "event", "ts"), ("ts", "starts_at", "ends_at")
    ),
    Table("collector_health", HEALTH_COLUMNS, ("gateway", "ts"), ("ts",)),
)
TABLE = {t.name: t for t in TABLES}


@dataclass(frozen=True)
class BackupResult:
    """What a store backup or restore copied: rows per table (``rows``: the readings)."""

    path: Path
    tables: dict[str, int]

    @property
    def rows(self) -> int:
        return self.tables.get("readings", 0)


def quote(path: Path) -> str:
    """A path as a DuckDB string literal."""
    return "'" + str(path).replace("'", "''") + "'"


def _connect(path: Path, read_only: bool, memory_limit: str | None) -> duckdb.DuckDBPyConnection:
    try:
        config: dict[str, Any] = {"memory_limit": memory_limit} if memory_limit else {}
        con = duckdb.connect(str(path), read_only=read_only, config=config)
    except duckdb.Error as exc:
        raise StorageError(
            f"cannot open embedded store {path}: {exc} (another process has it open; stop it first)"
        ) from exc
    con.execute("SET TimeZone = 'UTC'")
    return con


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass  # no transaction open


def _table_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """Columns ``table`` has in this file ([] when the table does not exist: an older file)."""
    return [
        str(r[0])
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
            "ORDER BY ordinal_position",
            [table],
        ).fetchall()
    ]


# ---------------------------------------------------------------------------------- dump


def dump_embedded(con: duckdb.DuckDBPyConnection, out: Path) -> dict[str, int]:
    """Every table of the DuckDB store behind ``con`` to ``out/<table>.parquet``, one snapshot.

    ``con`` must be free for this call (a connection of its own): the copies run in one read
    transaction, so they see the same instant however long they take.
    """
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, int] = {}
    try:
        con.execute("SET SESSION TimeZone = 'UTC'")  # naive UTC -> TIMESTAMPTZ keeps the instant
        con.execute("BEGIN TRANSACTION")
        for t in TABLES:
            have = set(_table_columns(con, t.name))
            if not have:
                continue  # a store file from before this table existed
            cols = ", ".join(
                f"{c}::TIMESTAMPTZ AS {c}" if c in t.times else c for c in t.columns if c in have
            )
            key = ", ".join(t.key)
            con.execute(
                f"COPY (SELECT DISTINCT ON ({key}) {cols} FROM {t.name} ORDER BY {key}) "
                f"TO {quote(out / t.file)} (FORMAT PARQUET, COMPRESSION ZSTD)"
            )
            (n,) = con.execute(
                f"SELECT count(*) FROM read_parquet({quote(out / t.file)})"
            ).fetchall()[0]
            rows[t.name] = int(n)
        con.execute("COMMIT")
    except duckdb.Error as exc:
        _rollback(con)
        raise StorageError(f"backup of the embedded store to {out} failed: {exc}") from exc
    return rows


def dump_embedded_file(
    store_path: Path, out: Path, memory_limit: str | None = None
) -> dict[str, int]:
    """:func:`dump_embedded` of a store file no process has open (read-only connection)."""
    if not store_path.exists():
        raise StorageError(f"embedded store {store_path} does not exist: nothing to back up")
    con = _connect(store_path, read_only=True, memory_limit=memory_limit)
    try:
        return dump_embedded(con, out)
    finally:
        con.close()


def _arrow(frame: pd.DataFrame, table: Table) -> pa.Table:
    """``frame`` with the table's columns in order, times as UTC microseconds (as DuckDB writes)."""
    cols = [c for c in table.columns if c in frame.columns]
    data = pa.Table.from_pandas(frame[cols], preserve_index=False)
    for i, name in enumerate(data.column_names):
        if name in table.times:
            data = data.set_column(
                i, name, data.column(name).cast(pa.timestamp("us", tz="UTC"), safe=False)
            )
    return data


class _ParquetAppender:
    """Appends frames to one Parquet file (the schema is the first frame's)."""

    def __init__(self, path: Path, table: Table):
        self.path, self.table = path, table
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def append(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        data = _arrow(frame, self.table)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, data.schema, compression="zstd")
        else:
            data = data.cast(self._writer.schema)
        self._writer.write_table(data)
        self.rows += len(frame)

    def close(self) -> int:
        if self._writer is not None:
            self._writer.close()
        return self.rows


def dump_store(store: Any, out: Path, *, chunk_meters: int = 100) -> dict[str, int]:
    """Every table of a store read through its read methods (InfluxDB) to ``out/<table>.parquet``.

    Readings and validated readings are read a chunk of ``chunk_meters`` meters at a time (in
    meter order, so the files come out sorted like the embedded store's); alert events and
    health snapshots in one read each.
    """
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, int] = {}
    readers: dict[str, Callable[[Sequence[str] | None], pd.DataFrame]] = {
        "readings": lambda ids: store.read_readings(ids, include_times=True),
        "validated_readings": lambda ids: store.read_validated_readings(ids),
    }
    for name, read in readers.items():
        appender = _ParquetAppender(out / TABLE[name].file, TABLE[name])
        try:
            ids = store.tag_values(name, "meter_id")
            for i in range(0, len(ids), chunk_meters):
                appender.append(read(ids[i : i + chunk_meters]))
        finally:
            rows[name] = appender.close()
    for name, frame in (
        ("alert_events", store.read_alert_events()),
        ("collector_health", store.read_collector_health()),
    ):
        appender = _ParquetAppender(out / TABLE[name].file, TABLE[name])
        appender.append(frame)
        rows[name] = appender.close()
    return rows


def merge_pending(
    table: Table, snapshot: Path | None, pending: pd.DataFrame | None, out: Path
) -> int:
    """Write ``out`` = the snapshot file plus rows still waiting in a spool, one row per key.

    A pending row wins over a stored one with the same key (it is the later write). Returns rows.
    """
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        parts = []
        if snapshot is not None and snapshot.exists():
            parts.append(f"SELECT *, 0 AS _pending FROM read_parquet({quote(snapshot)})")
        if pending is not None and not pending.empty:
            con.register("_spooled", _arrow(pending, table))
            parts.append("SELECT *, 1 AS _pending FROM _spooled")
        if not parts:
            return 0
        key = ", ".join(table.key)
        con.execute(
            f"COPY (SELECT * EXCLUDE (_pending) FROM (SELECT DISTINCT ON ({key}) * FROM "
            f"({' UNION ALL BY NAME '.join(parts)}) ORDER BY {key}, _pending DESC) "
            f"ORDER BY {key}) TO {quote(out)} (FORMAT PARQUET, COMPRESSION ZSTD)"
        )
        (n,) = con.execute(f"SELECT count(*) FROM read_parquet({quote(out)})").fetchall()[0]
        return int(n)
    except duckdb.Error as exc:
        raise StorageError(
            f"backup: merging pending {table.name} into {out} failed: {exc}"
        ) from exc
    finally:
        con.close()


def time_range(path: Path, column: str = "ts") -> tuple[str | None, str | None]:
    """First and last ``column`` in a Parquet file, ISO 8601 UTC (None when empty or absent)."""
    if not path.exists():
        return None, None
    con = duckdb.connect()  # streams the column: flat memory for 10^8 rows
    try:
        row = con.execute(
            f"SELECT epoch_us(min({column})), epoch_us(max({column})) "
            f"FROM read_parquet({quote(path)})"
        ).fetchone()
    finally:
        con.close()
    assert row is not None

    def iso(us: int | None) -> str | None:
        if us is None:
            return None
        return pd.Timestamp(us, unit="us", tz="UTC").isoformat().replace("+00:00", "Z")

    return iso(row[0]), iso(row[1])


# ------------------------------------------------------------------------------ manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of backup ``path``; :class:`StorageError` when it is not a backup."""
    p = Path(path) / MANIFEST_FILE
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StorageError(f"{path} is not a MeterWatch backup: {p}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StorageError(f"{path} is not a MeterWatch backup ({p} has no format {FORMAT!r})")
    if doc.get("version") not in READ_VERSIONS:
        raise StorageError(
            f"backup {path}: version {doc.get('version')} (this MeterWatch reads "
            f"{', '.join(map(str, READ_VERSIONS))})"
        )
    if doc["version"] == 1:  # readings only
        doc["tables"] = {"readings": {"file": READINGS_FILE, "rows": doc.get("rows")}}
    return doc


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        **manifest,
    }
    (out / MANIFEST_FILE).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def backup_tables(src: Path, manifest: dict[str, Any]) -> Iterator[tuple[Table, Path, int]]:
    """(table, file, rows) of every table a backup holds, checking that each file is there."""
    for name, info in manifest.get("tables", {}).items():
        if name not in TABLE:
            raise StorageError(f"backup {src}: unknown table {name!r} in {MANIFEST_FILE}")
        path = src / str(info.get("file", TABLE[name].file))
        rows = int(info.get("rows") or 0)
        if rows and not path.is_file():
            raise StorageError(f"backup {src}: {path.name} is missing ({rows} rows expected)")
        yield TABLE[name], path, rows


# ------------------------------------------------------------------------------- restore


def load_embedded(
    src: Path, store_path: Path, manifest: dict[str, Any], *, force: bool = False
) -> BackupResult:
    """Load every table of backup ``src`` into the embedded store, in one transaction.

    Refuses a store that already holds readings or other records unless ``force`` (which
    replaces them); checks each table's row count against the manifest.
    """
    tables = list(backup_tables(src, manifest))
    EmbeddedStore(store_path).close()  # creates the file and tables when new
    con = _connect(store_path, read_only=False, memory_limit=None)
    loaded: dict[str, int] = {}
    try:
        if not force:
            held = {
                t.name: n
                for t in TABLES
                if (n := int(con.execute(f"SELECT count(*) FROM {t.name}").fetchall()[0][0]))
            }
            if held:
                raise StorageError(
                    f"embedded store {store_path} already holds "
                    + ", ".join(f"{n} {name}" for name, n in held.items())
                    + "; restore with --force to replace them"
                )
        con.execute("BEGIN TRANSACTION")
        for t in TABLES:
            con.execute(f"DELETE FROM {t.name}")
        for t, path, rows in tables:
            if not path.is_file():
                continue
            # Backups made before a column existed lack it: it stays NULL.
            have = {
                str(r[0])
                for r in con.execute(
                    f"DESCRIBE SELECT * FROM read_parquet({quote(path)})"
                ).fetchall()
            }
            names = [c for c in t.columns if c in have and c in _table_columns(con, t.name)]
            cols = ", ".join(f"{c}::TIMESTAMP AS {c}" if c in t.times else c for c in names)
            con.execute(
                f"INSERT INTO {t.name} ({', '.join(names)}) "
                f"SELECT {cols} FROM read_parquet({quote(path)})"
            )
            (n,) = con.execute(f"SELECT count(*) FROM {t.name}").fetchall()[0]
            if n != rows:
                raise StorageError(
                    f"backup {src}: {path.name} has {n} rows, {MANIFEST_FILE} says {rows}; "
                    "nothing restored"
                )
            loaded[t.name] = int(n)
        con.execute("COMMIT")
    except duckdb.Error as exc:
        _rollback(con)
        raise StorageError(f"restore of {src} into {store_path} failed: {exc}") from exc
    except StorageError:
        _rollback(con)
        raise
    finally:
        con.close()
    return BackupResult(store_path, loaded)


def _frames(path: Path, table: Table, batch_rows: int = 50_000) -> Iterator[pd.DataFrame]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        frame = batch.to_pandas()
        for col in table.times:
            if col in frame:
                frame[col] = pd.to_datetime(frame[col], utc=True).astype(TS_DTYPE)
        yield frame


def load_store(
    src: Path, store: Any, manifest: dict[str, Any], *, force: bool = False
) -> BackupResult:
    """Write every table of backup ``src`` into a store through its write methods (InfluxDB).

    Refuses a store that holds readings unless ``force`` (InfluxDB overwrites points with the
    same series and time; others are kept). Validated intervals keep their data version and
    ``written_at``; versions are written oldest first, so each interval ends at its latest.
    """
    tables = list(backup_tables(src, manifest))
    if not force:
        held = [t.name for t in TABLES if store.has_points(t.name)]
        if held:
            raise StorageError(
                f"{store.target_name()} already holds {', '.join(held)}; restore with --force "
                "to write the backup over them"
            )
    loaded: dict[str, int] = {}
    for t, path, _rows in tables:
        if not path.is_file():
            continue
        n = 0
        for frame in _frames(path, t):
            if t.name == "readings":
                store.write_readings(frame)
            elif t.name == "validated_readings":
                frame = frame.sort_values(["data_version", "written_at"], kind="stable")
                for (version, written_at), part in frame.groupby(
                    ["data_version", "written_at"], sort=False
                ):
                    store.write_validated_readings(
                        part.drop(columns=["data_version", "written_at"]),
                        written_at,
                        version=int(version),
                    )
            elif t.name == "alert_events":
                store.write_alert_events(frame)
            else:
                store.write_collector_health(frame)
            n += len(frame)
        loaded[t.name] = n
    return BackupResult(src, loaded)


# ----------------------------------------------------- store-only entry points (bench, tests)


def backup(store_path: str | Path, out: str | Path, *, force: bool = False) -> BackupResult:
    """The embedded store file's tables (no process may have it open) to the directory ``out``.

    The full backup (alert feed and state, spools, a running service) is
    :func:`meterwatch.backup.backup`.
    """
    store_path, out = Path(store_path), Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise StorageError(f"backup target {out} exists and is not empty (use --force)")
        shutil.rmtree(out)
    rows = dump_embedded_file(store_path, out)
    first, last = time_range(out / READINGS_FILE)
    write_manifest(
        out,
        {
            "backend": "embedded",
            "source": str(store_path),
            "rows": rows.get("readings", 0),
            "first_ts": first,
            "last_ts": last,
            "tables": {name: {"file": TABLE[name].file, "rows": n} for name, n in rows.items()},
        },
    )
    return BackupResult(out, rows)


def restore(src: str | Path, store_path: str | Path, *, force: bool = False) -> BackupResult:
    """Load backup ``src`` into the embedded store file ``store_path`` (see :func:`load_embedded`)."""
    src = Path(src)
    return load_embedded(src, Path(store_path), read_manifest(src), force=force)
