"""Capture expressions: the parser, the checker on hand-built types, and one real binary."""
from __future__ import annotations

import difflib
import json
import os
import subprocess
from pathlib import Path

import pytest

from probe_compiler.errors import ExpressionError, SymbolNotFound
from probe_compiler.expr import (SYNTHETIC_BYTE, AddrOf, Cap, Deref, Index, Len, Name, Selector,
                                 TypeAssert, TypedExpr, check_expr, column_name, compile_expr,
                                 format_expr, parse_expr)
from probe_compiler.types import Field, GoType, Kind, MapLayout, TypeTable

# ------------------------------------------------------------------- parser


@pytest.mark.parametrize("text, want", [
    ("x", Name("x", 1)),
    ("req.ID", Selector(Name("req", 1), "ID", 5)),
    ("*p", Deref(Name("p", 2), 1)),
    ("*p.f", Deref(Selector(Name("p", 2), "f", 4), 1)),           # Go: *(p.f)
    ("(*p).f", Selector(Deref(Name("p", 3), 2), "f", 6)),
    ("a[3]", Index(Name("a", 1), 3, 3)),
    ("a[0x10]", Index(Name("a", 1), 16, 3)),
    ("a[1_000]", Index(Name("a", 1), 1000, 3)),
    ("len(s.tags)", Len(Selector(Name("s", 5), "tags", 7), 1)),
    (" len ( a ) ", Len(Name("a", 8), 2)),
    ("s.a[1].b[2]", Index(Selector(Index(Selector(Name("s", 1), "a", 3), 1, 5), "b", 8), 2, 10)),
    ("π.ü", Selector(Name("π", 1), "ü", 3)),
    ("len", Name("len", 1)),
    ("&cs.mu", AddrOf(Selector(Name("cs", 2), "mu", 5), 1)),
    ("&*p", AddrOf(Deref(Name("p", 3), 2), 1)),
    ("x.(T)", TypeAssert(Name("x", 1), "T", 4)),
    ("x.(*main.T).f", Selector(TypeAssert(Name("x", 1), "*main.T", 4), "f", 13)),
    ("c.(* net/http.conn )", TypeAssert(Name("c", 1), "*net/http.conn", 4)),
    ('c.(*"net/http".conn)', TypeAssert(Name("c", 1), "*net/http.conn", 4)),
    ('m["k"]', Index(Name("m", 1), "k", 3)),
    ("m[`a\\b`]", Index(Name("m", 1), "a\\b", 3)),
    ('m["\\t\\x41\\u00e9\\303\\251"]', Index(Name("m", 1), "\tAéé", 3)),
    ("m[-3]", Index(Name("m", 1), -3, 3)),
    ("m[true]", Index(Name("m", 1), True, 3)),
    ("m[false]", Index(Name("m", 1), False, 3)),
    ("cap(s)", Cap(Name("s", 5), 1)),
])
def test_parse(text, want):
    assert parse_expr(text) == want


@pytest.mark.parametrize("text", ["req.ID", "*p", "(*p).f", "len(s.tags)", "a[3].b", "*p.f", "(*p)[2]",
                                  "&cs.mu", "x.(*main.T).f", 'm["k\\n"]', "m[-1]", "m[true]", "cap(s)",
                                  "(*p).(T)", "&(*p).f"])
def test_format_round_trips(text):
    assert format_expr(parse_expr(text)) == text


