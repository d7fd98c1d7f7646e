"""The DWARF reader against Go's own view of its types (reflect/unsafe) and ABI."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probe_compiler.dwarf import DwarfInfo
from probe_compiler.errors import DebugInfoMissing, SymbolNotFound
from probe_compiler.types import Kind, TypeTable

sys.path.insert(0, str(Path(__file__).parent))
from test_runtime_layout import StaticReader  # noqa: E402

SRC = Path(__file__).parent / "goprogs" / "dwarf_types" / "main.go"
# Go's register ABI on amd64 passes integer args in RAX, RBX, RCX, RDI, RSI, ...
# whose DWARF numbers are 0, 3, 2, 5, 4.
ABI_INT_REGS = [0, 3, 2, 5, 4, 8, 9, 10, 11]


@pytest.fixture(scope="module")
def binary(go_build):
    return go_build("dwarf_types")


@pytest.fixture(scope="module")
def dwarf(binary, tmp_path_factory):
    return DwarfInfo.load(str(binary), "test-dwarf-types", str(tmp_path_factory.mktemp("c")))


@pytest.fixture(scope="module")
def go_layout(binary):
    out = subprocess.run([str(binary), "layout"], capture_output=True, text=True, check=True)
    return {t["name"]: t for t in json.loads(out.stdout)}


def _line_of(text: str) -> int:
    return next(i for i, l in enumerate(SRC.read_text().splitlines(), 1) if text in l)


@pytest.mark.parametrize("name", ["main.server", "main.inner", "main.square",
                                  "main.pair[string,int]", "sync.Mutex", "time.Time"])
def test_struct_layout_matches_reflect(dwarf, go_layout, name):
    want = go_layout[name]
    t = dwarf.type_by_name(name)
    assert t.kind == Kind.STRUCT and t.name == name
    assert t.size == want["size"]
    # reflect spells a type's package by name, DWARF by import path.
    got = [(f.name, f.offset, re.sub(r"[\w.]+/", "", dwarf.type(f.type_id).name), f.embedded)
           for f in t.fields]
    assert got == [(f["name"], f["offset"], f["type"], f["embedded"]) for f in want["fields"] or []]


def test_field_kinds(dwarf):
    s = dwarf.type_by_name("main.server")
    kind = {f.name: dwarf.type(f.type_id).kind for f in s.fields}
    assert kind == {
        "inner": Kind.STRUCT, "name": Kind.STRING, "port": Kind.UINT, "ratio": Kind.FLOAT,
        "c": Kind.COMPLEX, "ok": Kind.BOOL, "tags": Kind.SLICE, "counts": Kind.MAP,
        "byID": Kind.MAP, "ch": Kind.CHAN, "fn": Kind.FUNC, "any": Kind.INTERFACE,
        "shape": Kind.INTERFACE, "parent": Kind.POINTER, "mu": Kind.STRUCT, "n": Kind.INT,
        "arr": Kind.ARRAY, "deadline": Kind.STRUCT, "ptr": Kind.UINT}
    assert dwarf.type_by_name("unsafe.Pointer").kind == Kind.UNSAFE_POINTER
    assert dwarf.type_by_name("main.Named").name == "main.Named"


def test_headers_keep_runtime_fields(dwarf):
    st = dwarf.type_by_name("string")
    assert [(f.name, f.offset) for f in st.fields] == [("str", 0), ("len", 8)]
    sl = dwarf.type_by_name("[]string")
    assert [f.name for f in sl.fields] == ["array", "len", "cap"] and sl.elem == st.id
    arr = dwarf.type_by_name("[4]uint8")
    assert (arr.length, arr.size, dwarf.type(arr.elem).name) == (4, 4, "uint8")
    ptr = dwarf.type_by_name("*main.server")
    assert ptr.kind == Kind.POINTER and dwarf.type(ptr.elem).name == "main.server"


def test_interfaces(dwarf):
    any_t, shape = dwarf.type_by_name("interface {}"), dwarf.type_by_name("main.Shape")
    assert any_t.empty and [f.name for f in any_t.fields] == ["_type", "data"]
    assert not shape.empty and [f.name for f in shape.fields] == ["tab", "data"]
    assert shape.name == "main.Shape" and shape.size == 16
    assert dwarf.type_by_name("error").kind == Kind.INTERFACE


def test_swiss_map_layout(dwarf):
    m = dwarf.type_by_name("map[string]int")
    assert (dwarf.type(m.key).name, dwarf.type(m.elem).name, m.size) == ("string", "int", 8)
    ml = m.map_layout
    assert ml.impl == "swiss"  # go1.24+; detected from the fields, not the version
    header = dwarf.type(ml.header)
    assert header.field("dirPtr") and header.field("dirLen") and header.field("used")
    group = dwarf.type(ml.group)
    assert [f.name for f in group.fields] == ["ctrl", "slots"]
    slot = dwarf.type(ml.slot)
    assert [(f.name, dwarf.type(f.type_id).name) for f in slot.fields] == \
        [("key", "string"), ("elem", "int")]
    assert dwarf.type(ml.table).field("groups") is not None


def test_chan_and_func(dwarf):
    ch = dwarf.type_by_name("chan int")
    assert dwarf.type(ch.elem).name == "int"
    hchan = dwarf.type(ch.chan_header)
    assert {"qcount", "dataqsiz", "buf", "closed", "recvq", "sendq"} <= {f.name for f in hchan.fields}
    assert dwarf.type_by_name("func(int) error").kind == Kind.FUNC


def test_type_table_is_closed_and_serializable(dwarf):
    roots = [dwarf.type_by_name("main.server").id]
    tt = dwarf.type_table(roots)
    for t in tt.types.values():
        refs = [f.type_id for f in t.fields] + [r for r in (t.elem, t.key, t.chan_header) if r]
        assert all(r in tt for r in refs), t.name
    assert TypeTable.from_json(json.loads(json.dumps(tt.to_json()))).types == tt.types


def test_runtime_type_lookup(dwarf):
    s = dwarf.type_by_name("main.server")
    assert s.runtime_type and dwarf.type_by_runtime_type(s.runtime_type).id == s.id
    assert dwarf.type_by_runtime_type(1) is None


def test_globals_and_constants(dwarf, binary):
    addr, t = dwarf.global_var("main.globalCounter")
    assert t.name == "int64"
    assert int.from_bytes(StaticReader(binary)(addr, 8), "little") == 42
    assert dwarf.global_var("main.globalServer")[1].name == "*main.server"
    assert dwarf.constant("runtime._Grunning") == 2
    assert dwarf.constants("runtime.waitReasonS")["runtime.waitReasonSleep"] > 0


def test_function_params_in_abi_registers(dwarf):
    f = dwarf.function("main.handle")
    assert f.low_pc < f.high_pc
    # Go describes a loop's string by one register while only its pointer is
    # live; that must come out as an explained gap, not a wrong location.
    assert all("one 8-byte register" in e for e in f.errors)
    live = {v.name: loc for v, loc in f.variables_at(f.low_pc)}
    assert live["s"].pieces[0].kind == "reg" and live["s"].pieces[0].reg == ABI_INT_REGS[0]
    assert live["id"].pieces[0].reg == ABI_INT_REGS[1]
    # A string is two words in the next two integer registers.
    assert [(p.kind, p.reg, p.size) for p in live["label"].pieces] == \
        [("reg", ABI_INT_REGS[2], 8), ("reg", ABI_INT_REGS[3], 8)]


def test_every_variable_location_is_sane(dwarf):
    for name in ("main.handle", "main.main", "main.callsInlined", "main.usePair"):
        f = dwarf.function(name)
        for v in f.variables:
            assert all(f.low_pc <= lo < hi <= f.high_pc for lo, hi in v.scope), v.name
            for r in v.ranges:
                assert f.low_pc <= r.lo < r.hi <= f.high_pc, (name, v.name)
                for p in r.location.pieces:
                    assert p.kind in ("reg", "cfa", "addr", "value", "empty")
                    assert p.kind != "cfa" or p.offset < 0  # locals live below the CFA
        params = [v for v in f.variables if v.is_param and not v.name.startswith("~")]
        for v in params:
            assert v.ranges, (name, v.name)


def test_lexical_block_scopes(dwarf):
    f = dwarf.function("main.handle")
    by_name = {v.name: v for v in f.variables}
    assert by_name["i"].scope != by_name["s"].scope  # loop variables live in the loop block
    assert not any(v.name == "i" for v, _ in f.variables_at(f.low_pc))
    assert by_name["total"].decl_line == _line_of("total := 0")


def test_inlined_calls(dwarf):
    f = dwarf.function("main.callsInlined")
    calls = [c for c in f.inlined if c.function == "main.inlinedHelper"]
    assert sorted(c.call_line for c in calls) == [_line_of("z := inlinedHelper"),
                                                 _line_of("return z + inlinedHelper")]
    assert all(c.call_file.endswith("main.go") for c in calls)
    first = min(calls, key=lambda c: c.call_line)
    assert {"s", "x"} <= {v.name for v in first.variables}
    pc = first.ranges[0][0]
    live = dict((v.name, loc) for v, loc in f.variables_at(pc, "main.inlinedHelper"))
    assert "s" in live
    assert f.variables_at(f.high_pc + 1000, "main.inlinedHelper") == []


def test_unknown_names_suggest(dwarf):
    with pytest.raises(SymbolNotFound) as e:
        dwarf.function("main.handel")
    assert "main.handle" in e.value.suggestions
    with pytest.raises(SymbolNotFound):
        dwarf.type_by_name("main.servr")
    with pytest.raises(SymbolNotFound):
        dwarf.global_var("main.nope")


def test_no_debug_info(go_build, tmp_path):
    stripped = go_build("dwarf_types", ("-ldflags=-w",))
    with pytest.raises(DebugInfoMissing):
        DwarfInfo.load(str(stripped), "stripped", str(tmp_path))


def test_warm_load_reads_only_the_index(binary, tmp_path):
    cold = DwarfInfo.load(str(binary), "warm-test", str(tmp_path))
    assert not cold.from_cache
    warm = DwarfInfo.load(str(binary), "warm-test", str(tmp_path))
    assert warm.from_cache and warm._dwarf is None  # no ELF/DWARF parsing yet
    assert sorted(warm.function_names()) == sorted(cold.function_names())
    assert warm.constant("runtime._Gscan") == cold.constant("runtime._Gscan")
    assert warm._dwarf is None
    assert warm.type_by_name("main.server") == cold.type_by_name("main.server")


@pytest.mark.slow
def test_cmd_compile_cold_and_warm(tmp_path, capsys):
    import gobuild
    exe = gobuild.build_std_command("cmd/compile")
    t0 = time.perf_counter()
    cold = DwarfInfo.load(str(exe), "cmd-compile", str(tmp_path))
    t1 = time.perf_counter()
    warm = DwarfInfo.load(str(exe), "cmd-compile", str(tmp_path))
    t2 = time.perf_counter()
    assert warm.from_cache and not cold.from_cache
    f = warm.function("cmd/compile/internal/gc.Main")
    t3 = time.perf_counter()
    g = warm.type_by_name("runtime.g")
    assert g.field("goid") is not None and f.variables
    with capsys.disabled():
        print(f"\ncmd/compile: cold load {t1 - t0:.2f}s, warm load {t2 - t1:.3f}s, "
              f"first function after warm {t3 - t2:.2f}s, "
              f"{len(list(warm.function_names()))} functions")
