"""Modbus register maps: load and check them, plan the reads, decode registers to canonical values."""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from meterwatch.core.errors import MapError
from meterwatch.core.schema import READING_FIELDS
from meterwatch.protocols.modbus_types import (
    BYTE_ORDERS,
    REGISTER_COUNT,
    STRUCT_CODES,
    encode,
    is_integer_type,
)

#: Register tables: "input" is read with function 04, "holding" with function 03.
TABLES: tuple[str, ...] = ("input", "holding")
#: Most registers one read request may ask for (Modbus application protocol, FC 03/04).
MODBUS_MAX_REGISTERS = 125

_MAP_KEYS = frozenset(
    {
        "model",
        "description",
        "source",
        "address_base",
        "byte_order",
        "table",
        "max_registers",
        "max_gap",
        "fields",
    }
)
_REQUIRED_MAP_KEYS = ("address_base", "fields")
_FIELD_KEYS = frozenset({"address", "type", "count", "scale", "offset", "byte_order", "table"})
_REQUIRED_FIELD_KEYS = ("address", "type")


@dataclass(frozen=True)
class MapField:
    """One canonical quantity: where it lives and how raw register values become canonical."""

    name: str
    address: int
    dtype: str
    order: str
    scale: float = 1.0
    offset: float = 0.0
    table: str = "input"

    @property
    def count(self) -> int:
        """Registers the value occupies (decided by its data type)."""
        return REGISTER_COUNT[self.dtype]

    @property
    def end(self) -> int:
        """Address of the field's last register."""
        return self.address + self.count - 1


@dataclass(frozen=True)
class ReadBlock:
    """One read request: ``count`` registers of ``table`` from ``start``, covering ``fields``."""

    table: str
    start: int
    count: int
    fields: tuple[MapField, ...]

    @functools.cached_property
    def unpacker(self) -> tuple[struct.Struct, struct.Struct, tuple[MapField, ...]] | None:
        """Compiled structs for the block (its registers to bytes; every field out of them at
        once) when its fields are in ABCD order and by address; None: decode field by field."""
        fmt, pos = ">", 0  # pos: registers from the block's start already described
        for f in self.fields:
            gap = f.address - self.start - pos
            if f.order != "ABCD" or gap < 0:
                return None
            fmt += f"{2 * gap}x{STRUCT_CODES[f.dtype]}" if gap else STRUCT_CODES[f.dtype]
            pos = f.address - self.start + f.count
        if pos > self.count:
            return None
        return struct.Struct(f">{self.count}H"), struct.Struct(fmt), self.fields


