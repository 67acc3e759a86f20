"""Alert delivery: a persistent outbox and sinks (MQTT, webhook, Alertmanager, SMTP).

:func:`build_dispatcher` turns the ``alerts.delivery`` config into a :class:`Dispatcher`
(an AlertManager listener), or None when no sink is enabled. Sinks register themselves
(:mod:`meterwatch.alerts.delivery.registry`).
"""

from __future__ import annotations

from typing import Any

from meterwatch.alerts.delivery.dispatcher import Dispatcher
from meterwatch.alerts.delivery.outbox import Notification, Outbox, notification_key
from meterwatch.alerts.delivery.registry import (
    BrokerConnection,
    SinkContext,
    SinkSpec,
    load_sinks,
    register_sink,
)
from meterwatch.alerts.delivery.sinks import (
    AlertmanagerSink,
    MqttSink,
    Sink,
    SmtpSink,
    WebhookSink,
)
from meterwatch.core.errors import DeliveryError

__all__ = [
    "AlertmanagerSink",
    "BrokerConnection",
    "DeliveryError",
    "Dispatcher",
    "MqttSink",
    "Notification",
    "Outbox",
    "Sink",
    "SinkContext",
    "SinkSpec",
    "SmtpSink",
    "WebhookSink",
    "build_dispatcher",
    "build_sinks",
    "notification_key",
    "register_sink",
]


def build_sinks(cfg: Any, ctx: SinkContext | None = None) -> list[Sink]:
    """The sinks ``alerts.delivery`` enables, in registry order (secrets from the environment)."""
    ctx = ctx or SinkContext(external_url=cfg.external_url)
    if not ctx.external_url and cfg.external_url:
        ctx = SinkContext(cfg.external_url, ctx.broker, ctx.clock)
    sinks: list[Sink] = []
    for name, spec in load_sinks().items():
        sinks.extend(spec.build(getattr(cfg, name), ctx))
    return sinks


def build_dispatcher(cfg: Any, ctx: SinkContext | None = None) -> Dispatcher | None:
    """A dispatcher over the enabled sinks (state in ``cfg.state_dir``), or None if there are none."""
    sinks = build_sinks(cfg, ctx)
    if not sinks:
        return None
    return Dispatcher(
        cfg.state_dir,
        sinks,
        initial_s=cfg.retry.initial,
        max_s=cfg.retry.max,
        jitter=cfg.retry.jitter,
        give_up_after_s=cfg.retry.give_up_after,
    )
