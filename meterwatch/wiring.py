"""Wiring: every component of `meterwatch run`, built from the config and the registries.

Sources come from the source registry (``collector.<name>``), alert sinks from the sink
registry (``alerts.delivery.<name>``), detectors from the detector registry grouped by cadence.
Nothing here knows a particular source, sink or detector; the service (service.py) starts and
stops what this builds, the scheduler (scheduling.py) runs its jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from meterwatch.alerts.delivery import BrokerConnection, Dispatcher, SinkContext, build_dispatcher
from meterwatch.alerts.http import AlertHttpServer, build_http_server
from meterwatch.alerts.manager import AlertManager
from meterwatch.analytics.incremental import IncrementalValidation
from meterwatch.analytics.registry import history_s
from meterwatch.analytics_worker import AnalyticsSpec, AnalyticsWorkers
from meterwatch.collector.broker import EmbeddedBroker
from meterwatch.collector.sources import (
    PolledSource,
    ServiceSource,
    SimulatedEndpoint,
    Source,
    SourceContext,
    build_sources,
)
from meterwatch.collector.writer import ReadingWriter
from meterwatch.config import Config
from meterwatch.control import ControlServer
from meterwatch.core.clock import Clock
from meterwatch.core.config import secret
from meterwatch.core.registry import RegistrySummary, inspect_registry, load_registry
from meterwatch.core.stats import Stats
from meterwatch.metrics import MetricsServer
from meterwatch.simulators.fleet import Fleet
from meterwatch.simulators.runner import SimulatorRunner, anomaly_specs
from meterwatch.storage.base import ReadingStore, RecordStore
from meterwatch.storage.event_sink import AlertEventSink
from meterwatch.storage.factory import build_store
from meterwatch.storage.spool import Spool

log = logging.getLogger(__name__)


@dataclass
class Components:
    """What `meterwatch run` is made of; built once by :func:`build`."""

    cfg: Config
    clock: Clock
    stats: Stats
    registry: pd.DataFrame
    #: How the registry was loaded: defaulted columns, meters without an area.
    registry_summary: RegistrySummary
    store: ReadingStore
    spool: Spool | None
    writer: ReadingWriter
    alerts: AlertManager
    delivery: Dispatcher | None
    alert_sink: AlertEventSink | None
    #: The analytics (detectors by cadence, streaming detection), in worker processes
    #: (``analytics.workers``) or in the service with 0.
    analytics: AnalyticsWorkers
    #: The service's progress of incremental validation (VEE runs where the analytics run).
    validation: IncrementalValidation | None
    fleet: Fleet | None = None
    simulator: SimulatorRunner | None = None
    broker: EmbeddedBroker | None = None
    metrics: MetricsServer | None = None
    http: AlertHttpServer | None = None
    control: ControlServer | None = None
    sources: list[Source] = field(default_factory=list)

    @property
    def analytics_enabled(self) -> bool:
        """Analytics judge meters against the registry: off without one (ingest only)."""
        return len(self.registry) > 0

    @property
    def pollers(self) -> list[PolledSource]:
        return [s for s in self.sources if isinstance(s, PolledSource)]

    @property
    def service_sources(self) -> list[ServiceSource]:
        return [s for s in self.sources if not isinstance(s, PolledSource)]


def build(cfg: Config, *, listeners: list[Callable[[str, Any], None]] = ()) -> Components:  # type: ignore[assignment]
    """Every component that needs no running event loop (sources are built at start)."""
    stats = Stats()
    clock = Clock(start=cfg.clock.start, speed=cfg.clock.speed)
    fleet = None
    sim = cfg.simulator
    if sim.enabled:
        fleet = Fleet(
            start=cfg.clock.start or clock.now(),
            residential=sim.residential,
            commercial=sim.commercial,
            industrial=sim.industrial,
            transformers=sim.transformers,
            seed=sim.seed,
            mqtt_share=sim.mqtt_share if cfg.collector.mqtt.enabled else 0.0,
            anomalies=anomaly_specs(sim.anomalies),
            step_s=sim.step_s,
        )
        loaded = inspect_registry(fleet.registry, "simulated fleet")
        if sim.registry_out is not None:
            sim.registry_out.parent.mkdir(parents=True, exist_ok=True)
            fleet.registry.to_csv(sim.registry_out, index=False)
    elif cfg.registry.path is not None:
        loaded = load_registry(cfg.registry.path, defaults=cfg.registry.defaults.values())
    else:
        # Ingest needs no registry: every reading is stored (and counted as from an unknown
        # meter); analytics, which judges meters against it, stays off.
        loaded = inspect_registry(pd.DataFrame({"meter_id": pd.Series(dtype=str)}), "no registry")
        log.info("no registry.path: ingest only (readings stored), analytics off")
    registry = loaded.meters
    for line in loaded.summary.lines():
        log.info("registry: %s", line)
    store = build_store(cfg.storage, registry)
    # InfluxDB always behind the durable spool; the embedded store only when configured.
    spool = Spool.from_config(cfg.storage.spool) if cfg.storage.uses_spool else None
    alerts = AlertManager.from_config(cfg.alerts, listeners=list(listeners), meters=registry)
    delivery = build_dispatcher(cfg.alerts.delivery, sink_context(cfg, clock))
    if delivery is not None:
        alerts.listeners.append(delivery)
    # Every alert change also goes to the store (alert_events) through a durable outbox:
    # next to the spool when there is one, else next to the embedded store file.
    alert_sink = None
    if isinstance(store, RecordStore):
        alert_sink = AlertEventSink(store, stats, cfg.storage.alert_events_dir)
        alerts.listeners.append(alert_sink)
    spec = AnalyticsSpec.from_config(cfg, registry)
    analytics = AnalyticsWorkers(
        spec,
        cfg.analytics.workers,
        stats,
        read_tail=lambda start, end: store.read_readings(None, start, end, include_times=True),
    )
    for name in ("interval", "daily"):
        need = history_s(spec.detectors(name))
        if need > cfg.analytics.window:
            log.info(
                "%s detectors declare up to %.0f d of history; analytics.window is %.0f d: "
                "they judge with the history the window holds",
                name,
                need / 86400,
                cfg.analytics.window / 86400,
            )
    validation = None
    if cfg.analytics.validation_interval and isinstance(store, RecordStore):
        validation = IncrementalValidation(
            cfg.vee,
            every_s=cfg.analytics.validation_interval,
            timezone=cfg.billing.timezone or cfg.site.timezone,
        )
    writer = ReadingWriter(
        store,
        stats,
        spool=spool,
        drain_batch_rows=cfg.storage.spool.drain_batch_rows,
        drain_interval_s=cfg.storage.influx.flush_interval if cfg.storage.influx else 1.0,
    )
    components = Components(
        cfg=cfg,
        clock=clock,
        stats=stats,
        registry=registry,
        registry_summary=loaded.summary,
        store=store,
        spool=spool,
        writer=writer,
        alerts=alerts,
        delivery=delivery,
        alert_sink=alert_sink,
        analytics=analytics,
        validation=validation,
        fleet=fleet,
    )
    if fleet is not None:
        mqtt = cfg.collector.mqtt
        components.simulator = SimulatorRunner(
            fleet,
            clock,
            modbus_host=cfg.simulator.modbus.host,
            modbus_port=cfg.simulator.modbus.port,
            mqtt_host=mqtt.host if mqtt.enabled else None,
            mqtt_port=mqtt.port,
            topic_template=mqtt.topic,
            interval_s=cfg.collector.modbus.interval,
        )
    return components


def sink_context(cfg: Config, clock: Clock) -> SinkContext:
    """What alert sinks need: links, the collector's MQTT broker, the service clock."""
    mqtt = cfg.collector.mqtt
    broker = BrokerConnection(
        mqtt.host,
        mqtt.port,
        secret(mqtt.username_env, "collector.mqtt.username_env"),
        secret(mqtt.password_env, "collector.mqtt.password_env"),
    )
    return SinkContext(cfg.alerts.delivery.external_url, broker, clock.now)


