"""The live stack probe: the one object that owns kernel resources.

    with StackProbe() as probe:                  # compiles (once per process) and loads
        with probe.attached(pid, exe, offsets):  # uprobes on runtime.sigtramp ... of that process
            probe.prepare(plan, [runners], tids) # the plan map, state reset, old records dropped
            ... pause every thread but the runners (registers to probe.regs_at(tid)) ...
            run = probe.trigger(pid, runners, deadline, release=...)   # SIGURG; they walk
        report = probe.report(run)               # after the resume: what the runners said
        records = probe.drain()                  # ... and the ring buffer's bytes

Everything the probe needs about a target comes through maps (plan.py); the
BPF C (probe.bpf.c) never changes per binary or per request, so it is
compiled once per machine and kernel and cached (loader.py: a cache hit needs
no compiler) and only loaded (verified) per StackProbe. `close()` (or the
with-statement) detaches every uprobe this object attached, frees the ring
buffer and closes every program and map: nothing is left in the kernel on
any path, errors included.
"""
from __future__ import annotations

import ctypes as ct
import functools
import mmap
import os
import select
import signal
import struct
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AgentError
from ..ptrace import process_gone, tgkill
from . import capplan, loader
from .plan import _PLAN, StackPlan

_PLAN_SIZE = _PLAN.size

SOURCE = Path(__file__).with_name("probe.bpf.c")
RINGBUF_PAGES = 8192           # 32 MiB: ~10,000 goroutines of 30 frames
STAGE_BYTES = 65536            # a runner's batch of records (K_BATCH)
GS_STEPS = 128                 # allgs entries per gstart run (what the verifier accepts quickly)
FR_STEPS = 256                 # frames per frames run
RD_STEPS = 48                  # reads or slots per reads run (captures; 64 is past the verifier's limit)

MAX_TABLE_SLOTS = 16           # targets whose capture tables the probe holds at once
_HASHES = ("sites", "rtypes")   # the capture maps keyed by slot (the others are arrays)   # the capture maps whose keys carry the slot

RESEND_NS = 2_000_000          # a SIGURG with no run after this is sent again
LOOK_NS = 2_000_000            # between looks at the runners' states (failures, lost signals): each
                               # takes tens of us of a CPU the runners share (0.5 ms: the walk 5-8% slower)
R_MAX = 4                      # runners: threads of the target that share the walk (probe.bpf.c)
ITEMS_MAX = 131072             # the captures' FIFO, shared out among the runners
NO_CAP = (1 << 64) - 1

PH_IDLE, PH_ARMED, PH_RUNNING, PH_MORE, PH_DONE, PH_FAILED, PH_WAIT, PH_GATE = range(8)
C_NEXT, C_DONE, C_NRUN, C_ARRIVED, C_ARR, C_N, C_GO, C_INIT = range(8)   # the `ctl` words
C_WORDS = 8
T_MAX = 4096                   # threads whose registers one snapshot holds (probe.bpf.c's tregs)
UREGS_SIZE = 27 * 8            # struct user_regs_struct, as PTRACE_GETREGS writes it


class ProbeError(AgentError):
    """The eBPF probe could not be loaded, attached or run."""


@dataclass
class RunReport:
    """What the probe says about one run (the `state` map after it)."""
    triggers: int
    records: int
    dropped: int               # records the ring buffer had no room for
    frames: int
    goroutines: int
    read_errors: int
    budget_cuts: int           # allgs entries past plan.max_gs, not looked at
    pause_trigger_ns: int      # from the first SIGURG to user space seeing DONE
    allglen: int
    runs: int = 0              # program runs (entries and tail calls)
    wake_ns: int = 0           # from the first SIGURG to the probe's first instruction
    probe_ns: int = 0          # the walk: from the go (or its first run, if later) to its last run's end
    sent_at_ns: int = 0        # CLOCK_MONOTONIC when the first SIGURG was sent
    go_at_ns: int = 0          # ... when the agent said go (the process stopped, its registers in)
    # captures (the reads stage)
    sites: int = 0             # captured frames met
    copies: int = 0            # values copied (K_COPY records)
    cbytes: int = 0            # bytes they hold
    misses: int = 0            # reads that failed in the kernel (not resident, or gone)
    qcuts: int = 0             # values not queued: the queue or the byte budget was full
    unknown: int = 0           # dynamic types not in the tables
    cut: bool = False          # the reads stopped at the captures' share of the pause
    runners: int = 1           # threads that shared the walk
    waits: int = 0             # rounds runners spent waiting for the others to end
    statics: int = 0           # leaves not copied: in the binary's read-only data
    left_out: dict = field(default_factory=dict)   # runner tid -> why it did not share the walk
    notice_ns: int = 0         # from the last runner's end to the agent seeing the walk done


