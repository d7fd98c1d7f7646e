"""What the editor shows in Go files from the current snapshot.

`SnapshotIndex.load` reads a snapshot once (in a worker thread) into plain
dicts: workspace file -> line -> `LineAgg` (goroutines there, their wait
reasons, captured values), file -> function -> `FuncAgg`, and the captured
rows per (file, function) for hovers, each value with the reason its row's
`_errors` gives when it is NULL. Requests then only look things up:
render.py turns the index and the document's source into labels, lenses and
hovers; goviews.py serves them.
"""
from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from probe_compiler import generics
from server.sqlguard import quote_ident as _q
from server.store import function_tables, reading, snapshot_meta

from .render import row_errors, value_text
from .sourcemap import SourceMap


@dataclass
class LineAgg:
    goroutines: set = field(default_factory=set)           # (process_id, goid)
    reasons: Counter = field(default_factory=Counter)       # wait reason (or status) per goroutine
    functions: set = field(default_factory=set)
    values: dict = field(default_factory=dict)              # column -> Counter of compact values


@dataclass
class FuncAgg:
    function: str
    lines: set = field(default_factory=set)
    goroutines: set = field(default_factory=set)
    table: str | None = None                               # its function table, when captured


@dataclass
class CapturedRow:
    process_id: int
    goid: int
    depth: int
    line: int
    values: dict                                           # column -> JSON text (None: nil, or unavailable)
    rowid: int = 0
    errors: dict = field(default_factory=dict)             # column -> why its value is NULL (`_errors`)


@dataclass
class Captured:
    function: str
    table: str
    columns: list[str]
    exprs: dict[str, str]                                  # column -> Go expression
    rows: list[CapturedRow] = field(default_factory=list)
    lines: set = field(default_factory=set)                # 1-based lines of its frames
    counts: dict = field(default_factory=dict)             # column -> Counter of compact values (render.value_text)


