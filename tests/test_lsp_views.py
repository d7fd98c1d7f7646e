"""What Go files show from a snapshot (server/lsp/goviews.py, render.py), on a
snapshot written here from records (no Go process): a value, a real Go nil
and an unavailable value on one line; hover and the "Capture …" code action
reading the same expression at the same cursor; no lens for compiler
wrappers; messages that name editor commands; `exray lsp`.

Oracles: the records written (values, `_errors` reasons), the code actions'
own titles, the plugin's and the extension's command names.
"""
from __future__ import annotations

import json
import re
import sys

import pytest
from lsprotocol import types
from lsprotocol.types import Position, Range

from agent.records import CaptureRecord, FrameRecord, GoroutineRecord, ProcessRecord
from lsp_helpers import ROOT, close, command, content, server_env
from server.lsp import code_actions, commands, documents, gosource, goviews, render
from server.lsp.hints import SnapshotIndex
from server.lsp.sourcemap import SourceMap

SOURCE = """\
package main

import "fmt"

type inner struct{ g int }
type outer struct{ f *inner }

type server struct{ name string }

func work(p *int, xs []int, s outer) int {
	fmt.Println(*p, xs[3], len(xs), s.f.g)
	return 0
}

func (srv *server) handle(id int) {
	done := make(chan int)
	go func() {
		done <- id + len(srv.name)
	}()
	fmt.Println(srv.name)
	<-done
}

func main() {
	srv := &server{name: "x"}
	go srv.handle(1)
	defer fmt.Println("bye")
	work(nil, nil, outer{})
}
"""
SPEC = """\
version: 1
functions:
  main.work:
    capture: ["*p", "xs[3]", "len(xs)", s.f.g, s.f]
  main.(*server).handle:
    capture: [srv.name]
  main.(*server).handle.func1:
    capture: [id, srv.name]
"""
NOT_LIVE = "not live at this pc"
# The cursor on `needle` (+offset) of the line that contains `line`:
# (line, needle, offset, the expression, the function) -- None: no expression there.
# Hover's first value is the capture of that expression, or (`p`, of which only
# `*p` is captured) the capture that reads it.
CURSORS = [
    ("fmt.Println(*p,", "*p", 0, "*p", "main.work"),
    ("fmt.Println(*p,", "*p", 1, "p", "main.work"),               # on `p` of `*p`: hover shows `*p`
    ("fmt.Println(*p,", "xs[3]", 3, "xs[3]", "main.work"),        # on the index
    ("fmt.Println(*p,", "len(xs)", 0, "len(xs)", "main.work"),
    ("fmt.Println(*p,", "s.f.g", 4, "s.f.g", "main.work"),
    ("fmt.Println(*p,", "s.f.g", 2, "s.f", "main.work"),
    ("fmt.Println(*p,", "fmt", 0, None, "main.work"),             # a package
    ("fmt.Println(srv.name)", "name", 0, "srv.name", "main.(*server).handle"),   # the receiver's field
    ("done <- id + len(srv.name)", "id", 0, "id", "main.(*server).handle.func1"),  # in a closure
    ("done <- id + len(srv.name)", "name", 0, "srv.name", "main.(*server).handle.func1"),
]


def _line(text: str) -> int:
    """1-based number of the first source line containing `text`."""
    return next(i for i, l in enumerate(SOURCE.splitlines(), 1) if text in l)


