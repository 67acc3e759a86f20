"""Backup and restore with the InfluxDB backend, against a real influxd 1.x; billing export on it.

The source database holds every measurement; readings and an alert event still wait in the spool
and the alert-event outbox (as they do mid-run, while InfluxDB is slow or down). The backup
(CLI) must hold the database's records plus those pending ones; restored (CLI) into an empty
database it must read back as the source does once the spools are drained. Billing export, which
used to refuse InfluxDB, validates the stored readings and writes a new data version there.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner, Result

from meterwatch.alerts.audit import verify
from meterwatch.alerts.manager import AlertManager
from meterwatch.cli import main
from meterwatch.core.schema import FINDING_COLUMNS
from meterwatch.storage.event_sink import OUTBOX_FILE
from meterwatch.storage.influx import InfluxStore
from meterwatch.storage.measurements import alert_event_frame, normalize_alert_events
from meterwatch.storage.spool import Spool
from tests.support.records import (
    METERS,
    T0,
    assert_tables_equal,
    read_tables,
    sample_readings,
    write_sample,
)
from tests.support.servers import RunningServer, influxdb
from tests.unit.test_billing import registry as billing_registry

ROOT = Path(__file__).resolve().parents[2]
KEY = "influx-backup-test-key"


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with influxdb(tmp_path_factory.mktemp("influx")) as server:
        yield server


def database(server: RunningServer) -> str:
    name = f"mw_{uuid.uuid4().hex[:12]}"
    body = urllib.parse.urlencode({"q": f'CREATE DATABASE "{name}"'}).encode()
    urllib.request.urlopen(f"{server.url}/query", data=body, timeout=10).read()
    return name


def registry() -> pd.DataFrame:
    return billing_registry(METERS, tariff="residential-tou")


def config(root: Path, server: RunningServer, db: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    registry().to_csv(root / "meters.csv", index=False)
    path = root / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "registry": {"path": str(root / "meters.csv")},
                "storage": {
                    "backend": "influx",
                    "influx": {"flavor": "v1", "url": server.url, "database": db},
                    "spool": {"path": str(root / "spool")},
                },
                "alerts": {"feed": str(root / "alerts.jsonl")},
                "tariffs": yaml.safe_load((ROOT / "config.yaml").read_text())["tariffs"],
            }
        )
    )
    return path


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def ok(res: Result) -> str:
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    return " ".join(res.output.split())


def store(server: RunningServer, db: str) -> InfluxStore:
    return InfluxStore(flavor="v1", url=server.url, database=db, tags=registry())


def test_influx_backup_holds_what_the_spools_hold_and_restores_into_an_empty_database(
    influx: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MW_AUDIT_KEY", KEY)
    monkeypatch.chdir(tmp_path)  # settings left at their relative defaults (var/...) land here
    db_a, db_b = database(influx), database(influx)
    cfg_a, cfg_b = config(tmp_path / "a", influx, db_a), config(tmp_path / "b", influx, db_b)
    a = store(influx, db_a)
    write_sample(a)
    # Mid-run: later readings (and a newer copy of a stored one) wait in the spool, an alert
    # change in the alert-event outbox.
    later = sample_readings(30).groupby("meter_id").tail(6)
    newer = sample_readings().iloc[[0]].assign(energy_import_kwh=-1.0)
    spool = Spool(tmp_path / "a" / "spool")
    spool.append(later)
    spool.append(newer)
    spool.close()
    event = alert_event_frame(
        [
            (
                "opened",
                T0 + pd.Timedelta(hours=5),
                {"id": "zz9", "type": "meter_offline", "category": "data_quality"}
                | {"severity": "minor", "meter_id": "M2", "status": "open"}
                | {"starts_at": "2026-01-05T04:45:00Z", "summary": "M2 silent"},
            )
        ]
    )
    outbox = Spool(
        tmp_path / "a" / "spool" / "alert-events",
        file_name=OUTBOX_FILE,
        normalize=normalize_alert_events,
    )
    outbox.append(event)
    outbox.close()
    am = AlertManager(tmp_path / "a" / "alerts.jsonl")
    am.process(
        pd.DataFrame(
            [
                {
                    "type": "register_decrease",
                    "severity": "major",
                    "meter_id": "M1",
                    "transformer_id": "TA01",
                    "starts_at": T0,
                    "ends_at": pd.NaT,
                    "summary": "fell",
                    "evidence": {},
                }
            ]
        )[list(FINDING_COLUMNS)],
        (T0 + pd.Timedelta(hours=1)).to_pydatetime(),
    )
    am.close()

    out = ok(cli("backup", "--out", str(tmp_path / "bk"), "--config", str(cfg_a)))
    assert "InfluxDB" in out and "pending in spools: 19 readings, 1 alert_events" in out
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    assert manifest["backend"] == "influx"
    assert manifest["tables"]["readings"]["rows"] == 72 + 18  # 18 later readings, 1 newer copy
    assert manifest["tables"]["validated_readings"]["rows"] == 16  # InfluxDB: latest versions

    out = ok(cli("restore", str(tmp_path / "bk"), "--config", str(cfg_b)))
    assert "audit log verified" in out
    # the source as it will be once its spools drained
    a.write_readings(pd.concat([later, newer], ignore_index=True))
    a.write_alert_events(event)
    b = store(influx, db_b)
    try:
        expected = read_tables(a, all_versions=False)
        assert (expected["readings"]["energy_import_kwh"] == -1.0).sum() == 1
        assert_tables_equal(read_tables(b, all_versions=False), expected)
    finally:
        b.close()
    assert (tmp_path / "b" / "alerts.jsonl").read_bytes() == (
        tmp_path / "a" / "alerts.jsonl"
    ).read_bytes()
    assert verify(tmp_path / "b" / "alerts-state" / "audit.jsonl", KEY.encode()).ok

    again = cli("restore", str(tmp_path / "bk"), "--config", str(cfg_b))
    assert again.exit_code == 2 and "--force" in again.output

    # Billing export on InfluxDB: a new data version of the exported intervals.
    out = ok(
        cli(
            "export", "billing", "--from", "2026-01-05T00:00Z", "--to", "2026-01-05T06:00Z",
            "--out", str(tmp_path / "bill.csv"), "--config", str(cfg_a),
        )
    )  # fmt: skip
    assert "data version 4" in out
    after = a.read_validated_readings()
    assert (after["data_version"] == 4).sum() == len(pd.read_csv(tmp_path / "bill.validated.csv"))
    a.close()


def test_a_demo_rerun_refuses_an_influx_database_that_holds_the_simulated_period(
    influx: RunningServer, tmp_path: Path
) -> None:
    """InfluxDB cannot be set aside like the embedded store: the rerun says what to change."""
    from meterwatch.config import parse_config
    from meterwatch.core.errors import ConfigError
    from meterwatch.demo import set_aside_previous_run

    db = database(influx)
    cfg = parse_config(
        {
            "clock": {"start": "2026-01-05T00:00:00Z", "speed": 2400},
            "simulator": {"enabled": True},
            "storage": {
                "backend": "influx",
                "influx": {"flavor": "v1", "url": influx.url, "database": db},
                "spool": {"path": str(tmp_path / "spool")},
            },
            "alerts": {"feed": str(tmp_path / "alerts.jsonl")},
        }
    )
    assert set_aside_previous_run(cfg) is None  # an empty database: a first run
    s = store(influx, db)
    s.write_readings(sample_readings(2, start=T0 - pd.Timedelta(days=1)))
    assert set_aside_previous_run(cfg) is None  # readings before clock.start: no replay
    s.write_readings(sample_readings(2))
    s.close()
    with pytest.raises(ConfigError) as info:
        set_aside_previous_run(cfg)
    ((setting, message),) = info.value.problems
    assert setting == "storage.influx.database" and db in message and "2026-01-05T00:00Z" in message
