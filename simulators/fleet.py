"""Simulated meter fleet: load shapes, grid physics, energy registers and injected anomalies.

A pure numpy/pandas model of a small distribution network. Each transformer area (台区,
``TA01``, ``TA02`` ...) has a supply meter on its transformer (``T01`` ...) and residential
(``R0001`` ...), commercial (``C0001`` ...) and industrial (``I0001`` ...) customer meters.
Other code serves the fleet over Modbus TCP and MQTT or writes it to files; this module only
computes the values.

Model, per time step (all meters at once, numpy arrays of shape meters × phases):

* Load [kW, primary side] = per-meter scale × class load shape (time of day, weekday) ×
  slow and fast multiplicative noise (Ornstein-Uhlenbeck processes, i.e. AR(1) on the step
  grid) × per-phase share. Time of day is taken from UTC: the simulated site runs on UTC.
* Voltage [V] = area bus voltage (falls slightly with area load, slow noise) × (1 − the
  meter's line drop) × measurement noise, kept within ±3 % of nominal.
* Current [A, secondary] = P · 1000 / (V · PF) / ct_ratio; reported power is exactly
  ``Σ V·I·PF / 1000`` [kW] and reactive power ``Σ V·I·sin(acos PF) / 1000`` [kvar].
* Registers [kWh, secondary] integrate measured power (trapezoid rule per step).
* A transformer supply meter sees the true primary load of its area's customers plus a
  technical loss of 2–5 %, on its own CT secondary side.

Anomalies change what meters measure. ``phase_break`` removes a phase (voltage ≈ 0, no
current, the load on it is lost for the transformer too). ``voltage_loss`` lowers the
*measured* voltage of a phase while the current keeps flowing, so the meter under-registers
and the transformer area shows extra loss, as with tampering of the voltage circuit.
``register_decrease`` drops the import register once. ``consumption_spike`` raises the
customer's true load to ``magnitude`` x its usual (week-average) load, never lowering it.

Everything is deterministic for a seed. Noise is drawn once per grid step (``k · step_s``
after start) and interpolated between grid points, so the values at a given instant do not
depend on how :meth:`Fleet.advance` calls were chunked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
import pandas as pd

from meterwatch.core.registry import REGISTRY_COLUMNS
from meterwatch.core.schema import READING_FIELDS, TS_DTYPE, normalize_readings, with_time_columns

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Phase-to-neutral nominal voltage of every simulated meter [V].
NOMINAL_VOLTAGE_V = 220.0
#: Nominal grid frequency [Hz].
NOMINAL_FREQUENCY_HZ = 50.0
#: Anomaly types the fleet can inject (contracts §3 alert types).
ANOMALY_TYPES: tuple[str, ...] = (
    "phase_break",
    "voltage_loss",
    "register_decrease",
    "consumption_spike",
)
#: Default ``AnomalySpec.magnitude`` per type (phase number for ``phase_break``).
DEFAULT_MAGNITUDE: dict[str, float] = {
    "phase_break": 2.0,
    "voltage_loss": 0.5,
    "register_decrease": 50.0,
    "consumption_spike": 4.0,
}
#: Highest Modbus unit id; a gateway (one Modbus TCP endpoint) serves at most this many.
MAX_UNIT_ID = 247
#: Standard CT ratios for 5 A secondaries as register multipliers (e.g. 200 = 1000/5 A).
STANDARD_CT_RATIOS: tuple[int, ...] = (
    50, 75, 100, 150, 200, 300, 400, 500, 600, 750, 800, 1000, 1200, 1500, 2000, 2500, 3000,
    4000, 5000, 6000, 8000, 10000,
)  # fmt: skip

#: Standard distribution transformer ratings [kVA] (GB/T 6451 / R10 series).
STANDARD_KVA: tuple[float, ...] = (
    30, 50, 63, 80, 100, 125, 160, 200, 250, 315, 400, 500, 630, 800, 1000, 1250, 1600, 2000,
    2500, 3150, 4000, 5000, 6300, 8000, 10000,
)  # fmt: skip
# Band of the simulated voltages around nominal [fraction].
_VOLTAGE_BAND = 0.03
# Technical loss of a transformer area [fraction of the customers' energy].
_LOSS_MIN, _LOSS_MAX = 0.02, 0.05
# Target secondary current of a transformer CT at the area's estimated peak [A].
_TRANSFORMER_PEAK_SECONDARY_A = 4.5
_CLASS_CODES = {"residential": 0, "commercial": 1, "industrial": 2}
_TYPE_CODES = {name: i for i, name in enumerate(ANOMALY_TYPES)}


@dataclass(frozen=True)
class _ClassSpec:
    """Static properties of one meter class; ``shift_sd_h`` spreads load timing [h]."""

    prefix: str
    phases: int
    rated_current_a: float
    max_current_a: float
    model: str
    tariff: str
    calibration_interval_days: int
    pf_range: tuple[float, float]
    shift_sd_h: float
    register_range_kwh: tuple[float, float]


_CLASSES: dict[str, _ClassSpec] = {
    "residential": _ClassSpec(
        prefix="R",
        phases=1,
        rated_current_a=5.0,
        max_current_a=60.0,
        model="eastron-sdm120",
        tariff="residential-tou",
        calibration_interval_days=2920,
        pf_range=(0.95, 0.985),
        shift_sd_h=0.4,
        register_range_kwh=(1000.0, 20000.0),
    ),
    "commercial": _ClassSpec(
        prefix="C",
        phases=3,
        rated_current_a=10.0,
        max_current_a=100.0,
        model="eastron-sdm630",
        tariff="commercial-tou",
        calibration_interval_days=2190,
        pf_range=(0.91, 0.97),
        shift_sd_h=0.25,
        register_range_kwh=(5000.0, 50000.0),
    ),
    "industrial": _ClassSpec(
        prefix="I",
        phases=3,
        rated_current_a=1.5,
        max_current_a=6.0,
        model="eastron-sdm630",
        tariff="industrial-tou",
        calibration_interval_days=1825,
        pf_range=(0.925, 0.96),
        shift_sd_h=0.05,
        register_range_kwh=(1000.0, 30000.0),
    ),
}
_TRANSFORMER_SPEC = _ClassSpec(
    prefix="T",
    phases=3,
    rated_current_a=1.5,
    max_current_a=6.0,
    model="eastron-sdm630",
    tariff="",
    calibration_interval_days=1825,
    pf_range=(0.9, 0.99),  # unused: follows from the area's load
    shift_sd_h=0.0,
    register_range_kwh=(1000.0, 50000.0),
)


@dataclass(frozen=True)
class AnomalySpec:
    """One anomaly to inject into the fleet.

    Parameters
    ----------
    type
        ``"phase_break"``, ``"voltage_loss"``, ``"register_decrease"`` or
        ``"consumption_spike"``.
    meter_id
        Customer meter to affect; ``None`` picks one deterministically from the seed (a
        3-phase customer meter for ``phase_break``/``voltage_loss``, any customer otherwise).
    at_s
        When it begins [s of simulated time after the fleet start].
    duration_s
        How long it lasts [s]; ignored for ``register_decrease`` (instantaneous).
    magnitude
        ``consumption_spike``: multiple of the meter's usual (week-average) load [–]
        (default 4.0); ``register_decrease``: energy
        subtracted from the import register [kWh] (default 50.0); ``voltage_loss``: measured
        voltage as a fraction of nominal [–] (default 0.5); ``phase_break``: the phase number
        to break, 1..3 (default 2).
    """

    type: str
    meter_id: str | None
    at_s: float
    duration_s: float = 3600.0
    magnitude: float | None = None

    def __post_init__(self) -> None:
        if self.type not in ANOMALY_TYPES:
            raise ValueError(
                f"anomaly type {self.type!r} unknown, expected one of {', '.join(ANOMALY_TYPES)}"
            )
        if not (math.isfinite(self.at_s) and self.at_s >= 0):
            raise ValueError(f"anomaly {self.type}: at_s={self.at_s!r}, expected a number >= 0")
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ValueError(
                f"anomaly {self.type}: duration_s={self.duration_s!r}, expected a number > 0"
            )
        m = self.resolved_magnitude
        if self.type == "phase_break" and m not in (1.0, 2.0, 3.0):
            raise ValueError(f"anomaly phase_break: magnitude={m!r}, expected phase 1, 2 or 3")
        if self.type == "voltage_loss" and not 0.0 <= m < 1.0:
            raise ValueError(
                f"anomaly voltage_loss: magnitude={m!r}, expected a voltage fraction in [0, 1)"
            )
        if self.type in ("register_decrease", "consumption_spike") and not (
            math.isfinite(m) and m > 0
        ):
            raise ValueError(f"anomaly {self.type}: magnitude={m!r}, expected a number > 0")

    @property
    def resolved_magnitude(self) -> float:
        """``magnitude``, or the type's default when it is ``None``."""
        return float(DEFAULT_MAGNITUDE[self.type] if self.magnitude is None else self.magnitude)


