"""A little of every stored table (readings, validated versions, alert events, health), and a
reader of every table, for backup tests against either backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from meterwatch.core.schema import READING_FIELDS, normalize_readings, with_time_columns
from meterwatch.storage.measurements import alert_event_frame, normalize_health

T0 = pd.Timestamp("2026-01-05T00:00:00Z")
METERS = ("M1", "M2", "M'3, x")  # a quoting-hostile id too


def sample_readings(n: int = 24, seed: int = 1, start: pd.Timestamp = T0) -> pd.DataFrame:
    """15-min readings of every meter, whole seconds (InfluxDB's precision), some quantities
    unreported, ``collected_at`` on every reading and ``device_ts`` on one meter's."""
    rng = np.random.default_rng(seed)
    frames = []
    for i, meter in enumerate(METERS):
        ts = start + pd.to_timedelta(np.arange(n) * 900 + i, "s")
        vals = rng.normal(100, 30, (n, len(READING_FIELDS)))
        vals[rng.random(vals.shape) < 0.2] = np.nan
        vals[:, 0] = 1000 + np.arange(n) * 0.25  # every reading reports a quantity
        df = pd.DataFrame(vals, columns=list(READING_FIELDS))
        df.insert(0, "ts", ts)
        df.insert(0, "meter_id", meter)
        df["collected_at"] = ts + pd.Timedelta(seconds=2)
        df["device_ts"] = ts - pd.Timedelta(seconds=1) if i == 0 else pd.NaT
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    return with_time_columns(
        normalize_readings(df).assign(**{c: df[c] for c in ("collected_at", "device_ts")}),
        always=True,
    )


def sample_validated(version_kwh: float) -> pd.DataFrame:
    """Eight validated intervals of M1 and M2 (one estimated), ``kwh`` = ``version_kwh``."""
    ts = pd.Series(T0 + pd.Timedelta(minutes=15) * np.arange(1, 9)).astype("datetime64[ns, UTC]")
    frames = []
    for meter in METERS[:2]:
        quality = ["actual"] * 7 + ["estimated"]
        frames.append(
            pd.DataFrame(
                {
                    "meter_id": meter,
                    "interval_start": ts - pd.Timedelta(minutes=15),
                    "ts": ts,
                    "kwh": version_kwh,
                    "quality": quality,
                    "method": ["register_delta"] * 7 + ["linear_interpolation"],
                    "reasons": [""] * 7 + ["gap"],
                    "rule_set_version": "mw-vee-1.0",
                    "data_version": 0,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def sample_alert_events() -> pd.DataFrame:
    alert: dict[str, Any] = {
        "id": "a1b2c3",
        "fingerprint": "fp1",
        "type": "voltage_loss",
        "category": "equipment",
        "severity": "major",
        "meter_id": "M1",
        "transformer_id": "TA 1",
        "status": "open",
        "starts_at": "2026-01-05T01:00:00Z",
        "summary": 'phase L2 at 12.5 V "lost"',
        "evidence": {"observed_v": 12.5},
        "count": 1,
    }
    return alert_event_frame(
        [
            ("opened", T0 + pd.Timedelta(hours=1), alert),
            ("acknowledged", T0 + pd.Timedelta(hours=2), {**alert, "status": "acknowledged"}),
            (
                "resolved",
                T0 + pd.Timedelta(hours=3),
                {**alert, "status": "resolved", "ends_at": "2026-01-05T02:30:00Z"},
            ),
        ]
    )


def sample_health() -> pd.DataFrame:
    rows = []
    for hour in (1, 2):
        ts = T0 + pd.Timedelta(hours=hour)
        rows.append(
            {"ts": ts, "gateway": "sim", "protocol": "modbus", "meters": 3}
            | {"requests": 10 * hour, "errors": hour, "polls": 4 * hour}
        )
        rows.append(
            {
                "ts": ts,
                "gateway": "_writer",
                "protocol": "store",
                "readings_stored": 30 * hour,
                "store_write_rate_rows_per_s": 0.5 * hour,
            }
        )
    return normalize_health(pd.DataFrame(rows))


def write_sample(store: Any) -> None:
    """Every table: readings (one batch written twice: a replay), three validated data versions
    (the last a manual edit), alert events, health snapshots."""
    readings = sample_readings()
    store.write_readings(readings)
    store.write_readings(readings.iloc[:10])  # replayed: stored once
    store.write_validated_readings(sample_validated(0.5), written_at=T0 + pd.Timedelta(days=1))
    store.write_validated_readings(sample_validated(0.75), written_at=T0 + pd.Timedelta(days=2))
    edit = (
        sample_validated(0.75)
        .iloc[[3]]
        .assign(
            kwh=2.0,
            quality="edited",
            method="manual_edit",
            edited_by="li",
            edit_reason="meter swap",
        )
    )
    store.write_validated_readings(edit, written_at=T0 + pd.Timedelta(days=3))
    store.write_alert_events(sample_alert_events())
    store.write_collector_health(sample_health())


def read_tables(store: Any, *, all_versions: bool = True) -> dict[str, pd.DataFrame]:
    """Every table as the store's read methods return it (every data version when the store
    keeps them)."""
    return {
        "readings": store.read_readings(include_times=True),
        "validated_readings": store.read_validated_readings(all_versions=True)
        if all_versions
        else store.read_validated_readings(),
        "alert_events": store.read_alert_events(),
        "collector_health": store.read_collector_health(),
    }


def embedded_tables(path: Path) -> dict[str, pd.DataFrame]:
    """:func:`read_tables` of the embedded store file at ``path`` (opened, read, closed)."""
    from meterwatch.storage.embedded import EmbeddedStore

    store = EmbeddedStore(path)
    try:
        return read_tables(store)
    finally:
        store.close()


def assert_tables_equal(got: dict[str, pd.DataFrame], expected: dict[str, pd.DataFrame]) -> None:
    assert set(got) == set(expected)
    for name in expected:
        assert len(expected[name]) > 0, f"{name}: nothing to compare"
        pd.testing.assert_frame_equal(
            got[name].reset_index(drop=True), expected[name].reset_index(drop=True), obj=name
        )
