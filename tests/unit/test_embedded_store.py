"""Embedded DuckDB store: round trip by meter and time range, duplicates harmless, durable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from meterwatch.core.schema import READING_COLUMNS, readings_from_records
from meterwatch.storage.embedded import EmbeddedStore


def _frame(n_meters: int = 3, n: int = 10) -> pd.DataFrame:
    ts = pd.date_range("2026-01-05", periods=n, freq="15min", tz="UTC")
    rows = []
    for m in range(n_meters):
        for i, t in enumerate(ts):
            rows.append(
                {
                    "meter_id": f"M{m}",
                    "ts": t,
                    "energy_import_kwh": 100.0 + m + i * 0.25,
                    "voltage_l1_v": 230.1 + i,
                    "power_kw": -1.5 if i % 2 else 2.25,
                }
            )
    return pd.DataFrame(rows)


def test_round_trip_and_ranges(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "s.duckdb")
    df = _frame()
    assert store.write_readings(df) == 30
    out = store.read_readings()
    assert list(out.columns) == list(READING_COLUMNS)
    assert len(out) == 30
    assert out["ts"].dtype == "datetime64[ns, UTC]"
    np.testing.assert_array_equal(
        out.loc[out.meter_id == "M1", "energy_import_kwh"], 101.0 + np.arange(10) * 0.25
    )
    assert out["voltage_l2_v"].isna().all()
    one = store.read_readings(
        ["M2"], start=pd.Timestamp("2026-01-05T01:00Z"), end=pd.Timestamp("2026-01-05T02:00Z")
    )
    assert list(one["ts"].dt.strftime("%H:%M")) == ["01:00", "01:15", "01:30", "01:45"]
    assert set(one["meter_id"]) == {"M2"}


def test_duplicate_write_is_harmless(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "s.duckdb")
    df = _frame()
    store.write_readings(df)
    assert store.write_readings(df.iloc[:5]) == 0  # a replay stores nothing twice
    assert store.count_rows() == (30, 30)
    assert store.duplicates == 5 and store.conflicts == 0
    assert len(store.read_readings()) == 30


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    store = EmbeddedStore(path)
    store.write_readings(_frame())
    store.close()
    again = EmbeddedStore(path)
    assert len(again.read_readings()) == 30


def test_retention(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "s.duckdb", retention_days=1)
    store.write_readings(_frame(n=200))
    deleted = store.apply_retention(pd.Timestamp("2026-01-07T00:00Z"))
    left = store.read_readings()
    assert deleted == len(_frame(n=200)) - len(left)
    assert left["ts"].min() >= pd.Timestamp("2026-01-06T00:00Z")


def test_memory_limit_is_applied_and_checked(tmp_path) -> None:
    from meterwatch.config import StorageConfig
    from meterwatch.core.errors import ConfigError

    store = EmbeddedStore(tmp_path / "m.duckdb", memory_limit="256MB")
    try:
        (limit,) = store._con.execute("SELECT current_setting('memory_limit')").fetchone()
        assert limit.endswith("MiB") and float(limit.split()[0]) < 300
    finally:
        store.close()
    assert StorageConfig().memory_limit == "1GB"
    try:
        StorageConfig(memory_limit="lots")
    except (ValueError, ConfigError) as exc:
        assert "memory_limit" in str(exc)
    else:
        raise AssertionError("a bad memory_limit was accepted")


def test_redelivered_reading_stored_once_and_a_conflict_kept_apart(tmp_path: Path) -> None:
    """Same meter and ts again: identical values are skipped, different ones go to
    reading_conflicts (counted), never over the stored reading."""
    store = EmbeddedStore(tmp_path / "s.duckdb")
    first = readings_from_records(
        [
            {"meter_id": "M1", "ts": "2026-01-05T00:15:00Z", "power_kw": 1.5},
            {"meter_id": "M2", "ts": "2026-01-05T00:15:00Z", "power_kw": 2.0},
        ]
    )
    assert store.write_readings(first) == 2
    again = readings_from_records(
        [
            {"meter_id": "M1", "ts": "2026-01-05T00:15:00Z", "power_kw": 1.5},  # redelivery
            {"meter_id": "M2", "ts": "2026-01-05T00:15:00Z", "power_kw": 9.9},  # conflict
            {"meter_id": "M3", "ts": "2026-01-05T00:15:00Z", "power_kw": 3.0},  # new
            {"meter_id": "M3", "ts": "2026-01-05T00:15:00Z", "power_kw": 3.0},  # repeat in batch
            {"meter_id": "M3", "ts": "2026-01-05T00:15:00Z", "power_kw": 3.1},  # conflict in batch
        ]
    )
    assert store.write_readings(again) == 1
    assert store.count_rows() == (3, 3)
    got = store.read_readings().set_index("meter_id")["power_kw"].to_dict()
    assert got == {"M1": 1.5, "M2": 2.0, "M3": 3.0}
    conflicts = store.read_conflicts()
    assert sorted(zip(conflicts["meter_id"], conflicts["power_kw"], strict=True)) == [
        ("M2", 9.9),
        ("M3", 3.1),
    ]
    assert (store.duplicates, store.conflicts) == (2, 2)
    store.close()
