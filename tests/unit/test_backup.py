"""Backup → restore of the embedded store's tables, the alert files and the spools' pending rows.

The whole round trip through the CLI with a service run is tests/e2e/test_backup_restore.py;
InfluxDB is tests/integration/test_backup_influx.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from meterwatch.alerts.backup import AlertPaths, copy_alert_state, restore_alert_state
from meterwatch.cli import main
from meterwatch.core.errors import AlertError, StorageError
from meterwatch.storage.backup import TABLE, backup, merge_pending, restore
from meterwatch.storage.embedded import EmbeddedStore
from meterwatch.storage.spool import Spool
from tests.support.records import (
    assert_tables_equal,
    embedded_tables,
    sample_readings,
    write_sample,
)


def test_every_table_round_trips_exactly_as_plain_parquet(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "a.duckdb")
    write_sample(store)
    store.close()
    before = embedded_tables(tmp_path / "a.duckdb")

    result = backup(tmp_path / "a.duckdb", tmp_path / "bk")
    assert result.tables == {name: len(df) for name, df in before.items()}
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["rows"] == len(before["readings"])
    assert manifest["first_ts"] == "2026-01-05T00:00:00Z"
    for name in before:
        table = pq.read_table(tmp_path / "bk" / TABLE[name].file)
        assert str(table.schema.field("ts").type) == "timestamp[us, tz=UTC]", name
    # every data version is kept, the manual edit with who and why
    versions = pq.read_table(tmp_path / "bk" / "validated_readings.parquet").to_pandas()
    assert sorted(versions["data_version"].unique()) == [1, 2, 3]
    assert versions.loc[versions["data_version"] == 3, "edited_by"].tolist() == ["li"]

    assert restore(tmp_path / "bk", tmp_path / "b.duckdb").tables == result.tables
    assert_tables_equal(embedded_tables(tmp_path / "b.duckdb"), before)


def test_restore_refuses_a_store_with_records_unless_forced(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "a.duckdb")
    write_sample(store)
    store.close()
    backup(tmp_path / "a.duckdb", tmp_path / "bk")
    other = EmbeddedStore(tmp_path / "b.duckdb")
    other.write_readings(sample_readings(3, seed=9))
    other.close()
    with pytest.raises(StorageError, match="already holds 9 readings.*--force"):
        restore(tmp_path / "bk", tmp_path / "b.duckdb")
    assert restore(tmp_path / "bk", tmp_path / "b.duckdb", force=True).rows == 72
    assert_tables_equal(
        embedded_tables(tmp_path / "b.duckdb"), embedded_tables(tmp_path / "a.duckdb")
    )
    with pytest.raises(StorageError, match="not a MeterWatch backup"):
        restore(tmp_path, tmp_path / "c.duckdb")
    with pytest.raises(StorageError, match="not empty"):
        backup(tmp_path / "a.duckdb", tmp_path / "bk")


def test_a_version_1_backup_still_restores(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "a.duckdb")
    store.write_readings(sample_readings(4))
    store.close()
    backup(tmp_path / "a.duckdb", tmp_path / "bk")
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    for name in ("validated_readings", "alert_events", "collector_health"):
        (tmp_path / "bk" / TABLE[name].file).unlink()
    v1 = {k: manifest[k] for k in ("format", "created_at", "source", "rows")} | {"version": 1}
    (tmp_path / "bk" / "manifest.json").write_text(json.dumps(v1))
    assert restore(tmp_path / "bk", tmp_path / "b.duckdb").tables == {"readings": 12}


def test_rows_waiting_in_a_spool_are_merged_and_win_over_the_stored_copy(tmp_path: Path) -> None:
    stored = sample_readings(4)
    store = EmbeddedStore(tmp_path / "a.duckdb")
    store.write_readings(stored)
    store.close()
    backup(tmp_path / "a.duckdb", tmp_path / "bk")
    # the spool holds a later reading of every meter and a newer copy of one stored reading
    later = sample_readings(6).iloc[[4, 5, 10, 11, 16, 17]]
    newer = stored.iloc[[0]].assign(energy_import_kwh=-1.0)
    spool = Spool(tmp_path / "spool")
    spool.append(later)
    spool.append(newer)
    spool.close()
    from meterwatch.storage.spool import SPOOL_FILE, read_pending

    pending = read_pending(tmp_path / "spool" / SPOOL_FILE)
    assert pending is not None and len(pending) == 7
    out = tmp_path / "merged.parquet"
    t = TABLE["readings"]
    assert merge_pending(t, tmp_path / "bk" / t.file, pending, out) == 12 + 6
    got = pd.read_parquet(out)
    key = (got["meter_id"] == newer["meter_id"].iloc[0]) & (got["ts"] == newer["ts"].iloc[0])
    assert got.loc[key, "energy_import_kwh"].tolist() == [-1.0]  # the later write wins
    assert got[["meter_id", "ts"]].duplicated().sum() == 0
    assert list(got["meter_id"]) == sorted(got["meter_id"])  # sorted by the key


def _alert_paths(root: Path) -> AlertPaths:
    state = root / "alerts-state"
    return AlertPaths(
        root / "alerts.jsonl", state, state / "audit.jsonl", root / "delivery" / "outbox.sqlite"
    )


def test_alert_files_copy_whole_lines_without_key_or_locks(tmp_path: Path) -> None:
    src = _alert_paths(tmp_path / "a")
    src.state_dir.mkdir(parents=True)
    src.feed.write_text('{"id": "a1"}\n{"id": "a2", "half')  # a line being written
    src.audit.write_text('{"seq": 1}\n')
    (src.state_dir / "silences.jsonl").write_text('{"id": "s1"}\n')
    (src.state_dir / "verify.json").write_text('{"clean_intervals": {"a1": 2}}')
    (src.state_dir / "audit.key").write_text("secret")
    (src.state_dir / "feed.lock").write_text("")
    import sqlite3

    src.outbox.parent.mkdir(parents=True)
    con = sqlite3.connect(src.outbox)
    con.execute("CREATE TABLE outbox (seq INTEGER, sink TEXT)")
    con.execute("INSERT INTO outbox VALUES (1, 'mqtt')")
    con.commit()
    con.close()

    done = copy_alert_state(src, tmp_path / "bk")
    assert sorted(done.files) == [
        "alerts/audit.jsonl",
        "alerts/delivery/outbox.sqlite",
        "alerts/feed.jsonl",
        "alerts/state/silences.jsonl",
        "alerts/state/verify.json",
    ]
    assert (tmp_path / "bk" / "alerts" / "feed.jsonl").read_text() == '{"id": "a1"}\n'
    assert done.audit == {"entries": 1, "checkpoints": 0, "last_checkpoint_seq": 0}

    dst = _alert_paths(tmp_path / "b")
    restored = restore_alert_state(tmp_path / "bk", dst)
    assert sorted(restored) == sorted(done.files)
    assert dst.audit.read_text() == '{"seq": 1}\n'
    assert (dst.state_dir / "verify.json").read_text() == '{"clean_intervals": {"a1": 2}}'
    assert not (dst.state_dir / "audit.key").exists()
    con = sqlite3.connect(dst.outbox)
    assert con.execute("SELECT * FROM outbox").fetchall() == [(1, "mqtt")]
    con.close()
    with pytest.raises(AlertError, match="alerts.jsonl.*audit.jsonl.*--force"):
        restore_alert_state(tmp_path / "bk", dst)
    assert restore_alert_state(tmp_path / "bk", dst, force=True)


def test_cli_backup_and_restore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # settings left at their relative defaults (var/...) land here

    def config(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "registry": {"path": str(tmp_path / "meters.csv")},
                    "storage": {"path": str(tmp_path / name / "store.duckdb")},
                    "alerts": {"feed": str(tmp_path / name / "alerts.jsonl")},
                }
            )
        )
        return path

    a, b = config("a"), config("b")
    store = EmbeddedStore(tmp_path / "a" / "store.duckdb")
    write_sample(store)
    store.close()
    (tmp_path / "a" / "alerts.jsonl").write_text('{"id": "x"}\n')
    runner = CliRunner()
    res = runner.invoke(main, ["backup", "--out", str(tmp_path / "bk"), "--config", str(a)])
    assert res.exit_code == 0, res.output
    assert "backed up 72 readings, 33 validated_readings" in " ".join(res.output.split())
    assert "the store file (no service running)" in " ".join(res.output.split())
    res = runner.invoke(main, ["restore", str(tmp_path / "bk"), "--config", str(b)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b" / "alerts.jsonl").read_text() == '{"id": "x"}\n'
    assert_tables_equal(
        embedded_tables(tmp_path / "b" / "store.duckdb"),
        embedded_tables(tmp_path / "a" / "store.duckdb"),
    )
    res = runner.invoke(main, ["restore", str(tmp_path / "bk"), "--config", str(b)])
    assert res.exit_code == 2 and "--force" in res.output


def test_service_applies_retention_on_a_schedule(tmp_path: Path) -> None:
    import asyncio

    from meterwatch.config import parse_config
    from meterwatch.service import Service
    from tests.support.sites import small_site_config

    old = sample_readings(10)  # 2026-01-05, more than 2 days before the service clock below
    old["ts"] = old["ts"] - pd.Timedelta(days=30)
    store = EmbeddedStore(tmp_path / "var" / "store.duckdb")
    store.write_readings(old)
    store.close()
    cfg = parse_config(
        small_site_config(tmp_path, storage={"retention_days": 2, "retention_interval": "1h"})
    )
    service = Service(cfg)
    summary = asyncio.run(service.run(2.5))
    assert summary.counters["retention_deleted"] == len(old)
    back = EmbeddedStore(tmp_path / "var" / "store.duckdb")
    try:
        kept = back.read_readings()
    finally:
        back.close()
    assert len(kept) > 0 and kept["ts"].min() >= pd.Timestamp("2026-01-05T00:00:00Z")
