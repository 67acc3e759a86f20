"""MQTT subscription (paho-mqtt 2.x): QoS 1, persistent session, ack only after storage.

Several subscriptions, each with a payload codec (:mod:`protocols.mqtt_payload`); shared
subscriptions (``$share/<group>/...``) let several collectors split one stream. Bounded in-flight:
with MQTT 5 the client announces ``receive_maximum`` (the broker sends at most that many unacked
QoS 1 messages); with 3.1.1 the broker's own limit applies (Mosquitto: ``max_inflight_messages``).
TLS: CA bundle and optional client certificate, hostname verified (never ``tls_insecure``).

Refused messages (the writer is full: spool at ``storage.spool.max_bytes`` or its memory queue
at its bound) are held here, unacknowledged, and submitted again with exponential backoff until
the writer takes them, oldest first. MQTT has no negative acknowledgement: a broker sends an
unacknowledged QoS 1 message again only when the client reconnects, so without this a refused
message would wait for the next reconnect. A held message is never lost: it is not
acknowledged, so if the process dies the broker delivers it again. The broker's flow control
(``receive_maximum`` with MQTT 5, ``max_inflight_messages`` in Mosquitto for 3.1.1) should bound
how many are held, but Mosquitto 2.0.11 was seen sending well past it once acknowledgements
interleave; so at most ``max_held`` are kept, later ones are left with the broker (counted
``mqtt_held_overflow``) and fetched by one reconnect of the same session once the held ones are
taken (``mqtt_overflow_reconnects``).

No pandas frame is built per message: the network thread parses the timestamps of a message with
one vectorised call (:func:`parse_reading_times`, the same acceptance as
:func:`meterwatch.core.schema.readings_from_records`) and hands the reading dicts to the writer, which
builds one frame per flush.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import paho.mqtt.client as mqtt
import pandas as pd
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import Field, field_validator, model_validator

from meterwatch.collector.sources import SourceContext, SourceSpec, register_source
from meterwatch.collector.writer import ReadingWriter
from meterwatch.core.clock import Clock
from meterwatch.core.config import Duration, Section, secret
from meterwatch.core.errors import ProtocolError
from meterwatch.core.schema import to_utc, to_utc_coerce
from meterwatch.core.stats import Stats
from meterwatch.protocols.mqtt_payload import Reading, Subscription

log = logging.getLogger(__name__)

#: First wait before a refused message is offered to the writer again [wall s]; doubled after
#: every refusal up to ``REFUSED_RETRY_MAX_S``. Project choice: the spool drains in batches every
#: ``storage.influx.flush_interval`` (1 s by default), so retrying faster only adds refusals.
REFUSED_RETRY_INITIAL_S = 0.1
#: Longest wait between two offers of held messages [wall s] (project choice: a drained spool is
#: used again within 2 s, and a full one is not asked more than every 2 s).
REFUSED_RETRY_MAX_S = 2.0


def parse_reading_times(readings: list[Reading]) -> pd.Timestamp:
    """Parse the readings' ``ts`` and ``device_ts`` in place, exactly as the frame path would.

    One vectorised call per column over the message's values, the same functions
    :func:`meterwatch.core.schema.readings_from_records` applies to its columns (:func:`to_utc` for
    ``ts``, :func:`to_utc_coerce` for ``device_ts``), so the acceptance is the same: a ``ts``
    that is not ISO 8601 raises pandas' ValueError, one that parses to NaT (``""``, ``"nan"``,
    NaN ...) raises ProtocolError naming it; an unparsable ``device_ts`` becomes NaT. The values
    are replaced by the parsed UTC timestamps, so a flush mixing many messages parses nothing
    differently (and ``"now"`` keeps the instant it was received). Returns the latest ``ts``.
    """
    raw_ts = [r["ts"] for r in readings]
    ts = to_utc(pd.Series(raw_ts)).tolist()
    raw_device = [r.get("device_ts") for r in readings]
    if all(d is t for d, t in zip(raw_device, raw_ts, strict=True)):
        device = ts  # the usual case: device_ts is the payload's ts (parsed alike when valid)
    else:
        device = to_utc_coerce(pd.Series(raw_device)).tolist()
    for reading, value, parsed, device_ts in zip(readings, raw_ts, ts, device, strict=True):
        if parsed is pd.NaT:
            raise ProtocolError(
                f"ts {value!r} of meter {reading['meter_id']} is not an ISO 8601 time"
            )
        reading["ts"] = parsed
        reading["device_ts"] = device_ts
    return max(ts)


@dataclass(eq=False)
class _Received:
    """A decoded message on its way to storage: its readings and what its PUBACK needs."""

    seq: int  # arrival order
    readings: list[Reading]  # parse_reading_times applied; the writer makes the frame
    mid: int
    qos: int
    generation: int  # connection it arrived on; a PUBACK on a later connection is not sent
    acked: bool = False
    message: mqtt.MQTTMessage | None = None  # for the dead-letter file if it cannot be stored


_NO_READINGS: list[Reading] = []  # a dead-lettered message has no readings


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
        refused_retry_initial_s: float = REFUSED_RETRY_INITIAL_S,
        refused_retry_max_s: float = REFUSED_RETRY_MAX_S,
        max_held: int | None = None,
        clock: Clock | None = None,
    ):
        self.host, self.port = host, port
        # Service time for collected_at (the simulated clock in demos); None: the UTC clock.
        self.clock = clock
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
        self.receive_maximum = receive_maximum
        self.refused_retry_initial_s = refused_retry_initial_s
        self.refused_retry_max_s = refused_retry_max_s
        self._loop: asyncio.AbstractEventLoop | None = None
        # Arrival counter (network thread) and connection generation (bumped on disconnect).
        self._seq = 0
        self._generation = 0
        # Refused messages, oldest first; touched on the event loop only.
        self._held: list[_Received] = []
        self._retry_delay = refused_retry_initial_s
        self._retry_handle: asyncio.TimerHandle | None = None
        # Accepted by the writer, not yet acknowledged (by seq). The writer keeps what it
        # accepted until it is durable (collector/writer.py), so these are only waited for.
        self._outstanding: dict[int, _Received] = {}
        # Refused messages kept in memory at most (None: 10 x receive_maximum, at least 1000).
        self.max_held = max_held if max_held is not None else max(10 * receive_maximum, 1000)
        self._overflow = False
        self._reconnecting = False
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
        """Connect (retrying in the background if the broker is not up yet) and subscribe.

        Call it on the writer's event loop: received messages are handed to the writer there.
        """
        self._loop = asyncio.get_running_loop()
        self._connect()

    def _connect(self) -> None:
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
        """Disconnect. Held messages stay unacknowledged: the broker sends them at the next start."""
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._release_held)
            except RuntimeError:  # the loop closed meanwhile
                pass

    @property
    def held_messages(self) -> int:
        """Messages the writer refused that wait here, unacknowledged, to be offered again."""
        return len(self._held)

    # -- paho callbacks (network thread) -----------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.error("MQTT broker %s:%d refused connection: %s", self.host, self.port, reason_code)
            return
        client.subscribe([(sub.filter, self.qos) for sub in self.subscriptions])
        self.stats.count("mqtt_connects")
        self.connected.set()
        log.info(
            "MQTT connected to %s:%d, subscribed to %s",
            self.host,
            self.port,
            ", ".join(f"{s.filter} ({s.codec})" for s in self.subscriptions),
        )

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        # Packet ids are per connection: an ack still to come for a message of this connection
        # must not be sent on the next one, where the broker may have reused the id for another
        # message. The unacknowledged ones come again (same session) and are acked then.
        self._generation += 1
        if self.connected.is_set() and not self._stopping and not self._reconnecting:
            log.warning("MQTT disconnected from %s:%d: %s", self.host, self.port, reason_code)
        self.connected.clear()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:  # noqa: ANN001
        self.stats.count("mqtt_messages")
        self._seq += 1
        seq, generation = self._seq, self._generation
        try:
            if len(msg.payload) > self.max_payload_bytes:
                raise ProtocolError(
                    f"payload of {len(msg.payload)} bytes exceeds mqtt.max_payload_bytes={self.max_payload_bytes}"
                )
            sub = next((s for s in self.subscriptions if s.matches(msg.topic)), None)
            if sub is None:
                raise ProtocolError(f"topic {msg.topic!r} matches no configured subscription")
            readings = sub.decode(msg.topic, msg.payload)
            collected_at = pd.Timestamp(self.clock.now()) if self.clock else pd.Timestamp.now("UTC")
            for reading in readings:
                # Collector time next to the source's ts (see protocols.mqtt_payload).
                reading["collected_at"] = collected_at
                # The payload's own ts is the device's clock unless it sends device_ts apart.
                reading.setdefault("device_ts", reading.get("ts"))
            latest = parse_reading_times(readings)
        except (ProtocolError, ValueError, TypeError) as exc:
            # TypeError: e.g. a JSON boolean ts (pandas refuses the dtype); it must not escape
            # into paho's callback, which would stop the network loop.
            self._dead_letter(msg, str(exc))
            self._puback(_Received(seq, _NO_READINGS, msg.mid, msg.qos, generation))
            return
        self.stats.count("mqtt_readings", len(readings))
        self.stats.seen([r["meter_id"] for r in readings], latest.to_pydatetime())
        # One submit for the whole message: its PUBACK goes out when all of it is stored.
        assert self._loop is not None, "MqttCollector.start() was not called"
        received = _Received(seq, readings, msg.mid, msg.qos, generation, message=msg)
        self._loop.call_soon_threadsafe(self._offer, received)

    # -- hand-off to the writer (event loop) ----------------------------------------------

    def _offer(self, msg: _Received) -> None:
        """Submit a new message, or hold it behind older held ones (arrival order)."""
        self._drop_stale()
        if self._held or not self._submit(msg):
            self._hold(msg)

    def _submit(self, msg: _Received) -> bool:
        """One offer to the writer; False (counted) if it refused."""
        if not self.writer.submit(
            msg.readings, partial(self._ack, msg), partial(self._unstorable, msg)
        ):
            self.stats.count("mqtt_refused")
            return False
        self._outstanding[msg.seq] = msg
        return True

    def _hold(self, msg: _Received) -> None:
        if len(self._held) >= self.max_held:
            if msg.qos == 0:
                # QoS 0 has no redelivery: past the bound it cannot be kept.
                self.stats.count("mqtt_qos0_dropped")
                log.error("QoS 0 MQTT message dropped: writer full, %d held", len(self._held))
                return
            # Not kept, not acknowledged: the broker still has it and sends it again after the
            # reconnect that follows once the held ones are taken (see _retry).
            self.stats.count("mqtt_held_overflow")
            if not self._overflow:
                log.warning(
                    "%d refused MQTT messages held (max_held): the broker sends more "
                    "unacknowledged messages than its in-flight window; later ones are left "
                    "with the broker and fetched again by a reconnect once the writer has room",
                    len(self._held),
                )
                self._overflow = True
            return
        bisect.insort(self._held, msg, key=lambda m: m.seq)
        self.stats.set_gauge("mqtt_held_messages", len(self._held))
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self._retry_handle is None and self._held and not self._stopping:
            assert self._loop is not None
            self._retry_handle = self._loop.call_later(self._retry_delay, self._retry)

    def _retry(self) -> None:
        """Offer the held messages again, oldest first, until the writer refuses one."""
        self._retry_handle = None
        self._drop_stale()
        while self._held and not self._stopping:
            self.stats.count("mqtt_refused_retries")
            if not self._submit(self._held[0]):
                self._retry_delay = min(self._retry_delay * 2, self.refused_retry_max_s)
                break
            self._held.pop(0)
        else:
            self._retry_delay = self.refused_retry_initial_s
            self._reconnect_if_settled()
        self.stats.set_gauge("mqtt_held_messages", len(self._held))
        self._schedule_retry()

    def _reconnect_if_settled(self) -> None:
        """After an overflow, once every held and accepted message is acknowledged: reconnect.

        Messages past max_held were left with the broker: only a new connection of the same
        session makes it send them again. Waiting for the accepted ones to be acknowledged first
        keeps their acknowledgements on the connection they came on (no redelivery of those).
        """
        if self._overflow and not self._held and not self._outstanding and not self._stopping:
            self._overflow = False
            assert self._loop is not None
            self._loop.run_in_executor(None, self._reconnect)

    def _reconnect(self) -> None:
        """Disconnect and connect again on the same session (worker thread)."""
        self.stats.count("mqtt_overflow_reconnects")
        log.info("MQTT reconnecting to fetch the messages left with the broker (max_held)")
        self._reconnecting = True
        self.client.disconnect()
        self.client.loop_stop()
        self._reconnecting = False
        if not self._stopping:
            self._connect()

    def _drop_stale(self) -> None:
        """Forget held messages of an earlier connection (the broker sends them again) and ones
        a late acknowledgement settled meanwhile."""
        if self._held:
            gen = self._generation
            self._held = [m for m in self._held if m.generation == gen and not m.acked]
            self.stats.set_gauge("mqtt_held_messages", len(self._held))

    def _release_held(self) -> None:
        """At stop: cancel the retry; held messages stay with the broker (unacknowledged)."""
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        self._retry_handle = None
        self._outstanding.clear()
        if self._held:
            log.info(
                "%d refused MQTT messages left unacknowledged; the broker sends them again",
                len(self._held),
            )
            self._held = []
            self.stats.set_gauge("mqtt_held_messages", 0)

    def _ack(self, msg: _Received) -> None:
        """The writer stored ``msg`` (event loop): PUBACK once, on the connection it came on."""
        if msg.acked:  # defensive: never PUBACK twice
            return
        msg.acked = True
        self._outstanding.pop(msg.seq, None)
        self._puback(msg)
        if self._overflow and not self._outstanding:
            self._reconnect_if_settled()

    def _unstorable(self, msg: _Received, reason: str) -> None:
        """The writer could not make ``msg`` into readings (event loop): dead-letter it and
        acknowledge, like a payload that fails to decode (it would fail every redelivery)."""
        if msg.message is not None:
            self._dead_letter(msg.message, f"readings cannot be stored: {reason}")
        self._ack(msg)

    def _puback(self, msg: _Received) -> None:
        """Acknowledge to the broker (any thread), unless the connection it came on is gone."""
        if msg.qos == 0:
            return
        if msg.generation != self._generation:
            # The broker sends it again on this connection (same session); that copy is acked.
            self.stats.count("mqtt_stale_acks_skipped")
            return
        self.client.ack(msg.mid, msg.qos)

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


# -- config section and registration (collector.mqtt) ------------------------------------------


class MqttSubscriptionConfig(Section):
    """``mqtt.subscriptions[]``: a topic template and the payload codec of its messages."""

    topic: str  # may start with $share/<group>/; {meter_id} at most once
    codec: Literal["canonical", "batch", "tasmota"] = "canonical"

    @model_validator(mode="after")
    def _meter_in_topic(self) -> MqttSubscriptionConfig:
        n = self.topic.count("{meter_id}")
        if n > 1:
            raise ValueError("topic may contain {meter_id} at most once")
        if self.codec == "tasmota" and n != 1:
            raise ValueError(
                "a tasmota subscription needs {meter_id} in the topic, e.g. tele/{meter_id}/SENSOR"
            )
        return self


class MqttTlsConfig(Section):
    """``mqtt.tls``: CA bundle and optional client certificate; the server name is verified."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class MqttConfig(Section):
    """``collector.mqtt``: the MQTT broker (embedded or external) and the readings subscription.

    The alert sink ``alerts.delivery.mqtt`` and the demo's simulated MQTT meters use the same
    broker connection.
    """

    enabled: bool = True
    broker: Literal["embedded", "external"] = "embedded"
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=0, le=65535)
    client_id: str = "meterwatch-collector"
    username_env: str | None = None
    password_env: str | None = None
    topic: str = "meters/{meter_id}/reading"
    qos: Literal[0, 1] = 1
    batch_max: int = Field(500, ge=1)
    batch_wait_s: float = Field(0.2, gt=0)
    dead_letter: Path = Path("var/mqtt-dead-letter.jsonl")
    max_payload_bytes: int = Field(262144, ge=64)
    subscriptions: list[MqttSubscriptionConfig] = []  # empty: [{topic: <topic>, codec: canonical}]
    tls: MqttTlsConfig | None = None
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    session_expiry: Duration = Field(86400.0, ge=0)  # MQTT 5 only; 3.1.1 sessions never expire
    receive_maximum: int = Field(100, ge=1, le=65535)  # MQTT 5: unacked QoS 1 in flight to us

    @field_validator("topic")
    @classmethod
    def _topic_has_meter(cls, v: str) -> str:
        if v.count("{meter_id}") != 1:
            raise ValueError(
                "topic must contain {meter_id} exactly once, e.g. meters/{meter_id}/reading"
            )
        return v


