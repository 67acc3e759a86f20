"""Configuration: YAML parsed once, at the edge, into typed pydantic models."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from meterwatch.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like ``90``, ``15m``, ``6h``, ``2d``, ``1h30m``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 900, '15m', '6h' or '2d'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        try:
            return float(text)
        except ValueError:
            pass
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _UNITS[u] for n, u in parts)
    raise ValueError(f"{value!r} is not a duration; use seconds or e.g. '15m', '6h', '2d'")


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteConfig(_Model):
    name: str = "meterwatch"
    timezone: str = "UTC"


class ClockConfig(_Model):
    start: datetime | None = None
    speed: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _sim_needs_start(self) -> ClockConfig:
        if self.speed != 1.0 and self.start is None:
            raise ValueError("clock.speed other than 1 needs clock.start (a simulated clock)")
        return self


AnomalyType = Literal["phase_break", "voltage_loss", "register_decrease", "consumption_spike"]


class AnomalyConfig(_Model):
    type: AnomalyType
    meter_id: str | None = None
    at: Duration
    duration: Duration = 3600.0
    magnitude: float | None = None


class SimModbusConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(15020, ge=0, le=65535)


class SimMqttConfig(_Model):
    topic_prefix: str = "meters"


class SimulatorConfig(_Model):
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


class RegistryConfig(_Model):
    path: Path | None = None


class MqttConfig(_Model):
    enabled: bool = True
    broker: Literal["embedded", "external"] = "embedded"
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=0, le=65535)
    client_id: str = "meterwatch-collector"
    username_env: str | None = None
    password_env: str | None = None
    topic: str = "meters/{meter_id}/reading"
    qos: Literal[0, 1] = 1
    batch_max: int = Field(500, ge=1)
    batch_wait_s: float = Field(0.2, gt=0)
    dead_letter: Path = Path("var/mqtt-dead-letter.jsonl")
    max_payload_bytes: int = Field(262144, ge=64)

    @field_validator("topic")
    @classmethod
    def _topic_has_meter(cls, v: str) -> str:
        if v.count("{meter_id}") != 1:
            raise ValueError(
                "topic must contain {meter_id} exactly once, e.g. meters/{meter_id}/reading"
            )
        return v


class ModbusDeviceConfig(_Model):
    meter_id: str
    unit: int = Field(ge=0, le=247)
    model: str


class ModbusGatewayConfig(_Model):
    name: str
    host: str
    port: int = Field(502, ge=1, le=65535)
    timeout_s: float = Field(1.0, gt=0)
    pause_s: float = Field(0.0, ge=0)
    devices: Literal["simulator"] | list[ModbusDeviceConfig] = []


class ModbusCollectorConfig(_Model):
    enabled: bool = True
    interval: Duration = 900.0
    gateways: list[ModbusGatewayConfig] = []


class CollectorConfig(_Model):
    modbus: ModbusCollectorConfig = ModbusCollectorConfig()
    maps: dict[str, dict[str, Any]] = {}


class StorageConfig(_Model):
    backend: Literal["embedded"] = "embedded"
    path: Path = Path("var/meterwatch.duckdb")
    retention_days: float | None = Field(None, gt=0)


class AnalyticsConfig(_Model):
    interval: Duration = 3600.0
    window: Duration = 8 * 86400.0
    detectors: dict[str, dict[str, Any]] = {}


class MqttDeliveryConfig(_Model):
    """``alerts.delivery.mqtt``: alert state and events on the broker of the ``mqtt`` section."""

    enabled: bool = False
    topic_prefix: str = "meterwatch"
    client_id: str = "meterwatch-alerts"


class WebhookConfig(_Model):
    """``alerts.delivery.webhooks[]``: a receiver of Alertmanager's webhook format (version 4)."""

    url: str
    token_env: str | None = None
    timeout_s: float = Field(10.0, gt=0)


class AlertmanagerDeliveryConfig(_Model):
    """``alerts.delivery.alertmanager``: push to a Prometheus Alertmanager (API v2)."""

    url: str | None = None
    refresh: Duration = Field(60.0, gt=0)
    timeout_s: float = Field(10.0, gt=0)


class SmtpConfig(_Model):
    """``alerts.delivery.smtp``: e-mail; off while ``host`` is null or ``to`` is empty."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    host: str | None = None
    port: int = Field(25, ge=1, le=65535)
    sender: str = Field("meterwatch@localhost", alias="from")
    to: list[str] = []
    username_env: str | None = None
    password_env: str | None = None
    starttls: bool = False
    timeout_s: float = Field(15.0, gt=0)


class RetryConfig(_Model):
    """``alerts.delivery.retry``: exponential backoff with jitter between delivery attempts."""

    initial: Duration = Field(1.0, gt=0)
    max: Duration = Field(300.0, gt=0)
    jitter: float = Field(0.2, ge=0, lt=1)
    give_up_after: Duration = Field(86400.0, gt=0)


class DeliveryConfig(_Model):
    """``alerts.delivery``: where alert changes are sent, through a persistent outbox."""

    state_dir: Path = Path("var/delivery")
    external_url: str = ""
    mqtt: MqttDeliveryConfig = MqttDeliveryConfig()
    webhooks: list[WebhookConfig] = []
    alertmanager: AlertmanagerDeliveryConfig = AlertmanagerDeliveryConfig()
    smtp: SmtpConfig = SmtpConfig()
    retry: RetryConfig = RetryConfig()


class AlertHttpConfig(_Model):
    """``alerts.http``: JSON API, SSE stream and engineers' web page (token auth)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8470, ge=0, le=65535)
    token_env: str = "MW_ALERTS_TOKEN"


