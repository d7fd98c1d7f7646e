"""The SQLite snapshot: contents, the documented schema, errors on foreign files, speed."""
from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from agent.records import CaptureRecord, FrameRecord, GoroutineRecord, ProcessRecord
from server.store import (SCHEMA_VERSION, BUILTIN_TABLES, FunctionTableDef, SnapshotError,
                          function_tables, open_snapshot, snapshot_meta, write_snapshot)

DOC = Path(__file__).parent.parent / "docs" / "snapshot-schema.md"
TABLES = [FunctionTableDef("main.(*server).GetInfo", "getinfo", ["req_ID", "mu_state"]),
          FunctionTableDef("main.worker", "main_worker", ["n"]),
          FunctionTableDef("main.idle", "main_idle", [])]


def sample_processes() -> list[ProcessRecord]:
    frames = [FrameRecord(0, "runtime.gopark", "/go/src/runtime/proc.go", 435, 0x43a1b0, hidden=True),
              FrameRecord(1, "main.(*server).GetInfo", "/src/server.go", 42, 0x4a0010),
              FrameRecord(2, "main.worker", "/src/main.go", 30, 0x4a0100, inlined=True),
              FrameRecord(3, "main.worker", "/src/main.go", 31, 0x4a0100)]
    g1 = GoroutineRecord(
        17, "waiting", "sync.Mutex.Lock", 5_000_000_000, "main.main", "/src/main.go", 20, 1,
        {"handler": "info"}, False, None, frames,
        [CaptureRecord("main.(*server).GetInfo", 1, {"req_ID": 12345678901234567, "mu_state": {"a": [1, "ü"]}},
                       {"req_ID": 12345678901234567, "mu_state": {"__addr": "0xc000010000", "value": {"a": [1, "ü"]}}}),
         CaptureRecord("main.worker", 2, {"n": None}, {"n": None}, {"n": "not available at this pc"})])
    g2 = GoroutineRecord(1, "running", "", None, None, None, None, None, {}, False, 4242,
                         [FrameRecord(0, "main.main", "/src/main.go", 10, 0x4a0200)], error="unwind stopped: bad pc")
    g3 = GoroutineRecord(2, "waiting", "force gc (idle)", 1000, "runtime.init.7", "/go/src/runtime/proc.go", 300,
                         None, {}, True, None, [FrameRecord(0, "runtime.forcegchelper", "/go/src/runtime/proc.go", 310, 1)])
    p1 = ProcessRecord(4242, "host-a", "/srv/app", "abc/def", "go1.27.0", "example.com/app", "deadbeef",
                       1_700_000_000_000_000_000, 850_000, None, [g1, g2, g3], ["no DWARF for vendor pkg"])
    p2 = ProcessRecord(99, "host-b", "/srv/other", error="permission denied: ptrace")
    return [p1, p2]


@pytest.fixture
def snap(tmp_path) -> Path:
    path = tmp_path / "snap.sqlite"
    write_snapshot(path, sample_processes(), TABLES, spec_text="version: 1\n")
    return path


def rows(db, sql):
    return db.execute(sql).fetchall()


