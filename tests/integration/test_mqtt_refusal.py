"""Refused MQTT messages are offered again without a reconnect (real Mosquitto, tiny spool).

The store is unavailable (an injected fault: the one fake here), so the spool fills up and the
writer refuses; the collector holds the refused messages unacknowledged and retries them with
backoff. Once the store is back and the spool drains, every published message must be stored
exactly once, on the first connection, in publication order.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pandas as pd
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from meterwatch.collector.mqtt import MqttCollector
from meterwatch.collector.writer import ReadingWriter
from meterwatch.core.errors import StorageError
from meterwatch.core.stats import Stats
from meterwatch.protocols.mqtt_payload import encode_reading
from meterwatch.storage.embedded import EmbeddedStore
from meterwatch.storage.spool import Spool
from tests.support.servers import Mosquitto

T0 = pd.Timestamp("2026-01-05T00:00:00Z")
N = 300
#: Mosquitto's max_inflight_messages in tests/support/servers.py: the 3.1.1 in-flight window.
BROKER_INFLIGHT = 100


class GatedStore(EmbeddedStore):
    """The embedded store behind a switch: writes fail (StorageError) while ``up`` is clear."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.up = threading.Event()

    def write_readings(self, df: pd.DataFrame) -> int:
        if not self.up.is_set():
            raise StorageError(f"embedded store {self.path}: unavailable (test fault)")
        return super().write_readings(df)


class Order:
    """Writer listener: the order in which messages (power_kw = their number) were stored."""

    def __init__(self) -> None:
        self.numbers: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, frame: pd.DataFrame) -> None:
        with self._lock:
            self.numbers.extend(int(p) for p in frame["power_kw"])


def message(i: int) -> tuple[str, bytes]:
    """Message number ``i``: ten meters, one minute apart; power carries the number."""
    meter = f"M{i % 10:02d}"
    payload = encode_reading(
        {"meter_id": meter, "ts": T0 + pd.Timedelta(minutes=i // 10), "power_kw": float(i)}
    )
    return f"meters/{meter}/reading", payload


def publish_all(port: int, n: int, timeout_s: float = 30.0) -> None:
    """Publish messages 0..n-1 at QoS 1 from one client; return once the broker acked them all."""
    acked: set[int] = set()
    lock = threading.Lock()

    def on_publish(client, userdata, mid, reason_code, properties) -> None:  # noqa: ANN001
        with lock:
            acked.add(mid)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="refusal-publisher")
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port, keepalive=10)
    client.loop_start()
    try:
        mids = [client.publish(*message(i), qos=1).mid for i in range(n)]
        deadline = time.monotonic() + timeout_s
        while True:
            with lock:
                missing = len(set(mids) - acked)
            if not missing:
                return
            assert time.monotonic() < deadline, f"broker acknowledged {n - missing} of {n}"
            time.sleep(0.02)
    finally:
        client.disconnect()
        client.loop_stop()


