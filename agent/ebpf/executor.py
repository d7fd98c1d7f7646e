"""The eBPF executor: a snapshot's stacks walked by the probe in the kernel.

    rec = snapshot_process(pid, target, opts)        # a ProcessRecord, as agent.snapshot's

The pause: attach the uprobe (before), stop every thread but one with ptrace,
hand the stopped threads' registers to the probe, SIGURG the one left
running: it enters runtime.sigtramp, where the uprobe fires in the target's
own context and the probe walks allgs and every frame-pointer chain into the
ring buffer; then resume. After the resume, Python reads the records and
does what the ptrace executor does with its copies: the pcsp unwinder
(agent/unwind.py) over the words the probe copied (it refines the
frame-pointer chain: leaf, prologue and fresh-goroutine frames), then
agent/symbolize.py's logical frames. The records come out the same.

Captures: the probe runs the read program too (capplan.py puts it in its
maps before the pause): at each captured frame's return address it copies
the roots and everything their shapes reach into K_COPY records, and after
the resume the decoder reads those copies only, as the ptrace executor's
program path does. What the copies lack (a frame the probe has no site for,
a map or an op it does not walk, a read that failed in the kernel) the
decoder finds missing; then the snapshot is taken again with ptrace, and the
records say why (snapshot_processes).
"""
from __future__ import annotations

import atexit
import os
import signal
import threading
import time
from contextlib import ExitStack
from dataclasses import replace

from .. import goroutines as gr
from ..errors import AgentError
from ..loadbias import load_bias
from ..memory import ProcessMemory
from ..ptrace import PausedProcess, Regs
from ..records import GoroutineRecord, ProcessRecord
from ..snapshot import new_record, no_layout, with_skews
from ..symbolize import goroutine_record
from ..unwind import StackImage, unwind
from .availability import why_unavailable
from .plan import CapturePlan, StackBudgets, StackPlan
from .probe import R_MAX, ProbeError, StackProbe, cpus
from .records import F_FULL, K_THREAD, START_REGS, START_SYSCALL, ProbeGoroutine, parse

EXECUTORS = ("ptrace", "ebpf", "auto")
SIGTRAMP = "runtime.sigtramp"

_shared: StackProbe | None = None
_shared_lock = threading.Lock()


