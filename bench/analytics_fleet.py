"""A synthetic fleet partition for the analytics benchmarks, as arrays and as a store would return it.

One partition = ``meters`` meters in transformer areas of ``area_size`` (the first meter of
each area is its supply meter, registering the area's customers plus 3-6 % line loss), at
15-minute intervals: the judged day (96 intervals, every quantity) and ``history_days`` of
hourly register reads before it (what baselines are fitted on). Customers follow a daily
load shape with weekday/weekend levels, per-meter scale and noise; 0.2 % of them have a
theft-like drop (billing 40 % from the 10th history day on), 0.1 % of the judged readings are
missing (some meters are irregular, as in a real fleet). Made with numpy, not timed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: The judged day (a Tuesday).
DAY = pd.Timestamp("2026-02-03T00:00:00Z")
INTERVALS = 96


@dataclass
class Partition:
    registry: pd.DataFrame
    #: meters x 96 judged-day arrays (float32 except the register, float64) and the phases.
    power: np.ndarray
    energy: np.ndarray
    volt: np.ndarray
    curr: np.ndarray
    pf: np.ndarray
    freq: np.ndarray
    present: np.ndarray
    #: meters x history_days x 24 hourly energy [kWh] before the day, and the register at each
    #: hour end (float64).
    hist_kwh: np.ndarray
    hist_register: np.ndarray

    @property
    def meters(self) -> int:
        return int(self.power.shape[0])

    @property
    def hist_interval_kwh(self) -> np.ndarray:
        """meters x 7 x 96: the last 7 history days at 15 minutes (each hour split in four)."""
        last = self.hist_kwh[:, -7:, :]
        out: np.ndarray = np.repeat(last, 4, axis=2) / np.float32(4)
        return out

    def day_frame(self) -> pd.DataFrame:
        """The judged day as a sorted long canonical frame (meter, then time; categorical
        meter ids), as a columnar store read returns it."""
        n = self.meters
        ts = DAY + pd.to_timedelta(np.arange(1, INTERVALS + 1) * 900, unit="s")
        keep = self.present.ravel()
        ids = pd.Categorical.from_codes(
            np.repeat(np.arange(n), INTERVALS)[keep], categories=self.registry["meter_id"]
        )
        cols = {
            "meter_id": ids,
            "ts": pd.DatetimeIndex(np.tile(ts.as_unit("ns").asi8, n)[keep], tz="UTC"),
            "energy_import_kwh": self.energy.ravel()[keep],
            "energy_export_kwh": np.zeros(keep.sum()),
            "power_kw": self.power.ravel()[keep].astype(float),
            "reactive_power_kvar": (self.power * 0.3).ravel()[keep].astype(float),
        }
        for k, ph in enumerate(("l1", "l2", "l3")):
            cols[f"voltage_{ph}_v"] = self.volt[k].ravel()[keep].astype(float)
        for k, ph in enumerate(("l1", "l2", "l3")):
            cols[f"current_{ph}_a"] = self.curr[k].ravel()[keep].astype(float)
        cols["power_factor"] = self.pf.ravel()[keep].astype(float)
        cols["frequency_hz"] = self.freq.ravel()[keep].astype(float)
        return pd.DataFrame(cols)

    def history_frame(self) -> pd.DataFrame:
        """Hourly register reads of the history days (meter, ts, energy_import_kwh)."""
        n, d, _ = self.hist_register.shape
        start = DAY - pd.Timedelta(days=d)
        ts = start + pd.to_timedelta(np.arange(1, d * 24 + 1) * 3600, unit="s")
        return pd.DataFrame(
            {
                "meter_id": pd.Categorical.from_codes(
                    np.repeat(np.arange(n), d * 24), categories=self.registry["meter_id"]
                ),
                "ts": pd.DatetimeIndex(np.tile(ts.as_unit("ns").asi8, n), tz="UTC"),
                "energy_import_kwh": self.hist_register.reshape(-1),
            }
        )


def make_partition(
    meters: int, seed: int, history_days: int = 28, area_size: int = 200
) -> Partition:
    rng = np.random.default_rng(seed)
    n = meters
    n_areas = -(-n // area_size)
    area = np.arange(n) // area_size
    supply = np.r_[True, area[1:] != area[:-1]]
    ids = np.array([f"P{seed:03d}M{i:07d}" for i in range(n)], dtype=object)
    registry = pd.DataFrame(
        {
            "meter_id": ids,
            "role": np.where(supply, "transformer", "customer"),
            "transformer_id": [f"P{seed:03d}TA{a:05d}" for a in area],
            "customer_class": "residential",
            "phases": 3,
            "nominal_voltage_v": 220.0,
            "rated_current_a": np.where(supply, 100.0, 10.0),
            "max_current_a": np.where(supply, 400.0, 60.0),
            "ct_ratio": 1.0,
            "tariff": "",
            "last_calibration": "2025-01-01",
            "calibration_interval_days": 2920,
        }
    )
    # Load shape per hour and day type; per-meter scale and noise.
    h = np.arange(24)
    shape = (
        0.4 + 0.5 * np.exp(-0.5 * ((h - 8) / 1.5) ** 2) + 0.9 * np.exp(-0.5 * ((h - 19) / 2) ** 2)
    )
    scale = rng.uniform(0.3, 1.5, n).astype(np.float32)
    days = pd.date_range(DAY - pd.Timedelta(days=history_days), periods=history_days + 1, freq="D")
    level = np.where(days.day_of_week >= 5, 1.25, 1.0).astype(np.float32)
    kwh = (
        scale[:, None, None]
        * level[None, :, None]
        * shape[None, None, :].astype(np.float32)
        * rng.lognormal(0, 0.25, (n, history_days + 1, 24)).astype(np.float32)
    )
    # Supply meters: their area's customers as really consumed, plus the line loss.
    cust_sum = np.zeros((n_areas, history_days + 1, 24), dtype=np.float32)
    np.add.at(cust_sum, area[~supply], kwh[~supply])
    loss = rng.uniform(1.03, 1.06, n_areas).astype(np.float32)
    kwh[supply] = cust_sum[area[supply]] * loss[area[supply], None, None]
    # Thieves' meters register 40 % of it from the 10th history day on.
    thief = ~supply & (rng.random(n) < 0.002)
    kwh[thief, 10:, :] *= 0.4
    hist = kwh[:, :history_days, :]
    register0 = rng.uniform(1_000, 50_000, n)
    hist_register = register0[:, None, None] + np.cumsum(hist.reshape(n, -1), axis=1).reshape(
        hist.shape
    )
    # The judged day at 15 minutes: the hour's energy split in four with noise.
    day_kwh = np.repeat(kwh[:, history_days, :], 4, axis=1) / 4
    day_kwh = day_kwh * rng.lognormal(0, 0.05, day_kwh.shape).astype(np.float32)
    energy = hist_register[:, -1, -1][:, None] + np.cumsum(day_kwh.astype(float), axis=1)
    power = (day_kwh * 4).astype(np.float32)
    pf = np.clip(rng.normal(0.95, 0.01, (n, INTERVALS)), 0.9, 0.99).astype(np.float32)
    volt = (220 * (1 + rng.normal(0, 0.01, (3, n, INTERVALS)))).astype(np.float32)
    curr = (power[None] * 1000 / 3 / (volt * pf[None])).astype(np.float32)
    freq = (50 + rng.normal(0, 0.02, (n, INTERVALS))).astype(np.float32)
    present = rng.random((n, INTERVALS)) >= 0.001
    return Partition(
        registry,
        power,
        energy,
        volt,
        curr,
        pf,
        freq,
        present,
        hist.astype(np.float32),
        hist_register,
    )
