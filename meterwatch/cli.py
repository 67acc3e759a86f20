"""The `meterwatch` command line (contracts §4)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.logging import RichHandler

from meterwatch import __version__
from meterwatch.cli_output import LazyGroup, fail
from meterwatch.core.errors import ConfigError, MeterWatchError

if TYPE_CHECKING:
    from meterwatch.io import ReadAhead

console = Console()
err_console = Console(stderr=True)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=True)],
    )
    for noisy in ("pymodbus", "amqtt", "transitions", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Skipped runs are counted and reported once by the service (cycles_overrun).
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


#: Commands defined in modules of their own, imported only when one of them runs (or ``--help``
#: lists them): ``meterwatch analyze`` does not load the alert, storage or probe commands'
#: modules, nor the config models of the service (about 0.3 s of imports).
_LAZY = {
    "alerts": "meterwatch.cli_alerts:alerts",
    "audit": "meterwatch.cli_alerts:audit",
    "backup": "meterwatch.cli_storage:backup_cmd",
    "restore": "meterwatch.cli_storage:restore_cmd",
    "export": "meterwatch.cli_billing:export",
    "vee": "meterwatch.cli_billing:vee",
    "evaluate": "meterwatch.cli_evaluate:evaluate",
    "baselines": "meterwatch.cli_baselines:baselines",
    "probe": "meterwatch.cli_probe:probe",
}


@click.group(cls=LazyGroup, lazy=_LAZY)
@click.version_option(__version__, prog_name="meterwatch")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """MeterWatch: collect, store, validate, detect and alert on smart-meter data."""
    _setup_logging(verbose)


@main.command()
@click.option(
    "--config", "config_path", default="config.yaml", show_default=True, type=click.Path()
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after S wall-clock seconds (> 0).",
)
def run(config_path: str, duration: float | None) -> None:
    """Run the service: collect → store → detect → alert (Ctrl-C stops cleanly)."""
    # The service's modules only after the lean-ingest check: the process that replaces
    # itself with the lean one should not have grown by them first (docs/benchmarks.md).
    from meterwatch.config import load_config
    from meterwatch.ingest import exec_lean, lean_plan

    try:
        cfg = load_config(config_path)
        lean = lean_plan(cfg, duration)
        if lean is not None:  # MQTT-only into InfluxDB: a process without the frame stack
            console.print(
                f"MeterWatch {__version__}: MQTT-only ingest into InfluxDB "
                f"{cfg.storage.influx.url if cfg.storage.influx else ''}: lean ingest process"
                + ("" if duration else "; Ctrl-C to stop"),
                highlight=False,
            )
            exec_lean(lean)
        from meterwatch.console import Progress, print_summary
        from meterwatch.demo import set_aside_previous_run
        from meterwatch.service import Service

        fresh = set_aside_previous_run(cfg)  # a demo rerun: never replay times into a store
        if fresh:
            console.print(fresh, highlight=False)
        progress = Progress(console)
        service = Service(cfg, on_alert=progress.on_alert, on_tick=progress.tick)
    except MeterWatchError as exc:
        fail(exc)
        return

    async def _main() -> object:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        with progress:
            return await service.run(duration, stop)

    console.print(
        f"MeterWatch {__version__}: {len(service.registry)} meters; alerts → {cfg.alerts.feed}; "
        f"store → {cfg.storage.influx.url if cfg.storage.influx and cfg.storage.backend == 'influx' else cfg.storage.path}"
        + ("" if duration else "; Ctrl-C to stop"),
        highlight=False,
    )
    try:
        summary = asyncio.run(_main())
    except MeterWatchError as exc:  # a port in use, a store that cannot be opened ...
        fail(exc)
    print_summary(console, summary)  # type: ignore[arg-type]


@main.group()
def config() -> None:
    """Configuration tools."""


@config.command("check")
@click.argument("file", default="config.yaml", type=click.Path())
def config_check(file: str) -> None:
    """Validate FILE and print what is wrong, by field path."""
    from meterwatch.config import load_config

    try:
        cfg = load_config(file)
    except ConfigError as exc:
        err_console.print(
            f"[bold red]error:[/] {exc.source}: {len(exc.problems)} problem(s)",
            highlight=False,
            soft_wrap=True,
        )
        for path, msg in exc.problems:
            err_console.print(f"  [yellow]{path}[/]: {msg}", highlight=False, soft_wrap=True)
        sys.exit(1)
    sim = (
        "simulated fleet"
        if cfg.simulator.enabled
        else f"registry {cfg.registry.path}"
        if cfg.registry.path is not None
        else "no registry: ingest only, analytics off"
    )
    console.print(
        f"{file}: OK ({sim}, store {cfg.storage.backend} at {cfg.storage.path})", highlight=False
    )


@config.command("init")
@click.argument("file", default="config.yaml", type=click.Path(dir_okay=False))
@click.option("--demo", is_flag=True, help="The simulated demo instead of real meters.")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
def config_init(file: str, demo: bool, force: bool) -> None:
    """Write a commented starter config to FILE (default config.yaml).

    Without --demo: real meters behind a Modbus TCP gateway, a meter registry file and the
    embedded store, for a field gateway; edit the gateway, devices and meters.csv, then
    `meterwatch config check FILE`. With --demo: the simulated demo `make run` runs.
    """
    path = Path(file)
    if path.exists() and not force:
        fail(MeterWatchError(f"{path} exists; use --force to overwrite it"))
    from meterwatch.config import starter_config

    text = starter_config("demo" if demo else "gateway")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(MeterWatchError(f"{path}: cannot write: {exc.strerror or exc}"))
    what = (
        "the simulated demo" if demo else "real meters: edit the gateway, its devices, meters.csv"
    )
    console.print(
        f"wrote {path} ({what}); check it with `meterwatch config check {path}`", highlight=False
    )


@main.command()
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory to write into.",
)
@click.option(
    "--days",
    type=float,
    default=None,
    help="Days to simulate [default: 7], or to keep of a real data set [default: all].",
)
@click.option(
    "--interval", type=float, default=900.0, show_default=True, help="Seconds between readings."
)
@click.option("--residential", type=int, default=30, show_default=True)
@click.option("--commercial", type=int, default=10, show_default=True)
@click.option("--industrial", type=int, default=6, show_default=True)
@click.option("--transformers", type=int, default=2, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--start", default="2026-01-05T00:00:00Z", show_default=True)
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True
)
@click.option(
    "--from-real",
    "real_name",
    default=None,
    metavar="NAME",
    help="Instead of a fleet: a real household data set (uci-household), with faults planted "
    "into a copy of its meter (docs/evaluation.md).",
)
@click.option(
    "--faults-per-type",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="--from-real: planted faults of each type (0: the measured meter alone).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="--from-real: where the downloaded data set is kept "
    "[default: $MW_DATA_CACHE or ~/.cache/meterwatch/datasets].",
)
def simulate(
    out_dir: str,
    days: float | None,
    interval: float,
    residential: int,
    commercial: int,
    industrial: int,
    transformers: int,
    seed: int,
    start: str,
    fmt: str,
    real_name: str | None = None,
    faults_per_type: int = 4,
    cache_dir: str | None = None,
) -> None:
    """Write a simulated fleet (or a real data set) to files: readings, meters.csv, labels.csv."""
    import pandas as pd

    from meterwatch.io import write_simulation
    from meterwatch.simulators.fleet import Fleet, generate

    out = Path(out_dir)
    if real_name is not None:
        _simulate_real(real_name, out, days, interval, faults_per_type, seed, fmt, cache_dir)
        return
    days = 7.0 if days is None else days
    t0 = pd.Timestamp(start).to_pydatetime()
    fleet = Fleet(
        start=t0,
        residential=residential,
        commercial=commercial,
        industrial=industrial,
        transformers=transformers,
        seed=seed,
    )
    with console.status(f"simulating {len(fleet.registry)} meters × {days:g} days"):
        readings = generate(fleet, t0 + pd.Timedelta(days=days), interval_s=interval)
    readings_path = write_simulation(out, readings, fleet.registry, fleet.labels(), fmt)
    console.print(
        f"wrote {len(readings)} readings → {readings_path}, {out / 'meters.csv'}, {out / 'labels.csv'}"
    )


def _simulate_real(
    name: str,
    out: Path,
    days: float | None,
    interval: float,
    faults_per_type: int,
    seed: int,
    fmt: str,
    cache_dir: str | None,
) -> None:
    """``simulate --from-real``: a real data set as canonical files, faults planted in a copy."""
    from meterwatch.io import write_simulation
    from meterwatch.simulators.real import build, dataset

    try:
        ds = dataset(name)
        if interval % 60 or interval <= 0:
            raise click.BadParameter(f"{interval:g}: whole minutes", param_hint="--interval")
        with console.status(f"fetching and converting {ds.title}"):
            data = build(
                name,
                cache=Path(cache_dir) if cache_dir else None,
                days=days,
                interval_s=int(interval),
                faults_per_type=faults_per_type,
                seed=seed,
            )
    except MeterWatchError as exc:
        fail(exc)
        return
    path = write_simulation(out, data.readings, data.registry, data.labels, fmt)
    n = data.counts
    console.print(
        f"{ds.title}: {n['minutes']:,} minutes ({n['minutes_filled']:,} not measured), "
        f"{n['days']:.0f} days → {n['readings']:,} readings per meter of "
        f"{n['intervals']:,} intervals (the rest lack a measured minute)",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"wrote {path}, {out / 'meters.csv'} ({', '.join(data.registry['meter_id'])}), "
        f"{out / 'labels.csv'} ({len(data.labels)} planted faults); source and licence: "
        f"{ds.url} ({ds.licence})",
        highlight=False,
        soft_wrap=True,
    )


@main.command()
@click.option(
    "--readings", "readings_path", required=True, type=click.Path(exists=True, dir_okay=False)
)
@click.option(
    "--meters", "meters_path", required=True, type=click.Path(exists=True, dir_okay=False)
)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False))
@click.option(
    "--config",
    "config_path",
    default=None,
    type=click.Path(),
    help="Detector thresholds from this config.",
)
@click.option(
    "--validated",
    "validated_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Also write validated interval energy (VEE, docs/billing.md) here (.csv/.parquet).",
)
@click.option(
    "--suspects",
    "suspects_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write every customer meter's theft score, ranked (meter_id,score,rank,reasons) as CSV.",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="tcp://HOST:PORT",
    help="Run the partitions on this Dask cluster (default: analytics.scheduler of --config; "
    "without either, in this process). docs/dask.md",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Without a scheduler: N > 1 runs the partitions on a local Dask cluster of N worker "
    "processes (one per core is a good choice); 1 runs them in this process, each partition's "
    "window and detectors on a thread per core.",
)
@click.option(
    "--partition-meters",
    default=20_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Meters per partition (whole transformer areas); bounds memory per worker.",
)
@click.option(
    "--baselines",
    "baselines_path",
    default=None,
    help="Judge the readings against fitted baselines (meterwatch baselines fit): a file, or "
    "'latest' for the newest version in analytics.baselines_dir of --config.",
)
def analyze(
    readings_path: str,
    meters_path: str,
    out_path: str,
    config_path: str | None,
    validated_path: str | None = None,
    suspects_path: str | None = None,
    scheduler: str | None = None,
    workers: int = 1,
    partition_meters: int = 20_000,
    baselines_path: str | None = None,
) -> None:
    """Offline analytics over files in the canonical schema; writes alerts as JSONL."""
    from meterwatch.core.memory import reuse_freed_memory
    from meterwatch.io import ReadAhead

    # This process holds the readings and, without a cluster, runs the analytics: its arrays
    # reuse freed memory (set before the file's first allocation).
    reuse_freed_memory()
    # The file is read on threads of its own from here on: the imports, the config, the
    # registry and the workers below get ready while Arrow parses it (on a bad config, a bad
    # registry or an unreachable scheduler the read is cancelled).
    with ReadAhead(readings_path) as ahead:
        _analyze(
            ahead,
            readings_path,
            meters_path,
            out_path,
            config_path,
            validated_path,
            suspects_path,
            scheduler,
            workers,
            partition_meters,
            baselines_path,
        )


def _analyze(
    ahead: ReadAhead,
    readings_path: str,
    meters_path: str,
    out_path: str,
    config_path: str | None,
    validated_path: str | None,
    suspects_path: str | None,
    scheduler: str | None,
    workers: int,
    partition_meters: int,
    baselines_path: str | None,
) -> None:
    import importlib
    from contextlib import ExitStack
    from datetime import UTC, datetime

    import rich.progress

    from meterwatch.alerts.manager import AlertManager
    from meterwatch.analytics.config import scheduler_address
    from meterwatch.analytics.detectors.theft import (
        gather_features,
        rank_features,
        theft_features,
    )
    from meterwatch.analytics.partition import analyze_partitioned
    from meterwatch.analytics.suite import default_detectors
    from meterwatch.cluster import partition_runner
    from meterwatch.config import load_config
    from meterwatch.console import alert_counts_lines, print_registry_summary, warn_coerced
    from meterwatch.core.registry import load_registry

    try:
        cfg = load_config(config_path) if config_path else None
        setting = "--scheduler"
        if scheduler is not None:
            try:
                scheduler = scheduler_address(scheduler)
            except ValueError as exc:
                raise MeterWatchError(f"--scheduler: {exc}") from None
        elif cfg is not None and cfg.analytics.scheduler:
            scheduler, setting = cfg.analytics.scheduler, f"analytics.scheduler ({config_path})"
        if scheduler and workers > 1:
            raise MeterWatchError(
                f"--workers {workers} starts a local Dask cluster, {setting} names one: "
                "give one of them"
            )
        timeout_s = cfg.analytics.scheduler_timeout if cfg else 10.0
        params = cfg.analytics.detector_params() if cfg else {}
        loaded = load_registry(
            meters_path, defaults=cfg.registry.defaults.values() if cfg else None
        )
        meters = loaded.meters
        print_registry_summary(console, loaded.summary)

        def retried(text: str) -> None:
            err_console.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=True)

        with ExitStack() as stack:
            # The cluster before waiting for the file: an unreachable scheduler fails (and
            # cancels the read) without waiting for a long parse.
            with console.status(f"reaching {scheduler}" if scheduler else "starting workers"):
                runner, where = stack.enter_context(
                    partition_runner(
                        scheduler, workers, timeout_s=timeout_s, setting=setting, on_retry=retried
                    )
                )
            with console.status(f"reading {readings_path}"):
                try:  # the theft score's forest (~1.5 s of imports) while Arrow parses
                    importlib.import_module("sklearn.ensemble")
                except ImportError:  # the import where it is needed reports it
                    pass
                readings = ahead.result()
            # What is loaded by now lives as long as the process: the garbage collector's full
            # passes need not walk it again (2-3 % of the run's CPU in a profile otherwise).
            gc.freeze()
            warn_coerced(err_console, readings_path, readings)  # non-numeric values read as NaN
            if readings.empty:
                err_console.print(
                    f"[yellow]warning:[/] {readings_path} holds no readings (a header only?): "
                    f"nothing to analyze; {out_path} is written empty",
                    highlight=False,
                    soft_wrap=True,
                )
            detectors = default_detectors(params)
            if baselines_path:
                from meterwatch.analytics.baselines import BaselineArchive, Baselines

                fitted = (
                    BaselineArchive(cfg.analytics.baselines_dir if cfg else "var/baselines").load()
                    if baselines_path == "latest"
                    else Baselines.load(baselines_path)
                )
                fitted.apply(detectors)
                console.print(fitted.describe(), highlight=False, soft_wrap=True)
            bar = stack.enter_context(
                rich.progress.Progress(
                    *rich.progress.Progress.get_default_columns(),
                    rich.progress.TextColumn("{task.completed:,.0f}/{task.total:,.0f} meters"),
                    console=console,
                    transient=True,
                )
            )
            task = bar.add_task(
                f"detectors over {len(readings):,} readings {where}", total=len(meters)
            )
            # Without --validated nothing needs the frame after the detectors: handed over,
            # it is freed as soon as the windows hold the readings.
            kept = readings if validated_path else None
            handed = [readings]
            del readings
            result = analyze_partitioned(
                detectors,
                handed.pop(),
                meters,
                max_meters=partition_meters,
                runner=runner,
                progress=lambda done, _total: bar.update(task, completed=done),
                # The suspects list ranks the theft features every partition gives back.
                extra={"theft_features": theft_features} if suspects_path else None,
            )
        findings = result.findings
        console.print(
            f"partitions (whole transformer areas, at most {partition_meters:,} meters) ran "
            f"{where}",
            highlight=False,
            soft_wrap=True,
        )
        if suspects_path:
            suspects = rank_features(gather_features(result.partials.get("theft_features", [])))
            suspects.to_csv(suspects_path, index=False)
            console.print(f"{len(suspects)} customer meters ranked → {suspects_path}")
        if validated_path:
            from meterwatch.cli_billing import write_validated_file

            assert kept is not None
            vpath, vcounts = write_validated_file(kept, meters, config_path, validated_path)
            console.print(
                f"validated intervals → {vpath}: "
                + ", ".join(
                    f"{q} {vcounts[f'intervals_{q}']}" for q in ("actual", "estimated", "missing")
                )
            )
    except MeterWatchError as exc:
        fail(exc)
        return
    out = Path(out_path)
    if out.exists():
        out.unlink()
    manager = AlertManager(out, auto_resolve_categories=("equipment", "consumption"))
    manager.process(findings, datetime.now(UTC))
    out.touch()  # written even when there is nothing to report (contracts §4)
    counts = manager.counts_by_type()
    total = sum(counts.values())
    console.print(
        f"{total} alert{'' if total == 1 else 's'} → {out}" + ("" if total else " (empty)"),
        highlight=False,
        soft_wrap=True,
    )
    for line in alert_counts_lines(counts):
        console.print(line, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
