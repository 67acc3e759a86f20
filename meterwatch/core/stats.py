"""Live counters shared by collectors, storage and the progress display."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from meterwatch.core.counters import BY_KEY, MetricDef, gateway_metrics

#: A series' labels: (name, value) pairs sorted by name.
Labels = tuple[tuple[str, str], ...]


def _declared(name: str, kind: str, labels: dict[str, str]) -> MetricDef:
    """The declaration of ``name`` (core/counters.py); an undeclared name or wrong labels raise."""
    m = BY_KEY.get(name)
    if m is None:
        raise KeyError(f"{kind} {name!r} is not declared in meterwatch/core/counters.py")
    if m.kind != kind or tuple(sorted(labels)) != tuple(sorted(m.labels)):
        raise ValueError(
            f"{name!r} is declared as a {m.kind} with labels {m.labels}, "
            f"used as a {kind} with {tuple(labels)}"
        )
    return m


@dataclass
class MeterHealth:
    """Per-meter collection counters."""

    requests: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    last_success: datetime | None = None
    last_error: str | None = None
    online: bool | None = None


@dataclass
class Stats:
    """Thread-safe counters and gauges, each declared in :mod:`meterwatch.core.counters`.

    ``count(name, n, **labels)`` adds to a counter; a labelled counter (per gateway) also keeps
    its total under ``name`` in :meth:`snapshot`, and each label set apart in :meth:`series`.
    Meters are tracked by id (:class:`MeterHealth`).
    """

    counters: Counter[str] = field(default_factory=Counter)
    meters: dict[str, MeterHealth] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    labelled: dict[str, dict[Labels, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str, n: int = 1, /, **labels: str) -> None:
        _declared(name, "counter", labels)
        with self._lock:
            self.counters[name] += n
            if labels:
                per = self.labelled.setdefault(name, {})
                key = tuple(sorted(labels.items()))
                per[key] = per.get(key, 0) + n

    def declare_gateway(self, gateway: str, protocol: str) -> None:
        """Create a gateway's series of every per-gateway metric of its protocol, at 0."""
        for m in gateway_metrics(protocol):
            self.count(m.key, 0, gateway=gateway, protocol=protocol)

    def meter(self, meter_id: str) -> MeterHealth:
        with self._lock:
            health = self.meters.get(meter_id)
            if health is None:
                health = self.meters[meter_id] = MeterHealth()
            return health

    def seen(self, meter_ids: list[str], at: datetime) -> None:
        """Meters that delivered a reading (MQTT meters have no request to count)."""
        with self._lock:
            for mid in meter_ids:
                h = self.meters.get(mid)
                if h is None:
                    h = self.meters[mid] = MeterHealth()
                h.last_success = at
                h.online = True

    def online_count(self) -> int:
        with self._lock:
            return sum(1 for h in self.meters.values() if h.online)

    def snapshot(self) -> dict[str, int]:
        """Counter totals by name (labelled ones summed over their series)."""
        with self._lock:
            return dict(self.counters)

    def series(self, name: str) -> dict[Labels, float]:
        """The labelled series of ``name``: labels → value."""
        with self._lock:
            return dict(self.labelled.get(name, {}))

    def total(self, name: str, **match: str) -> float:
        """Sum of ``name``'s series whose labels include ``match`` (e.g. ``protocol="modbus"``)."""
        want = set(match.items())
        return sum(v for labels, v in self.series(name).items() if want <= set(labels))

    def set_gauge(self, name: str, value: float) -> None:
        """Set a level that goes up and down (e.g. spool depth); counters only ever grow."""
        _declared(name, "gauge", {})
        with self._lock:
            self.gauges[name] = float(value)

    def gauge_snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self.gauges)
