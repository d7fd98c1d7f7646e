"""The exray command, run as a subprocess on snapshots written by the store, and
the pure formatters against golden files (EXRAY_UPDATE_GOLDEN=1 rewrites them)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.records import FrameRecord, GoroutineRecord, ProcessRecord
from server import format as fmt
from server.store import write_snapshot
from test_store import TABLES, sample_processes

EXRAY = str(Path(sys.prefix) / "bin" / "exray")
GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("EXRAY_UPDATE_GOLDEN") == "1"


def golden(name: str, got: str) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        path.write_text(got)
    assert got == path.read_text()


def exray(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([EXRAY, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=60)


def stacks_processes() -> list[ProcessRecord]:
    def worker(goid, wait, line=42):
        return GoroutineRecord(
            goid, "waiting", "chan receive", wait, "main.main", "/src/main.go", 20, 1, {}, False, None,
            [FrameRecord(0, "runtime.gopark", "/go/src/runtime/proc.go", 435, 1, hidden=True),
             FrameRecord(1, "runtime.chanrecv1", "/go/src/runtime/chan.go", 489, 2, hidden=True),
             FrameRecord(2, "main.worker", "/src/main.go", line, 3),
             FrameRecord(3, "main.main.gowrap1", "/src/main.go", 20, 4, hidden=True)])
    gs = [worker(10, 2_000_000_000), worker(11, 312_000_000_000), worker(12, 5_000), worker(13, None, line=43),
          GoroutineRecord(1, "running", "", None, None, None, None, None, {}, False, 77,
                          [FrameRecord(0, "main.spin", "/src/main.go", 60, 5, inlined=True),
                           FrameRecord(1, "main.main", "/src/main.go", 25, 5)]),
          GoroutineRecord(2, "waiting", "force gc (idle)", 10**12, "runtime.init.7", "/go/src/runtime/proc.go",
                          300, None, {}, True, None,
                          [FrameRecord(0, "runtime.gopark", "/go/src/runtime/proc.go", 435, 1, hidden=True),
                           FrameRecord(1, "runtime.forcegchelper", "/go/src/runtime/proc.go", 310, 6, hidden=True)]),
          GoroutineRecord(30, "syscall", "", None, "main.main", "/src/main.go", 22, 1, {}, False, 78,
                          [FrameRecord(0, "syscall.read", "/go/src/syscall/zsyscall.go", 736, 7)],
                          error="unwind stopped at 0x0: no frame pointer")]
    return [ProcessRecord(4242, "host-a", "/srv/app", "b", "go1.27.0", captured_at_ns=1, pause_ns=1_300_000,
                          goroutines=gs, warnings=["2 goroutines changed state while reading"]),
            ProcessRecord(99, "host-b", "/srv/other", error="permission denied: ptrace")]


@pytest.fixture(scope="module")
def snaps(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("snaps")
    write_snapshot(d / "stacks.sqlite", stacks_processes(), [])
    write_snapshot(d / "data.sqlite", sample_processes(), TABLES)
    return {"stacks": d / "stacks.sqlite", "data": d / "data.sqlite", "dir": d}


def test_goroutines(snaps):
    r = exray("goroutines", snaps["stacks"])
    assert r.returncode == 0, r.stderr
    golden("goroutines.txt", r.stdout)


def test_goroutines_all(snaps):
    r = exray("goroutines", snaps["stacks"], "--all")
    assert r.returncode == 0, r.stderr
    golden("goroutines_all.txt", r.stdout)


def test_sql(snaps):
    r = exray("sql", snaps["data"], "SELECT goid, req_ID, mu_state, raw_mu_state, _errors FROM getinfo "
              "UNION ALL SELECT goid, n, NULL, NULL, _errors FROM main_worker")
    assert r.returncode == 0, r.stderr
    golden("sql_captures.txt", r.stdout)
    q = "SELECT goid, status, wait_reason, wait_ns, labels FROM goroutines ORDER BY goid"
    r = exray("sql", snaps["data"], q, "--raw")
    assert r.returncode == 0, r.stderr
    golden("sql_goroutines.txt", r.stdout)
    r = exray("sql", snaps["data"], q)       # wait_ns shown as a Go duration
    assert r.returncode == 0, r.stderr
    golden("sql_goroutines_display.txt", r.stdout)


@pytest.mark.parametrize("query, message", [
    ("SELECT * FROM nope", "error: no such table: nope"),
    ("SELEC 1", 'error: near "SELEC": syntax error'),
    ("DELETE FROM processes", "error: not allowed: DELETE on processes (a snapshot is read-only here)"),
])
def test_sql_errors(snaps, query, message):
    r = exray("sql", snaps["data"], query)
    assert (r.returncode, r.stderr.strip(), r.stdout) == (2, message, "")


def test_not_a_snapshot(snaps):
    bad = snaps["dir"] / "x.sqlite"
    bad.write_text("not sqlite")
    for args in (("goroutines", bad), ("sql", bad, "SELECT 1")):
        r = exray(*args)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert r.stderr == f"error: {bad} is not an Ex-Ray snapshot (not a SQLite database)\n"


def test_check_spec(tmp_path):
    (tmp_path / "exray.yaml").write_text("version: 1\nfunctions:\n  main.(*s).Get:\n    capture: [req.ID]\n")
    r = exray("check-spec", cwd=tmp_path)
    assert r.returncode == 0 and "main.(*s).Get -> table main_s_Get: req_ID" in r.stdout
    (tmp_path / "bad.yaml").write_text("version: 1\nfunctions:\n  f:\n    tabel: x\n")
    r = exray("check-spec", tmp_path / "bad.yaml")
    assert r.returncode == 1 and r.stderr == (
        f"error: {tmp_path / 'bad.yaml'}:4:5: unknown key 'tabel' in function 'f' "
        f"(did you mean 'table'? expected one of table, capture, columns)\n")


def test_check_spec_takes_several_binaries(tmp_path, monkeypatch, capsys):
    """`--binary` repeats; every binary goes to one check_binaries call, and
    each binary's DWARF and missing functions are reported."""
    from probe_compiler import spec_check
    from probe_compiler.debuginfo import DwarfSource
    from probe_compiler.errors import SpecError
    from server import cli
    (tmp_path / "exray.yaml").write_text("version: 1\nfunctions:\n  main.a:\n  main.b:\n  main.c:\n")
    calls = []

    def fake(spec, paths, cache_dir=None):
        calls.append(list(paths))
        parts = [spec_check.BinaryCheck([], DwarfSource(p, p, "binary"), p, absent)
                 for p, absent in zip(paths, [{"main.b": [], "main.c": []}, {"main.a": [], "main.c": []}])]
        return spec_check.SpecCheck([SpecError("no function main.c in any of the 2 binaries: s, c",
                                               str(tmp_path / "exray.yaml"), 5, 3)], parts)
    monkeypatch.setattr(spec_check, "check_binaries", fake)
    assert cli.main(["check-spec", str(tmp_path / "exray.yaml"), "--binary", "s", "--binary", "c"]) == 1
    out, err = capsys.readouterr()
    assert calls == [["s", "c"]]
    # main.c is in neither: an error, not a "has no" line.
    assert out == ("s: DWARF in the binary itself\n  has no main.b: its processes get no rows there\n"
                   "c: DWARF in the binary itself\n  has no main.a: its processes get no rows there\n")
    assert err == f"error: {tmp_path / 'exray.yaml'}:5:3: no function main.c in any of the 2 binaries: s, c\n"


