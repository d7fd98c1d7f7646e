"""Generic functions in the spec: `main.Park[...]` captures every instance.

tests/goprogs/generics parks goroutines in every GC-shape instance of
main.Park (int, string and a struct), of the method main.(*Cache[K,V]).Get
(two instances) and of main.Wait (only ever inlined). Each instance reports
its own values, encoded by encoding/json, before it blocks: the oracle. One
spec entry per generic function must give one table holding the rows of all
its instances, with those values.
"""
from __future__ import annotations

import json
import textwrap

import pytest

from targets import run_target
from probe_compiler import generics as gx
from probe_compiler.dwarf import DwarfInfo
from probe_compiler.errors import SpecError
from probe_compiler.gobinary import GoBinary
from probe_compiler.plan import ProbePlan, compile_plan
from probe_compiler.spec import parse_spec
from probe_compiler.spec_check import check_against_binary
from server.snapshot_job import snapshot_pids, write
from server.store import function_tables, open_snapshot

STRUCT = "go.shape.struct { X int; Y int; Label string }"
PARK = {"main.Park[go.shape.int]": (1, 2), "main.Park[go.shape.string]": (3, 4),
        f"main.Park[{STRUCT}]": (5, 6)}
GET = {"main.(*Cache[go.shape.string,go.shape.int]).Get": (7, 8),
       "main.(*Cache[go.shape.int,go.shape.string]).Get": (9,)}
WAIT = {"main.Wait[go.shape.int]": (10,), "main.Wait[go.shape.string]": (11,)}

SPEC = """version: 1
functions:
  main.Park[...]:
    capture: [id, v, box, box.V, box.Note]
  main.(*Cache[...]).Get:
    table: cache_get
    capture: [id, key, c.Name, c.Hits]
  main.Wait[...]:
    capture: [id]
"""


# ------------------------------------------------------------------ matching (pure)

def test_generic_pattern_replaces_every_outermost_bracket_group():
    assert gx.generic_pattern("main.Map[go.shape.int]") == "main.Map[...]"
    assert gx.generic_pattern("main.(*Cache[go.shape.string,go.shape.int]).Get") == "main.(*Cache[...]).Get"
    assert gx.generic_pattern("main.F[go.shape.[]int,go.shape.map[string][]int]") == "main.F[...]"
    assert gx.generic_pattern("main.F[go.shape.struct { A [2][3]int }].func1") == "main.F[...].func1"
    assert gx.generic_pattern("main.F[T]") == "main.F[...]"
    assert gx.generic_pattern("main.F[...]") == "main.F[...]"
    assert gx.generic_pattern("main.main") == "main.main"
    assert gx.generic_pattern("main.F[go.shape.int") == "main.F[go.shape.int"   # unclosed: as is


def test_editor_relation_is_unchanged_and_shared():
    from server.lsp import gosource
    assert gosource.generic_pattern is gx.generic_pattern
    assert gosource.symbol_matches is gx.symbol_matches
    assert gx.symbol_matches("main.Map[...]", "main.Map[go.shape.int]")
    assert gx.symbol_matches("main.Map[T]", "main.Map[go.shape.int]")
    assert gx.symbol_matches("main.Map[go.shape.string]", "main.Map[go.shape.int]")
    assert gx.symbol_matches("main.f", "main.f")
    assert not gx.symbol_matches("main.Map", "main.Map[go.shape.int]")
    assert not gx.symbol_matches("main.Map[...]", "main.Map[go.shape.int].func1")


