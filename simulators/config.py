"""``simulator`` section: the simulated fleet `meterwatch run` serves (simulators/runner.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from meterwatch.core.config import Duration, Section

AnomalyType = Literal["phase_break", "voltage_loss", "register_decrease", "consumption_spike"]


class AnomalyConfig(Section):
    type: AnomalyType
    meter_id: str | None = None
    at: Duration
    duration: Duration = 3600.0
    magnitude: float | None = None


class SimModbusConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(15020, ge=0, le=65535)


class SimMqttConfig(Section):
    topic_prefix: str = "meters"


class SimulatorConfig(Section):
    enabled: bool = False
    seed: int = 42
    residential: int = Field(30, ge=0)
    commercial: int = Field(10, ge=0)
    industrial: int = Field(6, ge=0)
    transformers: int = Field(2, ge=1)
    mqtt_share: float = Field(0.2, ge=0, le=1)
    step_s: float = Field(60.0, gt=0)
    modbus: SimModbusConfig = SimModbusConfig()
    mqtt: SimMqttConfig = SimMqttConfig()
    anomalies: list[AnomalyConfig] = []
    registry_out: Path | None = None
