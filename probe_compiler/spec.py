"""exray.yaml: what to capture, parsed with a line and column for every node.

The parser walks PyYAML's node graph (the compose API keeps marks), driven by
schema tables: a mapping is described by a dict of `Key`s, so a new spec key
is one table entry plus, if it has a new shape, one value parser. The same
tables generate the JSON Schema (`python -m probe_compiler.spec --schema`).
Every error is a SpecError(message, path, line, column) with 1-based positions.
docs/spec.md documents every key.

    version: 1
    targets: [{exe: server}]
    include: [services/*/exray.yaml]
    functions:
      main.(*server).GetInfo:
        table: getinfo            # optional; default from the symbol
        capture:
          - req.ID                # shorthand: column name derived (req_ID)
          - expr: s.mu.state
            name: mu_state
        columns: {path: "req->>'Path'"}
    reports: {slow: "SELECT * FROM getinfo WHERE ..."}
    links: [{from: client(req_id), to: getinfo(req_ID)}]

The SQL in extra columns and reports is checked by probe_compiler.spec_sql.
A spec is untrusted input: reading it and what it includes is bounded by
ReadLimits (regular files inside the module root, sizes, counts, the glob
walk, aliases); docs/security.md lists the bounds.
"""
from __future__ import annotations

import bisect
import collections
import difflib
import fnmatch
import glob
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ExpressionError, SpecError
from .files import FileRefused, read_regular
from .expr import Expr, parse_expr, sanitize_identifier
from .sql_limits import CEILINGS, DEFAULTS, SqlLimits
from . import capture_limits, sql_limits
from .capture_limits import CaptureLimits

SPEC_VERSION = 1

