"""Takes the snapshot of one process: pause, copy, resume, then make sense of it.

During the pause we only read: registers, allgs, the g and m structs, every
live goroutine's stack, and (when the plan captures anything) the values in
the captured frames, which needs the unwind to happen in the pause. Without
captures the unwind and all symbolization run after the process is resumed.
"""
from __future__ import annotations

import copy
import os
import socket
import time
from dataclasses import dataclass
from functools import partial

from probe_compiler.decode import ByteBudget, decode_value
from probe_compiler.plan import ProbePlan

from . import goroutines as gr
from .capture import OpEnv, Unavailable, apply_ops, locate_root, locate_spilled, unvouched_note
from .errors import AgentError
from .loadbias import load_bias
from .memory import ProcessMemory
from .ptrace import PausedProcess
from .records import CaptureRecord, GoroutineRecord, ProcessRecord
from .symbolize import logical_frames
from .unwind import StackImage, Unwound, unwind


@dataclass
class SnapshotOptions:
    deadline_s: float = 2.0           # hard bound on the pause
    # Captures in the pause stop once it has used this share of deadline_s: the
    # rest of the captured frames get rows saying so, and the snapshot completes
    # (stacks come from the copies) instead of failing at the deadline.
    capture_share: float = 0.5
    stack_copy_bytes: int = 256 << 10  # per goroutine; deeper stacks are read word by word
    max_frames: int = 4096


@dataclass
class _G:
    raw: gr.RawG
    start: gr.GStart
    stack: StackImage
    labels: dict | None = None
    unwound: Unwound | None = None
    captures: list | None = None


class Target:
    """Everything about a binary that a snapshot needs, loaded once per build id."""

    def __init__(self, binary, plan: ProbePlan, layout, dwarf=None):
        self.binary, self.plan, self.layout, self.dwarf = binary, plan, layout, dwarf
        self.pcln = binary.pclntab
        self.by_symbol = plan.function_by_symbol()
        # Physical function entry -> (function plan, inlined instance) for every
        # place a captured function was inlined into it.
        self.inlined_by_caller: dict[int, list] = {}
        for f in plan.functions:
            for inst in f.inlined:
                self.inlined_by_caller.setdefault(inst.caller_entry, []).append((f, inst))
        self._capture_pcs: frozenset[int] | None | bool = False
        self.read_per_g: dict[int, int] = {}   # pid -> bytes the pause read per g, last time
        # Where this process loaded the binary, minus where it was linked (PIE):
        # pcs read from the process are moved back by it before any pclntab or
        # DWARF lookup, and the binary's addresses forward before any read.
        self.bias = 0

    def at_bias(self, bias: int) -> "Target":
        """This target as loaded `bias` bytes from its link-time addresses;
        shares everything built from the binary, rebases the layout."""
        if bias == self.bias:
            return self
        t = copy.copy(self)
        t.bias, t._capture_pcs = bias, False
        t.layout = self.layout.rebased(bias - self.bias) if self.layout is not None else None
        return t

    # Past this many pcs a set costs more than unwinding every goroutine would.
    MAX_CAPTURE_PCS = 1 << 20

    def capture_pcs(self) -> frozenset[int] | None:
        """Every pc inside a captured function or an inlined instance of one,
        as the process sees it (None when too many to keep). An instance's
        range gets one more pc: a call that ends it returns just past it."""
        if self._capture_pcs is False:
            spans = [(f.entry, f.end) for f in self.plan.functions if f.end > f.entry]
            spans += [(lo, hi + 1) for f in self.plan.functions for inst in f.inlined
                      for lo, hi in inst.ranges]
            total = sum(e - s for s, e in spans)
            self._capture_pcs = (None if total > self.MAX_CAPTURE_PCS
                                 else frozenset(pc + self.bias for s, e in spans for pc in range(s, e)))
        return self._capture_pcs


