"""The alert-type catalogue (contracts §3): what each type is, written once.

Every package reads a type's category, default severity, scope and what inhibits it from here:
detectors take their severity, the alert manager its inhibition rules and categories, the
evaluation its per-category targets and area scoping, billing its open billing alerts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Category = Literal["consumption", "theft", "billing", "equipment", "data_quality"]
Severity = Literal["critical", "major", "minor", "warning", "info"]

CATEGORIES: tuple[str, ...] = ("consumption", "theft", "billing", "equipment", "data_quality")
#: Severities, most urgent first.
SEVERITIES: tuple[str, ...] = ("critical", "major", "minor", "warning", "info")


@dataclass(frozen=True)
class AlertType:
    """One catalogue entry.

    ``scope`` is ``meter`` (the alert names a meter) or ``area`` (a transformer area: no
    ``meter_id``, fingerprinted by ``transformer_id``). ``inhibited_by`` lists area-level types
    whose open alert in the meter's transformer area keeps this one quiet (not notified, still
    in the feed): a meter that lost voltage because its whole area is out is not a second page.
    """

    name: str
    category: Category
    severity: Severity
    scope: Literal["meter", "area"] = "meter"
    inhibited_by: tuple[str, ...] = ()
    description: str = ""


_TYPES: tuple[AlertType, ...] = (
    # consumption
    AlertType("consumption_spike", "consumption", "warning", description="usage far above the meter's own usual for that time"),
    AlertType("consumption_drop", "consumption", "warning", description="usage far below the meter's own usual"),
    AlertType("zero_consumption", "consumption", "warning", description="no consumption for a long time while powered"),
    # theft
    AlertType("theft_suspected", "theft", "major", description="ranked theft score above the cut-off"),
    AlertType("transformer_loss", "theft", "major", scope="area", description="area line loss out of band, or negative"),
    # billing
    AlertType("register_decrease", "billing", "major", description="the energy register went backwards"),
    AlertType("meter_stuck", "billing", "major", description="register unchanged under load"),
    AlertType("meter_runaway", "billing", "major", description="register advances faster than the meter can measure"),
    AlertType("energy_power_mismatch", "billing", "major", description="energy delta disagrees with integrated power"),
    AlertType("multiplier_mismatch", "billing", "major", description="energy/power ratio says another CT ratio"),
    AlertType("clock_error", "billing", "minor", description="meter clock off by more than the tolerance"),
    AlertType("estimation_excess", "billing", "minor", description="too long a run of estimated intervals"),
    # equipment
    AlertType("voltage_loss", "equipment", "critical", inhibited_by=("outage",), description="失压: a phase voltage lost while current flows"),
    AlertType("phase_break", "equipment", "critical", description="断相: a phase without voltage and current"),
    AlertType("current_loss", "equipment", "critical", description="失流: a phase without current while the others carry load"),
    AlertType("overvoltage", "equipment", "minor", description="voltage above the supply limit"),
    AlertType("undervoltage", "equipment", "minor", description="voltage below the supply limit"),
    AlertType("voltage_unbalance", "equipment", "minor", description="phase voltages unbalanced"),
    AlertType("current_unbalance", "equipment", "warning", description="phase currents unbalanced"),
    AlertType("reverse_power", "equipment", "major", description="power flows backwards at a meter that does not export"),
    AlertType("low_power_factor", "equipment", "warning", description="power factor below the limit under load"),
    AlertType("frequency_deviation", "equipment", "minor", description="grid frequency out of band"),
    AlertType("outage", "equipment", "critical", scope="area", description="an area's supply lost"),
    AlertType("transformer_overload", "equipment", "major", scope="area", description="transformer loaded above its rating"),
    AlertType("calibration_due", "equipment", "info", description="calibration interval passed"),
    # data quality
    AlertType("missing_data", "data_quality", "minor", description="a gap in a meter's readings"),
    AlertType("meter_offline", "data_quality", "major", inhibited_by=("outage",), description="a meter stopped answering"),
    AlertType("duplicate_reading", "data_quality", "minor", description="several readings of one meter at one instant"),
    AlertType("off_grid_reading", "data_quality", "minor", description="readings off the meter's usual interval grid"),
    AlertType("non_numeric_value", "data_quality", "minor", description="values that are not numbers (read as missing)"),
)  # fmt: skip

#: Type name -> entry, in catalogue order.
CATALOGUE: dict[str, AlertType] = {t.name: t for t in _TYPES}
#: Type name -> category (contracts §3).
ALERT_CATEGORIES: dict[str, str] = {t.name: t.category for t in _TYPES}
#: Types whose alerts name a transformer area, not a meter.
AREA_TYPES: frozenset[str] = frozenset(t.name for t in _TYPES if t.scope == "area")


def alert_type(name: str) -> AlertType:
    """The catalogue entry of ``name``; KeyError naming the known types otherwise."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise KeyError(f"unknown alert type {name!r}; known: {', '.join(CATALOGUE)}") from None


def types_in(*categories: str) -> tuple[str, ...]:
    """Type names of the given categories, in catalogue order."""
    return tuple(t.name for t in _TYPES if t.category in categories)