@dataclass
class SnapshotIndex:
    path: str
    created_at: int | None = None
    processes: list[dict] = field(default_factory=list)
    n_goroutines: int = 0
    lines: dict[str, dict[int, LineAgg]] = field(default_factory=dict)
    functions: dict[str, dict[str, FuncAgg]] = field(default_factory=dict)
    captured: dict[tuple[str, str], Captured] = field(default_factory=dict)
    tables: list = field(default_factory=list)             # FunctionTableDef
    sourcemap: SourceMap | None = None
    files: dict[tuple[str, str], str | None] = field(default_factory=dict)  # (function, file) -> workspace path

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path, sourcemap: SourceMap) -> "SnapshotIndex":
        """Read a snapshot, checked and under the read bounds (SnapshotError if it
        is not one, is damaged, or a bound stops the reading)."""
        with reading(path) as db:
            return cls._load(db, str(path), sourcemap)

    @classmethod
    def _load(cls, db: sqlite3.Connection, path: str, sm: SourceMap) -> "SnapshotIndex":
        meta = snapshot_meta(db)
        idx = cls(path=path, sourcemap=sm)
        try:
            idx.created_at = int(meta.get("created_at") or 0) or None
        except ValueError:
            pass
        cur = db.execute("SELECT * FROM processes ORDER BY id")
        cols = [d[0] for d in cur.description]
        idx.processes = [dict(zip(cols, r)) for r in cur]
        state = {(pid, goid): reason or status or "unknown" for pid, goid, status, reason in db.execute(
            "SELECT process_id, goid, status, wait_reason FROM goroutines")}
        idx.n_goroutines = len(state)
        # Only frames of functions that may be in the workspace can map to it
        # (SourceMap.resolve and learn ignore the others): SQLite leaves out the
        # runtime's and the libraries' frames, in rowid order, as a full scan does.
        fns = [fn for fn, in db.execute("SELECT DISTINCT function FROM frames")]
        mine = json.dumps([fn for fn in fns if fn and sm.in_module(fn)])
        try:
            rows = db.execute(
                "SELECT rowid, process_id, goid, depth, function, file, line FROM frames NOT INDEXED "
                "WHERE function IN (SELECT value FROM json_each(?)) OR function IS NULL OR function = '' "
                "ORDER BY rowid", (mine,)).fetchall()
        except sqlite3.OperationalError:           # an SQLite without JSON functions
            keep = set(json.loads(mine))
            rows = [r for r in db.execute("SELECT rowid, process_id, goid, depth, function, file, line "
                                          "FROM frames ORDER BY rowid") if not r[4] or r[4] in keep]
        # Frames grouped by (function, file, line), each group in row order.
        groups: dict[tuple, list] = {}
        for r in rows:
            k = r[4], r[5], r[6]
            g = groups.get(k)
            if g is None:
                groups[k] = [r]
            else:
                g.append(r)
        pairs = {(fn, file) for fn, file, _ in groups}
        for fn, file in pairs:
            if fn and file:
                sm.learn(fn, file)
        files = {(fn, file): (str(p) if (p := sm.resolve(file, fn or "")) else None) for fn, file in pairs}
        idx.files = files
        idx.tables = function_tables(db)
        captured_fns = {t.function: t for t in idx.tables}
        # Frames name a generic function's instances (`main.Map[go.shape.int]`);
        # its table and its lens are those of the spec's `main.Map[...]`.
        table_of = {fn: _table_for(fn, captured_fns) for fn, _, _ in groups}
        shown_as = {fn: _display_name(fn, table_of[fn]) for fn in table_of}
        frame_at: dict[tuple[int, int, int], tuple[str, int]] = {}
        # The groups of each workspace line, in the order of their first frame:
        # lines, functions and reasons are created in the order frames come.
        at_line: dict[tuple[str, int], list] = {}
        in_captured: list = []
        for (fn, file, line), g in groups.items():
            ws = files.get((fn, file))
            if ws is None or line is None:
                continue
            at_line.setdefault((ws, line), []).append(g)
            if table_of[fn] is not None:
                in_captured.append((g, ws, line))
        # Frames of captured functions by (goroutine, depth); a later frame wins, as in row order.
        for r, ws, line in sorted(((r, ws, line) for g, ws, line in in_captured for r in g), key=lambda x: x[0][0]):
            frame_at[r[1], r[2], r[3]] = (ws, line)
        lines, funcs = idx.lines, idx.functions
        for (ws, line), gs in sorted(at_line.items(), key=lambda kv: min(g[0][0] for g in kv[1])):
            rs = gs[0] if len(gs) == 1 else sorted((r for g in gs for r in g), key=lambda r: r[0])
            keys = dict.fromkeys([(r[1], r[2]) for r in rs])      # goroutines, first frame first
            agg = lines.setdefault(ws, {})[line] = LineAgg()
            agg.goroutines = set(keys)
            agg.reasons = Counter([state.get(k, "gone") for k in keys])
            agg.functions = {shown_as[g[0][4]] for g in gs}
        for (ws, line), gs in sorted(((k, g) for k, gs in at_line.items() for g in gs), key=lambda kg: kg[1][0][0]):
            fn = shown_as[gs[0][4]]
            fa = funcs.setdefault(ws, {}).get(fn)
            if fa is None:
                t = table_of[gs[0][4]]
                fa = funcs[ws][fn] = FuncAgg(fn, table=t.table if t is not None else None)
            fa.lines.add(line)
            fa.goroutines.update([(r[1], r[2]) for r in gs])
        idx._load_captures(db, frame_at, _capture_exprs(db, meta))
        return idx

    def _load_captures(self, db: sqlite3.Connection, frame_at: dict, exprs: dict) -> None:
        """The function tables' rows of frames that map to the workspace: per
        (file, function) its rows, each value with its `_errors` reason, and the
        compacted values per line and per column."""
        short_of: dict[str, str] = {}                         # JSON text -> render.value_text(text)
        for t in self.tables:
            if not t.columns:
                continue
            sel = ", ".join(_q(c) for c in t.columns)
            try:
                rows = db.execute(f"SELECT rowid, process_id, goid, depth, _errors, {sel} FROM {_q(t.table)} "
                                  "ORDER BY process_id, goid, depth").fetchall()
            except sqlite3.Error:
                try:            # a table without `_errors`: NULLs read as nil
                    rows = db.execute(f"SELECT rowid, process_id, goid, depth, NULL, {sel} FROM {_q(t.table)} "
                                      "ORDER BY process_id, goid, depth").fetchall()
                except sqlite3.Error:
                    continue
            columns = list(t.columns)
            for rowid, pid, goid, depth, errors_text, *vals in rows:
                at = frame_at.get((pid, goid, depth))
                if at is None:
                    continue
                ws, line = at
                cap = self.captured.get((ws, t.function))
                if cap is None:
                    cap = self.captured[ws, t.function] = Captured(
                        t.function, t.table, list(t.columns),
                        {c: exprs.get((t.table, c), c) for c in t.columns})
                errors = row_errors(errors_text) if errors_text is not None else {}
                cap.rows.append(CapturedRow(pid, goid, depth, line, dict(zip(columns, vals)), rowid, errors))
                cap.lines.add(line)
                values, counts = self.lines[ws][line].values, cap.counts
                for c, v in zip(columns, vals):
                    if v.__class__ is str and not errors:
                        short = short_of.get(v)
                        if short is None:
                            short = short_of[v] = value_text(v)
                    else:
                        short = value_text(v, errors.get(c))
                    cv = values.get(c)
                    if cv is None:
                        cv = values[c] = Counter()
                    cv[short] += 1
                    cc = counts.get(c)
                    if cc is None:
                        cc = counts[c] = Counter()
                    cc[short] += 1

    # ---------------------------------------------------------------- queries
    def resolve(self, function: str | None, file: str | None) -> str | None:
        if (function, file) in self.files:
            return self.files[function, file]
        p = self.sourcemap.resolve(file, function) if self.sourcemap else None
        return str(p) if p else None


def _table_for(fn: str | None, captured_fns: dict):
    """The function table whose spec symbol captures frames of `fn`, if any."""
    t = captured_fns.get(fn)
    if t is None and fn and "[" in fn:
        t = captured_fns.get(generics.generic_pattern(fn))
        if t is not None and not generics.spec_matches(t.function, fn):
            t = None
    return t


def _display_name(fn: str | None, table) -> str | None:
    """Instances of a generic function show as one: `main.Map[...]`."""
    if fn and "[" in fn and generics.is_shape_instance(fn):
        return table.function if table is not None else generics.generic_pattern(fn)
    return fn


def _capture_exprs(db: sqlite3.Connection, meta: dict) -> dict[tuple[str, str], str]:
    """(table, column) -> the Go expression captured, from exray_columns or the spec text."""
    out: dict[tuple[str, str], str] = {}
    try:
        for t, c, e in db.execute("SELECT table_name, column_name, expr FROM exray_columns WHERE source = 'capture'"):
            if e:
                out[t, c] = e
        if out:
            return out
    except sqlite3.Error:
        pass
    text = meta.get("spec")
    if text:
        try:
            from probe_compiler.spec import parse_spec
            spec = parse_spec(text, "exray.yaml", False)
            for f in spec.functions:
                for c in f.captures:
                    out[f.table, c.name] = c.expr
        except Exception:        # an old or foreign spec: column names will do
            pass
    return out
