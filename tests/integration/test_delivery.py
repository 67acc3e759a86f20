"""Alert delivery: persistent outbox (no duplicate after restart), backoff, and the real sinks.

Webhook against a local HTTP server, MQTT against a real Mosquitto, Alertmanager against the
real Debian ``prometheus-alertmanager``, SMTP against a tiny local SMTP server.
"""

from __future__ import annotations

import json
import queue
import random
import socketserver
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pandas as pd
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from meterwatch.alerts.delivery import (
    AlertmanagerSink,
    BrokerConnection,
    DeliveryError,
    Dispatcher,
    MqttSink,
    Notification,
    SinkContext,
    SmtpSink,
    build_dispatcher,
)
from meterwatch.alerts.delivery.sinks import ALL_EVENTS
from meterwatch.alerts.manager import AlertManager
from meterwatch.alerts.model import Alert
from meterwatch.config import DeliveryConfig
from meterwatch.core.schema import FINDING_COLUMNS
from tests.support.servers import Mosquitto, alertmanager

NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)


def findings(*rows: dict[str, Any]) -> pd.DataFrame:
    base = {
        "severity": "critical",
        "transformer_id": "TA01",
        "summary": "phase L2 lost: U2 = 3.0 V",
        "evidence": {"rule": "phase_break", "u_v": 3.0, "i_a": float("nan")},
        "ends_at": pd.NaT,
    }
    df = pd.DataFrame([{**base, **r} for r in rows])
    for c in ("starts_at", "ends_at"):
        df[c] = pd.to_datetime(df[c], utc=True)
    return df[list(FINDING_COLUMNS)]


def open_alert(am: AlertManager, meter: str = "I0001", kind: str = "phase_break") -> Alert:
    ((event, alert),) = am.process(
        findings({"type": kind, "meter_id": meter, "starts_at": "2026-01-05T04:00Z"}), NOW
    )
    assert event == "opened"
    return alert


def alert_record(alert_id: str, updated_at: str, fp: str = "fp1") -> dict[str, Any]:
    return {
        "id": alert_id,
        "fingerprint": fp,
        "type": "phase_break",
        "category": "equipment",
        "severity": "critical",
        "meter_id": "I0001",
        "transformer_id": "TA01",
        "status": "open",
        "starts_at": "2026-01-05T04:00:00Z",
        "ends_at": None,
        "summary": "s",
        "evidence": {},
        "updated_at": updated_at,
    }


class RecordingSink:
    """A sink that records what it is sent and fails the first ``fail`` attempts (fault injection)."""

    def __init__(self, name: str = "rec", fail: int = 0, retryable: bool = True):
        self.name = name
        self.events = ALL_EVENTS
        self.fail = fail
        self.retryable = retryable
        self.attempts: list[tuple[str, float]] = []
        self.sent: list[str] = []

    def send(self, note: Notification) -> None:
        self.attempts.append((note.key, time.monotonic()))
        if self.fail > 0:
            self.fail -= 1
            raise DeliveryError(self.name, "injected failure", retryable=self.retryable)
        self.sent.append(note.key)

    def close(self) -> None:
        pass


class FakeClock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- outbox and dispatcher ---------------------------------------------------------------------


def test_delivered_once_no_duplicate_after_restart(tmp_path: Path) -> None:
    am = AlertManager(tmp_path / "alerts.jsonl")
    sink = RecordingSink()
    first = Dispatcher(tmp_path / "delivery", [sink])
    am.listeners.append(first)
    first.start()
    alert = open_alert(am)
    am.acknowledge(alert.id, by="li", note="", now=NOW)
    assert first.flush(5)
    assert [k.split(":")[1] for k in sink.sent] == ["opened", "acknowledged"]
    first.stop()
    am.listeners.remove(first)

    # restart: a new dispatcher on the same state sees the same changes again (e.g. a replay)
    sink2 = RecordingSink()
    second = Dispatcher(tmp_path / "delivery", [sink2])
    second.start()
    for event in ("opened", "acknowledged"):
        snapshot = json.loads((tmp_path / "alerts.jsonl").read_text().splitlines()[0])
        if event == "acknowledged":
            snapshot = am.get(alert.id).to_json()
        assert second.enqueue(event, snapshot) == 0  # already in the outbox
    assert second.flush(5)
    assert sink2.sent == []
    assert second.stats()["rec"]["total_delivered"] == 2
    # a new change after the restart is delivered
    am.listeners.append(second)
    am.resolve(alert.id, by="li", note="fixed", now=NOW)
    assert second.flush(5)
    assert [k.split(":")[1] for k in sink2.sent] == ["resolved"]
    second.stop()