@pytest.mark.parametrize("text, column, message", [
    ("", 1, "empty expression"),
    ("a.", 3, "expected a field name or '(' after '.', found end of expression"),
    ("a.3", 3, "expected a field name or '(' after '.', found number 3"),
    ("a[i]", 3, "index must be a constant (an integer, a string or true/false), not the variable 'i'"),
    ("a[]", 3, "expected an index constant (an integer, a string or true/false)"),
    ("a[1", 4, "expected ']' after the index, found end of expression"),
    ("a[0x]", 3, "bad integer constant '0x'"),
    ("(a", 3, "expected ')' to close '(', found end of expression"),
    ("a)", 2, "unexpected ')' after the expression"),
    ("a b", 3, "unexpected 'b' after the expression"),
    ("f(x)", 2, "cannot call f: only len() and cap() are supported"),
    ("len()", 5, "len needs an argument"),
    ("cap()", 5, "cap needs an argument"),
    ("a + b", 3, "unexpected character '+' (arithmetic is not supported in capture expressions)"),
    ("a - b", 3, "unexpected character '-' (arithmetic is not supported in capture expressions)"),
    ("a == b", 3, "unexpected character '=' (comparison is not supported in capture expressions; "
                  "compare in an extra column's SQL)"),
    ("a[1:2]", 4, "unexpected character ':' (slicing is not supported in capture expressions)"),
    ("&", 2, "expected an expression after '&'"),
    ("*&x", 2, "'&' is allowed only at the start of the expression (it yields the address as an integer)"),
    ("len(&x)", 5, "'&' is allowed only at the start of the expression (it yields the address as an integer)"),
    ("a & b", 3, "unexpected character '&' (arithmetic is not supported in capture expressions)"),
    ('m["k]', 3, "string literal not terminated"),
    ('m["\\q"]', 4, "unknown escape sequence \\q"),
    ('"k"', 1, 'a string constant can only be a map key (m["k"])'),
    ("x.()", 4, "expected a type name, found ')'"),
    ("x.(*)", 5, "expected a type name, found ')'"),
    ("x.(T", 5, "expected ')' to close the type assertion, found end of expression"),
    ("x.(type)", 4, "type switches are not supported: assert one type, x.(T)"),
    ("x.([]int)", 4, "expected a type name, found '['"),
    ("x.(main.List[int])", 13, "only named types (with '*') can be asserted to: no slices, maps or "
                               "generic instances"),
    ('x.("net/http")', 14, "expected '.' after the package path \"net/http\", found ')'"),
])
def test_parse_errors(text, column, message):
    with pytest.raises(ExpressionError) as e:
        parse_expr(text)
    assert (str(e.value), e.value.column) == (message, column)


def test_column_names():
    assert column_name("req.ID") == "req_ID"
    assert column_name("*p") == "p"
    assert column_name("len(s.tags)") == "len_s_tags"
    assert column_name("a[3].b") == "a_3_b"
    assert column_name("(*p).f") == "p_f"
    assert column_name("&cs.mu") == "addr_cs_mu"
    assert column_name("codec.(*gobServerCodec).rwc") == "codec_gobServerCodec_rwc"
    assert column_name('m["k"]') == "m_k"


# ------------------------------------------------------------- hand-built types

INT, U8, U32, STR, BOOL, I8, U16 = 1, 2, 3, 4, 5, 6, 7
MUTEX, SERVER, P_SERVER, SLICE_STR, ARR4, MAP, SWISS_MAP, CHAN, HCHAN, INNER, P_INNER = range(10, 21)
UNSAFE, PP_SERVER, P_ARR4, OUTER, MAP_HMAP, HMAP = range(21, 27)
SHAPE, ITAB, P_ITAB, ANY, RECT, P_RECT, CIRCLE, MAP_BOOL, MAP_I8, P_CIRCLE, MAP_INNER = range(30, 41)
RT = {"int": 0x400, "main.rect": 0x100, "*main.rect": 0x200, "main.circle": 0x300}


