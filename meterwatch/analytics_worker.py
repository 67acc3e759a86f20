"""Analytics workers: the service's analytics in worker processes, off the collector's event loop.

numpy and pandas hold the GIL for long stretches, so analytics in threads of the service process
delayed its polls (16 poll-cycle overruns in 45 s of the demo, issue #14). With
``analytics.workers`` >= 1 (default 1) the interval and daily detector runs, VEE validation and
the streaming detection of stored batches run in worker processes, started with ``spawn`` (a
fork of a process with threads, sockets and an open DuckDB file is not safe):

- The service owns the store (DuckDB lets one process open the file; a worker never does): it
  reads what a run needs, sends it to a worker (pickled frames) and applies what comes back:
  findings to the alert manager, validated intervals to the store.
- State that outlives a run: the incremental validation's progress stays in the service (sent
  with each run, committed once stored); the streaming tail (each meter's last readings) lives
  in the worker that runs streaming detection, and a worker started after a crash gets it
  rebuilt from the store (the readings stored within the streaming horizon before its batch).
- A worker that dies (a crash, the OOM killer) is replaced and the run it was doing retried once
  (``analytics_worker_restarts``); if the new one dies too, the run is given up and counted
  (``analytics_worker_failed_runs``) and the next run judges the same readings.
- The worker ignores SIGINT (Ctrl-C reaches every process of the terminal's group): the service
  finishes its last runs in it, then shuts it down. A worker not done within
  :data:`STOP_GRACE_S` of the start of the stop is killed, so a stop never hangs on it. A worker
  whose service died (SIGKILL) exits by itself within :data:`PARENT_CHECK_S`.

With ``analytics.workers: 0`` the same :class:`AnalyticsEngine` runs in threads of the service
process (no extra process; its numpy work then competes with polls for the GIL). With 2 or more,
streaming detection has a process of its own and the scheduled runs share the others.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from meterwatch.analytics.base import Detector
from meterwatch.analytics.incremental import IncrementalValidation, ValidationPlan
from meterwatch.analytics.registry import build_detectors
from meterwatch.analytics.streaming import StreamingDetection
from meterwatch.analytics.suite import run_detectors
from meterwatch.analytics.vee import apply_edits
from meterwatch.core.errors import AnalyticsWorkerError
from meterwatch.core.stats import Stats

if TYPE_CHECKING:
    from meterwatch.config import Config

log = logging.getLogger(__name__)

#: From the start of the service's stop, how long the workers may take to finish the runs in
#: flight and the last runs of the stop (analytics, validation) before they are killed [wall s];
#: within systemd's TimeoutStopSec (120 s in deploy/meterwatch.service).
STOP_GRACE_S = 60.0
#: How often a worker checks that the service that started it is still there [wall s].
PARENT_CHECK_S = 1.0
#: The detector cadences (analytics.registry) each run judges: streaming rules also run in the
#: interval run, which sees whole episodes.
CADENCES: dict[str, tuple[str, ...]] = {
    "interval": ("interval", "streaming"),
    "daily": ("daily",),
    "streaming": ("streaming",),
}


def for_clock(detectors: list[Detector], speed: float) -> list[Detector]:
    """Detectors with their wall-clock timing parameters (``wall_time_params``) scaled by the
    simulated clock's speed: collection jitter is wall time, N times longer in service time."""
    if speed != 1.0:
        for d in detectors:
            for name in getattr(d, "wall_time_params", ()):
                setattr(d, name, float(getattr(d, name)) * speed)
    return detectors


@dataclass(frozen=True, eq=False)
class AnalyticsSpec:
    """What it takes to build the service's analytics, as plain picklable values (a worker
    builds its detectors from it; config models with generated classes do not pickle)."""

    registry: pd.DataFrame
    detector_params: Mapping[str, Mapping[str, Any]]
    clock_speed: float = 1.0
    #: The longest normal spacing of a meter's reads [s] (vee.interval x
    #: vee.max_read_spacing_intervals): how long streaming detection keeps a meter's readings.
    spacing_s: float = 1350.0

    @classmethod
    def from_config(cls, cfg: Config, registry: pd.DataFrame) -> AnalyticsSpec:
        return cls(
            registry=registry,
            detector_params=cfg.analytics.detector_params(),
            clock_speed=cfg.clock.speed,
            spacing_s=cfg.vee.interval * cfg.vee.max_read_spacing_intervals,
        )

    def detectors(self, cadence: str) -> list[Detector]:
        """The detectors of one run (``interval``, ``daily``, ``streaming``), timed for the clock."""
        return for_clock(build_detectors(self.detector_params, CADENCES[cadence]), self.clock_speed)

    def streaming(self) -> StreamingDetection:
        return StreamingDetection(self.detectors("streaming"), spacing_s=self.spacing_s)


