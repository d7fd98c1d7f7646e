"""The control plane: one snapshot across the agents of many machines.

    result = fleet_snapshot([AgentTarget("10.0.0.7:7701"), ...], spec, FleetOptions(...))

1. Every agent at once: Health (version, and its clock against ours) and
   ListProcesses; the processes to take are chosen from what it lists.
2. Each build id's binary is fetched once, from one agent that runs it, into
   the content-addressed DebugInfoCache (server/debug_cache.py).
3. The plans are compiled here, as `exray snapshot` compiles them locally
   (server.snapshot_job.load_target), with the binary's runtime-type table
   (the agent has no DWARF to resolve an interface's dynamic type), and the
   spec is checked across every binary of the snapshot before anything is
   paused.
4. RunPlan goes to every agent at once, each with the deadline, and with one
   agreed pause instant: ours plus a lead, moved into each agent's clock by
   the offset Health measured.
5. An agent that is down, slow, refusing or lost mid-way gets error records
   for its processes (processes.error); the rest of the snapshot completes.

Skew: `clock_offset_ns` is the host's clock minus ours (± half the Health
round trip), `skew_ns` the process's capture start minus the agreed instant,
in our clock. Both go in the processes table; meta gets the summary.
"""
from __future__ import annotations

import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from agent.records import ProcessRecord

from .agent_client import AgentClient, AgentUnavailable, Credentials, error_record, plan_request
from .debug_cache import DebugInfoCache


@dataclass
class AgentTarget:
    """One agent and which of its processes to take: `pids`, or those whose exe
    base name is in `exes` or build id in `build_ids`; none of them: all it lists."""
    address: str
    pids: list[int] = field(default_factory=list)
    exes: list[str] = field(default_factory=list)
    build_ids: list[str] = field(default_factory=list)

    def selects(self, p) -> bool:
        if not (self.pids or self.exes or self.build_ids):
            return True
        return (p.pid in self.pids or os.path.basename(p.exe) in self.exes
                or (p.build_id and p.build_id in self.build_ids))


@dataclass
class FleetOptions:
    deadline_s: float = 30.0          # per agent, for the whole RunPlan
    connect_timeout_s: float = 5.0    # Health and ListProcesses
    fetch_timeout_s: float = 300.0    # one binary
    pause_lead_s: float | None = None  # None: 0.75 s + 4 round trips of the slowest agent (agents prepare first)
    # Bound on each process's pause (the agent caps it too); None: the limits' deadline_ms.
    pause_deadline_s: float | None = None
    credentials: Credentials = field(default_factory=Credentials.from_env)
    cache: DebugInfoCache | None = None
    budgets: object = None
    progress: object = None           # callable(text) for progress lines
    # Who walks the stacks on the agents: "ptrace", "ebpf", "auto"; None or
    # "": each agent's default (the first executor of its policy).
    executor: str | None = None
    # The capture limits (probe_compiler/capture_limits.py CaptureLimits) the
    # agents snapshot within (each caps them at its own ceilings); None: the
    # spec's `limits:` (the defaults without a spec), as `exray snapshot` does.
    limits: object = None

    def checked(self) -> "FleetOptions":
        """Refuses, before any agent is asked, an executor or limits no agent would take."""
        from agent.policy import EXECUTORS

        from .errors import ServerError
        if self.executor and self.executor not in EXECUTORS:
            raise ServerError(f"unknown executor {self.executor!r}: one of {', '.join(EXECUTORS)}")
        if self.limits is not None:
            bad = self.limits.over_ceiling()
            if bad:
                raise ServerError("capture limits: " + "; ".join(bad))
        return self


def limits_of(spec, opts: FleetOptions):
    """The capture limits of a snapshot through agents: the options', else the spec's."""
    from probe_compiler.capture_limits import DEFAULTS
    return opts.limits or getattr(spec, "capture_limits", None) or DEFAULTS


def limits_request(limits) -> dict[str, float]:
    """The limits a RunPlanRequest carries: those that differ from the defaults
    (an agent takes its defaults for the rest, and warns only where it lowers
    a bound that was asked for)."""
    from dataclasses import fields

    from probe_compiler.capture_limits import DEFAULTS
    return {f.name: float(getattr(limits, f.name)) for f in fields(limits)
            if getattr(limits, f.name) != getattr(DEFAULTS, f.name)}


