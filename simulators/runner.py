"""Runs the simulated fleet on the service clock and serves it over Modbus TCP and MQTT."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from meterwatch.core.clock import Clock
from meterwatch.protocols.register_map import load_map
from meterwatch.simulators.fleet import AnomalySpec, Fleet
from meterwatch.simulators.modbus_server import MeterModbusServer
from meterwatch.simulators.mqtt_publisher import MqttMeterPublisher

log = logging.getLogger(__name__)


class SimulatorRunner:
    """Advances the fleet with the clock; refreshes Modbus registers; publishes MQTT meters.

    MQTT meters publish at every ``interval_s`` boundary of simulated time (counted from the
    fleet start), with that boundary as the reading's ``ts``.
    """

    def __init__(
        self,
        fleet: Fleet,
        clock: Clock,
        *,
        modbus_host: str = "127.0.0.1",
        modbus_port: int = 0,
        mqtt_host: str | None = None,
        mqtt_port: int = 1883,
        topic_template: str = "meters/{meter_id}/reading",
        interval_s: float = 900.0,
        tick_wall_s: float = 0.1,
    ):
        self.fleet = fleet
        self.clock = clock
        self.interval = timedelta(seconds=interval_s)
        self.tick_wall_s = tick_wall_s
        reg = fleet.registry
        self.modbus = MeterModbusServer(modbus_host, modbus_port)
        for row in reg[reg["transport"] == "modbus"].itertuples():
            self.modbus.add_device(str(row.meter_id), int(row.unit_id), load_map(str(row.model)))
        self.mqtt_ids = reg.loc[reg["transport"] == "mqtt", "meter_id"].astype(str).tolist()
        self.mqtt: MqttMeterPublisher | None = None
        if mqtt_host is not None and self.mqtt_ids:
            self.mqtt = MqttMeterPublisher(mqtt_host, mqtt_port, topic_template)
        self._next_publish = fleet.now + self.interval
        self._task: asyncio.Task[None] | None = None
        self._listening = False

    async def listen(self) -> None:
        """Start serving the Modbus meters (their port is known from here on); idempotent."""
        if not self._listening:
            self.modbus.update(self.fleet.snapshot())
            await self.modbus.start()
            self._listening = True

    async def start(self) -> None:
        """Serve Modbus (if not yet) and start advancing the fleet and publishing MQTT."""
        await self.listen()
        if self.mqtt is not None:
            await asyncio.to_thread(self.mqtt.start)
        self._task = asyncio.create_task(self._run(), name="simulator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._listening:
            await self.modbus.stop()
            self._listening = False
        if self.mqtt is not None:
            await asyncio.to_thread(self.mqtt.stop)

    def step(self) -> None:
        """Advance to the clock's now, publishing MQTT readings at each boundary passed."""
        now = self.clock.now()
        while self._next_publish <= now:
            self.fleet.advance(self._next_publish)
            if self.mqtt is not None:
                snap = self.fleet.snapshot()
                self.mqtt.publish(snap[snap["meter_id"].isin(self.mqtt_ids)])
            self._next_publish += self.interval
        self.fleet.advance(now)
        self.modbus.update(self.fleet.snapshot())

    async def _run(self) -> None:
        while True:
            try:
                self.step()
            except Exception:  # keep serving; a bug here must not kill the demo silently
                log.exception("simulator step failed")
            await asyncio.sleep(self.tick_wall_s)


def anomaly_specs(configs: list) -> list[AnomalySpec]:  # type: ignore[type-arg]
    """Translate config anomalies (simulators.config.AnomalyConfig) to fleet specs."""
    return [
        AnomalySpec(
            type=a.type,
            meter_id=a.meter_id,
            at_s=a.at,
            duration_s=a.duration,
            magnitude=a.magnitude,
        )
        for a in configs
    ]