async def wait_until(cond: Callable[[], bool], timeout_s: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what()}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("protocol", "window", "cap"),
    [("3.1.1", BROKER_INFLIGHT, None), ("5", 20, None), ("3.1.1", BROKER_INFLIGHT, 50)],
    ids=["3.1.1", "5", "3.1.1-max_held-50"],
)
def test_refused_messages_are_retried_without_reconnect_and_stored_once(
    mosquitto_broker: Mosquitto, tmp_path: Path, protocol: str, window: int, cap: int | None
) -> None:
    """With ``cap`` (max_held) below what the broker sends: the rest is fetched by a reconnect."""
    stats = Stats()
    store = GatedStore(tmp_path / "store.duckdb")
    # About 2-3 kB per spooled flush (Arrow IPC, zstd); a flush takes every message that
    # arrived since the last one, so the first flush already fills it.
    spool = Spool(tmp_path / "spool", max_bytes=2_000)
    order = Order()
    max_held = 0
    held_twice: list[int] = []

    async def main() -> None:
        nonlocal max_held
        writer = ReadingWriter(
            store,
            stats,
            spool=spool,
            flush_interval_s=0.05,
            drain_interval_s=0.1,
            backoff_cap_s=0.3,
            listeners=[order],
        )
        writer.start()
        collector = MqttCollector(
            host="127.0.0.1",
            port=mosquitto_broker.port,
            topic_template="meters/{meter_id}/reading",
            writer=writer,
            stats=stats,
            client_id=f"refusal-{protocol}",
            protocol=protocol,
            receive_maximum=window,
            max_held=cap,
            dead_letter=tmp_path / "dead.jsonl",
        )
        collector.start()
        assert await asyncio.to_thread(collector.connected.wait, 10), "collector did not connect"

        def watch_held() -> None:
            nonlocal max_held
            max_held = max(max_held, collector.held_messages)
            seqs = [m.seq for m in collector._held]
            if len(set(seqs)) != len(seqs) or any(m.acked for m in collector._held):
                held_twice.append(len(seqs))

        def c(name: str) -> int:
            return stats.snapshot().get(name, 0)

        try:
            await asyncio.to_thread(publish_all, mosquitto_broker.port, N)
            # Store down: the spool fills, the writer refuses, refused messages are held.
            await wait_until(
                lambda: (watch_held(), spool.is_full and collector.held_messages > 0)[1],
                15,
                lambda: (
                    f"a full spool and held messages (spool {spool.depth_bytes} B, "
                    f"held {collector.held_messages}, counters {stats.snapshot()})"
                ),
            )
            # Retries go on and are refused while the spool stays full.
            await wait_until(
                lambda: (watch_held(), c("mqtt_refused_retries") >= 2)[1],
                10,
                lambda: f"refused retries (counters {stats.snapshot()})",
            )
            assert c("spool_refused") > 0
            assert order.numbers == []  # nothing reached the store
            # Store back: the spool drains, held messages are accepted, the broker sends the rest.
            store.up.set()
            await wait_until(
                lambda: (watch_held(), len(set(order.numbers)) >= N)[1],
                40,
                lambda: (
                    f"{N} messages stored (have {len(set(order.numbers))}, "
                    f"held {collector.held_messages}, counters {stats.snapshot()})"
                ),
            )
            await asyncio.sleep(0.3)  # a duplicate or late redelivery would show up here
            assert collector.held_messages == 0
        finally:
            await asyncio.to_thread(collector.stop)
            await writer.close()

    asyncio.run(main())
    counters = stats.snapshot()
    rows, distinct = store.count_rows()
    stored = store.read_readings()
    store.close()
    spool.close()

    # Every message, each (meter_id, ts) once.
    assert distinct == N and len(stored) == N
    assert sorted(stored["power_kw"].astype(int)) == list(range(N))
    if cap is None:
        # Without a second connection, nothing stored twice, in publication order.
        assert rows == N
        assert counters["mqtt_connects"] == 1
        assert counters["mqtt_messages"] == N  # no redelivery: nothing came twice
        assert order.numbers == list(range(N))
    else:
        # Past max_held messages were left with the broker and fetched by a reconnect.
        assert max_held <= cap
        assert counters["mqtt_held_overflow"] > 0
        assert counters["mqtt_overflow_reconnects"] >= 1
        assert counters["mqtt_connects"] == 1 + counters["mqtt_overflow_reconnects"]
    # Refusals happened and were counted; nothing was held twice or after its acknowledgement.
    # (How many are held at once is the broker's in-flight window: Mosquitto 2.0.11 sends past
    # max_inflight_messages / receive_maximum once PUBACKs interleave, so it is not asserted.)
    assert counters["mqtt_refused"] > 0 and counters["readings_refused"] > 0
    assert max_held > 0 and not held_twice
    assert not (tmp_path / "dead.jsonl").exists()
