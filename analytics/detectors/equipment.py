"""Equipment-fault rules on readings: current loss, voltage band, unbalance, power, outage.

Every rule here works on whole arrays of the dense window (meters x cells, and x 3 phases;
:mod:`analytics.window`) and reports *episodes* (runs of consecutive readings of one meter
where the rule holds, :func:`analytics.window.runs`) lasting at least ``min_readings``
readings.

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

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from meterwatch.analytics.base import (
    Detector,
    at_least,
    check_count,
    check_fraction,
    check_positive,
    findings_frame,
    plain,
    short_ts,
    strictly_greater,
    strictly_less,
)
from meterwatch.analytics.registry import register
from meterwatch.analytics.window import (
    NO_TIME,
    Window,
    merge_runs,
    row_chunks,
    run_reduce,
    runs,
    utc,
)
from meterwatch.core.schema import empty_findings

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
    """The window's phase arrays for the rules: voltages and currents (3 x meters x cells,
    phase-major), Un, Ib, CT ratio, phase presence, and where every present phase is live."""

    def __init__(self, w: Window) -> None:
        m = w.meters
        self.u = w.phase_values("u")
        self.i = w.phase_values("i")
        self.un = m.nominal_voltage_v
        self.ib = m.rated_current_a
        self.ct = m.ct_ratio
        self.phases = m.phases
        self.three = m.three
        self.present: np.ndarray = np.asarray(m.present)
        # Every present phase at or above the voltage-loss trigger (NaN is not live).
        #: Phase presence as 3 x meters x 1, to broadcast over the phase planes.
        self.present_p = self.present.T[:, :, None]
        live = at_least(self.u, LIVE_FRACTION * self.un[None, :, None]) | ~self.present_p
        self.all_live = live.all(axis=0) & np.asarray(self.present.any(axis=1))[:, None]


def phases(w: Window) -> Phases:
    """The window's :class:`Phases`, built once per window."""
    out: Phases = w.memo("phases", lambda: Phases(w))
    return out


@dataclass(frozen=True)
class AreaOutages:
    """Area outages per (area, bucket) and the readings that fall in one.

    ``out``, ``meters``, ``dead``, ``supply``, ``supply_dead``: areas x buckets; ``first_ns``
    and ``last_ns`` the first and last reading time in a bucket; ``rows``: meters x cells mask
    of the readings inside an out bucket of their area.
    """

    out: np.ndarray
    meters: np.ndarray
    dead: np.ndarray
    supply_dead: np.ndarray
    first_ns: np.ndarray
    last_ns: np.ndarray
    rows: np.ndarray


def outage_rows(
    w: Window,
    voltage_fraction: float = OUTAGE_FRACTION,
    bucket_minutes: float = OUTAGE_BUCKET_MINUTES,
    min_meters: int = 2,
) -> AreaOutages:
    """Which readings fall in an area outage (shared by the rules of one window, read-only).

    A reading is *dead* when every present phase has ``U < voltage_fraction x Un``. Readings
    are grouped by transformer area and time bucket (
    ``ts`` floored to ``bucket_minutes``). The area is out in a bucket
    when its supply meter (``role == "transformer"``) reports dead there, or -- without a
    supply reading in the bucket -- when at least ``min_meters`` customer meters report and all
    of them are dead. Meters without a transformer area are in no area outage.
    """
    params = (float(voltage_fraction), float(bucket_minutes), int(min_meters))
    result: AreaOutages = w.memo(("outages", *params), lambda: _outage_rows(w, *params))
    return result


