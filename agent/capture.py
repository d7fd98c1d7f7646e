"""Reads the captured expressions of one frame, as the probe plan says.

Locations come as DWARF pieces (register, CFA offset, address, literal); the
expression's access ops then walk from the root variable to the value, and the
decoder turns its bytes into JSON. Anything unavailable becomes NULL with the
reason in the row's `_errors`, never an exception.
"""
from __future__ import annotations

from dataclasses import dataclass


class Unavailable(Exception):
    """This value can't be read at this frame; the message says why."""


@dataclass
class Located:
    data: bytes | None
    addr: int | None


def _piece_bytes(piece, frame, stack, regs, read, bias) -> tuple[bytes, int | None]:
    size, kind, reg, offset = piece
    if kind == "cfa":
        addr = frame.cfa + offset
        data = stack.bytes_at(addr, size)
        if data is None:
            raise Unavailable(f"stack unreadable at {addr:#x}")
        return data, addr
    if kind == "addr":   # a static address of the binary: moved with it (PIE)
        return read(offset + bias, size), offset + bias
    if kind == "reg":
        if regs is None:
            raise Unavailable("in a register at this pc; only the innermost frame of a running goroutine has registers")
        return regs.dwarf(reg).to_bytes(8, "little")[:size], None
    if kind == "value":
        return int(offset).to_bytes(8, "little", signed=offset < 0)[:size], None
    raise Unavailable("optimized out at this pc")


def locate_root(locs, lookup_pc: int, frame, stack, regs, read, bias: int = 0,
                size: int | None = None) -> Located:
    """The root variable's bytes at lookup_pc (link-time, as the location
    lists say); `bias` moves static addresses to where the process has them.
    `size` (the root's type size) refuses composite locations whose pieces
    don't add up to it: Go 1.21 describes some slices with 4 pieces, the
    first one twice."""
    for loc in locs:
        if loc.lo <= lookup_pc < loc.hi:
            break
    else:
        raise Unavailable("not live at this pc")
    if not loc.pieces:
        raise Unavailable("optimized out at this pc")
    covered = sum(p[0] for p in loc.pieces)
    if len(loc.pieces) > 1 and size is not None and covered != size:
        raise Unavailable(f"DWARF's pieces cover {covered} bytes of this {size}-byte value")
    parts = [_piece_bytes(p, frame, stack, regs, read, bias) for p in loc.pieces]
    if len(parts) == 1:
        return Located(parts[0][0], parts[0][1])
    return Located(b"".join(p[0] for p in parts), None)


SPILL_SLOT = "spill slot"   # the `_errors` text of a value read from its spill slot starts so


def locate_spilled(spills: dict | None, root: str, frame, stack, why: Unavailable
                   ) -> tuple[Located, str]:
    """Where DWARF gave up (`why`), the root's bytes from its argument spill
    slot at the frame's CFA (Go's argp), as Go's traceback reads them, and the
    note for `_errors`: "spill slot: <why>", or "spill slot, possibly stale
    (…): <why>" where Go's traceback would print `?`. Raises `why` when the
    root is no argument the runtime's metadata places."""
    from probe_compiler.argspill import stale_words

    r = (spills or {}).get("roots", {}).get(root)
    if r is None:
        raise why
    addr = frame.cfa + r["offset"]
    data = stack.bytes_at(addr, r["size"])
    if data is None:
        raise why
    stale, n = stale_words(spills, root, frame.lookup_pc), len(r["leaves"])
    if stale:
        note = f"{SPILL_SLOT}, possibly stale ({stale} of {n} words not stored at this pc): {why}"
    elif not r["complete"]:
        note = f"{SPILL_SLOT}, possibly stale (Go's argument metadata covers only part of it): {why}"
    else:
        note = f"{SPILL_SLOT}: {why}"
    return Located(data, addr), note


def unvouched_note(spills: dict | None, root: str, frame, locs, lookup_pc: int) -> str | None:
    """The `_errors` note for an argument DWARF places on the stack where the
    runtime's liveness does not vouch for its spill slot at this pc (Go's
    traceback prints `?` there): optimized code may have reused the slot DWARF
    names after the argument's last use, so the value may be stale. None when
    it is vouched for, or not an argument the runtime's metadata describes."""
    from probe_compiler.argspill import stale_words

    r = (spills or {}).get("roots", {}).get(root)
    loc = next((loc for loc in locs if loc.lo <= lookup_pc < loc.hi), None)
    if r is None or loc is None or all(p[1] == "reg" for p in loc.pieces):
        return None     # a register of the innermost frame holds the value now
    stale = stale_words(spills, root, frame.lookup_pc)
    if not stale:
        return None
    return (f"possibly stale: from DWARF's stack location, but {stale} of {len(r['leaves'])} words "
            "of this argument are not stored at this pc (Go's traceback prints ?)")


