"""Storage throughput [lines/s] into a real InfluxDB 1.x, against raw line-protocol HTTP posts.

Both writers send the same readings in the same batches (``batch_size`` lines, the store's
default 5,000) to ``/write?precision=s`` of one ``influxd`` started here on a free loopback port:

- ``meterwatch``: :class:`storage.influx.InfluxStore` as the writer's spool drain calls it, one
  ``write_readings`` per ``drain_batch_rows`` rows: encoding the canonical frame to line protocol
  (registry tags joined), the POST, the status check and the retry/dead-letter policy;
- ``drain``: what the service does since the spool keeps batches encoded (issue #13): the
  frame encoded at the flush (``InfluxStore.encode_body``, before the clock starts, as the
  collector's flush does it off the drain's path) and appended to a spool; timed: the drain,
  ``Spool.peek`` + ``InfluxStore.write_body`` + ``Spool.remove_through`` per ``batch`` lines
  (the delete not fsynced on its own, as the writer's drain does it: a replay is harmless);
- ``raw``: the ceiling — the same line-protocol bytes, encoded before the clock starts, posted on
  one keep-alive ``http.client`` connection, checking only for 204.

Each round writes into fresh databases (raw and MeterWatch alternate, so neither always runs
on a warmer server); the best round of each is reported. Afterwards ``count()`` checks that
every line arrived in both databases.
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
import urllib.parse
import urllib.request

import pandas as pd

from bench.common import peak_rss_mb, synthetic_readings
from meterwatch.storage.influx import InfluxStore
from meterwatch.storage.line_protocol import encode_readings


def _query(url: str, q: str, db: str | None = None) -> dict:
    params = {"q": q, **({"db": db} if db else {})}
    body = urllib.parse.urlencode(params).encode()
    with urllib.request.urlopen(f"{url}/query", data=body, timeout=60) as resp:
        return json.loads(resp.read())


def _count(url: str, db: str) -> int:
    doc = _query(url, "SELECT count(energy_import_kwh) FROM readings", db)
    series = doc["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def registry(frame: pd.DataFrame) -> pd.DataFrame:
    """Registry tags (contracts §2) for the synthetic meters: 50 meters per transformer area."""
    ids = frame["meter_id"].unique()
    return pd.DataFrame(
        {
            "meter_id": ids,
            "transformer_id": [f"T{i // 50:04d}" for i in range(len(ids))],
            "customer_class": ["commercial"] * len(ids),
            "phases": [3] * len(ids),
        }
    )


def write_raw(host: str, port: int, db: str, bodies: list[bytes]) -> float:
    """Post pre-encoded batches on one keep-alive connection; return seconds."""
    conn = http.client.HTTPConnection(host, port, timeout=60)
    path = f"/write?{urllib.parse.urlencode({'db': db, 'precision': 's'})}"
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    t0 = time.perf_counter()
    for body in bodies:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 204:
            raise RuntimeError(f"raw write to {db}: HTTP {resp.status}: {data[:300]!r}")
    seconds = time.perf_counter() - t0
    conn.close()
    return seconds


def write_meterwatch(
    url: str, db: str, frame: pd.DataFrame, tags: pd.DataFrame, rows: int
) -> float:
    store = InfluxStore(flavor="v1", url=url, database=db, tags=tags, batch_size=rows)
    t0 = time.perf_counter()
    written = 0
    for i in range(0, len(frame), rows):
        written += store.write_readings(frame.iloc[i : i + rows])
    seconds = time.perf_counter() - t0
    store.close()
    if written != len(frame) or store.lines_dead_lettered or store.retries:
        raise RuntimeError(
            f"InfluxStore wrote {written} of {len(frame)} lines "
            f"(dead-lettered {store.lines_dead_lettered}, retries {store.retries})"
        )
    return seconds


def write_drain(url: str, db: str, frame: pd.DataFrame, tags: pd.DataFrame, rows: int) -> float:
    """The service's drain of a spool of encoded batches; return seconds (drain only)."""
    import tempfile

    from meterwatch.storage.spool import Spool

    store = InfluxStore(flavor="v1", url=url, database=db, tags=tags, batch_size=rows)
    with tempfile.TemporaryDirectory(prefix="drain-bench-") as tmp:
        spool = Spool(tmp)
        for i in range(0, len(frame), rows):
            spool.append_encoded(*store.encode_body(frame.iloc[i : i + rows]))
        t0 = time.perf_counter()
        written = 0
        while (peeked := spool.peek(rows)) is not None:
            written += store.write_body(
                b"".join(b for b, _ in peeked.bodies), sum(n for _, n in peeked.bodies)
            )
            spool.remove_through(peeked.last_seq, durable=False)  # as the writer's drain
        seconds = time.perf_counter() - t0
        spool.close()
    store.close()
    if written != len(frame) or store.lines_dead_lettered or store.retries:
        raise RuntimeError(f"drain wrote {written} of {len(frame)} lines")
    return seconds


