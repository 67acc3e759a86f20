"""The lean ingest process (`meterwatch run`, MQTT only, into InfluxDB) counted end to end.

Real Mosquitto and influxd. One scenario goes through what a field gateway meets: InfluxDB down
for longer than the retry budget while a backlog arrives (the small spool fills and refuses),
``kill -9`` of the service with readings only in its spool, a broker restart, redelivered
readings and readings that disagree with ones already written, then recovery. At the end every
published reading is in InfluxDB exactly once with its first value, the disagreeing ones are in
``reading_conflicts``, and the counters say so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.servers import (
    Mosquitto,
    RunningServer,
    free_port,
    influxdb,
    restart_influxdb,
    stop_process,
)

METERS = 50
T0 = 1_772_323_200  # 2026-03-01T00:00:00Z


def reading(i: int, power: float | None = None) -> tuple[str, bytes]:
    """Message ``i``: meter i % METERS, one interval per round of meters; power_kw = i."""
    meter = f"M{i % METERS:02d}"
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + 900 * (i // METERS)))
    body = {"ts": ts, "power_kw": float(i) if power is None else power, "energy_import_kwh": i / 4}
    return f"meters/{meter}/reading", json.dumps(body).encode()


def publish(port: int, msgs: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1; return once the broker acknowledged every message."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}")
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(t, b, qos=1) for t, b in msgs]
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def register(port: int, client_id: str) -> None:
    """The service's persistent session exists before anything is published."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    done = threading.Event()
    client.on_subscribe = lambda *a: done.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe("meters/+/reading", qos=1)
    assert done.wait(10), "no SUBACK"
    client.disconnect()
    client.loop_stop()


def influxql(server: RunningServer, q: str, db: str | None = None) -> dict:
    params = {"q": q, "epoch": "s", **({"db": db} if db else {})}
    data = urllib.parse.urlencode(params).encode()
    with urllib.request.urlopen(f"{server.url}/query", data=data, timeout=30) as resp:
        return json.loads(resp.read())


def points(server: RunningServer, db: str, measurement: str) -> dict[tuple[str, int], float]:
    """(meter_id, ts) -> power_kw of every point of ``measurement``."""
    doc = influxql(server, f'SELECT power_kw, meter_id FROM "{measurement}"', db)
    series = doc["results"][0].get("series") or []
    out: dict[tuple[str, int], float] = {}
    for s in series:
        cols = s["columns"]
        for row in s["values"]:
            r = dict(zip(cols, row, strict=True))
            out[(r["meter_id"], int(r["time"]))] = float(r["power_kw"])
    return out


