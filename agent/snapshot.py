"""Takes the snapshot of one process: pause, copy, resume, then make sense of it.

During the pause we only read: registers, allgs, the g and m structs, every
live goroutine's stack, and (when the plan captures anything) the values in
the captured frames, which needs the unwind to happen in the pause. Without
captures the unwind and all symbolization run after the process is resumed.
"""
from __future__ import annotations

import copy
import gc
import os
import socket
import time
from dataclasses import dataclass, field
from contextlib import ExitStack
from functools import partial

from probe_compiler.capture_limits import DEFAULTS as LIMITS, CaptureLimits
from probe_compiler.decode import ByteBudget, decode_value
from probe_compiler.plan import ProbePlan

from . import goroutines as gr
from .capture import OpEnv, Unavailable, apply_ops, locate_root, locate_spilled, unvouched_note
from .errors import AgentError
from .loadbias import load_bias
from .memory import ProcessMemory
from .ptrace import PausedProcess
from .records import CaptureRecord, GoroutineRecord, ProcessRecord
from .symbolize import goroutine_record
from .unwind import StackImage, Unwound, unwind


@dataclass(init=False)
class SnapshotOptions:
    """How one snapshot runs. Every bound is in `limits`, one CaptureLimits
    (probe_compiler/capture_limits.py: each field says why it exists), which
    the CLI's flags and the spec's `limits:` set; deadline_s, capture_share,
    stack_copy_bytes and max_frames read and write it. None: the limits of
    the spec the targets were compiled from (Target.limits), else DEFAULTS."""
    limits: CaptureLimits | None
    # Who reads captured values: "program" copies bytes in the pause as the read
    # program says and decodes them after the resume (docs/read-program.md);
    # "reference" reads and decodes in the pause; "compare" runs both in one
    # pause and raises CaptureMismatch where their rows differ (tests). The
    # environment's EXRAY_CAPTURE_EXECUTOR sets the default, so a whole test
    # suite can run in "compare".
    capture_executor: str
    # Who walks the stacks and reads the captures: "ptrace" (this module),
    # "ebpf" (agent/ebpf: the probe in the kernel) or "auto" (eBPF where the
    # kernel and privileges allow, else ptrace, saying why). EXRAY_EXECUTOR
    # sets the default (the CLI's and the editor's is auto).
    executor: str

    def __init__(self, deadline_s: float | None = None, capture_share: float | None = None,
                 stack_copy_bytes: int | None = None, max_frames: int | None = None, *,
                 limits: CaptureLimits | None = None, capture_executor: str | None = None,
                 executor: str | None = None):
        self.limits = limits
        for name, v in (("deadline_s", deadline_s), ("capture_share", capture_share),
                        ("stack_copy_bytes", stack_copy_bytes), ("max_frames", max_frames)):
            if v is not None:
                setattr(self, name, v)
        self.capture_executor = capture_executor or os.environ.get("EXRAY_CAPTURE_EXECUTOR", "program")
        self.executor = executor or os.environ.get("EXRAY_EXECUTOR", "ptrace")

    @property
    def deadline_s(self) -> float:
        return (self.limits or LIMITS).deadline_ms / 1e3

    @deadline_s.setter
    def deadline_s(self, v: float) -> None:
        self.limits = (self.limits or LIMITS).with_(deadline_ms=v * 1e3)

    @property
    def capture_share(self) -> float:
        return (self.limits or LIMITS).capture_share

    @capture_share.setter
    def capture_share(self, v: float) -> None:
        self.limits = (self.limits or LIMITS).with_(capture_share=v)

    @property
    def stack_copy_bytes(self) -> int:
        return (self.limits or LIMITS).stack_copy_bytes

    @stack_copy_bytes.setter
    def stack_copy_bytes(self, v: int) -> None:
        self.limits = (self.limits or LIMITS).with_(stack_copy_bytes=v)

    @property
    def max_frames(self) -> int:
        return (self.limits or LIMITS).max_frames

    @max_frames.setter
    def max_frames(self, v: int) -> None:
        self.limits = (self.limits or LIMITS).with_(max_frames=v)


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
        # The bounds of the spec this target was compiled from (its `limits:`);
        # a snapshot's options without limits of their own use these.
        self.limits = LIMITS
        # Built before a pause and shared by every at_bias copy: "program" (the
        # read program), "spans" (pc span tables), "recipes" (root_recipe by
        # function, instance, pc and root), "phys" (pc -> captured instances).
        self.shared: dict = {}

    def at_bias(self, bias: int) -> "Target":
        """This target as loaded `bias` bytes from its link-time addresses;
        shares everything built from the binary, rebases the layout."""
        if bias == self.bias:
            return self
        t = copy.copy(self)
        t.bias, t._capture_pcs = bias, False
        t.layout = self.layout.rebased(bias - self.bias) if self.layout is not None else None
        return t

    def capture_pcs(self, max_pcs: int = LIMITS.max_capture_pcs) -> frozenset[int] | None:
        """Every pc inside a captured function or an inlined instance of one,
        as the process sees it (None when more than max_pcs: past that a set
        costs more than unwinding every goroutine would). An instance's
        range gets one more pc: a call that ends it returns just past it."""
        if self._capture_pcs is False:
            spans = [(f.entry, f.end) for f in self.plan.functions if f.end > f.entry]
            spans += [(lo, hi + 1) for f in self.plan.functions for inst in f.inlined
                      for lo, hi in inst.ranges]
            total = sum(e - s for s, e in spans)
            self._capture_pcs = (None if total > max_pcs
                                 else frozenset(pc + self.bias for s, e in spans for pc in range(s, e)))
        return self._capture_pcs