@dataclass(frozen=True)
class RegisterMap:
    """A checked register map of one meter model. Construction runs the structural checks."""

    model: str
    description: str
    source: str
    address_base: int
    fields: tuple[MapField, ...]
    max_registers: int = MODBUS_MAX_REGISTERS
    max_gap: int = 16

    def __post_init__(self) -> None:
        _check_limits(self.model, self.max_registers, self.max_gap)
        seen: set[str] = set()
        for f in self.fields:
            if f.name in seen:
                raise MapError(self.model, "appears more than once", f.name)
            seen.add(f.name)
            _check_field(self, f)
        _check_overlaps(self)

    def plan(self, max_registers: int | None = None, max_gap: int | None = None) -> list[ReadBlock]:
        """Fewest read requests covering every field, per table, in address order.

        A block never spans more than ``max_registers`` registers, and two neighbouring
        fields share a block only when the unused registers between them number at most
        ``max_gap``. Both default to the map's own values.
        """
        limit = self.max_registers if max_registers is None else max_registers
        gap = self.max_gap if max_gap is None else max_gap
        _check_limits(self.model, limit, gap)
        blocks: list[ReadBlock] = []
        for table in TABLES:
            ordered = sorted((f for f in self.fields if f.table == table), key=lambda f: f.address)
            group: list[MapField] = []
            for f in ordered:
                if f.count > limit:
                    raise MapError(
                        self.model,
                        f"type {f.dtype} needs {f.count} registers, more than max_registers: {limit}",
                        f.name,
                    )
                if group:
                    start, end = group[0].address, max(g.end for g in group)
                    # Greedy extension is optimal here: fields are sorted and disjoint, and both
                    # limits only get harder to meet as a block grows.
                    if f.address - end - 1 <= gap and max(end, f.end) - start + 1 <= limit:
                        group.append(f)
                        continue
                    blocks.append(_block(table, group))
                group = [f]
            if group:
                blocks.append(_block(table, group))
        return blocks

    def decode_block(self, block: ReadBlock, registers: Sequence[int]) -> dict[str, float]:
        """Canonical values of the block's fields from the registers read for it."""
        if len(registers) != block.count:
            raise ValueError(
                f"register map {self.model}: block {block.table} {block.start}+{block.count} "
                f"needs {block.count} registers, got {len(registers)}"
            )
        plan = block.unpacker
        if plan is not None:  # the usual map: one pack and one unpack for the whole block
            words, fields, meta = plan
            try:
                raws = fields.unpack_from(words.pack(*registers))
            except struct.error:
                pass  # a value that is not a 16-bit register: named below
            else:
                return {
                    f.name: float(r) * f.scale + f.offset for f, r in zip(meta, raws, strict=True)
                }
        try:
            # The whole block as big-endian bytes once; each field is then one unpack_from.
            buf = struct.pack(f">{block.count}H", *registers)
        except struct.error:
            bad = next(
                (r for r in registers if not (isinstance(r, int) and 0 <= r <= 0xFFFF)), None
            )
            raise ValueError(f"register value {bad!r} is not a 16-bit unsigned integer") from None
        values: dict[str, float] = {}
        for f in block.fields:
            start = 2 * (f.address - block.start)
            code = ">" + STRUCT_CODES[f.dtype]
            if f.order == "ABCD":
                raw = struct.unpack_from(code, buf, start)[0]
            else:
                raw = struct.unpack(code, _to_abcd(buf[start : start + 2 * f.count], f.order))[0]
            values[f.name] = float(raw) * f.scale + f.offset
        return values

    def decode(self, blocks: Mapping[ReadBlock, Sequence[int]]) -> dict[str, float]:
        """Canonical values of every field in ``blocks`` (block -> registers read for it)."""
        values: dict[str, float] = {}
        for block, registers in blocks.items():
            values.update(self.decode_block(block, registers))
        return values

    def encode(self, values: Mapping[str, float]) -> dict[tuple[str, int], list[int]]:
        """Registers a meter would hold for ``values``: ``{(table, address): registers}``.

        For simulators. Fields missing from ``values`` or given as NaN/None are left out.
        raw = (value - offset) / scale, rounded to the nearest whole number for integer types.
        """
        out: dict[tuple[str, int], list[int]] = {}
        for f in self.fields:
            value = values.get(f.name)
            if value is None or math.isnan(value):
                continue
            raw: float = (value - f.offset) / f.scale
            try:
                if is_integer_type(f.dtype):
                    out[(f.table, f.address)] = encode(round(raw), f.dtype, f.order)
                else:
                    out[(f.table, f.address)] = encode(raw, f.dtype, f.order)
            except (ValueError, OverflowError) as exc:
                raise ValueError(
                    f"register map {self.model}.{f.name}: cannot encode {value!r}: {exc}"
                ) from exc
        return out


def _block(table: str, group: list[MapField]) -> ReadBlock:
    start = group[0].address
    end = max(f.end for f in group)
    return ReadBlock(table=table, start=start, count=end - start + 1, fields=tuple(group))


def _check_limits(model: str, max_registers: int, max_gap: int) -> None:
    if not _is_int(max_registers) or not 1 <= max_registers <= MODBUS_MAX_REGISTERS:
        raise MapError(
            model,
            f"max_registers must be a whole number 1..{MODBUS_MAX_REGISTERS}, got {max_registers!r}",
        )
    if not _is_int(max_gap) or max_gap < 0:
        raise MapError(model, f"max_gap must be a whole number >= 0, got {max_gap!r}")


