"""A spec against Go binaries: does every function, variable and field exist?

The check runs the real compile path (plan.compile_plan) one function, then
one capture, at a time, so that every problem is reported, not just the
first, each at its own line and column with a `did you mean` where the
binary has a close name. Editors show these as diagnostics when the code moves.
A generic function's `[...]` symbol is checked against every instance the
binary has (compile_plan compiles each): an error names the instance.

A spec may span binaries (`check-spec --binary server --binary client`): a
function one binary lacks is fine when another has it, unless a target that
stands for that binary expects it (plan.absent_errors). Captures are checked
in every binary that has their function. With one binary, a function it
lacks is an error, as a snapshot of its processes alone would say.
"""
from __future__ import annotations

import dataclasses
import os

from .debuginfo import DwarfSource, find_dwarf
from .errors import DebugInfoMissing, ProbeCompilerError, SpecError
from .gobinary import GoBinary
from .plan import BinaryFunctions, absent_errors, compile_plan
from .spec import FunctionSpec, Spec


def _compile_errors(binary, dwarf, fn: FunctionSpec) -> tuple[list[str] | None, list[SpecError]]:
    """(the binary's closest names if it lacks `fn`, else None; the errors
    of `fn` in it): compiled without captures (does it exist?), then each
    capture alone."""
    def attempt(captures, absent_ok=False):
        one = Spec([dataclasses.replace(fn, captures=captures)], path=fn.path)
        try:
            return compile_plan(binary, dwarf, one, absent_ok=absent_ok)
        except SpecError as e:
            return e

    bare = attempt([], absent_ok=True)
    if isinstance(bare, SpecError):
        return None, [bare]
    if fn.symbol in bare.absent:
        return bare.absent[fn.symbol], []
    if dwarf is None:           # pclntab knows the function; variables need DWARF
        return None, []
    return None, [e for e in (attempt([c]) for c in fn.captures) if isinstance(e, SpecError)]


@dataclasses.dataclass
class BinaryCheck:
    errors: list[SpecError]     # empty when the spec fits the binary
    dwarf: DwarfSource          # where the DWARF came from, or where Ex-Ray looked
    path: str = ""              # the binary
    absent: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # symbol -> did-you-mean
    readable: bool = True       # False: the binary could not be read past its header
    warnings: list[str] = dataclasses.field(default_factory=list)  # captures no wait point can read


@dataclasses.dataclass
class SpecCheck:
    """A spec against several binaries: the errors of the whole, and each binary's part."""
    errors: list[SpecError]
    binaries: list[BinaryCheck]


def check_against_binary(spec: Spec, binary_path: str, cache_dir: str | None = None) -> list[SpecError]:
    """Every problem of `spec` against the binary at `binary_path`; empty when it fits."""
    return check_binary(spec, binary_path, cache_dir).errors


def check_binary(spec: Spec, binary_path: str, cache_dir: str | None = None) -> BinaryCheck:
    """The problems of `spec` against the binary, and where its DWARF is.

    A binary without DWARF (none in it, nor in a debug file found for it) can
    only be checked for its functions (its variables are unavailable at
    snapshot time anyway, see stripped.py)."""
    checked = check_binaries(spec, [binary_path], cache_dir)
    return dataclasses.replace(checked.binaries[0], errors=checked.errors)


def check_binaries(spec: Spec, binary_paths: list[str], cache_dir: str | None = None) -> SpecCheck:
    """The problems of `spec` against these binaries together: each capture in
    every binary that has its function; a function that no binary has, or
    that a target expects of a binary lacking it."""
    parts = [_check_one(spec, p, cache_dir) for p in binary_paths]
    # A capture error names its binary when there are several (grouped when
    # it is the same in each); an unreadable binary's error names it already.
    found: dict[tuple, list[str]] = {}
    for b in parts:
        for e in b.errors:
            found.setdefault((e.path, e.line, e.column, e.detail), []).append(b.path)
    errors = [SpecError(detail if len(parts) == 1 or not _readable_in(paths, parts)
                        else f"{detail} (in {', '.join(paths)})", path, line, column)
              for (path, line, column, detail), paths in found.items()]
    errors += absent_errors(spec, [BinaryFunctions(b.path, os.path.basename(b.path), b.absent)
                                   for b in parts if b.readable])
    errors.sort(key=lambda e: _order(spec, e))
    return SpecCheck(errors, parts)


def _order(spec: Spec, e: SpecError) -> tuple[int, int, int]:
    """Errors in the spec's function order (files included), then by position."""
    at = [i for i, fn in enumerate(spec.functions) if fn.path == e.path and fn.line <= e.line]
    return (at[-1] if at else -1, e.line, e.column)