class CaptureMismatch(AssertionError):
    """capture_executor="compare": the read program's rows differ from the reference's."""


def snapshot_process(pid: int, target: Target, opts: SnapshotOptions | None = None, *,
                     mem=None, pause=None) -> ProcessRecord:
    """Pause one process, copy, resume, decode. `mem` (a Memory) and `pause` (a
    context manager like PausedProcess) default to the real process's; tests
    pass fakes, as Delve's stack programs take readMemory."""
    return snapshot_processes([(pid, target)], opts, mems={pid: mem} if mem else None,
                              pauses={pid: pause} if pause else None)[0]


def snapshot_processes(targets: list[tuple[int, Target]], opts: SnapshotOptions | None = None, *,
                       mems: dict | None = None, pauses: dict | None = None) -> list[ProcessRecord]:
    """One snapshot of several processes at one instant: every process is
    paused first, then each is read, then all are resumed. Each record keeps
    its pause start (CLOCK_MONOTONIC ns) and its distance from the earliest."""
    opts = opts or SnapshotOptions()
    if opts.limits is None:
        from dataclasses import replace
        opts = replace(opts, limits=targets[0][1].limits if targets else LIMITS)
    if opts.executor != "ptrace" and not (mems or pauses):
        from dataclasses import replace
        from .ebpf.executor import snapshot_processes as by_executor
        return by_executor(targets, opts, partial(snapshot_processes, opts=replace(opts, executor="ptrace")))
    jobs = [_Job(pid, target, opts, (mems or {}).get(pid), (pauses or {}).get(pid))
            for pid, target in targets]
    live = [j for j in jobs if j.prepare()]
    # No cyclic garbage collection while a process is stopped: a full
    # collection over a loaded DWARF index takes longer than the pause.
    gc_on = gc.isenabled()
    gc.disable()
    try:
        _pause_and_read(live)
    finally:
        if gc_on:
            gc.enable()
    for j in live:
        j.finish()
    return with_skews([j.rec for j in jobs])


def with_skews(recs: list[ProcessRecord]) -> list[ProcessRecord]:
    """recs, each paused one with its pause start's distance from the earliest
    (processes.pause_skew_ns); both executors' snapshots of several processes."""
    first = min((r.pause_start_ns for r in recs if r.pause_start_ns), default=0)
    for r in recs:
        if r.pause_start_ns:
            r.pause_skew_ns = r.pause_start_ns - first
    return recs


def new_record(pid: int, target) -> ProcessRecord:
    """The record a snapshot of pid fills, with what the binary says of itself
    and the plan's warnings (both executors start from it)."""
    b = target.binary
    rec = ProcessRecord(pid=pid, host=socket.gethostname(), exe=_exe(pid), build_id=b.build_id,
                        go_version=b.go_version, main_module=b.main_module,
                        vcs_revision=b.vcs_revision, captured_at_ns=time.time_ns())
    rec.warnings.extend(target.plan.warnings)
    return rec


def no_layout(binary) -> str:
    """The error of a target whose runtime layout is unknown (both executors)."""
    return (f"{binary.path} ({binary.build_description}) has no DWARF for the runtime layout "
            "and no reference build matched; can't find goroutines")


