"""`meterwatch probe modbus` against a simulated meter gateway, and its errors."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner

from meterwatch.cli import main
from meterwatch.protocols.register_map import load_map
from meterwatch.simulators.fleet import Fleet
from meterwatch.simulators.modbus_server import MeterModbusServer
from tests.support.servers import free_port


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
    from meterwatch.simulators.dlt645_server import Dlt645Server

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


def _serve_in_thread(server: Any, start: Any) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """Run a simulator's event loop in a thread (the CLI runs its own loop in this one)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    return loop, thread


def _stop_thread(server: Any, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _probe_on_a_pty(server: Any, extra: list[str]) -> Any:
    """Run `probe dlt645 --serial-port` against ``server`` served on a fresh pty pair."""
    from tests.unit.test_dlt645 import pty_bridge

    with pty_bridge() as (client_tty, server_tty):
        loop, thread = _serve_in_thread(server, lambda: server.start_serial(server_tty))
        try:
            args = ["probe", "dlt645", "--serial-port", client_tty, "--address", "000000001234"]
            return CliRunner().invoke(main, [*args, *extra])
        finally:
            _stop_thread(server, loop, thread)


def test_probe_dlt645_over_a_serial_port_prints_values_and_meter_clock() -> None:
    """`probe dlt645 --serial-port` on a pty pair at 2400 8E1 (the defaults)."""
    from meterwatch.simulators.dlt645_server import Dlt645Server

    values = {"000000001234": {"energy_import_kwh": 4321.5, "voltage_l1_v": 228.7}}
    now = datetime(2026, 11, 23, 6, 0, 0, tzinfo=UTC)  # 14:00 in Shanghai
    server = Dlt645Server(
        lambda a: values[a], values.keys(), clock=lambda: now, drift_s={"000000001234": 90}
    )
    ok = _probe_on_a_pty(server, ["--json"])
    assert ok.exit_code == 0, ok.output
    reading = json.loads(ok.output)
    assert reading["energy_import_kwh"] == 4321.5 and reading["voltage_l1_v"] == 228.7
    # the meter's local clock (14:01:30 in Shanghai, 90 s fast) as UTC
    assert reading["device_ts"] == "2026-11-23T06:01:30Z"
    assert reading["device_local_time"] == "2026-11-23T14:01:30"
    assert {r.address for r in server.requests} == {"000000001234"}
    assert {r.control for r in server.requests} == {0x11}  # reads only

    # a meter without a clock: values still print, device_ts empty with the reason
    server = Dlt645Server(lambda a: values[a], values.keys(), no_clock=values.keys())
    no_clock = _probe_on_a_pty(server, ["--json"])
    assert no_clock.exit_code == 0, no_clock.output
    reading = json.loads(no_clock.output)
    assert reading["energy_import_kwh"] == 4321.5 and reading["device_ts"] is None
    assert "no data requested" in reading["device_ts_error"]


def test_probe_dlt645_serial_options_reach_the_port(monkeypatch: pytest.MonkeyPatch) -> None:
    import meterwatch.collector.probe
    from meterwatch.collector.dlt645 import SerialSettings

    calls: list[dict[str, Any]] = []

    async def fake(host: Any, port: Any, address: str, timeout: float, **kw: Any) -> dict:
        calls.append({"host": host, "address": address, "timeout": timeout, **kw})
        return {"meter_id": address}

    monkeypatch.setattr(meterwatch.collector.probe, "probe_dlt645_once", fake)
    args = ["probe", "dlt645", "--address", "000000001234", "--serial-port", "/dev/ttyS3"]
    extra = ["--baudrate", "9600", "--parity", "N", "--bytesize", "7", "--stopbits", "2"]
    out = CliRunner().invoke(main, [*args, *extra, "--no-clock", "--clock-timezone", "UTC"])
    assert out.exit_code == 0, out.output
    assert CliRunner().invoke(main, args).exit_code == 0
    assert calls[0]["serial"] == SerialSettings("/dev/ttyS3", 9600, "N", 7, 2)
    assert (calls[0]["read_clock"], calls[0]["clock_timezone"]) == (False, "UTC")
    # defaults: DL/T 645's 2400 baud 8E1, clock read in Asia/Shanghai
    assert calls[1]["serial"] == SerialSettings("/dev/ttyS3", 2400, "E", 8, 1)
    assert (calls[1]["read_clock"], calls[1]["clock_timezone"]) == (True, "Asia/Shanghai")


def test_probe_dlt645_needs_exactly_one_of_host_and_serial_port() -> None:
    runner = CliRunner()
    neither = runner.invoke(main, ["probe", "dlt645", "--address", "000000001234"])
    assert (
        neither.exit_code == 2 and "--host" in neither.output and "--serial-port" in neither.output
    )
    both = runner.invoke(
        main,
        [
            "probe", "dlt645", "--host", "127.0.0.1", "--serial-port", "/dev/ttyUSB0",
            "--address", "000000001234",
        ],
    )  # fmt: skip
    assert both.exit_code == 2 and "not both" in both.output, both.output
    missing = runner.invoke(
        main,
        ["probe", "dlt645", "--serial-port", "/dev/does-not-exist-645", "--address", "1234"],
    )
    assert missing.exit_code == 2, missing.output
    assert "cannot open the port" in missing.output and "/dev/does-not-exist-645" in missing.output
