"""The stack probe's plan and records, with no kernel: bytes in, data out."""
from __future__ import annotations

import struct

import pytest

from agent.ebpf import records as R
from dataclasses import replace

from agent.ebpf.capplan import Placement
from agent.ebpf.plan import ABSENT, NO_PROG, CapturePlan, StackBudgets, StackPlan
from probe_compiler.runtime_layout import RuntimeLayout

HDR = struct.Struct("<IIQQQQIIIIII")


def _layout(**over):
    g = {"goid": 152, "atomicstatus": 144, "stack.lo": 0, "stack.hi": 8, "sched.sp": 56, "sched.pc": 64,
         "sched.bp": 96, "syscallsp": 104, "syscallpc": 112, "m": 48, "labels": 352}
    g.update(over)
    return RuntimeLayout(allgs_addr=0x1000, allglen_addr=0x1008, allm_addr=0x1010, g_size=456,
                         g_offsets=g, m_size=100, m_offsets={"procid": 64}, gscan=0x1000,
                         status_names={0: "idle", 1: "runnable", 2: "running", 4: "waiting", 6: "dead"},
                         wait_reasons={}, status_constants={11: "deadextra"})


def test_plan_packs_offsets_masks_and_budgets():
    plan = StackPlan.from_layout(_layout(), 42, {"goid": 8, "labels": 8}, StackBudgets(max_frames=7))
    v = struct.unpack("<5Q19I4x3Q8I4Q", plan.pack())
    assert v[:5] == (0x1000, 0x1008, (1 << 0) | (1 << 6) | (1 << 11), 1 << 2, 1 << 4)
    assert v[5:8] == (42, 0x1000, 360)           # tgid, gscan, g bytes through labels
    assert v[17] == ABSENT                        # no syscallbp before Go 1.23
    assert v[21:24] == (7, 65536, 1024)
    assert v[27] == NO_PROG                       # stacks only: no capture tables


def test_a_plan_with_captures_names_its_tables_and_keeps_whole_stacks_it_can():
    at = Placement(slot=3, shape_base=100, n_shapes=7, map_base=2, n_maps=1)
    caps = CapturePlan(at=at, types_base=0x4a0000, bias=0x1000, cap_bytes=1 << 20, depth=8, elements=64,
                       string_bytes=256, site_lo=0x401000, site_hi=0x402000, ro_lo=0x4a0000, ro_hi=0x4c0000)
    plan = replace(StackPlan.from_layout(_layout(), 42, {"goid": 8}), captures=caps)
    v = struct.unpack("<5Q19I4x3Q8I4Q", plan.pack())
    assert v[23] == 1016                          # whole stacks fit the probe's kept copies (for their chain)
    assert v[24:] == (0x4a0000, 0x1000, 1 << 20, 3, 8, 64, 256, 100, 7, 2, 1, 0x401000, 0x402000,
                      0x4a0000, 0x4c0000)


def test_plan_refuses_what_the_probe_cant_walk():
    lay = _layout()
    del lay.g_offsets["sched.bp"]
    with pytest.raises(ValueError, match="sched.bp"):
        StackPlan.from_layout(lay, 1, {"goid": 8})
    with pytest.raises(ValueError, match="copies at most"):
        StackPlan.from_layout(_layout(labels=2000), 1, {"labels": 8})


def _g(gi, pc=0x401000, sp=0x7000, bp=0x7010, g=b"G" * 16, top=b"\0" * 16, flags=0):
    return HDR.pack(R.K_G, gi, 0xc000 + gi, pc, sp, bp, 0, 5, len(g), len(top), 0, flags) + g + top


def _frames(gi, pairs, flags=0):
    return (HDR.pack(R.K_FRAMES, gi, 0, 0, 0, 0, 0, 0, 0, 0, len(pairs), flags)
            + b"".join(struct.pack("<QQ", *p) for p in pairs))


def test_frames_follow_their_goroutine_and_give_the_words_at_each_frame_pointer():
    out = R.parse([_g(3), _frames(3, [(0x7040, 0x401234)]), R.K_MARK.to_bytes(8, "little"),
                   _frames(3, [(0, 0x401999)], flags=R.F_TOP)])
    [g] = out.goroutines
    assert g.pairs == [(0x7040, 0x401234), (0, 0x401999)]
    assert g.words() == {0x7010: 0x7040, 0x7018: 0x401234, 0x7040: 0, 0x7048: 0x401999}
    assert g.chain_error() is None and g.top == b"\0" * 16


def test_cut_chains_say_why_and_lost_goroutines_are_counted():
    out = R.parse([_g(1), _frames(1, [], flags=R.F_BUDGET), _frames(9, [(1, 2)])])
    assert out.goroutines[0].chain_error() == "the frame budget ran out"
    assert out.orphan_frames == 1


