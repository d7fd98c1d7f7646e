"""Stripped binaries: runtime layout from a reference build, globals by code matching.

Each program is built twice with the real toolchain, as is and with
-ldflags="-s -w". The unstripped twin is the oracle. The linker does not always
lay the twins' data out at the same addresses: -s -w is recorded in the build
info, which grows .rodata/.go.buildinfo and can shift every later section by
a few bytes (stripped_target shifts by 0x20; states does not shift). Sections
keep their sizes and contents, so the oracle for a global is its .symtab
address in the twin, taken relative to its section and moved to the same
section of the stripped binary; the tests assert that the sizes match.
"""
from __future__ import annotations

import struct

import pytest

from probe_compiler import stripped
from probe_compiler.errors import DebugInfoMissing
from probe_compiler.gobinary import GoBinary

STRIP = ("-ldflags=-s -w",)
GLOBALS = list(stripped.ADDRESS_FIELDS.values())
DATA_SECTIONS = (".go.module", ".noptrdata", ".data", ".bss", ".noptrbss", ".go.type")


def _sections(b: GoBinary) -> dict[str, tuple[int, int]]:
    return {s.name: (s["sh_addr"], s["sh_size"]) for s in b.elf.iter_sections()}


def oracle(twin: GoBinary, target: GoBinary, addr: int) -> int:
    """addr (in twin) moved to the same place of the same section in target."""
    ts, ss = _sections(twin), _sections(target)
    for name in DATA_SECTIONS:
        start, size = ts[name]
        if start <= addr < start + size:
            assert ss[name][1] == size, f"{name} differs in size between the twins"
            return addr - start + ss[name][0]
    raise AssertionError(f"{addr:#x} is in none of {DATA_SECTIONS}")


@pytest.fixture(scope="module")
def twins(go_build):
    """name -> (unstripped, stripped) GoBinary."""
    opened = {}

    def get(name: str, flags: tuple[str, ...] = ()):
        if (name, flags) not in opened:
            plain = GoBinary.open(go_build(name, flags))
            bare = GoBinary.open(go_build(name, flags + STRIP))
            assert plain.symbol("runtime.allgs") and plain.has_dwarf
            assert bare.symbol("runtime.allgs") is None and not bare.has_dwarf
            opened[(name, flags)] = (plain, bare)
        return opened[(name, flags)]
    yield get
    for pair in opened.values():
        for b in pair:
            b.close()


@pytest.fixture(scope="module")
def reference():
    """The reference program reference_layout builds for this toolchain (cached)."""
    import gobuild
    version = gobuild.go_version()
    settings = {"GOOS": "linux", "GOARCH": "amd64", "GOAMD64": "v1", "GOEXPERIMENT": ""}
    b = GoBinary.open(stripped.reference_binary(version, settings, gobuild.go_exe()))
    yield b
    b.close()


def _symtab_addrs(b: GoBinary) -> dict[str, int]:
    return {n: b.symbol(n)[0] for n in GLOBALS}


def _assert_moduledata(target: GoBinary, md: int) -> None:
    # Independent check: moduledata starts with the pcHeader pointer (the
    # pclntab's first bytes carry its magic) and holds the text start at word 22.
    words = struct.unpack("<23Q", target.read_static(md, 23 * 8))
    assert target.read_static(words[0], 4) == struct.pack("<I", 0xFFFFFFF1)
    assert words[22] == target.text_start


def test_globals_of_stripped_twin_from_unstripped_twin(twins):
    plain, bare = twins("stripped_target")
    found = stripped.find_global_addresses(plain, _symtab_addrs(plain), bare)
    want = {n: oracle(plain, bare, a) for n, a in _symtab_addrs(plain).items()}
    assert found == want
    # This program's twins really are laid out differently: the oracle matters.
    assert any(want[n] != plain.symbol(n)[0] for n in GLOBALS)
    _assert_moduledata(bare, found["runtime.firstmoduledata"])


@pytest.mark.parametrize("prog", ["stripped_target", "states"])
def test_globals_from_independent_reference_program(twins, reference, prog):
    """The real path: the reference is a different, tiny program."""
    plain, bare = twins(prog)
    ref_addrs = _symtab_addrs(reference)
    want = {n: oracle(plain, bare, a) for n, a in _symtab_addrs(plain).items()}
    assert stripped.find_global_addresses(reference, ref_addrs, bare) == want
    # On the unstripped twin it must give back its own symbol table.
    assert stripped.find_global_addresses(reference, ref_addrs, plain) == _symtab_addrs(plain)


def test_sites_are_found_automatically_in_several_functions(reference):
    sites = stripped.reference_sites(reference, _symtab_addrs(reference))
    for name in GLOBALS:
        fns = {s.function for s in sites[name]}
        assert len(fns) >= 2, (name, fns)
    assert "runtime.allgadd" in {s.function for s in sites["runtime.allgs"]}


