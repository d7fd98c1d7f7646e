"""DWARF 4 (GOEXPERIMENT=nodwarf5) and DWARF 5 builds of one program read alike.

Go 1.27 writes DWARF 5 (.debug_loclists/.debug_rnglists, addresses by
.debug_addr index); with GOEXPERIMENT=nodwarf5 it writes DWARF 4
(.debug_loc/.debug_ranges, address pairs). The same source must give the same
name index, the same variable locations and the same inlined calls either way.
The list readers are also checked on hand-made bytes of both forms.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from probe_compiler.dwarf import DwarfInfo
from probe_compiler.dwarf import index as dwindex
from probe_compiler.dwarf.locations import ListReader
from probe_compiler.errors import BinaryError

FUNCTIONS = ["main.handle", "main.callsInlined", "main.describe", "main.main",
             "runtime.newproc", "runtime.gopark", "runtime.mallocgc", "fmt.Fprintln"]


@pytest.fixture(scope="module")
def builds(go_build):
    return {5: go_build("dwarf_types"),
            4: go_build("dwarf_types", env={"GOEXPERIMENT": "nodwarf5"})}


@pytest.fixture(scope="module")
def dwarfs(builds, tmp_path_factory):
    out = {v: DwarfInfo.load(str(b), f"test-dwarf{v}", str(tmp_path_factory.mktemp(f"c{v}")))
           for v, b in builds.items()}
    yield out
    for d in out.values():
        d.close()


def _symbols(path) -> dict[str, int]:
    with open(path, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return {s.name: s["st_value"] for s in symtab.iter_symbols()}


def test_builds_are_dwarf_4_and_5(builds):
    for v, b in builds.items():
        with dwindex.DebugSections(str(b)) as secs:
            assert secs.has(".debug_loc") == (v == 4)
            assert secs.has(".debug_loclists") == (v == 5)
            info = secs.data(".debug_info")
            assert struct.unpack_from("<H", info, 4)[0] == v


def test_same_index(dwarfs, builds):
    i5, i4 = dwarfs[5].index, dwarfs[4].index
    assert i4.functions.keys() == i5.functions.keys()
    # Only DWARF differs between the builds: code lands at the same pcs.
    assert {n: e[1:] for n, e in i4.functions.items()} == {n: e[1:] for n, e in i5.functions.items()}
    assert i4.types.keys() == i5.types.keys()
    assert i4.constants == i5.constants
    assert i4.cu_names == i5.cu_names
    assert i4.globals.keys() == i5.globals.keys() and i5.globals
    # Data may move (build info differs), so each build's globals are checked
    # against its own symbol table.
    for v, idx in ((5, i5), (4, i4)):
        syms = _symbols(builds[v])
        wrong = {n: hex(a) for n, (_, a) in idx.globals.items() if n in syms and syms[n] != a}
        assert not wrong, (v, list(wrong.items())[:5])
    assert len(i4.runtime_types) == len(i5.runtime_types)


def _norm(d: DwarfInfo, binary: Path, name: str):
    """A FunctionInfo with type ids (DIE offsets, which differ) as type names, and
    the program's own files relative to the folder it was built in (one per build)."""
    f = d.function(name)
    build_dir = str(binary.parent) + "/"

    def file(path: str) -> str:   # <build dir>/src<pid>/main.go
        return "<build>/" + Path(path).name if path.startswith(build_dir) else path

    def variables(vs):
        return [(v.name, d.type(v.type_id).name, v.is_param, v.decl_line, v.scope,
                 [(r.lo, r.hi, r.location) for r in v.ranges]) for v in vs]
    return (f.low_pc, f.high_pc, variables(f.variables),
            [(c.function, c.ranges, file(c.call_file), c.call_line, c.depth, variables(c.variables))
             for c in f.inlined], f.errors)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_same_functions(dwarfs, builds, name):
    got5, got4 = _norm(dwarfs[5], builds[5], name), _norm(dwarfs[4], builds[4], name)
    assert got5[2], f"{name}: no variables to compare"
    assert got4 == got5


def test_same_types(dwarfs):
    for name in ("main.server", "main.pair[string,int]", "map[string]int", "chan int",
                 "runtime.g", "runtime.hchan"):
        t5, t4 = dwarfs[5].type_by_name(name), dwarfs[4].type_by_name(name)
        assert (t4.kind, t4.size, [(f.name, f.offset, dwarfs[4].type(f.type_id).name) for f in t4.fields]) \
            == (t5.kind, t5.size, [(f.name, f.offset, dwarfs[5].type(f.type_id).name) for f in t5.fields])


@pytest.mark.parametrize("v", [4, 5])
def test_call_file_is_the_source_file(dwarfs, v):
    """DWARF 4 numbers line-table directories from 1 (0 is the CU's own), DWARF 5 from 0."""
    f = dwarfs[v].function("main.callsInlined")
    files = {c.call_file for c in f.inlined if c.function == "main.inlinedHelper"}
    assert len(files) == 1
    path = Path(files.pop())
    assert path.name == "main.go" and "func callsInlined" in path.read_text()


