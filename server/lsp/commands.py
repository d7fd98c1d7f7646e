"""workspace/executeCommand handlers: exray.snapshot, exray.listSnapshots,
exray.useSnapshot, exray.runQuery, exray.openFlameGraph, exray.openDocument.

Each takes the server and the command's arguments, runs blocking work in a
worker thread, and reports failures with window/showMessage (never raises to
the client for bad input: the result then has an "error" key).
"""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from . import documents
from .agent import Cancelled

if TYPE_CHECKING:
    from .server import ExrayServer

SNAPSHOT = "exray.snapshot"
LIST_SNAPSHOTS = "exray.listSnapshots"
USE_SNAPSHOT = "exray.useSnapshot"
RUN_QUERY = "exray.runQuery"
OPEN_FLAME_GRAPH = "exray.openFlameGraph"
OPEN_DOCUMENT = "exray.openDocument"
ALL = [SNAPSHOT, LIST_SNAPSHOTS, USE_SNAPSHOT, RUN_QUERY, OPEN_FLAME_GRAPH, OPEN_DOCUMENT]

# What users type for a command in each editor: the Neovim plugin's user command
# (nvim/plugin/exray.lua) and the VS Code extension's palette title (package.json).
EDITOR_COMMANDS = {
    SNAPSHOT: (":ExraySnapshot", "Ex-Ray: Snapshot"),
    USE_SNAPSHOT: (":ExraySnapshots", "Ex-Ray: Switch Snapshot"),
    RUN_QUERY: (":ExrayQuery", "Ex-Ray: Run Query"),
    OPEN_FLAME_GRAPH: (":ExrayFlameGraph", "Ex-Ray: Open Flame Graph"),
}


def editor_command(client_name: str | None, command: str) -> str:
    """How a message names a command for this client (LSP clientInfo.name):
    `:ExraySnapshot` in Neovim, "Ex-Ray: Snapshot" in VS Code's palette; both
    for a client we don't know. Never a CLI flag."""
    nvim, palette = EDITOR_COMMANDS[command]
    name = (client_name or "").lower()
    if "nvim" in name or "neovim" in name:
        return nvim
    if "code" in name or "codium" in name or "cursor" in name:
        return f'"{palette}" (command palette)'
    return f'{nvim} in Neovim, "{palette}" in VS Code'


def _arg(args: Any, i: int, name: str):
    """Argument `i`, or the key `name` of an object passed as the first argument."""
    if isinstance(args, (list, tuple)):
        if args and isinstance(args[0], dict) and name in args[0]:
            return args[0][name]
        if len(args) > i and not isinstance(args[i], dict):
            return args[i]
    return None


def no_snapshot(ls: "ExrayServer") -> str:
    return f"Ex-Ray: no current snapshot: take one with {editor_command(ls.client_name, SNAPSHOT)}"


