"""The alert record (contracts §3) and its fingerprint."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from meterwatch.core.catalogue import ALERT_CATEGORIES


def fingerprint(alert_type: str, meter_id: str | None, transformer_id: str | None) -> str:
    """Hash of the identifying labels: type and meter (or transformer for area-level alerts)."""
    labels: dict[str, str] = {"type": alert_type}
    if meter_id:
        labels["meter_id"] = meter_id
    elif transformer_id:
        labels["transformer_id"] = transformer_id
    raw = json.dumps(labels, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def iso(t: datetime | None) -> str | None:
    """UTC ISO 8601 with a ``Z`` (contracts: text files use Z), or None."""
    if t is None:
        return None
    if t.tzinfo is not None:
        t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + "Z"


def parse_iso(text: str | None) -> datetime | None:
    """Inverse of :func:`iso` (also accepts offsets); None for empty."""
    if not text:
        return None
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


@dataclass
class Alert:
    """One alert occurrence. ``count`` is how many detection episodes it has absorbed."""

    type: str
    severity: str
    meter_id: str | None
    transformer_id: str | None
    starts_at: datetime
    summary: str
    evidence: dict[str, Any]
    status: str = "open"
    ends_at: datetime | None = None
    last_seen: datetime | None = None
    updated_at: datetime | None = None
    count: int = 1
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    fingerprint: str = ""
    category: str = ""
    #: When the alert was raised (service time); SLA deadlines count from here.
    opened_at: datetime | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    ack_note: str | None = None
    resolved_at: datetime | None = None
    #: Who resolved it; ``"auto"`` when the condition cleared by itself.
    resolved_by: str | None = None
    resolve_note: str | None = None
    #: Set once the condition stayed away for ``verify_after_intervals`` analytics runs.
    verified_at: datetime | None = None
    reopened: int = 0
    #: Data time at which the condition was seen to clear; the alert stays open during the
    #: flap hold and resolves only if the condition has not come back by then.
    clear_since: datetime | None = None
    #: Start of the latest detection episode absorbed (findings starting earlier are known).
    last_episode: datetime | None = None
    #: Why the alert is not notified: {"reason": "silenced", "silence_id": ...} or
    #: {"reason": "inhibited", "inhibited_by": <outage alert id>}; None when it is notified.
    quiet: dict[str, Any] | None = None
    inhibited_by: str | None = None
    #: Service-level deadlines and outcomes (see alerts/sla.py); None without an SLA policy.
    sla: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.type not in ALERT_CATEGORIES:
            raise ValueError(f"unknown alert type {self.type!r}")
        self.category = self.category or ALERT_CATEGORIES[self.type]
        self.fingerprint = self.fingerprint or fingerprint(
            self.type, self.meter_id, self.transformer_id
        )

    def to_json(self) -> dict[str, Any]:
        """The feed line: contract fields first, then bookkeeping fields."""
        d = asdict(self)
        out: dict[str, Any] = {
            k: d[k]
            for k in (
                "id",
                "fingerprint",
                "type",
                "category",
                "severity",
                "meter_id",
                "transformer_id",
                "status",
            )
        }
        out["starts_at"] = iso(self.starts_at)
        out["ends_at"] = iso(self.ends_at)
        out["summary"] = self.summary
        out["evidence"] = self.evidence
        out["count"] = self.count
        out["last_seen"] = iso(self.last_seen)
        out["updated_at"] = iso(self.updated_at)
        out["opened_at"] = iso(self.opened_at)
        out["acknowledged_at"] = iso(self.acknowledged_at)
        out["acknowledged_by"] = self.acknowledged_by
        out["ack_note"] = self.ack_note
        out["resolved_at"] = iso(self.resolved_at)
        out["resolved_by"] = self.resolved_by
        out["resolve_note"] = self.resolve_note
        out["verified_at"] = iso(self.verified_at)
        out["reopened"] = self.reopened
        out["clear_since"] = iso(self.clear_since)
        out["last_episode"] = iso(self.last_episode)
        out["quiet"] = self.quiet
        out["inhibited_by"] = self.inhibited_by
        out["sla"] = self.sla
        return out

    @property
    def verified(self) -> bool:
        return self.verified_at is not None

    @property
    def lifecycle(self) -> str:
        """Status including the derived ``verified`` stage (contracts §3 keeps three statuses)."""
        return "verified" if self.verified_at is not None else self.status

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Alert:
        starts = parse_iso(d["starts_at"])
        assert starts is not None
        return cls(
            id=d["id"],
            fingerprint=d["fingerprint"],
            type=d["type"],
            category=d["category"],
            severity=d["severity"],
            meter_id=d.get("meter_id"),
            transformer_id=d.get("transformer_id"),
            status=d["status"],
            starts_at=starts,
            ends_at=parse_iso(d.get("ends_at")),
            summary=d["summary"],
            evidence=d.get("evidence") or {},
            count=int(d.get("count", 1)),
            last_seen=parse_iso(d.get("last_seen")),
            updated_at=parse_iso(d.get("updated_at")),
            opened_at=parse_iso(d.get("opened_at")),
            acknowledged_at=parse_iso(d.get("acknowledged_at")),
            acknowledged_by=d.get("acknowledged_by"),
            ack_note=d.get("ack_note"),
            resolved_at=parse_iso(d.get("resolved_at")),
            resolved_by=d.get("resolved_by"),
            resolve_note=d.get("resolve_note"),
            verified_at=parse_iso(d.get("verified_at")),
            reopened=int(d.get("reopened", 0)),
            clear_since=parse_iso(d.get("clear_since")),
            last_episode=parse_iso(d.get("last_episode")) or starts,
            quiet=d.get("quiet"),
            inhibited_by=d.get("inhibited_by"),
            sla=d.get("sla"),
        )