def build_types() -> TypeTable:
    t = TypeTable()
    for g in [
        GoType(INT, "int", Kind.INT, 8, runtime_type=RT["int"]),
        GoType(I8, "int8", Kind.INT, 1),
        GoType(U16, "uint16", Kind.UINT, 2),
        GoType(U8, "uint8", Kind.UINT, 1),
        GoType(U32, "uint32", Kind.UINT, 4),
        GoType(STR, "string", Kind.STRING, 16, fields=(Field("str", 0, UNSAFE), Field("len", 8, INT))),
        GoType(BOOL, "bool", Kind.BOOL, 1),
        GoType(UNSAFE, "unsafe.Pointer", Kind.UNSAFE_POINTER, 8),
        GoType(MUTEX, "sync.Mutex", Kind.STRUCT, 8, fields=(Field("state", 0, INT), Field("sema", 4, U32))),
        GoType(INNER, "main.inner", Kind.STRUCT, 24, fields=(Field("A", 0, U8), Field("b", 8, STR))),
        GoType(P_INNER, "*main.inner", Kind.POINTER, 8, elem=INNER),
        GoType(SERVER, "main.server", Kind.STRUCT, 120, fields=(
            Field("inner", 0, INNER, embedded=True),
            Field("name", 24, STR),
            Field("tags", 40, SLICE_STR),
            Field("arr", 64, ARR4),
            Field("counts", 72, MAP),
            Field("ch", 80, CHAN),
            Field("parent", 88, P_SERVER),
            Field("mu", 96, MUTEX),
            Field("old", 104, MAP_HMAP),
            Field("raw", 112, UNSAFE),
        )),
        GoType(P_SERVER, "*main.server", Kind.POINTER, 8, elem=SERVER),
        GoType(PP_SERVER, "**main.server", Kind.POINTER, 8, elem=P_SERVER),
        GoType(SLICE_STR, "[]string", Kind.SLICE, 24, elem=STR,
               fields=(Field("array", 0, UNSAFE), Field("len", 8, INT), Field("cap", 16, INT))),
        GoType(ARR4, "[4]uint32", Kind.ARRAY, 16, elem=U32, length=4),
        GoType(P_ARR4, "*[4]uint32", Kind.POINTER, 8, elem=ARR4),
        GoType(SWISS_MAP, "internal/runtime/maps.Map", Kind.STRUCT, 48,
               fields=(Field("used", 0, INT), Field("seed", 8, INT))),
        GoType(MAP, "map[string]int", Kind.MAP, 8, key=STR, elem=INT,
               map_layout=MapLayout("swiss", header=SWISS_MAP)),
        GoType(HMAP, "runtime.hmap", Kind.STRUCT, 48, fields=(Field("count", 0, INT), Field("flags", 8, U8))),
        GoType(MAP_HMAP, "map[int]bool", Kind.MAP, 8, key=INT, elem=BOOL,
               map_layout=MapLayout("hmap", header=HMAP)),
        GoType(HCHAN, "runtime.hchan", Kind.STRUCT, 96,
               fields=(Field("qcount", 0, INT), Field("dataqsiz", 8, INT), Field("closed", 28, U32))),
        GoType(CHAN, "chan int", Kind.CHAN, 8, elem=INT, chan_header=HCHAN),
        GoType(OUTER, "main.outer", Kind.STRUCT, 16, fields=(
            Field("inner", 0, P_INNER, embedded=True), Field("Mutex", 8, MUTEX, embedded=True))),
        GoType(ITAB, "runtime.itab", Kind.STRUCT, 32, fields=(Field("inter", 0, UNSAFE),
                                                               Field("_type", 8, UNSAFE))),
        GoType(P_ITAB, "*runtime.itab", Kind.POINTER, 8, elem=ITAB),
        GoType(SHAPE, "main.Shape", Kind.INTERFACE, 16, fields=(Field("tab", 0, P_ITAB),
                                                                Field("data", 8, UNSAFE))),
        GoType(ANY, "interface {}", Kind.INTERFACE, 16, empty=True,
               fields=(Field("_type", 0, UNSAFE), Field("data", 8, UNSAFE))),
        GoType(RECT, "main.rect", Kind.STRUCT, 16, fields=(Field("W", 0, INT), Field("H", 8, INT)),
               runtime_type=RT["main.rect"]),
        GoType(P_RECT, "*main.rect", Kind.POINTER, 8, elem=RECT, runtime_type=RT["*main.rect"]),
        GoType(CIRCLE, "main.circle", Kind.STRUCT, 8, fields=(Field("R", 0, INT),),
               runtime_type=RT["main.circle"]),
        GoType(P_CIRCLE, "*main.circle", Kind.POINTER, 8, elem=CIRCLE),     # never in an interface
        GoType(MAP_BOOL, "map[bool]string", Kind.MAP, 8, key=BOOL, elem=STR,
               map_layout=MapLayout("swiss", header=SWISS_MAP)),
        GoType(MAP_I8, "map[int8]uint16", Kind.MAP, 8, key=I8, elem=U16,
               map_layout=MapLayout("hmap", header=HMAP)),
        GoType(MAP_INNER, "map[main.inner]int", Kind.MAP, 8, key=INNER, elem=INT,
               map_layout=MapLayout("swiss", header=SWISS_MAP)),
    ]:
        t.add(g)
    return t


@pytest.fixture
def types() -> TypeTable:
    return build_types()


