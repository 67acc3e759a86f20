"""`meterwatch backup` → a fresh directory → `meterwatch restore`: everything the service keeps.

1. A service run (simulated fleet over Modbus TCP and MQTT, embedded store, MQTT alert delivery)
   followed by the work an operator does with the CLI (billing export: a new data version and
   audited estimates; a manual VEE edit; an alert acknowledged; a silence), then backup, restore
   into a fresh directory, and every table, the alert feed, its state files, the audit log and
   the delivery outbox compared with the originals. The audit key is not in the backup: the
   restored log is read without it, refused for writing until the original key is back, and
   then verifies.
2. The same commands while `meterwatch run` runs (a subprocess), for both backends: with the
   embedded store the backup is a snapshot taken by the service and the export and the edit go
   through it; with InfluxDB (a real influxd 1.x) the backup reads the spool and the database.
   The store the service leaves holds every reading of the backup, the export's data version
   and the edit, and the backup restores on its own.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner, Result

from meterwatch.cli import main
from meterwatch.config import parse_config
from meterwatch.service import Service
from meterwatch.storage.influx import InfluxStore
from tests.support.records import assert_tables_equal, embedded_tables, read_tables
from tests.support.servers import RunningServer, free_port, influxdb, stop_process

METERWATCH = Path(sys.executable).with_name("meterwatch")
ROOT = Path(__file__).resolve().parents[2]


def site_config(speed: float = 3600) -> dict[str, Any]:
    """A small simulated site with relative paths (as a gateway's config would have)."""
    return {
        "clock": {"start": "2026-01-05T00:00:00Z", "speed": speed},
        "simulator": {
            "enabled": True,
            "seed": 5,
            "residential": 4,
            "commercial": 2,
            "industrial": 1,
            "transformers": 1,
            "mqtt_share": 0.3,
            "modbus": {"host": "127.0.0.1", "port": free_port()},
            "registry_out": "var/meters.csv",
            "anomalies": [
                {"type": "phase_break", "at": "1h", "duration": "2h"},
                {"type": "register_decrease", "at": "3h", "magnitude": 50},
            ],
        },
        "collector": {
            "modbus": {
                "interval": "15m",
                "gateways": [
                    {"name": "sim", "host": "127.0.0.1", "port": 1, "devices": "simulator"}
                ],
            },
            "mqtt": {"enabled": True, "broker": "embedded", "port": free_port()},
        },
        "storage": {"path": "var/meterwatch.duckdb", "health_interval": "1h"},
        "analytics": {"interval": "1h", "window": "2d", "validation_interval": "2h"},
        "tariffs": yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))["tariffs"],
        "alerts": {
            "feed": "var/alerts.jsonl",
            "verify_after_intervals": 1,
            "delivery": {"state_dir": "var/delivery", "mqtt": {"enabled": True}},
        },
    }


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def ok(res: Result) -> str:
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


def edit(row: pd.Series, kwh: str, reason: str) -> Result:
    """`meterwatch vee edit` of the validated interval ``row`` (from an export's file)."""
    args = ["--meter", row["meter_id"], "--ts", row["ts"], "--kwh", kwh]
    return cli("vee", "edit", *args, "--by", "li", "--reason", reason)


def outbox_rows(path: Path) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT * FROM outbox ORDER BY seq").fetchall()
    finally:
        con.close()


def first_alert_id(feed: Path, *status: str) -> str:
    """The id of the first alert in one of ``status`` (default open) in the feed."""
    import json

    latest = {}
    for line in feed.read_text(encoding="utf-8").splitlines():
        a = json.loads(line)
        latest[a["id"]] = a
    return next(a["id"] for a in latest.values() if a["status"] in (status or ("open",)))


