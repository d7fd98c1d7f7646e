"""Ex-Ray against hostile conditions, on real Go programs with real ptrace.

* a stripped binary (-ldflags=-s -w): stacks still match Go's own traceback,
  captures come back as unavailable, with a reason;
* a process that exits in the middle of the pause, or was killed just before
  it: the error lands in the ProcessRecord, nothing hangs, the deadline holds;
* 1,000 snapshots in a row never harm the target: it is alive, untraced, and
  its own watchdog never saw a stall longer than the pause Ex-Ray reported
  (plus a stated scheduling margin);
* 10,000 goroutines: every goroutine Go's SIGQUIT dump shows is in the
  snapshot, and the waiters' stacks match Go's.

Bad input through the CLI (missing pid, non-Go process, spec errors) is in
test_cli_snapshot.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ebpf_helpers import require_ebpf
from oracle import parse_go_traceback
from ptrace_helpers import Target as WatchdogTarget, assert_free, tracer_pid
from stack_compare import NAMED, STABLE, assert_stacks_match
from targets import run_target
from agent.memory import ProcessMemory
from agent.snapshot import SnapshotOptions, snapshot_process
from probe_compiler.spec import parse_spec
from server.snapshot_job import load_target, snapshot_pids

EXRAY = str(Path(sys.prefix) / "bin" / "exray")

# ---------------------------------------------------------------------------
# 1. stripped binary


STRIPPED_SPEC = """\
version: 1
functions:
  main.(*server).handle:
    capture:
      - s.name
      - len(s.reqs)
  main.blockedConnRead:
    capture:
      - c
"""


@pytest.fixture(scope="module")
def stripped_snapshot(go_build):
    binary = go_build("states", flags=("-ldflags=-s -w",))
    spec = parse_spec(STRIPPED_SPEC, "stripped.yaml")
    with run_target(binary, "-busy", "0", env={"GOTRACEBACK": "system"}) as t:
        [rec] = snapshot_pids([t.pid], spec, SnapshotOptions(deadline_s=2))
        level2 = parse_go_traceback(t.quit_dump())
    return rec, level2


def test_stripped_binary_has_no_debug_info(go_build):
    binary = go_build("states", flags=("-ldflags=-s -w",))
    out = subprocess.run(["readelf", "-S", "-W", str(binary)], capture_output=True, text=True).stdout
    assert ".debug_info" not in out and ".zdebug_info" not in out
    assert ".symtab" not in out
    assert ".gopclntab" in out


def test_stripped_stacks_match_go(stripped_snapshot):
    rec, level2 = stripped_snapshot
    assert rec.error is None, rec.error
    ours = {g.goid for g in rec.goroutines}
    missing = [goid for goid, g in level2.items() if goid not in ours and g.wait_reason in STABLE]
    assert not missing, f"goroutines Go shows but the snapshot lacks: {missing}"
    checked = assert_stacks_match(rec, level2)
    named = {f.function for g in rec.goroutines for f in g.frames}
    assert set(NAMED) <= named
    assert checked >= len(NAMED)


def test_stripped_captures_are_unavailable_with_a_reason(stripped_snapshot):
    """Without DWARF no variable can be located: each captured frame still gets its
    row (the function and its frames are known from pclntab), every value NULL,
    and `errors` says why."""
    rec, _ = stripped_snapshot
    assert rec.error is None, rec.error
    assert any("DWARF" in w for w in rec.warnings), rec.warnings
    caps = [c for g in rec.goroutines for c in g.captures]
    by_fn = {c.function: c for c in caps}
    assert set(by_fn) == {"main.(*server).handle", "main.blockedConnRead"}, \
        f"captured frames on a stripped binary: {sorted(by_fn)} (expected one row per captured frame)"
    for c in caps:
        assert all(v is None for v in c.values.values()), c
        assert set(c.errors) == set(c.values), c
        for col, why in c.errors.items():
            assert why and ("DWARF" in why or "debug info" in why), (col, why)


# ---------------------------------------------------------------------------
# 2. processes that die around the snapshot


class KillWhenTraced(threading.Thread):
    """SIGKILLs `pid` `delay` seconds after a tracer (by default anyone) attaches to it:
    the process then exits in the middle of the pause."""

    def __init__(self, pid: int, delay: float, tracer: int | None = None, timeout: float = 30,
                 any_thread: bool = False):
        super().__init__(daemon=True)
        self.pid, self.delay, self.tracer, self.timeout = pid, delay, tracer, timeout
        self.any_thread = any_thread     # the eBPF executor leaves a thread (maybe the leader) untraced
        self.killed_at: float | None = None

    def _tracer(self) -> int:
        if not self.any_thread:
            return tracer_pid(self.pid)
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                tp = tracer_pid(self.pid, int(tid))
            except (FileNotFoundError, ProcessLookupError):
                continue        # a thread that ended while we looked
            if tp:
                return tp
        return 0

    def run(self):
        end = time.monotonic() + self.timeout
        while time.monotonic() < end:
            try:
                tp = self._tracer()
            except (FileNotFoundError, ProcessLookupError):
                return
            if tp and (self.tracer is None or tp == self.tracer):
                if self.delay:
                    time.sleep(self.delay)
                os.kill(self.pid, signal.SIGKILL)
                self.killed_at = time.monotonic()
                return
            time.sleep(0.0002)


def run_bounded(fn, limit: float):
    """Run fn() on a thread; fail (instead of hanging the suite) if it takes longer than limit."""
    out: dict = {}

    def body():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            out["error"] = e
    th = threading.Thread(target=body, daemon=True)
    t0 = time.monotonic()
    th.start()
    th.join(limit)
    assert not th.is_alive(), f"snapshot still running after {limit}s: it hangs"
    if "error" in out:
        raise out["error"]
    return out["value"], time.monotonic() - t0


DEADLINE = 2.0


# A spec whose captures are read in the pause: 10,000 extra waiters and the
# handler whose receiver's name is read.
CAPTURE_SPEC = "version: 1\nfunctions:\n  main.extraWaiter:\n  main.(*server).handle:\n    capture: [s.name]\n"


class CountingMemory(ProcessMemory):
    """The process's memory, counting read calls; SIGKILLs the process just
    before call number `kill_at` (None: never), so a test can stop it at an
    exact point of the pause whatever the machine's speed."""

    def __init__(self, pid: int, kill_at: int | None = None):
        super().__init__(pid)
        self.calls, self.kill_at = 0, kill_at

    def _count(self):
        self.calls += 1
        if self.calls == self.kill_at:
            os.kill(self.pid, signal.SIGKILL)
            while not Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX":
                time.sleep(0.0005)          # dead before the read it precedes

    def read(self, addr, size):
        self._count()
        return super().read(addr, size)

    def read_many(self, reqs):
        self._count()
        return super().read_many(reqs)

    def read_into(self, addrs, sizes):
        self._count()
        return super().read_into(addrs, sizes)

    def read_scatter(self, addrs, sizes):
        self._count()
        return super().read_scatter(addrs, sizes)


