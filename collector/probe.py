"""One-shot reads for `meterwatch probe`: the same read paths and decoding as the collectors.

Each returns a canonical reading dict (``ts`` as ISO 8601 Z) or raises a
:class:`~meterwatch.core.errors.MeterWatchError` whose message says what failed where.
"""

from __future__ import annotations

import queue
import threading
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import paho.mqtt.client as mqtt
import pandas as pd
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.exceptions import ConnectionException

from meterwatch.collector.dlt645 import (
    SerialSettings,
    SerialTransport,
    TcpTransport,
    local_to_utc,
    read_meter,
    read_meter_clock,
)
from meterwatch.collector.modbus import ModbusDevice, Transport, make_client, read_block
from meterwatch.core.errors import DeviceError, DeviceTimeout, ProtocolError
from meterwatch.protocols.mqtt_payload import CODECS, Subscription
from meterwatch.protocols.register_map import load_map


def _now_text() -> str:
    return pd.Timestamp.now("UTC").floor("s").strftime("%Y-%m-%dT%H:%M:%SZ")


async def probe_modbus_once(
    host: str,
    port: int,
    unit: int,
    model: str,
    timeout: float,
    *,
    transport: Transport = "tcp",
    serial_port: str | None = None,
    baudrate: int = 9600,
    parity: str = "N",
) -> dict[str, object]:
    """Read a meter once; return its canonical reading (ts as ISO 8601 Z) or raise DeviceError."""
    regmap = load_map(model)
    dev = ModbusDevice(f"unit{unit}", unit, regmap)
    client, address = make_client(
        transport,
        host=host,
        port=port,
        serial_port=serial_port,
        baudrate=baudrate,
        parity=parity,
        timeout_s=timeout,
    )
    try:
        try:
            connected = await client.connect()
        except (ConnectionException, OSError):
            connected = False
        if not connected:
            raise DeviceError(dev.meter_id, address, "connection refused or timed out")
        reading: dict[str, object] = {"meter_id": dev.meter_id, "ts": _now_text()}
        for block in dev.blocks:
            reading.update(
                regmap.decode_block(block, await read_block(client, address, dev, block, timeout))
            )
    finally:
        client.close()
    return reading


async def probe_dlt645_once(
    host: str | None,
    port: int,
    address: str,
    timeout: float,
    *,
    serial: SerialSettings | None = None,
    read_clock: bool = True,
    clock_timezone: str = "Asia/Shanghai",
) -> dict[str, object]:
    """Read one DL/T 645 meter once (every known DI): behind a serial device server
    (``host``/``port``) or on a local serial port (``serial``).

    With ``read_clock`` the meter clock is read too and shown as ``device_ts`` (UTC, ISO 8601 Z;
    the meter keeps local time in ``clock_timezone``); a clock the meter refuses or garbles
    gives ``device_ts`` null and the reason in ``device_ts_error``, the values still print.
    """
    link: TcpTransport | SerialTransport
    if serial is not None:
        link = SerialTransport(serial)
        endpoint = link.endpoint
    elif host:
        link = TcpTransport()
        endpoint = f"tcp:{host}:{port}"
    else:
        raise ValueError("give a device server host (--host) or a serial port (--serial-port)")
    try:
        zone = ZoneInfo(clock_timezone) if read_clock else None
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"clock time zone {clock_timezone!r} is not an IANA time zone") from None
    try:
        if isinstance(link, SerialTransport):
            await link.connect(timeout=timeout)
        else:
            await link.connect(host or "", port, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        what = "cannot open the port" if serial is not None else "connection refused or timed out"
        raise DeviceError(address, endpoint, f"{what} ({exc})") from None
    clock: dict[str, object] = {}
    try:
        values = await read_meter(link, address, None, timeout, meter_id=address)
        if values and zone is not None:
            try:
                local = await read_meter_clock(link, address, timeout, meter_id=address)
            except (DeviceError, ProtocolError) as exc:
                clock = {"device_ts": None, "device_ts_error": str(exc)}
            else:
                ts = local_to_utc(local, zone)
                clock = {
                    "device_ts": None if pd.isna(ts) else ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "device_local_time": local.isoformat(),
                }
    finally:
        link.close()
    if not values:
        raise DeviceError(address, endpoint, "the meter refused every data identifier")
    return {"meter_id": address, "ts": _now_text(), **values, **clock}


def probe_mqtt_once(
    host: str,
    port: int,
    topic: str,
    codec: str,
    timeout: float,
    *,
    username: str | None = None,
    password: str | None = None,
) -> list[dict[str, Any]]:
    """Wait for one message on ``topic`` (a template or filter) and decode it with ``codec``.

    Returns the message's canonical readings (a batch gives several). Nothing is acknowledged
    for a persistent session: the probe uses a clean session with a throwaway client id.
    """
    if codec not in CODECS:
        raise ProtocolError(f"unknown codec {codec!r}; use {', '.join(CODECS)}")
    sub = Subscription.compile(topic, codec)
    where = f"mqtt://{host}:{port} {sub.filter}"
    got: queue.Queue[mqtt.MQTTMessage] = queue.Queue(maxsize=1)
    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, clean_session=True)
    if username:
        client.username_pw_set(username, password)

    def on_connect(c, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if not reason_code.is_failure:
            c.subscribe(sub.filter, qos=1)
            connected.set()

    def on_message(c, userdata, msg) -> None:  # noqa: ANN001
        try:
            got.put_nowait(msg)
        except queue.Full:
            pass

    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(host, port, keepalive=max(5, int(timeout) + 5))
    except OSError as exc:
        raise DeviceError(
            "(any meter)", where, f"broker connection refused or timed out ({exc})"
        ) from None
    client.loop_start()
    try:
        if not connected.wait(timeout):
            raise DeviceTimeout(
                "(any meter)", where, f"broker did not accept the connection within {timeout} s"
            )
        try:
            msg = got.get(timeout=timeout)
        except queue.Empty:
            raise DeviceTimeout("(any meter)", where, f"no message within {timeout} s") from None
    finally:
        client.disconnect()
        client.loop_stop()
    readings = sub.decode(msg.topic, msg.payload)
    out = []
    for r in readings:
        ts = pd.to_datetime(r["ts"], utc=True, format="ISO8601", errors="coerce")
        if pd.isna(ts):
            raise ProtocolError(f"message on {msg.topic}: ts {r['ts']!r} is not an ISO 8601 time")
        out.append({**r, "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "topic": msg.topic})
    return out
