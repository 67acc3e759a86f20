"""Canonical readings -> InfluxDB line protocol, vectorized over a DataFrame (pure, no I/O).

One line per reading::

    readings,customer_class=residential,meter_id=M1,phases=1,transformer_id=T1 energy_import_kwh=12.5,power_kw=0.42 1700000000

* measurement ``readings`` (configurable);
* tags, sorted by key: ``meter_id`` plus ``transformer_id``, ``customer_class``, ``phases`` looked
  up in the meter registry; a tag the registry does not have (or has empty) is omitted, because
  line protocol has no empty tag value;
* one float field per canonical quantity that is not NaN, written with Python's shortest
  round-trip repr so the value read back is bit-for-bit the one written;
* timestamp in whole seconds since the epoch (to be written with ``precision=s``), floored.

Escaping follows the line-protocol rules: commas and spaces in the measurement; commas, equals
signs and spaces in tag keys and values. Line protocol cannot carry a newline at all, so CR/LF in a
tag value become a space. Rows whose every field is NaN carry nothing to store and are skipped;
rows without ``meter_id`` or ``ts`` are skipped as invalid; both are counted.

Non-finite values (``inf``) are not representable in InfluxDB; they are written as-is so that the
server names the line in its error and the store dead-letters it with the server's reason,
instead of silently dropping the quantity here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from meterwatch.schema import READING_FIELDS, normalize_readings

#: Default measurement for canonical readings (docs/storage-schema.md).
MEASUREMENT = "readings"
#: Registry columns written as tags, besides ``meter_id``.
REGISTRY_TAGS: tuple[str, ...] = ("transformer_id", "customer_class", "phases")

_EPOCH = pd.Timestamp(0, tz="UTC")


@dataclass(frozen=True)
class EncodedReadings:
    """Result of :func:`encode_readings`."""

    #: One line-protocol line per stored reading, in input row order (no trailing newline).
    lines: list[str]
    #: Rows skipped because every quantity was NaN.
    skipped_empty: int
    #: Rows skipped because ``meter_id`` or ``ts`` was missing.
    skipped_invalid: int


def escape_measurement(values: pd.Series) -> pd.Series:
    """Escape a measurement name: commas and spaces (line-protocol rules)."""
    out = _one_line(values)
    return out.str.replace(",", r"\,", regex=False).str.replace(" ", r"\ ", regex=False)


def escape_tag(values: pd.Series) -> pd.Series:
    """Escape tag keys or values (also field keys): commas, equals signs and spaces."""
    out = _one_line(values)
    for ch in (",", "=", " "):
        out = out.str.replace(ch, "\\" + ch, regex=False)
    return out


def format_floats(values: pd.Series | np.ndarray) -> pd.Series:
    """Shortest round-trip text of float64 values (Python ``repr``): ``float(text) == value``."""
    arr = np.asarray(values, dtype="float64")
    return pd.Series(arr.astype(str), dtype=object)


def tag_text(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Registry column -> (tag text, mask of rows that have a value).

    Integral numbers are written without a decimal part (``phases`` 3, not 3.0). Missing values,
    empty strings and the text ``"nan"`` (what ``astype(str)`` makes of a missing value) are absent.
    """
    if pd.api.types.is_bool_dtype(values):
        text = values.astype(str)
        valid = values.notna().to_numpy()
    elif pd.api.types.is_numeric_dtype(values):
        num = values.astype("float64")
        valid = np.isfinite(num.to_numpy())
        integral = valid & (np.mod(np.where(valid, num, 0.0), 1.0) == 0.0)
        as_int = np.where(integral, num, 0.0).astype("int64").astype(str)
        text = pd.Series(np.where(integral, as_int, format_floats(num)), index=values.index)
    else:
        text = values.astype(object).where(values.notna(), "").astype(str).str.strip()
        valid = ~text.isin(["", "nan", "NaN", "None", "<NA>"]).to_numpy()
    return text.astype(object), valid


def encode_readings(
    df: pd.DataFrame,
    tags: pd.DataFrame | None = None,
    measurement: str = MEASUREMENT,
    tag_columns: Sequence[str] = REGISTRY_TAGS,
) -> EncodedReadings:
    """Encode a canonical reading frame (contracts §1) as line protocol, seconds precision.

    ``tags`` is the meter registry (contracts §2); its ``tag_columns`` become tags, joined on
    ``meter_id``. Meters absent from the registry get only the ``meter_id`` tag.
    """
    frame = normalize_readings(df)
    if frame.empty:
        return EncodedReadings([], 0, 0)

    has_meter = tag_text(frame["meter_id"].astype(object))[1]
    invalid = ~has_meter | frame["ts"].isna().to_numpy()
    values = frame[list(READING_FIELDS)].to_numpy(dtype="float64")
    present = ~np.isnan(values)
    empty = ~present.any(axis=1) & ~invalid
    keep = ~(invalid | empty)
    frame = frame.loc[keep].reset_index(drop=True)
    values, present = values[keep], present[keep]

    tag_values: dict[str, pd.Series] = {"meter_id": frame["meter_id"].astype(object)}
    if tags is not None and len(tag_columns):
        cols = [c for c in tag_columns if c in tags.columns and c != "meter_id"]
        registry = tags[["meter_id", *cols]].copy()
        registry["meter_id"] = registry["meter_id"].astype(str)
        registry = registry.drop_duplicates("meter_id", keep="last").set_index("meter_id")
        joined = registry.reindex(frame["meter_id"].astype(str))
        for col in cols:
            tag_values[col] = joined[col].reset_index(drop=True)

    n = len(frame)
    line = pd.Series([escape_measurement(pd.Series([measurement])).iloc[0]] * n, dtype=object)
    for key in sorted(tag_values):
        text, valid = tag_text(tag_values[key])
        piece = "," + escape_tag(pd.Series([key])).iloc[0] + "=" + escape_tag(text)
        line = line + pd.Series(np.where(valid, piece, ""), dtype=object)

    fields = pd.Series([""] * n, dtype=object)
    for j, name in enumerate(READING_FIELDS):
        has = present[:, j]
        sep = np.where(has & (fields != "").to_numpy(), ",", "")
        piece = np.where(has, name + "=" + format_floats(values[:, j]), "")
        fields = fields + sep + piece

    seconds = ((frame["ts"] - _EPOCH) // pd.Timedelta(1, "s")).astype("int64").astype(str)
    line = line + " " + fields + " " + seconds.astype(object)
    return EncodedReadings(
        lines=line.tolist(),
        skipped_empty=int(empty.sum()),
        skipped_invalid=int(invalid.sum()),
    )


def _one_line(values: pd.Series) -> pd.Series:
    """Text with CR/LF replaced by spaces (line protocol cannot carry newlines)."""
    return values.astype(str).str.replace(r"[\r\n]", " ", regex=True)