def _outage_rows(
    w: Window, voltage_fraction: float, bucket_minutes: float, min_meters: int
) -> AreaOutages:
    m = w.meters
    ph = phases(w)
    n_a = int(m.areas.size)
    bucket_ns = int(round(bucket_minutes * 60e9))
    chunks = row_chunks(w.n_meters, w.n_cells)  # meters in chunks: bounded memory
    # Buckets are floored read times (not cells): polls spread a few minutes into an interval
    # are still one bucket, and a read exactly on a boundary opens the next one.
    b0, b1 = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    for rs in chunks:
        tb = w.t[rs][w.present[rs]] // bucket_ns
        if tb.size:
            b0, b1 = min(b0, int(tb.min())), max(b1, int(tb.max()))
    n_b = b1 - b0 + 1 if b1 >= b0 else 0
    size = n_a * n_b

    def cells(rs: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows and columns (in the chunk) of its readings in an area and their area-bucket
        key."""
        r, c = np.nonzero((m.area[rs] >= 0)[:, None] & w.present[rs])
        key = m.area[rs][r] * n_b + (w.t[rs][r, c] // bucket_ns - b0)
        return r, c, key

    def dead_at(rs: slice, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Whether the chunk's readings at ``r, c`` are dead (every present phase low)."""
        low = (
            strictly_less(ph.u[:, rs], voltage_fraction * ph.un[None, rs, None])
            | ~ph.present_p[:, rs]
        )
        dead = low.all(axis=0) & np.asarray(ph.present[rs].any(axis=1))[:, None]
        out: np.ndarray = dead[r, c]
        return out

    meters = np.zeros(size, dtype=np.int64)
    sup, sup_dead = np.zeros(size, dtype=bool), np.zeros(size, dtype=bool)
    cust, cust_dead, n_dead = (np.zeros(size, dtype=np.int64) for _ in range(3))
    first = np.full(size, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(size, NO_TIME, dtype=np.int64)
    for rs in chunks:
        r, c, key = cells(rs)
        d = dead_at(rs, r, c)
        supply = m.supply[rs][r]
        meters += np.bincount(key, minlength=size)
        sup |= np.bincount(key[supply], minlength=size) > 0
        sup_dead |= np.bincount(key[supply & d], minlength=size) > 0
        cust += np.bincount(key[~supply], minlength=size)
        cust_dead += np.bincount(key[~supply & d], minlength=size)
        n_dead += np.bincount(key[d], minlength=size)
        t_rc = w.t[rs][r, c]
        np.minimum.at(first, key, t_rc)
        np.maximum.at(last, key, t_rc)
    out = np.where(sup, sup_dead, (cust >= min_meters) & (cust_dead == cust)).reshape(n_a, n_b)
    rows = np.zeros(w.t.shape, dtype=bool)
    # A second pass marks the readings (keeping each chunk's keys instead would hold 8 bytes a
    # reading for the whole window, what the chunks are there to avoid).
    for rs in chunks if out.any() else ():  # no area out: no reading in an outage
        r, c, key = cells(rs)
        rows[rs][r, c] = out.reshape(-1)[key]
    return AreaOutages(
        out=out & (meters.reshape(n_a, n_b) > 0),
        meters=meters.reshape(n_a, n_b),
        dead=n_dead.reshape(n_a, n_b),
        supply_dead=sup_dead.reshape(n_a, n_b),
        first_ns=first.reshape(n_a, n_b),
        last_ns=last.reshape(n_a, n_b),
        rows=rows,
    )


class _RowRule(Detector):
    """Shared machinery: a per-reading mask and observed value -> one finding per episode.

    Subclasses implement :meth:`_evaluate` returning ``(hit, value, limit)``: meters x cells
    arrays where the rule holds and the quantity it judges, and the threshold it was judged
    against per meter (or per cell), for evidence and summary.
    """

    _title: ClassVar[str] = ""
    _quantity: ClassVar[str] = ""
    _unit: ClassVar[str] = ""
    _fmt: ClassVar[str] = ".1f"
    _rule_text: ClassVar[str] = ""
    _extreme: ClassVar[str] = "max"  # which end of the value range is the worst
    min_readings: int
    merge_hours: float

    def _evaluate(self, w: Window, ph: Phases) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def hits(self, w: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(hit, value, limit)`` over the window (hit only where a reading is)."""
        hit, value, limit = self._evaluate(w, phases(w))
        return hit & w.present, value, limit

    def detect_window(self, w: Window) -> pd.DataFrame:
        """One finding per episode of at least ``min_readings`` readings of a meter."""
        hit, value, limit = self.hits(w)
        r = runs(hit, w.present, w.last_col())
        r = r.select(r.n >= int(self.min_readings))
        r = merge_runs(r, w.t, float(self.merge_hours) * 3600e9)
        if len(r) == 0:
            return empty_findings()
        vmin = run_reduce(value, r, "min", where=hit)
        vmax = run_reduce(value, r, "max", where=hit)
        v0 = run_reduce(value, r, "first")
        lim = np.broadcast_to(
            np.asarray(limit, dtype=float).reshape(-1, 1)
            if np.ndim(limit) == 1
            else np.asarray(limit, dtype=float),
            hit.shape,
        )
        lim0 = lim[r.row, r.c0]
        params = plain(self.get_params())
        m = w.meters
        rows = []
        for e in range(len(r)):  # loop over findings only
            row = int(r.row[e])
            start_ts = utc(w.t[row, r.c0[e]])
            end_ts = pd.NaT if r.ongoing[e] else utc(w.t[row, r.c1[e]])
            worst = vmax[e] if self._extreme == "max" else vmin[e]
            n = int(r.n[e])
            when = (
                f"since {short_ts(start_ts)}"
                if r.ongoing[e]
                else f"from {short_ts(start_ts)} to {short_ts(end_ts)}"
            )
            f = self._fmt
            summary = (
                f"{self._title}: {self._quantity} {v0[e]:{f}}{self._unit} "
                f"(worst {worst:{f}}{self._unit}; limit {lim0[e]:{f}}{self._unit}) "
                f"for {n} reading{'s' if n != 1 else ''} {when}"
            )
            rows.append(
                {
                    "type": self.alert_types[0],
                    "severity": self.severity,
                    "meter_id": m.ids[row],
                    "transformer_id": m.transformer_id[row],
                    "starts_at": start_ts,
                    "ends_at": end_ts,
                    "summary": summary,
                    "evidence": plain(
                        {
                            "rule": self._rule_text,
                            "thresholds": params,
                            "limit": lim0[e],
                            "observed": {
                                "quantity": self._quantity,
                                "start": v0[e],
                                "min": vmin[e],
                                "max": vmax[e],
                            },
                            "readings": n,
                            "window": w.meter_window(row),
                        }
                    ),
                }
            )
        return findings_frame(rows)


class _OutageAware(_RowRule):
    """A row rule whose hits are cleared for readings inside an area outage."""

    shares: ClassVar[str] = "outages"

    def _outage(self, w: Window) -> np.ndarray:
        return outage_rows(w).rows


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
    merge_hours : float
        Episodes of a meter at most this far apart are one finding [h]. Default 24
        (hysteresis: a quantity hovering at the threshold gives at most one alert a day).
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
        self,
        current_fraction: float = 0.005,
        load_fraction: float = 0.05,
        min_readings: int = 1,
        merge_hours: float = 24.0,
    ) -> None:
        check_fraction("current_fraction", current_fraction)
        check_fraction("load_fraction", load_fraction)
        check_count("min_readings", min_readings)
        self.current_fraction = current_fraction
        self.load_fraction = load_fraction
        self.min_readings = min_readings
        if not float(merge_hours) >= 0:
            raise ValueError(f"merge_hours must be >= 0, got {merge_hours!r}")
        self.merge_hours = merge_hours

    def _evaluate(self, w: Window, ph: Phases) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ib = ph.ib[None, :, None]
        none = strictly_less(ph.i, self.current_fraction * ib)
        load = strictly_greater(ph.i, self.load_fraction * ib)
        three = ph.three[:, None]
        hit = three & ph.all_live & none.any(axis=0) & load.any(axis=0) & ~self._outage(w)
        low = np.where(ph.present_p, ph.i, np.inf).min(axis=0)
        value = np.where(three & np.isfinite(low), low, np.float32(np.nan))
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
    merge_hours : float
        Episodes of a meter at most this far apart are one finding [h]. Default 24
        (hysteresis: a quantity hovering at the threshold gives at most one alert a day).
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
        merge_hours: float = 24.0,
    ) -> None:
        check_fraction("single_phase_fraction", single_phase_fraction)
        check_fraction("three_phase_fraction", three_phase_fraction)
        check_count("min_readings", min_readings)
        self.single_phase_fraction = single_phase_fraction
        self.three_phase_fraction = three_phase_fraction
        self.min_readings = min_readings
        if not float(merge_hours) >= 0:
            raise ValueError(f"merge_hours must be >= 0, got {merge_hours!r}")
        self.merge_hours = merge_hours

    def _evaluate(self, w: Window, ph: Phases) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        limit = self._limits(ph, +1.0)
        over = strictly_greater(ph.u, limit[None, :, None]) & ph.present_p
        hit = over.any(axis=0) & ~self._outage(w)
        return hit, _phase_extreme(ph, np.fmax), limit


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
    merge_hours : float
        Episodes of a meter at most this far apart are one finding [h]. Default 24
        (hysteresis: a quantity hovering at the threshold gives at most one alert a day).
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
        merge_hours: float = 24.0,
    ) -> None:
        check_fraction("single_phase_fraction", single_phase_fraction)
        check_fraction("three_phase_fraction", three_phase_fraction)
        check_count("min_readings", min_readings)
        self.single_phase_fraction = single_phase_fraction
        self.three_phase_fraction = three_phase_fraction
        self.min_readings = min_readings
        if not float(merge_hours) >= 0:
            raise ValueError(f"merge_hours must be >= 0, got {merge_hours!r}")
        self.merge_hours = merge_hours

    def _evaluate(self, w: Window, ph: Phases) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        limit = self._limits(ph, -1.0)
        under = strictly_less(ph.u, limit[None, :, None]) & ph.present_p
        hit = under.any(axis=0) & ph.all_live & ~self._outage(w)
        return hit, _phase_extreme(ph, np.fmin), limit


def _phase_extreme(ph: Phases, how: Any) -> np.ndarray:
    """Per reading, the highest (``np.fmax``) or lowest (``np.fmin``) voltage of the meter's
    present phases, NaN without one; one plane at a time (no 3-plane copies)."""
    start = np.float32(-np.inf if how is np.fmax else np.inf)
    value = np.full(ph.u.shape[1:], start, dtype=ph.u.dtype)
    for k in range(ph.u.shape[0]):  # the three phase planes
        how(value, ph.u[k], out=value, where=ph.present_p[k])
    value[np.isinf(value)] = np.float32(np.nan)
    return value


def unbalance(x: np.ndarray) -> np.ndarray:
    """Largest deviation from the mean over the mean across the phases of ``x`` (3 x ...,
    phase-major) [-].

    The phase-voltage unbalance rate of IEEE Std 112 / NEMA MG-1 (PVUR), a magnitude-only
    stand-in for the negative-sequence ratio of GB/T 15543 (meters report no phase angles).
    NaN where the mean is not > 0 or a value is NaN.
    """
    # In place, three arrays of x's plane size at most (the same operations, the same result).
    mean = x[0] + x[1]
    mean += x[2]
    mean /= 3
    dev = np.subtract(x[0], mean)
    np.abs(dev, out=dev)
    other = np.subtract(x[1], mean)
    np.abs(other, out=other)
    np.maximum(dev, other, out=dev)
    np.subtract(x[2], mean, out=other)
    np.abs(other, out=other)
    np.maximum(dev, other, out=dev)
    out: np.ndarray = other
    out.fill(np.nan)
    np.divide(dev, mean, out=out, where=mean > 0)
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
    merge_hours : float
        Episodes of a meter at most this far apart are one finding [h]. Default 24
        (hysteresis: a quantity hovering at the threshold gives at most one alert a day).
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

    def __init__(
        self, limit_fraction: float = 0.02, min_readings: int = 4, merge_hours: float = 24.0
    ) -> None:
        check_fraction("limit_fraction", limit_fraction)
        check_count("min_readings", min_readings)
        self.limit_fraction = limit_fraction
        self.min_readings = min_readings
        if not float(merge_hours) >= 0:
            raise ValueError(f"merge_hours must be >= 0, got {merge_hours!r}")
        self.merge_hours = merge_hours

    def _evaluate(self, w: Window, ph: Phases) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        three = ph.three[:, None]
        value = unbalance(ph.u)
        value[~ph.three] = np.float32(np.nan)  # in place: single-phase meters
        hit = three & ph.all_live & strictly_greater(value, self.limit_fraction) & ~self._outage(w)
        return hit, value, np.full(w.n_meters, float(self.limit_fraction))


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
    merge_hours : float
        Episodes of a meter at most this far apart are one finding [h]. Default 24
        (hysteresis: a quantity hovering at the threshold gives at most one alert a day).
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
        merge_hours: float = 24.0,
    ) -> None:
        check_fraction("limit_fraction", limit_fraction, upper_inclusive=True)
        check_fraction("min_load_fraction", min_load_fraction)
        check_count("min_readings", min_readings)
        self.limit_fraction = limit_fraction
        self.min_load_fraction = min_load_fraction
        self.min_readings = min_readings
        if not float(merge_hours) >= 0:
            raise ValueError(f"merge_hours must be >= 0, got {merge_hours!r}")
        self.merge_hours = merge_hours
        self.include_supply_meters = include_supply_meters

    def _evaluate(self, w: Window, ph: Phases) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        three = ph.three[:, None]
        value = unbalance(ph.i)
        value[~ph.three] = np.float32(np.nan)  # in place: single-phase meters
        no_current = strictly_less(ph.i, 0.005 * ph.ib[None, :, None]).any(axis=0)
        i_mean = (ph.i[0] + ph.i[1] + ph.i[2]) / 3
        loaded = strictly_greater(i_mean, self.min_load_fraction * ph.ib[:, None])
        judged = np.ones(w.n_meters, dtype=bool) if self.include_supply_meters else ~w.meters.supply
        hit = (
            judged[:, None]
            & three
            & ph.all_live
            & loaded
            & ~no_current
            & strictly_greater(value, self.limit_fraction)
            & ~self._outage(w)
        )
        return hit, value, np.full(w.n_meters, float(self.limit_fraction))


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
    merge_hours : float
        Episodes of a meter at most this far apart are one finding [h]. Default 24
        (hysteresis: a quantity hovering at the threshold gives at most one alert a day).
    """

    alert_types: ClassVar[tuple[str, ...]] = ("reverse_power",)
    _title: ClassVar[str] = "Reverse power"
    _quantity: ClassVar[str] = "active power"
    _unit: ClassVar[str] = " kW"
    _fmt: ClassVar[str] = ".3f"
    _extreme: ClassVar[str] = "min"
    _rule_text: ClassVar[str] = (
        "reverse_power: customer without export, power_kw < -fraction*phases*Un*Ib/1000"
    )

    def __init__(
        self, fraction: float = 0.005, min_readings: int = 2, merge_hours: float = 24.0
    ) -> None:
        check_fraction("fraction", fraction)
        check_count("min_readings", min_readings)
        self.fraction = fraction
        self.min_readings = min_readings
        if not float(merge_hours) >= 0:
            raise ValueError(f"merge_hours must be >= 0, got {merge_hours!r}")
        self.merge_hours = merge_hours

    def _evaluate(self, w: Window, ph: Phases) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = w.meters
        limit = -self.fraction * ph.phases * ph.un * ph.ib / 1000.0
        p = w.q("power_kw")
        hit = (m.customer & ~m.export_allowed)[:, None] & strictly_less(p, limit[:, None])
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
    merge_hours : float
        Episodes of a meter at most this far apart are one finding [h]. Default 24
        (hysteresis: a quantity hovering at the threshold gives at most one alert a day).
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
        merge_hours: float = 24.0,
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
        if not float(merge_hours) >= 0:
            raise ValueError(f"merge_hours must be >= 0, got {merge_hours!r}")
        self.merge_hours = merge_hours

    def _evaluate(self, w: Window, ph: Phases) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cls = w.meters.customer_class
        limit = np.select(
            [cls == "industrial", cls == "commercial", cls == "residential"],
            [self.industrial_min_pf, self.commercial_min_pf, self.residential_min_pf],
            0.0,
        ).astype(float)
        pf = np.abs(w.q("power_factor"))
        # Mean of the present phases (NaN without any): no warnings machinery, which is not
        # thread-safe (streaming detection runs in a worker thread).
        # Plane by plane (the same sums in the same order as over the 3-plane array).
        total = np.zeros(ph.i.shape[1:], dtype=ph.i.dtype)
        n = np.zeros(ph.i.shape[1:], dtype=np.int64)
        for k in range(ph.i.shape[0]):  # the three phase planes
            known = ~np.isnan(ph.i[k])
            np.add(total, ph.i[k], out=total, where=known)
            n += known
        i_mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        loaded = strictly_greater(i_mean, self.min_load_fraction * ph.ib[:, None])
        hit = (limit > 0)[:, None] & loaded & strictly_less(pf, limit[:, None]) & ~self._outage(w)
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
    merge_hours : float
        Episodes of a meter at most this far apart are one finding [h]. Default 24
        (hysteresis: a quantity hovering at the threshold gives at most one alert a day).
    """

    alert_types: ClassVar[tuple[str, ...]] = ("frequency_deviation",)
    _title: ClassVar[str] = "Frequency deviation"
    _quantity: ClassVar[str] = "frequency deviation"
    _unit: ClassVar[str] = " Hz"
    _fmt: ClassVar[str] = ".3f"
    _rule_text: ClassVar[str] = "frequency_deviation: |f - nominal_hz| > limit_hz (GB/T 15945)"

    def __init__(
        self,
        nominal_hz: float = 50.0,
        limit_hz: float = 0.2,
        min_readings: int = 2,
        merge_hours: float = 24.0,
    ):
        check_positive("nominal_hz", nominal_hz)
        check_positive("limit_hz", limit_hz)
        check_count("min_readings", min_readings)
        self.nominal_hz = nominal_hz
        self.limit_hz = limit_hz
        self.min_readings = min_readings
        if not float(merge_hours) >= 0:
            raise ValueError(f"merge_hours must be >= 0, got {merge_hours!r}")
        self.merge_hours = merge_hours

    def _evaluate(self, w: Window, ph: Phases) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dev = w.q("frequency_hz") - np.float32(self.nominal_hz)
        hit = strictly_greater(np.abs(dev), float(self.limit_hz))
        return hit, dev, np.full(w.n_meters, float(self.limit_hz))


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
    merge_hours : float
        Episodes of a meter at most this far apart are one finding [h]. Default 24
        (hysteresis: a quantity hovering at the threshold gives at most one alert a day).
    """

    alert_types: ClassVar[tuple[str, ...]] = ("transformer_overload",)
    _title: ClassVar[str] = "Transformer overload"
    _quantity: ClassVar[str] = "apparent power"
    _unit: ClassVar[str] = " kVA"
    _rule_text: ClassVar[str] = (
        "transformer_overload: hypot(P, Q)*ct_ratio > load_fraction*rated_kva on a supply meter"
    )

    def __init__(
        self, load_fraction: float = 1.0, min_readings: int = 4, merge_hours: float = 24.0
    ) -> None:
        check_positive("load_fraction", load_fraction)
        check_count("min_readings", min_readings)
        self.load_fraction = load_fraction
        self.min_readings = min_readings
        if not float(merge_hours) >= 0:
            raise ValueError(f"merge_hours must be >= 0, got {merge_hours!r}")
        self.merge_hours = merge_hours

    def _evaluate(self, w: Window, ph: Phases) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = w.meters
        s = np.hypot(w.q("power_kw"), w.q("reactive_power_kvar")) * ph.ct[:, None].astype(
            np.float32
        )
        limit = self.load_fraction * m.rated_kva
        return m.supply[:, None] & strictly_greater(s, limit[:, None]), s, limit


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

    shares: ClassVar[str] = "outages"

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

    def detect_window(self, w: Window) -> pd.DataFrame:
        """One finding per outage episode of an area (``meter_id`` None)."""
        o = outage_rows(
            w, float(self.voltage_fraction), float(self.bucket_minutes), int(self.min_meters)
        )
        reported = o.meters > 0
        r = runs(o.out, reported)
        r = r.select(r.n >= int(self.min_buckets))
        if len(r) == 0:
            return empty_findings()
        params = plain(self.get_params())
        rows = []
        for e in range(len(r)):  # loop over findings only
            a, c0, c1 = int(r.row[e]), int(r.c0[e]), int(r.c1[e])
            area = w.meters.areas[a]
            start_ts = utc(o.first_ns[a, c0])
            end_ts = pd.NaT if r.ongoing[e] else utc(o.last_ns[a, c1])
            span = slice(c0, c1 + 1)
            dead_max = int(o.dead[a, span].max())
            when = (
                f"since {short_ts(start_ts)}"
                if r.ongoing[e]
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
                    "summary": f"Outage of area {area}: {dead_max} meter(s) without voltage {when}",
                    "evidence": plain(
                        {
                            "rule": "outage: supply meter (or every reporting customer meter) "
                            "with all phases < voltage_fraction*Un in the same bucket",
                            "thresholds": params,
                            "buckets": int(r.n[e]),
                            "supply_meter_dead": bool(o.supply_dead[a, span].any()),
                            "meters_dead_max": dead_max,
                            "meters_reporting_max": int(o.meters[a, span].max()),
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

    def detect_window(self, w: Window) -> pd.DataFrame:
        """One finding per meter due (see class docstring)."""
        m = w.meters
        _, end_ns, n = w.reading_span()
        interval_ns = (
            np.where(np.isfinite(m.calibration_interval_days), m.calibration_interval_days, np.nan)
            * 86400e9
        )
        known = (n > 0) & (m.last_calibration_ns != NO_TIME) & np.isfinite(interval_ns)
        due_ns = np.where(known, m.last_calibration_ns + np.nan_to_num(interval_ns), 0)
        from_ns = due_ns - int(self.lead_days) * 86400 * 10**9
        hit = known & (from_ns <= end_ns)
        rows = []
        for r in np.flatnonzero(hit).tolist():  # loop over findings only
            d = utc(int(due_ns[r]))
            last = utc(int(m.last_calibration_ns[r]))
            end = utc(int(end_ns[r]))
            interval = m.calibration_interval_days[r]
            overdue = (end - d) / pd.Timedelta(days=1)
            rows.append(
                {
                    "type": "calibration_due",
                    "severity": self.severity,
                    "meter_id": m.ids[r],
                    "transformer_id": m.transformer_id[r],
                    "starts_at": utc(int(from_ns[r])),
                    "ends_at": pd.NaT,
                    "summary": (
                        f"Calibration due {d.date().isoformat()} (last {last.date()}, "
                        f"every {int(interval)} days)"
                        + (f"; {overdue:.0f} days overdue" if overdue > 0 else "")
                    ),
                    "evidence": plain(
                        {
                            "rule": "last_calibration + calibration_interval_days - lead_days "
                            "<= last reading",
                            "thresholds": {"lead_days": self.lead_days},
                            "last_calibration": last,
                            "calibration_interval_days": interval,
                            "due": d,
                            "window_end": end,
                        }
                    ),
                }
            )
        return findings_frame(rows)
