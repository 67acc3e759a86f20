"""Meter registry checks (contracts §2) and the simulated clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from meterwatch.core.clock import Clock
from meterwatch.core.errors import RegistryError
from meterwatch.core.registry import REGISTRY_COLUMNS, check_registry, load_registry

GOOD = {
    "meter_id": ["M1", "T1"],
    "role": ["customer", "transformer"],
    "transformer_id": ["TA01", "TA01"],
    "customer_class": ["residential", ""],
    "phases": [1, 3],
    "nominal_voltage_v": [220, 220],
    "rated_current_a": [5, 1.5],
    "max_current_a": [60, 6],
    "ct_ratio": [1, 400],
    "tariff": ["tou-cn", "tou-cn"],
    "last_calibration": ["2025-06-01", "2025-06-01"],
    "calibration_interval_days": [1825, 1825],
    "installer": ["a", "b"],  # unknown extra column: kept
}


def test_good_registry_is_normalised_and_keeps_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "meters.csv"
    pd.DataFrame(GOOD).to_csv(path, index=False)
    reg = load_registry(path)
    assert list(reg.columns[: len(REGISTRY_COLUMNS)]) == list(REGISTRY_COLUMNS)
    assert reg["installer"].tolist() == ["a", "b"]
    assert reg["ct_ratio"].tolist() == [1.0, 400.0]
    assert reg["last_calibration"].dtype.kind == "M"


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("role", "feeder", "row 1 (M1): role='feeder', expected customer or transformer"),
        ("phases", 2, "row 1 (M1): phases=2, expected 1 or 3"),
        ("ct_ratio", 0, "row 1 (M1): ct_ratio=0, expected a number > 0"),
        ("customer_class", "farm", "customer_class='farm'"),
        ("last_calibration", "soon", "last_calibration='soon', expected an ISO date"),
        ("meter_id", "T1", "duplicate"),
    ],
)
def test_bad_values_name_row_column_and_value(column: str, value: object, expected: str) -> None:
    data = {k: list(v) for k, v in GOOD.items()}
    data[column][0] = value
    with pytest.raises(RegistryError, match="meters.csv") as info:
        check_registry(pd.DataFrame(data), source="meters.csv")
    assert expected in str(info.value)


def test_missing_columns_and_file() -> None:
    with pytest.raises(RegistryError, match="missing column\\(s\\) ct_ratio"):
        check_registry(pd.DataFrame(GOOD).drop(columns=["ct_ratio"]))
    with pytest.raises(RegistryError, match="not found"):
        load_registry("/nonexistent/meters.csv")


def test_simulated_clock_runs_at_speed() -> None:
    start = datetime(2026, 1, 5, tzinfo=UTC)
    clock = Clock(start=start, speed=3600)
    time.sleep(0.1)
    elapsed = (clock.now() - start).total_seconds()
    assert 300 <= elapsed <= 3600  # 0.1 s wall ≈ 360 s simulated (loose: shared CPU)
    assert clock.wall_seconds(900) == 0.25
    assert clock.service_seconds(0.25) == 900


def test_real_clock_and_bad_speed() -> None:
    before = datetime.now(UTC)
    assert Clock().now() >= before
    with pytest.raises(ValueError, match="speed"):
        Clock(speed=0)