def _pause_and_read(live: list) -> None:
    """Pause every job's process, then read each, then resume all. Every
    process's threads are interrupted back to back before any stop is waited
    for, so their pauses start together (processes.pause_skew_ns)."""
    with ExitStack() as stack:
        for j in list(live):
            interrupt = getattr(j.pause, "interrupt", None)
            if interrupt is None:
                continue
            try:
                interrupt()
            except AgentError as e:
                j.fail(e)
                live.remove(j)
                continue
            stack.callback(j.pause._release)      # if its __enter__ never runs; else a no-op
        entered = []
        for j in live:
            try:
                j.paused = stack.enter_context(_Guard(j, j.pause))
                entered.append(j)
            except AgentError as e:
                j.fail(e)
        for j in entered:
            j.read_in_pause()


class _Guard:
    """Enters a job's pause; an AgentError inside the block (a deadline, the
    process gone) ends that job with its error and lets the others go on."""

    def __init__(self, job, pause):
        self.job, self.pause = job, pause

    def __enter__(self):
        return self.pause.__enter__()

    def __exit__(self, et, e, tb):
        try:
            self.pause.__exit__(et, e, tb)
        except AgentError as err:
            self.job.fail(err)
        self.job.rec.pause_ns = getattr(self.pause, "pause_ns", 0)
        self.job.rec.pause_start_ns = getattr(self.pause, "paused_at_ns", 0) or None
        return False


class _Job:
    """One process of a snapshot, through its phases: prepare (unpaused),
    read_in_pause, finish (after the resume)."""

    def __init__(self, pid, target, opts, mem, pause):
        self.pid, self.target, self.opts = pid, target, opts
        self.mem, self.pause, self.paused = mem, pause, None
        self.state = None
        self.rec = new_record(pid, target)

    def fail(self, e: AgentError) -> None:
        if self.rec.error is None:
            self.rec.error = f"{e} ({self.target.binary.build_description})"
        self.state = None

    def prepare(self) -> bool:
        if self.target.layout is None:
            self.rec.error = no_layout(self.target.binary)
            return False
        try:
            self.target = self.target.at_bias(self.mem_bias())
            self.rec.load_bias = self.target.bias
            self.mem = self.mem or ProcessMemory(self.pid)
            self.n_before = _reserve(self.mem, self.target, self.pid, self.opts.limits.reserve_bytes)
            if self.target.by_symbol and self.opts.capture_executor != "reference":
                _prepare_program(self.target)
        except AgentError as e:
            self.fail(e)
            return False
        self.pause = self.pause or PausedProcess(self.pid, deadline_s=self.opts.deadline_s)
        return True

    def mem_bias(self) -> int:
        return load_bias(self.pid, self.target.binary)

    def read_in_pause(self) -> None:
        try:
            self.state = _read_in_pause(self.pid, self.target, self.opts, self.rec, self.mem, self.paused)
        except AgentError as e:
            self.fail(e)

    def finish(self) -> None:
        if self.state is None:
            return
        target = self.target
        target.read_per_g[self.pid] = self.mem.bytes_read // max(1, self.state["n_gs"], self.n_before)
        gs, now_mono = _after_resume(self.state, target, self.opts, self.rec)
        for g in gs:
            self.rec.goroutines.append(_goroutine_record(g, target, self.opts, now_mono))
        self.rec.goroutines.sort(key=lambda g: g.goid)
        if self.state.get("mismatches"):
            raise CaptureMismatch("\n".join(self.state["mismatches"][:20]))


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _read_in_pause(pid, target, opts, rec, mem, paused) -> dict:
    """Copy what the snapshot needs while the process is stopped; parse later.

    The pause is bulk reads plus column-wise work: allgs, every g, the Ms of
    goroutines on a thread, every live stack, labels, and the captures: with
    the read program, the bytes it names, level by level (docs/read-program.md);
    with the reference reader, goroutines a captured function may be on are
    unwound and their values read and decoded here."""
    import numpy as np
    layout = target.layout
    now_mono = time.monotonic_ns()
    table = gr.GTable(layout, mem, gr.read_allgs(layout, mem))
    live = table.live_rows()
    paused.check_deadline()
    live_a = np.array(live, np.int64)
    ms = gr.read_ms(layout, mem, set(np.unique(table.array("m")[live_a]).tolist()))
    sps = gr.start_sps(layout, table, live, ms, paused.threads)
    addrs, sizes = gr.stack_ranges(table, live, sps, opts.stack_copy_bytes)
    stacks = mem.read_into(addrs, sizes)
    labeled = live_a[table.array("labels")[live_a] != 0].tolist()
    labels = gr.read_labels(layout, mem, [table.raw(i, ("labels",)) for i in labeled],
                            opts.limits.max_labels, opts.limits.label_bytes)
    paused.check_deadline()
    st = {"now_mono": now_mono, "table": table, "live": live, "ms": ms, "addrs": addrs,
          "stacks": stacks, "labels": labels, "early": {}, "unread": {}, "n_gs": len(table.addrs),
          "program": None, "mismatches": []}
    if target.by_symbol:
        budget = ByteBudget(target.plan.budgets.snapshot_bytes)
        st["budget"] = budget
        if opts.capture_executor == "reference":
            st["early"], st["unread"] = _capture_in_pause(target, opts, mem, paused, rec, table, live,
                                                          ms, addrs, stacks, budget)
        else:
            st["program"] = _program_in_pause(target, opts, mem, paused, rec, table, live, ms,
                                              addrs, stacks, budget)
            st["early"], st["unread"] = st["program"]["early"], st["program"]["unread"]
            if opts.capture_executor == "compare":
                st["reference"] = _capture_in_pause(target, opts, mem, paused, rec, table, live, ms,
                                                    addrs, stacks, ByteBudget(budget.limit))[0]
    st["threads"] = dict(paused.threads)
    return st


