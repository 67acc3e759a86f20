"""`meterwatch export billing` and `meterwatch vee edit`: validated readings, determinants, edits.

Both work on the store the config names (``storage``): the embedded store (through the
running service when it holds the file, meterwatch/control.py) or InfluxDB, which keeps only the
latest data version of an interval (earlier ones stay in the audit log). Every estimate
written by an export and every manual edit is appended to the tamper-evident audit log of
the alert manager (``alerts.audit``; :class:`alerts.audit.AuditLog`). Columns are
documented in ``docs/billing.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd
from rich.console import Console

from meterwatch.cli_output import fail
from meterwatch.config import Config, load_config
from meterwatch.core.catalogue import types_in
from meterwatch.core.errors import MeterWatchError

console = Console()
err_console = Console(stderr=True)
_DAY = pd.Timedelta(days=1)
BILLING_TYPES = frozenset(types_in("billing"))


# ------------------------------------------------------------------------ shared helpers


def tariff_tables(cfg: Config) -> dict[str, list[dict[str, Any]]]:
    """``tariffs`` as plain period lists for :func:`analytics.billing.billing_determinants`."""
    return {tid: [p.model_dump() for p in t.periods] for tid, t in cfg.tariffs.items()}


def billing_timezone(cfg: Config) -> str:
    """``billing.timezone``, else ``site.timezone``."""
    return cfg.billing.timezone or cfg.site.timezone


def load_meters(cfg: Config, meters_path: str | None) -> pd.DataFrame:
    """Registry from ``--meters``, ``registry.path`` or the simulator's ``registry_out``; its
    summary (defaulted columns, meters without an area) is printed."""
    from meterwatch.console import print_registry_summary
    from meterwatch.core.registry import load_registry

    path = meters_path or cfg.registry.path or cfg.simulator.registry_out
    if path is None:
        raise MeterWatchError(
            "no meter registry: pass --meters, or set registry.path (or simulator.registry_out)"
        )
    loaded = load_registry(path, defaults=cfg.registry.defaults.values())
    print_registry_summary(console, loaded.summary)
    return loaded.meters


def validate_readings(
    readings: pd.DataFrame,
    meters: pd.DataFrame,
    cfg: Config | None,
    *,
    start: Any = None,
    end: Any = None,
    now: Any = None,
) -> Any:
    """VEE with the config's thresholds and grid (defaults without one)."""
    from meterwatch.analytics.incremental import run_vee

    try:
        if cfg is None:
            return run_vee(readings, meters, start=start, end=end, now=now)
        return run_vee(
            readings,
            meters,
            cfg.vee,
            timezone=billing_timezone(cfg),
            start=start,
            end=end,
            now=now,
        )
    except ValueError as exc:
        raise MeterWatchError(f"validation: {exc}") from exc


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as CSV (timestamps ISO 8601 with Z) or Parquet, by the file extension."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise MeterWatchError(f"{p}: unknown output format {p.suffix!r}; use .csv or .parquet")
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        if suffix == ".parquet":
            df.to_parquet(p, index=False)
        else:
            out = df.copy()
            for col in out.columns:
                if isinstance(out[col].dtype, pd.DatetimeTZDtype):
                    out[col] = out[col].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
            out.to_csv(p, index=False)
    except (OSError, ValueError) as exc:
        raise MeterWatchError(f"{p}: cannot write: {exc}") from exc
    return p


def write_validated_file(
    readings: pd.DataFrame, meters: pd.DataFrame, config_path: str | None, path: str | Path
) -> tuple[Path, dict[str, int]]:
    """Validate ``readings`` and write the validated intervals to ``path`` (analyze --validated)."""
    cfg = load_config(config_path) if config_path else None
    result = validate_readings(readings, meters, cfg)
    return write_table(result.intervals, path), result.counts


def open_billing_alerts(feed: Path) -> dict[str, set[str]]:
    """Meter id -> types of open or acknowledged billing alerts in the JSONL feed (contracts §3).

    The last line of an alert ``id`` is its state; unreadable lines are counted and reported.
    """
    if not feed.exists():
        return {}
    latest: dict[str, dict[str, Any]] = {}
    bad = 0
    with feed.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                latest[str(obj["id"])] = obj
            except (ValueError, KeyError, TypeError):
                bad += 1
    if bad:
        err_console.print(f"[yellow]warning:[/] {feed}: {bad} unreadable line(s) skipped")
    out: dict[str, set[str]] = {}
    for a in latest.values():
        if (
            a.get("type") in BILLING_TYPES
            and a.get("status") in ("open", "acknowledged")
            and a.get("meter_id")
        ):
            out.setdefault(str(a["meter_id"]), set()).add(str(a.get("type")))
    return out


