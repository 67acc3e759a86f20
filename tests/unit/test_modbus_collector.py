"""Collector wiring in the service: poll groups, transports and DL/T 645 from config, and
meter_offline findings that open an alert and resolve it on recovery.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from meterwatch.collector.dlt645 import Dlt645GatewayPoller
from meterwatch.collector.modbus import MeterTracker, ModbusGatewayPoller
from meterwatch.config import parse_config
from meterwatch.core.clock import Clock
from meterwatch.core.errors import ConfigError, DeviceTimeout
from meterwatch.core.stats import Stats
from meterwatch.service import Service
from meterwatch.wiring import build_all_sources


def config(tmp_path: Path, collector: dict[str, Any]) -> Any:
    return parse_config(
        {
            "simulator": {"enabled": True, "residential": 2, "commercial": 1, "industrial": 1},
            "mqtt": {"enabled": False},
            "collector": collector,
            "storage": {"path": str(tmp_path / "store.duckdb")},
            "alerts": {"feed": str(tmp_path / "alerts.jsonl")},
        }
    )


def test_groups_transports_and_dlt645_gateways_from_config(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        {
            "modbus": {
                "interval": "15m",
                "backoff_cap": "2m",
                "offline_after": 4,
                "gateways": [
                    {
                        "name": "gw",
                        "transport": "rtu-over-tcp",
                        "host": "127.0.0.1",
                        "port": 4001,
                        "align": True,
                        "devices": [
                            {"meter_id": "a", "unit": 1, "model": "eastron-sdm630"},
                            {"meter_id": "b", "unit": 2, "model": "eastron-sdm120"},
                            {
                                "meter_id": "c",
                                "unit": 3,
                                "model": "chint-dtsu666",
                                "interval": "1m",
                            },
                        ],
                    }
                ],
            },
            "dlt645": {
                "interval": "5m",
                "gateways": [
                    {
                        "name": "dl",
                        "host": "127.0.0.1",
                        "port": 8899,
                        "devices": [{"meter_id": "d", "address": "000000001234"}],
                    }
                ],
            },
        },
    )
    service = Service(cfg)

    async def build() -> tuple[list[ModbusGatewayPoller], list[Dlt645GatewayPoller]]:
        # pymodbus clients are made inside the event loop, as in the running service.
        sources = build_all_sources(service.c, service._report_findings)
        return (
            [s for s in sources if isinstance(s, ModbusGatewayPoller)],
            [s for s in sources if isinstance(s, Dlt645GatewayPoller)],
        )

    try:
        modbus, dlt = asyncio.run(build())
    finally:
        service.store.close()
    by_name = {p.name: p for p in modbus}
    assert set(by_name) == {"gw@900s", "gw@60s"}
    slow, fast = by_name["gw@900s"], by_name["gw@60s"]
    assert [d.meter_id for d in slow.devices] == ["a", "b"]
    assert [d.meter_id for d in fast.devices] == ["c"]
    assert slow.client is fast.client  # one bus, one lock, one request in flight
    assert slow.address == "rtu://127.0.0.1:4001"
    assert (slow.interval_s, fast.interval_s, slow.align) == (900.0, 60.0, True)
    assert (slow.backoff_cap_s, slow.offline_after) == (120.0, 4)
    assert len(dlt) == 1 and isinstance(dlt[0], Dlt645GatewayPoller)
    assert dlt[0].interval_s == 300.0 and dlt[0].devices[0].address == "000000001234"


@pytest.mark.parametrize(
    ("gateway", "path", "message"),
    [
        ({"name": "s", "transport": "serial"}, "serial_port", "serial_port is required"),
        ({"name": "t", "transport": "tcp"}, "gateways.0", "host is required"),
        ({"name": "t", "host": "h", "transport": "udp"}, "transport", "tcp"),
        ({"name": "t", "host": "h", "parity": "X"}, "parity", "'N'"),
    ],
)
def test_gateway_config_errors_name_the_field(
    tmp_path: Path, gateway: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        config(tmp_path, {"modbus": {"gateways": [gateway]}})
    text = str(err.value)
    assert "collector.modbus.gateways.0" in text and path in text and message in text, text


def test_dlt645_address_must_be_12_hex_digits(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"collector.dlt645.gateways.0.devices.0.address"):
        config(
            tmp_path,
            {
                "dlt645": {
                    "gateways": [
                        {"name": "d", "host": "h", "devices": [{"meter_id": "x", "address": "12"}]}
                    ]
                }
            },
        )


def test_meter_offline_alert_opens_and_resolves_in_the_service(tmp_path: Path) -> None:
    cfg = config(tmp_path, {})
    assert "data_quality" in cfg.alerts.auto_resolve_categories
    service = Service(cfg)
    try:
        tracker = MeterTracker(
            Clock(),
            Stats(),
            protocol="modbus",
            gateway="gw",
            offline_after=2,
            on_findings=service._report_findings,
        )
        t0 = pd.Timestamp("2026-01-05T00:00:00Z").to_pydatetime()
        err = DeviceTimeout("m1", "gw unit 1", "no answer within 1 s")
        tracker.failed("m1", t0, err, "gw unit 1")
        assert service.alerts.open_alerts() == []  # one failure is not offline yet
        tracker.failed("m1", t0 + pd.Timedelta(minutes=15), err, "gw unit 1")
        (alert,) = service.alerts.open_alerts()
        assert (alert.type, alert.category, alert.meter_id) == (
            "meter_offline",
            "data_quality",
            "m1",
        )
        tracker.failed("m1", t0 + pd.Timedelta(minutes=30), err, "gw unit 1")
        assert len(service.alerts.alerts) == 1  # logged and raised once
        tracker.succeeded("m1", t0 + pd.Timedelta(minutes=45), "gw unit 1")
        assert service.alerts.open_alerts() == []
        (resolved,) = service.alerts.alerts.values()
        assert resolved.status == "resolved"
        assert pd.Timestamp(resolved.ends_at) == pd.Timestamp("2026-01-05T00:45:00Z")
    finally:
        service.store.close()


def test_poller_keeps_its_interval_for_the_scheduler() -> None:
    async def build() -> ModbusGatewayPoller:
        return ModbusGatewayPoller(
            "x",
            "127.0.0.1",
            1,
            [],
            clock=Clock(),
            writer=None,  # type: ignore[arg-type]
            stats=Stats(),
            interval_s=60.0,
        )

    p = asyncio.run(build())
    assert p.interval_s == 60.0 and p.address == "127.0.0.1:1"