class _OUNoise:
    """Named Ornstein-Uhlenbeck channels sampled on the step grid, linear in between.

    A channel with time constant ``tau`` [s] and standard deviation ``sigma`` is an AR(1)
    process on the grid ``k · step_s`` (coefficient ``exp(-step_s / tau)``), started from its
    stationary distribution. Grid values are drawn in order from one generator, so the value
    at any instant is fixed by the seed however the instants are visited.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        step_s: float,
        channels: dict[str, tuple[tuple[int, ...], float, float]],
    ) -> None:
        self._rng = rng
        self._step = step_s
        self._layout: list[tuple[str, slice, tuple[int, ...]]] = []
        taus: list[FloatArray] = []
        sigmas: list[FloatArray] = []
        pos = 0
        for name, (shape, tau, sigma) in channels.items():
            n = int(np.prod(shape))
            self._layout.append((name, slice(pos, pos + n), shape))
            taus.append(np.full(n, tau))
            sigmas.append(np.full(n, sigma))
            pos += n
        tau_all = np.concatenate(taus) if taus else np.zeros(0)
        sigma_all = np.concatenate(sigmas) if sigmas else np.zeros(0)
        self._rho = np.exp(-step_s / tau_all)
        self._innov = sigma_all * np.sqrt(1.0 - self._rho**2)
        self._x0 = sigma_all * rng.standard_normal(pos)
        self._x1 = self._next(self._x0)
        self._k = 0  # grid index of _x0

    def _next(self, x: FloatArray) -> FloatArray:
        out: FloatArray = self._rho * x + self._innov * self._rng.standard_normal(x.size)
        return out

    def at(self, s: float) -> dict[str, FloatArray]:
        """Channel values at ``s`` [s after start]; ``s`` must not go back past a grid point."""
        while s > (self._k + 1) * self._step:
            self._x0 = self._x1
            self._x1 = self._next(self._x1)
            self._k += 1
        w = min(max(s / self._step - self._k, 0.0), 1.0)
        x = self._x0 + w * (self._x1 - self._x0)
        return {name: x[sl].reshape(shape) for name, sl, shape in self._layout}


@dataclass
class _State:
    """Instantaneous measured values of all meters (transformers first) at one instant."""

    voltage: FloatArray  # (M, 3) [V], NaN for phases a meter does not have
    current: FloatArray  # (M, 3) [A, secondary], NaN for phases a meter does not have
    power: FloatArray  # (M,) [kW, secondary]
    reactive: FloatArray  # (M,) [kvar, secondary]
    pf: FloatArray  # (M,) [–]
    frequency: float  # [Hz]


def _as_utc(t: datetime) -> datetime:
    """``t`` as an aware UTC datetime (naive values are taken to be UTC already)."""
    if isinstance(t, pd.Timestamp):
        t = t.to_pydatetime()
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _bump(h: FloatArray, mu: float | FloatArray, width: float) -> FloatArray:
    """Gaussian bump on the 24 h circle: ``h``, ``mu`` [h of day], ``width`` [h]."""
    d = (h - mu + 12.0) % 24.0 - 12.0
    out: FloatArray = np.exp(-0.5 * (d / width) ** 2)
    return out


def _window(h: FloatArray, on: float, off: float, edge: float) -> FloatArray:
    """Smooth 0..1 window from ``on`` to ``off`` [h of day], ``edge`` [h] the ramp width."""
    out: FloatArray = 1.0 / (1.0 + np.exp(-(h - on) / edge)) / (1.0 + np.exp(-(off - h) / edge))
    return out


def residential_shape(h: FloatArray, weekday: IntArray) -> FloatArray:
    """Residential load [kW per unit scale] at local hour ``h`` and ``weekday`` (Mon = 0).

    Low night base, a morning peak (later on weekends), a daytime shoulder and a larger
    evening peak; weekends are about 15 % higher.
    """
    weekend = weekday >= 5
    morning = np.where(weekend, 8.75, 7.25)
    p = (
        0.18
        + 0.65 * _bump(h, morning, 1.0)
        + np.where(weekend, 0.45, 0.22) * _bump(h, 13.0, 2.5)
        + 1.3 * _bump(h, 19.75, 1.7)
    )
    out: FloatArray = p * np.where(weekend, 1.15, 1.0)
    return out


def commercial_shape(h: FloatArray, weekday: IntArray) -> FloatArray:
    """Commercial load [fraction of the business-hours plateau] at local hour ``h``.

    Business hours 07:30–19:00 at full plateau on weekdays, 35 % on Saturday, 15 % on Sunday,
    on top of a 15 % base (refrigeration, IT, lighting).
    """
    level = np.select([weekday < 5, weekday == 5], [1.0, 0.35], 0.15)
    out: FloatArray = 0.15 + 0.85 * level * _window(h, 7.5, 19.0, 0.35)
    return out


def industrial_shape(h: FloatArray, weekday: IntArray) -> FloatArray:
    """Industrial load [fraction of the shift peak] at local hour ``h``.

    A 45 % base load around the clock; weekdays run an early shift 06–14 (100 %), a late
    shift 14–22 (95 %) and a night shift (60 %); Saturday only a reduced early shift.
    """
    early = _window(h, 6.0, 14.0, 0.15)
    late = _window(h, 14.0, 22.0, 0.15)
    night = np.clip(1.0 - early - late, 0.0, 1.0)
    weekday_load = 0.45 + 0.55 * early + 0.5 * late + 0.15 * night
    saturday_load = 0.45 + 0.35 * early
    out: FloatArray = np.select([weekday < 5, weekday == 5], [weekday_load, saturday_load], 0.45)
    return out


#: Resolution of the tabulated weekly load shapes [s].
SHAPE_RESOLUTION_S = 60.0
_WEEK_S = 7 * 86400.0
# Seconds from the Unix epoch (a Thursday) back to a Monday 00:00 UTC.
_EPOCH_WEEKDAY_S = 3 * 86400.0


def _weekly_shape_table() -> FloatArray:
    """Class load shapes over one week from Monday 00:00, ``(3, n + 1)`` at 1-minute steps.

    Row order residential, commercial, industrial; the last column repeats the first so that
    linear interpolation wraps around the week.
    """
    t = np.arange(0.0, _WEEK_S + SHAPE_RESOLUTION_S, SHAPE_RESOLUTION_S)
    h = (t / 3600.0) % 24.0
    wd = (t // 86400.0).astype(np.int64) % 7
    return np.vstack([residential_shape(h, wd), commercial_shape(h, wd), industrial_shape(h, wd)])


_SHAPE_TABLE = _weekly_shape_table()
_SHAPE_FLAT = _SHAPE_TABLE.ravel()
#: Week-average of each class shape: a meter's usual load is its scale times this.
_SHAPE_MEAN = _SHAPE_TABLE[:, :-1].mean(axis=1)


class Fleet:
    """A deterministic simulated fleet of transformer areas and their customer meters.

    Parameters
    ----------
    start
        Simulated time of the initial state (naive = UTC).
    residential, commercial, industrial
        Number of customer meters per class.
    transformers
        Number of transformer areas, each with one supply meter.
    seed
        Seed of every random choice (registry, anomaly meters, noise).
    mqtt_share
        Fraction [0..1] of the customer meters that report over MQTT instead of Modbus.
    anomalies
        Anomalies to inject; see :class:`AnomalySpec`.
    step_s
        Largest integration step [s].

    Attributes
    ----------
    registry
        Meter registry (contracts §2 columns, passes ``check_registry``) plus ``model``,
        ``transport`` (``modbus``/``mqtt``), ``unit_id`` (Modbus unit id 1..247, 0 for MQTT)
        and ``gateway`` (0-based Modbus gateway index; always 0 while the fleet has at most
        247 Modbus meters, so ``unit_id`` is then unique over the whole fleet).
    anomalies
        The configured anomalies with ``meter_id`` and ``magnitude`` resolved.
    start, step_s, seed
        As given (``start`` as aware UTC).
    """

    def __init__(
        self,
        *,
        start: datetime,
        residential: int = 30,
        commercial: int = 10,
        industrial: int = 6,
        transformers: int = 2,
        seed: int = 42,
        mqtt_share: float = 0.2,
        anomalies: Sequence[AnomalySpec] = (),
        step_s: float = 60.0,
    ) -> None:
        counts = {"residential": residential, "commercial": commercial, "industrial": industrial}
        for name, n in {**counts, "transformers": transformers}.items():
            if int(n) != n or n < 0:
                raise ValueError(f"{name}={n!r}, expected a whole number >= 0")
        counts = {name: int(n) for name, n in counts.items()}
        if transformers < 1:
            raise ValueError(f"transformers={transformers!r}, expected at least 1")
        if sum(counts.values()) < 1:
            raise ValueError("the fleet needs at least one customer meter")
        if not 0.0 <= mqtt_share <= 1.0:
            raise ValueError(f"mqtt_share={mqtt_share!r}, expected a fraction in [0, 1]")
        if not (math.isfinite(step_s) and step_s > 0):
            raise ValueError(f"step_s={step_s!r}, expected a number of seconds > 0")

        self.start: datetime = _as_utc(start)
        self.seed = int(seed)
        self.step_s = float(step_s)
        self._n_t = int(transformers)
        self._epoch0 = self.start.timestamp()
        rng = np.random.default_rng([self.seed, 0])
        self._build_customers(counts, rng)
        self._build_transformers(rng)
        self.registry: pd.DataFrame = self._build_registry(rng, mqtt_share)
        self._e_imp: FloatArray = self._initial_registers(rng)
        self._e_exp: FloatArray = np.zeros(self._n_t + self._n_c)
        self.anomalies: tuple[AnomalySpec, ...] = self._resolve_anomalies(
            anomalies, np.random.default_rng([self.seed, 1])
        )
        mc, na = self._n_c, self._n_t
        self._noise = _OUNoise(
            np.random.default_rng([self.seed, 2]),
            self.step_s,
            {
                # name: (shape, time constant [s], standard deviation [–])
                "load_slow": ((mc,), 3 * 3600.0, 0.08),
                "load_fast": ((mc, 3), 600.0, 0.04),
                "pf": ((mc,), 1800.0, 0.005),
                "bus": ((na, 3), 1800.0, 0.004),
                "v_customer": ((mc, 3), 120.0, 0.001),
                "v_transformer": ((na, 3), 120.0, 0.001),
                "frequency": ((1,), 180.0, 0.015),
            },
        )
        self._t = 0.0  # seconds after start of the current state
        self._now = self.start
        self._state = self._evaluate(0.0)
        self._apply_register_decreases(0.0)

    # ------------------------------------------------------------------ construction

    def _build_customers(self, counts: dict[str, int], rng: np.random.Generator) -> None:
        """Customer ids, areas, phases, load scales and electrical constants."""
        na = self._n_t
        ids: list[str] = []
        cls_parts, area_parts, rank_parts = [], [], []
        for name, n in counts.items():
            ids += [f"{_CLASSES[name].prefix}{i + 1:04d}" for i in range(n)]
            area = (np.arange(n) * na) // max(n, 1)  # contiguous blocks: R0001.. in TA01
            cls_parts.append(np.full(n, _CLASS_CODES[name]))
            area_parts.append(area)
            rank_parts.append(np.arange(n) - np.searchsorted(area, area))
        self._ids_c = ids
        self._n_c = mc = len(ids)
        cls = np.concatenate(cls_parts)
        self._cls = cls
        self._shape_row = cls.astype(np.int64) * _SHAPE_TABLE.shape[1]
        self._area: IntArray = np.concatenate(area_parts).astype(np.int64)
        rank = np.concatenate(rank_parts)
        nr, nc = counts["residential"], counts["commercial"]
        self._slices = (slice(0, nr), slice(nr, nr + nc), slice(nr + nc, mc))
        single = cls == 0
        self._phases = np.where(single, 1, 3)
        # Single-phase customers spread over the bus phases round-robin within their area.
        res_phase = (rank + self._area) % 3
        self._busph: IntArray = np.where(single[:, None], res_phase[:, None], np.arange(3))
        self._phase_mask: BoolArray = ~single[:, None] | (np.arange(3) == 0)

        specs = [_CLASSES[n] for n in counts for _ in range(counts[n])]
        self._shift_s = np.array([s.shift_sd_h for s in specs]) * rng.standard_normal(mc) * 3600
        lo = np.array([s.pf_range[0] for s in specs])
        hi = np.array([s.pf_range[1] for s in specs])
        self._pf0 = rng.uniform(lo, hi)
        self._drop = rng.uniform(0.0, 0.01, mc)
        self._ct = np.ones(mc)
        scale = np.empty(mc)
        r, c, i = self._slices
        scale[r] = rng.lognormal(0.0, 0.35, nr)  # [kW] → ~1.5 kW evening peak
        scale[c] = np.clip(15.0 * rng.lognormal(0.0, 0.4, nc), 5.0, 45.0)  # plateau [kW]
        ni = mc - nr - nc
        self._ct[i] = rng.choice([100.0, 200.0], ni)
        # Sized so that shift-start transients and phase imbalance stay inside Imax (6 A): a
        # clean meter must not look like a runaway register (> 1.2 x Un x Imax).
        peak_secondary_a = rng.uniform(2.0, 3.0, ni)
        scale[i] = self._ct[i] * 3 * NOMINAL_VOLTAGE_V * peak_secondary_a * 0.93 / 1000.0
        self._scale = scale
        # The largest value of each class shape, for area peak estimates.
        self._peak_kw = scale * np.select([cls == 0], [1.8], 1.0)
        imbalance = 1.0 + 0.06 * rng.standard_normal((mc, 3))
        share = np.where(self._phase_mask, imbalance, 0.0)
        self._share = share / share.sum(axis=1, keepdims=True)
        self._bus_flat = (self._area[:, None] * 3 + self._busph).ravel()
        self._share_flat_mask = self._phase_mask.ravel()

    def _build_transformers(self, rng: np.random.Generator) -> None:
        """Area peak estimates, loss levels and transformer CT ratios."""
        na = self._n_t
        self._area_peak_kw = np.maximum(
            np.bincount(self._area, weights=self._peak_kw, minlength=na), 1.0
        )
        self._loss_base = rng.uniform(_LOSS_MIN, 0.035, na)
        # Peak primary phase current with loss and phase imbalance margin [A].
        i_peak = self._area_peak_kw * 1.05 * 1.2 / 3 * 1000.0 / (NOMINAL_VOLTAGE_V * 0.93)
        wanted = i_peak / _TRANSFORMER_PEAK_SECONDARY_A
        ratios = np.array(STANDARD_CT_RATIOS, dtype=float)
        idx = np.minimum(np.searchsorted(ratios, wanted), len(ratios) - 1)
        self._ct_t: FloatArray = ratios[idx]
        # Rating: the smallest standard size (GB/T 6451 series) loaded to <= 70 % at the
        # estimated peak (peak kW x 1.05 loss / 0.9 PF).
        need = self._area_peak_kw * 1.05 / 0.9 / 0.7
        sizes = np.array(STANDARD_KVA)
        self._rated_kva: FloatArray = sizes[
            np.minimum(np.searchsorted(sizes, need), sizes.size - 1)
        ]

    def _build_registry(self, rng: np.random.Generator, mqtt_share: float) -> pd.DataFrame:
        """The registry frame: transformer meters first, then customers by class."""
        na, mc = self._n_t, self._n_c
        names = {v: k for k, v in _CLASS_CODES.items()}
        specs = [_TRANSFORMER_SPEC] * na + [_CLASSES[names[int(c)]] for c in self._cls]
        t_ids = [f"T{a + 1:02d}" for a in range(na)]
        area_ids = [f"TA{a + 1:02d}" for a in range(na)]
        self._ids: list[str] = t_ids + self._ids_c
        self._area_ids = area_ids
        interval = np.array([s.calibration_interval_days for s in specs])
        # Calibrated between 30 days and half a year before falling due: nothing due yet.
        age_days = np.floor(rng.uniform(30.0, interval - 180.0)).astype(int)
        start_day = pd.Timestamp(self.start.date())
        last_cal = [(start_day - pd.Timedelta(days=int(d))).date().isoformat() for d in age_days]
        n_mqtt = int(round(mqtt_share * mc))
        mqtt = np.zeros(na + mc, dtype=bool)
        mqtt[na + rng.permutation(mc)[:n_mqtt]] = True
        modbus_pos = np.cumsum(~mqtt) - 1
        unit_id = np.where(mqtt, 0, modbus_pos % MAX_UNIT_ID + 1)
        gateway = np.where(mqtt, 0, modbus_pos // MAX_UNIT_ID)
        reg = pd.DataFrame(
            {
                "meter_id": self._ids,
                "role": ["transformer"] * na + ["customer"] * mc,
                "transformer_id": area_ids + [area_ids[a] for a in self._area],
                "customer_class": [""] * na + [names[int(c)] for c in self._cls],
                "phases": np.concatenate([np.full(na, 3), self._phases]).astype(int),
                "nominal_voltage_v": NOMINAL_VOLTAGE_V,
                "rated_current_a": [s.rated_current_a for s in specs],
                "max_current_a": [s.max_current_a for s in specs],
                "ct_ratio": np.concatenate([self._ct_t, self._ct]),
                "tariff": [s.tariff for s in specs],
                "last_calibration": last_cal,
                "calibration_interval_days": interval.astype(int),
                "model": [s.model for s in specs],
                "transport": np.where(mqtt, "mqtt", "modbus"),
                "unit_id": unit_id.astype(int),
                "gateway": gateway.astype(int),
                # Transformer rating (optional registry column; NaN for customers).
                "rated_kva": np.concatenate([self._rated_kva, np.full(mc, np.nan)]),
            }
        )
        assert tuple(reg.columns[: len(REGISTRY_COLUMNS)]) == REGISTRY_COLUMNS
        return reg

    def _initial_registers(self, rng: np.random.Generator) -> FloatArray:
        """Random realistic import registers [kWh, secondary], transformers first."""
        names = {v: k for k, v in _CLASS_CODES.items()}
        specs = [_TRANSFORMER_SPEC] * self._n_t + [_CLASSES[names[int(c)]] for c in self._cls]
        lo = np.array([s.register_range_kwh[0] for s in specs])
        hi = np.array([s.register_range_kwh[1] for s in specs])
        out: FloatArray = np.round(rng.uniform(lo, hi), 2)
        return out

    def _resolve_anomalies(
        self, anomalies: Sequence[AnomalySpec], rng: np.random.Generator
    ) -> tuple[AnomalySpec, ...]:
        """Fill in meters and magnitudes; build the arrays the step loop uses."""
        index = {m: i for i, m in enumerate(self._ids_c)}
        three_phase = np.flatnonzero(self._phases == 3)
        used: set[int] = set()
        resolved: list[AnomalySpec] = []
        cust, phase, code, mag, t0, t1 = [], [], [], [], [], []
        for spec in anomalies:
            needs_3ph = spec.type in ("phase_break", "voltage_loss")
            if spec.meter_id is None:
                pool = three_phase if needs_3ph else np.arange(self._n_c)
                if pool.size == 0:
                    raise ValueError(f"anomaly {spec.type}: the fleet has no 3-phase customer")
                fresh = np.array([p for p in pool if p not in used], dtype=int)
                c = int(rng.choice(fresh if fresh.size else pool))
            else:
                if spec.meter_id not in index:
                    raise ValueError(
                        f"anomaly {spec.type}: meter_id={spec.meter_id!r} is not a customer "
                        f"meter of this fleet"
                    )
                c = index[spec.meter_id]
                if needs_3ph and self._phases[c] != 3:
                    raise ValueError(
                        f"anomaly {spec.type}: meter_id={spec.meter_id!r} is single-phase, "
                        f"expected a 3-phase customer meter"
                    )
            used.add(c)
            m = spec.resolved_magnitude
            if spec.type == "phase_break":
                ph = int(m) - 1
            elif spec.type == "voltage_loss":
                ph = int(rng.integers(0, 3))
            else:
                ph = 0
            end = spec.at_s if spec.type == "register_decrease" else spec.at_s + spec.duration_s
            resolved.append(replace(spec, meter_id=self._ids_c[c], magnitude=m))
            cust.append(c)
            phase.append(ph)
            code.append(_TYPE_CODES[spec.type])
            mag.append(m)
            t0.append(spec.at_s)
            t1.append(end)
        self._an_cust = np.array(cust, dtype=np.int64)
        self._an_phase = np.array(phase, dtype=np.int64)
        self._an_code = np.array(code, dtype=np.int64)
        self._an_mag = np.array(mag, dtype=float)
        self._an_t0 = np.array(t0, dtype=float)
        self._an_t1 = np.array(t1, dtype=float)
        self._rd_pending = self._an_code == _TYPE_CODES["register_decrease"]
        return tuple(resolved)

    # ------------------------------------------------------------------ physics

    def shape_at(self, s: float) -> FloatArray:
        """Each customer's class load shape at its (shifted) position in the week at ``s``
        [s after start], as a fraction of its scale; :data:`_SHAPE_MEAN` is its week average."""
        pos = ((self._epoch0 + s + _EPOCH_WEEKDAY_S + self._shift_s) % _WEEK_S) / SHAPE_RESOLUTION_S
        j = np.minimum(pos.astype(np.int64), _SHAPE_TABLE.shape[1] - 2)
        w = pos - j
        flat = self._shape_row + j
        out: FloatArray = _SHAPE_FLAT[flat] * (1.0 - w) + _SHAPE_FLAT[flat + 1] * w
        return out

    def usual_shape(self) -> FloatArray:
        """Each customer's week-average shape (its usual load is its scale times this)."""
        out: FloatArray = _SHAPE_MEAN[self._cls]
        return out

    def _evaluate(self, s: float) -> _State:
        """Measured values of every meter at ``s`` [s after start]."""
        mc, na = self._n_c, self._n_t
        un = NOMINAL_VOLTAGE_V
        x = self._noise.at(s)

        load = self._scale * self.shape_at(s) * np.exp(x["load_slow"])  # [kW, primary]

        broken: BoolArray | None = None
        lost_fraction: FloatArray | None = None
        act = (self._an_t0 <= s) & (s < self._an_t1)
        if act.any():
            spike = act & (self._an_code == _TYPE_CODES["consumption_spike"])
            cust = self._an_cust[spike]
            usual = self._scale[cust] * self.usual_shape()[cust] * np.exp(x["load_slow"][cust])
            np.maximum.at(load, cust, self._an_mag[spike] * usual)
            pb = act & (self._an_code == _TYPE_CODES["phase_break"])
            vl = act & (self._an_code == _TYPE_CODES["voltage_loss"])
            if pb.any():
                broken = np.zeros((mc, 3), dtype=bool)
                broken[self._an_cust[pb], self._an_phase[pb]] = True
            if vl.any():
                lost_fraction = np.full((mc, 3), np.nan)
                lost_fraction[self._an_cust[vl], self._an_phase[vl]] = self._an_mag[vl]

        p_true = load[:, None] * self._share * np.exp(x["load_fast"])  # [kW, primary]
        if broken is not None:
            p_true[broken] = 0.0
        # Kept >= 0.92: clear of the 0.90 industrial tariff standard that LowPowerFactor
        # judges, even after float32 transport (a clean meter must not sit on a threshold).
        pf = np.minimum(np.maximum(self._pf0 + x["pf"], 0.92), 0.99)
        tan_phi = np.sqrt(1.0 - pf**2) / pf

        # Area bus voltage: a little higher at light load, lower at peak.
        p_area_phase = np.bincount(
            self._bus_flat, weights=p_true.ravel(), minlength=na * 3
        ).reshape(na, 3)
        frac = p_area_phase.sum(axis=1) / self._area_peak_kw
        bus = un * (1.0 + 0.01 - 0.015 * frac[:, None] + x["bus"])
        v_lo, v_hi = un * (1 - _VOLTAGE_BAND), un * (1 + _VOLTAGE_BAND)

        # Customers: true voltage and current, then what the meter measures.
        v_true = bus[self._area[:, None], self._busph] * (1.0 - self._drop[:, None])
        v_true = np.minimum(np.maximum(v_true * (1.0 + x["v_customer"]), v_lo), v_hi)
        i_c = p_true / self._ct[:, None] * 1000.0 / (v_true * pf[:, None])  # [A, secondary]
        v_meas = v_true
        if lost_fraction is not None:
            v_lost = lost_fraction * un * (1.0 + x["v_customer"])
            v_meas = np.where(np.isnan(lost_fraction), v_meas, v_lost)
        if broken is not None:
            v_residual = un * np.clip(0.01 + 5.0 * x["v_customer"], 0.0, 0.04)  # < 5 % Un
            v_meas = np.where(broken, v_residual, v_meas)
        p_phase = v_meas * i_c * pf[:, None] / 1000.0  # [kW, secondary]
        p_c = p_phase.sum(axis=1)
        q_c = p_c * tan_phi
        v_meas = np.where(self._phase_mask, v_meas, np.nan)
        i_c = np.where(self._phase_mask, i_c, np.nan)

        # Transformer supply meters: the true area load plus technical loss.
        q_area_phase = np.bincount(
            self._bus_flat, weights=(p_true * tan_phi[:, None]).ravel(), minlength=na * 3
        ).reshape(na, 3)
        loss = np.clip(self._loss_base + 0.012 * frac**2, _LOSS_MIN, _LOSS_MAX)
        pt = p_area_phase * (1.0 + loss[:, None])
        p_t_total = pt.sum(axis=1)
        q_t_total = q_area_phase.sum(axis=1) * (1.0 + loss)
        s_t = np.hypot(p_t_total, q_t_total)
        # One PF for all phases keeps P = Σ V·I·PF exact with the reported total PF.
        pf_t = np.divide(p_t_total, s_t, out=np.ones(na), where=s_t > 0)
        v_t = np.minimum(np.maximum(bus * (1.0 + x["v_transformer"]), v_lo), v_hi)
        i_t = pt * 1000.0 / (v_t * pf_t[:, None]) / self._ct_t[:, None]

        freq = NOMINAL_FREQUENCY_HZ + float(np.clip(x["frequency"][0], -0.08, 0.08))
        return _State(
            voltage=np.concatenate([v_t, v_meas]),
            current=np.concatenate([i_t, i_c]),
            power=np.concatenate([p_t_total / self._ct_t, p_c]),
            reactive=np.concatenate([q_t_total / self._ct_t, q_c]),
            pf=np.concatenate([pf_t, pf]),
            frequency=freq,
        )

    def _apply_register_decreases(self, s: float) -> None:
        """Subtract every register_decrease that is due by ``s`` and not yet applied."""
        due = self._rd_pending & (self._an_t0 <= s)
        if due.any():
            idx = self._n_t + self._an_cust[due]
            np.subtract.at(self._e_imp, idx, self._an_mag[due])
            np.maximum(self._e_imp, 0.0, out=self._e_imp)
            self._rd_pending = self._rd_pending & ~due

    # ------------------------------------------------------------------ public API

    @property
    def now(self) -> datetime:
        """Simulated instant of the current state (aware UTC)."""
        return self._now

    def advance(self, t: datetime) -> None:
        """Integrate the state forward to ``t`` (naive = UTC); ``t <= now`` does nothing.

        Steps end on the grid ``start + k·step_s`` and at ``t``, so no step is longer than
        ``step_s`` [s]. Registers [kWh] integrate measured power with the trapezoid rule.
        """
        t = _as_utc(t)
        if t <= self._now:
            return
        s_end = (t - self.start).total_seconds()
        k = math.floor(self._t / self.step_s) + 1
        prev = self._state
        while True:
            s = min(k * self.step_s, s_end)
            k += 1
            if s <= self._t:
                continue
            state = self._evaluate(s)
            dt_h = (s - self._t) / 3600.0
            self._e_imp += (np.maximum(prev.power, 0) + np.maximum(state.power, 0)) * dt_h / 2
            self._e_exp += (np.maximum(-prev.power, 0) + np.maximum(-state.power, 0)) * dt_h / 2
            self._apply_register_decreases(s)
            prev = state
            self._t = s
            if s >= s_end:
                break
        self._state = prev
        self._now = t

    def _snapshot_data(self) -> dict[str, FloatArray]:
        """The current reading of every meter as canonical-field arrays."""
        st = self._state
        data: dict[str, FloatArray] = {
            "energy_import_kwh": self._e_imp.copy(),
            "energy_export_kwh": self._e_exp.copy(),
            "power_kw": st.power,
            "reactive_power_kvar": st.reactive,
            "power_factor": st.pf,
            "frequency_hz": np.full(len(self._ids), st.frequency),
        }
        for p in range(3):
            data[f"voltage_l{p + 1}_v"] = st.voltage[:, p]
            data[f"current_l{p + 1}_a"] = st.current[:, p]
        return data

    def snapshot(self) -> pd.DataFrame:
        """One canonical reading per meter (registry order) at :attr:`now`, ``ts = now``."""
        data = self._snapshot_data()
        frame = pd.DataFrame({"meter_id": self._ids, "ts": pd.Timestamp(self._now), **data})
        return normalize_readings(frame)

    def labels(self) -> pd.DataFrame:
        """Ground truth of the configured anomalies, in configuration order.

        Columns ``type``, ``meter_id``, ``transformer_id``, ``starts_at``, ``ends_at`` (UTC);
        ``ends_at`` equals ``starts_at`` for the instantaneous ``register_decrease``.
        """
        area_of = dict(zip(self.registry["meter_id"], self.registry["transformer_id"], strict=True))
        starts = [self.start + timedelta(seconds=float(t)) for t in self._an_t0]
        ends = [self.start + timedelta(seconds=float(t)) for t in self._an_t1]
        return pd.DataFrame(
            {
                "type": pd.Series([a.type for a in self.anomalies], dtype=object),
                "meter_id": pd.Series([a.meter_id for a in self.anomalies], dtype=object),
                "transformer_id": pd.Series(
                    [area_of[a.meter_id] for a in self.anomalies], dtype=object
                ),
                "starts_at": pd.Series(pd.to_datetime(starts, utc=True), dtype=TS_DTYPE),
                "ends_at": pd.Series(pd.to_datetime(ends, utc=True), dtype=TS_DTYPE),
            }
        )


