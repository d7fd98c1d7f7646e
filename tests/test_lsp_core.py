"""The language server's core, driven by pytest-lsp: the real server started as
`python -m server.lsp`, with Neovim's and VS Code's capabilities, against a real
Go program (tests/goprogs/linkpair in a workspace of its own, with go.mod and
exray.yaml) and real snapshots of it.

Oracles: the snapshot's own SQL, and the line numbers of the Go source.
Asyncio: each test is marked (pytestmark); fixtures run in the test's loop.
"""
from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient

from lsp_helpers import (capabilities, close, command, config, content, initialize, line_of, make_workspace,
                         session, wait_until)
from targets import run_target

pytestmark = pytest.mark.asyncio(loop_scope="function")

SPEC = """\
version: 1
targets:
  - pid: {pid}
functions:
  main.call:
    table: calls
    capture: [id, path]
  main.handle:
    table: handles
    capture: [req]
    columns:
      req_id: "req ->> 'ID'"
links:
  - name: serves
    from: calls(id)
    to: handles(req_id)
    description: the server goroutine holding this request
"""
N = 4


@pytest.fixture(scope="module")
def linkpair(go_build, tmp_path_factory):
    """A workspace with linkpair's source, its binary running with N clients and
    N handlers parked, and a snapshot of it taken by the engine."""
    from probe_compiler.spec import load_spec
    from server.snapshot_job import snapshot_pids, write
    ws = make_workspace(tmp_path_factory.mktemp("lsp") / "linkpair")
    binary = go_build(ws)                 # built in a copy elsewhere: frames name that copy's paths
    with run_target(binary, "-self", str(N), dump=False) as t:
        (ws / "exray.yaml").write_text(SPEC.format(pid=t.pid))
        spec = load_spec(ws / "exray.yaml")
        snaps = ws / ".exray" / "snapshots"
        snaps.mkdir(parents=True)
        records = snapshot_pids([t.pid], spec)
        assert not records[0].error, records[0].error
        write(str(snaps / "base.sqlite"), records, spec)
        yield {"ws": ws, "pid": t.pid, "snapshot": snaps / "base.sqlite", "main": ws / "main.go"}


@pytest_lsp.fixture(config=config(), params=["neovim", "vscode"])
async def lsp(client: LanguageClient, request, linkpair):
    """A client with Neovim's or VS Code's capabilities (pytest-lsp's presets) of
    a server on the linkpair workspace, with the base snapshot current."""
    refreshes = {"inlay": 0, "lens": 0}

    @client.feature(types.WORKSPACE_INLAY_HINT_REFRESH)
    def _inlay(params):
        refreshes["inlay"] += 1

    @client.feature(types.WORKSPACE_CODE_LENS_REFRESH)
    def _lens(params):
        refreshes["lens"] += 1

    client.refreshes = refreshes
    client.which = request.param
    await initialize(client, linkpair["ws"], capabilities(request.param))
    res = await command(client, "exray.useSnapshot", str(linkpair["snapshot"]))
    assert res.get("path") == str(linkpair["snapshot"]), (res, client.messages)
    yield
    await client.shutdown_session()




def _open(c, path: Path, text: str | None = None):
    c.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
        uri=path.as_uri(), language_id="go", version=1, text=text if text is not None else path.read_text())))


async def _hints(c, path: Path, last_line: int = 200):
    """The inlay hints of lines 0..last_line of `path`."""
    return await c.text_document_inlay_hint_async(types.InlayHintParams(
        text_document=types.TextDocumentIdentifier(path.as_uri()),
        range=types.Range(types.Position(0, 0), types.Position(last_line, 0))))


def _db(linkpair):
    return sqlite3.connect(linkpair["snapshot"])


# ------------------------------------------------------------------ inlay hints

