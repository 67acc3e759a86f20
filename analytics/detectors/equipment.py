"""Equipment-fault rules on readings: current loss, voltage band, unbalance, power, outage.

Every rule here works on whole arrays of a :func:`analytics.base.prepare` frame (one row per
meter and instant) and reports *episodes* (runs of consecutive readings of one meter where
the rule holds, see :mod:`analytics.base`) lasting at least ``min_readings`` readings.

Shared conventions of this module
---------------------------------
* ``Un`` is ``nominal_voltage_v`` [V] and ``Ib`` is ``rated_current_a`` [A] from the
  registry; phases present follow ``phases`` (1 -> L1, 3 -> L1..L3).
* Readings that belong to an area *outage* (see :class:`Outage`) never trigger a
  per-meter voltage or current rule: the outage is reported once, for the area.
* A reading with any present phase below the voltage-loss trigger (78 % Un) is the
  business of voltage loss / phase break, so the band, unbalance and current-loss rules
  ignore it (one cause, one alert).
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from meterwatch.analytics.base import (
    Detector,
    at_least,
    check_count,
    check_fraction,
    check_positive,
    episode_ids,
    episodes,
    findings_frame,
    group_codes,
    memo,
    memo_on,
    meter_windows,
    plain,
    prepare,
    short_ts,
    strictly_greater,
    strictly_less,
    ts_ns,
    utc,
)
from meterwatch.analytics.registry import register
from meterwatch.core.schema import CURRENT_COLUMNS, VOLTAGE_COLUMNS, empty_findings

#: Registry columns every rule of this module reads.
REGISTRY_COLUMNS: tuple[str, ...] = (
    "transformer_id",
    "role",
    "customer_class",
    "phases",
    "nominal_voltage_v",
    "rated_current_a",
    "ct_ratio",
)
#: Voltage-loss trigger of State Grid meters (Q/GDW 1354) [fraction of Un]; below it a
#: phase is "lost" and belongs to voltage_loss / phase_break / outage.
LIVE_FRACTION = 0.78
#: Default outage voltage [fraction of Un]: below the phase-break trigger of 60 % Un.
OUTAGE_FRACTION = 0.6
#: Default time bucket that groups readings of an area taken "at the same time" [min].
OUTAGE_BUCKET_MINUTES = 15.0


class Phases:
    """Per-reading arrays of a prepared frame: voltages, currents, Un, Ib, phase presence."""

    def __init__(self, frame: pd.DataFrame, key: tuple[Any, ...] = ()) -> None:
        #: Session key of the inputs the frame was prepared from (see analytics.base.memo).
        self.key = key
        self.u = frame[list(VOLTAGE_COLUMNS)].to_numpy(dtype=float)
        self.i = frame[list(CURRENT_COLUMNS)].to_numpy(dtype=float)
        self.un = pd.to_numeric(frame["nominal_voltage_v"], errors="coerce").to_numpy(float)
        self.ib = pd.to_numeric(frame["rated_current_a"], errors="coerce").to_numpy(float)
        self.ct = pd.to_numeric(frame["ct_ratio"], errors="coerce").to_numpy(float)
        ph = pd.to_numeric(frame["phases"], errors="coerce").to_numpy(float)
        self.phases = ph
        self.three = ph == 3
        self.present = np.column_stack([(ph == 1) | self.three, self.three, self.three])
        # Every present phase at or above the voltage-loss trigger (NaN is not live).
        live = at_least(self.u, LIVE_FRACTION * self.un[:, None]) | ~self.present
        self.all_live = live.all(axis=1) & self.present.any(axis=1)


def outage_rows(
    frame: pd.DataFrame,
    voltage_fraction: float = OUTAGE_FRACTION,
    bucket_minutes: float = OUTAGE_BUCKET_MINUTES,
    min_meters: int = 2,
    ph: Phases | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Area outages (see :func:`_outage_rows`), shared within a suite run (read-only)."""
    params = (float(voltage_fraction), float(bucket_minutes), int(min_meters))
    result: tuple[np.ndarray, pd.DataFrame] = memo_on(
        frame, "outage_rows", params, lambda: _outage_rows(frame, *params, ph=ph)
    )
    result[0].setflags(write=False)
    return result


