"""Capture expressions: Go syntax in, a typed list of memory operations out.

The language (a small subset of Go expressions, no Python eval anywhere):

    expr    := '*' expr | postfix
    postfix := primary ( '.' IDENT | '[' INT ']' )*
    primary := IDENT | 'len' '(' expr ')' | '(' expr ')'

Field access dereferences one pointer automatically (`p.f` for `p *T`, as Go
does) and reaches promoted fields of embedded structs (`s.Lock` through an
embedded `sync.Mutex`). Indexes are non-negative integer constants, on arrays,
slices and strings (a string index yields its byte).

`check_expr` turns a parsed expression into a `TypedExpr`: the root variable,
a tuple of ops and the result type. Ops are plain JSON-able tuples that need
nothing but address arithmetic and loads, so both the user-space reader and
the eBPF probe can run them. An executor starts with `addr` = the address of
the root variable and applies, in order:

    ("offset", n)                 addr += n
    ("deref",)                    addr = load_ptr(addr); 0 -> stop: nil pointer
    ("index", i, elem_size, data_off, len_off)
                                  n = load_int(addr + len_off); i >= n -> stop: out of range
                                  addr = load_ptr(addr + data_off) + i * elem_size
    ("len", len_off)              value = load_int(addr + len_off)          (last op)
    ("len_indirect", off, size)   p = load_ptr(addr); value = 0 if p == 0
                                  else load_uint(p + off, size)             (last op)
    ("const", n)                  value = n                                 (last op)

Without a value-producing last op the result is the value of type `type_id`
stored at `addr`; with one, the result is that integer (type `int`). Pointers,
ints and lengths are 8 bytes (amd64).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Union

from .errors import ExpressionError
from .types import GoType, Kind, TypeTable

PTR_SIZE = 8

# Ids of types check_expr adds to a table that lacks them (results of len(),
# a string's byte). Negative, so they never clash with DWARF offsets.
SYNTHETIC_INT = -1
SYNTHETIC_BYTE = -2


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
    index: int
    col: int            # column of the index constant


@dataclass(frozen=True)
class Len:
    x: "Expr"
    col: int


Expr = Union[Name, Selector, Deref, Index, Len]


def format_expr(e: Expr) -> str:
    """Canonical Go text of an expression."""
    if isinstance(e, Name):
        return e.name
    if isinstance(e, Selector):
        inner = format_expr(e.x)
        return f"({inner}).{e.name}" if isinstance(e.x, Deref) else f"{inner}.{e.name}"
    if isinstance(e, Index):
        inner = format_expr(e.x)
        return f"({inner})[{e.index}]" if isinstance(e.x, Deref) else f"{inner}[{e.index}]"
    if isinstance(e, Deref):
        return "*" + format_expr(e.x)
    if isinstance(e, Len):
        return f"len({format_expr(e.x)})"
    raise TypeError(e)


# --------------------------------------------------------------------- parser

@dataclass(frozen=True)
class _Tok:
    kind: str           # "ident", "int", "op", "end"
    text: str
    col: int            # 1-based


def _is_ident_start(c: str) -> bool:
    return c == "_" or c.isalpha()


def _is_ident_char(c: str) -> bool:
    return c == "_" or c.isalnum()


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
        elif c in ".[]()*":
            toks.append(_Tok("op", c, i + 1))
            i += 1
        elif c == "-" and i + 1 < n and text[i + 1].isdigit():
            raise _error("index must be a non-negative integer constant", i + 1)
        else:
            what = {"&": "taking an address is", "+": "arithmetic is", "-": "arithmetic is",
                    "/": "arithmetic is", "%": "arithmetic is", "=": "comparison is",
                    "!": "comparison is", "<": "comparison is", ">": "comparison is",
                    "\"": "string literals are", "`": "string literals are",
                    "'": "rune literals are", ",": "more than one argument is",
                    ":": "slicing is"}.get(c)
            hint = f" ({what} not supported in capture expressions)" if what else ""
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
        e = self.unary()
        if self.tok.kind != "end":
            raise _error(f"unexpected {_describe(self.tok)} after the expression", self.tok.col)
        return e

    def unary(self) -> Expr:
        t = self.tok
        if t.kind == "op" and t.text == "*":
            self.next()
            return Deref(self.unary(), t.col)
        return self.postfix()

    def postfix(self) -> Expr:
        e = self.primary()
        while True:
            t = self.tok
            if t.kind == "op" and t.text == ".":
                self.next()
                name = self.tok
                if name.kind != "ident":
                    raise _error(f"expected a field name after '.', found {_describe(name)}", name.col)
                self.next()
                e = Selector(e, name.text, name.col)
            elif t.kind == "op" and t.text == "[":
                self.next()
                idx = self.tok
                if idx.kind != "int":
                    raise _error("index must be a non-negative integer constant", idx.col)
                self.next()
                self.expect("]", "after the index")
                e = Index(e, _int_literal(idx), idx.col)
            else:
                return e

    def primary(self) -> Expr:
        t = self.tok
        if t.kind == "ident":
            self.next()
            if t.text == "len" and self.tok.kind == "op" and self.tok.text == "(":
                self.next()
                if self.tok.kind == "op" and self.tok.text == ")":
                    raise _error("len needs an argument", self.tok.col)
                arg = self.unary()
                self.expect(")", "to close len(")
                return Len(arg, t.col)
            if self.tok.kind == "op" and self.tok.text == "(":
                raise _error(f"cannot call {t.text}: only len() is supported", self.tok.col)
            return Name(t.text, t.col)
        if t.kind == "op" and t.text == "(":
            self.next()
            e = self.unary()
            self.expect(")", "to close '('")
            return e
        raise _error(f"expected a variable name, found {_describe(t)}", t.col)


def _describe(t: _Tok) -> str:
    if t.kind == "end":
        return "end of expression"
    if t.kind == "int":
        return f"number {t.text}"
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


VALUE_OPS = frozenset({"len", "len_indirect", "const"})


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


class _Checker:
    def __init__(self, var_types: dict[str, int], types: TypeTable, function: str):
        self.vars, self.types, self.function = var_types, types, function

    def t(self, type_id: int) -> GoType:
        try:
            return self.types[type_id]
        except KeyError:
            raise _error(f"type {type_id:#x} is missing from the type table") from None

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

        if isinstance(e, Index):
            root, ops, tid = self.check(e.x)
            t = self.t(tid)
            if t.kind == Kind.POINTER and t.elem is not None and self.t(t.elem).kind == Kind.ARRAY:
                ops, t = ops + [("deref",)], self.t(t.elem)      # Go: p[i] for p *[N]T
            i = e.index
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
            if t.kind == Kind.STRING:
                byte = _basic(self.types, "uint8", Kind.UINT, 1, SYNTHETIC_BYTE)
                return root, ops + [("index", i, 1, _field_off(t, "str", 0),
                                     _field_off(t, "len", PTR_SIZE))], byte
            if t.kind == Kind.MAP:
                raise _error(f"cannot index {t.name} by constant: capture the whole map instead", e.col)
            raise _error(f"cannot index {format_expr(e.x)} (type {t.name})", e.col)

        if isinstance(e, Len):
            root, ops, tid = self.check(e.x)
            t = self.t(tid)
            int_id = _basic(self.types, "int", Kind.INT, PTR_SIZE, SYNTHETIC_INT)
            if t.kind == Kind.POINTER and t.elem is not None and self.t(t.elem).kind == Kind.ARRAY:
                t = self.t(t.elem)                                # Go: len(p) for p *[N]T
                return root, ops + [("const", t.length or 0)], int_id
            if t.kind == Kind.ARRAY:
                return root, ops + [("const", t.length or 0)], int_id
            if t.kind in (Kind.STRING, Kind.SLICE):
                return root, ops + [("len", _field_off(t, "len", PTR_SIZE))], int_id
            if t.kind == Kind.MAP:
                header = self.t(t.map_layout.header) if t.map_layout else None
                count = header and (header.field("used") if t.map_layout.impl == "swiss"
                                    else header.field("count"))
                if count is None:
                    raise _error(f"cannot take len of {t.name}: this binary's map layout is unknown", e.col)
                return root, ops + [("len_indirect", count.offset, self.t(count.type_id).size)], int_id
            if t.kind == Kind.CHAN:
                header = self.t(t.chan_header) if t.chan_header is not None else None
                count = header.field("qcount") if header else None
                if count is None:
                    raise _error(f"cannot take len of {t.name}: runtime.hchan is unknown", e.col)
                return root, ops + [("len_indirect", count.offset, self.t(count.type_id).size)], int_id
            raise _error(f"invalid argument: {format_expr(e.x)} (type {t.name}) for len", e.col)

        raise TypeError(e)

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
               function: str = "") -> TypedExpr:
    """Type-check `expr` against the variables in scope (name -> type id).

    `function` only names the function in error messages. May add the
    synthetic `int`/`uint8` types to `types` (ids SYNTHETIC_INT/SYNTHETIC_BYTE)."""
    root, ops, tid = _Checker(var_types, types, function).check(expr)
    return TypedExpr(root, _merge(ops), tid)


def compile_expr(text: str, var_types: dict[str, int], types: TypeTable,
                 function: str = "") -> TypedExpr:
    """parse_expr + check_expr."""
    return check_expr(parse_expr(text), var_types, types, function)


def column_name(text: str) -> str:
    """The column name a capture gets when the spec names none: `req.ID` -> `req_ID`."""
    return sanitize_identifier(text)


def sanitize_identifier(text: str) -> str:
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


__all__ = ["Expr", "Name", "Selector", "Deref", "Index", "Len", "TypedExpr", "Op",
           "parse_expr", "check_expr", "compile_expr", "format_expr", "column_name",
           "sanitize_identifier", "VALUE_OPS", "SYNTHETIC_INT", "SYNTHETIC_BYTE"]
