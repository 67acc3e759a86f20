"""The InfluxQL queries of docs/queries.md and of the Grafana dashboard, run against demo data.

The service runs the demo's fleet (simulated meters over Modbus TCP and MQTT, a phase break,
validation and health snapshots) for a simulated working morning into a real InfluxDB 1.x
(Debian's influxd) through ``storage.backend: influx``. Then every InfluxQL block of the docs
must return data with the columns its ``-- columns:`` line names, and every query of the
dashboard (Grafana's macros substituted) must run; each panel must show the demo's data.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meterwatch.config import parse_config
from meterwatch.service import Service
from tests.support.fleet import simulated_gateway
from tests.support.servers import RunningServer, free_port, influxdb

ROOT = Path(__file__).resolve().parents[2]
DB = "meterwatch"
#: The demo's first day (config.yaml clock.start), the range the docs' queries use.
DAY = ("2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z")


def influxql(server: RunningServer, q: str) -> dict[str, Any]:
    """One statement's result (``{"series": [...]}``); an error fails with the server's text."""
    url = f"{server.url}/query?" + urllib.parse.urlencode({"db": DB, "q": q, "epoch": "s"})
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = json.load(resp)
    results = body.get("results", [])
    assert len(results) == 1, body
    assert "error" not in results[0], f"{results[0]['error']}\n{q}"
    return dict(results[0])


def doc_queries(lang: str) -> list[str]:
    text = (ROOT / "docs" / "queries.md").read_text(encoding="utf-8")
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def expected_columns(query: str) -> list[str]:
    m = re.search(r"^-- columns: (.+)$", query, re.M)
    assert m, f"no '-- columns:' line in\n{query}"
    return [c.strip() for c in m.group(1).split(",")]


def select_columns(query: str) -> list[str]:
    """``time`` and the names of a dashboard query's SELECT list (its aliases or identifiers)."""
    select = re.search(r"SELECT (.*?) FROM ", query, re.S)
    assert select, query
    names = []
    for item in select.group(1).split(", "):
        alias = re.search(r' AS "([^"]+)"$', item)
        names.append(alias.group(1) if alias else item.strip().strip('"'))
    return ["time", *names]


def grafana(query: str) -> str:
    """Grafana's macros as Grafana would expand them for the demo's day, every area and meter."""
    return (
        query.replace("$timeFilter", f"time >= '{DAY[0]}' AND time <= '{DAY[1]}'")
        .replace("$__interval", "15m")
        .replace("$area", ".*")
        .replace("$meter", ".*")
    )


def check_result(result: dict[str, Any], columns: list[str], query: str) -> int:
    """Rows returned; every series has exactly ``columns``, and each column has a value in some
    series (a single-phase meter's L2 and L3 are empty, a three-phase meter's are not)."""
    series = result.get("series", [])
    for s in series:
        assert s["columns"] == columns, f"{s['columns']} != {columns}\n{query}"
    if series:
        for i, col in enumerate(columns):
            filled = any(row[i] is not None for s in series for row in s["values"])
            assert filled, f"{col} empty in every series\n{query}"
    return sum(len(s["values"]) for s in series)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Any]]:
    tmp = tmp_path_factory.mktemp("demo")
    with influxdb(tmp) as server:
        body = urllib.parse.urlencode({"q": f'CREATE DATABASE "{DB}"'}).encode()
        urllib.request.urlopen(f"{server.url}/query", data=body, timeout=10).read()
        cfg = parse_config(
            {
                "clock": {"start": DAY[0], "speed": 2400},
                "simulator": {
                    "enabled": True,
                    "seed": 11,
                    "residential": 6,
                    "commercial": 2,
                    "industrial": 2,
                    "transformers": 2,
                    "mqtt_share": 0.3,
                    "modbus": {"host": "127.0.0.1", "port": free_port()},
                    "anomalies": [{"type": "phase_break", "at": "2h", "duration": "2h"}],
                },
                "collector": {
                    "mqtt": {
                        "broker": "embedded",
                        "host": "127.0.0.1",
                        "port": free_port(),
                        "dead_letter": str(tmp / "dead.jsonl"),
                    },
                    "modbus": {
                        "interval": "15m",
                        "gateways": [
                            simulated_gateway(),
                        ],
                    },
                },
                "storage": {
                    "backend": "influx",
                    "influx": {"flavor": "v1", "url": server.url, "database": DB},
                    "spool": {"path": str(tmp / "spool")},
                    "health_interval": "1h",
                },
                "analytics": {"interval": "1h", "window": "2d", "validation_interval": "2h"},
                "alerts": {"feed": str(tmp / "alerts.jsonl")},
            }
        )
        summary = asyncio.run(Service(cfg).run(12))
        assert summary.counters["readings_stored"] > 0
        assert summary.counters.get("validated_rows_written", 0) > 0
        assert summary.counters.get("alert_events_stored", 0) > 0
        assert summary.counters.get("health_rows_written", 0) > 0
        yield server, summary


def test_every_influxql_query_of_the_docs_returns_the_demo_data(
    demo: tuple[RunningServer, Any],
) -> None:
    server, _ = demo
    queries = doc_queries("influxql")
    assert len(queries) >= 10
    for q in queries:
        rows = check_result(influxql(server, q), expected_columns(q), q)
        assert rows > 0, f"no data from\n{q}"


def test_the_grafana_dashboard_is_importable_and_its_queries_show_the_demo_data(
    demo: tuple[RunningServer, Any],
) -> None:
    server, _ = demo
    dash = json.loads((ROOT / "docs" / "grafana" / "meterwatch.json").read_text(encoding="utf-8"))
    # importable: the data source is an input chosen at import, every query refers to it
    (ds_input,) = dash["__inputs"]
    assert (ds_input["name"], ds_input["type"], ds_input["pluginId"]) == (
        "DS_INFLUXDB",
        "datasource",
        "influxdb",
    )
    ds = {"type": "influxdb", "uid": "${DS_INFLUXDB}"}
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not (area & cells) and g["x"] + g["w"] <= 24, f"panel {p['title']} overlaps"
        cells |= area
    # the measurements the docs promise a panel for
    measurements = {
        m for p in panels for t in p["targets"] for m in re.findall(r'FROM "(\w+)"', t["query"])
    }
    assert measurements == {"readings", "validated_readings", "alert_events", "collector_health"}

    for var in dash["templating"]["list"]:
        assert var["datasource"] == ds
        values = influxql(server, grafana(var["query"]))["series"][0]["values"]
        assert len(values) >= 2, var["name"]  # two areas; every meter

    for p in panels:
        assert p["datasource"] == ds, p["title"]
        shown = 0
        for t in p["targets"]:
            assert t["datasource"] == ds and t["rawQuery"] is True, p["title"]
            q = grafana(t["query"])
            assert not re.search(r"\$\w", q), f"unexpanded variable in {q}"
            shown += check_result(influxql(server, q), select_columns(q), q)
        # A target for a quality the demo did not produce (edited intervals) may be empty; the
        # panel as a whole shows the demo's data.
        assert shown > 0, f"panel {p['title']} shows nothing"
