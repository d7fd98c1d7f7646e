"""A snapshot through `exray agent` equals a local one, value for value.

The agent has no DWARF: it runs the plan the control plane compiled. The
values program holds a local of every kind in docs/values.md, interfaces
whose dynamic types no capture names among them (`any` holding a struct, a
map, a pointer, an error chain); the plan carries the runtime-type table so
the agent decodes them as the local reader, which asks DWARF, does. Every
column of main.capture's row is compared: plain, raw and `_errors`, and the
agent's values also against the program's own report.
"""
from __future__ import annotations

import json

import pytest

from agent.policy import AuditLog, Policy
from agent.service import AgentService, build_server
from probe_compiler.dwarf import DwarfInfo
from probe_compiler.gobinary import GoBinary
from probe_compiler.spec import parse_spec
from server.agent_client import Credentials
from server.debug_cache import DebugInfoCache
from server.fleet import AgentTarget, FleetOptions, fleet_snapshot
from server.snapshot_job import snapshot_pids
from targets import run_target
from values_compare import ROOMY, same

from agent_helpers import tracer_pid


def _capture(rec):
    assert rec.error is None, rec.error
    [cap] = [c for g in rec.goroutines for c in g.captures]
    return cap


def test_agent_snapshot_equals_local_snapshot(go_build, tmp_path):
    binary = go_build("values")
    with GoBinary.open(str(binary)) as b:
        described = {v.name.lstrip("&") for v in
                     DwarfInfo.load(str(binary), b.build_id).function("main.capture").variables}
    svc = AgentService(Policy(allow_exe=[str(binary)], min_interval_s=0),
                       AuditLog(str(tmp_path / "audit.jsonl")), host="agent-host")
    server, addr = build_server(svc, f"unix:{tmp_path}/agent.sock")
    server.start()
    try:
        with run_target(binary, "-values", str(tmp_path / "v.json"), dump=False) as t:
            expected = json.loads((tmp_path / "v.json").read_text())
            names = [k for k in expected if k in described]
            spec = parse_spec("version: 1\nfunctions:\n  main.capture:\n    capture:\n"
                              + "".join(f"      - {k}\n" for k in names))
            [local] = snapshot_pids([t.pid], spec, budgets=ROOMY)
            opts = FleetOptions(cache=DebugInfoCache(str(tmp_path / "cache")), credentials=Credentials(),
                                budgets=ROOMY)
            result = fleet_snapshot([AgentTarget(addr, pids=[t.pid])], spec, opts)
            assert tracer_pid(t.pid) == 0
    finally:
        server.stop(0)
    [remote] = result.records
    assert remote.host == "agent-host" and remote.agent == addr
    here, there = _capture(local), _capture(remote)
    assert len(names) > 40 and set(here.values) == set(there.values) == set(names)
    differ = {k: {"local": (here.values[k], here.raw[k], here.errors.get(k)),
                  "agent": (there.values[k], there.raw[k], there.errors.get(k))}
              for k in names
              if not (same(here.values[k], there.values[k]) and same(here.raw[k], there.raw[k])
                      and here.errors.get(k) == there.errors.get(k))}
    assert not differ, json.dumps(differ, indent=1, ensure_ascii=False)[:6000]
    # The same values the program reports for itself (the interfaces among them).
    wrong = {k: (there.values[k], expected[k]) for k in names if not same(there.values[k], expected[k])}
    assert not wrong, json.dumps(wrong, indent=1, ensure_ascii=False)[:4000]
