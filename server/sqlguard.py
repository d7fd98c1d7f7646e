"""One resource policy for SQL from a spec or a snapshot file (docs/security.md).

A spec's reports and a snapshot's views are untrusted SQL, and a snapshot file
is untrusted input. Everything that runs them goes through here:

- `Budget`: the time budget of one statement and of a whole session (all the
  spec's SQL of one snapshot, or one read of a snapshot), enforced by
  SQLite's progress handler, plus a cancel event (the editor's
  $/cancelRequest);
- `heap_limit`: SQLite's hard heap limit (its soft limit at half) while
  guarded SQL runs;
- `connect_read_only`: a snapshot opened so nothing can write: a `mode=ro`
  URI, `PRAGMA query_only`, and an authorizer that denies ATTACH (which
  VACUUM INTO uses), writes, PRAGMAs that set something, and load_extension;
- `describe`: the message for an error raised under these bounds, naming
  the bound (`limits.statement_seconds` ...), never a traceback;
- `quote_ident`: the one SQL identifier quoting.

The bounds themselves are probe_compiler.sql_limits.SqlLimits.
"""
from __future__ import annotations

import contextlib
import ctypes
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterable

from probe_compiler.sql_limits import DEFAULTS, MiB, SqlLimits, text

# What running SQL on an untrusted file may raise: SQLite's errors, its
# out-of-memory (the heap limit), and text that is not UTF-8.
SQL_ERRORS = (sqlite3.Error, MemoryError, UnicodeDecodeError)

# Progress handler granularity: SQLite VM instructions between two checks of
# the clock (a few microseconds of work).
PROGRESS_STEPS = 5_000


def quote_ident(name: str) -> str:
    """An SQL identifier, quoted ("a""b" for a"b): safe for any table or column name."""
    return '"' + str(name).replace('"', '""') + '"'


# ------------------------------------------------------------------ time

class Budget:
    """Time and cancellation for one connection, checked by SQLite's progress
    handler: each statement gets `statement_s` (from `start_statement`), the
    whole session `total_s` (from creation)."""

    def __init__(self, statement_s: float, total_s: float, cancel: threading.Event | None = None,
                 what: str = "limits"):
        now = time.monotonic()
        self.statement_s, self.total_s, self.cancel = statement_s, total_s, cancel
        self.total_deadline = now + total_s
        self.deadline = min(now + statement_s, self.total_deadline)
        self.hit: str | None = None        # the bound that interrupted, once one has
        self.what = what

    def start_statement(self) -> None:
        self.deadline = min(time.monotonic() + self.statement_s, self.total_deadline)

    def out_of_time(self) -> bool:
        return time.monotonic() > self.total_deadline

    def __call__(self) -> int:
        if self.cancel is not None and self.cancel.is_set():
            self.hit = "cancelled"
            return 1
        now = time.monotonic()
        if now > self.deadline:
            if now > self.total_deadline:
                self.hit = f"ran out of {self.what}.total_seconds ({text(self.total_s)} s for all of it)"
            else:
                self.hit = f"ran longer than {text(self.statement_s)} s ({self.what}.statement_seconds)"
            return 1
        return 0

    def install(self, db: sqlite3.Connection) -> None:
        db.set_progress_handler(self, PROGRESS_STEPS)


# ------------------------------------------------------------------ memory

def _heap_limit_function():
    """sqlite3_hard_heap_limit64 of the SQLite Python's sqlite3 module uses,
    or None (then PRAGMA hard_heap_limit, which can only lower it, is used)."""
    try:
        import _sqlite3
        f = ctypes.CDLL(_sqlite3.__file__).sqlite3_hard_heap_limit64
        f.restype, f.argtypes = ctypes.c_int64, [ctypes.c_int64]
        soft = ctypes.CDLL(_sqlite3.__file__).sqlite3_soft_heap_limit64
        soft.restype, soft.argtypes = ctypes.c_int64, [ctypes.c_int64]
        return f, soft
    except (OSError, AttributeError, ImportError):
        return None


