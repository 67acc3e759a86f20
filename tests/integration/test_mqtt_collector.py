"""MqttCollector against a real Mosquitto: restarts lose nothing, shared subscriptions split a
stream, batch and Tasmota codecs store their readings, bad messages are dead-lettered.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pandas as pd
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from meterwatch.collector.mqtt import MqttCollector
from meterwatch.collector.writer import ReadingWriter
from meterwatch.core.clock import Clock
from meterwatch.core.stats import Stats
from meterwatch.protocols.mqtt_payload import encode_reading
from meterwatch.storage.embedded import EmbeddedStore
from tests.support.servers import Mosquitto

T0 = pd.Timestamp("2026-01-05T00:00:00Z")


def reading(i: int) -> dict[str, Any]:
    """Reading number ``i``: ten meters, one minute apart; power carries the number."""
    return {
        "meter_id": f"M{i % 10:02d}",
        "ts": T0 + pd.Timedelta(minutes=i // 10),
        "power_kw": float(i),
    }


class Publisher:
    """A QoS 1 publisher with its own persistent session: unacked messages are resent.

    Messages published while the broker is down are queued by paho and sent on reconnect;
    a message counts as delivered when its PUBACK arrives (``on_publish``).
    """

    def __init__(self, port: int, client_id: str = "test-publisher"):
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_publish = self._on_publish
        self._lock = threading.Lock()
        self.acked: set[int] = set()
        self.mids: list[int] = []
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # noqa: ANN001
        with self._lock:
            self.acked.add(mid)

    def publish(self, topic: str, payload: bytes) -> None:
        # Not under self._lock: paho holds its own lock while calling on_publish (lock order).
        mid = self.client.publish(topic, payload, qos=1).mid
        with self._lock:  # a PUBACK that came first is already in acked: fine
            self.mids.append(mid)

    def wait_all(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                missing = [m for m in self.mids if m not in self.acked]
            if not missing:
                return
            time.sleep(0.05)
        raise AssertionError(f"{len(missing)} of {len(self.mids)} messages never acknowledged")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Stored:
    """Distinct (meter_id, ts) keys and row count the writer stored (its listener)."""

    def __init__(self) -> None:
        self.keys: set[tuple[str, pd.Timestamp]] = set()
        self.rows = 0
        self.powers: set[float] = set()
        self._lock = threading.Lock()

    def __call__(self, frame: pd.DataFrame) -> None:
        with self._lock:
            self.rows += len(frame)
            self.keys.update(zip(frame["meter_id"], frame["ts"], strict=True))
            self.powers.update(frame["power_kw"].dropna())


def make_writer(path: Path, stats: Stats) -> tuple[EmbeddedStore, ReadingWriter, Stored]:
    store = EmbeddedStore(path)
    stored = Stored()
    writer = ReadingWriter(store, stats, flush_interval_s=0.05, listeners=[stored])
    writer.start()
    return store, writer, stored


def collector(
    port: int, writer: ReadingWriter, stats: Stats, tmp: Path, **kw: Any
) -> MqttCollector:
    kw.setdefault("topic_template", "meters/{meter_id}/reading")
    c = MqttCollector(
        host="127.0.0.1",
        port=port,
        writer=writer,
        stats=stats,
        dead_letter=tmp / "dead.jsonl",
        reconnect_min_s=1,
        reconnect_max_s=1,
        **kw,
    )
    c.start()
    assert c.connected.wait(10), "collector did not connect"
    return c


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_broker_restart_and_collector_restart_lose_nothing(
    mosquitto_broker: Mosquitto, tmp_path: Path, protocol: str
) -> None:
    n = 300

    async def main() -> None:
        stats = Stats()
        store, writer, stored = make_writer(tmp_path / "db.duckdb", stats)
        coll = collector(
            mosquitto_broker.port, writer, stats, tmp_path, client_id="c1", protocol=protocol
        )
        pub = Publisher(mosquitto_broker.port)

        def publish_range(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                r = reading(i)
                pub.publish(f"meters/{r['meter_id']}/reading", encode_reading(r))
                time.sleep(0.002)

        # 1. first third, then the broker restarts mid-stream (persistence on).
        publish_range(0, 100)
        await asyncio.to_thread(mosquitto_broker.restart)
        publish_range(100, 200)
        await asyncio.to_thread(pub.wait_all)
        # 2. the collector stops mid-stream; the broker queues for its session meanwhile.
        await asyncio.to_thread(coll.stop)
        await asyncio.to_thread(publish_range, 200, n)
        await asyncio.to_thread(pub.wait_all)
        coll = collector(
            mosquitto_broker.port, writer, stats, tmp_path, client_id="c1", protocol=protocol
        )
        try:
            await wait_until(
                lambda: len(stored.keys) >= n,
                30,
                f"{n} distinct readings in the store (missing numbers: "
                f"{sorted(set(range(n)) - {int(p) for p in stored.powers})[:20]}...)",
            )
            await asyncio.sleep(0.3)  # late redeliveries would show up as extra rows here
        finally:
            await asyncio.to_thread(coll.stop)
            await asyncio.to_thread(pub.close)
            await writer.close()
        frame = store.read_readings()
        store.close()
        assert len(frame) == n
        assert sorted(frame["power_kw"].astype(int)) == list(range(n))
        assert not (tmp_path / "dead.jsonl").exists()

    asyncio.run(main())


def test_shared_subscription_splits_the_stream_without_loss_or_duplicates(
    mosquitto_broker: Mosquitto, tmp_path: Path
) -> None:
    n = 200

    async def main() -> None:
        wstats, s1, s2 = Stats(), Stats(), Stats()
        store, writer, stored = make_writer(tmp_path / "db.duckdb", wstats)
        template = "$share/meterwatch/meters/{meter_id}/reading"
        c1 = collector(
            mosquitto_broker.port, writer, s1, tmp_path, client_id="a", topic_template=template
        )
        c2 = collector(
            mosquitto_broker.port, writer, s2, tmp_path, client_id="b", topic_template=template
        )
        await asyncio.sleep(0.3)  # both subscriptions in place
        pub = Publisher(mosquitto_broker.port, "split-publisher")
        for i in range(n):
            r = reading(i)
            pub.publish(f"meters/{r['meter_id']}/reading", encode_reading(r))
        await asyncio.to_thread(pub.wait_all)
        try:
            await wait_until(lambda: stored.rows >= n, 20, f"{n} stored rows")
            await asyncio.sleep(0.3)
        finally:
            for c in (c1, c2):
                await asyncio.to_thread(c.stop)
            pub.close()
            await writer.close()
        rows, distinct = store.count_rows()
        store.close()
        got1 = s1.snapshot().get("mqtt_messages", 0)
        got2 = s2.snapshot().get("mqtt_messages", 0)
        assert rows == distinct == n  # nothing lost, nothing stored twice
        assert got1 + got2 == n and got1 > 0 and got2 > 0, (got1, got2)
        assert not (tmp_path / "dead.jsonl").exists()  # $share/ prefix stripped for meter ids

    asyncio.run(main())


def test_batch_and_tasmota_codecs_and_dead_letters(
    mosquitto_broker: Mosquitto, tmp_path: Path
) -> None:
    async def main() -> None:
        stats = Stats()
        store, writer, stored = make_writer(tmp_path / "db.duckdb", stats)
        coll = collector(
            mosquitto_broker.port,
            writer,
            stats,
            tmp_path,
            topic_template=None,
            subscriptions=[
                ("meters/{meter_id}/reading", "canonical"),
                ("gateways/+/batch", "batch"),
                ("tele/{meter_id}/SENSOR", "tasmota"),
            ],
            max_payload_bytes=4096,
            clock=Clock(start=datetime(2026, 1, 5, 0, 20, tzinfo=UTC)),  # service time
        )
        pub = Publisher(mosquitto_broker.port, "codec-publisher")
        batch = {
            "gateway": "gw1",
            "ts": "2026-01-05T00:15:00Z",
            "readings": [{"meter_id": f"B{i}", "power_kw": float(i)} for i in range(5)],
        }
        pub.publish("gateways/gw1/batch", json.dumps(batch).encode())
        bad_batch = {"readings": [{"meter_id": "X1", "ts": "2026-01-05T00:15:00Z"}, {"ts": "x"}]}
        pub.publish("gateways/gw2/batch", json.dumps(bad_batch).encode())
        tasmota = {
            "Time": "2026-01-05T00:15:00",
            "ENERGY": {
                "Total": 12.5,
                "Power": 1500,
                "Voltage": 231,
                "Current": 6.5,
                "Factor": 0.98,
            },
        }
        pub.publish("tele/plug7/SENSOR", json.dumps(tasmota).encode())
        pub.publish("tele/plug8/SENSOR", b'{"Time": "2026-01-05T00:15:00"}')
        pub.publish("meters/M1/reading", b"x" * 10)
        pub.publish("meters/M2/reading", b'{"meter_id": "M2", "ts": true, "power_kw": 1}')
        pub.publish("gateways/gw3/batch", b" " * 5000)  # over max_payload_bytes
        await asyncio.to_thread(pub.wait_all)
        try:
            await wait_until(lambda: stored.rows >= 6, 10, "6 stored rows")
            await wait_until(
                lambda: stats.snapshot().get("mqtt_dead_letters", 0) >= 5, 10, "5 dead letters"
            )
        finally:
            await asyncio.to_thread(coll.stop)
            pub.close()
            await writer.close()
        got = store.read_readings(include_times=True).set_index("meter_id")
        store.close()
        assert sorted(got.index) == ["B0", "B1", "B2", "B3", "B4", "plug7"]
        # Receipt in service time (not the wall clock); the payload's ts is the device's.
        assert got["collected_at"].between("2026-01-05T00:20Z", "2026-01-05T00:25Z").all()
        assert (got["device_ts"] == got["ts"]).all()
        assert got.loc["B3", "power_kw"] == 3.0
        assert got.loc["plug7", "power_kw"] == pytest.approx(1.5)
        assert got.loc["plug7", "energy_import_kwh"] == 12.5
        assert got.loc["plug7", "ts"] == pd.Timestamp("2026-01-05T00:15:00Z")
        dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
        reasons = {d["topic"]: d["reason"] for d in dead}
        assert "readings[1]" in reasons["gateways/gw2/batch"]
        assert "ENERGY" in reasons["tele/plug8/SENSOR"]
        assert "not JSON" in reasons["meters/M1/reading"]
        assert "bool" in reasons["meters/M2/reading"]  # dead-lettered, intake goes on
        assert "exceeds mqtt.max_payload_bytes=4096" in reasons["gateways/gw3/batch"]
        assert stats.snapshot()["mqtt_readings"] == 6

    asyncio.run(main())


def test_tls_settings_are_applied(tmp_path: Path) -> None:
    """A CA file makes the client verify the broker's certificate and host name; a bad path fails."""
    import ssl

    with pytest.raises(FileNotFoundError):
        MqttCollector(
            host="127.0.0.1",
            port=1,
            topic_template="meters/{meter_id}/reading",
            writer=None,  # type: ignore[arg-type]
            stats=Stats(),
            tls_ca=tmp_path / "missing-ca.pem",
        )
    ca = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    assert ca.exists(), f"no system CA bundle at {ca}"
    c = MqttCollector(
        host="127.0.0.1",
        port=1,
        topic_template="meters/{meter_id}/reading",
        writer=None,  # type: ignore[arg-type]
        stats=Stats(),
        tls_ca=ca,
    )
    ctx = c.client.ssl_context
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
