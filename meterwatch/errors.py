"""The project's exception tree. Library exceptions are translated into these at one boundary.

MeterWatchError
├── ConfigError            bad configuration (field path, value, what is allowed)
├── MapError               a register map that fails its load-time checks
├── RegistryError          a bad meters.csv row or column
├── ProtocolError          a payload or frame that cannot be decoded
├── DeviceError            a meter did not answer properly (carries meter_id, address)
│   ├── DeviceTimeout
│   └── DeviceException    Modbus exception response (carries the exception code)
└── StorageError           the store refused or failed a write/read
"""

from __future__ import annotations


class MeterWatchError(Exception):
    """Base of every error MeterWatch raises on purpose."""


class ConfigError(MeterWatchError):
    """Configuration is invalid. ``problems`` lists (field path, message) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path}: {msg}" for path, msg in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


class MapError(MeterWatchError):
    """A register map failed validation; the message names the map, field and numbers."""

    def __init__(self, map_name: str, message: str, field: str | None = None):
        self.map_name = map_name
        self.field = field
        where = f"{map_name}.{field}" if field else map_name
        super().__init__(f"register map {where}: {message}")


class RegistryError(MeterWatchError):
    """The meter registry is invalid."""


class ProtocolError(MeterWatchError):
    """A payload or frame could not be decoded."""


class DeviceError(MeterWatchError):
    """A meter failed to answer a read properly."""

    def __init__(self, meter_id: str, address: str, message: str):
        self.meter_id = meter_id
        self.address = address
        super().__init__(f"meter {meter_id} at {address}: {message}")


class DeviceTimeout(DeviceError):
    """No answer within the per-request timeout."""


class DeviceException(DeviceError):
    """The meter answered with a Modbus exception response."""

    def __init__(self, meter_id: str, address: str, code: int):
        self.code = code
        super().__init__(meter_id, address, f"Modbus exception code {code}")


class StorageError(MeterWatchError):
    """The store could not write or read."""
