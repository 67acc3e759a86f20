"""The lean ingest process: MQTT → spool → InfluxDB without pandas, pyarrow or DuckDB.

An MQTT-only service into InfluxDB (``collector.mqtt`` the only source, ``storage.backend:
influx``, no registry, no simulator, no engineers' page) does nothing the frame stack is needed
for: no analytics runs without a registry, so no alert is raised. ``meterwatch run`` validates the
whole config as always and then, for such a config, replaces itself (``exec``, same process id,
same signals) with ``python -m meterwatch.ingest``, which imports only the MQTT loop, the payload
codecs, the line-protocol encoder, the spool and the InfluxDB writer (docs/benchmarks.md: 471 MiB
resident before, see the ingest section for after). ``collector.mqtt.lean_ingest: false`` keeps
the full service.

The same components as the service (:class:`~meterwatch.collector.mqtt.MqttCollector`,
:class:`~meterwatch.collector.writer.ReadingWriter`, :class:`~meterwatch.storage.spool.Spool`),
so the same guarantees: a PUBACK only once the readings are in the spool (fsynced), the spool
drained oldest first with retries, repeats skipped and conflicts kept apart
(:mod:`storage.recent`). What the lean process does not do: the control socket, the alert feed,
``collector_health`` snapshots (there is no polled gateway) and the run summary.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from meterwatch.collector.mqtt import MqttConfig, build_source
from meterwatch.collector.sources import SourceContext, load_sources
from meterwatch.collector.writer import ReadingWriter
from meterwatch.core.clock import Clock
from meterwatch.core.errors import MeterWatchError
from meterwatch.core.stats import Stats
from meterwatch.storage.config import StorageConfig
from meterwatch.storage.influx_http import InfluxWriter, connection_settings
from meterwatch.storage.spool import Spool

if TYPE_CHECKING:
    from meterwatch.config import Config

log = logging.getLogger("meterwatch.ingest")

#: Environment variable that carries the validated sections to the lean process.
PLAN_ENV = "MW_INGEST_PLAN"


def lean_plan(cfg: Config, duration: float | None) -> dict[str, Any] | None:
    """The sections the lean process needs, if ``cfg`` is an MQTT-only ingest into InfluxDB;
    None when the full service is needed (or ``collector.mqtt.lean_ingest`` is off)."""
    mqtt = cfg.collector.mqtt
    if not (mqtt.enabled and mqtt.lean_ingest and mqtt.broker == "external"):
        return None
    if cfg.storage.backend != "influx" or cfg.storage.influx is None:
        return None
    if cfg.registry.path is not None or cfg.simulator.enabled or cfg.alerts.http.enabled:
        return None
    if cfg.clock.speed != 1.0:
        return None
    for name in load_sources():
        section = getattr(cfg.collector, name)
        if name != "mqtt" and getattr(section, "enabled", True):
            if getattr(section, "gateways", True):  # a source with something to read
                return None
    return {
        "mqtt": mqtt.model_dump(mode="json"),
        "storage": cfg.storage.model_dump(mode="json"),
        "metrics": cfg.metrics.model_dump(mode="json"),
        "clock_start": cfg.clock.start.isoformat() if cfg.clock.start else None,
        "duration": duration,
    }


def exec_lean(plan: dict[str, Any]) -> None:
    """Replace this process with the lean ingest process (never returns)."""
    env = {**os.environ, PLAN_ENV: json.dumps(plan)}
    # glibc gives every thread that allocates its own heap arena; two are plenty here (the
    # network thread, the event loop, the worker threads of spool and drain) and keep the
    # resident size ~10 MiB lower (docs/benchmarks.md). An operator's own setting wins.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "meterwatch.ingest"], env)


async def run(plan: dict[str, Any]) -> Stats:
    """Ingest until SIGINT/SIGTERM (or ``duration``); then flush, drain briefly and stop."""
    mqtt = MqttConfig.model_validate(plan["mqtt"])
    storage = StorageConfig.model_validate(plan["storage"])
    assert storage.influx is not None
    metrics_cfg = plan["metrics"]
    stats = Stats()
    start = plan.get("clock_start")
    clock = Clock(start=datetime.fromisoformat(start) if start else None, speed=1.0)
    store = InfluxWriter(**connection_settings(storage.influx))
    spool = Spool.from_config(storage.spool)
    # The writer only posts encoded bodies here (ColumnBatch items): write_body is all it needs.
    writer = ReadingWriter(
        store,  # type: ignore[arg-type]
        stats,
        spool=spool,
        drain_batch_rows=storage.spool.drain_batch_rows,
        drain_interval_s=storage.influx.flush_interval,
    )
    metrics = None
    if metrics_cfg.get("enabled"):
        from meterwatch.metrics import MetricsServer

        metrics = MetricsServer(stats, metrics_cfg["host"], int(metrics_cfg["port"]))
        metrics.start()
    ctx = SourceContext(
        clock=clock, writer=writer, stats=stats, on_findings=lambda _: None, columnar=True
    )
    sources = build_source(mqtt, ctx)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    writer.start()
    try:
        for source in sources:
            await source.start()
        log.info(
            "lean ingest: MQTT %s:%d -> spool %s -> InfluxDB %s",
            mqtt.host,
            mqtt.port,
            spool.file,
            storage.influx.url,
        )
        duration = plan.get("duration")
        try:
            await asyncio.wait_for(stop.wait(), timeout=duration)
        except TimeoutError:
            pass
    finally:
        await writer.close()
        for source in sources:
            await source.stop()
        spool.close()
        store.close()
        if metrics is not None:
            metrics.stop()
    return stats


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    plan = json.loads(os.environ.pop(PLAN_ENV, "null") or "null")
    if not isinstance(plan, dict):
        print(
            f"error: {PLAN_ENV} is not set; `meterwatch run` starts this process", file=sys.stderr
        )
        sys.exit(2)
    t0 = time.monotonic()
    try:
        stats = asyncio.run(run(plan))
    except MeterWatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    counts = stats.snapshot()
    print(
        f"MeterWatch lean ingest stopped after {time.monotonic() - t0:.0f} s: "
        f"{counts.get('mqtt_messages', 0):,} MQTT messages, "
        f"{counts.get('readings_spooled', 0):,} readings spooled, "
        f"{counts.get('readings_stored', 0):,} stored, "
        f"{counts.get('readings_duplicate', 0):,} repeats skipped, "
        f"{counts.get('readings_conflicting', 0):,} conflicts kept apart; "
        f"{spool_left(plan)} readings wait in the spool",
        flush=True,
    )


def spool_left(plan: dict[str, Any]) -> int:
    """Readings left in the spool after stopping (sent at the next start)."""
    storage = StorageConfig.model_validate(plan["storage"])
    spool = Spool.from_config(storage.spool)
    try:
        return spool.depth_rows
    finally:
        spool.close()


if __name__ == "__main__":
    main()
