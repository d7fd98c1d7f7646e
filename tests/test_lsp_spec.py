"""The spec half of the language server, driven by pytest-lsp: the real server
(`python -m server.lsp`) with Neovim's and VS Code's capabilities, on a git
workspace holding linkpair's source, whose binary was built from the previous
commit (-buildvcs) and is running.

- code actions in main.go: listed without edits, resolved into edits of
  exray.yaml that the spec loader reads back (comments kept); kind filters;
  a client without resolve support gets the edit at once; a new exray.yaml
  is created with CreateFile;
- diagnostics pushed on exray.yaml: each on its exact token (the oracle is
  the token's text), the binary's did-you-mean, SQL, links, the VCS warning
  against `git rev-parse`; the quick fixes applied through didChange clear
  them; a schema error while typing; a Go file that does not parse.
"""
from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient

import gobuild
from lsp_helpers import capabilities, config, initialize, make_workspace, session, wait_until
from probe_compiler.spec import parse_spec
from server.lsp import specedit
from targets import run_target

pytestmark = [pytest.mark.asyncio(loop_scope="function"),
              pytest.mark.skipif(shutil.which("git") is None, reason="needs git to make the workspace's repository")]

SPEC = """\
# What we capture in linkpair (this comment must survive every edit).
version: 1
targets:
  - pid: {pid}
functions:
  main.handle:
    capture: [req]   # the whole request
"""

