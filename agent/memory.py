"""Read target memory with process_vm_readv: read-only by construction.

There is no write path here on purpose (no PTRACE_POKE*, no /proc/pid/mem).
process_vm_readv needs no ptrace-stop, only ptrace-attach permission (root).

The kernel copies remote iovecs in order and stops at the first one that faults,
returning the bytes copied so far. read_many() uses that: the iovec where the
count ends is the bad one; it is marked None and the call resumes after it.
"""
from __future__ import annotations

import ctypes
import errno
import os
from array import array
from itertools import accumulate
from typing import Callable, Protocol, Sequence

from agent.errors import MemoryReadError, PermissionDenied, ProcessExited

IOV_MAX = 1024
_MAX_ADDR = 1 << 64


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
                                   ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong]
_libc.process_vm_readv.restype = ctypes.c_ssize_t


class Memory(Protocol):
    bytes_read: int

    def read(self, addr: int, size: int) -> bytes: ...
    def read_many(self, reqs: list[tuple[int, int]]) -> list[bytes | None]: ...
    def read_into(self, addrs: Sequence[int], sizes: Sequence[int]) -> "Scatter": ...


class Scatter:
    """Many remote ranges read back to back into one buffer (see read_into).

    Range i is buf[offsets[i]:offsets[i + 1]]; `failed` holds the ranges that
    could not be read, whose bytes are zero."""

    __slots__ = ("buf", "offsets", "failed")

    def __init__(self, sizes: Sequence[int], buf: memoryview | None = None):
        self.offsets = [0, *accumulate(sizes)]
        self.buf = buf if buf is not None else memoryview(bytearray(self.offsets[-1]))
        self.failed: set[int] = set()

    def get(self, i: int) -> bytes | None:
        if i in self.failed:
            return None
        return bytes(self.buf[self.offsets[i]:self.offsets[i + 1]])

    def fail(self, i: int) -> None:
        self.failed.add(i)
        a, b = self.offsets[i], self.offsets[i + 1]
        self.buf[a:b] = bytes(b - a)


def _check(addr: int, size: int) -> None:
    if size < 0 or addr < 0 or addr + size > _MAX_ADDR:
        raise MemoryReadError(addr, size, f"bad read request: {size} bytes at {addr:#x}")


