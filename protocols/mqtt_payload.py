"""MQTT payload codecs and topic templates. Pure functions: bytes and topics in, readings out.

Codecs (``CODECS``; each ``(payload, topic_meter_id) -> list of reading dicts``):

* ``canonical`` — one reading: ``{"meter_id", "ts", <canonical columns>..., "device_ts"?}``.
* ``batch`` — a gateway publishing many meters in one message:
  ``{"gateway": "gw1", "ts": <default ts>?, "readings": [<canonical reading>, ...]}``. The
  message is all or nothing: one bad entry rejects it, and the error names the entry's index.
* ``tasmota`` — Tasmota ``tele/<device>/SENSOR`` JSON with an ``ENERGY`` object; see
  :data:`TASMOTA_FIELDS` for the name and unit mapping. The meter id is the topic's device.

Timestamps: ``ts`` is the instant the values apply to, as the source states it (the device's
time for MQTT sources). A source that also reports its own clock separately may send
``device_ts``; it is kept as an extra key of the reading dict (not a canonical column).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson

from meterwatch.core.errors import ProtocolError
from meterwatch.core.quantities import READING_FIELDS

Reading = dict[str, Any]
Codec = Callable[[bytes | bytearray, str | None], list[Reading]]

#: Tasmota ENERGY key -> (canonical column, factor to the canonical unit). Tasmota reports
#: energy in kWh, power in W, reactive power in var, voltage V, current A, frequency Hz.
#: ``ApparentPower`` (VA), ``Today``/``Yesterday`` (kWh) have no canonical column: ignored.
#: Three-phase devices send lists ``[l1, l2, l3]`` for Voltage/Current; a list of Power values
#: is summed into the total.
TASMOTA_FIELDS: dict[str, tuple[str, float]] = {
    "Total": ("energy_import_kwh", 1.0),
    "ExportActive": ("energy_export_kwh", 1.0),
    "Power": ("power_kw", 0.001),
    "ReactivePower": ("reactive_power_kvar", 0.001),
    "Factor": ("power_factor", 1.0),
    "Frequency": ("frequency_hz", 1.0),
    "Voltage": ("voltage_l{}_v", 1.0),
    "Current": ("current_l{}_a", 1.0),
}


def encode_reading(reading: Mapping[str, Any]) -> bytes:
    """One canonical reading as compact JSON (NaN quantities omitted, ts as ISO 8601 Z)."""
    ts = reading["ts"]
    text = ts if isinstance(ts, str) else ts.strftime("%Y-%m-%dT%H:%M:%S") + "Z"
    out: dict[str, Any] = {"meter_id": str(reading["meter_id"]), "ts": text}
    for name in READING_FIELDS:
        value = reading.get(name)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            out[name] = float(value)
    device_ts = reading.get("device_ts")
    if device_ts is not None:
        out["device_ts"] = (
            device_ts
            if isinstance(device_ts, str)
            else device_ts.strftime("%Y-%m-%dT%H:%M:%S") + "Z"
        )
    return json.dumps(out, separators=(",", ":")).encode()


def _json(payload: bytes | bytearray) -> Any:
    # The standard library's parser decides acceptance (NaN literals, big integers ...);
    # decode_columns' faster orjson pass sends whatever orjson refuses here.
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"payload is not JSON: {exc}") from None


def _number(name: str, value: Any, where: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{where}{name}={value!r} is not a number")
    return float(value)


def reading_from_object(
    data: Any, topic_meter_id: str | None = None, *, default_ts: Any = None, where: str = ""
) -> Reading:
    """A canonical reading from a decoded JSON object (see :func:`decode_reading`)."""
    if not isinstance(data, dict):
        raise ProtocolError(f"{where}payload is a JSON {type(data).__name__}, expected an object")
    meter_id = data.get("meter_id", topic_meter_id)
    if meter_id is None or str(meter_id) == "":
        raise ProtocolError(f"{where}no meter_id in the payload or the topic")
    if topic_meter_id is not None and str(meter_id) != topic_meter_id:
        raise ProtocolError(
            f"{where}payload meter_id {meter_id!r} disagrees with topic meter {topic_meter_id!r}"
        )
    ts = data.get("ts", default_ts)
    if ts is None:
        raise ProtocolError(f"{where}payload has no ts")
    out: Reading = {"meter_id": str(meter_id), "ts": ts}
    for name in READING_FIELDS:
        if name in data and data[name] is not None:
            out[name] = _number(name, data[name], where)
    if data.get("device_ts") is not None:
        out["device_ts"] = data["device_ts"]
    return out


def decode_reading(payload: bytes | bytearray, topic_meter_id: str | None = None) -> Reading:
    """Parse canonical JSON; the meter id comes from the payload or else from the topic.

    Raises :class:`ProtocolError` with the reason for anything that is not one well-formed
    reading: not JSON, not an object, no timestamp, a meter id that disagrees with the topic,
    or a quantity that is not a number.
    """
    return reading_from_object(_json(payload), topic_meter_id)


def decode_canonical(
    payload: bytes | bytearray, topic_meter_id: str | None = None
) -> list[Reading]:
    return [decode_reading(payload, topic_meter_id)]


def decode_batch(payload: bytes | bytearray, topic_meter_id: str | None = None) -> list[Reading]:
    """A gateway's batch: every entry of ``readings`` is a canonical reading (all or nothing).

    An entry without ``ts`` takes the batch's ``ts``. Entries must carry their ``meter_id`` (a
    topic meter, if the template has one, is not applied to a batch).
    """
    data = _json(payload)
    if not isinstance(data, dict):
        raise ProtocolError(f"payload is a JSON {type(data).__name__}, expected an object")
    entries = data.get("readings")
    if not isinstance(entries, list):
        raise ProtocolError("batch payload has no readings list")
    if not entries:
        raise ProtocolError("batch payload has an empty readings list")
    default_ts = data.get("ts")
    out = [
        reading_from_object(entry, None, default_ts=default_ts, where=f"readings[{i}]: ")
        for i, entry in enumerate(entries)
    ]
    ids = [r["meter_id"] for r in out]
    if len(set(ids)) != len(ids):
        dup = sorted({m for m in ids if ids.count(m) > 1})
        raise ProtocolError(f"batch payload repeats meter_id {', '.join(dup)}")
    return out


def decode_tasmota(payload: bytes | bytearray, topic_meter_id: str | None = None) -> list[Reading]:
    """Tasmota SENSOR JSON (``{"Time": ..., "ENERGY": {...}}``) as one canonical reading.

    ``Time`` is the device clock. Tasmota sends local time without an offset; a time without
    offset is taken as UTC (set ``Timezone 0`` on the device, or send an offset).
    """
    if not topic_meter_id:
        raise ProtocolError("tasmota payload needs the device name from the topic")
    data = _json(payload)
    if not isinstance(data, dict):
        raise ProtocolError(f"payload is a JSON {type(data).__name__}, expected an object")
    energy = data.get("ENERGY")
    if not isinstance(energy, dict):
        raise ProtocolError("tasmota payload has no ENERGY object")
    if not isinstance(data.get("Time"), str):
        raise ProtocolError("tasmota payload has no Time")
    out: Reading = {"meter_id": topic_meter_id, "ts": data["Time"], "device_ts": data["Time"]}
    for key, (column, factor) in TASMOTA_FIELDS.items():
        value = energy.get(key)
        if value is None:
            continue
        if isinstance(value, list):
            nums = [_number(f"ENERGY.{key}[{i}]", v) for i, v in enumerate(value)]
            if "{}" in column:
                if not 1 <= len(nums) <= 3:
                    raise ProtocolError(f"ENERGY.{key} has {len(nums)} phases, expected 1 to 3")
                for i, v in enumerate(nums, start=1):
                    out[column.format(i)] = v * factor
            else:
                out[column] = sum(nums) * factor
        else:
            v = _number(f"ENERGY.{key}", value)
            out[column.format(1)] = v * factor
    if len(out) == 3:
        raise ProtocolError("tasmota ENERGY object has none of " + ", ".join(TASMOTA_FIELDS))
    return [out]


CODECS: dict[str, Codec] = {
    "canonical": decode_canonical,
    "batch": decode_batch,
    "tasmota": decode_tasmota,
}


def strip_share(topic_filter: str) -> tuple[str, str | None]:
    """``$share/<group>/<filter>`` -> (filter, group); other filters -> (filter, None)."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) < 3 or not parts[1] or not parts[2]:
            raise ValueError(
                f"shared subscription {topic_filter!r} must be $share/<group>/<filter>"
            )
        return parts[2], parts[1]
    return topic_filter, None


