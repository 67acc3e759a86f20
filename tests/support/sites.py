"""A tiny simulated site for tests that run the service or its CLI: a config on free ports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, section by section (lists and values replaced)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def small_site_config(root: Path, **override: dict[str, Any]) -> dict[str, Any]:
    """Four simulated meters read over Modbus TCP (no MQTT), the embedded store and the alert
    feed under ``root/var``, the demo's tariffs; ``override`` merges into any section."""
    port = free_port()
    cfg: dict[str, Any] = {
        "clock": {"start": "2026-01-05T00:00:00Z", "speed": 3600},
        "simulator": {
            "enabled": True,
            "residential": 2,
            "commercial": 1,
            "industrial": 0,
            "transformers": 1,
            "modbus": {"host": "127.0.0.1", "port": port},
        },
        "collector": {
            "modbus": {"gateways": [{"name": "sim", "host": "127.0.0.1", "devices": "simulator"}]},
            "mqtt": {"enabled": False},
        },
        "storage": {"path": str(root / "var" / "store.duckdb")},
        "alerts": {"feed": str(root / "var" / "alerts.jsonl")},
        "tariffs": yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))["tariffs"],
    }
    return merge(cfg, override)


def small_site(root: Path, **override: dict[str, Any]) -> Path:
    """:func:`small_site_config` written to ``root/site.yaml``."""
    path = root / "site.yaml"
    path.write_text(yaml.safe_dump(small_site_config(root, **override)))
    return path
