"""Decodes a captured Go value into its JSON form (docs/values.md).

Pure: memory comes in as `read(addr, n) -> bytes`, types as a `TypeTable`, so
the same code serves the ptrace reader, the eBPF decoder's tests and replays of
recorded memory. A decode never raises: unreadable memory, spent budgets and
malformed data become markers inside the value, and its siblings go on.

The decoder builds one tree in which pointers are `_Ptr` nodes, then renders it
twice: the plain form flattens them, the raw form keeps `{"__addr", "value"}`
(the address an integer, so SQL can join and compare it).
Keeping pointers out of band means no user data (a map key "__addr", say) can
be mistaken for a pointer wrapper.

Maps. Both runtime layouts are read from the header types the TypeTable names
(`MapLayout.header`), by field name:
- swiss tables (Go >= 1.24): `Map.used/dirPtr/dirLen`; `dirLen == 0` means
  `dirPtr` is one group, else it is an array of `dirLen` table pointers (a
  table may appear several times, so tables are deduplicated). A table's
  `groups.data/lengthMask` (or flattened `groups_data/groups_lengthMask`) give
  `lengthMask + 1` groups. A group is a uint64 ctrl word then 8 slots; slot i is
  full when ctrl byte i has its high bit clear (empty is 0x80, deleted 0xFE).
  The group layout comes from the DWARF group type when the table has it
  (`ctrl` + `slots[8]{key, elem}`, or the split `keys[8]`/`elems[8]` of
  GOEXPERIMENT=mapsplitgroup); else it is computed as the compiler does
  (reflectdata.MapGroupType: interleaved slots, Go's alignment rules and the
  extra byte after a trailing zero-size field).
- hmap (Go < 1.24): `hmap.count/flags/B/buckets/oldbuckets`; 2^B buckets of
  `tophash[8]`, `keys[8]`, `values[8]`, `overflow` (offsets from the DWARF
  bucket<K,V> type when the table has it, else computed the same way as
  cmd/link lays it out); a slot is full when its
  tophash is >= 5 (minTopHash), which also skips evacuated slots, so during a
  grow the old buckets are walked too and nothing is seen twice.
Keys or elems over 128 bytes are stored indirectly (abi.MapMaxKeyBytes).
Only the first `elements` entries in memory order are read (reading them all
to pick the smallest would make the cost unbounded); those are then sorted.

Depth counts every indirection: pointers, slice arrays, maps and interface
data pointers, since a cycle or a deep structure can run through any of them.
"""
from __future__ import annotations

import codecs
import datetime
import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from probe_compiler.capture_limits import DEFAULTS as _LIMITS
from probe_compiler.types import GoType, Kind, TypeTable

PTR = 8                    # amd64/arm64: the only targets Ex-Ray supports
MAX_INLINE_KV = 128        # abi.MapMaxKeyBytes == abi.MapMaxElemBytes
GROUP_SLOTS = 8            # abi.MapGroupSlots, also hmap's bucketCnt
MIN_TOPHASH = 5            # hmap: tophash values below this mark empty/evacuated slots
SAME_SIZE_GROW = 8         # hmap.flags bit: oldbuckets has as many buckets as buckets
EAGER_BYTES = 4096         # read a struct or element run whole up to this size
# Fallbacks when the table lacks the runtime type (documented in the report):
TABLE_GROUPS_OFFSETS = (16, 24)          # internal/runtime/maps.table groups.data, .lengthMask
HCHAN_OFFSETS = {"qcount": (0, 8), "dataqsiz": (8, 8), "closed": (28, 4)}
ITAB_TYPE_OFFSET = 8                     # abi.ITab.Type


@dataclass(frozen=True)
class Budgets:
    """The decoder's bounds: the values part of CaptureLimits
    (probe_compiler/capture_limits.py says why each exists; defaults from there)."""
    string_bytes: int = _LIMITS.string_bytes
    elements: int = _LIMITS.elements
    depth: int = _LIMITS.depth
    frame_bytes: int = _LIMITS.frame_bytes
    snapshot_bytes: int = _LIMITS.snapshot_bytes


