"""Terminal output: live progress of a run, alert lines, the closing summary (rich)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

import pandas as pd
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from meterwatch.alerts.model import Alert
from meterwatch.core.catalogue import ALERT_CATEGORIES, CATEGORIES
from meterwatch.core.registry import RegistrySummary

if TYPE_CHECKING:
    from meterwatch.service import RunSummary, Service

_SEVERITY_STYLE = {
    "critical": "bold red",
    "major": "red",
    "minor": "yellow",
    "warning": "yellow",
    "info": "cyan",
}


def alert_line(event: str, alert: Alert) -> str:
    who = alert.meter_id or alert.transformer_id or "-"
    style = _SEVERITY_STYLE.get(alert.severity, "")
    return (
        f"[{style}]{event.upper():8}[/] {alert.severity:8} {alert.type:20} {who:8} {alert.summary}"
    )


class Progress:
    """Shows a live status table on a terminal, or a status line every few seconds otherwise."""

    def __init__(self, console: Console, every_s: float = 5.0):
        self.console = console
        self.every_s = every_s
        self._live: Live | None = None
        self._last = 0.0

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self._live = Live(console=self.console, refresh_per_second=4, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def on_alert(self, event: str, alert: Alert) -> None:
        self.console.print(alert_line(event, alert), highlight=False)

    def tick(self, service: Service) -> None:
        if self._live is not None:
            self._live.update(status_table(service))
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            c = service.stats.snapshot()
            self.console.print(
                f"{service.clock.now():%Y-%m-%d %H:%M}Z  meters online "
                f"{service.stats.online_count()}/{len(service.registry)}  stored "
                f"{c.get('readings_stored', 0)}  alerts open {len(service.alerts.open_alerts())}",
                highlight=False,
            )


def status_table(service: Service) -> Table:
    c = service.stats.snapshot()
    t = Table(
        title=f"MeterWatch — service time {service.clock.now():%Y-%m-%d %H:%M}Z", show_header=False
    )
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("meters online", f"{service.stats.online_count()} / {len(service.registry)}")
    t.add_row("readings stored", str(c.get("readings_stored", 0)))
    t.add_row("writer pending", str(service.writer.pending_rows))
    if service.writer.spool is not None:
        g = service.stats.gauge_snapshot()
        t.add_row(
            "spool pending (rows / MB / oldest s)",
            f"{g.get('spool_depth_rows', 0):.0f} / {g.get('spool_depth_bytes', 0) / 1e6:.1f}"
            f" / {g.get('spool_oldest_pending_seconds', 0):.0f}",
        )
    t.add_row(
        "store writes / s, errors",
        f"{service.stats.gauge_snapshot().get('store_write_rows_per_second', 0):.0f}, "
        f"{c.get('store_errors', 0)}",
    )
    t.add_row(
        "meter requests / errors", f"{c.get('meter_requests', 0)} / {c.get('meter_errors', 0)}"
    )
    t.add_row(
        "MQTT messages / dead letters",
        f"{c.get('mqtt_messages', 0)} / {c.get('mqtt_dead_letters', 0)}",
    )
    t.add_row("readings refused (queue full)", str(c.get("readings_refused", 0)))
    t.add_row(
        "cycles overrun (of polls)",
        f"{c.get('cycles_overrun', 0)} ({c.get('poll_cycles_overrun', 0)})",
    )
    by_type = Counter({a.type: 0 for a in service.alerts.open_alerts()})
    for a in service.alerts.open_alerts():
        by_type[a.type] += 1
    t.add_row("open alerts", ", ".join(f"{k} {v}" for k, v in sorted(by_type.items())) or "none")
    return t


def print_summary(console: Console, s: RunSummary) -> None:
    t = Table(title="Run summary", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    span = s.service_end - s.service_start
    t.add_row("wall time", f"{s.wall_seconds:.1f} s")
    t.add_row("service time covered", f"{span.total_seconds() / 3600:.1f} h")
    t.add_row("meters (online at end)", f"{s.meters} ({s.meters_online})")
    for key in (
        "readings_stored",
        "meter_requests",
        "meter_errors",
        "mqtt_messages",
        "mqtt_dead_letters",
        "readings_refused",
        "spool_refused",
        "readings_spooled",
        "store_errors",
        "cycles_overrun",
        "poll_cycles_overrun",
        "analytics_runs",
        "analytics_worker_restarts",
        "analytics_worker_failed_runs",
    ):
        t.add_row(key.replace("_", " "), str(s.counters.get(key, 0)))
    t.add_row(
        "alerts raised",
        ", ".join(f"{k} {v}" for k, v in sorted(s.alerts_by_type.items())) or "none",
    )
    t.add_row("alerts still open", str(s.open_alerts))
    if s.extra.get("spool_pending_rows") is not None:
        t.add_row("spool pending (sent at next start)", str(s.extra["spool_pending_rows"]))
    for sink, d in sorted(s.delivery.items()):
        t.add_row(f"alert delivery to {sink}", delivery_text(d))
    console.print(t)


def delivery_text(d: Mapping[str, int]) -> str:
    """One sink's delivery counts: this run's delivered/retried/failed, the outbox's pending."""
    pending = d.get("pending", 0)
    return (
        f"{d.get('delivered', 0)} delivered, {d.get('retried', 0)} retried, "
        f"{d.get('failed', 0)} failed, {pending} pending"
        + (" (sent at next start)" if pending else "")
    )