def _after_resume(st, target, opts, rec) -> tuple[list[_G], int]:
    layout, table, live, ms, threads = target.layout, st["table"], st["live"], st["ms"], st["threads"]
    early, unread, stacks, addrs = st["early"], st["unread"], st["stacks"], st["addrs"]
    prog = st["program"]
    gs = []
    for k, i in enumerate(live):
        g = early.get(k) or _make_g(layout, table, i, ms, threads, addrs[k], stacks.get(k), None)
        # Stack bytes were copied; past this point words outside the copy would be
        # read from a running process, so cut the unwinder off from memory.
        g.stack.read = None
        if k in unread:
            _unwind(g, target, opts)
            g.captures = _capture(g, target, partial(_unread_frame, reason=unread[k]))
        elif prog is not None and k not in early:
            _unwind(g, target, opts)
            g.captures = _capture(g, target, partial(_program_frame, k=k, prog=prog, target=target,
                                                     snapshot_budget=st["budget"]))
        g.labels = st["labels"].get(table.addrs[i])
        gs.append(g)
    if prog is not None:
        _learn_types(target, prog)
        if prog["copies"].misses:
            rec.warnings.append(f"read program: {len(prog['copies'].misses)} reads after the resume "
                                "were not in the pause's copies (their values say so)")
        if "reference" in st:
            st["mismatches"] = _compare(gs, st["reference"])
        rec.truncated = rec.truncated or st["budget"].refused
    return gs, st["now_mono"]


