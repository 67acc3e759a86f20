"""Alerts HTTP API (token auth, list/get/ack/resolve, SSE) and the web page in headless Chromium."""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import queue
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from meterwatch.alerts.http import AlertHttpServer, build_http_server
from meterwatch.alerts.manager import AlertManager
from meterwatch.config import AlertHttpConfig
from meterwatch.core.errors import ConfigError
from meterwatch.core.schema import FINDING_COLUMNS
from tests.support.servers import log_tail, require_binary, stop_process

NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)
TOKEN = "t0ken-for-tests"


def findings(*rows: dict[str, Any]) -> pd.DataFrame:
    base = {"transformer_id": "TA01", "ends_at": pd.NaT}
    df = pd.DataFrame([{**base, **r} for r in rows])
    for c in ("starts_at", "ends_at"):
        df[c] = pd.to_datetime(df[c], utc=True)
    return df[list(FINDING_COLUMNS)]


def fake_readings(calls: list[tuple[str, datetime, datetime]]) -> Callable[..., pd.DataFrame]:
    """Readings the store would return: 15-minute data, L2 voltage lost from 04:00."""

    def readings(meter_id: str, start: datetime, end: datetime) -> pd.DataFrame:
        calls.append((meter_id, start, end))
        ts = pd.date_range(pd.Timestamp(start).ceil("15min"), end, freq="15min")
        hours = ts.hour.to_numpy() + ts.minute.to_numpy() / 60
        lost = ts >= pd.Timestamp("2026-01-05T04:00Z")
        return pd.DataFrame(
            {
                "meter_id": meter_id,
                "ts": ts,
                "power_kw": 2.0 + np.sin(hours / 24 * 2 * np.pi),
                "voltage_l1_v": 231.0,
                "voltage_l2_v": np.where(lost, 3.0, 229.0),
                "voltage_l3_v": np.nan,  # a quantity the meter does not report
            }
        )

    return readings


@pytest.fixture
def manager(tmp_path: Path) -> AlertManager:
    am = AlertManager(tmp_path / "alerts.jsonl")
    am.process(
        findings(
            {
                "type": "phase_break",
                "severity": "critical",
                "meter_id": "I0001",
                "starts_at": "2026-01-05T04:00Z",
                "summary": "phase L2 lost: U2 = 3.0 V < 60 % of 230 V with I2 = 0 A",
                "evidence": {
                    "rule": "phase_break",
                    "phase": "l2",
                    "u_v": 3.0,
                    "limit_v": 138.0,
                    "u3_v": float("nan"),  # not reported by the meter
                },
            },
            {
                "type": "register_decrease",
                "severity": "major",
                "meter_id": "I0002",
                "starts_at": "2026-01-05T09:00Z",
                "summary": "import register fell by 50.0 kWh",
                "evidence": {"rule": "register_decrease", "delta_kwh": -50.0},
            },
        ),
        NOW,
    )
    return am


@pytest.fixture
def reading_calls() -> list[tuple[str, datetime, datetime]]:
    return []


