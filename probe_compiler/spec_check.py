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
        except ProbeCompilerError as e:     # the binary itself is unreadable past its header
            errors = [SpecError(f"cannot check against {binary_path}: {e}", spec.path, 1, 1)]
            absent, readable = {}, False
        finally:
            if dwarf is not None:
                dwarf.close()
    return BinaryCheck(errors, source, binary_path, absent, readable)
