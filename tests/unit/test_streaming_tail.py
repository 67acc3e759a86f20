"""Streaming equipment rules that need several readings alert with the reading that completes
the episode (analytics.streaming.StreamingDetection keeps each meter's last readings; the service runs it
on every stored batch), in the service process (``analytics.workers: 0``) as in a worker process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from meterwatch.analytics.registry import build_detectors
from meterwatch.config import parse_config
from meterwatch.core.schema import readings_from_records
from meterwatch.service import Service


@pytest.fixture(params=[0, 1], ids=["in-process", "worker"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    svc = _service(tmp_path, request.param)
    yield svc
    svc.c.analytics.close()
    svc.store.close()


def _service(tmp_path: Path, workers: int) -> Service:
    pd.DataFrame(
        {
            "meter_id": ["C1"],
            "role": ["customer"],
            "transformer_id": ["T1"],
            "customer_class": ["commercial"],
            "phases": [3],
            "nominal_voltage_v": [220.0],
            "rated_current_a": [10.0],
            "max_current_a": [60.0],
            "ct_ratio": [1.0],
            "tariff": [""],
            "last_calibration": ["2025-06-01"],
            "calibration_interval_days": [3650],
        }
    ).to_csv(tmp_path / "meters.csv", index=False)
    cfg = parse_config(
        {
            "registry": {"path": str(tmp_path / "meters.csv")},
            "mqtt": {"enabled": False},
            "storage": {"path": str(tmp_path / "s.duckdb")},
            "alerts": {"feed": str(tmp_path / "alerts.jsonl")},
            "analytics": {"workers": workers},
        }
    )
    return Service(cfg)


def _reading(i: int, unbalanced: bool) -> dict[str, object]:
    u3 = 200.0 if unbalanced else 221.0  # 200 V on L3: voltage unbalance well past 2 %
    return {
        "meter_id": "C1",
        "ts": pd.Timestamp("2026-02-02T08:00:00Z") + pd.Timedelta(minutes=15 * i),
        "energy_import_kwh": 100.0 + i,
        "power_kw": 4.0,
        "voltage_l1_v": 221.0,
        "voltage_l2_v": 220.0,
        "voltage_l3_v": u3,
        "current_l1_a": 6.0,
        "current_l2_a": 6.0,
        "current_l3_a": 6.0,
        "power_factor": 0.95,
        "frequency_hz": 50.0,
    }


def _open_types(service: Service) -> set[str]:
    return {a.type for a in service.alerts.alerts.values() if a.status == "open"}


def test_unbalance_opens_with_the_fourth_single_reading_batch(service: Service) -> None:
    streaming = build_detectors(None, ("streaming",))
    vu = [d for d in streaming if type(d).__name__ == "VoltageUnbalance"]
    assert vu and vu[0].min_readings == 4
    service.jobs.stream_detect(readings_from_records([_reading(0, False)]))
    for i in range(1, 4):
        service.jobs.stream_detect(readings_from_records([_reading(i, True)]))
        assert "voltage_unbalance" not in _open_types(service), f"opened after {i} readings"
    service.jobs.stream_detect(readings_from_records([_reading(4, True)]))
    assert "voltage_unbalance" in _open_types(service)
    engine = service.c.analytics.engine
    if engine is not None:  # in the service process: the kept tail is there to look at
        # The kept tail is bounded: min_readings - 1 readings per meter at most.
        assert engine.streaming.tail is not None and len(engine.streaming.tail) <= 3


def test_a_long_gap_starts_the_count_afresh(service: Service) -> None:
    for i in range(3):
        service.jobs.stream_detect(readings_from_records([_reading(i, True)]))
    # The 4th unbalanced reading comes a day later: not 4 consecutive readings.
    service.jobs.stream_detect(readings_from_records([_reading(96, True)]))
    assert "voltage_unbalance" not in _open_types(service)
