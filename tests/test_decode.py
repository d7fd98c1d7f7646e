"""probe_compiler.decode: unit tests over hand-built TypeTables and dict memory,
then one test against a real Go process (tests/goprogs/decode_real)."""
from __future__ import annotations

import json
import math
import struct
import subprocess

import pytest

from probe_compiler import decode as D
from probe_compiler.decode import Budgets, ByteBudget, decode_value
from probe_compiler.types import Field, GoType, Kind, MapLayout, TypeTable


# ---------------------------------------------------------------- fake memory

class Mem:
    """Regions of bytes at addresses; reading outside them raises, like a fault."""

    def __init__(self):
        self.regions: dict[int, bytearray] = {}
        self.next = 0x10000
        self.reads: list[tuple[int, int]] = []

    def put(self, data: bytes, align: int = 16) -> int:
        addr = self.next
        self.regions[addr] = bytearray(data)
        self.next = (addr + max(len(data), 1) + 0x100 + align - 1) // align * align
        return addr

    def read(self, addr: int, n: int) -> bytes:
        self.reads.append((addr, n))
        for base, b in self.regions.items():
            if base <= addr and addr + n <= base + len(b):
                return bytes(b[addr - base:addr - base + n])
        raise OSError(f"fault at {addr:#x}")


def u64(*xs: int) -> bytes:
    return b"".join(struct.pack("<Q", x & (1 << 64) - 1) for x in xs)


# ---------------------------------------------------------------- type table

class T:
    """Ids of the hand-built types."""
    BOOL, I8, I16, I32, I64, INT, U8, U16, U32, U64, UINTPTR = range(1, 12)
    F32, F64, C64, C128, STRING, UNSAFE, BYTEPTR = range(20, 27)
    INTS, STRINGS, ARR3, NODE, PNODE, PINT, INNER, OUTER, MUTEX = range(30, 39)
    ANY, ERROR, ITAB, PITAB = range(40, 44)
    ERRSTR, PERRSTR, WRAP, PWRAP, JOIN, PJOIN, ERRS, POINT, PPOINT, HOLDER = range(50, 60)
    MAPHDR, TABLE, GROUPSREF = range(60, 63)
    M_INT_STR, M_STR_INT, M_POINT_STR, M_BIG_INT, BIG, M_STR_EMPTY, EMPTY, M_BOOL_INT = range(70, 78)
    M_INT_STR_DW, GROUP_DW, SLOT_DW, M_INT_STR_SPLIT, GROUP_SPLIT, KEYS8, ELEMS8 = range(80, 87)
    HMAP, M_H_INT_STR, BUCKET_DW, M_H_DW = range(90, 94)
    HCHAN, CHAN, FUNC, TIME, DURATION, PLOC, UNKNOWN, SELFSLICE = range(100, 108)


def scalar(i, name, kind, size):
    return GoType(i, name, kind, size)


def struct_t(i, name, size, *fields):
    return GoType(i, name, Kind.STRUCT, size, tuple(Field(*f) for f in fields))


def swiss(i, name, key, elem, **lay):
    return GoType(i, name, Kind.MAP, 8, key=key, elem=elem,
                  map_layout=MapLayout("swiss", T.MAPHDR, table=T.TABLE, **lay))


