"""`exray agent`: the gRPC server that snapshots this machine's Go processes
for a control plane (agent/proto/exray_agent.proto).

The control plane compiles the probe plan (it holds the DWARF); the agent
opens each process's binary only for its pclntab, takes the plan as data,
and runs it with the user-space reader (agent/snapshot.py), every process of
a request paused at the request's agreed instant. Everything the agent does
for a client passes agent/policy.py first: allow-list, rate limit, caps,
deadline, and one audit line per request.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc

from .policy import AuditLog, Policy, ProcFacts, RateLimiter, proc_facts
from .proto import exray_agent_pb2 as pb
from .proto import exray_agent_pb2_grpc as pb_grpc
from .records import ProcessRecord
from .wire import chunks, record_to_json

PROTOCOL = 1
CHUNK_BYTES = 1 << 20


def exray_version() -> str:
    try:
        from importlib.metadata import version
        return version("exray")
    except Exception:
        return "unknown"


@dataclass
class Auth:
    """How clients prove who they are. `tokens`: token -> name for the audit log."""
    tokens: dict[str, str] | None = None
    mtls: bool = False

    @staticmethod
    def read_token_file(path: str) -> dict[str, str]:
        """One token per line, optionally `NAME TOKEN`; # comments. The file must
        not be readable by group or others."""
        st = os.stat(path)
        if st.st_mode & 0o077:
            raise ValueError(f"{path} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it")
        out = {}
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.split()
                token = parts[-1]
                name = parts[0] if len(parts) > 1 else "token:" + hashlib.sha256(token.encode()).hexdigest()[:8]
                if len(token) < 16:
                    raise ValueError(f"{path}: a token shorter than 16 characters is too easy to guess")
                out[token] = name
        if not out:
            raise ValueError(f"{path} holds no token")
        return out

    def who(self, context) -> str:
        """The caller, as the audit log names it."""
        if self.mtls:
            names = context.auth_context().get("x509_common_name") or []
            if names:
                return "cert:" + names[0].decode(errors="replace")
        if self.tokens is not None:
            name = self.token_name(context.invocation_metadata())
            if name:
                return name
        return context.peer() or "?"

    def token_name(self, metadata) -> str | None:
        if self.tokens is None:
            return None
        for k, v in metadata or ():
            if k == "authorization" and isinstance(v, str) and v.startswith("Bearer "):
                given = v[len("Bearer "):].encode()
                for token, name in self.tokens.items():
                    if hmac.compare_digest(given, token.encode()):
                        return name
        return None


class _TokenCheck(grpc.ServerInterceptor):
    """Refuses, before any handler runs, a call without a valid bearer token."""

    def __init__(self, auth: Auth, audit: AuditLog):
        self.auth, self.audit = auth, audit

    def intercept_service(self, continuation, details):
        if self.auth.token_name(details.invocation_metadata):
            return continuation(details)
        self.audit.write(method=details.method, who="?", outcome="refused: no valid bearer token")

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "this agent needs a bearer token (authorization: Bearer ...) it knows")
        handler = continuation(details)
        if handler is not None and handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                lambda req, ctx: iter(deny(req, ctx) or ()), handler.request_deserializer,
                handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(
            deny, handler.request_deserializer if handler else None,
            handler.response_serializer if handler else None)


class _Binaries:
    """GoBinary per executable file (device, inode, mtime): pclntab and build id,
    opened once. Non-Go files are remembered as None."""

    def __init__(self):
        self._by_file: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def of(self, pid: int):
        from probe_compiler.gobinary import GoBinary
        path = f"/proc/{pid}/exe"
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if key in self._by_file:
                return self._by_file[key]
        try:
            b = GoBinary.open(path)
        except Exception:       # not ELF, not Go, too old, unreadable: not a target
            b = None
        with self._lock:
            self._by_file[key] = b
            if len(self._by_file) > 512:
                self._by_file.pop(next(iter(self._by_file)))
        return b


class AgentService(pb_grpc.AgentServicer):
    def __init__(self, policy: Policy, audit: AuditLog, auth: Auth | None = None,
                 host: str | None = None, test_delay_s: float = 0.0):
        import socket
        self.policy, self.audit, self.auth = policy, audit, auth or Auth()
        self.host = host or socket.gethostname()
        self.limiter = RateLimiter(policy.min_interval_s)
        self.binaries = _Binaries()
        self._targets: dict[tuple[str, str], object] = {}
        self._targets_lock = threading.Lock()
        self.test_delay_s = test_delay_s
        self.chunk_bytes = min(CHUNK_BYTES, policy.max_message_bytes - (16 << 10))

    # ----------------------------------------------------------------- calls

    def Health(self, request, context):
        self.audit.write(method="Health", who=self.auth.who(context), outcome="ok")
        return pb.HealthReply(version=exray_version(), host=self.host, wall_ns=time.time_ns(),
                              protocol=PROTOCOL, max_message_bytes=self.policy.max_message_bytes)

    def _allowed_go(self):
        """(facts, GoBinary) of every allowed Go process, and how many the allow-list hid."""
        out, hidden, me = [], 0, os.getpid()
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == me:
                continue
            facts = proc_facts(int(d))
            if facts is None:
                continue
            if self.policy.refusal(facts):
                hidden += 1
                continue
            b = self.binaries.of(facts.pid)
            if b is not None:
                out.append((facts, b))
        return out, hidden

    def ListProcesses(self, request, context):
        procs, hidden = self._allowed_go()
        self.audit.write(method="ListProcesses", who=self.auth.who(context),
                         outcome=f"ok: {len(procs)} processes")
        return pb.ListProcessesReply(hidden=hidden, processes=[
            pb.ProcessInfo(pid=f.pid, exe=f.exe, build_id=b.build_id or "", go_version=b.go_version or "",
                           start_time_ns=f.start_time_ns, cgroup=f.cgroup, uid=f.uid)
            for f, b in sorted(procs, key=lambda p: p[0].pid)])

    def FetchDebugInfo(self, request, context):
        who = self.auth.who(context)
        build_id = request.build_id
        match = next((f for f, b in self._allowed_go()[0] if b.build_id == build_id), None) if build_id else None
        if match is None:
            self.audit.write(method="FetchDebugInfo", who=who, build_id=build_id, outcome="not found")
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"no process this agent may snapshot runs build id {build_id!r}")
        try:
            f = open(f"/proc/{match.pid}/exe", "rb")
        except OSError as e:
            self.audit.write(method="FetchDebugInfo", who=who, build_id=build_id, outcome=f"error: {e}")
            context.abort(grpc.StatusCode.NOT_FOUND, f"pid {match.pid} exited: {e}")
        with f:
            total = os.fstat(f.fileno()).st_size
            h, off = hashlib.sha256(), 0
            self.audit.write(method="FetchDebugInfo", who=who, build_id=build_id, exe=match.exe,
                             outcome=f"sending {total} bytes")
            while True:
                data = f.read(self.chunk_bytes)
                h.update(data)
                last = off + len(data) >= total or not data
                yield pb.DebugInfoChunk(offset=off, data=data, total_size=total if off == 0 else 0,
                                        sha256=h.hexdigest() if last else "", last=last)
                off += len(data)
                if last or not context.is_active():
                    return

    def RunPlan(self, request, context):
        run = _Run(self, request, context)
        run.validate()
        # The work runs on its own thread and only hands events over: a client
        # that leaves (or whose deadline passes) stops the stream, never the
        # agent's bookkeeping, its resumes or its audit line.
        events: queue.Queue = queue.Queue()
        worker = threading.Thread(target=run.work, args=(events.put,), daemon=True,
                                  name=f"runplan-{request.request_id[:8]}")
        worker.start()
        while True:
            ev = events.get()
            if ev is None:
                return
            yield ev


def _error_record(pid: int, host: str, error: str, facts: ProcFacts | None = None) -> ProcessRecord:
    return ProcessRecord(pid=pid, host=host, exe=facts.exe if facts else "", error=error,
                         captured_at_ns=time.time_ns())


class _Run:
    """One RunPlan request: validate, schedule, pause at the agreed instant, stream."""

    def __init__(self, svc: AgentService, request, context):
        self.svc, self.req, self.ctx = svc, request, context
        self.policy = svc.policy
        self.who = svc.auth.who(context)
        remaining = context.time_remaining()
        budget = self.policy.max_request_s if remaining is None else min(remaining, self.policy.max_request_s)
        self.deadline = time.monotonic() + budget
        self.outcomes: dict[int, str] = {}

    def _audit(self, outcome: str, **more) -> None:
        r = self.req
        self.svc.audit.write(method="RunPlan", who=self.who, request_id=r.request_id, spec=r.spec_name,
                             spec_sha256=r.spec_sha256, pids=list(r.pids), outcome=outcome, **more)

    def _refuse(self, code, message: str):
        self._audit(f"refused: {message}")
        self.ctx.abort(code, message)

    def _plans(self) -> dict:
        from probe_compiler.plan import ProbePlan
        plans = {}
        for build_id, text in self.req.plans.items():
            try:
                plans[build_id] = ProbePlan.from_json(text)
            except Exception as e:     # any malformed plan: the request is refused as a whole
                self._refuse(grpc.StatusCode.INVALID_ARGUMENT,
                             f"the plan for build id {build_id} is not a valid probe plan "
                             f"({type(e).__name__}: {str(e)[:200]})")
            if plans[build_id].build_id != build_id:
                self._refuse(grpc.StatusCode.INVALID_ARGUMENT,
                             f"the plan keyed {build_id} was compiled for build id {plans[build_id].build_id}")
            self._cap_budgets(plans[build_id])
        return plans

    def _cap_budgets(self, plan) -> None:
        """The decoder's bounds the plan carries (the spec's `limits:`, compiled
        in by the control plane), no higher than the request's limits and this
        agent's ceilings."""
        from dataclasses import fields, replace

        from probe_compiler import capture_limits as cl
        ceil, asked, cut = self.policy.limit_ceilings(), self.req.limits, {}
        for f in fields(plan.budgets):
            v = getattr(plan.budgets, f.name)
            low = min(v, getattr(ceil, f.name), int(asked[f.name]) if f.name in asked else v)
            if low < v:
                cut[f.name] = low
                if v > getattr(ceil, f.name) and v != getattr(cl.DEFAULTS, f.name) and f.name not in asked:
                    self.limit_notes.append(_lowered(f.name, v, getattr(ceil, f.name)))
        if cut:
            plan.budgets = replace(plan.budgets, **cut)

    def _executor(self) -> None:
        """The executor the request names (or the policy's first), checked against
        the names there are and the agent's policy."""
        from .policy import EXECUTORS
        r, policy = self.req, self.policy
        name = r.executor or policy.executors[0]
        if name not in EXECUTORS:
            self._refuse(grpc.StatusCode.INVALID_ARGUMENT,
                         f"unknown executor {name[:40]!r}: one of {', '.join(EXECUTORS)}")
        if name not in policy.executors:
            self._refuse(grpc.StatusCode.PERMISSION_DENIED,
                         f"executor {name}: this agent's policy runs only {', '.join(policy.executors)}")
        self.executor, self.executor_note = name, None
        if name == "auto" and "ebpf" not in policy.executors:
            self.executor = "ptrace"
            self.executor_note = "executor auto: used ptrace, because this agent's policy does not run ebpf"

    def _limits(self) -> None:
        """The request's capture limits over the defaults: an unknown name or a
        value out of range is refused; one above this agent's ceilings is
        lowered to it (and the records say so when the request asked for it)."""
        import math

        from probe_compiler import capture_limits as cl
        r = self.req
        asked = {}
        for name, v in r.limits.items():
            if name not in cl.key_names():
                self._refuse(grpc.StatusCode.INVALID_ARGUMENT,
                             f"unknown capture limit {name[:40]!r} (known: {', '.join(cl.key_names())})")
            if not math.isfinite(v) or (cl.is_integer_key(name) and not float(v).is_integer()):
                self._refuse(grpc.StatusCode.INVALID_ARGUMENT,
                             f"capture limit {name} must be a {'whole ' if cl.is_integer_key(name) else ''}"
                             f"number, not {v!r}")
            asked[name] = int(v) if cl.is_integer_key(name) else float(v)
        limits = cl.DEFAULTS.with_(**asked)
        bad = limits.over_ceiling()
        if bad:
            self._refuse(grpc.StatusCode.INVALID_ARGUMENT, "capture limits: " + "; ".join(bad))
        # The older fields win where set; with no deadline at all, the agent's own bound.
        if r.pause_deadline_s or "deadline_ms" not in asked:
            limits = limits.with_(deadline_ms=(r.pause_deadline_s or self.policy.max_pause_deadline_s) * 1e3)
        if r.capture_share:
            limits = limits.with_(capture_share=r.capture_share)
        ceil, capped = self.policy.limit_ceilings(), {}
        for name in cl.key_names():
            v, c = getattr(limits, name), getattr(ceil, name)
            if v > c:
                capped[name] = c
                if name in asked:
                    self.limit_notes.append(_lowered(name, v, c))
        self.limits = limits.with_(**capped)

    def _target(self, binary, plan, plan_bytes: bytes):
        from probe_compiler.runtime_layout import RuntimeLayout

        from .snapshot import Target
        # The budgets too: the same plan under other limits (or another request's) is another target.
        key = (binary.build_id, hashlib.sha256(plan_bytes).hexdigest(), plan.budgets)
        svc = self.svc
        with svc._targets_lock:
            t = svc._targets.pop(key, None)
            if t is None:
                layout = RuntimeLayout.from_json(plan.layout) if plan.layout else None
                t = Target(binary, plan, layout, None)
            svc._targets[key] = t
            while len(svc._targets) > 16:
                svc._targets.pop(next(iter(svc._targets)))
        return t

    def validate(self) -> None:
        r, policy = self.req, self.policy
        pids = list(dict.fromkeys(r.pids))
        if not pids:
            self._refuse(grpc.StatusCode.INVALID_ARGUMENT, "no pids")
        if len(pids) > policy.max_pids:
            self._refuse(grpc.StatusCode.INVALID_ARGUMENT,
                         f"{len(pids)} pids in one request; this agent takes at most {policy.max_pids}")
        if r.pause_deadline_s < 0 or r.capture_share < 0 or r.capture_share > 1:
            self._refuse(grpc.StatusCode.INVALID_ARGUMENT, "pause_deadline_s and capture_share must be in range")
        lead_s = (r.pause_at_ns - time.time_ns()) / 1e9 if r.pause_at_ns else 0.0
        if lead_s > policy.max_pause_lead_s:
            self._refuse(grpc.StatusCode.INVALID_ARGUMENT,
                         f"pause instant {lead_s:.1f} s ahead; this agent schedules at most "
                         f"{policy.max_pause_lead_s:g} s ahead (are the clocks far apart?)")
        self.limit_notes: list[str] = []
        self._executor()
        self._limits()
        self.plans = self._plans()
        self._audit("started", executor=r.executor or None, limits=dict(r.limits) or None)

    def work(self, emit) -> None:
        try:
            for ev in self._events():
                if self.ctx.is_active():
                    emit(ev)
        except BaseException as e:     # a bug: the client hears of it, the audit log too
            self.outcomes.setdefault(-1, f"agent error: {type(e).__name__}: {e}")
            import traceback
            traceback.print_exc()
        finally:
            errors = {p: o for p, o in self.outcomes.items() if o != "ok"}
            self._audit("cancelled" if not self.ctx.is_active() and errors else
                        ("ok" if not errors else f"{len(errors)} of {len(self.req.pids)} not captured"),
                        errors=errors or None)
            emit(None)

    def _events(self):
        r, policy, plans = self.req, self.policy, self.plans
        pids = list(dict.fromkeys(r.pids))
        host = self.svc.host
        total, done = len(pids), 0
        ready: dict[int, object] = {}
        for pid in pids:
            facts = proc_facts(pid)
            why = None
            if facts is None:
                why = f"pid {pid}: no such process on {host}"
            elif (refusal := policy.refusal(facts)):
                why = f"pid {pid}: refused by the agent's allow-list: {refusal}"
            else:
                b = self.svc.binaries.of(pid)
                if b is None:
                    why = f"pid {pid}: {facts.exe} is not a Go binary Ex-Ray reads"
                elif b.build_id not in plans:
                    why = f"pid {pid}: the request has no plan for its build id {b.build_id}"
                elif (limited := self.svc.limiter.acquire(pid, facts.start_time_ns)):
                    why = f"pid {pid}: {limited}"
                else:
                    ready[pid] = self._target(b, plans[b.build_id], r.plans[b.build_id])
            if why:
                done += 1
                self.outcomes[pid] = why
                yield from self._send(_error_record(pid, host, why, facts), done, total, "refused")
        if ready:
            yield from self._pause_all(ready, done, total)

    def _wait_until(self, pause_at_ns: int) -> str | None:
        """Sleep until the agreed instant (and the test delay); why not, if the
        client went away or the deadline comes first."""
        until = time.monotonic() + max(0.0, (pause_at_ns - time.time_ns()) / 1e9 if pause_at_ns else 0.0)
        if self.svc.test_delay_s and not getattr(self, "_delayed", False):
            self._delayed = True        # the test hook's delay, once per request
            until = max(until, time.monotonic() + self.svc.test_delay_s)
        while True:
            now = time.monotonic()
            if now >= self.deadline or not self.ctx.is_active():
                left = self.ctx.time_remaining()
                if now >= self.deadline or (left is not None and left <= 0.05):
                    return "the request's deadline passed before the pause instant; nothing was paused"
                return "the client cancelled the request before the pause"
            if now >= until:
                return None
            time.sleep(min(0.02, until - now, self.deadline - now))

    def _pause_all(self, ready: dict, done: int, total: int):
        from .snapshot import SnapshotOptions
        host, r = self.svc.host, self.req
        # Refuse now what can't make it; the rest waits for the instant inside
        # the pause's entry (_AtInstant), after its process has been prepared.
        why = self._wait_until(0)
        if why:
            for pid in ready:
                done += 1
                self.outcomes[pid] = why
                yield from self._send(_error_record(pid, host, f"pid {pid}: {why}"), done, total, "refused")
            return
        remaining = self.deadline - time.monotonic()
        limits = self.limits.with_(deadline_ms=min(self.limits.deadline_ms, max(remaining, 0.001) * 1e3))
        opts = SnapshotOptions(limits=limits, executor=self.executor)
        start_at = r.pause_at_ns or time.time_ns()
        items = list(ready.items())
        if self.policy.pause_together:
            # Every process stopped at the instant, then each read, then all
            # resumed (agent/snapshot.py snapshot_processes).
            recs = self._by_executor(items, opts, start_at)
        else:
            # --sequential-pauses: one after another from the agreed instant; each
            # pause is one process's, the later ones start late (skew_ns says by how much).
            recs = (rec for item in items for rec in self._by_executor([item], opts, start_at))
        for rec in recs:
            rec.host = host
            _wall_pause_start(rec)
            if self.executor_note:
                rec.warnings.append(self.executor_note)
            rec.warnings.extend(self.limit_notes)
            done += 1
            self.outcomes[rec.pid] = rec.error or "ok"
            yield from self._send(rec, done, total, "done")

    def _by_executor(self, items, opts, start_at: int) -> list[ProcessRecord]:
        """The processes snapshotted by the request's executor. ptrace pauses at
        the agreed instant after preparing each process (_AtInstant); the eBPF
        executor prepares its own pause (uprobes, a thread left running), so
        the processes it takes wait for the instant first and then start it.
        `auto`'s fallbacks (and `ebpf`'s refusals) are agent/ebpf/executor.py's,
        with their reasons in the records' warnings (or errors)."""
        from dataclasses import replace
        host = self.svc.host
        ptrace_opts = replace(opts, executor="ptrace")

        def ptrace(group):
            return _snapshot(group, ptrace_opts, host, self._at_instant(start_at, ptrace_opts)) if group else []
        if opts.executor == "ptrace":
            return ptrace(items)
        from .ebpf import executor as ebpf
        try:
            probe = [(pid, t) for pid, t in items if ebpf.choose(opts.executor, t) == ("ebpf", None)]
            rest = [it for it in items if it not in probe]
            recs = ebpf.snapshot_processes(rest, opts, ptrace) if rest else []
            if probe:
                why = self._wait_until(start_at)
                recs += ([_error_record(pid, host, f"pid {pid}: {why}") for pid, _ in probe] if why
                         else ebpf.snapshot_processes(probe, opts, ptrace))
        except Exception as e:      # a bug must not end the stream: the records say it
            return [_error_record(pid, host, f"pid {pid}: agent error: {type(e).__name__}: {e}")
                    for pid, _ in items]
        return recs

    def _at_instant(self, start_at_ns: int, opts):
        from . import snapshot      # its PausedProcess, looked up now (the test hook replaces it)
        return lambda pid: _AtInstant(snapshot.PausedProcess(pid, deadline_s=opts.deadline_s), start_at_ns,
                                      self._wait_until)

    def _send(self, rec: ProcessRecord, done: int, total: int, phase: str):
        yield pb.RunPlanEvent(progress=pb.Progress(done=done, total=total, pid=rec.pid, phase=phase))
        for data, last in chunks(record_to_json(rec), self.svc.chunk_bytes):
            yield pb.RunPlanEvent(record=pb.RecordChunk(pid=rec.pid, data=data, last=last))


