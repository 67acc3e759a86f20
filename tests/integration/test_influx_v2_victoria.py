"""The ``v2`` write path (``/api/v2/write``, token auth) against a real server: VictoriaMetrics.

VictoriaMetrics accepts InfluxDB line protocol on ``/api/v2/write`` and stores each field as a
metric ``<measurement>_<field>`` with the tags as labels; ``/api/v1/export`` returns the raw
samples, so the test can compare every value, tag and timestamp with what was written.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from meterwatch.core.schema import READING_FIELDS, normalize_readings
from meterwatch.storage.influx import InfluxStore
from tests.support.servers import RunningServer, victoria_metrics


def sample() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    t0 = pd.Timestamp.now(tz="UTC").floor("s") - pd.Timedelta(hours=2)
    rows = []
    for m in range(4):
        for k in range(6):
            rows.append(
                {
                    "meter_id": f"M{m}",
                    "ts": t0 + pd.Timedelta(minutes=15 * k),
                    "energy_import_kwh": 1000.0 * m + 0.1 * k + rng.random(),
                    "power_kw": rng.normal(2, 1),
                    "voltage_l1_v": 230 + rng.normal(0, 2),
                    "frequency_hz": np.nan if k % 2 else 50.0 + rng.normal(0, 0.01),
                }
            )
    return normalize_readings(pd.DataFrame(rows))


def export(server: RunningServer) -> pd.DataFrame:
    """Every sample of every ``readings_*`` metric, one row per (meter_id, ts, field)."""
    body = urllib.parse.urlencode({"match[]": '{__name__=~"readings_.*"}'}).encode()
    with urllib.request.urlopen(f"{server.url}/api/v1/export", data=body, timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    rows = []
    for line in lines:
        doc = json.loads(line)
        labels = doc["metric"]
        field = labels.pop("__name__").removeprefix("readings_")
        for value, ms in zip(doc["values"], doc["timestamps"], strict=True):
            rows.append({**labels, "field": field, "ts_ms": ms, "value": float(value)})
    return pd.DataFrame(rows)


def test_v2_write_reaches_a_real_server_with_values_tags_and_timestamps(tmp_path: Path) -> None:
    df = sample()
    registry = pd.DataFrame(
        {
            "meter_id": ["M0", "M1", "M2", "M3"],
            "transformer_id": ["TA1", "TA1", "TA2", "TA2"],
            "customer_class": ["residential", "commercial", "industrial", ""],
            "phases": [1, 3, 3, 3],
        }
    )
    with victoria_metrics(tmp_path) as server:
        store = InfluxStore(
            flavor="v2",
            url=server.url,
            org="grid",
            bucket="meterwatch",
            token="test-token",
            tags=registry,
            batch_size=7,  # several batches
        )
        try:
            assert store.write_readings(df) == len(df)
        finally:
            store.close()
        urllib.request.urlopen(f"{server.url}/internal/force_flush", timeout=10).read()
        expected = df.melt(
            id_vars=["meter_id", "ts"], value_vars=list(READING_FIELDS), var_name="field"
        ).dropna(subset=["value"])
        got = pd.DataFrame()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            got = export(server)
            if len(got) >= len(expected):
                break
            time.sleep(0.2)

    assert len(got) == len(expected), f"exported {len(got)} samples, wrote {len(expected)}"
    expected["ts_ms"] = (expected["ts"].astype("int64") // 10**6).astype("int64")
    merged = expected.merge(got, on=["meter_id", "ts_ms", "field"], suffixes=("", "_got"))
    assert len(merged) == len(expected)
    # VictoriaMetrics stores floats as decimals of at most 15 significant digits (lossy past
    # that; InfluxDB itself round-trips them exactly, see test_influx.py).
    rel = (merged["value"] - merged["value_got"]).abs() / merged["value"].abs()
    assert rel.max() < 1e-12, merged.loc[rel.idxmax()]
    tags = got.drop_duplicates("meter_id").set_index("meter_id")
    assert tags.loc["M0", "transformer_id"] == "TA1" and tags.loc["M0", "phases"] == "1"
    assert tags.loc["M2", "customer_class"] == "industrial"
    assert pd.isna(tags.loc["M3"].get("customer_class"))  # empty class: tag omitted