def topic_matcher(template: str) -> tuple[str, str, str]:
    """For a template like ``meters/{meter_id}/reading``: (subscription filter, prefix, suffix).

    A shared template ``$share/g/meters/{meter_id}/reading`` subscribes to the shared filter;
    prefix and suffix apply to the topic messages arrive on, which has no ``$share/g/``.
    """
    prefix, suffix = template.split("{meter_id}")
    _, group = strip_share(template.replace("{meter_id}", "+"))
    if group is not None:
        prefix = prefix[len(f"$share/{group}/") :]
    return template.replace("{meter_id}", "+"), prefix, suffix


def meter_from_topic(topic: str, prefix: str, suffix: str) -> str | None:
    """The meter id a topic carries under a template's prefix/suffix, or None."""
    if not (topic.startswith(prefix) and topic.endswith(suffix)):
        return None
    mid = topic[len(prefix) : len(topic) - len(suffix)]
    return mid if mid and "/" not in mid else None


def filter_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic-filter matching (``+`` one level, ``#`` the rest), ``$share/g/`` stripped."""
    pattern, _ = strip_share(topic_filter)
    fl, tl = pattern.split("/"), topic.split("/")
    for i, part in enumerate(fl):
        if part == "#":
            return True
        if i >= len(tl) or (part != "+" and part != tl[i]):
            return False
    return len(fl) == len(tl)


@dataclass(frozen=True)
class Subscription:
    """One ``mqtt.subscriptions`` entry compiled: what to subscribe to and how to decode."""

    template: str
    codec: str
    filter: str  # what is sent in SUBSCRIBE (may be $share/...)
    prefix: str | None  # None when the template has no {meter_id}
    suffix: str | None

    @classmethod
    def compile(cls, template: str, codec: str = "canonical") -> Subscription:
        if codec not in CODECS:
            raise ValueError(f"unknown MQTT codec {codec!r}; use {', '.join(CODECS)}")
        if "{meter_id}" in template:
            filt, prefix, suffix = topic_matcher(template)
            return cls(template, codec, filt, prefix, suffix)
        strip_share(template)  # validates a $share form
        return cls(template, codec, template, None, None)

    def matches(self, topic: str) -> bool:
        return filter_matches(self.filter, topic)

    def decode(self, topic: str, payload: bytes | bytearray) -> list[Reading]:
        """Readings of one message; ProtocolError names the reason."""
        meter = None
        if self.prefix is not None and self.suffix is not None:
            # None (an empty level) leaves the meter id to the payload, as before templates.
            meter = meter_from_topic(topic, self.prefix, self.suffix)
        return CODECS[self.codec](payload, meter)


# -- columnar decode of many messages (the collector's fast path) ------------------------------

_NUMBER_TYPES = frozenset({float, int, type(None)})


@dataclass
class Columns:
    """Readings of many messages as columns: what :func:`decode_columns` returns.

    ``meter_id``, ``ts`` and ``device_ts`` are lists of the payloads' values (``device_ts`` is
    None when no reading sent one); every canonical quantity is a float64 array (NaN = absent).
    ``owner[i]`` is the index of the message row ``i`` came from. ``slow`` lists the messages
    left to the per-message codec (:meth:`Subscription.decode`): anything the fast path does
    not accept exactly as the codec would, so that the codec names the reason.
    """

    meter_id: list[str]
    ts: list[Any]
    device_ts: list[Any] | None
    fields: dict[str, np.ndarray]
    owner: np.ndarray
    slow: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.meter_id)