def test_spec_relation():
    m = gx.spec_matches
    assert m("main.Park[...]", "main.Park[go.shape.int]")
    assert m("main.Park[...]", f"main.Park[{STRUCT}]")
    assert m("main.(*Cache[...]).Get", "main.(*Cache[go.shape.int,go.shape.string]).Get")
    assert m("main.Park[...].func1", "main.Park[go.shape.int].func1")
    assert not m("main.Park[...]", "main.Park[go.shape.int].func1")
    assert not m("main.Park[...]", "main.Parks[go.shape.int]")
    assert not m("main.(*Cache[...]).Get", "main.(*Cache[string,int]).Get")   # a wrapper
    # an explicit instance is only itself; other bracket spellings are not patterns
    assert m("main.Park[go.shape.int]", "main.Park[go.shape.int]")
    assert not m("main.Park[go.shape.int]", "main.Park[go.shape.string]")
    assert not m("main.Park[T]", "main.Park[go.shape.int]")
    assert not m("main.Park", "main.Park[go.shape.int]")
    names = ["main.Park[go.shape.string]", "main.Park[go.shape.int]", "main.Park[go.shape.int]",
             "main.Park[int]", "main.main", "main.Park[go.shape.int].func1"]
    assert gx.spec_instances("main.Park[...]", names) == ["main.Park[go.shape.int]",
                                                           "main.Park[go.shape.string]"]
    assert gx.spec_instances("main.Nope[...]", names) == []
    assert gx.suggestion_names(names) >= {"main.Park[...]", "main.Park[...].func1", "main.main"}
    assert "main.Park[int]" in gx.suggestion_names(names)   # itself, but no pattern from a wrapper only
    assert gx.is_shape_instance("main.(*C[go.shape.int,go.shape.string]).Get")
    assert not gx.is_shape_instance("main.main") and not gx.is_shape_instance("main.C[int].Get")


# ------------------------------------------------------------------ plan and spec check

@pytest.fixture(scope="module")
def binary(go_build):
    return go_build("generics")


@pytest.fixture(scope="module")
def plan(binary):
    return _compile(binary, SPEC)


def test_plan_has_one_function_plan_per_instance_sharing_the_table(plan):
    by = {f.symbol: f for f in plan.functions}
    assert set(by) == set(PARK) | set(GET) | set(WAIT)
    for names, spec_symbol, table in [(PARK, "main.Park[...]", "main_Park"),
                                      (GET, "main.(*Cache[...]).Get", "cache_get"),
                                      (WAIT, "main.Wait[...]", "main_Wait")]:
        for n in names:
            assert (by[n].spec_symbol, by[n].spec_name, by[n].table) == (spec_symbol, spec_symbol, table)
            assert [c.column for c in by[n].captures] == [c.column for c in by[next(iter(names))].captures]
    for n in PARK:
        assert by[n].end > by[n].entry
    # v's type differs per instance: each instance has its own types
    types = {n: plan.types[by[n].captures[1].type_id].kind.value for n in PARK}
    assert types == {"main.Park[go.shape.int]": "int", "main.Park[go.shape.string]": "string",
                     f"main.Park[{STRUCT}]": "struct"}
    # main.Wait is only inlined: its instances are inlined ones
    for n in WAIT:
        assert (by[n].entry, by[n].end) == (0, 0)
        assert [(i.caller, i.inline_depth) for i in by[n].inlined] == [
            ("main.waitInt" if "int" in n else "main.waitString", 1)]
    again = ProbePlan.from_json(plan.to_json())
    assert again.to_json() == plan.to_json()
    assert {f.spec_symbol for f in again.functions} == {"main.Park[...]", "main.(*Cache[...]).Get",
                                                        "main.Wait[...]"}


def _compile(binary, text):
    with GoBinary.open(str(binary)) as b:
        dw = DwarfInfo.load(str(binary), b.build_id)
        try:
            return compile_plan(b, dw, parse_spec(text))
        finally:
            dw.close()


def test_an_explicit_instance_is_only_itself_and_keeps_its_frames(binary):
    p = _compile(binary, "version: 1\nfunctions:\n  main.Park[go.shape.string]:\n    capture: [v]\n")
    assert [(f.symbol, f.table, f.spec_symbol) for f in p.functions] == [
        ("main.Park[go.shape.string]", "main_Park_go_shape_string", None)]
    p = _compile(binary, "version: 1\nfunctions:\n  main.Park[...]:\n    capture: [id]\n"
                         "  main.Park[go.shape.string]:\n    capture: [v]\n")
    assert sorted((f.symbol, f.table) for f in p.functions) == [
        ("main.Park[go.shape.int]", "main_Park"), ("main.Park[go.shape.string]", "main_Park_go_shape_string"),
        (f"main.Park[{STRUCT}]", "main_Park")]


