"""InfluxDB reading store (1.x API, and 2.x through its write and 1.x-compatibility query APIs).

Writes go as line protocol (:mod:`storage.line_protocol`) in batches of ``batch_size`` lines, with
``precision=s``:

* ``flavor="v1"``: ``POST {url}/write?db=&rp=&precision=s``, HTTP basic auth when ``username`` is
  set (credentials in a header rather than the ``u``/``p`` query parameters, so they never end up
  in access logs);
* ``flavor="v2"``: ``POST {url}/api/v2/write?org=&bucket=&precision=s`` with
  ``Authorization: Token <token>``.

``v2`` writes go through influxdb-client's synchronous ``WriteApi`` (``retries=False``, so the
only retries are ours): it posts our line protocol bytes as they are, and an error answer comes
back as ``ApiException`` with the status, headers and body the write policy below needs. ``v1``
writes and all queries are plain ``urllib3`` requests (influxdb-client has no 1.x write API);
``retries=False`` on that pool too.

Reads use InfluxQL on ``/query`` for both flavors (``epoch=s``, chunked JSON); v2 authenticates
with ``Authorization: Token <token>`` and uses ``db=<bucket>``, as InfluxDB 2.x's
1.x-compatibility API expects (the bucket needs a DBRP mapping there).

Write policy, per batch:

* 204: written; ``write_readings`` returns only once every batch got one, so the caller may then
  acknowledge the data upstream. When a later batch fails, the earlier ones stay written; the
  caller resends everything, which is harmless (same series and timestamp overwrite).
* 429, 5xx, connection refused, timeouts: retried with exponential backoff and full jitter
  (``uniform(0, min(backoff_cap_s, backoff_base_s * 2**attempt))``), or exactly ``Retry-After``
  seconds when the server sends it, up to ``max_retries`` retries and ``retry_budget_s`` seconds
  for the batch; then :class:`InfluxError` (a :class:`~meterwatch.core.errors.StorageError`), and the
  caller (the spool) keeps the data.
* 400/422: the server rejected points. InfluxDB 1.x writes the good points of a partially bad
  batch and answers ``{"error": "partial write: unable to parse '<line>': <reason>\\n... dropped=N"}``
  (one ``unable to parse`` per unparsable line; ``dropped=N`` counts valid points it refused,
  e.g. beyond the retention policy or a field type conflict). Named lines go to the dead-letter
  file with their reason; when the server only gives a count, every unnamed line of the batch goes
  there flagged ``"identified": false`` (replaying the good ones is harmless: same series and
  timestamp overwrite). A 400 without ``partial write`` rejected the whole batch.
* 413: the batch is split in half and each half sent again (a single line that is still too
  large is dead-lettered).
* 401/403, 404 / ``database not found``, ``retention policy not found``: :class:`InfluxError`
  naming the setting to fix; never retried.

Counters: ``lines_written``, ``lines_dead_lettered`` (points the server refused),
``rows_skipped`` (every quantity NaN), ``rows_invalid`` (no meter_id or ts), ``retries`` and
``errors`` (by reason). An outage is logged once when it starts and once when it ends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import pandas as pd

from meterwatch.core.errors import InfluxError, StorageError
from meterwatch.core.schema import (
    READING_TIME_COLUMNS,
    TS_DTYPE,
    empty_readings,
    normalize_readings,
    with_time_columns,
)
from meterwatch.storage.influx_http import (  # noqa: F401  (rejected_lines re-exported)
    Flavor,
    InfluxWriter,
    _error_text,
    parse_retry_after,
    rejected_lines,
)
from meterwatch.storage.line_protocol import (
    MEASUREMENT,
    EncodedReadings,
    encode_points,
    encode_readings,
)
from meterwatch.storage.measurements import (
    ALERT_EVENT_COLUMNS,
    ALERT_EVENT_INT_FIELDS,
    ALERT_EVENT_STR_FIELDS,
    ALERT_EVENT_TAGS,
    ALERT_EVENT_TIME_FIELDS,
    ALERT_EVENTS_MEASUREMENT,
    HEALTH_FLOAT_FIELDS,
    HEALTH_INT_FIELDS,
    HEALTH_MEASUREMENT,
    HEALTH_TAGS,
    VALIDATED_FLOAT_FIELDS,
    VALIDATED_INT_FIELDS,
    VALIDATED_MEASUREMENT,
    VALIDATED_REGISTRY_TAGS,
    VALIDATED_STR_FIELDS,
    VALIDATED_TIME_FIELDS,
    normalize_alert_events,
    normalize_health,
)

log = logging.getLogger(__name__)

#: Meter ids per InfluxQL query (keeps the query text a few kB).
READ_CHUNK_METERS = 200
#: Rows per chunk of a chunked /query response.
QUERY_CHUNK_ROWS = 10_000


class InfluxStore(InfluxWriter):
    """Readings in InfluxDB; implements :class:`storage.base.ReadingStore`.

    ``tags`` is the meter registry frame (contracts §2): ``transformer_id``, ``customer_class``
    and ``phases`` become tags next to ``meter_id``. See docs/storage-schema.md for the schema.
    Connection, write policy and dead-lettering are :class:`InfluxWriter`'s.
    """

    def __init__(
        self,
        *,
        measurement: str = MEASUREMENT,
        tags: pd.DataFrame | None = None,
        **connection: Any,
    ):
        """``connection``: :class:`~meterwatch.storage.influx_http.InfluxWriter`'s settings."""
        super().__init__(**connection)
        self.measurement = measurement
        self.tags = tags

    # ------------------------------------------------------------------ writes

    def write_readings(self, df: pd.DataFrame) -> int:
        """Write a canonical frame; return the lines the server stored (all batches answered).

        Raises :class:`InfluxError` when a batch cannot be delivered (the caller keeps the data)
        or the configuration is wrong. Points the server refuses are dead-lettered, not raised.
        """
        return self._write_encoded(encode_readings(df, self.tags, self.measurement))

    def encode_body(self, df: pd.DataFrame) -> tuple[bytes, int]:
        """A frame as the request body ``write_body`` posts (line protocol) and its line count.

        Rows with nothing to store are counted here (``rows_skipped``, ``rows_invalid``), once:
        the spool keeps the body, so the drain never encodes again.
        """
        encoded = encode_readings(df, self.tags, self.measurement)
        with self._lock:
            self.rows_skipped += encoded.skipped_empty
            self.rows_invalid += encoded.skipped_invalid
        if not encoded.lines:
            return b"", 0
        return ("\n".join(encoded.lines) + "\n").encode("utf-8"), len(encoded.lines)

    def _write_encoded(self, encoded: EncodedReadings) -> int:
        with self._lock:
            self.rows_skipped += encoded.skipped_empty
            self.rows_invalid += encoded.skipped_invalid
            written = 0
            lines = encoded.lines
            for i in range(0, len(lines), self.batch_size):
                written += self._write_batch(lines[i : i + self.batch_size])
        return written

    # ------------------------------------------------------------------- reads

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
        raw = self._read(self.measurement, meter_ids, start, end)
        if raw is None:
            out = empty_readings()
            return with_time_columns(out, always=True) if include_times else out
        if include_times:
            for col in READING_TIME_COLUMNS:
                raw[col] = _from_epoch_s(raw[col]) if col in raw else pd.NaT
            out = with_time_columns(raw, always=True)
        else:
            out = normalize_readings(raw)
        # A meter whose registry tags changed has two series; keep one row per (meter_id, ts).
        out = out.sort_values(["meter_id", "ts"], kind="stable")
        return out.drop_duplicates(["meter_id", "ts"], keep="last").reset_index(drop=True)

    def _read(
        self,
        measurement: str,
        meter_ids: Sequence[str] | None,
        start: datetime | pd.Timestamp | None,
        end: datetime | pd.Timestamp | None,
    ) -> pd.DataFrame | None:
        """Every point of ``measurement`` in ``[start, end)`` (``ts`` column), or None if none."""
        time_clauses: list[str] = []
        if start is not None:
            time_clauses.append(f"time >= {_epoch_ns(start)}")
        if end is not None:
            time_clauses.append(f"time < {_epoch_ns(end)}")
        if isinstance(meter_ids, str):
            meter_ids = [meter_ids]
        if meter_ids is None:
            queries = [self._select(measurement, time_clauses)]
        else:
            ids = list(dict.fromkeys(str(m) for m in meter_ids))
            queries = [
                self._select(
                    measurement,
                    [
                        *time_clauses,
                        "("
                        + " OR ".join(f'"meter_id" = {_influxql_string(m)}' for m in chunk)
                        + ")",
                    ],
                )
                for chunk in (
                    ids[i : i + READ_CHUNK_METERS] for i in range(0, len(ids), READ_CHUNK_METERS)
                )
            ]
        frames = []
        with self._lock:
            for q in queries:
                frames.extend(self._query(q))
        frames = [f for f in frames if not f.empty]
        if not frames:
            return None
        raw = pd.concat(frames, ignore_index=True)
        raw["ts"] = pd.to_datetime(raw.pop("time"), unit="s", utc=True)
        return raw

    def _select(self, measurement: str, clauses: list[str], what: str = "*") -> str:
        source = _influxql_ident(measurement)
        if self.retention_policy:
            source = f"{_influxql_ident(self.retention_policy)}.{source}"
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        return f"SELECT {what} FROM {source}{where}"

    # ------------------------------------------------- validated readings, events, health

    def write_validated_readings(
        self,
        df: pd.DataFrame,
        written_at: datetime | None = None,
        *,
        version: int | None = None,
    ) -> int:
        """Store validated intervals (measurement ``validated_readings``); return the data version.

        The version is ``version`` when given, else one more than the highest ``data_version``
        stored for any interval in the frame's time range (1 when there is none; one InfluxQL
        query). A point is identified by its series and ``ts``, so a new version of an interval
        **replaces** the previous one: InfluxDB keeps the latest version only (the embedded store
        keeps every version). Registry tags as for readings.
        """
        if df.empty:
            raise StorageError(f"InfluxDB {self._target_name()}: no validated intervals to write")
        frame = df.reset_index(drop=True).copy()
        for col in ("interval_start", "ts"):
            frame[col] = pd.to_datetime(frame[col], utc=True)
        if version is None:
            version = self._max_validated_version(frame["ts"].min(), frame["ts"].max()) + 1
        frame["data_version"] = int(version)
        frame["written_at"] = pd.Timestamp(written_at or pd.Timestamp.now(tz="UTC"))
        for col in ("edited_by", "edit_reason"):
            if col not in frame:
                frame[col] = None
        encoded = encode_points(
            frame,
            VALIDATED_MEASUREMENT,
            tag_columns=("meter_id",),
            float_fields=VALIDATED_FLOAT_FIELDS,
            int_fields=VALIDATED_INT_FIELDS,
            time_fields=VALIDATED_TIME_FIELDS,
            str_fields=VALIDATED_STR_FIELDS,
            registry=self.tags,
            registry_tags=VALIDATED_REGISTRY_TAGS,
            required_tags=("meter_id",),
        )
        self._write_encoded(encoded)
        return int(version)

    def _max_validated_version(self, first: pd.Timestamp, last: pd.Timestamp) -> int:
        q = self._select(
            VALIDATED_MEASUREMENT,
            [f"time >= {_epoch_ns(first)}", f"time <= {_epoch_ns(last)}"],
            what='max("data_version")',
        )
        with self._lock:
            frames = self._query(q)
        values = [v for f in frames if "max" in f for v in f["max"].dropna()]
        return int(max(values)) if values else 0

    def read_validated_readings(
        self,
        meter_ids: Sequence[str] | None = None,
        start: datetime | pd.Timestamp | None = None,
        end: datetime | pd.Timestamp | None = None,
        *,
        version: int | None = None,
        all_versions: bool = False,
    ) -> pd.DataFrame:
        """Validated intervals with ``start <= ts < end`` (the latest version: the only one kept).

        Columns as :meth:`storage.embedded.EmbeddedStore.read_validated_readings`. ``version`` and
        ``all_versions`` need earlier versions, which InfluxDB does not keep: StorageError.
        """
        from meterwatch.storage.embedded import VALIDATED_STORE_COLUMNS

        if version is not None or all_versions:
            raise StorageError(
                f"InfluxDB {self._target_name()} keeps only the latest data version of each "
                "validated interval; earlier versions are in the embedded store only"
            )
        raw = self._read(VALIDATED_MEASUREMENT, meter_ids, start, end)
        if raw is None:
            raw = pd.DataFrame(columns=list(VALIDATED_STORE_COLUMNS))
        out = pd.DataFrame(
            {c: raw[c] if c in raw else None for c in VALIDATED_STORE_COLUMNS}, index=raw.index
        )
        out["ts"] = pd.to_datetime(out["ts"], utc=True).astype(TS_DTYPE)
        for col in VALIDATED_TIME_FIELDS:
            out[col] = _from_epoch_s(out[col])
        out["kwh"] = pd.to_numeric(out["kwh"], errors="coerce").astype("float64")
        # A newer version without kwh (missing) does not erase the older field: mask it.
        out.loc[out["quality"] == "missing", "kwh"] = float("nan")
        out["data_version"] = pd.to_numeric(out["data_version"]).astype("int64")
        for col in VALIDATED_STR_FIELDS:
            out[col] = out[col].astype(object).where(out[col].notna() & (out[col] != ""), None)
        out["reasons"] = out["reasons"].where(out["reasons"].notna(), "")
        out = out.sort_values(["meter_id", "ts"], kind="stable")
        return out.drop_duplicates(["meter_id", "ts"], keep="last").reset_index(drop=True)

    def write_alert_events(self, df: pd.DataFrame) -> int:
        """Store alert state changes (measurement ``alert_events``); return points written."""
        if df.empty:
            return 0
        encoded = encode_points(
            normalize_alert_events(df),
            ALERT_EVENTS_MEASUREMENT,
            tag_columns=ALERT_EVENT_TAGS,
            int_fields=ALERT_EVENT_INT_FIELDS,
            time_fields=ALERT_EVENT_TIME_FIELDS,
            str_fields=ALERT_EVENT_STR_FIELDS,
        )
        return self._write_encoded(encoded)

    def read_alert_events(
        self,
        start: datetime | pd.Timestamp | None = None,
        end: datetime | pd.Timestamp | None = None,
        *,
        meter_ids: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Alert events with ``start <= ts < end``, sorted by ts, id, event."""
        raw = self._read(ALERT_EVENTS_MEASUREMENT, meter_ids, start, end)
        if raw is None:
            return normalize_alert_events(pd.DataFrame(columns=list(ALERT_EVENT_COLUMNS)))
        for col in ALERT_EVENT_TIME_FIELDS:
            raw[col] = _from_epoch_s(raw[col]) if col in raw else pd.NaT
        out = normalize_alert_events(raw)
        return out.sort_values(["ts", "id", "event"], kind="stable").reset_index(drop=True)

    def write_collector_health(self, df: pd.DataFrame) -> int:
        """Store a health snapshot (measurement ``collector_health``); return points written."""
        if df.empty:
            return 0
        encoded = encode_points(
            normalize_health(df),
            HEALTH_MEASUREMENT,
            tag_columns=HEALTH_TAGS,
            int_fields=HEALTH_INT_FIELDS,
            float_fields=HEALTH_FLOAT_FIELDS,
        )
        return self._write_encoded(encoded)

    def read_collector_health(
        self,
        start: datetime | pd.Timestamp | None = None,
        end: datetime | pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """Health rows with ``start <= ts < end``, sorted by ts, gateway."""
        raw = self._read(HEALTH_MEASUREMENT, None, start, end)
        out = normalize_health(raw if raw is not None else pd.DataFrame())
        return out.sort_values(["ts", "gateway"], kind="stable").reset_index(drop=True)

    def tag_values(self, measurement: str, key: str) -> list[str]:
        """Sorted values of tag ``key`` in ``measurement`` (e.g. every meter id), for chunked reads."""
        source = _influxql_ident(measurement)
        if self.retention_policy:
            source = f"{_influxql_ident(self.retention_policy)}.{source}"
        with self._lock:
            frames = self._query(f"SHOW TAG VALUES FROM {source} WITH KEY = {_influxql_ident(key)}")
        return sorted({str(v) for f in frames if "value" in f for v in f["value"]})

    def has_points(self, measurement: str, since: datetime | pd.Timestamp | None = None) -> bool:
        """Whether ``measurement`` holds any point (at or after ``since``): a restore, or a
        rerun of a simulated clock, refuses to write over data."""
        clauses = [] if since is None else [f"time >= {_epoch_ns(since)}"]
        with self._lock:
            frames = self._query(self._select(measurement, clauses, "*") + " LIMIT 1")
        return any(not f.empty for f in frames)

    def target_name(self) -> str:
        """The database (v1) or bucket (v2) and server, for messages."""
        return self._target_name()

    def _query(self, q: str) -> list[pd.DataFrame]:
        db = self.database if self.flavor == "v1" else self.bucket
        params: dict[str, str] = {
            "db": db or "",
            "epoch": "s",
            "chunked": "true",
            "chunk_size": str(QUERY_CHUNK_ROWS),
        }
        status, _, data = self._request(
            "query",
            "POST",
            "/query",
            params,
            body=urlencode({"q": q}).encode(),
            content_type="application/x-www-form-urlencoded",
        )
        text = data.decode("utf-8", errors="replace")
        if status != 200:
            self.errors[f"http_{status}"] += 1
            raise InfluxError(
                f"InfluxDB query on {self._target_name()}: HTTP {status}: {_error_text(text)}",
                status=status,
                reason=f"http_{status}",
            )
        frames: list[pd.DataFrame] = []
        for chunk in text.splitlines():
            if not chunk.strip():
                continue
            doc = json.loads(chunk)
            if "error" in doc:
                self._raise_query_error(status, str(doc["error"]))
            for result in doc.get("results", []):
                if "error" in result:
                    self._raise_query_error(status, str(result["error"]))
                for series in result.get("series", []):
                    frames.append(pd.DataFrame(series["values"], columns=series["columns"]))
        return frames

    def _raise_query_error(self, status: int, error: str) -> None:
        self._raise_for_config("query", status, error)
        self.errors["query"] += 1
        raise InfluxError(
            f"InfluxDB query on {self._target_name()} failed: {error}",
            status=status,
            reason="query",
        )

    # -------------------------------------------------------------------- HTTP


def _from_epoch_s(values: pd.Series) -> pd.Series:
    """Integer epoch-second fields (None/NaN where absent) -> UTC timestamps (NaT)."""
    secs = pd.to_numeric(values, errors="coerce").astype("float64")
    return pd.Series(pd.to_datetime(secs, unit="s", utc=True), index=values.index).astype(TS_DTYPE)


def _epoch_ns(t: datetime | pd.Timestamp) -> int:
    ts = pd.Timestamp(t)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.as_unit("ns").value)


def _influxql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _influxql_ident(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
