"""The value decoder, run as a WebAssembly module under wasmtime.

    dec = WasmDecoder()                               # compiles decoder.wasm once per process
    tables = TypeBlob.build(plan.types)               # once per plan
    plain, raw = dec.decode_value(tables, type_id, data, addr, Image.of(ranges), budgets,
                                  frame_budget=fb, snapshot_budget=sb)
    pairs = dec.decode_values(tables, image, [(type_id, data, addr), ...], budgets,   # a frame's values:
                              frame_budget=fb, snapshot_budget=sb, fallback=...)      # one call for all

The module (decoder.c, compiled to decoder.wasm) turns the bytes a pause
copied into the same JSON values as probe_compiler.decode.decode_value (the
reference, which stays in Python): every kind the reference decodes, maps
and floats, funcs, time.Time, time.Duration and error messages included.
An interface's dynamic type or a func's name it has not been given answers
Unsupported with the address or pcs: the caller looks them up as the
reference does and asks again. A list map whose keys hold floats (the
reference sorts those by Python's float text), a type the reference would
call malformed, answer Unsupported and the caller decodes that value in
Python. It runs isolated: its own linear memory (capped), a fuel budget per
value (a bound on instructions: a hostile or looping input ends, it does not
hang the agent), no imports at all. Input it can't make sense of, a trap, an
exhausted fuel or memory budget: each ends as an error row
({"__error": "wasm decoder: ..."}), never as an exception out of here.
"""
from __future__ import annotations

import json
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from probe_compiler.decode import (ERROR_MESSAGE_FIELD, HCHAN_OFFSETS, ITAB_TYPE_OFFSET, SPECIAL_TYPES,
                                   Budgets, ByteBudget, direct_iface, field_name)
from probe_compiler.types import Kind, TypeTable

MODULE = Path(__file__).with_name("decoder.wasm")
MAGIC = 0x31575258                 # "XRW1"
HDR = struct.Struct("<I4I QQ II Q II 6I 4I 2I 4I")
TYPE_REC = struct.Struct("<IIQIQIIIIIII")  # 56 bytes; the last word: a map's key type
MAP_REC = struct.Struct("<18I")          # a map's layout, in the names section (decoder.c ML_*)
FUNC_REC = struct.Struct("<QII")
FIELD_REC = struct.Struct("<IIQII")      # 24 bytes
RANGE_REC = struct.Struct("<QQQ")
_RESULT = struct.Struct("<7Q")
RTYPE_REC = struct.Struct("<QI4x")
NONE = 0xFFFFFFFF

KINDS = {Kind.BOOL: 1, Kind.INT: 2, Kind.UINT: 3, Kind.STRING: 4, Kind.POINTER: 5,
         Kind.UNSAFE_POINTER: 6, Kind.STRUCT: 7, Kind.ARRAY: 8, Kind.SLICE: 9, Kind.UNKNOWN: 10,
         Kind.INTERFACE: 12, Kind.CHAN: 13, Kind.FLOAT: 14, Kind.COMPLEX: 15, Kind.MAP: 16, Kind.FUNC: 17}
OTHER = 11
K_TIME, K_DURATION = 18, 19
T_DIRECT, T_NAMED_ERROR, T_JOIN_ERROR = 0x100, 0x200, 0x400

ST_OK, ST_UNSUPPORTED, ST_MALFORMED, ST_OUTPUT = range(4)

DEFAULT_FUEL = 20_000_000          # instructions per value (about 10 ms); see docs/ebpf.md
DEFAULT_MEMORY = 64 << 20          # the module's linear memory, at most
OUTPUT_FACTOR = 16                 # output cap: this many times the input, plus 64 KiB


class Unsupported(Exception):
    """The module does not decode this value's kinds: decode it in Python.
    `rtype`: an interface's dynamic type (runtime address) the table lacked;
    learn it and ask again. `pcs`: funcs' pcs the func table lacked; name
    them (func_name) and ask again."""

    def __init__(self, why: str, rtype: int = 0, pcs: tuple = ()):
        super().__init__(why)
        self.rtype = rtype
        self.pcs = pcs


