"""The declared counters and gauges of :class:`~meterwatch.core.stats.Stats`: key, kind, HELP, labels.

One list, like the alert catalogue: every name a component counts (``stats.count``) or sets
(``stats.set_gauge``) is declared here, so ``/metrics`` exports each one from the start (a
counter at 0 before its first event: an alert rule on it has a series to judge) with real HELP
text, and a typo is an error instead of a silently new series. Exported names follow the
Prometheus conventions: ``meterwatch_`` prefix, ``_total`` on counters, base units in the name
(``_seconds``, ``_bytes``).

Per-gateway metrics carry the labels ``gateway`` (the poller name, as the ``collector_health``
tag: ``collector.*.gateways[].name``, ``name@<interval>s`` for an interval group) and
``protocol`` (``modbus``, ``dlt645``); a poller declares its series when it is built
(:meth:`Stats.declare_gateway`), so they are exported at 0 before the first poll. Alert delivery
metrics carry ``sink`` (served from the dispatcher's own counts, see ``meterwatch.metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PREFIX = "meterwatch_"
GATEWAY_LABELS: tuple[str, ...] = ("gateway", "protocol")
SINK_LABELS: tuple[str, ...] = ("sink",)


@dataclass(frozen=True)
class MetricDef:
    """One declared metric. ``key`` is the name components use with :class:`Stats`."""

    key: str
    kind: Literal["counter", "gauge"]
    help: str
    labels: tuple[str, ...] = ()
    #: For per-gateway metrics: the protocols that have it (empty: every protocol).
    protocols: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The exported Prometheus name."""
        return PREFIX + self.key + ("_total" if self.kind == "counter" else "")


def _c(key: str, help_text: str, labels: tuple[str, ...] = (), **kw: tuple[str, ...]) -> MetricDef:
    return MetricDef(key, "counter", help_text, labels, **kw)


def _g(key: str, help_text: str, labels: tuple[str, ...] = ()) -> MetricDef:
    return MetricDef(key, "gauge", help_text, labels)


GW = GATEWAY_LABELS

