"""The config file: YAML parsed once, at the edge, into the section models each package owns.

This module composes them (``collector`` from the source registry, ``alerts.delivery`` from the
sink registry, ``analytics.detectors`` from the detector registry) and adds the few sections that
belong to the application itself (``site``, ``clock``, ``registry``, ``metrics``). Every problem
is reported by field path, with the bad value and, for an unknown key, the known ones.
"""

from __future__ import annotations

import logging
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from meterwatch.alerts.config import (
    AlertHttpConfig,
    AlertsConfig,
    AuditConfig,
    DeliveryConfig,
    RetryConfig,
    SlaConfig,
    SlaOverrideConfig,
)
from meterwatch.analytics.config import (
    AnalyticsConfig,
    BillingConfig,
    TariffConfig,
    TouPeriodConfig,
    VeeConfig,
)
from meterwatch.collector.config import CollectorConfig
from meterwatch.core.config import Duration, Section, TimeZone, parse_duration
from meterwatch.core.errors import ConfigError
from meterwatch.core.registry import RegistryDefaults
from meterwatch.simulators.config import AnomalyConfig, SimulatorConfig
from meterwatch.storage.config import InfluxConfig, SpoolConfig, StorageConfig

log = logging.getLogger(__name__)

__all__ = [
    "AlertHttpConfig",
    "AlertsConfig",
    "AnalyticsConfig",
    "AnomalyConfig",
    "AuditConfig",
    "BillingConfig",
    "ClockConfig",
    "CollectorConfig",
    "Config",
    "DeliveryConfig",
    "Duration",
    "InfluxConfig",
    "MetricsConfig",
    "RegistryConfig",
    "RetryConfig",
    "SimulatorConfig",
    "SiteConfig",
    "SlaConfig",
    "SlaOverrideConfig",
    "SpoolConfig",
    "StorageConfig",
    "TariffConfig",
    "TouPeriodConfig",
    "VeeConfig",
    "load_config",
    "parse_config",
    "parse_duration",
    "starter_config",
]


class SiteConfig(Section):
    name: str = "meterwatch"
    timezone: TimeZone = "UTC"


class ClockConfig(Section):
    start: datetime | None = None
    speed: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _sim_needs_start(self) -> ClockConfig:
        if self.speed != 1.0 and self.start is None:
            raise ValueError("clock.speed other than 1 needs clock.start (a simulated clock)")
        return self


class RegistryConfig(Section):
    """``registry``: the meter registry file (contracts §2). Analytics needs it; ingest does not.

    ``defaults`` replaces the built-in default of a column for every meter whose cell is empty
    or whose file lacks the column (meterwatch.core.registry.DEFAULTS).
    """

    path: Path | None = None
    defaults: RegistryDefaults = RegistryDefaults()


class MetricsConfig(Section):
    """``metrics``: Prometheus text exposition on ``http://host:port/metrics``."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9469, ge=0, le=65535)


class Config(Section):
    site: SiteConfig = SiteConfig()
    vee: VeeConfig = VeeConfig()
    tariffs: dict[str, TariffConfig] = {}
    billing: BillingConfig = BillingConfig()
    clock: ClockConfig = ClockConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    registry: RegistryConfig = RegistryConfig()
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
        return self

    @property
    def mqtt(self) -> Any:
        """``collector.mqtt``: the MQTT broker connection and readings subscription."""
        return self.collector.mqtt


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model at ``loc`` (the parent of an unknown key); [] if not a model."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (
            isinstance(current, type) and issubclass(current, BaseModel)
        ):
            continue  # list index or dict key: the item type is found below
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return []


def _model_in(annotation: Any) -> Any:
    """The BaseModel inside ``X``, ``X | None``, ``list[X]`` or ``dict[str, X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] not in ("missing", "extra_forbidden") and "input" in err:
            msg = f"{msg} (got {err['input']!r})"
        if err["type"] == "extra_forbidden":
            known = _known_keys(Config, tuple(err["loc"][:-1]))
            msg = "unknown key (check spelling; see the configuration reference in README.md)"
            if known:
                msg = f"unknown key; known: {', '.join(known)}"
        out.append((path, msg))
    return out


def parse_config(data: Any, source: str = "config") -> Config:
    """Validate a mapping into :class:`Config`; raise :class:`ConfigError` listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [("(top level)", "expected a mapping of sections")])
    if "mqtt" in data:
        collector = data.get("collector") or {}
        if not isinstance(collector, dict) or "mqtt" in collector:
            raise ConfigError(source, [("mqtt", "moved to collector.mqtt; give it there only")])
        log.warning("%s: the top-level mqtt section is now collector.mqtt; read from there", source)
        data = {k: v for k, v in data.items() if k != "mqtt"} | {
            "collector": {**collector, "mqtt": data["mqtt"]}
        }
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc)) from None


def starter_config(name: str) -> str:
    """The text of a config shipped in the package: ``gateway`` (real meters, commented) or
    ``demo`` (the simulated demo, the repository's config.yaml)."""
    return (files("meterwatch") / "data" / f"{name}.yaml").read_text(encoding="utf-8")


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file. Relative paths in it stay relative to the CWD."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = (
            f"not found; `meterwatch config init {p}` writes a starter config there (real "
            "meters), `meterwatch config init --demo` the simulated demo"
        )
        raise ConfigError(str(p), [("(file)", hint)]) from None
    except OSError as exc:
        raise ConfigError(str(p), [("(file)", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(p), [("(yaml)", str(exc).replace("\n", " "))]) from None
    return parse_config(data, source=str(p))