def _lowered(name: str, asked, ceiling) -> str:
    from probe_compiler import capture_limits as cl
    return (f"capture limit {name} lowered from {cl.text(asked)} to {cl.text(ceiling)}: this agent's "
            "ceiling (its policy's max_capture_limits, or --max-pause for deadline_ms)")


def _snapshot(items, opts, host, pause_for) -> list[ProcessRecord]:
    from . import snapshot
    try:
        return snapshot.snapshot_processes(items, opts, pauses={pid: pause_for(pid) for pid, _ in items})
    except Exception as e:      # a bug must not end the stream: the records say it
        return [_error_record(pid, host, f"pid {pid}: agent error: {type(e).__name__}: {e}") for pid, _ in items]


class _AtInstant:
    """A process's pause that begins at the agreed instant: its first step
    (interrupt(), which agent/snapshot.py calls for every process back to
    back before waiting for their stops, or else __enter__) first waits for
    the instant (the deadline and a cancel still stop the wait), then pauses.
    The process runs until then: its pause and its deadline start at the
    instant, not when the request arrived."""

    def __init__(self, pause, start_at_ns: int, wait):
        self._pause, self._start_at, self._wait = pause, start_at_ns, wait
        self._waited = False

    def _wait_for_instant(self) -> None:
        from .errors import AgentError
        if not self._waited:
            self._waited = True
            why = self._wait(self._start_at)
            if why:
                raise AgentError(why)

    def interrupt(self) -> None:
        self._wait_for_instant()
        self._pause.interrupt()

    def __enter__(self):
        self._wait_for_instant()
        return self._pause.__enter__()

    def __exit__(self, *exc):
        return self._pause.__exit__(*exc)

    def __getattr__(self, name):      # pause_ns, paused_at_ns, ...
        return getattr(self._pause, name)