def counter(port: int, name: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith(f"meterwatch_{name}_total "):
            return int(float(line.split()[1]))
    return 0


def wait(cond: Callable[[], bool], timeout_s: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what()}"
        time.sleep(0.1)


class Service:
    """`meterwatch run` on a config, its output in a file."""

    def __init__(self, cfg: Path, log: Path):
        self.log = log
        exe = Path(sys.executable).with_name("meterwatch")
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen(
                [str(exe), "run", "--config", str(cfg)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=cfg.parent,
                env={**os.environ, "NO_COLOR": "1"},
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def test_lean_ingest_loses_nothing_stores_once_and_keeps_conflicts_apart(
    tmp_path: Path, mosquitto_broker: Mosquitto
) -> None:
    client_id = f"lean-{uuid.uuid4().hex[:6]}"
    metrics = free_port()
    register(mosquitto_broker.port, client_id)
    first = [reading(i) for i in range(1500)]  # ~150 kB of line protocol: over the 64 KiB spool
    more = [reading(i) for i in range(1500, 1800)]  # arrive at a full spool: refused
    later = [reading(i) for i in range(1800, 2000)]
    repeats = first[:300]  # redelivered or republished: the same values
    conflicts = [reading(i, power=-1.0 - i) for i in range(1000, 1020)]  # other values, same key
    with influxdb(tmp_path) as server:
        db = f"mw_{uuid.uuid4().hex[:8]}"
        influxql(server, f'CREATE DATABASE "{db}"')
        cfg = tmp_path / "lean.yaml"
        cfg.write_text(
            "collector:\n  mqtt:\n    broker: external\n"
            f"    host: 127.0.0.1\n    port: {mosquitto_broker.port}\n    client_id: {client_id}\n"
            f"    dead_letter: {tmp_path / 'dead.jsonl'}\n"
            "storage:\n  backend: influx\n"
            f"  influx: {{flavor: v1, url: '{server.url}', database: {db}, "
            "max_retries: 1, retry_budget_s: 0.5, flush_interval: 0.2}\n"
            f"  spool: {{path: {tmp_path / 'spool'}, max_bytes: 65536}}\n"
            f"metrics: {{enabled: true, port: {metrics}}}\n"
        )
        restarted: RunningServer | None = None
        try:
            # 1. InfluxDB down (longer than the retry budget) while the backlog arrives: the
            #    spool (64 KiB) fills and refuses; nothing refused is acknowledged.
            stop_process(server.process)
            publish(mosquitto_broker.port, first)
            svc = Service(cfg, tmp_path / "run1.log")
            wait(
                lambda: counter(metrics, "readings_spooled") >= len(first),
                60,
                lambda: f"{len(first)} readings spooled ({svc.text()[-1500:]})",
            )
            assert "lean ingest" in svc.text()  # the lean process took over
            publish(mosquitto_broker.port, more)
            wait(
                lambda: counter(metrics, "spool_refused") > 0,
                30,
                lambda: f"a full spool refusing ({svc.text()[-1500:]})",
            )
            assert counter(metrics, "readings_spooled") == len(first)  # nothing more taken
            assert "is full" in svc.text()  # refused loudly
            # 2. kill -9 with readings only in the spool, then the broker restarts.
            svc.proc.send_signal(signal.SIGKILL)
            svc.proc.wait(10)
            mosquitto_broker.restart()
            # 3. More readings, repeats of delivered ones and conflicting values arrive.
            publish(mosquitto_broker.port, later + repeats + conflicts)
            restarted = restart_influxdb(server)
            svc = Service(cfg, tmp_path / "run2.log")
            want = len(first) + len(more) + len(later)
            wait(
                lambda: (
                    len(points(restarted, db, "readings")) >= want
                    and len(points(restarted, db, "reading_conflicts")) >= len(conflicts)
                ),
                90,
                lambda: (
                    f"{want} readings and {len(conflicts)} conflicts in InfluxDB (have "
                    f"{len(points(restarted, db, 'readings'))}, "
                    f"{len(points(restarted, db, 'reading_conflicts'))}; {svc.text()[-1500:]})"
                ),
            )
            wait(
                lambda: counter(metrics, "readings_conflicting") >= len(conflicts),
                20,
                lambda: f"the conflicts counted ({svc.text()[-800:]})",
            )
            duplicates = counter(metrics, "readings_duplicate")
            svc.proc.send_signal(signal.SIGINT)
            assert svc.proc.wait(30) == 0, svc.text()[-1500:]
            stored = points(restarted, db, "readings")
            kept_apart = points(restarted, db, "reading_conflicts")
        finally:
            if restarted is not None:
                stop_process(restarted.process)
    # Every published reading once, with its first value; the conflicting values apart.
    assert len(stored) == len(first) + len(more) + len(later)
    for i in range(2000):
        key = (f"M{i % METERS:02d}", T0 + 900 * (i // METERS))
        assert stored[key] == float(i), key
    assert kept_apart == {
        (f"M{i % METERS:02d}", T0 + 900 * (i // METERS)): -1.0 - i for i in range(1000, 1020)
    }
    assert duplicates >= len(repeats)  # the repeats of spooled readings were skipped
    assert not (tmp_path / "dead.jsonl").exists()
    assert "Traceback" not in (tmp_path / "run1.log").read_text() + svc.text()
    assert "0 readings wait in the spool" in svc.text()
