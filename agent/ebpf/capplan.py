"""The read program as the probe's capture tables (pure data; no kernel here).

    tables = capture_tables(target)          # once per (build, spec, types learned)
    entries = tables.entries(placement)      # map name -> [(key bytes, value bytes)]

The probe (probe.bpf.c, "captures") meets a captured frame by its return
address: `sites` maps each return address of every captured function, and
of every caller where a captured function was inlined, to the frame's roots
at that pc, as CFA offsets. The return addresses are the instructions after
each `call` (capstone disassembles the functions); a frame whose pc is not
among them (the innermost frame, or one stopped by async preemption) gets no
site, so its values are missing from the copies, which sends the snapshot to
the ptrace executor. The roots come from the ptrace executor's own
root_recipe (DWARF locations, then spill slots), so both read the same bytes.

`shapes`, `slots`, `rtypes` and `maps` are probe_compiler.readprog's
ReadProgram as fixed-size records. Everything is keyed by the table slot in
the top byte (several targets' tables live side by side in one probe).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from probe_compiler.decode import MIN_TOPHASH, SAME_SIZE_GROW

NO_TYPE = 0xFFFFFFFF           # a slot's map the program does not walk

# The probe's records (probe.bpf.c: struct site, root, shape, slot, rtype, mapl).
_SITE = struct.Struct("<II")
_ROOT = struct.Struct("<iIIIII4i4H4H4I4H4h4i4i4H")
F_VALUE, F_LEAF, F_NONE = 0, 1, 2     # what a root's last step reads (probe.bpf.c struct root)
MAX_PIECES = 4                 # pieces of one root the probe puts together
MAX_DEREFS = 4                 # pointers on one root's way to its value
MAX_SPAN = 1024                # bytes of stack one root's pieces may spread over
_SHAPE = struct.Struct("<IIII")
_SLOT = struct.Struct("<IIIIiI")
_RTYPE = struct.Struct("<II")
_MAPL = struct.Struct("<20I")
_KEY = struct.Struct("<Q")
_IDX = struct.Struct("<I")
_MAP_FIELDS = ("header", "used", "dir_ptr", "dir_len", "group", "ctrl", "keys", "key_stride", "elems",
               "elem_stride", "key", "elem", "table", "table_data", "table_mask")
# An hmap layout (Go < 1.24) in the same record: field -> where readprog keeps it
# (a (offset, size) pair's offset for count, B and flags).
_HMAP_FIELDS = {"used": ("count", 0), "dir_ptr": ("buckets", None), "dir_len": ("old", None),
                "group": ("bucket", None), "table": ("overflow", None), "table_data": ("B", 0),
                "table_mask": ("flags", 0)}

# The probe's table sizes (probe.bpf.c): past these a target's captures run with ptrace.
MAX_SITES = 65536
MAX_ROOTS = 65536
MAX_SHAPES = 131072
MAX_SLOTS = 262144
MAX_RTYPES = 65536
MAX_MAPS = 8192


class TablesTooBig(ValueError):
    """A target's capture tables do not fit the probe's maps."""


@dataclass
class CaptureTables:
    """sites: link-time return pc -> [root index]; roots: _root's tuples
    (where on the stack, what type, which pointers); shapes: type id ->
    (need, [slot]); rtypes: rtype offset -> (type id, direct); maps: map
    type id -> the swiss layout numbers."""
    sites: dict[int, list[int]] = field(default_factory=dict)
    roots: list[tuple] = field(default_factory=list)
    shapes: dict[int, tuple[int, list[tuple]]] = field(default_factory=dict)
    rtypes: dict[int, tuple[int, int]] = field(default_factory=dict)
    maps: dict[int, tuple] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)     # why a capture has no root here -> count

    @property
    def n_roots(self) -> int:
        """Roots as placed: one run per distinct list of roots."""
        return sum(len(r) for r in {tuple(v) for v in self.sites.values()})

    @property
    def n_slots(self) -> int:
        return sum(len(s) for _, s in self.shapes.values())

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def check_fits(self) -> None:
        sizes = (("sites", len(self.sites), MAX_SITES), ("roots", self.n_roots, MAX_ROOTS),
                 ("shapes", len(self.shapes) + 1, MAX_SHAPES), ("slots", self.n_slots, MAX_SLOTS),
                 ("rtypes", len(self.rtypes), MAX_RTYPES), ("maps", len(self.maps), MAX_MAPS))
        over = [f"{n} {have} > {most}" for n, have, most in sizes if have > most]
        if over:
            raise TablesTooBig("the capture tables do not fit the probe: " + ", ".join(over))

    def entries(self, at: "Placement") -> dict[str, list[tuple[bytes, bytes]]]:
        """The (key, value) records of every map, placed at `at`. Type ids
        become dense indices here (shapes and maps are arrays in the probe,
        an index one load away; a hash lookup per slot costs several times that)."""
        k = lambda v: _KEY.pack((at.slot << 56) | (v & 0x00FF_FFFF_FFFF_FFFF))
        idx = lambda i: _IDX.pack(i)
        sidx = {tid: i for i, tid in enumerate(self.shapes)}
        none = len(sidx)                     # the empty shape: a type the program has no shape for
        shape = lambda tid: sidx.get(tid, none)
        midx = {tid: i for i, tid in enumerate(self.maps)}
        out: dict[str, list] = {"sites": [], "roots": [], "shapes": [], "slots": [], "rtypes": [], "maps": []}
        root_at: dict[tuple[int, ...], int] = {}
        for pc, ris in self.sites.items():
            key = tuple(ris)
            if key not in root_at:           # one run of roots per distinct list, shared by its pcs
                root_at[key] = at.root_base + len(out["roots"])
                for i in ris:
                    out["roots"].append((idx(at.root_base + len(out["roots"])),
                                         _pack_root(self.roots[i], shape)))
            out["sites"].append((k(pc), _SITE.pack(root_at[key], len(ris))))
        n = at.slot_base
        for i, (need, slots) in enumerate([*self.shapes.values(), (0, [])]):
            out["shapes"].append((idx(at.shape_base + i), _SHAPE.pack(need, n, len(slots), 0)))
            for kind, a, b, c, d in slots:
                c = shape(c) if kind in (2, 3) else midx.get(c, NO_TYPE) if kind == 4 else c
                out["slots"].append((idx(n), _SLOT.pack(kind, a, b, c, d, 0)))
                n += 1
        for off, (tid, direct) in self.rtypes.items():
            out["rtypes"].append((k(off), _RTYPE.pack(shape(tid), direct)))
        for i, lay in enumerate(self.maps.values()):
            out["maps"].append((idx(at.map_base + i),
                                _MAPL.pack(*lay[:10], shape(lay[10]), shape(lay[11]), *lay[12:])))
        return out


@dataclass(frozen=True)
class Placement:
    """Where one target's tables sit in the probe: the slot its hash keys
    carry, and the first index of its runs in each array."""
    slot: int
    root_base: int = 0
    slot_base: int = 0
    shape_base: int = 0
    map_base: int = 0
    n_shapes: int = 0
    n_maps: int = 0


# readprog slot kind -> (the probe's code, where its a, b, c, d come from in the slot; None: 0)
_SLOT_LAYOUT = {
    "str": (1, 1, 2, None, None),        # ptr offset, len offset
    "ptr": (2, 1, None, 2, None),        # offset, elem type
    "slice": (3, 1, 2, 3, 4),            # ptr offset, len offset, elem type, elem size
    "map": (4, 1, None, 2, None),        # offset, map type
    "iface": (5, 1, 2, None, 3),         # type/itab offset, data offset, itab's type offset (-1: eface)
    "chan": (6, 1, None, None, 2),       # offset, header size
    "func": (7, 1, None, None, None),    # offset
}


def slot_record(s: list) -> tuple[int, int, int, int, int]:
    """A readprog slot as the probe's (kind, a, b, c, d); kind 0 (a fallback
    slot): the probe skips it and the decoder finds it missing."""
    lay = _SLOT_LAYOUT.get(s[0])
    if lay is None:
        return (0, 0, 0, 0, 0)
    code, *where = lay
    return (code, *(s[i] if i else 0 for i in where))


def program_tables(prog) -> CaptureTables:
    """shapes, rtypes and maps of a ReadProgram (the sites come from the target)."""
    t = CaptureTables()
    for tid, shape in prog.shapes.items():
        t.shapes[tid] = (min(shape["need"], 0xFFFFFFFF), [slot_record(s) for s in shape["slots"]])
        for s in shape["slots"]:
            if s[0] == "fallback":
                t.skip(s[2])            # e.g. a map whose keys are stored indirectly
    for off, tid in prog.rtypes.items():
        t.rtypes[off] = (tid, 1 if tid in prog.direct else 0)
    for tid, m in prog.maps.items():
        t.maps[tid] = _map_record(m)
    return t


def _map_record(m: dict) -> tuple:
    """A readprog map layout as the probe's struct mapl fields: the layout,
    impl, same_size_grow and min_tophash (hmaps only), key_ind and elem_ind."""
    if m.get("impl") == "hmap":
        def field(f):
            name, part = _HMAP_FIELDS.get(f, (f, None))
            v = m[name]
            return v[part] if part is not None else v
        return (*(field(f) for f in _MAP_FIELDS), 1, SAME_SIZE_GROW, MIN_TOPHASH, *_indirect(m))
    return (*(m[f] for f in _MAP_FIELDS), 0, 0, 0, *_indirect(m))


def _indirect(m: dict) -> tuple[int, int]:
    return int(bool(m.get("key_indirect"))), int(bool(m.get("elem_indirect")))


def capture_tables(target) -> CaptureTables:
    """The tables of a target whose read program is prepared
    (agent.snapshot._prepare_program): the program's, plus a site for every
    return address in a captured frame."""
    from ..snapshot import _captured_at
    t = program_tables(target.shared["program"])
    for pc in _return_pcs(target):
        idx = []
        for fplan, inst in _captured_at(target, pc + target.bias):
            idx += _site_roots(target, t, fplan, inst, pc)
        if idx:
            t.sites[pc] = idx
    t.check_fits()
    return t


def _return_pcs(target) -> list[int]:
    """Link-time return addresses inside every physical function a captured
    frame can be: the captured functions, and the callers they were inlined into."""
    spans = {(f.entry, f.end) for f in target.plan.functions if f.end > f.entry}
    spans |= {(i.caller_entry, i.caller_end) for f in target.plan.functions for i in f.inlined}
    out = []
    for lo, hi in sorted(spans):
        out += [pc for pc in call_returns(target.binary.read_static(lo, hi - lo), lo) if pc < hi]
    return out


def call_returns(code: bytes, at: int) -> list[int]:
    """The address after each call instruction of `code` (loaded at `at`)."""
    import capstone
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True              # a byte that is no instruction does not end the sweep
    return [addr + size for addr, size, mnemonic, _ in md.disasm_lite(code, at) if mnemonic == "call"]


def _site_roots(target, t: CaptureTables, fplan, inst, lpc: int) -> list[int]:
    """Roots (indices into t.roots) of fplan's captures in a frame at return pc lpc."""
    from ..snapshot import recipe_at
    if fplan.unavailable:
        return []
    out = []
    for cap in fplan.captures:
        r = recipe_at(target, fplan, inst, cap, lpc)
        if r is None:
            continue                    # nothing to copy: the reference reads nothing either
        ops = cap.ops if inst is None else inst.ops[cap.column]
        root = _root(r[1], ops, cap.type_id)
        if isinstance(root, str):
            t.skip(root)
            continue
        t.roots.append(root)
        out.append(len(t.roots) - 1)
    return out


