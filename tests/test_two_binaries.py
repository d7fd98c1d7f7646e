"""One spec across two binaries, end to end, the way a user runs it: a
net/rpc service whose client and server are different `main` packages
(tests/goprogs/rpcclient and tests/goprogs/rpcserver), one exray.yaml with
functions of both, one `exray snapshot --pid S --pid C` through the CLI.

The client's longest-stalled call is a Deposit; the server goroutine serving
it waits on the account's mutex, which an audit job holds. From the spec
alone we follow: that client goroutine -> (link on the request id, across
processes and binaries) the server goroutine serving it -> (link on the
mutex's address) the audit goroutine holding the lock. Expected values come
from what the programs printed (request ids, goroutine ids, the mutex's
address), never from the snapshot. tests/test_investigation.py is the
one-binary version of this walk.

Also: a function no binary has is an error naming both binaries; a target's
expected function that its binary lacks is an error at the function's spec
line; `check-spec` takes both binaries; and the rule itself without any
process (plan.absent_errors).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from probe_compiler.plan import BinaryFunctions, absent_errors
from probe_compiler.spec import parse_spec
from targets import run_target
from test_investigation import exray, fields, ok, sql

BALANCES = 3
FIRST = 101
GOPROGS = Path(__file__).parent / "goprogs"
SERVER_SRC = (GOPROGS / "rpcserver" / "main.go").read_text().splitlines()
CLIENT_SRC = (GOPROGS / "rpcclient" / "main.go").read_text().splitlines()
LOCK_LINE = SERVER_SRC.index("\tacct.mu.Lock()") + 1      # where a deposit waits
HOLD_LINE = SERVER_SRC.index("\t<-release") + 1           # where the audit sits on the lock
CALL_WAIT_LINE = CLIENT_SRC.index("\t<-pending.Done") + 1  # where a client call waits

SPEC = """\
version: 1
targets:
  - exe: {server}
    functions: ["main.(*Accounts).*", main.(*account).audit]
  - exe: {client}
    functions: [main.(*caller).call]
functions:
  main.(*caller).call:               # client only
    table: calls
    capture:
      - id
      - method
      - {{expr: started, display: timestamp_ns}}
  main.(*Accounts).Deposit:          # server only
    table: deposits
    capture:
      - id
      - {{expr: acct, name: account}}  # *account; its first field is the mutex
    columns:
      lock: "raw_account ->> '__addr'"
  main.(*Accounts).Balance:
    table: balances
    capture: [id]
  main.(*Accounts).get:              # no goroutine is in it at the snapshot
    table: lookups
    capture: [name]
  main.(*account).audit:
    table: audits
    capture:
      - {{expr: j.Name, name: job}}
      - {{expr: a, name: account}}
    columns:
      lock: "raw_account ->> '__addr'"
reports:
  slow_calls:
    description: client calls, longest waiting first
    sql: |
      SELECT c.id ->> '$' AS req_id, c.method ->> '$' AS method,
             g.wait_ns, c.process_id, c.goid
      FROM calls c JOIN goroutines g ON g.process_id = c.process_id AND g.goid = c.goid
      ORDER BY g.wait_ns DESC
links:
  - name: served_by_deposit
    from: calls(id)
    to: deposits(id)
    description: the server goroutine handling this deposit
  - name: served_by_balance
    from: calls(id)
    to: balances(id)
    description: the server goroutine handling this balance query
  - name: waits_for_lock
    from: deposits(process_id, lock)
    to: audits(process_id, lock)
    description: the job whose frame holds the mutex this handler waits for