def _audit_log(cfg: Config) -> Any:
    """The alert manager's audit log (``alerts.audit``): estimates and edits share its chain."""
    from meterwatch.alerts.audit import audit_log_from_config

    return audit_log_from_config(cfg.alerts)


def estimate_entries(intervals: pd.DataFrame) -> list[tuple[str, dict[str, Any]]]:
    """One audit entry per run of consecutive estimated intervals of a meter (same method)."""
    from meterwatch.analytics.base import episodes, plain

    est = intervals["quality"].to_numpy() == "estimated"
    if not est.any():
        return []
    groups = pd.factorize(
        intervals["meter_id"].astype(str) + "|" + intervals["method"].astype(str)
    )[0]
    starts, ends, _ = episodes(est, groups)
    kwh = intervals["kwh"].to_numpy(dtype=float)
    csum = np.r_[0.0, np.cumsum(np.nan_to_num(kwh))]
    entries = []
    for s, e in zip(starts, ends, strict=True):  # loop over runs only, to write them
        row = intervals.iloc[s]
        entries.append(
            (
                "vee.estimate",
                plain(
                    {
                        "meter_id": row["meter_id"],
                        "from": row["interval_start"],
                        "to": intervals["ts"].iloc[e],
                        "intervals": int(e - s + 1),
                        "method": row["method"],
                        "kwh_total": float(csum[e + 1] - csum[s]),
                        "reasons": row["reasons"],
                        "rule_set_version": row["rule_set_version"],
                        "data_version": int(row["data_version"]),
                    }
                ),
            )
        )
    return entries


def _period(value: str, tz: str, what: str) -> pd.Timestamp:
    """A date (local midnight in ``tz``) or an ISO timestamp (UTC if naive) as UTC."""
    try:
        t = pd.Timestamp(value)
    except ValueError as exc:
        raise MeterWatchError(f"{what}: {value!r} is not a date or ISO timestamp") from exc
    if t.tzinfo is None:
        t = t.tz_localize(tz) if len(value.strip()) <= 10 else t.tz_localize("UTC")
    return t.tz_convert("UTC")


def _store(cfg: Config, meters: pd.DataFrame | None = None) -> Any:
    """The configured store (``meters``: InfluxDB tags), through the running service if it
    holds the embedded store (meterwatch/control.py)."""
    from meterwatch.control import open_store

    return open_store(cfg.storage, meters)


#: VEE event code -> billing alert type (contracts §3).
_EVENT_ALERT = {
    "stuck_register": "meter_stuck",
    "runaway": "meter_runaway",
    "energy_power_mismatch": "energy_power_mismatch",
    "multiplier_mismatch": "multiplier_mismatch",
    "clock_error": "clock_error",
    "estimation_excess": "estimation_excess",
    "register_decrease": "register_decrease",
}


# ------------------------------------------------------------------------------ commands


@click.group("export")
def export() -> None:
    """Export validated data."""


