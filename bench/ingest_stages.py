"""What one single-reading MQTT message costs per ingest stage [µs of CPU per message].

Both paths: the full service's (pandas: ``to_utc``, a frame, ``encode_readings``) and the lean
ingest process's (``iso_epoch_ns``, a ColumnBatch, the repeat check, ``ColumnEncoder``).

Each stage of the collector's path is timed apart on the issue #13 payloads (``ts`` + 7
quantities), in one process, best of ``--repeat``: splitting PUBLISH packets out of the byte
stream, decoding payloads into columns, parsing the timestamps, building the frame, encoding
line protocol, appending to the spool (fsync included), writing to the embedded store (with its
duplicate check), encoding the PUBACKs. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from bench.ingest_bench import single_messages
from meterwatch.collector.mqtt import _column_batch, frame_of_columns
from meterwatch.core.schema import to_utc
from meterwatch.protocols import mqtt_packets as mp
from meterwatch.protocols.mqtt_payload import decode_columns, iso_epoch_ns
from meterwatch.storage.embedded import EmbeddedStore
from meterwatch.storage.line_protocol import encode_readings
from meterwatch.storage.lp_encode import ColumnEncoder
from meterwatch.storage.recent import RecentReadings
from meterwatch.storage.spool import Spool


def _publish_packet(topic: str, payload: bytes, pid: int) -> bytes:
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + pid.to_bytes(2, "big") + payload
    return bytes([0x32]) + mp.encode_varint(len(body)) + body


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def stages(n: int, batch: int, repeat: int) -> dict[str, float]:
    msgs = single_messages(n, max(1, n // 10))
    stream = b"".join(_publish_packet(t, b, i % 65535 + 1) for i, (t, b) in enumerate(msgs))
    chunks = [stream[i : i + 256 * 1024] for i in range(0, len(stream), 256 * 1024)]
    out: dict[str, float] = {"messages": n}

    def split() -> None:
        reader = mp.PacketReader()
        for c in chunks:
            reader.feed(c)

    out["split_packets_us"] = best(split, repeat) / n * 1e6
    payloads = [b for _, b in msgs]
    meters = [t.split("/")[1] for t, _ in msgs]
    out["decode_columns_us"] = (
        best(lambda: decode_columns("canonical", payloads, meters), repeat) / n * 1e6
    )
    cols = decode_columns("canonical", payloads, meters)
    out["parse_ts_us"] = best(lambda: to_utc(pd.Series(cols.ts, dtype=object)), repeat) / n * 1e6
    out["parse_ts_fast_us"] = best(lambda: iso_epoch_ns(cols.ts), repeat) / n * 1e6
    # The lean process: columns -> ColumnBatch -> repeats judged -> line protocol, no pandas.
    out["column_batch_us"] = best(lambda: _column_batch(cols, 0), repeat) / n * 1e6
    cb = _column_batch(cols, 0)
    assert cb is not None
    pieces = [np.arange(i, min(i + batch, n)) for i in range(0, n, batch)]
    out["judge_repeats_us"] = (
        best(
            lambda: [
                RecentReadings().judge([cb.meter_id[i] for i in r], cb.seconds[r], cb.values[r])
                for r in pieces
            ],
            repeat,
        )
        / n
        * 1e6
    )
    enc = ColumnEncoder()
    out["line_protocol_lean_us"] = (
        best(lambda: [enc.encode(cb, r) for r in pieces], repeat) / n * 1e6
    )
    ts = to_utc(pd.Series(cols.ts, dtype=object))
    now = pd.Timestamp.now("UTC")
    out["frame_us"] = (
        best(lambda: frame_of_columns(cols.meter_id, ts, ts, cols.fields, now), repeat) / n * 1e6
    )
    frame = frame_of_columns(cols.meter_id, ts, ts, cols.fields, now)
    parts = [frame.iloc[i : i + batch] for i in range(0, n, batch)]
    out["line_protocol_us"] = best(lambda: [encode_readings(p) for p in parts], repeat) / n * 1e6
    bodies = [("\n".join(encode_readings(p).lines) + "\n").encode() for p in parts]
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp) / "spool")
        t0 = time.process_time()
        w0 = time.perf_counter()
        for b, p in zip(bodies, parts, strict=True):
            spool.append_encoded(b, len(p))
        out["spool_append_cpu_us"] = (time.process_time() - t0) / n * 1e6
        out["spool_append_wall_us"] = (time.perf_counter() - w0) / n * 1e6
        spool.close()
        store = EmbeddedStore(Path(tmp) / "s.duckdb")
        t0 = time.process_time()
        for p in parts:
            store.write_readings(p)
        out["embedded_write_us"] = (time.process_time() - t0) / n * 1e6
        store.close()
    ids = list(range(1, batch + 1))
    out["pubacks_us"] = (
        best(lambda: [mp.encode_pubacks(ids) for _ in range(n // batch)], repeat) / n * 1e6
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(json.dumps(stages(args.messages, args.batch, args.repeat)))


if __name__ == "__main__":
    main()
