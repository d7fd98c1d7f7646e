"""Virtual documents on `exray:` URIs, rendered from the current snapshot.

    exray:/snapshot/overview             processes, goroutine states, tables, links
    exray:/snapshot/stacks[?function=F]  grouped stacks, like `exray goroutines`
    exray:/goroutine/<process_id>/<goid> its frames, their captured values and linked rows
    exray:/table/<name>                  a function table or derived table
    exray:/query/<id>                    the result of an SQL query run by command

`render(uri, ...)` returns a `Doc`: the text and its links (line, start,
end, target). Frame lines link to their workspace file (`file:///…#L61`);
linked rows and goroutines link to the `exray:` URI of the other side.
Rendering opens the snapshot and may take a while: call it off the event loop.
"""
from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from server import format as fmt
from server.links import linked_rows
from server.sqlguard import SQL_ERRORS, check_statement, describe, fetch, quote_ident as _q
from server.store import (SnapshotError, dict_rows, function_tables, open_snapshot, read_error, read_goroutines,
                          snapshot_meta)

from .render import STALE, cell_text, is_stale, row_errors

SCHEME = "exray"
MAX_ROWS = 2000          # rows of a table or query shown in a document
CELL_WIDTH = 60


class DocumentError(Exception):
    """An exray: URI that names nothing in this snapshot."""


@dataclass
class Doc:
    text: str = ""
    links: list[tuple[int, int, int, str]] = field(default_factory=list)  # line, start, end, target

    def add(self, line: str, target: str | None = None, start: int = 0, end: int | None = None) -> None:
        n = self.text.count("\n")
        if target:
            self.links.append((n, start, len(line) if end is None else end, target))
        self.text += line + "\n"

    def link_last(self, start: int, end: int, target: str) -> None:
        self.links.append((self.text.count("\n") - 1, start, end, target))


# ------------------------------------------------------------------------ URIs

def goroutine_uri(process_id: int, goid: int) -> str:
    return f"{SCHEME}:/goroutine/{process_id}/{goid}"


def table_uri(name: str) -> str:
    return f"{SCHEME}:/table/{quote(name, safe='')}"


def stacks_uri(function: str | None = None) -> str:
    return f"{SCHEME}:/snapshot/stacks" + (f"?function={quote(function, safe='')}" if function else "")


OVERVIEW_URI = f"{SCHEME}:/snapshot/overview"


def query_uri(n: int) -> str:
    return f"{SCHEME}:/query/{n}"


def file_target(path: str, line: int | None) -> str:
    uri = Path(path).as_uri()
    return f"{uri}#L{line}" if line else uri


def is_exray(uri: str) -> bool:
    return uri.startswith(SCHEME + ":")


# -------------------------------------------------------------------- render

def render(uri: str, snapshot: str, resolve, queries: dict[int, str], cancel=None) -> Doc:
    """`resolve(function, file)` -> workspace path or None. The snapshot is read
    under the read bounds (server.sqlguard); setting the threading.Event
    `cancel` stops a running query at SQLite's next progress check."""
    parts = urlsplit(uri)
    if parts.scheme != SCHEME:
        raise DocumentError(f"not an Ex-Ray document: {uri}")
    segs = [unquote(s) for s in parts.path.strip("/").split("/") if s]
    query = parse_qs(parts.query)
    try:
        db = open_snapshot(snapshot, cancel=cancel)
    except SnapshotError as e:
        raise DocumentError(str(e)) from None
    try:
        if segs == ["snapshot", "overview"]:
            return overview(db, snapshot)
        if segs == ["snapshot", "stacks"]:
            return stacks(db, resolve, (query.get("function") or [None])[0])
        if len(segs) == 3 and segs[0] == "goroutine" and segs[1].isdigit() and segs[2].isdigit():
            return goroutine(db, int(segs[1]), int(segs[2]), resolve)
        if len(segs) == 2 and segs[0] == "table":
            return table(db, segs[1])
        if len(segs) == 2 and segs[0] == "query" and segs[1].isdigit():
            sql = queries.get(int(segs[1]))
            if sql is None:
                raise DocumentError(f"no query {segs[1]} in this session")
            return query_doc(db, sql)
    except SQL_ERRORS as e:           # a damaged page, a bound: say so, no traceback
        raise DocumentError(read_error(snapshot, e, db)) from None
    finally:
        db.close()
    raise DocumentError(f"unknown Ex-Ray document {uri} (try {OVERVIEW_URI})")