def build_types() -> TypeTable:
    tt = TypeTable()
    for t in [
        scalar(T.BOOL, "bool", Kind.BOOL, 1), scalar(T.I8, "int8", Kind.INT, 1),
        scalar(T.I16, "int16", Kind.INT, 2), scalar(T.I32, "int32", Kind.INT, 4),
        scalar(T.I64, "int64", Kind.INT, 8), scalar(T.INT, "int", Kind.INT, 8),
        scalar(T.U8, "uint8", Kind.UINT, 1), scalar(T.U16, "uint16", Kind.UINT, 2),
        scalar(T.U32, "uint32", Kind.UINT, 4), scalar(T.U64, "uint64", Kind.UINT, 8),
        scalar(T.UINTPTR, "uintptr", Kind.UINT, 8),
        scalar(T.F32, "float32", Kind.FLOAT, 4), scalar(T.F64, "float64", Kind.FLOAT, 8),
        scalar(T.C64, "complex64", Kind.COMPLEX, 8), scalar(T.C128, "complex128", Kind.COMPLEX, 16),
        GoType(T.BYTEPTR, "*uint8", Kind.POINTER, 8, elem=T.U8),
        GoType(T.STRING, "string", Kind.STRING, 16, (Field("str", 0, T.BYTEPTR), Field("len", 8, T.INT))),
        scalar(T.UNSAFE, "unsafe.Pointer", Kind.UNSAFE_POINTER, 8),
        GoType(T.INTS, "[]int", Kind.SLICE, 24, (Field("array", 0, T.UNSAFE), Field("len", 8, T.INT),
                                                  Field("cap", 16, T.INT)), elem=T.INT),
        GoType(T.STRINGS, "[]string", Kind.SLICE, 24, (Field("array", 0, T.UNSAFE), Field("len", 8, T.INT),
                                                        Field("cap", 16, T.INT)), elem=T.STRING),
        GoType(T.ARR3, "[3]int16", Kind.ARRAY, 6, elem=T.I16, length=3),
        struct_t(T.NODE, "main.Node", 16, ("Val", 0, T.INT), ("Next", 8, T.PNODE)),
        GoType(T.PNODE, "*main.Node", Kind.POINTER, 8, elem=T.NODE),
        GoType(T.PINT, "*int", Kind.POINTER, 8, elem=T.INT),
        struct_t(T.MUTEX, "sync.Mutex", 8, ("state", 0, T.I32), ("sema", 4, T.U32)),
        struct_t(T.INNER, "main.inner", 24, ("A", 0, T.I8), ("b", 8, T.STRING)),
        struct_t(T.OUTER, "main.outer", 72, ("inner", 0, T.INNER, True), ("Mutex", 24, T.MUTEX, True),
                 ("__x", 32, T.BOOL), ("arr", 34, T.ARR3), ("p", 40, T.PINT), ("s", 48, T.INTS)),
        # interfaces
        GoType(T.ANY, "interface {}", Kind.INTERFACE, 16,
               (Field("_type", 0, T.UINTPTR), Field("data", 8, T.UNSAFE)), empty=True),
        struct_t(T.ITAB, "internal/abi.ITab", 32, ("Inter", 0, T.UINTPTR), ("Type", 8, T.UINTPTR),
                 ("Hash", 16, T.U32), ("Fun", 24, T.UINTPTR)),
        GoType(T.PITAB, "*internal/abi.ITab", Kind.POINTER, 8, elem=T.ITAB),
        GoType(T.ERROR, "error", Kind.INTERFACE, 16, (Field("tab", 0, T.PITAB), Field("data", 8, T.UNSAFE))),
        struct_t(T.ERRSTR, "errors.errorString", 16, ("s", 0, T.STRING)),
        GoType(T.PERRSTR, "*errors.errorString", Kind.POINTER, 8, elem=T.ERRSTR),
        struct_t(T.WRAP, "fmt.wrapError", 32, ("msg", 0, T.STRING), ("err", 16, T.ERROR)),
        GoType(T.PWRAP, "*fmt.wrapError", Kind.POINTER, 8, elem=T.WRAP),
        GoType(T.ERRS, "[]error", Kind.SLICE, 24, (Field("array", 0, T.UNSAFE), Field("len", 8, T.INT),
                                                    Field("cap", 16, T.INT)), elem=T.ERROR),
        struct_t(T.JOIN, "errors.joinError", 24, ("errs", 0, T.ERRS)),
        GoType(T.PJOIN, "*errors.joinError", Kind.POINTER, 8, elem=T.JOIN),
        struct_t(T.POINT, "main.Point", 16, ("X", 0, T.INT), ("Y", 8, T.INT)),
        GoType(T.PPOINT, "*main.Point", Kind.POINTER, 8, elem=T.POINT),
        struct_t(T.HOLDER, "main.holder", 8, ("p", 0, T.PPOINT)),   # pointer-shaped struct
        # swiss maps
        struct_t(T.MAPHDR, "internal/runtime/maps.Map", 48, ("used", 0, T.U64), ("seed", 8, T.UINTPTR),
                 ("dirPtr", 16, T.UNSAFE), ("dirLen", 24, T.INT), ("globalDepth", 32, T.U8),
                 ("globalShift", 33, T.U8), ("writing", 34, T.U8), ("tombstonePossible", 35, T.BOOL),
                 ("clearSeq", 40, T.U64)),
        struct_t(T.GROUPSREF, "internal/runtime/maps.groupsReference", 16,
                 ("data", 0, T.UNSAFE), ("lengthMask", 8, T.U64)),
        struct_t(T.TABLE, "internal/runtime/maps.table", 32, ("used", 0, T.U16), ("capacity", 2, T.U16),
                 ("growthLeft", 4, T.U16), ("localDepth", 6, T.U8), ("index", 8, T.INT),
                 ("groups", 16, T.GROUPSREF)),
        swiss(T.M_INT_STR, "map[int]string", T.INT, T.STRING),
        swiss(T.M_STR_INT, "map[string]int", T.STRING, T.INT),
        swiss(T.M_POINT_STR, "map[main.Point]string", T.POINT, T.STRING),
        GoType(T.BIG, "[20]int64", Kind.ARRAY, 160, elem=T.I64, length=20),
        swiss(T.M_BIG_INT, "map[[20]int64]int", T.BIG, T.INT),
        struct_t(T.EMPTY, "struct {}", 0),
        swiss(T.M_STR_EMPTY, "map[string]struct {}", T.STRING, T.EMPTY),
        swiss(T.M_BOOL_INT, "map[bool]int", T.BOOL, T.INT),
        struct_t(T.SLOT_DW, "noalg.struct { key int; elem string }", 24, ("key", 0, T.INT), ("elem", 8, T.STRING)),
        GoType(T.KEYS8, "[8]int", Kind.ARRAY, 64, elem=T.INT, length=8),
        GoType(T.ELEMS8, "[8]string", Kind.ARRAY, 128, elem=T.STRING, length=8),
        struct_t(T.GROUP_SPLIT, "noalg.map.group[int]string", 200,
                 ("ctrl", 0, T.U64), ("keys", 8, T.KEYS8), ("elems", 72, T.ELEMS8)),
        swiss(T.M_INT_STR_SPLIT, "map[int]string", T.INT, T.STRING, group=T.GROUP_SPLIT),
        # hmap (Go < 1.24)
        struct_t(T.HMAP, "runtime.hmap", 48, ("count", 0, T.INT), ("flags", 8, T.U8), ("B", 9, T.U8),
                 ("noverflow", 10, T.U16), ("hash0", 12, T.U32), ("buckets", 16, T.UNSAFE),
                 ("oldbuckets", 24, T.UNSAFE), ("nevacuate", 32, T.UINTPTR), ("extra", 40, T.UNSAFE)),
        GoType(T.M_H_INT_STR, "map[int]string", Kind.MAP, 8, key=T.INT, elem=T.STRING,
               map_layout=MapLayout("hmap", T.HMAP)),
        # chan, func, time, unknown
        struct_t(T.HCHAN, "runtime.hchan", 96, ("qcount", 0, T.UINTPTR), ("dataqsiz", 8, T.UINTPTR),
                 ("buf", 16, T.UNSAFE), ("elemsize", 24, T.U16), ("closed", 28, T.U32)),
        GoType(T.CHAN, "chan int", Kind.CHAN, 8, elem=T.INT, chan_header=T.HCHAN),
        GoType(T.FUNC, "func(int) int", Kind.FUNC, 8),
        GoType(T.PLOC, "*time.Location", Kind.POINTER, 8, elem=None),
        struct_t(T.TIME, "time.Time", 24, ("wall", 0, T.U64), ("ext", 8, T.I64), ("loc", 16, T.PLOC)),
        GoType(T.DURATION, "time.Duration", Kind.INT, 8),
        GoType(T.UNKNOWN, "weird", Kind.UNKNOWN, 3),
    ]:
        tt.add(t)
    group_dw = struct_t(T.GROUP_DW, "noalg.map.group[int]string", 200, ("ctrl", 0, T.U64), ("slots", 8, 1000))
    tt.add(group_dw)
    tt.add(GoType(1000, "[8]noalg.struct { key int; elem string }", Kind.ARRAY, 192, elem=T.SLOT_DW, length=8))
    tt.add(GoType(1001, "[8]uint8", Kind.ARRAY, 8, elem=T.U8, length=8))
    tt.add(GoType(1002, "*bucket<int,string>", Kind.POINTER, 8, elem=T.BUCKET_DW))
    tt.add(struct_t(T.BUCKET_DW, "bucket<int,string>", 208, ("tophash", 0, 1001), ("keys", 8, T.KEYS8),
                    ("values", 72, T.ELEMS8), ("overflow", 200, 1002)))
    tt.add(GoType(T.M_H_DW, "map[int]string", Kind.MAP, 8, key=T.INT, elem=T.STRING,
                  map_layout=MapLayout("hmap", T.HMAP, bucket=T.BUCKET_DW)))
    tt.add(swiss(T.M_INT_STR_DW, "map[int]string", T.INT, T.STRING, group=T.GROUP_DW, slot=T.SLOT_DW))
    return tt


