"""Capture expressions against a real process (tests/goprogs/exprs), issue 10.

Every form of the expression language is captured from parked goroutines and
compared with what the program printed about itself: addresses as fmt's %p
prints them, lengths and capacities, elements, map values, asserted dynamic
values. Builds: the default Go optimized (exe and PIE: a type assertion adds
moduledata.types as the process has it, load bias included), and Go 1.21
with -N -l, whose maps are hmaps rather than swiss tables.

The link test keys on addresses: the waiter's `&cs.mu` is the holder's
`&st.mu`, with no string arithmetic, and `addr + 8` is the next field.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import gobuild
from probe_compiler.spec import parse_spec
from probe_compiler.spec_check import check_against_binary
from server.links import linked_rows
from server.reports import materialize
from server.snapshot_job import snapshot_pids
from server.store import FunctionTableDef, open_snapshot, write_snapshot
from targets import run_target

SPEC = """\
version: 1
functions:
  main.inspect:
    table: inspect
    capture:
      - "&st.mu"
      - "&local"
      - "&st.p.B"
      - "&st.shape.(*rect).W"
      - st.ID
      - st.Base.Name
      - st.tags[1]
      - st.tags[9]
      - st.s[1]
      - st.arr[0]
      - len(st.tags)
      - cap(st.tags)
      - len(st.s)
      - len(st.ch)
      - cap(st.ch)
      - len(st.big)
      - len(st.byName)
      - cap(st.arr)
      - st.byName["beta"]
      - st.byName["nope"]
      - st.byID[7].B
      - {expr: "st.byID[-1]", name: minus_one}
      - st.flags[true]
      - st.flags[false]
      - {expr: "st.neg[-3]", name: neg3}
      - st.big[1797]
      - st.big[1798]
      - sh.(*rect).W
      - sh.(*main.rect)
      - sh.(circle)
      - sh2.(circle).R
      - sh2.(*rect)
      - a.(string)
      - a.(int)
      - e.(*codeErr).code
      - st.shape.(*rect).H
  main.(*state).hold:
    table: holder
    capture:
      - "&st.mu"
    columns:
      tags_addr: "addr_st_mu + 8"
      mu_hex: "printf('%#x', addr_st_mu)"
  main.waiter:
    table: waiter
    capture:
      - "&cs.mu"
links:
  - name: waits_for
    from: waiter(process_id, addr_cs_mu)
    to: holder(process_id, addr_st_mu)
    description: the goroutine whose frame holds the mutex this one waits for
