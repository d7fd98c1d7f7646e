"""The eBPF executor against the ptrace executor and against Go's own traceback.

The states program parks goroutines in known states; each build is
snapshotted by both executors (eBPF first, then ptrace) and then Go dumps
its own traceback (SIGQUIT, GOTRACEBACK=system). The eBPF snapshot must list
the same goroutines with the same statuses, wait reasons, creators, labels
and frames as the ptrace one, for every goroutine parked in a stable state
(the others may move between the two snapshots), and its parked stacks must
be Go's own. Skips, naming what is missing, where the kernel can't run BPF.
"""
from __future__ import annotations

import os

import pytest

from ebpf_helpers import loaded_prog_ids, our_uprobes, prog_ids, require_ebpf
from gobuild import build
from oracle import parse_go_traceback
from stack_compare import NAMED, STABLE, assert_stacks_match
from targets import run_target


@pytest.fixture(scope="module")
def probe():
    require_ebpf()
    from agent.ebpf.probe import StackProbe
    with StackProbe() as p:
        yield p
    assert not our_uprobes()


# How the probe copies a stack: "chain" follows every frame pointer (the
# words at sp and a (saved bp, return address) pair per frame); "whole"
# copies a stack in use up to 1 KiB in one read (the default), the rest by chain.
MODES = {"chain": 0, "whole": 1024}


def _snap(pid, target, probe, executor, mode="whole"):
    from agent.snapshot import SnapshotOptions, snapshot_process
    from agent.ebpf import executor as ebpf
    from agent.ebpf.plan import StackBudgets
    opts = SnapshotOptions(executor="ptrace")
    if executor == "ebpf":
        return ebpf.snapshot_process(pid, target, opts, probe=probe,
                                     budgets=StackBudgets(full_stack=MODES[mode]))
    return snapshot_process(pid, target, opts)


def _both(binary, probe, mode="whole"):
    from server.snapshot_job import load_target
    with run_target(binary, env={"GOTRACEBACK": "system"}) as t:
        target = load_target(str(binary), None, {})
        ebpf = _snap(t.pid, target, probe, "ebpf", mode)
        ptrace = _snap(t.pid, target, probe, "ptrace")
        level2 = parse_go_traceback(t.quit_dump())
    assert ebpf.error is None, ebpf.error
    assert ptrace.error is None, ptrace.error
    return ebpf, ptrace, level2


def _frames(g):
    return [(f.function, f.file, f.line, f.pc, f.inlined, f.hidden, f.entry) for f in g.frames]


def assert_same_as_ptrace(ebpf, ptrace, level2):
    ours, theirs = {g.goid: g for g in ebpf.goroutines}, {g.goid: g for g in ptrace.goroutines}
    assert set(ours) == set(theirs)
    compared = 0
    for goid, g in ours.items():
        p = theirs[goid]
        assert (g.created_by, g.created_by_file, g.created_by_line, g.parent_goid, g.is_system,
                g.labels) == (p.created_by, p.created_by_file, p.created_by_line, p.parent_goid,
                              p.is_system, p.labels), f"goroutine {goid}"
        go = level2.get(goid)
        if go is None or go.wait_reason not in STABLE:
            continue
        assert (g.status, g.wait_reason, g.error) == (p.status, p.wait_reason, p.error), f"goroutine {goid}"
        assert _frames(g) == _frames(p), f"goroutine {goid}"
        compared += 1
    assert compared >= len(NAMED)


@pytest.fixture(scope="module", params=list(MODES))
def states(probe, request):
    return _both(build("states"), probe, request.param)


def test_same_goroutines_and_frames_as_ptrace(states):
    assert_same_as_ptrace(*states)


def test_parked_stacks_are_go_own(states):
    ebpf, _, level2 = states
    assert assert_stacks_match(ebpf, level2) >= len(NAMED)


def test_the_probe_saw_every_goroutine_go_shows(states):
    ebpf, _, level2 = states
    assert {g.goid for g in ebpf.goroutines} == set(level2) - {0}


def test_running_and_syscall_goroutines_unwind(states):
    """The spinning goroutine runs on a thread (registers) or waits to; the
    blocked syscall starts at syscallsp: both unwind to their Go function."""
    ebpf, _, _ = states
    by_fn = {f.function: g for g in ebpf.goroutines for f in g.frames}
    assert by_fn["main.blockedSyscall"].status == "syscall"
    assert by_fn["main.blockedSyscall"].error is None
    spin = by_fn["main.spin"]
    assert spin.status in ("running", "runnable") and spin.error is None


# Go 1.21 has no g.syscallbp (the probe copies the stack at syscallsp instead);
# PIE moves every address by the load bias.
MATRIX = [(r, m, c) for r in ("1.21.13", "1.27.3") for m in ("exe", "pie") for c in MODES]


@pytest.mark.parametrize("release,mode,copy", MATRIX, ids=[f"go{r}-{m}-{c}" for r, m, c in MATRIX])
def test_version_matrix(probe, release, mode, copy):
    flags = ("-buildmode=pie",) if mode == "pie" else ()
    binary = build("states", flags, release=release, env={"CGO_ENABLED": "1"})
    ebpf, ptrace, level2 = _both(binary, probe, copy)
    assert ebpf.go_version == f"go{release}"
    assert (ebpf.load_bias not in (0, None)) == (mode == "pie")
    assert_same_as_ptrace(ebpf, ptrace, level2)
    assert assert_stacks_match(ebpf, level2) >= len(NAMED)