def _outage_rows(
    frame: pd.DataFrame,
    voltage_fraction: float = OUTAGE_FRACTION,
    bucket_minutes: float = OUTAGE_BUCKET_MINUTES,
    min_meters: int = 2,
    ph: Phases | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Which readings fall in an area outage, and the per (area, bucket) table.

    A reading is *dead* when every present phase has ``U < voltage_fraction x Un``. Readings
    are grouped by ``transformer_id`` and time bucket (``ts`` floored to ``bucket_minutes``).
    The area is out in a bucket when its supply meter (``role == "transformer"``) reports
    dead there, or -- without a supply reading in the bucket -- when at least ``min_meters``
    customer meters report and all of them are dead. Returns ``(row_mask, table)`` where
    ``table`` has one row per (area, bucket), sorted, with columns ``transformer_id``,
    ``bucket``, ``out``, ``first_ns``, ``last_ns``, ``meters``, ``dead``, ``supply``.
    """
    ph = Phases(frame) if ph is None else ph
    low = strictly_less(ph.u, voltage_fraction * ph.un[:, None]) | ~ph.present
    dead = low.all(axis=1) & ph.present.any(axis=1)
    supply = frame["role"].astype(str).to_numpy() == "transformer"
    t = ts_ns(frame["ts"])
    g = pd.DataFrame(
        {
            "transformer_id": frame["transformer_id"].astype(str).to_numpy(),
            "bucket": t // int(bucket_minutes * 60e9),
            "t": t,
            "supply": supply,
            "supply_dead": supply & dead,
            "cust": ~supply,
            "cust_dead": ~supply & dead,
            "dead": dead,
        }
    )
    table = (
        g.groupby(["transformer_id", "bucket"], sort=True)
        .agg(
            first_ns=("t", "min"),
            last_ns=("t", "max"),
            supply=("supply", "any"),
            supply_dead=("supply_dead", "any"),
            cust=("cust", "sum"),
            cust_dead=("cust_dead", "sum"),
            dead=("dead", "sum"),
            meters=("t", "size"),
        )
        .reset_index()
    )
    table["out"] = np.where(
        table["supply"],
        table["supply_dead"],
        (table["cust"] >= min_meters) & (table["cust_dead"] == table["cust"]),
    )
    key = pd.MultiIndex.from_frame(table[["transformer_id", "bucket"]])
    pos = key.get_indexer(pd.MultiIndex.from_frame(g[["transformer_id", "bucket"]]))
    return table["out"].to_numpy(dtype=bool)[pos], table


class _RowRule(Detector):
    """Shared machinery: a per-reading mask and observed value -> one finding per episode.

    Subclasses implement :meth:`_evaluate` returning ``(mask, value, limit)`` arrays over the
    prepared frame's rows: where the rule holds, the quantity it judges and the threshold it
    was judged against (for evidence and summary).
    """

    _title: ClassVar[str] = ""
    _quantity: ClassVar[str] = ""
    _unit: ClassVar[str] = ""
    _fmt: ClassVar[str] = ".1f"
    _rule_text: ClassVar[str] = ""
    _optional: ClassVar[dict[str, Any]] = {}
    _extreme: ClassVar[str] = "max"  # which end of the value range is the worst
    min_readings: int

    def _evaluate(
        self, frame: pd.DataFrame, ph: Phases
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def mask(self, readings: pd.DataFrame, meters: pd.DataFrame) -> pd.DataFrame:
        """The prepared frame with ``hit`` (rule holds), ``value`` and ``limit`` columns."""
        have = [c for c in self._optional if c in meters.columns]
        frame = prepare(readings, meters, [*REGISTRY_COLUMNS, *have])
        defaults = {c: v for c, v in self._optional.items() if c not in meters.columns}
        if defaults:
            frame = frame.assign(**defaults)
        if frame.empty:
            return frame.assign(hit=np.zeros(0, bool), value=np.zeros(0), limit=np.zeros(0))
        key = (id(readings), id(meters))
        ph = memo(("phases", *key), lambda: Phases(frame, key))
        hit, value, limit = self._evaluate(frame, ph)
        return frame.assign(hit=hit, value=value, limit=limit)

    def detect(self, readings: pd.DataFrame, meters: pd.DataFrame) -> pd.DataFrame:
        """One finding per episode of at least ``min_readings`` readings of a meter."""
        frame = self.mask(readings, meters)
        if frame.empty:
            return empty_findings()
        hit = frame["hit"].to_numpy(dtype=bool)
        starts, ends, ongoing = episodes(hit, group_codes(frame["meter_id"]))
        if starts.size == 0:
            return empty_findings()
        ids = episode_ids(hit, starts)
        value = frame["value"].to_numpy(dtype=float)
        agg = pd.DataFrame({"ep": ids[hit], "v": value[hit]}).groupby("ep")["v"].agg(["min", "max"])
        vmin, vmax = agg["min"].to_numpy(), agg["max"].to_numpy()
        lengths = ends - starts + 1
        keep = np.flatnonzero(lengths >= int(self.min_readings))
        if keep.size == 0:
            return empty_findings()
        windows = meter_windows(frame)
        t = ts_ns(frame["ts"])
        meter_ids = frame["meter_id"].to_numpy()
        areas = frame["transformer_id"].to_numpy()
        limit = frame["limit"].to_numpy(dtype=float)
        params = plain(self.get_params())
        rows = []
        for e in keep:  # loop over findings only
            s = starts[e]
            start_ts = utc(t[s])
            end_ts = pd.NaT if ongoing[e] else utc(t[ends[e]])
            worst = vmax[e] if self._extreme == "max" else vmin[e]
            when = (
                f"since {short_ts(start_ts)}"
                if ongoing[e]
                else f"from {short_ts(start_ts)} to {short_ts(end_ts)}"
            )
            f = self._fmt
            summary = (
                f"{self._title}: {self._quantity} {value[s]:{f}}{self._unit} "
                f"(worst {worst:{f}}{self._unit}; limit {limit[s]:{f}}{self._unit}) "
                f"for {int(lengths[e])} reading{'s' if lengths[e] != 1 else ''} {when}"
            )
            rows.append(
                {
                    "type": self.alert_types[0],
                    "severity": self.severity,
                    "meter_id": meter_ids[s],
                    "transformer_id": areas[s],
                    "starts_at": start_ts,
                    "ends_at": end_ts,
                    "summary": summary,
                    "evidence": plain(
                        {
                            "rule": self._rule_text,
                            "thresholds": params,
                            "limit": limit[s],
                            "observed": {
                                "quantity": self._quantity,
                                "start": value[s],
                                "min": vmin[e],
                                "max": vmax[e],
                            },
                            "readings": int(lengths[e]),
                            "window": windows[meter_ids[s]],
                        }
                    ),
                }
            )
        return findings_frame(rows)


class _OutageAware(_RowRule):
    """A row rule whose hits are cleared for readings inside an area outage."""

    def _outage(self, frame: pd.DataFrame, ph: Phases) -> np.ndarray:
        rows, _ = outage_rows(frame, ph=ph)
        return rows


@register(cadence="streaming", order=100)
class CurrentLoss(_OutageAware):
    """Current loss (失流): a phase without current while another carries load, voltages live.

    Holds on a three-phase meter when every phase has ``U >= 78 % Un`` (live), some phase
    has ``I < current_fraction x Ib`` and another phase has ``I > load_fraction x Ib``
    (strict). State Grid meter event definition (Q/GDW 1354 智能电能表功能规范: 失流 --
    three-phase voltages above the critical voltage, one or two phase currents below the
    starting current 0.5 % Ib while another phase carries more than 5 % Ib).

    Parameters
    ----------
    current_fraction : float
        "No current" below this fraction of Ib [-]. Default 0.005 (State Grid, the starting
        current).
    load_fraction : float
        "Load" above this fraction of Ib on another phase [-]. Default 0.05 (State Grid).
    min_readings : int
        Consecutive readings [readings]. Default 1: raised within one poll.
    """

    alert_types: ClassVar[tuple[str, ...]] = ("current_loss",)
    _title: ClassVar[str] = "Current loss"
    _quantity: ClassVar[str] = "lowest phase current"
    _unit: ClassVar[str] = " A"
    _fmt: ClassVar[str] = ".3f"
    _extreme: ClassVar[str] = "min"
    _rule_text: ClassVar[str] = (
        "current_loss (失流): 3-phase meter, all U >= 0.78 Un, some I < current_fraction*Ib "
        "while another I > load_fraction*Ib"
    )

    def __init__(
        self, current_fraction: float = 0.005, load_fraction: float = 0.05, min_readings: int = 1
    ) -> None:
        check_fraction("current_fraction", current_fraction)
        check_fraction("load_fraction", load_fraction)
        check_count("min_readings", min_readings)
        self.current_fraction = current_fraction
        self.load_fraction = load_fraction
        self.min_readings = min_readings

    def _evaluate(
        self, frame: pd.DataFrame, ph: Phases
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ib = ph.ib[:, None]
        none = strictly_less(ph.i, self.current_fraction * ib)
        load = strictly_greater(ph.i, self.load_fraction * ib)
        hit = (
            ph.three & ph.all_live & none.any(axis=1) & load.any(axis=1) & ~self._outage(frame, ph)
        )
        value = np.where(ph.three, np.nanmin(np.where(ph.present, ph.i, np.inf), axis=1), np.nan)
        return hit, value, self.current_fraction * ph.ib


class _VoltageBand(_OutageAware):
    """Shared code of over- and undervoltage (GB/T 12325 supply voltage deviation)."""

    single_phase_fraction: float
    three_phase_fraction: float

    def _limits(self, ph: Phases, sign: float) -> np.ndarray:
        frac = np.where(ph.three, self.three_phase_fraction, self.single_phase_fraction)
        out: np.ndarray = ph.un * (1.0 + sign * frac)
        return out


@register(cadence="streaming", order=110)
class Overvoltage(_VoltageBand):
    """Phase voltage above the GB/T 12325 band for ``min_readings`` readings.

    Holds when a present phase has ``U > (1 + fraction) x Un`` (strict), with ``fraction``
    ``single_phase_fraction`` for 1-phase meters and ``three_phase_fraction`` for 3-phase
    meters. GB/T 12325-2008 电能质量 供电电压偏差: 220 V single-phase supply +7 % / -10 %;
    three-phase supply of 20 kV and below ±7 %.

    Parameters
    ----------
    single_phase_fraction : float
        Allowed rise for 1-phase meters [-]. Default 0.07 (GB/T 12325).
    three_phase_fraction : float
        Allowed rise for 3-phase meters [-]. Default 0.07 (GB/T 12325).
    min_readings : int
        Consecutive readings [readings]. Default 2 (two polls: a single spike is not a
        supply-voltage deviation, which GB/T 12325 judges on averaged values).
    """

    alert_types: ClassVar[tuple[str, ...]] = ("overvoltage",)
    _title: ClassVar[str] = "Overvoltage"
    _quantity: ClassVar[str] = "highest phase voltage"
    _unit: ClassVar[str] = " V"
    _rule_text: ClassVar[str] = "overvoltage: U > (1 + fraction)*Un on a phase (GB/T 12325)"

    def __init__(
        self,
        single_phase_fraction: float = 0.07,
        three_phase_fraction: float = 0.07,
        min_readings: int = 2,
    ) -> None:
        check_fraction("single_phase_fraction", single_phase_fraction)
        check_fraction("three_phase_fraction", three_phase_fraction)
        check_count("min_readings", min_readings)
        self.single_phase_fraction = single_phase_fraction
        self.three_phase_fraction = three_phase_fraction
        self.min_readings = min_readings

    def _evaluate(
        self, frame: pd.DataFrame, ph: Phases
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        limit = self._limits(ph, +1.0)
        over = strictly_greater(ph.u, limit[:, None]) & ph.present
        hit = over.any(axis=1) & ~self._outage(frame, ph)
        value = np.nanmax(np.where(ph.present, ph.u, -np.inf), axis=1)
        return hit, np.where(np.isfinite(value), value, np.nan), limit


@register(cadence="streaming", order=120)
class Undervoltage(_VoltageBand):
    """Phase voltage below the GB/T 12325 band (but not lost) for ``min_readings`` readings.

    Holds when a present phase has ``U < (1 - fraction) x Un`` (strict) while every present
    phase is still live (``U >= 78 % Un``); lower voltages are voltage loss, phase break or
    outage. Fractions: GB/T 12325-2008, 220 V single-phase -10 %, three-phase ±7 %.

    Parameters
    ----------
    single_phase_fraction : float
        Allowed drop for 1-phase meters [-]. Default 0.10 (GB/T 12325).
    three_phase_fraction : float
        Allowed drop for 3-phase meters [-]. Default 0.07 (GB/T 12325).
    min_readings : int
        Consecutive readings [readings]. Default 2.
    """

    alert_types: ClassVar[tuple[str, ...]] = ("undervoltage",)
    _title: ClassVar[str] = "Undervoltage"
    _quantity: ClassVar[str] = "lowest phase voltage"
    _unit: ClassVar[str] = " V"
    _extreme: ClassVar[str] = "min"
    _rule_text: ClassVar[str] = (
        "undervoltage: U < (1 - fraction)*Un on a phase, every phase >= 0.78 Un (GB/T 12325)"
    )

    def __init__(
        self,
        single_phase_fraction: float = 0.10,
        three_phase_fraction: float = 0.07,
        min_readings: int = 2,
    ) -> None:
        check_fraction("single_phase_fraction", single_phase_fraction)
        check_fraction("three_phase_fraction", three_phase_fraction)
        check_count("min_readings", min_readings)
        self.single_phase_fraction = single_phase_fraction
        self.three_phase_fraction = three_phase_fraction
        self.min_readings = min_readings

    def _evaluate(
        self, frame: pd.DataFrame, ph: Phases
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        limit = self._limits(ph, -1.0)
        under = strictly_less(ph.u, limit[:, None]) & ph.present
        hit = under.any(axis=1) & ph.all_live & ~self._outage(frame, ph)
        value = np.nanmin(np.where(ph.present, ph.u, np.inf), axis=1)
        return hit, np.where(np.isfinite(value), value, np.nan), limit


def unbalance(x: np.ndarray) -> np.ndarray:
    """Largest deviation from the mean over the mean, per row of ``x`` (rows x 3) [-].

    The phase-voltage unbalance rate of IEEE Std 112 / NEMA MG-1 (PVUR), a magnitude-only
    stand-in for the negative-sequence ratio of GB/T 15543 (meters report no phase angles).
    NaN where the mean is not > 0 or a value is NaN.
    """
    mean = x.mean(axis=1)
    dev = np.abs(x - mean[:, None]).max(axis=1)
    out: np.ndarray = np.divide(dev, mean, out=np.full(mean.shape, np.nan), where=mean > 0)
    return out


@register(cadence="streaming", order=130)
class VoltageUnbalance(_OutageAware):
    """Three-phase voltage unbalance above the GB/T 15543 limit for ``min_readings`` readings.

    Unbalance = max |U_p - mean(U)| / mean(U) over L1..L3 (see :func:`unbalance`); holds
    (strict ``>``) on 3-phase meters whose phases are all live (``U >= 78 % Un``).
    GB/T 15543-2008 电能质量 三相电压不平衡: 2 % normal, 4 % short-time at the point of
    common coupling.

    Parameters
    ----------
    limit_fraction : float
        Unbalance limit [-]. Default 0.02 (GB/T 15543 normal limit).
    min_readings : int
        Consecutive readings [readings]. Default 4 (one hour at 15 min: GB/T 15543 judges
        the long-time value; a short excursion up to 4 % is allowed).
    """

    alert_types: ClassVar[tuple[str, ...]] = ("voltage_unbalance",)
    _title: ClassVar[str] = "Voltage unbalance"
    _quantity: ClassVar[str] = "unbalance"
    _unit: ClassVar[str] = ""
    _fmt: ClassVar[str] = ".3f"
    _rule_text: ClassVar[str] = (
        "voltage_unbalance: max|U_p - mean U|/mean U > limit_fraction on a 3-phase meter "
        "(GB/T 15543 limits, IEEE 112 PVUR formula)"
    )

    def __init__(self, limit_fraction: float = 0.02, min_readings: int = 4) -> None:
        check_fraction("limit_fraction", limit_fraction)
        check_count("min_readings", min_readings)
        self.limit_fraction = limit_fraction
        self.min_readings = min_readings

    def _evaluate(
        self, frame: pd.DataFrame, ph: Phases
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        value = np.where(ph.three, unbalance(ph.u), np.nan)
        hit = (
            ph.three
            & ph.all_live
            & strictly_greater(value, self.limit_fraction)
            & ~self._outage(frame, ph)
        )
        return hit, value, np.full(len(frame), float(self.limit_fraction))


@register(cadence="streaming", order=140)
class CurrentUnbalance(_OutageAware):
    """Three-phase current unbalance above a limit, at meaningful load, for a while.

    Unbalance = max |I_p - mean(I)| / mean(I) (see :func:`unbalance`), judged on 3-phase
    meters with every phase live, no phase below the current-loss trigger (0.5 % Ib: that
    is current loss) and mean current above ``min_load_fraction x Ib`` (light-load ratios
    are meaningless). Holds when ``> limit_fraction`` (strict).

    Parameters
    ----------
    limit_fraction : float
        Unbalance limit [-]. Default 0.30 (State Grid meter event 电流不平衡, Q/GDW 1354
        default limit 30 %).
    min_load_fraction : float
        Mean phase current must exceed this fraction of Ib [-]. Default 0.10 (project
        choice).
    min_readings : int
        Consecutive readings [readings]. Default 4 (one hour at 15 min).
    include_supply_meters : bool
        Also judge ``role == "transformer"`` meters. Default False: a supply meter's
        unbalance reflects how single-phase customers are spread over the phases (and
        faults downstream), a planning metric judged on daily averages, not a meter fault.
    """

    alert_types: ClassVar[tuple[str, ...]] = ("current_unbalance",)
    _title: ClassVar[str] = "Current unbalance"
    _quantity: ClassVar[str] = "unbalance"
    _unit: ClassVar[str] = ""
    _fmt: ClassVar[str] = ".3f"
    _rule_text: ClassVar[str] = (
        "current_unbalance: max|I_p - mean I|/mean I > limit_fraction on a 3-phase meter, "
        "all phases live, mean I > min_load_fraction*Ib, no phase < 0.005 Ib"
    )

    def __init__(
        self,
        limit_fraction: float = 0.30,
        min_load_fraction: float = 0.10,
        min_readings: int = 4,
        include_supply_meters: bool = False,
    ) -> None:
        check_fraction("limit_fraction", limit_fraction, upper_inclusive=True)
        check_fraction("min_load_fraction", min_load_fraction)
        check_count("min_readings", min_readings)
        self.limit_fraction = limit_fraction
        self.min_load_fraction = min_load_fraction
        self.min_readings = min_readings
        self.include_supply_meters = include_supply_meters

    def _evaluate(
        self, frame: pd.DataFrame, ph: Phases
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        value = np.where(ph.three, unbalance(ph.i), np.nan)
        no_current = strictly_less(ph.i, 0.005 * ph.ib[:, None]).any(axis=1)
        loaded = strictly_greater(ph.i.mean(axis=1), self.min_load_fraction * ph.ib)
        judged = (
            np.ones(len(frame), dtype=bool)
            if self.include_supply_meters
            else frame["role"].astype(str).to_numpy() != "transformer"
        )
        hit = (
            judged
            & ph.three
            & ph.all_live
            & loaded
            & ~no_current
            & strictly_greater(value, self.limit_fraction)
            & ~self._outage(frame, ph)
        )
        return hit, value, np.full(len(frame), float(self.limit_fraction))


@register(cadence="streaming", order=150)
class ReversePower(_RowRule):
    """Active power flowing out of a customer meter that has no export registered.

    Holds on ``role == "customer"`` meters whose optional registry column
    ``export_allowed`` is not true (absent = no export) when ``power_kw < -threshold``,
    ``threshold = fraction x phases x Un x Ib / 1000`` [kW] (the meter's power at
    ``fraction`` of Ib; strict). Models the State Grid meter event 潮流反向 (power-flow
    reversal) -- a reversed CT or tampering on a consumer that does not export.

    Parameters
    ----------
    fraction : float
        Threshold as a fraction of the meter's rated power [-]. Default 0.005 (the 0.5 % Ib
        starting current: anything the meter would register).
    min_readings : int
        Consecutive readings [readings]. Default 2 (one noisy sample is not a flow).
    """

    alert_types: ClassVar[tuple[str, ...]] = ("reverse_power",)
    _title: ClassVar[str] = "Reverse power"
    _quantity: ClassVar[str] = "active power"
    _unit: ClassVar[str] = " kW"
    _fmt: ClassVar[str] = ".3f"
    _extreme: ClassVar[str] = "min"
    _optional: ClassVar[dict[str, Any]] = {"export_allowed": False}
    _rule_text: ClassVar[str] = (
        "reverse_power: customer without export, power_kw < -fraction*phases*Un*Ib/1000"
    )

    def __init__(self, fraction: float = 0.005, min_readings: int = 2) -> None:
        check_fraction("fraction", fraction)
        check_count("min_readings", min_readings)
        self.fraction = fraction
        self.min_readings = min_readings

    def _evaluate(
        self, frame: pd.DataFrame, ph: Phases
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        export = frame["export_allowed"].astype(str).str.lower().isin(["true", "1", "yes"])
        customer = frame["role"].astype(str).to_numpy() == "customer"
        limit = -self.fraction * ph.phases * ph.un * ph.ib / 1000.0
        p = frame["power_kw"].to_numpy(dtype=float)
        hit = customer & ~export.to_numpy() & strictly_less(p, limit)
        return hit, p, limit


@register(cadence="streaming", order=160)
class LowPowerFactor(_OutageAware):
    """Power factor below the tariff standard of the customer class, under load.

    Holds when ``|power_factor| < min_pf`` of the meter's ``customer_class`` (strict) while
    the mean present-phase current exceeds ``min_load_fraction x Ib`` (the light-load PF
    is meaningless) and no outage. A class whose ``min_pf`` is 0 is not judged. Defaults
    follow 功率因数调整电费办法 ((83)水电财字第215号): 0.90 for industrial users of 160 kVA
    and above, 0.85 for other users of 100 kVA and above; residential users are not
    assessed.

    Parameters
    ----------
    industrial_min_pf, commercial_min_pf, residential_min_pf : float
        Standard power factor per class [-]. Defaults 0.90, 0.85, 0 (not judged).
    min_load_fraction : float
        Mean current must exceed this fraction of Ib [-]. Default 0.10 (project choice).
    min_readings : int
        Consecutive readings [readings]. Default 4 (one hour at 15 min: the tariff rule
        assesses the monthly average, an alert needs a sustained value).
    """

    alert_types: ClassVar[tuple[str, ...]] = ("low_power_factor",)
    _title: ClassVar[str] = "Low power factor"
    _quantity: ClassVar[str] = "power factor"
    _unit: ClassVar[str] = ""
    _fmt: ClassVar[str] = ".3f"
    _extreme: ClassVar[str] = "min"
    _rule_text: ClassVar[str] = (
        "low_power_factor: |PF| < min_pf of the customer class, mean I > min_load_fraction*Ib"
    )

    def __init__(
        self,
        industrial_min_pf: float = 0.90,
        commercial_min_pf: float = 0.85,
        residential_min_pf: float = 0.0,
        min_load_fraction: float = 0.10,
        min_readings: int = 4,
    ) -> None:
        for name, v in (
            ("industrial_min_pf", industrial_min_pf),
            ("commercial_min_pf", commercial_min_pf),
            ("residential_min_pf", residential_min_pf),
        ):
            if not 0.0 <= float(v) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v!r}")
        check_fraction("min_load_fraction", min_load_fraction)
        check_count("min_readings", min_readings)
        self.industrial_min_pf = industrial_min_pf
        self.commercial_min_pf = commercial_min_pf
        self.residential_min_pf = residential_min_pf
        self.min_load_fraction = min_load_fraction
        self.min_readings = min_readings

    def _evaluate(
        self, frame: pd.DataFrame, ph: Phases
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cls = frame["customer_class"].astype(str).to_numpy()
        limit = np.select(
            [cls == "industrial", cls == "commercial", cls == "residential"],
            [self.industrial_min_pf, self.commercial_min_pf, self.residential_min_pf],
            0.0,
        ).astype(float)
        pf = np.abs(frame["power_factor"].to_numpy(dtype=float))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # meters without phases: NaN
            i_mean = np.nanmean(np.where(ph.present, ph.i, np.nan), axis=1)
        loaded = strictly_greater(i_mean, self.min_load_fraction * ph.ib)
        hit = (limit > 0) & loaded & strictly_less(pf, limit) & ~self._outage(frame, ph)
        return hit, pf, limit


@register(cadence="streaming", order=170)
class FrequencyDeviation(_RowRule):
    """Grid frequency outside nominal ± the GB/T 15945 limit.

    Holds when ``|frequency_hz - nominal_hz| > limit_hz`` (strict). GB/T 15945-2008 电能质量
    电力系统频率偏差: normal limit ±0.2 Hz.

    Parameters
    ----------
    nominal_hz : float
        Nominal frequency [Hz]. Default 50.
    limit_hz : float
        Allowed deviation [Hz]. Default 0.2 (GB/T 15945).
    min_readings : int
        Consecutive readings [readings]. Default 2.
    """

    alert_types: ClassVar[tuple[str, ...]] = ("frequency_deviation",)
    _title: ClassVar[str] = "Frequency deviation"
    _quantity: ClassVar[str] = "frequency deviation"
    _unit: ClassVar[str] = " Hz"
    _fmt: ClassVar[str] = ".3f"
    _rule_text: ClassVar[str] = "frequency_deviation: |f - nominal_hz| > limit_hz (GB/T 15945)"

    def __init__(self, nominal_hz: float = 50.0, limit_hz: float = 0.2, min_readings: int = 2):
        check_positive("nominal_hz", nominal_hz)
        check_positive("limit_hz", limit_hz)
        check_count("min_readings", min_readings)
        self.nominal_hz = nominal_hz
        self.limit_hz = limit_hz
        self.min_readings = min_readings

    def _evaluate(
        self, frame: pd.DataFrame, ph: Phases
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dev = frame["frequency_hz"].to_numpy(dtype=float) - float(self.nominal_hz)
        hit = strictly_greater(np.abs(dev), float(self.limit_hz))
        return hit, dev, np.full(len(frame), float(self.limit_hz))


@register(cadence="streaming", order=190)
class TransformerOverload(_RowRule):
    """Supply meter's apparent power above the transformer's rating for a while.

    ``S = hypot(power_kw, reactive_power_kvar) x ct_ratio`` [kVA, primary] of ``role ==
    "transformer"`` meters with the optional registry column ``rated_kva`` (absent or empty:
    not judged). Holds when ``S > load_fraction x rated_kva`` (strict). DL/T 572 电力变压器
    运行规程 allows short emergency overloads; State Grid distribution practice counts a
    transformer as overloaded (配变过载) above 100 % of rating sustained.

    Parameters
    ----------
    load_fraction : float
        Overload threshold as a fraction of ``rated_kva`` [-]. Default 1.0.
    min_readings : int
        Consecutive readings [readings]. Default 4 (one hour at 15 min).
    """

    alert_types: ClassVar[tuple[str, ...]] = ("transformer_overload",)
    _title: ClassVar[str] = "Transformer overload"
    _quantity: ClassVar[str] = "apparent power"
    _unit: ClassVar[str] = " kVA"
    _optional: ClassVar[dict[str, Any]] = {"rated_kva": np.nan}
    _rule_text: ClassVar[str] = (
        "transformer_overload: hypot(P, Q)*ct_ratio > load_fraction*rated_kva on a supply meter"
    )

    def __init__(self, load_fraction: float = 1.0, min_readings: int = 4) -> None:
        check_positive("load_fraction", load_fraction)
        check_count("min_readings", min_readings)
        self.load_fraction = load_fraction
        self.min_readings = min_readings

    def _evaluate(
        self, frame: pd.DataFrame, ph: Phases
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rated = pd.to_numeric(frame["rated_kva"], errors="coerce").to_numpy(dtype=float)
        s = np.hypot(
            frame["power_kw"].to_numpy(float), frame["reactive_power_kvar"].to_numpy(float)
        )
        s = s * ph.ct
        limit = self.load_fraction * rated
        supply = frame["role"].astype(str).to_numpy() == "transformer"
        return supply & strictly_greater(s, limit), s, limit


@register(cadence="streaming", order=180)
class Outage(Detector):
    """Loss of supply of a whole transformer area: one finding per area, no meter id.

    See :func:`outage_rows`: the area is out in a time bucket when its supply meter reports
    every phase below ``voltage_fraction x Un`` (or, without a supply reading, when at least
    ``min_meters`` customer meters report and all are that low). Consecutive out buckets of
    an area form an episode of at least ``min_buckets`` buckets; ``starts_at``/``ends_at``
    are the first/last reading times in it (``ends_at`` NaT when the area's last bucket is
    still out). Per-meter voltage and current rules ignore these readings.

    Parameters
    ----------
    voltage_fraction : float
        Dead phase below this fraction of Un [-]. Default 0.6 (below the State Grid
        phase-break trigger).
    bucket_minutes : float
        Readings within one bucket count as simultaneous [min]. Default 15 (the poll
        interval).
    min_meters : int
        Customer meters that must report when there is no supply reading [meters]. Default 2.
    min_buckets : int
        Consecutive out buckets [buckets]. Default 1: raised within one poll.
    """

    alert_types: ClassVar[tuple[str, ...]] = ("outage",)

    def __init__(
        self,
        voltage_fraction: float = OUTAGE_FRACTION,
        bucket_minutes: float = OUTAGE_BUCKET_MINUTES,
        min_meters: int = 2,
        min_buckets: int = 1,
    ) -> None:
        check_fraction("voltage_fraction", voltage_fraction)
        check_positive("bucket_minutes", bucket_minutes)
        check_count("min_meters", min_meters)
        check_count("min_buckets", min_buckets)
        self.voltage_fraction = voltage_fraction
        self.bucket_minutes = bucket_minutes
        self.min_meters = min_meters
        self.min_buckets = min_buckets

    def detect(self, readings: pd.DataFrame, meters: pd.DataFrame) -> pd.DataFrame:
        """One finding per outage episode of an area (``meter_id`` None)."""
        frame = prepare(readings, meters, list(REGISTRY_COLUMNS))
        if frame.empty:
            return empty_findings()
        _, table = outage_rows(
            frame, float(self.voltage_fraction), float(self.bucket_minutes), int(self.min_meters)
        )
        out = table["out"].to_numpy(dtype=bool)
        starts, ends, ongoing = episodes(out, group_codes(table["transformer_id"]))
        lengths = ends - starts + 1
        keep = np.flatnonzero(lengths >= int(self.min_buckets))
        if keep.size == 0:
            return empty_findings()
        params = plain(self.get_params())
        rows = []
        for e in keep:  # loop over findings only
            s, f = starts[e], ends[e]
            area = table["transformer_id"].iat[s]
            start_ts = utc(table["first_ns"].iat[s])
            end_ts = pd.NaT if ongoing[e] else utc(table["last_ns"].iat[f])
            part = table.iloc[s : f + 1]
            when = (
                f"since {short_ts(start_ts)}"
                if ongoing[e]
                else f"from {short_ts(start_ts)} to {short_ts(end_ts)}"
            )
            rows.append(
                {
                    "type": "outage",
                    "severity": self.severity,
                    "meter_id": None,
                    "transformer_id": area,
                    "starts_at": start_ts,
                    "ends_at": end_ts,
                    "summary": (
                        f"Outage of area {area}: {int(part['dead'].max())} meter(s) without "
                        f"voltage {when}"
                    ),
                    "evidence": plain(
                        {
                            "rule": "outage: supply meter (or every reporting customer meter) "
                            "with all phases < voltage_fraction*Un in the same bucket",
                            "thresholds": params,
                            "buckets": int(lengths[e]),
                            "supply_meter_dead": bool(part["supply_dead"].any()),
                            "meters_dead_max": int(part["dead"].max()),
                            "meters_reporting_max": int(part["meters"].max()),
                        }
                    ),
                }
            )
        return findings_frame(rows)


@register(cadence="interval", order=200)
class CalibrationDue(Detector):
    """Meters whose calibration falls due by the end of the readings window.

    Due date = ``last_calibration + calibration_interval_days`` (registry). A meter with
    readings in the window is reported when ``due date - lead_days <= `` its last reading.
    One finding per meter: ``starts_at`` is the due date (or lead start), ``ends_at`` NaT.
    Interval per the meter's verification regulation (JJG 596 / the utility's plan), kept
    in the registry.

    Parameters
    ----------
    lead_days : int
        Report this many days before the due date [d]. Default 0 (project choice).
    """

    alert_types: ClassVar[tuple[str, ...]] = ("calibration_due",)

    def __init__(self, lead_days: int = 0) -> None:
        check_count("lead_days", lead_days, minimum=0)
        self.lead_days = lead_days

    def detect(self, readings: pd.DataFrame, meters: pd.DataFrame) -> pd.DataFrame:
        """One finding per meter due (see class docstring)."""
        frame = prepare(
            readings, meters, ["transformer_id", "last_calibration", "calibration_interval_days"]
        )
        if frame.empty:
            return empty_findings()
        per = frame.groupby("meter_id", sort=True).agg(
            area=("transformer_id", "first"),
            last=("last_calibration", "first"),
            interval=("calibration_interval_days", "first"),
            end=("ts", "max"),
        )
        last = pd.to_datetime(per["last"], utc=True, errors="coerce")
        interval = pd.to_numeric(per["interval"], errors="coerce")
        due = last + pd.to_timedelta(interval, unit="D")
        alert_from = due - pd.Timedelta(days=int(self.lead_days))
        hit = (alert_from <= per["end"]).to_numpy(dtype=bool)
        rows = []
        for meter in per.index[hit]:  # loop over findings only
            d = due[meter]
            overdue = (per.at[meter, "end"] - d) / pd.Timedelta(days=1)
            rows.append(
                {
                    "type": "calibration_due",
                    "severity": self.severity,
                    "meter_id": meter,
                    "transformer_id": per.at[meter, "area"],
                    "starts_at": alert_from[meter],
                    "ends_at": pd.NaT,
                    "summary": (
                        f"Calibration due {d.date().isoformat()} (last {last[meter].date()}, "
                        f"every {int(interval[meter])} days)"
                        + (f"; {overdue:.0f} days overdue" if overdue > 0 else "")
                    ),
                    "evidence": plain(
                        {
                            "rule": "last_calibration + calibration_interval_days - lead_days "
                            "<= last reading",
                            "thresholds": {"lead_days": self.lead_days},
                            "last_calibration": last[meter],
                            "calibration_interval_days": interval[meter],
                            "due": d,
                            "window_end": per.at[meter, "end"],
                        }
                    ),
                }
            )
        return findings_frame(rows)
