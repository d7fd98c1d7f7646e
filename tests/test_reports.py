"""Extra columns, derived tables and links materialized into a snapshot
(server.reports), on snapshots written by write_snapshot from records.

A client process (ids 1..4, one with no id) calls a server process whose
handlers hold requests 1, 2, 3 (and one with a nil request): links cross the
two processes. Reports include a runtime failure, one that depends on it, and
write attempts the authorizer must stop."""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from agent.records import CaptureRecord, FrameRecord, GoroutineRecord, ProcessRecord
from probe_compiler.spec import (CaptureSpec, ColumnSpec, FunctionSpec, LinkEnd, LinkSpec,
                                 ReportSpec, Spec)
from server.display import display_types
from server.reports import META_TABLES, ReportsError, materialize
from server.store import FunctionTableDef, open_snapshot, write_snapshot

DOC = Path(__file__).parent.parent / "docs" / "snapshot-schema.md"


def cap(expr, name=None, display=None):
    return CaptureSpec(expr, name or expr, 1, 1, display=display)


def col(name, sql, display=None, line=5):
    return ColumnSpec(name, sql, line, 7, display)


def report(name, sql, *deps, line=20):
    return ReportSpec(name, sql, line, 3, depends_on=tuple(deps))


def link(name, lt, lcols, rt, rcols, desc=""):
    return LinkSpec(name, LinkEnd(lt, tuple(lcols)), LinkEnd(rt, tuple(rcols)), desc, 40, 3)


CLIENTS = FunctionSpec("main.call", "clients", [cap("id"), cap("path"), cap("started", display="timestamp_ns")],
                       1, 1, columns=[col("path_s", "path ->> '$'"),
                                      col("age_ns", "1700000000000000000 - (started ->> '$')", "duration_ns")])
HANDLERS = FunctionSpec("main.handle", "handlers", [cap("req")], 10, 1, columns=[
    col("req_id", "req->>'ID'"), col("req_path", "req->>'Path'"),
    col("tenant", "req->>'Meta.Tenant'"),                        # a nested JSON path, no '$'
    col("tags", "req->'Meta.Tags'"),
    col("id_plus", "req_id + 1000"),                             # reads the extra column above
    col("bad", "json_extract('not json', '$')"),                 # fails at run time
    col("sneaky", "(SELECT count(*) FROM pragma_table_info('frames'))"),
    col("inject", "1), goid = (5"),                               # tries to write another column
])


def spec(reports=(), links=()) -> Spec:
    return Spec([CLIENTS, HANDLERS], reports=list(reports), links=list(links))


def tables_of(s: Spec) -> list[FunctionTableDef]:
    return [FunctionTableDef(f.symbol, f.table, [c.name for c in f.captures]) for f in s.functions]


def goroutine(goid, function, depth, values, status="waiting", wait="IO wait"):
    frames = [FrameRecord(d, "runtime.gopark" if d == 0 else function if d == depth else "main.main",
                          "/src/main.go", 10 + d, 0x401000 + d, hidden=d == 0) for d in range(depth + 2)]
    return GoroutineRecord(goid, status, wait, 1_000_000 * goid, "main.main", "/src/main.go", 5, 1, {},
                           False, None, frames, [CaptureRecord(function, depth, values, values)])


def records() -> list[ProcessRecord]:
    t0 = 1_699_999_999_000_000_000
    clients = [goroutine(10 + i, "main.call", 2, {"id": i, "path": f"/item/{i}", "started": t0 + i})
               for i in (1, 2, 3)]
    clients[2].captures[0].values["path"] = "/elsewhere"        # id 3 matches by id, not by path
    clients.append(goroutine(14, "main.call", 2, {"id": None, "path": None, "started": None}))
    handlers = [goroutine(20 + i, "main.handle", 1,
                          {"req": {"ID": i, "Path": f"/item/{i}", "Meta": {"Tenant": f"t{i}", "Tags": ["a", i]}}},
                          wait="chan receive") for i in (1, 2, 3)]
    handlers.append(goroutine(24, "main.handle", 1, {"req": None}, wait="chan receive"))
    return [ProcessRecord(1001, "host-a", "/srv/client", goroutines=clients),
            ProcessRecord(2002, "host-b", "/srv/server", goroutines=handlers)]


def snapshot(tmp_path, s: Spec) -> tuple[sqlite3.Connection, list]:
    path = tmp_path / "snap.sqlite"
    write_snapshot(path, records(), tables_of(s))
    db = open_snapshot(path, readonly=False)
    problems = materialize(db, s)
    db.close()
    return open_snapshot(path), problems


def rows(db, sql, *params):
    return db.execute(sql, params).fetchall()


