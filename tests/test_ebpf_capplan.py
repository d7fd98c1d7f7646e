"""The probe's capture tables as pure data (agent/ebpf/capplan.py): no
kernel, no process. The end-to-end check is tests/test_ebpf_captures.py."""
from __future__ import annotations

import struct

import pytest

from agent.ebpf import capplan as C


def test_ops_become_a_chain_of_steps():
    deref = lambda after: (*C.DEREF, after)
    assert C._chain([]) == (0, [], (C.F_VALUE, 0, 0))
    assert C._chain([("offset", 8), ("offset", 16)]) == (24, [], (C.F_VALUE, 0, 0))
    # &x escaped to the heap, then a field: the pointer at 0, the value at +40
    assert C._chain([("deref",), ("offset", 40)]) == (0, [deref(40)], (C.F_VALUE, 0, 0))
    # r.User.Name: r's pointer at 0; User's at +24 of *r; Name at +8 of *User
    assert C._chain([("deref",), ("offset", 24), ("deref",), ("offset", 8)]) == \
        (0, [deref(24), deref(8)], (C.F_VALUE, 0, 0))
    # st.tags[1] (tags a []string at +16): the header at 16, data at +0, len at +8
    assert C._chain([("offset", 16), ("index", 1, 16, 0, 8)]) == \
        (16, [(0, 8, 1, 16, 16, 0)], (C.F_VALUE, 0, 0))
    assert C._chain([("offset", 8), ("len", 8)]) == (8, [], (C.F_NONE, 0, 0))      # held in the root
    assert C._chain([("deref",), ("len", 8)]) == (0, [deref(0)], (C.F_LEAF, 8, 8))  # read behind a pointer
    assert C._chain([("offset", 16), ("len_indirect", 8, 8)]) == (16, [deref(0)], (C.F_LEAF, 8, 8))
    assert C._chain([("offset", 16), ("addr",)]) == (16, [], (C.F_NONE, 0, 0))
    for op in (("map_index", 5, "k"), ("assert", 0, 0, -1, 8, True, "T")):
        assert C._chain([op]) is None


def test_roots_in_pieces_and_what_the_probe_does_not_take():
    # a string in two stack slots 24 bytes apart: one span, two pieces
    got = C._root([[8, "cfa", 0, -48], [8, "cfa", 0, -24]], [], 7)
    assert got == (-48, 32, 7, 0, [(0, 8), (24, 8)], [], (C.F_VALUE, 0, 0))
    assert C._root([[16, "cfa", 0, -32]], [], 7) == (-32, 16, 7, 0, [], [], (C.F_VALUE, 0, 0))
    assert "register or a constant" in C._root([[8, "reg", 0, 0], [8, "cfa", 0, -8]], [], 7)
    assert "too many or too wide" in C._root([[8, "cfa", 0, -8 * i] for i in range(1, 6)], [], 7)
    assert "too many or too wide" in C._root([[8, "cfa", 0, -4096], [8, "cfa", 0, -8]], [], 7)
    assert C._root([[8, "cfa", 0, -8]], [("map_index", 5, "k")], 7) == "the 'map_index' op"
    assert "more than 4 pointers" in C._root([[8, "cfa", 0, -8]], [("deref",)] * 6, 7)


def test_slots_follow_the_probes_table_of_kinds():
    assert C.slot_record(["str", 0, 8]) == (1, 0, 8, 0, 0)
    assert C.slot_record(["ptr", 16, 99]) == (2, 16, 0, 99, 0)
    assert C.slot_record(["slice", 24, 32, 5, 40]) == (3, 24, 32, 5, 40)
    assert C.slot_record(["map", 8, 12]) == (4, 8, 0, 12, 0)
    assert C.slot_record(["iface", 0, 8, 24]) == (5, 0, 8, 0, 24)
    assert C.slot_record(["iface", 0, 8, -1]) == (5, 0, 8, 0, -1)
    assert C.slot_record(["chan", 8, 96]) == (6, 8, 0, 0, 96)
    assert C.slot_record(["func", 40]) == (7, 40, 0, 0, 0)
    assert C.slot_record(["fallback", 0, "why"]) == (0, 0, 0, 0, 0)


def test_entries_place_a_target_and_number_its_types_densely():
    t = C.CaptureTables()
    t.shapes = {1000: (16, [C.slot_record(["str", 0, 8])]),
                2000: (24, [C.slot_record(["ptr", 0, 1000]), C.slot_record(["slice", 8, 16, 3000, 8])])}
    t.roots = [(-32, 8, 2000, 0, [], [], (C.F_VALUE, 0, 0))]
    t.sites = {0x401234: [0], 0x401300: [0]}          # two call sites share one run of roots
    t.rtypes = {0x5000: (1000, 0)}
    at = C.Placement(slot=2, root_base=10, slot_base=100, shape_base=50, map_base=0, n_shapes=3)
    e = t.entries(at)
    key = lambda v: struct.pack("<Q", (2 << 56) | v)
    assert [k for k, _ in e["sites"]] == [key(0x401234), key(0x401300)]
    assert {v for _, v in e["sites"]} == {struct.pack("<II", 10, 1)}
    [(ri, root)] = e["roots"]
    assert struct.unpack("<I", ri) == (10,) and C._ROOT.unpack(root)[2] == 1     # type 2000 is shape 1
    shapes = [(struct.unpack("<I", k)[0], C._SHAPE.unpack(v)) for k, v in e["shapes"]]
    assert shapes == [(50, (16, 100, 1, 0)), (51, (24, 101, 2, 0)), (52, (0, 103, 0, 0))]   # 52: no shape
    slots = [C._SLOT.unpack(v) for _, v in e["slots"]]
    assert slots[1][:4] == (2, 0, 0, 0)            # the pointer's pointee, type 1000, is shape 0
    assert slots[2][3] == 2                        # a type with no shape gets the empty one
    assert e["rtypes"] == [(key(0x5000), struct.pack("<II", 0, 0))]
    assert t.n_roots == 1 and t.n_slots == 3


def test_tables_too_big_for_the_probe_say_which():
    t = C.CaptureTables(sites={pc: [0] for pc in range(C.MAX_SITES + 1)}, roots=[()])
    with pytest.raises(C.TablesTooBig, match=r"sites 65537 > 65536"):
        t.check_fits()


def test_return_addresses_are_the_instructions_after_calls():
    code = bytes.fromhex(
        "55"                  # push rbp
        "e8 00 00 00 00"      # call rel32
        "48 89 c3"            # mov rbx, rax
        "ff d0"               # call rax
        "ff 14 25 00 10 00 00"  # call [0x1000]
        "c3")                 # ret
    assert C.call_returns(code, 0x401000) == [0x401006, 0x40100B, 0x401012]
