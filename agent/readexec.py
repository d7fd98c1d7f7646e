"""The user-space executor of the read program (docs/read-program.md).

In the pause: find the captured frames by walking frame pointers through the
stack copies, then copy what the read program says, one batched
process_vm_readv per pointer level for every frame at once. All per-object
work is numpy columns. What it can't copy exactly (a budget would cut, an
op or a map it doesn't walk, a dynamic type not shaped yet) it reports, and
the snapshot reads those goroutines with the reference reader instead.

After the resume: `Copies.read` serves the decoder from the copies only.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from probe_compiler.decode import MIN_TOPHASH, SAME_SIZE_GROW
from probe_compiler.readprog import ReadProgram

from .capture import Unavailable, locate_root, locate_spilled
from .errors import MemoryReadError

_R8 = np.arange(8, dtype=np.int64)
_MAX_DIR = 1 << 20       # a map directory longer than this is malformed (as the decoder says)
_BIG = np.int64(1 << 62)


# ---------------------------------------------------------------- copies

class Copies:
    """Every range the pause copied, by remote address; the decoder's only memory
    after the resume. A range that failed in the pause fails again with the
    reader's own message; a range never copied counts as a miss."""

    def __init__(self, pid: int, static=None):
        self.pid = pid
        # (lo, hi, read): a range never copied because it is the binary's own
        # read-only data, read from its file instead
        self.static = static
        self._chunks: list[tuple] = []        # (addrs, sizes, buf, offs, ok)
        self._recorded: list[tuple[int, bytes]] = []
        self._failed: list[tuple[int, int]] = []
        self.misses: list[tuple[int, int]] = []
        self._built = False

    # -- filled in the pause
    def add(self, addrs, sizes, buf, offs, ok, fails: bool = True) -> None:
        """Ranges read into buf at offs (ok[i] False: range i failed). With
        fails=False a failed range says nothing (a merged read whose ranges
        were read again one by one)."""
        self._chunks.append((addrs, sizes, buf, offs, ok, fails))
        self._built = False

    def record(self, addr: int, data: bytes | None, size: int) -> None:
        if data is None:
            self._failed.append((addr, size))
        else:
            self._recorded.append((addr, bytes(data)))
        self._built = False

    # -- read after the resume
    def _build(self) -> None:
        starts, ends, srcs = [], [], []
        for addrs, sizes, buf, offs, ok, fails in self._chunks:
            starts.append(addrs[ok]); ends.append(addrs[ok] + sizes[ok])
            srcs.append((buf, offs[:-1][ok], sizes[ok]))
            bad = ~ok
            if fails:
                self._failed.extend(zip(addrs[bad].tolist(), sizes[bad].tolist()))
        for a, d in self._recorded:
            starts.append(np.array([a], np.int64)); ends.append(np.array([a + len(d)], np.int64))
            srcs.append((np.frombuffer(d, np.uint8), np.array([0], np.int64), np.array([len(d)], np.int64)))
        if not starts:
            self._istart = self._iend = self._ibase = np.zeros(0, np.int64)
            self._bytes = np.zeros(0, np.uint8)
        else:
            A, Z = np.concatenate(starts), np.concatenate(ends)
            order = np.argsort(A, kind="stable")
            As, Zs = A[order], Z[order]
            runmax = np.maximum.accumulate(Zs)
            new = np.ones(len(As), bool)
            new[1:] = As[1:] > runmax[:-1]
            gid = np.cumsum(new) - 1
            istart = As[new]
            iend = np.maximum.reduceat(Zs, np.flatnonzero(new))
            ilen = iend - istart
            ibase = np.zeros(len(istart), np.int64)
            ibase[1:] = np.cumsum(ilen)[:-1]
            out = np.zeros(int(ilen.sum()), np.uint8)
            # entry -> destination in `out`, then copy each source chunk with one fancy index
            dest_sorted = ibase[gid] + (As - istart[gid])
            dest = np.empty(len(A), np.int64)
            dest[order] = dest_sorted
            at = 0
            for buf, soff, sz in srcs:
                n = len(sz)
                d = dest[at:at + n]
                at += n
                if not n or not sz.sum():
                    continue
                rep = np.repeat(np.arange(n), sz)
                ramp = np.arange(len(rep)) - np.repeat(np.cumsum(sz) - sz, sz)
                out[d[rep] + ramp] = buf[soff[rep] + ramp]
            self._istart, self._iend, self._ibase, self._bytes = istart, iend, ibase, out
        self._starts_list = self._istart.tolist()
        self._built = True

    def read(self, addr: int, size: int) -> bytes:
        if not self._built:
            self._build()
        if size <= 0:
            return b""
        i = bisect.bisect_right(self._starts_list, addr) - 1
        if i >= 0 and addr + size <= self._iend[i]:
            b = int(self._ibase[i] + addr - self._istart[i])
            return self._bytes[b:b + size].tobytes()
        if self.static is not None and self.static[0] <= addr and addr + size <= self.static[1]:
            return self.static[2](addr, size)
        if any(a < addr + size and addr < a + s for a, s in self._failed):
            raise MemoryReadError(addr, size, f"pid {self.pid}: cannot read {size} bytes at "
                                  f"{addr:#x} (unmapped or unreadable)")
        self.misses.append((addr, size))
        raise MemoryReadError(addr, size, f"pid {self.pid}: {size} bytes at {addr:#x} were not "
                              "copied in the pause")


class RecordingMemory:
    """Live reads in the pause (the fallback reader) that keep what they read."""

    def __init__(self, mem, copies: Copies):
        self.mem, self.copies = mem, copies

    def read(self, addr: int, size: int) -> bytes:
        try:
            b = self.mem.read(addr, size)
        except MemoryReadError:
            self.copies.record(addr, None, size)
            raise
        self.copies.record(addr, b, size)
        return b


# ---------------------------------------------------------------- frame-pointer walk

@dataclass
class Walk:
    """Frames whose pc is in a captured span, found in the pause: arrays of
    goroutine row k, pc and CFA (as the process sees them); `fallback`: rows
    the walk can't vouch for (their captures are read the reference way)."""
    k: np.ndarray
    pc: np.ndarray
    cfa: np.ndarray
    fallback: set = field(default_factory=set)