def embedded_broker(cfg: Config) -> EmbeddedBroker | None:
    """The embedded MQTT broker, when ``collector.mqtt.broker`` is ``embedded``."""
    mqtt = cfg.collector.mqtt
    if mqtt.enabled and mqtt.broker == "embedded":
        return EmbeddedBroker(mqtt.host, mqtt.port)
    return None


def build_all_sources(c: Components, on_findings: Callable[[pd.DataFrame], Any]) -> list[Source]:
    """Every source the ``collector`` section enables (after the simulator listens)."""
    simulated = {}
    if c.simulator is not None:
        server = c.simulator.modbus
        simulated["modbus"] = SimulatedEndpoint(
            c.cfg.simulator.modbus.host,
            server.port,
            [(d.meter_id, d.unit, d.regmap) for d in server.devices.values()],
        )
    ctx = SourceContext(
        clock=c.clock,
        writer=c.writer,
        stats=c.stats,
        on_findings=on_findings,
        maps=c.cfg.collector.maps,
        simulated=simulated,
    )
    return build_sources(c.cfg.collector, ctx)


def http_server(c: Components) -> AlertHttpServer | None:
    """The engineers' page and API (``alerts.http``), when enabled."""
    if not c.cfg.alerts.http.enabled:
        return None
    store = c.store
    return build_http_server(
        c.cfg.alerts.http,
        c.alerts,
        lambda meter, start, end: store.read_readings([meter], start, end),
        c.clock.now,
    )
