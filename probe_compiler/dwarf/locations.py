"""DWARF location expressions and location lists -> Location data.

Executors never evaluate DWARF: they get pieces ("this 8-byte piece is in rax",
"this one is at CFA-24"). So we fold each expression at compile time into
Pieces, which only works for the shapes Go emits (register, CFA/fbreg plus a
constant, static address, literal value). Anything else becomes an
`Unsupported` with the reason, so callers can report it per variable instead
of failing the whole function.

Location and range lists are read here from the raw sections, in both forms
Go writes: DWARF 4's .debug_loc/.debug_ranges (address pairs, base-address
entries) and DWARF 5's .debug_loclists/.debug_rnglists (DW_LLE_*/DW_RLE_*
entries, addresses by .debug_addr index). pyelftools parses each entry
through `construct`, and would have to decompress the whole section first.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from elftools.dwarf.dwarf_expr import DWARFExprParser

from probe_compiler.dwarf.variables import Location, Piece, VarRange
from probe_compiler.errors import BinaryError
from probe_compiler.leb128 import uleb128

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


def loclist_to_ranges(entries, parser: DWARFExprParser, whole_size: int,
                      errors: list[str], where: str) -> tuple[VarRange, ...]:
    """[(lo, hi, expr)] of ListReader.locations -> VarRanges; unsupported ones go to errors."""
    out = []
    for lo, hi, expr in entries:
        loc = expr_to_location(expr, parser, whole_size)
        if isinstance(loc, Unsupported):
            if loc.reason != "optimized out":
                errors.append(f"{where} at [{lo:#x},{hi:#x}): {loc.reason}")
            continue
        out.append(VarRange(lo, hi, loc))
    return tuple(out)


_U64 = struct.Struct("<Q")
_U16 = struct.Struct("<H")
_MAX_ADDR = (1 << 64) - 1
# DWARF 5 list entry kinds (section 7.7.3/7.25): DW_LLE_* and DW_RLE_* share
# 0-4; from 5 on they differ (a location list has default_location at 5).
_LLE = {0: "end", 1: "base_x", 2: "startx_endx", 3: "startx_length", 4: "offset_pair",
        5: "default", 6: "base", 7: "start_end", 8: "start_length"}
_RLE = {0: "end", 1: "base_x", 2: "startx_endx", 3: "startx_length", 4: "offset_pair",
        5: "base", 6: "start_end", 7: "start_length"}


class ListReader:
    """The location and range lists of one compile unit, from the raw sections.

    sections: a DebugSections (prefix() is all this reads); version: the CU's
    DWARF version; base: the CU's DW_AT_low_pc, the base address a list starts
    with; addr_base: the CU's DW_AT_addr_base (DWARF 5 addrx entries). Lists
    are read from the start of their section up to where they end, so a
    lookup never inflates more of a compressed section than it needs."""

    def __init__(self, sections, version: int, base: int, addr_base: int = 8):
        self.secs, self.v5, self.base, self.addr_base = sections, version >= 5, base, addr_base

    def locations(self, offset: int) -> list[tuple[int, int, bytes]]:
        """The list at `offset`: [(lo, hi, expression bytes)], absolute pcs."""
        name = ".debug_loclists" if self.v5 else ".debug_loc"
        return self._read(name, offset, True)

    def ranges(self, offset: int) -> list[tuple[int, int]]:
        name = ".debug_rnglists" if self.v5 else ".debug_ranges"
        return [(lo, hi) for lo, hi, _ in self._read(name, offset, False)]

    def _read(self, name: str, offset: int, with_expr: bool) -> list:
        want = offset + 512
        while True:
            data = self.secs.prefix(name, want)
            try:
                if self.v5:
                    return self._v5(data, offset, with_expr)
                return self._v4(data, offset, with_expr)
            except (IndexError, struct.error):
                if len(data) < want:   # the section ends inside the list
                    raise BinaryError(f"{name}+{offset:#x}: list runs past the section's end "
                                      f"({len(data)} bytes)") from None
                want = offset + 2 * (want - offset)

    def _v4(self, data, pos: int, with_expr: bool) -> list:
        out, base = [], self.base
        while True:
            lo, = _U64.unpack_from(data, pos)
            hi, = _U64.unpack_from(data, pos + 8)
            pos += 16
            if lo == 0 and hi == 0:
                return out
            if lo == _MAX_ADDR:   # base address selection
                base = hi
                continue
            expr = b""
            if with_expr:
                n, = _U16.unpack_from(data, pos)
                expr = _take(data, pos + 2, n)
                pos += 2 + n
            out.append((base + lo, base + hi, expr))

    def _v5(self, data, pos: int, with_expr: bool) -> list:
        kinds = _LLE if with_expr else _RLE
        out, base = [], self.base
        while True:
            code = data[pos]
            kind = kinds.get(code)
            pos += 1
            if kind == "end":
                return out
            if kind == "base_x":
                i, pos = uleb128(data, pos)
                base = self._addr(i)
                continue
            if kind == "base":
                base, = _U64.unpack_from(data, pos)
                pos += 8
                continue
            if kind == "startx_endx":
                a, pos = uleb128(data, pos)
                b, pos = uleb128(data, pos)
                lo, hi = self._addr(a), self._addr(b)
            elif kind == "startx_length":
                a, pos = uleb128(data, pos)
                n, pos = uleb128(data, pos)
                lo = self._addr(a)
                hi = lo + n
            elif kind == "offset_pair":
                a, pos = uleb128(data, pos)
                b, pos = uleb128(data, pos)
                lo, hi = base + a, base + b
            elif kind == "start_end":
                lo, = _U64.unpack_from(data, pos)
                hi, = _U64.unpack_from(data, pos + 8)
                pos += 16
            elif kind == "start_length":
                lo, = _U64.unpack_from(data, pos)
                n, pos = uleb128(data, pos + 8)
                hi = lo + n
            elif kind == "default":   # everywhere no other entry covers: not a pc range
                lo = hi = None
            else:
                raise BinaryError(f"unknown list entry kind {code:#x} at offset {pos - 1:#x}")
            expr = b""
            if with_expr:
                n, pos = uleb128(data, pos)
                expr = _take(data, pos, n)
                pos += n
            if lo is not None:
                out.append((lo, hi, expr))

    def _addr(self, index: int) -> int:
        off = self.addr_base + 8 * index
        table = self.secs.prefix(".debug_addr", off + 8)
        if off + 8 > len(table):
            raise BinaryError(f".debug_addr has no entry {index} (addr_base {self.addr_base:#x})")
        return _U64.unpack_from(table, off)[0]


def _take(data, pos: int, n: int) -> bytes:
    if pos + n > len(data):
        raise IndexError("expression past the data read so far")
    return bytes(data[pos:pos + n])
