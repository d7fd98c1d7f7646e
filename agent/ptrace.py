"""Pause every thread of a process for about a millisecond, read registers, resume.

    with PausedProcess(pid, deadline_s=0.005) as p:
        for tid, regs in p.threads.items(): ...
        p.check_deadline()          # the walker calls this between steps
    p.pause_ns                      # first interrupt -> last detach

How: PTRACE_SEIZE every thread (it keeps running), then PTRACE_INTERRUPT it; the
interrupt becomes a PTRACE_EVENT_STOP that waitpid(__WALL) reports. SEIZE, unlike
ATTACH, sends no SIGSTOP, so nothing is left behind in the target and group-stop
keeps working. PTRACE_O_TRACECLONE makes the kernel attach and stop any thread a
seized thread creates, so the listing of /proc/pid/task cannot miss one that is
born while we seize: a creator is either seized (its child is auto-attached) or
still running (its child shows up in the next listing).

The target comes first:
  * we never write its memory or registers; the only requests are SEIZE,
    INTERRUPT, GETREGS, GETEVENTMSG and DETACH;
  * __exit__ always detaches every thread, also on exceptions, KeyboardInterrupt
    and a SIGTERM to the agent (in the main thread a SIGTERM raises SystemExit
    so __exit__ runs); __enter__ detaches what it seized before it raises;
  * a real signal that arrives during the pause stops the thread in a
    signal-delivery-stop; we do not swallow it but pass it to PTRACE_DETACH,
    which delivers it;
  * if the agent process dies anyway (SIGKILL, OOM), the kernel detaches all
    its tracees (exit_ptrace) and they resume; PTRACE_O_EXITKILL is deliberately
    not set. Only clone() threads are followed (no TRACEFORK/TRACEVFORK): child
    processes the target forks are never traced;
  * killed threads are reaped (a traced zombie thread can only be reaped by its
    tracer, and it would keep the whole process from being reaped).

The common case (every thread reaches a plain stop, none is new, every
GETREGS works) runs as one call of agent/_pause.c, from the stops to the
go, and the detaches of resume() as another: in Python each step was a few
lines of cold bytecode, 150-250 us of the pause in all. Whatever goes off
that path comes back here with what was seen, and the steps below go on.
Without the module (no compiler at install), they do it all.

ptrace requests must come from the thread that seized, so the deadline is
cooperative: check_deadline() raises, and the with-statement then detaches.
A thread that never reaches a stop (uninterruptible sleep) cannot be detached
until it does; such threads are kept per agent thread and retried on the next
pause and by release_orphans() (see _Orphans).
"""
from __future__ import annotations

import ctypes
import errno
import gc
import os
import signal
import threading
import time
from dataclasses import dataclass, fields

from agent.errors import (AgentError, PauseDeadlineExceeded, PermissionDenied, ProcessExited,
                          ProcessNotFound)

try:        # agent/_pause.c: the common pause in one call (setup builds it; pip builds it with the package)
    from agent import _pause as _fast
except ImportError:     # no compiler where it was installed: the same steps in Python, 150-250 us slower
    _fast = None

PTRACE_CONT = 7
PTRACE_GETREGS = 12
PTRACE_DETACH = 17
PTRACE_GETEVENTMSG = 0x4201
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_GETSIGMASK = 0x420a

PTRACE_O_TRACECLONE = 0x8
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_STOP = 128

WALL = 0x40000000          # __WALL: wait for threads (clone children) too
DETACH_GRACE_S = 2.0       # how long __exit__ waits for a straggler to stop or die
FAST_PATIENCE_NS = 2_000_000   # the C wait for the stops hands over to the general one after this
RT_PRIO = 1                # hold_cpu(): SCHED_FIFO's lowest priority
_ULONG = ctypes.c_ulong

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long
_SYS_tgkill = 234          # x86_64


def _ptrace(req: int, tid: int, addr: int = 0, data: int | ctypes.c_void_p | None = 0) -> int:
    """One ptrace request; returns 0 or an errno (no exceptions: callers decide)."""
    if _libc.ptrace(req, tid, addr, data) == -1:
        return ctypes.get_errno()
    return 0


def tgkill(tgid: int, tid: int, sig: int) -> None:
    """Send sig to one thread (the way the eBPF trigger pokes a paused thread)."""
    if _libc.syscall(_SYS_tgkill, tgid, tid, sig) == -1:
        e = ctypes.get_errno()
        raise OSError(e, f"tgkill({tgid}, {tid}, {sig}): {os.strerror(e)}")


# ---------------------------------------------------------------- registers