async def test_inlay_hints_at_frame_lines_with_counts(lsp, linkpair):
    main = linkpair["main"]
    _open(lsp, main)
    n_lines = len(main.read_text().splitlines())
    hints = await _hints(lsp, main, n_lines)
    got = {}
    for h in hints:
        m = re.match(r"⏸ (\d+) goroutines? · ", h.label)
        assert m, h.label
        got[h.position.line + 1] = int(m.group(1))
        # at the end of its line
        assert h.position.character == len(main.read_text().splitlines()[h.position.line])
    # Oracle: goroutines per line of main.go's functions, from the snapshot's SQL.
    want = dict(_db(linkpair).execute(
        "SELECT line, count(DISTINCT process_id || ':' || goid) FROM frames "
        "WHERE function LIKE 'main.%' AND file LIKE '%/main.go' GROUP BY line").fetchall())
    assert got == want
    gate, read = line_of(main, "<-gate"), line_of(main, "reply, _ := io.ReadAll(c)")
    assert got[gate] == N and got[read] == N
    by_line = {h.position.line + 1: h.label for h in hints}
    assert "chan receive" in by_line[gate] and "IO wait" in by_line[read]
    # Captured values, compacted: the request ids 1..N in the handlers and the calls.
    assert re.search(r"req=\{ID:[1-4]", by_line[gate]), by_line[gate]
    assert "id=" in by_line[read] and re.search(r'path="/item/sku-00[1-4]"', by_line[read]), by_line[read]
    assert all(len(h.label) <= 120 for h in hints)


async def test_inlay_hints_outside_the_range_and_other_files(lsp, linkpair):
    main = linkpair["main"]
    _open(lsp, main)
    hints = await _hints(lsp, main, 10)
    assert not hints
    other = linkpair["ws"] / "go.mod"
    hints = await _hints(lsp, other, 10)
    assert not hints


# ------------------------------------------------------------------ code lenses

async def test_code_lenses_above_functions_with_frames(lsp, linkpair):
    main = linkpair["main"]
    _open(lsp, main)
    lenses = await lsp.text_document_code_lens_async(types.CodeLensParams(
        text_document=types.TextDocumentIdentifier(main.as_uri())))
    by_line: dict[int, list[str]] = {}
    for l in lenses:
        by_line.setdefault(l.range.start.line + 1, []).append(l.command.title)
    handle = line_of(main, "func handle(req *request, c net.Conn) {")
    call = line_of(main, "func call(addr string, id int64, path string) {")
    serve_conn = line_of(main, "func serveConn(c net.Conn) {")
    assert by_line[handle] == [f"{N} goroutines", "open stacks", "open table"]
    assert by_line[call] == [f"{N} goroutines", "open stacks", "open table"]
    assert by_line[serve_conn] == [f"{N} goroutines", "open stacks"]      # not captured: no table
    # Oracle: one lens group per main.* function that has frames, with its goroutine count,
    # but none for the wrappers the compiler made for `go f(x)` (main.serve.gowrap1, …).
    want = dict(_db(linkpair).execute(
        "SELECT function, count(DISTINCT goid) FROM frames WHERE function LIKE 'main.%' "
        "AND file LIKE '%/main.go' GROUP BY function").fetchall())
    wrappers = {f for f in want if ".gowrap" in f}
    assert wrappers >= {"main.listen.gowrap1", "main.startClients.gowrap1"}, want
    counts = {l.data["function"]: int(l.command.title.split()[0]) for l in lenses if l.data}
    assert counts == {f: n for f, n in want.items() if f not in wrappers}
    [table] = [l for l in lenses if l.range.start.line + 1 == handle and l.command.title == "open table"]
    assert table.command.command == "exray.openDocument" and list(table.command.arguments) == ["exray:/table/handles"]
    # Running the lens's command opens the document.
    await command(lsp, table.command.command, *table.command.arguments)
    assert lsp.shown_documents[-1].uri == "exray:/table/handles"


# ------------------------------------------------------------------------ hover

