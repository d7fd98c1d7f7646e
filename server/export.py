"""`exray export`: a snapshot as a pprof goroutine profile or an HTML flame graph.

Both exports read the same thing: every process, and its goroutines with their
frames innermost first. System goroutines (the ones `exray goroutines` hides
without --all, and Go's own goroutine profile leaves out) are left out of both.
See docs/exports.md.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
from dataclasses import dataclass, field

from .store import reading


@dataclass(frozen=True)
class Frame:
    function: str
    file: str
    line: int
    pc: int
    inlined: bool   # inlined into the frame after it (which shares its pc)
    hidden: bool    # a runtime frame Go's default traceback hides


@dataclass
class Process:
    id: int
    pid: int
    exe: str
    host: str
    build_id: str
    captured_at: int | None


@dataclass
class Goroutine:
    process_id: int
    goid: int
    status: str
    wait_reason: str
    labels: dict[str, str]
    frames: list[Frame] = field(default_factory=list)   # innermost first


def load(db: sqlite3.Connection) -> tuple[list[Process], list[Goroutine]]:
    """Processes that were captured, and their non-system goroutines."""
    procs = [Process(i, pid, exe or "", host or "", build_id or "", at) for i, pid, exe, host, build_id, at
             in db.execute("SELECT id, pid, exe, host, build_id, captured_at FROM processes "
                           "WHERE error IS NULL ORDER BY id")]
    gors: dict[tuple[int, int], Goroutine] = {}
    for pid, goid, status, reason, labels in db.execute(
            "SELECT process_id, goid, status, wait_reason, labels FROM goroutines "
            "WHERE NOT is_system ORDER BY process_id, goid"):
        gors[pid, goid] = Goroutine(pid, goid, status or "", reason or "", _labels(labels))
    for pid, goid, *f in db.execute(
            "SELECT process_id, goid, function, file, line, pc, inlined, hidden FROM frames "
            "ORDER BY process_id, goid, depth"):
        g = gors.get((pid, goid))
        if g is not None:
            g.frames.append(Frame(f[0] or "?", f[1] or "?", f[2] or 0, f[3] or 0, bool(f[4]), bool(f[5])))
    return procs, list(gors.values())


def _labels(text: str | None) -> dict[str, str]:
    # pprof labels are strings; a snapshot stores them as a JSON object.
    if not text:
        return {}
    obj = json.loads(text)
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in obj.items()}


def state_of(g: Goroutine) -> str:
    """The bracketed state of a Go traceback: the wait reason when waiting."""
    return g.wait_reason or g.status or "unknown"


def cmd_export(args: argparse.Namespace) -> int:
    with reading(args.snapshot) as db:
        procs, gors = load(db)
    if args.format == "pprof":
        from . import pprof
        pprof.write(args.out, pprof.build(procs, gors, source=str(args.snapshot)))
        what = "goroutine profile"
    else:
        from . import flamegraph
        flamegraph.write(args.out, flamegraph.render(procs, gors, title=str(args.snapshot)))
        what = "flame graph"
    print(f"wrote {args.out}: {what} of {len(gors)} goroutine{'s' if len(gors) != 1 else ''} "
          f"in {len(procs)} process{'es' if len(procs) != 1 else ''}")
    return 0
