"""Configuration: YAML parsed once, at the edge, into typed pydantic models."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from meterwatch.core.errors import ConfigError

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


class MqttSubscriptionConfig(_Model):
    """``mqtt.subscriptions[]``: a topic template and the payload codec of its messages."""

    topic: str  # may start with $share/<group>/; {meter_id} at most once
    codec: Literal["canonical", "batch", "tasmota"] = "canonical"

    @model_validator(mode="after")
    def _meter_in_topic(self) -> MqttSubscriptionConfig:
        n = self.topic.count("{meter_id}")
        if n > 1:
            raise ValueError("topic may contain {meter_id} at most once")
        if self.codec == "tasmota" and n != 1:
            raise ValueError(
                "a tasmota subscription needs {meter_id} in the topic, e.g. tele/{meter_id}/SENSOR"
            )
        return self


class MqttTlsConfig(_Model):
    """``mqtt.tls``: CA bundle and optional client certificate; the server name is verified."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


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
    subscriptions: list[MqttSubscriptionConfig] = []  # empty: [{topic: <topic>, codec: canonical}]
    tls: MqttTlsConfig | None = None
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    session_expiry: Duration = Field(86400.0, ge=0)  # MQTT 5 only; 3.1.1 sessions never expire
    receive_maximum: int = Field(100, ge=1, le=65535)  # MQTT 5: unacked QoS 1 in flight to us

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
    interval: Duration | None = Field(None, gt=0)  # poll group; default: the gateway's


class ModbusGatewayConfig(_Model):
    name: str
    transport: Literal["tcp", "rtu-over-tcp", "serial"] = "tcp"
    host: str = ""
    port: int = Field(502, ge=1, le=65535)
    serial_port: str | None = None  # transport serial: e.g. /dev/ttyUSB0
    baudrate: int = Field(9600, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    timeout_s: float = Field(1.0, gt=0)
    pause_s: float = Field(0.0, ge=0)
    busy_retries: int = Field(2, ge=0)  # retries after exception 6 (device busy)
    busy_delay_s: float = Field(0.2, ge=0)
    interval: Duration | None = Field(None, gt=0)  # default: collector.modbus.interval
    align: bool | None = None  # default: collector.modbus.align
    devices: Literal["simulator"] | list[ModbusDeviceConfig] = []

    @model_validator(mode="after")
    def _transport_fields(self) -> ModbusGatewayConfig:
        if self.transport == "serial" and not self.serial_port:
            raise ValueError("serial_port is required when transport is serial")
        if self.transport != "serial" and not self.host:
            raise ValueError(f"host is required when transport is {self.transport}")
        return self


class ModbusCollectorConfig(_Model):
    enabled: bool = True
    interval: Duration = 900.0
    align: bool = False  # ts = the interval boundary the poll belongs to
    offline_after: int = Field(3, ge=1)  # consecutive failed reads before meter_offline
    backoff_cap: Duration = Field(300.0, gt=0)  # cap of a failing meter's exponential backoff
    gateways: list[ModbusGatewayConfig] = []


class Dlt645DeviceConfig(_Model):
    meter_id: str
    address: str = Field(pattern=r"^[0-9A-Fa-f]{12}$")
    interval: Duration | None = Field(None, gt=0)


def _iana_zone(value: str | None) -> str | None:
    """An IANA time zone name (checked with zoneinfo), or None."""
    if value is None:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{value!r} is not an IANA time zone (e.g. Asia/Shanghai, Europe/Berlin, UTC)"
        ) from None
    return value


