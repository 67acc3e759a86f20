"""The service's control socket: backups and record access while `meterwatch run` holds the store.

DuckDB lets one process open a store file for writing, and a second process cannot even open it
read-only while the first runs. So the service listens on a Unix socket next to its embedded
store (``<storage.path>.sock``, mode 0660: the service user and its group), and the commands
that need the store while it runs talk to it there:

* ``meterwatch backup`` asks for a **snapshot**: the service copies every table to Parquet
  files in one DuckDB read transaction on a second connection of its own (MVCC: a consistent
  instant, and the collectors keep writing meanwhile), in a directory next to the store; the
  command moves the files into the backup and removes the directory.
* ``meterwatch export billing`` and ``meterwatch vee edit`` read readings and validated
  intervals and write a new data version through :class:`RemoteStore`, which the service runs
  on its own store (so the data version is one more than the highest stored, as ever).

Protocol: one request per connection. A message is a JSON header line; when the header has
``"payload": n``, n bytes of an Arrow IPC stream (a frame) follow. Answers carry ``"ok"``; an
``"error"`` becomes a :class:`~meterwatch.core.errors.StorageError` in the client. The socket is
local only and a file: who may use it is decided by its directory's and its own permissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from meterwatch.core.errors import StorageError
from meterwatch.storage.backup import dump_embedded
from meterwatch.storage.config import StorageConfig
from meterwatch.storage.embedded import EmbeddedStore
from meterwatch.storage.factory import build_store
from meterwatch.storage.spool import decode_frame, encode_frame

log = logging.getLogger(__name__)

#: Longest path a Unix socket can bind on Linux (``sun_path`` is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107
SNAPSHOT_PREFIX = ".snapshot-"
_LINE_LIMIT = 16 << 20  # a header naming many meters


def socket_path(storage: StorageConfig) -> Path:
    """Where the service serves the embedded store ``storage.path``: ``<path>.sock``."""
    return Path(f"{storage.path}.sock")


#: The store methods ``export billing`` and ``vee edit`` call through :class:`RemoteStore`.
REMOTE_METHODS = frozenset({"read_readings", "read_validated_readings", "write_validated_readings"})


def _encode_arg(value: Any) -> Any:
    """An argument as JSON: times as ``{"ts": iso}``, sequences as lists."""
    if isinstance(value, datetime | pd.Timestamp):
        return {"ts": pd.Timestamp(value).isoformat()}
    if isinstance(value, list | tuple | pd.Index | pd.Series):
        return [str(v) for v in value]
    return value


def _decode_arg(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"ts"}:
        return pd.Timestamp(value["ts"])
    return value


def _header(data: dict[str, Any], frame: pd.DataFrame | None) -> tuple[bytes, bytes]:
    payload = encode_frame(frame) if frame is not None else b""
    head = dict(data, payload=len(payload)) if frame is not None else data
    return (json.dumps(head) + "\n").encode(), payload


# ---------------------------------------------------------------------------------- server


class ControlServer:
    """Serves snapshot and record requests for the service's embedded store on a Unix socket."""

    def __init__(self, path: Path, store: EmbeddedStore):
        self.path = path
        self.store = store
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Listen (a stale socket or snapshot directory left by a killed service is removed:
        the store's DuckDB lock, already held, proves no other service uses this store)."""
        for stale in self.store.path.parent.glob(f"{SNAPSHOT_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            log.warning(
                "control socket path %s is longer than %d bytes: backup and export while the "
                "service runs are off (use a shorter storage.path)",
                self.path,
                MAX_SOCKET_PATH,
            )
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=_LINE_LIMIT
            )
            os.chmod(self.path, 0o660)
        except OSError as exc:
            log.warning(
                "control socket %s: %s; backup and export while the service runs are off",
                self.path,
                exc,
            )
            return
        log.info("control socket %s: backup and export work while the service runs", self.path)

    async def stop(self) -> None:
        """Stop listening, let requests in progress finish, remove the socket."""
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        if self._handlers:
            await asyncio.gather(*list(self._handlers), return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            try:
                head = json.loads(await reader.readline())
                n = int(head.get("payload", 0))
                frame = decode_frame(await reader.readexactly(n)) if n else None
                answer, out = await asyncio.to_thread(self._dispatch, head, frame)
            except Exception as exc:  # answered, never raised into the loop
                log.warning("control socket: request failed: %s", exc)
                answer, out = {"ok": False, "error": str(exc)}, None
            line, payload = _header(answer, out)
            writer.write(line + payload)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._handlers.discard(task)

    def _dispatch(
        self, head: dict[str, Any], frame: pd.DataFrame | None
    ) -> tuple[dict[str, Any], pd.DataFrame | None]:
        op, store = head.get("op"), self.store
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}, None
        if op == "snapshot":
            where = self.store.path.parent / f"{SNAPSHOT_PREFIX}{uuid.uuid4().hex[:12]}"
            try:
                with store.reader() as con:
                    rows = dump_embedded(con, where)
            except BaseException:
                shutil.rmtree(where, ignore_errors=True)
                raise
            return {"ok": True, "dir": str(where.resolve()), "tables": rows}, None
        if op == "call":
            method = str(head.get("method"))
            if method not in REMOTE_METHODS:
                raise StorageError(f"the control socket does not serve {method!r}")
            kwargs = {k: _decode_arg(v) for k, v in head.get("kwargs", {}).items()}
            if frame is not None:
                kwargs["df"] = frame
            result = getattr(store, method)(**kwargs)
            if isinstance(result, pd.DataFrame):
                return {"ok": True}, result
            return {"ok": True, "result": result}, None
        raise StorageError(f"unknown control request {op!r}")