class FakeTypes:
    """A TypeSource over the hand-built table, as DwarfInfo is one over DWARF."""

    def __init__(self, table: TypeTable):
        self.table = table

    def type_by_name(self, name: str) -> GoType:
        by_name = {t.name: t for t in self.table.types.values()}
        if name not in by_name:
            raise SymbolNotFound(f"type {name!r} is not in the DWARF",
                                 difflib.get_close_matches(name, by_name, n=3))
        return by_name[name]

    def type_table(self, root_ids) -> TypeTable:
        return self.table


VARS = {"s": P_SERVER, "v": SERVER, "pp": PP_SERVER, "pa": P_ARR4, "o": OUTER, "n": INT, "str": STR,
        "sh": SHAPE, "a": ANY, "mb": MAP_BOOL, "m8": MAP_I8, "mi": MAP_INNER, "reg": INT}


def check(text, types) -> TypedExpr:
    return compile_expr(text, VARS, types, "main.f", type_source=FakeTypes(types),
                        addressable=lambda root: root != "reg")


@pytest.mark.parametrize("text, ops, type_id", [
    ("n", (), INT),
    ("v.name", (("offset", 24),), STR),
    ("s.name", (("deref",), ("offset", 24)), STR),                  # auto-deref
    ("(*s).name", (("deref",), ("offset", 24)), STR),
    ("*s", (("deref",),), SERVER),
    ("s.mu.state", (("deref",), ("offset", 96)), INT),
    ("s.mu.sema", (("deref",), ("offset", 100)), U32),
    ("s.parent.parent.mu", (("deref",), ("offset", 88), ("deref",), ("offset", 88), ("deref",),
                            ("offset", 96)), MUTEX),
    ("s.A", (("deref",),), U8),                                      # promoted from inner at 0
    ("v.b", (("offset", 8),), STR),
    ("v.inner.b", (("offset", 8),), STR),
    ("o.b", (("deref",), ("offset", 8)), STR),                       # through an embedded *inner
    ("o.state", (("offset", 8),), INT),                              # through embedded Mutex
    ("v.arr[2]", (("offset", 64 + 8),), U32),
    ("v.arr[0]", (("offset", 64),), U32),
    ("pa[3]", (("deref",), ("offset", 12)), U32),
    ("s.tags[5]", (("deref",), ("offset", 40), ("index", 5, 16, 0, 8)), STR),
    ("len(s.tags)", (("deref",), ("offset", 40), ("len", 8)), INT),
    ("len(str)", (("len", 8),), INT),
    ("len(v.arr)", (("offset", 64), ("const", 4)), INT),
    ("len(pa)", (("const", 4),), INT),
    ("len(s.counts)", (("deref",), ("offset", 72), ("len_indirect", 0, 8)), INT),
    ("len(v.old)", (("offset", 104), ("len_indirect", 0, 8)), INT),
    ("len(s.ch)", (("deref",), ("offset", 80), ("len_indirect", 0, 8)), INT),
    ("(*pp).name", (("deref",), ("deref",), ("offset", 24)), STR),
    ("**pp", (("deref",), ("deref",)), SERVER),
])
def test_check(types, text, ops, type_id):
    te = check(text, types)
    assert te.ops == ops and te.type_id == type_id
    assert te.is_value == (ops[-1][0] in ("len", "len_indirect", "const") if ops else False)
    assert TypedExpr.from_json(json.loads(json.dumps(te.to_json()))) == te


def test_roots(types):
    assert check("len(s.tags)", types).root == "s"
    assert check("(*pp).name", types).root == "pp"


def test_string_index_yields_a_byte(types):
    del types.types[U8]
    te = check("str[3]", types)
    assert te.ops == (("index", 3, 1, 0, 8),)
    assert te.type_id == SYNTHETIC_BYTE and types[SYNTHETIC_BYTE].kind == Kind.UINT


