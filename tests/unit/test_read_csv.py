"""Readings CSV through Arrow (meterwatch.io): types found late, categorical ids, ns times."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from meterwatch import io
from meterwatch.core.errors import MeterWatchError
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


@pytest.mark.parametrize("block", [64, 97, 4096, 1 << 20])
@pytest.mark.parametrize("final_newline", [True, False])
def test_blocks_cut_anywhere_read_every_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int, final_newline: bool
) -> None:
    """Blocks are cut at line ends whatever their size (lines longer than a block, a last
    line without its break, a byte-order mark) and parsed in parallel: the frame is the file,
    in its order, as pandas reads it."""
    monkeypatch.setattr(io, "CSV_BLOCK_BYTES", block)
    rows = ["meter_id,ts,energy_import_kwh,power_kw"]
    rows += [
        f"{'LONG-' * (20 if i == 500 else 0)}M{i % 13},"
        f"2026-01-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z,{1000 + i / 7:.4f},"
        + ("" if i % 11 == 0 else f"{i % 5}.25")
        for i in range(2000)
    ]
    path = tmp_path / "r.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join(rows) + ("\n" if final_newline else "")).encode())
    got = io.read_readings_file(path)
    want = pd.read_csv(path, encoding="utf-8-sig")
    assert len(got) == 2000
    assert list(got["meter_id"].astype(str)) == list(want["meter_id"])
    assert list(got["ts"]) == list(pd.to_datetime(want["ts"], utc=True))
    pd.testing.assert_series_equal(
        got["energy_import_kwh"].astype(float), want["energy_import_kwh"], check_names=False
    )
    pd.testing.assert_series_equal(
        got["power_kw"].astype(float), want["power_kw"], check_names=False
    )


def test_header_only_and_empty_files(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("meter_id,ts,power_kw\n")
    assert len(io.read_readings_file(path)) == 0
    path.write_text("")
    with pytest.raises(io.MeterWatchError, match="r.csv: cannot read"):
        io.read_readings_file(path)


def test_parquet_ids_as_categories_and_times_in_ns(tmp_path: Path) -> None:
    """Parquet readings: text meter ids come as categories (each id once), times as ns UTC,
    values as written; ids stored as numbers become text ids, as before."""
    frame = pd.DataFrame(
        {
            "meter_id": ["A", "B", "A"],
            "ts": pd.to_datetime(["2026-01-01T00:15Z", "2026-01-01T00:15Z", "2026-01-01T00:30Z"]),
            "power_kw": [1.5, 2.0, None],
        }
    )
    frame["ts"] = frame["ts"].astype("datetime64[ms, UTC]")
    frame.to_parquet(tmp_path / "r.parquet", index=False)
    got = io.read_readings_file(tmp_path / "r.parquet")
    assert isinstance(got["meter_id"].dtype, pd.CategoricalDtype)
    assert got["meter_id"].astype(str).tolist() == ["A", "B", "A"]
    assert str(got["ts"].dtype) == TS_DTYPE
    assert got["ts"].tolist() == pd.to_datetime(frame["ts"]).tolist()
    assert got["power_kw"].tolist()[:2] == [1.5, 2.0] and pd.isna(got["power_kw"].iat[2])
    frame.assign(meter_id=[7, 8, 7]).to_parquet(tmp_path / "n.parquet", index=False)
    assert io.read_readings_file(tmp_path / "n.parquet")["meter_id"].tolist() == ["7", "8", "7"]


def test_whole_numbers_first_then_decimals_stay_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A register of whole kWh in the first block and decimals further down is read as
    numbers in one pass (not typed as integers, then read again as text)."""
    monkeypatch.setattr(io, "CSV_BLOCK_BYTES", 256)
    rows = ["meter_id,ts,energy_import_kwh"]
    rows += [f"M1,2026-01-01T00:{i:02d}:00Z,{1000 + i}" for i in range(30)]
    rows += ["M1,2026-01-01T01:00:00Z,1030.25"]
    path = tmp_path / "r.csv"
    path.write_text("\n".join(rows) + "\n")
    calls = []
    real = io._read_csv_blocks
    monkeypatch.setattr(
        io, "_read_csv_blocks", lambda p, t, *a: calls.append(set(t)) or real(p, t, *a)
    )
    df = io.read_readings_file(path)
    assert calls == [{"meter_id"}]  # one pass
    assert df["energy_import_kwh"].dtype == np.float64
    assert df["energy_import_kwh"].iat[-1] == 1030.25 and df["energy_import_kwh"].iat[0] == 1000


