"""Canonical data contracts shared by every package (contracts.md §1-§3)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from meterwatch.core.quantities import (  # noqa: F401  (re-exported)
    READING_COLUMNS,
    READING_FIELDS,
    READING_TIME_COLUMNS,
)

VOLTAGE_COLUMNS = ("voltage_l1_v", "voltage_l2_v", "voltage_l3_v")
CURRENT_COLUMNS = ("current_l1_a", "current_l2_a", "current_l3_a")

#: Timestamp dtype used everywhere in memory: UTC, nanosecond precision.
TS_DTYPE = "datetime64[ns, UTC]"

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
    return pd.to_datetime(_numbers_as_text(values), utc=True, format="ISO8601").astype(TS_DTYPE)


def _numbers_as_text(values: pd.Series) -> pd.Series:
    """Numbers as text, so they are read as ISO 8601 (20260105 is a basic-format date).

    pandas 4 will read numbers given with a format as epochs; passing them as text keeps the
    one reading. NaN stays missing; booleans are left as they are (refused by the parser).
    """
    if pd.api.types.is_bool_dtype(values):
        return values
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("string")
    if values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) not in (
        "string",
        "empty",
        "datetime",
        "date",
    ):  # mixed: numbers among text (infer_dtype is one fast pass; text-only skips the rest)
        num = pd.to_numeric(values, errors="coerce").notna().to_numpy()
        if num.any():
            num = num & ~values.map(type).eq(bool).to_numpy()
        if num.any():
            values = values.copy()
            values[num] = values[num].astype(str)
    return values


def to_utc_coerce(values: pd.Series) -> pd.Series:
    """Parse the optional :data:`READING_TIME_COLUMNS` like ``ts`` (ISO 8601), unparsable -> NaT."""
    return pd.to_datetime(
        _numbers_as_text(values), utc=True, format="ISO8601", errors="coerce"
    ).astype(TS_DTYPE)


def empty_readings() -> pd.DataFrame:
    """An empty canonical reading frame with the right dtypes."""
    return normalize_readings(pd.DataFrame(columns=list(READING_COLUMNS)))


def normalize_readings(df: pd.DataFrame) -> pd.DataFrame:
    """Return ``df`` with exactly the canonical columns, in order, with canonical dtypes.

    Missing quantity columns are added as NaN; extra columns are dropped. ``ts`` is parsed as
    UTC (naive timestamps are taken to be UTC already).

    A quantity value that is not a number (e.g. ``"1,5"`` or ``"err"`` in a CSV) becomes NaN and
    is counted, never dropped silently: ``out.attrs["coerced"]`` maps each column to how many
    values were turned into NaN (empty when none), and ``out.attrs["coerced_examples"]`` holds
    up to :data:`COERCED_EXAMPLES` of them per column as ``{"row", "meter_id", "ts", "value"}``
    (``row`` is the 0-based position in ``df``). Empty strings and NaN spellings (``nan``,
    ``NA``, ``null`` ...) are missing values, not coercions. Float columns skip the check.
    ``out.attrs["coerced_rows"]`` maps each such column to the 0-based positions of every
    coerced value (for the data-quality rules).
    """
    n = len(df)
    cols: dict[str, object] = {}
    coerced: dict[str, int] = {}
    bad_rows: dict[str, np.ndarray] = {}
    all_bad: dict[str, np.ndarray] = {}
    if "meter_id" not in df:
        cols["meter_id"] = np.array([], dtype=str)
    elif isinstance(df["meter_id"].dtype, pd.CategoricalDtype):
        # Categorical ids (a file read keeps them so: each id once) stay categorical, with
        # text categories; missing ids become the text "nan", as astype(str) makes them.
        ids = df["meter_id"].cat.rename_categories(lambda c: str(c))
        if ids.isna().any():
            ids = ids.cat.add_categories(["nan"]).fillna("nan")
        cols["meter_id"] = ids.reset_index(drop=True)
    else:
        # Series keep pandas' string storage (no round trip through Python objects) and are
        # shared with the input only until either side is written to (copy-on-write).
        cols["meter_id"] = df["meter_id"].astype(str).reset_index(drop=True)
    cols["ts"] = (
        to_utc(df["ts"]).reset_index(drop=True) if "ts" in df else pd.Series(dtype=TS_DTYPE)
    )
    for col in READING_FIELDS:
        if col not in df:
            cols[col] = np.full(n, np.nan)
        elif df[col].dtype == np.float64:
            # The Series itself: shared with the input until either side is written to
            # (copy-on-write), where a bare array view of it would be read-only.
            cols[col] = df[col].reset_index(drop=True)
        else:
            raw = df[col]
            values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            if not values.flags.writeable:  # a view of the input: the frame must own its data
                values = values.copy()
            cols[col] = values
            if not pd.api.types.is_numeric_dtype(raw.dtype):
                bad = _coerced_mask(raw, values)
                if bad is not None:
                    coerced[col] = int(bad.sum())
                    all_bad[col] = np.flatnonzero(bad)
                    bad_rows[col] = all_bad[col][:COERCED_EXAMPLES]
    out = pd.DataFrame(cols, copy=False)  # no consolidating copy of the float columns
    out["ts"] = out["ts"].astype(TS_DTYPE) if n else pd.Series(dtype=TS_DTYPE)
    out.attrs["coerced"] = coerced
    out.attrs["coerced_rows"] = all_bad
    out.attrs["coerced_examples"] = {
        col: [
            {
                "row": int(i),
                "meter_id": out["meter_id"].iat[i],
                "ts": out["ts"].iat[i],
                "value": df[col].iat[i],
            }
            for i in rows  # at most COERCED_EXAMPLES per column, only when some were coerced
        ]
        for col, rows in bad_rows.items()
    }
    return out


#: Offending values kept per column in ``attrs["coerced_examples"]`` by normalize_readings.
COERCED_EXAMPLES = 5
#: Texts that spell a missing value (compared stripped and lower-cased); not counted as coerced.
_MISSING_TEXT = frozenset({"", "nan", "na", "n/a", "null", "none", "<na>"})


def _coerced_mask(raw: pd.Series, values: np.ndarray) -> np.ndarray | None:
    """Rows where ``raw`` held a value that ``pd.to_numeric`` turned into NaN (None: no such row)."""
    candidate = np.isnan(values) & raw.notna().to_numpy()
    if not candidate.any():
        return None
    # Only the NaN rows are looked at again (few, usually none): is the text a missing-value spelling?
    text = raw[candidate].astype(str).str.strip().str.lower()
    candidate[candidate] = ~text.isin(_MISSING_TEXT).to_numpy()
    return candidate if candidate.any() else None


def readings_from_records(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Build a canonical frame from dict-like records (unknown keys ignored).

    The optional :data:`READING_TIME_COLUMNS` are kept (as UTC; unparsable -> NaT) when a record
    has them, so collectors' ``collected_at`` / ``device_ts`` reach the store.
    """
    return with_time_columns(pd.DataFrame.from_records(list(records)))


