"""Notification sinks: MQTT, webhook (Alertmanager webhook format v4), Alertmanager API v2, SMTP.

Each sink has a ``name`` (unique, used as the outbox key) and ``send(notification)``, which
returns when the notification is delivered or raises :class:`DeliveryError` (library
exceptions are translated here, at this one boundary). ``events`` says which alert events the
sink is told about; the dispatcher does not enqueue the others.
"""

from __future__ import annotations

import json
import logging
import os
import smtplib
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ConfigDict, Field

from meterwatch.alerts.delivery.outbox import Notification
from meterwatch.alerts.delivery.registry import SinkContext, SinkSpec, register_sink
from meterwatch.alerts.model import parse_iso
from meterwatch.core.config import Duration, Section, secret
from meterwatch.core.errors import ConfigError, DeliveryError

log = logging.getLogger(__name__)

ALL_EVENTS = frozenset(
    {"opened", "updated", "acknowledged", "resolved", "verified", "reopened", "escalated"}
)
#: Events that end the alert's "firing" state for Alertmanager-style receivers.
CLOSING_EVENTS = frozenset({"resolved", "verified"})
#: Events worth a message to a person (webhook, e-mail): not every repeat or acknowledgement.
PAGE_EVENTS = frozenset({"opened", "reopened", "escalated", "resolved"})


class Sink(Protocol):
    name: str
    events: frozenset[str]

    def send(self, note: Notification) -> None: ...

    def close(self) -> None: ...


def _labels(alert: dict[str, Any]) -> dict[str, str]:
    """Prometheus-style labels of an alert; empty ones are left out (Alertmanager drops them)."""
    labels = {
        "alertname": alert["type"],
        "meter_id": alert.get("meter_id"),
        "transformer_id": alert.get("transformer_id"),
        "severity": alert.get("severity"),
        "category": alert.get("category"),
    }
    return {k: str(v) for k, v in labels.items() if v}


def _annotations(alert: dict[str, Any]) -> dict[str, str]:
    out = {
        "summary": str(alert.get("summary", "")),
        "evidence": json.dumps(alert.get("evidence") or {}, sort_keys=True, ensure_ascii=False),
        "alert_id": str(alert["id"]),
        "status": str(alert.get("status", "")),
    }
    if alert.get("acknowledged_by"):
        out["acknowledged_by"] = str(alert["acknowledged_by"])
    return out


def _http_post(
    sink: str, url: str, body: dict[str, Any] | list[Any], headers: dict[str, str], timeout_s: float
) -> int:
    """POST JSON; return the status or raise DeliveryError (4xx other than 408/429: not retryable)."""
    data = json.dumps(body, ensure_ascii=False).encode()
    req = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode(errors="replace")
        retryable = exc.code >= 500 or exc.code in (408, 429)
        raise DeliveryError(
            sink, f"POST {url} answered HTTP {exc.code}: {detail}", retryable=retryable
        ) from None
    except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections
        raise DeliveryError(sink, f"POST {url} failed: {exc}") from None


