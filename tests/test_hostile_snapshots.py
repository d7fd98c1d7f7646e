"""Snapshot files from anyone: damaged, truncated, or crafted (a `goroutines`
that is a looping view, generated columns, text that is not UTF-8). Every
reader ends within seconds with an error that names the file, never a
traceback; and a fuzz run over the reader (FUZZ_INPUTS mutated files,
seeds fixed, recorded in docs/security.md). Also: snapshots are private."""
from __future__ import annotations

import io
import os
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from probe_compiler.sql_limits import DEFAULTS
from server import cli
from server.reports import materialize
from server.store import SnapshotError, open_snapshot, write_snapshot
from test_reports import link, records, report, spec, tables_of

ROOT = Path(__file__).parent.parent
LOOP = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r)"
FUZZ_INPUTS = 2000          # docs/security.md records this number
COMMANDS = [["goroutines"], ["goroutines", "--all"], ["sql", "SELECT * FROM goroutines"],
            ["links", "handlers", "1"], ["export", "--format", "pprof", "-o"]]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "snap.sqlite"
    s = spec([report("waiting", "SELECT goid, wait_reason FROM goroutines")],
             [link("by_id", "clients", ["id"], "handlers", ["req_id"])])
    write_snapshot(path, records(), tables_of(s))
    db = open_snapshot(path, readonly=False)
    materialize(db, s)
    db.close()
    return path


def crafted(good: Path, tmp_path: Path, *sql: str) -> Path:
    """A copy of `good` changed with SQL (what a stranger can do with sqlite3)."""
    path = tmp_path / "crafted.sqlite"
    shutil.copy(good, path)
    db = sqlite3.connect(path)
    for stmt in sql:
        db.execute(stmt)
    db.commit()
    db.close()
    return path


def run_cli(args: list[str], budget_s: float = 30) -> tuple[int, str, str, float]:
    """`exray ARGS` in this process: (exit code, stdout, stderr, seconds). Any
    exception escaping cli.main is a traceback the user would see: it fails."""
    out, err = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(args)
    return code, out.getvalue(), err.getvalue(), time.monotonic() - t0


def all_commands(path: Path, tmp_path: Path) -> list[tuple[str, int, str, float]]:
    got = []
    for c in COMMANDS:
        args = [c[0], str(path), *c[1:]] + ([str(tmp_path / "out.pb.gz")] if c[0] == "export" else [])
        code, _, err, took = run_cli(args)
        got.append((c[0], code, err.strip(), took))
    return got


# ------------------------------------------------------------------ crafted files

def test_goroutines_as_a_looping_view(good, tmp_path):
    path = crafted(good, tmp_path, "DROP TABLE goroutines",
                   f"CREATE VIEW goroutines AS {LOOP} SELECT 1 AS process_id, x AS goid, 'waiting' AS status, "
                   "NULL AS wait_reason, NULL AS wait_ns, NULL AS created_by, NULL AS created_by_file, "
                   "NULL AS created_by_line, NULL AS parent_goid, NULL AS labels, 0 AS is_system, "
                   "NULL AS thread_id, NULL AS error FROM r")
    for cmd, code, err, took in all_commands(path, tmp_path):
        assert code == 1 and took < 10, (cmd, code, err, took)
        assert err == (f"error: {path} is not a snapshot Ex-Ray wrote: goroutines is a view, not a table; "
                       "it may not be safe to read"), (cmd, err)
    from server.lsp.hints import SnapshotIndex
    from server.lsp.sourcemap import SourceMap
    t0 = time.monotonic()
    with pytest.raises(SnapshotError, match="goroutines is a view"):
        SnapshotIndex.load(path, SourceMap(tmp_path))
    assert time.monotonic() - t0 < 10


def test_a_looping_view_users_query_stops(good, tmp_path):
    path = crafted(good, tmp_path, "DROP VIEW all_captured_data",
                   f"CREATE VIEW all_captured_data AS {LOOP} SELECT x AS value FROM r")
    code, _, err, took = run_cli(["sql", str(path), "SELECT count(*) FROM all_captured_data", "--timeout", "1"])
    assert (code, err.strip()) == (2, "error: ran longer than 1 s (limits.statement_seconds)")
    assert took < 15
    code, out, err, took = run_cli(["sql", str(path), "SELECT * FROM all_captured_data"])
    assert code == 0 and "only the first 1,000,000 rows" in err and took < 60