"""

BUILDS = {
    "default": dict(flags=()),
    "default-pie": dict(flags=("-buildmode=pie",)),
    "go1.21": dict(release="1.21.13", flags=("-gcflags=all=-N -l",)),   # hmap maps
}


@pytest.fixture(scope="module", params=list(BUILDS))
def snap(request, tmp_path_factory):
    b = BUILDS[request.param]
    binary = gobuild.build("exprs", b["flags"], release=b.get("release"))
    d = tmp_path_factory.mktemp("exprs")
    spec = parse_spec(SPEC)
    with run_target(binary, "-values", str(d / "v.json")) as t:
        printed = json.loads((d / "v.json").read_text())
        records = snapshot_pids([t.pid], spec)
    assert all(r.error is None for r in records), [r.error for r in records]
    tables = [FunctionTableDef(f.symbol, f.table, [c.name for c in f.captures]) for f in spec.functions]
    write_snapshot(d / "s.sqlite", records, tables)
    db = open_snapshot(d / "s.sqlite", readonly=False)
    assert materialize(db, spec) == []
    db.close()
    rows = {c.function: c for r in records for g in r.goroutines for c in g.captures}
    return request.param, printed, rows, d / "s.sqlite"


def addr(printed: dict, name: str) -> int:
    return int(printed[name], 16)


def test_values_equal_what_the_program_printed(snap):
    build, p, rows, _ = snap
    c = rows["main.inspect"]
    v, err = c.values, c.errors
    want = {
        "addr_st_mu": addr(p, "st.mu"), "addr_local": addr(p, "local"),
        "addr_st_p_B": addr(p, "st.p") + 8, "addr_st_shape_rect_W": addr(p, "rect"),
        "st_ID": 42, "st_Base_Name": "conn-42",
        "st_tags_1": "beta", "st_s_1": p["s_1"], "st_arr_0": -7,
        "len_st_tags": p["tags_len"], "cap_st_tags": p["tags_cap"], "len_st_s": p["s_len"],
        "len_st_ch": p["ch_len"], "cap_st_ch": p["ch_cap"], "len_st_big": p["big_len"],
        "len_st_byName": p["byName_len"], "cap_st_arr": 3,
        "st_byName_beta": 2, "st_byID_7_B": "seven", "minus_one": {"A": -10, "B": "minus one"},
        "st_flags_true": "yes", "st_flags_false": "no", "neg3": 300, "st_big_1797": "v1797",
        "sh_rect_W": 3, "sh_main_rect": {"W": 3, "H": 4}, "sh2_circle_R": 6,
        "a_string": "any string", "e_codeErr_code": 17, "st_shape_rect_H": 4,
    }
    got = {k: v.get(k) for k in want}
    assert got == want, (build, {k: err.get(k) for k in want if got[k] != want[k]})
    # The raw form of an address is the same integer; of a pointer, __addr is one too.
    assert c.raw["addr_st_mu"] == addr(p, "st.mu")
    assert c.raw["sh_main_rect"]["__addr"] == addr(p, "rect")


def test_unavailable_values_say_why(snap):
    build, p, rows, _ = snap
    c = rows["main.inspect"]
    nulls = {k: c.errors.get(k) for k, val in c.values.items() if val is None}
    assert nulls == {
        "st_tags_9": "index 9 out of range (len 4)",
        "st_byName_nope": "key 'nope' not present in the map",
        "st_big_1798": "key 1798 not present in the map",
        "sh_circle": "the interface holds *main.rect, not main.circle",
        "sh2_rect": "the interface holds main.circle, not *main.rect",
        "a_int": "the interface holds string, not int",
    }, build


def test_link_on_addresses(snap):
    """The waiter's &cs.mu is the holder's &st.mu: a link on integers."""
    build, p, _, path = snap
    db = open_snapshot(path)
    [(holder_row, mu, tags_addr, mu_hex)] = db.execute(
        "SELECT rowid, addr_st_mu ->> '$', tags_addr, mu_hex FROM holder").fetchall()
    assert (mu, tags_addr, mu_hex) == (addr(p, "st.mu"), addr(p, "st.tags"), p["st.mu"])
    [(waiter_row, waiter_mu)] = db.execute("SELECT rowid, addr_cs_mu ->> '$' FROM waiter").fetchall()
    assert waiter_mu == mu
    [link] = linked_rows(db, "waiter", waiter_row)
    assert (link.link, link.table, link.rowid) == ("waits_for", "holder", holder_row)
    assert link.goroutine.wait_reason == "chan receive"
    [back] = linked_rows(db, "holder", holder_row)
    assert (back.direction, back.rowid) == ("reverse", waiter_row)
    assert back.goroutine.wait_reason == "sync.Mutex.Lock"


# ------------------------------------------------- errors against the binary

GOLDEN = Path(__file__).parent / "golden" / "expr_check"


@pytest.mark.parametrize("name", sorted(p.stem for p in GOLDEN.glob("*.yaml")))
def test_check_errors_golden(name, tmp_path):
    """tests/golden/expr_check/NAME.yaml checked against the exprs program:
    the error, at its spec line and column, is NAME.err."""
    binary = gobuild.build("exprs")
    spec = parse_spec((GOLDEN / f"{name}.yaml").read_text(), "exray.yaml")
    errors = check_against_binary(spec, str(binary), str(tmp_path))
    got = "".join(f"{e}\n" for e in errors)
    want = GOLDEN / f"{name}.err"
    if os.environ.get("EXRAY_UPDATE_GOLDEN") == "1" or not want.exists():
        want.write_text(got)
    assert got == want.read_text() and len(errors) == 1
