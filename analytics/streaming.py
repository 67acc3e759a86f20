"""Streaming detection: streaming-cadence detectors on every stored batch, with a per-meter tail.

Rules that need several consecutive readings (``min_readings``, e.g. 4 for unbalance) see each
batch together with every meter's last ``min_readings - 1`` readings kept from earlier batches,
so the alert comes with the reading that completes the episode, not at the next analytics run.
Kept readings older than that many read spacings before the batch are dropped, so a meter back
from a long gap starts afresh.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from meterwatch.analytics.base import Detector
from meterwatch.analytics.suite import concat_findings, run_detectors
from meterwatch.core.schema import empty_findings


class StreamingDetection:
    """Runs ``detectors`` on each batch with the tail of earlier batches.

    ``spacing_s`` is the longest normal spacing of a meter's reads [s] (``vee.interval`` x
    ``vee.max_read_spacing_intervals`` in the service).
    """

    def __init__(self, detectors: Sequence[Detector], spacing_s: float):
        self.detectors = list(detectors)
        self.spacing_s = float(spacing_s)
        #: Readings kept per meter between batches.
        self.keep = max((int(getattr(d, "min_readings", 1)) for d in self.detectors), default=1) - 1
        self.tail: pd.DataFrame | None = None

    @property
    def horizon_s(self) -> float:
        """How far back before a batch kept readings still count [s]: ``(keep + 1)`` read
        spacings; older ones never form one episode with the batch."""
        return (self.keep + 1) * self.spacing_s

    def window(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The batch with the kept tail in front of it; updates the tail."""
        tail = self.tail
        if self.keep > 0 and tail is not None and len(tail) and len(frame):
            horizon = pd.Timedelta(seconds=self.horizon_s)
            newest = pd.to_datetime(frame["ts"], utc=True).max()
            tail = tail[pd.to_datetime(tail["ts"], utc=True) >= newest - horizon]
            window = pd.concat([tail, frame], ignore_index=True)
        else:
            window = frame
        if self.keep > 0 and len(window):
            ordered = window.assign(_t=pd.to_datetime(window["ts"], utc=True)).sort_values(
                ["meter_id", "_t"], kind="stable"
            )
            self.tail = (
                ordered.groupby("meter_id", sort=False).tail(self.keep).drop(columns="_t")
            ).reset_index(drop=True)
        return window

    def detect(self, frame: pd.DataFrame, meters: pd.DataFrame) -> pd.DataFrame:
        """Findings of conditions still present at the end of the batch (ends_at NaT).

        An episode that ended within one batch is left to the interval run.
        """
        if not self.detectors:
            return empty_findings()
        window = self.window(frame)
        parts = [run_detectors(self.detectors, part, meters) for part in self.segments(window)]
        findings = concat_findings(parts) if len(parts) > 1 else parts[0]
        return findings[findings["ends_at"].isna()].reset_index(drop=True)

    def segments(self, window: pd.DataFrame) -> list[pd.DataFrame]:
        """The window cut where no reading falls for longer than the kept horizon
        (``(keep + 1) x spacing_s``): readings that far apart never form one episode, and a
        batch mixing a backfill of last month with this minute's reads must not become one
        dense grid of a month at the read spacing. Segments are few (one per time cluster)."""
        if len(window) == 0:
            return [window]
        t = pd.to_datetime(window["ts"], utc=True).to_numpy(dtype="datetime64[ns]").astype(np.int64)
        order = np.argsort(t, kind="stable")
        ts = t[order]
        horizon = int(self.horizon_s * 1e9)
        cuts = np.flatnonzero(np.diff(ts) > horizon) + 1
        if cuts.size == 0:
            return [window]
        return [window.iloc[np.sort(idx)] for idx in np.split(order, cuts)]
