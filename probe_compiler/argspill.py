"""Arguments from their spill slots, as Go's own traceback prints them.

Go's traceback prints a frame's arguments (`main.f(0x1, {0x4c58a0, 0x3})`)
from two pieces of runtime metadata the compiler writes for every function
with arguments:

- FUNCDATA_ArgInfo (cmd/compile/internal/ssagen emitArgInfo): the layout of
  the input arguments, receiver first, as a byte program. An ordinary byte
  (< 0xf0) is the offset of one scalar from the frame's argument pointer,
  followed by its size; 0xfe / 0xfd open and close an aggregate (struct,
  array, string, slice, interface, complex); 0xfc stands for what was left
  out (at most 10 components are described, 5 aggregate levels deep); 0xfb
  for a component whose offset does not fit in a byte; 0xff ends it. A
  generic function's dictionary is left out.
- FUNCDATA_ArgLiveInfo (cmd/compile/internal/liveness/arg.go) and
  PCDATA_ArgLiveIndex: register arguments are spilled to slots in the
  argument area only when the compiler needs to. The first byte is the
  smallest offset whose slot is tracked (slots below it, stack arguments
  among them, always hold their value); then bitmaps, one bit per tracked
  slot (in offset order, at most 10). The PCDATA value at a pc is the byte
  offset of its bitmap in the FUNCDATA; -1 (or no table) means all live.
  Go's traceback prints `?` after a word whose slot is not live there: its
  bytes may be stale.

The argument pointer is the caller's SP after the call (runtime frame.argp =
frame.fp on amd64), which is the CFA of the frame in DWARF terms.

This module is pure: bytes in, data out. `function_spills` is the only part
that reads a binary (through a PcLnTab) and produces the plan's data.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

# internal/abi (runtime/traceback.go before Go 1.22): ArgInfo's operators.
END_SEQ, START_AGG, END_AGG, DOTDOTDOT, OFFSET_TOO_LARGE = 0xFF, 0xFE, 0xFD, 0xFC, 0xFB
SPECIAL = 0xF0            # offsets are below it, operators above
MAX_LEN = (5 * 3 + 2) * 10 + 1   # the longest ArgInfo the compiler writes
MAX_TRACKED_SLOTS = 10    # liveness tracks no more spill slots than this


@dataclass(frozen=True)
class Leaf:
    offset: int | None    # from the argument pointer; None: too large for ArgInfo
    size: int
    slot: int | None      # index of its bit in a liveness bitmap; None: always live


@dataclass(frozen=True)
class ArgItem:
    """One input argument as ArgInfo lays it out."""
    leaves: tuple[Leaf, ...]
    aggregate: bool
    complete: bool        # no part of it left out (`...`) or unplaceable (`_`)

    @property
    def offset(self) -> int | None:
        """Where the argument starts: its first component's offset (a struct's
        first field is at offset 0 of it, an array's first element too)."""
        return self.leaves[0].offset if self.leaves else None


def arg_info_len(data: bytes) -> int:
    """The length of the ArgInfo program at the start of `data` (up to and
    including its END_SEQ); ValueError when it has none."""
    i = 0
    while i < len(data):
        b = data[i]
        if b == END_SEQ:
            return i + 1
        i += 2 if b < SPECIAL else 1
    raise ValueError("ArgInfo without an end marker")