@dataclass
class AgentReport:
    address: str
    host: str | None = None
    version: str | None = None
    clock_offset_ns: int | None = None
    clock_uncertainty_ns: int | None = None
    processes: int = 0
    error: str | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class FleetResult:
    records: list[ProcessRecord]
    agents: list[AgentReport]
    pause_at_ns: int
    wall_ns: int

    def summary(self) -> dict:
        ok = [r for r in self.records if not r.error]
        skews = [r.skew_ns for r in ok if r.skew_ns is not None]
        pauses = [r.pause_ns for r in ok if r.pause_ns is not None]
        return {"pause_at_ns": self.pause_at_ns, "wall_ns": self.wall_ns,
                "max_pause_ns": max(pauses, default=None),
                "skew_spread_ns": (max(skews) - min(skews)) if skews else None,
                "max_abs_skew_ns": max((abs(s) for s in skews), default=None),
                "max_clock_uncertainty_ns": max((a.clock_uncertainty_ns or 0 for a in self.agents
                                                 if not a.error), default=None)}


@dataclass
class _Agent:
    target: AgentTarget
    report: AgentReport
    client: AgentClient | None = None
    chosen: list = field(default_factory=list)        # ProcessInfo
    records: list[ProcessRecord] = field(default_factory=list)


def _say(opts, text):
    if opts.progress:
        opts.progress(text)


def _connect(a: _Agent, opts: FleetOptions) -> None:
    try:
        a.client = AgentClient.connect(a.target.address, opts.credentials)
        h = a.client.health(opts.connect_timeout_s)
        listed = a.client.list_processes(opts.connect_timeout_s)
    except (AgentUnavailable, OSError) as e:
        a.report.error = str(e) if isinstance(e, AgentUnavailable) else f"agent {a.target.address}: {e}"
        a.records = _unreached(a, a.report.error)
        return
    a.report.host, a.report.version = h.host, h.version
    a.report.clock_offset_ns, a.report.clock_uncertainty_ns = a.client.clock.offset_ns, a.client.clock.uncertainty_ns
    a.chosen = [p for p in listed if a.target.selects(p)]
    offered = {p.pid for p in listed}
    for pid in a.target.pids:
        if pid not in offered:
            a.records.append(error_record(pid, h.host, "", f"agent {a.target.address}: pid {pid} is not "
                                          "offered (not running, not Go, or outside the agent's allow-list)"))
    a.report.processes = len(a.chosen)


def _unreached(a: _Agent, why: str) -> list[ProcessRecord]:
    """Error rows for an agent that answered nothing: one per pid asked for, or
    one with pid 0 standing for the whole agent."""
    host = a.target.address
    return [error_record(pid, host, "", why) for pid in (a.target.pids or [0])]


def fleet_snapshot(targets: list[AgentTarget], spec, opts: FleetOptions | None = None) -> FleetResult:
    from .snapshot_job import load_target
    opts = (opts or FleetOptions()).checked()
    limits = limits_of(spec, opts)
    budgets = opts.budgets or (limits.budgets() if opts.limits is not None else None)
    cache = opts.cache or DebugInfoCache()
    t0 = time.monotonic_ns()
    agents = [_Agent(t, AgentReport(t.address)) for t in targets]
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(agents)))) as pool:
        list(pool.map(lambda a: _connect(a, opts), agents))
        up = [a for a in agents if a.client is not None and not a.report.error]
        _say(opts, f"{len(up)} of {len(agents)} agents answered; "
                   f"{sum(len(a.chosen) for a in up)} processes chosen")

        # 2. Each build id fetched once, from the first agent that runs it.
        source: dict[str, _Agent] = {}
        for a in up:
            for p in a.chosen:
                if p.build_id:
                    source.setdefault(p.build_id, a)
        def fetch(build_id):
            path = cache.get(build_id)
            if path:
                return build_id, path, None
            a = source[build_id]
            _say(opts, f"fetching {build_id} from {a.target.address}")
            try:
                return build_id, cache.put(build_id, lambda f: a.client.fetch(build_id, f, opts.fetch_timeout_s)), None
            except (AgentUnavailable, ValueError, OSError) as e:
                return build_id, None, str(e)
        fetched = {b: (path, err) for b, path, err in pool.map(fetch, list(source))}

    # 3. Compile here, and check the spec across every binary before any pause.
    from agent.errors import AgentError
    from probe_compiler.errors import BinaryError
    from probe_compiler.plan import add_runtime_types
    compiled, targets_cache = {}, {}
    for build_id, (path, err) in fetched.items():
        if err is None:
            try:
                compiled[build_id] = load_target(path, spec, targets_cache, budgets)
                # The agent has no DWARF: every dynamic type an interface may hold goes in the plan.
                add_runtime_types(compiled[build_id].plan, compiled[build_id].dwarf)
            except (AgentError, BinaryError) as e:
                err = str(e)
        if err is not None:
            compiled[build_id] = err
    _check_spans(spec, agents, compiled)

    # 4. One instant for all, in each agent's own clock.
    rtts = [a.client.clock.rtt_ns for a in up if a.client.clock]
    lead = opts.pause_lead_s if opts.pause_lead_s is not None else 0.75 + 4 * max(rtts, default=0) / 1e9
    pause_at = time.time_ns() + int(lead * 1e9)
    request_id = uuid.uuid4().hex
    spec_name = getattr(spec, "path", "") or ""
    spec_text = getattr(spec, "text", None)

    def run(a: _Agent):
        if a.client is None or a.report.error:
            return
        runnable = []
        for p in a.chosen:
            t = compiled.get(p.build_id) if p.build_id else "no build id"
            if isinstance(t, str) or t is None:
                a.records.append(error_record(p.pid, a.report.host, p.exe,
                                              f"pid {p.pid}: its binary {p.build_id}: {t}",
                                              build_id=p.build_id or None))
            else:
                runnable.append(p)
        if not runnable:
            return
        plans = {p.build_id: compiled[p.build_id].plan.to_json() for p in runnable}
        req = plan_request([p.pid for p in runnable], plans, request_id=request_id, spec_name=spec_name,
                           spec_text=spec_text, pause_at_ns=pause_at + a.report.clock_offset_ns,
                           pause_deadline_s=opts.pause_deadline_s or limits.deadline_s,
                           executor=opts.executor or "", limits=limits_request(limits))
        got = {}
        try:
            for rec in a.client.run_plan(req, timeout=opts.deadline_s):
                got[rec.pid] = rec
        except AgentUnavailable as e:
            lost = f"{e}; the agent was lost before it sent this process"
            a.report.error = str(e)
            for p in runnable:
                if p.pid not in got:
                    got[p.pid] = error_record(p.pid, a.report.host, p.exe, lost, build_id=p.build_id)
        a.records.extend(got[p.pid] for p in runnable)

    with ThreadPoolExecutor(max_workers=max(1, min(32, len(agents)))) as pool:
        list(pool.map(run, agents))
    for a in agents:
        if a.client is not None:
            a.client.close()

    records = []
    for a in agents:
        for r in sorted(a.records, key=lambda r: r.pid):
            r.agent = a.target.address
            r.clock_offset_ns = a.report.clock_offset_ns
            if not r.error and r.clock_offset_ns is not None and r.captured_at_ns:
                r.skew_ns = r.captured_at_ns - r.clock_offset_ns - pause_at
            records.append(r)
    return FleetResult(records, [a.report for a in agents], pause_at, time.monotonic_ns() - t0)


