"""Modbus data type codecs: worked register values and decode(encode(x)) round-trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterwatch.protocols.modbus_types import (
    BYTE_ORDERS,
    REGISTER_COUNT,
    decode,
    encode,
    integer_range,
)

# (dtype, order, registers on the wire, value)
CASES: list[tuple[str, str, list[int], int | float]] = [
    # 230.0 V as float32 is 0x43660000
    ("float32", "ABCD", [0x4366, 0x0000], 230.0),
    ("float32", "CDAB", [0x0000, 0x4366], 230.0),
    ("float32", "BADC", [0x6643, 0x0000], 230.0),
    ("float32", "DCBA", [0x0000, 0x6643], 230.0),
    # -12.5 A is 0xC1480000
    ("float32", "ABCD", [0xC148, 0x0000], -12.5),
    ("int16", "ABCD", [0xFFFF], -1),
    ("int16", "ABCD", [0x8000], -32768),
    ("int16", "CDAB", [0x1234], 0x1234),  # a single word has nothing to swap
    ("int16", "BADC", [0x3412], 0x1234),
    ("int16", "DCBA", [0x3412], 0x1234),
    ("uint16", "ABCD", [0xFFFF], 65535),
    ("uint32", "ABCD", [0x1234, 0x5678], 0x12345678),
    ("uint32", "CDAB", [0x5678, 0x1234], 0x12345678),
    ("uint32", "BADC", [0x3412, 0x7856], 0x12345678),
    ("uint32", "DCBA", [0x7856, 0x3412], 0x12345678),
    ("int32", "ABCD", [0xFFFF, 0xFFFE], -2),
    ("int32", "CDAB", [0xFFFE, 0xFFFF], -2),
    ("int64", "ABCD", [0x0102, 0x0304, 0x0506, 0x0708], 0x0102030405060708),
    ("int64", "CDAB", [0x0708, 0x0506, 0x0304, 0x0102], 0x0102030405060708),
    ("int64", "BADC", [0x0201, 0x0403, 0x0605, 0x0807], 0x0102030405060708),
    ("int64", "DCBA", [0x0807, 0x0605, 0x0403, 0x0201], 0x0102030405060708),
    ("int64", "ABCD", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], -1),
    # 12 345 600 Wh (12 345.6 kWh) = 0x0000_0000_00BC_6100
    ("int64", "ABCD", [0x0000, 0x0000, 0x00BC, 0x6100], 12_345_600),
    ("uint64", "ABCD", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], 2**64 - 1),
    # 1.0 as float64 is 0x3FF0000000000000; 230.1 is 0x406CC33333333333
    ("float64", "ABCD", [0x3FF0, 0x0000, 0x0000, 0x0000], 1.0),
    ("float64", "CDAB", [0x0000, 0x0000, 0x0000, 0x3FF0], 1.0),
    ("float64", "ABCD", [0x406C, 0xC333, 0x3333, 0x3333], 230.1),
    ("float64", "DCBA", [0x3333, 0x3333, 0x33C3, 0x6C40], 230.1),
]


@pytest.mark.parametrize(("dtype", "order", "registers", "value"), CASES)
def test_decode_worked_values(
    dtype: str, order: str, registers: list[int], value: int | float
) -> None:
    result = decode(registers, dtype, order)
    assert result == value
    assert isinstance(result, float if dtype.startswith("float") else int)


@pytest.mark.parametrize(("dtype", "order", "registers", "value"), CASES)
def test_encode_worked_values(
    dtype: str, order: str, registers: list[int], value: int | float
) -> None:
    assert encode(value, dtype, order) == registers


def test_default_order_is_abcd() -> None:
    assert encode(230.0, "float32") == [0x4366, 0x0000]
    assert decode([0x4366, 0x0000], "float32") == 230.0


def test_register_counts() -> None:
    assert REGISTER_COUNT == {
        "int16": 1,
        "uint16": 1,
        "int32": 2,
        "uint32": 2,
        "float32": 2,
        "int64": 4,
        "uint64": 4,
        "float64": 4,
    }
    assert BYTE_ORDERS == ("ABCD", "CDAB", "BADC", "DCBA")


def test_nan_and_infinity_survive() -> None:
    assert math.isnan(decode(encode(math.nan, "float32"), "float32"))
    assert decode(encode(-math.inf, "float64", "DCBA"), "float64", "DCBA") == -math.inf


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: decode([0, 0], "float16"), "unknown data type 'float16'"),
        (lambda: encode(1, "int8"), "unknown data type 'int8'"),
        (lambda: decode([0, 0], "float32", "ABDC"), "unknown byte order 'ABDC'"),
        (lambda: encode(1.0, "float32", "little"), "unknown byte order 'little'"),
        (lambda: decode([0x4366], "float32"), "float32 needs 2 register"),
        (lambda: decode([0, 0, 0], "int64"), "int64 needs 4 register"),
        (lambda: decode([0x10000], "uint16"), "not a 16-bit unsigned integer"),
        (lambda: decode([-1], "int16"), "not a 16-bit unsigned integer"),
        (lambda: encode(32768, "int16"), r"out of range for int16 \(-32768\.\.32767\)"),
        (lambda: encode(-1, "uint32"), r"out of range for uint32 \(0\.\.4294967295\)"),
        (lambda: encode(2**64, "uint64"), "out of range for uint64"),
        (lambda: encode(1.5, "int32"), "not a whole number"),
        (lambda: encode(1e39, "float32"), "cannot be encoded as float32"),
        (lambda: encode("230", "float32"), "not a number"),  # type: ignore[arg-type]
    ],
)
def test_bad_input_raises_value_error(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_whole_float_accepted_for_integer_types() -> None:
    assert encode(7.0, "uint16") == [7]


def _values(dtype: str) -> st.SearchStrategy[int | float]:
    if dtype == "float32":
        return st.floats(allow_nan=False, width=32)  # exactly representable in float32
    if dtype == "float64":
        return st.floats(allow_nan=False)
    low, high = integer_range(dtype)
    return st.integers(min_value=low, max_value=high)


@pytest.mark.parametrize("order", BYTE_ORDERS)
@pytest.mark.parametrize("dtype", list(REGISTER_COUNT))
def test_round_trip(dtype: str, order: str) -> None:
    @settings(max_examples=60, deadline=None)
    @given(_values(dtype))
    def check(value: int | float) -> None:
        registers = encode(value, dtype, order)
        assert len(registers) == REGISTER_COUNT[dtype]
        assert all(0 <= r <= 0xFFFF for r in registers)
        assert decode(registers, dtype, order) == value

    check()


@pytest.mark.parametrize("order", BYTE_ORDERS)
@pytest.mark.parametrize("dtype", list(REGISTER_COUNT))
def test_register_round_trip(dtype: str, order: str) -> None:
    """Any register contents that decode to a non-NaN value encode back to the same words."""

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.integers(0, 0xFFFF),
            min_size=REGISTER_COUNT[dtype],
            max_size=REGISTER_COUNT[dtype],
        )
    )
    def check(registers: list[int]) -> None:
        value = decode(registers, dtype, order)
        if isinstance(value, float) and math.isnan(value):
            return  # NaN payloads are not canonical
        assert encode(value, dtype, order) == registers

    check()
