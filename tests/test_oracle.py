"""Tests of the oracles themselves: the Go test programs, run for real, and the
parser of Go's own tracebacks. A broken oracle must not make other tests pass."""
from __future__ import annotations

import json
import math
import os

import pytest

from oracle import goroutines_in, parse_go_traceback, parse_go_traceback_list, split_call
from targets import TargetError, run_target

# function (as Go prints it) -> wait reason in a runtime.Stack dump
STATES = {
    "main.blockedSend": "chan send",
    "main.blockedRecv": "chan receive",
    "main.blockedSelect": "select",
    "main.blockedMutex": "sync.Mutex.Lock",
    "main.blockedRWMutexRLock": "sync.RWMutex.RLock",
    "main.blockedRWMutexLock": "sync.RWMutex.Lock",
    "main.blockedWaitGroup": "sync.WaitGroup.Wait",
    "main.blockedCond": "sync.Cond.Wait",
    "main.blockedSleep": "sleep",
    "main.blockedAccept": "IO wait",
    "main.blockedConnRead": "IO wait",
    "main.blockedSyscall": "syscall",
    "main.blockedNilChan": "chan receive (nil chan)",
    "main.blockedSelectNoCases": "select (no cases)",
    "main.inlineRoot": "chan receive",
    "main.(*server).handle": "chan receive",
    "main.server.valueMethod": "chan receive",
    "main.main.func1": "chan receive",
    "main.makeWaiter.func1": "chan receive",
    "main.genericIntCaller": "chan receive",
    "main.genericStringCaller": "chan receive",
    "main.recursionRoot": "chan receive",
    "main.spawner": "chan receive",
    "main.spawnedChild": "chan receive",
    "main.watchStdin": "syscall",
}
DEPTH = 300  # main.recurse's default depth: deeper than Go's 50+50 printed frames


def one(parsed, fn):
    gs = goroutines_in(parsed, fn)
    assert len(gs) == 1, f"{fn}: {len(gs)} goroutines"
    return gs[0]


@pytest.fixture(scope="module")
def states_bin(go_build):
    return go_build("states")


@pytest.fixture(scope="module")
def states_dump(states_bin):
    with run_target(states_bin) as t:
        text = t.dump()
        pid = t.pid
    return pid, text


def test_states_every_named_state(states_dump):
    _, text = states_dump
    parsed = parse_go_traceback(text)
    for fn, reason in STATES.items():
        g = one(parsed, fn)
        assert g.wait_reason == reason, (fn, g.status)
        assert g.status == reason  # nothing else in the bracket at level 1, under a minute
        assert g.created_by is not None and g.created_by.function.startswith("main."), fn
        assert not g.stack_unavailable
    # main: it is the one dumping
    main = parsed[1]
    assert main.wait_reason == "running" and main.functions[-1] == "main.main"
    assert main.created_by is None


def test_states_busy_and_spin(states_dump):
    parsed = parse_go_traceback(states_dump[1])
    spin = one(parsed, "main.spin")
    # runtime.Stack stops the world first, so a spinning goroutine shows as runnable.
    assert spin.wait_reason in ("running", "runnable")
    assert spin.locked_to_thread and spin.status.endswith(", locked to thread")
    assert spin.functions == ["main.spin", "main.spinRoot"]
    busy = goroutines_in(parsed, "main.busy")
    assert len(busy) == 2 and all(g.wait_reason in ("running", "runnable") for g in busy)
    assert not any(g.locked_to_thread for g in busy)


def test_states_call_shapes(states_dump):
    parsed = parse_go_traceback(states_dump[1])
    g = one(parsed, "main.inlineRoot")
    assert g.functions == ["main.inlinedLeaf", "main.inlinedMid", "main.inlineRoot"]
    assert [f.inlined for f in g.frames] == [True, True, False]
    assert [f.pc_offset is None for f in g.frames] == [True, True, False]
    assert g.frames[0].args == "..." and g.frames[0].file.endswith("/main.go")

    assert one(parsed, "main.(*server).handle").functions == ["main.(*server).handle"]
    assert one(parsed, "main.server.valueMethod").functions == ["main.server.valueMethod"]

    gen = goroutines_in(parsed, "main.genericWait[...]")
    assert len(gen) == 2
    assert sorted(g.functions[1] for g in gen) == ["main.genericIntCaller",
                                                    "main.genericStringCaller"]

    spawner, child = one(parsed, "main.spawner"), one(parsed, "main.spawnedChild")
    assert spawner.created_by.function == "main.main" and spawner.created_by.goid == 1
    assert child.created_by.function == "main.spawner"
    assert child.created_by.goid == spawner.goid != 1
    assert child.created_by.line > 0 and child.created_by.pc_offset

    rec = one(parsed, "main.recursionRoot")
    # Go prints the 50 innermost and 50 outermost frames and elides the rest.
    assert rec.elided == DEPTH + 1 - 100 and rec.elided_at == 50
    assert len(rec.frames) == 100
    assert rec.functions[:-1] == ["main.recurse"] * 99 and rec.functions[-1] == "main.recursionRoot"
    assert rec.frames[0].line != rec.frames[1].line  # the receive vs the recursive call


