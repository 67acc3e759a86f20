"""Meter registry (meters.csv, contracts §2): load, check, fill documented defaults, sum up.

Only ``meter_id`` is required. Every other contract column has a default (:data:`DEFAULTS`,
with its source; README "Meter registry"): a column that is absent, or a cell that is empty,
takes it, and :class:`RegistrySummary` says which columns were defaulted for how many
meters. An empty ``transformer_id`` means the area is unknown. A value that is present but
wrong is an error naming the file, the row (as a spreadsheet shows it: the CSV header is
row 1) and the column. Unknown extra columns are kept as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from meterwatch.core.config import Section
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
_POSITIVE = ("nominal_voltage_v", "rated_current_a", "max_current_a", "ct_ratio")
#: Problems listed per check before the rest are only counted.
_SHOWN_PER_CHECK = 5


@dataclass(frozen=True)
class ColumnDefault:
    """The built-in default of one registry column.

    ``direct`` applies to direct-connected customer meters, ``ct_operated`` to meters behind
    current transformers (``ct_ratio > 1``) and transformer supply meters (``role`` =
    ``transformer``). ``shown`` is how the summary writes the value; ``source`` where the
    value comes from (README registry table).
    """

    column: str
    direct: Any
    ct_operated: Any
    unit: str
    source: str


#: Built-in defaults of every column but ``meter_id``, in contract order (README "Meter registry").
DEFAULTS: dict[str, ColumnDefault] = {
    d.column: d
    for d in (
        ColumnDefault("role", "customer", "customer", "", "project choice: most meters are customers"),
        ColumnDefault("transformer_id", "", "", "", "contracts §2: empty = area unknown"),
        ColumnDefault("customer_class", "residential", "", "", "project choice: the commonest class (empty for supply meters)"),
        ColumnDefault("phases", 1, 3, "", "household meters are single-phase; supply and CT meters three-phase"),
        ColumnDefault("nominal_voltage_v", 230.0, 230.0, "V", "IEC 60038 low-voltage 230/400 V (set registry.defaults for 220 V grids, GB/T 156)"),
        ColumnDefault("rated_current_a", 5.0, 1.5, "A", "Ib of the common 5(60) A direct and 1.5(6) A CT-operated ratings (IEC 62052-11 series)"),
        ColumnDefault("max_current_a", 60.0, 6.0, "A", "Imax of the same ratings"),
        ColumnDefault("ct_ratio", 1.0, 1.0, "", "contracts §2: 1 when direct-connected"),
        ColumnDefault("tariff", "", "", "", "no time-of-use table: billing without time-of-use buckets"),
        ColumnDefault("last_calibration", pd.NaT, pd.NaT, "", "unknown: calibration_due not judged"),
        ColumnDefault("calibration_interval_days", 2920, 2190, "days", "JJG 596-2012: class 1/2 meters 8 years, class 0.2S/0.5S 6 years"),
    )
}  # fmt: skip


class RegistryDefaults(Section):
    """``registry.defaults``: site values that replace the built-in defaults for every meter.

    A column left out here keeps its built-in default (:data:`DEFAULTS`).
    """

    role: Literal["customer", "transformer"] | None = None
    customer_class: Literal["residential", "commercial", "industrial"] | None = None
    phases: Literal[1, 3] | None = None
    nominal_voltage_v: float | None = Field(None, gt=0)
    rated_current_a: float | None = Field(None, gt=0)
    max_current_a: float | None = Field(None, gt=0)
    ct_ratio: float | None = Field(None, gt=0)
    tariff: str | None = None
    calibration_interval_days: int | None = Field(None, gt=0)

    def values(self) -> dict[str, Any]:
        """The columns set here, with their values."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


@dataclass(frozen=True)
class Defaulted:
    """One column filled with defaults: how many meters, which values (text, count)."""

    column: str
    meters: int
    values: tuple[tuple[str, int], ...]

    def text(self) -> str:
        if len(self.values) == 1:
            return f"{self.column} ({self.values[0][0]}) for {_meters(self.meters)}"
        parts = ", ".join(f"{v} for {n}" for v, n in self.values)
        return f"{self.column} ({parts})"


@dataclass(frozen=True)
class RegistrySummary:
    """What a registry load found: size, defaulted columns, meters without an area."""

    source: str
    meters: int
    customers: int
    transformers: int
    defaulted: tuple[Defaulted, ...] = ()
    without_area: int = 0
    extra_columns: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """The summary as the CLI and the service print it (one fact a line)."""
        out = [
            f"{self.source}: {_meters(self.meters)} ({self.customers} customer, "
            f"{self.transformers} transformer supply)"
        ]
        if self.defaulted:
            out.append("defaulted: " + "; ".join(d.text() for d in self.defaulted))
        if self.without_area:
            out.append(
                f"{_meters(self.without_area)} without a transformer area: judged by "
                "meter-level rules only"
            )
        if self.extra_columns:
            out.append("other columns kept: " + ", ".join(self.extra_columns))
        return out

    def defaulted_columns(self) -> dict[str, int]:
        """Column -> number of meters that took a default."""
        return {d.column: d.meters for d in self.defaulted}