class SlaOverrideConfig(_Model):
    """Allowed times for alerts of a severity and/or customer class (most specific wins)."""

    severity: Literal["critical", "major", "minor", "warning", "info"] | None = None
    customer_class: Literal["residential", "commercial", "industrial"] | None = None
    acknowledge: Duration | None = Field(None, gt=0)
    resolve: Duration | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _keys(self) -> SlaOverrideConfig:
        if self.severity is None and self.customer_class is None:
            raise ValueError("an SLA override needs severity and/or customer_class")
        if self.acknowledge is None and self.resolve is None:
            raise ValueError("an SLA override needs acknowledge and/or resolve")
        return self


class SlaConfig(_Model):
    """Service-level deadlines, counted from when an alert opens (utility service standard)."""

    acknowledge: Duration = Field(2 * 3600.0, gt=0)
    resolve: Duration = Field(24 * 3600.0, gt=0)
    overrides: list[SlaOverrideConfig] = []


class AuditConfig(_Model):
    path: Path | None = None  # default: <state_dir>/audit.jsonl
    key_env: str = "MW_AUDIT_KEY"
    checkpoint_every: int = Field(100, ge=1)


class SlaOverrideConfig(_Model):
    """Allowed times for alerts of a severity and/or customer class (most specific wins)."""

    severity: Literal["critical", "major", "minor", "warning", "info"] | None = None
    customer_class: Literal["residential", "commercial", "industrial"] | None = None
    acknowledge: Duration | None = Field(None, gt=0)
    resolve: Duration | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _keys(self) -> SlaOverrideConfig:
        if self.severity is None and self.customer_class is None:
            raise ValueError("an SLA override needs severity and/or customer_class")
        if self.acknowledge is None and self.resolve is None:
            raise ValueError("an SLA override needs acknowledge and/or resolve")
        return self


class SlaConfig(_Model):
    """Service-level deadlines, counted from when an alert opens (utility service standard)."""

    acknowledge: Duration = Field(2 * 3600.0, gt=0)
    resolve: Duration = Field(24 * 3600.0, gt=0)
    overrides: list[SlaOverrideConfig] = []


class AuditConfig(_Model):
    path: Path | None = None  # default: <state_dir>/audit.jsonl
    key_env: str = "MW_AUDIT_KEY"
    checkpoint_every: int = Field(100, ge=1)


class AlertsConfig(_Model):
    feed: Path = Path("var/alerts.jsonl")
    state_dir: Path | None = None  # default: next to the feed, <feed dir>/<feed stem>-state
    verify_after_intervals: int = Field(3, ge=0)
    flap_hold: Duration = Field(7200.0, ge=0)
    sla: SlaConfig = SlaConfig()
    escalate_at_fraction: float = Field(0.8, gt=0, lt=1)
    audit: AuditConfig = AuditConfig()
    state_dir: Path | None = None  # default: next to the feed, <feed dir>/<feed stem>-state
    verify_after_intervals: int = Field(3, ge=0)
    flap_hold: Duration = Field(7200.0, ge=0)
    sla: SlaConfig = SlaConfig()
    escalate_at_fraction: float = Field(0.8, gt=0, lt=1)
    audit: AuditConfig = AuditConfig()
    console: bool = True
    delivery: DeliveryConfig = DeliveryConfig()
    http: AlertHttpConfig = AlertHttpConfig()
    auto_resolve_categories: list[
        Literal["consumption", "theft", "billing", "equipment", "data_quality"]
    ] = [
        "equipment",
        "consumption",
    ]


class Config(_Model):
    site: SiteConfig = SiteConfig()
    clock: ClockConfig = ClockConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    registry: RegistryConfig = RegistryConfig()
    mqtt: MqttConfig = MqttConfig()
    collector: CollectorConfig = CollectorConfig()
    storage: StorageConfig = StorageConfig()
    analytics: AnalyticsConfig = AnalyticsConfig()
    alerts: AlertsConfig = AlertsConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        uses_sim = any(g.devices == "simulator" for g in self.collector.modbus.gateways)
        if uses_sim and not self.simulator.enabled:
            raise ValueError(
                "collector.modbus.gateways uses devices: simulator but simulator.enabled is false"
            )
        if self.registry.path is None and not self.simulator.enabled:
            raise ValueError("registry.path is required when the simulator is not enabled")
        return self


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] not in ("missing", "extra_forbidden") and "input" in err:
            msg = f"{msg} (got {err['input']!r})"
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check spelling; see the configuration reference in README.md)"
        out.append((path, msg))
    return out


def parse_config(data: Any, source: str = "config") -> Config:
    """Validate a mapping into :class:`Config`; raise :class:`ConfigError` listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [("(top level)", "expected a mapping of sections")])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file. Relative paths in it stay relative to the CWD."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(p), [("(file)", "not found")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(p), [("(yaml)", str(exc).replace("\n", " "))]) from None
    return parse_config(data, source=str(p))
