"""Finds every live goroutine of a paused process and where its stack starts.

All offsets come from the binary's RuntimeLayout (read from DWARF); nothing
here knows a Go version. Built for the pause: the g structs are read in bulk
as runs (GTable) and parsed column by column; the Ms and labels, few, with
read_many; stack ranges come out as lists for one scatter read.
"""
from __future__ import annotations

import struct
from itertools import groupby
from dataclasses import dataclass

from probe_compiler.capture_limits import DEFAULTS as _LIMITS
from probe_compiler.decode import Budgets, ByteBudget, cut_at_rune, go_string, map_entries
from probe_compiler.types import TypeTable

from .errors import AgentError


# Widths of the g/m fields we read. The offsets are the binary's; the widths
# follow the field types (atomic.Uint32 status, uint8 waitReason, the rest
# pointer-sized or 64-bit), which have been stable since Go 1.x and are
# checked against DWARF sizes when the layout provides them.
_G_FIELDS = {
    "goid": 8, "atomicstatus": 4, "stack.lo": 8, "stack.hi": 8,
    "sched.pc": 8, "sched.sp": 8, "sched.bp": 8,
    "syscallsp": 8, "syscallpc": 8, "syscallbp": 8,
    "m": 8, "gopc": 8, "startpc": 8, "parentGoid": 8,
    "waitsince": 8, "waitreason": 1, "labels": 8,
}
# What start_of reads of a g.
START_FIELDS = ("atomicstatus", "m", "stack.lo", "stack.hi", "syscallsp", "syscallpc",
                "syscallbp", "sched.pc", "sched.sp", "sched.bp")
_M_FIELDS = {"procid": 8, "curg": 8, "g0": 8, "gsignal": 8, "id": 8}
_UNPACK = {1: struct.Struct("<B"), 4: struct.Struct("<I"), 8: struct.Struct("<Q")}