@dataclass(frozen=True)
class TypeBlob:
    """The type table as the module reads it: sorted type records, field
    records, names. Built once per plan (pure: no wasmtime here)."""
    types: bytes
    fields: bytes
    names: bytes
    ntypes: int
    nfields: int

    @staticmethod
    def build(table: TypeTable) -> "TypeBlob":
        types, fields, names = [], [], bytearray()
        name_at: dict[str, tuple[int, int]] = {}

        def name(s: str) -> tuple[int, int]:
            hit = name_at.get(s)
            if hit is None:
                b = s.encode()
                hit = name_at[s] = (len(names), len(b))
                names.extend(b)
            return hit

        nf = 0
        for tid in sorted(table.types):
            t = table.types[tid]
            if not 0 <= tid < NONE:
                raise ValueError(f"type id {tid} does not fit the module's table")
            kind = KINDS.get(t.kind, OTHER)
            f0 = f1 = key = 0
            if t.name in SPECIAL_TYPES:
                kind, f0, f1 = _special_layout(table, t)
            elif t.kind == Kind.FLOAT and t.size not in (4, 8) or t.kind == Kind.COMPLEX and t.size not in (8, 16) \
                    or t.kind in (Kind.FUNC, Kind.MAP) and t.size != 8:
                kind = OTHER           # the reference would call it malformed: let it say so
            if kind in (KINDS[Kind.STRING], KINDS[Kind.SLICE]):
                a, n = ((t.field("str"), t.field("len")) if t.kind == Kind.STRING
                        else (t.field("array"), t.field("len")))
                sizes = [table.types.get(f.type_id).size if f and f.type_id in table.types else None
                         for f in (a, n)]
                if a is None or n is None or None in sizes or max(a.offset, n.offset) > 0xFFFF \
                        or max(sizes) > 8:
                    kind = OTHER       # the reference would call it malformed: let it say so
                else:
                    f0, f1 = a.offset | sizes[0] << 16, n.offset | sizes[1] << 16
            length, elem_override = t.length or 0, None
            if t.kind == Kind.MAP and kind != OTHER:
                rec = _map_layout(table, t)
                if rec is None:
                    kind = OTHER
                else:
                    length, key = len(names), t.key
                    names.extend(rec)
            if t.kind == Kind.INTERFACE and kind != OTHER:
                got = _iface_layout(table, t)
                if got is None:
                    kind = OTHER
                else:
                    f0, f1, length = got
            elif t.kind == Kind.CHAN and kind != OTHER:
                got = _chan_layout(table, t)
                if got is None:
                    kind = OTHER
                else:
                    f0, f1, length, elem_override = got
            if kind != OTHER:
                if direct_iface(table, t):
                    kind |= T_DIRECT
                if t.name in ERROR_MESSAGE_FIELD:   # the message field's name, for the module to read
                    fo, fl = name(ERROR_MESSAGE_FIELD[t.name])
                    if fo < 1 << 24 and fl < 256 and t.kind != Kind.MAP:
                        kind |= T_NAMED_ERROR
                        key = fo << 8 | fl
                    else:
                        kind = OTHER
                elif t.name == "*errors.joinError":
                    kind |= T_JOIN_ERROR
            no, nl = name(t.name)
            first = nf
            if t.kind == Kind.STRUCT:
                for f in t.fields:
                    fo, fl = name(field_name(f.name, f.embedded))
                    fields.append(FIELD_REC.pack(fo, fl, f.offset, f.type_id, 0))
                    nf += 1
            elem = t.elem if t.elem is not None and t.elem in table.types else NONE
            if t.kind in (Kind.ARRAY, Kind.SLICE) and elem == NONE:
                kind = OTHER
            if elem_override is not None:
                elem = elem_override
            types.append(TYPE_REC.pack(tid, kind, t.size, elem, length, no, nl,
                                       nf - first if t.kind == Kind.STRUCT else 0, first, f0, f1, key))
        return TypeBlob(b"".join(types), b"".join(fields), bytes(names), len(types), nf)


def _field(table: TypeTable, t, name: str):
    """(offset, size) of field `name` of t, or None (the reference would call it malformed)."""
    f = t.field(name)
    ft = table.types.get(f.type_id) if f is not None else None
    if ft is None or ft.size > 8 or f.offset > 0xFFFF:
        return None
    return f.offset, ft.size


def _special_layout(table: TypeTable, t) -> tuple[int, int, int]:
    """(kind, f0, f1) of time.Time (its wall and ext fields) or time.Duration."""
    if t.name == "time.Duration":
        return (K_DURATION, 0, 0) if t.size <= 8 else (OTHER, 0, 0)
    if t.name == "time.Time":
        wall, ext = _field(table, t, "wall"), _field(table, t, "ext")
        if wall and ext and max(wall[0] + wall[1], ext[0] + ext[1]) <= t.size:
            return K_TIME, wall[0] | wall[1] << 16, ext[0] | ext[1] << 16
    return OTHER, 0, 0


