"""`exray snapshot`: compile the spec for each target binary, snapshot, store.

Everything about a binary (pclntab, DWARF index, runtime layout, plan) is
loaded once per build id, so many processes of one service cost one load.
One spec may span binaries (a client and its server): each binary's plan
holds the spec functions it has, and the spec is wrong only when no binary of
the snapshot has a function, or a target that expects one lacks it
(probe_compiler.plan.absent_errors), checked before any process is paused.
"""
from __future__ import annotations

import os
import sys
import time

from agent.errors import AgentError, ProcessNotFound
from agent.records import ProcessRecord
from agent.snapshot import SnapshotOptions, Target, snapshot_process, snapshot_processes
from probe_compiler.capture_limits import DEFAULTS as LIMITS
from probe_compiler.debuginfo import find_dwarf
from probe_compiler.errors import BinaryError, DebugInfoMissing
from probe_compiler.gobinary import GoBinary
from probe_compiler.plan import BinaryFunctions, absent_errors, compile_plan


def _exe_path(pid: int) -> str:
    if not os.path.exists(f"/proc/{pid}"):
        raise ProcessNotFound(f"no process with pid {pid}")
    # /proc/PID/exe opens the binary the process runs, even if the file was replaced or deleted.
    return f"/proc/{pid}/exe"


def load_target(exe: str, spec, cache: dict, budgets=None) -> Target:
    binary = GoBinary.open(exe)
    if binary.build_id in cache:
        binary.close()
        return cache[binary.build_id]
    dwarf, layout, missing = _dwarf_and_layout(exe, binary)
    limits = getattr(spec, "capture_limits", None) or LIMITS      # the spec's `limits:`
    plan = compile_plan(binary, dwarf, spec, budgets or limits.budgets(), layout=layout, absent_ok=True)
    if missing and spec is not None and spec.functions:
        plan.warnings.append(missing)      # where Ex-Ray looked for DWARF, and what to do
    target = Target(binary, plan, layout, dwarf)
    target.limits = limits
    cache[binary.build_id] = target
    return target


def _dwarf_and_layout(exe: str, binary: GoBinary):
    """(DwarfInfo or None, runtime layout, why there is no DWARF or None).

    The DWARF may be in a separate debug file; static data always comes from
    the binary itself (a debug file's code and data are NOBITS). Without
    DWARF the layout comes from a reference build, and stacks still work."""
    from probe_compiler.dwarf import DwarfInfo
    from probe_compiler.runtime_layout import read_runtime_layout

    source, dwarf = find_dwarf(exe, binary), None
    try:
        dwarf = DwarfInfo.load(exe, binary.build_id, source=source)
        layout = read_runtime_layout(dwarf, binary.read_static)
    except DebugInfoMissing as e:
        from probe_compiler.stripped import reference_layout
        layout, note = reference_layout(binary)
        if note:
            print(f"note: {note}", file=sys.stderr)
        return dwarf, layout, str(e)
    if source.step != "binary":
        print(f"note: {exe}: {source.describe()}", file=sys.stderr)
    return dwarf, layout, None


def load_targets(pids: list[int], spec, cache: dict, budgets=None) -> dict[int, Target | ProcessRecord]:
    """pid -> its Target, or the error record of a process whose binary can't be read.

    Raises the first SpecError of the spec against these processes' binaries
    taken together (check_spans), before anything is paused. A caller that
    snapshots the processes one at a time (to report progress) loads them
    all here first, then calls agent.snapshot.snapshot_process per Target."""
    loaded: dict[int, Target | ProcessRecord] = {}
    for pid in pids:
        try:
            loaded[pid] = load_target(_exe_path(pid), spec, cache, budgets)
        except (AgentError, BinaryError) as e:
            loaded[pid] = ProcessRecord(pid=pid, host=os.uname().nodename, exe="", error=_why(pid, e),
                                        captured_at_ns=time.time_ns())
    errors = check_spans(spec, {pid: t for pid, t in loaded.items() if isinstance(t, Target)})
    if errors:
        raise errors[0]
    return loaded


def check_spans(spec, targets: dict[int, Target]) -> list:
    """The spec's functions against the binaries of these processes, together:
    a function is missing only when none has it, or when a target expecting it
    (`targets: - functions:`) stands for a binary that lacks it."""
    if spec is None or not spec.functions or not targets:
        return []
    # One entry per binary file: processes of one build under two names are
    # two binaries to the user (and to `targets: - exe:`).
    by_file: dict[tuple[str, str], tuple[Target, list[int]]] = {}
    for pid, t in targets.items():
        by_file.setdefault((t.plan.build_id, _real_exe(pid)), (t, []))[1].append(pid)
    binaries = []
    for (_, exe), (t, pids) in by_file.items():
        pid_text = ", ".join(map(str, pids))
        binaries.append(BinaryFunctions(f"{exe} (pid{'s' if len(pids) > 1 else ''} {pid_text})",
                                        os.path.basename(exe), t.plan.absent, tuple(pids)))
    return absent_errors(spec, binaries)