def test_everything_survives_backup_and_restore_into_a_fresh_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MW_AUDIT_KEY", raising=False)  # the service generates a key file
    site, fresh = tmp_path / "site", tmp_path / "fresh"
    site.mkdir()
    fresh.mkdir()
    config = site_config()
    (site / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(site)
    summary = asyncio.run(Service(parse_config(config)).run(8))
    assert summary.counters.get("validated_rows_written", 0) > 0
    assert summary.alerts_by_type.get("phase_break") and summary.alerts_by_type.get(
        "register_decrease"
    )

    # What an operator does between runs, all through the CLI.
    out = ok(
        cli("export", "billing", "--from", "2026-01-05", "--to", "2026-01-06", "--out", "bill.csv")
    )
    assert "estimate run(s) audited" in out
    bill = pd.read_csv("bill.validated.csv")
    row = bill[bill["quality"] == "actual"].iloc[0]
    ok(edit(row, "1.5", "meter swap"))
    ok(
        cli(
            "alerts",
            "ack",
            first_alert_id(site / "var" / "alerts.jsonl"),
            "--by",
            "li",
            "--note",
            "on site",
        )
    )
    ok(
        cli(
            "alerts",
            "silence",
            "type=outage",
            "transformer_id=TA01",
            "--comment",
            "works",
            "--author",
            "li",
        )
    )

    var = site / "var"
    before = embedded_tables(var / "meterwatch.duckdb")
    assert before["validated_readings"]["data_version"].nunique() >= 3  # service, export, edit
    assert (before["validated_readings"]["quality"] == "edited").sum() == 1
    state = var / "alerts-state"
    kept = {
        "feed": (var / "alerts.jsonl").read_bytes(),
        "audit": (state / "audit.jsonl").read_bytes(),
        "silences": (state / "silences.jsonl").read_bytes(),
        "verify": (state / "verify.json").read_bytes(),
        "clock": (state / "clock.json").read_bytes(),
    }
    sent = outbox_rows(var / "delivery" / "outbox.sqlite")
    assert sent, "the MQTT sink delivered nothing to compare"
    key = (state / "audit.key").read_bytes()

    out = ok(cli("backup", "--out", str(tmp_path / "bk")))
    assert "the store file (no service running)" in out and "audit key" in out
    assert not list((tmp_path / "bk").rglob("audit.key"))

    # A fresh directory: the same config, nothing else.
    shutil.copy(site / "config.yaml", fresh / "config.yaml")
    monkeypatch.chdir(fresh)
    res = cli("restore", str(tmp_path / "bk"))
    out = ok(res)
    assert "restored" in out and "without its key" in out
    after = embedded_tables(fresh / "var" / "meterwatch.duckdb")
    assert_tables_equal(after, before)
    fvar = fresh / "var"
    fstate = fvar / "alerts-state"
    assert (fvar / "alerts.jsonl").read_bytes() == kept["feed"]
    assert (fstate / "audit.jsonl").read_bytes() == kept["audit"]
    assert (fstate / "silences.jsonl").read_bytes() == kept["silences"]
    assert (fstate / "verify.json").read_bytes() == kept["verify"]
    assert (fstate / "clock.json").read_bytes() == kept["clock"]
    assert outbox_rows(fvar / "delivery" / "outbox.sqlite") == sent

    # The key as the docs say: not restored, never made up by a command that reads.
    listed = ok(cli("alerts", "list"))
    assert "register_decrease" in listed and "acknowledged" in listed
    assert not (fstate / "audit.key").exists()
    active = first_alert_id(fvar / "alerts.jsonl", "acknowledged", "open")
    refused = cli("alerts", "resolve", active)
    assert refused.exit_code == 2 and "MW_AUDIT_KEY" in refused.output
    assert "Traceback" not in refused.output and not (fstate / "audit.key").exists()
    (fstate / "audit.key").write_bytes(key)  # the operator puts the original key back
    verified = ok(cli("audit", "verify", "--strict"))
    assert "OK" in verified
    ok(cli("alerts", "resolve", active, "--note", "fixed"))
    ok(cli("audit", "verify", "--strict"))


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with influxdb(tmp_path_factory.mktemp("influx")) as server:
        yield server


def influx_config(server: RunningServer) -> dict[str, Any]:
    """``storage`` on a new database of ``server`` (the spool under var/)."""
    name = f"mw_{uuid.uuid4().hex[:12]}"
    body = urllib.parse.urlencode({"q": f'CREATE DATABASE "{name}"'}).encode()
    urllib.request.urlopen(f"{server.url}/query", data=body, timeout=10).read()
    return {
        "backend": "influx",
        "influx": {"flavor": "v1", "url": server.url, "database": name},
        "spool": {"path": "var/spool"},
        "health_interval": "1h",
    }


def tables_of(config: dict[str, Any], root: Path) -> dict[str, pd.DataFrame]:
    """Every table of the store ``config`` names (paths relative to ``root``)."""
    storage = config["storage"]
    if storage.get("backend") != "influx":
        return embedded_tables(root / storage["path"])
    influx = storage["influx"]
    store = InfluxStore(flavor="v1", url=influx["url"], database=influx["database"])
    try:
        return read_tables(store, all_versions=False)
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["embedded", "influx"])
def test_backup_export_and_edit_while_the_service_runs(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    monkeypatch.setenv("MW_AUDIT_KEY", "e2e-test-key")
    site = tmp_path / "site"
    site.mkdir()
    config = site_config(speed=2400)
    if backend == "influx":
        config["storage"] = influx_config(request.getfixturevalue("influx"))
    (site / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(site)
    log = (tmp_path / "service.log").open("wb")
    proc = subprocess.Popen(
        [str(METERWATCH), "run", "--config", "config.yaml", "--duration", "40"],
        cwd=site,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    sock = site / "var" / "meterwatch.duckdb.sock"
    try:
        running = site / "var" / "alerts-state" / "clock.json"  # written once it runs
        deadline = time.monotonic() + 30
        while not running.exists() and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "service.log").read_text()[-3000:]
            time.sleep(0.2)
        assert running.exists(), (tmp_path / "service.log").read_text()[-3000:]
        assert sock.exists() == (backend == "embedded")
        time.sleep(12)  # ~8 simulated hours: readings, validated intervals, alerts

        out = ok(cli("backup", "--out", str(tmp_path / "bk")))
        assert ("the running service's store" if backend == "embedded" else "InfluxDB") in out
        out = ok(
            cli(
                "export",
                "billing",
                "--from",
                "2026-01-05T00:00Z",
                "--to",
                "2026-01-05T04:00Z",
                "--out",
                "bill.csv",
            )
        )
        version = int(out.split("data version ")[1].split(";")[0])
        bill = pd.read_csv("bill.validated.csv")
        row = bill[bill["quality"] == "actual"].iloc[0]
        out = ok(edit(row, "9.75", "test"))
        assert f"version {version + 1}" in out or "(edited, version" in out
        assert proc.poll() is None, "the service stopped during the commands"
        assert proc.wait(timeout=90) == 0, (tmp_path / "service.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            stop_process(proc)
        log.close()
    assert not sock.exists()  # removed at stop

    final = tables_of(config, site)
    backed = pd.read_parquet(tmp_path / "bk" / "readings.parquet")
    assert 0 < len(backed) < len(final["readings"])  # a snapshot: the service went on
    keys = set(zip(final["readings"]["meter_id"], final["readings"]["ts"], strict=True))
    assert set(zip(backed["meter_id"], pd.to_datetime(backed["ts"], utc=True), strict=True)) <= keys
    v = final["validated_readings"]
    assert version in set(v["data_version"])
    edited = v[(v["quality"] == "edited") & (v["kwh"] == 9.75)]
    assert edited[["meter_id"]].values.ravel().tolist() == [row["meter_id"]]

    # the snapshot restores on its own (every table consistent with the manifest)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    if backend == "influx":
        config["storage"] = influx_config(request.getfixturevalue("influx"))
    (fresh / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(fresh)
    out = ok(cli("restore", str(tmp_path / "bk")))
    assert "audit log verified" in out
    restored = tables_of(config, fresh)
    assert len(restored["readings"]) == len(backed)
