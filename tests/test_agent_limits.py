"""The spec's `limits:` (probe_compiler/capture_limits.py) and the executor
choice reach the processes an `exray agent` snapshots, as they reach a local
snapshot: the same Go program snapshotted locally and through a real agent
on a unix socket (real gRPC) gives the same rows, cut at the same bounds;
the agent's own policy caps both."""
from __future__ import annotations

import grpc
import pytest

from agent.policy import AuditLog, Policy, PolicyError
from agent.service import AgentService, build_server
from probe_compiler.spec import parse_spec
from server.agent_client import AgentClient, AgentUnavailable, Credentials, plan_request
from server.debug_cache import DebugInfoCache
from server.fleet import AgentTarget, FleetOptions, fleet_snapshot
from server.snapshot_job import load_target, snapshot_pids
from targets import run_target

from agent_helpers import tracer_pid

# Bounds far below the defaults, each visible in the rows: frames per
# goroutine, pprof labels per goroutine and their bytes, a captured string.
LIMITED = """\
version: 1
limits:
  max_frames: 4
  max_labels: 1
  label_bytes: 3
  string_bytes: 2
functions:
  main.parkLabeled:
    table: labeled
    capture: [sku]
"""


@pytest.fixture(scope="module")
def parkers(go_build):
    with run_target(go_build("parkers"), dump=False) as t:
        yield t


def serve(tmp_path, policy=None, name="agent"):
    policy = policy or Policy(allow_exe=["*"], min_interval_s=0)
    svc = AgentService(policy, AuditLog(str(tmp_path / f"{name}-audit.jsonl")), host="testhost")
    server, addr = build_server(svc, f"unix:{tmp_path}/{name}.sock")
    server.start()
    return server, addr


def through_agent(tmp_path, addr, pid, spec, **opts):
    o = FleetOptions(cache=DebugInfoCache(str(tmp_path / "cache")), credentials=Credentials(), **opts)
    [rec] = fleet_snapshot([AgentTarget(addr, pids=[pid])], spec, o).records
    return rec


def local_and_agent(tmp_path, pid, spec):
    """(a local ptrace snapshot, the same through a fresh agent) of pid."""
    [local] = snapshot_pids([pid], spec)
    server, addr = serve(tmp_path)
    try:
        return local, through_agent(tmp_path, addr, pid, spec, executor="ptrace")
    finally:
        server.stop(0).wait(10)


def shape(rec):
    """What the limits decide, per parked goroutine: frames (cut or not), its
    unwind error, its labels; and the captured values."""
    gs = {g.goid: (tuple(f.function for f in g.frames), g.error, g.labels)
          for g in rec.goroutines if g.status == "waiting"}
    caps = sorted(str(c.values) for g in rec.goroutines for c in g.captures)
    return gs, caps


def test_spec_limits_apply_through_an_agent(tmp_path, parkers):
    local, remote = local_and_agent(tmp_path, parkers.pid, parse_spec(LIMITED))
    assert local.error is None and remote.error is None, (local.error, remote.error)
    # The bounds did bite locally ...
    gs, caps = shape(local)
    assert any(err == "stack deeper than 4 frames: cut" for _, err, _ in gs.values()), gs
    labeled = [labels for _, _, labels in gs.values() if labels]
    assert len(labeled) == 4 and all(len(l) == 1 and all(len(k) <= 3 and len(v) <= 3 for k, v in l.items())
                                     for l in labeled), labeled
    assert caps and all("wi" in c and "widget" not in c for c in caps), caps
    # ... and through the agent they bite the same.
    assert shape(remote) == shape(local)
    assert tracer_pid(parkers.pid) == 0


STACKS_LIMITED = """\
version: 1
limits:
  max_frames: 4
  max_labels: 1
  label_bytes: 3
"""


@pytest.mark.parametrize("executor", ["ebpf", "auto"])
def test_executor_and_limits_through_an_agent_match_local(tmp_path, parkers, executor, monkeypatch):
    """Stacks only: the eBPF executor on the agent, at the agreed instant,
    cut at the spec's bounds as the local eBPF snapshot is."""
    from ebpf_helpers import require_ebpf
    from agent.snapshot import SnapshotOptions
    from agent.ebpf import executor as ebpf
    require_ebpf()
    spec = parse_spec(STACKS_LIMITED)
    [local] = snapshot_pids([parkers.pid], spec, SnapshotOptions(executor=executor, limits=spec.capture_limits))
    walked, together = [], ebpf.snapshot_together
    monkeypatch.setattr(ebpf, "snapshot_together",          # a spy: which pids the probe walked
                        lambda targets, *a, **k: walked.extend(p for p, _ in targets) or together(targets, *a, **k))
    server, addr = serve(tmp_path)
    try:
        remote = through_agent(tmp_path, addr, parkers.pid, spec, executor=executor)
    finally:
        server.stop(0).wait(10)
    assert walked == [parkers.pid]
    assert local.error is None and remote.error is None, (local.error, remote.error)
    assert not [w for w in local.warnings + remote.warnings if "executor" in w]   # eBPF, no fallback
    gs, _ = shape(local)
    assert any(err == "stack deeper than 4 frames: cut" for _, err, _ in gs.values()), gs
    assert shape(remote) == shape(local)
    assert abs(remote.skew_ns) < 0.5e9          # it waited for the agreed instant, and kept it
    assert tracer_pid(parkers.pid) == 0


