"""MQTT subscription (paho-mqtt 2.x): QoS 1, persistent session, ack only after storage.

Several subscriptions, each with a payload codec (:mod:`protocols.mqtt_payload`); shared
subscriptions (``$share/<group>/...``) let several collectors split one stream. Bounded in-flight:
with MQTT 5 the client announces ``receive_maximum`` (the broker sends at most that many unacked
QoS 1 messages); with 3.1.1 the broker's own limit applies (Mosquitto: ``max_inflight_messages``).
TLS: CA bundle and optional client certificate, hostname verified (never ``tls_insecure``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pandas as pd
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.writer import ReadingWriter
from meterwatch.errors import ProtocolError
from meterwatch.schema import readings_from_records
from meterwatch.stats import Stats
from protocols.mqtt_payload import Subscription

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
        topic_template: str | None = None,
        writer: ReadingWriter,
        stats: Stats,
        client_id: str = "meterwatch-collector",
        qos: int = 1,
        username: str | None = None,
        password: str | None = None,
        dead_letter: str | Path = "var/mqtt-dead-letter.jsonl",
        max_payload_bytes: int = 262144,
        subscriptions: list[tuple[str, str]] | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        protocol: str = "3.1.1",
        session_expiry_s: float = 86400.0,
        receive_maximum: int = 100,
    ):
        self.host, self.port = host, port
        pairs = list(subscriptions or [])
        if topic_template is not None and not pairs:
            pairs = [(topic_template, "canonical")]
        if not pairs:
            raise ValueError("MqttCollector needs a topic_template or subscriptions")
        self.subscriptions = [Subscription.compile(t, c) for t, c in pairs]
        self.filter = self.subscriptions[0].filter
        self.qos = qos
        self.writer = writer
        self.stats = stats
        self.dead_letter = Path(dead_letter)
        self.max_payload_bytes = max_payload_bytes
        self._dl_lock = threading.Lock()
        self.connected = threading.Event()
        self._stopping = False
        self.v5 = protocol == "5"
        if self.v5:
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=MQTTProtocolVersion.MQTTv5,
                manual_ack=True,
            )
            self._connect_props: Properties | None = Properties(PacketTypes.CONNECT)
            self._connect_props.SessionExpiryInterval = int(session_expiry_s)
            self._connect_props.ReceiveMaximum = receive_maximum
        else:
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                clean_session=False,
                manual_ack=True,
            )
            self._connect_props = None
        if tls_ca or tls_cert:
            self.client.tls_set(
                ca_certs=str(tls_ca) if tls_ca else None,
                certfile=str(tls_cert) if tls_cert else None,
                keyfile=str(tls_key) if tls_key else None,
            )
            self.client.tls_insecure_set(False)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)

    def start(self) -> None:
        """Connect (retrying in the background if the broker is not up yet) and subscribe."""
        if self.v5:
            self.client.connect_async(
                self.host,
                self.port,
                keepalive=30,
                clean_start=False,
                properties=self._connect_props,
            )
        else:
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
        client.subscribe([(sub.filter, self.qos) for sub in self.subscriptions])
        self.connected.set()
        log.info(
            "MQTT connected to %s:%d, subscribed to %s",
            self.host,
            self.port,
            ", ".join(f"{s.filter} ({s.codec})" for s in self.subscriptions),
        )

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
            sub = next((s for s in self.subscriptions if s.matches(msg.topic)), None)
            if sub is None:
                raise ProtocolError(f"topic {msg.topic!r} matches no configured subscription")
            readings = sub.decode(msg.topic, msg.payload)
            collected_at = pd.Timestamp.now("UTC")
            for reading in readings:
                # Collector time next to the source's ts (see protocols.mqtt_payload).
                reading["collected_at"] = collected_at
            frame = readings_from_records(readings)
            bad = frame["ts"].isna().to_numpy()
            if bad.any():
                first = readings[int(bad.argmax())]
                raise ProtocolError(
                    f"ts {first['ts']!r} of meter {first['meter_id']} is not an ISO 8601 time"
                )
        except (ProtocolError, ValueError) as exc:
            self._dead_letter(msg, str(exc))
            ack()
            return
        self.stats.count("mqtt_readings", len(frame))
        self.stats.seen(list(frame["meter_id"]), frame["ts"].max().to_pydatetime())
        # One submit for the whole message: its PUBACK goes out when all of it is stored.
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