# ------------------------------------------------------------------ extra columns

def test_extra_columns(tmp_path):
    db, problems = snapshot(tmp_path, spec())
    assert rows(db, "SELECT goid, req_id, req_path, tenant, tags, id_plus FROM handlers ORDER BY goid") == [
        (21, 1, "/item/1", "t1", '["a",1]', 1001), (22, 2, "/item/2", "t2", '["a",2]', 1002),
        (23, 3, "/item/3", "t3", '["a",3]', 1003), (24, None, None, None, None, None)]
    assert rows(db, "SELECT id, path_s, age_ns FROM clients WHERE id IS NOT NULL ORDER BY id") == [
        ("1", "/item/1", 999_999_999), ("2", "/item/2", 999_999_998), ("3", "/elsewhere", 999_999_997)]
    # A failing column is reported with its spec position and leaves no column behind.
    by_name = {p.name: p for p in problems}
    assert set(by_name) == {"handlers.bad", "handlers.sneaky", "handlers.inject"}
    assert "not allowed: UPDATE handlers" in by_name["handlers.inject"].message
    assert rows(db, "SELECT goid FROM handlers ORDER BY goid") == [(21,), (22,), (23,), (24,)]
    assert "malformed JSON" in by_name["handlers.bad"].message and by_name["handlers.bad"].line == 5
    assert "not allowed: PRAGMA" in by_name["handlers.sneaky"].message
    cols = [r[1] for r in db.execute("PRAGMA table_info(handlers)")]
    assert not {"bad", "sneaky", "inject"} & set(cols) and cols[-1] == "id_plus"


def test_all_captured_data_covers_extra_columns(tmp_path):
    db, _ = snapshot(tmp_path, spec())
    assert rows(db, "SELECT table_name, process_id, goid, depth, value FROM all_captured_data "
                    "WHERE column_name = 'tenant' ORDER BY goid") == [
        ("handlers", 2, 21, 1, "t1"), ("handlers", 2, 22, 1, "t2"), ("handlers", 2, 23, 1, "t3"),
        ("handlers", 2, 24, 1, None)]
    names = {r[0] for r in db.execute("SELECT DISTINCT table_name || '.' || column_name FROM all_captured_data")}
    assert names == {"clients.id", "clients.path", "clients.started", "clients.path_s", "clients.age_ns",
                     "handlers.req", "handlers.req_id", "handlers.req_path", "handlers.tenant",
                     "handlers.tags", "handlers.id_plus"}


def test_exray_columns_and_display_types(tmp_path):
    s = spec([report("waits", "SELECT h.req_id, g.wait_ns AS waited, c.* FROM handlers h "
                              "JOIN goroutines g USING (process_id, goid) JOIN clients c ON c.id = h.req_id",
                     "handlers", "goroutines", "clients")])
    db, problems = snapshot(tmp_path, s)
    assert [p.name for p in problems if p.kind != "column"] == []
    got = rows(db, "SELECT table_name, column_name, source, expr, display FROM exray_columns "
                   "WHERE table_name = 'clients'")
    assert got == [("clients", "id", "capture", "id", None), ("clients", "path", "capture", "path", None),
                   ("clients", "started", "capture", "started", "timestamp_ns"),
                   ("clients", "path_s", "extra", "path ->> '$'", None),
                   ("clients", "age_ns", "extra", "1700000000000000000 - (started ->> '$')", "duration_ns")]
    shown = display_types(db)
    assert shown[("clients", "age_ns")] == "duration_ns"
    # Report columns inherit the display of the column they copy.
    assert shown[("waits", "waited")] == "duration_ns" and shown[("waits", "started")] == "timestamp_ns"
    assert ("waits", "req_id") not in shown
    n_clients = len(rows(db, "PRAGMA table_info(clients)"))
    assert rows(db, "SELECT source, count(*) FROM exray_columns WHERE table_name = 'waits' GROUP BY 1") == [
        ("report", 2 + n_clients)]


# ------------------------------------------------------------------ reports

