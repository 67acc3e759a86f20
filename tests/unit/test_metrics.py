"""Prometheus /metrics: scraped over HTTP and parsed as text exposition format 0.0.4."""

from __future__ import annotations

import ast
import asyncio
import re
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from meterwatch.alerts.delivery import Dispatcher, Notification
from meterwatch.alerts.delivery.sinks import ALL_EVENTS
from meterwatch.collector.writer import _STORE_COUNTERS, ReadingWriter
from meterwatch.config import parse_config
from meterwatch.console import print_summary
from meterwatch.core.counters import BY_KEY, GATEWAY_LABELS, METRICS, SINK_LABELS, MetricDef
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
    assert values["meterwatch_spool_oldest_pending_seconds"] == 0
    assert values["meterwatch_store_write_rows_per_second"] > 0
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
    # no dispatcher: the delivery metrics are declared (HELP, TYPE) but have no series
    no_sinks, _ = parse_exposition(render(Stats()))
    assert not [k for k in no_sinks if k.startswith("meterwatch_alert_notification")]

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


# ------------------------------------------------- declared metrics: names, HELP, zeros, labels


def families(text: str) -> dict[str, Any]:
    """The exposition parsed by the Prometheus client library: family name -> family."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def family_name(m: MetricDef) -> str:
    return m.name.removesuffix("_total")  # the client library names a counter family without it


def test_every_declared_metric_is_served_from_the_start_with_help_type_and_zeros() -> None:
    stats = Stats()
    stats.declare_gateway("gw1", "modbus")
    stats.declare_gateway("bus 2", "dlt645")
    delivery = {"mqtt": {"delivered": 0, "retried": 0, "failed": 0, "pending": 0}}
    text = render(stats, delivery)
    parse_exposition(text)  # strict line syntax: HELP and TYPE before samples, no duplicates
    fams = families(text)
    assert len(fams) == len(METRICS)
    for m in METRICS:
        fam = fams[family_name(m)]
        assert fam.type == m.kind, m.name
        assert fam.documentation == m.help and len(m.help) > 20, m.name
        samples = {tuple(sorted(s.labels.items())): s.value for s in fam.samples}
        if m.labels == GATEWAY_LABELS:
            expected = {
                (("gateway", gw), ("protocol", proto))
                for gw, proto in (("gw1", "modbus"), ("bus 2", "dlt645"))
                if not m.protocols or proto in m.protocols
            }
            assert samples == dict.fromkeys(expected, 0.0), m.name
        elif m.labels == SINK_LABELS:
            assert samples == {(("sink", "mqtt"),): 0.0}, m.name
        elif m.kind == "counter":
            assert samples == {(): 0.0}, m.name  # a zero counter is exported, not absent
    # the README's alert rule has a series before the first refusal
    assert "meterwatch_readings_refused_total 0" in text.splitlines()
    assert fams["meterwatch_meters_online"].samples[0].value == 0


def test_metric_names_follow_the_prometheus_conventions() -> None:
    for m in METRICS:
        assert re.fullmatch(r"meterwatch_[a-z][a-z0-9_]*[a-z0-9]", m.name), m.name
        assert m.name.endswith("_total") == (m.kind == "counter"), m.name
        # base units spelled out: no "_s"/"_ms"/"_kb" abbreviations
        assert not re.search(r"_(s|ms|sec|secs|kb|mb|kib|mib)(_|$)", m.key), m.name
        assert all(re.fullmatch(r"[a-z][a-z0-9_]*", label) for label in m.labels)


def test_undeclared_names_and_wrong_labels_are_errors() -> None:
    stats = Stats()
    with pytest.raises(KeyError, match="readings_stord"):
        stats.count("readings_stord")
    with pytest.raises(ValueError, match="labels"):
        stats.count("meter_requests")  # a per-gateway counter needs gateway and protocol
    with pytest.raises(ValueError, match="gauge"):
        stats.set_gauge("readings_stored", 1)
    stats.count("meter_requests", 2, gateway="a", protocol="modbus")
    stats.count("meter_requests", 3, gateway="b", protocol="dlt645")
    assert stats.snapshot()["meter_requests"] == 5  # the total, for the summary
    assert stats.total("meter_requests", protocol="dlt645") == 3


def _counted_names() -> tuple[set[str], list[str]]:
    """Names passed as literals to ``<...>stats.count`` / ``set_gauge`` anywhere in the code, and
    the places that pass something else (which this check could not see)."""
    root = Path(__file__).resolve().parents[2]
    names: set[str] = set()
    unseen: list[str] = []
    for pkg in (
        "meterwatch",
        "collector",
        "storage",
        "analytics",
        "alerts",
        "protocols",
        "simulators",
    ):
        for path in (root / pkg).rglob("*.py"):
            if (root / pkg).is_symlink():
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("count", "set_gauge", "declare_gateway")
                    and ast.unparse(node.func.value).split(".")[-1] == "stats"
                ):
                    continue
                if node.func.attr == "declare_gateway":
                    continue
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value)
                elif isinstance(arg, ast.IfExp) and all(
                    isinstance(b, ast.Constant) for b in (arg.body, arg.orelse)
                ):
                    names |= {arg.body.value, arg.orelse.value}  # type: ignore[attr-defined]
                else:
                    unseen.append(f"{path.relative_to(root)}:{node.lineno}")
    return names, unseen


def test_every_counted_name_in_the_code_is_declared_and_every_declaration_is_used() -> None:
    names, unseen = _counted_names()
    assert len(names) > 40  # the scan found the call sites
    assert not (names - set(BY_KEY)), f"counted but not declared: {sorted(names - set(BY_KEY))}"
    # the one name counted through a variable: the writer's mirrored store counters
    mirrored = {name for _, name in _STORE_COUNTERS}
    assert len(unseen) == 1 and unseen[0].startswith("collector/writer.py"), unseen
    served_otherwise = {"meters_online"} | {m.key for m in METRICS if m.labels == SINK_LABELS}
    unused = set(BY_KEY) - names - mirrored - served_otherwise
    assert not unused, f"declared but never counted: {sorted(unused)}"


def test_the_metrics_doc_lists_exactly_the_declared_metrics() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(meterwatch_[a-z0-9_]+)` \| (counter|gauge) \| ([^|]*) \|", doc, re.M)
    documented = {name: (kind, label.strip()) for name, kind, label in rows}
    declared = {m.name: (m.kind, ", ".join(f"`{x}`" for x in m.labels) or "–") for m in METRICS}
    assert documented == declared
