"""What the editor shows in Go files from the current snapshot.

`SnapshotIndex.load` reads a snapshot once (in a worker thread) into plain
dicts: workspace file -> line -> `LineAgg` (goroutines there, their wait
reasons, captured values), file -> function -> `FuncAgg`, and the captured
rows per (file, function) for hovers. Requests then only look things up:
`inlay_labels`, `lenses` and `hover_markdown` are pure functions of the index
and the document's text.
"""
from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from probe_compiler import generics
from server.store import function_tables, open_snapshot, snapshot_meta

from .sourcemap import SourceMap

PAUSE = "⏸"


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
    values: dict                                           # column -> JSON text (None: not available)
    rowid: int = 0


@dataclass
class Captured:
    function: str
    table: str
    columns: list[str]
    exprs: dict[str, str]                                  # column -> Go expression
    rows: list[CapturedRow] = field(default_factory=list)
    lines: set = field(default_factory=set)                # 1-based lines of its frames
    counts: dict = field(default_factory=dict)             # column -> Counter of compact values


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
        """Read a snapshot (SnapshotError if it is not one; sqlite3 errors if it is corrupt)."""
        db = open_snapshot(path)
        try:
            return cls._load(db, str(path), sourcemap)
        finally:
            db.close()

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
        exprs = _capture_exprs(db, meta)
        short_of: dict[str, str] = {}                         # JSON text -> compact_json(text)
        for t in idx.tables:
            if not t.columns:
                continue
            sel = ", ".join(_q(c) for c in t.columns)
            try:
                rows = db.execute(f"SELECT rowid, process_id, goid, depth, {sel} FROM {_q(t.table)} ORDER BY process_id, goid, depth").fetchall()
            except sqlite3.Error:
                continue
            columns = list(t.columns)
            for rowid, pid, goid, depth, *vals in rows:
                at = frame_at.get((pid, goid, depth))
                if at is None:
                    continue
                ws, line = at
                cap = idx.captured.get((ws, t.function))
                if cap is None:
                    cap = idx.captured[ws, t.function] = Captured(
                        t.function, t.table, list(t.columns),
                        {c: exprs.get((t.table, c), c) for c in t.columns})
                cap.rows.append(CapturedRow(pid, goid, depth, line, dict(zip(columns, vals)), rowid))
                cap.lines.add(line)
                values, counts = lines[ws][line].values, cap.counts
                for c, v in zip(columns, vals):
                    if v.__class__ is str:
                        short = short_of.get(v)
                        if short is None:
                            short = short_of[v] = compact_json(v)
                    else:
                        short = compact_json(v)
                    cv = values.get(c)
                    if cv is None:
                        cv = values[c] = Counter()
                    cv[short] += 1
                    cc = counts.get(c)
                    if cc is None:
                        cc = counts[c] = Counter()
                    cc[short] += 1
        return idx

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


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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


# ------------------------------------------------------------------ values

def compact_json(text: str | None, budget: int = 40) -> str:
    """A short view of a captured JSON value: 7, "widget", {ID:7, Path:"/x"}, [1, 2, …]."""
    if text is None:
        return "nil"
    try:
        v = json.loads(text)
    except (TypeError, ValueError):
        return _cut(str(text), budget)
    return _cut(_compact(v, budget), budget)


def _compact(v, budget: int) -> str:
    t = v.__class__
    if t is str:                      # the common cases first, by exact type
        return _encode_str(v)
    if t is dict:
        return _compact_dict(v, budget)
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return _encode_str(v)
    if isinstance(v, list):
        return _bounded(v, _compact, budget, "[]")
    if isinstance(v, dict):
        return _compact_dict(v, budget)
    return str(v)


def _compact_dict(v: dict, budget: int) -> str:
    if "__addr" in v and "value" in v:
        return _compact(v["value"], budget)
    fields = [(k, x) for k, x in v.items() if not k.startswith("__")]
    return _bounded(fields, _field, budget, "{}")


def _field(kx, budget: int) -> str:
    return f"{kx[0]}:{_compact(kx[1], budget)}"


_encode_str = json.encoder.encode_basestring    # what json.dumps(s, ensure_ascii=False) returns, in C


def _bounded(items, render, budget: int, brackets: str) -> str:
    """Items rendered and joined until the budget is spent, then `…`."""
    parts, used = [], 2
    for x in items:
        s = render(x, budget - used)
        if used + len(s) > budget:
            parts.append("…")
            break
        parts.append(s)
        used += len(s) + 2
    return brackets[0] + ", ".join(parts) + brackets[1]


def _cut(s: str, n: int) -> str:
    s = s.replace("\n", "\\n")
    return s if len(s) <= n else s[: max(1, n - 1)] + "…"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def reasons_text(reasons: Counter) -> str:
    common = reasons.most_common()
    if len(common) == 1:
        return common[0][0]
    shown = [f"{r} ×{n}" for r, n in common[:2]]
    if len(common) > 2:
        shown.append(f"+{len(common) - 2}")
    return ", ".join(shown)


