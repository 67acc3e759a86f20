"""Real servers for tests and benches: start a Debian-packaged server on free loopback ports, stop it after.

The one support module for server fixtures: ``tests/`` and ``bench/`` both import it
(``tests.support.servers``).

One context manager per server (``influxdb()`` ...), each with its own temporary directory
(config, data, log) and ports found by binding port 0 on 127.0.0.1. A missing binary fails the
test with the package to install (``make test`` installs them: ``make deb-test-packages``); it is
never a silent skip. Nothing listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class RunningServer:
    """A server started for a test."""

    name: str
    host: str
    port: int
    workdir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def require_binary(candidates: tuple[str, ...], package: str) -> str:
    """Path of the first existing executable, or fail the test naming the Debian package."""
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        f"{candidates[0]} not found: install the Debian package '{package}' "
        f"(`make deb-test-packages` does, as root); this test needs the real server",
        pytrace=False,
    )


def log_tail(path: Path, lines: int = 30) -> str:
    """Last lines of a server log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_http(
    url: str, process: subprocess.Popen[bytes], log_path: Path, *, status: int, timeout_s: float
) -> None:
    """Poll ``url`` until it answers ``status``; fail with the log if the process dies or times out."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"server exited with code {process.returncode} before {url} answered\n"
                f"{log_tail(log_path)}",
                pytrace=False,
            )
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == status:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    pytest.fail(
        f"{url} did not answer {status} within {timeout_s} s (last: {last})\n{log_tail(log_path)}",
        pytrace=False,
    )


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; always reaps the process."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def _workdir(prefix: str, base: Path | None) -> Iterator[Path]:
    if base is not None:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        yield path  # under the caller's (pytest's) tmp dir: kept for inspection
        return
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def influxdb(
    base_dir: Path | None = None, *, start_timeout_s: float = 30.0
) -> Iterator[RunningServer]:
    """InfluxDB 1.x (Debian ``influxdb``, ``/usr/bin/influxd``) with auth off, in a temp dir.

    The HTTP API listens on a free loopback port (``server.url``); the RPC (backup) service on
    another; UDP/Graphite/collectd/OpenTSDB listeners, usage reporting, the ``_internal`` monitor
    database and subscriptions are off. Ready when ``/ping`` answers 204. No database exists yet.
    """
    binary = require_binary(("influxd", "/usr/bin/influxd"), "influxdb")
    with _workdir("influxd-", base_dir) as work:
        http_port, rpc_port = free_port(), free_port()
        while rpc_port == http_port:
            rpc_port = free_port()
        config = work / "influxdb.conf"
        config.write_text(
            f"""\
reporting-disabled = true
bind-address = "{LOOPBACK}:{rpc_port}"

[meta]
  dir = "{work / "meta"}"
  retention-autocreate = true
  logging-enabled = false

[data]
  dir = "{work / "data"}"
  wal-dir = "{work / "wal"}"
  wal-fsync-delay = "0s"
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[http]
  enabled = true
  bind-address = "{LOOPBACK}:{http_port}"
  auth-enabled = false
  log-enabled = false
  unix-socket-enabled = false

[logging]
  level = "warn"
  suppress-logo = true