@pytest.mark.parametrize("text, column, message", [
    ("q", 1, "no variable 'q' in main.f (variables: a, m8, mb, mi, n, o, pa, pp, reg, s, sh, str, v)"),
    ("ss.name", 1, "no variable 'ss' in main.f (did you mean 's'?)"),
    ("s.nme", 3, "no field 'nme' in main.server (did you mean 'name'? fields: inner, name, tags, "
                 "arr, counts, ch, parent, mu, old, raw)"),
    ("s.mu.x", 6, "no field 'x' in sync.Mutex (fields: state, sema)"),
    ("pp.name", 4, "pp (type **main.server) has no fields: cannot select 'name'"),
    ("n.x", 3, "n (type int) has no fields: cannot select 'x'"),
    ("*n", 1, "cannot dereference n (type int): not a typed pointer"),
    ("*s.raw", 1, "cannot dereference unsafe.Pointer: not a typed pointer"),
    ("s.counts[1]", 10, "cannot use 1 (untyped integer constant) as string value in map index of "
                        "s.counts (type map[string]int)"),
    ("v.arr[4]", 7, "index 4 out of range for [4]uint32 (length 4)"),
    ("n[0]", 3, "cannot index n (type int)"),
    ("len(n)", 1, "invalid argument: n (type int) for len"),
    ("len(s.mu)", 1, "invalid argument: s.mu (type sync.Mutex) for len"),
])
def test_check_errors(types, text, column, message):
    with pytest.raises(ExpressionError) as e:
        check(text, types)
    assert (str(e.value), e.value.column) == (message, column)


def test_unknown_map_layout(types):
    types.add(GoType(99, "map[int]int", Kind.MAP, 8, key=INT, elem=INT))
    with pytest.raises(ExpressionError, match="map layout is unknown"):
        compile_expr("len(m)", {"m": 99}, types)


def test_ambiguous_promoted_field(types):
    types.add(GoType(98, "main.twin", Kind.STRUCT, 8, fields=(Field("x", 0, INT),)))
    types.add(GoType(97, "main.twin2", Kind.STRUCT, 8, fields=(Field("x", 0, INT),)))
    types.add(GoType(96, "main.both", Kind.STRUCT, 16, fields=(
        Field("twin", 0, 98, embedded=True), Field("twin2", 8, 97, embedded=True))))
    with pytest.raises(ExpressionError, match="ambiguous selector 'x' in main.both"):
        compile_expr("b.x", {"b": 96}, types)


def test_shallower_field_wins(types):
    types.add(GoType(95, "main.shadow", Kind.STRUCT, 32, fields=(
        Field("inner", 0, INNER, embedded=True), Field("b", 24, INT))))
    assert compile_expr("x.b", {"x": 95}, types).ops == (("offset", 24),)


def test_check_expr_takes_a_parsed_expression(types):
    assert check_expr(parse_expr("s.name"), VARS, types).type_id == STR


# ------------------------------------------------------------- a real binary

@pytest.fixture(scope="module")
def real(go_build, tmp_path_factory):
    from probe_compiler.dwarf import DwarfInfo
    binary = go_build("dwarf_types")
    dwarf = DwarfInfo.load(str(binary), "test-expr-dwarf-types", str(tmp_path_factory.mktemp("c")))
    layout = json.loads(subprocess.run([str(binary), "layout"], capture_output=True, text=True,
                                       check=True).stdout)
    f = dwarf.function("main.handle")
    var_types = {v.name: v.type_id for v in f.variables if not v.name.startswith("~")}
    return dwarf, dwarf.type_table(var_types.values()), var_types, {t["name"]: t for t in layout}


def test_real_binary(real):
    dwarf, types, var_types, layout = real
    assert {"s", "id", "label"} <= set(var_types)
    off = {f["name"]: f["offset"] for f in layout["main.server"]["fields"]}
    mutex_first = layout["sync.Mutex"]["fields"][0]

    te = compile_expr("s.name", var_types, types, "main.handle")
    assert te.ops == (("deref",), ("offset", off["name"])) and types[te.type_id].kind == Kind.STRING

    te = compile_expr(f"s.parent.mu.{mutex_first['name']}", var_types, types, "main.handle")
    assert te.ops[:4] == (("deref",), ("offset", off["parent"]), ("deref",), ("offset", off["mu"])
                          if mutex_first["offset"] == 0 else ("offset", off["mu"] + mutex_first["offset"]))

    inner = {f["name"]: f["offset"] for f in layout["main.inner"]["fields"]}
    te = compile_expr("s.C[2]", var_types, types)                  # promoted from embedded inner
    assert te.ops == (("deref",), ("offset", off["inner"] + inner["C"] + 2 * 2),)
    assert types[te.type_id].name == "uint16"

    te = compile_expr("s.tags[1]", var_types, types)
    assert te.ops[-1][0] == "index" and te.ops[-1][1:3] == (1, 16)

    for text in ("len(s.tags)", "len(s.counts)", "len(s.byID)", "len(s.ch)", "len(s.name)",
                 "len(s.arr)", "len(label)", "label[0]", "*s.parent", "s.deadline"):
        compile_expr(text, var_types, types, "main.handle")

    with pytest.raises(ExpressionError, match=r"no field 'nope' in main.server \(fields: inner, name"):
        compile_expr("s.nope", var_types, types, "main.handle")
    with pytest.raises(ExpressionError, match="as string value in map index of s.counts"):
        compile_expr("s.counts[0]", var_types, types, "main.handle")