def snapshot_process(pid: int, target: Target, opts: SnapshotOptions | None = None) -> ProcessRecord:
    opts = opts or SnapshotOptions()
    b = target.binary
    rec = ProcessRecord(pid=pid, host=socket.gethostname(), exe=_exe(pid), build_id=b.build_id,
                        go_version=b.go_version, main_module=b.main_module,
                        vcs_revision=b.vcs_revision, captured_at_ns=time.time_ns())
    rec.warnings.extend(target.plan.warnings)
    if target.layout is None:
        rec.error = (f"{b.path} ({b.build_description}) has no DWARF for the runtime layout "
                     "and no reference build matched; can't find goroutines")
        return rec
    try:
        target = target.at_bias(load_bias(pid, b))
        rec.load_bias = target.bias
        gs, now_mono = _paused_read(pid, target, opts, rec)
    except AgentError as e:
        rec.error = f"{e} ({b.build_description})"
        return rec
    for g in gs:
        rec.goroutines.append(_goroutine_record(g, target, opts, now_mono))
    rec.goroutines.sort(key=lambda g: g.goid)
    return rec


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _paused_read(pid, target, opts, rec) -> tuple[list[_G], int]:
    """Copy what the snapshot needs while the process is stopped; parse later.

    The pause is bulk reads plus column-wise Python: allgs, every g, the Ms of
    goroutines on a thread, every live stack, labels. Goroutines are unwound
    in the pause only when a captured function may be on their stack (their
    captures need live memory); every other stack is unwound from its copy
    after the process runs again."""
    layout = target.layout
    mem = ProcessMemory(pid)
    n_before = _reserve(mem, target, pid)
    with PausedProcess(pid, deadline_s=opts.deadline_s) as paused:
        now_mono = time.monotonic_ns()
        table = gr.GTable(layout, mem, gr.read_allgs(layout, mem))
        live = table.live_rows()
        paused.check_deadline()
        m_col = table.column("m")
        ms = gr.read_ms(layout, mem, {m_col[i] for i in live})
        sps = gr.start_sps(layout, table, live, ms, paused.threads)
        addrs, sizes = gr.stack_ranges(table, live, sps, opts.stack_copy_bytes)
        stacks = mem.read_into(addrs, sizes)
        lab_col = table.column("labels")
        labels = gr.read_labels(layout, mem, [table.raw(i, ("labels",)) for i in live if lab_col[i]])
        paused.check_deadline()
        early, unread = {}, []
        if target.by_symbol:
            early, unread = _capture_in_pause(target, opts, mem, paused, rec, table, live, ms, addrs, stacks)
        threads = dict(paused.threads)
    rec.pause_ns = paused.pause_ns
    target.read_per_g[pid] = mem.bytes_read // max(1, len(table.addrs), n_before)
    gs = []
    for k, i in enumerate(live):
        g = early.get(k) or _make_g(layout, table, i, ms, threads, addrs[k], stacks.get(k), None)
        if k in unread:
            _unwind(g, target, opts)
            g.captures = _capture(g, target, partial(_unread_frame, reason=unread[k]))
        g.labels = labels.get(table.addrs[i])
        # Stack bytes were copied; past this point words outside the copy would be
        # read from a running process, so cut the unwinder off from memory.
        g.stack.read = None
        gs.append(g)
    return gs, now_mono


