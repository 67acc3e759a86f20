"""Fitted baselines (analytics.baselines): fit on history, keep, judge later days against them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from meterwatch.analytics.baselines import Baselines, fit_baselines, merge
from meterwatch.analytics.detectors.consumption import ConsumptionDrop, ConsumptionSpike
from meterwatch.analytics.detectors.theft import TheftSuspected
from meterwatch.analytics.window import build_window
from meterwatch.core.errors import BaselineError
from meterwatch.simulators.scenarios import build_scenario


@pytest.fixture(scope="module")
def scenario():  # noqa: ANN201
    return build_scenario(100, 30.0, 900.0, 11, None)


def split(s, days: int = 27):  # noqa: ANN001, ANN201
    cut = s.readings["ts"].min().floor("D") + pd.Timedelta(days=days)
    r = s.readings
    return r[r["ts"] <= cut], r[r["ts"] > cut]


def learners() -> list:
    return [ConsumptionSpike(), ConsumptionDrop(), TheftSuspected()]


def test_theft_judged_on_three_days_against_fitted_references_finds_the_same_suspects(
    scenario,  # noqa: ANN001
) -> None:
    """Fit on 27 days, keep, then judge the last 3 days alone: the suspects are those a run
    over all 30 days finds (and the attacked meters are among them)."""
    history, days = split(scenario)
    whole = TheftSuspected().detect(scenario.readings, scenario.registry)
    kept = fit_baselines(build_window(history, scenario.registry), learners())
    fresh = learners()
    assert kept.apply(fresh) == ["consumption_spike", "consumption_drop", "theft_suspected"]
    fitted = fresh[2].detect(days, scenario.registry)
    assert len(whole) > 0
    assert sorted(fitted["meter_id"]) == sorted(whole["meter_id"])
    victims = set(scenario.labels.loc[scenario.labels["type"] == "theft_suspected", "meter_id"])
    assert set(fitted["meter_id"]) & victims
    # Without the baselines three days are too few to judge anyone.
    assert TheftSuspected().detect(days, scenario.registry).empty


def test_baselines_survive_bytes_and_files(scenario, tmp_path: Path) -> None:  # noqa: ANN001
    history, _ = split(scenario)
    kept = fit_baselines(build_window(history, scenario.registry), learners())
    kept.version = 3
    kept.save(tmp_path / "b.npz")
    back = Baselines.load(tmp_path / "b.npz")
    assert back.version == 3 and back.params == kept.params
    assert (back.history_start, back.history_end) == (kept.history_start, kept.history_end)
    for key, st in kept.states.items():
        other = back.states[key]
        assert list(other.ids) == list(st.ids)
        for name, a in st.per_meter.items():
            np.testing.assert_array_equal(other.per_meter[name], a)
    # The spike and drop rules fit one profile: it is kept (and loaded) once.
    spike, drop = back.states["consumption_spike"], back.states["consumption_drop"]
    assert drop.per_meter["median"] is spike.per_meter["median"]
    assert back.describe().startswith("baselines v3 fitted")
    assert f"{kept.meters} meters, consumption_drop, consumption_spike, theft_suspected" in (
        back.describe()
    )


def test_partitions_fitted_apart_merge_into_the_fit_of_all(scenario) -> None:  # noqa: ANN001
    history, _ = split(scenario)
    reg = scenario.registry
    areas = sorted(reg["transformer_id"].dropna().unique())
    half = reg["transformer_id"].isin(areas[: len(areas) // 2])
    parts = [
        fit_baselines(
            build_window(history[history["meter_id"].isin(reg.loc[sel, "meter_id"])], reg[sel]),
            learners(),
        )
        for sel in (half, ~half)
    ]
    whole = fit_baselines(build_window(history, reg), learners())
    merged = merge(parts)
    for key in ("consumption_spike", "theft_suspected"):
        a, b = merged.states[key], whole.states[key]
        order = pd.Index(a.ids).get_indexer(b.ids)
        for name in b.per_meter:
            np.testing.assert_allclose(
                a.per_meter[name][order], b.per_meter[name], rtol=1e-6, equal_nan=True
            )


def test_baselines_refuse_detectors_with_other_parameters_and_bad_files(
    scenario,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    history, _ = split(scenario)
    kept = fit_baselines(build_window(history, scenario.registry), [ConsumptionSpike()])
    with pytest.raises(BaselineError, match="consumption_spike was fitted with other .*ratio"):
        kept.apply([ConsumptionSpike(ratio=4.0)])
    (tmp_path / "junk").write_bytes(b"not a baseline")
    with pytest.raises(BaselineError, match="junk: not a baselines file"):
        Baselines.load(tmp_path / "junk")
    with pytest.raises(BaselineError, match="cannot read baselines"):
        Baselines.load(tmp_path / "missing")


def test_fit_keep_and_analyze_one_day_through_the_cli(scenario, tmp_path: Path) -> None:  # noqa: ANN001
    """`baselines fit` on 27 days into the archive of a config, then `analyze --baselines
    latest` of the last 3 days finds the theft suspects a 30-day analysis finds."""
    import json

    import yaml
    from click.testing import CliRunner

    from meterwatch.cli import main

    history, days = split(scenario)

    def parquet(frame: pd.DataFrame, name: str) -> None:
        """As Parquet (several times faster than CSV here); cells with text (the scenario's
        non-numeric injections) as text, as a CSV would hold them."""
        text = {c: "string" for c in frame.columns if frame[c].dtype == object}
        frame.astype(text).to_parquet(tmp_path / name, index=False)

    parquet(history, "history.parquet")
    days.to_csv(tmp_path / "days.csv", index=False)
    parquet(scenario.readings, "all.parquet")
    scenario.registry.to_csv(tmp_path / "meters.csv", index=False)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"analytics": {"baselines_dir": str(tmp_path / "kept")}}))
    run = CliRunner()
    args = ["--registry", str(tmp_path / "meters.csv"), "--config", str(cfg)]
    res = run.invoke(
        main, ["baselines", "fit", "--readings", str(tmp_path / "history.parquet"), *args]
    )
    assert res.exit_code == 0, res.output
    assert "baselines v1 fitted" in res.output and (tmp_path / "kept" / "v000001.npz").is_file()
    res = run.invoke(main, ["baselines", "list", "--config", str(cfg)])
    assert res.exit_code == 0 and "baselines v1 fitted" in res.output

    def suspects(readings: str, *extra: str) -> set[str]:
        out = tmp_path / f"{readings}.jsonl"
        res = run.invoke(
            main,
            [
                "analyze",
                "--readings",
                str(tmp_path / readings),
                "--meters",
                str(tmp_path / "meters.csv"),
                "--out",
                str(out),
                "--config",
                str(cfg),
                *extra,
            ],
        )
        assert res.exit_code == 0, res.output
        alerts = [json.loads(line) for line in out.read_text().splitlines()]
        return {a["meter_id"] for a in alerts if a["type"] == "theft_suspected"}

    whole = suspects("all.parquet")
    assert whole and suspects("days.csv", "--baselines", "latest") == whole
    assert suspects("days.csv") == set()  # three days alone judge nobody
    res = run.invoke(
        main,
        [
            "analyze",
            "--readings",
            str(tmp_path / "days.csv"),
            "--meters",
            str(tmp_path / "meters.csv"),
            "--out",
            str(tmp_path / "x.jsonl"),
            "--baselines",
            str(tmp_path / "nope.npz"),
        ],
    )
    assert res.exit_code == 2 and "error: cannot read baselines" in res.stderr


def test_a_fit_needs_the_register_only(scenario) -> None:  # noqa: ANN001
    """A history window of the import register alone (a fraction of the memory) fits the
    same baselines as one of every quantity."""
    from meterwatch.analytics.baselines import LEARN_FIELDS

    history, _ = split(scenario)
    lean = build_window(history, scenario.registry, fields=LEARN_FIELDS)
    assert set(lean.values) == {"energy_import_kwh"}
    assert np.isnan(lean.q("voltage_l1_v")).all() and lean.q("voltage_l1_v").shape == lean.t.shape
    full = fit_baselines(build_window(history, scenario.registry), learners())
    thin = fit_baselines(lean, learners())
    for key, st in full.states.items():
        for name, a in st.per_meter.items():
            np.testing.assert_array_equal(thin.states[key].per_meter[name], a)
