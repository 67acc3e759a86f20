"""Canonical data contracts shared by every package (contracts.md §1-§3)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

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

VOLTAGE_COLUMNS = ("voltage_l1_v", "voltage_l2_v", "voltage_l3_v")
CURRENT_COLUMNS = ("current_l1_a", "current_l2_a", "current_l3_a")

#: Timestamp dtype used everywhere in memory: UTC, nanosecond precision.
TS_DTYPE = "datetime64[ns, UTC]"

#: Alert type -> category (contracts §3 catalogue).
ALERT_CATEGORIES: dict[str, str] = {
    **dict.fromkeys(("consumption_spike", "consumption_drop", "zero_consumption"), "consumption"),
    **dict.fromkeys(("theft_suspected", "transformer_loss"), "theft"),
    **dict.fromkeys(
        (
            "register_decrease",
            "meter_stuck",
            "meter_runaway",
            "energy_power_mismatch",
            "multiplier_mismatch",
            "clock_error",
            "estimation_excess",
        ),
        "billing",
    ),
    **dict.fromkeys(
        (
            "voltage_loss",
            "phase_break",
            "current_loss",
            "overvoltage",
            "undervoltage",
            "voltage_unbalance",
            "current_unbalance",
            "reverse_power",
            "low_power_factor",
            "frequency_deviation",
            "outage",
            "transformer_overload",
            "calibration_due",
        ),
        "equipment",
    ),
    **dict.fromkeys(("missing_data", "meter_offline", "duplicate_reading"), "data_quality"),
}
SEVERITIES: tuple[str, ...] = ("critical", "major", "minor", "warning", "info")
ALERT_STATUSES: tuple[str, ...] = ("open", "acknowledged", "resolved")

#: Columns of a findings frame: what a detector returns and the alert manager consumes.
#: ``starts_at``/``ends_at`` are UTC timestamps; ``ends_at`` is NaT while the condition holds.
#: ``meter_id`` is None for transformer-level findings. ``evidence`` holds a dict per row.
FINDING_COLUMNS: tuple[str, ...] = (
    "type",
    "severity",
    "meter_id",
    "transformer_id",
    "starts_at",
    "ends_at",
    "summary",
    "evidence",
)


def to_utc(values: pd.Series) -> pd.Series:
    """Parse timestamps (ISO 8601 text, epoch-free datetimes, aware or naive=UTC) to TS_DTYPE."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return pd.to_datetime(values, utc=True).astype(TS_DTYPE)
    return pd.to_datetime(values, utc=True, format="ISO8601").astype(TS_DTYPE)


def empty_readings() -> pd.DataFrame:
    """An empty canonical reading frame with the right dtypes."""
    return normalize_readings(pd.DataFrame(columns=list(READING_COLUMNS)))


def normalize_readings(df: pd.DataFrame) -> pd.DataFrame:
    """Return ``df`` with exactly the canonical columns, in order, with canonical dtypes.

    Missing quantity columns are added as NaN; extra columns are dropped. ``ts`` is parsed as
    UTC (naive timestamps are taken to be UTC already).
    """
    n = len(df)
    cols: dict[str, object] = {}
    cols["meter_id"] = (
        df["meter_id"].astype(str).to_numpy() if "meter_id" in df else np.array([], dtype=str)
    )
    # .array keeps tz-aware timestamps vectorized (.to_numpy() would box them as objects).
    cols["ts"] = to_utc(df["ts"]).array if "ts" in df else pd.Series(dtype=TS_DTYPE)
    for col in READING_FIELDS:
        if col not in df:
            cols[col] = np.full(n, np.nan)
        elif df[col].dtype == np.float64:
            cols[col] = df[col].to_numpy()
        else:
            cols[col] = pd.to_numeric(df[col], errors="coerce").to_numpy(
                dtype="float64", na_value=np.nan
            )
    out = pd.DataFrame(cols)
    out["ts"] = out["ts"].astype(TS_DTYPE) if n else pd.Series(dtype=TS_DTYPE)
    return out


def readings_from_records(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Build a canonical frame from dict-like records (unknown keys ignored)."""
    return normalize_readings(pd.DataFrame.from_records(list(records)))


def empty_findings() -> pd.DataFrame:
    """An empty findings frame with the canonical columns."""
    df = pd.DataFrame({c: pd.Series(dtype=object) for c in FINDING_COLUMNS})
    df["starts_at"] = pd.Series(dtype=TS_DTYPE)
    df["ends_at"] = pd.Series(dtype=TS_DTYPE)
    return df
