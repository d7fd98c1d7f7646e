"""The read program (docs/read-program.md) against the reference reader.

1. Unit: the executor over FakeMemory copies what the decoder reads; the
   decoder then runs on the copies alone (the fake memory is wiped first, so
   a live read would fail) and gives the reference's values: cycles, nil and
   dangling pointers, depth, element and string cuts, interfaces.
2. Live: capture_executor="compare" reads every captured frame both ways in
   one pause and raises where the rows differ; here on the values program
   one variable at a time, and under tight budgets.
3. Several processes paused together record their pause skew.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from agent.memory import FakeMemory
from agent.readexec import Copies, Run, fp_walk, span_table
from probe_compiler.decode import Budgets, ByteBudget, decode_value
from probe_compiler.readprog import ReadProgram, compile_read_program
from test_decode import RTYPES, TYPES, Mem, T, _list, gostr, u64


def _program(budgets):
    plan = SimpleNamespace(types=TYPES, budgets=budgets, build_id="x", functions=[])
    return compile_read_program(plan, {rt: t.id for rt, t in RTYPES.items()})


def _both(tid, data, mem: Mem, budgets=Budgets()):
    """(reference, from copies) decodes of a value whose own bytes are `data`."""
    def decode(read):
        return decode_value(TYPES, tid, data, None, read, budgets,
                            frame_budget=ByteBudget(budgets.frame_bytes),
                            snapshot_budget=ByteBudget(budgets.snapshot_bytes),
                            type_by_rtype=RTYPES.get)
    want = decode(mem.read)
    fake = FakeMemory({a: bytes(b) for a, b in mem.regions.items()})
    copies = Copies(0)
    prog = _program(budgets)
    run = Run(prog, fake, copies, 1, types_base=0, known_rtypes=set(RTYPES), snapshot_left=1 << 30)
    run.expand(tid, np.frombuffer(data, np.uint8), np.zeros(1, np.int64), np.zeros(1, np.int64),
               np.zeros(1, np.int64))
    assert run.run_levels(lambda: False)
    assert not run.bad.any(), run.why
    fake.regions.clear()      # after the "resume": nothing live is left to read
    got = decode(copies.read)
    assert not copies.misses, copies.misses
    return want, got


def test_list_nil_cycle_and_depth():
    mem = Mem()
    head = _list(mem, 3, cyclic=False)
    want, got = _both(T.PNODE, u64(head), mem)
    assert got == want and want[0]["Next"]["Next"] == {"Val": 2, "Next": None}
    ring = _list(mem, 3, cyclic=True)
    want, got = _both(T.PNODE, u64(ring), mem)
    assert got == want and want[0]["Next"]["Next"]["Next"] == {"__cycle": hex(ring)}
    long = _list(mem, 6, cyclic=False)
    want, got = _both(T.PNODE, u64(long), mem, Budgets(depth=2))
    assert got == want and want[0]["Next"]["Next"]["__truncated"] == "depth"


def test_dangling_pointer_is_unreadable_from_the_copies_too():
    mem = Mem()
    want, got = _both(T.PNODE, u64(0xdead0000), mem)
    assert got == want and "unreadable memory at 0xdead0000" in json.dumps(want)


def test_strings_and_slices_cut_where_the_decoder_cuts():
    mem = Mem()
    b = Budgets(string_bytes=4, elements=2)
    want, got = _both(T.STRING, gostr(mem, "héllo world"), mem, b)
    assert got == want and want[0]["__truncated"] == "bytes"
    strs = b"".join(gostr(mem, s) for s in ("a", "bb", "ccc"))
    arr = mem.put(strs)
    want, got = _both(T.STRINGS, u64(arr, 3, 3), mem, b)
    assert got == want and want[0][-1] == {"__truncated": "elements", "len": 3}


def test_interfaces_direct_and_indirect():
    from test_decode import RT_INT, RT_POINT, RT_PPOINT
    mem = Mem()
    pt = mem.put(u64(1, 2))
    for data in (u64(RT_INT, mem.put(u64(42))), u64(RT_POINT, pt), u64(RT_PPOINT, pt), u64(0x123, pt),
                 u64(0, 0)):
        want, got = _both(T.ANY, data, mem)
        assert got == want


def test_program_is_plain_data():
    prog = _program(Budgets())
    again = ReadProgram.from_json(prog.to_json())
    assert again.shapes == prog.shapes and again.rtypes == prog.rtypes and again.maps == prog.maps


def test_a_frame_over_its_byte_budget_goes_to_the_fallback():
    mem = Mem()
    head = _list(mem, 6, cyclic=False)
    fake = FakeMemory({a: bytes(b) for a, b in mem.regions.items()})
    b = Budgets(frame_bytes=40)
    run = Run(_program(b), fake, Copies(0), 1, types_base=0, known_rtypes=set(), snapshot_left=1 << 30)
    run.expand(T.PNODE, np.frombuffer(u64(head), np.uint8), np.zeros(1, np.int64), np.zeros(1, np.int64),
               np.zeros(1, np.int64))
    run.run_levels(lambda: False)
    assert run.bad[0] and run.why[0] == "the frame's byte budget"


def test_frame_pointer_walk_over_stack_copies():
    # one goroutine: frames at BP 0x1000 (pc 0x10), 0x1040 (pc 0x20: captured), 0x1080 (pc 0x30: top)
    lo, stack = 0x1000, bytearray(0x100)
    def put(at, v):
        stack[at - lo:at - lo + 8] = v.to_bytes(8, "little")
    put(0x1000, 0x1040); put(0x1008, 0x20)
    put(0x1040, 0x1080); put(0x1048, 0x30)
    put(0x1080, 0); put(0x1088, 0x99)
    a = lambda *xs: np.array(xs, np.int64)
    w = fp_walk(a(0x10), a(0x1000), a(lo), a(len(stack)), a(0), np.frombuffer(bytes(stack), np.uint8),
                span_table([(0x20, 0x21)]), span_table([]), span_table([(0x30, 0x31)]), 100)
    assert w.k.tolist() == [0] and w.pc.tolist() == [0x20] and w.cfa.tolist() == [0x1040 + 16]
    assert not w.fallback
    # the same chain without a top frame at its end can't be vouched for
    w = fp_walk(a(0x10), a(0x1000), a(lo), a(len(stack)), a(0), np.frombuffer(bytes(stack), np.uint8),
                span_table([(0x20, 0x21)]), span_table([]), span_table([]), 100)
    assert w.fallback == {0}
    # a captured innermost pc goes to the fallback (its registers matter)
    w = fp_walk(a(0x20), a(0x1000), a(lo), a(len(stack)), a(0), np.frombuffer(bytes(stack), np.uint8),
                span_table([(0x20, 0x21)]), span_table([]), span_table([(0x30, 0x31)]), 100)
    assert w.fallback == {0}


# ---------------------------------------------------------------- live, both executors in one pause

def _values_names(binary, workdir):
    from targets import run_target
    with run_target(binary, "-values", str(workdir / "v.json")) as t:
        pass
    return list(json.loads((workdir / "v.json").read_text()))


def test_values_program_each_variable_compared(go_build, tmp_path):
    from agent.snapshot import SnapshotOptions
    from probe_compiler.dwarf import DwarfInfo
    from probe_compiler.gobinary import GoBinary
    from probe_compiler.spec import parse_spec
    from server.snapshot_job import snapshot_pids
    from targets import run_target
    binary = go_build("values")
    with run_target(binary, "-values", str(tmp_path / "v.json")) as t:
        expected = json.loads((tmp_path / "v.json").read_text())
        with GoBinary.open(str(binary)) as b:
            described = {v.name.lstrip("&") for v in
                         DwarfInfo.load(str(binary), b.build_id).function("main.capture").variables}
        names = [k for k in expected if k in described]
        assert len(names) > 20
        spec = "version: 1\nfunctions:\n  main.capture:\n    capture: [%s]\n"
        for budgets in (Budgets(), Budgets(string_bytes=3, elements=2, depth=2, frame_bytes=300)):
            for name in names:   # one at a time: a frame the program can't finish falls back whole
                [rec] = snapshot_pids([t.pid], parse_spec(spec % name),
                                      SnapshotOptions(capture_executor="compare"), budgets=budgets)
                assert rec.error is None, rec.error


def test_two_processes_paused_together_record_their_skew(go_build):
    from agent.snapshot import SnapshotOptions, snapshot_processes
    from server.snapshot_job import load_targets
    from targets import run_target
    binary = go_build("parkers")
    with run_target(binary) as a, run_target(binary) as b:
        targets = load_targets([a.pid, b.pid], None, {})
        recs = snapshot_processes([(a.pid, targets[a.pid]), (b.pid, targets[b.pid])],
                                  SnapshotOptions(capture_executor="program"))
    assert all(r.error is None for r in recs), [r.error for r in recs]
    assert sorted(r.pause_skew_ns for r in recs)[0] == 0
    # generous: both are seized one after the other, before either is read (about 0.2 ms here)
    assert max(r.pause_skew_ns for r in recs) < 50e6
    assert all(r.pause_start_ns and r.pause_ns for r in recs)


@pytest.mark.parametrize("force_fallback", [False, True])
def test_snapshot_budget_is_spent_in_goroutine_order(go_build, monkeypatch, force_fallback):
    """The snapshot's byte budget runs out mid-snapshot: both executors give
    the bytes to the same frames (goroutine order, as the reference reads),
    also when some frames go to the fallback reader and others are decoded
    from the copies after the resume."""
    import agent.readexec as rx
    from agent.snapshot import SnapshotOptions
    from probe_compiler.spec import parse_spec
    from server.snapshot_job import snapshot_pids
    from targets import run_target
    if force_fallback:     # every other captured frame: the program "can't" read it
        orig = rx.Run.run_levels

        def run_levels(self, out_of_time):
            self.mark(np.arange(1, self.n, 2), "test: forced fallback")
            return orig(self, out_of_time)
        monkeypatch.setattr(rx.Run, "run_levels", run_levels)
    spec = parse_spec("version: 1\nfunctions:\n  main.parkLabeled:\n    capture: [sku]\n")
    with run_target(go_build("parkers"), "-labeled", "12") as t:
        # "widget" is 6 bytes a frame: 6 frames fit, the seventh is cut (and the
        # 6 frames the program reads fit by themselves, as do the 6 others)
        [rec] = snapshot_pids([t.pid], spec, SnapshotOptions(capture_executor="compare"),
                              budgets=Budgets(snapshot_bytes=40))
    assert rec.error is None, rec.error
    skus = [c.values["sku"] for g in rec.goroutines for c in g.captures]
    assert len(skus) == 12 and rec.truncated
    # The budget goes in allgs order. Records are in goid order, which is
    # allgs order only while no goroutine reuses a dead one's g (the runtime
    # may), so count here; "compare" raised if the executors had disagreed.
    assert skus.count("widget") == 6 and skus.count({"__truncated": "budget"}) == 6, skus


def test_coalesced_reads_fail_exactly_where_single_reads_would():
    """A level's reads are merged by page; a merged read spanning an unmapped
    gap is read again range by range, so only the unreadable range fails,
    and the copies answer the decoder as single reads would have."""
    from agent.errors import MemoryReadError
    from agent.readexec import coalesce, read_coalesced
    fake = FakeMemory({0x1000: b"A" * 16, 0x1800: b"B" * 16, 0x2000: b"C" * 8})
    addrs = np.array([0x1800, 0x1000, 0x5000, 0x2000, 0x1004], np.int64)
    sizes = np.array([16, 8, 8, 8, 4], np.int64)
    starts, ends, gid = coalesce(addrs, sizes)
    assert len(starts) == 2 and gid.tolist() == [0, 0, 1, 0, 0]    # 0x1000-0x2008 is one read
    buf, at, ok, chunks = read_coalesced(fake, addrs, sizes)
    assert ok.tolist() == [True, True, False, True, True]
    got = [bytes(buf[a:a + n]) for a, n in zip(at.tolist(), sizes.tolist())]
    assert got[:2] == [b"B" * 16, b"A" * 8] and got[3:] == [b"C" * 8, b"A" * 4]
    copies = Copies(0)
    for c in chunks:
        copies.add(*c)
    assert copies.read(0x1808, 8) == b"B" * 8
    with pytest.raises(MemoryReadError, match="unmapped or unreadable"):
        copies.read(0x5000, 8)
    with pytest.raises(MemoryReadError, match="not copied"):
        copies.read(0x1400, 8)          # the gap the merged read spanned: never copied


def test_big_maps_walked_and_looked_up_by_the_program(go_build, monkeypatch):
    """Maps of 300 and 21 entries (a directory of tables): whole, and looked
    up by string keys (found, absent, the empty key): the program reads them
    (no frame falls back) and its rows equal the reference's."""
    import agent.snapshot as snap
    from agent.snapshot import SnapshotOptions
    from probe_compiler.spec import parse_spec
    from server.snapshot_job import snapshot_pids
    from targets import run_target
    fell_back = []
    orig = snap._program_in_pause

    def spy(*a, **kw):
        out = orig(*a, **kw)
        fell_back.append(out["fallback"])
        return out
    monkeypatch.setattr(snap, "_program_in_pause", spy)
    caps = ['m["k42"]', 'm["k299"]', 'm["nope"]', 'e[""]', 'e["x3"]', 'e["x"]', "m"]
    spec = parse_spec("version: 1\nfunctions:\n  main.park:\n    capture:\n"
                      + "".join(f"      - {json.dumps(c)}\n" for c in caps))
    with run_target(go_build("bigmaps"), dump=False) as t:
        [rec] = snapshot_pids([t.pid], spec, SnapshotOptions(capture_executor="compare"))
    assert rec.error is None, rec.error
    rows = [c.values for g in rec.goroutines for c in g.captures]
    assert len(rows) == 3 and fell_back == [0]
    r = rows[0]
    assert (r["m_k42"], r["m_k299"], r["m_nope"], r["e"], r["e_x3"], r["e_x"]) == ("v42", "v299", None, 7, 3, None)
    assert len(r["m"]) == 64 + 1 and r["m"]["__truncated"] == {"len": 300}   # elements: 64