def test_generated_column_is_refused(good, tmp_path):
    path = crafted(good, tmp_path, "ALTER TABLE frames RENAME TO f0",
                   "CREATE TABLE frames (process_id, goid, depth, function, file, line, pc, inlined, hidden, "
                   "boom AS (length(zeroblob(400000000))))", "INSERT INTO frames SELECT * FROM f0")
    code, _, err, _ = run_cli(["goroutines", str(path)])
    assert (code, err.strip()) == (1, f"error: {path} is not a snapshot Ex-Ray wrote: frames.boom is a "
                                      "generated column; it may not be safe to read")


def test_text_that_is_not_utf8(good, tmp_path):
    path = crafted(good, tmp_path, "UPDATE goroutines SET created_by_file = CAST(x'2f73ff72632e676f' AS TEXT)")
    for cmd, code, err, took in all_commands(path, tmp_path):
        if cmd in ("goroutines", "sql"):          # export and links don't read that column
            assert code == 1, (cmd, code, err)
            assert err.startswith(f"error: {path} is damaged (damaged text (Could not decode to UTF-8 column "
                                  "'created_by_file'"), (cmd, err)
            assert err.endswith("it can't be read; take the snapshot again")


def test_missing_table_and_bad_meta(good, tmp_path):
    path = crafted(good, tmp_path, "DROP TABLE frames")
    code, _, err, _ = run_cli(["goroutines", str(path)])
    assert (code, err.strip()) == (1, f"error: {path} is not a complete Ex-Ray snapshot: it has no table frames")
    path = crafted(good, tmp_path, "UPDATE meta SET value = '{' WHERE key = 'function_tables'")
    code, _, err, _ = run_cli(["sql", str(path), "SELECT 1"])
    assert code == 1 and "meta's function_tables is not the list it should be" in err


