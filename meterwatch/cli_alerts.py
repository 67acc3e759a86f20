"""`meterwatch alerts …` and `meterwatch audit verify`: work the alert feed from the shell.

The time of an action (ack, resolve, silence; the instant ``report`` judges at) is, in order:
``--at TIME`` if given; else the service's time when the service that writes the feed runs a
simulated clock (the demo's, which is sped up) — read from ``<state_dir>/clock.json``, which the
service rewrites every few seconds and at stop (:func:`alerts.manager.service_time`): while it
runs, its service time now; after it stopped, the service time it stopped at; else wall-clock
UTC. SLA deadlines are in the clock of the service that opened the alert, so acting on the
wall clock against a simulated feed would read every SLA as missed (or met, before the
simulated start). Every relative time option (``--since 6h``) counts back from the same instant.
"""

from __future__ import annotations

import functools
import getpass
import json
import math
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from meterwatch.alerts.audit import load_key, verify
from meterwatch.alerts.manager import AlertManager, default_state_dir, service_time
from meterwatch.alerts.model import Alert, iso, parse_iso
from meterwatch.alerts.report import on_time_report
from meterwatch.alerts.silence import parse_matchers
from meterwatch.cli_output import fail
from meterwatch.config import AlertsConfig, load_config, parse_duration
from meterwatch.core.errors import MeterWatchError

# Wide tables stay readable when piped (rich would otherwise assume 80 columns).
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

F = TypeVar("F", bound=Callable[..., Any])


def _now() -> datetime:
    return datetime.now(UTC)


def _at_option(help_text: str) -> Callable[[F], F]:
    return click.option("--at", "at_text", default=None, metavar="TIME", help=help_text)


_AT_HELP = (
    "Action time, ISO 8601 (UTC if no zone) [default: the service's time when the feed's "
    "service runs a simulated clock, else now]."
)


def _action_time(manager: AlertManager, at_text: str | None) -> datetime:
    """``--at``, else the simulated service time recorded next to the feed, else wall-clock now."""
    if at_text:
        try:
            at = parse_iso(at_text)
        except ValueError as exc:
            raise click.BadParameter(
                f"{at_text!r} is not an ISO 8601 time", param_hint="--at"
            ) from exc
        assert at is not None
        return at
    found = service_time(manager.state_dir, _now())
    if found is None:
        return _now()
    at, how = found
    err_console.print(f"at {iso(at)} from {how}; --at overrides", highlight=False, markup=False)
    return at


def _since(manager: AlertManager, text: str | None) -> datetime | None:
    """``--since``: an ISO instant, or a duration back from the action time's clock (``6h``).

    The duration counts back from the same "now" as ``ack``: the simulated service time
    recorded next to the feed when there is one (a demo feed's alerts are in service time),
    else wall-clock UTC.
    """
    if not text:
        return None
    try:
        back = parse_duration(text)
    except ValueError:
        try:
            return parse_iso(text)
        except ValueError as exc:
            raise click.BadParameter(
                f"{text!r} is neither an ISO time nor a duration like 6h", param_hint="--since"
            ) from exc
    found = service_time(manager.state_dir, _now())
    if found is None:
        return _now() - timedelta(seconds=back)
    now, how = found
    since = now - timedelta(seconds=back)
    err_console.print(
        f"since {iso(since)} ({text} before {iso(now)}, from {how})", highlight=False, markup=False
    )
    return since


def _alerts_config(config_path: str | None, feed: str | None) -> AlertsConfig:
    """The ``alerts:`` section of ``--config`` (default config.yaml if present), ``--feed`` wins."""
    path = config_path or "config.yaml"
    if config_path is not None or Path(path).exists():
        cfg = load_config(path).alerts
    else:
        cfg = AlertsConfig()
    if feed is not None:
        state = cfg.state_dir if cfg.state_dir is not None and feed == str(cfg.feed) else None
        cfg = cfg.model_copy(update={"feed": Path(feed), "state_dir": state})
    return cfg


def _feed_options(fn: F | None = None, *, read_only: bool = False) -> Any:
    """``--config``/``--feed`` and the AlertManager they name; ``read_only`` for commands that
    only look (no audit log is opened, so no key is needed, and nothing is written)."""

    def decorate(fn: F) -> F:
        @click.option(
            "--config",
            "config_path",
            default=None,
            type=click.Path(dir_okay=False),
            help="Config file whose alerts: section to use [default: config.yaml if present].",
        )
        @click.option("--feed", default=None, type=click.Path(dir_okay=False), help="Alert feed.")
        @functools.wraps(fn)
        def wrapper(*args: Any, config_path: str | None, feed: str | None, **kw: Any) -> Any:
            try:
                cfg = _alerts_config(config_path, feed)
                manager = AlertManager.from_config(cfg, read_only=read_only)
            except MeterWatchError as exc:
                fail(exc)
                return None
            try:
                return fn(*args, manager=manager, **kw)
            except MeterWatchError as exc:
                fail(exc)
                return None
            finally:
                manager.close()

        return wrapper  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


