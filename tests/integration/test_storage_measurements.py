"""The stored measurements besides canonical readings (docs/storage-schema.md).

Readings' optional ``collected_at`` / ``device_ts``; ``validated_readings``; ``alert_events``;
``collector_health`` — in the embedded store, a real InfluxDB 1.x (``influxdb`` fixture) and, for
the v2 write path, a real VictoriaMetrics (which cannot answer InfluxQL, so its samples are read
back through ``/api/v1/export``). Plus the spool/writer carrying the timestamps through, and the
durable alert-event outbox riding out a store outage.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from meterwatch.alerts.model import Alert
from meterwatch.collector.writer import ReadingWriter
from meterwatch.core.errors import StorageError
from meterwatch.core.schema import READING_COLUMNS, readings_from_records
from meterwatch.core.stats import Stats
from meterwatch.storage.backup import backup, restore
from meterwatch.storage.embedded import EmbeddedStore
from meterwatch.storage.event_sink import AlertEventSink
from meterwatch.storage.influx import InfluxStore
from meterwatch.storage.line_protocol import encode_points, encode_readings
from meterwatch.storage.measurements import (
    WRITER_ROW,
    GatewaySource,
    alert_event_frame,
    health_frame,
)
from meterwatch.storage.spool import Spool
from tests.support.servers import RunningServer, influxdb, victoria_metrics

T0 = pd.Timestamp("2026-01-05T00:00:00Z")


def readings_with_times() -> pd.DataFrame:
    """Four readings: both times, collector time only, neither (NaT), sub-second collector time."""
    return readings_from_records(
        [
            {
                "meter_id": "M1",
                "ts": T0,
                "energy_import_kwh": 10.5,
                "collected_at": T0 + pd.Timedelta(seconds=2, microseconds=250_000),
                "device_ts": "2026-01-04T23:59:58Z",
            },
            {
                "meter_id": "M1",
                "ts": T0 + pd.Timedelta(minutes=15),
                "energy_import_kwh": 10.75,
                "collected_at": T0 + pd.Timedelta(minutes=15, seconds=1),
            },
            {"meter_id": "M2", "ts": T0, "power_kw": -1.25},
            {
                "meter_id": "M2",
                "ts": T0 + pd.Timedelta(minutes=15),
                "power_kw": 2.5,
                "collected_at": T0 + pd.Timedelta(minutes=15, microseconds=999_999),
                "device_ts": T0 + pd.Timedelta(minutes=14, seconds=59),
            },
        ]
    )


def validated(kwh: list[float], quality: list[str], **extra: Any) -> pd.DataFrame:
    ts = pd.Series(T0 + pd.Timedelta(minutes=15) * np.arange(1, len(kwh) + 1)).astype(
        "datetime64[ns, UTC]"
    )
    return pd.DataFrame(
        {
            "meter_id": "M1",
            "interval_start": ts - pd.Timedelta(minutes=15),
            "ts": ts,
            "kwh": kwh,
            "quality": quality,
            "method": ["register" if q == "actual" else "linear" for q in quality],
            "reasons": ["" if q == "actual" else "gap" for q in quality],
            "rule_set_version": "mw-vee-1.0",
            "data_version": 0,
            **extra,
        }
    )


def alert(**kw: Any) -> Alert:
    base: dict[str, Any] = {
        "type": "voltage_loss",
        "severity": "major",
        "meter_id": "M1",
        "transformer_id": "TA 1",
        "starts_at": T0.to_pydatetime(),
        "summary": 'phase L2 at 12.5 V "lost", see \\evidence\nnext line',
        "evidence": {"rule": "V < 0.6 Un", "observed_v": 12.5, "phases": ["l2"]},
        "category": "equipment",
        "fingerprint": "fp1",
        "updated_at": (T0 + pd.Timedelta(minutes=5)).to_pydatetime(),
    }
    base.update(kw)
    return Alert(**base)


# ----------------------------------------------------------------------- line protocol


def test_reading_times_are_integer_epoch_second_fields_floored() -> None:
    lines = encode_readings(readings_with_times()).lines
    s0 = int(T0.timestamp())
    assert lines == [
        f"readings,meter_id=M1 energy_import_kwh=10.5,collected_at={s0 + 2}i,device_ts={s0 - 2}i {s0}",
        f"readings,meter_id=M1 energy_import_kwh=10.75,collected_at={s0 + 901}i {s0 + 900}",
        f"readings,meter_id=M2 power_kw=-1.25 {s0}",
        f"readings,meter_id=M2 power_kw=2.5,collected_at={s0 + 900}i,device_ts={s0 + 899}i {s0 + 900}",
    ]


def test_string_fields_are_quoted_and_escaped_and_absent_tags_omitted() -> None:
    frame = alert_event_frame([("opened", None, alert(meter_id=None).to_json())])
    (line,) = encode_points(
        frame,
        "alert_events",
        tag_columns=("event", "meter_id", "transformer_id"),
        int_fields=("count",),
        time_fields=("starts_at", "ends_at"),
        str_fields=("summary", "status"),
    ).lines
    s0 = int(T0.timestamp())
    assert line == (
        r"alert_events,event=opened,transformer_id=TA\ 1 count=1i,"
        f"starts_at={s0}i,"
        r'summary="phase L2 at 12.5 V \"lost\", see \\evidence next line",status="open" '
        f"{s0 + 300}"
    )


# ------------------------------------------------------------------------ embedded store


def test_embedded_migrates_an_old_file_and_keeps_both_times(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))  # the readings table as it was before the two columns
    con.execute(
        "CREATE TABLE readings (meter_id VARCHAR NOT NULL, ts TIMESTAMP NOT NULL, "
        + ", ".join(f"{c} DOUBLE" for c in READING_COLUMNS[2:])
        + ")"
    )
    con.execute("INSERT INTO readings (meter_id, ts, power_kw) VALUES ('OLD', '2026-01-04', 1.0)")
    con.close()

    store = EmbeddedStore(path)
    try:
        df = readings_with_times()
        assert store.write_readings(df) == 4
        plain = store.read_readings()
        assert list(plain.columns) == list(READING_COLUMNS)  # callers see no change by default
        out = store.read_readings(include_times=True)
        assert list(out.columns) == [*READING_COLUMNS, "collected_at", "device_ts"]
        old = out[out.meter_id == "OLD"].iloc[0]
        assert pd.isna(old["collected_at"]) and pd.isna(old["device_ts"])
        new = out[out.meter_id != "OLD"].reset_index(drop=True)
        # microsecond precision in the embedded store: exact
        pd.testing.assert_series_equal(new["collected_at"], df["collected_at"])
        pd.testing.assert_series_equal(new["device_ts"], df["device_ts"])
    finally:
        store.close()
    reopened = EmbeddedStore(path)  # migration is idempotent
    try:
        assert len(reopened.read_readings(include_times=True)) == 5
    finally:
        reopened.close()


def test_embedded_alert_events_round_trip_and_replay_is_harmless(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "s.duckdb")
    try:
        a = alert()
        b = alert(meter_id=None, type="outage", transformer_id="TA2", id="b1")
        frame = alert_event_frame(
            [("opened", a.updated_at, a.to_json()), ("opened", b.updated_at, b.to_json())]
        )
        assert store.write_alert_events(frame) == 2
        assert store.write_alert_events(frame) == 2  # an outbox replay
        out = store.read_alert_events()
        assert len(out) == 2
        row = out[out["id"] == a.id].iloc[0]
        assert row["ts"] == T0 + pd.Timedelta(minutes=5)
        assert row["starts_at"] == T0 and pd.isna(row["ends_at"])
        assert json.loads(row["evidence"]) == a.evidence
        assert row["summary"] == a.summary and row["status"] == "open" and row["count"] == 1
        assert out[out["id"] == "b1"].iloc[0]["meter_id"] is None
        assert len(store.read_alert_events(meter_ids=["M1"])) == 1
    finally:
        store.close()


def test_embedded_collector_health_round_trip(tmp_path: Path) -> None:
    stats = Stats()
    for mid, req, err, online in (("M1", 10, 0, True), ("M2", 10, 4, False), ("Q", 3, 0, True)):
        h = stats.meter(mid)
        h.requests, h.errors, h.online = req, err, online
    stats.count("readings_stored", 16)
    stats.count("readings_refused", 2)
    stats.set_gauge("spool_depth_rows", 40)
    stats.set_gauge("spool_oldest_pending_seconds", 12.5)
    frame = health_frame(
        T0 + pd.Timedelta(milliseconds=1500),
        [GatewaySource("gw1", "modbus", ["M1", "M2"], polls=5)],
        stats,
        spool=True,
    )
    store = EmbeddedStore(tmp_path / "s.duckdb")
    try:
        assert store.write_collector_health(frame) == 2
        out = store.read_collector_health().set_index("gateway")
    finally:
        store.close()
    gw = out.loc["gw1"]
    assert gw["ts"] == T0 + pd.Timedelta(seconds=1)  # whole seconds
    assert (gw["meters"], gw["meters_online"], gw["meters_offline"]) == (2, 1, 1)
    assert (gw["requests"], gw["errors"], gw["polls"]) == (20, 4, 5)
    assert pd.isna(gw["spool_depth_rows"])  # not a gateway's counter
    w = out.loc[WRITER_ROW]
    assert (w["readings_stored"], w["readings_refused"], w["spool_depth_rows"]) == (16, 2, 40)
    assert w["spool_oldest_pending_s"] == 12.5


def test_backup_and_restore_keep_both_times(tmp_path: Path) -> None:
    df = readings_with_times()
    src = EmbeddedStore(tmp_path / "a.duckdb")
    src.write_readings(df)
    src.close()
    backup(tmp_path / "a.duckdb", tmp_path / "bk")
    assert restore(tmp_path / "bk", tmp_path / "b.duckdb").rows == 4
    dst = EmbeddedStore(tmp_path / "b.duckdb")
    try:
        pd.testing.assert_frame_equal(dst.read_readings(include_times=True), df)
    finally:
        dst.close()


def test_restore_of_a_backup_from_before_the_times(tmp_path: Path) -> None:
    df = readings_with_times()
    src = EmbeddedStore(tmp_path / "a.duckdb")
    src.write_readings(df)
    src.close()
    backup(tmp_path / "a.duckdb", tmp_path / "bk")
    parquet = tmp_path / "bk" / "readings.parquet"
    pd.read_parquet(parquet).drop(columns=["collected_at", "device_ts"]).to_parquet(parquet)
    assert restore(tmp_path / "bk", tmp_path / "b.duckdb").rows == 4
    dst = EmbeddedStore(tmp_path / "b.duckdb")
    try:
        out = dst.read_readings(include_times=True)
    finally:
        dst.close()
    pd.testing.assert_frame_equal(out[list(READING_COLUMNS)], df[list(READING_COLUMNS)])
    assert out["collected_at"].isna().all() and out["device_ts"].isna().all()


# ------------------------------------------------------------------- spool and writer


def test_spool_and_writer_carry_the_times_to_the_store(tmp_path: Path) -> None:
    df = readings_with_times()
    store = EmbeddedStore(tmp_path / "s.duckdb")
    spool = Spool(tmp_path / "spool")

    async def run() -> None:
        writer = ReadingWriter(store, Stats(), spool=spool, flush_interval_s=0.01)
        writer.start()
        assert writer.submit(df.iloc[:2])
        assert writer.submit(df.iloc[2:3][list(READING_COLUMNS)])  # a frame without them
        assert writer.submit(df.iloc[3:])
        await writer.close()

    try:
        asyncio.run(run())
        assert spool.depth_rows == 0
        out = store.read_readings(include_times=True)
    finally:
        spool.close()
        store.close()
    pd.testing.assert_frame_equal(out, df.sort_values(["meter_id", "ts"]).reset_index(drop=True))


# ------------------------------------------------------------------- alert-event outbox


class FlakyStore:
    """An embedded store whose alert-event writes fail while ``down`` is set."""

    def __init__(self, inner: EmbeddedStore):
        self.inner = inner
        self.down = threading.Event()
        self.calls = 0

    def write_alert_events(self, df: pd.DataFrame) -> int:
        self.calls += 1
        if self.down.is_set():
            raise StorageError("store down (injected)")
        return self.inner.write_alert_events(df)


def test_alert_events_survive_a_store_outage_and_a_restart(tmp_path: Path) -> None:
    inner = EmbeddedStore(tmp_path / "s.duckdb")
    flaky = FlakyStore(inner)
    stats = Stats()
    flaky.down.set()

    async def first_run() -> None:
        sink = AlertEventSink(flaky, stats, tmp_path / "outbox", drain_interval_s=0.02)
        sink.start()
        sink("opened", alert(id="a1"))  # on the loop thread: queued in memory
        await asyncio.to_thread(sink, "opened", alert(id="a2"))  # worker thread: outbox
        deadline = time.monotonic() + 5
        while flaky.calls < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert sink.pending == 2
        await sink.close(timeout_s=0.5)

    async def second_run() -> AlertEventSink:
        sink = AlertEventSink(flaky, stats, tmp_path / "outbox", drain_interval_s=0.02)
        sink.start()
        sink("resolved", alert(id="a1", status="resolved", ends_at=T0.to_pydatetime()))
        deadline = time.monotonic() + 5
        while sink.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await sink.close()
        return sink

    try:
        asyncio.run(first_run())
        assert inner.read_alert_events().empty
        c = stats.snapshot()
        assert c["alert_events_store_errors"] >= 1 and c["alert_events_queued"] == 2
        flaky.down.clear()
        sink = asyncio.run(second_run())
        assert sink.pending == 0
        out = inner.read_alert_events()
    finally:
        inner.close()
    assert sorted(zip(out["id"], out["event"], strict=True)) == [
        ("a1", "opened"),
        ("a1", "resolved"),
        ("a2", "opened"),
    ]
    assert stats.snapshot()["alert_events_stored"] == 3
    assert stats.snapshot().get("alert_events_failed", 0) == 0


# ------------------------------------------------------------------- InfluxDB 1.x (real)


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with influxdb(tmp_path_factory.mktemp("influx")) as server:
        yield server


@pytest.fixture
def v1(influx: RunningServer) -> Iterator[InfluxStore]:
    name = f"mw_{uuid.uuid4().hex[:12]}"
    body = urllib.parse.urlencode({"q": f'CREATE DATABASE "{name}"'}).encode()
    urllib.request.urlopen(f"{influx.url}/query", data=body, timeout=10).read()
    registry = pd.DataFrame(
        {"meter_id": ["M1"], "transformer_id": ["TA 1"], "customer_class": ["residential"]}
        | {"phases": [1]}
    )
    store = InfluxStore(flavor="v1", url=influx.url, database=name, tags=registry)
    try:
        yield store
    finally:
        store.close()


def test_v1_reading_times_round_trip_in_whole_seconds(v1: InfluxStore) -> None:
    df = readings_with_times()
    assert v1.write_readings(df) == 4
    assert list(v1.read_readings().columns) == list(READING_COLUMNS)
    out = v1.read_readings(include_times=True)
    for col in ("collected_at", "device_ts"):
        expected = df[col].dt.floor("s").rename(col)
        pd.testing.assert_series_equal(out[col], expected)
    pd.testing.assert_frame_equal(out[list(READING_COLUMNS)], df[list(READING_COLUMNS)])


def test_v1_validated_readings_latest_version_replaces_the_point(v1: InfluxStore) -> None:
    first = validated([0.25, 0.5, 0.75], ["actual", "actual", "actual"])
    assert v1.write_validated_readings(first) == 1
    second = validated(
        [0.25, np.nan, 0.5],
        ["actual", "missing", "edited"],
        edited_by=[None, None, "alice"],
        edit_reason=[None, None, "meter swap"],
    )
    assert v1.write_validated_readings(second, written_at=T0.to_pydatetime()) == 2
    out = v1.read_validated_readings()
    assert len(out) == 3  # one point per interval: the new version replaced the old one
    assert out["data_version"].tolist() == [2, 2, 2]
    np.testing.assert_array_equal(out["kwh"], [0.25, np.nan, 0.5])  # old kwh masked
    assert out["quality"].tolist() == ["actual", "missing", "edited"]
    assert out["edited_by"].tolist() == [None, None, "alice"]
    assert out["reasons"].tolist() == ["", "gap", "gap"]
    assert (out["written_at"] == T0).all()
    pd.testing.assert_series_equal(out["ts"], second["ts"], check_names=False)
    assert out["interval_start"].tolist() == second["interval_start"].tolist()
    # a rewrite of the first interval alone: version 3 there, the others keep 2
    assert v1.write_validated_readings(second.iloc[:1]) == 3
    assert v1.read_validated_readings()["data_version"].tolist() == [3, 2, 2]
    with pytest.raises(StorageError, match="latest data version"):
        v1.read_validated_readings(all_versions=True)


def test_v1_alert_events_round_trip(v1: InfluxStore) -> None:
    a = alert()
    b = alert(meter_id=None, type="outage", transformer_id="TA2", id="b1", count=3)
    frame = alert_event_frame(
        [("opened", a.updated_at, a.to_json()), ("updated", b.updated_at, b.to_json())]
    )
    assert v1.write_alert_events(frame) == 2
    assert v1.write_alert_events(frame) == 2  # replay: same series and time, no new point
    out = v1.read_alert_events()
    # line protocol cannot carry a newline in a field: it becomes a space (docs)
    expected = frame.assign(summary=frame["summary"].str.replace("\n", " "))
    pd.testing.assert_frame_equal(
        out, expected.sort_values(["ts", "id", "event"]).reset_index(drop=True)
    )
    assert len(v1.read_alert_events(meter_ids=["M1"])) == 1


def test_v1_collector_health_round_trip(v1: InfluxStore) -> None:
    stats = Stats()
    stats.meter("M1").requests = 7
    stats.meter("M1").online = True
    stats.count("store_errors", 2)
    frame = health_frame(T0, [GatewaySource("gw 1", "modbus", ["M1"], polls=3)], stats)
    assert v1.write_collector_health(frame) == 2
    expected = frame.sort_values(["ts", "gateway"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(v1.read_collector_health(), expected)


# ------------------------------------------------------- v2 write path: VictoriaMetrics


def export(server: RunningServer, match: str) -> pd.DataFrame:
    """Raw samples of the metrics matching ``match``: one row per (metric, labels, time)."""
    body = urllib.parse.urlencode({"match[]": match}).encode()
    with urllib.request.urlopen(f"{server.url}/api/v1/export", data=body, timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    rows = []
    for line in lines:
        # Infinite values come unquoted (``[+Inf]``, not JSON): a string field that reads as a
        # number, such as an alert id like "4e91...", is kept by VictoriaMetrics as a float.
        doc = json.loads(re.sub(r"(?<=[\[,])([+-]?Inf|NaN)(?=[,\]])", r'"\1"', line))
        for value, ms in zip(doc["values"], doc["timestamps"], strict=True):
            rows.append({**doc["metric"], "ts_s": ms // 1000, "value": float(value)})
    return pd.DataFrame(rows)


def test_v2_write_of_every_measurement_reaches_a_real_server(tmp_path: Path) -> None:
    now = pd.Timestamp.now(tz="UTC").floor("h") - pd.Timedelta(hours=3)
    readings = readings_with_times()
    shift = now - T0
    for col in ("ts", "collected_at", "device_ts"):
        readings[col] = readings[col] + shift
    iv = validated([0.25, np.nan], ["actual", "missing"])
    iv["ts"] += shift
    iv["interval_start"] += shift
    a = alert(updated_at=now.to_pydatetime(), starts_at=now.to_pydatetime())
    stats = Stats()
    stats.meter("M1").requests = 9
    with victoria_metrics(tmp_path) as server:
        store = InfluxStore(
            flavor="v2", url=server.url, org="grid", bucket="mw", token="t", batch_size=2
        )
        try:
            assert store.write_readings(readings) == 4
            # VictoriaMetrics has no InfluxQL: the version is given, not looked up
            assert store.write_validated_readings(iv, version=4) == 4
            assert store.write_alert_events(alert_event_frame([("opened", None, a.to_json())])) == 1
            health = health_frame(now, [GatewaySource("gw1", "modbus", ["M1"], polls=2)], stats)
            assert store.write_collector_health(health) == 2
        finally:
            store.close()
        urllib.request.urlopen(f"{server.url}/internal/force_flush", timeout=10).read()
        deadline = time.monotonic() + 15
        got = pd.DataFrame()
        while time.monotonic() < deadline:
            got = export(
                server,
                '{__name__=~"(readings|validated_readings|alert_events|collector_health)_.*"}',
            )
            if len(got) >= 15:
                break
            time.sleep(0.2)

    def samples(metric: str) -> list[tuple[int, float]]:
        sel = got[got["__name__"] == metric].sort_values(["ts_s", "value"])
        return list(zip(sel["ts_s"], sel["value"], strict=True))

    s = int(now.timestamp())
    assert samples("readings_collected_at") == [
        (s, s + 2.0),
        (s + 900, s + 900.0),
        (s + 900, s + 901.0),
    ]
    assert samples("readings_device_ts") == [(s, s - 2.0), (s + 900, s + 899.0)]
    assert samples("validated_readings_kwh") == [(s + 900, 0.25)]  # NaN kwh: no field
    assert samples("validated_readings_data_version") == [(s + 900, 4.0), (s + 1800, 4.0)]
    assert samples("validated_readings_interval_start") == [
        (s + 900, s + 0.0),
        (s + 1800, s + 900.0),
    ]
    assert samples("alert_events_count") == [(s, 1.0)]
    assert samples("alert_events_starts_at") == [(s, float(s))]
    ev = got[got["__name__"] == "alert_events_count"].iloc[0]
    assert (ev["event"], ev["type"], ev["meter_id"], ev["transformer_id"]) == (
        "opened",
        "voltage_loss",
        "M1",
        "TA 1",
    )
    assert samples("collector_health_requests") == [(s, 9.0)]
    assert samples("collector_health_polls") == [(s, 2.0)]
