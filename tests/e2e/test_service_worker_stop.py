"""`meterwatch run` with its analytics in a worker process: SIGTERM stops both cleanly.

The service runs as a real subprocess (the console script) on the demo config (free ports). Its
analytics run in a child process; Ctrl-C reaches both (a terminal signals the whole process
group), SIGTERM only the service. Either way the service finishes its last runs in the worker,
shuts it down, prints its summary and exits 0, and leaves no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.support.servers import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]
METERWATCH = Path(sys.executable).with_name("meterwatch")


def workers_of(service: psutil.Process) -> list[psutil.Process]:
    """The service's spawned worker processes (not the multiprocessing resource tracker)."""
    out = []
    for child in service.children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.NoSuchProcess:
            continue
    return out


@pytest.mark.parametrize(
    "sig, group",
    [(signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["sigterm-to-the-service", "ctrl-c-to-the-group"],
)
def test_a_signal_stops_the_service_and_its_analytics_worker(
    tmp_path: Path, sig: signal.Signals, group: bool
) -> None:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    cfg["simulator"]["modbus"]["port"] = port = free_port()
    cfg["collector"]["modbus"]["gateways"][0]["port"] = port
    cfg["collector"]["mqtt"]["port"] = free_port()
    cfg["metrics"]["enabled"] = False
    cfg["analytics"]["workers"] = 1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    env = {k: v for k, v in os.environ.items() if k != "MW_AUDIT_KEY"}
    proc = subprocess.Popen(
        [str(METERWATCH), "run", "--config", "config.yaml"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as in a terminal
    )
    try:
        service = psutil.Process(proc.pid)
        feed = tmp_path / "var" / "alerts.jsonl"
        deadline = time.monotonic() + 120
        # Running: a worker, and an alert from its analytics (the phase break at 4 h, ~6 s).
        while time.monotonic() < deadline and proc.poll() is None:
            if workers_of(service) and feed.exists() and "phase_break" in feed.read_text():
                break
            time.sleep(0.2)
        workers = workers_of(service)
        assert workers, "no analytics worker process"
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=90)
    finally:
        stop_process(proc)
    text, errors = out.decode(), err.decode()
    assert proc.returncode == 0, errors
    assert "Run summary" in text
    assert "Traceback" not in errors and "Traceback" not in text
    gone = psutil.wait_procs(workers, timeout=10)[1] == []
    assert gone, "the analytics worker outlived the service"
    # The last runs of the stop ran in the worker before it was shut down.
    assert "analytics worker" not in errors, errors
    types = {json.loads(line)["type"] for line in feed.read_text().splitlines()}
    assert "phase_break" in types
