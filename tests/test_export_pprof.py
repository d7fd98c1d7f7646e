"""`exray export --format pprof`, read back by the real `go tool pprof`.

A real snapshot of two tests/goprogs/parkers processes (different numbers of
goroutines in main.parkChan) is exported; `go tool pprof -traces` and `-top`
must print, per stack, the goroutine counts that SQL over the snapshot gives.
The profile is also decoded in Python to check what pprof's text hides
(inline Lines, Mapping, string table).
"""
from __future__ import annotations

import gzip
import json
import re
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from gobuild import go_env, go_exe
from targets import run_target

EXRAY = str(Path(sys.prefix) / "bin" / "exray")
SPEC = """\
version: 1
functions:
  main.parkChan:
    capture: [id]
    columns:
      id_times_10: "id * 10"
  main.parkLabeled:
    capture: [sku]
  main.parkInlined:
    capture: [s.name]
"""
CHAN = (5, 2)   # main.parkChan goroutines in the first and the second process


def exray(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([EXRAY, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def snapshot_parkers(go_build, out: Path) -> list[int]:
    """Snapshot two parkers processes into `out`; returns their pids."""
    binary = go_build("parkers")
    spec = out.parent / "exray.yaml"
    spec.write_text(SPEC)
    with run_target(binary, "-chan", str(CHAN[0])) as a, run_target(binary, "-chan", str(CHAN[1])) as b:
        r = exray("snapshot", "--pid", a.pid, "--pid", b.pid, "--spec", spec, "-o", out)
        assert r.returncode == 0, r.stderr
        return [a.pid, b.pid]


@pytest.fixture(scope="module")
def parkers_snap(go_build, tmp_path_factory):
    out = tmp_path_factory.mktemp("parkers") / "snap.sqlite"
    pids = snapshot_parkers(go_build, out)
    return out, pids


@pytest.fixture(scope="module")
def profile(parkers_snap):
    snap, _ = parkers_snap
    out = snap.parent / "goroutines.pb.gz"
    r = exray("export", snap, "--format", "pprof", "-o", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}: goroutine profile of ")
    return out


def go_pprof(*args, cwd: Path) -> str:
    env = go_env()
    env.update(GOFLAGS="", GOPROXY="off", PPROF_TMPDIR=str(cwd), HOME=str(cwd))
    r = subprocess.run([go_exe(), "tool", "pprof", "-symbolize=none", *map(str, args)],
                       capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


# ------------------------------------------------------------ what SQL says

def sql_stacks(snap: Path) -> Counter:
    """(pid, functions outermost-last, sorted labels) -> goroutines, from the snapshot."""
    db = sqlite3.connect(snap)
    try:
        frames: dict[tuple, list[str]] = {}
        for p, goid, fn in db.execute("SELECT process_id, goid, function FROM frames ORDER BY process_id, goid, depth"):
            frames.setdefault((p, goid), []).append(fn)
        out: Counter = Counter()
        for p, pid, goid, status, reason, labels in db.execute(
                "SELECT p.id, p.pid, g.goid, g.status, g.wait_reason, g.labels FROM goroutines g "
                "JOIN processes p ON p.id = g.process_id WHERE NOT g.is_system"):
            lab = {"state": status, **json.loads(labels or "{}")}
            if reason:
                lab["wait_reason"] = reason
            out[str(pid), tuple(frames.get((p, goid), [])), tuple(sorted(lab.items()))] += 1
        return out
    finally:
        db.close()


# ------------------------------------------------------- what pprof prints

def parse_traces(text: str) -> Counter:
    """`pprof -traces` -> the same keys as sql_stacks (host/exe labels dropped)."""
    out: Counter = Counter()
    for block in text.split("-----------+-------------------------------------------------------")[1:]:
        labels, count, fns = {}, None, []
        for line in block.strip("\n").splitlines():
            if count is None and (m := re.match(r"\s*([\w.]+):\s+(.*)$", line)):
                labels[m.group(1)] = m.group(2).strip()
            elif count is None and (m := re.match(r"\s*(\d+)\s+(\S.*)$", line)):
                count, fns = int(m.group(1)), [m.group(2)]
            elif line.strip():
                fns.append(line.strip())
        if count is None:          # the closing rule
            continue
        fns = [re.sub(r" \(inline\)$", "", f) for f in fns]
        pid = labels.pop("pid")
        labels.pop("host", None)
        labels.pop("exe", None)
        out[pid, tuple(fns), tuple(sorted(labels.items()))] += count
    return out


def test_traces_match_the_snapshot(parkers_snap, profile):
    snap, pids = parkers_snap
    got = parse_traces(go_pprof("-traces", profile, cwd=profile.parent))
    want = sql_stacks(snap)
    assert got == want
    # the processes stay apart: each pid's own main.parkChan count
    for pid, n in zip(pids, CHAN):
        assert sum(c for (p, fns, _), c in got.items() if p == str(pid) and "main.parkChan" in fns) == n
    # the goroutines' own pprof labels, next to ours
    labeled = [k for k in got if "main.parkLabeled" in k[1]]
    assert {dict(k[2])["shard"] for k in labeled} == {"0", "1"}
    assert all(dict(k[2])["handler"] == "checkout" and dict(k[2])["wait_reason"] == "chan receive"
               for k in labeled)


def parse_top(text: str) -> dict[str, tuple[int, int]]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"\s*(\d+)\s+[\d.]+%\s+[\d.]+%\s+(\d+)\s+[\d.]+%\s+(.+?)( \(inline\))?$", line)
        if m:
            out[m.group(3)] = (int(m.group(1)), int(m.group(2)))
    return out


def test_top_matches_the_snapshot(parkers_snap, profile):
    snap, _ = parkers_snap
    text = go_pprof("-top", "-nodecount=1000", profile, cwd=profile.parent)
    assert "Type: goroutine" in text
    top = parse_top(text)
    db = sqlite3.connect(snap)
    try:
        on_stack = {fn: n for fn, n in db.execute(
            "SELECT f.function, count(DISTINCT g.process_id || ':' || g.goid) FROM goroutines g "
            "JOIN frames f USING (process_id, goid) WHERE NOT g.is_system GROUP BY f.function")}
        total = db.execute("SELECT count(*) FROM goroutines WHERE NOT is_system").fetchone()[0]
        innermost = db.execute("SELECT count(*) FROM goroutines g JOIN frames f USING (process_id, goid) "
                               "WHERE NOT g.is_system AND f.depth = 0 AND f.function = 'runtime.gopark'").fetchone()[0]
    finally:
        db.close()
    assert re.search(rf"accounting for {total}, 100% of {total} total", text), text
    for fn in ("main.parkChan", "main.parkMutex", "main.parkLabeled", "main.lookup", "main.parkInlined"):
        assert top[fn][1] == on_stack[fn], fn
    assert on_stack["main.parkChan"] == sum(CHAN)
    assert {fn: cum for fn, (_, cum) in top.items()} == on_stack   # every function, not just ours
    assert top["runtime.gopark"][0] == innermost


def test_tagroot_gives_one_root_per_process(parkers_snap, profile):
    _, pids = parkers_snap
    text = go_pprof("-traces", "-tagroot=pid", profile, cwd=profile.parent)
    roots = Counter()
    for block in text.split("-----------+")[1:]:
        lines = [ln for ln in block.splitlines()[1:] if ln.strip()]
        if lines:
            roots[lines[-1].strip()] += 1
    assert set(roots) == {str(p) for p in pids}   # pprof names the pseudo-frame by the value


# --------------------------------------------------- the decoded profile

def test_profile_structure(parkers_snap, profile):
    from server.proto import profile_pb2
    snap, pids = parkers_snap
    prof = profile_pb2.Profile.FromString(gzip.decompress(profile.read_bytes()))
    s = prof.string_table
    assert s[0] == ""
    assert [(s[t.type], s[t.unit]) for t in prof.sample_type] == [("goroutine", "count")]
    assert (s[prof.period_type.type], s[prof.period_type.unit], prof.period) == ("goroutine", "count", 1)
    db = sqlite3.connect(snap)
    try:
        procs = db.execute("SELECT id, exe, build_id FROM processes ORDER BY id").fetchall()
        [(inl_pc,)] = db.execute("SELECT pc FROM frames WHERE function = 'main.lookup'").fetchall()[:1]
    finally:
        db.close()
    assert [(m.id, s[m.filename], s[m.build_id]) for m in prof.mapping] == procs
    assert all(m.has_inline_frames and m.memory_start <= m.memory_limit for m in prof.mapping)
    # the inlined call: one Location, innermost Line first, at the physical frame's pc
    funcs = {f.id: (s[f.name], s[f.filename]) for f in prof.function}
    inl = [loc for loc in prof.location if [funcs[ln.function_id][0] for ln in loc.line] ==
           ["main.lookup", "main.parkInlined"]]
    assert inl and all(loc.address == inl_pc for loc in inl[:1])
    assert all(funcs[ln.function_id][1].endswith("main.go") for ln in inl[0].line)
    assert len({loc.id for loc in prof.location}) == len(prof.location)
    assert all(0 < ln.function_id <= len(prof.function) for loc in prof.location for ln in loc.line)
    assert sum(smp.value[0] for smp in prof.sample) == sum(sql_stacks(snap).values())


def test_export_errors(tmp_path):
    bad = tmp_path / "x.sqlite"
    bad.write_text("nope")
    r = exray("export", bad, "--format", "pprof", "-o", tmp_path / "p.pb.gz")
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


# ------------------------------------------------- without a Go process

def test_build_keeps_processes_apart(tmp_path):
    """Two processes with the same exe and the same stack: two samples, two
    Mappings; a process that failed and system goroutines are left out."""
    from agent.records import FrameRecord, GoroutineRecord, ProcessRecord
    from server import export, pprof
    from server.store import open_snapshot, write_snapshot

    def g(goid, system=False, labels=None):
        return GoroutineRecord(goid, "waiting", "chan receive", None, None, None, None, None, labels or {},
                               system, None,
                               [FrameRecord(0, "main.leaf", "/m.go", 3, 0x401010, inlined=True),
                                FrameRecord(1, "main.mid", "/m.go", 7, 0x401010, inlined=True),
                                FrameRecord(2, "main.root", "/m.go", 9, 0x401010),
                                FrameRecord(3, "runtime.goexit", "/asm.s", 1, 0x402000, hidden=True)])
    procs = [ProcessRecord(10, "h", "/bin/app", "bid", goroutines=[g(1), g(2), g(3, system=True)]),
             ProcessRecord(11, "h", "/bin/app", "bid", goroutines=[g(1, labels={"n": 7})]),
             ProcessRecord(12, "h", "", error="permission denied")]
    write_snapshot(tmp_path / "s.sqlite", procs, [])
    db = open_snapshot(tmp_path / "s.sqlite")
    try:
        prof = pprof.build(*export.load(db))
    finally:
        db.close()
    s = prof.string_table
    samples = sorted((dict((s[lb.key], s[lb.str]) for lb in smp.label)["pid"], smp.value[0],
                      dict((s[lb.key], s[lb.str]) for lb in smp.label).get("n")) for smp in prof.sample)
    assert samples == [("10", 2, None), ("11", 1, "7")]     # non-string labels as JSON text
    assert [(m.id, m.memory_start, m.memory_limit) for m in prof.mapping] == [(1, 0x401000, 0x403000),
                                                                           (2, 0x401000, 0x403000)]
    funcs = {f.id: s[f.name] for f in prof.function}
    chains = {tuple(funcs[ln.function_id] for ln in loc.line) for loc in prof.location}
    assert chains == {("main.leaf", "main.mid", "main.root"), ("runtime.goexit",)}
    assert len(prof.location) == 4          # per process: its own Locations
