"""Service-level deadlines per severity and customer class, and the escalations they raise.

An alert gets two deadlines when it opens: *acknowledge* (default 2 h) and *resolve* (the
action plan, default 24 h) — the utility service standard of answering a customer issue and
following it up. An override applies to a severity, a customer class or both; the most specific
matching override wins (both keys beat one key; among equals the later one). Escalations fire
once per alert and deadline: ``approaching`` at ``escalate_at_fraction`` of the allowed time
and ``missed`` when the deadline passes without the step done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from meterwatch.alerts.model import Alert, iso, parse_iso

DEADLINES: tuple[str, ...] = ("acknowledge", "resolve")


@dataclass(frozen=True)
class SlaRule:
    """Allowed time [s] for each step; None keeps the value of a less specific rule."""

    severity: str | None = None
    customer_class: str | None = None
    acknowledge: float | None = None
    resolve: float | None = None

    @property
    def specificity(self) -> int:
        return (self.severity is not None) + (self.customer_class is not None)


@dataclass(frozen=True)
class SlaPolicy:
    """Default allowed times [s] and overrides. Defaults: acknowledge 2 h, resolve 24 h."""

    acknowledge: float = 2 * 3600.0
    resolve: float = 24 * 3600.0
    overrides: tuple[SlaRule, ...] = field(default_factory=tuple)
    escalate_at_fraction: float = 0.8

    def allowed(self, severity: str, customer_class: str | None) -> dict[str, float]:
        """Allowed seconds per deadline for an alert of this severity and customer class."""
        out = {"acknowledge": self.acknowledge, "resolve": self.resolve}
        rules = [
            (r.specificity, i, r)
            for i, r in enumerate(self.overrides)
            if (r.severity is None or r.severity == severity)
            and (r.customer_class is None or r.customer_class == customer_class)
        ]
        for _, _, rule in sorted(rules, key=lambda t: (t[0], t[1])):
            for k in DEADLINES:
                v = getattr(rule, k)
                if v is not None:
                    out[k] = float(v)
        return out

    def start(self, alert: Alert, customer_class: str | None, now: datetime) -> dict[str, Any]:
        """The ``sla`` object of a newly opened alert."""
        allowed = self.allowed(alert.severity, customer_class)
        return {
            "customer_class": customer_class,
            "opened_at": iso(now),
            "acknowledge_due": iso(now + timedelta(seconds=allowed["acknowledge"])),
            "resolve_due": iso(now + timedelta(seconds=allowed["resolve"])),
            "acknowledge": None,  # "met" / "missed" once decided
            "resolve": None,
            "escalations": [],  # raised so far, e.g. "acknowledge:approaching"
        }


def record_step(sla: dict[str, Any] | None, step: str, at: datetime) -> None:
    """Mark a step done at ``at``: met if on or before its deadline (a missed stays missed)."""
    if sla is None or sla.get(step) == "missed":
        return
    due = parse_iso(sla[f"{step}_due"])
    assert due is not None
    sla[step] = "met" if at <= due else "missed"


def due_escalations(alert: Alert, now: datetime, fraction: float) -> list[str]:
    """Escalations that are due now and not yet raised, updating ``alert.sla`` in place."""
    sla = alert.sla
    if sla is None or alert.status == "resolved":
        return []
    opened = parse_iso(sla["opened_at"])
    assert opened is not None
    raised: list[str] = []
    done = set(sla.get("escalations", []))
    for step in DEADLINES:
        if step == "acknowledge" and alert.status != "open":
            continue
        if sla.get(step) is not None:
            continue
        due = parse_iso(sla[f"{step}_due"])
        assert due is not None
        if now >= due:
            # only "missed" when a run comes after the deadline: the warning would be moot
            if f"{step}:missed" not in done:
                raised.append(f"{step}:missed")
            sla[step] = "missed"
        elif now >= opened + (due - opened) * fraction and f"{step}:approaching" not in done:
            raised.append(f"{step}:approaching")
        done.update(raised)
    if raised:
        sla["escalations"] = sorted(done, key=_escalation_order)
        sla["last_escalation"] = {"escalations": raised, "at": iso(now)}
    return raised


def _escalation_order(name: str) -> tuple[int, int]:
    step, _, kind = name.partition(":")
    return (DEADLINES.index(step), 0 if kind == "approaching" else 1)
