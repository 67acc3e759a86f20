"""Which readings InfluxDB already has: a bounded window of (meter, second) -> values.

InfluxDB keeps one point per series and timestamp and silently overwrites it: a redelivered
reading (QoS 1 is at least once) is harmless there, but a *different* value for the same meter
and time would replace the stored one without a trace. Before a batch is spooled for InfluxDB,
:class:`RecentReadings` sorts its rows into new readings, exact repeats (skipped, counted
``readings_duplicate``) and conflicts (another value than the one already written: kept apart
in the ``reading_conflicts`` measurement and counted ``readings_conflicting``), as the embedded
store does with its ``reading_conflicts`` table.

The window holds the last ``capacity`` readings spooled. Its keys are stored in the spool file
in the same transaction as the batch (:meth:`storage.spool.Spool.append_encoded`), so a restart
after ``kill -9`` still knows what it wrote before. A repeat older than the window is written
again (the same value: InfluxDB's overwrite is idempotent), and a conflict older than the
window is not detected: size ``storage.spool.dedup_window`` to the redelivery horizon (the
broker's in-flight window plus what the collector holds, a few times over).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np

#: Verdicts of :meth:`RecentReadings.judge`.
NEW, DUPLICATE, CONFLICT = 0, 1, 2


def _h64(data: bytes) -> int:
    """A stable signed 64-bit hash (the same in every process, unlike ``hash``; SQLite INTEGER)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


class RecentReadings:
    """The last ``capacity`` readings written: key (meter, epoch second) -> value fingerprint."""

    def __init__(self, capacity: int = 200_000):
        self.capacity = capacity
        self._seen: OrderedDict[int, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def load(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Remember ``(key, fingerprint)`` pairs, oldest first (what the spool file kept)."""
        for key, fp in pairs:
            self._seen[key] = fp
            self._seen.move_to_end(key)
        self._trim()

    def judge(
        self, meters: Sequence[str], seconds: np.ndarray, values: np.ndarray
    ) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Verdict per row (:data:`NEW`, :data:`DUPLICATE`, :data:`CONFLICT`) and the
        ``(key, fingerprint)`` of the new rows, to be remembered once they are durable
        (:meth:`load`). Rows are judged in order: within the batch too, the first value of a
        key is the one kept."""
        n = len(meters)
        verdict = np.zeros(n, dtype=np.int8)
        if n == 0:
            return verdict, []
        # NaN has several bit patterns; one canonical NaN so equal readings hash alike.
        canon = np.where(np.isnan(values), np.nan, values + 0.0)  # + 0.0: -0.0 -> 0.0
        rows = canon.tobytes()
        width = canon.shape[1] * 8
        seen = self._seen
        batch: dict[int, int] = {}
        new: list[tuple[int, int]] = []
        for i, (meter, sec) in enumerate(zip(meters, seconds.tolist(), strict=True)):
            key = _h64(f"{meter}\x00{sec}".encode())
            fp = _h64(rows[i * width : (i + 1) * width])
            old = batch.get(key)
            if old is None:
                old = seen.get(key)
            if old is None:
                batch[key] = fp
                new.append((key, fp))
            elif old == fp:
                verdict[i] = DUPLICATE
            else:
                verdict[i] = CONFLICT
        return verdict, new

    def _trim(self) -> None:
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
