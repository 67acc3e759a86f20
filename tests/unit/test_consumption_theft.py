"""Consumption drop / zero and theft analytics at the edges of their thresholds."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import pytest

from meterwatch.analytics.detectors.consumption import (
    ConsumptionDrop,
    ZeroConsumption,
    cusum_drop,
    daily_energy,
    run_lengths,
)
from meterwatch.core.registry import check_registry
from meterwatch.core.schema import readings_from_records

T0 = pd.Timestamp("2026-01-05T00:00:00Z")  # a Monday
WEEK = 168


def registry(**meters: dict[str, Any]) -> pd.DataFrame:
    base = {
        "role": "customer",
        "transformer_id": "T1",
        "customer_class": "residential",
        "phases": 1,
        "nominal_voltage_v": 220.0,
        "rated_current_a": 5.0,
        "max_current_a": 60.0,
        "ct_ratio": 1.0,
        "tariff": "x",
        "last_calibration": "2025-06-01",
        "calibration_interval_days": 3650,
    }
    return check_registry(pd.DataFrame([{**base, "meter_id": m, **o} for m, o in meters.items()]))


def hourly(meter: str, use: np.ndarray, voltage: np.ndarray | None = None) -> pd.DataFrame:
    """Hourly readings whose register grows by ``use[h]`` in hour ``h`` [kWh]."""
    e = np.r_[0.0, np.cumsum(use)] + 100.0
    v = np.full(e.size, 220.0) if voltage is None else voltage
    return readings_from_records(
        [
            {
                "meter_id": meter,
                "ts": T0 + pd.Timedelta(hours=h),
                "energy_import_kwh": e[h],
                "voltage_l1_v": v[h],
                "current_l1_a": 1.0,
            }
            for h in range(e.size)
        ]
    )


def usual(weeks: int = 3) -> np.ndarray:
    """A weekly pattern: 1 kWh/h on weekdays, 0.4 kWh/h on weekends [kWh per hour]."""
    h = np.arange(weeks * WEEK)
    return np.where((h // 24) % 7 >= 5, 0.4, 1.0)


REG = registry(M={})


@pytest.mark.parametrize(
    ("level", "hours", "flagged"),
    [
        (0.49, 6, True),  # below 50 % for 6 h
        (0.5, 6, False),  # exactly 50 %: not strictly below
        (0.49, 5, False),  # too short
        (0.0, 23, True),  # zero for 23 h: a drop (not yet zero_consumption)
    ],
)
def test_consumption_drop_edges(level: float, hours: int, flagged: bool) -> None:
    use = usual()
    start = 2 * WEEK + 10  # a Wednesday, hour 10: weekday baseline 1 kWh
    use[start : start + hours] = level
    found = ConsumptionDrop().detect(hourly("M", use), REG)
    assert (len(found) == 1) is flagged
    if flagged:
        assert found["starts_at"].iat[0] == T0 + pd.Timedelta(hours=start)
        assert found["evidence"].iat[0]["hours"] == hours


def test_weekend_is_not_a_drop_with_hour_of_week_baseline() -> None:
    assert ConsumptionDrop().detect(hourly("M", usual()), REG).empty


def test_drop_needs_min_history_days() -> None:
    use = usual()
    use[WEEK + 10 : WEEK + 30] = 0.1  # second Monday: five comparable weekdays before it
    assert ConsumptionDrop().detect(hourly("M", use), REG).empty
    assert len(ConsumptionDrop(min_history_days=5).detect(hourly("M", use), REG)) == 1


def test_drop_absolute_floor() -> None:
    use = usual() * 0.1  # 0.1 kWh/h usual: a drop to 0.04 is only 0.06 kWh
    use[2 * WEEK + 10 : 2 * WEEK + 20] = 0.04
    assert ConsumptionDrop().detect(hourly("M", use), REG).empty
    assert len(ConsumptionDrop(min_deficit_kwh=0.05).detect(hourly("M", use), REG)) == 1


@pytest.mark.parametrize(("hours", "flagged"), [(24, True), (23, False)])
def test_zero_consumption_edges(hours: int, flagged: bool) -> None:
    use = usual(2)
    use[200 : 200 + hours] = 0.0
    found = ZeroConsumption().detect(hourly("M", use), REG)
    assert (len(found) == 1) is flagged
    # One cause, one alert: a day of zeros is not also a consumption drop.
    if flagged:
        use3 = np.r_[usual(2), usual(1)]
        use3[2 * WEEK + 5 : 2 * WEEK + 5 + hours] = 0.0
        r = hourly("M", use3)
        assert len(ZeroConsumption().detect(r, REG)) == 1
        assert ConsumptionDrop().detect(r, REG).empty


def test_zero_consumption_ignores_outages_and_supply_meters() -> None:
    reg = registry(A={}, B={})
    use = usual(2)
    use[200:230] = 0.0
    v = np.full(use.size + 1, 220.0)
    v[200:232] = 0.0  # both customers of the area without voltage: an outage
    both = pd.concat([hourly("A", use, v), hourly("B", use, v)], ignore_index=True)
    assert ZeroConsumption().detect(both, reg).empty
    supply = registry(A={"role": "transformer", "customer_class": ""})
    assert ZeroConsumption().detect(hourly("A", use), supply).empty


def test_run_lengths_and_daily_energy() -> None:
    mask = np.array([[True, True, False, True], [False, True, True, True]])
    np.testing.assert_array_equal(run_lengths(mask), [[2, 2, 0, 1], [0, 3, 3, 3]])
    hours = pd.date_range("2026-01-05T12:00Z", periods=48, freq="h")
    kwh = np.ones((1, 48))
    kwh[0, 20] = np.nan
    total, days = daily_energy(kwh, hours)
    assert list(days.strftime("%d")) == ["05", "06", "07"]
    assert np.isnan(total[0, 0])  # only 12 h of the first day
    assert np.isnan(total[0, 1])  # a missing hour on the second day
    assert np.isnan(total[0, 2])


def test_cusum_drop_accumulates_sustained_shifts_only() -> None:
    z = np.array([[0.0, -2.0, -2.0, 1.0, 0.0], [-0.5, -0.5, -0.5, -0.5, np.nan]])
    s = cusum_drop(z, k=0.5)
    np.testing.assert_allclose(s[0], [0.0, 1.5, 3.0, 1.5, 1.0])
    np.testing.assert_allclose(s[1], [0.0, 0.0, 0.0, 0.0, 0.0])


# ------------------------------------------------------------------------ theft


from meterwatch.analytics.detectors.theft import (  # noqa: E402
    TheftSuspected,
    TransformerLoss,
    area_loss,
    rank_suspects,
)
from meterwatch.analytics.window import build_window  # noqa: E402


def _area_day(customer_kwh: float, ct: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Area T1 for 2 days: supply S 100 kWh/day (CT 10: 10 register kWh); customers A (CT 1)
    and B (CT ``ct``) billing ``customer_kwh`` together (half each)."""
    reg = registry(
        S={"role": "transformer", "customer_class": "", "phases": 3, "ct_ratio": 10.0},
        A={},
        B={"ct_ratio": ct},
    )
    n = 48
    per_h = {"S": 100 / 24 / 10, "A": customer_kwh / 2 / 24, "B": customer_kwh / 2 / 24 / ct}
    parts = [hourly(m, np.full(n, v)) for m, v in per_h.items()]
    return pd.concat(parts, ignore_index=True), reg


