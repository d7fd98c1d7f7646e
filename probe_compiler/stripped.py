"""Runtime layout for stripped Go binaries (`go build -ldflags="-s -w"`).

A stripped binary has no DWARF and no .symtab, so neither the runtime's struct
layout nor the addresses of runtime.allgs & co can be read from it. It keeps
.gopclntab (function names and entries) and .go.buildinfo (exact Go version and
build settings), which is enough:

1. The layout (g/m field offsets, status constants, wait reason strings)
   depends only on the Go version, GOOS/GOARCH and GOEXPERIMENT. When the local
   toolchain has that version, build a tiny reference program with the same
   settings (cached under ~/.cache/exray/reference/) and read its layout from
   its DWARF.
2. The addresses of the runtime's globals are found in the target's own code.
   Runtime functions are compiled identically into both binaries; the linker
   only patches relocation fields (call targets, RIP-relative displacements).
   In the reference, every RIP-relative disp32 that points into one of the
   wanted globals is a "site" (function, code offset). At the same offset of
   the same function in the target, the disp32 gives the target's address.
   A site counts only when the two functions have equal length and their bytes
   differ only inside relocation fields; a global's address is accepted when
   several functions agree and none disagrees.

Everything about the target comes from its file: never from a live process.
"""
from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

from .errors import BinaryError, DebugInfoMissing
from .gobinary import GoBinary

# Layout fields that hold addresses in the binary (layout field -> runtime global).
ADDRESS_FIELDS = {
    "allgs_addr": "runtime.allgs",
    "allglen_addr": "runtime.allglen",
    "allm_addr": "runtime.allm",
    "firstmoduledata_addr": "runtime.firstmoduledata",
}
REQUIRED_GLOBALS = ("runtime.allgs", "runtime.allglen", "runtime.allm")

CACHE_DIR = Path(os.environ.get("EXRAY_REFERENCE_CACHE",
                                Path.home() / ".cache" / "exray" / "reference"))

# Build settings (`go version -m`) that change the runtime's layout or its
# machine code. The layout needs GOOS/GOARCH/GOEXPERIMENT; the code matching
# also wants the same micro-architecture level and instrumentation.
_LAYOUT_SETTINGS = ("GOOS", "GOARCH", "GOEXPERIMENT")
_CODE_SETTINGS = ("GOAMD64", "GOARM64", "GO386", "GOARM", "GOMIPS", "GOMIPS64", "GOPPC64",
                  "GORISCV64", "-race", "-msan", "-asan", "-buildmode", "-gcflags",
                  "-asmflags")
_FLAG_SETTINGS = ("-race", "-msan", "-asan", "-buildmode", "-gcflags", "-asmflags")

_REFERENCE_MAIN = """\
// Reference program built by Ex-Ray to read the Go runtime's layout from DWARF.
package main

import (
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"time"
)

func main() {
	c := make(chan int)
	pprof.Do(context.Background(), pprof.Labels("exray", "reference"), func(context.Context) {
		go func() { c <- len(os.Args) }()
	})
	select {
	case n := <-c:
		fmt.Println(n)
	case <-time.After(time.Second):
	}
}
"""



# -- finding globals by code matching ------------------------------------------

# ModRM bytes with mod=00, rm=101: [RIP + disp32] in 64-bit mode.
_RIPREL_MODRM = re.compile(rb"[\x05\x0d\x15\x1d\x25\x2d\x35\x3d]", re.S)
# Bytes an instruction can have between its disp32 and its end (an immediate).
_IMM_SIZES = (0, 1, 2, 4)
_I32 = struct.Struct("<i")


@dataclasses.dataclass(frozen=True)
class Site:
    """A RIP-relative reference to a global: disp32 at function + offset."""
    function: str
    offset: int   # of the disp32, from the function's entry
    delta: int    # the operand's address minus the global's start (a field of it)


def _code(binary: GoBinary, fn) -> bytes:
    return bytes(binary.read_static(fn.entry, fn.end - fn.entry))


def _sites_in(name: str, entry: int, code: bytes, ranges: list[tuple[int, int, str]],
              starts: list[int]) -> list[tuple[str, Site]]:
    out = []
    for m in _RIPREL_MODRM.finditer(code):
        at = m.start() + 1
        if at + 4 > len(code):
            break
        disp = _I32.unpack_from(code, at)[0]
        for k in _IMM_SIZES:
            target = entry + at + 4 + k + disp
            j = bisect.bisect_right(starts, target) - 1
            if j >= 0 and target < ranges[j][1]:
                out.append((ranges[j][2], Site(name, at, target - ranges[j][0])))
                break
    return out


