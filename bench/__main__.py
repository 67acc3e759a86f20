"""`make bench`: run every benchmark, print a table, update docs/benchmarks.md.

Each stage is measured against its baselines in the same run, so the ratios hold on a noisy,
shared machine even when the absolute figures move. Options: --quick (small sizes),
--only analytics|modbus.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from bench.common import markdown_table, run_child, update_doc

console = Console()


def analytics(sizes: list[int], loop_sizes: list[int]) -> None:
    rows = []
    for meters in sizes:
        with console.status(f"analytics suite, {meters} meters"):
            r = run_child("bench.analytics_bench", "--meters", str(meters), "--mode", "suite")
        base = None
        if meters in loop_sizes:
            with console.status(f"per-meter loop baseline, {meters} meters"):
                base = run_child("bench.analytics_bench", "--meters", str(meters), "--mode", "loop")
        rows.append(
            [
                f"{meters:,}",
                f"{r['seconds']:.1f}",
                f"{r['meter_days_per_s']:,.0f}",
                f"{r['peak_rss_mb']:,.0f}",
                f"{base['meter_days_per_s']:,.0f}" if base else "not run",
                f"{r['meter_days_per_s'] / base['meter_days_per_s']:.1f}×" if base else "–",
            ]
        )
        console.print(f"analytics {meters}: {r}")
    table = markdown_table(
        [
            "meters × 1 day (15 min) + 7 days hourly history",
            "suite s",
            "meter-days/s",
            "peak RSS MiB",
            "per-meter loop meter-days/s",
            "speed-up",
        ],
        rows,
    )
    body = (
        "Detector suite as it stands (`analytics.suite.default_detectors()`), run in partitions of "
        "whole transformer areas (`analytics.partition`, 20,000 meters each), each size in a fresh "
        "process. Making the synthetic data is not timed. Baseline: the same rules written as a "
        "per-meter pandas loop (`bench/analytics_bench.py:run_loop`).\n\n" + table
    )
    update_doc("analytics", body)


def modbus(meters: int, rounds: int) -> None:
    with console.status(f"Modbus polling, {meters} meters × {rounds} rounds"):
        r = run_child("bench.modbus_bench", "--meters", str(meters), "--rounds", str(rounds))
    console.print(f"modbus: {r}")
    table = markdown_table(
        ["reader", "meters/s", "vs raw ceiling"],
        [
            [
                "MeterWatch poller (coalesced read, decode, hand to writer)",
                f"{r['meterwatch']:,.0f}",
                f"{r['meterwatch'] / r['raw']:.0%}",
            ],
            [
                "sequential per-register pymodbus reads",
                f"{r['per_register']:,.0f}",
                f"{r['per_register'] / r['raw']:.0%}",
            ],
            ["raw async pymodbus, same coalesced request, no decode", f"{r['raw']:,.0f}", "100%"],
        ],
    )
    body = (
        f"{int(r['meters'])} simulated SDM630 meters behind one simulated Modbus TCP gateway "
        f"(separate process, loopback), {rounds} rounds each.\n\n" + table
    )
    update_doc("modbus", body)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--only", choices=["analytics", "modbus"], default=None)
    ap.add_argument("--full", action="store_true", help="include 1 M meters (about 20 min today)")
    args = ap.parse_args()
    if args.only in (None, "modbus"):
        modbus(50 if args.quick else 200, 3 if args.quick else 10)
    if args.only in (None, "analytics"):
        if args.quick:
            analytics([2_000], [2_000])
        else:
            analytics([10_000, 100_000] + ([1_000_000] if args.full else []), [10_000])
    console.print("updated docs/benchmarks.md")


if __name__ == "__main__":
    main()
