"""Go source, read with tree-sitter-go: the Go symbol of the function at a
position, the capture expression at a cursor, the module and package paths.

Symbols are spelt as the Go toolchain spells them in the binary (pclntab,
DWARF, tracebacks), checked against real binaries in tests/test_gosource.py:

    main.main                          package main is `main`, whatever its directory
    example.com/svc/store.(*Store).Get pointer receiver; other packages: full import path
    example.com/svc/store.Key.String   value receiver
    main.work.func1, main.work.func2   closures, numbered in source order per function
    main.(*server).handle.func1.1      a closure inside a closure: `.N`
    main.sum-range1                    the body of a range-over-func loop
    main.sum-range1.1                  a closure inside it; nested loops: -range1-range1
    main.init.0, main.init.1           init functions, numbered over the package
    main.init.func1                    closures in package-level initializers
    example.com/svc/store.Map[...]     generic functions and methods on generic
                                       types: the binary has one per shape,
                                       `Map[go.shape.int,go.shape.string]`; the
                                       source says `[...]` (as Go tracebacks do).
                                       `symbol_matches` relates the two.
    example.com/v.x/my%2epkg.F         dots in the last path element escaped

Whether a `for ... range x` loop ranges over a function (and so becomes a
`-rangeN` body) needs types that a parser does not have: it is decided from
the range expression (a function literal, a call of a function or method
declared in the file with a function or iter.Seq result, or a standard
library iterator such as maps.Keys or slices.All). Compiler-made wrappers
(`.deferwrapN`, `.gowrapN`, `-fm`) are never where a user's cursor is, so
they are not produced.

Positions are LSP's: 0-based lines, `character` in UTF-16 code units.
Nothing here raises on bad input: a file that does not parse gives a
`GoParseError` value.
"""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import tree_sitter
import tree_sitter_go
from lsprotocol.types import Position, Range

from probe_compiler.errors import ExpressionError
from probe_compiler.files import read_regular
from probe_compiler.expr import format_expr, parse_expr
from probe_compiler.generics import generic_pattern, symbol_matches  # noqa: F401 (re-exported)

_LANGUAGE = tree_sitter.Language(tree_sitter_go.language())
_local = threading.local()


def _parser() -> tree_sitter.Parser:
    p = getattr(_local, "parser", None)
    if p is None:
        p = _local.parser = tree_sitter.Parser(_LANGUAGE)
    return p


# ------------------------------------------------------------------ results

@dataclass(frozen=True)
class GoFunction:
    symbol: str                 # as the toolchain spells it (see the module doc)
    name_range: Range           # the name; `func` of a closure; `for` of a range-over-func body
    body_range: Range           # the block
    params: list[str]           # parameter names in order (no `_`, no unnamed ones)
    receiver: str | None        # the receiver's variable name, methods only
    kind: str = "func"          # "func", "method", "closure", "range"
    extent: Range | None = field(default=None, compare=False)   # the whole declaration

    @property
    def short_name(self) -> str:
        """The last part of the symbol: `Get`, `func1`, `1`, `sum-range1`."""
        return _short_name(self.symbol)


@dataclass(frozen=True)
class GoParseError:
    """A Go file that does not parse where it matters; never raised."""
    message: str
    range: Range

    def __bool__(self) -> bool:       # `if fn:` is false for an error
        return False


# ------------------------------------------------------------------ positions