def test_undelivered_notifications_survive_a_crash_and_are_retried(tmp_path: Path) -> None:
    clock = FakeClock()
    down = RecordingSink(fail=10**6)
    crashed = Dispatcher(tmp_path / "d", [down], initial_s=5.0, clock=clock)
    crashed.enqueue("opened", alert_record("a1", "2026-01-05T12:00:00Z"))
    crashed.enqueue("opened", alert_record("a2", "2026-01-05T12:00:00Z", fp="fp2"))
    crashed.run_once()
    crashed.run_once()
    # one attempt: after a failure the sink waits for the backoff, not one try per queued row
    assert len(down.attempts) == 1 and down.sent == []
    # no stop(): the process died; the next one reads the same SQLite file
    up = RecordingSink()
    restarted = Dispatcher(tmp_path / "d", [up], clock=clock)
    assert restarted.run_once() == 1  # a2 was never tried: sent at once; a1 still backs off
    assert up.sent == ["a2:opened:2026-01-05T12:00:00Z"]
    clock.t += 10.0
    assert restarted.run_once() == 1
    assert up.sent[1:] == ["a1:opened:2026-01-05T12:00:00Z"]
    assert restarted.run_once() == 0 and len(up.sent) == 2


def test_failing_sink_retried_with_exponential_backoff_then_succeeds(tmp_path: Path) -> None:
    clock = FakeClock()
    sink = RecordingSink(fail=4)
    d = Dispatcher(
        tmp_path / "d",
        [sink],
        initial_s=2.0,
        max_s=10.0,
        jitter=0.2,
        clock=clock,
        rng=random.Random(7),
    )
    d.enqueue("opened", alert_record("a1", "t1"))
    d.enqueue("resolved", alert_record("a1", "t2"))  # same alert: must wait for "opened"
    delays = []
    for _ in range(4):
        d.run_once()
        ((note, next_at), *_rest) = d.outbox.pending("rec")
        assert note.event == "opened"
        delays.append(next_at - clock.t)
        clock.t = next_at - 0.001
        assert d.run_once() == 0  # not due yet: nothing sent early
        clock.t = next_at
    assert d.run_once() == 2
    assert [k.split(":")[1] for k in sink.sent] == ["opened", "resolved"]  # order kept
    # 2, 4, 8, then capped at 10 s, each ±20 %
    for delay, base in zip(delays, (2.0, 4.0, 8.0, 10.0), strict=True):
        assert base * 0.8 <= delay <= base * 1.2
    assert len(set(delays)) == 4  # jittered
    assert d.stats()["rec"] | {} == {
        "delivered": 2,
        "retried": 4,
        "failed": 0,
        "pending": 0,
        "total_delivered": 2,
        "total_failed": 0,
    }


def test_refused_or_expired_notifications_are_counted_as_failed(tmp_path: Path) -> None:
    clock = FakeClock()
    refused = RecordingSink("refused", fail=1, retryable=False)
    stale = RecordingSink("stale", fail=10**6)
    d = Dispatcher(
        tmp_path / "d", [refused, stale], initial_s=1.0, give_up_after_s=60.0, clock=clock
    )
    d.enqueue("opened", alert_record("a1", "t1"))
    d.run_once()
    clock.t += 61.0
    d.run_once()
    stats = d.stats()
    assert stats["refused"]["failed"] == 1 and stats["refused"]["retried"] == 0
    assert stats["stale"]["failed"] == 1 and stats["stale"]["retried"] == 1
    assert stats["stale"]["pending"] == 0 and stats["stale"]["total_failed"] == 1
    # given-up rows are not sent again after a restart
    again = RecordingSink("refused")
    d2 = Dispatcher(tmp_path / "d", [again], clock=clock)
    assert d2.run_once() == 0 and again.attempts == []


