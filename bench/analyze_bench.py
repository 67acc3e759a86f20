"""`meterwatch analyze` over a CSV fleet against the time pyarrow takes to read the same file.

The fleet is `meterwatch simulate` (the product's simulator: ``--meters`` customers in the
default class mix, ``--days`` at 15 minutes, CSV). Measured in the same run,
``--runs`` each, alternating: ``pyarrow.csv.read_csv`` of the readings file (all cores, in-process,
warm: the target's baseline; and, for context, as the first read of a fresh process), and
``meterwatch analyze --readings F --meters M --out O`` as a user runs it (a fresh process:
start-up, reading, every detector, the alert feed); issue 14's target is analyze <= 5x the
read. Peak RSS of the analyze process against the readings table's in-memory size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: pyarrow's read of the file as the first thing a fresh process reads (imports not timed):
#: the conditions ``analyze`` reads under (its memory not yet faulted in), beside the warm
#: read in this process that the target is judged against.
_FRESH_READ = (
    "import sys, time, pyarrow.csv as c; t = time.perf_counter(); c.read_csv(sys.argv[1]); "
    "print(time.perf_counter() - t)"
)

#: Runs a command and prints its peak resident memory [MiB] (a process of its own, so the
#: simulator's peak does not count).
_PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
    "capture_output=True); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument("--days", type=float, default=60)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    out = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="mw-analyze-"))
    exe = [sys.executable, "-m", "meterwatch.cli"]
    try:
        readings = out / "readings.csv"
        if not readings.exists():
            res = int(args.meters * 0.8)
            com = int(args.meters * 0.15)
            ind = args.meters - res - com
            subprocess.run(
                [
                    *exe,
                    "simulate",
                    "--out",
                    str(out),
                    "--days",
                    str(args.days),
                    "--residential",
                    str(res),
                    "--commercial",
                    str(com),
                    "--industrial",
                    str(ind),
                    "--transformers",
                    str(max(args.meters // 100, 1)),
                    "--seed",
                    "3",
                ],
                check=True,
                capture_output=True,
            )
        import pyarrow.csv as pacsv

        from meterwatch.io import read_readings_file

        frame = read_readings_file(readings)
        table_mib = frame.memory_usage(deep=True).sum() / 2**20
        del frame
        # The two alternate run by run, so that a slow spell of the shared machine falls on both.
        reads, fresh, runs, peaks = [], [], [], []
        for _ in range(args.runs):  # a handful of runs
            t = time.perf_counter()
            table = pacsv.read_csv(readings)
            reads.append(time.perf_counter() - t)
            rows = table.num_rows
            del table
            cold = subprocess.run(
                [sys.executable, "-c", _FRESH_READ, str(readings)],
                check=True,
                capture_output=True,
                text=True,
            )
            fresh.append(float(cold.stdout.strip().splitlines()[-1]))
            t = time.perf_counter()
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _PEAK,
                    *exe,
                    "analyze",
                    "--readings",
                    str(readings),
                    "--meters",
                    str(out / "meters.csv"),
                    "--out",
                    str(out / "alerts.jsonl"),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            runs.append(time.perf_counter() - t)
            peaks.append(float(done.stdout.strip().splitlines()[-1]))
        print(
            json.dumps(
                {
                    "meters": args.meters,
                    "days": args.days,
                    "rows": rows,
                    "csv_mib": readings.stat().st_size / 2**20,
                    "pyarrow_read_s": reads,
                    "pyarrow_fresh_read_s": fresh,
                    "analyze_s": runs,
                    "table_mib": float(table_mib),
                    "analyze_peak_rss_mib": max(peaks),
                }
            )
        )
    finally:
        if not args.dir:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
