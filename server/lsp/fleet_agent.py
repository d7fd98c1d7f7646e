"""The language server's `Agent` (server/lsp/agent.py) over `exray agent`s:
the editor's snapshots go through the control plane of server/fleet.py.

    agent = FleetAgent(["10.0.0.7:7701", "unix:/run/exray/agent.sock"])

`run_plan(pids, spec)` takes `pids` on every agent (none: the spec's targets
that name each agent, else all it lists); records carry `host` and `agent`,
so the same pid on two machines stays two processes.
"""
from __future__ import annotations

import threading
from typing import Callable

from agent.records import ProcessRecord

from .agent import Cancelled, ProcessInfo


class FleetAgent:
    def __init__(self, addresses: list[str], options=None):
        from server.fleet import FleetOptions
        self.addresses = list(addresses)
        self.options = options or FleetOptions()

    def _clients(self):
        from server.agent_client import AgentClient
        return [AgentClient.connect(a, self.options.credentials) for a in self.addresses]

    def list_processes(self) -> list[ProcessInfo]:
        """Every agent's processes; an unreachable agent lists none."""
        from server.agent_client import AgentUnavailable
        out = []
        for c in self._clients():
            try:
                out += [ProcessInfo(p.pid, p.exe, p.build_id or None, p.go_version or None)
                        for p in c.list_processes(self.options.connect_timeout_s)]
            except AgentUnavailable:
                pass
            finally:
                c.close()
        return out

    def debug_info(self, build_id: str) -> str | None:
        """The binary's path in the control plane's cache, fetched from the
        first agent that runs it."""
        from server.agent_client import AgentUnavailable
        from server.debug_cache import DebugInfoCache
        cache = self.options.cache or DebugInfoCache()
        path = cache.get(build_id)
        for c in ([] if path else self._clients()):
            try:
                if path is None and any(p.build_id == build_id
                                        for p in c.list_processes(self.options.connect_timeout_s)):
                    path = cache.put(build_id, lambda f: c.fetch(build_id, f, self.options.fetch_timeout_s))
            except (AgentUnavailable, ValueError):
                continue
            finally:
                c.close()
        return path

    def run_plan(self, pids, spec, options=None, cancel: threading.Event | None = None,
                 on_process: Callable[[int, int, ProcessRecord], None] | None = None) -> list[ProcessRecord]:
        from server.fleet import fleet_snapshot, targets_from
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled before any agent was asked")
        result = fleet_snapshot(targets_from(self.addresses, list(pids or []), spec), spec, self.options)
        for i, rec in enumerate(result.records, 1):
            if on_process is not None:
                on_process(i, len(result.records), rec)
        return result.records
