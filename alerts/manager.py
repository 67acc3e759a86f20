"""Turns detector findings into alerts and runs their lifecycle, appended to a JSONL feed.

Lifecycle: ``open`` → ``acknowledged`` (who, when, note) → ``resolved`` (by hand, or ``auto``
when the condition clears and stays clear for the flap hold) → *verified* after
``verify_after_intervals`` clean analytics runs. A new episode of a resolved but unverified
alert re-opens the same alert; after verification it is a new alert. Listener events:
``opened``, ``updated``, ``acknowledged``, ``resolved``, ``verified``, ``reopened``,
``escalated``; each alert carries ``quiet`` (silenced / inhibited) so delivery can skip it.

Persistence: the feed is an append-only log whose last line per ``id`` is the state, replayed
on start and re-read before every change (the CLI and the service may both write it; an
exclusive ``flock`` on ``<state_dir>/feed.lock`` serialises them). Silences, verification
counters and the audit log live in the state directory next to the feed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from meterwatch.alerts.audit import AuditLog, audit_log_from_config, load_key
from meterwatch.alerts.model import Alert, fingerprint, iso, parse_iso
from meterwatch.alerts.silence import Silence, SilenceStore
from meterwatch.alerts.sla import SlaPolicy, SlaRule, due_escalations, record_step
from meterwatch.core.catalogue import CATALOGUE
from meterwatch.core.errors import AlertError, AlertNotFound, AlertStateError

if TYPE_CHECKING:
    from meterwatch.alerts.config import AlertsConfig

log = logging.getLogger(__name__)

#: Called with (event, alert) for every change; see the module docstring for the events.
Listener = Callable[[str, Alert], None]


#: Events written to the feed and the audit log but not sent to listeners (no notification).
_SILENT_EVENTS = frozenset({"clearing"})


#: (event, alert) pairs, in order. Aliases: ``AlertManager.list`` shadows the builtin in the class.
Changes = list[tuple[str, Alert]]
AlertList = list[Alert]
SilenceList = list[Silence]


def _ts(value: object) -> datetime | None:
    if value is None or pd.isna(value):  # type: ignore[arg-type]
        return None
    return pd.Timestamp(value).to_pydatetime()  # type: ignore[arg-type]


def default_state_dir(feed_path: str | Path) -> Path:
    """``var/alerts.jsonl`` → ``var/alerts-state``."""
    feed = Path(feed_path)
    return feed.parent / f"{feed.stem}-state"


#: Lock file in the state directory every writer of the feed (and its state files) holds.
FEED_LOCK = "feed.lock"
#: File in the state directory where the service records its clock (see :func:`record_clock`).
CLOCK_FILE = "clock.json"
#: A running service rewrites the clock file this often [s of wall time]; a record older than
#: :data:`CLOCK_STALE_S` is taken as a service that stopped without saying so (crash, kill -9).
CLOCK_HEARTBEAT_S = 5.0
CLOCK_STALE_S = 30.0


def record_clock(
    state_dir: str | Path,
    service_now: datetime,
    *,
    speed: float,
    simulated: bool,
    running: bool,
    wall_now: datetime | None = None,
) -> None:
    """Write the service's clock next to the feed: service time at a wall instant, and speed.

    CLI actions on the feed (``meterwatch alerts ack`` ...) read it to act at the service's time
    when the service runs a simulated clock (:func:`service_time`). Written atomically.
    """
    wall = wall_now or datetime.now(UTC)
    # microseconds kept: at speed 2400 one second of wall time is 40 minutes of service time
    record = {
        "service_time": service_now.astimezone(UTC).isoformat(),
        "wall_time": wall.astimezone(UTC).isoformat(),
        "speed": float(speed),
        "simulated": bool(simulated),
        "running": bool(running),
    }
    path = Path(state_dir) / CLOCK_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def service_time(state_dir: str | Path, wall_now: datetime) -> tuple[datetime, str] | None:
    """The service's "now" at ``wall_now`` from its clock file, with a note on how it was found.

    None when there is no clock file or the service runs on the real clock. A running service's
    simulated clock is extrapolated from its last record (service time + wall elapsed × speed);
    a stopped (or silent for :data:`CLOCK_STALE_S`) one stood still at its last record.
    """
    path = Path(state_dir) / CLOCK_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        at, wall = parse_iso(record["service_time"]), parse_iso(record["wall_time"])
        speed, simulated, running = float(record["speed"]), record["simulated"], record["running"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable service clock (%s); using the wall clock", path, exc)
        return None
    if not simulated or at is None or wall is None:
        return None
    elapsed = (wall_now - wall).total_seconds()
    if running and 0 <= elapsed <= CLOCK_STALE_S:
        now = at + timedelta(seconds=elapsed * speed)
        return now, f"the running service's simulated clock ({speed:g}x, {path})"
    why = "stopped" if not running else f"silent for {elapsed:.0f} s"
    return at, f"the service's simulated clock, {why} at this time ({path})"


class AlertManager:
    """Deduplicates findings into alerts, runs their lifecycle and keeps the feed.

    Constructor defaults suit one-shot use (``meterwatch analyze``): no flap hold and no
    verification stage. The service builds it with :meth:`from_config`.
    """

    def __init__(
        self,
        feed_path: str | Path,
        auto_resolve_categories: Iterable[str] = ("equipment", "consumption"),
        listeners: Iterable[Listener] = (),
        *,
        state_dir: str | Path | None = None,
        verify_after_intervals: int = 0,
        flap_hold_s: float = 0.0,
        sla: SlaPolicy | None = None,
        meters: pd.DataFrame | Mapping[str, str | None] | None = None,
        audit: AuditLog | None = None,
        read_only: bool = False,
    ):
        """``read_only`` (``alerts list/show/report``): the feed and state are only read; no
        directory, key or audit log is created or opened, and any change raises AlertError."""
        self.feed_path = Path(feed_path)
        self.state_dir = Path(state_dir) if state_dir else default_state_dir(self.feed_path)
        self.read_only = read_only
        if not read_only:
            self.feed_path.parent.mkdir(parents=True, exist_ok=True)
            self.state_dir.mkdir(parents=True, exist_ok=True)
        self.auto_resolve = frozenset(auto_resolve_categories)
        self.listeners = list(listeners)
        self.verify_after = int(verify_after_intervals)
        self.flap_hold_s = float(flap_hold_s)
        self.sla = sla or SlaPolicy()
        self.audit: AuditLog | None = audit
        if audit is None and not read_only:
            log_path = self.state_dir / "audit.jsonl"
            self.audit = AuditLog(
                log_path, load_key("MW_AUDIT_KEY", self.state_dir, log_path=log_path)
            )
        self.silences = SilenceStore(self.state_dir / "silences.jsonl")
        self._silence_stat: tuple[int, int] | None = None
        self._customer_class: dict[str, str | None] = {}
        if meters is not None:
            self.set_meters(meters)
        self._lock = threading.RLock()
        self.alerts: dict[str, Alert] = {}
        self._latest: dict[str, Alert] = {}
        self._feed_offset = 0
        self.skipped_lines = 0
        #: fingerprints with a still-present condition seen since the last tick
        self._active_fps: set[str] = set()
        self._resolved_since_tick: set[str] = set()
        self._clean_path = self.state_dir / "verify.json"
        self._clean: dict[str, int] = self._load_clean()
        with self._locked():
            pass  # replays the feed

    @classmethod
    def from_config(
        cls,
        cfg: AlertsConfig,
        *,
        listeners: Iterable[Listener] = (),
        meters: pd.DataFrame | Mapping[str, str | None] | None = None,
        read_only: bool = False,
    ) -> AlertManager:
        """Build from ``alerts:`` config (state dir, hold, verification, SLA, audit log).

        ``read_only`` opens no audit log (and so never needs, or generates, its key)."""
        state_dir = cfg.state_dir or default_state_dir(cfg.feed)
        sla = SlaPolicy(
            acknowledge=cfg.sla.acknowledge,
            resolve=cfg.sla.resolve,
            overrides=tuple(
                SlaRule(o.severity, o.customer_class, o.acknowledge, o.resolve)
                for o in cfg.sla.overrides
            ),
            escalate_at_fraction=cfg.escalate_at_fraction,
        )
        audit = None if read_only else audit_log_from_config(cfg)
        return cls(
            cfg.feed,
            cfg.auto_resolve_categories,
            listeners,
            state_dir=state_dir,
            verify_after_intervals=cfg.verify_after_intervals,
            flap_hold_s=cfg.flap_hold,
            sla=sla,
            meters=meters,
            audit=audit,
            read_only=read_only,
        )

    def set_meters(self, meters: pd.DataFrame | Mapping[str, str | None]) -> None:
        """Customer class per meter (registry frame or mapping) for the SLA policy."""
        if isinstance(meters, pd.DataFrame):
            cls_col = meters.get("customer_class")
            values = (
                cls_col.where(cls_col.notna() & (cls_col != ""), None)
                if cls_col is not None
                else pd.Series(None, index=meters.index)
            )
            self._customer_class = dict(zip(meters["meter_id"].astype(str), values, strict=True))
        else:
            self._customer_class = {str(k): (v or None) for k, v in meters.items()}

    # -- queries ------------------------------------------------------------------------

    def get(self, alert_id: str) -> Alert:
        """The alert with this id (or a unique prefix of it); AlertNotFound otherwise."""
        with self._locked():
            return self._get(alert_id)

    def list(
        self,
        *,
        status: str | None = None,
        type: str | None = None,
        meter_id: str | None = None,
        transformer_id: str | None = None,
        since: datetime | None = None,
    ) -> AlertList:
        """Alerts matching every given filter, oldest first.

        ``status`` is ``open``, ``acknowledged``, ``resolved`` (verified included),
        ``verified``, or ``active`` (open or acknowledged); ``since`` keeps alerts changed at
        or after that instant.
        """
        with self._locked():
            out = []
            for a in self.alerts.values():
                if status is not None:
                    if status == "verified":
                        if a.verified_at is None:
                            continue
                    elif status == "active":
                        if a.status == "resolved":
                            continue
                    elif a.status != status:
                        continue
                if type is not None and a.type != type:
                    continue
                if meter_id is not None and a.meter_id != meter_id:
                    continue
                if transformer_id is not None and a.transformer_id != transformer_id:
                    continue
                if since is not None and (a.updated_at or a.starts_at) < since:
                    continue
                out.append(a)
        return sorted(out, key=lambda a: (a.starts_at, a.id))

    def open_alerts(self) -> AlertList:
        with self._locked():
            return [a for a in self.alerts.values() if a.status != "resolved"]

    def counts_by_type(self) -> Counter[str]:
        """Alerts raised so far (any status), by type."""
        with self._lock:
            return Counter(a.type for a in self.alerts.values())

    def active_silences(self, now: datetime) -> SilenceList:
        with self._locked():
            return [s for s in self.silences.silences.values() if s.active(now)]

    # -- changes ------------------------------------------------------------------------

    def process(self, findings: pd.DataFrame, now: datetime, *, streaming: bool = False) -> Changes:
        """Apply a findings frame (meterwatch.core.schema.FINDING_COLUMNS); return the changes.

        ``streaming`` findings come from one batch of fresh readings: they can open an alert,
        but for an alert already open they only mean "still there" (the batch cannot tell
        where an episode started; the scheduled run over the window can).
        """
        if findings.empty:
            return []
        rows = findings.sort_values("starts_at", kind="stable").to_dict("records")
        with self._locked():
            changes: Changes = []
            for row in rows:
                changes.extend(self._apply(row, now, streaming))
            self._commit(changes, now)
        return self._notify(changes)

    def acknowledge(self, alert_id: str, *, by: str, note: str = "", now: datetime) -> Alert:
        """Open → acknowledged; AlertStateError if it is not open."""
        with self._locked():
            alert = self._get(alert_id)
            if alert.status != "open":
                raise AlertStateError(alert.id, alert.status, "acknowledge")
            alert.status = "acknowledged"
            alert.acknowledged_at, alert.acknowledged_by, alert.ack_note = now, by, note
            alert.updated_at = now
            record_step(alert.sla, "acknowledge", now)
            changes = [("acknowledged", alert)]
            self._commit(changes, now, by=by, note=note)
        self._notify(changes)
        return alert

    def resolve(self, alert_id: str, *, by: str, note: str = "", now: datetime) -> Alert:
        """Open or acknowledged → resolved by hand; AlertStateError if already resolved."""
        with self._locked():
            alert = self._get(alert_id)
            if alert.status == "resolved":
                raise AlertStateError(alert.id, alert.status, "resolve")
            self._resolve(alert, now, by=by, note=note)
            changes = [("resolved", alert)]
            self._commit(changes, now, by=by, note=note)
        self._notify(changes)
        return alert

    def silence(
        self,
        matchers: dict[str, str],
        *,
        starts_at: datetime,
        ends_at: datetime,
        author: str,
        comment: str,
        now: datetime | None = None,
    ) -> Silence:
        """Store a silence; open alerts it covers at ``now`` (default ``starts_at``) go quiet."""
        s = Silence(
            matchers=dict(matchers),
            starts_at=starts_at,
            ends_at=ends_at,
            author=author,
            comment=comment,
        )
        at = now or starts_at
        with self._locked():
            audit = self._writable()
            self.silences.add(s)
            self._silence_stat = self._stat(self.silences.path)
            audit.append("silence.created", s.to_json())
            changes = self._refresh_quiet(at)
            self._commit(changes, at)
        self._notify(changes)
        return s

    def tick(self, now: datetime) -> Changes:
        """Once per analytics run, after :meth:`process`: flap-hold expiry, verification,
        SLA escalations and quiet (silence/inhibition) changes."""
        with self._locked():
            changes: Changes = []
            clean_changed = False
            for alert in list(self.alerts.values()):
                if alert.status != "resolved":
                    if (
                        alert.clear_since is not None
                        and (now - alert.clear_since).total_seconds() >= self.flap_hold_s
                    ):
                        self._resolve(alert, now, by="auto", ends=alert.clear_since)
                        changes.append(("resolved", alert))
                        continue
                    if due_escalations(alert, now, self.sla.escalate_at_fraction):
                        alert.updated_at = now
                        changes.append(("escalated", alert))
                elif self.verify_after > 0 and alert.verified_at is None:
                    if alert.id in self._resolved_since_tick:
                        continue
                    if alert.fingerprint in self._active_fps:
                        n = 0
                    else:
                        n = self._clean.get(alert.id, 0) + 1
                    if n >= self.verify_after:
                        alert.verified_at = now
                        alert.updated_at = now
                        self._clean.pop(alert.id, None)
                        changes.append(("verified", alert))
                    else:
                        self._clean[alert.id] = n
                    clean_changed = True
            self._active_fps.clear()
            self._resolved_since_tick.clear()
            changes.extend(self._refresh_quiet(now))
            self._commit(changes, now)
            if clean_changed:
                self._save_clean()
        return self._notify(changes)

    def close(self) -> None:
        """Sign the audit log's head (a checkpoint at close); nothing when read-only."""
        if self.audit is not None:
            self.audit.close()

    def _writable(self) -> AuditLog:
        """The audit log, for a change; AlertError when this manager only reads."""
        if self.audit is None:
            raise AlertError(f"{self.feed_path}: opened read-only; no change can be made")
        return self.audit

    # -- internals ----------------------------------------------------------------------

    def _get(self, alert_id: str) -> Alert:
        if alert_id in self.alerts:
            return self.alerts[alert_id]
        hits = [a for i, a in self.alerts.items() if alert_id and i.startswith(alert_id)]
        if len(hits) == 1:
            return hits[0]
        where = str(self.feed_path)
        if hits:
            where += f" (the prefix matches {len(hits)} alerts; give more of the id)"
        raise AlertNotFound(alert_id, where)

    def _resolve(
        self,
        alert: Alert,
        now: datetime,
        *,
        by: str,
        note: str = "",
        ends: datetime | None = None,
    ) -> None:
        alert.status = "resolved"
        alert.resolved_at, alert.resolved_by, alert.resolve_note = now, by, note
        if ends is not None:
            alert.ends_at = ends
        alert.clear_since = None
        alert.updated_at = now
        # resolving answers the alert too: the acknowledge step is done at the latest now
        if alert.sla is not None and alert.sla.get("acknowledge") is None:
            record_step(alert.sla, "acknowledge", now)
        record_step(alert.sla, "resolve", now)
        self._resolved_since_tick.add(alert.id)
        self._clean.pop(alert.id, None)

    def _apply(self, row: dict[str, object], now: datetime, streaming: bool = False) -> Changes:
        atype = str(row["type"])
        meter_id = str(row.get("meter_id") or "") or None
        transformer_id = str(row.get("transformer_id") or "") or None
        fp = fingerprint(atype, meter_id, transformer_id)
        starts = _ts(row["starts_at"])
        ends = _ts(row.get("ends_at"))
        assert starts is not None
        if ends is None:
            self._active_fps.add(fp)
        latest = self._latest.get(fp)
        summary = str(row["summary"])
        evidence = dict(row["evidence"])  # type: ignore[call-overload]

        if latest is not None and latest.status != "resolved":
            latest.last_seen = now
            new_episode = latest.last_episode is None or starts > latest.last_episode
            if streaming:
                if latest.clear_since is not None and ends is None and new_episode:
                    latest.clear_since = None  # back within the flap hold: stays open
                    latest.updated_at = now
                    return [("updated", latest)]
                return []
            events: list[str] = []
            if new_episode:
                latest.last_episode = starts
                latest.count += 1
                latest.summary, latest.evidence = summary, evidence
                latest.clear_since = None
                events.append("updated")
            if (
                ends is not None
                and latest.category in self.auto_resolve
                and latest.last_episode is not None
                and starts >= latest.last_episode
            ):
                latest.summary, latest.evidence = summary, evidence
                if (now - ends).total_seconds() >= self.flap_hold_s:
                    self._resolve(latest, now, by="auto", ends=ends)
                    events = ["resolved"]
                elif latest.clear_since != ends:
                    latest.clear_since = ends
                    events = events or ["clearing"]
            if events:
                latest.updated_at = now
            return [(e, latest) for e in events[-1:]]

        if latest is not None:  # resolved
            known = latest.last_episode is not None and starts <= latest.last_episode
            if known or (latest.ends_at is not None and starts <= latest.ends_at):
                return []  # an episode already reported
            if self.verify_after > 0 and latest.verified_at is None:
                return self._reopen(latest, starts, ends, summary, evidence, now)

        alert = Alert(
            type=atype,
            severity=str(row["severity"]),
            meter_id=meter_id,
            transformer_id=transformer_id,
            starts_at=starts,
            summary=summary,
            evidence=evidence,
            last_seen=now,
            updated_at=now,
            opened_at=now,
            last_episode=starts,
        )
        alert.sla = self.sla.start(alert, self._customer_class.get(meter_id or ""), now)
        self.alerts[alert.id] = alert
        self._latest[fp] = alert
        changes = [("opened", alert)]
        if ends is not None and alert.category in self.auto_resolve:
            if (now - ends).total_seconds() >= self.flap_hold_s:
                # one "opened" line whose status is already resolved: the episode is over
                self._resolve(alert, now, by="auto", ends=ends)
            else:
                alert.clear_since = ends
        return changes

    def _reopen(
        self,
        alert: Alert,
        starts: datetime,
        ends: datetime | None,
        summary: str,
        evidence: dict[str, Any],
        now: datetime,
    ) -> Changes:
        alert.status = "open"
        alert.ends_at = None
        alert.resolved_at = alert.resolved_by = alert.resolve_note = None
        alert.reopened += 1
        alert.count += 1
        alert.last_episode = starts
        alert.summary, alert.evidence = summary, evidence
        alert.last_seen = alert.updated_at = now
        alert.clear_since = (
            ends if ends is not None and alert.category in self.auto_resolve else None
        )
        if alert.sla is not None:
            alert.sla["resolve"] = None
        self._clean.pop(alert.id, None)
        return [("reopened", alert)]

    def _quiet(self, alert: Alert, now: datetime) -> tuple[dict[str, Any] | None, str | None]:
        if alert.meter_id and alert.transformer_id:
            # Area-level alerts the catalogue says inhibit this type (an area outage: voltage
            # loss and offline meters of that area are its consequence, not new pages).
            for inhibitor in CATALOGUE[alert.type].inhibited_by:
                area = self._latest.get(fingerprint(inhibitor, None, alert.transformer_id))
                if area is not None and area.status != "resolved":
                    return {"reason": "inhibited", "inhibited_by": area.id}, area.id
        s = self.silences.silencing(alert, now)
        if s is not None:
            return {"reason": "silenced", "silence_id": s.id, "until": iso(s.ends_at)}, None
        return None, None

    def _refresh_quiet(self, now: datetime) -> Changes:
        changes = []
        for alert in self.alerts.values():
            if alert.status == "resolved":
                continue
            quiet, inhibitor = self._quiet(alert, now)
            if quiet != alert.quiet:
                alert.quiet, alert.inhibited_by = quiet, inhibitor
                alert.updated_at = now
                changes.append(("updated", alert))
        return changes

    def _commit(self, changes: Changes, now: datetime, *, by: str = "", note: str = "") -> None:
        """Set quiet state, then append to the feed and the audit log (under the lock)."""
        if not changes:
            return
        audit = self._writable()
        for _, alert in changes:
            # A resolved alert keeps the quiet state it had while open, so that an alert that
            # was notified also gets its resolution notified (and a quiet one stays quiet).
            if alert.status != "resolved" or alert.opened_at == now:
                alert.quiet, alert.inhibited_by = self._quiet(alert, now)
        lines = [json.dumps(a.to_json(), ensure_ascii=False) + "\n" for _, a in changes]
        data = "".join(lines).encode()
        with self.feed_path.open("ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self._feed_offset += len(data)
        items: list[tuple[str, dict[str, Any]]] = []
        for event, alert in changes:
            payload: dict[str, Any] = {"alert": alert.to_json()}
            if by:
                payload["by"] = by
            if note:
                payload["note"] = note
            items.append((f"alert.{event}", payload))
        audit.append_many(items)

    def _notify(self, changes: Changes) -> Changes:
        visible = [(e, a) for e, a in changes if e not in _SILENT_EVENTS]
        for event, alert in visible:
            for listener in self.listeners:
                listener(event, alert)
        return visible

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Thread lock + cross-process file lock, with the feed re-read up to date.

        Read-only: a shared lock when the lock file can be opened (a reader without write
        access to the state directory reads without it: the feed is append-only and only
        whole lines are read)."""
        with self._lock, ExitStack() as stack:
            try:
                lk = stack.enter_context((self.state_dir / FEED_LOCK).open("a"))
            except OSError:
                if not self.read_only:
                    raise
                lk = None
            if lk is not None:
                fcntl.flock(lk, fcntl.LOCK_SH if self.read_only else fcntl.LOCK_EX)
            try:
                self._sync()
                yield
            finally:
                if lk is not None:
                    fcntl.flock(lk, fcntl.LOCK_UN)

    @staticmethod
    def _stat(path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return (st.st_size, st.st_mtime_ns)

    def _sync(self) -> None:
        """Apply feed lines (and silences) written by other processes since the last look."""
        st = self._stat(self.silences.path)
        if st != self._silence_stat:
            self.silences.reload()
            self._silence_stat = st
        if not self.feed_path.exists():
            return
        with self.feed_path.open("rb") as fh:
            fh.seek(self._feed_offset)
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # a line being written; read it next time
                start = self._feed_offset
                self._feed_offset += len(raw)
                if not raw.strip():
                    continue
                try:
                    alert = Alert.from_json(json.loads(raw))
                except (ValueError, KeyError, TypeError) as exc:
                    self.skipped_lines += 1
                    log.warning(
                        "%s: unreadable alert line at byte %d skipped (%d so far): %s",
                        self.feed_path,
                        start,
                        self.skipped_lines,
                        exc,
                    )
                    continue
                self.alerts[alert.id] = alert
                cur = self._latest.get(alert.fingerprint)
                if cur is None or cur.id == alert.id or _age_key(alert) >= _age_key(cur):
                    self._latest[alert.fingerprint] = alert

    def _load_clean(self) -> dict[str, int]:
        if not self._clean_path.exists():
            return {}
        try:
            data = json.loads(self._clean_path.read_text(encoding="utf-8"))
            return {str(k): int(v) for k, v in data["clean_intervals"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning(
                "%s unreadable (%s): verification counters restart at 0", self._clean_path, exc
            )
            return {}

    def _save_clean(self) -> None:
        tmp = self._clean_path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump({"clean_intervals": self._clean}, fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._clean_path)


def _age_key(alert: Alert) -> tuple[datetime, datetime]:
    return (alert.opened_at or alert.starts_at, alert.starts_at)
