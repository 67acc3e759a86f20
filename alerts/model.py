"""The alert record (contracts §3) and its fingerprint."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from meterwatch.schema import ALERT_CATEGORIES


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
    return t.strftime("%Y-%m-%dT%H:%M:%S") + "Z"


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


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
        return out

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
        )