@pytest.mark.parametrize("executor", ["auto", "ebpf"])
def test_values_spec_executor_through_an_agent_as_locally(tmp_path, parkers, executor):
    """A spec that captures values: what the executor does with it on the
    agent (auto: eBPF, or ptrace and why; ebpf: the probe, or an error that
    says why) is what it does locally, and the records say the same."""
    import re

    from agent.snapshot import SnapshotOptions
    spec = parse_spec(LIMITED)
    [local] = snapshot_pids([parkers.pid], spec, SnapshotOptions(executor=executor, limits=spec.capture_limits))
    server, addr = serve(tmp_path)
    try:
        remote = through_agent(tmp_path, addr, parkers.pid, spec, executor=executor)
    finally:
        server.stop(0).wait(10)

    def said(rec):      # the executor's words, without pids and times
        texts = [w for w in rec.warnings if w.startswith("executor")] + [rec.error or ""]
        return [re.sub(r"\d+(\.\d+)?", "N", t).split(" (")[0] for t in texts]
    assert said(remote) == said(local)
    if local.error is None:
        assert shape(remote) == shape(local)
    assert tracer_pid(parkers.pid) == 0


def _plan_request(pid, spec=None, **kw):
    t = load_target(f"/proc/{pid}/exe", spec, {})
    return plan_request([pid], {t.plan.build_id: t.plan.to_json()}, request_id="x", **kw)


def test_bad_executor_or_limits_are_refused_at_the_boundary(tmp_path, parkers):
    server, addr = serve(tmp_path)
    try:
        c = AgentClient.connect(addr)
        for kw, want in (({"executor": "kernel"}, r"invalid \(unknown executor 'kernel': one of ptrace, ebpf, auto"),
                         ({"limits": {"max_framez": 3}}, r"invalid \(unknown capture limit 'max_framez'"),
                         ({"limits": {"max_frames": 0}}, r"max_frames must be more than 0"),
                         ({"limits": {"max_frames": 2.5}}, r"max_frames must be a whole number"),
                         ({"limits": {"depth": 10_000}}, r"depth is 10,000, above its ceiling 64"),
                         ({"limits": {"deadline_ms": float("nan")}}, r"deadline_ms must be a number")):
            with pytest.raises(AgentUnavailable, match=want):
                list(c.run_plan(_plan_request(parkers.pid, **kw), timeout=30))
        c.close()
    finally:
        server.stop(0).wait(10)
    # The control plane says it before asking any agent.
    from server.errors import ServerError
    with pytest.raises(ServerError, match="unknown executor 'kernel': one of ptrace, ebpf, auto"):
        fleet_snapshot([AgentTarget(addr)], None, FleetOptions(executor="kernel"))
    assert tracer_pid(parkers.pid) == 0


def test_agent_policy_restricts_executors_and_caps_limits(tmp_path, parkers):
    policy = Policy(allow_exe=["*"], min_interval_s=0, executors=["ptrace", "auto"], max_pause_deadline_s=1.0,
                    max_capture_limits={"max_frames": 4, "string_bytes": 1})
    server, addr = serve(tmp_path, policy)
    try:
        c = AgentClient.connect(addr)
        with pytest.raises(AgentUnavailable, match=r"refused the request \(executor ebpf: this agent's policy "
                                                   r"runs only ptrace, auto"):
            list(c.run_plan(_plan_request(parkers.pid, executor="ebpf"), timeout=30))
        c.close()
        # auto without ebpf: ptrace, and why; the spec's bounds above the agent's ceilings are lowered, and said.
        spec = parse_spec(LIMITED.replace("max_frames: 4", "max_frames: 50").replace("string_bytes: 2",
                                                                                     "string_bytes: 3")
                          + "")
        spec.capture_limits = spec.capture_limits.with_(deadline_ms=5000)
        rec = through_agent(tmp_path, addr, parkers.pid, spec, executor="auto")
        # No executor named: the policy's first (ptrace), no note.
        plain = through_agent(tmp_path, addr, parkers.pid, None)
    finally:
        server.stop(0).wait(10)
    assert rec.error is None, rec.error
    assert "executor auto: used ptrace, because this agent's policy does not run ebpf" in rec.warnings
    lowered = sorted(w.split(" lowered")[0] for w in rec.warnings if " lowered from " in w)
    assert lowered == ["capture limit deadline_ms", "capture limit max_frames", "capture limit string_bytes"], \
        rec.warnings
    gs, caps = shape(rec)
    assert any(err == "stack deeper than 4 frames: cut" for _, err, _ in gs.values())
    assert caps and all("'value': 'w'" in c for c in caps), caps
    assert plain.error is None and plain.warnings == []
    assert any(err == "stack deeper than 4 frames: cut" for _, err, _ in shape(plain)[0].values())
    with pytest.raises(PolicyError, match="list \"ptrace\" too"):
        Policy(allow_exe=["*"], executors=["auto"]).check()
    with pytest.raises(PolicyError, match="not 'bpf'"):
        Policy(allow_exe=["*"], executors=["bpf"]).check()
    with pytest.raises(PolicyError, match="unknown limit 'frames'"):
        Policy(allow_exe=["*"], max_capture_limits={"frames": 3}).check()


