"""Following links: the rows tied to one row of a snapshot table, with the
goroutine and frame each of them stands for.

Links are materialized by server.reports into `exray_links` (both directions)
and `exray_link_defs`; `linked_rows` reads them, `cmd_links` is `exray links
SNAP TABLE ROWID`. The two sides may come from different processes, of
different binaries: a client goroutine in one, the server goroutine serving
its request in another (each goroutine is named with its process's pid and
binary). Nothing here assumes one binary: rows carry process_id.
"""
from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass

from server.display import display_types, format_value
from server.reports import LinkError, key_sql, q
from server.store import reading

VALUE_WIDTH = 100      # the CLI cuts longer values (JSON of big structs) to this


@dataclass(frozen=True)
class Goroutine:
    process_id: int
    pid: int | None
    goid: int
    status: str | None
    wait_reason: str | None
    exe: str | None = None      # its process's binary: a snapshot may span several


@dataclass(frozen=True)
class Frame:
    depth: int
    function: str
    file: str
    line: int


@dataclass(frozen=True)
class LinkedRow:
    link: str
    description: str
    direction: str              # 'forward': the asked row is the link's left side; 'reverse': its right
    table: str                  # the other row's table
    rowid: int
    values: dict                # the other row, column -> value
    goroutine: Goroutine | None  # when the other row names one (process_id, goid)
    frame: Frame | None         # its frame at `depth`, else its innermost visible frame


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def row_values(db: sqlite3.Connection, table: str, rowid: int) -> dict:
    """One row of `table` as a dict; LinkError when the table or row is not there."""
    if not _has_table(db, table):
        tables = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'exray_%' "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        raise LinkError(f"no table {table!r} in this snapshot (tables: {', '.join(tables)})")
    cur = db.execute(f"SELECT * FROM {q(table)} WHERE rowid = ?", (rowid,))
    row = cur.fetchone()
    if row is None:
        raise LinkError(f"table {table} has no row with rowid {rowid}")
    return dict(zip((d[0] for d in cur.description), row))


def goroutine_of(db: sqlite3.Connection, values: dict) -> tuple[Goroutine | None, Frame | None]:
    """The goroutine a row stands for (its process_id and goid columns) and its frame."""
    pid_, goid = values.get("process_id"), values.get("goid")
    if not isinstance(pid_, int) or not isinstance(goid, int):
        return None, None
    g = db.execute("SELECT p.pid, g.status, g.wait_reason, p.exe FROM processes p "
                   "LEFT JOIN goroutines g ON g.process_id = p.id AND g.goid = ? WHERE p.id = ?",
                   (goid, pid_)).fetchone()
    goroutine = Goroutine(pid_, g[0], goid, g[1], g[2], g[3] or None) if g else \
        Goroutine(pid_, None, goid, None, None)
    depth = values.get("depth")
    if isinstance(depth, int):
        f = db.execute("SELECT depth, function, file, line FROM frames "
                       "WHERE process_id = ? AND goid = ? AND depth = ?", (pid_, goid, depth)).fetchone()
    else:                  # a goroutine-level row: where it is, as Go's traceback would show it
        f = db.execute("SELECT depth, function, file, line FROM frames WHERE process_id = ? AND goid = ? "
                       "ORDER BY hidden, depth LIMIT 1", (pid_, goid)).fetchone()
    return goroutine, Frame(*f) if f else None


def user_frame(db: sqlite3.Connection, g: Goroutine) -> Frame | None:
    """The goroutine's innermost frame of the user's own code: shown by Go's
    traceback and not in the standard library (whose package paths have no
    dot in their first element, as `go` itself tells them apart)."""
    for depth, function, file, line in db.execute(
            "SELECT depth, function, file, line FROM frames WHERE process_id = ? AND goid = ? "
            "AND NOT hidden ORDER BY depth", (g.process_id, g.goid)):
        first = function.split("/", 1)[0] if "/" in function else function.split(".", 1)[0]
        if first == "main" or "." in first:
            return Frame(depth, function, file, line)
    return None


@dataclass(frozen=True)
class Unlinked:
    link: str
    columns: tuple[str, ...]    # this row's key columns that are NULL
    why: dict                   # column -> its `_errors` note, where the row has one