METRICS: tuple[MetricDef, ...] = (
    # -- polled collectors (Modbus, DL/T 645), per gateway
    _c("poll_cycles", "Poll cycles run over a gateway's meters.", GW),
    _c(
        "poll_cycles_overrun",
        "Poll cycles skipped: due while the gateway's previous cycle was still going (it took "
        "longer than its interval), or while the service's event loop was held up.",
        GW,
    ),
    _c(
        "meter_requests",
        "Read requests sent to meters (Modbus: one per register block; DL/T 645: one per meter "
        "read).",
        GW,
    ),
    _c(
        "meter_errors",
        "Failed meter reads: timeouts, exception replies, broken frames, and every due meter "
        "of an unreachable gateway.",
        GW,
    ),
    _c("meter_offline_events", "Meters that went offline (offline_after failed reads).", GW),
    _c("meter_online_events", "Offline meters that answered again.", GW),
    _c(
        "gateway_connect_errors",
        "Failed attempts to open the gateway connection or serial port.",
        GW,
    ),
    _c(
        "gateway_reconnects",
        "Connections closed after a broken link or garbled reply, reopened for the next request.",
        GW,
    ),
    _c(
        "modbus_busy_retries",
        "Modbus reads retried after exception 6 (slave device busy).",
        GW,
        protocols=("modbus",),
    ),
    _c(
        "dlt645_clock_errors",
        "DL/T 645 meter clock reads that failed (the values were still stored, device_ts empty).",
        GW,
        protocols=("dlt645",),
    ),
    _c(
        "dlt645_clock_ambiguous",
        "DL/T 645 meter clock times that do not exist or repeat in clock_timezone (DST change).",
        GW,
        protocols=("dlt645",),
    ),
    _c(
        "alert_callback_errors",
        "meter_offline findings a collector could not hand to the alert manager.",
    ),
    # -- MQTT intake
    _c("mqtt_connects", "Connections (and reconnections) to the MQTT broker."),
    _c("mqtt_disconnects", "Lost connections to the MQTT broker (reconnected with backoff)."),
    _c("mqtt_messages", "MQTT messages received."),
    _c("mqtt_readings", "Readings decoded from MQTT messages."),
    _c("mqtt_dead_letters", "MQTT payloads written to the dead-letter file (malformed, oversize)."),
    _c(
        "mqtt_refused",
        "MQTT messages the writer refused (spool or queue full), held unacknowledged.",
    ),
    _c("mqtt_refused_retries", "Offers of held MQTT messages to the writer after a refusal."),
    _c(
        "mqtt_held_overflow",
        "MQTT messages left with the broker because too many were held (fetched again later).",
    ),
    _c("mqtt_overflow_reconnects", "Reconnects made to fetch MQTT messages left with the broker."),
    _c(
        "mqtt_qos0_dropped",
        "QoS 0 MQTT messages dropped past the held bound while the writer refused (QoS 0 has no "
        "redelivery).",
    ),
    _c(
        "mqtt_stale_acks_skipped",
        "Acknowledgements not sent because the message came on an older broker connection (the "
        "broker sends it again).",
    ),
    _g("mqtt_held_messages", "MQTT messages held unacknowledged, waiting for the writer."),
    # -- writer, spool, store
    _c("readings_stored", "Readings the store confirmed written."),
    _c(
        "readings_duplicate",
        "Readings the store already held with the same values (MQTT redelivery, spool replay); "
        "stored once.",
    ),
    _c(
        "readings_conflicting",
        "Readings with other values for a meter and time the store already held; kept apart "
        "(reading_conflicts), never written over the stored one.",
    ),
    _c(
        "readings_unknown_meter",
        "Stored readings of meters the registry does not list (ingest keeps them; analytics "
        "ignores them).",
    ),
    _c(
        "stream_rows_skipped",
        "Stored readings the streaming detectors did not see because they fell behind (left to "
        "the scheduled analytics run).",
    ),
    _c("readings_spooled", "Readings appended (fsynced) to the durable spool and acknowledged."),
    _c("readings_drained", "Readings sent from the spool to the store."),
    _c(
        "readings_refused",
        "Readings refused (writer queue or spool full): pushed back to the source, never "
        "dropped silently.",
    ),
    _c("spool_refused", "Readings refused because the spool reached storage.spool.max_bytes."),
    _c("spool_full_retries", "Spool appends retried because the spool was full."),
    _c("spool_errors", "Failed spool appends (the readings stay in the writer and are retried)."),
    _c("store_errors", "Failed store writes (retried; the data stays in the spool or writer)."),
    _c("store_retries", "Retried InfluxDB requests (429, 5xx, connection errors)."),
    _c(
        "store_lines_dead_lettered",
        "Points InfluxDB refused (400), written to the dead-letter file with its reason.",
    ),
    _c("store_rows_skipped_empty", "Readings not written because they carry no quantity."),
    _c("store_rows_invalid", "Readings not written because meter_id or ts is missing."),
    _c("writer_errors", "Writer flushes that failed unexpectedly (the writer keeps running)."),
    _c(
        "readings_unbuildable",
        "Submitted readings that could not be turned into a frame (not acknowledged; MQTT "
        "dead-letters them).",
    ),
    _c(
        "readings_lost_at_close",
        "Accepted readings that could not be made durable when the writer stopped (never "
        "acknowledged upstream).",
    ),
    _g("writer_pending_rows", "Readings in the writer's memory, not yet durable."),
    _g("spool_depth_rows", "Readings in the spool waiting for the store."),
    _g("spool_depth_bytes", "Bytes of readings in the spool waiting for the store."),
    _g("spool_max_bytes", "storage.spool.max_bytes: the spool refuses new readings past this."),
    _g("spool_oldest_pending_seconds", "Age of the oldest reading waiting in the spool."),
    _g(
        "store_write_rows_per_second",
        "Readings the store took per second, averaged over 10 s (for alerts prefer "
        "rate(meterwatch_readings_stored_total[5m])).",
    ),
    _g("meters_online", "Meters whose last read succeeded (or that published a reading)."),
    # -- service jobs
    _c(
        "cycles_overrun",
        "Scheduled job runs skipped: due while the previous run was still going, or while the "
        "service's event loop was held up.",
    ),
    _c("job_errors", "Scheduled job runs that raised an error."),
    _c("analytics_runs", "Detector runs (analytics.interval)."),
    _c("analytics_daily_runs", "Runs of the day-scale detectors (analytics.daily_interval)."),
    _c(
        "analytics_worker_restarts",
        "Analytics worker processes replaced after one died; the run it was doing is retried.",
    ),
    _c(
        "analytics_worker_failed_runs",
        "Analytics runs given up: the worker died during the run and during its retry, or was "
        "stopped first (the next run judges the same readings).",
    ),
    _c("validation_runs", "VEE runs that stored validated readings."),
    _c("validation_errors", "VEE runs that failed (retried at the next run)."),
    _c("validated_rows_written", "Validated intervals written to validated_readings."),
    _c("health_rows_written", "collector_health rows written."),
    _c("health_write_errors", "collector_health snapshots the store refused (not retried)."),
    _c("retention_deleted", "Readings deleted by storage.retention_days."),
    _c("alert_events_queued", "Alert changes queued in the alert-event outbox."),
    _c("alert_events_stored", "Alert changes written to alert_events."),
    _c(
        "alert_events_store_errors",
        "Failed alert_events writes (retried; the events stay in the outbox).",
    ),
    _c(
        "alert_events_failed",
        "Alert changes that could not be queued for alert_events (still in the alert feed).",
    ),
    # -- alert delivery, per sink (from the dispatcher)
    _c("alert_notifications_delivered", "Alert notifications a sink accepted.", SINK_LABELS),
    _c(
        "alert_notifications_failed",
        "Alert notifications given up (retry.give_up_after passed, or refused as not retryable).",
        SINK_LABELS,
    ),
    _c(
        "alert_notification_retries",
        "Failed delivery attempts that were scheduled for a retry.",
        SINK_LABELS,
    ),
    _g(
        "alert_notifications_pending",
        "Alert notifications waiting in the persistent outbox (delivered at the next attempt).",
        SINK_LABELS,
    ),
)

BY_KEY: dict[str, MetricDef] = {m.key: m for m in METRICS}
if len(BY_KEY) != len(METRICS):  # pragma: no cover - a declaration mistake
    raise RuntimeError("a metric is declared twice")


def gateway_metrics(protocol: str) -> list[MetricDef]:
    """The per-gateway metrics a gateway of ``protocol`` has."""
    return [
        m
        for m in METRICS
        if m.labels == GATEWAY_LABELS and (not m.protocols or protocol in m.protocols)
    ]
