"""`exray goroutines` filters: --function, --status, --value, --label.

Pure matching rules in tables, then the command on a real snapshot of two
tests/goprogs/parkers processes, where SQL tells how many goroutines each
filter must match, and the errors for filters that cannot apply.
"""
from __future__ import annotations

import re
import sqlite3

import pytest

from server import format as fmt
from server.store import FunctionTableDef, SnapshotError
from test_export_pprof import CHAN, exray, parkers_snap  # noqa: F401  (a fixture)


@pytest.mark.parametrize("pat, function, hit", [
    ("parkChan", "main.parkChan", True),
    ("main.park", "main.parkMutex", True),
    ("ParkChan", "main.parkChan", False),          # Go symbols are case-sensitive
    ("main.park*", "main.parkChan", True),
    ("park*", "main.parkChan", False),             # a glob covers the whole name
    ("*.(*Mutex).Lock", "sync.(*Mutex).Lock", True),
    ("main.park[CM]*", "main.parkMutex", True),
    ("main.park?han", "main.parkChan", True),
])
def test_function_matches(pat, function, hit):
    assert fmt.function_matches(pat, function) is hit


@pytest.mark.parametrize("pat, status, reason, hit", [
    ("waiting", "waiting", "chan receive", True),
    ("chan receive", "waiting", "chan receive", True),
    ("Chan  Receive", "waiting", "chan receive", True),   # any case, any spacing
    ("sync.mutex.lock", "waiting", "sync.Mutex.Lock", True),
    ("sync.*", "waiting", "sync.RWMutex.RLock", True),
    ("chan *", "waiting", "chan send", True),
    ("running", "runnable", "", False),
    ("syscall", "syscall", "", True),
    ("", "running", "", False),
])
def test_status_matches(pat, status, reason, hit):
    assert fmt.status_matches(pat, status, reason) is hit


TABLES = [FunctionTableDef("main.(*store).lookup", "main_store_lookup", ["sku", "n", "req", "on"])]


@pytest.mark.parametrize("text, cell, hit", [
    ("main_store_lookup.sku=widget", '"widget"', True),
    ("main_store_lookup.sku=Widget", '"widget"', False),
    ('main_store_lookup.sku="widget"', '"widget"', True),
    ("main.(*store).lookup.sku=widget", '"widget"', True),    # the Go symbol names the table too
    ("main_store_lookup.sku!=widget", '"gadget"', True),
    ("main_store_lookup.sku~IDG", '"widget"', True),
    ("main_store_lookup.n=42", "42", True),
    ("main_store_lookup.n=42", "42.0", True),
    ("main_store_lookup.n=42", '"42"', True),                # a string that reads as the number typed
    ('main_store_lookup.n="42"', "42", False),                # quoted: the string only
    ("main_store_lookup.n>=10", "42", True),
    ("main_store_lookup.n<10", "42", False),
    ("main_store_lookup.n>10", '"x"', False),                 # no order between string and number
    ("main_store_lookup.n>10", None, False),
    ("main_store_lookup.on=true", "true", True),
    ("main_store_lookup.on=1", "true", False),
    ("main_store_lookup.n=null", None, True),                 # unavailable or nil
    ("main_store_lookup.req.user.name=ann", '{"user": {"name": "ann"}}', True),   # a JSON path on
    ("main_store_lookup.req.items.1=b", '{"items": ["a", "b"]}', True),
    ("main_store_lookup.req.user.age>3", '{"user": {"name": "ann"}}', False),
    ("main_store_lookup.sku = widget", '"widget"', True),     # spaces around the operator
    ("main_store_lookup.sku=a=b", '"a=b"', True),             # the first operator splits
])
def test_value_filter(text, cell, hit):
    assert fmt.parse_value_filter(text, TABLES).matches(cell) is hit


@pytest.mark.parametrize("text, message", [
    ("nope.sku=1", "--value 'nope.sku=1': no function table 'nope' in this snapshot (tables: main_store_lookup)"),
    ("main_store_lookup.skew=1",
     "--value 'main_store_lookup.skew=1': table main_store_lookup has no column 'skew' (columns: sku, n, req, on)"),
    ("main_store_lookup.sku", "--value 'main_store_lookup.sku': expected TABLE.COLUMN=VALUE"),
])
def test_value_filter_errors(text, message):
    with pytest.raises(SnapshotError) as e:      # FilterError is one: the CLI prints `error: …`
        fmt.parse_value_filter(text, TABLES)
    assert str(e.value).startswith(message)


def test_value_filter_without_captures():
    with pytest.raises(fmt.FilterError, match="the snapshot captured no values"):
        fmt.parse_value_filter("t.c=1", [])


# --------------------------------------------------- on a real snapshot

def count(snap, sql: str) -> int:
    db = sqlite3.connect(snap)
    try:
        return db.execute(sql).fetchone()[0]
    finally:
        db.close()


