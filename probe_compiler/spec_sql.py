"""The SQL of exray.yaml, checked with sqlglot before any process is paused.

Extra columns are SQL expressions over one function table's row; reports
(derived tables) are queries over the built-in tables, the function tables
and earlier reports; links name columns of any of those. `check_spec` parses
every piece (dialect sqlite), rejects anything but queries, finds the tables
each report reads, orders the reports so that each comes after what it
reads, resolves every column against the tables' columns, and returns every
problem as a SpecError whose line and column point into the YAML.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, ParseError, SqlglotError, TokenError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import traverse_scope

from .errors import SpecError
from .spec import ColumnSpec, FunctionSpec, LinkEnd, LinkSpec, ReportSpec, Spec

DIALECT = "sqlite"

# The snapshot's built-in tables and their columns, in order. server.store
# creates them (and owns the types); the probe compiler can't import the
# server, so the names are repeated here and a test keeps the two equal.
BUILTIN_COLUMNS: dict[str, tuple[str, ...]] = {
    "meta": ("key", "value"),
    "processes": ("id", "host", "pid", "exe", "build_id", "go_version", "main_module",
                  "vcs_revision", "captured_at", "pause_ns", "error", "warnings", "truncated",
                  "load_bias", "agent", "clock_offset_ns", "skew_ns", "pause_start_ns",
                  "pause_skew_ns"),
    "goroutines": ("process_id", "goid", "status", "wait_reason", "wait_ns", "created_by",
                   "created_by_file", "created_by_line", "parent_goid", "labels", "is_system",
                   "thread_id", "error"),
    "frames": ("process_id", "goid", "depth", "function", "file", "line", "pc", "inlined", "hidden"),
    "all_captured_data": ("table_name", "process_id", "goid", "depth", "column_name", "value"),
}
# Every function table starts with these, then per capture x: x and raw_x, then _errors.
FUNCTION_KEY_COLUMNS: tuple[str, ...] = ("process_id", "goid", "depth")

# Statement kinds sqlglot parses that a report may be: a query and nothing else.
_QUERY_TYPES = (exp.Select, exp.SetOperation, exp.Subquery)
# Nodes that write or touch the database, wherever they hide in a tree.
_WRITE_TYPES = (exp.Insert, exp.Update, exp.Delete, exp.Create, exp.Drop, exp.Alter,
                exp.Command, exp.Pragma, exp.Attach, exp.Detach, exp.Merge, exp.Analyze)

logging.getLogger("sqlglot").setLevel(logging.ERROR)   # its "falling back to Command" warnings


def function_columns(fn: FunctionSpec, extra: bool = True) -> list[str]:
    """The columns of a function table in order; `extra` adds its extra columns."""
    names = [c.name for c in fn.captures]
    cols = [*FUNCTION_KEY_COLUMNS, *names, *("raw_" + n for n in names), "_errors"]
    return cols + ([c.name for c in fn.columns] if extra else [])


# ------------------------------------------------------------ parsing

@dataclass
class _Problem(Exception):
    """A problem at a character offset of the SQL text (None: the whole text)."""
    message: str
    offset: int | None = None


def _parse_error_offset(sql: str, err: dict) -> int | None:
    """sqlglot gives the 1-based line and the column where the bad token ends."""
    line, col, token = err.get("line"), err.get("col"), err.get("highlight") or ""
    if not line or not col:
        return None
    starts = [0] + [m.end() for m in re.finditer("\n", sql)]
    if line > len(starts):
        return len(sql)
    return max(starts[line - 1] + col - max(len(token), 1), 0)


# sqlglot's parse error descriptions, in the words of someone writing the SQL.
_SYNTAX_WORDS = [
    (re.compile(r"Required keyword: .* missing"), "'{token}' is incomplete"),
    (re.compile(r"Invalid expression / Unexpected token"), "unexpected '{token}'"),
    (re.compile(r"(?s)(.*)"), "{desc} at '{token}'"),
]


def _syntax_message(err: dict) -> str:
    desc, token = err.get("description") or "", err.get("highlight") or ""
    for rx, words in _SYNTAX_WORDS:
        if rx.match(desc):
            return "SQL syntax error: " + words.format(desc=desc, token=token)
    return "SQL syntax error"


def _parse(sql: str) -> exp.Expression:
    try:
        trees = [t for t in sqlglot.parse(sql, read=DIALECT) if t is not None]
    except ParseError as e:
        first = e.errors[0] if e.errors else {}
        raise _Problem(_syntax_message(first), _parse_error_offset(sql, first)) from None
    except TokenError as e:
        raise _Problem(f"SQL syntax error: {e}") from None
    if not trees:
        raise _Problem("empty SQL")
    if len(trees) > 1:
        raise _Problem("one SQL statement only (drop the ';' and what follows)")
    return trees[0]


def _statement_name(tree: exp.Expression) -> str:
    if isinstance(tree, exp.Command):
        return str(tree.this).upper()
    return tree.key.upper()


def parse_query(sql: str) -> exp.Expression:
    """A report's query; raises _Problem for syntax errors and for anything but a query."""
    tree = _parse(sql)
    writer = tree if isinstance(tree, _WRITE_TYPES) else tree.find(*_WRITE_TYPES)
    if not isinstance(tree, _QUERY_TYPES) or writer is not None:
        what = _statement_name(writer or tree)
        raise _Problem(f"a report must be a query (SELECT, WITH ... SELECT, UNION ...), not {what}; "
                       f"snapshots are read-only")
    return tree


