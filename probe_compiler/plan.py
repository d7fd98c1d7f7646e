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
from .generics import is_generic_pattern, spec_instances, suggestion_names
from .types import Kind, TypeTable

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
class InlinedPlan:
    """One place where the compiler inlined a captured function into a caller.

    Its frames are logical (inlined) frames of the caller's physical frame:
    a physical frame of `caller` whose lookup pc (return address - 1 for
    outer frames) lies in `ranges` holds one. That logical frame sits
    `inline_depth` frames inside the physical one (1: inlined directly into
    the caller; 2: into a function itself inlined into the caller, ...), so
    its depth in `frames` is the physical frame's depth minus inline_depth.
    Roots come from the inlined subroutine's own variable DIEs; their
    locations (CFA offsets) are relative to the caller's physical frame.
    `ops` holds each capture's access ops for this instance (a variable can
    escape to the heap in one caller and not in another)."""
    caller: str
    caller_entry: int
    caller_end: int
    ranges: list[list[int]]             # [lo, hi) pcs of the instance (nested inlined calls included)
    inline_depth: int
    call_file: str
    call_line: int
    roots: dict[str, list[VarLoc]]      # empty list: the instance has no such variable left
    ops: dict[str, list]                # capture column -> access ops

    def covers(self, pc: int) -> bool:
        return any(lo <= pc < hi for lo, hi in self.ranges)

    @staticmethod
    def from_json(d: dict) -> "InlinedPlan":
        d = dict(d)
        d["roots"] = _roots_from_json(d["roots"])
        return InlinedPlan(**d)


def _roots_from_json(d: dict) -> dict[str, list[VarLoc]]:
    return {k: [VarLoc(**v) for v in locs] for k, locs in d.items()}


@dataclass
class FunctionPlan:
    """One captured function of the binary.

    A spec symbol with `[...]` (a generic function) compiles to one
    FunctionPlan per instance the compiler made: `symbol` is the instance's
    name in the binary (`main.Map[go.shape.int]`), `spec_symbol` the spec's
    (`main.Map[...]`), and all of them share the spec's table."""
    symbol: str
    table: str
    entry: int
    end: int
    captures: list[CapturePlan]
    roots: dict[str, list[VarLoc]]   # root variable -> its locations by pc range
    root_types: dict[str, int]
    unavailable: str | None = None   # why no capture of this function can be read (no DWARF)
    inlined: list[InlinedPlan] = field(default_factory=list)  # where the compiler inlined it
    spec_symbol: str | None = None   # the spec's `[...]` symbol when this is one instance of it
    spills: dict | None = None       # argspill.function_spills: arguments' spill slots, DWARF's fallback

    @property
    def spec_name(self) -> str:
        """The function as the spec names it: what its rows are filed under."""
        return self.spec_symbol or self.symbol

    @staticmethod
    def from_json(d: dict) -> "FunctionPlan":
        d = dict(d)
        d["captures"] = [CapturePlan(**c) for c in d["captures"]]
        d["roots"] = _roots_from_json(d["roots"])
        d["inlined"] = [InlinedPlan.from_json(i) for i in d.get("inlined", ())]
        return FunctionPlan(**d)


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
    # Spec functions this binary lacks (compile_plan(absent_ok=True)): symbol
    # -> the binary's closest names. Judged across binaries by absent_errors.
    absent: dict[str, list[str]] = field(default_factory=dict)
    # Runtime type offset (from moduledata.types) -> type id in `types`, for
    # an executor without DWARF (an agent): the dynamic types of interfaces.
    # Empty: the executor asks the DWARF (add_runtime_types fills it).
    runtime_types: dict[int, int] = field(default_factory=dict)

    def function_by_symbol(self) -> dict[str, FunctionPlan]:
        return {f.symbol: f for f in self.functions}

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["types"] = self.types.to_json()
        return json.dumps(d)

    @staticmethod
    def from_json(text: str) -> "ProbePlan":
        d = json.loads(text)
        d["types"] = TypeTable.from_json(d["types"])
        d["functions"] = [FunctionPlan.from_json(f) for f in d["functions"]]
        d["budgets"] = Budgets(**d["budgets"])
        d["runtime_types"] = {int(k): v for k, v in d.get("runtime_types", {}).items()}
        return ProbePlan(**d)


# Past this many runtime types a plan would grow past a few MB (about 220
# bytes a type with its closure): the agent then decodes only the dynamic
# types the plan already holds, and the plan says so in a warning.
MAX_PLAN_RUNTIME_TYPES = 20_000


