"""The service writes validated readings, alert events and collector health to the store.

A short run (simulated fleet over real Modbus TCP, embedded store, clock at 2400x) with
validation every 6 h and health every hour of service time; then the store is compared with
what the service counted and reported: every alert change is stored once, validated intervals
cover the readings without overlap, and the last health snapshot matches the run's counters.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from meterwatch.config import parse_config
from meterwatch.service import Service
from meterwatch.storage.embedded import EmbeddedStore
from meterwatch.storage.measurements import WRITER_ROW
from tests.support.fleet import simulated_gateway
from tests.support.servers import free_port


def test_service_stores_validated_readings_alert_events_and_health(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "clock": {"start": "2026-01-05T00:00:00Z", "speed": 2400},
            "simulator": {
                "enabled": True,
                "seed": 3,
                "residential": 3,
                "commercial": 1,
                "industrial": 1,
                "transformers": 1,
                "modbus": {"host": "127.0.0.1", "port": free_port()},
                "anomalies": [{"type": "phase_break", "at": "2h", "duration": "2h"}],
            },
            "mqtt": {"enabled": False},
            "collector": {
                "modbus": {
                    "interval": "15m",
                    "gateways": [
                        simulated_gateway(),
                    ],
                }
            },
            "storage": {"path": str(tmp_path / "store.duckdb"), "health_interval": "1h"},
            "analytics": {"interval": "1h", "window": "2d", "validation_interval": "6h"},
            "alerts": {"feed": str(tmp_path / "alerts.jsonl")},
        }
    )
    seen: list[tuple[str, str]] = []

    def on_alert(event: str, alert: Any) -> None:
        seen.append((alert.id, event))

    service = Service(cfg, on_alert=on_alert)
    summary = asyncio.run(service.run(16))
    c = summary.counters
    assert (summary.service_end - summary.service_start).total_seconds() > 8 * 3600

    store = EmbeddedStore(cfg.storage.path)
    try:
        readings = store.read_readings(include_times=True)
        validated = store.read_validated_readings()
        every_version = store.read_validated_readings(all_versions=True)
        events = store.read_alert_events()
        health = store.read_collector_health()
    finally:
        store.close()

    # Collector time on every Modbus reading; Modbus meters have no clock of their own.
    assert readings["collected_at"].notna().all()
    assert (readings["collected_at"] >= readings["ts"]).all()
    assert readings["device_ts"].isna().all()

    # Alert events: exactly the changes the listeners saw, each stored once.
    assert ("phase_break" in summary.alerts_by_type) and seen
    assert sorted(zip(events["id"], events["event"], strict=True)) == sorted(seen)
    assert c["alert_events_stored"] == len(seen) and summary.extra["alert_events_pending"] == 0
    assert c.get("alert_events_store_errors", 0) == 0

    # Validated readings: scheduled runs plus the one at stop, disjoint windows, every row
    # counted; one 15-minute interval per meter and slot, none in the future.
    assert c["validation_runs"] >= 2 and c.get("validation_errors", 0) == 0
    assert summary.extra["validated_rows_written"] == c["validated_rows_written"]
    assert len(every_version) == c["validated_rows_written"] == len(validated)
    assert every_version["data_version"].nunique() == c["validation_runs"]
    assert set(validated["meter_id"]) == set(readings["meter_id"])
    assert (validated["ts"] - validated["interval_start"] == pd.Timedelta(minutes=15)).all()
    assert validated["ts"].max() <= summary.service_end
    per_meter = validated.groupby("meter_id")["ts"].agg(["min", "max", "count"])
    slots = (per_meter["max"] - per_meter["min"]) / pd.Timedelta(minutes=15) + 1
    np.testing.assert_array_equal(per_meter["count"], slots)  # no gap between runs
    # Polls the loaded machine skipped are estimated (both boundary reads actual), never
    # left missing; each meter's window ends on a boundary it can interpolate.
    missing = validated[validated["quality"] == "missing"]
    assert missing.empty, missing[["meter_id", "interval_start", "reasons", "data_version"]]
    assert (validated["quality"] == "actual").mean() > 0.75

    # Health: a snapshot per hour of service time; the last one (at stop) matches the run.
    assert c["health_rows_written"] == len(health) and c.get("health_write_errors", 0) == 0
    last = health[health["ts"] == health["ts"].max()].set_index("gateway")
    gw = last.loc["sim"]
    assert gw["meters"] == len(service.registry)
    assert gw["requests"] == c["meter_requests"] and gw["errors"] == c.get("meter_errors", 0)
    assert gw["polls"] == c["poll_cycles"]
    assert last.loc[WRITER_ROW, "readings_stored"] == c["readings_stored"] == len(readings)
    assert health["ts"].nunique() >= 6


class FixedClock:
    """A service clock the test moves by hand."""

    def __init__(self, now: str) -> None:
        self.t = pd.Timestamp(now).to_pydatetime()

    def now(self) -> Any:
        return self.t


def test_validation_window_never_cuts_a_gap_and_leaves_it_missing(tmp_path: Path) -> None:
    """A poll gap straddling the run's end is left for the next run, which estimates it.

    Every meter is read every 15 min but B, which misses its 10:45 and 11:00 polls (reads 10:30 and
    11:10, 40 min apart > 1.5 intervals). At 11:45, with reads stored up to 11:10, every meter
    has a read at or after 11:00, yet 11:00 is no boundary B can interpolate: B's intervals must stop
    at 10:30 (the others' at 11:00) instead of writing 10:30-11:00 as ``missing``. The next run, with B read regularly again, estimates them.
    """
    cfg = parse_config(
        {
            "clock": {"start": "2026-01-05T00:00:00Z"},
            "simulator": {
                "enabled": True,
                "seed": 1,
                "residential": 2,
                "commercial": 0,
                "industrial": 0,
                "transformers": 1,
                "modbus": {"host": "127.0.0.1", "port": free_port()},
            },
            "mqtt": {"enabled": False},
            "storage": {"path": str(tmp_path / "store.duckdb")},
            "analytics": {"validation_interval": "6h"},
            "alerts": {"feed": str(tmp_path / "alerts.jsonl")},
        }
    )
    service = Service(cfg)
    *others, b = sorted(service.registry["meter_id"])
    regular = pd.date_range("2026-01-05T06:00Z", "2026-01-05T13:00Z", freq="15min")
    skipped = (regular >= "2026-01-05T10:45Z") & (regular <= "2026-01-05T11:00Z")
    b_ts = sorted([*regular[~skipped], pd.Timestamp("2026-01-05T11:10Z")])
    rows = [(m, t) for m in others for t in regular] + [(b, t) for t in b_ts]
    frame = pd.DataFrame(rows, columns=["meter_id", "ts"])
    frame["energy_import_kwh"] = frame.groupby("meter_id").cumcount() * 0.1 + 100.0
    try:
        service.store.write_readings(frame[frame["ts"] <= pd.Timestamp("2026-01-05T11:10Z")])
        service.c.clock = FixedClock("2026-01-05T11:45Z")  # type: ignore[assignment]
        first = asyncio.run(service.jobs.validate())
        got = service.store.read_validated_readings()
        assert first == len(got) > 0
        assert (got["quality"] != "missing").all(), got[got["quality"] == "missing"]
        last = got.groupby("meter_id")["interval_start"].max()
        assert last[b] == pd.Timestamp("2026-01-05T10:15Z")  # B: up to its read on 10:30
        assert (last.drop(b) == pd.Timestamp("2026-01-05T10:45Z")).all()  # read on 11:00

        service.store.write_readings(frame[frame["ts"] > pd.Timestamp("2026-01-05T11:10Z")])
        service.c.clock = FixedClock("2026-01-05T13:00Z")  # type: ignore[assignment]
        asyncio.run(service.jobs.validate())
        got = service.store.read_validated_readings().set_index(["meter_id", "interval_start"])
        gap = got.loc[
            [(b, pd.Timestamp(f"2026-01-05T{hm}Z")) for hm in ("10:30", "10:45", "11:00")]
        ]
        assert (gap["quality"] == "estimated").all(), gap
        assert (got["quality"] != "missing").all()
    finally:
        service.store.close()