@dataclass(frozen=True)
class LoadedRegistry:
    """A checked registry frame and the summary of how it was made."""

    meters: pd.DataFrame
    summary: RegistrySummary = field(repr=False)


def _meters(n: int) -> str:
    return f"{n} meter" if n == 1 else f"{n} meters"


def _missing(values: pd.Series) -> np.ndarray:
    """Cells with no value: NaN/None, or text that is empty after stripping."""
    empty = values.isna().to_numpy()
    text = values.astype(object).where(~empty, "").astype(str).str.strip()
    result: np.ndarray = empty | (text == "").to_numpy()
    return result


def _shown(column: str, value: Any) -> str:
    unit = DEFAULTS[column].unit
    if column == "last_calibration":
        return "unknown: calibration_due not judged"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value == "":
        return "empty"
    return f"{value} {unit}".strip()


def inspect_registry(
    df: pd.DataFrame,
    source: str = "registry",
    *,
    defaults: Mapping[str, Any] | None = None,
    first_row: int = 1,
) -> LoadedRegistry:
    """Check ``df``, fill defaults, and sum up (see the module docstring).

    ``defaults`` overrides :data:`DEFAULTS` for every meter (``registry.defaults``).
    ``first_row`` is the number a user sees for the frame's first data row (2 for a CSV
    file whose header is row 1); a row's number is its index label + ``first_row``.
    Raises :class:`RegistryError` naming ``source``, the row and the column of every problem.
    """
    site = dict(defaults or {})
    unknown = sorted(set(site) - set(DEFAULTS))
    if unknown:
        raise RegistryError(f"{source}: no default can be set for column(s) {', '.join(unknown)}")
    if "meter_id" not in df.columns:
        raise RegistryError(f"{source}: missing column meter_id (the only required column)")
    n = len(df)
    problems: list[str] = []
    hidden = 0
    ids = df["meter_id"].astype(object).where(df["meter_id"].notna(), "").astype(str).str.strip()

    def bad(mask: np.ndarray, column: str, allowed: str) -> None:
        nonlocal hidden
        rows = np.flatnonzero(mask)
        for pos in rows[:_SHOWN_PER_CHECK]:
            value = df[column].iat[pos]
            value = value.item() if hasattr(value, "item") else value  # numpy scalar -> python
            label = df.index[pos]
            number = label + first_row if isinstance(label, int | np.integer) else pos + first_row
            who = f" (meter {ids.iat[pos]})" if ids.iat[pos] else ""
            problems.append(f"row {number}{who}, column {column}: {value!r}, expected {allowed}")
        hidden += max(rows.size - _SHOWN_PER_CHECK, 0)

    def given(column: str) -> tuple[pd.Series, np.ndarray]:
        """The column (empty if absent) and which of its cells are missing."""
        if column not in df.columns:
            return pd.Series([None] * n, index=df.index, dtype=object), np.ones(n, dtype=bool)
        return df[column], _missing(df[column])

    bad((ids == "").to_numpy() | ids.str.lower().eq("nan").to_numpy(), "meter_id", "a non-empty id")
    bad(
        (ids.duplicated(keep="first") & (ids != "")).to_numpy(),
        "meter_id",
        "a unique id (duplicate)",
    )
    out: dict[str, Any] = {"meter_id": ids.to_numpy(dtype=object)}
    filled: dict[str, np.ndarray] = {}

    def text(column: str) -> tuple[np.ndarray, np.ndarray]:
        raw, miss = given(column)
        values = raw.astype(object).where(~miss, "").astype(str).str.strip().to_numpy(object)
        return values, miss

    # role first: other defaults depend on it
    role, miss = text("role")
    bad(~miss & ~np.isin(role, ROLES), "role", " or ".join(ROLES))
    role = np.where(miss, site.get("role", DEFAULTS["role"].direct), role)
    filled["role"] = miss
    out["role"] = role
    supply = role == "transformer"

    ct_raw, ct_miss = given("ct_ratio")
    ct = pd.to_numeric(ct_raw.where(~ct_miss), errors="coerce").to_numpy(dtype=float)
    bad(~ct_miss & ~(ct > 0), "ct_ratio", "a number > 0")
    ct = np.where(ct_miss, float(site.get("ct_ratio", DEFAULTS["ct_ratio"].direct)), ct)
    ct_operated = supply | (ct > 1)

    def default_for(column: str) -> np.ndarray:
        if column in site:
            return np.full(n, site[column], dtype=object)
        d = DEFAULTS[column]
        return np.where(ct_operated, d.ct_operated, d.direct).astype(object)

    area, miss = text("transformer_id")
    out["transformer_id"] = np.where(area == "nan", "", area)
    filled["transformer_id"] = miss | (area == "nan")

    cls, miss = text("customer_class")
    customer = ~supply
    bad(
        ~miss & customer & ~np.isin(cls, CUSTOMER_CLASSES),
        "customer_class",
        "one of " + ", ".join(CUSTOMER_CLASSES),
    )
    cls_default = site.get("customer_class", DEFAULTS["customer_class"].direct)
    out["customer_class"] = np.where(miss & customer, cls_default, cls)
    filled["customer_class"] = miss & customer

    ph_raw, miss = given("phases")
    phases = pd.to_numeric(ph_raw.where(~miss), errors="coerce").to_numpy(dtype=float)
    bad(~miss & ~np.isin(phases, [1, 3]), "phases", "1 or 3")
    site_phases = site.get("phases")
    ph_default = np.full(n, site_phases) if site_phases else np.where(supply, 3, 1)
    out["phases"] = np.where(miss, ph_default, np.nan_to_num(phases)).astype(int)
    filled["phases"] = miss

    for col in _POSITIVE:
        if col == "ct_ratio":
            out[col], filled[col] = ct, ct_miss
            continue
        raw, miss = given(col)
        vals = pd.to_numeric(raw.where(~miss), errors="coerce").to_numpy(dtype=float)
        bad(~miss & ~(vals > 0), col, "a number > 0")
        out[col] = np.where(miss, default_for(col).astype(float), vals)
        filled[col] = miss
    both = ~filled["rated_current_a"] & ~filled["max_current_a"]
    bad(
        both & (out["rated_current_a"] > out["max_current_a"]),
        "rated_current_a",
        "at most max_current_a (Ib <= Imax)",
    )

    tariff, miss = text("tariff")
    out["tariff"] = np.where(miss, site.get("tariff", DEFAULTS["tariff"].direct), tariff)
    filled["tariff"] = miss

    cal_raw, miss = given("last_calibration")
    cal = pd.to_datetime(cal_raw.where(~miss), errors="coerce", format="ISO8601")
    bad(~miss & cal.isna().to_numpy(), "last_calibration", "an ISO date")
    out["last_calibration"] = cal.to_numpy()
    filled["last_calibration"] = miss

    iv_raw, miss = given("calibration_interval_days")
    interval = pd.to_numeric(iv_raw.where(~miss), errors="coerce").to_numpy(dtype=float)
    whole = (interval > 0) & (np.mod(np.nan_to_num(interval), 1) == 0)
    bad(~miss & ~whole, "calibration_interval_days", "a whole number of days > 0")
    out["calibration_interval_days"] = np.where(
        miss, default_for("calibration_interval_days"), np.nan_to_num(interval)
    ).astype(int)
    filled["calibration_interval_days"] = miss

    if problems:
        more = f"\n  … and {hidden} more" if hidden else ""
        raise RegistryError(
            f"{source}: {len(problems) + hidden} problem(s)\n  " + "\n  ".join(problems) + more
        )

    extras = [c for c in df.columns if c not in REGISTRY_COLUMNS]
    frame = pd.DataFrame({c: out[c] for c in REGISTRY_COLUMNS})
    for c in extras:
        frame[c] = df[c].to_numpy()
    frame["last_calibration"] = pd.to_datetime(frame["last_calibration"])
    defaulted = []
    for col in REGISTRY_COLUMNS[1:]:
        mask = filled[col]
        if col == "transformer_id" or not mask.any():
            continue  # an unknown area has its own line in the summary
        # Count the raw values first: one text per distinct value, not per meter.
        raw = frame.loc[mask, col].value_counts(dropna=False)
        shown = raw.groupby([_shown(col, v) for v in raw.index]).sum()
        values = tuple((str(v), int(c)) for v, c in shown.sort_values(ascending=False).items())
        defaulted.append(Defaulted(col, int(mask.sum()), values))
    summary = RegistrySummary(
        source=source,
        meters=n,
        customers=int((frame["role"] == "customer").sum()),
        transformers=int(supply.sum()),
        defaulted=tuple(defaulted),
        without_area=int((frame["transformer_id"] == "").sum()),
        extra_columns=tuple(str(c) for c in extras),
    )
    return LoadedRegistry(frame, summary)