def _map_layout(table: TypeTable, t) -> bytes | None:
    """The map's layout record (decoder.c ML_*), computed by the reference's own
    layout functions; None when the reference would find it malformed (then
    Python decodes the value and says so)."""
    from probe_compiler.decode import (MAX_INLINE_KV, OBJECT_KEY_KINDS, TABLE_GROUPS_OFFSETS, _Decoder,
                                       hmap_bucket_layout, swiss_group_layout)
    lay = t.map_layout
    if lay is None or lay.impl not in ("swiss", "hmap") or t.key not in table or t.elem not in table:
        return None
    d = _Decoder(table, None, Budgets(), ByteBudget(0), ByteBudget(0), None, None)
    try:
        header = d.type(lay.header)
        names = ("used", "dirPtr", "dirLen") if lay.impl == "swiss" else ("count", "flags", "B", "buckets",
                                                                           "oldbuckets")
        hf = [d.offset(header, n) for n in names]
        sl = swiss_group_layout(d, t) if lay.impl == "swiss" else hmap_bucket_layout(d, t)
        tsize, tdata, tmask = 0, (0, 0), (0, 0)
        if lay.impl == "swiss":
            table_t = table.types.get(lay.table)
            tsize = table_t.size if table_t else TABLE_GROUPS_OFFSETS[1] + 8
            tdata, tmask = (TABLE_GROUPS_OFFSETS[0], 8), (TABLE_GROUPS_OFFSETS[1], 8)
            if table_t is not None:
                groups = table_t.field("groups")
                if groups is not None:
                    gr = d.type(groups.type_id)
                    tdata = (groups.offset + d.offset(gr, "data")[0], 8)
                    tmask = (groups.offset + d.offset(gr, "lengthMask")[0], 8)
                elif table_t.field("groups_data"):
                    tdata, tmask = d.offset(table_t, "groups_data"), d.offset(table_t, "groups_lengthMask")
    except Exception:
        return None
    key_t, elem_t = table[t.key], table[t.elem]
    ks = 8 if key_t.size > MAX_INLINE_KV else key_t.size
    es = 8 if elem_t.size > MAX_INLINE_KV else elem_t.size
    packed = []
    for off, size, within in [(o, s, header.size) for o, s in hf] + [(*tdata, tsize), (*tmask, tsize)]:
        if size > 8 or off > 0xFFFF or off + size > within:
            return None
        packed.append(off | size << 16)
    if sl.ctrl + 8 > sl.size or sl.keys + 7 * sl.key_stride + ks > sl.size \
            or sl.elems + 7 * sl.elem_stride + es > sl.size or min(sl.ctrl, sl.keys, sl.elems) < 0 \
            or (lay.impl == "hmap" and not 0 <= sl.overflow <= sl.size - 8) or not 0 < header.size < 1 << 32 \
            or sl.size >= 1 << 31 or (lay.impl == "swiss" and not 0 < tsize < 1 << 32):
        return None
    h = packed[:len(hf)] + [0] * (5 - len(hf))
    return MAP_REC.pack(1 if lay.impl == "swiss" else 2, int(key_t.kind in OBJECT_KEY_KINDS), header.size, *h,
                        sl.size, sl.ctrl, sl.keys, sl.key_stride, sl.elems, sl.elem_stride,
                        max(sl.overflow, 0), tsize, *packed[len(hf):])


def _iface_layout(table: TypeTable, t):
    """(type-or-itab field, data field, itab Type offset | eface << 32) as decode._interface reads them."""
    word = _field(table, t, "_type" if t.empty else "tab")
    data = _field(table, t, "data")
    if word is None or data is None:
        return None
    itab_off = ITAB_TYPE_OFFSET
    if not t.empty:
        tab = t.field("tab")
        ptr = table.types.get(tab.type_id)
        itab = table.types.get(ptr.elem) if ptr is not None and ptr.elem is not None else None
        f = itab and (itab.field("Type") or itab.field("_type"))
        itab_off = f.offset if f else ITAB_TYPE_OFFSET
    return (word[0] | word[1] << 16, data[0] | data[1] << 16, itab_off | (1 << 32 if t.empty else 0))


def _chan_layout(table: TypeTable, t):
    """(qcount, dataqsiz, closed | size << 16, header bytes) as decode._chan reads them."""
    h = table.types.get(t.chan_header) if t.chan_header is not None else None
    if h is not None:
        got = [_field(table, h, n) for n in ("qcount", "dataqsiz", "closed")]
        if None in got:
            return None
        size = h.size
    else:
        got = [HCHAN_OFFSETS[n] for n in ("qcount", "dataqsiz", "closed")]
        size = max(o + n for o, n in HCHAN_OFFSETS.values())
    (qo, qs), (do, ds), (co, cs) = got
    return qo | qs << 16, do | ds << 16, co | cs << 16, size