class AnalyticsEngine:
    """The service's analytics: detectors by cadence, streaming detection with its tail, and the
    VEE step of a validation run. Built in a worker process (or in the service with
    ``analytics.workers: 0``); every method takes and returns frames and plain values."""

    def __init__(self, spec: AnalyticsSpec):
        self.registry = spec.registry
        self.detectors = {cadence: spec.detectors(cadence) for cadence in ("interval", "daily")}
        self.streaming = spec.streaming()

    def analyze(self, cadence: str, readings: pd.DataFrame) -> pd.DataFrame:
        """Findings of the ``interval`` or ``daily`` detectors over a window of readings."""
        return run_detectors(self.detectors[cadence], readings, self.registry)

    def stream(self, frame: pd.DataFrame, seed: pd.DataFrame | None = None) -> pd.DataFrame:
        """Streaming findings of one stored batch. ``seed`` (readings stored just before it)
        rebuilds the kept tail in a worker that replaced one that died."""
        if seed is not None and len(seed) and self.streaming.tail is None:
            self.streaming.window(seed)
        return self.streaming.detect(frame, self.registry)

    def validate(
        self, validation: IncrementalValidation, readings: pd.DataFrame, now: pd.Timestamp
    ) -> tuple[ValidationPlan, pd.DataFrame] | None:
        """The plan of a validation run and its validated intervals (not stored, edits not
        applied), or None when nothing new is complete. ``validation`` carries the progress,
        which the service commits once the intervals are stored."""
        plan = validation.plan(readings, pd.Index(self.registry["meter_id"]), now)
        if plan is None:
            return None
        return plan, validation.validate(plan, readings, self.registry, now)

    def apply_edits(self, intervals: pd.DataFrame, edits: pd.DataFrame) -> pd.DataFrame:
        """Stored manual edits kept over newly validated intervals."""
        return apply_edits(intervals, edits)

    def pid(self) -> int:
        """The process the engine runs in."""
        return os.getpid()


# -- the worker process side -------------------------------------------------------------------

_engine: AnalyticsEngine | None = None


def _init_worker(spec: AnalyticsSpec) -> None:
    """Start of a worker process: build the engine; leave stopping to the service."""
    global _engine
    # Ctrl-C reaches the whole process group; the service stops the worker after its last runs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(
        target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True
    ).start()
    _engine = AnalyticsEngine(spec)


def _exit_with_parent(ppid: int) -> None:
    """Exit once the service is gone (killed with SIGKILL, it could not shut the worker down)."""
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != ppid:
            os._exit(0)


def _call(method: str, *args: Any) -> Any:
    assert _engine is not None, "worker not initialized"
    return getattr(_engine, method)(*args)


# -- the service side --------------------------------------------------------------------------


class _Lane:
    """A pool of ``processes`` worker processes, replaced as a whole when one of them dies."""

    def __init__(self, name: str, spec: AnalyticsSpec, processes: int, stats: Stats):
        self.name = name
        self.spec = spec
        self.processes = processes
        self.stats = stats
        #: Counts the pools started: a new generation has no streaming tail yet.
        self.generation = 0
        self.closed = False
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def current(self, task: str) -> int:
        """The generation of the pool (started when there is none); raises once closed."""
        with self._lock:
            return self._ensure(task)

    def submit(self, task: str, args: tuple[Any, ...], generation: int) -> Future[Any] | None:
        """``_call(task, *args)`` on the pool of ``generation``; None if it was replaced since."""
        with self._lock:
            if self._ensure(task) != generation:
                return None
            assert self._pool is not None
            try:
                return self._pool.submit(_call, task, *args)
            except BrokenProcessPool as exc:  # a worker died while idle
                failed: Future[Any] = Future()
                failed.set_exception(exc)
                return failed

    def _ensure(self, task: str) -> int:
        if self.closed:
            raise AnalyticsWorkerError(task, "the service is stopping; the worker is stopped")
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.spec,),
            )
            self.generation += 1
        return self.generation

    def replace(self, generation: int, task: str, exc: BaseException) -> None:
        """The pool of ``generation`` broke (a worker died): the next call starts a new one."""
        with self._lock:
            if self._pool is None or generation != self.generation or self.closed:
                return  # replaced already (another caller saw the same death), or stopping
            pool, self._pool = self._pool, None
        pool.shutdown(wait=False)  # broken: its runs in flight have failed already
        self.stats.count("analytics_worker_restarts")
        log.warning(
            "analytics worker (%s) died during %s (%s); a new one takes the run",
            self.name,
            task,
            exc,
        )

    def close(self) -> None:
        """Shut the pool down once it finished what it was given (no new worker after this)."""
        with self._lock:
            self.closed = True
            pool = self._pool
        if pool is not None:
            pool.shutdown(wait=True)  # kill() still finds it while this waits
        with self._lock:
            self._pool = None

    def kill(self) -> int:
        """Kill the worker processes now (their runs fail); no new worker after this."""
        with self._lock:
            self.closed = True
            pool, self._pool = self._pool, None
        if pool is None:
            return 0
        # CPython keeps the pool's processes here (3.14 adds ProcessPoolExecutor.kill_workers).
        procs = [p for p in getattr(pool, "_processes", {}).values() if p.is_alive()]
        for p in procs:
            p.kill()
        # Not cancel_futures: the pool fails the runs in flight with BrokenProcessPool, which
        # their callers report; a cancelled future would look like a cancelled task to them.
        pool.shutdown(wait=False)
        return len(procs)


