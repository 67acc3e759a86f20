"""Build the configured reading store (embedded DuckDB or InfluxDB) from ``storage`` config.

Secrets never live in the config file: ``storage.influx.token_env``, ``username_env`` and
``password_env`` name environment variables, read here. A missing variable is a
:class:`~meterwatch.core.errors.ConfigError` naming both the setting and the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pandas as pd

from meterwatch.config import StorageConfig
from meterwatch.core.errors import ConfigError
from meterwatch.storage.base import ReadingStore
from meterwatch.storage.embedded import EmbeddedStore
from meterwatch.storage.influx import InfluxStore


def _secret(env: Mapping[str, str], setting: str, var: str | None) -> str | None:
    if not var:
        return None
    value = env.get(var)
    if value is None or value == "":
        raise ConfigError(
            "storage.influx",
            [(setting, f"environment variable {var} is not set (it holds the secret)")],
        )
    return value


def build_store(
    cfg: StorageConfig,
    registry: pd.DataFrame | None = None,
    env: Mapping[str, str] | None = None,
) -> ReadingStore:
    """The store ``cfg.backend`` names; ``registry`` supplies InfluxDB tags (contracts §2)."""
    env = os.environ if env is None else env
    if cfg.backend == "embedded":
        return EmbeddedStore(cfg.path, cfg.retention_days, memory_limit=cfg.memory_limit)
    influx = cfg.influx
    if influx is None:  # the config validator already refuses this
        raise ConfigError("storage", [("storage.influx", "required when backend is influx")])
    token = (
        _secret(env, "storage.influx.token_env", influx.token_env)
        if influx.flavor == "v2"
        else None
    )
    username = _secret(env, "storage.influx.username_env", influx.username_env)
    password = _secret(env, "storage.influx.password_env", influx.password_env)
    return InfluxStore(
        flavor=influx.flavor,
        url=influx.url,
        database=influx.database,
        retention_policy=influx.retention_policy,
        org=influx.org,
        bucket=influx.bucket,
        token=token,
        username=username,
        password=password,
        tags=registry,
        batch_size=influx.batch_size,
        timeout_s=influx.timeout_s,
        max_retries=influx.max_retries,
        retry_budget_s=influx.retry_budget_s,
        dead_letter_path=influx.dead_letter,
    )