TYPES = build_types()


def dec(tid, mem: Mem, data=None, addr=None, budgets=Budgets(), frame=None, snap=None, **kw):
    return decode_value(TYPES, tid, data, addr, mem.read, budgets,
                        frame_budget=frame or ByteBudget(budgets.frame_bytes),
                        snapshot_budget=snap or ByteBudget(budgets.snapshot_bytes), **kw)


def plain(tid, mem=None, data=None, addr=None, **kw):
    return dec(tid, mem or Mem(), data, addr, **kw)[0]


def gostr(mem: Mem, s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return u64(mem.put(b) if b else 0, len(b))


# ---------------------------------------------------------------- scalars

@pytest.mark.parametrize("tid,raw,want", [
    (T.BOOL, b"\x01", True), (T.BOOL, b"\x00", False),
    (T.I8, b"\x80", -128), (T.I16, b"\xff\x7f", 32767), (T.I32, struct.pack("<i", -5), -5),
    (T.I64, struct.pack("<q", -2**63), -2**63), (T.U8, b"\xff", 255), (T.U16, b"\x00\x80", 32768),
    (T.U32, b"\xff\xff\xff\xff", 2**32 - 1), (T.U64, b"\xff" * 8, 2**64 - 1),
    (T.UINTPTR, u64(2**53 + 1), 2**53 + 1),
    (T.F32, struct.pack("<f", 1.1), 1.1), (T.F64, struct.pack("<d", -0.1), -0.1),
    (T.F32, struct.pack("<f", math.nan), "NaN"), (T.F64, struct.pack("<d", math.inf), "+Inf"),
    (T.F64, struct.pack("<d", -math.inf), "-Inf"),
    (T.C64, struct.pack("<ff", 1.5, math.nan), {"real": 1.5, "imag": "NaN"}),
    (T.C128, struct.pack("<dd", 0.25, -3.0), {"real": 0.25, "imag": -3.0}),
    (T.UNSAFE, u64(0xc000012345), "0xc000012345"), (T.UNSAFE, u64(0), None),
    (T.DURATION, struct.pack("<q", 1500 * 10**6), "1.5s"),
    (T.UNKNOWN, b"\x01\x02\x03", {"__type": "weird", "__bytes": "010203"}),
])
def test_scalars_from_given_bytes(tid, raw, want):
    mem = Mem()
    assert dec(tid, mem, data=raw) == (want, want)
    assert mem.reads == []   # bytes given: nothing read


def test_scalar_read_from_address():
    mem = Mem()
    a = mem.put(struct.pack("<q", -42))
    assert plain(T.I64, mem, addr=a) == -42


@pytest.mark.parametrize("ns,want", [
    (0, "0s"), (1, "1ns"), (1100, "1.1µs"), (2_200_000, "2.2ms"), (1_500_000_000, "1.5s"),
    (90 * 10**9, "1m30s"), (3600 * 10**9, "1h0m0s"), (-(3 * 3600 + 25) * 10**9, "-3h0m25s"),
    (2**63 - 1, "2562047h47m16.854775807s"), (-2**63, "-2562047h47m16.854775808s"),
    (100_000_005, "100.000005ms"),
])
def test_duration_string(ns, want):
    assert D.format_duration(ns) == want


_UNIX_TO_INTERNAL = (1969 * 365 + 1969 // 4 - 1969 // 100 + 1969 // 400) * 86400
_WALL_TO_INTERNAL = (1884 * 365 + 1884 // 4 - 1884 // 100 + 1884 // 400) * 86400


@pytest.mark.parametrize("wall,ext,want", [
    (0, 0, "0001-01-01T00:00:00Z"),                                       # the zero Time
    (123456789, _UNIX_TO_INTERNAL + 1709251198 - 3 * 3600 + 3 * 3600, "2024-02-29T23:59:58.123456789Z"),
    (500_000_000, _UNIX_TO_INTERNAL, "1970-01-01T00:00:00.5Z"),
    # monotonic: seconds since 1885 in wall bits 30..62, ext holds the monotonic reading
    ((1 << 63) | ((_UNIX_TO_INTERNAL + 1700000000 - _WALL_TO_INTERNAL) << 30) | 7, 12345,
     "2023-11-14T22:13:20.000000007Z"),
    (0, _UNIX_TO_INTERNAL + 253402300800, "10000-01-01T00:00:00Z"),
    (0, -86400 * 366, "0000-01-01T00:00:00Z"),
    (0, -86400 * (366 + 365), "-0001-01-01T00:00:00Z"),
])
def test_time(wall, ext, want):
    assert plain(T.TIME, data=u64(wall, ext, 0)) == want


# ---------------------------------------------------------------- strings

def test_strings():
    mem = Mem()
    assert plain(T.STRING, mem, data=gostr(mem, "héllo ✓")) == "héllo ✓"
    assert plain(T.STRING, mem, data=u64(0, 0)) == ""
    # one U+FFFD per invalid byte, as encoding/json does (Python's "replace" would give one)
    assert plain(T.STRING, mem, data=gostr(mem, b"a\xe2\x82b\xff")) == "a\ufffd\ufffdb\ufffd"


def test_string_cut_at_budget_and_rune_boundary():
    mem = Mem()
    data = gostr(mem, "abc✓def")    # ✓ is 3 bytes at 3..5
    got = plain(T.STRING, mem, data=data, budgets=Budgets(string_bytes=5))
    assert got == {"__truncated": "bytes", "value": "abc", "len": 9}
    got = plain(T.STRING, mem, data=data, budgets=Budgets(string_bytes=6))
    assert got == {"__truncated": "bytes", "value": "abc✓", "len": 9}
    assert mem.reads[-1][1] == 6   # only the budget was read


def test_string_unreadable():
    got = plain(T.STRING, data=u64(0xdead0000, 4))
    assert got == {"__error": "unreadable memory at 0xdead0000 (4 bytes)"}


# ---------------------------------------------------------------- composites

def _outer(mem: Mem, pint: int, s: bytes) -> bytes:
    inner = bytes([0xfe]) + b"\0" * 7 + gostr(mem, "in")
    mutex = struct.pack("<iI", 1, 2)
    return inner + mutex + b"\x01\0" + struct.pack("<hhh", 1, -2, 3) + u64(pint) + s


def test_struct_fields_in_order_embedded_and_underscores():
    mem = Mem()
    pint = mem.put(struct.pack("<q", 7))
    arr = mem.put(u64(1, 2, 3))
    a = mem.put(_outer(mem, pint, u64(arr, 3, 3)))
    p, r = dec(T.OUTER, mem, addr=a)
    want = {"inner": {"A": -2, "b": "in"}, "Mutex": {"state": 1, "sema": 2}, "___x": True,
            "arr": [1, -2, 3], "p": 7, "s": [1, 2, 3]}
    assert p == want
    assert list(p) == list(want)
    assert r["p"] == {"__addr": pint, "value": 7}
    assert D.field_name("*sync.Mutex", True) == "Mutex"
    assert D.field_name("main.pair[main.x]", True) == "pair[main.x]"


def test_slices_nil_empty_cut_unreadable():
    mem = Mem()
    assert plain(T.INTS, mem, data=u64(0, 0, 0)) is None
    assert plain(T.INTS, mem, data=u64(0x5000, 0, 0)) == []
    arr = mem.put(u64(*range(10)))
    got = plain(T.INTS, mem, data=u64(arr, 10, 10), budgets=Budgets(elements=4))
    assert got == [0, 1, 2, 3, {"__truncated": "elements", "len": 10}]
    assert plain(T.INTS, mem, data=u64(0x7000, 2, 2)) == {"__error": "unreadable memory at 0x7000 (16 bytes)"}
    strs = mem.put(gostr(mem, "a") + u64(0x9999, 1) + gostr(mem, "c"))
    # one bad element: marked in place, its neighbours survive
    assert plain(T.STRINGS, mem, data=u64(strs, 3, 3)) == [
        "a", {"__error": "unreadable memory at 0x9999 (1 bytes)"}, "c"]


def test_array_cut():
    got = plain(T.ARR3, data=struct.pack("<hhh", 1, 2, 3), budgets=Budgets(elements=2))
    assert got == [1, 2, {"__truncated": "elements", "len": 3}]


# ---------------------------------------------------------------- pointers

def _list(mem: Mem, n: int, cyclic: bool) -> int:
    addrs = [mem.next + i * 0x200 for i in range(n)]
    for i, a in enumerate(addrs):
        nxt = addrs[i + 1] if i + 1 < n else (addrs[0] if cyclic else 0)
        assert mem.put(u64(i, nxt), align=0x200) == a
    return addrs[0]


def test_pointer_plain_raw_nil():
    mem = Mem()
    head = _list(mem, 2, cyclic=False)
    p, r = dec(T.PNODE, mem, data=u64(head))
    assert p == {"Val": 0, "Next": {"Val": 1, "Next": None}}
    assert r["__addr"] == head and r["value"]["Next"]["value"] == {"Val": 1, "Next": None}
    assert dec(T.PNODE, mem, data=u64(0)) == (None, None)


def test_pointer_cycle_on_path():
    mem = Mem()
    head = _list(mem, 3, cyclic=True)
    p, _ = dec(T.PNODE, mem, data=u64(head))
    assert p["Next"]["Next"]["Next"] == {"__cycle": hex(head)}


def test_pointer_depth():
    mem = Mem()
    head = _list(mem, 5, cyclic=False)
    p, _ = dec(T.PNODE, mem, data=u64(head), budgets=Budgets(depth=2))
    assert p["Next"]["Next"] == {"__truncated": "depth", "__addr": head + 0x400}


def test_same_address_other_type_is_not_a_cycle():
    mem = Mem()
    a = mem.next
    mem.put(u64(5, a))     # Node{Val: 5, Next: itself} read as Node, then field Val via *int
    holder = mem.put(u64(a))
    assert plain(T.PINT, mem, addr=holder) == 5


# ---------------------------------------------------------------- interfaces

RT_INT, RT_POINT, RT_PPOINT, RT_HOLDER, RT_ERRSTR, RT_WRAP, RT_JOIN = (0x500000 + i * 0x40 for i in range(7))
RTYPES = {RT_INT: TYPES[T.INT], RT_POINT: TYPES[T.POINT], RT_PPOINT: TYPES[T.PPOINT],
          RT_HOLDER: TYPES[T.HOLDER], RT_ERRSTR: TYPES[T.PERRSTR], RT_WRAP: TYPES[T.PWRAP],
          RT_JOIN: TYPES[T.PJOIN]}


def iface(tid, mem, data, **kw):
    return dec(tid, mem, data=data, type_by_rtype=RTYPES.get, **kw)


def test_eface_dynamic_types():
    mem = Mem()
    assert iface(T.ANY, mem, u64(0, 0)) == (None, None)
    assert iface(T.ANY, mem, u64(RT_INT, mem.put(u64(42))))[0] == {"__type": "int", "value": 42}
    pt = mem.put(u64(1, 2))
    assert iface(T.ANY, mem, u64(RT_POINT, pt))[0] == {"__type": "main.Point", "value": {"X": 1, "Y": 2}}
    # pointer-shaped dynamic types: the data word is the value
    p, r = iface(T.ANY, mem, u64(RT_PPOINT, pt))
    assert p == {"__type": "*main.Point", "value": {"X": 1, "Y": 2}}
    assert r["value"] == {"__addr": pt, "value": {"X": 1, "Y": 2}}
    assert iface(T.ANY, mem, u64(RT_HOLDER, pt))[0] == {"__type": "main.holder", "value": {"p": {"X": 1, "Y": 2}}}
    assert iface(T.ANY, mem, u64(0x123, pt))[0] == {"__type": "unknown", "__addr": pt, "__rtype": "0x123"}


def _errorstring(mem: Mem, msg: str) -> bytes:
    """An `error` holding errors.New(msg): its itab, then the iface words."""
    itab = mem.put(u64(0x1, RT_ERRSTR, 0, 0))
    return u64(itab, mem.put(gostr(mem, msg)))


def test_iface_errors():
    mem = Mem()
    assert iface(T.ERROR, mem, u64(0, 0)) == (None, None)
    base = _errorstring(mem, "disk full")
    assert iface(T.ERROR, mem, base)[0] == {"__type": "*errors.errorString", "value": {"s": "disk full"},
                                            "__error": "disk full"}
    wrap = mem.put(gostr(mem, "write /tmp/x: disk full") + base)
    got = iface(T.ERROR, mem, u64(mem.put(u64(0x1, RT_WRAP, 0, 0)), wrap))[0]
    assert got["__error"] == "write /tmp/x: disk full"
    assert got["value"]["err"]["__error"] == "disk full"
    errs = mem.put(base + _errorstring(mem, "b"))
    join = mem.put(u64(errs, 2, 2))
    got = iface(T.ERROR, mem, u64(mem.put(u64(0x1, RT_JOIN, 0, 0)), join))[0]
    assert got["__error"] == "disk full\nb"


def test_iface_unreadable_itab():
    assert iface(T.ERROR, Mem(), u64(0x4444, 0x10))[0] == {"__error": "unreadable memory at 0x444c (8 bytes)"}


# ---------------------------------------------------------------- swiss maps

EMPTY, DELETED = 0x80, 0xFE


def group(slots: list[bytes | None], slot_size: int, deleted=()) -> bytes:
    """A swiss group: ctrl word then 8 interleaved slots; None is an empty slot."""
    ctrl = 0
    body = b""
    for i in range(8):
        s = slots[i] if i < len(slots) else None
        c = (0x11 + i) if s is not None else (DELETED if i in deleted else EMPTY)
        ctrl |= c << (8 * i)
        body += (s or b"").ljust(slot_size, b"\0")
    return u64(ctrl) + body


def int_str_slot(mem: Mem, k: int, v: str) -> bytes:
    return u64(k) + gostr(mem, v)


def small_map(mem: Mem, entries: dict[int, str], deleted=()) -> int:
    g = mem.put(group([int_str_slot(mem, k, v) for k, v in entries.items()], 24, deleted))
    return mem.put(u64(len(entries), 0xabc, g, 0, 0, 0))


def test_swiss_small_map_dirlen_zero():
    mem = Mem()
    m = small_map(mem, {3: "c", -1: "a", 2: "b"})
    p, r = dec(T.M_INT_STR, mem, data=u64(m))
    assert p == r == {"-1": "a", "2": "b", "3": "c"}
    assert list(p) == ["-1", "2", "3"]        # sorted by value, not text
    assert plain(T.M_INT_STR, mem, data=u64(0)) is None
    empty = mem.put(u64(0, 0, 0, 0, 0, 0))    # make(map) before the first insert: dirPtr nil
    assert plain(T.M_INT_STR, mem, data=u64(empty)) == {}


def _big_int_str_map(mem: Mem, n_tables: int, per_table: int) -> tuple[int, dict]:
    """A directory of 2*n_tables entries (each table twice, as after a split at
    a lower local depth), each table with 2 groups and some deleted slots."""
    want, tables, k = {}, [], 0
    for _ in range(n_tables):
        groups = b""
        for gi in range(2):
            slots = []
            for _ in range(per_table // 2):
                slots.append(int_str_slot(mem, k, f"v{k}"))
                want[str(k)] = f"v{k}"
                k += 1
            slots.insert(1, None)   # a deleted slot in the middle
            groups += group(slots, 24, deleted={1})
        data = mem.put(groups)
        tables.append(mem.put(struct.pack("<HHHBxq", per_table, 16, 0, 1, 0) + u64(data, 1)))
    directory = mem.put(u64(*[t for t in tables for _ in range(2)]))
    return mem.put(u64(k, 0, directory, 2 * n_tables, 0, 0)), want


def test_swiss_directory_of_tables():
    mem = Mem()
    m, want = _big_int_str_map(mem, 3, 6)
    assert plain(T.M_INT_STR, mem, data=u64(m)) == want
    assert plain(T.M_INT_STR_DW, mem, data=u64(m)) == want     # layout from the DWARF group type


def test_swiss_map_elements_budget():
    mem = Mem()
    m, _ = _big_int_str_map(mem, 2, 6)
    got = plain(T.M_INT_STR, mem, data=u64(m), budgets=Budgets(elements=4))
    assert got == {"0": "v0", "1": "v1", "2": "v2", "3": "v3", "__truncated": {"len": 12}}


def test_swiss_split_group_layout():
    mem = Mem()
    keys, elems = [5, 9], ["five", "nine"]
    ctrl = sum((0x11 if i < 2 else EMPTY) << (8 * i) for i in range(8))
    g = u64(ctrl) + u64(*keys).ljust(64, b"\0") + b"".join(gostr(mem, e) for e in elems).ljust(128, b"\0")
    m = mem.put(u64(2, 0, mem.put(g), 0, 0, 0))
    assert plain(T.M_INT_STR_SPLIT, mem, data=u64(m)) == {"5": "five", "9": "nine"}


def test_swiss_struct_keys_listed_and_sorted_by_json():
    mem = Mem()
    slots = [u64(10, 0) + gostr(mem, "c"), u64(1, 2) + gostr(mem, "a"), u64(-3 & (2**64 - 1), 4) + gostr(mem, "b")]
    m = mem.put(u64(3, 0, mem.put(group(slots, 32)), 0, 0, 0))
    assert plain(T.M_POINT_STR, mem, data=u64(m)) == [
        {"key": {"X": -3, "Y": 4}, "value": "b"}, {"key": {"X": 1, "Y": 2}, "value": "a"},
        {"key": {"X": 10, "Y": 0}, "value": "c"}]


def test_swiss_string_keys_escape_and_bool_keys():
    mem = Mem()
    slots = [gostr(mem, k) + u64(i) for i, k in enumerate(["b", "__addr", "a"])]
    m = mem.put(u64(3, 0, mem.put(group(slots, 24)), 0, 0, 0))
    assert plain(T.M_STR_INT, mem, data=u64(m)) == {"___addr": 1, "a": 2, "b": 0}
    bools = [b"\x01".ljust(8, b"\0") + u64(1), b"\0" * 8 + u64(0)]
    m = mem.put(u64(2, 0, mem.put(group(bools, 16)), 0, 0, 0))
    assert list(plain(T.M_BOOL_INT, mem, data=u64(m)).items()) == [("false", 0), ("true", 1)]


def test_swiss_indirect_big_keys():
    mem = Mem()
    key = mem.put(struct.pack("<20q", *range(20)))
    m = mem.put(u64(1, 0, mem.put(group([u64(key, 7)], 16)), 0, 0, 0))
    assert plain(T.M_BIG_INT, mem, data=u64(m)) == [{"key": list(range(20)), "value": 7}]


def test_swiss_cut_string_key_falls_back_to_list():
    mem = Mem()
    m = mem.put(u64(1, 0, mem.put(group([gostr(mem, "abcdef") + u64(1)], 24)), 0, 0, 0))
    got = plain(T.M_STR_INT, mem, data=u64(m), budgets=Budgets(string_bytes=2))
    assert got == [{"key": {"__truncated": "bytes", "value": "ab", "len": 6}, "value": 1}]


def test_swiss_unreadable_group_keeps_partial():
    mem = Mem()
    good = mem.put(group([int_str_slot(mem, 1, "one")], 24))
    t_good = mem.put(struct.pack("<HHHBxq", 1, 8, 0, 1, 0) + u64(good, 0))
    t_bad = mem.put(struct.pack("<HHHBxq", 1, 8, 0, 1, 0) + u64(0xbad000, 0))
    m = mem.put(u64(2, 0, mem.put(u64(t_good, t_bad)), 2, 0, 0))
    assert plain(T.M_INT_STR, mem, data=u64(m)) == {
        "1": "one", "__error": "unreadable memory at 0xbad000 (200 bytes)"}


@pytest.mark.parametrize("key,elem,size,keys,elems,stride", [
    (T.INT, T.STRING, 200, 8, 16, 24),
    (T.STRING, T.EMPTY, 200, 8, 24, 24),       # trailing zero-size field: slot padded 16+1 -> 24
    (T.U8, T.U8, 24, 8, 9, 2),
    (T.EMPTY, T.EMPTY, 16, 8, 8, 0),           # ctrl + zero-size slots, padded to 16
    (T.I32, T.I64, 136, 8, 16, 16),
    (T.BIG, T.INT, 136, 8, 16, 16),            # key over 128 bytes: stored as a pointer
])
def test_computed_group_layout(key, elem, size, keys, elems, stride):
    lay = D.computed_group_layout(TYPES, TYPES[key], TYPES[elem])
    assert (lay.size, lay.keys, lay.elems, lay.key_stride) == (size, keys, elems, stride)


# ---------------------------------------------------------------- hmap (Go < 1.24)

def bucket(tophash: list[int], keys: list[int], vals: list[bytes], overflow: int = 0) -> bytes:
    """bucket<int,string>: tophash[8], keys[8]int, values[8]string, overflow."""
    return (bytes(tophash).ljust(8, b"\0") + u64(*keys).ljust(64, b"\0")
            + b"".join(vals).ljust(128, b"\0") + u64(overflow))


def test_hmap_buckets_overflow_and_grow():
    mem = Mem()
    s = lambda v: gostr(mem, v)   # noqa: E731
    ovf = mem.put(bucket([9], [4], [s("four")]))
    # B=1: two buckets; bucket 0 has an emptyOne (1) slot and an overflow
    buckets = mem.put(bucket([7, 1, 8], [1, 99, 2], [s("one"), s("x"), s("two")], ovf)
                      + bucket([0, 6], [0, 3], [s("y"), s("three")]))
    # mid-grow: one old bucket, slot 0 evacuated (2), slot 1 not yet moved (10), slot 2 evacuatedEmpty (4)
    old = mem.put(bucket([2, 10, 4], [1, 5, 0], [s("one"), s("five"), s("z")]))
    hmap = struct.pack("<qBBHI", 5, 0, 1, 0, 0) + u64(buckets, old, 0, 0)
    m = mem.put(hmap)
    want = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five"}
    assert plain(T.M_H_INT_STR, mem, data=u64(m)) == want
    assert plain(T.M_H_DW, mem, data=u64(m)) == want      # layout from the DWARF bucket type
    nil_buckets = mem.put(struct.pack("<qBBHI", 0, 0, 0, 0, 0) + u64(0, 0, 0, 0))
    assert plain(T.M_H_INT_STR, mem, data=u64(nil_buckets)) == {}


# ---------------------------------------------------------------- chan, func

def test_chan():
    mem = Mem()
    h = mem.put(u64(2, 3, 0, 8 | (1 << 32), 0).ljust(96, b"\0"))
    assert plain(T.CHAN, mem, data=u64(h)) == {"__chan": "chan int", "len": 2, "cap": 3, "closed": True}
    assert plain(T.CHAN, mem, data=u64(0)) is None


def test_func():
    mem = Mem()
    fv = mem.put(u64(0x401000))
    names = {0x401000: "main.main.func1"}
    assert plain(T.FUNC, mem, data=u64(fv), func_name=names.get) == "main.main.func1"
    assert plain(T.FUNC, mem, data=u64(fv)) == {"__func": "0x401000"}
    assert plain(T.FUNC, mem, data=u64(0)) is None


# ---------------------------------------------------------------- budgets, errors

def test_frame_budget_cuts_and_counts():
    mem = Mem()
    arr = mem.put(u64(*range(8)))
    frame = ByteBudget(60)
    assert dec(T.INTS, mem, data=u64(arr, 8, 8), frame=frame)[0] == {"__truncated": "budget"}
    assert frame.used == 0          # a refused read costs nothing...
    assert dec(T.INTS, mem, data=u64(arr, 4, 4), frame=frame)[0] == [0, 1, 2, 3]
    assert frame.used == 32         # ...and the next, smaller value still fits


def test_snapshot_budget_shared_across_frames():
    mem = Mem()
    a = mem.put(u64(1, 2))
    snap = ByteBudget(20)
    assert dec(T.POINT, mem, addr=a, snap=snap)[0] == {"X": 1, "Y": 2}
    assert dec(T.POINT, mem, addr=a, snap=snap)[0] == {"__truncated": "budget"}
    assert snap.used == 16


def test_budget_inside_a_struct_marks_only_the_field():
    mem = Mem()
    s = mem.put(b"x" * 100)
    got = dec(T.INNER, mem, data=b"\x01" + b"\0" * 7 + u64(s, 100), frame=ByteBudget(50))[0]
    assert got == {"A": 1, "b": {"__truncated": "budget"}}


def test_unknown_type_and_no_location():
    assert plain(12345, Mem(), data=b"") == {"__error": "type 12345 is not in the type table"}
    assert "no location" in plain(T.INT, Mem())["__error"]
    assert "bytes given" in plain(T.INT, Mem(), data=b"\0")["__error"]


def test_garbage_never_raises():
    import random
    rnd = random.Random(1)
    mem = Mem()
    junk = mem.put(bytes(rnd.randrange(256) for _ in range(4096)))
    for tid in TYPES.types:
        for off in range(0, 64, 8):
            p, r = dec(tid, mem, addr=junk + off, budgets=Budgets(elements=8), type_by_rtype=RTYPES.get)
            json.dumps(p), json.dumps(r)


# ---------------------------------------------------------------- a real Go process

@pytest.fixture(scope="module")
def real(go_build, tmp_path_factory):
    from agent.memory import ProcessMemory
    from probe_compiler.dwarf import DwarfInfo
    from probe_compiler.gobinary import GoBinary

    exe = go_build("decode_real")
    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        binary = GoBinary.open(str(exe))
        dwarf = DwarfInfo.load(str(exe), binary.build_id, str(tmp_path_factory.mktemp("dwarf")))
        yield info, binary, dwarf, ProcessMemory(info["pid"])
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def _real_table(info, dwarf):
    roots = {name: dwarf.global_var(name) for name in info["expected"]}
    for name, (addr, _) in roots.items():
        assert addr == int(info["addrs"][name], 16), name
    dyn = {int(a, 16): dwarf.type_by_name(n) for n, a in info["rtypes"].items()}
    table = dwarf.type_table([t.id for _, t in roots.values()] + [t.id for t in dyn.values()])
    return roots, dyn, table


def _decode_real(table, t, addr, memory, binary, dyn):
    def func_name(pc):
        f = binary.pclntab.func_for_pc(pc)
        return f.name if f else None
    budgets = Budgets(elements=2000, frame_bytes=1 << 22)
    return decode_value(table, t.id, None, addr, memory.read, budgets,
                        frame_budget=ByteBudget(budgets.frame_bytes),
                        snapshot_budget=ByteBudget(budgets.snapshot_bytes),
                        func_name=func_name, type_by_rtype=dyn.get)


def _moduledata_types(binary, dwarf) -> int:
    from probe_compiler.runtime_layout import read_runtime_layout
    base = read_runtime_layout(dwarf, binary.read_static).moduledata_types_addr
    assert base is not None
    return base


def test_real_process_values_match_go(real):
    info, binary, dwarf, memory = real
    roots, dyn, table = _real_table(info, dwarf)
    assert info["dirLen"] > 1                       # bigMap spans several swiss tables
    small_map = int.from_bytes(memory.read(roots["main.smallMap"][0], 8), "little")
    assert int.from_bytes(memory.read(small_map + 24, 8), "little") == 0   # one group, dirLen 0
    for name, want in info["expected"].items():
        addr, t = roots[name]
        plain_v, raw_v = _decode_real(table, t, addr, memory, binary, dyn)
        assert plain_v == want, name
    types_base = _moduledata_types(binary, dwarf)
    for rtype, t in dyn.items():   # the caller's real mapping agrees with the names Go printed
        assert dwarf.type_by_runtime_type(rtype - types_base).name == t.name
    _, raw_ptr = _decode_real(table, roots["main.anyPtr"][1], roots["main.anyPtr"][0], memory, binary, dyn)
    assert raw_ptr["value"]["__addr"] == int(info["addrs"]["main.structVal"], 16)


def test_real_group_layout_computed_matches_dwarf(real):
    """The fallback group layout (no DWARF group type) agrees with the compiler's,
    and decoding bigMap through it gives the same entries."""
    info, binary, dwarf, memory = real
    roots, dyn, table = _real_table(info, dwarf)
    d = D._Decoder(table, memory.read, Budgets(), ByteBudget(1 << 30), ByteBudget(1 << 30), None, None)
    for name in ("main.bigMap", "main.smallMap"):
        addr, t = roots[name]
        assert t.map_layout.impl == "swiss" and t.map_layout.group in table
        from_dwarf = D.dwarf_group_layout(d, table[t.map_layout.group])
        assert D.computed_group_layout(table, table[t.key], table[t.elem]) == from_dwarf
        import dataclasses
        bare = dataclasses.replace(t, map_layout=dataclasses.replace(t.map_layout, group=None, slot=None))
        table.add(bare)
        assert _decode_real(table, bare, addr, memory, binary, dyn)[0] == info["expected"][name]
        table.add(t)