"""
        )
        log_path = work / "influxd.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [binary, "run", "-config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            server = RunningServer("influxdb", LOOPBACK, http_port, work, log_path, process)
            wait_http(
                f"{server.url}/ping", process, log_path, status=204, timeout_s=start_timeout_s
            )
            yield server
        finally:
            stop_process(process)


def restart_influxdb(server: RunningServer, *, start_timeout_s: float = 30.0) -> RunningServer:
    """Start influxd again on the same config, ports and data after ``stop_process(server.process)``.

    The caller stops the returned server (``stop_process(new.process)``): the ``influxdb()``
    context manager only stops the process it started.
    """
    binary = require_binary(("influxd", "/usr/bin/influxd"), "influxdb")
    with open(server.log_path, "ab") as log:
        process = subprocess.Popen(
            [binary, "run", "-config", str(server.workdir / "influxdb.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    new = RunningServer(
        server.name, server.host, server.port, server.workdir, server.log_path, process
    )
    try:
        wait_http(
            f"{new.url}/ping", process, server.log_path, status=204, timeout_s=start_timeout_s
        )
    except BaseException:
        stop_process(process)
        raise
    return new


@contextmanager
def victoria_metrics(
    base_dir: Path | None = None, *, start_timeout_s: float = 30.0
) -> Iterator[RunningServer]:
    """VictoriaMetrics (Debian ``victoria-metrics``, ``/usr/bin/victoria-metrics``) in a temp dir.

    Accepts InfluxDB line protocol on ``/write`` and ``/api/v2/write``; ``/api/v1/export`` reads
    raw samples back. Retention is 100 years so that test timestamps are never too old. Ready when
    ``/health`` answers 200.
    """
    binary = require_binary(("victoria-metrics", "/usr/bin/victoria-metrics"), "victoria-metrics")
    with _workdir("victoria-metrics-", base_dir) as work:
        port = free_port()
        log_path = work / "victoria-metrics.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"-storageDataPath={work / 'data'}",
                    f"-httpListenAddr={LOOPBACK}:{port}",
                    "-retentionPeriod=100y",
                    "-search.latencyOffset=0s",
                    "-loggerLevel=WARN",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            server = RunningServer("victoria-metrics", LOOPBACK, port, work, log_path, process)
            wait_http(
                f"{server.url}/health", process, log_path, status=200, timeout_s=start_timeout_s
            )
            yield server
        finally:
            stop_process(process)


@contextmanager
def alertmanager(
    base_dir: Path | None = None, *, start_timeout_s: float = 30.0
) -> Iterator[RunningServer]:
    """Prometheus Alertmanager (Debian ``prometheus-alertmanager``) with a null receiver.

    Clustering is off (empty ``--cluster.listen-address``), data in a temp dir, the web API on a
    free loopback port. Ready when ``/-/ready`` answers 200; alerts are posted and read through
    ``/api/v2/alerts``.
    """
    binary = require_binary(
        ("prometheus-alertmanager", "/usr/bin/prometheus-alertmanager"), "prometheus-alertmanager"
    )
    with _workdir("alertmanager-", base_dir) as work:
        port = free_port()
        config = work / "alertmanager.yml"
        config.write_text(
            "route:\n"
            "  receiver: 'null'\n"
            "  group_wait: 0s\n"
            "  group_interval: 1s\n"
            "receivers:\n"
            "  - name: 'null'\n"
        )
        log_path = work / "alertmanager.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.path={work / 'data'}",
                    f"--web.listen-address={LOOPBACK}:{port}",
                    "--cluster.listen-address=",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            server = RunningServer("alertmanager", LOOPBACK, port, work, log_path, process)
            wait_http(
                f"{server.url}/-/ready", process, log_path, status=200, timeout_s=start_timeout_s
            )
            yield server
        finally:
            stop_process(process)


# -- Mosquitto ---------------------------------------------------------------------------------

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in MOSQUITTO_CANDIDATES if Path(p).exists()), None
    )
    if found is None:
        raise RuntimeError(
            "mosquitto is not installed: run `make test` (it installs Debian's mosquitto) "
            "or `apt-get install mosquitto`"
        )
    return found


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


class Mosquitto:
    """A Mosquitto process with persistence; ``restart()`` keeps its port and stored sessions."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = workdir
        self.port = port or free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        # max_queued_messages: Mosquitto silently drops QoS 1 messages queued past it (default
        # 1000 per client); tests that queue while a subscriber is away need it well above.
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 100\n"
            f"log_dest file {self.log}\n" + ("user root\n" if os.geteuid() == 0 else "")
            # As root, Mosquitto drops to user `mosquitto`, which cannot write the temporary
            # directory: no log and, worse, no persistence across restart(). Stay root here.
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(self.port)
        except RuntimeError:
            self.stop()
            raise RuntimeError(
                f"mosquitto did not start; log: {self.log.read_text() if self.log.exists() else ''}"
            ) from None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def mosquitto(workdir: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@contextmanager
def dask_cluster(workers: int = 2) -> Iterator[str]:
    """A real Dask ``distributed.LocalCluster`` (``meterwatch.cluster.local_cluster``): a
    scheduler and ``workers`` worker processes, one thread each, each under a nanny that
    restarts it when it dies, on 127.0.0.1 only, no dashboard. Yields the scheduler address."""
    from meterwatch.cluster import local_cluster

    with local_cluster(workers) as client:
        yield str(client.scheduler.address)
