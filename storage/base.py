"""The reading-store interface every backend implements (embedded DuckDB, InfluxDB)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

import pandas as pd


@runtime_checkable
class ReadingStore(Protocol):
    """Durable time-series storage of canonical readings (contracts §1).

    ``write_readings`` returns only once the rows are durably stored (so that callers may then
    acknowledge them upstream). Writing the same (meter_id, ts) twice is harmless: reads return
    one row per (meter_id, ts), the last written.
    """

    def write_readings(self, df: pd.DataFrame) -> int:
        """Store a canonical reading frame; return the number of rows written."""
        ...

    def read_readings(
        self,
        meter_ids: Sequence[str] | None = None,
        start: datetime | pd.Timestamp | None = None,
        end: datetime | pd.Timestamp | None = None,
        *,
        include_times: bool = False,
    ) -> pd.DataFrame:
        """Canonical frame of readings with ``start <= ts < end``, sorted by meter_id, ts.

        ``include_times`` adds ``collected_at`` and ``device_ts`` (NaT where not stored).
        """
        ...

    def close(self) -> None:
        """Release files and connections."""
        ...


@runtime_checkable
class RecordStore(Protocol):
    """The other measurements (docs/storage-schema.md), implemented by both backends."""

    def write_validated_readings(self, df: pd.DataFrame, written_at: datetime | None = None) -> int:
        """Store validated intervals as a new data version; return the version."""
        ...

    def read_validated_readings(
        self,
        meter_ids: Sequence[str] | None = None,
        start: datetime | pd.Timestamp | None = None,
        end: datetime | pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """Latest version of each validated interval with ``start <= ts < end``."""
        ...

    def write_alert_events(self, df: pd.DataFrame) -> int:
        """Store alert state changes; return rows written."""
        ...

    def write_collector_health(self, df: pd.DataFrame) -> int:
        """Store a collector health snapshot; return rows written."""
        ...
