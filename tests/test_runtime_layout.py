"""RuntimeLayout against the Go source tree and the ELF symbol table."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from probe_compiler.dwarf import DwarfInfo
from probe_compiler.runtime_layout import RuntimeLayout, read_runtime_layout

GOSRC = Path(__file__).resolve().parent.parent / ".venv/lib/python3.11/site-packages/go/src"


class StaticReader:
    """ELF file bytes at a virtual address (initialized data only), for tests."""

    def __init__(self, path):
        self.f = open(path, "rb")
        self.elf = ELFFile(self.f)
        self.loads = [s for s in self.elf.iter_segments() if s["p_type"] == "PT_LOAD"]

    def __call__(self, addr: int, size: int) -> bytes:
        for s in self.loads:
            if s["p_vaddr"] <= addr and addr + size <= s["p_vaddr"] + s["p_filesz"]:
                self.f.seek(s["p_offset"] + addr - s["p_vaddr"])
                return self.f.read(size)
        raise ValueError(f"{addr:#x}+{size} is not initialized data in the file")

    def symbol(self, name: str) -> int:
        return self.elf.get_section_by_name(".symtab").get_symbol_by_name(name)[0]["st_value"]


@pytest.fixture(scope="module")
def binary(go_build):
    return go_build("dwarf_runtime")


@pytest.fixture(scope="module")
def dwarf(binary, tmp_path_factory):
    return DwarfInfo.load(str(binary), "test-runtime-layout", str(tmp_path_factory.mktemp("c")))


@pytest.fixture(scope="module")
def reader(binary):
    return StaticReader(binary)


@pytest.fixture(scope="module")
def layout(dwarf, reader):
    return read_runtime_layout(dwarf, reader)


def _source_wait_reasons() -> dict[str, str]:
    """waitReasonX -> "string", parsed from runtime2.go's waitReasonStrings literal."""
    src = (GOSRC / "runtime/runtime2.go").read_text()
    body = src[src.index("var waitReasonStrings = [...]string{"):]
    body = body[:body.index("\n}")]
    return dict(re.findall(r'^\s*(waitReason\w+)\s*:\s*"([^"]*)"', body, re.M))


def test_wait_reasons_match_go_source(layout, dwarf):
    expected = _source_wait_reasons()
    assert len(expected) > 30
    checked = 0
    for const, text in expected.items():
        value = dwarf.index.constants.get("runtime." + const)
        if value is None:
            continue  # the compiler drops unused constants
        assert layout.wait_reasons[value] == text, const
        checked += 1
    assert checked > 30
    assert layout.wait_reasons[dwarf.constant("runtime.waitReasonSleep")] == "sleep"


def test_statuses_as_go_prints_them(layout, dwarf):
    c = dwarf.constant
    assert layout.gscan == c("runtime._Gscan")
    assert layout.status_names[c("runtime._Grunnable")] == "runnable"
    assert layout.status_names[c("runtime._Grunning")] == "running"
    assert layout.status_names[c("runtime._Gwaiting")] == "waiting"
    assert layout.status_names[c("runtime._Gsyscall")] == "syscall"
    assert layout.status_names[c("runtime._Gdead")] == "dead"
    assert all(v < layout.gscan for v in layout.status_names)
    assert layout.status_name(c("runtime._Gscan") | c("runtime._Grunning")) == "running"


def test_g_and_m_offsets(layout, dwarf):
    g, m = layout.g_offsets, layout.m_offsets
    # runtime2.go: `stack stack` is g's first field and stack is {lo, hi uintptr}.
    assert (g["stack.lo"], g["stack.hi"]) == (0, 8)
    sched = dwarf.type_by_name("runtime.g").field("sched").offset
    gobuf = dwarf.type_by_name("runtime.gobuf")
    assert g["sched.sp"] == sched + gobuf.field("sp").offset
    assert g["sched.pc"] == sched + gobuf.field("pc").offset
    for name in ("goid", "atomicstatus", "syscallsp", "syscallpc", "m", "gopc", "waitreason",
                 "labels", "parentGoid", "waitsince", "startpc"):
        assert 0 < g[name] < layout.g_size, name
    assert len(set(g.values())) == len(g)
    assert m["g0"] == 0  # runtime2.go: g0 is m's first field
    for name in ("procid", "curg", "gsignal", "alllink", "id"):
        assert 0 < m[name] < layout.m_size, name


def test_globals_and_moduledata(layout, dwarf, reader):
    assert layout.allgs_addr == reader.symbol("runtime.allgs")
    assert layout.allglen_addr == reader.symbol("runtime.allglen")
    assert layout.allm_addr == reader.symbol("runtime.allm")
    assert layout.firstmoduledata_addr == reader.symbol("runtime.firstmoduledata")
    # The linker puts every runtime type after the `runtime.types` symbol.
    assert layout.moduledata_types_addr == reader.symbol("runtime.types")


def test_labels_layout(layout, dwarf):
    lab = layout.labels_layout
    assert lab is not None and lab["kind"] == "slice"
    # runtime/pprof labels are a []struct{Key, Value string}.
    assert (lab["elem_size"], lab["key_offset"], lab["value_offset"]) == (32, 0, 16)


def test_json_round_trip(layout):
    d = json.loads(json.dumps(layout.to_json()))
    assert RuntimeLayout.from_json(d) == layout
    assert not layout.errors
