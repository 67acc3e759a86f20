"""MQTT subscription: QoS 1, persistent session, acknowledged only after durable storage.

Several subscriptions, each with a payload codec (:mod:`protocols.mqtt_payload`); shared
subscriptions (``$share/<group>/...``) let several collectors split one stream. Bounded in-flight:
with MQTT 5 the client announces ``receive_maximum`` (the broker sends at most that many unacked
QoS 1 messages); with 3.1.1 the broker's own limit applies (Mosquitto: ``max_inflight_messages``).
TLS: CA bundle and optional client certificate, hostname verified (never insecure).

Per batch, not per message: the network thread (:mod:`collector.mqtt_client`) hands over every
PUBLISH of one socket read at once; they are decoded into columns with one JSON parse per
message (:func:`~meterwatch.protocols.mqtt_payload.decode_columns`), their timestamps parsed in
one vectorised call (the same acceptance as :func:`meterwatch.core.schema.readings_from_records`),
made into one frame and submitted to the writer as one item; once it is durable, all their
PUBACKs leave in one write. A message the fast path does not take exactly as its codec would
goes through the per-message codec, which accepts it or names the reason it is dead-lettered.

Refused batches (the writer is full: spool at ``storage.spool.max_bytes`` or its memory queue
at its bound) are held here, unacknowledged, and submitted again with exponential backoff until
the writer takes them, oldest first. MQTT has no negative acknowledgement: a broker sends an
unacknowledged QoS 1 message again only when the client reconnects, so without this a refused
message would wait for the next reconnect. A held message is never lost: it is not
acknowledged, so if the process dies the broker delivers it again. At most ``max_held`` messages
are kept; later ones are left with the broker (counted ``mqtt_held_overflow``) and fetched by one
reconnect of the same session once the held ones are taken (``mqtt_overflow_reconnects``).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from meterwatch.collector.mqtt_client import ConnectOptions, MqttSubscriber, tls_context
from meterwatch.collector.sources import SourceContext, SourceSpec, register_source
from meterwatch.collector.writer import ReadingWriter
from meterwatch.core.clock import Clock
from meterwatch.core.config import Duration, Section, secret
from meterwatch.core.errors import ProtocolError
from meterwatch.core.quantities import READING_FIELDS
from meterwatch.core.stats import Stats
from meterwatch.protocols.mqtt_packets import Publish
from meterwatch.protocols.mqtt_payload import (
    Columns,
    Reading,
    Subscription,
    decode_columns,
    iso_epoch_ns,
    meter_from_topic,
)
from meterwatch.storage.lp_encode import NO_TIME, ColumnBatch

if TYPE_CHECKING:
    import pandas as pd

# pandas is imported where frames are built: the lean ingest process (``columnar=True``, see
# meterwatch/ingest.py) decodes into ColumnBatch and never loads it, unless a payload's ts
# needs the full ISO 8601 parser.

log = logging.getLogger(__name__)

#: First wait before a refused message is offered to the writer again [wall s]; doubled after
#: every refusal up to ``REFUSED_RETRY_MAX_S``. Project choice: the spool drains in batches every
#: ``storage.influx.flush_interval`` (1 s by default), so retrying faster only adds refusals.
REFUSED_RETRY_INITIAL_S = 0.1
#: Longest wait between two offers of held messages [wall s] (project choice: a drained spool is
#: used again within 2 s, and a full one is not asked more than every 2 s).
REFUSED_RETRY_MAX_S = 2.0
#: Payload bytes received and not yet acknowledged at most; past it the network loop stops
#: reading and TCP holds the rest at the broker [bytes]. Project choice: 10,000 single-reading
#: messages are ~2 MB, 400 batch messages of 100 readings ~9 MB; memory stays bounded
#: whatever the payload size (docs/benchmarks.md, memory).
MAX_UNACKED_BYTES = 8 << 20
#: Topics remembered with their subscription and meter id (cleared when full).
TOPIC_CACHE_MAX = 200_000


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
    import pandas as pd

    from meterwatch.core.schema import to_utc, to_utc_coerce

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


def frame_of_columns(
    meter_id: list[str],
    ts: pd.Series,
    device_ts: pd.Series,
    fields: dict[str, np.ndarray],
    collected_at: pd.Timestamp,
) -> pd.DataFrame:
    """The canonical frame (plus collected_at / device_ts) of decoded columns, built once."""
    import pandas as pd

    cols: dict[str, Any] = {"meter_id": pd.array(meter_id, dtype="str"), "ts": ts.array}
    cols.update(fields)
    # In the constructor, not set afterwards: one block build instead of two insertions.
    stamp = np.full(len(meter_id), collected_at.as_unit("ns").value, dtype="datetime64[ns]")
    cols["collected_at"] = pd.DatetimeIndex(stamp, tz="UTC")
    cols["device_ts"] = device_ts.array
    return pd.DataFrame(cols)


def _column_batch(cols: Columns, collected_at: int) -> ColumnBatch | None:
    """Decoded columns as a ColumnBatch, or None if a ts needs the full parser."""
    times = _fast_times(cols)
    if times is None:
        return None
    secs, device = (np.asarray(t, dtype=np.int64) // 1_000_000_000 for t in times)
    n = len(secs)
    values = np.column_stack([cols.fields[f] for f in READING_FIELDS]) if n else np.zeros((0, 12))
    return ColumnBatch(
        cols.meter_id,
        secs,
        device,
        values,
        np.full(n, collected_at, dtype=np.int64),
    )


def _fast_times(cols: Columns) -> tuple[list[int], list[int]] | None:
    """(ts, device_ts) of decoded columns in epoch nanoseconds, or None if one needs the full
    parser (:func:`iso_epoch_ns`)."""
    ts = iso_epoch_ns(cols.ts)
    if ts is None:
        return None
    if cols.device_ts is None:
        return ts, ts
    raw = [d if d is not None else t for d, t in zip(cols.device_ts, cols.ts, strict=True)]
    device = iso_epoch_ns(raw)
    return None if device is None else (ts, device)


def _records_batch(records: list[Reading], collected_at: int) -> ColumnBatch:
    """Readings of the per-message codec (times parsed) as a ColumnBatch."""
    secs = [int(r["ts"].value // 1_000_000_000) for r in records]
    device = [
        NO_TIME
        if r["device_ts"] is None or r["device_ts"] != r["device_ts"]
        else int(r["device_ts"].value // 1_000_000_000)
        for r in records
    ]
    values = np.array(
        [
            [float(r.get(f, np.nan)) if r.get(f) is not None else np.nan for f in READING_FIELDS]
            for r in records
        ],
        dtype=np.float64,
    ).reshape(len(records), len(READING_FIELDS))
    return ColumnBatch(
        [str(r["meter_id"]) for r in records],
        np.asarray(secs, dtype=np.int64),
        np.asarray(device, dtype=np.int64),
        values,
        np.full(len(records), collected_at, dtype=np.int64),
    )


@dataclass(eq=False)
class _Received:
    """Decoded messages on their way to storage: one frame and what their PUBACKs need."""

    seq: int  # arrival order (of the network read)
    frame: pd.DataFrame | ColumnBatch | None  # None: nothing to store (all dead-lettered)
    mids: list[int]
    generation: int  # connection they arrived on; a PUBACK on a later connection is not sent
    qos0: int = 0  # messages without acknowledgement (QoS 0)
    acked: bool = False
    messages: list[Publish] = field(default_factory=list)  # for the dead-letter file

    @property
    def count(self) -> int:
        return len(self.mids) + self.qos0


class MqttCollector:
    """Subscribes to meter readings and hands them to the writer.

    With a persistent session and a fixed client id the broker keeps our subscription and
    queues QoS 1 messages while we are away. A PUBACK is sent only from the writer's
    ``on_stored`` callback, after the readings are durably stored, so a crash before storage
    makes the broker deliver the message again. A payload that cannot be decoded is written to
    the dead-letter file with the reason (fsynced) and then acknowledged, so one bad message
    never blocks the stream.
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
        receive_maximum: int = 10000,
        keepalive_s: int = 60,
        refused_retry_initial_s: float = REFUSED_RETRY_INITIAL_S,
        refused_retry_max_s: float = REFUSED_RETRY_MAX_S,
        max_held: int | None = None,
        clock: Clock | None = None,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        columnar: bool = False,
    ):
        self.host, self.port = host, port
        #: Decode into ColumnBatch (line protocol ahead, no pandas) instead of frames.
        self.columnar = columnar
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
        self._stopping = False
        self.receive_maximum = receive_maximum
        self.refused_retry_initial_s = refused_retry_initial_s
        self.refused_retry_max_s = refused_retry_max_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seq = 0  # network thread
        # Refused batches, oldest first; touched on the event loop only.
        self._held: list[_Received] = []
        self._held_messages = 0
        self._retry_delay = refused_retry_initial_s
        self._retry_handle: asyncio.TimerHandle | None = None
        # Accepted by the writer, not yet acknowledged (by seq). The writer keeps what it
        # accepted until it is durable (collector/writer.py), so these are only waited for.
        self._outstanding: dict[int, _Received] = {}
        # Refused messages kept in memory at most (None: 10 x receive_maximum, at least 1000).
        self.max_held = max_held if max_held is not None else max(10 * receive_maximum, 1000)
        self._overflow = False
        self._topics: dict[bytes, tuple[int, str | None] | None] = {}
        self.v5 = protocol == "5"
        ssl_context = tls_context(tls_ca, tls_cert, tls_key) if (tls_ca or tls_cert) else None
        self.client = MqttSubscriber(
            host,
            port,
            ConnectOptions(
                client_id=client_id,
                subscriptions=[(sub.filter, qos) for sub in self.subscriptions],
                v5=self.v5,
                keepalive_s=int(keepalive_s),
                username=username,
                password=password,
                session_expiry_s=int(session_expiry_s),
                receive_maximum=receive_maximum,
            ),
            on_batch=self._on_batch,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            ssl_context=ssl_context,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            max_unacked=receive_maximum,
            max_unacked_bytes=MAX_UNACKED_BYTES,
        )
        self.connected = self.client.connected

    def start(self) -> None:
        """Connect (retrying in the background if the broker is not up yet) and subscribe.

        Call it on the writer's event loop: received messages are handed to the writer there.
        """
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self.client.start()

    def stop(self) -> None:
        """Disconnect. Held messages stay unacknowledged: the broker sends them at the next start."""
        self._stopping = True
        self.client.stop()
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._release_held)
            except RuntimeError:  # the loop closed meanwhile
                pass

    @property
    def held_messages(self) -> int:
        """Messages the writer refused that wait here, unacknowledged, to be offered again."""
        return self._held_messages

    # -- network thread -------------------------------------------------------------------

    def _on_connect(self, session_present: bool) -> None:
        self.stats.count("mqtt_connects")
        log.info(
            "MQTT connected to %s:%d (session %s), subscribed to %s",
            self.host,
            self.port,
            "resumed" if session_present else "new",
            ", ".join(f"{s.filter} ({s.codec})" for s in self.subscriptions),
        )

    def _on_disconnect(self, reason: str) -> None:
        if not self._stopping:
            self.stats.count("mqtt_disconnects")
            log.warning("MQTT disconnected from %s:%d: %s", self.host, self.port, reason)

    def _route(self, topic: bytes) -> tuple[int, str | None] | None:
        """(subscription index, topic meter id) of a topic, or None if no subscription matches."""
        try:
            return self._topics[topic]
        except KeyError:
            pass
        text = topic.decode("utf-8", errors="replace")
        found: tuple[int, str | None] | None = None
        for k, sub in enumerate(self.subscriptions):
            if sub.matches(text):
                meter = None
                if sub.prefix is not None and sub.suffix is not None:
                    meter = meter_from_topic(text, sub.prefix, sub.suffix)
                found = (k, meter)
                break
        if len(self._topics) >= TOPIC_CACHE_MAX:
            self._topics.clear()
        self._topics[topic] = found
        return found

    def _on_batch(self, publishes: list[Publish], generation: int) -> None:
        """Every PUBLISH of one read: decode into one frame, hand it to the event loop."""
        self.stats.count("mqtt_messages", len(publishes))
        self._seq += 1
        now = self.clock.now() if self.clock else datetime.now(UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        collected_at: Any = now
        if not self.columnar:
            import pandas as pd

            collected_at = pd.Timestamp(now)
        by_sub: dict[int, list[int]] = {}
        meters: list[str | None] = []
        rejected: list[tuple[int, str]] = []
        limit = self.max_payload_bytes
        for i, (topic, payload, _mid, _qos) in enumerate(publishes):
            meters.append(None)
            if len(payload) > limit:
                rejected.append(
                    (
                        i,
                        f"payload of {len(payload)} bytes exceeds mqtt.max_payload_bytes={limit}",
                    )
                )
                continue
            route = self._route(topic)
            if route is None:
                rejected.append(
                    (
                        i,
                        f"topic {topic.decode(errors='replace')!r} matches no configured subscription",
                    )
                )
                continue
            meters[i] = route[1]
            by_sub.setdefault(route[0], []).append(i)
        frames: list[Any] = []
        decode = self._decode_columnar if self.columnar else self._decode
        for k, idx in by_sub.items():
            frame = decode(
                k,
                [publishes[i] for i in idx],
                [meters[i] for i in idx],
                idx,
                collected_at,
                rejected,
            )
            if frame is not None and len(frame):
                frames.append(frame)
        for i, reason in rejected:
            self._dead_letter(publishes[i], reason)
        bad = {i for i, _ in rejected}
        good = [p for i, p in enumerate(publishes) if i not in bad] if bad else publishes
        if bad:
            # Acknowledged now: a malformed payload fails every redelivery.
            self.client.ack(
                [p[2] for i, p in enumerate(publishes) if i in bad and p[3]], generation
            )
        if not good:
            return
        if self.columnar:
            frame = ColumnBatch.concat(frames)
            if len(frame):
                latest = datetime.fromtimestamp(int(frame.seconds.max()), UTC)
                self.stats.seen(frame.meter_id, latest)
        else:
            import pandas as pd

            frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
            if len(frame):
                self.stats.seen(frame["meter_id"].tolist(), frame["ts"].max().to_pydatetime())
        self.stats.count("mqtt_readings", len(frame))
        received = _Received(
            self._seq,
            frame,
            [p[2] for p in good if p[3]],
            generation,
            qos0=sum(1 for p in good if not p[3]),
            messages=good,
        )
        assert self._loop is not None, "MqttCollector.start() was not called"
        self._loop.call_soon_threadsafe(self._offer, received)

    def _decode(
        self,
        k: int,
        publishes: list[Publish],
        topic_meters: list[str | None],
        index: list[int],
        collected_at: pd.Timestamp,
        rejected: list[tuple[int, str]],
    ) -> pd.DataFrame | None:
        """Readings of the messages of subscription ``k`` as one frame; bad ones to ``rejected``."""
        import pandas as pd

        from meterwatch.core.schema import to_utc, to_utc_coerce

        sub = self.subscriptions[k]
        cols = decode_columns(sub.codec, [p[1] for p in publishes], topic_meters)
        frame: pd.DataFrame | None = None
        slow = list(cols.slow)
        if len(cols):
            fast = _fast_times(cols)
            try:
                if fast is not None:  # the common ISO 8601 form: no pandas parser needed
                    ts, device = (
                        pd.Series(
                            pd.to_datetime(np.asarray(t, dtype=np.int64), unit="ns", utc=True)
                        )
                        for t in fast
                    )
                    if fast[1] is fast[0]:
                        device = ts
                    frame = frame_of_columns(cols.meter_id, ts, device, cols.fields, collected_at)
                    return self._with_slow(
                        sub, publishes, frame, cols.slow, index, collected_at, rejected
                    )
                ts = to_utc(pd.Series(cols.ts, dtype=object))
                if ts.isna().any():
                    raise ValueError("NaT")
                if cols.device_ts is None:
                    device = ts
                else:
                    raw = [
                        d if d is not None else t
                        for d, t in zip(cols.device_ts, cols.ts, strict=True)
                    ]
                    device = to_utc_coerce(pd.Series(raw, dtype=object))
                frame = frame_of_columns(cols.meter_id, ts, device, cols.fields, collected_at)
            except (ValueError, TypeError):
                # Some ts is not ISO 8601: the per-message path names which.
                slow = sorted(set(slow) | set(np.unique(cols.owner).tolist()))
                frame = None
        return self._with_slow(sub, publishes, frame, slow, index, collected_at, rejected)

    def _with_slow(
        self,
        sub: Subscription,
        publishes: list[Publish],
        frame: pd.DataFrame | None,
        slow: list[int],
        index: list[int],
        collected_at: Any,
        rejected: list[tuple[int, str]],
    ) -> pd.DataFrame | None:
        """``frame`` plus the readings of the messages ``slow`` (per-message codec)."""
        if not slow:
            return frame
        import pandas as pd

        from meterwatch.core.schema import readings_from_records

        records = self._slow_records(sub, publishes, slow, index, collected_at, rejected)
        if records:
            extra = readings_from_records(records)
            frame = extra if frame is None else pd.concat([frame, extra], ignore_index=True)
        return frame

    def _slow_records(
        self,
        sub: Subscription,
        publishes: list[Publish],
        slow: list[int],
        index: list[int],
        collected_at: Any,
        rejected: list[tuple[int, str]],
    ) -> list[Reading]:
        """The per-message codec on the messages ``slow``: their readings, times parsed; the
        ones it refuses go to ``rejected`` with its reason."""
        records: list[Reading] = []
        for j in slow:
            topic, payload, _mid, _qos = publishes[j]
            try:
                readings = sub.decode(topic.decode("utf-8", errors="replace"), payload)
                for reading in readings:
                    reading["collected_at"] = collected_at
                    # The payload's own ts is the device's clock unless it sends device_ts apart.
                    reading.setdefault("device_ts", reading.get("ts"))
                parse_reading_times(readings)
            except (ProtocolError, ValueError, TypeError) as exc:
                # TypeError: e.g. a JSON boolean ts (pandas refuses the dtype).
                rejected.append((index[j], str(exc)))
                continue
            records.extend(readings)
        return records

    def _decode_columnar(
        self,
        k: int,
        publishes: list[Publish],
        topic_meters: list[str | None],
        index: list[int],
        collected_at: datetime,
        rejected: list[tuple[int, str]],
    ) -> ColumnBatch | None:
        """:meth:`_decode` into a ColumnBatch: the same acceptance, without pandas when every
        ``ts`` is of the common ISO 8601 form (:func:`iso_epoch_ns`)."""
        sub = self.subscriptions[k]
        cols = decode_columns(sub.codec, [p[1] for p in publishes], topic_meters)
        stamp = int(collected_at.timestamp())
        batches: list[ColumnBatch] = []
        slow = list(cols.slow)
        if len(cols):
            fast = _column_batch(cols, stamp)
            if fast is None:  # another ts spelling: the per-message path parses (or names) it
                slow = sorted(set(slow) | set(np.unique(cols.owner).tolist()))
            else:
                batches.append(fast)
        if slow:
            import pandas as pd

            at = pd.Timestamp(collected_at)
            records = self._slow_records(sub, publishes, slow, index, at, rejected)
            if records:
                batches.append(_records_batch(records, stamp))
        return ColumnBatch.concat(batches) if batches else None

    # -- hand-off to the writer (event loop) ----------------------------------------------

    def _offer(self, msg: _Received) -> None:
        """Submit a new batch, or hold it behind older held ones (arrival order)."""
        self._drop_stale()
        if self._held or not self._submit(msg):
            self._hold(msg)

    def _submit(self, msg: _Received) -> bool:
        """One offer to the writer; False (counted) if it refused."""
        assert msg.frame is not None
        if not self.writer.submit(
            msg.frame, partial(self._ack, msg), partial(self._unstorable, msg)
        ):
            self.stats.count("mqtt_refused", msg.count)
            return False
        self._outstanding[msg.seq] = msg
        return True

    def _hold(self, msg: _Received) -> None:
        if self._held_messages + msg.count > self.max_held:
            if not msg.mids:
                # QoS 0 has no redelivery: past the bound it cannot be kept.
                self.stats.count("mqtt_qos0_dropped", msg.qos0)
                log.error("QoS 0 MQTT messages dropped: writer full, %d held", self._held_messages)
                return
            # Not kept, not acknowledged: the broker still has them and sends them again after
            # the reconnect that follows once the held ones are taken (see _retry).
            self.stats.count("mqtt_held_overflow", msg.count)
            if not self._overflow:
                log.warning(
                    "%d refused MQTT messages held (max_held): later ones are left with the "
                    "broker and fetched again by a reconnect once the writer has room",
                    self._held_messages,
                )
                self._overflow = True
            self._schedule_retry()
            return
        bisect.insort(self._held, msg, key=lambda m: m.seq)
        self._held_messages += msg.count
        self.stats.set_gauge("mqtt_held_messages", self._held_messages)
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        """Retry the held batches later -- or, after an overflow with nothing held, check
        later whether the writer has room to reconnect for the messages left with the broker
        (nothing else would: no acknowledgement is pending then)."""
        if self._retry_handle is None and (self._held or self._overflow) and not self._stopping:
            assert self._loop is not None
            self._retry_handle = self._loop.call_later(self._retry_delay, self._retry)

    def _retry(self) -> None:
        """Offer the held batches again, oldest first, until the writer refuses one."""
        self._retry_handle = None
        self._drop_stale()
        while self._held and not self._stopping:
            self.stats.count("mqtt_refused_retries")
            if not self._submit(self._held[0]):
                self._retry_delay = min(self._retry_delay * 2, self.refused_retry_max_s)
                break
            self._held_messages -= self._held.pop(0).count
        else:
            self._retry_delay = self.refused_retry_initial_s
            self._reconnect_if_settled()
        self.stats.set_gauge("mqtt_held_messages", self._held_messages)
        self._schedule_retry()

    def _reconnect_if_settled(self) -> None:
        """After an overflow, once every held and accepted message is acknowledged: reconnect.

        Messages past max_held were left with the broker: only a new connection of the same
        session makes it send them again. Waiting for the accepted ones to be acknowledged first
        keeps their acknowledgements on the connection they came on (no redelivery of those).
        """
        if self._overflow and not self._held and not self._outstanding and not self._stopping:
            if not self.writer.has_room():
                # Still refusing: the broker's redelivery would be refused again. Look later.
                self._retry_delay = min(self._retry_delay * 2, self.refused_retry_max_s)
                self._schedule_retry()
                return
            self._overflow = False
            self.stats.count("mqtt_overflow_reconnects")
            log.info("MQTT reconnecting to fetch the messages left with the broker (max_held)")
            self.client.reconnect()

    def _drop_stale(self) -> None:
        """Forget held batches of an earlier connection (the broker sends them again) and ones
        a late acknowledgement settled meanwhile."""
        if self._held:
            gen = self.client.generation
            self._held = [m for m in self._held if m.generation == gen and not m.acked]
            self._held_messages = sum(m.count for m in self._held)
            self.stats.set_gauge("mqtt_held_messages", self._held_messages)

    def _release_held(self) -> None:
        """At stop: cancel the retry; held messages stay with the broker (unacknowledged)."""
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        self._retry_handle = None
        self._outstanding.clear()
        if self._held:
            log.info(
                "%d refused MQTT messages left unacknowledged; the broker sends them again",
                self._held_messages,
            )
            self._held = []
            self._held_messages = 0
            self.stats.set_gauge("mqtt_held_messages", 0)

    def _ack(self, msg: _Received) -> None:
        """The writer stored ``msg`` (event loop): PUBACK once, on the connection it came on."""
        if msg.acked:  # defensive: never PUBACK twice
            return
        msg.acked = True
        self._outstanding.pop(msg.seq, None)
        if msg.mids and not self.client.ack(msg.mids, msg.generation):
            # The broker sends them again on this connection (same session); that copy is acked.
            self.stats.count("mqtt_stale_acks_skipped", len(msg.mids))
        if self._overflow and not self._outstanding:
            self._reconnect_if_settled()

    def _unstorable(self, msg: _Received, reason: str) -> None:
        """The writer could not make ``msg`` into readings (event loop): dead-letter it and
        acknowledge, like a payload that fails to decode (it would fail every redelivery)."""
        for message in msg.messages:
            self._dead_letter(message, f"readings cannot be stored: {reason}")
        self._ack(msg)

    def _dead_letter(self, msg: Publish, reason: str) -> None:
        self.stats.count("mqtt_dead_letters")
        topic = msg[0].decode("utf-8", errors="replace")
        record = {
            "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "topic": topic,
            "reason": reason,
            "payload": msg[1][:4096].decode("utf-8", errors="replace"),
        }
        self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
        with self._dl_lock, self.dead_letter.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        log.warning("MQTT message on %s dead-lettered: %s", topic, reason)


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
    # MQTT 5: unacked QoS 1 messages in flight to us. Acknowledgements wait for durable storage
    # (one spool commit per writer flush), so the window must hold at least two flushes' worth
    # of messages, or the stream stalls between flushes (docs/benchmarks.md, broker settings).
    receive_maximum: int = Field(10000, ge=1, le=65535)
    # Keepalive announced at CONNECT [s]; a PINGREQ goes out when nothing was sent that long.
    keepalive: Duration = Field(60.0, ge=5, le=65535)
    # An MQTT-only ingest service into InfluxDB (no registry, no other source, no simulator)
    # runs as a lean process without pandas, pyarrow or DuckDB (meterwatch/ingest.py).
    lean_ingest: bool = True

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
        keepalive_s=int(cfg.keepalive),
        writer=ctx.writer,
        stats=ctx.stats,
        client_id=cfg.client_id,
        qos=cfg.qos,
        username=secret(cfg.username_env, "collector.mqtt.username_env"),
        password=secret(cfg.password_env, "collector.mqtt.password_env"),
        dead_letter=cfg.dead_letter,
        max_payload_bytes=cfg.max_payload_bytes,
        clock=ctx.clock,
        columnar=ctx.columnar,
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
