"""Tamper-evident audit log: a SHA-256 hash chain of JSON lines with HMAC-signed checkpoints.

Each line is one entry ``{seq, ts, event, payload, prev_hash, hash}`` where
``hash = sha256(prev_hash + canonical_json(entry without "hash"))`` and canonical JSON has
sorted keys and no spaces. Every ``checkpoint_every`` entries, and at close, a ``checkpoint``
entry signs the chain head with HMAC-SHA256 (key from the environment variable named by
``alerts.audit.key_env``, else a generated key file with mode 0600 in the alert state
directory). A modified, inserted, reordered or deleted entry breaks the chain or a signature;
:func:`verify` names the first bad ``seq``. Entries after the last checkpoint are reported as
an unverified tail: deleting them cannot be told from them never having been written.

Several processes (the service, the ``meterwatch alerts`` CLI) may append: an exclusive
``flock`` on ``<log>.lock`` is held while the tail is re-read and the entry written.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meterwatch.alerts.model import iso
from meterwatch.core.config import secret
from meterwatch.core.errors import AuditError

if TYPE_CHECKING:
    from meterwatch.alerts.config import AlertsConfig

log = logging.getLogger(__name__)

GENESIS = "0" * 64
CHECKPOINT = "checkpoint"


def canonical(obj: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256((entry["prev_hash"] + canonical(body)).encode()).hexdigest()


def sign(key: bytes, upto_seq: int, head_hash: str) -> str:
    return hmac.new(key, f"{upto_seq}:{head_hash}".encode(), hashlib.sha256).hexdigest()


def load_key(
    key_env: str, state_dir: Path, *, create: bool = True, log_path: Path | None = None
) -> bytes:
    """The checkpoint key: ``$key_env`` if set, else ``state_dir/audit.key`` (made 0600).

    A key is generated only when ``create`` and no signed log exists at ``log_path``: a log
    restored from a backup (which leaves the key out) must be extended with the key it was
    signed with, never with a new one that could not verify it.
    """
    value = secret(key_env, "alerts.audit.key_env", optional=True)  # else the key file
    if value:
        return value.encode()
    path = state_dir / "audit.key"
    if path.exists():
        return path.read_bytes().strip()
    if not create:
        raise AuditError(f"no audit key: ${key_env} is not set and {path} does not exist")
    if log_path is not None and has_checkpoint(log_path):
        raise AuditError(
            f"{log_path} is signed with a key that is not here: ${key_env} is not set and "
            f"{path} does not exist (backups leave the key out). Set ${key_env}, or copy the "
            f"original audit.key to {path}; a new key could never verify this log"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    log.warning("audit: $%s not set; generated a signing key in %s (mode 0600)", key_env, path)
    return path.read_bytes().strip()


def lock_path(log: Path) -> Path:
    """The lock file writers of the log at ``log`` hold while they append."""
    return Path(str(log) + ".lock")


def has_checkpoint(path: Path) -> bool:
    """Whether the log at ``path`` holds a signed checkpoint (canonical JSON, so a plain scan)."""
    needle = b'"event":"' + CHECKPOINT.encode() + b'"'
    try:
        with path.open("rb") as fh:
            return any(needle in line for line in fh)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise AuditError(f"{path}: cannot read the audit log: {exc}") from exc


@dataclass
class AuditLog:
    """Append-only hash-chained log. ``append`` is thread- and process-safe."""

    path: Path
    key: bytes
    checkpoint_every: int = 100
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _offset: int = 0
    _last_seq: int = 0
    _last_hash: str = GENESIS
    _since_checkpoint: int = 0
    _last_checkpoint: dict[str, Any] | None = None
    #: where the key came from, for error messages (e.g. "$MW_AUDIT_KEY")
    key_source: str = "the configured key"

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.checkpoint_every < 1:
            raise AuditError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            cp = self._last_checkpoint
        # Refuse to extend a chain signed with another key: its later checkpoints would all
        # fail verification (typically the CLI run without the service's $MW_AUDIT_KEY).
        if cp is not None:
            p = cp["payload"]
            expected = sign(self.key, int(p.get("upto_seq", -1)), str(p.get("head_hash", "")))
            if not hmac.compare_digest(str(p.get("hmac", "")), expected):
                raise AuditError(
                    f"{self.path}: checkpoint seq {cp['seq']} was not signed with "
                    f"{self.key_source}; use the key the log was written with (or run "
                    "`meterwatch audit verify` if it may have been altered)"
                )

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock, lock_path(self.path).open("a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            try:
                self._catch_up()
                yield
            finally:
                fcntl.flock(lk, fcntl.LOCK_UN)

    def _catch_up(self) -> None:
        """Read entries other writers appended since we last looked."""
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # a torn last line is never chained onto
                self._offset += len(raw)
                try:
                    e = json.loads(raw)
                    self._last_seq, self._last_hash = int(e["seq"]), str(e["hash"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise AuditError(
                        f"{self.path}: unreadable entry at byte {self._offset}: {exc}"
                    ) from exc
                if e.get("event") == CHECKPOINT:
                    self._since_checkpoint, self._last_checkpoint = 0, e
                else:
                    self._since_checkpoint += 1

    def _entry(self, event: str, payload: dict[str, Any], buf: list[bytes]) -> dict[str, Any]:
        """Chain one entry onto the head and queue its line in ``buf`` (see :meth:`_flush`)."""
        entry: dict[str, Any] = {
            "seq": self._last_seq + 1,
            "ts": iso(datetime.now(UTC)),
            "event": event,
            "payload": payload,
            "prev_hash": self._last_hash,
        }
        entry["hash"] = entry_hash(entry)
        buf.append((canonical(entry) + "\n").encode())
        self._last_seq, self._last_hash = entry["seq"], entry["hash"]
        if event == CHECKPOINT:
            self._since_checkpoint, self._last_checkpoint = 0, entry
        else:
            self._since_checkpoint += 1
        if event != CHECKPOINT and self._since_checkpoint >= self.checkpoint_every:
            self._checkpoint(buf)
        return entry

    def _checkpoint(self, buf: list[bytes]) -> dict[str, Any]:
        return self._entry(
            CHECKPOINT,
            {
                "upto_seq": self._last_seq,
                "head_hash": self._last_hash,
                "hmac": sign(self.key, self._last_seq, self._last_hash),
            },
            buf,
        )

    def _flush(self, buf: list[bytes], state: tuple[int, str, int]) -> None:
        """Write queued lines with one fsync; on failure the head goes back to ``state``."""
        data = b"".join(buf)
        try:
            with self.path.open("ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            self._last_seq, self._last_hash, self._since_checkpoint = state
            raise AuditError(f"{self.path}: cannot append audit entry: {exc}") from exc
        self._offset += len(data)

    def append(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Append one entry (payload must be JSON-serializable); return it as written."""
        return self.append_many([(event, payload)])[0]

    def append_many(self, items: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Append several entries with one write and one fsync; return them as written."""
        for event, payload in items:
            if event == CHECKPOINT:
                raise AuditError("'checkpoint' is reserved for signed checkpoints")
            try:
                canonical(payload)
            except (TypeError, ValueError) as exc:
                raise AuditError(f"audit payload for {event!r} is not JSON: {exc}") from exc
        if not items:
            return []
        with self._locked():
            state = (self._last_seq, self._last_hash, self._since_checkpoint)
            buf: list[bytes] = []
            entries = [self._entry(event, payload, buf) for event, payload in items]
            self._flush(buf, state)
        return entries

    def checkpoint(self) -> dict[str, Any] | None:
        """Sign the current head now (no-op if the last entry is already a checkpoint)."""
        with self._locked():
            if self._since_checkpoint == 0:
                return None
            state = (self._last_seq, self._last_hash, self._since_checkpoint)
            buf: list[bytes] = []
            entry = self._checkpoint(buf)
            self._flush(buf, state)
            return entry

    def close(self) -> None:
        self.checkpoint()


def audit_log_from_config(cfg: AlertsConfig) -> AuditLog:
    """The audit log of an ``alerts:`` config section (path, key, checkpoint interval).

    Other writers (VEE estimates and edits) use this and :meth:`AuditLog.append`; with the
    same config they share the service's chain safely (the file lock serialises writers).
    """
    state_dir = cfg.state_dir or cfg.feed.parent / f"{cfg.feed.stem}-state"
    env = cfg.audit.key_env
    path = cfg.audit.path or state_dir / "audit.jsonl"
    return AuditLog(
        path,
        load_key(env, state_dir, log_path=path),
        cfg.audit.checkpoint_every,
        key_source=f"${env}" if os.environ.get(env) else f"{state_dir / 'audit.key'}",
    )


@dataclass
class VerifyResult:
    """Outcome of :func:`verify`. ``ok`` is False when any problem was found."""

    entries: int = 0
    checkpoints: int = 0
    last_checkpoint_seq: int = 0
    unverified_tail: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_seq(self) -> int | None:
        return self.problems[0][0] if self.problems else None


def verify(path: Path, key: bytes) -> VerifyResult:
    """Check the chain and every checkpoint signature; problems name the first bad seq."""
    res = VerifyResult()
    if not path.exists():
        raise AuditError(f"audit log {path} does not exist")
    prev_hash, expected_seq = GENESIS, 1
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                res.problems.append((expected_seq, f"line {lineno}: empty line"))
                continue
            try:
                e = json.loads(raw)
                seq = int(e["seq"])
                stored = str(e["hash"])
                _ = e["prev_hash"], e["event"], e["payload"]
            except (ValueError, KeyError, TypeError) as exc:
                res.problems.append((expected_seq, f"line {lineno}: unreadable entry: {exc}"))
                break
            res.entries += 1
            if seq != expected_seq:
                what = "missing (deleted?)" if seq > expected_seq else "out of order or inserted"
                res.problems.append(
                    (
                        min(seq, expected_seq),
                        f"line {lineno}: seq {seq} where {expected_seq} was expected: entry {what}",
                    )
                )
                break
            if e["prev_hash"] != prev_hash:
                res.problems.append(
                    (
                        seq,
                        f"seq {seq}: prev_hash does not match the entry before (inserted, reordered or deleted entry)",
                    )
                )
                break
            if entry_hash(e) != stored:
                res.problems.append((seq, f"seq {seq}: content does not match its hash (modified)"))
                break
            if e["event"] == CHECKPOINT:
                p = e["payload"]
                good = (
                    p.get("upto_seq") == seq - 1
                    and p.get("head_hash") == prev_hash
                    and hmac.compare_digest(str(p.get("hmac", "")), sign(key, seq - 1, prev_hash))
                )
                if not good:
                    res.problems.append(
                        (
                            res.last_checkpoint_seq + 1,
                            f"seq {seq}: checkpoint signature does not match the chain "
                            f"(entries {res.last_checkpoint_seq + 1}..{seq - 1} were rewritten, or wrong key)",
                        )
                    )
                    break
                res.checkpoints += 1
                res.last_checkpoint_seq = seq
            prev_hash, expected_seq = stored, seq + 1
    if res.ok:
        res.unverified_tail = res.entries - res.last_checkpoint_seq
    return res
