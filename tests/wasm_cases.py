"""Random Go values in fake memory, for the WebAssembly decoder's tests and fuzzing.

`random_case(rng)` builds a small type table (bool, ints, uints, floats,
complex, strings, pointers, slices, arrays, structs, unknown, unsafe.Pointer,
interfaces empty and not, channels with and without their hchan type, funcs,
time.Time, time.Duration, maps of both layouts with keys of every form;
cycles too), runtime types for the interfaces' dynamic values, names for
some funcs' pcs, a memory image with holes (maps laid out as the runtime
lays them out: swiss tables of one group or a directory of tables, hmap
buckets with overflow chains and old buckets, their slots full, empty and
deleted), a root, and budgets; `reference(case)` decodes it
with probe_compiler.decode (the reference). Shared by tests/test_wasm_decoder.py
and bench/wasm.py.
"""
from __future__ import annotations

import dataclasses
import random
import struct
from dataclasses import dataclass, field

from probe_compiler.decode import (MAX_INLINE_KV, Budgets, ByteBudget, computed_bucket_layout,
                                   computed_group_layout, decode_value)
from probe_compiler.types import Field, GoType, Kind, MapLayout, TypeTable


@dataclass
class Case:
    types: TypeTable
    type_id: int
    data: bytes | None
    addr: int | None
    memory: dict[int, bytes]
    budgets: Budgets
    frame_left: int
    snapshot_left: int
    rtypes: dict = field(default_factory=dict)     # runtime type address -> type id
    funcs: dict = field(default_factory=dict)      # pc -> function name (None: no name)


def _read(memory: dict[int, bytes]):
    """Reads of the fake memory; touching chunks are one span, as in the
    module's Image (and in a process: the runtime's objects lie side by side)."""
    spans: list[tuple[int, bytes]] = []
    for a, b in sorted(memory.items()):
        if spans and spans[-1][0] + len(spans[-1][1]) == a:
            spans[-1] = (spans[-1][0], spans[-1][1] + b)
        else:
            spans.append((a, b))

    def read(addr: int, n: int) -> bytes:
        for a, b in spans:
            if a <= addr and addr + n <= a + len(b):
                return b[addr - a:addr - a + n]
        raise LookupError(f"{n} bytes at {addr:#x} not in the image")
    return read


def reference(case: Case):
    fb, sb = ByteBudget(case.frame_left), ByteBudget(case.snapshot_left)
    by_rtype = lambda a: case.types[case.rtypes[a]] if a in case.rtypes else None   # noqa: E731
    plain, raw = decode_value(case.types, case.type_id, case.data, case.addr, _read(case.memory),
                              case.budgets, frame_budget=fb, snapshot_budget=sb, type_by_rtype=by_rtype,
                              func_name=case.funcs.get)
    return plain, raw, fb.used, (fb.refused, sb.refused)


