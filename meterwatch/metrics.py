"""Prometheus metrics over HTTP: ``GET /metrics`` in the text exposition format 0.0.4.

A stdlib ``ThreadingHTTPServer`` on a daemon thread (no client library needed). Every
:class:`~meterwatch.core.stats.Stats` counter becomes ``meterwatch_<name>_total`` (``counter``), every
gauge ``meterwatch_<name>`` (``gauge``), plus ``meterwatch_meters_online``. Alert on, e.g.:

* ``increase(meterwatch_readings_refused_total[15m]) > 0`` — readings refused (spool full or
  writer queue full): data is being pushed back to the sources;
* ``meterwatch_spool_oldest_pending_s > 900`` — the store has not taken data for 15 minutes;
* ``meterwatch_spool_depth_bytes / meterwatch_spool_max_bytes > 0.8`` — spool filling up;
* ``increase(meterwatch_alert_notifications_failed_total[1h]) > 0`` — alert notifications a
  sink gave up on (``sink`` label), ``meterwatch_alert_notifications_pending > 0`` for long —
  a sink is down and its outbox is growing.

Alert delivery, one sample per sink (label ``sink``, the sink's name: ``mqtt``, ``smtp``,
``alertmanager``, ``webhook:<url>``), when a dispatcher is configured:
``meterwatch_alert_notifications_delivered_total``, ``…_failed_total`` (given up) and
``meterwatch_alert_notification_retries_total`` count since this process started (a restart
resets them, which Prometheus' ``increase``/``rate`` handle); ``meterwatch_alert_notifications_pending``
is the gauge of rows waiting in the persistent outbox (including ones from earlier runs).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from meterwatch.core.errors import ConfigError
from meterwatch.core.stats import Stats

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "meterwatch_"

#: HELP text for the metrics a user is most likely to alert on; others get a generic line.
HELP = {
    "readings_stored": "Readings the store confirmed written.",
    "readings_spooled": "Readings appended (fsynced) to the durable spool and acknowledged.",
    "readings_drained": "Readings sent from the spool to the store.",
    "readings_refused": "Readings refused (writer queue or spool full); never dropped silently.",
    "spool_refused": "Readings refused because the spool reached storage.spool.max_bytes.",
    "store_errors": "Failed store writes (retried; data kept in the spool or writer).",
    "store_retries": "Retried InfluxDB requests (429, 5xx, connection errors).",
    "store_lines_dead_lettered": "Points InfluxDB refused (400), written to the dead-letter file.",
    "spool_depth_rows": "Readings in the spool waiting for the store.",
    "spool_depth_bytes": "Bytes of readings in the spool waiting for the store.",
    "spool_max_bytes": "storage.spool.max_bytes: the spool refuses new readings past this.",
    "spool_oldest_pending_s": "Age of the oldest reading waiting in the spool [s].",
    "store_write_rate_rows_per_s": "Readings written to the store per second (10 s average).",
    "writer_pending_rows": "Readings in memory, not yet durable.",
    "meters_online": "Meters whose last read succeeded.",
}

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")

#: Per-sink delivery statistics, as ``alerts.delivery.Dispatcher.stats`` returns them.
DeliveryStats = Mapping[str, Mapping[str, int]]

#: Delivery metrics: (metric name, kind, key in the dispatcher's per-sink stats, HELP text).
DELIVERY_METRICS: tuple[tuple[str, str, str, str], ...] = (
    (
        "alert_notifications_delivered_total",
        "counter",
        "delivered",
        "Alert notifications a sink accepted, since this process started.",
    ),
    (
        "alert_notifications_failed_total",
        "counter",
        "failed",
        "Alert notifications given up (retry.give_up_after passed, or refused as not retryable).",
    ),
    (
        "alert_notification_retries_total",
        "counter",
        "retried",
        "Failed delivery attempts that were scheduled for a retry.",
    ),
    (
        "alert_notifications_pending",
        "gauge",
        "pending",
        "Alert notifications waiting in the persistent outbox (delivered at the next attempt).",
    ),
)


def metric_name(name: str) -> str:
    """A valid Prometheus metric name for a stats key."""
    clean = _NAME_BAD.sub("_", name)
    return PREFIX + (clean if not clean[:1].isdigit() else "_" + clean)


def _value(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


def label_value(value: str) -> str:
    """A label value escaped for the text format (backslash, double quote, line feed)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_delivery(delivery: DeliveryStats) -> list[str]:
    """Exposition lines of the per-sink delivery counters and the outbox gauge."""
    out: list[str] = []
    if not delivery:
        return out
    for name, kind, key, help_text in DELIVERY_METRICS:
        full = PREFIX + name
        out.append(f"# HELP {full} {help_text}")
        out.append(f"# TYPE {full} {kind}")
        for sink, counts in sorted(delivery.items()):
            out.append(f'{full}{{sink="{label_value(sink)}"}} {_value(counts.get(key, 0))}')
    return out


def render(stats: Stats, delivery: DeliveryStats | None = None) -> str:
    """The text exposition of ``stats`` and, if given, per-sink ``delivery`` (format 0.0.4)."""
    out: list[str] = []

    def emit(key: str, kind: str, value: float, suffix: str = "") -> None:
        name = metric_name(key) + suffix
        help_text = HELP.get(key, f"MeterWatch {kind} {key}.").replace("\\", "\\\\")
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.append(f"{name} {_value(value)}")

    for key, count in sorted(stats.snapshot().items()):
        emit(key, "counter", count, "_total")
    for key, level in sorted(stats.gauge_snapshot().items()):
        emit(key, "gauge", level)
    emit("meters_online", "gauge", stats.online_count())
    out += render_delivery(delivery or {})
    return "\n".join(out) + "\n"


class MetricsServer:
    """Serves ``render(stats)`` on ``http://host:port/metrics`` from a daemon thread.

    ``delivery`` (e.g. ``Dispatcher.stats``) is called at each scrape for the per-sink alert
    delivery metrics; None leaves them out.
    """

    def __init__(
        self,
        stats: Stats,
        host: str = "127.0.0.1",
        port: int = 9469,
        delivery: Callable[[], DeliveryStats] | None = None,
    ):
        self.stats = stats
        render_fn: Callable[[], str] = lambda: render(  # noqa: E731
            stats, delivery() if delivery is not None else None
        )

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is served")
                    return
                try:
                    body = render_fn().encode("utf-8")
                except Exception as exc:  # a scrape must never take the service down
                    log.exception("rendering metrics failed")
                    self.send_error(500, str(exc))
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # scrapes every 15 s would flood the log

        try:
            self._httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(
                "metrics", [("metrics.port", f"cannot listen on {host}:{port}: {exc}")]
            ) from exc
        self._httpd.daemon_threads = True
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()
        log.info("Prometheus metrics on %s", self.url)

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5.0)
        self._httpd.server_close()
