"""server.lsp.code_actions on the real lspsymbols program: titles, lazy edits,
the resulting exray.yaml checked by the spec loader and against the binary."""
from __future__ import annotations

from pathlib import Path

from lsprotocol.types import CodeAction, CreateFile, Position, Range, TextDocumentEdit

from probe_compiler.spec import parse_spec
from probe_compiler.spec_check import check_against_binary
from server.lsp import code_actions as ca
from server.lsp import specedit as se
from server.lsp.gosource import utf16_len

PROG = Path(__file__).parent / "goprogs" / "lspsymbols"
SPEC_URI = (PROG / "exray.yaml").as_uri()


def at(path: Path, needle: str, offset: int = 0, nth: int = 0) -> tuple[str, Range]:
    text = path.read_text()
    i = -1
    for _ in range(nth + 1):
        i = text.index(needle, i + 1)
    i += offset
    line = text.count("\n", 0, i)
    p = Position(line, utf16_len(text[text.rfind("\n", 0, i) + 1:i]))
    return text, Range(p, p)


def actions(path: Path, needle: str, spec: str | None, offset: int = 0, rng: Range | None = None):
    text, r = at(path, needle, offset)
    return ca.code_actions(str(PROG), path.as_uri(), text, rng or r, spec, SPEC_URI)


def apply(action: CodeAction, spec: str | None) -> str:
    resolved = ca.resolve_code_action(action, spec)
    changes = resolved.edit.document_changes
    if spec is None:
        assert isinstance(changes[0], CreateFile) and changes[0].uri == SPEC_URI
        return changes[1].edits[0].new_text
    (doc,) = changes
    assert isinstance(doc, TextDocumentEdit) and doc.text_document.uri == SPEC_URI
    return se.apply_edits(spec, doc.edits)


def test_capture_in_a_nested_closure_then_stop():
    main = PROG / "main.go"
    (act,) = actions(main, '"deeper", name', None, offset=10)
    assert act.title == "Capture `name` in `main.(*server).handle.func1.1.1`"
    assert act.kind == ca.KIND_CAPTURE and act.edit is None and act.data["expr"] == "name"
    assert not act.kind.startswith(("quickfix", "refactor.rewrite", "refactor.extract",
                                    "refactor.inline", "source"))
    spec = apply(act, None)
    assert parse_spec(spec).function("main.(*server).handle.func1.1.1").captures[0].expr == "name"
    (stop,) = actions(main, '"deeper", name', spec, offset=10)
    assert stop.title == "Stop capturing `name` in `main.(*server).handle.func1.1.1`"
    assert stop.kind == ca.KIND_STOP_CAPTURE
    assert apply(stop, spec) == "version: 1\nfunctions: {}\n" or \
        parse_spec(apply(stop, spec)).functions == []


def test_capture_a_selector_and_a_selection_in_a_method():
    store = PROG / "store" / "store.go"
    (act,) = actions(store, "s.items[key] = value", None, offset=2)
    assert act.title == "Capture `s.items` in `example.com/svc/store.(*Store).Put`"
    text, r = at(store, "s.mu.Lock()\n\ts.items")
    sel = Range(r.start, Position(r.start.line, r.start.character + 4))   # "s.mu"
    (act2,) = ca.code_actions(str(PROG), store.as_uri(), text, sel, None, SPEC_URI)
    assert act2.title == "Capture `s.mu` in `example.com/svc/store.(*Store).Put`"


def test_capture_the_arguments_on_a_function_name():
    store = PROG / "store" / "store.go"
    (act,) = actions(store, ") Put(", None, offset=3)
    assert act.title == "Capture the arguments of `example.com/svc/store.(*Store).Put`"
    assert act.kind == ca.KIND_CAPTURE_ARGUMENTS and act.data["params"] == ["key", "value"]
    spec = apply(act, None)
    assert [c.expr for c in parse_spec(spec).functions[0].captures] == ["key", "value"]
    # once all are captured, the action is gone
    assert actions(store, ") Put(", spec, offset=3) == []
    # no parameters: no action
    assert actions(store, ") Keys(", None, offset=3) == []


def test_edits_are_minimal_on_an_existing_spec():
    spec = "# mine\nversion: 1\nfunctions:\n  main.work:   # keep\n    capture:\n      - n\n"
    main = PROG / "main.go"
    (act,) = actions(main, "return total", spec, offset=7)
    assert act.title == "Capture `total` in `main.work`"
    resolved = ca.resolve_code_action(act, spec)
    (doc,) = resolved.edit.document_changes
    assert [e.new_text for e in doc.edits] == ["      - total\n"]
    assert doc.edits[0].range == Range(Position(6, 0), Position(6, 0))


def test_the_result_fits_the_binary(go_build):
    """The symbols and expressions the actions write are found in the binary's DWARF."""
    binary = go_build("lspsymbols")
    store = PROG / "store" / "store.go"
    main = PROG / "main.go"
    spec = None
    for path, needle, offset in [(store, "s.items[key] = value", 8), (store, ") Get(", 3),
                                 (main, "t += i", 5), (main, "total += i", 0)]:
        acts = actions(path, needle, spec, offset)
        assert acts, needle
        spec = apply(acts[0], spec)
    parsed = parse_spec(spec, str(PROG / "exray.yaml"))
    assert [f.symbol for f in parsed.functions] == [
        "example.com/svc/store.(*Store).Put", "example.com/svc/store.(*Store).Get",
        "main.sum-range1", "main.work.func1"]
    assert check_against_binary(parsed, str(binary)) == []


def test_nothing_on_bad_input():
    main = PROG / "main.go"
    assert actions(main, "type server", None) == []                        # outside functions
    assert actions(main, '"deeper", name', "functions: [a\n", offset=10) == []   # unreadable spec
    broken = "package main\n\nfunc f(x int) {\n\ty := x +\n"
    r = Range(Position(3, 6), Position(3, 6))
    assert ca.code_actions(None, "file:///nowhere/x.go", broken, r, None, SPEC_URI) == []
    assert ca.code_actions(None, "untitled:1", b"\xff\x00", r, None, SPEC_URI) == []
    act = CodeAction(title="t", kind=ca.KIND_CAPTURE,
                     data={"exray": ca.KIND_CAPTURE, "symbol": "main.f", "expr": "x", "spec_uri": SPEC_URI})
    bad = ca.resolve_code_action(act, "functions: [a\n")
    assert bad.edit is None and "YAML" in bad.disabled.reason
