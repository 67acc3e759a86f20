"""MQTT subscription (paho-mqtt 2.x): QoS 1, persistent session, ack only after storage."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from collector.writer import ReadingWriter
from meterwatch.errors import ProtocolError
from meterwatch.schema import readings_from_records
from meterwatch.stats import Stats
from protocols.mqtt_payload import decode_reading, meter_from_topic, topic_matcher

log = logging.getLogger(__name__)


class MqttCollector:
    """Subscribes to meter readings and hands them to the writer.

    With ``clean_session=False`` and a fixed client id the broker keeps our subscription and
    queues QoS 1 messages while we are away. Automatic acknowledgement is off: a PUBACK is sent
    only from the writer's ``on_stored`` callback, after the reading is durably stored, so a
    crash before storage makes the broker deliver the message again. A payload that cannot be
    decoded is written to the dead-letter file with the reason (fsynced) and then acknowledged,
    so one bad message never blocks the stream.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        topic_template: str,
        writer: ReadingWriter,
        stats: Stats,
        client_id: str = "meterwatch-collector",
        qos: int = 1,
        username: str | None = None,
        password: str | None = None,
        dead_letter: str | Path = "var/mqtt-dead-letter.jsonl",
        max_payload_bytes: int = 262144,
    ):
        self.host, self.port = host, port
        self.filter, self._prefix, self._suffix = topic_matcher(topic_template)
        self.qos = qos
        self.writer = writer
        self.stats = stats
        self.dead_letter = Path(dead_letter)
        self.max_payload_bytes = max_payload_bytes
        self._dl_lock = threading.Lock()
        self.connected = threading.Event()
        self._stopping = False
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            manual_ack=True,
        )
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)

    def start(self) -> None:
        """Connect (retrying in the background if the broker is not up yet) and subscribe."""
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho callbacks (network thread) -----------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.error("MQTT broker %s:%d refused connection: %s", self.host, self.port, reason_code)
            return
        client.subscribe(self.filter, qos=self.qos)
        self.connected.set()
        log.info("MQTT connected to %s:%d, subscribed to %s", self.host, self.port, self.filter)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if self.connected.is_set() and not self._stopping:
            log.warning("MQTT disconnected from %s:%d: %s", self.host, self.port, reason_code)
        self.connected.clear()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:  # noqa: ANN001
        self.stats.count("mqtt_messages")
        mid, qos = msg.mid, msg.qos

        def ack() -> None:
            if qos > 0:
                client.ack(mid, qos)

        try:
            if len(msg.payload) > self.max_payload_bytes:
                raise ProtocolError(
                    f"payload of {len(msg.payload)} bytes exceeds mqtt.max_payload_bytes={self.max_payload_bytes}"
                )
            topic_meter = meter_from_topic(msg.topic, self._prefix, self._suffix)
            reading = decode_reading(msg.payload, topic_meter)
            frame = readings_from_records([reading])
            if frame["ts"].isna().any():
                raise ProtocolError(f"ts {reading['ts']!r} is not an ISO 8601 time")
        except (ProtocolError, ValueError) as exc:
            self._dead_letter(msg, str(exc))
            ack()
            return
        self.stats.seen([reading["meter_id"]], frame["ts"].iloc[0].to_pydatetime())
        self.writer.submit_threadsafe(frame, ack)

    def _dead_letter(self, msg: mqtt.MQTTMessage, reason: str) -> None:
        self.stats.count("mqtt_dead_letters")
        record = {
            "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "topic": msg.topic,
            "reason": reason,
            "payload": msg.payload[:4096].decode("utf-8", errors="replace"),
        }
        self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
        with self._dl_lock, self.dead_letter.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        log.warning("MQTT message on %s dead-lettered: %s", msg.topic, reason)
