"""The pandas-free ingest pieces: they write what the frame path writes, and judge repeats."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from meterwatch.collector.writer import ReadingWriter
from meterwatch.config import parse_config
from meterwatch.core.schema import READING_FIELDS, to_utc
from meterwatch.core.stats import Stats
from meterwatch.ingest import lean_plan
from meterwatch.protocols.mqtt_payload import iso_epoch_ns
from meterwatch.storage.influx import InfluxStore
from meterwatch.storage.line_protocol import decode_readings, encode_readings
from meterwatch.storage.lp_encode import NO_TIME, ColumnBatch, ColumnEncoder
from meterwatch.storage.recent import CONFLICT, DUPLICATE, NEW, RecentReadings
from meterwatch.storage.spool import Spool


def sample_frame() -> pd.DataFrame:
    """Readings with missing quantities, an escaped meter id, a device clock apart."""
    frame = pd.DataFrame(
        {
            "meter_id": ["M1", "M 2,x=y", "M1"],
            "ts": pd.to_datetime(
                ["2026-01-05T00:00:00.7Z", "2026-01-05T00:15:00Z", "1969-12-31T23:59:59.5Z"],
                utc=True,
                format="ISO8601",
            ),
        }
    )
    for k, col in enumerate(READING_FIELDS):
        frame[col] = [0.1 * k, np.nan if k % 2 else 1e16 + k, -0.0 if k == 3 else 230.25]
    frame["collected_at"] = pd.Timestamp("2026-01-05T00:20:00Z")
    frame["device_ts"] = pd.to_datetime(
        ["2026-01-05T00:00:02Z", None, "1969-12-31T23:59:58Z"], utc=True
    )
    return frame


def test_column_encoder_writes_exactly_the_lines_of_the_frame_encoder() -> None:
    frame = sample_frame()
    secs = np.array([t.value // 1_000_000_000 for t in frame["ts"]])
    device = frame["device_ts"]
    batch = ColumnBatch(
        frame["meter_id"].tolist(),
        secs,
        np.array([NO_TIME if pd.isna(t) else t.value // 1_000_000_000 for t in device]),
        frame[list(READING_FIELDS)].to_numpy(),
        np.full(3, int(pd.Timestamp("2026-01-05T00:20:00Z").timestamp()), dtype=np.int64),
    )
    lines = ColumnEncoder().encode(batch, np.arange(3))
    assert lines == encode_readings(frame).lines
    assert lines[1].startswith("readings,meter_id=M\\ 2\\,x\\=y ")
    assert "device_ts" not in lines[1]


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-05T00:00:00Z",
        "2026-01-05T00:00:00.123456789Z",
        "2026-01-05 01:02:03+01:00",
        "2026-01-05T01:02:03-0530",
        "2026-01-05T01:02:03",
        "1969-12-31T23:59:59.5Z",
    ],
)
def test_fast_timestamps_are_the_instants_of_the_full_parser(text: str) -> None:
    assert iso_epoch_ns([text]) == [int(to_utc(pd.Series([text]))[0].value)]


@pytest.mark.parametrize(
    "value", ["now", "2026-13-01T00:00:00Z", "2026-01-05T00:00:00+01", "20260105", 20260105, None]
)
def test_other_spellings_go_to_the_full_parser(value: object) -> None:
    assert iso_epoch_ns([value]) is None


def test_recent_readings_tell_repeats_from_conflicts_within_and_across_batches() -> None:
    recent = RecentReadings(capacity=3)
    values = np.array([[1.0, np.nan], [2.0, 3.0], [1.0, np.nan], [9.0, 3.0]])
    verdict, keys = recent.judge(["A", "B", "A", "B"], np.array([10, 10, 10, 10]), values)
    assert verdict.tolist() == [NEW, NEW, DUPLICATE, CONFLICT]
    recent.load(keys)
    again = np.array([[2.0, 3.0], [2.0, 4.0], [5.0, 5.0]])
    verdict, keys = recent.judge(["B", "A", "C"], np.array([10, 10, 20]), again)
    assert verdict.tolist() == [DUPLICATE, CONFLICT, NEW]
    recent.load(keys)
    recent.load([(1, 1), (2, 2)])  # capacity 3: the oldest are forgotten
    assert len(recent) == 3
    verdict, _ = recent.judge(["A"], np.array([10]), np.array([[7.0, 7.0]]))
    assert verdict.tolist() == [NEW]


def test_the_spool_keeps_the_recent_keys_across_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, recent_capacity=2)
    spool.append_encoded(b"a 1\n", 1, [(1, 10), (2, 20)])
    spool.append_encoded(b"b 2\n", 1, [(3, 30)])
    spool.close()
    reopened = Spool(tmp_path, recent_capacity=2)
    assert reopened.recent_keys() == [(2, 20), (3, 30)]
    assert reopened.depth_rows == 2


def test_the_influx_spool_path_skips_repeats_and_keeps_conflicts_apart(tmp_path: Path) -> None:
    """Frames (the full service, registry tags) are judged like column batches."""
    stats = Stats()
    store = InfluxStore(flavor="v1", url="http://127.0.0.1:9", database="mw")
    frame = sample_frame().iloc[:2]
    changed = frame.copy()
    changed.loc[0, "power_kw"] = 99.0

    async def main() -> list[tuple[bytes, int]]:
        writer = ReadingWriter(store, stats, spool=Spool(tmp_path, recent_capacity=100))
        for f in (frame, frame, changed):
            assert writer.submit(f)
            await writer.flush()
        assert writer.spool is not None
        batch = writer.spool.peek(100)
        assert batch is not None
        return list(batch.bodies)

    bodies = asyncio.run(main())
    lines = b"".join(b for b, _ in bodies).decode().splitlines()
    assert [line.split(",")[0] for line in lines] == ["readings", "readings", "reading_conflicts"]
    assert "power_kw=99.0" in lines[2] and "detected_at=" in lines[2]
    assert stats.snapshot()["readings_duplicate"] == 3  # the repeated frame, the unchanged row
    assert stats.snapshot()["readings_conflicting"] == 1
    # A backup of the pending spool restores the readings, not the conflicting value.
    pending = decode_readings(b"".join(b for b, _ in bodies))
    assert len(pending) == 2 and 99.0 not in pending["power_kw"].tolist()


def test_only_an_mqtt_only_ingest_into_influxdb_runs_lean() -> None:
    base = {
        "collector": {"mqtt": {"broker": "external"}},
        "storage": {"backend": "influx", "influx": {"database": "mw"}},
    }
    plan = lean_plan(parse_config(base), 5.0)
    assert plan is not None and plan["duration"] == 5.0
    assert plan["mqtt"]["broker"] == "external"
    for change in (
        {"storage": {"backend": "embedded"}},
        {"registry": {"path": "meters.csv"}},
        {"collector": {"mqtt": {"broker": "embedded"}}},
        {"collector": {"mqtt": {"broker": "external", "lean_ingest": False}}},
        {
            "collector": {
                "mqtt": {"broker": "external"},
                "modbus": {"gateways": [{"name": "g", "host": "127.0.0.1", "devices": []}]},
            }
        },
    ):
        assert lean_plan(parse_config({**base, **change}), None) is None, change


def test_lean_decode_takes_every_ts_spelling_the_full_path_takes(tmp_path: Path) -> None:
    """A ts the fast parser leaves alone goes through the per-message codec, same instant;
    one nobody accepts is dead-lettered with the reason, the others still stored."""
    from datetime import UTC, datetime

    from meterwatch.collector.mqtt import MqttCollector

    stats = Stats()
    writer = ReadingWriter(InfluxStore(flavor="v1", url="http://127.0.0.1:9", database="mw"), stats)
    collector = MqttCollector(
        host="127.0.0.1",
        port=1,
        topic_template="meters/{meter_id}/reading",
        writer=writer,
        stats=stats,
        dead_letter=tmp_path / "dead.jsonl",
        columnar=True,
    )
    payloads = [
        b'{"ts": "2026-01-05T00:00:00Z", "power_kw": 1.5}',
        b'{"ts": "2026-01-05T01:00:00+01", "power_kw": 2.5}',  # the full parser's spelling
        b'{"ts": "yesterday", "power_kw": 3.5}',
    ]
    pubs = [(b"meters/M%d/reading" % i, p, i + 1, 1) for i, p in enumerate(payloads)]
    rejected: list[tuple[int, str]] = []
    batch = collector._decode_columnar(
        0, pubs, ["M0", "M1", "M2"], [0, 1, 2], datetime(2026, 1, 5, tzinfo=UTC), rejected
    )
    assert batch is not None
    got = dict(zip(batch.meter_id, batch.seconds.tolist(), strict=True))
    assert got == {"M0": 1767571200, "M1": 1767571200}
    assert [i for i, _ in rejected] == [2] and "yesterday" in rejected[0][1]
