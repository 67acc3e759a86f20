"""Rule detectors on single readings: register decrease, voltage loss (失压), phase break (断相)."""

from __future__ import annotations

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
    prev_present,
    run_reduce,
    runs,
    utc,
)
from meterwatch.core.schema import empty_findings

PHASE_LABELS: tuple[str, ...] = ("L1", "L2", "L3")


@register(cadence="interval", order=10)
class RegisterDecrease(Detector):
    """Cumulative import register going backwards between consecutive readings.

    Consecutive readings are the meter's readings sorted by ``ts`` that carry an
    ``energy_import_kwh`` value (a reading without one is skipped, so a gap cannot hide a
    decrease). A step from ``prev`` to ``cur`` is flagged when ``prev - cur`` exceeds
    ``tolerance_kwh`` (strictly; the difference is rounded to 1e-6 kWh first so that float
    representation of the 0.01 kWh register resolution cannot decide), unless it is a
    rollover: ``prev >= rollover_fraction * register_max_kwh`` and
    ``cur < (1 - rollover_fraction) * register_max_kwh``.

    Each flagged step is one finding at the ``ts`` of the lower reading
    (``starts_at == ends_at``); the register values are as displayed, before ``ct_ratio``.

    Parameters
    ----------
    tolerance_kwh : float
        Largest decrease that is not flagged [kWh]. Default 0.01: one count of the usual
        2-decimal register display (IEC 62053-21/-22 class meters show 0.01 kWh), so a
        re-read rounding difference is not a fault.
    register_max_kwh : float
        Largest value the register can show before it wraps [kWh]. Default 99 999 999.99
        (8 integer + 2 decimal digits, the widest common display); set it to the fleet's
        display size, e.g. 999 999.99 for 6+2 digit meters.
    rollover_fraction : float
        A drop from at least this fraction of ``register_max_kwh`` to below
        ``1 - rollover_fraction`` of it is a wrap-around, not a fault [-]. Default 0.9
        (project choice: far from any plausible real decrease).
    """

    alert_types: ClassVar[tuple[str, ...]] = ("register_decrease",)

    def __init__(
        self,
        tolerance_kwh: float = 0.01,
        register_max_kwh: float = 99_999_999.99,
        rollover_fraction: float = 0.9,
    ) -> None:
        if float(tolerance_kwh) < 0:
            raise ValueError(f"tolerance_kwh must be >= 0, got {tolerance_kwh!r}")
        check_positive("register_max_kwh", register_max_kwh)
        check_fraction("rollover_fraction", rollover_fraction)
        self.tolerance_kwh = tolerance_kwh
        self.register_max_kwh = register_max_kwh
        self.rollover_fraction = rollover_fraction

    def detect_window(self, w: Window) -> pd.DataFrame:
        """One finding per decreasing step (see class docstring)."""
        energy = w.q("energy_import_kwh")
        has = ~np.isnan(energy)
        prev_col, prev = prev_present(energy, has)
        drop = np.round(prev - energy, 6)
        top = float(self.register_max_kwh)
        frac = float(self.rollover_fraction)
        with np.errstate(invalid="ignore"):
            rollover = (prev >= frac * top) & (energy < (1.0 - frac) * top)
        flagged = (
            has & (prev_col >= 0) & strictly_greater(drop, float(self.tolerance_kwh)) & ~rollover
        )
        rows_, cols = np.nonzero(flagged)
        if rows_.size == 0:
            return empty_findings()
        thresholds = {
            "tolerance_kwh": self.tolerance_kwh,
            "register_max_kwh": self.register_max_kwh,
            "rollover_fraction": self.rollover_fraction,
        }
        windows = energy_windows(w, has)
        m = w.meters
        rows = []
        for r, c in zip(rows_.tolist(), cols.tolist(), strict=True):  # loop over findings only
            pc = int(prev_col[r, c])
            t_prev, t_cur = utc(w.t[r, pc]), utc(w.t[r, c])
            rows.append(
                {
                    "type": "register_decrease",
                    "severity": self.severity,
                    "meter_id": m.ids[r],
                    "transformer_id": m.transformer_id[r],
                    "starts_at": t_cur,
                    "ends_at": t_cur,
                    "summary": (
                        f"Import register fell by {drop[r, c]:.2f} kWh from {prev[r, c]:.2f} kWh "
                        f"({short_ts(t_prev)}) to {energy[r, c]:.2f} kWh ({short_ts(t_cur)})"
                    ),
                    "evidence": plain(
                        {
                            "rule": "energy_import_kwh[prev] - energy_import_kwh[cur] > "
                            "tolerance_kwh, not a rollover",
                            "thresholds": thresholds,
                            "previous": {"ts": t_prev, "energy_import_kwh": prev[r, c]},
                            "current": {"ts": t_cur, "energy_import_kwh": energy[r, c]},
                            "drop_kwh": drop[r, c],
                            "window": windows(r),
                        }
                    ),
                }
            )
        return findings_frame(rows)


