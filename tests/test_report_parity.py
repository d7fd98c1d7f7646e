"""The same report SQL (SQLite's dialect) gives the same rows on SQLite,
PostgreSQL and DuckDB (server/sql_engines.py, docs/sql-engines.md).

A real snapshot of the reports program (a toy order service frozen mid-flight)
is loaded into each engine, the reports a Go engineer would write are created
there in order, and every report table is compared across the three. A few
unit tests pin the transpiler's output for the tricky cases.
"""
from __future__ import annotations

import shutil
import sqlite3

import duckdb
import psycopg
import pytest

import pg
from targets import run_target
from probe_compiler.spec import parse_spec
from server.snapshot_job import snapshot_pids
from server.sql_engines import copy_snapshot, rows, run_reports, transpile
from server.store import FunctionTableDef, write_snapshot

SPEC = """\
version: 1
functions:
  main.(*server).handle:
    table: handle
    capture:
      - req
      - expr: req.ID
        name: id
      - expr: s.name
        name: server
      - req.User
  main.worker:
    table: workers
    capture:
      - id
      - q
  main.janitor:
    capture:
      - every
      - name
"""

# (name, sql): derived tables, in order; later ones read earlier ones.
REPORTS: list[tuple[str, str]] = [
    ("waits", """
        SELECT g.wait_reason, f.function AS top, count(*) AS n, sum(g.wait_ns > 0) AS timed
        FROM goroutines g
        JOIN frames f ON f.process_id = g.process_id AND f.goid = g.goid
        WHERE NOT g.is_system AND NOT f.hidden
          AND f.depth = (SELECT min(depth) FROM frames h  -- the innermost frame of our own code
                         WHERE h.process_id = g.process_id AND h.goid = g.goid
                           AND h.function LIKE 'main.%' AND NOT h.hidden)
        GROUP BY g.wait_reason, f.function"""),
    ("requests", """
        SELECT goid, CAST(req ->> 'ID' AS INTEGER) AS id, req ->> 'Path' AS path,
               req ->> 'User.Name' AS user_name, req -> 'User.Tier' AS tier_json,
               req -> 'Tags' AS tags, req ->> 'Tags.region' AS region,
               CAST(req ->> 'Trace' AS INTEGER) AS trace, server ->> '$' AS server
        FROM handle"""),
    ("big_spenders", """
        SELECT goid, id ->> '$' + 0 AS id, req ->> 'Budget' * 100 AS budget_cents
        FROM handle WHERE req ->> 'Budget' > 10 AND id ->> '$' >= 101"""),
    ("admins", """
        SELECT goid, req_User ->> 'Name' AS who FROM handle
        WHERE req ->> 'User.Admin' AND "REQ_USER" ->> 'Admin' = 1"""),
    ("first_items", """
        SELECT goid, json_extract(req, '$.Items[0].SKU') AS sku,
               json_extract(req, '$.Items[0].Qty') * json_extract(req, '$.Items[0].Price') AS cents,
               json_array_length(req -> 'Items') AS n_items
        FROM handle WHERE json_extract(req, '$.Items[0].SKU') IS NOT NULL"""),
    ("handler_callers", """
        SELECT h.goid, g.status, g.wait_reason, f.function AS caller, f.inlined
        FROM handle h JOIN goroutines g USING (process_id, goid)
        JOIN frames f ON f.process_id = h.process_id AND f.goid = h.goid AND f.depth = h.depth + 1"""),
    ("ranked", """
        WITH r AS (SELECT goid, req ->> 'User.Tier' AS tier, CAST(req ->> 'Budget' AS REAL) AS budget
                   FROM handle)
        SELECT goid, tier, budget,
               rank() OVER (PARTITION BY tier ORDER BY budget DESC) AS rnk,
               sum(budget) OVER (PARTITION BY tier) AS tier_total,
               row_number() OVER (ORDER BY tier, goid) AS pos
        FROM r"""),
    ("tier_tops", """
        SELECT tier, count(*) AS n, max(budget) AS top FROM ranked
        WHERE rnk = 1 OR tier IS NULL GROUP BY tier"""),
    ("orders_paths", """
        SELECT goid, req ->> 'Path' AS path FROM handle
        WHERE req ->> 'Path' LIKE '/api/orders%' AND req ->> 'Path' NOT LIKE '%users%'"""),
    ("label_kinds", """
        SELECT labels ->> 'kind' AS kind, count(*) AS n,
               count(DISTINCT labels ->> 'handler') AS handlers,
               count(DISTINCT labels ->> 'queue') AS queues
        FROM goroutines WHERE labels IS NOT NULL GROUP BY labels ->> 'kind'"""),
    ("sizes", """
        SELECT goid,
               CASE WHEN req ->> 'Budget' >= 100 THEN 'large'
                    WHEN req ->> 'Budget' > 0 THEN 'small' ELSE 'none' END AS size,
               CASE req ->> 'User.Tier' WHEN 'gold' THEN 1 ELSE 0 END AS gold,
               iif(req ->> 'User.Admin', 'admin', 'user') AS role
        FROM handle"""),
    ("queues", """
        SELECT q ->> 'name' AS queue, count(*) AS workers, sum(q ->> 'depth') AS depth_sum,
               min(CAST(id AS INTEGER)) AS first_worker, avg(goid) AS mean_goid
        FROM workers GROUP BY q ->> 'name'"""),
    ("arith", """
        SELECT goid, wait_reason || ' #' || goid AS label, goid / 2 AS half, goid % 3 AS m,
               created_by_line * 1.0 / 4 AS quarter, -goid / 4 AS neg_div, goid > 20 AS late
        FROM goroutines WHERE created_by = 'main.main'"""),
    ("janitors", """
        SELECT j.goid, j.every ->> '$' AS every, j.name ->> '$' AS name, g.wait_reason
        FROM main_janitor j JOIN goroutines g ON g.process_id = j.process_id AND g.goid = j.goid"""),
    ("alice_everywhere", """
        SELECT table_name, column_name, count(*) AS n FROM all_captured_data
        WHERE value LIKE '%ALICE%' GROUP BY table_name, column_name"""),
    ("user_load", """
        WITH u AS (SELECT r.user_name, r.id, s.size FROM requests r JOIN sizes s USING (goid))
        SELECT user_name, count(*) AS n, count(DISTINCT size) AS sizes, max(id) AS last_id
        FROM u GROUP BY user_name"""),
]