def test_nothing_left_in_the_kernel_after_close():
    """A probe that was loaded, attached and closed leaves no uprobe and no
    BPF program behind (nor does the module's probe: see its fixture)."""
    require_ebpf()
    from agent.ebpf.probe import PROGRAMS, StackProbe
    with run_target(build("states")) as t:
        from server.snapshot_job import load_target
        from agent.ebpf.executor import probe_offsets
        target = load_target(str(build("states")), None, {})
        with StackProbe() as p:
            ids = prog_ids(p)
            assert len(ids) == len(PROGRAMS) and loaded_prog_ids(ids, settle_s=0) == ids
            with p.attached(t.pid, f"/proc/{t.pid}/exe", probe_offsets(target.binary)):
                pass
    assert not loaded_prog_ids(ids)
    assert not our_uprobes()


def test_many_goroutines_take_more_than_one_signal(probe):
    """6,000 parked goroutines walked frame by frame need more runs than one
    SIGURG gives (33 tail calls on each of three uprobes): the probe says MORE,
    the agent signals again, and the walk goes on where it stopped. The
    snapshot still equals ptrace's."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.run import PauseMeter, build_pausemeter
    from agent.ebpf import executor as ebpf
    from agent.ebpf.plan import StackBudgets
    from agent.snapshot import SnapshotOptions, snapshot_process
    from server.snapshot_job import load_target
    binary = build_pausemeter()
    pm = PauseMeter(binary, 6000)
    try:
        target = load_target(str(binary), None, {})
        opts = SnapshotOptions(executor="ptrace")
        rec = ebpf.snapshot_process(pm.pid, target, opts, probe=probe, budgets=StackBudgets(full_stack=0))
        ref = snapshot_process(pm.pid, target, opts)
    finally:
        pm.close()
    assert rec.error is None and rec.probe_report.triggers >= 2, rec.probe_report
    parked = lambda r: {g.goid: _frames(g) for g in r.goroutines   # noqa: E731
                        if any(f.function == "main.park" for f in g.frames)}
    assert len(parked(rec)) == 6000 and parked(rec) == parked(ref)


def test_a_first_process_whose_pause_fails_lets_its_runner_go(probe, monkeypatch):
    """The first process's runner is signalled as its pause starts and waits
    in the probe for the go. If that pause then fails, the runner must leave
    the probe at once, not loop in its signal handler (holding a CPU and
    whatever it was running) until the snapshot ends: when the other
    process's walk starts, the runner's state has stopped counting rounds.
    That process is walked as usual; nothing is left traced."""
    import time
    from agent.errors import AgentError
    from agent.ebpf import executor as ebpf
    from agent.ptrace import PausedProcess
    from agent.snapshot import SnapshotOptions
    from server.snapshot_job import load_target
    from test_ebpf_lifecycle import _untraced_and_alive
    binary = build("states")
    with run_target(binary, dump=False) as a, run_target(binary, dump=False) as b:
        real_walk, rounds = ebpf._Job.walk, []

        def failing(real):      # the pause's last step before the go, on either path through it
            def step(self):
                if self.pid == a.pid:
                    time.sleep(0.02)        # the runner has arrived and waits
                    raise AgentError("injected: the first pause fails after its runner was signalled")
                return real(self)
            return step

        def walk(job, probe_, first):
            if job.pid == b.pid:
                w1 = probe_._state_of(0).waits
                time.sleep(0.05)
                rounds.append(probe_._state_of(0).waits - w1)
            real_walk(job, probe_, first)

        monkeypatch.setattr(PausedProcess, "_read_regs", failing(PausedProcess._read_regs))
        monkeypatch.setattr(PausedProcess, "_stop_fast", failing(PausedProcess._stop_fast))
        monkeypatch.setattr(ebpf._Job, "walk", walk)
        target = load_target(str(binary), None, {})
        recs = ebpf.snapshot_together([(a.pid, target), (b.pid, target)], SnapshotOptions(), probe)
        _untraced_and_alive(a.pid)
        _untraced_and_alive(b.pid)
    assert "injected" in (recs[0].error or ""), recs[0].error
    assert recs[1].error is None and set(NAMED) <= {f.function for g in recs[1].goroutines for f in g.frames}
    assert rounds == [0], f"the failed process's runner went {rounds} more rounds through the probe"


def test_two_processes_are_paused_together(probe):
    """Two processes in one eBPF snapshot: both are stopped before either is
    walked (how close their pause starts are is the bench's business), and
    each gets its own goroutines (records split by the thread that ran each
    walk)."""
    from agent.ebpf import executor as ebpf
    from agent.snapshot import SnapshotOptions
    from server.snapshot_job import load_target
    binary = build("states")
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    with run_target(binary, dump=False) as a, run_target(binary, dump=False) as b:
        target = load_target(str(binary), None, {})
        recs = ebpf.snapshot_together([(a.pid, target), (b.pid, target)], SnapshotOptions(), probe)
    assert [r.error for r in recs] == [None, None]
    # the agent's thread as it was: its nice value, SCHED_OTHER (each pause's -20 and FIFO undone)
    assert (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0)) == (nice, os.SCHED_OTHER)
    assert [r.pid for r in recs] == [a.pid, b.pid]
    for r in recs:
        names = {f.function for g in r.goroutines for f in g.frames}
        assert set(NAMED) <= names
    assert sorted(r.pause_skew_ns for r in recs)[0] == 0
    # the first process's runner is signalled as its pause starts, but no walk goes before all are stopped
    assert min(r.probe_report.go_at_ns for r in recs) >= max(r.pause_start_ns for r in recs)
