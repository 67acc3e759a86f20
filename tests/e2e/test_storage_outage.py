"""Spool + writer against a real influxd: an outage past the retry budget, and kill -9.

Every reading acknowledged upstream must arrive in InfluxDB exactly once: the test keeps its own
record of what was submitted and acknowledged and compares it per (meter_id, ts) with what the
server returns.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from meterwatch.collector.writer import ReadingWriter
from meterwatch.core.schema import normalize_readings
from meterwatch.core.stats import Stats
from meterwatch.storage.influx import InfluxStore
from meterwatch.storage.spool import Spool
from tests.support.servers import RunningServer, influxdb, restart_influxdb, stop_process

METERS = [f"M{i:02d}" for i in range(10)]
T0 = pd.Timestamp("2026-03-01T00:00:00Z")


def step_frame(step: int) -> pd.DataFrame:
    """One reading per meter at T0 + step seconds, values derived from (meter, step)."""
    n = len(METERS)
    k = np.arange(n)
    return normalize_readings(
        pd.DataFrame(
            {
                "meter_id": METERS,
                "ts": T0 + pd.Timedelta(seconds=step),
                "energy_import_kwh": 1000.0 * k + step * 0.125,
                "power_kw": (k + 1) * 0.5 + step % 7,
                "voltage_l1_v": 230.0 + (step % 11) * 0.1,
            }
        )
    )


def influxql(server: RunningServer, q: str, db: str | None = None) -> dict[str, Any]:
    params = {"q": q, **({"db": db} if db else {})}
    req = urllib.request.Request(
        f"{server.url}/query", data=urllib.parse.urlencode(params).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def make_store(server: RunningServer, db: str) -> InfluxStore:
    return InfluxStore(
        flavor="v1",
        url=server.url,
        database=db,
        timeout_s=1.0,
        max_retries=3,
        retry_budget_s=1.0,
        backoff_base_s=0.05,
        backoff_cap_s=0.2,
    )


def stored_keys(server: RunningServer, db: str) -> pd.DataFrame:
    store = make_store(server, db)
    try:
        return store.read_readings()
    finally:
        store.close()


def point_count(server: RunningServer, db: str) -> int:
    doc = influxql(server, "SELECT count(energy_import_kwh) FROM readings", db)
    series = doc["results"][0].get("series") or []
    return int(series[0]["values"][0][1]) if series else 0


def test_outage_longer_than_retry_budget_every_reading_arrives_once(tmp_path: Path) -> None:
    with influxdb(tmp_path) as server:
        db = f"mw_{uuid.uuid4().hex[:8]}"
        influxql(server, f'CREATE DATABASE "{db}"')
        restarted: list[RunningServer] = []

        async def scenario() -> tuple[list[int], list[int], Stats, float]:
            store = make_store(server, db)
            stats = Stats()
            writer = ReadingWriter(
                store,
                stats,
                spool=Spool(tmp_path / "spool"),
                flush_interval_s=0.05,
                drain_interval_s=0.1,
                backoff_cap_s=0.5,
            )
            writer.start()
            submitted: list[int] = []
            acked: list[int] = []
            max_depth = 0.0
            step = 0

            async def produce(seconds: float) -> None:
                nonlocal step, max_depth
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    assert writer.submit(step_frame(step), on_stored=lambda s=step: acked.append(s))
                    submitted.append(step)
                    step += 1
                    max_depth = max(max_depth, stats.gauge_snapshot().get("spool_depth_rows", 0))
                    await asyncio.sleep(0.02)

            await produce(0.5)
            await asyncio.to_thread(stop_process, server.process)
            outage_start = time.monotonic()
            await produce(2.0)  # 2 s down > retry_budget_s = 1 s: the store raises, spool keeps
            assert stats.snapshot().get("store_errors", 0) >= 1
            restarted.append(await asyncio.to_thread(restart_influxdb, server))
            outage_s = time.monotonic() - outage_start
            await produce(0.5)
            deadline = time.monotonic() + 30  # the drainer catches up while nothing new comes
            while writer.spool_rows and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await writer.close(drain_timeout_s=30.0)
            assert writer.spool_rows == 0
            store.close()
            return submitted, acked, stats, max_depth if outage_s > 1.0 else 0.0

        try:
            submitted, acked, stats, max_depth = asyncio.run(scenario())
            got = stored_keys(restarted[0], db)
            count = point_count(restarted[0], db)
        finally:
            for s in restarted:
                stop_process(s.process)

    assert sorted(acked) == submitted  # every submit acknowledged (after the spool append)
    assert max_depth > 100  # readings really waited in the spool during the outage
    expected = pd.concat([step_frame(s) for s in submitted], ignore_index=True)
    assert count == len(expected) == len(got)
    assert not got.duplicated(["meter_id", "ts"]).any()
    pd.testing.assert_frame_equal(
        got.sort_values(["meter_id", "ts"]).reset_index(drop=True),
        expected.sort_values(["meter_id", "ts"]).reset_index(drop=True),
    )
    c = stats.snapshot()
    assert c["readings_stored"] >= len(expected) and c.get("readings_refused", 0) == 0


WORKER = r"""
import asyncio, os, sys, time
sys.path.insert(0, os.environ["MW_TEST_DIR"])
from tests.e2e.test_storage_outage import step_frame, make_store
from tests.support.servers import RunningServer
from meterwatch.collector.writer import ReadingWriter
from meterwatch.core.stats import Stats
from meterwatch.storage.spool import Spool