@dataclass(frozen=True)
class Regs:
    """struct user_regs_struct (amd64), in the kernel's order."""
    r15: int
    r14: int
    r13: int
    r12: int
    rbp: int
    rbx: int
    r11: int
    r10: int
    r9: int
    r8: int
    rax: int
    rcx: int
    rdx: int
    rsi: int
    rdi: int
    orig_rax: int
    rip: int
    cs: int
    eflags: int
    rsp: int
    ss: int
    fs_base: int
    gs_base: int
    ds: int
    es: int
    fs: int
    gs: int

    @property
    def pc(self) -> int:
        return self.rip

    @property
    def sp(self) -> int:
        return self.rsp

    def dwarf(self, n: int) -> int:
        """Value of amd64 DWARF register n (System V psABI numbering)."""
        try:
            return getattr(self, _DWARF_NAMES[n])
        except IndexError:
            raise ValueError(f"no amd64 DWARF register {n} in user_regs_struct") from None


_DWARF_NAMES = ("rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
                "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip")
_NREGS = len(fields(Regs))
_RegsBuf = _ULONG * _NREGS


_REG_NAMES = tuple(f.name for f in fields(Regs))
_new = object.__new__


def _getregs_into(tid: int, at: int) -> bool:
    """PTRACE_GETREGS of a stopped thread written at address `at`; False if it is gone (ESRCH)."""
    e = _ptrace(PTRACE_GETREGS, tid, 0, at)
    if e == errno.ESRCH:
        return False
    if e:
        raise AgentError(f"PTRACE_GETREGS on tid {tid}: {os.strerror(e)}")
    return True


def _regs_from(buf) -> Regs:
    # Regs(*buf) costs ~7 us (frozen __init__); filling __dict__ ~2 us: it is paid
    # per thread inside the pause
    regs = _new(Regs)
    regs.__dict__.update(zip(_REG_NAMES, buf[:]))
    return regs


def _sigmask(tid: int) -> int:
    """The blocked-signal mask of a ptrace-stopped thread (all ones if it can't be read)."""
    mask = ctypes.c_uint64()
    if _ptrace(PTRACE_GETSIGMASK, tid, 8, ctypes.addressof(mask)):
        return ~0
    return mask.value


def _event_msg(tid: int) -> int | None:
    msg = _ULONG()
    if _ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(msg)):
        return None
    return msg.value


# ---------------------------------------------------------------- tracee state

@dataclass
class _Tracee:
    tid: int
    auto: bool = False        # attached by the kernel (TRACECLONE): born stopped, not interrupted
    stopped: bool = False     # in a ptrace-stop: GETREGS and DETACH work
    gone: bool = False        # waitpid reported its death (so it is reaped) or ECHILD
    dead: bool = False        # a zombie: it will never stop; _settle reaps it
    detached: bool = False
    inject: int = 0           # signal seen in a signal-delivery-stop: delivered on detach
    stop_ns: int = 0
    detached_ns: int = 0      # when PTRACE_DETACH let it run again


class _Orphans(threading.local):
    """Tracees that never stopped before __exit__ gave up, per tracer thread.

    Only the thread that seized may detach, so the retry happens from the same
    thread: at its next pause, or when the agent calls release_orphans().
    """
    def __init__(self):
        self.items: list[_Tracee] = []


_orphans = _Orphans()


def release_orphans(wait_s: float = 0.0) -> int:
    """Retry detaching this thread's stragglers; returns how many are left."""
    left = _settle(_orphans.items, time.monotonic() + wait_s)
    _orphans.items = left
    return len(left)


def _wait_status(tid: int) -> tuple[int, int] | None:
    """waitpid(tid, __WALL|WNOHANG): (tid, status), None if nothing yet, (0, -1) if not ours."""
    try:
        wpid, status = os.waitpid(tid, WALL | os.WNOHANG)
    except ChildProcessError:
        return (0, -1)
    except InterruptedError:
        return None
    return None if wpid == 0 else (wpid, status)


def _detach(t: _Tracee) -> bool:
    """PTRACE_DETACH a stopped tracee, re-injecting its signal. False if it is not in a stop."""
    e = _ptrace(PTRACE_DETACH, t.tid, 0, t.inject)
    return _detached(t, e, time.monotonic_ns())


def _detached(t: _Tracee, e: int, ns: int) -> bool:
    """A PTRACE_DETACH of t that returned errno e (0: done) at ns, noted."""
    if e == 0:
        t.detached = True
        t.detached_ns = ns
        return True
    if e != errno.ESRCH:
        raise AgentError(f"PTRACE_DETACH tid {t.tid}: {os.strerror(e)}")
    t.stopped = False   # ESRCH: running (stop not yet reached), dying, or gone
    return False


def _detach_pairs(held: list[_Tracee]) -> list[int]:
    """held as agent/_pause.c's detaches take them: tid, signal to deliver, ..."""
    return [x for t in held for x in (t.tid, t.inject)]


def _detach_all_fast(held: list[_Tracee]) -> None:
    """PTRACE_DETACH each of held in one call of agent/_pause.c."""
    _note_detaches(held, _fast.detach(_detach_pairs(held)))


