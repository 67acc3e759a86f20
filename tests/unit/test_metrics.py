"""Prometheus /metrics: scraped over HTTP and parsed as text exposition format 0.0.4."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from meterwatch.alerts.delivery import Dispatcher, Notification
from meterwatch.alerts.delivery.sinks import ALL_EVENTS
from meterwatch.collector.writer import ReadingWriter
from meterwatch.config import parse_config
from meterwatch.console import print_summary
from meterwatch.core.errors import ConfigError, DeliveryError
from meterwatch.core.schema import normalize_readings
from meterwatch.core.stats import Stats
from meterwatch.metrics import CONTENT_TYPE, MetricsServer, render
from meterwatch.service import RunSummary
from meterwatch.storage.spool import Spool
from tests.support.servers import free_port

# metric_name{labels} value   (labels: name="escaped value", comma-separated)
SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{[^}]*\})? (?P<value>[-+]?(\d+(\.\d*)?([eE][-+]?\d+)?|NaN|Inf))$"
)
LABEL = re.compile(r'(?P<k>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<v>(?:[^"\\\n]|\\[\\"n])*)"')


def parse_exposition(text: str) -> tuple[dict[str, float], dict[str, str]]:
    """Strict parser for the subset we emit: every sample has HELP and TYPE lines before it."""
    assert text.endswith("\n")
    values: dict[str, float] = {}
    types: dict[str, str] = {}
    helps: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split(" ")[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in {"counter", "gauge", "untyped", "summary", "histogram"}
            types[name] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"not a valid sample line: {line!r}"
            name = m["name"]
            assert name in types and name in helps, f"{name} without TYPE/HELP"
            key = name
            if m["labels"]:
                inner = m["labels"][1:-1]
                pairs = LABEL.findall(inner)
                assert ",".join(f'{k}="{v}"' for k, v in pairs) == inner, f"bad labels: {line!r}"
                key = name + m["labels"]
            assert key not in values, f"{key} twice"
            values[key] = float(m["value"])
    return values, types


def scrape(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.headers["Content-Type"], resp.read().decode("utf-8")


class NullStore:
    def write_readings(self, df: pd.DataFrame) -> int:
        return len(df)

    def read_readings(self, meter_ids=None, start=None, end=None) -> pd.DataFrame:  # noqa: ANN001
        raise NotImplementedError

    def close(self) -> None:
        pass


def test_metrics_reflect_the_spooled_writer(tmp_path: Path) -> None:
    stats = Stats()
    frame = normalize_readings(
        pd.DataFrame(
            {
                "meter_id": ["A", "B", "C"],
                "ts": pd.Timestamp("2026-01-01T00:00:00Z"),
                "power_kw": [1.0, 2.0, 3.0],
            }
        )
    )
    spool = Spool(tmp_path / "s")

    async def run() -> None:
        writer = ReadingWriter(NullStore(), stats, spool=spool, drain_interval_s=0.01)
        writer.start()
        assert writer.submit(frame)
        await writer.flush()
        for _ in range(100):
            if writer.spool_rows == 0:
                break
            await asyncio.sleep(0.01)
        await writer.close()

    asyncio.run(run())
    stats.count("readings_refused", 4)
    stats.seen(["A", "B"], pd.Timestamp("2026-01-01T00:00:00Z").to_pydatetime())
    server = MetricsServer(stats, "127.0.0.1", free_port())
    server.start()
    try:
        ctype, text = scrape(server.url)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.url.replace("/metrics", "/other"), timeout=5)
        assert err.value.code == 404
    finally:
        server.stop()
    assert ctype == CONTENT_TYPE
    values, types = parse_exposition(text)
    assert values["meterwatch_readings_spooled_total"] == 3
    assert values["meterwatch_readings_stored_total"] == 3
    assert values["meterwatch_readings_refused_total"] == 4
    assert types["meterwatch_readings_refused_total"] == "counter"
    assert values["meterwatch_spool_depth_rows"] == 0
    assert values["meterwatch_spool_depth_bytes"] == 0
    assert values["meterwatch_spool_oldest_pending_s"] == 0
    assert values["meterwatch_store_write_rate_rows_per_s"] > 0
    assert values["meterwatch_meters_online"] == 2
    assert types["meterwatch_spool_depth_rows"] == "gauge"


def test_metrics_port_in_use_is_a_config_error_and_config_defaults() -> None:
    cfg = parse_config({"registry": {"path": "meters.csv"}})
    assert (cfg.metrics.enabled, cfg.metrics.host) == (False, "127.0.0.1")
    first = MetricsServer(Stats(), "127.0.0.1", free_port())
    try:
        with pytest.raises(ConfigError, match="metrics.port"):
            MetricsServer(Stats(), "127.0.0.1", first.port)
    finally:
        first.stop()


class _Sink:
    """A delivery sink that fails its first ``fail`` attempts (fault injection)."""

    events = ALL_EVENTS

    def __init__(self, name: str, fail: int = 0, retryable: bool = True):
        self.name, self.fail, self.retryable = name, fail, retryable

    def send(self, note: Notification) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise DeliveryError(self.name, "injected failure", retryable=self.retryable)

    def close(self) -> None:
        pass


def _record(alert_id: str) -> dict[str, object]:
    return {
        "id": alert_id,
        "fingerprint": f"fp-{alert_id}",
        "type": "phase_break",
        "severity": "critical",
        "meter_id": "I0001",
        "status": "open",
        "starts_at": "2026-01-05T04:00:00Z",
        "updated_at": "2026-01-05T04:00:00Z",
        "summary": "s",
        "evidence": {},
    }


def test_delivery_counts_per_sink_on_metrics_and_in_the_summary(tmp_path: Path) -> None:
    now = [1_000_000.0]
    ok, down = _Sink("ok"), _Sink('webhook:http://h/"x"', fail=10**6)
    refused = _Sink("smtp", fail=1, retryable=False)
    d = Dispatcher(tmp_path / "d", [ok, down, refused], initial_s=1.0, clock=lambda: now[0])
    for i in range(3):
        d.enqueue("opened", _record(f"a{i}"))
    d.run_once()  # ok: 3 delivered; down: 1 retried, 3 pending; smtp: 1 failed, 2 delivered
    now[0] += 5.0
    d.run_once()  # down: a second retry
    server = MetricsServer(Stats(), "127.0.0.1", free_port(), delivery=d.stats)
    server.start()
    try:
        _, text = scrape(server.url)
    finally:
        server.stop()
    values, types = parse_exposition(text)
    down_label = '{sink="webhook:http://h/\\"x\\""}'

    def v(name: str, sink: str) -> float:
        return values[f"meterwatch_{name}{sink}"]

    assert [
        v("alert_notifications_delivered_total", s)
        for s in ('{sink="ok"}', down_label, '{sink="smtp"}')
    ] == [3, 0, 2]
    assert v("alert_notifications_failed_total", '{sink="smtp"}') == 1
    assert v("alert_notification_retries_total", down_label) == 2
    assert v("alert_notifications_pending", down_label) == 3
    assert v("alert_notifications_pending", '{sink="ok"}') == 0
    assert types["meterwatch_alert_notifications_pending"] == "gauge"
    assert types["meterwatch_alert_notifications_delivered_total"] == "counter"
    assert "meterwatch_alert" not in render(Stats())  # no dispatcher: no delivery metrics

    # the closing summary shows the same numbers, one row per sink
    out = Console(record=True, width=200)
    print_summary(
        out,
        RunSummary(
            wall_seconds=1.0,
            service_start=datetime(2026, 1, 5, tzinfo=UTC),
            service_end=datetime(2026, 1, 5, 1, tzinfo=UTC),
            meters=1,
            meters_online=1,
            counters={},
            alerts_by_type={},
            open_alerts=0,
            delivery=d.stats(),
        ),
    )
    shown = out.export_text()
    assert (
        "alert delivery to ok" in shown and "3 delivered, 0 retried, 0 failed, 0 pending" in shown
    )
    assert "0 delivered, 2 retried, 0 failed, 3 pending (sent at next start)" in shown
    assert "2 delivered, 0 retried, 1 failed, 0 pending" in shown
