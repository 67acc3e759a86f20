"""Prometheus /metrics: scraped over HTTP and parsed as text exposition format 0.0.4."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from servers import free_port

from collector.writer import ReadingWriter
from meterwatch.config import parse_config
from meterwatch.errors import ConfigError
from meterwatch.metrics import CONTENT_TYPE, MetricsServer
from meterwatch.schema import normalize_readings
from meterwatch.stats import Stats
from storage.spool import Spool

# metric_name{labels} value   (no labels are emitted today; the grammar allows them)
SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (?P<value>[-+]?(\d+(\.\d*)?([eE][-+]?\d+)?|NaN|Inf))$"
)


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
            assert name not in values, f"{name} twice"
            values[name] = float(m["value"])
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