async def snapshot(ls: "ExrayServer", args) -> dict:
    """Snapshot the spec's targets with progress; the result becomes current."""
    from probe_compiler.errors import ProbeCompilerError
    from probe_compiler.spec import load_spec
    from server.errors import ServerError
    from server.snapshot_job import pids_of_targets, write

    from .fleet_agent import select_agent, unplaced_targets

    ws = ls.state
    t0 = time.monotonic()
    spec_path = ws.spec_path
    if not spec_path.is_file():
        return ls.fail(f"Ex-Ray: no spec at {spec_path}: create it with the processes under `targets:` "
                       f"(`- pid: 1234` or `- exe: myservice`), then run {editor_command(ls.client_name, SNAPSHOT)}")
    token = str(uuid.uuid4())
    cancel = threading.Event()
    progress = await ls.begin_progress(token, "Ex-Ray snapshot", f"reading {spec_path.name}", cancel)
    loop = asyncio.get_running_loop()
    try:
        try:
            spec = await asyncio.to_thread(load_spec, str(spec_path))
            if not spec.targets and not ws.settings.agents:
                return ls.fail(f"Ex-Ray: nothing to snapshot: {spec_path.name} names no `targets:`; list the "
                               "processes there (`- pid: 1234` or `- exe: myservice`), then run "
                               f"{editor_command(ls.client_name, SNAPSHOT)} again")
            # Through exray agents when exray.agents is set or the targets name agents (fleet_agent.py).
            agent = select_agent(ws.settings, spec, ls.agent)
            pids = [] if agent is not ls.agent else await asyncio.to_thread(pids_of_targets, spec)
        except (ProbeCompilerError, ServerError) as e:
            return ls.fail(f"Ex-Ray: {e}")
        for why in unplaced_targets(ws.settings, spec):
            ls.show(types.MessageType.Warning, f"Ex-Ray: {why}")
        progress.report(f"snapshotting {len(pids)} process{'es' if len(pids) != 1 else ''}" if pids else
                        f"asking {len(agent.addresses) or 'the'} agent{'s' if len(agent.addresses) != 1 else ''}", 5)

        def on_process(i, n, rec):
            loop.call_soon_threadsafe(progress.report, f"pid {rec.pid}: {len(rec.goroutines)} goroutines"
                                      + (f" (error: {rec.error})" if rec.error else ""), 5 + int(80 * i / n))
        # The executor setting: the local snapshot's here, the agents' in the
        # FleetAgent's options (fleet_agent.fleet_options).
        from agent.snapshot import SnapshotOptions
        options = SnapshotOptions(executor=ws.settings.executor) if agent is ls.agent else None
        try:
            records = await asyncio.to_thread(agent.run_plan, pids, spec, options, cancel, on_process)
        except Cancelled as e:
            ls.show(types.MessageType.Info, f"Ex-Ray: snapshot cancelled ({e})")
            return {"cancelled": True}
        except (ProbeCompilerError, ServerError) as e:
            return ls.fail(f"Ex-Ray: {e}")
        if cancel.is_set():
            ls.show(types.MessageType.Info, "Ex-Ray: snapshot cancelled")
            return {"cancelled": True}
        errors = [r.error for r in records if r.error]
        if len(errors) == len(records):
            return ls.fail("Ex-Ray: no process could be snapshotted: " + "; ".join(errors))
        progress.report("writing the snapshot", 90)
        out = ws.new_snapshot_path()
        problems = await asyncio.to_thread(getattr(agent, "write_snapshot", write), str(out), records, spec)
        idx = await ls.load_snapshot(out)
        if idx is None:
            return {"error": f"could not read back {out}"}
        for e in errors:
            ls.show(types.MessageType.Warning, f"Ex-Ray: {e}")
        for p in problems or []:
            ls.log(f"Ex-Ray: {p}")
        warnings = [f"{_where(r, records)}{w}" for r in records for w in r.warnings]
        _show_run_notes(ls, records)
        result = {"path": str(out), "processes": len(records), "errors": errors, "warnings": warnings,
                  "executor": ws.settings.executor,
                  "goroutines": sum(len(r.goroutines) for r in records),
                  "seconds": round(time.monotonic() - t0, 3)}
        progress.end(f"{result['goroutines']} goroutines in {len(records) - len(errors)} "
                     f"process{'es' if len(records) - len(errors) != 1 else ''}")
        return result
    except asyncio.CancelledError:      # the request itself was cancelled ($/cancelRequest)
        cancel.set()                    # the worker thread stops at its next check
        ls.log("Ex-Ray: snapshot request cancelled", types.MessageType.Info)
        raise
    finally:
        progress.end("done")


# Warnings about how a snapshot ran that the user is shown (the others go to the
# log and the processes table): which executor walked the stacks and why
# (`executor auto: used ptrace, because …`), and bounds an agent lowered.
RUN_NOTES = ("executor ", "capture limit ")
MAX_NOTES = 5


def _name(rec) -> str:
    return f"{rec.host} pid {rec.pid}" if rec.agent else f"pid {rec.pid}"


