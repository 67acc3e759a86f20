"""The window build's memory (issue 14): a consumed frame is freed column by column, the
phase quantities are one 3 x meters x cells array whose planes are the window's values, the
Parquet reader reads a few columns at a time, and Arrow allocates from numpy's heap."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from meterwatch import io
from meterwatch.analytics.window import NO_TIME, Window, build_window
from meterwatch.core.schema import CURRENT_COLUMNS, VOLTAGE_COLUMNS


def fleet(
    shuffle: bool, duplicate: bool = False, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Four meters (one single-phase) x 96 quarter hours with every quantity, a few reads
    missing; ``shuffle``: rows out of order; ``duplicate``: one (meter, ts) twice."""
    rng = np.random.default_rng(seed)
    ids = ["M1", "M2", "M3", "M4"]
    ts = pd.date_range("2026-03-01 00:15", periods=96, freq="15min", tz="UTC")
    frame = pd.DataFrame(
        {
            "meter_id": np.repeat(ids, len(ts)),
            "ts": np.tile(ts, len(ids)),
            "energy_import_kwh": np.tile(np.arange(len(ts)) * 0.25, len(ids)) + 1000.0,
            "power_kw": rng.uniform(0, 3, len(ids) * len(ts)),
            **{c: rng.normal(230, 2, len(ids) * len(ts)) for c in VOLTAGE_COLUMNS},
            **{c: rng.uniform(0, 5, len(ids) * len(ts)) for c in CURRENT_COLUMNS},
        }
    )
    single = frame["meter_id"] == "M4"
    for c in (*VOLTAGE_COLUMNS[1:], *CURRENT_COLUMNS[1:]):
        frame.loc[single, c] = np.nan
    frame = frame.drop(index=[5, 100, 250]).reset_index(drop=True)
    if duplicate:
        frame = pd.concat([frame, frame.iloc[[7]]], ignore_index=True)
    if shuffle:
        frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    reg = pd.DataFrame({"meter_id": ids, "phases": [3, 3, 3, 1], "transformer_id": "T1"})
    return frame, reg


def same_window(a: Window, b: Window) -> None:
    np.testing.assert_array_equal(a.t, b.t)
    assert a.values.keys() == b.values.keys()
    for c in a.values:
        np.testing.assert_array_equal(a.values[c], b.values[c])
    for kind in ("u", "i"):
        np.testing.assert_array_equal(a.phase_values(kind), b.phase_values(kind))


@pytest.mark.parametrize(("shuffle", "duplicate"), [(False, False), (True, False), (True, True)])
def test_a_consumed_frame_is_emptied_and_gives_the_same_window(
    shuffle: bool, duplicate: bool
) -> None:
    """In order (the dense path), shuffled (values scattered through the sort order) and with
    a duplicate (collapsed): the window of a consumed frame equals the one of a kept frame,
    and the consumed frame holds no column afterwards (their memory went to the window)."""
    frame, reg = fleet(shuffle, duplicate)
    kept = build_window(frame.copy(deep=True), reg)
    consumed = build_window(frame, reg, consume=True)
    assert list(frame.columns) == []
    same_window(kept, consumed)
    for a, b in zip(consumed.dq.exact_duplicates, kept.dq.exact_duplicates, strict=True):
        np.testing.assert_array_equal(a, b)
    assert kept.dq.exact_duplicates[0].size == int(duplicate)


def test_phase_values_are_the_window_planes_without_a_copy() -> None:
    """The voltages and currents are one 3 x meters x cells array each, and the window's
    per-phase values are its planes: the phase rules read it without stacking a copy."""
    frame, reg = fleet(shuffle=True)
    w = build_window(frame, reg)
    for kind, cols in (("u", VOLTAGE_COLUMNS), ("i", CURRENT_COLUMNS)):
        stack = w.phase_values(kind)
        assert stack.shape == (3, w.n_meters, w.n_cells)
        assert stack is w.stacks[kind]
        for k, c in enumerate(cols):
            assert np.shares_memory(w.q(c), stack[k])
            np.testing.assert_array_equal(w.q(c), stack[k])


def test_a_value_on_a_phase_the_meter_lacks_is_nan_for_the_rules_only() -> None:
    """A single-phase meter reporting an L2 voltage: the phase rules see NaN there (the
    registry says the phase is absent), the window's own L2 values keep the reading."""
    frame, reg = fleet(shuffle=False)
    frame.loc[frame["meter_id"] == "M4", "voltage_l2_v"] = 7.0
    w = build_window(frame, reg)
    m4 = list(w.ids).index("M4")
    u = w.phase_values("u")
    assert not np.shares_memory(u, w.q("voltage_l2_v"))
    assert np.isnan(u[1, m4]).all() and np.isnan(u[2, m4]).all()
    read = w.t[m4] != NO_TIME
    assert (w.q("voltage_l2_v")[m4][read] == 7.0).all()
    np.testing.assert_array_equal(u[0], w.q("voltage_l1_v"))


@pytest.mark.parametrize("at_once", [1, 3, 100])
def test_parquet_read_a_few_columns_at_a_time_equals_the_whole_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at_once: int
) -> None:
    frame, _ = fleet(shuffle=True)
    path = tmp_path / "r.parquet"
    frame.to_parquet(path, index=False, row_group_size=100)  # several row groups
    monkeypatch.setattr(io, "PARQUET_COLUMNS_AT_ONCE", at_once)
    got = io.read_readings_file(path)
    assert got["meter_id"].astype(str).tolist() == frame["meter_id"].tolist()
    assert got["ts"].tolist() == frame["ts"].tolist()
    values = [c for c in frame.columns if c not in ("meter_id", "ts")]
    pd.testing.assert_frame_equal(got[values], frame[values])


def test_parquet_with_an_index_column_reads_it_as_the_index(tmp_path: Path) -> None:
    """A file written with its index (pandas metadata names an index column) is read whole:
    the index is not taken for a data column."""
    frame, _ = fleet(shuffle=False)
    frame.index = pd.Index(np.arange(len(frame)) * 3, name="row")
    frame.to_parquet(tmp_path / "r.parquet")
    got = io.read_readings_file(tmp_path / "r.parquet")
    assert "row" not in got.columns and len(got) == len(frame)
    assert got["power_kw"].tolist() == frame["power_kw"].tolist()


@pytest.mark.parametrize(("env", "backend"), [(None, "system"), ("mimalloc", "mimalloc")])
def test_arrow_allocates_from_the_system_heap_unless_told_otherwise(
    env: str | None, backend: str
) -> None:
    """Importing meterwatch makes Arrow allocate from the C heap numpy uses (freed read
    buffers are then numpy's to reuse); a pool chosen in the environment is kept."""
    environ = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if env is not None:
        environ["ARROW_DEFAULT_MEMORY_POOL"] = env
    code = (
        "import meterwatch, pyarrow as pa, pyarrow.parquet;"
        "print(pa.default_memory_pool().backend_name)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == backend