def generate(
    fleet: Fleet, end: datetime, interval_s: float = 900.0, *, include_start: bool = True
) -> pd.DataFrame:
    """Advance ``fleet`` to ``end`` and return a snapshot every ``interval_s`` [s].

    Snapshots are taken at ``start + k·interval_s`` for every such instant from
    ``fleet.now`` to ``end`` (``fleet.now`` itself only when it is on the interval grid and
    ``include_start`` is true). Rows are ordered by time, then registry order. The fleet is
    left at ``end``.
    """
    if not (math.isfinite(interval_s) and interval_s > 0):
        raise ValueError(f"interval_s={interval_s!r}, expected a number of seconds > 0")
    end = _as_utc(end)
    s_now = (fleet.now - fleet.start).total_seconds()
    k = math.ceil(s_now / interval_s - 1e-9)
    if not include_start and abs(k * interval_s - s_now) < 1e-6:
        k += 1
    times: list[pd.Timestamp] = []
    parts: list[dict[str, FloatArray]] = []
    while True:
        ts = fleet.start + timedelta(seconds=k * interval_s)
        if ts > end:
            break
        fleet.advance(ts)
        times.append(pd.Timestamp(ts))
        parts.append(fleet._snapshot_data())
        k += 1
    fleet.advance(end)
    n = len(fleet.registry)
    frame = pd.DataFrame(
        {
            "meter_id": np.tile(np.asarray(fleet.registry["meter_id"], dtype=object), len(parts)),
            "ts": pd.DatetimeIndex(times, tz=UTC).repeat(n) if times else pd.DatetimeIndex([]),
            **{
                f: np.concatenate([p[f] for p in parts]) if parts else np.zeros(0)
                for f in READING_FIELDS
            },
        }
    )
    return normalize_readings(frame)


