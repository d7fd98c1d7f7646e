"""server.lsp.gosource against a real Go program built with the real toolchain:
every function symbol resolved from the source must be in the binary's pclntab."""
from __future__ import annotations

from pathlib import Path

import pytest
from lsprotocol.types import Position, Range

from probe_compiler.gobinary import GoBinary
from server.lsp import gosource as g

PROG = Path(__file__).parent / "goprogs" / "lspsymbols"


@pytest.fixture(scope="module")
def binary(go_build):
    with GoBinary.open(str(go_build("lspsymbols"))) as b:
        yield b


def all_functions():
    return [fn for path in g.go_files(PROG) for fn in g.file_functions(PROG, path)]


def pos_of(path: Path, needle: str, nth: int = 0, offset: int = 0) -> tuple[str, int, int]:
    """(source, line, UTF-16 character) of the nth occurrence of `needle` (+ offset chars)."""
    text = path.read_text()
    at = -1
    for _ in range(nth + 1):
        at = text.index(needle, at + 1)
    at += offset
    line = text.count("\n", 0, at)
    col = g.utf16_len(text[text.rfind("\n", 0, at) + 1:at])
    return text, line, col


def test_every_symbol_is_in_the_binary(binary):
    names = [f.name for f in binary.pclntab.funcs()]
    fns = all_functions()
    assert len(fns) > 40
    for fn in fns:
        if "[...]" in fn.symbol:
            matches = [n for n in names if g.symbol_matches(fn.symbol, n)]
            assert matches and all("go.shape." in m for m in matches), fn.symbol
        else:
            assert binary.pclntab.func_by_name(fn.symbol) is not None, fn.symbol


def test_the_binary_has_no_closure_the_source_does_not_name(binary):
    """The other direction: every closure and range body of our packages is resolved."""
    ours = {fn.symbol for fn in all_functions()}
    for f in binary.pclntab.funcs():
        n = f.name
        if not n.startswith(("main.", "example.com/svc/")) or "wrap" in n or n == "main.init":
            continue
        assert any(g.symbol_matches(s, n) for s in ours), n


def test_symbol_spelling():
    by = {fn.symbol: fn for fn in all_functions()}
    for sym in ["main.(*server).handle.func1.1.1", "main.(*server).handle.func1.2",
                "main.counter.value", "main.sum-range1", "main.sum-range1.1",
                "main.nested-range1-range1.1", "main.nested.func3", "main.init.0.func1",
                "main.init.func2", "main.Apply[...].func1",
                "example.com/svc/store.(*Store).Get", "example.com/svc/store.Key.String",
                "example.com/svc/store.(*Box[...]).Set", "example.com/svc/store.Box[...].Get",
                "example.com/svc/dotted%2epkg.Greet.func1"]:
        assert sym in by, sym
    get = by["example.com/svc/store.(*Store).Get"]
    assert (get.receiver, get.params, get.kind) == ("s", ["key"], "method")
    assert by["example.com/svc/store.(*Store).Put"].params == ["key", "value"]
    assert by["main.sum-range1"].params == ["i"]


def test_module_and_package_paths(tmp_path):
    assert g.module_path("// c\nmodule example.com/svc // trailing\n\ngo 1.23\n") == "example.com/svc"
    assert g.module_path('module "quoted/mod"\n') == "quoted/mod"
    assert g.module_path("go 1.23\n") is None
    assert g.package_import_path(PROG, PROG / "main.go") == "example.com/svc"
    assert g.package_import_path(PROG, PROG / "store" / "store.go") == "example.com/svc/store"
    assert g.path_to_prefix("example.com/svc/dotted.pkg") == "example.com/svc/dotted%2epkg"
    assert g.path_to_prefix("example.com") == "example%2ecom"
    assert g.package_import_path(tmp_path, tmp_path / "x.go") is None
    assert g.package_of_symbol("example.com/svc/store.(*Store).Get") == "example.com/svc/store"
    assert g.package_of_symbol("main.main.func1") == "main"
    assert g.package_of_symbol("example.com/svc/store.Map[go.shape.int,example.com/x.T]") \
        == "example.com/svc/store"


def test_function_at_positions():
    main = PROG / "main.go"
    ip = g.package_import_path(PROG, main)
    text, line, col = pos_of(main, '"deeper"')
    assert g.function_at(text, line, col, ip).symbol == "main.(*server).handle.func1.1.1"
    text, line, col = pos_of(main, "handle(name", offset=2)        # on the method's name
    fn = g.function_at(text, line, col, ip)
    assert fn.symbol == "main.(*server).handle" and fn.name_range.start == Position(line, col - 2)
    text, line, col = pos_of(main, "t += i")
    assert g.function_at(text, line, col, ip).symbol == "main.sum-range1"
    text, line, col = pos_of(main, "type server")
    assert g.function_at(text, line, col, ip) is None
    store = PROG / "store" / "store.go"
    text, line, col = pos_of(store, "s.items[key] = value")
    assert g.function_at(text, line, col, g.package_import_path(PROG, store)).symbol \
        == "example.com/svc/store.(*Store).Put"
    # package main without an import path is still `main`
    assert g.function_at(text.replace("package store", "package main"), line, col).symbol \
        == "main.(*Store).Put"