class Dlt645GatewayConfig(_Model):
    name: str
    transport: Literal["tcp", "serial"] = "tcp"  # tcp: serial device server; serial: local port
    host: str = Field("", validate_default=True)
    port: int = Field(8899, ge=1, le=65535)
    serial_port: str | None = Field(None, validate_default=True)  # e.g. /dev/ttyUSB0
    baudrate: int = Field(2400, gt=0)  # DL/T 645 default framing 2400 8E1
    parity: Literal["N", "E", "O"] = "E"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    timeout_s: float = Field(1.0, gt=0)
    pause_s: float = Field(0.0, ge=0)
    interval: Duration | None = Field(None, gt=0)
    align: bool | None = None
    read_clock: bool | None = None  # default: collector.dlt645.read_clock
    clock_timezone: Annotated[str | None, AfterValidator(_iana_zone)] = None  # default: collector's
    devices: list[Dlt645DeviceConfig] = []

    # Field validators (not a model validator) so that errors carry the field's path.
    @field_validator("host")
    @classmethod
    def _host_for_tcp(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("transport", "tcp") == "tcp" and not value:
            raise ValueError("host is required when transport is tcp")
        return value

    @field_validator("serial_port")
    @classmethod
    def _port_for_serial(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("transport") == "serial" and not value:
            raise ValueError("serial_port is required when transport is serial (e.g. /dev/ttyUSB0)")
        return value


class Dlt645CollectorConfig(_Model):
    enabled: bool = True
    interval: Duration = 900.0
    align: bool = False
    offline_after: int = Field(3, ge=1)
    backoff_cap: Duration = Field(300.0, gt=0)
    read_clock: bool = True  # read each meter's clock (DI 04000101/04000102) into device_ts
    #: Zone the meter clocks keep (they hold local time without a zone); China's meters: CST.
    clock_timezone: Annotated[str, AfterValidator(_iana_zone)] = "Asia/Shanghai"
    gateways: list[Dlt645GatewayConfig] = []


class CollectorConfig(_Model):
    modbus: ModbusCollectorConfig = ModbusCollectorConfig()
    dlt645: Dlt645CollectorConfig = Dlt645CollectorConfig()
    maps: dict[str, dict[str, Any]] = {}


class InfluxConfig(_Model):
    """``storage.influx``: an InfluxDB server (v1: 1.x /write; v2: 2.x, 3.x, 1.8+ /api/v2/write)."""

    flavor: Literal["v1", "v2"] = "v1"
    url: str = "http://127.0.0.1:8086"
    database: str | None = None
    retention_policy: str | None = None
    org: str | None = None
    bucket: str | None = None
    token_env: str = "MW_INFLUX_TOKEN"
    username_env: str | None = None
    password_env: str | None = None
    batch_size: int = Field(5000, ge=1)
    flush_interval: Duration = Field(1.0, gt=0)
    timeout_s: float = Field(10.0, gt=0)
    max_retries: int = Field(5, ge=0)
    retry_budget_s: float = Field(60.0, gt=0)
    dead_letter: Path = Path("var/influx-dead-letter.jsonl")

    @model_validator(mode="after")
    def _flavor_fields(self) -> InfluxConfig:
        if self.flavor == "v1" and not self.database:
            raise ValueError("storage.influx.database is required when flavor is v1")
        if self.flavor == "v2" and not (self.org and self.bucket):
            raise ValueError("storage.influx.org and storage.influx.bucket are required for v2")
        return self


class SpoolConfig(_Model):
    """``storage.spool``: the durable queue between collectors and the store (storage/spool.py)."""

    enabled: bool | None = None  # None: on for influx (required), off for embedded
    path: Path = Path("var/spool")
    max_bytes: int = Field(1 << 30, ge=1 << 16)
    drain_batch_rows: int = Field(5000, ge=1)


class StorageConfig(_Model):
    backend: Literal["embedded", "influx"] = "embedded"
    path: Path = Path("var/meterwatch.duckdb")
    retention_days: float | None = Field(None, gt=0)
    # DuckDB memory limit of the embedded store (DuckDB syntax, e.g. "512MB", "2GB"); DuckDB's
    # own default is 80 % of RAM, too much on a gateway shared with the collector.
    memory_limit: str = Field("1GB", pattern=r"^\s*\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$")
    retention_interval: Duration = Field(3600.0, gt=0)
    # collector_health snapshot every this much service time; null: off (docs/storage-schema.md)
    health_interval: Duration | None = Field(3600.0, gt=0)
    influx: InfluxConfig | None = None
    spool: SpoolConfig = SpoolConfig()

    @model_validator(mode="after")
    def _backend_fields(self) -> StorageConfig:
        if self.backend == "influx":
            if self.influx is None:
                raise ValueError("storage.influx is required when storage.backend is influx")
            if self.spool.enabled is False:
                raise ValueError(
                    "storage.spool.enabled cannot be false with backend influx: "
                    "InfluxDB writes always go through the durable spool"
                )
        return self

    @property
    def uses_spool(self) -> bool:
        """Whether readings go through the spool (always for influx; opt-in for embedded)."""
        if self.spool.enabled is None:
            return self.backend == "influx"
        return self.spool.enabled


class MetricsConfig(_Model):
    """``metrics``: Prometheus text exposition on ``http://host:port/metrics``."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9469, ge=0, le=65535)


class AnalyticsConfig(_Model):
    interval: Duration = 3600.0
    daily_interval: Duration = 86400.0
    window: Duration = 8 * 86400.0
    # VEE over the completed window into validated_readings, every this much service time and
    # at stop; null: off (billing export still validates on demand)
    validation_interval: Duration | None = Field(86400.0, gt=0)
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
    #: CA bundle (PEM) that signed the server's certificate, for a private CA; None: system CAs
    ca_file: Path | None = None
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


class AlertsConfig(_Model):
    feed: Path = Path("var/alerts.jsonl")
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
        "data_quality",
    ]


class VeeConfig(_Model):
    """``vee``: validation/estimation thresholds (analytics/vee.py; sources in docs/billing.md)."""

    interval: Duration = Field(900.0, gt=0)
    rule_set_version: str = "mw-vee-1.0"
    max_read_spacing_intervals: float = Field(1.5, gt=0)
    alignment_tolerance_s: float = Field(60.0, ge=0)
    future_tolerance_s: float = Field(300.0, ge=0)
    clock_tolerance_s: float = Field(900.0, ge=0)
    register_max_kwh: float = Field(99_999_999.99, gt=0)
    register_resolution_kwh: float = Field(0.01, ge=0)
    rollover_fraction: float = Field(0.9, gt=0, lt=1)
    decrease_tolerance_kwh: float = Field(0.01, ge=0)
    spike_ratio: float = Field(10.0, gt=0)
    spike_floor_kwh: float = Field(1.0, ge=0)
    high_usage_ratio: float = Field(2.0, gt=1)
    low_usage_ratio: float = Field(0.5, gt=0, lt=1)
    usage_floor_kwh: float = Field(5.0, ge=0)
    usage_history_days: int = Field(7, ge=1)
    zero_consumption_hours: float = Field(24.0, gt=0)
    outage_voltage_fraction: float = Field(0.6, gt=0, lt=1)
    stuck_hours: float = Field(4.0, gt=0)
    stuck_current_fraction: float = Field(0.05, gt=0)
    runaway_factor: float = Field(1.2, gt=0)
    mismatch_window_hours: float = Field(24.0, gt=0)
    mismatch_tolerance: float = Field(0.1, gt=0)
    mismatch_floor_kwh: float = Field(1.0, ge=0)
    mismatch_min_coverage: float = Field(0.9, gt=0, le=1)
    multiplier_tolerance: float = Field(0.1, gt=0)
    linear_max_gap_s: Duration = Field(7200.0, ge=0)
    like_days: int = Field(3, ge=1)
    like_day_search_days: int = Field(28, ge=1)
    max_consecutive_estimated_s: Duration = Field(86400.0, gt=0)

    @field_validator("interval")
    @classmethod
    def _interval_divides_day(cls, v: float) -> float:
        if v != int(v) or 86400 % int(v):
            raise ValueError("interval must be a whole number of seconds that divides a day")
        return v


def _minutes(text: str) -> int:
    m = re.fullmatch(r"([01]\d|2[0-4]):([0-5]\d)", text)
    if not m or (m.group(1) == "24" and m.group(2) != "00"):
        raise ValueError(f"{text!r} is not a local time HH:MM (00:00..24:00)")
    return int(m.group(1)) * 60 + int(m.group(2))


class TouPeriodConfig(_Model):
    """One time-of-use period: local ``start`` (inclusive) to ``end`` (exclusive), HH:MM."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    label: str = ""
    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        _minutes(v)
        return v


class TariffConfig(_Model):
    """A time-of-use tariff: periods that cover the local day exactly once."""

    periods: list[TouPeriodConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _covers_day(self) -> TariffConfig:
        count = [0] * 1440
        for p in self.periods:
            a, b = _minutes(p.start) % 1440, _minutes(p.end) % 1440
            span = range(a, b) if a < b else [*range(a, 1440), *range(0, b)]
            for minute in span:
                count[minute] += 1
        holes = [i for i, c in enumerate(count) if c == 0]
        twice = [i for i, c in enumerate(count) if c > 1]
        if holes or twice:
            i = holes[0] if holes else twice[0]
            at = f"{i // 60:02d}:{i % 60:02d}"
            what = f"not covered from {at}" if holes else f"covered twice at {at}"
            raise ValueError(f"periods must cover 00:00-24:00 exactly once; {what}")
        return self


class BillingConfig(_Model):
    """``billing``: determinants and holds (analytics/billing.py)."""

    timezone: str | None = None  # default: site.timezone
    estimated_share_limit: float = Field(0.02, ge=0, le=1)
    demand_window: Duration = Field(900.0, gt=0)


class Config(_Model):
    site: SiteConfig = SiteConfig()
    vee: VeeConfig = VeeConfig()
    tariffs: dict[str, TariffConfig] = {}
    billing: BillingConfig = BillingConfig()
    clock: ClockConfig = ClockConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    registry: RegistryConfig = RegistryConfig()
    mqtt: MqttConfig = MqttConfig()
    collector: CollectorConfig = CollectorConfig()
    storage: StorageConfig = StorageConfig()
    analytics: AnalyticsConfig = AnalyticsConfig()
    alerts: AlertsConfig = AlertsConfig()
    metrics: MetricsConfig = MetricsConfig()

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