# ------------------------------------------------------------- golden files

GOLDEN = Path(__file__).parent / "golden" / "expr"
UPDATE = os.environ.get("EXRAY_UPDATE_GOLDEN") == "1"


def _golden(name: str, result) -> None:
    """tests/golden/expr/NAME: each expression line followed by `result(text)`
    indented; the file is the input and the expected output."""
    path = GOLDEN / name
    want = path.read_text()
    out = []
    for line in want.splitlines():
        if line.startswith("    "):
            continue                      # a result: recomputed below
        out.append(line)
        if line.strip() and not line.startswith("#"):
            out.append("    " + result(line))
    got = "\n".join(out) + "\n"
    if UPDATE:
        path.write_text(got)
        return
    assert got == want


def test_golden_forms():
    def result(text):
        types = build_types()
        te = check(text, types)
        ops = json.dumps([list(op) for op in te.ops], separators=(",", ":"))
        return f"root {te.root}; ops {ops}; type {types[te.type_id].name}"
    _golden("forms.txt", result)


def test_golden_errors():
    def result(text):
        with pytest.raises(ExpressionError) as e:
            check(text, build_types())
        return f"column {e.value.column}: {e.value}"
    _golden("errors.txt", result)


# ------------------------------------------------------- the ops, on fake memory

def _run(ops, mem, addr, env=None, data=None):
    from agent.capture import Located, OpEnv, apply_ops
    return apply_ops(Located(data, addr), ops, mem.read, env or OpEnv())


def test_addr_op():
    from agent.capture import Located, Unavailable, apply_ops
    from test_decode import Mem, u64
    mem = Mem()
    s = mem.put(u64(0, 0, 0x5000))
    v = _run((("offset", 16), ("addr",)), mem, s)
    assert int.from_bytes(v.data, "little") == s + 16 and v.addr is None
    with pytest.raises(Unavailable, match="no address: the value is in registers"):
        apply_ops(Located(u64(7), None), (("addr",),), mem.read)


def test_assert_op_checks_the_dynamic_type_against_the_biased_types_base():
    from agent.capture import OpEnv, Unavailable
    from test_decode import Mem, u64
    mem = Mem()
    base = 0x55_0000_0000                      # moduledata.types where this (PIE) process has it
    rect = mem.put(u64(3, 4))
    itab = mem.put(u64(0, base + RT["*main.rect"]))
    names = {base + RT["*main.rect"]: build_types()[P_RECT]}
    env = OpEnv(types_base=base, type_by_rtype=names.get)
    iface = mem.put(u64(itab, rect))
    want_ptr = ("assert", RT["*main.rect"], 0, 8, 8, True, "*main.rect")
    v = _run((want_ptr, ("deref",), ("offset", 8)), mem, iface, env)     # sh.(*main.rect).H
    assert int.from_bytes(mem.read(v.addr, 8), "little") == 4
    with pytest.raises(Unavailable, match=r"^the interface holds \*main.rect, not main.circle$"):
        _run((("assert", RT["main.circle"], 0, 8, 8, False, "main.circle"),), mem, iface, env)
    with pytest.raises(Unavailable, match="holds the runtime type at 0x"):
        _run((("assert", RT["main.circle"], 0, 8, 8, False, "main.circle"),), mem, iface,
             OpEnv(types_base=base))
    with pytest.raises(Unavailable, match=r"^the interface is nil, not \*main.rect$"):
        _run((want_ptr,), mem, mem.put(u64(0, 0)), env)
    with pytest.raises(Unavailable, match="where the runtime's types are is unknown"):
        _run((want_ptr,), mem, iface)
    # An empty interface (any) holds the type itself; a non-pointer value is behind the data word.
    eface = mem.put(u64(base + RT["main.rect"], rect))
    v = _run((("assert", RT["main.rect"], 0, -1, 8, False, "main.rect"), ("offset", 8)), mem, eface, env)
    assert v.addr == rect + 8
    # Held in registers (bytes, no address): a direct value is the data word itself.
    v = _run((("assert", RT["*main.rect"], 0, -1, 8, True, "*main.rect"), ("deref",)), mem, None, env,
             data=u64(base + RT["*main.rect"], rect))
    assert v.addr == rect


