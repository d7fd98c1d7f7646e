"""The live stack probe: the one object that owns kernel resources.

    with StackProbe() as probe:                  # compiles (once per process) and loads
        with probe.attached(pid, exe, offset):   # uprobe on runtime.sigtramp of that process
            probe.prepare(plan)                  # the plan map, state reset, old records dropped
            ... pause every thread but one ...
            report = probe.trigger(pid, tid, deadline)   # SIGURG to tid; the probe walks
        records = probe.drain()                  # after the resume: the ring buffer's bytes

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
import os
import select
import signal
import struct
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import AgentError
from ..ptrace import tgkill
from . import capplan, loader
from .plan import _PLAN, StackPlan

_PLAN_SIZE = _PLAN.size

SOURCE = Path(__file__).with_name("probe.bpf.c")
RINGBUF_PAGES = 8192           # 32 MiB: ~10,000 goroutines of 30 frames
GS_STEPS = 128                 # allgs entries per gstart run (what the verifier accepts quickly)
FR_STEPS = 256                 # frames per frames run
RD_STEPS = 48                  # reads or slots per reads run (captures; 64 is past the verifier's limit)

MAX_TABLE_SLOTS = 16           # targets whose capture tables the probe holds at once
_HASHES = ("sites", "rtypes")   # the capture maps keyed by slot (the others are arrays)   # the capture maps whose keys carry the slot

RESEND_NS = 2_000_000          # a SIGURG with no run after this is sent again

PH_IDLE, PH_ARMED, PH_RUNNING, PH_MORE, PH_DONE, PH_FAILED = range(6)


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
    budget_cuts: int           # goroutines past plan.max_gs (queue full)
    pause_trigger_ns: int      # from the first SIGURG to user space seeing DONE
    allglen: int
    runs: int = 0              # program runs (entries and tail calls)
    wake_ns: int = 0           # from the first SIGURG to the probe's first instruction
    probe_ns: int = 0          # from the probe's first run's start to its last run's end
    sent_at_ns: int = 0        # CLOCK_MONOTONIC when the first SIGURG was sent
    # captures (the reads stage)
    sites: int = 0             # captured frames met
    copies: int = 0            # values copied (K_COPY records)
    cbytes: int = 0            # bytes they hold
    misses: int = 0            # reads that failed in the kernel (not resident, or gone)
    qcuts: int = 0             # values not queued: the queue or the byte budget was full
    unknown: int = 0           # dynamic types not in the tables
    reads_ns: int = 0          # time in the reads stage's runs
    cut: bool = False          # the reads stopped at the captures' share of the pause


# struct state (probe.bpf.c), as the map holds it.
_STATE = struct.Struct("<4I8Q2I6Q2Q2IQ16Q9Q12I2Q8IQ2IQ2IQQ2I")
_CUT_AT = _STATE.size - 16          # offset of reads_cut_ns
_STATE_FIELDS = ("phase", "stage", "triggers", "tail_calls", "arr", "n", "gi", "nwork", "wi", "fp", "lo",
                 "hi", "gframes", "cur", "records", "dropped", "frames", "gs", "read_errors",
                 "budget_cuts", "t_first", "t_last", "runs", "pad2", "gbuf_at",
                 *(f"gbuf{i}" for i in range(16)),
                 "qhead", "qtail", "cbytes", "copies", "misses", "qcuts", "unknown", "sites", "ex_word",
                 *(f"ex{i}" for i in range(12)), *(f"ex_item{i}" for i in range(13)), "reads_ns",
                 "fslot", "nfull", "fbase", "reads_cut_ns", "cut")
PROGRAMS = ["on_sigtramp", "on_more", "gstart", "frames", "reads"]
STAGES = ("gstart", "frames", "reads")   # progs[0..2]: the tail-call targets


def cflags(ringbuf_pages: int = RINGBUF_PAGES) -> list[str]:
    """The probe's compile-time sizes (the same for every target and request)."""
    return [f"-DRINGBUF_PAGES={ringbuf_pages}", f"-DGS_STEPS={GS_STEPS}", f"-DFR_STEPS={FR_STEPS}",
            f"-DRD_STEPS={RD_STEPS}"]


class _State:
    def __init__(self, raw: bytes):
        self.__dict__.update(zip(_STATE_FIELDS, _STATE.unpack_from(raw)))