def energy_windows(w: Window, has: np.ndarray) -> Any:
    """Evidence ``window`` per meter row over the readings that carry the register."""
    t_has = np.where(has, w.t, NO_TIME)
    n = has.sum(axis=1)
    big = np.iinfo(np.int64).max
    first = np.where(has, w.t, big).min(axis=1) if w.n_cells else np.zeros(w.n_meters, np.int64)
    last = t_has.max(axis=1) if w.n_cells else np.zeros(w.n_meters, np.int64)

    def window(r: int) -> dict[str, Any]:
        return {"from": utc(first[r]), "to": utc(last[r]), "readings": int(n[r])}

    return window


class _PhaseRule(Detector):
    """Shared machinery of the per-phase voltage/current rules.

    Phases present: ``phases == 1`` -> L1 only, ``phases == 3`` -> L1..L3 (other values:
    none). ``Un`` is ``nominal_voltage_v`` and ``Ib`` is ``rated_current_a`` from the
    registry. An episode is a run of consecutive readings of one meter in which the rule
    holds on at least one phase; phases that hold at the same time (or in overlapping
    runs) are reported in one finding, since they share the fingerprint (type + meter).
    """

    _title: ClassVar[str] = ""
    _rule_text: ClassVar[str] = ""
    voltage_fraction: float
    current_fraction: float
    min_readings: int
    merge_hours: float

    def _flags(
        self, u: np.ndarray, i: np.ndarray, un: np.ndarray, ib: np.ndarray, three: np.ndarray
    ) -> np.ndarray:
        """Boolean 3 x meters x cells array (phase-major): rule holds on that phase (phase
        presence aside)."""
        raise NotImplementedError

    def _thresholds(self, un: float, ib: float) -> dict[str, Any]:
        return {
            "voltage_fraction": self.voltage_fraction,
            "voltage_v": self.voltage_fraction * un,
            "current_fraction": self.current_fraction,
            "current_a": self.current_fraction * ib,
            "min_readings": self.min_readings,
        }

    def detect_window(self, w: Window) -> pd.DataFrame:
        """One finding per episode per meter, listing the phases involved."""
        m = w.meters
        u, i = w.phase_values("u"), w.phase_values("i")
        un = m.nominal_voltage_v[None, :, None]
        ib = m.rated_current_a[None, :, None]
        flags = self._flags(u, i, un, ib, m.three[None, :, None]) & m.present.T[:, :, None]
        flags &= w.present[None]
        mask = flags.any(axis=0)
        r = runs(mask, w.present, w.last_col())
        r = r.select(r.n >= int(self.min_readings))
        r = merge_runs(r, w.t, float(self.merge_hours) * 3600e9)
        if len(r) == 0:
            return empty_findings()
        cols = np.broadcast_to(np.arange(w.n_cells, dtype=float)[None, :], mask.shape)
        per_phase = []
        for p in range(3):  # at most three phases
            fp = flags[p]
            first_col = run_reduce(cols, r, "min", where=fp)
            known = np.isfinite(first_col)
            fc = np.where(known, first_col, 0).astype(np.int64)
            per_phase.append(
                {
                    "u_start": np.where(known, u[p][r.row, fc], np.nan),
                    "i_start": np.where(known, i[p][r.row, fc], np.nan),
                    "u_min": run_reduce(u[p], r, "min", where=fp),
                    "u_max": run_reduce(u[p], r, "max", where=fp),
                    "i_min": run_reduce(i[p], r, "min", where=fp),
                    "i_max": run_reduce(i[p], r, "max", where=fp),
                    "n": run_reduce(fp.astype(float), r, "sum").astype(np.int64),
                }
            )
        rows = []
        for e in range(len(r)):  # loop over findings only
            row = int(r.row[e])
            un_e, ib_e = float(m.nominal_voltage_v[row]), float(m.rated_current_a[row])
            involved = [p for p in range(3) if per_phase[p]["n"][e] > 0]
            labels = [PHASE_LABELS[p] for p in involved]
            observed = {
                PHASE_LABELS[p]: {
                    "voltage_v_start": per_phase[p]["u_start"][e],
                    "current_a_start": per_phase[p]["i_start"][e],
                    "voltage_v_min": per_phase[p]["u_min"][e],
                    "voltage_v_max": per_phase[p]["u_max"][e],
                    "current_a_min": per_phase[p]["i_min"][e],
                    "current_a_max": per_phase[p]["i_max"][e],
                    "readings": per_phase[p]["n"][e],
                }
                for p in involved
            }
            start_ts = utc(w.t[row, r.c0[e]])
            end_ts = pd.NaT if r.ongoing[e] else utc(w.t[row, r.c1[e]])
            u0 = ", ".join(f"{observed[lab]['voltage_v_start']:.1f} V" for lab in labels)
            pct = ", ".join(
                f"{100 * observed[lab]['voltage_v_start'] / un_e:.0f} %" for lab in labels
            )
            i0 = ", ".join(f"{observed[lab]['current_a_start']:.2f} A" for lab in labels)
            when = (
                f"since {short_ts(start_ts)}"
                if r.ongoing[e]
                else (f"from {short_ts(start_ts)} to {short_ts(end_ts)}")
            )
            noun = "phase" if len(labels) == 1 else "phases"
            summary = (
                f"{self._title}: {noun} {', '.join(labels)} voltage {u0} ({pct} of {un_e:g} V) "
                f"with current {i0} {when}"
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
                            "phase": ",".join(labels),
                            "phases": labels,
                            "nominal_voltage_v": un_e,
                            "rated_current_a": ib_e,
                            "thresholds": self._thresholds(un_e, ib_e),
                            "observed": observed,
                            "readings": int(r.n[e]),
                            "window": w.meter_window(row),
                        }
                    ),
                }
            )
        return findings_frame(rows)


