"""The simulated clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from meterwatch.core.clock import Clock


def test_simulated_clock_runs_at_speed() -> None:
    start = datetime(2026, 1, 5, tzinfo=UTC)
    clock = Clock(start=start, speed=3600)
    time.sleep(0.1)
    elapsed = (clock.now() - start).total_seconds()
    assert 300 <= elapsed <= 3600  # 0.1 s wall ≈ 360 s simulated (loose: shared CPU)
    assert clock.wall_seconds(900) == 0.25
    assert clock.service_seconds(0.25) == 900


def test_real_clock_and_bad_speed() -> None:
    before = datetime.now(UTC)
    assert Clock().now() >= before
    with pytest.raises(ValueError, match="speed"):
        Clock(speed=0)


def test_restart_begins_service_time_at_start_again() -> None:
    """The service restarts a simulated clock when collection begins: its start-up takes no
    simulated time (an hour of a day's history at 3600x was lost to a slow worker start)."""
    start = datetime(2026, 1, 5, tzinfo=UTC)
    clock = Clock(start=start, speed=3600)
    time.sleep(0.2)
    assert (clock.now() - start).total_seconds() >= 600
    clock.restart()
    assert 0 <= (clock.now() - start).total_seconds() < 600
    real = Clock()
    real.restart()  # no effect on the real clock
    assert abs((real.now() - datetime.now(UTC)).total_seconds()) < 5