# Read back in their own order: ORDER BY (NULL placement included) must agree too.
ORDERED = [
    "SELECT goid, user_name FROM requests ORDER BY user_name, goid",
    "SELECT goid, user_name FROM requests ORDER BY user_name DESC, goid DESC",
    "SELECT goid, tier, rnk FROM ranked ORDER BY tier, rnk, goid",
    "SELECT goid, region, trace FROM requests ORDER BY region DESC, trace",
    "SELECT goid, row_number() OVER (ORDER BY region, goid DESC) AS k FROM requests ORDER BY k",
]


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def pg_conninfo():
    why = pg.postgres_missing()
    if why:
        pytest.skip(why)
    with pg.temp_postgres() as conninfo:
        yield conninfo


@pytest.fixture(scope="module")
def snapshot(go_build, tmp_path_factory):
    spec = parse_spec(SPEC)
    with run_target(go_build("reports"), dump=False) as t:
        records = snapshot_pids([t.pid], spec)
    assert records[0].error is None, records[0].error
    tables = [FunctionTableDef(f.symbol, f.table, [c.name for c in f.captures]) for f in spec.functions]
    path = tmp_path_factory.mktemp("parity") / "snap.sqlite"
    write_snapshot(path, records, tables, spec_text=SPEC)
    return path


