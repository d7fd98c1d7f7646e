"""Reads the captured expressions of one frame, as the probe plan says.

Locations come as DWARF pieces (register, CFA offset, address, literal); the
expression's access ops then walk from the root variable to the value, and the
decoder turns its bytes into JSON. Anything unavailable becomes NULL with the
reason in the row's `_errors`, never an exception.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from probe_compiler.decode import decode_value

_U64 = struct.Struct("<Q")


class Unavailable(Exception):
    """This value can't be read at this frame; the message says why."""


@dataclass
class Located:
    data: bytes | None
    addr: int | None


def _piece_bytes(piece, frame, stack, regs, read) -> tuple[bytes, int | None]:
    size, kind, reg, offset = piece
    if kind == "cfa":
        addr = frame.cfa + offset
        data = stack.bytes_at(addr, size)
        if data is None:
            raise Unavailable(f"stack unreadable at {addr:#x}")
        return data, addr
    if kind == "addr":
        return read(offset, size), offset
    if kind == "reg":
        if regs is None:
            raise Unavailable("in a register at this pc; only the innermost frame of a running goroutine has registers")
        return regs.dwarf(reg).to_bytes(8, "little")[:size], None
    if kind == "value":
        return int(offset).to_bytes(8, "little", signed=offset < 0)[:size], None
    raise Unavailable("optimized out at this pc")


def locate_root(locs, lookup_pc: int, frame, stack, regs, read) -> Located:
    for loc in locs:
        if loc.lo <= lookup_pc < loc.hi:
            break
    else:
        raise Unavailable("not live at this pc")
    if not loc.pieces:
        raise Unavailable("optimized out at this pc")
    parts = [_piece_bytes(p, frame, stack, regs, read) for p in loc.pieces]
    if len(parts) == 1:
        return Located(parts[0][0], parts[0][1])
    return Located(b"".join(p[0] for p in parts), None)


def _deref(v: Located, read) -> Located:
    ptr = _U64.unpack(v.data[:8] if v.data is not None else read(v.addr, 8))[0]
    if ptr == 0:
        raise Unavailable("nil pointer dereference")
    return Located(None, ptr)


def _field(v: Located, offset: int, size: int) -> Located:
    if v.data is not None:
        return Located(v.data[offset:offset + size], None if v.addr is None else v.addr + offset)
    return Located(None, v.addr + offset)


def apply_ops(v: Located, ops, types, read) -> Located:
    """Walk the access ops of probe_compiler.expr from the root to the value."""
    for op in ops:
        kind = op[0]
        if kind == "deref":
            v = _deref(v, read)
        elif kind == "field":
            v = _field(v, op[1], op[2] if len(op) > 2 else 1 << 30)
        elif kind == "index":
            v = _index(v, op, read)
        elif kind == "len":
            v = _len(v, op, read)
        else:
            raise Unavailable(f"unsupported access op {kind!r}")
    return v


def _word(v: Located, off: int, read) -> int:
    if v.data is not None and off + 8 <= len(v.data):
        return _U64.unpack_from(v.data, off)[0]
    if v.addr is None:
        raise Unavailable("value not addressable")
    return _U64.unpack(read(v.addr + off, 8))[0]


def _index(v: Located, op, read) -> Located:
    _, i, elem_size, container = (list(op) + [None] * 4)[:4]
    if container in ("slice", "string"):
        base, n = _word(v, 0, read), _word(v, 8, read)
        if i >= n:
            raise Unavailable(f"index {i} out of range (len {n})")
        return Located(None, base + i * elem_size)
    return _field(v, i * elem_size, elem_size)


def _len(v: Located, op, read) -> Located:
    container = op[1] if len(op) > 1 else "slice"
    if container in ("slice", "string"):
        n = _word(v, 8, read)
    elif container in ("map", "chan"):
        ptr = _word(v, 0, read)
        n = 0 if ptr == 0 else _U64.unpack(read(ptr + (op[2] if len(op) > 2 else 0), 8))[0]
    else:
        n = op[2]
    return Located(n.to_bytes(8, "little"), None)
