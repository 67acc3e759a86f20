"""Backup of the embedded store (and the alert feed and state) to Parquet, and restore.

A backup is a **directory** ``F``::

    F/manifest.json        format, version, created_at, rows, first/last ts, what was copied
    F/readings.parquet     every reading, one row per (meter_id, ts), sorted; zstd; ts as UTC
    F/alerts/feed.jsonl    the alert feed (contracts §3), when it exists
    F/alerts/state/...     the alert state directory (silences, audit log ...), when it exists

The readings are streamed by DuckDB (``COPY ... TO ... (FORMAT PARQUET)``), so a store of 10^8
readings is backed up without loading it into memory. ``ts`` is written as a UTC timestamp
(Parquet ``isAdjustedToUTC``), so pandas/pyarrow read it back as UTC.

Not copied: lock files, and ``audit.key`` (the audit log's signing key: a backup should not
carry the key that proves the log untampered; keep ``MW_AUDIT_KEY`` or the original key file).

DuckDB allows one process to open a store file for writing: stop the service (or let it finish)
before ``backup`` or ``restore``; otherwise the error says the file is locked.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from meterwatch.core.errors import StorageError
from meterwatch.core.schema import READING_COLUMNS, READING_TIME_COLUMNS
from meterwatch.storage.embedded import EmbeddedStore

FORMAT = "meterwatch-backup"
VERSION = 1
READINGS_FILE = "readings.parquet"
MANIFEST_FILE = "manifest.json"
_SKIP_STATE = {"audit.key"}
_SKIP_SUFFIXES = (".lock",)


@dataclass(frozen=True)
class BackupResult:
    """What a backup or restore copied."""

    path: Path
    rows: int
    alert_files: int


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        con = duckdb.connect(str(path), read_only=read_only)
        con.execute("SET TimeZone = 'UTC'")
        return con
    except duckdb.Error as exc:
        raise StorageError(
            f"cannot open embedded store {path}: {exc} (stop the service using it first)"
        ) from exc


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass  # no transaction open


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _copy_state(src: Path, dst: Path) -> int:
    """Copy a directory tree without lock files and the audit key; return files copied."""
    copied = 0
    for f in sorted(src.rglob("*")):
        if not f.is_file() or f.name in _SKIP_STATE or f.name.endswith(_SKIP_SUFFIXES):
            continue
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
        copied += 1
    return copied


def backup(
    store_path: str | Path,
    out: str | Path,
    *,
    alert_feed: str | Path | None = None,
    alert_state_dir: str | Path | None = None,
    force: bool = False,
) -> BackupResult:
    """Write the store's readings (and alert feed/state, if present) to the directory ``out``."""
    store_path, out = Path(store_path), Path(out)
    if not store_path.exists():
        raise StorageError(f"embedded store {store_path} does not exist: nothing to back up")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise StorageError(f"backup target {out} exists and is not empty (use --force)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    con = _connect(store_path, read_only=True)
    try:
        times = _time_columns(con, "readings")
        cols = ", ".join(
            f"{c}::TIMESTAMPTZ AS {c}" if c in ("ts", *times) else c
            for c in (*READING_COLUMNS, *times)
        )
        con.execute(
            f"COPY (SELECT DISTINCT ON (meter_id, ts) {cols} FROM readings ORDER BY meter_id, ts)"
            f" TO {_quote(out / READINGS_FILE)} (FORMAT PARQUET, COMPRESSION ZSTD)"
        )
        row = con.execute(
            f"SELECT count(*), min(ts)::VARCHAR, max(ts)::VARCHAR "
            f"FROM read_parquet({_quote(out / READINGS_FILE)})"
        ).fetchone()
    except duckdb.Error as exc:
        raise StorageError(f"backup of {store_path} to {out} failed: {exc}") from exc
    finally:
        con.close()
    assert row is not None
    alert_files = 0
    copied: list[str] = []
    if alert_feed is not None and Path(alert_feed).is_file():
        (out / "alerts").mkdir(exist_ok=True)
        shutil.copy2(alert_feed, out / "alerts" / "feed.jsonl")
        alert_files += 1
        copied.append("alerts/feed.jsonl")
    if alert_state_dir is not None and Path(alert_state_dir).is_dir():
        n = _copy_state(Path(alert_state_dir), out / "alerts" / "state")
        alert_files += n
        if n:
            copied.append("alerts/state/")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "source": str(store_path),
        "rows": int(row[0]),
        "first_ts": row[1],
        "last_ts": row[2],
        "files": [READINGS_FILE, *copied],
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return BackupResult(out, int(row[0]), alert_files)


def read_manifest(path: str | Path) -> dict[str, object]:
    """The manifest of backup ``path``; :class:`StorageError` when it is not a backup."""
    p = Path(path) / MANIFEST_FILE
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StorageError(f"{path} is not a MeterWatch backup: {p}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StorageError(f"{path} is not a MeterWatch backup ({p} has no format {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise StorageError(f"backup {path}: version {doc.get('version')} (expected {VERSION})")
    return doc


def restore(
    src: str | Path,
    store_path: str | Path,
    *,
    alert_feed: str | Path | None = None,
    alert_state_dir: str | Path | None = None,
    force: bool = False,
) -> BackupResult:
    """Load backup ``src`` into the embedded store (and alert files); refuse to overwrite data.

    A store with readings, or an existing non-empty alert feed, is replaced only with ``force``.
    """
    src, store_path = Path(src), Path(store_path)
    manifest = read_manifest(src)
    parquet = src / READINGS_FILE
    if not parquet.is_file():
        raise StorageError(f"backup {src}: {READINGS_FILE} is missing")
    feed_src = src / "alerts" / "feed.jsonl"
    if (
        alert_feed is not None
        and feed_src.is_file()
        and Path(alert_feed).is_file()
        and Path(alert_feed).stat().st_size > 0
        and not force
    ):
        raise StorageError(
            f"alert feed {alert_feed} is not empty; restore with --force to replace it"
        )
    EmbeddedStore(store_path).close()  # creates the file and table when new
    con = _connect(store_path, read_only=False)
    try:
        existing = con.execute("SELECT count(*) FROM readings").fetchone()
        assert existing is not None
        if existing[0] and not force:
            raise StorageError(
                f"embedded store {store_path} already holds {existing[0]} readings; "
                "restore with --force to replace them"
            )
        # Backups made before collected_at/device_ts existed lack them: those stay NULL.
        src_cols = {
            str(r[0])
            for r in con.execute(
                f"DESCRIBE SELECT * FROM read_parquet({_quote(parquet)})"
            ).fetchall()
        }
        names = [*READING_COLUMNS, *(c for c in READING_TIME_COLUMNS if c in src_cols)]
        cols = ", ".join(
            f"{c}::TIMESTAMP AS {c}" if c == "ts" or c in READING_TIME_COLUMNS else c for c in names
        )
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM readings")
        con.execute(
            f"INSERT INTO readings ({', '.join(names)}) "
            f"SELECT {cols} FROM read_parquet({_quote(parquet)})"
        )
        row = con.execute("SELECT count(*) FROM readings").fetchone()
        assert row is not None
        if row[0] != manifest.get("rows"):
            raise StorageError(
                f"backup {src}: {READINGS_FILE} has {row[0]} rows, manifest says "
                f"{manifest.get('rows')}; nothing restored"
            )
        con.execute("COMMIT")
    except duckdb.Error as exc:
        _rollback(con)
        raise StorageError(f"restore of {src} into {store_path} failed: {exc}") from exc
    except StorageError:
        _rollback(con)
        raise
    finally:
        con.close()
    alert_files = 0
    if alert_feed is not None and feed_src.is_file():
        Path(alert_feed).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(feed_src, alert_feed)
        alert_files += 1
    state_src = src / "alerts" / "state"
    if alert_state_dir is not None and state_src.is_dir():
        alert_files += _copy_state(state_src, Path(alert_state_dir))
    return BackupResult(store_path, int(row[0]), alert_files)


def _time_columns(con: duckdb.DuckDBPyConnection, table: str) -> tuple[str, ...]:
    """The optional reading timestamps ``table`` has (a file from before them has none)."""
    have = {
        str(r[0])
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]
        ).fetchall()
    }
    return tuple(c for c in READING_TIME_COLUMNS if c in have)