class ProcessMemory:
    """Reads of one process's memory; bytes_read counts what came back, for budgets."""

    def __init__(self, pid: int):
        self.pid = pid
        self.bytes_read = 0
        self._arena = memoryview(bytearray(0))

    def reserve(self, nbytes: int) -> None:
        """Make the next read_into calls, up to nbytes in all, land in memory
        that is already faulted in.

        Call it before pausing: a fresh multi-megabyte buffer costs a page
        fault per 4 KiB on first touch, which inside the pause was a third
        of the bulk read's time."""
        buf = bytearray(nbytes)
        mv = memoryview(buf)
        mv[::4096] = bytes(len(range(0, nbytes, 4096)))  # one write per page faults it in
        self._arena = mv

    def _take(self, n: int) -> memoryview | None:
        if n > len(self._arena):
            return None
        # whole words, so the next buffer starts 8-aligned too (numpy word views)
        out, self._arena = self._arena[:n], self._arena[min(len(self._arena), -(-n // 8) * 8):]
        return out

    def read(self, addr: int, size: int) -> bytes:
        _check(addr, size)
        if size == 0:
            return b""
        got = self.read_many([(addr, size)])[0]
        if got is None:
            raise MemoryReadError(addr, size, f"pid {self.pid}: cannot read {size} bytes at "
                                  f"{addr:#x} (unmapped or unreadable)")
        return got

    def read_many(self, reqs: list[tuple[int, int]]) -> list[bytes | None]:
        """One result per (addr, size): the bytes, or None where that read failed."""
        out: list[bytes | None] = [None] * len(reqs)
        todo = []
        for i, (addr, size) in enumerate(reqs):
            _check(addr, size)
            if size == 0:
                out[i] = b""
            else:
                todo.append(i)
        while todo:
            batch, todo = todo[:IOV_MAX], todo[IOV_MAX:]
            todo = self._read_batch(reqs, batch, out) + todo
        return out

    def read_into(self, addrs: Sequence[int], sizes: Sequence[int]) -> Scatter:
        """Read every (addrs[i], sizes[i]) into one buffer, IOV_MAX ranges a syscall.

        The pause-time bulk path: iovecs are built as flat arrays, not one ctypes
        object per range, because at 10,000 goroutines Python's per-range cost is
        the pause."""
        if addrs and (min(sizes) < 0 or min(addrs) < 0):
            raise MemoryReadError(0, 0, "bad read request: negative address or size")
        total = sum(sizes)
        out = Scatter(sizes, self._take(total))
        if not addrs:
            return out
        remote = array("Q", bytes(16 * len(addrs)))
        remote[0::2] = array("Q", addrs)
        remote[1::2] = array("Q", sizes)
        rbase, _ = remote.buffer_info()
        lbase = ctypes.addressof((ctypes.c_char * max(1, len(out.buf))).from_buffer(out.buf)) \
            if len(out.buf) else 0
        start = 0
        while start < len(addrs):
            end = min(start + IOV_MAX, len(addrs))
            start = self._scatter_batch(out, start, end, rbase, lbase)
        self.bytes_read += len(out.buf)
        return out

    def read_scatter(self, addrs, sizes):
        """read_into for numpy columns (the read program's levels): returns
        (buf, offsets, ok) as numpy arrays; offsets has one more entry than
        addrs, and ok[i] is False where range i faulted (its bytes are zero).
        Negative addresses fail without a syscall."""
        import numpy as np
        n = len(addrs)
        offs = np.zeros(n + 1, np.int64)
        np.cumsum(sizes, out=offs[1:])
        total = int(offs[-1])
        arena = self._take(total)
        buf = np.frombuffer(arena, np.uint8) if arena is not None else np.zeros(total, np.uint8)
        ok = np.ones(n, bool)
        if not n:
            return buf, offs, ok
        bad = addrs < 0
        remote = np.empty((n, 2), np.uint64)
        remote[:, 0] = np.where(bad, 0, addrs).astype(np.uint64)
        remote[:, 1] = sizes.astype(np.uint64)
        remote[bad, 1] = 0
        ok[bad] = False
        lbase = buf.ctypes.data
        rbase = remote.ctypes.data
        start = 0
        while start < n:
            end = min(start + IOV_MAX, n)
            local = _Iovec(lbase + int(offs[start]), int(offs[end] - offs[start]))
            got = _libc.process_vm_readv(self.pid, ctypes.byref(local), 1,
                                         ctypes.cast(rbase + 16 * start, ctypes.POINTER(_Iovec)),
                                         end - start, 0)
            if got < 0:
                self._raise_for(ctypes.get_errno(), (0, 0))
                got = 0
            stop = int(offs[start]) + got
            if stop >= offs[end]:
                start = end
                continue
            # the kernel stopped inside (or right before) range k: it faulted; go on after it
            k = int(np.searchsorted(offs, stop, side="right")) - 1
            k = max(k, start)
            while k < end and offs[k + 1] == offs[k]:   # empty ranges never fault
                k += 1
            ok[k] = False
            buf[offs[k]:offs[k + 1]] = 0
            start = k + 1
        self.bytes_read += total
        return buf, offs, ok

    def _scatter_batch(self, out: Scatter, start: int, end: int, rbase: int, lbase: int) -> int:
        """Read ranges [start, end); return where to go on (past a faulting range)."""
        off = out.offsets
        local = _Iovec(lbase + off[start], off[end] - off[start])
        remote = ctypes.cast(rbase + 16 * start, ctypes.POINTER(_Iovec))
        n = _libc.process_vm_readv(self.pid, ctypes.byref(local), 1, remote, end - start, 0)
        if n < 0:
            self._raise_for(ctypes.get_errno(), (0, 0))
            n = 0
        if off[start] + n >= off[end]:
            return end
        # The kernel stopped inside range k: it faulted; go on after it.
        k = start
        while off[k + 1] <= off[start] + n:
            k += 1
        out.fail(k)
        return k + 1

    def _read_batch(self, reqs, batch: list[int], out: list) -> list[int]:
        """Read a batch into out; return the indices still to try (those after a fault)."""
        sizes = [reqs[i][1] for i in batch]
        total = sum(sizes)
        buf = ctypes.create_string_buffer(total)
        local = _Iovec(ctypes.cast(buf, ctypes.c_void_p), total)   # one buffer, sliced after
        remote = (_Iovec * len(batch))(*[_Iovec(reqs[i][0], reqs[i][1]) for i in batch])
        n = _libc.process_vm_readv(self.pid, ctypes.byref(local), 1, remote, len(batch), 0)
        if n < 0:
            self._raise_for(ctypes.get_errno(), reqs[batch[0]])
            n = 0     # EFAULT: the first iovec faulted
        data = buf.raw[:n]
        off = 0
        for k, (i, size) in enumerate(zip(batch, sizes)):
            if off + size > n:       # the read stopped inside (or right before) this one
                return batch[k + 1:]
            out[i] = data[off:off + size]
            self.bytes_read += size
            off += size
        return []

    def _raise_for(self, e: int, req: tuple[int, int]) -> None:
        if e == errno.EFAULT:
            return
        if e == errno.ESRCH:
            raise ProcessExited(f"pid {self.pid} does not exist any more")
        if e == errno.EPERM:
            raise PermissionDenied(f"process_vm_readv denied on pid {self.pid}: run as root "
                                   "or set kernel.yama.ptrace_scope=0")
        raise MemoryReadError(req[0], req[1], f"pid {self.pid}: process_vm_readv: "
                              f"{os.strerror(e)}")


def make_reader(mem: Memory) -> Callable[[int, int], bytes]:
    """read(addr, size) -> bytes, for layers that take memory as a plain function."""
    return mem.read


class FakeMemory:
    """Memory made of {addr: bytes} regions, for tests of the layers above.

    A read may span regions that touch (end of one == start of the next); any byte
    outside every region fails it, as an unmapped page would.
    """

    def __init__(self, regions: dict[int, bytes] | None = None):
        self.regions = dict(regions or {})
        self.bytes_read = 0

    def add(self, addr: int, data: bytes) -> None:
        self.regions[addr] = bytes(data)

    def _find(self, addr: int) -> tuple[int, bytes] | None:
        for start, data in self.regions.items():
            if start <= addr < start + len(data):
                return start, data
        return None

    def _try(self, addr: int, size: int) -> bytes | None:
        _check(addr, size)
        parts, at, end = [], addr, addr + size
        while at < end:
            hit = self._find(at)
            if hit is None:
                return None
            start, data = hit
            chunk = data[at - start:end - start]
            parts.append(chunk)
            at += len(chunk)
        got = b"".join(parts)
        self.bytes_read += len(got)
        return got

    def read(self, addr: int, size: int) -> bytes:
        got = self._try(addr, size)
        if got is None:
            raise MemoryReadError(addr, size, f"fake memory: nothing mapped in "
                                  f"[{addr:#x}, {addr + size:#x})")
        return got

    def read_many(self, reqs: list[tuple[int, int]]) -> list[bytes | None]:
        return [self._try(a, s) for a, s in reqs]

    def read_into(self, addrs: Sequence[int], sizes: Sequence[int]) -> Scatter:
        out = Scatter(sizes)
        for i, (a, s) in enumerate(zip(addrs, sizes)):
            got = self._try(a, s)
            if got is None:
                out.fail(i)
            else:
                out.buf[out.offsets[i]:out.offsets[i + 1]] = got
        return out
