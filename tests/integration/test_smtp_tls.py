"""SMTP delivery over STARTTLS with login, against a real SMTP server (aiosmtpd) on loopback.

The server offers AUTH only after STARTTLS (``auth_require_tls``) and refuses mail before it
(``require_starttls``), so a delivered message proves the session was encrypted and the login
was made with the configured credentials. The certificate is generated per test with the
``openssl`` command (Debian package ``openssl``).
"""

from __future__ import annotations

import logging
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from meterwatch.alerts.delivery import Dispatcher, build_sinks
from meterwatch.config import DeliveryConfig
from meterwatch.core.errors import ConfigError
from tests.support.servers import free_port, require_binary

USER, PASSWORD = "alerts@grid.example", "s3cret-Pa55"


@dataclass
class Received:
    """What the server saw: one entry per accepted message, and every login attempt."""

    mails: list[dict[str, Any]] = field(default_factory=list)
    logins: list[tuple[str, bool, bool]] = field(default_factory=list)  # (user, tls, ok)


class Handler:
    def __init__(self, received: Received):
        self.received = received

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.received.mails.append(
            {
                "tls": session.ssl is not None,
                "cipher": (session.ssl or {}).get("cipher"),
                "login": session.auth_data.login.decode() if session.authenticated else None,
                "from": envelope.mail_from,
                "to": list(envelope.rcpt_tos),
                "data": envelope.content,
            }
        )
        return "250 OK queued"


