"""MQTT ingest throughput [messages/s, readings/s] through a real Mosquitto into a store.

Payload mode: the ``batch`` codec (:mod:`protocols.mqtt_payload`), as a data concentrator
publishes — one QoS 1 message per gateway per interval, ``{"gateway", "ts", "readings": [...]}``
with ``--per-message`` canonical readings (every quantity of a three-phase meter present).

Method (backlog drain). One Mosquitto on a free loopback port; every consumer first registers a
persistent session (``clean_session=False``, QoS 1 subscription) and goes away; one publisher
then publishes the whole stream once, so the broker queues an identical backlog for each
consumer. The consumers then run one after the other, each timed from its connect until the last
reading is where that consumer puts it. The publisher is not running while a consumer is timed,
so it does not compete for the 2 shared cores; the broker's ``max_inflight_messages`` (100, as
in tests/support/servers.py) applies to all.

Consumers:

- ``raw``: the ceiling — a paho subscriber that only counts messages (auto-ack);
- ``parse``: for reference, the same subscriber that also ``json.loads`` every payload — the
  least any consumer that looks at the readings must do;
- ``meterwatch → embedded``: :class:`collector.mqtt.MqttCollector` + :class:`ReadingWriter`
  (direct mode) + :class:`EmbeddedStore` (DuckDB), PUBACK only after the DuckDB commit;
- ``meterwatch → influx``: the same collector, writer in spooled mode (SQLite spool, fsync per
  flush, PUBACK after the spool) draining to :class:`InfluxStore` (``flavor=v2``);
- ``meterwatch → influx 1.x``: the same, draining to the real InfluxDB 1.6.7 backend
  (``flavor=v1``); no bridge counterpart (see below);
- ``bridge``: the common hand-written bridge — paho ``on_message`` → ``json.loads`` → one
  influxdb-client ``Point`` per reading → ``write_api`` in batching mode (auto-ack on receipt,
  so nothing is durable when the broker forgets the message).

The InfluxDB-API store for both is VictoriaMetrics (Debian ``victoria-metrics``, started here):
influxdb-client only speaks ``/api/v2/write``, which Debian's InfluxDB 1.6.7 does not have
(it came with 1.8). A consumer is finished when the server's ``vm_rows_inserted_total{type=
"influx"}`` grew by readings × fields (VictoriaMetrics stores one sample per field).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import peak_rss_mb, synthetic_readings
from meterwatch.collector.mqtt import MqttCollector
from meterwatch.collector.writer import ReadingWriter
from meterwatch.core.schema import READING_FIELDS
from meterwatch.core.stats import Stats
from meterwatch.protocols.mqtt_payload import encode_reading
from meterwatch.storage.embedded import EmbeddedStore
from meterwatch.storage.influx import InfluxStore
from meterwatch.storage.spool import Spool

TOPIC = "gateways/{gw}/batch"
FILTER = "gateways/+/batch"
CONSUMERS = (
    "raw",
    "parse",
    "meterwatch_embedded",
    "meterwatch_influx",
    "meterwatch_influx1",
    "bridge",
)
_VM_ROWS = re.compile(r'^vm_rows_inserted_total\{type="influx"\} (\d+)', re.M)


class BenchBroker:
    """Mosquitto on a free loopback port, queues in memory (no persistence file to autosave)."""

    def __init__(self, workdir: Path):
        from tests.support.servers import Mosquitto, free_port

        self.port = free_port()
        self._broker = Mosquitto(workdir, self.port)
        # Same limits as the test broker (tests/support/servers.py), without the persistence autosave
        # that would rewrite a backlog of tens of MB every second while a consumer is timed.
        self._broker.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 100\n"
            f"log_dest file {self._broker.log}\n"
        )

    def __enter__(self) -> BenchBroker:
        self._broker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._broker.stop()


def payloads(messages: int, per_message: int) -> list[tuple[str, bytes]]:
    """``messages`` batch payloads of ``per_message`` readings (distinct meters per gateway)."""
    frame = synthetic_readings(messages * per_message, 1)
    records = frame.to_dict("records")
    out = []
    for m in range(messages):
        chunk = records[m * per_message : (m + 1) * per_message]
        body = {
            "gateway": f"gw{m:05d}",
            "readings": [json.loads(encode_reading(r)) for r in chunk],
        }
        out.append(
            (TOPIC.format(gw=f"gw{m:05d}"), json.dumps(body, separators=(",", ":")).encode())
        )
    return out


def _client(client_id: str, clean: bool) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)


def register_sessions(port: int) -> None:
    """Persistent QoS 1 subscriptions for every consumer, so the broker queues for each."""
    for cid in CONSUMERS:
        c = _client(f"bench-{cid}", clean=False)
        subscribed = threading.Event()
        c.on_subscribe = lambda *a, ev=subscribed: ev.set()
        c.connect("127.0.0.1", port)
        c.loop_start()
        c.subscribe(FILTER, qos=1)
        if not subscribed.wait(10):
            raise RuntimeError(f"no SUBACK for bench-{cid}")
        c.disconnect()
        c.loop_stop()


def publish(port: int, msgs: list[tuple[str, bytes]]) -> float:
    """Publish every message at QoS 1; return seconds until the broker acknowledged all."""
    c = _client("bench-publisher", clean=True)
    c.max_inflight_messages_set(200)
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.perf_counter()
    infos = [c.publish(topic, body, qos=1) for topic, body in msgs]
    for info in infos:
        info.wait_for_publish(60)
    seconds = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return seconds


def _wait(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not finished after {timeout_s} s")
        time.sleep(0.005)


def run_raw(port: int, messages: int, parse: bool = False) -> float:
    """The ceiling: count messages, nothing else (``parse``: also ``json.loads`` each one)."""
    c = _client("bench-parse" if parse else "bench-raw", clean=False)
    got = [0]

    def on_message(client, userdata, msg) -> None:  # noqa: ANN001
        if parse:
            json.loads(msg.payload)
        got[0] += 1

    c.on_message = on_message
    t0 = time.perf_counter()
    c.connect("127.0.0.1", port)
    c.loop_start()
    _wait(lambda: got[0] >= messages, 300, "raw subscriber")
    seconds = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return seconds


def vm_rows(url: str) -> int:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        m = _VM_ROWS.search(resp.read().decode())
    return int(m.group(1)) if m else 0


def run_bridge(port: int, vm_url: str, messages: int, samples: int) -> float:
    """The hand-written bridge: paho → json → Point → influxdb-client batching write_api."""
    from influxdb_client import InfluxDBClient, Point, WriteOptions, WritePrecision

    before = vm_rows(vm_url)
    influx = InfluxDBClient(url=vm_url, token="bench", org="bench")
    write_api = influx.write_api(write_options=WriteOptions(batch_size=5000, flush_interval=1000))
    got = [0]

    def on_message(client, userdata, msg) -> None:  # noqa: ANN001
        data = json.loads(msg.payload)
        points = []
        for r in data["readings"]:
            p = Point("readings").tag("meter_id", r["meter_id"]).time(r["ts"], WritePrecision.S)
            for k, v in r.items():
                if k not in ("meter_id", "ts"):
                    p.field(k, float(v))
            points.append(p)
        write_api.write(bucket="meterwatch", record=points)
        got[0] += 1

    c = _client("bench-bridge", clean=False)
    c.on_message = on_message
    t0 = time.perf_counter()
    c.connect("127.0.0.1", port)
    c.loop_start()
    _wait(lambda: got[0] >= messages, 600, "bridge")
    write_api.close()  # flushes what the batching buffer still holds
    _wait(lambda: vm_rows(vm_url) - before >= samples, 120, "bridge rows in VictoriaMetrics")
    seconds = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    influx.close()
    return seconds


async def _run_collector(
    port: int,
    writer: ReadingWriter,
    stats: Stats,
    workdir: Path,
    client_id: str,
    finished: Callable[[], bool],
) -> float:
    writer.start()
    collector = MqttCollector(
        host="127.0.0.1",
        port=port,
        subscriptions=[(FILTER, "batch")],
        writer=writer,
        stats=stats,
        client_id=client_id,
        dead_letter=workdir / "dead-letter.jsonl",
    )
    t0 = time.perf_counter()
    collector.start()
    deadline = time.monotonic() + 600
    while not finished():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{client_id}: not finished after 600 s: {stats.snapshot()}")
        await asyncio.sleep(0.005)
    seconds = time.perf_counter() - t0
    collector.stop()
    await writer.close()
    if stats.snapshot().get("mqtt_dead_letters"):
        raise RuntimeError(f"{client_id}: dead-lettered messages: {stats.snapshot()}")
    return seconds


def run_meterwatch_embedded(port: int, workdir: Path, readings: int) -> float:
    stats = Stats()
    store = EmbeddedStore(workdir / "bench.duckdb")
    writer = ReadingWriter(store, stats)
    seconds = asyncio.run(
        _run_collector(
            port,
            writer,
            stats,
            workdir,
            "bench-meterwatch_embedded",
            lambda: stats.snapshot().get("readings_stored", 0) >= readings,
        )
    )
    _, distinct = store.count_rows()
    store.close()
    if distinct != readings:
        raise RuntimeError(f"embedded store holds {distinct} distinct readings of {readings}")
    return seconds


def run_meterwatch_influx(
    port: int, vm_url: str, workdir: Path, readings: int, samples: int
) -> float:
    stats = Stats()
    before = vm_rows(vm_url)
    store = InfluxStore(flavor="v2", url=vm_url, org="bench", bucket="meterwatch", token="bench")
    spool = Spool(workdir / "spool")
    writer = ReadingWriter(store, stats, spool=spool)
    seconds = asyncio.run(
        _run_collector(
            port,
            writer,
            stats,
            workdir,
            "bench-meterwatch_influx",
            lambda: stats.snapshot().get("readings_drained", 0) >= readings,
        )
    )
    _wait(lambda: vm_rows(vm_url) - before >= samples, 60, "MeterWatch rows in VictoriaMetrics")
    spool.close()
    store.close()
    return seconds


def run_meterwatch_influx1(port: int, influx_url: str, workdir: Path, readings: int) -> float:
    """The same path into the real InfluxDB 1.x backend (``flavor="v1"``, ``/write``)."""
    from bench.storage_bench import _count, _query

    _query(influx_url, 'CREATE DATABASE "meterwatch"')
    stats = Stats()
    store = InfluxStore(flavor="v1", url=influx_url, database="meterwatch")
    spool = Spool(workdir / "spool")
    writer = ReadingWriter(store, stats, spool=spool)
    seconds = asyncio.run(
        _run_collector(
            port,
            writer,
            stats,
            workdir,
            "bench-meterwatch_influx1",
            lambda: stats.snapshot().get("readings_drained", 0) >= readings,
        )
    )
    spool.close()
    store.close()
    got = _count(influx_url, "meterwatch")
    if got != readings:
        raise RuntimeError(f"InfluxDB holds {got} of {readings} readings")
    return seconds


def bench(messages: int, per_message: int) -> dict[str, object]:
    from tests.support.servers import influxdb, victoria_metrics

    msgs = payloads(messages, per_message)
    readings = messages * per_message
    samples = readings * len(READING_FIELDS)
    out: dict[str, object] = {
        "messages": messages,
        "per_message": per_message,
        "readings": readings,
        "payload_bytes": int(sum(len(b) for _, b in msgs) / len(msgs)),
    }
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mqtt-bench-") as tmp:
        work = Path(tmp)
        (work / "broker").mkdir()
        with BenchBroker(work / "broker") as broker:
            register_sessions(broker.port)
            out["publish_s"] = publish(broker.port, msgs)
            seconds["raw"] = run_raw(broker.port, messages)
            seconds["parse"] = run_raw(broker.port, messages, parse=True)
            (work / "mw-embedded").mkdir()
            seconds["meterwatch_embedded"] = run_meterwatch_embedded(
                broker.port, work / "mw-embedded", readings
            )
            with victoria_metrics() as vm:
                (work / "mw-influx").mkdir()
                seconds["meterwatch_influx"] = run_meterwatch_influx(
                    broker.port, vm.url, work / "mw-influx", readings, samples
                )
                seconds["bridge"] = run_bridge(broker.port, vm.url, messages, samples)
            # One store server at a time: two would crowd the 2 cores.
            with influxdb() as influx:
                (work / "mw-influx1").mkdir()
                seconds["meterwatch_influx1"] = run_meterwatch_influx1(
                    broker.port, influx.url, work / "mw-influx1", readings
                )
    for name, s in seconds.items():
        out[name] = {"seconds": s, "messages_per_s": messages / s, "readings_per_s": readings / s}
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--per-message", type=int, default=100)
    args = ap.parse_args()
    print(json.dumps(bench(args.messages, args.per_message)))


if __name__ == "__main__":
    main()
