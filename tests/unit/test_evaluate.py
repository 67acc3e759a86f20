"""The evaluation harness: matching and metrics on hand-made examples, and a tiny fleet run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from meterwatch.core.schema import TS_DTYPE
from meterwatch.evaluation import (
    average_precision_at,
    markdown_table,
    score_findings,
    theft_metrics,
)

T = pd.Timestamp("2026-02-01T00:00:00Z")


def h(x: float) -> pd.Timestamp:
    return T + pd.Timedelta(hours=x)


def frame(rows: list[dict], cols: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=cols)
    for c in ("starts_at", "ends_at"):
        df[c] = pd.to_datetime(df[c], utc=True).astype(TS_DTYPE)
    return df


LABEL_COLS = ["type", "injection", "meter_id", "transformer_id", "starts_at", "ends_at"]
FIND_COLS = ["type", "meter_id", "transformer_id", "starts_at", "ends_at"]
REGISTRY = pd.DataFrame(
    {
        "meter_id": ["T01", "A", "B", "C", "D", "E"],
        "role": ["transformer"] + ["customer"] * 5,
        "transformer_id": ["TA01"] * 6,
    }
)


def test_score_findings_on_a_hand_made_example() -> None:
    labels = frame(
        [
            ("overvoltage", "overvoltage", "A", "TA01", h(10), h(12)),
            ("overvoltage", "overvoltage", "B", "TA01", h(20), h(22)),  # missed
            ("outage", "outage", None, "TA01", h(30), h(31)),
            ("theft_suspected", "h1", "C", "TA01", h(0), h(100)),
        ],
        LABEL_COLS,
    )
    findings = frame(
        [
            ("overvoltage", "A", "TA01", h(10.25), h(11)),  # TP, delay 0.25 h
            ("overvoltage", "A", "TA01", h(11.5), None),  # second alert, same label: TP
            ("overvoltage", "D", "TA01", h(50), h(51)),  # false, clean meter
            ("overvoltage", "A", "TA01", h(40), h(41)),  # false, but on a dirty meter
            ("outage", None, "TA01", h(29.75), h(31)),  # TP (area key)
            ("consumption_drop", "C", "TA01", h(50), h(60)),  # theft consequence
            ("theft_suspected", "C", "TA01", h(-300), None),  # TP
        ],
        FIND_COLS,
    )
    table, summary = score_findings(findings, labels, REGISTRY, days=10)
    t = table.set_index("type")
    ov = t.loc["overvoltage"]
    assert (ov["labels"], ov["alerts"], ov["tp_labels"], ov["tp_alerts"]) == (2, 4, 1, 2)
    assert ov["precision"] == pytest.approx(0.5)
    assert ov["recall"] == pytest.approx(0.5)
    assert ov["f1"] == pytest.approx(0.5)
    assert ov["delay_median_h"] == pytest.approx(0.25)
    assert t.loc["outage", "recall"] == 1.0 and t.loc["outage", "delay_median_h"] == -0.25
    drop = t.loc["consumption_drop"]
    assert (drop["alerts"], drop["explained"]) == (0, 1)
    assert math.isnan(drop["precision"])
    assert t.loc["theft_suspected", "precision"] == 1.0
    # Clean: T01, D, E (A, B, C carry labels) -> 3 x 10 meter-days; one false alert (on D).
    assert summary["clean_meter_days"] == 30
    assert summary["false_alerts_clean"] == 1
    assert summary["false_per_1000_meter_days"] == pytest.approx(1000 / 30)
    assert summary["false_by_type"] == {"overvoltage": 1}


def test_fault_consequences_are_explained_not_judged() -> None:
    labels = frame(
        [
            ("meter_stuck", "meter_stuck", "A", "TA01", h(10), h(16)),
            ("meter_runaway", "meter_runaway", "B", "TA01", h(10), h(11)),
            ("transformer_overload", "transformer_overload", None, "TA01", h(30), h(33)),
            ("consumption_spike", "consumption_spike", "C", "TA02", h(60), h(62)),
            ("theft_suspected", "h5", "E", "TA02", h(40), h(100)),
        ],
        LABEL_COLS,
    )
    findings = frame(
        [
            ("meter_stuck", "A", "TA01", h(10), h(16)),  # TP
            ("energy_power_mismatch", "A", "TA01", h(0), h(24)),  # stuck register: explained
            ("consumption_drop", "A", "TA01", h(10), h(16)),  # explained
            ("consumption_drop", "A", "TA01", h(40), h(46)),  # after the fault: judged, false
            ("meter_runaway", "B", "TA01", h(10), h(11)),  # TP
            ("consumption_spike", "B", "TA01", h(10), h(11)),  # explained
            ("energy_power_mismatch", "D", "TA01", h(0), h(24)),  # clean meter: false
            ("transformer_overload", None, "TA01", h(30), h(33)),  # TP
            ("consumption_spike", "T01", "TA01", h(30), h(33)),  # supply meter: explained
            ("transformer_overload", None, "TA02", h(60), h(61)),  # spike on C: explained
            ("transformer_loss", None, "TA01", h(24), h(48)),  # overload day: explained
            ("energy_power_mismatch", "E", "TA02", h(48), h(72)),  # theft victim: explained
        ],
        FIND_COLS,
    )
    table, summary = score_findings(findings, labels, REGISTRY, days=10)
    t = table.set_index("type")
    assert (
        t.loc["energy_power_mismatch", "alerts"],
        t.loc["energy_power_mismatch", "explained"],
    ) == (1, 2)
    over = t.loc["transformer_overload"]
    assert (over["alerts"], over["explained"], over["precision"]) == (1, 1, 1.0)
    assert (t.loc["transformer_loss", "alerts"], t.loc["transformer_loss", "explained"]) == (0, 1)
    assert (t.loc["consumption_drop", "alerts"], t.loc["consumption_drop", "explained"]) == (1, 1)
    assert (t.loc["consumption_spike", "alerts"], t.loc["consumption_spike", "explained"]) == (0, 2)
    assert t.loc["meter_stuck", "precision"] == 1.0 and t.loc["meter_runaway", "recall"] == 1.0
    assert summary["false_by_type"] == {"energy_power_mismatch": 1}


def test_a_day_offline_explains_its_estimation_excess() -> None:
    labels = frame([("meter_offline", "meter_offline", "B", "TA01", h(10), h(40))], LABEL_COLS)
    findings = frame(
        [
            ("estimation_excess", "B", "TA01", h(10.25), h(40)),  # the offline day: explained
            ("estimation_excess", "B", "TA01", h(80), h(110)),  # days later: judged, false
        ],
        FIND_COLS,
    )
    table, _ = score_findings(findings, labels, REGISTRY, days=10)
    t = table.set_index("type")
    assert (t.loc["estimation_excess", "alerts"], t.loc["estimation_excess", "explained"]) == (1, 1)
    assert t.loc["estimation_excess", "precision"] == 0.0


def test_build_scenario_injects_and_labels_the_billing_faults() -> None:
    from meterwatch.simulators.fleet import BILLING_FAULT_TYPES
    from meterwatch.simulators.scenarios import build_scenario

    # 80 customers: room for two of every fault, attack and data-quality injection.
    sc = build_scenario(meters=80, days=18, interval_s=3600, seed=5, per_type=2)
    lab = sc.labels
    for typ in BILLING_FAULT_TYPES:
        sel = lab[lab["type"] == typ]
        assert len(sel) == 2 and sel["meter_id"].nunique() == 2, typ
    reg = sc.registry.set_index("meter_id")
    mult = lab.loc[lab["type"] == "multiplier_mismatch", "meter_id"]
    assert (reg.loc[mult, "ct_ratio"] > 1).all()
    # Every label of a customer meter is on its own meter (distinct meters across types).
    per_meter = lab.dropna(subset=["meter_id"]).groupby("meter_id")["type"].nunique()
    assert (per_meter == 1).all()
    # Readings carry the collector's receipt time, which a clock running ahead does not move:
    # every clock error is found on its own, not only the one leading the fleet.
    from meterwatch.analytics.detectors.billing_rules import ClockError

    assert sc.readings["collected_at"].notna().all()
    clocks = lab.loc[lab["type"] == "clock_error", "meter_id"]
    found = ClockError().detect(sc.readings, sc.registry)
    assert sorted(found["meter_id"]) == sorted(clocks)
    with pytest.raises(ValueError, match="ct_ratio > 1"):
        build_scenario(meters=20, days=18, interval_s=3600, seed=5, per_type=8)


def test_average_precision_at_k() -> None:
    y = np.array([1, 0, 1, 0, 0, 1])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1])
    # Relevant at ranks 1, 3, 6: (1 + 2/3 + 3/6) / 3.
    assert average_precision_at(y, s, 100) == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    # Top 2 only: (1) / min(2, 3).
    assert average_precision_at(y, s, 2) == pytest.approx(0.5)
    assert math.isnan(average_precision_at(np.zeros(3), s[:3], 10))


def test_theft_metrics_per_attack() -> None:
    ranked = pd.DataFrame(
        {"meter_id": ["A", "B", "C", "D", "E"], "score": [0.9, 0.8, 0.1, 0.7, 0.2]}
    )
    labels = frame(
        [
            ("theft_suspected", "h1", "A", "TA01", h(0), h(1)),
            ("theft_suspected", "h6", "C", "TA01", h(0), h(1)),
        ],
        LABEL_COLS,
    )
    m = theft_metrics(ranked, labels).set_index("attack")
    # All: positives A (0.9), C (0.1) vs negatives B .8, D .7, E .2 -> 3 of 6 pairs won.
    assert m.loc["all", "roc_auc"] == pytest.approx(0.5)
    assert m.loc["h1", "roc_auc"] == 1.0 and m.loc["h1", "map_at_100"] == 1.0
    assert m.loc["h6", "roc_auc"] == 0.0
    assert m.loc["h6", "victims"] == 1


def test_markdown_table() -> None:
    text = markdown_table(pd.DataFrame({"a": ["x"], "b": [0.12345], "c": [float("nan")]}))
    assert text.splitlines() == ["| a | b | c |", "|---|---|---|", "| x | 0.123 | – |"]


def test_evaluate_command_on_a_tiny_fleet(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from meterwatch.cli import main

    out = tmp_path / "evaluation.md"
    res = CliRunner().invoke(
        main,
        ["evaluate", "--meters", "40", "--days", "18", "--interval", "3600", "--per-type", "1"]
        + ["--out", str(out), "--findings", str(tmp_path / "f.parquet")],
    )
    assert res.exit_code == 0, res.output
    text = out.read_text()
    for heading in ("## Per alert type", "## Theft ranking", "## False alerts on clean meters"):
        assert heading in text
    for t in ("outage", "current_loss", "transformer_overload", "theft_suspected"):
        assert f"| {t} |" in text
    for t in ("meter_stuck", "meter_runaway", "energy_power_mismatch", "multiplier_mismatch"):
        assert f"| {t} | billing | 1 |" in text  # one label each
    assert "| clock_error | billing | 1 |" in text and "| estimation_excess | billing | 1 |" in text
    assert "| detector | seconds | peak_mib |" in text and "shared dense window" in text
    found = pd.read_parquet(tmp_path / "f.parquet")
    labels = pd.read_parquet(tmp_path / "f.labels.parquet")
    assert len(pd.read_parquet(tmp_path / "f.registry.parquet")) >= 40
    assert "theft_suspected" in set(found["type"]) and len(labels) > 20
    assert found["evidence"].str.startswith("{").all()
