"""Streaming equipment rules that need several readings alert with the reading that completes
the episode (analytics.streaming.StreamingDetection keeps each meter's last readings; the service runs it
on every stored batch), in the service process (``analytics.workers: 0``) as in a worker process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meterwatch.analytics.registry import build_detectors
from meterwatch.config import parse_config
from meterwatch.core.schema import readings_from_records
from meterwatch.service import Service
from tests.support.three_phase import METERS, reading


@pytest.fixture(params=[0, 1], ids=["in-process", "worker"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    svc = _service(tmp_path, request.param)
    yield svc
    svc.c.analytics.close()
    svc.store.close()


def _service(tmp_path: Path, workers: int) -> Service:
    METERS[METERS["meter_id"] == "C1"].to_csv(tmp_path / "meters.csv", index=False)
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
    return reading("C1", i, 200.0 if unbalanced else 221.0)  # 200 V on L3: unbalance > 2 %


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
