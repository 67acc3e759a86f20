"""InfluxDB store: line protocol tables, a real influxd 1.x, and a scripted fake for faults."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterwatch.core.errors import ConfigError, StorageError
from meterwatch.core.schema import READING_FIELDS, normalize_readings
from meterwatch.storage.base import ReadingStore
from meterwatch.storage.influx import InfluxStore, parse_retry_after, rejected_lines
from meterwatch.storage.line_protocol import encode_readings, escape_tag
from tests.support.servers import RunningServer, free_port, influxdb, require_binary

# --------------------------------------------------------------------------- line protocol


def one(meter_id: str = "M1", ts: str = "2024-01-01T00:00:00Z", **fields: float) -> pd.DataFrame:
    return pd.DataFrame([{"meter_id": meter_id, "ts": ts, **fields}])


@pytest.mark.parametrize(
    ("meter_id", "expected"),
    [
        ("M1", "readings,meter_id=M1 power_kw=1.5 1704067200"),
        ("M 1", r"readings,meter_id=M\ 1 power_kw=1.5 1704067200"),
        ("M,1", r"readings,meter_id=M\,1 power_kw=1.5 1704067200"),
        ("M=1", r"readings,meter_id=M\=1 power_kw=1.5 1704067200"),
        ("a b,c=d", r"readings,meter_id=a\ b\,c\=d power_kw=1.5 1704067200"),
        ("line\nbreak", r"readings,meter_id=line\ break power_kw=1.5 1704067200"),
        ("M'1\"", "readings,meter_id=M'1\" power_kw=1.5 1704067200"),
    ],
)
def test_tag_values_are_escaped(meter_id: str, expected: str) -> None:
    assert encode_readings(one(meter_id, power_kw=1.5)).lines == [expected]


def test_measurement_and_tag_key_escaping() -> None:
    enc = encode_readings(one(power_kw=1.0), measurement="my readings,v2")
    assert enc.lines == [r"my\ readings\,v2,meter_id=M1 power_kw=1.0 1704067200"]
    assert escape_tag(pd.Series(["k e,y=x"])).tolist() == [r"k\ e\,y\=x"]


def test_registry_tags_sorted_bounded_and_omitted_when_absent() -> None:
    registry = pd.DataFrame(
        {
            "meter_id": ["C1", "T1", "C2"],
            "role": ["customer", "transformer", "customer"],
            "transformer_id": ["TA 1", "TA 1", "nan"],
            "customer_class": ["residential", "", None],
            "phases": [1, 3, 3],
            "tariff": ["tou", "tou", "tou"],  # not a tag
        }
    )
    df = pd.concat([one("C1", power_kw=1.0), one("T1", power_kw=2.0), one("X9", power_kw=3.0)])
    df = pd.concat([df, one("C2", power_kw=4.0)])
    assert encode_readings(df, registry).lines == [
        r"readings,customer_class=residential,meter_id=C1,phases=1,transformer_id=TA\ 1 power_kw=1.0 1704067200",
        r"readings,meter_id=T1,phases=3,transformer_id=TA\ 1 power_kw=2.0 1704067200",
        "readings,meter_id=X9 power_kw=3.0 1704067200",  # not in the registry
        "readings,meter_id=C2,phases=3 power_kw=4.0 1704067200",
    ]


def test_phases_from_a_float_column_is_written_as_an_integer() -> None:
    registry = pd.DataFrame({"meter_id": ["M1", "M2"], "phases": [3.0, np.nan]})
    lines = encode_readings(pd.concat([one("M1", power_kw=1), one("M2", power_kw=1)]), registry)
    assert lines.lines[0].startswith("readings,meter_id=M1,phases=3 ")
    assert lines.lines[1].startswith("readings,meter_id=M2 ")


def test_nan_fields_are_omitted_and_empty_or_invalid_rows_skipped_and_counted() -> None:
    df = pd.DataFrame(
        {
            "meter_id": ["M1", "M2", "M3", None, "M5"],
            "ts": ["2024-01-01T00:00:00Z"] * 4 + [None],
            "power_kw": [1.0, np.nan, np.nan, 1.0, 1.0],
            "voltage_l1_v": [np.nan, 230.5, np.nan, 1.0, 1.0],
            "frequency_hz": [50.0, np.nan, np.nan, 1.0, 1.0],
        }
    )
    enc = encode_readings(df)
    assert enc.lines == [
        "readings,meter_id=M1 power_kw=1.0,frequency_hz=50.0 1704067200",
        "readings,meter_id=M2 voltage_l1_v=230.5 1704067200",
    ]
    assert (enc.skipped_empty, enc.skipped_invalid) == (1, 2)


@pytest.mark.parametrize(
    ("ts", "seconds"),
    [
        ("2024-01-01T00:00:00Z", 1704067200),
        ("2024-01-01T00:00:00.999Z", 1704067200),  # floored, not rounded into the next second
        ("2024-01-01T08:00:00+08:00", 1704067200),
        ("1969-12-31T23:59:59.5Z", -1),
        ("1970-01-01T00:00:00Z", 0),
    ],
)
def test_timestamp_is_whole_utc_seconds(ts: str, seconds: int) -> None:
    (line,) = encode_readings(one(ts=ts, power_kw=1.0)).lines
    assert line.rsplit(" ", 1)[1] == str(seconds)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1, "0.1"),
        (0.1 + 0.2, "0.30000000000000004"),
        (230.0, "230.0"),
        (1e-05, "1e-05"),
        (1e16, "1e+16"),
        (-12345.678901234567, "-12345.678901234567"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
    ],
)
def test_floats_use_shortest_round_trip_repr(value: float, text: str) -> None:
    (line,) = encode_readings(one(energy_import_kwh=value)).lines
    assert line.split(" ")[1] == f"energy_import_kwh={text}"


@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=12)
)
def test_every_finite_float_round_trips_exactly(values: list[float]) -> None:
    fields = dict(zip(READING_FIELDS, values, strict=False))
    row: dict[str, object] = {"meter_id": "M1", "ts": "2024-01-01T00:00:00Z", **fields}
    (line,) = encode_readings(pd.DataFrame([row])).lines
    parsed = dict(kv.split("=") for kv in line.split(" ")[1].split(","))
    assert {k: float(v) for k, v in parsed.items()} == fields
    assert all(np.signbit(float(parsed[k])) == np.signbit(v) for k, v in fields.items())


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1", 1.0), ("2.5", 2.5), (" 0 ", 0.0), ("-3", 0.0), (None, None), ("", None), ("soon", None)],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_parse_retry_after_http_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_rejected_lines_reads_the_influxdb_1x_partial_write_message() -> None:
    good, bad1, bad2 = "m,a=1 f=1 1", "m,a=2 f=inf 1", "m,a=it's': f=NaN 1"
    error = (
        f"partial write: unable to parse '{bad1}': invalid boolean\n"
        f"unable to parse '{bad2}': invalid number dropped=0"
    )
    assert rejected_lines(error, [good, bad1, bad2]) == {
        bad1: "invalid boolean",
        bad2: "invalid number",
    }


# --------------------------------------------------------------------------- real influxd


def test_missing_server_binary_fails_the_test_naming_the_package() -> None:
    with pytest.raises(pytest.fail.Exception, match="install the Debian package 'influxdb'"):
        require_binary(("/nonexistent/influxd",), "influxdb")


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with influxdb(tmp_path_factory.mktemp("influx")) as server:
        yield server


def influxql(server: RunningServer, q: str, db: str | None = None) -> dict[str, Any]:
    params = {"q": q, "epoch": "s", **({"db": db} if db else {})}
    req = urllib.request.Request(
        f"{server.url}/query", data=urllib.parse.urlencode(params).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        doc: dict[str, Any] = json.load(resp)
    return doc


@pytest.fixture
def database(influx: RunningServer) -> str:
    name = f"mw_{uuid.uuid4().hex[:12]}"
    influxql(influx, f'CREATE DATABASE "{name}"')
    return name


REGISTRY = pd.DataFrame(
    {
        "meter_id": ["M-001", "M 002", "M,003=x", "T-1"],
        "role": ["customer", "customer", "customer", "transformer"],
        "transformer_id": ["TA 1", "TA 1", "TA2", "TA 1"],
        "customer_class": ["residential", "commercial", "industrial", ""],
        "phases": [1, 3, 3, 3],
    }
)
METERS = ["M-001", "M 002", "M,003=x", "T-1", "M'unregistered"]


def fleet(n_per_meter: int = 60, seed: int = 7) -> pd.DataFrame:
    """A few hundred readings with full-precision floats and some NaN quantities."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-03-01", periods=n_per_meter, freq="15min", tz="UTC")
    frames = []
    for i, meter in enumerate(METERS):
        df = pd.DataFrame({"meter_id": meter, "ts": ts})
        for j, col in enumerate(READING_FIELDS):
            df[col] = rng.uniform(-1e3, 1e4, n_per_meter) * (10.0 ** rng.integers(-8, 8))
            if i == 0 and j >= 5:  # single-phase meter: l2/l3 and the rest absent
                df[col] = np.nan
        df.loc[::7, "frequency_hz"] = np.nan
        frames.append(df)
    return normalize_readings(pd.concat(frames, ignore_index=True))


