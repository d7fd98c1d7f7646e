"""Random Go values in fake memory, for the WebAssembly decoder's tests and fuzzing.

`random_case(rng)` builds a small type table (bool, ints, uints, strings,
pointers, slices, arrays, structs, unknown, unsafe.Pointer, interfaces
empty and not, channels with and without their hchan type; cycles too),
runtime types for the interfaces' dynamic values, a memory image with
holes, a root, and budgets; `reference(case)` decodes it
with probe_compiler.decode (the reference). Shared by tests/test_wasm_decoder.py
and bench/wasm.py.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

from probe_compiler.decode import Budgets, ByteBudget, decode_value
from probe_compiler.types import Field, GoType, Kind, TypeTable


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


def _read(memory: dict[int, bytes]):
    spans = sorted(memory.items())

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
                              case.budgets, frame_budget=fb, snapshot_budget=sb, type_by_rtype=by_rtype)
    return plain, raw, fb.used


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
                                 ("main.blob", Kind.UNKNOWN, 3)):
            self.base[name] = self.add(GoType(0, name, kind, size))
        u8p = self.add(GoType(0, "*uint8", Kind.POINTER, 8, elem=self.base["uint8"]))
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


RTYPES_AT = 0x700000
ITABS_AT = 0x50000


def random_case(rng: random.Random) -> Case:
    b = _Builder(rng)
    root = b.type()
    # Dynamic types an interface may hold: some of the table's, each at a
    # runtime type address; a few addresses no type answers.
    dyn = rng.sample(sorted(b.types), min(6, len(b.types)))
    if rng.random() < 0.2:
        dyn.append(b.add(GoType(0, "*errors.errorString", Kind.POINTER, 8, elem=b.base["string"])))
    rtypes = {RTYPES_AT + 0x100 * i: tid for i, tid in enumerate(dyn)}
    types = TypeTable(dict(b.types))
    memory: dict[int, bytes] = {}
    # itabs: Type (offset 8) names a runtime type, known or not
    rts = list(rtypes) + [RTYPES_AT + 0x100 * 50]
    itabs = [ITABS_AT + 0x40 * i for i in range(len(rts))]
    for at, rt in zip(itabs, rts):
        memory[at] = bytes(8) + rt.to_bytes(8, "little") + bytes(16)
    pool = [0x10000 + 0x1000 * i for i in range(24)]
    words = pool + rts + itabs
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
    return Case(types, root, data, addr, memory, budgets,
                frame_left=rng.choice([0, 40, 300, 1 << 16]), snapshot_left=rng.choice([100, 1 << 24]),
                rtypes=rtypes)


def _bytes(rng: random.Random, n: int, pool: list[int]) -> bytes:
    out = bytearray()
    while len(out) < n:
        r = rng.random()
        if r < 0.35:      # a pointer into the pool, maybe offset; a runtime type; an itab
            w = rng.choice(pool)
            out += ((w + rng.choice([0, 0, 8, 16, 0x3f8])) if w < ITABS_AT else w).to_bytes(8, "little")
        elif r < 0.6:     # a small length
            out += rng.choice([0, 1, 2, 5, 12, 100, 300]).to_bytes(8, "little")
        elif r < 0.7:
            out += bytes(8)
        else:
            out += rng.randbytes(8)
    return bytes(out[:n])