class _Builder:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.types: dict[int, GoType] = {}
        self.next = 1
        self.base = {}
        for name, kind, size in (("bool", Kind.BOOL, 1), ("int8", Kind.INT, 1), ("int16", Kind.INT, 2),
                                 ("int32", Kind.INT, 4), ("int", Kind.INT, 8), ("uint8", Kind.UINT, 1),
                                 ("uint16", Kind.UINT, 2), ("uint32", Kind.UINT, 4), ("uint", Kind.UINT, 8),
                                 ("unsafe.Pointer", Kind.UNSAFE_POINTER, 8),
                                 ("main.blob", Kind.UNKNOWN, 3), ("float32", Kind.FLOAT, 4),
                                 ("float64", Kind.FLOAT, 8), ("complex64", Kind.COMPLEX, 8),
                                 ("complex128", Kind.COMPLEX, 16), ("func()", Kind.FUNC, 8),
                                 ("time.Duration", Kind.INT, 8)):
            self.base[name] = self.add(GoType(0, name, kind, size))
        u8p = self.u8p = self.add(GoType(0, "*uint8", Kind.POINTER, 8, elem=self.base["uint8"]))
        self.base["string"] = self.add(GoType(0, "string", Kind.STRING, 16,
                                              fields=(Field("str", 0, u8p), Field("len", 8, self.base["int"]))))
        up, uint = self.base["unsafe.Pointer"], self.base["uint"]
        hchan = self.add(GoType(0, "runtime.hchan", Kind.STRUCT, 96, fields=(
            Field("qcount", 0, uint), Field("dataqsiz", 8, uint), Field("closed", 28, self.base["uint32"]))))
        self.base["chan int"] = self.add(GoType(0, "chan int", Kind.CHAN, 8, elem=self.base["int"],
                                                chan_header=hchan))
        self.base["chan string"] = self.add(GoType(0, "chan string", Kind.CHAN, 8, elem=self.base["string"]))
        itab = self.add(GoType(0, "runtime.itab", Kind.STRUCT, 32,
                               fields=(Field("inter", 0, up), Field("Type", 8, up))))
        itabp = self.add(GoType(0, "*runtime.itab", Kind.POINTER, 8, elem=itab))
        self.base["interface {}"] = self.add(GoType(0, "interface {}", Kind.INTERFACE, 16, empty=True,
                                                    fields=(Field("_type", 0, up), Field("data", 8, up))))
        self.base["main.I"] = self.add(GoType(0, "main.I", Kind.INTERFACE, 16,
                                              fields=(Field("tab", 0, itabp), Field("data", 8, up))))
        i64, u8 = self.base["int"], self.base["uint8"]
        self.base["time.Time"] = self.add(GoType(0, "time.Time", Kind.STRUCT, 24, fields=(
            Field("wall", 0, uint), Field("ext", 8, i64), Field("loc", 16, up))))
        # the maps' runtime types: swiss (Go >= 1.24) and hmap (Go < 1.24)
        self.swiss = self.add(GoType(0, "internal/runtime/maps.Map", Kind.STRUCT, 48, fields=(
            Field("used", 0, uint), Field("seed", 8, uint), Field("dirPtr", 16, up), Field("dirLen", 24, i64))))
        groups = self.add(GoType(0, "internal/runtime/maps.groupsReference", Kind.STRUCT, 16, fields=(
            Field("data", 0, up), Field("lengthMask", 8, uint))))
        self.table = self.add(GoType(0, "internal/runtime/maps.table", Kind.STRUCT, 32, fields=(
            Field("used", 0, self.base["uint16"]), Field("index", 8, i64), Field("groups", 16, groups))))
        self.hmap = self.add(GoType(0, "runtime.hmap", Kind.STRUCT, 48, fields=(
            Field("count", 0, i64), Field("flags", 8, u8), Field("B", 9, u8), Field("buckets", 16, up),
            Field("oldbuckets", 24, up))))
        self.point = self.add(GoType(0, "main.Point", Kind.STRUCT, 16, fields=(
            Field("X", 0, i64), Field("Y", 8, i64))))
        self.big_key = self.add(GoType(0, "[20]int64", Kind.ARRAY, 160, elem=i64, length=20))
        self.maps: list[int] = []

    def add(self, t: GoType) -> int:
        tid = self.next
        self.next += 1
        self.types[tid] = dataclasses.replace(t, id=tid)
        return tid

    def type(self, depth: int = 0) -> int:
        r = self.rng
        pick = r.random()
        if depth > 3 or pick < 0.45:
            return self.base[r.choice(list(self.base))]
        if pick < 0.53:
            return self.map_type(depth)
        if pick < 0.6:
            return self.add(GoType(0, "*T", Kind.POINTER, 8, elem=self.type(depth + 1)))
        if pick < 0.72:
            e = self.type(depth + 1)
            s = self.add(GoType(0, "[]T", Kind.SLICE, 24, fields=(
                Field("array", 0, self.base["unsafe.Pointer"]), Field("len", 8, self.base["int"]),
                Field("cap", 16, self.base["int"])), elem=e))
            return s
        if pick < 0.8:
            e = self.type(depth + 1)
            n = r.choice([0, 1, 2, 3, 70])
            return self.add(GoType(0, "[N]T", Kind.ARRAY, n * self.types[e].size, elem=e, length=n))
        fields, off = [], 0
        names = ["a", "b", "__x", "c", "d"]
        for i in range(r.randint(0, 4)):
            ft = self.type(depth + 1)
            fields.append(Field(names[i], off, ft, embedded=r.random() < 0.1))
            off += self.types[ft].size
        tid = self.add(GoType(0, "main.S", Kind.STRUCT, off, fields=tuple(fields)))
        if r.random() < 0.3:           # a self-referencing struct: next *S
            p = self.add(GoType(0, "*main.S", Kind.POINTER, 8, elem=tid))
            t = self.types[tid]
            self.types[tid] = GoType(tid, t.name, t.kind, t.size + 8,
                                     t.fields + (Field("next", t.size, p),))
        return tid


    def map_type(self, depth: int) -> int:
        r = self.rng
        b = self.base
        key = r.choice([b["int"], b["string"], b["string"], b["bool"], b["uint8"], b["int16"], self.point,
                        b["float64"], self.big_key, b["time.Duration"], self.u8p])
        elem = self.type(depth + 1)
        if r.random() < 0.5:
            lay = MapLayout("swiss", self.swiss, table=self.table if r.random() < 0.7 else None)
        else:
            lay = MapLayout("hmap", self.hmap)
        tid = self.add(GoType(0, "map[K]V", Kind.MAP, 8, elem=elem, key=key, map_layout=lay))
        self.maps.append(tid)
        return tid