# ------------------------------------------------------------------ post-hoc injections

#: Energy-theft attacks of Jokar, Arianpoo & Leung (2016), "Electricity theft detection in
#: AMI using customers' consumption patterns", IEEE Trans. Smart Grid 7(1), applied per day.
THEFT_ATTACKS: tuple[str, ...] = ("h1", "h2", "h3", "h4", "h5", "h6")
#: Meter faults and events :func:`inject_faults` can write into generated readings, with the
#: alert type each must raise.
FAULT_TYPES: tuple[str, ...] = (
    "current_loss",
    "overvoltage",
    "undervoltage",
    "voltage_unbalance",
    "current_unbalance",
    "reverse_power",
    "low_power_factor",
    "frequency_deviation",
    "outage",
    "transformer_overload",
    "calibration_due",
    "consumption_drop",
    "zero_consumption",
)
#: Billing-rule faults (issue #5 item 7) :func:`inject` can write into generated readings;
#: the label type is the injection type. See :func:`_apply_billing` for what each changes.
BILLING_FAULT_TYPES: tuple[str, ...] = (
    "meter_stuck",
    "meter_runaway",
    "energy_power_mismatch",
    "multiplier_mismatch",
    "clock_error",
    "estimation_excess",
)


#: Data-quality faults (issue 15 item 4) :func:`inject` can write into readings, with the label
#: type of each. ``off_grid_reading`` and ``non_numeric_value`` are not catalogue types (yet):
#: their labels name what the data shows. See :func:`inject` for what each changes.
DATA_QUALITY_TYPES: dict[str, str] = {
    "missing_data": "missing_data",
    "meter_offline": "meter_offline",
    "duplicate_exact": "duplicate_reading",
    "duplicate_conflict": "duplicate_reading",
    "off_grid": "off_grid_reading",
    "non_numeric": "non_numeric_value",
}
#: Fleet anomalies :func:`inject` can also plant into readings it did not simulate (real data);
#: the label type is the injection type. ``magnitude`` as in :class:`AnomalySpec`.
PLANTED_TYPES: tuple[str, ...] = ("register_decrease", "voltage_loss", "consumption_spike")
#: How far ``off_grid`` moves a meter's readings off the interval grid.
OFF_GRID_SHIFT = pd.Timedelta(minutes=7)
#: Texts an ``non_numeric`` injection writes into cells, in turn (as exports show them).
NON_NUMERIC_TEXTS: tuple[str, ...] = ("ERR", "--", "1,5", "#VALUE!")


