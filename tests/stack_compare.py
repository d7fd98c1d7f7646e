"""Comparing a snapshot's stacks with Go's own traceback of the same process.

Shared by the stack tests: which parked states are stable in the states
program, and how Go prints what we hold (generic names, elided deep stacks).
"""
from __future__ import annotations

import re

# Parked states nothing in the states program ever wakes: Go prints the same
# stack for these however late it looks.
STABLE = {"chan receive", "chan send", "select", "sync.Mutex.Lock", "sync.RWMutex.RLock",
          "sync.RWMutex.Lock", "sync.WaitGroup.Wait", "sync.Cond.Wait", "sleep", "IO wait",
          "chan receive (nil chan)", "chan send (nil chan)", "select (no cases)",
          "GC sweep wait", "GC scavenge wait", "finalizer wait", "force gc (idle)", "cleanup wait"}

NAMED = ["main.blockedSend", "main.blockedRecv", "main.blockedSelect", "main.blockedMutex",
         "main.blockedRWMutexRLock", "main.blockedRWMutexLock", "main.blockedWaitGroup",
         "main.blockedCond", "main.blockedSleep", "main.blockedAccept"]


def go_name(name: str) -> str:
    """Go prints generic instances with their type arguments as [...]."""
    return re.sub(r"\[.*\]", "[...]", name)


def elide_like_go(frames, go):
    """Go prints a deep stack's first and last frames and elides the middle."""
    if not go.elided:
        return frames
    assert len(frames) == len(go.frames) + go.elided, "the elided count must match our depth"
    keep_tail = len(go.frames) - go.elided_at
    return frames[:go.elided_at] + frames[len(frames) - keep_tail:]


def assert_stacks_match(rec, level2, only=None) -> int:
    """Every goroutine parked in a STABLE state (per Go's dump) has Go's exact stack:
    functions, files, lines, inlining and pc offsets. Returns how many were compared."""
    checked = 0
    for g in rec.goroutines:
        go = level2.get(g.goid)
        if go is None or go.wait_reason not in STABLE:
            continue
        if only is not None and not only(g):
            continue
        assert g.wait_reason == go.wait_reason, f"goroutine {g.goid}"
        frames = elide_like_go(g.frames, go)
        ours = [(go_name(f.function), f.file, f.line, f.inlined) for f in frames]
        theirs = [(f.function, f.file, f.line, f.inlined) for f in go.frames]
        assert ours == theirs, f"goroutine {g.goid} [{go.wait_reason}]"
        for f, gf in zip(frames, go.frames):
            if gf.pc_offset is not None:
                assert f.pc - f.entry == gf.pc_offset, f"goroutine {g.goid} {f.function}"
        checked += 1
    return checked