class LineIndex:
    """Byte columns (tree-sitter) <-> UTF-16 characters (LSP), per line."""

    def __init__(self, source: bytes):
        self.source = source
        self.starts = [0] + [i + 1 for i, b in enumerate(source) if b == 0x0A]

    def line_bytes(self, line: int) -> bytes:
        if line < 0 or line >= len(self.starts):
            return b""
        end = self.starts[line + 1] - 1 if line + 1 < len(self.starts) else len(self.source)
        return self.source[self.starts[line]:end]

    def to_position(self, row: int, byte_col: int) -> Position:
        prefix = self.line_bytes(row)[:byte_col].decode("utf-8", "replace")
        return Position(line=row, character=utf16_len(prefix))

    def to_byte(self, line: int, character: int) -> int:
        """Byte offset into the source of an LSP position (clamped to the line)."""
        if line >= len(self.starts):
            return len(self.source)
        text = self.line_bytes(line).decode("utf-8", "replace")
        units, i = 0, 0
        while i < len(text) and units < character:
            units += 2 if ord(text[i]) > 0xFFFF else 1
            i += 1
        return self.starts[line] + len(text[:i].encode("utf-8"))

    def node_range(self, node) -> Range:
        s, e = node.start_point, node.end_point
        return Range(start=self.to_position(s.row, s.column), end=self.to_position(e.row, e.column))


def utf16_len(text: str) -> int:
    return sum(2 if ord(c) > 0xFFFF else 1 for c in text)


def _as_bytes(source: str | bytes) -> bytes:
    return source.encode("utf-8") if isinstance(source, str) else bytes(source)


# ------------------------------------------------------------------ parsing

@dataclass
class ParsedGo:
    source: bytes
    tree: tree_sitter.Tree
    lines: LineIndex
    package: str | None                     # the package clause's name
    errors: list[GoParseError]
    _functions: dict = field(default_factory=dict)

    def text(self, node) -> str:
        return self.source[node.start_byte:node.end_byte].decode("utf-8", "replace")


def parse(source: str | bytes) -> ParsedGo:
    src = _as_bytes(source)
    tree = _parser().parse(src)
    lines = LineIndex(src)
    root = tree.root_node
    package = None
    for child in root.named_children:
        if child.type == "package_clause":
            ident = next((c for c in child.named_children if c.type == "package_identifier"), None)
            package = src[ident.start_byte:ident.end_byte].decode() if ident else None
            break
    errors = [GoParseError(_error_message(n, lines), lines.node_range(n)) for n in _error_nodes(root)]
    if package is None and not errors:
        errors.append(GoParseError("not a Go file: no package clause", Range(Position(0, 0), Position(0, 0))))
    return ParsedGo(src, tree, lines, package, errors)


def _error_nodes(root, limit: int = 20) -> list:
    out, stack = [], [root]
    while stack and len(out) < limit:
        n = stack.pop()
        if n.is_error or n.is_missing:
            out.append(n)
            continue
        if n.has_error:
            stack.extend(reversed(n.children))
    return out


def _error_message(node, lines: LineIndex) -> str:
    p = node.start_point
    where = f"{p.row + 1}:{lines.to_position(p.row, p.column).character + 1}"
    if node.is_missing:
        return f"Go syntax error at {where}: missing {node.type}"
    return f"Go syntax error at {where}: unexpected input"


class ParseCache:
    """The language server's parsed Go files, one cache for all of them: open
    buffers by (uri, version), files on disk by (path, mtime, size). Keeps one
    version per uri or path, and the newest `size` entries."""

    def __init__(self, size: int = 1024):
        self.size = size
        self._items: dict[tuple, ParsedGo] = {}
        self._lock = threading.Lock()

    def get(self, uri: str, version, source: str | bytes) -> ParsedGo:
        """An editor buffer; `version` None (a file the client has not opened)
        compares the text instead."""
        key = (uri, version)
        with self._lock:
            hit = self._items.get(key)
        if hit is not None and (version is not None or hit.source == _as_bytes(source)):
            return hit
        return self._put(uri, key, parse(source))

    def file(self, path: str | os.PathLike) -> ParsedGo:
        """A file on disk (OSError if it can't be read), parsed again when it changes."""
        st = os.stat(path)
        key = (str(path), ("file", st.st_mtime_ns, st.st_size))
        with self._lock:
            hit = self._items.get(key)
        if hit is not None:
            return hit
        # a FIFO or a link to /dev/zero named *.go must not hang or fill the server
        return self._put(str(path), key, parse(read_regular(path, MAX_GO_FILE_BYTES, "the limit of a Go file")))

    def forget(self, uri: str) -> None:
        with self._lock:
            for k in [k for k in self._items if k[0] == uri]:
                del self._items[k]

    def _put(self, name: str, key: tuple, parsed: ParsedGo) -> ParsedGo:
        with self._lock:
            for k in [k for k in self._items if k[0] == name]:
                del self._items[k]
            self._items[key] = parsed
            while len(self._items) > self.size:
                del self._items[next(iter(self._items))]
        return parsed


