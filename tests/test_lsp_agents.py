"""The editor's snapshots through `exray agent`s: the setting `exray.agents`
(and its credentials), or a spec whose targets name agents, send the
language server's `exray.snapshot` through FleetAgent; otherwise LocalAgent.

The agent runs in this process on 127.0.0.1 with a bearer token; the
language server is its own process, as an editor starts it."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from agent.policy import AuditLog, Policy
from agent.service import AgentService, build_server
from probe_compiler.spec import parse_spec
from server.lsp.agent import LocalAgent
from server.lsp.fleet_agent import FleetAgent, editor_targets, select_agent, unplaced_targets
from server.lsp.workspace import Settings, validate_settings
from targets import run_target

from agent_helpers import tracer_pid, write_token
from lsp_helpers import command, make_workspace, session, wait_until

FUNCTIONS = """\
functions:
  main.handle:
    table: handles
    capture: [req]
"""


# ------------------------------------------------------------------ settings

def test_agents_setting_is_validated():
    s, problems = validate_settings({"agents": ["10.0.0.7:7701", "unix:/run/exray/agent.sock", "10.0.0.7:7701"],
                                     "agentTokenFile": "~/.exray/token", "agentDeadline": 12})
    assert problems == [] and s.agents == ("10.0.0.7:7701", "unix:/run/exray/agent.sock")
    assert s.agentTokenFile == "~/.exray/token" and s.agentDeadline == 12
    assert validate_settings({"agents": "tcp:h:1"})[0].agents == ("tcp:h:1",)     # one address
    for bad in (["nohost"], [3], "a b:1", {"x": 1}, ["h:1"] * 300):
        s, problems = validate_settings({"agents": bad})
        assert s.agents == () and len(problems) == 1 and "exray.agents" in problems[0], (bad, problems)
    s, problems = validate_settings({"agentDeadline": 0, "agentCa": ""})
    assert s == Settings() and len(problems) == 2
    # exray.executor: one of the executors, "auto" by default.
    assert Settings().executor == "auto" and validate_settings({"executor": "ebpf"})[0].executor == "ebpf"
    for bad in ("kernel", "", 3, None, ["ptrace"]):
        s, problems = validate_settings({"executor": bad})
        assert s.executor == "auto" and problems == [
            f"setting exray.executor must be one of ptrace, ebpf, auto, not {bad!r}; using 'auto'"], problems


def test_which_agent_a_snapshot_goes_through():
    local = LocalAgent()
    here = parse_spec("version: 1\ntargets:\n  - exe: inventory\n")
    there = parse_spec("version: 1\ntargets:\n  - exe: inventory\n    agent: 10.0.0.8:7701\n  - pid: 7\n")
    assert select_agent(Settings(), here, local) is local
    a = select_agent(Settings(agents=("10.0.0.7:7701",), agentTokenFile="/t", agentDeadline=9), here, local)
    assert isinstance(a, FleetAgent) and a.addresses == ["10.0.0.7:7701"]
    assert a.options.credentials.token_file == "/t" and a.options.deadline_s == 9.0
    assert a.options.executor == "auto"                     # the setting goes to the agents
    assert select_agent(Settings(agents=("h:1",), executor="ptrace"), here, local).options.executor == "ptrace"
    assert isinstance(select_agent(Settings(), there, local), FleetAgent)
    # A target without `agent:` is taken on every agent of the setting.
    got = {t.address: (t.exes, t.pids) for t in editor_targets(["a:1", "b:2"], there)}
    assert got == {"a:1": ([], [7]), "b:2": ([], [7]), "10.0.0.8:7701": (["inventory"], [])}
    assert {t.address: t.exes for t in editor_targets(["a:1"], here)} == {"a:1": ["inventory"]}
    # ... and, with no such setting, it is said not to be taken.
    [why] = unplaced_targets(Settings(), there)
    assert ":5:" in why and "exray.agents" in why
    assert unplaced_targets(Settings(agents=("a:1",)), there) == [] and unplaced_targets(Settings(), here) == []


# ------------------------------------------------------- through the server

@pytest.fixture
def agent_executors():
    """The agent policy's executors (a test parametrizes it to restrict them)."""
    return ["ptrace", "ebpf", "auto"]