url, db, spool_dir, acked_path, mode = sys.argv[1:6]

class _S:  # only .url is used by make_store
    def __init__(self, url): self.url = url

async def main():
    store = make_store(_S(url), db)
    writer = ReadingWriter(store, Stats(), spool=Spool(spool_dir), flush_interval_s=0.02,
                           drain_interval_s=0.05, backoff_cap_s=0.3)
    writer.start()
    if mode == "drain":
        deadline = time.monotonic() + 60
        while writer.spool_rows and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await writer.close(drain_timeout_s=30)
        sys.exit(0 if writer.spool_rows == 0 else 3)
    fd = os.open(acked_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    def ack(step):
        os.write(fd, f"{step}\n".encode())  # the upstream acknowledgement, as a file
        os.fsync(fd)
    step = 0
    while True:  # until SIGKILL
        writer.submit(step_frame(step), on_stored=lambda s=step: ack(s))
        step += 1
        await asyncio.sleep(0.01)

asyncio.run(main())
"""


def _acked(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [int(x) for x in path.read_text().split()]


def _wait_acked(path: Path, n: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(_acked(path)) < n:
        assert proc.poll() is None, f"worker exited early with {proc.returncode}"
        assert time.monotonic() < deadline, f"fewer than {n} acknowledgements in {timeout_s} s"
        time.sleep(0.05)


def test_sigkill_mid_run_then_restart_loses_nothing(tmp_path: Path) -> None:
    spool_dir, acked_path = tmp_path / "spool", tmp_path / "acked.txt"
    env = {**os.environ, "MW_TEST_DIR": str(Path(__file__).resolve().parents[2])}
    with influxdb(tmp_path) as server:
        db = f"mw_{uuid.uuid4().hex[:8]}"
        influxql(server, f'CREATE DATABASE "{db}"')
        args = [sys.executable, "-c", WORKER, server.url, db, str(spool_dir), str(acked_path)]
        worker = subprocess.Popen([*args, "produce"], env=env, stderr=subprocess.PIPE)
        try:
            _wait_acked(acked_path, 30, worker, 30.0)
            # Freeze the database so that acknowledged readings pile up in the spool, then kill.
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                n = len(_acked(acked_path))
                _wait_acked(acked_path, n + 40, worker, 30.0)
                worker.send_signal(signal.SIGKILL)
                worker.wait(10)
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        acked = _acked(acked_path)
        left = Spool(spool_dir)
        pending = left.depth_rows
        left.close()
        assert pending > 0, "nothing was pending at the kill: the test did not exercise recovery"

        drain = subprocess.run(
            [*args, "drain"], env=env, capture_output=True, timeout=120, check=False
        )
        assert drain.returncode == 0, drain.stderr.decode()[-2000:]
        got = stored_keys(server, db)
        count = point_count(server, db)

    expected = pd.concat([step_frame(s) for s in sorted(set(acked))], ignore_index=True)
    keys = set(zip(got["meter_id"], got["ts"], strict=True))
    missing = set(zip(expected["meter_id"], expected["ts"], strict=True)) - keys
    assert not missing, f"{len(missing)} acknowledged readings lost, e.g. {sorted(missing)[:3]}"
    # Nothing twice, nothing invented: stored steps are a prefix of what the worker produced.
    assert count == len(got) and not got.duplicated(["meter_id", "ts"]).any()
    steps = ((got["ts"] - T0).dt.total_seconds()).astype(int)
    assert steps.min() == 0 and len(got) == len(METERS) * (steps.max() + 1)
    merged = got.merge(expected, on=["meter_id", "ts"], suffixes=("", "_sent"))
    assert (merged["energy_import_kwh"] == merged["energy_import_kwh_sent"]).all()


def test_service_with_influx_backend_stores_everything_served_once(tmp_path: Path) -> None:
    """`meterwatch run` wiring: backend influx → spool → InfluxDB; /metrics shows the spool."""
    from meterwatch.config import parse_config
    from meterwatch.service import Service
    from tests.support.servers import free_port

    with influxdb(tmp_path) as server:
        db = f"mw_{uuid.uuid4().hex[:8]}"
        influxql(server, f'CREATE DATABASE "{db}"')
        metrics_port = free_port()
        cfg = parse_config(
            {
                "clock": {"start": "2026-01-05T00:00:00Z", "speed": 4800},
                "simulator": {
                    "enabled": True,
                    "seed": 7,
                    "residential": 6,
                    "commercial": 2,
                    "industrial": 2,
                    "transformers": 1,
                    "mqtt_share": 0.25,
                    "modbus": {"host": "127.0.0.1", "port": free_port()},
                },
                "mqtt": {
                    "broker": "embedded",
                    "port": free_port(),
                    "client_id": f"outage-{db}",
                    "dead_letter": str(tmp_path / "dead.jsonl"),
                },
                "collector": {
                    "modbus": {
                        "interval": "15m",
                        "gateways": [
                            {"name": "sim", "host": "127.0.0.1", "port": 1, "devices": "simulator"}
                        ],
                    }
                },
                "storage": {
                    "backend": "influx",
                    "influx": {
                        "flavor": "v1",
                        "url": server.url,
                        "database": db,
                        "flush_interval": 0.2,
                    },
                    "spool": {"path": str(tmp_path / "spool")},
                },
                "alerts": {"feed": str(tmp_path / "alerts.jsonl")},
                "metrics": {"enabled": True, "port": metrics_port},
            }
        )
        service = Service(cfg)
        scraped: list[str] = []

        async def run() -> Any:
            task = asyncio.create_task(service.run(5))
            await asyncio.sleep(3)
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
            scraped.append(body.decode())
            return await task

        summary = asyncio.run(run())
        got = stored_keys(server, db)

    assert service.simulator is not None and service.simulator.mqtt is not None
    # Modbus: one stored reading per read the simulated gateway answered (the collector stamps
    # its own read time, so compare per meter); MQTT: exactly the messages the broker acked.
    served = Counter(r.meter_id for r in service.simulator.modbus.served)
    acked = {(p.meter_id, pd.Timestamp(p.ts)) for p in service.simulator.mqtt.acked}
    mqtt_ids = {m for m, _ in acked}
    assert sum(served.values()) > 50 and len(acked) > 10
    assert not got.duplicated(["meter_id", "ts"]).any()
    assert Counter(got.loc[~got["meter_id"].isin(mqtt_ids), "meter_id"]) == served
    on_mqtt = got[got["meter_id"].isin(mqtt_ids)]
    assert set(zip(on_mqtt["meter_id"], on_mqtt["ts"], strict=True)) == acked
    assert len(got) == sum(served.values()) + len(acked)
    assert summary.extra["spool_pending_rows"] == 0
    assert summary.counters["readings_spooled"] == len(got)
    assert "meterwatch_spool_depth_rows " in scraped[0]
    assert "meterwatch_readings_spooled_total " in scraped[0]