def _check_field(rmap: RegisterMap, f: MapField) -> None:
    model = rmap.model
    if f.name not in READING_FIELDS:
        raise MapError(
            model, f"not a canonical quantity; allowed: {', '.join(READING_FIELDS)}", f.name
        )
    if f.dtype not in REGISTER_COUNT:
        raise MapError(
            model, f"unknown type {f.dtype!r}; allowed: {', '.join(REGISTER_COUNT)}", f.name
        )
    if f.order not in BYTE_ORDERS:
        raise MapError(
            model, f"unknown byte_order {f.order!r}; allowed: {', '.join(BYTE_ORDERS)}", f.name
        )
    if f.table not in TABLES:
        raise MapError(model, f"unknown table {f.table!r}; allowed: {', '.join(TABLES)}", f.name)
    if not _is_int(f.address):
        raise MapError(model, f"address must be a whole number, got {f.address!r}", f.name)
    written = f.address + rmap.address_base
    if f.address < 0:
        raise MapError(
            model,
            f"address {written} with address_base {rmap.address_base} gives protocol address "
            f"{f.address}, outside 0..65535",
            f.name,
        )
    if f.end > 0xFFFF:
        raise MapError(
            model,
            f"address {written} ({f.dtype}, {f.count} registers) ends at protocol address "
            f"{f.end}, outside 0..65535",
            f.name,
        )
    for key, value in (("scale", f.scale), ("offset", f.offset)):
        if not _is_number(value) or not math.isfinite(value):
            raise MapError(model, f"{key} must be a finite number, got {value!r}", f.name)
    if f.scale == 0:
        raise MapError(model, "scale: 0 would turn every reading into the offset", f.name)
    if f.count > rmap.max_registers:
        raise MapError(
            model,
            f"type {f.dtype} needs {f.count} registers but max_registers is {rmap.max_registers}; "
            "it could never be read",
            f.name,
        )


def _check_overlaps(rmap: RegisterMap) -> None:
    base = rmap.address_base
    for table in TABLES:
        ordered = sorted((f for f in rmap.fields if f.table == table), key=lambda f: f.address)
        reach: MapField | None = None  # the field reaching furthest so far
        for f in ordered:
            if reach is not None and f.address <= reach.end:
                # Numbers as written in the map, so the author can find them.
                raise MapError(
                    rmap.model,
                    f"overlaps {reach.name} (registers {reach.address + base}-{reach.end + base} "
                    f"vs {f.address + base}-{f.end + base}) in the {table} table",
                    f.name,
                )
            if reach is None or f.end > reach.end:
                reach = f


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- parsing ----------------------------------------------------------------------------------


def parse_map(name: str, data: Mapping[str, Any]) -> RegisterMap:
    """A checked :class:`RegisterMap` from a map document (the YAML format, as a mapping).

    ``name`` is the model id the map is known by; raises :class:`MapError` naming the map,
    the field and the numbers for anything wrong.
    """
    if not isinstance(data, Mapping):
        raise MapError(name, f"a map must be a mapping of keys, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in _MAP_KEYS)
    if unknown:
        raise MapError(
            name, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_MAP_KEYS))}"
        )
    for key in _REQUIRED_MAP_KEYS:
        if key not in data:
            raise MapError(name, f"missing required key {key!r}")
    model = data.get("model", name)
    if model != name:
        raise MapError(name, f"model: {model!r} does not match the map id {name!r}")
    base = data["address_base"]
    if not _is_int(base) or base < 0:
        raise MapError(
            name, f"address_base must be a whole number >= 0 (0 or 1, usually), got {base!r}"
        )
    default_order = _text(name, None, "byte_order", data.get("byte_order", "ABCD")).upper()
    default_table = _text(name, None, "table", data.get("table", "input")).lower()
    fields_data = data["fields"]
    if not isinstance(fields_data, Mapping) or not fields_data:
        raise MapError(name, "fields must be a non-empty mapping of quantity name -> register")
    fields = tuple(
        _parse_field(name, str(key), spec, base, default_order, default_table)
        for key, spec in fields_data.items()
    )
    return RegisterMap(
        model=name,
        description=str(data.get("description", "")),
        source=str(data.get("source", "")),
        address_base=base,
        fields=fields,
        max_registers=data.get("max_registers", MODBUS_MAX_REGISTERS),
        max_gap=data.get("max_gap", 16),
    )


