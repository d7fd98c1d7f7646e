"""Three "hosts" (network namespaces on one bridge), each with its own
`exray agent` on TCP with a bearer token and three Go processes, and a
control plane in a fourth: one `exray snapshot --agent ... x3` gives one
snapshot whose links tie client goroutines on h2 and h3 to the server
goroutines on h1 serving them. Then the faults: an agent restarted, slower
than the deadline, partitioned off, killed mid-pause, and a wrong token.
Every fault is reported in processes.error, the snapshot completes, and
every target is left alive, untraced and running."""
from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netns import Fleet, missing
from targets import run_target

from agent_helpers import LINKPAIR_SPEC as SPEC, tracer_pid, write_token

EXRAY = str(Path(sys.prefix) / "bin" / "exray")
HOSTS = ["h1", "h2", "h3"]
PORT = 7701

why = missing()
pytestmark = pytest.mark.skipif(why is not None, reason=f"this machine lacks what the hosts need: {why}")


class Cluster:
    def __init__(self, net: Fleet, d: Path, stack: contextlib.ExitStack):
        self.net, self.d, self.stack = net, d, stack
        self.agents: dict[str, subprocess.Popen] = {}
        self.targets: dict[str, list] = {h: [] for h in HOSTS}
        self.token = write_token(d / "token", "control-plane")
        (d / "exray.yaml").write_text(SPEC)

    def addr(self, host: str) -> str:
        return f"{self.net.ip(host)}:{PORT}"

    def audit(self, host: str) -> list[dict]:
        return [json.loads(x) for x in (self.d / f"audit-{host}.jsonl").read_text().splitlines()]

    def start_agent(self, host: str, env: dict | None = None, extra: tuple = ()) -> subprocess.Popen:
        argv = self.net.argv(host, [EXRAY, "agent", "--listen", f"tcp:{self.addr(host)}",
                                    "--token-file", self.token, "--allow-exe", f"{self.d / host}/*",
                                    "--host-name", host, "--min-interval", "0",
                                    "--audit-log", self.d / f"audit-{host}.jsonl", *extra,
                                    # for the docs' figure of both modes (docs/agent.md)
                                    *(["--sequential-pauses"] if os.environ.get("EXRAY_TEST_SEQUENTIAL_PAUSES")
                                      else [])])
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(self.d / f"agent-{host}.err", "ab"),
                             env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 60
        buf = b""
        while b"listening on" not in buf:
            r, _, _ = select.select([p.stdout], [], [], 1)
            if r:
                chunk = os.read(p.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent on {host} did not start: {(self.d / f'agent-{host}.err').read_text()}")
        self.agents[host] = p
        return p

    def stop_agent(self, host: str, sig=signal.SIGTERM) -> None:
        p = self.agents.pop(host)
        if p.poll() is None:
            p.send_signal(sig)
        p.wait(30)

    def restart_agent(self, host: str, **kw) -> subprocess.Popen:
        self.stop_agent(host)
        return self.start_agent(host, **kw)

    def snapshot_argv(self, out: Path, *extra: str, token: Path | None = None) -> list[str]:
        agents = [a for h in HOSTS for a in ("--agent", self.addr(h))]
        return self.net.argv("ctl", [EXRAY, "snapshot", *agents, "--agent-token-file", token or self.token,
                                     "--spec", self.d / "exray.yaml", "-o", out, *extra])

    def snapshot(self, out: Path, *extra: str, token: Path | None = None):
        return subprocess.run(self.snapshot_argv(out, *extra, token=token), capture_output=True, text=True,
                              timeout=300, env={**os.environ, "EXRAY_DEBUGINFO_CACHE": str(self.d / "cache")})

    def tickers(self, host: str):
        return [t for t in self.targets[host] if t.kind == "ticker"]


def ticks(t) -> int:
    """Ticks of its 1 ms watchdog since the last call."""
    t.proc.stdin.write(b"gap\n")
    t.proc.stdin.flush()
    return int(re.search(r"ticks=(\d+)", t.wait_line("GAP", 30)).group(1))


def assert_running(t) -> None:
    """Alive, traced by nobody, and its 1 ms ticker moving."""
    assert t.proc.poll() is None, f"pid {t.pid} died"
    assert tracer_pid(t.pid) == 0, f"pid {t.pid} is still traced"
    ticks(t)                  # counts from here
    time.sleep(0.2)
    assert ticks(t) > 0, f"pid {t.pid} makes no progress"


@pytest.fixture(scope="module")
def cluster(go_build, tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet")
    binaries = {"linkpair": go_build("linkpair"), "ptrace_target": go_build("ptrace_target")}
    with contextlib.ExitStack() as stack, Fleet(HOSTS) as net:
        c = Cluster(net, d, stack)
        for h in HOSTS:
            (d / h).mkdir()
            for name, path in binaries.items():
                shutil.copy2(path, d / h / name)
            c.start_agent(h)
        stack.callback(lambda: [c.stop_agent(h, signal.SIGKILL) for h in list(c.agents)])

        def start(host, kind, name, *args):
            t = stack.enter_context(run_target("ip", "netns", "exec", net.ns(host), d / host / name, *args,
                                               dump=False, ready_timeout=60))
            t.kind, t.host = kind, host
            c.targets[host].append(t)
            return t

        server = start("h1", "server", "linkpair", "-serve", d / "addr", "-expect", "4",
                       "-listen", f"{net.ip('h1')}:0")
        start("h2", "client", "linkpair", "-connect", d / "addr", "-n", "2", "-first", "10")
        start("h3", "client", "linkpair", "-connect", d / "addr", "-n", "2", "-first", "20")
        server.wait_line("PARKED", 60)
        for h in HOSTS:
            start(h, "ticker", "ptrace_target")
            start(h, "self", "linkpair", "-self", "2", "-first", str(100 * (HOSTS.index(h) + 1)))
        yield c


def rows(path: Path, sql: str):
    from server.store import open_snapshot
    db = open_snapshot(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_one_snapshot_across_three_hosts(cluster):
    from server.links import linked_rows
    from server.store import open_snapshot
    out = cluster.d / "three.sqlite"
    r = cluster.snapshot(out)
    assert r.returncode == 0, r.stderr
    procs = rows(out, "SELECT host, pid, error, pause_ns, skew_ns, clock_offset_ns, agent FROM processes")
    assert sorted(p[0] for p in procs) == ["h1"] * 3 + ["h2"] * 3 + ["h3"] * 3
    assert all(p[2] is None for p in procs), [p[2] for p in procs]
    db = open_snapshot(out)
    crossing = set()
    for rowid, call_id, host in db.execute(
            "SELECT calls.rowid, calls.id, p.host FROM calls JOIN processes p ON p.id = calls.process_id "
            "WHERE p.host != 'h1' AND CAST(calls.id AS INTEGER) < 100"):
        [link] = linked_rows(db, "calls", rowid)
        assert link.goroutine.pid == cluster.targets["h1"][0].pid and link.frame.function == "main.handle"
        crossing.add((host, int(call_id), link.values["req_id"]))
    assert crossing == {("h2", 10, 10), ("h2", 11, 11), ("h3", 20, 20), ("h3", 21, 21)}
    fleet = json.loads(dict(db.execute("SELECT key, value FROM meta"))["fleet"])
    db.close()
    figure = {"processes": len(procs), "hosts": 3, "wall_ms": fleet["wall_ns"] / 1e6,
              "largest_pause_ms": fleet["max_pause_ns"] / 1e6, "skew_spread_ms": fleet["skew_spread_ns"] / 1e6,
              "clock_uncertainty_ms": fleet["max_clock_uncertainty_ns"] / 1e6}
    print("FIGURE", json.dumps(figure))
    (cluster.d / "figure.json").write_text(json.dumps(figure))
    assert "pause instants within" in r.stdout
    for h in HOSTS:
        [done] = [e for e in cluster.audit(h) if e["method"] == "RunPlan" and e["outcome"] == "ok"][-1:]
        assert done["who"] == "control-plane" and done["spec"].endswith("exray.yaml")
        assert sorted(done["pids"]) == sorted(t.pid for t in cluster.targets[h])
        for t in cluster.tickers(h):
            assert_running(t)


def test_agent_restarted_between_snapshots(cluster):
    assert cluster.snapshot(cluster.d / "before.sqlite").returncode == 0
    cluster.restart_agent("h2")
    r = cluster.snapshot(cluster.d / "after.sqlite")
    assert r.returncode == 0, r.stderr
    assert rows(cluster.d / "after.sqlite", "SELECT count(*) FROM processes WHERE error IS NULL") == [(9,)]


def test_agent_slower_than_deadline(cluster):
    cluster.restart_agent("h2", env={"EXRAY_AGENT_TEST_DELAY_S": "60"})
    try:
        out = cluster.d / "slow.sqlite"
        r = cluster.snapshot(out, "--deadline", "4")
        assert r.returncode == 0, r.stderr
        got = rows(out, "SELECT host, error FROM processes ORDER BY id")
        assert [h for h, e in got if e] == ["h2"] * 3, got
        # Both ends keep the deadline: the control plane's "no answer" or, when the
        # agent's own give-up reached it first, the agent's word for it.
        assert all(("no answer within the deadline" in e and cluster.addr("h2") in e)
                   or "deadline passed before the pause instant" in e for h, e in got if e), got
        # The agent gave up too, on its own clock, before pausing anything.
        deadline = time.monotonic() + 30
        while not any("deadline passed before the pause" in json.dumps(e.get("errors"))
                      for e in cluster.audit("h2") if e["method"] == "RunPlan"):
            assert time.monotonic() < deadline, cluster.audit("h2")[-3:]
            time.sleep(0.2)
        for t in cluster.tickers("h2"):
            assert_running(t)
    finally:
        cluster.restart_agent("h2")


def test_network_partition(cluster):
    cluster.net.link("h3", up=False)
    try:
        out = cluster.d / "partition.sqlite"
        r = cluster.snapshot(out, "--deadline", "4")
        assert r.returncode == 0, r.stderr
        got = rows(out, "SELECT host, pid, error FROM processes ORDER BY id")
        assert [(h, p) for h, p, e in got if e] == [(cluster.addr("h3"), 0)]
        [(_, _, e)] = [g for g in got if g[2]]
        assert e.startswith(f"agent {cluster.addr('h3')}: ") and ("unreachable" in e or "deadline" in e)
        assert sum(1 for g in got if not g[2]) == 6
    finally:
        cluster.net.link("h3", up=True)
    for t in cluster.tickers("h3"):
        assert_running(t)


def test_agent_killed_mid_pause(cluster):
    agent = cluster.restart_agent("h3", env={"EXRAY_AGENT_TEST_HOLD_S": "120"}, extra=("--max-pause", "300"))
    ticker = cluster.tickers("h3")[0]
    first = min(cluster.targets["h3"], key=lambda t: t.pid)   # paused first: held there
    out = cluster.d / "killed.sqlite"
    snap = subprocess.Popen(cluster.snapshot_argv(out, "--deadline", "120"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EXRAY_DEBUGINFO_CACHE": str(cluster.d / "cache")})
    try:
        deadline = time.monotonic() + 120
        # TracerPid names the tracing thread: one of the agent's.
        while not (tracer_pid(first.pid) and os.path.exists(f"/proc/{agent.pid}/task/{tracer_pid(first.pid)}")):
            assert time.monotonic() < deadline and snap.poll() is None, "the agent never paused the target"
            time.sleep(0.05)
        with open(f"/proc/{first.pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] == "t"          # stopped by its tracer
        agent.kill()
        stdout, stderr = snap.communicate(timeout=120)
    finally:
        if snap.poll() is None:
            snap.kill()
        held = cluster.agents.pop("h3")
        if held.poll() is None:     # the test failed before killing it: nothing is left running
            held.kill()
        held.wait(30)
        cluster.start_agent("h3")
    assert snap.returncode == 0, stderr
    got = rows(out, "SELECT host, error FROM processes ORDER BY id")
    lost = [e for h, e in got if h == "h3"]
    assert len(lost) == 3 and all("lost before it sent this process" in e for e in lost), lost
    assert sum(1 for h, e in got if e is None) == 6
    for t in cluster.targets["h3"]:
        assert t.proc.poll() is None and tracer_pid(t.pid) == 0
    assert_running(ticker)


def test_wrong_token_is_refused(cluster, tmp_path):
    wrong = write_token(tmp_path / "wrong", "intruder")
    out = cluster.d / "wrong.sqlite"
    r = cluster.snapshot(out, token=wrong)
    assert r.returncode == 1
    got = rows(out, "SELECT host, error FROM processes")
    assert len(got) == 3 and all("refused our credentials" in e for _, e in got)
    for h in HOSTS:
        assert cluster.audit(h)[-1]["outcome"] == "refused: no valid bearer token"
        for t in cluster.targets[h]:
            assert tracer_pid(t.pid) == 0


def test_spec_targets_name_agents(cluster):
    """No --agent: the spec's targets say which agent and which exe there."""
    spec = cluster.d / "targets.yaml"
    spec.write_text(SPEC.replace("version: 1\n", f"version: 1\ntargets:\n  - exe: linkpair\n"
                                                 f"    agent: {cluster.addr('h1')}\n"))
    out = cluster.d / "targets.sqlite"
    r = subprocess.run(cluster.net.argv("ctl", [EXRAY, "snapshot", "--spec", spec, "-o", out,
                                                "--agent-token-file", cluster.token]),
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "EXRAY_DEBUGINFO_CACHE": str(cluster.d / "cache")})
    assert r.returncode == 0, r.stderr
    got = rows(out, "SELECT host, pid, error FROM processes ORDER BY pid")
    h1 = sorted(t.pid for t in cluster.targets["h1"] if t.kind != "ticker")
    assert got == [("h1", pid, None) for pid in h1]