def test_utf16_positions():
    path = PROG / "dotted.pkg" / "dotted.go"
    text, line, col = pos_of(path, "func()")
    fn = g.function_at(text, line, col + 1, "example.com/svc/dotted.pkg")
    assert fn.symbol == "example.com/svc/dotted%2epkg.Greet.func1"
    # 🙂 is two UTF-16 units, ü one: the range is in UTF-16, not bytes nor code points
    line_text = text.splitlines()[line]
    assert fn.name_range.start == Position(line, g.utf16_len(line_text[:line_text.index("func()")]))
    assert fn.name_range.start.character == line_text.index("func()") + 1
    _, line2, col2 = pos_of(path, "name }")
    assert g.expression_at(text, line2, col2) == "name"
    assert g.expression_at(text, line2, col2 + 4) == "name"     # just after the name


@pytest.mark.parametrize("src,needle,offset,expected", [
    ("x := req.Header.ID", "ID", 0, "req.Header.ID"),
    ("x := req.Header.ID", "Header", 1, "req.Header"),
    ("x := req.Header.ID", "req", 0, "req"),
    ("*p = 3", "*p", 0, "*p"),
    ("y := x[3]", "3", 0, "x[3]"),
    ("y := x[3]", "[", 0, "x[3]"),
    ("n := len(s.tags)", "len", 1, "len(s.tags)"),
    ("n := len(s.tags)", "tags", 0, "s.tags"),
    ("fmt.Println(a)", "Println", 0, None),           # a package's function
    ("fmt.Println(a)", "fmt", 0, None),               # a package name
    ("s.mu.Lock()", "Lock", 0, None),                 # a method call
    ("y := x + 1", "+", 0, None),
    ("y := 12", "12", 0, None),
])
def test_expression_at(src, needle, offset, expected):
    text = f'package main\n\nimport "fmt"\n\nfunc f(req *R, p *int, x []int, s *S, a int) {{\n\t{src}\n}}\n'
    line = 5
    col = text.splitlines()[line].index(needle) + offset
    assert g.expression_at(text, line, col) == expected


def test_expression_of_a_selection():
    text = "package main\n\nfunc f(req *R) {\n\tuse( ( *req ).Header. ID )\n}\n"
    line_text = text.splitlines()[3]
    start, end = line_text.index("( *req"), line_text.rindex(" )")
    sel = Range(Position(3, start), Position(3, end))
    assert g.expression_at(text, 3, start, sel) == "(*req).Header.ID"
    bad = Range(Position(3, 1), Position(3, 7))
    assert g.expression_at(text, 3, 0, bad) is None


def test_broken_files_give_an_error_value_not_an_exception():
    text = "package main\n\nfunc broken( {\n\tx := 1\n}\n\nfunc fine(a int) {\n\tb := a\n}\n"
    err = g.function_at(text, 3, 2)
    assert isinstance(err, g.GoParseError) and not err
    assert "syntax error" in err.message and err.range.start.line >= 2
    # an error elsewhere in the file does not hide a whole, well-formed function
    fine = g.function_at(text, 7, 2)
    assert fine and fine.symbol == "main.fine"
    assert g.expression_at(text, 7, 6) == "a"
    for junk in [b"\xff\xfe\x00garbage", "", "not go at all {{{", "package"]:
        r = g.function_at(junk, 0, 0)
        assert r is None or isinstance(r, g.GoParseError)
        assert g.expression_at(junk, 0, 0) is None
    assert g.function_at("", 10**6, 10**6) is None or True


def test_parse_cache_by_uri_and_version():
    cache = g.ParseCache(size=2)
    a = cache.get("file:///a.go", 1, "package main\n")
    assert cache.get("file:///a.go", 1, "package main\n") is a
    b = cache.get("file:///a.go", 2, "package main\nfunc f() {}\n")
    assert b is not a and cache.get("file:///a.go", 2, "") is b
    cache.get("file:///b.go", 1, "package b\n")
    cache.get("file:///c.go", 1, "package c\n")
    assert len(cache._items) == 2


def test_workspace_symbols():
    syms = g.workspace_symbols(PROG)
    assert "example.com/svc/store.(*Store).OnPut.func1" in syms and "main.main" in syms
    assert g.workspace_packages(PROG) == {"main", "example.com/svc/store", "example.com/svc/dotted%2epkg"}