@register(cadence="streaming", order=80)
class VoltageLoss(_PhaseRule):
    """Voltage loss (失压): a phase's voltage is low while it still carries load current.

    Holds on a present phase when ``U < voltage_fraction * Un`` and
    ``I > current_fraction * Ib`` (both strict; NaN never holds). Applies to single- and
    three-phase meters. This is the State Grid smart-meter event definition (Q/GDW 1354
    智能电能表功能规范 event parameters: trigger voltage 78 % Un, trigger current 0.5 % Ib,
    i.e. the meter's starting current). The meter's own 60 s trigger delay is replaced by
    ``min_readings``.

    Parameters
    ----------
    voltage_fraction : float
        Voltage trigger as a fraction of ``nominal_voltage_v`` [-]. Default 0.78 (State Grid).
    current_fraction : float
        Current trigger as a fraction of ``rated_current_a`` [-]. Default 0.005 (State
        Grid; the starting current of a class 1/2 meter).
    min_readings : int
        Consecutive readings the condition must hold for [readings]. Default 1: raise
        within one poll.
    merge_hours : float
        Episodes of a meter at most this far apart are one finding [h]. Default 24
        (hysteresis: a quantity hovering at the threshold gives at most one alert a day).
    """

    alert_types: ClassVar[tuple[str, ...]] = ("voltage_loss",)
    _title: ClassVar[str] = "Voltage loss"
    _rule_text: ClassVar[str] = (
        "voltage_loss (失压): U < voltage_fraction*Un and I > current_fraction*Ib on a phase"
    )

    def __init__(
        self,
        voltage_fraction: float = 0.78,
        current_fraction: float = 0.005,
        min_readings: int = 1,
        merge_hours: float = 24.0,
    ) -> None:
        check_fraction("voltage_fraction", voltage_fraction)
        check_fraction("current_fraction", current_fraction)
        check_count("min_readings", min_readings)
        self.voltage_fraction = voltage_fraction
        self.current_fraction = current_fraction
        self.min_readings = min_readings
        if not float(merge_hours) >= 0:
            raise ValueError(f"merge_hours must be >= 0, got {merge_hours!r}")
        self.merge_hours = merge_hours

    def _flags(
        self, u: np.ndarray, i: np.ndarray, un: np.ndarray, ib: np.ndarray, three: np.ndarray
    ) -> np.ndarray:
        return strictly_less(u, self.voltage_fraction * un) & strictly_greater(
            i, self.current_fraction * ib
        )


