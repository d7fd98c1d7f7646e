"""pclntab against the Go toolchain's own answers.

Oracles: `go tool nm` (function names and entries), `go tool addr2line`
(function and innermost file:line at a pc, from debug/gosym), the program's own
runtime.Callers + runtime.CallersFrames (inlined frame expansion), and the
DWARF CFA table in .debug_frame (pcsp).
"""
from __future__ import annotations

import random
import re
import subprocess
import time

import pytest

import gobuild
from probe_compiler.gobinary import GoBinary

PROG = "pclntab_basic"
STRIPPED = ("-ldflags=-s -w",)


def go(*args: str, stdin: str | None = None) -> str:
    return subprocess.run([gobuild.go_exe(), *args], input=stdin, capture_output=True,
                          text=True, check=True, env=gobuild.go_env()).stdout


def nm_funcs(path) -> dict[str, set[int]]:
    """Text symbols of `go tool nm`: name without the ABI0 suffix -> addresses
    (an assembly function and its ABI wrapper share the name in pclntab)."""
    out: dict[str, set[int]] = {}
    for line in go("tool", "nm", "-size", str(path)).splitlines():
        addr, size, kind, name = line.split(None, 3)
        if kind in "Tt" and int(size) > 0:
            out.setdefault(name.removesuffix(".abi0"), set()).add(int(addr, 16))
    return out


def addr2line(path, pcs: list[int]) -> list[tuple[str, str, int]]:
    out = go("tool", "addr2line", str(path), stdin="".join(f"{pc:#x}\n" for pc in pcs))
    lines = out.splitlines()
    res = []
    for fn, loc in zip(lines[0::2], lines[1::2]):
        file, _, line = loc.rpartition(":")
        res.append((fn, file, int(line)))
    return res