def _note_detaches(held: list[_Tracee], done: list[tuple[int, int]]) -> None:
    """agent/_pause.c's (errno, ns) of each of held, noted; the first error
    other than ESRCH is raised once all are."""
    failed = None
    for t, (e, ns) in zip(held, done):
        try:
            _detached(t, e, ns)
        except AgentError as err:
            failed = failed or err
    if failed is not None:
        raise failed


def _interrupt_all(tids: list[int]) -> None:
    """PTRACE_INTERRUPT each, back to back. ESRCH (the thread is exiting) is
    not an error here: waitpid reports the exit."""
    if _fast is not None:
        _fast.interrupt(tids)
        return
    for tid in tids:
        _ptrace(PTRACE_INTERRUPT, tid)


def _settle(tracees: list[_Tracee], until: float, pid: int = 0, scan: bool = False
            ) -> list[_Tracee]:
    """Detach the tracees that are stopped; wait for the others to stop (then detach) or
    to exit (then reap: a traced zombie thread, which only its tracer may reap, keeps the
    whole process from being reaped).

    With pid, and if anything went off the normal path (or scan), also look in
    /proc/pid/task for threads we trace but never heard of: children auto-attached by
    TRACECLONE whose creator died or was not waited for before it reported the clone.
    Such a child sits in PTRACE_EVENT_STOP and would stay stopped forever, and as a
    zombie it would keep the leader from being reaped."""
    tracees = [t for t in tracees if not (t.detached or t.gone)]
    for t in tracees:
        if t.stopped:
            _detach(t)
    left = [t for t in tracees if not (t.detached or t.gone)]
    scan = bool(pid) and (scan or bool(left))
    known = {t.tid for t in tracees}
    spins, next_scan = 0, 0.0
    while True:
        for t in list(left):
            _settle_one(t, left, known)
        left = [t for t in left if not (t.detached or t.gone)]
        now = time.monotonic()
        if scan and (not left or now >= next_scan):
            next_scan = now + 0.01
            strays = [_Tracee(tid, auto=True) for tid in _traced_by_me(pid) if tid not in known]
            known.update(t.tid for t in strays)
            left += strays
            if strays:
                continue
        if not left or now > until:
            return left
        spins = _backoff(spins)


def _settle_one(t: _Tracee, left: list[_Tracee], known: set[int]) -> None:
    st = _wait_status(t.tid)
    if st is None:
        return
    if st[0] == 0 or not os.WIFSTOPPED(st[1]):
        t.gone = True     # reaped, or not ours
        return
    event = st[1] >> 16
    if event == 0:        # a real signal arrived meanwhile: deliver it
        t.inject = os.WSTOPSIG(st[1])
    elif event == PTRACE_EVENT_CLONE:
        child = _event_msg(t.tid)
        if child and child not in known:
            known.add(child)
            left.append(_Tracee(child, auto=True))
    t.stopped = True
    _detach(t)