def _is_reloc_field(code: bytes, at: int) -> bool:
    """Can code[at:at+4] be a field the linker patches (rel32 or RIP disp32)?"""
    if at < 1:
        return False
    op = code[at - 1]
    return op in (0xE8, 0xE9) or (op & 0xC7) == 0x05


def same_code(ref: bytes, tgt: bytes) -> bool:
    """Equal length, and every differing byte lies in a relocation field."""
    if len(ref) != len(tgt):
        return False
    if ref == tgt:
        return True
    i, n = 0, len(ref)
    while i < n:
        if ref[i] == tgt[i]:
            i += 1
            continue
        # The field holding byte i starts within the 4 bytes before it.
        for start in range(max(i - 3, 1), i + 1):
            if _is_reloc_field(ref, start) and start + 4 <= n and \
                    ref[start - 1] == tgt[start - 1]:
                i = start + 4
                break
        else:
            return False
    return True


def reference_sites(ref: GoBinary, ref_addrs: dict[str, int],
                    functions: Iterable[str] | None = None) -> dict[str, list[Site]]:
    """For each global, the RIP-relative sites in the reference that point into it.

    functions: names to scan; None scans every runtime.* function. A global's
    extent is its .symtab size when known, else just its first byte."""
    ranges = []
    for gname, addr in ref_addrs.items():
        sym = ref.symbol(gname)
        size = sym[1] if sym is not None and sym[0] == addr and sym[1] > 0 else 1
        ranges.append((addr, addr + size, gname))
    ranges.sort()
    starts = [r[0] for r in ranges]
    pcln = ref.pclntab
    if functions is None:
        fns = [f for f in pcln.funcs() if f.name.startswith("runtime.")]
    else:
        fns = [f for f in (pcln.func_by_name(n) for n in functions) if f is not None]
    out: dict[str, list[Site]] = defaultdict(list)
    for fn in fns:
        if fn.end <= fn.entry:
            continue
        try:
            code = _code(ref, fn)
        except BinaryError:
            continue
        for gname, site in _sites_in(fn.name, fn.entry, code, ranges, starts):
            out[gname].append(site)
    return dict(out)


def find_global_addresses(ref: GoBinary, ref_addrs: dict[str, int], target: GoBinary,
                          functions: Iterable[str] | None = None, *,
                          min_functions: int = 2) -> dict[str, int]:
    """Addresses in `target` of the globals whose reference addresses are ref_addrs.

    ref: an unstripped binary built by the same toolchain with the same
    settings; target: the (stripped) binary. functions: the functions to use
    (default: every runtime.* function of the reference that references a
    wanted global). A global is returned only when at least min_functions
    functions, with identical code in both binaries, agree on its address and
    no such function disagrees; the others are left out of the result.
    """
    if ref.arch != "amd64" or target.arch != "amd64":
        raise DebugInfoMissing(
            f"{target.path}: finding runtime globals without symbols is implemented for "
            f"amd64 only (binary is {target.arch}); rebuild without -ldflags=-s")
    sites = reference_sites(ref, ref_addrs, functions)
    votes: dict[str, Counter] = defaultdict(Counter)
    checked: dict[str, tuple[int, int, bytes, bytes] | None] = {}
    for gname, gsites in sites.items():
        per_fn: dict[str, set[int]] = defaultdict(set)
        for s in gsites:
            if s.function not in checked:
                checked[s.function] = _pair(ref, target, s.function)
            pair = checked[s.function]
            if pair is None:
                continue
            r_entry, t_entry, r_code, t_code = pair
            r_disp = _I32.unpack_from(r_code, s.offset)[0]
            t_disp = _I32.unpack_from(t_code, s.offset)[0]
            # The instruction's length cancels out: both operands are
            # (entry + end-of-instruction offset + disp), at the same offset.
            per_fn[s.function].add(ref_addrs[gname] + (t_entry - r_entry) + (t_disp - r_disp))
        for fname, addrs in per_fn.items():
            if len(addrs) == 1:          # a function disagreeing with itself is no witness
                votes[gname][addrs.pop()] += 1
    found = {}
    for gname, counter in votes.items():
        if len(counter) == 1:
            (addr, n), = counter.items()
            if n >= min_functions:
                found[gname] = addr
    return found


def _pair(ref: GoBinary, target: GoBinary, name: str):
    rf = ref.pclntab.func_by_name(name)
    tf = target.pclntab.func_by_name(name)
    if rf is None or tf is None or rf.end - rf.entry != tf.end - tf.entry:
        return None
    try:
        r_code, t_code = _code(ref, rf), _code(target, tf)
    except BinaryError:
        return None
    if not same_code(r_code, t_code):
        return None
    return rf.entry, tf.entry, r_code, t_code