class _HeapLimits:
    """SQLite's heap limit is one value per process: while guarded sessions
    run it is the largest of their limits (one session can't starve another
    of what it was promised), and none when none runs (the snapshot writer
    is not guarded: it writes what the capture budgets already bounded)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active: Counter = Counter()
        self.funcs = _heap_limit_function()

    def _apply(self) -> None:
        limit = max(self.active) if self.active else 0
        if self.funcs is not None:
            hard, soft = self.funcs
            hard(limit)
            soft(limit // 2)
        elif limit:
            db = sqlite3.connect(":memory:")
            db.execute(f"PRAGMA hard_heap_limit = {int(limit)}")    # lowers only: the best it can do
            db.execute(f"PRAGMA soft_heap_limit = {int(limit) // 2}")
            db.close()

    def enter(self, limit: int) -> None:
        with self.lock:
            self.active[limit] += 1
            self._apply()

    def leave(self, limit: int) -> None:
        with self.lock:
            self.active[limit] -= 1
            if self.active[limit] <= 0:
                del self.active[limit]
            self._apply()


HEAP = _HeapLimits()


@contextlib.contextmanager
def heap_limit(limit_bytes: int):
    HEAP.enter(limit_bytes)
    try:
        yield
    finally:
        HEAP.leave(limit_bytes)


# ------------------------------------------------------------------ reading

_READ_ACTIONS = {sqlite3.SQLITE_READ, sqlite3.SQLITE_SELECT, getattr(sqlite3, "SQLITE_RECURSIVE", 33),
                 sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT}
_SCHEMA_TABLES = {"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"}
# PRAGMAs a read may run: the ones that describe the schema. With an argument
# only those whose argument names a table or index (PRAGMA table_info(t));
# any other PRAGMA with a value sets something and is denied.
_PRAGMAS_READ = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
                 "foreign_key_list", "collation_list", "function_list", "module_list",
                 "pragma_list", "database_list", "table_list", "compile_options", "page_size",
                 "page_count", "encoding", "user_version", "schema_version", "application_id",
                 "freelist_count", "data_version", "query_only", "hard_heap_limit", "soft_heap_limit",
                 "quick_check", "integrity_check"}
_PRAGMAS_WITH_ARG = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
                     "foreign_key_list", "table_list", "quick_check", "integrity_check"}
DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}


class ReadAuthorizer:
    """Reads only. Remembers the first denial for the message."""

    def __init__(self):
        self.denied: str | None = None

    def __call__(self, action, arg1, arg2, dbname, source):
        ok = sqlite3.SQLITE_OK
        if action in _READ_ACTIONS:
            return ok
        if action == sqlite3.SQLITE_FUNCTION:
            if (arg2 or "").lower() not in DENIED_FUNCTIONS:
                return ok
            return self._deny(f"the function {arg2}()")
        if action == sqlite3.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name in _PRAGMAS_READ and (arg2 is None or name in _PRAGMAS_WITH_ARG):
                return ok
            return self._deny(f"PRAGMA {arg1}" + (f" = {arg2}" if arg2 is not None else ""))
        # Declaring an eponymous virtual table (json_each, pragma_table_info) on
        # first use reports an UPDATE of the schema table; with the file opened
        # read-only and query_only set nothing can be written there.
        if action == sqlite3.SQLITE_UPDATE and arg1 in _SCHEMA_TABLES:
            return ok
        if action == sqlite3.SQLITE_ATTACH:
            return self._deny("ATTACH (or VACUUM INTO)")
        return self._deny(_ACTION_NAMES.get(action, f"action {action}") + (f" on {arg1}" if arg1 else ""))

    def _deny(self, what: str) -> int:
        if self.denied is None:
            self.denied = what
        return sqlite3.SQLITE_DENY


_ACTION_NAMES = {getattr(sqlite3, "SQLITE_" + n): n.replace("_", " ") for n in (
    "CREATE_INDEX", "CREATE_TABLE", "CREATE_TEMP_INDEX", "CREATE_TEMP_TABLE", "CREATE_TEMP_TRIGGER",
    "CREATE_TEMP_VIEW", "CREATE_TRIGGER", "CREATE_VIEW", "DELETE", "DROP_INDEX", "DROP_TABLE",
    "DROP_TEMP_INDEX", "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER", "DROP_TEMP_VIEW", "DROP_TRIGGER",
    "DROP_VIEW", "INSERT", "UPDATE", "DETACH", "ALTER_TABLE", "REINDEX", "ANALYZE", "CREATE_VTABLE",
    "DROP_VTABLE") if hasattr(sqlite3, "SQLITE_" + n)}


class GuardedConnection(sqlite3.Connection):
    """A connection whose every execute() starts its statement's time budget.
    `budget`, `authorizer` and `limits` are set by connect_read_only."""

    budget: Budget | None = None
    authorizer: ReadAuthorizer | None = None
    limits: SqlLimits = DEFAULTS
    read_only: bool = False
    _heap: int = 0

    def execute(self, sql: str, params: Iterable = ()):     # type: ignore[override]
        if self.budget is not None:
            self.budget.start_statement()
        return super().execute(sql, params)

    def executemany(self, sql: str, params):                # type: ignore[override]
        if self.budget is not None:
            self.budget.start_statement()
        return super().executemany(sql, params)

    def close(self) -> None:
        heap, self._heap = self._heap, 0
        try:
            super().close()
        finally:
            if heap:
                HEAP.leave(heap)


def value_limit(limits: SqlLimits) -> int:
    """SQLITE_LIMIT_LENGTH: the longest string or blob, table_mb (SQLite itself stops at 1e9 bytes)."""
    return min(limits.table_bytes, 1_000_000_000)


def connect_read_only(path: str | Path, limits: SqlLimits = DEFAULTS,
                      cancel: threading.Event | None = None) -> GuardedConnection:
    """Open a snapshot file so that nothing run on it can write anything, under
    `limits` (time per statement and per session, memory, value length).
    sqlite3 errors from the open itself propagate (the caller says which file)."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    db = sqlite3.connect(uri, uri=True, factory=GuardedConnection)
    assert isinstance(db, GuardedConnection)
    try:
        db.execute("PRAGMA query_only = 1")
        db.execute("PRAGMA temp_store = MEMORY")       # sorts and temp B-trees count in the heap limit
        db.execute("PRAGMA trusted_schema = OFF")      # a snapshot's views may not call risky functions
        db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, value_limit(limits))
        db.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    except BaseException:
        db.close()
        raise
    db.limits, db.read_only = limits, True
    db.budget = Budget(limits.statement_seconds, limits.total_seconds, cancel)
    db.budget.install(db)
    db.authorizer = ReadAuthorizer()
    db.set_authorizer(db.authorizer)
    db._heap = limits.memory_bytes
    HEAP.enter(db._heap)
    return db


