"""The language server's `Agent` (server/lsp/agent.py) over `exray agent`s:
the editor's snapshots go through the control plane of server/fleet.py.

    agent = FleetAgent(["10.0.0.7:7701", "unix:/run/exray/agent.sock"])

`run_plan(pids, spec)` takes `pids` on every agent; with none, the spec's
targets: one that names an `agent:` on that agent, one that names none on
every agent of the list (the setting `exray.agents` stands in for its
`agent:`); an agent no target selects from gives all it lists. Records
carry `host` and `agent`, so the same pid on two machines stays two
processes.

`select_agent(settings, spec, local)` is what the snapshot command asks:
a FleetAgent when the setting `exray.agents` is set or the spec's targets
name agents, else `local` (the in-process LocalAgent).
"""
from __future__ import annotations

import threading
from typing import Callable

from agent.records import ProcessRecord

from .agent import Cancelled, ProcessInfo


def select_agent(settings, spec, local):
    """The agent a snapshot of `spec` goes through (settings: workspace.Settings)."""
    named = [t.agent for t in (getattr(spec, "targets", None) or []) if t.agent]
    if not settings.agents and not named:
        return local
    return FleetAgent(list(settings.agents), fleet_options(settings))


def unplaced_targets(settings, spec) -> list[str]:
    """Why some of the spec's targets are not taken: a snapshot through agents
    takes a target without `agent:` on the agents of exray.agents, and there
    are none (the other targets name agents)."""
    targets = getattr(spec, "targets", None) or []
    if settings.agents or not any(t.agent for t in targets):
        return []
    return [f"{t.path}:{t.line}:{t.column}: this target names no agent, and the snapshot goes through the "
            "agents the other targets name: give it `agent:`, or list its agents in the setting exray.agents"
            for t in targets if not t.agent]


def fleet_options(settings):
    """FleetOptions from the editor's settings; an empty credential setting
    falls back to its $EXRAY_AGENT_* variable, as `exray snapshot` does."""
    from server.agent_client import Credentials
    from server.fleet import FleetOptions
    env = Credentials.from_env()
    creds = Credentials(settings.agentTokenFile or env.token_file, settings.agentCa or env.ca,
                        settings.agentCert or env.cert, settings.agentKey or env.key,
                        settings.agentServerName or env.server_name)
    return FleetOptions(deadline_s=float(settings.agentDeadline), credentials=creds,
                        executor=settings.executor)


def editor_targets(addresses: list[str], spec) -> list:
    """The AgentTargets of a snapshot from the editor (see the module's doc)."""
    from server.fleet import AgentTarget
    out = {a: AgentTarget(a) for a in addresses}
    for t in (getattr(spec, "targets", None) or []):
        for a in ([t.agent] if t.agent else addresses):
            at = out.setdefault(a, AgentTarget(a))
            if t.exe:
                at.exes.append(t.exe)
            if t.pid:
                at.pids.append(t.pid)
    return list(out.values())


class FleetAgent:
    def __init__(self, addresses: list[str], options=None):
        from server.fleet import FleetOptions
        self.addresses = list(addresses)
        self.options = options or FleetOptions()
        self.result = None            # the last run_plan's FleetResult (write_snapshot keeps its meta)

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
        from server.fleet import AgentTarget, fleet_snapshot
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled before any agent was asked")
        targets = ([AgentTarget(a, pids=list(pids)) for a in self.addresses] if pids
                   else editor_targets(self.addresses, spec))
        if not targets:
            from server.errors import NoTargets
            raise NoTargets("no agents: set exray.agents, or name agents in the spec's targets")
        self.result = result = fleet_snapshot(targets, spec, self.options)
        for i, rec in enumerate(result.records, 1):
            if on_process is not None:
                on_process(i, len(result.records), rec)
        return result.records

    def write_snapshot(self, out: str, records: list[ProcessRecord], spec) -> list:
        """The snapshot file with the fleet's meta (pause instant, agents, skew)
        when `records` are the last run's, as `exray snapshot --agent` writes it."""
        from server.fleet import write
        from server.snapshot_job import write as write_local
        if self.result is not None and records is self.result.records:
            return write(out, self.result, spec)
        return write_local(out, records, spec)
