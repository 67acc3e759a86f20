"""Backup → restore of the embedded store and alert files, through the library and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from meterwatch.cli import main
from meterwatch.core.errors import StorageError
from meterwatch.core.schema import READING_FIELDS, normalize_readings
from meterwatch.storage.backup import backup, restore
from meterwatch.storage.embedded import EmbeddedStore


def readings(n_meters: int = 5, n: int = 200, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2026-01-05T00:00:00Z")
    ts = t0 + pd.to_timedelta(np.arange(n) * 900, "s")
    frames = []
    for m in range(n_meters):
        vals = rng.normal(100, 30, (n, len(READING_FIELDS)))
        vals[rng.random((n, len(READING_FIELDS))) < 0.2] = np.nan  # unreported quantities
        df = pd.DataFrame(vals, columns=list(READING_FIELDS))
        df.insert(0, "ts", ts + pd.Timedelta(microseconds=m))  # sub-second precision kept
        df.insert(0, "meter_id", f"M'{m}, x")  # quoting-hostile ids
        frames.append(df)
    return normalize_readings(pd.concat(frames, ignore_index=True))


def test_round_trip_is_exact_and_files_are_plain_parquet(tmp_path: Path) -> None:
    src = tmp_path / "a.duckdb"
    df = readings()
    store = EmbeddedStore(src)
    store.write_readings(df)
    store.write_readings(df.iloc[:50])  # a replayed batch: backed up once
    store.close()
    feed = tmp_path / "alerts.jsonl"
    feed.write_text('{"id": "a1", "type": "phase_break"}\n')
    state = tmp_path / "alerts-state"
    state.mkdir()
    (state / "audit.jsonl").write_text("{}\n")
    (state / "audit.key").write_text("secret")
    (state / "feed.lock").write_text("")

    result = backup(src, tmp_path / "bk", alert_feed=feed, alert_state_dir=state)
    assert result.rows == len(df) and result.alert_files == 2
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    assert manifest["rows"] == len(df)
    table = pq.read_table(tmp_path / "bk" / "readings.parquet")
    assert str(table.schema.field("ts").type) == "timestamp[us, tz=UTC]"
    assert not (tmp_path / "bk" / "alerts" / "state" / "audit.key").exists()
    assert not (tmp_path / "bk" / "alerts" / "state" / "feed.lock").exists()

    dst = tmp_path / "b.duckdb"
    feed2, state2 = tmp_path / "r" / "alerts.jsonl", tmp_path / "r" / "state"
    out = restore(tmp_path / "bk", dst, alert_feed=feed2, alert_state_dir=state2)
    assert out.rows == len(df)
    back = EmbeddedStore(dst)
    try:
        got = back.read_readings()
        assert back.count_rows() == (len(df), len(df))
    finally:
        back.close()
    expected = df.sort_values(["meter_id", "ts"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)
    assert feed2.read_text() == feed.read_text()
    assert (state2 / "audit.jsonl").read_text() == "{}\n"


def test_restore_refuses_a_non_empty_store_unless_forced(tmp_path: Path) -> None:
    src = tmp_path / "a.duckdb"
    store = EmbeddedStore(src)
    store.write_readings(readings(2, 10))
    store.close()
    backup(src, tmp_path / "bk")
    other = EmbeddedStore(tmp_path / "b.duckdb")
    other.write_readings(readings(1, 3, seed=9))
    other.close()
    with pytest.raises(StorageError, match="already holds 3 readings.*--force"):
        restore(tmp_path / "bk", tmp_path / "b.duckdb")
    assert restore(tmp_path / "bk", tmp_path / "b.duckdb", force=True).rows == 20
    with pytest.raises(StorageError, match="not a MeterWatch backup"):
        restore(tmp_path, tmp_path / "c.duckdb")
    with pytest.raises(StorageError, match="not empty"):
        backup(src, tmp_path / "bk")


def test_cli_backup_and_restore(tmp_path: Path) -> None:
    def config(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "registry": {"path": str(tmp_path / "meters.csv")},
                    "storage": {"path": str(tmp_path / f"{name}.duckdb")},
                    "alerts": {"feed": str(tmp_path / f"{name}-alerts.jsonl")},
                }
            )
        )
        return path

    a, b = config("a"), config("b")
    store = EmbeddedStore(tmp_path / "a.duckdb")
    store.write_readings(readings(3, 40))
    store.close()
    (tmp_path / "a-alerts.jsonl").write_text('{"id": "x"}\n')
    runner = CliRunner()
    res = runner.invoke(main, ["backup", "--out", str(tmp_path / "bk"), "--config", str(a)])
    assert res.exit_code == 0, res.output
    assert "backed up 120 readings" in res.output
    res = runner.invoke(main, ["restore", str(tmp_path / "bk"), "--config", str(b)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b-alerts.jsonl").read_text() == '{"id": "x"}\n'
    res = runner.invoke(main, ["restore", str(tmp_path / "bk"), "--config", str(b)])
    assert res.exit_code == 2 and "--force" in res.output


def test_service_applies_retention_on_a_schedule(tmp_path: Path) -> None:
    import asyncio

    from meterwatch.config import parse_config
    from meterwatch.service import Service
    from tests.support.servers import free_port

    old = readings(2, 10)  # 2026-01-05, more than 2 days before the service clock below
    old["ts"] = old["ts"] - pd.Timedelta(days=30)
    store = EmbeddedStore(tmp_path / "s.duckdb")
    store.write_readings(old)
    store.close()
    cfg = parse_config(
        {
            "clock": {"start": "2026-01-05T00:00:00Z", "speed": 3600},
            "simulator": {
                "enabled": True,
                "residential": 2,
                "commercial": 1,
                "industrial": 0,
                "transformers": 1,
                "modbus": {"port": free_port()},
            },
            "mqtt": {"enabled": False},
            "collector": {
                "modbus": {
                    "gateways": [{"name": "sim", "host": "127.0.0.1", "devices": "simulator"}]
                }
            },
            "storage": {
                "path": str(tmp_path / "s.duckdb"),
                "retention_days": 2,
                "retention_interval": "1h",
            },
            "alerts": {"feed": str(tmp_path / "alerts.jsonl")},
        }
    )
    service = Service(cfg)
    summary = asyncio.run(service.run(2.5))
    assert summary.counters["retention_deleted"] == len(old)
    back = EmbeddedStore(tmp_path / "s.duckdb")
    try:
        kept = back.read_readings()
    finally:
        back.close()
    assert len(kept) > 0 and kept["ts"].min() >= pd.Timestamp("2026-01-05T00:00:00Z")
