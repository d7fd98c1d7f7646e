"""Every `exray` subcommand with bad input: an `error:` line that says what is
true and what to do, a non-zero exit, never a traceback.

Missing files, folders where files go, unreadable files (as an unprivileged
user: root reads everything), binary garbage, arguments of the wrong type,
an exited target, and a non-root user against a root-owned Go process.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from targets import run_target

ROOT = Path(__file__).resolve().parent.parent
EXRAY = [sys.executable, "-m", "server.cli"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ENV.pop("EXRAY_DEBUG", None)


def run(args, cwd, user: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [*EXRAY, *map(str, args)]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user if user != 'nobody' else 'nogroup'}",
               "--clear-groups", *cmd]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def clean_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert r.returncode not in (0, 70), (r.returncode, r.stdout, r.stderr)   # 70: a bug got through
    assert "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    assert line.startswith("error:") or "error: argument" in line, r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)
    return r.stderr


@pytest.fixture(scope="module")
def files():
    """A world-readable folder (so that `nobody` can reach it) with bad inputs."""
    d = Path(tempfile.mkdtemp(prefix="exray-bad-"))
    d.chmod(0o755)
    (d / "folder").mkdir()
    (d / "garbage.bin").write_bytes(bytes(range(256)) * 40)
    (d / "text.txt").write_text("hello\n")
    (d / "secret.yaml").write_text("version: 1\n")
    (d / "secret.yaml").chmod(0o000)
    (d / "secret.sqlite").write_bytes(b"")
    (d / "secret.sqlite").chmod(0o000)
    (d / "out").mkdir()
    (d / "out").chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


SNAPSHOT_READERS = [
    ["goroutines", "{f}"],
    ["sql", "{f}", "SELECT 1"],
    ["links", "{f}", "goroutines", "1"],
    ["export", "{f}", "--format", "pprof", "-o", "{d}/out/x.pb.gz"],
]


@pytest.mark.parametrize("cmd", SNAPSHOT_READERS, ids=lambda c: c[0])
@pytest.mark.parametrize("bad,words", [
    ("missing.sqlite", "no such file"),
    ("folder", "directory"),
    ("garbage.bin", "not an Ex-Ray snapshot"),
    ("text.txt", "not an Ex-Ray snapshot"),
])
def test_snapshot_readers(files, cmd, bad, words):
    args = [a.format(f=files / bad, d=files) for a in cmd]
    clean_error(run(args, files), words)


@pytest.mark.parametrize("bad,words", [
    ("missing.yaml", "no such file"),
    ("folder", "a directory, not a regular file"),
    ("garbage.bin", "not UTF-8 text"),
    ("text.txt", "expected a mapping"),
    ("/dev/zero", "character device"),
])
def test_check_spec(files, bad, words):
    clean_error(run(["check-spec", files / bad], files), words)


def test_check_spec_of_a_binary_that_is_not_one(files):
    (files / "ok.yaml").write_text("version: 1\nfunctions:\n  main.main:\n")
    clean_error(run(["check-spec", files / "ok.yaml", "--binary", files / "text.txt"], files), "ELF")
    clean_error(run(["check-spec", files / "ok.yaml", "--binary", files / "folder"], files))
    clean_error(run(["check-spec", files / "ok.yaml", "--binary", files / "nope"], files), "nope")


@pytest.mark.parametrize("args,words", [
    (["snapshot", "--pid", "abc"], "invalid int value"),
    (["links", "x.sqlite", "t", "row"], "invalid int value"),
    (["sql", "x.sqlite", "SELECT 1", "--max-width", "wide"], "invalid int value"),
    (["export", "x.sqlite", "--format", "svg", "-o", "x"], "invalid choice"),
    (["snapshot", "--pid", "1", "--spec", "{d}/garbage.bin"], "not UTF-8 text"),
    (["snapshot", "--pid", "1", "--spec", "{d}/folder"], "directory"),
    (["snapshot", "--pid", "1", "-o", "{d}/folder"], "is a directory"),
    (["snapshot", "--pid", "1", "-o", "{d}/nowhere/x.sqlite"], "does not exist"),
])
def test_wrong_arguments(files, args, words):
    clean_error(run([a.format(d=files) for a in args], files), words)


# ------------------------------------------------------------ as an unprivileged user

def _can_setpriv() -> bool:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "true"]).returncode == 0


needs_nobody = pytest.mark.skipif(not _can_setpriv(), reason="needs root and setpriv to run as nobody")


@needs_nobody
@pytest.mark.parametrize("args,words", [
    (["check-spec", "{d}/secret.yaml"], "Permission denied"),
    (["goroutines", "{d}/secret.sqlite"], "ermission"),
    (["sql", "{d}/secret.sqlite", "SELECT 1"], "ermission"),
    (["snapshot", "--pid", "1", "-o", "{d}/x.sqlite"], "may not create files"),
])
def test_unreadable_files(files, args, words):
    clean_error(run([a.format(d=files) for a in args], files / "out", user="nobody"), words)


@needs_nobody
def test_non_root_against_a_root_go_process(files, go_build):
    """A root-owned Go process, and `exray snapshot` as nobody: the error
    names ptrace and root, not 'check the path and read permission'."""
    with run_target(go_build("states"), "-extra", "2", "-busy", "0", "-nospin") as t:
        r = run(["snapshot", "--pid", t.pid, "-o", files / "out" / "n.sqlite"], files / "out", user="nobody")
    err = clean_error(r, f"pid {t.pid}", "ptrace", "root")
    assert "check the path" not in err


# ------------------------------------------------------------ an exited target

def test_an_exited_target_says_so(go_build):
    """The process is gone between the listing and the open of its binary."""
    from probe_compiler.errors import BinaryError
    from probe_compiler.gobinary import GoBinary
    from server import snapshot_job
    with run_target(go_build("states"), "-extra", "2", "-busy", "0", "-nospin") as t:
        pid = t.pid
    with pytest.raises(BinaryError) as e:
        GoBinary.open(f"/proc/{pid}/exe")
    assert "not running (it exited" in str(e.value) and "read permission" not in str(e.value)
    why = snapshot_job.load_targets([pid], None, {})[pid].error    # gone before the listing
    assert "no process with pid" in why and "read permission" not in why, why
