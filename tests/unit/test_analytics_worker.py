"""The service's analytics run in a worker process, off the collector's event loop
(meterwatch.analytics_worker): a worker that dies is replaced and the next run succeeds, the
streaming tail survives the replacement, a worker that cannot start fails the start instead of
hanging it, and a stopped worker refuses runs instead of waiting.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from meterwatch.analytics_worker import AnalyticsSpec, AnalyticsWorkers
from meterwatch.config import parse_config
from meterwatch.core.errors import AnalyticsWorkerError
from meterwatch.core.schema import readings_from_records
from meterwatch.core.stats import Stats
from meterwatch.service import Service
from tests.support.three_phase import METERS, T0, reading


class FixedClock:
    def __init__(self, at: pd.Timestamp):
        self.t = at.to_pydatetime()
        self.speed = 1.0
        self.start = None

    def now(self) -> Any:
        return self.t


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    METERS.to_csv(tmp_path / "meters.csv", index=False)
    cfg = parse_config(
        {
            "registry": {"path": str(tmp_path / "meters.csv")},
            "collector": {"mqtt": {"enabled": False}},
            "storage": {"path": str(tmp_path / "s.duckdb")},
            "alerts": {"feed": str(tmp_path / "alerts.jsonl")},
            "analytics": {"workers": 1},
        }
    )
    svc = Service(cfg)
    yield svc
    svc.c.analytics.close()
    svc.store.close()


def open_alerts(service: Service) -> dict[str, set[str]]:
    """Open alert types by meter."""
    out: dict[str, set[str]] = {}
    for a in service.alerts.alerts.values():
        if a.status == "open":
            out.setdefault(a.type, set()).add(a.meter_id)
    return out


def running(pid: int) -> bool:
    """Whether the process runs (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not running(pid)


def kill(pid: int) -> None:
    """SIGKILL a worker and wait until it is gone."""
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid), f"worker {pid} still runs 30 s after SIGKILL"


def test_analytics_run_in_a_worker_that_is_replaced_when_it_dies(service: Service) -> None:
    store = service.store
    # C1 runs with L3 at 200 V (unbalanced) for two hours; C2 is healthy.
    store.write_readings(
        readings_from_records(
            [reading("C1", i, u3=200.0) for i in range(8)] + [reading("C2", i) for i in range(8)]
        )
    )
    service.c.clock = FixedClock(T0 + pd.Timedelta(hours=2))  # type: ignore[assignment]

    async def scenario() -> tuple[int, int]:
        await service.c.analytics.start()
        (first,) = await service.c.analytics.pids()
        await service.jobs.analyze_once()
        assert open_alerts(service).get("voltage_unbalance") == {"C1"}

        kill(first)
        # C2's register falls back by 50 kWh: the next run, on a new worker, must see it.
        store.write_readings(
            readings_from_records([reading("C2", 8, kwh=57.0), reading("C2", 9, kwh=58.0)])
        )
        service.c.clock = FixedClock(T0 + pd.Timedelta(hours=3))  # type: ignore[assignment]
        await service.jobs.analyze_once()
        (second,) = await service.c.analytics.pids()
        return first, second

    first, second = asyncio.run(scenario())
    assert first != os.getpid()  # the analytics ran in another process...
    assert second not in (first, os.getpid())  # ...and after the kill in a new one
    assert open_alerts(service).get("register_decrease") == {"C2"}
    counters = service.stats.snapshot()
    assert counters["analytics_runs"] == 2
    assert counters["analytics_worker_restarts"] == 1
    assert counters.get("analytics_worker_failed_runs", 0) == 0


def test_the_streaming_tail_is_rebuilt_in_a_replacement_worker(service: Service) -> None:
    """Voltage unbalance needs 4 consecutive readings; the worker holding the first 3 dies."""
    batches = [readings_from_records([reading("C1", i, u3=200.0)]) for i in range(4)]
    for batch in batches[:3]:
        service.store.write_readings(batch)  # stored first, then streamed (as the writer does)
        service.jobs.stream_detect(batch)
    assert "voltage_unbalance" not in open_alerts(service)
    (pid,) = asyncio.run(service.c.analytics.pids())
    kill(pid)

    service.store.write_readings(batches[3])
    service.jobs.stream_detect(batches[3])
    assert open_alerts(service).get("voltage_unbalance") == {"C1"}
    assert service.stats.snapshot()["analytics_worker_restarts"] == 1


def test_a_worker_that_cannot_start_fails_the_start_and_is_counted() -> None:
    # A spec the worker cannot build (an unknown detector parameter) breaks every worker start.
    spec = AnalyticsSpec(registry=METERS, detector_params={"voltage_unbalance": {"nope": 1}})
    stats = Stats()
    workers = AnalyticsWorkers(AnalyticsSpec(registry=METERS, detector_params={}), 1, stats)
    # The service side builds fine; only the worker process gets the bad spec (a private
    # attribute: no config can produce this, the config check refuses unknown parameters).
    workers._stream.spec = spec
    try:
        with pytest.raises(AnalyticsWorkerError, match="died during the run and again"):
            asyncio.run(workers.start())
    finally:
        workers.close()
    counters = stats.snapshot()
    assert counters["analytics_worker_restarts"] == 2  # one per death: the run and its retry
    assert counters["analytics_worker_failed_runs"] == 1


def test_stopped_workers_refuse_runs_instead_of_waiting() -> None:
    stats = Stats()
    workers = AnalyticsWorkers(AnalyticsSpec(registry=METERS, detector_params={}), 1, stats)
    (pid,) = asyncio.run(workers.pids())
    workers.kill()  # the stop deadline passed
    with pytest.raises(AnalyticsWorkerError, match="stopping"):
        asyncio.run(workers.run("analyze", "interval", readings_from_records([])))
    assert stats.snapshot()["analytics_worker_failed_runs"] == 1
    assert wait_gone(pid), "the killed worker still runs"


def test_in_process_analytics_with_zero_workers() -> None:
    """``analytics.workers: 0``: the same engine, in the service process."""
    workers = AnalyticsWorkers(AnalyticsSpec(registry=METERS, detector_params={}), 0, Stats())
    assert asyncio.run(workers.pids()) == [os.getpid()]
    frame = readings_from_records([reading("C1", i, u3=200.0) for i in range(8)])
    findings = asyncio.run(workers.run("analyze", "interval", frame))
    assert "voltage_unbalance" in set(findings["type"])
