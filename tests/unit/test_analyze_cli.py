"""`meterwatch analyze` through the CLI: the registry summary, --out always written, counts per
alert type and category."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from meterwatch.cli import main
from meterwatch.core.catalogue import ALERT_CATEGORIES
from meterwatch.simulators.fleet import AnomalySpec, Fleet, generate
from tests.support.servers import free_port

T0 = pd.Timestamp("2026-01-05T00:00:00Z")


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Fleet]:
    """Four days of a small fleet with a register decrease and a phase break."""
    fleet = Fleet(
        start=T0.to_pydatetime(),
        residential=4,
        commercial=2,
        industrial=1,
        transformers=1,
        seed=3,
        anomalies=[
            AnomalySpec("register_decrease", "R0002", 2.2 * 86400),
            AnomalySpec("phase_break", "C0001", 2.5 * 86400, 3 * 3600),
        ],
    )
    readings = generate(fleet, (T0 + pd.Timedelta(days=4)).to_pydatetime(), interval_s=900)
    path = tmp_path_factory.mktemp("faulty") / "readings.parquet"
    readings.to_parquet(path, index=False)
    return path, fleet


def analyze(readings: Path, meters: Path, out: Path) -> tuple[int, str, str]:
    res = CliRunner().invoke(
        main, ["analyze", "--readings", str(readings), "--meters", str(meters), "--out", str(out)]
    )
    return res.exit_code, res.stdout, res.stderr


def test_a_utility_export_loads_and_the_run_reports_defaults_areas_and_counts(
    faulty: tuple[Path, Fleet], tmp_path: Path
) -> None:
    readings, fleet = faulty
    # As a utility export would be: no last_calibration, no max_current_a; the two faulty
    # meters have no known area.
    reg = fleet.registry.drop(columns=["last_calibration", "max_current_a"])
    reg.loc[reg["meter_id"].isin(["R0002", "C0001"]), "transformer_id"] = ""
    meters = tmp_path / "meters.csv"
    reg.to_csv(meters, index=False)
    out = tmp_path / "alerts.jsonl"
    code, stdout, stderr = analyze(readings, meters, out)
    assert code == 0, stdout + stderr
    n = len(reg)
    assert f"registry: {meters}: {n} meters" in stdout
    assert "defaulted: max_current_a (60 A for 6, 6 A for 2)" in stdout
    assert f"last_calibration (unknown: calibration_due not judged) for {n} meters" in stdout
    assert "2 meters without a transformer area: judged by meter-level rules only" in stdout
    feed = [json.loads(line) for line in out.read_text().splitlines()]
    # Meters without an area are still judged by meter-level rules.
    found = {(a["type"], a["meter_id"]) for a in feed}
    assert {("register_decrease", "R0002"), ("phase_break", "C0001")} <= found
    by_type = pd.Series([a["type"] for a in feed]).value_counts()
    assert f"{len(feed)} alerts → {out}" in stdout
    for typ, count in by_type.items():
        assert re.search(rf"{typ} +{count} +\({ALERT_CATEGORIES[typ]}\)", stdout), typ
    by_cat = pd.Series([a["category"] for a in feed]).value_counts()
    listed = re.search(r"^alerts by category: (.+)$", stdout, re.MULTILINE)
    assert listed is not None
    pairs = dict(p.rsplit(" ", 1) for p in listed.group(1).split(", "))
    assert {k: int(v) for k, v in pairs.items()} == by_cat.to_dict()


def test_out_is_written_even_without_alerts(tmp_path: Path) -> None:
    fleet = Fleet(
        start=T0.to_pydatetime(), residential=2, commercial=0, industrial=0, transformers=1
    )
    readings = generate(fleet, (T0 + pd.Timedelta(hours=2)).to_pydatetime(), interval_s=900)
    path = tmp_path / "readings.csv"
    readings.assign(ts=readings["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(path, index=False)
    meters = tmp_path / "meters.csv"
    fleet.registry.to_csv(meters, index=False)
    out = tmp_path / "alerts.jsonl"
    out.write_text('{"stale": "from an earlier run"}\n')
    code, stdout, stderr = analyze(path, meters, out)
    assert code == 0, stdout + stderr
    assert out.exists() and out.read_text() == ""
    assert f"0 alerts → {out} (empty)" in stdout
    assert "alerts by category: none" in stdout


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_bad_registry_value_is_one_error_line_naming_file_row_and_column(
    faulty: tuple[Path, Fleet], tmp_path: Path, fmt: str
) -> None:
    """A CSV is being parsed ahead while the registry loads: the bad registry is still the
    one error line, and the read is cancelled."""
    readings, fleet = faulty
    if fmt == "csv":
        readings = tmp_path / "readings.csv"
        pd.read_parquet(faulty[0]).to_csv(readings, index=False)
    reg = fleet.registry.copy()
    reg.loc[2, "phases"] = 2
    meters = tmp_path / "meters.csv"
    reg.to_csv(meters, index=False)
    out = tmp_path / "alerts.jsonl"
    code, stdout, stderr = analyze(readings, meters, out)
    assert code == 2
    err = " ".join(stderr.split())
    who = reg.loc[2, "meter_id"]
    assert err.startswith(f"error: {meters}: 1 problem(s)")
    assert f"row 4 (meter {who}), column phases: '2', expected 1 or 3" in err
    assert "Traceback" not in stderr + stdout
    assert not out.exists()  # nothing analysed: no feed that could pass for "no alerts"


def test_an_unreachable_scheduler_is_one_error_line_after_the_timeout(
    faulty: tuple[Path, Fleet], tmp_path: Path
) -> None:
    """analytics.scheduler names a port where no Dask scheduler listens: after
    scheduler_timeout, one error line naming the setting, the address and the timeout."""
    readings, fleet = faulty
    meters = tmp_path / "meters.csv"
    fleet.registry.to_csv(meters, index=False)
    address = f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "analyze.yaml"
    config.write_text(f"analytics:\n  scheduler: {address}\n  scheduler_timeout: 1s\n")
    out = tmp_path / "alerts.jsonl"
    res = CliRunner().invoke(
        main,
        ["analyze", "--readings", str(readings), "--meters", str(meters), "--out", str(out)]
        + ["--config", str(config)],
    )
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(
        f"error: analytics.scheduler ({config}) {address}: no Dask scheduler answered within 1 s"
    )
    assert "Traceback" not in res.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--scheduler", "dask-scheduler"],
            "error: --scheduler: 'dask-scheduler' is not a Dask scheduler address; "
            "use tcp://HOST:PORT",
        ),
        (
            ["--scheduler", "tcp://127.0.0.1:8786", "--workers", "2"],
            "error: --workers 2 starts a local Dask cluster, --scheduler names one: "
            "give one of them",
        ),
    ],
)
def test_scheduler_mistakes_are_one_error_line(
    faulty: tuple[Path, Fleet], tmp_path: Path, extra: list[str], message: str
) -> None:
    readings, fleet = faulty
    meters = tmp_path / "meters.csv"
    fleet.registry.to_csv(meters, index=False)
    out = tmp_path / "alerts.jsonl"
    res = CliRunner().invoke(
        main,
        ["analyze", "--readings", str(readings), "--meters", str(meters), "--out", str(out)]
        + extra,
    )
    assert res.exit_code == 2
    assert " ".join(res.stderr.split()).startswith(message), res.stderr
    assert "Traceback" not in res.output


def test_config_check_names_a_bad_scheduler_address(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("analytics:\n  scheduler: udp://10.0.0.5:8786\n")
    res = CliRunner().invoke(main, ["config", "check", str(config)])
    assert res.exit_code != 0
    text = " ".join(res.output.split())
    assert "analytics.scheduler" in text
    assert "'udp://10.0.0.5:8786' is not a Dask scheduler address" in text


def test_a_command_imports_only_its_own_modules() -> None:
    """`meterwatch analyze` loads neither the service's config models nor the other commands'
    modules; --help still lists every command, and a lazily loaded one runs."""
    import subprocess
    import sys

    code = (
        "import sys, meterwatch.cli as c; from click.testing import CliRunner; "
        "print(sorted(m for m in sys.modules if m.startswith(('meterwatch.cli_', "
        "'meterwatch.config', 'meterwatch.collector')))); "
        "r = CliRunner().invoke(c.main, ['--help']); print(r.output); "
        "r = CliRunner().invoke(c.main, ['alerts', '--help']); print(r.exit_code, r.output)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, rest = done.stdout.split("\n", 1)
    assert loaded == "['meterwatch.cli_output']"
    for command in ("alerts", "analyze", "audit", "backup", "baselines", "evaluate", "probe"):
        assert re.search(rf"^\s+{command}\s", rest, re.M), command
    assert "0 Usage: main alerts" in rest
