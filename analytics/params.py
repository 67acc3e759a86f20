"""Config sections of VEE and billing: ``vee`` (thresholds and grid), ``tariffs``, ``billing``.

Apart from the detector registry (analytics/config.py composes ``analytics.detectors`` from it),
so that VEE and the detectors can import their parameters without importing every detector.
"""

from __future__ import annotations

import re

from pydantic import ConfigDict, Field, field_validator, model_validator

from meterwatch.core.config import Duration, OptionalTimeZone, Section

RULE_SET_VERSION = "mw-vee-1.0"


class VeeParams(Section):
    """Thresholds of the VEE rule set.

    Units are in the names (``_s`` seconds, ``_kwh`` kWh, ``_hours`` h); fractions and ratios
    are dimensionless; the ``vee`` config section is this model plus the grid (:class:`VeeConfig`). Each default
    was checked against the reference rule sets of issue #5; the tags in brackets are the
    sources listed, with their addresses and what they say, in ``docs/billing.md`` ("Sources
    of the defaults"). "Project choice" means no reference gave a value.
    """

    max_read_spacing_intervals: float = Field(1.5, gt=0)
    """Largest read spacing that still interpolates a boundary [intervals]. Project choice."""
    alignment_tolerance_s: float = Field(60.0, ge=0)
    """Distance of the nearest read beyond which a boundary is ``misaligned`` [s]. Project choice."""
    future_tolerance_s: float = Field(300.0, ge=0)
    """Reads later than now + this are ``future_ts`` [s]. Project choice."""
    clock_tolerance_s: float = Field(900.0, ge=0)
    """Lead of a read's meter time over its ``collected_at`` (without receipt times: of a
    meter's latest read over all others', or now) that is ``clock_error`` [s].

    State Grid corrects clocks 1-15 min off remotely and counts > 5 min after two corrections
    as a fault [SG-CLK]; Ontario and California name a time check without a value [ON-IMO,
    CA-VEE]. Kept at 900 s (State Grid's upper bound): the fallback for files without
    receipt times compares read times across meters polled over one interval and cannot
    resolve less than one poll interval.
    """
    register_max_kwh: float = Field(99_999_999.99, gt=0)
    """Register full scale [kWh]: 8+2 digit display (README ``register_decrease``)."""
    register_resolution_kwh: float = Field(0.01, ge=0)
    """One register count [kWh]."""
    rollover_fraction: float = Field(0.9, gt=0, lt=1)
    """A wrap goes from >= this x full scale to < (1 - this) x full scale [-]. Project choice."""
    decrease_tolerance_kwh: float = Field(0.01, ge=0)
    """Largest fall that is not ``register_decrease`` [kWh]: one count [OR-NEG: rule only]."""
    spike_ratio: float = Field(10.0, gt=0)
    """Day's highest interval / third-highest above which it is a ``spike`` [-].

    Highest vs third-highest per day is Oracle's Interval Spike Check [OR-SPIKE] and a
    California interval rule [CA-150]; neither gives a value read: project choice.
    """
    spike_floor_kwh: float = Field(1.0, ge=0)
    """Highest minus third-highest must also exceed this [kWh]. Project choice."""
    high_usage_ratio: float = Field(2.0, gt=1)
    """Day total / mean of like history days above which it is ``high_usage`` [-].

    Issue #5 (200 %); Oracle and Itron leave it configurable [OR-HILO, IT-RULES]; a billing
    product ships the same 50 %/200 % defaults [CUR-HILO].
    """
    low_usage_ratio: float = Field(0.5, gt=0, lt=1)
    """Day total / history mean below which it is ``low_usage`` [-]. Issue #5 (50 %), as above."""
    usage_floor_kwh: float = Field(5.0, ge=0)
    """High/low usage must also differ from the mean by more than this [kWh]. Project choice."""
    usage_history_days: int = Field(7, ge=1)
    """Days of history for the high/low usage mean [d]. Project choice [OR-HILO: configurable]."""
    zero_consumption_hours: float = Field(24.0, gt=0)
    """No register count for this long, outside outages, is ``zero_consumption`` [h].

    Issue #5; Oracle's Zero Consumption Check also separates outages (no duration) [OR-ZERO].
    """
    outage_voltage_fraction: float = Field(0.6, gt=0, lt=1)
    """Every phase voltage below this x Un is an ``outage`` [-]. Not verified (searched State
    Grid power-down events without result); kept as ``phase_break``."""
    stuck_hours: float = Field(4.0, gt=0)
    """Register unchanged this long under load is ``stuck_register`` [h]. Issue #5; not verified."""
    stuck_current_fraction: float = Field(0.05, gt=0)
    """Load condition of the stuck check: smallest phase current >= this x Ib [-]. Issue #5;
    a vendor meter uses the same I >= 5 % Ib load condition [VND-3P]."""
    runaway_factor: float = Field(1.2, gt=0)
    """Delta above this x Un x Imax x phases x interval is ``runaway`` [-]. Issue #5; not
    verified (searched State Grid runaway-meter rules without result)."""
    mismatch_window_hours: float = Field(24.0, gt=0)
    """Window of the energy vs integrated power comparison [h]. Project choice [OR-SUM: rule]."""
    mismatch_tolerance: float = Field(0.1, gt=0)
    """Relative tolerance of that comparison [-]. Project choice [OR-SUM: configured]."""
    mismatch_floor_kwh: float = Field(1.0, ge=0)
    """Absolute floor of that comparison [kWh]. Project choice."""
    mismatch_min_coverage: float = Field(0.9, gt=0, le=1)
    """Share of a window covered by read pairs needed to judge it [-]. Project choice."""
    multiplier_tolerance: float = Field(0.1, gt=0)
    """Relative tolerance of E/P = ``ct_ratio`` for ``multiplier_mismatch`` [-]. Project choice."""
    linear_max_gap_s: Duration = Field(7200.0, ge=0)
    """Longest run estimated by linear interpolation [s], inclusive.

    California interval VEE: linear interpolation "only used for 'gaps' 2 hours or less"
    [CA-130]; Itron and Oracle leave it to the user [IT-LIN, OR-INTERP]. Outage intervals are
    never end points (California rule text [CA-128], Oracle [OR-INTERP]).
    """
    like_days: int = Field(3, ge=1)
    """Like days averaged for longer runs. Itron "three nearest days of the same or like day"
    [IT-HIST]; California "always try for three days" [CA-165]. Days with an outage and
    non-actual intervals are excluded [IT-HIST, CA-128]."""
    like_day_search_days: int = Field(28, ge=1)
    """How far before and after like days are searched [d]. Project choice (Itron's two-week
    routine looks back 2 weeks [IT-2WK])."""
    max_consecutive_estimated_s: Duration = Field(86400.0, gt=0)
    """Consecutive estimates longer than this add ``estimation_excess`` [s]. Project choice;
    Oracle's Prolonged Estimation Check is configured, no default [OR-PROLONGED]."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class VeeConfig(VeeParams):
    """``vee``: the thresholds of :class:`VeeParams` plus the interval grid and the rule-set tag
    stored with every validated interval (analytics/vee.py; sources in docs/billing.md)."""

    interval: Duration = Field(900.0, gt=0)
    """Interval grid of validated readings [s]; a whole number of seconds dividing a day."""
    rule_set_version: str = RULE_SET_VERSION
    """Tag stored with each validated interval: which rule set produced it."""

    @field_validator("interval")
    @classmethod
    def _interval_divides_day(cls, v: float) -> float:
        if v != int(v) or 86400 % int(v):
            raise ValueError("interval must be a whole number of seconds that divides a day")
        return v

    def params(self) -> VeeParams:
        """The thresholds alone."""
        return VeeParams(**self.model_dump(exclude={"interval", "rule_set_version"}))


def _minutes(text: str) -> int:
    m = re.fullmatch(r"([01]\d|2[0-4]):([0-5]\d)", text)
    if not m or (m.group(1) == "24" and m.group(2) != "00"):
        raise ValueError(f"{text!r} is not a local time HH:MM (00:00..24:00)")
    return int(m.group(1)) * 60 + int(m.group(2))


class TouPeriodConfig(Section):
    """One time-of-use period: local ``start`` (inclusive) to ``end`` (exclusive), HH:MM."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    label: str = ""
    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        _minutes(v)
        return v


class TariffConfig(Section):
    """A time-of-use tariff: periods that cover the local day exactly once."""

    periods: list[TouPeriodConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _covers_day(self) -> TariffConfig:
        count = [0] * 1440
        for p in self.periods:
            a, b = _minutes(p.start) % 1440, _minutes(p.end) % 1440
            span = range(a, b) if a < b else [*range(a, 1440), *range(0, b)]
            for minute in span:
                count[minute] += 1
        holes = [i for i, c in enumerate(count) if c == 0]
        twice = [i for i, c in enumerate(count) if c > 1]
        if holes or twice:
            i = holes[0] if holes else twice[0]
            at = f"{i // 60:02d}:{i % 60:02d}"
            what = f"not covered from {at}" if holes else f"covered twice at {at}"
            raise ValueError(f"periods must cover 00:00-24:00 exactly once; {what}")
        return self


class BillingConfig(Section):
    """``billing``: determinants and holds (analytics/billing.py)."""

    timezone: OptionalTimeZone = None  # default: site.timezone
    estimated_share_limit: float = Field(0.02, ge=0, le=1)
    demand_window: Duration = Field(900.0, gt=0)
