"""`make bench`: run every benchmark, print a table, update docs/benchmarks.md.

Each stage is measured against its baselines in the same run, so the ratios hold on a noisy,
shared machine even when the absolute figures move. Options: --quick (small sizes),
--only analytics|modbus|mqtt|storage|footprint.
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
            "meters (judged day + 2 days history, 15 min)",
            "suite s",
            "meter-days/s",
            "peak RSS MiB",
            "per-meter loop meter-days/s",
            "speed-up",
        ],
        rows,
    )
    body = (
        "Full detector suite (`analytics.suite.default_detectors()`: VEE-based billing rules, "
        "equipment, consumption, theft and line loss) over 3 days at 15 minutes per meter (the "
        "judged day and 2 days of history; 288 readings per meter), in partitions of 2,500 "
        "meters on 2 worker processes (`analytics.partition`'s model), each size in a fresh "
        "process. Making the synthetic data is not timed. Peak RSS = parent + 2 × the largest "
        "worker peak (an upper bound: pages shared after fork count twice). Baseline: a few of "
        "the same rules written as a per-meter pandas loop (`bench/analytics_bench.py:run_loop`), "
        "one process.\n\n" + table
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


def _verdict(ok: bool) -> str:
    return "**reached**" if ok else "**not reached**"


def mqtt(messages: int, per_message: int) -> None:
    with console.status(f"MQTT ingest, {messages} messages × {per_message} readings"):
        r = run_child(
            "bench.mqtt_bench", "--messages", str(messages), "--per-message", str(per_message)
        )
    console.print(f"mqtt: {r}")
    raw, bridge = r["raw"]["readings_per_s"], r["bridge"]["readings_per_s"]

    def row(label: str, key: str, vs_bridge: bool) -> list[object]:
        x = r[key]
        return [
            label,
            f"{x['messages_per_s']:,.0f}",
            f"{x['readings_per_s']:,.0f}",
            f"{x['readings_per_s'] / raw:.1%}",
            f"{x['readings_per_s'] / bridge:.2f}×" if vs_bridge else "–",
        ]

    table = markdown_table(
        ["consumer", "messages/s", "readings/s", "vs raw ceiling", "vs bridge"],
        [
            row(
                "MeterWatch collector → writer → embedded store (DuckDB)",
                "meterwatch_embedded",
                True,
            ),
            row(
                "MeterWatch collector → writer → spool → InfluxStore v2 (VictoriaMetrics)",
                "meterwatch_influx",
                True,
            ),
            row(
                "MeterWatch collector → writer → spool → InfluxStore v1 (InfluxDB 1.6.7)",
                "meterwatch_influx1",
                False,
            ),
            row("bridge: paho → json → Point → influxdb-client batching write_api", "bridge", True),
            row("reference: paho subscriber that only json.loads", "parse", False),
            row("raw paho ceiling: subscriber that only counts", "raw", False),
        ],
    )
    best = max(
        r[k]["readings_per_s"]
        for k in ("meterwatch_embedded", "meterwatch_influx", "meterwatch_influx1")
    )
    same_kind = r["meterwatch_influx"]["readings_per_s"] / bridge
    body = (
        f"Payload mode: `batch` codec, {per_message} canonical readings (all 12 quantities) per "
        f"QoS 1 message ({r['payload_bytes']:,} bytes), as a data concentrator publishes; "
        f"{messages:,} messages = {r['readings']:,} readings. Real Mosquitto on a free loopback "
        "port (`max_inflight_messages 100`); every consumer drains the same backlog the publisher "
        "left in its persistent session, one consumer at a time, timed from connect to the last "
        "reading stored (`bench/mqtt_bench.py`). The InfluxDB-API store for both MeterWatch and "
        "the bridge is VictoriaMetrics (`/api/v2/write`): influxdb-client cannot write to "
        "Debian's InfluxDB 1.6.7 (no `/api/v2/write` before 1.8), so the InfluxDB 1.x row has no "
        "bridge to compare with.\n\n"
        + table
        + f"\n\nTarget ≥ 90 % of the raw ceiling: {_verdict(best / raw >= 0.9)} "
        f"({best / raw:.1%}). Target ≥ 5× the bridge into the same store kind: "
        f"{_verdict(same_kind >= 5)} ({same_kind:.2f}×)."
    )
    update_doc("mqtt", body)


INGEST_ROWS = (
    ("canonical:count", "paho subscriber that only counts (floor)"),
    ("canonical:bridge", "paho + influxdb client bridge, 5,000-point batches → InfluxDB 1.x"),
    ("canonical:node-red", "Node-RED 4 flow → InfluxDB 1.x"),
    ("canonical:mw-influx", "**MeterWatch → spool → InfluxDB 1.x**"),
    ("canonical:mw-embedded", "**MeterWatch → embedded store**"),
    ("batch:count", "batch codec: paho subscriber that only counts"),
    ("batch:mw-influx", "batch codec: **MeterWatch → spool → InfluxDB 1.x**"),
    ("batch:mw-embedded", "batch codec: **MeterWatch → embedded store**"),
)


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def ingest_doc(runs: list[dict], stages: dict | None) -> None:
    """Tables of bench.ingest_bench runs (medians, ratios within each run) and stage costs."""
    rows = []
    for key, label in INGEST_ROWS:
        got = [r[key] for r in runs if key in r]
        if not got:
            continue
        nodered = [r["canonical:node-red"]["messages_per_s"] for r in runs if key in r]
        ratio = [g["messages_per_s"] / n for g, n in zip(got, nodered, strict=True)]
        rows.append(
            [
                label,
                " / ".join(f"{g['messages_per_s']:,.0f}" for g in got),
                f"{_median([g['readings_per_s'] for g in got]):,.0f}",
                f"{_median([g['cpu_s_per_100k_msgs'] for g in got]):.1f}",
                f"{_median([g['peak_rss_mb'] for g in got]):,.0f}",
                f"{_median(ratio):.2f}×" if key.startswith("canonical") else "–",
                str(sum(g.get("keepalive_disconnects", 0) for g in got)) if "mw-" in key else "–",
            ]
        )
    table = markdown_table(
        [
            "consumer",
            "msgs/s (each run)",
            "readings/s (median)",
            "CPU s per 100 k msgs",
            "peak RSS MiB",
            "vs Node-RED (median of per-run ratios)",
            "MQTT disconnects",
        ],
        rows,
    )
    update_doc("ingest", f"{len(runs)} runs of `bench/ingest_bench.py`.\n\n" + table)
    if stages:
        names = (
            ("split_packets_us", "split PUBLISH packets out of the stream"),
            ("decode_columns_us", "decode payloads into columns (orjson)"),
            ("parse_ts_us", "parse timestamps (one `to_utc` call)"),
            ("frame_us", "build the frame"),
            ("line_protocol_us", "encode line protocol"),
            ("spool_append_cpu_us", "spool append (CPU; fsync wall time apart)"),
            ("embedded_write_us", "embedded store write with duplicate check"),
            ("pubacks_us", "encode PUBACKs"),
        )
        update_doc(
            "ingest_stages",
            markdown_table(
                ["stage", "µs CPU per message"],
                [[label, f"{stages[k]:.2f}"] for k, label in names if k in stages],
            ),
        )


def ingest(runs: int) -> None:
    results = []
    for i in range(runs):
        with console.status(f"ingest workload, run {i + 1} of {runs}"):
            results.append(run_child("bench.ingest_bench", timeout_s=3600))
    stages = run_child("bench.ingest_stages")
    console.print(f"ingest: {results}\nstages: {stages}")
    ingest_doc(results, stages)


def storage(meters: int, intervals: int, rounds: int) -> None:
    with console.status(f"storage, {meters * intervals:,} lines into InfluxDB 1.x"):
        r = run_child(
            "bench.storage_bench",
            "--meters",
            str(meters),
            "--intervals",
            str(intervals),
            "--rounds",
            str(rounds),
        )
    console.print(f"storage: {r}")
    ratio = r["meterwatch"] / r["raw"]
    table = markdown_table(
        ["writer", "lines/s", "vs raw HTTP"],
        [
            [
                "MeterWatch InfluxStore (encode frame → line protocol, POST, policy)",
                f"{r['meterwatch']:,.0f}",
                f"{ratio:.0%}",
            ],
            [
                "raw HTTP: same pre-encoded batches, one keep-alive connection",
                f"{r['raw']:,.0f}",
                "100%",
            ],
        ],
    )
    body = (
        f"{int(r['lines']):,} lines ({meters:,} three-phase meters × {intervals} intervals, "
        f"{int(r['fields_per_line'])} fields and 4 tags each) into a real InfluxDB 1.6.7 "
        f"(`influxd` on a free loopback port, `/write?precision=s`), batches of "
        f"{int(r['batch']):,} lines; best of {int(r['rounds'])} alternating rounds, each into "
        "fresh databases, every point counted back (`bench/storage_bench.py`). Encoding the frame "
        f"to line protocol alone took {r['encode_s']:.2f} s of MeterWatch's "
        f"{r['meterwatch_s']:.2f} s.\n\n"
        + table
        + f"\n\nTarget ≥ 80 % of raw HTTP: {_verdict(ratio >= 0.8)} ({ratio:.0%})."
    )
    update_doc("storage", body)


def footprint(warmup_s: float, window_s: float) -> None:
    with console.status(f"footprint of meterwatch run, 1,000 meters ({window_s:.0f} s windows)"):
        r = run_child("bench.footprint", "--warmup", str(warmup_s), "--window", str(window_s))
    console.print(f"footprint: {r}")
    rows: list[list[object]] = []
    for run in r["runs"]:
        stop = run["stop_s"]
        workers = int(run.get("workers", 1))
        rows.append(
            [
                f"{run['speed']:g}× ({900 / run['speed']:.0f} s wall per 15 min)",
                f"{workers}" + (" (in the service)" if workers == 0 else ""),
                f"{run['window_s']:.0f}",
                f"{run['cpu_share']:.1%}",
                f"{run['rss_mean_mb']:,.0f}",
                f"{run['rss_max_mb']:,.0f}",
                f"{run['workers_cpu_share']:.1%}",
                f"{run['workers_rss_mean_mb']:,.0f}",
                f"{run['workers_rss_max_mb']:,.0f}",
                f"{run['threads']:.0f}",
                f"{run['readings_stored']:,.0f}",
                f"{run['poll_cycles_overrun']:,.0f}",
                f"{stop:.1f}" if stop == stop else "> 30 (killed)",
            ]
        )
    rows.append(
        [
            "reference: Python importing `meterwatch.service`",
            "–",
            "–",
            "–",
            f"{r['import_rss_mb']:,.0f}",
            *(["–"] * 8),
        ]
    )
    table = markdown_table(
        [
            "clock speed",
            "analytics.workers",
            "window s",
            "service CPU (share of one core)",
            "service RSS mean MiB",
            "service RSS max MiB",
            "workers CPU",
            "workers RSS mean MiB",
            "workers RSS max MiB",
            "service threads",
            "readings stored in window",
            "poll cycles overrun",
            "clean stop s",
        ],
        rows,
    )
    body = (
        f"`meterwatch run` on the demo `config.yaml` with {r['meters']:,} simulated meters at a "
        "15-minute interval (650 residential, 200 commercial, 130 industrial, 20 transformer "
        "meters; 784 publish over MQTT to the embedded broker, 216 are polled over Modbus TCP), "
        f"the simulator inside the same process. After {warmup_s:.0f} s of warm-up the service "
        "process and its child processes (the analytics worker and multiprocessing's resource "
        "tracker) are sampled every second (psutil, else /proc): CPU time over wall time, and "
        "RSS (`bench/footprint.py`). The last run keeps the analytics in the service process "
        "(`analytics.workers: 0`).\n\n" + table
    )
    update_doc("footprint", body)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument(
        "--only",
        choices=["analytics", "modbus", "mqtt", "ingest", "storage", "footprint"],
        default=None,
    )
    ap.add_argument(
        "--full", action="store_true", help="include 1 M meters (well over an hour today)"
    )
    args = ap.parse_args()
    if args.only in (None, "modbus"):
        modbus(50 if args.quick else 200, 3 if args.quick else 10)
    if args.only in (None, "mqtt"):
        mqtt(200 if args.quick else 1000, 100)
    if args.only in (None, "ingest"):
        ingest(1 if args.quick else 3)
    if args.only in (None, "storage"):
        storage(*((200, 50, 2) if args.quick else (1000, 96, 3)))
    if args.only in (None, "footprint"):
        footprint(*((10.0, 20.0) if args.quick else (20.0, 90.0)))
    if args.only in (None, "analytics"):
        if args.quick:
            analytics([2_000], [2_000])
        else:
            analytics([10_000, 100_000] + ([1_000_000] if args.full else []), [10_000])
    console.print("updated docs/benchmarks.md")


if __name__ == "__main__":
    main()