def test_snapshot_args(monkeypatch):
    """`exray snapshot` parses its arguments and hands them to snapshot_job.run."""
    import types
    from server import cli
    calls = []
    fake = types.ModuleType("server.snapshot_job")
    fake.run = lambda pids, spec, out, **options: calls.append((pids, spec, out, options)) or 3
    monkeypatch.setitem(sys.modules, "server.snapshot_job", fake)
    import server
    monkeypatch.setattr(server, "snapshot_job", fake, raising=False)
    monkeypatch.delenv("EXRAY_EXECUTOR", raising=False)
    assert cli.main(["snapshot", "--pid", "1", "--pid", "22", "-o", "s.sqlite"]) == 3
    assert cli.main(["snapshot", "--pid", "5", "--spec", "x.yaml", "--out", "t.sqlite"]) == 3
    assert [c[:3] for c in calls] == [([1, 22], None, "s.sqlite"), ([5], "x.yaml", "t.sqlite")]
    assert all(c[3]["executor"] == "auto" for c in calls)     # no --executor: the default
    monkeypatch.setenv("EXRAY_EXECUTOR", "ptrace")
    assert cli.main(["snapshot", "--pid", "1"]) == 3 and calls[-1][3]["executor"] == "ptrace"
    assert cli.main(["snapshot", "--pid", "1", "--executor", "ebpf"]) == 3 and calls[-1][3]["executor"] == "ebpf"