def _offset(node: exp.Expression) -> int | None:
    meta = (node.this if isinstance(node.this, exp.Expression) else node).meta
    return meta.get("start")


def table_refs(tree: exp.Expression) -> list[tuple[str, int | None]]:
    """(table, offset) of each real table the query reads, in text order.

    Scopes tell real tables from CTEs and derived tables, in subqueries, joins
    and CTE bodies alike. Table-valued functions (json_each) are not tables."""
    refs = []
    for scope in traverse_scope(tree):
        for source in scope.sources.values():
            if isinstance(source, exp.Table) and isinstance(source.this, exp.Identifier):
                refs.append((source.name, _offset(source)))
    return sorted(refs, key=lambda r: (r[1] is None, r[1] or 0))


def tables_read(sql: str) -> list[str]:
    """The tables a query reads (CTE names excluded), each once, in text order."""
    seen: dict[str, None] = {}
    for name, _ in table_refs(parse_query(sql)):
        seen.setdefault(name, None)
    return list(seen)


# ------------------------------------------------------------ columns

def _suggest(name: str, candidates) -> str:
    """SQLite names are case-insensitive: match ignoring case, suggest as spelt."""
    spelt = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(spelt), n=1, cutoff=0.6)
    return f" (did you mean '{spelt[close[0]]}'?)" if close else ""


def _column_node(tree: exp.Expression, name: str, table: str | None = None) -> exp.Column | None:
    for col in tree.find_all(exp.Column):
        if col.name.lower() == name.lower() and (table is None or col.table.lower() == table.lower()):
            return col
    return None


_UNRESOLVED_FOR = re.compile(r"Column '([^']+)' could not be resolved for table: '([^']+)'")
_UNRESOLVED = re.compile(r"Column '([^']+)' could not be resolved")
_UNKNOWN = re.compile(r"Unknown column: (\S+)")


def _unresolved(tree: exp.Expression, message: str, schema: dict[str, list[str]],
                tables: list[str]) -> _Problem | None:
    """Turn a qualify error into a problem at the column; None when sqlglot can't
    know (a table-valued function's columns)."""
    if "missing source schemas" in message:
        return None
    if m := _UNRESOLVED_FOR.search(message):
        node = _column_node(tree, m.group(1), m.group(2))
        return _Problem(f"unknown table or alias '{m.group(2)}' in '{m.group(2)}.{m.group(1)}'",
                        node and _offset(node))
    m = _UNRESOLVED.search(message) or _UNKNOWN.search(message)
    if m is None:
        return _Problem(f"cannot resolve the query's columns: {message}")
    node = _column_node(tree, m.group(1))
    name = node.name if node else m.group(1)       # as the user spelt it
    owners = [t for t in tables if name.lower() in (c.lower() for c in schema.get(t.lower(), []))]
    if len(owners) > 1 and not (node and node.table):
        return _Problem(f"ambiguous column '{name}' (in {', '.join(owners)}): "
                        f"qualify it, e.g. {owners[0]}.{name}", node and _offset(node))
    candidates = [c for t in tables for c in schema.get(t.lower(), [])]
    where = f" in {', '.join(tables)}" if tables else ""
    return _Problem(f"unknown column '{name}'{where}{_suggest(name, candidates)}", node and _offset(node))


