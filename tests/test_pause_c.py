"""agent/_pause.c on its own: what it does with arguments and threads that
are not as PausedProcess gives them (tests/test_ptrace.py runs every pause
both through it and through the Python steps)."""
from __future__ import annotations

import ctypes
import errno
import os
import time

import pytest

from agent import ptrace
from ptrace_helpers import Target, assert_free, tasks

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ptrace tests run as root")
fast = ptrace._fast


@pytest.fixture
def target(go_build):
    if fast is None:        # as test_ptrace: the set-up builds it, so its absence is a failure
        pytest.fail("agent/_pause.c is not built: scripts/setup.sh (pip install -e .) builds it")
    t = Target(go_build("ptrace_target"), "-threads", "2")
    yield t
    t.close()


def test_bad_arguments_raise_and_touch_nothing(target):
    for args in [(target.pid, [target.pid], [], [target.pid], 0, 0, 0),      # regs not in pairs
                 (target.pid, ["x"], [], [], 0, 0, 0),
                 (target.pid, [], [], [])]:
        with pytest.raises((TypeError, ValueError)):
            fast.stop(*args)
    with pytest.raises(ValueError):
        fast.detach([target.pid])
    with pytest.raises(ValueError):
        fast.wait_done(0, 0, 1, 1, -1, 0, [], 0)
    with pytest.raises(TypeError):
        fast.interrupt(target.pid)
    assert_free(target.pid)
    assert target.ask("gap", "GAP")["ticks"] > 0


def test_threads_not_traced_go_the_general_way(target):
    """Nothing traced: waitpid says ECHILD (status -1, STOP_ODD), GETREGS
    and DETACH fail with ESRCH, and no go word is written. (A thread, not
    the leader: the leader is this test's child, and waitpid would wait.)"""
    go = ctypes.c_uint64(0)
    tid = next(t for t in tasks(target.pid) if t != target.pid)
    code, seen, err, go_ns, rt = fast.stop(target.pid, [tid], [tid], [], time.monotonic_ns() + 10**8,
                                           ctypes.addressof(go), 1)
    assert (code, [s[:2] for s in seen], go.value, go_ns, rt) == (fast.STOP_ODD, [(tid, -1)], 0, 0, 0)
    buf = (ctypes.c_ulong * 27)()
    code, seen, err, go_ns, rt = fast.stop(target.pid, [], tasks(target.pid),
                                           [target.pid, ctypes.addressof(buf)], time.monotonic_ns() + 10**8,
                                           ctypes.addressof(go), 1)
    assert (code, err, go.value, rt) == (fast.STOP_REGS, errno.ESRCH, 0, 0)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert fast.detach([target.pid, 0]) == [(errno.ESRCH, pytest.approx(time.monotonic_ns(), abs=10**9))]
    assert_free(target.pid)


def test_a_thread_it_was_not_told_of_stops_the_go(target):
    """Every thread stopped, but /proc/pid/task holds one more than the
    caller knows of: STOP_NEW, no registers read, no go."""
    p = ptrace.PausedProcess(target.pid)
    p.interrupt()
    try:
        go = ctypes.c_uint64(0)
        tids = list(p._t)
        code, seen, _, _, _ = fast.stop(target.pid, tids, tids[1:], [], time.monotonic_ns() + 10**9,
                                        ctypes.addressof(go), 0)
        assert code == fast.STOP_NEW and go.value == 0
        assert sorted(s[0] for s in seen) == sorted(tids)
        for tid, status, _ in seen:
            p._take(p._t[tid], status, 0)
    finally:
        p._release()
    assert_free(target.pid)
