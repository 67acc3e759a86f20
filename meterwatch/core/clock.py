"""Wall and simulated clocks: the one notion of "now" the service and simulators share."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta


@dataclass
class Clock:
    """Maps wall time to service time.

    ``speed`` = 1 with no ``start`` is the real UTC clock. With ``start`` set, service time
    begins at ``start`` when the clock is created (or restarted, :meth:`restart`) and runs ``speed``
    times faster than the wall clock, so that a simulated day can pass in well under a minute.
    """

    start: datetime | None = None
    speed: float = 1.0
    _wall0: float = field(default_factory=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError(f"clock speed must be > 0, got {self.speed!r}")
        if self.start is not None and self.start.tzinfo is None:
            self.start = self.start.replace(tzinfo=UTC)
        self._origin = self.start if self.start is not None else datetime.now(UTC)
        if self.start is None and self.speed == 1.0:
            self._real = True
        else:
            self._real = False

    def restart(self) -> None:
        """Service time begins at its origin again, now: the service calls it when collection
        begins, so that its own start-up (seconds of wall time, hours at a demo's speed) takes
        no simulated time. No effect on the real clock."""
        if not self._real:
            self._wall0 = time.monotonic()

    def now(self) -> datetime:
        """Current service time (UTC, aware)."""
        if self._real:
            return datetime.now(UTC)
        return self._origin + timedelta(seconds=(time.monotonic() - self._wall0) * self.speed)

    def wall_seconds(self, service_seconds: float) -> float:
        """How many wall-clock seconds a span of service time takes."""
        return service_seconds / self.speed

    def service_seconds(self, wall_seconds: float) -> float:
        """How much service time passes in a span of wall-clock time."""
        return wall_seconds * self.speed
