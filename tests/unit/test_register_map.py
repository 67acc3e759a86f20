"""Register maps: load-time checks, read planning, decode/encode, and the built-in vendor maps."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterwatch.core.errors import MapError
from meterwatch.core.schema import READING_FIELDS
from meterwatch.protocols.modbus_types import BYTE_ORDERS, REGISTER_COUNT, decode
from meterwatch.protocols.register_map import (
    MapField,
    ReadBlock,
    RegisterMap,
    available_models,
    load_map,
    load_map_file,
    parse_map,
)

BUILTIN = ("chint-dtsu666", "eastron-sdm120", "eastron-sdm630", "schneider-pm5300")


def doc(fields: dict[str, Any], **top: Any) -> dict[str, Any]:
    """A map document with sensible defaults around ``fields``."""
    return {"address_base": 0, "byte_order": "ABCD", "table": "input", **top, "fields": fields}


def f32(address: int, **extra: Any) -> dict[str, Any]:
    return {"address": address, "type": "float32", **extra}


# --- load-time checks -------------------------------------------------------------------------


def test_valid_map_parses_with_defaults_and_base() -> None:
    rmap = parse_map(
        "m",
        doc(
            {
                "voltage_l1_v": f32(3028),
                "energy_import_kwh": {"address": 3204, "type": "int64", "scale": 0.001},
                "power_kw": f32(3060, table="input", byte_order="CDAB"),
            },
            address_base=1,
            table="holding",
            description="d",
            source="s",
        ),
    )
    by_name = {f.name: f for f in rmap.fields}
    assert by_name["voltage_l1_v"] == MapField(
        "voltage_l1_v", 3027, "float32", "ABCD", table="holding"
    )
    assert by_name["energy_import_kwh"].address == 3203
    assert by_name["energy_import_kwh"].count == 4
    assert by_name["energy_import_kwh"].scale == 0.001
    assert (by_name["power_kw"].table, by_name["power_kw"].order) == ("input", "CDAB")
    assert (rmap.model, rmap.description, rmap.source, rmap.address_base) == ("m", "d", "s", 1)
    assert (rmap.max_registers, rmap.max_gap) == (125, 16)


@pytest.mark.parametrize(
    ("fields", "top", "message"),
    [
        (
            {"power_kw": f32(0x34, count=1)},
            {},
            "register map eastron-sdm630.power_kw: type float32 needs 2 registers "
            "but count: 1 was given",
        ),
        (
            {"voltage_l1_v": f32(0), "power_kw": f32(1)},
            {},
            "register map eastron-sdm630.power_kw: overlaps voltage_l1_v (registers 0-1 vs 1-2)",
        ),
        (
            # the numbers are the ones written in the map, whatever the base
            {"energy_import_kwh": {"address": 3204, "type": "int64"}, "power_kw": f32(3207)},
            {"address_base": 1},
            "eastron-sdm630.power_kw: overlaps energy_import_kwh (registers 3204-3207 vs 3207-3208)",
        ),
        (
            # a long field followed by one it swallows whole
            {"energy_import_kwh": {"address": 10, "type": "float64"}, "power_kw": f32(11)},
            {},
            "power_kw: overlaps energy_import_kwh (registers 10-13 vs 11-12)",
        ),
        ({"power_kw": {"address": 0, "type": "float16"}}, {}, "power_kw: unknown type 'float16'"),
        ({"power_kw": f32(0, byte_order="ABDC")}, {}, "power_kw: unknown byte_order 'ABDC'"),
        ({"power_kw": f32(0, table="coil")}, {}, "power_kw: unknown table 'coil'"),
        ({"power_kw": f32(0)}, {"byte_order": "little"}, "unknown byte_order 'LITTLE'"),
        ({"power_kw": f32(0, scale=0)}, {}, "power_kw: scale: 0"),
        ({"power_kw": f32(0, scale="x")}, {}, "power_kw: scale must be a number, got 'x'"),
        (
            {"power_kw": f32(65535)},
            {},
            "power_kw: address 65535 (float32, 2 registers) ends at protocol address 65536",
        ),
        (
            {"power_kw": f32(0)},
            {"address_base": 1},
            "power_kw: address 0 with address_base 1 gives protocol address -1",
        ),
        ({"power_kw": {"type": "float32"}}, {}, "power_kw: missing required key 'address'"),
        ({"power_kw": {"address": 0}}, {}, "power_kw: missing required key 'type'"),
        ({"power_kw": {"adress": 0, "type": "float32"}}, {}, "power_kw: unknown key(s) adress"),
        ({"power_kw": f32("0x34")}, {}, "power_kw: address must be a whole number, got '0x34'"),
        (
            {"power_kw": {"address": 0, "type": "int64"}},
            {"max_registers": 2},
            "power_kw: type int64 needs 4 registers but max_registers is 2",
        ),
        (
            {"power_kw": f32(0)},
            {"max_registers": 126},
            "max_registers must be a whole number 1..125",
        ),
        ({"power_kw": f32(0)}, {"max_gap": -1}, "max_gap must be a whole number >= 0, got -1"),
        ({"power_kw": f32(0)}, {"model": "other"}, "model: 'other' does not match"),
        ({"power_kw": f32(0)}, {"adress_base": 0}, "unknown key(s) adress_base"),
        ({}, {}, "fields must be a non-empty mapping"),
    ],
)
def test_load_time_checks(fields: dict[str, Any], top: dict[str, Any], message: str) -> None:
    with pytest.raises(MapError, match=re.escape(message)):
        parse_map("eastron-sdm630", doc(fields, **top))


def test_unknown_quantity_names_the_allowed_ones() -> None:
    with pytest.raises(MapError) as info:
        parse_map("m", doc({"voltage_v": f32(0)}))
    message = str(info.value)
    assert message.startswith("register map m.voltage_v: not a canonical quantity; allowed: ")
    assert all(name in message for name in READING_FIELDS)
    assert info.value.map_name == "m" and info.value.field == "voltage_v"


@pytest.mark.parametrize("missing", ["fields", "address_base"])
def test_missing_required_map_keys(missing: str) -> None:
    data = doc({"power_kw": f32(0)})
    del data[missing]
    with pytest.raises(MapError, match=f"register map m: missing required key '{missing}'"):
        parse_map("m", data)


def test_same_address_in_different_tables_is_no_overlap() -> None:
    rmap = parse_map("m", doc({"power_kw": f32(0), "voltage_l1_v": f32(0, table="holding")}))
    assert {(b.table, b.start) for b in rmap.plan()} == {("input", 0), ("holding", 0)}


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(MapError, match="power_kw: unknown type 'int8'"):
        RegisterMap("m", "", "", 0, (MapField("power_kw", 0, "int8", "ABCD"),))


def test_duplicate_yaml_field_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup-map.yaml"
    path.write_text(
        "address_base: 0\n"
        "fields:\n"
        "  power_kw: {address: 0x0034, type: float32}\n"
        "  voltage_l1_v: {address: 0x0000, type: float32}\n"
        "  power_kw: {address: 0x0036, type: float32}\n"
    )
    with pytest.raises(
        MapError, match="register map dup-map: duplicate key 'power_kw' on lines 3 and 5"
    ):
        load_map_file(path)


def test_duplicate_yaml_top_level_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(
        "address_base: 0\nmax_gap: 4\nfields: {power_kw: {address: 0, type: float32}}\nmax_gap: 8\n"
    )
    with pytest.raises(MapError, match="duplicate key 'max_gap' on lines 2 and 4"):
        load_map_file(path)


def test_load_map_file_uses_file_name_as_model(tmp_path: Path) -> None:
    path = tmp_path / "my-meter.yaml"
    path.write_text(
        "address_base: 0\nfields:\n  power_kw: {address: 0x10, type: int32, scale: 0.001}\n"
    )
    rmap = load_map_file(path)
    assert rmap.model == "my-meter"
    assert rmap.fields == (MapField("power_kw", 16, "int32", "ABCD", scale=0.001),)


def test_invalid_yaml_is_a_map_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("fields: {power_kw: [\n")
    with pytest.raises(MapError, match="register map broken: not valid YAML"):
        load_map_file(path)


# --- planning ---------------------------------------------------------------------------------


def _plan(rmap: RegisterMap, **kw: Any) -> list[tuple[str, int, int, tuple[str, ...]]]:
    return [(b.table, b.start, b.count, tuple(f.name for f in b.fields)) for b in rmap.plan(**kw)]


def test_plan_merges_neighbours_into_one_block() -> None:
    rmap = parse_map(
        "m", doc({"voltage_l2_v": f32(2), "voltage_l1_v": f32(0), "current_l1_a": f32(6)})
    )
    assert _plan(rmap) == [("input", 0, 8, ("voltage_l1_v", "voltage_l2_v", "current_l1_a"))]


def test_plan_splits_at_max_registers() -> None:
    fields = {
        "voltage_l1_v": f32(0),
        "voltage_l2_v": f32(2),
        "voltage_l3_v": f32(4),
        "current_l1_a": f32(6),
    }
    rmap = parse_map("m", doc(fields, max_registers=4))
    assert _plan(rmap) == [
        ("input", 0, 4, ("voltage_l1_v", "voltage_l2_v")),
        ("input", 4, 4, ("voltage_l3_v", "current_l1_a")),
    ]
    # a block may be exactly max_registers long, never longer
    assert all(b.count <= 4 for b in rmap.plan())
    assert _plan(rmap, max_registers=8) == [
        ("input", 0, 8, ("voltage_l1_v", "voltage_l2_v", "voltage_l3_v", "current_l1_a"))
    ]


def test_plan_splits_at_gaps_larger_than_max_gap() -> None:
    # power_kw (20-21) leaves registers 2..19 unused after voltage_l1_v: a gap of 18
    rmap = parse_map("m", doc({"voltage_l1_v": f32(0), "power_kw": f32(20)}))
    assert _plan(rmap) == [("input", 0, 2, ("voltage_l1_v",)), ("input", 20, 2, ("power_kw",))]
    assert _plan(rmap, max_gap=17) == _plan(rmap)
    assert _plan(rmap, max_gap=18) == [("input", 0, 22, ("voltage_l1_v", "power_kw"))]


def test_plan_uses_the_maps_own_limits_unless_overridden() -> None:
    rmap = parse_map("m", doc({"voltage_l1_v": f32(0), "power_kw": f32(4)}, max_gap=0))
    assert len(rmap.plan()) == 2
    assert len(rmap.plan(max_gap=2)) == 1
    wide = parse_map("m", doc({"voltage_l1_v": f32(0), "power_kw": f32(4)}, max_gap=2))
    assert len(wide.plan()) == 1
    assert len(wide.plan(max_registers=5)) == 2


def test_plan_override_that_a_field_cannot_fit_is_refused() -> None:
    rmap = parse_map("m", doc({"energy_import_kwh": {"address": 0, "type": "float64"}}))
    with pytest.raises(
        MapError,
        match="energy_import_kwh: type float64 needs 4 registers, more than max_registers: 3",
    ):
        rmap.plan(max_registers=3)
    with pytest.raises(MapError, match="max_gap must be"):
        rmap.plan(max_gap=-5)


@pytest.mark.parametrize("model", ["eastron-sdm630", "eastron-sdm120"])
def test_eastron_maps_are_read_in_one_request(model: str) -> None:
    blocks = load_map(model).plan()
    assert [(b.table, b.start, b.count) for b in blocks] == [("input", 0x0000, 76)]
    assert len(blocks[0].fields) == len(load_map(model).fields)


@pytest.mark.parametrize("model", BUILTIN)
def test_builtin_plans_cover_every_field_once(model: str) -> None:
    rmap = load_map(model)
    blocks = rmap.plan()
    covered = [f for b in blocks for f in b.fields]
    assert sorted(f.name for f in covered) == sorted(f.name for f in rmap.fields)
    for b in blocks:
        assert b.count <= rmap.max_registers
        assert all(b.start <= f.address and f.end < b.start + b.count for f in b.fields)


# --- decode / encode --------------------------------------------------------------------------


def test_decode_block_applies_scale_and_offset() -> None:
    rmap = parse_map(
        "m",
        doc(
            {
                "voltage_l1_v": {"address": 0, "type": "uint16", "scale": 0.1},
                "frequency_hz": {"address": 1, "type": "int16", "scale": 0.01, "offset": 50},
                "power_kw": f32(4, scale=0.001),
            }
        ),
    )
    (block,) = rmap.plan()
    assert block == ReadBlock("input", 0, 6, block.fields)
    values = rmap.decode_block(block, [2301, 0xFFFE, 0, 0, 0x4548, 0x0000])  # 3200.0 W
    assert values == pytest.approx({"voltage_l1_v": 230.1, "frequency_hz": 49.98, "power_kw": 3.2})
    assert rmap.decode({block: [2301, 0xFFFE, 0, 0, 0x4548, 0x0000]}) == values


def test_decode_block_refuses_wrong_register_count() -> None:
    rmap = parse_map("m", doc({"voltage_l1_v": f32(0), "current_l1_a": f32(6)}))
    (block,) = rmap.plan()
    with pytest.raises(
        ValueError, match="register map m: block input 0\\+8 needs 8 registers, got 7"
    ):
        rmap.decode_block(block, [0] * 7)


def test_decode_unions_blocks() -> None:
    rmap = parse_map("m", doc({"voltage_l1_v": f32(0), "power_kw": f32(100)}))
    blocks = rmap.plan()
    assert len(blocks) == 2
    values = rmap.decode({b: [0x4366, 0x0000] for b in blocks})
    assert values == {"voltage_l1_v": 230.0, "power_kw": 230.0}


def test_encode_skips_missing_and_nan_and_rounds_integers() -> None:
    rmap = parse_map(
        "m",
        doc(
            {
                "voltage_l1_v": {"address": 0, "type": "uint16", "scale": 0.1},
                "power_kw": {"address": 2, "type": "int32", "scale": 0.001},
                "current_l1_a": f32(6, table="holding"),
            }
        ),
    )
    out = rmap.encode(
        {"voltage_l1_v": 230.06, "power_kw": -3.2, "current_l1_a": math.nan, "frequency_hz": 50.0}
    )
    assert out == {("input", 0): [2301], ("input", 2): [0xFFFF, 0xF380]}  # -3200 W


def test_encode_out_of_range_names_the_field() -> None:
    rmap = parse_map("m", doc({"voltage_l1_v": {"address": 0, "type": "uint16", "scale": 0.1}}))
    with pytest.raises(ValueError, match="register map m.voltage_l1_v: cannot encode 7000"):
        rmap.encode({"voltage_l1_v": 7000})


REALISTIC = {
    "energy_import_kwh": 12345.6,
    "energy_export_kwh": 321.4,
    "power_kw": -3.2,  # exporting
    "reactive_power_kvar": 0.75,
    "voltage_l1_v": 230.1,
    "voltage_l2_v": 229.4,
    "voltage_l3_v": 231.7,
    "current_l1_a": 12.5,
    "current_l2_a": 8.25,
    "current_l3_a": 0.5,
    "power_factor": 0.97,
    "frequency_hz": 50.02,
}


@pytest.mark.parametrize("model", BUILTIN)
def test_builtin_map_round_trip(model: str) -> None:
    """A simulated meter serving encode() output reads back the values through plan/decode."""
    rmap = load_map(model)
    memory: dict[tuple[str, int], int] = {}
    for (table, address), registers in rmap.encode(REALISTIC).items():
        for i, word in enumerate(registers):
            memory[(table, address + i)] = word
    reads = {
        b: [memory.get((b.table, a), 0) for a in range(b.start, b.start + b.count)]
        for b in rmap.plan()
    }
    values = rmap.decode(reads)
    assert set(values) == {f.name for f in rmap.fields}
    for name, value in values.items():
        # float32 keeps ~7 significant digits; Wh integer registers resolve 0.001 kWh
        assert value == pytest.approx(REALISTIC[name], rel=1e-6, abs=1e-3), name


# --- built-in maps and lookup -----------------------------------------------------------------


def test_available_models_lists_the_builtin_maps() -> None:
    assert available_models() == sorted(BUILTIN)
    assert available_models({"acme-x1": {}}) == sorted((*BUILTIN, "acme-x1"))


@pytest.mark.parametrize("model", BUILTIN)
def test_builtin_maps_state_their_source_and_base(model: str) -> None:
    rmap = load_map(model)
    assert rmap.model == model
    assert rmap.source and rmap.description
    assert rmap.address_base == (1 if model == "schneider-pm5300" else 0)


def test_builtin_register_addresses() -> None:
    def where(model: str, name: str) -> tuple[str, int, str, float]:
        (f,) = [f for f in load_map(model).fields if f.name == name]
        return f.table, f.address, f.dtype, f.scale

    assert where("eastron-sdm630", "power_kw") == ("input", 0x0034, "float32", 0.001)
    assert where("eastron-sdm630", "frequency_hz") == ("input", 0x0046, "float32", 1.0)
    assert where("eastron-sdm630", "energy_export_kwh") == ("input", 0x004A, "float32", 1.0)
    assert where("eastron-sdm120", "power_kw") == ("input", 0x000C, "float32", 0.001)
    assert where("chint-dtsu666", "voltage_l1_v") == ("holding", 0x2006, "float32", 0.1)
    assert where("chint-dtsu666", "energy_import_kwh") == ("holding", 0x401E, "float32", 1.0)
    # PM5300 register list numbers are 1-based: register 3028 is protocol address 3027
    assert where("schneider-pm5300", "voltage_l1_v") == ("holding", 3027, "float32", 1.0)
    assert where("schneider-pm5300", "energy_import_kwh") == ("holding", 3203, "int64", 0.001)
    sdm120 = {f.name for f in load_map("eastron-sdm120").fields}
    assert not sdm120 & {"voltage_l2_v", "voltage_l3_v", "current_l2_a", "current_l3_a"}


def test_builtin_maps_are_cached() -> None:
    assert load_map("eastron-sdm630") is load_map("eastron-sdm630")


def test_unknown_model_names_it_and_lists_the_available_ones() -> None:
    with pytest.raises(MapError) as info:
        load_map("acme-x1")
    assert str(info.value) == (
        "register map acme-x1: unknown model; available: " + ", ".join(sorted(BUILTIN))
    )


def test_user_maps_add_models_and_override_builtins() -> None:
    user = {
        "acme-x1": doc({"power_kw": f32(0)}, table="holding"),
        "eastron-sdm630": doc({"power_kw": f32(0x34, scale=0.001)}),
    }
    assert [f.name for f in load_map("acme-x1", user).fields] == ["power_kw"]
    assert [f.name for f in load_map("eastron-sdm630", user).fields] == ["power_kw"]
    assert len(load_map("eastron-sdm630").fields) == 12  # the built-in is untouched
    with pytest.raises(MapError, match="register map acme-x1.power_kw: scale: 0"):
        load_map("acme-x1", {"acme-x1": doc({"power_kw": f32(0, scale=0)})})


@pytest.mark.parametrize(
    ("dtype", "order"), list(itertools.product(sorted(REGISTER_COUNT), BYTE_ORDERS))
)
@given(data=st.data())
def test_decode_block_agrees_with_per_value_decode(
    dtype: str, order: str, data: st.DataObject
) -> None:
    """The block decoder (one buffer, unpack_from) equals decode() for every type and order."""
    n = REGISTER_COUNT[dtype]
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=n, max_size=n))
    name = READING_FIELDS[0]
    regmap = parse_map(
        "t",
        {"address_base": 0, "fields": {name: {"address": 3, "type": dtype, "byte_order": order}}},
    )
    (block,) = regmap.plan()
    got = regmap.decode_block(block, words)[name]
    want = float(decode(words, dtype, order))
    assert got == want or (math.isnan(got) and math.isnan(want))
