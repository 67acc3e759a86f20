"""MQTT payload codecs: canonical JSON readings to and from bytes. Pure functions."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from meterwatch.errors import ProtocolError
from meterwatch.schema import READING_FIELDS


def encode_reading(reading: Mapping[str, Any]) -> bytes:
    """One canonical reading as compact JSON (NaN quantities omitted, ts as ISO 8601 Z)."""
    ts = reading["ts"]
    text = ts if isinstance(ts, str) else ts.strftime("%Y-%m-%dT%H:%M:%S") + "Z"
    out: dict[str, Any] = {"meter_id": str(reading["meter_id"]), "ts": text}
    for name in READING_FIELDS:
        value = reading.get(name)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            out[name] = float(value)
    return json.dumps(out, separators=(",", ":")).encode()


def decode_reading(payload: bytes | bytearray, topic_meter_id: str | None = None) -> dict[str, Any]:
    """Parse canonical JSON; the meter id comes from the payload or else from the topic.

    Raises :class:`ProtocolError` with the reason for anything that is not one well-formed
    reading: not JSON, not an object, no timestamp, a meter id that disagrees with the topic,
    or a quantity that is not a number.
    """
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"payload is a JSON {type(data).__name__}, expected an object")
    meter_id = data.get("meter_id", topic_meter_id)
    if meter_id is None or str(meter_id) == "":
        raise ProtocolError("no meter_id in the payload or the topic")
    if topic_meter_id is not None and str(meter_id) != topic_meter_id:
        raise ProtocolError(
            f"payload meter_id {meter_id!r} disagrees with topic meter {topic_meter_id!r}"
        )
    if "ts" not in data:
        raise ProtocolError("payload has no ts")
    out: dict[str, Any] = {"meter_id": str(meter_id), "ts": data["ts"]}
    for name in READING_FIELDS:
        if name in data and data[name] is not None:
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ProtocolError(f"{name}={value!r} is not a number")
            out[name] = float(value)
    return out


def topic_matcher(template: str) -> tuple[str, str, str]:
    """For a template like ``meters/{meter_id}/reading``: (subscription filter, prefix, suffix)."""
    prefix, suffix = template.split("{meter_id}")
    return prefix + "+" + suffix, prefix, suffix


def meter_from_topic(topic: str, prefix: str, suffix: str) -> str | None:
    """The meter id a topic carries under a template's prefix/suffix, or None."""
    if not (topic.startswith(prefix) and topic.endswith(suffix)):
        return None
    mid = topic[len(prefix) : len(topic) - len(suffix)]
    return mid if mid and "/" not in mid else None