def runtime_stacks(path) -> list[list[tuple[int, int, str, str, int]]]:
    """Each CallersFrames expansion the program printed: (pc, entry, func, file, line)."""
    out = subprocess.run([str(path)], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    stacks, cur = [], []
    for line in out.splitlines():
        if line.startswith("FRAME "):
            _, pc, entry, fn, loc = line.split(" ", 4)
            file, _, ln = loc.rpartition(":")
            cur.append((int(pc, 16), int(entry, 16), fn, file, int(ln)))
        elif line == "END":
            stacks.append(cur)
            cur = []
    return stacks


def for_print(name: str) -> str:
    """runtime.funcNameForPrint: generic shape arguments print as [...]."""
    return re.sub(r"\[.*\]", "[...]", name)


@pytest.fixture(scope="module")
def prog(go_build):
    return go_build(PROG)


@pytest.fixture(scope="module")
def binary(prog):
    b = GoBinary.open(str(prog))
    yield b
    b.close()


def test_every_function_matches_nm(prog, binary):
    nm = nm_funcs(prog)
    funcs = list(binary.pclntab.funcs())
    assert len(funcs) > 1000
    for fn in funcs:
        assert fn.entry in nm.get(fn.name, ()), fn.name
    # and the other way round: each nm text symbol resolves to itself
    for name, addrs in nm.items():
        for addr in addrs:
            fn = binary.pclntab.func_for_pc(addr)
            assert fn is not None and fn.name == name and fn.entry == addr


@pytest.mark.parametrize("name", ["main.(*T).M", "main.T.V", "main.main.func1",
                                  "main.Map[go.shape.int]", "main.outer", "runtime.goexit"])
def test_named_kinds_of_functions(binary, prog, name):
    fn = binary.pclntab.func_by_name(name)
    assert fn is not None and fn.name == name
    assert binary.symbol(name if name != "runtime.goexit" else "runtime.goexit.abi0")[0] \
        == fn.entry
    assert binary.pclntab.func_for_pc(fn.end - 1) == fn
    assert binary.pclntab.func_by_name("main.nope") is None


def test_func_ids_and_flags(binary):
    p = binary.pclntab
    assert p.func_by_name("runtime.goexit").func_id == "goexit"
    assert p.func_by_name("runtime.goexit").is_topframe
    assert p.func_by_name("runtime.main").func_id == "runtime_main"
    assert p.func_by_name("runtime.mstart").func_id == "mstart"
    assert p.func_by_name("runtime.systemstack").func_id == "systemstack"
    assert p.func_by_name("runtime.asyncPreempt").func_id == "asyncPreempt"
    assert p.func_by_name("runtime.morestack").is_asm
    assert p.func_by_name("main.outer").func_id == "normal"
    # FuncIDWrapper: deferreturn (objabi), go-statement wrappers, asm WRAPPER.
    assert p.func_by_name("runtime.deferreturn").func_id == "wrapper"
    assert p.func_by_name("runtime.gcenable.gowrap1").func_id == "wrapper"
    assert p.func_by_name("runtime.call16").func_id == "wrapper"


def _sample_pcs(binary, n_runtime=60, seed=1):
    """Every 3rd byte of the main package's functions, plus runtime samples."""
    p, rnd = binary.pclntab, random.Random(seed)
    funcs = list(p.funcs())
    mains = [f for f in funcs if f.name.startswith("main.")]
    pcs = [pc for f in mains for pc in range(f.entry, f.end, 3)]
    for f in rnd.sample(funcs, n_runtime):
        pcs += [f.entry, rnd.randrange(f.entry, f.end)]
    return pcs


def test_file_line_matches_addr2line(prog, binary):
    pcs = _sample_pcs(binary)
    want = addr2line(prog, pcs)
    for pc, (fn_name, file, line) in zip(pcs, want):
        fn = binary.pclntab.func_for_pc(pc)
        assert fn is not None and fn.name == fn_name, hex(pc)
        if line > 0:  # addr2line prints ":-1" for the int3 padding after a body
            assert binary.pclntab.file_line(fn, pc) == (file, line), (hex(pc), fn_name)


def _physical_frames(stack):
    """Group one CallersFrames expansion into physical frames: consecutive frames
    with the same entry are one machine frame; its first pc is the lookup pc."""
    groups = []
    for frame in stack:
        if groups and groups[-1][0][1] == frame[1] and frame[2] != groups[-1][-1][2]:
            groups[-1].append(frame)
        else:
            groups.append([frame])
    return groups


def check_frames_against_runtime(binary, path):
    stacks = runtime_stacks(path)
    assert len(stacks) >= 6
    inlined_seen = 0
    for stack in stacks:
        for group in _physical_frames(stack):
            pc = group[0][0]
            fn = binary.pclntab.func_for_pc(pc)
            got = binary.pclntab.frames_at(fn, pc)
            want = [(fn_name, file, line) for _, _, fn_name, file, line in group]
            assert [(for_print(f.function), f.file, f.line) for f in got] == want
            assert [f.inlined for f in got] == [True] * (len(got) - 1) + [False]
            inlined_seen += len(got) - 1
    assert inlined_seen >= 2  # inner and middle, inlined into outer


def test_frames_at_match_callers_frames(binary, prog):
    check_frames_against_runtime(binary, prog)


def test_sp_delta_matches_dwarf_cfa(binary):
    """pcsp == CFA offset - return address, per .debug_frame's rows."""
    dwarf = binary.elf.get_dwarf_info()
    p, checked = binary.pclntab, 0
    for fde in dwarf.CFI_entries():
        if "initial_location" not in fde.header:
            continue
        fn = p.func_for_pc(fde.header["initial_location"])
        if fn is None or not fn.name.startswith(("main.", "runtime.main", "fmt.")):
            continue
        rows = fde.get_decoded().table
        for i, row in enumerate(rows):
            fde_end = fde.header["initial_location"] + fde.header["address_range"]
            end = rows[i + 1]["pc"] if i + 1 < len(rows) else fde_end
            for pc in range(row["pc"], end, 1):
                assert p.sp_delta(fn, pc) == row["cfa"].offset - binary.ptr_size, \
                    (fn.name, hex(pc))
                checked += 1
    assert checked > 1000
    main = p.func_by_name("main.main")
    assert p.sp_delta(main, main.entry) == 0
    assert p.sp_delta(main, main.end) is None


def test_stripped_binary(go_build):
    path = go_build(PROG, STRIPPED)
    with GoBinary.open(str(path)) as b:
        assert not b.has_dwarf and b.symbol("main.main") is None
        assert b.gofunc is not None
        with GoBinary.open(str(go_build(PROG))) as full:  # -s -w keeps the layout
            assert b.gofunc == full.symbol("go:func.*")[0]
            assert b.text_start == full.symbol("runtime.text")[0]
        pcs = _sample_pcs(b, n_runtime=20)
        for pc, (fn_name, file, line) in zip(pcs, addr2line(path, pcs)):
            fn = b.pclntab.func_for_pc(pc)
            assert fn.name == fn_name
            if line > 0:
                assert b.pclntab.file_line(fn, pc) == (file, line)
        check_frames_against_runtime(b, path)


def test_no_section_headers(go_build, tmp_path):
    """sstrip-like binary: pclntab by magic, moduledata by pointer, build info by magic."""
    path = go_build(PROG, STRIPPED)
    raw = bytearray(path.read_bytes())
    raw[0x28:0x30] = bytes(8)   # e_shoff
    raw[0x3C:0x40] = bytes(4)   # e_shnum, e_shstrndx
    cut = tmp_path / "noshdr"
    cut.write_bytes(raw)
    cut.chmod(0o755)
    with GoBinary.open(str(cut)) as b, GoBinary.open(str(path)) as ref:
        assert b.text_start == ref.text_start and b.gofunc == ref.gofunc
        assert b.go_version == ref.go_version and b.build_id == ref.build_id
        check_frames_against_runtime(b, cut)


@pytest.mark.slow
def test_big_binary_cmd_compile():
    path = gobuild.build_std_command("cmd/compile")
    GoBinary.open(str(path)).close()  # warm the page cache
    t0 = time.perf_counter()
    b = GoBinary.open(str(path))
    opened = time.perf_counter() - t0
    fn = b.pclntab.func_for_pc(b.symbol("main.main")[0])
    first = time.perf_counter() - t0
    assert fn.name == "main.main"
    assert opened < 0.1, f"open took {opened:.3f}s"
    assert first < 0.5, f"open + first lookup took {first:.3f}s"
    rnd = random.Random(7)
    nfunc = len(b.pclntab)
    funcs = [b.pclntab._func_at(rnd.randrange(nfunc)) for _ in range(150)]
    pcs = [rnd.randrange(f.entry, f.end) for f in funcs]
    for pc, (fn_name, file, line) in zip(pcs, addr2line(path, pcs)):
        f = b.pclntab.func_for_pc(pc)
        assert f.name == fn_name
        if line > 0:
            assert b.pclntab.file_line(f, pc) == (file, line)
        b.pclntab.frames_at(f, pc)
    t0 = time.perf_counter()
    assert b.pclntab.func_by_name("cmd/compile/internal/ssa.Compile") is not None
    assert time.perf_counter() - t0 < 2.0
    b.close()