def _bad_number_rows(col: list[Any]) -> list[int]:
    return [i for i, v in enumerate(col) if type(v) not in _NUMBER_TYPES]


def decode_columns(
    codec: str, payloads: Sequence[bytes], topic_meters: Sequence[str | None]
) -> Columns:
    """Decode many payloads of one codec into columns, one JSON parse per message.

    Accepts exactly what :func:`decode_canonical` / :func:`decode_batch` accept and yields the
    same values; a message with anything unusual (not JSON, not an object, a missing or
    disagreeing meter id, a missing ts, a quantity that is not a JSON number, a repeated meter
    in a batch ...) is listed in ``slow`` for the per-message codec, which rejects it with the
    reason (or accepts it, e.g. a numeric meter id). Other codecs go to ``slow`` whole.
    """
    loads = orjson.loads
    slow: list[int] = []
    docs: list[dict[str, Any]] = []
    owner: list[int] = []
    meters: list[Any] = []
    ts: list[Any] = []
    if codec == "canonical":
        for i, payload in enumerate(payloads):
            try:
                doc = loads(payload)
            except orjson.JSONDecodeError:
                slow.append(i)
                continue
            if type(doc) is not dict:
                slow.append(i)
                continue
            docs.append(doc)
            owner.append(i)
        meters = [d.get("meter_id", topic_meters[i]) for d, i in zip(docs, owner, strict=True)]
        ts = [d.get("ts") for d in docs]
        bad = [
            k
            for k, (m, t, i) in enumerate(zip(meters, ts, owner, strict=True))
            if type(m) is not str
            or not m
            or t is None
            or (topic_meters[i] is not None and m != topic_meters[i])
        ]
    elif codec == "batch":
        for i, payload in enumerate(payloads):
            try:
                doc = loads(payload)
            except orjson.JSONDecodeError:
                slow.append(i)
                continue
            entries = doc.get("readings") if type(doc) is dict else None
            if type(entries) is not list or not entries:
                slow.append(i)
                continue
            ids = [e.get("meter_id") if type(e) is dict else None for e in entries]
            if len(set(ids)) != len(ids) or not all(type(m) is str and m for m in ids):
                slow.append(i)
                continue
            default = doc.get("ts")
            docs.extend(entries)
            owner.extend([i] * len(entries))
            meters.extend(ids)
            ts.extend([e.get("ts", default) for e in entries])
        bad = [k for k, t in enumerate(ts) if t is None]
    else:
        return Columns([], [], None, {}, np.zeros(0, dtype=np.int64), list(range(len(payloads))))
    # Only the quantities some reading carries are read out; the others are all NaN.
    present = set().union(*map(dict.keys, docs)) if docs else set()
    absent = [None] * len(docs)
    raw_fields = {
        name: [d.get(name) for d in docs] if name in present else absent for name in READING_FIELDS
    }
    for name, col in raw_fields.items():
        if name in present and not set(map(type, col)) <= _NUMBER_TYPES:
            bad.extend(_bad_number_rows(col))
    device = [d.get("device_ts") for d in docs]
    has_device = any(v is not None for v in device)
    owners = np.asarray(owner, dtype=np.int64)
    if bad:
        # Drop every row of a message with a bad row; the codec judges that message alone.
        gone = sorted({owner[k] for k in bad})
        slow.extend(gone)
        keep = ~np.isin(owners, gone)
        idx = np.flatnonzero(keep).tolist()
        meters = [meters[k] for k in idx]
        ts = [ts[k] for k in idx]
        device = [device[k] for k in idx]
        raw_fields = {name: [col[k] for k in idx] for name, col in raw_fields.items()}
        owners = owners[keep]
    try:
        nan = np.full(len(meters), np.nan)
        fields = {
            name: np.array(col, dtype=np.float64) if name in present else nan.copy()
            for name, col in raw_fields.items()
        }
    except OverflowError:  # an integer beyond float range: let the codec say which
        return Columns([], [], None, {}, np.zeros(0, dtype=np.int64), list(range(len(payloads))))
    return Columns(meters, ts, device if has_device else None, fields, owners, sorted(set(slow)))


