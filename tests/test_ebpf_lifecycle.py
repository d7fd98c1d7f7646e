"""The eBPF executor leaves nothing behind: after errors, timeouts and many
snapshots, no uprobe, no BPF program, no perf event of ours remains, and the
target runs on, untraced. `auto` says why it fell back."""
from __future__ import annotations

import os

import pytest

from ebpf_helpers import loaded_prog_ids, our_uprobes, prog_ids, require_ebpf, uprobe_fds_of
from gobuild import build
from targets import run_target


def _untraced_and_alive(pid: int) -> None:
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    assert int(status["TracerPid"]) == 0
    assert status["State"].split()[0] in ("S", "R", "D")
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            assert "TracerPid:\t0" in f.read(), f"thread {tid} still traced"


@pytest.fixture(scope="module")
def states():
    require_ebpf()
    from server.snapshot_job import load_target
    binary = build("states")
    with run_target(binary, dump=False) as t:
        yield t, load_target(str(binary), None, {})


def test_a_runner_gone_before_its_signal_is_the_records_error(states, monkeypatch):
    """The target (or the runner thread) dies between the pause and the
    SIGURG: tgkill fails, and that is the record's error (the CLI then still
    writes its file), not an OSError out of the snapshot; nothing is left
    traced or attached."""
    from agent.ebpf import executor as ebpf
    from agent.snapshot import SnapshotOptions
    t, target = states
    monkeypatch.setattr(ebpf, "pick_runners", lambda pid, n=1: [1 << 30])   # a thread that can't exist
    rec = ebpf.snapshot_process(t.pid, target, SnapshotOptions())
    assert rec.error and "SIGURG to its thread" in rec.error and "gone" in rec.error, rec.error
    _untraced_and_alive(t.pid)
    assert not our_uprobes()


@pytest.mark.parametrize("path", ["c", "python"])
def test_the_probe_wakes_the_agent_when_a_runner_is_done(monkeypatch, path):
    """While every CPU has a runner walking, the agent sleeps on the ring
    buffer; the runner that ends its share wakes it (the K_MARK record).
    Here it sleeps whatever the CPUs, and its looks are 30 s apart: only
    the probe's wakeup ends its wait early. In agent/_pause.c's wait_done
    (path c) that wait ends in well under the 30 s; in Python's, the poll
    returns the wakeup's event (without it, it returns empty). 2,000
    goroutines, so that the walk is still on when the agent starts to wait."""
    import time
    from agent import ptrace
    from agent.ebpf import executor as ebpf
    from agent.ebpf import probe as pr
    from agent.snapshot import SnapshotOptions
    from bench.run import PauseMeter, build_pausemeter
    from server.snapshot_job import load_target
    require_ebpf()

    class Seen:
        def __init__(self, real):
            self.real, self.events = real, 0

        def poll(self, timeout=None):
            got = self.real.poll(timeout)
            self.events += len(got) if timeout else 0
            return got

        def fileno(self):
            return self.real.fileno()

        def close(self):
            self.real.close()

    waits, real_when = [], ptrace.PausedProcess.resume_when

    def resume_when(self, *a):
        t = time.monotonic()
        seen = real_when(self, *a)
        waits.append((seen, time.monotonic() - t))
        return seen

    if path == "python":
        monkeypatch.setattr(ptrace, "_fast", None)
    monkeypatch.setattr(ptrace.PausedProcess, "resume_when", resume_when)
    monkeypatch.setattr(pr, "cpus", lambda: 1)
    monkeypatch.setattr(pr, "LOOK_NS", 30_000_000_000)
    monkeypatch.setenv("EXRAY_EBPF_RUNNERS", "1")
    binary = build_pausemeter()
    pm = PauseMeter(binary, 2000)
    try:
        with pr.StackProbe() as probe:
            probe._wake = seen = Seen(probe._wake)
            rec = ebpf.snapshot_process(pm.pid, load_target(str(binary), None, {}),
                                        SnapshotOptions(deadline_s=60), probe=probe)
        assert rec.error is None and len(rec.goroutines) >= 2000, rec.error
        _untraced_and_alive(pm.pid)
    finally:
        pm.close()
    if path == "python":
        assert waits == [(None, pytest.approx(0, abs=1))] and seen.events >= 1, "the walk ended without waking the agent"
    else:
        assert waits and waits[-1][0] > 0 and waits[-1][1] < 10, f"the wait did not end by the probe's wakeup: {waits}"