async def test_hover_on_a_captured_variable(lsp, linkpair):
    main = linkpair["main"]
    _open(lsp, main)
    lines = main.read_text().splitlines()
    ln = line_of(main, 'fmt.Fprintf(c, "done %d %s\\n", req.ID, req.Path) // keeps req live across the wait') - 1
    col = lines[ln].index("req.ID") + 1
    h = await lsp.text_document_hover_async(types.HoverParams(
        types.TextDocumentIdentifier(main.as_uri()), types.Position(ln, col)))
    assert h is not None
    md = h.contents.value
    assert "**`req`** in `main.handle`" in md and f"{N} frames" in md
    block = md.split("```json\n", 1)[1].split("\n```", 1)[0]
    values = json.loads(block)
    ids = sorted(v["value"]["ID"] for v in values)
    assert ids == list(range(1, N + 1))
    want = sorted(json.loads(r)["ID"] for r, in _db(linkpair).execute("SELECT req FROM handles"))
    assert ids == want
    # The same name outside the captured function: nothing from us.
    sc = line_of(main, "handle(&request{ID: id, Path: f[1], Started: time.Now().UnixNano()}, c)") - 1
    h = await lsp.text_document_hover_async(types.HoverParams(
        types.TextDocumentIdentifier(main.as_uri()), types.Position(sc, lines[sc].index("id, Path") + 1)))
    assert h is None
    # `id` in main.call
    cl = line_of(main, "sink = fmt.Sprint(id, path, string(reply)) // keeps id and path live across the wait") - 1
    h = await lsp.text_document_hover_async(types.HoverParams(
        types.TextDocumentIdentifier(main.as_uri()), types.Position(cl, lines[cl].index("id,"))))
    assert h is not None and "**`id`** in `main.call`" in h.contents.value


# ------------------------------------------------------------ virtual documents

async def test_virtual_documents_and_links(lsp, linkpair):
    main = linkpair["main"]
    db = _db(linkpair)
    overview = await content(lsp, "exray:/snapshot/overview")
    assert f"pid {linkpair['pid']}" in overview and "calls" in overview and "serves" in overview
    stacks = await content(lsp, "exray:/snapshot/stacks")
    assert f"{N} goroutines [chan receive]" in stacks and "main.handle" in stacks
    # Links in the stacks: frame lines to the workspace file.
    links = await lsp.text_document_document_link_async(types.DocumentLinkParams(
        types.TextDocumentIdentifier("exray:/snapshot/stacks")))
    gate = line_of(main, "<-gate")
    assert f"{main.as_uri()}#L{gate}" in {l.target for l in links}
    # One client goroutine: its frames link to the source, its call row to the handler.
    call_goid, call_id = db.execute("SELECT goid, id FROM calls ORDER BY goid LIMIT 1").fetchone()
    handler_goid = db.execute("SELECT goid FROM handles WHERE req_id = ?", (int(call_id),)).fetchone()[0]
    uri = f"exray:/goroutine/1/{call_goid}"
    text = await content(lsp, uri)
    assert text.startswith(f"goroutine {call_goid} [IO wait") and f"id = {call_id}" in text
    assert f"serves: handles" in text and f"goroutine {handler_goid}" in text
    links = await lsp.text_document_document_link_async(types.DocumentLinkParams(
        types.TextDocumentIdentifier(uri)))
    targets = {l.target for l in links}
    assert f"{main.as_uri()}#L{line_of(main, 'reply, _ := io.ReadAll(c)')}" in targets
    assert f"exray:/goroutine/1/{handler_goid}" in targets
    lines = text.split("\n")
    for l in links:                      # each link covers text on its line
        assert l.range.end.character > l.range.start.character
        assert l.range.end.character <= len(lines[l.range.start.line])
    # ... and back: the handler's document links to the client.
    back = await lsp.text_document_document_link_async(types.DocumentLinkParams(
        types.TextDocumentIdentifier(f"exray:/goroutine/1/{handler_goid}")))
    assert uri in {l.target for l in back}
    # A table with its rows' goroutines and links.
    table = await content(lsp, "exray:/table/handles")
    assert table.startswith(f"table handles: {N} rows") and "req_id" in table
    tl = await lsp.text_document_document_link_async(types.DocumentLinkParams(
        types.TextDocumentIdentifier("exray:/table/handles")))
    assert {f"exray:/goroutine/1/{g}" for g, in db.execute("SELECT goid FROM handles")} <= {l.target for l in tl}
    # A view (no rowid): every captured row, without links.
    view = await content(lsp, "exray:/table/all_captured_data")
    n = db.execute("SELECT count(*) FROM all_captured_data").fetchone()[0]
    assert n > 0 and view.startswith(f"table all_captured_data: {n} rows"), view[:200]
    # Unknown documents say so.
    assert "no goroutine" in await content(lsp, "exray:/goroutine/1/999999")
    assert "unknown Ex-Ray document" in await content(lsp, "exray:/nope")


