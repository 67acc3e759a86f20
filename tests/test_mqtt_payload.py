"""Canonical JSON payload codec and topic templates (table-driven)."""

from __future__ import annotations

import json

import pytest

from meterwatch.errors import ProtocolError
from protocols.mqtt_payload import decode_reading, encode_reading, meter_from_topic, topic_matcher


def test_round_trip() -> None:
    rec = {
        "meter_id": "R0001",
        "ts": "2026-01-05T00:15:00Z",
        "power_kw": 1.25,
        "voltage_l2_v": float("nan"),
    }
    payload = encode_reading(rec)
    assert "voltage_l2_v" not in json.loads(payload)
    assert decode_reading(payload, "R0001") == {
        "meter_id": "R0001",
        "ts": "2026-01-05T00:15:00Z",
        "power_kw": 1.25,
    }


@pytest.mark.parametrize(
    ("payload", "topic_meter", "reason"),
    [
        (b"not json", "M1", "not JSON"),
        (b"[1,2]", "M1", "JSON list"),
        (b'{"ts": "2026-01-05T00:00:00Z"}', None, "no meter_id"),
        (b'{"meter_id": "M2", "ts": "2026-01-05T00:00:00Z"}', "M1", "disagrees"),
        (b'{"meter_id": "M1"}', "M1", "no ts"),
        (b'{"meter_id": "M1", "ts": "x", "power_kw": "high"}', "M1", "power_kw='high'"),
        (b'{"meter_id": "M1", "ts": "x", "power_kw": true}', "M1", "power_kw=True"),
        (b"\xff\xfe", "M1", "not JSON"),
    ],
)
def test_bad_payloads_name_the_reason(payload: bytes, topic_meter: str | None, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_reading(payload, topic_meter)


def test_topic_template() -> None:
    filt, prefix, suffix = topic_matcher("site/a/{meter_id}/reading")
    assert filt == "site/a/+/reading"
    assert meter_from_topic("site/a/M7/reading", prefix, suffix) == "M7"
    assert meter_from_topic("site/b/M7/reading", prefix, suffix) is None
    assert meter_from_topic("site/a//reading", prefix, suffix) is None