def _kind(db, name: str) -> str | None:
    """'table', 'view' or None."""
    row = db.execute("SELECT type FROM sqlite_master WHERE name = ? AND type IN ('table','view')",
                     (name,)).fetchone()
    return row[0] if row else None


def _has_table(db, name: str) -> bool:
    return _kind(db, name) is not None


def overview(db: sqlite3.Connection, path: str) -> Doc:
    d = Doc()
    meta = snapshot_meta(db)
    d.add(f"Ex-Ray snapshot {path}")
    if meta.get("created_at"):
        from server.display import format_timestamp_ns
        d.add(f"taken {format_timestamp_ns(int(meta['created_at']))}")
    d.add("")
    d.add("Processes:")
    for p in dict_rows(db, "SELECT * FROM processes ORDER BY id"):
        line = f"  process {p['id']}: pid {p['pid']} {p['exe'] or '?'} {p['go_version'] or ''}".rstrip()
        if p.get("pause_ns") is not None:
            line += f", paused {fmt.format_duration(p['pause_ns'])}"
        if p.get("error"):
            line += f", error: {p['error']}"
        d.add(line)
    d.add("")
    d.add("Goroutines by state (system goroutines left out):", stacks_uri(), 0, len("Goroutines"))
    for status, reason, n in db.execute(
            "SELECT status, wait_reason, count(*) FROM goroutines WHERE NOT is_system "
            "GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2"):
        d.add(f"  {n:6}  {reason or status}")
    d.add("")
    d.add("Function tables:")
    for t in function_tables(db):
        n = db.execute(f"SELECT count(*) FROM {_q(t.table)}").fetchone()[0] if _has_table(db, t.table) else 0
        d.add(f"  {t.table}  {t.function}: {n} row{'s' if n != 1 else ''}; {', '.join(t.columns)}",
              table_uri(t.table), 2, 2 + len(t.table))
    if _has_table(db, "exray_columns"):
        reports = [r[0] for r in db.execute(
            "SELECT DISTINCT table_name FROM exray_columns WHERE source = 'report' ORDER BY 1")]
        if reports:
            d.add("")
            d.add("Derived tables:")
            for r in reports:
                d.add(f"  {r}", table_uri(r), 2)
    if _has_table(db, "exray_link_defs"):
        defs = dict_rows(db, "SELECT * FROM exray_link_defs ORDER BY name")
        if defs:
            d.add("")
            d.add("Links:")
            for k in defs:
                d.add(f"  {k['name']}: {k['left_table']}({', '.join(json.loads(k['left_columns']))}) <-> "
                      f"{k['right_table']}({', '.join(json.loads(k['right_columns']))})"
                      + (f"  {k['description']}" if k.get("description") else ""))
    if _has_table(db, "exray_report_errors"):
        errs = dict_rows(db, "SELECT * FROM exray_report_errors")
        if errs:
            d.add("")
            d.add("Report errors:")
            for e in errs:
                d.add(f"  {e['kind']} {e['name']}: {e['error']}")
    return d


_HEADER_RE = re.compile(r"^== process (\d+):")
_GOID_RE = re.compile(r"\(goroutine (\d+)")
_FRAME_RE = re.compile(r"^\t(.+):(\d+|\?)$")


def stacks(db: sqlite3.Connection, resolve, function: str | None = None) -> Doc:
    procs, gors, frames = read_goroutines(db)
    filt = fmt.GoroutineFilter(functions=[function] if function else [])
    matched = filt.matching(gors, frames, [])
    text = fmt.format_goroutines(procs, gors, frames, matched=matched, filter_text=filt.describe())
    d = Doc()
    process_id = None
    prev = ""
    for line in text.rstrip("\n").split("\n"):
        if m := _HEADER_RE.match(line):
            process_id = int(m.group(1))
        d.add(line)
        if process_id is not None and (m := _GOID_RE.search(line)) and "goroutine" in line.split("[")[0]:
            d.link_last(m.start(1) - len("goroutine "), m.end(1), goroutine_uri(process_id, int(m.group(1))))
        elif (m := _FRAME_RE.match(line)) and m.group(2) != "?":
            fn = prev if not prev.startswith("created by ") else prev[len("created by "):].split(" in goroutine")[0]
            ws = resolve(fn, m.group(1))
            if ws:
                d.link_last(1, len(line), file_target(ws, int(m.group(2))))
        prev = line
    return d


