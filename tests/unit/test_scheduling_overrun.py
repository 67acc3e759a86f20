"""Skipped poll cycles are counted (meterwatch.scheduling.Scheduler) and shown in the run summary.

A cycle is skipped when it falls due while the previous one still runs (APScheduler refuses it:
max_instances) or while the event loop is held up (APScheduler then coalesces the missed due
times into one late run, without an event of its own): both count, per gateway for poll jobs.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from types import SimpleNamespace

from rich.console import Console

from meterwatch.console import print_summary
from meterwatch.core.stats import Stats
from meterwatch.scheduling import Scheduler
from meterwatch.service import RunSummary

INTERVAL_S = 0.1


class WallClock:
    speed = 1.0

    def wall_seconds(self, service_s: float) -> float:
        return service_s


def scheduler() -> tuple[Scheduler, Stats]:
    stats = Stats()
    return Scheduler(SimpleNamespace(clock=WallClock(), stats=stats)), stats  # type: ignore[arg-type]


def test_a_cycle_longer_than_its_interval_counts_the_cycles_it_skips() -> None:
    s, stats = scheduler()
    started = []

    async def slow_poll() -> None:
        started.append(time.monotonic())
        await asyncio.sleep(6 * INTERVAL_S)

    async def scenario() -> None:
        gateway = SimpleNamespace(name="gw1", protocol="modbus")
        s.every("poll:gw1", "poll gw1", slow_poll, INTERVAL_S, now=True, poller=gateway)  # type: ignore[arg-type]
        s.start()
        await asyncio.sleep(12 * INTERVAL_S)
        await s.stop()

    asyncio.run(scenario())
    skipped = stats.snapshot()["poll_cycles_overrun"]
    # About 12 intervals passed with 2 or 3 cycles started: the rest were skipped.
    assert skipped >= 6
    assert stats.series("poll_cycles_overrun") == {
        (("gateway", "gw1"), ("protocol", "modbus")): skipped
    }
    assert stats.snapshot()["cycles_overrun"] == skipped


def test_due_times_passed_while_the_event_loop_was_held_up_count() -> None:
    s, stats = scheduler()

    async def quick() -> None:
        pass

    async def scenario() -> None:
        s.every("health", "health", quick, INTERVAL_S, now=True)
        s.start()
        await asyncio.sleep(2 * INTERVAL_S)
        time.sleep(8 * INTERVAL_S)  # the loop is held up: ~8 due times pass unseen
        await asyncio.sleep(2 * INTERVAL_S)
        await s.stop()

    asyncio.run(scenario())
    counters = stats.snapshot()
    assert counters["cycles_overrun"] >= 5  # coalesced into one late run, still counted
    assert counters.get("poll_cycles_overrun", 0) == 0  # not a poll job


def test_the_summary_shows_skipped_poll_cycles_apart() -> None:
    console = Console(record=True, width=100)
    t = datetime(2026, 1, 5, tzinfo=UTC)
    summary = RunSummary(
        wall_seconds=90.0,
        service_start=t,
        service_end=t,
        meters=2,
        meters_online=2,
        counters={"cycles_overrun": 5, "poll_cycles_overrun": 3, "analytics_worker_restarts": 1},
        alerts_by_type={},
        open_alerts=0,
    )
    print_summary(console, summary)
    rows = {
        " ".join(cells[:-1]): cells[-1]
        for line in console.export_text().splitlines()
        if (cells := line.strip("│ ").replace("│", " ").split())
    }
    assert rows["cycles overrun"] == "5"
    assert rows["poll cycles overrun"] == "3"
    assert rows["analytics worker restarts"] == "1"
    assert rows["analytics worker failed runs"] == "0"
