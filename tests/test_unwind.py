"""The unwinder on its own: a real binary's pclntab, a stack made of bytes.

No process is involved (agent/unwind.py never touches one): each test lays
out return addresses where Go's pcsp tables say a frame keeps them, and the
walk must find exactly those frames, stop where Go stops, and say why when
it can't go on."""
from __future__ import annotations

import struct

import pytest

from agent.errors import MemoryReadError
from agent.unwind import StackImage, unwind
from probe_compiler.gobinary import GoBinary

SP = 0xC000_1000
BIAS = 0x5555_0000_0000   # where a PIE process might have loaded the binary


@pytest.fixture(scope="module")
def pcln(go_build):
    with GoBinary.open(go_build("states")) as b:
        yield b.pclntab


def _pc_with_frame(pcln, name: str) -> tuple[int, int]:
    """A pc inside `name` past its prologue, and its frame size (pcsp)."""
    fn = pcln.func_by_name(name)
    for pc in range(fn.entry + 1, fn.end):
        d = pcln.sp_delta(fn, pc)
        if d:
            return pc, d
    raise AssertionError(f"{name} never moves SP")


def _stack(pcln, chain: list[str], bias: int = 0) -> tuple[int, bytes, list[int]]:
    """Stack bytes from SP for frames `chain` (innermost first) ending at goexit:
    (first pc, bytes, each frame's CFA)."""
    words, cfas, sp = {}, [], SP
    pcs = [_pc_with_frame(pcln, n) for n in chain]
    goexit = pcln.func_by_name("runtime.goexit").entry + 1
    for i, (pc, d) in enumerate(pcs):
        cfa = sp + d + 8
        cfas.append(cfa)
        words[cfa - 8] = (pcs[i + 1][0] if i + 1 < len(pcs) else goexit) + bias
        sp = cfa
    data = b"".join(struct.pack("<Q", words.get(SP + 8 * k, 0)) for k in range((sp - SP) // 8 + 1))
    return pcs[0][0] + bias, data, cfas


CHAIN = ["main.blockedMutex", "main.main"]


def test_walks_pcsp_frames_to_goexit(pcln):
    pc, data, cfas = _stack(pcln, CHAIN)
    out = unwind(pcln, pc, SP, 0, StackImage(SP, data))
    assert out.error is None
    assert [f.fn.name for f in out.frames] == CHAIN + ["runtime.goexit"]
    assert [f.cfa for f in out.frames[:2]] == cfas


def test_pie_pcs_come_back_link_time(pcln):
    """A process that loaded the binary BIAS bytes away has every pc moved;
    the frames speak the binary's addresses, as the pclntab and DWARF do."""
    pc, data, cfas = _stack(pcln, CHAIN, bias=BIAS)
    out = unwind(pcln, pc, SP, 0, StackImage(SP, data), bias=BIAS)
    assert [f.fn.name for f in out.frames] == CHAIN + ["runtime.goexit"]
    assert all(f.fn.entry <= f.pc < f.fn.end for f in out.frames)
    wrong = unwind(pcln, pc, SP, 0, StackImage(SP, data))
    assert wrong.error is not None and "in no Go function" in wrong.error


def test_a_cut_copy_without_memory_says_where(pcln):
    pc, data, cfas = _stack(pcln, CHAIN)
    out = unwind(pcln, pc, SP, 0, StackImage(SP, data[:cfas[0] - SP - 8]))
    assert [f.fn.name for f in out.frames] == CHAIN[:1]
    assert out.error == f"stack unreadable at {cfas[0] - 8:#x}"


def test_a_failing_read_ends_the_walk_with_its_reason(pcln):
    pc, data, cfas = _stack(pcln, CHAIN)

    def read(addr, size):
        raise MemoryReadError(addr, size)

    out = unwind(pcln, pc, SP, 0, StackImage(SP, data[:8], read))
    assert len(out.frames) == 1 and out.error == f"stack unreadable at {cfas[0] - 8:#x}"


def test_a_bug_in_the_reader_is_not_swallowed(pcln):
    """Only memory errors end a walk quietly; anything else is a bug to see."""
    pc, data, _ = _stack(pcln, CHAIN)

    def read(addr, size):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        unwind(pcln, pc, SP, 0, StackImage(SP, data[:8], read))


def test_max_frames_cuts_and_says_so(pcln):
    pc, data, _ = _stack(pcln, CHAIN)
    out = unwind(pcln, pc, SP, 0, StackImage(SP, data), max_frames=1)
    assert len(out.frames) == 1 and out.error == "stack deeper than 1 frames: cut"
