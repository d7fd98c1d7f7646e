"""exray.yaml: what to capture, parsed with a line and column for every node.

The parser walks PyYAML's node graph (the compose API keeps marks), driven by
schema tables: a mapping is described by a dict of `Key`s, so a new spec key
is one table entry plus, if it has a new shape, one value parser. Every error
is a SpecError(message, path, line, column) with 1-based positions.

    version: 1
    functions:
      main.(*server).GetInfo:
        table: getinfo            # optional; default from the symbol
        capture:
          - req.ID                # shorthand: column name derived (req_ID)
          - expr: s.mu.state
            name: mu_state
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ExpressionError, SpecError
from .expr import Expr, parse_expr, sanitize_identifier

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


@dataclass(frozen=True)
class LinkEnd:
    table: str
    columns: tuple[str, ...]


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
class TargetSpec:
    """Which processes a snapshot takes when given no pids."""
    exe: str | None = None              # executable base name, as in /proc/PID/exe
    pid: int | None = None
    agent: str | None = None            # host:port of a remote agent; None = this machine
    line: int = 0
    column: int = 0
    path: str = "exray.yaml"


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
    def __init__(self, path: str):
        self.path = path

    def error(self, node: Node | None, message: str, col_offset: int = 0) -> SpecError:
        if node is None:
            return SpecError(message, self.path, 0, 0)
        m = node.start_mark
        return SpecError(message, self.path, m.line + 1, m.column + 1 + col_offset)


Parser = Callable[[Node, _Ctx], Any]


@dataclass(frozen=True)
class Key:
    parse: Parser
    required: bool = False
    doc: str = ""


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
            raise ctx.error(knode, f"unknown key '{k}' in {what} (expected one of {', '.join(keys)})")
        out[k] = (keys[k].parse(vnode, ctx), knode)
    missing = [k for k, d in keys.items() if d.required and k not in out]
    if missing:
        raise ctx.error(node, f"missing key '{missing[0]}' in {what}")
    return out


def _scalar_str(node: Node, ctx: _Ctx, what: str) -> str:
    if not isinstance(node, ScalarNode) or node.tag != "tag:yaml.org,2002:str":
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
    name = d["name"][0][0] if "name" in d else ""
    if "name" in d:
        _check_ident(d["name"][0][1], name, ctx, "column name")
    return CaptureSpec(text, name, m.line + 1, m.column + 1, _expr_at(enode, text, ctx))


def _captures(node: Node, ctx: _Ctx) -> list[tuple[CaptureSpec, Node]]:
    if _is_null(node):
        return []
    if not isinstance(node, SequenceNode):
        raise ctx.error(node, f"expected a list of expressions for 'capture', got {_kind(node)}")
    return [(_capture(item, ctx), item) for item in node.value]


def _check_ident(node: Node, name: str, ctx: _Ctx, what: str) -> None:
    if not _IDENT.match(name):
        raise ctx.error(node, f"invalid {what} '{name}': use letters, digits and '_', "
                              f"not starting with a digit")


def _function(symbol: str, knode: Node, vnode: Node, ctx: _Ctx) -> tuple[FunctionSpec, Node]:
    m = knode.start_mark
    d = {} if _is_null(vnode) else _mapping(vnode, FUNCTION_KEYS, ctx, f"function '{symbol}'")
    if "table" in d:
        table, tnode = d["table"][0]
        _check_ident(tnode, table, ctx, "table name")
    else:
        table, tnode = default_table_name(symbol), knode
    if table.lower() in RESERVED_TABLES or table.lower().startswith("sqlite_"):
        raise ctx.error(tnode, f"table name '{table}' is reserved by Ex-Ray; set 'table:' to another name")
    captures: list[CaptureSpec] = []
    columns: dict[str, CaptureSpec] = {}
    for cap, cnode in d.get("capture", ([], None))[0]:
        name = cap.name or sanitize_identifier(cap.expr)
        cap = CaptureSpec(cap.expr, name, cap.line, cap.column, cap.ast)
        lname = name.lower()
        if lname in RESERVED_COLUMNS:
            raise ctx.error(cnode, f"column name '{name}' is reserved; give this capture a 'name:'")
        taken, why = columns.get(lname), ""
        if taken is None:
            taken = columns.get(lname[4:]) if lname.startswith("raw_") else columns.get("raw_" + lname)
            why = "; every column x comes with a raw_x twin"
        if taken is not None:
            raise ctx.error(cnode, f"duplicate column '{name}' in table '{table}' "
                                   f"(clashes with '{taken.expr}' at line {taken.line}{why}); "
                                   f"give one a 'name:'")
        columns[lname] = cap
        captures.append(cap)
    return FunctionSpec(symbol, table, captures, m.line + 1, m.column + 1), tnode


def _functions(node: Node, ctx: _Ctx) -> list[FunctionSpec]:
    if _is_null(node):
        return []
    if not isinstance(node, MappingNode):
        raise ctx.error(node, f"expected a mapping of Go symbols for 'functions', got {_kind(node)}")
    out: list[FunctionSpec] = []
    seen: dict[str, FunctionSpec] = {}
    tables: dict[str, FunctionSpec] = {}
    for knode, vnode in node.value:
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


# The schema tables. A new key is an entry here (plus a parser for a new shape).
TOP_KEYS: dict[str, Key] = {
    "version": Key(_version, required=True, doc="spec format version; must be 1"),
    "functions": Key(_functions, doc="Go symbol -> what to capture in its frames"),
}
FUNCTION_KEYS: dict[str, Key] = {
    "table": Key(_str("'table'"), doc="name of the function table; default from the symbol"),
    "capture": Key(_captures, doc="expressions to capture, one column each"),
}
CAPTURE_KEYS: dict[str, Key] = {
    "expr": Key(_str("'expr'"), required=True, doc="a Go expression over the function's variables"),
    "name": Key(_str("'name'"), doc="column name; default derived from the expression"),
}


# ------------------------------------------------------------------------ API

def parse_spec(text: str, path: str = "exray.yaml") -> Spec:
    ctx = _Ctx(path)
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
    if root is None or _is_null(root):
        raise SpecError("empty spec: expected a mapping with 'version' and 'functions'", path, 1, 1)
    d = _mapping(root, TOP_KEYS, ctx, "the spec")
    return Spec(functions=d["functions"][0] if "functions" in d else [],
                version=d["version"][0], path=path, text=text)


def load_spec(path: str | Path) -> Spec:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("no such file", str(path)) from None
    except UnicodeDecodeError as e:
        raise SpecError(f"not UTF-8 text ({e.reason} at byte {e.start})", str(path)) from None
    except OSError as e:
        raise SpecError(e.strerror or str(e), str(path)) from None
    return parse_spec(text, str(path))