def test_a_process_runs_on_as_soon_as_its_walk_ends(states, monkeypatch):
    """The agent detaches the stopped threads the moment it sees the walk
    done (trigger's resume), not after unwinding to the pause block's end:
    when the walk returns, still inside that block, nothing is traced."""
    from agent.ebpf import executor as ebpf
    from agent.snapshot import SnapshotOptions
    t, target = states
    real, seen = ebpf._Job.walk, []

    def walk(job, probe, first):
        real(job, probe, first)
        _untraced_and_alive(job.pid)
        seen.append(job.paused.pause_ns)

    monkeypatch.setattr(ebpf._Job, "walk", walk)
    rec = ebpf.snapshot_process(t.pid, target, SnapshotOptions())
    assert rec.error is None and seen and seen[0] > 0 and rec.pause_ns == seen[0], (rec.error, seen)


@pytest.mark.parametrize("path", ["c", "python"])
def test_the_agent_holds_its_cpu_from_the_go_to_the_resume(states, monkeypatch, path):
    """From the go until its threads are let go, the agent's thread runs
    SCHED_FIFO (PausedProcess.hold_cpu), so a runner it lets go can't keep
    it off its CPU for the whole walk; then SCHED_OTHER again, its nice
    value as before, also after a walk that failed."""
    from agent import ptrace
    from agent.ebpf import executor as ebpf
    from agent.ebpf import probe as pr
    from agent.snapshot import SnapshotOptions
    t, target = states
    if path == "python":
        monkeypatch.setattr(ptrace, "_fast", None)
    seen, real_wait = [], pr.StackProbe._wait

    def wait(self, *a):
        seen.append(os.sched_getscheduler(0))
        return real_wait(self, *a)

    monkeypatch.setattr(pr.StackProbe, "_wait", wait)
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    rec = ebpf.snapshot_process(t.pid, target, SnapshotOptions())
    assert rec.error is None and seen == [os.SCHED_FIFO], (rec.error, seen)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER and os.getpriority(os.PRIO_PROCESS, 0) == nice

    def failing(self, *a):
        raise ProbeError("injected")
    from agent.ebpf.probe import ProbeError
    monkeypatch.setattr(pr.StackProbe, "_wait", failing)
    rec = ebpf.snapshot_process(t.pid, target, SnapshotOptions())
    assert "injected" in (rec.error or "")
    assert os.sched_getscheduler(0) == os.SCHED_OTHER and os.getpriority(os.PRIO_PROCESS, 0) == nice
    _untraced_and_alive(t.pid)


def test_errors_and_timeouts_leave_nothing(states):
    from agent.ebpf.executor import probe_offsets, snapshot_process
    from agent.ebpf.plan import StackPlan
    from agent.ebpf.probe import ProbeError, StackProbe
    from agent.goroutines import _G_FIELDS
    from agent.snapshot import SnapshotOptions
    t, target = states
    fds = uprobe_fds_of(os.getpid())
    with StackProbe() as probe:
        ids = prog_ids(probe)
        # A pause whose deadline has passed before it starts: the record says so.
        rec = snapshot_process(t.pid, target, SnapshotOptions(deadline_s=1e-9), probe=probe)
        assert rec.error and "deadline" in rec.error
        assert uprobe_fds_of(os.getpid()) == fds
        # A probe that never runs (its plan names another process): a timeout.
        plan = StackPlan.from_layout(target.layout, 1, _G_FIELDS)
        with probe.attached(t.pid, f"/proc/{t.pid}/exe", probe_offsets(target.binary)):
            probe.prepare(plan)
            import time
            with pytest.raises(ProbeError, match="did not finish"):
                probe.trigger(t.pid, [t.pid], time.monotonic_ns() + 50_000_000)
            probe.finish()
        # An exception inside the attached block detaches too.
        with pytest.raises(RuntimeError):
            with probe.attached(t.pid, f"/proc/{t.pid}/exe", probe_offsets(target.binary)):
                raise RuntimeError("boom")
        assert uprobe_fds_of(os.getpid()) == fds
        rec = snapshot_process(t.pid, target, SnapshotOptions(), probe=probe)
        assert rec.error is None and rec.goroutines
    assert not loaded_prog_ids(ids)
    assert not our_uprobes()
    assert uprobe_fds_of(os.getpid()) == fds
    _untraced_and_alive(t.pid)