# -- timestamps without pandas (the lean ingest path) ------------------------------------------

_ISO_TIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:?\d\d)?"
)
_EPOCH = datetime(1970, 1, 1)
_SECOND = timedelta(seconds=1)


def iso_epoch_ns(values: Sequence[Any]) -> list[int] | None:
    """Epoch nanoseconds (UTC) of ISO 8601 date-times, or None if one is not of the common
    form ``YYYY-MM-DDTHH:MM:SS[.fffffffff][Z|+HH:MM]`` (no offset: UTC).

    The common case of :func:`meterwatch.core.schema.to_utc` without pandas: for these texts
    both give the same instant. None means "ask the full parser", which accepts every other
    ISO 8601 spelling it accepts and names what it refuses; it never means invalid.
    """
    cache: dict[str, int] = {}
    out: list[int] = []
    for v in values:
        if type(v) is not str:
            return None
        ns = cache.get(v)
        if ns is None:
            m = _ISO_TIME.fullmatch(v)
            if m is None:
                return None
            y, mo, d, h, mi, s, frac, tz = m.groups()
            try:
                local = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s))
            except ValueError:  # out of range: the full parser names it
                return None
            sec = (local - _EPOCH) // _SECOND
            if tz and tz != "Z":
                off = int(tz[1:3]) * 3600 + int(tz[-2:]) * 60
                sec -= off if tz[0] == "+" else -off
            ns = sec * 1_000_000_000 + (int(frac.ljust(9, "0")) if frac else 0)
            cache[v] = ns
        out.append(ns)
    return out