def _check_spans(spec, agents: list[_Agent], compiled: dict) -> None:
    """The spec across every compiled binary, as snapshot_job.check_spans does
    for local processes: raises its first SpecError."""
    from probe_compiler.plan import BinaryFunctions, absent_errors
    if spec is None or not spec.functions:
        return
    by_build: dict[str, list] = {}
    for a in agents:
        for p in a.chosen:
            if not isinstance(compiled.get(p.build_id), (str, type(None))):
                by_build.setdefault(p.build_id, []).append((a, p))
    binaries = []
    for build_id, procs in by_build.items():
        a, p = procs[0]
        where = ", ".join(f"{x.report.host or x.target.address}:{q.pid}" for x, q in procs)
        binaries.append(BinaryFunctions(f"{p.exe} ({where})", os.path.basename(p.exe),
                                        compiled[build_id].plan.absent, tuple(q.pid for _, q in procs)))
    errors = absent_errors(spec, binaries)
    if errors:
        raise errors[0]


# ------------------------------------------------------------------ `exray snapshot --agent`

def targets_from(addresses: list[str], pids: list[int], spec) -> list[AgentTarget]:
    """--agent addresses (with --pid, which then apply to every agent) and the
    spec's targets that name an agent (their exe or pid on that agent)."""
    out: dict[str, AgentTarget] = {}
    for addr in addresses:
        out.setdefault(addr, AgentTarget(addr, pids=list(pids)))
    for t in (getattr(spec, "targets", None) or []):
        if t.agent and (not addresses or t.agent in out):
            at = out.setdefault(t.agent, AgentTarget(t.agent))
            if t.exe:
                at.exes.append(t.exe)
            if t.pid:
                at.pids.append(t.pid)
    return list(out.values())


