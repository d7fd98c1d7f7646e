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
from typing import Callable, Protocol

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


def _check(addr: int, size: int) -> None:
    if size < 0 or addr < 0 or addr + size > _MAX_ADDR:
        raise MemoryReadError(addr, size, f"bad read request: {size} bytes at {addr:#x}")


class ProcessMemory:
    """Reads of one process's memory; bytes_read counts what came back, for budgets."""

    def __init__(self, pid: int):
        self.pid = pid
        self.bytes_read = 0

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