def add_runtime_types(plan: ProbePlan, dwarf, limit: int = MAX_PLAN_RUNTIME_TYPES) -> None:
    """Put every runtime type of the binary in `plan` (types and
    `runtime_types`), so an executor that has only the plan decodes an
    interface's dynamic value as one that asks the DWARF does. For a plan
    compiled here and run elsewhere (server/fleet.py)."""
    if dwarf is None:
        return
    known = dwarf.index.runtime_types           # rtype offset -> type id (DIE offset)
    if len(known) > limit:
        plan.warnings.append(f"the binary has {len(known)} runtime types, more than the {limit} a plan "
                             "carries: interface values of other dynamic types show as unknown")
        known = {off: tid for off, tid in known.items() if tid in plan.types}
    for tid, t in dwarf.type_table(sorted(set(known.values()))).types.items():
        plan.types.types.setdefault(tid, t)
    plan.runtime_types = {off: tid for off, tid in known.items() if tid in plan.types}


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
        raise _not_found(binary, symbol, f"no function {symbol} in {binary.path}")
    return fn


def _not_found(binary, symbol: str, message: str) -> SymbolNotFound:
    """With suggestions: close names, and `[...]` for close generic functions
    (only those, for a `[...]` symbol)."""
    names = suggestion_names(f.name for f in binary.pclntab.funcs())
    if is_generic_pattern(symbol):
        names = {n for n in names if is_generic_pattern(n)}
    return SymbolNotFound(message, difflib.get_close_matches(symbol, names, n=3))


def _instances(fs, binary, with_dwarf: bool, named: set[str]) -> list:
    """The spec function as one FunctionSpec per function of the binary.

    A `[...]` symbol stands for every instance the compiler made of that
    generic function (out of line, or only inlined when there is DWARF to
    read those), except instances the spec names on their own (`named`): those
    get their own table. Any other symbol is itself."""
    if not is_generic_pattern(fs.symbol):
        return [fs]
    from .pclntab import inlined_names

    pcln = binary.pclntab
    names = [f.name for f in pcln.funcs()] + (inlined_names(pcln) if with_dwarf else [])
    found = spec_instances(fs.symbol, names)
    if not found:
        raise _not_found(binary, fs.symbol, f"no instance of the generic function {fs.symbol} "
                                            f"in {binary.path}")
    return [dataclasses.replace(fs, symbol=name) for name in found if name not in named]


def _function_plan_without_dwarf(fs, binary) -> FunctionPlan:
    """pclntab still knows the function, so its frames get rows; every value is NULL."""
    fn = _func(binary, fs.symbol)
    captures = [CapturePlan(cs.name, cs.expr, "", [], 0) for cs in fs.captures]
    return FunctionPlan(fs.symbol, fs.table, fn.entry, fn.end, captures, {}, {},
                        unavailable=f"{binary.path} has no DWARF (stripped): variables are unavailable")


# Past this many callers a function inlined everywhere (a tiny accessor) would
# cost seconds of DWARF parsing: the first ones are kept, with a warning.
MAX_INLINED_CALLERS = 1000


def _inlined_instances(binary, dwarf, symbol: str, warnings: list[str]) -> list[tuple]:
    """(caller Func, dwarf InlinedCall) for every place `symbol` was inlined."""
    from .pclntab import inlined_into

    callers = inlined_into(binary.pclntab, symbol)
    if len(callers) > MAX_INLINED_CALLERS:
        warnings.append(f"{symbol} is inlined into {len(callers)} functions; only frames inlined "
                        f"into the first {MAX_INLINED_CALLERS} are captured")
        callers = callers[:MAX_INLINED_CALLERS]
    out = []
    for caller in callers:
        try:
            info = dwarf.function(caller.name)
        except SymbolNotFound:   # assembly or a DWARF-less caller: its frames get no row
            continue
        out += [(caller, call) for call in info.inlined if call.function == symbol and call.ranges]
    return out


def _root_var(by_name: dict, root: str):
    """(the DWARF variable of a root, whether it holds its address `&root`)."""
    if root in by_name:
        return by_name[root], False
    v = by_name.get("&" + root)
    return v, v is not None