CACHE = ParseCache()

# Workspace files are read whole; larger ones are skipped (docs/security.md).
MAX_GO_FILE_BYTES = 16 << 20
MAX_GO_MOD_BYTES = 1 << 20


# ------------------------------------------------------------------ modules and packages

_MODULE = re.compile(r'^\s*module\s+("(?:[^"\\]|\\.)*"|`[^`]*`|\S+)', re.M)


def module_path(go_mod_text: str) -> str | None:
    """The module path of a go.mod file (None if it has no module line)."""
    text = re.sub(r"//.*", "", go_mod_text)
    m = _MODULE.search(text)
    if m is None:
        return None
    p = m.group(1)
    return p[1:-1] if p[0] in "\"`" else p


def find_go_mod(path: str | os.PathLike, stop: str | os.PathLike | None = None) -> Path | None:
    """The nearest go.mod at or above the directory of `path` (not above `stop`)."""
    p = Path(path).resolve()
    d = p if p.is_dir() else p.parent
    stop_at = Path(stop).resolve() if stop else None
    while True:
        if (d / "go.mod").is_file():
            return d / "go.mod"
        if d == stop_at or d.parent == d:
            return None
        d = d.parent


def package_import_path(workspace_root: str | os.PathLike, file_path: str | os.PathLike) -> str | None:
    """Import path of the package of a Go file: module path + its directory
    relative to the go.mod's. Symbols of package main still start with
    `main.` (see symbol_prefix). None without a go.mod."""
    gomod = find_go_mod(file_path, None)
    if gomod is None:
        return None
    try:
        mod = module_path(read_regular(gomod, MAX_GO_MOD_BYTES, "the limit of a go.mod").decode("utf-8", "replace"))
    except OSError:
        return None
    if mod is None:
        return None
    rel = Path(file_path).resolve().parent.relative_to(gomod.parent)
    return mod if str(rel) == "." else f"{mod}/{rel.as_posix()}"


def path_to_prefix(import_path: str) -> str:
    """The import path as symbol names spell it (cmd/internal/objabi.PathToPrefix):
    control characters, '%', '"', non-ASCII and '.' after the last '/' escaped as %xx."""
    slash = import_path.rfind("/")
    out = []
    for i, b in enumerate(import_path.encode("utf-8")):
        if b <= 0x20 or (b == 0x2E and i > slash) or b in (0x25, 0x22) or b >= 0x7F:
            out.append(f"%{b:02x}")
        else:
            out.append(chr(b))
    return "".join(out)


def symbol_prefix(import_path: str | None, package_name: str | None) -> str:
    """`main` for package main, else the escaped import path (the package name without one)."""
    if package_name == "main" or not import_path:
        return package_name or "main"
    return path_to_prefix(import_path)


# ------------------------------------------------------------------ generics

_SHAPES = re.compile(r"\[[^\[\]]*(?:\[[^\[\]]*\][^\[\]]*)*\]")


# generic_pattern and symbol_matches live in probe_compiler/generics.py (imported
# above), shared with the spec's matching of `[...]` symbols.


def package_of_symbol(symbol: str) -> str:
    """`example.com/svc/store.(*Store).Get` -> `example.com/svc/store`; `main.f` -> `main`."""
    cut = min([i for i in (symbol.find("("), symbol.find("[")) if i >= 0] or [len(symbol)])
    slash = symbol.rfind("/", 0, cut)
    dot = symbol.find(".", slash + 1)
    return symbol if dot < 0 else symbol[:dot]