def test_corrupt_pages(good, tmp_path):
    data = bytearray(good.read_bytes())
    page = 8192
    for p in range(2, len(data) // page):          # every page but the schema's: garbage
        data[p * page + 10: p * page + 200] = bytes(random.Random(p).randrange(256) for _ in range(190))
    path = tmp_path / "corrupt.sqlite"
    path.write_bytes(bytes(data))
    for cmd, code, err, took in all_commands(path, tmp_path):
        assert code == 1, (cmd, code, err)
        assert err.startswith(f"error: {path} is damaged (") and "take the snapshot again" in err, (cmd, err)
        assert took < 10


def test_truncated(good, tmp_path):
    data = good.read_bytes()
    path = tmp_path / "short.sqlite"
    path.write_bytes(data[: len(data) // 2])
    for cmd, code, err, took in all_commands(path, tmp_path):
        assert code == 1 and err.startswith(f"error: {path} is damaged ("), (cmd, code, err)


def test_no_traceback_from_the_command(good, tmp_path):
    """The same through the real command: stderr is one line, no traceback."""
    path = crafted(good, tmp_path, "DROP TABLE goroutines", f"CREATE VIEW goroutines AS {LOOP} SELECT x FROM r")
    r = subprocess.run([sys.executable, "-m", "server.cli", "goroutines", str(path)], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ fuzz

def _mutate(good: bytes, rng: random.Random, tmp_path: Path, i: int) -> Path:
    """One mutated copy of the snapshot: bytes flipped, truncated, a table dropped or a view swapped in."""
    path = tmp_path / f"fuzz{i % 8}.sqlite"
    kind = rng.choice(["flip", "flip", "flip", "truncate", "drop", "view", "meta"])
    if kind in ("flip", "truncate"):
        data = bytearray(good)
        if kind == "flip":
            for _ in range(rng.choice([1, 2, 8, 64])):
                pos = rng.randrange(len(data)) if rng.random() < 0.8 else rng.randrange(min(len(data), 8192))
                data[pos] ^= 1 << rng.randrange(8)
        else:
            data = data[: rng.choice([rng.randrange(len(data)), rng.randrange(1, len(data) // 8192 + 1) * 8192])]
        path.write_bytes(bytes(data))
        return path
    path.write_bytes(good)
    db = sqlite3.connect(path)
    names = [n for n, in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                                    "AND name NOT LIKE 'sqlite_%'")]
    name = rng.choice(names)
    kind_of = dict(db.execute("SELECT name, type FROM sqlite_master"))
    if kind == "meta":
        key = rng.choice(["schema_version", "function_tables", "spec", "created_at"])
        val = rng.choice(["", "x", "{", "[]", "[{}]", "99", "-1", "\udcff", None, 3.5])
        try:
            db.execute("UPDATE meta SET value = ? WHERE key = ?", (val, key))
        except (UnicodeEncodeError, sqlite3.Error):
            db.execute("UPDATE meta SET value = ? WHERE key = ?", (b"\xff\xfe", key))
    else:
        db.execute(f"DROP {kind_of[name].upper()} \"{name}\"")
        if kind == "view":
            body = rng.choice([f"{LOOP} SELECT x AS process_id, x AS goid FROM r", "SELECT 1 AS x",
                               "SELECT * FROM meta"])
            db.execute(f"CREATE VIEW \"{name}\" AS {body}")
    db.commit()
    db.close()
    return path


def test_fuzz_the_snapshot_reader(good, tmp_path):
    """FUZZ_INPUTS mutated snapshots through the readers (the CLI's commands and
    the editor's index): each ends with output or an error, within its budget."""
    from server.lsp.hints import SnapshotIndex
    from server.lsp.sourcemap import SourceMap
    from server.store import reading
    rng = random.Random(20240612)
    data = good.read_bytes()
    budget = DEFAULTS.with_(statement_seconds=2, total_seconds=4)
    failures, outcomes, slowest = [], {"ok": 0, "error": 0}, 0.0
    sm = SourceMap(tmp_path)
    import server.store as store
    for i in range(FUZZ_INPUTS):
        path = _mutate(data, rng, tmp_path, i)
        store._CHECKED.clear()
        cmd = COMMANDS[i % len(COMMANDS)]
        args = [cmd[0], str(path), *cmd[1:]] + ([str(tmp_path / "out.pb.gz")] if cmd[0] == "export" else [])
        t0 = time.monotonic()
        try:
            code, _, err, _ = run_cli(args)
            outcomes["ok" if code == 0 else "error"] += 1
            if code not in (0, 1, 2) or (code and not err.startswith("error: ")):
                failures.append((i, args, code, err))
            if i % 4 == 0:
                try:
                    with reading(path, limits=budget):
                        pass
                    SnapshotIndex.load(path, sm)
                except SnapshotError:
                    pass
        except Exception as e:                 # a traceback a user would have seen
            failures.append((i, args, type(e).__name__, str(e)[:200]))
        took = time.monotonic() - t0
        slowest = max(slowest, took)
        if took > 60:
            failures.append((i, args, "slow", took))
    assert not failures, failures[:5]
    print(f"fuzz: {FUZZ_INPUTS} inputs, {outcomes}, slowest {slowest:.2f} s")


# ------------------------------------------------------------------ private

def test_snapshot_files_and_folders_are_private(tmp_path, monkeypatch):
    from server.snapshot_job import default_out, write
    monkeypatch.setattr(os, "umask", os.umask)            # whatever the umask, the modes below
    recs = records()
    for p in recs:
        for g in p.goroutines:
            g.captures = []                     # stacks only: no spec
    old = os.umask(0o022)
    try:
        out = default_out(str(tmp_path / "exray.yaml"))
        write(out, recs, None)
        nested = tmp_path / "elsewhere" / "deep" / "snap.sqlite"    # -o into folders that don't exist
        write(str(nested), recs, None)
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)       # noqa: E731
    assert mode(out) == 0o600 and mode(nested) == 0o600
    for d in (tmp_path / ".exray", tmp_path / ".exray" / "snapshots", tmp_path / "elsewhere",
              tmp_path / "elsewhere" / "deep"):
        assert mode(d) == 0o700, d
    assert (tmp_path / ".exray" / ".gitignore").read_text().splitlines()[-1] == "*"
    assert (tmp_path / "elsewhere" / ".gitignore").read_text().splitlines()[-1] == "*"
    assert not (tmp_path / "elsewhere" / "deep" / ".gitignore").exists()     # the topmost one covers it
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        subprocess.run(["git", "-C", str(tmp_path), "add", "."], check=True)
        listed = subprocess.run(["git", "-C", str(tmp_path), "status", "--porcelain"], capture_output=True,
                                text=True, check=True).stdout
        assert ".sqlite" not in listed, listed


def test_existing_exray_folder_is_tightened(tmp_path):
    from server.snapdirs import ensure_snapshot_dir
    (tmp_path / ".exray" / "snapshots").mkdir(parents=True)
    os.chmod(tmp_path / ".exray", 0o755)
    os.chmod(tmp_path / ".exray" / "snapshots", 0o755)
    ensure_snapshot_dir(tmp_path / ".exray" / "snapshots")
    assert stat.S_IMODE(os.stat(tmp_path / ".exray").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / ".exray" / "snapshots").st_mode) == 0o700
    assert (tmp_path / ".exray" / ".gitignore").exists()