# Names the snapshot itself uses: a function table may not take them.
RESERVED_TABLES = frozenset({"processes", "goroutines", "frames", "meta", "all_captured_data"})
# Columns every function table has before the captures.
RESERVED_COLUMNS = frozenset({"process_id", "goid", "depth", "_errors"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# How a column's integer is shown (CLI tables, editor hints); the stored value
# stays the integer. Keep docs/spec.md and the JSON Schema in step.
DISPLAY_TYPES = frozenset({"timestamp_ns", "duration_ns", "bytes", "hex"})


@dataclass(frozen=True)
class CaptureSpec:
    expr: str
    name: str
    line: int
    column: int
    ast: Expr | None = field(default=None, compare=False, repr=False)
    display: str | None = None          # one of DISPLAY_TYPES


@dataclass(frozen=True)
class ColumnSpec:
    """An extra column of a function table: SQL over the row (`req->'a.b'`)."""
    name: str
    sql: str
    line: int
    column: int
    display: str | None = None
    path: str = "exray.yaml"
    # (line, column) of each character of `sql`, plus one past the end: maps a
    # SQL error's offset back into the YAML, whatever the scalar's style.
    sql_pos: tuple = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class FunctionSpec:
    symbol: str
    table: str
    captures: list[CaptureSpec]
    line: int
    column: int
    columns: list[ColumnSpec] = field(default_factory=list)
    path: str = "exray.yaml"


@dataclass(frozen=True)
class ReportSpec:
    """A derived table: one SELECT over function, built-in and earlier derived tables."""
    name: str
    sql: str
    line: int
    column: int
    path: str = "exray.yaml"
    depends_on: tuple[str, ...] = ()    # tables it reads (CTE names excluded)
    description: str = ""
    sql_pos: tuple = field(default=(), compare=False, repr=False)   # as ColumnSpec.sql_pos


@dataclass(frozen=True)
class LinkEnd:
    table: str
    columns: tuple[str, ...]
    line: int = field(default=0, compare=False)
    column: int = field(default=0, compare=False)
    # (line, column) of each column name, for errors that point at one
    column_pos: tuple = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class LinkSpec:
    """Rows of two tables whose column sets are equal are linked, both ways."""
    name: str
    left: LinkEnd
    right: LinkEnd
    description: str
    line: int
    column: int
    path: str = "exray.yaml"


@dataclass(frozen=True)
class FunctionPattern:
    """A function a target expects its binary to have: a spec symbol, or a
    glob over them where only `*` is special (any run of characters, dots,
    slashes and parentheses included); `[...]` and `(*T)` are literal."""
    pattern: str
    line: int = 0
    column: int = 0

    def matches(self, symbol: str) -> bool:
        if symbol == self.pattern:
            return True
        rx = ".*".join(re.escape(part) for part in self.pattern.split("*"))
        return re.fullmatch(rx, symbol, re.S) is not None


@dataclass(frozen=True)
class TargetSpec:
    """Which processes a snapshot takes when given no pids, and which of the
    spec's functions their binary must have (`functions`: a missing one is an
    error, where otherwise a function only some binaries have is fine)."""
    exe: str | None = None              # executable base name, as in /proc/PID/exe
    pid: int | None = None
    agent: str | None = None            # host:port of a remote agent; None = this machine
    line: int = 0
    column: int = 0
    path: str = "exray.yaml"
    functions: tuple[FunctionPattern, ...] = ()

    def names(self, exe: str | None, pid: int | None = None) -> bool:
        """Whether this target stands for a process (or binary) with this
        executable base name and pid (either may be None: unknown)."""
        if self.pid is not None:
            return self.pid == pid
        return exe is not None and exe.removesuffix(" (deleted)") == self.exe

    def expects(self, symbol: str) -> FunctionPattern | None:
        """The entry of `functions` that names `symbol`, if any."""
        return next((f for f in self.functions if f.matches(symbol)), None)


@dataclass
class Spec:
    functions: list[FunctionSpec]
    version: int = SPEC_VERSION
    path: str = "exray.yaml"
    text: str = ""
    reports: list[ReportSpec] = field(default_factory=list)   # in dependency order
    links: list[LinkSpec] = field(default_factory=list)
    targets: list[TargetSpec] = field(default_factory=list)
    files: list[str] = field(default_factory=list)            # every file merged into this spec
    sql_limits: SqlLimits = DEFAULTS                          # bounds on its SQL (`limits:`)
    capture_limits: CaptureLimits = capture_limits.DEFAULTS   # bounds on its snapshots (`limits:`)
    limits_set: dict = field(default_factory=dict, repr=False, compare=False)  # what this file's `limits:` says

    def function(self, symbol: str) -> FunctionSpec | None:
        for f in self.functions:
            if f.symbol == symbol:
                return f
        return None


def default_table_name(symbol: str) -> str:
    """`main.(*server).GetInfo` -> `main_server_GetInfo`."""
    return sanitize_identifier(symbol)


# ------------------------------------------------------------ schema machinery

class _Ctx:
    def __init__(self, path: str, text: str = ""):
        self.path, self.text = path, text
        self._line_starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]

    def error(self, node: Node | None, message: str, col_offset: int = 0) -> SpecError:
        if node is None:
            return SpecError(message, self.path, 0, 0)
        m = node.start_mark
        return SpecError(message, self.path, m.line + 1, m.column + 1 + col_offset)

    def position(self, index: int) -> tuple[int, int]:
        """1-based (line, column) of a character index into the file."""
        line = bisect.bisect_right(self._line_starts, index) - 1
        return line + 1, index - self._line_starts[line] + 1

    def value_positions(self, node: ScalarNode) -> tuple:
        """(line, column) of each character of a scalar's value, plus one past its end.

        The value's characters appear in order in the source slice, so a greedy
        match finds them through quotes, escapes ('' in single quotes), block
        indentation and folded lines alike. Skipping the header of a block
        scalar (`|`, `>` and a comment) and the opening quote keeps those
        characters from matching."""
        src, end = self.text, node.end_mark.index
        i = node.start_mark.index
        if node.style in ("|", ">"):
            i = src.find("\n", i, end) + 1 or i
        elif node.style in ("'", '"'):
            i += 1
        out = []
        absent: set[str] = set()    # not in the rest of the slice: no need to search again
        for ch in node.value:
            j = -1 if ch in absent else src.find(ch, i, end)
            if j < 0:
                absent.add(ch)
            else:
                i = j + 1
            out.append(self.position(j if j >= 0 else i))
        out.append(self.position(min(i, end)))
        return tuple(out)


Parser = Callable[[Node, _Ctx], Any]
Schema = Callable[[], dict]


@dataclass(frozen=True)
class Key:
    parse: Parser
    required: bool = False
    doc: str = ""
    schema: Schema | None = None       # JSON Schema of the value (a thunk: tables refer to each other)


_KIND_NAMES = {
    "tag:yaml.org,2002:str": "a string", "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number", "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:null": "null",
}


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _KIND_NAMES.get(node.tag, "a scalar")


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _is_str(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:str"


def _mapping(node: Node, keys: dict[str, Key], ctx: _Ctx, what: str) -> dict[str, tuple[Any, Node]]:
    """Check a mapping against `keys`; returns key -> (parsed value, key node)."""
    if not isinstance(node, MappingNode):
        raise ctx.error(node, f"expected a mapping for {what}, got {_kind(node)}")
    out: dict[str, tuple[Any, Node]] = {}
    for knode, vnode in node.value:
        k = _scalar_str(knode, ctx, "a key")
        if k in out:
            raise ctx.error(knode, f"duplicate key '{k}'")
        if k not in keys:
            close = difflib.get_close_matches(k, list(keys), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ctx.error(knode, f"unknown key '{k}' in {what} ({hint}expected one of {', '.join(keys)})")
        out[k] = (keys[k].parse(vnode, ctx), knode)
    missing = [k for k, d in keys.items() if d.required and k not in out]
    if missing:
        raise ctx.error(node, f"missing key '{missing[0]}' in {what}")
    return out


def _entries(node: Node, ctx: _Ctx, what: str, kind: str) -> list[tuple[Node, Node]]:
    """The (key, value) nodes of a mapping section (`functions`, `columns`, ...); null is empty."""
    if _is_null(node):
        return []
    if not isinstance(node, MappingNode):
        raise ctx.error(node, f"expected a mapping of {kind} for '{what}', got {_kind(node)}")
    return node.value


def _items(node: Node, ctx: _Ctx, what: str) -> list[Node]:
    """The items of a list section (`targets`, `links`); null is empty."""
    if _is_null(node):
        return []
    if not isinstance(node, SequenceNode):
        raise ctx.error(node, f"expected a list for '{what}', got {_kind(node)}")
    return node.value


def _scalar_str(node: Node, ctx: _Ctx, what: str) -> str:
    if not _is_str(node):
        raise ctx.error(node, f"expected a string for {what}, got {_kind(node)}")
    return node.value


def _str(what: str) -> Parser:
    return lambda node, ctx: (_scalar_str(node, ctx, what), node)


def _version(node: Node, ctx: _Ctx) -> int:
    if not isinstance(node, ScalarNode) or node.tag != "tag:yaml.org,2002:int":
        raise ctx.error(node, f"expected an integer for 'version', got {_kind(node)}")
    v = int(node.value, 0)
    if v != SPEC_VERSION:
        raise ctx.error(node, f"unsupported spec version {v} (this Ex-Ray reads version {SPEC_VERSION})")
    return v


def _display(node: Node, ctx: _Ctx) -> tuple[str, Node]:
    text = _scalar_str(node, ctx, "'display'")
    if text not in DISPLAY_TYPES:
        close = difflib.get_close_matches(text, sorted(DISPLAY_TYPES), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ctx.error(node, f"unknown display type '{text}' ({hint}use one of "
                              f"{', '.join(sorted(DISPLAY_TYPES))})")
    return text, node


def _check_ident(node: Node, name: str, ctx: _Ctx, what: str) -> None:
    if not _IDENT.match(name):
        raise ctx.error(node, f"invalid {what} '{name}': use letters, digits and '_', "
                              f"not starting with a digit")


def _value(d: dict, key: str, default=None):
    """The parsed value of an optional key of a long form (parsers return (value, node))."""
    return d[key][0][0] if key in d else default


# ------------------------------------------------------------ functions

def _expr_at(node: ScalarNode, text: str, ctx: _Ctx) -> Expr:
    try:
        return parse_expr(text)
    except ExpressionError as e:
        quoted = 1 if node.style in ("'", '"') else 0
        col = getattr(e, "column", 0)
        if node.start_mark.line != node.end_mark.line or col == 0:
            raise ctx.error(node, f"bad expression {text!r}: {e}") from None
        raise ctx.error(node, f"bad expression {text!r}: {e}", quoted + col - 1) from None


def _capture(node: Node, ctx: _Ctx) -> CaptureSpec:
    m = node.start_mark
    if isinstance(node, ScalarNode):
        text = _scalar_str(node, ctx, "a capture expression")
        return CaptureSpec(text, "", m.line + 1, m.column + 1, _expr_at(node, text, ctx))
    d = _mapping(node, CAPTURE_KEYS, ctx, "a capture")
    text, enode = d["expr"][0]
    name = _value(d, "name", "")
    if "name" in d:
        _check_ident(d["name"][0][1], name, ctx, "column name")
    return CaptureSpec(text, name, m.line + 1, m.column + 1, _expr_at(enode, text, ctx),
                       display=_value(d, "display"))


def _captures(node: Node, ctx: _Ctx) -> list[tuple[CaptureSpec, Node]]:
    if _is_null(node):
        return []
    if not isinstance(node, SequenceNode):
        raise ctx.error(node, f"expected a list of expressions for 'capture', got {_kind(node)}")
    return [(_capture(item, ctx), item) for item in node.value]


def _sql_scalar(node: Node, ctx: _Ctx, what: str) -> tuple[str, tuple]:
    text = _scalar_str(node, ctx, what)
    if not text.strip():
        raise ctx.error(node, f"empty SQL for {what}")
    return text, ctx.value_positions(node)


def _extra_column(knode: Node, vnode: Node, ctx: _Ctx) -> ColumnSpec:
    name = _scalar_str(knode, ctx, "a column name")
    _check_ident(knode, name, ctx, "column name")
    m = knode.start_mark
    if _is_str(vnode):                  # shorthand: the SQL itself
        sql, pos = _sql_scalar(vnode, ctx, f"column '{name}'")
        return ColumnSpec(name, sql, m.line + 1, m.column + 1, None, ctx.path, pos)
    d = _mapping(vnode, COLUMN_KEYS, ctx, f"column '{name}'")
    sql, pos = d["sql"][0]
    return ColumnSpec(name, sql, m.line + 1, m.column + 1, _value(d, "display"), ctx.path, pos)


def _extra_columns(node: Node, ctx: _Ctx) -> list[ColumnSpec]:
    return [_extra_column(k, v, ctx) for k, v in _entries(node, ctx, "columns", "column names")]


def _column_taken(columns: dict[str, CaptureSpec], lname: str) -> tuple[CaptureSpec | None, str]:
    """The capture a new column name clashes with, directly or through a raw_ twin."""
    taken = columns.get(lname)
    if taken is not None:
        return taken, ""
    twin = columns.get(lname[4:]) if lname.startswith("raw_") else columns.get("raw_" + lname)
    return twin, "; every column x comes with a raw_x twin"


def _function_captures(d: dict, table: str, ctx: _Ctx) -> tuple[list[CaptureSpec], dict]:
    captures: list[CaptureSpec] = []
    columns: dict[str, CaptureSpec] = {}
    for cap, cnode in d.get("capture", ([], None))[0]:
        name = cap.name or sanitize_identifier(cap.expr)
        cap = CaptureSpec(cap.expr, name, cap.line, cap.column, cap.ast, cap.display)
        lname = name.lower()
        if lname in RESERVED_COLUMNS:
            raise ctx.error(cnode, f"column name '{name}' is reserved; give this capture a 'name:'")
        taken, why = _column_taken(columns, lname)
        if taken is not None:
            raise ctx.error(cnode, f"duplicate column '{name}' in table '{table}' "
                                   f"(clashes with '{taken.expr}' at line {taken.line}{why}); "
                                   f"give one a 'name:'")
        columns[lname] = cap
        captures.append(cap)
    return captures, columns


def _check_extra_names(extra: list[ColumnSpec], columns: dict, table: str, ctx: _Ctx) -> None:
    seen: set[str] = set()
    for col in extra:
        lname = col.name.lower()
        taken, why = _column_taken(columns, lname)
        clash = ("is reserved" if lname in RESERVED_COLUMNS else
                 f"clashes with capture '{taken.expr}' at line {taken.line}{why}" if taken else
                 "is defined twice" if lname in seen else "")
        if clash:
            raise SpecError(f"column '{col.name}' of table '{table}' {clash}; rename it",
                            ctx.path, col.line, col.column)
        seen.add(lname)


def _function(symbol: str, knode: Node, vnode: Node, ctx: _Ctx) -> tuple[FunctionSpec, Node]:
    m = knode.start_mark
    d = {} if _is_null(vnode) else _mapping(vnode, FUNCTION_KEYS, ctx, f"function '{symbol}'")
    if "table" in d:
        table, tnode = d["table"][0]
        _check_ident(tnode, table, ctx, "table name")
    else:
        table, tnode = default_table_name(symbol), knode
    if _reserved_table(table):
        raise ctx.error(tnode, f"table name '{table}' is reserved by Ex-Ray; set 'table:' to another name")
    captures, columns = _function_captures(d, table, ctx)
    extra = d["columns"][0] if "columns" in d else []
    _check_extra_names(extra, columns, table, ctx)
    return FunctionSpec(symbol, table, captures, m.line + 1, m.column + 1, extra, ctx.path), tnode


def _reserved_table(name: str) -> bool:
    return name.lower() in RESERVED_TABLES or name.lower().startswith("sqlite_")


def _functions(node: Node, ctx: _Ctx) -> list[FunctionSpec]:
    out: list[FunctionSpec] = []
    seen: dict[str, FunctionSpec] = {}
    tables: dict[str, FunctionSpec] = {}
    for knode, vnode in _entries(node, ctx, "functions", "Go symbols"):
        symbol = _scalar_str(knode, ctx, "a function symbol").strip()
        if not symbol:
            raise ctx.error(knode, "empty function symbol")
        if symbol in seen:
            raise ctx.error(knode, f"duplicate function '{symbol}' (first at line {seen[symbol].line})")
        fn, tnode = _function(symbol, knode, vnode, ctx)
        other = tables.get(fn.table.lower())
        if other is not None:
            raise ctx.error(tnode, f"duplicate table '{fn.table}': {other.symbol} (line {other.line}) "
                                   f"already uses it; set 'table:' to another name")
        seen[symbol] = fn
        tables[fn.table.lower()] = fn
        out.append(fn)
    return out


# ------------------------------------------------------------ reports, links, targets, include

def _report(knode: Node, vnode: Node, ctx: _Ctx) -> ReportSpec:
    name = _scalar_str(knode, ctx, "a report name")
    _check_ident(knode, name, ctx, "report name")
    if _reserved_table(name):
        raise ctx.error(knode, f"report name '{name}' is reserved by Ex-Ray; choose another name")
    m = knode.start_mark
    if _is_str(vnode):                  # shorthand: the SQL itself
        sql, pos = _sql_scalar(vnode, ctx, f"report '{name}'")
        return ReportSpec(name, sql, m.line + 1, m.column + 1, ctx.path, sql_pos=pos)
    d = _mapping(vnode, REPORT_KEYS, ctx, f"report '{name}'")
    sql, pos = d["sql"][0]
    return ReportSpec(name, sql, m.line + 1, m.column + 1, ctx.path,
                      description=_value(d, "description", ""), sql_pos=pos)


def _reports(node: Node, ctx: _Ctx) -> list[ReportSpec]:
    return [_report(k, v, ctx) for k, v in _entries(node, ctx, "reports", "report names")]


_LINK_END = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(([^()]*)\)\s*\Z")


def _link_end(node: Node, ctx: _Ctx) -> LinkEnd:
    text = _scalar_str(node, ctx, "a link end")
    m = _LINK_END.match(text)
    names = [c.strip() for c in m.group(2).split(",")] if m else []
    if m is None or not all(_IDENT.match(c) for c in names):
        raise ctx.error(node, f"bad link end {text!r}: write table(column, ...), e.g. handle(req_ID)")
    pos = ctx.value_positions(node)
    starts = [m.start(2) + m.group(2).index(c) for c in names]  # names are unique words here
    return LinkEnd(m.group(1), tuple(names), *pos[0], tuple(pos[s] for s in starts))


def _link(node: Node, ctx: _Ctx) -> LinkSpec:
    d = _mapping(node, LINK_KEYS, ctx, "a link")
    left, right = d["from"][0], d["to"][0]
    name = _value(d, "name") or f"{left.table}_to_{right.table}"
    if "name" in d:
        _check_ident(d["name"][0][1], name, ctx, "link name")
    m = node.start_mark
    return LinkSpec(name, left, right, _value(d, "description", ""), m.line + 1, m.column + 1, ctx.path)


def _links(node: Node, ctx: _Ctx) -> list[LinkSpec]:
    return [_link(item, ctx) for item in _items(node, ctx, "links")]


def _pid(node: Node, ctx: _Ctx) -> tuple[int, Node]:
    if not isinstance(node, ScalarNode) or node.tag != "tag:yaml.org,2002:int" or int(node.value, 0) <= 0:
        raise ctx.error(node, f"expected a positive integer for 'pid', got {_kind(node)}")
    return int(node.value, 0), node


_AGENT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):\d{1,5}\Z")


def _agent(node: Node, ctx: _Ctx) -> tuple[str, Node]:
    text = _scalar_str(node, ctx, "'agent'")
    if not _AGENT.match(text):
        raise ctx.error(node, f"bad agent address {text!r}: write host:port, e.g. 10.0.0.7:7701")
    return text, node


def _expected_functions(node: Node, ctx: _Ctx) -> tuple[FunctionPattern, ...]:
    """A target's `functions`: a list of symbols or globs; a single string is a list of one."""
    if not (_is_str(node) or _is_null(node) or isinstance(node, SequenceNode)):
        raise ctx.error(node, f"expected a list of Go symbols (or globs) for a target's 'functions', "
                              f"got {_kind(node)}")
    nodes = [node] if _is_str(node) else _items(node, ctx, "functions")
    out = []
    for n in nodes:
        text = _scalar_str(n, ctx, "an expected function (a Go symbol or a glob)").strip()
        if not text:
            raise ctx.error(n, "empty function symbol")
        line, column = ctx.value_positions(n)[0]
        out.append(FunctionPattern(text, line, column))
    return tuple(out)


def _target(node: Node, ctx: _Ctx) -> TargetSpec:
    d = _mapping(node, TARGET_KEYS, ctx, "a target")
    exe, pid = _value(d, "exe"), _value(d, "pid")
    if (exe is None) == (pid is None):
        raise ctx.error(node, "a target names its processes by 'exe' or by 'pid' (one of the two)")
    m = node.start_mark
    expected = d["functions"][0] if "functions" in d else ()
    return TargetSpec(exe, pid, _value(d, "agent"), m.line + 1, m.column + 1, ctx.path, expected)


def _targets(node: Node, ctx: _Ctx) -> list[TargetSpec]:
    return [_target(item, ctx) for item in _items(node, ctx, "targets")]


def _limit(name: str, bounds=sql_limits) -> Parser:
    """A bound of `limits:`: a positive number, at most its ceiling (which a spec cannot raise).
    `bounds`: the module of its kind, sql_limits or capture_limits."""
    integer = bounds.is_integer_key(name)
    CEILINGS = bounds.CEILINGS

    def parse(node: Node, ctx: _Ctx):
        tags = ("tag:yaml.org,2002:int",) if integer else ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
        if not isinstance(node, ScalarNode) or node.tag not in tags:
            raise ctx.error(node, f"expected {'an integer' if integer else 'a number'} for "
                                  f"'limits.{name}', got {_kind(node)}")
        v = yaml.safe_load(node.value)
        ceiling = getattr(CEILINGS, name)
        if not v > 0:
            raise ctx.error(node, f"'limits.{name}' must be more than 0")
        if v > ceiling:
            raise ctx.error(node, f"'limits.{name}' is {bounds.text(v)}, above its ceiling "
                                  f"{bounds.text(ceiling)}, "
                                  f"which a spec cannot raise ({getattr(bounds, 'WHERE', 'docs/security.md')})")
        return v
    return parse


def _limits(node: Node, ctx: _Ctx) -> dict[str, float]:
    """The bounds the file sets (the others keep their defaults)."""
    if _is_null(node):
        return {}
    return {k: v for k, (v, _) in _mapping(node, LIMIT_KEYS, ctx, "'limits'").items()}


def _includes(node: Node, ctx: _Ctx) -> list[tuple[str, Node]]:
    """Patterns with their nodes; a single string is a list of one."""
    nodes = [node] if _is_str(node) else _items(node, ctx, "include")
    return [(_scalar_str(n, ctx, "an include pattern"), n) for n in nodes]


# ------------------------------------------------------------ the tables

def _s(**kw) -> Schema:
    return lambda: kw


def _ref(name: str) -> dict:
    return {"$ref": f"#/$defs/{name}"}


_SQL_DOC = "SQLite SQL"
_DISPLAY_SCHEMA = _s(enum=sorted(DISPLAY_TYPES))
def _anchored(rx: re.Pattern) -> str:
    """A Python regex used with match() as an ECMA pattern (JSON Schema patterns search)."""
    return "^" + rx.pattern.replace(r"\Z", "$")


_IDENT_SCHEMA = {"type": "string", "pattern": _anchored(_IDENT)}

# The schema tables. A new key is an entry here (plus a parser for a new shape).
TOP_KEYS: dict[str, Key] = {
    "version": Key(_version, required=True, doc="spec format version; must be 1",
                   schema=_s(const=SPEC_VERSION)),
    "targets": Key(_targets, doc="the processes a snapshot takes: the editor's snapshot command, and `exray snapshot` with no pids",
                   schema=lambda: {"type": ["array", "null"], "items": _ref("target")}),
    "include": Key(_includes, doc="other spec files to merge, paths or globs relative to this file",
                   schema=lambda: {"anyOf": [{"type": "string"},
                                             {"type": ["array", "null"], "items": {"type": "string"}}]}),
    "functions": Key(_functions, doc="Go symbol -> what to capture in its frames",
                     schema=lambda: {"type": ["object", "null"],
                                     "additionalProperties": {"anyOf": [_ref("function"), {"type": "null"}]}}),
    "reports": Key(_reports, doc="derived tables: name -> an SQL query over earlier tables",
                   schema=lambda: {"type": ["object", "null"], "propertyNames": _IDENT_SCHEMA,
                                   "additionalProperties": {"anyOf": [{"type": "string"}, _ref("report")]}}),
    "links": Key(_links, doc="column sets that tie rows of two tables together, both ways",
                 schema=lambda: {"type": ["array", "null"], "items": _ref("link")}),
    "limits": Key(_limits, doc="bounds on the SQL of extra columns, reports and links (docs/security.md) "
                               "and on what a snapshot's pause reads (docs/read-program.md); "
                               "an included file can only lower them",
                  schema=lambda: {"anyOf": [_ref("limits"), {"type": "null"}]}),
}
LIMIT_KEYS: dict[str, Key] = {
    name: Key(_limit(name, bounds), doc=f"{bounds.DOCS[name]} (default {bounds.text(getattr(bounds.DEFAULTS, name))}, "
                                        f"at most {bounds.text(getattr(bounds.CEILINGS, name))})",
              schema=_s(type="integer" if bounds.is_integer_key(name) else "number",
                        exclusiveMinimum=0, maximum=getattr(bounds.CEILINGS, name)))
    # the SQL's bounds, then the capture's (the pause, stacks, values: probe_compiler/capture_limits.py)
    for bounds in (sql_limits, capture_limits) for name in bounds.key_names()
}
FUNCTION_KEYS: dict[str, Key] = {
    "table": Key(_str("'table'"), doc="name of the function table; default from the symbol",
                 schema=lambda: _IDENT_SCHEMA),
    "capture": Key(_captures, doc="expressions to capture, one column each",
                   schema=lambda: {"type": ["array", "null"],
                                   "items": {"anyOf": [{"type": "string"}, _ref("capture")]}}),
    "columns": Key(_extra_columns, doc="extra columns: name -> SQL over this table's row",
                   schema=lambda: {"type": ["object", "null"], "propertyNames": _IDENT_SCHEMA,
                                   "additionalProperties": {"anyOf": [{"type": "string"}, _ref("column")]}}),
}
CAPTURE_KEYS: dict[str, Key] = {
    "expr": Key(_str("'expr'"), required=True, doc="a Go expression over the function's variables",
                schema=_s(type="string")),
    "name": Key(_str("'name'"), doc="column name; default derived from the expression",
                schema=lambda: _IDENT_SCHEMA),
    "display": Key(_display, doc="how to show the integer: " + ", ".join(sorted(DISPLAY_TYPES)),
                   schema=_DISPLAY_SCHEMA),
}
COLUMN_KEYS: dict[str, Key] = {
    "sql": Key(lambda n, c: _sql_scalar(n, c, "'sql'"), required=True,
               doc=f"{_SQL_DOC} expression over the row's columns, e.g. req->>'Path'", schema=_s(type="string")),
    "display": Key(_display, doc="how to show the integer: " + ", ".join(sorted(DISPLAY_TYPES)),
                   schema=_DISPLAY_SCHEMA),
}
REPORT_KEYS: dict[str, Key] = {
    "sql": Key(lambda n, c: _sql_scalar(n, c, "'sql'"), required=True,
               doc=f"one {_SQL_DOC} query (SELECT, WITH ... SELECT, UNION ...)", schema=_s(type="string")),
    "description": Key(_str("'description'"), doc="what the report shows", schema=_s(type="string")),
}
LINK_KEYS: dict[str, Key] = {
    "name": Key(_str("'name'"), doc="link name; default <from table>_to_<to table>",
                schema=lambda: _IDENT_SCHEMA),
    "from": Key(_link_end, required=True, doc="one end: table(column, ...)",
                schema=lambda: _LINK_END_SCHEMA),
    "to": Key(_link_end, required=True, doc="the other end: table(column, ...), as many columns",
              schema=lambda: _LINK_END_SCHEMA),
    "description": Key(_str("'description'"), doc="what the link means", schema=_s(type="string")),
}
TARGET_KEYS: dict[str, Key] = {
    "exe": Key(_str("'exe'"), doc="executable base name, as /proc/PID/exe names it",
               schema=_s(type="string")),
    "pid": Key(_pid, doc="a process id", schema=_s(type="integer", minimum=1)),
    "agent": Key(_agent, doc="host:port of a remote agent; default this machine",
                 schema=lambda: {"type": "string", "pattern": _anchored(_AGENT)}),
    "functions": Key(_expected_functions,
                     doc="spec functions this target's binary must have (symbols, or globs with *); "
                         "a missing one is an error",
                     schema=lambda: {"anyOf": [{"type": "string"},
                                               {"type": ["array", "null"], "items": {"type": "string"}}]}),
}
_LINK_END_SCHEMA = {"type": "string", "pattern": _anchored(_LINK_END)}


# ------------------------------------------------------------ JSON Schema

_DEFS = {  # $defs name -> (key table, doc, extra constraints)
    "function": ("FUNCTION_KEYS", "what to capture in a function's frames", {}),
    "capture": ("CAPTURE_KEYS", "a capture in long form", {}),
    "column": ("COLUMN_KEYS", "an extra column in long form", {}),
    "report": ("REPORT_KEYS", "a derived table in long form", {}),
    "link": ("LINK_KEYS", "a link between two tables", {}),
    "limits": ("LIMIT_KEYS", "bounds on the spec's SQL and on its snapshots' pauses and captures, "
                             "within ceilings a spec cannot raise", {}),
    "target": ("TARGET_KEYS", "processes to snapshot",
               {"oneOf": [{"required": ["exe"]}, {"required": ["pid"]}]}),
}


def _object_schema(keys: dict[str, Key], doc: str) -> dict:
    out = {"type": "object", "description": doc, "additionalProperties": False,
           "properties": {k: {"description": key.doc, **(key.schema() if key.schema else {})}
                          for k, key in keys.items()}}
    required = [k for k, key in keys.items() if key.required]
    if required:
        out["required"] = required
    return out


def json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of exray.yaml, from the key tables."""
    tables = globals()
    top = _object_schema(TOP_KEYS, "Ex-Ray spec (exray.yaml): what a snapshot captures")
    defs = {name: {**_object_schema(tables[t], doc), **extra} for name, (t, doc, extra) in _DEFS.items()}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://exray.dev/exray.schema.json", "title": "exray.yaml", **top, "$defs": defs}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"


SCHEMA_PATH = Path(__file__).with_name("exray.schema.json")


# ------------------------------------------------------------ reading files, bounded

@dataclass(frozen=True)
class ReadLimits:
    """Bounds on reading a spec and the files it includes. A committed spec
    is untrusted input (it may come from a colleague or a stranger): reading
    it ends soon, in bounded memory, without leaving the module's folder.
    docs/security.md lists them."""
    max_file_bytes: int = 1 << 20       # one spec file, the top one and each include
    max_total_bytes: int = 4 << 20      # every file merged into one spec
    max_files: int = 256                # files merged into one spec, the top one included
    max_glob_entries: int = 20_000      # directory entries one include pattern may look at
    max_glob_depth: int = 16            # folders one `**` may descend
    max_nodes: int = 1_000_000          # YAML nodes of one file, each alias counted as what it repeats


READ_LIMITS = ReadLimits()

class _Refused(Exception):
    """Why a file can't be read as a spec; the caller says where."""


def _read_bounded(path: str, limit: int, what: str = "the limit of one spec file") -> str:
    """A regular file's UTF-8 text, or _Refused (files.read_regular: never
    blocks, never reads more than `limit` + 1 bytes)."""
    try:
        data = read_regular(path, limit, what)
    except FileRefused as e:
        why = str(e)
        if why.startswith("it is ") and "bytes, over" in why:
            why += "; split the spec or trim it"
        raise _Refused(why) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Refused(f"not UTF-8 text ({e.reason} at byte {e.start}); a spec is YAML text") from None


def _inside(path: str, root: str) -> bool:
    return root == os.sep or path == root or path.startswith(root + os.sep)


class _Includes:
    """Finds and reads the files `include:` names, within `limits`: regular
    files inside the module root (the top spec's folder, symlinks resolved),
    found by a glob walk that looks at a bounded number of entries."""

    def __init__(self, top: str, limits: ReadLimits, top_bytes: int):
        self.root = os.path.realpath(os.path.dirname(os.path.abspath(top)) or ".")
        self.limits, self.total, self.files = limits, top_bytes, 1

    def match(self, pattern: str, node: Node, ctx: _Ctx) -> list[str]:
        """The files `pattern` (relative to ctx's file) names, sorted; SpecError at the node."""
        def fail(why: str) -> SpecError:
            return ctx.error(node, f"include '{pattern}' {why}")
        if "\0" in pattern:
            raise fail("contains a NUL character")
        full = os.path.normpath(os.path.join(os.path.dirname(ctx.path), pattern))
        parts = full.split(os.sep)
        magic = next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))
        prefix = os.sep.join(parts[:magic]) or (os.sep if full.startswith(os.sep) else ".")
        real = os.path.realpath(prefix)
        if not _inside(real, self.root):
            via = f" (through a symlink to {real})" if real != os.path.abspath(prefix) else ""
            raise fail(f"is outside the module root {self.root} (the folder of the top spec "
                       f"file){via}: a spec includes only files of its own module")
        if magic == len(parts):                     # a plain path
            if not os.path.lexists(full):
                raise fail(f"matches no file (paths are relative to {ctx.path})")
            found = [full]
        else:
            found = sorted(self._walk(prefix, parts[magic:], fail))
            if not found:
                raise fail(f"matches no file (paths are relative to {ctx.path})")
        found = [os.path.normpath(f) for f in found]
        for f in found:
            real = os.path.realpath(f)
            if not _inside(real, self.root):
                raise fail(f"names {f}, a symlink to {real}, outside the module root {self.root} "
                           f"(the folder of the top spec file)")
        return found

    def _walk(self, top: str, parts: list[str], fail) -> list[str]:
        """Files under `top` matching the pattern's components (fnmatch; `**`:
        any number of folders; names starting with '.' only by a pattern that
        does). Visits at most max_glob_entries entries, never descends more
        than max_glob_depth folders for one `**`, and never follows a symlink
        to a folder out of the root."""
        lim, seen, out = self.limits, 0, []
        stack = [(top, 0, 0)]               # (folder, index into parts, depth of the current **)
        while stack:
            folder, i, depth = stack.pop()
            part, last = parts[i], i == len(parts) - 1
            if part == "**":
                if depth > lim.max_glob_depth:
                    raise fail(f"descends more than {lim.max_glob_depth} folders at '**'; "
                               f"name the folders the spec files are in")
                if not last:
                    stack.append((folder, i + 1, 0))
            elif not glob.has_magic(part):
                path = os.path.join(folder, part)
                if last:
                    out += [path] if os.path.lexists(path) else []
                elif os.path.isdir(path):
                    stack.append((path, i + 1, 0))
                continue
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue                     # unreadable or gone: nothing of it matches
            for e in entries:
                seen += 1
                if seen > lim.max_glob_entries:
                    raise fail(f"looks at more than {lim.max_glob_entries:,} directory entries; "
                               f"narrow it (e.g. services/*/exray.yaml)")
                hidden = e.name.startswith(".") and not part.startswith(".")
                try:
                    is_dir = e.is_dir()
                except OSError:
                    continue
                if part == "**":
                    if hidden:
                        continue
                    if is_dir and self._may_enter(e):
                        stack.append((e.path, i, depth + 1))
                    elif not is_dir and last:
                        out.append(e.path)
                elif not hidden and fnmatch.fnmatchcase(e.name, part):
                    if last and not is_dir:
                        out.append(e.path)
                    elif not last and is_dir and self._may_enter(e):
                        stack.append((e.path, i + 1, 0))
        return out

    def _may_enter(self, e: os.DirEntry) -> bool:
        return not e.is_symlink() or _inside(os.path.realpath(e.path), self.root)

    def read(self, path: str, node: Node, ctx: _Ctx) -> str:
        lim = self.limits
        if self.files >= lim.max_files:
            raise ctx.error(node, f"cannot include {path}: the spec would span more than "
                                  f"{lim.max_files} files")
        room = lim.max_total_bytes - self.total
        try:
            text = (_read_bounded(path, lim.max_file_bytes) if room >= lim.max_file_bytes else
                    _read_bounded(path, room, f"what is left of the limit of all the spec's files "
                                              f"together ({lim.max_total_bytes:,} bytes)"))
        except _Refused as e:
            raise ctx.error(node, f"cannot include {path}: {e}") from None
        self.files += 1
        self.total += len(text.encode("utf-8", "surrogatepass"))
        return text


# ------------------------------------------------------------------------ API

def _expanded_size(root: Node, limit: int) -> int:
    """How many nodes the document has with every alias counted as the nodes
    it repeats (the cost of walking it); stops counting past `limit`. An
    alias of an enclosing node (a cycle) counts as `limit`."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if isinstance(node, ScalarNode):
            sizes[key] = 1
            continue
        kids = [n for kv in node.value for n in (kv if isinstance(node, MappingNode) else (kv,))]
        if done:
            on_path.discard(key)
            sizes[key] = min(limit + 1, 1 + sum(sizes.get(id(k), 0) for k in kids))
            continue
        if key in sizes:
            continue
        if key in on_path:
            return limit + 1
        on_path.add(key)
        stack.append((node, True))
        for k in kids:
            if id(k) in on_path:
                return limit + 1
            if id(k) not in sizes:
                stack.append((k, False))
    return sizes[id(root)]


def _compose(text: str, path: str, limits: ReadLimits = READ_LIMITS) -> Node:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = f"invalid YAML: {e.problem or e.context}"
        if e.problem and "undefined alias" in e.problem:
            msg += " (a capture expression that starts with '*' must be quoted: - \"*p\")"
        if mark is None:
            raise SpecError(msg, path) from None
        raise SpecError(msg, path, mark.line + 1, mark.column + 1) from None
    except yaml.YAMLError as e:
        raise SpecError(f"invalid YAML: {e}", path) from None
    except RecursionError:
        raise SpecError("invalid YAML: nested too deeply for a spec", path, 1, 1) from None
    if root is None or _is_null(root):
        raise SpecError("empty spec: expected a mapping with 'version' and 'functions'", path, 1, 1)
    if _expanded_size(root, limits.max_nodes) > limits.max_nodes:
        raise SpecError(f"the YAML's aliases (*name) expand to more than {limits.max_nodes:,} "
                        f"nodes, or refer to themselves; write the repeated parts out", path, 1, 1)
    return root


def _parse_file(text: str, path: str, limits: ReadLimits = READ_LIMITS
                ) -> tuple[Spec, list[tuple[str, Node, _Ctx]]]:
    """One file, without its includes; returns its include patterns with their nodes."""
    ctx = _Ctx(path, text)
    try:
        d = _mapping(_compose(text, path, limits), TOP_KEYS, ctx, "the spec")
    except RecursionError:
        raise SpecError("the spec is nested too deeply", path, 1, 1) from None
    def section(key: str) -> list:
        return d[key][0] if key in d else []
    spec = Spec(functions=section("functions"), version=d["version"][0], path=path, text=text,
                reports=section("reports"), links=section("links"), targets=section("targets"),
                files=[path])
    spec.limits_set = d["limits"][0] if "limits" in d else {}
    sql, cap = _split_limits(spec.limits_set)
    spec.sql_limits, spec.capture_limits = DEFAULTS.with_(**sql), capture_limits.DEFAULTS.with_(**cap)
    includes = [(p, n, ctx) for p, n in section("include")]
    return spec, includes


def _read(path: str, limits: ReadLimits = READ_LIMITS) -> str:
    """The top spec file's text (SpecError naming the file: it has no line yet)."""
    try:
        return _read_bounded(path, limits.max_file_bytes)
    except _Refused as e:
        raise SpecError(f"cannot read the spec: {e}", path) from None


def _merge(into: Spec, other: Spec) -> None:
    into.functions += other.functions
    into.reports += other.reports
    into.links += other.links
    into.targets += other.targets
    into.files += other.files
    # An included file can only lower a bound.
    sql, cap = _split_limits(other.limits_set)
    into.sql_limits = into.sql_limits.with_(**{k: min(v, getattr(into.sql_limits, k))
                                               for k, v in sql.items()})
    into.capture_limits = into.capture_limits.with_(**{k: min(v, getattr(into.capture_limits, k))
                                                       for k, v in cap.items()})


def _split_limits(given: dict) -> tuple[dict, dict]:
    """`limits:` keys as (SQL bounds, capture bounds)."""
    sql = set(sql_limits.key_names())
    return ({k: v for k, v in given.items() if k in sql},
            {k: v for k, v in given.items() if k not in sql})


def _with_includes(spec: Spec, includes: list, limits: ReadLimits = READ_LIMITS) -> Spec:
    """Merge every included file (breadth first, each file once: cycles are harmless)."""
    files = _Includes(spec.path, limits, len(spec.text.encode("utf-8", "surrogatepass")))
    seen = {os.path.realpath(spec.path)}
    queue = collections.deque(includes)
    while queue:
        pattern, node, ctx = queue.popleft()
        for path in files.match(pattern, node, ctx):
            path = os.path.normpath(path)
            if os.path.realpath(path) in seen:
                continue
            seen.add(os.path.realpath(path))
            sub, more = _parse_file(files.read(path, node, ctx), path, limits)
            _merge(spec, sub)
            queue += more
    return spec


def _where(obj) -> str:
    return f"{obj.path}:{obj.line}"


def _check_across_files(spec: Spec) -> None:
    """Names unique over the merged spec (one file already checked its own functions)."""
    symbols: dict[str, FunctionSpec] = {}
    for fn in spec.functions:
        first = symbols.setdefault(fn.symbol, fn)
        if first is not fn:
            raise SpecError(f"duplicate function '{fn.symbol}' (also at {_where(first)})",
                            fn.path, fn.line, fn.column)
    tables: dict[str, Any] = {}
    for obj in [*spec.functions, *spec.reports]:
        name = obj.table if isinstance(obj, FunctionSpec) else obj.name
        first = tables.setdefault(name.lower(), obj)
        if first is not obj:
            raise SpecError(f"duplicate table '{name}' (also defined at {_where(first)}); rename one",
                            obj.path, obj.line, obj.column)
    _check_expected(spec)
    links: dict[str, LinkSpec] = {}
    for link in spec.links:
        first = links.setdefault(link.name.lower(), link)
        if first is not link:
            raise SpecError(f"duplicate link '{link.name}' (also at {_where(first)}); give one a 'name:'",
                            link.path, link.line, link.column)


def _check_expected(spec: Spec) -> None:
    """Each function a target expects names (or, as a glob, matches) a spec
    function: expectations are about what the spec captures."""
    symbols = [fn.symbol for fn in spec.functions]
    exact = set(symbols)
    for t in spec.targets:
        for f in t.functions:
            # a plain symbol is a set lookup: only globs scan the symbols
            if f.pattern in exact or ("*" in f.pattern and any(f.matches(s) for s in symbols)):
                continue
            close = difflib.get_close_matches(f.pattern, symbols, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise SpecError(f"target expects function '{f.pattern}', which matches no function under "
                            f"'functions:'{hint}", t.path, f.line, f.column)


def parse_spec(text: str, path: str = "exray.yaml", check_sql: bool = True) -> Spec:
    """Parse a spec and the files it includes (relative to `path`); raises the first SpecError.

    With check_sql (the default) the SQL of extra columns, reports and links is
    checked too (probe_compiler.spec_sql) and `reports` come in dependency
    order. Without it, call spec_sql.check_spec(spec) to get every SQL problem."""
    limits = READ_LIMITS
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_file_bytes:
        raise SpecError(f"the spec is {size:,} bytes, over the limit of one spec file "
                        f"({limits.max_file_bytes:,} bytes); split it or trim it", path)
    spec, includes = _parse_file(text, path, limits)
    spec = _with_includes(spec, includes, limits)
    _check_across_files(spec)
    if check_sql:
        from .spec_sql import check_spec
        errors = check_spec(spec)
        if errors:
            raise errors[0]
    return spec


def load_spec(path: str | Path, check_sql: bool = True) -> Spec:
    return parse_spec(_read(str(path)), str(path), check_sql)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["--schema"]:
        print("usage: python -m probe_compiler.spec --schema", file=sys.stderr)
        return 2
    sys.stdout.write(schema_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
