"""``storage`` section: the reading store (embedded DuckDB or InfluxDB) and the durable spool."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from meterwatch.core.config import Duration, Section


class InfluxConfig(Section):
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


class SpoolConfig(Section):
    """``storage.spool``: the durable queue between collectors and the store (storage/spool.py)."""

    enabled: bool | None = None  # None: on for influx (required), off for embedded
    path: Path = Path("var/spool")
    max_bytes: int = Field(1 << 30, ge=1 << 16)
    drain_batch_rows: int = Field(5000, ge=1)
    # Readings remembered (with InfluxDB) to skip repeats and keep conflicting values apart
    # (storage/recent.py); kept in the spool file, so they survive a restart. 0: off.
    dedup_window: int = Field(200_000, ge=0)


class StorageConfig(Section):
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
    def alert_events_dir(self) -> Path:
        """The alert-event outbox (storage/event_sink.py): next to the spool when there is one,
        else next to the embedded store file."""
        return (self.spool.path if self.uses_spool else self.path.parent) / "alert-events"

    @property
    def uses_spool(self) -> bool:
        """Whether readings go through the spool (always for influx; opt-in for embedded)."""
        if self.spool.enabled is None:
            return self.backend == "influx"
        return self.spool.enabled
