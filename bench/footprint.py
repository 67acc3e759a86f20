"""Footprint of ``meterwatch run`` with 1,000 simulated meters at a 15-minute interval.

The service runs as its own process (``meterwatch run --config <tmp>/config.yaml``) on the
shipped demo configuration (``config.yaml``: embedded MQTT broker, embedded store, metrics,
alert delivery), changed only in fleet size (1,000 meters: 650 residential, 200 commercial,
130 industrial, 20 transformer supply meters), the MQTT share (80 % of customer meters publish
over MQTT, the 216 others are polled over Modbus TCP: the simulator serves all Modbus meters
behind one gateway, at most 247 unit ids), clock speed and ports (free loopback ports). After a warm-up,
the service process is sampled once a second for a window: CPU time (user + system, all
threads) over wall time, as a share of one core, and resident memory (RSS).

Two clock speeds, because one cannot show both things:

- speed 1 (real time): the load a site really sees. Polls are spread over the 15-minute
  interval, so any window sees steady polling; but the 2-hourly analytics run and the MQTT
  meters' interval publication fall outside a short window.
- speed 10 (a 15-minute interval every 90 s of wall time): a 90 s window holds a whole poll
  cycle and one publication of every MQTT meter — 10 × the real-time work per wall second, so
  the CPU share is an upper bound, not the real-time figure. (At speed 60 the in-process amqtt
  broker times out waiting for PUBACKs: the service cannot keep up, so that is no footprint.)

The simulated fleet runs inside the service process (that is what ``meterwatch run`` with the
demo config does), so its cost — the fleet model advanced every 0.1 s, the Modbus server, the
MQTT publisher, the embedded broker — is included. The service's analytics run in worker
processes (``analytics.workers``, default 1): their CPU and memory are sampled too, as the
service's child processes (the workers and multiprocessing's resource tracker), and reported
apart; one run with ``analytics.workers: 0`` (analytics in the service process) compares. The
reference row is a Python process that only imports the service module: the memory any
``meterwatch run`` starts from.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

try:  # psutil comes with amqtt; /proc below is the fallback (Linux)
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None

ROOT = Path(__file__).resolve().parents[1]
#: What sampling a process that just exited raises (psutil, or /proc).
_GONE: tuple[type[Exception], ...] = (OSError, RuntimeError) + (
    (psutil.Error,) if psutil is not None else ()
)
FLEET = {"residential": 650, "commercial": 200, "industrial": 130, "transformers": 20}
#: Share of customer meters on MQTT. The simulator serves every Modbus meter behind one gateway
#: (unit ids 1..247), so at most 247 of the 1,000 can be Modbus: 196 customer + 20 transformer
#: meters polled over Modbus TCP, 784 publishing over MQTT.
MQTT_SHARE = 0.8
#: How long a clean stop may take before the process is killed [wall s].
STOP_GRACE_S = 30.0


class ProcSample:
    """CPU time [s], RSS [MiB] and thread count of a process: psutil, else /proc (Linux)."""

    def __init__(self, pid: int):
        self.pid = pid
        self._ps = psutil.Process(pid) if psutil is not None else None

    def cpu_s(self) -> float:
        if self._ps is not None:
            t = self._ps.cpu_times()
            return float(t.user + t.system)
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # utime and stime are fields 14 and 15 of /proc/<pid>/stat (man 5 proc), in clock ticks.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        if self._ps is not None:
            return float(self._ps.memory_info().rss) / 2**20
        return self._status("VmRSS") / 1024

    def children(self) -> list[ProcSample]:
        """The process's descendants (analytics workers, the resource tracker), now."""
        if self._ps is not None:
            return [ProcSample(c.pid) for c in self._ps.children(recursive=True)]
        out: list[ProcSample] = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                child = ProcSample(int(pid))
                out += [child, *child.children()]
        return out

    def threads(self) -> int:
        if self._ps is not None:
            return int(self._ps.num_threads())
        return int(self._status("Threads"))

    def _status(self, key: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
        raise RuntimeError(f"/proc/{self.pid}/status has no {key}")


def _free_port() -> int:
    from tests.support.servers import free_port

    return free_port()


def write_config(workdir: Path, speed: float, workers: int) -> tuple[Path, int]:
    """The demo config with 1,000 meters, ``speed``, ``analytics.workers`` and free ports;
    returns (path, metrics port)."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    cfg["clock"]["speed"] = speed
    cfg["analytics"]["workers"] = workers
    cfg["simulator"].update(FLEET)
    cfg["simulator"]["mqtt_share"] = MQTT_SHARE
    modbus_port, mqtt_port, metrics_port = _free_port(), _free_port(), _free_port()
    cfg["simulator"]["modbus"]["port"] = modbus_port
    for gw in cfg["collector"]["modbus"]["gateways"]:
        gw["port"] = modbus_port
    cfg["collector"]["mqtt"]["port"] = mqtt_port
    cfg["metrics"]["port"] = metrics_port
    cfg["alerts"]["console"] = False  # the console is not part of a deployed service
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path, metrics_port


def _wait_metrics(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"meterwatch run exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(
        f"meterwatch run: no /metrics after {timeout_s} s:\n{log.read_text()[-3000:]}"
    )


def _counter(port: int, name: str) -> float:
    """Sum of a metric's samples on the service's /metrics page (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            key = line.split(" ", 1)[0].split("{", 1)[0]
            if key == name:
                total += float(line.rsplit(" ", 1)[1])
    return total


def _tree(ps: ProcSample) -> tuple[dict[int, float], float]:
    """CPU time [s] of each of the service's child processes, and their summed RSS [MiB]."""
    cpu: dict[int, float] = {}
    rss = 0.0
    for child in ps.children():
        try:
            cpu[child.pid] = child.cpu_s()
            rss += child.rss_mb()
        except _GONE:  # exited between listing and sampling
            continue
    return cpu, rss


def measure(speed: float, warmup_s: float, window_s: float, workers: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        work = Path(tmp)
        config, metrics_port = write_config(work, speed, workers)
        log = work / "service.log"
        exe = Path(sys.executable).with_name("meterwatch")
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [str(exe), "run", "--config", str(config)],
                cwd=work,  # the demo config's var/ paths land in the temp dir
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            started = time.monotonic()
            _wait_metrics(metrics_port, proc, log, 120)
            startup_s = time.monotonic() - started
            ps = ProcSample(proc.pid)
            time.sleep(warmup_s)
            stored0 = _counter(metrics_port, "meterwatch_readings_stored_total")
            overrun0 = _counter(metrics_port, "meterwatch_poll_cycles_overrun_total")
            cpu0 = ps.cpu_s()
            child_cpu0, _ = _tree(ps)
            child_cpu: dict[int, float] = {}
            t0 = time.monotonic()
            rss: list[float] = []
            child_rss: list[float] = []
            while time.monotonic() - t0 < window_s:
                if proc.poll() is not None:
                    raise RuntimeError(f"service died:\n{log.read_text()[-3000:]}")
                rss.append(ps.rss_mb())
                now_cpu, now_rss = _tree(ps)
                child_cpu.update(now_cpu)  # a worker that exits keeps its last sample
                child_rss.append(now_rss)
                time.sleep(1.0)
            cpu1 = ps.cpu_s()
            wall = time.monotonic() - t0
            stored1 = _counter(metrics_port, "meterwatch_readings_stored_total")
            overrun1 = _counter(metrics_port, "meterwatch_poll_cycles_overrun_total")
            threads = ps.threads()
        finally:
            # SIGTERM is the service's clean stop (sources first, final analytics, store last).
            proc.terminate()
            t_stop = time.monotonic()
            try:
                proc.wait(STOP_GRACE_S)
                stop_s = time.monotonic() - t_stop
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                stop_s = float("nan")
        cpu = cpu1 - cpu0
        workers_cpu = sum(t - child_cpu0.get(pid, 0.0) for pid, t in child_cpu.items())
        return {
            "speed": speed,
            "workers": float(workers),
            "startup_s": startup_s,
            "window_s": wall,
            "cpu_share": cpu / wall,
            "rss_mean_mb": sum(rss) / len(rss),
            "rss_max_mb": max(rss),
            "workers_cpu_share": workers_cpu / wall,
            "workers_rss_mean_mb": sum(child_rss) / len(child_rss),
            "workers_rss_max_mb": max(child_rss),
            "poll_cycles_overrun": overrun1 - overrun0,
            "threads": float(threads),
            "readings_stored": stored1 - stored0,
            "stop_s": stop_s,  # NaN: still stopping after STOP_GRACE_S, killed
        }


def import_baseline() -> float:
    """RSS [MiB] of a Python process that only imports the service module."""
    code = (
        "import meterwatch.service\n"
        "for line in open('/proc/self/status'):\n"
        "    if line.startswith('VmRSS:'):\n"
        "        print(int(line.split()[1]) / 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--speeds", default="1,10", help="comma-separated clock speeds")
    ap.add_argument("--warmup", type=float, default=20.0, help="wall seconds before the window")
    ap.add_argument("--window", type=float, default=90.0, help="wall seconds measured")
    ap.add_argument(
        "--in-process-speed",
        type=float,
        default=10.0,
        help="one more run at this speed with analytics.workers: 0 (0: none)",
    )
    args = ap.parse_args()
    out: dict[str, object] = {"meters": sum(FLEET.values()), "import_rss_mb": import_baseline()}
    runs = [measure(float(s), args.warmup, args.window, 1) for s in args.speeds.split(",") if s]
    if args.in_process_speed:
        runs.append(measure(args.in_process_speed, args.warmup, args.window, 0))
    out["runs"] = runs
    print(json.dumps(out))


if __name__ == "__main__":
    main()
