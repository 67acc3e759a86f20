"""Modbus transports against the simulator: TCP, RTU over TCP, serial RTU on a pty pair.

Also: read-only function codes per transport, busy retry, failure isolation (dead and slow
meters), offline/online findings, one request in flight on a shared gateway, aligned ts.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
import tty
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest
from pymodbus import FramerType

from meterwatch.collector.modbus import (
    ModbusDevice,
    ModbusGatewayPoller,
    failing_meters,
    make_client,
)
from meterwatch.core.clock import Clock
from meterwatch.core.schema import readings_from_records
from meterwatch.core.stats import Stats
from meterwatch.protocols.register_map import load_map
from meterwatch.simulators.modbus_server import MeterModbusServer
from tests.support.servers import free_port

MODEL = "eastron-sdm630"
VALUES = {
    "voltage_l1_v": 231.5,
    "voltage_l2_v": 229.0,
    "voltage_l3_v": 230.25,
    "current_l1_a": 5.5,
    "power_kw": 3.75,
    "energy_import_kwh": 1234.5,
    "frequency_hz": 50.0,
}


class ListWriter:
    """Collects what the poller submits (the real writer is tested elsewhere)."""

    def __init__(self) -> None:
        self.frames: list[pd.DataFrame] = []

    def submit(self, frame: pd.DataFrame | list[dict[str, Any]], on_stored: Any = None) -> bool:
        # Pollers submit reading dicts; the writer makes them a frame as it does here.
        self.frames.append(
            frame if isinstance(frame, pd.DataFrame) else readings_from_records(frame)
        )
        return True

    def rows(self) -> pd.DataFrame:
        return pd.concat(self.frames, ignore_index=True) if self.frames else pd.DataFrame()


def make_server(units: list[int], *, framer: FramerType = FramerType.SOCKET) -> MeterModbusServer:
    server = MeterModbusServer("127.0.0.1", free_port(), framer=framer)
    ts = datetime(2026, 1, 5, tzinfo=UTC)
    for u in units:
        dev = server.add_device(f"m{u}", u, load_map(MODEL))
        dev.update({**VALUES, "power_kw": VALUES["power_kw"] + u}, ts)
    return server


def devices(units: list[int]) -> list[ModbusDevice]:
    return [ModbusDevice(f"m{u}", u, load_map(MODEL)) for u in units]


def poller(
    port: int,
    units: list[int],
    *,
    transport: str = "tcp",
    serial: dict[str, Any] | None = None,
    timeout_s: float = 0.5,
    **kw: Any,
) -> tuple[ModbusGatewayPoller, ListWriter, Stats]:
    writer, stats = ListWriter(), Stats()
    p = ModbusGatewayPoller(
        "gw",
        "127.0.0.1",
        port,
        devices(units),
        clock=Clock(),
        writer=writer,  # type: ignore[arg-type]
        stats=stats,
        timeout_s=timeout_s,
        transport=transport,  # type: ignore[arg-type]
        serial=serial,
        **kw,
    )
    return p, writer, stats


def check_values(rows: pd.DataFrame, units: list[int]) -> None:
    assert sorted(rows["meter_id"]) == sorted(f"m{u}" for u in units)
    by = rows.set_index("meter_id")
    for u in units:
        assert by.loc[f"m{u}", "power_kw"] == pytest.approx(VALUES["power_kw"] + u, abs=1e-4)
        assert by.loc[f"m{u}", "voltage_l1_v"] == pytest.approx(231.5, abs=1e-4)
        assert by.loc[f"m{u}", "energy_import_kwh"] == pytest.approx(1234.5, abs=1e-3)


@pytest.mark.parametrize(
    ("transport", "framer"),
    [("tcp", FramerType.SOCKET), ("rtu-over-tcp", FramerType.RTU)],
)
def test_tcp_transports_read_all_meters_with_read_functions_only(
    transport: str, framer: FramerType
) -> None:
    async def main() -> None:
        server = make_server([1, 2, 7], framer=framer)
        await server.start()
        p, writer, stats = poller(server.port, [1, 2, 7], transport=transport)
        try:
            assert await p.poll_cycle(0.0) == 3
        finally:
            await p.close()
            await server.stop()
        check_values(writer.rows(), [1, 2, 7])
        assert set(server.function_codes) <= {3, 4}, server.function_codes
        assert stats.snapshot()["meter_requests"] == len(server.served) == 3

    asyncio.run(main())


def test_wrong_framing_is_an_error_not_garbage() -> None:
    """An RTU client against an MBAP gateway reads nothing rather than misdecoded values."""

    async def main() -> None:
        server = make_server([1])
        await server.start()
        p, writer, stats = poller(server.port, [1], transport="rtu-over-tcp", timeout_s=0.3)
        try:
            assert await p.poll_cycle(0.0) == 0
        finally:
            await p.close()
            await server.stop()
        assert writer.frames == []
        assert stats.meter("m1").errors == 1

    asyncio.run(main())


@pytest.fixture
def pty_pair() -> Iterator[tuple[str, str]]:
    """Two pseudo-terminals whose master ends are bridged: a null-modem cable in software."""
    m1, s1 = os.openpty()
    m2, s2 = os.openpty()
    for fd in (s1, s2):
        tty.setraw(fd)
    stop = threading.Event()

    def bridge() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([m1, m2], [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                os.write(m2 if fd == m1 else m1, data)

    thread = threading.Thread(target=bridge, daemon=True)
    thread.start()
    yield os.ttyname(s1), os.ttyname(s2)
    stop.set()
    thread.join(2)
    for fd in (m1, s1, m2, s2):
        os.close(fd)


def test_serial_rtu_over_a_pty_pair(pty_pair: tuple[str, str]) -> None:
    client_tty, server_tty = pty_pair

    async def main() -> None:
        server = make_server([3, 4])
        await server.start_serial(server_tty, baudrate=19200)
        p, writer, stats = poller(
            0,
            [3, 4],
            transport="serial",
            serial={"serial_port": client_tty, "baudrate": 19200},
            timeout_s=1.0,
        )
        assert p.address == f"{client_tty}@19200N1"
        try:
            assert await p.poll_cycle(0.0) == 2
        finally:
            await p.close()
            await server.stop()
        check_values(writer.rows(), [3, 4])
        assert set(server.function_codes) <= {3, 4}, server.function_codes

    asyncio.run(main())


def test_serial_transport_needs_a_port() -> None:
    with pytest.raises(ValueError, match="serial port"):
        make_client("serial")


def test_busy_meter_is_retried_a_bounded_number_of_times() -> None:
    async def main() -> None:
        server = make_server([1, 2])
        await server.start()
        server.busy[1] = 2
        server.busy[2] = 10
        p, writer, stats = poller(server.port, [1, 2], busy_retries=2, busy_delay_s=0.01)
        try:
            assert await p.poll_cycle(0.0) == 1
        finally:
            await p.close()
            await server.stop()
        assert list(writer.rows()["meter_id"]) == ["m1"]
        assert stats.snapshot()["modbus_busy_retries"] == 4  # 2 for m1, 2 more for m2
        assert server.busy[2] == 7  # 3 attempts on m2, then it gave up
        assert "code 6" in str(stats.meter("m2").last_error)

    asyncio.run(main())


def test_dead_and_slow_meters_cost_only_their_timeout_and_go_offline_then_recover() -> None:
    findings: list[pd.DataFrame] = []

    async def main() -> None:
        server = make_server([1, 2, 3])
        await server.start()
        server.delay_s[2] = 3.0  # slow: answers long after the timeout
        # unit 9 is not served at all: a dead meter (no answer)
        p, writer, stats = poller(
            server.port,
            [1, 2, 9, 3],
            timeout_s=0.3,
            offline_after=2,
            backoff_cap_s=0.0,
            on_findings=findings.append,
        )
        try:
            t0 = time.monotonic()
            assert await p.poll_cycle(0.0) == 2
            elapsed = time.monotonic() - t0
            # Two failing meters cost about one timeout each (x1.5 guard), not their 3 s delay.
            assert elapsed < 2 * 0.3 * 1.5 + 0.8, elapsed
            assert await p.poll_cycle(0.0) == 2
            assert sorted(f["meter_id"].iloc[0] for f in findings) == ["m2", "m9"]
            assert all(f["type"].iloc[0] == "meter_offline" for f in findings)
            assert all(pd.isna(f["ends_at"].iloc[0]) for f in findings)
            assert all(f["evidence"].iloc[0]["offline_after"] == 2 for f in findings)
            # A third failing cycle is counted, not reported again.
            await p.poll_cycle(0.0)
            assert len(findings) == 2
            server.delay_s.clear()
            await asyncio.sleep(3.0)  # let the late answers drain
            await p.close()
            assert await p.poll_cycle(0.0) == 3
        finally:
            await p.close()
            await server.stop()
        assert len(findings) == 3
        back = findings[-1]
        assert back["meter_id"].iloc[0] == "m2" and not pd.isna(back["ends_at"].iloc[0])
        assert back["starts_at"].iloc[0] == findings[0]["starts_at"].iloc[0] or (
            back["starts_at"].iloc[0] == findings[1]["starts_at"].iloc[0]
        )
        assert stats.meter("m9").online is False and stats.meter("m2").online is True
        assert stats.meter("m9").errors == 4
        top = failing_meters(stats)
        assert top[0].startswith("m9 4/4")

    asyncio.run(main())


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    async def main() -> None:
        server = make_server([1])
        await server.start()
        p, _, stats = poller(server.port, [9], timeout_s=0.1, backoff_cap_s=5.0)
        now = datetime(2026, 1, 5, tzinfo=UTC)
        waits = []
        try:
            for _ in range(5):
                await p._read_device(p.devices[0], now)
                waits.append((p.tracker.skip_until["m9"] - now).total_seconds())
        finally:
            await p.close()
            await server.stop()
        assert waits == [2.0, 4.0, 5.0, 5.0, 5.0]

    asyncio.run(main())


def test_pollers_sharing_a_gateway_keep_one_request_in_flight() -> None:
    async def main() -> None:
        server = make_server([1, 2, 3, 4])
        await server.start()
        server.delay_s.update({1: 0.05, 2: 0.05, 3: 0.05, 4: 0.05})
        client, address = make_client("tcp", host="127.0.0.1", port=server.port, timeout_s=1.0)
        a, wa, _ = poller(server.port, [1, 2], client=client, address=address)
        b, wb, _ = poller(server.port, [3, 4], client=client, address=address)
        try:
            got = await asyncio.gather(a.poll_cycle(0.0), b.poll_cycle(0.0))
        finally:
            client.close()
            await server.stop()
        assert got == [2, 2]
        assert server.max_in_flight == 1

    asyncio.run(main())


def test_aligned_readings_carry_the_interval_boundary() -> None:
    async def main() -> None:
        server = make_server([1])
        await server.start()
        p, writer, _ = poller(server.port, [1], interval_s=900.0, align=True)
        p.clock = Clock(start=datetime(2026, 1, 5, 10, 7, 31, tzinfo=UTC), speed=1.0)
        p.tracker.clock = p.clock
        try:
            await p.poll_cycle(0.0)
        finally:
            await p.close()
            await server.stop()
        assert writer.rows()["ts"].iloc[0] == pd.Timestamp("2026-01-05T10:00:00Z")

    asyncio.run(main())


def test_unreachable_gateway_takes_its_meters_offline() -> None:
    findings: list[pd.DataFrame] = []

    async def main() -> None:
        p, writer, stats = poller(
            free_port(),
            [1, 2],
            timeout_s=0.2,
            offline_after=2,
            backoff_cap_s=0.0,
            on_findings=findings.append,
        )
        try:
            assert await p.poll_cycle(0.0) == 0
            assert await p.poll_cycle(0.0) == 0
        finally:
            await p.close()
        assert writer.frames == []
        assert sorted(f["meter_id"].iloc[0] for f in findings) == ["m1", "m2"]
        assert "unreachable" in str(stats.meter("m1").last_error)
        assert stats.total("gateway_connect_errors", protocol="modbus") == 2

    asyncio.run(main())


def test_reconnects_after_the_gateway_restarts() -> None:
    async def main() -> None:
        server = make_server([1])
        await server.start()
        port = server.port
        p, writer, stats = poller(port, [1], timeout_s=0.3, backoff_cap_s=0.0)
        try:
            assert await p.poll_cycle(0.0) == 1
            await server.stop()
            await asyncio.sleep(0.1)
            assert await p.poll_cycle(0.0) == 0  # link gone: counted, not raised
            again = make_server([1])
            again.port = port
            await again.start()
            try:
                got = 0
                for _ in range(5):  # the next cycles reconnect
                    got = await p.poll_cycle(0.0)
                    if got:
                        break
                    await asyncio.sleep(0.2)
                assert got == 1
            finally:
                await again.stop()
        finally:
            await p.close()
        assert len(writer.frames) == 2
        assert stats.meter("m1").online is True and stats.meter("m1").errors >= 1

    asyncio.run(main())


def test_a_long_cycle_hands_reads_to_the_writer_as_it_goes() -> None:
    # A real-time cycle spreads its reads over minutes; they must not wait for its end.
    async def main() -> None:
        server = make_server([1, 2, 3])
        await server.start()
        p, writer, _ = poller(server.port, [1, 2, 3])
        p.submit_every_s = 0.0  # every read is due for the writer at once
        try:
            assert await p.poll_cycle(0.0) == 3
        finally:
            await p.close()
            await server.stop()
        assert [len(f) for f in writer.frames] == [1, 1, 1]
        check_values(writer.rows(), [1, 2, 3])

    asyncio.run(main())