def _real_exe(pid: int) -> str:
    """The binary's path as the process started it (/proc/PID/exe when unreadable)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return f"/proc/{pid}/exe"


def snapshot_pids(pids: list[int], spec, opts: SnapshotOptions | None = None,
                  budgets=None, cache: dict | None = None) -> list[ProcessRecord]:
    """Snapshot each pid; a process that can't be snapshotted gets a record with its error.

    The spec is compiled against every pid's binary first, and its errors
    (SpecError) are raised before any process is paused: a function only some
    of the binaries have is no error (see check_spans), so give all the
    processes of one snapshot in one call. Pass the same `cache` (build id ->
    Target) to later calls with the same spec to skip loading binaries again."""
    cache = {} if cache is None else cache
    if budgets is None and opts is not None and opts.limits is not None:
        budgets = opts.limits.budgets()
    loaded = load_targets(pids, spec, cache, budgets)
    # Every process paused at one instant (all stopped, then read, then resumed);
    # a pid given twice is taken again after the others.
    batch = list(dict.fromkeys(p for p in pids if not isinstance(loaded[p], ProcessRecord)))
    together = dict(zip(batch, snapshot_processes([(p, loaded[p]) for p in batch], opts)))
    out = []
    for pid in pids:
        if isinstance(loaded[pid], ProcessRecord):
            out.append(loaded[pid])
        else:
            out.append(together.pop(pid, None) or snapshot_process(pid, loaded[pid], opts))
    return out


def _why(pid: int, e: Exception) -> str:
    return f"pid {pid}: {e}"


def pids_of_targets(spec) -> list[int]:
    """The local processes the spec's `targets:` name (exe base names and pids).

    An exe target matches every process whose /proc/PID/exe has that base name
    (deleted binaries too: the kernel appends " (deleted)"). Targets with
    `agent:` are on other machines and are left out: snapshots of them go
    through the agents (server/fleet.py: `exray snapshot` routes there, and
    so does the editor's snapshot command)."""
    from server.errors import NoTargets
    if not spec or not spec.targets:
        raise NoTargets("nothing to snapshot: give --pid PID, or list `targets:` in the spec")
    local = [t for t in spec.targets if not t.agent]
    if not local:
        t, agents = spec.targets[0], ", ".join(sorted({t.agent for t in spec.targets}))
        raise NoTargets(f"{t.path}:{t.line}:{t.column}: the targets are on agents ({agents}), none on this "
                        "machine: snapshot them through the agents (`exray snapshot` without --pid, or the "
                        "editor's snapshot command), or give local pids with --pid")
    pids = [t.pid for t in local if t.pid]
    names = {t.exe for t in local if t.exe}
    if names:
        pids += [pid for pid, exe in _processes() if os.path.basename(exe).removesuffix(" (deleted)") in names]
    found = sorted(set(pids))
    if not found:
        raise NoTargets(f"no running process matches the targets in {spec.path} "
                        f"({', '.join(sorted(names)) or 'pids'})")
    return found


def _processes():
    me = os.getpid()
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != me:
            try:
                yield int(d), os.readlink(f"/proc/{d}/exe")
            except OSError:       # kernel threads, processes that just exited
                continue


def default_out(spec_path: str | None) -> str:
    """.exray/snapshots/<UTC time>.sqlite next to the spec (the editor keeps them there too);
    the folders private and git-ignored (server.snapdirs)."""
    from server.snapdirs import ensure_snapshot_dir
    base = os.path.dirname(os.path.abspath(spec_path)) if spec_path else os.getcwd()
    d = str(ensure_snapshot_dir(os.path.join(base, ".exray", "snapshots")))
    return os.path.join(d, time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid()}.sqlite")


def run(pids: list[int], spec_path: str | None, out: str | None, executor: str | None = None,
        limits: dict | None = None) -> int:
    """`limits`: bounds given on the command line (CaptureLimits field ->
    value), over the spec's `limits:`; checked against the ceilings."""
    from probe_compiler.spec import load_spec

    spec = load_spec(spec_path) if spec_path else None
    pids = pids or pids_of_targets(spec)
    base = getattr(spec, "capture_limits", None) or LIMITS
    opts = SnapshotOptions(executor=executor, limits=base.with_(**(limits or {})).checked())
    records = snapshot_pids(pids, spec, opts)
    out = out or default_out(spec_path)
    problems = write(out, records, spec)
    ok = 0
    for r in records:
        if r.error:
            print(f"error: {r.error}", file=sys.stderr)
            continue
        ok += 1
        pause = f"{r.pause_ns / 1e6:.2f} ms" if r.pause_ns is not None else "?"
        skew = (f" (started {r.pause_skew_ns / 1e6:.3f} ms after the first)"
                if len(records) > 1 and r.pause_skew_ns is not None else "")
        print(f"pid {r.pid}: {len(r.goroutines)} goroutines, paused {pause}{skew}")
        for w in r.warnings:
            print(f"  warning: {w}", file=sys.stderr)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    print(f"wrote {out}")
    return 0 if ok else 1


def write(out: str, records: list[ProcessRecord], spec) -> list:
    """The snapshot file, with the spec's extra columns, reports and links materialized."""
    from server.reports import materialize
    from server.store import FunctionTableDef, open_snapshot, write_snapshot

    from server.snapdirs import ensure_snapshot_dir
    tables = [FunctionTableDef(f.symbol, f.table, [c.name for c in f.captures])
              for f in (spec.functions if spec else [])]
    ensure_snapshot_dir(os.path.dirname(os.path.abspath(out)))   # -o into a new folder: 0700, git-ignored
    write_snapshot(out, records, tables, spec_text=spec.text if spec else None)
    if not spec:
        return []
    db = open_snapshot(out, readonly=False)
    try:
        return materialize(db, spec)
    finally:
        db.close()
