"""A simulated fleet of several transformer areas for the partitioned-analytics tests (unit:
in this process; integration: on a Dask cluster), and findings in a canonical order."""

from __future__ import annotations

import pandas as pd

from meterwatch.simulators.scenarios import build_scenario

#: Customer meters of the fleet below whose area is unknown (empty transformer_id).
WITHOUT_AREA = 4
#: Faults judged on the meter alone (their meters are the ones without an area).
METER_LEVEL = ("phase_break", "voltage_loss", "overvoltage", "undervoltage")


def several_areas_fleet() -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """``(readings, registry, meters without an area)``: 150 customer meters in three areas
    over 20 days with every alert type injected (``build_scenario``); :data:`WITHOUT_AREA`
    faulty customer meters have their area blanked, so meter-level rules must judge them
    outside any area."""
    sc = build_scenario(meters=150, days=20, seed=5)
    reg = sc.registry.copy()
    cust = set(reg.loc[reg["role"] == "customer", "meter_id"])
    lab = sc.labels[sc.labels["type"].isin(METER_LEVEL)]
    faulty = [m for m in dict.fromkeys(lab["meter_id"].dropna()) if m in cust]
    blank = sorted(faulty[:WITHOUT_AREA])
    reg.loc[reg["meter_id"].isin(blank), "transformer_id"] = ""
    return sc.readings, reg, blank


def canonical_findings(findings: pd.DataFrame) -> pd.DataFrame:
    """``findings`` sorted by every identifying column and the summary, fresh index: two runs
    that found the same are equal frames."""
    key = ["type", "meter_id", "transformer_id", "starts_at", "ends_at", "summary"]
    return findings.sort_values(key, kind="mergesort", na_position="last").reset_index(drop=True)
