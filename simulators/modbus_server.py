"""Modbus server for simulated meters: one unit id per meter, registers as the model's map.

Serves Modbus TCP (MBAP), RTU framing over TCP (``framer=FramerType.RTU``, like a transparent
serial device server) or serial RTU on a (pseudo-)terminal (:meth:`MeterModbusServer.start_serial`).
Faults can be injected per unit: ``busy`` answers exception 6 a given number of times, ``delay_s``
answers late (a slow meter).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd
from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from meterwatch.core.schema import READING_FIELDS
from meterwatch.protocols.register_map import RegisterMap

log = logging.getLogger(__name__)

_TABLE_BY_FC = {3: "holding", 4: "input"}
_WRITE_FCS = frozenset({5, 6, 15, 16, 22, 23})


@dataclass
class SimulatedDevice:
    """Register images of one simulated meter, updated from the fleet state."""

    meter_id: str
    unit: int
    regmap: RegisterMap
    images: dict[str, list[int]] = field(default_factory=dict)
    ts: datetime | None = None

    def __post_init__(self) -> None:
        for table in {f.table for f in self.regmap.fields}:
            end = max(f.address + f.count for f in self.regmap.fields if f.table == table)
            self.images[table] = [0] * end

    def update(self, values: Mapping[str, float], ts: datetime) -> None:
        for (table, address), regs in self.regmap.encode(values).items():
            self.images[table][address : address + len(regs)] = regs
        self.ts = ts


@dataclass
class ServedRead:
    """One read the simulator answered: which meter, which registers, the state's instant."""

    meter_id: str
    function_code: int
    address: int
    count: int
    ts: datetime | None


class _FleetContext:
    """What pymodbus' request handler calls: register reads served from the device images."""

    def __init__(self, server: MeterModbusServer):
        self._server = server

    def device_ids(self) -> list[int]:
        return list(self._server.devices)

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | ExcCodes:
        server = self._server
        server.in_flight += 1
        server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            delay = server.delay_s.get(device_id, 0.0)
            if delay:
                await asyncio.sleep(delay)
            return server.serve_read(device_id, func_code, address, count)
        finally:
            server.in_flight -= 1

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int]
    ) -> ExcCodes | None:
        self._server.function_codes[func_code] += 1
        return ExcCodes.ILLEGAL_FUNCTION


class MeterModbusServer:
    """Serves many simulated meters behind one Modbus TCP endpoint (like a meter gateway).

    Unknown unit ids get no answer (the client times out), as behind a real RS-485 gateway.
    Writes are refused with exception 1 and counted in ``function_codes``; every read served is
    logged in ``served`` so tests can count what went out.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, framer: FramerType = FramerType.SOCKET
    ):
        self.host = host
        self.port = port
        self.framer = framer
        self.devices: dict[int, SimulatedDevice] = {}
        self.served: list[ServedRead] = []
        self.function_codes: Counter[int] = Counter()
        #: unit id -> how many more reads to refuse with exception 6 (device busy).
        self.busy: dict[int, int] = {}
        #: unit id -> seconds to wait before answering (a slow meter).
        self.delay_s: dict[int, float] = {}
        #: requests being answered now, and the most ever at once (a bus carries one).
        self.in_flight = 0
        self.max_in_flight = 0
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    def add_device(self, meter_id: str, unit: int, regmap: RegisterMap) -> SimulatedDevice:
        if unit in self.devices:
            raise ValueError(f"unit id {unit} already serves meter {self.devices[unit].meter_id}")
        dev = SimulatedDevice(meter_id, unit, regmap)
        self.devices[unit] = dev
        return dev

    def update(self, snapshot: pd.DataFrame) -> None:
        """Load the fleet's latest canonical readings into the register images."""
        by_meter = snapshot.set_index("meter_id")
        cols = [c for c in READING_FIELDS if c in by_meter.columns]
        records = by_meter[cols].to_dict("index")
        ts_by_meter = by_meter["ts"].to_dict()
        for dev in self.devices.values():
            values = records.get(dev.meter_id)
            if values is not None:
                dev.update(values, pd.Timestamp(ts_by_meter[dev.meter_id]).to_pydatetime())

    def serve_read(
        self, unit: int, func_code: int, address: int, count: int
    ) -> list[int] | ExcCodes:
        self.function_codes[func_code] += 1
        dev = self.devices.get(unit)
        if dev is None:
            raise NoSuchIdException(f"no simulated meter at unit id {unit}")
        if func_code in _WRITE_FCS:
            return ExcCodes.ILLEGAL_FUNCTION
        if self.busy.get(unit, 0) > 0:
            self.busy[unit] -= 1
            return ExcCodes.DEVICE_BUSY
        table = _TABLE_BY_FC.get(func_code)
        image = dev.images.get(table) if table else None
        if image is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if address < 0 or count < 1 or address + count > len(image):
            return ExcCodes.ILLEGAL_ADDRESS
        self.served.append(ServedRead(dev.meter_id, func_code, address, count, dev.ts))
        return image[address : address + count]

    async def start(self) -> int:
        """Listen; return the bound port (useful with port 0)."""
        placeholder = SimDevice(1, simdata=[SimData(0, values=0, datatype=DataType.REGISTERS)])
        self._server = ModbusTcpServer(
            placeholder,
            framer=self.framer,
            address=(self.host, self.port),
            ignore_missing_devices=True,
        )
        self._server.context = _FleetContext(self)  # type: ignore[assignment]
        await self._server.serve_forever(background=True)
        transport = self._server.transport
        if self.port == 0 and transport is not None:
            # The listening transport is an asyncio Server: its sockets carry the bound port.
            sockets = getattr(transport, "sockets", None) or []
            if sockets:
                self.port = sockets[0].getsockname()[1]
        log.info(
            "simulated Modbus meters on %s:%d (%d units)", self.host, self.port, len(self.devices)
        )
        return self.port

    async def start_serial(self, port: str, baudrate: int = 9600, parity: str = "N") -> None:
        """Serve RTU on a serial (or pseudo-terminal) device instead of TCP."""
        placeholder = SimDevice(1, simdata=[SimData(0, values=0, datatype=DataType.REGISTERS)])
        self._server = ModbusSerialServer(
            placeholder,
            framer=FramerType.RTU,
            port=port,
            baudrate=baudrate,
            parity=parity,
            ignore_missing_devices=True,
        )
        self._server.context = _FleetContext(self)  # type: ignore[assignment]
        await self._server.serve_forever(background=True)
        log.info("simulated Modbus meters on serial %s (%d units)", port, len(self.devices))

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
