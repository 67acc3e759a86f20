"""Which state a demo rerun sets aside, and when it leaves everything where it is."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from meterwatch.alerts.manager import record_clock
from meterwatch.config import parse_config
from meterwatch.demo import set_aside_previous_run
from meterwatch.storage.embedded import EmbeddedStore
from tests.support.records import T0, sample_readings
from tests.support.sites import small_site_config


def demo(root: Path, **override: dict[str, object]):  # type: ignore[no-untyped-def]
    return parse_config(small_site_config(root, **override))


def previous_run(root: Path, start: pd.Timestamp = T0) -> None:
    """A store with readings from ``start`` and the alert state of a stopped service."""
    store = EmbeddedStore(root / "var" / "store.duckdb")
    store.write_readings(sample_readings(8, start=start))
    store.close()
    (root / "var" / "alerts.jsonl").write_text('{"id": "a1"}\n')
    (root / "var" / "alerts-state").mkdir(exist_ok=True)
    record_clock(
        root / "var" / "alerts-state",
        (start + pd.Timedelta(hours=2)).to_pydatetime(),
        speed=3600,
        simulated=True,
        running=False,
    )


def test_a_rerun_moves_the_previous_run_aside_whole(tmp_path: Path) -> None:
    previous_run(tmp_path)
    said = set_aside_previous_run(demo(tmp_path), now=datetime(2026, 12, 1, 9, tzinfo=UTC))
    assert said is not None and "fresh demo store" in said and "2026-01-05T02:00Z" in said
    kept = tmp_path / "var" / "previous-runs" / "20261201T090000Z"
    assert (kept / "store.duckdb").exists() and (kept / "alerts.jsonl").exists()
    assert (kept / "alerts-state" / "clock.json").exists()
    assert not (tmp_path / "var" / "store.duckdb").exists()
    assert not (tmp_path / "var" / "alerts.jsonl").exists()
    assert set_aside_previous_run(demo(tmp_path)) is None  # nothing left to replay into


def test_nothing_moves_without_a_replay_or_outside_the_demo(tmp_path: Path) -> None:
    previous_run(tmp_path, start=T0 - pd.Timedelta(days=3))  # ended before clock.start
    assert set_aside_previous_run(demo(tmp_path)) is None
    previous_run(tmp_path)
    real_clock = {"clock": {"start": None, "speed": 1}}
    assert set_aside_previous_run(demo(tmp_path, **real_clock)) is None
    no_simulator = {"simulator": {"enabled": False}, "registry": {"path": "meters.csv"}}
    no_simulator["collector"] = {"modbus": {"gateways": []}}
    assert set_aside_previous_run(demo(tmp_path, **no_simulator)) is None
    assert (tmp_path / "var" / "store.duckdb").exists()
    assert not (tmp_path / "var" / "previous-runs").exists()


def test_the_files_of_a_running_service_are_never_moved(tmp_path: Path) -> None:
    previous_run(tmp_path)
    record_clock(  # the service writes this every few seconds while it runs
        tmp_path / "var" / "alerts-state", T0.to_pydatetime(), speed=3600, simulated=True,
        running=True,
    )  # fmt: skip
    assert set_aside_previous_run(demo(tmp_path)) is None
    record_clock(
        tmp_path / "var" / "alerts-state", T0.to_pydatetime(), speed=3600, simulated=True,
        running=False,
    )  # fmt: skip
    held = EmbeddedStore(tmp_path / "var" / "store.duckdb")  # the store open elsewhere
    try:
        assert set_aside_previous_run(demo(tmp_path)) is None
    finally:
        held.close()
    assert (tmp_path / "var" / "store.duckdb").exists()
    assert set_aside_previous_run(demo(tmp_path)) is not None  # once it stopped
