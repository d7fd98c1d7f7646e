"""Following links on snapshots of real processes (tests/goprogs/linkpair):
a client goroutine in main.call and the server goroutine in main.handle that
holds its request, in one process and across two; `exray links` end to end."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from targets import run_target
from probe_compiler.spec import CaptureSpec, ColumnSpec, FunctionSpec, LinkEnd, LinkSpec, Spec
from server.links import LinkError, linked_rows, row_values
from server.reports import materialize
from server.snapshot_job import snapshot_pids
from server.store import FunctionTableDef, SnapshotError, open_snapshot, write_snapshot

EXRAY = str(Path(sys.prefix) / "bin" / "exray")
SOURCE = (Path(__file__).parent / "goprogs" / "linkpair" / "main.go").read_text().splitlines()
GATE_LINE = SOURCE.index("\t<-gate") + 1              # where main.handle waits
READ_LINE = SOURCE.index("\treply, _ := io.ReadAll(c)") + 1   # where main.call waits


def cap(expr, name, display=None):
    return CaptureSpec(expr, name, 1, 1, display=display)


SPEC = Spec(
    functions=[
        FunctionSpec("main.call", "calls", [cap("id", "id"), cap("path", "path"), cap("addr", "addr")], 3, 3,
                     columns=[ColumnSpec("path_s", "path ->> '$'", 8, 9),
                              # addr is not live where main.call waits: its value comes from
                              # a spill slot Go marks `?`; keep only trusted values.
                              ColumnSpec("addr_trusted", "CASE WHEN _errors ->> 'addr' IS NULL "
                                         "THEN addr END", 9, 9)]),
        FunctionSpec("main.handle", "handles", [cap("req", "req")], 10, 3, columns=[
            ColumnSpec("req_id", "req ->> 'ID'", 13, 9), ColumnSpec("req_path", "req ->> 'Path'", 14, 9),
            ColumnSpec("started", "req ->> 'Started'", 15, 9, display="timestamp_ns")]),
    ],
    links=[
        LinkSpec("serves", LinkEnd("calls", ("id",)), LinkEnd("handles", ("req_id",)),
                 "the server goroutine holding this request", 20, 3),
        LinkSpec("serves_exactly", LinkEnd("calls", ("id", "path_s")), LinkEnd("handles", ("req_id", "req_path")),
                 "", 24, 3),
        # addr_trusted is NULL on every row, so no links.
        LinkSpec("same_addr", LinkEnd("calls", ("addr_trusted",)), LinkEnd("calls", ("addr_trusted",)),
                 "", 28, 3),
    ])


def take_snapshot(path: Path, pids: list[int]) -> list:
    records = snapshot_pids(pids, SPEC)
    assert all(r.error is None for r in records), [r.error for r in records]
    tables = [FunctionTableDef(f.symbol, f.table, [c.name for c in f.captures]) for f in SPEC.functions]
    write_snapshot(path, records, tables)
    db = open_snapshot(path, readonly=False)
    problems = materialize(db, SPEC)
    db.close()
    return problems


@pytest.fixture(scope="module")
def one_process(go_build, tmp_path_factory):
    path = tmp_path_factory.mktemp("links") / "one.sqlite"
    with run_target(go_build("linkpair"), "-self", "4", dump=False) as t:
        problems = take_snapshot(path, [t.pid])
    return path, t.pid, problems


@pytest.fixture(scope="module")
def two_processes(go_build, tmp_path_factory):
    d = tmp_path_factory.mktemp("links2")
    binary = go_build("linkpair")
    with run_target(binary, "-serve", str(d / "addr"), "-expect", "3", dump=False) as server:
        with run_target(binary, "-connect", str(d / "addr"), "-n", "3", "-first", "7", dump=False) as client:
            server.wait_line("PARKED", 20)
            take_snapshot(d / "two.sqlite", [client.pid, server.pid])
    return d / "two.sqlite", client.pid, server.pid


def rowid_of(db, table: str, where: str) -> int:
    [(rowid,)] = db.execute(f"SELECT rowid FROM {table} WHERE {where}").fetchall()
    return rowid


def test_one_process_both_directions(one_process):
    path, pid, problems = one_process
    assert problems == []
    db = open_snapshot(path)
    assert db.execute("SELECT count(*), count(DISTINCT req_id) FROM handles").fetchone() == (4, 4)
    for i in range(1, 5):
        call = rowid_of(db, "calls", f"id = '{i}'")
        links = linked_rows(db, "calls", call)
        assert sorted(r.link for r in links) == ["serves", "serves_exactly"]
        for r in links:
            assert r.direction == "forward" and r.table == "handles"
            assert r.values["req_id"] == i and r.values["req_path"] == f"/item/sku-{i:03d}"
            assert r.goroutine.pid == pid and r.goroutine.status == "waiting"
            assert r.goroutine.wait_reason == "chan receive"
            assert r.frame.function == "main.handle" and r.frame.file.endswith("/main.go")
            assert r.frame.line == GATE_LINE
            assert r.frame.depth == r.values["depth"]
        # ... and back from the handler to the call.
        [back] = [r for r in linked_rows(db, "handles", links[0].rowid) if r.link == "serves"]
        assert (back.direction, back.table, back.rowid) == ("reverse", "calls", call)
        assert back.goroutine.goid == db.execute(f"SELECT goid FROM calls WHERE rowid = {call}").fetchone()[0]
        assert back.goroutine.wait_reason == "IO wait" and back.frame.function == "main.call"
        assert back.frame.line == READ_LINE
    # NULL keys: addr is never live at the wait (its spill slot is marked possibly
    # stale), so addr_trusted is NULL and same_addr links nothing.
    assert db.execute("SELECT count(*) FROM calls WHERE addr_trusted IS NULL AND "
                      "_errors ->> 'addr' LIKE 'spill slot, possibly stale%'").fetchone() == (4,)
    assert db.execute("SELECT count(*) FROM exray_links WHERE link = 'same_addr'").fetchone() == (0,)


def test_across_two_processes(two_processes):
    path, client_pid, server_pid = two_processes
    db = open_snapshot(path)
    procs = dict(db.execute("SELECT pid, id FROM processes"))
    assert db.execute("SELECT DISTINCT process_id FROM calls").fetchall() == [(procs[client_pid],)]
    assert db.execute("SELECT DISTINCT process_id FROM handles").fetchall() == [(procs[server_pid],)]
    for i in (7, 8, 9):
        call = rowid_of(db, "calls", f"id = '{i}'")
        [fwd] = [r for r in linked_rows(db, "calls", call) if r.link == "serves"]
        assert fwd.values["req_id"] == i and fwd.values["process_id"] == procs[server_pid]
        assert fwd.goroutine.pid == server_pid and fwd.frame.function == "main.handle"
        [back] = [r for r in linked_rows(db, "handles", fwd.rowid) if r.link == "serves"]
        assert back.rowid == call and back.goroutine.pid == client_pid
        assert back.goroutine.process_id == procs[client_pid] and back.frame.function == "main.call"


def test_unknown_table_or_row(one_process):
    path, _, _ = one_process
    db = open_snapshot(path)
    with pytest.raises(LinkError, match=r"no table 'nosuch' in this snapshot \(tables: calls, frames"):
        linked_rows(db, "nosuch", 1)
    with pytest.raises(LinkError, match="table calls has no row with rowid 999"):
        linked_rows(db, "calls", 999)
    assert issubclass(LinkError, SnapshotError)
    assert linked_rows(db, "processes", 1) == []      # a row nothing links to


def test_snapshot_without_links(tmp_path):
    write_snapshot(tmp_path / "s.sqlite", [], [])
    db = open_snapshot(tmp_path / "s.sqlite")
    with pytest.raises(LinkError, match="no row with rowid 1"):
        linked_rows(db, "processes", 1)


def exray(*args) -> subprocess.CompletedProcess:
    return subprocess.run([EXRAY, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_cli(two_processes):
    path, client_pid, server_pid = two_processes
    db = open_snapshot(path)
    call = rowid_of(db, "calls", "id = '8'")
    r = exray("links", path, "calls", call)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith(f"calls #{call}\n")
    assert "-> serves: the server goroutine holding this request" in out
    assert "req_id = 8" in out and "req_path = /item/sku-008" in out
    assert f"(pid {server_pid})" in out and f"(pid {client_pid})" in out
    assert "main.handle" in out and "main.call" in out and "[waiting, chan receive]" in out
    assert "T" in out.split("started = ")[1][:20] and "Z" in out.split("started = ")[1].split("\n")[0]
    assert "raw_" not in out
    r = exray("links", path, "handles", 1)
    assert r.returncode == 0 and "<- serves" in r.stdout and "calls #" in r.stdout


@pytest.mark.parametrize("args, needle", [
    (("nosuch", 1), "no table 'nosuch'"),
    (("calls", 12345), "no row with rowid 12345"),
])
def test_cli_errors(two_processes, args, needle):
    path = two_processes[0]
    r = exray("links", path, *args)
    assert r.returncode == 1 and r.stderr.startswith("error:") and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_user_frame_is_the_innermost_frame_of_the_users_code(one_process):
    """main.call waits in the standard library's net code; its first user frame
    is main.call itself, below the visible frames of package net and io."""
    from server.links import goroutine_of, user_frame
    path, pid, _ = one_process
    db = open_snapshot(path)
    values = row_values(db, "calls", rowid_of(db, "calls", "id = '1'"))
    g, frame = goroutine_of(db, values)
    mine = user_frame(db, g)
    assert (mine.function, mine.depth) == ("main.call", values["depth"])
    above = [r[0] for r in db.execute("SELECT function FROM frames WHERE process_id = ? AND goid = ? "
                                      "AND depth < ? AND NOT hidden", (g.process_id, g.goid, mine.depth))]
    assert above and all(not f.startswith("main.") for f in above)


def test_cli_names_the_links_a_null_key_left_out(one_process):
    path, _, _ = one_process
    db = open_snapshot(path)
    out = exray("links", path, "calls", rowid_of(db, "calls", "id = '1'")).stdout
    assert "not linked by same_addr: its key addr_trusted is NULL\n" in out
    assert "not linked by serves" not in out