class AnalyticsWorkers:
    """The service's handle on its analytics: :class:`AnalyticsEngine` calls in worker
    processes, or in threads of the service with ``workers=0``.

    Safe to call from several threads and tasks at once (the writer's listener thread streams,
    the scheduler's jobs run). ``read_tail(start, end)`` returns the readings stored in
    ``[start, end)``: it rebuilds the streaming tail of a replaced worker.
    """

    def __init__(
        self,
        spec: AnalyticsSpec,
        workers: int,
        stats: Stats,
        *,
        read_tail: Callable[[pd.Timestamp, pd.Timestamp], pd.DataFrame] | None = None,
    ):
        if workers < 0:
            raise ValueError(f"workers must be 0 or more, got {workers}")
        self.workers = workers
        self.stats = stats
        self.read_tail = read_tail
        self.horizon = pd.Timedelta(seconds=spec.streaming().horizon_s)
        #: In-process engine (``workers=0``); else the lanes below.
        self.engine = AnalyticsEngine(spec) if workers == 0 else None
        self._lanes: list[_Lane] = []
        if workers:
            self._stream = _Lane("analytics" if workers == 1 else "streaming", spec, 1, stats)
            self._jobs = self._stream
            self._lanes = [self._stream]
            if workers > 1:
                self._jobs = _Lane("analytics", spec, workers - 1, stats)
                self._lanes.append(self._jobs)
        #: The generation of the streaming worker that holds the kept tail (None: no tail yet).
        self._tail_generation: int | None = None

    async def start(self) -> None:
        """Start the worker processes and wait until each answers, so a worker that cannot
        start fails the service's start instead of its first runs."""
        for lane in self._lanes:
            await self._run(lane, "pid", ())

    async def run(self, task: str, *args: Any) -> Any:
        """``AnalyticsEngine.<task>(*args)`` for a scheduled run, without holding a thread."""
        if self.engine is not None:
            return await asyncio.to_thread(getattr(self.engine, task), *args)
        result, _ = await self._run(self._jobs, task, args)
        return result

    def stream(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Streaming findings of a stored batch; blocks (the writer's listener thread)."""
        if self.engine is not None:
            return self.engine.stream(frame)
        result, generation = asyncio.run(
            self._run(self._stream, "stream", (frame,), seed=lambda g: self._tail_seed(frame, g))
        )
        self._tail_generation = generation
        return result  # type: ignore[no-any-return]

    async def pids(self) -> list[int]:
        """The worker processes' ids, one answer per pool (the service's own with workers=0)."""
        if self.engine is not None:
            return [os.getpid()]
        return [(await self._run(lane, "pid", ()))[0] for lane in self._lanes]

    def close(self) -> None:
        """Stop the workers once they finished what they were given (blocking)."""
        for lane in self._lanes:
            lane.close()

    def kill(self) -> None:
        """Kill workers still running at the stop deadline; their runs are given up."""
        killed = sum(lane.kill() for lane in self._lanes)
        if killed:
            log.error(
                "analytics workers not done %.0f s into the stop: killed; their last runs are "
                "lost (validation resumes from the last stored interval at the next start)",
                STOP_GRACE_S,
            )

    def _tail_seed(self, frame: pd.DataFrame, generation: int) -> pd.DataFrame | None:
        """For a streaming worker that replaced the one holding the tail: the readings stored
        within the streaming horizon before the batch; else None."""
        if self._tail_generation in (None, generation) or self.read_tail is None or frame.empty:
            return None
        first = pd.to_datetime(frame["ts"], utc=True).min()
        return self.read_tail(first - self.horizon, first)

    async def _run(
        self,
        lane: _Lane,
        task: str,
        args: tuple[Any, ...],
        *,
        seed: Callable[[int], pd.DataFrame | None] | None = None,
    ) -> tuple[Any, int]:
        """The result of ``task`` on ``lane`` and the worker generation that computed it; a
        worker that dies is replaced and the task retried once."""
        deaths = 0
        while True:
            try:
                generation = lane.current(task)
            except AnalyticsWorkerError:
                self.stats.count("analytics_worker_failed_runs")
                raise
            extra = () if seed is None else (await asyncio.to_thread(seed, generation),)
            future = lane.submit(task, (*args, *extra), generation)
            if future is None:
                continue  # replaced meanwhile: the arguments again, for the new worker
            try:
                return await asyncio.wrap_future(future), generation
            except BrokenProcessPool as exc:
                deaths += 1
                lane.replace(generation, task, exc)
                if deaths == 2:
                    self.stats.count("analytics_worker_failed_runs")
                    raise AnalyticsWorkerError(
                        task, "the worker died during the run and again during its retry"
                    ) from None