class MqttSink:
    """Retained state per fingerprint on ``<prefix>/alerts/state/<fp>``, events on ``<prefix>/alerts/events``.

    Both QoS 1; ``send`` returns only when the broker acknowledged (PUBACK). A ``verified``
    alert is closed: its retained state is cleared with an empty retained payload, so a
    subscriber sees open, acknowledged and resolved-but-unverified alerts only.
    """

    events = ALL_EVENTS

    def __init__(
        self,
        host: str,
        port: int,
        topic_prefix: str = "meterwatch",
        *,
        client_id: str = "meterwatch-alerts",
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
        name: str = "mqtt",
    ):
        self.name = name
        self.prefix = topic_prefix.rstrip("/")
        self.timeout_s = timeout_s
        self.address = f"{host}:{port}"
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True
        )
        if username:
            self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(1, 30)
        self._host, self._port = host, port
        self._started = False
        self._lock = threading.Lock()

    def state_topic(self, fingerprint: str) -> str:
        return f"{self.prefix}/alerts/state/{fingerprint}"

    @property
    def events_topic(self) -> str:
        return f"{self.prefix}/alerts/events"

    def _ensure_started(self) -> None:
        with self._lock:
            if self._started:
                return
            try:
                self._client.connect_async(self._host, self._port, keepalive=30)
                self._client.loop_start()
            except (OSError, ValueError) as exc:
                raise DeliveryError(self.name, f"MQTT broker {self.address}: {exc}") from None
            self._started = True

    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        try:
            info = self._client.publish(topic, payload, qos=1, retain=retain)
            info.wait_for_publish(self.timeout_s)
        except (RuntimeError, ValueError, OSError) as exc:
            raise DeliveryError(self.name, f"MQTT {self.address} {topic}: {exc}") from None
        if not info.is_published():
            raise DeliveryError(
                self.name, f"MQTT {self.address} {topic}: no PUBACK within {self.timeout_s} s"
            )

    def send(self, note: Notification) -> None:
        self._ensure_started()
        if not self._client.is_connected():
            deadline = time.monotonic() + self.timeout_s
            while not self._client.is_connected() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self._client.is_connected():
                raise DeliveryError(self.name, f"MQTT broker {self.address}: not connected")
        alert = note.alert
        event = {"event": note.event, "key": note.key, "alert": alert}
        self._publish(self.events_topic, json.dumps(event, ensure_ascii=False).encode(), False)
        state = b"" if note.event == "verified" else json.dumps(alert, ensure_ascii=False).encode()
        self._publish(self.state_topic(note.fingerprint), state, True)

    def close(self) -> None:
        with self._lock:
            if self._started:
                self._client.disconnect()
                self._client.loop_stop()
                self._started = False


class WebhookSink:
    """POSTs Prometheus Alertmanager's webhook payload (version "4"), one alert per message.

    Meter alerts are grouped by transformer area (``groupLabels: {transformer_id}``), so a
    receiver that batches by ``groupKey`` sees an area's alerts together.
    """

    events = PAGE_EVENTS

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        receiver: str = "meterwatch",
        external_url: str = "",
        timeout_s: float = 10.0,
        name: str | None = None,
    ):
        self.url = url
        self.name = name or f"webhook:{url}"
        self.token = token
        self.receiver = receiver
        self.external_url = external_url.rstrip("/")
        self.timeout_s = timeout_s

    def payload(self, note: Notification) -> dict[str, Any]:
        """The webhook body (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config)."""
        alert = note.alert
        status = "resolved" if note.event in CLOSING_EVENTS else "firing"
        labels = _labels(alert)
        annotations = _annotations(alert)
        group = {"transformer_id": labels["transformer_id"]} if "transformer_id" in labels else {}
        group_key = "{}:{" + ",".join(f'{k}="{v}"' for k, v in group.items()) + "}"
        ends = alert.get("ends_at") or alert.get("resolved_at")
        item = {
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": alert["starts_at"],
            # Alertmanager's zero time for "not ended"; receivers parse it as a timestamp.
            "endsAt": ends if status == "resolved" and ends else "0001-01-01T00:00:00Z",
            "generatorURL": f"{self.external_url}/#alert={alert['id']}"
            if self.external_url
            else "",
            "fingerprint": alert["fingerprint"],
        }
        return {
            "version": "4",
            "groupKey": group_key,
            "truncatedAlerts": 0,
            "status": status,
            "receiver": self.receiver,
            "groupLabels": group,
            "commonLabels": labels,
            "commonAnnotations": annotations,
            "externalURL": self.external_url,
            "alerts": [item],
        }

    def send(self, note: Notification) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        _http_post(self.name, self.url, self.payload(note), headers, self.timeout_s)

    def close(self) -> None:
        pass


