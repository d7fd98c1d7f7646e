"""SQL from a spec or a snapshot runs under bounds (docs/security.md): spec
SQL bombs each end within seconds with a failed report that names the bound,
and the measured disk, memory and time stay under it; the snapshot is kept.
The read paths (`exray sql`, editor queries) can't write and stop on time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from probe_compiler.errors import SpecError
from probe_compiler.spec import Spec, parse_spec
from probe_compiler.sql_limits import CEILINGS, DEFAULTS, MiB
from server.reports import materialize
from server.store import open_snapshot, write_snapshot
from test_reports import link, records, report, spec, tables_of

ROOT = Path(__file__).parent.parent
EXRAY = [sys.executable, "-m", "server.cli"]
FOREVER = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) "


def build(tmp_path, s: Spec, limits=None) -> tuple[Path, list, float, int]:
    """(path, problems, seconds materializing, file size before materializing)."""
    path = tmp_path / "snap.sqlite"
    write_snapshot(path, records(), tables_of(s))
    before = path.stat().st_size
    db = open_snapshot(path, readonly=False)
    t0 = time.monotonic()
    problems = materialize(db, s, limits=limits)
    took = time.monotonic() - t0
    db.close()
    return path, problems, took, before


def by_name(problems) -> dict:
    return {p.name: p for p in problems}


def still_a_snapshot(path: Path) -> None:
    """The snapshot survived: it opens (checked, read-only) with all its frames."""
    db = open_snapshot(path)
    try:
        assert db.execute("SELECT count(*) FROM frames").fetchone() == (28,)
    finally:
        db.close()


# ------------------------------------------------------------------ disk

def test_runaway_cte_stops_at_the_table_cap(tmp_path):
    limits = DEFAULTS.with_(table_mb=4, statement_seconds=60)
    s = spec([report("bomb", FOREVER + "SELECT x, randomblob(200) AS b FROM r"),
              report("on_bomb", "SELECT count(*) AS n FROM bomb", "bomb"),
              report("after", "SELECT count(*) AS n FROM frames")])
    path, problems, took, before = build(tmp_path, s, limits)
    got = by_name(problems)
    assert got["bomb"].message == "wrote more than limits.table_mb (4 MiB)"
    assert got["on_bomb"].skipped and "which failed" in got["on_bomb"].message
    assert "after" not in got
    grew = path.stat().st_size - before
    assert grew <= 4 * MiB, f"the file grew {grew:,} bytes"         # measured: the bomb's pages rolled back
    assert took < 30, took
    assert not list(tmp_path.glob("*-journal"))
    still_a_snapshot(path)


def test_rows_without_bytes_stop_too(tmp_path):
    # Rows of nothing still take pages: the byte cap bounds a pure row bomb.
    path, problems, took, before = build(tmp_path, spec([report("rows", FOREVER + "SELECT x FROM r")]),
                                         DEFAULTS.with_(table_mb=2, statement_seconds=60))
    assert by_name(problems)["rows"].message == "wrote more than limits.table_mb (2 MiB)"
    assert path.stat().st_size - before <= 2 * MiB
    assert took < 30


def test_the_snapshot_file_cap(tmp_path):
    path = tmp_path / "probe.sqlite"
    write_snapshot(path, records(), tables_of(spec()))
    cap_mb = path.stat().st_size // MiB + 1
    limits = DEFAULTS.with_(snapshot_mb=cap_mb, table_mb=64)
    s = spec([report("big", FOREVER + "SELECT randomblob(1000) AS b FROM r LIMIT 4000")])
    path, problems, took, before = build(tmp_path, s, limits)
    assert by_name(problems)["big"].message == f"would make the snapshot file larger than limits.snapshot_mb ({cap_mb} MiB)"
    assert path.stat().st_size <= cap_mb * MiB
    still_a_snapshot(path)


def test_randomblob_value_cap(tmp_path):
    s = spec([report("blob", "SELECT randomblob(8 * 1024 * 1024) AS b")])
    path, problems, took, _ = build(tmp_path, s, DEFAULTS.with_(table_mb=4))
    assert by_name(problems)["blob"].message == "made a value longer than 4 MiB (limits.table_mb)"
    assert took < 10


def test_rows_per_report_and_dependents(tmp_path):
    s = spec([report("all_frames", "SELECT * FROM frames"),
              report("on_it", "SELECT count(*) AS n FROM all_frames", "all_frames")])
    path, problems, _, _ = build(tmp_path, s, DEFAULTS.with_(table_rows=10))
    got = by_name(problems)
    assert got["all_frames"].message == "has 28 rows, more than limits.table_rows (10)"
    assert got["on_it"].skipped
    db = open_snapshot(path)
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'all_frames'").fetchone() is None
    assert db.execute("SELECT kind, name, error FROM exray_report_errors WHERE name = 'all_frames'").fetchone() \
        == ("report", "all_frames", "has 28 rows, more than limits.table_rows (10)")


def test_link_pairs_cap(tmp_path):
    # Every frame has the same file: 28 x 27 ordered pairs (each way is one of them).
    s = spec(links=[link("same_file", "frames", ["file"], "frames", ["file"])])
    path, problems, _, _ = build(tmp_path, s, DEFAULTS.with_(table_rows=100))
    msg = by_name(problems)["same_file"].message
    assert msg.startswith("links 756 pairs of rows, more than limits.table_rows (100)"), msg
    db = open_snapshot(path)
    assert db.execute("SELECT count(*) FROM exray_links").fetchone() == (0,)


# ------------------------------------------------------------------ time

def test_total_time_budget_skips_the_rest(tmp_path):
    slow = FOREVER + "SELECT count(*) AS n FROM r"
    s = spec([report("slow1", slow), report("slow2", slow), report("slow3", slow), report("quick", "SELECT 1 AS one")])
    path, problems, took, _ = build(tmp_path, s, DEFAULTS.with_(statement_seconds=0.5, total_seconds=1.2))
    got = by_name(problems)
    assert got["slow1"].message == "ran longer than 0.5 s (limits.statement_seconds)"
    assert not got["slow1"].skipped
    assert got["quick"].skipped
    assert got["quick"].message.startswith("skipped: the spec's SQL ran out of limits.total_seconds (1.2 s")
    assert took < 10, took                    # generous: the budget is 1.2 s
    still_a_snapshot(path)


def test_spec_limits_are_used_by_default(tmp_path):
    s = spec([report("forever", FOREVER + "SELECT count(*) FROM r")])
    s.sql_limits = DEFAULTS.with_(statement_seconds=0.3)
    _, problems, took, _ = build(tmp_path, s)
    assert by_name(problems)["forever"].message == "ran longer than 0.3 s (limits.statement_seconds)"
    assert took < 10


# ------------------------------------------------------------------ memory (own process: the heap limit is per process)

MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from probe_compiler.sql_limits import DEFAULTS
    from server.reports import materialize
    from server.store import open_snapshot, write_snapshot
    from test_reports import records, report, spec, tables_of

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    s = spec([report("gc", {sql!r}), report("after", "SELECT 1 AS one")])
    write_snapshot({path!r}, records(), tables_of(s))
    db = open_snapshot({path!r}, readonly=False)
    rss = status("VmRSS")
    problems = materialize(db, s, limits=DEFAULTS.with_(memory_mb={mb}, table_mb=2048, statement_seconds=120))
    print(json.dumps({{"rss": rss, "peak": status("VmHWM"),
                      "problems": {{p.name: p.message for p in problems}}}}))
""")


