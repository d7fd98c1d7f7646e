"""Issue 3, end to end, the way a user runs it: an exray.yaml and the `exray`
CLI as subprocesses, against a real two-process HTTP service
(tests/goprogs/rpcpair; the walkthrough is docs/investigation.md).

The client's slowest call is a /transfer; the server goroutine serving it
waits on the ledger's mutex, which a background job holds. From the spec
alone the snapshot must let us go: longest-waiting client call -> (link on
the request id, across processes) the server goroutine serving it -> (link on
the mutex's address, from `raw_` columns) the job holding the lock, and show
with a derived table that exactly one request is stuck behind the job.
Every expected value comes from what the Go programs printed (request ids,
goroutine ids, the mutex's address), never from the snapshot itself.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from targets import run_target

EXRAY = str(Path(sys.prefix) / "bin" / "exray")
QUOTES = 3
FIRST = 101
SOURCE = (Path(__file__).parent / "goprogs" / "rpcpair" / "main.go").read_text().splitlines()
LOCK_LINE = SOURCE.index("\tled.mu.Lock()") + 1     # where the transfer handler waits
HOLD_LINE = SOURCE.index("\t<-release") + 1         # where the job sits on the lock

SPEC = """\
version: 1
targets:
  - exe: {client}
  - exe: {server}
functions:
  main.(*client).call:
    table: calls
    capture:
      - id
      - kind
      - {{expr: started, display: timestamp_ns}}
  main.(*server).transfer:
    table: transfers
    capture:
      - id
      - {{expr: r.URL.Path, name: path}}
      - {{expr: led, name: ledger}}         # *ledger; its first field is the mutex
    columns:
      lock: "raw_ledger ->> '__addr'"     # the address the pointer holds
  main.(*server).quote:
    table: quotes
    capture:
      - id
      - {{expr: r.URL.Path, name: path}}
  main.(*ledger).compact:
    table: jobs
    capture:
      - {{expr: j.Name, name: job}}
      - {{expr: j.Started, name: started, display: timestamp_ns}}
      - {{expr: l, name: ledger}}
    columns:
      lock: "raw_ledger ->> '__addr'"
reports:
  slow_calls:
    description: client calls, longest waiting first
    sql: |
      SELECT c.id ->> '$' AS req_id, c.kind ->> '$' AS kind, g.wait_ns, g.wait_reason,
             c.process_id, c.goid
      FROM calls c JOIN goroutines g ON g.process_id = c.process_id AND g.goid = c.goid
      ORDER BY g.wait_ns DESC
  server_requests:
    description: every request the server is handling, and what it waits for
    sql: |
      SELECT 'transfer' AS kind, t.id ->> '$' AS req_id, t.process_id, t.goid, g.wait_reason
      FROM transfers t JOIN goroutines g ON g.process_id = t.process_id AND g.goid = t.goid
      UNION ALL
      SELECT 'quote', q.id ->> '$', q.process_id, q.goid, g.wait_reason
      FROM quotes q JOIN goroutines g ON g.process_id = q.process_id AND g.goid = q.goid
  blocked_behind_job:
    description: requests waiting for a mutex that a background job holds
    sql: |
      SELECT r.req_id, r.process_id, r.goid, j.job ->> '$' AS job, j.goid AS job_goid, t.lock
      FROM server_requests r
      JOIN transfers t ON t.process_id = r.process_id AND t.goid = r.goid
      JOIN jobs j ON j.process_id = t.process_id AND j.lock = t.lock
      WHERE r.wait_reason = 'sync.Mutex.Lock'
links:
  - name: served_by_transfer
    from: calls(id)
    to: transfers(id)
    description: the server goroutine handling this transfer
  - name: served_by_quote
    from: calls(id)
    to: quotes(id)
    description: the server goroutine handling this quote
  - name: waits_for_lock
    from: transfers(process_id, lock)
    to: jobs(process_id, lock)
    description: the job whose frame holds the mutex this handler waits for
"""


def exray(*args, cwd=None, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run([EXRAY, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def ok(*args, **kw) -> str:
    r = exray(*args, **kw)
    assert r.returncode == 0, f"exray {' '.join(map(str, args))}: exit {r.returncode}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r.stdout


def sql(snap: Path, query: str) -> list[dict]:
    """`exray sql --raw` parsed back into rows: the dashes under the header
    give each column's span."""
    lines = ok("sql", snap, query, "--raw", "--max-width", "1000").splitlines()
    head, dashes, *body, count = lines
    assert re.fullmatch(r"\((\d+) rows?\)", count), count
    spans = [m.span() for m in re.finditer(r"-+", dashes)]
    names = [head[a:b].strip() for a, b in spans]
    rows = []
    for line in body:
        cells = [line[a:b].strip() for a, b in spans]
        rows.append({n: (None if c == "NULL" else c) for n, c in zip(names, cells)})
    assert len(rows) == int(count.strip("()").split()[0])
    return rows