def _parse_field(
    name: str, key: str, spec: Any, base: int, default_order: str, default_table: str
) -> MapField:
    if not isinstance(spec, Mapping):
        raise MapError(name, f"must be a mapping with address and type, got {spec!r}", key)
    unknown = sorted(str(k) for k in spec if k not in _FIELD_KEYS)
    if unknown:
        raise MapError(
            name,
            f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_FIELD_KEYS))}",
            key,
        )
    for required in _REQUIRED_FIELD_KEYS:
        if required not in spec:
            raise MapError(name, f"missing required key {required!r}", key)
    address = spec["address"]
    if not _is_int(address):
        raise MapError(name, f"address must be a whole number, got {address!r}", key)
    dtype = _text(name, key, "type", spec["type"]).lower()
    if dtype not in REGISTER_COUNT:
        raise MapError(name, f"unknown type {dtype!r}; allowed: {', '.join(REGISTER_COUNT)}", key)
    if "count" in spec and spec["count"] != REGISTER_COUNT[dtype]:
        raise MapError(
            name,
            f"type {dtype} needs {REGISTER_COUNT[dtype]} registers but count: {spec['count']!r} was given",
            key,
        )
    order = _text(name, key, "byte_order", spec.get("byte_order", default_order)).upper()
    table = _text(name, key, "table", spec.get("table", default_table)).lower()
    return MapField(
        name=key,
        address=address - base,
        dtype=dtype,
        order=order,
        scale=_number(name, key, "scale", spec.get("scale", 1.0)),
        offset=_number(name, key, "offset", spec.get("offset", 0.0)),
        table=table,
    )


def _text(name: str, field: str | None, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise MapError(name, f"{key} must be text, got {value!r}", field)
    return value.strip()


def _number(name: str, field: str, key: str, value: Any) -> float:
    # PyYAML reads 1e-3 (no dot) as a string; accept any text that is plainly a number.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if not _is_number(value):
        raise MapError(name, f"{key} must be a number, got {value!r}", field)
    return float(value)


# --- YAML -------------------------------------------------------------------------------------


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, first_line: int, second_line: int):
        self.key, self.first_line, self.second_line = key, first_line, second_line
        super().__init__(f"duplicate key {key!r} on lines {first_line} and {second_line}")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue  # merge keys and complex keys: SafeLoader's own rules apply
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKeyError(key, seen[key], line)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _load_yaml(name: str, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except _DuplicateKeyError as exc:
        raise MapError(
            name,
            f"duplicate key {exc.key!r} on lines {exc.first_line} and {exc.second_line} "
            "(YAML would silently keep only the last one)",
        ) from exc
    except yaml.YAMLError as exc:
        raise MapError(name, f"not valid YAML: {exc}") from exc


def load_map_file(path: str | Path) -> RegisterMap:
    """A checked map from a YAML file; the file name (without .yaml) is its model id."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MapError(path.stem, f"cannot read {path}: {exc}") from exc
    return parse_map(path.stem, _load_yaml(path.stem, text))


# --- built-in maps ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _builtin_models() -> tuple[str, ...]:
    maps = resources.files("meterwatch.protocols") / "maps"
    return tuple(
        sorted(p.name[: -len(".yaml")] for p in maps.iterdir() if p.name.endswith(".yaml"))
    )


@functools.lru_cache(maxsize=64)
def _load_builtin(model: str) -> RegisterMap:
    text = (resources.files("meterwatch.protocols") / "maps" / f"{model}.yaml").read_text(
        encoding="utf-8"
    )
    return parse_map(model, _load_yaml(model, text))


def available_models(extra: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Model ids that :func:`load_map` knows: the built-in maps plus ``extra`` (user maps)."""
    return sorted(set(_builtin_models()) | set(extra or {}))


def load_map(model: str, extra: Mapping[str, Mapping[str, Any]] | None = None) -> RegisterMap:
    """The checked map of ``model``; a map in ``extra`` (from config) overrides a built-in one."""
    if extra and model in extra:
        return parse_map(model, extra[model])
    if model in _builtin_models():
        return _load_builtin(model)
    raise MapError(
        model, f"unknown model; available: {', '.join(available_models(extra)) or '(none)'}"
    )


def _to_abcd(raw: bytes, order: str) -> bytes:
    """Bytes of one value read in ``order`` rearranged to big-endian (ABCD)."""
    if order == "DCBA":
        return raw[::-1]
    if order == "CDAB":  # words in reverse order
        return b"".join(raw[i : i + 2] for i in range(len(raw) - 2, -1, -2))
    if order == "BADC":  # bytes swapped within each word
        return bytes(b for i in range(0, len(raw), 2) for b in (raw[i + 1], raw[i]))
    return raw
