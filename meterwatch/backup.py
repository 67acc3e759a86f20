"""`meterwatch backup` and `meterwatch restore`: everything the service keeps, to a directory and back.

A backup directory (layout and formats in docs/storage-schema.md, "Backup and restore")::

    manifest.json              format, version 2, backend, how the snapshot was taken, rows per
                               table, readings' first/last ts, files, audit log summary
    readings.parquet           \
    validated_readings.parquet  | the store's four tables (storage/backup.py), one snapshot,
    alert_events.parquet        | plus what still waited in the spools
    collector_health.parquet   /
    alerts/...                 feed, state, audit log, delivery outbox (alerts/backup.py)

How the store snapshot is taken:

* embedded store, service running: over the service's control socket (meterwatch/control.py),
  one DuckDB read transaction on the service's own store; the service keeps collecting;
* embedded store, no service: a read-only connection to the file;
* InfluxDB: InfluxQL reads (InfluxDB is a server: no lock; it keeps only the latest data version
  of each validated interval).

In every case the spools are read first (readings waiting for InfluxDB, or for the embedded store
with ``storage.spool.enabled``; alert events waiting in their outbox), then the store: a batch
drained in between is in the store read, and duplicates collapse on each table's key. So nothing
acknowledged before the backup started is missing from it.

The audit key is not in a backup. ``restore`` says where the restored log's key must come from
and, when it is there, verifies the log.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from meterwatch.alerts.audit import load_key, verify
from meterwatch.alerts.backup import (
    AlertPaths,
    check_restore_target,
    copy_alert_state,
    restore_alert_state,
)
from meterwatch.config import Config
from meterwatch.control import service_listening, snapshot, socket_path
from meterwatch.core.errors import AuditError, StorageError
from meterwatch.storage.backup import (
    READINGS_FILE,
    TABLES,
    dump_embedded_file,
    dump_store,
    load_embedded,
    load_store,
    merge_pending,
    read_manifest,
    time_range,
    write_manifest,
)
from meterwatch.storage.event_sink import OUTBOX_FILE as EVENTS_OUTBOX
from meterwatch.storage.factory import build_store
from meterwatch.storage.measurements import normalize_alert_events
from meterwatch.storage.spool import SPOOL_FILE, read_pending

STAGING = ".staging"


@dataclass
class Report:
    """What a backup or restore did, for the command's output and for tests."""

    path: Path
    tables: dict[str, int]
    alert_files: list[str]
    how: str = ""
    pending: dict[str, int] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _pending(cfg: Config) -> dict[str, pd.DataFrame]:
    """Rows still waiting in the spools (read before the store: see the module docstring)."""
    out: dict[str, pd.DataFrame] = {}
    if cfg.storage.uses_spool:
        frame = read_pending(cfg.storage.spool.path / SPOOL_FILE)
        if frame is not None:
            out["readings"] = frame
    events = read_pending(cfg.storage.alert_events_dir / EVENTS_OUTBOX, normalize_alert_events)
    if events is not None:
        out["alert_events"] = events
    return out


def _registry(cfg: Config) -> pd.DataFrame | None:
    """The meter registry when its file is there (InfluxDB tags on restore), else None."""
    from meterwatch.core.registry import load_registry

    path = cfg.registry.path or cfg.simulator.registry_out
    return load_registry(path).meters if path is not None and Path(path).is_file() else None


