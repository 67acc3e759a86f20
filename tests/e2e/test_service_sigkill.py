"""`meterwatch run` killed with SIGKILL mid-run and restarted on the same config: nothing lost.

The service runs as a real subprocess (the console script) on a config for real meters: a Modbus
TCP gateway and MQTT meters behind an external Mosquitto. The meters are the simulators, run in
this test process on their own thread and event loop, so the ground truth survives the kill: the
Modbus server logs every read it answered, the MQTT publisher every message the broker
acknowledged (PUBACK). The service is killed while MQTT messages flow (and, with InfluxDB, while
the server is down and readings wait in the spool), started again on the same config, spool and
broker session, and must end with exactly the readings the simulators served, each once.

Modbus has no acknowledgement: a read answered in the instants before a kill, still in the
writer's memory, is lost by nature. So the simulated gateway answers "device busy" (exception 6,
not a served read) from shortly before the kill, and the kill waits until the service reports no
reading pending in memory; MQTT is killed in full flow, since unacknowledged messages come again.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pandas as pd
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from meterwatch.core.clock import Clock
from meterwatch.simulators.fleet import Fleet
from meterwatch.simulators.runner import SimulatorRunner
from meterwatch.storage.embedded import EmbeddedStore
from meterwatch.storage.influx import InfluxStore
from meterwatch.storage.lp_encode import CONFLICTS_MEASUREMENT
from meterwatch.storage.spool import Spool
from tests.support.servers import (
    Mosquitto,
    RunningServer,
    free_port,
    influxdb,
    restart_influxdb,
    stop_process,
)

T0 = pd.Timestamp("2026-01-05T00:00:00Z")
TOPIC = "meters/{meter_id}/reading"
METERWATCH = Path(sys.executable).with_name("meterwatch")


class Simulators:
    """Simulated meters on their own thread: Modbus gateway and MQTT publisher (the ground truth).

    The simulated clock runs 3600x: an MQTT meter publishes every 15 simulated minutes, i.e.
    every 0.25 s of wall time, each message with its own ``ts``.
    """

    def __init__(self, mqtt_port: int):
        self.fleet = Fleet(
            start=T0.to_pydatetime(),
            residential=6,
            commercial=2,
            industrial=1,
            transformers=1,
            seed=3,
            mqtt_share=0.4,
        )
        self.runner = SimulatorRunner(
            self.fleet,
            Clock(start=T0.to_pydatetime(), speed=3600),
            modbus_port=free_port(),
            mqtt_host="127.0.0.1",
            mqtt_port=mqtt_port,
            topic_template=TOPIC,
            interval_s=900,
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="simulators", daemon=True)
        self.thread.start()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self) -> None:
        self.call(self.runner.start())

    def set_busy(self, busy: bool) -> None:
        """Every unit answers exception 6 (not a served read) from now on, or normally again."""
        modbus = self.runner.modbus

        def apply() -> None:
            if busy:
                modbus.busy.update({unit: 10**9 for unit in modbus.devices})
            else:
                modbus.busy.clear()

        self.loop.call_soon_threadsafe(apply)

    def stop(self) -> None:
        """Stop serving; the publisher waits for the broker's acknowledgement of what is in flight."""
        self.call(self.runner.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def registry(self) -> pd.DataFrame:
        return self.fleet.registry

    def ids(self, transport: str) -> set[str]:
        reg = self.registry
        return set(reg.loc[reg["transport"] == transport, "meter_id"].astype(str))

    def served(self) -> Counter[str]:
        return Counter(r.meter_id for r in list(self.runner.modbus.served))

    def acked(self) -> set[tuple[str, pd.Timestamp]]:
        assert self.runner.mqtt is not None
        return {(p.meter_id, pd.Timestamp(p.ts)) for p in list(self.runner.mqtt.acked)}


def open_session(port: int, client_id: str) -> None:
    """Create the collector's persistent session (subscribed, QoS 1) before the meters publish.

    As if the service had run before: the broker queues what is published before its first
    start, which would otherwise be acknowledged to the meters and go to no subscriber.
    """
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.connect("127.0.0.1", port, keepalive=10)
    client.loop_start()
    try:
        info = client.subscribe(TOPIC.replace("{meter_id}", "+"), qos=1)
        assert info[0] == mqtt.MQTT_ERR_SUCCESS
        time.sleep(0.3)  # SUBACK
    finally:
        client.disconnect()
        client.loop_stop()


def service_config(
    tmp: Path, sims: Simulators, mqtt_port: int, metrics_port: int, storage: dict[str, Any]
) -> Path:
    """A config for real meters (no simulator inside): the simulators' gateway and broker."""
    client_id = f"sigkill-{uuid.uuid4().hex[:6]}"
    open_session(mqtt_port, client_id)
    registry = tmp / "meters.csv"
    sims.registry.to_csv(registry, index=False)
    reg = sims.registry[sims.registry["transport"] == "modbus"]
    devices = [
        {"meter_id": str(r.meter_id), "unit": int(r.unit_id), "model": str(r.model)}
        for r in reg.itertuples()
    ]
    cfg = {
        "registry": {"path": str(registry)},
        "mqtt": {
            "broker": "external",
            "host": "127.0.0.1",
            "port": mqtt_port,
            "client_id": client_id,
            "topic": TOPIC,
            "dead_letter": str(tmp / "mqtt-dead.jsonl"),
        },
        "collector": {
            "modbus": {
                "interval": 2,  # real clock: every meter read every 2 s
                "gateways": [
                    {
                        "name": "sim",
                        "host": "127.0.0.1",
                        "port": sims.runner.modbus.port,
                        "timeout_s": 2.0,
                        "busy_retries": 0,
                        "devices": devices,
                    }
                ],
            },
            "dlt645": {"enabled": False},
        },
        "storage": storage,
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": metrics_port},
        "alerts": {
            "feed": str(tmp / "alerts.jsonl"),
            "delivery": {"state_dir": str(tmp / "delivery"), "mqtt": {"enabled": False}},
        },
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class ServiceProcess:
    """`meterwatch run --config F` as a subprocess; metrics read from its /metrics endpoint."""

    def __init__(self, config: Path, metrics_port: int, log: Path):
        if not METERWATCH.exists():
            pytest.fail(f"console script {METERWATCH} missing: `pip install -e .` the project")
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(METERWATCH), "run", "--config", str(config)],
                cwd=config.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def metrics(self) -> dict[str, float]:
        """Counters (``<name>_total``) and gauges as name -> value, without the prefix; a
        labelled metric (per gateway) is summed over its series."""
        if self.proc.poll() is not None:
            raise AssertionError(f"service exited with {self.proc.returncode}\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("meterwatch_"):
                name, value = line.rsplit(" ", 1)
                key = name.split("{", 1)[0].removeprefix("meterwatch_").removesuffix("_total")
                out[key] = out.get(key, 0.0) + float(value)
        return out

    def wait(self, cond: Callable[[dict[str, float]], bool], what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last: dict[str, float] = {}
        while True:
            last = self.metrics()
            if last and cond(last):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"service: {what} not reached in {timeout_s} s; {last}")
            time.sleep(0.1)

    def quiesce_modbus(self, sims: Simulators) -> None:
        """Gateway busy from now on; wait until every read it answered is out of memory."""
        sims.set_busy(True)
        cycles = self.metrics().get("poll_cycles", 0)
        self.wait(
            lambda m: m.get("poll_cycles", 0) >= cycles + 2 and m.get("writer_pending_rows") == 0,
            "two poll cycles after the gateway went busy, nothing pending in memory",
            20,
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        """SIGTERM: the clean stop (flush, drain, close); its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"service did not stop on SIGTERM\n{self.log_tail()}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def simulators(mqtt_port: int) -> Iterator[Simulators]:
    """Simulators built (ports chosen) but not serving yet: ``start()`` once the session exists."""
    sims = Simulators(mqtt_port)
    try:
        yield sims
    finally:
        if sims.thread.is_alive() and sims.loop.is_running():
            sims.stop()


def check_exactly_served(stored: pd.DataFrame, conflicts: pd.DataFrame, sims: Simulators) -> None:
    """Stored = served: per Modbus meter as many readings as reads answered; MQTT keys = acked.

    A Modbus reading is stamped to the second: a meter read twice within one second (a poll
    cycle run right after another) gives a second reading with the same meter and time and
    other values, which both stores keep apart in ``reading_conflicts`` (issue #13: kept and
    reported, never overwritten). It counts as stored there, and only there: its meter and
    time must be a stored reading's."""
    assert not stored.duplicated(["meter_id", "ts"]).any()
    served, acked = sims.served(), sims.acked()
    modbus_ids, mqtt_ids = sims.ids("modbus"), sims.ids("mqtt")
    assert set(served) == modbus_ids and {m for m, _ in acked} == mqtt_ids
    stored_keys = set(zip(stored["meter_id"], stored["ts"], strict=True))
    conflict_keys = list(zip(conflicts["meter_id"], conflicts["ts"], strict=True))
    assert set(conflict_keys) <= stored_keys, "a reading kept apart with no stored one"
    assert {m for m, _ in conflict_keys} <= modbus_ids, "MQTT redeliveries are exact repeats"
    on_modbus = Counter(stored.loc[stored["meter_id"].isin(modbus_ids), "meter_id"])
    on_modbus.update(m for m, _ in conflict_keys)
    assert on_modbus == served, (
        f"Modbus stored vs served: {on_modbus - served} / {served - on_modbus}"
    )
    on_mqtt = stored[stored["meter_id"].isin(mqtt_ids)]
    keys = set(zip(on_mqtt["meter_id"], on_mqtt["ts"], strict=True))
    assert keys == acked, f"MQTT: {len(acked - keys)} lost, {len(keys - acked)} unexpected"
    assert len(stored) + len(conflict_keys) == sum(served.values()) + len(acked)


def mqtt_keys_done(stored: pd.DataFrame, sims: Simulators) -> bool:
    on_mqtt = stored[stored["meter_id"].isin(sims.ids("mqtt"))]
    return set(zip(on_mqtt["meter_id"], on_mqtt["ts"], strict=True)) >= sims.acked()


@pytest.mark.slow  # two service starts, ~20 s
def test_sigkill_with_influxdb_and_a_full_spool_then_restart_loses_nothing(
    tmp_path: Path, mosquitto_broker: Mosquitto
) -> None:
    with influxdb(tmp_path) as first_server:
        db = f"mw_{uuid.uuid4().hex[:8]}"
        _create_database(first_server, db)
        servers: list[RunningServer] = []
        metrics_port = free_port()
        storage = {
            "backend": "influx",
            "influx": {
                "flavor": "v1",
                "url": first_server.url,
                "database": db,
                "flush_interval": 0.2,
                "timeout_s": 1,
                "max_retries": 1,
                "retry_budget_s": 1,
            },
            "spool": {"path": str(tmp_path / "spool")},
        }
        with simulators(mosquitto_broker.port) as sims:
            config = service_config(tmp_path, sims, mosquitto_broker.port, metrics_port, storage)
            sims.start()
            log = tmp_path / "service.log"
            first = ServiceProcess(config, metrics_port, log)
            try:
                first.wait(
                    lambda m: m.get("readings_stored", 0) >= 20 and m.get("mqtt_messages", 0) >= 10,
                    "readings in InfluxDB from both collectors",
                    30,
                )
                stop_process(first_server.process)  # InfluxDB down: readings wait in the spool
                first.wait(lambda m: m.get("spool_depth_rows", 0) >= 40, "40 readings spooled", 20)
                first.quiesce_modbus(sims)
                first.kill()  # MQTT still flowing
            finally:
                first.close()
            spool = Spool(tmp_path / "spool")
            pending = spool.depth_rows
            spool.close()
            assert pending >= 40, f"only {pending} readings in the spool at the kill"

            sims.set_busy(False)
            time.sleep(1.0)  # MQTT meters keep publishing while the service is down
            servers.append(restart_influxdb(first_server))
            try:
                second = ServiceProcess(config, metrics_port, log)
                try:
                    second.wait(
                        lambda m: (
                            m.get("readings_drained", 0) >= pending
                            and m.get("spool_depth_rows", 1) == 0
                            and m.get("poll_cycles", 0) >= 3
                        ),
                        "the spool of the killed run drained, new polls",
                        40,
                    )
                    second.quiesce_modbus(sims)
                    sims.stop()  # the ground truth is final from here
                    deadline = time.monotonic() + 30
                    while not mqtt_keys_done(read_influx(servers[0], db), sims):
                        assert time.monotonic() < deadline, "MQTT readings missing in InfluxDB"
                        time.sleep(0.2)
                    assert second.terminate() == 0, second.log_tail()
                finally:
                    second.close()
                stored = read_influx(servers[0], db)
                conflicts = read_influx(servers[0], db, CONFLICTS_MEASUREMENT)
            finally:
                for s in servers:
                    stop_process(s.process)

    check_exactly_served(stored, conflicts, sims)


@pytest.mark.slow  # two service starts, ~20 s
def test_sigkill_with_embedded_store_then_restart_loses_nothing(
    tmp_path: Path, mosquitto_broker: Mosquitto
) -> None:
    metrics_port = free_port()
    storage = {"backend": "embedded", "path": str(tmp_path / "store.duckdb")}
    with simulators(mosquitto_broker.port) as sims:
        config = service_config(tmp_path, sims, mosquitto_broker.port, metrics_port, storage)
        sims.start()
        log = tmp_path / "service.log"
        first = ServiceProcess(config, metrics_port, log)
        try:
            first.wait(
                lambda m: m.get("readings_stored", 0) >= 40 and m.get("mqtt_messages", 0) >= 20,
                "readings in the embedded store from both collectors",
                30,
            )
            first.quiesce_modbus(sims)
            first.kill()  # MQTT in full flow: unacknowledged messages come again
        finally:
            first.close()
        sims.set_busy(False)
        time.sleep(1.0)  # MQTT meters keep publishing while the service is down
        second = ServiceProcess(config, metrics_port, log)
        try:
            second.wait(lambda m: m.get("poll_cycles", 0) >= 3, "polls after the restart", 30)
            second.quiesce_modbus(sims)
            sims.stop()
            # The store is locked by the service: wait until MQTT has been quiet for 1.5 s.
            quiet_since, seen = time.monotonic(), -1.0
            deadline = time.monotonic() + 30
            while time.monotonic() - quiet_since < 1.5:
                m = second.metrics()
                now = m.get("mqtt_messages", 0) + m.get("readings_stored", 0)
                if now != seen or m.get("writer_pending_rows", 1) != 0:
                    quiet_since, seen = time.monotonic(), now
                assert time.monotonic() < deadline, "the service never went quiet"
                time.sleep(0.1)
            assert second.terminate() == 0, second.log_tail()
        finally:
            second.close()
    store = EmbeddedStore(tmp_path / "store.duckdb")
    try:
        stored = store.read_readings()
        conflicts = store.read_conflicts()
    finally:
        store.close()
    check_exactly_served(stored, conflicts, sims)


def _create_database(server: RunningServer, db: str) -> None:
    data = urllib.parse.urlencode({"q": f'CREATE DATABASE "{db}"'}).encode()
    with urllib.request.urlopen(f"{server.url}/query", data=data, timeout=10) as resp:
        assert resp.status == 200


def read_influx(server: RunningServer, db: str, measurement: str = "readings") -> pd.DataFrame:
    store = InfluxStore(
        flavor="v1", url=server.url, database=db, timeout_s=10.0, measurement=measurement
    )
    try:
        return store.read_readings()
    finally:
        store.close()
