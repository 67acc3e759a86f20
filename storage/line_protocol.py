"""Canonical readings -> InfluxDB line protocol, vectorized over a DataFrame (pure, no I/O).

One line per reading::

    readings,customer_class=residential,meter_id=M1,phases=1,transformer_id=T1 energy_import_kwh=12.5,power_kw=0.42 1700000000

* measurement ``readings`` (configurable);
* tags, sorted by key: ``meter_id`` plus ``transformer_id``, ``customer_class``, ``phases`` looked
  up in the meter registry; a tag the registry does not have (or has empty) is omitted, because
  line protocol has no empty tag value;
* one float field per canonical quantity that is not NaN, written with Python's shortest
  round-trip repr so the value read back is bit-for-bit the one written;
* the optional ``collected_at`` / ``device_ts`` (UTC) as integer fields in whole epoch seconds
  (``collected_at=1700000003i``), floored; absent when the reading has none;
* timestamp in whole seconds since the epoch (to be written with ``precision=s``), floored.

:func:`encode_points` encodes the other measurements (``validated_readings``, ``alert_events``,
``collector_health``; docs/storage-schema.md): the caller names the tag, float, integer and
string columns.

Escaping follows the line-protocol rules: commas and spaces in the measurement; commas, equals
signs and spaces in tag keys and values. Line protocol cannot carry a newline at all, so CR/LF in a
tag value become a space. Rows whose every field is NaN carry nothing to store and are skipped;
rows without ``meter_id`` or ``ts`` are skipped as invalid; both are counted.

Non-finite values (``inf``) are not representable in InfluxDB; they are written as-is so that the
server names the line in its error and the store dead-letters it with the server's reason,
instead of silently dropping the quantity here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from meterwatch.core.schema import READING_FIELDS, READING_TIME_COLUMNS, with_time_columns
from meterwatch.storage.lp_encode import CONFLICTS_MEASUREMENT, MEASUREMENT, encode_rows

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

    Cost per batch, not per value: the series key (measurement and escaped tags) is built once
    per distinct meter; rows are grouped by which fields they carry, and each group is
    formatted with one ``%``-template per row (floats by ``repr``, the shortest round-trip
    text, as :func:`format_floats`).
    """
    frame = with_time_columns(df)
    if frame.empty:
        return EncodedReadings([], 0, 0)

    meter = frame["meter_id"].astype(object)
    has_meter = tag_text(meter)[1]
    ts_ns, has_ts = _epoch_ns(frame["ts"])
    invalid = ~has_meter | ~has_ts
    values = frame[list(READING_FIELDS)].to_numpy(dtype="float64")
    present = ~np.isnan(values)
    empty = ~present.any(axis=1) & ~invalid
    keep = ~(invalid | empty)
    rows = np.flatnonzero(keep)
    n = len(rows)
    if n == 0:
        return EncodedReadings([], int(empty.sum()), int(invalid.sum()))

    codes, uniques = pd.factorize(meter.to_numpy()[rows])
    unique_frame = pd.DataFrame({"meter_id": pd.Series(uniques, dtype=object)})
    keys = _series_key(
        measurement, _tag_values(unique_frame, tags, tag_columns), len(unique_frame)
    ).to_numpy(dtype=object)[codes]

    extra: list[tuple[str, np.ndarray, np.ndarray]] = []
    for col in READING_TIME_COLUMNS:
        if col in frame:
            t_ns, has = _epoch_ns(frame[col])
            extra.append((col, t_ns[rows] // 1_000_000_000, has[rows]))
    out = encode_rows(keys, values[rows], ts_ns[rows] // 1_000_000_000, extra)
    return EncodedReadings(
        lines=out,
        skipped_empty=int(empty.sum()),
        skipped_invalid=int(invalid.sum()),
    )


#: Separators of line protocol not preceded by a backslash (escaped ones belong to the text).
_UNESCAPED_SPACE = re.compile(r"(?<!\\) ")
_UNESCAPED_COMMA = re.compile(r"(?<!\\),")
_ESCAPED = re.compile(r"\\([,= ])")


def decode_readings(body: bytes) -> pd.DataFrame:
    """The readings of a line-protocol batch :func:`encode_readings` wrote, as a canonical
    frame (``meter_id``, ``ts`` and the quantities and times the lines carry; other tags are
    the registry's and left out).

    For reading back what the spool holds for InfluxDB (a backup of pending rows): Python per
    line, not a hot path. Lines of the ``reading_conflicts`` measurement are left out.
    """
    records: list[dict[str, object]] = []
    for line in body.decode("utf-8").splitlines():  # loop over lines (backup only)
        if not line:
            continue
        key, fields, ts = _UNESCAPED_SPACE.split(line)
        if key.startswith(CONFLICTS_MEASUREMENT + ","):
            continue  # kept apart on purpose (storage/recent.py): not a reading to restore
        record: dict[str, object] = {"ts": int(ts)}
        for tag in _UNESCAPED_COMMA.split(key)[1:]:
            name, _, value = tag.partition("=")
            if name == "meter_id":
                record["meter_id"] = _ESCAPED.sub(r"\1", value)
        for field in fields.split(","):
            name, _, value = field.partition("=")
            record[name] = int(value[:-1]) if value.endswith("i") else float(value)
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    for col in ("ts", *READING_TIME_COLUMNS):
        if col in frame:
            frame[col] = pd.to_datetime(frame[col], unit="s", utc=True)
    return with_time_columns(frame)


def _epoch_ns(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """UTC timestamps -> (epoch nanoseconds as int64, 0 where NaT; mask of non-NaT values)."""
    ts = pd.to_datetime(values, utc=True)
    has = ts.notna().to_numpy()
    ns = pd.DatetimeIndex(ts).as_unit("ns").asi8.copy()
    ns[~has] = 0
    return ns, has


def epoch_seconds(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """UTC timestamps -> (whole epoch seconds, floored, as int64; mask of non-NaT values)."""
    ts = pd.to_datetime(values, utc=True)
    has = ts.notna().to_numpy()
    secs = ((ts - _EPOCH) // pd.Timedelta(1, "s")).fillna(0).astype("int64").to_numpy()
    return secs, has


def escape_string_field(values: pd.Series) -> pd.Series:
    """A string field value, quoted: backslash and double quote escaped, CR/LF -> space."""
    text = _one_line(values.astype(object).where(values.notna(), ""))
    text = text.str.replace("\\", "\\\\", regex=False).str.replace('"', '\\"', regex=False)
    return '"' + text + '"'


def encode_points(
    df: pd.DataFrame,
    measurement: str,
    *,
    tag_columns: Sequence[str] = (),
    float_fields: Sequence[str] = (),
    int_fields: Sequence[str] = (),
    time_fields: Sequence[str] = (),
    str_fields: Sequence[str] = (),
    registry: pd.DataFrame | None = None,
    registry_tags: Sequence[str] = (),
    time_column: str = "ts",
    required_tags: Sequence[str] = (),
) -> EncodedReadings:
    """Encode any frame as line protocol, seconds precision, one line per row in row order.

    ``tag_columns`` are frame columns written as tags (absent when empty); ``registry_tags`` are
    looked up in ``registry`` by the frame's ``meter_id``. Fields: ``float_fields`` (NaN
    omitted), ``int_fields`` (``i`` suffix; NaN omitted), ``time_fields`` (UTC timestamps as
    integer epoch seconds; NaT omitted), ``str_fields`` (always written; None becomes ``""``, so a
    rewrite of the same point replaces it). Rows without ``time_column`` or one of
    ``required_tags`` are skipped as invalid;
    rows with no field at all as empty; both counted.
    """
    if df.empty:
        return EncodedReadings([], 0, 0)
    frame = df.reset_index(drop=True)
    invalid = pd.to_datetime(frame[time_column], utc=True).isna().to_numpy().copy()
    for col in required_tags:
        invalid |= ~tag_text(frame[col].astype(object))[1]
    n = len(frame)
    fields = pd.Series([""] * n, dtype=object)
    for name in float_fields:
        vals = pd.to_numeric(frame[name], errors="coerce").to_numpy(
            dtype="float64", na_value=np.nan
        )
        fields = _add_field(fields, ~np.isnan(vals), name + "=" + format_floats(vals))
    for name in int_fields:
        vals = pd.to_numeric(frame[name], errors="coerce").to_numpy(
            dtype="float64", na_value=np.nan
        )
        has = ~np.isnan(vals)
        text = pd.Series(np.where(has, vals, 0).astype("int64").astype(str), dtype=object)
        fields = _add_field(fields, has, name + "=" + text + "i")
    for name in time_fields:
        secs, has = epoch_seconds(frame[name])
        fields = _add_field(
            fields, has, name + "=" + pd.Series(secs.astype(str), dtype=object) + "i"
        )
    for name in str_fields:
        fields = _add_field(
            fields, np.ones(n, dtype=bool), name + "=" + escape_string_field(frame[name])
        )
    empty = (fields == "").to_numpy() & ~invalid
    keep = ~(invalid | empty)

    tag_values = {c: frame[c].astype(object) for c in tag_columns}
    if registry is not None and registry_tags:
        tag_values.update(_tag_values(frame, registry, registry_tags, with_meter=False))
    line = _series_key(measurement, tag_values, n)
    seconds = pd.Series(epoch_seconds(frame[time_column])[0].astype(str), dtype=object)
    line = (line + " " + fields + " " + seconds)[keep]
    return EncodedReadings(line.tolist(), int(empty.sum()), int(invalid.sum()))


def _tag_values(
    frame: pd.DataFrame,
    tags: pd.DataFrame | None,
    tag_columns: Sequence[str],
    *,
    with_meter: bool = True,
) -> dict[str, pd.Series]:
    """``meter_id`` plus the registry's ``tag_columns`` joined on it, aligned with ``frame``."""
    out: dict[str, pd.Series] = {}
    if with_meter:
        out["meter_id"] = frame["meter_id"].astype(object)
    if tags is not None and len(tag_columns):
        cols = [c for c in tag_columns if c in tags.columns and c != "meter_id"]
        registry = tags[["meter_id", *cols]].copy()
        registry["meter_id"] = registry["meter_id"].astype(str)
        registry = registry.drop_duplicates("meter_id", keep="last").set_index("meter_id")
        joined = registry.reindex(frame["meter_id"].astype(str))
        for col in cols:
            out[col] = joined[col].reset_index(drop=True)
    return out


def _series_key(measurement: str, tag_values: dict[str, pd.Series], n: int) -> pd.Series:
    """Measurement and tags sorted by key; a row's empty tag is left out."""
    line = pd.Series([escape_measurement(pd.Series([measurement])).iloc[0]] * n, dtype=object)
    for key in sorted(tag_values):
        text, valid = tag_text(tag_values[key].reset_index(drop=True))
        piece = "," + escape_tag(pd.Series([key])).iloc[0] + "=" + escape_tag(text)
        line = line + pd.Series(np.where(valid, piece, ""), dtype=object)
    return line


def _add_field(fields: pd.Series, has: np.ndarray, piece: pd.Series | np.ndarray) -> pd.Series:
    sep = np.where(has & (fields != "").to_numpy(), ",", "")
    return fields + sep + np.where(has, piece, "")


def _one_line(values: pd.Series) -> pd.Series:
    """Text with CR/LF replaced by spaces (line protocol cannot carry newlines)."""
    return values.astype(str).str.replace(r"[\r\n]", " ", regex=True)
