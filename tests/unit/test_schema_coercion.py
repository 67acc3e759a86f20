"""Non-numeric quantity values are counted and reported, never turned into NaN silently."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from meterwatch.cli import main
from meterwatch.console import coercion_warnings
from meterwatch.core.schema import COERCED_EXAMPLES, READING_FIELDS, normalize_readings
from meterwatch.simulators.fleet import Fleet, generate

CSV = """meter_id,ts,power_kw,voltage_l1_v,energy_import_kwh,frequency_hz
m1,2026-01-05T00:15:00Z,1.5,230.1,10.0,50.0
m2,2026-01-05T00:15:00Z,err,,11.0,50.0
m3,2026-01-05T00:15:00Z,"1,5",NaN,12.0,
m4,2026-01-05T00:30:00Z,2.0,229.0,13.0,n/a
m5,2026-01-05T00:30:00Z,-,231.0,kWh,50.0
"""


def _read(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), dtype={"meter_id": str})


def test_counts_per_column_and_keeps_examples() -> None:
    out = normalize_readings(_read(CSV))
    # "err", "1,5", "-" in power_kw; "kWh" in energy; empty, NaN and n/a are plain missing values
    assert out.attrs["coerced"] == {"power_kw": 3, "energy_import_kwh": 1}
    ex = out.attrs["coerced_examples"]
    assert [(e["row"], e["meter_id"], e["value"]) for e in ex["power_kw"]] == [
        (1, "m2", "err"),
        (2, "m3", "1,5"),
        (4, "m5", "-"),
    ]
    assert ex["energy_import_kwh"][0]["ts"] == pd.Timestamp("2026-01-05T00:30:00Z")
    # the values themselves are still NaN (nothing else changes)
    assert out["power_kw"].isna().tolist() == [False, True, True, False, True]
    assert out["frequency_hz"].isna().sum() == 2 and "frequency_hz" not in out.attrs["coerced"]


def test_clean_and_float_frames_report_nothing() -> None:
    clean = normalize_readings(
        _read(
            CSV.replace("err", "3")
            .replace('"1,5"', "1.5")
            .replace(",-,", ",4,")
            .replace("kWh", "14")
        )
    )
    assert clean.attrs["coerced"] == {} and clean.attrs["coerced_examples"] == {}
    as_float = normalize_readings(clean)  # float64 columns: no check, still attached
    assert as_float.attrs["coerced"] == {}


def test_examples_are_capped_but_the_count_is_not() -> None:
    n = 50
    df = pd.DataFrame(
        {
            "meter_id": [f"m{i}" for i in range(n)],
            "ts": pd.date_range("2026-01-05", periods=n, freq="15min", tz="UTC"),
            "power_kw": np.where(np.arange(n) % 2 == 0, "1.0", "bad").astype(object),
        }
    )
    out = normalize_readings(df)
    assert out.attrs["coerced"] == {"power_kw": n // 2}
    assert len(out.attrs["coerced_examples"]["power_kw"]) == COERCED_EXAMPLES
    lines = coercion_warnings("x.csv", out)
    assert lines[0].startswith("x.csv: column power_kw: 25 non-numeric value(s)")
    assert "row 1 (m1 2026-01-05T00:15:00Z): 'bad'" in lines[0]


def test_object_columns_from_records_are_checked() -> None:
    # e.g. readings built from JSON records: numbers and strings mixed in one column
    df = pd.DataFrame.from_records(
        [
            {"meter_id": "a", "ts": "2026-01-05T00:00:00Z", "voltage_l1_v": 230.0},
            {"meter_id": "a", "ts": "2026-01-05T00:15:00Z", "voltage_l1_v": "OVF"},
            {"meter_id": "a", "ts": "2026-01-05T00:30:00Z", "voltage_l1_v": None},
        ]
    )
    out = normalize_readings(df)
    assert out.attrs["coerced"] == {"voltage_l1_v": 1}
    assert set(out.columns) >= set(READING_FIELDS)


def test_analyze_warns_naming_file_column_and_count(tmp_path: Path) -> None:
    t0 = pd.Timestamp("2026-01-05T00:00:00Z")
    fleet = Fleet(
        start=t0.to_pydatetime(), residential=3, commercial=0, industrial=0, transformers=1, seed=3
    )
    r = generate(fleet, (t0 + pd.Timedelta(hours=3)).to_pydatetime(), interval_s=900)
    text = r.copy()
    text["ts"] = text["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    text["power_kw"] = text["power_kw"].astype(object)
    bad_rows = [2, 7, 11]
    for i in bad_rows:
        text.loc[i, "power_kw"] = "#VALUE!"
    readings = tmp_path / "readings.csv"
    text.to_csv(readings, index=False)
    fleet.registry.to_csv(tmp_path / "meters.csv", index=False)
    res = CliRunner().invoke(
        main,
        [
            "analyze",
            "--readings",
            str(readings),
            "--meters",
            str(tmp_path / "meters.csv"),
            "--out",
            str(tmp_path / "alerts.jsonl"),
        ],
    )
    assert res.exit_code == 0, res.output
    err = " ".join(res.stderr.split())  # rich may wrap long lines
    assert f"{readings}: column power_kw: 3 non-numeric value(s) read as missing" in err
    first = text.loc[bad_rows[0]]
    assert f"row {bad_rows[0]} ({first['meter_id']} {first['ts']}): '#VALUE!'" in err
    assert "energy_import_kwh" not in err  # only the column that had bad values

    clean = tmp_path / "clean.csv"
    text.assign(power_kw=r["power_kw"]).to_csv(clean, index=False)
    res = CliRunner().invoke(
        main,
        [
            "analyze",
            "--readings",
            str(clean),
            "--meters",
            str(tmp_path / "meters.csv"),
            "--out",
            str(tmp_path / "alerts2.jsonl"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "non-numeric" not in res.stderr


def test_numeric_ts_is_read_as_iso_text_never_as_epoch() -> None:
    # pandas 4 will read numbers given with a format as epochs; ours stay ISO 8601 text
    # (20260105 is a basic-format date), with no deprecation warning on the way.
    import warnings

    from meterwatch.core.schema import to_utc

    day = pd.Timestamp("2026-01-05T00:00:00Z")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert to_utc(pd.Series([20260105])).tolist() == [day]
        mixed = pd.Series(["2026-01-05T00:00:00Z", 20260105, None], dtype=object)
        assert to_utc(mixed).tolist()[:2] == [day, day] and to_utc(mixed).isna().tolist()[2]
        with pytest.raises(ValueError, match="ISO8601"):
            to_utc(pd.Series([1767571200]))  # an epoch is not taken for one


@pytest.mark.parametrize(
    "ids", [["a", "b"], pd.Categorical(["a", "b"])], ids=["text", "categorical"]
)
def test_the_normalized_frame_is_writable_and_writes_never_reach_the_input(ids: object) -> None:
    """The normalized frame shares the input's columns (no copy of a large file) until either
    side is written to: a write to it changes neither the input nor fails on a read-only view."""
    df = pd.DataFrame(
        {
            "meter_id": ids,
            "ts": pd.to_datetime(["2026-01-01T00:00Z", "2026-01-01T00:15Z"]),
            "power_kw": [1.0, 2.0],
            "voltage_l1_v": ["230", "x"],
        },
        index=[3, 4],
    )
    before = df.copy()
    out = normalize_readings(df)
    out.loc[0, "ts"] = pd.Timestamp("2026-02-01", tz="UTC")
    out.loc[1, "power_kw"] = 5.0
    out.loc[0, "voltage_l1_v"] = 3.0
    out.loc[0, "meter_id"] = "b"
    pd.testing.assert_frame_equal(df, before)
    assert out["power_kw"].tolist() == [1.0, 5.0]
    assert list(out.index) == [0, 1]