def _traced_by_me(pid: int) -> list[int]:
    """Threads of pid whose tracer is the calling thread."""
    me = threading.get_native_id()
    try:
        tids = [int(x) for x in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []
    return [tid for tid in tids if _tracer_of(pid, tid) == me]


def _backoff(spins: int) -> int:
    """Yield the CPU to the threads we are waiting for; sleep once yielding has not helped."""
    if spins < 100:
        os.sched_yield()
    else:
        time.sleep(0.0002)
    return spins + 1


# ---------------------------------------------------------------- the pause

class PausedProcess:
    """Context manager: all threads of pid stopped inside the with-block."""

    def __init__(self, pid: int, deadline_s: float = 1.0, boost: bool = True,
                 leave_running: int | None = None, regs_at=None, before_interrupt=None):
        self.pid = pid
        # One thread not to seize: the eBPF executor's probe runs in it (a
        # SIGURG makes it enter runtime.sigtramp, where the uprobe fires).
        self.leave_running = leave_running
        # Called once, as the pause starts, just before the first thread is
        # interrupted (the eBPF executor signals that thread there).
        self.before_interrupt = before_interrupt
        # regs_at(tid): an address to PTRACE_GETREGS into (the eBPF probe's
        # mapped register slots), or None. Those threads' Regs are made
        # after the pause, by decode_regs(): in it, only the system call.
        self._regs_at = regs_at
        self._raw_regs: dict[int, int] = {}   # tid -> where its registers were written
        self._dest: dict[int, int] = {}       # tid -> where PTRACE_GETREGS writes them
        self._bufs: dict[int, object] = {}    # tid -> our buffer at that address (no regs_at slot)
        # go_at: the address of a u64 set to 1 the moment every thread is
        # stopped and its registers are in (the eBPF probe's go word: the
        # walk starts then, not once the agent is back in its caller);
        # this thread then holds its CPU (hold_cpu).
        self.go_at = 0
        self.go_ns = 0
        self._rt = False                      # hold_cpu() made this thread SCHED_FIFO
        self._fast_args = None                # what agent/_pause.c's stop() needs, made before the pause
        self.fast = False                     # the stops were taken by agent/_pause.c (its common path)
        self.deadline_s = deadline_s
        self.threads: dict[int, Regs] = {}
        self.signals: dict[int, int] = {}     # tid -> signal held back during the pause (re-injected)
        self.refused: dict[int, str] = {}     # tid -> why hand_over could not let it go
        self.paused_at_ns = 0
        self.resumed_at_ns = 0
        self.pause_ns = 0
        self._t: dict[int, _Tracee] = {}
        self._t0 = 0                          # first PTRACE_INTERRUPT, CLOCK_MONOTONIC ns
        self._begun = 0                       # __enter__, CLOCK_MONOTONIC ns: bounds seizing too
        self._refused: set[int] = set()       # dying threads the kernel would not let us seize
        self._tracer = 0
        self._leader_exited = False
        self._entered = False                 # __enter__ completed: every tracee is known
        self._interrupted = False             # interrupt() ran: __enter__ only waits for the stops
        self._released = False                # _release() ran: nothing is left traced
        self._old_handlers: dict[int, object] = {}
        self._boost = boost
        self._gc_held = False                 # _NoGC.hold() done: _release undoes it
        self._boosted = False                 # _nice.raise_() done: _restore_priority undoes it

    # -- public

    def interrupt(self) -> None:
        """The first half of __enter__: seize and interrupt every thread now,
        without waiting for the stops; __enter__ then waits for them (it must
        follow, or _release). Several processes interrupted back to back this
        way start their pauses together (agent.snapshot.snapshot_processes)."""
        if self._t or self._interrupted:
            raise AgentError("a PausedProcess is used once; make a new one")
        self._prologue()
        try:
            self._seize(self._unknown_tasks())
        except BaseException:
            self._release()
            raise
        self._interrupted = True

    def _prologue(self) -> None:
        if _orphans.items:
            release_orphans()
        self._tracer = threading.get_native_id()
        self._begun = time.monotonic_ns()
        self._check_target()
        self._install_signal_handlers()
        self._raise_priority()
        _NoGC.hold()
        self._gc_held = True

    def __enter__(self) -> "PausedProcess":
        if self._released or (self._t and not self._interrupted):
            raise AgentError("a PausedProcess is used once; make a new one")
        if not self._interrupted:
            self._prologue()
        try:
            if not self._interrupted:
                self._seize(self._unknown_tasks())
                self._interrupted = True
            if not self._stop_fast():
                self._seize_and_stop()
                self._read_regs()
                self._go()
            if not self.go_ns:
                # stopping alone may have used up the budget (once a go is
                # given, the walk it started keeps to the deadline itself)
                self.check_deadline()
            self._entered = True
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._release()
        if self._exited() and (exc is None or (isinstance(exc, AgentError)
                                               and not isinstance(exc, ProcessExited))):
            raise ProcessExited(f"pid {self.pid} exited during the pause") from exc
        return False

    def hand_over(self, tid: int, sig: int) -> bool:
        """Lets one stopped thread go, untraced, with sig pending: it enters
        its handler of sig before any code of its own (the eBPF probe's
        other runners start there, their uprobe on the handler's entry). It
        must be stopped, hold no other signal (its handler, run first, would
        run the target's code) and not block sig. False, with the thread
        still stopped, when it can't (`refused` says why)."""
        t = self._t.get(tid)
        why = ("not one of ours" if t is None else "not stopped" if not t.stopped or t.gone
               else f"it holds signal {t.inject}" if t.inject not in (0, sig) else None)
        if why is None and _sigmask(tid) & (1 << (sig - 1)):
            why = f"it blocks signal {sig}"
        if why:
            self.refused[tid] = why
            return False
        if not t.inject:        # one it held already (Go's own SIGURG) goes with the detach
            tgkill(self.pid, tid, sig)
        if not _detach(t):
            self.refused[tid] = "PTRACE_DETACH failed"   # gone: the pending sig is harmless
            return False
        t.inject = 0
        self.signals.pop(tid, None)
        return True

    def resume(self) -> None:
        """Let every thread run on now (as leaving the with-block does, which
        then has nothing left to do): called the moment the pause's work is
        done. The threads stopped at __enter__'s end are let go first, in a
        plain loop: this runs after a walk has evicted the agent's Python
        from the caches, where the general path (_settle, with its lists and
        stragglers) took 40-60 us to its first PTRACE_DETACH. Then the rest,
        as ever, even if one of those detaches failed."""
        try:
            if self._entered and not self._released:
                held = self._held()
                if _fast is not None:
                    _detach_all_fast(held)
                else:
                    for t in held:
                        _detach(t)
                self._drop_cpu()    # now: a thread let go may be waiting for this CPU
                self._restore_priority()
        finally:
            self._release()

    def _held(self) -> list[_Tracee]:
        return [t for t in self._t.values() if t.stopped and not (t.detached or t.gone)]

    def resume_when(self, done_at: int, arrived_at: int, n: int, ncpu: int, wake_fd: int,
                    until_ns: int) -> int | None:
        """resume() the moment the u64 at done_at (the eBPF probe's runners
        done) reaches n, in one call of agent/_pause.c's wait_done(): while
        n - done >= ncpu it sleeps on wake_fd (an epoll fd the probe wakes),
        else it spins. The moment the count was seen (the threads then run
        on); 0 if until_ns came first, or every runner that arrived (the u64
        at arrived_at) is done but not n of them; None without the module
        or outside the block (wait, then resume())."""
        if _fast is None or not self._entered or self._released:
            return None
        held = self._held()
        nice = _nice.after_last() if self._boosted else os.getpriority(os.PRIO_PROCESS, 0)
        code, seen_ns, done = _fast.wait_done(done_at, arrived_at, n, ncpu, wake_fd, until_ns,
                                              _detach_pairs(held), nice)
        if code != _fast.WAIT_DONE:
            return 0
        self._rt = False        # wait_done set the policy and the nice value back with the last detach
        try:
            _note_detaches(held, done)
        finally:
            self._release()
        return seen_ns

    def decode_regs(self) -> None:
        """After the pause: Regs of the threads whose registers went to regs_at."""
        for tid, addr in self._raw_regs.items():
            self.threads[tid] = _regs_from(_RegsBuf.from_address(addr))
        self._raw_regs = {}

    def elapsed_s(self) -> float:
        """Seconds since the first thread was interrupted (0 before)."""
        return (time.monotonic_ns() - self._t0) / 1e9 if self._t0 else 0.0

    def check_deadline(self) -> None:
        """Raise PauseDeadlineExceeded once the pause has run past deadline_s."""
        elapsed = time.monotonic_ns() - self._t0
        if self._t0 and elapsed > self.deadline_s * 1e9:
            raise PauseDeadlineExceeded(
                f"pid {self.pid}: pause at {elapsed / 1e6:.2f} ms exceeds the deadline of "
                f"{self.deadline_s * 1e3:.2f} ms; resuming it (raise deadline_s or capture less)")

    # -- checks before we touch anything

    def _check_target(self) -> None:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                status = f.read()
        except (FileNotFoundError, ProcessLookupError):
            raise ProcessNotFound(f"pid {self.pid} does not exist") from None
        tgid = _status_field(status, "Tgid")
        if tgid != self.pid:
            raise ProcessNotFound(f"pid {self.pid} is a thread of process {tgid}: pause {tgid}")
        tracer = _status_field(status, "TracerPid")
        if tracer:
            raise PermissionDenied(f"pid {self.pid} is already traced by pid {tracer} "
                                   "(a debugger?): detach it first")

    # -- seizing

    def _stop_fast(self) -> bool:
        """The common pause in one call of agent/_pause.c: it waits for the
        interrupted threads' stops, checks that no thread is new, reads the
        registers and says go (go_at). False when it could not (no module,
        or a step off the common path): what it saw is taken in, and the
        general path goes on from there."""
        if _fast is None or self._fast_args is None:
            return False
        pending, known, regs = self._fast_args
        self._fast_args = None
        until = min(self._t0 + int(self.deadline_s * 1e9), time.monotonic_ns() + FAST_PATIENCE_NS)
        code, seen, _, go_ns, self._rt = _fast.stop(self.pid, pending, known, regs, until, self.go_at,
                                                    RT_PRIO if self._boost else 0)
        for tid, status, ns in seen:
            self._take(self._t[tid], None if status < 0 else status, ns)
        if code != _fast.STOP_OK:
            return False
        for t in self._t.values():
            self._keep_regs(t)
        self.go_ns = go_ns
        self.paused_at_ns = max(t.stop_ns for t in self._t.values())
        self.fast = True
        return True

    def _plan_fast(self, seized: list[int]) -> None:
        """Before the first interrupt: stop()'s arguments (made in the pause, they were cold Python)."""
        if _fast is None or self._fast_args is not None:
            return
        known = [*self._t, *self._refused] + ([self.leave_running] if self.leave_running else [])
        self._fast_args = (seized, known, [x for tid in seized for x in (tid, self._regs_dest(tid))])

    def _seize_and_stop(self) -> None:
        """Wait for the stops (seizing and interrupting any thread new in the
        listing) until every thread is in a ptrace-stop and no new one appears."""
        spins = 0
        listing = False   # the seize before this has just listed; the last listing below still runs
        while True:
            if listing:
                self._seize(self._unknown_tasks())
                listing = False
            pending = self._pending()
            progressed = any([self._poll(t) for t in pending])
            if not self._pending():
                if self._process_dead():
                    raise ProcessExited(f"pid {self.pid} exited while being paused")
                # all known threads stopped: one more listing proves none was missed
                if not self._unknown_tasks():
                    break
                self._check_seize_time()
                listing = True
                continue
            self._check_seize_time()
            spins = 0 if progressed else _backoff(spins)
            if spins % 16 == 15:
                self._find_dead()
        self.paused_at_ns = max(t.stop_ns for t in self._t.values() if t.stopped)

    def _unknown_tasks(self) -> list[int]:
        """Threads in /proc not yet traced, leaving out dying ones that refused a seize
        (they stay listed until reaped and would keep the listing loop going)."""
        return [tid for tid in self._list_tasks()
                if tid not in self._t and tid not in self._refused and tid != self.leave_running]

    def _check_seize_time(self) -> None:
        """The deadline also bounds seizing, even before any thread was interrupted."""
        self.check_deadline()
        if time.monotonic_ns() - self._begun > self.deadline_s * 1e9:
            raise PauseDeadlineExceeded(f"pid {self.pid}: its threads could not all be stopped "
                                        f"within {self.deadline_s * 1e3:.0f} ms; resuming it")

    def _pending(self) -> list[_Tracee]:
        """Tracees we still wait for: not stopped, not reaped, not a zombie."""
        return [t for t in self._t.values() if not (t.stopped or t.gone or t.dead)]

    def _find_dead(self) -> None:
        """A slow stop may be a dying process: a zombie never stops, and a killed thread
        leaves its stop without telling us until waited for; the leader of a dying
        process is not reported while other threads are unreaped."""
        for t in self._t.values():
            if t.stopped and not t.gone:
                self._poll(t)
            if not (t.stopped or t.gone) and _proc_state(self.pid, t.tid) in ("", "Z", "X"):
                t.dead = True

    def _process_dead(self) -> bool:
        alive = [t for t in self._t.values() if not (t.gone or t.dead)]
        leader = self._t.get(self.pid)
        return self._leader_exited or not alive or (leader is not None and leader.dead)

    def _list_tasks(self) -> list[int]:
        try:
            tids = [int(x) for x in os.listdir(f"/proc/{self.pid}/task")]
        except FileNotFoundError:
            if self._t:
                raise ProcessExited(f"pid {self.pid} exited while being paused") from None
            raise ProcessNotFound(f"pid {self.pid} does not exist") from None
        tids.sort(key=lambda tid: tid != self.pid)   # the leader first: its errors speak for the process
        return tids

    def _seize(self, tids: list[int]) -> None:
        """SEIZE all, then INTERRUPT all: stops land close together."""
        seized = []
        for tid in tids:
            e = _ptrace(PTRACE_SEIZE, tid, 0, PTRACE_O_TRACECLONE)
            if e == 0:
                self._t[tid] = _Tracee(tid)
                seized.append(tid)
            else:
                self._seize_failed(tid, e)
        try:
            if seized and not self._t0:
                self._plan_fast(seized)
                self._t0 = time.monotonic_ns()
                if self.before_interrupt is not None:
                    self.before_interrupt()
        finally:
            # (also when that hook failed: a seized thread must stop to be detached)
            _interrupt_all(seized)

    def _seize_failed(self, tid: int, e: int) -> None:
        if e == errno.ESRCH:
            if tid == self.pid and not self._t:
                raise ProcessNotFound(f"pid {self.pid} does not exist")
            self._refused.add(tid)
            return   # a thread that exited between the listing and the seize
        if e == errno.EPERM:
            if _proc_state(self.pid, tid) in ("", "Z", "X"):
                self._refused.add(tid)
                return   # exiting: the kernel refuses to attach to a dying thread
            tracer = _tracer_of(self.pid, tid)
            if tracer == self._tracer:
                self._adopt(tid)   # auto-attached by TRACECLONE before we saw the clone event
                return
            if tracer:
                raise PermissionDenied(f"tid {tid} of pid {self.pid} is traced by {tracer}: "
                                       "detach that debugger first")
            raise PermissionDenied(f"ptrace denied on pid {self.pid}: run as root or set "
                                   "kernel.yama.ptrace_scope=0")
        raise AgentError(f"PTRACE_SEIZE tid {tid} of pid {self.pid}: {os.strerror(e)}")

    def _adopt(self, tid: int) -> None:
        """A thread the kernel attached for us; it starts in PTRACE_EVENT_STOP."""
        if tid not in self._t:
            self._t[tid] = _Tracee(tid, auto=True)

    # -- waiting

    def _poll(self, t: _Tracee) -> bool:
        """One non-blocking waitpid on a tracee; True if it reported something."""
        st = _wait_status(t.tid)
        if st is None:
            return False
        self._take(t, st[1] if st[0] else None, time.monotonic_ns())
        return True

    def _take(self, t: _Tracee, status: int | None, ns: int) -> None:
        """What waitpid reported of t at ns (None: it is no longer our tracee,
        reaped elsewhere)."""
        if status is None:
            t.gone = True
        elif os.WIFSTOPPED(status):
            self._on_stop(t, os.WSTOPSIG(status), status >> 16, ns)
        else:                    # WIFEXITED / WIFSIGNALED: the thread is dead and now reaped
            t.gone = True
            if t.tid == self.pid:
                self._leader_exited = True

    def _on_stop(self, t: _Tracee, sig: int, event: int, ns: int) -> None:
        t.stopped = True
        t.stop_ns = ns
        if event == PTRACE_EVENT_CLONE:
            child = _event_msg(t.tid)
            if child:
                self._adopt(child)
        elif event == 0:
            # signal-delivery-stop: a real signal reached the thread; hold it, deliver on detach
            t.inject = sig
        # PTRACE_EVENT_STOP (our interrupt, or group-stop with a stop signal, which
        # the kernel re-establishes on detach) and PTRACE_EVENT_EXIT need nothing.

    def _read_regs(self) -> None:
        for t in self._t.values():
            if t.stopped and not t.gone:
                if not _getregs_into(t.tid, self._regs_dest(t.tid)):
                    # killed out of its stop: _settle reaps the zombie, which only we can
                    # (a traced zombie thread keeps the whole process from being reaped)
                    t.stopped = False
                    continue
                self._keep_regs(t)
        if not (self.threads or self._raw_regs):
            raise ProcessExited(f"pid {self.pid} exited while being paused")

    def _regs_dest(self, tid: int) -> int:
        """Where PTRACE_GETREGS writes tid's registers: regs_at(tid), else a
        buffer of this pause's own (agent threads may pause processes concurrently)."""
        at = self._dest.get(tid)
        if at is None:
            at = self._regs_at(tid) if self._regs_at else None
            if not at:
                buf = self._bufs[tid] = _RegsBuf()
                at = ctypes.addressof(buf)
            self._dest[tid] = at
        return at

    def _keep_regs(self, t: _Tracee) -> None:
        """The registers of stopped t, read: as Regs, or (a regs_at slot) made into Regs after the pause."""
        if not t.stopped or t.gone:
            return
        buf = self._bufs.get(t.tid)
        if buf is None:
            self._raw_regs[t.tid] = self._dest[t.tid]      # decode_regs()
        else:
            self.threads[t.tid] = _regs_from(buf)
        if t.inject:
            self.signals[t.tid] = t.inject

    def _go(self) -> None:
        """Every thread stopped, its registers in: the go word (go_at) says so."""
        if self.go_at and not self.go_ns:
            ctypes.c_uint64.from_address(self.go_at).value = 1
            self.go_ns = time.monotonic_ns()
            self.hold_cpu()

    def hold_cpu(self) -> None:
        """This thread runs SCHED_FIFO until the threads are let go (_release).
        For the eBPF walk: the agent lets runners go that wake on its own CPU
        and never sleep until the walk ends, and at nice -20 one of them
        still took the CPU from it at once (a woken task's lag, in EEVDF),
        in 13 of 30 snapshots, and kept it for the whole walk: the agent
        noticed its end 0.1-0.2 ms late, its detaches were preempted by the
        threads they woke. As FIFO it runs on until it sleeps (the walk's
        wait: it must then never spin, probe.py), and when woken it runs at
        once. Never in the stops' wait: the threads to stop need its CPU."""
        if self._rt or not self._boost:
            return
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIO))
            self._rt = True
        except OSError:
            pass                # no CAP_SYS_NICE: as we are

    @property
    def holds_cpu(self) -> bool:
        """hold_cpu() is in force: a wait must sleep, not spin (a spin would keep a runner off this CPU)."""
        return self._rt

    def _drop_cpu(self) -> None:
        if self._rt:
            self._rt = False
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))   # the nice value stays

    # -- releasing

    def _release(self) -> None:
        """Detach everything, whatever else happens (also KeyboardInterrupt mid-way).
        Once: a second call (an interrupt() whose __enter__ failed) does nothing."""
        if self._released:
            return
        self._released = True
        pending: BaseException | None = None
        self._drop_cpu()    # before any wait for a straggler: it may need this CPU
        try:
            while True:
                try:
                    self._detach_all()
                    break
                except (AgentError, OSError):
                    raise
                except BaseException as e:     # an async exception: finish detaching first
                    pending = pending or e
        finally:
            self._restore_priority()
            self._restore_signal_handlers()
            if self._gc_held:
                self._gc_held = False
                _NoGC.release()
        if pending is not None:
            raise pending

    def _detach_all(self) -> None:
        if not self._t:
            return
        left = _settle(list(self._t.values()), time.monotonic() + DETACH_GRACE_S,
                       self.pid, scan=not self._entered)
        if left:
            _orphans.items.extend(left)
        if not self.resumed_at_ns:
            # the last thread let go, not this bookkeeping's end
            self.resumed_at_ns = max((t.detached_ns for t in self._t.values()), default=0) or time.monotonic_ns()
            self.pause_ns = self.resumed_at_ns - self._t0 if self._t0 else 0
        if left:
            raise AgentError(
                f"pid {self.pid}: threads {[t.tid for t in left]} never reached a stop within "
                f"{DETACH_GRACE_S}s (uninterruptible sleep?); they stay traced until they stop: "
                "call agent.ptrace.release_orphans() from this thread, or exit the agent")

    def _exited(self) -> bool:
        if self._t and self._process_dead():
            return True
        return _proc_state(self.pid) in ("", "Z", "X")

    # -- our own signals

    def _install_signal_handlers(self) -> None:
        """In the main thread, make SIGTERM/SIGINT raise so the with-statement detaches."""
        if threading.current_thread() is not threading.main_thread():
            return   # only the main thread may set handlers; the kernel detaches if we die
        for sig, exc in ((signal.SIGTERM, SystemExit), (signal.SIGINT, KeyboardInterrupt)):
            old = signal.getsignal(sig)
            if old in (signal.SIG_DFL, None):
                self._old_handlers[sig] = old
                signal.signal(sig, _raiser(exc, sig))

    def _raise_priority(self) -> None:
        """nice -20 for this agent thread while the target is stopped: on a busy machine a
        descheduled tracer stretches the pause, and resumed target threads would otherwise
        preempt us between detaches. Not SCHED_FIFO: our waits spin on sched_yield, which
        would starve the very threads we wait for on a single CPU (hold_cpu is for after)."""
        if self._boost and not self._boosted:
            self._boosted = True
            _nice.raise_()

    def _restore_priority(self) -> None:
        if self._boosted:
            self._boosted = False
            _nice.restore()

    def _restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()