@dataclass(frozen=True)
class Image:
    """The memory the decoder may read: disjoint ranges sorted by address."""
    ranges: bytes                  # (start, length, offset in data) records
    data: bytes
    count: int

    @staticmethod
    def of(chunks) -> "Image":
        """From (address, bytes) pairs, overlapping or not (later bytes win)."""
        spans: list[list] = []
        for addr, b in sorted(((a, bytes(b)) for a, b in chunks if b), key=lambda x: x[0]):
            if spans and addr <= spans[-1][0] + len(spans[-1][1]):
                start, cur = spans[-1]
                off = addr - start
                merged = bytearray(cur)
                if off + len(b) > len(merged):
                    merged.extend(b"\0" * (off + len(b) - len(merged)))
                merged[off:off + len(b)] = b
                spans[-1][1] = bytes(merged)
            else:
                spans.append([addr, b])
        recs, data = [], bytearray()
        for start, b in spans:
            recs.append(RANGE_REC.pack(start, len(b), len(data)))
            data.extend(b)
        return Image(b"".join(recs), bytes(data), len(spans))


def encode_input(blob: TypeBlob, type_id: int, data: bytes | None, addr: int | None, image: Image,
                 budgets: Budgets, frame_left: int, snapshot_left: int, raw: bool,
                 rtypes: dict | None = None, funcs: dict | None = None) -> bytes:
    """One value as one self-contained input (decoder.c's header comment has
    the layout): the header at 0, then the root bytes, tables and image."""
    root = data or b""
    rt, ft = rtype_table(rtypes), func_table(funcs)
    static_at = HDR.size + len(root)
    return b"".join([header(blob, type_id, data, addr, image, budgets, frame_left, snapshot_left, raw,
                            root_at=HDR.size, static_at=static_at, rt=rt, ft=ft), root,
                     *static_parts(blob, image, rt, ft)])


def rtype_table(rtypes: dict | None) -> bytes:
    """{runtime type address: type id}, as the module's sorted records."""
    return b"".join(RTYPE_REC.pack(a, tid) for a, tid in sorted((rtypes or {}).items()))


def func_table(funcs: dict | None) -> tuple[bytes, bytes]:
    """{pc: name or None} as the module's sorted (pc, name) records and their names."""
    recs, names = [], bytearray()
    for pc, name in sorted((funcs or {}).items()):
        if name:
            b = name.encode("utf-8", "surrogatepass")
            recs.append(FUNC_REC.pack(pc, len(names), len(b)))
            names.extend(b)
        else:
            recs.append(FUNC_REC.pack(pc, 0, NONE))
    return b"".join(recs), bytes(names)


def static_parts(blob: TypeBlob, image: Image, rt: bytes = b"", ft: tuple = (b"", b"")) -> list[bytes]:
    return [blob.types, blob.fields, blob.names, image.ranges, image.data, rt, ft[0], ft[1]]