class MqttSource:
    """The MQTT subscription as a service source: starts, subscribes, stops after the writer."""

    protocol = "mqtt"

    def __init__(self, collector: MqttCollector, name: str = "mqtt"):
        self.name = name
        self.collector = collector

    async def start(self) -> None:
        self.collector.start()
        # Subscribe before simulated meters publish, so the demo loses nothing at start.
        await asyncio.to_thread(self.collector.connected.wait, 10.0)

    async def stop(self) -> None:
        await asyncio.sleep(0.2)  # let the last acknowledgements go out
        await asyncio.to_thread(self.collector.stop)


def build_source(cfg: MqttConfig, ctx: SourceContext) -> list[MqttSource]:
    """The readings subscription of ``collector.mqtt`` (credentials from the environment)."""
    tls = cfg.tls
    collector = MqttCollector(
        host=cfg.host,
        port=cfg.port,
        topic_template=cfg.topic,
        subscriptions=[(s.topic, s.codec) for s in cfg.subscriptions],
        tls_ca=tls.ca_file if tls else None,
        tls_cert=tls.cert_file if tls else None,
        tls_key=tls.key_file if tls else None,
        protocol=cfg.protocol,
        session_expiry_s=cfg.session_expiry,
        receive_maximum=cfg.receive_maximum,
        writer=ctx.writer,
        stats=ctx.stats,
        client_id=cfg.client_id,
        qos=cfg.qos,
        username=secret(cfg.username_env, "collector.mqtt.username_env"),
        password=secret(cfg.password_env, "collector.mqtt.password_env"),
        dead_letter=cfg.dead_letter,
        max_payload_bytes=cfg.max_payload_bytes,
        clock=ctx.clock,
    )
    return [MqttSource(collector)]


register_source(
    SourceSpec(
        "mqtt",
        MqttConfig,
        build_source,  # type: ignore[arg-type]
        "readings published over MQTT (QoS 1, acknowledged only after storage)",
    )
)