def _authenticator(received: Received) -> Any:
    def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        ok = data.login.decode() == USER and data.password.decode() == PASSWORD
        received.logins.append((data.login.decode(), session.ssl is not None, ok))
        return AuthResult(success=ok, handled=False, auth_data=data)

    return check


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA): (cert.pem, key.pem)."""
    openssl = require_binary(("openssl",), "openssl")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=MeterWatch test SMTP",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def smtp_server(certificate: tuple[Path, Path]) -> Iterator[tuple[int, Received]]:
    cert, key = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    received = Received()
    port = free_port()
    controller = Controller(
        Handler(received),
        hostname="127.0.0.1",
        port=port,
        tls_context=tls,
        require_starttls=True,
        auth_require_tls=True,
        auth_required=True,
        authenticator=_authenticator(received),
    )
    controller.start()
    try:
        yield port, received
    finally:
        controller.stop()


def _dispatcher(tmp_path: Path, port: int, **smtp: Any) -> Dispatcher:
    cfg = DeliveryConfig.model_validate(
        {
            "state_dir": str(tmp_path / "delivery"),
            "smtp": {
                "host": "127.0.0.1",
                "port": port,
                "from": "meterwatch@grid.example",
                "to": ["ops@grid.example"],
                "username_env": "MW_TEST_SMTP_USER",
                "password_env": "MW_TEST_SMTP_PASSWORD",
                "starttls": True,
                "timeout_s": 5,
                **smtp,
            },
        }
    )
    return Dispatcher(cfg.state_dir, build_sinks(cfg), initial_s=60.0)


def _alert() -> dict[str, Any]:
    return {
        "id": "a1",
        "fingerprint": "fp1",
        "type": "phase_break",
        "category": "equipment",
        "severity": "critical",
        "meter_id": "I0001",
        "transformer_id": "TA01",
        "status": "open",
        "starts_at": "2026-01-05T04:00:00Z",
        "summary": "phase L2 lost",
        "evidence": {"u_v": 3.0},
        "updated_at": "2026-01-05T04:00:00Z",
    }


def _last_error(d: Dispatcher) -> str:
    (row,) = d.outbox._query("SELECT last_error FROM outbox")
    return str(row[0])


def test_mail_arrives_over_starttls_with_the_configured_login(
    tmp_path: Path,
    smtp_server: tuple[int, Received],
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, received = smtp_server
    monkeypatch.setenv("MW_TEST_SMTP_USER", USER)
    monkeypatch.setenv("MW_TEST_SMTP_PASSWORD", PASSWORD)
    d = _dispatcher(tmp_path, port, ca_file=str(certificate[0]))
    d.enqueue("opened", _alert())
    assert d.run_once() == 1
    stats = d.stats()["smtp"]
    assert [stats[k] for k in ("delivered", "failed", "retried", "pending")] == [1, 0, 0, 0]
    assert received.logins == [(USER, True, True)]  # one login, made inside TLS, accepted
    (mail,) = received.mails
    assert mail["tls"] and mail["cipher"] is not None
    assert (mail["login"], mail["from"], mail["to"]) == (
        USER,
        "meterwatch@grid.example",
        ["ops@grid.example"],
    )
    msg = message_from_bytes(mail["data"])
    assert msg["Subject"] == "[MeterWatch OPENED] critical phase_break I0001"
    assert "phase L2 lost" in msg.get_payload()


def test_wrong_password_fails_loud_naming_the_setting(
    tmp_path: Path,
    smtp_server: tuple[int, Received],
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, received = smtp_server
    monkeypatch.setenv("MW_TEST_SMTP_USER", USER)
    monkeypatch.setenv("MW_TEST_SMTP_PASSWORD", "wrong")
    d = _dispatcher(tmp_path, port, ca_file=str(certificate[0]))
    d.enqueue("opened", _alert())
    with caplog.at_level(logging.ERROR, logger="alerts.delivery.dispatcher"):
        assert d.run_once() == 0
    stats = d.stats()["smtp"]
    # a wrong password is not retried for a day: it is given up at once and counted
    assert (stats["failed"], stats["retried"], stats["pending"]) == (1, 0, 0)
    # smtplib tries each offered mechanism (PLAIN, LOGIN): every try inside TLS, all refused
    assert received.mails == [] and received.logins
    assert set(received.logins) == {(USER, True, False)}
    error = _last_error(d)
    for needle in (
        f"login as {USER!r} refused (535",
        "alerts.delivery.smtp.password_env (environment variable MW_TEST_SMTP_PASSWORD)",
        "alerts.delivery.smtp.username_env (environment variable MW_TEST_SMTP_USER)",
    ):
        assert needle in error
    assert "wrong" not in error  # the password itself is never printed
    assert any(
        r.levelno == logging.ERROR and "MW_TEST_SMTP_PASSWORD" in r.getMessage()
        for r in caplog.records
    )


def test_untrusted_certificate_names_ca_file(
    tmp_path: Path, smtp_server: tuple[int, Received], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, received = smtp_server
    monkeypatch.setenv("MW_TEST_SMTP_USER", USER)
    monkeypatch.setenv("MW_TEST_SMTP_PASSWORD", PASSWORD)
    d = _dispatcher(tmp_path, port)  # system CAs only: the self-signed cert is not trusted
    d.enqueue("opened", _alert())
    d.run_once()
    assert d.stats()["smtp"]["failed"] == 1
    assert received.logins == [] and received.mails == []  # nothing sent before TLS
    error = _last_error(d)
    assert "TLS certificate not trusted" in error and "alerts.delivery.smtp.ca_file" in error


def test_login_without_starttls_is_refused_and_names_starttls(
    tmp_path: Path, smtp_server: tuple[int, Received], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, received = smtp_server
    monkeypatch.setenv("MW_TEST_SMTP_USER", USER)
    monkeypatch.setenv("MW_TEST_SMTP_PASSWORD", PASSWORD)
    d = _dispatcher(tmp_path, port, starttls=False)
    d.enqueue("opened", _alert())
    d.run_once()
    assert d.stats()["smtp"]["failed"] == 1 and received.logins == []
    error = _last_error(d)
    assert "does not offer AUTH" in error and "alerts.delivery.smtp.starttls: true" in error


def test_unset_password_variable_fails_before_connecting(
    tmp_path: Path, smtp_server: tuple[int, Received], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configured secret variable that is unset is a config error when the sinks are built
    (the one failure mode of secrets), naming the setting and the variable; nothing is sent."""
    port, received = smtp_server
    monkeypatch.setenv("MW_TEST_SMTP_USER", USER)
    monkeypatch.delenv("MW_TEST_SMTP_PASSWORD", raising=False)
    with pytest.raises(ConfigError) as err:
        _dispatcher(tmp_path, port)
    assert err.value.problems == [
        (
            "alerts.delivery.smtp.password_env",
            "environment variable MW_TEST_SMTP_PASSWORD is not set or empty (it holds the secret)",
        )
    ]
    assert received.logins == [] and received.mails == []


def test_non_ascii_password_fails_loud_instead_of_crashing_the_loop(
    tmp_path: Path,
    smtp_server: tuple[int, Received],
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, received = smtp_server
    monkeypatch.setenv("MW_TEST_SMTP_USER", USER)
    monkeypatch.setenv("MW_TEST_SMTP_PASSWORD", "pässwort")
    d = _dispatcher(tmp_path, port, ca_file=str(certificate[0]))
    d.enqueue("opened", _alert())
    d.run_once()  # a UnicodeEncodeError from smtplib would escape run_once and be retried forever
    assert d.stats()["smtp"]["failed"] == 1 and received.mails == []
    error = _last_error(d)
    assert "non-ASCII" in error and "MW_TEST_SMTP_PASSWORD" in error and "pässwort" not in error
