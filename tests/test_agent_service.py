"""The agent's gRPC service in this process, on a unix socket or TCP: what
it lists, streams and snapshots, and everything it refuses (allow-list,
rate limit, malformed and oversized requests, missing or wrong credentials),
each with the audit line it writes and the target left running untraced."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from agent.policy import AuditLog, Policy
from agent.proto import exray_agent_pb2 as pb
from agent.service import AgentService, ListenError, build_server
from server.agent_client import AgentClient, AgentUnavailable, Credentials, plan_request
from server.snapshot_job import load_target
from targets import run_target

from agent_helpers import make_certs, tracer_pid, write_token


@pytest.fixture(scope="module")
def target(go_build):
    with run_target(go_build("linkpair"), "-self", "3", dump=False) as t:
        yield t


def serve(tmp_path, policy=None, listen=None, **kw):
    policy = policy or Policy(allow_exe=["*"], min_interval_s=0)
    audit_path = tmp_path / "audit.jsonl"
    svc = AgentService(policy, AuditLog(str(audit_path)), host="testhost")
    server, addr = build_server(svc, listen or f"unix:{tmp_path}/agent.sock", **kw)
    server.start()
    return server, addr, audit_path


def audit_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lists_fetches_and_snapshots(tmp_path, target):
    server, addr, audit = serve(tmp_path)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "agent.sock").st_mode) == 0o600
        c = AgentClient.connect(addr)
        h = c.health(timeout=10)
        assert h.host == "testhost" and h.protocol == 1
        assert abs(c.clock.offset_ns) <= c.clock.uncertainty_ns + 5_000_000   # one clock, one machine
        procs = {p.pid: p for p in c.list_processes(timeout=30)}
        p = procs[target.pid]
        assert p.exe.endswith("/linkpair") and p.build_id and p.go_version.startswith("go")
        assert abs(p.start_time_ns - time.time_ns()) < 3600e9 and p.uid == 0
        out = tmp_path / "bin"
        with open(out, "wb") as f:
            c.fetch(p.build_id, f, timeout=60)
        assert out.read_bytes() == Path(f"/proc/{target.pid}/exe").read_bytes()

        t = load_target(str(out), None, {})
        req = plan_request([target.pid], {p.build_id: t.plan.to_json()}, request_id="r1",
                           spec_name="exray.yaml", spec_text="x", pause_at_ns=time.time_ns() + 200_000_000)
        phases = []
        [rec] = list(c.run_plan(req, timeout=60, on_progress=lambda *a: phases.append(a)))
        assert rec.error is None and rec.host == "testhost" and rec.pid == target.pid
        assert rec.captured_at_ns >= req.pause_at_ns - 5_000_000
        assert any(any(f.function == "main.handle" for f in g.frames) for g in rec.goroutines)
        assert phases[-1][:2] == (1, 1)
        assert tracer_pid(target.pid) == 0
        lines = audit_lines(audit)
        run = [e for e in lines if e["method"] == "RunPlan"]
        assert [e["outcome"] for e in run] == ["started", "ok"]
        assert run[-1]["pids"] == [target.pid] and run[-1]["spec"] == "exray.yaml" and run[-1]["request_id"] == "r1"
        assert stat.S_IMODE(os.stat(audit).st_mode) == 0o600
        c.close()
    finally:
        server.stop(0).wait(10)   # the socket is gone before the next server binds it


def test_allow_list_and_rate_limit(tmp_path, target):
    policy = Policy(allow_exe=["/nowhere/*"], min_interval_s=0)
    server, addr, audit = serve(tmp_path, policy)
    try:
        c = AgentClient.connect(addr)
        assert target.pid not in {p.pid for p in c.list_processes(timeout=30)}
        bid = load_target(f"/proc/{target.pid}/exe", None, {}).plan.build_id
        with pytest.raises(AgentUnavailable, match="NOT_FOUND|not_found|no process this agent may"):
            c.fetch(bid, open(os.devnull, "wb"), timeout=30)
        [rec] = list(c.run_plan(plan_request([target.pid], {}, request_id="r2"), timeout=30))
        assert "refused by the agent's allow-list" in rec.error and "matches no --allow-exe" in rec.error
    finally:
        server.stop(0).wait(10)   # the socket is gone before the next server binds it
    server, addr, audit = serve(tmp_path, Policy(allow_exe=["*"], min_interval_s=3600))
    try:
        c = AgentClient.connect(addr)
        t = load_target(f"/proc/{target.pid}/exe", None, {})
        req = plan_request([target.pid], {t.plan.build_id: t.plan.to_json()}, request_id="r3")
        [first] = list(c.run_plan(req, timeout=60))
        [second] = list(c.run_plan(req, timeout=60))
        assert first.error is None
        assert "rate limited" in second.error and "at most once per 3600 s" in second.error
    finally:
        server.stop(0).wait(10)   # the socket is gone before the next server binds it


def test_malformed_and_oversized_requests(tmp_path, target):
    server, addr, audit = serve(tmp_path, Policy(allow_exe=["*"], min_interval_s=0, max_message_bytes=1 << 20))
    try:
        c = AgentClient.connect(addr)
        bid = load_target(f"/proc/{target.pid}/exe", None, {}).plan.build_id
        with pytest.raises(AgentUnavailable, match="invalid.*not a valid probe plan"):
            list(c.run_plan(plan_request([target.pid], {bid: "{not json"}, request_id="bad"), timeout=30))
        with pytest.raises(AgentUnavailable, match="over its size cap"):
            list(c.run_plan(plan_request([target.pid], {bid: "x" * (2 << 20)}, request_id="big"), timeout=30))
        # Bytes that are no RunPlanRequest at all.
        raw = c.channel.unary_stream("/exray.agent.v1.Agent/RunPlan", request_serializer=None,
                                     response_deserializer=None)
        with pytest.raises(grpc.RpcError) as e:
            list(raw(b"\xff\xff\xff\xff garbage", timeout=30))
        assert e.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
        with pytest.raises(AgentUnavailable, match="pause instant .* ahead"):
            list(c.run_plan(plan_request([target.pid], {}, request_id="far",
                                         pause_at_ns=time.time_ns() + 3600 * 10**9), timeout=30))
        assert tracer_pid(target.pid) == 0
        outcomes = [e["outcome"] for e in audit_lines(audit) if e["method"] == "RunPlan"]
        assert any(o.startswith("refused: the plan for build id") for o in outcomes)
    finally:
        server.stop(0).wait(10)   # the socket is gone before the next server binds it


def test_deadline_enforced_on_the_agent(tmp_path, target):
    policy = Policy(allow_exe=["*"], min_interval_s=0, max_request_s=0.5)
    server, addr, audit = serve(tmp_path, policy)
    try:
        c = AgentClient.connect(addr)
        t = load_target(f"/proc/{target.pid}/exe", None, {})
        # The client allows 60 s, the agent 0.5 s: an instant 2 s ahead is never reached.
        req = plan_request([target.pid], {t.plan.build_id: t.plan.to_json()}, request_id="late",
                           pause_at_ns=time.time_ns() + 2 * 10**9)
        [rec] = list(c.run_plan(req, timeout=60))
        assert "deadline passed before the pause instant; nothing was paused" in rec.error
        assert tracer_pid(target.pid) == 0
    finally:
        server.stop(0).wait(10)   # the socket is gone before the next server binds it


def test_tcp_needs_credentials(tmp_path, target):
    with pytest.raises(ListenError, match="without authentication"):
        serve(tmp_path, listen="tcp:127.0.0.1:0")
    token = write_token(tmp_path / "token", "ops-laptop")
    server, addr, audit = serve(tmp_path, listen="tcp:127.0.0.1:0", token_file=str(token))
    try:
        assert AgentClient.connect(addr, Credentials(token_file=str(token))).health(10).host == "testhost"
        wrong = write_token(tmp_path / "wrong", "someone")
        with pytest.raises(AgentUnavailable, match="refused our credentials"):
            AgentClient.connect(addr, Credentials(token_file=str(wrong))).list_processes(10)
        with pytest.raises(AgentUnavailable, match="refused our credentials"):
            AgentClient.connect(addr).health(10)
        lines = audit_lines(audit)
        assert any(e["who"] == "ops-laptop" for e in lines)
        assert sum(e["outcome"] == "refused: no valid bearer token" for e in lines) == 2
    finally:
        server.stop(0).wait(10)   # the socket is gone before the next server binds it
    os.chmod(token, 0o644)
    with pytest.raises(ListenError, match="readable by others"):
        serve(tmp_path, listen="tcp:127.0.0.1:0", token_file=str(token))


def test_mutual_tls(tmp_path, target):
    certs = make_certs(tmp_path)
    server, addr, audit = serve(tmp_path, listen="tcp:127.0.0.1:0", tls_cert=certs["server.crt"],
                                tls_key=certs["server.key"], client_ca=certs["ca.crt"])
    try:
        good = Credentials(ca=certs["ca.crt"], cert=certs["client.crt"], key=certs["client.key"],
                           server_name="exray-agent")
        assert AgentClient.connect(addr, good).health(10).host == "testhost"
        assert any(e.get("who") == "cert:control-plane" for e in audit_lines(audit))
        rogue = Credentials(ca=certs["ca.crt"], cert=certs["rogue.crt"], key=certs["rogue.key"],
                            server_name="exray-agent")
        with pytest.raises(AgentUnavailable, match="unreachable|refused"):
            AgentClient.connect(addr, rogue).health(10)
        with pytest.raises(AgentUnavailable, match="unreachable|refused"):
            AgentClient.connect(addr, Credentials(ca=certs["ca.crt"], server_name="exray-agent")).health(10)
    finally:
        server.stop(0).wait(10)   # the socket is gone before the next server binds it


def test_cancelled_before_the_pause(tmp_path, target):
    server, addr, audit = serve(tmp_path)
    try:
        c = AgentClient.connect(addr)
        t = load_target(f"/proc/{target.pid}/exe", None, {})
        req = plan_request([target.pid], {t.plan.build_id: t.plan.to_json()}, request_id="cx",
                           pause_at_ns=time.time_ns() + 5 * 10**9)
        progress = []
        call = c.run_plan(req, timeout=60, on_progress=lambda *a: progress.append(a))
        it = iter(call)
        time.sleep(0.5)
        call.cancel()
        with pytest.raises(AgentUnavailable, match="cancelled"):
            next(it)
        deadline = time.monotonic() + 30
        while not [e for e in audit_lines(audit) if e.get("request_id") == "cx" and e["outcome"] != "started"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        [end] = [e for e in audit_lines(audit) if e.get("request_id") == "cx" and e["outcome"] != "started"]
        assert end["outcome"] == "cancelled"
        assert list(end["errors"]) == [str(target.pid)]
        assert end["errors"][str(target.pid)].startswith("the client cancelled the request before the pause")
        assert tracer_pid(target.pid) == 0
    finally:
        server.stop(0).wait(10)   # the socket is gone before the next server binds it


def test_agent_command_refuses_unsafe_setups(tmp_path):
    import sys
    exray = str(Path(sys.prefix) / "bin" / "exray")
    r = subprocess.run([exray, "agent", "--listen", "tcp:127.0.0.1:0", "--allow-exe", "*",
                        "--audit-log", str(tmp_path / "a.jsonl")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "refusing to listen on 127.0.0.1:0 without authentication" in r.stderr
    r = subprocess.run([exray, "agent", "--listen", f"unix:{tmp_path}/s.sock"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "no allow-list" in r.stderr
