"""Alerts over HTTP: JSON API, Server-Sent Events stream and the engineers' web page.

Routes (every ``/api/`` route needs ``Authorization: Bearer <token>``; ``?token=`` is accepted
too, because a browser's EventSource cannot set headers):

- ``GET  /``                              the web page (no data in it; it calls the API)
- ``GET  /api/alerts``                    ?status=&type=&meter_id=&transformer_id=&since=&limit=
  (``status=resolved`` is the history: resolved and verified; ``limit=N`` keeps the N most
  recently changed, newest first); the answer carries the server's ``now`` (service time), which
  the page judges SLA deadlines against
- ``GET  /api/alerts/{id}``
- ``POST /api/alerts/{id}/ack``           JSON body ``{"by": ..., "note": ...}``
- ``POST /api/alerts/{id}/resolve``       same body
- ``GET  /api/stream``                    SSE: one event per alert change (event = change name)
- ``GET  /api/meters/{id}/readings``      ?hours=N (default 48) &end=ISO (default: now)

Standard library only (``ThreadingHTTPServer``): one thread per connection, bound to
127.0.0.1 by default. The server is also an AlertManager listener (``server(event, alert)``)
that fans changes out to the SSE clients through bounded queues; a client too slow to keep up
loses events, which are counted (``sse_dropped``), and the page reloads the list on the next one.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import pandas as pd

from meterwatch.alerts.delivery.outbox import json_safe
from meterwatch.alerts.model import Alert, iso, parse_iso
from meterwatch.core.config import secret
from meterwatch.core.errors import AlertNotFound, AlertStateError, ConfigError

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
#: Readings returned to the page, per meter and request (a week of 15-minute data is 672).
MAX_READINGS_HOURS = 24 * 31
PLOT_COLUMNS = (
    "power_kw",
    "energy_import_kwh",
    "voltage_l1_v",
    "voltage_l2_v",
    "voltage_l3_v",
    "current_l1_a",
    "current_l2_a",
    "current_l3_a",
    "power_factor",
)
ReadingsFn = Callable[[str, datetime, datetime], pd.DataFrame]


class AlertStore(Protocol):
    """What the server needs from AlertManager."""

    def get(self, alert_id: str) -> Alert: ...

    def list(
        self,
        *,
        status: str | None = None,
        type: str | None = None,
        meter_id: str | None = None,
        transformer_id: str | None = None,
        since: datetime | None = None,
    ) -> list[Alert]: ...

    def acknowledge(self, alert_id: str, *, by: str, note: str = "", now: datetime) -> Alert: ...

    def resolve(self, alert_id: str, *, by: str, note: str = "", now: datetime) -> Alert: ...


class HttpError(Exception):
    """An error answer: status and message (sent as ``{"error": message}``)."""

    def __init__(self, status: HTTPStatus, message: str):
        self.status = status
        super().__init__(message)


def alert_json(alert: Alert) -> dict[str, Any]:
    """The feed record plus the derived lifecycle stage."""
    out: dict[str, Any] = json_safe(alert.to_json())
    out["lifecycle"] = alert.lifecycle
    return out


def readings_json(
    frame: pd.DataFrame, meter_id: str, start: datetime, end: datetime
) -> dict[str, Any]:
    """Columns of a readings frame as JSON lists (NaN → null), times as ISO 8601 ``Z``."""
    frame = frame.sort_values("ts") if "ts" in frame.columns else frame
    ts = pd.to_datetime(frame["ts"], utc=True) if "ts" in frame.columns else pd.Series([])
    out: dict[str, Any] = {
        "meter_id": meter_id,
        "start": iso(start),
        "end": iso(end),
        "count": len(frame),
        "ts": ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ").tolist(),
        "columns": {},
    }
    for col in PLOT_COLUMNS:
        if col in frame.columns:
            values = frame[col].to_numpy(dtype=float, na_value=np.nan)
            column = values.astype(object)
            column[np.isnan(values)] = None  # JSON null, not NaN
            out["columns"][col] = column.tolist()
    return out


class AlertHttpServer:
    """The API and page server; start/stop it, and register it as an AlertManager listener."""

    def __init__(
        self,
        manager: AlertStore,
        readings: ReadingsFn,
        *,
        token: str,
        host: str = "127.0.0.1",
        port: int = 8470,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        queue_size: int = 1000,
        keepalive_s: float = 15.0,
    ):
        if not token:
            raise ValueError("the alerts HTTP API needs a non-empty token")
        self.manager = manager
        self.readings = readings
        self.token = token
        self.now = now
        self.queue_size = queue_size
        self.keepalive_s = keepalive_s
        self.sse_dropped = 0
        self.requests_unauthorized = 0
        self._clients: set[queue.Queue[tuple[int, str, dict[str, Any]]]] = set()
        self._clients_lock = threading.Lock()
        self._event_seq = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._page = (STATIC_DIR / "index.html").read_bytes()
        handler = type("Handler", (_Handler,), {"app": self})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                "alerts.http", [("alerts.http.port", f"cannot listen on {host}:{port}: {exc}")]
            ) from None
        self.httpd.daemon_threads = True

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def sse_clients(self) -> int:
        with self._clients_lock:
            return len(self._clients)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="alerts-http"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("alerts web page and API on %s", self.url)

    def stop(self) -> None:
        self._stopping.set()  # SSE handlers end their loops
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()

    # -- AlertManager listener ----------------------------------------------------------

    def __call__(self, event: str, alert: Alert) -> None:
        data = alert_json(alert)
        with self._clients_lock:
            self._event_seq += 1
            seq = self._event_seq
            for q in self._clients:
                try:
                    q.put_nowait((seq, event, data))
                except queue.Full:
                    self.sse_dropped += 1

    def _subscribe(self) -> queue.Queue[tuple[int, str, dict[str, Any]]]:
        q: queue.Queue[tuple[int, str, dict[str, Any]]] = queue.Queue(self.queue_size)
        with self._clients_lock:
            self._clients.add(q)
        return q

    def _unsubscribe(self, q: queue.Queue[tuple[int, str, dict[str, Any]]]) -> None:
        with self._clients_lock:
            self._clients.discard(q)

    # -- request handling (called from the handler threads) -------------------------------

    def authorized(self, header: str | None, query: dict[str, list[str]]) -> bool:
        given = ""
        if header and header.startswith("Bearer "):
            given = header[len("Bearer ") :].strip()
        elif "token" in query:
            given = query["token"][0]
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def list_alerts(self, query: dict[str, list[str]]) -> dict[str, Any]:
        allowed = {"status", "type", "meter_id", "transformer_id", "since", "limit", "token"}
        unknown = sorted(set(query) - allowed)
        if unknown:
            raise HttpError(
                HTTPStatus.BAD_REQUEST,
                f"unknown filter(s) {', '.join(unknown)}; use {', '.join(sorted(allowed - {'token'}))}",
            )
        filters: dict[str, Any] = {
            k: query[k][0] for k in ("status", "type", "meter_id", "transformer_id") if k in query
        }
        if "status" in filters and filters["status"] not in (
            "open",
            "acknowledged",
            "resolved",
            "verified",
            "active",
        ):
            raise HttpError(
                HTTPStatus.BAD_REQUEST,
                f"status {filters['status']!r} is not open, acknowledged, resolved, verified or active",
            )
        if "since" in query:
            try:
                filters["since"] = parse_iso(query["since"][0])
            except ValueError:
                raise HttpError(
                    HTTPStatus.BAD_REQUEST,
                    f"since {query['since'][0]!r} is not an ISO 8601 time (e.g. 2024-05-01T00:00:00Z)",
                ) from None
        limit: int | None = None
        if "limit" in query:
            try:
                limit = int(query["limit"][0])
            except ValueError:
                limit = 0
            if limit <= 0:
                raise HttpError(
                    HTTPStatus.BAD_REQUEST, f"limit {query['limit'][0]!r} is not a positive integer"
                )
        alerts = self.manager.list(**filters)
        if limit is not None:
            alerts = sorted(alerts, key=_changed, reverse=True)[:limit]
        return {
            "count": len(alerts),
            "now": iso(self.now()),
            "alerts": [alert_json(a) for a in alerts],
        }

    def get_alert(self, alert_id: str) -> dict[str, Any]:
        return alert_json(self.manager.get(alert_id))

    def change(self, alert_id: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        by = body.get("by")
        note = body.get("note") or ""
        if not isinstance(by, str) or not by.strip():
            raise HttpError(HTTPStatus.BAD_REQUEST, 'body needs "by": the engineer\'s name')
        if not isinstance(note, str):
            raise HttpError(HTTPStatus.BAD_REQUEST, '"note" must be a string')
        fn = self.manager.acknowledge if action == "ack" else self.manager.resolve
        return alert_json(fn(alert_id, by=by.strip(), note=note, now=self.now()))

    def meter_readings(self, meter_id: str, query: dict[str, list[str]]) -> dict[str, Any]:
        try:
            hours = float(query.get("hours", ["48"])[0])
        except ValueError:
            raise HttpError(HTTPStatus.BAD_REQUEST, "hours must be a number") from None
        if not 0 < hours <= MAX_READINGS_HOURS:
            raise HttpError(
                HTTPStatus.BAD_REQUEST, f"hours must be in (0, {MAX_READINGS_HOURS}], got {hours}"
            )
        end = self.now()
        if "end" in query:
            try:
                parsed = parse_iso(query["end"][0])
            except ValueError:
                raise HttpError(HTTPStatus.BAD_REQUEST, "end is not an ISO 8601 time") from None
            end = parsed or end
        start = end - timedelta(hours=hours)
        frame = self.readings(meter_id, start, end)
        return readings_json(frame, meter_id, start, end)


def _changed(alert: Alert) -> datetime:
    """When an alert last changed (for the newest-first history)."""
    return alert.updated_at or alert.starts_at


class _Handler(BaseHTTPRequestHandler):
    app: AlertHttpServer
    protocol_version = "HTTP/1.1"
    server_version = "MeterWatch"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    # -- helpers --------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="meterwatch"')
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        body = json.dumps(data, ensure_ascii=False, allow_nan=False).encode()
        self._send(status, body, "application/json; charset=utf-8")

    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        query = parse_qs(parts.query)
        try:
            if method == "GET" and path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, self.app._page, "text/html; charset=utf-8")
                return
            if not path.startswith("/api/"):
                raise HttpError(HTTPStatus.NOT_FOUND, f"no page {path}")
            if not self.app.authorized(self.headers.get("Authorization"), query):
                self.app.requests_unauthorized += 1
                raise HttpError(
                    HTTPStatus.UNAUTHORIZED, "missing or wrong token (Authorization: Bearer …)"
                )
            seg = [unquote(s) for s in path.split("/")[2:]]
            if method == "GET" and seg == ["alerts"]:
                self._json(HTTPStatus.OK, self.app.list_alerts(query))
            elif method == "GET" and len(seg) == 2 and seg[0] == "alerts":
                self._json(HTTPStatus.OK, self.app.get_alert(seg[1]))
            elif (
                method == "POST"
                and len(seg) == 3
                and seg[0] == "alerts"
                and seg[2]
                in (
                    "ack",
                    "resolve",
                )
            ):
                self._json(HTTPStatus.OK, self.app.change(seg[1], seg[2], self._body()))
            elif method == "GET" and seg == ["stream"]:
                self._stream()
            elif method == "GET" and len(seg) == 3 and seg[0] == "meters" and seg[2] == "readings":
                self._json(HTTPStatus.OK, self.app.meter_readings(seg[1], query))
            else:
                raise HttpError(HTTPStatus.NOT_FOUND, f"no route {method} {path}")
        except HttpError as exc:
            self._json(exc.status, {"error": str(exc)})
        except AlertNotFound as exc:
            self._json(HTTPStatus.NOT_FOUND, {"error": str(exc)})
        except AlertStateError as exc:
            self._json(HTTPStatus.CONFLICT, {"error": str(exc), "status": exc.status})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away
        except Exception as exc:  # answer 500 and log: the server must keep serving
            log.exception("alerts HTTP %s %s", method, path)
            try:
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {exc!r}"})
            except OSError:
                pass

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 65536:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body larger than 64 KiB")
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError as exc:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return body

    def _stream(self) -> None:
        app = self.app
        q = app._subscribe()
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self.wfile.write(b"retry: 2000\n: connected\n\n")
            self.wfile.flush()
            idle = 0.0
            while not app._stopping.is_set():
                try:
                    seq, event, data = q.get(timeout=0.5)
                except queue.Empty:
                    idle += 0.5
                    if idle >= app.keepalive_s:
                        self.wfile.write(b": keepalive\n\n")
                        self.wfile.flush()
                        idle = 0.0
                    continue
                idle = 0.0
                payload = json.dumps({"event": event, "alert": data}, ensure_ascii=False)
                self.wfile.write(f"id: {seq}\nevent: {event}\ndata: {payload}\n\n".encode())
                self.wfile.flush()
        finally:
            app._unsubscribe(q)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._route("POST")


def build_http_server(
    cfg: Any,
    manager: AlertStore,
    readings: ReadingsFn,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> AlertHttpServer:
    """The server for ``alerts.http`` config; the token comes from the ``token_env`` variable."""
    # The API refuses to run without a token: an unset variable is a config error.
    token = secret(cfg.token_env, "alerts.http.token_env") or ""
    if not token:
        raise ConfigError("alerts.http", [("alerts.http.token_env", "must name a variable")])
    return AlertHttpServer(manager, readings, token=token, host=cfg.host, port=cfg.port, now=now)