def _snapshot_bounded(t, target, mem=None):
    return run_bounded(lambda: snapshot_process(t.pid, target, SnapshotOptions(deadline_s=DEADLINE),
                                                mem=mem), DEADLINE + 10)


@pytest.mark.parametrize("when", ["at-seize", "second-read", "last-read"])
def test_process_exits_mid_pause(go_build, when):
    """The target (10,000 goroutines, captures read in the pause) is SIGKILLed
    while it is being seized, before the pause's second memory read (the g
    structs), or before its last one (among the captured values). The record
    carries the error, the call returns within the deadline, and no thread of
    ours is left waiting."""
    binary = go_build("states")
    with run_target(binary, "-extra", "10000", "-busy", "0", "-nospin", ready_timeout=60) as t:
        target = load_target(f"/proc/{t.pid}/exe", parse_spec(CAPTURE_SPEC), {})
        if when == "at-seize":
            killer = KillWhenTraced(t.pid, 0)
            killer.start()
            rec, took = _snapshot_bounded(t, target)
            killer.join(5)
            assert killer.killed_at is not None, "the target was never seen traced"
        else:
            counted = CountingMemory(t.pid)
            first, _ = _snapshot_bounded(t, target, counted)     # how many reads a snapshot makes
            assert first.error is None and counted.calls >= 3, (first.error, counted.calls)
            kill_at = 2 if when == "second-read" else counted.calls
            rec, took = _snapshot_bounded(t, target, CountingMemory(t.pid, kill_at))
        t.proc.wait(5)
    assert rec.error, f"a snapshot of a process killed {when} has no error"
    assert str(t.pid) in rec.error or "exit" in rec.error.lower() or "no such process" in rec.error.lower(), \
        rec.error
    assert rec.goroutines == []
    assert took < DEADLINE + 5, f"took {took:.2f}s"