def test_states_shallow_recursion_not_elided(states_bin):
    with run_target(states_bin, "-depth", "40", "-busy", "0", "-nospin") as t:
        parsed = parse_go_traceback(t.dump())
    rec = one(parsed, "main.recursionRoot")
    assert rec.elided == 0 and rec.elided_at is None
    assert rec.functions == ["main.recurse"] * 40 + ["main.recursionRoot"]
    assert not goroutines_in(parsed, "main.spin") and not goroutines_in(parsed, "main.busy")


def test_states_is_stable(states_bin):
    """Two dumps a moment apart show the same parked goroutines in the same frames."""
    with run_target(states_bin, "-busy", "0", "-nospin") as t:
        a = parse_go_traceback(t.dump())
        b = parse_go_traceback(t.dump())
    assert set(a) == set(b)
    for goid, g in a.items():
        if goid == 1 or g.has_function("os/signal.loop"):
            continue  # the dumper, and the signal goroutine that SIGUSR1 itself wakes
        assert (g.status, [f.tuple for f in g.frames]) == \
            (b[goid].status, [f.tuple for f in b[goid].frames])


def test_states_extra_goroutines(states_bin):
    with run_target(states_bin, "-extra", "10000", "-busy", "0", "-nospin",
                    ready_timeout=60) as t:
        parsed = parse_go_traceback(t.dump())
    extra = goroutines_in(parsed, "main.extraWaiter")
    assert len(extra) == 10000
    assert all(g.wait_reason == "chan receive" and g.created_by.goid == 1 for g in extra)


def test_states_crash_dump_system_level(states_bin):
    """SIGQUIT at GOTRACEBACK=system: runtime frames, fp/sp/pc, system goroutines."""
    with run_target(states_bin) as t:
        text = t.quit_dump()
        assert t.proc.returncode == 2
    assert text.startswith("SIGQUIT: quit")
    gs = parse_go_traceback_list(text)
    parsed = parse_go_traceback(text)
    assert all(g.gp is not None for g in gs)
    recv = one(parsed, "main.blockedRecv")
    assert recv.functions[:3] == ["runtime.gopark", "runtime.chanrecv", "runtime.chanrecv1"]
    assert recv.functions[-1] == "runtime.goexit"
    for f in recv.frames:
        assert f.fp and f.sp and f.pc and f.pc_offset is not None
    inl = one(parsed, "main.inlineRoot")
    assert all(f.fp is None for f in inl.frames if f.inlined)
    sysc = one(parsed, "main.blockedSyscall")
    assert sysc.wait_reason == "syscall" and sysc.m is not None
    reasons = {g.wait_reason for g in gs}
    assert "GC sweep wait" in reasons and "GC scavenge wait" in reasons  # system goroutines
    for fn, reason in STATES.items():
        assert one(parsed, fn).wait_reason == reason, fn
    # The spinner was preempted by the crash (runnable) or, if its thread had not
    # stopped yet, Go prints it as running with its stack unavailable.
    locked = [g for g in gs if g.locked_to_thread and (
        g.has_function("main.spin") or g.stack_unavailable)]
    assert len(locked) == 1


def test_target_reaped(states_bin):
    with run_target(states_bin, "-busy", "0", "-nospin") as t:
        pid = t.pid
        os.kill(pid, 0)
    assert t.proc.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_target_failure_shows_stderr(states_bin):
    with pytest.raises(TargetError, match="flag provided but not defined"):
        with run_target(states_bin, "-no-such-flag"):
            pass


# ---- values ------------------------------------------------------------

VALUE_NAMES = """i8 i16 i32 i64 i u8 u16 u32 u64 u uptr f32 f64 c64 c128 b s st pst nilp sl m e a
ch fn nan pinf ninf negzero f32nan bad long empty arr bytesl nilsl emptysl structs mp big mk mb
mu growing bigKeys bigVals nilmap emptymap err2 nilErr anyInt anyStr anyStruct anyPtr anyNilPtr nilIface closedCh nilCh
nilFn namedFn closure tm times tptr zeroTime d negd g gp ring up nilUp pp emptyStruct""".split()