@pytest.mark.parametrize(
    ("customer_kwh", "ct", "kind"),
    [
        (90.0, 1.0, None),  # 10 % loss: at the band edge, not above
        (89.9, 1.0, "high"),  # 10.1 %
        (89.9, 5.0, "high"),  # CT applied to B
        (100.0, 1.0, None),  # 0 %: at the lower edge
        (100.1, 1.0, "negative"),  # negative loss: data or topology error
    ],
)
def test_transformer_loss_band_edges(customer_kwh: float, ct: float, kind: str | None) -> None:
    readings, reg = _area_day(customer_kwh, ct)
    table, _ = area_loss(build_window(readings, reg))
    assert table["loss"].dropna().to_numpy() == pytest.approx([1 - customer_kwh / 100] * 2)
    found = TransformerLoss().detect(readings, reg)
    if kind is None:
        assert found.empty
        return
    assert len(found) == 1
    row = found.iloc[0]
    assert row["meter_id"] is None and row["transformer_id"] == "T1"
    assert row["evidence"]["kind"] == kind
    assert ("topology" in row["summary"]) is (kind == "negative")
    assert len(row["evidence"]["days"]) == 2


def test_transformer_loss_unknown_when_a_customer_misses_hours() -> None:
    readings, reg = _area_day(80.0)
    gap = (readings["meter_id"] == "A") & readings["ts"].between(
        T0 + pd.Timedelta(hours=5), T0 + pd.Timedelta(hours=9)
    )
    found = TransformerLoss().detect(readings[~gap], reg)
    # Day 1 is unknown (A misses hours); day 2 is still judged.
    assert len(found) == 1
    assert [d["day"] for d in found["evidence"].iat[0]["days"]] == ["2026-01-06"]


@pytest.fixture(scope="module")
def theft_fleet() -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    from meterwatch.simulators.fleet import Fleet, Injection, generate, inject

    f = Fleet(
        start=T0.to_pydatetime(),
        residential=24,
        commercial=8,
        industrial=4,
        transformers=2,
        seed=5,
        step_s=900.0,
    )
    r = generate(f, f.start + pd.Timedelta(days=24), interval_s=3600)
    start = T0 + pd.Timedelta(days=15)
    end = T0 + pd.Timedelta(days=24)
    victims = ["R0003", "R0015", "C0002"]
    inj = [
        Injection("h1", victims[0], start, end),
        Injection("h5", victims[1], start, end),
        Injection("h2", victims[2], start, end),
    ]
    r2, reg, labels = inject(r, f.registry, inj, seed=1)
    assert list(labels["type"]) == ["theft_suspected"] * 3
    return r2, reg, victims