def test_captures_run_in_the_probe_and_a_retry_says_why(states):
    """A spec with captures runs in the probe (no fallback warning); where its
    copies lack what the decoder reads, the snapshot is taken again with
    ptrace and the warning says so. Either way the rows are ptrace's."""
    from agent.snapshot import SnapshotOptions, snapshot_processes
    from probe_compiler.spec import parse_spec
    from server.snapshot_job import load_target
    t, _ = states
    spec = parse_spec("version: 1\nfunctions:\n  main.blockedConnRead:\n    capture: [c, buf]\n")
    target = load_target(f"/proc/{t.pid}/exe", spec, {})
    [ref] = snapshot_processes([(t.pid, target)], SnapshotOptions(executor="ptrace"))
    for executor in ("auto", "ebpf"):
        [rec] = snapshot_processes([(t.pid, target)], SnapshotOptions(executor=executor))
        assert rec.error is None
        assert not any("executor auto: used ptrace" in w for w in rec.warnings)
        retried = [w for w in rec.warnings if "taken again with ptrace" in w]
        assert bool(retried) == bool(getattr(rec, "ebpf_retry", None))
        assert _capture_rows(rec) == _capture_rows(ref)


def _capture_rows(rec) -> dict:
    return {g.goid: [(c.function, c.depth, c.values, c.raw, c.errors) for c in g.captures]
            for g in rec.goroutines if g.captures}


def test_cli_takes_the_executor(states, tmp_path, capsys):
    from server.cli import main
    t, _ = states
    out = tmp_path / "s.sqlite"
    assert main(["snapshot", "--pid", str(t.pid), "--executor", "ebpf", "-o", str(out)]) == 0
    assert "goroutines, paused" in capsys.readouterr().out
    import sqlite3
    db = sqlite3.connect(out)
    assert db.execute("SELECT count(*) FROM frames WHERE function = 'main.blockedSleep'").fetchone()[0] == 1


@pytest.mark.slow
def test_a_thousand_snapshots(states):
    """1,000 eBPF snapshots of one process: all complete, the target is alive and
    untraced, and nothing of the probe is left in the kernel afterwards."""
    from agent.ebpf.executor import snapshot_process
    from agent.ebpf.probe import StackProbe
    from agent.snapshot import SnapshotOptions
    t, target = states
    n = int(os.environ.get("EXRAY_EBPF_SOAK", "1000"))
    with StackProbe() as probe:
        ids = prog_ids(probe)
        counts = set()
        for _ in range(n):
            rec = snapshot_process(t.pid, target, SnapshotOptions(), probe=probe)
            assert rec.error is None, rec.error
            counts.add(len(rec.goroutines))
    assert len(counts) <= 3            # the states program starts nothing new
    _untraced_and_alive(t.pid)
    assert not loaded_prog_ids(ids)
    assert not our_uprobes()


def test_without_bpf_auto_says_why_and_ebpf_refuses(monkeypatch):
    """A machine that can't run the probe (simulated: no CAP_BPF): `auto`
    snapshots with ptrace and its warning names what is missing; `ebpf`
    gives the process an error saying the same. No kernel needed."""
    from agent.ebpf import executor
    from agent.snapshot import SnapshotOptions, snapshot_processes
    from server.snapshot_job import load_target
    why = "no CAP_BPF (run the agent as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE)"
    monkeypatch.setattr(executor, "why_unavailable", lambda: why)
    binary = build("states")
    with run_target(binary, dump=False) as t:
        target = load_target(str(binary), None, {})
        [auto] = snapshot_processes([(t.pid, target)], SnapshotOptions(executor="auto"))
        [ebpf] = snapshot_processes([(t.pid, target)], SnapshotOptions(executor="ebpf"))
    assert auto.error is None and auto.goroutines
    assert f"executor auto: used ptrace, because {why}" in auto.warnings
    assert ebpf.error == f"executor ebpf: {why}" and not ebpf.goroutines


def test_snapshots_from_two_threads_take_turns_with_the_probe(states):
    """An agent serving two requests at once: each thread's snapshot of the
    process completes and has its goroutines (the probe's one cursor is
    taken in turn)."""
    import threading
    from agent.ebpf.executor import snapshot_process
    from agent.ebpf.probe import StackProbe
    from agent.snapshot import SnapshotOptions
    t, target = states
    out: list = []
    with StackProbe() as probe:
        def one():
            for _ in range(5):
                out.append(snapshot_process(t.pid, target, SnapshotOptions(), probe=probe))
        threads = [threading.Thread(target=one) for _ in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
    assert len(out) == 10
    assert all(r.error is None and len(r.goroutines) > 20 for r in out), [r.error for r in out]
    _untraced_and_alive(t.pid)