def test_reports_failures_and_dependencies(tmp_path):
    s = spec([
        report("ok", "SELECT req_id, tenant FROM handlers WHERE req_id IS NOT NULL ORDER BY req_id;", "handlers"),
        report("broken", "SELECT json_extract(path_s, '$.x') FROM clients", "clients", line=30),  # not JSON
        report("on_broken", "SELECT * FROM broken", "broken"),
        report("on_on_broken", "WITH x AS (SELECT * FROM on_broken) SELECT * FROM x", "on_broken"),
        report("on_ok", "SELECT count(*) AS n FROM ok", "ok"),
        report("no_table", "SELECT * FROM nosuch", "nosuch"),
        report("ok", "SELECT 1", line=60),                         # a name taken by an earlier report
    ])
    db, problems = snapshot(tmp_path, s)
    got = {(p.name, p.line): (p.skipped, p.message) for p in problems if p.kind == "report"}
    assert got[("broken", 30)][0] is False and "malformed JSON" in got[("broken", 30)][1]
    assert got[("on_broken", 20)] == (True, "skipped: it reads broken, which failed")
    assert got[("on_on_broken", 20)] == (True, "skipped: it reads on_broken, which failed")
    assert "no such table: nosuch" in got[("no_table", 20)][1]
    assert "already exists" in got[("ok", 60)][1]
    assert len(got) == 5
    assert rows(db, "SELECT * FROM ok") == [(1, "t1"), (2, "t2"), (3, "t3")]
    assert rows(db, "SELECT * FROM on_ok") == [(3,)]
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not tables & {"broken", "on_broken", "on_on_broken", "no_table"}
    recorded = rows(db, "SELECT kind, name, skipped FROM exray_report_errors WHERE kind = 'report' ORDER BY rowid")
    assert recorded == [("report", "broken", 0), ("report", "on_broken", 1), ("report", "on_on_broken", 1),
                        ("report", "no_table", 0), ("report", "ok", 0)]


@pytest.mark.parametrize("sql, denied", [
    ("DELETE FROM frames", "not allowed: DELETE frames"),
    ("UPDATE goroutines SET status = 'x'", "not allowed: UPDATE goroutines"),
    ("INSERT INTO meta VALUES ('k', 'v')", "not allowed: INSERT meta"),
    ("DROP TABLE processes", "not allowed: DELETE sqlite_master (a schema change)"),
    ("CREATE TABLE evil AS SELECT 1", "not allowed: INSERT sqlite_master (a schema change)"),
    ("CREATE TEMP VIEW v AS SELECT 1", "not allowed: INSERT sqlite_temp_master (a schema change)"),
    ("ATTACH DATABASE ':memory:' AS other", "not allowed: ATTACH"),
    ("PRAGMA writable_schema = 1", "not allowed: PRAGMA writable_schema"),
    ("SELECT * FROM pragma_table_info('frames')", "not allowed: PRAGMA table_info"),
    ("SELECT 1; DELETE FROM frames", "one statement at a time"),
])
def test_writes_are_blocked(tmp_path, sql, denied):
    s = spec([report("evil_report", sql), report("after", "SELECT count(*) AS n FROM frames")])
    db, problems = snapshot(tmp_path, s)
    [p] = [p for p in problems if p.kind == "report"]
    assert p.name == "evil_report" and denied in p.message, p.message
    assert rows(db, "SELECT count(*) FROM frames") == [(28,)]
    assert rows(db, "SELECT n FROM after") == [(28,)]
    assert rows(db, "SELECT status FROM goroutines WHERE goid = 21") == [("waiting",)]
    assert rows(db, "SELECT count(*) FROM meta WHERE key = 'k'") == [(0,)]
    # nothing attached ('temp' is the connection's own, in memory: temp_store = MEMORY)
    assert {r[0] for r in db.execute("SELECT name FROM pragma_database_list")} <= {"main", "temp"}


def test_runaway_report_times_out(tmp_path):
    path = tmp_path / "snap.sqlite"
    s = spec([report("forever", "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
                                "SELECT count(*) FROM n"), report("after", "SELECT 1 AS one")])
    write_snapshot(path, records(), tables_of(s))
    db = open_snapshot(path, readonly=False)
    problems = materialize(db, s, timeout_s=0.2)
    assert [(p.name, p.message) for p in problems if p.kind == "report"] == [("forever", "ran longer than 0.2 s (limits.statement_seconds)")]
    assert rows(db, "SELECT * FROM after") == [(1,)]


def test_read_only_snapshot_is_refused(tmp_path):
    path = tmp_path / "snap.sqlite"
    write_snapshot(path, records(), tables_of(spec()))
    with pytest.raises(ReportsError, match="cannot write the snapshot: .*readonly"):
        materialize(open_snapshot(path), spec())


def test_materialize_twice_is_refused(tmp_path):
    path = tmp_path / "snap.sqlite"
    write_snapshot(path, records(), tables_of(spec()))
    db = open_snapshot(path, readonly=False)
    materialize(db, spec())
    with pytest.raises(ReportsError, match="already materialized"):
        materialize(db, spec())


def test_connection_left_as_found(tmp_path):
    path = tmp_path / "snap.sqlite"
    write_snapshot(path, records(), tables_of(spec()))
    db = open_snapshot(path, readonly=False)
    materialize(db, spec([report("ok", "SELECT 1 AS one")]))
    assert db.isolation_level == "" and not db.in_transaction
    db.execute("INSERT INTO meta VALUES ('after', 'x')")       # the authorizer is gone
    db.commit()