def test_snapshot_errors_are_one_line(monkeypatch, capsys):
    import types
    from probe_compiler.errors import SpecError
    from server import cli
    fake = types.ModuleType("server.snapshot_job")

    def run(pids, spec, out, **options):
        raise SpecError("unknown key 'x'", "exray.yaml", 3, 5)
    fake.run = run
    monkeypatch.setitem(sys.modules, "server.snapshot_job", fake)
    import server
    monkeypatch.setattr(server, "snapshot_job", fake, raising=False)
    assert cli.main(["snapshot", "--pid", "1", "-o", "s.sqlite"]) == 1
    assert capsys.readouterr().err == "error: exray.yaml:3:5: unknown key 'x'\n"


def test_snapshot_usage_errors(tmp_path):
    r = exray("snapshot", "-o", "x.sqlite", cwd=tmp_path)    # no --pid and no exray.yaml here
    assert r.returncode == 1 and r.stderr.startswith("error: nothing to snapshot") and "--pid" in r.stderr
    (tmp_path / "exray.yaml").write_text("version: 1\ntargets:\n  - exe: no-such-exray-service\n")
    r = exray("snapshot", cwd=tmp_path)
    assert r.returncode == 1 and "no running process matches the targets" in r.stderr, r.stderr
    assert "no-such-exray-service" in r.stderr and "Traceback" not in r.stderr
    r = exray("snapshot", "--pid", "abc", "-o", "x.sqlite")
    assert r.returncode == 2 and "invalid int value" in r.stderr


def test_agent_errors_are_one_line(monkeypatch, capsys):
    import types
    from agent.errors import AgentError
    from server import cli
    fake = types.ModuleType("server.snapshot_job")

    def run(pids, spec, out, **options):
        raise AgentError("pid 1: permission denied (run as root)")
    fake.run = run
    monkeypatch.setitem(sys.modules, "server.snapshot_job", fake)
    import server
    monkeypatch.setattr(server, "snapshot_job", fake, raising=False)
    assert cli.main(["snapshot", "--pid", "1", "-o", "s.sqlite"]) == 1
    assert capsys.readouterr().err == "error: pid 1: permission denied (run as root)\n"


# ------------------------------------------------------------ pure formatters

def test_format_table_golden():
    cols = ["id", "name", "value", "ratio", "flag"]
    rows = [(1, "short", '{"a": [1, 2],  "b": {"c": null}}', 0.5, None),
            (12345, "a long string that is going to be cut because it is far too wide", "[1, 2, 3]", 1.25, b"\x01\xff"),
            (7, "wide: 日本語テキスト", "plain\ttext\nnext", None, None),
            (-3, "", "\"json string\"", 10.0, None)]
    golden("table.txt", fmt.format_table(cols, rows, max_width=30))


def test_format_table_empty():
    assert fmt.format_table(["a", "bb"], []) == "a  bb\n-  --\n(0 rows)\n"


@pytest.mark.parametrize("ns, text", [
    (0, "0ns"), (850, "850ns"), (12_300, "12.3µs"), (45_200_000, "45.2ms"), (12_300_000_000, "12.3s"),
    (312_000_000_000, "5m12s"), (7_512 * 10**9, "2h5m12s"), (None, ""),
])
def test_format_duration(ns, text):
    assert fmt.format_duration(ns) == text


def test_cut_counts_display_width():
    assert fmt.cut("日本語テキスト", 6) == "日本…"
    assert fmt.text_width(fmt.cut("x" * 100, 10)) == 10