def goroutine(db: sqlite3.Connection, process_id: int, goid: int, resolve) -> Doc:
    g = db.execute("SELECT * FROM goroutines WHERE process_id = ? AND goid = ?", (process_id, goid))
    cols = [c[0] for c in g.description]
    row = g.fetchone()
    if row is None:
        raise DocumentError(f"no goroutine {goid} in process {process_id} of this snapshot")
    g = dict(zip(cols, row))
    pid = db.execute("SELECT pid FROM processes WHERE id = ?", (process_id,)).fetchone()
    d = Doc()
    state = g["wait_reason"] or g["status"] or "unknown"
    waited = f", waiting {fmt.format_duration(g['wait_ns'])}" if g.get("wait_ns") else ""
    d.add(f"goroutine {goid} [{state}{waited}] in process {process_id} (pid {pid[0] if pid else '?'})")
    if g.get("labels"):
        d.add(f"labels: {g['labels']}")
    if g.get("error"):
        d.add(f"stack incomplete: {g['error']}")
    d.add("")
    by_depth: dict[int, list[tuple[str, int, dict]]] = {}
    captures = {t.table: set(t.columns) for t in function_tables(db)}
    for t in function_tables(db):
        if not _has_table(db, t.table):
            continue
        for r in dict_rows(db, f"SELECT rowid AS _rowid, * FROM {_q(t.table)} WHERE process_id = ? AND goid = ?",
                       (process_id, goid)):
            by_depth.setdefault(r["depth"], []).append((t.table, r.pop("_rowid"), r))
    for depth, fn, file, line, hidden, inlined in db.execute(
            "SELECT depth, function, file, line, hidden, inlined FROM frames "
            "WHERE process_id = ? AND goid = ? ORDER BY depth", (process_id, goid)):
        tag = " (inlined)" if inlined else ""
        tag += " (runtime)" if hidden else ""
        d.add(f"#{depth} {fn}{tag}")
        where = f"    {file}:{line}"
        ws = resolve(fn, file)
        d.add(where, file_target(ws, line) if ws else None, 4)
        for tname, rowid, r in by_depth.get(depth, []):
            d.add(f"    {tname} #{rowid}:", table_uri(tname), 4, 4 + len(tname))
            captured, errors = captures.get(tname, ()), row_errors(r.get("_errors"))
            for col, v in r.items():
                if col in ("process_id", "goid", "depth", "_errors") or col.startswith("raw_"):
                    continue
                note = errors.get(col) if col in captured else None
                shown = cell_text(v, note) if col in captured else None
                if shown is None and note:          # where the value came from: a spill slot, possibly stale
                    shown = f"{_cell(v)}{STALE if is_stale(note) else ''}  ({note})"
                d.add(f"      {col} = {shown if shown is not None else _cell(v)}")
            rest = {c: e for c, e in errors.items() if c not in captured}
            if rest:
                d.add(f"      _errors = {_cell(json.dumps(rest, ensure_ascii=False))}")
            try:
                links = linked_rows(db, tname, rowid)
            except Exception as e:            # a broken link table: say so, keep the rest
                d.add(f"      (links: {e})")
                links = []
            for k in links:
                arrow = "->" if k.direction == "forward" else "<-"
                other = f"{k.table} #{k.rowid}"
                if k.goroutine:
                    at = f" at {k.frame.function} {Path(k.frame.file).name}:{k.frame.line}" if k.frame else ""
                    text = f"      {arrow} {k.link}: {other}, goroutine {k.goroutine.goid} in process {k.goroutine.process_id}{at}"
                    d.add(text, goroutine_uri(k.goroutine.process_id, k.goroutine.goid), 6)
                else:
                    d.add(f"      {arrow} {k.link}: {other}", table_uri(k.table), 6)
    if g.get("created_by"):
        d.add(f"created by {g['created_by']}" + (f" in goroutine {g['parent_goid']}" if g.get("parent_goid") else ""))
        ws = resolve(g["created_by"], g.get("created_by_file"))
        line = g.get("created_by_line")
        d.add(f"    {g.get('created_by_file') or '?'}:{line if line is not None else '?'}",
              file_target(ws, line) if ws else None, 4)
    return d


def _cell(v) -> str:
    return fmt.cut(fmt.format_cell(v), 200)