def _short_name(symbol: str) -> str:
    rest = symbol[len(package_of_symbol(symbol)) + 1:]
    rest = _SHAPES.sub("", rest)
    return re.split(r"[.]", rest.replace(")", "").replace("(*", ""))[-1]


# ------------------------------------------------------------------ functions

# Standard library functions that return iterators (range over them: -rangeN bodies).
STD_ITERATORS = frozenset({
    "maps.All", "maps.Keys", "maps.Values", "slices.All", "slices.Values", "slices.Backward",
    "slices.Chunk", "strings.Lines", "strings.SplitSeq", "strings.SplitAfterSeq",
    "strings.FieldsSeq", "strings.FieldsFuncSeq", "bytes.Lines", "bytes.SplitSeq",
    "bytes.SplitAfterSeq", "bytes.FieldsSeq", "bytes.FieldsFuncSeq",
})


@dataclass
class _Ctx:
    symbol: str
    named: bool                 # a declared function (closures in it are .funcN)
    funclits: int = 0
    ranges: int = 0


def _params(plist, parsed: ParsedGo) -> list[str]:
    out = []
    if plist is None:
        return out
    for decl in plist.named_children:
        if decl.type not in ("parameter_declaration", "variadic_parameter_declaration"):
            continue
        for i in range(decl.child_count):
            if decl.field_name_for_child(i) == "name":
                name = parsed.text(decl.children[i])
                if name != "_":
                    out.append(name)
    return out


def _receiver(node, parsed: ParsedGo) -> tuple[str | None, str]:
    """(variable name, `(*T)` or `T`) of a method's receiver."""
    rlist = node.child_by_field_name("receiver")
    decl = next((c for c in rlist.named_children if c.type == "parameter_declaration"), None) if rlist else None
    if decl is None:
        return None, "?"
    name_node, typ = decl.child_by_field_name("name"), decl.child_by_field_name("type")
    var = parsed.text(name_node) if name_node is not None else None
    if var == "_":
        var = None
    pointer = False
    while typ is not None and typ.type in ("pointer_type", "parenthesized_type"):
        pointer = pointer or typ.type == "pointer_type"
        typ = next((c for c in typ.named_children), None)
    if typ is None:
        return var, "?"
    if typ.type == "generic_type":
        tname = parsed.text(typ.child_by_field_name("type")) + "[...]"
    else:
        tname = parsed.text(typ)
    return var, f"(*{tname})" if pointer else tname


def _result_is_iterator(decl, parsed: ParsedGo) -> bool:
    res = decl.child_by_field_name("result")
    if res is None:
        return False
    text = parsed.text(res)
    return res.type == "function_type" or bool(re.match(r"\(?\s*(iter\.Seq2?\b|func\s*\(\s*\w*\s*func)", text))


def _iterator_functions(parsed: ParsedGo) -> set[str]:
    """Names of the file's functions and methods that return a function (an iterator)."""
    out = set()
    for decl in parsed.tree.root_node.named_children:
        if decl.type in ("function_declaration", "method_declaration") and _result_is_iterator(decl, parsed):
            out.add(parsed.text(decl.child_by_field_name("name")))
    return out


def _ranges_over_func(for_stmt, parsed: ParsedGo, iterators: set[str]) -> bool:
    clause = next((c for c in for_stmt.named_children if c.type == "range_clause"), None)
    if clause is None:
        return False
    right = clause.child_by_field_name("right")
    while right is not None and right.type == "parenthesized_expression":
        right = right.named_children[0] if right.named_children else None
    if right is None:
        return False
    if right.type == "func_literal":
        return True
    if right.type != "call_expression":
        return False
    fn = right.child_by_field_name("function")
    if fn is None:
        return False
    if fn.type == "identifier":
        return parsed.text(fn) in iterators
    if fn.type == "selector_expression":
        text = re.sub(r"\s+", "", parsed.text(fn))
        return text in STD_ITERATORS or parsed.text(fn.child_by_field_name("field")) in iterators
    if fn.type in ("generic_type", "index_expression"):     # Seq[int](n)
        base = fn.child_by_field_name("type") or fn.child_by_field_name("operand")
        return base is not None and parsed.text(base) in iterators
    return False