def _wall_pause_start(rec: ProcessRecord) -> None:
    """captured_at_ns becomes the wall-clock instant the pause began (the record
    has it in CLOCK_MONOTONIC, which another host can't compare with)."""
    if rec.pause_start_ns:
        rec.captured_at_ns = time.time_ns() - (time.monotonic_ns() - rec.pause_start_ns)


# ----------------------------------------------------------------- the server

class ListenError(Exception):
    """The agent refuses to listen as asked (no auth on TCP, bad socket path, ...)."""


def build_server(service: AgentService, listen: str, *, token_file: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None, client_ca: str | None = None,
                 max_workers: int = 8):
    """(grpc server, bound address). `listen` is unix:PATH or tcp:HOST:PORT (port 0: any)."""
    policy = service.policy
    options = [("grpc.max_receive_message_length", policy.max_message_bytes),
               ("grpc.max_send_message_length", policy.max_message_bytes),
               ("grpc.so_reuseport", 0)]
    interceptors = []
    if token_file:
        try:
            service.auth.tokens = Auth.read_token_file(token_file)
        except (OSError, ValueError) as e:
            raise ListenError(f"--token-file: {e}") from None
        interceptors.append(_TokenCheck(service.auth, service.audit))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="agent"),
                         options=options, interceptors=interceptors,
                         maximum_concurrent_rpcs=max_workers * 4)
    pb_grpc.add_AgentServicer_to_server(service, server)
    if listen.startswith("unix:"):
        path = listen[len("unix:"):]
        if not os.path.isabs(path):
            raise ListenError(f"{listen}: give an absolute socket path")
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)             # a stale socket of an earlier agent
        old = os.umask(0o177)           # the socket is born 0600: root only
        try:
            server.add_insecure_port(listen)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        return server, listen
    if not listen.startswith("tcp:"):
        raise ListenError(f"--listen {listen}: write unix:/PATH or tcp:HOST:PORT")
    hostport = listen[len("tcp:"):]
    mtls = bool(tls_cert or tls_key or client_ca)
    if mtls and not (tls_cert and tls_key):
        raise ListenError("TLS needs both --tls-cert and --tls-key")
    if not mtls and not token_file:
        raise ListenError(f"refusing to listen on {hostport} without authentication: give mutual TLS "
                          "(--tls-cert, --tls-key, --client-ca) or a bearer token (--token-file)")
    if mtls:
        try:
            key, cert = open(tls_key, "rb").read(), open(tls_cert, "rb").read()
            ca = open(client_ca, "rb").read() if client_ca else None
        except OSError as e:
            raise ListenError(f"TLS files: {e}") from None
        if ca is None and not token_file:
            raise ListenError("TLS without --client-ca authenticates the agent only: add --client-ca "
                              "(mutual TLS) or --token-file")
        creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                            require_client_auth=ca is not None)
        service.auth.mtls = ca is not None
        port = server.add_secure_port(hostport, creds)
    else:
        port = server.add_insecure_port(hostport)
    if not port:
        raise ListenError(f"cannot listen on {hostport}")
    return server, f"tcp:{hostport.rsplit(':', 1)[0]}:{port}"


def install_test_hold(hold_s: float) -> None:
    """Test hook (EXRAY_AGENT_TEST_HOLD_S): keep every process paused this long
    after it stops, so a test can kill the agent mid-pause."""
    from . import ptrace, snapshot

    class Holding(ptrace.PausedProcess):
        def __enter__(self):
            p = super().__enter__()
            print(f"agent: holding pid {self.pid} paused {hold_s} s (test hook)", flush=True)
            time.sleep(hold_s)
            return p
    snapshot.PausedProcess = Holding