# struct state (probe.bpf.c), as the map holds it: (field, format) in order.
_STATE_LAYOUT = (
    ("phase", "I"), ("stage", "I"), ("triggers", "I"), ("tail_calls", "I"),
    ("arr", "Q"), ("n", "Q"), ("gi", "Q"), ("gend", "Q"), ("wi", "I"), ("wnext", "I"),
    ("fp", "Q"), ("lo", "Q"), ("hi", "Q"), ("gframes", "I"), ("cur", "I"),
    *((f, "Q") for f in ("records", "dropped", "frames", "gs", "read_errors", "budget_cuts",
                         "t_first", "t_last")),
    ("runs", "I"), ("moved", "I"), ("gbuf_at", "Q"), *((f"gbuf{i}", "Q") for i in range(16)),
    *((f, "Q") for f in ("qhead", "qtail", "cbytes", "copies", "misses", "qcuts", "unknown", "sites",
                         "ex_word")),
    *((f"ex{i}", "I") for i in range(12)),
    *((f"ex_item{i}", c) for i, c in enumerate("QQIIIIIIIIQII")),
    ("pad5", "Q"), ("fslot", "I"), ("cpu", "I"), ("fbase", "Q"), ("whead", "I"), ("wtail", "I"),
    ("gdone", "I"), ("waits", "I"), ("statics", "Q"),
    # set by the agent when it arms a runner
    ("reads_cut_ns", "Q"), ("cap_bytes", "Q"), ("ri", "I"), ("qbase", "I"), ("qmask", "I"), ("cut", "I"),
)
_STATE = struct.Struct("<" + "".join(c for _, c in _STATE_LAYOUT))
_STATE_FIELDS = tuple(f for f, _ in _STATE_LAYOUT)


def _offset(name: str) -> int:
    return struct.calcsize("<" + "".join(c for f, c in _STATE_LAYOUT[:_STATE_FIELDS.index(name)]))


_CUT_AT = _offset("reads_cut_ns")
# What a look in the pause needs of a runner's state (the rest is decoded after it)
_PHASE_AT, _RUNS_AT, _WAITS_AT = _offset("phase"), _offset("runs"), _offset("waits")
PROGRAMS = ["on_sigtramp", "on_more", "gstart", "frames", "reads"]
STAGES = ("gstart", "frames", "reads")   # progs[0..2]: the tail-call targets


def cflags(ringbuf_pages: int = RINGBUF_PAGES, stage_bytes: int = STAGE_BYTES) -> list[str]:
    """The probe's compile-time sizes (the same for every target and request)."""
    if stage_bytes < 16384 or stage_bytes & (stage_bytes - 1):
        raise ValueError(f"stage_bytes {stage_bytes}: a power of two of at least 16 KiB (the largest record)")
    return [f"-DRINGBUF_PAGES={ringbuf_pages}", f"-DGS_STEPS={GS_STEPS}", f"-DFR_STEPS={FR_STEPS}",
            f"-DRD_STEPS={RD_STEPS}", f"-DSTAGE={stage_bytes}"]


class _State:
    def __init__(self, raw: bytes):
        self.__dict__.update(zip(_STATE_FIELDS, _STATE.unpack_from(raw)))


