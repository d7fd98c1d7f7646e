"""Captures read by the eBPF probe (agent/ebpf/capplan.py, probe.bpf.c's
reads stage) give the ptrace executor's rows, on the suite's capture
programs and specs; and the probe really reads them: where its copies lack
what the decoder reads, the snapshot is taken again with ptrace, which the
record says (`ebpf_retry`), and these tests hold that to the cases named.

Each program parks its goroutines, so two snapshots a moment apart see the
same values; the ptrace rows are themselves checked against each program's
own report by the suites that own them (test_snapshot_values, ...)."""
from __future__ import annotations

import json

import pytest

import gobuild
from targets import run_target
from agent.ebpf.availability import why_unavailable
from agent.snapshot import SnapshotOptions
from probe_compiler.decode import Budgets
from probe_compiler.dwarf import DwarfInfo
from probe_compiler.gobinary import GoBinary
from probe_compiler.spec import parse_spec
from server.snapshot_job import snapshot_pids

pytestmark = pytest.mark.skipif(why_unavailable() is not None, reason=f"eBPF: {why_unavailable()}")

TIGHT = Budgets(string_bytes=5, elements=2, depth=2, frame_bytes=300, snapshot_bytes=4000)


def rows(rec) -> dict:
    return {g.goid: [(c.function, c.depth, json.dumps(c.values, sort_keys=True),
                      json.dumps(c.raw, sort_keys=True), json.dumps(c.errors, sort_keys=True))
                     for c in g.captures] for g in rec.goroutines if g.captures}


def both(pid: int, spec, budgets=None):
    """(ptrace record, eBPF record) of one process, one right after the other."""
    [ref] = snapshot_pids([pid], spec, SnapshotOptions(executor="ptrace"), budgets=budgets)
    [got] = snapshot_pids([pid], spec, SnapshotOptions(executor="ebpf"), budgets=budgets)
    assert ref.error is None and got.error is None, (ref.error, got.error)
    return ref, got


def values_spec(binary, workdir, skip=()) -> tuple[object, list[str]]:
    """main.capture of the values program with every variable its DWARF describes."""
    with GoBinary.open(str(binary)) as b:
        described = {v.name.lstrip("&") for v in
                     DwarfInfo.load(str(binary), b.build_id).function("main.capture").variables}
    expected = json.loads((workdir / "v.json").read_text())
    names = [k for k in expected if k in described and k not in skip]
    return parse_spec("version: 1\nfunctions:\n  main.capture:\n    capture:\n"
                      + "".join(f"      - {k}\n" for k in names)), names


@pytest.mark.parametrize("budgets", [None, TIGHT, Budgets(string_bytes=1 << 20, elements=100_000, depth=16,
                                                          frame_bytes=64 << 20)],
                         ids=["default", "tight", "roomy"])
def test_every_kind_of_the_values_program_is_read_by_the_probe(go_build, tmp_path, budgets):
    binary = go_build("values")
    with run_target(binary, "-values", str(tmp_path / "v.json")) as t:
        spec, names = values_spec(binary, tmp_path)
        ref, got = both(t.pid, spec, budgets)
    assert getattr(got, "ebpf_retry", None) is None, got.ebpf_retry
    assert got.probe_report.sites >= 1 and got.probe_report.copies > len(names)
    assert rows(got) == rows(ref)


def test_what_the_probe_does_not_walk_is_read_again_with_ptrace(tmp_path):
    binary = gobuild.build("exprs", ())
    spec = parse_spec('version: 1\nfunctions:\n  main.inspect:\n    capture: [st.ID, "st.byName[\\"beta\\"]"]\n')
    with run_target(binary, "-values", str(tmp_path / "v.json")) as t:
        ref, got = both(t.pid, spec)
    assert got.ebpf_retry and "not in the probe's copies" in got.ebpf_retry
    assert any("taken again with ptrace" in w for w in got.warnings)
    assert rows(got) == rows(ref)


