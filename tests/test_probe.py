"""`meterwatch probe modbus` against a simulated meter gateway, and its errors."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from brokers import free_port
from click.testing import CliRunner

from meterwatch.cli import main
from protocols.register_map import load_map
from simulators.fleet import Fleet
from simulators.modbus_server import MeterModbusServer


@pytest.fixture
def gateway() -> Iterator[tuple[int, Fleet, MeterModbusServer]]:
    fleet = Fleet(
        start=datetime(2026, 1, 5, 12, tzinfo=UTC),
        residential=2,
        commercial=1,
        industrial=1,
        transformers=1,
        mqtt_share=0.0,
    )
    server = MeterModbusServer("127.0.0.1", free_port())
    reg = fleet.registry
    for row in reg.itertuples():
        server.add_device(str(row.meter_id), int(row.unit_id), load_map(str(row.model)))
    server.update(fleet.snapshot())
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    yield server.port, fleet, server
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_probe_prints_the_canonical_reading(gateway: tuple[int, Fleet, MeterModbusServer]) -> None:
    port, fleet, server = gateway
    reg = fleet.registry
    row = reg[reg["phases"] == 3].iloc[0]
    res = CliRunner().invoke(
        main,
        [
            "probe",
            "modbus",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--unit",
            str(row.unit_id),
            "--model",
            row.model,
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    reading = json.loads(res.output)
    snap = fleet.snapshot().set_index("meter_id").loc[row.meter_id]
    for name in (
        "voltage_l1_v",
        "voltage_l3_v",
        "current_l2_a",
        "power_kw",
        "energy_import_kwh",
        "frequency_hz",
    ):
        assert reading[name] == pytest.approx(snap[name], rel=1e-6, abs=1e-3), name
    assert set(server.function_codes) == {4}
    assert len(server.served) == 1  # one coalesced request for the whole map


def test_probe_errors_are_clear(gateway: tuple[int, Fleet, MeterModbusServer]) -> None:
    port, _, _ = gateway
    runner = CliRunner()
    dead = runner.invoke(
        main,
        [
            "probe",
            "modbus",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--unit",
            "1",
            "--model",
            "eastron-sdm630",
            "--timeout",
            "0.5",
        ],
    )
    assert dead.exit_code == 2 and "connection refused" in dead.output
    silent = runner.invoke(
        main,
        [
            "probe",
            "modbus",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--unit",
            "200",
            "--model",
            "eastron-sdm630",
            "--timeout",
            "0.3",
        ],
    )
    assert silent.exit_code == 2 and "unit 200" in silent.output and "no answer" in silent.output
    bad_model = runner.invoke(
        main,
        [
            "probe",
            "modbus",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--unit",
            "1",
            "--model",
            "acme-9000",
        ],
    )
    assert (
        bad_model.exit_code == 2
        and "acme-9000" in bad_model.output
        and "eastron-sdm630" in bad_model.output
    )


# -- dlt645 and mqtt -------------------------------------------------------------------------


def test_probe_dlt645_prints_the_reading_and_clear_errors() -> None:
    from simulators.dlt645_server import Dlt645Server

    values = {"000000001234": {"energy_import_kwh": 4321.5, "voltage_l1_v": 228.7}}
    loop = asyncio.new_event_loop()
    server = Dlt645Server(lambda a: values[a], values.keys())
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        runner = CliRunner()
        args = ["probe", "dlt645", "--host", "127.0.0.1", "--port", str(server.port)]
        ok = runner.invoke(main, [*args, "--address", "000000001234", "--json"])
        assert ok.exit_code == 0, ok.output
        reading = json.loads(ok.output)
        assert reading["energy_import_kwh"] == 4321.5 and reading["voltage_l1_v"] == 228.7
        assert reading["meter_id"] == "000000001234" and reading["ts"].endswith("Z")
        silent = runner.invoke(main, [*args, "--address", "000000009999", "--timeout", "0.3"])
        assert silent.exit_code == 2 and "no reply" in silent.output, silent.output
        assert "000000009999" in silent.output
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    refused = CliRunner().invoke(
        main,
        [
            "probe",
            "dlt645",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--address",
            "000000001234",
            "--timeout",
            "0.5",
        ],
    )
    assert refused.exit_code == 2 and "connection refused" in refused.output


def test_probe_mqtt_waits_for_one_message(mosquitto_broker) -> None:  # noqa: ANN001
    import paho.mqtt.publish as publish

    port = mosquitto_broker.port
    tasmota = {"Time": "2026-01-05T10:00:00", "ENERGY": {"Total": 9.25, "Power": 250}}

    def publish_soon() -> None:
        time.sleep(0.5)
        publish.single(
            "tele/plug3/SENSOR", json.dumps(tasmota), qos=1, hostname="127.0.0.1", port=port
        )

    threading.Thread(target=publish_soon, daemon=True).start()
    res = CliRunner().invoke(
        main,
        [
            "probe",
            "mqtt",
            "--port",
            str(port),
            "--topic",
            "tele/{meter_id}/SENSOR",
            "--codec",
            "tasmota",
            "--timeout",
            "5",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    reading = json.loads(res.output)
    assert reading["meter_id"] == "plug3" and reading["power_kw"] == 0.25
    assert reading["energy_import_kwh"] == 9.25 and reading["ts"] == "2026-01-05T10:00:00Z"
    quiet = CliRunner().invoke(
        main, ["probe", "mqtt", "--port", str(port), "--topic", "nothing/here", "--timeout", "0.5"]
    )
    assert quiet.exit_code == 2 and "no message within 0.5 s" in " ".join(quiet.output.split())
    down = CliRunner().invoke(
        main, ["probe", "mqtt", "--port", str(free_port()), "--timeout", "0.5"]
    )
    assert down.exit_code == 2 and "refused" in down.output