"""


def address(v: str) -> int:
    """A pointer as printed (%p, 0x...) or as an integer column."""
    return int(v, 16) if v.startswith("0x") else int(v)


@pytest.fixture(scope="module")
def svc(go_build, tmp_path_factory):
    """Runs the service, snapshots both processes with one `exray snapshot`,
    and keeps them running for the error cases, which need live processes."""
    d = tmp_path_factory.mktemp("twobinaries")
    tag = f"{os.getpid()}-{d.name[-6:]}".replace("_", "")
    server_exe, client_exe = d / f"rpcserver-{tag}", d / f"rpcclient-{tag}"
    shutil.copy(go_build("rpcserver"), server_exe)
    shutil.copy(go_build("rpcclient"), client_exe)
    (d / "exray.yaml").write_text(SPEC.format(server=server_exe.name, client=client_exe.name))
    addr = d / "addr"
    with run_target(server_exe, "-addr-file", addr, "-expect", 1 + BALANCES, dump=False) as server:
        job = fields(server.wait_line("JOB", 10))
        with run_target(client_exe, "-addr-file", addr, "-first", FIRST, "-balances", BALANCES,
                        dump=False) as client:
            calls = [fields(client.wait_line("CALL", 10)) for _ in range(1 + BALANCES)]
            handles = [fields(server.wait_line("HANDLE", 10)) for _ in range(1 + BALANCES)]
            server.wait_line("PARKED", 10)
            r = exray("snapshot", "--pid", server.pid, "--pid", client.pid, "--spec", "exray.yaml",
                      "-o", d / "snap.sqlite", cwd=d, timeout=60)
            assert (server.proc.poll(), client.proc.poll()) == (None, None), "a target died"
            assert r.returncode == 0, r.stderr
            assert "Traceback" not in r.stderr, r.stderr
            yield {"dir": d, "snap": d / "snap.sqlite", "server_pid": server.pid,
                   "client_pid": client.pid, "server_exe": server_exe, "client_exe": client_exe,
                   "job": job, "calls": {c["id"]: c for c in calls},
                   "handles": {h["id"]: h for h in handles}, "stdout": r.stdout}


def process_ids(svc) -> dict[int, str]:
    """pid -> processes.id (as text, like every parsed cell)."""
    return {int(r["pid"]): r["id"] for r in sql(svc["snap"], "SELECT id, pid FROM processes")}


def test_one_snapshot_of_two_binaries(svc):
    rows = sql(svc["snap"], "SELECT pid, exe, build_id, error FROM processes ORDER BY pid")
    by_pid = {int(r["pid"]): r for r in rows}
    assert set(by_pid) == {svc["server_pid"], svc["client_pid"]}
    assert all(r["error"] is None for r in rows), rows
    assert by_pid[svc["server_pid"]]["build_id"] != by_pid[svc["client_pid"]]["build_id"]
    assert os.path.basename(by_pid[svc["server_pid"]]["exe"]) == svc["server_exe"].name
    assert os.path.basename(by_pid[svc["client_pid"]]["exe"]) == svc["client_exe"].name
    for pid in (svc["server_pid"], svc["client_pid"]):
        assert re.search(rf"^pid {pid}: \d+ goroutines, paused", svc["stdout"], re.M), svc["stdout"]
    assert sql(svc["snap"], "SELECT * FROM exray_report_errors") == []


def test_each_table_holds_the_rows_of_the_binary_that_has_it(svc):
    ids = process_ids(svc)
    server, client = ids[svc["server_pid"]], ids[svc["client_pid"]]
    seen = {t: {r["process_id"] for r in sql(svc["snap"], f"SELECT process_id FROM {t}")}
            for t in ("calls", "deposits", "balances", "audits")}
    assert seen == {"calls": {client}, "deposits": {server}, "balances": {server}, "audits": {server}}
    # A function no goroutine is in still has its table: SQL over it works.
    assert sql(svc["snap"], "SELECT count(*) AS n FROM lookups") == [{"n": "0"}]
    calls = sql(svc["snap"], "SELECT id ->> '$' AS id, method ->> '$' AS method, goid FROM calls")
    assert {c["id"]: (c["method"], c["goid"]) for c in calls} == \
        {i: (c["method"], c["goid"]) for i, c in svc["calls"].items()}


def longest_call(svc) -> dict:
    rows = sql(svc["snap"], "SELECT s.req_id, s.method, s.wait_ns, s.goid, c.rowid AS call_row "
                            "FROM slow_calls s JOIN calls c ON c.process_id = s.process_id "
                            "AND c.goid = s.goid ORDER BY s.wait_ns DESC")
    # Calls started earlier have waited longer (the client stamps each with a GC).
    calls = svc["calls"]
    assert [r["req_id"] for r in rows] == sorted(calls, key=lambda i: int(calls[i]["started"]))
    return rows[0]


def test_longest_stalled_client_call_to_the_server_goroutine_serving_it(svc):
    top = longest_call(svc)
    rid = top["req_id"]
    assert rid == f"req-{FIRST}" and svc["calls"][rid]["method"] == "Deposit"
    assert top["goid"] == svc["calls"][rid]["goid"]
    handler = svc["handles"][rid]
    out = ok("links", svc["snap"], "calls", top["call_row"])
    assert out.startswith(f"calls #{top['call_row']}\n")
    assert f"goroutine {top['goid']} [waiting, chan receive] in process " in out
    assert f"(pid {svc['client_pid']}) of {svc['client_exe'].name}\n" in out
    assert re.search(rf"main\.\(\*caller\)\.call\n\s+\S+/main\.go:{CALL_WAIT_LINE}\n", out), out
    # Exactly one link: to the deposit handler (no balance query has this id).
    assert out.count("\n-> ") == 1 and "<- " not in out, out
    m = re.search(r"^-> served_by_deposit: .*\n\s+deposits #(\d+)\n(?P<body>(?:\s{5}.*\n)+)", out, re.M)
    assert m, out
    body = m.group("body")
    assert re.search(rf"^\s+id = \"?{rid}\"?$", body, re.M), body
    assert f"goroutine {handler['goid']} [waiting, sync.Mutex.Lock] in process " in body
    assert f"(pid {svc['server_pid']}) of {svc['server_exe'].name}\n" in body
    assert re.search(rf"main\.\(\*Accounts\)\.Deposit\n\s+\S+/main\.go:{LOCK_LINE}\n", body), body


def test_server_goroutine_to_the_lock_holder(svc):
    job = svc["job"]
    rid = f"req-{FIRST}"
    [dep] = sql(svc["snap"], "SELECT rowid, goid, id ->> '$' AS req_id, lock FROM deposits")
    assert (dep["req_id"], dep["goid"]) == (rid, svc["handles"][rid]["goid"])
    # The key is the mutex's address, as the server printed it (&a.mu).
    assert address(dep["lock"]) == address(job["lock"])
    out = ok("links", svc["snap"], "deposits", dep["rowid"])
    m = re.search(r"^-> waits_for_lock: .*\n\s+audits #(\d+)\n(?P<body>(?:\s{5}.*\n)+)", out, re.M)
    assert m, out
    body = m.group("body")
    assert re.search(rf"^\s+job = \"?{job['name']}\"?$", body, re.M), body
    # The holder is not waiting for the mutex: it sits on it, elsewhere.
    assert f"goroutine {job['goid']} [waiting, chan receive] in process " in body
    assert f"(pid {svc['server_pid']})" in body
    assert re.search(rf"main\.\(\*account\)\.audit\n\s+\S+/main\.go:{HOLD_LINE}\n", body), body
    # ... and back to the client call it holds up, in the other binary.
    m = re.search(r"^<- served_by_deposit: .*\n\s+calls #\d+\n(?P<body>(?:\s{5}.*\n)+)", out, re.M)
    assert m, out
    assert f"goroutine {svc['calls'][rid]['goid']} [waiting, chan receive]" in m.group("body")
    assert f"(pid {svc['client_pid']})" in m.group("body")


def test_balance_calls_link_to_their_handlers(svc):
    ids = process_ids(svc)
    rows = sql(svc["snap"], """
        SELECT c.id ->> '$' AS req_id, b.goid AS server_goid, b.process_id
        FROM exray_links l JOIN calls c ON c.rowid = l.from_rowid
        JOIN balances b ON b.rowid = l.to_rowid
        WHERE l.link = 'served_by_balance' AND l.from_table = 'calls'""")
    want = {i: h["goid"] for i, h in svc["handles"].items() if h["kind"] == "balance"}
    assert len(want) == BALANCES
    assert {r["req_id"]: r["server_goid"] for r in rows} == want
    assert {r["process_id"] for r in rows} == {ids[svc["server_pid"]]}


# ------------------------------------------------------------ errors

def _snapshot_error(svc, spec: str) -> str:
    d = svc["dir"]
    (d / "bad.yaml").write_text(spec)
    r = exray("snapshot", "--pid", svc["server_pid"], "--pid", svc["client_pid"], "--spec", "bad.yaml",
              "-o", d / "bad.sqlite", cwd=d, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (d / "bad.sqlite").exists()
    return r.stderr


def test_function_in_no_binary_names_both(svc):
    spec = SPEC.format(server=svc["server_exe"].name, client=svc["client_exe"].name)
    bad = spec.replace("  main.(*Accounts).Balance:", "  main.(*Accounts).Balanse:")
    bad = bad.replace('["main.(*Accounts).*", main.(*account).audit]', "[main.(*Accounts).Deposit]")
    line = bad.splitlines().index("  main.(*Accounts).Balanse:") + 1
    err = _snapshot_error(svc, bad)
    assert err.startswith(f"error: bad.yaml:{line}:3: no function main.(*Accounts).Balanse in any of "
                          f"the 2 binaries: "), err
    server = f"{svc['server_exe']} (pid {svc['server_pid']}) (did you mean main.(*Accounts).Balance"
    assert server in err, err
    assert f"{svc['client_exe']} (pid {svc['client_pid']})" in err, err
    assert err.count("\n") == 1, err


def test_expected_function_missing_from_its_binary(svc):
    """The client's function is fine in a snapshot of both, until the
    server's target claims it (a glob over all of main)."""
    spec = SPEC.format(server=svc["server_exe"].name, client=svc["client_exe"].name)
    bad = spec.replace('["main.(*Accounts).*", main.(*account).audit]', '["main.*"]')
    line = bad.splitlines().index("  main.(*caller).call:               # client only") + 1
    err = _snapshot_error(svc, bad)
    assert err.startswith(f"error: bad.yaml:{line}:3: no function main.(*caller).call in "
                          f"{svc['server_exe']} (pid {svc['server_pid']})"), err
    assert "though the target at bad.yaml:4 expects it (main.*)" in err, err
    assert str(svc["client_exe"]) not in err