class _Nice(threading.local):
    """This thread's nice value, -20 while any of its pauses is on (a
    snapshot of several processes overlaps them, and resumes them one by
    one): the value before the first is restored after the last, not by
    each in turn (the first one's saved value of -20 was restored last,
    and the thread stayed at -20)."""

    def __init__(self):
        self.depth = 0
        self.saved: int | None = None

    def raise_(self) -> None:
        if self.depth == 0:
            try:
                self.saved = os.getpriority(os.PRIO_PROCESS, 0)   # 0: this thread on Linux
                os.setpriority(os.PRIO_PROCESS, 0, -20)
            except OSError:
                self.saved = None                                 # not root: run as we are
        self.depth += 1

    def restore(self) -> None:
        self.depth -= 1
        if self.depth == 0 and self.saved is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, self.saved)
            except OSError:
                pass
            self.saved = None

    def after_last(self) -> int:
        """The nice value once the calling pause restores: the saved one if
        it is the last pause on, else the pauses' -20."""
        return self.saved if self.depth == 1 and self.saved is not None else os.getpriority(os.PRIO_PROCESS, 0)


_nice = _Nice()


class _NoGC:
    """Python's cyclic collector held off while any pause is on (pauses of
    several agent threads overlap): one collection of an old generation
    takes 1-100 ms (a gen2 of 87 ms, a gen1 of 1.3 ms, in the bench's
    process), and one that fell inside a pause would be the target's."""
    lock = threading.Lock()
    depth = 0
    was_enabled = False

    @classmethod
    def hold(cls) -> None:
        with cls.lock:
            if cls.depth == 0:
                cls.was_enabled = gc.isenabled()
                gc.disable()
            cls.depth += 1

    @classmethod
    def release(cls) -> None:
        with cls.lock:
            cls.depth -= 1
            if cls.depth == 0 and cls.was_enabled:
                gc.enable()


def _raiser(exc: type[BaseException], sig: int):
    def handler(signum, frame):
        raise exc(128 + signum) if exc is SystemExit else exc()
    return handler


def process_gone(pid: int) -> bool:
    """pid has exited (a zombie, or reaped)."""
    return _proc_state(pid) in ("", "Z", "X")


def _status_field(status: str, name: str) -> int:
    for line in status.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def _tracer_of(pid: int, tid: int) -> int:
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            return _status_field(f.read(), "TracerPid")
    except OSError:
        return 0


def _proc_state(pid: int, tid: int | None = None) -> str:
    """State letter of /proc/pid/stat or of one thread ('' if it is gone)."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    try:
        with open(path) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
