"""A small simulated fleet with faults injected, for tests that judge one window two ways."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from meterwatch.analytics.window import Window, build_window
from meterwatch.simulators.fleet import Fleet, Injection, generate, inject

#: When the fleet starts (a Monday).
T0 = pd.Timestamp("2026-01-05T00:00:00Z")
DAY = pd.Timedelta(days=1)


def small_fleet(days: float = 4, **sizes: Any) -> tuple[Fleet, pd.DataFrame, list[str]]:
    """A fleet (6 residential, 3 commercial, 2 industrial meters unless ``sizes`` say
    otherwise; seed 5), ``days`` of its 15-minute readings from :data:`T0`, and its customer
    meter ids."""
    kw: dict[str, Any] = {"residential": 6, "commercial": 3, "industrial": 2, "seed": 5, **sizes}
    fleet = Fleet(start=T0.to_pydatetime(), **kw)
    readings = generate(fleet, (T0 + days * DAY).to_pydatetime(), interval_s=900)
    reg = fleet.registry
    return fleet, readings, list(reg.loc[reg["role"] == "customer", "meter_id"])


def faulty_window(
    fleet: Fleet, readings: pd.DataFrame, faults: Sequence[Injection], drop: Sequence[str] = ()
) -> Window:
    """The dense window of ``readings`` with ``faults`` injected (and the columns ``drop``
    left out, e.g. ``collected_at`` for the clock reference of files without receipt times)."""
    faulty, registry, _ = inject(readings, fleet.registry, list(faults), seed=2)
    return build_window(faulty.drop(columns=list(drop), errors="ignore"), registry)