def functions(parsed: ParsedGo, import_path: str | None = None,
              counts_before: tuple[int, int] = (0, 0)) -> list[GoFunction]:
    """Every function of the file in source order: declarations, closures,
    range-over-func bodies. `counts_before` = (init functions, package-level
    closures) in the package's files that the compiler reads before this one
    (files sorted by name; see package_counts_before)."""
    key = (import_path, counts_before)
    hit = parsed._functions.get(key)
    if hit is not None:
        return hit
    prefix = symbol_prefix(import_path, parsed.package)
    iterators = _iterator_functions(parsed)
    out: list[GoFunction] = []
    lines = parsed.lines
    inits, glob_lits = counts_before
    glob = _Ctx(f"{prefix}.init", True, funclits=glob_lits)

    def walk(node, ctx: _Ctx) -> None:
        for child in node.children:
            t = child.type
            if t == "func_literal":
                ctx.funclits += 1
                sym = f"{ctx.symbol}.func{ctx.funclits}" if ctx.named else f"{ctx.symbol}.{ctx.funclits}"
                params = _params(child.child_by_field_name("parameters"), parsed)
                body = child.child_by_field_name("body")
                out.append(GoFunction(sym, lines.node_range(child.children[0]),
                                      lines.node_range(body) if body else lines.node_range(child),
                                      params, None, "closure", lines.node_range(child)))
                walk(child, _Ctx(sym, False))
            elif t == "for_statement" and _ranges_over_func(child, parsed, iterators):
                clause = next(c for c in child.named_children if c.type == "range_clause")
                right = clause.child_by_field_name("right")
                if right is not None:
                    walk(right, ctx)            # the range expression runs in the outer function
                ctx.ranges += 1
                sym = f"{ctx.symbol}-range{ctx.ranges}"
                left = clause.child_by_field_name("left")
                params = [parsed.text(c) for c in left.named_children if c.type == "identifier"
                          and parsed.text(c) != "_"] if left is not None else []
                body = child.child_by_field_name("body")
                out.append(GoFunction(sym, lines.node_range(child.children[0]),
                                      lines.node_range(body) if body else lines.node_range(child),
                                      params, None, "range", lines.node_range(child)))
                inner = _Ctx(sym, False)
                if left is not None:
                    walk(left, inner)
                if body is not None:
                    walk(body, inner)
            else:
                walk(child, ctx)

    for decl in parsed.tree.root_node.named_children:
        t = decl.type
        if t in ("function_declaration", "method_declaration"):
            name_node = decl.child_by_field_name("name")
            if name_node is None:
                continue
            name = parsed.text(name_node)
            receiver, kind = None, "func"
            generic = decl.child_by_field_name("type_parameters") is not None
            if t == "method_declaration":
                receiver, rtype = _receiver(decl, parsed)
                sym = f"{prefix}.{rtype}.{name}"
                kind = "method"
            elif name == "init" and not generic:
                sym = f"{prefix}.init.{inits}"
                inits += 1
            else:
                sym = f"{prefix}.{name}[...]" if generic else f"{prefix}.{name}"
            body = decl.child_by_field_name("body")
            params = _params(decl.child_by_field_name("parameters"), parsed)
            out.append(GoFunction(sym, lines.node_range(name_node),
                                  lines.node_range(body) if body else lines.node_range(decl),
                                  params, receiver, kind, lines.node_range(decl)))
            if body is not None:
                walk(body, _Ctx(sym, True))
        elif t in ("var_declaration", "const_declaration"):
            walk(decl, glob)
    parsed._functions[key] = out
    return out


