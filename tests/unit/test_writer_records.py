"""Writer submissions as reading dicts (the MQTT collector) mixed with frames (pollers)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from meterwatch.collector.mqtt import parse_reading_times
from meterwatch.collector.writer import ReadingWriter
from meterwatch.core.errors import ProtocolError, StorageError
from meterwatch.core.schema import READING_COLUMNS, readings_from_records
from meterwatch.core.stats import Stats
from meterwatch.storage.spool import Spool
from tests.unit.test_spool import ListStore, frame


def records(start: int, n: int, meter: str) -> list[dict[str, Any]]:
    """Reading dicts as the MQTT collector hands them over (parsed times, collected_at)."""
    out: list[dict[str, Any]] = [
        {
            "meter_id": meter,
            "ts": f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z",
            "energy_import_kwh": i * 0.5,
            "collected_at": pd.Timestamp("2026-01-02T00:00:00Z"),
        }
        for i in range(start, start + n)
    ]
    for r in out:
        r["device_ts"] = r["ts"]
    parse_reading_times(out)
    return out


class Recorder(ListStore):
    """A ListStore that notes, per write, which acknowledgements had already run."""

    def __init__(self, acked: list[str]) -> None:
        super().__init__()
        self.acked = acked
        self.acked_at_write: list[list[str]] = []

    def write_readings(self, df: pd.DataFrame) -> int:
        self.acked_at_write.append(list(self.acked))
        return super().write_readings(df)


def _submit_mix(writer: ReadingWriter, acked: list[str]) -> None:
    assert writer.submit(records(0, 3, "A"), on_stored=lambda: acked.append("A"))
    assert writer.submit(frame(0, 2, meter="P"), on_stored=lambda: acked.append("P"))
    assert writer.submit(records(3, 2, "B"), on_stored=lambda: acked.append("B"))
    assert writer.submit(records(5, 1, "C"), on_stored=lambda: acked.append("C"))
    assert writer.pending_rows == 3 + 2 + 2 + 1


def test_direct_mix_of_records_and_frames_is_one_write_acked_after_it() -> None:
    async def scenario() -> tuple[Recorder, list[str], int]:
        acked: list[str] = []
        store = Recorder(acked)
        writer = ReadingWriter(store, Stats(), flush_interval_s=60)
        _submit_mix(writer, acked)
        store.failing = True
        with pytest.raises(StorageError):
            await writer.flush()
        assert acked == [] and writer.pending_rows == 8  # kept, not acknowledged
        store.failing = False
        await writer.flush()
        return store, acked, writer.pending_rows

    store, acked, pending = asyncio.run(scenario())
    assert pending == 0 and acked == ["A", "P", "B", "C"]
    assert len(store.frames) == 1 and store.acked_at_write == [[], []]  # acks only after it
    got = store.frames[0]
    assert list(got["meter_id"]) == ["A"] * 3 + ["P"] * 2 + ["B"] * 2 + ["C"]  # submission order
    assert list(got.columns[: len(READING_COLUMNS)]) == list(READING_COLUMNS)
    assert str(got["ts"].dtype) == "datetime64[ns, UTC]"
    assert got["ts"].iloc[0] == pd.Timestamp("2026-01-01T00:00:00Z")
    assert got["ts"].iloc[-1] == pd.Timestamp("2026-01-01T00:00:05Z")
    np.testing.assert_array_equal(got["energy_import_kwh"].iloc[5:], [1.5, 2.0, 2.5])
    # The pollers' frame has no collected_at: NaT there, the MQTT rows keep theirs.
    assert got["collected_at"].isna().tolist() == [False] * 3 + [True] * 2 + [False] * 3


def test_readings_being_flushed_count_as_pending_until_durable() -> None:
    """A flush takes the pending readings out before writing them: until the write is done they
    are still only in memory, so ``pending_rows`` and the ``writer_pending_rows`` gauge count
    them (a SIGKILL then would lose them); a failed write keeps them pending, counted once."""
    stats = Stats()
    seen: list[tuple[int, float]] = []

    class Watcher(ListStore):
        def write_readings(self, df: pd.DataFrame) -> int:
            seen.append((writer.pending_rows, stats.gauge_snapshot()["writer_pending_rows"]))
            return super().write_readings(df)

    store = Watcher()
    writer = ReadingWriter(store, stats, flush_interval_s=60)

    async def scenario() -> None:
        _submit_mix(writer, [])
        store.failing = True
        with pytest.raises(StorageError):
            await writer.flush()
        assert writer.pending_rows == 8
        assert stats.gauge_snapshot()["writer_pending_rows"] == 8
        store.failing = False
        await writer.flush()

    asyncio.run(scenario())
    assert seen == [(8, 8.0), (8, 8.0)]  # during the failed write and the one that succeeded
    assert writer.pending_rows == 0 and stats.gauge_snapshot()["writer_pending_rows"] == 0


def test_spooled_mix_acked_only_after_the_spool_append(tmp_path: Path) -> None:
    async def scenario() -> tuple[Spool, list[str], list[list[str]]]:
        acked: list[str] = []
        spool = Spool(tmp_path / "s")
        seen: list[list[str]] = []
        real_append = spool.append

        def append(df: pd.DataFrame) -> int:
            seen.append(list(acked))
            if len(seen) == 1:
                raise StorageError("disk trouble (test)")
            return real_append(df)

        spool.append = append  # type: ignore[method-assign]
        writer = ReadingWriter(ListStore(), Stats(), spool=spool, flush_interval_s=60)
        _submit_mix(writer, acked)
        with pytest.raises(StorageError):
            await writer.flush()
        assert acked == [] and writer.pending_rows == 8
        await writer.flush()
        return spool, acked, seen

    spool, acked, seen = asyncio.run(scenario())
    assert seen == [[], []] and acked == ["A", "P", "B", "C"]
    assert spool.depth_rows == 8
    batch = spool.peek(100)
    assert batch is not None
    assert list(batch.frame["meter_id"]) == ["A"] * 3 + ["P"] * 2 + ["B"] * 2 + ["C"]


def test_refusal_counts_record_rows() -> None:
    stats = Stats()
    writer = ReadingWriter(ListStore(), stats, max_pending_rows=4)
    assert writer.submit(records(0, 3, "A"))
    assert not writer.submit(records(3, 2, "B"))
    assert writer.pending_rows == 3 and stats.snapshot()["readings_refused"] == 2


# ts values as a JSON payload can carry them (the codecs reject only a missing/null ts).
TS_TABLE: list[Any] = [
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00.123456789Z",
    "2026-01-01T02:00:00+02:00",
    "2026-01-01T00:00:00-0530",
    "2026-01-01T00:00:00",
    "2026-01-01 00:00:00",
    "2026-01-01",
    "20260101T000000Z",
    "2026-01-01T24:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-W01",
    "garbage",
    "",
    "nan",
    "NaT",
    "1700000000",
    1700000000,
    1.7e9,
    0,
    -1,
    float("nan"),
    float("inf"),
    [1, 2],
    {"a": 1},
]


def _frame_path(values: list[Any], device: list[Any] | None) -> tuple[str, Any]:
    """What the per-message frame did: readings_from_records, then reject any NaT ts."""
    recs = [
        {"meter_id": f"m{i}", "ts": v, "device_ts": v if device is None else device[i]}
        for i, v in enumerate(values)
    ]
    try:
        out = readings_from_records(recs)
    except (ValueError, TypeError) as exc:
        return ("error", f"{type(exc).__name__}: {exc}")
    bad = out["ts"].isna().to_numpy()
    if bad.any():  # the collector's check before this change, reason text included
        first = recs[int(bad.argmax())]
        return (
            "error",
            f"ProtocolError: ts {first['ts']!r} of meter {first['meter_id']} "
            "is not an ISO 8601 time",
        )
    return ("ok", (list(out["ts"]), list(out["device_ts"])))


def _record_path(values: list[Any], device: list[Any] | None) -> tuple[str, Any]:
    recs = [{"meter_id": f"m{i}", "ts": v} for i, v in enumerate(values)]
    for r, d in zip(recs, device or values, strict=True):
        r["device_ts"] = r["ts"] if device is None else d
    try:
        latest = parse_reading_times(recs)
    except (ValueError, TypeError, ProtocolError) as exc:
        return ("error", f"{type(exc).__name__}: {exc}")
    assert latest == max(r["ts"] for r in recs)
    return ("ok", ([r["ts"] for r in recs], [r["device_ts"] for r in recs]))


def _same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    if a[0] != b[0] or a[0] == "error":
        return a == b
    return all(
        len(x) == len(y)
        and all((p is pd.NaT and q is pd.NaT) or p == q for p, q in zip(x, y, strict=True))
        for x, y in zip(a[1], b[1], strict=True)
    )


@pytest.mark.parametrize("value", TS_TABLE, ids=repr)
def test_ts_acceptance_equals_frame_path_single(value: Any) -> None:
    assert _same(_record_path([value], None), _frame_path([value], None))


@pytest.mark.parametrize("value", TS_TABLE, ids=repr)
def test_ts_acceptance_equals_frame_path_in_a_batch(value: Any) -> None:
    # A batch message: one odd entry among good ones changes the column's dtype.
    values = ["2026-01-01T00:00:00Z", value, "2026-01-01T00:15:00+00:00"]
    assert _same(_record_path(values, None), _frame_path(values, None))


@pytest.mark.parametrize("device", TS_TABLE, ids=repr)
def test_device_ts_parsed_like_frame_path(device: Any) -> None:
    values = ["2026-01-01T00:00:00Z", "2026-01-01T00:15:00Z"]
    devices = ["2026-01-01T00:00:01Z", device]
    assert _same(_record_path(values, devices), _frame_path(values, devices))


def test_nat_ts_rejected_with_the_reason_naming_it() -> None:
    recs = [
        {"meter_id": "ok", "ts": "2026-01-01T00:00:00Z"},
        {"meter_id": "m7", "ts": "nan"},
    ]
    for r in recs:
        r["device_ts"] = r["ts"]
    with pytest.raises(ProtocolError, match=r"^ts 'nan' of meter m7 is not an ISO 8601 time$"):
        parse_reading_times(recs)


class Unprintable:
    """A meter id no frame can be built from (str() fails)."""

    def __str__(self) -> str:
        raise RuntimeError("no text for this id")


def test_one_list_that_cannot_be_built_is_taken_out_alone() -> None:
    # It would fail every flush and block every later reading: it is taken out, counted,
    # never acknowledged, its on_failed called; the rest of the batch is stored and acked.
    async def scenario() -> tuple[Recorder, list[str], list[str], Stats, int]:
        acked: list[str] = []
        failed: list[str] = []
        store, stats = Recorder(acked), Stats()
        writer = ReadingWriter(store, stats, flush_interval_s=60)
        assert writer.submit(records(0, 2, "A"), on_stored=lambda: acked.append("A"))
        bad = records(2, 2, "X")
        bad[1]["meter_id"] = Unprintable()
        assert writer.submit(bad, lambda: acked.append("X"), failed.append)
        assert writer.submit(frame(0, 2, meter="P"), on_stored=lambda: acked.append("P"))
        await writer.flush()
        return store, acked, failed, stats, writer.pending_rows

    store, acked, failed, stats, pending = asyncio.run(scenario())
    assert acked == ["A", "P"] and pending == 0
    assert len(failed) == 1 and "no text for this id" in failed[0]
    assert stats.snapshot()["readings_unbuildable"] == 2
    assert list(store.frames[0]["meter_id"]) == ["A", "A", "P", "P"]


def test_mqtt_message_the_writer_cannot_store_is_dead_lettered_and_acknowledged(
    tmp_path: Path,
) -> None:
    from meterwatch.collector.mqtt import MqttCollector, _Received

    stats = Stats()
    c = MqttCollector(
        host="127.0.0.1",
        port=1,
        topic_template="meters/{meter_id}/reading",
        writer=None,  # type: ignore[arg-type]  # not reached
        stats=stats,
        dead_letter=tmp_path / "dead.jsonl",
    )
    m = (b"meters/M1/reading", b'{"meter_id": "M1"}', 7, 1)
    got = _Received(1, None, [7], c.client.generation, messages=[m])
    c._outstanding[1] = got
    c._unstorable(got, "RuntimeError: no text for this id")
    assert got.acked and not c._outstanding
    line = (tmp_path / "dead.jsonl").read_text().strip()
    assert "readings cannot be stored: RuntimeError: no text for this id" in line
    assert stats.snapshot()["mqtt_dead_letters"] == 1
