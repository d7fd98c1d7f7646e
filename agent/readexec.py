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

from probe_compiler.readprog import ReadProgram

from .capture import Unavailable, locate_root, locate_spilled
from .errors import MemoryReadError

_R8 = np.arange(8, dtype=np.int64)
_BIG = np.int64(1 << 62)


# ---------------------------------------------------------------- copies

class Copies:
    """Every range the pause copied, by remote address; the decoder's only memory
    after the resume. A range that failed in the pause fails again with the
    reader's own message; a range never copied counts as a miss."""

    def __init__(self, pid: int):
        self.pid = pid
        self._chunks: list[tuple] = []        # (addrs, sizes, buf, offs, ok)
        self._recorded: list[tuple[int, bytes]] = []
        self._failed: list[tuple[int, int]] = []
        self.misses: list[tuple[int, int]] = []
        self._built = False

    # -- filled in the pause
    def add(self, addrs, sizes, buf, offs, ok) -> None:
        self._chunks.append((addrs, sizes, buf, offs, ok))
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
        for addrs, sizes, buf, offs, ok in self._chunks:
            starts.append(addrs[ok]); ends.append(addrs[ok] + sizes[ok])
            srcs.append((buf, offs[:-1][ok], sizes[ok]))
            bad = ~ok
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


def fp_walk(start_pc, start_bp, lo, size, soff, words_buf, capture_spans, stop_spans,
            top_spans, max_frames: int) -> Walk:
    """Walk the frame-pointer chain of every goroutine in its stack copy.

    Row k's copy is [lo[k], lo[k] + size[k]) at byte soff[k] of words_buf.
    Frame 0 is (start_pc, CFA start_bp + 16); each next frame's pc is the
    word at BP + 8 and its BP the word at BP. A row is sent to the fallback
    when its innermost pc is captured, when the chain passes a stop span
    (injected frames, SP-writing asm), leaves the copy, or ends (BP 0) at a
    frame that is no top frame (goexit, mstart)."""
    n = len(start_pc)
    buf = np.frombuffer(words_buf, np.uint8) if not isinstance(words_buf, np.ndarray) else words_buf
    ks, pcs, cfas, fb = [], [], [], set()
    rows = np.arange(n)
    pc, bp = start_pc.astype(np.int64), start_bp.astype(np.int64)
    first = True
    depth = 0
    while len(rows) and depth < max_frames:
        hit = in_spans(pc, capture_spans)
        if first:
            fb.update(rows[hit].tolist())
            hit[:] = False
            first = False
        stop = in_spans(pc, stop_spans)
        if stop.any():
            fb.update(rows[stop].tolist())
        if hit.any():
            ks.append(rows[hit]); pcs.append(pc[hit]); cfas.append(bp[hit] + 16)
        ended = ~stop & ((bp == 0) | (pc == 0))
        top = in_spans(pc, top_spans)
        if (ended & ~top).any():
            fb.update(rows[ended & ~top].tolist())
        go = ~stop & ~ended & ~top
        inside = (bp >= lo[rows]) & (bp + 16 <= lo[rows] + size[rows])
        left = go & ~inside
        if left.any():
            fb.update(rows[left].tolist())
        go &= inside
        rows, pc, bp = rows[go], pc[go], bp[go]
        if not len(rows):
            break
        at = soff[rows] + (bp - lo[rows])
        ret = _words(buf, at + 8)
        bp = _words(buf, at)
        pc = ret
        depth += 1
    if len(rows):
        fb.update(rows.tolist())
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64))
    return Walk(cat(ks), cat(pcs), cat(cfas), fb)


