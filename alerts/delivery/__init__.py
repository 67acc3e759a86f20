"""Alert delivery: a persistent outbox and sinks (MQTT, webhook, Alertmanager, SMTP).

:func:`build_dispatcher` turns the ``alerts.delivery`` config into a :class:`Dispatcher`
(an AlertManager listener), or None when no sink is enabled.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from meterwatch.alerts.delivery.dispatcher import Dispatcher
from meterwatch.alerts.delivery.outbox import Notification, Outbox, notification_key
from meterwatch.alerts.delivery.sinks import (
    AlertmanagerSink,
    MqttSink,
    Sink,
    SmtpSink,
    WebhookSink,
    env_secret,
)
from meterwatch.config import DeliveryConfig, MqttConfig
from meterwatch.core.errors import DeliveryError

__all__ = [
    "AlertmanagerSink",
    "DeliveryError",
    "Dispatcher",
    "MqttSink",
    "Notification",
    "Outbox",
    "Sink",
    "SmtpSink",
    "WebhookSink",
    "build_dispatcher",
    "notification_key",
]


def build_sinks(
    cfg: DeliveryConfig,
    mqtt_cfg: MqttConfig | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Sink]:
    """The sinks the config enables (MQTT uses the broker of the ``mqtt`` section)."""
    sinks: list[Sink] = []
    if cfg.mqtt.enabled:
        if mqtt_cfg is None:
            raise ValueError("alerts.delivery.mqtt.enabled needs the mqtt section (broker address)")
        sinks.append(
            MqttSink(
                mqtt_cfg.host,
                mqtt_cfg.port,
                cfg.mqtt.topic_prefix,
                client_id=cfg.mqtt.client_id,
                username=env_secret(mqtt_cfg.username_env),
                password=env_secret(mqtt_cfg.password_env),
            )
        )
    for hook in cfg.webhooks:
        sinks.append(
            WebhookSink(
                hook.url,
                token=env_secret(hook.token_env),
                external_url=cfg.external_url,
                timeout_s=hook.timeout_s,
            )
        )
    if cfg.alertmanager.url:
        sinks.append(
            AlertmanagerSink(
                cfg.alertmanager.url,
                external_url=cfg.external_url,
                refresh_s=cfg.alertmanager.refresh,
                timeout_s=cfg.alertmanager.timeout_s,
                clock=clock,
            )
        )
    smtp = cfg.smtp
    if smtp.host and smtp.to:
        sinks.append(
            SmtpSink(
                smtp.host,
                smtp.port,
                smtp.sender,
                smtp.to,
                username=env_secret(smtp.username_env),
                password=env_secret(smtp.password_env),
                starttls=smtp.starttls,
                external_url=cfg.external_url,
                timeout_s=smtp.timeout_s,
                ca_file=smtp.ca_file,
                username_env=smtp.username_env,
                password_env=smtp.password_env,
            )
        )
    return sinks


def build_dispatcher(cfg: DeliveryConfig, mqtt_cfg: MqttConfig | None = None) -> Dispatcher | None:
    """A dispatcher over the enabled sinks (state in ``cfg.state_dir``), or None if there are none."""
    sinks = build_sinks(cfg, mqtt_cfg)
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
