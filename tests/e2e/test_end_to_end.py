"""End to end: the service on simulated meters; everything served is stored once; anomalies alert.

Runs `Service` on a small simulated fleet for a bounded time with the embedded broker (amqtt)
and with a real Mosquitto, then counts what the simulators served against what the store holds
and checks the alert feed against the injected anomalies (the fleet's ground-truth labels).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from meterwatch.config import Config, parse_config
from meterwatch.service import Service
from meterwatch.storage.embedded import EmbeddedStore
from tests.support.fleet import simulated_gateway
from tests.support.servers import Mosquitto, free_port

ANOMALY_TO_ALERT = {
    "phase_break": "phase_break",
    "voltage_loss": "voltage_loss",
    "register_decrease": "register_decrease",
    "consumption_spike": "consumption_spike",
}


def e2e_config(tmp_path: Path, *, broker: str, mqtt_port: int) -> Config:
    return parse_config(
        {
            "clock": {"start": "2026-01-05T00:00:00Z", "speed": 3600},
            "simulator": {
                "enabled": True,
                "seed": 7,
                "residential": 12,
                "commercial": 5,
                "industrial": 4,
                "transformers": 2,
                "mqtt_share": 0.25,
                "modbus": {"host": "127.0.0.1", "port": free_port()},
                "anomalies": [
                    {"type": "phase_break", "at": "3h", "duration": "3h"},
                    {"type": "voltage_loss", "at": "5h", "duration": "2h"},
                    {"type": "register_decrease", "at": "8h", "magnitude": 40},
                    {"type": "consumption_spike", "at": "25h", "duration": "2h", "magnitude": 5},
                ],
            },
            "mqtt": {
                "broker": broker,
                "host": "127.0.0.1",
                "port": mqtt_port,
                "client_id": f"e2e-{broker}",
                "dead_letter": str(tmp_path / "dead.jsonl"),
            },
            "collector": {
                "modbus": {
                    "interval": "15m",
                    "gateways": [
                        simulated_gateway(),
                    ],
                }
            },
            "storage": {"path": str(tmp_path / "store.duckdb")},
            # The run has about a day of history: judge spikes against one comparable day.
            "analytics": {
                "interval": "1h",
                "window": "8d",
                "detectors": {"consumption_spike": {"min_history_days": 1}},
            },
            "alerts": {"feed": str(tmp_path / "alerts.jsonl")},
        }
    )


def run_and_check(cfg: Config, duration_s: float) -> None:
    service = Service(cfg)
    summary = asyncio.run(service.run(duration_s))
    # The run must have covered the last anomaly, plus an hour for the analytics to see it.
    assert (summary.service_end - summary.service_start).total_seconds() > 27 * 3600, summary

    assert service.simulator is not None and service.fleet is not None
    reg = service.fleet.registry
    store = EmbeddedStore(cfg.storage.path)
    try:
        rows, distinct = store.count_rows()
        stored = store.read_readings()
    finally:
        store.close()

    # Stored exactly once: no (meter, ts) twice, and every reading accounted for.
    assert rows == distinct
    assert summary.counters.get("meter_errors", 0) == 0
    assert summary.counters.get("readings_refused", 0) == 0
    assert summary.counters.get("mqtt_dead_letters", 0) == 0

    # Modbus: one stored reading per read the simulated gateway answered, per meter.
    served = Counter(r.meter_id for r in service.simulator.modbus.served)
    modbus_ids = set(reg.loc[reg["transport"] == "modbus", "meter_id"])
    stored_modbus = Counter(stored.loc[stored["meter_id"].isin(modbus_ids), "meter_id"])
    assert set(served) == modbus_ids
    assert stored_modbus == served
    # About 110 polls fit the simulated time; overruns on a loaded machine skip some.
    assert min(served.values()) > 40
    # The collector only ever sent read requests (03 read holding, 04 read input registers).
    assert set(service.simulator.modbus.function_codes) <= {3, 4}

    # MQTT: exactly the messages the broker acknowledged to the simulated meters.
    assert service.simulator.mqtt is not None
    acked = {(p.meter_id, p.ts) for p in service.simulator.mqtt.acked}
    mqtt_ids = set(reg.loc[reg["transport"] == "mqtt", "meter_id"])
    got = stored[stored["meter_id"].isin(mqtt_ids)]
    got_keys = set(zip(got["meter_id"], got["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"), strict=True))
    assert len(acked) > 80 * len(mqtt_ids)  # publishing follows the clock, not the polls
    assert got_keys == acked
    assert rows == sum(served.values()) + len(acked)

    # Every injected anomaly produced its alert, on its meter; no alert elsewhere.
    alerts = [json.loads(x) for x in Path(cfg.alerts.feed).read_text().splitlines()]
    raised = {(a["type"], a["meter_id"]) for a in alerts}
    labels = service.fleet.labels()
    expected = {
        (ANOMALY_TO_ALERT[t], m) for t, m in zip(labels["type"], labels["meter_id"], strict=True)
    }
    assert expected <= raised, f"missing alerts: {expected - raised}; extra: {raised - expected}"
    assert raised == expected, f"alerts with no injected cause: {raised - expected}"


@pytest.mark.slow
def test_end_to_end_embedded_broker(tmp_path: Path) -> None:
    run_and_check(e2e_config(tmp_path, broker="embedded", mqtt_port=free_port()), duration_s=33)


@pytest.mark.slow
def test_end_to_end_against_mosquitto(tmp_path: Path, mosquitto_broker: Mosquitto) -> None:
    cfg = e2e_config(tmp_path, broker="external", mqtt_port=mosquitto_broker.port)
    run_and_check(cfg, duration_s=33)
