"""Extra columns, derived tables (reports) and links, materialized into a snapshot.

`materialize(db, spec)` runs once on a freshly written snapshot (after
server.store.write_snapshot):

1. extra columns: `ALTER TABLE fn ADD COLUMN x` + `UPDATE fn SET x = (<sql>)`;
2. reports: `CREATE TABLE name AS <sql>`, in the spec's (dependency) order;
3. links: every pair of rows whose key columns are equal, both ways, in
   `exray_links`, the definitions in `exray_link_defs`;
4. `exray_columns`: where each column came from and its display type;
5. `all_captured_data` again, so it covers the extra columns.

Each column, report and link runs in a transaction of its own: a failure
rolls back only that step, lands in `exray_report_errors` and in the returned problems, and
the rest goes on. A report that reads a failed one is skipped, with the reason.
User SQL runs under an authorizer that allows reads and the one write the step
needs (defense in depth: the spec checker rejects writes statically too).

Everything runs under the spec's `limits:` (probe_compiler.sql_limits, enforced
with server.sqlguard): time per statement and for all of it (the progress
handler), bytes each step may add (max_page_count) and the file's size, rows
per report and per link, value length, SQLite's heap. A step that hits one
fails with a message that names it (`limits.table_mb`); once the total time
is spent the remaining steps are skipped. The snapshot itself is kept.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from dataclasses import dataclass

from probe_compiler.sql_limits import DEFAULTS, SqlLimits, text
from server.display import BUILTIN_DISPLAY
from server.sqlguard import Budget, describe, heap_limit, quote_ident, value_limit
from server.store import SnapshotError, create_all_captured_view, function_tables


class ReportsError(SnapshotError):
    """Extra columns, reports or links cannot be materialized or followed."""


class LinkError(ReportsError):
    """A link lookup names a table or row the snapshot does not have."""


@dataclass(frozen=True)
class ReportProblem:
    kind: str                  # 'column', 'report' or 'link'
    name: str                  # table.column, report name, link name
    message: str
    skipped: bool = False      # True: not run, because something it needs failed
    path: str = ""
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.column}: " if self.line else ""
        return f"{where}{self.kind} {self.name}: {self.message}"


META_TABLES: dict[str, str] = {
    "exray_columns": "table_name TEXT, column_name TEXT, source TEXT, expr TEXT, display TEXT",
    "exray_link_defs": "name TEXT, left_table TEXT, left_columns TEXT, right_table TEXT, "
                       "right_columns TEXT, description TEXT",
    "exray_links": "link TEXT, from_table TEXT, from_rowid INTEGER, to_table TEXT, to_rowid INTEGER",
    "exray_report_errors": "kind TEXT, name TEXT, error TEXT, skipped INTEGER",
}
q = quote_ident          # the one SQL identifier quoting (server.sqlguard)


# ------------------------------------------------------------------ the guard

_ACTIONS = {getattr(sqlite3, "SQLITE_" + n): n for n in (
    "CREATE_INDEX", "CREATE_TABLE", "CREATE_TEMP_INDEX", "CREATE_TEMP_TABLE", "CREATE_TEMP_TRIGGER",
    "CREATE_TEMP_VIEW", "CREATE_TRIGGER", "CREATE_VIEW", "DELETE", "DROP_INDEX", "DROP_TABLE",
    "DROP_TEMP_INDEX", "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER", "DROP_TEMP_VIEW", "DROP_TRIGGER",
    "DROP_VIEW", "INSERT", "PRAGMA", "READ", "SELECT", "TRANSACTION", "UPDATE", "ATTACH", "DETACH",
    "ALTER_TABLE", "REINDEX", "ANALYZE", "CREATE_VTABLE", "DROP_VTABLE", "FUNCTION", "SAVEPOINT",
    "RECURSIVE") if hasattr(sqlite3, "SQLITE_" + n)}
_READS = {sqlite3.SQLITE_READ, sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION,
          getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
_SCHEMA = {"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"}


class _Guard:
    """sqlite3 authorizer: reads, plus the writes in `allow` ((action, table,
    column or None)); anything else is denied and remembered for the message."""

    def __init__(self, *allow: tuple[int, str, str | None]):
        self.allow = allow
        self.denials: list[tuple[str, str]] = []     # (action, on what)

    def __call__(self, action, arg1, arg2, dbname, source):
        if action in _READS and not (action == sqlite3.SQLITE_FUNCTION and arg2 == "load_extension"):
            return sqlite3.SQLITE_OK
        # Declaring an eponymous virtual table (json_each, pragma_*) on first use
        # reports an UPDATE of sqlite_master; SQLite refuses real writes to the
        # schema table unless PRAGMA writable_schema, which stays denied.
        if action == sqlite3.SQLITE_UPDATE and arg1 in _SCHEMA:
            return sqlite3.SQLITE_OK
        for a, table, column in self.allow:
            if a == action and arg1 == table and column in (None, arg2):
                return sqlite3.SQLITE_OK
        self.denials.append((_ACTIONS.get(action, str(action)).replace("_", " "), arg1 or ""))
        return sqlite3.SQLITE_DENY

    @property
    def denied(self) -> str | None:
        """The denial to report: DROP TABLE x rather than the schema row it deletes."""
        if not self.denials:
            return None
        named = [d for d in self.denials if d[1] not in _SCHEMA]
        if not named:          # DROP and CREATE ask for the schema row first
            return " ".join(self.denials[0]) + " (a schema change)"
        return " ".join(named[0]).strip()


class _Runner:
    """Runs user SQL on `db` under a guard and `limits`, one transaction per step.
    The time budget (progress handler) covers every statement of a step, the
    step's own and ours (a link's join), from `install` to `uninstall`."""

    def __init__(self, db: sqlite3.Connection, limits: SqlLimits):
        self.db = db
        self.limits = limits
        self.budget = Budget(limits.statement_seconds, limits.total_seconds)
        self.page_size = db.execute("PRAGMA page_size").fetchone()[0]
        self.max_pages = db.execute("PRAGMA max_page_count").fetchone()[0]
        self.cap_is = "table"            # which bound this step's max_page_count stands for

    def install(self) -> None:
        self.db.execute("PRAGMA temp_store = MEMORY")     # temp B-trees and sorts count in the heap limit
        self.db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, value_limit(self.limits))
        self.budget.install(self.db)

    def uninstall(self) -> None:
        self.db.set_progress_handler(None, 0)
        self.db.execute(f"PRAGMA max_page_count = {self.max_pages}")

    def skip_reason(self) -> str | None:
        """Why no more steps run: the total time is spent."""
        if self.budget.out_of_time():
            return (f"skipped: the spec's SQL ran out of limits.total_seconds "
                    f"({text(self.limits.total_seconds)} s for all extra columns, reports and links)")
        return None

    def run(self, sql: str, guard: _Guard) -> None:
        self.db.set_authorizer(guard)
        try:
            self.db.execute(sql).fetchall()
        except (sqlite3.DatabaseError, MemoryError) as e:
            raise _StepFailed(self._why(e, guard)) from None
        except sqlite3.Warning as e:          # "You can only execute one statement at a time."
            raise _StepFailed(str(e)) from None
        finally:
            self.db.set_authorizer(None)

    def _why(self, e: BaseException, guard: _Guard | None = None) -> str:
        if guard is not None and guard.denied:
            return f"not allowed: {guard.denied} (reports and extra columns only read the snapshot)"
        if "database or disk is full" in str(e):
            return self._full()
        return describe(e, self)

    def _full(self) -> str:
        try:
            st = os.statvfs(os.path.dirname(self._file()) or ".")
            free = st.f_bavail * st.f_frsize
        except (OSError, sqlite3.Error, TypeError):
            free = None
        if free is not None and free < self.limits.table_bytes:
            return f"the disk is full ({free // (1 << 20):,} MiB free)"
        if self.cap_is == "snapshot":
            return (f"would make the snapshot file larger than limits.snapshot_mb "
                    f"({text(self.limits.snapshot_mb)} MiB)")
        return f"wrote more than limits.table_mb ({text(self.limits.table_mb)} MiB)"

    def _file(self) -> str:
        return self.db.execute("SELECT file FROM pragma_database_list WHERE name = 'main'").fetchone()[0]

    def _cap_growth(self) -> None:
        """max_page_count for the next step: what it may add, within the file's cap."""
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        file_cap = self.limits.snapshot_bytes // self.page_size
        step_cap = pages + self.limits.table_bytes // self.page_size
        self.cap_is = "snapshot" if file_cap <= step_cap else "table"
        self.db.execute(f"PRAGMA max_page_count = {min(file_cap, step_cap, self.max_pages)}")

    def check_read_only(self, sql: str) -> None:
        """Compile (not run) `sql` with reads only allowed: a write, ATTACH or
        PRAGMA fails here, with the authorizer's reason."""
        self.run("EXPLAIN " + sql, _Guard())

    def step(self, fn, *args) -> str | None:
        """Run fn(*args) in a transaction of its own, under the step's bounds;
        returns why it failed, None if it did not."""
        self.budget.start_statement()
        try:
            self._cap_growth()
            with transaction(self.db):
                fn(*args)
        except _StepFailed as e:
            return str(e)
        except (sqlite3.DatabaseError, MemoryError) as e:    # our own statements of the step
            return self._why(e)
        return None