def _quiet_text(a: Alert) -> str:
    if not a.quiet:
        return ""
    if a.quiet.get("reason") == "inhibited":
        return f"inhibited by {a.quiet.get('inhibited_by')}"
    return f"silenced ({a.quiet.get('silence_id')})"


def _sla_text(a: Alert, step: str) -> str:
    if not a.sla:
        return ""
    return str(a.sla.get(step) or f"due {a.sla.get(f'{step}_due')}")


@click.group("alerts")
def alerts() -> None:
    """Work the alert feed: list, show, acknowledge, resolve, silence, on-time report."""


def _filters(fn: F) -> F:
    for opt in reversed(
        [
            click.option(
                "--status",
                type=click.Choice(["open", "acknowledged", "resolved", "verified", "active"]),
                help="active = open or acknowledged; resolved includes verified.",
            ),
            click.option("--type", "atype", help="Alert type, e.g. voltage_loss."),
            click.option("--meter", help="Meter id."),
            click.option("--area", help="Transformer area (transformer_id)."),
            click.option(
                "--since",
                help="Changed since an ISO time, or a duration (6h, 2d) before the action time "
                "(the simulated service time when the feed has one, as for ack).",
            ),
        ]
    ):
        fn = opt(fn)
    return fn


@alerts.command("list")
@_filters
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_feed_options(read_only=True)
def list_cmd(
    manager: AlertManager,
    status: str | None,
    atype: str | None,
    meter: str | None,
    area: str | None,
    since: str | None,
    as_json: bool,
) -> None:
    """List alerts (oldest first) with their lifecycle stage, quiet reason and SLA state."""
    found = manager.list(
        status=status, type=atype, meter_id=meter, transformer_id=area, since=_since(manager, since)
    )
    if as_json:
        for a in found:
            click.echo(json.dumps(a.to_json(), ensure_ascii=False))
        return
    table = Table(title=f"{len(found)} alert(s) in {manager.feed_path}")
    for col in ("id", "stage", "severity", "type", "meter", "area", "starts", "count", "quiet"):
        table.add_column(col)
    table.add_column("ack")
    table.add_column("resolve")
    for a in found:
        table.add_row(
            a.id,
            a.lifecycle,
            a.severity,
            a.type,
            a.meter_id or "",
            a.transformer_id or "",
            iso(a.starts_at) or "",
            str(a.count),
            _quiet_text(a),
            _sla_text(a, "acknowledge"),
            _sla_text(a, "resolve"),
        )
    console.print(table)


@alerts.command("show")
@click.argument("alert_id")
@click.option("--json", "as_json", is_flag=True, help="The alert as JSON.")
@_feed_options(read_only=True)
def show_cmd(manager: AlertManager, alert_id: str, as_json: bool) -> None:
    """Show one alert (id or a unique prefix) with its evidence and history fields."""
    alert = manager.get(alert_id)
    data = alert.to_json()
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    data["stage"] = alert.lifecycle
    for k, v in data.items():
        if isinstance(v, dict):
            v = json.dumps(v, ensure_ascii=False)
        console.print(f"{k:16} {'' if v is None else v}", highlight=False, markup=False)


def _by_option(fn: F) -> F:
    return click.option(
        "--by",
        default=lambda: os.environ.get("USER") or getpass.getuser(),
        show_default="$USER",
        help="Who does it.",
    )(fn)


@alerts.command("ack")
@click.argument("alert_id")
@_by_option
@click.option("--note", default="", help="What is being done about it.")
@_at_option(_AT_HELP)
@_feed_options
def ack_cmd(manager: AlertManager, alert_id: str, by: str, note: str, at_text: str | None) -> None:
    """Acknowledge an open alert."""
    a = manager.acknowledge(alert_id, by=by, note=note, now=_action_time(manager, at_text))
    sla = (a.sla or {}).get("acknowledge")
    console.print(f"acknowledged {a.id} ({a.type}) by {by}; SLA: {sla}", highlight=False)


@alerts.command("resolve")
@click.argument("alert_id")
@_by_option
@click.option("--note", default="", help="What was done.")
@_at_option(_AT_HELP)
@_feed_options
def resolve_cmd(
    manager: AlertManager, alert_id: str, by: str, note: str, at_text: str | None
) -> None:
    """Resolve an open or acknowledged alert by hand."""
    a = manager.resolve(alert_id, by=by, note=note, now=_action_time(manager, at_text))
    sla = (a.sla or {}).get("resolve")
    console.print(f"resolved {a.id} ({a.type}) by {by}; SLA: {sla}", highlight=False)