def output_columns(tree: exp.Expression, schema: dict[str, list[str]]) -> list[str] | None:
    """Resolve every column of a query against `schema` (table -> columns);
    returns the query's output columns (stars expanded), None when unknowable."""
    tables = list(dict.fromkeys(name for name, _ in table_refs(tree)))
    # Only the tables it reads: sqlglot normalizes the whole schema on every
    # call, and a spec's thousands of reports would make checking quadratic.
    sg_schema = {t.lower(): {c: "TEXT" for c in schema[t.lower()]}
                 for t in tables if t.lower() in schema}
    try:
        qualified = qualify(tree.copy(), schema=sg_schema, dialect=DIALECT)
    except OptimizeError as e:
        problem = _unresolved(tree, str(e), schema, tables)
        if problem is None:
            return None
        raise problem from None
    except SqlglotError as e:
        raise _Problem(f"cannot resolve the query's columns: {e}") from None
    return list(qualified.named_selects)


# ------------------------------------------------------------ spec checks

class _Checker:
    """Collects every problem; `schema` grows as reports resolve, in dependency order."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.errors: list[SpecError] = []
        self.schema: dict[str, list[str]] = {t: list(c) for t, c in BUILTIN_COLUMNS.items()}
        for fn in spec.functions:
            self.schema[fn.table.lower()] = function_columns(fn)
        self.reports = {r.name.lower(): r for r in spec.reports}
        self.trees: dict[str, exp.Expression] = {}
        self.broken: set[str] = set()      # reports whose columns are unknown: not checked further
        self.suggestions = 200             # "did you mean" searches left: each scans every name

    def suggest(self, name: str, candidates) -> str:
        """_suggest over a spec-sized list, for the first errors only (the
        checking stays linear in the spec's size when every report is wrong)."""
        if self.suggestions <= 0:
            return ""
        self.suggestions -= 1
        return _suggest(name, candidates)

    def fail(self, obj, problem: _Problem, prefix: str, shift: int = 0) -> None:
        pos = getattr(obj, "sql_pos", ())
        line, column = obj.line, obj.column
        if problem.offset is not None and pos:
            line, column = pos[min(max(problem.offset - shift, 0), len(pos) - 1)]
        elif pos:
            line, column = pos[0]
        self.errors.append(SpecError(f"{prefix}: {problem.message}", obj.path, line, column))

    # ---- extra columns: one expression over the stored columns of its table
    def extra_column(self, fn: FunctionSpec, col: ColumnSpec) -> None:
        wrapper = "SELECT "
        what = f"column '{col.name}' of table '{fn.table}'"
        try:
            tree = _parse(f"{wrapper}{col.sql}\nFROM {fn.table}")
            if not isinstance(tree, exp.Select) or len(tree.selects) != 1 or tree.find(*_WRITE_TYPES):
                raise _Problem("an extra column is one SQL expression over the row, e.g. req->>'Path'")
            output_columns(tree, {fn.table.lower(): function_columns(fn, extra=False)})
        except _Problem as p:
            self.fail(col, p, what, shift=len(wrapper))

    # ---- reports
    def parse_reports(self) -> dict[str, list[tuple[str, int | None]]]:
        refs: dict[str, list] = {}
        for r in self.spec.reports:
            try:
                self.trees[r.name.lower()] = tree = parse_query(r.sql)
                refs[r.name.lower()] = table_refs(tree)
            except _Problem as p:
                self.fail(r, p, f"report '{r.name}'")
                self.broken.add(r.name.lower())
        return refs

    def unknown_tables(self, r: ReportSpec, refs: list) -> bool:
        bad = [(t, off) for t, off in refs if t.lower() not in self.schema and t.lower() not in self.reports]
        for t, off in bad:
            known = self.schema.keys() | self.reports.keys()
            self.fail(r, _Problem(f"unknown table '{t}'{self.suggest(t, known)}", off), f"report '{r.name}'")
        return bool(bad)

    def order(self, refs: dict[str, list]) -> list[ReportSpec]:
        """Depth first in file order: dependencies first, file order otherwise.

        Iterative, with the path as a list and a dict of its positions: a
        chain of thousands of reports neither recurses nor rescans the path."""
        done: set[str] = set()
        out: list[ReportSpec] = []
        for r in self.spec.reports:
            first = r.name.lower()
            if first in done:
                continue
            path, at = [first], {first: 0}                 # the reports being visited
            deps = [iter(refs.get(first, []))]             # each one's dependencies left
            while path:
                step = next(deps[-1], None)
                if step is None:
                    name = path.pop()
                    deps.pop()
                    del at[name]
                    done.add(name)
                    out.append(self.reports[name])
                    continue
                dep, off = step[0].lower(), step[1]
                if dep in at:
                    self.cycle(path[at[dep]:] + [dep], off)
                elif dep in self.reports and dep not in done:
                    at[dep] = len(path)
                    path.append(dep)
                    deps.append(iter(refs.get(dep, [])))
        return out

    def cycle(self, names: list[str], offset: int | None) -> None:
        closing = self.reports[names[-2]]
        path = " -> ".join(self.reports[n].name for n in names)
        self.fail(closing, _Problem(f"dependency cycle: {path}; a report can only read "
                                    f"tables that don't read it back", offset), f"report '{closing.name}'")
        self.broken.update(names)

    def resolve(self, r: ReportSpec, refs: list) -> None:
        """Check the columns and learn the report's own; a report that reads a
        broken one is not checked further (its error would only echo)."""
        name = r.name.lower()
        if name in self.broken or any(t.lower() in self.broken for t, _ in refs):
            self.broken.add(name)
            return
        try:
            cols = output_columns(self.trees[name], self.schema)
        except _Problem as p:
            self.fail(r, p, f"report '{r.name}'")
            self.broken.add(name)
            return
        if cols is None:        # unknowable (json_each): don't check what reads it
            self.broken.add(name)
        else:
            self.schema[name] = cols

    # ---- links
    def link_end(self, link: LinkSpec, end: LinkEnd, side: str) -> bool:
        what = f"link '{link.name}'"
        cols = self.schema.get(end.table.lower())
        if cols is None:
            if end.table.lower() in self.broken:
                return False
            known = self.schema.keys()
            self.errors.append(SpecError(f"{what}: unknown table '{end.table}' in '{side}'"
                                         f"{self.suggest(end.table, known)}", link.path, end.line, end.column))
            return False
        ok = True
        lower = {x.lower() for x in cols}
        for i, c in enumerate(end.columns):
            if c.lower() not in lower:
                line, column = end.column_pos[i] if i < len(end.column_pos) else (end.line, end.column)
                self.errors.append(SpecError(f"{what}: table '{end.table}' has no column '{c}'"
                                             f"{_suggest(c, cols)}", link.path, line, column))
                ok = False
        return ok

    def link(self, link: LinkSpec) -> None:
        a, b = link.left, link.right
        if len(a.columns) != len(b.columns):
            self.errors.append(SpecError(
                f"link '{link.name}': 'from' has {len(a.columns)} column(s) ({', '.join(a.columns)}) "
                f"but 'to' has {len(b.columns)} ({', '.join(b.columns)}); give both ends as many",
                link.path, b.line, b.column))
        self.link_end(link, a, "from")
        self.link_end(link, b, "to")


def check_spec(spec: Spec) -> list[SpecError]:
    """Check every piece of SQL of a parsed spec; returns all problems (empty: fine).

    Sets `spec.reports` to dependency order (stable w.r.t. file order) with
    each report's `depends_on` filled in (the tables it reads, CTEs excluded)."""
    ck = _Checker(spec)
    for fn in spec.functions:
        for col in fn.columns:
            ck.extra_column(fn, col)
    refs = ck.parse_reports()
    for r in spec.reports:
        if ck.unknown_tables(r, refs.get(r.name.lower(), [])):
            ck.broken.add(r.name.lower())
    ordered = ck.order(refs)
    for r in ordered:
        ck.resolve(r, refs.get(r.name.lower(), []))
    spec.reports = [dataclasses.replace(r, depends_on=tuple(dict.fromkeys(
        t for t, _ in refs.get(r.name.lower(), [])))) for r in ordered]
    for link in spec.links:
        ck.link(link)
    order = {path: i for i, path in enumerate(spec.files)}
    return sorted(ck.errors, key=lambda e: (order.get(e.path, len(order)), e.line, e.column))