def _where(rec, records) -> str:
    """The process a warning is about, when the snapshot has several or they are remote."""
    return f"{_name(rec)}: " if len(records) > 1 or rec.agent else ""


def _show_run_notes(ls: "ExrayServer", records) -> None:
    """One message per distinct note, naming its processes: auto's fallback
    to ptrace as information (set exray.executor to choose), the rest as
    warnings; every record's warnings also go to the log."""
    by_text: dict[str, list] = {}
    for r in records:
        for w in r.warnings:
            ls.log(f"Ex-Ray: {_where(r, records)}{w}")
            if w.startswith(RUN_NOTES):
                by_text.setdefault(w, []).append(r)
    for i, (text, recs) in enumerate(by_text.items()):
        if i == MAX_NOTES:
            ls.show(types.MessageType.Warning, f"Ex-Ray: {len(by_text) - MAX_NOTES} more notes on how the "
                    "snapshot ran: see the log, or the processes table's warnings")
            break
        who = ", ".join(_name(r) for r in recs[:8]) + (", …" if len(recs) > 8 else "")
        fallback = text.startswith("executor auto: used ptrace")
        ls.show(types.MessageType.Info if fallback else types.MessageType.Warning,
                f"Ex-Ray: {text} ({who})" + ("; the setting exray.executor chooses one" if fallback else ""))


async def list_snapshots(ls: "ExrayServer", args) -> list[dict]:
    return await asyncio.to_thread(ls.state.list_snapshots)


async def use_snapshot(ls: "ExrayServer", args) -> dict:
    path = _arg(args, 0, "path")
    if not isinstance(path, str) or not path:
        return ls.fail("Ex-Ray: exray.useSnapshot needs the path of a snapshot")
    p = ls.state.resolve_path(path)
    if not p.exists() and (ls.state.snapshots_dir / path).exists():
        p = ls.state.snapshots_dir / path
    idx = await ls.load_snapshot(p)
    if idx is None:
        return {"error": f"could not use {p}"}
    return {"path": str(p), "goroutines": idx.n_goroutines}


async def run_query(ls: "ExrayServer", args) -> dict:
    sql = _arg(args, 0, "sql")
    if not isinstance(sql, str) or not sql.strip():
        return ls.fail("Ex-Ray: exray.runQuery needs an SQL query")
    if await ls.current() is None:
        return ls.fail(no_snapshot(ls))
    n = ls.state.add_query(sql)
    uri = documents.query_uri(n)
    doc = await ls.document(uri)
    await ls.open_document(uri)
    return {"uri": uri, "text": doc.text if doc else None}


async def open_document(ls: "ExrayServer", args) -> dict:
    uri = _arg(args, 0, "uri")
    if not isinstance(uri, str) or not documents.is_exray(uri):
        return ls.fail(f"Ex-Ray: not an exray: URI: {uri!r}")
    await ls.open_document(uri)
    return {"uri": uri}


async def open_flame_graph(ls: "ExrayServer", args) -> dict:
    idx = await ls.current()
    if idx is None:
        return ls.fail(no_snapshot(ls))

    def export() -> Path:
        from server import export as ex, flamegraph
        from server.store import reading
        with reading(idx.path) as db:        # checked, read-only, under the read bounds
            procs, gors = ex.load(db)
        out = Path(idx.path).with_suffix(".flamegraph.html")
        flamegraph.write(out, flamegraph.render(procs, gors, title=Path(idx.path).name))
        return out
    try:
        out = await asyncio.to_thread(export)
    except Exception as e:
        return ls.fail(f"Ex-Ray: flame graph: {e}")
    uri = out.as_uri()
    shown = await ls.show_document(uri, external=True)
    return {"uri": uri, "path": str(out), "shown": shown}


HANDLERS = {
    SNAPSHOT: snapshot, LIST_SNAPSHOTS: list_snapshots, USE_SNAPSHOT: use_snapshot,
    RUN_QUERY: run_query, OPEN_FLAME_GRAPH: open_flame_graph, OPEN_DOCUMENT: open_document,
}