@pytest.fixture
def fleet(go_build, tmp_path, agent_executors):
    """linkpair running with 2 requests parked, an agent allowed to take it on
    127.0.0.1 with a token, and a workspace of linkpair's source."""
    binary = go_build("linkpair")
    token = write_token(tmp_path / "token", "editor")
    svc = AgentService(Policy(allow_exe=[str(binary)], min_interval_s=0, executors=agent_executors),
                       AuditLog(str(tmp_path / "audit.jsonl")), host="agent-host")
    server, addr = build_server(svc, "tcp:127.0.0.1:0", token_file=str(token))
    server.start()
    try:
        with run_target(binary, "-self", "2", dump=False) as t:
            yield {"addr": addr, "token": token, "pid": t.pid, "ws": make_workspace(tmp_path / "ws"),
                   "audit": tmp_path / "audit.jsonl", "cache": str(tmp_path / "cache")}
            assert tracer_pid(t.pid) == 0
    finally:
        server.stop(0)


@pytest.mark.asyncio(loop_scope="function")
async def test_editor_snapshot_through_exray_agents_setting(fleet):
    ws = fleet["ws"]
    (ws / "exray.yaml").write_text(f"version: 1\ntargets:\n  - pid: {fleet['pid']}\n" + FUNCTIONS)
    options = {"exray": {"agents": [fleet["addr"]], "agentTokenFile": str(fleet["token"])}}
    async with session(ws, "neovim", options=options, EXRAY_DEBUGINFO_CACHE=fleet["cache"]) as c:
        res = await command(c, "exray.snapshot")
        assert "error" not in res and res["errors"] == [], (res, [m.message for m in c.messages])
    with sqlite3.connect(res["path"]) as db:
        procs = db.execute("SELECT pid, host, agent, error FROM processes").fetchall()
        assert procs == [(fleet["pid"], "agent-host", fleet["addr"], None)]
        assert db.execute("SELECT count(*) FROM handles").fetchone()[0] == 2
        meta = dict(db.execute("SELECT key, value FROM meta"))
    assert [a["address"] for a in json.loads(meta["agents"])] == [fleet["addr"]] and "fleet" in meta
    audit = [json.loads(line) for line in fleet["audit"].read_text().splitlines()]
    assert {e["who"] for e in audit if e["method"] == "RunPlan"} == {"editor"}


@pytest.mark.asyncio(loop_scope="function")
async def test_editor_snapshot_of_targets_naming_an_agent_and_a_wrong_token(fleet, tmp_path):
    ws = fleet["ws"]
    addr = fleet["addr"].removeprefix("tcp:")        # the spec writes host:port
    (ws / "exray.yaml").write_text(f"version: 1\ntargets:\n  - pid: {fleet['pid']}\n    agent: {addr}\n"
                                   + FUNCTIONS)
    wrong = write_token(tmp_path / "wrong", "someone")
    options = {"exray": {"agentTokenFile": str(wrong)}}
    async with session(ws, "neovim", options=options, EXRAY_DEBUGINFO_CACHE=fleet["cache"]) as c:
        res = await command(c, "exray.snapshot")
        assert "error" in res and "credentials" in res["error"], res
        c.workspace_did_change_configuration(__import__("lsprotocol").types.DidChangeConfigurationParams(
            settings={"exray": {"agentTokenFile": str(fleet["token"])}}))
        res = await command(c, "exray.snapshot")
        assert "error" not in res, (res, [m.message for m in c.messages])
    with sqlite3.connect(res["path"]) as db:
        assert db.execute("SELECT pid, agent FROM processes").fetchall() == [(fleet["pid"], addr)]


def test_local_targets_skip_those_on_agents():
    """pids_of_targets (the local snapshot) leaves agents' targets to the agents."""
    from server.errors import NoTargets
    from server.snapshot_job import pids_of_targets
    import os
    spec = parse_spec(f"version: 1\ntargets:\n  - pid: {os.getpid()}\n  - exe: x\n    agent: 10.0.0.8:7701\n")
    assert pids_of_targets(spec) == [os.getpid()]
    with pytest.raises(NoTargets, match=r"on agents \(10.0.0.8:7701\).*through the agents"):
        pids_of_targets(parse_spec("version: 1\ntargets:\n  - exe: x\n    agent: 10.0.0.8:7701\n"))


