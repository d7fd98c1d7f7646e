"""The spec half of the language server: code actions in Go files that edit
exray.yaml, and diagnostics pushed on exray.yaml.

The logic lives in pure modules (code_actions, diagnostics, specedit,
gosource); this module only fetches state, runs them off the event loop and
converts the result, like the handlers in server.py.

- textDocument/codeAction: in Go files, "Capture …", "Capture the arguments
  of …" and "Stop capturing …" (kinds refactor.exray.*), listed without
  edits; codeAction/resolve fills in the WorkspaceEdit on exray.yaml from the
  spec's text at that moment (the editor's buffer when open, else the file).
  Clients that cannot resolve an edit get it at once. A function missing from
  the bound binary's pclntab says so in the title. In exray.yaml: the
  did-you-mean quick fixes of our diagnostics.
- Diagnostics of exray.yaml: pushed on open, change (debounced), save, at
  start-up and when the current snapshot changes. A first pass (YAML, schema,
  SQL, links, workspace symbols) is published at once; the pass against the
  bound binary (DWARF; the VCS revision check) follows when it is done. A
  newer edit makes older passes drop their results.

The bound binary: the `binary` setting; else the executable of a running
process that the spec's targets name; else that of the current snapshot.
"""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from lsprotocol import types

from . import code_actions, diagnostics, gosource

if TYPE_CHECKING:
    from .server import ExrayServer

log = logging.getLogger("exray.lsp")

DEBOUNCE_S = 0.25
SPEC_NAMES = ("exray.yaml", "exray.yml")


# ------------------------------------------------------------------- state

class SpecState:
    """Per-server state of the spec features: diagnostics generations and the
    bound binary with its function names (Go files are parsed in gosource.CACHE)."""

    def __init__(self) -> None:
        self.generation: dict[str, int] = {}
        self.binary: str | None = None          # bound by the last check of the spec
        self.symbols = BinarySymbols()

    def bump(self, uri: str) -> int:
        g = self.generation[uri] = self.generation.get(uri, 0) + 1
        return g

    def current(self, uri: str, g: int) -> bool:
        return self.generation.get(uri) == g


class BinarySymbols:
    """The function names of binaries, read once per file identity (a rebuilt
    binary is read again). Thread-safe enough: a race reads a binary twice."""

    def __init__(self) -> None:
        self._names: dict[tuple, set[str]] = {}

    def names(self, path: str) -> set[str] | None:
        from probe_compiler.gobinary import GoBinary
        try:
            st = os.stat(path)
            key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            if key not in self._names:
                with GoBinary.open(path) as b:
                    self._names = {key: b.pclntab.names()}     # one binary at a time is bound
            return self._names[key]
        except Exception:  # noqa: BLE001 - gone, unreadable, not Go: nothing to cross-check
            return None

    def has(self, path: str, symbol: str) -> bool | None:
        """Is `symbol` (a spec symbol, `[...]` for every instance) in the binary? None: unknown."""
        from probe_compiler import generics
        names = self.names(path)
        if names is None:
            return None
        if symbol in names:
            return True
        return generics.is_generic_pattern(symbol) and bool(generics.spec_instances(symbol, names))


def is_spec(ls: "ExrayServer", uri: str) -> bool:
    """The workspace's spec (the specPath setting) or any exray.yaml."""
    path = ls.path_of(uri)
    if path is None:
        return False
    return Path(path).name in SPEC_NAMES or path == str(ls.state.spec_path.resolve())


def spec_uri(ls: "ExrayServer") -> str:
    return ls.state.spec_path.resolve().as_uri()


def open_document(ls: "ExrayServer", uri: str):
    """The client's open buffer of `uri`, or None (pygls keys them unquoted)."""
    return ls.workspace.text_documents.get(unquote(uri))


def spec_text(ls: "ExrayServer", uri: str) -> str | None:
    """The spec as the user sees it: the open buffer, else the file; None if neither."""
    doc = open_document(ls, uri)
    if doc is not None:
        return doc.source
    from probe_compiler.files import FileRefused, read_regular
    from probe_compiler.spec import READ_LIMITS
    path = ls.path_of(uri) or ""
    try:        # on the event loop: a FIFO named exray.yaml must not block it
        return read_regular(path, READ_LIMITS.max_file_bytes, "the limit of one spec file").decode("utf-8")
    except FileRefused as e:
        if os.path.lexists(path):
            ls.log(f"Ex-Ray: not reading the spec {path}: {e}", types.MessageType.Warning)
        return None
    except UnicodeDecodeError:
        return None


