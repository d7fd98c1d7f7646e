"""A client of one `exray agent` (agent/proto/exray_agent.proto).

    c = AgentClient.connect("10.0.0.7:7701", Credentials(token_file="~/.exray/token"))
    c.health(timeout=5)           # HealthReply, and c.clock a ClockEstimate
    c.list_processes(timeout=10)  # [ProcessInfo]
    c.fetch(build_id, file)       # the binary, checked against its sha256
    for rec in c.run_plan(...):   # ProcessRecords as they arrive

Addresses: `unix:/run/exray/agent.sock`, `host:port` or `tcp:host:port`.
Every call takes a timeout; a failure raises AgentUnavailable with a message
that says which agent and what went wrong, never a bare grpc error.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

import grpc

from agent.proto import exray_agent_pb2 as pb
from agent.proto import exray_agent_pb2_grpc as pb_grpc
from agent.records import ProcessRecord
from agent.wire import record_from_json

from .errors import ServerError

MAX_MESSAGE_BYTES = 16 << 20


class AgentUnavailable(ServerError):
    """An agent could not be reached, refused, or failed a call."""


@dataclass
class Credentials:
    token_file: str | None = None      # bearer token (first token of the file)
    ca: str | None = None              # CA of the agents' certificates: TLS
    cert: str | None = None            # client certificate and key: mutual TLS
    key: str | None = None
    server_name: str | None = None     # expected name in the agent's certificate

    def token(self) -> str | None:
        if not self.token_file:
            return None
        with open(os.path.expanduser(self.token_file)) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    return line.split()[-1]
        raise AgentUnavailable(f"{self.token_file} holds no token")

    @staticmethod
    def from_env() -> "Credentials":
        e = os.environ.get
        return Credentials(e("EXRAY_AGENT_TOKEN_FILE"), e("EXRAY_AGENT_CA"), e("EXRAY_AGENT_CERT"),
                           e("EXRAY_AGENT_KEY"), e("EXRAY_AGENT_SERVER_NAME"))


@dataclass
class ClockEstimate:
    """The agent's clock minus ours, from one Health round trip (NTP's midpoint
    rule): true offset within ± uncertainty_ns."""
    offset_ns: int
    uncertainty_ns: int
    rtt_ns: int


def target_of(address: str) -> str:
    """A gRPC target for an agent address."""
    if address.startswith("unix:"):
        return address
    if address.startswith("tcp:"):
        address = address[len("tcp:"):]
    if ":" not in address:
        raise AgentUnavailable(f"agent address {address!r}: write host:port or unix:/path")
    return address


def _describe(address: str, e: grpc.RpcError) -> str:
    code = e.code() if hasattr(e, "code") else None
    details = (e.details() if hasattr(e, "details") else str(e)) or ""
    name = {grpc.StatusCode.UNAVAILABLE: "unreachable",
            grpc.StatusCode.DEADLINE_EXCEEDED: "no answer within the deadline",
            grpc.StatusCode.UNAUTHENTICATED: "refused our credentials",
            grpc.StatusCode.PERMISSION_DENIED: "refused the request",
            grpc.StatusCode.INVALID_ARGUMENT: "refused the request as invalid",
            grpc.StatusCode.RESOURCE_EXHAUSTED: "refused a message over its size cap",
            grpc.StatusCode.CANCELLED: "call cancelled"}.get(code, code.name.lower() if code else "failed")
    return f"agent {address}: {name}" + (f" ({details})" if details else "")


class AgentClient:
    def __init__(self, address: str, channel: grpc.Channel, metadata: tuple):
        self.address, self.channel, self.metadata = address, channel, metadata
        self.stub = pb_grpc.AgentStub(channel)
        self.clock: ClockEstimate | None = None
        self.health_reply = None

    @staticmethod
    def connect(address: str, creds: Credentials | None = None) -> "AgentClient":
        creds = creds or Credentials()
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.enable_retries", 0),
                   # Fail fast on a dead link rather than after minutes of TCP retries.
                   ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)]
        target = target_of(address)
        if creds.ca or creds.cert:
            def read(p):
                with open(os.path.expanduser(p), "rb") as f:
                    return f.read()
            try:
                ssl = grpc.ssl_channel_credentials(
                    root_certificates=read(creds.ca) if creds.ca else None,
                    private_key=read(creds.key) if creds.key else None,
                    certificate_chain=read(creds.cert) if creds.cert else None)
            except OSError as e:
                raise AgentUnavailable(f"agent {address}: TLS files: {e}") from None
            if creds.server_name:
                options.append(("grpc.ssl_target_name_override", creds.server_name))
            channel = grpc.secure_channel(target, ssl, options=options)
        else:
            channel = grpc.insecure_channel(target, options=options)
        token = creds.token()
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return AgentClient(address, channel, metadata)

    def close(self) -> None:
        self.channel.close()

    def health(self, timeout: float, samples: int = 4):
        """Health, `samples` times: the clock estimate is the round trip with the
        least delay (the first pays for the connection and is seldom it)."""
        deadline = time.monotonic() + timeout
        best = None
        for _ in range(max(1, samples)):
            t0 = time.time_ns()
            try:
                reply = self.stub.Health(pb.HealthRequest(), metadata=self.metadata,
                                         timeout=max(0.001, deadline - time.monotonic()))
            except grpc.RpcError as e:
                raise AgentUnavailable(_describe(self.address, e)) from None
            t1 = time.time_ns()
            rtt = t1 - t0
            if best is None or rtt < best.rtt_ns:
                best = ClockEstimate(reply.wall_ns - (t0 + t1) // 2, rtt // 2, rtt)
            self.health_reply = reply
        self.clock = best
        return reply

    def list_processes(self, timeout: float) -> list:
        try:
            return list(self.stub.ListProcesses(pb.ListProcessesRequest(), timeout=timeout,
                                                metadata=self.metadata).processes)
        except grpc.RpcError as e:
            raise AgentUnavailable(_describe(self.address, e)) from None

    def fetch(self, build_id: str, out, timeout: float) -> str:
        """Write the binary of `build_id` to the file object `out`; its sha256."""
        h = hashlib.sha256()
        try:
            for chunk in self.stub.FetchDebugInfo(pb.FetchDebugInfoRequest(build_id=build_id),
                                                  timeout=timeout, metadata=self.metadata):
                h.update(chunk.data)
                out.write(chunk.data)
                if chunk.last:
                    if chunk.sha256 != h.hexdigest():
                        raise AgentUnavailable(f"agent {self.address}: debug info of {build_id} arrived "
                                               "corrupt (sha256 differs)")
                    return chunk.sha256
        except grpc.RpcError as e:
            raise AgentUnavailable(_describe(self.address, e)) from None
        raise AgentUnavailable(f"agent {self.address}: debug info of {build_id} ended early")

    def run_plan(self, request: "pb.RunPlanRequest", timeout: float, on_progress=None):
        """Yield each process's ProcessRecord as it arrives. The returned
        iterator's `cancel()` (see RunPlanCall) stops the agent's work."""
        call = self.stub.RunPlan(request, timeout=timeout, metadata=self.metadata)
        return RunPlanCall(self.address, call, on_progress)


class RunPlanCall:
    def __init__(self, address, call, on_progress):
        self.address, self.call, self.on_progress = address, call, on_progress

    def cancel(self) -> None:
        self.call.cancel()

    def __iter__(self):
        parts: dict[int, list[bytes]] = {}
        try:
            for ev in self.call:
                kind = ev.WhichOneof("event")
                if kind == "progress" and self.on_progress:
                    p = ev.progress
                    self.on_progress(p.done, p.total, p.pid, p.phase)
                elif kind == "record":
                    r = ev.record
                    parts.setdefault(r.pid, []).append(r.data)
                    if r.last:
                        yield record_from_json(b"".join(parts.pop(r.pid)))
        except grpc.RpcError as e:
            raise AgentUnavailable(_describe(self.address, e)) from None


def plan_request(pids, plans: dict[str, str], *, request_id: str, spec_name: str = "",
                 spec_text: str | None = None, pause_at_ns: int = 0, pause_deadline_s: float = 0.0,
                 capture_share: float = 0.0, executor: str = "",
                 limits: dict[str, float] | None = None) -> "pb.RunPlanRequest":
    """`executor`: "ptrace", "ebpf", "auto" ("": the agent's default); `limits`:
    CaptureLimits field -> value (server.fleet.limits_request)."""
    return pb.RunPlanRequest(
        request_id=request_id, spec_name=spec_name,
        spec_sha256=hashlib.sha256(spec_text.encode()).hexdigest() if spec_text else "",
        pids=list(pids), plans={b: p.encode() if isinstance(p, str) else p for b, p in plans.items()},
        pause_at_ns=pause_at_ns, pause_deadline_s=pause_deadline_s, capture_share=capture_share,
        executor=executor, limits=dict(limits or {}))


def error_record(pid: int, host: str, exe: str, error: str, **kw) -> ProcessRecord:
    return ProcessRecord(pid=pid, host=host, exe=exe, error=error, captured_at_ns=time.time_ns(), **kw)
