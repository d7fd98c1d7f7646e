"""The control plane (server/fleet.py) against agents served in this process
on unix sockets: one snapshot from several agents, one dead; the debug-info
cache (content-addressed, LRU under a size limit)."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import time

import pytest

from agent.policy import AuditLog, Policy
from agent.service import AgentService, build_server
from probe_compiler.spec import load_spec
from server.debug_cache import DebugInfoCache
from server.fleet import AgentTarget, FleetOptions, fleet_snapshot, write
from server.agent_client import Credentials
from server.links import linked_rows
from server.store import open_snapshot
from targets import run_target

from agent_helpers import LINKPAIR_SPEC as SPEC, tracer_pid



def sha_writer(data: bytes):
    def write(f):
        f.write(data)
        return hashlib.sha256(data).hexdigest()
    return write


def test_cache_is_content_addressed_and_lru(tmp_path):
    c = DebugInfoCache(str(tmp_path / "c"), max_bytes=250)
    assert c.get("a/b") is None
    pa = c.put("a/b", sha_writer(b"x" * 100))
    assert c.get("a/b") == pa and open(pa, "rb").read() == b"x" * 100
    assert c.put("same-bytes", sha_writer(b"x" * 100)) == pa      # one object for both
    time.sleep(0.01)
    c.put("b", sha_writer(b"y" * 100))
    time.sleep(0.01)
    c.get("a/b")                                                   # a is now the most recent
    time.sleep(0.01)
    c.put("c", sha_writer(b"z" * 100))                             # 300 > 250: b goes
    assert c.get("b") is None and c.get("a/b") and c.get("c") and c.size() == 200
    with pytest.raises(ValueError, match="differs"):
        c.put("d", lambda f: f.write(b"q") and "0" * 64)
    assert c.get("d") is None and not [n for n in os.listdir(c.objects) if n.startswith(".")]
    assert stat.S_IMODE(os.stat(c.root + "/objects").st_mode) == 0o700


@pytest.fixture
def agents(tmp_path, go_build):
    """Two agents on this machine, each allowed one of a client/server pair."""
    binary = go_build("linkpair")
    d = tmp_path / "hosts"
    (d / "a").mkdir(parents=True)
    (d / "b").mkdir()
    for h in "ab":
        os.link(binary, d / h / "linkpair") if os.stat(binary).st_dev == os.stat(d).st_dev \
            else __import__("shutil").copy2(binary, d / h / "linkpair")
    servers = []
    addrs = []
    for h in "ab":
        svc = AgentService(Policy(allow_exe=[f"{d / h}/*"], min_interval_s=0),
                           AuditLog(str(tmp_path / f"audit-{h}.jsonl")), host=f"host-{h}")
        server, addr = build_server(svc, f"unix:{tmp_path}/{h}.sock")
        server.start()
        servers.append(server)
        addrs.append(addr)
    with run_target(d / "a" / "linkpair", "-serve", str(tmp_path / "addr"), "-expect", "2", dump=False) as srv:
        with run_target(d / "b" / "linkpair", "-connect", str(tmp_path / "addr"), "-n", "2", "-first", "40",
                        dump=False) as cli:
            srv.wait_line("PARKED", 30)
            yield addrs, srv, cli
    for s in servers:
        s.stop(0)


def test_one_snapshot_across_agents_one_dead(tmp_path, agents):
    (addr_a, addr_b), srv, cli = agents
    spec_path = tmp_path / "exray.yaml"
    spec_path.write_text(SPEC)
    spec = load_spec(str(spec_path))
    cache = DebugInfoCache(str(tmp_path / "cache"))
    opts = FleetOptions(cache=cache, credentials=Credentials(), connect_timeout_s=5)
    dead = f"unix:{tmp_path}/nobody.sock"
    result = fleet_snapshot([AgentTarget(addr_a), AgentTarget(addr_b), AgentTarget(dead)], spec, opts)
    by_host = {(r.host, r.pid): r for r in result.records}
    assert by_host[("host-a", srv.pid)].error is None and by_host[("host-b", cli.pid)].error is None
    [lost] = [r for r in result.records if r.agent == dead]
    assert lost.pid == 0 and "unreachable" in lost.error and dead in lost.error
    assert [a.error is None for a in result.agents] == [True, True, False]
    # One binary (both hosts run the same build): fetched once, cached.
    assert len(os.listdir(cache.objects)) == 1
    for r in result.records:
        if not r.error:
            assert abs(r.skew_ns) < 1e9 and r.clock_offset_ns is not None and r.agent
    out = tmp_path / "fleet.sqlite"
    assert write(str(out), result, spec) == []
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    db = open_snapshot(out)
    rows = db.execute("SELECT host, agent, error IS NULL, skew_ns IS NOT NULL FROM processes ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["host-a", "host-b", dead]
    # The link goes from the client's goroutines on host b to the server's on host a.
    linked = db.execute("""
        SELECT pc.host, ph.host, calls.id FROM calls
        JOIN handles ON handles.req_id = CAST(calls.id AS INTEGER)
        JOIN processes pc ON pc.id = calls.process_id JOIN processes ph ON ph.id = handles.process_id
        ORDER BY calls.id""").fetchall()
    assert linked == [("host-b", "host-a", "40"), ("host-b", "host-a", "41")]
    for (rowid,) in db.execute("SELECT rowid FROM calls"):
        [link] = linked_rows(db, "calls", rowid)
        assert link.table == "handles" and link.goroutine.pid == srv.pid and link.frame.function == "main.handle"
    meta = dict(db.execute("SELECT key, value FROM meta"))
    assert int(meta["pause_at"]) == result.pause_at_ns and len(json.loads(meta["agents"])) == 3
    assert tracer_pid(srv.pid) == 0 and tracer_pid(cli.pid) == 0


def test_fleet_agent_is_an_agent(tmp_path, agents):
    from server.lsp.agent import Agent
    from server.lsp.fleet_agent import FleetAgent
    (addr_a, addr_b), srv, cli = agents
    fa = FleetAgent([addr_a, addr_b], FleetOptions(cache=DebugInfoCache(str(tmp_path / "c")),
                                                    credentials=Credentials()))
    assert isinstance(fa, Agent)
    assert {p.pid for p in fa.list_processes()} == {srv.pid, cli.pid}
    bid = next(p.build_id for p in fa.list_processes())
    assert open(fa.debug_info(bid), "rb").read() == open(f"/proc/{srv.pid}/exe", "rb").read()
    seen = []
    recs = fa.run_plan([], None, on_process=lambda i, n, r: seen.append((i, n)))
    assert sorted((r.host, r.pid) for r in recs) == [("host-a", srv.pid), ("host-b", cli.pid)]
    assert all(r.error is None for r in recs) and seen == [(1, 2), (2, 2)]