def test_contents(snap):
    db = open_snapshot(snap)
    assert rows(db, "SELECT id, host, pid, exe, build_id, go_version, main_module, vcs_revision, "
                    "captured_at, pause_ns, error, warnings, truncated FROM processes ORDER BY id") == [
        (1, "host-a", 4242, "/srv/app", "abc/def", "go1.27.0", "example.com/app", "deadbeef",
         1_700_000_000_000_000_000, 850_000, None, '["no DWARF for vendor pkg"]', 0),
        (2, "host-b", 99, "/srv/other", None, None, None, None, 0, None, "permission denied: ptrace", None, 0)]
    assert rows(db, "SELECT * FROM goroutines ORDER BY goid") == [
        (1, 1, "running", "", None, None, None, None, None, None, 0, 4242, "unwind stopped: bad pc"),
        (1, 2, "waiting", "force gc (idle)", 1000, "runtime.init.7", "/go/src/runtime/proc.go", 300, None,
         None, 1, None, None),
        (1, 17, "waiting", "sync.Mutex.Lock", 5_000_000_000, "main.main", "/src/main.go", 20, 1,
         '{"handler":"info"}', 0, None, None)]
    assert rows(db, "SELECT depth, function, inlined, hidden FROM frames WHERE goid = 17 ORDER BY depth") == [
        (0, "runtime.gopark", 0, 1), (1, "main.(*server).GetInfo", 0, 0),
        (2, "main.worker", 1, 0), (3, "main.worker", 0, 0)]
    assert rows(db, "SELECT * FROM getinfo") == [
        (1, 17, 1, "12345678901234567", '{"a":[1,"ü"]}', "12345678901234567",
         '{"__addr":"0xc000010000","value":{"a":[1,"ü"]}}', None)]
    assert rows(db, "SELECT req_ID ->> '$', mu_state ->> '$.a[1]' FROM getinfo") == [(12345678901234567, "ü")]
    assert rows(db, "SELECT * FROM main_worker") == [(1, 17, 2, None, None, '{"n":"not available at this pc"}')]
    assert rows(db, "SELECT count(*) FROM main_idle") == [(0,)]
    assert rows(db, "SELECT * FROM all_captured_data ORDER BY table_name, column_name") == [
        ("getinfo", 1, 17, 1, "mu_state", '{"a":[1,"ü"]}'),
        ("getinfo", 1, 17, 1, "req_ID", "12345678901234567"),
        ("main_worker", 1, 17, 2, "n", None)]
    meta = snapshot_meta(db)
    assert meta["schema_version"] == str(SCHEMA_VERSION) and meta["spec"] == "version: 1\n" and meta["exray_version"]
    assert function_tables(db) == TABLES