def with_time_columns(df: pd.DataFrame, *, always: bool = False) -> pd.DataFrame:
    """Canonical columns plus the optional :data:`READING_TIME_COLUMNS` (UTC).

    A time column the input has is kept (parsed like ``ts``; unparsable -> NaT); one it lacks
    is added as NaT when ``always``, else left out. Everything else is as
    :func:`normalize_readings`.
    """
    out = normalize_readings(df)
    for col in READING_TIME_COLUMNS:
        if col in df:
            values = df[col]
            if isinstance(values.dtype, pd.DatetimeTZDtype):
                out[col] = values.astype(TS_DTYPE).array
            else:
                out[col] = to_utc_coerce(values).array
        elif always:
            out[col] = pd.Series(pd.NaT, index=out.index, dtype=TS_DTYPE)
    return out


def empty_findings() -> pd.DataFrame:
    """An empty findings frame with the canonical columns (a copy of one built once: every
    rule returns one per partition when it finds nothing, and building it takes 20x longer)."""
    return _EMPTY_FINDINGS.copy()


def _empty_findings() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype=object) for c in FINDING_COLUMNS})
    df["starts_at"] = pd.Series(dtype=TS_DTYPE)
    df["ends_at"] = pd.Series(dtype=TS_DTYPE)
    return df


_EMPTY_FINDINGS = _empty_findings()