def _words(buf: np.ndarray, off: np.ndarray) -> np.ndarray:
    if not len(off):
        return np.zeros(0, np.int64)
    return buf[off[:, None] + _R8].view("<i8").ravel()


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
    the program can't copy it exactly; its goroutine goes to the fallback."""

    def __init__(self, prog: ReadProgram, mem, copies: Copies, n_frames: int, *,
                 types_base: int | None, known_rtypes, snapshot_left: int):
        self.prog, self.mem, self.copies = prog, mem, copies
        b = prog.budgets
        self.D, self.E, self.SB = b.depth, b.elements, b.string_bytes
        self.frame_cap, self.snap_left = b.frame_bytes, snapshot_left
        self.used = np.zeros(n_frames, np.int64)
        self.bad = np.zeros(n_frames, bool)
        self.why: dict[int, str] = {}
        self.types_base = types_base
        self.known = known_rtypes            # every rtype offset DWARF describes
        self.missing: set[int] = set()       # rtype offsets met without a shape yet
        self.pending: list = []
        self.levels = 0
        self.bytes = 0

    # -- scheduling

    def add(self, addrs, sizes, frames, cont, **payload) -> None:
        if len(frames):
            sizes = np.broadcast_to(np.asarray(sizes, np.int64), addrs.shape).copy()
            self.pending.append((addrs.astype(np.int64, copy=False), sizes, frames, cont, payload))

    def mark(self, frames, why: str) -> None:
        if len(frames):
            self.bad[frames] = True
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
        keep = []
        for g in groups:
            addrs, sizes, frames, cont, payload = g
            m = ~self.bad[frames] & (sizes > 0)
            if not m.all():
                g = _subset(g, m)
            if len(g[2]):
                keep.append(g)
        if not keep:
            return
        frames = np.concatenate([g[2] for g in keep])
        sizes = np.concatenate([g[1] for g in keep])
        np.add.at(self.used, frames, sizes)
        over = self.used > self.frame_cap
        if over.any():
            self.mark(np.flatnonzero(over & ~self.bad), "the frame's byte budget")
        total = int(sizes[~self.bad[frames]].sum())
        if total > self.snap_left:
            self.mark(frames, "the snapshot's byte budget")
            return
        keep = [k for k in (_subset(g, ~self.bad[g[2]]) for g in keep) if len(k[2])]
        if not keep:
            return
        addrs = np.concatenate([g[0] for g in keep])
        sizes = np.concatenate([g[1] for g in keep])
        buf, offs, ok = read_scatter(self.mem, addrs, sizes)
        self.copies.add(addrs, sizes, buf, offs, ok)
        self.snap_left -= int(sizes.sum())
        self.bytes += int(sizes.sum())
        self.levels += 1
        at = 0
        for addrs_g, sizes_g, frames_g, cont, payload in keep:
            n = len(frames_g)
            o, okg = offs[at:at + n], ok[at:at + n]
            at += n
            getattr(self, "_c_" + cont)(buf, o[okg], addrs_g[okg], frames_g[okg],
                                        {k: (v[okg] if isinstance(v, np.ndarray) and v.shape[:1] == (n,) else v)
                                         for k, v in payload.items()})

    # -- continuations after a level's read

    def _c_leaf(self, buf, off, addr, frames, p):
        pass

    def _c_value(self, buf, off, addr, frames, p):
        self.expand(p["tid"], buf, off, frames, p["depth"])

    def _c_elems(self, buf, off, addr, frames, p):
        tid, esize, cnt = p["tid"], p["esize"], p["cnt"]
        if not self.prog.shapes.get(tid, {}).get("slots"):
            return
        rep = np.repeat(np.arange(len(frames)), cnt)
        ramp = np.arange(len(rep)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        self.expand(tid, buf, off[rep] + ramp * esize, frames[rep], p["depth"][rep])

    def _c_ops(self, buf, off, addr, frames, p):
        self.run_ops(p["ops"], p["i"], p["tid"], buf, off, addr, frames)

    def _c_itab(self, buf, off, addr, frames, p):
        self.dyn(_words(buf, off), p["data"], p["dbuf"], p["doff"], frames, p["depth"])

    def _c_map_hdr(self, buf, off, addr, frames, p):
        m = self.prog.maps[p["tid"]]
        used, dp, dl = (_words(buf, off + m[k]) for k in ("used", "dir_ptr", "dir_len"))
        self.mark(frames[dl != 0], "a map with a table directory")
        one = (dl == 0) & (dp != 0)
        used = np.where(used < 0, _BIG, used)
        self.add(dp[one], m["group"], frames[one], "map_group", tid=p["tid"],
                 limit=np.minimum(used[one], self.E), depth=p["depth"][one])

    def _c_map_group(self, buf, off, addr, frames, p):
        m = self.prog.maps[p["tid"]]
        ctrl = buf[off[:, None] + m["ctrl"] + _R8]          # ctrl byte i of each group
        full = (ctrl & 0x80) == 0
        rank = np.cumsum(full, axis=1)
        take = full & (rank <= p["limit"][:, None])
        gi, si = np.nonzero(take)
        fr, dep = frames[gi], p["depth"][gi]
        self.expand(m["key"], buf, off[gi] + m["keys"] + si * m["key_stride"], fr, dep)
        self.expand(m["elem"], buf, off[gi] + m["elems"] + si * m["elem_stride"], fr, dep)

    # -- a value whose bytes are held

    def expand(self, tid, buf, off, frames, depth) -> None:
        shape = self.prog.shapes.get(tid)
        if shape is None or not len(frames):
            return
        D = self.D
        for s in shape["slots"]:
            kind = s[0]
            if kind == "str":
                p, n = _words(buf, off + s[1]), _words(buf, off + s[2])
                n = np.where(n < 0, _BIG, n)
                m = n > 0
                self.add(p[m], np.minimum(n[m], self.SB), frames[m], "leaf")
            elif kind == "ptr":
                p = _words(buf, off + s[1])
                m = (p != 0) & (depth < D)
                need = self.prog.shapes[s[2]]["need"]
                if need:
                    self.add(p[m], need, frames[m], "value", tid=s[2], depth=depth[m] + 1)
            elif kind == "slice":
                p, n = _words(buf, off + s[1]), _words(buf, off + s[2])
                n = np.where(n < 0, _BIG, n)
                cnt = np.minimum(n, self.E)
                m = (p != 0) & (depth < D) & (cnt * s[4] > 0)
                self.add(p[m], cnt[m] * s[4], frames[m], "elems", tid=s[3], esize=s[4],
                         cnt=cnt[m], depth=depth[m] + 1)
            elif kind == "map":
                p = _words(buf, off + s[1])
                m = (p != 0) & (depth < D)
                self.add(p[m], self.prog.maps[s[2]]["header"], frames[m], "map_hdr", tid=s[2],
                         depth=depth[m] + 1)
            elif kind == "iface":
                w = _words(buf, off + s[1])
                data = _words(buf, off + s[2])
                if s[3] >= 0:
                    m = w != 0
                    self.add(w[m] + s[3], 8, frames[m], "itab", data=data[m], dbuf=buf,
                             doff=off[m] + s[2], depth=depth[m])
                else:
                    self.dyn(w, data, buf, off + s[2], frames, depth)
            elif kind == "chan":
                p = _words(buf, off + s[1])
                m = p != 0
                self.add(p[m], s[2], frames[m], "leaf")
            elif kind == "func":
                p = _words(buf, off + s[1])
                m = p != 0
                self.add(p[m], 8, frames[m], "leaf")
            elif kind == "fallback":
                p = _words(buf, off + s[1])
                self.mark(frames[p != 0], s[2])

    def dyn(self, rtype, data, buf, doff, frames, depth) -> None:
        """An interface's dynamic value, given its runtime type words."""
        live = rtype != 0
        if not live.any() or self.types_base is None:
            return
        for r in np.unique(rtype[live]).tolist():
            m = rtype == r
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
            m &= depth < self.D
            if need:
                self.add(data[m], need, frames[m], "value", tid=tid, depth=depth[m] + 1)

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


def _subset(g, m):
    addrs, sizes, frames, cont, payload = g
    n = len(frames)
    return (addrs[m], sizes[m], frames[m], cont,
            {k: (v[m] if isinstance(v, np.ndarray) and v.shape[:1] == (n,) else v) for k, v in payload.items()})


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