@dataclass(frozen=True)
class Injection:
    """One post-hoc injection into generated readings.

    ``type`` is a Jokar attack (``h1``..``h6``, labelled ``theft_suspected``) or one of
    :data:`FAULT_TYPES`, :data:`BILLING_FAULT_TYPES`, :data:`DATA_QUALITY_TYPES` or
    :data:`PLANTED_TYPES`; ``meter_id`` the meter (``outage``/``transformer_overload``: any
    meter of the area, the area is affected); ``start``/``end`` the affected period (UTC);
    ``magnitude`` for :data:`PLANTED_TYPES` (default :data:`DEFAULT_MAGNITUDE`) and the
    column of a ``non_numeric`` injection's cells (default ``power_kw``).
    """

    type: str
    meter_id: str
    start: pd.Timestamp
    end: pd.Timestamp
    magnitude: float | None = None
    column: str | None = None

    def __post_init__(self) -> None:
        known = (
            THEFT_ATTACKS
            + FAULT_TYPES
            + BILLING_FAULT_TYPES
            + tuple(DATA_QUALITY_TYPES)
            + PLANTED_TYPES
        )
        if self.type not in known:
            raise ValueError(
                f"injection type {self.type!r} unknown, expected one of {', '.join(known)}"
            )
        if not pd.Timestamp(self.end) > pd.Timestamp(self.start):
            raise ValueError(f"injection {self.type} on {self.meter_id}: end must be after start")


def _interval_day(ts: pd.Series) -> npt.NDArray[np.int64]:
    """UTC day number of the interval that ends at each ``ts`` (an interval ending at
    midnight belongs to the day before)."""
    ns = ts.to_numpy(dtype="datetime64[ns]").astype(np.int64) - 1
    out: npt.NDArray[np.int64] = ns // (86400 * 10**9)
    return out