def package_counts(parsed: ParsedGo) -> tuple[int, int]:
    """(init functions, closures in package-level initializers) of one file."""
    inits = sum(1 for d in parsed.tree.root_node.named_children if d.type == "function_declaration"
                and d.child_by_field_name("name") is not None
                and parsed.text(d.child_by_field_name("name")) == "init")
    lits = 0
    for d in parsed.tree.root_node.named_children:
        if d.type in ("var_declaration", "const_declaration"):
            lits += _count_top_funclits(d)
    return inits, lits


def _count_top_funclits(node) -> int:
    n = 0
    for c in node.children:
        if c.type == "func_literal":
            n += 1              # closures inside it are numbered under it
        else:
            n += _count_top_funclits(c)
    return n


def package_counts_before(file_path: str | os.PathLike, package_name: str | None) -> tuple[int, int]:
    """package_counts summed over the package's files (same directory, same
    package, not _test.go) whose names sort before `file_path`'s."""
    p = Path(file_path)
    inits = lits = 0
    try:
        siblings = sorted(x for x in p.parent.iterdir() if x.suffix == ".go" and x.name < p.name
                          and not x.name.endswith("_test.go"))
    except OSError:
        return 0, 0
    for sib in siblings:
        try:
            parsed = CACHE.file(sib)
        except OSError:
            continue
        if parsed.package == package_name:
            a, b = package_counts(parsed)
            inits, lits = inits + a, lits + b
    return inits, lits


def _contains(r: Range, line: int, character: int) -> bool:
    s, e = r.start, r.end
    return (s.line, s.character) <= (line, character) <= (e.line, e.character)


def function_at(source: str | bytes | ParsedGo, line: int, character: int,
                import_path: str | None = None,
                counts_before: tuple[int, int] = (0, 0)) -> GoFunction | GoParseError | None:
    """The innermost function (declaration, closure, range-over-func body) at
    an LSP position; None outside functions; GoParseError when the code
    around it does not parse (its symbol could be wrong)."""
    try:
        parsed = source if isinstance(source, ParsedGo) else parse(source)
        best = None
        for fn in functions(parsed, import_path, counts_before):
            if fn.extent is not None and _contains(fn.extent, line, character):
                if best is None or (fn.extent.start.line, fn.extent.start.character) >= \
                        (best.extent.start.line, best.extent.start.character):
                    best = fn
        if parsed.errors:
            top = _top_extent(parsed, line, character)
            relevant = [e for e in parsed.errors if top is None or best is None
                        or _overlaps(e.range, top) or best.symbol.split(".")[-2:-1] == ["init"]]
            if relevant:
                return relevant[0]
        return best
    except Exception as e:  # noqa: BLE001 - an editor request must never fail on a file
        return GoParseError(f"cannot read the Go file: {e}", Range(Position(line, 0), Position(line, 0)))


def file_path(uri_or_path: str) -> str:
    """A file: URI's path (other strings are paths already)."""
    if uri_or_path.startswith("file:"):
        from urllib.parse import unquote, urlparse
        return unquote(urlparse(uri_or_path).path)
    return uri_or_path


def function_in_file(workspace_root: str | os.PathLike | None, uri_or_path: str, parsed: ParsedGo,
                     line: int, character: int) -> GoFunction | GoParseError | None:
    """function_at with the full symbol of a workspace file: its package's import
    path (from go.mod) and the init functions and closures of the files before it.
    What code actions name and what hover looks up."""
    path = file_path(uri_or_path)
    absolute = Path(path).is_absolute()
    import_path = package_import_path(workspace_root, path) if absolute else None
    counts = package_counts_before(path, parsed.package) if absolute and Path(path).is_file() else (0, 0)
    return function_at(parsed, line, character, import_path, counts)


def function_on_line(parsed: ParsedGo, line: int) -> GoFunction | None:
    """The innermost function whose text covers any of `line` (0-based): where a
    frame at that line runs, when the column is not known."""
    best = None
    for fn in functions(parsed):
        e = fn.extent
        if e is not None and e.start.line <= line <= e.end.line and (
                best is None or (e.start.line, e.start.character) >= (best.extent.start.line,
                                                                      best.extent.start.character)):
            best = fn
    return best


