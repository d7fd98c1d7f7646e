"""The Ex-Ray language server (pygls 2): `python -m server.lsp` over stdio.

Handlers are short and async. Everything that may take long (snapshots,
opening and indexing a snapshot, rendering virtual documents, DWARF) runs in
a worker thread; requests on Go files only look things up in the current
snapshot's `SnapshotIndex`. Bad input (settings, spec, snapshot files, Go
files) becomes a message; the server keeps serving.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.exceptions import JsonRpcInvalidParams
from pygls.protocol import LanguageServerProtocol, lsp_method
from pygls.uris import to_fs_path

from . import commands, documents, editing, gosource, goviews, hints
from .framing import ResilientProtocol, serve_stdio
from .agent import Agent, LocalAgent
from .sourcemap import SourceMap
from .workspace import Workspace, validate_settings

log = logging.getLogger("exray.lsp")

CONTENT_REQUEST = "exray/textDocumentContent"     # fallback for clients without LSP 3.18's
CONFIG_SECTION = "exray"


class ExrayProtocol(ResilientProtocol, LanguageServerProtocol):
    """Adds `workspace.textDocumentContent` (LSP 3.18) to the initialize result
    when the client announces support for it. ResilientProtocol answers every
    request, whatever the client sends (framing.py)."""

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams):
        result = yield from super().lsp_initialize(params)
        ws_caps = params.capabilities.workspace
        if ws_caps is not None and ws_caps.text_document_content is not None:
            caps = result.capabilities
            if caps.workspace is None:
                caps.workspace = types.WorkspaceOptions()
            caps.workspace.text_document_content = types.TextDocumentContentOptions(schemes=[documents.SCHEME])
        return result


    @lsp_method(types.WORKSPACE_EXECUTE_COMMAND)
    async def lsp_workspace__execute_command(self, params: types.ExecuteCommandParams):
        """As pygls's, but a coroutine: pygls runs commands through a generator
        whose request future, when $/cancelRequest cancels it, leaves the
        command's own task running (a snapshot would still be written). Run
        as the request's task, the cancel reaches the command. Our commands
        take their arguments as given (`*args`)."""
        handler = self.fm.commands.get(params.command)
        if handler is None:
            raise JsonRpcInvalidParams.of(ValueError(f"Command name {params.command!r} is not defined"))
        return await handler(*(params.arguments or []))


class _Progress:
    """window/workDoneProgress for one token; every call is a no-op when the
    client has no progress support. `end` may be called more than once."""

    def __init__(self, ls: "ExrayServer", token: str | None):
        self.ls, self.token, self.ended = ls, token, False

    def report(self, message: str, percentage: int | None = None) -> None:
        if self.token and not self.ended:
            self.ls.work_done_progress.report(self.token, types.WorkDoneProgressReport(
                message=message, percentage=percentage, cancellable=True))

    def end(self, message: str = "") -> None:
        if self.token and not self.ended:
            self.ended = True
            self.ls.work_done_progress.end(self.token, types.WorkDoneProgressEnd(message=message))
            self.ls.work_done_progress.tokens.pop(self.token, None)


class ExrayServer(LanguageServer):
    def __init__(self, agent: Agent | None = None):
        super().__init__("exray", _version(), protocol_cls=ExrayProtocol)
        self.agent: Agent = agent or LocalAgent()
        self.state = Workspace(Path.cwd())
        self._docs: dict[str, documents.Doc] = {}
        self.told_unparsed: set[str] = set()           # Go files said not to parse, per snapshot
        self._load_lock = asyncio.Lock()
        self.init_problems: list[str] = []
        self._told_settings: set[str] = set()
        self.spec_state = editing.SpecState()
        self.startup: asyncio.Future | None = None   # the first snapshot's load, after `initialized`
        self.client_name: str | None = None          # clientInfo.name: messages name its commands

    def start_io(self, stdin=None, stdout=None) -> None:
        """As pygls's, with framing that survives a bad client (framing.py)."""
        serve_stdio(self, stdin, stdout)

    # ---------------------------------------------------------------- messages
    def show(self, kind: types.MessageType, message: str) -> None:
        self.window_show_message(types.ShowMessageParams(type=kind, message=message))

    def log(self, message: str, kind: types.MessageType = types.MessageType.Log) -> None:
        self.window_log_message(types.LogMessageParams(type=kind, message=message))

    def fail(self, message: str) -> dict:
        self.show(types.MessageType.Error, message)
        return {"error": message}

    # --------------------------------------------------------------- settings
    def apply_settings(self, raw: Any, source: str) -> None:
        settings, problems = validate_settings(raw, self.state.settings)
        for p in problems:
            if p not in self._told_settings:      # clients resend their settings: say it once
                self._told_settings.add(p)
                self.show(types.MessageType.Warning, f"Ex-Ray ({source}): {p}")
        old = self.state.settings
        self.state.settings = settings
        if settings.maxHintLength != old.maxHintLength:
            self.refresh_views()

    async def fetch_configuration(self) -> None:
        if not _cap(self.client_capabilities, "workspace", "configuration"):
            return
        try:
            got = await asyncio.wait_for(self.workspace_configuration_async(types.ConfigurationParams(
                items=[types.ConfigurationItem(section=CONFIG_SECTION)])), 5)
        except Exception as e:            # a client that fails the request: keep what we have
            self.log(f"Ex-Ray: workspace/configuration failed: {e}")
            return
        if got and got[0] is not None:
            self.apply_settings(got[0], "workspace/configuration")

    # -------------------------------------------------------------- snapshots
    async def load_snapshot(self, path: Path | str, quiet: bool = False, replace: bool = True):
        """Index a snapshot off the loop and make it current; None (and a message) on
        failure. With replace=False (the start-up load) a snapshot that became
        current meanwhile (the user chose one) stays."""
        from server.store import SnapshotError
        sm = SourceMap(self.state.root)
        try:
            idx = await asyncio.to_thread(hints.SnapshotIndex.load, str(path), sm)
        except (SnapshotError, sqlite3.Error, OSError, ValueError) as e:
            self.show(types.MessageType.Error, f"Ex-Ray: cannot use snapshot {path}: {e}")
            return None
        except Exception as e:            # a snapshot we did not expect: say so, keep serving
            log.exception("indexing %s", path)
            self.show(types.MessageType.Error, f"Ex-Ray: cannot use snapshot {path}: {type(e).__name__}: {e}")
            return None
        if not replace and self.state.current is not None:
            return self.state.current
        self.state.current = idx
        shown = list(self._docs)
        self._docs.clear()
        self.told_unparsed.clear()
        if not quiet:
            self.log(f"Ex-Ray: current snapshot {path} ({idx.n_goroutines} goroutines)", types.MessageType.Info)
        self.refresh_views()
        self.refresh_documents(shown)
        editing.recheck_all(self)              # another binary may be bound now
        return idx

    def refresh_views(self) -> None:
        """Ask the client to pull inlay hints and code lenses again, if it can."""
        caps = self.client_capabilities
        if _cap(caps, "workspace", "inlay_hint", "refresh_support"):
            asyncio.ensure_future(self._refresh(self.workspace_inlay_hint_refresh_async))
        if _cap(caps, "workspace", "code_lens", "refresh_support"):
            asyncio.ensure_future(self._refresh(self.workspace_code_lens_refresh_async))

    def refresh_documents(self, uris: list[str]) -> None:
        """exray: documents the client has read show the old snapshot: ask it to
        read them again (LSP 3.18's workspace/textDocumentContent/refresh)."""
        if _cap(self.client_capabilities, "workspace", "text_document_content") is None:
            return
        for uri in uris:
            asyncio.ensure_future(self._refresh(self.workspace_text_document_content_refresh_async,
                                                types.TextDocumentContentRefreshParams(uri=uri)))

    async def _refresh(self, send, params=None) -> None:
        try:
            await asyncio.wait_for(send(params), 10)
        except Exception as e:
            self.log(f"Ex-Ray: refresh failed: {e}")

    async def begin_progress(self, token: str, title: str, message: str,
                             cancel: threading.Event) -> _Progress:
        if not _cap(self.client_capabilities, "window", "work_done_progress"):
            return _Progress(self, None)
        try:
            await asyncio.wait_for(self.work_done_progress.create_async(token), 5)
        except Exception as e:
            self.log(f"Ex-Ray: no progress: {e}")
            return _Progress(self, None)
        self.work_done_progress.begin(token, types.WorkDoneProgressBegin(
            title=title, message=message, cancellable=True, percentage=0))
        fut: Future | None = self.work_done_progress.tokens.get(token)
        if fut is not None:
            fut.add_done_callback(lambda f: cancel.set() if f.cancelled() else None)
        return _Progress(self, token)

    # --------------------------------------------------------------- documents
    async def current(self):
        """The current snapshot's index, once the start-up load (if any) is done."""
        if self.state.current is None and self.startup is not None and not self.startup.done():
            await asyncio.shield(self.startup)
        return self.state.current

    async def document(self, uri: str) -> documents.Doc | None:
        """The exray: document at `uri` (rendered off the loop, cached per snapshot)."""
        idx = await self.current()
        key = _norm_uri(uri)
        if key in self._docs:
            return self._docs[key]
        if idx is None:
            return documents.Doc(commands.no_snapshot(self) + "\n")
        cancel = threading.Event()        # set when the request is cancelled: the query stops
        try:
            doc = await asyncio.to_thread(documents.render, key, idx.path, idx.resolve, dict(self.state.queries),
                                          cancel)
        except asyncio.CancelledError:
            cancel.set()
            raise
        except documents.DocumentError as e:
            return documents.Doc(f"Ex-Ray: {e}\n")
        except Exception as e:            # a corrupt or vanished snapshot, a failing query
            log.exception("rendering %s", uri)
            self.show(types.MessageType.Error, f"Ex-Ray: cannot show {uri}: {e}")
            return documents.Doc(f"Ex-Ray: cannot show {uri}: {e}\n")
        if self.state.current is idx:
            self._docs[key] = doc
        return doc

    async def open_document(self, uri: str) -> bool:
        return await self.show_document(uri, external=False)

    async def show_document(self, uri: str, external: bool) -> bool:
        if not _cap(self.client_capabilities, "window", "show_document", "support"):
            self.show(types.MessageType.Info, f"Ex-Ray: open {uri}")
            return False
        try:
            res = await asyncio.wait_for(self.window_show_document_async(types.ShowDocumentParams(
                uri=uri, external=external or None, take_focus=True)), 30)
            return bool(res and res.success)
        except Exception as e:
            self.log(f"Ex-Ray: showDocument {uri} failed: {e}")
            return False

    # --------------------------------------------------------------- Go files
    def in_snapshot(self, uri: str, by: str):
        """(current snapshot index, workspace path of uri) when the index has that
        file in its `by` map ("lines": frames, "functions": functions with frames)."""
        idx, path = self.state.current, self.path_of(uri)
        if idx is None or path is None or path not in getattr(idx, by):
            return None
        return idx, path

    def path_of(self, uri: str) -> str | None:
        if not uri.startswith("file:"):
            return None
        p = to_fs_path(uri)
        if not p:
            return None
        try:
            return str(Path(p).resolve())
        except OSError:
            return None

    def text_of(self, uri: str) -> str | None:
        try:
            return self.workspace.get_text_document(uri).source
        except (OSError, UnicodeDecodeError):
            return None


