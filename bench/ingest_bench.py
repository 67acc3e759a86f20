"""Issue #13's workload: one Mosquitto backlog drained by each consumer, all in the same run.

Workload: ``--messages`` (200,000) single-reading QoS 1 JSON messages (``ts`` + 7 quantities)
on ``meters/<id>/reading`` from ``--meters`` (20,000) meters, and the batch codec with 100
readings per message (``gateways/<gw>/batch``, the same number of readings). Every consumer first
registers a persistent session (clean session off, QoS 1 subscription) and goes away; one
publisher then publishes the stream once, so the broker queues an identical backlog for each.
The consumers then drain it one at a time, each a separate process, timed from its MQTT connect
to the last reading being where it stores it; stored = sent is checked for every consumer.

Consumers (single-reading stream):

- ``count``: paho subscriber that only counts (the floor of any paho-based consumer);
- ``bridge``: the common 40-line bridge, paho + the ``influxdb`` client (1.x API), points
  written in batches of 5,000 (acknowledges on receipt: nothing durable);
- ``node-red``: Node-RED 4 with node-red-contrib-influxdb, flow mqtt in → json → function (to a
  point) → join 5,000 (1 s timeout) → influxdb batch (acknowledges on receipt);
- ``mw-influx``: ``meterwatch run`` (MQTT only, no registry) → spool → InfluxDB 1.x;
- ``mw-embedded``: ``meterwatch run`` → embedded DuckDB store.

Broker (``BROKER_SETTINGS``): the operator settings README.md gives (``max_queued_messages``
above the backlog, ``max_inflight_messages 10000`` for 3.1.1 clients, persistence on), the same
for every consumer; all connect with MQTT 3.1.1. CPU is user + system time of the consumer's
whole process tree between connect and done (/proc via psutil); RSS is the peak of the tree's sum,
sampled every 0.2 s, between connect and done (``peak_rss_mb``) and over the consumer's whole life,
start-up included (``life_peak_rss_mb``: for ``meterwatch run`` the config validation before the
lean ingest process takes over). Node-RED is installed from npm into ``var/bench/node-red`` (not committed).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
NODE_RED_DIR = ROOT / "var" / "bench" / "node-red"
NODE_RED_PACKAGES = ("node-red@4", "node-red-contrib-influxdb@0.7.0")
FIELDS = (
    "energy_import_kwh",
    "power_kw",
    "reactive_power_kvar",
    "voltage_l1_v",
    "current_l1_a",
    "power_factor",
    "frequency_hz",
)
#: What README.md ("MQTT brokers") tells operators to set, with the numbers used here.
BROKER_SETTINGS = (
    "persistence true",
    "autosave_interval 1800",
    "max_queued_messages 1000000",
    "max_queued_bytes 0",
    "max_inflight_messages 10000",
)
SINGLE = ("count", "bridge", "node-red", "mw-influx", "mw-embedded")
BATCH = ("count", "mw-influx", "mw-embedded")


# -- workload ----------------------------------------------------------------------------------


def single_messages(n: int, meters: int) -> list[tuple[str, bytes]]:
    """``n`` canonical single readings, meter after meter, 15 minutes apart per meter."""
    out = []
    t0 = 1_767_571_200  # 2026-01-05T00:00:00Z
    for i in range(n):
        m, k = i % meters, i // meters
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 + 900 * k))
        body = {"ts": ts}
        for j, f in enumerate(FIELDS):
            body[f] = round(100.0 + (i * 7 + j * 13) % 1000 / 7.0, 3)
        out.append((f"meters/M{m:06d}/reading", json.dumps(body, separators=(",", ":")).encode()))
    return out


def batch_messages(n_readings: int, per: int, meters: int) -> list[tuple[str, bytes]]:
    """The same readings in ``batch`` payloads of ``per`` readings (one gateway per message)."""
    single = single_messages(n_readings, meters)
    out = []
    for g in range(0, n_readings, per):
        entries = []
        for topic, body in single[g : g + per]:
            r = json.loads(body)
            r["meter_id"] = topic.split("/")[1]
            entries.append(r)
        doc = {"gateway": f"gw{g // per:05d}", "readings": entries}
        out.append(
            (f"gateways/gw{g // per:05d}/batch", json.dumps(doc, separators=(",", ":")).encode())
        )
    return out


# -- broker and publisher ----------------------------------------------------------------------


def start_broker(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    from tests.support.servers import free_port, mosquitto_binary, wait_for_port

    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        + "\n".join(BROKER_SETTINGS)
        + f"\npersistence_location {work}/\nlog_dest file {work / 'mosquitto.log'}\n"
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return proc, port


def _paho(client_id: str, clean: bool):  # noqa: ANN202
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)


def register(port: int, client_id: str, topic_filter: str) -> None:
    """A persistent QoS 1 subscription, so the broker queues the backlog for ``client_id``."""
    c = _paho(client_id, clean=False)
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(topic_filter, qos=1)
    if not done.wait(10):
        raise RuntimeError(f"no SUBACK for {client_id}")
    c.disconnect()
    c.loop_stop()


def publish(port: int, msgs: list[tuple[str, bytes]]) -> float:
    c = _paho("bench-publisher", clean=True)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.perf_counter()
    for i in range(0, len(msgs), 5000):  # paho refuses past its own queue limit
        infos = [c.publish(t, b, qos=1) for t, b in msgs[i : i + 5000]]
        for info in infos:
            info.wait_for_publish(120)
    seconds = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return seconds


# -- measuring a consumer process ---------------------------------------------------------------


class Watch:
    """CPU seconds and peak RSS of a process tree, sampled in a thread: ``peak_rss`` over its
    whole life, ``span_peak_rss`` since :meth:`mark` (the drain)."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peak_rss = 0
        self.span_peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _procs(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu(self) -> float:
        total = 0.0
        for p in self._procs():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = 0
            for p in self._procs():
                try:
                    rss += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak_rss = max(self.peak_rss, rss)
            self.span_peak_rss = max(self.span_peak_rss, rss)
            self._stop.wait(0.2)

    def mark(self) -> None:
        """Start the span: ``span_peak_rss`` counts from now."""
        self.span_peak_rss = 0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def _wait_line(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"consumer exited ({proc.returncode}): {path.read_text()[-2000:]}")
        time.sleep(0.01)
    raise RuntimeError(f"no {needle!r} within {timeout_s} s: {path.read_text()[-2000:]}")


def measure(
    cmd: list[str],
    log: Path,
    connected: str,
    done: Callable[[], bool],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 600,
    stop_signal: int = signal.SIGTERM,
) -> dict[str, float]:
    """Run a consumer; seconds and CPU from its connect line until ``done()``; peak RSS."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        watch = Watch(proc.pid)
        _wait_line(log, connected, proc, 120)
        watch.mark()
        t0, cpu0 = time.perf_counter(), watch.cpu()
        deadline = time.monotonic() + timeout_s
        while not done():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"consumer exited ({proc.returncode}): {log.read_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"not done after {timeout_s} s: {log.read_text()[-3000:]}")
            time.sleep(0.02)
        seconds, cpu = time.perf_counter() - t0, watch.cpu() - cpu0
        watch.stop()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, stop_signal)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "peak_rss_mb": watch.span_peak_rss / 2**20,
        "life_peak_rss_mb": watch.peak_rss / 2**20,
    }


# -- InfluxDB helpers -----------------------------------------------------------------------------


def influx_query(url: str, q: str, db: str | None = None) -> dict:
    params = {"q": q, **({"db": db} if db else {})}
    data = urllib.parse.urlencode(params).encode()
    with urllib.request.urlopen(f"{url}/query", data=data, timeout=60) as resp:
        return json.loads(resp.read())


def influx_count(url: str, db: str) -> int:
    doc = influx_query(url, "SELECT count(power_kw) FROM readings", db)
    series = doc["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def metrics_counter(port: int, name: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(f"meterwatch_{name}_total "):
            return int(float(line.split()[1]))
    return 0


def raw_influx_ceiling(url: str, msgs: list[tuple[str, bytes]], batch: int = 5000) -> dict:
    """InfluxDB's own ceiling on this machine for these readings: the same lines MeterWatch
    writes (meter_id tag, the quantities, collected_at / device_ts), encoded before the clock
    starts and posted in ``batch``-line requests over one keep-alive connection (no MQTT, no
    spool): what no consumer writing to this server can beat."""
    import http.client

    now = int(time.time())
    lines = []
    for topic, body in msgs:
        r = json.loads(body)
        ts = int(time.mktime(time.strptime(r.pop("ts"), "%Y-%m-%dT%H:%M:%SZ"))) - time.timezone
        fields = ",".join(f"{k}={float(v)!r}" for k, v in r.items())
        lines.append(
            f"readings,meter_id={topic.split('/')[1]} {fields},collected_at={now}i,"
            f"device_ts={ts}i {ts}"
        )
    bodies = [
        ("\n".join(lines[i : i + batch]) + "\n").encode() for i in range(0, len(lines), batch)
    ]
    db = "bench_raw_ceiling"
    influx_query(url, f'CREATE DATABASE "{db}"')
    host, port = url.split("//", 1)[1].split(":")
    con = http.client.HTTPConnection(host, int(port), timeout=120)
    t0 = time.perf_counter()
    for body in bodies:
        con.request("POST", f"/write?db={db}&precision=s", body)
        resp = con.getresponse()
        resp.read()
        if resp.status != 204:
            raise RuntimeError(f"raw post: HTTP {resp.status}")
    seconds = time.perf_counter() - t0
    con.close()
    stored = influx_count(url, db)
    influx_query(url, f'DROP DATABASE "{db}"')
    if stored != len(lines):
        raise RuntimeError(f"raw post: stored {stored} of {len(lines)}")
    return {"seconds": seconds, "readings_per_s": len(lines) / seconds, "batch": batch}


# -- consumers ---------------------------------------------------------------------------------

COUNT_SCRIPT = """
import sys, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, cid, topic, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
got = [0]
def on_connect(*a): print("connected", flush=True)
def on_message(client, userdata, msg):
    got[0] += 1
    if got[0] == n: print("done", flush=True)
c.on_connect, c.on_message = on_connect, on_message
c.connect("127.0.0.1", port, keepalive=60)
c.loop_forever()
"""

BRIDGE_SCRIPT = """
import json, sys, threading, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from influxdb import InfluxDBClient
port, cid, topic, iport, db = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
influx = InfluxDBClient("127.0.0.1", iport, database=db)
points, lock = [], threading.Lock()
def flush():
    global points
    with lock:
        batch, points = points, []
    if batch:
        influx.write_points(batch, time_precision="s", batch_size=5000)
def on_message(client, userdata, msg):
    r = json.loads(msg.payload)
    ts = r.pop("ts")
    p = {"measurement": "readings", "tags": {"meter_id": msg.topic.split("/")[1]},
         "time": ts, "fields": {k: float(v) for k, v in r.items()}}
    with lock:
        points.append(p)
        full = len(points) >= 5000
    if full:
        flush()
def ticker():
    while True:
        threading.Event().wait(1.0)
        flush()
threading.Thread(target=ticker, daemon=True).start()
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
c.on_connect = lambda *a: print("connected", flush=True)
c.on_message = on_message
c.connect("127.0.0.1", port, keepalive=60)
c.loop_forever()
"""


def node_red_install() -> Path:
    red = NODE_RED_DIR / "node_modules" / "node-red" / "red.js"
    if not red.exists():
        NODE_RED_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", *NODE_RED_PACKAGES],
            cwd=NODE_RED_DIR,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return red


def node_red_flow(port: int, influx_port: int, db: str, client_id: str) -> list[dict]:
    fn = (
        "const p = msg.payload; const fields = {};"
        "for (const k in p) { if (k !== 'ts') fields[k] = p[k]; }"
        "msg.payload = {measurement: 'readings', tags: {meter_id: msg.topic.split('/')[1]},"
        " fields: fields, timestamp: new Date(p.ts)}; return msg;"
    )
    return [
        {"id": "f0tab", "type": "tab", "label": "bench"},
        {
            "id": "c0broker",
            "type": "mqtt-broker",
            "broker": "127.0.0.1",
            "port": str(port),
            "clientid": client_id,
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": False,
            "autoUnsubscribe": False,
        },
        {
            "id": "n1in",
            "type": "mqtt in",
            "z": "f0tab",
            "topic": "meters/+/reading",
            "qos": "1",
            "datatype": "utf8",
            "broker": "c0broker",
            "nl": False,
            "rap": True,
            "rh": 0,
            "inputs": 0,
            "wires": [["n2json"]],
        },
        {
            "id": "n2json",
            "type": "json",
            "z": "f0tab",
            "property": "payload",
            "action": "obj",
            "wires": [["n3fn"]],
        },
        {
            "id": "n3fn",
            "type": "function",
            "z": "f0tab",
            "func": fn,
            "outputs": 1,
            "wires": [["n4join"]],
        },
        {
            "id": "n4join",
            "type": "join",
            "z": "f0tab",
            "mode": "custom",
            "build": "array",
            "property": "payload",
            "propertyType": "msg",
            "count": "5000",
            "timeout": "1",
            "accumulate": False,
            "wires": [["n5influx"]],
        },
        {
            "id": "n5influx",
            "type": "influxdb batch",
            "z": "f0tab",
            "influxdb": "c1influx",
            "precision": "s",
            "wires": [],
        },
        {
            "id": "c1influx",
            "type": "influxdb",
            "hostname": "127.0.0.1",
            "port": str(influx_port),
            "protocol": "http",
            "database": db,
            "influxdbVersion": "1.x",
            "usetls": False,
        },
    ]


def mw_config(
    work: Path,
    port: int,
    client_id: str,
    backend: str,
    influx_url: str,
    metrics_port: int,
    codec: str,
) -> Path:
    topic = "meters/{meter_id}/reading" if codec == "canonical" else "gateways/+/batch"
    storage = (
        f"  backend: influx\n  influx: {{flavor: v1, url: '{influx_url}', database: {client_id.replace('-', '_')}}}\n"
        f"  spool: {{path: {work / 'spool'}}}\n"
        if backend == "influx"
        else f"  backend: embedded\n  path: {work / 'store.duckdb'}\n"
    )
    cfg = work / "meterwatch.yaml"
    cfg.write_text(
        "collector:\n  mqtt:\n    broker: external\n"
        f"    host: 127.0.0.1\n    port: {port}\n    client_id: {client_id}\n"
        f"    subscriptions: [{{topic: '{topic}', codec: {codec}}}]\n"
        f"    dead_letter: {work / 'dead.jsonl'}\n"
        "storage:\n" + storage + f"metrics: {{enabled: true, port: {metrics_port}}}\n"
        f"alerts: {{feed: {work / 'alerts.jsonl'}}}\n"
    )
    return cfg


def run_consumer(
    name: str, codec: str, port: int, influx_url: str, work: Path, expect: int, messages: int
) -> dict[str, float]:
    from tests.support.servers import free_port

    cid = f"bench-{codec}-{name}"
    topic = "meters/+/reading" if codec == "canonical" else "gateways/+/batch"
    d = work / cid
    d.mkdir()
    log = d / "out.log"
    py = sys.executable
    iport = int(influx_url.rsplit(":", 1)[1])
    db = cid.replace("-", "_")
    if name == "count":
        done_flag = lambda: "done" in log.read_text()  # noqa: E731
        r = measure(
            [py, "-c", COUNT_SCRIPT, str(port), cid, topic, str(messages)],
            log,
            "connected",
            done_flag,
            cwd=d,
        )
        r["stored"] = expect  # every message counted on receipt (readings: messages x per)
        return r
    if name == "bridge":
        influx_query(influx_url, f'CREATE DATABASE "{db}"')
        r = measure(
            [py, "-c", BRIDGE_SCRIPT, str(port), cid, topic, str(iport), db],
            log,
            "connected",
            lambda: influx_count(influx_url, db) >= expect,
            cwd=d,
        )
        r["stored"] = influx_count(influx_url, db)
        return r
    if name == "node-red":
        red = node_red_install()
        influx_query(influx_url, f'CREATE DATABASE "{db}"')
        flows = d / "flows.json"
        flows.write_text(json.dumps(node_red_flow(port, iport, db, cid)))
        settings = d / "settings.js"
        settings.write_text(
            f"module.exports = {{ uiHost: '127.0.0.1', uiPort: {free_port()}, "
            f"flowFile: '{flows}', credentialSecret: false, logging: {{console: {{level: 'info'}}}} }};\n"
        )
        r = measure(
            ["node", str(red), "--userDir", str(NODE_RED_DIR), "--settings", str(settings)],
            log,
            "Connected to broker",
            lambda: influx_count(influx_url, db) >= expect,
            cwd=d,
        )
        r["stored"] = influx_count(influx_url, db)
        return r
    backend = "influx" if name == "mw-influx" else "embedded"
    if backend == "influx":
        influx_query(influx_url, f'CREATE DATABASE "{db}"')
    mport = free_port()
    cfg = mw_config(d, port, cid, backend, influx_url, mport, codec)
    meterwatch = str(Path(sys.executable).with_name("meterwatch"))
    if backend == "influx":
        done = lambda: influx_count(influx_url, db) >= expect  # noqa: E731
    else:
        done = lambda: metrics_counter(mport, "readings_stored") >= expect  # noqa: E731
    r = measure(
        [meterwatch, "run", "--config", str(cfg)],
        log,
        "MQTT connected",
        done,
        cwd=d,
        stop_signal=signal.SIGINT,
    )
    text = log.read_text(errors="replace")
    r["keepalive_disconnects"] = text.count("MQTT disconnected")
    if (d / "dead.jsonl").exists():
        raise RuntimeError(f"{cid}: dead-lettered messages")
    if backend == "influx":
        r["stored"] = influx_count(influx_url, db)
    else:
        import duckdb

        con = duckdb.connect(str(d / "store.duckdb"), read_only=True)
        rows, distinct = con.execute(
            "SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT meter_id, ts FROM readings)) FROM readings"
        ).fetchone()
        con.close()
        if rows != distinct:
            raise RuntimeError(f"{cid}: {rows} rows for {distinct} distinct readings")
        r["stored"] = distinct
    return r


def bench(
    messages: int,
    meters: int,
    per: int,
    consumers: list[str],
    codecs: tuple[str, ...] = ("canonical", "batch"),
) -> dict[str, object]:
    from tests.support.servers import influxdb

    out: dict[str, object] = {"messages": messages, "meters": meters, "per_message": per}
    streams = {
        "canonical": (single_messages(messages, meters), [c for c in SINGLE if c in consumers]),
        "batch": (batch_messages(messages, per, meters), [c for c in BATCH if c in consumers]),
    }
    streams = {k: v for k, v in streams.items() if k in codecs}
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp, influxdb() as influx:
        work = Path(tmp)
        broker, port = start_broker(work)
        try:
            out["influx_raw_ceiling"] = raw_influx_ceiling(
                influx.url, single_messages(messages, meters)
            )
            print(f"raw InfluxDB ceiling: {out['influx_raw_ceiling']}", file=sys.stderr, flush=True)
            for codec, (msgs, names) in streams.items():
                topic = "meters/+/reading" if codec == "canonical" else "gateways/+/batch"
                for name in names:
                    register(port, f"bench-{codec}-{name}", topic)
                out[f"{codec}_publish_s"] = publish(port, msgs)
                out[f"{codec}_payload_bytes"] = sum(len(b) for _, b in msgs) / len(msgs)
                for name in names:
                    r = run_consumer(name, codec, port, influx.url, work, messages, len(msgs))
                    r["messages_per_s"] = len(msgs) / r["seconds"]
                    r["readings_per_s"] = messages / r["seconds"]
                    r["cpu_s_per_100k_msgs"] = r["cpu_s"] / len(msgs) * 100_000
                    if r["stored"] != messages:
                        raise RuntimeError(f"{codec} {name}: stored {r['stored']} of {messages}")
                    out[f"{codec}:{name}"] = r
                    print(f"{codec} {name}: {r}", file=sys.stderr, flush=True)
        finally:
            broker.terminate()
            broker.wait(60)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--meters", type=int, default=20_000)
    ap.add_argument("--per-message", type=int, default=100)
    ap.add_argument("--consumers", default=",".join(SINGLE))
    ap.add_argument("--codecs", default="canonical,batch", help="which streams to run")
    args = ap.parse_args()
    result = bench(
        args.messages,
        args.meters,
        args.per_message,
        args.consumers.split(","),
        tuple(args.codecs.split(",")),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
