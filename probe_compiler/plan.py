"""The probe plan: one executor-neutral IR compiled from (binary, spec).

A plan is data. It says, for each captured function, its pc range, where each
root variable lives at each pc (DWARF location pieces), which access ops turn
that variable into the captured expression, and the types to decode with. The
user-space reader runs it now; the eBPF probe will run the same plan.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field

from .decode import Budgets
from .errors import ExpressionError, SpecError, SymbolNotFound
from .types import TypeTable

PLAN_VERSION = 1


@dataclass
class VarLoc:
    lo: int
    hi: int
    pieces: list[list]          # [size, kind, reg, offset] per DWARF piece; [] = optimized out


@dataclass
class CapturePlan:
    column: str
    expr: str
    root: str                   # the variable the expression starts from
    ops: list                   # access ops from probe_compiler.expr (data)
    type_id: int                # the expression's result type


@dataclass
class FunctionPlan:
    symbol: str
    table: str
    entry: int
    end: int
    captures: list[CapturePlan]
    roots: dict[str, list[VarLoc]]   # root variable -> its locations by pc range
    root_types: dict[str, int]


@dataclass
class ProbePlan:
    build_id: str
    go_version: str | None
    layout: dict | None              # RuntimeLayout.to_json(); None without DWARF
    types: TypeTable
    functions: list[FunctionPlan]
    budgets: Budgets = field(default_factory=Budgets)
    warnings: list[str] = field(default_factory=list)
    version: int = PLAN_VERSION

    def function_by_symbol(self) -> dict[str, FunctionPlan]:
        return {f.symbol: f for f in self.functions}

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["types"] = self.types.to_json()
        return json.dumps(d)


def _locations(var) -> list[VarLoc]:
    out = []
    for r in var.ranges:
        pieces = [] if r.location is None else [
            [p.size, p.kind, p.reg, p.offset] for p in r.location.pieces]
        out.append(VarLoc(r.lo, r.hi, pieces))
    return out


def _function_plan(fs, binary, dwarf, all_types: set[int]) -> FunctionPlan:
    from .expr import check_expr, parse_expr

    fn = binary.pclntab.func_by_name(fs.symbol)
    if fn is None:
        names = [f.name for f in binary.pclntab.funcs()]
        raise SymbolNotFound(f"no function {fs.symbol} in {binary.path}",
                             difflib.get_close_matches(fs.symbol, names, n=3))
    info = dwarf.function(fs.symbol)
    by_name = {}
    for v in info.variables:
        by_name.setdefault(v.name, v)
    var_types = {n: v.type_id for n, v in by_name.items()}
    types = dwarf.type_table(var_types.values())
    captures, roots = [], {}
    for cs in fs.captures:
        try:
            te = check_expr(parse_expr(cs.expr), var_types, types)
        except ExpressionError as e:
            raise SpecError(f"{fs.symbol}: capture {cs.expr!r}: {e}", line=cs.line, column=cs.column) from None
        captures.append(CapturePlan(cs.name, cs.expr, te.root, [list(op) for op in te.ops], te.type_id))
        roots[te.root] = _locations(by_name[te.root])
    all_types.update(var_types[r] for r in roots)
    all_types.update(c.type_id for c in captures)
    return FunctionPlan(fs.symbol, fs.table, fn.entry, fn.end, captures, roots,
                        {r: var_types[r] for r in roots})


def compile_plan(binary, dwarf, spec, budgets: Budgets | None = None, layout=None) -> ProbePlan:
    """Compile the spec against one binary. Every spec problem raises SpecError with its line."""
    plan = ProbePlan(binary.build_id, binary.go_version,
                     layout.to_json() if layout is not None else None, TypeTable(), [],
                     budgets or Budgets())
    if spec is None or not spec.functions:
        return plan
    if dwarf is None:
        plan.warnings.append(f"{binary.path} has no DWARF: captured values are unavailable")
        return plan
    roots: set[int] = set()
    for fs in spec.functions:
        try:
            plan.functions.append(_function_plan(fs, binary, dwarf, roots))
        except SymbolNotFound as e:
            raise SpecError(str(e), path=getattr(spec, "path", "exray.yaml"),
                            line=fs.line, column=fs.column) from None
    plan.types = dwarf.type_table(roots)
    return plan
