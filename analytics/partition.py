"""Partitioned analytics: run detectors over bounded groups of whole transformer areas.

Memory then grows with the partition, not the fleet; time grows linearly with the fleet. Areas
are never split, so area-level rules (line loss, outage) see every meter of an area. Partitions
are independent, so :func:`analyze_partitioned` can run them in worker processes (one per
core) while the parent hands out the next partition; at most ``workers + 1`` partitions are in
flight, which bounds memory.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np
import pandas as pd

from meterwatch.analytics.base import Detector
from meterwatch.analytics.suite import run_detectors
from meterwatch.core.schema import empty_findings

Loader = Callable[[list[str]], pd.DataFrame]
Progress = Callable[[int, int], None]


def partition_of(meters: pd.DataFrame, max_meters: int) -> pd.Series:
    """Partition number of every registry row: whole areas, at most ``max_meters`` each.

    Areas are packed greedily in sorted order (partition = floor(cumulative size / max)); an
    area larger than ``max_meters`` forms a partition of its own.
    """
    if max_meters < 1:
        raise ValueError(f"max_meters must be >= 1, got {max_meters}")
    sizes = meters.groupby("transformer_id", sort=True).size()
    cum = np.cumsum(sizes.to_numpy())
    part_of_area = pd.Series((cum - 1) // max_meters, index=sizes.index)
    return meters["transformer_id"].map(part_of_area)


def iter_partitions(meters: pd.DataFrame, max_meters: int) -> Iterator[pd.DataFrame]:
    """Registry slices of whole transformer areas with at most ``max_meters`` meters each."""
    part = partition_of(meters, max_meters)
    for _, chunk in meters.groupby(part, sort=True):
        yield chunk


def split_readings(
    readings: pd.DataFrame, meters: pd.DataFrame, max_meters: int
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """``(registry chunk, its readings)`` per partition, splitting the readings once.

    One stable sort of the rows by partition, then contiguous slices: O(rows log rows) in all,
    instead of one full scan per partition. Readings of meters not in the registry are left out
    (detectors ignore them anyway).
    """
    part = partition_of(meters, max_meters)
    ids = meters["meter_id"].astype(str)
    first = ~ids.duplicated(keep="first").to_numpy()
    row_part = pd.Index(ids[first]).get_indexer(readings["meter_id"].astype(str))
    row_part = np.where(row_part >= 0, part.to_numpy()[first][np.maximum(row_part, 0)], -1)
    order = np.argsort(row_part, kind="stable")
    sorted_part = row_part[order]
    for p, chunk in meters.groupby(part, sort=True):
        lo, hi = np.searchsorted(sorted_part, [p, p + 1])
        yield chunk, readings.iloc[order[lo:hi]]


def _run(detectors: Sequence[Detector], readings: pd.DataFrame, meters: pd.DataFrame):  # noqa: ANN202
    return run_detectors(detectors, readings, meters), len(meters)


def analyze_partitioned(
    detectors: Sequence[Detector],
    readings: pd.DataFrame,
    meters: pd.DataFrame,
    max_meters: int = 20_000,
    workers: int = 1,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Findings of ``detectors`` over ``readings``, partition by partition, on ``workers`` processes.

    ``progress(done_meters, total_meters)`` is called after each partition. With ``workers``
    1 everything runs in this process. Results do not depend on ``workers``: findings are
    concatenated in partition order.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    parts = split_readings(readings, meters, max_meters)
    frames: list[pd.DataFrame] = []
    done = 0
    total = len(meters)
    if workers == 1:
        for chunk, rows in parts:
            found, n = _run(detectors, rows, chunk)
            frames.append(found)
            done += n
            if progress is not None:
                progress(done, total)
    else:
        # fork shares the imported modules; spawn would re-import pandas in every worker.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        ctx = multiprocessing.get_context(method)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            pending: list[Future] = []
            for chunk, rows in parts:
                pending.append(pool.submit(_run, detectors, rows, chunk))
                while len(pending) > workers:  # bound partitions in flight (memory)
                    found, n = pending.pop(0).result()
                    frames.append(found)
                    done += n
                    if progress is not None:
                        progress(done, total)
            for fut in pending:
                found, n = fut.result()
                frames.append(found)
                done += n
                if progress is not None:
                    progress(done, total)
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else empty_findings()


def run_partitioned(
    detectors: Sequence[Detector],
    load: Loader,
    meters: pd.DataFrame,
    max_meters: int = 50_000,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Run ``detectors`` partition by partition; ``load(meter_ids)`` returns their readings.

    For readings that come from a store query per partition (memory bounded by the partition).
    """
    frames = []
    done = 0
    for chunk in iter_partitions(meters, max_meters):
        ids = chunk["meter_id"].tolist()
        found = run_detectors(detectors, load(ids), chunk)
        if len(found):
            frames.append(found)
        done += len(chunk)
        if progress is not None:
            progress(done, len(meters))
    return pd.concat(frames, ignore_index=True) if frames else empty_findings()