def test_a_sink_bug_is_counted_and_retried_not_a_crash(tmp_path: Path) -> None:
    clock = FakeClock()

    class Buggy(RecordingSink):
        def send(self, note: Notification) -> None:
            self.attempts.append((note.key, clock.t))
            raise UnicodeEncodeError("ascii", "ö", 0, 1, "injected")

    buggy = Buggy("buggy")
    d = Dispatcher(tmp_path / "d", [buggy], initial_s=1.0, clock=clock)
    d.enqueue("opened", alert_record("a1", "t1"))
    assert d.run_once() == 0  # does not raise out of the delivery loop
    stats = d.stats()["buggy"]
    assert (stats["retried"], stats["pending"], len(buggy.attempts)) == (1, 1, 1)
    ((_, next_at),) = d.outbox.pending("buggy")
    assert next_at > clock.t  # backed off like an outage, not tried again at every poll


def test_quiet_alerts_are_not_notified(tmp_path: Path) -> None:
    sink = RecordingSink()
    d = Dispatcher(tmp_path / "d", [sink])
    am = AlertManager(tmp_path / "alerts.jsonl")
    alert = open_alert(am)
    alert.quiet = {"reason": "silenced", "silence_id": "s1"}
    d("updated", alert)
    alert.quiet, alert.inhibited_by = None, "outage-1"
    d("updated", alert)
    assert d.skipped_quiet == 2 and d.outbox.counts() == {}


def test_backoff_is_capped_and_jittered() -> None:
    d = Dispatcher.__new__(Dispatcher)
    d.initial_s, d.max_s, d.jitter, d.rng = 1.0, 300.0, 0.2, random.Random(1)
    values = [d.backoff(n) for n in range(1, 30)]
    assert all(0.8 <= v / min(300.0, 2 ** (n - 1)) <= 1.2 for n, v in enumerate(values, 1))
    assert max(values) <= 360.0


# -- webhook (Alertmanager webhook format, version 4) ---------------------------------------------