def _pack_root(root: tuple, shape) -> bytes:
    """struct root's bytes; `shape` numbers the type densely."""
    span_off, span_len, tid, sub, pieces, steps, final = root
    pad = lambda xs, fill=0: list(xs) + [fill] * (MAX_DEREFS - len(xs))
    col = lambda i, fill=0: pad([s[i] for s in steps], fill)
    return _ROOT.pack(span_off, span_len, shape(tid), sub, len(pieces), len(steps),
                      *col(5), *pad([p[0] for p in pieces]), *pad([p[1] for p in pieces]), *final, 0,
                      *col(0), *col(1, -1), *col(2), *col(3), *col(4))


def _root(pieces: list, ops: list, type_id: int) -> tuple | str:
    """(span offset, span length, type id, sub, [(src, size)], [add]) of a
    root whose bytes are stack pieces; or why the probe can't read it."""
    if any(p[1] != "cfa" for p in pieces):
        return "a root with a piece in a register or a constant"
    lo, hi = min(p[3] for p in pieces), max(p[3] + p[0] for p in pieces)
    if len(pieces) > MAX_PIECES or hi - lo > MAX_SPAN or any(not 0 < p[0] < 256 for p in pieces):
        return "a root in too many or too wide pieces"
    got = _chain(ops)
    if got is None:
        return f"the {next(op[0] for op in ops if op[0] not in _CHAIN_OPS)!r} op"
    sub, steps, final = got
    if len(steps) > MAX_DEREFS:
        return f"more than {MAX_DEREFS} pointers from a root"
    cut = [(p[3] - lo, p[0]) for p in pieces]
    if len(pieces) == 1:
        cut = []                        # the span is the root: nothing to put together
    return (lo, hi - lo, type_id, sub, cut, steps, final)