def v1_store(server: RunningServer, database: str, **kwargs: Any) -> InfluxStore:
    return InfluxStore(flavor="v1", url=server.url, database=database, **kwargs)


def test_influx_store_is_a_reading_store(influx: RunningServer, database: str) -> None:
    assert isinstance(v1_store(influx, database), ReadingStore)


def test_v1_round_trip_is_exact_values_tags_and_timestamps(
    influx: RunningServer, database: str
) -> None:
    store = v1_store(influx, database, tags=REGISTRY, batch_size=128)
    df = fleet()
    assert store.write_readings(df) == len(df) == 300
    assert store.lines_written == 300 and store.lines_dead_lettered == 0

    back = store.read_readings()
    expected = df.sort_values(["meter_id", "ts"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(back, expected, check_exact=True)

    series = influxql(influx, "SHOW SERIES FROM readings", database)["results"][0]["series"][0]
    assert sorted(v[0] for v in series["values"]) == sorted(
        [
            r"readings,customer_class=commercial,meter_id=M\ 002,phases=3,transformer_id=TA\ 1",
            r"readings,customer_class=industrial,meter_id=M\,003\=x,phases=3,transformer_id=TA2",
            r"readings,customer_class=residential,meter_id=M-001,phases=1,transformer_id=TA\ 1",
            r"readings,meter_id=M'unregistered",
            r"readings,meter_id=T-1,phases=3,transformer_id=TA\ 1",
        ]
    )
    store.close()


def test_v1_read_by_meter_and_time_range(influx: RunningServer, database: str) -> None:
    store = v1_store(influx, database, tags=REGISTRY)
    df = fleet()
    store.write_readings(df)
    start, end = pd.Timestamp("2024-03-01T03:00Z"), pd.Timestamp("2024-03-01T06:00Z")
    wanted = ["M,003=x", "M'unregistered"]
    got = store.read_readings(wanted, start, end)
    mask = df["meter_id"].isin(wanted) & (df["ts"] >= start) & (df["ts"] < end)
    expected = df[mask].sort_values(["meter_id", "ts"]).reset_index(drop=True)
    assert len(expected) == 2 * 12
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    # naive datetimes are UTC; unknown meters and empty lists give an empty canonical frame
    naive = store.read_readings(["M-001"], start.tz_localize(None), end.tz_localize(None))
    assert len(naive) == 12 and naive["ts"].min() == start
    assert store.read_readings(["nobody"]).empty
    assert list(store.read_readings([]).columns) == list(expected.columns)


def test_read_chunks_long_meter_lists(
    influx: RunningServer, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("meterwatch.storage.influx.READ_CHUNK_METERS", 2)
    store = v1_store(influx, database)
    df = fleet(n_per_meter=5)
    store.write_readings(df)
    got = store.read_readings(METERS[::-1])
    assert len(got) == len(df)
    assert got["meter_id"].tolist() == sorted(got["meter_id"].tolist())


def test_duplicate_write_is_harmless(influx: RunningServer, database: str) -> None:
    store = v1_store(influx, database, tags=REGISTRY)
    df = fleet(n_per_meter=20)
    store.write_readings(df)
    store.write_readings(df)
    assert len(store.read_readings()) == len(df) == 100
    count = influxql(influx, "SELECT COUNT(power_kw) FROM readings", database)
    assert count["results"][0]["series"][0]["values"][0][1] == 100


def test_missing_database_names_the_setting(influx: RunningServer) -> None:
    store = v1_store(influx, "no_such_db")
    with pytest.raises(StorageError, match=r"storage\.influx\.database") as info:
        store.write_readings(fleet(n_per_meter=2))
    assert "no_such_db" in str(info.value) and store.retries == 0
    with pytest.raises(StorageError, match=r"storage\.influx\.database"):
        store.read_readings()


def test_missing_retention_policy_names_the_setting(influx: RunningServer, database: str) -> None:
    store = v1_store(influx, database, retention_policy="nope")
    with pytest.raises(StorageError, match=r"storage\.influx\.retention_policy"):
        store.write_readings(fleet(n_per_meter=2))
    assert store.retries == 0


def test_named_retention_policy_as_in_the_docs(influx: RunningServer) -> None:
    name = f"mw_{uuid.uuid4().hex[:12]}"
    # the statement docs/storage-schema.md gives operators
    influxql(
        influx,
        f"CREATE DATABASE {name} WITH DURATION 400d REPLICATION 1 SHARD DURATION 7d "
        "NAME readings_400d",
    )
    store = v1_store(influx, name, retention_policy="readings_400d")
    recent = sample(6)
    recent["ts"] = pd.Timestamp.now(tz="UTC").floor("s") - pd.to_timedelta(recent.index, "min")
    assert store.write_readings(recent) == 6
    assert len(store.read_readings(["M1"])) == 6
    assert len(v1_store(influx, name).read_readings()) == 6  # it is the default policy
    with pytest.raises(StorageError, match=r"storage\.influx\.retention_policy"):
        v1_store(influx, name, retention_policy="autogen").read_readings()


def test_real_partial_write_dead_letters_the_bad_point(
    influx: RunningServer, database: str, tmp_path: Path
) -> None:
    dead = tmp_path / "dead.jsonl"
    store = v1_store(influx, database, dead_letter_path=dead)
    df = fleet(n_per_meter=4)
    df.loc[5, "power_kw"] = np.inf  # InfluxDB cannot store it: the server names the line
    assert store.write_readings(df) == len(df) - 1
    (record,) = [json.loads(x) for x in dead.read_text().splitlines()]
    assert "power_kw=inf" in record["line"] and record["identified"] is True
    assert "unable to parse" in record["error"] and record["reason"]
    assert len(store.read_readings()) == len(df) - 1


# --------------------------------------------------------------------------- fake server

Response = tuple[int, dict[str, str], str]


@dataclass
class Seen:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: str
    at: float


@dataclass
class FakeInflux:
    """An HTTP server on a free loopback port answering from a script (last entry repeats)."""

    script: list[Response | Callable[[Seen], Response]]
    requests: list[Seen] = field(default_factory=list)
    url: str = ""

    def answer(self, seen: Seen) -> Response:
        self.requests.append(seen)
        entry = self.script[min(len(self.requests) - 1, len(self.script) - 1)]
        return entry(seen) if callable(entry) else entry


@pytest.fixture
def fake() -> Iterator[Callable[..., FakeInflux]]:
    servers: list[ThreadingHTTPServer] = []

    def start(*script: Response | Callable[[Seen], Response]) -> FakeInflux:
        state = FakeInflux(list(script))

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length).decode()
                url = urllib.parse.urlsplit(self.path)
                seen = Seen(
                    self.command,
                    url.path,
                    dict(urllib.parse.parse_qsl(url.query)),
                    dict(self.headers.items()),
                    body,
                    time.monotonic(),
                )
                status, headers, text = state.answer(seen)
                payload = text.encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(httpd)
        state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        return state

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


OK: Response = (204, {}, "")
UNAVAILABLE: Response = (503, {}, '{"error":"engine: cache-max-memory-size exceeded"}')


def sample(n: int = 10) -> pd.DataFrame:
    ts = pd.date_range("2024-03-01", periods=n, freq="1min", tz="UTC")
    return pd.DataFrame({"meter_id": "M1", "ts": ts, "power_kw": np.arange(n) + 0.5})


def fake_store(server: FakeInflux, **kwargs: Any) -> InfluxStore:
    kwargs.setdefault("backoff_base_s", 0.01)
    return InfluxStore(flavor="v1", url=server.url, database="meters", **kwargs)


def test_429_retry_after_is_honoured_and_data_written_once(fake: Callable[..., FakeInflux]) -> None:
    server = fake((429, {"Retry-After": "1"}, '{"error":"too many requests"}'), OK)
    store = fake_store(server)
    assert store.write_readings(sample()) == 10
    first, second = server.requests
    assert second.at - first.at >= 0.95
    assert first.body == second.body and len(second.body.splitlines()) == 10
    assert (store.retries, store.lines_written, store.errors["http_429"]) == (1, 10, 1)


def test_503_twice_then_204(fake: Callable[..., FakeInflux]) -> None:
    server = fake(UNAVAILABLE, UNAVAILABLE, OK)
    store = fake_store(server)
    assert store.write_readings(sample()) == 10
    assert len(server.requests) == 3
    assert (store.retries, store.errors["http_503"], store.lines_written) == (2, 2, 10)


def test_503_forever_gives_up_after_the_budget(fake: Callable[..., FakeInflux]) -> None:
    server = fake(UNAVAILABLE)
    store = fake_store(server, max_retries=1000, retry_budget_s=0.6, backoff_base_s=0.05)
    started = time.monotonic()
    with pytest.raises(StorageError, match="retry_budget_s=0.6") as info:
        store.write_readings(sample())
    assert time.monotonic() - started <= 0.6 + 0.3
    assert len(server.requests) >= 3 and store.lines_written == 0
    assert "503" in str(info.value)


def test_max_retries_bounds_the_attempts(fake: Callable[..., FakeInflux]) -> None:
    server = fake(UNAVAILABLE)
    store = fake_store(server, max_retries=2)
    with pytest.raises(StorageError, match="3 attempt"):
        store.write_readings(sample())
    assert len(server.requests) == 3


def test_connection_refused_is_retried_like_a_5xx() -> None:
    store = InfluxStore(
        flavor="v1",
        url=f"http://127.0.0.1:{free_port()}",
        database="meters",
        max_retries=2,
        backoff_base_s=0.01,
    )
    with pytest.raises(StorageError, match="3 attempt"):
        store.write_readings(sample())
    assert store.errors["connection"] == 3 and store.retries == 2


def test_400_partial_write_dead_letters_the_named_point(
    fake: Callable[..., FakeInflux], tmp_path: Path
) -> None:
    bad = "readings,meter_id=M1 power_kw=3.5 1709251380"

    def partial(seen: Seen) -> Response:
        assert bad in seen.body.splitlines()
        error = f"partial write: unable to parse '{bad}': invalid field format dropped=0"
        return 400, {"X-Influxdb-Error": error}, json.dumps({"error": error})

    server = fake(partial)
    dead = tmp_path / "dead" / "influx.jsonl"
    store = fake_store(server, dead_letter_path=dead)
    assert store.write_readings(sample()) == 9
    assert (store.lines_written, store.lines_dead_lettered, store.retries) == (9, 1, 0)
    (record,) = [json.loads(x) for x in dead.read_text().splitlines()]
    assert record["line"] == bad
    assert record["reason"] == "invalid field format"
    assert "partial write" in record["error"] and record["status"] == 400
    assert pd.Timestamp(record["time"]).tzinfo is not None


def test_400_count_only_drop_dead_letters_unnamed_lines_flagged(
    fake: Callable[..., FakeInflux], tmp_path: Path
) -> None:
    error = "partial write: points beyond retention policy dropped=2"
    server = fake((400, {}, json.dumps({"error": error})))
    dead = tmp_path / "dead.jsonl"
    store = fake_store(server, dead_letter_path=dead)
    assert store.write_readings(sample(5)) == 3
    records = [json.loads(x) for x in dead.read_text().splitlines()]
    assert len(records) == 5 and not any(r["identified"] for r in records)
    assert store.lines_dead_lettered == 2


def test_413_splits_the_batch(fake: Callable[..., FakeInflux]) -> None:
    def small_only(seen: Seen) -> Response:
        if len(seen.body.splitlines()) > 3:
            return 413, {}, '{"error":"Request Entity Too Large"}'
        return OK

    server = fake(small_only)
    store = fake_store(server)
    df = sample(10)
    assert store.write_readings(df) == 10
    accepted = [s.body.splitlines() for s in server.requests if len(s.body.splitlines()) <= 3]
    assert sorted(line for batch in accepted for line in batch) == sorted(encode_readings(df).lines)
    assert len(server.requests[0].body.splitlines()) == 10 and store.retries == 0


def test_batches_of_batch_size(fake: Callable[..., FakeInflux]) -> None:
    server = fake(OK)
    store = fake_store(server, batch_size=4)
    assert store.write_readings(sample(10)) == 10
    assert [len(s.body.splitlines()) for s in server.requests] == [4, 4, 2]
    assert store.write_readings(sample(0)) == 0 and len(server.requests) == 3


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_names_the_credentials_setting(
    fake: Callable[..., FakeInflux], status: int
) -> None:
    server = fake((status, {}, '{"error":"authorization failed"}'))
    store = fake_store(server, username="mw", password="secret")
    with pytest.raises(StorageError, match=r"storage\.influx\.username/password"):
        store.write_readings(sample())
    assert len(server.requests) == 1
    assert server.requests[0].headers["Authorization"].startswith("Basic ")
    assert "secret" not in server.requests[0].path + json.dumps(server.requests[0].params)


def test_v2_auth_failure_names_the_token_setting(fake: Callable[..., FakeInflux]) -> None:
    server = fake((401, {}, '{"code":"unauthorized","message":"unauthorized access"}'))
    store = InfluxStore(flavor="v2", url=server.url, org="o", bucket="b", token="bad")
    with pytest.raises(StorageError, match=r"storage\.influx\.token \(env MW_INFLUX_TOKEN\)"):
        store.write_readings(sample())


def test_v2_write_path_params_and_token(fake: Callable[..., FakeInflux]) -> None:
    server = fake(OK)
    store = InfluxStore(
        flavor="v2", url=server.url + "/", org="grid co", bucket="meters/raw", token="s3cr3t"
    )
    assert store.write_readings(sample(3)) == 3
    (seen,) = server.requests
    assert seen.path == "/api/v2/write"
    assert seen.params == {"org": "grid co", "bucket": "meters/raw", "precision": "s"}
    assert seen.headers["Authorization"] == "Token s3cr3t"
    assert seen.body.splitlines() == encode_readings(sample(3)).lines
    # v2 writes go through influxdb-client's WriteApi (issue #4 item 1), v1 ones do not.
    assert seen.headers["User-Agent"].startswith("influxdb-client-python/")


def test_v2_missing_bucket_names_the_setting(fake: Callable[..., FakeInflux]) -> None:
    server = fake((404, {}, '{"code":"not found","message":"bucket \\"b\\" not found"}'))
    store = InfluxStore(flavor="v2", url=server.url, org="o", bucket="b", token="t")
    with pytest.raises(StorageError, match=r"storage\.influx\.bucket"):
        store.write_readings(sample())


def test_v2_read_uses_the_1x_compatibility_query_api(fake: Callable[..., FakeInflux]) -> None:
    result = {
        "results": [
            {
                "statement_id": 0,
                "series": [
                    {
                        "name": "readings",
                        "columns": ["time", "meter_id", "phases", "power_kw", "voltage_l1_v"],
                        "values": [
                            [1709251260, "M1", "1", 2, None],
                            [1709251200, "M1", "1", 0.30000000000000004, 230.1],
                        ],
                    }
                ],
            }
        ]
    }
    server = fake((200, {"Content-Type": "application/json"}, json.dumps(result)))
    store = InfluxStore(flavor="v2", url=server.url, org="o", bucket="meters", token="tok")
    got = store.read_readings(["M1"], start=pd.Timestamp("2024-03-01T00:00Z"))
    (seen,) = server.requests
    assert seen.path == "/query" and seen.params["db"] == "meters"
    assert seen.params["epoch"] == "s" and seen.headers["Authorization"] == "Token tok"
    q = urllib.parse.parse_qs(seen.body)["q"][0]
    assert (
        q == 'SELECT * FROM "readings" WHERE time >= 1709251200000000000 AND ("meter_id" = \'M1\')'
    )
    assert got["ts"].tolist() == [
        pd.Timestamp("2024-03-01T00:00Z"),
        pd.Timestamp("2024-03-01T00:01Z"),
    ]
    assert got["power_kw"].tolist() == [0.30000000000000004, 2.0]
    assert np.isnan(got["voltage_l1_v"].iloc[1]) and got["energy_import_kwh"].isna().all()


def test_config_errors_name_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"storage\.influx\.database"):
        InfluxStore(flavor="v1", url="http://127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"storage\.influx\.token"):
        InfluxStore(flavor="v2", url="http://127.0.0.1:1", org="o", bucket="b")