def inject(
    readings: pd.DataFrame,
    registry: pd.DataFrame,
    injections: Sequence[Injection],
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Readings and registry with ``injections`` applied, and their ground-truth labels.

    Theft attacks change only what the attacked meter *measures and registers*: each UTC day
    in ``[start, end)`` its interval energies ``x`` become (α ~ U(0.1, 0.8) as in Jokar et
    al. 2016) h1 ``α x`` (one α per day); h2 ``x`` with a random block of 4-12 h zeroed; h3
    ``α_t x_t``; h4 ``α_t mean(x)``; h5 ``mean(x)``; h6 ``x`` reversed in time. The register
    is rebuilt from the new intervals and active power/currents scaled alike; the supply
    meter is untouched (the physical load is unchanged), so the area's line loss rises.
    Faults overwrite measured values in ``[start, end]``; see :data:`FAULT_TYPES`. Billing
    faults (:data:`BILLING_FAULT_TYPES`) are described in :func:`_apply_billing`; an
    ``estimation_excess`` injection removes the meter's readings in ``(start, end)``.

    Data-quality faults (:data:`DATA_QUALITY_TYPES`): ``missing_data`` and ``meter_offline``
    remove the meter's readings in ``(start, end)`` (a reporting gap; offline: a day or more);
    ``duplicate_exact`` delivers every reading in ``[start, end]`` twice, identical;
    ``duplicate_conflict`` twice with the second copy's values different (import register
    +0.05 kWh, power and currents x 1.2, voltages -2 V: a second read that disagrees);
    ``off_grid`` stamps the readings in ``[start, end]`` :data:`OFF_GRID_SHIFT` later (and
    their ``collected_at``: the reads happened then), the registers interpolated to that
    instant; ``non_numeric`` writes :data:`NON_NUMERIC_TEXTS` into the ``column`` cells of the
    readings in ``[start, end]``, which makes that column text (object dtype), as a CSV with
    such cells reads. Copies sit next to their originals.

    Planted anomalies (:data:`PLANTED_TYPES`, for readings the fleet did not simulate):
    ``register_decrease`` lowers the import register by ``magnitude`` kWh from ``start`` on
    (label ``ends_at`` = ``starts_at``); ``voltage_loss`` sets the measured phase-1 voltage in
    ``[start, end]`` to ``magnitude`` x ``nominal_voltage_v`` while the current keeps flowing,
    so measured power and the registered energy of those intervals fall alike (by the phase's
    share on a three-phase meter); ``consumption_spike`` raises the load (interval energy,
    power, currents) of the intervals ending in ``(start, end]`` to ``magnitude`` x the
    meter's mean interval energy over the 28 days before (never lowering it).

    Labels: ``type`` (alert type), ``injection``, ``meter_id`` (None for area events),
    ``transformer_id``, ``starts_at``, ``ends_at``. Returned readings are canonical, plus
    ``collected_at`` / ``device_ts`` when the input has them.
    """
    rng = np.random.default_rng([int(seed), 7])
    out = readings.sort_values(["meter_id", "ts"], kind="mergesort").reset_index(drop=True)
    reg = registry.copy()
    area_of = dict(zip(reg["meter_id"], reg["transformer_id"], strict=True))
    role_of = dict(zip(reg["meter_id"], reg["role"], strict=True))
    labels: list[dict[str, object]] = []
    meter_col = out["meter_id"].to_numpy()
    ts_col = out["ts"]
    drop = np.zeros(len(out), dtype=bool)  # rows removed (estimation_excess, gaps, offline)
    later: list[Injection] = []  # applied once every row change is made
    for inj in injections:  # loop over injections (a few dozen), vectorized within each
        if inj.meter_id not in area_of:
            raise ValueError(f"injection {inj.type}: meter_id={inj.meter_id!r} not in registry")
        start, end = pd.Timestamp(inj.start), pd.Timestamp(inj.end)
        area = area_of[inj.meter_id]
        in_time = ((ts_col >= start) & (ts_col <= end)).to_numpy()
        rows = np.flatnonzero((meter_col == inj.meter_id) & in_time)
        label: dict[str, object] = {
            "type": inj.type,
            "injection": inj.type,
            "meter_id": inj.meter_id,
            "transformer_id": area,
            "starts_at": start,
            "ends_at": end,
        }
        if inj.type in THEFT_ATTACKS:
            _apply_attack(out, inj, rng)
            label["type"] = "theft_suspected"
        elif inj.type == "calibration_due":
            interval = int(
                reg.loc[reg["meter_id"] == inj.meter_id, "calibration_interval_days"].iat[0]
            )
            due = start.normalize()
            reg.loc[reg["meter_id"] == inj.meter_id, "last_calibration"] = (
                (due - pd.Timedelta(days=interval)).date().isoformat()
            )
            label["ends_at"] = pd.NaT
        elif inj.type in ("consumption_drop", "zero_consumption"):
            factor = 0.0 if inj.type == "zero_consumption" else float(rng.uniform(0.1, 0.3))
            _scale_energy(
                out, np.flatnonzero(meter_col == inj.meter_id), ts_col, start, end, factor
            )
        elif inj.type in ("outage", "transformer_overload"):
            area_rows = np.flatnonzero(
                np.isin(meter_col, [m for m, a in area_of.items() if a == area]) & in_time
            )
            if inj.type == "outage":
                for c in ("voltage_l1_v", "voltage_l2_v", "voltage_l3_v"):
                    out.loc[area_rows, c] = np.where(out.loc[area_rows, c].notna(), 1.0, np.nan)
                for c in ("current_l1_a", "current_l2_a", "current_l3_a"):
                    out.loc[area_rows, c] = np.where(out.loc[area_rows, c].notna(), 0.0, np.nan)
                out.loc[area_rows, ["power_kw", "reactive_power_kvar"]] = 0.0
                for m in {meter_col[r] for r in area_rows}:
                    _scale_energy(out, np.flatnonzero(meter_col == m), ts_col, start, end, 0.0)
            else:
                sup = [m for m, a in area_of.items() if a == area and role_of[m] == "transformer"]
                rated = reg.loc[reg["meter_id"].isin(sup), "rated_kva"].astype(float)
                sel = rows if not sup else np.flatnonzero((meter_col == sup[0]) & in_time)
                ct = float(reg.loc[reg["meter_id"] == sup[0], "ct_ratio"].iat[0]) if sup else 1.0
                s_now = np.hypot(out.loc[sel, "power_kw"], out.loc[sel, "reactive_power_kvar"]) * ct
                k = (
                    np.maximum(1.3 * float(rated.iat[0]) / np.maximum(s_now, 1e-6), 1.0)
                    if sup
                    else 1.0
                )
                for c in (
                    "power_kw",
                    "reactive_power_kvar",
                    "current_l1_a",
                    "current_l2_a",
                    "current_l3_a",
                ):
                    out.loc[sel, c] = out.loc[sel, c] * k
                if sup:  # the extra load is real: the supply meter's register counts it too
                    _add_power_energy(out, np.flatnonzero(meter_col == sup[0]), sel, k)
            label["meter_id"] = None
        elif inj.type in BILLING_FAULT_TYPES:
            meter_rows = np.flatnonzero(meter_col == inj.meter_id)
            meter = reg.set_index("meter_id").loc[inj.meter_id]
            drop |= _apply_billing(out, meter_rows, inj, meter)
            if inj.type == "clock_error":
                label["ends_at"] = pd.NaT
        elif inj.type in DATA_QUALITY_TYPES:
            label["type"] = DATA_QUALITY_TYPES[inj.type]
            if inj.type in ("missing_data", "meter_offline"):
                inside = ((ts_col > start) & (ts_col < end)).to_numpy()
                drop[np.flatnonzero((meter_col == inj.meter_id) & inside)] = True
            elif inj.type == "off_grid":
                _shift_off_grid(out, rows)
            else:  # duplicates and non-numeric cells: after every row change, below
                later.append(inj)
        elif inj.type in PLANTED_TYPES:
            meter = reg.set_index("meter_id").loc[inj.meter_id]
            _apply_planted(out, np.flatnonzero(meter_col == inj.meter_id), inj, meter)
            if inj.type == "register_decrease":
                label["ends_at"] = start
        else:
            _apply_fault(out, rows, inj.type, reg.set_index("meter_id").loc[inj.meter_id])
        labels.append(label)
    if drop.any():
        out = out[~drop].reset_index(drop=True)
    out = _duplicate(out, [i for i in later if i.type.startswith("duplicate_")])
    out = with_time_columns(out)  # receipt / device times travel with the readings
    for inj in later:
        if inj.type == "non_numeric":
            _write_text_cells(out, inj)
    lab = pd.DataFrame(
        labels, columns=["type", "injection", "meter_id", "transformer_id", "starts_at", "ends_at"]
    )
    for c in ("starts_at", "ends_at"):
        lab[c] = pd.to_datetime(lab[c], utc=True).astype(TS_DTYPE)
    return out, reg, lab


def _scale_energy(
    out: pd.DataFrame,
    meter_rows: npt.NDArray[np.int64],
    ts: pd.Series,
    start: pd.Timestamp,
    end: pd.Timestamp,
    factor: float,
) -> None:
    """Scale one meter's interval energies ending in ``(start, end]`` by ``factor`` (and
    power), rebuilding its import register."""
    e = out.loc[meter_rows, "energy_import_kwh"].to_numpy(dtype=float)
    t = ts.iloc[meter_rows]
    sel = ((t > start) & (t <= end)).to_numpy()
    d = np.r_[0.0, np.diff(e)]
    d = np.where(sel, d * factor, d)
    out.loc[meter_rows, "energy_import_kwh"] = e[0] + np.cumsum(d)
    pw = out.loc[meter_rows, ["power_kw", "current_l1_a", "current_l2_a", "current_l3_a"]]
    out.loc[meter_rows, pw.columns] = np.where(sel[:, None], pw.to_numpy() * factor, pw.to_numpy())


#: Days of a meter's own history that define its usual consumption for a planted spike.
USUAL_DAYS = 28


def _spike_over_usual(
    out: pd.DataFrame,
    meter_rows: npt.NDArray[np.int64],
    ts: pd.Series,
    start: pd.Timestamp,
    end: pd.Timestamp,
    factor: float,
) -> None:
    """Raise one meter's interval energies ending in ``(start, end]`` to ``factor`` x its
    usual rate: the mean energy per interval over the previous :data:`USUAL_DAYS` days (never
    below what it was), rebuilding the import register and scaling power alike. "A 5x spike"
    is five times what the meter usually draws -- not five times an hour that happened to be
    quiet, which a household's oven or laundry exceeds every week (docs/evaluation.md, "Real
    data"). Without history before the spike: five times what it was."""
    e = out.loc[meter_rows, "energy_import_kwh"].to_numpy(dtype=float)
    t = pd.DatetimeIndex(ts.iloc[meter_rows])
    d = np.r_[np.nan, np.diff(e)]
    inside = (t > start) & (t <= end)
    if not inside.any():
        return
    # A register decrease is no consumption: left out of the usual rate.
    past = (
        (t <= start) & (t > start - pd.Timedelta(days=USUAL_DAYS)) & (np.nan_to_num(d, nan=-1) >= 0)
    )
    usual = float(np.mean(d[past])) if past.any() else np.nan
    scaled = factor * usual if np.isfinite(usual) else factor * d
    raised = np.where(inside & np.isfinite(d), np.fmax(d, scaled), d)
    ratio = np.divide(raised, d, out=np.ones_like(d), where=np.isfinite(d) & (d > 0))
    steps = np.where(np.isfinite(raised), raised, 0.0)
    steps[0] = 0.0
    out.loc[meter_rows, "energy_import_kwh"] = e[0] + np.cumsum(steps)
    cols = ["power_kw", "current_l1_a", "current_l2_a", "current_l3_a"]
    pw = out.loc[meter_rows, cols].to_numpy(dtype=float)
    out.loc[meter_rows, cols] = pw * ratio[:, None]