RTYPES_AT = 0x700000
ITABS_AT = 0x50000
MAPS_AT = 0x300000         # each map laid out in its own 64 KiB
FUNCS_AT = 0x60000         # funcvals: their first word a pc
PCS = {0x401000: "main.work", 0x402000: "main.(*Server).handle.func1", 0x403000: None}
FLOATS = [struct.unpack("<Q", struct.pack("<d", x))[0] for x in
          (0.1, 1e16, 1e-7, 123456.789, -0.0, 5e-324, 1.7976931348623157e308, 2.5)] + \
         [struct.unpack("<Q", struct.pack("<ff", 3.14, 1e-45))[0], 0x7FF8000000000000, 0xFFF0000000000000]


def _map_memory(rng: random.Random, types: TypeTable, t: GoType, at: int, words: list[int],
                memory: dict[int, bytes]) -> int:
    """One map of type t laid out at `at` as the runtime would (sometimes
    wrongly: counts that disagree, cycles, nil tables); returns its header's address."""
    key, elem = types[t.key], types[t.elem]
    full = lambda: rng.random() < 0.6   # noqa: E731
    region = [at + 0x100]

    def alloc(n: int) -> int:
        a = region[0]
        region[0] += (n + 15) & ~15
        return a

    def slots_bytes(n: int) -> bytes:
        return _bytes(rng, n, words)

    if t.map_layout.impl == "swiss":
        lay = computed_group_layout(types, key, elem)
        nfull = 0

        def group() -> int:
            nonlocal nfull
            g = alloc(lay.size)
            ctrl = bytearray()
            for _ in range(8):
                if full():
                    ctrl.append(rng.randrange(0x80))
                    nfull += 1
                else:
                    ctrl.append(rng.choice([0x80, 0xFE]))
            memory[g] = bytes(ctrl) + slots_bytes(lay.size - 8)
            return g
        shape = rng.random()
        if shape < 0.45:
            dir_ptr, dir_len = group(), 0
        elif shape < 0.5:
            dir_ptr, dir_len = 0, 0
        else:
            tables = []
            for _ in range(rng.randint(1, 3)):
                mask = rng.choice([0, 1, 3])
                data = alloc(0)
                for _ in range(mask + 1):
                    group()
                tb = alloc(32)
                memory[tb] = bytes(16) + data.to_bytes(8, "little") + mask.to_bytes(8, "little")
                tables.append(tb)
            dir_len = rng.choice([1, 2, 4, 8])
            entries = [rng.choice(tables) if rng.random() < 0.9 else 0 for _ in range(dir_len)]
            dir_ptr = alloc(8 * dir_len)
            memory[dir_ptr] = b"".join(e.to_bytes(8, "little") for e in entries)
            if rng.random() < 0.05:
                dir_len = rng.choice([-1, 1 << 21])
        used = nfull if rng.random() < 0.8 else rng.choice([0, 1, nfull + 3, 1000])
        h = alloc(48)
        memory[h] = (used.to_bytes(8, "little") + bytes(8) + dir_ptr.to_bytes(8, "little")
                     + (dir_len & (1 << 64) - 1).to_bytes(8, "little") + bytes(16))
        return h
    lay = computed_bucket_layout(types, key, elem)
    count = 0

    def bucket(n: int) -> int:
        nonlocal count
        base = alloc(lay.size * n)
        for i in range(n):
            tophash = bytearray()
            for _ in range(8):
                if full():
                    tophash.append(rng.randrange(5, 256))
                    count += 1
                else:
                    tophash.append(rng.randrange(0, 5))
            body = bytes(tophash) + slots_bytes(lay.overflow - 8)
            over = 0
            if rng.random() < 0.15:
                over = base + rng.randrange(n) * lay.size if rng.random() < 0.3 else bucket(1)
            memory[base + i * lay.size] = body + over.to_bytes(8, "little")
        return base
    b_log = rng.choice([0, 1, 2])
    buckets = bucket(1 << b_log)
    old, flags = 0, rng.choice([0, 0, 8])
    if rng.random() < 0.3:
        old = bucket(1 << b_log if flags & 8 else 1 << max(b_log - 1, 0))
    count = count if rng.random() < 0.8 else rng.choice([0, 2, count + 5])
    h = alloc(48)
    memory[h] = (count.to_bytes(8, "little") + bytes([flags, b_log]) + bytes(6) + buckets.to_bytes(8, "little")
                 + old.to_bytes(8, "little") + bytes(16))
    return h


