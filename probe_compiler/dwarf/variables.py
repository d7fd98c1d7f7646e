"""Functions, their variables and where each variable lives at each pc.

A FunctionInfo is built from one subprogram DIE on demand: its parameters and
locals (lexical blocks included, each variable keeping the pc ranges of its
scope), and every inlined call inside it with that instance's own variables.
Locations are data (`Location` of `Piece`s) so both executors can use them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from probe_compiler.dwarf import DwarfInfo


@dataclass(frozen=True)
class Piece:
    size: int
    kind: str            # "reg" | "addr" | "cfa" | "value" | "empty"
    reg: int | None      # DWARF register number (amd64: 0 rax, 1 rdx, 2 rcx, 3 rbx, ...)
    offset: int          # cfa: offset from CFA; addr: absolute address; value: the literal

    def to_json(self) -> list:
        return [self.size, self.kind, self.reg, self.offset]


@dataclass(frozen=True)
class Location:
    pieces: tuple[Piece, ...]   # one piece = the whole value

    def to_json(self) -> list:
        return [p.to_json() for p in self.pieces]

    @staticmethod
    def from_json(d: list) -> "Location":
        return Location(tuple(Piece(*p) for p in d))


@dataclass(frozen=True)
class VarRange:
    lo: int                # [lo, hi) pcs
    hi: int
    location: Location


@dataclass(frozen=True)
class Variable:
    name: str
    type_id: int
    is_param: bool
    ranges: tuple[VarRange, ...]
    decl_line: int
    scope: tuple[tuple[int, int], ...] = ()   # pcs where the name is in scope (block/function)

    def in_scope(self, pc: int) -> bool:
        return any(lo <= pc < hi for lo, hi in self.scope)

    def location_at(self, pc: int) -> Location | None:
        for r in self.ranges:
            if r.lo <= pc < r.hi:
                return r.location
        return None


@dataclass(frozen=True)
class InlinedCall:
    function: str
    ranges: tuple[tuple[int, int], ...]
    call_file: str
    call_line: int
    variables: tuple[Variable, ...]
    depth: int = 1        # 1 = inlined directly into the function, 2 = inside another inlined call

    def covers(self, pc: int) -> bool:
        return any(lo <= pc < hi for lo, hi in self.ranges)


@dataclass
class FunctionInfo:
    name: str
    low_pc: int
    high_pc: int
    die_offset: int
    variables: list[Variable] = field(default_factory=list)
    inlined: list[InlinedCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)   # locations we could not model, and why

    def variables_at(self, pc: int, inline_function: str | None = None
                     ) -> list[tuple[Variable, Location | None]]:
        """Variables in scope at pc with their location there (None: not available)."""
        if inline_function is None:
            vs = self.variables
        else:
            calls = [c for c in self.inlined if c.function == inline_function and c.covers(pc)]
            if not calls:
                return []
            vs = max(calls, key=lambda c: c.depth).variables  # innermost instance
        return [(v, v.location_at(pc)) for v in vs if v.in_scope(pc)]


# Imported here: locations needs the dataclasses above.
from probe_compiler.dwarf import locations as _loc  # noqa: E402
from probe_compiler.dwarf.typebuild import attr, die_name, ref  # noqa: E402

_VAR_TAGS = ("DW_TAG_formal_parameter", "DW_TAG_variable")


class FunctionBuilder:
    """Walks one subprogram DIE (and its lexical blocks and inlined calls)."""

    def __init__(self, dw: "DwarfInfo", die, name: str, lo: int, hi: int):
        self.dw, self.die, self.cu = dw, die, die.cu
        self.info = FunctionInfo(name, lo, hi, die.offset)
        self.parser = dw._expr_parser(self.cu)
        top = self.cu.get_top_DIE()
        self.lists = _loc.ListReader(dw._sections(), self.cu.header["version"],
                                     attr(top, "DW_AT_low_pc", 0), attr(top, "DW_AT_addr_base", 8))

    def build(self) -> FunctionInfo:
        fb = attr(self.die, "DW_AT_frame_base")
        if fb is not None and list(fb) != [_loc.DW_OP_CALL_FRAME_CFA]:
            self.info.errors.append(
                f"{self.info.name}: frame base {list(fb)} is not DW_OP_call_frame_cfa; "
                "fbreg locations assume it is")
        scope = ((self.info.low_pc, self.info.high_pc),)
        self._walk(self.die, scope, self.info.variables, depth=0)
        return self.info

    def _walk(self, die, scope, out: list[Variable], depth: int) -> None:
        for c in die.iter_children():
            if c.tag in _VAR_TAGS:
                v = self._variable(c, scope)
                if v is not None:
                    out.append(v)
            elif c.tag == "DW_TAG_lexical_block":
                self._walk(c, tuple(self._die_ranges(c)) or scope, out, depth)
            elif c.tag == "DW_TAG_inlined_subroutine":
                self._inlined(c, depth + 1)

    def _inlined(self, die, depth: int) -> None:
        origin = ref(die, "DW_AT_abstract_origin")
        name = die_name(self.dw._die(origin)) if origin is not None else "?"
        ranges = tuple(self._die_ranges(die))
        vs: list[Variable] = []
        self._walk(die, ranges, vs, depth)   # nested inlined calls are added flat
        self.info.inlined.append(InlinedCall(
            name, ranges, self._file_name(attr(die, "DW_AT_call_file", 0)),
            attr(die, "DW_AT_call_line", 0), tuple(vs), depth))

    def _variable(self, die, scope) -> Variable | None:
        # Concrete DIEs of inlined (or out-of-line inlinable) code name their
        # abstract origin for the name, type and line.
        named = die
        origin = ref(die, "DW_AT_abstract_origin")
        if origin is not None:
            named = self.dw._die(origin)
        name = die_name(named)
        tref = ref(named, "DW_AT_type")
        if not name or tref is None:
            return None
        tid = self.dw.types.canonical(tref)
        size = self.dw.types.get(tid).size
        where = f"{self.info.name}: variable {name}"
        ranges = self._var_ranges(die, scope, size, where)
        return Variable(name, tid, die.tag == "DW_TAG_formal_parameter", ranges,
                        attr(named, "DW_AT_decl_line", 0), scope)

    def _var_ranges(self, die, scope, size: int, where: str) -> tuple[VarRange, ...]:
        a = die.attributes.get("DW_AT_location")
        if a is None:
            return ()
        # A loclistx index comes already turned into its offset by pyelftools.
        if a.form in ("DW_FORM_sec_offset", "DW_FORM_loclistx", "DW_FORM_data4"):
            return _loc.loclist_to_ranges(self.lists.locations(a.value), self.parser, size,
                                          self.info.errors, where)
        loc = _loc.expr_to_location(a.value, self.parser, size)
        if isinstance(loc, _loc.Unsupported):
            if loc.reason != "optimized out":
                self.info.errors.append(f"{where}: {loc.reason}")
            return ()
        return tuple(VarRange(lo, hi, loc) for lo, hi in scope)

    def _die_ranges(self, die) -> list[tuple[int, int]]:
        if "DW_AT_ranges" in die.attributes:   # an offset (pyelftools resolves rnglistx)
            return self.lists.ranges(attr(die, "DW_AT_ranges"))
        lo = attr(die, "DW_AT_low_pc")
        if lo is None:
            return []
        hi = attr(die, "DW_AT_high_pc", 0)
        return [(lo, hi if die.attributes["DW_AT_high_pc"].form == "DW_FORM_addr" else lo + hi)]

    def _file_name(self, index: int) -> str:
        return self.dw._file_name(self.cu, index)