def test_indexes(snap):
    db = sqlite3.connect(snap)
    idx = {r[0]: r[1] for r in db.execute("SELECT name, tbl_name FROM sqlite_master WHERE type='index'")}
    cols = {name: [r[2] for r in db.execute(f"PRAGMA index_info('{name}')")] for name in idx}
    assert ["process_id", "goid"] == cols["goroutines_by_id"]
    assert ["function"] == cols["frames_by_function"]
    assert ["process_id", "goid", "depth"] == cols["frames_by_goroutine"]
    assert ["process_id", "goid", "depth"] == cols["getinfo_by_goroutine"]
    plan = " ".join(str(r) for r in db.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM frames WHERE function = 'main.worker'"))
    assert "frames_by_function" in plan


def test_no_function_tables(tmp_path):
    path = tmp_path / "s.sqlite"
    procs = sample_processes()
    for g in procs[0].goroutines:
        g.captures = []
    write_snapshot(path, procs, [])
    db = open_snapshot(path)
    assert rows(db, "SELECT * FROM all_captured_data") == []
    assert [d[0] for d in db.execute("SELECT * FROM all_captured_data").description] == [
        "table_name", "process_id", "goid", "depth", "column_name", "value"]


def test_capture_of_unknown_function_is_a_bug(tmp_path):
    with pytest.raises(ValueError, match="main.worker"):
        write_snapshot(tmp_path / "s.sqlite", sample_processes(), TABLES[:1])
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_overwrites_atomically(snap):
    write_snapshot(snap, [], TABLES)
    assert rows(open_snapshot(snap), "SELECT count(*) FROM processes") == [(0,)]


def test_readonly(snap):
    db = open_snapshot(snap)
    with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
        db.execute("DELETE FROM processes")
    db.set_authorizer(None)          # the authorizer is one guard; the file is opened read-only too
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.execute("DELETE FROM processes")


# ------------------------------------------------------------- the doc is the schema

def doc_tables() -> dict[str, list[tuple[str, str]]]:
    """### `name` headings followed by a | column | type | meaning | table."""
    out: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            m = re.match(r"#{2,3} `(\w+)`$", line)
            current = m.group(1) if m else None
            continue
        m = re.match(r"\| `(\w+)` \| (\w+) \|", line)
        if m and current:
            out.setdefault(current, []).append((m.group(1), m.group(2)))
    return out


def test_doc_matches_schema(snap):
    doc = doc_tables()
    db = sqlite3.connect(snap)
    for table in BUILTIN_TABLES:
        info = [(r[1], r[2]) for r in db.execute(f"PRAGMA table_info({table})")]
        assert doc[table] == info, f"docs/snapshot-schema.md disagrees with table {table}"
    # A view's computed columns have no declared type: compare names, and types where declared.
    info = [(r[1], r[2]) for r in db.execute("PRAGMA table_info(all_captured_data)")]
    assert [c for c, _ in doc["all_captured_data"]] == [c for c, _ in info]
    assert all(dt == t for (_, dt), (_, t) in zip(doc["all_captured_data"], info) if t)
    # The documented example function table: the key columns, captures, raws, _errors.
    text = DOC.read_text()
    section = text[text.index("## Function tables"):text.index("## `all_captured_data`")]
    documented = re.findall(r"^\| `(\w+)` \| (\w+) \|", section, re.M)
    info = [(r[1], r[2]) for r in db.execute("PRAGMA table_info(getinfo)")]
    assert documented == info
    # Every table in the snapshot is documented (function tables generically).
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table','view')")}
    assert names == set(BUILTIN_TABLES) | {"all_captured_data"} | {t.table for t in TABLES}


def test_doc_examples_run(snap):
    text = DOC.read_text()
    queries = re.findall(r"```sql\n(.*?)```", text, re.S)
    assert len(queries) >= 5
    db = open_snapshot(snap)
    for q in queries:
        db.execute(q).fetchall()


# ---------------------------------------------------------------- foreign files

def test_not_a_snapshot(tmp_path):
    text = tmp_path / "x.sqlite"
    text.write_text("hello")
    with pytest.raises(SnapshotError, match=r"x.sqlite is not an Ex-Ray snapshot \(not a SQLite database\)"):
        open_snapshot(text)
    foreign = tmp_path / "y.sqlite"
    sqlite3.connect(foreign).execute("CREATE TABLE t (a)").connection.commit()
    with pytest.raises(SnapshotError, match=r"y.sqlite is not an Ex-Ray snapshot \(no meta table\)"):
        open_snapshot(foreign)
    with pytest.raises(SnapshotError, match="no such file"):
        open_snapshot(tmp_path / "missing.sqlite")


def test_corrupt(snap, tmp_path):
    data = bytearray(snap.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match=r"bad.sqlite is damaged \(database disk image is malformed\)"):
        open_snapshot(bad)


def test_newer_schema(snap):
    db = sqlite3.connect(snap)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    with pytest.raises(SnapshotError, match="schema version 99"):
        open_snapshot(snap)


# ------------------------------------------------------------------------ speed

def big_processes(n_goroutines=10_000, n_frames=20) -> list[ProcessRecord]:
    gs = []
    for i in range(n_goroutines):
        fr = [FrameRecord(d, f"main.f{d % 7}", "/src/main.go", 10 + d, 0x401000 + 16 * d, d % 5 == 0, d == 19)
              for d in range(n_frames)]
        caps = [CaptureRecord("main.worker", 3, {"n": i, "req": {"id": i, "path": "/x"}},
                              {"n": i, "req": {"__addr": "0xc000", "value": {"id": i, "path": "/x"}}})]
        gs.append(GoroutineRecord(i + 1, "waiting", "chan receive", i * 1000, "main.main", "/src/main.go",
                                  30, 1, {"k": "v"} if i % 3 == 0 else {}, False, None, fr, caps))
    return [ProcessRecord(1, "h", "/x", goroutines=gs)]


def test_write_10k_goroutines(tmp_path):
    """Volume, not speed (bench/ times it): nothing is lost at 10,000 goroutines."""
    procs = big_processes()
    write_snapshot(tmp_path / "s.sqlite", procs, [FunctionTableDef("main.worker", "w", ["n", "req"])])
    db = open_snapshot(tmp_path / "s.sqlite")
    assert rows(db, "SELECT count(*) FROM frames") == [(200_000,)]
    assert rows(db, "SELECT count(*), count(DISTINCT goid) FROM w") == [(10_000, 10_000)]


def test_snapshot_file_is_private(snap):
    import os
    import stat
    assert stat.S_IMODE(os.stat(snap).st_mode) == 0o600    # it holds process memory
