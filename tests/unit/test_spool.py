"""Durable spool and the spooled writer: ordering, bounded size, restart, outage retry."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from meterwatch.collector.writer import ReadingWriter
from meterwatch.core.errors import StorageError
from meterwatch.core.schema import normalize_readings
from meterwatch.core.stats import Stats
from meterwatch.storage.spool import Spool, SpoolFullError


def frame(start: int, n: int, meter: str = "M1") -> pd.DataFrame:
    ts = pd.Timestamp("2026-01-01T00:00:00Z") + pd.to_timedelta(np.arange(start, start + n), "s")
    return normalize_readings(
        pd.DataFrame(
            {
                "meter_id": meter,
                "ts": ts,
                "energy_import_kwh": np.arange(start, start + n) * 0.25,
                "power_kw": np.where(np.arange(start, start + n) % 3 == 0, np.nan, 1.5),
            }
        )
    )


class ListStore:
    """An in-memory ReadingStore that can be switched to failing (a store outage)."""

    def __init__(self) -> None:
        self.frames: list[pd.DataFrame] = []
        self.failing = False
        self.calls = 0

    def write_readings(self, df: pd.DataFrame) -> int:
        self.calls += 1
        if self.failing:
            raise StorageError("store down (test)")
        self.frames.append(df.copy())
        return len(df)

    def read_readings(self, meter_ids=None, start=None, end=None) -> pd.DataFrame:  # noqa: ANN001
        return pd.concat(self.frames, ignore_index=True)

    def close(self) -> None:
        pass


def test_append_peek_remove_oldest_first_and_exact(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    parts = [frame(0, 3), frame(3, 4), frame(7, 5)]
    seqs = [spool.append(p) for p in parts]
    assert seqs == sorted(seqs)
    assert spool.depth_rows == 12 and spool.depth_batches == 3 and spool.depth_bytes > 0

    first = spool.peek(max_rows=8)  # whole appends only: 3 + 4 fit, 3 + 4 + 5 does not
    assert first is not None and first.batches == 2 and first.last_seq == seqs[1]
    pd.testing.assert_frame_equal(first.frame, pd.concat(parts[:2], ignore_index=True))
    spool.remove_through(first.last_seq)
    assert spool.depth_rows == 5

    second = spool.peek(max_rows=1)  # at least one append even when it is larger than max_rows
    assert second is not None
    pd.testing.assert_frame_equal(second.frame, parts[2])
    spool.remove_through(second.last_seq)
    assert spool.peek() is None and spool.depth_rows == 0 and spool.depth_bytes == 0
    assert spool.oldest_age_s() == 0.0


def test_restart_sees_pending_content_and_sequence_keeps_growing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    a = spool.append(frame(0, 10))
    spool.append(frame(10, 10))
    spool.remove_through(a)
    spool.close()  # a crash leaves the same file: every append was committed

    again = Spool(tmp_path / "s")
    assert again.recovered_rows == 10 and again.depth_rows == 10
    assert again.oldest_age_s() >= 0.0
    c = again.append(frame(20, 1))
    assert c > a + 1  # AUTOINCREMENT: never reuses a removed sequence number
    batch = again.peek()
    assert batch is not None
    assert batch.frame["energy_import_kwh"].tolist() == [i * 0.25 for i in range(10, 21)]


def test_full_spool_refuses_appends_and_keeps_what_it_has(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 16)
    appended = 0
    with pytest.raises(SpoolFullError, match="storage.spool.max_bytes"):
        for i in range(10_000):
            spool.append(frame(i * 500, 500))
            appended += 500
    assert spool.is_full and spool.depth_rows == appended > 0
    # Room again once the drainer removed some.
    batch = spool.peek(max_rows=1)
    assert batch is not None
    spool.remove_through(batch.last_seq)
    if not spool.is_full:
        spool.append(frame(0, 1))


def test_writer_acks_after_spool_and_counts_refusals_when_full(tmp_path: Path) -> None:
    async def scenario() -> tuple[Stats, list[int], ListStore, Spool]:
        store = ListStore()
        store.failing = True  # nothing drains: the spool fills up
        spool = Spool(tmp_path / "s", max_bytes=1 << 16)
        stats = Stats()
        writer = ReadingWriter(store, stats, spool=spool, flush_interval_s=0.01)
        writer.start()
        acked: list[int] = []
        refused = 0
        for i in range(400):
            ok = writer.submit(frame(i * 200, 200), on_stored=lambda i=i: acked.append(i))
            refused += 0 if ok else 1
            try:
                await writer.flush()
            except SpoolFullError:  # accepted rows stay pending, unacknowledged
                assert writer.pending_rows > 0
        assert refused > 0
        await writer.close(drain_timeout_s=0.0)
        return stats, acked, store, spool

    stats, acked, store, spool = asyncio.run(scenario())
    c = stats.snapshot()
    # Every accepted and acknowledged frame is in the spool; every other one was counted.
    assert spool.depth_rows == len(acked) * 200 == c["readings_spooled"]
    # A frame accepted but refused by the full spool at flush time stayed in memory, never
    # acknowledged; at close it is counted as lost (the upstream keeps it: no ack was sent).
    lost = c.get("readings_lost_at_close", 0)
    assert c["spool_refused"] == c["readings_refused"]
    assert c["readings_refused"] + lost == 400 * 200 - len(acked) * 200
    assert stats.gauge_snapshot()["spool_depth_rows"] == spool.depth_rows
    assert store.frames == []


def test_outage_then_drain_oldest_first_exactly_once(tmp_path: Path) -> None:
    async def scenario() -> tuple[ListStore, Stats, int]:
        store = ListStore()
        spool = Spool(tmp_path / "s")
        stats = Stats()
        writer = ReadingWriter(
            store,
            stats,
            spool=spool,
            flush_interval_s=0.01,
            drain_interval_s=0.02,
            backoff_cap_s=0.1,
            drain_batch_rows=50,
        )
        writer.start()
        acked = 0

        def ack() -> None:
            nonlocal acked
            acked += 1

        for i in range(30):
            if i == 5:
                store.failing = True
            if i == 20:
                store.failing = False
            assert writer.submit(frame(i * 20, 20), on_stored=ack)
            await asyncio.sleep(0.02)
        await writer.close(drain_timeout_s=5.0)
        return store, stats, acked

    store, stats, acked = asyncio.run(scenario())
    assert acked == 30
    got = pd.concat(store.frames, ignore_index=True)
    assert got["ts"].is_monotonic_increasing  # oldest first, across the outage
    assert len(got) == 600 and not got.duplicated(["meter_id", "ts"]).any()
    c = stats.snapshot()
    assert c["store_errors"] >= 1 and c["readings_stored"] == 600
    assert stats.gauge_snapshot()["spool_depth_rows"] == 0


def test_writer_drains_what_a_previous_process_left(tmp_path: Path) -> None:
    left = Spool(tmp_path / "s")
    left.append(frame(0, 7))
    left.append(frame(7, 3))
    left.close()

    async def scenario() -> ListStore:
        store = ListStore()
        writer = ReadingWriter(store, Stats(), spool=Spool(tmp_path / "s"), drain_interval_s=0.01)
        writer.start()
        for _ in range(200):
            if writer.spool_rows == 0:
                break
            await asyncio.sleep(0.01)
        await writer.close()
        return store

    store = asyncio.run(scenario())
    got = pd.concat(store.frames, ignore_index=True)
    pd.testing.assert_frame_equal(got, frame(0, 10))
    assert Spool(tmp_path / "s").depth_rows == 0


def test_storage_config_spool_policy_and_factory_secrets(tmp_path: Path) -> None:
    from meterwatch.config import parse_config
    from meterwatch.core.errors import ConfigError
    from meterwatch.storage.embedded import EmbeddedStore
    from meterwatch.storage.factory import build_store
    from meterwatch.storage.influx import InfluxStore

    base = {"registry": {"path": "meters.csv"}}
    assert not parse_config(base).storage.uses_spool  # embedded: direct, DuckDB commits itself
    v2 = {"flavor": "v2", "url": "http://127.0.0.1:1", "org": "grid", "bucket": "mw"}
    cfg = parse_config({**base, "storage": {"backend": "influx", "influx": v2}})
    assert cfg.storage.uses_spool and cfg.storage.influx is not None
    assert cfg.storage.influx.token_env == "MW_INFLUX_TOKEN"
    with pytest.raises(ConfigError, match="storage.influx"):
        parse_config({**base, "storage": {"backend": "influx"}})
    with pytest.raises(ConfigError, match="always go through the durable spool"):
        parse_config(
            {**base, "storage": {"backend": "influx", "influx": v2, "spool": {"enabled": False}}}
        )
    with pytest.raises(ConfigError, match="database is required"):
        parse_config({**base, "storage": {"backend": "influx", "influx": {"flavor": "v1"}}})

    with pytest.raises(ConfigError) as err:
        build_store(cfg.storage, env={})
    assert err.value.problems == [
        (
            "storage.influx.token_env",
            "environment variable MW_INFLUX_TOKEN is not set or empty (it holds the secret)",
        )
    ]
    store = build_store(cfg.storage, env={"MW_INFLUX_TOKEN": "t"})
    assert isinstance(store, InfluxStore) and store.flavor == "v2"
    store.close()
    emb = parse_config({**base, "storage": {"path": str(tmp_path / "x.duckdb")}})
    local = build_store(emb.storage)
    assert isinstance(local, EmbeddedStore)
    local.close()


def test_writer_keeps_accepted_rows_when_the_spool_fills_at_flush(tmp_path: Path) -> None:
    """Frames accepted while the spool had room, whose flush then finds it full, stay in memory
    unacknowledged and are spooled (then acknowledged) once the spool has room again."""

    async def scenario() -> tuple[Stats, list[int], Spool]:
        store = ListStore()
        store.failing = True
        spool = Spool(tmp_path / "s", max_bytes=1 << 14)
        stats = Stats()
        writer = ReadingWriter(store, stats, spool=spool, flush_interval_s=3600)
        while not spool.is_full:  # fill it directly
            spool.append(frame(0, 200))
        batch = spool.peek(max_rows=10**6)
        assert batch is not None
        spool.remove_through(batch.last_seq)  # empty again: room
        acked: list[int] = []
        assert writer.submit(frame(0, 200), on_stored=lambda: acked.append(1))
        spool.append(frame(0, 100_000))  # someone else fills it before the flush
        assert spool.is_full
        with pytest.raises(SpoolFullError):
            await writer.flush()
        assert acked == [] and writer.pending_rows == 200
        batch = spool.peek(max_rows=10**6)
        assert batch is not None
        spool.remove_through(batch.last_seq)  # drained
        await writer.flush()
        assert acked == [1] and writer.pending_rows == 0
        return stats, acked, spool

    stats, acked, spool = asyncio.run(scenario())
    assert spool.depth_rows == 200
    assert stats.snapshot()["spool_full_retries"] == 1


def test_a_backup_reads_pending_frames_and_line_protocol_alike(tmp_path: Path) -> None:
    """The spool of an InfluxDB backend holds line protocol (encoded once at the flush): a
    backup reads it back as readings, in order with frames spooled before."""
    from meterwatch.storage.line_protocol import decode_readings, encode_readings
    from meterwatch.storage.spool import read_pending

    spool = Spool(tmp_path / "spool")
    first = frame(0, 5)
    odd = frame(5, 4, meter="meter 2,=x")  # a meter id line protocol must escape
    odd["device_ts"] = odd["ts"] - pd.Timedelta(seconds=3)
    body = "\n".join(encode_readings(odd).lines).encode()
    spool.append(first)
    spool.append_encoded(body, len(odd))
    spool.close()
    back = read_pending(spool.file)
    assert back is not None and len(back) == 9
    assert list(back["meter_id"]) == ["M1"] * 5 + ["meter 2,=x"] * 4
    pd.testing.assert_series_equal(
        back["ts"], pd.concat([first["ts"], odd["ts"]], ignore_index=True)
    )
    decoded = decode_readings(body)
    for col in ("energy_import_kwh", "power_kw"):
        np.testing.assert_array_equal(decoded[col].to_numpy(), odd[col].to_numpy())
    assert (decoded["device_ts"] == odd["device_ts"].reset_index(drop=True)).all()
