"""A spec against one Go binary: does every function, variable and field exist?

The check runs the real compile path (plan.compile_plan) one function, then
one capture, at a time, so that every problem is reported, not just the
first, each at its own line and column with a `did you mean` where the
binary has a close name. Editors show these as diagnostics when the code moves.
A generic function's `[...]` symbol is checked against every instance the
binary has (compile_plan compiles each): an error names the instance.
"""
from __future__ import annotations

import dataclasses

from .debuginfo import DwarfSource, find_dwarf
from .errors import DebugInfoMissing, ProbeCompilerError, SpecError
from .gobinary import GoBinary
from .plan import compile_plan
from .spec import FunctionSpec, Spec


def _compile_errors(binary, dwarf, fn: FunctionSpec) -> list[SpecError]:
    """Compile `fn` without captures (does it exist?), then each capture alone."""
    def attempt(captures) -> SpecError | None:
        one = Spec([dataclasses.replace(fn, captures=captures)], path=fn.path)
        try:
            compile_plan(binary, dwarf, one)
        except SpecError as e:
            return e
        return None

    missing = attempt([])
    if missing is not None:
        return [missing]
    if dwarf is None:           # pclntab knows the function; variables need DWARF
        return []
    return [e for e in (attempt([c]) for c in fn.captures) if e is not None]


@dataclasses.dataclass
class BinaryCheck:
    errors: list[SpecError]     # empty when the spec fits the binary
    dwarf: DwarfSource          # where the DWARF came from, or where Ex-Ray looked


def check_against_binary(spec: Spec, binary_path: str, cache_dir: str | None = None) -> list[SpecError]:
    """Every problem of `spec` against the binary at `binary_path`; empty when it fits."""
    return check_binary(spec, binary_path, cache_dir).errors


def check_binary(spec: Spec, binary_path: str, cache_dir: str | None = None) -> BinaryCheck:
    """The problems of `spec` against the binary, and where its DWARF is.

    A binary without DWARF (none in it, nor in a debug file found for it) can
    only be checked for its functions (its variables are unavailable at
    snapshot time anyway, see stripped.py)."""
    from .dwarf import DwarfInfo

    with GoBinary.open(binary_path) as binary:
        source = find_dwarf(binary_path, binary)
        try:
            dwarf = DwarfInfo.load(binary_path, binary.build_id, cache_dir, source)
        except DebugInfoMissing as e:
            dwarf, source = None, source.unusable(str(e))
        try:
            errors = [e for fn in spec.functions for e in _compile_errors(binary, dwarf, fn)]
        except ProbeCompilerError as e:     # the binary itself is unreadable past its header
            errors = [SpecError(f"cannot check against {binary_path}: {e}", spec.path, 1, 1)]
        finally:
            if dwarf is not None:
                dwarf.close()
    return BinaryCheck(errors, source)