def parse_arg_info(data: bytes, live_start: int = 0xFF, generic: bool = False
                   ) -> tuple[list[ArgItem], bool]:
    """The top-level arguments ArgInfo describes, and whether arguments past
    them were left out (a top-level `...`).

    `live_start` is ArgLiveInfo's first byte (0xff: no liveness info): each
    component at or above it takes the next tracked slot, as the runtime
    counts them. A generic function's dictionary is not in ArgInfo, but its
    spill slot is tracked (it is the first register argument) whenever the
    first tracked offset is no component's: `generic` shifts the slots past it
    (the runtime does not, and marks the wrong words `?` there)."""
    offsets = [data[i] for i in _scalar_positions(data)]
    slot = 1 if generic and live_start != 0xFF and live_start not in offsets else 0
    items: list[ArgItem] = []
    stack: list[list] = []          # open aggregates: [leaves, complete]
    more = False
    i = 0
    while True:
        if i >= len(data):
            raise ValueError("ArgInfo without an end marker")
        b = data[i]
        i += 1
        if b == END_SEQ:
            break
        if b == START_AGG:
            stack.append([[], True])
            continue
        if b == END_AGG:
            if not stack:
                raise ValueError(f"ArgInfo closes an aggregate it never opened at byte {i - 1}")
            leaves, complete = stack.pop()
            _add(items, stack, leaves, complete, aggregate=True)
            continue
        if b in (DOTDOTDOT, OFFSET_TOO_LARGE):
            if stack:
                stack[-1][1] = False
                if b == OFFSET_TOO_LARGE:
                    stack[-1][0].append(Leaf(None, 0, None))
            elif b == DOTDOTDOT:
                more = True
            else:
                items.append(ArgItem((Leaf(None, 0, None),), False, False))
            continue
        if b >= SPECIAL:
            raise ValueError(f"unknown ArgInfo operator {b:#x} at byte {i - 1}")
        if i >= len(data):
            raise ValueError("ArgInfo ends inside a component")
        size = data[i]
        i += 1
        leaf = Leaf(b, size, slot if b >= live_start else None)
        if b >= live_start:
            slot += 1
        _add(items, stack, [leaf], True, aggregate=False)
    if stack:
        raise ValueError("ArgInfo ends inside an aggregate")
    return items, more


def _scalar_positions(data: bytes) -> list[int]:
    out, i = [], 0
    while i < len(data) and data[i] != END_SEQ:
        if data[i] < SPECIAL:
            out.append(i)
            i += 2
        else:
            i += 1
    return out


def _add(items, stack, leaves, complete, aggregate) -> None:
    if stack:                       # part of an enclosing aggregate
        stack[-1][0].extend(leaves)
        stack[-1][1] = stack[-1][1] and complete
    else:
        items.append(ArgItem(tuple(leaves), aggregate, complete))


@dataclass(frozen=True)
class ArgLiveness:
    """FUNCDATA_ArgLiveInfo plus the pcs of PCDATA_ArgLiveIndex."""
    start: int                          # smallest tracked offset (0xff: none tracked)
    maps: bytes                         # the FUNCDATA itself (bitmaps from byte 1)
    pcs: tuple[tuple[int, int, int], ...]   # (lo, hi, bitmap offset in maps) by pc

    def index_at(self, pc: int) -> int:
        i = bisect_right([lo for lo, _, _ in self.pcs], pc) - 1
        if i < 0 or not self.pcs[i][0] <= pc < self.pcs[i][1]:
            return -1
        return self.pcs[i][2]

    def live(self, pc: int, leaf: Leaf) -> bool:
        """Does the slot of `leaf` hold a stored value at pc (Go's symPC)?"""
        idx = self.index_at(pc)
        if idx <= 0 or leaf.slot is None or leaf.offset is None or leaf.offset < self.start:
            return True
        at = idx + leaf.slot // 8
        if at >= len(self.maps):
            return False            # past the data: can't vouch for it
        return bool(self.maps[at] >> (leaf.slot % 8) & 1)


ALL_LIVE = ArgLiveness(0xFF, b"\xff", ())


