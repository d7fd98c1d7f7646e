"""server.lsp.specedit: exray.yaml edits keep comments, order and quoting, and parse."""
from __future__ import annotations

from pathlib import Path

import pytest
from lsprotocol.types import CreateFile, Position, TextDocumentEdit

from probe_compiler.errors import ExpressionError
from probe_compiler.spec import parse_spec
from server.lsp import specedit as se

DOC_EXAMPLE = (Path(__file__).parent.parent / "docs" / "spec.md").read_text() \
    .split("```yaml\n")[1].split("```")[0].replace(
        "include: [services/*/exray.yaml] # more spec files: paths or globs relative to this file\n", "")

COMMENTED = """\
# Ex-Ray spec for the store service.   Keep this header.
version: 1

functions:
  # the hot path
  main.(*server).GetInfo:        # a Go symbol
    table: getinfo               # optional
    capture:
      - req.ID                   # shorthand
      - "*p"                     # quoted on purpose
  'main.work':                   # single-quoted key stays single-quoted
    capture: [n]
reports:
  short: "SELECT * FROM getinfo"   # keep
"""


def parses(text: str):
    return parse_spec(text, "exray.yaml")


def test_new_file():
    out = se.add_capture(None, "main.(*server).handle", "req.Header.ID")
    assert out == ("version: 1\nfunctions:\n  main.(*server).handle:\n    capture:\n"
                   "      - req.Header.ID\n")
    spec = parses(out)
    assert [c.expr for c in spec.function("main.(*server).handle").captures] == ["req.Header.ID"]
    assert se.add_capture("", "main.f", "*p") == "version: 1\nfunctions:\n  main.f:\n    capture:\n      - '*p'\n"
    assert parses(se.add_capture("", "main.f", "*p")).functions[0].captures[0].expr == "*p"


def test_add_keeps_comments_order_and_quoting():
    out = se.add_capture(COMMENTED, "main.(*server).GetInfo", "s.mu.state")
    assert out == COMMENTED.replace('      - "*p"                     # quoted on purpose\n',
                                    '      - "*p"                     # quoted on purpose\n      - s.mu.state\n')
    spec = parses(out)
    assert [c.expr for c in spec.function("main.(*server).GetInfo").captures] == ["req.ID", "*p", "s.mu.state"]
    # a flow list stays a flow list; a new function goes at the end of functions
    out2 = se.add_capture(out, "main.work", "total")
    assert "    capture: [n, total]\n" in out2
    out3 = se.add_capture(out2, "example.com/svc/store.(*Store).Get", "key")
    assert out3.index("example.com/svc/store.(*Store).Get") < out3.index("reports:")
    assert out3.count("#") == COMMENTED.count("#")
    assert [f.symbol for f in parses(out3).functions] == [
        "main.(*server).GetInfo", "main.work", "example.com/svc/store.(*Store).Get"]


def test_no_duplicates():
    once = se.add_capture(COMMENTED, "main.(*server).GetInfo", "( * p )")   # same Go expression as "*p"
    assert once == COMMENTED
    long_form = se.add_capture(None, "main.f", "x").replace("      - x", "      - {expr: x, name: ex}")
    assert se.add_capture(long_form, "main.f", "x") == long_form
    assert se.captured_in(long_form, "main.f") == ["x"]
    assert se.is_captured(COMMENTED, "main.(*server).GetInfo", "*p")


def test_add_arguments():
    out = se.add_arguments(COMMENTED, "main.work", ["n", "_", "step"])
    assert "    capture: [n, step]\n" in out
    parses(out)
    out = se.add_arguments(None, "main.g", ["a", "b"])
    assert parses(out).function("main.g").captures[1].expr == "b"


def test_function_with_null_entry_and_empty_functions():
    text = "version: 1\nfunctions:\n  net/http.(*conn).serve:\n"
    out = se.add_capture(text, "net/http.(*conn).serve", "c.remoteAddr")
    assert parses(out).functions[0].captures[0].expr == "c.remoteAddr"
    out = se.add_capture("version: 1\nfunctions:\n", "main.f", "x")
    assert parses(out).functions[0].symbol == "main.f"
    out = se.add_capture("# just a comment\nversion: 1\n", "main.f", "x")
    assert out.startswith("# just a comment\nversion: 1\nfunctions:\n")
    parses(out)