_CHAIN_OPS = ("offset", "deref", "index", "len", "cap", "len_indirect", "const", "addr")
DEREF = (0, -1, 0, 0, 8)               # a step: pointer at 0, no length, no index; 8 bytes read


def _chain(ops: list) -> tuple[int, list[tuple], tuple] | None:
    """ops as (where the first step's bytes start in the root, steps, what
    the last step reads: (F_*, offset, size)). A step is (pointer offset,
    length offset or -1, index, index * element size, bytes it reads when it
    is not the first, offset added after it): a deref, or a slice's `[i]`.
    With no step the first number is where the value is in the root. None
    for an op the probe does not run (map_index, assert)."""
    cur, sub, steps, seen = 0, 0, [], False
    final = (F_VALUE, 0, 0)

    def step(s):
        nonlocal cur, sub, seen
        if seen:
            steps[-1] = (*steps[-1][:5], cur)
        else:
            sub, seen = cur, True
        steps.append((*s, 0))
        cur = 0
    for op in ops:
        if op[0] == "offset":
            cur += op[1]
        elif op[0] == "deref":
            step(DEREF)
        elif op[0] == "index":            # ("index", i, elem size, data offset, len offset)
            _, i, esize, data_off, len_off = op
            step((data_off, len_off, i, i * esize, max(data_off, len_off) + 8))
        elif op[0] in ("len", "cap"):     # read after a step; held in the root's bytes otherwise
            final = (F_LEAF, op[1], 8) if seen else (F_NONE, 0, 0)
        elif op[0] == "len_indirect":     # one more pointer, then an int behind it
            step(DEREF)
            final = (F_LEAF, op[1], op[2])
        elif op[0] in ("const", "addr"):
            final = (F_NONE, 0, 0)
        else:
            return None
    if seen:
        steps[-1] = (*steps[-1][:5], cur)
    else:
        sub = cur
    return sub, steps, final
