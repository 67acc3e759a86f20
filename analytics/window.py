"""The dense core: one partition's readings as meters x intervals arrays on a regular grid.

A :class:`Window` is built once per partition (from a long canonical frame, or straight from
a columnar store read) and shared by VEE and every detector. Each quantity is a
``meters x cells`` array (NaN where no reading; ``float32`` for instantaneous quantities,
``float64`` for the cumulative registers, whose 0.01 kWh resolution at 10^8 kWh needs it);
meter ids are integer codes (rows, in sorted id order) and the registry is a set of arrays
aligned to them (:class:`MeterTable`). Rules are whole-array operations on these; findings are
materialized only for flagged cells (:func:`runs`).

The grid
--------
Cells are ``(g0 + c*step, g0 + (c+1)*step]`` (interval *end* convention of contracts §1): a
reading at ``ts`` lands in the cell whose end is at or after it. ``step`` divides
``max_step`` (the VEE interval, 15 min by default) and is the largest such divisor not longer
than the data's typical read spacing, so 15-minute data gets 15-minute cells and 5-minute data
5-minute cells. The instant each value was read is kept (``t``), so evidence and VEE's
interpolation use real read times; readings need not be on the grid.

What does not fit a cell
------------------------
Exact duplicates (same meter and ``ts``, same values) are collapsed; conflicting duplicates
(same meter and ``ts``, other values) keep the row that sorts first by every value (NaN last)
so the result does not depend on row order; a second reading in one cell (finer than the grid)
keeps the latest. Each is counted and kept in :class:`DataQuality` for the data-quality rules,
as are readings of unregistered meters, readings without a time and non-numeric cells.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from meterwatch.core.memory import release_partition_memory
from meterwatch.core.quantities import NO_TIME  # no reading in a cell of a time array
from meterwatch.core.schema import (
    CURRENT_COLUMNS,
    READING_FIELDS,
    TS_DTYPE,
    VOLTAGE_COLUMNS,
    normalize_readings,
)

_NS = 10**9
#: Meter x cell cells a rule with full-window intermediates works on at once (row_chunks).
CHUNK_CELLS = 250_000


def row_chunks(n_rows: int, n_cols: int, cells: int | None = None) -> list[slice]:
    """Consecutive row ranges of about ``cells`` (default :data:`CHUNK_CELLS`) cells each: a
    rule that is per meter keeps its intermediates to a chunk's size, whatever the window's."""
    per = max(1, (cells or CHUNK_CELLS) // max(n_cols, 1))
    return [slice(a, min(a + per, n_rows)) for a in range(0, n_rows, per)]


#: Quantities kept in float64 (cumulative registers); the rest are float32.
REGISTERS: frozenset[str] = frozenset({"energy_import_kwh", "energy_export_kwh"})
#: The phase quantities of each kind: voltages (``"u"``) and currents (``"i"``), L1..L3.
_PHASE_COLUMNS = {"u": VOLTAGE_COLUMNS, "i": CURRENT_COLUMNS}
#: Candidate cell lengths [s]: divisors of a day, from 1 s to 1 h.
_STEPS_S = (1, 2, 5, 10, 15, 20, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 3600)

# Registry columns and their defaults when a registry lacks them (contracts §2).
_REGISTRY_NUMERIC: dict[str, float] = {
    "phases": 1.0,
    "nominal_voltage_v": 230.0,
    "rated_current_a": 5.0,
    "max_current_a": 60.0,
    "ct_ratio": 1.0,
    "calibration_interval_days": np.nan,
    "rated_kva": np.nan,
}
_REGISTRY_TEXT: dict[str, str] = {
    "role": "customer",
    "transformer_id": "",
    "customer_class": "",
    "tariff": "",
}


def _numeric(values: Any, n: int, default: float) -> np.ndarray:
    if values is None:
        return np.full(n, default)
    out: np.ndarray = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(
        dtype=float, na_value=np.nan
    )
    return out


@dataclass
class MeterTable:
    """The registry as arrays aligned to the window's meter codes (rows)."""

    ids: np.ndarray
    phases: np.ndarray
    nominal_voltage_v: np.ndarray
    rated_current_a: np.ndarray
    max_current_a: np.ndarray
    ct_ratio: np.ndarray
    calibration_interval_days: np.ndarray
    rated_kva: np.ndarray
    last_calibration_ns: np.ndarray
    role: np.ndarray
    transformer_id: np.ndarray
    customer_class: np.ndarray
    tariff: np.ndarray
    export_allowed: np.ndarray
    #: Area code per meter (-1: no area) and the area ids by code.
    area: np.ndarray
    areas: np.ndarray

    @classmethod
    def from_registry(cls, meters: pd.DataFrame, ids: np.ndarray) -> MeterTable:
        """Registry rows for ``ids`` (first row of a duplicated id; defaults where absent)."""
        if "meter_id" not in meters.columns:
            raise ValueError("meter registry lacks column(s) meter_id")
        reg = meters.drop_duplicates("meter_id", keep="first")
        reg = reg.set_index(reg["meter_id"].astype(str)).reindex(ids)
        n = len(ids)
        num = {
            c: _numeric(reg[c] if c in reg.columns else None, n, d)
            for c, d in _REGISTRY_NUMERIC.items()
        }
        text = {
            c: (
                reg[c].astype(object).where(reg[c].notna(), d).astype(str).to_numpy(dtype=object)
                if c in reg.columns
                else np.full(n, d, dtype=object)
            )
            for c, d in _REGISTRY_TEXT.items()
        }
        if "last_calibration" in reg.columns:
            last = pd.to_datetime(reg["last_calibration"], utc=True, errors="coerce")
            last_ns = last.to_numpy(dtype="datetime64[ns]").view(np.int64)
        else:
            last_ns = np.full(n, NO_TIME)
        exp = (
            reg["export_allowed"].astype(str).str.lower().isin(["true", "1", "yes"]).to_numpy()
            if "export_allowed" in reg.columns
            else np.zeros(n, dtype=bool)
        )
        tid = text["transformer_id"]
        tid = (
            np.where(pd.isna(reg["transformer_id"]).to_numpy(), "", tid)
            if n and "transformer_id" in reg.columns
            else tid
        )
        has_area = (tid != "") & (tid != "nan")
        area_ids = np.asarray(tid, dtype=object).copy()
        area_ids[~has_area] = None
        area_codes, areas = pd.factorize(pd.Series(area_ids), sort=True)
        return cls(
            ids=np.asarray(ids, dtype=object),
            phases=num["phases"],
            nominal_voltage_v=num["nominal_voltage_v"],
            rated_current_a=num["rated_current_a"],
            max_current_a=num["max_current_a"],
            ct_ratio=num["ct_ratio"],
            calibration_interval_days=num["calibration_interval_days"],
            rated_kva=num["rated_kva"],
            last_calibration_ns=last_ns,
            role=text["role"],
            transformer_id=area_ids,
            customer_class=text["customer_class"],
            tariff=text["tariff"],
            export_allowed=exp,
            area=np.asarray(area_codes, dtype=np.int64),
            areas=np.asarray(areas, dtype=object),
        )

    @property
    def three(self) -> np.ndarray:
        return np.asarray(self.phases == 3)

    @property
    def present(self) -> np.ndarray:
        """meters x 3: which phases a meter has (1 -> L1; 3 -> L1..L3)."""
        three = self.three
        return np.column_stack([(self.phases == 1) | three, three, three])

    @property
    def customer(self) -> np.ndarray:
        return np.asarray(self.role == "customer")

    @property
    def supply(self) -> np.ndarray:
        return np.asarray(self.role == "transformer")