def test_check_spec_with_both_binaries(svc):
    d = svc["dir"]
    server, client = svc["server_exe"], svc["client_exe"]
    out = ok("check-spec", "exray.yaml", "--binary", server, "--binary", client, cwd=d)
    assert f"{server}: DWARF in the binary itself\n" in out
    assert f"{client}: DWARF in the binary itself\n" in out
    assert f"  has no main.(*caller).call: its processes get no rows there\n" in out
    assert "exray.yaml: ok, 5 functions, checked against " in out
    # One binary alone: the other's functions are missing, as today.
    r = exray("check-spec", "exray.yaml", "--binary", server, cwd=d)
    assert r.returncode == 1
    assert re.search(r"^error: exray\.yaml:\d+:3: no function main\.\(\*caller\)\.call in "
                     rf"{re.escape(str(server))}", r.stderr, re.M), r.stderr
    # A function in neither, and a capture wrong in the binary that has it.
    spec = (d / "exray.yaml").read_text()
    bad = spec.replace("  main.(*Accounts).Balance:", "  main.(*Accounts).Balanse:")
    bad = bad.replace('["main.(*Accounts).*", main.(*account).audit]', "[main.(*Accounts).Deposit]")
    bad = bad.replace("{expr: started, display", "{expr: started.At, name: started, display")
    (d / "bad-check.yaml").write_text(bad)
    r = exray("check-spec", "bad-check.yaml", "--binary", server, "--binary", client, cwd=d)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errors = r.stderr.splitlines()
    assert len(errors) == 2, r.stderr
    assert "capture 'started.At'" in errors[0] and errors[0].endswith(f"(in {client})"), errors
    assert "no function main.(*Accounts).Balanse in any of the 2 binaries: " in errors[1]
    assert str(server) in errors[1] and str(client) in errors[1]


