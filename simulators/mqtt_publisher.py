"""Publishes simulated meters' readings to an MQTT broker as canonical JSON, QoS 1."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pandas as pd
from paho.mqtt.enums import CallbackAPIVersion

from meterwatch.protocols.mqtt_payload import encode_reading

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    meter_id: str
    ts: str


class MqttMeterPublisher:
    """A meter-side MQTT client: one JSON message per meter per interval.

    A message counts as served (``acked``) once the broker acknowledged it (PUBACK).
    """

    def __init__(
        self, host: str, port: int, topic_template: str, client_id: str = "meterwatch-sim"
    ):
        self.host, self.port = host, port
        self.topic_template = topic_template
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True
        )
        self._client.max_inflight_messages_set(200)
        self._client.max_queued_messages_set(0)
        self._client.on_publish = self._on_publish
        self._lock = threading.Lock()
        self._pending: dict[int, Published] = {}
        self._early: set[int] = set()
        self.acked: list[Published] = []
        self.published = 0

    def start(self) -> None:
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()

    def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Wait (bounded) for the broker to acknowledge what is in flight, then disconnect."""
        deadline = time.monotonic() + drain_timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    break
            time.sleep(0.02)
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, snapshot: pd.DataFrame) -> int:
        """Publish one message per row of a canonical frame; return how many were queued."""
        n = 0
        for rec in snapshot.to_dict("records"):
            ts = pd.Timestamp(rec["ts"]).strftime("%Y-%m-%dT%H:%M:%SZ")
            rec["ts"] = ts
            topic = self.topic_template.replace("{meter_id}", str(rec["meter_id"]))
            item = Published(str(rec["meter_id"]), ts)
            # Never call paho under our lock: its network thread holds paho's own lock when
            # it calls _on_publish, which takes ours (lock-order deadlock otherwise).
            info = self._client.publish(topic, encode_reading(rec), qos=1)
            with self._lock:
                if info.mid in self._early:  # PUBACK arrived before we registered the mid
                    self._early.discard(info.mid)
                    self.acked.append(item)
                else:
                    self._pending[info.mid] = item
            n += 1
        self.published += n
        return n

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # noqa: ANN001
        with self._lock:
            item = self._pending.pop(mid, None)
            if item is not None:
                self.acked.append(item)
            else:
                self._early.add(mid)
