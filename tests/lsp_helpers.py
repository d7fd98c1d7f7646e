"""Helpers for the language server's tests: a Go workspace made from a test
program, the server's command line and environment, and a client session
started by hand (for tests that need their own workspace or settings)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from pathlib import Path

from lsprotocol import types
from pytest_lsp import ClientServerConfig, client_capabilities

ROOT = Path(__file__).resolve().parent.parent
GOPROGS = Path(__file__).parent / "goprogs"
SERVER_COMMAND = [sys.executable, "-m", "server.lsp"]
CLIENTS = {"neovim": "neovim", "vscode": "visual-studio-code"}


def server_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def config(wrap: list[str] | None = None, **env: str) -> ClientServerConfig:
    """`wrap`: a command the server runs under (e.g. setpriv dropping capabilities)."""
    return ClientServerConfig(server_command=[*(wrap or []), *SERVER_COMMAND], server_env=server_env(**env))


def capabilities(client: str) -> types.ClientCapabilities:
    return client_capabilities(CLIENTS.get(client, client))


def make_workspace(dst: Path, program: str = "linkpair", module: str | None = None,
                   spec: str | None = None) -> Path:
    """dst/ holding tests/goprogs/<program>, a go.mod and (optionally) exray.yaml."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in (GOPROGS / program).iterdir():
        if f.is_file():
            shutil.copy(f, dst / f.name)
    (dst / "go.mod").write_text(f"module {module or 'exray.test/' + program}\n\ngo 1.21\n")
    if spec is not None:
        (dst / "exray.yaml").write_text(spec)
    return dst


def line_of(path: Path, text: str) -> int:
    """1-based number of the line whose stripped text is `text`."""
    lines = [l.strip() for l in path.read_text().splitlines()]
    return lines.index(text) + 1


async def initialize(client, root: Path, caps: types.ClientCapabilities, options=None) -> types.InitializeResult:
    return await client.initialize_session(types.InitializeParams(
        capabilities=caps, root_uri=root.as_uri(),
        workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name=root.name)],
        initialization_options=options))


@contextlib.asynccontextmanager
async def session(root: Path, client: str = "neovim", options=None, caps=None, wrap=None, **env: str):
    """A server of our own on `root`; shut down and stopped on exit."""
    c = await config(wrap, **env).start()
    try:
        c.init_result = await initialize(c, root, caps or capabilities(client), options)
        yield c
    finally:
        await close(c)


async def close(c) -> None:
    """Shut the server down politely, or kill it: a failed test must not hang."""
    try:
        await asyncio.wait_for(c.shutdown_session(), 10)
    except Exception:
        with contextlib.suppress(Exception):
            c._server.kill()
    await asyncio.wait_for(c.stop(), 10)


async def command(client, name: str, *args):
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command=name, arguments=list(args)))


async def content(client, uri: str) -> str:
    res = await client.protocol.send_request_async("exray/textDocumentContent", {"uri": uri})
    return res["text"] if isinstance(res, dict) else res.text


async def wait_until(pred, timeout: float = 20.0, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
