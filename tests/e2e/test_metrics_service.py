"""/metrics of a running service: every declared metric from the start, per gateway and per sink.

The service runs a small simulated fleet (Modbus gateway ``sim`` and MQTT meters on the embedded
broker) plus a second Modbus gateway ``dead`` that nothing answers, with two alert sinks (MQTT and
a webhook to a local receiver). ``/metrics`` is scraped at the first tick (before any poll ran)
and at every later tick; each scrape is parsed with the Prometheus client library.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meterwatch.config import parse_config
from meterwatch.core.counters import GATEWAY_LABELS, METRICS, SINK_LABELS
from meterwatch.service import Service
from tests.support.fleet import simulated_gateway
from tests.support.servers import free_port

Series = dict[tuple[tuple[str, str], ...], float]


def scrape(url: str) -> dict[str, tuple[str, str, Series]]:
    """name -> (type, HELP, {labels: value}) of every sample family (counters with ``_total``)."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode("utf-8")
    out: dict[str, tuple[str, str, Series]] = {}
    for fam in text_string_to_metric_families(text):
        name = fam.name + ("_total" if fam.type == "counter" else "")
        series = {tuple(sorted(s.labels.items())): s.value for s in fam.samples}
        out[name] = (fam.type, fam.documentation, series)
    return out


@pytest.fixture
def webhook_receiver() -> Iterator[str]:
    """A local HTTP receiver that accepts every POST (an Alertmanager webhook stand-in)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_metrics_of_a_running_service(tmp_path: Path, webhook_receiver: str) -> None:
    metrics_port = free_port()
    cfg = parse_config(
        {
            "clock": {"start": "2026-01-05T00:00:00Z", "speed": 2400},
            "simulator": {
                "enabled": True,
                "seed": 5,
                "residential": 4,
                "commercial": 1,
                "industrial": 1,
                "transformers": 1,
                "mqtt_share": 0.4,
                "modbus": {"host": "127.0.0.1", "port": free_port()},
            },
            "mqtt": {"broker": "embedded", "host": "127.0.0.1", "port": free_port()},
            "collector": {
                "modbus": {
                    "interval": "15m",
                    "gateways": [
                        simulated_gateway(),
                        {
                            "name": "dead",
                            "host": "127.0.0.1",
                            "port": free_port(),  # nothing listens: every read fails
                            "timeout_s": 0.5,
                            "devices": [{"meter_id": "X1", "unit": 1, "model": "eastron-sdm120"}],
                        },
                    ],
                }
            },
            "storage": {"path": str(tmp_path / "store.duckdb")},
            "analytics": {"interval": "1h", "window": "1d"},
            "metrics": {"enabled": True, "host": "127.0.0.1", "port": metrics_port},
            "alerts": {
                "feed": str(tmp_path / "alerts.jsonl"),
                "delivery": {
                    "state_dir": str(tmp_path / "delivery"),
                    "mqtt": {"enabled": True},
                    "webhooks": [{"url": webhook_receiver}],
                },
            },
        }
    )
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    scrapes: list[dict[str, tuple[str, str, Series]]] = []

    def on_tick(service: Service) -> None:
        scrapes.append(scrape(url))

    service = Service(cfg, on_tick=on_tick)
    summary = asyncio.run(service.run(10))
    assert len(scrapes) >= 2
    first, last = scrapes[0], scrapes[-1]
    sinks = {"mqtt", f"webhook:{webhook_receiver}"}
    gateways = {("sim", "modbus"), ("dead", "modbus")}

    for scraped in (first, last):
        for m in METRICS:
            kind, help_text, series = scraped[m.name]
            assert (kind, help_text) == (m.kind, m.help), m.name
            if m.labels == GATEWAY_LABELS:
                expected = {(("gateway", g), ("protocol", p)) for g, p in gateways}
                if m.protocols and "modbus" not in m.protocols:
                    expected = set()  # no DL/T 645 gateway here: HELP and TYPE only
                assert set(series) == expected, m.name
            elif m.labels == SINK_LABELS:
                assert {dict(k)["sink"] for k in series} == sinks, m.name
            elif m.kind == "counter":
                assert set(series) == {()}, m.name  # present, zero or not

    # at the first tick nothing was polled yet: the per-gateway counters are there, at 0
    polls = first["meterwatch_poll_cycles_total"][2]
    assert set(polls.values()) == {0.0}
    assert first["meterwatch_readings_refused_total"][2] == {(): 0.0}

    def gw(scraped: dict[str, tuple[str, str, Series]], name: str, gateway: str) -> float:
        return scraped[name][2][(("gateway", gateway), ("protocol", "modbus"))]

    # after the run: the live gateway polled and read, the dead one failed to connect
    assert gw(last, "meterwatch_poll_cycles_total", "sim") >= 2
    assert gw(last, "meterwatch_meter_requests_total", "sim") > 0
    assert gw(last, "meterwatch_meter_errors_total", "dead") >= 3
    assert gw(last, "meterwatch_gateway_connect_errors_total", "dead") >= 1
    assert gw(last, "meterwatch_meter_offline_events_total", "dead") == 1
    assert last["meterwatch_readings_stored_total"][2][()] > 0
    assert last["meterwatch_mqtt_messages_total"][2][()] > 0
    # the meter_offline alert of X1 reached both sinks
    delivered = last["meterwatch_alert_notifications_delivered_total"][2]
    assert all(v >= 1 for v in delivered.values()), delivered
    # the scraped series add up to the run's totals (the last scrape is a few ticks before stop)
    requests = last["meterwatch_meter_requests_total"][2]
    assert 0 < sum(requests.values()) <= summary.counters["meter_requests"]
    assert summary.counters.get("readings_refused", 0) == 0