def format_args(items: list[ArgItem], more: bool, word, live=lambda leaf: True) -> str:
    """The arguments as Go's traceback prints them, from `word(offset, size)`
    (the integer at the argument pointer + offset): hex words, `{...}` for
    aggregates, `?` after a word whose slot is not live, `_` for an offset
    ArgInfo could not hold, `...` for what it left out. Nested aggregates are
    flattened here (one level of braces): tests compare words, not nesting."""
    parts = []
    for it in items:
        words = []
        for leaf in it.leaves:
            if leaf.offset is None:
                words.append("_")
            else:
                words.append(f"{word(leaf.offset, leaf.size):#x}" + ("" if live(leaf) else "?"))
        if not it.complete and it.aggregate and "_" not in words:
            words.append("...")
        parts.append("{" + ", ".join(words) + "}" if it.aggregate else words[0])
    if more:
        parts.append("...")
    return ", ".join(parts)


# -- the plan's data -----------------------------------------------------------

def spill_roots(items: list[ArgItem], params: list[tuple[str, int]]) -> dict[str, dict]:
    """Input parameter -> where its value sits in the argument area.

    `params` are the function's input parameters in order (receiver first, no
    dictionary, no results) as DWARF lists them: (name, size of its type).
    Each ArgInfo item is the next parameter; the mapping stops at the first
    item that can't be that parameter (a scalar of another size, components
    outside it), so a mismatch loses values, never misplaces one. An escaped
    parameter (DWARF's `&x`) takes its item but gets no spill root: the heap
    copy is the variable. Each root: offset and size of the value, the
    components' [offset, size, slot] (for liveness) and whether ArgInfo
    described all of it."""
    out = {}
    for it, (name, size) in zip(items, params):
        base = it.offset
        if base is None or not it.leaves:
            break
        if not it.aggregate and it.leaves[0].size != size:
            break
        if any(lf.offset is not None and (lf.offset < base or lf.offset + lf.size > base + size)
               for lf in it.leaves):
            break
        if name.startswith("&") or "." in name:
            continue
        out[name] = {"offset": base, "size": size,
                     "leaves": [[lf.offset, lf.size, lf.slot] for lf in it.leaves if lf.offset is not None],
                     "complete": it.complete}
    return out


def function_spills(pcln, fn, params: list[tuple[str, int]]) -> dict | None:
    """The plan's spill data for one function: {"roots": spill_roots(...),
    "live": {"start", "maps" (hex), "pcs"}}; None when the binary has no
    ArgInfo for it (no arguments, assembly, no way to read go:func.*)."""
    from .pclntab import (FUNCDATA_ARG_INFO, FUNCDATA_ARG_LIVE_INFO, PCDATA_ARG_LIVE_INDEX,
                          funcdata_bytes, pcdata_ranges)

    info = funcdata_bytes(pcln, fn, FUNCDATA_ARG_INFO, MAX_LEN)
    if not info:
        return None
    try:
        info = info[:arg_info_len(info)]
        pcs = [(lo, hi, v) for lo, hi, v in pcdata_ranges(pcln, fn, PCDATA_ARG_LIVE_INDEX)]
        top = max((v for _, _, v in pcs), default=0)
        maps = funcdata_bytes(pcln, fn, FUNCDATA_ARG_LIVE_INFO,
                              top + (MAX_TRACKED_SLOTS + 7) // 8) or b""
        start = maps[0] if maps else 0xFF
        items, _ = parse_arg_info(info, start, generic="[" in fn.name)
    except ValueError:
        return None
    roots = spill_roots(items, params)
    if not roots:
        return None
    return {"roots": roots, "live": {"start": start, "maps": maps.hex(),
                                     "pcs": [list(p) for p in pcs if p[2] > 0]}}


def liveness(spills: dict) -> ArgLiveness:
    """The ArgLiveness of a plan's spill data."""
    live = spills["live"]
    return ArgLiveness(live["start"], bytes.fromhex(live["maps"]),
                       tuple(tuple(p) for p in live["pcs"]))


def stale_words(spills: dict, root: str, pc: int) -> int:
    """How many words of `root`'s spilled value Go would print with `?` at pc
    (0: every word is vouched for)."""
    lv = liveness(spills)
    return sum(not lv.live(pc, Leaf(o, s, slot)) for o, s, slot in spills["roots"][root]["leaves"])
