"""Simulated DL/T 645-2007 meters behind one TCP port, like RS-485 meters behind a device server.

Every connection is a shared bus: a frame addressed to one of the simulated meters gets that
meter's answer, any other address gets silence (as on RS-485). Values come from a callback,
``values(address) -> {canonical column: value}``, asked at each request, so a fleet model can
feed live numbers; a column that is missing or NaN is a quantity the meter does not have.

Answers, as a meter would give them:

* read data (11H), known DI -> normal reply 91H with the value in BCD;
* read data, unknown DI or a quantity the meter does not have -> abnormal reply D1H with the
  "no data requested" bit; a value the BCD format cannot hold -> D1H "other error";
* read address (13H) to the wildcard AAAAAAAAAAAA -> 93H with the address, only when a single
  meter is simulated (several would collide on a real bus); wildcard reads of data likewise;
* broadcast 999999999999 -> no reply (broadcasts are never answered);
* any other function -> abnormal reply (C0H | function) "other error": nothing else is
  simulated, and it is recorded, so tests can prove a client never sent it.

Every master frame heard is appended to ``requests`` as (address, control, DI) — including ones
to unknown addresses — so a test can check exactly what a client sent.

Like the Modbus and MQTT simulators, it reuses the pure codec (:mod:`protocols.dlt645`) rather
than duplicating it; the tests pin that codec to hand-computed and published frames.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from protocols.dlt645 import (
    BROADCAST_ADDRESS,
    DEFAULT_PREAMBLE,
    ERR_NO_DATA,
    ERR_OTHER,
    READ_ADDRESS,
    READ_DATA,
    WILDCARD_ADDRESS,
    Frame,
    di_from_bytes,
    encode_abnormal_reply,
    encode_read_address_reply,
    encode_read_reply,
    find_frame,
    items_for,
    normalize_address,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestRecord:
    """One master frame the simulator heard. ``di`` is None when the frame carries none."""

    address: str
    control: int
    di: str | None


class Dlt645Server:
    """Several simulated meters answering DL/T 645-2007 reads on one TCP port."""

    def __init__(
        self,
        values: Callable[[str], Mapping[str, float]],
        addresses: Iterable[str],
        *,
        preamble: int = DEFAULT_PREAMBLE,
    ) -> None:
        self.values = values
        self.addresses: frozenset[str] = frozenset(normalize_address(a) for a in addresses)
        self.preamble = preamble
        #: Every master frame heard, in order.
        self.requests: list[RequestRecord] = []
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0 picks a free port) and return the port."""
        self._server = await asyncio.start_server(self._serve, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Close the listener and every open connection."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    def _target(self, address: str) -> str | None:
        if address in self.addresses:
            return address
        if address == WILDCARD_ADDRESS and len(self.addresses) == 1:
            return next(iter(self.addresses))
        return None

    def respond(self, frame: Frame) -> bytes | None:
        """Record a master frame and return the bytes a meter would answer (None: silence)."""
        di = di_from_bytes(frame.data[:4]) if len(frame.data) >= 4 else None
        self.requests.append(RequestRecord(frame.address, frame.control, di))
        meter = self._target(frame.address)
        if meter is None or frame.address == BROADCAST_ADDRESS:
            return None
        if frame.function == READ_ADDRESS:
            return encode_read_address_reply(meter, self.preamble)
        if frame.function != READ_DATA or di is None:
            return encode_abnormal_reply(meter, frame.function, ERR_OTHER, self.preamble)
        try:
            items = items_for(di)
        except ValueError:
            return encode_abnormal_reply(meter, READ_DATA, ERR_NO_DATA, self.preamble)
        current = self.values(meter)
        have = {
            item.name: float(current[item.name])
            for _, item in items
            if item.name in current and not math.isnan(current[item.name])
        }
        if len(have) < len(items):
            return encode_abnormal_reply(meter, READ_DATA, ERR_NO_DATA, self.preamble)
        try:
            return encode_read_reply(meter, di, have, self.preamble)
        except ValueError as exc:
            log.warning("meter %s cannot encode DI %s: %s", meter, di, exc)
            return encode_abnormal_reply(meter, READ_DATA, ERR_OTHER, self.preamble)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        buf = bytearray()
        try:
            while chunk := await reader.read(1024):
                buf += chunk
                while True:
                    frame, consumed = find_frame(buf)
                    del buf[:consumed]
                    if frame is None:
                        break
                    if frame.is_reply:  # another slave's answer on the shared bus
                        continue
                    answer = self.respond(frame)
                    if answer is not None:
                        writer.write(answer)
                        await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._connections.discard(writer)
            writer.close()
