"""Embedded MQTT broker (amqtt) for gateways and demos with no broker of their own."""

from __future__ import annotations

import asyncio
import logging

from amqtt.broker import Broker

log = logging.getLogger(__name__)


class EmbeddedBroker:
    """An amqtt broker on one loopback TCP listener, anonymous access, no $SYS chatter.

    MQTT 3.1.1 with QoS 0/1/2 and persistent sessions. For production fleets use Mosquitto or
    an MQTT cluster: the collector code is the same.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1883):
        self.host = host
        self.port = port
        self._broker: Broker | None = None

    async def start(self) -> None:
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        broker = Broker(config, loop=asyncio.get_running_loop())
        # amqtt logs a failed start (a port in use) with its traceback before raising it; the
        # raised error is what the caller reports.
        amqtt_log = logging.getLogger("amqtt.broker")
        level = amqtt_log.level
        amqtt_log.setLevel(logging.CRITICAL)
        try:
            await broker.start()
        finally:
            amqtt_log.setLevel(level)
        self._broker = broker
        log.info("embedded MQTT broker listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