def values_text(values: dict, budget: int) -> str:
    parts = []
    for col, counter in values.items():
        distinct = [v for v, _ in counter.most_common()]
        s = f"{col}={distinct[0]}"
        for v in distinct[1:]:
            if len(s) + len(v) + 1 > max(budget // max(len(values), 1), 24):
                s += f"|+{len(distinct) - s.count('|') - 1}"
                break
            s += "|" + v
        parts.append(s)
    return ", ".join(parts)


def line_label(agg: LineAgg, max_len: int) -> str:
    """`⏸ 12 goroutines · chan receive · req_ID=7, sku="widget"`, at most max_len characters."""
    label = f"{PAUSE} {_plural(len(agg.goroutines), 'goroutine')} · {reasons_text(agg.reasons)}"
    if agg.values:
        label += " · " + values_text(agg.values, max_len - len(label) - 3)
    return _cut(label, max_len)


# ------------------------------------------------------------------ Go source

@dataclass(frozen=True)
class GoFunc:
    kind: str                   # function_declaration, method_declaration, func_literal
    start: int                  # 0-based line of `func`
    start_col: int
    end: int                    # 0-based last line


@dataclass
class GoFile:
    funcs: list[GoFunc]
    has_error: bool

    def innermost(self, line0: int) -> GoFunc | None:
        best = None
        for f in self.funcs:
            if f.start <= line0 <= f.end and (best is None or f.start >= best.start):
                best = f
        return best

    def declaration(self, line0: int) -> GoFunc | None:
        best = None
        for f in self.funcs:
            if f.kind != "func_literal" and f.start <= line0 <= f.end:
                best = f
        return best


_PARSER = None


def parse_go(text: str) -> GoFile:
    """Function ranges of a Go file (tree-sitter-go). A file with syntax errors
    still yields the functions that parse; has_error says it was broken."""
    global _PARSER
    try:
        if _PARSER is None:
            import tree_sitter
            import tree_sitter_go
            _PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_go.language()))
        tree = _PARSER.parse(text.encode("utf-8", "surrogatepass"))
    except Exception:
        return GoFile(_regex_funcs(text), True)
    funcs: list[GoFunc] = []
    stack = [tree.root_node]
    while stack:
        n = stack.pop()
        if n.type in ("function_declaration", "method_declaration", "func_literal"):
            funcs.append(GoFunc(n.type, n.start_point[0], n.start_point[1], n.end_point[0]))
        stack.extend(n.children)
    funcs.sort(key=lambda f: (f.start, f.start_col))
    return GoFile(funcs, tree.root_node.has_error)


def _regex_funcs(text: str) -> list[GoFunc]:
    starts = [i for i, l in enumerate(text.splitlines()) if l.startswith("func ")]
    n = text.count("\n") + 1
    return [GoFunc("function_declaration", s, 0, (starts[k + 1] - 1) if k + 1 < len(starts) else n)
            for k, s in enumerate(starts)]


@dataclass
class Lens:
    line: int                   # 0-based
    function: str
    goroutines: int
    table: str | None


def lenses(idx: SnapshotIndex, path: str, go: GoFile) -> list[Lens]:
    """One lens per function with frames in this file, above its `func` line
    (or at its first frame's line when the source does not say where it is)."""
    out = []
    for fn, fa in sorted(idx.functions.get(path, {}).items()):
        first = min(fa.lines) - 1
        f = go.innermost(first)
        out.append(Lens(f.start if f else max(first, 0), fn, len(fa.goroutines), fa.table))
    return out


_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def expression_at(line_text: str, col: int) -> str | None:
    """The dotted identifier under the cursor, up to the part it is on:
    `req.ID` on `ID`, `req` on `req`."""
    for m in _IDENT_RE.finditer(line_text):
        if m.start() <= col <= m.end():
            text = m.group(0)
            cut_at = text.find(".", col - m.start())
            return text if cut_at < 0 else text[:cut_at]
    return None


def _root(expr: str) -> str:
    m = re.match(r"[*&(]*([A-Za-z_][A-Za-z0-9_]*)", expr)
    return m.group(1) if m else expr


def hover_captures(idx: SnapshotIndex, path: str, go: GoFile, line0: int, expr: str
                   ) -> list[tuple[Captured, str]]:
    """(captured function, column) pairs the expression under the cursor stands for."""
    here = go.innermost(line0)
    if here is None:
        return []
    out = []
    for (p, fn), cap in idx.captured.items():
        if p != path or not any(go.innermost(n - 1) == here for n in cap.lines):
            continue
        for col in cap.columns:
            e = cap.exprs.get(col, col)
            base = e.lstrip("*&(")
            if (base == expr or base.startswith(expr + ".") or base.startswith(expr + "[")
                    or expr.startswith(base + ".") or col == expr or _root(e) == expr and "." not in expr):
                out.append((cap, col))
    return out


def hover_markdown(hits: list[tuple[Captured, str]], max_values: int) -> str:
    blocks = []
    for cap, col in hits:
        rows = cap.rows
        expr = cap.exprs.get(col, col)
        counts = cap.counts.get(col, Counter())
        head = (f"**`{expr}`** in `{cap.function}`: {_plural(len(rows), 'frame')} "
                f"(column `{cap.table}.{col}`)")
        summary = ", ".join(f"`{v}` ×{n}" if n > 1 else f"`{v}`" for v, n in counts.most_common(10))
        if len(counts) > 10:
            summary += f", … {len(counts) - 10} more distinct"
        shown = sorted(rows[:max_values], key=lambda r: (r.process_id, r.goid, r.depth))
        full = [{"process": r.process_id, "goroutine": r.goid, "line": r.line,
                 "value": _loads(r.values.get(col))} for r in shown]
        body = json.dumps(full, indent=2, ensure_ascii=False)
        more = f"\n\n… and {len(rows) - len(shown)} more frames" if len(rows) > len(shown) else ""
        blocks.append(f"{head}\n\n{summary}\n\n```json\n{body}\n```{more}")
    return "\n\n---\n\n".join(blocks)


def _loads(text):
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text