def span_table(spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, merged [lo, hi) spans as (los, his) for pc-in-span tests."""
    spans = sorted((lo, hi) for lo, hi in spans if hi > lo)
    los, his = [], []
    for lo, hi in spans:
        if los and lo <= his[-1]:
            his[-1] = max(his[-1], hi)
        else:
            los.append(lo); his.append(hi)
    return np.array(los, np.int64), np.array(his, np.int64)


def in_spans(pcs: np.ndarray, table) -> np.ndarray:
    los, his = table
    if not len(los):
        return np.zeros(len(pcs), bool)
    i = np.searchsorted(los, pcs, side="right") - 1
    ok = i >= 0
    ic = np.maximum(i, 0)
    return ok & (pcs < his[ic])


def label_table(capture_spans, stop_spans, top_spans) -> tuple[np.ndarray, np.ndarray]:
    """The three span tables as one: (bounds, labels) where the pcs in
    [bounds[i-1], bounds[i]) have labels[i], a bit set of CAPTURED, STOP and
    TOP; one searchsorted answers all three questions for a column of pcs."""
    tables = (capture_spans, stop_spans, top_spans)
    bounds = np.unique(np.concatenate([np.concatenate(t) for t in tables] + [np.zeros(0, np.int64)]))
    labels = np.zeros(len(bounds) + 1, np.int8)
    for bit, t in zip((CAPTURED, STOP, TOP), tables):
        labels[1:] |= np.where(in_spans(bounds, t), bit, 0).astype(np.int8)
    return bounds, labels


CAPTURED, STOP, TOP = 1, 2, 4


def fp_walk(start_pc, start_bp, lo, size, soff, words_buf, capture_spans, stop_spans,
            top_spans, max_frames: int, labels=None) -> Walk:
    """Walk the frame-pointer chain of every goroutine in its stack copy.

    Row k's copy is [lo[k], lo[k] + size[k]) at byte soff[k] of words_buf.
    Frame 0 is (start_pc, CFA start_bp + 16); each next frame's pc is the
    word at BP + 8 and its BP the word at BP. A row is sent to the fallback
    when its innermost pc is captured, when the chain passes a stop span
    (injected frames, SP-writing asm), leaves the copy, or ends (BP 0) at a
    frame that is no top frame (goexit, mstart). `labels`: label_table of
    the three span tables, when the caller keeps one."""
    n = len(start_pc)
    buf = np.frombuffer(words_buf, np.uint8) if not isinstance(words_buf, np.ndarray) else words_buf
    w = _wview(buf)
    bounds, lab_of = labels if labels is not None else label_table(capture_spans, stop_spans, top_spans)
    ks, pcs, cfas, fb = [], [], [], set()
    rows = np.arange(n)
    pc, bp = start_pc.astype(np.int64), start_bp.astype(np.int64)
    r_lo, r_hi, r_off = lo.astype(np.int64), lo + size, soff
    depth = 0
    while len(rows) and depth < max_frames:
        lab = lab_of[np.searchsorted(bounds, pc, side="right")]
        hit = (lab & CAPTURED) != 0
        if depth == 0:
            if hit.any():
                fb.update(rows[hit].tolist())
        elif hit.any():
            ks.append(rows[hit]); pcs.append(pc[hit]); cfas.append(bp[hit] + 16)
        halt = (lab >= STOP) | (bp == 0) | (pc == 0)
        go = (bp >= r_lo) & (bp + 16 <= r_hi)
        if halt.any() or not go.all():
            stop = (lab & STOP) != 0
            ended = ~stop & ((bp == 0) | (pc == 0))
            top = (lab & TOP) != 0
            bad = stop | (ended & ~top) | (~halt & ~go)
            if bad.any():
                fb.update(rows[bad].tolist())
            go &= ~halt
            rows, pc, bp, r_lo, r_hi, r_off = rows[go], pc[go], bp[go], r_lo[go], r_hi[go], r_off[go]
            if not len(rows):
                break
        at = r_off + (bp - r_lo)
        pc = w[at + 8]
        bp = w[at]
        depth += 1
    if len(rows):
        fb.update(rows.tolist())
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64))
    return Walk(cat(ks), cat(pcs), cat(cfas), fb)


class _Words:
    """The little-endian 8-byte words of a buffer by byte offset: w[off] is
    the column of words at buf[off[i]:off[i] + 8], one gather. Offsets that
    are all 8-aligned (pointers in Go values are, and read_coalesced keeps
    the buffer's offsets congruent to the addresses mod 8) use the aligned
    word view, several times faster than the byte-strided one."""

    __slots__ = ("buf", "_a", "_s")

    def __init__(self, buf: np.ndarray):
        self.buf, self._a, self._s = buf, None, None

    def at(self, off, so: int):
        return self[off + int(so)]

    def at2(self, off, sos: np.ndarray):
        return self[(sos[:, None] + off).ravel()]

    def aligned(self) -> np.ndarray:
        if self._a is None:
            self._a = self.buf[:len(self.buf) & ~7].view("<i8")
        return self._a

    def __getitem__(self, off: np.ndarray) -> np.ndarray:
        if not len(off):
            return np.zeros(np.shape(off), np.int64)
        if not (off & 7).any():
            if self._a is None:
                self._a = self.buf[:len(self.buf) & ~7].view("<i8")
            return self._a[off >> 3]
        if self._s is None:
            self._s = np.ndarray(shape=(max(len(self.buf) - 7, 0),), dtype="<i8", buffer=self.buf,
                                 strides=(1,))
        return self._s[off]


class _Slots:
    """Words of values at 8-aligned offsets `off` of a buffer: the slot at
    byte `so` of every value, as whole-word gathers from base = off >> 3."""

    __slots__ = ("a", "base", "w")

    def __init__(self, a, base, w):
        self.a, self.base, self.w = a, base, w

    def at(self, off, so: int):
        so = int(so)
        if so & 7:
            return self.w[off + so]
        return self.a[self.base + (so >> 3)]

    def at2(self, off, sos: np.ndarray):
        """The words of every slot of `sos` for every row, slot by slot (slot
        0 of every row first): a slot's pointers across rows tend to ascend
        (values allocated in goroutine order), so a level's reads come in
        long runs, which coalesce sorts fastest."""
        if (sos & 7).any():
            return self.w[(sos[:, None] + off).ravel()]
        return self.a[(sos >> 3)[:, None] + self.base].ravel()


def _wview(buf: np.ndarray) -> _Words:
    return _Words(buf)


def _words(buf: np.ndarray, off: np.ndarray) -> np.ndarray:
    return _Words(buf)[off]


# ---------------------------------------------------------------- roots

class _ZeroFrame:
    """A stand-in frame whose CFA is 0, so recorded stack addresses are CFA offsets."""
    cfa = 0

    def __init__(self, pc: int, lookup_pc: int):
        self.pc, self.lookup_pc = pc, lookup_pc


class _RecStack:
    def __init__(self):
        self.got = []

    def bytes_at(self, addr: int, size: int) -> bytes:
        self.got.append((addr, size))
        return bytes(size)


def root_recipe(locs, var_pc: int, lookup_pc: int, size: int, spills, root: str):
    """Where the reference reader would take this root's bytes at this pc:
    ("pieces", [[size, kind, reg, offset], ...]) or None (nothing to copy).
    Runs the reference's own locate_root/locate_spilled on a stand-in frame."""
    frame, stack = _ZeroFrame(var_pc, lookup_pc), _RecStack()
    statics = []

    def read(addr, n):
        statics.append((addr, n))
        return bytes(n)
    try:
        locate_root(locs, var_pc, frame, stack, None, read, 0, size)
        loc = next(loc for loc in locs if loc.lo <= var_pc < loc.hi)
        return ("pieces", [list(p) for p in loc.pieces])
    except Unavailable as why:
        try:
            stack.got.clear()
            locate_spilled(spills, root, frame, stack, why)
        except Unavailable:
            return None
        (off, n), = stack.got
        return ("pieces", [[n, "cfa", 0, off]])


# ---------------------------------------------------------------- the level engine

class Run:
    """One execution of the read program over the captured frames of a pause.

    Frame f is one captured (goroutine, physical frame, instance). `bad[f]`:
    the program can't copy it exactly; its goroutine goes to the fallback.
    `used[f]`: the bytes read for frame f, which is what the decoder will
    charge to its budgets (an upper bound: a cycle the decoder stops at is
    read on to the depth limit here)."""

    def __init__(self, prog: ReadProgram, mem, copies: Copies, n_frames: int, *,
                 types_base: int | None, known_rtypes, snapshot_left: int):
        self.prog, self.mem, self.copies = prog, mem, copies
        b = prog.budgets
        self.D, self.E, self.SB = b.depth, b.elements, b.string_bytes
        self.frame_cap, self.snap_left = b.frame_bytes, snapshot_left
        self.n = n_frames
        self.used = np.zeros(n_frames, np.int64)
        self.bad = np.zeros(n_frames, bool)
        self.any_bad = False
        self.why: dict[int, str] = {}
        self.types_base = types_base
        self.known = known_rtypes            # every rtype offset DWARF describes
        self.missing: set[int] = set()       # rtype offsets met without a shape yet
        self.pending: list = []
        self.levels = 0
        self.bytes = 0
        self.out_of_snapshot = False         # a level did not fit the snapshot's byte budget
        self._plans: dict[int, list] = {}
        self._map_seq = 0                    # directory maps being walked: id -> where they are
        self._map_state: dict[int, dict] = {}

    # -- scheduling

    def add(self, addrs, sizes, frames, cont, **payload) -> None:
        """Schedule reads for the next level; every size must be > 0 (the
        callers filter: an empty read is no read)."""
        if len(frames):
            if np.ndim(sizes) == 0:
                if sizes <= 0:
                    return
                sizes = np.full(len(addrs), sizes, np.int64)
            self.pending.append((addrs, sizes, frames, cont, payload))

    def mark(self, frames, why: str) -> None:
        if len(frames):
            self.bad[frames] = True
            self.any_bad = True
            for f in np.unique(frames).tolist():
                self.why.setdefault(f, why)

    def run_levels(self, out_of_time) -> bool:
        """Read level after level until nothing is pending; False if time ran out."""
        while self.pending:
            if out_of_time():
                return False
            self._level()
        return True

    def _level(self) -> None:
        groups, self.pending = self.pending, []
        keep = groups
        if self.any_bad:
            keep = [k for k in (_subset(g, ~self.bad[g[2]]) for g in groups) if len(k[2])]
        if not keep:
            return
        frames, sizes = _joined(keep, 2), _joined(keep, 1)
        self.used += np.bincount(frames, weights=sizes, minlength=self.n).astype(np.int64)
        over = self.used > self.frame_cap
        if over.any():
            self.mark(np.flatnonzero(over & ~self.bad), "the frame's byte budget")
        total = int(sizes[~self.bad[frames]].sum()) if self.any_bad else int(sizes.sum())
        if total > self.snap_left:
            self.out_of_snapshot = True
            self.mark(frames, "the snapshot's byte budget")
            return
        if self.any_bad:
            keep = [k for k in (_subset(g, ~self.bad[g[2]]) for g in keep) if len(k[2])]
            if not keep:
                return
        addrs, sizes = _joined(keep, 0), _joined(keep, 1)
        buf, offs, ok, chunks = read_coalesced(self.mem, addrs, sizes)
        for c in chunks:
            self.copies.add(*c)
        got = int(sizes.sum())
        self.snap_left -= got
        self.bytes += got
        self.levels += 1
        w = _wview(buf)
        all_ok = bool(ok.all())
        at = 0
        for addrs_g, sizes_g, frames_g, cont, payload in keep:
            n = len(frames_g)
            if cont == "leaf":
                at += n
                continue
            o = offs[at:at + n]
            if all_ok:
                getattr(self, "_c_" + cont)(buf, w, o, addrs_g, frames_g, payload)
            else:
                okg = ok[at:at + n]
                getattr(self, "_c_" + cont)(buf, w, o[okg], addrs_g[okg], frames_g[okg],
                                            {k: (v[okg] if k != "dbuf" and isinstance(v, np.ndarray)
                                                 and v.shape[:1] == (n,) else v) for k, v in payload.items()})
            at += n

    # -- continuations after a level's read

    def _c_value(self, buf, w, off, addr, frames, p):
        self.expand(p["tid"], buf, off, frames, p["depth"], w)

    def _c_elems(self, buf, w, off, addr, frames, p):
        tid, esize, cnt = p["tid"], p["esize"], p["cnt"]
        if not self.prog.shapes.get(tid, {}).get("slots"):
            return
        if len(cnt) and (cnt == cnt[0]).all():    # element by element across rows: long address runs
            k = int(cnt[0])
            offs = (np.arange(k)[:, None] * esize + off).ravel()
            self.expand(tid, buf, offs, np.tile(frames, k), np.tile(p["depth"], k), w)
            return
        rep = np.repeat(np.arange(len(frames)), cnt)
        ramp = np.arange(len(rep)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        self.expand(tid, buf, off[rep] + ramp * esize, frames[rep], p["depth"][rep], w)

    def _c_ops(self, buf, w, off, addr, frames, p):
        self.run_ops(p["ops"], p["i"], p["tid"], buf, off, addr, frames)

    def _c_assert(self, buf, w, off, addr, frames, p):
        self._asserted(w[off], frames, p)

    def _asserted(self, rtype, frames, p) -> None:
        """The frames whose interface holds the asserted type go on with its value
        (the others' rows say what it holds: nothing more is read for them)."""
        m = rtype == p["want"]
        if not m.any():
            return
        ops, i, tid = p["ops"], p["i"], p["tid"]
        _, _, _, _, data_off, direct, _ = ops[i]
        buf, off, addr, frames = p["dbuf"], p["doff"][m], p["daddr"][m], frames[m]
        if direct:                    # pointer-shaped: the data word is the value
            self.run_ops(ops, i + 1, tid, buf, off + data_off,
                         np.where(addr >= 0, addr + data_off, -1), frames)
            return
        d = _words(buf, off + data_off)
        k = d != 0
        self.run_ops(ops, i + 1, tid, None, None, d[k], frames[k])

    # -- hmap maps (Go < 1.24): buckets in the decoder's order, bucket by bucket

    def _c_hmap_hdr(self, buf, w, off, addr, frames, p):
        """The walk of each map starts: buckets (2^B), then the old buckets of a
        grow, each bucket's overflow chain after it, every bucket once; until
        `elements` full slots and the one that ends the decoder's walk."""
        m = self.prog.maps[p["tid"]]
        u = lambda f: int.from_bytes(buf[o + f[0]:o + f[0] + f[1]].tobytes(), "little")
        mids = []
        for r in range(len(frames)):
            o = int(off[r])
            count, flags, b_log = u(m["count"]), u(m["flags"]), u(m["B"])
            buckets, old = int(w[np.array([o + m["buckets"]])][0]), int(w[np.array([o + m["old"]])][0])
            starts = [(buckets, 1 << b_log)]
            if old:
                starts.append((old, 1 << b_log if flags & SAME_SIZE_GROW else 1 << max(b_log - 1, 0)))
            mid = self._map_seq
            self._map_seq += 1
            self._map_state[mid] = {"tid": p["tid"], "starts": starts, "si": 0, "i": 0, "chain": 0,
                                    "seen": set(), "cache": {}, "found": 0,
                                    "limit": min(count, self.E), "depth": int(p["depth"][r]),
                                    "frame": int(frames[r]), "done": False}
            mids.append(mid)
        self._hmap_walk(p["tid"], mids)

    def _hmap_next(self, st, m, commit: bool):
        """The next bucket of the decoder's walk (0: none), advancing only on commit."""
        if st["chain"] and st["chain"] not in st["seen"]:
            return st["chain"], None
        si, i = st["si"], st["i"]
        while si < len(st["starts"]):
            base, n = st["starts"][si]
            if base and i < n:
                b = base + i * m["bucket"]
                if b in st["seen"]:       # the decoder skips a bucket it has walked
                    i += 1
                    continue
                return b, (si, i + 1)
            si, i = si + 1, 0
        return 0, (si, i)

    def _hmap_walk(self, tid, mids) -> None:
        """Walk each map as far as its read buckets go; read what it waits for
        (the bucket, and when it is a main one the next few after it)."""
        m = self.prog.maps[tid]
        want_a, want_f, want_m = [], [], []
        slots: dict[int, list] = {}           # id(buf) -> [(buf, w, off, frame, depth, key?)...]
        for mid in mids:
            st = self._map_state[mid]
            while not st["done"] and st["found"] <= st["limit"]:
                b, nxt = self._hmap_next(st, m, False)
                if b == 0:
                    st["done"] = True
                    break
                got = st["cache"].get(b, False)
                if got is False:               # not read yet: this bucket and a few main ones after it
                    ahead = [b]
                    if nxt is not None:
                        si, i = nxt
                        while len(ahead) < max(2, -(-(st["limit"] + 1 - st["found"]) // 4)) \
                                and si < len(st["starts"]):
                            base, n = st["starts"][si]
                            if base and i < n:
                                a = base + i * m["bucket"]
                                if a not in st["cache"] and a not in st["seen"]:
                                    ahead.append(a)
                                i += 1
                            else:
                                si, i = si + 1, 0
                    for a in ahead:
                        st["cache"][a] = None      # failed unless the read delivers it
                    want_a += ahead; want_f += [st["frame"]] * len(ahead); want_m += [mid] * len(ahead)
                    break
                st["seen"].add(b)
                if nxt is None:
                    st["chain"] = 0
                else:
                    st["si"], st["i"] = nxt
                if got is None:                # unreadable: the decoder's walk ends with an error
                    st["done"] = True
                    break
                gbuf, gw, goff = got
                top = gbuf[goff + m["ctrl"]:goff + m["ctrl"] + 8]
                full = np.flatnonzero(top >= MIN_TOPHASH)
                take = full[:max(0, st["limit"] - st["found"])]
                if len(take):
                    slots.setdefault(id(gbuf), []).append((gbuf, gw, goff, take, st["frame"], st["depth"]))
                st["found"] += len(full)
                st["chain"] = int(gw[np.array([goff + m["overflow"]])][0])
        for group in slots.values():
            gbuf, gw = group[0][0], group[0][1]
            koff = np.concatenate([goff + m["keys"] + take * m["key_stride"] for _, _, goff, take, _, _ in group])
            eoff = np.concatenate([goff + m["elems"] + take * m["elem_stride"] for _, _, goff, take, _, _ in group])
            fr = np.concatenate([np.full(len(take), f, np.int64) for _, _, _, take, f, _ in group])
            dep = np.concatenate([np.full(len(take), d, np.int64) for _, _, _, take, _, d in group])
            self.expand(m["key"], gbuf, koff, fr, dep, gw)
            self.expand(m["elem"], gbuf, eoff, fr, dep, gw)
        if want_a:
            a = lambda xs: np.array(xs, np.int64)
            self.add(a(want_a), m["bucket"], a(want_f), "hmap_buckets", tid=tid, mid=a(want_m))

    def _c_hmap_buckets(self, buf, w, off, addr, frames, p):
        mids = set()
        for mid, b, o in zip(p["mid"].tolist(), addr.tolist(), off.tolist()):
            self._map_state[mid]["cache"][b] = (buf, w, o)
            mids.add(mid)
        # maps whose every bucket of this read failed are not in `mids`: their
        # walk ends at the unreadable bucket, as the decoder's does
        self._hmap_walk(p["tid"], sorted(mids))

    def _c_mapidx_hdr(self, buf, w, off, addr, frames, p):
        m = self.prog.maps[p["ops"][p["i"]][1]]
        dp, dl = w[off + m["dir_ptr"]], w[off + m["dir_len"]]
        one = (dl == 0) & (dp != 0)          # dp == 0: no group yet, the key is not there
        self.add(dp[one], m["group"], frames[one], "mapidx_group", ops=p["ops"], i=p["i"], tid=p["tid"])
        dirs = (dl > 0) & (dl <= _MAX_DIR)   # a directory: its tables' groups in order, in waves
        self.add(dp[dirs], dl[dirs] * 8, frames[dirs], "mapidx_dir", ops=p["ops"], i=p["i"], tid=p["tid"],
                 dl=dl[dirs])

    def _c_mapidx_dir(self, buf, w, off, addr, frames, p):
        m = self.prog.maps[p["ops"][p["i"]][1]]
        tps, mids, orders, fr = [], [], [], []
        for r in range(len(frames)):
            seen, order, mid = set(), 0, self._map_seq
            self._map_seq += 1
            for tp in w[off[r] + 8 * np.arange(int(p["dl"][r]))].tolist():
                if tp and tp not in seen:
                    seen.add(tp)
                    tps.append(tp); mids.append(mid); orders.append(order); fr.append(frames[r])
                    order += 1
        if tps:
            a = lambda xs: np.array(xs, np.int64)
            self.add(a(tps), m["table"], a(fr), "mapidx_table", ops=p["ops"], i=p["i"], tid=p["tid"],
                     mid=a(mids), order=a(orders))

    def _c_mapidx_table(self, buf, w, off, addr, frames, p):
        segs = _table_segments(self.prog.maps[p["ops"][p["i"]][1]], w, off, p)
        for mid, (runs, i0) in segs.items():
            self._map_state[mid] = {"segs": runs, "frame": int(frames[i0])}
        self._mapidx_wave(p, list(segs))

    def _mapidx_wave(self, p, mids) -> None:
        """The next groups of each lookup (the reference walks them one by one
        until the key; a wave reads a few at a time)."""
        m = self.prog.maps[p["ops"][p["i"]][1]]
        wave = self._group_wave(mids, m["group"], lambda st: 8)
        if wave:
            addrs, fr, gm, pos = wave
            self.add(addrs, m["group"], fr, "mapidx_groups", ops=p["ops"], i=p["i"], tid=p["tid"], mid=gm, pos=pos)

    def _group_wave(self, mids, group: int, want):
        """The next groups of each directory-map walk in mids, at most
        want(its state) each, taken off its segments in order: (addresses,
        frames, walk ids, position in the wave) columns, or None if none is left."""
        addrs, fr, gm, pos = [], [], [], []
        for mid in mids:
            st = self._map_state[mid]
            most, wave = want(st), []
            while st["segs"] and len(wave) < most:
                d, n = st["segs"][0]
                take = min(n, most - len(wave))
                wave += [d + g * group for g in range(take)]
                st["segs"][0] = (d + take * group, n - take)
                if st["segs"][0][1] == 0:
                    st["segs"].pop(0)
            addrs += wave; fr += [st["frame"]] * len(wave); gm += [mid] * len(wave)
            pos += list(range(len(wave)))
        if not addrs:
            return None
        return tuple(np.array(xs, np.int64) for xs in (addrs, fr, gm, pos))

    def _c_mapidx_groups(self, buf, w, off, addr, frames, p):
        ops, i = p["ops"], p["i"]
        m, key = self.prog.maps[ops[i][1]], ops[i][2]
        hit, cand = self._key_slots(buf, w, off, m, key)
        rows: dict[int, list] = {}
        for r, (mid, pos) in enumerate(zip(p["mid"].tolist(), p["pos"].tolist())):
            rows.setdefault(mid, []).append((pos, r))
        found_r, found_s, again, kp, kmid, kg, ks = [], [], [], [], [], [], []
        for mid, got in rows.items():
            st = self._map_state[mid]
            got.sort()
            ordered = []
            for want, (pos, r) in enumerate(got):
                if pos != want:               # an unreadable group: the lookup stops there
                    st["segs"] = []
                    break
                ordered.append(r)
            if cand is None:                  # keys compared in the group bytes
                for r in ordered:
                    hs = np.flatnonzero(hit[r])
                    if len(hs):
                        found_r.append(r); found_s.append(int(hs[0]))
                        break
                else:
                    if st["segs"]:
                        again.append(mid)
            else:                             # string keys of the wanted length: read their bytes
                n0 = len(kp)
                for r in ordered:
                    for sl in np.flatnonzero(cand[r]).tolist():
                        kp.append(int(w[np.array([off[r] + m["keys"] + sl * m["key_stride"] + m["key_str"]])][0]))
                        kmid.append(mid); kg.append(int(addr[r])); ks.append(sl)
                if len(kp) == n0 and st["segs"]:
                    again.append(mid)
        if found_r:
            fr_ = np.array(found_r, np.int64)
            elem = addr[fr_] + m["elems"] + np.array(found_s, np.int64) * m["elem_stride"]
            self.run_ops(ops, i + 1, p["tid"], None, None, elem, frames[fr_])
        if kp:
            a = lambda xs: np.array(xs, np.int64)
            self.add(a(kp), len(str(key).encode()), a([self._map_state[x]["frame"] for x in kmid]),
                     "mapidx_dkeys", ops=ops, i=i, tid=p["tid"], mid=a(kmid), gaddr=a(kg), si=a(ks))
        self._mapidx_wave(p, again)

    def _c_mapidx_dkeys(self, buf, w, off, addr, frames, p):
        """Candidates' key bytes, in the walk's order: the first equal one is the
        slot; a lookup with none goes on to its next groups."""
        ops, i = p["ops"], p["i"]
        want = np.frombuffer(str(ops[i][2]).encode(), np.uint8)
        same = (buf[off[:, None] + np.arange(len(want))] == want).all(axis=1)
        mids = p["mid"].tolist()
        done, rows = set(), []
        for r, mid in enumerate(mids):
            if mid not in done and same[r]:
                done.add(mid)
                rows.append(r)
        if rows:
            r = np.array(rows, np.int64)
            m = self.prog.maps[ops[i][1]]
            self.run_ops(ops, i + 1, p["tid"], None, None, p["gaddr"][r] + m["elems"] + p["si"][r] * m["elem_stride"],
                         frames[r])
        # a candidate whose bytes could not be read ends its lookup (the reference errs there)
        self._mapidx_wave(p, [x for x in dict.fromkeys(mids) if x not in done and self._map_state[x]["segs"]])

    def _key_slots(self, buf, w, off, m, key):
        """(hits, None) for keys compared in the group's bytes, or (None,
        candidates) for string keys of the wanted length (rows x slots)."""
        ctrl = buf[off[:, None] + m["ctrl"] + _R8]
        full = (ctrl & 0x80) == 0
        koff = off[:, None] + m["keys"] + np.arange(8) * m["key_stride"]
        kind = m["key_kind"]
        if kind == "string":
            want = str(key).encode()
            klen = w[(koff + m["key_len"]).ravel()].reshape(koff.shape)
            cand = full & (klen == len(want))
            return (cand, None) if not len(want) else (None, cand)
        if kind == "bool":
            return full & ((buf[koff] != 0) == bool(key)), None
        try:
            want = np.frombuffer(int(key).to_bytes(m["key_size"], "little", signed=kind == "int"), np.uint8)
        except OverflowError:
            return np.zeros_like(full), None
        return full & (buf[koff[:, :, None] + np.arange(m["key_size"])] == want).all(axis=2), None

    def _c_mapidx_group(self, buf, w, off, addr, frames, p):
        """The full slots whose key may equal the wanted one; string keys of the
        wanted length are read (all of them: the reference stops at the match)."""
        ops, i = p["ops"], p["i"]
        m, key = self.prog.maps[ops[i][1]], ops[i][2]
        ctrl = buf[off[:, None] + m["ctrl"] + _R8]
        full = (ctrl & 0x80) == 0
        koff = off[:, None] + m["keys"] + np.arange(8) * m["key_stride"]       # rows x slots
        kind = m["key_kind"]
        if kind == "string":
            want = str(key).encode()
            klen = w[(koff + m["key_len"]).ravel()].reshape(koff.shape)
            cand = full & (klen == len(want))
            if len(want):
                r, si = np.nonzero(cand)
                kp = w[(koff[r, si] + m["key_str"])]
                return self.add(kp, len(want), frames[r], "mapidx_key", ops=ops, i=i, tid=p["tid"],
                                row=r, si=si, gaddr=addr[r])
            hit = cand
        elif kind == "bool":
            hit = full & ((buf[koff] != 0) == bool(key))
        else:
            try:
                want = np.frombuffer(int(key).to_bytes(m["key_size"], "little", signed=kind == "int"),
                                     np.uint8)
            except OverflowError:            # no key of this type equals it
                return
            kb = buf[koff[:, :, None] + np.arange(m["key_size"])]
            hit = full & (kb == want).all(axis=2)
        r, si = np.nonzero(hit)
        self._found(r, si, addr[r], frames[r], p)

    def _c_mapidx_key(self, buf, w, off, addr, frames, p):
        ops, i = p["ops"], p["i"]
        want = np.frombuffer(str(ops[i][2]).encode(), np.uint8)
        same = (buf[off[:, None] + np.arange(len(want))] == want).all(axis=1)
        self._found(p["row"][same], p["si"][same], p["gaddr"][same], frames[same], p)

    def _found(self, row, si, gaddr, frames, p) -> None:
        """The first matching slot of each lookup (rows in slot order): its elem
        is where the remaining ops go on."""
        if not len(row):
            return
        _, first = np.unique(row, return_index=True)
        m = self.prog.maps[p["ops"][p["i"]][1]]
        elem = gaddr[first] + m["elems"] + si[first] * m["elem_stride"]
        self.run_ops(p["ops"], p["i"] + 1, p["tid"], None, None, elem, frames[first])

    def _c_itab(self, buf, w, off, addr, frames, p):
        self.dyn(w[off], p["data"], p["dbuf"], p["doff"], frames, p["depth"])

    def _c_map_hdr(self, buf, w, off, addr, frames, p):
        m = self.prog.maps[p["tid"]]
        used, dp, dl = w[off + m["used"]], w[off + m["dir_ptr"]], w[off + m["dir_len"]]
        one = (dl == 0) & (dp != 0)
        used = np.where(used < 0, _BIG, used)
        limit = np.minimum(used, self.E)
        self.add(dp[one], m["group"], frames[one], "map_group", tid=p["tid"],
                 limit=limit[one], depth=p["depth"][one])
        # A directory of tables (more than 8 entries): the table pointers, then
        # the tables, then their groups in order until `limit` full slots and
        # one more (the decoder's walk reads on to the slot that ends it). A
        # length the decoder calls malformed is read no further (nor by it).
        dirs = (dl > 0) & (dl <= _MAX_DIR)
        self.add(dp[dirs], dl[dirs] * 8, frames[dirs], "map_dir", tid=p["tid"], dl=dl[dirs],
                 limit=limit[dirs], depth=p["depth"][dirs])

    def _c_map_dir(self, buf, w, off, addr, frames, p):
        """Each distinct table of each directory, in directory order (a table
        appears 2^(globalDepth-localDepth) times, as the decoder dedupes)."""
        m = self.prog.maps[p["tid"]]
        tps, mids, orders, fr, lims, deps = [], [], [], [], [], []
        for r in range(len(frames)):
            ptrs = w[off[r] + 8 * np.arange(int(p["dl"][r]))]
            seen, order = set(), 0
            mid = self._map_seq
            self._map_seq += 1
            for tp in ptrs.tolist():
                if tp == 0 or tp in seen:
                    continue
                seen.add(tp)
                tps.append(tp); mids.append(mid); orders.append(order)
                order += 1
            fr += [frames[r]] * order; lims += [p["limit"][r]] * order; deps += [p["depth"][r]] * order
        if tps:
            a = lambda xs: np.array(xs, np.int64)
            self.add(a(tps), m["table"], a(fr), "map_table", tid=p["tid"], mid=a(mids), order=a(orders),
                     limit=a(lims), depth=a(deps))

    def _c_map_table(self, buf, w, off, addr, frames, p):
        """The groups of a directory map's tables, in order, cut at the first
        table that could not be read (the decoder stops there with an error)."""
        segs = _table_segments(self.prog.maps[p["tid"]], w, off, p)
        for mid, (runs, i0) in segs.items():
            self._map_state[mid] = {"segs": runs, "found": 0, "limit": int(p["limit"][i0]),
                                    "depth": int(p["depth"][i0]), "frame": int(frames[i0])}
        self._map_wave(p["tid"], list(segs))

    def _map_wave(self, tid, mids) -> None:
        """The next groups of each map: enough for the entries it still needs
        if they were half full (the decoder reads them one by one in order)."""
        m = self.prog.maps[tid]
        wave = self._group_wave(mids, m["group"],
                                lambda st: max(2, -(-(st["limit"] + 1 - st["found"]) // 4)))
        if wave:
            addrs, fr, gm, pos = wave
            self.add(addrs, m["group"], fr, "map_groups", tid=tid, mid=gm, pos=pos)

    def _c_map_groups(self, buf, w, off, addr, frames, p):
        """A wave of groups: the first full slots each map still needs, in
        order; a group that could not be read ends its map's walk."""
        tid = p["tid"]
        m = self.prog.maps[tid]
        ctrl = buf[off[:, None] + m["ctrl"] + _R8]
        full = (ctrl & 0x80) == 0
        rows: dict[int, list] = {}
        for i, (mid, pos) in enumerate(zip(p["mid"].tolist(), p["pos"].tolist())):
            rows.setdefault(mid, []).append((pos, i))
        gi, si, again = [], [], []
        for mid, got in rows.items():
            st = self._map_state[mid]
            got.sort()
            for want, (pos, i) in enumerate(got):
                if pos != want or st["found"] > st["limit"]:
                    st["segs"] = []          # unreadable group, or past the last entry: the walk ends
                    break
                slots = np.flatnonzero(full[i])
                take = slots[:max(0, st["limit"] - st["found"])]
                gi += [i] * len(take); si += take.tolist()
                st["found"] += len(slots)
            if len(got) and st["found"] <= st["limit"] and st["segs"]:
                again.append(mid)
        if gi:
            gi, si = np.array(gi, np.int64), np.array(si, np.int64)
            fr = frames[gi]
            dep = np.array([self._map_state[mid]["depth"] for mid in p["mid"][gi].tolist()], np.int64)
            self.expand(m["key"], buf, off[gi] + m["keys"] + si * m["key_stride"], fr, dep, w)
            self.expand(m["elem"], buf, off[gi] + m["elems"] + si * m["elem_stride"], fr, dep, w)
        self._map_wave(tid, again)

    def _c_map_group(self, buf, w, off, addr, frames, p):
        m = self.prog.maps[p["tid"]]
        ctrl = buf[off[:, None] + m["ctrl"] + _R8]          # ctrl byte i of each group
        full = (ctrl & 0x80) == 0
        rank = np.cumsum(full, axis=1)
        take = full & (rank <= p["limit"][:, None])
        gi, si = np.nonzero(take)
        fr, dep = frames[gi], p["depth"][gi]
        self.expand(m["key"], buf, off[gi] + m["keys"] + si * m["key_stride"], fr, dep, w)
        self.expand(m["elem"], buf, off[gi] + m["elems"] + si * m["elem_stride"], fr, dep, w)

    # -- a value whose bytes are held

    def _plan(self, tid):
        """A shape's slots grouped for column work: all strings in one
        (rows x slots) gather, pointers by pointee type; the rest one by one."""
        got = self._plans.get(tid)
        if got is None:
            shape = self.prog.shapes[tid]
            strs = [s for s in shape["slots"] if s[0] == "str"]
            ptrs: dict[int, list] = {}
            rest = []
            for s in shape["slots"]:
                if s[0] == "ptr":
                    ptrs.setdefault(s[2], []).append(s[1])
                elif s[0] != "str":
                    rest.append(s)
            got = []
            if strs:
                got.append(("strs", np.array([s[1] for s in strs], np.int64),
                            np.array([s[2] for s in strs], np.int64)))
            for elem, offs in ptrs.items():
                got.append(("ptrs", np.array(offs, np.int64), elem, self.prog.shapes[elem]["need"]))
            got.extend(rest)
            self._plans[tid] = got
        return got

    def expand(self, tid, buf, off, frames, depth, w=None) -> None:
        if tid not in self.prog.shapes or not len(frames):
            return
        plan = self._plan(tid)
        if not plan:
            return
        if w is None:
            w = _wview(buf)
        if not (off & 7).any():      # the usual case: gather whole words, one op a slot
            w = _Slots(w.aligned(), off >> 3, w)
        D = self.D
        for s in plan:
            kind = s[0]
            if kind == "strs":
                if len(s[1]) == 1:
                    p, n, fr = w.at(off, s[1][0]), w.at(off, s[2][0]), frames
                else:
                    p, n = w.at2(off, s[1]), w.at2(off, s[2])
                    fr = np.tile(frames, len(s[1]))
                m = n != 0
                self.add(p[m], np.minimum(np.where(n[m] < 0, _BIG, n[m]), self.SB), fr[m], "leaf")
            elif kind == "ptrs":
                if not s[3]:
                    continue
                k = len(s[1])
                p = w.at(off, s[1][0]) if k == 1 else w.at2(off, s[1])
                d = depth if k == 1 else np.tile(depth, k)
                fr = frames if k == 1 else np.tile(frames, k)
                m = (p != 0) & (d < D)
                self.add(p[m], s[3], fr[m], "value", tid=s[2], depth=d[m] + 1)
            elif kind == "slice":
                p, n = w.at(off, s[1]), w.at(off, s[2])
                n = np.where(n < 0, _BIG, n)
                cnt = np.minimum(n, self.E)
                m = (p != 0) & (depth < D) & (cnt * s[4] > 0)
                self.add(p[m], cnt[m] * s[4], frames[m], "elems", tid=s[3], esize=s[4],
                         cnt=cnt[m], depth=depth[m] + 1)
            elif kind == "map":
                p = w.at(off, s[1])
                m = (p != 0) & (depth < D)
                mp = self.prog.maps[s[2]]
                if _indirect(mp):
                    self.mark(frames[p != 0], "a map with indirect keys or elems")
                    continue
                self.add(p[m], mp["header"], frames[m],
                         "hmap_hdr" if mp.get("impl") == "hmap" else "map_hdr", tid=s[2], depth=depth[m] + 1)
            elif kind == "iface":
                t = w.at(off, s[1])
                data = w.at(off, s[2])
                if s[3] >= 0:
                    m = t != 0
                    self.add(t[m] + s[3], 8, frames[m], "itab", data=data[m], dbuf=buf,
                             doff=off[m] + s[2], depth=depth[m])
                else:
                    self.dyn(t, data, buf, off + s[2], frames, depth)
            elif kind == "chan":
                p = w.at(off, s[1])
                m = p != 0
                self.add(p[m], s[2], frames[m], "leaf")
            elif kind == "func":
                p = w.at(off, s[1])
                m = p != 0
                self.add(p[m], 8, frames[m], "leaf")
            elif kind == "fallback":
                p = w.at(off, s[1])
                self.mark(frames[p != 0], s[2])

    def dyn(self, rtype, data, buf, doff, frames, depth) -> None:
        """An interface's dynamic value, given its runtime type words."""
        live = rtype != 0
        if not live.any() or self.types_base is None:
            return
        kinds = np.unique(rtype[live])
        for r in kinds.tolist():
            m = rtype == r if len(kinds) > 1 or not live.all() else slice(None)
            off = r - self.types_base
            tid = self.prog.rtypes.get(off)
            if tid is None:
                if off in self.known:
                    self.missing.add(off)
                    self.mark(frames[m], "a dynamic type not in the program yet")
                continue
            if tid in self.prog.direct:
                self.expand(tid, buf, doff[m], frames[m], depth[m])
                continue
            need = self.prog.shapes[tid]["need"]
            mm = depth[m] < self.D
            if need:
                self.add(data[m][mm], need, frames[m][mm], "value", tid=tid, depth=depth[m][mm] + 1)

    # -- a capture's access ops (probe_compiler.expr), column-wise

    def run_ops(self, ops, i, tid, buf, off, addr, frames) -> None:
        while i < len(ops) and len(frames):
            op = ops[i]
            name = op[0]
            if name == "offset":
                if buf is not None:
                    off = off + op[1]
                addr = np.where(addr >= 0, addr + op[1], -1)
            elif name == "deref":
                if buf is None:
                    return self.add(addr, 8, frames, "ops", ops=ops, i=i, tid=tid)
                p = _words(buf, off)
                m = p != 0
                buf, off, addr, frames = None, None, p[m], frames[m]
            elif name == "index":
                _, idx, esize, data_off, len_off = op
                if buf is None:
                    return self.add(addr, max(data_off, len_off) + 8, frames, "ops", ops=ops, i=i, tid=tid)
                n, d = _words(buf, off + len_off), _words(buf, off + data_off)
                m = (n > idx) | (n < 0)
                buf, off, addr, frames = None, None, d[m] + idx * esize, frames[m]
            elif name in ("len", "cap"):
                if buf is None:
                    self.add(addr + op[1], 8, frames, "leaf")
                return
            elif name in ("const", "addr"):
                return
            elif name == "len_indirect":      # len(*p) of a channel/map: one word behind p
                if buf is None:
                    return self.add(addr, 8, frames, "ops", ops=ops, i=i, tid=tid)
                p = _words(buf, off)
                m = p != 0
                self.add(p[m] + op[1], op[2], frames[m], "leaf")     # op[2] > 0: an int's size
                return
            elif name == "assert":            # x.(T): T's runtime type, then its data
                _, rtype_off, type_off, itab_off, data_off, direct, _name = op
                if buf is None:
                    return self.add(addr, max(type_off, data_off) + 8, frames, "ops", ops=ops, i=i, tid=tid)
                if self.types_base is None:   # the reference can't check it either: nothing more read
                    return
                word = _words(buf, off + type_off)
                live = word != 0
                state = dict(ops=ops, i=i, tid=tid, want=self.types_base + rtype_off, dbuf=buf,
                             doff=off[live], daddr=addr[live])
                if itab_off >= 0:
                    return self.add(word[live] + itab_off, 8, frames[live], "assert", **state)
                return self._asserted(word[live], frames[live], state)
            elif name == "map_index":         # m[key]: the slot that holds key (swiss, one group)
                if buf is None:
                    return self.add(addr, 8, frames, "ops", ops=ops, i=i, tid=tid)
                m = self.prog.maps.get(op[1])
                p = _words(buf, off)
                live = p != 0                 # a nil map: "not present", nothing read
                if m is None or m.get("impl") == "hmap" or _indirect(m):
                    return self.mark(frames[live], "a map index on a map the program doesn't walk")
                return self.add(p[live], m["header"], frames[live], "mapidx_hdr", ops=ops, i=i, tid=tid)
            else:
                return self.mark(frames, f"the {name!r} op")
            i += 1
        if not len(frames):
            return
        depth = np.zeros(len(frames), np.int64)
        if buf is not None:
            return self.expand(tid, buf, off, frames, depth)
        shape = self.prog.shapes.get(tid)
        if shape and shape["need"]:
            self.add(addr, shape["need"], frames, "value", tid=tid, depth=depth)


def _table_segments(m: dict, w, off, p) -> dict[int, tuple[list, int]]:
    """The tables of directory maps just read, for both walks (the decoder's
    and m[k]'s): map walk id -> ([(groups address, groups)] in directory
    order, cut at the first table that could not be read, as the reference
    stops there; the row of the walk's first table)."""
    data, mask = w[off + m["table_data"]], w[off + m["table_mask"]]
    by_map: dict[int, list] = {}
    for i, (mid, order) in enumerate(zip(p["mid"].tolist(), p["order"].tolist())):
        by_map.setdefault(mid, []).append((order, i))
    out = {}
    for mid, tables in by_map.items():
        tables.sort()
        segs = []
        for want, (order, i) in enumerate(tables):
            if order != want:
                break
            segs.append((int(data[i]), int(mask[i]) + 1 if mask[i] >= 0 else 0))
        out[mid] = (segs, tables[0][1])
    return out


def _indirect(m: dict) -> bool:
    """A map whose slots hold pointers to its keys or elems (over 128 bytes):
    this executor leaves it to the reference reader (the eBPF probe walks it)."""
    return bool(m.get("key_indirect") or m.get("elem_indirect"))


def _joined(groups: list, field: int) -> np.ndarray:
    """One column (0 addrs, 1 sizes, 2 frames) of a level's pending groups, as one array."""
    return groups[0][field] if len(groups) == 1 else np.concatenate([g[field] for g in groups])


def _subset(g, m):
    addrs, sizes, frames, cont, payload = g
    n = len(frames)
    return (addrs[m], sizes[m], frames[m], cont,
            {k: (v[m] if k != "dbuf" and isinstance(v, np.ndarray) and v.shape[:1] == (n,) else v)
             for k, v in payload.items()})


# ---------------------------------------------------------------- scatter reads

def read_scatter(mem, addrs: np.ndarray, sizes: np.ndarray):
    """(buf, offsets, ok): range i is buf[offsets[i]:offsets[i]+sizes[i]], ok[i]
    False where it could not be read (its bytes are zero)."""
    fast = getattr(mem, "read_scatter", None)
    if fast is not None:
        return fast(addrs, sizes)
    sc = mem.read_into(addrs.tolist(), sizes.tolist())
    ok = np.ones(len(addrs), bool)
    if sc.failed:
        ok[list(sc.failed)] = False
    return (np.frombuffer(sc.buf, np.uint8) if len(sc.buf) else np.zeros(0, np.uint8),
            np.array(sc.offsets, np.int64), ok)


PAGE_SHIFT = 12
_PACK_BITS = 16          # coalesce sorts address << 16 | size when every size fits
_PACK = 1 << _PACK_BITS


def coalesce(addrs: np.ndarray, sizes: np.ndarray):
    """Merge ranges that share a page or sit on neighbouring pages into one read.

    The kernel pins the pages of every remote iovec separately, about a
    microsecond each, while copying a few hundred bytes more costs a few
    nanoseconds: the objects of one level sit side by side in the heap's
    spans (at 1,000 goroutines 6,000 reads fell on 58 pages), and shared
    ones (itabs, string literals) repeat. A merged range only covers pages
    that hold requested bytes, so the copy grows by at most a page for each
    page touched. Returns (starts, ends, group of each range)."""
    if len(sizes) and int(sizes.max()) < _PACK and int(addrs.max()) < (1 << (63 - _PACK_BITS)):
        key = (addrs << _PACK_BITS) | sizes            # one sort of (address, size) pairs
        # A level's reads come in runs of ascending addresses (frames in
        # goroutine order, objects allocated in order): then the run-merging
        # sort is several times faster; on shuffled addresses many times slower.
        runs = int(np.count_nonzero(key[1:] < key[:-1])) + 1
        key = np.sort(key, kind="stable" if runs * 64 < len(key) else "quicksort")
        a = key >> _PACK_BITS
        e = a + (key & (_PACK - 1))
    else:
        order = np.argsort(addrs)
        a = addrs[order]
        e = a + sizes[order]
    # A range starts a new read when it begins past the page after the one the
    # range before it ends in. (A long range that covers later short ones may
    # leave groups that overlap: harmless, they are read twice. No running
    # maximum: np.maximum.accumulate is a scalar loop, several times slower.)
    new = np.ones(len(a), bool)
    new[1:] = (a[1:] >> PAGE_SHIFT) > ((e[:-1] - 1) >> PAGE_SHIFT) + 1
    firsts = np.flatnonzero(new)
    starts = a[firsts]
    gid = np.searchsorted(starts, addrs, side="right") - 1
    return starts, np.maximum.reduceat(e, firsts), gid


def read_coalesced(mem, addrs: np.ndarray, sizes: np.ndarray):
    """read_scatter's result for (addrs, sizes), read as coalesced ranges;
    plus the ranges actually read, for Copies: (buf, starts, ok, read) where
    range i is buf[starts[i]:starts[i] + sizes[i]] and read is a list of
    (addrs, sizes, buf, offsets, ok, fails) chunks (Copies.add's arguments).

    A merged range that faults (a gap it spans is unmapped) is read again
    range by range, so a range fails exactly when it would have alone."""
    n = len(addrs)
    starts = np.zeros(n, np.int64)
    ok = np.zeros(n, bool)
    valid = addrs >= 0
    if not valid.all():
        idx = np.flatnonzero(valid)
        addrs, sizes = addrs[idx], sizes[idx]
    else:
        idx = None
    if not len(addrs):
        return np.zeros(0, np.uint8), starts, ok, []
    ma, me, gid = coalesce(addrs, sizes)
    ma, me = ma & ~7, (me + 7) & ~7       # whole words (never another page): aligned word views
    msz = me - ma
    buf, moffs, mok = read_scatter(mem, ma, msz)
    chunks = [(ma, msz, buf, moffs, mok, False)]
    st = moffs[gid] + (addrs - ma[gid])
    k = mok[gid]
    if not mok.all():
        again = np.flatnonzero(~k)
        b2, o2, ok2 = read_scatter(mem, addrs[again], sizes[again])
        chunks.append((addrs[again], sizes[again], b2, o2, ok2, True))
        st[again] = len(buf) + o2[:-1]
        k[again] = ok2
        buf = np.concatenate([buf, b2])
    if idx is None:
        return buf, st, k, chunks
    starts[idx], ok[idx] = st, k
    return buf, starts, ok, chunks