class AlertmanagerSink:
    """Pushes alerts to a Prometheus Alertmanager (``POST /api/v2/alerts``): firing, then resolved.

    Like Prometheus, a firing alert carries ``endsAt`` a few refresh intervals ahead and is
    re-posted every ``refresh_s`` by :meth:`tick` while it fires; if MeterWatch stops,
    Alertmanager resolves it by itself after that horizon instead of showing a stale alert
    forever. A resolved alert is posted with its ``endsAt`` (the resolution time).
    """

    events = ALL_EVENTS - {"verified"}

    def __init__(
        self,
        url: str,
        *,
        external_url: str = "",
        refresh_s: float = 60.0,
        timeout_s: float = 10.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        name: str = "alertmanager",
    ):
        self.url = url.rstrip("/")
        self.name = name
        self.external_url = external_url.rstrip("/")
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._firing: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._last_refresh = time.monotonic()
        self.refresh_errors = 0

    def _item(self, alert: dict[str, Any], firing: bool) -> dict[str, Any]:
        now = self.clock()
        starts = parse_iso(alert["starts_at"])
        # Alertmanager compares with its wall clock; a simulated clock running ahead of it must
        # not produce startsAt after endsAt (which Alertmanager refuses).
        if starts is None or starts > now:
            starts = now
        item: dict[str, Any] = {
            "labels": _labels(alert),
            "annotations": _annotations(alert),
            "startsAt": starts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if self.external_url:
            item["generatorURL"] = f"{self.external_url}/#alert={alert['id']}"
        if firing:
            horizon = now + timedelta(seconds=4 * self.refresh_s)
            # milliseconds: a short refresh interval must not round the horizon into the past
            item["endsAt"] = horizon.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        else:
            # Alertmanager shows an alert as resolved once endsAt is past; the alert's own
            # end is data time, which may be ahead of wall time in a simulation: use the
            # earlier of the two.
            ends = parse_iso(alert.get("resolved_at") or alert.get("ends_at"))
            end = min(ends, now) if ends is not None else now
            item["endsAt"] = end.strftime("%Y-%m-%dT%H:%M:%SZ")
        return item

    def send(self, note: Notification) -> None:
        firing = note.event not in CLOSING_EVENTS
        _http_post(
            self.name,
            f"{self.url}/api/v2/alerts",
            [self._item(note.alert, firing)],
            {},
            self.timeout_s,
        )
        with self._lock:
            if firing:
                self._firing[note.fingerprint] = note.alert
            else:
                self._firing.pop(note.fingerprint, None)

    def seed(self, alerts: list[dict[str, Any]]) -> None:
        """Alerts known to be firing (after a restart), so :meth:`tick` keeps them alive."""
        with self._lock:
            for alert in alerts:
                self._firing[alert["fingerprint"]] = alert

    def tick(self) -> None:
        """Re-post firing alerts every ``refresh_s`` (called by the dispatcher thread)."""
        if time.monotonic() - self._last_refresh < self.refresh_s:
            return
        self._last_refresh = time.monotonic()
        with self._lock:
            firing = list(self._firing.values())
        if not firing:
            return
        try:
            body = [self._item(a, True) for a in firing]
            _http_post(self.name, f"{self.url}/api/v2/alerts", body, {}, self.timeout_s)
        except DeliveryError as exc:
            self.refresh_errors += 1
            log.debug("%s", exc)

    def close(self) -> None:
        pass


class SmtpSink:
    """E-mail through an SMTP server (smtplib), optional STARTTLS and login from env variables.

    With ``starttls`` the session is upgraded before login and the server certificate is
    verified against the system CAs, or ``ca_file`` (a private CA). Configuration faults fail
    loud and are not retried, each naming the setting to fix: a refused login (535), a server
    without STARTTLS or AUTH, a certificate that does not verify, an unset password variable.
    """

    events = PAGE_EVENTS
    #: Where the settings live in config.yaml (named in error messages).
    SETTING = "alerts.delivery.smtp"

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        recipients: list[str],
        *,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        external_url: str = "",
        timeout_s: float = 15.0,
        name: str = "smtp",
        ca_file: str | os.PathLike[str] | None = None,
        username_env: str | None = None,
        password_env: str | None = None,
    ):
        self.host, self.port = host, port
        self.sender = sender
        self.recipients = list(recipients)
        self.username, self.password = username, password
        self.starttls = starttls
        self.external_url = external_url.rstrip("/")
        self.timeout_s = timeout_s
        self.name = name
        self.ca_file = ca_file
        #: names of the environment variables, for error messages only (never their values)
        self.username_env, self.password_env = username_env, password_env

    def message(self, note: Notification) -> EmailMessage:
        alert = note.alert
        where = alert.get("meter_id") or alert.get("transformer_id") or "-"
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Subject"] = (
            f"[MeterWatch {note.event.upper()}] {alert.get('severity')} {alert['type']} {where}"
        )
        msg["Message-ID"] = f"<{note.key.replace(':', '.')}@meterwatch>"
        lines = [
            str(alert.get("summary", "")),
            "",
            f"alert:       {alert['id']} ({note.event}, status {alert.get('status')})",
            f"type:        {alert['type']} ({alert.get('category')}, {alert.get('severity')})",
            f"meter:       {alert.get('meter_id') or '-'}",
            f"transformer: {alert.get('transformer_id') or '-'}",
            f"starts at:   {alert.get('starts_at')}",
            f"ends at:     {alert.get('ends_at') or '-'}",
        ]
        if self.external_url:
            lines.append(f"page:        {self.external_url}/#alert={alert['id']}")
        lines += ["", "evidence:", json.dumps(alert.get("evidence") or {}, indent=2)]
        msg.set_content("\n".join(lines))
        return msg

    def _env(self, setting: str, var: str | None) -> str:
        return f"{self.SETTING}.{setting}" + (f" (environment variable {var})" if var else "")

    def _fail(self, message: str) -> DeliveryError:
        """A configuration fault: not retried, logged as an error naming what to fix."""
        return DeliveryError(self.name, f"SMTP {self.host}:{self.port}: {message}", retryable=False)

    def send(self, note: Notification) -> None:
        if self.username and self.password is None:
            raise self._fail(
                f"login as {self.username!r} needs a password: "
                f"{self._env('password_env', self.password_env)} is not set"
            )
        msg = self.message(note)
        step = "connect"
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                if self.starttls:
                    step = "starttls"
                    smtp.starttls(context=ssl.create_default_context(cafile=self.ca_file))
                if self.username:
                    step = "login"
                    smtp.login(self.username, self.password or "")
                step = "send"
                smtp.send_message(msg)
        except UnicodeEncodeError:
            # smtplib sends AUTH PLAIN/LOGIN credentials as ASCII only (CPython smtplib.auth)
            raise self._fail(
                f"login as {self.username!r}: the username or password has non-ASCII characters, "
                "which smtplib cannot send; set an ASCII password in "
                f"{self._env('password_env', self.password_env)}"
            ) from None
        except smtplib.SMTPAuthenticationError as exc:
            raise self._fail(
                f"login as {self.username!r} refused ({exc.smtp_code} {_text(exc.smtp_error)}): "
                f"check {self._env('username_env', self.username_env)} and "
                f"{self._env('password_env', self.password_env)}"
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            if step == "starttls":
                fix = f"the server does not offer STARTTLS; set {self.SETTING}.starttls: false or use a port that does"
            else:  # AUTH missing: servers often offer it only after STARTTLS
                fix = "the server does not offer AUTH" + (
                    "" if self.starttls else f" here (try {self.SETTING}.starttls: true)"
                )
            raise self._fail(f"{fix} ({exc})") from None
        except ssl.SSLCertVerificationError as exc:
            raise self._fail(
                f"TLS certificate not trusted ({exc.verify_message}); give the server's CA in "
                f"{self.SETTING}.ca_file" + (f" (now {self.ca_file})" if self.ca_file else "")
            ) from None
        except smtplib.SMTPResponseException as exc:
            retryable = exc.smtp_code >= 400 and exc.smtp_code < 500
            raise DeliveryError(
                self.name,
                f"SMTP {self.host}:{self.port} answered {exc.smtp_code} {exc.smtp_error!r} "
                f"at {step}",
                retryable=retryable,
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(
                self.name, f"SMTP {self.host}:{self.port} at {step}: {exc}"
            ) from None

    def close(self) -> None:
        pass


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


# -- config sections and registration (alerts.delivery.<sink>) ---------------------------------


class MqttDeliveryConfig(Section):
    """``alerts.delivery.mqtt``: alert state and events on the broker of ``collector.mqtt``."""

    enabled: bool = False
    topic_prefix: str = "meterwatch"
    client_id: str = "meterwatch-alerts"


class WebhookConfig(Section):
    """``alerts.delivery.webhooks[]``: a receiver of Alertmanager's webhook format (version 4)."""

    url: str
    token_env: str | None = None
    timeout_s: float = Field(10.0, gt=0)


class AlertmanagerDeliveryConfig(Section):
    """``alerts.delivery.alertmanager``: push to a Prometheus Alertmanager (API v2)."""

    url: str | None = None
    refresh: Duration = Field(60.0, gt=0)
    timeout_s: float = Field(10.0, gt=0)


class SmtpConfig(Section):
    """``alerts.delivery.smtp``: e-mail; off while ``host`` is null or ``to`` is empty."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    host: str | None = None
    port: int = Field(25, ge=1, le=65535)
    sender: str = Field("meterwatch@localhost", alias="from")
    to: list[str] = []
    username_env: str | None = None
    password_env: str | None = None
    starttls: bool = False
    #: CA bundle (PEM) that signed the server's certificate, for a private CA; None: system CAs
    ca_file: Path | None = None
    timeout_s: float = Field(15.0, gt=0)


def _build_mqtt(cfg: MqttDeliveryConfig, ctx: SinkContext) -> list[Sink]:
    if not cfg.enabled:
        return []
    if ctx.broker is None:
        raise ConfigError(
            "alerts.delivery.mqtt",
            [("alerts.delivery.mqtt.enabled", "needs an MQTT broker (collector.mqtt)")],
        )
    b = ctx.broker
    return [
        MqttSink(
            b.host,
            b.port,
            cfg.topic_prefix,
            client_id=cfg.client_id,
            username=b.username,
            password=b.password,
        )
    ]


def _build_webhooks(cfg: list[WebhookConfig], ctx: SinkContext) -> list[Sink]:
    return [
        WebhookSink(
            hook.url,
            token=secret(hook.token_env, f"alerts.delivery.webhooks.{i}.token_env"),
            external_url=ctx.external_url,
            timeout_s=hook.timeout_s,
        )
        for i, hook in enumerate(cfg)
    ]


def _build_alertmanager(cfg: AlertmanagerDeliveryConfig, ctx: SinkContext) -> list[Sink]:
    if not cfg.url:
        return []
    return [
        AlertmanagerSink(
            cfg.url,
            external_url=ctx.external_url,
            refresh_s=cfg.refresh,
            timeout_s=cfg.timeout_s,
            clock=ctx.clock,
        )
    ]


def _build_smtp(cfg: SmtpConfig, ctx: SinkContext) -> list[Sink]:
    if not (cfg.host and cfg.to):
        return []
    return [
        SmtpSink(
            cfg.host,
            cfg.port,
            cfg.sender,
            cfg.to,
            username=secret(cfg.username_env, "alerts.delivery.smtp.username_env"),
            password=secret(cfg.password_env, "alerts.delivery.smtp.password_env"),
            starttls=cfg.starttls,
            external_url=ctx.external_url,
            timeout_s=cfg.timeout_s,
            ca_file=cfg.ca_file,
            username_env=cfg.username_env,
            password_env=cfg.password_env,
        )
    ]


register_sink(SinkSpec("mqtt", MqttDeliveryConfig, MqttDeliveryConfig(), _build_mqtt))
register_sink(SinkSpec("webhooks", list[WebhookConfig], [], _build_webhooks))
register_sink(
    SinkSpec(
        "alertmanager",
        AlertmanagerDeliveryConfig,
        AlertmanagerDeliveryConfig(),
        _build_alertmanager,
    )
)
register_sink(SinkSpec("smtp", SmtpConfig, SmtpConfig(), _build_smtp))