# ---------------------------------------------------------------- binding

def bound_binary(ls: "ExrayServer", text: str | None, path: str) -> str | None:
    """The binary the spec is checked against (see the module doc). Blocking."""
    s = ls.state.settings
    if s.binary:
        return str(ls.state.resolve_path(s.binary))
    running = _running_target(text, path)
    if running:
        return running
    idx = ls.state.current
    for p in (idx.processes if idx is not None else []):
        exe = p.get("exe")
        if exe and os.path.isfile(exe):
            return exe
    return None


def _running_target(text: str | None, path: str) -> str | None:
    from probe_compiler.errors import ProbeCompilerError
    from probe_compiler.spec import parse_spec
    from server.errors import ServerError
    from server.snapshot_job import pids_of_targets
    if not text:
        return None
    try:
        pids = pids_of_targets(parse_spec(text, path, check_sql=False))
    except (ProbeCompilerError, ServerError, OSError):
        return None
    for pid in pids:
        exe = f"/proc/{pid}/exe"       # the running image, even when its file was replaced
        if os.access(exe, os.R_OK):
            return exe
    return None


# ------------------------------------------------------------- diagnostics

def schedule_check(ls: "ExrayServer", uri: str, delay: float = DEBOUNCE_S) -> None:
    g = ls.spec_state.bump(uri)
    asyncio.ensure_future(_check(ls, uri, g, delay))


async def _check(ls: "ExrayServer", uri: str, g: int, delay: float) -> None:
    st = ls.spec_state
    try:
        if delay:
            await asyncio.sleep(delay)
        if not st.current(uri, g):
            return
        text = spec_text(ls, uri)
        if text is None:                       # the spec is gone: clear what we said about it
            _publish(ls, uri, [])
            return
        path, root = ls.path_of(uri) or uri, str(ls.state.root)
        first = await asyncio.to_thread(diagnostics.spec_diagnostics, uri, text, None, None, root)
        if not st.current(uri, g):
            return
        _publish(ls, uri, first)
        binary = await asyncio.to_thread(bound_binary, ls, text, path)
        if uri == spec_uri(ls):
            st.binary = binary
        if binary is None or any(d.code == "yaml" for d in first):
            return
        head = await asyncio.to_thread(diagnostics.git_head, root)
        full = await asyncio.to_thread(diagnostics.spec_diagnostics, uri, text, binary, head, root)
        if st.current(uri, g):
            _publish(ls, uri, full)
    except Exception as e:                     # never take the server down over a check
        log.exception("checking %s", uri)
        ls.log(f"Ex-Ray: could not check {uri}: {type(e).__name__}: {e}", types.MessageType.Error)


def _publish(ls: "ExrayServer", uri: str, diags: list[types.Diagnostic]) -> None:
    doc = open_document(ls, uri)
    ls.text_document_publish_diagnostics(types.PublishDiagnosticsParams(
        uri=uri, diagnostics=diags, version=doc.version if doc is not None else None))


def recheck_all(ls: "ExrayServer") -> None:
    """The workspace's spec and every open one: after start-up, a new snapshot
    (another binary) or a saved Go file (other workspace symbols)."""
    uris = {u for u in ls.workspace.text_documents if is_spec(ls, u)}
    if ls.state.spec_path.is_file():
        uris.add(spec_uri(ls))
    for u in uris:
        schedule_check(ls, u, 0)


# ------------------------------------------------------------- code actions

def _wanted(only: list[str] | None, kind: str) -> bool:
    """LSP's kind filter: `refactor` asks for `refactor.exray.capture` too."""
    return not only or any(kind == k or kind.startswith(k + ".") for k in only)


def _can_resolve_edit(ls: "ExrayServer") -> bool:
    rs = getattr(getattr(getattr(ls.client_capabilities, "text_document", None), "code_action", None),
                 "resolve_support", None)
    return rs is not None and "edit" in (rs.properties or [])