def _function_plan(fs, binary, dwarf, all_types: TypeTable, spec_path: str,
                   warnings: list[str], what: str | None = None) -> FunctionPlan:
    from .expr import check_expr, op_type_ids, parse_expr

    fn = binary.pclntab.func_by_name(fs.symbol)
    instances = _inlined_instances(binary, dwarf, fs.symbol, warnings)
    if fn is None and not instances:
        _func(binary, fs.symbol)   # raises SymbolNotFound, with suggestions
    by_name = {}
    # Only inlined (no out-of-line copy linked in): its instances describe its variables.
    for v in (dwarf.function(fs.symbol).variables if fn is not None
              else [v for _, call in instances for v in call.variables]):
        by_name.setdefault(v.name, v)
    types = dwarf.type_table(v.type_id for v in by_name.values())
    var_types = _user_visible(by_name, types)
    captures, roots, plain_ops, escaped = [], {}, {}, set()
    for cs in fs.captures:
        try:
            te = check_expr(parse_expr(cs.expr), var_types, types, fs.symbol, type_source=dwarf,
                            addressable=lambda root: _addressable(by_name, root))
        except ExpressionError as e:
            raise SpecError(f"{what or fs.symbol}: capture {cs.expr!r}: {e}", path=spec_path,
                            line=cs.line, column=cs.column) from None
        _check_display(cs, types[te.type_id], what or fs.symbol, spec_path)
        plain_ops[cs.name] = ops = [list(op) for op in te.ops]
        var, addressed = _root_var(by_name, te.root)
        if addressed:  # escaped to the heap: DWARF has `&x`, a pointer to it
            escaped.add(te.root)
            ops = [["deref"]] + ops
        roots[te.root] = _locations(var) if fn is not None else []
        captures.append(CapturePlan(cs.name, cs.expr, te.root, ops, te.type_id))
    # check_expr may add synthetic types (len's int) to `types`: keep them all.
    closure = dwarf.type_table([var_types[r] for r in roots] + [c.type_id for c in captures if c.type_id >= 0]
                               + [by_name["&" + r].type_id for r in escaped]
                               + [t for c in captures for t in op_type_ids(c.ops)])
    for t in list(closure.types.values()) + [t for t in types.types.values() if t.id < 0]:
        all_types.types.setdefault(t.id, t)
    inlined = [_inlined_plan(caller, call, captures, plain_ops) for caller, call in instances]
    return FunctionPlan(fs.symbol, fs.table, fn.entry if fn else 0, fn.end if fn else 0,
                        captures, roots, {r: var_types[r] for r in roots}, inlined=inlined,
                        spills=_arg_spills(binary, dwarf, fn, roots) if fn else None)


def _arg_spills(binary, dwarf, fn, roots) -> dict | None:
    """Where the runtime's argument metadata places the captured roots that
    are input parameters: read where DWARF says a value is not live (see
    argspill.py). DWARF lists inputs (receiver first) before results."""
    from .argspill import function_spills

    params = [(v.name, dwarf.type(v.type_id).size) for v in dwarf.function(fn.name).variables
              if v.is_param and not v.name.startswith(".")]
    spills = function_spills(binary.pclntab, fn, params)
    if spills is not None:
        spills["roots"] = {r: v for r, v in spills["roots"].items() if r in roots}
    return spills if spills and spills["roots"] else None


def _addressable(by_name: dict, root: str) -> bool:
    """Whether `&root` can have a value: the variable escaped to the heap, or
    some pc range keeps it (or a piece of it) in memory, not only in registers."""
    if "&" + root in by_name:
        return True
    var = by_name.get(root)
    return var is None or any(p.kind != "reg" for r in var.ranges if r.location is not None
                              for p in r.location.pieces)


def _inlined_plan(caller, call, captures: list[CapturePlan], plain_ops: dict) -> InlinedPlan:
    by_name = {}
    for v in call.variables:
        by_name.setdefault(v.name, v)
    roots, ops = {}, {}
    for c in captures:
        var, addressed = _root_var(by_name, c.root)
        roots[c.root] = _locations(var) if var is not None else []
        ops[c.column] = ([["deref"]] if addressed else []) + plain_ops[c.column]
    return InlinedPlan(caller.name, caller.entry, caller.end, [[lo, hi] for lo, hi in call.ranges],
                       call.depth, call.call_file, call.call_line, roots, ops)


def _check_display(cs, t, where: str, spec_path: str) -> None:
    """A display type says how to show an integer: refuse it on anything else,
    where it would show text as a number and SQL would compare text with one."""
    if cs.display is None or t.kind in (Kind.INT, Kind.UINT):
        return
    hint = (" a time.Time is stored as an RFC 3339 string in UTC, which sorts and compares "
            "as text (started < '2026-01-01T00:00:00Z');" if t.name == "time.Time" else "")
    raise SpecError(f"{where}: capture {cs.expr!r} is a {t.name or t.kind.value}, but display "
                    f"'{cs.display}' shows an integer;{hint} drop the display",
                    path=spec_path, line=cs.line, column=cs.column)


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