# ------------------------------------------------------------ the rule, without processes

RULE_SPEC = """\
version: 1
targets:
  - exe: server
    functions: ["main.(*Server).*"]
  - pid: 42
    functions: [main.runClient]
functions:
  main.(*Server).getClient:
  main.runClient:
  main.both:
"""


def _binary(name: str, absent: dict, pids=()) -> BinaryFunctions:
    return BinaryFunctions(f"/bin/{name}", name, absent, tuple(pids))


def test_rule_one_binary_is_todays_rule():
    spec = parse_spec(RULE_SPEC)
    [e] = absent_errors(spec, [_binary("server", {"main.runClient": ["main.main"]})])
    assert str(e) == "exray.yaml:9:3: no function main.runClient in /bin/server (did you mean main.main?)"


def test_rule_function_in_some_binaries_is_fine():
    spec = parse_spec(RULE_SPEC)
    server = _binary("server", {"main.runClient": []})
    client = _binary("client", {"main.(*Server).getClient": []}, pids=[7])
    assert absent_errors(spec, [server, client]) == []
    assert absent_errors(spec, []) == []


def test_rule_no_binary_has_it():
    spec = parse_spec(RULE_SPEC)
    server = _binary("server", {"main.both": ["main.bath"]})
    client = _binary("client", {"main.both": []})
    [e] = absent_errors(spec, [server, client])
    assert (e.line, e.column) == (10, 3)
    assert e.detail == ("no function main.both in any of the 2 binaries: /bin/server (did you mean "
                        "main.bath?), /bin/client")


