"""Billing-error detectors built on VEE (analytics/vee.py): stuck, runaway, mismatches, clock, estimation.

Each detector runs :func:`analytics.vee.validate` over the readings window with its own
thresholds (the other VEE thresholds at their defaults) and turns the matching
:attr:`~analytics.vee.ValidatedReadings.events` into findings (catalogue category
``billing``). ``register_decrease`` is raised by :class:`analytics.detectors.rules.RegisterDecrease`
and is not repeated here. Validation results are shared between the detectors of one suite
run (see :func:`analytics.base.shared_session`).

All detectors take ``interval_s`` (the VEE interval grid [s], default 900) and work on the
intervals from the first grid boundary after the earliest reading to the last one before
the latest reading.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd

from meterwatch.analytics.base import (
    Detector,
    check_count,
    check_fraction,
    check_positive,
    findings_frame,
    plain,
    short_ts,
)
from meterwatch.analytics.params import VeeParams
from meterwatch.analytics.registry import register
from meterwatch.analytics.vee import ValidatedReadings, validate_window
from meterwatch.analytics.window import Window
from meterwatch.core.schema import empty_findings


def validated(w: Window, params: VeeParams, interval_s: int) -> ValidatedReadings:
    """VEE over the window, once per window and parameters (shared by the billing rules)."""
    result: ValidatedReadings = w.memo(
        ("validate", params, int(interval_s)),
        lambda: validate_window(w, params, interval_s=int(interval_s)),
    )
    return result


class _VeeRule(Detector):
    """Shared machinery: validate, select events of one code, build findings."""

    shares: ClassVar[str] = "vee"

    _event: ClassVar[str] = ""
    _rule: ClassVar[str] = ""
    interval_s: int

    def _params(self) -> VeeParams:
        own = {k: v for k, v in self.get_params().items() if k != "interval_s"}
        return VeeParams(**own)

    def _summary(self, meter: str, ev: dict[str, Any], start: Any, end: Any) -> str:
        raise NotImplementedError

    def detect_window(self, w: Window) -> pd.DataFrame:
        """One finding per VEE event of this detector's code (see the class docstring)."""
        if not w.present.any():
            return empty_findings()
        result = validated(w, self._params(), int(self.interval_s))
        events = result.events[result.events["code"] == self._event]
        if events.empty:
            return empty_findings()
        row_of = {m: k for k, m in enumerate(w.meters.ids)}
        rows = []
        for meter, start, end, ev in zip(  # loop over findings only
            events["meter_id"],
            events["starts_at"],
            events["ends_at"],
            events["evidence"],
            strict=True,
        ):
            rows.append(
                {
                    "type": self.alert_types[0],
                    "severity": self.severity,
                    "meter_id": meter,
                    "transformer_id": w.meters.transformer_id[row_of[meter]],
                    "starts_at": start,
                    "ends_at": end,
                    "summary": self._summary(meter, ev, start, end),
                    "evidence": plain(
                        {
                            "rule": self._rule,
                            **ev,
                            "interval_s": int(self.interval_s),
                            "rule_set_version": result.rule_set_version,
                            "window": w.meter_window(row_of[meter]),
                        }
                    ),
                }
            )
        return findings_frame(rows)


def _when(start: Any, end: Any) -> str:
    if end is None or pd.isna(end):
        return f"since {short_ts(start)}"
    return f"from {short_ts(start)} to {short_ts(end)}"