def fields(line: str) -> dict[str, str]:
    """'CALL id=req-101 kind=transfer goid=7' -> {'id': 'req-101', ...}"""
    return dict(kv.split("=", 1) for kv in line.split()[1:])


@pytest.fixture(scope="module")
def inv(go_build, tmp_path_factory):
    """Runs the service, snapshots it with `exray snapshot` (no arguments),
    kills it, and returns what the programs printed and the snapshot."""
    d = tmp_path_factory.mktemp("investigation")
    # Names of our own: `targets:` match every process with that exe base
    # name, and another run of this test may be going on.
    tag = f"{os.getpid()}-{d.name[-6:]}".replace("_", "")
    binary = go_build("rpcpair")
    server_exe, client_exe = d / f"rpcserver-{tag}", d / f"rpcclient-{tag}"
    shutil.copy(binary, server_exe)
    shutil.copy(binary, client_exe)
    (d / "exray.yaml").write_text(SPEC.format(client=client_exe.name, server=server_exe.name))
    addr = d / "addr"
    with run_target(server_exe, "-mode", "server", "-addr-file", addr, "-expect", 1 + QUOTES,
                    dump=False) as server:
        job = fields(server.wait_line("JOB", 10))
        job["lock"] = str(int(job["lock"], 16))   # printed %p; Ex-Ray's addresses are integers
        with run_target(client_exe, "-mode", "client", "-addr-file", addr, "-first", FIRST,
                        "-quotes", QUOTES, dump=False) as client:
            calls = [fields(client.wait_line("CALL", 10)) for _ in range(1 + QUOTES)]
            handles = [fields(server.wait_line("HANDLE", 10)) for _ in range(1 + QUOTES)]
            server.wait_line("PARKED", 10)
            r = exray("snapshot", cwd=d, timeout=60)
            alive = (server.proc.poll(), client.proc.poll())
    assert alive == (None, None), "a target died while being snapshot"
    assert r.returncode == 0, r.stderr
    m = re.search(r"^wrote (.+\.sqlite)$", r.stdout, re.M)
    assert m, r.stdout
    snap = Path(m.group(1))
    assert snap.parent == d / ".exray" / "snapshots" and snap.exists()
    return {"snap": snap, "server_pid": server.pid, "client_pid": client.pid, "job": job,
            "calls": {c["id"]: c for c in calls}, "handles": {h["id"]: h for h in handles},
            "stdout": r.stdout, "stderr": r.stderr}


def test_snapshot_takes_both_targets(inv):
    rows = sql(inv["snap"], "SELECT id, pid, exe, error FROM processes ORDER BY pid")
    assert sorted(int(r["pid"]) for r in rows) == sorted([inv["server_pid"], inv["client_pid"]])
    assert all(r["error"] is None for r in rows), rows
    for pid in (inv["server_pid"], inv["client_pid"]):
        assert re.search(rf"^pid {pid}: \d+ goroutines, paused", inv["stdout"], re.M), inv["stdout"]
    assert sql(inv["snap"], "SELECT * FROM exray_report_errors") == []


def process_ids(inv) -> dict[int, str]:
    """pid -> processes.id of the snapshot (as text, like every parsed cell)."""
    return {int(r["pid"]): r["id"] for r in sql(inv["snap"], "SELECT id, pid FROM processes")}


def longest_call(inv) -> dict:
    [row] = sql(inv["snap"], """
        SELECT c.rowid AS rowid, c.id ->> '$' AS req_id, c.goid, g.wait_ns
        FROM calls c JOIN goroutines g ON g.process_id = c.process_id AND g.goid = c.goid
        ORDER BY g.wait_ns DESC LIMIT 1""")
    return row


def test_longest_blocked_call(inv):
    calls = inv["calls"]
    # The report lists every call the client printed, longest wait first,
    # which is the order the client started them in.
    rows = sql(inv["snap"], "SELECT req_id, kind, wait_ns, goid FROM slow_calls ORDER BY wait_ns DESC")
    assert [r["req_id"] for r in rows] == sorted(calls, key=lambda i: int(calls[i]["started"]))
    assert {r["req_id"]: (r["kind"], r["goid"]) for r in rows} == \
        {i: (c["kind"], c["goid"]) for i, c in calls.items()}
    waits = [int(r["wait_ns"]) for r in rows]
    assert waits == sorted(set(waits), reverse=True), waits      # all different
    top = longest_call(inv)
    assert top["req_id"] == f"req-{FIRST}" and calls[top["req_id"]]["kind"] == "transfer"
    # The client started it; it has waited since about then (stamped by a GC
    # between the warm-up GC and this call's start, see rpcpair's note).
    assert int(top["wait_ns"]) > int(rows[1]["wait_ns"]) + 20_000_000


