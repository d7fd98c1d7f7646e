"""DWARF type DIEs -> GoType, keyed by DIE offset, built on demand.

Go's linker writes every type into one CU and uses Go spelling for names. A Go
type can own several DIEs: a struct `main.server` also gets a typedef of the
same name, and interfaces, maps and chans are typedefs that carry DW_AT_go_kind
and point at the runtime's representation (runtime.iface, *map<K,V>,
*hchan<T>). Typedefs without a Go kind are plain aliases: we follow them so
that each Go type has one canonical id.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from elftools.dwarf.die import DIE

from probe_compiler.types import GO_KIND, Field, GoType, Kind, MapLayout, TypeTable

AT_GO_KIND = 0x2900
AT_GO_KEY = 0x2901
AT_GO_ELEM = 0x2902
AT_GO_EMBEDDED = 0x2903
AT_GO_RUNTIME_TYPE = 0x2904

_BASE_ENCODING = {0x02: Kind.BOOL, 0x03: Kind.COMPLEX, 0x04: Kind.FLOAT, 0x05: Kind.INT,
                  0x06: Kind.INT, 0x07: Kind.UINT, 0x08: Kind.UINT, 0x10: Kind.UINT}


def ref(die: DIE, attr: str | int) -> int | None:
    """A reference attribute as an absolute .debug_info offset."""
    a = die.attributes.get(attr)
    if a is None:
        return None
    if a.form in ("DW_FORM_ref_addr", "DW_FORM_GNU_ref_alt"):
        return a.value
    if a.form.startswith("DW_FORM_ref"):
        return a.value + die.cu.cu_offset  # CU-relative forms
    return None


def attr(die: DIE, name: str | int, default=None):
    a = die.attributes.get(name)
    return default if a is None else a.value


def die_name(die: DIE) -> str:
    v = attr(die, "DW_AT_name", b"")
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


class TypeBuilder:
    """Builds GoTypes lazily from DIEs, caching by DIE offset."""

    def __init__(self, die_at: Callable[[int], DIE]):
        self._die_at = die_at
        self._cache: dict[int, GoType] = {}

    def canonical(self, off: int) -> int:
        """Follow alias typedefs (no Go kind, same or no name) to the real type DIE."""
        seen = set()
        while off not in seen:
            seen.add(off)
            die = self._die_at(off)
            if die.tag != "DW_TAG_typedef" or attr(die, AT_GO_KIND):
                return off
            target = ref(die, "DW_AT_type")
            if target is None:
                return off
            name = die_name(die)
            tname = die_name(self._die_at(target))
            if name and tname and name != tname:
                return off  # a differently named alias: keep its own id and name
            off = target
        return off

    def get(self, off: int) -> GoType:
        off = self.canonical(off)
        t = self._cache.get(off)
        if t is None:
            t = self._build(off)
            self._cache[off] = t
        return t

    def table(self, root_ids) -> TypeTable:
        """The closure of the roots over every type id a decoder may follow."""
        tt = TypeTable()
        todo = list(root_ids)
        while todo:
            t = self.get(todo.pop())
            if t.id in tt:
                continue
            tt.add(t)
            todo.extend(_refs(t))
        return tt

    # ---- building ----

    def _build(self, off: int) -> GoType:
        die = self._die_at(off)
        name = die_name(die)
        if die.tag == "DW_TAG_typedef" and not attr(die, AT_GO_KIND):
            # A differently named alias: the target's shape under this name.
            target = self.get(ref(die, "DW_AT_type"))
            return dataclasses.replace(target, id=off, name=name)
        kind = self._kind(die)
        t = GoType(id=off, name=name, kind=kind, size=attr(die, "DW_AT_byte_size", 0),
                   runtime_type=attr(die, AT_GO_RUNTIME_TYPE) or None)
        build = getattr(self, f"_build_{kind.value}", None)
        return build(die, t) if build else t

    def _kind(self, die: DIE) -> Kind:
        gk = attr(die, AT_GO_KIND)
        if gk in GO_KIND:
            return GO_KIND[gk]
        if die.tag == "DW_TAG_base_type":
            return _BASE_ENCODING.get(attr(die, "DW_AT_encoding"), Kind.UNKNOWN)
        if die.tag == "DW_TAG_structure_type":
            return Kind.STRUCT
        if die.tag == "DW_TAG_pointer_type":
            return Kind.POINTER if "DW_AT_type" in die.attributes else Kind.UNSAFE_POINTER
        if die.tag == "DW_TAG_array_type":
            return Kind.ARRAY
        if die.tag == "DW_TAG_subroutine_type":
            return Kind.FUNC
        return Kind.UNKNOWN

    def _members(self, die: DIE) -> tuple[Field, ...]:
        out = []
        for c in die.iter_children():
            if c.tag != "DW_TAG_member":
                continue
            tid = ref(c, "DW_AT_type")
            out.append(Field(die_name(c), attr(c, "DW_AT_data_member_location", 0),
                             self.canonical(tid) if tid is not None else 0,
                             bool(attr(c, AT_GO_EMBEDDED, False))))
        return tuple(out)

    def _elem(self, die: DIE, at="DW_AT_type") -> int | None:
        r = ref(die, at)
        return self.canonical(r) if r is not None else None

    def _build_struct(self, die: DIE, t: GoType) -> GoType:
        return dataclasses.replace(t, fields=self._members(die))

    def _build_string(self, die: DIE, t: GoType) -> GoType:
        return dataclasses.replace(t, fields=self._members(die))

    def _build_slice(self, die: DIE, t: GoType) -> GoType:
        return dataclasses.replace(t, fields=self._members(die), elem=self._elem(die, AT_GO_ELEM))

    def _build_pointer(self, die: DIE, t: GoType) -> GoType:
        elem = self._elem(die)
        if elem is None:  # unsafe.Pointer carries go_kind 26, but be safe
            return dataclasses.replace(t, kind=Kind.UNSAFE_POINTER, size=t.size or 8)
        return dataclasses.replace(t, elem=elem, size=t.size or 8)

    def _build_unsafe_pointer(self, die: DIE, t: GoType) -> GoType:
        return dataclasses.replace(t, size=t.size or 8)

    def _build_func(self, die: DIE, t: GoType) -> GoType:
        return dataclasses.replace(t, size=t.size or 8)

    def _build_array(self, die: DIE, t: GoType) -> GoType:
        length = 0
        for c in die.iter_children():
            if c.tag == "DW_TAG_subrange_type":
                length = attr(c, "DW_AT_count", attr(c, "DW_AT_upper_bound", -1) + 1)
        return dataclasses.replace(t, elem=self._elem(die), length=length)

    def _build_interface(self, die: DIE, t: GoType) -> GoType:
        # The typedef points (maybe through an alias) at runtime.eface/iface.
        rep = self.get(ref(die, "DW_AT_type"))
        empty = rep.name == "runtime.eface" or rep.field("_type") is not None
        return dataclasses.replace(t, size=rep.size or 16, fields=rep.fields, empty=empty)

    def _build_chan(self, die: DIE, t: GoType) -> GoType:
        hdr = self._pointee(ref(die, "DW_AT_type"))
        return dataclasses.replace(t, size=8, elem=self._elem(die, AT_GO_ELEM), chan_header=hdr)

    def _build_map(self, die: DIE, t: GoType) -> GoType:
        header = self._pointee(ref(die, "DW_AT_type"))
        layout = self._map_layout(header) if header is not None else None
        return dataclasses.replace(t, size=8, key=self._elem(die, AT_GO_KEY),
                                   elem=self._elem(die, AT_GO_ELEM), map_layout=layout)

    def _pointee(self, ptr_off: int | None) -> int | None:
        if ptr_off is None:
            return None
        p = self.get(ptr_off)
        return p.elem if p.kind == Kind.POINTER else None

    def _map_layout(self, header: int) -> MapLayout:
        """Swiss (Go 1.24+: dirPtr/dirLen) or the classic hmap (buckets), by fields."""
        h = self.get(header)
        if h.field("dirPtr") is not None:
            table = self._pointee(self._pointee(h.field("dirPtr").type_id))
            group = slot = None
            if table is not None:
                groups = self.get(self.get(table).field("groups").type_id)
                group = self._pointee(groups.field("data").type_id) if groups.field("data") else None
            if group is not None:
                slots = self.get(group).field("slots")
                slot = self.get(slots.type_id).elem if slots else None
            return MapLayout("swiss", header, group=group, slot=slot, table=table)
        buckets = h.field("buckets")
        bucket = self._pointee(buckets.type_id) if buckets else None
        return MapLayout("hmap", header, bucket=bucket)


def _refs(t: GoType):
    for f in t.fields:
        yield f.type_id
    for r in (t.elem, t.key, t.chan_header):
        if r is not None:
            yield r
    if t.map_layout:
        m = t.map_layout
        for r in (m.header, m.group, m.slot, m.table, m.bucket):
            if r is not None:
                yield r
