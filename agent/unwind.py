"""Unwinds one goroutine's stack from a copy of its memory.

The primary method is Go's own: for each frame, the pclntab `pcsp` table says
how far SP is below the frame's entry SP, which gives the CFA and the slot of
the return address (runtime/traceback.go does exactly this, so leaf functions,
prologues and asynchronously preempted frames come out as Go prints them).
Frame pointers (CFA = BP + 16 on amd64) are the fallback where pcsp can't go
on: a pc with no pcsp entry or a function that writes SP arbitrarily.

Nothing here touches a process: stack words come from a `StackImage`, which
holds the bytes copied during the pause and falls back to a read function.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from probe_compiler.capture_limits import DEFAULTS as _LIMITS

from .errors import AgentError

PTR = 8
_U64 = struct.Struct("<Q")

FLAG_TOPFRAME = 1  # abi.FuncFlagTopFrame: goexit, mstart, ... end a stack
FLAG_SPWRITE = 2   # abi.FuncFlagSPWrite: SP changed arbitrarily; pcsp can't go past it

# Calls the runtime injects into a frame (signal-delivered panics, async
# preemption, debugger calls): the frame below them was interrupted, not
# calling, so its pc is looked up as is (Go's unwindTrap).
INJECTED = frozenset({"sigpanic", "asyncPreempt", "debugCallV2"})


class StackImage:
    """Words of a goroutine stack: the copied range first, then `read`."""

    __slots__ = ("lo", "data", "read")

    def __init__(self, lo: int, data: bytes, read: Callable[[int, int], bytes] | None = None):
        self.lo, self.data, self.read = lo, data, read

    def word(self, addr: int) -> int | None:
        off = addr - self.lo
        if 0 <= off <= len(self.data) - PTR:
            return _U64.unpack_from(self.data, off)[0]
        if self.read is None:
            return None
        try:
            return _U64.unpack(self.read(addr, PTR))[0]
        except AgentError:  # unreadable: the unwind stops and says so
            return None

    def bytes_at(self, addr: int, size: int) -> bytes | None:
        off = addr - self.lo
        if 0 <= off and off + size <= len(self.data):
            return self.data[off:off + size]
        if self.read is None:
            return None
        try:
            return self.read(addr, size)
        except AgentError:
            return None


@dataclass(frozen=True)
class PhysFrame:
    pc: int          # return address for outer frames; the interrupted pc for a trap frame
    sp: int
    cfa: int         # SP before the call pushed the return address (Go's frame.fp)
    fn: object       # pclntab.Func
    trap: bool       # pc is the faulting/interrupted instruction, not a return address

    @property
    def lookup_pc(self) -> int:
        """The pc to look lines and variables up at (Go's symPC)."""
        return self.pc if self.trap or self.pc <= self.fn.entry else self.pc - 1


@dataclass
class Unwound:
    frames: list[PhysFrame]
    error: str | None = None   # why the walk stopped before a top frame
    used_fp: bool = False      # frame pointers had to carry part of the walk


def unwind(pcln, pc: int, sp: int, bp: int, stack: StackImage, *, trap: bool = False,
           stack_hi: int | None = None, max_frames: int = _LIMITS.max_frames, bias: int = 0) -> Unwound:
    """Walk from (pc, sp, bp) as the process sees them. `bias` is where the
    process loaded the binary minus its link-time address (PIE): the frames'
    pcs are link-time, as the pclntab and DWARF speak."""
    out = Unwound([])
    pc -= bias
    while len(out.frames) < max_frames:
        fn = pcln.func_for_pc(pc)
        if fn is None:
            out.error = f"unknown pc {pc:#x}" if out.frames else f"pc {pc:#x} is in no Go function"
            return out
        cfa = _cfa(pcln, fn, pc, sp, bp, innermost=not out.frames)
        if cfa is None:
            out.error = f"no frame size for {fn.name} at pc {pc:#x}"
            return out
        out.frames.append(PhysFrame(pc, sp, cfa, fn, trap))
        if fn.flag & FLAG_TOPFRAME:
            return out
        if stack_hi is not None and cfa > stack_hi:
            out.error = f"frame of {fn.name} runs past the stack top"
            return out
        lr = stack.word(cfa - PTR)
        if not lr:
            if lr is None:
                out.error = f"stack unreadable at {cfa - PTR:#x}"
            return out
        # The caller's BP was saved just below the return address, if this frame pushed one.
        saved_bp = stack.word(cfa - 2 * PTR)
        bp = saved_bp if saved_bp is not None and bp == cfa - 2 * PTR else bp
        trap = fn.func_id in INJECTED
        pc, sp = lr - bias, cfa
    out.error = f"stack deeper than {max_frames} frames: cut"
    return out


def _cfa(pcln, fn, pc: int, sp: int, bp: int, innermost: bool) -> int | None:
    """CFA by pcsp; frame pointer only when pcsp has nothing to say."""
    spwrite = fn.flag & FLAG_SPWRITE and not innermost
    delta = None if spwrite else pcln.sp_delta(fn, pc)
    if delta is not None:
        return sp + delta + PTR
    if bp and bp >= sp:
        return bp + 2 * PTR
    return None