@pytest.fixture(scope="module")
def engines(snapshot, pg_conninfo, tmp_path_factory):
    """dialect -> connection holding the snapshot and every report."""
    work = tmp_path_factory.mktemp("sqlite") / "snap.sqlite"
    shutil.copy(snapshot, work)
    lite = sqlite3.connect(work, isolation_level=None)
    run_reports(lite, "sqlite", REPORTS)
    with psycopg.connect(pg_conninfo, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS parity")
        admin.execute("CREATE DATABASE parity")
    pgc = psycopg.connect(pg_conninfo.replace("dbname=postgres", "dbname=parity"), autocommit=True)
    duck = duckdb.connect()
    src = sqlite3.connect(snapshot)
    for dialect, conn in (("postgres", pgc), ("duckdb", duck)):
        copy_snapshot(src, conn, dialect)
        run_reports(conn, dialect, REPORTS)
    src.close()
    yield {"sqlite": lite, "postgres": pgc, "duckdb": duck}
    for c in (lite, pgc, duck):
        c.close()


def on_all(engines, sql: str) -> dict[str, list[tuple]]:
    return {d: rows(c, d, sql) for d, c in engines.items()}


def unordered(rs: list[tuple]) -> list[tuple]:
    return sorted(rs, key=repr)


# ---------------------------------------------------------------- parity

@pytest.mark.parametrize("name", [n for n, _ in REPORTS])
def test_report_same_rows_everywhere(engines, name):
    got = on_all(engines, f"SELECT * FROM {name}")
    want = unordered(got["sqlite"])
    assert want, f"report {name} is empty on SQLite: the test program or spec drifted"
    for dialect in ("postgres", "duckdb"):
        assert unordered(got[dialect]) == want, f"{name} on {dialect}"


@pytest.mark.parametrize("sql", ORDERED)
def test_order_by_same_everywhere(engines, sql):
    got = on_all(engines, sql)
    assert got["postgres"] == got["sqlite"]
    assert got["duckdb"] == got["sqlite"]


def test_snapshot_tables_copied_faithfully(engines):
    """Every built-in and function table, row for row, JSON compared parsed."""
    for table in ("processes", "goroutines", "frames", "handle", "workers", "main_janitor", "meta"):
        got = on_all(engines, f"SELECT * FROM {table}")
        assert got["sqlite"], table
        for dialect in ("postgres", "duckdb"):
            assert unordered(got[dialect]) == unordered(got["sqlite"]), f"{table} on {dialect}"


def test_the_reports_see_what_the_program_holds(engines):
    lite = engines["sqlite"]
    assert rows(lite, "sqlite", "SELECT wait_reason, top, n FROM waits WHERE n > 1 ORDER BY n DESC") == [
        ("sync.Mutex.Lock", "main.(*server).handle", 6), ("chan receive", "main.worker", 5),
        ("sleep", "main.janitor", 2)]
    assert rows(lite, "sqlite", "SELECT trace FROM requests WHERE id = 103") == [(2 ** 62 + 3,)]
    assert sorted(rows(lite, "sqlite", "SELECT goid FROM orders_paths")) == \
        sorted(rows(lite, "sqlite", "SELECT goid FROM requests WHERE id IN (101, 102, 105)"))


@pytest.mark.parametrize("dialect", ["postgres", "duckdb"])
def test_json_columns_get_json_types(engines, dialect):
    kind = {"postgres": "SELECT pg_typeof(labels)::text, pg_typeof(raw_req)::text, "
                        "pg_typeof(pc)::text FROM goroutines, handle, frames LIMIT 1",
            "duckdb": "SELECT typeof(labels), typeof(raw_req), typeof(pc) "
                      "FROM goroutines, handle, frames LIMIT 1"}[dialect]
    [types] = engines[dialect].execute(kind).fetchall()
    assert [t.lower() for t in types] == {"postgres": ["jsonb", "jsonb", "bigint"],
                                          "duckdb": ["json", "json", "bigint"]}[dialect]


EXPRESSIONS = [
    "SELECT 7 / 2, -7 / 2, 7.5 / 2, 7 / 0, 1 || 2, 'a' || NULL, 'ABC' LIKE 'abc', 3 > 2",
    "SELECT x FROM (SELECT 2 AS x UNION ALL SELECT NULL UNION ALL SELECT 1) AS t ORDER BY x",
    "SELECT x FROM (SELECT 2 AS x UNION ALL SELECT NULL UNION ALL SELECT 1) AS t ORDER BY x DESC",
    "SELECT CAST('9007199254740993' AS INTEGER), '{\"a\":{\"b\":[1,2]}}' -> 'a.b' ->> '$[1]' + 1",
]


@pytest.mark.parametrize("sql", EXPRESSIONS)
def test_expressions_same_everywhere(engines, sql):
    got = on_all(engines, sql)
    assert got["postgres"] == got["sqlite"] and got["duckdb"] == got["sqlite"], got


# ---------------------------------------------------------------- transpile

@pytest.mark.parametrize("sql, dialect, want", [
    # a SQLite path label 'a.b' is $.a.b, not the key "a.b"
    ("SELECT req -> 'User.Tier' FROM h", "postgres", "SELECT req #> '{\"User\",\"Tier\"}' FROM h"),
    ("SELECT req -> 'User.Tier' FROM h", "duckdb", "SELECT req -> '$.User.Tier' FROM h"),
    ("SELECT json_extract(req, '$.Items[0].Qty') FROM h", "postgres",
     "SELECT req #>> '{\"Items\",0,\"Qty\"}' FROM h"),
    # an arrow inside a call is not a lambda
    ("SELECT json_array_length(req -> 'Items') FROM h", "postgres",
     "SELECT JSONB_ARRAY_LENGTH(req #> '{\"Items\"}') FROM h"),
    # ->> next to a number is a number
    ("SELECT 1 FROM h WHERE req ->> 'ID' > 100", "duckdb",
     "SELECT 1 FROM h WHERE TRY_CAST(req -> '$.ID' AS DOUBLE) > 100"),
    # ->> next to a string stays text
    ("SELECT 1 FROM h WHERE req ->> 'Path' = '/x'", "duckdb", "SELECT 1 FROM h WHERE (req ->> '$.Path') = '/x'"),
    # 0/1 integers as conditions, conditions as 0/1 integers
    ("SELECT sum(a > 1) FROM f WHERE NOT hidden", "postgres",
     "SELECT SUM(CAST((a > 1) AS INT)) FROM f WHERE NOT ((hidden) <> 0)"),
    ("SELECT 1 FROM f WHERE name LIKE 'a%'", "duckdb", "SELECT 1 FROM f WHERE name ILIKE 'a%'"),
    ("SELECT CAST(x AS INTEGER) FROM f", "postgres", "SELECT CAST(x AS BIGINT) FROM f"),
    ("SELECT a || 1 FROM f", "postgres", "SELECT CAST(a AS TEXT) || CAST(1 AS TEXT) FROM f"),
    ("SELECT a FROM f ORDER BY a", "postgres", "SELECT a FROM f ORDER BY a NULLS FIRST"),
    ("SELECT Req_ID FROM F", "postgres", "SELECT req_id FROM f"),
    ("SELECT req ->> 'x' FROM h", "sqlite", "SELECT req ->> 'x' FROM h"),
])
def test_transpile(sql, dialect, want):
    assert transpile(sql, dialect) == want