BROKEN = """\
version: 1
targets:
  - pid: {pid}
functions:
  main.handel:
    capture: [req]
  main.call:
    table: calls
    capture: [id, pathh]
reports:
  slow: SELECT goid, idd FROM calls
links:
  - {{from: calls(id), to: calls(goidd)}}
"""


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git workspace with linkpair; its binary built at commit one and running;
    HEAD moved on to commit two."""
    base = tmp_path_factory.mktemp("lspspec")
    ws = make_workspace(base / "linkpair")
    _git(ws, "init", "-q", "-b", "main")
    _git(ws, "add", ".")
    _git(ws, "commit", "-q", "-m", "one")
    exe = base / "linkpair.bin"            # outside the tree: the build must not see itself as a change
    subprocess.run([gobuild.go_exe(), "build", "-buildvcs=true", "-o", str(exe), "."], cwd=ws,
                   env=gobuild.go_env(), check=True, capture_output=True)
    built_at = _git(ws, "rev-parse", "HEAD")
    _git(ws, "commit", "-q", "--allow-empty", "-m", "two")
    with run_target(exe, "-self", "2", dump=False) as t:
        (ws / "exray.yaml").write_text(SPEC.format(pid=t.pid))
        yield {"ws": ws, "pid": t.pid, "main": ws / "main.go", "spec": ws / "exray.yaml",
               "built_at": built_at, "head": _git(ws, "rev-parse", "HEAD")}


@pytest_lsp.fixture(config=config(), params=["neovim", "vscode"])
async def lsp(client: LanguageClient, request, repo):
    client.which = request.param
    await initialize(client, repo["ws"], capabilities(request.param))
    yield
    await client.shutdown_session()


def _open(c, path: Path, text: str | None = None, lang: str = "go", version: int = 1) -> str:
    c.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
        uri=path.as_uri(), language_id=lang, version=version,
        text=text if text is not None else path.read_text())))
    return path.as_uri()


def _change(c, uri: str, text: str, version: int) -> None:
    c.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)]))


def _at(path: Path, needle: str, offset: int = 0, length: int = 0) -> types.Range:
    text = path.read_text()
    i = text.index(needle) + offset
    line = text.count("\n", 0, i)
    col = i - (text.rfind("\n", 0, i) + 1)
    return types.Range(types.Position(line, col), types.Position(line, col + length))


async def _actions(c, path: Path, rng: types.Range, only=None, diagnostics=()):
    got = await c.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(path.as_uri()), range=rng,
        context=types.CodeActionContext(diagnostics=list(diagnostics), only=only)))
    return list(got or [])


def _apply(edit: types.WorkspaceEdit, uri: str, text: str | None) -> str:
    """The text of `uri` after the workspace edit (a CreateFile starts it empty)."""
    out = text
    for ch in edit.document_changes or []:
        if isinstance(ch, types.CreateFile):
            assert ch.uri == uri and out is None
            out = ""
        else:
            assert ch.text_document.uri == uri
            out = specedit.apply_edits(out, ch.edits)
    for u, edits in (edit.changes or {}).items():
        assert u == uri
        out = specedit.apply_edits(out, edits)
    return out


def _token(text: str, r: types.Range) -> str:
    assert r.start.line == r.end.line, r
    return text.split("\n")[r.start.line][r.start.character:r.end.character]


# ------------------------------------------------------------------ code actions

async def test_capture_actions_resolve_into_spec_edits(lsp, repo):
    main, spec = repo["main"], repo["spec"]
    _open(lsp, main)
    text = spec.read_text()
    # A selected expression inside main.handle: listed lazily, resolved into an edit.
    (act,) = await _actions(lsp, main, _at(main, "req.Path)", 0, len("req.Path")))
    assert act.title == "Capture `req.Path` in `main.handle`" and act.kind == "refactor.exray.capture"
    assert act.edit is None and act.data
    res = await lsp.code_action_resolve_async(act)
    new = _apply(res.edit, spec.as_uri(), text)
    assert [c.expr for c in parse_spec(new).function("main.handle").captures] == ["req", "req.Path"]
    assert "# What we capture in linkpair (this comment must survive every edit)." in new
    assert "# the whole request" in new
    # The identifier already captured: "Stop capturing", which removes it.
    (stop,) = await _actions(lsp, main, _at(main, "req.ID, req.Path", 0))
    assert stop.title == "Stop capturing `req` in `main.handle`"
    res = await lsp.code_action_resolve_async(stop)
    gone = parse_spec(_apply(res.edit, spec.as_uri(), text)).function("main.handle")
    assert gone is None or not gone.captures
    # On a function's name: its arguments.
    (args,) = await _actions(lsp, main, _at(main, "func call(", len("func ")))
    assert args.title == "Capture the arguments of `main.call`"
    res = await lsp.code_action_resolve_async(args)
    caps = parse_spec(_apply(res.edit, spec.as_uri(), text)).function("main.call").captures
    assert [c.expr for c in caps] == ["addr", "id", "path"]


async def test_a_function_the_running_binary_lacks_is_named_in_the_title(lsp, repo):
    spec_uri = repo["spec"].as_uri()
    await wait_until(lambda: any(d.code == "vcs" for d in lsp.diagnostics.get(spec_uri, [])),
                     timeout=60, what="the spec checked against the running binary")
    main = repo["main"]
    text = main.read_text() + "\nfunc added(n int) int {\n\tm := n * 2\n\treturn m\n}\n"
    _open(lsp, main, text)
    line = text.split("\n").index("\treturn m")
    at = types.Position(line, len("\treturn "))
    (act,) = await _actions(lsp, main, types.Range(at, at))
    assert act.title == "Capture `m` in `main.added` (not in the running binary linkpair.bin)"
    (known,) = await _actions(lsp, main, _at(main, "req.Path)", 0, len("req.Path")))
    assert known.title == "Capture `req.Path` in `main.handle`"


async def test_kind_filters_keep_gopls_kinds_apart(lsp, repo):
    main = repo["main"]
    _open(lsp, main)
    rng = _at(main, "req.Path)", 0, len("req.Path"))
    assert await _actions(lsp, main, rng, only=[types.CodeActionKind.QuickFix]) == []
    assert await _actions(lsp, main, rng, only=[types.CodeActionKind.SourceOrganizeImports]) == []
    (a,) = await _actions(lsp, main, rng, only=[types.CodeActionKind.Refactor])
    assert a.kind.startswith("refactor.exray.")
    (b,) = await _actions(lsp, main, rng, only=["refactor.exray.capture"])
    assert b.title == a.title
    # Outside any function: nothing (gopls has the file).
    assert await _actions(lsp, main, types.Range(types.Position(0, 0), types.Position(0, 0))) == []


async def test_a_new_spec_is_created_and_clients_without_resolve_get_edits(tmp_path):
    ws = make_workspace(tmp_path / "fresh")
    caps = capabilities("vscode")
    caps.text_document.code_action.resolve_support = None
    async with session(ws, "vscode", caps=caps) as c:
        main = ws / "main.go"
        _open(c, main)
        (act,) = await _actions(c, main, _at(main, "req.Path)", 0, len("req.Path")))
        assert act.edit is not None                       # no resolve support: the edit comes at once
        new = _apply(act.edit, (ws / "exray.yaml").as_uri(), None)
        assert [x.expr for x in parse_spec(new).function("main.handle").captures] == ["req.Path"]


async def test_a_go_file_that_does_not_parse_gets_no_actions_and_the_server_serves_on(lsp, repo):
    main = repo["main"]
    broken = main.read_text().replace("func handle(req *request, c net.Conn) {", "func handle(req *request, c {{")
    uri = _open(lsp, main, broken)
    got = await _actions(lsp, main, _at(main, "req.Path)", 0, len("req.Path")))
    assert all(a.kind.startswith("refactor.exray.") for a in got)        # never another kind, never a crash
    _change(lsp, uri, main.read_text(), 2)
    (act,) = await _actions(lsp, main, _at(main, "req.Path)", 0, len("req.Path")))
    assert act.title == "Capture `req.Path` in `main.handle`"


# ------------------------------------------------------------------- diagnostics

async def test_diagnostics_on_their_tokens_with_quick_fixes(lsp, repo):
    spec = repo["spec"]
    text = BROKEN.format(pid=repo["pid"])
    uri = _open(lsp, spec, text, lang="yaml")
    # The second pass (against the running binary) adds its findings to the first.
    await wait_until(lambda: any(d.code == "binary" for d in lsp.diagnostics.get(uri, [])),
                     timeout=60, what="diagnostics against the binary")
    diags = lsp.diagnostics[uri]
    by_token = {(d.code, _token(text, d.range)) for d in diags if d.range.start.line > 0}
    assert ("binary", "main.handel") in by_token
    assert ("binary", "pathh") in by_token
    assert ("sql", "idd") in by_token
    assert any(code == "link" and tok == "goidd" for code, tok in by_token), by_token
    # The running binary was built from commit one; the workspace is at two.
    (vcs,) = [d for d in diags if d.code == "vcs"]
    assert vcs.severity == types.DiagnosticSeverity.Warning
    assert repo["built_at"][:12] in vcs.message and repo["head"][:12] in vcs.message
    # Quick fixes: the preferred one of each, applied in one change.
    edits = []
    for d in diags:
        fixes = await _actions(lsp, spec, d.range, diagnostics=[d])
        fixes = [f for f in fixes if f.kind == types.CodeActionKind.QuickFix]
        if fixes:
            assert fixes[0].is_preferred
            edits += fixes[0].edit.changes[uri]
    fixed = specedit.apply_edits(text, edits)
    assert "main.handle:" in fixed and "[id, path]" in fixed and "goid, id FROM" in fixed \
        and "to: calls(goid)" in fixed
    _change(lsp, uri, fixed, 2)
    await wait_until(lambda: [d.code for d in lsp.diagnostics.get(uri, [])] == ["vcs"], timeout=60,
                     what="only the VCS warning left")


async def test_schema_error_while_typing_then_fixed(lsp, repo):
    spec = repo["spec"]
    good = spec.read_text()
    uri = _open(lsp, spec, good, lang="yaml")
    await wait_until(lambda: uri in lsp.diagnostics, what="first diagnostics")
    bad = good.replace("    capture: [req]", "    captures: [req]")
    _change(lsp, uri, bad, 2)
    await wait_until(lambda: any(d.code == "yaml" for d in lsp.diagnostics.get(uri, [])), what="schema error")
    (d,) = [d for d in lsp.diagnostics[uri] if d.code == "yaml"]
    assert _token(bad, d.range) == "captures" and d.severity == types.DiagnosticSeverity.Error
    (fix, *_) = [f for f in await _actions(lsp, spec, d.range, diagnostics=[d])]
    assert fix.edit.changes[uri][0].new_text == "capture"
    _change(lsp, uri, good, 3)
    await wait_until(lambda: not any(d.code == "yaml" for d in lsp.diagnostics.get(uri, [])),
                     what="the schema error cleared")