def test_no_instance_is_a_spec_error_with_did_you_mean(binary):
    with pytest.raises(SpecError) as e:
        _compile(binary, "version: 1\nfunctions:\n  main.Prk[...]:\n    capture: [id]\n")
    assert e.value.line == 3 and "no instance of the generic function main.Prk[...]" in str(e.value)
    assert "did you mean main.Park[...]" in str(e.value)
    with pytest.raises(SpecError) as e:
        _compile(binary, "version: 1\nfunctions:\n  main.Park[go.shape.float64]:\n")
    assert "no function main.Park[go.shape.float64]" in str(e.value)
    with pytest.raises(SpecError) as e:   # the plain name of a generic function
        _compile(binary, "version: 1\nfunctions:\n  main.Park:\n")
    assert "did you mean main.Park[...]" in str(e.value)


def test_spec_check_checks_each_instance(binary, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(SPEC)
    assert check_against_binary(parse_spec(SPEC, path=str(good)), str(binary)) == []
    text = textwrap.dedent(f"""\
        version: 1
        functions:
          main.Park[...]:
            capture: [id, v.X, box.Nte]
          "main.Park[{STRUCT}]":
            capture: [v.X, box.V.Label]
          main.(*Cache[...]).Get:
            capture: [key, c.Nme]
          main.Prk[...]:
        """)
    errors = check_against_binary(parse_spec(text), str(binary))
    msgs = sorted((e.line, e.column, str(e)) for e in errors)
    assert [(line, col) for line, col, _ in msgs] == [(4, 19), (4, 24), (8, 20), (9, 3)], msgs
    assert "main.Park[...] (instance main.Park[go.shape.int]): capture 'v.X'" in msgs[0][2]
    assert "did you mean 'Note'" in msgs[1][2]
    assert "instance main.(*Cache[" in msgs[2][2] and "did you mean 'Name'" in msgs[2][2]
    assert "did you mean main.Park[...]" in msgs[3][2]


# ------------------------------------------------------------------ snapshot

@pytest.fixture(scope="module")
def snap(binary, tmp_path_factory):
    d = tmp_path_factory.mktemp("generics")
    spec = parse_spec(SPEC)
    with run_target(binary, "-values", str(d / "v.json")) as t:
        expected = {int(k): v for k, v in json.loads((d / "v.json").read_text()).items()}
        [rec] = snapshot_pids([t.pid], spec)
    assert rec.error is None, rec.error
    write(str(d / "s.sqlite"), [rec], spec)
    db = open_snapshot(d / "s.sqlite")
    yield rec, expected, db
    db.close()


def _rows(db, table):
    cur = db.execute(f"SELECT f.function AS instance, f.inlined AS inlined, t.* FROM {table} t "
                     "JOIN frames f USING (process_id, goid, depth)")
    cols = [c[0] for c in cur.description]
    out = {}
    for r in cur.fetchall():
        row = dict(zip(cols, r))
        for k in list(row):
            if k not in ("instance", "inlined", "process_id", "goid", "depth") and row[k] is not None:
                row[k] = json.loads(row[k])
        assert row["id"] not in out
        out[row["id"]] = row
    return out


def test_one_table_per_generic_function(snap):
    _, _, db = snap
    assert [(t.function, t.table) for t in function_tables(db)] == [
        ("main.Park[...]", "main_Park"), ("main.(*Cache[...]).Get", "cache_get"),
        ("main.Wait[...]", "main_Wait")]


def test_park_rows_of_every_instance_equal_what_the_program_reported(snap):
    _, expected, db = snap
    rows = _rows(db, "main_Park")
    assert {r["instance"] for r in rows.values()} == set(PARK)
    assert sorted(rows) == sorted(i for ids in PARK.values() for i in ids)
    for instance, ids in PARK.items():
        for i in ids:
            row, want = rows[i], expected[i]
            assert row["instance"] == instance and not row["inlined"]
            assert row["box"] == want["box"]
            assert row["box_V"] == want["box"]["V"]
            assert row["box_Note"] == want["box"]["Note"]
            if row["v"] is None:
                # Go's DWARF drops a struct argument spilled from several
                # registers after the first call (its own "optimized out").
                assert instance == f"main.Park[{STRUCT}]", row
                assert "not live" in row["_errors"]["v"]
            else:
                assert row["v"] == want["v"]
    # one column, each row's own JSON type
    types = dict(db.execute("SELECT id, json_type(box_V) FROM main_Park").fetchall())
    assert {types[k] for k in ("1", "2")} == {"integer"}
    assert {types[k] for k in ("3", "4")} == {"text"}
    assert {types[k] for k in ("5", "6")} == {"object"}


def test_method_and_inlined_instances_equal_what_the_program_reported(snap):
    _, expected, db = snap
    rows = _rows(db, "cache_get")
    assert sorted(rows) == [7, 8, 9]
    for instance, ids in GET.items():
        for i in ids:
            row, want = rows[i], expected[i]
            assert row["instance"] == instance
            assert (row["key"], row["c_Name"], row["c_Hits"]) == (want["key"], want["name"], want["hits"])
            assert row["_errors"] is None
    rows = _rows(db, "main_Wait")
    assert sorted(rows) == [10, 11]
    for instance, (i,) in WAIT.items():
        assert rows[i]["instance"] == instance and rows[i]["inlined"] == 1
        assert rows[i]["id"] == expected[i]["id"]


def test_capture_records_name_spec_symbol_and_instance(snap):
    rec, _, _ = snap
    caps = [c for g in rec.goroutines for c in g.captures]
    assert {(c.function, c.instance) for c in caps} == (
        {("main.Park[...]", n) for n in PARK} | {("main.(*Cache[...]).Get", n) for n in GET}
        | {("main.Wait[...]", n) for n in WAIT})


# ------------------------------------------------------------------ in the editor

def test_the_editor_shows_every_instance_as_the_generic_function(snap, tmp_path):
    """Lenses, hints, hover and the stacks filter of the language server see
    one `main.Park[...]`: all its instances' goroutines and values."""
    from lsp_helpers import make_workspace
    from server.format import GoroutineFilter
    from server.lsp import gosource, hints, render
    from server.lsp.sourcemap import SourceMap
    from server.store import read_goroutines
    _, expected, db = snap
    path = db.execute("PRAGMA database_list").fetchone()[2]
    ws = make_workspace(tmp_path / "generics", "generics")
    main = (ws / "main.go").resolve()
    src = main.read_text().split("\n")
    park_ids = {i for i, v in expected.items() if v["fn"] == "Park"}
    idx = hints.SnapshotIndex.load(path, SourceMap(ws))
    go = gosource.parse(main.read_text())
    lenses = {l.function: l for l in render.lenses(idx, str(main), go)}
    assert not [f for f in lenses if "go.shape" in f], lenses
    park = lenses["main.Park[...]"]
    func = src.index("func Park[T any](id int, v T, box *Box[T]) T {")
    assert (park.line, park.goroutines, park.table) == (func, len(park_ids), "main_Park")
    # The hint where Park's goroutines wait: every instance's ids.
    wait = func + 2
    assert src[wait].strip() == "<-block"
    agg = idx.lines[str(main)][wait + 1]
    assert agg.functions == {"main.Park[...]"}
    assert {int(v) for v in agg.values["id"]} == park_ids
    # Hover on `v` in `return v`: one captured function, a row per instance's goroutine.
    fn = gosource.function_in_file(str(ws), str(main), go, wait + 1, 0)
    [(cap, col)] = render.hover_captures(idx, str(main), go, fn, "v")
    assert cap.function == "main.Park[...]" and col == "v" and len(cap.rows) == len(park_ids)
    # The lens's stacks filter: `[...]` matches the instances' frames.
    _, gors, frames = read_goroutines(db)
    matched = GoroutineFilter(functions=["main.Park[...]"]).matching(gors, frames, [])
    assert len(matched) == len(park_ids)
