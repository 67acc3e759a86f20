"""`meterwatch backup` and `meterwatch restore`: everything the service keeps, to a directory and back.

Paths come from the config (``storage``, ``alerts``); what is copied and how is in
:mod:`meterwatch.backup`. Backup works while the service runs (both backends); restore needs it
stopped. Both refuse to overwrite existing data unless ``--force``.
"""

from __future__ import annotations

import click
from rich.console import Console

from meterwatch.cli_output import fail
from meterwatch.config import load_config
from meterwatch.core.errors import MeterWatchError

console = Console()
err_console = Console(stderr=True)


@click.command("backup")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Backup dir.")
@click.option("--config", "config_path", default="config.yaml", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing non-empty backup directory.")
def backup_cmd(out: str, config_path: str, force: bool) -> None:
    """Write everything the service keeps (store tables, alert feed, state, audit log) to OUT.

    Works while the service runs: it takes a consistent snapshot of its store.
    """
    from meterwatch.backup import backup

    try:
        cfg = load_config(config_path)
        with console.status(f"backing up to {out}"):
            report = backup(cfg, out, force=force)
    except MeterWatchError as exc:
        fail(exc)
        return
    tables = ", ".join(f"{n} {name}" for name, n in report.tables.items()) or "no records"
    pending = ", ".join(f"{n} {name}" for name, n in report.pending.items())
    console.print(
        f"backed up {tables} from {report.how}"
        + (f" (incl. pending in spools: {pending})" if pending else "")
        + f", and {len(report.alert_files)} alert file(s) → {report.path}",
        highlight=False,
    )
    console.print(
        f"not in the backup: the audit key (keep ${cfg.alerts.audit.key_env} or "
        "the original audit.key safe; restore needs it)",
        highlight=False,
    )


@click.command("restore")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.option("--config", "config_path", default="config.yaml", show_default=True)
@click.option("--force", is_flag=True, help="Replace the store's records and alert files.")
def restore_cmd(src: str, config_path: str, force: bool) -> None:
    """Load backup SRC into the store and alert files the config names (service stopped)."""
    from meterwatch.backup import restore

    try:
        cfg = load_config(config_path)
        with console.status(f"restoring {src}"):
            report = restore(cfg, src, force=force)
    except MeterWatchError as exc:
        fail(exc)
        return
    tables = ", ".join(f"{n} {name}" for name, n in report.tables.items()) or "no records"
    console.print(
        f"restored {tables} into {report.path} and {len(report.alert_files)} alert file(s) "
        f"from {src}",
        highlight=False,
    )
    if report.audit.get("verified"):
        console.print(
            f"audit log verified: {report.audit['entries']} entries, "
            f"{report.audit['checkpoints']} signed checkpoint(s)",
            highlight=False,
        )
    for note in report.notes:
        err_console.print(f"[yellow]warning:[/] {note}", highlight=False)
