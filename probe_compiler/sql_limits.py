"""Bounds on SQL that comes from a spec or a snapshot file (docs/security.md).

One value, passed down: `SqlLimits` says how long, how big and how hungry the
SQL of extra columns, reports, links and every query on a snapshot may be.
`DEFAULTS` hold when a spec says nothing; a spec's `limits:` may lower or raise
them, never past `CEILINGS` (a committed spec is untrusted input, so the
ceilings are in the code, not in the spec). server/sqlguard.py enforces them.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

MiB = 1 << 20


@dataclass(frozen=True)
class SqlLimits:
    # One statement: a report, an extra column's UPDATE, a link, a query.
    # SQLite's progress handler interrupts it when the time is up.
    statement_seconds: float = 30.0
    # All the extra columns, reports and links of one snapshot together: a
    # spec of many slow reports can't hold a snapshot for statements x limit.
    total_seconds: float = 120.0
    # Rows of one derived table (report); a query's result shown by the CLI
    # or the editor stops there too.
    table_rows: int = 1_000_000
    # Bytes one report or one extra column may add to the snapshot file, and
    # the longest single value (SQLite's SQLITE_LIMIT_LENGTH): a randomblob
    # or group_concat bomb fails here instead of filling the disk.
    table_mb: int = 256
    # The whole snapshot file once materialized (PRAGMA max_page_count).
    snapshot_mb: int = 4096
    # SQLite's heap while SQL runs (hard_heap_limit; the soft limit is half):
    # a sort or group_concat that would take more fails with "out of memory".
    memory_mb: int = 512

    def with_(self, **kw) -> "SqlLimits":
        return replace(self, **kw)

    @property
    def table_bytes(self) -> int:
        return self.table_mb * MiB

    @property
    def snapshot_bytes(self) -> int:
        return self.snapshot_mb * MiB

    @property
    def memory_bytes(self) -> int:
        return self.memory_mb * MiB


DEFAULTS = SqlLimits()
# What no spec can raise a bound past.
CEILINGS = SqlLimits(statement_seconds=300.0, total_seconds=900.0, table_rows=20_000_000,
                     table_mb=2048, snapshot_mb=32768, memory_mb=2048)

# Why each bound exists, for the JSON Schema and the docs (keys as in the spec).
DOCS = {
    "statement_seconds": "seconds one statement (report, extra column, link, query) may run",
    "total_seconds": "seconds all extra columns, reports and links of a snapshot may run together",
    "table_rows": "rows one report may have",
    "table_mb": "MiB one report or extra column may add to the snapshot file (and the longest value)",
    "snapshot_mb": "MiB the snapshot file may reach with its reports",
    "memory_mb": "MiB of SQLite heap while the spec's SQL runs",
}


def key_names() -> list[str]:
    return [f.name for f in fields(SqlLimits)]


def is_integer_key(name: str) -> bool:
    return not name.endswith("_seconds")


def text(v: float) -> str:
    """A bound as people read it: 1,000,000 (rows), 2.5 (seconds)."""
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"