def test_rank_suspects_puts_the_attacked_meters_first(theft_fleet) -> None:
    readings, reg, victims = theft_fleet
    ranked = rank_suspects(readings, reg)
    assert list(ranked.columns) == ["meter_id", "score", "rank", "reasons"]
    customers = set(reg.loc[reg["role"] == "customer", "meter_id"])
    assert set(ranked["meter_id"]) == customers
    assert ranked["score"].between(0, 1).all()
    assert list(ranked["rank"]) == list(range(1, len(customers) + 1))
    assert set(ranked["meter_id"].head(3)) == set(victims)
    assert ranked["score"].iat[2] > 0.6 > ranked["score"].iat[3]
    assert "flattened daily profile" in ranked.set_index("meter_id").at["R0015", "reasons"]


def test_theft_suspected_alerts_carry_the_score(theft_fleet) -> None:
    readings, reg, victims = theft_fleet
    found = TheftSuspected().detect(readings, reg)
    assert set(found["meter_id"]) == set(victims)
    for ev in found["evidence"]:
        assert 0.6 <= ev["score"] <= 1 and set(ev["features"]) >= {"level", "shape"}
    assert TheftSuspected(min_days=30).detect(readings, reg).empty  # 24 days: not judged


def test_analyze_writes_ranked_suspects(theft_fleet, tmp_path) -> None:
    from click.testing import CliRunner

    from meterwatch.cli import main

    readings, reg, victims = theft_fleet
    readings.to_parquet(tmp_path / "r.parquet", index=False)
    reg.to_csv(tmp_path / "meters.csv", index=False)
    res = CliRunner().invoke(
        main,
        [
            "analyze",
            "--readings",
            str(tmp_path / "r.parquet"),
            "--meters",
            str(tmp_path / "meters.csv"),
            "--out",
            str(tmp_path / "alerts.jsonl"),
            "--suspects",
            str(tmp_path / "suspects.csv"),
        ],
    )
    assert res.exit_code == 0, res.output
    sus = pd.read_csv(tmp_path / "suspects.csv")
    assert list(sus.columns) == ["meter_id", "score", "rank", "reasons"]
    assert set(sus["meter_id"].head(3)) == set(victims)
    alerts = pd.read_json(tmp_path / "alerts.jsonl", lines=True)
    assert set(alerts.loc[alerts["type"] == "theft_suspected", "meter_id"]) == set(victims)


def test_analyze_in_partitions_gives_the_same_alerts(theft_fleet, tmp_path) -> None:
    """`--partition-meters 1` runs every area on its own; the alert feed equals the one-partition
    run (areas are never split, and theft suspects are scored against their peers in every
    partition). On a Dask cluster: tests/integration/test_dask_cluster.py."""
    from click.testing import CliRunner

    from meterwatch.cli import main

    readings, reg, victims = theft_fleet
    readings.to_parquet(tmp_path / "r.parquet", index=False)
    reg.to_csv(tmp_path / "meters.csv", index=False)
    feeds = {}
    for label, extra in (("one", []), ("two", ["--partition-meters", "1"])):
        out = tmp_path / f"{label}.jsonl"
        args = ["analyze", "--readings", str(tmp_path / "r.parquet")]
        args += ["--meters", str(tmp_path / "meters.csv"), "--out", str(out), *extra]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        feed = pd.read_json(out, lines=True)
        feeds[label] = sorted(
            zip(feed["type"], feed["meter_id"].fillna(""), feed["starts_at"], strict=True)
        )
    assert feeds["one"] and feeds["one"] == feeds["two"]
    assert {m for t, m, _ in feeds["two"] if t == "theft_suspected"} == set(victims)


def test_fleet_score_in_threads_equals_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Isolation Forest scores a large fleet in row chunks on several threads; every row
    gets exactly the score one call gives (same trees, same order), and the ranking of rows
    in meter-id order equals the ranking by (score, meter id)."""
    from sklearn.ensemble import IsolationForest

    from meterwatch.analytics.detectors import theft

    x = np.random.default_rng(1).normal(size=(4000, 6))
    model = IsolationForest(n_estimators=20, random_state=0).fit(x)
    monkeypatch.setattr(theft, "_SCORE_ROWS_PER_THREAD", 500)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert np.array_equal(theft._score_samples(model, x), model.score_samples(x))

    scored = pd.DataFrame(
        {
            "score": np.round(np.random.default_rng(2).random(3000), 2),  # many ties
            "reasons": "r",
        },
        index=pd.Index([f"M{i:05d}" for i in range(3000)], name="meter_id"),
    )
    fast = theft._ranked(scored)
    slow = theft._ranked(scored.iloc[::-1])  # not in id order: sorted by (score, id)
    pd.testing.assert_frame_equal(fast, slow)
    assert fast["rank"].tolist() == list(range(1, 3001))
