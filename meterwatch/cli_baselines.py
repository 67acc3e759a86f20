"""`meterwatch baselines`: fit detector baselines on history and keep them (analytics.baselines)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from meterwatch.cli_output import fail
from meterwatch.config import load_config
from meterwatch.core.errors import MeterWatchError

console = Console()


def _archive_dir(config_path: str | None) -> Path:
    cfg = load_config(config_path or "config.yaml")
    return Path(cfg.analytics.baselines_dir)


@click.group()
def baselines() -> None:
    """Fit detector baselines on weeks of history and keep them, versioned, so later runs
    judge a day against them (consumption profiles, theft references)."""


@baselines.command("fit")
@click.option("--readings", "readings_path", required=True, type=click.Path(exists=True))
@click.option("--registry", "meters_path", required=True, type=click.Path(exists=True))
@click.option(
    "--config",
    "config_path",
    default=None,
    type=click.Path(),
    help="Detector parameters and analytics.baselines_dir [default: config.yaml when it exists].",
)
@click.option(
    "--out",
    "out_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write the baselines to this file instead of a new version in analytics.baselines_dir.",
)
def fit_cmd(
    readings_path: str, meters_path: str, config_path: str | None, out_path: str | None
) -> None:
    """Fit every learning detector on the history in READINGS (e.g. the last 4 weeks)."""
    from meterwatch.analytics.baselines import LEARN_FIELDS, BaselineArchive, fit_baselines
    from meterwatch.analytics.suite import default_detectors
    from meterwatch.analytics.window import build_window
    from meterwatch.core.registry import load_registry
    from meterwatch.io import read_readings_file

    try:
        use_config = config_path or ("config.yaml" if Path("config.yaml").exists() else None)
        cfg = load_config(use_config) if use_config else None
        params = cfg.analytics.detector_params() if cfg else {}
        loaded = load_registry(
            meters_path, defaults=cfg.registry.defaults.values() if cfg else None
        )
        with console.status(f"reading {readings_path}"):
            readings = read_readings_file(readings_path)
        with console.status(f"fitting on {len(readings):,} readings"):
            # Cells up to an hour: hourly reads make hourly cells (what the learners use).
            window = build_window(readings, loaded.meters, fields=LEARN_FIELDS, max_step_s=3600)
            fitted = fit_baselines(window, default_detectors(params))
        if out_path:
            fitted.save(out_path)
            where = out_path
        else:
            if cfg is None:
                raise click.UsageError(
                    "give --out FILE, or --config naming analytics.baselines_dir"
                )
            archive = BaselineArchive(cfg.analytics.baselines_dir)
            archive.save(fitted)
            where = str(archive.path(fitted.version))
    except MeterWatchError as exc:
        fail(exc)
    console.print(f"{fitted.describe()} → {where}", highlight=False, soft_wrap=True)


@baselines.command("list")
@click.option("--config", "config_path", default="config.yaml", show_default=True)
def list_cmd(config_path: str) -> None:
    """The kept versions in analytics.baselines_dir, oldest first."""
    from meterwatch.analytics.baselines import BaselineArchive

    try:
        archive = BaselineArchive(_archive_dir(config_path))
        versions = archive.versions()
        if not versions:
            console.print(f"no fitted baselines in {archive.dir}")
            return
        for v in versions:  # loop over kept versions (a few)
            console.print(archive.load(v).describe(), highlight=False, soft_wrap=True)
    except MeterWatchError as exc:
        fail(exc)
