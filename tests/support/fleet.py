"""Config pieces shared by the tests that run the service on the simulated fleet."""

from __future__ import annotations

from typing import Any


def simulated_gateway(name: str = "sim", timeout_s: float = 3.0) -> dict[str, Any]:
    """A ``collector.modbus.gateways[]`` entry for the simulated meters (``devices: simulator``).

    The simulator's own ``modbus.host/port`` decide where it listens; the generous timeout keeps
    a loaded CI machine from looking like a dead meter.
    """
    return {
        "name": name,
        "host": "127.0.0.1",
        "port": 1,
        "devices": "simulator",
        "timeout_s": timeout_s,
    }
