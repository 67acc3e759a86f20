"""`meterwatch probe modbus|dlt645|mqtt`: read one meter (or one message) once and print it."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from typing import Any

import click
from rich.console import Console

from meterwatch.cli_output import fail
from meterwatch.core.errors import MeterWatchError

console = Console()
err_console = Console(stderr=True)


def _print(reading: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(dict(reading)))
        return
    for k, v in reading.items():
        console.print(f"{k:22} {v}", highlight=False)


@click.group()
def probe() -> None:
    """Read one meter once and print a canonical reading."""


@probe.command("modbus")
@click.option("--host", default="", help="Gateway host (tcp, rtu-over-tcp).")
@click.option("--port", type=int, default=502, show_default=True)
@click.option("--unit", type=int, required=True)
@click.option("--model", required=True, help="Register map id, e.g. eastron-sdm630.")
@click.option(
    "--transport",
    type=click.Choice(["tcp", "rtu-over-tcp", "serial"]),
    default="tcp",
    show_default=True,
)
@click.option("--serial-port", default=None, help="Serial device for --transport serial.")
@click.option("--baudrate", type=int, default=9600, show_default=True)
@click.option("--parity", type=click.Choice(["N", "E", "O"]), default="N", show_default=True)
@click.option("--timeout", type=float, default=2.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def probe_modbus(
    host: str,
    port: int,
    unit: int,
    model: str,
    transport: str,
    serial_port: str | None,
    baudrate: int,
    parity: str,
    timeout: float,
    as_json: bool,
) -> None:
    """Read a Modbus meter once (TCP, RTU over TCP or serial RTU)."""
    from meterwatch.collector.probe import probe_modbus_once

    if transport != "serial" and not host:
        fail(click.UsageError(f"--host is required with --transport {transport}"))
    if transport == "serial" and not serial_port:
        fail(click.UsageError("--serial-port is required with --transport serial"))
    try:
        reading = asyncio.run(
            probe_modbus_once(
                host,
                port,
                unit,
                model,
                timeout,
                transport=transport,  # type: ignore[arg-type]
                serial_port=serial_port,
                baudrate=baudrate,
                parity=parity,
            )
        )
    except MeterWatchError as exc:
        fail(exc)
        return
    _print(reading, as_json)


@probe.command("dlt645")
@click.option("--host", default=None, help="Serial device server host (TCP).")
@click.option("--port", type=int, default=8899, show_default=True)
@click.option(
    "--serial-port", default=None, help="Local serial port instead of --host, e.g. /dev/ttyUSB0."
)
@click.option("--baudrate", type=int, default=2400, show_default=True, help="With --serial-port.")
@click.option("--parity", type=click.Choice(["N", "E", "O"]), default="E", show_default=True)
@click.option("--bytesize", type=click.Choice(["7", "8"]), default="8", show_default=True)
@click.option("--stopbits", type=click.Choice(["1", "2"]), default="1", show_default=True)
@click.option("--address", required=True, help="12-digit meter address, e.g. 000000001234.")
@click.option("--timeout", type=float, default=2.0, show_default=True)
@click.option(
    "--clock/--no-clock",
    "read_clock",
    default=True,
    show_default=True,
    help="Also read the meter clock (DI 04000101/04000102) as device_ts.",
)
@click.option(
    "--clock-timezone",
    default="Asia/Shanghai",
    show_default=True,
    help="IANA zone of the meter's local clock.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def probe_dlt645(
    host: str | None,
    port: int,
    serial_port: str | None,
    baudrate: int,
    parity: str,
    bytesize: str,
    stopbits: str,
    address: str,
    timeout: float,
    read_clock: bool,
    clock_timezone: str,
    as_json: bool,
) -> None:
    """Read a DL/T 645-2007 meter once: behind a serial device server (--host/--port) or on a
    local serial port (--serial-port, default framing 2400 baud 8E1)."""
    from meterwatch.collector.dlt645 import SerialSettings
    from meterwatch.collector.probe import probe_dlt645_once

    if bool(host) == bool(serial_port):
        fail(
            click.UsageError(
                "give either --host (a serial device server) or --serial-port (a local port), "
                + ("not both" if host else "one of them")
            )
        )
        return
    serial = (
        SerialSettings(serial_port, baudrate, parity, int(bytesize), int(stopbits))
        if serial_port
        else None
    )
    try:
        reading = asyncio.run(
            probe_dlt645_once(
                host,
                port,
                address,
                timeout,
                serial=serial,
                read_clock=read_clock,
                clock_timezone=clock_timezone,
            )
        )
    except (MeterWatchError, ValueError) as exc:
        fail(exc)
        return
    _print(reading, as_json)


@probe.command("mqtt")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=1883, show_default=True)
@click.option(
    "--topic",
    default="meters/{meter_id}/reading",
    show_default=True,
    help="Topic template or filter to wait on.",
)
@click.option(
    "--codec",
    type=click.Choice(["canonical", "batch", "tasmota"]),
    default="canonical",
    show_default=True,
)
@click.option("--timeout", type=float, default=10.0, show_default=True)
@click.option("--username-env", default=None, help="Environment variable holding the user name.")
@click.option("--password-env", default=None, help="Environment variable holding the password.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def probe_mqtt(
    host: str,
    port: int,
    topic: str,
    codec: str,
    timeout: float,
    username_env: str | None,
    password_env: str | None,
    as_json: bool,
) -> None:
    """Wait for one message and print its canonical reading(s)."""
    from meterwatch.collector.probe import probe_mqtt_once

    try:
        readings = probe_mqtt_once(
            host,
            port,
            topic,
            codec,
            timeout,
            username=os.environ.get(username_env) if username_env else None,
            password=os.environ.get(password_env) if password_env else None,
        )
    except (MeterWatchError, ValueError) as exc:
        fail(exc)
        return
    for i, reading in enumerate(readings):
        if i and not as_json:
            console.print()
        _print(reading, as_json)
