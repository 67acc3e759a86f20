"""A rerun of the demo starts a fresh demo store; the previous run's files are kept aside.

The demo (``simulator.enabled`` with a simulated clock, ``clock.start``) replays the same
simulated times on every run. Run again on the state of a previous run, it would write them into
the same store next to the previous run's readings of those instants, and the detectors would
see the two runs interleaved (registers that seem to jump back: false ``register_decrease``
alerts). So before such a run, :func:`set_aside_previous_run` moves every state file the config
names (store, spools and outboxes, alert feed and state, delivery outbox, dead letters, the
simulated registry) to ``<store dir>/previous-runs/<UTC time>/``, and the run starts fresh.
Nothing is deleted (``make reset-demo`` clears the demo state).

A previous run is recognised by the service clock it recorded next to the alert feed (it ran
past this run's ``clock.start``) or by the store holding readings from ``clock.start`` on.
With InfluxDB the database cannot be moved aside: a database that already holds readings of the
simulated period is an error naming the setting.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd

from meterwatch.alerts.manager import CLOCK_FILE, CLOCK_STALE_S, default_state_dir
from meterwatch.config import Config
from meterwatch.core.errors import ConfigError, StorageError

PREVIOUS_RUNS = "previous-runs"


def _recorded_clock(cfg: Config) -> tuple[pd.Timestamp | None, bool]:
    """Where the previous service's clock stood (``<state_dir>/clock.json``), and whether that
    service still runs (it rewrites the record every few seconds until it stops)."""
    state = cfg.alerts.state_dir or default_state_dir(cfg.alerts.feed)
    try:
        record = json.loads((state / CLOCK_FILE).read_text(encoding="utf-8"))
        at = pd.Timestamp(record["service_time"]).tz_convert("UTC")
        age = (pd.Timestamp.now(tz="UTC") - pd.Timestamp(record["wall_time"])).total_seconds()
        return at, bool(record["running"]) and age <= CLOCK_STALE_S
    except (OSError, ValueError, KeyError, TypeError):
        return None, False


def _store_end(path: Path) -> tuple[pd.Timestamp | None, bool]:
    """The latest reading in an embedded store file, and whether another process holds the file
    (a running service: then nothing is moved, and the run reports the lock)."""
    if not path.exists():
        return None, False
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return None, True
    try:
        (last,) = con.execute("SELECT max(ts) FROM readings").fetchall()[0]
    except duckdb.Error:
        return None, False  # no readings table yet
    finally:
        con.close()
    return (None if last is None else pd.Timestamp(last).tz_localize("UTC")), False


def state_paths(cfg: Config) -> list[Path]:
    """Every file or directory a run of ``cfg`` keeps its state in."""
    st, al = cfg.storage, cfg.alerts
    state_dir = al.state_dir or default_state_dir(al.feed)
    paths = [al.feed, state_dir, al.delivery.state_dir, st.alert_events_dir]
    if al.audit.path is not None:
        paths.append(al.audit.path)
    if st.backend == "embedded":
        paths += [st.path, Path(f"{st.path}.wal")]
    elif st.influx is not None:
        paths.append(st.influx.dead_letter)
    if st.uses_spool:
        paths.append(st.spool.path)
    if cfg.collector.mqtt.enabled:
        paths.append(cfg.collector.mqtt.dead_letter)
    if cfg.simulator.registry_out is not None:
        paths.append(cfg.simulator.registry_out)
    return list(dict.fromkeys(p for p in paths if p.exists()))


def set_aside_previous_run(cfg: Config, now: datetime | None = None) -> str | None:
    """Before a demo run: move a previous run's state aside; return what was done (None: a
    first run, or not a demo)."""
    start = cfg.clock.start
    if not cfg.simulator.enabled or start is None:
        return None
    t0 = pd.Timestamp(start)
    t0 = t0.tz_localize("UTC") if t0.tzinfo is None else t0.tz_convert("UTC")
    ended, running = _recorded_clock(cfg)
    if cfg.storage.backend == "embedded":
        store_end, held = _store_end(cfg.storage.path)
        running = running or held
        if store_end is not None and (ended is None or store_end > ended):
            ended = store_end
    if running:
        return None  # never move the files of a running service; the run says it is in use
    if cfg.storage.backend == "influx":
        _refuse_replay_into_influx(cfg, t0)
    if ended is None or ended < t0:
        return None
    paths = state_paths(cfg)
    if not paths:
        return None
    base = cfg.storage.path.parent
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    target = base / PREVIOUS_RUNS / stamp
    target.mkdir(parents=True, exist_ok=False)
    for p in paths:
        try:
            rel = p.resolve().relative_to(base.resolve())
        except ValueError:
            rel = Path(p.name)
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(p), str(target / rel))
    return (
        f"demo: the state in {base} is from a previous run of this simulated clock (it reached "
        f"{ended.strftime('%Y-%m-%dT%H:%MZ')}; this run starts again at "
        f"{t0.strftime('%Y-%m-%dT%H:%MZ')}), so this run starts a fresh demo store; the previous "
        f"run's files are in {target} (make reset-demo clears the demo state)"
    )


def _refuse_replay_into_influx(cfg: Config, t0: pd.Timestamp) -> None:
    """InfluxDB cannot be set aside: refuse a database that holds the simulated period."""
    from meterwatch.storage.factory import build_store

    store = build_store(cfg.storage)
    try:
        held = store.has_points("readings", since=t0)  # type: ignore[attr-defined]
    except StorageError:
        return  # unreachable now: the run itself reports it (and spools meanwhile)
    finally:
        store.close()
    if held:
        raise ConfigError(
            "storage.influx",
            [
                (
                    "storage.influx.database",
                    f"{cfg.storage.influx.database if cfg.storage.influx else ''} already holds "
                    f"readings from clock.start ({t0.strftime('%Y-%m-%dT%H:%MZ')}) on: a new run "
                    "of the simulated clock would write the same times into it. Use a new "
                    "database (or bucket), or drop this one",
                )
            ],
        )