class ByteBudget:
    """A byte allowance shared by every read of a frame or a snapshot.

    A read that does not fit is refused without spending anything, so a huge
    value is cut while the smaller values after it are still captured."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.refused = False   # some read did not fit: a value was cut

    @property
    def remaining(self) -> int:
        return self.limit - self.used

    def take(self, n: int) -> bool:
        if n > self.remaining:
            self.refused = True
            return False
        self.used += n
        return True


def decode_value(types: TypeTable, type_id: int, data: bytes | None, addr: int | None,
                 read: Callable[[int, int], bytes], budgets: Budgets, *,
                 frame_budget: ByteBudget, snapshot_budget: ByteBudget,
                 func_name: Callable[[int], str | None] = lambda pc: None,
                 type_by_rtype: Callable[[int], GoType | None] = lambda a: None) -> tuple[Any, Any]:
    """(plain, raw) JSON-ready values of the Go value of `type_id`.

    `data` holds the value's own bytes when the caller has them already;
    otherwise `t.size` bytes are read at `addr`."""
    d = _Decoder(types, read, budgets, frame_budget, snapshot_budget, func_name, type_by_rtype)
    if type_id not in types:
        tree: Any = {"__error": f"type {type_id} is not in the type table"}
    else:
        tree = d.value(types[type_id], data, addr, 0)
    return render(tree, raw=False), render(tree, raw=True)


# ---------------------------------------------------------------- tree nodes

@dataclass
class _Ptr:
    addr: int
    value: Any


@dataclass
class _MapList:
    """A map whose keys can't be object keys. Its entries are sorted by the
    key's JSON text when rendered, because that text differs between the plain
    and raw forms (a pointer key shows its address only in raw)."""
    entries: list[tuple[Any, Any]]
    tail: list  # markers after the entries


def _json_text(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def _is_pointer_marker(v: Any) -> bool:
    return isinstance(v, dict) and ("__cycle" in v or v.get("__truncated") == "depth")


def render(tree: Any, raw: bool) -> Any:
    if isinstance(tree, _Ptr):
        inner = render(tree.value, raw)
        if not raw or _is_pointer_marker(inner):
            return inner  # a cycle or depth marker already names the address
        return {"__addr": tree.addr, "value": inner}
    if isinstance(tree, _MapList):
        items = [{"key": render(k, raw), "value": render(v, raw)} for k, v in tree.entries]
        items.sort(key=lambda e: _json_text(e["key"]))
        return items + [render(m, raw) for m in tree.tail]
    if isinstance(tree, dict):
        return {k: render(v, raw) for k, v in tree.items()}
    if isinstance(tree, list):
        return [render(v, raw) for v in tree]
    return tree


class _Unreadable(Exception):
    def __init__(self, addr: int, n: int):
        super().__init__(f"unreadable memory at {addr:#x} ({n} bytes)")


class _OutOfBudget(Exception):
    pass


class _Malformed(Exception):
    """The type table or the memory contradicts the layout we expect."""


def _depth_marker(p: int) -> dict:
    return {"__truncated": "depth", "__addr": p}


def _uint(b: bytes, off: int, size: int = PTR) -> int:
    return int.from_bytes(b[off:off + size], "little")


def _sint(b: bytes, off: int, size: int = PTR) -> int:
    return int.from_bytes(b[off:off + size], "little", signed=True)


def _round(n: int, a: int) -> int:
    return (n + a - 1) // a * a if a > 1 else n


# ---------------------------------------------------------------- the decoder

class _Decoder:
    def __init__(self, types, read, budgets, frame, snapshot, func_name, type_by_rtype):
        self.types: TypeTable = types
        self._read = read
        self.budgets: Budgets = budgets
        self.frame: ByteBudget = frame
        self.snapshot: ByteBudget = snapshot
        self.func_name = func_name
        self.type_by_rtype = type_by_rtype
        self.path: set[tuple[int, int]] = set()   # (addr, type id) being decoded: cycle check
        self.offsets: dict[tuple[int, str], tuple[int, int]] = {}   # offset()'s answers

    # -- memory

    def read(self, addr: int, n: int) -> bytes:
        if n <= 0:
            return b""
        if n > self.frame.remaining or n > self.snapshot.remaining:
            for b in (self.frame, self.snapshot):
                b.refused = b.refused or n > b.remaining      # processes.truncated says so
            raise _OutOfBudget()
        self.frame.take(n)
        self.snapshot.take(n)
        try:
            b = self._read(addr, n)
        except Exception:
            raise _Unreadable(addr, n) from None
        if b is None or len(b) < n:
            raise _Unreadable(addr, n)
        return bytes(b[:n])

    def own(self, t: GoType, data: bytes | None, addr: int | None) -> bytes:
        """The value's bytes: the ones given, else read at its address."""
        if data is not None:
            if len(data) < t.size:
                raise _Malformed(f"{t.name}: {len(data)} bytes given, {t.size} needed")
            return data
        if addr is None:
            raise _Malformed(f"{t.name}: the value has no location")
        return self.read(addr, t.size)

    # -- types

    def type(self, type_id: int | None) -> GoType:
        t = self.types.types.get(type_id)
        if t is None:
            raise _Malformed(f"type {type_id} is not in the type table")
        return t

    def offset(self, t: GoType, name: str) -> tuple[int, int]:
        """(offset, size) of field `name` of runtime header type `t`."""
        hit = self.offsets.get((t.id, name))
        if hit is not None:
            return hit
        f = t.field(name)
        if f is None:
            raise _Malformed(f"{t.name} has no field {name}")
        hit = self.offsets[t.id, name] = f.offset, self.type(f.type_id).size
        return hit

    def fields(self, t: GoType, b: bytes, *names: str) -> list[int]:
        out = []
        for name in names:
            off, size = self.offset(t, name)
            out.append(_uint(b, off, size))
        return out

    # -- values

    def value(self, t: GoType, data: bytes | None, addr: int | None, depth: int) -> Any:
        try:
            decoder = SPECIAL_TYPES.get(t.name) or DECODERS[t.kind]
            return decoder(self, t, data, addr, depth)
        except _Unreadable as e:
            return {"__error": str(e)}
        except _OutOfBudget:
            return {"__truncated": "budget"}
        except Exception as e:  # malformed memory must never end a snapshot
            return {"__error": f"cannot decode {t.name}: {e}"}

    def follow(self, p: int, t: GoType, depth: int, data: bytes | None = None) -> Any:
        """Decode the value of type `t` that lives at `p`, one indirection down."""
        return self.indirect(p, t.id, depth, lambda d: self.value(t, data, p, d))

    def indirect(self, p: int, type_id: int, depth: int, decode: Callable[[int], Any]) -> Any:
        """One indirection (pointer, slice array, map): the depth budget, then
        cycle detection on the current path by (address, type)."""
        if depth >= self.budgets.depth:
            return _depth_marker(p)
        key = (p, type_id)
        if key in self.path:
            return {"__cycle": hex(p)}
        self.path.add(key)
        try:
            return decode(depth + 1)
        finally:
            self.path.discard(key)

    def run(self, t: GoType, data: bytes | None, base: int | None, n: int, depth: int) -> list:
        """The first `elements` of `n` consecutive values of type `t`, plus a marker if cut."""
        count = min(n, self.budgets.elements)
        if data is None and base is not None and 0 < count * t.size <= EAGER_BYTES:
            data = self.read(base, count * t.size)
        out = []
        for i in range(count):
            off = i * t.size
            sub = data[off:off + t.size] if data is not None else None
            out.append(self.value(t, sub, None if base is None else base + off, depth))
        if n > count:
            out.append({"__truncated": "elements", "len": n})
        return out