@pytest.fixture(scope="module")
def snap(tmp_path_factory):
    """A workspace with SOURCE and a snapshot of it: goroutines 1 and 2 wait in
    main.work (`*p` not live, `s.f` a nil pointer), 3 in handle, 4 in its
    closure, 5 under compiler wrappers."""
    from probe_compiler.spec import parse_spec
    from server.snapshot_job import write
    ws = tmp_path_factory.mktemp("views") / "views"
    ws.mkdir()
    (ws / "go.mod").write_text("module exray.test/views\n\ngo 1.21\n")
    main = ws / "main.go"
    main.write_text(SOURCE)
    (ws / "exray.yaml").write_text(SPEC)
    f = str(main)
    park = FrameRecord(0, "runtime.gopark", "/usr/lib/go/src/runtime/proc.go", 435, 0x1000, hidden=True)

    def g(goid, frames, captures=()):
        return GoroutineRecord(goid, "waiting", "chan receive", None, None, None, None, None, {}, False, None,
                               [park, *frames], list(captures))
    work = _line("fmt.Println(*p,")

    def work_capture(xs3, stale=False):
        notes = {"p": NOT_LIVE, "s_f_g": "in a register at this pc; only the innermost frame of a running "
                                         "goroutine has registers", "len_xs": "spill slot: not live at this pc"}
        if stale:
            notes["xs_3"] = "spill slot, possibly stale (1 of 3 words not stored at this pc): not live at this pc"
        return CaptureRecord("main.work", 1, {"p": None, "xs_3": xs3, "len_xs": 4, "s_f_g": None, "s_f": None},
                             {}, notes)
    gors = [
        g(1, [FrameRecord(1, "main.work", f, work, 0x2000)], [work_capture(7)]),
        g(2, [FrameRecord(1, "main.work", f, work, 0x2000)], [work_capture(8, stale=True)]),
        g(3, [FrameRecord(1, "main.(*server).handle", f, _line("<-done"), 0x3000)],
          [CaptureRecord("main.(*server).handle", 1, {"srv_name": "x"}, {})]),
        g(4, [FrameRecord(1, "main.(*server).handle.func1", f, _line("done <- id"), 0x4000)],
          [CaptureRecord("main.(*server).handle.func1", 1, {"id": 1, "srv_name": "x"}, {})]),
        g(5, [FrameRecord(1, "main.main.gowrap1", f, _line("go srv.handle(1)"), 0x5000),
              FrameRecord(2, "main.main.deferwrap1", f, _line("defer fmt.Println"), 0x5100),
              FrameRecord(3, "main.(*server).handle-fm", f, _line("func (srv *server)"), 0x5200),
              FrameRecord(4, "main.main.func1", f, _line("srv := &server"), 0x5300)]),
    ]
    out = ws / "snap.sqlite"
    write(str(out), [ProcessRecord(pid=4242, host="h", exe="/srv/views", goroutines=gors)],
          parse_spec(SPEC, str(ws / "exray.yaml"), False))
    return {"ws": ws, "main": main, "path": out, "idx": SnapshotIndex.load(out, SourceMap(ws))}