def _word(v: Located, off: int, read, size: int = 8) -> int:
    """An integer inside the current value: from its bytes if we hold them, else memory."""
    if v.data is not None and off + size <= len(v.data):
        return int.from_bytes(v.data[off:off + size], "little")
    if v.addr is None:
        raise Unavailable("value not addressable")
    return int.from_bytes(read(v.addr + off, size), "little")


@dataclass
class OpEnv:
    """What some access ops need beyond memory. `types`: the plan's types
    (a map lookup walks the map as the decoder does); `types_base`: where
    moduledata.types is in this process (load bias included: PIE), which a
    type assertion adds the asserted type's offset to; `type_by_rtype`: a
    runtime type address -> its GoType, to name a mismatched dynamic type;
    `budget`: the frame's byte budget, which a map walk spends."""
    types: object = None
    types_base: int | None = None
    type_by_rtype: object = None
    budget: object = None


NO_ENV = OpEnv()


def _offset(v: Located, n: int, read) -> Located:
    data = v.data[n:] if v.data is not None else None
    return Located(data, None if v.addr is None else v.addr + n)


def _deref(v: Located, read) -> Located:
    ptr = _word(v, 0, read)
    if ptr == 0:
        raise Unavailable("nil pointer dereference")
    return Located(None, ptr)


def _index(v: Located, op, read) -> Located:
    _, i, elem_size, data_off, len_off = op
    n = _word(v, len_off, read)
    if i >= n:
        raise Unavailable(f"index {i} out of range (len {n})")
    return Located(None, _word(v, data_off, read) + i * elem_size)


def _len_indirect(v: Located, op, read) -> Located:
    _, off, size = op
    p = _word(v, 0, read)
    return _int(0 if p == 0 else int.from_bytes(read(p + off, size), "little"))


def _addr(v: Located, op, read) -> Located:
    if v.addr is None:
        raise Unavailable("no address: the value is in registers at this pc")
    return _int(v.addr)


def _assert(v: Located, op, read, env: OpEnv) -> Located:
    _, rtype_off, type_off, itab_type_off, data_off, direct, name = op
    word = _word(v, type_off, read)
    rtype = word
    if word and itab_type_off >= 0:   # non-empty interface: the word is its itab
        rtype = int.from_bytes(read(word + itab_type_off, 8), "little")
    if rtype == 0:
        raise Unavailable(f"the interface is nil, not {name}")
    if env.types_base is None:
        raise Unavailable(f"cannot check the dynamic type against {name}: where the "
                          f"runtime's types are is unknown")
    if rtype != env.types_base + rtype_off:
        dyn = env.type_by_rtype(rtype) if env.type_by_rtype else None
        held = dyn.name if dyn is not None else f"the runtime type at {rtype:#x}"
        raise Unavailable(f"the interface holds {held}, not {name}")
    if direct:   # pointer-shaped: the data word is the value itself
        return _offset(v, data_off, read)
    p = _word(v, data_off, read)
    if p == 0:
        raise Unavailable(f"the interface's {name} has a nil data pointer")
    return Located(None, p)


def _map_index(v: Located, op, read, env: OpEnv) -> Located:
    from probe_compiler.decode import ByteBudget, map_lookup
    _, type_id, key = op
    shown = f"{key!r}" if isinstance(key, str) else str(key).lower() if isinstance(key, bool) else str(key)
    p = _word(v, 0, read)
    if p == 0:
        raise Unavailable(f"key {shown} not present: the map is nil")
    if env.types is None:
        raise Unavailable("map lookups need the plan's types")
    addr, problem = map_lookup(env.types, type_id, p, key, read, env.budget or ByteBudget(64 * 1024))
    if problem is not None:
        raise Unavailable(f"key {shown}: {problem}")
    if addr is None:
        raise Unavailable(f"key {shown} not present in the map")
    return Located(None, addr)


def _int(n: int) -> Located:
    return Located(n.to_bytes(8, "little"), None)


# The access ops of probe_compiler.expr (see its docstring), by name.
_OPS = {
    "offset": lambda v, op, read: _offset(v, op[1], read),
    "deref": lambda v, op, read: _deref(v, read),
    "index": _index,
    "len": lambda v, op, read: _int(_word(v, op[1], read)),
    "cap": lambda v, op, read: _int(_word(v, op[1], read)),
    "len_indirect": _len_indirect,
    "const": lambda v, op, read: _int(op[1]),
    "addr": _addr,
}
# Ops that need more than memory: they get the OpEnv too.
_ENV_OPS = {
    "assert": _assert,
    "map_index": _map_index,
}


def apply_ops(v: Located, ops, read, env: OpEnv = NO_ENV) -> Located:
    """Walk from the root variable to the captured value."""
    for op in ops:
        step = _OPS.get(op[0])
        if step is not None:
            v = step(v, op, read)
            continue
        env_step = _ENV_OPS.get(op[0])
        if env_step is None:
            raise Unavailable(f"unsupported access op {op[0]!r}")
        v = env_step(v, op, read, env)
    return v
