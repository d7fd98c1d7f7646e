"""The argument metadata decoder (probe_compiler/argspill.py), on hand-made
bytes and on the bytes of a real binary (tests/goprogs/optvalues)."""
from __future__ import annotations

import pytest

from gobuild import build
from probe_compiler.argspill import (ALL_LIVE, ArgLiveness, Leaf, arg_info_len, format_args,
                                     function_spills, parse_arg_info, spill_roots, stale_words)
from probe_compiler.gobinary import GoBinary
from probe_compiler.pclntab import (FUNCDATA_ARG_INFO, FUNCDATA_ARG_LIVE_INFO, PCDATA_ARG_LIVE_INDEX,
                                    funcdata_bytes, pcdata_ranges)

# f(a int, s string, p struct{x int32; y [2]int8}) with a at 0, s at 8, p at 24.
HAND = bytes([0x00, 8, 0xFE, 0x08, 8, 0x10, 8, 0xFD, 0xFE, 0x18, 4, 0xFE, 0x1C, 1, 0x1D, 1, 0xFD, 0xFD, 0xFF])


def test_hand_made_layout():
    items, more = parse_arg_info(HAND)
    assert not more and arg_info_len(HAND + b"\x99") == len(HAND)
    assert [(i.offset, i.aggregate, i.complete) for i in items] == [(0, False, True), (8, True, True),
                                                                   (24, True, True)]
    assert [lf.offset for lf in items[2].leaves] == [0x18, 0x1C, 0x1D]   # nested array flattened
    words = {0: 7, 8: 0x4C0000, 16: 3, 24: 0xFFFFFFFF, 28: 1, 29: 2}
    assert format_args(items, more, lambda off, size: words[off]) == \
        "0x7, {0x4c0000, 0x3}, {0xffffffff, 0x1, 0x2}"


def test_left_out_and_too_large():
    data = bytes([0x00, 8, 0xFE, 0x08, 8, 0xFC, 0xFD, 0xFB, 0xFC, 0xFF])
    items, more = parse_arg_info(data)
    assert more
    assert items[1].complete is False and items[2].offset is None
    assert format_args(items, more, lambda o, s: o) == "0x0, {0x8, ...}, _, ..."
    # An argument without a placeable offset stops the mapping to parameters there.
    assert set(spill_roots(items, [("a", 8), ("b", 16), ("c", 8)])) == {"a", "b"}


@pytest.mark.parametrize("bad", [b"", bytes([0x00, 8]), bytes([0xFD, 0xFF]), bytes([0xFE, 0xFF]),
                                 bytes([0xF1, 0xFF]), bytes([0x00])])
def test_malformed(bad):
    with pytest.raises(ValueError):
        parse_arg_info(bad)


def test_liveness_slots_and_bitmaps():
    # a is a stack argument at 0 (always live); b at 8 and c at 16 are spilled, tracked from 8.
    data = bytes([0x00, 8, 0x08, 8, 0x10, 8, 0xFF])
    items, _ = parse_arg_info(data, live_start=8)
    assert [lf.slot for it in items for lf in it.leaves] == [None, 0, 1]
    lv = ArgLiveness(8, bytes([8, 0b01, 0b11]), ((100, 110, 1), (110, 120, 2), (120, 130, -1)))
    live = {pc: [lv.live(pc, it.leaves[0]) for it in items] for pc in (99, 105, 115, 125)}
    assert live == {99: [True] * 3, 105: [True, True, False], 115: [True] * 3, 125: [True] * 3}
    assert format_args(items, False, lambda o, s: o, lambda lf: lv.live(105, lf)) == "0x0, 0x8, 0x10?"
    assert ALL_LIVE.live(5, Leaf(0, 8, 0))


def test_generic_dictionary_slot():
    # The dictionary (not in ArgInfo) is spilled at 0 and tracked: x and n take slots 1 and 2.
    items, _ = parse_arg_info(bytes([0x08, 8, 0x10, 8, 0xFF]), live_start=0, generic=True)
    assert [it.leaves[0].slot for it in items] == [1, 2]
    items, _ = parse_arg_info(bytes([0x08, 8, 0x10, 8, 0xFF]), live_start=0)   # as the runtime counts
    assert [it.leaves[0].slot for it in items] == [0, 1]


def test_spill_roots_map_parameters_in_order():
    items, _ = parse_arg_info(HAND)
    roots = spill_roots(items, [("a", 8), ("s", 16), ("p", 8), ("~r0", 8)])
    assert roots["s"] == {"offset": 8, "size": 16, "leaves": [[8, 8, None], [16, 8, None]], "complete": True}
    assert set(roots) == {"a", "s", "p"}
    assert set(spill_roots(items, [("a", 4), ("s", 16)])) == set()   # a scalar of another size: stop
    assert set(spill_roots(items, [("&a", 8), ("s", 16)])) == {"s"}  # escaped: the heap has it


@pytest.fixture(scope="module", params=[None, "1.21.13"], ids=["newest", "oldest"])
def pcln(request):
    with GoBinary.open(str(build("optvalues", release=request.param))) as b:
        yield b.pclntab


def _info(pcln, name):
    fn = pcln.func_by_name(name)
    data = funcdata_bytes(pcln, fn, FUNCDATA_ARG_INFO, 171)
    return fn, data[:arg_info_len(data)]


def test_real_binary_layouts(pcln):
    # scalars(a int, b int8, c uint16, d bool, e float64, f uintptr): all in registers,
    # spill slots laid out by size and alignment.
    _, data = _info(pcln, "main.scalars")
    items, more = parse_arg_info(data)
    assert [(i.offset, i.leaves[0].size) for i in items] == [(0, 8), (8, 1), (10, 2), (12, 1), (16, 8), (24, 8)]
    # aggregates(p Pair, sm Small, arr [3]int): the array goes on the stack first.
    _, data = _info(pcln, "main.aggregates")
    items, _ = parse_arg_info(data)
    assert [[lf.offset for lf in i.leaves] for i in items] == [[24, 32, 40], [48, 52], [0, 8, 16]]
    # many(a..l int): 9 in registers, 3 on the stack; Go describes 10.
    _, data = _info(pcln, "main.many")
    items, more = parse_arg_info(data)
    assert len(items) == 10 and more
    assert items[9].offset == 0   # j, the first stack argument
    # A generic function's dictionary is left out.
    _, data = _info(pcln, "main.gen[go.shape.int]")
    items, _ = parse_arg_info(data)
    assert [i.offset for i in items] == [8, 16]


def test_real_binary_liveness(pcln):
    fn = pcln.func_by_name("main.scalars")
    pcs = pcdata_ranges(pcln, fn, PCDATA_ARG_LIVE_INDEX)
    assert pcs and pcs[0][0] == fn.entry and all(fn.entry <= lo < hi <= fn.end for lo, hi, _ in pcs)
    top = max(v for _, _, v in pcs)
    maps = funcdata_bytes(pcln, fn, FUNCDATA_ARG_LIVE_INFO, top + 2)
    assert maps[0] == 0      # every spill slot is tracked
    spills = function_spills(pcln, fn, [("a", 8), ("b", 1), ("c", 2), ("d", 1), ("e", 8), ("f", 8)])
    assert set(spills["roots"]) == set("abcdef")
    # At entry nothing is stored yet (where the PCDATA names a bitmap); at the end all is.
    at_entry = [lo for lo, _, v in spills["live"]["pcs"]]
    assert all(stale_words(spills, "a", pc) in (0, 1) for pc in at_entry)
    assert stale_words(spills, "a", fn.end - 1) == 0