class _Capture(BaseHTTPRequestHandler):
    received: queue.Queue[tuple[dict[str, Any], str | None]]
    fail_first: list[int]

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.fail_first[0] > 0:
            self.fail_first[0] -= 1
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.received.put((body, self.headers.get("Authorization")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, queue.Queue[tuple[dict[str, Any], str | None]]]]:
    received: queue.Queue[tuple[dict[str, Any], str | None]] = queue.Queue()
    handler = type("H", (_Capture,), {"received": received, "fail_first": [1]})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", received
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_webhook_payload_in_alertmanager_format_v4(
    tmp_path: Path,
    webhook_receiver: tuple[str, queue.Queue[tuple[dict[str, Any], str | None]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, received = webhook_receiver
    monkeypatch.setenv("MW_TEST_HOOK_TOKEN", "hook-secret")
    cfg = DeliveryConfig.model_validate(
        {
            "state_dir": str(tmp_path / "delivery"),
            "external_url": "http://meterwatch.example:8470",
            "webhooks": [{"url": url, "token_env": "MW_TEST_HOOK_TOKEN"}],
            "retry": {"initial": 0.05, "max": 0.2},
        }
    )
    d = build_dispatcher(cfg)
    assert d is not None
    am = AlertManager(tmp_path / "alerts.jsonl", listeners=[d])
    d.start()
    try:
        alert = open_alert(am)
        am.acknowledge(alert.id, by="li", note="", now=NOW)  # not paged by webhook
        am.resolve(alert.id, by="li", note="fixed", now=NOW)
        firing, auth = received.get(timeout=10)
        resolved, _ = received.get(timeout=10)
        assert d.flush(5)
        stats = d.stats()[f"webhook:{url}"]
    finally:
        d.stop()
    assert auth == "Bearer hook-secret"
    assert stats["delivered"] == 2 and stats["retried"] == 1  # the receiver's first 503
    assert received.empty()
    assert set(firing) == {
        "version",
        "groupKey",
        "truncatedAlerts",
        "status",
        "receiver",
        "groupLabels",
        "commonLabels",
        "commonAnnotations",
        "externalURL",
        "alerts",
    }
    assert firing["version"] == "4" and firing["truncatedAlerts"] == 0
    assert (firing["status"], resolved["status"]) == ("firing", "resolved")
    assert firing["groupLabels"] == {"transformer_id": "TA01"}
    assert firing["groupKey"] == '{}:{transformer_id="TA01"}'
    assert firing["externalURL"] == "http://meterwatch.example:8470"
    (item,) = firing["alerts"]
    assert set(item) == {
        "status",
        "labels",
        "annotations",
        "startsAt",
        "endsAt",
        "generatorURL",
        "fingerprint",
    }
    assert item["labels"] == {
        "alertname": "phase_break",
        "meter_id": "I0001",
        "transformer_id": "TA01",
        "severity": "critical",
        "category": "equipment",
    }
    assert item["startsAt"] == "2026-01-05T04:00:00Z"
    assert item["endsAt"] == "0001-01-01T00:00:00Z"
    assert item["fingerprint"] == alert.fingerprint
    assert item["generatorURL"] == f"http://meterwatch.example:8470/#alert={alert.id}"
    assert json.loads(item["annotations"]["evidence"]) == {
        "rule": "phase_break",
        "u_v": 3.0,
        "i_a": None,  # NaN sent as null: valid JSON for the receiver
    }
    assert firing["commonLabels"] == item["labels"]
    (done,) = resolved["alerts"]
    assert done["status"] == "resolved" and done["endsAt"] == "2026-01-05T12:00:00Z"


# -- MQTT (real Mosquitto) -------------------------------------------------------------------


def _collect(port: int, topic: str, wait_s: float) -> list[tuple[str, bytes, bool]]:
    """Subscribe, wait, and return (topic, payload, retained) of what arrived."""
    got: list[tuple[str, bytes, bool]] = []
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{time.monotonic_ns()}")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
    client.on_message = lambda c, u, m: got.append((m.topic, m.payload, bool(m.retain)))
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert subscribed.wait(5), f"no SUBACK for {topic}"
        time.sleep(wait_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def test_mqtt_retained_state_and_event_stream(tmp_path: Path, mosquitto_broker: Mosquitto) -> None:
    port = mosquitto_broker.port
    events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    listener = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="events-listener")
    ready = threading.Event()
    listener.on_connect = lambda c, u, f, rc, p: c.subscribe("mw/alerts/events", qos=1)
    listener.on_subscribe = lambda c, u, mid, rc, p: ready.set()
    listener.on_message = lambda c, u, m: events.put((m.topic, json.loads(m.payload)))
    listener.connect("127.0.0.1", port)
    listener.loop_start()
    assert ready.wait(5)

    cfg = DeliveryConfig.model_validate(
        {"state_dir": str(tmp_path / "delivery"), "mqtt": {"enabled": True, "topic_prefix": "mw"}}
    )
    d = build_dispatcher(cfg, SinkContext(broker=BrokerConnection("127.0.0.1", port)))
    assert d is not None
    am = AlertManager(tmp_path / "alerts.jsonl", listeners=[d])
    d.start()
    try:
        a1 = open_alert(am, "I0001")
        a2 = open_alert(am, "I0002", "register_decrease")
        am.acknowledge(a1.id, by="li", note="crew sent", now=NOW)
        got = [events.get(timeout=10)[1] for _ in range(3)]
        assert d.flush(10)
        # a closed (verified) alert clears its retained state
        d.enqueue("verified", {**am.get(a2.id).to_json(), "updated_at": "2026-01-06T00:00:00Z"})
        assert d.flush(10)
        assert events.get(timeout=10)[1]["event"] == "verified"
        assert d.stats()["mqtt"]["delivered"] == 4
    finally:
        d.stop()
        listener.disconnect()
        listener.loop_stop()
    assert [(e["event"], e["alert"]["id"]) for e in got] == [
        ("opened", a1.id),
        ("opened", a2.id),
        ("acknowledged", a1.id),
    ]
    # a subscriber arriving later gets the current state of each open alert, retained
    state = _collect(port, "mw/alerts/state/+", 0.5)
    assert [(t, r) for t, _, r in state] == [(f"mw/alerts/state/{a1.fingerprint}", True)]
    current = json.loads(state[0][1])
    assert current["status"] == "acknowledged" and current["ack_note"] == "crew sent"


def test_mqtt_sink_reports_an_unreachable_broker(tmp_path: Path) -> None:
    from tests.support.servers import free_port

    sink = MqttSink("127.0.0.1", free_port(), "mw", timeout_s=0.5)
    note = Notification(1, "k", "mqtt", "opened", alert_record("a1", "t"), 0, 0.0)
    try:
        with pytest.raises(DeliveryError, match="not connected"):
            sink.send(note)
    finally:
        sink.close()


# -- a real Prometheus Alertmanager -----------------------------------------------------------


def _am_alerts(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as resp:
        return list(json.load(resp))


def _am_meter_alerts(url: str, meter_id: str, present: bool, timeout_s: float = 5.0) -> list[Any]:
    """Alertmanager's alerts for a meter, polled until some are (or none are) listed.

    Alertmanager ingests posted alerts asynchronously: a GET right after the POST may not
    show them yet.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        found = [a for a in _am_alerts(url) if a["labels"].get("meter_id") == meter_id]
        if bool(found) == present or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_real_alertmanager_receives_firing_then_resolved(tmp_path: Path) -> None:
    with alertmanager(tmp_path) as server:
        cfg = DeliveryConfig.model_validate(
            {
                "state_dir": str(tmp_path / "delivery"),
                "alertmanager": {"url": server.url},
                "external_url": "http://127.0.0.1:8470",
            }
        )
        d = build_dispatcher(cfg)
        assert d is not None
        am = AlertManager(tmp_path / "alerts.jsonl", listeners=[d])
        d.start()
        try:
            alert = open_alert(am)
            assert d.flush(10)
            (got,) = _am_meter_alerts(server.url, "I0001", present=True)
            assert got["status"]["state"] == "active"
            assert got["labels"] == {
                "alertname": "phase_break",
                "meter_id": "I0001",
                "transformer_id": "TA01",
                "severity": "critical",
                "category": "equipment",
            }
            assert got["annotations"]["summary"] == "phase L2 lost: U2 = 3.0 V"
            assert json.loads(got["annotations"]["evidence"])["u_v"] == 3.0
            assert got["startsAt"].startswith("2026-01-05T04:00:00")
            assert got["generatorURL"] == f"http://127.0.0.1:8470/#alert={alert.id}"

            am.resolve(alert.id, by="li", note="fixed", now=NOW)
            assert d.flush(10)
            now = datetime.now(UTC)
            still = _am_meter_alerts(server.url, "I0001", present=False)
            # Alertmanager drops resolved alerts from the list, or shows them with a past endsAt
            for a in still:
                ends = datetime.fromisoformat(a["endsAt"].replace("Z", "+00:00"))
                assert ends <= now and a["status"]["state"] != "active"
            assert d.stats()["alertmanager"]["delivered"] == 2
        finally:
            d.stop()


def test_alertmanager_refresh_keeps_firing_alerts_alive(tmp_path: Path) -> None:
    with alertmanager(tmp_path) as server:
        sink = AlertmanagerSink(server.url, refresh_s=0.3)
        sink.seed([alert_record("a1", "t", fp="fpx")])
        sink.tick()  # too early: nothing posted
        assert _am_meter_alerts(server.url, "I0001", present=True, timeout_s=0.3) == []
        time.sleep(0.35)
        sink.tick()
        (got,) = _am_meter_alerts(server.url, "I0001", present=True)
        assert got["status"]["state"] == "active" and sink.refresh_errors == 0


# -- SMTP ----------------------------------------------------------------------------------------


class _SmtpHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) to accept one message per transaction."""

    inbox: list[tuple[str, list[str], bytes]]

    def handle(self) -> None:
        def reply(line: str) -> None:
            self.wfile.write((line + "\r\n").encode())

        reply("220 test ESMTP")
        sender, rcpts = "", []
        while raw := self.rfile.readline():
            cmd = raw.decode().strip()
            verb = cmd.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                reply("250 test")
            elif verb == "MAIL":
                sender, rcpts = cmd.split(":", 1)[1].strip("<> "), []
                reply("250 OK")
            elif verb == "RCPT":
                rcpts.append(cmd.split(":", 1)[1].strip("<> "))
                reply("250 OK")
            elif verb == "DATA":
                reply("354 end with .")
                data = b""
                while (line := self.rfile.readline()) not in (b".\r\n", b""):
                    data += line
                self.inbox.append((sender, rcpts, data))
                reply("250 queued")
            elif verb == "QUIT":
                reply("221 bye")
                return
            else:
                reply("250 OK")


def test_smtp_mail_for_an_opened_alert(tmp_path: Path) -> None:
    inbox: list[tuple[str, list[str], bytes]] = []
    handler = type("H", (_SmtpHandler,), {"inbox": inbox})
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler) as smtpd:
        threading.Thread(target=smtpd.serve_forever, daemon=True).start()
        sink = SmtpSink(
            "127.0.0.1",
            smtpd.server_address[1],
            "meterwatch@example.org",
            ["ops@example.org", "lead@example.org"],
            external_url="http://127.0.0.1:8470",
        )
        d = Dispatcher(tmp_path / "d", [sink])
        am = AlertManager(tmp_path / "alerts.jsonl", listeners=[d])
        alert = open_alert(am)
        am.acknowledge(alert.id, by="li", note="", now=NOW)  # not mailed
        d.run_once()
        smtpd.shutdown()
    assert d.stats()["smtp"]["delivered"] == 1
    ((sender, rcpts, data),) = inbox
    assert sender == "meterwatch@example.org"
    assert rcpts == ["ops@example.org", "lead@example.org"]
    msg = message_from_bytes(data)
    assert msg["Subject"] == "[MeterWatch OPENED] critical phase_break I0001"
    body = msg.get_payload()
    assert "phase L2 lost: U2 = 3.0 V" in body and '"u_v": 3.0' in body
    assert f"#alert={alert.id}" in body


# -- wired into the service ----------------------------------------------------------------------


def test_service_delivers_alerts_and_serves_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's wiring: MQTT delivery on the embedded broker and the HTTP API, from config."""
    import asyncio

    from meterwatch.alerts.delivery import Outbox
    from meterwatch.config import parse_config
    from meterwatch.service import Service
    from tests.support.servers import free_port

    monkeypatch.setenv("MW_TEST_SERVICE_TOKEN", "svc-token")
    http_port, metrics_port = free_port(), free_port()
    cfg = parse_config(
        {
            "clock": {"start": "2026-01-05T00:00:00Z", "speed": 3600},
            "simulator": {
                "enabled": True,
                "residential": 2,
                "commercial": 1,
                "industrial": 2,
                "transformers": 1,
                "mqtt_share": 0.0,
                "modbus": {"host": "127.0.0.1", "port": free_port()},
                "anomalies": [{"type": "phase_break", "at": "1h", "duration": "3h"}],
            },
            "mqtt": {"port": free_port(), "dead_letter": str(tmp_path / "dead.jsonl")},
            "collector": {
                "modbus": {
                    "interval": "15m",
                    "gateways": [{"name": "sim", "host": "127.0.0.1", "devices": "simulator"}],
                }
            },
            "storage": {"path": str(tmp_path / "store.duckdb")},
            "alerts": {
                "feed": str(tmp_path / "alerts.jsonl"),
                "delivery": {
                    "state_dir": str(tmp_path / "delivery"),
                    "mqtt": {"enabled": True, "topic_prefix": "mw"},
                },
                "http": {"enabled": True, "port": http_port, "token_env": "MW_TEST_SERVICE_TOKEN"},
            },
            "metrics": {"enabled": True, "port": metrics_port},
        }
    )
    seen: list[dict[str, Any]] = []
    scraped: list[str] = []

    def probe(service: Service) -> None:
        if seen or not service.alerts.open_alerts():
            return
        req = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/api/alerts?status=active",
            headers={"Authorization": "Bearer svc-token"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            seen.extend(json.load(resp)["alerts"])
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            scraped.append(resp.read().decode())

    service = Service(cfg, on_tick=probe)
    summary = asyncio.run(service.run(5.0))
    assert [(a["type"], a["status"]) for a in seen] == [("phase_break", "open")]
    outbox = Outbox(tmp_path / "delivery" / "outbox.sqlite")
    try:
        counts = outbox.counts()
        notes = outbox.pending("mqtt")
    finally:
        outbox.close()
    assert notes == [] and counts["mqtt"]["failed"] == 0
    assert counts["mqtt"]["delivered"] >= 1  # at least the phase break's "opened"
    # the run summary reports the same per-sink counts (a fresh outbox: this run is everything)
    s = summary.delivery["mqtt"]
    assert (s["delivered"], s["failed"], s["pending"]) == (counts["mqtt"]["delivered"], 0, 0)
    # the service left its simulated clock next to the feed for CLI actions (stopped at the end)
    clock = json.loads((tmp_path / "alerts-state" / "clock.json").read_text())
    assert (clock["simulated"], clock["running"], clock["speed"]) == (True, False, 3600.0)
    recorded = datetime.fromisoformat(clock["service_time"])
    # /metrics served the MQTT sink's delivery counters while the service ran
    assert 'meterwatch_alert_notifications_pending{sink="mqtt"}' in scraped[0]
    assert 'meterwatch_alert_notifications_delivered_total{sink="mqtt"}' in scraped[0]
    assert abs((recorded - summary.service_end).total_seconds()) < 3600.0  # < 1 s of wall time


def test_old_delivered_rows_are_purged_pending_ones_kept(tmp_path: Path) -> None:
    clock = FakeClock()
    sink = RecordingSink()
    d = Dispatcher(tmp_path / "d", [sink], clock=clock)
    d.enqueue("opened", alert_record("a1", "t1"))
    d.run_once()
    d.sinks["rec"] = RecordingSink(fail=1)
    d.enqueue("opened", alert_record("a2", "t1", fp="fp2"))
    d.run_once()  # fails: stays pending
    clock.t += 8 * 86400.0
    assert d.outbox.purge_delivered(7 * 86400.0, clock.t) == 1
    assert d.outbox.counts() == {"rec": {"delivered": 0, "failed": 0, "pending": 1}}


def test_mqtt_delivery_survives_a_broker_outage(
    tmp_path: Path, mosquitto_broker: Mosquitto
) -> None:
    sink = MqttSink("127.0.0.1", mosquitto_broker.port, "mw", timeout_s=1.0)
    d = Dispatcher(tmp_path / "d", [sink], initial_s=0.2, max_s=1.0)
    d.start()
    try:
        d.enqueue("opened", alert_record("a1", "t1", fp="fp1"))
        assert d.flush(10)
        mosquitto_broker.stop()
        d.enqueue("opened", alert_record("a2", "t1", fp="fp2"))
        deadline = time.monotonic() + 10
        while d.stats()["mqtt"]["retried"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert d.stats()["mqtt"]["retried"] >= 1 and d.stats()["mqtt"]["pending"] == 1
        mosquitto_broker.start()
        deadline = time.monotonic() + 15
        while d.stats()["mqtt"]["pending"] and time.monotonic() < deadline:
            time.sleep(0.1)
        stats = d.stats()["mqtt"]
    finally:
        d.stop()
    assert stats["pending"] == 0 and stats["delivered"] == 2 and stats["failed"] == 0
    # the broker persisted the retained state published after its restart
    state = _collect(mosquitto_broker.port, "mw/alerts/state/+", 0.5)
    assert "mw/alerts/state/fp2" in {t for t, _, _ in state}