MANY = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r LIMIT 100000) "


# 100,000 rows of 8 KB (group_concat, 800 MB) or 2 KB (sort, distinct: 200 MB)
# each. (An endless group_concat stops growing at the cap, then at the time budget.)
@pytest.mark.parametrize("name, sql", [
    ("group_concat", MANY + "SELECT length(group_concat(hex(randomblob(4096)))) AS n FROM r"),
    ("sort", MANY + "SELECT count(*) AS n FROM (SELECT x, randomblob(2000) AS b FROM r ORDER BY b)"),
    ("distinct", MANY + "SELECT count(DISTINCT randomblob(2000)) AS n FROM r"),
])
def test_memory_cap(tmp_path, name, sql):
    mb = 64
    script = MEMORY_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), sql=sql,
                                  path=str(tmp_path / "snap.sqlite"), mb=mb)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["problems"]["gc"] == f"needed more than {mb} MiB of memory (limits.memory_mb)", got
    assert "after" not in got["problems"]
    growth = got["peak"] - got["rss"]
    # SQLite's heap stays under the cap; Python and SQLite's bookkeeping around it get 64 MiB more.
    assert growth <= (mb + 64) * MiB, f"RSS grew {growth / MiB:.0f} MiB"
    assert took < 120, took
    still_a_snapshot(tmp_path / "snap.sqlite")


# ------------------------------------------------------------------ writes, attach, extensions

@pytest.mark.parametrize("sql, denied", [
    ("SELECT 1; VACUUM INTO '{out}'", "one statement at a time"),
    ("SELECT load_extension('{out}') AS x", "not allowed: FUNCTION"),
    ("SELECT * FROM frames WHERE 0; ATTACH '{out}' AS o", "one statement at a time"),
])
def test_spec_sql_cannot_write_files(tmp_path, sql, denied):
    out = tmp_path / "copy.sqlite"
    s = spec([report("evil", sql.format(out=out))])
    path, problems, _, _ = build(tmp_path, s)
    assert denied in by_name(problems)["evil"].message
    assert not out.exists()
    still_a_snapshot(path)


def test_attach_in_an_extra_column_is_denied(tmp_path):
    # An expression can't hold a statement; ATTACH is denied by the authorizer
    # whatever way it comes (VACUUM INTO attaches its target too).
    from server.reports import _Guard
    import sqlite3
    db = sqlite3.connect(":memory:")
    db.set_authorizer(_Guard())
    with pytest.raises(sqlite3.DatabaseError):
        db.execute(f"VACUUM INTO '{tmp_path / 'v.sqlite'}'")
    assert not (tmp_path / "v.sqlite").exists()


