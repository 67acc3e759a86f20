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
from collections.abc import Iterable, Sequence

import numpy as np

#: Verdicts of :meth:`RecentReadings.judge`.
NEW, DUPLICATE, CONFLICT = 0, 1, 2


def _h64(data: bytes) -> int:
    """A stable signed 64-bit hash (the same in every process, unlike ``hash``; SQLite INTEGER)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


class RecentReadings:
    """The last ``capacity`` readings written: key (meter, epoch second) -> value fingerprint.

    Kept compact, 16 bytes a reading: generations of sorted key and fingerprint arrays (one per
    batch remembered, the small ones merged), looked up with a binary search per generation;
    the oldest generation is dropped once the window holds more than ``capacity``.
    """

    #: Generations kept before the oldest ones are merged (bounds the lookups per batch).
    MAX_GENERATIONS = 12

    def __init__(self, capacity: int = 200_000):
        self.capacity = capacity
        self._gens: list[tuple[np.ndarray, np.ndarray]] = []  # oldest first, keys sorted

    def __len__(self) -> int:
        return sum(len(k) for k, _ in self._gens)

    def load(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Remember ``(key, fingerprint)`` pairs, oldest first (what the spool file kept)."""
        pairs = list(pairs)
        if not pairs or not self.capacity:
            return
        arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)[-self.capacity :]
        order = np.argsort(arr[:, 0], kind="stable")
        self._gens.append((arr[order, 0].copy(), arr[order, 1].copy()))
        while len(self) - len(self._gens[0][0]) >= self.capacity:
            self._gens.pop(0)  # the window without the oldest generation is still full
        if len(self._gens) > self.MAX_GENERATIONS:
            (k1, f1), (k2, f2) = self._gens[0], self._gens[1]
            keys, fps = np.concatenate([k1, k2]), np.concatenate([f1, f2])
            order = np.argsort(keys, kind="stable")
            self._gens[:2] = [(keys[order], fps[order])]

    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        """Fingerprint remembered for each key, newest generation first; 0 where none."""
        found = np.zeros(len(keys), dtype=np.int64)
        missing = np.ones(len(keys), dtype=bool)
        for gen_keys, gen_fps in reversed(self._gens):
            if not missing.any():
                break
            pos = np.searchsorted(gen_keys, keys)
            pos[pos >= len(gen_keys)] = 0
            hit = missing & (gen_keys[pos] == keys) if len(gen_keys) else missing & False
            found[hit] = gen_fps[pos[hit]]
            missing &= ~hit
        return found

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
        keys = [_h64(f"{m}\x00{s}".encode()) for m, s in zip(meters, seconds.tolist(), strict=True)]
        fps = [_h64(rows[i * width : (i + 1) * width]) for i in range(n)]
        stored = self._lookup(np.array(keys, dtype=np.int64)).tolist() if self._gens else [0] * n
        batch: dict[int, int] = {}
        new: list[tuple[int, int]] = []
        for i, (key, fp, old) in enumerate(zip(keys, fps, stored, strict=True)):
            first = batch.get(key)
            if first is not None:
                old = first
            if not old:  # 0: never seen (a real fingerprint of 0 is one in 2**64)
                batch[key] = fp
                new.append((key, fp))
            elif old == fp:
                verdict[i] = DUPLICATE
            else:
                verdict[i] = CONFLICT
        return verdict, new
