"""Capture expressions: Go syntax in, a typed list of memory operations out.

The language (a subset of Go's, and of Delve's, expressions; no Python eval anywhere):

    expr    := '&' unary | unary
    unary   := '*' unary | postfix
    postfix := primary ( '.' IDENT | '.' '(' TYPE ')' | '[' KEY ']' )*
    primary := IDENT | ('len' | 'cap') '(' unary ')' | '(' unary ')'
    KEY     := INT | '-' INT | STRING | 'true' | 'false'
    TYPE    := '*'* NAME         NAME: int, main.T, T (in the function's package),
                                 "net/http".conn or net/http.conn

Field access dereferences one pointer automatically (`p.f` for `p *T`, as Go
does) and reaches promoted fields of embedded structs (`s.Lock` through an
embedded `sync.Mutex`). `x.(T)` checks an interface's dynamic type at run time
and goes on with its value (`codec.(*gobServerCodec).rwc`). Indexes are
constants: integers on arrays, slices and strings (a string index yields its
byte); string, integer or bool keys on maps. `&x` is the address of `x` (a
variable, a field path, an element) as an integer, so SQL can join and compare
it; it is allowed only at the start of an expression.

`check_expr` turns a parsed expression into a `TypedExpr`: the root variable,
a tuple of ops and the result type. Ops are plain JSON-able tuples that need
nothing but address arithmetic and loads (and, for `m[k]`, the decoder's map
walker), so both the user-space reader and the eBPF probe can run them. An
executor starts with `addr` = the address of the root variable and applies,
in order:

    ("offset", n)                 addr += n
    ("deref",)                    addr = load_ptr(addr); 0 -> stop: nil pointer
    ("index", i, elem_size, data_off, len_off)
                                  n = load_int(addr + len_off); i >= n -> stop: out of range
                                  addr = load_ptr(addr + data_off) + i * elem_size
    ("map_index", map_type_id, key)
                                  m = load_ptr(addr); addr = where the map holds key
                                  (a walk of its slots); absent -> stop: not present
    ("assert", rtype_off, type_off, itab_type_off, data_off, direct, name)
                                  t = load_ptr(addr + type_off); for a non-empty
                                  interface (itab_type_off >= 0) t = load_ptr(t + itab_type_off);
                                  t != moduledata.types + rtype_off -> stop: it holds another type;
                                  direct: addr += data_off (the data word is the value)
                                  else addr = load_ptr(addr + data_off)
    ("len", len_off)              value = load_int(addr + len_off)          (last op)
    ("cap", cap_off)              value = load_int(addr + cap_off)          (last op)
    ("len_indirect", off, size)   p = load_ptr(addr); value = 0 if p == 0
                                  else load_uint(p + off, size)             (last op)
    ("const", n)                  value = n                                 (last op)
    ("addr",)                     value = addr; a value held in registers
                                  has none -> stop                          (last op)

Without a value-producing last op the result is the value of type `type_id`
stored at `addr`; with one, the result is that integer (type `int`, or
`uintptr` for an address). Pointers, ints and lengths are 8 bytes (amd64).
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any, Protocol, Union

from .errors import ExpressionError, SymbolNotFound
from .types import GoType, Kind, TypeTable

PTR_SIZE = 8

# Ids of types check_expr adds to a table that lacks them (results of len(),
# a string's byte, an address). Negative, so they never clash with DWARF offsets.
SYNTHETIC_INT = -1
SYNTHETIC_BYTE = -2
SYNTHETIC_UINTPTR = -3


def _error(message: str, column: int = 0) -> ExpressionError:
    err = ExpressionError(message)
    err.column = column  # 1-based column in the expression text; 0: the whole expression
    return err


# ---------------------------------------------------------------- syntax tree

@dataclass(frozen=True)
class Name:
    name: str
    col: int


@dataclass(frozen=True)
class Selector:
    x: "Expr"
    name: str
    col: int            # column of the field name


@dataclass(frozen=True)
class Deref:
    x: "Expr"
    col: int


@dataclass(frozen=True)
class Index:
    x: "Expr"
    index: Union[int, str, bool]   # an integer, a string or a bool constant
    col: int            # column of the index constant


@dataclass(frozen=True)
class Len:
    x: "Expr"
    col: int


@dataclass(frozen=True)
class Cap:
    x: "Expr"
    col: int


@dataclass(frozen=True)
class AddrOf:
    x: "Expr"
    col: int            # column of the '&'


@dataclass(frozen=True)
class TypeAssert:
    x: "Expr"
    type_name: str      # as written, without spaces or quotes: "*main.T", "*net/http.conn"
    col: int            # column of the type's first character


Expr = Union[Name, Selector, Deref, Index, Len, Cap, AddrOf, TypeAssert]


def _key_text(k: Union[int, str, bool]) -> str:
    if isinstance(k, bool):
        return "true" if k else "false"
    if isinstance(k, str):
        return json.dumps(k, ensure_ascii=False)
    return str(k)


def format_expr(e: Expr) -> str:
    """Canonical Go text of an expression."""
    if isinstance(e, Name):
        return e.name
    if isinstance(e, (Selector, Index, TypeAssert)):
        inner = format_expr(e.x)
        if isinstance(e.x, (Deref, AddrOf)):
            inner = f"({inner})"
        if isinstance(e, Selector):
            return f"{inner}.{e.name}"
        if isinstance(e, Index):
            return f"{inner}[{_key_text(e.index)}]"
        return f"{inner}.({e.type_name})"
    if isinstance(e, Deref):
        return "*" + format_expr(e.x)
    if isinstance(e, AddrOf):
        return "&" + format_expr(e.x)
    if isinstance(e, Len):
        return f"len({format_expr(e.x)})"
    if isinstance(e, Cap):
        return f"cap({format_expr(e.x)})"
    raise TypeError(e)


# --------------------------------------------------------------------- parser

@dataclass(frozen=True)
class _Tok:
    kind: str           # "ident", "int", "string", "op", "end"
    text: str           # a string token: its value, unquoted
    col: int            # 1-based


def _is_ident_start(c: str) -> bool:
    return c == "_" or c.isalpha()


def _is_ident_char(c: str) -> bool:
    return c == "_" or c.isalnum()


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
            "\\": "\\", "\"": "\"", "'": "'"}


def _string_literal(text: str, i: int) -> tuple[str, int]:
    """A Go string literal starting at text[i] ("…" with escapes, or `…` raw):
    (its value, the index after it)."""
    quote, n, j = text[i], len(text), i + 1
    if quote == "`":
        end = text.find("`", j)
        if end < 0:
            raise _error("string literal not terminated", i + 1)
        return text[j:end], end + 1
    out: list[str] = []
    raw = bytearray()          # \x and octal escapes are bytes; flushed as UTF-8
    while j < n and text[j] != '"':
        c = text[j]
        if c != "\\":
            out.append(raw.decode("utf-8", "replace") + c) if raw else out.append(c)
            raw.clear()
            j += 1
            continue
        e = text[j + 1:j + 2]
        if e in _ESCAPES:
            out.append(raw.decode("utf-8", "replace") + _ESCAPES[e]) if raw else out.append(_ESCAPES[e])
            raw.clear()
            j += 2
        elif e in ("x", "u", "U") or e.isdigit():
            width = {"x": 2, "u": 4, "U": 8}.get(e, 3)
            start = j + 1 if e.isdigit() else j + 2
            digits = text[start:start + width]
            try:
                v = int(digits, 8 if e.isdigit() else 16)
                if len(digits) != width:
                    raise ValueError
            except ValueError:
                raise _error(f"bad escape in string literal: \\{e}{digits}", j + 1) from None
            if e in ("x",) or e.isdigit():
                raw.append(v & 0xFF)
            else:
                out.append(raw.decode("utf-8", "replace") + chr(v)) if raw else out.append(chr(v))
                raw.clear()
            j = start + width
        else:
            raise _error(f"unknown escape sequence \\{e}", j + 1)
    if j >= n:
        raise _error("string literal not terminated", i + 1)
    if raw:
        out.append(raw.decode("utf-8", "replace"))
    return "".join(out), j + 1


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif _is_ident_start(c):
            j = i + 1
            while j < n and _is_ident_char(text[j]):
                j += 1
            toks.append(_Tok("ident", text[i:j], i + 1))
            i = j
        elif c.isdigit():
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            toks.append(_Tok("int", text[i:j], i + 1))
            i = j
        elif c in "\"`":
            value, j = _string_literal(text, i)
            toks.append(_Tok("string", value, i + 1))
            i = j
        elif c in ".[]()*&-/":
            toks.append(_Tok("op", c, i + 1))
            i += 1
        else:
            what = {"+": "arithmetic is", "%": "arithmetic is", "=": "comparison is",
                    "!": "comparison is", "<": "comparison is", ">": "comparison is",
                    "'": "rune literals are", ",": "more than one argument is",
                    ":": "slicing is", "|": "arithmetic is", "^": "arithmetic is"}.get(c)
            hint = f" ({what} not supported in capture expressions; compare in an extra column's SQL)" \
                if what == "comparison is" else (f" ({what} not supported in capture expressions)" if what else "")
            raise _error(f"unexpected character {c!r}{hint}", i + 1)
    toks.append(_Tok("end", "", n + 1))
    return toks


def _int_literal(tok: _Tok) -> int:
    try:
        text = tok.text.replace("_", "")
        if len(text) > 1 and text[0] == "0" and text[1] in "xXoObB":
            return int(text, 0)
        if len(text) > 1 and text[0] == "0":
            return int(text, 8)                # Go: 0755 is octal
        return int(text, 10)
    except ValueError:
        raise _error(f"bad integer constant {tok.text!r}", tok.col) from None


class _Parser:
    def __init__(self, text: str):
        self.toks = _tokenize(text)
        self.pos = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.pos]

    def is_op(self, op: str) -> bool:
        return self.tok.kind == "op" and self.tok.text == op

    def next(self) -> _Tok:
        t = self.toks[self.pos]
        self.pos += 1
        return t

    def expect(self, op: str, context: str) -> _Tok:
        t = self.tok
        if t.kind != "op" or t.text != op:
            raise _error(f"expected '{op}' {context}, found {_describe(t)}", t.col)
        return self.next()

    def parse(self) -> Expr:
        if self.tok.kind == "end":
            raise _error("empty expression", 1)
        if self.is_op("&"):
            amp = self.next()
            if self.tok.kind == "end":
                raise _error("expected an expression after '&'", self.tok.col)
            e: Expr = AddrOf(self.unary(), amp.col)
        else:
            e = self.unary()
        t = self.tok
        if t.kind == "op" and t.text in "-/&":
            raise _error(f"unexpected character {t.text!r} (arithmetic is not supported in capture "
                         f"expressions)", t.col)
        if t.kind != "end":
            raise _error(f"unexpected {_describe(t)} after the expression", t.col)
        return e

    def unary(self) -> Expr:
        t = self.tok
        if t.kind == "op" and t.text == "*":
            self.next()
            return Deref(self.unary(), t.col)
        if t.kind == "op" and t.text == "&":
            raise _error("'&' is allowed only at the start of the expression (it yields the "
                         "address as an integer)", t.col)
        return self.postfix()

    def postfix(self) -> Expr:
        e = self.primary()
        while True:
            t = self.tok
            if t.kind == "op" and t.text == ".":
                self.next()
                if self.is_op("("):
                    e = self.type_assert(e)
                    continue
                name = self.tok
                if name.kind != "ident":
                    raise _error(f"expected a field name or '(' after '.', found {_describe(name)}",
                                 name.col)
                self.next()
                e = Selector(e, name.text, name.col)
            elif t.kind == "op" and t.text == "[":
                self.next()
                e = Index(e, *self.key())
                self.expect("]", "after the index")
            else:
                return e

    def key(self) -> tuple[Union[int, str, bool], int]:
        t = self.tok
        if t.kind == "int":
            self.next()
            return _int_literal(t), t.col
        if t.kind == "op" and t.text == "-" and self.toks[self.pos + 1].kind == "int":
            self.next()
            return -_int_literal(self.next()), t.col
        if t.kind == "string":
            self.next()
            return t.text, t.col
        if t.kind == "ident" and t.text in ("true", "false"):
            self.next()
            return t.text == "true", t.col
        if self.is_op("]"):
            raise _error("expected an index constant (an integer, a string or true/false)", t.col)
        if t.kind == "ident":
            raise _error(f"index must be a constant (an integer, a string or true/false), "
                         f"not the variable {t.text!r}", t.col)
        raise _error(f"expected an index constant (an integer, a string or true/false), "
                     f"found {_describe(t)}", t.col)

    def type_assert(self, x: Expr) -> Expr:
        self.expect("(", "")
        first = self.tok
        stars = ""
        while self.is_op("*"):
            stars += "*"
            self.next()
        t = self.tok
        if t.kind == "ident" and t.text == "type":
            raise _error("type switches are not supported: assert one type, x.(T)", t.col)
        parts: list[str] = []
        if t.kind == "string":            # Delve's quoted package path: "net/http".conn
            self.next()
            parts.append(t.text)
            self.expect(".", f"after the package path \"{t.text}\"")
            parts.append(".")
        # pkg/path.Name: identifiers joined by '/' and '.'
        while True:
            name = self.tok
            if name.kind != "ident":
                raise _error(f"expected a type name, found {_describe(name)}", name.col)
            parts.append(name.text)
            self.next()
            if self.is_op("/") or self.is_op("."):
                parts.append(self.next().text)
                continue
            break
        if not self.is_op(")"):
            what = _describe(self.tok)
            if self.is_op("["):
                raise _error("only named types (with '*') can be asserted to: no slices, maps "
                             "or generic instances", self.tok.col)
            raise _error(f"expected ')' to close the type assertion, found {what}", self.tok.col)
        self.next()
        return TypeAssert(x, stars + "".join(parts), first.col)

    def primary(self) -> Expr:
        t = self.tok
        if t.kind == "ident":
            self.next()
            if t.text in ("len", "cap") and self.is_op("("):
                self.next()
                if self.is_op(")"):
                    raise _error(f"{t.text} needs an argument", self.tok.col)
                arg = self.unary()
                self.expect(")", f"to close {t.text}(")
                return Len(arg, t.col) if t.text == "len" else Cap(arg, t.col)
            if self.is_op("("):
                raise _error(f"cannot call {t.text}: only len() and cap() are supported", self.tok.col)
            return Name(t.text, t.col)
        if t.kind == "op" and t.text == "(":
            self.next()
            e = self.unary()
            self.expect(")", "to close '('")
            return e
        if t.kind == "string":
            raise _error("a string constant can only be a map key (m[\"k\"])", t.col)
        raise _error(f"expected a variable name, found {_describe(t)}", t.col)


def _describe(t: _Tok) -> str:
    if t.kind == "end":
        return "end of expression"
    if t.kind == "int":
        return f"number {t.text}"
    if t.kind == "string":
        return f"string {_key_text(t.text)}"
    return f"'{t.text}'"


def parse_expr(text: str) -> Expr:
    """Parse a capture expression. Raises ExpressionError with `.column` set."""
    if not isinstance(text, str):
        raise _error(f"expected an expression string, got {type(text).__name__}")
    return _Parser(text).parse()


# -------------------------------------------------------------------- checker

Op = tuple


@dataclass(frozen=True)
class TypedExpr:
    root: str                    # variable the expression starts from
    ops: tuple[Op, ...]          # see the module docstring
    type_id: int                 # type of the result

    @property
    def is_value(self) -> bool:
        """True when the last op yields an integer instead of an address."""
        return bool(self.ops) and self.ops[-1][0] in VALUE_OPS

    def to_json(self) -> dict:
        return {"root": self.root, "ops": [list(op) for op in self.ops], "type_id": self.type_id}

    @staticmethod
    def from_json(d: dict) -> "TypedExpr":
        return TypedExpr(d["root"], tuple(tuple(op) for op in d["ops"]), d["type_id"])


VALUE_OPS = frozenset({"len", "cap", "len_indirect", "const", "addr"})


def op_type_ids(ops) -> list[int]:
    """Type ids that ops name (a map lookup walks its map type): a plan must
    keep them in its type table."""
    return [op[1] for op in ops if op[0] == "map_index"]


class TypeSource(Protocol):
    """Named types for type assertions: probe_compiler.dwarf.DwarfInfo is one."""

    def type_by_name(self, name: str) -> GoType: ...          # raises SymbolNotFound
    def type_table(self, root_ids) -> TypeTable: ...


def _basic(types: TypeTable, name: str, kind: Kind, size: int, synthetic_id: int) -> int:
    for t in types.types.values():
        if t.name == name and t.kind == kind and t.size == size:
            return t.id
    if synthetic_id not in types:
        types.add(GoType(synthetic_id, name, kind, size))
    return synthetic_id


def _field_off(t: GoType, name: str, default: int) -> int:
    f = t.field(name)
    return f.offset if f else default


def _package(function: str) -> str:
    """The package path of a function symbol: net/http.(*conn).serve -> net/http."""
    slash = function.rfind("/")
    dot = function.find(".", slash + 1)
    return function[:dot] if dot > 0 else ""


BUILTIN_TYPES = frozenset({"bool", "string", "int", "int8", "int16", "int32", "int64", "uint",
                           "uint8", "uint16", "uint32", "uint64", "uintptr", "float32", "float64",
                           "complex64", "complex128", "byte", "rune", "error", "any"})
MAP_KEY_KINDS = (Kind.STRING, Kind.INT, Kind.UINT, Kind.BOOL)


def _describe_const(k: Union[int, str, bool]) -> str:
    kind = "bool" if isinstance(k, bool) else "string" if isinstance(k, str) else "integer"
    return f"{_key_text(k)} (untyped {kind} constant)"


class _Checker:
    def __init__(self, var_types: dict[str, int], types: TypeTable, function: str,
                 type_source: TypeSource | None, addressable):
        self.vars, self.types, self.function = var_types, types, function
        self.type_source, self.addressable = type_source, addressable

    def t(self, type_id: int) -> GoType:
        try:
            return self.types[type_id]
        except KeyError:
            raise _error(f"type {type_id:#x} is missing from the type table") from None

    def check_top(self, e: Expr) -> tuple[str, list[Op], int]:
        if not isinstance(e, AddrOf):
            return self.check(e)
        if isinstance(e.x, (Len, Cap)):
            raise _error(f"cannot take the address of {format_expr(e.x)}: it is a computed value", e.col)
        root, ops, tid = self.check(e.x)
        if ops and ops[-1][0] in VALUE_OPS:
            raise _error(f"cannot take the address of {format_expr(e.x)}: it is a computed value", e.col)
        if not any(op[0] in ("deref", "index", "map_index", "assert") for op in ops) \
                and self.addressable is not None and not self.addressable(root):
            where = f" in {self.function}" if self.function else ""
            raise _error(f"cannot take the address of {format_expr(e.x)}: {root} lives only in "
                         f"registers{where} (the debug info gives it no memory location)", e.col)
        uintptr = _basic(self.types, "uintptr", Kind.UINT, PTR_SIZE, SYNTHETIC_UINTPTR)
        return root, ops + [("addr",)], uintptr

    def check(self, e: Expr) -> tuple[str, list[Op], int]:
        if isinstance(e, Name):
            if e.name not in self.vars:
                where = f" in {self.function}" if self.function else ""
                msg = f"no variable '{e.name}'{where}"
                close = difflib.get_close_matches(e.name, list(self.vars), n=3, cutoff=0.6)
                if close:
                    msg += f" (did you mean {', '.join(repr(c) for c in close)}?)"
                elif self.vars:
                    msg += f" (variables: {', '.join(sorted(self.vars))})"
                raise _error(msg, e.col)
            return e.name, [], self.vars[e.name]

        if isinstance(e, AddrOf):
            raise _error("'&' is allowed only at the start of the expression", e.col)

        if isinstance(e, Deref):
            root, ops, tid = self.check(e.x)
            t = self.t(tid)
            if t.kind != Kind.POINTER or t.elem is None:
                what = "unsafe.Pointer" if t.kind == Kind.UNSAFE_POINTER else f"{format_expr(e.x)} (type {t.name})"
                raise _error(f"cannot dereference {what}: not a typed pointer", e.col)
            return root, ops + [("deref",)], t.elem

        if isinstance(e, Selector):
            root, ops, tid = self.check(e.x)
            t = self.t(tid)
            if t.kind == Kind.POINTER and t.elem is not None and self.t(t.elem).kind == Kind.STRUCT:
                ops = ops + [("deref",)]
                t = self.t(t.elem)
            if t.kind == Kind.INTERFACE:
                raise _error(f"{format_expr(e.x)} (type {t.name}) is an interface: assert its dynamic "
                             f"type first, as in {format_expr(e.x)}.(*T).{e.name}", e.col)
            if t.kind != Kind.STRUCT:
                raise _error(f"{format_expr(e.x)} (type {t.name}) has no fields: "
                             f"cannot select '{e.name}'", e.col)
            path = self.find_field(t, e.name, e.col)
            if path is None:
                names = ", ".join(f.name for f in t.fields) or "none"
                msg = f"no field '{e.name}' in {t.name} (fields: {names})"
                close = difflib.get_close_matches(e.name, [f.name for f in t.fields], n=1, cutoff=0.6)
                if close:
                    msg = f"no field '{e.name}' in {t.name} (did you mean '{close[0]}'? fields: {names})"
                raise _error(msg, e.col)
            for step_ops in path[0]:
                ops = ops + step_ops
            return root, ops, path[1]

        if isinstance(e, TypeAssert):
            return self.check_assert(e)

        if isinstance(e, Index):
            return self.check_index(e)

        if isinstance(e, (Len, Cap)):
            return self.check_len_cap(e)

        raise TypeError(e)

    # -- x.(T)

    def resolve_type(self, e: TypeAssert) -> GoType:
        if self.type_source is None:
            raise _error(f"cannot check the type assertion to {e.type_name}: no debug info", e.col)
        stars = len(e.type_name) - len(e.type_name.lstrip("*"))
        base = e.type_name[stars:]
        base = {"byte": "uint8", "rune": "int32", "any": "interface {}"}.get(base, base)
        candidates = [base]
        pkg = _package(self.function)
        if "." not in base and base not in BUILTIN_TYPES and pkg:
            candidates.insert(0, f"{pkg}.{base}")   # as Go resolves it inside the package
        first_err: SymbolNotFound | None = None
        for name in candidates:
            try:
                return self.type_source.type_by_name("*" * stars + name)
            except SymbolNotFound as err:
                first_err = first_err or err
        shown = "*" * stars + candidates[0]
        msg = f"no type {shown} in the binary's debug info"
        hints = list(getattr(first_err, "suggestions", None) or [])
        if hints:
            msg += f" (did you mean {', '.join(hints[:3])}?)"
        elif stars:
            msg += " (a pointer type the program never uses is not described)"
        raise _error(msg, e.col)

    def check_assert(self, e: TypeAssert) -> tuple[str, list[Op], int]:
        root, ops, tid = self.check(e.x)
        it = self.t(tid)
        if it.kind != Kind.INTERFACE:
            raise _error(f"invalid type assertion: {format_expr(e.x)} (type {it.name}) is not an "
                         f"interface", e.col)
        want = self.resolve_type(e)
        if want.kind == Kind.INTERFACE:
            raise _error(f"asserting to an interface type ({want.name}) is not supported: "
                         f"assert to a concrete type", e.col)
        if want.runtime_type is None:
            raise _error(f"{want.name} has no runtime type in this binary (the program never "
                         f"stores it in an interface), so {format_expr(e.x)} can't hold it", e.col)
        for tid2, tt in self.type_source.type_table([want.id]).types.items():
            self.types.types.setdefault(tid2, tt)
        want = self.t(want.id)
        from .decode import direct_iface
        type_word = it.field("_type") if it.empty else it.field("tab")
        data = it.field("data")
        itab_type_off = -1
        if not it.empty:
            tab = self.types.types.get(type_word.type_id) if type_word else None
            itab = self.types.types.get(tab.elem) if tab and tab.elem is not None else None
            f = itab and (itab.field("Type") or itab.field("_type"))
            itab_type_off = f.offset if f else 8
        op = ("assert", want.runtime_type, type_word.offset if type_word else 0, itab_type_off,
              data.offset if data else PTR_SIZE, direct_iface(self.types, want), want.name)
        return root, ops + [op], want.id

    # -- x[i], m[k]

    def check_index(self, e: Index) -> tuple[str, list[Op], int]:
        root, ops, tid = self.check(e.x)
        t = self.t(tid)
        if t.kind == Kind.POINTER and t.elem is not None and self.t(t.elem).kind == Kind.ARRAY:
            ops, t = ops + [("deref",)], self.t(t.elem)      # Go: p[i] for p *[N]T
        i = e.index
        if t.kind == Kind.MAP:
            return root, ops + [("map_index", t.id, self.map_key(t, e))], t.elem
        if t.kind not in (Kind.ARRAY, Kind.SLICE, Kind.STRING):
            raise _error(f"cannot index {format_expr(e.x)} (type {t.name})", e.col)
        if isinstance(i, (str, bool)):
            raise _error(f"invalid index {_describe_const(i)} of {format_expr(e.x)} (type {t.name}): "
                         f"arrays, slices and strings take integer indexes", e.col)
        if i < 0:
            raise _error(f"invalid index {i} (index must be non-negative)", e.col)
        if t.kind == Kind.ARRAY:
            n = t.length or 0
            if i >= n:
                raise _error(f"index {i} out of range for {t.name} (length {n})", e.col)
            elem = self.t(t.elem)
            return root, ops + [("offset", i * elem.size)], elem.id
        if t.kind == Kind.SLICE:
            elem = self.t(t.elem)
            return root, ops + [("index", i, elem.size, _field_off(t, "array", 0),
                                 _field_off(t, "len", PTR_SIZE))], elem.id
        byte = _basic(self.types, "uint8", Kind.UINT, 1, SYNTHETIC_BYTE)
        return root, ops + [("index", i, 1, _field_off(t, "str", 0),
                             _field_off(t, "len", PTR_SIZE))], byte

    def map_key(self, t: GoType, e: Index) -> Any:
        key_t = self.t(t.key)
        k = e.index
        if t.map_layout is None:
            raise _error(f"cannot index {t.name}: this binary's map layout is unknown", e.col)
        if key_t.kind not in MAP_KEY_KINDS:
            raise _error(f"cannot look up a key of type {key_t.name} in {t.name}: only string, "
                         f"integer and bool keys are supported (capture the whole map instead)", e.col)
        ok = (key_t.kind == Kind.STRING and isinstance(k, str)) or \
             (key_t.kind == Kind.BOOL and isinstance(k, bool)) or \
             (key_t.kind in (Kind.INT, Kind.UINT) and isinstance(k, int) and not isinstance(k, bool))
        if not ok:
            raise _error(f"cannot use {_describe_const(k)} as {key_t.name} value in map index "
                         f"of {format_expr(e.x)} (type {t.name})", e.col)
        if key_t.kind in (Kind.INT, Kind.UINT):
            bits = 8 * key_t.size
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if key_t.kind == Kind.INT else (0, (1 << bits) - 1)
            if not lo <= k <= hi:
                raise _error(f"cannot use {k} as {key_t.name} value in map index (overflows)", e.col)
        return k

    # -- len(x), cap(x)

    def check_len_cap(self, e) -> tuple[str, list[Op], int]:
        fn = "len" if isinstance(e, Len) else "cap"
        root, ops, tid = self.check(e.x)
        t = self.t(tid)
        int_id = _basic(self.types, "int", Kind.INT, PTR_SIZE, SYNTHETIC_INT)
        if t.kind == Kind.POINTER and t.elem is not None and self.t(t.elem).kind == Kind.ARRAY:
            t = self.t(t.elem)                                # Go: len(p) for p *[N]T
            return root, ops + [("const", t.length or 0)], int_id
        if t.kind == Kind.ARRAY:
            return root, ops + [("const", t.length or 0)], int_id
        if t.kind == Kind.SLICE:
            return root, ops + [(fn, _field_off(t, fn, PTR_SIZE if fn == "len" else 2 * PTR_SIZE))], int_id
        if t.kind == Kind.STRING and fn == "len":
            return root, ops + [("len", _field_off(t, "len", PTR_SIZE))], int_id
        if t.kind == Kind.MAP and fn == "len":
            header = self.t(t.map_layout.header) if t.map_layout else None
            count = header and (header.field("used") if t.map_layout.impl == "swiss"
                                else header.field("count"))
            if count is None:
                raise _error(f"cannot take len of {t.name}: this binary's map layout is unknown", e.col)
            return root, ops + [("len_indirect", count.offset, self.t(count.type_id).size)], int_id
        if t.kind == Kind.CHAN:
            header = self.t(t.chan_header) if t.chan_header is not None else None
            count = header.field("qcount" if fn == "len" else "dataqsiz") if header else None
            if count is None:
                raise _error(f"cannot take {fn} of {t.name}: runtime.hchan is unknown", e.col)
            return root, ops + [("len_indirect", count.offset, self.t(count.type_id).size)], int_id
        raise _error(f"invalid argument: {format_expr(e.x)} (type {t.name}) for {fn}", e.col)

    def find_field(self, t: GoType, name: str, col: int = 0) -> tuple[list[list[Op]], int] | None:
        """Go's selector rule: the shallowest field with that name, through embedded
        structs (and embedded pointers to structs). Ambiguity at one depth is an error."""
        level: list[tuple[GoType, list[list[Op]]]] = [(t, [])]
        seen: set[int] = set()
        while level:
            found = []
            nxt: list[tuple[GoType, list[list[Op]]]] = []
            for st, path in level:
                if st.id in seen:
                    continue
                seen.add(st.id)
                for f in st.fields:
                    step = path + [[("offset", f.offset)]]
                    if f.name == name:
                        found.append((step, f.type_id))
                    elif f.embedded:
                        ft = self.types.types.get(f.type_id)
                        if ft is None:
                            continue
                        if ft.kind == Kind.STRUCT:
                            nxt.append((ft, step))
                        elif ft.kind == Kind.POINTER and ft.elem in self.types \
                                and self.t(ft.elem).kind == Kind.STRUCT:
                            nxt.append((self.t(ft.elem), step + [[("deref",)]]))
            if len(found) > 1:
                raise _error(f"ambiguous selector '{name}' in {t.name}", col)
            if found:
                return found[0]
            level = nxt
        return None


def _merge(ops: list[Op]) -> tuple[Op, ...]:
    out: list[Op] = []
    for op in ops:
        if op[0] == "offset":
            if op[1] == 0:
                continue
            if out and out[-1][0] == "offset":
                out[-1] = ("offset", out[-1][1] + op[1])
                continue
        out.append(op)
    return tuple(out)


def check_expr(expr: Expr, var_types: dict[str, int], types: TypeTable,
               function: str = "", *, type_source: TypeSource | None = None,
               addressable=None) -> TypedExpr:
    """Type-check `expr` against the variables in scope (name -> type id).

    `function` names the function in error messages, and its package is where
    an unqualified type of `x.(T)` is looked up. `type_source` (the binary's
    DwarfInfo) resolves the types of type assertions; their types are added to
    `types`. `addressable(root) -> bool` says whether a root variable has a
    memory location anywhere (`&x` of a register-only variable is an error).
    May add the synthetic `int`/`uint8`/`uintptr` types to `types` (negative ids)."""
    root, ops, tid = _Checker(var_types, types, function, type_source, addressable).check_top(expr)
    return TypedExpr(root, _merge(ops), tid)


def compile_expr(text: str, var_types: dict[str, int], types: TypeTable,
                 function: str = "", **kw) -> TypedExpr:
    """parse_expr + check_expr."""
    return check_expr(parse_expr(text), var_types, types, function, **kw)


def column_name(text: str) -> str:
    """The column name a capture gets when the spec names none: `req.ID` -> `req_ID`."""
    return sanitize_identifier(text)


def sanitize_identifier(text: str) -> str:
    """`req.ID` -> `req_ID`; an address `&cs.mu` -> `addr_cs_mu`, so that it
    does not take the name of the value `cs.mu`."""
    stripped = text.lstrip()
    if stripped.startswith("&"):
        return "addr_" + sanitize_identifier(stripped[1:]).lstrip("_")
    out, prev_us = [], False
    for c in text:
        if c.isascii() and c.isalnum():
            out.append(c)
            prev_us = False
        elif not prev_us:
            out.append("_")
            prev_us = True
    s = "".join(out).strip("_")
    if not s:
        return "_"
    if s[0].isdigit():
        s = "_" + s
    return s


__all__ = ["Expr", "Name", "Selector", "Deref", "Index", "Len", "Cap", "AddrOf", "TypeAssert",
           "TypedExpr", "Op", "parse_expr", "check_expr", "compile_expr", "format_expr",
           "column_name", "sanitize_identifier", "op_type_ids", "VALUE_OPS", "SYNTHETIC_INT",
           "SYNTHETIC_BYTE", "SYNTHETIC_UINTPTR"]