def coercion_warnings(source: str, frame: pd.DataFrame) -> list[str]:
    """One line per column where ``normalize_readings`` turned non-numeric values into NaN.

    Names the file, the column, the count and the first offending values with their row
    (0-based data row; the CSV line is row + 2), meter and time.
    """
    counts: dict[str, int] = frame.attrs.get("coerced") or {}
    examples: dict[str, list[dict[str, object]]] = frame.attrs.get("coerced_examples") or {}
    lines = []
    for col, n in sorted(counts.items()):
        shown = "; ".join(
            f"row {e['row']} ({e['meter_id']} {_ts_text(e['ts'])}): {e['value']!r}"
            for e in examples.get(col, [])
        )
        more = f" (first {len(examples.get(col, []))}: {shown})" if shown else ""
        lines.append(
            f"{source}: column {col}: {n} non-numeric value(s) read as missing (NaN){more}"
        )
    return lines


def warn_coerced(console: Console, source: str, frame: pd.DataFrame) -> int:
    """Print :func:`coercion_warnings` as warnings; return the number of coerced values."""
    for line in coercion_warnings(source, frame):
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
    return int(sum((frame.attrs.get("coerced") or {}).values()))


def _ts_text(ts: object) -> str:
    return f"{ts:%Y-%m-%dT%H:%M:%SZ}" if isinstance(ts, pd.Timestamp) and ts.tz else str(ts)


def print_registry_summary(console: Console, summary: RegistrySummary) -> None:
    """The registry load's summary: size, defaulted columns, meters without an area."""
    for line in summary.lines():
        console.print(f"registry: {escape(line)}", highlight=False, soft_wrap=True)


def alert_counts_lines(counts: Mapping[str, int]) -> list[str]:
    """Alert counts per category, then per type within it (catalogue order of categories)."""
    if not counts:
        return ["alerts by category: none"]
    by_cat: dict[str, dict[str, int]] = {}
    for typ, n in counts.items():
        by_cat.setdefault(ALERT_CATEGORIES.get(typ, "other"), {})[typ] = n
    order = [c for c in (*CATEGORIES, "other") if c in by_cat]
    lines = ["alerts by category: " + ", ".join(f"{c} {sum(by_cat[c].values())}" for c in order)]
    width = max(len(t) for t in counts)
    for c in order:
        for typ, n in sorted(by_cat[c].items()):
            lines.append(f"  {typ:<{width}}  {n:>6}  ({c})")
    return lines
