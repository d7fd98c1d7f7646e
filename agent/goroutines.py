"""Finds every live goroutine of a paused process and where its stack starts.

All offsets come from the binary's RuntimeLayout (read from DWARF); nothing
here knows a Go version. Reads are batched: one `read_many` for the g structs,
one for the Ms, one for the stacks.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .unwind import StackImage

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


def read_allgs(layout, mem) -> list[int]:
    """Addresses of every g in allgs (dead ones included: the runtime keeps them)."""
    n = struct.unpack("<Q", mem.read(layout.allglen_addr, 8))[0]
    if n == 0:
        return []
    arr = struct.unpack("<Q", mem.read(layout.allgs_addr, 8))[0]
    raw = mem.read(arr, 8 * n)
    return [a for a in struct.unpack(f"<{n}Q", raw) if a]


def read_gs(layout, mem, addrs: list[int]) -> list[RawG]:
    bufs = mem.read_many([(a, layout.g_size) for a in addrs])
    return [RawG(a, _fields(b, layout.g_offsets, _G_FIELDS)) for a, b in zip(addrs, bufs) if b]


def read_ms(layout, mem, addrs: set[int]) -> dict[int, dict[str, int]]:
    addrs = sorted(a for a in addrs if a)
    bufs = mem.read_many([(a, layout.m_size) for a in addrs])
    return {a: _fields(b, layout.m_offsets, _M_FIELDS) for a, b in zip(addrs, bufs) if b}


def status_of(layout, g: RawG) -> int:
    return g.f.get("atomicstatus", 0) & ~layout.gscan


def is_dead(layout, g: RawG) -> bool:
    return layout.status_names.get(status_of(layout, g), "") in ("dead", "deadextra", "idle")


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


def copy_stacks(mem, gs: list[RawG], starts: dict[int, GStart], max_bytes: int) -> dict[int, StackImage]:
    """Copy [sp, stack.hi) of each goroutine in one batched read.

    A stack deeper than max_bytes is copied up to that much; the unwinder then
    reads the rest word by word from the process.
    """
    reqs, keys = [], []
    for g in gs:
        st = starts[g.addr]
        hi = g.f["stack.hi"]
        lo = st.sp if g.f["stack.lo"] <= st.sp < hi else hi
        reqs.append((lo, min(hi - lo, max_bytes)))
        keys.append(g.addr)
    bufs = mem.read_many(reqs)
    read = mem.read
    return {k: StackImage(lo, b or b"", read) for k, (lo, _), b in zip(keys, reqs, bufs)}


def read_labels(layout, mem, gs: list[RawG], max_labels: int = 64, max_bytes: int = 256) -> dict[int, dict[str, str]]:
    """pprof labels of each goroutine that has any (g.labels -> runtime/pprof.labelMap).

    Only the slice form (Go >= 1.24) is read; older map-form labels come with
    the map decoder in a later version and are reported as absent."""
    lay = layout.labels_layout
    with_labels = [g for g in gs if g.f.get("labels")]
    if not lay or lay.get("kind") != "slice" or not with_labels:
        return {}
    heads = mem.read_many([(g.f["labels"] + lay["list_offset"], 16) for g in with_labels])
    out = {}
    for g, head in zip(with_labels, heads):
        if not head:
            continue
        arr, n = struct.unpack("<QQ", head)
        n = min(n, max_labels)
        raw = mem.read_many([(arr, n * lay["elem_size"])])[0] if n else b""
        if raw:
            out[g.addr] = _label_pairs(mem, raw, n, lay, max_bytes)
    return out


def _label_pairs(mem, raw: bytes, n: int, lay: dict, max_bytes: int) -> dict[str, str]:
    heads = []
    for i in range(n):
        base = i * lay["elem_size"]
        for off in (lay["key_offset"], lay["value_offset"]):
            p, ln = struct.unpack_from("<QQ", raw, base + off)
            heads.append((p, min(ln, max_bytes)))
    strs = mem.read_many([h if h[1] else (h[0], 0) for h in heads])
    texts = [(s or b"").decode("utf-8", "replace") if ln else "" for s, (_, ln) in zip(strs, heads)]
    return dict(zip(texts[0::2], texts[1::2]))