def test_map_index_op_swiss_and_hmap():
    from agent.capture import OpEnv, Unavailable
    from probe_compiler.decode import ByteBudget
    from test_decode import TYPES, Mem, T, _big_int_str_map, bucket, gostr, small_map, u64
    import struct
    mem = Mem()
    env = OpEnv(types=TYPES, budget=ByteBudget(1 << 20))

    def lookup(type_id, m, key):
        v = _run((("map_index", type_id, key),), mem, mem.put(u64(m)), env)
        return decode_string(mem, v.addr)

    small = small_map(mem, {3: "c", -1: "a", 2: "b"})             # one group, dirLen 0
    assert lookup(T.M_INT_STR, small, -1) == "a" and lookup(T.M_INT_STR, small, 3) == "c"
    with pytest.raises(Unavailable, match="^key 7 not present in the map$"):
        lookup(T.M_INT_STR, small, 7)
    big, want = _big_int_str_map(mem, 3, 6)                         # a directory of tables
    assert all(lookup(T.M_INT_STR, big, int(k)) == v for k, v in want.items())
    with pytest.raises(Unavailable, match="^key 'k' not present: the map is nil$"):
        lookup(T.M_STR_INT, 0, "k")

    s = lambda v: gostr(mem, v)   # noqa: E731
    ovf = mem.put(bucket([9], [4], [s("four")]))
    buckets = mem.put(bucket([7, 1, 8], [1, 99, 2], [s("one"), s("x"), s("two")], ovf)
                      + bucket([0, 6], [0, 3], [s("y"), s("three")]))
    old = mem.put(bucket([2, 10, 4], [1, 5, 0], [s("one"), s("five"), s("z")]))   # mid-grow
    hmap = mem.put(struct.pack("<qBBHI", 5, 0, 1, 0, 0) + u64(buckets, old, 0, 0))
    for k, v in {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}.items():
        assert lookup(T.M_H_INT_STR, hmap, k) == v
    for absent in (99, 0):        # an emptyOne slot's and an evacuatedEmpty slot's stale keys
        with pytest.raises(Unavailable, match="not present"):
            lookup(T.M_H_INT_STR, hmap, absent)

    # The frame's byte budget bounds the walk; unreadable memory says where.
    with pytest.raises(Unavailable, match="byte budget ran out"):
        _run((("map_index", T.M_INT_STR, 17),), mem, mem.put(u64(big)),
             OpEnv(types=TYPES, budget=ByteBudget(300)))
    with pytest.raises(Unavailable, match="unreadable memory at 0xdead0000"):
        lookup(T.M_INT_STR, mem.put(u64(3, 0, 0xdead0000, 0, 0, 0)), 1)


def test_map_index_string_and_bool_keys():
    from agent.capture import OpEnv
    from probe_compiler.decode import ByteBudget
    from test_decode import TYPES, Mem, T, gostr, group, u64
    mem = Mem()
    env = OpEnv(types=TYPES, budget=ByteBudget(1 << 20))
    g = mem.put(group([gostr(mem, k) + u64(i) for i, k in enumerate(["b", "", "ab", "a"])], 24))
    m = mem.put(u64(4, 0, g, 0, 0, 0))
    for i, k in enumerate(["b", "", "ab", "a"]):
        v = _run((("map_index", T.M_STR_INT, k),), mem, mem.put(u64(m)), env)
        assert int.from_bytes(mem.read(v.addr, 8), "little") == i
    g = mem.put(group([bytes([1]).ljust(8, b"\0") + u64(10), bytes([0]).ljust(8, b"\0") + u64(20)], 16))
    m = mem.put(u64(2, 0, g, 0, 0, 0))
    for k, want in ((True, 10), (False, 20)):
        v = _run((("map_index", T.M_BOOL_INT, k),), mem, mem.put(u64(m)), env)
        assert int.from_bytes(mem.read(v.addr, 8), "little") == want


def decode_string(mem, addr: int) -> str:
    p, n = (int.from_bytes(mem.read(addr + off, 8), "little") for off in (0, 8))
    return mem.read(p, n).decode()