def groups(text: str) -> list[tuple[int, list[str]]]:
    out = []
    for block in text.split("\n\n"):
        lines = block.strip("\n").splitlines()
        if lines and (m := re.match(r"(\d+) goroutines? \[", lines[0])):
            out.append((int(m.group(1)), [ln for ln in lines[1:] if not ln.startswith("\t")]))
    return out


def run(snap, *args) -> str:
    r = exray("goroutines", snap, *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


NON_SYSTEM = "SELECT count(*) FROM goroutines g WHERE NOT g.is_system"
ALL = "SELECT count(*) FROM goroutines"


@pytest.mark.parametrize("args, where", [
    (["--function", "main.parkChan"],
     "EXISTS (SELECT 1 FROM frames f WHERE f.process_id = g.process_id AND f.goid = g.goid "
     "AND f.function = 'main.parkChan')"),
    (["--function", "main.park*"],
     "EXISTS (SELECT 1 FROM frames f WHERE f.process_id = g.process_id AND f.goid = g.goid "
     "AND f.function GLOB 'main.park*')"),
    (["--status", "sync.mutex.lock"], "g.wait_reason = 'sync.Mutex.Lock'"),
    (["--status", "Chan Receive", "--function", "parkLabeled"],
     "g.wait_reason = 'chan receive' AND EXISTS (SELECT 1 FROM frames f WHERE f.process_id = g.process_id "
     "AND f.goid = g.goid AND f.function = 'main.parkLabeled')"),
    (["--status", "sleep", "--status", "sync.Mutex.Lock"], "g.wait_reason IN ('sleep', 'sync.Mutex.Lock')"),
    (["--value", "main_parkLabeled.sku=widget"],
     "EXISTS (SELECT 1 FROM main_parkLabeled t WHERE t.process_id = g.process_id AND t.goid = g.goid)"),
    (["--value", "main.parkChan.id>=3"],
     "EXISTS (SELECT 1 FROM main_parkChan t WHERE t.process_id = g.process_id AND t.goid = g.goid "
     "AND t.id ->> '$' >= 3)"),
    (["--value", "main_parkChan.id_times_10>=30"],      # an extra column of the spec
     "EXISTS (SELECT 1 FROM main_parkChan t WHERE t.process_id = g.process_id AND t.goid = g.goid "
     "AND t.id_times_10 >= 30)"),
    (["--value", "main_parkInlined.s_name=main", "--status", "chan receive"],
     "EXISTS (SELECT 1 FROM main_parkInlined t WHERE t.process_id = g.process_id AND t.goid = g.goid)"),
    (["--label", "shard=1", "--function", "parkLabeled"], "g.labels ->> '$.shard' = '1'"),
    (["--function", "parkChan", "--status", "sync.Mutex.Lock"], "0"),
])
def test_filters_match_sql(parkers_snap, args, where):  # noqa: F811
    snap, _ = parkers_snap
    text = run(snap, *args)
    want = count(snap, f"{NON_SYSTEM} AND {where}")
    total = count(snap, ALL)
    assert text.startswith(f"{want} of {total} goroutines match ")
    assert sum(n for n, _ in groups(text)) == want
    for m in re.finditer(r"^(\d+) of (\d+) goroutines match, in \d+ groups?$", text, re.M):
        assert int(m.group(1)) <= int(m.group(2))


def test_filtered_groups(parkers_snap):  # noqa: F811
    snap, pids = parkers_snap
    text = run(snap, "--function", "parkChan")
    assert [n for n, fns in groups(text)] == list(CHAN)      # one group per process, its own count
    assert all(fns[0] == "main.parkChan" for _, fns in groups(text))
    assert text.count("== process") == 2
    # system goroutines: matched, then hidden without --all, and said so
    text = run(snap, "--function", "runtime.gopark")
    assert "matching system goroutines hidden; --all shows them" in text
    text_all = run(snap, "--function", "runtime.gopark", "--all")
    assert "hidden" not in text_all
    assert sum(n for n, _ in groups(text_all)) == count(
        snap, "SELECT count(DISTINCT process_id || ':' || goid) FROM frames WHERE function = 'runtime.gopark'")


def test_no_filter_no_match_line(parkers_snap):  # noqa: F811
    snap, _ = parkers_snap
    assert " match" not in run(snap)


@pytest.mark.parametrize("args, needles", [
    (["--value", "main_nope.x=1"], ["no function table 'main_nope'", "main_parkChan"]),
    (["--value", "main_parkChan.nope=1"], ["has no column 'nope'", "(columns: id, id_times_10)"]),
    (["--value", "main_parkChan.id"], ["expected TABLE.COLUMN=VALUE"]),
    (["--label", "shard"], ["--label 'shard': expected KEY=VALUE"]),
])
def test_bad_filters_are_clean_errors(parkers_snap, args, needles):  # noqa: F811
    snap, _ = parkers_snap
    r = exray("goroutines", snap, *args)
    assert r.returncode == 1 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
    for n in needles:
        assert n in r.stderr
