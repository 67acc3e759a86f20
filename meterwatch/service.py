"""`meterwatch run`: the service's lifecycle — start in order, run, stop in the safe order, sum up.

What it is made of is built by wiring.py (from the config and the registries); what runs
periodically is in scheduling.py.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from meterwatch.alerts.manager import CLOCK_HEARTBEAT_S, record_clock
from meterwatch.alerts.model import Alert
from meterwatch.analytics_worker import STOP_GRACE_S
from meterwatch.collector.modbus import failing_meters
from meterwatch.config import Config
from meterwatch.control import ControlServer, socket_path
from meterwatch.core.errors import ConfigError, MeterWatchError
from meterwatch.scheduling import Jobs, Scheduler
from meterwatch.storage.embedded import EmbeddedStore
from meterwatch.wiring import build, build_all_sources, embedded_broker, http_server

log = logging.getLogger(__name__)


def _in_use(host: str, port: int) -> bool:
    """Whether another socket listens on ``host:port`` (binding there fails with EADDRINUSE)."""
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
    try:
        probe.bind((host, port))
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE
    finally:
        probe.close()
    return False


@contextmanager
def listening(setting: str, host: str, port: int) -> Iterator[None]:
    """A server that cannot start listening is a ConfigError naming ``setting`` and the address
    (libraries raise anything from OSError to RuntimeError, some without the port)."""
    try:
        yield
    except MeterWatchError:
        raise
    except Exception as exc:
        why = (
            "the address is already in use (another program, or another meterwatch, listens "
            "there); stop it or choose another port"
            if port and _in_use(host, port)
            else str(exc)
        )
        section = setting.rsplit(".", 1)[0]
        raise ConfigError(section, [(setting, f"cannot listen on {host}:{port}: {why}")]) from None


@dataclass
class RunSummary:
    """What a run did, for the closing summary and for tests."""

    wall_seconds: float
    service_start: datetime
    service_end: datetime
    meters: int
    meters_online: int
    counters: dict[str, int]
    alerts_by_type: dict[str, int]
    open_alerts: int
    extra: dict[str, Any] = field(default_factory=dict)
    #: Alert delivery per sink (Dispatcher.stats): delivered/retried/failed this run, pending
    #: in the outbox (sent at the next start); empty when no sink is configured.
    delivery: dict[str, dict[str, int]] = field(default_factory=dict)


class Service:
    """Starts the components the wiring built, runs them, and stops them in a safe order."""

    def __init__(self, cfg: Config, *, on_alert: Any = None, on_tick: Any = None):
        self.cfg = cfg
        self.on_alert = on_alert
        self.on_tick = on_tick
        self.c = build(cfg, listeners=[self._alert_event])
        self.jobs = Jobs(self.c)
        self.scheduler = Scheduler(self.c)
        self._started = False  # every component started (the stop then runs the final jobs)
        self._analytics_ready: asyncio.Task[None] | None = None
        self.c.writer.listeners.append(self.jobs.count_unknown)
        if self.c.analytics_enabled:
            # Streaming detectors judge every stored batch (off the ingest path: the writer
            # hands durable batches to its listeners through a bounded queue).
            self.c.writer.listeners.append(self.jobs.stream_detect)

    # Short names for the components the console, the CLI and tests look at.
    @property
    def registry(self) -> pd.DataFrame:
        return self.c.registry

    @property
    def stats(self) -> Any:
        return self.c.stats

    @property
    def clock(self) -> Any:
        return self.c.clock

    @property
    def store(self) -> Any:
        return self.c.store

    @property
    def alerts(self) -> Any:
        return self.c.alerts

    @property
    def simulator(self) -> Any:
        return self.c.simulator

    @property
    def fleet(self) -> Any:
        return self.c.fleet

    @property
    def writer(self) -> Any:
        return self.c.writer

    # -- lifecycle ----------------------------------------------------------------------

    async def run(
        self, duration_s: float | None = None, stop: asyncio.Event | None = None
    ) -> RunSummary:
        stop = stop or asyncio.Event()
        wall0 = time.monotonic()
        try:
            await self._start()
        except BaseException:
            await self._stop_after_failed_start()
            raise
        start = self.c.clock.now()
        try:
            deadline = None if duration_s is None else wall0 + duration_s
            last_clock = -CLOCK_HEARTBEAT_S
            while not stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if time.monotonic() - last_clock >= CLOCK_HEARTBEAT_S:
                    last_clock = time.monotonic()
                    self._record_clock(running=True)
                if self.on_tick is not None:
                    self.on_tick(self)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=0.5)
                except TimeoutError:
                    pass
        finally:
            await self._stop()
            self._record_clock(running=False)
        return self.summary(wall0, start)

    def summary(self, wall0: float, start: datetime) -> RunSummary:
        c = self.c
        counters = c.stats.snapshot()
        return RunSummary(
            wall_seconds=time.monotonic() - wall0,
            service_start=start,
            service_end=c.clock.now(),
            meters=len(c.registry),
            meters_online=c.stats.online_count(),
            counters=counters,
            alerts_by_type=dict(c.alerts.counts_by_type()),
            open_alerts=len(c.alerts.open_alerts()),
            extra={
                "failing_meters": failing_meters(c.stats),
                # Readings left for the next start (store unreachable at shutdown); None: no spool.
                "spool_pending_rows": c.spool.depth_rows if c.spool is not None else None,
                "validated_rows_written": counters.get("validated_rows_written", 0),
                "alert_events_stored": counters.get("alert_events_stored", 0),
                "alert_events_pending": c.alert_sink.pending if c.alert_sink else 0,
                "health_rows_written": counters.get("health_rows_written", 0),
            },
            delivery=c.delivery.stats() if c.delivery is not None else {},
        )

    def _record_clock(self, running: bool) -> None:
        """Record service time next to the feed: CLI actions act at it on a simulated clock."""
        clock = self.c.clock
        simulated = clock.start is not None or clock.speed != 1.0
        try:
            record_clock(
                self.c.alerts.state_dir,
                clock.now(),
                speed=clock.speed,
                simulated=simulated,
                running=running,
            )
        except OSError as exc:
            log.warning("cannot record the service clock in %s: %s", self.c.alerts.state_dir, exc)

    async def _start(self) -> None:
        """Storage first, then the broker, subscribers, simulated meters, pollers and jobs."""
        c, cfg = self.c, self.cfg
        if c.analytics_enabled:
            # The analytics workers start while the rest does (each imports numpy and pandas
            # anew); the scheduler starts once they answer.
            self._analytics_ready = asyncio.create_task(c.analytics.start())
        if isinstance(c.store, EmbeddedStore):
            # Backup and export while the service holds the store (DuckDB: one process).
            c.control = ControlServer(socket_path(cfg.storage), c.store)
            await c.control.start()
        c.writer.start()
        if c.alert_sink is not None:
            c.alert_sink.start()
        c.broker = embedded_broker(cfg)
        if c.broker is not None:
            with listening("collector.mqtt.port", cfg.collector.mqtt.host, cfg.collector.mqtt.port):
                await c.broker.start()
        if c.simulator is not None:
            # The Modbus simulator listens first (pollers need its port); MQTT meters publish
            # only once the simulator runs, after the subscriptions below.
            sim = cfg.simulator.modbus
            with listening("simulator.modbus.port", sim.host, sim.port):
                await c.simulator.listen()
        c.sources = build_all_sources(c, self._report_findings)
        for source in c.service_sources:
            await source.start()  # subscribe before simulated meters publish: nothing lost
        if self._analytics_ready is not None:
            await self._analytics_ready
        # Collection begins: a simulated clock starts at its configured start here, so that
        # the start-up above (worker imports: a second or two, hours at a demo's speed) leaves
        # no hole at the start of the history, whatever the machine's load.
        c.clock.restart()
        if c.simulator is not None:
            await c.simulator.start()
        self.jobs.schedule(self.scheduler)
        if cfg.metrics.enabled:
            from meterwatch.metrics import MetricsServer

            delivery = c.delivery
            c.metrics = MetricsServer(
                c.stats,
                cfg.metrics.host,
                cfg.metrics.port,
                delivery=delivery.stats if delivery is not None else None,
            )
            c.metrics.start()
        if c.delivery is not None:
            c.delivery.seed([a.to_json() for a in c.alerts.list(status="active")])
            c.delivery.start()
        c.http = http_server(c)
        if c.http is not None:
            c.alerts.listeners.append(c.http)
            c.http.start()
        self.scheduler.start()
        self._started = True
        log.info(
            "running: %d meters, %d sources, analytics every %.0f s",
            len(c.registry),
            len(c.sources),
            cfg.analytics.interval,
        )

    async def _stop(self) -> None:
        """Stop in an order that loses nothing that was served: sources first, store last.

        The analytics workers get :data:`STOP_GRACE_S` from here to finish their runs (the
        last streaming batches, the final analytics and validation), then they are killed:
        a stop never waits on a worker that hangs."""
        deadline = asyncio.get_running_loop().call_later(STOP_GRACE_S, self.c.analytics.kill)
        try:
            await self._stop_in_order()
        finally:
            deadline.cancel()

    async def _stop_in_order(self) -> None:
        c = self.c
        for poller in c.pollers:
            poller.stopping = True
        await self.scheduler.stop()
        if c.simulator is not None:
            await c.simulator.stop()
            await self._drain_simulated_mqtt()
        await c.writer.close()
        if self._started:
            await self._final_jobs()
        await self._stop_analytics()
        if c.alert_sink is not None:
            await c.alert_sink.close()
        for source in c.service_sources:
            await source.stop()
        for poller in c.pollers:
            await poller.close()
        failing = failing_meters(c.stats)
        if failing:
            log.warning("meters with failed reads (errors/requests): %s", "; ".join(failing))
        if c.http is not None:
            c.http.stop()
        if c.delivery is not None:  # before the broker: the MQTT sink may use it
            await asyncio.to_thread(c.delivery.stop)
        if c.broker is not None:
            await c.broker.stop()
        c.alerts.close()  # signed audit checkpoint
        if c.spool is not None:
            c.spool.close()
        if c.metrics is not None:
            c.metrics.stop()
        if c.control is not None:
            await c.control.stop()
        c.store.close()

    async def _final_jobs(self) -> None:
        """Last analytics, validation and health of a run, before the store closes."""
        # One last pass over everything stored: an episode that ended after the last scheduled
        # run (runs are coalesced when they take longer than the interval) is still reported.
        try:
            if self.c.analytics_enabled:
                await self.jobs.analyze_once()
        except Exception:
            log.exception("final analytics run at stop failed")
        # Validated readings up to the last completed interval, a last health snapshot, and
        # the alert events of this run, before the store closes.
        await self.jobs.validate()
        if self.cfg.storage.health_interval:
            await self.jobs.write_health()

    async def _stop_analytics(self) -> None:
        """Shut the analytics workers down (after their last runs)."""
        ready = self._analytics_ready
        if ready is not None:
            ready.cancel()  # a start cut short (a port in use ...): shut down below all the same
            await asyncio.wait([ready])
            if not ready.cancelled() and ready.exception() is not None:
                log.debug("analytics workers' start failed: %s", ready.exception())
        await asyncio.to_thread(self.c.analytics.close)

    async def _stop_after_failed_start(self) -> None:
        """Release what a start that failed (a port in use ...) had opened; its error is the
        one reported, so a failure here is only logged."""
        try:
            await self._stop()
        except Exception as exc:
            log.warning("cleanup after the failed start: %s", exc)

    async def _drain_simulated_mqtt(self, timeout_s: float = 10.0) -> None:
        """Wait until the collector has received every message the broker acknowledged."""
        sim = self.c.simulator
        if sim is None or sim.mqtt is None or not self.c.service_sources:
            return
        target = len(sim.mqtt.acked)
        deadline = time.monotonic() + timeout_s
        while (
            self.c.stats.snapshot().get("mqtt_messages", 0) < target and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.05)

    # -- callbacks ----------------------------------------------------------------------

    def _report_findings(self, findings: pd.DataFrame) -> None:
        """meter_offline findings from the pollers, and their recovery (ends_at)."""
        self.c.alerts.process(findings, self.c.clock.now())

    def _alert_event(self, event: str, alert: Alert) -> None:
        if self.on_alert is not None:
            self.on_alert(event, alert)