@pytest.fixture
def server(
    manager: AlertManager, reading_calls: list[tuple[str, datetime, datetime]]
) -> Iterator[AlertHttpServer]:
    srv = AlertHttpServer(
        manager, fake_readings(reading_calls), token=TOKEN, port=0, now=lambda: NOW
    )
    manager.listeners.append(srv)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def call(
    srv: AlertHttpServer,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    token: str | None = TOKEN,
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        resp = conn.getresponse()
        raw = resp.read()
        data = (
            json.loads(raw)
            if resp.getheader("Content-Type", "").startswith("application/json")
            else raw
        )
        return resp.status, data
    finally:
        conn.close()


def ids_of(manager: AlertManager) -> dict[str, str]:
    return {a.meter_id or "": a.id for a in manager.list()}


# -- API ---------------------------------------------------------------------------------------


def test_api_refuses_requests_without_the_token(
    server: AlertHttpServer, manager: AlertManager
) -> None:
    alert_id = ids_of(manager)["I0001"]
    assert call(server, "GET", "/api/alerts", token=None)[0] == 401
    assert call(server, "GET", "/api/alerts", token="wrong")[0] == 401
    assert call(server, "GET", f"/api/alerts/{alert_id}", token=None)[0] == 401
    assert call(server, "GET", "/api/stream", token=None)[0] == 401
    status, _ = call(server, "POST", f"/api/alerts/{alert_id}/ack", {"by": "eve"}, token=None)
    assert status == 401
    assert manager.get(alert_id).status == "open"  # nothing changed
    assert server.requests_unauthorized == 5
    # the page itself carries no data and loads without a token (it asks for one)
    status, page = call(server, "GET", "/", token=None)
    assert status == 200 and b"MeterWatch" in page


def test_list_filters_and_get(server: AlertHttpServer, manager: AlertManager) -> None:
    status, data = call(server, "GET", "/api/alerts")
    assert status == 200 and data["count"] == 2
    assert {a["meter_id"] for a in data["alerts"]} == {"I0001", "I0002"}
    _, one = call(server, "GET", "/api/alerts?meter_id=I0002")
    assert [a["type"] for a in one["alerts"]] == ["register_decrease"]
    _, typed = call(server, "GET", "/api/alerts?type=phase_break&status=open")
    assert [a["meter_id"] for a in typed["alerts"]] == ["I0001"]
    _, none = call(server, "GET", "/api/alerts?since=2026-01-06T00:00:00Z")
    assert none["count"] == 0
    assert call(server, "GET", "/api/alerts?status=closed")[0] == 400
    assert call(server, "GET", "/api/alerts?since=yesterday")[0] == 400
    status, err = call(server, "GET", "/api/alerts?meter=I0001")
    assert status == 400 and "meter" in err["error"]
    assert data["now"] == "2026-01-05T12:00:00Z"  # the server's (service) time, for SLA states
    # the history: resolved (verified included), newest change first, at most `limit`
    manager.resolve(ids_of(manager)["I0002"], by="li", now=NOW)
    _, history = call(server, "GET", "/api/alerts?status=resolved&limit=5")
    assert [a["meter_id"] for a in history["alerts"]] == ["I0002"]
    _, newest = call(server, "GET", "/api/alerts?limit=1")
    assert newest["count"] == 1
    assert call(server, "GET", "/api/alerts?limit=0")[0] == 400
    assert call(server, "GET", "/api/alerts?limit=all")[0] == 400

    alert_id = ids_of(manager)["I0001"]
    status, alert = call(server, "GET", f"/api/alerts/{alert_id}")
    assert status == 200
    assert alert["evidence"]["u_v"] == 3.0 and alert["lifecycle"] == "open"
    assert alert["evidence"]["u3_v"] is None  # NaN → null: the body is valid JSON
    status, err = call(server, "GET", "/api/alerts/nosuchid")
    assert status == 404 and "nosuchid" in err["error"]


def test_ack_then_resolve(server: AlertHttpServer, manager: AlertManager) -> None:
    alert_id = ids_of(manager)["I0001"]
    status, err = call(server, "POST", f"/api/alerts/{alert_id}/ack", {"note": "no name"})
    assert status == 400 and "by" in err["error"]
    status, alert = call(
        server, "POST", f"/api/alerts/{alert_id}/ack", {"by": "li.wei", "note": "crew sent"}
    )
    assert status == 200 and alert["status"] == "acknowledged"
    stored = manager.get(alert_id)
    assert (stored.acknowledged_by, stored.ack_note, stored.acknowledged_at) == (
        "li.wei",
        "crew sent",
        NOW,
    )
    status, err = call(server, "POST", f"/api/alerts/{alert_id}/ack", {"by": "li.wei"})
    assert status == 409 and err["status"] == "acknowledged"
    status, alert = call(
        server, "POST", f"/api/alerts/{alert_id}/resolve", {"by": "li.wei", "note": "fuse replaced"}
    )
    assert status == 200 and alert["status"] == "resolved"
    assert manager.get(alert_id).resolved_by == "li.wei"
    _, active = call(server, "GET", "/api/alerts?status=active")
    assert [a["meter_id"] for a in active["alerts"]] == ["I0002"]
    assert call(server, "POST", "/api/alerts/nosuchid/resolve", {"by": "x"})[0] == 404


def test_meter_readings_for_the_plot(
    server: AlertHttpServer, reading_calls: list[tuple[str, datetime, datetime]]
) -> None:
    status, data = call(
        server, "GET", "/api/meters/I0001/readings?hours=6&end=2026-01-05T06:00:00Z"
    )
    assert status == 200
    assert reading_calls[-1] == (
        "I0001",
        datetime(2026, 1, 5, 0, tzinfo=UTC),
        datetime(2026, 1, 5, 6, tzinfo=UTC),
    )
    assert data["count"] == len(data["ts"]) == 25
    assert data["ts"][0] == "2026-01-05T00:00:00Z"
    assert data["columns"]["voltage_l2_v"][15:17] == [229.0, 3.0]  # 03:45 healthy, 04:00 lost
    assert set(data["columns"]["voltage_l3_v"]) == {None}  # NaN → null, valid JSON
    assert call(server, "GET", "/api/meters/I0001/readings?hours=-1")[0] == 400
    assert call(server, "GET", "/api/meters/I0001/readings?hours=abc")[0] == 400


def test_sse_stream_gets_one_event_per_change(
    server: AlertHttpServer, manager: AlertManager
) -> None:
    events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.request("GET", "/api/stream", headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"

    def read() -> None:
        name, data = "", ""
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and name:
                events.put((name, json.loads(data)))
                name, data = "", ""

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 5
    while server.sse_clients == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.sse_clients == 1
    ids = ids_of(manager)
    manager.acknowledge(ids["I0001"], by="ops", note="", now=NOW)
    manager.resolve(ids["I0002"], by="ops", note="bad CT wiring fixed", now=NOW)
    got = [events.get(timeout=5) for _ in range(2)]
    assert [(name, body["alert"]["id"]) for name, body in got] == [
        ("acknowledged", ids["I0001"]),
        ("resolved", ids["I0002"]),
    ]
    assert got[1][1]["alert"]["resolve_note"] == "bad CT wiring fixed"
    assert events.empty() and server.sse_dropped == 0
    conn.close()


def test_http_config_without_token_env_is_refused(
    manager: AlertManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MW_TEST_ALERTS_TOKEN", raising=False)
    cfg = AlertHttpConfig(enabled=True, port=0, token_env="MW_TEST_ALERTS_TOKEN")
    with pytest.raises(ConfigError, match="MW_TEST_ALERTS_TOKEN"):
        build_http_server(cfg, manager, fake_readings([]))


# -- the page in headless Chromium ----------------------------------------------------------


class Chromium:
    """Headless Chromium driven over the DevTools protocol (CDP) on a loopback port."""

    def __init__(self, workdir: Path):
        binary = require_binary(("chromium", "/usr/bin/chromium"), "chromium")
        self.workdir = workdir
        self.log = workdir / "chromium.log"
        profile = workdir / "profile"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1400,900",
                    f"--user-data-dir={profile}",
                    "--remote-debugging-address=127.0.0.1",
                    "--remote-debugging-port=0",
                    "about:blank",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                stop_process(self.process)
                pytest.fail(f"chromium did not start its DevTools port\n{log_tail(self.log)}")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as resp:
            targets = json.load(resp)
        page = next(t for t in targets if t["type"] == "page")
        from websockets.sync.client import connect

        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self._ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=15))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise AssertionError(f"CDP {method}: {reply['error']}")
                return dict(reply["result"])

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        dom = self.evaluate("document.body.innerText")
        raise AssertionError(
            f"page never satisfied {expression!r} (last {value!r}); page text:\n{dom}"
        )

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            stop_process(self.process)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    browser = Chromium(tmp_path)
    try:
        yield browser
    finally:
        browser.close()


def test_web_page_lists_alerts_with_evidence_plot_and_live_updates(
    server: AlertHttpServer, manager: AlertManager, chromium: Chromium, tmp_path: Path
) -> None:
    ids = ids_of(manager)
    chromium.send("Page.enable")
    chromium.send("Page.navigate", url=f"{server.url}/?token={TOKEN}")
    # the rows, rendered by the page's script from the API
    rows = chromium.wait_for(
        "document.querySelectorAll('tr.alert-row').length === 2 && "
        "[...document.querySelectorAll('tr.alert-row')].map(r => r.dataset.id)"
    )
    assert set(rows) == set(ids.values())
    # critical first, selected, with its evidence and a plot of its meter's readings
    assert rows[0] == ids["I0001"]
    lines = chromium.wait_for(
        "document.querySelectorAll('#plot path.plot-line').length > 0 && "
        "Object.fromEntries([...document.querySelectorAll('#plot path.plot-line')]"
        ".map(p => [p.id, p.getAttribute('d')]))"
    )
    # the voltage of each reported phase (L3 is all null: not drawn), ~2 days of 15-min data
    assert sorted(lines) == ["plot-voltage_l1_v", "plot-voltage_l2_v"]
    assert all(d.startswith("M") and d.count("L") > 100 for d in lines.values())
    evidence = chromium.evaluate(
        "[...document.querySelectorAll('#evidence-rows tr')].map(r => r.innerText)"
    )
    assert "limit\t138\tV" in evidence and "u3\tnot reported\t" in evidence
    assert chromium.evaluate("document.getElementById('quantity').value") == "voltage"
    assert chromium.wait_for("document.getElementById('live').textContent === 'live'")

    png = chromium.send("Page.captureScreenshot", format="png")["data"]
    (tmp_path / "alerts-page.png").write_bytes(base64.b64decode(png))

    # a change made elsewhere reaches the open page through the SSE stream
    manager.acknowledge(ids["I0002"], by="zhang", note="", now=NOW)
    chromium.wait_for(
        f"document.getElementById('alert-{ids['I0002']}').textContent.includes('acknowledged')"
    )
    # and the page's own resolve button goes through the API
    chromium.evaluate(
        "document.getElementById('by').value = 'wang';"
        "document.getElementById('note').value = 'phase restored';"
        "document.getElementById('resolve').click(); true"
    )
    chromium.wait_for(f"!document.getElementById('alert-{ids['I0001']}')")
    resolved = manager.get(ids["I0001"])
    assert (resolved.status, resolved.resolved_by, resolved.resolve_note) == (
        "resolved",
        "wang",
        "phase restored",
    )


# -- the page: loading state, SLA due times and escalations, readable evidence, history ---------


class GatedStore:
    """The AlertManager behind a gate: list() waits until the test opens it (a slow API)."""

    def __init__(self, manager: AlertManager):
        self.manager = manager
        self.gate = threading.Event()

    def list(self, **filters: Any) -> list[Any]:
        self.gate.wait(30)
        return self.manager.list(**filters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.manager, name)


def phase_break() -> dict[str, Any]:
    """An open phase break whose evidence has units in its keys, long floats, a NaN, a window."""
    return {
        "type": "phase_break",
        "severity": "critical",
        "meter_id": "I0001",
        "starts_at": "2026-01-05T04:00Z",
        "summary": "phase L2 lost",
        "evidence": {
            "rule": "phase_break",
            "phase": "l2",
            "u_v": 3.0,
            "observed_v": 229.83333333333334,
            "voltage_fraction": 0.6,
            "current_a_max": 0.012345678,
            "u3_v": float("nan"),
            "window": {"start": "2026-01-05T04:00:00Z", "readings": 4},
        },
    }


def test_web_page_shows_loading_sla_escalations_evidence_table_and_history(
    tmp_path: Path, chromium: Chromium, reading_calls: list[tuple[str, datetime, datetime]]
) -> None:
    am = AlertManager(tmp_path / "feed" / "alerts.jsonl", verify_after_intervals=1)
    am.process(
        findings(
            phase_break(),
            {
                "type": "voltage_loss",
                "severity": "major",
                "meter_id": "I0002",
                "starts_at": "2026-01-05T05:00Z",
                "summary": "L1 voltage lost",
                "evidence": {"u_v": 12.5},
            },
            {
                "type": "register_decrease",
                "severity": "major",
                "meter_id": "I0003",
                "starts_at": "2026-01-05T06:00Z",
                "summary": "import register fell by 50.0 kWh",
                "evidence": {"delta_kwh": -50.0},
            },
        ),
        NOW,  # opened at 12:00: acknowledge due 14:00, resolve due 2026-01-06 12:00
    )
    ids = ids_of(am)
    am.resolve(ids["I0002"], by="wang", note="fuse replaced", now=NOW + timedelta(hours=1))
    am.tick(NOW + timedelta(hours=1, minutes=40))  # 80 % of the acknowledge time: approaching
    am.process(findings(phase_break()), NOW + timedelta(hours=2))  # I0002 stayed clear
    am.resolve(
        ids["I0003"], by="li", note="meter swapped", now=NOW + timedelta(hours=2, minutes=30)
    )
    am.tick(NOW + timedelta(hours=3))  # acknowledge of I0001 missed; I0002 verified
    assert am.get(ids["I0002"]).lifecycle == "verified"
    assert am.get(ids["I0003"]).lifecycle == "resolved"

    store = GatedStore(am)
    srv = AlertHttpServer(
        store,
        fake_readings(reading_calls),
        token=TOKEN,
        port=0,
        now=lambda: NOW + timedelta(hours=3),
    )
    srv.start()
    try:
        chromium.send("Page.enable")
        chromium.send("Page.navigate", url=f"{srv.url}/?token={TOKEN}")
        # while the API has not answered, the page says it is loading (never blank)
        assert chromium.wait_for(
            "document.readyState !== 'loading' && !document.getElementById('list-loading').hidden"
            " && document.getElementById('list-loading').innerText"
        ).startswith("Loading alerts")
        assert chromium.evaluate("document.querySelectorAll('tr.alert-row').length") == 0
        assert chromium.evaluate("document.getElementById('alerts').getAttribute('aria-busy')") == (
            "true"
        )
        store.gate.set()
        rows = chromium.wait_for(
            "document.querySelectorAll('tr.alert-row').length === 1 && "
            "[...document.querySelectorAll('tr.alert-row')].map(r => r.innerText)"
        )
        assert chromium.evaluate("document.getElementById('list-loading').hidden") is True
        # the open alert's next deadline, judged at the server's (service) time
        assert "acknowledge missed" in rows[0] and "escalated" in rows[0]
        assert "service time 2026-01-05 15:00" in chromium.evaluate(
            "document.getElementById('service-now').innerText"
        )
        sla = chromium.wait_for(
            "document.querySelectorAll('#sla-rows tr').length === 2 && "
            "[...document.querySelectorAll('#sla-rows tr')].map(r => r.innerText)"
        )
        assert sla[0].split("\t")[:3] == ["acknowledge", "2026-01-05 14:00 UTC", "missed"]
        assert sla[1].split("\t")[:3] == ["resolve", "2026-01-06 12:00 UTC", "due in 21 h"]
        escalations = chromium.evaluate("document.getElementById('escalations').innerText")
        assert "acknowledge deadline approaching" in escalations
        assert "acknowledge deadline missed" in escalations
        assert "last escalation at 2026-01-05 15:00 UTC" in escalations
        # evidence: a table with units and rounding, not JSON with 16-digit floats
        evidence = chromium.evaluate(
            "[...document.querySelectorAll('#evidence-rows tr')].map(r => r.innerText)"
        )
        assert "u\t3\tV" in evidence
        assert "observed\t229.8\tV" in evidence
        assert "voltage fraction\t60\t%" in evidence
        assert "current max\t0.0123\tA" in evidence
        assert "u3\tnot reported\t" in evidence
        assert "window · start\t2026-01-05 04:00 UTC\t" in evidence
        assert "window · readings\t4\t" in evidence
        text = chromium.evaluate("document.getElementById('evidence').innerText")
        assert "229.83" not in text and "{" not in text

        png = chromium.send("Page.captureScreenshot", format="png")["data"]
        (tmp_path / "alerts-page-open.png").write_bytes(base64.b64decode(png))

        # the history: resolved and verified alerts, newest change first, with who and SLA
        chromium.evaluate("document.getElementById('view-history').click(); true")
        history = chromium.wait_for(
            "document.querySelectorAll('tr.alert-row').length === 2 && "
            "[...document.querySelectorAll('tr.alert-row')].map(r => r.innerText.split('\\t'))"
        )
        assert [h[2] for h in history] == ["I0002", "I0003"]  # verified at 15:00, resolved 14:30
        assert [h[3] for h in history] == ["verified", "resolved"]
        assert history[0][5:8] == ["2026-01-05 13:00", "wang", "met / met"]
        assert history[1][5:7] == ["2026-01-05 14:30", "li"]
        assert chromium.evaluate("location.hash") == "#view=history"
        chromium.evaluate(f"document.getElementById('alert-{ids['I0002']}').click(); true")
        fields = chromium.wait_for(
            "document.getElementById('detail-title').innerText.includes('I0002') && "
            "document.getElementById('detail-fields').innerText"
        )
        assert "fuse replaced" in fields and "verified" in fields
        assert chromium.evaluate("document.getElementById('resolve').disabled") is True
        png = chromium.send("Page.captureScreenshot", format="png")["data"]
        (tmp_path / "alerts-page-history.png").write_bytes(base64.b64decode(png))
    finally:
        store.gate.set()
        srv.stop()
