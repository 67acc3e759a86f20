"""`meterwatch backup` and `meterwatch restore`: the embedded store and alert state to Parquet and back.

Paths come from the config (``storage.path``, ``alerts.feed``, ``alerts.state_dir``); the backup
layout is described in :mod:`storage.backup`. Both refuse to overwrite existing data unless
``--force``. Run them while the service is stopped (DuckDB lets one process write a store file).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from meterwatch.config import Config, load_config
from meterwatch.core.errors import MeterWatchError

console = Console()
err_console = Console(stderr=True)


def _load(config_path: str) -> Config:
    cfg = load_config(config_path)
    if cfg.storage.backend != "embedded":
        raise click.UsageError(
            f"{config_path}: storage.backend is {cfg.storage.backend}; backup/restore work on the "
            "embedded store (back up InfluxDB with its own tools: influxd backup / influx backup)"
        )
    return cfg


def _state_dir(cfg: Config) -> Path:
    from meterwatch.alerts.manager import default_state_dir

    return cfg.alerts.state_dir or default_state_dir(cfg.alerts.feed)


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
    sys.exit(2)


@click.command("backup")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Backup dir.")
@click.option("--config", "config_path", default="config.yaml", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing non-empty backup directory.")
def backup_cmd(out: str, config_path: str, force: bool) -> None:
    """Write the embedded store's readings (and the alert feed and state) to Parquet in OUT."""
    from meterwatch.storage.backup import backup

    try:
        cfg = _load(config_path)
        result = backup(
            cfg.storage.path,
            out,
            alert_feed=cfg.alerts.feed,
            alert_state_dir=_state_dir(cfg),
            force=force,
        )
    except MeterWatchError as exc:
        _fail(exc)
        return
    console.print(
        f"backed up {result.rows} readings from {cfg.storage.path} and {result.alert_files} "
        f"alert file(s) → {result.path}",
        highlight=False,
    )


@click.command("restore")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.option("--config", "config_path", default="config.yaml", show_default=True)
@click.option("--force", is_flag=True, help="Replace readings and alert feed that exist.")
def restore_cmd(src: str, config_path: str, force: bool) -> None:
    """Load backup SRC into the embedded store (and the alert feed and state)."""
    from meterwatch.storage.backup import restore

    try:
        cfg = _load(config_path)
        result = restore(
            src,
            cfg.storage.path,
            alert_feed=cfg.alerts.feed,
            alert_state_dir=_state_dir(cfg),
            force=force,
        )
    except MeterWatchError as exc:
        _fail(exc)
        return
    console.print(
        f"restored {result.rows} readings into {result.path} and {result.alert_files} alert "
        f"file(s) from {src}",
        highlight=False,
    )