def links_of(snap: Path, table: str, rowid: str) -> str:
    return ok("links", snap, table, rowid)


def test_link_from_call_to_server_goroutine(inv):
    top = longest_call(inv)
    rid = top["req_id"]
    handler = inv["handles"][rid]
    assert handler["kind"] == "transfer"
    out = links_of(inv["snap"], "calls", top["rowid"])
    assert out.startswith(f"calls #{top['rowid']}\n")
    # The asked row: the client goroutine, in the client process.
    assert f"goroutine {inv['calls'][rid]['goid']} [waiting, select] in process " in out
    assert f"(pid {inv['client_pid']})" in out
    # Exactly one link: to the transfer handler (no quote serves this id).
    assert out.count("\n-> ") == 1 and "<- " not in out, out
    m = re.search(r"^-> served_by_transfer: .*\n\s+transfers #(\d+)\n(?P<body>(?:\s{5}.*\n)+)", out, re.M)
    assert m, out
    body = m.group("body")
    assert re.search(rf"^\s+id = \"?{rid}\"?$", body, re.M), body
    assert re.search(r"^\s+path = \"?/transfer\"?$", body, re.M), body
    assert f"goroutine {handler['goid']} [waiting, sync.Mutex.Lock] in process " in body
    assert f"(pid {inv['server_pid']})" in body
    assert re.search(rf"main\.\(\*server\)\.transfer\n\s+\S+/main\.go:{LOCK_LINE}\n", body), body


def transfer_row(inv) -> dict:
    [row] = sql(inv["snap"], "SELECT rowid, goid, id ->> '$' AS req_id, lock FROM transfers")
    return row


def test_link_from_handler_to_lock_holder(inv):
    t = transfer_row(inv)
    job = inv["job"]
    # The key is the mutex's address, as the server printed it (&l.mu).
    assert t["lock"] == job["lock"] and re.fullmatch(r"[0-9]+", t["lock"])
    out = links_of(inv["snap"], "transfers", t["rowid"])
    assert f"goroutine {inv['handles'][t['req_id']]['goid']} [waiting, sync.Mutex.Lock]" in out
    assert f"lock = {job['lock']}" in out
    m = re.search(r"^-> waits_for_lock: .*\n\s+jobs #(\d+)\n(?P<body>(?:\s{5}.*\n)+)", out, re.M)
    assert m, out
    body = m.group("body")
    assert re.search(rf"^\s+job = \"?{job['name']}\"?$", body, re.M), body
    assert f"lock = {job['lock']}" in body
    # The holder is not waiting for the mutex: it sits on it, elsewhere.
    assert f"goroutine {job['goid']} [waiting, chan receive] in process " in body
    assert f"(pid {inv['server_pid']})" in body
    assert re.search(rf"main\.\(\*ledger\)\.compact\n\s+\S+/main\.go:{HOLD_LINE}\n", body), body
    # ... and back to the client call it holds up.
    assert re.search(r"^<- served_by_transfer: .*\n\s+calls #\d+\n", out, re.M), out
    assert f"(pid {inv['client_pid']})" in out


def test_exactly_one_request_blocked_behind_job(inv):
    snap, job = inv["snap"], inv["job"]
    server = process_ids(inv)[inv["server_pid"]]
    rows = sql(snap, "SELECT req_id, process_id, goid, job, job_goid, lock FROM blocked_behind_job")
    rid = f"req-{FIRST}"
    assert rows == [{"req_id": rid, "process_id": server, "goid": inv["handles"][rid]["goid"],
                     "job": job["name"], "job_goid": job["goid"], "lock": job["lock"]}]
    # The other requests are in flight too, blocked elsewhere (the pricing backend).
    reqs = sql(snap, "SELECT kind, req_id, goid, wait_reason FROM server_requests ORDER BY req_id")
    assert {r["req_id"]: (r["kind"], r["goid"]) for r in reqs} == \
        {i: (h["kind"], h["goid"]) for i, h in inv["handles"].items()}
    assert len(reqs) == 1 + QUOTES
    assert sorted(r["wait_reason"] for r in reqs) == ["select"] * QUOTES + ["sync.Mutex.Lock"]


def test_goroutines_status_shows_blocked_handler(inv):
    out = ok("goroutines", inv["snap"], "--status", "sync.Mutex.Lock")
    assert out.startswith("1 of "), out
    assert "main.(*server).transfer" in out and "sync.Mutex.Lock" in out
    assert str(inv["server_pid"]) in out
    assert "main.(*ledger).compact" not in out and "main.(*client).call" not in out
