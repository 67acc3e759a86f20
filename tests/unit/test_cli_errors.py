"""No traceback from a user mistake: every case is one ``error:`` line and a non-zero exit.

Each case runs the command line in process (click's CliRunner, which would hand back any
exception that escaped as ``result.exception``) and checks what a user sees: exactly one line
with ``error:`` (click's own usage errors say ``Error:``), naming what was wrong, no traceback.
The cases are the user mistakes of issue 16 (a port already in use for each server, bad
durations, evaluation sizes) and every refused request of the other CLI tests.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from meterwatch.cli import main
from meterwatch.storage.embedded import EmbeddedStore
from tests.support.records import sample_readings
from tests.support.servers import free_port
from tests.support.sites import small_site

ERROR_LINE = re.compile(r"\berror:", re.IGNORECASE)


def one_error(res: Result, *expected: str) -> str:
    """The single error line of a refused command; fails on a traceback or a second line."""
    text = res.output
    assert res.exit_code != 0, text
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if ERROR_LINE.search(line)]
    assert len(lines) == 1, text
    for part in expected:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    return lines[0]


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@contextmanager
def port_taken() -> Iterator[int]:
    """A port another program listens on (as a server would bind it)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


# ---------------------------------------------------------------- servers: a port in use

SERVERS: dict[str, Callable[[int], dict[str, dict[str, object]]]] = {
    "metrics.port": lambda p: {"metrics": {"enabled": True, "port": p}},
    "alerts.http.port": lambda p: {"alerts": {"http": {"enabled": True, "port": p}}},
    "collector.mqtt.port": lambda p: {
        "collector": {"mqtt": {"enabled": True, "broker": "embedded", "port": p}}
    },
    "simulator.modbus.port": lambda p: {"simulator": {"modbus": {"port": p}}},
}