def backup(cfg: Config, out: str | Path, *, force: bool = False) -> Report:
    """Write everything the service keeps under ``cfg`` to the directory ``out``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise StorageError(f"backup target {out} exists and is not empty (use --force)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / STAGING
    try:
        pending = _pending(cfg)
        if cfg.storage.backend == "embedded":
            taken = snapshot(socket_path(cfg.storage))
            if taken is not None:
                snap_dir, _ = taken
                how = "the running service's store (one DuckDB transaction)"
            else:
                dump_embedded_file(cfg.storage.path, staging, cfg.storage.memory_limit)
                snap_dir, how = staging, "the store file (no service running)"
        else:
            store = build_store(cfg.storage)
            try:
                dump_store(store, staging)
            finally:
                store.close()
            snap_dir = staging
            how = "InfluxDB (latest data version of each validated interval)"
        tables: dict[str, int] = {}
        try:
            for t in TABLES:
                snap, final = snap_dir / t.file, out / t.file
                extra = pending.get(t.name)
                if extra is not None:
                    tables[t.name] = merge_pending(t, snap, extra, final)
                elif snap.exists():
                    shutil.move(snap, final)
                    tables[t.name] = _rows(final)
        finally:
            shutil.rmtree(snap_dir, ignore_errors=True)
        copied = copy_alert_state(AlertPaths.from_config(cfg.alerts), out)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # never leave a half backup that looks whole
        raise
    first, last = time_range(out / READINGS_FILE)
    write_manifest(
        out,
        {
            "backend": cfg.storage.backend,
            "source": str(cfg.storage.path)
            if cfg.storage.backend == "embedded"
            else str(cfg.storage.influx.url if cfg.storage.influx else ""),
            "snapshot": how,
            "rows": tables.get("readings", 0),
            "first_ts": first,
            "last_ts": last,
            "tables": {
                t.name: {"file": t.file, "rows": tables[t.name]} for t in TABLES if t.name in tables
            },
            "pending_merged": {k: len(v) for k, v in pending.items()},
            "files": [t.file for t in TABLES if t.name in tables] + copied.files,
            "audit": copied.audit,
            "audit_key": "not included: restore needs $"
            + cfg.alerts.audit.key_env
            + " or the original audit.key",
        },
    )
    return Report(
        out,
        tables,
        copied.files,
        how=how,
        pending={k: len(v) for k, v in pending.items()},
        audit=copied.audit,
    )


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def restore(cfg: Config, src: str | Path, *, force: bool = False) -> Report:
    """Load backup ``src`` into the store and alert files ``cfg`` names (service stopped)."""
    src = Path(src)
    manifest = read_manifest(src)
    paths = AlertPaths.from_config(cfg.alerts)
    if cfg.storage.backend == "embedded" and service_listening(socket_path(cfg.storage)):
        raise StorageError(
            f"a service is running on {cfg.storage.path}: stop it before restoring into it"
        )
    check_restore_target(src, paths, force=force)  # before anything is written
    if cfg.storage.backend == "embedded":
        result = load_embedded(src, cfg.storage.path, manifest, force=force)
        where = str(cfg.storage.path)
    else:
        store: Any = build_store(cfg.storage, _registry(cfg))
        try:
            result = load_store(src, store, manifest, force=force)
            where = store.target_name()
        finally:
            store.close()
    files = restore_alert_state(src, paths, force=force)
    report = Report(Path(where), result.tables, files)
    if paths.audit.is_file():
        report.audit, note = _check_audit(cfg, paths)
        if note:
            report.notes.append(note)
    return report


def _check_audit(cfg: Config, paths: AlertPaths) -> tuple[dict[str, Any], str]:
    """Verify the restored audit log when its key is here; else say how to provide it."""
    env = cfg.alerts.audit.key_env
    try:
        key = load_key(env, paths.state_dir, create=False)
    except AuditError:
        return {"verified": False}, (
            f"the audit log {paths.audit} was restored without its key (backups leave it "
            f"out): set ${env}, or copy the original audit.key to "
            f"{paths.state_dir / 'audit.key'}, before the service or an alert action writes "
            "to it; `meterwatch audit verify` then checks it"
        )
    result = verify(paths.audit, key)
    info = {
        "verified": result.ok,
        "entries": result.entries,
        "checkpoints": result.checkpoints,
        "unverified_tail": result.unverified_tail,
    }
    if not result.ok:
        seq, msg = result.problems[0]
        return info, (
            f"the restored audit log {paths.audit} does not verify with the key found here "
            f"(first bad seq {seq}: {msg}); is it the key the log was written with?"
        )
    return info, ""