def _add_power_energy(
    out: pd.DataFrame,
    meter_rows: npt.NDArray[np.int64],
    scaled: npt.NDArray[np.int64],
    k: npt.NDArray[np.float64] | float,
) -> None:
    """Add to one meter's import register the energy of power scaled by ``k`` at ``scaled``.

    ``power_kw`` of rows ``scaled`` (a subset of ``meter_rows``, already multiplied by ``k``)
    was ``power / k`` before; the register integrates measured power by the trapezoid rule
    between reads (as :func:`generate` does), so each interval gains
    ``((k_prev - 1) P_prev / k_prev + (k - 1) P / k) / 2 x dt``. Later reads keep the gain.
    """
    pos = np.isin(meter_rows, scaled)
    kk = np.ones(meter_rows.size)
    kk[pos] = np.broadcast_to(np.asarray(k, dtype=float), (int(pos.sum()),))
    p_new = out.loc[meter_rows, "power_kw"].to_numpy(dtype=float)
    extra_p = np.nan_to_num(p_new - p_new / kk)  # kW added by the scaling
    t = out["ts"].iloc[meter_rows].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    dt_h = np.r_[0.0, np.diff(t)] / 3.6e12
    gain = np.r_[0.0, (extra_p[:-1] + extra_p[1:]) / 2] * dt_h
    e = out.loc[meter_rows, "energy_import_kwh"].to_numpy(dtype=float)
    out.loc[meter_rows, "energy_import_kwh"] = e + np.cumsum(gain)


def _apply_attack(out: pd.DataFrame, inj: Injection, rng: np.random.Generator) -> None:
    """Rewrite one meter's registered intervals per day with Jokar attack ``inj.type``."""
    idx = np.flatnonzero(out["meter_id"].to_numpy() == inj.meter_id)
    e = out.loc[idx, "energy_import_kwh"].to_numpy(dtype=float)
    ts = out.loc[idx, "ts"]
    d = np.r_[0.0, np.diff(e)]
    day = _interval_day(ts)
    t = ts.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    sel = (t > pd.Timestamp(inj.start).value) & (t <= pd.Timestamp(inj.end).value)
    sel[0] = False
    g = pd.Series(d[sel]).groupby(day[sel])
    x = d[sel]
    days = day[sel]
    uniq, first, counts = np.unique(days, return_index=True, return_counts=True)
    pos = np.arange(x.size) - np.repeat(first, counts)  # position within the day
    mean = g.transform("mean").to_numpy()
    if inj.type == "h1":
        new = x * np.repeat(rng.uniform(0.1, 0.8, uniq.size), counts)
    elif inj.type == "h2":
        per_h = np.maximum(np.round(counts / 24.0), 1)
        length = np.repeat(np.round(rng.uniform(4, 12, uniq.size) * per_h), counts)
        begin = np.repeat(
            np.floor(rng.uniform(0, 1, uniq.size) * np.maximum(counts - length[first], 1)), counts
        )
        new = np.where((pos >= begin) & (pos < begin + length), 0.0, x)
    elif inj.type == "h3":
        new = x * rng.uniform(0.1, 0.8, x.size)
    elif inj.type == "h4":
        new = mean * rng.uniform(0.1, 0.8, x.size)
    elif inj.type == "h5":
        new = mean
    else:  # h6: the day reversed
        new = x[np.repeat(first + counts - 1, counts) - pos]
    ratio = np.divide(new, x, out=np.ones(x.size), where=x > 1e-9)
    d2 = d.copy()
    d2[sel] = new
    out.loc[idx, "energy_import_kwh"] = e[0] + np.cumsum(d2)
    cols = ["power_kw", "reactive_power_kvar", "current_l1_a", "current_l2_a", "current_l3_a"]
    vals = out.loc[idx, cols].to_numpy(copy=True)
    vals[sel] = vals[sel] * ratio[:, None]
    out.loc[idx, cols] = vals


def _apply_fault(
    out: pd.DataFrame, rows: npt.NDArray[np.int64], kind: str, meter: pd.Series
) -> None:
    """Overwrite measured values of ``rows`` (one meter) with fault ``kind``."""
    un = float(meter["nominal_voltage_v"])
    ib = float(meter["rated_current_a"])
    three = int(meter["phases"]) == 3
    if kind == "current_loss":
        if not three:
            raise ValueError(f"injection current_loss: {meter.name} is single-phase")
        out.loc[rows, "current_l2_a"] = 0.0
        out.loc[rows, "current_l1_a"] = np.maximum(out.loc[rows, "current_l1_a"], 0.1 * ib)
    elif kind in ("overvoltage", "undervoltage"):
        # A supply voltage deviation: every phase the meter has.
        for c in ("voltage_l1_v", "voltage_l2_v", "voltage_l3_v"):
            level = (1.12 if kind == "overvoltage" else 0.85) * un
            out.loc[rows, c] = np.where(out.loc[rows, c].notna(), level, np.nan)
    elif kind == "voltage_unbalance":
        if not three:
            raise ValueError(f"injection voltage_unbalance: {meter.name} is single-phase")
        out.loc[rows, "voltage_l1_v"] = 1.05 * un
        out.loc[rows, "voltage_l3_v"] = 0.95 * un
    elif kind == "current_unbalance":
        if not three:
            raise ValueError(f"injection current_unbalance: {meter.name} is single-phase")
        total = out.loc[rows, ["current_l1_a", "current_l2_a", "current_l3_a"]].sum(axis=1)
        total = np.maximum(total, 0.6 * ib)
        out.loc[rows, "current_l1_a"] = 0.7 * total
        out.loc[rows, "current_l2_a"] = 0.15 * total
        out.loc[rows, "current_l3_a"] = 0.15 * total
    elif kind == "reverse_power":
        out.loc[rows, "power_kw"] = -np.maximum(np.abs(out.loc[rows, "power_kw"]), 0.1)
    elif kind == "low_power_factor":
        out.loc[rows, "power_factor"] = 0.7
        for c in ("current_l1_a", "current_l2_a", "current_l3_a"):
            out.loc[rows, c] = np.maximum(out.loc[rows, c], 0.3 * ib)
    elif kind == "frequency_deviation":
        out.loc[rows, "frequency_hz"] = NOMINAL_FREQUENCY_HZ + 0.5
    else:  # pragma: no cover - guarded by Injection.__post_init__
        raise ValueError(kind)