@dataclass
class RawG:
    addr: int
    f: dict[str, int]          # field name -> value, for the fields the layout has

    def __getattr__(self, name: str) -> int:
        try:
            return self.f[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class GStart:
    """Where unwinding of one goroutine begins."""
    pc: int
    sp: int
    bp: int
    trap: bool = False         # pc was interrupted, not a return address
    thread_id: int | None = None
    regs: object = None        # ptrace Regs, only for a goroutine running on a thread now


def _fields(buf: bytes, offsets: dict[str, int], widths: dict[str, int]) -> dict[str, int]:
    out = {}
    for name, width in widths.items():
        off = offsets.get(name)
        if off is not None and off + width <= len(buf):
            out[name] = _UNPACK[width].unpack_from(buf, off)[0]
    return out


def read_allglen(layout, mem) -> int:
    return struct.unpack("<Q", mem.read(layout.allglen_addr, 8))[0]


def read_allgs(layout, mem) -> list[int]:
    """Addresses of every g in allgs (dead ones included: the runtime keeps them)."""
    n = read_allglen(layout, mem)
    if n == 0:
        return []
    arr = struct.unpack("<Q", mem.read(layout.allgs_addr, 8))[0]
    raw = mem.read(arr, 8 * n)
    return [a for a in struct.unpack(f"<{n}Q", raw) if a]


class GTable:
    """Every g of allgs read in bulk during the pause, parsed column by column.

    g structs come from heap spans, mostly back to back at one spacing, so
    they are read as runs: the kernel then pins each page once instead of once
    per g (at 10,000 goroutines, 1 ms instead of 6). A field of a run is one
    strided memoryview slice, a C loop; no per-g Python in the pause. A g that
    can't be read is zeros, which is status idle, so it counts as dead."""

    def __init__(self, layout, mem, addrs: list[int]):
        self.layout = layout
        offs = layout.g_offsets
        end = max(offs[k] + w for k, w in _G_FIELDS.items() if k in offs)
        self.stride = -(-end // 8) * 8       # the rows stop after the last field we use
        self._chunks, self.addrs = _read_runs(mem, sorted(addrs), self.stride)
        self._cols: dict[str, list[int]] = {}
        self._arrays: dict = {}
        self._uarrays: dict = {}
        self._named: list[tuple[str, list[int]]] | None = None

    def column(self, name: str) -> list[int]:
        """The field of every row; zeros when the layout lacks it."""
        col = self._cols.get(name)
        if col is None:
            col = self._cols[name] = self._parse(name)
        return col

    def _parse(self, name: str) -> list[int]:
        return self._unsigned_cached(name).tolist()

    def _unsigned(self, name: str):
        import numpy as np
        off, width = self.layout.g_offsets.get(name), _G_FIELDS[name]
        if off is None:
            return np.zeros(len(self.addrs), np.uint64)
        parts = [np.ndarray(shape=(count,), dtype=f"<u{width}", buffer=mv, offset=start + off,
                            strides=(spacing,)) for mv, start, count, spacing in self._chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)

    def _unsigned_cached(self, name: str):
        got = self._uarrays.get(name)
        if got is None:
            got = self._uarrays[name] = self._unsigned(name)
        return got

    def array(self, name: str):
        """column(name) as a numpy int64 array, for the pause's column work."""
        import numpy as np
        got = self._arrays.get(name)
        if got is None:
            got = self._arrays[name] = self._unsigned_cached(name).astype(np.int64)
        return got

    def live_rows(self) -> list[int]:
        return self.rows_in_status(range(len(self.addrs)), ("dead", "deadextra", "idle"), negate=True)

    def rows_in_status(self, rows, names, negate: bool = False) -> list[int]:
        """The rows whose status (scan bit masked) is one of `names` (or, negated, none)."""
        lay = self.layout
        # By constant name too: Go 1.26 prints _Gdeadextra as "waiting for cgo callback".
        codes = {code for table in (lay.status_names, lay.status_constants)
                 for code, name in table.items() if name in names}
        import numpy as np
        rows = np.asarray(rows if not isinstance(rows, range) else np.arange(rows.start, rows.stop,
                                                                             rows.step), np.int64)
        status = self.array("atomicstatus")[rows] & ~lay.gscan
        lut = np.zeros(max(codes, default=0) + 2, bool)       # status -> wanted; past the end: no
        lut[sorted(codes)] = True
        hit = lut[np.clip(status, 0, len(lut) - 1)] if len(rows) else np.zeros(0, bool)
        return rows[hit != negate].tolist()

    def raw(self, i: int, names=None) -> RawG:
        """Row i as a RawG; `names` limits the fields (in the pause, parse only what is used)."""
        if names is not None:
            return RawG(self.addrs[i], {k: int(self._unsigned_cached(k)[i]) for k in names
                                        if k in self.layout.g_offsets})
        if self._named is None:
            self._named = [(k, self.column(k)) for k in _G_FIELDS if k in self.layout.g_offsets]
        return RawG(self.addrs[i], {k: col[i] for k, col in self._named})


_CAST = {1: "B", 4: "I", 8: "Q"}
RUN_GAP = 4096       # read through gaps up to this between gs of one run
RUN_MAX = 1 << 20    # bytes in one run


def _runs(addrs: list[int], stride: int) -> list[tuple[int, int, int]]:
    """(first index, count, spacing) of sorted addrs: runs of equally spaced gs.

    Groups of equal address differences are found column-wise (numpy), not
    address by address: this runs inside the pause. A group spaced `stride`
    to `stride + RUN_GAP` apart is one run (cut at RUN_MAX bytes); the
    addresses of any other group are read one by one."""
    import numpy as np
    n = len(addrs)
    if n < 2:
        return [(k, 1, stride) for k in range(n)]
    a = np.array(addrs, np.int64)
    d = np.diff(a)
    firsts = np.flatnonzero(np.concatenate(([True], d[1:] != d[:-1])))
    pos = np.append(firsts[1:], len(d))          # each group spans addresses [.., pos]
    v = d[firsts]
    good = (v >= stride) & (v <= stride + RUN_GAP)
    prev_pos = np.concatenate(([0], pos[:-1]))
    prev_good = np.concatenate(([False], good[:-1]))
    start = prev_pos + prev_good                 # first address not yet in a run
    runs: list[tuple[int, int, int]] = []
    for i, p, vv, g in zip(start.tolist(), pos.tolist(), v.tolist(), good.tolist()):
        if g:
            most = max(1, (RUN_MAX - stride) // vv + 1)
            while i <= p:
                c = min(p - i + 1, most)
                runs.append((i, c, vv))
                i += c
        else:
            runs.extend((k, 1, stride) for k in range(i, p))
    end = int(pos[-1]) + int(good[-1])
    runs.extend((k, 1, stride) for k in range(end, n))
    return runs


def _read_runs(mem, addrs: list[int], stride: int) -> tuple[list, list[int]]:
    """Read the gs at sorted addrs; returns (chunks, the addresses in row order).

    A chunk is (buffer, byte offset of its first row, rows, spacing). A run of
    c gs spaced v apart is read as c*v bytes, and runs are laid out grouped
    by spacing, so all runs of one spacing form one evenly strided chunk:
    a column is then a few slices, not one per run. A run with an unreadable
    hole (the read past its last g included) is read again g by g."""
    runs = sorted(_runs(addrs, stride), key=lambda r: r[2])
    got = mem.read_into([addrs[i] for i, _, _ in runs], [c * v for _, c, v in runs])
    mv, chunks, order, retry = got.buf, [], [], []
    for r, (i, count, spacing) in enumerate(runs):
        if r in got.failed:
            retry.extend(addrs[i:i + count])
            continue
        order.extend(addrs[i:i + count])
        last = chunks[-1] if chunks else None
        if last and last[3] == spacing and last[1] + last[2] * spacing == got.offsets[r]:
            chunks[-1] = (mv, last[1], last[2] + count, spacing)
        else:
            chunks.append((mv, got.offsets[r], count, spacing))
    if retry:
        one = mem.read_into(retry, [stride] * len(retry))
        chunks.append((one.buf, 0, len(retry), stride))
        order.extend(retry)
    return chunks, order


def read_ms(layout, mem, addrs: set[int]) -> dict[int, dict[str, int]]:
    addrs = sorted(a for a in addrs if a)
    bufs = mem.read_many([(a, layout.m_size) for a in addrs])
    return {a: _fields(b, layout.m_offsets, _M_FIELDS) for a, b in zip(addrs, bufs) if b}


def status_of(layout, g: RawG) -> int:
    return g.f.get("atomicstatus", 0) & ~layout.gscan


def start_of(layout, g: RawG, ms: dict[int, dict[str, int]], threads: dict) -> GStart:
    """The pc/sp/bp to unwind from, as Go's traceback would pick them.

    A goroutine running on a thread right now has stale `sched`: its thread's
    registers are the truth, but only while the thread is on the goroutine's
    own stack (not on g0 or gsignal after systemstack, where `sched` was saved
    by the switch). A goroutine in a syscall saved syscallpc/sp/bp.
    """
    name = layout.status_names.get(status_of(layout, g), "")
    m = ms.get(g.f.get("m", 0)) or {}
    tid = m.get("procid") if m else None
    if name == "running" and tid in threads:
        regs = threads[tid]
        if g.f["stack.lo"] <= regs.rsp < g.f["stack.hi"]:
            return GStart(regs.rip, regs.rsp, regs.rbp, trap=True, thread_id=tid, regs=regs)
    if g.f.get("syscallsp"):
        return GStart(g.f["syscallpc"], g.f["syscallsp"], g.f.get("syscallbp", 0), thread_id=tid)
    return GStart(g.f["sched.pc"], g.f["sched.sp"], g.f["sched.bp"],
                  thread_id=tid if name == "running" else None)


def start_sps(layout, table: GTable, rows: list[int], ms: dict, threads: dict) -> list[int]:
    """start_of(...).sp of each row, computed column-wise for the pause.

    Only a running goroutine needs the full rule (its thread's registers);
    for the rest it is syscallsp when set, else sched.sp."""
    import numpy as np
    r = np.asarray(rows, np.int64)
    sys_sp, sched_sp = table.array("syscallsp")[r], table.array("sched.sp")[r]
    sps = np.where(sys_sp != 0, sys_sp, sched_sp)
    running = table.rows_in_status(rows, ("running",))
    if running:
        for k in np.flatnonzero(np.isin(r, running)).tolist():
            sps[k] = start_of(layout, table.raw(rows[k], START_FIELDS), ms, threads).sp
    return sps.tolist()


def stack_ranges(table: GTable, rows: list[int], sps: list[int], max_bytes: int) -> tuple[list[int], list[int]]:
    """[sp, stack.hi) of each row, cut at max_bytes: the (addrs, sizes) to copy.

    An sp outside the goroutine's own stack (a broken g) copies nothing."""
    import numpy as np
    r = np.asarray(rows, np.int64)
    lo, hi, sp = table.array("stack.lo")[r], table.array("stack.hi")[r], np.asarray(sps, np.int64)
    addrs = np.where((lo <= sp) & (sp < hi), sp, hi)
    sizes = np.minimum(hi - addrs, max_bytes)
    return addrs.tolist(), sizes.tolist()


def read_labels(layout, mem, gs: list[RawG], max_labels: int = _LIMITS.max_labels,
                max_bytes: int = _LIMITS.label_bytes) -> dict[int, dict[str, str]]:
    """pprof labels of each goroutine that has any (g.labels -> runtime/pprof.labelMap).

    Go >= 1.24 keeps them in a sorted []label; older releases in a
    map[string]string, walked by the decoder's own map reader. Either way at
    most `max_labels` pairs per goroutine, each key and value cut at
    `max_bytes` bytes."""
    lay = layout.labels_layout
    with_labels = [g for g in gs if g.f.get("labels")]
    if not lay or not with_labels:
        return {}
    if lay.get("kind") == "map":
        return _map_labels(lay, mem, with_labels, max_labels, max_bytes)
    if lay.get("kind") != "slice":
        return {}
    # Goroutines started under one pprof.Do share their labelMap: read each once.
    ptrs = sorted({g.f["labels"] for g in with_labels})
    heads = mem.read_many([(p + lay["list_offset"], 16) for p in ptrs])
    lists = []
    for head in heads:
        arr, n = struct.unpack("<QQ", head) if head else (0, 0)
        lists.append((arr, min(n, max_labels)))
    raws = mem.read_many([(arr, n * lay["elem_size"]) if arr else (0, 0) for arr, n in lists])
    found = _label_pairs(mem, [(raw, n) if raw else (b"", 0) for raw, (_, n) in zip(raws, lists)],
                         lay, max_bytes)
    by_ptr = dict(zip(ptrs, found))
    return {g.addr: by_ptr[g.f["labels"]] for g in with_labels if by_ptr[g.f["labels"]]}


def _label_pairs(mem, lists: list[tuple[bytes, int]], lay: dict, max_bytes: int) -> list[dict[str, str]]:
    """The labels of each (raw []label array, length), with one read of every string."""
    heads, lens, counts = [], [], []
    for raw, n in lists:
        for i in range(n):
            base = i * lay["elem_size"]
            for off in (lay["key_offset"], lay["value_offset"]):
                p, ln = struct.unpack_from("<QQ", raw, base + off)
                heads.append((p, min(ln, max_bytes)) if ln else (0, 0))
                lens.append(ln)
        counts.append(n)
    strs = mem.read_many(heads)
    # A string cut at max_bytes drops the rune the cut split, as the decoder does.
    texts = [go_string(cut_at_rune(s) if ln < full else s) if s else ""
             for s, (_, ln), full in zip(strs, heads, lens)]
    out, at = [], 0
    for n in counts:
        mine = texts[at:at + 2 * n]
        out.append(dict(zip(mine[0::2], mine[1::2])))
        at += 2 * n
    return out


# Bytes one label may cost beyond its key and value (its share of the hmap
# header and buckets: a map[string]string bucket is 272 bytes for 8 labels).
_LABEL_OVERHEAD = 512
_MAP_READ_ROUNDS = 8
_label_tables: dict[int, tuple[dict, TypeTable]] = {}


def _map_labels(lay: dict, mem, gs: list[RawG], max_labels: int, max_bytes: int) -> dict[int, dict[str, str]]:
    """Go < 1.24: g.labels points at a labelMap, a map[string]string.

    Goroutines started under one pprof.Do share their labelMap, so each map is
    read once. The reads are batched: every map is walked against what has
    been read so far, the reads that missed are done together (read_many),
    and the walks that missed run again; a walk is as deep as map pointer,
    header, bucket, strings, so a few rounds read every map."""
    types = _label_types(lay)
    if types is None:
        return {}
    budgets = Budgets(string_bytes=max_bytes, elements=max_labels, depth=1)
    per_map = max_labels * (2 * max_bytes + _LABEL_OVERHEAD)

    offsets: dict = {}

    def walk(p: int, read) -> dict[str, str]:
        entries, _ = map_entries(types, lay["type"], p, read, budgets, ByteBudget(per_map), offsets)
        pairs = [(_label_text(k), _label_text(v)) for k, v in entries]
        return dict(sorted((k, v) for k, v in pairs if k is not None and v is not None))

    # The first two reads of every walk need no walking: the map pointer each
    # g.labels points at, and the map header it points at.
    ptrs = sorted({g.f["labels"] for g in gs})
    words = mem.read_many([(p, 8) for p in ptrs])
    cache = dict(zip(((p, 8) for p in ptrs), words))
    map_layout = getattr(types.types.get(lay["type"]), "map_layout", None)
    header = types.types.get(map_layout.header) if map_layout else None
    hreqs = []
    if header is not None:
        hreqs = sorted({(h, header.size) for h in (int.from_bytes(w, "little") for w in words if w) if h})
    cache.update(zip(hreqs, mem.read_many(hreqs)))
    maps = _batched_walks(mem, ptrs, walk, cache)
    return {g.addr: maps[g.f["labels"]] for g in gs if maps.get(g.f["labels"])}


def _label_text(v) -> str | None:
    """A decoded label string, or its kept prefix when cut at max_bytes."""
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and v.get("__truncated") == "bytes":
        return v.get("value")
    return None   # unreadable


class _Missed(Exception):
    pass


def _batched_walks(mem, keys: list[int], walk, cache: dict[tuple[int, int], bytes | None]) -> dict:
    """{key: walk(key, read)}, where `read` serves what `cache` (read
    beforehand) and earlier rounds read.

    A walk that reads something not read yet is run again after one
    read_many of every such request; past _MAP_READ_ROUNDS rounds the walks
    that remain read directly."""
    results, pending = {}, list(keys)
    for rnd in range(_MAP_READ_ROUNDS + 1):
        last = rnd == _MAP_READ_ROUNDS
        wanted: set[tuple[int, int]] = set()
        for key in pending:
            missed: list[tuple[int, int]] = []

            def read(addr: int, n: int) -> bytes:
                got = cache.get((addr, n), _Missed)
                if got is _Missed:
                    if last:
                        return mem.read(addr, n)
                    missed.append((addr, n))
                    raise _Missed()
                if got is None:
                    raise AgentError(f"cannot read {n} bytes at {addr:#x}")
                return got
            value = walk(key, read)
            if missed:
                wanted.update(missed)
            else:
                results[key] = value
        pending = [k for k in pending if k not in results]
        if not pending:
            break
        reqs = sorted(wanted)
        cache.update(zip(reqs, mem.read_many(reqs)))
    return results


def _label_types(lay: dict) -> TypeTable | None:
    """The labelMap's TypeTable, parsed once per layout (it is part of the
    layout's JSON; parsing takes longer than reading a few labels)."""
    hit = _label_tables.get(id(lay))
    if hit is not None and hit[0] is lay:
        return hit[1]
    if "types" not in lay:
        return None
    if len(_label_tables) >= 64:
        _label_tables.clear()
    table = TypeTable.from_json(lay["types"])
    _label_tables[id(lay)] = (lay, table)
    return table