@dataclass
class DataQuality:
    """What the grid could not hold as is, for the data-quality rules and the run summary."""

    #: (meter code, ts ns) of every reading that repeated another one exactly.
    exact_duplicates: tuple[np.ndarray, np.ndarray] = field(
        default_factory=lambda: (np.zeros(0, np.int64), np.zeros(0, np.int64))
    )
    #: (meter code, ts ns) of every reading that shared its meter and ts with other values.
    conflicting_duplicates: tuple[np.ndarray, np.ndarray] = field(
        default_factory=lambda: (np.zeros(0, np.int64), np.zeros(0, np.int64))
    )
    #: (meter code, ts ns, rows) of every (meter, ts) given more than once.
    duplicate_groups: tuple[np.ndarray, np.ndarray, np.ndarray] = field(
        default_factory=lambda: (
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
        )
    )
    #: (meter code, ts ns) of readings that came after a later reading of their meter.
    out_of_order: tuple[np.ndarray, np.ndarray] = field(
        default_factory=lambda: (np.zeros(0, np.int64), np.zeros(0, np.int64))
    )
    #: (meter code, ts ns, column index in READING_FIELDS) of every non-numeric value.
    non_numeric: tuple[np.ndarray, np.ndarray, np.ndarray] = field(
        default_factory=lambda: (
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
        )
    )
    #: (meter code, ts ns) of readings displaced by a later one in the same cell.
    collisions: tuple[np.ndarray, np.ndarray] = field(
        default_factory=lambda: (np.zeros(0, np.int64), np.zeros(0, np.int64))
    )
    rows_unregistered: int = 0
    rows_without_ts: int = 0
    #: Column -> values that were not numbers (turned into NaN), and examples.
    coerced: dict[str, int] = field(default_factory=dict)
    coerced_examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Extent:
    """Reference instants of the data [ns]: the first and the last read of any meter (as the
    window keeps them), and the two latest per-meter last reads (``NO_TIME`` for the second
    when only one meter has reads)."""

    first: int
    last: int
    latest: tuple[int, int]