@export.command("billing")
@click.option("--from", "date_from", required=True, help="First day (local date) or ISO time.")
@click.option("--to", "date_to", required=True, help="End (exclusive): local date or ISO time.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False))
@click.option("--config", "config_path", default="config.yaml", show_default=True)
@click.option("--meters", "meters_path", default=None, help="Registry file (default: config).")
def export_billing(
    date_from: str, date_to: str, out_path: str, config_path: str, meters_path: str | None
) -> None:
    """Validate the stored readings of a period and write billing determinants.

    Writes the determinants to OUT and the validated intervals next to it as
    ``<stem>.validated<ext>``; stores the validated intervals as a new data version and
    appends every estimate to the audit log.
    """
    from meterwatch.analytics.billing import billing_determinants
    from meterwatch.analytics.vee import apply_edits

    try:
        cfg = load_config(config_path)
        tz = billing_timezone(cfg)
        start = _period(date_from, tz, "--from")
        end = _period(date_to, tz, "--to")
        if not end > start:
            raise MeterWatchError(f"--to ({date_to}) must be after --from ({date_from})")
        meters = load_meters(cfg, meters_path)
        history = pd.Timedelta(days=max(cfg.vee.like_day_search_days, cfg.vee.usage_history_days))
        interval = pd.Timedelta(seconds=cfg.vee.interval)
        store = _store(cfg, meters)
        try:
            with console.status("reading the stored readings"):
                readings = store.read_readings(start=start - history, end=end + interval * 2)
            now = None if cfg.clock.start is not None else pd.Timestamp.now(tz="UTC")
            with console.status(f"validating {len(readings)} readings"):
                result = validate_readings(
                    readings, meters, cfg, start=start - history, end=end, now=now
                )
            iv = result.intervals
            iv = iv[iv["interval_start"] >= start].reset_index(drop=True)
            stored = store.read_validated_readings(start=start + interval, end=end + interval)
            edits = stored[stored["quality"] == "edited"]
            iv = apply_edits(iv, edits)
            version = store.write_validated_readings(iv)
        finally:
            store.close()
        iv["data_version"] = np.int64(version)
        ev = result.events
        ev = ev[(ev["ends_at"].isna() | (ev["ends_at"] > start)) & (ev["starts_at"] < end)]
        holds = open_billing_alerts(Path(cfg.alerts.feed))
        for meter, code in zip(ev["meter_id"], ev["code"], strict=True):
            if code in _EVENT_ALERT:
                holds.setdefault(str(meter), set()).add(_EVENT_ALERT[code])
        det = billing_determinants(
            iv,
            meters,
            tariff_tables(cfg),
            start=start,
            end=end,
            timezone=tz,
            open_billing_alerts=holds,
            estimated_share_limit=cfg.billing.estimated_share_limit,
            demand_window_s=int(cfg.billing.demand_window),
            interval_s=int(cfg.vee.interval),
        )
        det.insert(det.columns.get_loc("hold_reasons") + 1, "data_version", np.int64(version))
        out = write_table(det, out_path)
        vpath = write_table(iv, out.with_name(f"{out.stem}.validated{out.suffix}"))
        entries = estimate_entries(iv)
        audit = _audit_log(cfg)
        try:
            if entries:
                audit.append_many(entries)
        finally:
            audit.close()
    except (MeterWatchError, ValueError) as exc:
        fail(exc)
        return
    q = iv["quality"].value_counts().to_dict()
    console.print(
        f"{len(det)} meters, {int(det['hold'].sum())} on hold → {out}; {len(iv)} intervals "
        f"({', '.join(f'{k} {v}' for k, v in sorted(q.items()))}) → {vpath}; data version "
        f"{version}; {len(entries)} estimate run(s) audited",
        highlight=False,
    )


@click.group("vee")
def vee() -> None:
    """Validation, estimation and editing of interval data."""


@vee.command("edit")
@click.option("--meter", "meter_id", required=True)
@click.option("--ts", "ts", required=True, help="Interval end, ISO 8601 (UTC if no zone).")
@click.option("--kwh", type=float, required=True, help="Billed energy of the interval [kWh].")
@click.option("--by", "by", required=True, help="Who edits.")
@click.option("--reason", required=True, help="Why.")
@click.option("--config", "config_path", default="config.yaml", show_default=True)
def vee_edit(meter_id: str, ts: str, kwh: float, by: str, reason: str, config_path: str) -> None:
    """Replace one validated interval by a manual value, keeping the prior version."""
    from meterwatch.analytics.base import plain

    try:
        if not np.isfinite(kwh) or kwh < 0:
            raise MeterWatchError(f"--kwh must be a finite number >= 0, got {kwh!r}")
        if not by.strip() or not reason.strip():
            raise MeterWatchError("--by and --reason must not be empty")
        cfg = load_config(config_path)
        t = _period(ts, "UTC", "--ts")
        # InfluxDB tags the edit from the registry, so it replaces the interval's point.
        store = _store(cfg, load_meters(cfg, None) if cfg.storage.backend == "influx" else None)
        try:
            prior = store.read_validated_readings([meter_id], t, t + pd.Timedelta(microseconds=1))
            if prior.empty:
                raise MeterWatchError(
                    f"no validated interval of meter {meter_id} ending at {t.isoformat()}; "
                    "run `meterwatch export billing` for its period first"
                )
            row = prior.iloc[[0]].copy()
            before = row.iloc[0].to_dict()
            row["kwh"] = float(kwh)
            row["quality"] = "edited"
            row["method"] = "manual_edit"
            row["edited_by"] = by
            row["edit_reason"] = reason
            version = store.write_validated_readings(row.drop(columns=["written_at"]))
        finally:
            store.close()
        audit = _audit_log(cfg)
        try:
            audit.append(
                "vee.edit",
                plain(
                    {
                        "meter_id": meter_id,
                        "ts": t,
                        "kwh": float(kwh),
                        "data_version": version,
                        "by": by,
                        "reason": reason,
                        "prior": {
                            k: before[k]
                            for k in ("kwh", "quality", "method", "reasons", "data_version")
                        },
                    }
                ),
            )
        finally:
            audit.close()
    except MeterWatchError as exc:
        fail(exc)
        return
    console.print(
        f"{meter_id} {t.strftime('%Y-%m-%dT%H:%M:%SZ')}: {before['kwh']} kWh "
        f"({before['quality']}, version {before['data_version']}) → {kwh} kWh (edited, "
        f"version {version}) by {by}",
        highlight=False,
    )
