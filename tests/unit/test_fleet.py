"""Tests of the simulated meter fleet: registry, physics, registers, anomalies, determinism."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from meterwatch.core.registry import REGISTRY_COLUMNS, check_registry
from meterwatch.core.schema import READING_COLUMNS
from meterwatch.simulators.fleet import AnomalySpec, Fleet, generate

START = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday
UN = 220.0


def _pivot(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """ts × meter_id table of one column."""
    return df.pivot(index="ts", columns="meter_id", values=column)


@pytest.fixture(scope="module")
def day() -> tuple[Fleet, pd.DataFrame]:
    """The default fleet over one weekday, a snapshot every 5 minutes."""
    fleet = Fleet(start=START)
    return fleet, generate(fleet, START + timedelta(days=1), interval_s=300.0)


@pytest.fixture(scope="module")
def week() -> tuple[Fleet, pd.DataFrame]:
    """The default fleet over one week (coarser steps), a snapshot every 15 minutes."""
    fleet = Fleet(start=START, step_s=300.0)
    return fleet, generate(fleet, START + timedelta(days=7), interval_s=900.0)


# ---------------------------------------------------------------------------- registry


def test_registry_passes_contract_check_and_has_the_class_mix() -> None:
    fleet = Fleet(start=START)
    reg = fleet.registry
    checked = check_registry(reg)
    assert tuple(reg.columns[: len(REGISTRY_COLUMNS)]) == REGISTRY_COLUMNS
    assert {"model", "transport", "unit_id"} <= set(checked.columns)

    customers = reg[reg.role == "customer"]
    assert customers.customer_class.value_counts().to_dict() == {
        "residential": 30,
        "commercial": 10,
        "industrial": 6,
    }
    transformers = reg[reg.role == "transformer"]
    assert list(transformers.meter_id) == ["T01", "T02"]
    assert list(transformers.transformer_id) == ["TA01", "TA02"]
    assert (transformers.customer_class == "").all()
    assert (transformers.phases == 3).all() and (transformers.transport == "modbus").all()
    assert (transformers.ct_ratio > 1).all()
    # Every area has every class.
    per_area = customers.groupby("transformer_id").customer_class.nunique()
    assert per_area.to_dict() == {"TA01": 3, "TA02": 3}
    assert set(customers.transformer_id) == set(transformers.transformer_id)
    # Ids are readable and follow the class.
    assert customers.meter_id.str.fullmatch(r"[RCI]\d{4}").all()
    assert (customers.meter_id.str[0] == customers.customer_class.str[0].str.upper()).all()


def test_registry_electrical_properties_per_class() -> None:
    reg = Fleet(start=START).registry
    res = reg[reg.customer_class == "residential"]
    com = reg[reg.customer_class == "commercial"]
    ind = reg[reg.customer_class == "industrial"]
    assert (res.phases == 1).all() and (res.model == "eastron-sdm120").all()
    assert (res.ct_ratio == 1).all() and (res.rated_current_a == 5).all()
    assert (res.max_current_a == 60).all()
    assert (com.phases == 3).all() and (com.model == "eastron-sdm630").all()
    assert (com.ct_ratio == 1).all() and (com.max_current_a == 100).all()
    assert (ind.phases == 3).all() and (ind.model == "eastron-sdm630").all()
    assert ind.ct_ratio.isin([100, 200]).all() and (ind.max_current_a == 6).all()
    assert (reg.nominal_voltage_v == UN).all()
    # Nothing is overdue for calibration at the start.
    due = pd.to_datetime(reg.last_calibration) + pd.to_timedelta(
        reg.calibration_interval_days, unit="D"
    )
    assert (due > pd.Timestamp(START.date())).all()


def test_registry_transport_and_unit_ids() -> None:
    reg = Fleet(start=START, mqtt_share=0.2).registry
    mqtt = reg[reg.transport == "mqtt"]
    modbus = reg[reg.transport == "modbus"]
    assert len(mqtt) == round(0.2 * 46)
    assert (mqtt.role == "customer").all() and (mqtt.unit_id == 0).all()
    assert modbus.unit_id.is_unique and modbus.unit_id.between(1, 247).all()
    assert set(reg.transport) == {"modbus", "mqtt"}
    assert (Fleet(start=START, mqtt_share=0.0).registry.transport == "modbus").all()


def test_more_than_247_modbus_meters_spread_over_gateways() -> None:
    reg = Fleet(start=START, residential=300, transformers=3, mqtt_share=0.0).registry
    assert reg.unit_id.between(1, 247).all()
    assert not reg.duplicated(["gateway", "unit_id"]).any()
    assert set(reg.gateway) == {0, 1}


# ---------------------------------------------------------------------------- physics


@pytest.mark.parametrize("which", ["normal", "anomalies"])
def test_power_is_sum_of_phase_v_i_pf(which: str, day, anomaly_run) -> None:
    df = day[1] if which == "normal" else anomaly_run["faulty"][1]
    v = df[["voltage_l1_v", "voltage_l2_v", "voltage_l3_v"]].to_numpy()
    i = df[["current_l1_a", "current_l2_a", "current_l3_a"]].to_numpy()
    pf = df.power_factor.to_numpy()
    p = np.nansum(v * i, axis=1) * pf / 1000.0
    q = np.nansum(v * i, axis=1) * np.sin(np.arccos(pf)) / 1000.0
    np.testing.assert_allclose(df.power_kw, p, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(df.reactive_power_kvar, q, rtol=1e-6, atol=1e-9)


def test_snapshot_is_canonical(day) -> None:
    fleet, _ = day
    snap = fleet.snapshot()
    assert tuple(snap.columns) == READING_COLUMNS
    assert list(snap.meter_id) == list(fleet.registry.meter_id)
    assert (snap.ts == pd.Timestamp(fleet.now)).all()
    single = snap.meter_id.str.startswith("R").to_numpy()
    assert snap.loc[single, ["voltage_l2_v", "current_l3_a"]].isna().all().all()
    assert snap.loc[~single, ["voltage_l3_v", "current_l3_a"]].notna().all().all()


def test_registers_integrate_power_and_never_decrease(day) -> None:
    _, df = day
    energy = _pivot(df, "energy_import_kwh")
    power = _pivot(df, "power_kw")
    assert (energy.diff().iloc[1:] >= 0).all().all()
    assert (_pivot(df, "energy_export_kwh").diff().iloc[1:] == 0).all().all()
    hours = 300.0 / 3600.0
    integral = ((power.iloc[1:].to_numpy() + power.iloc[:-1].to_numpy()) / 2 * hours).sum(axis=0)
    delta = (energy.iloc[-1] - energy.iloc[0]).to_numpy()
    np.testing.assert_allclose(delta, integral, rtol=0.01)
    assert (energy.iloc[0] >= 1000).all() and (energy.iloc[0] <= 50000).all()


def test_transformer_energy_is_customers_plus_technical_loss(day) -> None:
    fleet, df = day
    reg = fleet.registry.set_index("meter_id")
    energy = _pivot(df, "energy_import_kwh")
    billed = (energy.iloc[-1] - energy.iloc[0]) * reg.ct_ratio  # primary [kWh]
    for area, rows in reg.groupby("transformer_id"):
        supplied = billed[rows.index[rows.role == "transformer"]].sum()
        consumed = billed[rows.index[rows.role == "customer"]].sum()
        assert 1.02 <= supplied / consumed <= 1.05, area


def test_values_stay_in_realistic_ranges(day) -> None:
    fleet, df = day
    reg = fleet.registry.set_index("meter_id")
    volts = df[["voltage_l1_v", "voltage_l2_v", "voltage_l3_v"]].stack().dropna()
    assert volts.between(0.95 * UN, 1.05 * UN).all()
    assert df.frequency_hz.between(49.8, 50.2).all()
    assert df.frequency_hz.std() > 0.001  # it does vary
    customer = df.meter_id.map(reg.role) == "customer"
    assert df.loc[customer, "power_factor"].between(0.9, 0.99).all()
    imax = df.meter_id.map(reg.max_current_a)
    for col in ("current_l1_a", "current_l2_a", "current_l3_a"):
        assert (df[col].dropna() <= imax[df[col].notna()]).all()
    assert (df.power_kw > 0).all()


def test_daily_load_shapes(day) -> None:
    fleet, df = day
    cls = df.meter_id.map(fleet.registry.set_index("meter_id").customer_class)
    hour = df.ts.dt.hour

    def mean(which: str, lo: int, hi: int) -> float:
        return float(df.power_kw[(cls == which) & hour.between(lo, hi - 1)].mean())

    assert mean("residential", 18, 22) > 2.0 * mean("residential", 1, 5)
    assert mean("residential", 6, 9) > 1.5 * mean("residential", 1, 5)
    assert mean("commercial", 10, 16) > 3.0 * mean("commercial", 0, 5)
    # Industrial: shifts, but a large base load around the clock.
    assert mean("industrial", 7, 13) > mean("industrial", 23, 24)
    assert mean("industrial", 23, 24) > 0.4 * mean("industrial", 7, 13)


def test_weekly_load_shapes(week) -> None:
    fleet, df = week
    cls = df.meter_id.map(fleet.registry.set_index("meter_id").customer_class)
    weekend = df.ts.dt.day_of_week >= 5
    midday = df.ts.dt.hour.between(10, 15)

    def mean(which: str, mask: pd.Series) -> float:
        return float(df.power_kw[(cls == which) & mask].mean())

    assert mean("residential", weekend) > 1.05 * mean("residential", ~weekend)
    assert mean("commercial", weekend & midday) < 0.5 * mean("commercial", ~weekend & midday)
    assert mean("industrial", weekend) < mean("industrial", ~weekend)


# ---------------------------------------------------------------------------- time


def test_same_seed_same_fleet_other_seed_other_fleet() -> None:
    end = START + timedelta(hours=6)
    specs = [AnomalySpec("consumption_spike", None, 3600.0), AnomalySpec("phase_break", None, 0)]
    a, b = Fleet(start=START, anomalies=specs), Fleet(start=START, anomalies=specs)
    pd.testing.assert_frame_equal(a.registry, b.registry)
    pd.testing.assert_frame_equal(a.labels(), b.labels())
    pd.testing.assert_frame_equal(generate(a, end), generate(b, end))
    c = Fleet(start=START, seed=7, anomalies=specs)
    assert not c.registry.equals(a.registry)
    assert not np.allclose(c.snapshot().power_kw, a.snapshot().power_kw)


def test_chunked_advance_gives_the_same_values() -> None:
    end = START + timedelta(hours=3)
    whole, chunked = Fleet(start=START), Fleet(start=START)
    initial = whole.snapshot().energy_import_kwh
    whole.advance(end)
    t = START
    for dt in np.random.default_rng(1).uniform(1.0, 200.0, 10_000):
        t = min(t + timedelta(seconds=float(dt)), end)
        chunked.advance(t)
        if t == end:
            break
    a, b = whole.snapshot(), chunked.snapshot()
    pd.testing.assert_frame_equal(
        a.drop(columns=["energy_import_kwh"]), b.drop(columns=["energy_import_kwh"])
    )
    np.testing.assert_allclose(
        b.energy_import_kwh - initial, a.energy_import_kwh - initial, rtol=1e-3
    )


def test_advance_to_the_past_is_a_no_op_and_naive_times_are_utc() -> None:
    fleet = Fleet(start=START.replace(tzinfo=None))
    assert fleet.now == START
    fleet.advance(START + timedelta(minutes=30))
    before = fleet.snapshot()
    fleet.advance(START + timedelta(minutes=10))
    fleet.advance(START + timedelta(minutes=30))
    assert fleet.now == START + timedelta(minutes=30)
    pd.testing.assert_frame_equal(before, fleet.snapshot())
    fleet.advance((START + timedelta(minutes=45)).replace(tzinfo=None))
    assert fleet.now == START + timedelta(minutes=45)


def test_generate_aligns_snapshots_to_the_interval_grid() -> None:
    fleet = Fleet(start=START)
    fleet.advance(START + timedelta(seconds=100))
    end = START + timedelta(hours=2, seconds=10)
    df = generate(fleet, end, interval_s=900.0)
    assert fleet.now == end
    expected = pd.date_range(START + timedelta(minutes=15), START + timedelta(hours=2), freq="900s")
    assert list(df.ts.unique()) == list(expected)
    assert (df.groupby("ts").meter_id.apply(list) == [list(fleet.registry.meter_id)] * 8).all()
    # On the grid: the current instant is included once, or not at all.
    aligned = Fleet(start=START)
    assert generate(aligned, START + timedelta(minutes=30)).ts.nunique() == 3
    assert generate(aligned, START + timedelta(hours=1), include_start=False).ts.nunique() == 2


# ---------------------------------------------------------------------------- anomalies

ANOMALIES = [
    AnomalySpec("phase_break", "C0003", at_s=3600.0, duration_s=3600.0),
    AnomalySpec("voltage_loss", "I0002", at_s=7200.0, duration_s=1800.0, magnitude=0.6),
    AnomalySpec("register_decrease", "R0005", at_s=10800.0),
    AnomalySpec("consumption_spike", "R0012", at_s=14400.0, duration_s=3600.0),
]


@pytest.fixture(scope="module")
def anomaly_run() -> dict[str, tuple[Fleet, pd.DataFrame]]:
    """The same fleet with and without the anomalies, 6 hours at 5-minute snapshots."""
    out = {}
    for name, specs in (("clean", []), ("faulty", ANOMALIES)):
        fleet = Fleet(start=START, anomalies=specs)
        out[name] = (fleet, generate(fleet, START + timedelta(hours=6), interval_s=300.0))
    return out


def _meter(df: pd.DataFrame, meter_id: str) -> pd.DataFrame:
    rows = df[df.meter_id == meter_id].set_index("ts")
    rows.index = (rows.index - pd.Timestamp(START)).total_seconds()
    return rows


def test_labels_describe_the_configured_anomalies(anomaly_run) -> None:
    fleet, _ = anomaly_run["faulty"]
    labels = fleet.labels()
    assert list(labels.columns) == ["type", "meter_id", "transformer_id", "starts_at", "ends_at"]
    assert list(labels.type) == [a.type for a in ANOMALIES]
    assert list(labels.meter_id) == [a.meter_id for a in ANOMALIES]
    area = fleet.registry.set_index("meter_id").transformer_id
    assert list(labels.transformer_id) == list(area[labels.meter_id])
    starts = [pd.Timestamp(START) + pd.Timedelta(seconds=a.at_s) for a in ANOMALIES]
    assert list(labels.starts_at) == starts
    durations = [3600.0, 1800.0, 0.0, 3600.0]
    assert list(labels.ends_at - labels.starts_at) == [pd.Timedelta(seconds=d) for d in durations]
    assert str(labels.starts_at.dtype) == "datetime64[ns, UTC]"
    assert anomaly_run["clean"][0].labels().empty


def test_phase_break(anomaly_run) -> None:
    faulty = _meter(anomaly_run["faulty"][1], "C0003")
    during = faulty.loc[3600:6900]
    assert (during.voltage_l2_v < 0.05 * UN).all() and (during.current_l2_a == 0).all()
    assert (during.voltage_l1_v > 0.95 * UN).all() and (during.current_l1_a > 0).all()
    outside = faulty.loc[faulty.index.difference(during.index)]
    assert (outside.voltage_l2_v > 0.95 * UN).all() and (outside.current_l2_a > 0).all()


def test_voltage_loss(anomaly_run) -> None:
    clean = _meter(anomaly_run["clean"][1], "I0002")
    faulty = _meter(anomaly_run["faulty"][1], "I0002")
    volts = faulty[["voltage_l1_v", "voltage_l2_v", "voltage_l3_v"]]
    during = volts.loc[7200:8700]
    low = during < 0.7 * UN
    assert (low.sum(axis=1) == 1).all()  # one phase, the same one throughout
    assert low.any().sum() == 1
    np.testing.assert_allclose(during[low].stack().dropna(), 0.6 * UN, rtol=0.01)
    # The current keeps flowing, so the meter registers less than the customer uses.
    phase = low.any().idxmax().replace("voltage", "current").replace("_v", "_a")
    assert (faulty.loc[7200:8700, phase] > 0.5 * clean.loc[7200:8700, phase]).all()
    assert (faulty.power_kw.loc[7200:8700] < clean.power_kw.loc[7200:8700]).all()
    outside = volts.loc[volts.index.difference(during.index)]
    assert (outside > 0.95 * UN).all().all()


def test_voltage_loss_shows_as_extra_area_loss(anomaly_run) -> None:
    def ratio(name: str) -> float:
        fleet, df = anomaly_run[name]
        reg = fleet.registry.set_index("meter_id")
        energy = _pivot(df, "energy_import_kwh")
        window = energy.loc[pd.Timestamp(START) + pd.Timedelta(seconds=7200) :].iloc[[0, 6]]
        billed = (window.iloc[1] - window.iloc[0]) * reg.ct_ratio
        area = reg.transformer_id == reg.transformer_id["I0002"]
        supplied = billed[area & (reg.role == "transformer")].sum()
        return float(supplied / billed[area & (reg.role == "customer")].sum())

    assert ratio("faulty") > ratio("clean") + 0.005


def test_register_decrease(anomaly_run) -> None:
    clean = _meter(anomaly_run["clean"][1], "R0005").energy_import_kwh
    faulty = _meter(anomaly_run["faulty"][1], "R0005").energy_import_kwh
    np.testing.assert_allclose(faulty.loc[:10500], clean.loc[:10500], rtol=1e-12)
    np.testing.assert_allclose(faulty.loc[10800:], clean.loc[10800:] - 50.0, rtol=1e-12)
    assert faulty.loc[10800] < faulty.loc[10500]
    assert (faulty.loc[10800:].diff().iloc[1:] > 0).all()  # keeps counting from the lower value


def test_consumption_spike(anomaly_run) -> None:
    clean = _meter(anomaly_run["clean"][1], "R0012").power_kw
    faulty = _meter(anomaly_run["faulty"][1], "R0012").power_kw
    # The load is raised to 4x the meter's usual (week-average) load, never lowered: the
    # measured power by max(1, 4 x usual shape / shape now) (scale and slow noise cancel).
    fleet = anomaly_run["faulty"][0]
    i = fleet._ids_c.index("R0012")
    s = clean.loc[14400:17700].index.to_numpy()
    factor = np.array([max(1.0, 4.0 * fleet.usual_shape()[i] / fleet.shape_at(t)[i]) for t in s])
    np.testing.assert_allclose(faulty.loc[14400:17700], factor * clean.loc[14400:17700], rtol=1e-9)
    assert (factor > 1).any()
    outside = clean.index.difference(clean.loc[14400:17700].index)
    np.testing.assert_allclose(faulty.loc[outside], clean.loc[outside], rtol=1e-9)


def test_unassigned_anomalies_pick_suitable_meters_deterministically() -> None:
    specs = [AnomalySpec(t, None, at_s=600.0) for t in ("phase_break", "voltage_loss")] * 3
    specs.append(AnomalySpec("consumption_spike", None, at_s=600.0))
    a, b = Fleet(start=START, anomalies=specs), Fleet(start=START, anomalies=specs)
    pd.testing.assert_frame_equal(a.labels(), b.labels())
    phases = a.registry.set_index("meter_id").phases
    assert (phases[a.labels().meter_id[:6]] == 3).all()
    assert a.labels().meter_id.is_unique  # different meters while there are enough
    assert all(spec.magnitude is not None for spec in a.anomalies)


@pytest.mark.parametrize(
    "spec",
    [
        AnomalySpec("phase_break", "R0001", at_s=0.0),  # single-phase
        AnomalySpec("voltage_loss", "T01", at_s=0.0),  # not a customer
        AnomalySpec("consumption_spike", "X9999", at_s=0.0),  # unknown
    ],
)
def test_anomaly_on_an_unsuitable_meter_is_refused(spec: AnomalySpec) -> None:
    with pytest.raises(ValueError, match=spec.meter_id or ""):
        Fleet(start=START, anomalies=[spec])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"type": "meltdown"},
        {"type": "phase_break", "magnitude": 4},
        {"type": "voltage_loss", "magnitude": 1.2},
        {"type": "consumption_spike", "magnitude": -1},
        {"type": "consumption_spike", "at_s": -5.0},
        {"type": "consumption_spike", "duration_s": 0.0},
    ],
)
def test_bad_anomaly_specs_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AnomalySpec(**{"meter_id": None, "at_s": 0.0, **kwargs})


# ------------------------------------------------------------------ post-hoc injections

from meterwatch.simulators.fleet import FAULT_TYPES, THEFT_ATTACKS, Injection, inject  # noqa: E402


@pytest.fixture(scope="module")
def three_days() -> tuple[Fleet, pd.DataFrame]:
    fleet = Fleet(start=START, step_s=900.0)
    return fleet, generate(fleet, START + timedelta(days=3), interval_s=900.0)


def _day_intervals(df: pd.DataFrame, meter: str, day: int) -> np.ndarray:
    """Interval energies of ``meter`` ending within day ``day`` (0-based) [kWh]."""
    m = df[df["meter_id"] == meter].sort_values("ts")
    d = np.diff(m["energy_import_kwh"].to_numpy())
    t = m["ts"].iloc[1:]
    lo = pd.Timestamp(START) + pd.Timedelta(days=day)
    sel = ((t > lo) & (t <= lo + pd.Timedelta(days=1))).to_numpy()
    return d[sel]


@pytest.mark.parametrize("attack", THEFT_ATTACKS)
def test_theft_attacks_change_only_the_registered_day(attack: str, three_days) -> None:
    fleet, df = three_days
    t0 = pd.Timestamp(START) + pd.Timedelta(days=1)
    out, reg, labels = inject(
        df, fleet.registry, [Injection(attack, "R0002", t0, t0 + pd.Timedelta(days=1))], seed=3
    )
    x = _day_intervals(df, "R0002", 1)
    y = _day_intervals(out, "R0002", 1)
    assert x.size == y.size == 96
    if attack == "h1":
        ratio = y / x
        assert np.allclose(ratio, ratio[0]) and 0.1 <= ratio[0] <= 0.8
    elif attack == "h2":
        zero = y == 0
        assert 16 <= zero.sum() <= 48 and np.array_equal(y[~zero], x[~zero])
        assert np.ptp(np.flatnonzero(zero)) == zero.sum() - 1  # one contiguous block
    elif attack == "h3":
        r = y / x
        assert r.min() >= 0.1 - 1e-9 and r.max() <= 0.8 + 1e-9 and r.std() > 0.1
    elif attack == "h4":
        r = y / x.mean()
        assert r.min() >= 0.1 - 1e-9 and r.max() <= 0.8 + 1e-9
    elif attack == "h5":
        assert np.allclose(y, x.mean())
    else:
        assert np.allclose(y, x[::-1])
    # Other days, other meters and the supply meter are untouched: area loss rises.
    for d in (0, 2):
        if attack in ("h1", "h2", "h3", "h4"):
            assert np.allclose(_day_intervals(out, "R0002", d), _day_intervals(df, "R0002", d))
    before = df.sort_values(["meter_id", "ts"]).reset_index(drop=True)
    others = (out["meter_id"] != "R0002").to_numpy()
    pd.testing.assert_frame_equal(
        out[others].reset_index(drop=True), before[others].reset_index(drop=True)
    )
    sup = out[out["meter_id"] == "T01"].sort_values("ts")["energy_import_kwh"].to_numpy()
    sup0 = df[df["meter_id"] == "T01"].sort_values("ts")["energy_import_kwh"].to_numpy()
    np.testing.assert_array_equal(sup, sup0)
    assert list(labels["type"]) == ["theft_suspected"] and list(labels["injection"]) == [attack]
    assert labels["transformer_id"].iat[0] == "TA01"


@pytest.mark.parametrize("kind", FAULT_TYPES)
def test_fault_injections_are_labelled(kind: str, three_days) -> None:
    fleet, df = three_days
    t0 = pd.Timestamp(START) + pd.Timedelta(hours=30)
    meter = "C0001" if kind != "zero_consumption" else "R0004"
    out, reg, labels = inject(
        df, fleet.registry, [Injection(kind, meter, t0, t0 + pd.Timedelta(hours=3))]
    )
    assert list(labels["type"]) == [kind]
    area_level = kind in ("outage", "transformer_overload")
    assert (labels["meter_id"].iat[0] is None) is area_level
    if kind == "calibration_due":
        due = pd.Timestamp(reg.set_index("meter_id").at[meter, "last_calibration"]) + pd.Timedelta(
            days=int(reg.set_index("meter_id").at[meter, "calibration_interval_days"])
        )
        assert due.date() == t0.date()
    else:
        assert not out.equals(df.sort_values(["meter_id", "ts"]).reset_index(drop=True))


def test_registry_has_transformer_ratings() -> None:
    fleet = Fleet(start=START)
    reg = fleet.registry.set_index("meter_id")
    assert reg.loc[reg["role"] == "transformer", "rated_kva"].gt(0).all()
    assert reg.loc[reg["role"] == "customer", "rated_kva"].isna().all()


def test_bad_injections_are_refused(three_days) -> None:
    fleet, df = three_days
    t0 = pd.Timestamp(START)
    with pytest.raises(ValueError, match="unknown"):
        Injection("h7", "R0001", t0, t0 + pd.Timedelta(hours=1))
    with pytest.raises(ValueError, match="after start"):
        Injection("h1", "R0001", t0, t0)
    with pytest.raises(ValueError, match="not in registry"):
        inject(df, fleet.registry, [Injection("h1", "X", t0, t0 + pd.Timedelta(hours=1))])
    with pytest.raises(ValueError, match="single-phase"):
        inject(
            df, fleet.registry, [Injection("current_loss", "R0001", t0, t0 + pd.Timedelta(hours=1))]
        )


# ------------------------------------------------------------------ billing-rule injections

from meterwatch.analytics.detectors.billing_rules import (  # noqa: E402
    ClockError,
    EnergyPowerMismatch,
    EstimationExcess,
    MeterRunaway,
    MeterStuck,
    MultiplierMismatch,
)
from meterwatch.analytics.detectors.equipment import TransformerOverload  # noqa: E402
from meterwatch.simulators.fleet import BILLING_FAULT_TYPES  # noqa: E402

_BILLING_DETECTOR = {
    "meter_stuck": MeterStuck,
    "meter_runaway": MeterRunaway,
    "energy_power_mismatch": EnergyPowerMismatch,
    "multiplier_mismatch": MultiplierMismatch,
    "clock_error": ClockError,
    "estimation_excess": EstimationExcess,
}


def _billing_span(kind: str) -> tuple[str, pd.Timestamp, pd.Timestamp]:
    """Meter and period of a billing injection into the three-day fleet."""
    day1 = pd.Timestamp(START) + pd.Timedelta(days=1)
    end = pd.Timestamp(START) + pd.Timedelta(days=3)
    hour = pd.Timedelta(hours=1)
    return {
        "meter_stuck": ("R0002", day1 + 9 * hour, day1 + 15 * hour),
        "meter_runaway": ("R0002", day1 + 12 * hour, day1 + 13 * hour),
        "energy_power_mismatch": ("R0002", day1 - hour, day1 + 25 * hour),
        "multiplier_mismatch": ("I0001", day1 - hour, day1 + 25 * hour),
        "clock_error": ("R0002", end - 3 * hour, end - 2 * hour),  # lead 1 h
        "estimation_excess": ("R0002", day1 - 4 * hour, day1 + 24 * hour),
    }[kind]


def _rows(df: pd.DataFrame, meter: str) -> pd.DataFrame:
    return df[df["meter_id"] == meter].sort_values("ts").reset_index(drop=True)


@pytest.mark.parametrize("kind", BILLING_FAULT_TYPES)
def test_billing_injections_change_the_data_and_are_found(kind: str, three_days) -> None:
    fleet, df = three_days
    meter, t0, t1 = _billing_span(kind)
    reg0 = fleet.registry.set_index("meter_id").loc[meter]
    out, reg, labels = inject(df, fleet.registry, [Injection(kind, meter, t0, t1)])
    # Labels: the type itself, on the meter, over the injected period (clock: open-ended).
    assert list(labels["type"]) == [kind] and list(labels["meter_id"]) == [meter]
    assert labels["starts_at"].iat[0] == t0
    assert (
        pd.isna(labels["ends_at"].iat[0])
        if kind == "clock_error"
        else labels["ends_at"].iat[0] == t1
    )
    a, b = _rows(df, meter), _rows(out, meter)
    others = (out["meter_id"] != meter).to_numpy()
    before = df.sort_values(["meter_id", "ts"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        out[others].reset_index(drop=True),
        before[before["meter_id"] != meter].reset_index(drop=True),
    )
    # The data change.
    if kind == "estimation_excess":
        gone = (a["ts"] > t0) & (a["ts"] < t1)
        assert len(b) == len(a) - int(gone.sum()) and gone.sum() >= 4 * 27
        pd.testing.assert_frame_equal(b, a[~gone].reset_index(drop=True))
    elif kind == "clock_error":
        moved = (a["ts"] >= t0).to_numpy()
        assert (b["ts"][moved] - a["ts"][moved] == t1 - t0).all()
        assert (b["ts"][~moved] == a["ts"][~moved]).all()
    else:
        win = ((a["ts"] > t0) & (a["ts"] <= t1)).to_numpy()
        d_a = np.diff(a["energy_import_kwh"].to_numpy(), prepend=np.nan)
        d_b = np.diff(b["energy_import_kwh"].to_numpy(), prepend=np.nan)
        if kind == "meter_stuck":
            assert np.all(d_b[win] == 0) and np.allclose(d_b[~win][1:], d_a[~win][1:])
            assert (b.loc[win, "current_l1_a"] >= 0.1 * float(reg0["rated_current_a"])).all()
        elif kind == "meter_runaway":
            limit = UN * float(reg0["max_current_a"]) * int(reg0["phases"]) * 0.25 / 1000
            assert np.all(d_b[win] > 1.2 * limit) and np.allclose(d_b[~win][1:], d_a[~win][1:])
        else:
            factor = 0.4 if kind == "energy_power_mismatch" else float(reg0["ct_ratio"])
            assert factor > 1 or kind == "energy_power_mismatch"
            inside = ((a["ts"] >= t0) & (a["ts"] <= t1)).to_numpy()
            np.testing.assert_allclose(b["power_kw"][inside], a["power_kw"][inside] * factor)
            np.testing.assert_array_equal(b["energy_import_kwh"], a["energy_import_kwh"])
    # The matching detector finds it on the injected data, not on the clean data.
    det = _BILLING_DETECTOR[kind]()
    found = det.detect(out, reg)
    hit = found[found["meter_id"] == meter]
    assert len(hit) >= 1, found
    if kind != "clock_error":  # a clock error's label is open-ended
        assert (hit["starts_at"] <= t1 + pd.Timedelta(hours=2)).all()
    assert (hit["ends_at"].isna() | (hit["ends_at"] >= t0 - pd.Timedelta(hours=2))).all()
    assert set(found["meter_id"]) == {meter}
    assert det.detect(df, fleet.registry).empty


def test_clock_error_reference_is_every_other_meter(three_days) -> None:
    # The reference is the latest read of every *other* meter. Documented limitation: meters
    # ahead together hide each other (each is the other's reference). A "main group of the
    # fleet" reference found both here but raised false clock_error alerts in the live service,
    # where MQTT meters (current) and Modbus meters (polls spread, some skipped) form two groups
    # more than one interval apart (tests/test_end_to_end.py), so it was not kept.
    fleet, df = three_days
    t0 = pd.Timestamp(START) + pd.Timedelta(days=3) - pd.Timedelta(hours=3)
    one = [Injection("clock_error", "R0002", t0, t0 + pd.Timedelta(hours=1))]
    out, reg, _ = inject(df, fleet.registry, one)
    found = ClockError().detect(out, reg)
    assert list(found["meter_id"]) == ["R0002"]
    assert found["evidence"].iat[0]["lead_s"] == 3600.0
    two = one + [Injection("clock_error", "C0003", t0, t0 + pd.Timedelta(hours=1))]
    out, reg, _ = inject(df, fleet.registry, two)
    assert ClockError().detect(out, reg).empty  # the limitation, pinned


def test_multiplier_mismatch_needs_a_ct_meter(three_days) -> None:
    fleet, df = three_days
    t0 = pd.Timestamp(START)
    with pytest.raises(ValueError, match="ct_ratio 1, needs > 1"):
        inject(
            df,
            fleet.registry,
            [Injection("multiplier_mismatch", "R0001", t0, t0 + pd.Timedelta(days=1))],
        )


def test_transformer_overload_keeps_the_supply_register_consistent(
    three_days, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the overload injection used to lift only the supply meter's power, so
    # energy_power_mismatch fired on the (clean) supply meter's day.
    import meterwatch.simulators.fleet as sim

    fleet, df = three_days
    t0 = pd.Timestamp(START) + pd.Timedelta(hours=30)
    inj = [Injection("transformer_overload", "R0002", t0, t0 + pd.Timedelta(hours=3))]
    out, reg, _ = inject(df, fleet.registry, inj)
    assert not TransformerOverload().detect(out, reg).empty
    sup_a, sup_b = _rows(df, "T01"), _rows(out, "T01")
    gain = sup_b["energy_import_kwh"].iat[-1] - sup_a["energy_import_kwh"].iat[-1]
    assert gain > 0
    assert EnergyPowerMismatch().detect(out, reg).empty
    # Without the register update the rule does fire: the test can tell the difference.
    monkeypatch.setattr(sim, "_add_power_energy", lambda *a, **k: None)
    out2, reg2, _ = inject(df, fleet.registry, inj)
    assert set(EnergyPowerMismatch().detect(out2, reg2)["meter_id"]) == {"T01"}