@register(cadence="interval", history_days=1, order=20)
class MeterStuck(_VeeRule):
    """Register stuck: no register count for ``stuck_hours`` while current flows.

    Holds on a run of intervals in which the register advanced by less than
    ``register_resolution_kwh`` each while the smallest phase current read in the interval
    was at least ``stuck_current_fraction`` x Ib (``rated_current_a``), lasting at least
    ``stuck_hours``. Defaults follow issue #5 (4 h, 5 % of Ib), the stuck-register /
    "no consumption with load" checks of the Oracle and Itron VEE rule catalogues.

    Parameters
    ----------
    stuck_hours : float
        Shortest run [h]. Default 4.
    stuck_current_fraction : float
        Current threshold as a fraction of Ib [-]. Default 0.05.
    register_resolution_kwh : float
        One register count [kWh]. Default 0.01 (2-decimal display).
    interval_s : int
        VEE interval [s]. Default 900.
    """

    alert_types: ClassVar[tuple[str, ...]] = ("meter_stuck",)
    _event: ClassVar[str] = "stuck_register"
    _rule: ClassVar[str] = (
        "register delta < register_resolution_kwh in every interval of a run >= stuck_hours "
        "while min phase current >= stuck_current_fraction*Ib"
    )

    def __init__(
        self,
        stuck_hours: float = 4.0,
        stuck_current_fraction: float = 0.05,
        register_resolution_kwh: float = 0.01,
        interval_s: int = 900,
    ) -> None:
        check_positive("stuck_hours", stuck_hours)
        check_fraction("stuck_current_fraction", stuck_current_fraction, upper_inclusive=True)
        check_positive("register_resolution_kwh", register_resolution_kwh)
        check_count("interval_s", interval_s)
        self.stuck_hours = stuck_hours
        self.stuck_current_fraction = stuck_current_fraction
        self.register_resolution_kwh = register_resolution_kwh
        self.interval_s = interval_s

    def _summary(self, meter: str, ev: dict[str, Any], start: Any, end: Any) -> str:
        hours = ev["intervals"] * int(self.interval_s) / 3600
        cur = ev.get("current_a_min")
        load = f" with at least {cur:.2f} A flowing" if cur is not None else ""
        return f"Register did not advance for {hours:g} h{load} {_when(start, end)}"


@register(cadence="interval", history_days=1, order=30)
class MeterRunaway(_VeeRule):
    """Register runaway: an interval's advance exceeds what the meter can physically carry.

    Holds on an interval whose register delta (before ``ct_ratio``) exceeds
    ``runaway_factor`` x Un x Imax x phases x interval (``nominal_voltage_v``,
    ``max_current_a``, ``phases`` from the registry) and, when the meter reports
    ``power_kw``, also ``runaway_factor`` x its highest power read in or at the start of the
    interval x interval (an advance its own power explains is an overload, e.g. a CT meter
    driven past Imax, not a register fault). Default factor 1.2 as in issue #5.

    Parameters
    ----------
    runaway_factor : float
        Multiple of the maximum possible energy [-]. Default 1.2.
    interval_s : int
        VEE interval [s]. Default 900.
    """

    alert_types: ClassVar[tuple[str, ...]] = ("meter_runaway",)
    _event: ClassVar[str] = "runaway"
    _rule: ClassVar[str] = (
        "register delta per interval > runaway_factor*Un*Imax*phases*interval/1000 [kWh]"
    )

    def __init__(self, runaway_factor: float = 1.2, interval_s: int = 900) -> None:
        check_positive("runaway_factor", runaway_factor)
        check_count("interval_s", interval_s)
        self.runaway_factor = runaway_factor
        self.interval_s = interval_s

    def _summary(self, meter: str, ev: dict[str, Any], start: Any, end: Any) -> str:
        return (
            f"Register advanced up to {ev['kwh_max']:.2f} kWh per interval, above the "
            f"physical limit {ev['limit_kwh_per_interval']:.2f} kWh, {_when(start, end)}"
        )