# ------------------------------------------------------------------ links

LINKS = [
    link("serves", "clients", ["id"], "handlers", ["req_id"], "the handler serving this call"),
    link("serves_path", "clients", ["id", "path_s"], "handlers", ["req_id", "req_path"]),
    link("parent", "goroutines", ["process_id", "parent_goid"], "goroutines", ["process_id", "goid"]),
    link("to_failed", "clients", ["id"], "broken", ["x"]),
    link("bad_column", "clients", ["nosuch"], "handlers", ["req_id"]),
    link("arity", "clients", ["id", "path_s"], "handlers", ["req_id"]),
]


def test_links_table(tmp_path):
    s = spec([report("broken", "SELECT json('{') AS x")], LINKS)
    db, problems = snapshot(tmp_path, s)
    got = {p.name: (p.skipped, p.message) for p in problems if p.kind == "link"}
    assert got == {"to_failed": (True, "skipped: it links broken, which failed"),
                   "bad_column": (False, "table clients has no column nosuch"),
                   "arity": (False, "2 columns on the left, 1 on the right")}

    def pairs(name):
        return set(rows(db, "SELECT c.id, h.req_id FROM exray_links l JOIN clients c ON c.rowid = l.from_rowid "
                            "JOIN handlers h ON h.rowid = l.to_rowid WHERE l.link = ? AND from_table = 'clients'",
                        name))

    # Across processes (clients in 1, handlers in 2); NULL keys match nothing.
    assert pairs("serves") == {("1", 1), ("2", 2), ("3", 3)}
    assert pairs("serves_path") == {("1", 1), ("2", 2)}      # id 3's path differs
    # Both directions, each exactly once.
    both = rows(db, "SELECT from_table, from_rowid, to_table, to_rowid FROM exray_links WHERE link = 'serves'")
    assert len(both) == 6 and {(c, d, a, b) for a, b, c, d in both} == set(both)
    # One table on both sides: goroutine -> its parent, never itself.
    par = rows(db, "SELECT count(*), sum(from_rowid = to_rowid) FROM exray_links WHERE link = 'parent'")
    assert par == [(0, None)]                 # parent goid 1 is in no snapshot here
    defs = rows(db, "SELECT * FROM exray_link_defs WHERE name = 'serves_path'")
    assert defs == [("serves_path", "clients", '["id", "path_s"]', "handlers", '["req_id", "req_path"]', "")]


def test_same_table_link(tmp_path):
    procs = records()
    procs[1].goroutines[1].parent_goid = 21      # handler 22 was started by handler 21
    procs[1].goroutines[2].parent_goid = 21
    path = tmp_path / "snap.sqlite"
    s = spec(links=[LINKS[2]])
    write_snapshot(path, procs, tables_of(s))
    db = open_snapshot(path, readonly=False)
    assert [p for p in materialize(db, s) if p.kind == "link"] == []
    got = set(rows(db, "SELECT f.goid, t.goid FROM exray_links l JOIN goroutines f ON f.rowid = l.from_rowid "
                       "JOIN goroutines t ON t.rowid = l.to_rowid WHERE link = 'parent'"))
    assert got == {(22, 21), (23, 21), (21, 22), (21, 23)}


# ------------------------------------------------------------------ the doc

def doc_section() -> str:
    text = DOC.read_text()
    return text[text.index("## Extra columns, derived tables and links"):]


def test_doc_matches_meta_tables(tmp_path):
    db, _ = snapshot(tmp_path, spec())
    documented: dict[str, list] = {}
    current = None
    for line in doc_section().splitlines():
        if line.startswith("#"):
            m = re.match(r"#{2,3} `(\w+)`$", line)
            current = m.group(1) if m else None
        elif current and (m := re.match(r"\| `(\w+)` \| (\w+) \|", line)):
            documented.setdefault(current, []).append((m.group(1), m.group(2)))
    assert set(documented) == set(META_TABLES)
    for table in META_TABLES:
        assert documented[table] == [(r[1], r[2]) for r in db.execute(f"PRAGMA table_info({table})")], table


def test_doc_examples_run(tmp_path):
    s = spec([report("slow_requests", "SELECT * FROM handlers")], LINKS[:2])
    db, _ = snapshot(tmp_path, s)
    queries = re.findall(r"```sql materialized\n(.*?)```", DOC.read_text(), re.S)
    assert len(queries) >= 3
    for sql in queries:
        assert db.execute(sql).fetchall() is not None
