"""The SQL of exray.yaml (probe_compiler.spec_sql) and the spec against a binary (spec_check).

Golden error messages for these live in tests/golden/spec_errors (test_spec.py)."""
from __future__ import annotations

import pytest

from probe_compiler.errors import SpecError
from probe_compiler.spec import parse_spec
from probe_compiler.spec_check import check_against_binary
from probe_compiler.spec_sql import (BUILTIN_COLUMNS, FUNCTION_KEY_COLUMNS, check_spec, function_columns,
                                     parse_query, tables_read)


def test_builtin_columns_match_the_store():
    from server.store import ALL_CAPTURED_COLUMNS, ALL_CAPTURED_VIEW, BUILTIN_TABLES, FUNCTION_TABLE_KEY
    store = {t: tuple(c for c, _ in cols) for t, cols in BUILTIN_TABLES.items()}
    store[ALL_CAPTURED_VIEW] = tuple(ALL_CAPTURED_COLUMNS)
    assert BUILTIN_COLUMNS == store
    assert FUNCTION_KEY_COLUMNS == tuple(c for c, _ in FUNCTION_TABLE_KEY)


@pytest.mark.parametrize("sql, tables", [
    ("SELECT * FROM frames", ["frames"]),
    ("SELECT h.goid FROM handle h JOIN goroutines g USING (process_id, goid)", ["handle", "goroutines"]),
    ("SELECT * FROM frames WHERE goid IN (SELECT goid FROM goroutines WHERE status = 'x')",
     ["frames", "goroutines"]),
    ("SELECT * FROM (SELECT goid FROM handle) AS t", ["handle"]),
    ("WITH w AS (SELECT * FROM goroutines) SELECT * FROM w JOIN frames USING (goid)", ["goroutines", "frames"]),
    # a CTE that shadows a real table is not that table
    ("WITH frames AS (SELECT goid FROM handle) SELECT * FROM frames", ["handle"]),
    ("WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 3) SELECT n FROM c", []),
    ("SELECT goid FROM handle UNION SELECT goid FROM blocked EXCEPT SELECT goid FROM frames",
     ["handle", "blocked", "frames"]),
    ("SELECT j.value FROM handle h, json_each(h.req) j", ["handle"]),    # json_each is a function
    ("SELECT EXISTS (SELECT 1 FROM frames f WHERE f.goid = g.goid) FROM goroutines g", ["frames", "goroutines"]),
])
def test_tables_read(sql, tables):
    assert tables_read(sql) == tables


@pytest.mark.parametrize("sql", [
    "INSERT INTO frames SELECT * FROM frames", "UPDATE frames SET depth = 0", "DELETE FROM frames",
    "CREATE TABLE t AS SELECT 1", "DROP TABLE frames", "ATTACH 'x.db' AS x", "DETACH x",
    "PRAGMA journal_mode = WAL", "VACUUM", "REPLACE INTO frames VALUES (1)",
    "WITH w AS (SELECT 1) INSERT INTO frames SELECT * FROM w", "ANALYZE",
])
def test_only_queries(sql):
    with pytest.raises(Exception, match="must be a query"):
        parse_query(sql)


@pytest.mark.parametrize("sql", ["SELECT 1", "SELECT 1 UNION ALL SELECT 2", "(SELECT 1)",
                                 "WITH a AS (SELECT 1 AS x) SELECT x FROM a"])
def test_queries(sql):
    parse_query(sql)


SPEC = """\
version: 1
functions:
  main.handle:
    table: handle
    capture: [req, req.ID]
    columns:
      path: "req->>'Path'"
      id2: raw_req_ID
reports:
  short: SELECT goid, path FROM blocked
  blocked:
    sql: |
      SELECT h.* FROM handle h
      JOIN goroutines g USING (process_id, goid)
      WHERE g.wait_reason = 'sync.Mutex.Lock'
  mine: "WITH x AS (SELECT * FROM short) SELECT goid FROM x"
  alone: SELECT count(*) AS n FROM frames
links:
  - from: short(goid)
    to: goroutines(goid)
  - from: blocked(process_id, goid, depth)
    to: frames(process_id, goid, depth)
"""


def test_reports_in_dependency_order():
    spec = parse_spec(SPEC)
    assert [r.name for r in spec.reports] == ["blocked", "short", "mine", "alone"]
    deps = {r.name: r.depends_on for r in spec.reports}
    assert deps == {"blocked": ("handle", "goroutines"), "short": ("blocked",), "mine": ("short",),
                    "alone": ("frames",)}