_WRAPPER = re.compile(r"(\.gowrap\d+|\.deferwrap\d+|-fm)$")
_CLOSURE = re.compile(r"\.func\d+(\.\d+)*$")


def is_compiler_wrapper(symbol: str, runs_in: GoFunction | None = None) -> bool:
    """A function the compiler made, not the user: `go f(x)`'s `….gowrapN`,
    `defer f(x)`'s `….deferwrapN`, a method value's `…-fm`, and a closure
    name (`….funcN`) whose frames sit outside any function literal of the
    source (`runs_in`: the source function at its frames' lines), as the
    wrappers of older Go releases did."""
    if _WRAPPER.search(symbol):
        return True
    if runs_in is not None and _CLOSURE.search(symbol):
        return runs_in.kind in ("func", "method")
    return False


def _top_extent(parsed: ParsedGo, line: int, character: int) -> Range | None:
    for decl in parsed.tree.root_node.children:
        r = parsed.lines.node_range(decl)
        if _contains(r, line, character):
            return r
    return None


def _overlaps(a: Range, b: Range) -> bool:
    return (a.start.line, a.start.character) <= (b.end.line, b.end.character) and \
        (b.start.line, b.start.character) <= (a.end.line, a.end.character)


# ------------------------------------------------------------------ expressions

_EXPR_NODES = ("identifier", "selector_expression", "unary_expression", "index_expression",
               "call_expression", "parenthesized_expression", "field_identifier")


def _canonical(text: str) -> str | None:
    try:
        return format_expr(parse_expr(text.strip()))
    except ExpressionError:
        return None
    except Exception:  # noqa: BLE001
        return None


def _imports(parsed: ParsedGo) -> set[str]:
    """Package names the file imports (the last path element or the alias)."""
    names = set()
    for decl in parsed.tree.root_node.named_children:
        if decl.type != "import_declaration":
            continue
        stack = [decl]
        while stack:
            n = stack.pop()
            if n.type == "import_spec":
                alias = n.child_by_field_name("name")
                path = n.child_by_field_name("path")
                if alias is not None:
                    names.add(parsed.text(alias))
                elif path is not None:
                    last = parsed.text(path).strip("\"`").rsplit("/", 1)[-1]
                    names.add(re.sub(r"^go-|[.-].*$", "", last) or last)
            stack.extend(n.named_children)
    return names


def _root_ident(node):
    while node is not None and node.type != "identifier":
        if node.type == "selector_expression":
            node = node.child_by_field_name("operand")
        elif node.type in ("index_expression",):
            node = node.child_by_field_name("operand")
        elif node.type in ("unary_expression",):
            node = node.child_by_field_name("operand")
        elif node.type == "parenthesized_expression":
            node = node.named_children[0] if node.named_children else None
        elif node.type == "call_expression":
            args = node.child_by_field_name("arguments")
            node = args.named_children[0] if args is not None and args.named_children else None
        else:
            return None
    return node