def run(addresses: list[str], pids: list[int], spec_path: str | None, out: str | None,
        opts: FleetOptions | None = None) -> int:
    from probe_compiler.spec import load_spec
    from server.errors import NoTargets

    from .snapshot_job import default_out
    spec = load_spec(spec_path) if spec_path else None
    targets = targets_from(addresses, pids, spec)
    if not targets:
        raise NoTargets("no agents: give --agent ADDR, or name agents in the spec's targets")
    opts = opts or FleetOptions(progress=lambda text: print(f"note: {text}", file=sys.stderr))
    result = fleet_snapshot(targets, spec, opts)
    out = out or default_out(spec_path)
    problems = write(out, result, spec)
    ok = 0
    for r in result.records:
        if r.error:
            print(f"error: {r.host}: {r.error}", file=sys.stderr)
            continue
        ok += 1
        skew = f", {r.skew_ns / 1e6:+.2f} ms from the agreed instant" if r.skew_ns is not None else ""
        print(f"{r.host} pid {r.pid}: {len(r.goroutines)} goroutines, paused {r.pause_ns / 1e6:.2f} ms{skew}")
        for w in r.warnings:
            print(f"  warning: {w}", file=sys.stderr)
    s = result.summary()
    if s["max_pause_ns"] is not None:
        print(f"{ok} processes on {sum(1 for a in result.agents if not a.error)} of {len(result.agents)} agents "
              f"in {s['wall_ns'] / 1e6:.0f} ms; largest pause {s['max_pause_ns'] / 1e6:.2f} ms; "
              f"pause instants within {s['skew_spread_ns'] / 1e6:.2f} ms "
              f"(clocks known to ±{(s['max_clock_uncertainty_ns'] or 0) / 1e6:.2f} ms)")
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    print(f"wrote {out}")
    return 0 if ok else 1


def write(out: str, result: FleetResult, spec) -> list:
    """The snapshot file (server.snapshot_job.write), plus the fleet's meta rows."""
    import json

    from .snapshot_job import write as write_local
    from .store import open_snapshot
    problems = write_local(out, result.records, spec)
    db = open_snapshot(out, readonly=False)
    try:
        s = result.summary()
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
            ("pause_at", str(result.pause_at_ns)),
            ("agents", json.dumps([a.to_json() for a in result.agents])),
            ("fleet", json.dumps(s)),
        ])
        db.commit()
    finally:
        db.close()
    os.chmod(out, 0o600)
    return problems


def add_snapshot_arguments(s) -> None:
    """`exray snapshot`'s options for snapshots through agents."""
    s.add_argument("--agent", action="append", metavar="ADDR",
                   help="take the processes from this agent (host:port or unix:/path; repeat for several); "
                        "with --pid, those pids on every agent")
    s.add_argument("--agent-token-file", metavar="FILE", help="bearer token for the agents "
                   "(default $EXRAY_AGENT_TOKEN_FILE)")
    s.add_argument("--agent-ca", metavar="PEM", help="CA of the agents' certificates (TLS; $EXRAY_AGENT_CA)")
    s.add_argument("--agent-cert", metavar="PEM", help="client certificate for mutual TLS ($EXRAY_AGENT_CERT)")
    s.add_argument("--agent-key", metavar="PEM", help="its private key ($EXRAY_AGENT_KEY)")
    s.add_argument("--agent-server-name", metavar="NAME", help="name expected in the agents' certificates")
    s.add_argument("--deadline", type=float, default=30.0, metavar="S",
                   help="how long each agent may take, in seconds (default 30); a late one is reported "
                        "in processes.error and the snapshot completes without it")


def snapshot_command(args, spec_path: str | None, limits: dict | None = None) -> int | None:
    """`exray snapshot` through agents when --agent is given or the spec's
    targets name agents (and no local --pid); None: a local snapshot.
    `limits`: the capture-limit flags (CaptureLimits field -> value), over
    the spec's `limits:`; --executor (else $EXRAY_EXECUTOR) goes to the agents."""
    addresses = list(getattr(args, "agent", None) or [])
    if not addresses:
        if args.pid or not spec_path:
            return None
        from probe_compiler.spec import load_spec
        if not any(t.agent for t in (load_spec(spec_path).targets or [])):
            return None
    env = Credentials.from_env()
    creds = Credentials(args.agent_token_file or env.token_file, args.agent_ca or env.ca,
                        args.agent_cert or env.cert, args.agent_key or env.key,
                        args.agent_server_name or env.server_name)
    opts = FleetOptions(deadline_s=args.deadline, credentials=creds,
                        progress=lambda text: print(f"note: {text}", file=sys.stderr),
                        executor=getattr(args, "executor", None) or os.environ.get("EXRAY_EXECUTOR") or None,
                        limits=_limits_with_flags(spec_path, limits))
    return run(addresses, list(args.pid or []), spec_path, args.out, opts)


def _limits_with_flags(spec_path: str | None, flags: dict | None):
    """The spec's `limits:` with `exray snapshot`'s limit flags over them
    (None: no flags, the spec's alone)."""
    if not flags:
        return None
    from probe_compiler.capture_limits import DEFAULTS
    from probe_compiler.spec import load_spec
    base = getattr(load_spec(spec_path), "capture_limits", None) if spec_path else None
    return (base or DEFAULTS).with_(**flags).checked()