def _reserve(mem, target, pid) -> int:
    """Fault in, before the pause, the memory the pause will read into.

    Sized from allglen (read unpaused: a plain load of a global) and what a
    goroutine cost last time; reads beyond it just allocate as usual."""
    try:
        n = gr.read_allglen(target.layout, mem)
    except AgentError:
        return 0      # the pause will report what is wrong
    per_g = target.read_per_g.get(pid, 2048)
    mem.reserve(min((n + n // 8 + 64) * per_g * 5 // 4, 256 << 20))
    return n


def _make_g(layout, table, i, ms, threads, lo, data, read) -> _G:
    raw = table.raw(i)
    return _G(raw, gr.start_of(layout, raw, ms, threads), StackImage(lo, data or b"", read))


def _capture_in_pause(target, opts, mem, paused, rec, table, live, ms, addrs, stacks
                      ) -> tuple[dict[int, _G], dict[int, str]]:
    """Unwind and capture, still paused, the goroutines a captured function may
    be on: ({row: goroutine}, {row: why its captures were not read})."""
    budget = ByteBudget(target.plan.budgets.snapshot_bytes)
    out, unread = {}, {}
    candidates = _capture_candidates(target, table, live, stacks)
    limit = opts.deadline_s * opts.capture_share
    for n, k in enumerate(candidates):
        if paused.elapsed_s() > limit:
            stop = (f"captures stopped when the pause reached {paused.elapsed_s() * 1e3:.0f} ms "
                    f"({opts.capture_share:.0%} of the {opts.deadline_s * 1e3:.0f} ms deadline)")
            unread = dict.fromkeys(candidates[n:], f"not read: {stop}; capture less or raise the deadline")
            rec.warnings.append(f"{stop}: the captures of {len(unread)} of {len(candidates)} goroutines "
                                "were not read (their rows say so); capture less or raise the deadline")
            break
        g = _make_g(target.layout, table, live[k], ms, paused.threads, addrs[k], stacks.get(k), mem.read)
        _unwind(g, target, opts)
        g.captures = _capture(g, target, partial(_capture_frame, target=target, mem=mem,
                                                 snapshot_budget=budget))
        out[k] = g
        paused.check_deadline()
    rec.truncated = budget.refused
    return out, unread


def _capture_candidates(target, table, live, stacks) -> list[int]:
    """Live rows whose stack copy holds a pc of a captured function, or that start in one.

    A captured frame below the innermost one has its return address on the
    stack, so a goroutine with no such word has no captured frame. Stale words
    only add candidates (unwound for nothing), never lose one."""
    pcs = target.capture_pcs()
    buf = stacks.buf
    if pcs is None or len(buf) % 8 or any(o % 8 for o in stacks.offsets):
        return list(range(len(live)))
    words, off = memoryview(buf).cast("Q"), stacks.offsets
    sched_pc, sys_pc = table.column("sched.pc"), table.column("syscallpc")
    running = set(table.rows_in_status(live, ("running",)))
    return [k for k, i in enumerate(live)
            if sched_pc[i] in pcs or sys_pc[i] in pcs or k in stacks.failed
            or not pcs.isdisjoint(words[off[k] // 8:off[k + 1] // 8])
            or i in running]


def _unwind(g: _G, target: Target, opts: SnapshotOptions) -> None:
    if g.unwound is None:
        s = g.start
        g.unwound = unwind(target.pcln, s.pc, s.sp, s.bp, g.stack, trap=s.trap,
                           stack_hi=g.raw.f.get("stack.hi"), max_frames=opts.max_frames,
                           bias=target.bias)


def _capture(g: _G, target: Target, capture_frame) -> list[tuple[int, int, CaptureRecord]]:
    """(physical frame index, inline depth, record) for every captured frame.

    Inline depth 0 is the physical frame itself; n > 0 is the logical frame
    n inlined frames inside it, where the plan says a captured function was
    inlined (its variables live in the physical frame: same CFA; registers
    only in the innermost physical frame, as for any frame)."""
    out = []
    for depth, pf in enumerate(g.unwound.frames):
        regs = g.start.regs if depth == 0 else None
        fplan = target.by_symbol.get(pf.fn.name)
        if fplan is not None:
            out.append((depth, 0, capture_frame(fplan, pf, depth, g, regs, None)))
        for fplan, inst in target.inlined_by_caller.get(pf.fn.entry, ()):
            if inst.covers(pf.lookup_pc):
                out.append((depth, inst.inline_depth, capture_frame(fplan, pf, depth, g, regs, inst)))
    return out


def _record(fplan, depth) -> CaptureRecord:
    return CaptureRecord(function=fplan.spec_name, depth=depth, values={}, raw={},
                         instance=fplan.symbol if fplan.spec_symbol else None)


def _unread_frame(fplan, pf, depth, g, regs, inst, *, reason: str) -> CaptureRecord:
    """The row of a captured frame whose values were not read: every column NULL, with why."""
    rec = _record(fplan, depth)
    for cap in fplan.captures:
        rec.values[cap.column] = rec.raw[cap.column] = None
        rec.errors[cap.column] = reason
    return rec


def _capture_frame(fplan, pf, depth, g, regs, inst, *, target, mem, snapshot_budget) -> CaptureRecord:
    plan = target.plan
    rec = _record(fplan, depth)
    frame_budget = ByteBudget(plan.budgets.frame_bytes)
    roots = fplan.roots if inst is None else inst.roots
    for cap in fplan.captures:
        try:
            if fplan.unavailable:
                raise Unavailable(fplan.unavailable)
            locs = roots[cap.root]
            if inst is not None and not locs:
                raise Unavailable(f"the compiler left no location for {cap.root} where it inlined "
                                  f"{fplan.symbol} into {inst.caller}")
            pc = _var_pc(pf) if inst is None else _inlined_var_pc(locs, pf)
            spills = fplan.spills if inst is None else None
            try:
                loc = locate_root(locs, pc, pf, g.stack, regs, mem.read, target.bias,
                                  plan.types[fplan.root_types[cap.root]].size)
                note = unvouched_note(spills, cap.root, pf, locs, pc)
                if note:
                    rec.errors[cap.column] = note
            except Unavailable as why:   # DWARF gave up: an argument may be in its spill slot
                loc, rec.errors[cap.column] = locate_spilled(spills, cap.root, pf, g.stack, why)
            v = apply_ops(loc, cap.ops if inst is None else inst.ops[cap.column], mem.read,
                          OpEnv(plan.types, getattr(target.layout, "moduledata_types_addr", None),
                                _rtype(target), frame_budget))
            plain, raw = decode_value(plan.types, cap.type_id, v.data, v.addr, mem.read, plan.budgets,
                                      frame_budget=frame_budget, snapshot_budget=snapshot_budget,
                                      func_name=_func_name(target), type_by_rtype=_rtype(target))
            rec.values[cap.column], rec.raw[cap.column] = plain, raw
        except Unavailable as e:
            rec.values[cap.column] = rec.raw[cap.column] = None
            rec.errors[cap.column] = str(e)
        except Exception as e:  # memory vanished, a bad op: the row records it, the snapshot goes on
            rec.values[cap.column] = rec.raw[cap.column] = None
            rec.errors[cap.column] = f"{type(e).__name__}: {e}"
    return rec


def _var_pc(pf) -> int:
    """The pc to look variable locations up at.

    Lines are looked up at the call (return address - 1), but variables of an
    outer frame at the return address itself: Go's ABI clobbers every register
    across a call, so what the caller still needs after it has been spilled,
    and the location list says where from the return address on. At pc - 1
    it often still names the (long clobbered) argument register."""
    return pf.pc


def _inlined_var_pc(locs, pf) -> int:
    """As _var_pc, except where an inlined body ends with the call: then the
    return address is past the variable's last range and its lookup pc
    (the call itself) is where the location list still speaks of it."""
    pc = _var_pc(pf)
    if any(loc.lo <= pc < loc.hi for loc in locs):
        return pc
    return pf.lookup_pc


def _func_name(target):
    def name(pc: int):
        fn = target.pcln.func_for_pc(pc - target.bias)
        return fn.name if fn else None
    return name


def _rtype(target):
    """Runtime type address -> GoType, adding the type to the plan's table.

    The user-space reader resolves dynamic types through the lazy DWARF index;
    the eBPF executor will need them listed in the plan instead."""
    base = getattr(target.layout, "moduledata_types_addr", None)

    def by_rtype(addr: int):
        if target.dwarf is None or not base:
            return None
        t = target.dwarf.type_by_runtime_type(addr - base)
        if t is not None and t.id not in target.plan.types:
            for tid, tt in target.dwarf.type_table([t.id]).types.items():
                target.plan.types.types.setdefault(tid, tt)
        return t
    return by_rtype


def _goroutine_record(g: _G, target: Target, opts, now_mono: int) -> GoroutineRecord:
    layout, pcln, f = target.layout, target.pcln, g.raw.f
    _unwind(g, target, opts)
    status = layout.status_names.get(gr.status_of(layout, g.raw), "unknown")
    wr = f.get("waitreason", 0)
    since = f.get("waitsince", 0)
    # Go prints no creator for goroutine 1: runtime.main is started by the runtime itself.
    created = (_created_by(pcln, f.get("gopc", 0) - target.bias) if f["goid"] != 1 and f.get("gopc")
               else (None, None, None))
    start_fn = pcln.func_for_pc(f.get("startpc", 0) - target.bias)
    rec = GoroutineRecord(
        goid=f["goid"], status=status,
        wait_reason=layout.wait_reasons.get(wr, "") if status == "waiting" and wr else "",
        wait_since_ns=(now_mono - since) if since and status in ("waiting", "syscall") else None,
        created_by=created[0], created_by_file=created[1], created_by_line=created[2],
        parent_goid=f.get("parentGoid") or None, labels=g.labels or {},
        is_system=bool(start_fn and start_fn.name.startswith("runtime.") and start_fn.name != "runtime.main"),
        thread_id=g.start.thread_id, error=g.unwound.error)
    logical = logical_frames(pcln, g.unwound.frames, target.bias)
    rec.frames = [frame for frame, _ in logical]
    rec.captures = _place_captures(logical, g.captures or [])
    return rec


def _place_captures(logical, captures) -> list[CaptureRecord]:
    """Give each capture the depth of its logical frame in `frames`.

    A physical frame's own logical frame is the last (outermost) of its
    group; an inlined instance's is `inline_depth` frames inside it. The
    plan's DWARF and the pclntab inline tree should agree on the function
    there; if they don't, the frame of that function in the group is used,
    and without one the capture is dropped rather than put on a wrong row."""
    groups: dict[int, list] = {}
    for frame, phys_index in logical:
        groups.setdefault(phys_index, []).append(frame)
    out = []
    for phys_index, inline_depth, cap in captures:
        group = groups.get(phys_index)
        if not group:
            continue
        k = len(group) - 1 - inline_depth
        frame = group[k] if k >= 0 else None
        function = cap.instance or cap.function
        if frame is None or frame.function != function or frame.inlined != (inline_depth > 0):
            frame = next((f for f in group if f.function == function
                          and f.inlined == (inline_depth > 0)), None)
        if frame is not None:
            cap.depth = frame.depth
            out.append(cap)
    out.sort(key=lambda c: c.depth)
    return out


def _created_by(pcln, gopc: int):
    fn = pcln.func_for_pc(gopc) if gopc > 0 else None
    if fn is None:
        return None, None, None
    file, line = pcln.file_line(fn, gopc - 1 if gopc > fn.entry else gopc)
    return fn.name, file, line