def random_case(rng: random.Random) -> Case:
    b = _Builder(rng)
    root = b.type()
    # Dynamic types an interface may hold: some of the table's, each at a
    # runtime type address; a few addresses no type answers.
    dyn = rng.sample(sorted(b.types), min(6, len(b.types)))
    if rng.random() < 0.2:
        dyn.append(b.add(GoType(0, "*errors.errorString", Kind.POINTER, 8, elem=b.base["string"])))
    if rng.random() < 0.5:       # error types whose message the reference adds, as Go lays them out
        err, s = b.base["main.I"], b.base["string"]
        es = b.add(GoType(0, "errors.errorString", Kind.STRUCT, 16, fields=(Field("s", 0, s),)))
        we = b.add(GoType(0, "fmt.wrapError", Kind.STRUCT, 32, fields=(Field("msg", 0, s), Field("err", 16, err))))
        errs = b.add(GoType(0, "[]error", Kind.SLICE, 24, elem=err, fields=(
            Field("array", 0, b.base["unsafe.Pointer"]), Field("len", 8, b.base["int"]),
            Field("cap", 16, b.base["int"]))))
        je = b.add(GoType(0, "errors.joinError", Kind.STRUCT, 24, fields=(Field("errs", 0, errs),)))
        dyn += [b.add(GoType(0, "*errors.errorString", Kind.POINTER, 8, elem=es)),
                b.add(GoType(0, "*fmt.wrapError", Kind.POINTER, 8, elem=we)),
                b.add(GoType(0, "*errors.joinError", Kind.POINTER, 8, elem=je))]
    rtypes = {RTYPES_AT + 0x100 * i: tid for i, tid in enumerate(dyn)}
    types = TypeTable(dict(b.types))
    memory: dict[int, bytes] = {}
    # itabs: Type (offset 8) names a runtime type, known or not
    rts = list(rtypes) + [RTYPES_AT + 0x100 * 50]
    itabs = [ITABS_AT + 0x40 * i for i in range(len(rts))]
    for at, rt in zip(itabs, rts):
        memory[at] = bytes(8) + rt.to_bytes(8, "little") + bytes(16)
    pool = [0x10000 + 0x1000 * i for i in range(24)]
    funcvals = [FUNCS_AT + 0x10 * i for i in range(6)]
    for i, a in enumerate(funcvals):
        pc = list(PCS)[i % 3] if i < 5 else 0x404000      # the last: a pc nobody names
        memory[a] = pc.to_bytes(8, "little") + bytes(8)
    words = pool + rts + itabs + funcvals + FLOATS
    headers, own_headers = [], {}
    for i, tid in enumerate(b.maps[:6]):
        for j in range(2):
            h = _map_memory(rng, types, types[tid], MAPS_AT + 0x20000 * i + 0x10000 * j, words, memory)
            headers.append(h)
            own_headers.setdefault(tid, []).append(h)
    words += headers * 3
    for a in pool:
        if rng.random() < 0.85:        # holes: unreadable memory
            memory[a] = _bytes(rng, 0x400, words)
    # strings: some valid UTF-8, some not, some long
    for a in pool[:4]:
        if a in memory:
            text = rng.choice(["héllo wörld ✓", "plain", "x" * 300, "bad \xff\xfe end", "日本語テキスト"])
            raw = text.encode("utf-8", "surrogateescape") if "\xff" not in text else text.encode("latin-1")
            memory[a] = raw + memory[a][len(raw):]
    size = types[root].size
    data = _bytes(rng, size, words) if rng.random() < 0.7 else None
    addr = rng.choice(pool) if data is None or rng.random() < 0.5 else None
    budgets = Budgets(string_bytes=rng.choice([4, 16, 256]), elements=rng.choice([2, 8, 64]),
                      depth=rng.choice([1, 2, 8]))
    frame_left, snapshot_left = rng.choice([0, 40, 300, 1 << 16]), rng.choice([100, 1 << 24])
    if root in own_headers and rng.random() < 0.8:     # a map root: mostly one of its own type, room to read it
        data, addr = rng.choice(own_headers[root]).to_bytes(8, "little"), None
        frame_left, snapshot_left = rng.choice([300, 4096, 1 << 16]), rng.choice([300, 1 << 24, 1 << 24])
    return Case(types, root, data, addr, memory, budgets,
                frame_left=frame_left, snapshot_left=snapshot_left,
                rtypes=rtypes, funcs=dict(PCS))


