"""The snapshot file: SQLite tables that users query (docs/snapshot-schema.md).

`write_snapshot` turns executor records into the built-in tables, one function
table per captured function, the `all_captured_data` view and `meta`.
`open_snapshot` opens a file after checking that it is an Ex-Ray snapshot.
The schema is a user-facing contract: change it together with the doc (a test
compares the two) and bump SCHEMA_VERSION.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from agent.records import ProcessRecord
from probe_compiler.sql_limits import DEFAULTS, SqlLimits

from .sqlguard import SQL_ERRORS, connect_read_only, describe, is_damage, quote_ident

SCHEMA_VERSION = 4
SQLITE_MAGIC = b"SQLite format 3\x00"

# Built-in tables: (column, SQL type) in order. docs/snapshot-schema.md documents each.
BUILTIN_TABLES: dict[str, list[tuple[str, str]]] = {
    "meta": [("key", "TEXT"), ("value", "TEXT")],
    "processes": [
        ("id", "INTEGER"), ("host", "TEXT"), ("pid", "INTEGER"), ("exe", "TEXT"),
        ("build_id", "TEXT"), ("go_version", "TEXT"), ("main_module", "TEXT"),
        ("vcs_revision", "TEXT"), ("captured_at", "INTEGER"), ("pause_ns", "INTEGER"),
        ("error", "TEXT"), ("warnings", "TEXT"), ("truncated", "INTEGER"),
        ("load_bias", "INTEGER"), ("agent", "TEXT"), ("clock_offset_ns", "INTEGER"), ("skew_ns", "INTEGER"),
        ("pause_start_ns", "INTEGER"), ("pause_skew_ns", "INTEGER"),
    ],
    "goroutines": [
        ("process_id", "INTEGER"), ("goid", "INTEGER"), ("status", "TEXT"),
        ("wait_reason", "TEXT"), ("wait_ns", "INTEGER"), ("created_by", "TEXT"),
        ("created_by_file", "TEXT"), ("created_by_line", "INTEGER"), ("parent_goid", "INTEGER"),
        ("labels", "TEXT"), ("is_system", "INTEGER"), ("thread_id", "INTEGER"), ("error", "TEXT"),
    ],
    "frames": [
        ("process_id", "INTEGER"), ("goid", "INTEGER"), ("depth", "INTEGER"),
        ("function", "TEXT"), ("file", "TEXT"), ("line", "INTEGER"), ("pc", "INTEGER"),
        ("inlined", "INTEGER"), ("hidden", "INTEGER"),
    ],
}
_PRIMARY_KEYS = {"meta": "key", "processes": "id"}
FUNCTION_TABLE_KEY = [("process_id", "INTEGER"), ("goid", "INTEGER"), ("depth", "INTEGER")]
ALL_CAPTURED_VIEW = "all_captured_data"
ALL_CAPTURED_COLUMNS = ["table_name", "process_id", "goid", "depth", "column_name", "value"]


class SnapshotError(Exception):
    """A snapshot file is missing, corrupt, foreign or of an unknown schema."""


@dataclass
class FunctionTableDef:
    function: str          # Go symbol, as in the spec
    table: str             # table name
    columns: list[str] = field(default_factory=list)


_q = quote_ident


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _json(v) -> str | None:
    if v is None:
        return None
    if type(v) is int:         # the common scalar: skip the encoder's machinery
        return str(v)
    return _encode(v)


def _exray_version() -> str:
    try:
        from importlib.metadata import version
        return version("exray")
    except Exception:
        return "unknown"


def _create_schema(db: sqlite3.Connection, tables: list[FunctionTableDef]) -> None:
    for name, cols in BUILTIN_TABLES.items():
        parts = [f"{_q(c)} {t}" + (" PRIMARY KEY" if _PRIMARY_KEYS.get(name) == c else "")
                 for c, t in cols]
        db.execute(f"CREATE TABLE {_q(name)} ({', '.join(parts)})")
    for t in tables:
        cols = [f"{_q(c)} {ty}" for c, ty in FUNCTION_TABLE_KEY]
        cols += [f"{_q(c)} TEXT" for c in t.columns]
        cols += [f"{_q('raw_' + c)} TEXT" for c in t.columns]
        cols.append('"_errors" TEXT')
        db.execute(f"CREATE TABLE {_q(t.table)} ({', '.join(cols)})")


def _create_indexes_and_views(db: sqlite3.Connection, tables: list[FunctionTableDef]) -> None:
    db.execute("CREATE INDEX goroutines_by_id ON goroutines (process_id, goid)")
    db.execute("CREATE INDEX frames_by_goroutine ON frames (process_id, goid, depth)")
    db.execute("CREATE INDEX frames_by_function ON frames (function)")
    for t in tables:
        db.execute(f"CREATE INDEX {_q(t.table + '_by_goroutine')} ON {_q(t.table)} (process_id, goid, depth)")
    create_all_captured_view(db, {t.table: t.columns for t in tables})


def create_all_captured_view(db: sqlite3.Connection, columns: dict[str, list[str]]) -> None:
    """(Re)create `all_captured_data` over `columns` (function table -> its value
    columns). server.reports calls it again once extra columns exist."""
    selects = [
        f"SELECT {_sql_str(table)} AS table_name, process_id, goid, depth, "
        f"{_sql_str(c)} AS column_name, {_q(c)} AS value FROM {_q(table)}"
        for table, cols in columns.items() for c in cols
    ]
    if not selects:
        selects = ["SELECT CAST(NULL AS TEXT) AS table_name, CAST(NULL AS INTEGER) AS process_id, "
                   "CAST(NULL AS INTEGER) AS goid, CAST(NULL AS INTEGER) AS depth, "
                   "CAST(NULL AS TEXT) AS column_name, CAST(NULL AS TEXT) AS value WHERE 0"]
    # SQLite caps a compound SELECT at 500 terms: nest groups of them.
    while len(selects) > _COMPOUND_MAX:
        selects = ["SELECT * FROM (" + "\nUNION ALL ".join(selects[i:i + _COMPOUND_MAX]) + ")"
                   for i in range(0, len(selects), _COMPOUND_MAX)]
    db.execute(f"DROP VIEW IF EXISTS {ALL_CAPTURED_VIEW}")
    db.execute(f"CREATE VIEW {ALL_CAPTURED_VIEW} AS " + "\nUNION ALL ".join(selects))


_COMPOUND_MAX = 400


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def write_snapshot(path: str | os.PathLike, processes: list[ProcessRecord],
                   tables: list[FunctionTableDef], spec_text: str | None = None) -> None:
    """Write a complete snapshot to `path` (replaced atomically if it exists).

    `tables` lists every function of the spec, captured or not, so each gets a
    table even when no goroutine was in it. Captures of a function not in
    `tables` are a programming error (ValueError)."""
    path = Path(path)
    by_function = {t.function: t for t in tables}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    # Born 0600: a snapshot holds process memory (values, strings, labels).
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    db = sqlite3.connect(tmp, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA page_size=8192")
        db.execute("PRAGMA cache_size=-65536")
        db.execute("PRAGMA temp_store=MEMORY")
        db.execute("BEGIN")
        _create_schema(db, tables)
        meta = {
            "schema_version": str(SCHEMA_VERSION),
            "exray_version": _exray_version(),
            "created_at": str(time.time_ns()),
            "spec": spec_text,
            "function_tables": json.dumps([{"function": t.function, "table": t.table,
                                            "columns": t.columns} for t in tables]),
        }
        db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        db.executemany("INSERT INTO processes VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", (
            (i, p.host, p.pid, p.exe, p.build_id, p.go_version, p.main_module, p.vcs_revision,
             p.captured_at_ns, p.pause_ns, p.error, _json(p.warnings) if p.warnings else None,
             int(p.truncated), p.load_bias, p.agent, p.clock_offset_ns, p.skew_ns,
             p.pause_start_ns, p.pause_skew_ns)
            for i, p in enumerate(processes, 1)))
        db.executemany("INSERT INTO goroutines VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", (
            (i, g.goid, g.status, g.wait_reason, g.wait_since_ns, g.created_by, g.created_by_file,
             g.created_by_line, g.parent_goid, _json(g.labels) if g.labels else None,
             int(g.is_system), g.thread_id, g.error)
            for i, p in enumerate(processes, 1) for g in p.goroutines))
        db.executemany("INSERT INTO frames VALUES (?,?,?,?,?,?,?,?,?)", (
            (i, g.goid, f.depth, f.function, f.file, f.line, f.pc, int(f.inlined), int(f.hidden))
            for i, p in enumerate(processes, 1) for g in p.goroutines for f in g.frames))
        _insert_captures(db, processes, by_function)
        _create_indexes_and_views(db, tables)
        db.execute("COMMIT")
        db.execute("PRAGMA optimize")
    except BaseException:
        db.close()
        tmp.unlink(missing_ok=True)
        raise
    db.close()
    os.replace(tmp, path)


def _insert_captures(db: sqlite3.Connection, processes: list[ProcessRecord],
                     by_function: dict[str, FunctionTableDef]) -> None:
    rows: dict[str, list[tuple]] = {t.table: [] for t in by_function.values()}
    for i, p in enumerate(processes, 1):
        for g in p.goroutines:
            for c in g.captures:
                t = by_function.get(c.function)
                if t is None:
                    raise ValueError(f"capture for {c.function}, which has no function table")
                vals, raw = c.values, c.raw
                errors = {k: v for k, v in c.errors.items() if v} or None
                rows[t.table].append(
                    (i, g.goid, c.depth,
                     *(_json(vals.get(col)) for col in t.columns),
                     *(_json(raw.get(col, vals.get(col))) for col in t.columns),
                     _json(errors)))
    for t in by_function.values():
        n = 3 + 2 * len(t.columns) + 1
        db.executemany(f"INSERT INTO {_q(t.table)} VALUES ({','.join('?' * n)})", rows[t.table])


# ---------------------------------------------------------------------- reading

def open_snapshot(path: str | os.PathLike, readonly: bool = True, *, limits: SqlLimits = DEFAULTS,
                  cancel: threading.Event | None = None) -> sqlite3.Connection:
    """Open a snapshot, checking it is one. Raises SnapshotError with a clear message.

    Read-only (the default) is how every reader opens a snapshot, which may
    come from anyone: nothing run on the connection can write (server.sqlguard),
    each statement and the whole session run under `limits` (and stop when
    `cancel` is set), and the file is checked (check_snapshot) before it is
    trusted. readonly=False is for the writer that just made the file."""
    p = Path(path)
    name = str(path)
    try:
        with open(p, "rb") as f:
            head = f.read(100)                 # SQLite's file header
    except FileNotFoundError:
        raise SnapshotError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise SnapshotError(f"{name} is a directory, not an Ex-Ray snapshot") from None
    except OSError as e:
        raise SnapshotError(f"{name}: {e.strerror or e}") from None
    if head[:len(SQLITE_MAGIC)] != SQLITE_MAGIC:
        raise SnapshotError(f"{name} is not an Ex-Ray snapshot (not a SQLite database)")
    if readonly and (len(head) < 100 or head[56:60] != b"\0\0\0\1"):   # Ex-Ray writes UTF-8 text
        raise SnapshotError(f"{name} is damaged (its header is cut short or says text is not UTF-8): "
                            "it can't be read; take the snapshot again")
    db = None
    try:
        if readonly:
            db = connect_read_only(p, limits, cancel)
            quick_check(db, name, p)         # damaged pages first: nothing below reads them
        else:
            db = sqlite3.connect(p.resolve().as_uri(), uri=True)
        has_meta = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:
            db.close()
            raise SnapshotError(f"{name} is not an Ex-Ray snapshot (no meta table)")
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    except (*SQL_ERRORS, SnapshotError) as e:
        if db is not None:
            db.close()
        if isinstance(e, SnapshotError):
            raise
        why = describe(e, db)
        if is_damage(e):
            raise SnapshotError(f"{name} is damaged ({why}): it can't be read; take the snapshot again") from None
        raise SnapshotError(f"{name} is not an Ex-Ray snapshot ({why})") from None
    if row is None:
        db.close()
        raise SnapshotError(f"{name} is not an Ex-Ray snapshot (no schema_version in meta)")
    try:
        version = int(row[0])
    except (TypeError, ValueError):
        version = -1
    if version < 1 or version > SCHEMA_VERSION:
        db.close()
        raise SnapshotError(f"{name} has snapshot schema version {row[0]}; this Ex-Ray reads "
                            f"versions up to {SCHEMA_VERSION} (upgrade Ex-Ray)")
    if readonly:
        try:
            check_snapshot(db, name, p)
        except BaseException:
            db.close()
            raise
    return db


# Columns every snapshot since schema 1 has: readers may rely on them. Later
# versions only add columns (to `processes`).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "meta": ("key", "value"),
    "processes": ("id", "host", "pid", "exe", "build_id", "go_version", "main_module", "vcs_revision",
                  "captured_at", "pause_ns", "error", "warnings", "truncated"),
    "goroutines": tuple(c for c, _ in BUILTIN_TABLES["goroutines"]),
    "frames": tuple(c for c, _ in BUILTIN_TABLES["frames"]),
}
_CHECKED: dict[tuple, None] = {}      # files that passed check_snapshot: (path, inode, size, mtime)
_CHECKED_MAX = 64


def check_snapshot(db: sqlite3.Connection, name: str, path: str | os.PathLike | None = None) -> None:
    """Trust a snapshot file only once it is checked, under the connection's
    time budget: after SQLite's quick_check (quick_check below), that the
    built-in tables, the function tables `meta` lists and Ex-Ray's own tables
    are plain tables (not views that could loop, virtual or generated
    columns) with the columns readers use. Raises SnapshotError.
    A file already checked unchanged (same inode, size and mtime) is not checked again."""
    key = _file_key(path)
    if key is not None and key in _CHECKED:
        return
    try:                                    # open_snapshot ran quick_check already
        kinds = {n: (t, sql or "") for t, n, sql in db.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE type IN ('table', 'view')")}
        tables = dict(REQUIRED_COLUMNS)
        try:
            listed = json.loads(dict(db.execute("SELECT key, value FROM meta")).get("function_tables") or "[]")
            tables.update({str(d["table"]): ("process_id", "goid", "depth") for d in listed})
        except (ValueError, TypeError, KeyError):
            raise SnapshotError(f"{name} is damaged (meta's function_tables is not the list it should be): "
                                "take the snapshot again") from None
        tables.update({t: () for t in ("exray_columns", "exray_links", "exray_link_defs",
                                       "exray_report_errors") if t in kinds})
        for table, required in tables.items():
            _check_table(db, name, table, required, kinds.get(table))
    except SQL_ERRORS as e:
        why = describe(e, db)
        if is_damage(e):
            raise SnapshotError(f"{name} is damaged ({why}): it can't be read; take the snapshot again") from None
        raise SnapshotError(f"{name}: cannot check the snapshot: {why}") from None
    if key is not None:
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.pop(next(iter(_CHECKED)))
        _CHECKED[key] = None


def quick_check(db: sqlite3.Connection, name: str, path: str | os.PathLike | None = None) -> None:
    """SQLite's quick_check (pages, records, indexes), once per unchanged file."""
    key = _file_key(path)
    if key is not None and key in _CHECKED:
        return
    problems = [r[0] for r in db.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise SnapshotError(f"{name} is damaged (SQLite's quick_check: {'; '.join(map(str, problems))}): "
                            "it can't be trusted; take the snapshot again")


def _check_table(db: sqlite3.Connection, name: str, table: str, required: tuple[str, ...],
                 kind: tuple[str, str] | None) -> None:
    if kind is None:
        raise SnapshotError(f"{name} is not a complete Ex-Ray snapshot: it has no table {table}")
    if kind[0] != "table" or kind[1].lstrip().upper().startswith("CREATE VIRTUAL"):
        what = "a view" if kind[0] == "view" else "a virtual table"
        raise SnapshotError(f"{name} is not a snapshot Ex-Ray wrote: {table} is {what}, not a table; "
                            "it may not be safe to read")
    cols = {r[1]: r[6] for r in db.execute(f"PRAGMA table_xinfo({_q(table)})")}
    generated = [c for c, hidden in cols.items() if hidden in (2, 3)]
    if generated:
        raise SnapshotError(f"{name} is not a snapshot Ex-Ray wrote: {table}.{generated[0]} is a generated "
                            "column; it may not be safe to read")
    missing = [c for c in required if c not in cols]
    if missing:
        raise SnapshotError(f"{name} is not a complete Ex-Ray snapshot: table {table} has no column "
                            f"{missing[0]}")


def _file_key(path: str | os.PathLike | None) -> tuple | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def reading(path: str | os.PathLike, *, limits: SqlLimits = DEFAULTS, cancel: threading.Event | None = None):
    """`with reading(snap) as db:` a checked, read-only, bounded connection;
    an SQLite error inside the block (a damaged page, a bound hit) becomes a
    SnapshotError that names the file and the bound, never a traceback."""
    db = open_snapshot(path, limits=limits, cancel=cancel)
    try:
        yield db
    except SQL_ERRORS as e:
        raise SnapshotError(read_error(path, e, db)) from None
    finally:
        db.close()


def read_error(path: str | os.PathLike, e: BaseException, db: sqlite3.Connection | None) -> str:
    """The message for an SQLite error while reading `path`."""
    why = describe(e, db)
    if is_damage(e):
        return f"{path} is damaged ({why}): it can't be read; take the snapshot again"
    return f"{path}: {why}"


def snapshot_meta(db: sqlite3.Connection) -> dict[str, str | None]:
    return dict(db.execute("SELECT key, value FROM meta").fetchall())


def function_tables(db: sqlite3.Connection, extras: bool = False) -> list[FunctionTableDef]:
    """The snapshot's function tables with their captured columns, and with
    `extras` the spec's extra columns materialized into them too."""
    raw = snapshot_meta(db).get("function_tables") or "[]"
    tables = [FunctionTableDef(d["function"], d["table"], list(d["columns"])) for d in json.loads(raw)]
    if extras and db.execute("SELECT 1 FROM sqlite_master WHERE name='exray_columns'").fetchone():
        added: dict[str, list[str]] = {}
        for table, column in db.execute("SELECT table_name, column_name FROM exray_columns "
                                        "WHERE source = 'extra' ORDER BY rowid"):
            added.setdefault(table, []).append(column)
        for t in tables:
            t.columns += added.get(t.table, [])
    return tables


def dict_rows(db: sqlite3.Connection, sql: str, params: Iterable = ()) -> list[dict]:
    """Rows of a query as dicts keyed by column name."""
    cur = db.execute(sql, tuple(params))
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def read_goroutines(db: sqlite3.Connection) -> tuple[list[dict], dict[int, list[dict]],
                                                     dict[tuple[int, int], list[dict]]]:
    """(processes, goroutines by process id, frames by (process id, goid), innermost first):
    what the grouped-stacks views (`exray goroutines`, the editor's stacks document) show."""
    procs = dict_rows(db, "SELECT * FROM processes ORDER BY id")
    for p in procs:
        p["warnings"] = json.loads(p["warnings"]) if p.get("warnings") else []
    gors: dict[int, list[dict]] = {}
    for g in dict_rows(db, "SELECT * FROM goroutines ORDER BY process_id, goid"):
        gors.setdefault(g["process_id"], []).append(g)
    frames: dict[tuple[int, int], list[dict]] = {}
    for pid, goid, fn, file, line, hidden in db.execute(
            "SELECT process_id, goid, function, file, line, hidden FROM frames "
            "ORDER BY process_id, goid, depth"):
        frames.setdefault((pid, goid), []).append({"function": fn, "file": file, "line": line,
                                                   "hidden": hidden})
    return procs, gors, frames


def iter_rows(db: sqlite3.Connection, sql: str, params: Iterable = ()) -> tuple[list[str], list[tuple]]:
    """Run one statement; returns (column names, rows)."""
    cur = db.execute(sql, tuple(params))
    cols = [d[0] for d in cur.description] if cur.description else []
    return cols, cur.fetchall()
