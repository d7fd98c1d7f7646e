"""Stacks from a snapshot must match Go's own traceback of the same process.

The states program parks goroutines in known states. We snapshot it, then ask
Go for its traceback of the same moment: the SIGQUIT crash dump at
GOTRACEBACK=system (every frame, runtime ones too, with pc offsets) and the
level-1 `runtime.Stack(all)` view (which the snapshot's `hidden` flag models).
Goroutines that are parked don't move between the two, so for each of them
the goroutine ids, functions, order, files, lines and inlining must agree.
"""
from __future__ import annotations

import pytest

from oracle import parse_go_traceback
from stack_compare import NAMED, STABLE, assert_stacks_match, elide_like_go, go_name
from targets import run_target
from server.snapshot_job import snapshot_pids


@pytest.fixture(scope="module")
def states_snapshot(go_build):
    with run_target(go_build("states"), env={"GOTRACEBACK": "system"}) as t:
        [rec] = snapshot_pids([t.pid], None)
        level1 = parse_go_traceback(t.dump())
        level2 = parse_go_traceback(t.quit_dump())
    assert rec.error is None, rec.error
    return rec, level1, level2


def _stable(gs, goid):
    g = gs.get(goid)
    return g is not None and g.wait_reason in STABLE


def test_every_goroutine_go_shows_is_in_the_snapshot(states_snapshot):
    rec, _, level2 = states_snapshot
    ours = {g.goid for g in rec.goroutines}
    # Goroutines that existed at the snapshot: Go's dump comes later and may
    # show a few new runtime ones (the signal handler), never fewer of ours.
    missing = [goid for goid, g in level2.items() if goid not in ours and g.wait_reason in STABLE]
    assert not missing, f"goroutines Go shows but the snapshot lacks: {missing}"
    gone = [g.goid for g in rec.goroutines if g.goid not in level2]
    assert not gone, f"snapshot goroutines Go does not know: {gone}"


def test_stable_stacks_match_go_traceback_system_level(states_snapshot):
    rec, _, level2 = states_snapshot
    checked = assert_stacks_match(rec, level2)
    named = {f.function for g in rec.goroutines for f in g.frames}
    assert set(NAMED) <= named
    assert checked >= len(NAMED)


def test_hidden_frames_match_go_default_traceback(states_snapshot):
    rec, level1, _ = states_snapshot
    checked = 0
    for g in rec.goroutines:
        if g.is_system or not _stable(level1, g.goid):
            continue
        shown = [(go_name(f.function), f.file, f.line)
                 for f in elide_like_go([f for f in g.frames if not f.hidden], level1[g.goid])]
        theirs = [(f.function, f.file, f.line) for f in level1[g.goid].frames]
        assert shown == theirs, f"goroutine {g.goid}"
        checked += 1
    assert checked >= len(NAMED)


def test_created_by_matches_go(states_snapshot):
    rec, _, level2 = states_snapshot
    for g in rec.goroutines:
        go = level2.get(g.goid)
        if go is None or go.created_by is None:
            continue
        assert go_name(g.created_by) == go.created_by.function, f"goroutine {g.goid}"
        assert (g.created_by_file, g.created_by_line) == (go.created_by.file, go.created_by.line)
        if go.created_by.goid is not None:
            assert g.parent_goid == go.created_by.goid


def test_statuses_are_the_runtime_own_words(states_snapshot):
    rec, _, level2 = states_snapshot
    by_fn = {}
    for g in rec.goroutines:
        for f in g.frames:
            by_fn.setdefault(f.function, g)
    assert by_fn["main.blockedSyscall"].status == "syscall"
    assert by_fn["main.spin"].status in ("running", "runnable")
    for name in NAMED:
        g = by_fn[name]
        assert g.wait_reason == level2[g.goid].wait_reason


def test_pprof_labels_are_the_ones_the_program_set(go_build):
    """stripped_target starts main.waitSleep inside pprof.Do(Labels("role", "sleeper")),
    so that goroutine, and only it, inherits the labels."""
    with run_target(go_build("stripped_target"), dump=False) as t:
        [rec] = snapshot_pids([t.pid], None)
    labeled = [g for g in rec.goroutines if g.labels]
    assert [g.labels for g in labeled] == [{"role": "sleeper"}]
    assert any(f.function == "main.waitSleep" for f in labeled[0].frames)
