"""Line protocol of readings given as arrays: the encoder core, importable without pandas.

:func:`storage.line_protocol.encode_readings` (frames, registry tags) and the lean MQTT ingest
path (:class:`ColumnBatch`, decoded columns, no pandas in the process) both end here, so a
reading is written as the same line whichever path took it.

Cost per batch, not per value: rows are grouped by which fields they carry, and each group is
formatted with one ``%``-template per row (floats by ``repr``, Python's shortest round-trip
text, so the value read back is bit-for-bit the one written).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from meterwatch.core.quantities import READING_FIELDS

#: Default measurement for canonical readings (docs/storage-schema.md).
MEASUREMENT = "readings"
#: Where readings that disagree with one already written for the same meter and second go
#: (docs/storage-schema.md): InfluxDB would silently overwrite them in ``readings``.
CONFLICTS_MEASUREMENT = "reading_conflicts"

#: ColumnBatch.device_seconds of a reading without a device time (its line omits device_ts).
NO_TIME = np.iinfo(np.int64).min

_TAG_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\r": " ", "\n": " "})
_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ ", "\r": " ", "\n": " "})


def escape_tag_text(text: str) -> str:
    """A tag key or value: commas, equals signs and spaces escaped; CR/LF become a space."""
    return text.translate(_TAG_ESCAPES)


def escape_measurement_text(text: str) -> str:
    """A measurement name: commas and spaces escaped; CR/LF become a space."""
    return text.translate(_MEASUREMENT_ESCAPES)


def encode_rows(
    keys: Sequence[str] | np.ndarray,
    values: np.ndarray,
    seconds: Sequence[int] | np.ndarray,
    extra: Sequence[tuple[str, np.ndarray, np.ndarray]] = (),
) -> list[str]:
    """One line per row, in row order: ``<key> <fields> <seconds>``.

    ``keys`` is each row's series key (measurement and escaped tags); ``values`` the rows'
    canonical quantities (rows x :data:`READING_FIELDS`, float64, NaN = absent; every row must
    carry one at least); ``seconds`` the rows' whole epoch seconds; ``extra`` integer fields as
    ``(name, epoch seconds per row, mask of rows that have it)`` (``collected_at``,
    ``device_ts``).
    """
    n = len(keys)
    if n == 0:
        return []
    keys_arr = np.asarray(keys, dtype=object)
    secs = np.asarray(seconds, dtype=np.int64)
    names = list(READING_FIELDS)
    bits = ~np.isnan(values)
    for name, _, has in extra:
        bits = np.column_stack([bits, has])
        names.append(name)
    # Bit pattern per row: which quantities, then which optional times it carries.
    weights = (1 << np.arange(bits.shape[1], dtype=np.int64)).astype(np.int64)
    pattern = bits.astype(np.int64) @ weights
    nfields = len(READING_FIELDS)
    out: list[str] = [""] * n
    groups = np.unique(pattern).tolist()
    for p in groups:
        sel = np.flatnonzero(pattern == p) if len(groups) > 1 else np.arange(n)
        cols_on = [j for j in range(len(names)) if p >> j & 1]
        parts = [f"{names[j]}=%r" if j < nfields else f"{names[j]}=%di" for j in cols_on]
        template = "%s " + ",".join(parts) + " %d"
        args: list[list[object]] = [keys_arr[sel].tolist()]
        for j in cols_on:
            if j < nfields:
                args.append(values[sel, j].tolist())
            else:
                args.append(extra[j - nfields][1][sel].tolist())
        args.append(secs[sel].tolist())
        lines = [template % a for a in zip(*args, strict=True)]
        if len(groups) == 1:
            return lines
        for i, line in zip(sel.tolist(), lines, strict=True):
            out[i] = line
    return out


@dataclass
class ColumnBatch:
    """Decoded readings as columns, without pandas (the lean MQTT ingest path).

    ``values`` is rows x :data:`READING_FIELDS` (float64, NaN = absent); ``seconds`` the
    readings' ``ts`` and ``device_seconds`` their device clock (:data:`NO_TIME`: none), in whole
    epoch seconds (floored);
    ``collected_at`` the epoch second each was received.
    """

    meter_id: list[str]
    seconds: np.ndarray
    device_seconds: np.ndarray
    values: np.ndarray
    collected_at: np.ndarray

    def __len__(self) -> int:
        return len(self.meter_id)

    @staticmethod
    def concat(batches: Sequence[ColumnBatch]) -> ColumnBatch:
        """One batch of several, in order."""
        if len(batches) == 1:
            return batches[0]
        return ColumnBatch(
            [m for b in batches for m in b.meter_id],
            np.concatenate([b.seconds for b in batches]),
            np.concatenate([b.device_seconds for b in batches]),
            np.concatenate([b.values for b in batches]),
            np.concatenate([b.collected_at for b in batches]),
        )


class ColumnEncoder:
    """Line protocol of :class:`ColumnBatch` rows with the ``meter_id`` tag only (no registry),
    exactly as :func:`storage.line_protocol.encode_readings` writes the same readings."""

    def __init__(self, measurement: str = MEASUREMENT):
        self.measurement = measurement
        self._keys: dict[tuple[str, str], str] = {}

    def key(self, measurement: str, meter_id: str) -> str:
        k = (measurement, meter_id)
        key = self._keys.get(k)
        if key is None:
            if len(self._keys) >= 1_000_000:  # bounded: meters come and go
                self._keys.clear()
            key = f"{escape_measurement_text(measurement)},meter_id={escape_tag_text(meter_id)}"
            self._keys[k] = key
        return key

    def encode(
        self,
        batch: ColumnBatch,
        rows: np.ndarray,
        measurement: str | None = None,
        detected_at: int | None = None,
    ) -> list[str]:
        """Lines of ``batch``'s ``rows`` (indices), in the ``measurement`` given or the
        encoder's; ``detected_at`` [epoch s] adds that integer field (the conflicts measurement)."""
        name = measurement or self.measurement
        keys = [self.key(name, batch.meter_id[i]) for i in rows.tolist()]
        n = len(keys)
        extra = [
            ("collected_at", batch.collected_at[rows], np.ones(n, dtype=bool)),
            ("device_ts", batch.device_seconds[rows], batch.device_seconds[rows] != NO_TIME),
        ]
        if detected_at is not None:
            extra.append(("detected_at", np.full(n, detected_at, np.int64), np.ones(n, bool)))
        return encode_rows(keys, batch.values[rows], batch.seconds[rows], extra)
