"""Readings CSV through Arrow (meterwatch.io): types found late, categorical ids, ns times."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from meterwatch import io
from meterwatch.core.schema import TS_DTYPE


def test_text_after_the_first_block_is_counted_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arrow types a column from its first block; "ERR" further down a number column makes
    the column be read again as text, and the bad cell is counted like any non-number."""
    monkeypatch.setattr(io, "CSV_BLOCK_BYTES", 4096)
    rows = ["meter_id,ts,power_kw,voltage_l1_v"]
    rows += [
        f"M{i % 7},2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z,{i}.5,230" for i in range(3000)
    ]
    rows += ["M1,2026-01-02T00:00:00Z,ERR,231"]
    path = tmp_path / "r.csv"
    path.write_text("\n".join(rows) + "\n")
    df = io.read_readings_file(path)
    assert len(df) == 3001
    assert df.attrs["coerced"] == {"power_kw": 1}
    assert df["power_kw"].isna().sum() == 1 and df["voltage_l1_v"].notna().all()
    assert isinstance(df["meter_id"].dtype, pd.CategoricalDtype)
    assert sorted(df["meter_id"].unique()) == [f"M{k}" for k in range(7)]
    assert str(df["ts"].dtype) == TS_DTYPE
    assert df["ts"].iat[-1] == pd.Timestamp("2026-01-02T00:00:00Z")


def test_naive_and_offset_times_are_utc(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("meter_id,ts,power_kw\nA,2026-01-01 00:15:00,1\nA,2026-01-01 00:30:00,2\n")
    assert list(io.read_readings_file(path)["ts"]) == [
        pd.Timestamp("2026-01-01T00:15Z"),
        pd.Timestamp("2026-01-01T00:30Z"),
    ]
    path.write_text("meter_id,ts,power_kw\nA,2026-01-01T01:15:00+01:00,1\n")
    assert io.read_readings_file(path)["ts"].iat[0] == pd.Timestamp("2026-01-01T00:15Z")
