"""The Go type model shared by the DWARF reader, the plan and the decoders.

Pure data: a `TypeTable` maps a type id (the DWARF DIE offset of the type) to a
`GoType`. It is built from DWARF by `probe_compiler.dwarf`, stored in the probe
plan as JSON, and read by the value decoders, which never see DWARF.

Runtime header types keep their DWARF fields, so decoders find a string's
`str`/`len`, a slice's `array`/`len`/`cap`, an interface's `tab`/`_type`/`data`
by name instead of by hard-coded offsets.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field


class Kind(str, enum.Enum):
    BOOL = "bool"
    INT = "int"            # signed integers of any size
    UINT = "uint"          # unsigned integers, uintptr included
    FLOAT = "float"
    COMPLEX = "complex"
    STRING = "string"
    POINTER = "pointer"
    UNSAFE_POINTER = "unsafe_pointer"
    STRUCT = "struct"
    ARRAY = "array"
    SLICE = "slice"
    MAP = "map"
    CHAN = "chan"
    FUNC = "func"
    INTERFACE = "interface"  # `empty` tells eface (any) from iface
    UNKNOWN = "unknown"      # a DWARF type we can't model: shown as raw bytes


# reflect.Kind numbers, as stored in DW_AT_go_kind. Part of Go's public API
# (package reflect), so they don't change between Go versions.
GO_KIND = {
    1: Kind.BOOL, 2: Kind.INT, 3: Kind.INT, 4: Kind.INT, 5: Kind.INT, 6: Kind.INT,
    7: Kind.UINT, 8: Kind.UINT, 9: Kind.UINT, 10: Kind.UINT, 11: Kind.UINT, 12: Kind.UINT,
    13: Kind.FLOAT, 14: Kind.FLOAT, 15: Kind.COMPLEX, 16: Kind.COMPLEX,
    17: Kind.ARRAY, 18: Kind.CHAN, 19: Kind.FUNC, 20: Kind.INTERFACE, 21: Kind.MAP,
    22: Kind.POINTER, 23: Kind.SLICE, 24: Kind.STRING, 25: Kind.STRUCT, 26: Kind.UNSAFE_POINTER,
}


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    type_id: int
    embedded: bool = False


@dataclass(frozen=True)
class MapLayout:
    """How a map's runtime representation is laid out in this binary.

    Detected from DWARF (never from the Go version string).
    impl "swiss": `header` is internal/runtime/maps.Map, `table` its table type,
    `group` the per-map group struct (ctrl word + slots), `slot` the slot struct.
    impl "hmap": `header` is runtime.hmap, `bucket` the per-map bucket struct.
    """
    impl: str
    header: int
    group: int | None = None
    slot: int | None = None
    table: int | None = None
    bucket: int | None = None


@dataclass(frozen=True)
class GoType:
    id: int
    name: str
    kind: Kind
    size: int
    fields: tuple[Field, ...] = ()
    elem: int | None = None          # pointer/array/slice/chan element, map value
    key: int | None = None           # map key
    length: int | None = None        # array length
    empty: bool = False              # interface: true for `any` (eface)
    runtime_type: int | None = None  # DW_AT_go_runtime_type: offset from moduledata.types
    map_layout: MapLayout | None = None
    chan_header: int | None = None   # chan: id of runtime.hchan

    def field(self, name: str) -> Field | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None

    def to_json(self) -> dict:
        # Drop only absent values: `0 in (False,)` is true, so compare by identity
        # or size 0 (empty structs) and length 0 ([0]T) would be lost.
        d = {k: v for k, v in dataclasses.asdict(self).items()
             if v is not None and v is not False and v != () and v != []}
        d["kind"] = self.kind.value
        if self.fields:
            d["fields"] = [[f.name, f.offset, f.type_id, f.embedded] for f in self.fields]
        return d

    @staticmethod
    def from_json(d: dict) -> "GoType":
        d = dict(d)
        d["kind"] = Kind(d["kind"])
        d["fields"] = tuple(Field(*f) for f in d.get("fields", ()))
        if d.get("map_layout"):
            d["map_layout"] = MapLayout(**d["map_layout"])
        return GoType(**d)


@dataclass
class TypeTable:
    """Every type a plan needs, by id. Closed under elem/key/fields references."""
    types: dict[int, GoType] = field(default_factory=dict)

    def __getitem__(self, type_id: int) -> GoType:
        return self.types[type_id]

    def __contains__(self, type_id: int) -> bool:
        return type_id in self.types

    def add(self, t: GoType) -> None:
        self.types[t.id] = t

    def to_json(self) -> dict:
        return {str(k): t.to_json() for k, t in self.types.items()}

    @staticmethod
    def from_json(d: dict) -> "TypeTable":
        return TypeTable({int(k): GoType.from_json(v) for k, v in d.items()})