async def go_code_actions(ls: "ExrayServer", params: types.CodeActionParams) -> list[types.CodeAction]:
    only = params.context.only
    if only and not any(_wanted(only, k) for k in code_actions.KINDS):
        return []
    uri = params.text_document.uri
    doc = open_document(ls, uri)
    if doc is None:
        return []
    s_uri = spec_uri(ls)
    s_text = spec_text(ls, s_uri)
    version, source = doc.version, doc.source

    def run():
        parsed = gosource.CACHE.get(uri, version, source)
        acts = code_actions.code_actions(str(ls.state.root), uri, source, params.range, s_text, s_uri, parsed)
        acts = [a for a in acts if _wanted(only, a.kind)]
        _cross_check(ls.spec_state, acts)
        if not _can_resolve_edit(ls):
            acts = [code_actions.resolve_code_action(a, s_text) for a in acts]
        return acts
    return await asyncio.to_thread(run)


def _cross_check(st: SpecState, acts: list[types.CodeAction]) -> None:
    """A capture of a function the bound binary lacks (source newer than the
    build, or a closure numbered differently) says so in its title: the capture
    still lands in exray.yaml, for the next build, and the spec's diagnostics
    name the problem."""
    if st.binary is None:
        return
    for a in acts:
        symbol = a.data.get("symbol") if isinstance(a.data, dict) else None
        if a.kind != code_actions.KIND_STOP_CAPTURE and symbol and st.symbols.has(st.binary, symbol) is False:
            a.title += f" (not in the running binary {os.path.basename(os.path.realpath(st.binary))})"


def spec_quick_fixes(ls: "ExrayServer", params: types.CodeActionParams) -> list[types.CodeAction]:
    if not _wanted(params.context.only, types.CodeActionKind.QuickFix):
        return []
    uri = params.text_document.uri
    text = spec_text(ls, uri)
    if text is None:
        return []
    out = []
    for d in params.context.diagnostics:
        if d.source == diagnostics.SOURCE:
            out += diagnostics.quick_fixes(d, text, uri)
    return out


async def resolve(ls: "ExrayServer", action: types.CodeAction) -> types.CodeAction:
    data = action.data if isinstance(action.data, dict) else {}
    if data.get("exray") not in code_actions.KINDS or action.edit is not None:
        return action
    s_uri = data.get("spec_uri") or spec_uri(ls)
    text = spec_text(ls, s_uri)
    return await asyncio.to_thread(code_actions.resolve_code_action, action, text)


# ---------------------------------------------------------------- register

def register(server: "ExrayServer") -> None:
    kinds = [*code_actions.KINDS, types.CodeActionKind.QuickFix]

    @server.feature(types.TEXT_DOCUMENT_CODE_ACTION,
                    types.CodeActionOptions(code_action_kinds=kinds, resolve_provider=True))
    async def on_code_action(ls: "ExrayServer", params: types.CodeActionParams):
        uri = params.text_document.uri
        if is_spec(ls, uri):
            return spec_quick_fixes(ls, params)
        if uri.endswith(".go"):
            return await go_code_actions(ls, params)
        return []

    @server.feature(types.CODE_ACTION_RESOLVE)
    async def on_resolve(ls: "ExrayServer", action: types.CodeAction):
        return await resolve(ls, action)

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def on_open(ls: "ExrayServer", params: types.DidOpenTextDocumentParams):
        if is_spec(ls, params.text_document.uri):
            schedule_check(ls, params.text_document.uri, 0)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def on_change(ls: "ExrayServer", params: types.DidChangeTextDocumentParams):
        if is_spec(ls, params.text_document.uri):
            schedule_check(ls, params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    def on_save(ls: "ExrayServer", params: types.DidSaveTextDocumentParams):
        uri = params.text_document.uri
        if is_spec(ls, uri):
            schedule_check(ls, uri, 0)
        elif uri.endswith(".go"):
            recheck_all(ls)


def on_close(ls: "ExrayServer", uri: str) -> None:
    """A closed spec is checked again from the file (the buffer may not have been saved)."""
    if is_spec(ls, uri):
        schedule_check(ls, uri, 0)