async def test_run_query_opens_its_result(lsp, linkpair):
    res = await command(lsp, "exray.runQuery", "SELECT goid, req_id FROM handles ORDER BY req_id")
    assert res["uri"].startswith("exray:/query/")
    assert lsp.shown_documents[-1].uri == res["uri"]
    text = await content(lsp, res["uri"])
    rows = re.findall(r"^(\d+)\s+(\d+)$", text, re.M)
    assert [int(r[1]) for r in rows] == list(range(1, N + 1))
    bad = await command(lsp, "exray.runQuery", "SELECT nope FROM nosuch")
    assert "error: no such table" in await content(lsp, bad["uri"])


async def test_flame_graph_opens_externally(lsp, linkpair):
    res = await command(lsp, "exray.openFlameGraph")
    shown = lsp.shown_documents[-1]
    assert shown.uri == res["uri"] and shown.external is True
    assert Path(res["path"]).read_text().startswith("<!DOCTYPE html>")


async def test_text_document_content_capability(linkpair):
    """A client announcing LSP 3.18's workspace/textDocumentContent gets it in
    the server's capabilities and can use it; others use the fallback."""
    caps = capabilities("neovim")
    caps.workspace.text_document_content = types.TextDocumentContentClientCapabilities()
    c = await config().start()
    try:
        res = await initialize(c, linkpair["ws"], caps)
        assert list(res.capabilities.workspace.text_document_content.schemes) == ["exray"]
        await command(c, "exray.useSnapshot", str(linkpair["snapshot"]))
        got = await c.workspace_text_document_content_async(
            types.TextDocumentContentParams(uri="exray:/snapshot/overview"))
        assert got.text.startswith("Ex-Ray snapshot")
        # Another snapshot becomes current: the documents read so far are refreshed.
        refreshed = []
        c.feature(types.WORKSPACE_TEXT_DOCUMENT_CONTENT_REFRESH)(lambda params: refreshed.append(params.uri))
        await command(c, "exray.useSnapshot", str(linkpair["snapshot"]))
        await wait_until(lambda: refreshed, what="textDocumentContent/refresh")
        assert refreshed == ["exray:/snapshot/overview"]
    finally:
        await close(c)
    async with session(linkpair["ws"], "neovim") as c:
        assert c.init_result.capabilities.workspace.text_document_content is None


# ------------------------------------------------------------ snapshot command

async def test_snapshot_command_with_progress(lsp, linkpair):
    before = {p.name for p in (linkpair["ws"] / ".exray" / "snapshots").iterdir()}
    res = await command(lsp, "exray.snapshot")
    assert "error" not in res, (res, lsp.messages)
    out = Path(res["path"])
    assert out.parent == linkpair["ws"] / ".exray" / "snapshots" and out.name not in before
    assert (linkpair["ws"] / ".exray" / ".gitignore").read_text().strip().endswith("*")
    assert res["goroutines"] > 2 * N and res["errors"] == []
    [(token, reports)] = [(t, r) for t, r in lsp.progress_reports.items() if r]
    kinds = [r.kind for r in reports]
    assert kinds[0] == "begin" and kinds[-1] == "end" and "report" in kinds
    assert reports[0].cancellable is True
    # It is current now: listSnapshots marks it, and the views were refreshed.
    snaps = await command(lsp, "exray.listSnapshots")
    assert [s["path"] for s in snaps if s["current"]] == [str(out)]
    if lsp.which == "neovim":
        await wait_until(lambda: lsp.refreshes["inlay"] >= 1, what="inlayHint/refresh")
    else:
        await wait_until(lambda: lsp.refreshes["lens"] >= 1, what="codeLens/refresh")
    # Hints from the new snapshot.
    main = linkpair["main"]
    _open(lsp, main)
    hints = await _hints(lsp, main)
    assert any(h.position.line + 1 == line_of(main, "<-gate") and h.label.startswith(f"⏸ {N} goroutines")
               for h in hints)
    out.unlink()