def table(db: sqlite3.Connection, name: str) -> Doc:
    kind = _kind(db, name)
    if kind is None or name.startswith("sqlite_"):
        raise DocumentError(f"no table {name!r} in this snapshot")
    # Views (all_captured_data) have no rowid, and links are recorded by rowid of tables only.
    rowid = "rowid AS rowid, " if kind == "table" else ""
    cur = db.execute(f"SELECT {rowid}* FROM {_q(name)} LIMIT {MAX_ROWS + 1}")
    cols = [c[0] for c in cur.description]
    rows = cur.fetchall()
    total = db.execute(f"SELECT count(*) FROM {_q(name)}").fetchone()[0]
    d = Doc()
    d.add(f"table {name}: {total} row{'s' if total != 1 else ''}")
    links: dict[int, list] = {}
    if kind == "table" and _has_table(db, "exray_links"):
        for rowid, in db.execute("SELECT DISTINCT from_rowid FROM exray_links WHERE from_table = ?", (name,)):
            try:
                links[rowid] = linked_rows(db, name, rowid)
            except Exception:
                pass
    captured = next((set(t.columns) for t in function_tables(db) if t.table == name), set())
    if captured and "_errors" in cols:
        rows = [_with_reasons(cols, r, captured) for r in rows]
    _grid(d, cols, rows[:MAX_ROWS], links)
    if total > MAX_ROWS:
        d.add(f"… {total - MAX_ROWS} more rows (query them with :ExrayQuery in Neovim, "
              "\"Ex-Ray: Run Query\" in VS Code)")
    return d


def _with_reasons(cols: list[str], row, captured: set[str]) -> list:
    """A function table's row as the document shows it: a captured NULL is
    `⊘ <reason>` when `_errors` gives one, else a real Go `nil`."""
    errors = row_errors(row[cols.index("_errors")])
    out = list(row)
    for i, c in enumerate(cols):
        if c in captured and row[i] is None:
            out[i] = cell_text(None, errors.get(c))
    return out


def query_doc(db: sqlite3.Connection, sql: str) -> Doc:
    d = Doc()
    d.add("-- " + " ".join(sql.split()))
    try:
        check_statement(db, sql)      # read-only: no VACUUM, ATTACH, PRAGMA writes (docs/security.md)
        cur = db.execute(sql)
        cols = [c[0] for c in cur.description] if cur.description else []
        rows, _ = fetch(cur, MAX_ROWS + 1)
    except (*SQL_ERRORS, sqlite3.Warning) as e:
        d.add(f"error: {describe(e, db)}")
        return d
    if not cols:
        d.add("(statement returned no columns)")
        return d
    _grid(d, cols, rows[:MAX_ROWS], {})
    if len(rows) > MAX_ROWS:
        d.add(f"… stopped after {MAX_ROWS} rows")
    return d


def _grid(d: Doc, cols: list[str], rows: list, links: dict[int, list]) -> None:
    """An aligned table; a row with process_id and goid links to its goroutine,
    its linked rows (by rowid) to the other side's goroutine or table."""
    shown = [c for c in cols if not c.startswith("raw_")]
    ix = [cols.index(c) for c in shown]
    cells = [[fmt.cut(fmt.format_cell(r[i]), CELL_WIDTH) for i in ix] for r in rows]
    widths = [max([fmt.text_width(c)] + [fmt.text_width(r[k]) for r in cells]) for k, c in enumerate(shown)]
    def line(vals):
        return "  ".join(v + " " * (widths[k] - fmt.text_width(v)) for k, v in enumerate(vals)).rstrip()
    has_links = bool(links)
    d.add(line(shown) + ("  links" if has_links else ""))
    d.add("  ".join("-" * w for w in widths))
    pi = cols.index("process_id") if "process_id" in cols else None
    gi = cols.index("goid") if "goid" in cols else None
    ri = cols.index("rowid") if "rowid" in cols else None
    for r, vals in zip(rows, cells):
        text = line(vals)
        targets = []
        for k in links.get(r[ri], []) if ri is not None else []:
            label = f"{k.link}->{k.table}#{k.rowid}"
            target = goroutine_uri(k.goroutine.process_id, k.goroutine.goid) if k.goroutine else table_uri(k.table)
            targets.append((label, target))
        if targets:
            pad = sum(widths) + 2 * (len(widths) - 1)
            text = text + " " * (pad - fmt.text_width(text)) + "  "
        start = len(text)
        text += " ".join(lbl for lbl, _ in targets)
        d.add(text)
        if pi is not None and gi is not None and isinstance(r[pi], int) and isinstance(r[gi], int):
            d.link_last(0, max(len(vals[0]), 1), goroutine_uri(r[pi], r[gi]))
        for lbl, target in targets:
            d.link_last(start, start + len(lbl), target)
            start += len(lbl) + 1
