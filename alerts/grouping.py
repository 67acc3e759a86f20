"""Notification grouping: meter alerts of one transformer area go out together."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from meterwatch.alerts.model import Alert


@dataclass
class AlertGroup:
    """Alerts to notify together. ``key`` is ``area:<transformer_id>`` (or ``meter:<id>`` /
    ``alert:<id>`` for alerts with no area)."""

    key: str
    transformer_id: str | None
    alerts: list[Alert] = field(default_factory=list)

    @property
    def meters(self) -> list[str]:
        return sorted({a.meter_id for a in self.alerts if a.meter_id})

    @property
    def types(self) -> list[str]:
        return sorted({a.type for a in self.alerts})


def group_by_area(alerts: Iterable[Alert], *, include_quiet: bool = False) -> list[AlertGroup]:
    """Group alerts by transformer area, in order of the first alert of each group.

    Quiet alerts (silenced or inhibited) are left out unless ``include_quiet``: they are
    recorded in the feed but not notified.
    """
    groups: dict[str, AlertGroup] = {}
    for a in alerts:
        if a.quiet is not None and not include_quiet:
            continue
        if a.transformer_id:
            key = f"area:{a.transformer_id}"
        elif a.meter_id:
            key = f"meter:{a.meter_id}"
        else:
            key = f"alert:{a.id}"
        groups.setdefault(key, AlertGroup(key, a.transformer_id)).alerts.append(a)
    return list(groups.values())
