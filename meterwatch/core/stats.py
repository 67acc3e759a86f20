"""Live counters shared by collectors, storage and the progress display."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime


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
    """Thread-safe counters. ``count`` adds to a named counter; meters are tracked by id."""

    counters: Counter[str] = field(default_factory=Counter)
    meters: dict[str, MeterHealth] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

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
        with self._lock:
            return dict(self.counters)

    def set_gauge(self, name: str, value: float) -> None:
        """Set a level that goes up and down (e.g. spool depth); counters only ever grow."""
        with self._lock:
            self.gauges[name] = float(value)

    def gauge_snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self.gauges)
