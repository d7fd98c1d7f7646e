"""The probe's ring-buffer records, parsed (pure: bytes in, data out).

Kinds (probe.bpf.c): K_THREAD, the registers of the thread that ran the
probe (from the signal's ucontext); K_G, a goroutine's header, the bytes of
its g and the words at its stack pointer; K_FRAMES, (saved bp, return
address) pairs of the frames of the goroutine at allgs index `gi`, in order;
K_COPY, bytes the captures copied at an address; K_BATCH, a runner's K_G,
K_FRAMES and K_COPY records one after another, each padded to 8 bytes.
`ProbeGoroutine.stack()` turns them into the sparse stack image the pcsp
unwinder (agent/unwind.py) walks: the words at sp, and at each frame
pointer fp the saved bp (at fp) and the return address (at fp + 8).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import AgentError

K_G, K_FRAMES, K_THREAD, K_MARK, K_COPY, K_BATCH = 1, 2, 3, 4, 5, 6
_COPY = struct.Struct("<IIQ")      # struct crec's header: kind, len, addr
START_SCHED, START_SYSCALL, START_REGS = 0, 1, 2

F_TOP, F_RANGE, F_READ, F_BUDGET, F_DROPPED, F_GREAD, F_FULL = 1, 2, 4, 8, 16, 32, 64
_WHY = {F_RANGE: "a frame pointer left the stack", F_READ: "a frame could not be read",
        F_BUDGET: "the frame budget ran out", F_GREAD: "the g could not be read"}

# struct rec_hdr
_HDR = struct.Struct("<IIQQQQIIIIII")
# uc_mcontext.gregs order (asm/sigcontext.h, amd64)
GREGS = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rdi", "rsi", "rbp", "rbx",
         "rdx", "rax", "rcx", "rsp", "rip", "eflags", "csgsfs", "err", "trapno", "oldmask", "cr2")


class RecordError(AgentError):
    """A record from the probe that does not parse."""


@dataclass
class ProbeGoroutine:
    gi: int
    gaddr: int
    pc: int
    sp: int
    bp: int
    start: int
    tid: int
    g: bytes
    top: bytes
    flags: int = 0
    pairs: list[tuple[int, int]] = field(default_factory=list)   # (saved bp, return address)

    def words(self) -> dict[int, int]:
        """Stack words the frame chain read, by address."""
        out, fp = {}, self.bp
        for saved, ret in self.pairs:
            out[fp], out[fp + 8] = saved, ret
            fp = saved
        return out

    def chain_error(self) -> str | None:
        for bit, why in _WHY.items():
            if self.flags & bit:
                return why
        return None


@dataclass
class ProbeOutput:
    # (tid, registers) of each thread that ran the probe, from its signal's ucontext
    threads: list[tuple[int, dict[str, int]]] = field(default_factory=list)
    goroutines: list[ProbeGoroutine] = field(default_factory=list)
    orphan_frames: int = 0     # frame records with no goroutine record (its was dropped)
    copies: list[tuple[int, bytes]] = field(default_factory=list)   # captures: (address, bytes copied)


def parse(records: list[bytes]) -> ProbeOutput:
    out = ProbeOutput()
    by_gi: dict[int, ProbeGoroutine] = {}
    for raw in _unbatched(records):
        if len(raw) == 8 and int.from_bytes(raw[:4], "little") == K_MARK:
            continue          # a run's end (older probes sent one per run)
        if int.from_bytes(raw[:4], "little") == K_COPY and len(raw) >= _COPY.size:
            _, n, addr = _COPY.unpack_from(raw)
            if n != len(raw) - _COPY.size:
                raise RecordError(f"a copy record at {addr:#x}: {n} bytes claimed, {len(raw) - _COPY.size} sent")
            out.copies.append((addr, raw[_COPY.size:]))
            continue
        if len(raw) < _HDR.size:
            raise RecordError(f"a probe record of {len(raw)} bytes is shorter than its header")
        kind, gi, gaddr, pc, sp, bp, start, tid, g_len, top_len, nframes, flags = _HDR.unpack_from(raw)
        body = memoryview(raw)[_HDR.size:]
        if kind == K_G:
            if g_len + top_len > len(body):
                raise RecordError(f"goroutine record {gi}: {g_len}+{top_len} bytes claimed, {len(body)} sent")
            g = ProbeGoroutine(gi, gaddr, pc, sp, bp, start, tid, bytes(body[:g_len]),
                               bytes(body[g_len:g_len + top_len]), flags)
            by_gi[gi] = g
            if not flags & F_GREAD:
                out.goroutines.append(g)
        elif kind == K_FRAMES:
            if 16 * nframes > len(body):
                raise RecordError(f"frame record {gi}: {nframes} frames claimed, {len(body)} bytes sent")
            g = by_gi.get(gi)
            if g is None:
                out.orphan_frames += 1
                continue
            w = struct.unpack_from(f"<{2 * nframes}Q", body)
            g.pairs.extend(zip(w[0::2], w[1::2]))
            g.flags |= flags
        elif kind == K_THREAD:
            regs = dict(zip(GREGS, struct.unpack_from(f"<{g_len // 8}Q", body))) if g_len else {}
            out.threads.append((tid, regs))
        else:
            raise RecordError(f"a probe record of unknown kind {kind}")
    return out


def _unbatched(records: list[bytes]):
    """The records, each K_BATCH's in its place."""
    for raw in records:
        if len(raw) >= 8 and int.from_bytes(raw[:4], "little") == K_BATCH:
            yield from _batch(raw)
        else:
            yield raw


def _batch(raw: bytes) -> list[bytes]:
    """The records of a K_BATCH record, in order."""
    used = int.from_bytes(raw[4:8], "little")
    if used > len(raw) - 8:
        raise RecordError(f"a batch of records claims {used} bytes, {len(raw) - 8} sent")
    out, off, end = [], 8, 8 + used
    while off < end:
        n = _length(raw, off, end)
        out.append(raw[off:off + n])
        off += (n + 7) & ~7
    return out


def _length(raw: bytes, off: int, end: int) -> int:
    """The length of the record at off in a batch (its kind and header say)."""
    kind = int.from_bytes(raw[off:off + 4], "little")
    if kind == K_COPY and off + _COPY.size <= end:
        n = _COPY.size + _COPY.unpack_from(raw, off)[1]
    elif kind in (K_G, K_FRAMES) and off + _HDR.size <= end:
        h = _HDR.unpack_from(raw, off)
        n = _HDR.size + (h[8] + h[9] if kind == K_G else 16 * h[10])
    else:
        raise RecordError(f"a batch of records has a record of kind {kind} at {off} that does not fit")
    if off + n > end:
        raise RecordError(f"a batch of records ends inside its record at {off} ({n} bytes, kind {kind})")
    return n