def test_rule_expected_by_a_target():
    spec = parse_spec(RULE_SPEC)
    # The client process (pid 42) runs a binary without runClient, which its target expects.
    server = _binary("server", {})
    client = _binary("client", {"main.runClient": ["main.runClients"]}, pids=[42])
    [e] = absent_errors(spec, [server, client])
    assert str(e) == ("exray.yaml:9:3: no function main.runClient in /bin/client (did you mean "
                      "main.runClients?), though the target at exray.yaml:6 expects it (main.runClient)")
    # Another pid of the same exe name is not that target.
    assert absent_errors(spec, [server, _binary("client", {"main.runClient": []}, pids=[43])]) == []


def test_check_spans_names_each_binary_file_with_its_pids():
    """snapshot_job.check_spans groups processes by binary file (build id and
    path) and names each by its real path and pids."""
    from types import SimpleNamespace

    from server.snapshot_job import check_spans
    spec = parse_spec("version: 1\nfunctions:\n  main.x:\n  main.y:\n")
    me = os.getpid()
    exe = os.readlink(f"/proc/{me}/exe")
    fake = SimpleNamespace(plan=SimpleNamespace(build_id="b1", absent={"main.x": ["main.xx"]}))
    [e] = check_spans(spec, {me: fake})
    assert str(e) == f"exray.yaml:3:3: no function main.x in {exe} (pid {me}) (did you mean main.xx?)"
    assert check_spans(None, {me: fake}) == [] and check_spans(spec, {}) == []


def test_the_editor_agent_snapshots_both_binaries_with_one_spec(svc):
    """The language server's LocalAgent (what exray.snapshot runs) takes the
    same two-binary spec: each process gets the rows of its own functions."""
    from probe_compiler.spec import load_spec
    from server.lsp.agent import LocalAgent

    spec = load_spec(svc["dir"] / "exray.yaml")
    seen = []
    records = LocalAgent().run_plan([svc["server_pid"], svc["client_pid"]], spec,
                                    on_process=lambda i, n, rec: seen.append((i, n)))
    assert seen == [(1, 2), (2, 2)]
    assert [r.error for r in records] == [None, None]
    tables = [{c.function for g in r.goroutines for c in g.captures} for r in records]
    assert "main.(*caller).call" not in tables[0] and "main.(*caller).call" in tables[1]
    assert any(f.startswith("main.(*Accounts)") for f in tables[0])