@register(cadence="streaming", order=90)
class PhaseBreak(_PhaseRule):
    """Phase break (断相): one phase of a live three-phase supply is without voltage and load.

    Holds on a phase of a three-phase meter when ``U < voltage_fraction * Un`` and
    ``I < current_fraction * Ib`` (both strict; NaN never holds) while at least one *other*
    phase has ``U >= live_voltage_fraction * Un``. A single-phase meter without voltage,
    or a three-phase meter with every phase low, has lost supply altogether: that is an
    outage, not a phase break. State Grid event definition (Q/GDW 1354 智能电能表功能规范:
    trigger voltage 60 % Un, trigger current 0.5 % Ib); the meter's trigger delay is
    replaced by ``min_readings``.

    Parameters
    ----------
    voltage_fraction : float
        Voltage trigger as a fraction of ``nominal_voltage_v`` [-]. Default 0.60 (State Grid).
    current_fraction : float
        Current trigger as a fraction of ``rated_current_a`` [-]. Default 0.005 (State Grid).
    live_voltage_fraction : float
        Another phase at or above this fraction of ``Un`` shows the supply is live [-].
        Default 0.78, the voltage-loss trigger: a phase above it is not in voltage loss.
    min_readings : int
        Consecutive readings the condition must hold for [readings]. Default 1.
    merge_hours : float
        Episodes of a meter at most this far apart are one finding [h]. Default 24
        (hysteresis: a quantity hovering at the threshold gives at most one alert a day).
    """

    alert_types: ClassVar[tuple[str, ...]] = ("phase_break",)
    _title: ClassVar[str] = "Phase break"
    _rule_text: ClassVar[str] = (
        "phase_break (断相): U < voltage_fraction*Un and I < current_fraction*Ib on a phase of "
        "a 3-phase meter while another phase has U >= live_voltage_fraction*Un"
    )

    def __init__(
        self,
        voltage_fraction: float = 0.60,
        current_fraction: float = 0.005,
        live_voltage_fraction: float = 0.78,
        min_readings: int = 1,
        merge_hours: float = 24.0,
    ) -> None:
        check_fraction("voltage_fraction", voltage_fraction)
        check_fraction("current_fraction", current_fraction)
        check_fraction("live_voltage_fraction", live_voltage_fraction, upper_inclusive=True)
        check_count("min_readings", min_readings)
        self.voltage_fraction = voltage_fraction
        self.current_fraction = current_fraction
        self.live_voltage_fraction = live_voltage_fraction
        self.min_readings = min_readings
        if not float(merge_hours) >= 0:
            raise ValueError(f"merge_hours must be >= 0, got {merge_hours!r}")
        self.merge_hours = merge_hours

    def _thresholds(self, un: float, ib: float) -> dict[str, Any]:
        out = super()._thresholds(un, ib)
        out["live_voltage_fraction"] = self.live_voltage_fraction
        out["live_voltage_v"] = self.live_voltage_fraction * un
        return out

    def _flags(
        self, u: np.ndarray, i: np.ndarray, un: np.ndarray, ib: np.ndarray, three: np.ndarray
    ) -> np.ndarray:
        # Live: U >= live fraction (the complement of the strict "<"); NaN is not live.
        live = at_least(u, self.live_voltage_fraction * un)
        live_count = live.sum(axis=0, keepdims=True, dtype=np.int8)  # 0..3
        other_live = live_count > live  # another phase is live (no 3-plane int64 difference)
        return (
            three
            & other_live
            & strictly_less(u, self.voltage_fraction * un)
            & strictly_less(i, self.current_fraction * ib)
        )
