"""The MQTT 5 receive maximum the collector announces is enforced by a real Mosquitto.

The collector acknowledges a QoS 1 message only once its readings are stored. Here the store
stalls (an injected fault: its write blocks until released, so the writer cannot acknowledge
anything). With ``receive_maximum = R`` announced at CONNECT, the broker must then deliver at
most R unacknowledged messages and hold the rest, however many were published. The broker's
own window (``max_inflight_messages 100`` in tests/support/servers.py) is larger than every R tried, so
the limit seen is the one the collector announced. Once the store resumes, every message must
arrive and be stored exactly once, on the same connection (no redelivery needed).

Not asserted: the window *after* acknowledgements start flowing. Mosquitto 2.0.11 (Debian 12's
package, used here) then sends past the client's receive maximum (seen: 5 outstanding for R = 3,
14 for R = 10); its inflight-quota accounting on PUBACK was fixed upstream in 2.0.13 (maintainer
in eclipse-mosquitto/mosquitto#2362; analysis in #2301). The collector does not rely on the
bound for correctness: whatever it is sent it stores and acknowledges exactly once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from meterwatch.collector.mqtt import MqttCollector
from meterwatch.collector.writer import ReadingWriter
from meterwatch.core.stats import Stats
from meterwatch.storage.embedded import EmbeddedStore
from tests.integration.test_mqtt_refusal import publish_all, wait_until
from tests.support.servers import Mosquitto

T0 = pd.Timestamp("2026-01-05T00:00:00Z")
#: Messages published while the store is stalled: several times every window tried.
N = 60
#: Mosquitto's max_inflight_messages in tests/support/servers.py (its window for 3.1.1 clients).
BROKER_INFLIGHT = 100
#: How long the stalled collector is watched for a message past its window [wall s]. Loopback
#: delivery of a QoS 1 message takes well under 10 ms, so 1 s is ample for any excess to show.
STALL_WATCH_S = 1.0


class StalledStore(EmbeddedStore):
    """The embedded store with its writes blocked (not failing) until ``resume`` is set."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.resume = threading.Event()
        self.blocked_writes = 0

    def write_readings(self, df: pd.DataFrame) -> int:
        if not self.resume.is_set():
            self.blocked_writes += 1
            # Bounded so that a failing test cannot hang the run; the test sets it well before.
            if not self.resume.wait(60):
                raise AssertionError("StalledStore was never resumed")
        return super().write_readings(df)


class InFlight:
    """Counts the messages the client received and the PUBACKs it sent (thread-safe).

    ``received - acked`` never exceeds what the broker has outstanding (a PUBACK is counted
    when the client sends it, before the broker sees it).
    """

    def __init__(self) -> None:
        self.received = 0
        self.acked = 0
        self._lock = threading.Lock()

    def wrap(self, collector: MqttCollector) -> None:
        on_batch = collector.client.on_batch
        ack = collector.client.ack

        def counting_on_batch(publishes: list[Any], generation: int) -> None:
            with self._lock:
                self.received += len(publishes)
            on_batch(publishes, generation)

        def counting_ack(packet_ids: Any, generation: int) -> bool:
            with self._lock:
                self.acked += len(packet_ids)
            return ack(packet_ids, generation)

        collector.client.on_batch = counting_on_batch
        collector.client.ack = counting_ack  # type: ignore[method-assign]

    def now(self) -> tuple[int, int]:
        with self._lock:
            return self.received, self.acked


@pytest.mark.parametrize("receive_maximum", [3, 10])
def test_broker_honours_the_announced_receive_maximum_while_the_writer_stalls(
    mosquitto_broker: Mosquitto, tmp_path: Path, receive_maximum: int
) -> None:
    assert receive_maximum < BROKER_INFLIGHT  # so the broker's own window is not what limits
    stats = Stats()
    store = StalledStore(tmp_path / "store.duckdb")
    inflight = InFlight()
    stalled_counts: list[tuple[int, int]] = []

    async def main() -> None:
        writer = ReadingWriter(store, stats, flush_interval_s=0.02)
        writer.start()
        collector = MqttCollector(
            host="127.0.0.1",
            port=mosquitto_broker.port,
            topic_template="meters/{meter_id}/reading",
            writer=writer,
            stats=stats,
            client_id=f"rxmax-{receive_maximum}",
            protocol="5",
            receive_maximum=receive_maximum,
            dead_letter=tmp_path / "dead.jsonl",
        )
        inflight.wrap(collector)
        subscribed = threading.Event()
        collector.client.on_subscribed = lambda *args: subscribed.set()
        collector.start()
        try:
            assert await asyncio.to_thread(subscribed.wait, 10), "collector did not subscribe"
            await asyncio.to_thread(publish_all, mosquitto_broker.port, N, 20.0)
            # Store stalled: exactly R messages come, none is acknowledged, and no more follow.
            await wait_until(
                lambda: inflight.now()[0] >= receive_maximum,
                10,
                lambda: f"{receive_maximum} messages delivered (have {inflight.now()})",
            )
            t0 = time.monotonic()
            while time.monotonic() - t0 < STALL_WATCH_S:
                stalled_counts.append(inflight.now())
                await asyncio.sleep(0.02)
            stalled_counts.append(inflight.now())
            assert store.blocked_writes >= 1  # the writer really was stuck in the store
            # The store resumes: acknowledgements flow, the broker sends the rest.
            store.resume.set()
            await wait_until(
                lambda: store.count_rows()[0] >= N,
                20,
                lambda: (
                    f"{N} readings stored (have {store.count_rows()}, in flight "
                    f"{inflight.now()}, counters {stats.snapshot()})"
                ),
            )
            await asyncio.sleep(0.2)  # a duplicate or late redelivery would show up here
        finally:
            store.resume.set()
            await asyncio.to_thread(collector.stop)
            await writer.close()

    asyncio.run(main())
    counters = stats.snapshot()
    rows, distinct = store.count_rows()
    stored = store.read_readings()
    store.close()

    # While stalled: exactly R delivered and unacknowledged, for the whole watch.
    assert set(stalled_counts) == {(receive_maximum, 0)}, stalled_counts
    # Afterwards: every message arrived exactly once and was stored and acknowledged once.
    assert counters["mqtt_messages"] == N and inflight.now() == (N, N)
    assert rows == distinct == N
    assert sorted(stored["power_kw"].astype(int)) == list(range(N))
    assert counters["mqtt_connects"] == 1  # no reconnect, so no redelivery was needed
    assert not (tmp_path / "dead.jsonl").exists()