@contextlib.contextmanager
def transaction(db: sqlite3.Connection):
    """One transaction per step, committed at once: an interrupted write (the
    time limit) makes SQLite roll back the whole transaction it was in, so no
    step may share one with another step's work."""
    db.execute("SAVEPOINT exray_step")
    try:
        yield
    except BaseException:
        if db.in_transaction:          # not already rolled back by SQLite itself
            db.execute("ROLLBACK TO exray_step")
            db.execute("RELEASE exray_step")
        raise
    db.execute("RELEASE exray_step")


class _StepFailed(Exception):
    pass


# ------------------------------------------------------------------ the steps

def _table_columns(db: sqlite3.Connection, table: str) -> list[str] | None:
    """The columns of table `table`, None if there is no such table (views don't count)."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone():
        return None
    return [r[1] for r in db.execute(f"PRAGMA table_info({q(table)})")]


def _strip_sql(sql: str) -> str:
    return sql.strip().rstrip(";").strip()


def _add_column(run: _Runner, table: str, name: str, sql: str) -> None:
    cols = _table_columns(run.db, table)
    if cols is None:
        raise _StepFailed(f"no table {table}")
    if name.lower() in (c.lower() for c in cols):
        raise _StepFailed(f"table {table} already has a column {name}")
    expr = _strip_sql(sql)
    run.check_read_only(f"SELECT ({expr}) FROM {q(table)}")
    # No declared type: the column keeps what the expression yields (integer, text, ...).
    run.db.execute(f"ALTER TABLE {q(table)} ADD COLUMN {q(name)}")
    run.run(f"UPDATE {q(table)} SET {q(name)} = ({expr})",
            _Guard((sqlite3.SQLITE_UPDATE, table, name)))


def _create_report(run: _Runner, name: str, sql: str) -> None:
    body = _strip_sql(sql)
    run.check_read_only(body)
    allow = [(sqlite3.SQLITE_CREATE_TABLE, name, None), (sqlite3.SQLITE_INSERT, name, None)]
    allow += [(sqlite3.SQLITE_INSERT, s, None) for s in _SCHEMA]
    run.run(f"CREATE TABLE {q(name)} AS {body}", _Guard(*allow))
    rows = run.db.execute(f"SELECT count(*) FROM {q(name)}").fetchone()[0]
    if rows > run.limits.table_rows:
        raise _StepFailed(f"has {rows:,} rows, more than limits.table_rows ({text(run.limits.table_rows)})")


def _check_end(db: sqlite3.Connection, table: str, columns: tuple[str, ...]) -> None:
    cols = _table_columns(db, table)
    if cols is None:
        raise _StepFailed(f"no table {table}")
    missing = [c for c in columns if c not in cols]
    if missing:
        raise _StepFailed(f"table {table} has no column {missing[0]}")
    if not columns:
        raise _StepFailed(f"no key columns for table {table}")


def key_sql(db: sqlite3.Connection, table: str, column: str, alias: str = "") -> str:
    """The SQL value a link compares for `column`: captured columns hold JSON
    text, so they contribute the value it encodes (`col ->> '$'`: JSON 42 is
    the integer 42, JSON "a" the text a); other columns their stored value."""
    ref = (alias + "." if alias else "") + q(column)
    return f"{ref} ->> '$'" if column in _json_columns(db).get(table, ()) else ref


def _json_columns(db: sqlite3.Connection) -> dict[str, set[str]]:
    return {t.table: set(t.columns) | {"raw_" + c for c in t.columns} for t in function_tables(db)}


def _link_keys(db: sqlite3.Connection, name: str, table: str, columns: tuple[str, ...]) -> None:
    """temp.name(id, k0, k1, ...): each row's rowid and canonical key values.
    The key columns have no declared type, so no affinity converts anything
    when they are stored or compared: 1 and '1' stay different."""
    keys = [f"k{i}" for i in range(len(columns))]
    db.execute(f"DROP TABLE IF EXISTS temp.{name}")
    db.execute(f"CREATE TEMP TABLE {name} (id INTEGER, {', '.join(keys)})")
    exprs = ", ".join(key_sql(db, table, c) for c in columns)
    db.execute(f"INSERT INTO temp.{name} SELECT rowid, {exprs} FROM {q(table)}")
    db.execute(f"CREATE INDEX temp.{name}_keys ON {name} ({', '.join(keys)})")


def _insert_link(run: _Runner, link) -> None:
    db = run.db
    left, right = link.left, link.right
    _check_end(db, left.table, left.columns)
    _check_end(db, right.table, right.columns)
    if len(left.columns) != len(right.columns):
        raise _StepFailed(f"{len(left.columns)} columns on the left, {len(right.columns)} on the right")
    try:
        _link_keys(db, "exray_lkeys", left.table, left.columns)
        _link_keys(db, "exray_rkeys", right.table, right.columns)
        # `=` is never true for NULL: rows with a NULL key link to nothing.
        on = " AND ".join(f"l.k{i} = r.k{i}" for i in range(len(left.columns)))
        if left.table == right.table:
            on += " AND l.id <> r.id"         # a row is not linked to itself
        before = db.total_changes
        db.execute(f"""
            WITH pairs(a, b) AS MATERIALIZED (
                SELECT l.id, r.id FROM temp.exray_lkeys AS l JOIN temp.exray_rkeys AS r ON {on})
            INSERT INTO exray_links (link, from_table, from_rowid, to_table, to_rowid)
            SELECT :link, :lt, a, :rt, b FROM pairs
            UNION SELECT :link, :rt, b, :lt, a FROM pairs""",
                   {"link": link.name, "lt": left.table, "rt": right.table})
        pairs = db.total_changes - before
        if pairs > run.limits.table_rows:
            raise _StepFailed(f"links {pairs:,} pairs of rows, more than limits.table_rows "
                              f"({text(run.limits.table_rows)}); make its key more selective")
    except (sqlite3.DatabaseError, MemoryError) as e:
        raise _StepFailed(run._why(e)) from None
    finally:
        db.execute("DROP TABLE IF EXISTS temp.exray_lkeys")
        db.execute("DROP TABLE IF EXISTS temp.exray_rkeys")


# ------------------------------------------------------------------ materialize

def materialize(db: sqlite3.Connection, spec, *, limits: SqlLimits | None = None,
                timeout_s: float | None = None) -> list[ReportProblem]:
    """Materialize `spec`'s extra columns, reports and links into the writable
    snapshot `db`, under `limits` (default: the spec's `limits:`; `timeout_s`
    overrides its statement_seconds). Returns the problems (also in
    `exray_report_errors`)."""
    if getattr(db, "read_only", False):
        raise ReportsError("cannot write the snapshot: it is open readonly")
    if db.execute("SELECT 1 FROM sqlite_master WHERE name='exray_columns'").fetchone():
        raise ReportsError("this snapshot's reports are already materialized")
    limits = limits or getattr(spec, "sql_limits", None) or DEFAULTS
    if timeout_s is not None:
        limits = limits.with_(statement_seconds=timeout_s)
    if db.in_transaction:
        db.commit()
    saved = db.isolation_level
    db.isolation_level = None           # we manage transactions: one per step
    run = _Runner(db, limits)
    try:
        with heap_limit(limits.memory_bytes):
            run.install()
            try:
                return _materialize(db, spec, run)
            finally:
                run.uninstall()
    finally:
        db.isolation_level = saved


def _materialize(db: sqlite3.Connection, spec, run: _Runner) -> list[ReportProblem]:
    try:
        with transaction(db):
            for name, cols in META_TABLES.items():
                db.execute(f"CREATE TABLE {name} ({cols})")
    except sqlite3.OperationalError as e:          # opened read-only, disk full, ...
        raise ReportsError(f"cannot write the snapshot: {e}") from None
    problems: list[ReportProblem] = []
    extras = _materialize_columns(run, spec, problems)
    reports = _materialize_reports(run, spec, problems)
    _materialize_links(run, spec, problems, failed={p.name for p in problems if p.kind == "report"})
    run.uninstall()              # our own bookkeeping: not under the spec's budget
    with transaction(db):
        db.execute("CREATE INDEX exray_links_from ON exray_links (from_table, from_rowid)")
        _record_columns(db, spec, extras, reports)
        _rebuild_view(db, extras)
        db.executemany("INSERT INTO exray_report_errors VALUES (?, ?, ?, ?)",
                       [(p.kind, p.name, p.message, int(p.skipped)) for p in problems])
    return problems


def _materialize_columns(run: _Runner, spec, problems: list[ReportProblem]) -> dict[str, list]:
    """Adds every extra column; returns function table -> the ColumnSpecs that landed."""
    done: dict[str, list] = {}
    for fn in spec.functions:
        for col in fn.columns:
            skip = run.skip_reason()
            why = skip or run.step(_add_column, run, fn.table, col.name, col.sql)
            if why:
                problems.append(ReportProblem("column", f"{fn.table}.{col.name}", why, bool(skip),
                                              col.path, col.line, col.column))
            else:
                done.setdefault(fn.table, []).append(col)
    return done


def _materialize_reports(run: _Runner, spec, problems: list[ReportProblem]) -> list:
    """Creates the reports in order; returns the ReportSpecs that landed."""
    failed: set[str] = set()
    done = []
    for r in spec.reports:
        bad = [d for d in r.depends_on if d in failed]
        skip = run.skip_reason()
        if bad:
            why, skipped = f"skipped: it reads {bad[0]}, which failed", True
        elif skip:
            why, skipped = skip, True
        else:
            why, skipped = run.step(_create_report, run, r.name, r.sql), False
        if why:
            failed.add(r.name)
            problems.append(ReportProblem("report", r.name, why, skipped, r.path, r.line, r.column))
        else:
            done.append(r)
    return done


def _materialize_links(run: _Runner, spec, problems: list[ReportProblem], failed: set[str]) -> None:
    db = run.db
    with transaction(db):
        db.executemany("INSERT INTO exray_link_defs VALUES (?, ?, ?, ?, ?, ?)", [(
            link.name, link.left.table, json.dumps(list(link.left.columns)),
            link.right.table, json.dumps(list(link.right.columns)), link.description)
            for link in spec.links])
    for link in spec.links:
        bad = [t for t in (link.left.table, link.right.table) if t in failed]
        skip = run.skip_reason()
        if bad:
            why, skipped = f"skipped: it links {bad[0]}, which failed", True
        elif skip:
            why, skipped = skip, True
        else:
            why, skipped = run.step(_insert_link, run, link), False
        if why:
            problems.append(ReportProblem("link", link.name, why, skipped, link.path, link.line, link.column))


def _record_columns(db: sqlite3.Connection, spec, extras: dict[str, list], reports: list) -> None:
    rows = []
    for fn in spec.functions:
        if _table_columns(db, fn.table) is None:
            continue
        rows += [(fn.table, c.name, "capture", c.expr, c.display) for c in fn.captures]
        rows += [(fn.table, c.name, "extra", c.sql, c.display) for c in extras.get(fn.table, [])]
    known = {(t, c): d for t, c, _, _, d in rows if d}
    known.update(BUILTIN_DISPLAY)
    for r in reports:
        shown = _report_displays(db, r, known)
        for c in _table_columns(db, r.name) or []:
            known_display = shown.get(c)
            rows.append((r.name, c, "report", None, known_display))
            if known_display:
                known[(r.name, c)] = known_display
    db.executemany("INSERT INTO exray_columns VALUES (?, ?, ?, ?, ?)", rows)


def _rebuild_view(db: sqlite3.Connection, extras: dict[str, list]) -> None:
    columns = {t.table: list(t.columns) for t in function_tables(db)}
    for table, cols in extras.items():
        if table in columns:
            columns[table] += [c.name for c in cols]
    create_all_captured_view(db, columns)


def _report_displays(db: sqlite3.Connection, report, known: dict[tuple[str, str], str]) -> dict[str, str]:
    """Output column -> display type, for report columns that are plain
    references to a column with one (`g.wait_ns AS waited`, `t.*`, `*`)."""
    try:
        import sqlglot
        from sqlglot import exp
        tree = sqlglot.parse_one(report.sql, read="sqlite")
    except Exception:                      # not our job to judge the SQL here; no display
        return {}
    select = tree if isinstance(tree, exp.Select) else tree.find(exp.Select)
    if select is None:
        return {}
    aliases = {t.alias_or_name: t.name for t in select.find_all(exp.Table)
               if t.parent_select is select}
    out: dict[str, str] = {}
    for proj in select.expressions:
        out.update(_projection_display(proj, aliases, known, exp))
    return out


def _projection_display(proj, aliases: dict[str, str], known, exp) -> dict[str, str]:
    inner = proj.this if isinstance(proj, exp.Alias) else proj
    if isinstance(inner, exp.Star) or (isinstance(inner, exp.Column) and isinstance(inner.this, exp.Star)):
        tables = [aliases[inner.table]] if getattr(inner, "table", "") in aliases else list(aliases.values())
        return {c: d for (t, c), d in known.items() if t in tables}
    if not isinstance(inner, exp.Column):
        return {}
    tables = [aliases[inner.table]] if inner.table in aliases else list(aliases.values())
    found = {known[(t, inner.name)] for t in tables if (t, inner.name) in known}
    return {proj.alias_or_name: found.pop()} if len(found) == 1 else {}
