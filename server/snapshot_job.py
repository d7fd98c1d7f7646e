"""`exray snapshot`: compile the spec for each target binary, snapshot, store.

Everything about a binary (pclntab, DWARF index, runtime layout, plan) is
loaded once per build id, so many processes of one service cost one load.
"""
from __future__ import annotations

import os
import sys
import time

from agent.errors import AgentError, ProcessNotFound
from agent.records import ProcessRecord
from agent.snapshot import SnapshotOptions, Target, snapshot_process
from probe_compiler.errors import BinaryError, DebugInfoMissing
from probe_compiler.gobinary import GoBinary
from probe_compiler.plan import compile_plan


def _exe_path(pid: int) -> str:
    if not os.path.exists(f"/proc/{pid}"):
        raise ProcessNotFound(f"no process with pid {pid}")
    # /proc/PID/exe opens the binary the process runs, even if the file was replaced or deleted.
    return f"/proc/{pid}/exe"


def load_target(exe: str, spec, cache: dict, budgets=None) -> Target:
    from probe_compiler.dwarf import DwarfInfo
    from probe_compiler.runtime_layout import read_runtime_layout

    binary = GoBinary.open(exe)
    if binary.build_id in cache:
        binary.close()
        return cache[binary.build_id]
    dwarf = layout = None
    try:
        dwarf = DwarfInfo.load(exe, binary.build_id)
        layout = read_runtime_layout(dwarf, binary.read_static)
    except DebugInfoMissing:
        from probe_compiler.stripped import reference_layout
        layout, note = reference_layout(binary)
        if note:
            print(f"note: {note}", file=sys.stderr)
    plan = compile_plan(binary, dwarf, spec, budgets, layout=layout)
    target = Target(binary, plan, layout, dwarf)
    cache[binary.build_id] = target
    return target


def snapshot_pids(pids: list[int], spec, opts: SnapshotOptions | None = None,
                  budgets=None) -> list[ProcessRecord]:
    """Snapshot each pid; a process that can't be snapshotted gets a record with its error.

    Spec errors (SpecError) are raised before any process is paused."""
    cache: dict = {}
    records = []
    for pid in pids:
        try:
            target = load_target(_exe_path(pid), spec, cache, budgets)
        except (AgentError, BinaryError) as e:
            records.append(ProcessRecord(pid=pid, host=os.uname().nodename, exe="", error=_why(pid, e),
                                         captured_at_ns=time.time_ns()))
            continue
        records.append(snapshot_process(pid, target, opts))
    return records


def _why(pid: int, e: Exception) -> str:
    return f"pid {pid}: {e}"


def run(pids: list[int], spec_path: str | None, out: str) -> int:
    from probe_compiler.spec import load_spec
    from server.store import FunctionTableDef, write_snapshot

    spec = load_spec(spec_path) if spec_path else None
    records = snapshot_pids(pids, spec)
    tables = [FunctionTableDef(f.symbol, f.table, [c.name for c in f.captures])
              for f in (spec.functions if spec else [])]
    write_snapshot(out, records, tables, spec_text=spec.text if spec else None)
    ok = 0
    for r in records:
        if r.error:
            print(f"error: {r.error}", file=sys.stderr)
            continue
        ok += 1
        pause = f"{r.pause_ns / 1e6:.2f} ms" if r.pause_ns is not None else "?"
        print(f"pid {r.pid}: {len(r.goroutines)} goroutines, paused {pause}")
        for w in r.warnings:
            print(f"  warning: {w}", file=sys.stderr)
    print(f"wrote {out}")
    return 0 if ok else 1