def test_a_value_a_nil_and_an_unavailable_value_on_one_line(snap):
    idx, main = snap["idx"], str(snap["main"])
    agg = idx.lines[main][_line("fmt.Println(*p,")]
    label = render.line_label(agg, 2000)
    # A value from a spill slot reads as a value; one that is possibly stale ends in `?`.
    assert label == ("⏸ 2 goroutines · chan receive · p=⊘ not live at this pc, xs_3=7|8?, len_xs=4, "
                     "s_f_g=⊘ in a register at this pc, s_f=nil"), label
    # The same in a hover: the reason in full where there is no value, null where Go has nil.
    parsed = gosource.parse(SOURCE)
    ln = _line("fmt.Println(*p,") - 1
    col = SOURCE.splitlines()[ln].index("*p")
    md = goviews.hover(idx, str(snap["ws"]), snap["main"].as_uri(), main, parsed, ln, col, 50)
    assert md.startswith("**`*p`** in `main.work`: 2 frames"), md
    assert "`⊘ not live at this pc` ×2" in md and "nil" not in md.split("```json")[0].split("\n\n")[1]
    frames = json.loads(md.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert [fr.get("unavailable") for fr in frames] == [NOT_LIVE, NOT_LIVE]
    assert all("value" not in fr for fr in frames)
    col = SOURCE.splitlines()[ln].index("s.f.g") + 2
    md = goviews.hover(idx, str(snap["ws"]), snap["main"].as_uri(), main, parsed, ln, col, 50)
    assert md.startswith("**`s.f`** in `main.work`"), md
    first = md.split("\n\n---\n\n")[0]
    assert "`nil` ×2" in first and "⊘" not in first
    assert [fr["value"] for fr in json.loads(first.split("```json\n", 1)[1].split("\n```", 1)[0])] == [None, None]
    col = SOURCE.splitlines()[ln].index("xs[3]") + 3
    md = goviews.hover(idx, str(snap["ws"]), snap["main"].as_uri(), main, parsed, ln, col, 50)
    assert md.startswith("**`xs[3]`**") and "`8?`" in md and "possibly stale" in md, md
    frames = json.loads(md.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert [(fr["value"], "possibly stale" in fr.get("note", "")) for fr in frames] == [(7, False), (8, True)]
    # The lens above main.work names what its frames lack.
    lens = next(l for l in render.lenses(idx, main, parsed) if l.function == "main.work")
    assert lens.unavailable == "⊘ p: not live at this pc; s_f_g: in a register at this pc"


def test_exray_documents_say_unavailable_and_nil(snap):
    resolve = snap["idx"].resolve
    doc = documents.render("exray:/goroutine/1/1", str(snap["path"]), resolve, {}).text
    assert "      p = ⊘ not live at this pc\n" in doc and "      s_f = nil\n" in doc, doc
    assert "      xs_3 = 7\n" in doc and "_errors" not in doc
    assert "      len_xs = 4  (spill slot: not live at this pc)\n" in doc, doc
    doc = documents.render("exray:/goroutine/1/2", str(snap["path"]), resolve, {}).text
    assert "      xs_3 = 8?  (spill slot, possibly stale (1 of 3 words" in doc, doc
    table = documents.render("exray:/table/main_work", str(snap["path"]), resolve, {}).text
    row = next(l for l in table.splitlines() if l.startswith("1 ") or re.match(r"^\d+\s+1\s+1\s+1\b", l))
    assert "⊘ not live at this pc" in row and " nil " in row and "NULL" not in row.split("{")[0], row


@pytest.mark.parametrize("line,needle,offset,expr,function", CURSORS)
def test_hover_and_capture_read_the_same_expression(snap, line, needle, offset, expr, function):
    """gosource is the one model: at each cursor, hover shows the expression the
    "Capture …" action names, in the same function, or both say nothing."""
    ws, main = snap["ws"], snap["main"]
    ln = _line(line) - 1
    col = SOURCE.splitlines()[ln].index(needle) + offset
    here = Range(Position(ln, col), Position(ln, col))
    titles = [a.title for a in code_actions.code_actions(str(ws), main.as_uri(), SOURCE, here, None,
                                                         (ws / "exray.yaml").as_uri())]
    captures = [t for t in titles if t.startswith("Capture `")]
    md = goviews.hover(snap["idx"], str(ws), main.as_uri(), str(main), gosource.parse(SOURCE), ln, col, 50)
    if expr is None:
        assert captures == [] and md is None, (titles, md)
        return
    assert captures == [f"Capture `{expr}` in `{function}`"], titles
    shown = {"p": "*p"}.get(expr, expr)
    assert md is not None and md.startswith(f"**`{shown}`** in `{function}`"), md


def test_compiler_wrappers_get_no_lens(snap):
    idx, main = snap["idx"], str(snap["main"])
    have = set(idx.functions[main])
    assert {"main.main.gowrap1", "main.main.deferwrap1", "main.(*server).handle-fm", "main.main.func1"} <= have
    lenses = {l.function: l for l in render.lenses(idx, main, gosource.parse(SOURCE))}
    assert set(lenses) == {"main.work", "main.(*server).handle", "main.(*server).handle.func1"}
    # The closure's lens sits on its `func`, the method's on its declaration.
    assert lenses["main.(*server).handle.func1"].line == _line("go func() {") - 1
    assert lenses["main.(*server).handle"].line == _line("func (srv *server) handle") - 1


def test_parse_cache_is_one():
    """Buffers and files on disk share gosource.CACHE; hints.py has no parser of its own."""
    import server.lsp.hints as hints
    assert not hasattr(hints, "parse_go") and not hasattr(hints, "expression_at")
    assert not hasattr(gosource, "_file_cache")


# ------------------------------------------------------------------ messages

def test_messages_name_the_editors_commands():
    plugin = (ROOT / "nvim" / "plugin" / "exray.lua").read_text()
    nvim_commands = set(re.findall(r"command\('(\w+)'", plugin))
    pkg = json.loads((ROOT / "vscode-extension" / "package.json").read_text())
    titles = {c["title"] for c in pkg["contributes"]["commands"]}
    for cmd, (nvim, palette) in commands.EDITOR_COMMANDS.items():
        assert nvim.lstrip(":") in nvim_commands, nvim
        assert palette in titles, palette
    assert commands.editor_command("Neovim", commands.SNAPSHOT) == ":ExraySnapshot"
    assert commands.editor_command("Visual Studio Code", commands.SNAPSHOT) == \
        '"Ex-Ray: Snapshot" (command palette)'
    both = commands.editor_command(None, commands.SNAPSHOT)
    assert ":ExraySnapshot" in both and "Ex-Ray: Snapshot" in both


@pytest.mark.asyncio(loop_scope="function")
@pytest.mark.parametrize("client,says", [("Neovim", ":ExraySnapshot"),
                                         ("Visual Studio Code", '"Ex-Ray: Snapshot" (command palette)')])
async def test_exray_lsp_serves_and_says_editor_commands(tmp_path, client, says):
    """`exray lsp` is the server; a spec without targets, or no snapshot yet,
    is said with the client's own command, never a CLI flag."""
    from pytest_lsp import ClientServerConfig, client_capabilities
    (tmp_path / "go.mod").write_text("module exray.test/empty\n")
    (tmp_path / "exray.yaml").write_text("version: 1\nfunctions:\n  main.main:\n    capture: []\n")
    cfg = ClientServerConfig(server_command=[sys.executable, "-m", "server.cli", "lsp"], server_env=server_env())
    c = await cfg.start()
    try:
        await c.initialize_session(types.InitializeParams(
            capabilities=client_capabilities("neovim"), root_uri=tmp_path.as_uri(),
            client_info=types.ClientInfo(name=client)))
        res = await command(c, "exray.snapshot")
        assert "error" in res and says in res["error"] and "--" not in res["error"], res
        res = await command(c, "exray.runQuery", "SELECT 1")
        assert res["error"] == f"Ex-Ray: no current snapshot: take one with {says}", res
        text = await content(c, "exray:/snapshot/overview")
        assert says in text, text
    finally:
        await close(c)
