"""Scheduling: the service's periodic jobs on APScheduler, in service time.

Each job runs at its interval of service time (converted to wall time by the clock), never
twice at once (a run due while the previous one still goes, or while the event loop is held up,
is skipped and counted in ``cycles_overrun``, and for a poll job also in its gateway's
``poll_cycles_overrun``), and is
tracked so the service can let running jobs finish before it stops. The job bodies (poll a
gateway, run detectors, validate, snapshot health, apply retention) live here too, each on the
components the wiring built. Analytics run in the worker processes of
:mod:`meterwatch.analytics_worker`: a job reads from the store, hands the frame over and applies
what comes back, so the event loop only waits.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_SUBMITTED,
    JobEvent,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from meterwatch.collector.sources import PolledSource
from meterwatch.storage.base import RecordStore
from meterwatch.storage.embedded import EmbeddedStore
from meterwatch.storage.measurements import GatewaySource, health_frame
from meterwatch.wiring import Components

log = logging.getLogger(__name__)

Job = Callable[[], Coroutine[Any, Any, Any]]


class Scheduler:
    """APScheduler in service time, with tracked jobs and overrun counting."""

    def __init__(self, c: Components):
        self.c = c
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.scheduler.add_listener(
            self._job_event, EVENT_JOB_SUBMITTED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR
        )
        self._jobs: set[asyncio.Task[Any]] = set()
        #: Poll jobs by key: the gateway labels of their ``poll_cycles_overrun``.
        self._pollers: dict[str, PolledSource] = {}
        #: Per job: its interval [wall s] and the last due time the scheduler acted on.
        self._wall_s: dict[str, float] = {}
        self._last_due: dict[str, datetime] = {}
        self.stopping = False

    def every(
        self,
        key: str,
        name: str,
        job: Job,
        service_s: float,
        *,
        now: bool = False,
        poller: PolledSource | None = None,
    ) -> None:
        """Run ``job`` every ``service_s`` of service time; first run now or after one interval.

        ``poller``: the job is that source's poll cycle (its overruns are counted per gateway).
        """
        if poller is not None:
            self._pollers[key] = poller
        wall = self.c.clock.wall_seconds(service_s)
        self._wall_s[key] = wall
        first = datetime.now(UTC) + (timedelta(0) if now else timedelta(seconds=wall))
        self.scheduler.add_job(
            self._tracked,
            "interval",
            args=[job],
            seconds=wall,
            next_run_time=first,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            id=key,
            name=name,
        )

    def start(self) -> None:
        self.scheduler.start()

    async def stop(self) -> None:
        """Let running jobs finish (a shutdown would cancel them mid-request: a read served by
        the meter but never stored, or an analytics run half applied), then stop."""
        self.stopping = True
        if self._jobs:
            await asyncio.gather(*list(self._jobs), return_exceptions=True)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    async def _tracked(self, job: Job) -> None:
        if self.stopping:
            return
        task = asyncio.current_task()
        assert task is not None
        self._jobs.add(task)
        try:
            await job()
        finally:
            self._jobs.discard(task)

    def _job_event(self, event: JobEvent) -> None:
        if isinstance(event, JobSubmissionEvent):
            self._count_skipped(event)
        elif isinstance(event, JobExecutionEvent) and event.exception is not None:
            self.c.stats.count("job_errors")
            log.error("job %s failed: %r", event.job_id, event.exception)

    def _count_skipped(self, event: JobSubmissionEvent) -> None:
        """Count every due time of a job that did not start a run: the one refused because the
        previous run still goes (max_instances), and the ones APScheduler coalesced into a
        later run without a word because the event loop was held up past them."""
        due = event.scheduled_run_times[-1]
        last = self._last_due.get(event.job_id)
        self._last_due[event.job_id] = due
        skipped = int(event.code == EVENT_JOB_MAX_INSTANCES)
        wall = self._wall_s.get(event.job_id)
        if last is not None and wall:
            skipped += max(0, round((due - last).total_seconds() / wall) - 1)
        if not skipped:
            return
        stats = self.c.stats
        if not stats.snapshot().get("cycles_overrun"):
            log.warning(
                "%s: a cycle did not fit its interval; later overruns are counted in the summary",
                event.job_id,
            )
        stats.count("cycles_overrun", skipped)
        poller = self._pollers.get(event.job_id)
        if poller is not None:
            stats.count(
                "poll_cycles_overrun", skipped, gateway=poller.name, protocol=poller.protocol
            )


class Jobs:
    """The bodies of the service's periodic jobs."""

    def __init__(self, c: Components):
        self.c = c
        self._known: pd.Index | None = None

    def schedule(self, s: Scheduler) -> None:
        """Every job the config asks for, on ``s``."""
        c, cfg = self.c, self.c.cfg
        for poller in c.pollers:
            # Each poll group runs at its own interval (gateway or device-level `interval`).
            every = poller.interval_s or cfg.collector.modbus.interval
            s.every(
                f"poll:{poller.name}",
                f"poll {poller.name}",
                functools.partial(self.poll, poller, c.clock.wall_seconds(every)),
                every,
                now=True,
                poller=poller,
            )
        if c.analytics_enabled:
            s.every("analytics", "analytics", self.analyze, cfg.analytics.interval)
            s.every(
                "analytics-daily",
                "analytics (daily: theft, line loss)",
                self.analyze_daily,
                cfg.analytics.daily_interval,
            )
        if isinstance(c.store, EmbeddedStore) and cfg.storage.retention_days:
            s.every(
                "retention",
                "retention",
                self.apply_retention,
                cfg.storage.retention_interval,
                now=True,
            )
        if c.validation is not None and cfg.analytics.validation_interval and c.analytics_enabled:
            s.every("validation", "validation", self.validate, cfg.analytics.validation_interval)
        if cfg.storage.health_interval and isinstance(c.store, RecordStore):
            s.every("health", "health", self.write_health, cfg.storage.health_interval)

    async def poll(self, poller: PolledSource, wall_interval: float) -> None:
        await poller.poll_cycle(wall_interval)
        self.c.stats.count("poll_cycles", gateway=poller.name, protocol=poller.protocol)

    async def apply_retention(self) -> int:
        """Delete embedded-store readings older than ``storage.retention_days``; rows deleted."""
        store = self.c.store
        if not isinstance(store, EmbeddedStore):
            return 0
        deleted = await asyncio.to_thread(store.apply_retention, self.c.clock.now())
        self.c.stats.count("retention_deleted", deleted)
        return deleted

    async def analyze(self) -> None:
        await self.analyze_once()

    async def analyze_daily(self) -> None:
        await self.analyze_once("daily", tick=False)

    async def analyze_once(self, cadence: str = "interval", *, tick: bool = True) -> None:
        """Run the ``interval`` (default) or ``daily`` detectors over the recent window, in an
        analytics worker; apply the findings.

        ``tick`` advances the alert lifecycle (flap hold, verification, SLA, silences), which
        counts analytics intervals, so only the interval run does it.
        """
        c = self.c
        now = c.clock.now()
        start = now - timedelta(seconds=c.cfg.analytics.window)
        # With collected_at/device_ts: the clock check judges each read against its receipt.
        readings = await asyncio.to_thread(
            functools.partial(c.store.read_readings, None, start, None, include_times=True)
        )
        findings = await c.analytics.run("analyze", cadence, readings)
        # Off the loop: the alert manager takes a file lock and fsyncs the feed and audit log.
        await asyncio.to_thread(c.alerts.process, findings, now)
        if tick:
            await asyncio.to_thread(c.alerts.tick, now)
            c.stats.count("analytics_runs")
        else:
            c.stats.count("analytics_daily_runs")

    def count_unknown(self, frame: pd.DataFrame) -> None:
        """Count stored readings of meters the registry does not list (a writer listener)."""
        known = self._known
        if known is None:
            known = self._known = pd.Index(self.c.registry["meter_id"].astype(str))
        unknown = int((~frame["meter_id"].isin(known)).sum()) if len(known) else len(frame)
        if unknown:
            self.c.stats.count("readings_unknown_meter", unknown)

    def stream_detect(self, frame: pd.DataFrame) -> None:
        """Streaming detectors on every stored batch (a writer listener, on its thread): a fault
        is alerted within one poll; an episode that ended within the batch is left to analytics."""
        findings = self.c.analytics.stream(frame)
        if not findings.empty:
            self.c.alerts.process(findings, self.c.clock.now(), streaming=True)

    async def validate(self) -> int:
        """VEE over the intervals completed since the last run into ``validated_readings``.

        Same validation as ``meterwatch export billing`` (stored manual edits kept); windows
        planned by :class:`~meterwatch.analytics.incremental.IncrementalValidation` in an
        analytics worker, its progress kept here and committed once the rows are stored. Rows
        written, counted in ``validated_rows_written``; a failure is logged and counted
        (``validation_errors``) and its window retried next run.
        """
        c, v = self.c, self.c.validation
        store = c.store
        if v is None or not isinstance(store, RecordStore) or not c.analytics_enabled:
            return 0
        now = pd.Timestamp(c.clock.now())
        since = v.read_since(now)
        try:
            readings = await asyncio.to_thread(
                functools.partial(store.read_readings, None, since, None, include_times=True)
            )
            result = await c.analytics.run("validate", v, readings, now)
            if result is None:
                return 0
            plan, iv = result
            if iv.empty:
                return 0
            stored = await asyncio.to_thread(
                store.read_validated_readings, None, plan.start + v.step, plan.end + v.step
            )
            edits = stored[stored["quality"] == "edited"]
            if len(edits):
                iv = await c.analytics.run("apply_edits", iv, edits)
            await asyncio.to_thread(store.write_validated_readings, iv)
        except Exception:
            c.stats.count("validation_errors")
            log.exception("validation from %s failed; retried at the next run", since)
            return 0
        v.commit(plan)
        c.stats.count("validation_runs")
        c.stats.count("validated_rows_written", len(iv))
        return len(iv)

    async def write_health(self) -> int:
        """One ``collector_health`` snapshot (per source, writer, spool); rows written."""
        c = self.c
        store = c.store
        if not isinstance(store, RecordStore):
            return 0
        polled = {m for p in c.pollers for m in p.meter_ids()}
        sources = [
            GatewaySource(
                p.name, p.protocol, p.meter_ids(), int(c.stats.total("poll_cycles", gateway=p.name))
            )
            for p in c.pollers
        ]
        for s in c.service_sources:
            meters = [m for m in c.stats.meters if m not in polled]
            sources.append(GatewaySource(s.name, s.protocol, meters))
        try:
            # Off the loop: building the frame is pandas work too.
            frame = await asyncio.to_thread(
                health_frame, c.clock.now(), sources, c.stats, spool=c.spool is not None
            )
            written = await asyncio.to_thread(store.write_collector_health, frame)
        except Exception as exc:
            c.stats.count("health_write_errors")
            log.warning("collector_health snapshot not stored: %s", exc)
            return 0
        c.stats.count("health_rows_written", written)
        return written