# ---------------------------------------------------------------------------------- client


def _connect(path: Path, timeout_s: float | None) -> socket.socket | None:
    """A connection to the service at ``path``; None when no service listens there."""
    if not path.exists() or len(os.fsencode(path)) > MAX_SOCKET_PATH:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        return None  # a socket file left by a service that was killed
    except PermissionError as exc:
        sock.close()
        raise StorageError(
            f"the running service's control socket {path}: permission denied (run as the "
            "service's user or a member of its group)"
        ) from exc
    return sock


def request(
    path: Path,
    head: dict[str, Any],
    frame: pd.DataFrame | None = None,
    *,
    timeout_s: float | None = None,
) -> tuple[dict[str, Any], pd.DataFrame | None] | None:
    """One request to the service at ``path``; None when no service listens there."""
    sock = _connect(path, 10.0)
    if sock is None:
        return None
    try:
        sock.settimeout(timeout_s)
        line, payload = _header(head, frame)
        sock.sendall(line + payload)
        with sock.makefile("rb") as fh:
            raw = fh.readline(_LINE_LIMIT)
            if not raw:
                raise StorageError(f"the service at {path} closed the connection without answer")
            answer = json.loads(raw)
            n = int(answer.get("payload", 0))
            out = decode_frame(fh.read(n)) if n else None
    except (OSError, ValueError) as exc:
        raise StorageError(f"the service's control socket {path}: {exc}") from exc
    finally:
        sock.close()
    if not answer.get("ok"):
        raise StorageError(f"the running service ({path}): {answer.get('error')}")
    return answer, out


def service_listening(path: Path) -> bool:
    """Whether a service answers on the control socket ``path``."""
    return request(path, {"op": "ping"}) is not None


class RemoteStore:
    """The store of the running service, for ``export billing`` and ``vee edit``: each method of
    :data:`REMOTE_METHODS` runs there, on its own connection to the store, with the same
    arguments and result (a frame argument, ``df``, and a frame result travel as Arrow IPC)."""

    def __init__(self, path: Path):
        self.path = path

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method not in REMOTE_METHODS:
            raise AttributeError(method)
        signature = inspect.signature(getattr(EmbeddedStore, method))

        def call(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(None, *args, **kwargs).arguments
            bound.pop("self")
            frame = bound.pop("df", None)
            head = {
                "op": "call",
                "method": method,
                "kwargs": {k: _encode_arg(v) for k, v in bound.items()},
            }
            got = request(self.path, head, frame)
            if got is None:
                raise StorageError(f"the service at {self.path} stopped; run the command again")
            answer, out = got
            return out if out is not None else answer.get("result")

        return call

    def close(self) -> None:
        """Nothing to release: one connection per request."""


def snapshot(path: Path) -> tuple[Path, dict[str, int]] | None:
    """Ask the service at ``path`` for a snapshot of its tables: (directory, rows per table), or
    None when no service listens. The caller moves the files away and removes the directory."""
    got = request(path, {"op": "snapshot"})
    if got is None:
        return None
    answer, _ = got
    return Path(answer["dir"]), {str(k): int(v) for k, v in answer["tables"].items()}


def open_store(storage: StorageConfig, registry: pd.DataFrame | None = None) -> Any:
    """The configured store for a command that reads and writes records (export, VEE edits):
    through the running service when it holds the embedded store, else opened directly
    (InfluxDB, or an embedded store no service runs on)."""
    if storage.backend == "embedded":
        path = socket_path(storage)
        if service_listening(path):
            return RemoteStore(path)
    return build_store(storage, registry)