# -- the reference build ---------------------------------------------------------

def _settings(binary: GoBinary) -> dict[str, str]:
    """Build settings of `binary` that shape the runtime's layout or code."""
    s = binary.build_info.settings
    out = {k: s[k] for k in (*_LAYOUT_SETTINGS, *_CODE_SETTINGS) if s.get(k)}
    out.setdefault("GOARCH", binary.arch)
    out.setdefault("GOOS", "linux")
    out.setdefault("GOEXPERIMENT", "")
    if out.get("-buildmode") == "exe":
        del out["-buildmode"]      # the default; keeps the cache key stable
    return out


def _base_version(v: str) -> str:
    # runtime.Version() appends " X:exp1,exp2" for non-default experiments;
    # those are compared through the GOEXPERIMENT setting instead.
    return v.split(" X:")[0].strip()


_VERSION_OF: dict[str, str | None] = {}


def _toolchain_version(go: str) -> str | None:
    if go not in _VERSION_OF:
        try:
            r = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True,
                               timeout=60, env=_go_env({}))
            _VERSION_OF[go] = r.stdout.strip() if r.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            _VERSION_OF[go] = None
    return _VERSION_OF[go]


def _candidate_toolchains(version: str) -> list[str]:
    """go binaries that might be `version`: $EXRAY_GO, golang.org/dl wrappers
    (`go1.26.1` on PATH, ~/sdk/go1.26.1), this Python's prefix, then `go`."""
    cands = [os.environ.get("EXRAY_GO"), shutil.which(version),
             str(Path.home() / "sdk" / version / "bin" / "go"),
             str(Path(sys.prefix) / "bin" / "go"), shutil.which("go")]
    seen, out = set(), []
    for c in cands:
        if c and c not in seen and os.path.isfile(c) and os.access(c, os.X_OK):
            seen.add(c)
            out.append(c)
    return out


def find_toolchain(version: str) -> tuple[str | None, list[str]]:
    """(path of a local go whose GOVERSION is `version`, versions seen otherwise)."""
    seen = []
    for go in _candidate_toolchains(version):
        v = _toolchain_version(go)
        if v == version:
            return go, seen
        if v:
            seen.append(f"{v} ({go})")
    return None, seen