@dataclass
class Window:
    """A partition's readings on a regular grid (see the module docstring)."""

    meters: MeterTable
    #: Start of the grid [ns]; cell ``c`` is ``(g0 + c*step, g0 + (c+1)*step]``.
    g0: int
    step: int
    #: meters x cells: the instant [ns] the cell's values were read; NO_TIME where none.
    t: np.ndarray
    values: dict[str, np.ndarray]
    #: Optional receipt and meter-clock times (meters x cells, NO_TIME where unknown).
    times: dict[str, np.ndarray] = field(default_factory=dict)
    dq: DataQuality = field(default_factory=DataQuality)
    #: Cells with several reads also keep their first read of the registers (``"t"`` and the
    #: register names; NO_TIME / NaN elsewhere); empty when every cell has one read at most.
    first: dict[str, np.ndarray] = field(default_factory=dict)
    #: The whole fleet's :class:`Extent` when this window is one partition of it
    #: (``analytics.partition``): rules whose reference is "the data" use the fleet's.
    fleet: Extent | None = None
    #: 3 x meters x cells arrays whose planes are the arrays of ``values`` for the voltages
    #: (``"u"``: VOLTAGE_COLUMNS) and the currents (``"i"``), when built so: the phase rules
    #: read them without stacking a copy.
    stacks: dict[str, np.ndarray] = field(default_factory=dict)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)
    #: One lock per memo key (rules may run on threads of their own: ``run_partition``).
    _locks: dict[Any, threading.RLock] = field(default_factory=dict, repr=False)
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- shape ---------------------------------------------------------------------------

    @property
    def n_meters(self) -> int:
        return int(self.t.shape[0])

    @property
    def n_cells(self) -> int:
        return int(self.t.shape[1])

    @property
    def ids(self) -> np.ndarray:
        return self.meters.ids

    @property
    def present(self) -> np.ndarray:
        """meters x cells: a reading is there."""
        return self.memo("present", lambda: self.t != NO_TIME)

    @property
    def ends(self) -> np.ndarray:
        """End instant of every cell [ns]."""
        return self.g0 + (np.arange(self.n_cells, dtype=np.int64) + 1) * self.step

    def memo(self, key: Any, compute: Any) -> Any:
        """``compute()`` once per window (derived arrays shared between rules, read-only).

        Thread-safe: rules running on threads of their own that ask for the same key wait for
        the one computing it (a lock per key; keys computed from other keys never form a
        cycle, so two threads never wait on each other)."""
        try:
            return self._cache[key]
        except KeyError:
            pass
        with self._guard:
            lock = self._locks.setdefault(key, threading.RLock())
        with lock:
            if key not in self._cache:
                value = compute()
                if isinstance(value, np.ndarray):
                    value.setflags(write=False)
                self._cache[key] = value
        return self._cache[key]

    def q(self, name: str) -> np.ndarray:
        """A quantity (meters x cells); all NaN (read-only, no memory) when the window was
        built without it (``build_window(fields=...)``)."""
        v = self.values.get(name)
        if v is not None:
            return v
        if name not in READING_FIELDS:
            raise KeyError(name)
        return self.memo(
            ("absent", name),
            lambda: np.broadcast_to(np.float32(np.nan), (self.n_meters, self.n_cells)),
        )

    def phase_values(self, kind: str) -> np.ndarray:
        """3 x meters x cells voltages (``"u"``) or currents (``"i"``), NaN on absent phases.

        Phase-major: each phase is one contiguous meters x cells plane, so a rule across the
        phases (any, min, mean) is an element-wise operation over three planes (a reduction
        over a last axis of length 3 is an order of magnitude slower)."""

        def build() -> np.ndarray:
            out = self.stacks.get(kind)
            absent = ~np.asarray(self.meters.present).T
            if out is not None and absent.any() and not np.isnan(out[absent]).all():
                out = None  # values on phases a meter lacks: NaN in a copy, not in ``values``
            if out is None:
                out = np.stack([self.q(c) for c in _PHASE_COLUMNS[kind]], axis=0)
                out[absent] = np.float32(np.nan)
            return out

        return self.memo(("phase", kind), build)

    # -- per meter facts -----------------------------------------------------------------

    def reading_span(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per meter: first and last read instant [ns] (NO_TIME without reads) and count."""

        def build() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            pres = self.present
            n = pres.sum(axis=1)
            t = self.t
            big = np.iinfo(np.int64).max
            first = (
                np.where(pres, t, big).min(axis=1) if self.n_cells else np.full(self.n_meters, big)
            )
            last = t.max(axis=1) if self.n_cells else np.full(self.n_meters, NO_TIME)
            first = np.where(n > 0, first, NO_TIME)
            return first, last, n

        return self.memo("span", build)

    def extent(self) -> Extent | None:
        """The data's reference instants: the fleet's when this window is one partition of it
        (:attr:`fleet`), else this window's own; None without any read."""
        if self.fleet is not None:
            return self.fleet

        def build() -> Extent | None:
            first, last, n = self.reading_span()
            has = n > 0
            if not has.any():
                return None
            lasts = np.sort(last[has])
            second = int(lasts[-2]) if lasts.size >= 2 else int(NO_TIME)
            return Extent(int(first[has].min()), int(lasts[-1]), (int(lasts[-1]), second))

        result: Extent | None = self.memo("extent", build)
        return result

    def meter_window(self, m: int) -> dict[str, Any]:
        """Evidence ``window`` of meter row ``m``: first/last reading and count."""
        first, last, n = self.reading_span()
        return {
            "from": utc(first[m]) if n[m] else None,
            "to": utc(last[m]) if n[m] else None,
            "readings": int(n[m]),
        }

    def last_col(self) -> np.ndarray:
        """Per meter: the last cell with a reading (-1 without)."""

        def build() -> np.ndarray:
            pres = self.present
            idx = np.where(pres, np.arange(self.n_cells)[None, :], -1)
            return idx.max(axis=1) if self.n_cells else np.full(self.n_meters, -1)

        return self.memo("last_col", build)


# ------------------------------------------------------------------------------ building


def ts_ns(ts: pd.Series) -> np.ndarray:
    """UTC timestamps (tz-aware Series) as int64 nanoseconds (NaT -> NO_TIME)."""
    naive = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    return naive.to_numpy().astype("datetime64[ns]").view(np.int64)


def utc(ns: int | np.integer) -> pd.Timestamp:
    """UTC timestamp from integer nanoseconds since the epoch."""
    return pd.Timestamp(int(ns), tz="UTC")


def _canonical(readings: pd.DataFrame, fields: Sequence[str] = READING_FIELDS) -> pd.DataFrame:
    """``readings`` with canonical dtypes (as is when it already has them: ``meter_id``, a UTC
    ``ts`` and float64 quantities among ``fields``; absent ones are read as NaN)."""
    if (
        {"meter_id", "ts"} <= set(readings.columns)
        and str(readings["ts"].dtype) == TS_DTYPE
        and all(readings[c].dtype == np.float64 for c in fields if c in readings.columns)
    ):
        return readings
    out = normalize_readings(readings)
    for c in ("collected_at", "device_ts"):
        if c in readings.columns:
            v = readings[c]
            out[c] = (
                v.astype(TS_DTYPE).array
                if isinstance(v.dtype, pd.DatetimeTZDtype)
                else pd.to_datetime(v, utc=True, errors="coerce", format="ISO8601")
                .astype(TS_DTYPE)
                .array
            )
    return out


def choose_step(codes: np.ndarray, t: np.ndarray, max_step_s: int) -> int:
    """Cell length [ns]: the largest divisor of ``max_step_s`` among the candidate lengths not
    longer than the median spacing of consecutive reads of a meter (``max_step_s`` when the
    data have no spacing to measure)."""
    candidates = [s for s in _STEPS_S if max_step_s % s == 0 and s <= max_step_s] or [max_step_s]
    if t.size < 2:
        return max_step_s * _NS
    same = codes[1:] == codes[:-1]
    d = (t[1:] - t[:-1])[same]
    d = d[d > 0]
    if d.size == 0:
        return max_step_s * _NS
    if d.size > 200_000:  # a sample is enough for a median
        d = d[:: d.size // 200_000]
    median_s = float(np.median(d)) / _NS
    fit = [s for s in candidates if s <= median_s * 1.01]
    return (max(fit) if fit else min(candidates)) * _NS


def build_window(
    readings: pd.DataFrame,
    meters: pd.DataFrame,
    *,
    max_step_s: int = 900,
    step_s: int | None = None,
    start: Any = None,
    end: Any = None,
    all_registered: bool = True,
    fields: Sequence[str] | None = None,
    consume: bool = False,
    threads: int = 1,
) -> Window:
    """The dense window of ``readings`` for the registered ``meters`` (module docstring).

    ``consume``: ``readings`` is emptied (its columns dropped) once its values are taken, so
    each column's memory is freed as it is scattered into the grid: the build holds the
    readings and the window together for one column at a time, not for all of them.

    ``threads`` > 1: the columns are put on the grid that many at a time (numpy's indexed
    assignment releases the GIL), for a process with the cores to itself.

    ``fields`` limits the quantities made into arrays (the others read as all NaN, without
    memory): fitting baselines on weeks of history needs the registers only.

    ``step_s`` fixes the cell length (else chosen by :func:`choose_step`); the grid covers the
    readings and, when given, at least ``start`` to ``end`` (floored/ceiled to the step). Every registered meter
    gets a row (``all_registered``), those without readings all NaN.
    """
    wanted = READING_FIELDS if fields is None else tuple(c for c in READING_FIELDS if c in fields)
    canon = _canonical(readings, wanted)
    coerced = dict(canon.attrs.get("coerced", {}) or {})
    examples = dict(canon.attrs.get("coerced_examples", {}) or {})
    reg_ids = (
        pd.Index(meters["meter_id"].astype(str).drop_duplicates())
        if len(meters)
        else pd.Index([], dtype=object)
    )
    if all_registered:
        ids = np.asarray(reg_ids.sort_values(), dtype=object)
    else:
        ids = np.asarray(
            pd.Index(canon["meter_id"].astype(str).unique()).intersection(reg_ids).sort_values(),
            dtype=object,
        )
    raw_ids = canon["meter_id"]
    if isinstance(raw_ids.dtype, pd.CategoricalDtype):
        cat_codes = pd.Index(raw_ids.cat.categories.astype(str)).get_indexer(ids)
        lookup = np.full(len(raw_ids.cat.categories), -1, dtype=np.int64)
        ok = cat_codes >= 0
        lookup[cat_codes[ok]] = np.flatnonzero(ok)
        codes = np.where(
            raw_ids.cat.codes.to_numpy() >= 0, lookup[raw_ids.cat.codes.to_numpy()], -1
        )
    else:
        # Factorize first (a few thousand distinct ids), then look the distinct ones up.
        fcodes, uniques = pd.factorize(raw_ids, use_na_sentinel=True)
        lookup = pd.Index(ids).get_indexer(pd.Index(uniques).astype(str))
        codes = (
            np.where(fcodes >= 0, lookup[np.maximum(fcodes, 0)], -1)
            if len(ids)
            else (np.full(len(raw_ids), -1, dtype=np.int64))
        )
    t = ts_ns(canon["ts"]) if len(canon) else np.zeros(0, dtype=np.int64)
    no_ts = t == NO_TIME
    dq = DataQuality(
        rows_unregistered=int(((codes < 0) & ~no_ts).sum()),
        rows_without_ts=int(no_ts.sum()),
        coerced=coerced,
        coerced_examples=examples,
    )
    bad_rows = canon.attrs.get("coerced_rows") or {}
    if bad_rows:
        parts = [
            (np.asarray(r, dtype=np.int64), READING_FIELDS.index(c))
            for c, r in bad_rows.items()
            if c in READING_FIELDS
        ]
        pos = np.concatenate([r for r, _ in parts]) if parts else np.zeros(0, np.int64)
        col_idx = np.concatenate([np.full(r.size, k) for r, k in parts]) if parts else pos
        ok = (codes[pos] >= 0) & ~no_ts[pos] if pos.size else np.zeros(0, bool)
        dq.non_numeric = (codes[pos][ok].astype(np.int64), t[pos][ok], col_idx[ok].astype(np.int64))
    keep = (codes >= 0) & ~no_ts
    time_cols = [c for c in ("collected_at", "device_ts") if c in canon.columns]

    def column(frame: pd.DataFrame, c: str) -> np.ndarray:
        if c in frame.columns:
            out: np.ndarray = frame[c].to_numpy(dtype=float)
            return out
        return np.full(len(frame), np.nan)

    if keep.all():  # the usual case: no copy of the columns
        codes = codes.astype(np.int64, copy=False)
        values = {c: column(canon, c) for c in wanted}
        extra = {c: ts_ns(canon[c]) for c in time_cols}
    else:
        rows = np.flatnonzero(keep)
        codes, t = codes[rows].astype(np.int64), t[rows]
        values = {c: column(canon, c)[rows] for c in wanted}
        extra = {c: ts_ns(canon[c])[rows] for c in time_cols}
    del canon, raw_ids
    if consume:
        for c in list(readings.columns):
            del readings[c]

    perm: np.ndarray | None = None
    # Sort by meter then time (a sorted store read skips the sort).
    if codes.size > 1 and not (
        np.all(codes[1:] >= codes[:-1]) and np.all((t[1:] > t[:-1]) | (codes[1:] != codes[:-1]))
    ):
        order, s_codes, s_t = meter_time_sort(codes, t)
        # A meter's reads came in time order exactly when sorting by (meter, time) keeps their
        # input positions rising (ties keep theirs: lexsort is stable). Only otherwise: which
        # reads came after a later read of their meter, in input order.
        in_order = bool(np.all((order[1:] > order[:-1]) | (s_codes[1:] != s_codes[:-1])))
        if not in_order:
            prev_max = (
                pd.Series(t).groupby(codes).cummax().groupby(codes).shift(1).to_numpy(dtype=float)
            )
            ooo = t < prev_max
            del prev_max
            if ooo.any():
                dq.out_of_order = (codes[ooo], t[ooo])
        codes, t = s_codes, s_t
        del s_codes, s_t
        # Duplicate (meter, ts): collapse deterministically, count exact and conflicting.
        dup_next = (codes[1:] == codes[:-1]) & (t[1:] == t[:-1])
        if dup_next.any():
            values = {c: v[order] for c, v in values.items()}
            extra = {c: v[order] for c, v in extra.items()}
            codes, t, values, extra, dq = _collapse_duplicates(codes, t, values, extra, dq)
        else:
            # The value columns stay in input order (no sorted copy of each): ``perm`` puts
            # them in (meter, ts) order, applied where they are scattered into the grid.
            perm = order

    step = (step_s * _NS) if step_s else choose_step(codes, t, max_step_s)
    # The grid covers the readings and, when given, at least [start, end].
    g0 = -(-int(t.min()) // step) * step - step if t.size else None
    g1 = -(-int(t.max()) // step) * step if t.size else None
    if start is not None:
        s0 = _to_ns(start) // step * step
        g0 = s0 if g0 is None else min(g0, s0)
    if end is not None:
        e1 = -(-_to_ns(end) // step) * step
        g1 = e1 if g1 is None else max(g1, e1)
    g0 = 0 if g0 is None else g0
    g1 = g0 if g1 is None else g1
    n_cells = max(int((g1 - g0) // step), 0)
    col = t - (g0 + 1)  # the cell of each read, in place (8 bytes a reading each)
    col //= step
    inside = (col >= 0) & (col < n_cells)
    if not inside.all():
        sel = inside if perm is None else perm[inside]
        perm = None
        codes, t, col = codes[inside], t[inside], col[inside]
        values = {c: v[sel] for c, v in values.items()}
        extra = {c: v[sel] for c, v in extra.items()}
    # Several reads in one cell: the latest stays (sorted by time, so the last one written);
    # the cell's first read is kept too, for the registers (interval energy needs the reads
    # on both sides of a boundary).
    n_m = len(ids)
    first: dict[str, np.ndarray] = {}
    if codes.size > 1:
        coll = np.r_[(codes[1:] == codes[:-1]) & (col[1:] == col[:-1]), False]
        if coll.any():
            if perm is not None:  # the latest read of a cell must be written last: in order
                values = {c: v[perm] for c, v in values.items()}
                extra = {c: v[perm] for c, v in extra.items()}
                perm = None
            dq.collisions = (codes[coll], t[coll])
            starts = np.r_[True, ~((codes[1:] == codes[:-1]) & (col[1:] == col[:-1]))]
            multi = starts & coll  # the first read of a cell with several
            fflat = codes[multi] * n_cells + col[multi]
            ft = np.full(n_m * n_cells, NO_TIME, dtype=np.int64)
            ft[fflat] = t[multi]
            first["t"] = ft.reshape(n_m, n_cells)
            for c in REGISTERS & set(values):
                a = np.full(n_m * n_cells, np.nan)
                a[fflat] = values[c][multi]
                first[c] = a.reshape(n_m, n_cells)
    codes = codes.astype(np.int64, copy=True) if codes.base is not None else codes
    codes *= n_cells  # the flat cell of each read, in the codes' own memory
    codes += col
    flat = codes
    del codes, col  # (their memory is the window's to use: 8 bytes a reading each)
    # A sorted read of a regular grid (every meter read once per cell, e.g. a store query of
    # yesterday) fills every cell in order: the columns are the arrays already.
    dense = perm is None and (
        flat.size == n_m * n_cells
        and bool(flat.size == 0 or (flat[0] == 0 and np.all(np.diff(flat) == 1)))
    )

    def scatter(
        v: np.ndarray, fill: Any, dtype: Any, cells: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """``v`` on the grid; into ``out`` (a meters x cells plane) when given."""
        if out is not None:
            flat_out = out.reshape(-1)  # a view: the plane is contiguous
            if dense:
                flat_out[:] = v
            else:
                flat_out.fill(fill)
                flat_out[cells] = v
            return out
        if dense:
            res = np.asarray(v, dtype=dtype).reshape(n_m, n_cells)
            res.setflags(write=False)  # may be a view of the caller's frame
            return res
        a = np.full(n_m * n_cells, fill, dtype=dtype)
        a[cells] = v
        return a.reshape(n_m, n_cells)

    t_arr = scatter(t, NO_TIME, np.int64, flat)
    del t
    # Cells of the value columns in their input order (one cell each: no collisions here).
    flat_in = flat
    if perm is not None:
        flat_in = np.empty_like(flat)
        flat_in[perm] = flat
        del flat, perm
    # The phase quantities go straight into one 3 x meters x cells array each (their values
    # are its planes); each column is let go once scattered (with ``consume``, that frees it).
    stacks = {
        kind: np.empty((3, n_m, n_cells), dtype=np.float32)
        for kind, cols in _PHASE_COLUMNS.items()
        if all(c in values for c in cols)
    }
    plane = {c: (kind, k) for kind in stacks for k, c in enumerate(_PHASE_COLUMNS[kind])}

    def place(c: str) -> np.ndarray:
        dtype = np.float64 if c in REGISTERS else np.float32
        into = stacks[plane[c][0]][plane[c][1]] if c in plane else None
        out = scatter(values.pop(c), np.nan, dtype, flat_in, into)
        if consume:
            # The readings' column just let go goes back to the system now, not after the
            # whole window is built (a daily-run worker's peak: 2.82-2.85x its input instead
            # of 2.96-2.97x, for about 5 % more of its CPU; a no-op where freed memory is
            # kept for reuse, as in `analyze`).
            release_partition_memory()
        return out

    names = list(values)
    if threads > 1 and len(names) > 1:
        with ThreadPoolExecutor(threads, thread_name_prefix="window") as pool:
            arrays = dict(zip(names, pool.map(place, names), strict=True))
    else:
        arrays = {c: place(c) for c in names}
    times = {c: scatter(v, NO_TIME, np.int64, flat_in) for c, v in extra.items()}
    return Window(
        meters=MeterTable.from_registry(meters, ids),
        g0=int(g0),
        step=int(step),
        t=t_arr,
        values=arrays,
        times=times,
        dq=dq,
        first=first,
        stacks=stacks,
    )


def meter_time_sort(codes: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``order = np.lexsort((t, codes))`` (meter, then time; stable) and the sorted codes and
    times. Readings written time by time (each meter's reads in time order, the meters
    interleaved, as a CSV export or a simulator writes them) are put in order by a stable
    radix sort on the meter alone, checked: several times faster than the two-key sort (0.1
    against 0.45 s for 5.8 million reads); any other order takes the two-key sort."""
    if codes.size and int(codes.min()) >= 0 and int(codes.max()) < 1 << 16:
        order = np.argsort(codes.astype(np.uint16), kind="stable")  # numpy: a radix sort
        s_codes, s_t = codes[order], t[order]
        if bool(np.all((s_t[1:] >= s_t[:-1]) | (s_codes[1:] != s_codes[:-1]))):
            return order, s_codes, s_t
    order = np.lexsort((t, codes))
    return order, codes[order], t[order]


def _collapse_duplicates(
    codes: np.ndarray,
    t: np.ndarray,
    values: dict[str, np.ndarray],
    extra: dict[str, np.ndarray],
    dq: DataQuality,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], DataQuality]:
    """Keep one row per (meter, ts): the first by every value (NaN last); count the others.

    Rows must be sorted by (meter, ts). A dropped row equal to the kept one (NaN equals NaN) is
    an exact duplicate; a group with any other values is a conflicting duplicate (one entry per
    group).
    """
    same_prev = np.r_[False, (codes[1:] == codes[:-1]) & (t[1:] == t[:-1])]
    in_group = same_prev | np.r_[same_prev[1:], False]
    idx = np.flatnonzero(in_group)
    names = list(values)
    sub = pd.DataFrame({"code": codes[idx], "t": t[idx], **{c: values[c][idx] for c in names}})
    sub["pos"] = idx
    ordered = sub.sort_values(["code", "t", *names], na_position="last", kind="mergesort")
    first = (~ordered.duplicated(["code", "t"], keep="first")).to_numpy()
    vals = ordered[names].to_numpy(dtype=float)
    keeper = np.maximum.accumulate(np.where(first, np.arange(len(ordered)), 0))
    same_vals = np.all((vals == vals[keeper]) | (np.isnan(vals) & np.isnan(vals[keeper])), axis=1)
    dropped = ~first
    key_code = ordered["code"].to_numpy(dtype=np.int64)
    key_t = ordered["t"].to_numpy(dtype=np.int64)
    exact = dropped & same_vals
    dq.exact_duplicates = (key_code[exact], key_t[exact])
    sizes = np.bincount(keeper, minlength=len(ordered))[first]
    dq.duplicate_groups = (key_code[first], key_t[first], sizes.astype(np.int64))
    conflict = dropped & ~same_vals
    group_conflict = np.zeros(len(ordered), dtype=bool)
    np.logical_or.at(group_conflict, keeper[conflict], True)
    dq.conflicting_duplicates = (key_code[group_conflict], key_t[group_conflict])
    keep = np.ones(codes.size, dtype=bool)
    keep[idx] = False
    keep[ordered["pos"].to_numpy()[first]] = True
    return (
        codes[keep],
        t[keep],
        {c: v[keep] for c, v in values.items()},
        {c: v[keep] for c, v in extra.items()},
        dq,
    )


def _to_ns(value: Any) -> int:
    t = pd.Timestamp(value)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return int(t.value)


# ------------------------------------------------------------------------------ episodes


@dataclass(frozen=True)
class Runs:
    """Runs of a flagged condition along the cells of each meter (see :func:`runs`)."""

    row: np.ndarray
    c0: np.ndarray
    c1: np.ndarray
    #: The run reaches the meter's last reading (the condition still holds).
    ongoing: np.ndarray
    #: Readings in the run where the condition holds.
    n: np.ndarray

    def __len__(self) -> int:
        return int(self.row.size)

    def select(self, keep: np.ndarray) -> Runs:
        return Runs(self.row[keep], self.c0[keep], self.c1[keep], self.ongoing[keep], self.n[keep])


def runs(
    flag: np.ndarray, present: np.ndarray | None = None, last_col: np.ndarray | None = None
) -> Runs:
    """Maximal runs of consecutive *readings* of a meter where ``flag`` holds.

    ``flag`` is meters x cells. Cells without a reading (``present`` False) neither start nor
    break a run: a run bridges them when the readings on both sides hold, as consecutive
    readings of a meter do in a long frame. A run starts and ends on a reading; ``ongoing``
    when it reaches the meter's last reading (``last_col``); ``n`` counts its readings.
    """
    flag = np.asarray(flag, dtype=bool)
    n_m, n_c = flag.shape
    if present is None:
        present = np.ones_like(flag)
    if n_m > 1 and n_m * n_c > CHUNK_CELLS:  # per meter: a chunk's intermediates at a time
        parts = [
            (rs.start, runs(flag[rs], present[rs], None if last_col is None else last_col[rs]))
            for rs in row_chunks(n_m, n_c)
        ]
        return Runs(
            np.concatenate([p.row + a for a, p in parts]),
            np.concatenate([p.c0 for _, p in parts]),
            np.concatenate([p.c1 for _, p in parts]),
            np.concatenate([p.ongoing for _, p in parts]),
            np.concatenate([p.n for _, p in parts]),
        )
    hold = flag & present
    held = hold.any(axis=1) if n_m and n_c else np.zeros(n_m, dtype=bool)
    if not held.any():
        z = np.zeros(0, dtype=np.int64)
        return Runs(z, z, z, np.zeros(0, dtype=bool), z)
    if held.sum() * 2 <= n_m:  # a condition of a few meters: the runs of their rows only
        sub = np.flatnonzero(held)
        r = runs(flag[sub], present[sub], None if last_col is None else last_col[sub])
        return Runs(sub[r.row], r.c0, r.c1, r.ongoing, r.n)
    if not present.all():
        cols = np.arange(n_c)
        prev_idx = np.maximum.accumulate(np.where(present, cols, -1), axis=1)
        next_idx = np.minimum.accumulate(np.where(present, cols, n_c)[:, ::-1], axis=1)[:, ::-1]
        rows = np.arange(n_m)[:, None]
        prev_hold = np.where(prev_idx >= 0, hold[rows, np.maximum(prev_idx, 0)], False)
        next_hold = np.where(next_idx < n_c, hold[rows, np.minimum(next_idx, n_c - 1)], False)
        bridged = hold | (~present & prev_hold & next_hold)
    else:
        bridged = hold
    pad = np.zeros((n_m, 1), dtype=bool)
    edges = np.diff(np.concatenate([pad, bridged, pad], axis=1).astype(np.int8), axis=1)
    sr, sc = np.nonzero(edges == 1)
    er, ec = np.nonzero(edges == -1)
    c1 = ec - 1
    cum = np.concatenate([np.zeros((n_m, 1), dtype=np.int64), np.cumsum(hold, axis=1)], axis=1)
    n = cum[er, ec] - cum[sr, sc]
    if last_col is None:
        idx = np.where(present, np.arange(n_c)[None, :], -1)
        last_col = idx.max(axis=1)
    ongoing = c1 >= last_col[sr]
    return Runs(
        sr.astype(np.int64), sc.astype(np.int64), c1.astype(np.int64), ongoing, n.astype(np.int64)
    )


def merge_runs(r: Runs, t: np.ndarray, gap_ns: float) -> Runs:
    """Runs of one meter separated by at most ``gap_ns`` (from the last reading of one to the
    first of the next) merged into one: a condition that hovers at its threshold is one
    episode, not one per crossing (hysteresis by episode merging). ``t`` is meters x cells."""
    if len(r) < 2 or gap_ns <= 0:
        return r
    t_end = t[r.row, r.c1]
    t_start = t[r.row, r.c0]
    joined = (r.row[1:] == r.row[:-1]) & ((t_start[1:] - t_end[:-1]) <= gap_ns)
    if not joined.any():
        return r
    group = np.cumsum(np.r_[True, ~joined]) - 1
    first = np.flatnonzero(np.r_[True, ~joined])
    last = np.r_[first[1:] - 1, len(r) - 1]
    n = np.bincount(group, weights=r.n).astype(np.int64)
    return Runs(r.row[first], r.c0[first], r.c1[last], r.ongoing[last], n)


def run_reduce(
    values: np.ndarray, r: Runs, how: str, where: np.ndarray | None = None
) -> np.ndarray:
    """Per run: ``min``/``max``/``sum``/``first`` of ``values`` (meters x cells) over its
    cells, only where ``where`` holds (NaN for min/max of nothing)."""
    if len(r) == 0:
        return np.zeros(0)
    n_c = values.shape[1]
    single = getattr(values, "dtype", None) == np.float32
    # Only the rows with runs (a rule's findings are on few meters): their cells in float64.
    rows, row = np.unique(r.row, return_inverse=True)
    values = np.asarray(values)[rows]
    where = None if where is None else np.asarray(where)[rows]
    r = Runs(row.reshape(-1), r.c0, r.c1, r.ongoing, r.n)
    flat = np.asarray(values, dtype=float).reshape(-1)
    a = r.row * n_c + r.c0
    if how == "first":
        return decimal32(flat[a]) if single else flat[a]
    fill = {"min": np.inf, "max": -np.inf, "sum": 0.0}[how]
    if where is not None:
        flat = np.where(np.asarray(where).reshape(-1), flat, fill)
    elif how == "sum":
        flat = np.nan_to_num(flat)
    flat = np.append(flat, fill)  # a sentinel: every run's end index is inside the array
    b = r.row * n_c + r.c1 + 1
    idx = np.empty(2 * len(r), dtype=np.int64)
    idx[0::2], idx[1::2] = a, b
    ufunc = {"min": np.fmin, "max": np.fmax, "sum": np.add}[how]
    red = ufunc.reduceat(flat, idx)[0::2]
    if how in ("min", "max"):
        red = np.where(np.isinf(red), np.nan, red)
        if single:
            red = decimal32(red)
    return red


def decimal32(values: np.ndarray) -> np.ndarray:
    """float32-read values as the float64 of their shortest text (4.2, not 4.1999998).

    For evidence only (called per finding): the float32 storage of a decimal reading must
    not show in what an engineer reads.
    """
    out = np.asarray(values, dtype=np.float64).copy()
    for k, v in enumerate(np.asarray(values, dtype=np.float32).tolist()):
        if v == v and abs(v) != float("inf"):
            out[k] = float(str(np.float32(v)))
    return out


def prev_present(
    values: np.ndarray, present: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: the column of the meter's previous reading (-1: none) and its value.

    ``present`` defaults to the cells where ``values`` is not NaN (a reading without that
    quantity is skipped, so a gap cannot hide a step). Meters read in every cell (the usual
    case) take the previous cell by a shift; only the others pay for the search.
    """
    if present is None:
        present = ~np.isnan(values)
    n_m, n_c = values.shape
    prev_idx = np.empty((n_m, n_c), dtype=np.int64)
    prev_idx[:] = np.arange(-1, n_c - 1)
    full: np.ndarray = np.asarray(present.all(axis=1))
    gaps = np.flatnonzero(~full)
    if gaps.size and n_c:
        idx = np.where(present[gaps], np.arange(n_c)[None, :], -1)
        last = np.maximum.accumulate(idx, axis=1)
        prev_idx[gaps, 0] = -1
        prev_idx[gaps, 1:] = last[:, :-1]
    return prev_idx, take_prev(values, prev_idx, full)


def take_prev(values: np.ndarray, prev_idx: np.ndarray, full: np.ndarray) -> np.ndarray:
    """``values`` at each cell's previous reading (:func:`prev_present`'s ``prev_idx``; NaN
    where none), float; rows where ``full`` (read in every cell) by a shift."""
    n_m, n_c = values.shape
    out = np.empty((n_m, n_c), dtype=float)
    if n_c == 0:
        return out
    out[:, 0] = np.nan
    out[:, 1:] = values[:, :-1]
    gaps = np.flatnonzero(~full)
    if gaps.size:
        pc = prev_idx[gaps]
        out[gaps] = np.where(pc >= 0, values[gaps[:, None], np.maximum(pc, 0)], np.nan)
    return out


def register_reads(
    w: Window, name: str = "energy_import_kwh", rows: slice | np.ndarray = slice(None)
) -> tuple[np.ndarray, np.ndarray, int]:
    """The register's reads in time order as ``(values, t, k)``: meters x (cells x k) arrays
    where position ``c*k + k-1`` is cell ``c``'s (last) read and, with ``k == 2``, position
    ``c*2`` its first read when it has several (interval energy needs the reads on both sides
    of a boundary). NaN / NO_TIME where no read. ``rows``: of these meters (window rows) only."""
    v, t = w.q(name)[rows], w.t[rows]
    if not w.first:
        unread = np.isnan(v) & (t != NO_TIME)  # a read without this register
        if unread.any():
            return v, np.where(unread, NO_TIME, t), 1
        t = t.view()  # the window's own times (no copy), read-only
        t.flags.writeable = False
        return v, t, 1
    n_m, n_c = v.shape
    v2 = np.full((n_m, 2 * n_c), np.nan)
    t2 = np.full((n_m, 2 * n_c), NO_TIME, dtype=np.int64)
    v2[:, 1::2], t2[:, 1::2] = v, np.where(np.isnan(v), NO_TIME, t)
    fv = w.first.get(name)
    fv = np.full(v.shape, np.nan) if fv is None else fv[rows]  # None: built without it
    v2[:, 0::2], t2[:, 0::2] = fv, np.where(np.isnan(fv), NO_TIME, w.first["t"][rows])
    return v2, t2, 2
