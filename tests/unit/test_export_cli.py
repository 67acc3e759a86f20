"""`meterwatch export billing`, `meterwatch vee edit` and `analyze --validated` on real files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from meterwatch.alerts.audit import load_key, verify
from meterwatch.analytics.billing import DETERMINANT_COLUMNS
from meterwatch.analytics.vee import VALIDATED_COLUMNS
from meterwatch.cli import main
from meterwatch.simulators.fleet import Fleet, generate
from meterwatch.storage.embedded import EmbeddedStore

T0 = pd.Timestamp("2026-01-05T00:00:00Z")  # Monday; 08:00 local in Asia/Shanghai
CN = [
    {"name": "valley", "label": "谷", "start": "23:00", "end": "07:00"},
    {"name": "flat", "label": "平", "start": "07:00", "end": "19:00"},
    {"name": "sharp", "label": "尖峰", "start": "19:00", "end": "21:00"},
    {"name": "peak", "label": "峰", "start": "21:00", "end": "23:00"},
]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """A store with 4 days of a small simulated fleet; R0001 misses 06:00-18:00 UTC of day 2."""
    monkeypatch.setenv("MW_TEST_AUDIT_KEY", "k" * 32)
    fleet = Fleet(
        start=T0.to_pydatetime(), residential=3, commercial=1, industrial=1, transformers=1, seed=5
    )
    readings = generate(fleet, (T0 + pd.Timedelta(days=4)).to_pydatetime(), interval_s=900)
    gap = (
        (readings["meter_id"] == "R0001")
        & (readings["ts"] > T0 + pd.Timedelta(hours=30))
        & (readings["ts"] < T0 + pd.Timedelta(hours=42))
    )
    readings = readings[~gap]
    store = EmbeddedStore(tmp_path / "store.duckdb")
    store.write_readings(readings)
    store.close()
    fleet.registry.to_csv(tmp_path / "meters.csv", index=False)
    feed = tmp_path / "alerts.jsonl"
    alert = {
        "id": "a1",
        "fingerprint": "f",
        "type": "meter_stuck",
        "category": "billing",
        "severity": "major",
        "meter_id": "C0001",
        "transformer_id": "TA01",
        "status": "open",
        "starts_at": "2026-01-06T00:00:00Z",
        "ends_at": None,
        "summary": "stuck",
        "evidence": {},
    }
    feed.write_text(json.dumps(alert) + "\n")
    cfg = {
        "site": {"timezone": "Asia/Shanghai"},
        "registry": {"path": str(tmp_path / "meters.csv")},
        "storage": {"path": str(tmp_path / "store.duckdb")},
        "alerts": {"feed": str(feed), "audit": {"key_env": "MW_TEST_AUDIT_KEY"}},
        "tariffs": {
            t: {"periods": CN} for t in ("residential-tou", "commercial-tou", "industrial-tou")
        },
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return {
        "dir": tmp_path,
        "cfg": str(tmp_path / "cfg.yaml"),
        "readings": readings,
        "audit": tmp_path / "alerts-state" / "audit.jsonl",
    }


def audit_entries(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_export_edit_and_reexport(site: dict[str, object]) -> None:
    d: Path = site["dir"]  # type: ignore[assignment]
    cfg: str = site["cfg"]  # type: ignore[assignment]
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "export",
            "billing",
            "--from",
            "2026-01-06",
            "--to",
            "2026-01-08",
            "--out",
            str(d / "bill.csv"),
            "--config",
            cfg,
        ],
    )
    assert res.exit_code == 0, res.output
    det = pd.read_csv(d / "bill.csv")
    assert (
        list(det.columns)
        == [
            *DETERMINANT_COLUMNS[:5],
            "kwh_valley",
            "kwh_flat",
            "kwh_sharp",
            "kwh_peak",
            *DETERMINANT_COLUMNS[5:-1],
            "hold_reasons",
            "data_version",
        ][: len(det.columns)]
    )
    det = det.set_index("meter_id")
    assert len(det) == 6 and set(det["data_version"]) == {1}
    # Period: 2026-01-06 00:00 to 2026-01-08 00:00 local = 2026-01-05T16:00Z .. 2026-01-07T16:00Z.
    assert set(det["period_start"]) == {"2026-01-05T16:00:00Z"}
    assert (det["intervals"] == 192).all()
    # R0001: 12 h gap = 48 estimated intervals (25 %) -> hold; C0001: the open alert.
    assert det.loc["R0001", "intervals_estimated"] == 48
    assert det.loc["R0001", "hold_reasons"] == "estimated share 25.00 % > limit 2 %"
    assert det.loc["C0001", "hold_reasons"] == "open billing alert: meter_stuck"
    assert set(det.index[det["hold"]]) == {"R0001", "C0001"}
    tou = det[["kwh_valley", "kwh_flat", "kwh_sharp", "kwh_peak"]].sum(axis=1)
    assert tou.loc["R0001"] == pytest.approx(det.loc["R0001", "total_kwh"])

    val = pd.read_csv(d / "bill.validated.csv")
    assert list(val.columns) == list(VALIDATED_COLUMNS)
    assert len(val) == 6 * 192 and set(val["data_version"]) == {1}
    # Validated totals equal the register delta x ct_ratio over the period (both ends read).
    r = site["readings"]
    r0001 = r[r["meter_id"] == "R0001"].set_index("ts")["energy_import_kwh"]  # type: ignore[index]
    delta = r0001[pd.Timestamp("2026-01-07T16:00Z")] - r0001[pd.Timestamp("2026-01-05T16:00Z")]
    assert val.loc[val["meter_id"] == "R0001", "kwh"].sum() == pytest.approx(delta)

    audit_path: Path = site["audit"]  # type: ignore[assignment]
    est = [e for e in audit_entries(audit_path) if e["event"] == "vee.estimate"]
    assert [e["payload"]["meter_id"] for e in est] == ["R0001"]  # type: ignore[index]
    assert est[0]["payload"]["intervals"] == 48  # type: ignore[index]

    # A manual edit keeps the prior version and is audited.
    target = val[(val["meter_id"] == "R0001") & (val["quality"] == "estimated")].iloc[0]
    res = runner.invoke(
        main,
        [
            "vee",
            "edit",
            "--meter",
            "R0001",
            "--ts",
            target["ts"],
            "--kwh",
            "0.42",
            "--by",
            "alice",
            "--reason",
            "customer read",
            "--config",
            cfg,
        ],
    )
    assert res.exit_code == 0, res.output
    store = EmbeddedStore(d / "store.duckdb")
    try:
        hist = store.read_validated_readings(["R0001"], all_versions=True)
        hist = hist[hist["ts"] == pd.Timestamp(target["ts"])]
        assert list(hist["data_version"]) == [1, 2]
        assert list(hist["quality"]) == ["estimated", "edited"]
        assert hist["kwh"].iloc[0] == pytest.approx(target["kwh"])
        assert list(hist["edited_by"].fillna("")) == ["", "alice"]
    finally:
        store.close()
    edit = [e for e in audit_entries(audit_path) if e["event"] == "vee.edit"][0]["payload"]
    assert edit["by"] == "alice" and edit["reason"] == "customer read"  # type: ignore[index]
    assert edit["prior"]["kwh"] == pytest.approx(target["kwh"])  # type: ignore[index]
    assert edit["prior"]["data_version"] == 1  # type: ignore[index]

    # Re-export as Parquet: the edit survives, a new version is written, the old stays.
    res = runner.invoke(
        main,
        [
            "export",
            "billing",
            "--from",
            "2026-01-06",
            "--to",
            "2026-01-08",
            "--out",
            str(d / "bill.parquet"),
            "--config",
            cfg,
        ],
    )
    assert res.exit_code == 0, res.output
    val2 = pd.read_parquet(d / "bill.validated.parquet")
    row = val2[(val2["meter_id"] == "R0001") & (val2["ts"] == pd.Timestamp(target["ts"]))]
    assert list(row["quality"]) == ["edited"] and list(row["kwh"]) == [0.42]
    assert set(val2["data_version"]) == {3}
    det2 = pd.read_parquet(d / "bill.parquet").set_index("meter_id")
    assert det2.loc["R0001", "intervals_edited"] == 1
    store = EmbeddedStore(d / "store.duckdb")
    try:
        v1 = store.read_validated_readings(["R0001"], version=1)
        assert v1.loc[v1["ts"] == pd.Timestamp(target["ts"]), "quality"].tolist() == ["estimated"]
    finally:
        store.close()
    result = verify(audit_path, load_key("MW_TEST_AUDIT_KEY", audit_path.parent, create=False))
    assert result.ok, result.problems


def test_errors_are_reported(site: dict[str, object]) -> None:
    d: Path = site["dir"]  # type: ignore[assignment]
    cfg: str = site["cfg"]  # type: ignore[assignment]
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "vee",
            "edit",
            "--meter",
            "R0001",
            "--ts",
            "2026-01-06T00:15:00Z",
            "--kwh",
            "1",
            "--by",
            "bob",
            "--reason",
            "x",
            "--config",
            cfg,
        ],
    )
    assert res.exit_code == 2 and "run `meterwatch export billing`" in res.output
    res = runner.invoke(
        main,
        [
            "export",
            "billing",
            "--from",
            "2026-01-06",
            "--to",
            "2026-01-07",
            "--out",
            str(d / "bill.txt"),
            "--config",
            cfg,
        ],
    )
    assert res.exit_code == 2 and "use .csv or .parquet" in res.output
    res = runner.invoke(
        main,
        [
            "export",
            "billing",
            "--from",
            "2026-01-07",
            "--to",
            "2026-01-06",
            "--out",
            str(d / "b.csv"),
            "--config",
            cfg,
        ],
    )
    assert res.exit_code == 2 and "must be after" in res.output


def test_analyze_writes_validated_readings(site: dict[str, object]) -> None:
    d: Path = site["dir"]  # type: ignore[assignment]
    r: pd.DataFrame = site["readings"]  # type: ignore[assignment]
    r.to_parquet(d / "readings.parquet", index=False)
    res = CliRunner().invoke(
        main,
        [
            "analyze",
            "--readings",
            str(d / "readings.parquet"),
            "--meters",
            str(d / "meters.csv"),
            "--out",
            str(d / "alerts-out.jsonl"),
            "--validated",
            str(d / "validated.parquet"),
        ],
    )
    assert res.exit_code == 0, res.output
    val = pd.read_parquet(d / "validated.parquet")
    assert list(val.columns) == list(VALIDATED_COLUMNS)
    assert set(val["meter_id"]) == set(r["meter_id"])
    gap = val[(val["meter_id"] == "R0001") & (val["quality"] == "estimated")]
    assert len(gap) == 48


def test_validated_store_keeps_every_version(tmp_path: Path) -> None:
    from meterwatch.analytics.vee import validate
    from meterwatch.core.errors import StorageError

    fleet = Fleet(
        start=T0.to_pydatetime(), residential=2, commercial=0, industrial=0, transformers=1, seed=2
    )
    r = generate(fleet, (T0 + pd.Timedelta(hours=6)).to_pydatetime(), interval_s=900)
    iv = validate(r, fleet.registry).intervals
    store = EmbeddedStore(tmp_path / "s.duckdb")
    try:
        assert store.write_validated_readings(iv) == 1
        assert store.write_validated_readings(iv.assign(kwh=iv["kwh"] * 2)) == 2
        latest = store.read_validated_readings()
        first = store.read_validated_readings(version=1)
        every = store.read_validated_readings(all_versions=True)
        assert len(latest) == len(first) == len(iv) and len(every) == 2 * len(iv)
        assert set(latest["data_version"]) == {2} and set(first["data_version"]) == {1}
        assert latest["kwh"].to_numpy() == pytest.approx(2 * first["kwh"].to_numpy())
        one = store.read_validated_readings(
            [iv["meter_id"].iloc[0]], iv["ts"].iloc[0], iv["ts"].iloc[2]
        )
        assert len(one) == 2 and list(one["ts"]) == list(iv["ts"].iloc[:2])
        with pytest.raises(StorageError, match="no validated intervals"):
            store.write_validated_readings(iv.iloc[:0])
    finally:
        store.close()
