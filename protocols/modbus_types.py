"""Modbus data types: numbers to and from 16-bit registers, in any of the four byte orders."""

from __future__ import annotations

import struct
from collections.abc import Sequence

#: Registers a value of each data type occupies.
REGISTER_COUNT: dict[str, int] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}

#: Byte orders, named by where the bytes of the big-endian value A B C D end up on the wire.
#: ABCD: big-endian bytes and words (the Modbus standard); CDAB: word-swapped (low word first);
#: BADC: bytes swapped within each word; DCBA: fully little-endian. For 64-bit types the word
#: swap reverses all four words; for 16-bit types CDAB equals ABCD and DCBA equals BADC.
BYTE_ORDERS: tuple[str, ...] = ("ABCD", "CDAB", "BADC", "DCBA")

#: struct format character of each data type (big-endian prefix added by the caller).
STRUCT_CODES: dict[str, str] = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "float32": "f",
    "int64": "q",
    "uint64": "Q",
    "float64": "d",
}
_FLOAT_TYPES = frozenset({"float32", "float64"})


def is_integer_type(dtype: str) -> bool:
    """True for the int/uint data types (whose raw values are whole numbers)."""
    _check_dtype(dtype)
    return dtype not in _FLOAT_TYPES


def integer_range(dtype: str) -> tuple[int, int]:
    """Smallest and largest value an integer data type can hold."""
    if not is_integer_type(dtype):
        raise ValueError(f"{dtype} is not an integer type")
    bits = 16 * REGISTER_COUNT[dtype]
    if dtype.startswith("u"):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _check_dtype(dtype: str) -> None:
    if dtype not in REGISTER_COUNT:
        raise ValueError(f"unknown data type {dtype!r}; known: {', '.join(REGISTER_COUNT)}")


def _check_order(order: str) -> None:
    if order not in BYTE_ORDERS:
        raise ValueError(f"unknown byte order {order!r}; known: {', '.join(BYTE_ORDERS)}")


def _words_to_wire(words: list[int], order: str) -> list[int]:
    """Reorder big-endian words into ``order`` (the mapping is its own inverse)."""
    if order in ("BADC", "DCBA"):
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    if order in ("CDAB", "DCBA"):
        words = words[::-1]
    return words


def decode(registers: Sequence[int], dtype: str, order: str = "ABCD") -> int | float:
    """Value of ``dtype`` held in ``registers`` (16-bit ints as read from the wire) in ``order``."""
    _check_dtype(dtype)
    _check_order(order)
    count = REGISTER_COUNT[dtype]
    if len(registers) != count:
        raise ValueError(f"{dtype} needs {count} register(s), got {len(registers)}")
    for reg in registers:
        if isinstance(reg, bool) or not isinstance(reg, int) or not 0 <= reg <= 0xFFFF:
            raise ValueError(f"register value {reg!r} is not a 16-bit unsigned integer")
    words = _words_to_wire(list(registers), order)
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    value: int | float = struct.unpack(">" + STRUCT_CODES[dtype], raw)[0]
    return value


def encode(value: int | float, dtype: str, order: str = "ABCD") -> list[int]:
    """Registers (16-bit ints, in wire order) that hold ``value`` as ``dtype`` in ``order``.

    Integer types take whole numbers only (a float with a fractional part is refused) and
    refuse values outside the type's range. Float types take any real number that fits;
    NaN and infinities are encoded as such.
    """
    _check_dtype(dtype)
    _check_order(order)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not a number")
    if dtype in _FLOAT_TYPES:
        number: int | float = float(value)
    else:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{value!r} is not a whole number; {dtype} needs one")
            value = int(value)
        low, high = integer_range(dtype)
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range for {dtype} ({low}..{high})")
        number = value
    try:
        raw = struct.pack(">" + STRUCT_CODES[dtype], number)
    except (struct.error, OverflowError) as exc:  # e.g. a float64 too large for float32
        raise ValueError(f"{value!r} cannot be encoded as {dtype}: {exc}") from exc
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return _words_to_wire(words, order)