class StackProbe:
    """The loaded probe. It has one cursor (the `state` map) and one ring
    buffer: one snapshot at a time uses it, under `lock` (an agent serving
    several requests at once takes turns here)."""

    def __init__(self, ringbuf_pages: int = RINGBUF_PAGES):
        self.lock = threading.RLock()
        self._uprobes: dict[int, list] = {}     # pid -> [(perf event fd, event name)]
        self._records: list[bytes] = []
        self._tables: dict[str, tuple] = {}   # key -> (Placement, hash map -> keys written)
        self._next = dict.fromkeys(("roots", "slots", "shapes", "maps"), 0)   # next free array index
        self._kern = None
        self._ring = None
        self._epoll = None
        self.from_cache = False
        try:
            from bcc.libbcc import _RINGBUF_CB_TYPE, lib
        except ImportError as e:
            raise ProbeError("bcc is not importable (Debian's python3-bpfcc; run scripts/setup.sh)") from e
        self._lib = lib
        try:
            obj, self.from_cache = loader.compiled(SOURCE.read_text(), cflags(ringbuf_pages), PROGRAMS)
            self._kern = kern = loader.load(obj)
            if kern.specs["state"].value_size != _STATE.size or kern.specs["plan"].value_size != _PLAN_SIZE:
                raise ProbeError("probe.bpf.c's state or plan struct does not match probe.py/plan.py")
            for i, name in enumerate(STAGES):
                self._update("progs", struct.pack("<I", i), struct.pack("<I", kern.progs[name]))
            self._cb = _RINGBUF_CB_TYPE(self._on_record)
            self._ring = lib.bpf_new_ringbuf(kern.maps["out"], self._cb, None)
            if not self._ring:
                raise ProbeError("opening the probe's ring buffer failed")
            # The probe wakes this epoll only when a run stops (a K_MARK record
            # with BPF_RB_FORCE_WAKEUP; the others ask for no wakeup), so the
            # agent sleeps while the target's thread runs the probe instead of
            # spinning on a CPU it may need.
            self._epoll = select.epoll()
            self._epoll.register(kern.maps["out"], select.EPOLLIN | select.EPOLLET)
        except BaseException as e:
            self.close()
            if isinstance(e, loader.LoadError):
                raise ProbeError(str(e)) from e
            raise

    # -- lifetime

    def close(self) -> None:
        for pid in list(self._uprobes):
            self._detach(pid)
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._ring:
            self._lib.bpf_free_ringbuf(self._ring)
            self._ring = None
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

    def prepare(self, plan: StackPlan) -> None:
        """Before the pause: the plan in, the state idle, no regs, no old records."""
        self.set_plan(plan)
        self._clear_regs()
        self.drain()

    def set_plan(self, plan: StackPlan) -> None:
        """The plan in and the state idle, keeping the records and registers
        (the next process of a pause that walks several)."""
        self._check_open()
        self._update("plan", struct.pack("<I", 0), plan.pack())
        self._set_phase(PH_IDLE)

    def set_thread_regs(self, regs: dict) -> None:
        """tid -> (pc, sp, bp) of the stopped threads, for running goroutines."""
        for tid, (pc, sp, bp) in regs.items():
            self._update("regs", struct.pack("<I", tid), struct.pack("<3Q", pc, sp, bp))

    def trigger(self, pid: int, tid: int, deadline_ns: int, reads_cut_ns: int = 0) -> RunReport:
        """Arm, SIGURG the unstopped thread tid, and wait for the probe to finish
        (signalling again while it says MORE, and when a signal seems lost: a
        SIGURG sent while one is pending merges with it). Raises ProbeError at
        the deadline, leaving the probe disarmed. No captures' reads start
        after reads_cut_ns (CLOCK_MONOTONIC; 0: none)."""
        self._set_phase(PH_ARMED, reads_cut_ns)
        t0 = time.monotonic_ns()
        try:
            tgkill(pid, tid, signal.SIGURG)
            sent, last_runs = t0, -1
            while True:
                st = self._read_state()
                phase = st.phase
                if phase == PH_DONE:
                    break
                if phase == PH_FAILED:
                    raise ProbeError(f"the probe could not start in pid {pid} (allgs unreadable, "
                                     f"or its tail calls are not in place): {st.read_errors} read errors")
                now = time.monotonic_ns()
                if now > deadline_ns:
                    raise ProbeError(
                        f"the probe did not finish in pid {pid} within the deadline (phase {phase}, "
                        f"{st.triggers} runs, {st.gs} goroutines, {st.frames} frames): thread {tid} "
                        "may block SIGURG or be stuck in the kernel")
                if phase == PH_MORE and (st.runs != last_runs or now - sent > RESEND_NS):
                    last_runs = st.runs
                    tgkill(pid, tid, signal.SIGURG)
                    sent = now
                elif phase == PH_ARMED and now - sent > RESEND_NS:
                    tgkill(pid, tid, signal.SIGURG)
                    sent = now
                self._epoll.poll(min(RESEND_NS, max(0, deadline_ns - now)) / 1e9)
        except BaseException:
            self._set_phase(PH_IDLE)
            raise
        return RunReport(triggers=st.triggers, records=st.records, dropped=st.dropped, frames=st.frames,
                         goroutines=st.gs, read_errors=st.read_errors, budget_cuts=st.budget_cuts,
                         pause_trigger_ns=time.monotonic_ns() - t0, allglen=st.n, runs=st.runs,
                         wake_ns=st.t_first - t0 if st.t_first else 0,
                         probe_ns=st.t_last - st.t_first if st.t_first and st.t_last else 0,
                         sent_at_ns=t0, sites=st.sites, copies=st.copies, cbytes=st.cbytes,
                         misses=st.misses, qcuts=st.qcuts, unknown=st.unknown,
                         reads_ns=st.reads_ns, cut=bool(st.cut))

    def finish(self) -> None:
        """After the resume: whatever SIGURG is still pending finds the probe idle."""
        if not self.closed:
            self._set_phase(PH_IDLE)

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

    def _read_state(self) -> _State:
        k, v = ct.c_uint(0), ct.create_string_buffer(_STATE.size)
        if self._lib.bpf_lookup_elem(self._kern.maps["state"], ct.byref(k), v) < 0:
            raise ProbeError("reading the probe's state failed")
        return _State(v.raw)

    def _set_phase(self, phase: int, reads_cut_ns: int = 0) -> None:
        """The state reset to `phase` (every counter and cursor zero)."""
        raw = bytearray(_STATE.size)
        struct.pack_into("<I", raw, 0, phase)
        struct.pack_into("<Q", raw, _CUT_AT, reads_cut_ns)
        self._update("state", struct.pack("<I", 0), bytes(raw))

    def _clear_regs(self) -> None:
        fd, key, nxt = self._kern.maps["regs"], ct.c_uint(0), ct.c_uint(0)
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
