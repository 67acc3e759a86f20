"""Evaluation scenarios: a simulated fleet with every catalogue alert type injected, and its labels.

:func:`build_scenario` simulates a fleet (:mod:`simulators.fleet`), injects every catalogue type
(in-simulation anomalies plus post-hoc faults and the six Jokar et al. 2016 theft attacks) and
returns readings, registry and labels (the ground truth `meterwatch evaluate` scores against).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

#: Data-quality injections of :func:`build_scenario`: (type, (shortest, longest) [h]). Two
#: kinds of reporting gaps (8 h, and 1-3 h), a meter offline for a day and more, an hour of
#: duplicated readings (exact, and conflicting), a day of readings 7 minutes off the grid,
#: an hour of text in a numeric column.
DATA_QUALITY_PLAN: tuple[tuple[str, tuple[float, float]], ...] = (
    ("missing_data", (8.0, 8.0)),
    ("missing_data", (1.0, 3.0)),
    ("meter_offline", (26.0, 36.0)),
    ("duplicate_exact", (1.0, 1.0)),
    ("duplicate_conflict", (1.0, 1.0)),
    ("off_grid", (24.0, 24.0)),
    ("non_numeric", (1.0, 1.0)),
)
#: Columns that ``non_numeric`` injections write text into, in turn.
NON_NUMERIC_COLUMNS: tuple[str, ...] = ("power_kw", "voltage_l1_v")


@dataclass
class Scenario:
    """Readings, registry and ground truth of one evaluation run."""

    readings: pd.DataFrame
    registry: pd.DataFrame
    labels: pd.DataFrame
    days: float
    start: pd.Timestamp


def build_scenario(
    meters: int = 1000,
    days: float = 60.0,
    interval_s: float = 900.0,
    seed: int = 11,
    per_type: int | None = None,
    progress: Any = None,
    data_quality: bool = True,
) -> Scenario:
    """Simulate ``meters`` customer meters for ``days`` and inject every catalogue type.

    Class mix 70 % residential, 20 % commercial, 10 % industrial, one transformer area per 50
    customers. ``per_type`` injections of each type (default ``max(2, meters // 100)``) on
    distinct meters; faults start after day 15 (history for the baselines), theft attacks run
    from a random day after day 15 to the end; the data-quality faults of
    :data:`DATA_QUALITY_PLAN` (``per_type`` of each line; ``data_quality`` false leaves them
    out) follow. ``progress(text)`` is called between stages.
    """
    from meterwatch.simulators.fleet import (
        BILLING_FAULT_TYPES,
        FAULT_TYPES,
        THEFT_ATTACKS,
        AnomalySpec,
        Fleet,
        Injection,
        generate,
        inject,
    )

    note = progress or (lambda _text: None)
    n_res = int(round(meters * 0.7))
    n_com = int(round(meters * 0.2))
    n_ind = max(meters - n_res - n_com, 1)
    n_areas = max(2, meters // 50)
    k = per_type or max(2, meters // 100)
    rng = np.random.default_rng([seed, 99])
    start = pd.Timestamp("2026-01-05T00:00:00Z")
    day_s = 86400.0
    first = 15 * day_s
    span = days * day_s - first - 2 * day_s
    if span <= 0:
        raise ValueError(f"days={days!r}: the evaluation needs more than 17 days")

    def when() -> float:
        return float(first + rng.uniform(0, span))

    in_sim = [
        AnomalySpec("phase_break", None, when(), 3 * 3600.0),
        AnomalySpec("voltage_loss", None, when(), 2 * 3600.0),
        AnomalySpec("register_decrease", None, when()),
        AnomalySpec("consumption_spike", None, when(), 2 * 3600.0, 5.0),
    ] * k
    fleet = Fleet(
        start=start.to_pydatetime(),
        residential=n_res,
        commercial=n_com,
        industrial=n_ind,
        transformers=n_areas,
        seed=seed,
        step_s=interval_s,
        anomalies=in_sim,
    )
    note(f"simulating {len(fleet.registry)} meters × {days:g} days")
    readings = generate(fleet, start.to_pydatetime() + pd.Timedelta(days=days), interval_s)
    # As the service stores them: every read with the collector's receipt time (the true
    # time here), which a meter clock running ahead (clock_error) does not move.
    readings["collected_at"] = readings["ts"]
    reg = fleet.registry
    used = {a.meter_id for a in fleet.anomalies}
    cust = reg[(reg["role"] == "customer") & ~reg["meter_id"].isin(used)]
    three = cust[cust["phases"] == 3]["meter_id"].to_numpy()
    anyone = cust["meter_id"].to_numpy()
    areas = reg[reg["role"] == "transformer"]["meter_id"].to_numpy()
    taken: set[str] = set()

    def pick(pool: np.ndarray, what: str = "customer meters") -> str:
        free = np.array([m for m in pool if m not in taken])
        if not free.size:
            raise ValueError(
                f"meters={meters}, per_type={k}: not enough free {what} for distinct "
                "injections; use more meters or a smaller per_type"
            )
        m = str(rng.choice(free))
        taken.add(m)
        return m

    end_all = start + pd.Timedelta(days=days)
    injections: list[Injection] = []
    # Multiplier mismatches need CT meters (industrial): reserve them before other faults.
    ct_pool = cust[cust["ct_ratio"] > 1]["meter_id"].to_numpy()
    ct_meters = [pick(ct_pool, "meters with ct_ratio > 1") for _ in range(k)]
    durations_h = {
        "consumption_drop": (8, 16),
        "zero_consumption": (30, 48),
        "outage": (1, 3),
        "transformer_overload": (2, 4),
    }
    area_pool = list(rng.permutation(areas)) * (2 * k)  # areas may repeat, at other times
    for typ in FAULT_TYPES:
        for _ in range(k):
            t0 = start + pd.Timedelta(seconds=when())
            lo, hi = durations_h.get(typ, (2, 6))
            t1 = t0 + pd.Timedelta(hours=float(rng.uniform(lo, hi)))
            if typ in ("outage", "transformer_overload"):
                if not area_pool:
                    continue
                meter = str(area_pool.pop())
            elif typ in ("current_loss", "voltage_unbalance", "current_unbalance"):
                meter = pick(three)
            elif typ == "low_power_factor":
                meter = pick(three)  # residential power factor is not assessed (tariff rule)
            else:
                meter = pick(anyone)
            injections.append(Injection(typ, meter, t0, t1))
    # Billing faults. Windowed rules (energy/power, multiplier) judge whole 24 h windows from
    # the grid start (UTC midnight here): those injections cover 1-2 whole days (+/- 1 h).
    # Clock errors: the meter's clock jumps 40 min to a few hours ahead in the last 2-6 h;
    # the rule compares each read's time with its collected_at (leads staggered 20 min apart,
    # which the older fleet-reference rule for files without receipt times also needs).
    day = pd.Timedelta(days=1)
    for typ in BILLING_FAULT_TYPES:
        for i in range(k):
            t0 = start + pd.Timedelta(seconds=when())
            if typ == "meter_stuck":
                meter, t1 = pick(anyone), t0 + pd.Timedelta(hours=float(rng.uniform(5, 8)))
            elif typ == "meter_runaway":
                meter, t1 = pick(anyone), t0 + pd.Timedelta(hours=float(rng.uniform(0.5, 2)))
            elif typ in ("energy_power_mismatch", "multiplier_mismatch"):
                meter = ct_meters[i] if typ == "multiplier_mismatch" else pick(anyone)
                d0 = t0.normalize()
                t0 = d0 - pd.Timedelta(hours=1)
                t1 = d0 + int(rng.integers(1, 3)) * day + pd.Timedelta(hours=1)
            elif typ == "clock_error":
                meter = pick(anyone)
                t0 = end_all - pd.Timedelta(hours=float(rng.uniform(2, 6)))
                t1 = t0 + pd.Timedelta(minutes=40 + 20 * i)
            else:  # estimation_excess: a gap longer than the 24 h limit
                meter, t1 = pick(anyone), t0 + pd.Timedelta(hours=float(rng.uniform(27, 40)))
            injections.append(Injection(typ, meter, t0, t1))
    for attack in THEFT_ATTACKS:
        for _ in range(k):
            t0 = start + pd.Timedelta(days=int(rng.integers(15, max(16, int(days) - 10))))
            injections.append(Injection(attack, pick(anyone), t0, end_all))
    # Data-quality faults (issue 15 item 4), each on a meter of its own, drawn after every
    # other injection so that the labels above stay as they were.
    hour = pd.Timedelta(hours=1)
    for typ, hours in DATA_QUALITY_PLAN if data_quality else ():
        for i in range(k):
            t0 = start + pd.Timedelta(seconds=when())
            shortest, longest = hours
            draw = shortest if shortest == longest else rng.uniform(shortest, longest)
            length = hour * float(draw)
            column = NON_NUMERIC_COLUMNS[i % len(NON_NUMERIC_COLUMNS)]
            injections.append(
                Injection(
                    typ,
                    pick(anyone),
                    t0,
                    t0 + length,
                    column=column if typ == "non_numeric" else None,
                )
            )
    note(f"injecting {len(injections)} faults and attacks")
    readings, reg, post = inject(readings, reg, injections, seed=seed)
    sim = fleet.labels().assign(injection=lambda f: f["type"])
    labels = pd.concat([sim, post], ignore_index=True)
    return Scenario(readings, reg, labels, float(days), start)