# ---- the list readers on hand-made bytes ----------------------------------------------

class FakeSections:
    """prefix() as DebugSections gives it: at least `end` bytes, counted."""

    def __init__(self, **sections: bytes):
        self.sections = {"." + k: v for k, v in sections.items()}
        self.asked: list[tuple[str, int]] = []

    def prefix(self, name, end):
        self.asked.append((name, end))
        return self.sections[name][:end]


def _u64(*xs):
    return b"".join(struct.pack("<Q", x) for x in xs)


def test_v4_location_and_range_lists():
    expr = bytes([0x50])                                  # DW_OP_reg0
    loc = (b"\0" * 8                                      # lists need not start at 0
           + _u64(0x10, 0x20) + struct.pack("<H", 1) + expr            # relative to the CU base
           + _u64((1 << 64) - 1, 0x400000)                              # base address selection
           + _u64(0x0, 0x8) + struct.pack("<H", 2) + bytes([0x9C, 0x96])
           + _u64(0, 0))
    ranges = _u64(0x1, 0x2, (1 << 64) - 1, 0x500000, 0x10, 0x18, 0, 0)
    r = ListReader(FakeSections(debug_loc=loc, debug_ranges=ranges), 4, base=0x1000)
    assert r.locations(8) == [(0x1010, 0x1020, expr), (0x400000, 0x400008, bytes([0x9C, 0x96]))]
    assert r.ranges(0) == [(0x1001, 0x1002), (0x500010, 0x500018)]


def test_v5_location_and_range_lists():
    addr = _u64(0xAAAA, 0x401000, 0x402000)               # addr_base 8 skips the header word
    loc = bytes([0x01, 0x01,                              # DW_LLE_base_addressx 1
                 0x04, 0x00, 0x75, 0x01, 0x50,            # offset_pair [0, 0x75): reg0
                 0x04, 0x75, 0x96, 0x01, 0x01, 0x9C,      # offset_pair: call_frame_cfa
                 0x03, 0x01, 0x10, 0x01, 0x51,            # startx_length 1 (0x402000) +0x10
                 0x08]) + _u64(0x403000) + bytes([0x04, 0x01, 0x52,   # start_length
                 0x05, 0x01, 0x53,                        # default location: no pc range
                 0x06]) + _u64(0x404000) + bytes([        # base_address
                 0x04, 0x02, 0x04, 0x01, 0x54,
                 0x00])
    rng = bytes([0x01, 0x00, 0x04, 0x01, 0x02, 0x05]) + _u64(0x500000) + bytes([0x04, 0x10, 0x20, 0x00])
    r = ListReader(FakeSections(debug_loclists=loc, debug_rnglists=rng, debug_addr=addr), 5,
                   base=0, addr_base=8)
    # With addr_base 8, entry 0 is 0x401000 and entry 1 is 0x402000.
    assert r.locations(0) == [(0x402000, 0x402075, b"\x50"), (0x402075, 0x402096, b"\x9c"),
                              (0x402000, 0x402010, b"\x51"), (0x403000, 0x403004, b"\x52"),
                              (0x404002, 0x404004, b"\x54")]
    assert r.ranges(0) == [(0x401001, 0x401002), (0x500010, 0x500020)]


def test_long_list_reads_more_of_the_section():
    n = 100   # 100 entries of 19 bytes: past the first 512-byte read
    loc = b"".join(_u64(i, i + 1) + struct.pack("<H", 1) + b"\x50" for i in range(1, n + 1)) + _u64(0, 0)
    secs = FakeSections(debug_loc=loc)
    got = ListReader(secs, 4, base=0).locations(0)
    assert [lo for lo, _, _ in got] == list(range(1, n + 1))
    assert len(secs.asked) > 1
    with pytest.raises(BinaryError):   # a list that runs off the section's end
        ListReader(FakeSections(debug_loc=loc[:-8]), 4, base=0).locations(0)


def test_sections_inflate_only_as_far_as_asked(builds, monkeypatch):
    monkeypatch.setattr(dwindex._Inflater, "STEP", 4096)
    path = str(builds[4])
    with open(path, "rb") as f:
        want = ELFFile(f).get_section_by_name(".debug_loc").data()
    with dwindex.DebugSections(path) as secs:
        head = secs.prefix(".debug_loc", 100)
        assert 100 <= len(head) < len(want) and bytes(head[:100]) == want[:100]
        mid = len(want) // 2
        assert bytes(secs.prefix(".debug_loc", mid)[:mid]) == want[:mid]
        assert secs.data(".debug_loc") == want
        assert secs.prefix(".debug_loc", 10) == want   # whole from now on
        assert secs.data(".debug_nope") == b"" and not secs.has(".debug_nope")


def test_inflater_on_a_plain_zlib_stream():
    payload = bytes(range(256)) * 5000
    raw = b"\0" * 24 + zlib.compress(payload)
    inf = dwindex._Inflater(raw, 24, len(payload))
    assert bytes(inf.upto(10))[:10] == payload[:10]
    assert inf.all() == payload
    assert bytes(inf.upto(len(payload) + 100)) == payload   # never past the end
