"""Build the configured reading store (embedded DuckDB or InfluxDB) from ``storage`` config.

Secrets never live in the config file: ``storage.influx.token_env``, ``username_env`` and
``password_env`` name environment variables, read here. A missing variable is a
:class:`~meterwatch.core.errors.ConfigError` naming both the setting and the variable.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from meterwatch.core.errors import ConfigError
from meterwatch.storage.base import ReadingStore
from meterwatch.storage.config import StorageConfig
from meterwatch.storage.embedded import EmbeddedStore
from meterwatch.storage.influx import InfluxStore
from meterwatch.storage.influx_http import connection_settings


def build_store(
    cfg: StorageConfig,
    registry: pd.DataFrame | None = None,
    env: Mapping[str, str] | None = None,
) -> ReadingStore:
    """The store ``cfg.backend`` names; ``registry`` supplies InfluxDB tags (contracts §2)."""
    if cfg.backend == "embedded":
        return EmbeddedStore(cfg.path, cfg.retention_days, memory_limit=cfg.memory_limit)
    influx = cfg.influx
    if influx is None:  # the config validator already refuses this
        raise ConfigError("storage", [("storage.influx", "required when backend is influx")])
    return InfluxStore(tags=registry, **connection_settings(influx, env))