def _go_env(settings: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    # No user go.env, GOFLAGS or network: the build must depend on `settings` only.
    env.update(GOTOOLCHAIN="local", GOPROXY="off", GOFLAGS="", GOENV="off",
               GOWORK="off", CGO_ENABLED="0")
    for k, v in settings.items():
        if not k.startswith("-"):
            env[k] = v
    if settings.get("-race") == "true" or settings.get("-msan") == "true" \
            or settings.get("-asan") == "true":
        env["CGO_ENABLED"] = "1"
    return env


def _build_flags(settings: dict[str, str]) -> list[str]:
    flags = []
    for k in _FLAG_SETTINGS:
        v = settings.get(k)
        if v is None:
            continue
        if k in ("-race", "-msan", "-asan"):
            if v == "true":
                flags.append(k)
        else:
            flags.append(f"{k}={v}")
    return flags


def reference_binary(version: str, settings: dict[str, str], go: str,
                     cache_dir: Path | None = None) -> Path:
    """Build (once) the reference program with toolchain `go`; return its path."""
    cache_dir = Path(cache_dir or CACHE_DIR)
    key = hashlib.sha256(json.dumps([version, sorted(settings.items()), _REFERENCE_MAIN])
                         .encode()).hexdigest()[:16]
    name = f"{version}-{settings.get('GOOS')}-{settings.get('GOARCH')}-{key}"
    out = cache_dir / name / "exray-reference"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as work:
        Path(work, "main.go").write_text(_REFERENCE_MAIN)
        Path(work, "go.mod").write_text("module exray.reference\n\ngo 1.21\n")
        tmp = Path(work, "exray-reference")
        cmd = [go, "build", "-trimpath", *_build_flags(settings), "-o", str(tmp), "."]
        try:
            r = subprocess.run(cmd, cwd=work, env=_go_env(settings), capture_output=True,
                               text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DebugInfoMissing(f"building the {version} reference program failed: {e}") from e
        if r.returncode != 0:
            raise DebugInfoMissing(
                f"building the {version} reference program ({' '.join(cmd[1:])}) failed: "
                f"{r.stderr.strip()[-800:]}; snapshot an unstripped build instead")
        (cache_dir / name / "settings.json").write_text(json.dumps(settings, indent=1))
        os.replace(tmp, out)     # atomic: concurrent builders race harmlessly
    return out


# -- the layout -----------------------------------------------------------------

def reference_layout(binary: GoBinary, *, cache_dir: Path | None = None):
    """Runtime layout for a binary without DWARF, and a note for the user.

    Returns (RuntimeLayout, note). Raises DebugInfoMissing, saying what to do,
    when no local toolchain has the binary's Go version or the runtime's
    globals can't be located in the binary's code."""
    from .dwarf import DwarfInfo
    from .runtime_layout import read_runtime_layout

    full = binary.go_version
    if not full:
        raise DebugInfoMissing(
            f"{binary.path}: stripped and without Go build info, so its Go version is unknown; "
            "snapshot an unstripped build (without -ldflags=-s -w)")
    version = _base_version(full)
    if binary.arch != "amd64":
        raise DebugInfoMissing(
            f"{binary.path}: built with {version} for {binary.arch} and stripped; Ex-Ray "
            "rebuilds the runtime layout of stripped binaries on amd64 only: snapshot an "
            "unstripped build")
    go, others = find_toolchain(version)
    if go is None:
        have = f" (found {', '.join(others)})" if others else " (no Go toolchain found)"
        raise DebugInfoMissing(
            f"{binary.path}: built with {version} and stripped{have}; install that Go "
            f"toolchain (go install golang.org/dl/{version}@latest && {version} download, or "
            f"point EXRAY_GO at its go binary) or snapshot an unstripped build")
    settings = _settings(binary)
    ref_path = reference_binary(version, settings, go, cache_dir)
    ref = GoBinary.open(ref_path)
    try:
        ref_settings = _settings(ref)
        if ref.go_version != full or ref_settings != settings:
            diff = {k: (settings.get(k), ref_settings.get(k))
                    for k in set(settings) | set(ref_settings)
                    if settings.get(k) != ref_settings.get(k)}
            raise DebugInfoMissing(
                f"{binary.path}: the reference build does not match the binary "
                f"({ref.go_version} vs {full}; settings binary/reference: {diff}); "
                "snapshot an unstripped build")
        dwarf = DwarfInfo.load(str(ref_path), ref.build_id)
        layout = read_runtime_layout(dwarf, ref.read_static)
        layout = _retarget(layout, dwarf, ref, binary)
    finally:
        ref.close()
    return layout, f"runtime layout taken from a reference build with {version}"


def _retarget(layout, dwarf, ref: GoBinary, target: GoBinary):
    """The reference layout with the target's own addresses substituted."""
    ref_addrs = {}
    for field_name, gname in ADDRESS_FIELDS.items():
        sym = ref.symbol(gname)
        addr = sym[0] if sym is not None else getattr(layout, field_name)
        if addr is not None:
            ref_addrs[gname] = addr
    found = find_global_addresses(ref, ref_addrs, target)
    errors = list(layout.errors)
    if "runtime.allglen" not in found and "runtime.allgs" in found:
        # allglen mirrors len(allgs) (runtime.allgadd stores both under allglock).
        found["runtime.allglen"] = found["runtime.allgs"] + target.ptr_size
        errors.append("runtime.allglen not located; using len(runtime.allgs) instead")
    missing = [g for g in REQUIRED_GLOBALS if g not in found]
    if missing:
        raise DebugInfoMissing(
            f"{target.path}: stripped, and {', '.join(missing)} could not be located by "
            f"matching its runtime code against a {target.go_version} reference build (built "
            "with other compiler flags?); snapshot an unstripped build")
    changes = {f: found.get(g) for f, g in ADDRESS_FIELDS.items()}
    md = changes["firstmoduledata_addr"]
    types = None
    if md is not None:
        try:
            types_off = dwarf.type_by_name("runtime.moduledata").field("types").offset
            text_off = dwarf.type_by_name("runtime.moduledata").field("text").offset
            if struct.unpack("<Q", target.read_static(md + text_off, 8))[0] != target.text_start:
                raise DebugInfoMissing("its .text field is not the binary's text start")
            types = struct.unpack("<Q", target.read_static(md + types_off, 8))[0]
        except (DebugInfoMissing, BinaryError, AttributeError, struct.error) as e:
            errors.append(f"runtime.firstmoduledata found at {md:#x} but unusable: {e}")
            changes["firstmoduledata_addr"] = None
    else:
        errors.append("runtime.firstmoduledata not located in the stripped binary")
    changes["moduledata_types_addr"] = types
    return dataclasses.replace(layout, errors=tuple(errors), **changes)
