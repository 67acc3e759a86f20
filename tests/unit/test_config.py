"""Config parsing: the shipped file is valid; bad input names the field path and value."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from meterwatch.cli import main
from meterwatch.config import load_config, parse_config, parse_duration
from meterwatch.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


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
    # An MQTT-only collector needs no registry (ingest only; analytics off without one).
    assert parse_config({}).registry.path is None
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


def _check(tmp_path: Path, text: str) -> tuple[int, str]:
    path = tmp_path / "c.yaml"
    path.write_text("simulator:\n  enabled: true\n" + text)
    res = CliRunner().invoke(main, ["config", "check", str(path)])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res.exit_code, res.output


def test_config_check_names_a_misspelled_detector_and_the_known_ones(tmp_path: Path) -> None:
    code, out = _check(tmp_path, "analytics:\n  detectors:\n    consumption_spyke: {ratio: 3}\n")
    assert code == 1
    assert "analytics.detectors.consumption_spyke: unknown key; known:" in out
    assert "consumption_spike" in out and "theft_suspected" in out


def test_config_check_names_a_misspelled_parameter_and_the_known_ones(tmp_path: Path) -> None:
    code, out = _check(tmp_path, "analytics:\n  detectors:\n    consumption_spike: {ratoi: 3}\n")
    assert code == 1
    assert "analytics.detectors.consumption_spike.ratoi: unknown key; known: ratio" in out


def test_config_check_reports_a_bad_detector_value_with_the_detectors_message(
    tmp_path: Path,
) -> None:
    code, out = _check(tmp_path, "analytics:\n  detectors:\n    consumption_spike: {ratio: -3}\n")
    assert code == 1 and "analytics.detectors.consumption_spike" in out
    assert "ratio must be a finite number > 0" in out
    code, out = _check(tmp_path, "analytics:\n  detectors:\n    low_power_factor: {limit: x}\n")
    assert code == 1 and "analytics.detectors.low_power_factor.limit" in out


def test_valid_detector_parameters_reach_the_detectors(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "simulator": {"enabled": True},
            "analytics": {"detectors": {"consumption_spike": {"ratio": 3}}},
        }
    )
    assert cfg.analytics.detector_params() == {"consumption_spike": {"ratio": 3.0}}
    from meterwatch.analytics.registry import build_detectors

    spike = [
        d
        for d in build_detectors(cfg.analytics.detector_params())
        if d.alert_types == ("consumption_spike",)
    ]
    assert spike[0].ratio == 3.0


def test_run_with_a_misspelled_detector_is_one_error_line_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("simulator:\n  enabled: true\nanalytics:\n  detectors:\n    phase_brake: {}\n")
    res = CliRunner().invoke(main, ["run", "--config", str(path), "--duration", "1"])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit)
    assert "analytics.detectors.phase_brake: unknown key" in res.output
    assert "Traceback" not in res.output


def test_unknown_keys_list_the_known_ones_at_any_depth() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"simulator": {"enabled": True}, "collector": {"modbuss": {}}})
    ((path, msg),) = info.value.problems
    assert path == "collector.modbuss" and "known: modbus, dlt645, mqtt, maps" in msg


def test_top_level_mqtt_is_read_as_collector_mqtt() -> None:
    cfg = parse_config({"simulator": {"enabled": True}, "mqtt": {"port": 1999}})
    assert cfg.collector.mqtt.port == 1999
    with pytest.raises(ConfigError, match="moved to collector.mqtt"):
        parse_config({"mqtt": {}, "collector": {"mqtt": {}}, "simulator": {"enabled": True}})


def test_config_init_writes_a_commented_config_for_real_meters_that_check_accepts(
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    path = tmp_path / "etc" / "config.yaml"
    res = runner.invoke(main, ["config", "init", str(path)])
    assert res.exit_code == 0, res.output
    text = path.read_text(encoding="utf-8")
    assert text.count("#") > 40  # commented
    cfg = load_config(path)
    assert not cfg.simulator.enabled and cfg.clock.start is None  # real meters, wall clock
    (gateway,) = cfg.collector.modbus.gateways
    assert gateway.transport == "tcp" and gateway.port == 502 and gateway.devices != "simulator"
    assert cfg.registry.path == Path("meters.csv") and cfg.storage.backend == "embedded"
    check = runner.invoke(main, ["config", "check", str(path)])
    assert check.exit_code == 0 and "OK" in check.output, check.output

    path.write_text("site: {name: mine}\n")
    again = runner.invoke(main, ["config", "init", str(path)])
    assert again.exit_code == 2 and "--force" in again.output
    assert path.read_text() == "site: {name: mine}\n"  # not overwritten
    demo = runner.invoke(main, ["config", "init", "--demo", "--force", str(path)])
    assert demo.exit_code == 0, demo.output
    assert path.read_text(encoding="utf-8") == (ROOT / "config.yaml").read_text(encoding="utf-8")


def test_run_without_a_config_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["run"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    said = " ".join(res.output.split())
    assert "config.yaml: not found" in said and "meterwatch config init" in said
