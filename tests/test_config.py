"""Config parsing: the shipped file is valid; bad input names the field path and value."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from meterwatch.cli import main
from meterwatch.config import load_config, parse_config, parse_duration
from meterwatch.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_config_is_valid() -> None:
    cfg = load_config(ROOT / "config.yaml")
    assert cfg.simulator.enabled
    assert cfg.collector.modbus.interval == 900.0
    assert cfg.analytics.window == 8 * 86400


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (900, 900.0),
        ("900", 900.0),
        ("15m", 900.0),
        ("6h", 21600.0),
        ("2d", 172800.0),
        ("1h30m", 5400.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["6q", "h", "", "1h 2x", True])
def test_bad_duration(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_every_problem_is_reported_with_path_and_value() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "clock": {"speed": -1, "start": "2026-01-01T00:00:00Z"},
                "mqtt": {"port": 70000, "topic": "meters/reading"},
                "simulator": {"enabled": True, "anomalies": [{"type": "bogus", "at": "6q"}]},
                "storage": {"pathh": "x"},
            },
            source="bad.yaml",
        )
    problems = dict(info.value.problems)
    assert "clock.speed" in problems and "-1" in problems["clock.speed"]
    assert "collector.mqtt.port" in problems and "70000" in problems["collector.mqtt.port"]
    assert "{meter_id}" in problems["collector.mqtt.topic"]
    assert (
        "simulator.anomalies.0.type" in problems
        and "bogus" in problems["simulator.anomalies.0.type"]
    )
    assert "'6q'" in problems["simulator.anomalies.0.at"]
    assert problems["storage.pathh"].startswith("unknown key")
    assert str(info.value).startswith("bad.yaml: 6 problem(s)")


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError, match="registry.path is required"):
        parse_config({})
    with pytest.raises(ConfigError, match="needs clock.start"):
        parse_config({"clock": {"speed": 10}, "simulator": {"enabled": True}})


def test_config_check_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["config", "check", str(ROOT / "config.yaml")])
    assert ok.exit_code == 0, ok.output
    assert "OK" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt:\n  qos: 3\n  port: nope\nsimulator:\n  enabled: true\n")
    res = runner.invoke(main, ["config", "check", str(bad)])
    assert res.exit_code == 1
    assert "mqtt.qos" in res.output and "mqtt.port" in res.output and "'nope'" in res.output
    missing = runner.invoke(main, ["config", "check", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 1 and "not found" in missing.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("mqtt: [\n")
    res = runner.invoke(main, ["config", "check", str(broken)])
    assert res.exit_code == 1 and "(yaml)" in res.output