@pytest.fixture(scope="module")
def values_run(go_build, tmp_path_factory):
    d = tmp_path_factory.mktemp("values")
    paths = {k: d / f"{k}.json" for k in ("values", "raw", "addrs")}
    args = [a for k, p in paths.items() for a in (f"-{k}", str(p))]
    with run_target(go_build("values"), *args) as t:
        dump = t.dump()
    return ({k: json.loads(p.read_text()) for k, p in paths.items()},
            {k: p.read_text() for k, p in paths.items()}, dump)


def test_values_every_kind(values_run):
    v, raw, addrs = (values_run[0][k] for k in ("values", "raw", "addrs"))
    assert list(v) == VALUE_NAMES and list(raw) == VALUE_NAMES
    assert (v["i8"], v["i16"], v["i32"], v["i64"]) == (-128, -32768, -2**31, -2**63)
    assert (v["u8"], v["u16"], v["u32"], v["u64"]) == (255, 65535, 2**32 - 1, 2**64 - 1)
    assert v["uptr"] == 0xdeadbeef and v["i"] == -42
    assert v["f32"] == 0.1 and v["f64"] == math.pi
    assert (v["nan"], v["pinf"], v["ninf"], v["f32nan"]) == ("NaN", "+Inf", "-Inf", "NaN")
    assert v["c64"] == {"real": 1.5, "imag": -2.25}
    assert v["c128"] == {"real": -1e300, "imag": 1e-300}
    assert v["b"] is True and "ünïcödé" in v["s"]
    assert v["bad"] == "ok\ufffd\ufffdbad\ufffd"
    assert len(v["long"]) > 65536 and v["long"].endswith("END")
    assert v["st"] == {"Embedded": {"E": -1}, "Embedded2": {"F": "emb2"},
                       "Name": "héllo, 世界", "count": 3, "Inner": {"A": 5, "b": "inner b"},
                       "P": {"A": 6, "b": "pointed"}, "___private": -7,
                       "tags": ["t1", "t2"], "flags": [True, False]}
    assert list(v["st"]) == ["Embedded", "Embedded2", "Name", "count", "Inner", "P",
                             "___private", "tags", "flags"]  # declaration order
    assert v["pst"]["Name"] == "pointed S" and v["nilp"] is None
    assert v["arr"] == [-1, 0, 1, 32767] and v["bytesl"] == [104, 105, 0, 255]
    assert v["nilsl"] is None and v["emptysl"] == [] and v["sl"] == [3, 1, 4, 1, 5, 9, 2, 6]
    assert v["m"] == {"": 0, "one": 1, "two": 2, "ünï": -1}
    assert v["mp"] == {"-5": {"A": -50, "b": "minus fifty"}, "1": {"A": 10, "b": "ten"}, "3": None}
    assert len(v["big"]) == 5000 and v["big"]["-100"] == 0 and v["big"][str(4999 * 7 - 100)] == 4999
    assert [e["key"] for e in v["mk"]] == [{"X": -3, "Y": 4}, {"X": 1, "Y": 2}, {"X": 10, "Y": 0}]
    assert v["mb"] == {"false": "no", "true": "yes"}
    assert v["mu"] == {"0": False, str(2**64 - 1): True}
    assert v["nilmap"] is None and v["emptymap"] == {}
    assert v["e"] == {"__type": "*errors.errorString", "value": {"s": "boom"}, "__error": "boom"}
    assert v["err2"]["__type"] == "*fmt.wrapError"
    assert v["err2"]["__error"] == "write /tmp/x: disk full"
    assert v["err2"]["value"]["err"]["__error"] == "disk full"
    assert v["a"] == {"__type": "int64", "value": -9}
    assert v["anyInt"] == {"__type": "int", "value": 7}
    assert v["anyStr"] == {"__type": "string", "value": "seven"}
    assert v["anyStruct"] == {"__type": "main.Inner", "value": {"A": 7, "b": "seven"}}
    assert v["anyPtr"] == {"__type": "*main.Inner", "value": {"A": 8, "b": "eight"}}
    assert v["anyNilPtr"] == {"__type": "*main.Inner", "value": None}
    assert v["nilIface"] is None and v["nilErr"] is None
    assert v["ch"] == {"__chan": "chan int", "len": 3, "cap": 4, "closed": False}
    assert v["closedCh"] == {"__chan": "chan string", "len": 1, "cap": 3, "closed": True}
    assert v["nilCh"] is None and v["nilFn"] is None
    assert v["fn"] == v["namedFn"] == "main.double" and v["closure"] == "main.capture.func1"
    assert v["tm"] == "2024-02-29T20:59:58.123456789Z" and v["zeroTime"] == "0001-01-01T00:00:00Z"
    assert (v["d"], v["negd"]) == ("1.5s", "-3h0m25s")
    assert v["g"] == {"Key": 42, "Val": "answer", "More": ["x", "y"]}
    assert v["gp"] == {"Key": "k", "Val": None, "More": None}
    ring = v["ring"]
    assert ring["Next"]["Next"]["Next"] == {"__cycle": addrs["ring"]}
    assert v["up"] == addrs["up"] and v["up"].startswith("0x") and v["nilUp"] is None
    assert v["pp"] == 77 and v["emptyStruct"] == {}


