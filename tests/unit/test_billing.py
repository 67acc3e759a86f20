"""Billing determinants (analytics/billing.py), tariff config and the billing-error detectors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from meterwatch.analytics.billing import billing_determinants, minute_table, tou_buckets
from meterwatch.analytics.detectors.billing_rules import BILLING_DETECTORS
from meterwatch.analytics.suite import run_detectors
from meterwatch.config import parse_config
from meterwatch.core.errors import ConfigError
from meterwatch.core.registry import check_registry
from meterwatch.simulators.fleet import Fleet, generate

TZ = "Asia/Shanghai"  # UTC+8, no DST
CN_TOU = [
    {"name": "valley", "label": "谷", "start": "23:00", "end": "07:00"},
    {"name": "flat", "label": "平", "start": "07:00", "end": "08:00"},
    {"name": "peak", "label": "峰", "start": "08:00", "end": "11:00"},
    {"name": "flat", "label": "平", "start": "11:00", "end": "18:00"},
    {"name": "peak", "label": "峰", "start": "18:00", "end": "19:00"},
    {"name": "sharp", "label": "尖峰", "start": "19:00", "end": "21:00"},
    {"name": "peak", "label": "峰", "start": "21:00", "end": "23:00"},
]
Q = pd.Timedelta(minutes=15)


def registry(ids: tuple[str, ...] = ("A",), tariff: str = "cn") -> pd.DataFrame:
    rows = [
        {
            "meter_id": m,
            "role": "customer",
            "transformer_id": "T1",
            "customer_class": "residential",
            "phases": 1,
            "nominal_voltage_v": 220.0,
            "rated_current_a": 5.0,
            "max_current_a": 60.0,
            "ct_ratio": 1.0,
            "tariff": tariff,
            "last_calibration": "2025-06-01",
            "calibration_interval_days": 3650,
        }
        for m in ids
    ]
    return check_registry(pd.DataFrame(rows))


def intervals(
    start_local: str, kwh: list[float], quality: list[str] | None = None, meter: str = "A"
) -> pd.DataFrame:
    t0 = pd.Timestamp(start_local, tz=TZ).tz_convert("UTC")
    n = len(kwh)
    starts = pd.DatetimeIndex([t0 + k * Q for k in range(n)])
    return pd.DataFrame(
        {
            "meter_id": meter,
            "interval_start": starts,
            "ts": starts + Q,
            "kwh": kwh,
            "quality": quality or ["actual"] * n,
            "method": "register_delta",
            "reasons": "",
            "rule_set_version": "t",
            "data_version": 1,
        }
    )


# ------------------------------------------------------------------------------- TOU


@pytest.mark.parametrize(
    ("local_start", "bucket"),
    [
        ("2026-01-05 22:45", "peak"),  # last interval before the valley
        ("2026-01-05 23:00", "valley"),  # valley starts (inclusive)
        ("2026-01-05 23:45", "valley"),  # last interval of the local day
        ("2026-01-06 00:00", "valley"),  # after midnight, same period
        ("2026-01-06 06:45", "valley"),  # last valley interval
        ("2026-01-06 07:00", "flat"),  # valley end is exclusive
        ("2026-01-06 18:45", "peak"),
        ("2026-01-06 19:00", "sharp"),
        ("2026-01-06 20:45", "sharp"),
        ("2026-01-06 21:00", "peak"),
    ],
)
def test_tou_bucket_edges_and_midnight(local_start: str, bucket: str) -> None:
    start = pd.Series([pd.Timestamp(local_start, tz=TZ).tz_convert("UTC")])
    assert list(tou_buckets(start, CN_TOU, TZ)) == [bucket]


def test_tou_determinants_across_midnight() -> None:
    # 22:00 local to 08:00 local next day: 1 kWh per interval (40 intervals).
    iv = intervals("2026-01-05 22:00", [1.0] * 40)
    det = billing_determinants(
        iv,
        registry(),
        {"cn": CN_TOU},
        start=iv["interval_start"].min(),
        end=iv["ts"].max(),
        timezone=TZ,
    )
    row = det.iloc[0]
    # 22:00-23:00 peak (4), 23:00-07:00 valley (32), 07:00-08:00 flat (4).
    assert (row["kwh_peak"], row["kwh_valley"], row["kwh_flat"], row["kwh_sharp"]) == (
        4.0,
        32.0,
        4.0,
        0.0,
    )
    assert row["total_kwh"] == 40.0
    assert list(det.columns[5:9]) == ["kwh_valley", "kwh_flat", "kwh_peak", "kwh_sharp"]


def test_minute_table_must_cover_the_day_once() -> None:
    assert (minute_table(CN_TOU) == "valley").sum() == 8 * 60
    with pytest.raises(ValueError, match="07:00 is not covered"):
        minute_table([{"name": "a", "start": "00:00", "end": "07:00"}])
    with pytest.raises(ValueError, match="06:00 is covered twice"):
        minute_table(
            [
                {"name": "a", "start": "00:00", "end": "07:00"},
                {"name": "b", "start": "06:00", "end": "24:00"},
            ]
        )


def test_tariff_config_is_checked_by_field_path() -> None:
    ok = parse_config({"simulator": {"enabled": True}, "tariffs": {"cn": {"periods": CN_TOU}}})
    assert ok.tariffs["cn"].periods[5].label == "尖峰"
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "simulator": {"enabled": True},
                "tariffs": {"cn": {"periods": [{"name": "a", "start": "00:00", "end": "23:00"}]}},
            }
        )
    assert any(path == "tariffs.cn" and "23:00" in msg for path, msg in err.value.problems)
    with pytest.raises(ConfigError) as err:
        parse_config({"simulator": {"enabled": True}, "vee": {"interval": "7m"}})
    assert any(path == "vee.interval" for path, _ in err.value.problems)


def test_shipped_config_covers_the_simulated_tariffs() -> None:
    from meterwatch.config import load_config

    cfg = load_config("config.yaml")
    fleet = Fleet(start=pd.Timestamp("2026-01-05T00:00Z").to_pydatetime(), seed=1)
    used = set(fleet.registry["tariff"]) - {""}
    assert used and used <= set(cfg.tariffs)
    assert [p.label for p in cfg.tariffs["residential-tou"].periods][5] == "尖峰"


# ---------------------------------------------------------------------- demand, holds


def test_max_demand_over_fixed_15_minute_and_hourly_windows() -> None:
    kwh = [0.5, 0.5, 2.0, 0.5, 1.0, 1.0, 1.0, 1.0]  # 00:00-02:00 local
    iv = intervals("2026-01-06 00:00", kwh)
    kw = {"start": iv["interval_start"].min(), "end": iv["ts"].max(), "timezone": TZ}
    det = billing_determinants(iv, registry(), {"cn": CN_TOU}, **kw)
    assert det["max_demand_kw"].iloc[0] == 8.0  # 2 kWh in 15 min
    assert det["max_demand_at"].iloc[0] == iv["interval_start"].iloc[2]
    hourly = billing_determinants(iv, registry(), {"cn": CN_TOU}, demand_window_s=3600, **kw)
    assert hourly["max_demand_kw"].iloc[0] == 4.0  # second hour: 4 kWh
    with pytest.raises(ValueError, match="multiple"):
        billing_determinants(iv, registry(), {"cn": CN_TOU}, demand_window_s=1000, **kw)


@pytest.mark.parametrize(
    ("estimated", "hold"),
    [(2, False), (3, True)],  # 2 of 100 = 2 % is at the limit, 3 % is above it
)
def test_hold_on_estimated_share(estimated: int, hold: bool) -> None:
    quality = ["estimated"] * estimated + ["actual"] * (100 - estimated)
    iv = intervals("2026-01-06 00:00", [1.0] * 100, quality)
    det = billing_determinants(
        iv,
        registry(),
        {"cn": CN_TOU},
        start=iv["interval_start"].min(),
        end=iv["ts"].max(),
        timezone=TZ,
    )
    row = det.iloc[0]
    assert row["intervals_estimated"] == estimated and row["intervals_actual"] == 100 - estimated
    assert row["estimated_share"] == pytest.approx(estimated / 100)
    assert row["actual_share"] == pytest.approx(1 - estimated / 100)
    assert bool(row["hold"]) == hold
    assert row["hold_reasons"] == (f"estimated share {estimated:.2f} % > limit 2 %" if hold else "")


def test_hold_reasons_open_alerts_and_missing() -> None:
    iv = pd.concat(
        [
            intervals("2026-01-06 00:00", [1.0] * 4, meter="A"),
            intervals(
                "2026-01-06 00:00",
                [1.0, np.nan, 1.0, 1.0],
                ["actual", "missing", "actual", "actual"],
                meter="B",
            ),
            intervals("2026-01-06 00:00", [1.0] * 4, meter="C"),
        ],
        ignore_index=True,
    )
    kw = {"start": iv["interval_start"].min(), "end": iv["ts"].max(), "timezone": TZ}
    reg = registry(("A", "B", "C"))
    det = billing_determinants(
        iv, reg, {"cn": CN_TOU}, open_billing_alerts={"A": ["meter_stuck", "clock_error"]}, **kw
    ).set_index("meter_id")
    assert det.loc["A", "hold_reasons"] == "open billing alert: clock_error, meter_stuck"
    assert det.loc["B", "hold_reasons"] == "1 missing interval(s)"
    assert det.loc["B", "total_kwh"] == 3.0
    assert not det.loc["C", "hold"]
    as_set = billing_determinants(iv, reg, {"cn": CN_TOU}, open_billing_alerts={"C"}, **kw)
    assert list(as_set.loc[as_set["hold"], "meter_id"]) == ["B", "C"]


def test_unknown_tariff_and_meters_without_tariff() -> None:
    iv = intervals("2026-01-06 00:00", [1.0] * 4)
    kw = {"start": iv["interval_start"].min(), "end": iv["ts"].max(), "timezone": TZ}
    with pytest.raises(ValueError, match="tariff\\(s\\) other of meter\\(s\\) A"):
        billing_determinants(iv, registry(tariff="other"), {"cn": CN_TOU}, **kw)
    det = billing_determinants(iv, registry(tariff=""), {"cn": CN_TOU}, **kw)
    assert det["total_kwh"].iloc[0] == 4.0 and np.isnan(det["kwh_valley"].iloc[0])


def test_period_selects_intervals_inside_it() -> None:
    iv = intervals("2026-01-06 00:00", [1.0] * 8)
    det = billing_determinants(
        iv,
        registry(),
        {"cn": CN_TOU},
        start=iv["interval_start"].iloc[2],
        end=iv["ts"].iloc[5],
        timezone=TZ,
    )
    assert det["intervals"].iloc[0] == 4 and det["total_kwh"].iloc[0] == 4.0


# -------------------------------------------------------------------- billing detectors


def test_billing_detectors_silent_on_a_clean_simulated_fleet() -> None:
    """15-minute polls at scattered offsets, a few missed: no billing-error finding."""
    t0 = pd.Timestamp("2026-01-05T00:00:00Z").to_pydatetime()
    fleet = Fleet(start=t0, residential=8, commercial=3, industrial=3, transformers=1, seed=3)
    r = generate(fleet, t0 + pd.Timedelta(days=8), interval_s=300)
    # Each meter is polled every 15 min at its own offset (a 5-minute sub-grid) ...
    offset = r["meter_id"].map({m: k % 3 for k, m in enumerate(fleet.registry["meter_id"])})
    minute = (r["ts"] - pd.Timestamp(t0)).dt.total_seconds() // 300 % 3
    r = r[minute == offset]
    # ... and 2 % of the polls are lost.
    r = r.sample(frac=0.98, random_state=1).sort_values(["ts", "meter_id"])
    found = run_detectors([cls() for cls in BILLING_DETECTORS], r, fleet.registry)
    assert found.empty, found[["type", "meter_id", "summary"]].to_string()