def test_function_columns():
    fn = parse_spec(SPEC).functions[0]
    assert function_columns(fn) == ["process_id", "goid", "depth", "req", "req_ID", "raw_req",
                                    "raw_req_ID", "_errors", "path", "id2"]
    assert function_columns(fn, extra=False)[-1] == "_errors"


def test_star_of_a_report_expands_to_its_columns():
    bad = SPEC.replace("SELECT goid, path FROM blocked", "SELECT goid, pathh FROM blocked")
    with pytest.raises(SpecError, match=r"unknown column 'pathh' in blocked \(did you mean 'path'\?\)"):
        parse_spec(bad)


def test_every_problem_is_collected():
    text = """\
version: 1
functions:
  main.f:
    table: t
    capture: [x]
    columns:
      a: nope + 1
reports:
  r1: SELECT zz FROM t
  r2: SELECT * FROM nowhere
  r3: SELECT * FROM r2          # not checked further: r2 is broken
links:
  - from: t(x, y)
    to: r1(zz)
"""
    spec = parse_spec(text, check_sql=False)
    got = [(e.line, e.column, e.detail.split(":")[0]) for e in check_spec(spec)]
    # in file order; r1's own error hides the link's complaint about r1.zz
    assert got == [(7, 10, "column 'a' of table 't'"), (9, 14, "report 'r1'"), (10, 21, "report 'r2'"),
                   (13, 16, "link 't_to_r1'"), (14, 9, "link 't_to_r1'")]


def test_ambiguous_column():
    text = "version: 1\nreports:\n  r: SELECT goid FROM frames, goroutines\n"
    with pytest.raises(SpecError, match=r"ambiguous column 'goid' \(in frames, goroutines\)") as e:
        parse_spec(text)
    assert (e.value.line, e.value.column) == (3, 13)


def test_unknown_alias():
    text = "version: 1\nreports:\n  r: SELECT x.goid FROM frames f\n"
    with pytest.raises(SpecError, match="unknown table or alias 'x'"):
        parse_spec(text)


def test_case_insensitive_names():
    parse_spec("version: 1\nreports:\n  r: SELECT GOID FROM Frames\n  s: SELECT goid FROM R\n"
               "links:\n  - {from: R(Goid), to: frames(GOID)}\n")


def test_json_each():
    head = "version: 1\nfunctions:\n  f:\n    table: t\n    capture: [req]\nreports:\n"
    parse_spec(head + "  r: SELECT t.goid, j.value FROM t, json_each(t.req) j\n  s: SELECT value FROM r\n")
    # where sqlglot can't know a table-valued function's columns, they aren't checked
    parse_spec(head + "  r: SELECT goid FROM t WHERE EXISTS (SELECT 1 FROM json_each(t.req) WHERE value > 3)\n"
                      "  s: SELECT anything FROM r\n")


@pytest.mark.parametrize("value, where", [
    # the error points at the second '=', whatever the scalar's style
    ("SELECT 1 FROM frames WHERE depth = = 1", (3, 41)),
    ("'SELECT 1 FROM frames WHERE line = ''x'' = = 1'", (3, 49)),
    ('"SELECT 1 FROM frames WHERE depth = = 1"', (3, 42)),
    ("|\n    SELECT 1\n      FROM frames\n     WHERE depth = = 1", (6, 20)),
    (">-\n    SELECT 1\n    FROM frames\n    WHERE depth = = 1", (6, 19)),
    ("SELECT 1\n    FROM frames WHERE depth = = 1", (4, 31)),
])
def test_syntax_error_positions(value, where):
    with pytest.raises(SpecError, match="'=' is incomplete") as e:
        parse_spec(f"version: 1\nreports:\n  r: {value}\n")
    assert (e.value.line, e.value.column) == where


# ------------------------------------------------------------ against a binary

def test_check_against_binary(go_build, tmp_path, monkeypatch):
    binary = go_build("dwarf_types")
    spec = parse_spec("""\
version: 1
functions:
  main.handle:
    capture: [s.tags, s.tagz, idd, label]
  main.handl:
  main.usePair:
    capture: [p.Key]
""", "svc/exray.yaml")
    errors = check_against_binary(spec, str(binary), str(tmp_path))
    got = [(e.path, e.line, e.column) for e in errors]
    assert got == [("svc/exray.yaml", 4, 23), ("svc/exray.yaml", 4, 31), ("svc/exray.yaml", 5, 3)]
    assert "did you mean 'tags'?" in errors[0].detail
    assert "did you mean 'id'?" in errors[1].detail
    assert "no function main.handl" in errors[2].detail and "did you mean main.handle" in errors[2].detail
    fine = parse_spec("version: 1\nfunctions:\n  main.handle:\n    capture: [s.tags, id]\n")
    assert check_against_binary(fine, str(binary), str(tmp_path)) == []