def _tail(blob: TypeBlob, image: Image, rt: bytes, static_at: int, ft: tuple = (b"", b"")) -> tuple:
    """The header's section fields, for the static parts placed at static_at."""
    offs, off = [], static_at
    for part in static_parts(blob, image, rt, ft):
        offs.append(off)
        off += len(part)
    return (blob.ntypes, offs[0], blob.nfields, offs[1], offs[2], len(blob.names),
            image.count, offs[3], offs[4], len(image.data), len(rt) // RTYPE_REC.size, offs[5],
            len(ft[0]) // FUNC_REC.size, offs[6], offs[7], len(ft[1]))


def header(blob: TypeBlob, type_id: int, data: bytes | None, addr: int | None, image: Image,
           budgets: Budgets, frame_left: int, snapshot_left: int, raw: bool, *, root_at: int,
           static_at: int, rt: bytes = b"", ft: tuple = (b"", b"")) -> bytes:
    """The header of one value whose root bytes are at root_at and whose
    tables and image (static_parts, in order) start at static_at."""
    flags = (1 if data is not None else 0) | (2 if addr is not None else 0)
    clamp = lambda v: max(0, min(v, (1 << 64) - 1))   # noqa: E731
    return HDR.pack(MAGIC, min(budgets.string_bytes, NONE), min(budgets.elements, NONE),
                    min(budgets.depth, NONE), int(raw), clamp(frame_left), clamp(snapshot_left),
                    type_id & NONE, flags, (addr or 0) & ((1 << 64) - 1), root_at, len(data or b""),
                    *_tail(blob, image, rt, static_at, ft))


def _error(why: str) -> tuple[dict, dict]:
    v = {"__error": f"wasm decoder: {why}"}
    return v, dict(v)


class WasmDecoder:
    """The module, instantiated with its limits. Not thread-safe: one per thread
    (`for_thread()`). Reinstantiated after a trap, so a hostile input can't
    leave state behind for the next value."""

    _module_lock = threading.Lock()
    _compiled: dict = {}

    def __init__(self, fuel: int = DEFAULT_FUEL, memory_bytes: int = DEFAULT_MEMORY):
        import wasmtime
        self._wt = wasmtime
        self.fuel, self.memory_bytes = fuel, memory_bytes
        with WasmDecoder._module_lock:
            got = WasmDecoder._compiled.get("m")
            if got is None:
                cfg = wasmtime.Config()
                cfg.consume_fuel = True
                engine = wasmtime.Engine(cfg)
                got = WasmDecoder._compiled["m"] = (engine, wasmtime.Module(engine, MODULE.read_bytes()))
        self._engine, self._module = got
        self.stats = {"values": 0, "unsupported": 0, "errors": 0}
        self._instantiate()

    def _instantiate(self) -> None:
        wt = self._wt
        self._store = wt.Store(self._engine)
        self._store.set_limits(memory_size=self.memory_bytes)
        inst = wt.Instance(self._store, self._module, [])
        ex = inst.exports(self._store)
        self._mem = ex["memory"]
        self._prepare, self._decode = ex["prepare"], ex["decode"]
        self._out_ptr, self._out_len = ex["output_ptr"], ex["output_len"]
        self._used, self._why = ex["bytes_used"], ex["why_ptr"]
        self._decode_at, self._decode_both = ex["decode_at"], ex["decode_both"]
        self._view, self._view_key = None, None
        self._decode_batch = ex["decode_batch"]
        self._missing_ptr, self._missing_count = ex["missing_ptr"], ex["missing_count"]
        self._store.set_fuel(1000)
        self._result = ex["result_ptr"](self._store)
        self._batch_result = ex["batch_result_ptr"](self._store)
        self._staged = None

    _local = threading.local()

    @classmethod
    def for_thread(cls) -> "WasmDecoder":
        d = getattr(cls._local, "dec", None)
        if d is None:
            d = cls._local.dec = cls()
        return d

    # -- one value

    def run(self, payload: bytes) -> tuple[int, bytes, int, str]:
        """(status, output JSON bytes, bytes read, why) for one encoded input.
        Raises wasmtime's Trap (fuel, memory, a bug) after reinstantiating."""
        store = self._store
        try:
            store.set_fuel(self.fuel)
            out_cap = len(payload) * OUTPUT_FACTOR + (64 << 10)
            base = self._prepare(store, len(payload), out_cap)
            if not base:
                return ST_MALFORMED, b"", 0, f"an input of {len(payload)} bytes does not fit its memory limit"
            self._mem.write(store, payload, base)
            status = self._decode(store)
            n, at = self._out_len(store), self._out_ptr(store)
            out = bytes(self._mem.read(store, at, at + n)) if n else b""
            why = ""
            if status != ST_OK:
                p = self._why(store)
                raw = bytes(self._mem.read(store, p, p + 200)) if p else b""
                why = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
            return status, out, self._used(store), why
        except Exception:
            self._instantiate()
            raise

    def _stage(self, blob: TypeBlob, image: Image, root_len: int, rt: bytes = b"",
               ft: tuple = (b"", b"")) -> int:
        """Write the tables and the image into the module once (per blob,
        image and rtype table), leaving room after them for one value's header
        and root; returns where that room starts."""
        key = (id(blob), id(image), rt, ft)
        st = self._staged
        if st is None or st[0] != key or st[3] < HDR.size + root_len:
            self._staged = None
            static = b"".join(static_parts(blob, image, rt, ft))
            room = HDR.size + max(root_len, 4096)
            self._store.set_fuel(self.fuel)
            base = self._prepare(self._store, len(static) + room, max(64 << 10, len(static) * OUTPUT_FACTOR))
            if not base:
                return -1
            self._refresh_view()
            self._view[base:base + len(static)] = static
            st = self._staged = (key, base, len(static), room, blob, image, _tail(blob, image, rt, 0, ft))
        return st[2]

    def _refresh_view(self) -> None:
        """A memoryview of the module's linear memory (valid until it grows)."""
        import ctypes
        n = self._mem.data_len(self._store)
        ptr = ctypes.addressof(self._mem.data_ptr(self._store).contents)
        if self._view_key != (ptr, n):
            self._view = memoryview((ctypes.c_ubyte * n).from_address(ptr)).cast("B")
            self._view_key = (ptr, n)

    def decode_value(self, blob: TypeBlob, type_id: int, data: bytes | None, addr: int | None,
                     image: Image, budgets: Budgets, *, frame_budget: ByteBudget,
                     snapshot_budget: ByteBudget, rtypes: dict | None = None,
                     funcs: dict | None = None) -> tuple:
        """(plain, raw) as probe_compiler.decode.decode_value gives them, the
        byte budgets charged the same; raises Unsupported for kinds the module
        does not decode (nothing is charged then)."""
        self.stats["values"] += 1
        wt, store = self._wt, self._store
        try:
            root = data or b""
            at = self._stage(blob, image, len(root), rtype_table(rtypes), func_table(funcs))
            if at < 0:
                self.stats["errors"] += 1
                return _error(f"the tables and {len(image.data):,} copied bytes do not fit its memory limit")
            base, tail = self._staged[1], self._staged[6]
            clamp = (1 << 64) - 1
            hdr = HDR.pack(MAGIC, min(budgets.string_bytes, NONE), min(budgets.elements, NONE),
                           min(budgets.depth, NONE), 0, max(0, min(frame_budget.remaining, clamp)),
                           max(0, min(snapshot_budget.remaining, clamp)), type_id & NONE,
                           (1 if data is not None else 0) | (2 if addr is not None else 0),
                           (addr or 0) & clamp, at + HDR.size, len(root), *tail)
            view = self._view
            w = base + at
            view[w:w + HDR.size] = hdr
            view[w + HDR.size:w + HDR.size + len(root)] = root
            store.set_fuel(self.fuel)
            self._decode_both(store, at)        # the one call into the module for this value
            self._refresh_view()                # output may have grown the memory
            view = self._view
            status, n0, n1, used, why, out, arg = _RESULT.unpack_from(view, self._result)
            status, refused = status & 0xFF, status >> 8
            if status == ST_UNSUPPORTED:
                self.stats["unsupported"] += 1
                text = self._text(why)
                pcs = ()
                if "funcs" in text:
                    n = self._missing_count(store)
                    pcs = struct.unpack_from(f"<{n}Q", view, self._missing_ptr(store))
                raise Unsupported(text, rtype=arg if "dynamic type" in text else 0, pcs=pcs)
            if status != ST_OK:
                self.stats["errors"] += 1
                return _error(self._text(why) or f"status {status}")
            got = [json.loads(bytes(view[out:out + n0])), json.loads(bytes(view[out + n0:out + n0 + n1]))]
        except Unsupported:
            raise
        except wt.Trap as e:
            self._instantiate()
            self.stats["errors"] += 1
            text = str(e)
            if "fuel" in text:
                return _error(f"ran out of fuel (budget {self.fuel:,} instructions)")
            return _error("trapped: " + text.splitlines()[-1].strip())
        except (wt.WasmtimeError, ValueError) as e:
            self._instantiate()
            self.stats["errors"] += 1
            return _error(str(e).splitlines()[0] if str(e) else type(e).__name__)
        _charge(frame_budget, used, refused & 1)
        _charge(snapshot_budget, used, refused & 2)
        return got[0], got[1]

    def _batch_call(self, blob: TypeBlob, image: Image, chunk: list, budgets: Budgets, rt: bytes,
                    ft: tuple, chain: bool) -> list:
        """One call into the module for up to 4,096 values (type id, root bytes
        or None, address or None, frame bytes left, snapshot bytes left); with
        `chain`, each value after the first starts with the budgets the one
        before it left. Per value (status, plain, raw, bytes read); outputs
        are parsed in one json.loads. Raises wasmtime's Trap (reinstantiated)."""
        store = self._store
        roots = b"".join(d or b"" for _, d, _, _, _ in chunk)
        at = self._stage(blob, image, len(chunk) * HDR.size + len(roots), rt, ft)
        if at < 0:
            return [(ST_MALFORMED, *_error("the batch does not fit its memory limit"), 0)] * len(chunk)
        base, tail = self._staged[1], self._staged[6]
        clamp = (1 << 64) - 1
        head = (MAGIC, min(budgets.string_bytes, NONE), min(budgets.elements, NONE), min(budgets.depth, NONE), 0)
        hdrs, r, pack = [], at + len(chunk) * HDR.size, HDR.pack
        for i, (tid, data, addr, f_left, s_left) in enumerate(chunk):
            n = len(data) if data else 0
            flags = (1 if data is not None else 0) | (2 if addr is not None else 0) | (12 if chain and i else 0)
            if not (0 <= f_left <= clamp and 0 <= s_left <= clamp):
                f_left, s_left = max(0, min(f_left, clamp)), max(0, min(s_left, clamp))
            hdrs.append(pack(*head, f_left, s_left, tid & NONE, flags, (addr or 0) & clamp, r, n, *tail))
            r += n
        payload = b"".join(hdrs) + roots
        try:
            self._refresh_view()
            self._view[base + at:base + at + len(payload)] = payload
            store.set_fuel(self.fuel * len(chunk))
            done = self._decode_batch(store, at, len(chunk))
        except Exception:
            self._instantiate()
            raise
        self._refresh_view()
        view = self._view
        res = struct.unpack_from(f"<{4 * done}Q", view, self._batch_result)
        pos, n = self._out_ptr(store), self._out_len(store)
        parsed = iter(json.loads(b"[" + bytes(view[pos:pos + n - 1]) + b"]")) if n else iter(())
        out = []
        for i in range(done):
            st, used = res[4 * i] & 0xFF, res[4 * i + 3]
            if st == ST_OK:
                out.append((st, next(parsed), next(parsed), (used, res[4 * i] >> 8)))
            else:
                out.append((st, None, None, (0, 0)))
        out += [(ST_OUTPUT, None, None, (0, 0))] * (len(chunk) - done)
        return out

    def decode_batch(self, blob: TypeBlob, image: Image, values: list, budgets: Budgets,
                     rtypes: dict | None = None, funcs: dict | None = None) -> list:
        """Many values in one call into the module: `values` are (type id,
        root bytes or None, address or None, frame bytes left, snapshot bytes
        left); returns per value (plain, raw, bytes read), or None where the
        module does not decode it (decode that one in Python). Each value's
        budgets are its own (decode_values chains them, as one frame does)."""
        rt, ft = rtype_table(rtypes), func_table(funcs)
        out: list = []
        for start in range(0, len(values), 4096):
            chunk = values[start:start + 4096]
            try:
                got = self._batch_call(blob, image, chunk, budgets, rt, ft, chain=False)
            except self._wt.Trap as e:
                err = _error("ran out of fuel" if "fuel" in str(e) else "trapped")
                out.extend((err[0], err[1], 0) for _ in chunk)
                continue
            for st, plain, raw, (used, _) in got:
                if st == ST_OK:
                    out.append((plain, raw, used))
                elif st == ST_UNSUPPORTED:
                    out.append(None)
                else:
                    e = _error("its output is full" if st == ST_OUTPUT else f"status {st}")
                    out.append((e[0], e[1], 0))
        return out

    def decode_values(self, blob: TypeBlob, image: Image, values: list, budgets: Budgets, *,
                      frame_budget: ByteBudget, snapshot_budget: ByteBudget, rtypes: dict | None = None,
                      funcs: dict | None = None, fallback=None, learn=None) -> list:
        """The values of one frame, (type id, root bytes or None, address or
        None) in order, decoded as decode_value would one after another (the
        frame's and the snapshot's budgets spent by each in turn), in one call
        into the module for all of them. A value the module does not decode
        is asked again alone, `learn(e)` given each Unsupported (it adds the
        runtime type or the funcs' names to `rtypes`/`funcs` and says whether
        it did), else it is `fallback(i)` (the reference, spending the same
        budgets), or None; the module is then asked again from the next
        value. A batch that traps is decoded one value a call (each with its
        own fuel)."""
        rt, ft = rtype_table(rtypes), func_table(funcs)
        out: list = [None] * len(values)
        i = 0
        while i < len(values):
            chunk = [(tid, d, a, frame_budget.remaining, snapshot_budget.remaining)
                     for tid, d, a in values[i:i + 4096]]
            try:
                got = self._batch_call(blob, image, chunk, budgets, rt, ft, chain=True)
            except self._wt.Trap:
                for j in range(i, i + len(chunk)):
                    tid, d, a = values[j]
                    try:
                        out[j] = self.decode_value(blob, tid, d, a, image, budgets, frame_budget=frame_budget,
                                                   snapshot_budget=snapshot_budget, rtypes=rtypes, funcs=funcs)
                    except Unsupported:
                        out[j] = fallback(j) if fallback else None
                i += len(chunk)
                continue
            nxt = i + len(chunk)
            for j, (st, plain, raw, (used, refused)) in enumerate(got):
                if st == ST_OK:
                    _charge(frame_budget, used, refused & 1)
                    _charge(snapshot_budget, used, refused & 2)
                    out[i + j] = (plain, raw)
                    continue
                if st == ST_UNSUPPORTED:
                    out[i + j] = self._one_learning(blob, image, values[i + j], budgets, frame_budget,
                                                    snapshot_budget, rtypes, funcs, learn,
                                                    lambda k=i + j: fallback(k) if fallback else None)
                    rt, ft = rtype_table(rtypes), func_table(funcs)
                else:            # an error row: nothing charged, as decode_value
                    e = _error("its output is full" if st == ST_OUTPUT else f"status {st}")
                    out[i + j] = e
                nxt = i + j + 1  # the chain broke here: the rest are asked again
                break
            i = nxt
        return out

    def _one_learning(self, blob, image, value, budgets, frame_budget, snapshot_budget, rtypes, funcs,
                      learn, fallback):
        """One value alone, learning what it needs (as the agent's decode_value
        does) while `learn` learns something; else the fallback."""
        tid, d, a = value
        for _ in range(64):
            try:
                return self.decode_value(blob, tid, d, a, image, budgets, frame_budget=frame_budget,
                                         snapshot_budget=snapshot_budget, rtypes=rtypes, funcs=funcs)
            except Unsupported as e:
                if learn is None or not learn(e):
                    break
        return fallback()

    def _text(self, p: int) -> str:
        if not p:
            return ""
        self._refresh_view()
        raw = bytes(self._view[p:p + 200])
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _charge(b: ByteBudget, used: int, refused: int = 0):
    """What the module read, charged as the reference's reads would be (it
    refuses a read that does not fit before reading, so `used` fits), and
    whether it refused one (ByteBudget.refused: the snapshot was cut)."""
    b.used += used
    b.refused = b.refused or bool(refused)


# ---------------------------------------------------------------- the agent's entry point

_blobs: dict[int, tuple[int, TypeBlob]] = {}
_images: dict[int, tuple[object, Image]] = {}


def blob_for(types: TypeTable) -> TypeBlob:
    """The TypeBlob of a plan's table, rebuilt when the table grew (dynamic
    types met behind interfaces are added to it)."""
    hit = _blobs.get(id(types))
    if hit is None or hit[0] != len(types.types):
        if len(_blobs) > 64:
            _blobs.clear()
        hit = _blobs[id(types)] = (len(types.types), TypeBlob.build(types))
    return hit[1]


def image_of_copies(copies) -> Image:
    """The Image of agent.readexec.Copies (what a pause copied), built once."""
    hit = _images.get(id(copies))
    if hit is not None and hit[0] is copies:
        return hit[1]
    if not copies._built:
        copies._build()
    recs = b"".join(RANGE_REC.pack(int(s), int(e - s), int(b))
                    for s, e, b in zip(copies._istart, copies._iend, copies._ibase))
    img = Image(recs, copies._bytes.tobytes(), len(copies._istart))
    if len(_images) > 8:
        _images.clear()
    _images[id(copies)] = (copies, img)
    return img


def decode_value(types, type_id, data, addr, read, budgets, *, frame_budget, snapshot_budget,
                 func_name=lambda pc: None, type_by_rtype=lambda a: None):
    """probe_compiler.decode.decode_value's signature and answers, decoded by the
    module where it can: `read` must be a pause's copies (Copies.read), since
    the module reads no live memory; otherwise, and for the kinds the module
    does not decode, the Python reference decodes."""
    from agent.readexec import Copies
    from probe_compiler.decode import decode_value as reference
    copies = getattr(read, "__self__", None)
    if isinstance(copies, Copies) and type_id in types:
        learned = _learned_rtypes(types, type_by_rtype)
        names = _learned_funcs(types, func_name)
        dec = WasmDecoder.for_thread()
        for _ in range(64):                 # each round learns one interface's dynamic type, or funcs' names
            try:
                return dec.decode_value(blob_for(types), type_id, data, addr, image_of_copies(copies), budgets,
                                        frame_budget=frame_budget, snapshot_budget=snapshot_budget,
                                        rtypes=learned, funcs=names)
            except Unsupported as e:
                if e.pcs and not any(pc in names for pc in e.pcs):
                    for pc in e.pcs:        # as the reference: func_name(pc) or {"__func": hex(pc)}
                        names[pc] = func_name(pc) or None
                    continue
                if not e.rtype or e.rtype in learned:
                    break                   # what the module hands back to Python
                t = type_by_rtype(e.rtype)
                if t is not None and t.id not in types:
                    break
                # type_by_rtype may have grown the table (blob_for rebuilds); NONE: no type has
                # that address, and the module writes the reference's "unknown" marker
                learned[e.rtype] = t.id if t is not None else NONE
    return reference(types, type_id, data, addr, read, budgets, frame_budget=frame_budget,
                     snapshot_budget=snapshot_budget, func_name=func_name, type_by_rtype=type_by_rtype)


_learned: dict[tuple, tuple[object, object, dict]] = {}


def _process_of(fn) -> tuple:
    """What a lookup callable answers for: the values it closes over (the
    agent's func_name closes over its target, its type_by_rtype over the
    target and its moduledata base), or the callable itself."""
    cells = getattr(fn, "__closure__", None)
    return tuple(c.cell_contents for c in cells) if cells else (fn,)


def _learned_map(kind: str, types: TypeTable, lookup) -> dict:
    """A dict of what `lookup` answered, kept per plan and per process (a
    runtime type's address and a pc are the process's own)."""
    owner = _process_of(lookup)
    key = (kind, id(types), tuple(id(o) for o in owner))
    hit = _learned.get(key)
    if hit is None or hit[0] is not types or hit[1] != owner:
        if len(_learned) > 128:
            _learned.clear()
        hit = _learned[key] = (types, owner, {})
    return hit[2]


def _learned_rtypes(types: TypeTable, type_by_rtype=None) -> dict:
    """Runtime type address -> type id (NONE: no type), as this plan's interfaces met them."""
    return _learned_map("rtypes", types, type_by_rtype)


def _learned_funcs(types: TypeTable, func_name) -> dict:
    """pc -> function name (None: none), as this plan's funcs met them."""
    return _learned_map("funcs", types, func_name)