@pytest.mark.parametrize("setting", list(SERVERS))
def test_a_port_in_use_names_the_setting_and_the_port(
    setting: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MW_ALERTS_TOKEN", "t")
    monkeypatch.setenv("MW_AUDIT_KEY", "k")
    with port_taken() as port:
        config = small_site(tmp_path, **SERVERS[setting](port))
        res = cli("run", "--config", str(config), "--duration", "5")
    one_error(res, setting, f"127.0.0.1:{port}")
    # nothing left open: the store can be opened again at once
    EmbeddedStore(tmp_path / "var" / "store.duckdb").close()


# ---------------------------------------------------------------- options and sizes


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--duration", "0"], ["--duration", "0"]),
        (["run", "--duration", "-5"], ["--duration", "-5"]),
        (["evaluate", "--meters", "50"], ["meters=50", "use more meters"]),
        (["evaluate", "--meters", "10"], ["--meters", "at least 20"]),
        (["evaluate", "--meters", "200", "--days", "3"], ["days=3", "more than 17 days"]),
        (["run", "--config", "nope.yaml"], ["nope.yaml", "not found"]),
        (["config", "check", "nope.yaml"], ["nope.yaml", "1 problem(s)"]),
        (["backup", "--out", "bk", "--config", "nope.yaml"], ["nope.yaml", "not found"]),
        (["audit", "verify", "--log", "nope.jsonl"], ["audit"]),
        (["probe", "dlt645", "--address", "000000001234"], ["--host", "--serial-port"]),
        (
            ["probe", "dlt645", "--host", "127.0.0.1", "--serial-port", "/dev/x", "--address", "1"],
            ["not both"],
        ),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0][0] != "-" else None,
)
def test_refused_options(
    args: list[str], expected: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MW_AUDIT_KEY", raising=False)
    one_error(cli(*args), *expected)


def test_probes_of_a_meter_that_is_not_there(tmp_path: Path) -> None:
    port = str(free_port())
    base = ["probe", "modbus", "--host", "127.0.0.1", "--port", port, "--unit", "1"]
    one_error(cli(*base, "--model", "eastron-sdm630", "--timeout", "0.5"), "connection refused")
    one_error(cli(*base, "--model", "acme-9000"), "acme-9000", "eastron-sdm630")
    one_error(cli("probe", "mqtt", "--host", "127.0.0.1", "--port", port), "refused")


def test_a_bad_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt:\n  qos: 3\nsimulator:\n  enabled: true\n")
    one_error(cli("config", "check", str(bad)), "bad.yaml", "1 problem(s)")
    one_error(cli("run", "--config", str(bad)), "collector.mqtt.qos")
    bad.write_text("mqtt: [\n")
    one_error(cli("config", "check", str(bad)), "bad.yaml")
    bad.write_text("simulator:\n  enabled: true\nanalytics:\n  detectors:\n    phase_brake: {}\n")
    one_error(cli("run", "--config", str(bad), "--duration", "1"), "phase_brake: unknown key")


# ---------------------------------------------------------------- files and records


def test_analyze_of_a_header_only_file_warns_and_writes_an_empty_out(tmp_path: Path) -> None:
    (tmp_path / "readings.csv").write_text("meter_id,ts,energy_import_kwh\n")
    meters = tmp_path / "sim"
    assert cli("simulate", "--out", str(meters), "--days", "0.1").exit_code == 0
    out = tmp_path / "alerts.jsonl"
    res = cli(
        "analyze", "--readings", str(tmp_path / "readings.csv"),
        "--meters", str(meters / "meters.csv"), "--out", str(out),
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "no readings" in res.output
    assert out.exists() and out.read_text() == ""
    (tmp_path / "r.txt").write_text("x")
    one_error(
        cli("analyze", "--readings", str(tmp_path / "r.txt"), "--meters", str(meters / "meters.csv"), "--out", str(out)),
        "use .csv or .parquet",
    )  # fmt: skip
    (tmp_path / "r.csv").write_text("meter,when\n")
    one_error(
        cli("analyze", "--readings", str(tmp_path / "r.csv"), "--meters", str(meters / "meters.csv"), "--out", str(out)),
        "missing column(s) meter_id, ts",
    )  # fmt: skip


def test_alert_actions_that_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    from meterwatch.alerts.manager import AlertManager
    from meterwatch.core.schema import FINDING_COLUMNS

    monkeypatch.setenv("MW_AUDIT_KEY", "k")
    monkeypatch.chdir(tmp_path)
    feed = tmp_path / "alerts.jsonl"
    am = AlertManager(feed)
    finding = {
        "type": "voltage_loss", "severity": "major", "meter_id": "M1", "transformer_id": "TA01",
        "starts_at": pd.Timestamp("2026-01-05T10:00Z"), "ends_at": pd.NaT, "summary": "s",
        "evidence": {},
    }  # fmt: skip
    ((_, alert),) = am.process(
        pd.DataFrame([finding])[list(FINDING_COLUMNS)], datetime(2026, 1, 5, 12, tzinfo=UTC)
    )
    am.close()
    f = ["--feed", str(feed)]
    assert cli("alerts", "ack", alert.id, *f, "--at", "2026-01-05T12:00Z").exit_code == 0
    one_error(cli("alerts", "ack", alert.id, *f), "already acknowledged")
    one_error(cli("alerts", "show", "nope", *f), "no alert with id 'nope'")
    one_error(cli("alerts", "resolve", alert.id, *f, "--at", "noon"), "--at", "'noon'")
    one_error(cli("alerts", "silence", "colour", *f, "--comment", "c"), "colour")
    one_error(cli("alerts", "list", "--config", "nope.yaml"), "nope.yaml")


def test_billing_backup_and_restore_requests_that_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MW_AUDIT_KEY", "k")
    monkeypatch.chdir(tmp_path)
    config = small_site(tmp_path)
    store = EmbeddedStore(tmp_path / "var" / "store.duckdb")
    store.write_readings(sample_readings(8))
    store.close()
    assert cli("simulate", "--out", "sim", "--days", "0.1").exit_code == 0
    c = ["--config", str(config), "--meters", "sim/meters.csv"]
    period = ["--from", "2026-01-05", "--to", "2026-01-06"]
    one_error(cli("export", "billing", "--from", "2026-01-06", "--to", "2026-01-05", "--out", "b.csv", *c), "must be after")  # fmt: skip
    one_error(cli("export", "billing", *period, "--out", "b.xlsx", *c), "use .csv or .parquet")
    c = c[:2]
    one_error(
        cli("vee", "edit", "--meter", "M1", "--ts", "2026-01-05T01:00Z", "--kwh", "1", "--by", "li", "--reason", "r", *c),
        "run `meterwatch export billing`",
    )  # fmt: skip
    one_error(
        cli("vee", "edit", "--meter", "M1", "--ts", "2026-01-05T01:00Z", "--kwh", "-1", "--by", "li", "--reason", "r", *c),
        "--kwh must be a finite number >= 0",
    )  # fmt: skip
    assert cli("backup", "--out", "bk", *c).exit_code == 0
    one_error(cli("backup", "--out", "bk", *c), "not empty", "--force")
    one_error(cli("restore", "bk", *c), "already holds 24 readings", "--force")
    (tmp_path / "empty").mkdir()
    one_error(cli("restore", "empty", *c), "not a MeterWatch backup")