# ------------------------------------------------------------------ the spec's limits:

def test_a_spec_cannot_raise_a_ceiling():
    with pytest.raises(SpecError, match=r"'limits.statement_seconds' is 301, above its ceiling 300, which a spec cannot raise"):
        parse_spec("version: 1\nlimits: {statement_seconds: 301}\n")
    with pytest.raises(SpecError, match=r"'limits.memory_mb' is 4,096, above its ceiling 2,048"):
        parse_spec("version: 1\nlimits: {memory_mb: 4096}\n")
    with pytest.raises(SpecError, match="must be more than 0"):
        parse_spec("version: 1\nlimits: {table_rows: 0}\n")
    s = parse_spec(f"version: 1\nlimits: {{statement_seconds: {CEILINGS.statement_seconds:g}, table_mb: 16}}\n")
    assert (s.sql_limits.statement_seconds, s.sql_limits.table_mb, s.sql_limits.total_seconds) == \
        (CEILINGS.statement_seconds, 16, DEFAULTS.total_seconds)


def test_an_include_can_only_lower_a_bound(tmp_path):
    (tmp_path / "exray.yaml").write_text("version: 1\ninclude: [more.yaml]\nlimits: {table_mb: 64, table_rows: 10}\n")
    (tmp_path / "more.yaml").write_text("version: 1\nlimits: {table_mb: 1024, total_seconds: 60}\n")
    from probe_compiler.spec import load_spec
    s = load_spec(tmp_path / "exray.yaml")
    assert (s.sql_limits.table_mb, s.sql_limits.table_rows, s.sql_limits.total_seconds) == (64, 10, 60)


# ------------------------------------------------------------------ read paths

def exray(*args, timeout=60):
    return subprocess.run([*EXRAY, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture
def snap(tmp_path) -> Path:
    path, _, _, _ = build(tmp_path, spec([report("after", "SELECT count(*) AS n FROM frames")]))
    return path


@pytest.mark.parametrize("query, message", [
    ("VACUUM INTO '{out}'", "error: not allowed: VACUUM (a snapshot is read-only here)"),
    ("ATTACH '{out}' AS o", "error: not allowed: ATTACH (or VACUUM INTO) (a snapshot is read-only here)"),
    ("SELECT load_extension('{out}')", "error: not allowed: the function load_extension() (a snapshot is read-only here)"),
    ("PRAGMA query_only = 0", "error: not allowed: PRAGMA query_only = 0 (a snapshot is read-only here)"),
    ("PRAGMA journal_mode = WAL", "error: not allowed: PRAGMA journal_mode = WAL (a snapshot is read-only here)"),
    ("CREATE TABLE t AS SELECT 1", "error: not allowed: INSERT on sqlite_master (a snapshot is read-only here)"),
    ("SELECT randomblob(300 * 1024 * 1024)", "error: made a value longer than 256 MiB (limits.table_mb)"),
])
def test_exray_sql_cannot_write(snap, tmp_path, query, message):
    out = tmp_path / "copy.sqlite"
    before = snap.read_bytes()
    r = exray("sql", snap, query.format(out=out))
    assert (r.returncode, r.stderr.strip(), r.stdout) == (2, message, "")
    assert not out.exists()
    assert snap.read_bytes() == before


def test_exray_sql_runaway_stops(snap):
    t0 = time.monotonic()
    r = exray("sql", snap, FOREVER + "SELECT count(*) FROM r", "--timeout", "1")
    took = time.monotonic() - t0
    assert (r.returncode, r.stderr.strip()) == (2, "error: ran longer than 1 s (limits.statement_seconds)")
    assert took < 20, took


def test_exray_sql_rows_are_capped(snap):
    from server import cli
    from server.sqlguard import fetch, connect_read_only
    db = connect_read_only(snap, DEFAULTS.with_(table_rows=1000))
    rows, more = fetch(db.execute(FOREVER + "SELECT x FROM r"), db.limits.table_rows)
    db.close()
    assert (len(rows), more) == (1000, True)
    assert cli.build_parser().parse_args(["sql", "s", "q", "--timeout", "2"]).timeout == 2


def test_editor_query_is_cancellable(snap):
    from server.lsp import documents
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t0 = time.monotonic()
    doc = documents.render("exray:/query/1", str(snap), lambda f, p: None,
                           {1: FOREVER + "SELECT count(*) FROM r"}, cancel)
    took = time.monotonic() - t0
    assert doc.text.splitlines()[-1] == "error: cancelled", doc.text
    assert took < 10, took


def test_editor_query_cannot_write(snap, tmp_path):
    from server.lsp import documents
    out = tmp_path / "copy.sqlite"
    doc = documents.render("exray:/query/1", str(snap), lambda f, p: None, {1: f"VACUUM INTO '{out}'"})
    assert doc.text.splitlines()[-1] == "error: not allowed: VACUUM (a snapshot is read-only here)"
    assert not out.exists()