def _present(fs, binary, with_dwarf: bool, named: set[str]) -> list:
    """_instances, after checking the binary has the function at all: out of
    line, or inlined somewhere when there is DWARF to read its variables.
    Raises SymbolNotFound (with did-you-mean) when it has not."""
    from .pclntab import inlined_into

    instances = _instances(fs, binary, with_dwarf, named)
    if not is_generic_pattern(fs.symbol) and binary.pclntab.func_by_name(fs.symbol) is None \
            and not (with_dwarf and inlined_into(binary.pclntab, fs.symbol)):
        _func(binary, fs.symbol)
    return instances


def compile_plan(binary, dwarf, spec, budgets: Budgets | None = None, layout=None, *,
                 absent_ok: bool = False) -> ProbePlan:
    """Compile the spec against one binary. Every spec problem raises SpecError with its line.

    A spec may span binaries (a client's functions and its server's). With
    `absent_ok`, a function this binary lacks is no error here: it gets no
    FunctionPlan, and `plan.absent` lists it with this binary's closest names,
    for absent_errors to judge against the other binaries of the snapshot."""
    plan = ProbePlan(binary.build_id, binary.go_version,
                     layout.to_json() if layout is not None else None, TypeTable(), [],
                     budgets or Budgets())
    if spec is None or not spec.functions:
        return plan
    if dwarf is None:
        plan.warnings.append(f"{binary.path} has no DWARF: captured values are unavailable")
    spec_path = getattr(spec, "path", "exray.yaml")
    named = {fs.symbol for fs in spec.functions}
    for fs in spec.functions:
        path = getattr(fs, "path", spec_path)
        try:
            instances = _present(fs, binary, dwarf is not None, named)
        except SymbolNotFound as e:
            if not absent_ok:
                raise SpecError(str(e), path=path, line=fs.line, column=fs.column) from None
            plan.absent[fs.symbol] = e.suggestions
            continue
        try:
            for one in instances:
                instance = one is not fs
                what = f"{fs.symbol} (instance {one.symbol})" if instance else None
                fp = (_function_plan_without_dwarf(one, binary) if dwarf is None
                      else _function_plan(one, binary, dwarf, plan.types, path, plan.warnings, what))
                if instance:
                    fp.spec_symbol = fs.symbol
                plan.functions.append(fp)
        except SymbolNotFound as e:
            raise SpecError(str(e), path=path, line=fs.line, column=fs.column) from None
    return plan


# ------------------------------------------------------------ one spec, several binaries

@dataclass(frozen=True)
class BinaryFunctions:
    """One binary of a snapshot (or of `check-spec --binary ...`), as
    absent_errors sees it: how to name it, what targets match, what it lacks."""
    name: str                           # for messages: its path, and its pids if any
    exe: str                            # base name, which `targets: - exe:` match
    absent: dict[str, list[str]]        # spec symbol -> this binary's closest names
    pids: tuple[int, ...] = ()

    def targets(self, spec) -> list:
        """The spec's targets that stand for this binary (by exe name or pid)."""
        return [t for t in getattr(spec, "targets", ()) or ()
                if t.names(self.exe) or any(t.names(self.exe, p) for p in self.pids)]


def _lacks(b: BinaryFunctions, symbol: str) -> str:
    close = b.absent.get(symbol) or []
    return b.name + (f" (did you mean {', '.join(close[:3])}?)" if close else "")


def absent_errors(spec, binaries: list[BinaryFunctions]) -> list[SpecError]:
    """The rule for a spec that spans binaries, one SpecError per broken function.

    A spec function applies to every binary that has it; a binary without it
    just gets no rows there. It is an error when no binary has it (naming
    each, with its did-you-mean), or when a target that expects it (`targets:
    - exe: X, functions: [...]`) stands for a binary that lacks it. With one
    binary this is the single-binary rule: a function it lacks is an error."""
    if not binaries:
        return []
    out = []
    for fs in spec.functions:
        path = getattr(fs, "path", getattr(spec, "path", "exray.yaml"))
        lacking = [b for b in binaries if fs.symbol in b.absent]
        what = ("no instance of the generic function" if is_generic_pattern(fs.symbol)
                else "no function")
        if len(lacking) == len(binaries):
            where = (_lacks(lacking[0], fs.symbol) if len(lacking) == 1 else
                     f"any of the {len(lacking)} binaries: "
                     + ", ".join(_lacks(b, fs.symbol) for b in lacking))
            out.append(SpecError(f"{what} {fs.symbol} in {where}", path, fs.line, fs.column))
            continue
        for b in lacking:
            expecting = [(t, f) for t in b.targets(spec) for f in [t.expects(fs.symbol)] if f]
            if expecting:
                t, f = expecting[0]
                out.append(SpecError(
                    f"{what} {fs.symbol} in {_lacks(b, fs.symbol)}, though the target at "
                    f"{t.path}:{f.line} expects it ({f.pattern})", path, fs.line, fs.column))
    return out