def check_registry(
    df: pd.DataFrame, source: str = "registry", *, defaults: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """The checked registry frame of :func:`inspect_registry` (for frames built in code)."""
    return inspect_registry(df, source, defaults=defaults).meters


def load_registry(path: str | Path, *, defaults: Mapping[str, Any] | None = None) -> LoadedRegistry:
    """Read meters.csv (or .parquet), check it and fill defaults; rows are numbered as a
    spreadsheet shows them (CSV header = row 1; Parquet: first data row = row 1)."""
    p = Path(path)
    if not p.exists():
        raise RegistryError(f"{p}: meter registry file not found")
    try:
        if p.suffix.lower() == ".parquet":
            df = pd.read_parquet(p)
            first_row = 1
        else:
            # Contract columns as text (ids keep leading zeros; cells are checked here);
            # blank lines are read, then dropped, so row numbers stay those of the file.
            df = pd.read_csv(
                p,
                dtype=dict.fromkeys(REGISTRY_COLUMNS, str),
                skip_blank_lines=False,
                encoding="utf-8-sig",
            )
            df.columns = [str(c).strip() for c in df.columns]
            df = df[~df.isna().all(axis=1)]
            first_row = 2
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{p}: cannot read the meter registry: {exc}") from None
    return inspect_registry(df, str(p), defaults=defaults, first_row=first_row)