async def test_snapshot_cancelled_by_progress_cancel(linkpair):
    async with session(linkpair["ws"], "neovim", EXRAY_LSP_TEST_DELAY="5") as c:
        task = asyncio.ensure_future(command(c, "exray.snapshot"))
        await wait_until(lambda: any(r for r in c.progress_reports.values()), what="progress begin")
        [token] = [t for t, r in c.progress_reports.items() if r]
        c.window_work_done_progress_cancel(types.WorkDoneProgressCancelParams(token=token))
        res = await asyncio.wait_for(task, 10)
        assert res == {"cancelled": True}
        assert c.progress_reports[token][-1].kind == "end"
        assert any("cancelled" in m.message for m in c.messages)
        # Still serving.
        assert isinstance(await command(c, "exray.listSnapshots"), list)


async def test_requests_right_after_start_wait_for_the_newest_snapshot(linkpair):
    """The newest snapshot loads after `initialized`; a document asked for at once waits for it."""
    async with session(linkpair["ws"], "neovim") as c:
        assert (await content(c, "exray:/snapshot/overview")).startswith("Ex-Ray snapshot")
        res = await command(c, "exray.runQuery", "SELECT count(*) FROM goroutines")
        assert "error" not in res, res


async def test_snapshot_cancelled_by_cancel_request(linkpair):
    """$/cancelRequest on the command: the request fails with RequestCancelled, the
    worker stops before writing anything, and the server keeps serving."""
    snaps = linkpair["ws"] / ".exray" / "snapshots"
    before = set(snaps.iterdir())
    async with session(linkpair["ws"], "neovim", EXRAY_LSP_TEST_DELAY="2") as c:
        fut = asyncio.wrap_future(c.protocol.send_request(types.WORKSPACE_EXECUTE_COMMAND, types.ExecuteCommandParams(
            command="exray.snapshot", arguments=[]), msg_id="snap-1"))
        await wait_until(lambda: any(r for r in c.progress_reports.values()), what="progress begin")
        c.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="snap-1"))
        with pytest.raises(Exception, match="cancel"):
            await asyncio.wait_for(fut, 10)
        await wait_until(lambda: any("snapshot request cancelled" in m.message for m in c.log_messages),
                         what="the cancel logged")
        await asyncio.sleep(3)          # past the agent's delay: a worker still running would write now
        assert isinstance(await command(c, "exray.listSnapshots"), list)
    assert set(snaps.iterdir()) == before


# ------------------------------------------------------------------- bad input

async def test_broken_spec_is_a_message(linkpair, tmp_path):
    ws = make_workspace(tmp_path / "ws", spec="version: 1\nfunctions:\n  main.call:\n    capture: [\n")
    async with session(ws, "vscode") as c:
        res = await command(c, "exray.snapshot")
        assert "error" in res and "exray.yaml" in res["error"]
        assert any(m.type == types.MessageType.Error and "exray.yaml:" in m.message for m in c.messages)
        assert await command(c, "exray.listSnapshots") == []


async def test_target_gone_is_a_message(linkpair, tmp_path):
    import subprocess
    p = subprocess.Popen(["true"])
    p.wait()
    ws = make_workspace(tmp_path / "ws", spec=f"version: 1\ntargets: [{{pid: {p.pid}}}]\n")
    async with session(ws, "neovim") as c:
        res = await command(c, "exray.snapshot")
        assert "error" in res and f"pid {p.pid}" in res["error"]
        assert any("no process" in m.message for m in c.messages)
        assert (await command(c, "exray.listSnapshots")) == []


async def test_corrupt_snapshot_is_a_message(linkpair, tmp_path):
    ws = make_workspace(tmp_path / "ws")
    snaps = ws / ".exray" / "snapshots"
    snaps.mkdir(parents=True)
    (snaps / "bad.sqlite").write_bytes(b"SQLite format 3\x00" + b"\xff" * 5000)
    async with session(ws, "neovim") as c:
        # The newest snapshot is loaded at start: it is corrupt, so a message and no snapshot.
        await wait_until(lambda: any("cannot use snapshot" in m.message for m in c.messages), what="message")
        res = await command(c, "exray.useSnapshot", str(snaps / "bad.sqlite"))
        assert "error" in res
        (snaps / "text.sqlite").write_text("hello")
        res = await command(c, "exray.useSnapshot", "text.sqlite")
        assert "error" in res and any("not an Ex-Ray snapshot" in m.message for m in c.messages)
        # A good one still works afterwards.
        res = await command(c, "exray.useSnapshot", str(linkpair["snapshot"]))
        assert res["path"] == str(linkpair["snapshot"])