# ------------------------------------------------------------ the executor

LIMITED = """\
limits:
  max_frames: 4
"""


@pytest.mark.parametrize("agent_executors", [["ptrace", "auto"]])
@pytest.mark.asyncio(loop_scope="function")
async def test_editor_executor_and_limits_reach_the_agent(fleet):
    """exray.executor goes to the agent, and so do the spec's limits; where
    auto used ptrace the editor is told why; an executor the agent's policy
    does not run is an error that says so."""
    from lsprotocol import types
    ws = fleet["ws"]
    (ws / "exray.yaml").write_text(f"version: 1\ntargets:\n  - pid: {fleet['pid']}\n" + LIMITED + FUNCTIONS)
    options = {"exray": {"agents": [fleet["addr"]], "agentTokenFile": str(fleet["token"])}}  # executor: auto
    async with session(ws, "neovim", options=options, EXRAY_DEBUGINFO_CACHE=fleet["cache"]) as c:
        res = await command(c, "exray.snapshot")
        assert "error" not in res and res["executor"] == "auto", (res, [m.message for m in c.messages])
        why = "executor auto: used ptrace, because this agent's policy does not run ebpf"
        assert res["warnings"] == [f"agent-host pid {fleet['pid']}: {why}"]
        [shown] = [m for m in c.messages if why in m.message]
        assert shown.type == types.MessageType.Info and f"(agent-host pid {fleet['pid']})" in shown.message
        assert "exray.executor" in shown.message
        c.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"exray": {"executor": "ebpf"}}))
        refused = await command(c, "exray.snapshot")
    assert "executor ebpf: this agent's policy runs only ptrace, auto" in refused["error"], refused
    with sqlite3.connect(res["path"]) as db:
        cut = db.execute("SELECT count(*) FROM goroutines WHERE error = 'stack deeper than 4 frames: cut'")
        assert cut.fetchone()[0] > 0                       # the spec's max_frames, applied on the agent
        assert db.execute("SELECT count(*) FROM handles").fetchone()[0] == 2
    audit = [json.loads(line) for line in fleet["audit"].read_text().splitlines()]
    assert [e.get("executor") for e in audit if e["method"] == "RunPlan" and e["outcome"] == "started"] == ["auto"]


NO_BPF = ["setpriv", "--bounding-set", "-bpf,-sys_admin"]     # an editor that is not root: no CAP_BPF


@pytest.mark.asyncio(loop_scope="function")
async def test_editor_local_snapshot_says_why_auto_used_ptrace(fleet):
    """A local snapshot (no agents) by a server without CAP_BPF: the default
    exray.executor (auto) uses ptrace and the editor hears why; `ebpf` fails
    with the reason."""
    from lsprotocol import types
    ws = fleet["ws"]
    (ws / "exray.yaml").write_text(f"version: 1\ntargets:\n  - pid: {fleet['pid']}\n" + LIMITED)
    async with session(ws, "neovim", wrap=NO_BPF) as c:
        res = await command(c, "exray.snapshot")
        assert "error" not in res, (res, [m.message for m in c.messages])
        [why] = res["warnings"]
        assert why.startswith("executor auto: used ptrace, because no CAP_BPF"), why
        assert any(m.type == types.MessageType.Info and why in m.message for m in c.messages)
        c.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"exray": {"executor": "ebpf"}}))
        failed = await command(c, "exray.snapshot")
        assert "executor ebpf: no CAP_BPF" in failed["error"], failed
        c.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"exray": {"executor": "kernel"}}))
        await wait_until(lambda: any("exray.executor must be one of" in m.message for m in c.messages),
                         what="the settings problem")
    with sqlite3.connect(res["path"]) as db:
        cut = db.execute("SELECT count(*) FROM goroutines WHERE error = 'stack deeper than 4 frames: cut'")
        assert cut.fetchone()[0] > 0