def test_explicit_function_list_limits_the_search(twins, reference):
    plain, bare = twins("stripped_target")
    ref_addrs = _symtab_addrs(reference)
    only = stripped.find_global_addresses(reference, ref_addrs, bare,
                                          functions=["runtime.allgadd", "runtime.forEachG"])
    assert only == {"runtime.allgs": oracle(plain, bare, plain.symbol("runtime.allgs")[0])}
    # One witness is not enough by default.
    assert stripped.find_global_addresses(reference, ref_addrs, bare,
                                          functions=["runtime.allgadd"]) == {}


def test_different_compiler_flags_give_no_wrong_address(twins, reference):
    """Runtime compiled with -N -l: its code differs, so nothing may match..."""
    flags = ("-gcflags=all=-N -l",)
    plain, bare = twins("stripped_target", flags)
    found = stripped.find_global_addresses(reference, _symtab_addrs(reference), bare)
    want = {n: oracle(plain, bare, a) for n, a in _symtab_addrs(plain).items()}
    assert all(found[n] == want[n] for n in found)
    # ...while reference_layout mirrors -gcflags from the build info and succeeds.
    layout, _ = stripped.reference_layout(bare)
    assert layout.allgs_addr == want["runtime.allgs"]
    assert layout.allm_addr == want["runtime.allm"]


def test_reference_layout_equals_twin_dwarf_layout(twins):
    from probe_compiler.dwarf import DwarfInfo
    from probe_compiler.runtime_layout import read_runtime_layout

    plain, bare = twins("stripped_target")
    layout, note = stripped.reference_layout(bare)
    assert note == f"runtime layout taken from a reference build with {bare.go_version}"
    truth = read_runtime_layout(DwarfInfo.load(str(plain.path), plain.build_id),
                                plain.read_static)
    for field in ("g_size", "g_offsets", "m_size", "m_offsets", "status_names", "gscan",
                  "wait_reasons"):
        assert getattr(layout, field) == getattr(truth, field), field
    assert truth.g_offsets["goid"] and truth.wait_reasons
    # labels_layout: same shape; its "type" is a DIE id of the reference's DWARF.
    assert truth.labels_layout and truth.labels_layout["kind"] == "slice"
    strip_id = lambda d: {k: v for k, v in (d or {}).items() if k != "type"}  # noqa: E731
    assert strip_id(layout.labels_layout) == strip_id(truth.labels_layout)
    for field in ("allgs_addr", "allglen_addr", "allm_addr", "firstmoduledata_addr",
                  "moduledata_types_addr"):
        assert getattr(layout, field) == oracle(plain, bare, getattr(truth, field)), field
    assert layout.errors == truth.errors == ()


def test_reference_is_built_once_and_cached(reference):
    import gobuild
    settings = {"GOOS": "linux", "GOARCH": "amd64", "GOAMD64": "v1", "GOEXPERIMENT": ""}
    again = stripped.reference_binary(gobuild.go_version(), settings, "/nonexistent/go")
    assert str(again) == reference.path


def test_fake_go_version_via_monkeypatch_raises_clear_debuginfomissing(twins, monkeypatch):
    _, bare = twins("stripped_target")
    monkeypatch.setattr(GoBinary, "go_version", property(lambda self: "go1.26.1"))
    monkeypatch.delenv("EXRAY_GO", raising=False)
    with pytest.raises(DebugInfoMissing) as e:
        stripped.reference_layout(bare)
    msg = str(e.value)
    for part in ("built with go1.26.1 and stripped", "install that Go toolchain",
                 "snapshot an unstripped build", "go1.27"):
        assert part in msg, msg


def test_fake_missing_build_info_via_monkeypatch_raises(twins, monkeypatch):
    _, bare = twins("stripped_target")
    monkeypatch.setattr(GoBinary, "go_version", property(lambda self: None))
    with pytest.raises(DebugInfoMissing, match="Go version is unknown"):
        stripped.reference_layout(bare)


def test_same_code_accepts_only_relocation_differences():
    code = bytes.fromhex("488b05 11223344 e8 55667788 4883c408 c3")
    reloc = bytes.fromhex("488b05 aabbccdd e8 01020304 4883c408 c3")
    assert stripped.same_code(code, reloc)
    assert not stripped.same_code(code, bytes.fromhex("488b05 11223344 e8 55667788 4883c410 c3"))
    assert not stripped.same_code(code, code + b"\xcc")
    # An opcode change next to a displacement is not a relocation.
    assert not stripped.same_code(code, bytes.fromhex("488b0d 11223344 e8 55667788 4883c408 c3"))
