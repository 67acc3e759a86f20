"""Silences: label matchers with a time window, an author and a comment; stored as JSON lines."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from meterwatch.alerts.model import Alert, iso, parse_iso
from meterwatch.core.errors import AlertError

#: Alert labels a silence may match on (equality matchers, all must hold).
MATCHER_LABELS: tuple[str, ...] = ("type", "meter_id", "transformer_id", "severity", "category")


@dataclass
class Silence:
    """Mutes matching alerts between ``starts_at`` and ``ends_at`` (end exclusive)."""

    matchers: dict[str, str]
    starts_at: datetime
    ends_at: datetime
    author: str
    comment: str
    id: str = field(default_factory=lambda: "s-" + uuid.uuid4().hex[:10])

    def __post_init__(self) -> None:
        if not self.matchers:
            raise AlertError("a silence needs at least one matcher (label=value)")
        unknown = sorted(set(self.matchers) - set(MATCHER_LABELS))
        if unknown:
            raise AlertError(
                f"silence matcher label(s) {', '.join(unknown)} not allowed; "
                f"use {', '.join(MATCHER_LABELS)}"
            )
        if self.ends_at <= self.starts_at:
            raise AlertError(
                f"silence ends_at {iso(self.ends_at)} is not after starts_at {iso(self.starts_at)}"
            )
        if not self.author.strip():
            raise AlertError("a silence needs an author")
        if not self.comment.strip():
            raise AlertError("a silence needs a comment saying why")

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, alert: Alert) -> bool:
        return all(str(getattr(alert, k) or "") == v for k, v in self.matchers.items())

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "matchers": dict(self.matchers),
            "starts_at": iso(self.starts_at),
            "ends_at": iso(self.ends_at),
            "author": self.author,
            "comment": self.comment,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Silence:
        starts, ends = parse_iso(d["starts_at"]), parse_iso(d["ends_at"])
        assert starts is not None and ends is not None
        return cls(
            id=d["id"],
            matchers=dict(d["matchers"]),
            starts_at=starts,
            ends_at=ends,
            author=d["author"],
            comment=d["comment"],
        )


def parse_matchers(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["type=voltage_loss", "transformer_id=TA01"]`` → dict; errors name the bad item."""
    out: dict[str, str] = {}
    for item in items:
        label, sep, value = item.partition("=")
        if not sep or not label or not value:
            raise AlertError(f"matcher {item!r} is not label=value")
        out[label.strip()] = value.strip()
    return out


class SilenceStore:
    """Silences kept as JSON lines (append-only; the last line of an id wins)."""

    def __init__(self, path: Path):
        self.path = path
        self.silences: dict[str, Silence] = {}
        self.skipped = 0
        self.reload()

    def reload(self) -> None:
        self.silences.clear()
        if not self.path.exists():
            return
        for lineno, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                s = Silence.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError, AlertError) as exc:
                self.skipped += 1
                raise AlertError(f"{self.path}:{lineno}: unreadable silence: {exc}") from exc
            self.silences[s.id] = s

    def add(self, silence: Silence) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(silence.to_json(), ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.silences[silence.id] = silence

    def silencing(self, alert: Alert, now: datetime) -> Silence | None:
        """The first active silence matching the alert, or None."""
        for s in self.silences.values():
            if s.active(now) and s.matches(alert):
                return s
        return None