def expression_at(source: str | bytes | ParsedGo, line: int, character: int,
                  selection_range: Range | None = None) -> str | None:
    """The capture expression at the cursor (or the selected text), in the
    canonical form of probe_compiler.expr; None when there is none there.

    At a cursor: an identifier, a field of a selector chain up to that field
    (`req.Header` on `Header` of `req.Header.ID`), `*p` on the `*`, `x[3]` on
    the index or brackets, `len(x)` on `len`. Package names (`fmt.Println`),
    calls other than len and anything parse_expr rejects give None."""
    try:
        parsed = source if isinstance(source, ParsedGo) else parse(source)
        if selection_range is not None and (selection_range.start != selection_range.end):
            a = parsed.lines.to_byte(selection_range.start.line, selection_range.start.character)
            b = parsed.lines.to_byte(selection_range.end.line, selection_range.end.character)
            return _canonical(parsed.source[a:b].decode("utf-8", "replace"))
        at = parsed.lines.to_byte(line, character)
        node = parsed.tree.root_node.named_descendant_for_byte_range(at, at)
        if node is None:
            return None
        # On the boundary just after a name, prefer the name (cursor at the end of `req|`).
        if node.type not in _EXPR_NODES and at > 0:
            prev = parsed.tree.root_node.named_descendant_for_byte_range(at - 1, at - 1)
            if prev is not None and prev.type in ("identifier", "field_identifier"):
                node = prev
        target = None
        if node.type == "identifier":
            target = node
            parent = node.parent
            if parent is not None and parent.type == "call_expression" and \
                    parent.child_by_field_name("function") == node:
                target = parent if parsed.text(node) == "len" else None
        elif node.type == "field_identifier":
            parent = node.parent
            target = parent if parent is not None and parent.type == "selector_expression" else None
        elif node.type in ("unary_expression", "index_expression", "int_literal"):
            target = node if node.type != "int_literal" else node.parent
            if target is not None and target.type == "unary_expression" and \
                    parsed.text(target.child_by_field_name("operator")) != "*":
                target = None
        if target is None or not _in_function(target):
            return None
        # A selector that is called is a method call: not capturable.
        parent = target.parent
        if target.type == "selector_expression" and parent is not None and \
                parent.type == "call_expression" and parent.child_by_field_name("function") == target:
            return None
        root = _root_ident(target)
        if root is None or parsed.text(root) in _imports(parsed) - _locals_around(parsed, target):
            return None
        return _canonical(parsed.text(target))
    except Exception:  # noqa: BLE001
        return None


def _in_function(node) -> bool:
    n = node.parent
    while n is not None:
        if n.type in ("block",) and n.parent is not None and n.parent.type in (
                "function_declaration", "method_declaration", "func_literal"):
            return True
        n = n.parent
    return False


def _locals_around(parsed: ParsedGo, node) -> set[str]:
    """Names declared in the functions enclosing `node` (shadowing an import)."""
    names = set()
    n = node
    while n is not None:
        if n.type in ("function_declaration", "method_declaration", "func_literal"):
            stack = [n]
            while stack:
                m = stack.pop()
                if m.type in ("parameter_declaration", "variadic_parameter_declaration"):
                    nm = m.child_by_field_name("name")
                    if nm is not None:
                        names.add(parsed.text(nm))
                elif m.type in ("short_var_declaration", "range_clause"):
                    left = m.child_by_field_name("left")
                    if left is not None:
                        names.update(parsed.text(c) for c in left.named_children if c.type == "identifier")
                elif m.type == "var_spec":
                    names.update(parsed.text(c) for c in m.children_by_field_name("name"))
                stack.extend(m.named_children)
        n = n.parent
    return names


# ------------------------------------------------------------------ workspace

_SKIP_DIRS = {"vendor", "testdata", "node_modules"}


def go_files(root: str | os.PathLike) -> list[Path]:
    """The workspace's .go files (no tests, vendor, testdata or hidden dirs), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith((".", "_")))
        out += [Path(dirpath) / f for f in sorted(filenames)
                if f.endswith(".go") and not f.endswith("_test.go")]
    return out


def file_functions(root: str | os.PathLike, path: str | os.PathLike,
                   parsed: ParsedGo | None = None) -> list[GoFunction]:
    """Every function of one workspace file with its full symbols."""
    parsed = parsed or CACHE.file(path)
    ip = package_import_path(root, path)
    return functions(parsed, ip, package_counts_before(path, parsed.package))


def workspace_symbols(root: str | os.PathLike) -> set[str]:
    """Every function symbol the workspace's Go files define (cached per file by mtime)."""
    out: set[str] = set()
    for path in go_files(root):
        try:
            out.update(fn.symbol for fn in file_functions(root, path))
        except (OSError, ValueError):
            continue
    return out


def workspace_packages(root: str | os.PathLike) -> set[str]:
    """The symbol prefixes (`main`, escaped import paths) of the workspace's packages."""
    return {package_of_symbol(s) for s in workspace_symbols(root)}
