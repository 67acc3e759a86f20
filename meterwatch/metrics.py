"""Prometheus metrics over HTTP: ``GET /metrics`` in the text exposition format 0.0.4.

A stdlib ``ThreadingHTTPServer`` on a daemon thread (no client library needed). Every metric
declared in :mod:`meterwatch.core.counters` is served from the start, with its HELP text: a
counter as ``meterwatch_<key>_total`` (0 until its first event, so an alert rule on it has a
series), a gauge as ``meterwatch_<key>`` once it has a value (spool gauges only with a spool).
Per-gateway counters carry ``gateway`` and ``protocol`` labels (one series per poller, created
when it is built); alert delivery metrics carry ``sink``, when a dispatcher is configured
(``mqtt``, ``smtp``, ``alertmanager``, ``webhook:<url>``). A metric without any series yet (no
DL/T 645 gateway, no sink) still has its HELP and TYPE lines. Alert on, e.g.:

* ``increase(meterwatch_readings_refused_total[15m]) > 0`` — readings refused (spool full or
  writer queue full): data is being pushed back to the sources;
* ``meterwatch_spool_oldest_pending_seconds > 900`` — the store has not taken data for 15 minutes;
* ``meterwatch_spool_depth_bytes / meterwatch_spool_max_bytes > 0.8`` — spool filling up;
* ``sum by (gateway) (increase(meterwatch_meter_errors_total[1h]))
  / sum by (gateway) (increase(meterwatch_meter_requests_total[1h])) > 0.2`` — a gateway whose
  reads fail;
* ``increase(meterwatch_alert_notifications_failed_total[1h]) > 0`` — alert notifications a
  sink gave up on (``sink`` label), ``meterwatch_alert_notifications_pending > 0`` for long —
  a sink is down and its outbox is growing.

Counters count since this process started (a restart resets them, which Prometheus'
``increase``/``rate`` handle); ``meterwatch_alert_notifications_pending`` is the gauge of rows
waiting in the persistent outbox (including ones from earlier runs).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from meterwatch.core.counters import METRICS, SINK_LABELS
from meterwatch.core.errors import ConfigError
from meterwatch.core.stats import Labels, Stats

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Per-sink delivery statistics, as ``alerts.delivery.Dispatcher.stats`` returns them.
DeliveryStats = Mapping[str, Mapping[str, int]]

#: Delivery metric key -> key in the dispatcher's per-sink stats.
DELIVERY_KEYS: dict[str, str] = {
    "alert_notifications_delivered": "delivered",
    "alert_notifications_failed": "failed",
    "alert_notification_retries": "retried",
    "alert_notifications_pending": "pending",
}


def _value(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


def label_value(value: str) -> str:
    """A label value escaped for the text format (backslash, double quote, line feed)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample(name: str, labels: Labels, value: float) -> str:
    if not labels:
        return f"{name} {_value(value)}"
    inner = ",".join(f'{k}="{label_value(v)}"' for k, v in labels)
    return f"{name}{{{inner}}} {_value(value)}"


def render(stats: Stats, delivery: DeliveryStats | None = None) -> str:
    """The text exposition of every declared metric (format 0.0.4).

    ``delivery``: per-sink counts of the alert dispatcher (None: no dispatcher, no sink series).
    """
    counters = stats.snapshot()
    gauges = stats.gauge_snapshot() | {"meters_online": float(stats.online_count())}
    out: list[str] = []
    for m in METRICS:
        out.append(f"# HELP {m.name} {m.help.replace(chr(92), chr(92) * 2)}")
        out.append(f"# TYPE {m.name} {m.kind}")
        if m.labels == SINK_LABELS:
            key = DELIVERY_KEYS[m.key]
            for sink, counts in sorted((delivery or {}).items()):
                out.append(_sample(m.name, (("sink", sink),), counts.get(key, 0)))
        elif m.labels:
            for labels, v in sorted(stats.series(m.key).items()):
                out.append(_sample(m.name, labels, v))
        elif m.kind == "counter":
            out.append(_sample(m.name, (), counters.get(m.key, 0)))
        elif m.key in gauges:
            out.append(_sample(m.name, (), gauges[m.key]))
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
