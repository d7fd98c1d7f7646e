"""Captures in frames where the captured function was inlined.

tests/goprogs/inlined_capture parks goroutines inside main.handle, which the
compiler inlines into main.serveA and main.serveB, and into main.wrap, itself
inlined into main.serveC; one more goroutine runs the out-of-line copy (a
physical frame). handle reports its own values before it blocks: the oracle.
Every goroutine must get one function-table row, at the depth its main.handle
frame has in `frames`, with the program's values wherever the compiler kept a
location for them (Go's DWARF drops some variables of inlined bodies: those
are NULL with the reason in `_errors`, as Delve says "optimized out").
"""
from __future__ import annotations

import json
import subprocess

import pytest

from gobuild import PROGS, go_env, go_exe
from targets import run_target
from probe_compiler.dwarf import DwarfInfo
from probe_compiler.gobinary import GoBinary
from probe_compiler.pclntab import inlined_into
from probe_compiler.plan import ProbePlan, compile_plan
from probe_compiler.spec import parse_spec
from server.snapshot_job import snapshot_pids, write
from server.store import open_snapshot

SPEC = """version: 1
functions:
  main.handle:
    capture: [n, local, msg, r.ID]
  main.wrap:
    capture: [id]
"""
CALLER_OF = {"A": "main.serveA", "B": "main.serveB", "C": "main.serveC", "O": "main.serveOutOfLine"}


@pytest.fixture(scope="module")
def binary(go_build):
    return go_build("inlined_capture")


@pytest.fixture(scope="module")
def snap(binary, tmp_path_factory):
    d = tmp_path_factory.mktemp("inlined")
    spec = parse_spec(SPEC)
    with run_target(binary, "-values", str(d / "v.json")) as t:
        expected = json.loads((d / "v.json").read_text())
        [rec] = snapshot_pids([t.pid], spec)
    assert rec.error is None
    write(str(d / "s.sqlite"), [rec], spec)
    db = open_snapshot(d / "s.sqlite")
    yield rec, expected, db
    db.close()


def test_the_compiler_inlined_handle(tmp_path):
    """The premise, checked with the compiler's own words (-gcflags=-m)."""
    work = tmp_path / "src"
    work.mkdir()
    (work / "main.go").write_bytes((PROGS / "inlined_capture" / "main.go").read_bytes())
    (work / "go.mod").write_text("module exray.test/inlined_capture\n\ngo 1.21\n")
    out = subprocess.run([go_exe(), "build", "-gcflags=-m", "-o", str(tmp_path / "bin"), "."],
                         cwd=work, env=go_env(), capture_output=True, text=True, check=True).stderr
    assert "can inline handle" in out and "can inline wrap" in out
    assert out.count("inlining call to handle") >= 3, out


def test_plan_lists_every_inlined_instance(binary):
    with GoBinary.open(str(binary)) as b:
        dw = DwarfInfo.load(str(binary), b.build_id)
        plan = compile_plan(b, dw, parse_spec(SPEC))
        assert {f.name for f in inlined_into(b.pclntab, "main.handle")} == {
            "main.serveA", "main.serveB", "main.serveC"}
    handle = plan.function_by_symbol()["main.handle"]
    assert handle.end > handle.entry   # the out-of-line copy is there too
    by_caller = {i.caller: i for i in handle.inlined}
    assert set(by_caller) == {"main.serveA", "main.serveB", "main.serveC"}
    assert by_caller["main.serveA"].inline_depth == 1
    assert by_caller["main.serveC"].inline_depth == 2     # handle inside wrap inside serveC
    for inst in handle.inlined:
        assert inst.caller_entry <= min(lo for lo, _ in inst.ranges)
        assert max(hi for _, hi in inst.ranges) <= inst.caller_end
        assert set(inst.roots) == {"n", "local", "msg", "r"} and set(inst.ops) == {"n", "local", "msg", "r_ID"}
    wrap = plan.function_by_symbol()["main.wrap"]   # only ever inlined: no code of its own
    assert (wrap.entry, wrap.end) == (0, 0)
    assert [(i.caller, i.inline_depth) for i in wrap.inlined] == [("main.serveC", 1)]
    again = ProbePlan.from_json(plan.to_json())
    assert again.to_json() == plan.to_json()
    assert again.functions[0].inlined[0].roots == plan.functions[0].inlined[0].roots