def test_expressions_give_ptraces_rows(tmp_path):
    from test_exprs_e2e import SPEC
    binary = gobuild.build("exprs", ())
    with run_target(binary, "-values", str(tmp_path / "v.json")) as t:
        ref, got = both(t.pid, parse_spec(SPEC))
    assert rows(got) == rows(ref) and rows(ref)


def test_field_paths_and_indexes_run_in_the_probe(tmp_path):
    """Derefs, slice indexes (in and out of range), lengths and addresses
    run in the probe (its roots' steps): no retry."""
    binary = gobuild.build("exprs", ())
    spec = parse_spec("version: 1\nfunctions:\n  main.inspect:\n    capture:\n"
                      + "".join(f"      - \"{e}\"\n" for e in ("st.ID", "st.Base.Name", "&st.p.B", "len(st.tags)",
                                                             "cap(st.ch)", "len(st.byName)", "st.s", "st.tags[1]",
                                                             "st.tags[9]", "st.s[1]")))
    with run_target(binary, "-values", str(tmp_path / "v.json")) as t:
        ref, got = both(t.pid, spec)
    assert getattr(got, "ebpf_retry", None) is None, got.ebpf_retry
    assert rows(got) == rows(ref) and rows(ref)


@pytest.mark.parametrize("program", ["inlined_capture", "generics"])
def test_inlined_and_generic_frames_give_ptraces_rows(program, tmp_path):
    mod = __import__({"inlined_capture": "test_inlined_capture", "generics": "test_generics"}[program])
    binary = gobuild.build(program, ())
    with run_target(binary, "-values", str(tmp_path / "v.json")) as t:
        ref, got = both(t.pid, parse_spec(mod.SPEC))
    assert rows(got) == rows(ref) and rows(ref)


@pytest.mark.parametrize("build", ["exe", "pie", "go1.21"])
def test_optimized_builds_give_ptraces_rows(build, tmp_path):
    """Roots in spill slots and in pieces; PIE (the load bias keys the sites);
    Go 1.21's hmap maps (not walked by the probe: read again with ptrace)."""
    from test_optimized_values import SPEC
    flags = ("-buildmode=pie",) if build == "pie" else ()
    binary = gobuild.build("optvalues", flags, release="1.21.13" if build == "go1.21" else None)
    with run_target(binary, "-values", str(tmp_path / "v.json")) as t:
        ref, got = both(t.pid, parse_spec(SPEC))
    assert rows(got) == rows(ref) and rows(ref)


def test_a_client_and_a_server_in_one_probe_snapshot(go_build, tmp_path):
    """Two binaries, one spec, one eBPF snapshot: each process's captures come
    from its own tables in the probe (two slots side by side), and equal the
    ptrace snapshot's rows for both."""
    from test_two_binaries import BALANCES, FIRST, SPEC
    addr = tmp_path / "addr"
    server_exe, client_exe = go_build("rpcserver"), go_build("rpcclient")
    spec = parse_spec(SPEC.format(server=server_exe.name, client=client_exe.name))
    with run_target(server_exe, "-addr-file", addr, "-expect", 1 + BALANCES, dump=False) as server:
        server.wait_line("JOB", 10)
        with run_target(client_exe, "-addr-file", addr, "-first", FIRST, "-balances", BALANCES,
                        dump=False) as client:
            for _ in range(1 + BALANCES):
                client.wait_line("CALL", 10)
                server.wait_line("HANDLE", 10)
            server.wait_line("PARKED", 10)
            pids = [server.pid, client.pid]
            ref = snapshot_pids(pids, spec, SnapshotOptions(executor="ptrace"))
            got = snapshot_pids(pids, spec, SnapshotOptions(executor="ebpf"))
    for r, g in zip(ref, got):
        assert r.error is None and g.error is None, (r.error, g.error)
        assert getattr(g, "ebpf_retry", None) is None, g.ebpf_retry
        assert g.probe_report.sites >= 1
        assert rows(g) == rows(r) and rows(r)