@register(cadence="interval", history_days=1, order=40)
class EnergyPowerMismatch(_VeeRule):
    """Register advance disagrees with the integrated active power over a window.

    Per meter and window of ``mismatch_window_hours`` (aligned to the interval grid start):
    ``E`` = sum of register deltas, ``P`` = trapezoid integral of ``power_kw`` (import part)
    over the same read pairs. Holds when ``|E - P| > mismatch_tolerance x max(E, P)`` and
    ``|E - P| > mismatch_floor_kwh`` and it is not a multiplier mismatch (see
    :class:`MultiplierMismatch`). Defaults: 24 h, 10 %, 1 kWh (project choices: a day
    averages out sampling of a fluctuating load by 15-minute polls).

    Parameters
    ----------
    mismatch_window_hours : float
        Window [h]. Default 24.
    mismatch_tolerance : float
        Relative tolerance [-]. Default 0.1.
    mismatch_floor_kwh : float
        Absolute floor [kWh]. Default 1.0.
    mismatch_min_coverage : float
        Share of the window that read pairs must cover to be judged [-]. Default 0.9
        (project choice: a short window magnifies poll-timestamp offsets).
    interval_s : int
        VEE interval [s]. Default 900.
    """

    alert_types: ClassVar[tuple[str, ...]] = ("energy_power_mismatch",)
    _event: ClassVar[str] = "energy_power_mismatch"
    _rule: ClassVar[str] = (
        "|E - P| > mismatch_tolerance*max(E, P) and > mismatch_floor_kwh per window; "
        "E = register deltas, P = trapezoid integral of power_kw"
    )

    def __init__(
        self,
        mismatch_window_hours: float = 24.0,
        mismatch_tolerance: float = 0.1,
        mismatch_floor_kwh: float = 1.0,
        mismatch_min_coverage: float = 0.9,
        interval_s: int = 900,
    ) -> None:
        check_positive("mismatch_window_hours", mismatch_window_hours)
        check_positive("mismatch_tolerance", mismatch_tolerance)
        if not float(mismatch_floor_kwh) >= 0:
            raise ValueError(f"mismatch_floor_kwh must be >= 0, got {mismatch_floor_kwh!r}")
        check_fraction("mismatch_min_coverage", mismatch_min_coverage, upper_inclusive=True)
        check_count("interval_s", interval_s)
        self.mismatch_window_hours = mismatch_window_hours
        self.mismatch_tolerance = mismatch_tolerance
        self.mismatch_floor_kwh = mismatch_floor_kwh
        self.mismatch_min_coverage = mismatch_min_coverage
        self.interval_s = interval_s

    def _summary(self, meter: str, ev: dict[str, Any], start: Any, end: Any) -> str:
        return (
            f"Register advanced {ev['register_kwh']:.2f} kWh but integrated power gives "
            f"{ev['integrated_power_kwh']:.2f} kWh {_when(start, end)}"
        )


@register(cadence="interval", history_days=1, order=50)
class MultiplierMismatch(_VeeRule):
    """Register and power differ by the CT multiplier: one of them is on the primary side.

    Per window as in :class:`EnergyPowerMismatch`, for meters with ``ct_ratio > 1``: holds
    when ``E / P`` or ``P / E`` is within ``multiplier_tolerance`` x ``ct_ratio`` of
    ``ct_ratio`` (the meter is programmed with the multiplier that the registry applies
    again, or the other way round) and the difference exceeds ``mismatch_floor_kwh``.

    Parameters
    ----------
    multiplier_tolerance : float
        Relative tolerance around ``ct_ratio`` [-]. Default 0.1.
    mismatch_window_hours : float
        Window [h]. Default 24.
    mismatch_floor_kwh : float
        Absolute floor [kWh]. Default 1.0.
    mismatch_min_coverage : float
        Share of the window that read pairs must cover to be judged [-]. Default 0.9
        (project choice: a short window magnifies poll-timestamp offsets).
    interval_s : int
        VEE interval [s]. Default 900.
    """

    alert_types: ClassVar[tuple[str, ...]] = ("multiplier_mismatch",)
    _event: ClassVar[str] = "multiplier_mismatch"
    _rule: ClassVar[str] = (
        "E/P or P/E within multiplier_tolerance*ct_ratio of ct_ratio (ct_ratio > 1) per window"
    )

    def __init__(
        self,
        multiplier_tolerance: float = 0.1,
        mismatch_window_hours: float = 24.0,
        mismatch_floor_kwh: float = 1.0,
        mismatch_min_coverage: float = 0.9,
        interval_s: int = 900,
    ) -> None:
        check_fraction("multiplier_tolerance", multiplier_tolerance)
        check_positive("mismatch_window_hours", mismatch_window_hours)
        if not float(mismatch_floor_kwh) >= 0:
            raise ValueError(f"mismatch_floor_kwh must be >= 0, got {mismatch_floor_kwh!r}")
        check_fraction("mismatch_min_coverage", mismatch_min_coverage, upper_inclusive=True)
        check_count("interval_s", interval_s)
        self.multiplier_tolerance = multiplier_tolerance
        self.mismatch_window_hours = mismatch_window_hours
        self.mismatch_floor_kwh = mismatch_floor_kwh
        self.mismatch_min_coverage = mismatch_min_coverage
        self.interval_s = interval_s

    def _summary(self, meter: str, ev: dict[str, Any], start: Any, end: Any) -> str:
        return (
            f"Register {ev['register_kwh']:.2f} kWh vs integrated power "
            f"{ev['integrated_power_kwh']:.2f} kWh: ratio {ev['ratio']:.3g} matches the CT "
            f"multiplier {ev['ct_ratio']:g} {_when(start, end)}"
        )