@alerts.command("silence")
@click.argument("matchers", nargs=-1, required=True)
@click.option("--duration", default="2h", show_default=True, help="How long (e.g. 30m, 2h, 1d).")
@click.option("--start", default=None, help="ISO start time [default: the action time, see --at].")
@_at_option(_AT_HELP)
@click.option(
    "--author",
    default=lambda: os.environ.get("USER") or getpass.getuser(),
    show_default="$USER",
)
@click.option("--comment", required=True, help="Why (required).")
@_feed_options
def silence_cmd(
    manager: AlertManager,
    matchers: tuple[str, ...],
    duration: str,
    start: str | None,
    author: str,
    comment: str,
    at_text: str | None,
) -> None:
    """Silence alerts matching label=value pairs (type, meter_id, transformer_id, severity, category)."""
    now = _action_time(manager, at_text)
    try:
        starts = parse_iso(start) if start else now
        length = parse_duration(duration)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    assert starts is not None
    s = manager.silence(
        parse_matchers(list(matchers)),
        starts_at=starts,
        ends_at=starts + timedelta(seconds=length),
        author=author,
        comment=comment,
        now=now,
    )
    console.print(
        f"silence {s.id}: {s.matchers} from {iso(s.starts_at)} to {iso(s.ends_at)} by {author}",
        highlight=False,
        markup=False,
    )


@alerts.command("report")
@_filters
@click.option(
    "--at",
    "at_text",
    default=None,
    help="Judge open deadlines at this ISO instant [default: as for ack --at].",
)
@click.option("--json", "as_json", is_flag=True, help="Rows as a JSON array.")
@_feed_options(read_only=True)
def report_cmd(
    manager: AlertManager,
    status: str | None,
    atype: str | None,
    meter: str | None,
    area: str | None,
    since: str | None,
    at_text: str | None,
    as_json: bool,
) -> None:
    """On-time rates (acknowledged, resolved) per transformer area and type."""
    found = manager.list(
        status=status, type=atype, meter_id=meter, transformer_id=area, since=_since(manager, since)
    )
    df = on_time_report(found, _action_time(manager, at_text))
    if as_json:
        records = [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in df.to_dict("records")
        ]
        click.echo(json.dumps(records, default=int))
        return
    table = Table(title=f"SLA on-time rates over {len(found)} alert(s)")
    for col in df.columns:
        table.add_column(col, justify="left" if col in ("transformer_id", "type") else "right")
    for r in df.to_dict("records"):
        table.add_row(
            *[
                "–"
                if isinstance(v, float) and math.isnan(v)
                else (f"{v:.0%}" if k.endswith("_rate") else str(v))
                for k, v in r.items()
            ]
        )
    console.print(table)


@click.group("audit")
def audit() -> None:
    """The tamper-evident audit log."""


@audit.command("verify")
@click.option("--log", "log_path", default=None, type=click.Path(dir_okay=False))
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False))
@click.option("--strict", is_flag=True, help="Also fail when entries follow the last checkpoint.")
@click.option("--json", "as_json", is_flag=True)
def audit_verify(
    log_path: str | None, config_path: str | None, strict: bool, as_json: bool
) -> None:
    """Check the hash chain and signed checkpoints; exit 1 naming the first bad seq."""
    try:
        cfg = _alerts_config(config_path, None)
        state_dir = cfg.state_dir or default_state_dir(cfg.feed)
        path = Path(log_path) if log_path else (cfg.audit.path or state_dir / "audit.jsonl")
        # a generated key lives next to the log in the default layout
        key_dir = path.parent if log_path and (path.parent / "audit.key").exists() else state_dir
        key = load_key(cfg.audit.key_env, key_dir, create=False)
        res = verify(path, key)
    except MeterWatchError as exc:
        fail(exc)
        return
    if as_json:
        click.echo(
            json.dumps(
                {
                    "log": str(path),
                    "ok": res.ok,
                    "entries": res.entries,
                    "checkpoints": res.checkpoints,
                    "last_checkpoint_seq": res.last_checkpoint_seq,
                    "unverified_tail": res.unverified_tail,
                    "first_bad_seq": res.first_bad_seq,
                    "problems": [{"seq": s, "message": m} for s, m in res.problems],
                }
            )
        )
    elif res.ok:
        console.print(
            f"{path}: OK — {res.entries} entries, {res.checkpoints} signed checkpoint(s), "
            f"last at seq {res.last_checkpoint_seq}",
            highlight=False,
        )
        if res.unverified_tail:
            err_console.print(
                f"[yellow]warning:[/] unverified tail: {res.unverified_tail} entr(y/ies) after the "
                f"last checkpoint (seq {res.last_checkpoint_seq}) are not covered by a signature; "
                "a truncation there cannot be detected",
                highlight=False,
            )
    else:
        for seq, msg in res.problems:
            err_console.print(f"[bold red]TAMPERED:[/] first bad seq {seq}: {msg}", highlight=False)
    if not res.ok:
        sys.exit(1)
    if strict and res.unverified_tail:
        sys.exit(3)
