"""Shared bits: run a measurement in a fresh subprocess (peak memory per run), tables, docs."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from meterwatch.core.schema import normalize_readings

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def run_child(module: str, *args: str, timeout_s: float = 1800) -> dict:
    """Run ``python -m module args`` and parse the JSON it prints last; adds ``peak_rss_mb``."""
    cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """Peak resident memory of this process [MiB] (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def update_doc(section: str, body: str) -> None:
    """Replace (or append) the block between the section's markers in docs/benchmarks.md."""
    start, end = f"<!-- bench:{section}:start -->", f"<!-- bench:{section}:end -->"
    stamp = f"_Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}._"
    block = f"{start}\n{stamp}\n\n{body}\n{end}"
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + f"\n\n{block}\n"
    )
    DOC.write_text(text, encoding="utf-8")


def synthetic_readings(meters: int, intervals: int, seed: int = 7) -> pd.DataFrame:
    """A canonical frame (contracts §1) of three-phase meters, every quantity present.

    ``meters`` × ``intervals`` rows at 15-minute steps ending two days ago (InfluxDB and
    VictoriaMetrics accept it under their default retention). Values are plausible, not a load
    model: the benchmarks measure moving and storing readings, not what they say.
    """
    rng = np.random.default_rng(seed)
    n = meters * intervals
    end = pd.Timestamp.now(tz="UTC").floor("D") - pd.Timedelta(days=2)
    ts = pd.date_range(end=end, periods=intervals, freq="15min")
    frame = pd.DataFrame(
        {
            "meter_id": np.repeat([f"BM{i:06d}" for i in range(meters)], intervals),
            "ts": np.tile(ts, meters),
            "energy_import_kwh": np.round(rng.uniform(100, 90_000, n), 2),
            "energy_export_kwh": np.round(rng.uniform(0, 50, n), 2),
            "power_kw": np.round(rng.normal(3, 1.5, n), 3),
            "reactive_power_kvar": np.round(rng.normal(0.5, 0.3, n), 3),
            "voltage_l1_v": np.round(rng.normal(230, 2, n), 1),
            "voltage_l2_v": np.round(rng.normal(230, 2, n), 1),
            "voltage_l3_v": np.round(rng.normal(230, 2, n), 1),
            "current_l1_a": np.round(rng.uniform(0, 20, n), 2),
            "current_l2_a": np.round(rng.uniform(0, 20, n), 2),
            "current_l3_a": np.round(rng.uniform(0, 20, n), 2),
            "power_factor": np.round(rng.uniform(0.85, 1.0, n), 3),
            "frequency_hz": np.round(rng.normal(50, 0.02, n), 2),
        }
    )
    return normalize_readings(frame)