# ---------------------------------------------------------------- scalars

def _bool(d: _Decoder, t, data, addr, depth):
    return d.own(t, data, addr)[0] != 0


def _int(d: _Decoder, t, data, addr, depth):
    return _sint(d.own(t, data, addr), 0, t.size)


def _uint_value(d: _Decoder, t, data, addr, depth):
    return _uint(d.own(t, data, addr), 0, t.size)


def _float_json(x: float, single: bool) -> Any:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if single:  # the shortest decimal that is the same float32, as Go prints it
        for digits in range(6, 10):
            s = f"{x:.{digits}g}"
            if struct.unpack("<f", struct.pack("<f", float(s)))[0] == x:
                return float(s)
    return x


def _floats(b: bytes, size: int) -> list:
    fmt = {4: "<f", 8: "<d"}[size]
    return [_float_json(x, size == 4) for (x,) in struct.iter_unpack(fmt, b)]


def _float(d: _Decoder, t, data, addr, depth):
    return _floats(d.own(t, data, addr)[:t.size], t.size)[0]


def _complex(d: _Decoder, t, data, addr, depth):
    re, im = _floats(d.own(t, data, addr)[:t.size], t.size // 2)
    return {"real": re, "imag": im}


def _unsafe_pointer(d: _Decoder, t, data, addr, depth):
    p = _uint(d.own(t, data, addr), 0)
    return hex(p) if p else None


def _unknown(d: _Decoder, t, data, addr, depth):
    return {"__type": t.name, "__bytes": d.own(t, data, addr)[:t.size].hex()}


# ---------------------------------------------------------------- strings

def _go_replace(e: UnicodeDecodeError):
    # One U+FFFD per invalid byte, as Go's utf8.DecodeRune (and encoding/json) do;
    # Python's own "replace" swallows a whole invalid sequence into one.
    return "\ufffd", e.start + 1


codecs.register_error("exray-go", _go_replace)


def go_string(b: bytes) -> str:
    return b.decode("utf-8", "exray-go")


def cut_at_rune(b: bytes) -> bytes:
    """Drop a multi-byte sequence that the cut split, rather than show U+FFFD for it."""
    for back in range(1, min(4, len(b) + 1)):
        c = b[-back]
        if c & 0xC0 == 0x80:
            continue
        need = 1 if c < 0xC0 else 2 if c < 0xE0 else 3 if c < 0xF0 else 4
        return b[:-back] if need > back else b
    return b


def _string(d: _Decoder, t, data, addr, depth):
    p, n = d.fields(t, d.own(t, data, addr), "str", "len")
    if n == 0:
        return ""
    cut = min(n, d.budgets.string_bytes)
    b = d.read(p, cut)
    if cut == n:
        return go_string(b)
    return {"__truncated": "bytes", "value": go_string(cut_at_rune(b)), "len": n}


# ---------------------------------------------------------------- composites

def field_name(name: str, embedded: bool) -> str:
    if embedded:  # `*sync.Mutex` and `sync.Mutex` both become `Mutex`
        head, bracket, rest = name.lstrip("*").partition("[")
        name = head.rsplit(".", 1)[-1] + bracket + rest
    return "_" + name if name.startswith("__") else name


def _struct(d: _Decoder, t, data, addr, depth):
    if data is None and t.size <= EAGER_BYTES:
        data = d.own(t, data, addr)
    out = {}
    for f in t.fields:
        ft = d.type(f.type_id)
        sub = data[f.offset:f.offset + ft.size] if data is not None else None
        where = None if addr is None else addr + f.offset
        out[field_name(f.name, f.embedded)] = d.value(ft, sub, where, depth)
    return out


def _array(d: _Decoder, t, data, addr, depth):
    if data is None and addr is None:
        raise _Malformed("the array has no location")
    return d.run(d.type(t.elem), data, addr, t.length or 0, depth)


def _slice(d: _Decoder, t, data, addr, depth):
    p, n = d.fields(t, d.own(t, data, addr), "array", "len")
    if p == 0:
        return None
    return d.indirect(p, t.id, depth, lambda dd: d.run(d.type(t.elem), None, p, n, dd))


def _pointer(d: _Decoder, t, data, addr, depth):
    p = _uint(d.own(t, data, addr), 0)
    if p == 0:
        return None
    if t.elem is None or t.elem not in d.types:  # *T of a type we don't model
        return _Ptr(p, {"__type": "unknown"})
    return _Ptr(p, d.follow(p, d.types[t.elem], depth))


def _func(d: _Decoder, t, data, addr, depth):
    p = _uint(d.own(t, data, addr), 0)   # *funcval
    if p == 0:
        return None
    pc = _uint(d.read(p, PTR), 0)        # funcval.fn
    return d.func_name(pc) or {"__func": hex(pc)}


def _chan(d: _Decoder, t, data, addr, depth):
    p = _uint(d.own(t, data, addr), 0)   # *hchan
    if p == 0:
        return None
    if t.chan_header in d.types:
        h = d.types[t.chan_header]
        qcount, dataqsiz, closed = d.fields(h, d.read(p, h.size), "qcount", "dataqsiz", "closed")
    else:
        b = d.read(p, max(o + s for o, s in HCHAN_OFFSETS.values()))
        qcount, dataqsiz, closed = (_uint(b, *HCHAN_OFFSETS[k]) for k in ("qcount", "dataqsiz", "closed"))
    return {"__chan": t.name, "len": qcount, "cap": dataqsiz, "closed": closed != 0}


# ---------------------------------------------------------------- interfaces

POINTER_SHAPED = {Kind.POINTER, Kind.UNSAFE_POINTER, Kind.MAP, Kind.CHAN, Kind.FUNC}

# Error types whose message is a field of the value (the interface's pointee).
ERROR_MESSAGE_FIELD = {"*errors.errorString": "s", "*fmt.wrapError": "msg", "*fmt.wrapErrors": "msg"}


def _word_is_pointer(types: TypeTable, t: GoType) -> bool:
    if t.kind in POINTER_SHAPED:
        return True
    if t.kind == Kind.ARRAY and t.length == 1 and t.elem in types:
        return _word_is_pointer(types, types[t.elem])
    if t.kind == Kind.STRUCT:
        first = [f for f in t.fields if f.offset == 0 and f.type_id in types and types[f.type_id].size]
        return bool(first) and _word_is_pointer(types, types[first[0].type_id])
    return False


def direct_iface(types: TypeTable, t: GoType) -> bool:
    """True when an interface stores the value itself in its data word
    (types.IsDirectIface: one pointer-sized word that is a pointer)."""
    return t.size == PTR and _word_is_pointer(types, t)


def _rtype_of(d: _Decoder, t: GoType, b: bytes) -> int:
    if t.empty:
        return d.fields(t, b, "_type")[0]
    tab = d.fields(t, b, "tab")[0]
    if tab == 0:
        return 0
    return _uint(d.read(tab + _itab_type_offset(d, t), PTR), 0)


def _itab_type_offset(d: _Decoder, t: GoType) -> int:
    tab = t.field("tab")
    ptr = d.types.types.get(tab.type_id) if tab else None
    itab = d.types.types.get(ptr.elem) if ptr and ptr.elem is not None else None
    f = itab and (itab.field("Type") or itab.field("_type"))
    return f.offset if f else ITAB_TYPE_OFFSET


def _interface(d: _Decoder, t, data, addr, depth):
    b = d.own(t, data, addr)
    rtype = _rtype_of(d, t, b)
    if rtype == 0:
        return None
    word = d.fields(t, b, "data")[0]
    dyn = d.type_by_rtype(rtype)
    if dyn is None:
        return {"__type": "unknown", "__addr": word, "__rtype": hex(rtype)}
    if direct_iface(d.types, dyn):
        value = d.value(dyn, word.to_bytes(PTR, "little"), None, depth)
    else:
        value = d.follow(word, dyn, depth)
    out = {"__type": dyn.name, "value": value}
    message = _error_message(dyn.name, value)
    if message is not None:
        out["__error"] = message
    return out


def _error_message(type_name: str, value: Any) -> str | None:
    inner = value.value if isinstance(value, _Ptr) else value
    if not isinstance(inner, dict):
        return None
    if type_name == "*errors.joinError":  # Error() joins the messages with newlines
        errs = inner.get("errs")
        msgs = [e.get("__error") for e in errs] if isinstance(errs, list) else [None]
        return "\n".join(msgs) if msgs and all(isinstance(m, str) for m in msgs) else None
    msg = inner.get(ERROR_MESSAGE_FIELD.get(type_name, ""))
    return msg if isinstance(msg, str) else None


# ---------------------------------------------------------------- maps

@dataclass(frozen=True)
class SlotLayout:
    """Where key i and elem i sit inside a group or bucket (abi.MapType's
    KeysOff/KeyStride/ElemsOff/ElemStride), and the control bytes' offset."""
    size: int
    ctrl: int
    keys: int
    key_stride: int
    elems: int
    elem_stride: int
    overflow: int = -1   # hmap buckets: offset of the overflow pointer


def go_align(types: TypeTable, t: GoType) -> int:
    """Alignment of a Go type on 64-bit targets (the model has sizes only)."""
    if t.kind in (Kind.BOOL, Kind.INT, Kind.UINT, Kind.FLOAT):
        return max(1, min(t.size, PTR))
    if t.kind == Kind.COMPLEX:
        return max(1, t.size // 2)
    if t.kind == Kind.ARRAY:
        return go_align(types, types[t.elem]) if t.elem in types else 1
    if t.kind == Kind.STRUCT:
        return max((go_align(types, types[f.type_id]) for f in t.fields if f.type_id in types), default=1)
    return PTR


def _stored(types: TypeTable, t: GoType) -> tuple[int, int]:
    """(size, align) of a key or elem as a map slot stores it."""
    return (PTR, PTR) if t.size > MAX_INLINE_KV else (t.size, go_align(types, t))


def _struct_size(end: int, last_size: int, align: int) -> int:
    # cmd/compile pads a non-empty struct that ends in a zero-size field by one byte.
    return _round(end + (1 if end > 0 and last_size == 0 else 0), align)


def computed_group_layout(types: TypeTable, key: GoType, elem: GoType) -> SlotLayout:
    """The swiss group layout reflectdata.MapGroupType builds (interleaved slots)."""
    (ks, ka), (es, ea) = _stored(types, key), _stored(types, elem)
    slot_align = max(ka, ea)
    elem_off = _round(ks, ea)
    slot = _struct_size(elem_off + es, es, slot_align)
    slots_off = _round(8, slot_align)
    group = _struct_size(slots_off + GROUP_SLOTS * slot, slot, max(8, slot_align))
    return SlotLayout(group, 0, slots_off, slot, slots_off + elem_off, slot)


def dwarf_group_layout(d: _Decoder, g: GoType) -> SlotLayout:
    ctrl = d.offset(g, "ctrl")[0]
    if g.field("slots"):
        slots = g.field("slots")
        slot = d.type(d.type(slots.type_id).elem)
        k, e = d.offset(slot, "key")[0], d.offset(slot, "elem")[0]
        return SlotLayout(g.size, ctrl, slots.offset + k, slot.size, slots.offset + e, slot.size)
    keys, elems = g.field("keys"), g.field("elems")   # GOEXPERIMENT=mapsplitgroup
    if keys is None or elems is None:
        raise _Malformed(f"map group {g.name} has neither slots nor keys/elems")
    kst = d.type(keys.type_id).size // GROUP_SLOTS
    est = d.type(elems.type_id).size // GROUP_SLOTS
    return SlotLayout(g.size, ctrl, keys.offset, kst, elems.offset, est)


def swiss_group_layout(d: _Decoder, t: GoType) -> SlotLayout:
    lay = t.map_layout
    if lay.group in d.types:
        return dwarf_group_layout(d, d.types[lay.group])
    return computed_group_layout(d.types, d.type(t.key), d.type(t.elem))


def computed_bucket_layout(types: TypeTable, key: GoType, elem: GoType) -> SlotLayout:
    """bucket<K,V> of Go < 1.24 on 64-bit targets: tophash[8], keys[8], values[8],
    overflow, each array starting where the last ends (as cmd/link's DWARF says)."""
    ks, es = _stored(types, key)[0], _stored(types, elem)[0]
    keys = GROUP_SLOTS
    elems = keys + GROUP_SLOTS * ks
    overflow = elems + GROUP_SLOTS * es
    return SlotLayout(overflow + PTR, 0, keys, ks, elems, es, overflow)


def dwarf_bucket_layout(d: _Decoder, b: GoType) -> SlotLayout:
    keys, values = b.field("keys"), b.field("values")
    if keys is None or values is None:
        raise _Malformed(f"map bucket {b.name} has no keys/values")
    return SlotLayout(b.size, d.offset(b, "tophash")[0],
                      keys.offset, d.type(keys.type_id).size // GROUP_SLOTS,
                      values.offset, d.type(values.type_id).size // GROUP_SLOTS,
                      d.offset(b, "overflow")[0])


def hmap_bucket_layout(d: _Decoder, t: GoType) -> SlotLayout:
    if t.map_layout.bucket in d.types:
        return dwarf_bucket_layout(d, d.types[t.map_layout.bucket])
    return computed_bucket_layout(d.types, d.type(t.key), d.type(t.elem))


Slot = tuple[bytes, int, int, int]   # (group bytes, group addr, key offset, elem offset)


def _table_groups(d: _Decoder, table_t: GoType | None, b: bytes) -> tuple[int, int]:
    """(groups.data, groups.lengthMask) of a swiss table."""
    if table_t is not None:
        groups = table_t.field("groups")
        if groups is not None:
            gr = d.type(groups.type_id)
            data, mask = (groups.offset + d.offset(gr, n)[0] for n in ("data", "lengthMask"))
            return _uint(b, data), _uint(b, mask)
        if table_t.field("groups_data"):
            return tuple(d.fields(table_t, b, "groups_data", "groups_lengthMask"))
    return _uint(b, TABLE_GROUPS_OFFSETS[0]), _uint(b, TABLE_GROUPS_OFFSETS[1])


def _swiss_groups(d: _Decoder, t: GoType, dir_ptr: int, dir_len: int, group_size: int) -> Iterator[int]:
    if dir_len == 0:  # small map: dirPtr is the one group (nil before the first insert)
        if dir_ptr:
            yield dir_ptr
        return
    if not 0 < dir_len <= 1 << 20:
        raise _Malformed(f"map directory length {dir_len}")
    table_t = d.types.types.get(t.map_layout.table)
    table_size = table_t.size if table_t else TABLE_GROUPS_OFFSETS[1] + PTR
    seen: set[int] = set()
    directory = d.read(dir_ptr, dir_len * PTR)
    for i in range(dir_len):
        tp = _uint(directory, i * PTR)
        if tp in seen or tp == 0:   # a table covers 2^(globalDepth-localDepth) entries
            continue
        seen.add(tp)
        data, mask = _table_groups(d, table_t, d.read(tp, table_size))
        for g in range(mask + 1):
            yield data + g * group_size


def swiss_slots(d: _Decoder, t: GoType, p: int) -> tuple[int, SlotLayout, Iterator[Slot]]:
    header = d.type(t.map_layout.header)
    used, dir_ptr, dir_len = d.fields(header, d.read(p, header.size), "used", "dirPtr", "dirLen")
    dir_len = dir_len - (1 << 64) if dir_len >= 1 << 63 else dir_len
    lay = swiss_group_layout(d, t)

    def slots() -> Iterator[Slot]:
        for g in _swiss_groups(d, t, dir_ptr, dir_len, lay.size):
            b = d.read(g, lay.size)
            ctrl = _uint(b, lay.ctrl, 8)
            for i in range(GROUP_SLOTS):
                if (ctrl >> (8 * i)) & 0x80 == 0:
                    yield b, g, lay.keys + i * lay.key_stride, lay.elems + i * lay.elem_stride
    return used, lay, slots()


def hmap_slots(d: _Decoder, t: GoType, p: int) -> tuple[int, SlotLayout, Iterator[Slot]]:
    header = d.type(t.map_layout.header)
    count, flags, b_log, buckets, old = d.fields(
        header, d.read(p, header.size), "count", "flags", "B", "buckets", "oldbuckets")
    lay = hmap_bucket_layout(d, t)
    starts = [(buckets, 1 << b_log)]
    if old:  # mid-grow: unevacuated entries are still in the old array
        starts.append((old, 1 << b_log if flags & SAME_SIZE_GROW else 1 << max(b_log - 1, 0)))

    def slots() -> Iterator[Slot]:
        seen: set[int] = set()
        for base, n in starts:
            for i in range(n if base else 0):
                bucket = base + i * lay.size
                while bucket and bucket not in seen:
                    seen.add(bucket)
                    b = d.read(bucket, lay.size)
                    for s in range(GROUP_SLOTS):
                        if b[lay.ctrl + s] >= MIN_TOPHASH:
                            yield b, bucket, lay.keys + s * lay.key_stride, lay.elems + s * lay.elem_stride
                    bucket = _uint(b, lay.overflow)
    return count, lay, slots()


MAP_IMPLS = {"swiss": swiss_slots, "hmap": hmap_slots}
OBJECT_KEY_KINDS = {Kind.STRING, Kind.INT, Kind.UINT, Kind.BOOL}


def _slot_value(d: _Decoder, t: GoType, b: bytes, base: int, off: int, depth: int):
    if t.size > MAX_INLINE_KV:   # stored indirectly: the slot holds a pointer
        return d.follow(_uint(b, off), t, depth - 1)
    return d.value(t, b[off:off + t.size], base + off, depth)


def _map(d: _Decoder, t, data, addr, depth):
    p = _uint(d.own(t, data, addr), 0)
    if p == 0:
        return None
    return d.indirect(p, t.id, depth, lambda dd: _map_known(d, t, p, dd))


def _map_known(d: _Decoder, t, p, depth):
    if t.map_layout is None or t.map_layout.impl not in MAP_IMPLS:
        raise _Malformed(f"no known map layout for {t.name}")
    return _map_entries(d, t, d.type(t.key), d.type(t.elem), p, depth)


def _map_entries(d: _Decoder, t, key_t: GoType, elem_t: GoType, p: int, depth: int):
    return _map_json(key_t, *_walk_map(d, t, key_t, elem_t, p, depth))


def _walk_map(d: _Decoder, t, key_t: GoType, elem_t: GoType, p: int, depth: int):
    """(entries as (key, elem) trees, count or None, problem marker or None):
    the first `elements` entries in memory order."""
    entries, problem = [], None
    try:
        count, lay, slots = MAP_IMPLS[t.map_layout.impl](d, t, p)
        limit = min(count, d.budgets.elements)
        for b, base, koff, eoff in slots:
            if len(entries) >= limit:
                break
            entries.append((_slot_value(d, key_t, b, base, koff, depth),
                            _slot_value(d, elem_t, b, base, eoff, depth)))
    except _Unreadable as e:
        problem, count = {"__error": str(e)}, None
    except _OutOfBudget:
        problem, count = {"__truncated": "budget"}, None
    return entries, count, problem


def map_entries(types: TypeTable, type_id: int, addr: int, read: Callable[[int, int], bytes],
                budgets: Budgets, budget: ByteBudget, offsets: dict | None = None,
                ) -> tuple[list[tuple[Any, Any]], dict | None]:
    """The entries of the map variable at `addr` (the word that holds the map
    pointer) as (key, elem) plain JSON values, in memory order, and a marker
    when the walk stopped early (unreadable memory, `budget` spent, or cut at
    `budgets.elements`: {"__truncated": {"len": count}}).

    For callers that want the pairs rather than the map's JSON form: the pprof
    labels of Go < 1.24, a map[string]string. Never raises. `offsets`: a
    dict to keep the header fields' offsets in across calls on one table."""
    d = _Decoder(types, read, budgets, budget, ByteBudget(budget.limit), lambda pc: None, lambda a: None)
    if offsets is not None:
        d.offsets = offsets
    try:
        t = d.type(type_id)
        if t.kind != Kind.MAP or t.map_layout is None or t.map_layout.impl not in MAP_IMPLS:
            raise _Malformed(f"{t.name} is not a map of a known layout")
        p = _uint(d.read(addr, PTR), 0)
        if p == 0:
            return [], None
        entries, count, problem = _walk_map(d, t, d.type(t.key), d.type(t.elem), p, 0)
    except _Unreadable as e:
        return [], {"__error": str(e)}
    except _OutOfBudget:
        return [], {"__truncated": "budget"}
    except Exception as e:  # malformed types or memory: say so, never raise
        return [], {"__error": f"cannot read the map: {e}"}
    if problem is None and count is not None and count > len(entries):
        problem = {"__truncated": {"len": count}}
    return [(render(k, raw=False), render(v, raw=False)) for k, v in entries], problem


def map_lookup(types: TypeTable, type_id: int, p: int, key: Any, read: Callable[[int, int], bytes],
               budget: ByteBudget) -> tuple[int | None, str | None]:
    """Where the map at `p` (the map pointer, not nil) holds `key` (a str,
    int or bool for a string, integer or bool key type): (elem address, None);
    (None, None) when the key is not present; (None, why) when the walk
    stopped first. A linear walk of the slots the decoder reads (Go hashes
    with a per-process seed, so no bucket can be picked), every read spent
    from `budget`. Never raises."""
    d = _Decoder(types, read, Budgets(), budget, ByteBudget(budget.limit), lambda pc: None, lambda a: None)
    try:
        t = d.type(type_id)
        if t.kind != Kind.MAP or t.map_layout is None or t.map_layout.impl not in MAP_IMPLS:
            raise _Malformed(f"{t.name} is not a map of a known layout")
        key_t, elem_t = d.type(t.key), d.type(t.elem)
        _, _, slots = MAP_IMPLS[t.map_layout.impl](d, t, p)
        for b, base, koff, eoff in slots:
            if _key_equals(d, key_t, b, koff, key):
                if elem_t.size > MAX_INLINE_KV:   # stored indirectly: the slot holds a pointer
                    return _uint(b, eoff), None
                return base + eoff, None
        return None, None
    except _Unreadable as e:
        return None, str(e)
    except _OutOfBudget:
        return None, "the frame's byte budget ran out before the key was found"
    except Exception as e:  # malformed types or memory: say so, never raise
        return None, f"cannot read the map: {e}"


def _key_equals(d: _Decoder, key_t: GoType, b: bytes, off: int, key: Any) -> bool:
    if key_t.kind == Kind.STRING:
        want = key.encode()
        ptr, n = d.fields(key_t, b[off:off + key_t.size], "str", "len")
        return n == len(want) and (n == 0 or d.read(ptr, n) == want)
    if key_t.kind == Kind.BOOL:
        return (b[off] != 0) == key
    return int.from_bytes(b[off:off + key_t.size], "little", signed=key_t.kind == Kind.INT) == key


def _object_key(k: Any) -> str:
    if isinstance(k, bool):
        return "true" if k else "false"
    k = str(k)
    return "_" + k if k.startswith("__") else k   # same rule as struct fields


def _map_json(key_t: GoType, entries: list, count: int | None, problem: dict | None):
    cut = count is not None and count > len(entries)
    # A key that decoded to a marker (a cut string, say) can't be an object key.
    if key_t.kind in OBJECT_KEY_KINDS and all(isinstance(k, (str, int)) for k, _ in entries):
        # bool < int, then ints by value and strings by code point (= UTF-8 byte) order
        entries.sort(key=lambda e: (isinstance(e[0], str), e[0]))
        out: Any = {_object_key(k): v for k, v in entries}
        if cut:
            out["__truncated"] = {"len": count}
        if problem:
            out.update(problem)
        return out
    tail = ([{"__truncated": "elements", "len": count}] if cut else []) + ([problem] if problem else [])
    return _MapList(entries, tail)


# ---------------------------------------------------------------- time

_DAY = 86400
_WALL_TO_INTERNAL = (1884 * 365 + 1884 // 4 - 1884 // 100 + 1884 // 400) * _DAY
_HAS_MONOTONIC = 1 << 63
_NSEC_MASK = (1 << 30) - 1
_CYCLE_DAYS = 146097          # days in 400 Gregorian years


def _time_seconds(wall: int, ext: int) -> tuple[int, int]:
    """(seconds since Jan 1 year 1 UTC, nanoseconds) of a time.Time."""
    if wall & _HAS_MONOTONIC:
        return _WALL_TO_INTERNAL + ((wall >> 30) & ((1 << 33) - 1)), wall & _NSEC_MASK
    return ext, wall & _NSEC_MASK


def format_time(wall: int, ext: int) -> str:
    """t.UTC().Format(time.RFC3339Nano)."""
    sec, nsec = _time_seconds(wall, ext)
    days, rem = divmod(sec, _DAY)
    cycles, days = divmod(days, _CYCLE_DAYS)   # date.fromordinal stops at year 9999
    date = datetime.date.fromordinal(days + 1)
    year = date.year + 400 * cycles
    y = f"-{-year:04d}" if year < 0 else f"{year:04d}"
    frac = f".{nsec:09d}".rstrip("0") if nsec else ""
    h, m, s = rem // 3600, rem // 60 % 60, rem % 60
    return f"{y}-{date.month:02d}-{date.day:02d}T{h:02d}:{m:02d}:{s:02d}{frac}Z"


def format_duration(d: int) -> str:
    """time.Duration.String()."""
    if d == 0:
        return "0s"
    u = abs(d)
    if u < 10**9:
        prec, unit = (0, "ns") if u < 10**3 else (3, "µs") if u < 10**6 else (6, "ms")
        text = _fraction(u, prec) + unit
    else:
        secs, nanos = divmod(u, 10**9)
        text = f"{secs % 60}{_fraction(nanos, 9)[1:]}s"
        if secs >= 60:
            text = f"{secs // 60 % 60}m" + text
        if secs >= 3600:
            text = f"{secs // 3600}h" + text
    return "-" + text if d < 0 else text


def _fraction(v: int, prec: int) -> str:
    """v / 10^prec with the fraction's trailing zeros (and a bare point) dropped."""
    whole, frac = divmod(v, 10**prec) if prec else (v, 0)
    digits = f"{frac:0{prec}d}".rstrip("0") if frac else ""
    return f"{whole}.{digits}" if digits else str(whole)


def _time(d: _Decoder, t, data, addr, depth):
    wall, ext = d.fields(t, d.own(t, data, addr), "wall", "ext")
    return format_time(wall, ext - (1 << 64) if ext >= 1 << 63 else ext)


def _duration(d: _Decoder, t, data, addr, depth):
    return format_duration(_sint(d.own(t, data, addr), 0, t.size))


# ---------------------------------------------------------------- dispatch

DECODERS: dict[Kind, Callable] = {
    Kind.BOOL: _bool, Kind.INT: _int, Kind.UINT: _uint_value, Kind.FLOAT: _float,
    Kind.COMPLEX: _complex, Kind.STRING: _string, Kind.POINTER: _pointer,
    Kind.UNSAFE_POINTER: _unsafe_pointer, Kind.STRUCT: _struct, Kind.ARRAY: _array,
    Kind.SLICE: _slice, Kind.MAP: _map, Kind.CHAN: _chan, Kind.FUNC: _func,
    Kind.INTERFACE: _interface, Kind.UNKNOWN: _unknown,
}

# Named types whose JSON form is not their kind's (docs/values.md).
SPECIAL_TYPES: dict[str, Callable] = {"time.Time": _time, "time.Duration": _duration}