def test_one_row_per_goroutine_at_the_inlined_frame(snap):
    rec, expected, db = snap
    rows = db.execute("SELECT h.goid, h.depth, f.function, f.inlined, p.function "
                      "FROM main_handle h JOIN frames f USING (process_id, goid, depth) "
                      "JOIN frames p ON p.process_id = f.process_id AND p.goid = f.goid "
                      "AND p.depth = f.depth + 1").fetchall()
    assert len(rows) == len(expected) == 7
    assert {r[2] for r in rows} == {"main.handle"}
    by_parent = {}
    for goid, depth, _, inlined, parent in rows:
        by_parent.setdefault(parent, []).append(bool(inlined))
    assert by_parent == {"main.serveA": [True] * 2, "main.serveB": [True] * 3,
                         "main.wrap": [True], "main.serveOutOfLine": [False]}
    # main.wrap's own inlined frame (in serveC) has its row too, right outside handle's.
    [(wdepth, fn)] = db.execute("SELECT w.depth, f.function FROM main_wrap w "
                                "JOIN frames f USING (process_id, goid, depth)").fetchall()
    assert fn == "main.wrap"


def _by_id(rec, expected):
    """Rows keyed by the program's id: each goroutine's id from its caller's
    kind and the values that identify it (local is never dropped)."""
    out = {}
    for g in rec.goroutines:
        for c in g.captures:
            if c.function != "main.handle":
                continue
            caller = next(f.function for f in g.frames[c.depth + 1:] if f.function != "main.wrap")
            [key] = [k for k, e in expected.items()
                     if CALLER_OF[e["kind"]] == caller and e["local"] == c.values["local"]]
            out[key] = (c, g.frames[c.depth])
    return out


def test_values_match_the_program(snap):
    rec, expected, _ = snap
    rows = _by_id(rec, expected)
    assert set(rows) == set(expected)
    for key, (c, frame) in rows.items():
        e = expected[key]
        want = {"n": e["n"], "local": e["local"], "msg": e["msg"], "r_ID": e["id"]}
        for col, v in c.values.items():
            if v is None:
                assert c.errors.get(col), (key, col)
            else:
                assert v == want[col], (key, col, v, want[col])
        assert c.values["local"] == e["local"] and c.values["msg"] == e["msg"], key
        if e["kind"] in ("A", "C"):        # the compiler keeps n's stack slot there
            assert c.values["n"] == e["n"], key
        if e["kind"] == "O":               # the physical frame: everything is there
            assert not frame.inlined
            assert c.values == want, c.errors


def test_the_physical_capture_is_unchanged(snap):
    rec, expected, db = snap
    [(n, local, msg, rid, errors)] = db.execute(
        "SELECT n, local, msg, r_ID, _errors FROM main_handle h JOIN frames f "
        "USING (process_id, goid, depth) WHERE f.inlined = 0").fetchall()
    [e] = [e for e in expected.values() if e["kind"] == "O"]
    assert (json.loads(n), json.loads(local), json.loads(msg), json.loads(rid)) == (
        e["n"], e["local"], e["msg"], e["id"])
    assert errors is None


def test_without_captures_nothing_changes(binary, tmp_path):
    with run_target(binary, "-values", str(tmp_path / "v.json")) as t:
        [bare] = snapshot_pids([t.pid], None)
        [capt] = snapshot_pids([t.pid], parse_spec(SPEC))
    assert bare.error is None and not any(g.captures for g in bare.goroutines)
    frames = {g.goid: [(f.function, f.depth, f.inlined) for f in g.frames] for g in bare.goroutines}
    assert frames == {g.goid: [(f.function, f.depth, f.inlined) for f in g.frames]
                      for g in capt.goroutines}