def test_detected_indentation():
    text = "version: 1\nfunctions:\n    main.f:\n        capture:\n        - a\n"
    out = se.add_capture(text, "main.f", "b")
    assert out == text + "        - b\n"
    out = se.add_capture(out, "main.g", "c")
    assert out.endswith("    main.g:\n        capture:\n        - c\n")
    parses(out)


def test_remove_capture():
    out = se.remove_capture(COMMENTED, "main.(*server).GetInfo", "*p")
    assert out == COMMENTED.replace('      - "*p"                     # quoted on purpose\n', "")
    parses(out)
    # the function keeps its table: it stays, without a capture list
    out = se.remove_capture(out, "main.(*server).GetInfo", "req.ID")
    assert "capture" not in out.split("'main.work'")[0] and "table: getinfo" in out
    assert parses(out).function("main.(*server).GetInfo").captures == []
    # a function left with nothing at all goes
    out = se.remove_capture(out, "main.work", "n")
    assert "main.work" not in out and parses(out).function("main.work") is None
    assert out.startswith("# Ex-Ray spec for the store service.   Keep this header.\n")
    assert "# keep" in out
    # nothing to remove: the text unchanged
    assert se.remove_capture(COMMENTED, "main.nope", "x") == COMMENTED
    assert se.remove_capture(None, "main.nope", "x") == ""


def test_doc_example_round_trips_and_edits():
    out = se.add_capture(DOC_EXAMPLE, "main.(*client).Do", "req.Method")
    parses(out)
    edits = se.text_edits(DOC_EXAMPLE, out)
    assert len(edits) == 1 and edits[0].new_text == "      - req.Method\n" or \
        edits[0].new_text.strip() == "- req.Method"
    assert se.apply_edits(DOC_EXAMPLE, edits) == out
    assert se.remove_capture(out, "main.(*client).Do", "req.Method") == DOC_EXAMPLE


def test_errors():
    with pytest.raises(se.SpecEditError):
        se.add_capture("version: 1\nfunctions: [a, b]\n", "main.f", "x")
    with pytest.raises(se.SpecEditError):
        se.add_capture("version: 1\nfunctions:\n  main.f: {\n", "main.f", "x")
    with pytest.raises(se.SpecEditError):
        se.captured_in("- a\n- b\n", "main.f")
    with pytest.raises(ExpressionError):
        se.add_capture(None, "main.f", "a + b")


def test_edit_for_new_and_existing_files():
    uri = "file:///w/exray.yaml"
    new = se.add_capture(None, "main.f", "x")
    we = se.edit_for(uri, None, new)
    create, edit = we.document_changes
    assert isinstance(create, CreateFile) and create.uri == uri
    assert isinstance(edit, TextDocumentEdit) and edit.edits[0].new_text == new
    assert edit.edits[0].range.start == edit.edits[0].range.end == Position(0, 0)

    after = se.add_capture(COMMENTED, "main.(*server).GetInfo", "s.mu.state")
    (doc_edit,) = se.edit_for(uri, COMMENTED, after).document_changes
    (e,) = doc_edit.edits
    assert e.range.start == e.range.end == Position(10, 0)
    assert e.new_text == "      - s.mu.state\n"
    assert se.apply_edits(COMMENTED, doc_edit.edits) == after


def test_text_edits_utf16():
    old = "# 🙂 héllo\nversion: 1\nfunctions:\n  main.f:\n    capture: [a] # ü 🙂\n"
    new = se.add_capture(old, "main.f", "b")
    assert new == old.replace("[a]", "[a, b]")
    (e,) = se.text_edits(old, new)
    assert e.range.start == Position(4, 15) and e.new_text == ", b"
    assert se.apply_edits(old, [e]) == new
    old2 = "x: 'ü🙂a'\n"
    new2 = "x: 'ü🙂b'\n"
    (e2,) = se.text_edits(old2, new2)
    assert e2.range.start == Position(0, 7) and e2.range.end == Position(0, 8)
