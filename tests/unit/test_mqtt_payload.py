"""Canonical JSON payload codec and topic templates (table-driven)."""

from __future__ import annotations

import json

import pytest

from meterwatch.core.errors import ProtocolError
from meterwatch.protocols.mqtt_payload import (
    decode_reading,
    encode_reading,
    meter_from_topic,
    topic_matcher,
)


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


# -- batch, Tasmota, shared subscriptions ---------------------------------------------------

from meterwatch.protocols.mqtt_payload import (  # noqa: E402
    Subscription,
    decode_batch,
    decode_tasmota,
    filter_matches,
)


def test_batch_entries_take_the_batch_ts_and_keep_their_own() -> None:
    payload = json.dumps(
        {
            "gateway": "gw1",
            "ts": "2026-01-05T00:15:00Z",
            "readings": [
                {"meter_id": "A", "power_kw": 1},
                {"meter_id": "B", "ts": "2026-01-05T00:14:00Z", "energy_import_kwh": 5.5},
            ],
        }
    ).encode()
    assert decode_batch(payload) == [
        {"meter_id": "A", "ts": "2026-01-05T00:15:00Z", "power_kw": 1.0},
        {"meter_id": "B", "ts": "2026-01-05T00:14:00Z", "energy_import_kwh": 5.5},
    ]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[]", "JSON list"),
        (b'{"gateway": "g"}', "no readings list"),
        (b'{"readings": []}', "empty readings"),
        (
            b'{"readings": [{"meter_id": "A", "ts": "t"}, {"ts": "t"}]}',
            r"readings\[1\]: no meter_id",
        ),
        (b'{"readings": [{"meter_id": "A"}]}', r"readings\[0\]: payload has no ts"),
        (b'{"ts": "t", "readings": [{"meter_id": "A"}, {"meter_id": "A"}]}', "repeats meter_id A"),
        (
            b'{"ts": "t", "readings": [{"meter_id": "A", "power_kw": "x"}]}',
            r"readings\[0\]: power_kw",
        ),
    ],
)
def test_bad_batches_are_rejected_whole_with_the_entry_named(payload: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_batch(payload)


def test_tasmota_energy_maps_to_canonical_names_and_units() -> None:
    payload = json.dumps(
        {
            "Time": "2026-01-05T10:00:00",
            "ENERGY": {
                "TotalStartTime": "2025-01-01T00:00:00",
                "Total": 1234.567,
                "Yesterday": 3.1,
                "Today": 1.2,
                "Power": 1500,
                "ApparentPower": 1600,
                "ReactivePower": 550,
                "Factor": 0.94,
                "Frequency": 50.02,
                "Voltage": 231,
                "Current": 6.9,
            },
        }
    ).encode()
    (r,) = decode_tasmota(payload, "plug1")
    assert r == {
        "meter_id": "plug1",
        "ts": "2026-01-05T10:00:00",
        "device_ts": "2026-01-05T10:00:00",
        "energy_import_kwh": 1234.567,
        "power_kw": pytest.approx(1.5),
        "reactive_power_kvar": pytest.approx(0.55),
        "power_factor": 0.94,
        "frequency_hz": 50.02,
        "voltage_l1_v": 231.0,
        "current_l1_a": 6.9,
    }


def test_tasmota_three_phase_lists() -> None:
    payload = b'{"Time": "2026-01-05T10:00:00", "ENERGY": {"Voltage": [230, 231, 232], "Current": [1, 2, 3], "Power": [100, 200, 300]}}'
    (r,) = decode_tasmota(payload, "sdm")
    assert (r["voltage_l2_v"], r["current_l3_a"], r["power_kw"]) == (231.0, 3.0, pytest.approx(0.6))


@pytest.mark.parametrize(
    ("payload", "meter", "reason"),
    [
        (b'{"Time": "t", "ENERGY": {"Power": 1}}', None, "device name from the topic"),
        (b'{"Time": "t"}', "p", "no ENERGY"),
        (b'{"ENERGY": {"Power": 1}}', "p", "no Time"),
        (b'{"Time": "t", "ENERGY": {"Today": 1}}', "p", "none of"),
        (b'{"Time": "t", "ENERGY": {"Power": "x"}}', "p", "ENERGY.Power"),
        (b'{"Time": "t", "ENERGY": {"Voltage": [1, 2, 3, 4]}}', "p", "4 phases"),
    ],
)
def test_bad_tasmota_payloads(payload: bytes, meter: str | None, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_tasmota(payload, meter)


def test_device_ts_is_kept_next_to_ts() -> None:
    r = decode_reading(
        b'{"meter_id": "M", "ts": "2026-01-05T00:15:00Z", "device_ts": "2026-01-05T00:15:02Z"}'
    )
    assert r["device_ts"] == "2026-01-05T00:15:02Z" and r["ts"] == "2026-01-05T00:15:00Z"
    assert decode_reading(encode_reading(r)) == r


def test_shared_subscription_strips_the_share_prefix_for_meter_ids() -> None:
    filt, prefix, suffix = topic_matcher("$share/g1/site/{meter_id}/reading")
    assert filt == "$share/g1/site/+/reading"
    assert meter_from_topic("site/M7/reading", prefix, suffix) == "M7"
    sub = Subscription.compile("$share/g1/site/{meter_id}/reading")
    assert sub.matches("site/M7/reading") and not sub.matches("other/M7/reading")
    assert sub.decode("site/M7/reading", b'{"ts": "2026-01-05T00:00:00Z"}')[0]["meter_id"] == "M7"


@pytest.mark.parametrize(
    ("filt", "topic", "match"),
    [
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/#", "a/b/c", True),
        ("a/b", "a/b/c", False),
        ("$share/g/a/+", "a/x", True),
        ("gateways/+/batch", "gateways/gw1/batch", True),
    ],
)
def test_filter_matching(filt: str, topic: str, match: bool) -> None:
    assert filter_matches(filt, topic) is match


def test_subscription_errors() -> None:
    with pytest.raises(ValueError, match="unknown MQTT codec"):
        Subscription.compile("a/{meter_id}", "xml")
    with pytest.raises(ValueError, match=r"\$share/<group>/<filter>"):
        Subscription.compile("$share/onlygroup")
