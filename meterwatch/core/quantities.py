"""Names of the canonical reading columns (contracts.md §1), importable without pandas.

The lean MQTT ingest process (meterwatch/ingest.py) decodes and encodes readings with these
names only; :mod:`meterwatch.core.schema` re-exports them next to the frame helpers.
"""

from __future__ import annotations

#: Measured quantities of a canonical reading, in contract order, with their units.
READING_FIELDS: tuple[str, ...] = (
    "energy_import_kwh",
    "energy_export_kwh",
    "power_kw",
    "reactive_power_kvar",
    "voltage_l1_v",
    "voltage_l2_v",
    "voltage_l3_v",
    "current_l1_a",
    "current_l2_a",
    "current_l3_a",
    "power_factor",
    "frequency_hz",
)
#: All columns of a canonical reading frame.
READING_COLUMNS: tuple[str, ...] = ("meter_id", "ts", *READING_FIELDS)
#: Optional timestamps a reading may carry besides ``ts`` (UTC; issue #3 item 7):
#: ``collected_at`` when the collector got the values, ``device_ts`` the meter's own clock.
#: Stored by every backend (docs/storage-schema.md); not part of the canonical columns.
READING_TIME_COLUMNS: tuple[str, ...] = ("collected_at", "device_ts")
#: A missing instant in int64 nanosecond time arrays (numpy's NaT: the int64 minimum).
NO_TIME: int = -(1 << 63)