def test_values_raw_form(values_run):
    raw, addrs = values_run[0]["raw"], values_run[0]["addrs"]
    assert raw["pst"]["__addr"] == int(addrs["pst"], 16) and raw["pst"]["value"]["Name"] == "pointed S"
    assert raw["ring"]["__addr"] == int(addrs["ring"], 16)
    assert raw["ring"]["value"]["Next"]["value"]["Next"]["value"]["Next"] == {"__cycle": addrs["ring"]}
    assert raw["pp"]["__addr"] == int(addrs["pp"], 16) and raw["pp"]["value"]["value"] == 77
    assert raw["st"]["P"]["value"] == {"A": 6, "b": "pointed"}
    assert isinstance(raw["anyPtr"]["value"]["__addr"], int)
    assert raw["nilp"] is None and raw["i64"] == -2**63
    for name in ("sl", "m", "ch", "big", "ring", "up", "pp"):
        assert int(addrs[name], 16) > 0x1000, name


def test_values_capture_is_parked(values_run):
    parsed = parse_go_traceback(values_run[2])
    g = one(parsed, "main.capture")
    assert g.wait_reason == "chan receive" and g.functions == ["main.capture", "main.runCapture"]


# ---- the parser on forms the programs cannot produce on demand -----------

SYNTHETIC = """\
goroutine 18 gp=0xc000102380 m=4 mp=0xc000100008 [running]:
\tgoroutine running on other thread; stack unavailable
created by main.main in goroutine 1
\t/src/main.go:20 +0x25

goroutine 7 [sleep, 12 minutes, locked to thread] {request: "a b", user: bob}:
time.Sleep(0x34630b8a000)
\t/go/src/runtime/time.go:300 +0x11a
panic({0x4a2b20?, 0xc00001c030?})
\t/go/src/runtime/panic.go:770 +0x132
main.g(...)
\t/src/main.go:9
main.f()
\t/src/main.go:12 +0x17 fp=0xc000050fd0 sp=0xc000050fb0 pc=0x49a1d7
created by runtime.gcenable
\t/go/src/runtime/mgc.go:203 +0x66

goroutine 9 [chan receive (scan), 3 minutes]:
main.worker()
\t/src/a:b/main.go:31 +0x2c
[originating from goroutine 4]:
main.spawn(...)
\t/src/main.go:40 +0x1d
...additional frames elided...
created by main.main
\t/src/main.go:44 +0x33

"""


def test_parser_synthetic_forms():
    gs = parse_go_traceback(SYNTHETIC)
    a = gs[18]
    assert a.stack_unavailable and a.frames == [] and a.wait_reason == "running"
    assert (a.gp, a.m, a.mp) == (0xc000102380, 4, 0xc000100008)
    assert a.created_by.function == "main.main" and a.created_by.goid == 1
    b = gs[7]
    assert b.status == "sleep, 12 minutes, locked to thread"
    assert (b.wait_reason, b.minutes, b.locked_to_thread) == ("sleep", 12, True)
    assert b.labels == {"request": "a b", "user": "bob"}
    assert b.functions == ["time.Sleep", "panic", "main.g", "main.f"]
    assert b.frames[2].inlined and b.frames[2].tuple == ("main.g", "/src/main.go", 9, None)
    assert (b.frames[3].fp, b.frames[3].sp, b.frames[3].pc) == (0xc000050fd0, 0xc000050fb0, 0x49a1d7)
    assert b.frames[3].pc_offset == 0x17 and b.gp is None
    assert b.created_by.goid is None and b.created_by.function == "runtime.gcenable"
    c = gs[9]
    assert (c.wait_reason, c.scan, c.minutes) == ("chan receive", True, 3)
    assert c.frames[0].file == "/src/a:b/main.go" and c.frames[0].line == 31
    assert len(c.ancestors) == 1 and c.ancestors[0].goid == 4 and c.ancestors[0].truncated
    assert c.ancestors[0].frames[0].function == "main.spawn"
    assert c.ancestors[0].created_by.function == "main.main" and c.created_by is None


def test_split_call():
    assert split_call("main.(*server).handle(0xc0000)") == ("main.(*server).handle", "0xc0000")
    assert split_call("main.genericWait[...]({0x4fa?, 0x9}, 0x1)") == \
        ("main.genericWait[...]", "{0x4fa?, 0x9}, 0x1")
    assert split_call("main.f(...)") == ("main.f", "...")
    with pytest.raises(ValueError):
        split_call("main.f")
