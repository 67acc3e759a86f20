"""`meterwatch run`: wires collect → store → detect → alert on one asyncio loop."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from meterwatch.alerts.delivery import Dispatcher, build_dispatcher
from meterwatch.alerts.http import AlertHttpServer, build_http_server
from meterwatch.alerts.manager import CLOCK_HEARTBEAT_S, AlertManager, record_clock
from meterwatch.alerts.model import Alert
from meterwatch.analytics.base import Detector
from meterwatch.analytics.equipment import STREAMING_CLASSES
from meterwatch.analytics.rules import PhaseBreak, VoltageLoss
from meterwatch.analytics.suite import default_detectors, run_detectors
from meterwatch.collector.broker import EmbeddedBroker
from meterwatch.collector.dlt645 import (
    Dlt645Device,
    Dlt645GatewayPoller,
    SerialSettings,
    SerialTransport,
)
from meterwatch.collector.modbus import (
    ModbusDevice,
    ModbusGatewayPoller,
    failing_meters,
    make_client,
)
from meterwatch.collector.mqtt import MqttCollector
from meterwatch.collector.writer import ReadingWriter
from meterwatch.config import Config
from meterwatch.core.catalogue import ALERT_CATEGORIES
from meterwatch.core.clock import Clock
from meterwatch.core.registry import check_registry, load_registry
from meterwatch.core.stats import Stats
from meterwatch.metrics import MetricsServer
from meterwatch.protocols.register_map import load_map
from meterwatch.simulators.fleet import Fleet
from meterwatch.simulators.runner import SimulatorRunner, anomaly_specs
from meterwatch.storage.base import RecordStore
from meterwatch.storage.embedded import EmbeddedStore
from meterwatch.storage.event_sink import AlertEventSink
from meterwatch.storage.factory import build_store
from meterwatch.storage.measurements import GatewaySource, health_frame
from meterwatch.storage.spool import Spool

log = logging.getLogger(__name__)


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
    """Builds every component from the config, runs them, and stops them in a safe order."""

    def __init__(self, cfg: Config, *, on_alert: Any = None, on_tick: Any = None):
        self.cfg = cfg
        self.on_alert = on_alert
        self.on_tick = on_tick
        self.stats = Stats()
        self.clock = Clock(start=cfg.clock.start, speed=cfg.clock.speed)
        self.fleet: Fleet | None = None
        self.simulator: SimulatorRunner | None = None
        self.broker: EmbeddedBroker | None = None
        self.mqtt: MqttCollector | None = None
        self.pollers: list[ModbusGatewayPoller | Dlt645GatewayPoller] = []
        self.detectors: list[Detector] = default_detectors(cfg.analytics.detectors)
        # Theft ranking and area line loss are day-scale analyses and the costliest: they run
        # on their own, slower schedule so the hourly run keeps its cadence.
        theft = {t for t, c in ALERT_CATEGORIES.items() if c == "theft"}
        self.daily_detectors = [d for d in self.detectors if set(d.alert_types) <= theft]
        self.interval_detectors = [d for d in self.detectors if d not in self.daily_detectors]
        self.streaming: list[Detector] = [
            d
            for d in self.detectors
            if isinstance(d, (VoltageLoss, PhaseBreak, *STREAMING_CLASSES))
        ]
        # Last readings per meter for streaming rules that need several (see _stream_detect).
        self._stream_tail: pd.DataFrame | None = None
        self._jobs: set[asyncio.Task[Any]] = set()
        self._stopping = False
        sim = cfg.simulator
        if sim.enabled:
            self.fleet = Fleet(
                start=cfg.clock.start or self.clock.now(),
                residential=sim.residential,
                commercial=sim.commercial,
                industrial=sim.industrial,
                transformers=sim.transformers,
                seed=sim.seed,
                mqtt_share=sim.mqtt_share if cfg.mqtt.enabled else 0.0,
                anomalies=anomaly_specs(sim.anomalies),
                step_s=sim.step_s,
            )
            self.registry = check_registry(self.fleet.registry, "simulated fleet")
            if sim.registry_out is not None:
                sim.registry_out.parent.mkdir(parents=True, exist_ok=True)
                self.fleet.registry.to_csv(sim.registry_out, index=False)
        else:
            assert cfg.registry.path is not None
            self.registry = load_registry(cfg.registry.path)
        self.store = build_store(cfg.storage, self.registry)
        # InfluxDB always behind the durable spool; the embedded store only when configured.
        self.spool = (
            Spool(cfg.storage.spool.path, cfg.storage.spool.max_bytes)
            if cfg.storage.uses_spool
            else None
        )
        self.metrics: MetricsServer | None = None
        self.alerts = AlertManager.from_config(
            cfg.alerts, listeners=[self._alert_event], meters=self.registry
        )
        # Alert delivery (MQTT, webhooks, Alertmanager, e-mail) through a persistent outbox.
        self.delivery: Dispatcher | None = build_dispatcher(cfg.alerts.delivery, cfg.mqtt)
        if self.delivery is not None:
            self.alerts.listeners.append(self.delivery)
        # Every alert change also goes to the store (alert_events) through a durable outbox:
        # next to the spool when there is one, else next to the embedded store file.
        self.alert_sink: AlertEventSink | None = None
        if isinstance(self.store, RecordStore):
            outbox = cfg.storage.spool.path if cfg.storage.uses_spool else cfg.storage.path.parent
            self.alert_sink = AlertEventSink(self.store, self.stats, outbox / "alert-events")
            self.alerts.listeners.append(self.alert_sink)
        self.poll_counts: Counter[str] = Counter()  # poll cycles per poller (collector_health)
        # Per meter: validated_readings are written up to here (exclusive interval start).
        self._validated_until: pd.Series | None = None
        self.alerts_http: AlertHttpServer | None = None
        self.writer = ReadingWriter(
            self.store,
            self.stats,
            spool=self.spool,
            drain_batch_rows=cfg.storage.spool.drain_batch_rows,
            drain_interval_s=cfg.storage.influx.flush_interval if cfg.storage.influx else 1.0,
            listeners=[self._stream_detect],
        )

    # -- lifecycle ----------------------------------------------------------------------

    async def run(
        self, duration_s: float | None = None, stop: asyncio.Event | None = None
    ) -> RunSummary:
        stop = stop or asyncio.Event()
        wall0 = time.monotonic()
        start = self.clock.now()
        await self._start()
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
        return RunSummary(
            wall_seconds=time.monotonic() - wall0,
            service_start=start,
            service_end=self.clock.now(),
            meters=len(self.registry),
            meters_online=self.stats.online_count(),
            counters=self.stats.snapshot(),
            alerts_by_type=dict(self.alerts.counts_by_type()),
            open_alerts=len(self.alerts.open_alerts()),
            extra={
                "failing_meters": failing_meters(self.stats),
                # Readings left for the next start (store unreachable at shutdown); None: no spool.
                "spool_pending_rows": self.spool.depth_rows if self.spool is not None else None,
                "validated_rows_written": self.stats.snapshot().get("validated_rows_written", 0),
                "alert_events_stored": self.stats.snapshot().get("alert_events_stored", 0),
                "alert_events_pending": self.alert_sink.pending if self.alert_sink else 0,
                "health_rows_written": self.stats.snapshot().get("health_rows_written", 0),
            },
            delivery=self.delivery.stats() if self.delivery is not None else {},
        )

    def _record_clock(self, running: bool) -> None:
        """Record service time next to the feed: CLI actions act at it on a simulated clock."""
        simulated = self.clock.start is not None or self.clock.speed != 1.0
        try:
            record_clock(
                self.alerts.state_dir,
                self.clock.now(),
                speed=self.clock.speed,
                simulated=simulated,
                running=running,
            )
        except OSError as exc:
            log.warning("cannot record the service clock in %s: %s", self.alerts.state_dir, exc)

    async def _start(self) -> None:
        cfg = self.cfg
        self.writer.start()
        if self.alert_sink is not None:
            self.alert_sink.start()
        if cfg.mqtt.enabled and cfg.mqtt.broker == "embedded":
            self.broker = EmbeddedBroker(cfg.mqtt.host, cfg.mqtt.port)
            await self.broker.start()
        interval = cfg.collector.modbus.interval
        if self.fleet is not None:
            self.simulator = SimulatorRunner(
                self.fleet,
                self.clock,
                modbus_host=cfg.simulator.modbus.host,
                modbus_port=cfg.simulator.modbus.port,
                mqtt_host=cfg.mqtt.host if cfg.mqtt.enabled else None,
                mqtt_port=cfg.mqtt.port,
                topic_template=cfg.mqtt.topic,
                interval_s=interval,
            )
        if cfg.mqtt.enabled:
            tls = cfg.mqtt.tls
            self.mqtt = MqttCollector(
                host=cfg.mqtt.host,
                port=cfg.mqtt.port,
                topic_template=cfg.mqtt.topic,
                subscriptions=[(s.topic, s.codec) for s in cfg.mqtt.subscriptions],
                tls_ca=tls.ca_file if tls else None,
                tls_cert=tls.cert_file if tls else None,
                tls_key=tls.key_file if tls else None,
                protocol=cfg.mqtt.protocol,
                session_expiry_s=cfg.mqtt.session_expiry,
                receive_maximum=cfg.mqtt.receive_maximum,
                writer=self.writer,
                stats=self.stats,
                client_id=cfg.mqtt.client_id,
                qos=cfg.mqtt.qos,
                username=os.environ.get(cfg.mqtt.username_env) if cfg.mqtt.username_env else None,
                password=os.environ.get(cfg.mqtt.password_env) if cfg.mqtt.password_env else None,
                dead_letter=cfg.mqtt.dead_letter,
                max_payload_bytes=cfg.mqtt.max_payload_bytes,
                clock=self.clock,
            )
            self.mqtt.start()
            # Subscribe before simulated meters publish, so the demo loses nothing at start.
            await asyncio.to_thread(self.mqtt.connected.wait, 10.0)
        if self.simulator is not None:
            await self.simulator.start()
        if cfg.collector.modbus.enabled:
            self.pollers = list(self._build_pollers())
        if cfg.collector.dlt645.enabled:
            self.pollers.extend(self._build_dlt645_pollers())

        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.scheduler.add_listener(self._job_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR)
        wall_interval = self.clock.wall_seconds(interval)
        now = datetime.now(UTC)
        for poller in self.pollers:
            # Each poll group runs at its own interval (gateway or device-level `interval`).
            poller_wall = self.clock.wall_seconds(poller.interval_s or interval)
            self.scheduler.add_job(
                self._poll,
                "interval",
                args=[poller, poller_wall],
                seconds=poller_wall,
                next_run_time=now,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
                id=f"poll:{poller.name}",
                name=f"poll {poller.name}",
            )
        analytics_wall = self.clock.wall_seconds(cfg.analytics.interval)
        self.scheduler.add_job(
            self._analyze,
            "interval",
            seconds=analytics_wall,
            next_run_time=now + timedelta(seconds=analytics_wall),
            max_instances=1,
            coalesce=True,
            id="analytics",
            name="analytics",
        )
        daily_wall = self.clock.wall_seconds(cfg.analytics.daily_interval)
        self.scheduler.add_job(
            self._analyze_daily,
            "interval",
            seconds=daily_wall,
            next_run_time=now + timedelta(seconds=daily_wall),
            max_instances=1,
            coalesce=True,
            id="analytics-daily",
            name="analytics (daily: theft, line loss)",
        )
        if isinstance(self.store, EmbeddedStore) and cfg.storage.retention_days:
            self.scheduler.add_job(
                self._retention,
                "interval",
                seconds=self.clock.wall_seconds(cfg.storage.retention_interval),
                next_run_time=now,
                max_instances=1,
                coalesce=True,
                id="retention",
                name="retention",
            )
        for key, job, every in (
            ("validation", self._validate, cfg.analytics.validation_interval),
            ("health", self._health, cfg.storage.health_interval),
        ):
            if every and isinstance(self.store, RecordStore):
                wall = self.clock.wall_seconds(every)
                self.scheduler.add_job(
                    job,
                    "interval",
                    seconds=wall,
                    next_run_time=now + timedelta(seconds=wall),
                    max_instances=1,
                    coalesce=True,
                    id=key,
                    name=key,
                )
        if cfg.metrics.enabled:
            self.metrics = MetricsServer(
                self.stats,
                cfg.metrics.host,
                cfg.metrics.port,
                delivery=self.delivery.stats if self.delivery is not None else None,
            )
            self.metrics.start()
        if self.delivery is not None:
            self.delivery.seed([a.to_json() for a in self.alerts.list(status="active")])
            self.delivery.start()
        if cfg.alerts.http.enabled:
            self.alerts_http = build_http_server(
                cfg.alerts.http,
                self.alerts,
                lambda meter, start, end: self.store.read_readings([meter], start, end),
                self.clock.now,
            )
            self.alerts.listeners.append(self.alerts_http)
            self.alerts_http.start()
        self.scheduler.start()
        log.info(
            "running: %d meters, Modbus every %.0f s (%.2f s wall), analytics every %.0f s",
            len(self.registry),
            interval,
            wall_interval,
            cfg.analytics.interval,
        )

    async def _stop(self) -> None:
        """Stop in an order that loses nothing that was served: sources first, store last."""
        self._stopping = True
        for poller in self.pollers:
            poller.stopping = True
        # Let running jobs finish (APScheduler's shutdown would cancel them mid-request: a read
        # served by the meter but never stored, or an analytics run half applied).
        if self._jobs:
            await asyncio.gather(*list(self._jobs), return_exceptions=True)
        if getattr(self, "scheduler", None) is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.simulator is not None:
            await self.simulator.stop()
            await self._drain_mqtt()
        await self.writer.close()
        # One last pass over everything stored: an episode that ended after the last scheduled
        # run (runs are coalesced when they take longer than the interval) is still reported.
        try:
            await self.analyze_once()
        except Exception:
            log.exception("final analytics run at stop failed")
        # Validated readings up to the last completed interval, a last health snapshot, and
        # the alert events of this run, before the store closes.
        if self.cfg.analytics.validation_interval:
            await self.validate_once()
        if self.cfg.storage.health_interval:
            await self.write_health()
        if self.alert_sink is not None:
            await self.alert_sink.close()
        if self.mqtt is not None:
            await asyncio.sleep(0.2)  # let the last acknowledgements go out
            await asyncio.to_thread(self.mqtt.stop)
        for poller in self.pollers:
            await poller.close()
        failing = failing_meters(self.stats)
        if failing:
            log.warning("meters with failed reads (errors/requests): %s", "; ".join(failing))
        if self.alerts_http is not None:
            self.alerts_http.stop()
        if self.delivery is not None:  # before the broker: the MQTT sink may use it
            await asyncio.to_thread(self.delivery.stop)
        if self.broker is not None:
            await self.broker.stop()
        self.alerts.close()  # signed audit checkpoint
        if self.spool is not None:
            self.spool.close()
        if self.metrics is not None:
            self.metrics.stop()
        self.store.close()

    async def _drain_mqtt(self, timeout_s: float = 10.0) -> None:
        """Wait until the collector has received every message the broker acknowledged."""
        if self.mqtt is None or self.simulator is None or self.simulator.mqtt is None:
            return
        target = len(self.simulator.mqtt.acked)
        deadline = time.monotonic() + timeout_s
        while (
            self.stats.snapshot().get("mqtt_messages", 0) < target and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.05)

    # -- components ---------------------------------------------------------------------

    def _report_findings(self, findings: pd.DataFrame) -> None:
        """meter_offline findings from the pollers, and their recovery (ends_at)."""
        self.alerts.process(findings, self.clock.now())

    def _build_pollers(self) -> list[ModbusGatewayPoller]:
        """One poller per (gateway, interval group); the groups of a gateway share its client."""
        cfg = self.cfg
        mb = cfg.collector.modbus
        pollers = []
        for gw in mb.gateways:
            groups: dict[float, list[ModbusDevice]] = {}
            port = gw.port
            gw_interval = gw.interval or mb.interval
            if gw.devices == "simulator":
                assert self.simulator is not None
                port = self.simulator.modbus.port
                for dev in self.simulator.modbus.devices.values():
                    groups.setdefault(gw_interval, []).append(
                        ModbusDevice(dev.meter_id, dev.unit, dev.regmap)
                    )
            else:
                for d in gw.devices:
                    groups.setdefault(d.interval or gw_interval, []).append(
                        ModbusDevice(d.meter_id, d.unit, load_map(d.model, cfg.collector.maps))
                    )
            client, address = make_client(
                gw.transport,
                host=gw.host,
                port=port,
                serial_port=gw.serial_port,
                baudrate=gw.baudrate,
                parity=gw.parity,
                stopbits=gw.stopbits,
                timeout_s=gw.timeout_s,
            )
            for group_interval, devices in groups.items():
                name = gw.name if len(groups) == 1 else f"{gw.name}@{group_interval:g}s"
                pollers.append(
                    ModbusGatewayPoller(
                        name,
                        gw.host,
                        port,
                        devices,
                        clock=self.clock,
                        writer=self.writer,
                        stats=self.stats,
                        timeout_s=gw.timeout_s,
                        pause_s=gw.pause_s,
                        offline_after=mb.offline_after,
                        backoff_cap_s=mb.backoff_cap,
                        client=client,
                        address=address,
                        busy_retries=gw.busy_retries,
                        busy_delay_s=gw.busy_delay_s,
                        interval_s=group_interval,
                        align=mb.align if gw.align is None else gw.align,
                        on_findings=self._report_findings,
                    )
                )
        return pollers

    def _build_dlt645_pollers(self) -> list[Dlt645GatewayPoller]:
        """DL/T 645 meters behind serial device servers or on local serial ports, grouped by
        interval like Modbus; the groups of one serial port share its one open port."""
        dc = self.cfg.collector.dlt645
        pollers = []
        for gw in dc.gateways:
            link = None
            if gw.transport == "serial" and gw.serial_port:
                link = SerialTransport(
                    SerialSettings(
                        gw.serial_port,
                        baudrate=gw.baudrate,
                        parity=gw.parity,
                        bytesize=gw.bytesize,
                        stopbits=gw.stopbits,
                    )
                )
            gw_interval = gw.interval or dc.interval
            groups: dict[float, list[Dlt645Device]] = {}
            for d in gw.devices:
                groups.setdefault(d.interval or gw_interval, []).append(
                    Dlt645Device(d.meter_id, d.address)
                )
            for group_interval, devices in groups.items():
                name = gw.name if len(groups) == 1 else f"{gw.name}@{group_interval:g}s"
                pollers.append(
                    Dlt645GatewayPoller(
                        name,
                        gw.host,
                        gw.port,
                        devices,
                        clock=self.clock,
                        writer=self.writer,
                        stats=self.stats,
                        timeout_s=gw.timeout_s,
                        pause_s=gw.pause_s,
                        offline_after=dc.offline_after,
                        backoff_cap_s=dc.backoff_cap,
                        interval_s=group_interval,
                        align=dc.align if gw.align is None else gw.align,
                        on_findings=self._report_findings,
                        link=link,
                        read_clock=dc.read_clock if gw.read_clock is None else gw.read_clock,
                        clock_timezone=gw.clock_timezone or dc.clock_timezone,
                    )
                )
        return pollers

    async def _tracked(self, job: Any) -> None:
        """Run a job coroutine unless stopping, registered so that _stop can wait for it."""
        if self._stopping:
            job.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._jobs.add(task)
        try:
            await job
        finally:
            self._jobs.discard(task)

    async def _poll(
        self, poller: ModbusGatewayPoller | Dlt645GatewayPoller, wall_interval: float
    ) -> None:
        await self._tracked(self._poll_once(poller, wall_interval))

    async def _poll_once(
        self, poller: ModbusGatewayPoller | Dlt645GatewayPoller, wall_interval: float
    ) -> None:
        await poller.poll_cycle(wall_interval)
        self.stats.count("poll_cycles")
        self.poll_counts[poller.name] += 1

    async def _retention(self) -> None:
        await self._tracked(self.apply_retention())

    async def apply_retention(self) -> int:
        """Delete embedded-store readings older than ``storage.retention_days``; rows deleted."""
        if not isinstance(self.store, EmbeddedStore):
            return 0
        deleted = await asyncio.to_thread(self.store.apply_retention, self.clock.now())
        self.stats.count("retention_deleted", deleted)
        return deleted

    async def _analyze(self) -> None:
        await self._tracked(self.analyze_once())

    async def _validate(self) -> None:
        await self._tracked(self.validate_once())

    async def _health(self) -> None:
        await self._tracked(self.write_health())

    async def validate_once(self) -> int:
        """VEE over the intervals completed since the last run into ``validated_readings``.

        Same validation as ``meterwatch export billing`` (stored manual edits kept). An interval
        is complete once it ended ``vee.max_read_spacing_intervals`` intervals ago and every
        meter read during the last ``analytics.validation_interval`` can interpolate a boundary
        at or after its end (``last_interpolable_boundary``), so a window end never cuts a gap
        and leaves it ``missing`` where the next read lets it be estimated; the first run
        starts at the first stored read. Rows written, counted in ``validated_rows_written``; a
        failure is logged and counted (``validation_errors``) and its window retried next run.
        """
        from meterwatch.analytics.vee import (
            apply_edits,
            empty_validated,
            last_interpolable_boundary,
        )
        from meterwatch.cli_billing import validate_readings, vee_params

        store = self.store
        if not isinstance(store, RecordStore):
            return 0
        cfg = self.cfg
        step = pd.Timedelta(seconds=cfg.vee.interval)
        now = pd.Timestamp(self.clock.now())
        every = pd.Timedelta(seconds=cfg.analytics.validation_interval or 86400.0)
        done = self._validated_until
        start: Any = None if done is None else done.min()
        try:
            p = vee_params(cfg)
            history = pd.Timedelta(days=max(p.like_day_search_days, p.usage_history_days))
            since = (now - every if start is None else start) - history
            readings = await asyncio.to_thread(
                functools.partial(store.read_readings, None, since, None, include_times=True)
            )
            if readings.empty:
                return 0
            # Each meter up to its latest boundary it can close (a read on it, or reads
            # around it within the spacing), so no gap is cut in two and left missing; meters
            # not heard from this period (or with no such boundary) up to where every heard
            # meter is complete, so they do not hold the window back.
            bound = last_interpolable_boundary(
                readings,
                now - step * cfg.vee.max_read_spacing_intervals,
                interval_s=int(cfg.vee.interval),
                max_read_spacing_intervals=cfg.vee.max_read_spacing_intervals,
            )
            bound = bound[bound >= now - every]
            if bound.empty:
                return 0
            meters = pd.Index(self.registry["meter_id"]).union(bound.index)
            ends = bound.reindex(meters).fillna(bound.min())
            if done is None:  # a meter's first interval starts after its first read
                first = readings.groupby("meter_id")["ts"].min().reindex(meters)
                first = first.fillna(readings["ts"].min()).clip(lower=now - every)
                done = first.dt.ceil(step)
            done = done.reindex(meters).fillna(done.min())
            ends = ends.where(ends >= done, done)
            start, end = done.min(), ends.max()
            if end <= start:
                return 0
            registry = self.registry

            def run_groups() -> pd.DataFrame:
                # One VEE run per distinct window end (a handful of boundaries), each on its
                # meters only: a grid running past a meter's end would join the gap before it
                # with one after and leave both unestimated.
                parts = []
                for group_end, group in ends.groupby(ends):
                    ids = group.index
                    if group_end <= done[ids].min():
                        continue  # nothing new for these meters
                    parts.append(
                        validate_readings(
                            readings[readings["meter_id"].isin(ids)],
                            registry[registry["meter_id"].isin(ids)],
                            cfg,
                            start=start - history,
                            end=group_end,
                            now=now,
                        ).intervals
                    )
                return pd.concat(parts, ignore_index=True) if parts else empty_validated()

            iv = await asyncio.to_thread(run_groups)
            iv = iv[(iv["interval_start"] >= iv["meter_id"].map(done)).to_numpy()]
            iv = iv.reset_index(drop=True)
            if iv.empty:
                return 0
            stored = await asyncio.to_thread(
                store.read_validated_readings, None, start + step, end + step
            )
            iv = apply_edits(iv, stored[stored["quality"] == "edited"])
            await asyncio.to_thread(store.write_validated_readings, iv)
        except Exception:
            self.stats.count("validation_errors")
            log.exception("validation from %s failed; retried at the next run", start)
            return 0
        self._validated_until = ends
        self.stats.count("validation_runs")
        self.stats.count("validated_rows_written", len(iv))
        return len(iv)

    async def write_health(self) -> int:
        """One ``collector_health`` snapshot (per poller, MQTT, writer); rows written."""
        store = self.store
        if not isinstance(store, RecordStore):
            return 0
        polled = {d.meter_id for p in self.pollers for d in p.devices}
        sources = [
            GatewaySource(
                p.name,
                "dlt645" if isinstance(p, Dlt645GatewayPoller) else "modbus",
                [d.meter_id for d in p.devices],
                self.poll_counts[p.name],
            )
            for p in self.pollers
        ]
        if self.mqtt is not None:
            mqtt_meters = [m for m in self.stats.meters if m not in polled]
            sources.append(GatewaySource("mqtt", "mqtt", mqtt_meters))
        frame = health_frame(self.clock.now(), sources, self.stats, spool=self.spool is not None)
        try:
            written = await asyncio.to_thread(store.write_collector_health, frame)
        except Exception as exc:
            self.stats.count("health_write_errors")
            log.warning("collector_health snapshot not stored: %s", exc)
            return 0
        self.stats.count("health_rows_written", written)
        return written

    async def _analyze_daily(self) -> None:
        await self._tracked(self.analyze_once(self.daily_detectors, tick=False))

    async def analyze_once(
        self, detectors: list[Detector] | None = None, *, tick: bool = True
    ) -> None:
        """Run detectors (default: the interval set) over the recent window; apply findings.

        ``tick`` advances the alert lifecycle (flap hold, verification, SLA, silences), which
        counts analytics intervals, so only the interval run does it.
        """
        detectors = self.interval_detectors if detectors is None else detectors
        now = self.clock.now()
        start = now - timedelta(seconds=self.cfg.analytics.window)
        # With collected_at/device_ts: the clock check judges each read against its receipt.
        readings = await asyncio.to_thread(
            functools.partial(self.store.read_readings, None, start, None, include_times=True)
        )
        findings = await asyncio.to_thread(run_detectors, detectors, readings, self.registry)
        # Off the loop: the alert manager takes a file lock and fsyncs the feed and audit log.
        await asyncio.to_thread(self.alerts.process, findings, now)
        if tick:
            await asyncio.to_thread(self.alerts.tick, now)
            self.stats.count("analytics_runs")
        else:
            self.stats.count("analytics_daily_runs")

    def _stream_detect(self, frame: pd.DataFrame) -> None:
        """Equipment rules on every stored batch: a fault is alerted within one poll.

        Rules that need several consecutive readings (``min_readings``, e.g. 4 for unbalance)
        see the batch together with each meter's last ``min_readings - 1`` readings kept from
        earlier batches, so the alert comes with the reading that completes the episode, not at
        the next analytics run. Kept readings older than that many read spacings
        (``vee.interval`` x ``vee.max_read_spacing_intervals``) before the batch are dropped, so
        a meter back from a long gap starts afresh.
        """
        keep = max((int(getattr(d, "min_readings", 1)) for d in self.streaming), default=1) - 1
        tail = self._stream_tail
        if keep > 0 and tail is not None and len(tail) and len(frame):
            vee = self.cfg.vee
            horizon = pd.Timedelta(
                seconds=(keep + 1) * vee.interval * vee.max_read_spacing_intervals
            )
            newest = pd.to_datetime(frame["ts"], utc=True).max()
            tail = tail[pd.to_datetime(tail["ts"], utc=True) >= newest - horizon]
            window = pd.concat([tail, frame], ignore_index=True)
        else:
            window = frame
        if keep > 0 and len(window):
            ordered = window.assign(_t=pd.to_datetime(window["ts"], utc=True)).sort_values(
                ["meter_id", "_t"], kind="stable"
            )
            self._stream_tail = (
                ordered.groupby("meter_id", sort=False).tail(keep).drop(columns="_t")
            ).reset_index(drop=True)
        findings = run_detectors(self.streaming, window, self.registry)
        if not findings.empty:
            # Only conditions still present: an ended one-reading episode is left to analytics.
            self.alerts.process(
                findings[findings["ends_at"].isna()], self.clock.now(), streaming=True
            )

    def _alert_event(self, event: str, alert: Alert) -> None:
        if self.on_alert is not None:
            self.on_alert(event, alert)

    def _job_event(self, event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_MAX_INSTANCES:
            if not self.stats.snapshot().get("cycles_overrun"):
                log.warning(
                    "%s: a cycle did not fit its interval; later overruns are counted in the summary",
                    event.job_id,
                )
            self.stats.count("cycles_overrun")
        elif event.exception is not None:
            self.stats.count("job_errors")
            log.error("job %s failed: %r", event.job_id, event.exception)