@register(cadence="interval", history_days=1, order=60)
class ClockError(_VeeRule):
    """A meter's clock runs ahead.

    Where readings carry the collector's receipt time (``collected_at``, as the service
    stores them), every read is judged on its own: the meter's time (``device_ts`` where it
    reported its clock, else ``ts``) later than ``collected_at`` by more than
    ``clock_tolerance_s``; the finding starts at the first such read. Readings without
    receipt times (files without them): the meter's latest reading later than the latest
    reading of every other meter by more than ``clock_tolerance_s`` (polls are spread over
    the interval, so a meter's last read may legitimately be one interval later than
    another's); this needs at least two meters, and clocks ahead together hide each other.
    A clock that runs behind cannot be told from a late delivery and is not judged.

    Parameters
    ----------
    clock_tolerance_s : float
        Allowed lead [s]. Default 900.
    interval_s : int
        VEE interval [s]. Default 900.
    """

    alert_types: ClassVar[tuple[str, ...]] = ("clock_error",)
    _event: ClassVar[str] = "clock_error"
    _rule: ClassVar[str] = (
        "device_ts or ts - collected_at > clock_tolerance_s "
        "(without collected_at: latest ts - latest ts of every other meter)"
    )

    def __init__(self, clock_tolerance_s: float = 900.0, interval_s: int = 900) -> None:
        check_positive("clock_tolerance_s", clock_tolerance_s)
        check_count("interval_s", interval_s)
        self.clock_tolerance_s = clock_tolerance_s
        self.interval_s = interval_s

    def _summary(self, meter: str, ev: dict[str, Any], start: Any, end: Any) -> str:
        return (
            f"Meter clock runs {ev['lead_s'] / 60:.1f} min ahead of "
            + ("the collector" if ev.get("reference_kind") == "collected_at" else "the fleet")
            + f" (latest reading {short_ts(ev['latest_read'])})"
        )


@register(cadence="interval", history_days=1, order=70)
class EstimationExcess(_VeeRule):
    """Too many consecutive estimated intervals for a meter.

    Holds on a run of estimated intervals longer than ``max_consecutive_estimated_s``
    (default 24 h: a day of estimates means the meter is not being read; issue #5 asks for a
    configurable limit).

    Parameters
    ----------
    max_consecutive_estimated_s : float
        Longest run of estimates that is not flagged [s]. Default 86400.
    linear_max_gap_s : float
        Longest gap filled by linear interpolation [s]. Default 7200.
    interval_s : int
        VEE interval [s]. Default 900.
    """

    alert_types: ClassVar[tuple[str, ...]] = ("estimation_excess",)
    _event: ClassVar[str] = "estimation_excess"
    _rule: ClassVar[str] = (
        "consecutive estimated intervals * interval_s > max_consecutive_estimated_s"
    )

    def __init__(
        self,
        max_consecutive_estimated_s: float = 86400.0,
        linear_max_gap_s: float = 7200.0,
        interval_s: int = 900,
    ) -> None:
        check_positive("max_consecutive_estimated_s", max_consecutive_estimated_s)
        if not float(linear_max_gap_s) >= 0:
            raise ValueError(f"linear_max_gap_s must be >= 0, got {linear_max_gap_s!r}")
        check_count("interval_s", interval_s)
        self.max_consecutive_estimated_s = max_consecutive_estimated_s
        self.linear_max_gap_s = linear_max_gap_s
        self.interval_s = interval_s

    def _summary(self, meter: str, ev: dict[str, Any], start: Any, end: Any) -> str:
        hours = ev["intervals"] * int(self.interval_s) / 3600
        return f"{hours:g} h of consecutive estimated intervals {_when(start, end)}"


#: The billing detectors, in run order (registered in analytics/suite.py).
BILLING_DETECTORS: tuple[type[Detector], ...] = (
    MeterStuck,
    MeterRunaway,
    EnergyPowerMismatch,
    MultiplierMismatch,
    ClockError,
    EstimationExcess,
)
