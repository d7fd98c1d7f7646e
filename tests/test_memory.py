"""agent/memory.py: process_vm_readv against a real Go program, and FakeMemory."""
from __future__ import annotations

import os

import pytest

from agent.errors import MemoryReadError, ProcessExited
from agent.memory import IOV_MAX, FakeMemory, ProcessMemory, make_reader
from agent.ptrace import PausedProcess
from ptrace_helpers import Target, assert_free

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="reads another process's memory")

UNMAPPED = [0x0, 0x10, 0xdead0000000, 0x7ff0_0000_0000]   # below mmap_min_addr, or in a hole


@pytest.fixture(scope="module")
def target(go_build):
    t = Target(go_build("ptrace_target"), "-threads", "2")
    yield t
    t.close()


def _table(t: Target) -> tuple[int, bytes]:
    n = int(t.info["table_len"])
    return int(t.info["table_addr"], 16), bytes((i * 7) & 0xFF for i in range(n))


@needs_root
def test_read_global_the_program_printed(target):
    mem = ProcessMemory(target.pid)
    got = mem.read(int(target.info["answer_addr"], 16), 8)
    assert int.from_bytes(got, "little") == int(target.info["answer"], 16)
    assert mem.bytes_read == 8


@needs_root
def test_read_while_paused(target):
    addr, want = _table(target)
    with PausedProcess(target.pid) as p:
        mem = ProcessMemory(target.pid)
        assert mem.read(addr, len(want)) == want
        # a stack read at the stopped thread's sp works too
        regs = p.threads[target.pid]
        assert len(mem.read(regs.rsp, 64)) == 64
    assert_free(target.pid)


@needs_root
def test_read_many_bad_addresses_in_the_middle(target):
    addr, want = _table(target)
    reqs = [(addr, 16), (UNMAPPED[0], 8), (addr + 100, 50), (UNMAPPED[2], 4096),
            (addr + 8000, 192), (UNMAPPED[1], 1), (UNMAPPED[3], 8), (addr + 1, 1)]
    mem = ProcessMemory(target.pid)
    got = mem.read_many(reqs)
    assert got == [want[:16], None, want[100:150], None, want[8000:8192], None, None, want[1:2]]
    assert mem.bytes_read == 16 + 50 + 192 + 1


@needs_root
def test_read_many_more_than_iov_max(target):
    """3,000 requests (so three process_vm_readv batches), every 7th one bad."""
    addr, want = _table(target)
    reqs, expect = [], []
    for i in range(3000):
        if i % 7 == 3:
            reqs.append((UNMAPPED[i % 4] + i, 8))
            expect.append(None)
        else:
            off = (i * 13) % (len(want) - 8)
            reqs.append((addr + off, 8))
            expect.append(want[off:off + 8])
    assert len(reqs) > 2 * IOV_MAX
    assert ProcessMemory(target.pid).read_many(reqs) == expect


def _scattered(mem, reqs):
    """read_into, answered in read_many's shape, so both are held to one oracle."""
    out = mem.read_into([a for a, _ in reqs], [n for _, n in reqs])
    return [out.get(i) for i in range(len(reqs))]


@needs_root
def test_read_into_agrees_with_read_many(target):
    """The bulk pause path: 3,000 ranges of mixed sizes, bad ones among them (also
    first and last in a batch), zero-sized ones, against read_many and the table."""
    addr, want = _table(target)
    reqs = []
    for i in range(3000):
        if i % 7 == 3 or i in (0, IOV_MAX - 1, IOV_MAX, 2999):
            reqs.append((UNMAPPED[i % 4] + 8 * i, 8 + i % 5))
        else:
            off = (i * 13) % (len(want) - 40)
            reqs.append((addr + off, (i % 5) * 8))
    mem = ProcessMemory(target.pid)
    got = _scattered(mem, reqs)
    assert got == mem.read_many(reqs)
    assert got[0] is None and got[IOV_MAX] is None and got[2999] is None
    assert got[1] == want[13:21] and got[5] == b""
    assert got[2] == want[26:26 + 16]
    assert mem.read_into([], []).buf == bytearray()


def test_read_into_fake_memory():
    mem = FakeMemory({0x1000: b"abcdefgh"})
    out = mem.read_into([0x1000, 0x5000, 0x1004], [2, 4, 4])
    assert [out.get(i) for i in range(3)] == [b"ab", None, b"efgh"]
    assert out.buf == bytearray(b"ab\0\0\0\0efgh")   # a failed range is zeros


@needs_root
def test_read_that_runs_off_the_mapping_fails(target):
    """A read whose tail is unmapped is a short read: an error, not a partial answer."""
    mem = ProcessMemory(target.pid)
    with open(f"/proc/{target.pid}/maps") as f:
        ranges = [[int(x, 16) for x in line.split()[0].split("-")] for line in f]
    starts = {s for s, _ in ranges}
    ends = [e for _, e in ranges]
    end = next(e for e in ends if e not in starts)   # a mapping followed by a hole
    assert len(mem.read(end - 16, 16)) == 16
    with pytest.raises(MemoryReadError) as err:
        mem.read(end - 16, 32)
    assert (err.value.addr, err.value.size) == (end - 16, 32)
    assert mem.read_many([(end - 16, 32), (end - 8, 8)]) == [None, mem.read(end - 8, 8)]
    assert _scattered(mem, [(end - 16, 32), (end - 8, 8)]) == [None, mem.read(end - 8, 8)]


@needs_root
def test_read_errors(target):
    mem = ProcessMemory(target.pid)
    with pytest.raises(MemoryReadError, match="0x10"):
        mem.read(0x10, 8)
    with pytest.raises(MemoryReadError):
        mem.read(-1, 8)
    assert mem.read(0x10, 0) == b""
    assert mem.read_many([]) == []


def test_missing_process():
    with pytest.raises(ProcessExited, match="does not exist"):
        ProcessMemory(2 ** 22 + 4321).read(0x400000, 8)


@needs_root
def test_make_reader(target):
    read = make_reader(ProcessMemory(target.pid))
    assert int.from_bytes(read(int(target.info["answer_addr"], 16), 8), "little") == \
        int(target.info["answer"], 16)


def test_fake_memory():
    mem = FakeMemory({0x1000: b"abcdefgh", 0x1008: b"ijkl", 0x2000: b"xyz"})
    assert mem.read(0x1002, 3) == b"cde"
    assert mem.read(0x1006, 4) == b"ghij"          # across two regions that touch
    assert mem.read_many([(0x1000, 2), (0x100b, 2), (0x2001, 2), (0x3000, 1)]) == \
        [b"ab", None, b"yz", None]
    with pytest.raises(MemoryReadError) as err:
        mem.read(0x2002, 2)
    assert (err.value.addr, err.value.size) == (0x2002, 2)
    assert mem.bytes_read == 3 + 4 + 2 + 2
    mem.add(0x3000, b"\x01")
    assert make_reader(mem)(0x3000, 1) == b"\x01"