def _bytes(rng: random.Random, n: int, pool: list[int]) -> bytes:
    out = bytearray()
    while len(out) < n:
        r = rng.random()
        if r < 0.35:      # a pointer into the pool, maybe offset; a runtime type; an itab
            w = rng.choice(pool)
            out += ((w + rng.choice([0, 0, 8, 16, 0x3f8])) if w < ITABS_AT else w).to_bytes(8, "little")
        elif r < 0.4:     # a time's wall word with its monotonic bit, or a small float
            out += rng.choice([(1 << 63) | rng.getrandbits(63), rng.getrandbits(30),
                               struct.unpack("<Q", struct.pack("<d", rng.uniform(-1e3, 1e3)))[0]]).to_bytes(8, "little")
        elif r < 0.6:     # a small length
            out += rng.choice([0, 1, 2, 5, 12, 100, 300]).to_bytes(8, "little")
        elif r < 0.7:
            out += bytes(8)
        else:
            out += rng.randbytes(8)
    return bytes(out[:n])


ERRORS_AT = 0x800000


def random_error_case(rng: random.Random) -> Case:
    """An error interface holding *errors.errorString, *fmt.wrapError (chains
    of them) or *errors.joinError (errs with nil, cut and unreadable ones), as
    Go lays them out, for the messages the reference adds."""
    b = _Builder(rng)
    err, s, up = b.base["main.I"], b.base["string"], b.base["unsafe.Pointer"]
    es = b.add(GoType(0, "errors.errorString", Kind.STRUCT, 16, fields=(Field("s", 0, s),)))
    we = b.add(GoType(0, "fmt.wrapError", Kind.STRUCT, 32, fields=(Field("msg", 0, s), Field("err", 16, err))))
    errs = b.add(GoType(0, "[]error", Kind.SLICE, 24, elem=err, fields=(
        Field("array", 0, up), Field("len", 8, b.base["int"]), Field("cap", 16, b.base["int"]))))
    je = b.add(GoType(0, "errors.joinError", Kind.STRUCT, 24, fields=(Field("errs", 0, errs),)))
    dyn = {"es": b.add(GoType(0, "*errors.errorString", Kind.POINTER, 8, elem=es)),
           "we": b.add(GoType(0, "*fmt.wrapError", Kind.POINTER, 8, elem=we)),
           "je": b.add(GoType(0, "*errors.joinError", Kind.POINTER, 8, elem=je)),
           "str": b.add(GoType(0, "*errors.errorString", Kind.POINTER, 8, elem=s))}   # not a struct: no message
    types = TypeTable(dict(b.types))
    rtypes = {RTYPES_AT + 0x100 * i: tid for i, tid in enumerate(dyn.values())}
    itab = {tid: ITABS_AT + 0x40 * i for i, tid in enumerate(dyn.values())}
    memory: dict[int, bytes] = {}
    for (rt, tid) in rtypes.items():
        memory[itab[tid]] = bytes(8) + rt.to_bytes(8, "little") + bytes(16)
    at = [ERRORS_AT]

    def alloc(data: bytes) -> int:
        a = at[0]
        memory[a] = data
        at[0] += (len(data) + 0x1f) & ~0xf
        return a

    def text() -> tuple[int, int]:
        t = rng.choice(["EOF", "connection reset", "quote \" and\nnewline", "héllo ✓", "x" * 40, "",
                        "bad \udcff"]).encode("utf-8", "surrogateescape")
        if rng.random() < 0.1:
            return 0x123450, len(t) or 3          # unreadable
        return (alloc(t) if t else 0), len(t)

    def w(*words: int) -> bytes:
        return b"".join(x.to_bytes(8, "little") for x in words)

    def error(depth: int) -> tuple[int, int]:
        """An error interface's two words."""
        r = rng.random()
        if r < 0.1:
            return 0, 0
        kind = rng.choice(["es", "es", "we", "je", "str"] if depth < 3 else ["es", "str"])
        tid = dyn[kind]
        if kind in ("es", "str"):
            p = alloc(w(*text()))
        elif kind == "we":
            p = alloc(w(*text(), *error(depth + 1)))
        else:
            n = rng.choice([0, 1, 2, 3, 5])
            elems = b"".join(w(*error(depth + 1)) for _ in range(n))
            arr = alloc(elems) if n else 0
            p = alloc(w(arr, n, n))
        return itab[tid], p

    tab, data = error(0)
    budgets = Budgets(string_bytes=rng.choice([8, 256]), elements=rng.choice([2, 64]), depth=rng.choice([2, 8]))
    return Case(types, err, w(tab, data), None, memory, budgets, frame_left=rng.choice([200, 1 << 16]),
                snapshot_left=1 << 24, rtypes=rtypes, funcs=dict(PCS))
