"""Reading files in the canonical schema (CSV or Parquet, chosen by extension)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from meterwatch.core.errors import MeterWatchError
from meterwatch.core.schema import with_time_columns


def read_readings_file(path: str | Path) -> pd.DataFrame:
    """Load a canonical readings file (plus ``collected_at``/``device_ts`` if present); errors
    name the file and the problem."""
    p = Path(path)
    try:
        if p.suffix.lower() == ".parquet":
            df = pd.read_parquet(p)
        elif p.suffix.lower() == ".csv":
            df = pd.read_csv(p, dtype={"meter_id": str}, low_memory=False)
        else:
            raise MeterWatchError(
                f"{p}: unknown readings format {p.suffix!r}; use .csv or .parquet"
            )
    except (OSError, ValueError) as exc:
        raise MeterWatchError(f"{p}: cannot read: {exc}") from exc
    missing = [c for c in ("meter_id", "ts") if c not in df.columns]
    if missing:
        raise MeterWatchError(f"{p}: missing column(s) {', '.join(missing)}")
    try:
        # Receipt and device times, when the file has them (backups do): the clock check
        # judges each read against its collected_at.
        return with_time_columns(df)
    except ValueError as exc:
        raise MeterWatchError(f"{p}: bad ts value: {exc}") from exc


def _iso_z(values: pd.Series) -> pd.Series:
    """UTC timestamps as ISO 8601 text with ``Z`` (contracts §1); NaT stays empty."""
    return pd.to_datetime(values, utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_simulation(
    out: Path, readings: pd.DataFrame, registry: pd.DataFrame, labels: pd.DataFrame, fmt: str
) -> Path:
    """``readings.<fmt>``, ``meters.csv`` and ``labels.csv`` into ``out`` (times in text
    files as ISO 8601 with ``Z``); returns the readings path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"readings.{fmt}"
    if fmt == "csv":
        readings.assign(ts=_iso_z(readings["ts"])).to_csv(path, index=False)
    else:
        readings.to_parquet(path, index=False)
    registry.to_csv(out / "meters.csv", index=False)
    times = {c: _iso_z(labels[c]) for c in ("starts_at", "ends_at") if c in labels}
    labels.assign(**times).to_csv(out / "labels.csv", index=False)
    return path
