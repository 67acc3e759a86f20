"""The alert feed and its state in a backup: copied under the locks their writers hold, and back.

Layout inside a backup directory::

    alerts/feed.jsonl                 the alert feed (contracts §3)
    alerts/state/...                  the state directory: silences, verification counters,
                                      the service clock record (no lock files, no audit.key)
    alerts/audit.jsonl                the tamper-evident audit log (hash chain + checkpoints)
    alerts/delivery/outbox.sqlite     what was delivered to which sink (no re-sends after restore)

The feed and state files are copied while holding the feed lock, and the audit log while holding
its lock (the order every writer takes them in), so a running service or CLI never has a change
half written in the copy. Only whole lines of the JSONL files are copied. The delivery outbox is
copied with SQLite's online backup. **The audit key is never copied** (a backup should not carry
the key that proves its log untampered): keep ``$MW_AUDIT_KEY`` or the original key file.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from meterwatch.alerts.audit import CHECKPOINT, lock_path
from meterwatch.alerts.delivery.outbox import OUTBOX_FILE
from meterwatch.alerts.manager import FEED_LOCK, default_state_dir
from meterwatch.core.errors import AlertError

if TYPE_CHECKING:
    from meterwatch.alerts.config import AlertsConfig

FEED = "alerts/feed.jsonl"
STATE = "alerts/state"
AUDIT = "alerts/audit.jsonl"
OUTBOX = f"alerts/delivery/{OUTBOX_FILE}"
KEY_FILE = "audit.key"
_SKIP_SUFFIXES = (".lock", ".tmp", "-wal", "-shm")


@dataclass(frozen=True)
class AlertPaths:
    """Where the ``alerts:`` config keeps the feed, its state, the audit log and the outbox."""

    feed: Path
    state_dir: Path
    audit: Path
    outbox: Path

    @classmethod
    def from_config(cls, cfg: AlertsConfig) -> AlertPaths:
        state = cfg.state_dir or default_state_dir(cfg.feed)
        return cls(
            cfg.feed,
            state,
            cfg.audit.path or state / "audit.jsonl",
            cfg.delivery.state_dir / OUTBOX_FILE,
        )


@dataclass
class AlertCopy:
    """What was copied: backup-relative file names and a summary of the audit log."""

    files: list[str] = field(default_factory=list)
    audit: dict[str, int] = field(default_factory=dict)


@contextmanager
def _shared_lock(path: Path) -> Iterator[None]:
    """Hold a shared flock on ``path`` (writers take it exclusively); none if it cannot be opened
    (no write access there: the copy then takes whole lines only, which is still consistent per
    line)."""
    try:
        fh = path.open("a")
    except OSError:
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _copy_lines(src: Path, dst: Path) -> None:
    """Copy ``src`` up to its last newline (a line being appended is left out)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    dst.write_bytes(data[: data.rfind(b"\n") + 1])


def _state_files(state_dir: Path, audit: Path) -> Iterator[Path]:
    """Files of the state directory a backup keeps (not the key, locks, temp files, the log)."""
    if not state_dir.is_dir():
        return
    for f in sorted(state_dir.rglob("*")):
        if (
            f.is_file()
            and f.name != KEY_FILE
            and not f.name.endswith(_SKIP_SUFFIXES)
            and f.resolve() != audit.resolve()
        ):
            yield f


def audit_summary(path: Path) -> dict[str, int]:
    """Entries, signed checkpoints and the last checkpoint's seq of an audit log (no key needed)."""
    entries = checkpoints = last = 0
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            entries += 1
            try:
                e = json.loads(raw)
            except ValueError:
                continue  # audit verify names it
            if e.get("event") == CHECKPOINT:
                checkpoints += 1
                last = int(e.get("seq", 0))
    return {"entries": entries, "checkpoints": checkpoints, "last_checkpoint_seq": last}


def copy_alert_state(paths: AlertPaths, out: Path) -> AlertCopy:
    """Copy the feed, state files, audit log and delivery outbox into backup directory ``out``."""
    done = AlertCopy()
    with _shared_lock(paths.state_dir / FEED_LOCK), _shared_lock(lock_path(paths.audit)):
        if paths.feed.is_file():
            _copy_lines(paths.feed, out / FEED)
            done.files.append(FEED)
        for f in _state_files(paths.state_dir, paths.audit):
            rel = f"{STATE}/{f.relative_to(paths.state_dir).as_posix()}"
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.suffix == ".jsonl":
                _copy_lines(f, target)
            else:
                shutil.copy2(f, target)
            done.files.append(rel)
        if paths.audit.is_file():
            _copy_lines(paths.audit, out / AUDIT)
            done.files.append(AUDIT)
            done.audit = audit_summary(out / AUDIT)
    if paths.outbox.is_file():
        target = out / OUTBOX
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            src = sqlite3.connect(paths.outbox.resolve().as_uri() + "?mode=ro", uri=True)
            try:
                dst = sqlite3.connect(target)
                try:
                    src.backup(dst)  # online backup: a consistent copy while the service runs
                finally:
                    dst.close()
            finally:
                src.close()
        except sqlite3.Error as exc:
            raise AlertError(f"delivery outbox {paths.outbox}: backup failed: {exc}") from exc
        done.files.append(OUTBOX)
    return done


def _non_empty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def check_restore_target(src: Path, paths: AlertPaths, *, force: bool) -> None:
    """Refuse to restore alert files over a non-empty feed, audit log or outbox unless ``force``."""
    if force:
        return
    held = [
        str(target)
        for name, target in (
            (FEED, paths.feed),
            (AUDIT, paths.audit),
            (f"{STATE}/audit.jsonl", paths.audit),  # version 1 backups kept it in the state
            (OUTBOX, paths.outbox),
        )
        if (src / name).exists() and _non_empty(target)
    ]
    if held:
        raise AlertError(
            f"{', '.join(dict.fromkeys(held))} not empty; restore with --force to replace"
        )


def restore_alert_state(src: Path, paths: AlertPaths, *, force: bool = False) -> list[str]:
    """Copy a backup's alert files back where ``paths`` says; return what was restored.

    With ``force``, the state directory's files (except ``audit.key``) are replaced. The key is
    never in a backup: the caller says how to provide it.
    """
    check_restore_target(src, paths, force=force)
    restored: list[str] = []
    if (src / FEED).is_file():
        paths.feed.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / FEED, paths.feed)
        restored.append(FEED)
    state = src / STATE
    if force:
        for f in _state_files(paths.state_dir, paths.audit):
            f.unlink()
    if state.is_dir():
        for f in sorted(state.rglob("*")):
            if not f.is_file() or f.name == KEY_FILE:
                continue
            rel = f.relative_to(state)
            target = paths.state_dir / rel
            if rel.as_posix() == "audit.jsonl":  # version 1: the log inside the state
                target = paths.audit
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
            restored.append(f"{STATE}/{rel.as_posix()}")
    for name, target in ((AUDIT, paths.audit), (OUTBOX, paths.outbox)):
        if (src / name).is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            for stale in (target.with_name(target.name + s) for s in ("-wal", "-shm")):
                stale.unlink(missing_ok=True)
            shutil.copy2(src / name, target)
            restored.append(name)
    return restored
