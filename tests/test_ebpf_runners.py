"""A walk shared by several of the target's threads (probe.bpf.c's runners,
agent/ebpf/executor.py's runner_count): the snapshot is the one a single
runner takes, and ptrace's, and Go's own traceback; a thread that can't be
handed over leaves the others to walk; the target is left untraced.

Each runner needs a CPU of its own, so these skip, saying so, on one CPU."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from ebpf_helpers import our_uprobes, require_ebpf
from gobuild import build
from oracle import parse_go_traceback
from stack_compare import NAMED, assert_stacks_match
from targets import run_target
from test_ebpf_captures import rows
from test_ebpf_lifecycle import _untraced_and_alive
from test_ebpf_stacks import _both, _frames, assert_same_as_ptrace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                                reason="a shared walk needs two CPUs; this machine gives one")


@pytest.fixture
def two_runners(monkeypatch):
    require_ebpf()
    monkeypatch.setenv("EXRAY_EBPF_RUNNERS", "2")


def test_a_shared_walk_is_ptraces_and_gos_own(two_runners):
    got, ref, level2 = _both(build("states"), None)   # the shared probe
    r = got.probe_report
    # a walk this short may be done before the second runner arrives: it is dropped
    assert r.runners + len(r.left_out) == 2 and all("before the others" in w for w in r.left_out.values()), r
    assert_same_as_ptrace(got, ref, level2)
    assert assert_stacks_match(got, level2) >= len(NAMED)


def test_request_captures_shared_by_two_runners_are_ptraces_rows(two_runners):
    """600 goroutines each capturing a whole request (the bench's load):
    the two runners' copies together give ptrace's rows, with no retry; the
    string literals among them are not copied but read from the binary."""
    from bench.run import REQUEST_SPEC, PauseMeter, build_pausemeter
    from agent.snapshot import SnapshotOptions
    from probe_compiler.spec import parse_spec
    from server.snapshot_job import snapshot_pids
    spec = parse_spec(REQUEST_SPEC)
    pm = PauseMeter(build_pausemeter(), 600, requests=True)
    try:
        [got] = snapshot_pids([pm.pid], spec, SnapshotOptions(executor="ebpf"))
        [ref] = snapshot_pids([pm.pid], spec, SnapshotOptions(executor="ptrace"))
    finally:
        pm.close()
    assert got.error is None and ref.error is None, (got.error, ref.error)
    r = got.probe_report
    assert r.runners == 2 and getattr(got, "ebpf_retry", None) is None, (r, getattr(got, "ebpf_retry", None))
    assert r.statics >= 600, r          # "GET", "bench", "parked", ... each goroutine has several
    assert len(rows(got)) >= 600 and rows(got) == rows(ref)
    parked = lambda rec: {g.goid: _frames(g) for g in rec.goroutines    # noqa: E731
                          if any(f.function == "main.serve" for f in g.frames)}
    assert len(parked(got)) == 600 and parked(got) == parked(ref)


def test_request_captures_through_a_small_stage_are_ptraces_rows(two_runners, monkeypatch):
    """The same load through 16 KiB stages: a stage is sent every few
    goroutines, often while a value read in place in it is still being
    expanded; that value moves to the stage's spare room first (keep_held),
    and the rows are still ptrace's."""
    from bench.run import REQUEST_SPEC, PauseMeter, build_pausemeter
    from agent.ebpf import executor as ebpf
    from agent.ebpf.probe import StackProbe
    from agent.snapshot import SnapshotOptions
    from probe_compiler.spec import parse_spec
    from server.snapshot_job import snapshot_pids
    spec = parse_spec(REQUEST_SPEC)
    pm = PauseMeter(build_pausemeter(), 600, requests=True)
    try:
        with StackProbe(stage_bytes=16384) as small:
            monkeypatch.setattr(ebpf, "_shared", small)
            [got] = snapshot_pids([pm.pid], spec, SnapshotOptions(executor="ebpf"))
            moved = sum(s.moved for s in small.last_states)
        [ref] = snapshot_pids([pm.pid], spec, SnapshotOptions(executor="ptrace"))
        _untraced_and_alive(pm.pid)
    finally:
        pm.close()
    assert got.error is None and getattr(got, "ebpf_retry", None) is None, (got.error, got.warnings)
    assert moved > 0, "no stage was sent mid-expansion: the test no longer covers keep_held"
    assert len(rows(got)) >= 600 and rows(got) == rows(ref)
    assert not our_uprobes()


def test_a_value_whose_strings_overflow_a_stage_keeps_its_bytes(two_runners, monkeypatch):
    """64 strings of 300 bytes behind one slice: expanding its elements
    sends the 16 KiB stage they were read into, and writes over where they
    were; their record must have moved to the spare room (keep_held) for
    the later strings to be found."""
    from agent.ebpf import executor as ebpf
    from agent.ebpf.probe import StackProbe
    from probe_compiler.spec import parse_spec
    from test_ebpf_captures import both
    spec = parse_spec("version: 1\nfunctions:\n  main.parkLines:\n    capture: [lines]\n")
    with run_target(build("bigmaps"), dump=False) as t, StackProbe(stage_bytes=16384) as small:
        monkeypatch.setattr(ebpf, "_shared", small)
        ref, got = both(t.pid, spec)
        moved = sum(s.moved for s in small.last_states)
    assert moved > 0 and getattr(got, "ebpf_retry", None) is None, (moved, got.warnings)
    [row] = rows(got).values()
    assert rows(got) == rows(ref)
    lines = json.loads(row[0][2])["lines"]
    assert len(lines) == 64 and lines[63]["value"].startswith("63:l"), lines[63]   # each cut at 256 bytes
    assert not our_uprobes()


def test_a_runner_that_blocks_sigurg_is_left_out(two_runners, monkeypatch, tmp_path):
    """One of the two runners blocks SIGURG (a thread of main.deafToURG):
    it is not handed over (it would run the target's code instead of the
    probe) but stays stopped with the rest, and the other walks alone; the
    snapshot is still ptrace's and Go's, says which thread was left out,
    and leaves the target untraced."""
    from agent.ebpf import executor as ebpf
    from agent.snapshot import SnapshotOptions, snapshot_process
    from server.snapshot_job import load_target
    binary, tidfile = build("states"), tmp_path / "deaf"
    with run_target(binary, "-deafurg", str(tidfile), env={"GOTRACEBACK": "system"}) as t:
        deaf = int(tidfile.read_text())
        ok = next(tid for tid in ebpf.pick_runners(t.pid, 2) if tid != deaf)
        monkeypatch.setattr(ebpf, "pick_runners", lambda pid, n=1: [ok, deaf])
        target = load_target(str(binary), None, {})
        got = ebpf.snapshot_process(t.pid, target, SnapshotOptions())
        ref = snapshot_process(t.pid, target, SnapshotOptions(executor="ptrace"))
        _untraced_and_alive(t.pid)
        level2 = parse_go_traceback(t.quit_dump())
    assert got.error is None, got.error
    r = got.probe_report
    assert r.runners == 1 and list(r.left_out) == [deaf], r
    assert any("left out of the walk" in w for w in got.warnings), got.warnings
    assert_same_as_ptrace(got, ref, level2)


def test_shared_walks_leave_the_target_running_and_untraced(two_runners):
    from agent.ebpf import executor as ebpf
    from agent.snapshot import SnapshotOptions
    from server.snapshot_job import load_target
    binary = build("states")
    with run_target(binary, dump=False) as t:
        target = load_target(str(binary), None, {})
        for _ in range(30):
            rec = ebpf.snapshot_process(t.pid, target, SnapshotOptions())
            r = rec.probe_report
            assert rec.error is None and r.runners + len(r.left_out) == 2, (rec.error, r)
        _untraced_and_alive(t.pid)
    assert not our_uprobes()


def test_a_shared_walk_that_never_starts_ends_at_the_deadline_untraced(two_runners, monkeypatch):
    """The plan names another process, so no runner's uprobe takes the walk:
    the snapshot fails at its deadline, saying so, the handed-over thread
    and runner 0 run on, and no thread is left traced."""
    from dataclasses import replace
    from agent.ebpf import executor as ebpf
    from agent.ebpf.plan import StackPlan
    from agent.snapshot import SnapshotOptions
    from server.snapshot_job import load_target
    real = StackPlan.from_layout
    monkeypatch.setattr(StackPlan, "from_layout",
                        staticmethod(lambda *a, **k: replace(real(*a, **k), tgid=1)))
    binary = build("states")
    with run_target(binary, dump=False) as t:
        rec = ebpf.snapshot_process(t.pid, load_target(str(binary), None, {}), SnapshotOptions(deadline_s=0.2))
        assert rec.error and "did not finish" in rec.error, rec.error
        _untraced_and_alive(t.pid)
    assert not our_uprobes()


def test_a_ring_buffer_too_small_for_the_walk_says_what_it_lost(two_runners):
    """A probe whose ring buffer (64 KiB) can't take a runner's full batch:
    the snapshot is marked truncated and says how much it lost, the
    goroutines it kept are still ptrace's, and nothing is left behind."""
    from agent.ebpf import executor as ebpf
    from agent.ebpf.probe import StackProbe
    from agent.snapshot import SnapshotOptions, snapshot_process
    from bench.run import PauseMeter, build_pausemeter
    from server.snapshot_job import load_target
    binary = build_pausemeter()
    pm = PauseMeter(binary, 2000)
    try:
        target = load_target(str(binary), None, {})
        with StackProbe(ringbuf_pages=16) as small:
            rec = ebpf.snapshot_process(pm.pid, target, SnapshotOptions(), probe=small)
        ref = snapshot_process(pm.pid, target, SnapshotOptions(executor="ptrace"))
        _untraced_and_alive(pm.pid)
    finally:
        pm.close()
    assert rec.error is None and rec.truncated and rec.probe_report.dropped >= 1, rec.probe_report
    assert any("ring buffer was full" in w for w in rec.warnings), rec.warnings
    theirs = {g.goid: _frames(g) for g in ref.goroutines}
    kept = [g for g in rec.goroutines if any(f.function == "main.park" for f in g.frames)]
    assert len(kept) < 2000
    assert all(_frames(g) == theirs[g.goid] for g in kept)
    assert not our_uprobes()