def unlinked(db: sqlite3.Connection, table: str, rowid: int, values: dict) -> list[Unlinked]:
    """The links this row can't take part in because its side of the key is NULL."""
    if not _has_table(db, "exray_link_defs"):
        return []
    errors = json.loads(values["_errors"]) if isinstance(values.get("_errors"), str) else {}
    out = []
    for name, lt, lcols, rt, rcols in db.execute(
            "SELECT name, left_table, left_columns, right_table, right_columns FROM exray_link_defs "
            "WHERE left_table = ? OR right_table = ? ORDER BY name", (table, table)):
        sides = [json.loads(c) for t, c in ((lt, lcols), (rt, rcols)) if t == table]
        for cols in sides:
            keys = db.execute(f"SELECT {', '.join(key_sql(db, table, c) for c in cols)} "
                              f"FROM {q(table)} WHERE rowid = ?", (rowid,)).fetchone()
            null = tuple(c for c, k in zip(cols, keys) if k is None)
            if null:
                out.append(Unlinked(name, null, {c: errors[c] for c in null if c in errors}))
                break
    return out


def linked_rows(db: sqlite3.Connection, table: str, rowid: int) -> list[LinkedRow]:
    """Every row linked to row `rowid` of `table`, by every link, in both directions."""
    row_values(db, table, rowid)               # raises for an unknown table or row
    if not _has_table(db, "exray_links"):
        return []                              # a snapshot taken without links
    found = db.execute(
        "SELECT l.link, coalesce(d.description, ''), l.to_table, l.to_rowid, "
        "d.left_table, d.left_columns, d.right_table, d.right_columns "
        "FROM exray_links l LEFT JOIN exray_link_defs d ON d.name = l.link "
        "WHERE l.from_table = ? AND l.from_rowid = ? ORDER BY l.link, l.to_table, l.to_rowid",
        (table, rowid)).fetchall()
    out = []
    for link, desc, to_table, to_rowid, lt, lcols, rt, rcols in found:
        values = row_values(db, to_table, to_rowid)
        direction = _direction(db, (table, rowid), (to_table, to_rowid), lt, lcols, rt, rcols)
        g, f = goroutine_of(db, values)
        out.append(LinkedRow(link, desc, direction, to_table, to_rowid, values, g, f))
    return out


def _direction(db, this, other, lt, lcols, rt, rcols) -> str:
    if lt != rt:
        return "forward" if this[0] == lt else "reverse"
    # Both ends in one table: forward when this row's left key is the other's right key.
    on = " AND ".join(f"{key_sql(db, lt, x, 'a')} = {key_sql(db, lt, y, 'b')}"
                      for x, y in zip(json.loads(lcols), json.loads(rcols)))
    hit = db.execute(f"SELECT 1 FROM {q(lt)} a, {q(lt)} b WHERE a.rowid = ? AND b.rowid = ? AND {on}",
                     (this[1], other[1])).fetchone()
    return "forward" if hit else "reverse"


# ------------------------------------------------------------------ the command

def cmd_links(args) -> int:
    with reading(args.snapshot) as db:
        values = row_values(db, args.table, args.rowid)
        rows = linked_rows(db, args.table, args.rowid)
        shown = display_types(db)
        print(f"{args.table} #{args.rowid}")
        _print_row(args.table, values, db, shown, indent="  ")
        if not rows:
            print("no linked rows")
        for u in unlinked(db, args.table, args.rowid, values):
            why = "; ".join(f"{c}: {w}" for c, w in u.why.items())
            print(f"not linked by {u.link}: its key {', '.join(u.columns)} is NULL"
                  + (f" ({why})" if why else ""))
        for r in rows:
            arrow = "->" if r.direction == "forward" else "<-"
            desc = f": {r.description}" if r.description else ""
            print(f"\n{arrow} {r.link}{desc}")
            print(f"   {r.table} #{r.rowid}")
            _print_row(r.table, r.values, db, shown, indent="     ")
    return 0


def _print_row(table: str, values: dict, db, shown: dict, indent: str) -> None:
    for col, v in values.items():
        if col.startswith("raw_") or (col == "_errors" and v is None):
            continue               # raw twins repeat the value with addresses: noise here
        text = format_value(v, shown.get((table, col)))
        if len(text) > VALUE_WIDTH:
            text = text[:VALUE_WIDTH - 1] + "…"
        print(f"{indent}{col} = {text}")
    g, f = goroutine_of(db, values)
    if g:
        state = g.status or "gone"
        if g.wait_reason:
            state += f", {g.wait_reason}"
        exe = f" of {os.path.basename(g.exe)}" if g.exe else ""  # which service, when links cross binaries
        print(f"{indent}goroutine {g.goid} [{state}] in process {g.process_id} (pid {g.pid}){exe}")
    if f:
        print(f"{indent}  {f.function}\n{indent}      {f.file}:{f.line}")
    mine = user_frame(db, g) if g else None
    if mine and (f is None or mine.depth != f.depth):   # where the user's code waits
        print(f"{indent}  in the user's code: {mine.function}\n{indent}      {mine.file}:{mine.line}")