def shared_probe() -> StackProbe:
    """This process's probe, loaded on first use and closed at exit: bcc
    compiles the C at every load (about a second), so snapshots share one."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.closed:
            _shared = StackProbe()
            atexit.register(close_shared_probe)
        return _shared


def close_shared_probe() -> None:
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.close()
            _shared = None


def choose(executor: str, target) -> tuple[str, str | None]:
    """(the executor to use, why `auto` fell back or why `ebpf` can't run)."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}: one of {', '.join(EXECUTORS)}")
    if executor == "ptrace":
        return "ptrace", None
    why = why_unavailable()
    if why is None and target.plan.functions:
        try:
            tables_of(target)
        except (AgentError, ValueError) as e:
            why = f"the spec's captures can't run in the probe: {e}"
    if why is None and target.layout is not None:
        try:                    # what the probe needs of this binary: its runtime layout, sigtramp
            StackPlan.from_layout(target.layout, 0, gr._G_FIELDS)
            probe_offsets(target.binary)
        except (ValueError, AgentError) as e:
            why = f"this binary can't be walked by the probe: {e}"
    if why is None:
        return "ebpf", None
    return ("ptrace" if executor == "auto" else "ebpf"), why


def tables_of(target):
    """(key, CaptureTables) of a target's read program, built before its first
    pause and again when the program has learned types since."""
    from ..snapshot import _prepare_program
    from .capplan import capture_tables
    _prepare_program(target)
    prog = target.shared["program"]
    key = f"{prog.key}:{len(prog.shapes)}:{len(prog.rtypes)}"
    got = target.shared.get("ebpf_tables")
    if got is None or got[0] != key:
        got = target.shared["ebpf_tables"] = (key, capture_tables(target))
    return got


def capture_bytes(snapshot_bytes: int) -> int:
    """What the probe may copy for captures in one snapshot. It copies
    breadth first and more than the decoder reads (whole groups, every
    element), so the decoder's own budget would cut it in the wrong place:
    four times that, at least 8 MiB, within the ring buffer (a record that
    does not fit there is missing, and the snapshot goes to ptrace)."""
    from .probe import RINGBUF_PAGES
    return min(max(4 * snapshot_bytes, 8 << 20), RINGBUF_PAGES * 4096 * 3 // 4)


def snapshot_process(pid: int, target, opts, probe: StackProbe | None = None,
                     budgets: StackBudgets | None = None) -> ProcessRecord:
    return snapshot_together([(pid, target)], opts, probe, budgets)[0]


class _Job:
    """One process of an eBPF snapshot: prepared (unpaused), walked, finished."""

    def __init__(self, pid, target, opts, budgets):
        self.pid, self.target, self.opts = pid, target, opts
        self.rec = new_record(pid, target)
        self.budgets = budgets or StackBudgets(max_frames=opts.max_frames)
        self.paused = self.report = self.threads = self.tables = None
        self.now_mono = 0

    def fail(self, e: Exception) -> None:
        if self.rec.error is None:
            self.rec.error = f"{e} ({self.target.binary.build_description})"

    def prepare(self, probe: StackProbe) -> bool:
        b = self.target.binary
        if self.target.layout is None:
            self.rec.error = no_layout(b)
            return False
        try:
            self.target = self.target.at_bias(load_bias(self.pid, b))
            self.rec.load_bias = self.target.bias
            self.plan = StackPlan.from_layout(self.target.layout, self.pid, gr._G_FIELDS, self.budgets)
            self.offsets = probe_offsets(b)
            allglen = _allglen(self.pid, self.target.layout)
            if allglen <= ONE_HOOK_UP_TO:
                self.offsets = self.offsets[:1]   # one uprobe's 33 runs walk it: each detach costs 0.1 s
            # The thread left running (a SIGURG sends it into sigtramp), then
            # the stopped ones handed over to share a long walk. The stopped
            # threads' registers go straight into the probe's mapped slots.
            self.tids = threads_of(self.pid)
            self.runners = pick_runners(self.pid, runner_count(allglen))
            self.pause = PausedProcess(self.pid, deadline_s=self.opts.deadline_s, leave_running=self.runners[0],
                                       regs_at=probe.regs_at)
        except (AgentError, ValueError) as e:
            self.fail(e)
            return False
        return True

    def load_captures(self, probe: StackProbe) -> None:
        """Before the pause: the capture tables in the probe, their slot in the plan."""
        t = self.target
        if not t.plan.functions:
            return
        try:
            key, self.tables = tables_of(t)
            at = probe.load_tables(key, self.tables)
        except (AgentError, ValueError) as e:
            self.fail(e)
            return
        b = t.plan.budgets
        self.plan = replace(self.plan, captures=CapturePlan(
            at=at, types_base=getattr(t.layout, "moduledata_types_addr", 0) or 0, bias=t.bias,
            cap_bytes=capture_bytes(b.snapshot_bytes), depth=b.depth, elements=b.elements, string_bytes=b.string_bytes,
            site_lo=min(self.tables.sites, default=1), site_hi=max(self.tables.sites, default=0),
            **_rodata(t)))

    def walk(self, probe: StackProbe, first: bool) -> None:
        """In the pause: the plan in (the first job's went in before the pause),
        the stopped threads' registers, one trigger."""
        paused = self.paused
        try:
            paused.hold_cpu()       # the first process's pause did, at its go
            if not first:
                probe.set_plan(self.plan)
            self.now_mono = time.monotonic_ns()
            left = max(0.0, self.opts.deadline_s - paused.elapsed_s())
            self.run = probe.trigger(self.pid, self.runners, self.now_mono + int(left * 1e9),
                                     self.reads_cut_ns(),
                                     release=lambda tid: paused.hand_over(tid, signal.SIGURG),
                                     resume=paused, go_ns=paused.go_ns if first else 0)
        except AgentError as e:
            self.fail(e)        # trigger() disarmed the probe on its way out

    def reads_cut_ns(self) -> int:
        """When the probe's captures must stop: their share of the pause's deadline."""
        share = max(0.0, self.opts.deadline_s * self.opts.capture_share - self.pause.elapsed_s())
        return time.monotonic_ns() + max(1, int(share * 1e9))

    def settle(self, probe: StackProbe) -> None:
        """After the resume: what the runners said, the stopped threads' registers."""
        self.report = probe.report(self.run)
        self.paused.decode_regs()
        self.threads = dict(self.paused.threads)

    def finish(self, records: list[bytes]) -> None:
        """After the resume: this process's records into goroutines and frames."""
        rec, target = self.rec, self.target
        rec.probe_report = self.report      # not a record field: for the bench and tests
        try:
            out = parse(records)
        except AgentError as e:
            self.fail(e)
            return
        for tid, regs in out.threads:
            self.threads[tid] = _regs(regs)
        _report_limits(rec, out, self.report)
        from probe_compiler.capture_limits import DEFAULTS
        labels = _labels(self.pid, target.layout, out.goroutines, self.opts.limits or DEFAULTS)
        caps = _Captures(self.pid, target, out.copies, self.opts, self._cut_s()) if target.plan.functions else None
        for g in out.goroutines:
            rec.goroutines.append(_goroutine_record(g, target, self.opts, self.threads, labels, self.now_mono,
                                                    caps))
        rec.goroutines.sort(key=lambda g: g.goid)
        if caps is not None:
            caps.conclude(rec, self.report, self.tables)

    def _cut_s(self) -> float | None:
        """Where the probe's reads stopped (the captures' share of the pause), or None."""
        return self.opts.deadline_s * self.opts.capture_share if self.report and self.report.cut else None


class _Guard:
    """Enters a job's pause; an AgentError in or out of it ends that job only."""

    def __init__(self, job):
        self.job = job

    def __enter__(self):
        return self.job.pause.__enter__()

    def __exit__(self, et, e, tb):
        try:
            self.job.pause.__exit__(et, e, tb)
        except AgentError as err:
            self.job.fail(err)
        self.job.rec.pause_ns = getattr(self.job.pause, "pause_ns", 0)
        self.job.rec.pause_start_ns = getattr(self.job.pause, "paused_at_ns", 0) or None
        return False


def snapshot_together(targets: list, opts, probe: StackProbe | None = None,
                      budgets: StackBudgets | None = None) -> list[ProcessRecord]:
    """One eBPF snapshot of several processes at one instant: uprobes on each,
    then every process stopped (all but one thread each), then each walked by
    the probe in turn and resumed as its walk ends (its memory is what it was
    when all were stopped; the others' stay stopped until theirs end); then
    the records. Each record keeps its pause start and its distance from the
    earliest (pause_skew_ns)."""
    probe = probe or shared_probe()
    with probe.lock:            # the probe has one cursor: one snapshot at a time
        return _together(targets, opts, probe, budgets)


def _together(targets: list, opts, probe: StackProbe, budgets) -> list[ProcessRecord]:
    jobs = [_Job(pid, t, opts, budgets) for pid, t in targets]
    live = [j for j in jobs if j.prepare(probe)]
    walked = []
    with ExitStack() as hooks:
        for j in live:
            try:
                hooks.enter_context(probe.attached(j.pid, f"/proc/{j.pid}/exe", j.offsets))
            except AgentError as e:
                j.fail(e)
        for j in live:
            j.load_captures(probe)
        live = [j for j in live if j.rec.error is None]
        if live:                            # before the pause: the first plan, no regs, no old records
            probe.prepare(live[0].plan, [j.runners for j in live], [t for j in live for t in j.tids])
        # Every process's threads interrupted back to back, then the stops
        # waited for: the pauses start together (PausedProcess.interrupt).
        # The first process's runner is armed before and signalled as its
        # pause starts: it waits in the probe for the go while the other
        # threads stop.
        first = live[0] if live else None
        if first is not None:
            probe.arm(first.pid, first.runners, first.reads_cut_ns())
            first.pause.before_interrupt = probe.start
            if len(live) == 1:
                # its walk starts as its registers are in. With several
                # processes, only once all are stopped: a walk on one CPU
                # would slow the other processes' threads on their way to
                # their stops, and the pauses would start further apart.
                first.pause.go_at = probe.go_address()

        def failed(j, e):
            j.fail(e)
            if j is first:
                probe.finish()      # its runner, signalled, leaves the gate now (before any go)
        for j in live if len(live) > 1 else ():     # one process: its pause does it all, at once
            if hasattr(j.pause, "interrupt"):
                try:
                    j.pause.interrupt()
                except AgentError as e:
                    failed(j, e)
        live = [j for j in live if j.rec.error is None]
        with ExitStack() as pauses:
            for j in live:
                try:
                    j.paused = pauses.enter_context(_Guard(j))
                except AgentError as e:
                    failed(j, e)
            for j in live:
                if j.paused is not None and j.rec.error is None:
                    j.walk(probe, first=j is first)   # one after another: the probe has one cursor
                    walked.append(j)
        # A runner that is DONE ignores a late SIGURG as an idle one does:
        # disarming waits until the processes run again.
        probe.finish()
    # Resumed. A walk's records come after the K_THREAD record (the
    # runner's tid) of the first of its runners to arrive.
    for j in walked:
        if j.rec.error is None:
            j.settle(probe)
    by_runner = {tid: j for j in walked for tid in j.runners}
    mine: dict[int, list] = {j.pid: [] for j in walked}
    current = None
    for raw in probe.drain():
        if len(raw) >= 64 and int.from_bytes(raw[:4], "little") == K_THREAD:
            current = by_runner.get(int.from_bytes(raw[44:48], "little"))
        if current is not None:
            mine[current.pid].append(raw)
    for j in walked:
        if j.rec.error is None:
            j.finish(mine[j.pid])
    return with_skews([j.rec for j in jobs])


# Where the probe runs: runtime.sigtramp (the .abi0 assembly entry the
# kernel calls) starts the walk; the Go functions it calls next on every
# signal go on with it, each with a fresh budget of tail calls.
SIGNAL_PATH = (SIGTRAMP, "runtime.sigtrampgo", "runtime.sighandler")


# Up to this many allgs entries one uprobe (sigtramp's 33 runs) walks them
# in one signal even if every stack is walked frame by frame (128 gs and
# 256 frames a run); past it, the later uprobes of the signal path too.
ONE_HOOK_UP_TO = 512


def _allglen(pid: int, layout) -> int:
    """allglen, read before the pause (a plain load of a global); 0 if unreadable."""
    try:
        return gr.read_allglen(layout, ProcessMemory(pid))
    except AgentError:
        return 0


def probe_offsets(binary) -> list[int]:
    """File offsets of SIGNAL_PATH's functions (sigtramp first; the others
    where the binary has them out of line). A uprobe is placed by file offset,
    so PIE or not is the same."""
    out = []
    for name in SIGNAL_PATH:
        fn = binary.pclntab.func_by_name(name)
        off = binary._file_offset(fn.entry, 1) if fn is not None else None
        if off is None:
            if name == SIGTRAMP:
                raise ProbeError(f"{binary.path} has no {SIGTRAMP} in a file-backed segment: "
                                 "not a Go binary the probe can trigger in")
            continue
        out.append(off)
    return out


SIGURG_BIT = 1 << (23 - 1)      # SIGURG in /proc's signal masks


# With this many allgs entries or more the walk is shared by several of the
# target's threads, one per CPU: below it one walks it in less time than a
# second takes to start (handing a stopped thread over, ~0.1 ms).
SHARE_FROM = 256


def runner_count(allglen: int) -> int:
    """Threads to walk allglen goroutines: one, or one per CPU this agent
    may run on (at most R_MAX); $EXRAY_EBPF_RUNNERS sets it (1 keeps a
    snapshot to one CPU), still at most one per CPU: a runner whose share is
    done spins until the last ends, and one without a CPU of its own would
    take it from those still walking."""
    most = min(R_MAX, cpus())
    want = os.environ.get("EXRAY_EBPF_RUNNERS", "")
    if want.strip():
        try:
            return max(1, min(most, int(want)))
        except ValueError:
            raise ProbeError(f"EXRAY_EBPF_RUNNERS={want!r} is not a number of threads (1 to {R_MAX})") from None
    return 1 if allglen < SHARE_FROM else most


def threads_of(pid: int) -> list[int]:
    """The threads of pid now (none if it is gone)."""
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


def pick_runners(pid: int, n: int = 1) -> list[int]:
    """n threads to run the probe (fewer if the target has fewer that take
    SIGURG; never one that blocks it: a C thread may). The first is left
    running and signalled: one on a CPU now (the signal reaches it at
    once). The others are stopped with the rest and handed over
    (PausedProcess.hand_over): sleeping ones that last ran on other CPUs
    first (the leader first), as a thread let go wakes on the CPU it last
    ran on unless another is idle, and one on runner 0's waits there behind
    it for the rest of its time slice."""
    running, sleeping = [], []
    for tid in threads_of(pid):
        state, cpu, blocked = _thread_facts(pid, tid)
        if state and not blocked:
            (running if state == "R" else sleeping).append((tid, cpu))
    sleeping.sort(key=lambda t: t[0] != pid)
    picked = running[:1] or sleeping[:1]
    cpus_taken = {cpu for _, cpu in picked}
    for tid, cpu in sleeping:
        if cpu not in cpus_taken and (tid, cpu) not in picked:
            picked.append((tid, cpu))
            cpus_taken.add(cpu)
    picked += [t for t in sleeping + running if t not in picked]
    return [tid for tid, _ in picked][:max(1, n)] or [pid]


def _thread_facts(pid: int, tid: int) -> tuple[str, int, bool]:
    """(state letter, the CPU it last ran on, whether it blocks SIGURG); ("", -1, True) if gone."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            stat = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            blk = next((line.split(":", 1)[1] for line in f if line.startswith("SigBlk:")), "0")
        return stat[0], int(stat[36]), bool(int(blk.strip(), 16) & SIGURG_BIT)
    except (OSError, IndexError, ValueError):
        return "", -1, True


def _regs(gregs: dict[str, int]) -> Regs:
    """A ptrace Regs from the probing thread's ucontext registers."""
    vals = {f: 0 for f in Regs.__dataclass_fields__}
    vals.update({k: v for k, v in gregs.items() if k in vals})
    return Regs(**vals)


def _report_limits(rec: ProcessRecord, out, report) -> None:
    if report.dropped:
        rec.truncated = True
        rec.warnings.append(f"the probe's ring buffer was full: {report.dropped} records lost, each a "
                            "runner's batch of up to 64 KiB of goroutines, frames and copies "
                            f"({out.orphan_frames} frame records without their goroutine); "
                            "their goroutines are missing or their stacks cut")
    if report.left_out:
        rec.warnings.append(f"runner threads left out of the walk (the others walked): {report.left_out}")
    if report.budget_cuts:
        rec.truncated = True
        rec.warnings.append(f"{report.budget_cuts} allgs entries past the probe's goroutine budget "
                            "(max_gs) were not looked at: their goroutines are missing")


def _labels(pid, layout, gs: list[ProbeGoroutine], limits) -> dict[int, dict[str, str]]:
    """pprof labels, read after the resume from the label maps the pause saw
    (immutable once set; see docs/ebpf.md for the window this leaves), within
    the snapshot's label limits."""
    raws = [gr.RawG(g.gaddr, gr._fields(g.g, layout.g_offsets, {"labels": 8})) for g in gs]
    raws = [r for r in raws if r.f.get("labels")]
    if not raws:
        return {}
    try:
        return gr.read_labels(layout, ProcessMemory(pid), raws, limits.max_labels, limits.label_bytes)
    except AgentError:
        return {}


def _start(g: ProbeGoroutine, threads: dict) -> gr.GStart:
    tid = g.tid or None
    if g.start == START_REGS:
        return gr.GStart(g.pc, g.sp, g.bp, trap=True, thread_id=tid, regs=threads.get(tid))
    if g.start == START_SYSCALL:
        return gr.GStart(g.pc, g.sp, g.bp, thread_id=tid)
    return gr.GStart(g.pc, g.sp, g.bp, thread_id=None)


def _sparse_reader(words: dict[int, int]):
    def read(addr: int, n: int) -> bytes:
        if n == 8 and addr in words:
            return words[addr].to_bytes(8, "little")
        raise AgentError(f"the probe did not copy the stack word at {addr:#x}")
    return read


def _rodata(target) -> dict:
    """The plan's ro_lo/ro_hi: the binary's rodata as the process maps it (none: 0, 0)."""
    span = target.binary.rodata_span
    return {} if span is None else {"ro_lo": span[0] + target.bias, "ro_hi": span[1] + target.bias}


def static_reader(target):
    """(lo, hi, read) for readexec.Copies: the binary's rodata, read from its
    file (what the probe does not copy), by the addresses the process sees."""
    span = _rodata(target)
    if not span:
        return None
    bias, binary = target.bias, target.binary
    return span["ro_lo"], span["ro_hi"], lambda addr, n: bytes(binary.read_static(addr - bias, n))


class _Captures:
    """After the resume: the probe's copies as the decoder's only memory, and
    whether the decoder found everything it read there."""

    def __init__(self, pid: int, target, copies: list[tuple[int, bytes]], opts, cut_s: float | None = None):
        import numpy as np
        from probe_compiler.decode import ByteBudget
        from ..readexec import Copies
        from ..snapshot import stop_reason
        self.target, self.opts = target, opts
        self.copies = Copies(pid, static=static_reader(target))
        if copies:
            sizes = np.array([len(d) for _, d in copies], np.int64)
            offs = np.zeros(len(copies) + 1, np.int64)
            np.cumsum(sizes, out=offs[1:])
            self.copies.add(np.array([a for a, _ in copies], np.int64), sizes,
                            np.frombuffer(b"".join(d for _, d in copies), np.uint8), offs,
                            np.ones(len(copies), bool))
        self.budget = ByteBudget(target.plan.budgets.snapshot_bytes)
        # The reads stopped at the captures' share of the pause: rows missing
        # bytes say so, as ptrace's do (no second pause for them).
        self.cut_s = cut_s
        self.cut = None if cut_s is None else stop_reason(opts, cut_s)
        self.captured = self.unread = 0

    def read_frames(self, g) -> list:
        """(physical frame, inline depth, record) of every captured frame of g."""
        from functools import partial
        from ..snapshot import _capture, _capture_frame
        before = len(self.copies.misses)
        got = _capture(g, self.target, partial(_capture_frame, target=self.target, mem=self.copies,
                                                snapshot_budget=self.budget))
        self.captured += bool(got)
        if got and self.cut and len(self.copies.misses) > before:
            self.unread += 1            # as ptrace does: the goroutine's rows are not read
            for _, _, r in got:
                for col in r.values:
                    r.values[col] = r.raw[col] = None
                    r.errors[col] = self.cut
        return got

    def conclude(self, rec: ProcessRecord, report, tables) -> None:
        """After every goroutine: the record's truncation, its warning if the
        reads stopped, else why it must be taken again with ptrace, if so
        (`ebpf_retry`: not a record field; snapshot_processes reads it)."""
        rec.truncated = rec.truncated or self.budget.refused
        if self.unread:
            from ..snapshot import _stopped
            _stopped(self.opts, self.cut_s, rec, self.unread, self.captured)
        elif self.cut_s is None:
            rec.ebpf_retry = self.why_retry(report, tables)

    def why_retry(self, report, tables) -> str | None:
        """Why these rows are not the ptrace executor's (None: they are)."""
        misses = self.copies.misses
        if not misses:
            return None
        why = [f"{len(misses)} reads of the captures were not in the probe's copies"]
        if report is not None and (report.misses or report.qcuts or report.unknown):
            why.append(f"the probe: {report.misses} reads failed, {report.qcuts} values past its queue or "
                       f"byte budget, {report.unknown} dynamic types not in its tables")
        if tables is not None and tables.skipped:
            why.append("not run in the probe: " + ", ".join(f"{k} ({n})" for k, n in tables.skipped.items()))
        return "; ".join(why)


def _goroutine_record(g: ProbeGoroutine, target, opts, threads, labels, now_mono,
                      caps: _Captures | None = None) -> GoroutineRecord:
    """The goroutine from the probe's copy, its record built as the ptrace
    executor builds it (symbolize.goroutine_record; the differential tests
    hold the two to the same output)."""
    layout, pcln = target.layout, target.pcln
    f = gr._fields(g.g, layout.g_offsets, gr._G_FIELDS)
    raw = gr.RawG(g.gaddr, f)
    start = _start(g, threads)
    status = layout.status_names.get(gr.status_of(layout, raw), "unknown")
    if start.thread_id is None and status == "running":
        start.thread_id = g.tid or None
    # The whole stack (F_FULL), or the words at sp plus the frame-pointer chain's.
    stack = StackImage(g.sp, g.top, None if g.flags & F_FULL else _sparse_reader(g.words()))
    unwound = unwind(pcln, start.pc, start.sp, start.bp, stack, trap=start.trap,
                     stack_hi=f.get("stack.hi"), max_frames=opts.max_frames, bias=target.bias)
    rec, logical = goroutine_record(target, f, status, unwound, thread_id=start.thread_id,
                                    labels=labels.get(g.gaddr), error=_unwind_error(unwound.error, g),
                                    now_mono=now_mono)
    if caps is not None:
        from ..snapshot import _G, _place_captures
        # Unwound from the probe's stack words only; the captures' roots may
        # lie elsewhere on the stack, where the probe copied them.
        stack.read = _chained(stack.read, caps.copies.read)
        rec.captures = _place_captures(logical, caps.read_frames(_G(raw, start, stack, unwound=unwound)))
    return rec


def _chained(first, then):
    """A stack reader that asks `first` (the probe's words; None: none), then `then`."""
    def read(addr: int, n: int) -> bytes:
        if first is not None:
            try:
                return first(addr, n)
            except AgentError:
                pass
        return then(addr, n)
    return read


def _unwind_error(error: str | None, g: ProbeGoroutine) -> str | None:
    """The unwinder's error, with why the probe's frame-pointer walk stopped
    when the unwinder ran out of the words that walk copied."""
    why = g.chain_error()
    if error and why and error.startswith("stack unreadable"):
        return f"{error} (the probe's frame-pointer walk stopped: {why})"
    return error




def _with_retry(ours: list, opts, ptrace) -> dict[int, ProcessRecord]:
    """The eBPF snapshot of `ours`; taken again with ptrace, all of them
    together, when the probe's copies lacked what a capture's decoder read
    (its rows would not be the ptrace executor's)."""
    recs = snapshot_together(ours, opts)
    why = [(r.pid, r.ebpf_retry, r.pause_ns) for r in recs if getattr(r, "ebpf_retry", None)]
    if not why:
        return {r.pid: r for r in recs}
    again = dict(zip((pid for pid, _ in ours), ptrace(ours)))
    for pid, _ in ours:
        for p, reason, pause in why:
            again[pid].warnings.append(
                f"executor ebpf: pid {p}'s captures were not all in the probe's copies ({reason}); "
                f"the snapshot was taken again with ptrace (the probe's pause was {pause / 1e6:.2f} ms)")
        again[pid].ebpf_retry = dict((p, r) for p, r, _ in why).get(pid) or "another process of the snapshot"
    return again


def snapshot_processes(targets: list, opts, ptrace) -> list[ProcessRecord]:
    """agent.snapshot.snapshot_processes's executor switch (opts.executor):
    the processes eBPF can take are snapshotted together by it; the others go
    to `ptrace` (a callable taking [(pid, target)]) where `auto` falls back,
    which their records' warnings say."""
    routed = [(pid, t, *choose(opts.executor, t)) for pid, t in targets]
    fallback = [(pid, t) for pid, t, ex, _ in routed if ex == "ptrace"]
    by_pid = dict(zip((pid for pid, _ in fallback), ptrace(fallback))) if fallback else {}
    ours = [(pid, t) for pid, t, ex, why in routed if ex == "ebpf" and not why]
    if ours:
        by_pid.update(_with_retry(ours, opts, ptrace))
    out = []
    for pid, t, ex, why in routed:
        if ex == "ptrace":
            rec = by_pid[pid]
            if why:
                rec.warnings.append(f"executor auto: used ptrace, because {why}")
        elif why:
            rec = new_record(pid, t)
            rec.error = f"executor ebpf: {why}"
        else:
            rec = by_pid[pid]
        out.append(rec)
    return out