def _late_text_csv(path: Path, rows: int = 3000) -> Path:
    lines = ["meter_id,ts,power_kw,voltage_l1_v"]
    lines += [
        f"M{i % 7},2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z,{i}.5,230" for i in range(rows)
    ]
    lines += ["M1,2026-01-02T00:00:00Z,ERR,231"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_ahead_gives_what_a_read_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CSV parsed ahead (a column read again as text included) and a Parquet file (read by
    result() itself) come out as read_readings_file gives them, attributes included."""
    monkeypatch.setattr(io, "CSV_BLOCK_BYTES", 4096)
    path = _late_text_csv(tmp_path / "r.csv")
    want = io.read_readings_file(path)
    with io.ReadAhead(path) as ahead:
        got = ahead.result()
    pd.testing.assert_frame_equal(got, want)
    assert got.attrs["coerced"] == want.attrs["coerced"] == {"power_kw": 1}
    plain = want.copy()
    plain.attrs = {}  # the coerced-row positions are arrays: not for a Parquet file
    plain.to_parquet(tmp_path / "r.parquet", index=False)
    with io.ReadAhead(tmp_path / "r.parquet") as ahead:
        assert ahead._thread is None
        got = ahead.result()
    assert got["meter_id"].astype(str).tolist() == want["meter_id"].astype(str).tolist()
    assert got["ts"].tolist() == want["ts"].tolist()


def test_read_ahead_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "no_ts.csv").write_text("meter_id,power_kw\nA,1\n")
    with pytest.raises(MeterWatchError, match=r"no_ts\.csv: missing column\(s\) ts"):
        io.ReadAhead(tmp_path / "no_ts.csv").result()
    (tmp_path / "ragged.csv").write_text("meter_id,ts,power_kw\nA,2026-01-01T00:00:00Z,1,9,9\n")
    with pytest.raises(MeterWatchError, match=r"ragged\.csv: cannot read: .*"):
        io.ReadAhead(tmp_path / "ragged.csv").result()
    (tmp_path / "r.txt").write_text("x")
    with pytest.raises(MeterWatchError, match=r"r\.txt: unknown readings format '\.txt'"):
        io.ReadAhead(tmp_path / "r.txt").result()


def test_a_cancelled_read_ahead_stops_at_its_next_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled right after the first block is parsed, the read parses no more than the
    blocks already in flight, and result() says it was cancelled."""
    monkeypatch.setattr(io, "CSV_BLOCK_BYTES", 1024)
    path = _late_text_csv(tmp_path / "r.csv", rows=20_000)  # about 900 blocks
    parsed = threading.Semaphore(0)
    go = threading.Event()
    real = io._block_table

    def slow(table: object) -> object:
        parsed.release()
        go.wait(5)
        return real(table)

    monkeypatch.setattr(io, "_block_table", slow)
    ahead = io.ReadAhead(path)
    assert parsed.acquire(timeout=5)  # the first block is parsed and waits
    ahead._stop.set()
    go.set()
    ahead.cancel()
    blocks = 1
    while parsed.acquire(blocking=False):
        blocks += 1
    assert blocks <= 1 + 2 * (os.cpu_count() or 1)  # the first, then at most those in flight
    with pytest.raises(io.ReadCancelled):
        ahead.result()


def test_blocks_fill_the_columns_as_one_arrow_read_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks copied into the file's arrays one by one give the frame one Arrow read of the
    whole file gives: ids that first appear in later blocks, missing ids, values and times,
    a column that is not canonical (kept as Arrow gives it), and arrays that had to grow (the
    first block's long lines promised fewer rows than the file has)."""
    import pyarrow.csv as pacsv

    monkeypatch.setattr(io, "CSV_BLOCK_BYTES", 2048)
    lines = ["meter_id,ts,power_kw,collected_at,note,unit_id"]
    for i in range(4000):
        meter = f"LONG-{'x' * 120}-{i % 3}" if i < 15 else ("" if i % 97 == 0 else f"S{i % 11}")
        power = "" if i % 13 == 0 else f"{i}.25"
        seen = "" if i % 17 == 0 else f"2026-01-01T01:{i // 60 % 60:02d}:{i % 60:02d}Z"
        lines.append(
            f"{meter},2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z,{power},{seen},n{i % 5},{i}"
        )
    path = tmp_path / "r.csv"
    path.write_text("\n".join(lines) + "\n")
    grew = []
    real_grow = io._Columns._grow
    monkeypatch.setattr(io._Columns, "_grow", lambda self, n: grew.append(n) or real_grow(self, n))
    got = io.read_readings_file(path)
    assert grew  # the capacity the first block promised was too small
    whole = pacsv.read_csv(
        path, convert_options=pacsv.ConvertOptions(column_types=io._first_types({"meter_id"}))
    )
    want = io._as_readings(path, io._to_frame(io._block_table(whole)))
    assert list(got.columns) == list(want.columns)
    assert got["meter_id"].astype(str).tolist() == want["meter_id"].astype(str).tolist()
    assert "" in set(got["meter_id"].astype(str))  # an empty id is text, as Arrow reads it
    pd.testing.assert_frame_equal(got.drop(columns="meter_id"), want.drop(columns="meter_id"))
    assert got["power_kw"].isna().sum() == len(range(0, 4000, 13))
    assert got["collected_at"].isna().sum() == len(range(0, 4000, 17))


def test_values_come_from_arrow_buffers_as_arrow_converts_them() -> None:
    """Floats, integers and times, whole or sliced, with and without missing values."""
    import pyarrow as pa

    cases = [
        (pa.array([1.5, None, 3.0, None, 5.0] * 7, pa.float64()), np.nan),
        (pa.array([1, None, 3, 4, None] * 7, pa.int32()), -1),
        (pa.array([10, None, 30, 40, 50] * 7, pa.timestamp("ns", "UTC")), io.NO_TIME),
        (pa.array([1.0, 2.0, 3.0]), np.nan),
    ]
    for array, missing in cases:
        for part in (array, array.slice(3, 20), array.slice(9)):
            got = io._numpy_of(part, missing)
            want = (
                [missing if v is None else v for v in part.cast(pa.int64()).to_pylist()]
                if (pa.types.is_timestamp(part.type))
                else [missing if v is None else v for v in part.to_pylist()]
            )
            np.testing.assert_array_equal(got, np.array(want, dtype=got.dtype))


def test_a_read_ahead_imports_nothing_on_its_threads(tmp_path: Path) -> None:
    """The parse threads run beside the caller's imports: they import nothing themselves
    (two threads importing the same modules can wait on each other's import locks)."""
    import subprocess
    import sys

    path = _late_text_csv(tmp_path / "r.csv")
    code = (
        "import sys, meterwatch.io as io\n"
        "before = set(sys.modules)\n"
        "ahead = io.ReadAhead(sys.argv[1])\n"
        "started = set(sys.modules)\n"
        "ahead._thread.join()\n"
        "print(sorted(set(sys.modules) - started), 'pandas' in before)\n"
        "print(len(ahead.result()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines() == ["[] False", "3001"]


def test_a_time_that_is_not_iso_8601_is_named_with_its_row_and_line(tmp_path: Path) -> None:
    """One error line naming the file, the first bad value, its row and CSV line, and how
    many more there are; an empty time is a missing one, not an error."""
    path = tmp_path / "r.csv"
    path.write_text(
        "meter_id,ts,power_kw\nA,2026-01-01T00:00:00Z,1\nA,,2\nA,yesterday,3\nA,2026-13-45,4\n"
    )
    with pytest.raises(MeterWatchError) as err:
        io.read_readings_file(path)
    assert str(err.value) == (
        f"{path}: bad ts value 'yesterday' in row 3, line 4 (not an ISO 8601 time); 1 more such row"
    )
    frame = pd.DataFrame({"meter_id": ["A", "A"], "ts": ["2026-01-01T00:00:00Z", "noon"]})
    frame.to_parquet(tmp_path / "r.parquet", index=False)
    with pytest.raises(MeterWatchError, match=r"bad ts value 'noon' in row 2 \(not an ISO"):
        io.read_readings_file(tmp_path / "r.parquet")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity: Linux only")
def test_the_read_uses_the_cores_this_process_may_run_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process pinned to one core (a container's cpuset) counts one usable core, whatever
    the machine has, and the CSV read starts that many parsing threads."""
    import subprocess
    import sys

    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from meterwatch.core.cores import usable_cores; print(usable_cores())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "1"
    sizes: list[int] = []
    real = io.ThreadPoolExecutor
    monkeypatch.setattr(io, "usable_cores", lambda: 3)
    monkeypatch.setattr(io, "ThreadPoolExecutor", lambda n: sizes.append(n) or real(n))
    assert len(io.read_readings_file(_late_text_csv(tmp_path / "r.csv"))) == 3001
    assert sizes and set(sizes) == {3}