def _reserve(mem, target, pid, cap: int = LIMITS.reserve_bytes) -> int:
    """Fault in, before the pause, the memory the pause will read into.

    Sized from allglen (read unpaused: a plain load of a global) and what a
    goroutine cost last time; reads beyond it just allocate as usual."""
    try:
        n = gr.read_allglen(target.layout, mem)
    except AgentError:
        return 0      # the pause will report what is wrong
    per_g = target.read_per_g.get(pid, 2048)
    mem.reserve(min((n + n // 8 + 64) * per_g * 5 // 4, cap))
    return n


def _make_g(layout, table, i, ms, threads, lo, data, read) -> _G:
    raw = table.raw(i)
    return _G(raw, gr.start_of(layout, raw, ms, threads), StackImage(lo, data or b"", read))


def _capture_in_pause(target, opts, mem, paused, rec, table, live, ms, addrs, stacks, budget,
                      rows: list[int] | None = None,
                      note_truncated: bool = True) -> tuple[dict[int, _G], dict[int, str]]:
    """Unwind and capture, still paused, the goroutines a captured function may
    be on (or `rows`), reading `mem` live: ({row: goroutine}, {row: why its
    captures were not read})."""
    out, unread = {}, {}
    candidates = _capture_candidates(target, table, live, stacks, opts.limits) if rows is None else rows
    limit = opts.deadline_s * opts.capture_share
    for n, k in enumerate(candidates):
        if paused.elapsed_s() > limit:
            unread = dict.fromkeys(candidates[n:], _stopped(opts, paused.elapsed_s(), rec, len(candidates) - n,
                                                            len(candidates)))
            break
        g = _make_g(target.layout, table, live[k], ms, paused.threads, addrs[k], stacks.get(k), mem.read)
        _unwind(g, target, opts)
        g.captures = _capture(g, target, partial(_capture_frame, target=target, mem=mem,
                                                 snapshot_budget=budget))
        out[k] = g
        paused.check_deadline()
    if note_truncated:
        rec.truncated = rec.truncated or budget.refused
    return out, unread


def _stopped(opts, elapsed_s: float, rec, n_unread: int, n_all: int) -> str:
    """The reason on rows not read when the captures' share of the deadline ran
    out (at elapsed_s into the pause); the record's warning says how many."""
    stop = _stop(opts, elapsed_s)
    rec.warnings.append(f"{stop}: the captures of {n_unread} of {n_all} goroutines "
                        "were not read (their rows say so); capture less or raise the deadline")
    return stop_reason(opts, elapsed_s)


def stop_reason(opts, elapsed_s: float) -> str:
    return f"not read: {_stop(opts, elapsed_s)}; capture less or raise the deadline"


def _stop(opts, elapsed_s: float) -> str:
    return (f"captures stopped when the pause reached {elapsed_s * 1e3:.0f} ms "
            f"({opts.capture_share:.0%} of the {opts.deadline_s * 1e3:.0f} ms deadline)")


# ---------------------------------------------------------------- the read program

# Frames the frame-pointer walk can't see through: injected calls (their
# caller was interrupted, maybe before it pushed BP) and SP-writing asm.
_STOP_IDS = {"sigpanic", "asyncPreempt", "debugCallV2"}
# A binary with up to this many runtime types gets every one shaped before its
# first pause (about 0.1 s per thousand); a bigger one learns the dynamic types
# its snapshots meet, and a frame that meets a new one is read the reference way.
PREBUILD_RTYPES = 20_000


def _prepare_program(target) -> None:
    """Before the pause: the read program and the pc span tables (once per build and spec)."""
    sh = target.shared
    if "program" not in sh:
        from probe_compiler.readprog import compile_read_program
        known = _known_rtypes(target)
        sh["known_rtypes"] = known
        sh["program"] = compile_read_program(target.plan)
        sh["recipes"] = {}
        if len(known) <= PREBUILD_RTYPES:
            _learn_types(target, {"missing": set(known)})
    if "spans" not in sh:
        plan = target.plan
        cap = [(f.entry, f.end) for f in plan.functions if f.end > f.entry]
        cap += [(lo, hi + 1) for f in plan.functions for inst in f.inlined for lo, hi in inst.ranges]
        stop, top = [], []
        for fn in target.pcln.funcs():
            if fn.func_id in _STOP_IDS or fn.is_spwrite:
                stop.append((fn.entry, fn.end))
            if fn.is_topframe:
                top.append((fn.entry, fn.end))
        sh["spans"] = (cap, stop, top)
    key = ("tables", target.bias)
    if key not in sh:
        from .readexec import label_table, span_table
        tables = tuple(span_table([(lo + target.bias, hi + target.bias) for lo, hi in spans])
                       for spans in sh["spans"])
        sh[key] = tables + (label_table(*tables),)


def _program_in_pause(target, opts, mem, paused, rec, table, live, ms, addrs, stacks, budget) -> dict:
    """Find the captured frames by frame pointers in the stack copies and copy
    what the read program names, level by level; goroutines it can't vouch
    for are read the reference way (recorded, so they decode from copies too)."""
    import numpy as np
    from .readexec import Copies, RecordingMemory, Run, fp_walk

    sh, bias, plan = target.shared, target.bias, target.plan
    cap_t, stop_t, top_t, labels = sh[("tables", bias)]
    copies = Copies(target_pid(mem))
    n = len(live)
    live_a = np.array(live, np.int64)
    col = lambda name: table.array(name)[live_a] if n else np.zeros(0, np.int64)
    sys_sp, sys_pc, sys_bp = col("syscallsp"), col("syscallpc"), col("syscallbp")
    pc0 = np.where(sys_sp != 0, sys_pc, col("sched.pc"))
    bp0 = np.where(sys_sp != 0, sys_bp, col("sched.bp"))
    lo = np.array(addrs, np.int64)
    offs = np.array(stacks.offsets, np.int64)
    soff, size = offs[:-1], offs[1:] - offs[:-1]
    sbuf = np.frombuffer(stacks.buf, np.uint8) if len(stacks.buf) else np.zeros(8, np.uint8)
    running = table.rows_in_status(live, ("running",))
    on_thread = np.flatnonzero(np.isin(live_a, running)) if running else np.zeros(0, np.int64)
    # on a thread g.sched is stale: the reference reader unwinds those from the
    # thread's registers, when their copy holds a captured pc at all
    pc0[on_thread] = 0
    walk = fp_walk(pc0, bp0, lo, size, soff, sbuf, cap_t, stop_t, top_t, opts.max_frames, labels)
    fallback = (set(walk.fallback) - set(on_thread.tolist())) | set(stacks.failed)
    if len(on_thread):
        starts = {k: gr.start_of(target.layout, table.raw(live[k], gr.START_FIELDS), ms, paused.threads).pc
                  for k in on_thread.tolist()}
        fallback |= _may_capture(starts, labels, sbuf, soff, size)

    # Captured frames: one per (hit, instance captured at its pc).
    fk, fcfa, groups = [], [], []
    pcs_u, inv = np.unique(walk.pc, return_inverse=True) if len(walk.pc) else (np.zeros(0, np.int64), None)
    nf = 0
    for u, pc in enumerate(pcs_u.tolist()):
        insts = _captured_at(target, pc)
        if not insts:
            continue
        idx = np.flatnonzero(inv == u) if len(pcs_u) > 1 else np.arange(len(walk.pc))
        for fplan, inst in insts:
            fk.append(walk.k[idx]); fcfa.append(walk.cfa[idx])
            groups.append((pc, fplan, inst, np.arange(nf, nf + len(idx))))
            nf += len(idx)
    cat = lambda xs: np.concatenate(xs) if len(xs) > 1 else xs[0] if xs else np.zeros(0, np.int64)
    fk, fcfa = cat(fk), cat(fcfa)
    run = Run(sh["program"], mem, copies, nf, types_base=getattr(target.layout, "moduledata_types_addr", None),
              known_rtypes=sh["known_rtypes"], snapshot_left=budget.remaining)
    # The snapshot's byte budget is spent in goroutine order, as the reference
    # reads. Frames decoded after the resume and fallback frames read now
    # interleave in that order, so both get their bytes only when it is known
    # that nothing is refused: the program's bytes (an upper bound of what
    # their decode takes) plus the fallback's fit. Otherwise every captured
    # goroutine is read here, in order, the reference's own way.
    for pc, fplan, inst, frames in groups:
        _roots_column(target, run, fplan, inst, pc - bias, frames, fk, fcfa, lo, soff, size, sbuf)
    limit = opts.deadline_s * opts.capture_share
    done = run.run_levels(lambda: paused.elapsed_s() > limit)
    if run.any_bad:
        fallback |= set(fk[run.bad].tolist())
    out = {"copies": copies, "fk": fk, "fcfa": fcfa, "bad": run.bad, "missing": run.missing,
           "levels": run.levels, "bytes": run.bytes, "frames": len(fk), "fallback": len(fallback),
           "why": run.why}
    early, unread = {}, {}
    if not done:
        ks = set(fk.tolist())
        reason = _stopped(opts, paused.elapsed_s(), rec, len(ks), len(ks))
        unread = dict.fromkeys(ks - fallback, reason)
    program_bytes = int(run.used[~run.bad].sum()) if done else 0
    recording = RecordingMemory(mem, copies)
    if fallback and not run.out_of_snapshot:
        fb_budget = ByteBudget(budget.remaining - program_bytes)
        early, more = _capture_in_pause(target, opts, recording, paused, rec, table, live, ms, addrs,
                                        stacks, fb_budget, rows=sorted(fallback), note_truncated=False)
        unread.update(more)
        budget.used += fb_budget.used      # the frames decoded after the resume get the rest
    if run.out_of_snapshot or (fallback and fb_budget.refused):
        # the budget runs out mid-snapshot: the reference's order, frame by frame
        rows = sorted(set(fk.tolist()) | fallback)
        fresh = ByteBudget(budget.limit)
        early, unread = _capture_in_pause(target, opts, recording, paused, rec, table, live, ms, addrs,
                                          stacks, fresh, rows=rows)
        budget.used, budget.refused = fresh.used, fresh.refused
        out["in_order"] = True
    out["early"], out["unread"] = early, unread
    return out


def _may_capture(start_pcs: dict[int, int], labels, sbuf, soff, size) -> set[int]:
    """The rows (row -> innermost pc) whose innermost pc is captured or whose
    stack copy holds a word that is a captured pc: a captured frame below the
    innermost has its return address there. Rows whose copy is unaligned are kept."""
    import numpy as np
    from .readexec import CAPTURED
    bounds, lab_of = labels
    out = set()
    for k, pc in start_pcs.items():
        a, n = int(soff[k]), int(size[k])
        if a % 8 or n % 8:
            out.add(k)
            continue
        words = np.append(sbuf[a:a + n].view("<i8"), pc)
        if (lab_of[np.searchsorted(bounds, words, side="right")] & CAPTURED).any():
            out.add(k)
    return out


def target_pid(mem) -> int:
    return getattr(mem, "pid", 0)


def _captured_at(target, pc: int) -> list:
    """(function plan, instance or None) captured in a physical frame whose
    return address is `pc` (runtime), as _capture would find them."""
    phys = target.shared.setdefault(("phys", target.bias), {})
    got = phys.get(pc)
    if got is None:
        fn = target.pcln.func_for_pc(pc - target.bias)
        got = []
        if fn is not None:
            f = target.by_symbol.get(fn.name)
            if f is not None:
                got.append((f, None))
            lpc = pc - target.bias
            lookup = lpc - 1 if lpc > fn.entry else lpc
            for f, inst in target.inlined_by_caller.get(fn.entry, ()):
                if inst.covers(lookup):
                    got.append((f, inst))
        phys[pc] = got
    return got


def _roots_column(target, run, fplan, inst, lpc, frames, fk, fcfa, lo, soff, size, sbuf):
    """Start every capture of these frames (same function, instance and pc) at its root."""
    import numpy as np
    if fplan.unavailable:
        return
    k, cfa = fk[frames], fcfa[frames]
    for cap in fplan.captures:
        r = recipe_at(target, fplan, inst, cap, lpc)
        if r is None:
            continue
        pieces = r[1]
        ops = cap.ops if inst is None else inst.ops[cap.column]
        if len(pieces) == 1 and pieces[0][1] == "cfa":
            psize, _, _, off = pieces[0]
            addr = cfa + off
            inside = (addr >= lo[k]) & (addr + psize <= lo[k] + size[k])
            run.mark(frames[~inside], "a root outside the stack copy")
            m = inside
            run.run_ops(ops, 0, cap.type_id, sbuf, soff[k[m]] + addr[m] - lo[k[m]], addr[m], frames[m])
        elif len(pieces) == 1 and pieces[0][1] == "addr":
            psize, _, _, off = pieces[0]
            run.add(np.full(len(frames), off + target.bias, np.int64), psize, frames, "ops",
                    ops=ops, i=0, tid=cap.type_id)
        elif all(p[1] in ("cfa", "value") for p in pieces):
            total = sum(p[0] for p in pieces)
            synth = np.zeros((len(frames), total), np.uint8)
            at, ok = 0, np.ones(len(frames), bool)
            for psize, kind, _, off in pieces:
                if kind == "cfa":
                    a = cfa + off
                    ok &= (a >= lo[k]) & (a + psize <= lo[k] + size[k])
                    src = np.where(ok, soff[k] + a - lo[k], 0)
                    synth[:, at:at + psize] = sbuf[src[:, None] + np.arange(psize)]
                else:
                    synth[:, at:at + psize] = np.frombuffer(
                        int(off).to_bytes(8, "little", signed=off < 0)[:psize], np.uint8)
                at += psize
            run.mark(frames[~ok], "a root outside the stack copy")
            run.run_ops(ops, 0, cap.type_id, synth.ravel(), (np.arange(len(frames)) * total)[ok],
                        np.full(int(ok.sum()), -1, np.int64), frames[ok])
        else:
            run.mark(frames, "a root in static memory and pieces")


def recipe_at(target, fplan, inst, cap, lpc: int):
    """Where the reference reader takes cap's root in a frame whose return pc
    is lpc (link-time): readexec.root_recipe's answer, cached per target; None
    when there is nothing to read (the variable is not there at that pc)."""
    from .readexec import root_recipe
    roots = fplan.roots if inst is None else inst.roots
    locs = roots.get(cap.root) or []
    if inst is not None and not locs:
        return None
    lookup = lpc - 1
    var_pc = lpc if inst is None or any(l.lo <= lpc < l.hi for l in locs) else lookup
    recipes = target.shared.setdefault("recipes", {})
    key = (id(fplan), id(inst), lpc, cap.root)
    r = recipes.get(key, False)
    if r is False:
        rsize = target.plan.types[fplan.root_types[cap.root]].size
        r = recipes[key] = root_recipe(locs, var_pc, lookup, rsize,
                                       fplan.spills if inst is None else None, cap.root)
    return r


def _program_frame(fplan, pf, depth, g, regs, inst, *, k, prog, target, snapshot_budget) -> CaptureRecord:
    """After the resume: a captured frame decoded from the pause's copies, by
    the reference code with the copies as its only memory."""
    if "read" not in prog:
        prog["read"] = {(k, c) for k, c, b in zip(prog["fk"].tolist(), prog["fcfa"].tolist(),
                                                  prog["bad"].tolist()) if not b}
    if (k, pf.cfa) not in prog["read"]:
        return _unread_frame(fplan, pf, depth, g, regs, inst,
                             reason="not read: the pause's frame-pointer walk did not find this frame")
    return _capture_frame(fplan, pf, depth, g, regs, inst, target=target, mem=prog["copies"],
                          snapshot_budget=snapshot_budget)


def _learn_types(target, prog) -> None:
    """After the resume: shape the dynamic types the pause met without one, for the next pause."""
    program, base = target.shared["program"], getattr(target.layout, "moduledata_types_addr", None)
    if not prog["missing"]:
        return
    for off in prog["missing"]:
        t = _type_of_rtype(target, off)
        if t is not None:
            program.rtypes[off] = t.id
    program.add_types(target.plan.types)


def _compare(gs: list[_G], reference: dict) -> list[str]:
    """Differences between the program's capture rows and the reference's."""
    out = []
    for k, g in enumerate(gs):
        ref = reference.get(k)
        want = [_row(c) for c in (ref.captures if ref is not None else None) or []]
        got = [_row(c) for c in g.captures or []]
        if want != got:
            out.append(f"goroutine {g.raw.f.get('goid')}: reference {want!r} != program {got!r}")
    return out


def _row(c) -> tuple:
    depth, inline, r = c
    return (depth, inline, r.function, r.instance, r.values, r.raw, r.errors)


def _capture_candidates(target, table, live, stacks, limits: CaptureLimits = LIMITS) -> list[int]:
    """Live rows whose stack copy holds a pc of a captured function, or that start in one.

    A captured frame below the innermost one has its return address on the
    stack, so a goroutine with no such word has no captured frame. Stale words
    only add candidates (unwound for nothing), never lose one."""
    pcs = target.capture_pcs(limits.max_capture_pcs)
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
            plain, raw = _decoder()(plan.types, cap.type_id, v.data, v.addr, mem.read, plan.budgets,
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


def _decoder():
    """decode_value, or with EXRAY_DECODER=wasm the WebAssembly module's
    (agent/wasm: values decoded from a pause's copies, sandboxed; it hands
    the kinds it does not decode, and live reads, back to decode_value)."""
    if os.environ.get("EXRAY_DECODER") == "wasm":
        from .wasm.decoder import decode_value as wasm_decode_value
        return wasm_decode_value
    return decode_value


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

    The user-space reader resolves dynamic types through the lazy DWARF index,
    or, for a plan compiled elsewhere (an agent has no DWARF), through the
    plan's runtime-type table (probe_compiler.plan.add_runtime_types)."""
    base = getattr(target.layout, "moduledata_types_addr", None)

    def by_rtype(addr: int):
        return _type_of_rtype(target, addr - base) if base else None
    return by_rtype


def _known_rtypes(target) -> dict[int, int]:
    """Every runtime type offset the binary describes -> its type id: the
    DWARF's, or the plan's table when the plan came without it (an agent)."""
    return target.dwarf.index.runtime_types if target.dwarf is not None else target.plan.runtime_types


def _type_of_rtype(target, off: int):
    """The GoType of the runtime type at `off` from moduledata.types, added
    to the plan's table with what it refers to; None when unknown. From the
    DWARF when the target has it, else from the plan's runtime-type table."""
    if target.dwarf is None:
        tid = target.plan.runtime_types.get(off)
        return target.plan.types.types.get(tid) if tid is not None else None
    t = target.dwarf.type_by_runtime_type(off)
    if t is not None and t.id not in target.plan.types:
        for tid, tt in target.dwarf.type_table([t.id]).types.items():
            target.plan.types.types.setdefault(tid, tt)
    return t


def _goroutine_record(g: _G, target: Target, opts, now_mono: int) -> GoroutineRecord:
    _unwind(g, target, opts)
    status = target.layout.status_names.get(gr.status_of(target.layout, g.raw), "unknown")
    rec, logical = goroutine_record(target, g.raw.f, status, g.unwound, thread_id=g.start.thread_id,
                                    labels=g.labels, error=g.unwound.error, now_mono=now_mono)
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


