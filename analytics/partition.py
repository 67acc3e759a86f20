"""Partitioned analytics: the fleet cut into partitions of whole transformer areas, run anywhere,
combined into the findings one window over the whole fleet gives.

Plan, run, combine:

* **Plan** (:func:`partition_of`): whole areas, packed in sorted area order into partitions of
  at most ``max_meters`` meters (an area larger than that is a partition of its own); meters
  without a transformer area (empty ``transformer_id``) go to partitions of their own, so the
  meter-level rules judge them and the area rules (line loss, outage, theft peer areas) skip
  them, as contracts §2 says. Memory then grows with the partition, not the fleet.
* **Run** (:func:`run_partition`): one dense window per partition on the *fleet's* grid
  (:class:`Grid`: the cell length and span a window over the whole fleet has), every detector
  over it. A detector whose judgement is relative to the whole fleet (:class:`CrossPartition`:
  the theft score compares a meter with its class peers everywhere) returns its partial instead.
* **Combine** (:func:`combine`): the partitions' findings, plus each cross-partition detector's
  judgement over every partial.

Where partitions run is a :class:`Runner`: :class:`InProcess` (one process, the default) or a
Dask cluster (``meterwatch.cluster``, the application layer: this package imports no client
library). The findings do not depend on the runner nor on ``max_meters``: they are the rows of
``run_detectors`` over one window of the whole fleet (in partition order instead of detector
order): a rule's reference is the meter, its area, the fleet's grid and data extent
(:class:`~meterwatch.analytics.window.Extent`: the end of the data for ``meter_offline``, the
span of the VEE intervals, the clock reference of meters without receipt times) or, through the
combine step, the fleet's peers.

A :class:`Partition` crosses a process boundary as an Arrow table (meter ids dictionary-encoded)
with its registry slice, never as pickled rows.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import pandas as pd

from meterwatch.analytics.base import Detector
from meterwatch.analytics.suite import concat_findings
from meterwatch.analytics.window import (
    NO_TIME,
    Extent,
    Window,
    _canonical,
    build_window,
    choose_step,
    meter_time_sort,
    ts_ns,
    utc,
)
from meterwatch.core.memory import release_partition_memory

Loader = Callable[[list[str]], pd.DataFrame]
Progress = Callable[[int, int], None]
#: A per-partition computation whose results are joined across partitions (by key).
PartialFn = Callable[[Window], pd.DataFrame]
T = TypeVar("T")
R = TypeVar("R")

_NS = 10**9


@runtime_checkable
class CrossPartition(Protocol):
    """A detector judged over the whole fleet: each partition gives ``partial_window(w)``, and
    ``combine(partials)`` (every partition's, in partition order) gives the findings.
    Detectors with the same ``partial_key`` share one partial per partition."""

    partial_key: str

    def partial_window(self, w: Window) -> pd.DataFrame: ...

    def combine(self, partials: Sequence[pd.DataFrame]) -> pd.DataFrame: ...


# ------------------------------------------------------------------------------ planning


def registry_table(meters: pd.DataFrame) -> pd.DataFrame:
    """The registry with one row per meter (its first, as the window keeps) and
    ``transformer_id`` as text, empty where the area is unknown (missing, NaN, ``nan``)."""
    if "meter_id" not in meters.columns:
        raise ValueError("meter registry lacks column(s) meter_id")
    reg = meters.assign(meter_id=meters["meter_id"].astype(str))
    reg = reg.drop_duplicates("meter_id", keep="first")
    if "transformer_id" in reg.columns:
        area = reg["transformer_id"].astype(object).where(reg["transformer_id"].notna(), "")
        area = area.astype(str).str.strip().replace("nan", "")
    else:
        area = pd.Series("", index=reg.index)
    return reg.assign(transformer_id=area.to_numpy(dtype=object))


def partition_of(meters: pd.DataFrame, max_meters: int) -> np.ndarray:
    """Partition number of every row of :func:`registry_table` ``(meters)``.

    Areas in sorted order fill a partition until the next one would take it past
    ``max_meters`` (an area larger than that is a partition of its own); meters without an area
    follow, ``max_meters`` at a time, in registry order.
    """
    if max_meters < 1:
        raise ValueError(f"max_meters must be >= 1, got {max_meters}")
    area = meters["transformer_id"].to_numpy(dtype=object)
    has_area = area != ""
    codes, areas = pd.factorize(pd.Series(area[has_area]), sort=True)
    sizes = np.bincount(codes, minlength=len(areas))
    part_of_area = np.zeros(len(areas), dtype=np.int64)
    part, filled = 0, 0
    for a, size in enumerate(sizes.tolist()):  # loop over areas (tens of thousands at most)
        if filled and filled + size > max_meters:
            part, filled = part + 1, 0
        part_of_area[a] = part
        filled += size
    n_area_parts = part + 1 if len(areas) else 0
    out = np.empty(len(meters), dtype=np.int64)
    out[has_area] = part_of_area[codes]
    out[~has_area] = n_area_parts + np.arange(int((~has_area).sum())) // max_meters
    return out


def iter_partitions(meters: pd.DataFrame, max_meters: int) -> Iterator[pd.DataFrame]:
    """Registry slices (:func:`registry_table` rows) of the partitions, in partition order."""
    reg = registry_table(meters)
    part = partition_of(reg, max_meters)
    for _, chunk in reg.groupby(part, sort=True):
        yield chunk


@dataclass
class Partition:
    """One partition's registry rows and canonical readings (``attrs["coerced_rows"]``
    relative to these rows). Pickles its readings as an Arrow table."""

    index: int
    meters: pd.DataFrame
    readings: pd.DataFrame

    def __getstate__(self) -> dict[str, Any]:
        import pyarrow as pa

        frame = self.readings.copy(deep=False)
        frame.attrs = {}  # travel beside the table (Arrow keeps only JSON attributes)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        return {
            "index": self.index,
            "meters": self.meters,
            "readings": table,
            "attrs": dict(self.readings.attrs),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.index = state["index"]
        self.meters = state["meters"]
        self.readings = state["readings"].to_pandas()
        self.readings.attrs.update(state["attrs"])


@dataclass(frozen=True)
class Grid:
    """The grid of one window over the whole fleet: every partition's window uses it, so a
    partition's cells, days and hours are the fleet's (``start``/``end`` [ns], None without
    readings), and its rules see the fleet's data :class:`Extent`."""

    step_s: int
    start: int | None = None
    end: int | None = None
    extent: Extent | None = None

    def window(
        self, readings: pd.DataFrame, meters: pd.DataFrame, consume: bool = False, threads: int = 1
    ) -> Window:
        """The dense window of ``readings`` on this grid, as one partition of the fleet
        (``consume``, ``threads``: as :func:`build_window`'s)."""
        w = build_window(
            readings,
            meters,
            step_s=self.step_s,
            start=None if self.start is None else utc(self.start),
            end=None if self.end is None else utc(self.end),
            consume=consume,
            threads=threads,
        )
        w.fleet = self.extent
        return w