def _readable_in(paths: list[str], parts: list[BinaryCheck]) -> bool:
    return all(b.readable for b in parts if b.path in paths)


def _check_one(spec: Spec, binary_path: str, cache_dir: str | None) -> BinaryCheck:
    from .dwarf import DwarfInfo

    with GoBinary.open(binary_path) as binary:
        source = find_dwarf(binary_path, binary)
        try:
            dwarf = DwarfInfo.load(binary_path, binary.build_id, cache_dir, source)
        except DebugInfoMissing as e:
            dwarf, source = None, source.unusable(str(e))
        absent: dict[str, list[str]] = {}
        errors: list[SpecError] = []
        readable = True
        try:
            for fn in spec.functions:
                close, errs = _compile_errors(binary, dwarf, fn)
                if close is not None:
                    absent[fn.symbol] = close
                errors += errs
            warnings = _warnings(binary, dwarf, spec) if dwarf is not None and not errors else []
        except ProbeCompilerError as e:     # the binary itself is unreadable past its header
            errors = [SpecError(f"cannot check against {binary_path}: {e}", spec.path, 1, 1)]
            absent, readable = {}, False
        finally:
            if dwarf is not None:
                dwarf.close()
    return BinaryCheck(errors, source, binary_path, absent, readable, warnings if readable else [])


def _warnings(binary, dwarf, spec) -> list[str]:
    try:
        return availability_warnings(binary, dwarf, compile_plan(binary, dwarf, spec, absent_ok=True))
    except SpecError:
        return []


# -- where captures can be read (additions for issue 10) ------------------------

def _return_addresses(binary, fn) -> list[int]:
    """The return addresses of fn's direct calls to Go functions (E8 rel32 to a
    function entry; indirect calls are not seen): where an outer frame of fn
    can be when a goroutine waits."""
    code = binary.read_static(fn.entry, fn.end - fn.entry)
    pcln, out = binary.pclntab, []
    at = code.find(b"\xe8")
    while 0 <= at <= len(code) - 5:
        ret = fn.entry + at + 5
        target = ret + int.from_bytes(code[at + 1:at + 5], "little", signed=True)
        callee = pcln.func_for_pc(target)
        if callee is not None and callee.entry == target:
            out.append(ret)
        at = code.find(b"\xe8", at + 1)
    return out


def availability_warnings(binary, dwarf, plan) -> list[str]:
    """A capture that neither DWARF nor an argument spill slot can give at any
    return address inside its function (where its frames sit while the
    goroutine waits): say so, and where it can be read instead (the
    function's entry, the receiver, a caller's frame)."""
    out = []
    for fp in plan.functions:
        fn = binary.pclntab.func_by_name(fp.symbol)
        if fp.unavailable or fn is None:
            continue
        rets = _return_addresses(binary, fn)
        if not rets:
            continue
        recv = _receiver(dwarf, fp)
        for cap in fp.captures:
            if any(_readable(fp, cap.root, pc) for pc in rets):
                continue
            where = []
            if any(loc.lo <= fp.entry < loc.hi and loc.pieces for loc in fp.roots.get(cap.root, [])):
                where.append("at the function's entry (a probe there, not a snapshot)")
            if recv and recv != cap.root:
                where.append(f"a field of the receiver {recv} that holds it")
            where.append("what a caller's frame passed (capture it in the caller)")
            out.append(f"{fp.spec_name}: {cap.expr!r} is available at none of its {len(rets)} call "
                       f"sites (where its frames wait); read instead " + "; or ".join(where))
    return out


def _readable(fp, root: str, ret: int) -> bool:
    """At return address `ret`: a location DWARF gives without registers, or a
    spill slot Go's traceback would vouch for."""
    from .argspill import stale_words

    for loc in fp.roots.get(root, []):
        if loc.lo <= ret < loc.hi and loc.pieces and all(p[1] in ("cfa", "addr", "value") for p in loc.pieces):
            return True
    spills = fp.spills or {}
    return root in spills.get("roots", {}) and stale_words(spills, root, ret - 1) == 0


def _receiver(dwarf, fp) -> str | None:
    """A method's receiver (its first parameter): `main.(*T).m`, `main.T.m`."""
    if dwarf is None or fp.symbol.rsplit("/", 1)[-1].count(".") < 2:
        return None
    params = [v for v in dwarf.function(fp.symbol).variables if v.is_param and not v.name.startswith(".")]
    return params[0].name.lstrip("&") if params else None
