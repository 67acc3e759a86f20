"""Meter registry (contracts §2): only meter_id required, documented defaults, a summary of
what was defaulted, errors naming file, row and column."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from meterwatch.config import parse_config
from meterwatch.core.errors import ConfigError, RegistryError
from meterwatch.core.registry import REGISTRY_COLUMNS, check_registry, load_registry

GOOD = {
    "meter_id": ["M1", "T1"],
    "role": ["customer", "transformer"],
    "transformer_id": ["TA01", "TA01"],
    "customer_class": ["residential", ""],
    "phases": [1, 3],
    "nominal_voltage_v": [220, 220],
    "rated_current_a": [5, 1.5],
    "max_current_a": [60, 6],
    "ct_ratio": [1, 400],
    "tariff": ["tou-cn", "tou-cn"],
    "last_calibration": ["2025-06-01", "2025-06-01"],
    "calibration_interval_days": [1825, 1825],
    "installer": ["a", "b"],  # unknown extra column: kept
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meters.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_full_registry_is_normalised_keeps_extra_columns_and_defaults_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "meters.csv"
    pd.DataFrame(GOOD).to_csv(path, index=False)
    loaded = load_registry(path)
    reg = loaded.meters
    assert list(reg.columns) == [*REGISTRY_COLUMNS, "installer"]
    assert reg["installer"].tolist() == ["a", "b"]
    assert reg["ct_ratio"].tolist() == [1.0, 400.0]
    assert reg["last_calibration"].dtype.kind == "M"
    s = loaded.summary
    assert (s.meters, s.customers, s.transformers, s.without_area) == (2, 1, 1, 0)
    assert s.defaulted == () and s.extra_columns == ("installer",)
    assert s.lines() == [
        f"{path}: 2 meters (1 customer, 1 transformer supply)",
        "other columns kept: installer",
    ]


def test_only_meter_id_is_required_and_every_default_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "meter_id\nA1\n007\n")
    loaded = load_registry(path)
    reg = loaded.meters.set_index("meter_id")
    assert list(reg.index) == ["A1", "007"]  # ids stay text (leading zeros kept)
    row = reg.loc["007"]
    assert (row["role"], row["transformer_id"], row["customer_class"]) == (
        "customer",
        "",
        "residential",
    )
    assert (row["phases"], row["nominal_voltage_v"]) == (1, 230.0)
    assert (row["rated_current_a"], row["max_current_a"], row["ct_ratio"]) == (5.0, 60.0, 1.0)
    assert row["tariff"] == "" and pd.isna(row["last_calibration"])
    assert row["calibration_interval_days"] == 2920
    s = loaded.summary
    assert s.defaulted_columns() == {c: 2 for c in REGISTRY_COLUMNS[1:] if c != "transformer_id"}
    lines = s.lines()
    assert lines[1].startswith("defaulted: role (customer) for 2 meters; ")
    for part in (
        "phases (1) for 2 meters",
        "nominal_voltage_v (230 V) for 2 meters",
        "max_current_a (60 A) for 2 meters",
        "last_calibration (unknown: calibration_due not judged) for 2 meters",
        "calibration_interval_days (2920 days) for 2 meters",
    ):
        assert part in lines[1]
    assert "transformer_id" not in lines[1]  # the area has its own line
    assert lines[2] == "2 meters without a transformer area: judged by meter-level rules only"


def test_utility_export_without_calibration_or_imax_loads(tmp_path: Path) -> None:
    # A typical export: no last_calibration, no max_current_a, a CT meter among them, one
    # meter whose area is unknown, and a column of its own.
    path = write(
        tmp_path,
        "meter_id,role,transformer_id,customer_class,phases,nominal_voltage_v,rated_current_a,"
        "ct_ratio,tariff,calibration_interval_days,feeder\n"
        "R1,customer,TA01,residential,1,220,5,1,,2920,F1\n"
        "I1,customer,TA01,industrial,3,220,1.5,200,,1825,F1\n"
        "R2,customer,,residential,1,220,10,1,,2920,F2\n",
    )
    loaded = load_registry(path)
    reg = loaded.meters.set_index("meter_id")
    assert reg["max_current_a"].to_dict() == {"R1": 60.0, "I1": 6.0, "R2": 60.0}
    assert reg["transformer_id"].to_dict() == {"R1": "TA01", "I1": "TA01", "R2": ""}
    assert reg["feeder"].tolist() == ["F1", "F1", "F2"]
    lines = loaded.summary.lines()
    assert lines[0] == f"{path}: 3 meters (3 customer, 0 transformer supply)"
    assert lines[1] == (
        "defaulted: max_current_a (60 A for 2, 6 A for 1); tariff (empty) for 3 meters; "
        "last_calibration (unknown: calibration_due not judged) for 3 meters"
    )
    assert lines[2] == "1 meter without a transformer area: judged by meter-level rules only"
    assert lines[3] == "other columns kept: feeder"


def test_empty_cells_take_the_default_of_their_row_only(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "meter_id,role,phases,ct_ratio,nominal_voltage_v\n"
        "R1,,1,,220\n"
        "T1,transformer,,400,\n"
        "R2,customer,3,1, \n",
    )
    loaded = load_registry(path)
    reg = loaded.meters.set_index("meter_id")
    assert reg.loc["R1", "role"] == "customer" and reg.loc["R1", "ct_ratio"] == 1.0
    assert reg.loc["T1", "phases"] == 3  # a supply meter is three-phase
    assert reg.loc["T1", "customer_class"] == ""  # no class for supply meters
    assert reg["nominal_voltage_v"].to_dict() == {"R1": 220.0, "T1": 230.0, "R2": 230.0}
    assert reg.loc["T1", "calibration_interval_days"] == 2190  # CT-operated: 6 years
    assert reg.loc["T1", "max_current_a"] == 6.0
    d = loaded.summary.defaulted_columns()
    assert (d["role"], d["phases"], d["ct_ratio"], d["nominal_voltage_v"]) == (1, 1, 1, 2)
    assert d["customer_class"] == 2  # the customers only


def test_site_defaults_from_the_config_replace_the_built_in_ones(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "simulator": {"enabled": True},
            "registry": {"defaults": {"nominal_voltage_v": 220, "tariff": "residential-tou"}},
        }
    )
    path = write(tmp_path, "meter_id,nominal_voltage_v\nR1,\nR2,230\n")
    loaded = load_registry(path, defaults=cfg.registry.defaults.values())
    reg = loaded.meters.set_index("meter_id")
    assert reg["nominal_voltage_v"].to_dict() == {"R1": 220.0, "R2": 230.0}
    assert set(reg["tariff"]) == {"residential-tou"}
    assert "nominal_voltage_v (220 V) for 1 meter;" in loaded.summary.lines()[1]
    with pytest.raises(ConfigError) as info:
        parse_config({"simulator": {"enabled": True}, "registry": {"defaults": {"phases": 2}}})
    assert "registry.defaults.phases" in str(info.value)
    with pytest.raises(ConfigError, match="registry.defaults.meter_id: unknown key"):
        parse_config({"simulator": {"enabled": True}, "registry": {"defaults": {"meter_id": "x"}}})


@pytest.mark.parametrize(
    ("index", "column", "value", "expected"),
    [
        (1, "role", "feeder", "row 3 (meter T1), column role: 'feeder', expected customer or"),
        (1, "phases", "2", "row 3 (meter T1), column phases: '2', expected 1 or 3"),
        (1, "ct_ratio", "0", "row 3 (meter T1), column ct_ratio: '0', expected a number > 0"),
        (0, "max_current_a", "sixty", "row 2 (meter M1), column max_current_a: 'sixty', expected"),
        (0, "customer_class", "farm", "row 2 (meter M1), column customer_class: 'farm', expected"),
        (1, "last_calibration", "soon", "column last_calibration: 'soon', expected an ISO date"),
        (1, "calibration_interval_days", "365.5", "'365.5', expected a whole number of days > 0"),
        (0, "rated_current_a", "80", "row 2 (meter M1), column rated_current_a: '80', expected at"),
        (1, "meter_id", "M1", "row 3 (meter M1), column meter_id: 'M1', expected a unique id"),
    ],
)
def test_a_bad_value_names_file_row_and_column(
    tmp_path: Path, index: int, column: str, value: str, expected: str
) -> None:
    frame = pd.DataFrame({k: [str(x) for x in v] for k, v in GOOD.items()})
    frame.loc[index, column] = value  # data row i is row i + 2 of the file (header = row 1)
    path = tmp_path / "meters.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    message = str(info.value)
    assert message.startswith(f"{path}: 1 problem(s)")
    assert expected in message


def test_row_numbers_are_the_file_lines_even_after_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "meter_id,phases\nA,1\n\nB,1\nC,4\n")
    with pytest.raises(RegistryError, match=r"row 5 \(meter C\), column phases: '4'"):
        load_registry(path)


def test_frames_built_in_code_number_rows_from_one() -> None:
    with pytest.raises(RegistryError, match=r"registry: 1 problem\(s\)\n  row 2 \(meter T1\)"):
        check_registry(pd.DataFrame(GOOD).assign(phases=[1, 2]))


def test_many_problems_are_counted_not_all_listed() -> None:
    frame = pd.DataFrame({"meter_id": [f"M{i}" for i in range(12)], "phases": [7] * 12})
    with pytest.raises(RegistryError) as info:
        check_registry(frame, source="meters.csv")
    text = str(info.value)
    assert text.startswith("meters.csv: 12 problem(s)") and "… and 7 more" in text


def test_unreadable_files_and_missing_meter_id_are_errors_not_tracebacks(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="not found"):
        load_registry(tmp_path / "none.csv")
    with pytest.raises(RegistryError, match="missing column meter_id"):
        load_registry(write(tmp_path, "id,phases\nA,1\n"))
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x01meter_id\n\x80\x81")
    with pytest.raises(RegistryError, match="cannot read the meter registry"):
        load_registry(tmp_path / "bin.csv")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(RegistryError, match="cannot read the meter registry"):
        load_registry(tmp_path / "bad.parquet")


def test_spreadsheet_exports_with_bom_and_padded_headers_load(tmp_path: Path) -> None:
    path = tmp_path / "meters.csv"
    path.write_bytes("\ufeffmeter_id, phases \nA,3\n".encode())
    reg = load_registry(path).meters
    assert reg["phases"].tolist() == [3]


def test_the_service_loads_a_sparse_registry_and_logs_its_summary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from meterwatch.service import Service

    meters = write(tmp_path, "meter_id,transformer_id\nR1,TA01\nR2,\n")
    cfg = parse_config(
        {
            "registry": {"path": str(meters), "defaults": {"nominal_voltage_v": 220}},
            "mqtt": {"enabled": False},
            "storage": {"path": str(tmp_path / "store.duckdb")},
            "alerts": {"feed": str(tmp_path / "alerts.jsonl")},
        }
    )
    with caplog.at_level("INFO", logger="meterwatch.wiring"):
        service = Service(cfg)
    try:
        assert service.registry["nominal_voltage_v"].tolist() == [220.0, 220.0]
        summary = service.c.registry_summary
        assert summary.without_area == 1 and summary.defaulted_columns()["phases"] == 2
        logged = [r.getMessage() for r in caplog.records]
        assert f"registry: {meters}: 2 meters (2 customer, 0 transformer supply)" in logged
        assert (
            "registry: 1 meter without a transformer area: judged by meter-level rules only"
            in logged
        )
        assert any(m.startswith("registry: defaulted: role (customer)") for m in logged)
    finally:
        service.store.close()