def _apply_billing(
    out: pd.DataFrame,
    meter_rows: npt.NDArray[np.int64],
    inj: Injection,
    meter: pd.Series,
) -> npt.NDArray[np.bool_]:
    """Write billing fault ``inj`` into one meter's rows; returns the rows to remove.

    What each type changes (what the matching rule of analytics/billing_rules.py sees):

    * ``meter_stuck``: the import register stops counting for the intervals ending in
      ``(start, end]`` (it keeps the lost counts: later reads are lower by them) while every
      phase the meter has carries at least 10 % of Ib (``rated_current_a``); power unchanged.
    * ``meter_runaway``: each interval ending in ``(start, end]`` advances the register by an
      extra 2.5 x Un x Imax x phases x its length (``nominal_voltage_v``, ``max_current_a``),
      beyond the 1.2 x physical limit of the rule; later reads keep the jump.
    * ``energy_power_mismatch``: ``power_kw`` in ``[start, end]`` reads 40 % of the true
      value (register unchanged): the register advances 2.5 x faster than power says.
    * ``multiplier_mismatch``: ``power_kw`` in ``[start, end]`` is reported on the primary
      side (x ``ct_ratio``; the meter must have ``ct_ratio > 1``) while the register stays
      on the secondary side.
    * ``clock_error``: the meter's clock jumps ahead at ``start`` by ``end - start`` (the
      lead): every timestamp from ``start`` on moves later by the lead. The label runs from
      ``start`` with no end (the clock stays wrong). A ``collected_at`` column, when the
      readings have one, keeps the true time (the collector's clock), which the rule
      compares each read with; without it the rule compares the meter's latest read with
      the *other* meters' and several clock errors must lead each other by more than its
      tolerance to be told apart (see :func:`simulators.scenarios.build_scenario`).
    * ``estimation_excess``: the readings in ``(start, end)`` are removed (the meter was not
      read), leaving a gap to estimate.
    """
    kind = inj.type
    start, end = pd.Timestamp(inj.start), pd.Timestamp(inj.end)
    t = out["ts"].iloc[meter_rows]
    drop = np.zeros(len(out), dtype=bool)
    if kind in ("meter_stuck", "meter_runaway"):
        e = out.loc[meter_rows, "energy_import_kwh"].to_numpy(dtype=float)
        sel = ((t > start) & (t <= end)).to_numpy()
        d = np.r_[0.0, np.diff(e)]
        if kind == "meter_stuck":
            d = np.where(sel, 0.0, d)
            ib = float(meter["rated_current_a"])
            rows = meter_rows[sel]
            for c in ("current_l1_a", "current_l2_a", "current_l3_a"):
                cur = out.loc[rows, c]
                out.loc[rows, c] = np.where(cur.notna(), np.maximum(cur, 0.1 * ib), np.nan)
        else:
            dt_h = np.r_[0.0, np.diff(t.to_numpy(dtype="datetime64[ns]").astype(np.int64))]
            dt_h = dt_h / 3.6e12
            limit = (
                float(meter["nominal_voltage_v"])
                * float(meter["max_current_a"])
                * int(meter["phases"])
                * dt_h
                / 1000.0
            )
            d = np.where(sel, d + 2.5 * limit, d)
        out.loc[meter_rows, "energy_import_kwh"] = e[0] + np.cumsum(d)
    elif kind in ("energy_power_mismatch", "multiplier_mismatch"):
        sel = ((t >= start) & (t <= end)).to_numpy()
        if kind == "multiplier_mismatch":
            factor = float(meter["ct_ratio"])
            if not factor > 1:
                raise ValueError(
                    f"injection multiplier_mismatch: {meter.name} has ct_ratio {factor:g}, "
                    "needs > 1"
                )
        else:
            factor = 0.4
        rows = meter_rows[sel]
        out.loc[rows, "power_kw"] = out.loc[rows, "power_kw"] * factor
    elif kind == "clock_error":
        sel = (t >= start).to_numpy()
        lead = end - start
        out.loc[meter_rows[sel], "ts"] = t[sel] + lead
    else:  # estimation_excess
        drop[meter_rows[((t > start) & (t < end)).to_numpy()]] = True
    return drop


def _rows_in(out: pd.DataFrame, inj: Injection) -> npt.NDArray[np.int64]:
    """Rows of ``inj``'s meter with ``ts`` in ``[start, end]``."""
    ts = out["ts"]
    sel = (out["meter_id"] == inj.meter_id) & (ts >= inj.start) & (ts <= inj.end)
    return np.flatnonzero(sel.to_numpy())


def _shift_off_grid(out: pd.DataFrame, rows: npt.NDArray[np.int64]) -> None:
    """Stamp ``rows`` (one meter, sorted by time) :data:`OFF_GRID_SHIFT` later, registers
    interpolated towards the meter's next reading."""
    if not rows.size:
        return
    t = out["ts"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    nxt = np.minimum(rows + 1, len(out) - 1)
    same = (out["meter_id"].to_numpy()[nxt] == out["meter_id"].to_numpy()[rows]) & (nxt > rows)
    gap = (t[nxt] - t[rows]).astype(float)
    frac = np.where(same & (gap > 0), OFF_GRID_SHIFT.value / np.where(gap > 0, gap, 1.0), 0.0)
    frac = np.minimum(frac, 1.0)
    for col in ("energy_import_kwh", "energy_export_kwh"):
        e = out[col].to_numpy(dtype=float)
        out.loc[rows, col] = e[rows] + frac * (e[nxt] - e[rows])
    for col in ("ts", "collected_at"):
        if col in out:
            out.loc[rows, col] = out.loc[rows, col] + OFF_GRID_SHIFT


def _duplicate(out: pd.DataFrame, injections: Sequence[Injection]) -> pd.DataFrame:
    """Each reading of a duplicate injection twice, the copy right after its original."""
    if not injections:
        return out
    counts = np.ones(len(out), dtype=np.int64)
    conflict = np.zeros(len(out), dtype=bool)
    for inj in injections:
        rows = _rows_in(out, inj)
        counts[rows] = 2
        conflict[rows] = inj.type == "duplicate_conflict"
    take = np.repeat(np.arange(len(out)), counts)
    copy = np.zeros(take.size, dtype=bool)
    copy[np.cumsum(counts)[counts == 2] - 1] = True  # the second of each pair
    res = out.iloc[take].reset_index(drop=True)
    rows = np.flatnonzero(copy & conflict[take])
    res.loc[rows, "energy_import_kwh"] = res.loc[rows, "energy_import_kwh"] + 0.05
    for col in ("power_kw", "current_l1_a", "current_l2_a", "current_l3_a"):
        res.loc[rows, col] = res.loc[rows, col] * 1.2
    for col in ("voltage_l1_v", "voltage_l2_v", "voltage_l3_v"):
        res.loc[rows, col] = res.loc[rows, col] - 2.0
    return res


def _write_text_cells(out: pd.DataFrame, inj: Injection) -> None:
    """Text from :data:`NON_NUMERIC_TEXTS` into ``inj.column`` of its meter's rows in
    ``[start, end]`` (the column becomes object dtype)."""
    col = inj.column or "power_kw"
    if col not in READING_FIELDS:
        raise ValueError(f"injection non_numeric: column {col!r} is not a reading quantity")
    rows = _rows_in(out, inj)
    if out[col].dtype != object:
        out[col] = out[col].astype(object)
    texts = np.resize(np.array(NON_NUMERIC_TEXTS, dtype=object), rows.size)
    out.loc[rows, col] = texts


def _apply_planted(
    out: pd.DataFrame, meter_rows: npt.NDArray[np.int64], inj: Injection, meter: pd.Series
) -> None:
    """Plant one of :data:`PLANTED_TYPES` into one meter's rows (see :func:`inject`)."""
    start, end = pd.Timestamp(inj.start), pd.Timestamp(inj.end)
    m = float(inj.magnitude if inj.magnitude is not None else DEFAULT_MAGNITUDE[inj.type])
    t = out["ts"].iloc[meter_rows]
    if inj.type == "register_decrease":
        sel = meter_rows[(t >= start).to_numpy()]
        out.loc[sel, "energy_import_kwh"] = out.loc[sel, "energy_import_kwh"] - m
    elif inj.type == "consumption_spike":
        _spike_over_usual(out, meter_rows, out["ts"], start, end, m)
    else:  # voltage_loss on phase 1
        rows = meter_rows[((t >= start) & (t <= end)).to_numpy()]
        before = out.loc[rows, "voltage_l1_v"].to_numpy(dtype=float)
        after = m * float(meter["nominal_voltage_v"])
        ratio = np.divide(after, before, out=np.ones(rows.size), where=before > 0)
        factor = 1.0 - (1.0 - ratio) / max(int(meter["phases"]), 1)
        out.loc[rows, "voltage_l1_v"] = after
        for col in ("power_kw", "reactive_power_kvar"):
            out.loc[rows, col] = out.loc[rows, col].to_numpy(dtype=float) * factor
        e = out.loc[meter_rows, "energy_import_kwh"].to_numpy(dtype=float)
        d = np.r_[0.0, np.diff(e)]
        scale = np.ones(meter_rows.size)
        scale[np.isin(meter_rows, rows)] = factor
        inside = ((t > start) & (t <= end)).to_numpy()
        d = np.where(inside, d * scale, d)
        out.loc[meter_rows, "energy_import_kwh"] = e[0] + np.cumsum(d)