def bench(meters: int, intervals: int, batch: int, rounds: int) -> dict[str, float]:
    # tests/support/servers.py starts influxd (temp dir, free loopback ports) and stops it after.
    from tests.support.servers import influxdb

    frame = synthetic_readings(meters, intervals)
    tags = registry(frame)
    encoded = encode_readings(frame, tags)
    lines = encoded.lines
    bodies = [
        ("\n".join(lines[i : i + batch]) + "\n").encode() for i in range(0, len(lines), batch)
    ]
    out: dict[str, float] = {
        "lines": float(len(lines)),
        "batch": float(batch),
        "rounds": float(rounds),
        "fields_per_line": float(frame.shape[1] - 2),
    }
    raw_s: list[float] = []
    mw_s: list[float] = []
    drain_s: list[float] = []
    with influxdb() as server:
        host, port = server.host, server.port
        for r in range(rounds):
            for name in (f"raw{r}", f"mw{r}", f"drain{r}"):
                _query(server.url, f'CREATE DATABASE "{name}"')
            if r % 2 == 0:
                raw_s.append(write_raw(host, port, f"raw{r}", bodies))
                drain_s.append(write_drain(server.url, f"drain{r}", frame, tags, batch))
                mw_s.append(write_meterwatch(server.url, f"mw{r}", frame, tags, batch))
            else:
                mw_s.append(write_meterwatch(server.url, f"mw{r}", frame, tags, batch))
                drain_s.append(write_drain(server.url, f"drain{r}", frame, tags, batch))
                raw_s.append(write_raw(host, port, f"raw{r}", bodies))
        for r in range(rounds):
            for name in (f"raw{r}", f"mw{r}", f"drain{r}"):
                got = _count(server.url, name)
                if got != len(lines):
                    raise RuntimeError(f"database {name} holds {got} of {len(lines)} points")
    out["raw"] = len(lines) / min(raw_s)
    out["meterwatch"] = len(lines) / min(mw_s)
    out["drain"] = len(lines) / min(drain_s)
    out["drain_all"] = [len(lines) / s for s in drain_s]  # type: ignore[assignment]
    out["raw_all"] = [len(lines) / s for s in raw_s]  # type: ignore[assignment]
    out["meterwatch_all"] = [len(lines) / s for s in mw_s]  # type: ignore[assignment]
    # Share of MeterWatch's time spent encoding (measured apart, same frame and batches).
    t0 = time.perf_counter()
    for i in range(0, len(frame), batch):
        encode_readings(frame.iloc[i : i + batch], tags)
    out["encode_s"] = time.perf_counter() - t0
    out["meterwatch_s"] = min(mw_s)
    out["raw_s"] = min(raw_s)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument("--intervals", type=int, default=96)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(json.dumps(bench(args.meters, args.intervals, args.batch, args.rounds)))


if __name__ == "__main__":
    main()
