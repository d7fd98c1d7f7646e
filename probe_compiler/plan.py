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
    unavailable: str | None = None   # why no capture of this function can be read (no DWARF)


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


def _func(binary, symbol: str):
    fn = binary.pclntab.func_by_name(symbol)
    if fn is None:
        names = [f.name for f in binary.pclntab.funcs()]
        raise SymbolNotFound(f"no function {symbol} in {binary.path}",
                             difflib.get_close_matches(symbol, names, n=3))
    return fn


def _function_plan_without_dwarf(fs, binary) -> FunctionPlan:
    """pclntab still knows the function, so its frames get rows; every value is NULL."""
    fn = _func(binary, fs.symbol)
    captures = [CapturePlan(cs.name, cs.expr, "", [], 0) for cs in fs.captures]
    return FunctionPlan(fs.symbol, fs.table, fn.entry, fn.end, captures, {}, {},
                        unavailable=f"{binary.path} has no DWARF (stripped): variables are unavailable")


def _function_plan(fs, binary, dwarf, all_types: TypeTable, spec_path: str) -> FunctionPlan:
    from .expr import check_expr, parse_expr

    fn = _func(binary, fs.symbol)
    info = dwarf.function(fs.symbol)
    by_name = {}
    for v in info.variables:
        by_name.setdefault(v.name, v)
    types = dwarf.type_table(v.type_id for v in by_name.values())
    var_types = _user_visible(by_name, types)
    captures, roots = [], {}
    for cs in fs.captures:
        try:
            te = check_expr(parse_expr(cs.expr), var_types, types)
        except ExpressionError as e:
            raise SpecError(f"{fs.symbol}: capture {cs.expr!r}: {e}", path=spec_path,
                            line=cs.line, column=cs.column) from None
        ops = [list(op) for op in te.ops]
        if te.root not in by_name:  # escaped to the heap: DWARF has `&x`, a pointer to it
            ops.insert(0, ["deref"])
            roots[te.root] = _locations(by_name["&" + te.root])
        else:
            roots[te.root] = _locations(by_name[te.root])
        captures.append(CapturePlan(cs.name, cs.expr, te.root, ops, te.type_id))
    # check_expr may add synthetic types (len's int) to `types`: keep them all.
    closure = dwarf.type_table([var_types[r] for r in roots] + [c.type_id for c in captures if c.type_id >= 0]
                               + [by_name["&" + r].type_id for r in roots if r not in by_name])
    for t in list(closure.types.values()) + [t for t in types.types.values() if t.id < 0]:
        all_types.types.setdefault(t.id, t)
    return FunctionPlan(fs.symbol, fs.table, fn.entry, fn.end, captures, roots,
                        {r: var_types[r] for r in roots})


def _user_visible(by_name: dict, types: TypeTable) -> dict[str, int]:
    """Variable name -> type as the user writes it.

    The compiler names a variable that escaped to the heap `&x` (a pointer to
    it); users write `x`. Names with a dot (`s.len`, `.autotmp_3`) are the
    compiler's own pieces and temporaries."""
    out = {}
    for name, v in by_name.items():
        if name.startswith("&") and name[1:] not in by_name:
            out[name[1:]] = types[v.type_id].elem
        elif "." not in name:
            out[name] = v.type_id
    return out


def compile_plan(binary, dwarf, spec, budgets: Budgets | None = None, layout=None) -> ProbePlan:
    """Compile the spec against one binary. Every spec problem raises SpecError with its line."""
    plan = ProbePlan(binary.build_id, binary.go_version,
                     layout.to_json() if layout is not None else None, TypeTable(), [],
                     budgets or Budgets())
    if spec is None or not spec.functions:
        return plan
    if dwarf is None:
        plan.warnings.append(f"{binary.path} has no DWARF: captured values are unavailable")
    spec_path = getattr(spec, "path", "exray.yaml")
    for fs in spec.functions:
        try:
            plan.functions.append(_function_plan_without_dwarf(fs, binary) if dwarf is None
                                  else _function_plan(fs, binary, dwarf, plan.types,
                                                      getattr(fs, "path", spec_path)))
        except SymbolNotFound as e:
            raise SpecError(str(e), path=getattr(fs, "path", spec_path), line=fs.line,
                            column=fs.column) from None
    return plan