def test_thread_record_gives_the_interrupted_registers():
    regs = list(range(100, 123))
    out = R.parse([HDR.pack(R.K_THREAD, 0, 0, 0, 0, 0, 2, 77, 23 * 8, 0, 0, 0) + struct.pack("<23Q", *regs)])
    [(tid, r)] = out.threads
    assert tid == 77 and r["rip"] == 116 and r["rsp"] == 115 and r["rbp"] == 110


@pytest.mark.parametrize("raw", [b"\1\0\0\0", HDR.pack(R.K_G, 0, 0, 0, 0, 0, 0, 0, 500, 0, 0, 0),
                                 HDR.pack(R.K_FRAMES, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0),
                                 HDR.pack(77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)])
def test_malformed_records_are_errors_not_crashes(raw):
    with pytest.raises(R.RecordError):
        R.parse([raw])


def test_an_unwind_that_ran_out_of_copied_words_says_why_the_walk_stopped():
    from agent.ebpf.executor import _unwind_error
    out = R.parse([_g(1), _frames(1, [], flags=R.F_BUDGET)])
    g = out.goroutines[0]
    assert _unwind_error("stack unreadable at 0x7010", g) == \
        "stack unreadable at 0x7010 (the probe's frame-pointer walk stopped: the frame budget ran out)"
    assert _unwind_error("unknown pc 0x1", g) == "unknown pc 0x1"
    assert _unwind_error(None, g) is None


def test_copy_records_are_kept_by_address():
    copy = lambda addr, data: struct.pack("<IIQ", R.K_COPY, len(data), addr) + data
    out = R.parse([_g(1), copy(0xc000100000, b"hello"), copy(0xc000200000, b"")])
    assert out.copies == [(0xc000100000, b"hello"), (0xc000200000, b"")]
    with pytest.raises(R.RecordError, match="5 bytes claimed, 4 sent"):
        R.parse([struct.pack("<IIQ", R.K_COPY, 5, 0x1000) + b"abcd"])


def _copy(addr, data) -> bytes:
    return struct.pack("<IIQ", R.K_COPY, len(data), addr) + data


def _batch(*records, claim=None) -> bytes:
    """A K_BATCH record of records, each padded to 8 bytes, as a runner's stage sends them."""
    body = b"".join(r + bytes(-len(r) % 8) for r in records)
    return struct.pack("<II", R.K_BATCH, len(body) if claim is None else claim) + body


def test_a_runners_batch_is_its_records_in_order():
    """Goroutines, their frames and copies in batches parse as they would one by one."""
    alone = [_g(1, top=b"\1" * 12), _frames(1, [(0x7040, 0x401234)]), _copy(0xc000100000, b"hello"),
             _g(2), _copy(0xc000100010, b"12345678"), _copy(0x1000, b""), _frames(2, [(0, 1)], flags=R.F_TOP)]
    one, batched = R.parse(alone), R.parse([_batch(*alone[:3]), _batch(*alone[3:])])
    assert batched == one
    assert one.copies == [(0xc000100000, b"hello"), (0xc000100010, b"12345678"), (0x1000, b"")]
    assert [g.pairs for g in one.goroutines] == [[(0x7040, 0x401234)], [(0, 1)]]


@pytest.mark.parametrize("raw", [_batch(_copy(0x10, b"abc"), claim=99),
                                 struct.pack("<II", R.K_BATCH, 16) + struct.pack("<IIQ", R.K_COPY, 50, 0x20),
                                 _batch(_g(1))[:-8] + bytes(0),
                                 struct.pack("<II", R.K_BATCH, 16) + struct.pack("<IIQ", R.K_THREAD, 0, 0x20)])
def test_a_malformed_batch_is_an_error_not_a_crash(raw):
    with pytest.raises(R.RecordError):
        R.parse([raw])


def test_the_binarys_read_only_data_is_read_from_the_file_not_missed():
    """What the probe leaves out (a literal in rodata) is read from the
    binary; anything else it did not copy is still a miss."""
    import numpy as np
    from agent.readexec import Copies
    from agent.errors import MemoryReadError
    rodata = bytes(range(256))
    c = Copies(1, static=(0x4000, 0x4100, lambda a, n: rodata[a - 0x4000:a - 0x4000 + n]))
    c.add(np.array([0xc000], np.int64), np.array([4], np.int64), np.frombuffer(b"heap", np.uint8),
          np.array([0, 4], np.int64), np.ones(1, bool))
    assert c.read(0xc000, 4) == b"heap"
    assert c.read(0x4010, 3) == bytes([16, 17, 18])
    with pytest.raises(MemoryReadError, match="not copied"):
        c.read(0x40ff, 2)            # runs past the read-only data
    assert c.misses == [(0x40ff, 2)]