async def test_go_file_that_does_not_parse(linkpair):
    async with session(linkpair["ws"], "vscode") as c:
        await command(c, "exray.useSnapshot", str(linkpair["snapshot"]))
        main = linkpair["main"]
        broken = main.read_text().replace("func handle(req *request, c net.Conn) {",
                                          "func handle(req *request, c net.Conn {{ ((")
        _open(c, main, broken)
        lenses = await c.text_document_code_lens_async(types.CodeLensParams(
            text_document=types.TextDocumentIdentifier(main.as_uri())))
        assert any(l.command.title == f"{N} goroutines" for l in lenses)
        hints = await _hints(c, main)
        assert hints
        await c.text_document_hover_async(types.HoverParams(
            types.TextDocumentIdentifier(main.as_uri()), types.Position(50, 3)))
        assert any("does not parse" in m.message for m in c.log_messages)


async def test_bad_settings_fall_back_to_defaults(linkpair):
    async with session(linkpair["ws"], "neovim", options={"maxHintLength": "long", "bogus": 1}) as c:
        await wait_until(lambda: len(c.messages) >= 2, what="settings messages")
        text = " ".join(m.message for m in c.messages)
        assert "maxHintLength" in text and "bogus" in text
        # The same settings again (clients resend them): not said twice; a new problem is.
        n = len(c.messages)
        c.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"exray": {"maxHintLength": "long", "bogus": 1}}))
        c.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"exray": {"maxHoverValues": 0}}))
        await wait_until(lambda: len(c.messages) > n, what="the new settings problem")
        assert [m.message for m in c.messages[n:]] == [
            "Ex-Ray (settings): setting exray.maxHoverValues must be between 1 and 10000, not 0; using 50"]
        await command(c, "exray.useSnapshot", str(linkpair["snapshot"]))
        main = linkpair["main"]
        _open(c, main)
        hints = await _hints(c, main)
        assert hints and all(len(h.label) <= 120 for h in hints)


async def test_settings_from_workspace_configuration(linkpair):
    c = await config().start()
    try:
        c.set_configuration({"maxHintLength": 30}, section="exray")
        await initialize(c, linkpair["ws"], capabilities("neovim"))
        await command(c, "exray.useSnapshot", str(linkpair["snapshot"]))
        main = linkpair["main"]
        _open(c, main)
        hints = await _hints(c, main)
        assert hints and all(len(h.label) <= 30 for h in hints)
        await c.shutdown_session()
    finally:
        await c.stop()


# --------------------------------------------------------------- -trimpath build

async def test_trimpath_binary_maps_through_the_module_path(go_build, tmp_path):
    from probe_compiler.spec import load_spec
    from server.snapshot_job import snapshot_pids, write
    ws = make_workspace(tmp_path / "ws", module="example.com/linkpair")
    binary = go_build(ws, ("-trimpath",))
    with run_target(binary, "-self", "2", dump=False) as t:
        (ws / "exray.yaml").write_text(SPEC.format(pid=t.pid))
        records = snapshot_pids([t.pid], load_spec(ws / "exray.yaml"))
    files = {f.file for g in records[0].goroutines for f in g.frames if f.function.startswith("main.")}
    assert files == {"example.com/linkpair/main.go"}
    snap = tmp_path / "trim.sqlite"
    write(str(snap), records, load_spec(ws / "exray.yaml"))
    async with session(ws, "neovim") as c:
        await command(c, "exray.useSnapshot", str(snap))
        main = ws / "main.go"
        _open(c, main)
        hints = await _hints(c, main)
        assert {h.position.line + 1 for h in hints} >= {line_of(main, "<-gate"),
                                                        line_of(main, "reply, _ := io.ReadAll(c)")}
