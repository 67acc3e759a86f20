"""Meter registry (meters.csv, contracts §2): load, check and normalise."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from meterwatch.core.errors import RegistryError

#: Registry columns in contract order.
REGISTRY_COLUMNS: tuple[str, ...] = (
    "meter_id",
    "role",
    "transformer_id",
    "customer_class",
    "phases",
    "nominal_voltage_v",
    "rated_current_a",
    "max_current_a",
    "ct_ratio",
    "tariff",
    "last_calibration",
    "calibration_interval_days",
)
ROLES = ("customer", "transformer")
CUSTOMER_CLASSES = ("residential", "commercial", "industrial")
_NUMERIC = ("nominal_voltage_v", "rated_current_a", "max_current_a", "ct_ratio")


def check_registry(df: pd.DataFrame, source: str = "registry") -> pd.DataFrame:
    """Validate and normalise a registry frame; unknown extra columns are kept.

    Raises :class:`RegistryError` naming the source, row (1-based data row) and column.
    """
    missing = [c for c in REGISTRY_COLUMNS if c not in df.columns]
    if missing:
        raise RegistryError(f"{source}: missing column(s) {', '.join(missing)}")
    out = df.copy()
    out["meter_id"] = out["meter_id"].astype(str).str.strip()
    problems: list[str] = []

    def bad(mask: pd.Series, column: str, allowed: str) -> None:
        for idx in out.index[mask.to_numpy()][:5]:
            value = df.at[idx, column]
            value = value.item() if hasattr(value, "item") else value  # numpy scalar -> python
            problems.append(
                f"row {idx + 1} ({out.at[idx, 'meter_id']}): {column}={value!r}, expected {allowed}"
            )

    bad(out["meter_id"].isin(["", "nan"]), "meter_id", "a non-empty id")
    dup = out["meter_id"].duplicated(keep="first")
    bad(dup, "meter_id", "a unique id (duplicate)")
    bad(~out["role"].isin(ROLES), "role", " or ".join(ROLES))
    cls = out["customer_class"].fillna("").astype(str)
    out["customer_class"] = cls
    bad(
        (out["role"] == "customer") & ~cls.isin(CUSTOMER_CLASSES),
        "customer_class",
        "one of " + ", ".join(CUSTOMER_CLASSES),
    )
    phases = pd.to_numeric(out["phases"], errors="coerce")
    bad(~phases.isin([1, 3]), "phases", "1 or 3")
    out["phases"] = phases.fillna(0).astype(int)
    for col in _NUMERIC:
        vals = pd.to_numeric(out[col], errors="coerce")
        bad(~(vals > 0), col, "a number > 0")
        out[col] = vals.astype(float)
    out["transformer_id"] = out["transformer_id"].astype(str)
    out["tariff"] = out["tariff"].astype(object).where(out["tariff"].notna(), "").astype(str)
    cal = pd.to_datetime(out["last_calibration"], errors="coerce", format="ISO8601")
    bad(cal.isna() & out["last_calibration"].notna(), "last_calibration", "an ISO date")
    out["last_calibration"] = cal
    interval = pd.to_numeric(out["calibration_interval_days"], errors="coerce")
    bad(~(interval > 0), "calibration_interval_days", "a whole number of days > 0")
    out["calibration_interval_days"] = interval.fillna(0).astype(int)
    if problems:
        raise RegistryError(f"{source}: {len(problems)} problem(s)\n  " + "\n  ".join(problems))
    return out.reset_index(drop=True)


def load_registry(path: str | Path) -> pd.DataFrame:
    """Read meters.csv (or .parquet) and check it."""
    p = Path(path)
    if not p.exists():
        raise RegistryError(f"{p}: meter registry file not found")
    df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p, dtype={"meter_id": str})
    return check_registry(df, source=str(p))
