"""The read program: what the pause copies for the captures, as plain data.

Compiled from a ProbePlan before the first pause of a target (docs/read-program.md).
It mirrors probe_compiler.decode: every read the decoder would make of a value
is a slot here, so an executor that copies what the slots say, level by level,
holds every byte the decoder reads afterwards. Nothing here touches memory;
the user-space executor is agent/readexec.py, and an eBPF one runs the same
data.

A shape is `{"need": bytes, "slots": [...]}`: `need` is what the decoder reads
to hold one value that it doesn't have yet; each slot sits at an offset in the
value's own bytes (structs and arrays are flattened into their parent):

    ["str", ptr_off, len_off]
    ["ptr", off, elem_type]                      one indirection
    ["slice", ptr_off, len_off, elem_type, elem_size]
    ["map", off, map_type]                       swiss tables (one group or a directory), hmap buckets
    ["iface", type_or_tab_off, data_off, itab_type_off]   -1: eface
    ["chan", off, header_size]
    ["func", off]
    ["fallback", off, why]                       non-nil: the executor can't copy it
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from .decode import (EAGER_BYTES, HCHAN_OFFSETS, MAX_INLINE_KV, SPECIAL_TYPES, TABLE_GROUPS_OFFSETS, Budgets,
                     ByteBudget, _Decoder, _itab_type_offset, direct_iface, hmap_bucket_layout,
                     swiss_group_layout)
from .types import Kind, TypeTable

READ_PROGRAM_VERSION = 2      # 2: maps with indirect keys or elems are described (key_indirect, elem_indirect)
MAX_SLOTS = 4096      # past this a type's flattened slots go to the fallback reader


@dataclass
class ReadProgram:
    """Shapes by type id, the runtime type table, and the budgets to cut by.

    `rtypes`: runtime type offset (from moduledata.types) -> type id, for
    every type DWARF gives a runtime type (the keys are complete, so a key
    that is missing means the decoder will say "unknown" too). `direct`:
    the dynamic types an interface holds in its data word. `maps`: map type
    id -> the swiss layout numbers the executor reads by."""
    budgets: Budgets
    shapes: dict[int, dict] = field(default_factory=dict)
    rtypes: dict[int, int] = field(default_factory=dict)
    direct: set[int] = field(default_factory=set)
    maps: dict[int, dict] = field(default_factory=dict)
    key: str = ""
    version: int = READ_PROGRAM_VERSION

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "key": self.key,
                           "budgets": self.budgets.__dict__,
                           "shapes": {str(k): v for k, v in self.shapes.items()},
                           "rtypes": {str(k): v for k, v in self.rtypes.items()},
                           "direct": sorted(self.direct),
                           "maps": {str(k): v for k, v in self.maps.items()}})

    @staticmethod
    def from_json(text: str) -> "ReadProgram":
        d = json.loads(text)
        return ReadProgram(Budgets(**d["budgets"]), {int(k): v for k, v in d["shapes"].items()},
                           {int(k): v for k, v in d["rtypes"].items()}, set(d["direct"]),
                           {int(k): v for k, v in d["maps"].items()}, d["key"], d["version"])

    def add_types(self, types: TypeTable) -> None:
        """Shapes for every type of `types` not shaped yet (before a pause, or
        after one that met new dynamic types)."""
        c = _Compiler(types, self)
        for tid in list(types.types):
            if tid not in self.shapes:
                c.shape(tid)


def program_key(build_id: str, plan_json: str) -> str:
    """The cache key of a program: the build and the spec compiled into the plan."""
    return hashlib.sha256(f"{build_id}\0{plan_json}".encode()).hexdigest()[:16]


def compile_read_program(plan, runtime_types: dict[int, int] | None = None) -> ReadProgram:
    """The read program of `plan`. `runtime_types`: rtype offset -> type id of
    every type of the binary (the DWARF index's DW_AT_go_runtime_type)."""
    prog = ReadProgram(plan.budgets, rtypes=dict(runtime_types or {}))
    prog.key = program_key(plan.build_id, json.dumps([[f.symbol, [c.expr for c in f.captures]]
                                                      for f in plan.functions]))
    prog.add_types(plan.types)
    return prog


class _Compiler:
    def __init__(self, types: TypeTable, prog: ReadProgram):
        self.types, self.prog, self.b = types, prog, prog.budgets
        self.dec = _Decoder(types, None, prog.budgets, ByteBudget(0), ByteBudget(0), None, None)

    def shape(self, tid: int) -> dict | None:
        got = self.prog.shapes.get(tid)
        if got is not None:
            return got
        t = self.types.types.get(tid)
        if t is None:
            return None
        self.prog.shapes[tid] = {"need": t.size, "slots": []}   # a recursive type sees this first
        slots: list = []
        try:
            self._slots(tid, 0, slots)
        except _TooMany:
            slots = [["fallback", 0, f"{t.name} has more than {MAX_SLOTS} pointers"]]
        need = t.size
        if t.kind == Kind.ARRAY and t.elem in self.types and t.name not in SPECIAL_TYPES:
            need = min(t.length or 0, self.b.elements) * self.types[t.elem].size
        if direct_iface(self.types, t):
            self.prog.direct.add(tid)
        shape = self.prog.shapes[tid] = {"need": need, "slots": slots}
        return shape

    def _slots(self, tid: int, base: int, out: list) -> None:
        if len(out) > MAX_SLOTS:
            raise _TooMany()
        t = self.types.types.get(tid)
        if t is None or t.name in SPECIAL_TYPES:
            return
        k = t.kind
        if k == Kind.STRING:
            s, n = t.field("str"), t.field("len")
            if s and n:
                out.append(["str", base + s.offset, base + n.offset])
        elif k == Kind.STRUCT:
            for f in t.fields:
                self._slots(f.type_id, base + f.offset, out)
        elif k == Kind.ARRAY:
            e = self.types.types.get(t.elem)
            if e is not None and e.size:
                probe: list = []
                self._slots(e.id, 0, probe)
                if probe:
                    for i in range(min(t.length or 0, self.b.elements)):
                        self._slots(e.id, base + i * e.size, out)
        elif k == Kind.POINTER:
            if t.elem is not None and t.elem in self.types:
                self.shape(t.elem)
                out.append(["ptr", base, t.elem])
        elif k == Kind.SLICE:
            a, n = t.field("array"), t.field("len")
            e = self.types.types.get(t.elem)
            if a and n and e is not None:
                self.shape(e.id)
                out.append(["slice", base + a.offset, base + n.offset, e.id, e.size])
        elif k == Kind.MAP:
            why = self._map(t)
            out.append(["map", base, tid] if why is None else ["fallback", base, why])
        elif k == Kind.CHAN:
            h = self.types.types.get(t.chan_header)
            size = h.size if h is not None else max(o + s for o, s in HCHAN_OFFSETS.values())
            out.append(["chan", base, size])
        elif k == Kind.FUNC:
            out.append(["func", base])
        elif k == Kind.INTERFACE:
            d = t.field("data")
            if d is None:
                return
            if t.empty:
                ty = t.field("_type")
                if ty:
                    out.append(["iface", base + ty.offset, base + d.offset, -1])
            else:
                tab = t.field("tab")
                if tab:
                    out.append(["iface", base + tab.offset, base + d.offset,
                                _itab_type_offset(self.dec, t)])

    def _map(self, t) -> str | None:
        """Record the swiss layout of map type t; say why not when the
        executor can't walk it (the fallback reader does)."""
        lay = t.map_layout
        if lay is None or lay.impl not in ("swiss", "hmap"):
            return f"{t.name}: no map layout the read program walks"
        key, elem = self.types.types.get(t.key), self.types.types.get(t.elem)
        header = self.types.types.get(lay.header)
        if key is None or elem is None or header is None:
            return f"{t.name}: types missing"
        if lay.impl == "hmap":
            why = self._hmap(t, key, elem, header)
        else:
            why = self._swiss(t, key, elem, header, lay)
        if why is None:     # a key or elem over 128 bytes: the slot holds a pointer to it
            self.prog.maps[t.id].update(key_indirect=key.size > MAX_INLINE_KV,
                                        elem_indirect=elem.size > MAX_INLINE_KV)
        return why

    def _swiss(self, t, key, elem, header, lay) -> str | None:
        """Go >= 1.24: one group, or a directory of tables of groups."""
        try:
            g = swiss_group_layout(self.dec, t)
            off = {n: self.dec.offset(header, n) for n in ("used", "dirPtr", "dirLen")}
        except Exception as e:   # a layout the decoder would call malformed: let it say so
            return f"{t.name}: {e}"
        if any(size != 8 for _, size in off.values()):
            return f"{t.name}: unexpected header field sizes"
        self.shape(key.id)
        self.shape(elem.id)
        table_t = self.types.types.get(lay.table)
        tdata, tmask = TABLE_GROUPS_OFFSETS
        if table_t is not None:
            groups = table_t.field("groups")
            try:
                if groups is not None:
                    gt = self.types.types[groups.type_id]
                    tdata, tmask = (groups.offset + self.dec.offset(gt, n)[0] for n in ("data", "lengthMask"))
                elif table_t.field("groups_data"):
                    tdata, tmask = (self.dec.offset(table_t, n)[0] for n in ("groups_data", "groups_lengthMask"))
            except Exception as e:   # the decoder would call it malformed: let it say so
                return f"{t.name}: {e}"
        kk = {Kind.STRING: "string", Kind.BOOL: "bool", Kind.INT: "int"}.get(key.kind, "uint")
        ks, kl = (key.field("str"), key.field("len")) if key.kind == Kind.STRING else (None, None)
        self.prog.maps[t.id] = {"impl": "swiss", "header": header.size, "used": off["used"][0],
                                "key_kind": kk, "key_size": key.size,
                                "table": table_t.size if table_t is not None else TABLE_GROUPS_OFFSETS[1] + 8,
                                "table_data": tdata, "table_mask": tmask,
                                "key_str": ks.offset if ks else 0, "key_len": kl.offset if kl else 8,
                                "dir_ptr": off["dirPtr"][0], "dir_len": off["dirLen"][0],
                                "group": g.size, "ctrl": g.ctrl, "keys": g.keys,
                                "key_stride": g.key_stride, "elems": g.elems,
                                "elem_stride": g.elem_stride, "key": key.id, "elem": elem.id}
        return None


    def _hmap(self, t, key, elem, header) -> str | None:
        """Go < 1.24: buckets of 8 slots with tophash bytes and an overflow pointer."""
        try:
            b = hmap_bucket_layout(self.dec, t)
            off = {n: self.dec.offset(header, n) for n in ("count", "flags", "B", "buckets", "oldbuckets")}
        except Exception as e:   # a layout the decoder would call malformed: let it say so
            return f"{t.name}: {e}"
        if b.overflow < 0 or off["buckets"][1] != 8 or off["oldbuckets"][1] != 8:
            return f"{t.name}: unexpected bucket or header layout"
        self.shape(key.id)
        self.shape(elem.id)
        self.prog.maps[t.id] = {"impl": "hmap", "header": header.size,
                                "count": list(off["count"]), "flags": list(off["flags"]), "B": list(off["B"]),
                                "buckets": off["buckets"][0], "old": off["oldbuckets"][0],
                                "bucket": b.size, "ctrl": b.ctrl, "keys": b.keys, "key_stride": b.key_stride,
                                "elems": b.elems, "elem_stride": b.elem_stride, "overflow": b.overflow,
                                "key": key.id, "elem": elem.id}
        return None


class _TooMany(Exception):
    pass


__all__ = ["ReadProgram", "compile_read_program", "program_key", "READ_PROGRAM_VERSION",
           "EAGER_BYTES"]