def fleet_grid(codes: np.ndarray, t: np.ndarray, max_step_s: int = 900) -> Grid:
    """The grid ``build_window`` chooses for the readings of meter codes ``codes`` (position in
    the sorted registered ids; -1: unregistered) at instants ``t`` [ns] (NO_TIME: none)."""
    keep = (codes >= 0) & (t != NO_TIME)
    c, tt = codes[keep], t[keep]
    if c.size > 1 and not (
        np.all(c[1:] >= c[:-1]) and np.all((tt[1:] > tt[:-1]) | (c[1:] != c[:-1]))
    ):
        _, c, tt = meter_time_sort(c, tt)
    step = choose_step(c, tt, max_step_s)
    if tt.size == 0:
        return Grid(step // _NS)
    g0 = -(-int(tt.min()) // step) * step - step
    g1 = -(-int(tt.max()) // step) * step
    # The reads a window keeps: the latest of each meter's cell.
    col = (tt - g0 - 1) // step
    last_of_cell = np.r_[(c[1:] != c[:-1]) | (col[1:] != col[:-1]), True]
    kept_c, kept_t = c[last_of_cell], tt[last_of_cell]
    new_meter = np.r_[True, kept_c[1:] != kept_c[:-1]]
    lasts = np.sort(kept_t[np.r_[new_meter[1:], True]])
    second = int(lasts[-2]) if lasts.size >= 2 else int(NO_TIME)
    extent = Extent(int(kept_t[new_meter].min()), int(lasts[-1]), (int(lasts[-1]), second))
    return Grid(step // _NS, g0, g1, extent)


def _meter_codes(readings: pd.DataFrame, ids: pd.Index) -> np.ndarray:
    """Per reading row, the position of its meter in ``ids`` (-1: not there)."""
    raw = readings["meter_id"]
    if isinstance(raw.dtype, pd.CategoricalDtype):
        lookup = ids.get_indexer(raw.cat.categories.astype(str))
        cat = raw.cat.codes.to_numpy()
        return np.where(cat >= 0, lookup[np.maximum(cat, 0)], -1).astype(np.int64)
    return ids.get_indexer(raw.astype(str).to_numpy()).astype(np.int64)


@dataclass
class Plan:
    """Partitions of a readings frame, and the fleet grid they share (None: one partition,
    whose own grid is the fleet's)."""

    grid: Grid | None
    parts: Iterator[Partition]
    count: int
    meters: int


def plan(readings: pd.DataFrame, meters: pd.DataFrame, max_meters: int = 20_000) -> Plan:
    """Cut ``readings`` into partitions (:func:`partition_of`) and find the fleet's grid.

    One pass over the rows: each reading's meter code, then one stable sort by partition and
    contiguous slices (readings of unregistered meters are left out; the detectors ignore them).
    Partitions are made one at a time as ``parts`` is iterated. A fleet that is one partition
    is not sorted, and its grid is left to its window (``grid`` None: the window's own grid,
    read from the same readings, is the fleet's).
    """
    canon = _canonical(readings)
    reg = registry_table(meters)
    part_of_meter = partition_of(reg, max_meters)
    ids = pd.Index(np.sort(reg["meter_id"].to_numpy(dtype=object)).astype(object))
    code_part = part_of_meter[pd.Index(reg["meter_id"]).get_indexer(ids)]
    codes = _meter_codes(canon, ids)
    n_parts = int(part_of_meter.max()) + 1 if len(reg) else 0
    grid: Grid | None = None
    if n_parts > 1:
        t = ts_ns(canon["ts"]) if len(canon) else np.zeros(0, dtype=np.int64)
        grid = fleet_grid(codes, t)
        del t
        row_part = np.where(codes >= 0, code_part[np.maximum(codes, 0)], -1)
        # Stable, and a radix sort on 16-bit keys (numpy): partitions number in the hundreds.
        key = row_part.astype(np.int16) if n_parts < np.iinfo(np.int16).max else row_part
        order = np.argsort(key, kind="stable")
        bounds = np.searchsorted(row_part[order], np.arange(n_parts + 1))
        del row_part, key
    else:  # every registered meter's rows, in file order
        order = np.flatnonzero(codes >= 0)
        bounds = np.array([0, order.size] if n_parts else [0])
    coerced_rows: dict[str, np.ndarray] = canon.attrs.get("coerced_rows") or {}
    where: np.ndarray | None = None
    if coerced_rows:  # each row's place in ``order`` (for the rows Arrow could not type)
        where = np.full(len(canon), -1, dtype=np.int64)
        where[order] = np.arange(order.size)

    held = [canon]  # released once the last rows are cut (it may free the frame)
    empty = canon.iloc[:0].copy()  # not a view: it must not keep the columns alive
    n_rows = len(canon)
    del canon

    def parts() -> Iterator[Partition]:
        chunks = reg.groupby(part_of_meter, sort=True)
        for (p, chunk), lo, hi in zip(chunks, bounds[:-1], bounds[1:], strict=True):
            rows = order[lo:hi]
            if lo == hi:
                frame = empty.copy()
            elif hi - lo == n_rows:  # one partition holds every row, in order: no copy
                frame = held[0].copy(deep=False).reset_index(drop=True)
            else:
                frame = held[0].iloc[rows].reset_index(drop=True)
            if hi == bounds[-1]:
                held.clear()
            # The partition's meters (sorted, as the ids are) and each row's among them.
            mine = codes[rows]
            seen = np.zeros(len(ids), dtype=bool)
            seen[mine] = True
            present = np.flatnonzero(seen)
            local = (np.cumsum(seen) - 1)[mine]
            del mine, seen
            frame["meter_id"] = pd.Categorical.from_codes(local, categories=ids[present])
            frame.attrs = {}
            if where is not None:  # set exactly when the file had non-numeric cells
                bad = {c: where[r] for c, r in coerced_rows.items()}
                bad = {c: np.sort(r[(r >= lo) & (r < hi)] - lo) for c, r in bad.items()}
                frame.attrs["coerced_rows"] = {c: r for c, r in bad.items() if r.size}
            piece = Partition(int(p), chunk, frame)
            del frame  # a suspended generator keeps its locals: only the partition holds it
            yield piece

    return Plan(grid, parts(), n_parts, len(reg))


# ------------------------------------------------------------------------------ running


@dataclass
class PartitionResult:
    """What one partition gives back: its findings and its cross-partition partials."""

    index: int
    meters: int
    findings: pd.DataFrame
    partials: dict[str, pd.DataFrame] = field(default_factory=dict)


def _partial_fns(
    detectors: Sequence[Detector], extra: Mapping[str, PartialFn] | None
) -> dict[str, PartialFn]:
    fns: dict[str, PartialFn] = dict(extra or {})
    for d in detectors:
        if isinstance(d, CrossPartition):
            fns.setdefault(d.partial_key, d.partial_window)
    return fns


def run_partition(
    part: Partition,
    detectors: Sequence[Detector],
    grid: Grid | None,
    extra: Mapping[str, PartialFn] | None = None,
    *,
    consume: bool = False,
    threads: int = 1,
) -> PartitionResult:
    """Every detector over ``part`` (a cross-partition one gives its partial), on ``grid``
    (None: the grid of the partition's own readings). ``consume``: the partition's readings
    are let go once the window holds them (``part.readings`` is None after), so their memory
    is freed while the detectors run. ``threads`` > 1: the window is built and the detectors
    run on that many threads (their whole-array numpy work releases the GIL; what they share
    of the window is computed once, :meth:`Window.memo`), for a process that has the cores to
    itself; the findings are the same, in the same order."""
    readings = part.readings
    if consume:
        part.readings = None  # type: ignore[assignment]
    if grid is None:
        w = build_window(readings, part.meters, consume=consume, threads=threads)
    else:
        w = grid.window(readings, part.meters, consume=consume, threads=threads)
    del readings
    if consume:
        release_partition_memory()
    jobs: list[tuple[str, Callable[[Window], Any]]] = [
        (d.shares, d.detect_window) for d in detectors if not isinstance(d, CrossPartition)
    ]
    fns = _partial_fns(detectors, extra)
    share_of = {d.partial_key: d.shares for d in detectors if isinstance(d, CrossPartition)}
    jobs.extend((share_of.get(key, ""), fn) for key, fn in fns.items())
    out = run_jobs(w, jobs, threads)
    n_rules = len(jobs) - len(fns)
    found = concat_findings(out[:n_rules])
    partials = dict(zip(fns, out[n_rules:], strict=True))
    if consume:  # the next partition starts from a heap without this one's holes
        del w, out
        release_partition_memory()
    return PartitionResult(part.index, len(part.meters), found, partials)


def run_jobs(w: Window, jobs: Sequence[tuple[str, Callable[[Window], R]]], threads: int) -> list[R]:
    """``fn(w)`` of every ``(shares, fn)`` job, in job order; on ``threads`` threads when > 1.

    Jobs of one ``shares`` (:attr:`Detector.shares`) form a group whose first job computes
    what the others read: the first jobs of all groups are started first (groups of several
    before lone jobs, in job order), and a group's other jobs become ready once its first one
    has finished, to run on whichever thread is free (no thread waits on another's shared
    computation, and the short jobs fill in behind the long ones). The first failure is
    raised once the running jobs are done; no job starts after it."""
    if threads <= 1 or len(jobs) <= 1:
        return [fn(w) for _, fn in jobs]
    groups: dict[str, list[int]] = {}
    for k, (share, _) in enumerate(jobs):
        groups.setdefault(share or f"#{k}", []).append(k)
    order = sorted(groups.values(), key=len, reverse=True)  # stable: ties keep job order
    ready: deque[int] = deque(g[0] for g in order)
    later = {g[0]: g[1:] for g in order if len(g) > 1}
    out: list[Any] = [None] * len(jobs)
    failed: list[BaseException] = []
    cond = threading.Condition()

    def worker() -> None:
        while True:
            with cond:
                while not ready and later and not failed:
                    cond.wait()  # a first job still running will make its group ready
                if failed or not ready:
                    return
                k = ready.popleft()
            try:
                out[k] = jobs[k][1](w)
            except BaseException as exc:
                with cond:
                    failed.append(exc)
                    cond.notify_all()
                return
            with cond:
                ready.extend(later.pop(k, ()))
                cond.notify_all()

    n = min(threads, len(order))
    with ThreadPoolExecutor(n, thread_name_prefix="rules") as pool:
        for f in [pool.submit(worker) for _ in range(n)]:
            f.result()
    if failed:
        raise failed[0]
    return out


@dataclass
class FleetAnalysis:
    """Findings over the fleet, and every partition's partials by key (partition order)."""

    findings: pd.DataFrame
    partials: dict[str, list[pd.DataFrame]]


def combine(results: Iterable[PartitionResult], detectors: Sequence[Detector]) -> FleetAnalysis:
    """The fleet's findings: each partition's (in partition order), then each cross-partition
    detector's judgement over all partials (in detector order)."""
    ordered = sorted(results, key=lambda r: r.index)
    partials: dict[str, list[pd.DataFrame]] = {}
    for r in ordered:
        for key, frame in r.partials.items():
            partials.setdefault(key, []).append(frame)
    frames = [r.findings for r in ordered]
    for d in detectors:
        if isinstance(d, CrossPartition):
            frames.append(d.combine(partials.get(d.partial_key, [])))
    return FleetAnalysis(concat_findings(frames), partials)


class Runner(Protocol):
    """Where partitions run: ``map(fn, items, *args)`` yields ``fn(item, *args)`` for every
    item, in any order, as each completes; ``items`` is consumed lazily (it bounds memory)."""

    def map(self, fn: Callable[..., R], items: Iterable[T], *args: Any) -> Iterator[R]: ...


class InProcess:
    """Partitions one after the other in this process (the default); each partition's
    detectors on ``threads`` threads (``run_partition``: 1, or a thread per core when this
    process has the machine to itself, as ``meterwatch analyze`` has)."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = max(1, int(threads))

    def map(self, fn: Callable[..., R], items: Iterable[T], *args: Any) -> Iterator[R]:
        for item in items:
            yield fn(item, *args)


def analyze_partitioned(
    detectors: Sequence[Detector],
    readings: pd.DataFrame,
    meters: pd.DataFrame,
    max_meters: int = 20_000,
    runner: Runner | None = None,
    progress: Progress | None = None,
    extra: Mapping[str, PartialFn] | None = None,
) -> FleetAnalysis:
    """Findings of ``detectors`` over ``readings``, partition by partition, on ``runner``.

    ``progress(done_meters, total_meters)`` is called after each partition. ``extra`` names
    further per-partition computations whose results come back in ``partials`` (e.g. the theft
    features for a ranked suspects list). The result does not depend on the runner.
    """
    detectors = list(detectors)
    p = plan(readings, meters, max_meters)
    del readings  # the partitions hold what is needed (a caller may have handed it over)
    runner = runner or InProcess()
    # In this process a partition's readings are let go once its window is built (they are
    # not needed again); a cluster may run a partition again from its input, so keeps it.
    fn = (
        functools.partial(run_partition, consume=True, threads=runner.threads)
        if isinstance(runner, InProcess)
        else run_partition
    )
    results: list[PartitionResult] = []
    done = 0
    for res in runner.map(fn, p.parts, detectors, p.grid, extra):
        results.append(res)
        done += res.meters
        if progress is not None:
            progress(done, p.meters)
    return combine(results, detectors)


def run_partitioned(
    detectors: Sequence[Detector],
    load: Loader,
    meters: pd.DataFrame,
    max_meters: int = 50_000,
    progress: Progress | None = None,
    grid: Grid | None = None,
) -> pd.DataFrame:
    """Run ``detectors`` partition by partition; ``load(meter_ids)`` returns their readings.

    For readings that come from a store query per partition (memory bounded by the partition).
    Without ``grid`` each partition's window has the grid of its own readings.
    """
    detectors = list(detectors)
    chunks = list(iter_partitions(meters, max_meters))
    parts = (
        Partition(k, chunk, load(chunk["meter_id"].tolist())) for k, chunk in enumerate(chunks)
    )
    results: list[PartitionResult] = []
    done = 0
    # Each partition's readings are its own (loaded for it): let go once its window is built.
    for res in InProcess().map(
        functools.partial(run_partition, consume=True), parts, detectors, grid
    ):
        results.append(res)
        done += res.meters
        if progress is not None:
            progress(done, len(meters))
    return combine(results, detectors).findings