async def _startup(ls: ExrayServer) -> None:
    await ls.fetch_configuration()
    # The newest snapshot of the workspace becomes current, as if just taken.
    snaps = await asyncio.to_thread(ls.state.list_snapshots)
    if snaps and ls.state.current is None:
        await ls.load_snapshot(snaps[0]["path"], quiet=True, replace=False)
    else:
        editing.recheck_all(ls)


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("exray")
    except Exception:
        return "0"


def _cap(obj, *path) -> Any:
    for name in path:
        if obj is None:
            return None
        obj = getattr(obj, name, None)
    return obj


def _norm_uri(uri: str) -> str:
    # Clients write exray:/x and exray:///x; documents are keyed by the first.
    if uri.startswith(documents.SCHEME + "://"):
        uri = documents.SCHEME + ":/" + uri[len(documents.SCHEME) + 3:].lstrip("/")
    return uri


# ======================================================================= features

def create_server(agent: Agent | None = None) -> ExrayServer:
    server = ExrayServer(agent)

    @server.feature(types.INITIALIZE)
    def on_initialize(ls: ExrayServer, params: types.InitializeParams):
        root = None
        if params.workspace_folders:
            root = to_fs_path(params.workspace_folders[0].uri)
        elif params.root_uri:
            root = to_fs_path(params.root_uri)
        elif params.root_path:
            root = params.root_path
        ls.state = Workspace(Path(root).resolve() if root else Path.cwd())
        ls.client_name = params.client_info.name if params.client_info else None
        opts = params.initialization_options
        if opts is not None:
            settings, ls.init_problems = validate_settings(opts)
            ls.state.settings = settings

    @server.feature(types.INITIALIZED)
    async def on_initialized(ls: ExrayServer, params):
        for p in ls.init_problems:
            ls._told_settings.add(p)
            ls.show(types.MessageType.Warning, f"Ex-Ray (initializationOptions): {p}")
        caps = ls.client_capabilities
        if _cap(caps, "workspace", "text_document_content", "dynamic_registration"):
            try:
                await ls.client_register_capability_async(types.RegistrationParams(registrations=[
                    types.Registration(id="exray-content", method=types.WORKSPACE_TEXT_DOCUMENT_CONTENT,
                                       register_options=types.TextDocumentContentRegistrationOptions(
                                           schemes=[documents.SCHEME]))]))
            except Exception as e:
                ls.log(f"Ex-Ray: could not register workspace/textDocumentContent: {e}")
        # Requests that need the snapshot (documents, queries) wait for this.
        ls.startup = asyncio.ensure_future(_startup(ls))

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def on_config(ls: ExrayServer, params: types.DidChangeConfigurationParams):
        s = params.settings
        if isinstance(s, dict) and CONFIG_SECTION in s:
            ls.apply_settings(s[CONFIG_SECTION], "settings")
        else:
            await ls.fetch_configuration()

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def on_close(ls: ExrayServer, params: types.DidCloseTextDocumentParams):
        gosource.CACHE.forget(params.text_document.uri)
        editing.on_close(ls, params.text_document.uri)

    # ---- virtual documents
    @server.feature(types.WORKSPACE_TEXT_DOCUMENT_CONTENT)
    async def text_document_content(ls: ExrayServer, params: types.TextDocumentContentParams):
        doc = await ls.document(params.uri)
        return types.TextDocumentContentResult(text=doc.text if doc else "")

    @server.feature(CONTENT_REQUEST)
    async def text_document_content_fallback(ls: ExrayServer, params):
        uri = params.get("uri") if isinstance(params, dict) else getattr(params, "uri", None)
        if not isinstance(uri, str):
            return {"text": "Ex-Ray: exray/textDocumentContent needs {\"uri\": \"exray:/…\"}\n"}
        doc = await ls.document(uri)
        return {"text": doc.text if doc else ""}

    @server.feature(types.TEXT_DOCUMENT_DOCUMENT_LINK)
    async def document_links(ls: ExrayServer, params: types.DocumentLinkParams):
        uri = params.text_document.uri
        if not documents.is_exray(uri):
            return []
        doc = await ls.document(uri)
        if doc is None:
            return []
        lines = doc.text.split("\n")
        out = []
        for n, start, end, target in doc.links:
            text = lines[n] if n < len(lines) else ""
            out.append(types.DocumentLink(
                range=types.Range(types.Position(n, gosource.utf16_len(text[:start])),
                                  types.Position(n, gosource.utf16_len(text[:end]))),
                target=target))
        return out

    # ---- commands
    for name, handler in commands.HANDLERS.items():
        def make(h):
            async def run(ls: ExrayServer, *args):
                try:
                    return await h(ls, list(args))
                except asyncio.CancelledError:
                    raise
                except Exception as e:          # never let a command take the server down
                    log.exception("command failed")
                    return ls.fail(f"Ex-Ray: {type(e).__name__}: {e}")
            return run
        server.command(name)(make(handler))

    goviews.register(server)      # inlay hints, code lenses and hovers in Go files
    editing.register(server)      # code actions on Go files, diagnostics on exray.yaml
    return server


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="exray-lsp %(levelname)s %(name)s: %(message)s")
    create_server().start_io()
