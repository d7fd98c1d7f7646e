"""DWARF location expressions and location lists -> Location data.

Executors never evaluate DWARF: they get pieces ("this 8-byte piece is in rax",
"this one is at CFA-24"). So we fold each expression at compile time into
Pieces, which only works for the shapes Go emits (register, CFA/fbreg plus a
constant, static address, literal value). Anything else becomes an
`Unsupported` with the reason, so callers can report it per variable instead
of failing the whole function.
"""
from __future__ import annotations

from dataclasses import dataclass

from elftools.dwarf.dwarf_expr import DWARFExprParser

from probe_compiler.dwarf.variables import Location, Piece, VarRange

DW_OP_CALL_FRAME_CFA = 0x9C


@dataclass(frozen=True)
class Unsupported:
    """Why a location could not be turned into pieces (kept for the report)."""
    reason: str


_LIT_OPS = {"DW_OP_const1u", "DW_OP_const2u", "DW_OP_const4u", "DW_OP_const8u", "DW_OP_const1s",
            "DW_OP_const2s", "DW_OP_const4s", "DW_OP_const8s", "DW_OP_constu", "DW_OP_consts"}


def _reg_piece(size: int, reg: int) -> Piece | Unsupported:
    # Go sometimes describes a multi-word value (a string) by one integer
    # register when only its first word is live; reading 16 bytes out of one
    # 8-byte register would be wrong, so call it unavailable.
    if size > 8 and reg < 17:
        return Unsupported(f"a {size}-byte value described by one 8-byte register")
    return Piece(size, "reg", reg, 0)


def _fold_piece(ops, size: int) -> Piece | Unsupported:
    """Fold the ops of one piece into a Piece. The stack holds (kind, value)."""
    if not ops:
        return Piece(size, "empty", None, 0)
    stack: list[tuple[str, int]] = []
    for op in ops:
        name, args = op.op_name, op.args
        if name.startswith("DW_OP_reg") and name != "DW_OP_regx":
            if len(ops) != 1:
                return Unsupported(f"{name} combined with other ops")
            return _reg_piece(size, int(name[len("DW_OP_reg"):]))
        if name == "DW_OP_regx":
            return _reg_piece(size, args[0])
        if name == "DW_OP_call_frame_cfa":
            stack.append(("cfa", 0))
        elif name == "DW_OP_fbreg":   # Go's frame base is DW_OP_call_frame_cfa
            stack.append(("cfa", args[0]))
        elif name == "DW_OP_addr":
            stack.append(("addr", args[0]))
        elif name in _LIT_OPS:
            stack.append(("lit", args[0]))
        elif name.startswith("DW_OP_lit"):
            stack.append(("lit", int(name[len("DW_OP_lit"):])))
        elif name == "DW_OP_plus_uconst" and stack:
            k, v = stack.pop()
            stack.append((k, v + args[0]))
        elif name in ("DW_OP_plus", "DW_OP_minus") and len(stack) >= 2:
            (kb, b), (ka, a) = stack.pop(), stack.pop()
            if kb != "lit":
                return Unsupported(f"{name} of two non-constant operands")
            stack.append((ka, a + b if name == "DW_OP_plus" else a - b))
        elif name == "DW_OP_stack_value" and stack:
            k, v = stack.pop()
            if k != "lit":
                return Unsupported(f"DW_OP_stack_value of a computed {k} value")
            return Piece(size, "value", None, v)
        else:
            return Unsupported(f"unsupported DWARF op {name}")
    if len(stack) != 1:
        return Unsupported("location expression leaves no single result")
    kind, v = stack[0]
    if kind == "lit":
        return Piece(size, "addr", None, v)   # a constant on the stack is an address
    return Piece(size, kind, None, v)


def expr_to_location(expr: bytes | list[int], parser: DWARFExprParser,
                     whole_size: int) -> Location | Unsupported:
    """One location expression -> Location. An empty expression means optimized out."""
    if not expr:
        return Unsupported("optimized out")
    try:
        ops = parser.parse_expr(list(expr))
    except Exception as e:  # a malformed or unknown opcode
        return Unsupported(f"cannot parse location expression: {e}")
    pieces: list[Piece] = []
    cur = []
    for op in ops:
        if op.op_name == "DW_OP_piece":
            p = _fold_piece(cur, op.args[0])
            if isinstance(p, Unsupported):
                return p
            pieces.append(p)
            cur = []
        else:
            cur.append(op)
    if cur or not pieces:
        p = _fold_piece(cur, whole_size)
        if isinstance(p, Unsupported):
            return p
        pieces.append(p)
    return Location(tuple(pieces))


def loclist_to_ranges(entries, base: int, parser: DWARFExprParser, whole_size: int,
                      errors: list[str], where: str) -> tuple[VarRange, ...]:
    """pyelftools location-list entries -> VarRanges; unsupported ones go to errors."""
    out = []
    for e in entries:
        if hasattr(e, "base_address"):
            base = e.base_address
            continue
        if not hasattr(e, "loc_expr"):
            continue  # location views carry no location
        lo, hi = (e.begin_offset, e.end_offset) if e.is_absolute else \
            (base + e.begin_offset, base + e.end_offset)
        loc = expr_to_location(e.loc_expr, parser, whole_size)
        if isinstance(loc, Unsupported):
            if loc.reason != "optimized out":
                errors.append(f"{where} at [{lo:#x},{hi:#x}): {loc.reason}")
            continue
        out.append(VarRange(lo, hi, loc))
    return tuple(out)


def ranges_to_pairs(entries, base: int) -> list[tuple[int, int]]:
    """pyelftools range-list entries -> [(lo, hi)] absolute pcs."""
    out = []
    for e in entries:
        if hasattr(e, "base_address"):
            base = e.base_address
            continue
        if e.is_absolute:
            out.append((e.begin_offset, e.end_offset))
        else:
            out.append((base + e.begin_offset, base + e.end_offset))
    return out
