"""agent/policy.py without a server: the allow-list, the rate limit, the audit log."""
from __future__ import annotations

import json
import os
import stat

import pytest

from agent.policy import AuditLog, Policy, PolicyError, ProcFacts, RateLimiter, proc_facts
from agent.records import CaptureRecord, FrameRecord, GoroutineRecord, ProcessRecord
from agent.wire import chunks, record_from_json, record_to_json


def facts(exe="/srv/api/bin/api", uid=1000, cgroups=("/system.slice/api.service",)):
    return ProcFacts(4242, exe, uid, cgroups, 1)


def test_no_allow_list_refuses_to_start():
    with pytest.raises(PolicyError, match="no allow-list"):
        Policy().check()
    Policy(allow_exe=["*"]).check()


def test_every_configured_list_must_match():
    p = Policy(allow_exe=["/srv/*/bin/*"], allow_uid=[1000], allow_cgroup=["/system.slice/api.service"])
    assert p.refusal(facts()) is None
    assert "matches no --allow-exe" in p.refusal(facts(exe="/usr/bin/sshd"))
    assert "uid 0 is not in" in p.refusal(facts(uid=0))
    assert "under no --allow-cgroup" in p.refusal(facts(cgroups=("/system.slice/api.service2",)))
    assert p.refusal(facts(cgroups=("/user.slice", "/system.slice/api.service/sub"))) is None
    assert Policy(allow_cgroup=["/"]).refusal(facts(cgroups=("/x",))) is None


def test_policy_file(tmp_path):
    f = tmp_path / "policy.json"
    f.write_text(json.dumps({"allow_uid": [0], "min_interval_s": 5}))
    p = Policy.from_file(str(f))
    assert p.allow_uid == [0] and p.min_interval_s == 5
    f.write_text(json.dumps({"allow_everything": True}))
    with pytest.raises(PolicyError, match="unknown settings allow_everything"):
        Policy.from_file(str(f))


def test_rate_limit_per_process_instance():
    now = [100.0]
    r = RateLimiter(2.0, clock=lambda: now[0])
    assert r.acquire(7, 1) is None
    assert "rate limited: paused 0.00 s ago" in r.acquire(7, 1)
    assert r.acquire(7, 2) is None       # the pid was reused by a new process
    now[0] += 2.5
    assert r.acquire(7, 1) is None


def test_audit_log_is_private_json_lines(tmp_path):
    path = tmp_path / "log" / "audit.jsonl"
    log = AuditLog(str(path))
    log.write(method="RunPlan", who="ops", pids=[1, 2], outcome="ok")
    log.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    [entry] = [json.loads(line) for line in path.read_text().splitlines()]
    assert entry["who"] == "ops" and entry["pids"] == [1, 2] and entry["time"].endswith("Z")


def test_proc_facts_of_this_process():
    f = proc_facts(os.getpid())
    assert f.exe == os.path.realpath("/proc/self/exe") and f.uid == os.getuid()
    assert f.cgroups and abs(f.start_time_ns - __import__("time").time_ns()) < 86400e9 * 30
    assert proc_facts(2 ** 22 + 1) is None


def test_records_round_trip_in_chunks():
    rec = ProcessRecord(pid=1, host="h", exe="/x", build_id="b", captured_at_ns=5, pause_ns=7,
                        warnings=["w"], load_bias=0x1000, goroutines=[GoroutineRecord(
                            1, "waiting", "chan receive", 3, "main.f", "f.go", 3, None, {"k": "v"}, False, None,
                            frames=[FrameRecord(0, "main.g", "g.go", 9, 0x44, True)],
                            captures=[CaptureRecord("main.g", 0, {"a": [1]}, {"a": [1]}, {"b": "why"})])])
    data = record_to_json(rec)
    parts = list(chunks(data, 10))
    assert [last for _, last in parts] == [False] * (len(parts) - 1) + [True]
    assert record_from_json(b"".join(p for p, _ in parts)) == rec
    assert list(chunks(b"", 10)) == [(b"", True)]
