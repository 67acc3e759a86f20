"""Partitioned analytics: run detectors over bounded groups of whole transformer areas.

Memory then grows with the partition, not the fleet; time grows linearly with the fleet. Areas
are never split, so area-level rules (line loss, outage) see every meter of an area.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from analytics.base import Detector
from analytics.suite import run_detectors
from meterwatch.schema import empty_findings

Loader = Callable[[list[str]], pd.DataFrame]


def iter_partitions(meters: pd.DataFrame, max_meters: int) -> Iterator[pd.DataFrame]:
    """Registry slices of whole transformer areas with at most ``max_meters`` meters each.

    An area larger than ``max_meters`` forms a partition of its own.
    """
    if max_meters < 1:
        raise ValueError(f"max_meters must be >= 1, got {max_meters}")
    sizes = meters.groupby("transformer_id", sort=True).size()
    # Greedy packing over areas in order: partition number = floor(cumulative size / max).
    cum = np.cumsum(sizes.to_numpy())
    part_of_area = pd.Series((cum - 1) // max_meters, index=sizes.index)
    part = meters["transformer_id"].map(part_of_area)
    for _, chunk in meters.groupby(part, sort=True):
        yield chunk


def run_partitioned(
    detectors: Sequence[Detector],
    load: Loader,
    meters: pd.DataFrame,
    max_meters: int = 50_000,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Run ``detectors`` partition by partition; ``load(meter_ids)`` returns their readings."""
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