def test_policy_names_the_executors_there_are():
    from agent.ebpf.executor import EXECUTORS
    from agent.policy import EXECUTORS as ours
    assert ours == EXECUTORS


def test_pause_deadline_of_the_spec_holds_through_an_agent(tmp_path, parkers):
    """The agent stops its processes at the agreed instant, not when the
    request arrives: the pause (and its deadline) start then, so a spec's
    small deadline_ms is met through an agent as it is locally."""
    spec = parse_spec("version: 1\nlimits:\n  deadline_ms: 150\nfunctions:\n  main.parkLabeled:\n"
                      "    table: labeled\n    capture: [sku]\n")
    local, remote = local_and_agent(tmp_path, parkers.pid, spec)
    for rec in (local, remote):
        assert rec.error is None and rec.pause_ns < 150e6, (rec.error, rec.pause_ns)
        assert all(not c.errors for g in rec.goroutines for c in g.captures)
    assert abs(remote.skew_ns) < 0.15e9        # and it began at the instant
    assert tracer_pid(parkers.pid) == 0


def test_cli_through_an_agent_takes_executor_and_limit_flags(tmp_path, parkers, capsys):
    """`exray snapshot --agent … --executor auto --max-frames 4`: the flags
    reach the agent (one whose policy lets auto use only ptrace); auto's
    fallback is printed and stored."""
    import json
    import sqlite3

    from server.cli import main
    (tmp_path / "exray.yaml").write_text(LIMITED.replace("max_frames: 4", "max_frames: 100"))
    server, addr = serve(tmp_path, Policy(allow_exe=["*"], min_interval_s=0, executors=["ptrace", "auto"]))
    out = tmp_path / "s.sqlite"
    try:
        rc = main(["snapshot", "--agent", addr, "--pid", str(parkers.pid), "--spec", str(tmp_path / "exray.yaml"),
                   "--executor", "auto", "--max-frames", "4", "-o", str(out)])
    finally:
        server.stop(0).wait(10)
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "warning: executor auto: used ptrace, because this agent's policy does not run ebpf" in err
    with sqlite3.connect(out) as db:
        [(warnings,)] = db.execute("SELECT warnings FROM processes").fetchall()
        cut = db.execute("SELECT count(*) FROM goroutines WHERE error = 'stack deeper than 4 frames: cut'")
        assert cut.fetchone()[0] > 0
    assert any(w.startswith("executor auto: used ptrace") for w in json.loads(warnings))


def test_agent_command_line_restricts_executors():
    import argparse

    from agent.main import add_arguments, policy_from_args
    p = argparse.ArgumentParser()
    add_arguments(p)
    policy = policy_from_args(p.parse_args(["--allow-exe", "*", "--allow-executor", "auto",
                                            "--allow-executor", "ptrace"]))
    assert policy.executors == ["auto", "ptrace"]            # auto serves requests that name none
    assert policy_from_args(p.parse_args(["--allow-exe", "*"])).executors == ["ptrace", "ebpf", "auto"]
    with pytest.raises(PolicyError, match="list \"ptrace\" too"):
        policy_from_args(p.parse_args(["--allow-exe", "*", "--allow-executor", "auto"]))


def test_one_agent_two_requests_two_budgets(tmp_path, parkers):
    """The same plan asked for with other limits is read with those: the
    agent's cache of targets doesn't carry one request's budgets to the next."""
    t = load_target(f"/proc/{parkers.pid}/exe", parse_spec(LIMITED.replace("string_bytes: 2", "string_bytes: 5")),
                    {})
    server, addr = serve(tmp_path)
    try:
        c = AgentClient.connect(addr)
        got = []
        for limits in ({"string_bytes": 1}, {}, {"string_bytes": 3}):
            req = plan_request([parkers.pid], {t.plan.build_id: t.plan.to_json()}, request_id="x", limits=limits)
            [rec] = list(c.run_plan(req, timeout=60))
            got.append({c.values["sku"]["value"] for g in rec.goroutines for c in g.captures})
        c.close()
    finally:
        server.stop(0).wait(10)
    assert got == [{"w"}, {"widge"}, {"wid"}]
