"""`exray snapshot` end to end, as a subprocess against real Go processes.

* bad input: a pid that does not exist, a process that is not Go, a spec that
  names a missing function / variable / field, a malformed spec: exit code
  != 0, stderr starts with "error:" and names the problem (with the spec's
  file:line:column for spec problems), never a Python traceback;
* the happy path: snapshot the states program with a spec, then
  `exray goroutines` and `exray sql` on the file.
"""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from targets import run_target

EXRAY = str(Path(sys.prefix) / "bin" / "exray")
N_EXTRA = 37


def exray(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([EXRAY, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def assert_clean_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode != 0, f"exit 0; stdout={r.stdout!r} stderr={r.stderr!r}"
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error:"), r.stderr
    for n in needles:
        assert n in r.stderr, f"{n!r} not in stderr: {r.stderr!r}"


@pytest.fixture(scope="module")
def states(go_build):
    with run_target(go_build("states"), "-extra", str(N_EXTRA), "-busy", "0", "-nospin") as t:
        yield t


# ---------------------------------------------------------------- bad input


def unused_pid() -> int:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(pid_max - 1, 1, -1):
        if not Path(f"/proc/{pid}").exists():
            return pid
    raise AssertionError("no free pid")


def test_pid_that_does_not_exist(tmp_path):
    pid = unused_pid()
    r = exray("snapshot", "--pid", pid, "-o", tmp_path / "s.sqlite")
    assert_clean_error(r, str(pid), "no process")


def test_process_that_is_not_go(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        r = exray("snapshot", "--pid", sleeper.pid, "-o", tmp_path / "s.sqlite")
        assert sleeper.poll() is None, "the non-Go process was harmed"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert_clean_error(r, str(sleeper.pid), "not built by the Go toolchain")


def write_spec(tmp_path: Path, text: str) -> Path:
    # Named exray.yaml (as users do) inside a private folder: the message must
    # carry the path we passed, so we can tell it from a hard-coded default.
    d = tmp_path / "svc"
    d.mkdir(exist_ok=True)
    p = d / "exray.yaml"
    p.write_text(text)
    return p


def test_spec_missing_function(states, tmp_path):
    spec = write_spec(tmp_path, """\
version: 1
functions:
  main.blockedMutex:
  main.noSuchFunction:
    capture:
      - x
""")
    r = exray("snapshot", "--pid", states.pid, "--spec", spec, "-o", tmp_path / "s.sqlite")
    assert_clean_error(r, f"{spec}:4:3", "main.noSuchFunction")
    assert states.proc.poll() is None


def test_spec_missing_variable(states, tmp_path):
    spec = write_spec(tmp_path, """\
version: 1
functions:
  main.blockedConnRead:
    capture:
      - c
      - nosuchvar
""")
    r = exray("snapshot", "--pid", states.pid, "--spec", spec, "-o", tmp_path / "s.sqlite")
    assert_clean_error(r, f"{spec}:6:9", "nosuchvar", "no variable")


def test_spec_missing_field(states, tmp_path):
    spec = write_spec(tmp_path, """\
version: 1
functions:
  main.(*server).handle:
    capture:
      - s.name
      - s.nosuchfield
""")
    r = exray("snapshot", "--pid", states.pid, "--spec", spec, "-o", tmp_path / "s.sqlite")
    assert_clean_error(r, f"{spec}:6:9", "nosuchfield", "no field")


def test_spec_malformed(states, tmp_path):
    spec = write_spec(tmp_path, "version: 1\nfunctions:\n  main.blockedMutex: [capture\n")
    r = exray("snapshot", "--pid", states.pid, "--spec", spec, "-o", tmp_path / "s.sqlite")
    assert_clean_error(r, f"{spec}:", "invalid YAML")
    spec2 = write_spec(tmp_path, "version: 1\nfunctions:\n  main.blockedMutex:\n    captur:\n      - x\n")
    r = exray("snapshot", "--pid", states.pid, "--spec", spec2, "-o", tmp_path / "s.sqlite")
    assert_clean_error(r, f"{spec2}:4:5", "unknown key 'captur'")


def test_spec_file_missing(states, tmp_path):
    r = exray("snapshot", "--pid", states.pid, "--spec", tmp_path / "nope.yaml", "-o", tmp_path / "s.sqlite")
    assert_clean_error(r, "nope.yaml", "no such file")


# ---------------------------------------------------------------- end to end

SPEC = """\
version: 1
functions:
  main.(*server).handle:
    table: handle
    capture:
      - s.name
      - expr: len(s.reqs)
        name: queued
  main.blockedMutex:
"""


@pytest.fixture(scope="module")
def snap(states, tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    spec = d / "exray.yaml"
    spec.write_text(SPEC)
    out = d / "snap.sqlite"
    r = exray("snapshot", "--pid", states.pid, "--spec", spec, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert re.search(rf"pid {states.pid}: \d+ goroutines, paused [\d.]+ ms", r.stdout), r.stdout
    assert out.exists()
    return out


def groups(text: str) -> list[tuple[str, list[str]]]:
    """`exray goroutines` output -> [(header, function lines)]."""
    out = []
    for block in text.split("\n\n"):
        lines = block.strip("\n").splitlines()
        if lines and re.match(r"\d+ goroutines? \[", lines[0]):
            out.append((lines[0], [ln for ln in lines[1:] if not ln.startswith("\t")]))
    return out


def test_goroutines_command(snap, states):
    r = exray("goroutines", snap)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert f"pid {states.pid}" in text
    gs = groups(text)
    [mutex] = [g for g in gs if "main.blockedMutex" in g[1]]
    assert mutex[0].startswith("1 goroutine [sync.Mutex.Lock]"), mutex[0]
    assert "sync.(*Mutex).Lock" in mutex[1]
    [extra] = [g for g in gs if "main.extraWaiter" in g[1]]
    assert extra[0].startswith(f"{N_EXTRA} goroutines [chan receive]"), extra[0]
    assert extra[1][0] == "main.extraWaiter"
    assert extra[1][-1].startswith("created by main.main")
    # the one-line summary counts every goroutine: 26 named ones + the extras + runtime ones
    m = re.search(r"(\d+) goroutines in \d+ groups", text)
    assert m and int(m.group(1)) >= N_EXTRA + 25


def test_sql_command(snap, states):
    r = exray("sql", snap, "SELECT count(*) AS n FROM frames WHERE function = 'main.extraWaiter'")
    assert r.returncode == 0, r.stderr
    assert re.search(rf"^\s*{N_EXTRA}\s*$", r.stdout, re.M), r.stdout

    r = exray("sql", snap, "SELECT g.status, g.wait_reason FROM goroutines g JOIN frames f "
                           "USING (process_id, goid) WHERE f.function = 'main.blockedMutex'")
    assert r.returncode == 0, r.stderr
    assert "sync.Mutex.Lock" in r.stdout and "waiting" in r.stdout and "(1 row)" in r.stdout

    r = exray("sql", snap, "SELECT s_name, queued, _errors FROM handle")
    assert r.returncode == 0, r.stderr
    assert '"srv"' in r.stdout and "(1 row)" in r.stdout, r.stdout

    r = exray("sql", snap, "SELECT count(*) FROM main_blockedMutex")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^\s*1\s*$", r.stdout, re.M), r.stdout

    r = exray("sql", snap, "SELECT pid, error FROM processes")
    assert r.returncode == 0 and str(states.pid) in r.stdout


def test_snapshot_matches_the_file(snap, states):
    """What the CLI printed is what the file holds (read with plain sqlite3)."""
    db = sqlite3.connect(snap)
    try:
        [(pid, err, pause)] = db.execute("SELECT pid, error, pause_ns FROM processes").fetchall()
        n = db.execute("SELECT count(*) FROM goroutines").fetchone()[0]
        [(v, q)] = db.execute("SELECT s_name, queued FROM handle").fetchall()
    finally:
        db.close()
    assert pid == states.pid and err is None and pause > 0
    assert n >= N_EXTRA + 25
    assert (json.loads(v), json.loads(q)) == ("srv", 0)   # columns hold JSON text (docs/snapshot-schema.md)


def test_bad_sql_is_a_clean_error(snap):
    r = exray("sql", snap, "SELECT nope FROM nowhere")
    assert_clean_error(r, "nowhere")