def check_statement(db: sqlite3.Connection, sql: str) -> None:
    """Refuse a user's statement that would do anything but read, before it
    runs: VACUUM (which the authorizer never sees) and, through the
    authorizer, everything else. Raises sqlite3.DatabaseError."""
    if sql.lstrip()[:7].upper() == "EXPLAIN":
        return                            # compiles only; nothing runs
    try:
        ops = {row[1] for row in db.execute("EXPLAIN " + sql)}
    except sqlite3.OperationalError as e:
        if "syntax error" not in str(e) or "EXPLAIN" not in sql.upper():
            raise
        return                            # `/* */ EXPLAIN ...`: running it compiles only
    if "Vacuum" in ops:
        raise sqlite3.DatabaseError("not allowed: VACUUM (a snapshot is read-only here)")


def fetch(cur: sqlite3.Cursor, max_rows: int) -> tuple[list[tuple], bool]:
    """At most `max_rows` rows of a cursor; (rows, whether more were left)."""
    rows: list[tuple] = []
    while len(rows) < max_rows:
        batch = cur.fetchmany(min(1000, max_rows - len(rows)))
        if not batch:
            return rows, False
        rows += batch
    return rows, cur.fetchone() is not None


# ------------------------------------------------------------------ messages

def describe(e: BaseException, db=None, what: str = "limits") -> str:
    """The message for an error raised while guarded SQL ran: the bound it
    hit (by its spec key), the denial, or SQLite's own words. `db` is the
    GuardedConnection (or anything with `budget`, `limits`, `authorizer`)."""
    budget = getattr(db, "budget", None)
    auth = getattr(db, "authorizer", None)
    limits: SqlLimits = getattr(db, "limits", None) or DEFAULTS
    msg = str(e)
    if isinstance(e, UnicodeDecodeError):
        return f"damaged text ({e.reason} at byte {e.start})"
    if isinstance(e, MemoryError) or "out of memory" in msg:
        return (f"needed more than {text(limits.memory_mb)} MiB of memory ({what}.memory_mb)")
    if budget is not None and budget.hit and "interrupt" in msg:
        return budget.hit
    if "string or blob too big" in msg:
        return f"made a value longer than {text(limits.table_mb)} MiB ({what}.table_mb)"
    if auth is not None and auth.denied and "not authorized" in msg:
        return f"not allowed: {auth.denied} (a snapshot is read-only here)"
    if "Could not decode to UTF-8" in msg:
        return f"damaged text ({msg})"
    return msg


def is_damage(e: BaseException) -> bool:
    """Whether an sqlite3 error says the file itself is broken."""
    msg = str(e).lower()
    if isinstance(e, UnicodeDecodeError):
        return True
    return isinstance(e, sqlite3.DatabaseError) and any(s in msg for s in (
        "malformed", "not a database", "could not decode", "disk i/o error", "file is not a database",
        "database corrupt", "unsupported file format"))


__all__ = ["SQL_ERRORS", "Budget", "GuardedConnection", "ReadAuthorizer", "check_statement", "connect_read_only",
           "describe", "fetch", "heap_limit", "is_damage", "quote_ident", "MiB"]