def test_process_killed_right_before_snapshot(go_build):
    """Binary loaded, then the target dies (a zombie, then reaped) before the pause."""
    binary = go_build("states")
    with run_target(binary, "-busy", "0", "-nospin") as t:
        cache: dict = {}
        target = load_target(f"/proc/{t.pid}/exe", None, cache)
        os.kill(t.pid, signal.SIGKILL)
        while True:   # wait until it is a zombie, not yet reaped
            with open(f"/proc/{t.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.005)
        zombie, took = run_bounded(lambda: snapshot_process(t.pid, target,
                                                            SnapshotOptions(deadline_s=DEADLINE)), 15)
        assert zombie.error, "a snapshot of a zombie has no error"
        assert zombie.goroutines == []
        assert took < DEADLINE + 5
        # through the job: the binary can't even be opened any more
        [viajob], _ = run_bounded(lambda: snapshot_pids([t.pid], None, SnapshotOptions(deadline_s=DEADLINE)), 15)
        assert viajob.error and str(t.pid) in viajob.error
        t.proc.wait(5)
        [gone], _ = run_bounded(lambda: snapshot_pids([t.pid], None, SnapshotOptions(deadline_s=DEADLINE)), 15)
        assert gone.error == f"pid {t.pid}: no process with pid {t.pid}"
        # and a dead one among live ones does not spoil the others
    with run_target(binary, "-busy", "0", "-nospin") as live:
        recs, _ = run_bounded(lambda: snapshot_pids([t.pid, live.pid], None,
                                                    SnapshotOptions(deadline_s=DEADLINE)), 30)
    assert recs[0].error and recs[1].error is None and recs[1].goroutines


@pytest.mark.parametrize("executor", ["ptrace", "ebpf"])
def test_cli_when_process_exits_mid_snapshot(go_build, tmp_path, executor):
    """The CLI pauses the target, which dies: the file is still written, the
    exit code is non-zero and stderr says what happened, without a traceback."""
    if executor == "ebpf":
        require_ebpf()
    binary = go_build("states")
    out = tmp_path / "snap.sqlite"
    # 10,000 goroutines pause the target for about 14 ms with ptrace, 3 ms
    # with eBPF: a kill 3 ms (at once) after the CLI attaches lands inside.
    with run_target(binary, "-extra", "10000", "-busy", "0", "-nospin", ready_timeout=60) as t:
        cli = subprocess.Popen([EXRAY, "snapshot", "--pid", str(t.pid), "-o", str(out), "--executor", executor],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killer = KillWhenTraced(t.pid, 0.003 if executor == "ptrace" else 0, tracer=cli.pid,
                                any_thread=executor == "ebpf")
        killer.start()
        try:
            stdout, stderr = cli.communicate(timeout=60)
        finally:
            if cli.poll() is None:
                cli.kill()
        killer.join(5)
        assert killer.killed_at is not None, "the CLI was never seen tracing the target"
    assert cli.returncode != 0, stdout
    assert stderr.startswith("error:"), stderr
    assert str(t.pid) in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert out.exists()
    import sqlite3
    db = sqlite3.connect(out)
    try:
        [(pid, err)] = db.execute("SELECT pid, error FROM processes").fetchall()
    finally:
        db.close()
    assert pid == t.pid and err


# ---------------------------------------------------------------------------
# 3. 1,000 snapshots never harm the target

N_SNAPSHOTS = 1000
# The watchdog sleeps 1 ms and records the longest gap between wake-ups; the
# target reports the longest gap since the previous question, which we ask
# after every snapshot. A snapshot's pause shows up as a gap of at most: the
# 1 ms sleep + the pause + the time the kernel and Go's scheduler take to run
# the goroutine again. That last part is scheduling noise, not Ex-Ray's: this
# VM has 2 shared cores, other test runs share them, the target has 2 busy
# threads and our Python keeps one core busy, so a runnable Go thread can wait
# a CFS period (sched_latency is 6 ms at 2 CPUs) or, rarely, much longer when
# the VM itself is descheduled. So:
#   * 99% of snapshots: gap <= pause + SCHED_MARGIN_MS (10 ms: 1 ms sleep +
#     a CFS period + Go's timer granularity). An under-reported pause (threads
#     stopped before the clock starts or after it stops) is systematic and
#     fails this.
#   * every snapshot: gap <= pause + the baseline (the longest gap over 3 s of
#     the same CPU work without the pause) + HARD_MARGIN_MS (50 ms). A thread
#     left stopped, or a stop that waits on something, fails this.
SCHED_MARGIN_MS = 10.0
HARD_MARGIN_MS = 50.0
BASELINE_S = 3.0


# With captures on (the read program copies them in the pause), the same
# bounds over as many snapshots.
WORKER_SPEC = "version: 1\nfunctions:\n  main.worker:\n    capture: [id]\n"


def _ebpf_why():
    from agent.ebpf.availability import why_unavailable
    return why_unavailable()


@pytest.mark.parametrize("spec_text,n,executor", [
    (None, None, "ptrace"), (WORKER_SPEC, None, "ptrace"),
    # The probe reads the captures; 100 snapshots (each detaches its uprobe, 0.1 s)
    pytest.param(WORKER_SPEC, 100, "ebpf", marks=pytest.mark.skipif(
        bool(_ebpf_why()), reason=f"eBPF: {_ebpf_why()}"))], ids=["stacks", "captures", "ebpf-captures"])
def test_thousand_snapshots_never_harm_the_target(go_build, spec_text, n, executor):
    binary = go_build("ptrace_target")
    spec = parse_spec(spec_text) if spec_text else None
    n = n or N_SNAPSHOTS
    t = WatchdogTarget(binary, "-threads", "2")
    try:
        time.sleep(0.3)
        t.ask("gap", "GAP")
        baseline_ms = 0.0
        end = time.monotonic() + BASELINE_S
        while time.monotonic() < end:     # the same load as a snapshot, without the pause
            load_target(f"/proc/{t.pid}/exe", None, {})
            baseline_ms = max(baseline_ms, t.ask("gap", "GAP")["max_ns"] / 1e6)
        worst = []   # (gap - pause) per snapshot, worst first
        pauses = []
        t0 = time.monotonic()
        opts = SnapshotOptions(deadline_s=2, executor=executor)
        cache: dict = {}    # one Target (plan, read program) for every snapshot, as a server keeps
        for i in range(n):
            [rec] = snapshot_pids([t.pid], spec, opts, cache=cache)
            assert rec.error is None, f"snapshot {i}: {rec.error}"
            assert rec.goroutines, f"snapshot {i}: no goroutines"
            if spec is not None:
                caps = [c for g in rec.goroutines for c in g.captures]
                assert caps, f"snapshot {i}: no main.worker rows"
                assert executor == "ptrace" or not getattr(rec, "ebpf_retry", None), rec.ebpf_retry
            gap_ms = t.ask("gap", "GAP")["max_ns"] / 1e6    # longest stall since the previous snapshot
            pause_ms = rec.pause_ns / 1e6
            pauses.append(pause_ms)
            worst.append((gap_ms - pause_ms, i, gap_ms, pause_ms))
        elapsed = time.monotonic() - t0
        assert t.proc.poll() is None, "the target died"
        assert tracer_pid(t.pid) == 0
        assert_free(t.pid)
        with open(f"/proc/{t.pid}/status") as f:
            state = next(line for line in f if line.startswith("State:")).split()[1]
        assert state not in ("t", "T", "Z", "X"), state
        time.sleep(0.05)
        after = t.ask("gap", "GAP")
        assert after["ticks"] > 0          # the watchdog still runs
        excess = sorted(w[0] for w in worst)
        p50, p99 = excess[len(excess) // 2], excess[int(len(excess) * 0.99) - 1]
        worst.sort(reverse=True)
        print(f"\n{n} snapshots in {elapsed:.1f}s ({elapsed / n * 1000:.1f} ms each); "
              f"pause max {max(pauses):.2f} ms, median {sorted(pauses)[len(pauses) // 2]:.2f} ms; "
              f"gap-pause median {p50:.2f} ms, p99 {p99:.2f} ms, max {worst[0][0]:.2f} ms "
              f"(snapshot {worst[0][1]}: gap {worst[0][2]:.2f}, pause {worst[0][3]:.2f}); "
              f"baseline gap {baseline_ms:.2f} ms")
        assert p99 <= SCHED_MARGIN_MS, (
            f"1% of snapshots stalled the watchdog more than {SCHED_MARGIN_MS} ms beyond the reported "
            f"pause; worst (excess, i, gap_ms, pause_ms): {worst[:10]}")
        hard = max(baseline_ms, 1.0) + HARD_MARGIN_MS
        over = [w for w in worst if w[0] > hard]
        assert not over, (f"the watchdog stalled longer than the reported pause + {hard:.1f} ms "
                          f"in {len(over)} snapshots; worst (excess, i, gap_ms, pause_ms): {over[:5]}")
    finally:
        t.close()


# ---------------------------------------------------------------------------
# 4. 10,000 goroutines


@pytest.fixture(scope="module")
def ten_thousand(go_build):
    with run_target(go_build("states"), "-extra", "10000", "-busy", "0",
                    env={"GOTRACEBACK": "system"}, ready_timeout=60) as t:
        t0 = time.monotonic()
        [rec] = snapshot_pids([t.pid], None, SnapshotOptions(deadline_s=5))
        took = time.monotonic() - t0
        level2 = parse_go_traceback(t.quit_dump())
    print(f"\n10,000 goroutines: snapshot {took:.2f}s, pause {rec.pause_ns / 1e6:.1f} ms")
    return rec, level2


def test_ten_thousand_goroutines_all_present(ten_thousand):
    rec, level2 = ten_thousand
    assert rec.error is None, rec.error
    ours = {g.goid: g for g in rec.goroutines}
    missing = sorted(goid for goid, g in level2.items() if goid and goid not in ours
                     and g.wait_reason in STABLE)
    assert not missing, f"{len(missing)} goroutines Go shows but the snapshot lacks: {missing[:20]}"
    gone = [goid for goid in ours if goid not in level2]
    assert not gone, f"snapshot goroutines Go does not know: {gone[:20]}"
    waiters = [g for g in rec.goroutines if any(f.function == "main.extraWaiter" for f in g.frames)]
    assert len(waiters) == 10000


def test_ten_thousand_waiter_stacks_match_go(ten_thousand):
    rec, level2 = ten_thousand
    is_waiter = lambda g: any(f.function == "main.extraWaiter" for f in g.frames)  # noqa: E731
    assert assert_stacks_match(rec, level2, only=is_waiter) == 10000
    assert assert_stacks_match(rec, level2, only=lambda g: not is_waiter(g)) >= len(NAMED)
    for g in rec.goroutines:
        if is_waiter(g):
            assert g.error is None and g.status == "waiting" and g.wait_reason == "chan receive"
            assert g.created_by == "main.main"


# ---------------------------------------------------------------------------
# 5. Captures past the pause's capture share


@pytest.mark.parametrize("executor", ["ptrace", "ebpf"])
def test_captures_past_the_capture_share_are_rows_that_say_so(go_build, executor):
    """With no share of the pause left for captures, the snapshot still completes:
    every captured frame has its row, at the depth a full snapshot gives it,
    with NULL values and the reason; the process runs on. (The eBPF probe
    stops its reads there and still walks every goroutine's stack.)"""
    if executor == "ebpf":
        require_ebpf()
    spec = parse_spec("version: 1\nfunctions:\n  main.handle:\n    capture: [req]\n")
    with run_target(go_build("linkpair"), "-self", "4", dump=False) as t:
        [full] = snapshot_pids([t.pid], spec, SnapshotOptions(executor=executor))
        [cut] = snapshot_pids([t.pid], spec, SnapshotOptions(capture_share=0.0, executor=executor))
        os.kill(t.pid, 0)                                   # still there
    assert full.error is None and cut.error is None, (full.error, cut.error)

    def rows(rec):
        return {(g.goid, c.depth): c for g in rec.goroutines for c in g.captures}
    want, got = rows(full), rows(cut)
    assert len(want) == 4 and all(c.values["req"] for c in want.values())
    assert got.keys() == want.keys()
    for c in got.values():
        assert c.function == "main.handle" and c.values == {"req": None}
        assert c.errors["req"].startswith("not read: captures stopped when the pause reached")
    assert any(w.startswith("captures stopped when the pause reached") and "captures of 4 of 4 goroutines"
               in w for w in cut.warnings), cut.warnings
    assert {g.goid for g in cut.goroutines} == {g.goid for g in full.goroutines}
    if executor == "ebpf":      # cut by the probe itself, not taken again with ptrace
        assert cut.probe_report.cut and getattr(cut, "ebpf_retry", None) is None, cut.probe_report
