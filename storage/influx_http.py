"""InfluxDB writes: the connection, the write policy and dead-lettering, without pandas.

:class:`InfluxWriter` posts line protocol that is already encoded (the spool keeps batches
encoded for InfluxDB; the lean MQTT ingest process encodes without pandas), so this module
imports neither pandas nor the frame encoders; :class:`storage.influx.InfluxStore` adds the
reading encoders and the reads on top of it. See :mod:`storage.influx` for the write policy.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import urllib3

from meterwatch.core.config import secret
from meterwatch.core.errors import ConfigError, InfluxError
from meterwatch.storage.config import InfluxConfig

log = logging.getLogger("meterwatch.storage.influx")

Flavor = Literal["v1", "v2"]

_RETRYABLE = frozenset({408, 429}) | frozenset(range(500, 600))
_PARSE_PREFIX = "unable to parse '"
_DROPPED = re.compile(r"\bdropped=(\d+)")


def connection_settings(cfg: InfluxConfig, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """:class:`InfluxWriter`'s keyword arguments from ``storage.influx``, secrets from the
    environment (``token_env``, ``username_env``, ``password_env``)."""
    token = (
        secret(cfg.token_env, "storage.influx.token_env", env=env) if cfg.flavor == "v2" else None
    )
    return {
        "flavor": cfg.flavor,
        "url": cfg.url,
        "database": cfg.database,
        "retention_policy": cfg.retention_policy,
        "org": cfg.org,
        "bucket": cfg.bucket,
        "token": token,
        "username": secret(cfg.username_env, "storage.influx.username_env", env=env),
        "password": secret(cfg.password_env, "storage.influx.password_env", env=env),
        "batch_size": cfg.batch_size,
        "timeout_s": cfg.timeout_s,
        "max_retries": cfg.max_retries,
        "retry_budget_s": cfg.retry_budget_s,
        "dead_letter_path": cfg.dead_letter,
    }


class InfluxWriter:
    """Posts encoded line protocol to one InfluxDB database or bucket, with the write policy."""

    def __init__(
        self,
        *,
        flavor: Flavor,
        url: str,
        database: str | None = None,
        retention_policy: str | None = None,
        org: str | None = None,
        bucket: str | None = None,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        batch_size: int = 5000,
        timeout_s: float = 10.0,
        max_retries: int = 5,
        retry_budget_s: float = 60.0,
        dead_letter_path: str | Path | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
    ):
        problems: list[tuple[str, str]] = []
        if flavor not in ("v1", "v2"):
            problems.append(("storage.influx.flavor", f"{flavor!r}: expected 'v1' or 'v2'"))
        if flavor == "v1" and not database:
            problems.append(("storage.influx.database", "required when flavor is v1"))
        if flavor == "v2":
            for name, value in (("org", org), ("bucket", bucket)):
                if not value:
                    problems.append((f"storage.influx.{name}", "required when flavor is v2"))
            if not token:
                problems.append(
                    ("storage.influx.token", "required when flavor is v2 (env MW_INFLUX_TOKEN)")
                )
        if batch_size < 1:
            problems.append(("storage.influx.batch_size", f"{batch_size}: expected >= 1"))
        if problems:
            raise ConfigError("storage.influx", problems)

        self.flavor: Flavor = flavor
        self.url = url.rstrip("/")
        self.database = database
        self.retention_policy = retention_policy
        self.org = org
        self.bucket = bucket
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_budget_s = retry_budget_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.dead_letter_path = Path(dead_letter_path) if dead_letter_path is not None else None

        self.lines_written = 0
        self.lines_dead_lettered = 0
        self.rows_skipped = 0
        self.rows_invalid = 0
        self.retries = 0
        self.errors: Counter[str] = Counter()

        headers = {"User-Agent": "meterwatch"}
        if flavor == "v2":
            headers["Authorization"] = f"Token {token}"
        elif username:
            basic = urllib3.make_headers(basic_auth=f"{username}:{password or ''}")
            headers["Authorization"] = basic["authorization"]
        self._headers = headers
        self._http = urllib3.PoolManager(
            num_pools=1,
            maxsize=1,
            retries=False,
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
        )
        self._write_api: Any = None
        if flavor == "v2":
            from influxdb_client import InfluxDBClient
            from influxdb_client.client.write_api import SYNCHRONOUS

            self._client = InfluxDBClient(
                url=self.url,
                token=token or "",
                org=org or "",
                timeout=int(timeout_s * 1000),
                retries=False,
            )
            self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._random = random.Random()
        self._lock = threading.Lock()
        self._outage_since: float | None = None

    def write_body(self, body: bytes, lines: int) -> int:
        """Post an encoded body (``encode_body``) in batches of ``batch_size`` lines; lines stored."""
        if not lines:
            return 0
        with self._lock:
            if lines <= self.batch_size:
                return self._write_batch(None, body)
            parts = body.decode("utf-8").split("\n")[:-1]
            return sum(
                self._write_batch(parts[i : i + self.batch_size])
                for i in range(0, len(parts), self.batch_size)
            )

    def _write_batch(self, lines: list[str] | None, body: bytes | None = None) -> int:
        """POST one batch, given as lines or as an encoded body (split only on a refusal)."""
        if body is None:
            assert lines is not None
            body = ("\n".join(lines) + "\n").encode("utf-8")
        status, _, data = self._request(
            "write",
            "POST",
            *self._write_target(),
            body=body,
            content_type="text/plain; charset=utf-8",
        )
        text = data.decode("utf-8", errors="replace")
        if lines is None:
            if status in (200, 204):
                n = body.count(b"\n")
                self.lines_written += n
                return n
            lines = body.decode("utf-8").split("\n")[:-1]
        if status in (200, 204):
            self.lines_written += len(lines)
            return len(lines)
        if status == 413:
            self.errors["too_large"] += 1
            if len(lines) == 1:
                self._dead_letter(lines, {}, status, _error_text(text), identified=True)
                return 0
            half = len(lines) // 2
            log.info("InfluxDB: batch of %d lines too large, splitting", len(lines))
            return self._write_batch(lines[:half]) + self._write_batch(lines[half:])
        if status in (400, 422):
            return self._handle_rejected(lines, status, _error_text(text))
        self.errors[f"http_{status}"] += 1
        raise InfluxError(
            f"InfluxDB write to {self._target_name()}: unexpected HTTP {status}: {text[:500]}",
            status=status,
            reason=f"http_{status}",
        )

    def _handle_rejected(self, lines: list[str], status: int, error: str) -> int:
        """400/422: dead-letter what the server refused; return how many lines it stored."""
        named = rejected_lines(error, lines)
        partial = "partial write" in error
        if partial:
            self.errors["partial_write"] += 1
            match = _DROPPED.search(error)
            dropped = int(match.group(1)) if match else 0
            bad = [line for line in lines if line in named]
            self._dead_letter(bad, named, status, error, identified=True)
            if dropped:
                unnamed = [line for line in lines if line not in named]
                self._dead_letter(unnamed, {}, status, error, identified=False)
            refused = min(len(lines), len(bad) + dropped)
        else:
            self.errors["rejected"] += 1
            self._dead_letter(lines, named, status, error, identified=True)
            refused = len(lines)
        self.lines_dead_lettered += refused
        stored = len(lines) - refused
        self.lines_written += stored
        log.warning(
            "InfluxDB refused %d of %d lines (%s)%s",
            refused,
            len(lines),
            error[:200],
            f"; see {self.dead_letter_path}" if self.dead_letter_path else "",
        )
        return stored

    def _dead_letter(
        self,
        lines: list[str],
        reasons: Mapping[str, str],
        status: int,
        error: str,
        *,
        identified: bool,
    ) -> None:
        """Append one JSON record per line to the dead-letter file, fsynced before returning."""
        if not lines:
            return
        if self.dead_letter_path is None:
            log.error(
                "InfluxDB refused %d line(s) and no dead_letter_path is set; first: %s",
                len(lines),
                lines[0],
            )
            return
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        records = [
            json.dumps(
                {
                    "time": now,
                    "target": self._target_name(),
                    "status": status,
                    "reason": reasons.get(line, error),
                    "error": error,
                    "identified": identified,
                    "line": line,
                },
                ensure_ascii=False,
            )
            for line in lines
        ]
        self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.dead_letter_path, "a", encoding="utf-8") as fh:
            fh.write("\n".join(records) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _write_target(self) -> tuple[str, dict[str, str]]:
        if self.flavor == "v1":
            params = {"db": self.database or ""}
            if self.retention_policy:
                params["rp"] = self.retention_policy
            params["precision"] = "s"
            return "/write", params
        return "/api/v2/write", {
            "org": self.org or "",
            "bucket": self.bucket or "",
            "precision": "s",
        }

    def _target_name(self) -> str:
        if self.flavor == "v1":
            rp = f".{self.retention_policy}" if self.retention_policy else ""
            return f"{self.url} database {self.database}{rp}"
        return f"{self.url} org {self.org} bucket {self.bucket}"

    def _request(
        self,
        op: str,
        method: str,
        path: str,
        params: Mapping[str, str],
        *,
        body: bytes,
        content_type: str,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One request with the retry policy; returns (status, headers, body) of a final answer.

        Retries 408/429/5xx, connection failures and timeouts; raises :class:`InfluxError` when the
        budget is spent or the answer says the configuration is wrong.
        """
        url = f"{self.url}{path}?{urlencode(params)}"
        headers = {**self._headers, "Content-Type": content_type}
        started = time.monotonic()
        attempt = 0
        while True:
            failure: str | None = None
            status: int | None = None
            resp_headers: Mapping[str, str] = {}
            data = b""
            try:
                if self._write_api is not None and path == "/api/v2/write":
                    status, resp_headers, data = self._client_write(params, body)
                else:
                    resp = self._http.request(method, url, body=body, headers=headers)
                    status, resp_headers, data = resp.status, resp.headers, resp.data
            except urllib3.exceptions.NewConnectionError as exc:
                # (a subclass of ConnectTimeoutError in urllib3, hence first)
                failure, detail = "connection", str(exc)
            except urllib3.exceptions.TimeoutError as exc:
                failure, detail = "timeout", str(exc)
            except urllib3.exceptions.HTTPError as exc:
                failure, detail = "connection", str(exc)
            if status is not None:
                text = data.decode("utf-8", errors="replace")
                if status >= 400:
                    self._raise_for_config(op, status, _error_text(text))
                if status not in _RETRYABLE:
                    if self._outage_since is not None:
                        log.info(
                            "InfluxDB %s recovered after %.1f s",
                            self._target_name(),
                            time.monotonic() - self._outage_since,
                        )
                        self._outage_since = None
                    return status, resp_headers, data
                failure, detail = f"http_{status}", f"HTTP {status}: {_error_text(text)[:300]}"
            assert failure is not None
            self.errors[failure] += 1
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                log.warning("InfluxDB %s unavailable (%s); retrying", self._target_name(), detail)
            retry_after = parse_retry_after(resp_headers.get("Retry-After"))
            if retry_after is not None:
                delay = retry_after
            else:
                ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2**attempt)
                delay = self._random.uniform(0.0, ceiling)
            elapsed = time.monotonic() - started
            if attempt >= self.max_retries or elapsed + delay > self.retry_budget_s:
                raise InfluxError(
                    f"InfluxDB {op} to {self._target_name()} failed after {attempt + 1} "
                    f"attempt(s) in {elapsed:.1f} s (max_retries={self.max_retries}, "
                    f"retry_budget_s={self.retry_budget_s}); last: {detail}",
                    status=status,
                    reason=failure,
                )
            time.sleep(delay)
            attempt += 1
            self.retries += 1

    def _client_write(
        self, params: Mapping[str, str], body: bytes
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One v2 write through influxdb-client's WriteApi, as (status, headers, body)."""
        from influxdb_client.rest import ApiException

        try:
            self._write_api.write(
                bucket=params["bucket"], org=params["org"], record=body, write_precision="s"
            )
        except ApiException as exc:
            data = exc.body if isinstance(exc.body, bytes) else str(exc.body or "").encode()
            return int(exc.status or 0), exc.headers or {}, data
        return 204, {}, b""

    def _raise_for_config(self, op: str, status: int, error: str) -> None:
        """Raise :class:`InfluxError` naming the setting when the answer is a configuration error."""
        lowered = error.lower()
        setting: str | None = None
        reason = what = ""
        if status in (401, 403):
            reason = "auth"
            setting = (
                "storage.influx.token (env MW_INFLUX_TOKEN)"
                if self.flavor == "v2"
                else "storage.influx.username/password"
            )
            what = "rejected the credentials" if status == 401 else "denied access"
        elif "retention policy not found" in lowered:
            reason, setting = "not_found", "storage.influx.retention_policy"
            what = "has no such retention policy"
        elif status == 404 or "database not found" in lowered:
            reason = "not_found"
            if self.flavor == "v1":
                setting = "storage.influx.database"
                what = "has no such database"
            else:
                setting = (
                    "storage.influx.org" if "organization" in lowered else "storage.influx.bucket"
                )
                what = "has no such organization or bucket"
        if setting is None:
            return
        self.errors[reason] += 1
        raise InfluxError(
            f"InfluxDB {op}: {self._target_name()} {what} (HTTP {status}: {error[:300]}); "
            f"check {setting}",
            status=status,
            reason=reason,
            setting=setting,
        )

    def close(self) -> None:
        """Close pooled connections."""
        self._http.clear()
        if self._write_api is not None:
            self._write_api.close()
            self._client.close()


def rejected_lines(error: str, lines: Sequence[str]) -> dict[str, str]:
    """Lines of a batch named in an InfluxDB ``unable to parse '<line>': <reason>`` error.

    Returns line -> reason. Works on InfluxDB 1.x (errors joined by newlines, `` dropped=N``
    suffix) and 2.x messages; a line containing ``': `` is still matched exactly because
    candidates are checked against the batch.
    """
    known = set(lines)
    out: dict[str, str] = {}
    pos = error.find(_PARSE_PREFIX)
    while pos != -1:
        rest = error[pos + len(_PARSE_PREFIX) :]
        nxt = rest.find(_PARSE_PREFIX)
        for m in re.finditer(r"': ", rest):
            candidate = rest[: m.start()]
            if candidate in known:
                tail = rest[m.end() : nxt if nxt != -1 else len(rest)]
                reason = _DROPPED.sub("", tail.split("\n", 1)[0]).strip()
                out[candidate] = reason
                break
        pos = error.find(_PARSE_PREFIX, pos + len(_PARSE_PREFIX))
    return out


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_text(body: str) -> str:
    """The error message of an InfluxDB JSON error body (1.x ``error``, 2.x ``message``)."""
    try:
        doc: Any = json.loads(body)
    except ValueError:
        return body.strip()
    if isinstance(doc, dict):
        for key in ("error", "message"):
            if isinstance(doc.get(key), str):
                return str(doc[key])
    return body.strip()