class _Mapped:
    """An array map (BPF_F_MMAPABLE) in this process's memory: its entries
    read and written with loads and stores, no system call."""

    def __init__(self, fd: int, value_size: int, entries: int):
        self.stride = -(-value_size // 8) * 8
        size = -(-self.stride * entries // mmap.PAGESIZE) * mmap.PAGESIZE
        self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._anchor = ct.c_char.from_buffer(self.mm)   # (released before the unmap)
        self.base = ct.addressof(self._anchor)

    def at(self, i: int) -> int:
        return self.base + i * self.stride

    def read(self, i: int, n: int) -> bytes:
        return self.mm[i * self.stride:i * self.stride + n]

    def write(self, i: int, raw: bytes) -> None:
        self.mm[i * self.stride:i * self.stride + len(raw)] = raw

    def close(self) -> None:
        self._anchor = None
        self.mm.close()


@dataclass
class _Run:
    """A finished walk, kept raw until it is looked at (after the resume)."""
    states: list[bytes]
    t0: int
    left_out: dict[int, str]
    seen_ns: int = 0           # CLOCK_MONOTONIC when the agent saw the walk done
    go_ns: int = 0             # ... when it said go


def _armed_state(ri: int, nrun: int, reads_cut_ns: int, cap_bytes: int) -> bytes:
    """Runner ri's state as the agent arms it: every counter and cursor zero,
    its share of the FIFO and of the byte budget, the reads' cut-off."""
    raw = bytearray(_armed_template(ri, nrun, cap_bytes))
    struct.pack_into("<Q", raw, _CUT_AT, reads_cut_ns)
    return bytes(raw)


@functools.lru_cache(maxsize=16)
def _idle_state(phase: int) -> bytes:
    raw = bytearray(_STATE.size)
    struct.pack_into("<I", raw, 0, phase)
    return bytes(raw)


@functools.lru_cache(maxsize=64)
def _armed_template(ri: int, nrun: int, cap_bytes: int) -> bytes:
    share = ITEMS_MAX // _pow2(nrun)
    v = dict.fromkeys(_STATE_FIELDS, 0)
    v.update(phase=PH_ARMED, ri=ri, qbase=ri * share, qmask=share - 1,
             cap_bytes=cap_bytes if cap_bytes == NO_CAP else cap_bytes // nrun)
    return _STATE.pack(*(v[f] for f in _STATE_FIELDS))


def _poke(pid: int, tid: int) -> None:
    """SIGURG to a runner; a thread or process gone (killed mid-snapshot)
    is the probe's error, which the snapshot's record then says."""
    try:
        tgkill(pid, tid, signal.SIGURG)
    except OSError as e:
        raise ProbeError(f"pid {pid}: the SIGURG to its thread {tid} failed ({e.strerror}): "
                         "the thread or the process is gone") from e


class _Exit:
    """Whether a process has exited, by a poll of its pidfd (opened at the
    first look; a look in the pause then reads no /proc file)."""

    def __init__(self, pid: int):
        self.pid, self.fd = pid, None

    def gone(self) -> bool:
        if self.fd is None:
            try:
                self.fd = os.pidfd_open(self.pid)
            except OSError:
                self.fd = -1
        if self.fd < 0:
            return process_gone(self.pid)
        return bool(select.select([self.fd], [], [], 0)[0])

    def close(self) -> None:
        if self.fd is not None and self.fd >= 0:
            os.close(self.fd)
        self.fd = None


def cpus() -> int:
    """CPUs this agent may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except OSError:
        return 1


def _pow2(n: int) -> int:
    """The least power of two >= n."""
    return 1 << max(0, n - 1).bit_length()


class StackProbe:
    """The loaded probe. It has one cursor (the `state` map) and one ring
    buffer: one snapshot at a time uses it, under `lock` (an agent serving
    several requests at once takes turns here)."""

    def __init__(self, ringbuf_pages: int = RINGBUF_PAGES, stage_bytes: int = STAGE_BYTES):
        self.lock = threading.RLock()
        self._uprobes: dict[int, list] = {}     # pid -> [(perf event fd, event name)]
        self._records: list[bytes] = []
        self._tables: dict[str, tuple] = {}   # key -> (Placement, hash map -> keys written)
        self._next = dict.fromkeys(("roots", "slots", "shapes", "maps"), 0)   # next free array index
        self._kern = None
        self._mapped: dict[str, _Mapped] = {}
        self._slots: dict[int, int] = {}     # tid -> its tregs slot (prepare)
        self._staged = 0                     # runners prepare() staged for the first walk
        self._armed_for = None               # (pid, runner 0's tid): arm() armed them for start()
        self._started = None                 # (pid, CLOCK_MONOTONIC ns): start() signalled its runner 0
        self._cap_bytes = NO_CAP      # the plan's captures byte budget (set_plan)
        self.last_states: list = []    # the runners' states after the last trigger (for the bench)
        self._ring = None
        self._wake = None
        self.from_cache = False
        try:
            from bcc.libbcc import _RINGBUF_CB_TYPE, lib
        except ImportError as e:
            raise ProbeError("bcc is not importable (Debian's python3-bpfcc; run scripts/setup.sh)") from e
        self._lib = lib
        try:
            obj, self.from_cache = loader.compiled(SOURCE.read_text(), cflags(ringbuf_pages, stage_bytes), PROGRAMS)
            self._kern = kern = loader.load(obj)
            if kern.specs["state"].value_size != _STATE.size or kern.specs["plan"].value_size != _PLAN_SIZE:
                raise ProbeError("probe.bpf.c's state or plan struct does not match probe.py/plan.py")
            for i, name in enumerate(STAGES):
                self._update("progs", struct.pack("<I", i), struct.pack("<I", kern.progs[name]))
            for name, size, n in (("state", _STATE.size, R_MAX), ("ctl", 8, C_WORDS), ("tregs", UREGS_SIZE, T_MAX)):
                self._mapped[name] = _Mapped(kern.maps[name], size, n)
            self._words = (ct.c_uint64 * C_WORDS).from_buffer(self._mapped["ctl"].mm)
            self._cb = _RINGBUF_CB_TYPE(self._on_record)
            self._ring = lib.bpf_new_ringbuf(kern.maps["out"], self._cb, None)
            if not self._ring:
                raise ProbeError("opening the probe's ring buffer failed")
            # A runner that ends its share wakes this (the probe's K_MARK,
            # the only record sent with a wakeup); edge-triggered: the walk's
            # other records, already in the ring, do not. (A ring too full
            # for the K_MARK leaves the agent to see the end at its next look.)
            self._wake = select.epoll()
            self._wake.register(kern.maps["out"], select.EPOLLIN | select.EPOLLET)
        except BaseException as e:
            self.close()
            if isinstance(e, loader.LoadError):
                raise ProbeError(str(e)) from e
            raise

    # -- lifetime

    def close(self) -> None:
        for pid in list(self._uprobes):
            self._detach(pid)
        self._words = None
        for m in self._mapped.values():
            m.close()
        self._mapped = {}
        if self._ring:
            self._lib.bpf_free_ringbuf(self._ring)
            self._ring = None
        if self._wake is not None:
            self._wake.close()
            self._wake = None
        if self._kern is not None:
            kern, self._kern = self._kern, None
            try:
                # The stages tail-call through `progs`, which they reference:
                # emptying it now frees the programs at once (the kernel would
                # only clear it from a work queue once the map's fds are closed).
                for i in range(len(STAGES)):
                    key = ct.c_uint(i)
                    self._lib.bpf_delete_elem(kern.maps["progs"], ct.byref(key))
            finally:
                kern.close()

    def __enter__(self) -> "StackProbe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._kern is None

    # -- uprobes

    @contextmanager
    def attached(self, pid: int, path: str, offsets: list[int]):
        """Uprobes for process pid only, at file offsets of `path`: the first
        (runtime.sigtramp) starts a walk, the others (later on the signal
        path) go on with one; all detached when the block ends, however it ends."""
        self._check_open()
        if pid in self._uprobes:
            raise ProbeError(f"pid {pid} already has the probe attached")
        self._uprobes[pid] = []
        try:
            for i, offset in enumerate(offsets):
                self._attach_one(pid, path, offset, self._kern.progs["on_sigtramp" if i == 0 else "on_more"])
            yield
        finally:
            self._detach(pid)

    def _attach_one(self, pid: int, path: str, offset: int, prog_fd: int) -> None:
        ev = f"exray_{os.getpid()}_{pid}_{offset:x}".encode()
        fd = self._lib.bpf_attach_uprobe(prog_fd, 0, ev, path.encode(), offset, pid)
        if fd < 0:
            raise ProbeError(f"attaching a uprobe to {path}+{offset:#x} for pid {pid} failed "
                             f"({os.strerror(ct.get_errno() or 1)})")
        self._uprobes[pid].append((fd, ev))

    def _detach(self, pid: int) -> None:
        for fd, ev in self._uprobes.pop(pid, ()):
            self._lib.bpf_close_perf_event_fd(fd)
            self._lib.bpf_detach_uprobe(ev)      # a tracefs event, when bcc had to make one

    # -- one run

    def prepare(self, plan: StackPlan, runners: list[list[int]] = (), threads: list[int] = ()) -> None:
        """Before the pause: the plan in, the state idle, no old records;
        each process's runner threads (its list's index is the runner's:
        trigger() is given the same list); a register slot for each thread
        of the processes (regs_at)."""
        self.set_plan(plan)
        self._clear_hash("runners")
        self._update_batch("runners", [(struct.pack("<I", tid), struct.pack("<I", i))
                                       for tids in runners for i, tid in enumerate(tids[:R_MAX])])
        self._clear_hash("tslot")
        self._slots = {}
        for tid in {*threads, *(t for tids in runners for t in tids)}:
            self._slots[tid] = len(self._slots)
            if len(self._slots) >= T_MAX:
                break
        self._update_batch("tslot", [(struct.pack("<I", tid), struct.pack("<I", i)) for tid, i in self._slots.items()])
        regs = self._mapped["tregs"]
        regs.mm[:len(self._slots) * regs.stride] = bytes(len(self._slots) * regs.stride)   # no stale registers
        if runners:     # the first process's runners, staged: the pause only arms them
            self._stage(len(runners[0][:R_MAX]))
            self._staged = len(runners[0][:R_MAX])
        self.drain()
        self._wake.poll(0)      # a wakeup left from an earlier walk

    def set_plan(self, plan: StackPlan) -> None:
        """The plan in and the state idle, keeping the records and registers
        (the next process of a pause that walks several)."""
        self._check_open()
        self._update("plan", struct.pack("<I", 0), plan.pack())
        self._cap_bytes = plan.captures.cap_bytes if plan.captures is not None else NO_CAP
        self._set_phases(PH_IDLE)
        self._staged = 0

    def regs_at(self, tid: int) -> int | None:
        """Where PTRACE_GETREGS of a stopped thread goes: its slot of the
        mapped `tregs` (a thread new since prepare() gets one now), or None
        when the slots are used up (its running goroutine, if any, then
        starts from g.sched)."""
        slot = self._slots.get(tid)
        if slot is None:
            if len(self._slots) >= T_MAX:
                return None
            slot = self._slots[tid] = len(self._slots)
            self._update("tslot", struct.pack("<I", tid), struct.pack("<I", slot))
        return self._mapped["tregs"].at(slot)

    def trigger(self, pid: int, tids: list[int], deadline_ns: int, reads_cut_ns: int = 0,
                release=None, resume=None, go_ns: int = 0) -> _Run:
        """Arm a runner for each of tids, SIGURG the first (a thread left
        running; start() may have done both already), say go, let each
        other one (stopped) into the signal's handler with
        `release(tid)` (one it can't is dropped: the rest share the walk),
        and wait for the probe to finish. Runner 0 starts at once; one that
        has not arrived when the others have done the whole walk is dropped
        too. While a runner says MORE or WAIT with no progress, or a signal
        seems lost (a SIGURG sent while one is pending merges with it), it
        is signalled again. Raises ProbeError at the deadline, leaving the
        probe disarmed. No captures' reads start after reads_cut_ns
        (CLOCK_MONOTONIC; 0: none). resume, if given, is the paused process
        (a PausedProcess): it runs on the moment the walk is seen done,
        before anything else. go_ns: when the go word (go_address()) was
        set already, by the pause of a started process. What the runners
        say is read later, by report()."""
        tids = list(tids)[:R_MAX]
        if len(tids) > 1 and release is None:
            raise ValueError("several runners need a release(tid) for all but the first")
        started, self._started, self._armed_for = self._started, None, None
        if started is None or started[0] != pid:
            self._arm(len(tids), reads_cut_ns)
            started = None
        t0 = started[1] if started else time.monotonic_ns()
        run, exited = _Run([], t0, {}), None
        try:
            if not (started and go_ns):
                self._words[C_GO] = 1
            run.go_ns = go_ns if started and go_ns else time.monotonic_ns()
            if started is None:
                _poke(pid, tids[0])
            live = [0, *self._release(tids, range(1, len(tids)), release, run)]
            exited = _Exit(pid)
            self._wait(pid, tids, live, run, deadline_ns, exited, resume)
            st = self._mapped["state"]
            run.states = [st.read(i, _STATE.size) for i in live]
        except BaseException:
            self._set_phases(PH_IDLE)
            raise
        finally:
            if exited is not None:
                exited.close()
        return run

    def go_address(self) -> int:
        """The address of the go word (`ctl[C_GO]`, mapped): storing 1 there
        lets a started runner walk. The pause of the started process does,
        the moment its threads are stopped and their registers are in
        (PausedProcess.go_at); trigger() does for the others."""
        self._check_open()
        return self._word_at(C_GO)

    def _wait(self, pid: int, tids: list[int], live: list[int], run: _Run, deadline_ns: int, exited: _Exit,
              resume) -> None:
        """Until every runner in `live` is done; then resume (see trigger).
        While every CPU has a runner walking, this thread sleeps until the
        probe wakes it (a runner's share done) or a look is due. Then it
        watches C_DONE without sleeping, from the CPU that runner no longer
        walks on: waking takes 20-30 us on a VM. Its looks are loads from
        the mapped `ctl`. With agent/_pause.c, the wait and the detaches
        after it are one call: the way from the wakeup to the first
        PTRACE_DETACH was 30 us of cold Python."""
        sent, last, looked = dict.fromkeys(live, run.t0), {}, run.t0
        # (a thread that holds its CPU sleeps until woken, whatever the CPUs)
        words, ncpu = self._words, 1 if getattr(resume, "holds_cpu", False) else cpus()
        in_c = resume is not None
        while words[C_DONE] < len(live):
            if 0 < words[C_ARRIVED] <= words[C_DONE]:
                self._drop_late(tids, live, run)
                continue
            now = time.monotonic_ns()
            if now - looked > LOOK_NS or now > deadline_ns:
                looked = now
                self._look(pid, tids, live, deadline_ns, now, sent, last, exited)
            if in_c:            # None: no agent/_pause.c, wait here
                seen = resume.resume_when(self._word_at(C_DONE), self._word_at(C_ARRIVED), len(live), ncpu,
                                          self._wake.fileno(), min(looked + LOOK_NS, deadline_ns) + 1)
                if seen:
                    run.seen_ns = seen
                    return
                in_c = seen is not None
            if not in_c and len(live) - words[C_DONE] >= ncpu:
                self._wake.poll(LOOK_NS / 1e9)
        run.seen_ns = time.monotonic_ns()
        if resume is not None:
            resume.resume()

    def _word_at(self, k: int) -> int:
        """The address of ctl's word k (mapped into this process)."""
        return ct.addressof(self._words) + 8 * k

    def arm(self, pid: int, tids: list[int], reads_cut_ns: int = 0) -> None:
        """Before pid's pause: its runners armed, for start() to signal the
        first as the pause starts (arming takes the agent 20-30 us, which
        would be the target's). A SIGURG of the runtime's own meanwhile only
        brings that runner to the gate early; finish() disarms."""
        tids = list(tids)[:R_MAX]
        self._arm(len(tids), reads_cut_ns)
        self._armed_for = (pid, tids[0])

    def start(self) -> None:
        """Signal runner 0 of the armed process (the thread left running)
        before its other threads are stopped: it enters the probe and waits
        at the gate (C_GO) until trigger() says go, so the signal's way in
        (20-40 us) overlaps the stops. trigger() for that process goes on
        from here; finish() or a trigger() for another process disarms it
        (a runner then leaves the gate and runs on)."""
        pid, tid = self._armed_for
        self._started = (pid, time.monotonic_ns())
        try:
            _poke(pid, tid)
        except BaseException:
            self._started = None
            self._set_phases(PH_IDLE)
            raise

    def _release(self, tids: list[int], waiting, release, run: _Run) -> list[int]:
        """Lets the waiting runners go (release(tid) -> bool); one that could
        not be let go is disarmed and no longer counted. Their indexes started."""
        started = []
        for i in waiting:
            try:
                ok = release(tids[i])
            except OSError:
                ok = False
            if ok:
                started.append(i)
            else:
                self._mapped["state"].write(i, _idle_state(PH_IDLE))
                run.left_out[tids[i]] = "could not be let into its SIGURG handler"
        self._words[C_NRUN] = 1 + len(started)
        return started

    def _drop_late(self, tids: list[int], live: list[int], run: _Run) -> None:
        """Every runner that arrived has done its share, and the walk is
        done: the ones still on their way (a CPU that is slow to run them)
        are disarmed and no longer counted. One that arrives meanwhile finds
        no chunk left and ends as the others did."""
        for i in list(live):
            if self._glance(i)[0] == PH_ARMED:
                self._mapped["state"].write(i, _idle_state(PH_IDLE))
                live.remove(i)
                run.left_out[tids[i]] = "did not reach its SIGURG handler before the others had done the walk"
        self._words[C_NRUN] = len(live)

    def report(self, run: _Run) -> RunReport:
        """What a finished walk's runners said (last_states: their states)."""
        self.last_states = [_State(raw) for raw in run.states]
        report = self._report(self.last_states, run.t0, run.go_ns)
        report.left_out = dict(run.left_out)
        last = max((s.t_last for s in self.last_states), default=0)
        report.notice_ns = run.seen_ns - last if last and run.seen_ns > last else 0
        return report

    def _look(self, pid: int, tids: list[int], live: list[int], deadline_ns: int, now: int,
              sent: dict, last: dict, exited: _Exit) -> None:
        """The runners' states: a failure or the deadline raises ProbeError;
        a runner that says MORE, GATE or WAIT with no progress, or whose
        signal seems lost (a SIGURG sent while one is pending merges with
        it), is signalled again."""
        if exited.gone():
            raise ProbeError(f"pid {pid} exited during the probe's walk")
        phases = {i: self._glance(i) for i in live}
        failed = [i for i in live if phases[i][0] == PH_FAILED]
        if failed:
            st = self._state_of(failed[0])
            raise ProbeError(f"the probe could not start in pid {pid} (allgs unreadable, "
                             f"or its tail calls are not in place): {st.read_errors} read errors")
        if now > deadline_ns:
            sts = {i: self._state_of(i) for i in live}
            raise ProbeError(
                f"the probe did not finish in pid {pid} within the deadline (phases "
                f"{[sts[i].phase for i in live]}, {sum(s.triggers for s in sts.values())} runs, "
                f"{sum(s.gs for s in sts.values())} goroutines): thread {tids[0]} may block SIGURG "
                "or be stuck in the kernel")
        for i in live:
            phase, progress = phases[i]
            if phase in (PH_MORE, PH_ARMED, PH_WAIT, PH_GATE) and now - sent[i] > RESEND_NS \
                    or phase == PH_MORE and progress != last.get(i):
                last[i] = progress
                _poke(pid, tids[i])
                sent[i] = now

    def _report(self, sts: list, t0: int, go_ns: int = 0) -> RunReport:
        # the walk runs from the go (a runner signalled early waits for it) to the last runner's end
        first = max(min((s.t_first for s in sts if s.t_first), default=0), go_ns)
        last = max((s.t_last for s in sts if s.t_last), default=0)
        total = lambda f: sum(getattr(s, f) for s in sts)   # noqa: E731
        return RunReport(triggers=total("triggers"), records=total("records"), dropped=total("dropped"),
                         frames=total("frames"), goroutines=total("gs"), read_errors=total("read_errors"),
                         budget_cuts=total("budget_cuts"), pause_trigger_ns=time.monotonic_ns() - t0,
                         allglen=sts[0].n, runs=total("runs"),
                         wake_ns=sts[0].t_first - t0 if sts[0].t_first else 0,
                         probe_ns=last - first if first and last else 0,
                         sent_at_ns=t0, go_at_ns=go_ns, sites=total("sites"), copies=total("copies"), cbytes=total("cbytes"),
                         misses=total("misses"), qcuts=total("qcuts"), unknown=total("unknown"),
                         cut=any(s.cut for s in sts), runners=len(sts),
                         waits=total("waits"), statics=total("statics"))

    def finish(self) -> None:
        """After the resume (or a pause that failed after start()): whatever
        SIGURG is still pending finds the probe idle."""
        self._started = self._armed_for = None
        if not self.closed:
            self._set_phases(PH_IDLE)

    def drain(self) -> list[bytes]:
        """Every record in the ring buffer, in order; empties it."""
        self._check_open()
        self._records = []
        self._lib.bpf_consume_ringbuf(self._ring)
        out, self._records = self._records, []
        return out

    # -- capture tables (capplan.py)

    def load_tables(self, key: str, tables) -> capplan.Placement:
        """Put a target's capture tables in the probe, before the pause; where
        they are, for its plan. Tables already in place under `key` are used
        again; when the probe has no room left, every slot is emptied first."""
        self._check_open()
        got = self._tables.get(key)
        if got is not None:
            return got[0]
        tables.check_fits()
        want = {"roots": tables.n_roots, "slots": tables.n_slots, "shapes": len(tables.shapes) + 1,
                "maps": len(tables.maps)}
        most = {"roots": capplan.MAX_ROOTS, "slots": capplan.MAX_SLOTS, "shapes": capplan.MAX_SHAPES,
                "maps": capplan.MAX_MAPS}
        used = {v[0].slot for v in self._tables.values()}
        if len(used) >= MAX_TABLE_SLOTS or any(self._next[m] + want[m] > most[m] for m in want):
            self.clear_tables()
            used = set()
        at = capplan.Placement(slot=min(set(range(MAX_TABLE_SLOTS)) - used), root_base=self._next["roots"],
                               slot_base=self._next["slots"], shape_base=self._next["shapes"],
                               map_base=self._next["maps"], n_shapes=want["shapes"], n_maps=want["maps"])
        entries = tables.entries(at)
        self._tables[key] = (at, {m: [k for k, _ in kv] for m, kv in entries.items() if m in _HASHES})
        for name, kv in entries.items():
            self._update_batch(name, kv)
        for m in want:
            self._next[m] += want[m]
        return at

    def clear_tables(self) -> None:
        """Every table slot emptied (its hash entries deleted; the arrays are overwritten)."""
        for _, keys in self._tables.values():
            for name, ks in keys.items():
                for k in ks:
                    kk = ct.create_string_buffer(k, len(k))
                    self._lib.bpf_delete_elem(self._kern.maps[name], kk)
        self._tables.clear()
        self._next = dict.fromkeys(("roots", "slots", "shapes", "maps"), 0)

    def _update_batch(self, name: str, kv: list[tuple[bytes, bytes]]) -> None:
        """Many entries in one bpf(BPF_MAP_UPDATE_BATCH) call per chunk."""
        for i in range(0, len(kv), 8192):
            part = kv[i:i + 8192]
            keys = b"".join(k for k, _ in part)
            vals = b"".join(v for _, v in part)
            kb, vb = ct.create_string_buffer(keys, len(keys)), ct.create_string_buffer(vals, len(vals))
            n = ct.c_uint32(len(part))
            if self._lib.bpf_update_batch(self._kern.maps[name], kb, vb, ct.byref(n)) < 0:
                raise ProbeError(f"filling the probe's {name} map failed ({os.strerror(ct.get_errno() or 1)})")

    # -- internals

    def _on_record(self, ctx, data, size) -> int:
        self._records.append(ct.string_at(data, size))
        return 0

    def _update(self, name: str, key: bytes, value: bytes) -> None:
        k, v = ct.create_string_buffer(key, len(key)), ct.create_string_buffer(value, len(value))
        if self._lib.bpf_update_elem(self._kern.maps[name], k, v, 0) < 0:
            raise ProbeError(f"updating the probe's {name} map failed ({os.strerror(ct.get_errno() or 1)})")

    def _state_of(self, ri: int) -> _State:
        return _State(self._mapped["state"].read(ri, _STATE.size))

    def _glance(self, ri: int) -> tuple[int, tuple[int, int]]:
        """Runner ri's phase and progress (runs, waits): three loads."""
        mm, at = self._mapped["state"].mm, ri * self._mapped["state"].stride
        return (struct.unpack_from("<I", mm, at + _PHASE_AT)[0],
                (struct.unpack_from("<I", mm, at + _RUNS_AT)[0], struct.unpack_from("<I", mm, at + _WAITS_AT)[0]))

    def _arm(self, nrun: int, reads_cut_ns: int) -> None:
        """Runners 0 .. nrun-1 armed, the shared words reset: stores into
        the mapped `ctl` and `state`, the phases last. What prepare() staged
        (the same states, idle) needs only its cut-off and its phases."""
        st = self._mapped["state"]
        if self._staged != nrun:
            self._stage(nrun)
        self._staged = 0
        for i in range(nrun):
            struct.pack_into("<Q", st.mm, i * st.stride + _CUT_AT, reads_cut_ns)
        for i in range(nrun):
            struct.pack_into("<I", st.mm, i * st.stride + _PHASE_AT, PH_ARMED)

    def _stage(self, nrun: int) -> None:
        """Runners 0 .. nrun-1 as arming leaves them, but idle (a SIGURG
        finds nothing to do), and the shared words reset."""
        self._mapped["ctl"].write(0, struct.pack(f"<{C_WORDS}Q", *(nrun if k == C_NRUN else 0
                                                                  for k in range(C_WORDS))))
        st = self._mapped["state"]
        for i in range(R_MAX):
            raw = bytearray(_armed_state(i, nrun, 0, self._cap_bytes) if i < nrun else _idle_state(PH_IDLE))
            struct.pack_into("<I", raw, _PHASE_AT, PH_IDLE)
            st.write(i, bytes(raw))

    def _set_phases(self, phase: int) -> None:
        """Every runner's state reset to `phase` (every counter and cursor zero)."""
        if "state" in self._mapped:
            for i in range(R_MAX):
                self._mapped["state"].write(i, _idle_state(phase))

    def _clear_hash(self, name: str) -> None:
        """Every entry of a hash map keyed by u32 deleted."""
        fd, key, nxt = self._kern.maps[name], ct.c_uint(0), ct.c_uint(0)
        keys = []
        if self._lib.bpf_get_first_key(fd, ct.byref(key), 4) == 0:
            keys.append(key.value)
            while self._lib.bpf_get_next_key(fd, ct.byref(key), ct.byref(nxt)) == 0:
                keys.append(nxt.value)
                key.value = nxt.value
        for k in keys:
            kk = ct.c_uint(k)
            self._lib.bpf_delete_elem(fd, ct.byref(kk))

    def _check_open(self) -> None:
        if self._kern is None:
            raise ProbeError("the probe is closed")
