"""Go's own symbol table (pclntab): functions, pc -> file:line, pcsp, inline tree.

The layout is the one the linker writes (cmd/link/internal/ld/pcln.go) and the
runtime reads (runtime/symtab.go, runtime/symtabinl.go), Go 1.20+ format
(magic 0xfffffff1). The pclntab survives `-ldflags=-s -w`, so everything here
works on stripped binaries.

Nothing is decoded at construction: the function table (ftab) is a strided view
on the section bytes; a function is decoded on first use and its pcvalue tables
are decoded once and cached (an unwinder asks the same functions over and over).
"""
from __future__ import annotations

import struct
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .errors import BinaryError
from .leb128 import uleb128

GO120_MAGIC = 0xFFFFFFF1
KNOWN_MAGICS = {
    0xFFFFFFFB: "Go 1.2-1.15",
    0xFFFFFFFA: "Go 1.16-1.17",
    0xFFFFFFF0: "Go 1.18-1.19",
}

# internal/abi/symtab.go
PCDATA_INL_TREE_INDEX = 2
FUNCDATA_INL_TREE = 3
FUNCFLAG_TOPFRAME, FUNCFLAG_SPWRITE, FUNCFLAG_ASM = 1, 2, 4

# cmd/internal/objabi/funcid.go: the linker gives these runtime functions a
# special FuncID by name. Every other function with a non-zero FuncID is a
# wrapper. Deriving the symbolic id from the name keeps us independent of the
# numeric values, which shift between Go versions sharing one pclntab magic.
_SPECIAL_RUNTIME_FUNCS = {
    "abort": "abort", "asmcgocall": "asmcgocall", "asyncPreempt": "asyncPreempt",
    "cgocallback": "cgocallback", "corostart": "corostart", "debugCallV2": "debugCallV2",
    "gcBgMarkWorker": "gcBgMarkWorker", "rt0_go": "rt0_go", "goexit": "goexit",
    "gogo": "gogo", "gopanic": "gopanic", "handleAsyncEvent": "handleAsyncEvent",
    "main": "runtime_main", "mcall": "mcall", "morestack": "morestack", "mstart": "mstart",
    "panicwrap": "panicwrap", "runFinalizers": "runFinalizers", "runCleanups": "runCleanups",
    "sigpanic": "sigpanic", "systemstack_switch": "systemstack_switch",
    "systemstack": "systemstack",
}

# runtime._func header: entryOff, nameOff, args, deferreturn, pcsp, pcfile, pcln,
# npcdata, cuOffset, startLine, funcID, flag, pad, nfuncdata; then
# pcdata[npcdata] uint32 and funcdata[nfuncdata] uint32.
_FUNC = struct.Struct("<IiiIIIIIIiBBBB")
# runtime.inlinedCall: funcID, pad[3], nameOff, parentPc, startLine
_INLINED_CALL = struct.Struct("<B3xiii")
_U32 = struct.Struct("<I")


def check_magic(magic: int, where: str) -> None:
    """Raise BinaryError unless magic is the Go 1.20+ pcHeader magic."""
    if magic != GO120_MAGIC:
        era = KNOWN_MAGICS.get(magic)
        hint = (f"it was built by {era}; rebuild it with Go 1.20 or newer" if era
                else "the pclntab is corrupt or big-endian (unsupported)")
        raise BinaryError(f"{where}: unsupported pclntab magic {magic:#x}: {hint}")


def func_id_name(name: str, numeric_id: int) -> str:
    """Symbolic FuncID ("normal", "goexit", "wrapper", ...) of a function."""
    if numeric_id == 0:
        return "normal"
    if name.startswith("runtime."):
        special = _SPECIAL_RUNTIME_FUNCS.get(name[len("runtime."):])
        if special:
            return special
    return "wrapper"


@dataclass(frozen=True)
class Func:
    name: str
    entry: int
    end: int
    func_id: str
    flag: int
    start_line: int
    file: str
    _off: int = field(default=-1, repr=False, compare=False)  # _func offset in pclntable

    @property
    def is_topframe(self) -> bool:
        return bool(self.flag & FUNCFLAG_TOPFRAME)

    @property
    def is_spwrite(self) -> bool:
        return bool(self.flag & FUNCFLAG_SPWRITE)

    @property
    def is_asm(self) -> bool:
        return bool(self.flag & FUNCFLAG_ASM)


@dataclass(frozen=True)
class SourceFrame:
    function: str
    file: str
    line: int
    inlined: bool
    func_id: str


@dataclass(frozen=True)
class _RawFunc:
    """The parts of runtime._func that lookups need after Func is built."""
    pcsp: int
    pcfile: int
    pcln: int
    npcdata: int
    cu_offset: int
    nfuncdata: int
    tables_off: int  # offset in pclntable of pcdata[0]


class PcLnTab:
    """Reads one module's pclntab.

    buf[base:base+size]: the whole .gopclntab (starts with runtime.pcHeader).
    text_start: moduledata.text (function entries are offsets from it).
    read_static / gofunc: how to reach funcdata (the inline tree lives in
    go:func.*, outside the pclntab); gofunc may be None when unknown, then
    inlined frames can't be expanded.
    """

    def __init__(self, buf, text_start: int, base: int = 0, size: int | None = None,
                 read_static: Callable[[int, int], bytes] | None = None,
                 gofunc: int | None = None, where: str = "binary"):
        # buf: bytes or mmap holding the pclntab at [base, base + size); kept
        # whole (not copied) so that C-speed find() serves the string tables.
        self._buf, self._base = buf, base
        end = len(buf) if size is None else base + size
        self._data = memoryview(buf)[base:end]
        self.text_start = text_start
        self._read_static = read_static
        self.gofunc = gofunc
        self._where = where
        self._parse_header()
        self._funcs: dict[int, Func] = {}
        self._raw: dict[int, _RawFunc] = {}
        self._tables: dict[int, tuple[list[int], list[int]]] = {}
        self._by_name: dict[str, int] | None = None
        self._inl_cache: dict[int, tuple[int, str, str]] = {}

    # -- header and sub-tables ------------------------------------------------

    def _parse_header(self) -> None:
        d = self._data
        if len(d) < 8:
            raise BinaryError(f"{self._where}: .gopclntab is truncated ({len(d)} bytes)")
        check_magic(_U32.unpack_from(d, 0)[0], self._where)
        self.quantum, self.ptr_size = d[6], d[7]
        if self.ptr_size not in (4, 8) or self.quantum not in (1, 2, 4):
            raise BinaryError(f"{self._where}: bad pclntab header "
                              f"(ptrsize={self.ptr_size}, minLC={self.quantum})")
        fmt = "<" + ("Q" if self.ptr_size == 8 else "I") * 8
        (self.nfunc, self.nfiles, _text, name_off, cu_off, file_off, pc_off,
         func_off) = struct.unpack_from(fmt, d, 8)
        if not 0 < func_off < len(d):
            raise BinaryError(f"{self._where}: pclntab header offsets out of range")
        self._funcnametab = self._base + name_off   # offsets into self._buf
        self._cutab = d[cu_off:file_off].cast("I") if (file_off - cu_off) % 4 == 0 else None
        self._filetab = self._base + file_off
        self._pctab = d[pc_off:func_off]
        self._pclntable = d[func_off:]
        nftab = 2 * (self.nfunc + 1)
        ftab = self._pclntable[: 4 * nftab].cast("I")
        self._entries = ftab[0::2]   # entryoff per function, plus the end sentinel
        self._funcoffs = ftab[1::2]

    def _cstring(self, start: int, off: int) -> str:
        """NUL-terminated string at buf[start + off] (funcnametab, filetab)."""
        at = start + off
        end = self._buf.find(b"\0", at)
        if end < 0:
            raise BinaryError(f"{self._where}: unterminated string in pclntab at {at:#x}")
        return bytes(self._buf[at:end]).decode("utf-8", "replace")

    def funcname_at(self, name_off: int) -> str:
        return self._cstring(self._funcnametab, name_off)

    def _file(self, cu_offset: int, fileno: int) -> str:
        if self._cutab is None or fileno < 0:
            return "?"
        i = cu_offset + fileno
        if i >= len(self._cutab):
            return "?"
        off = self._cutab[i]
        if off == 0xFFFFFFFF:
            return "?"
        return self._cstring(self._filetab, off)

    # -- functions -------------------------------------------------------------

    def __len__(self) -> int:
        return self.nfunc

    def _func_at(self, i: int) -> Func:
        fn = self._funcs.get(i)
        if fn is None:
            fn = self._decode_func(i)
            self._funcs[i] = fn
        return fn

    def _decode_func(self, i: int) -> Func:
        off = self._funcoffs[i]
        (entry_off, name_off, _args, _defer, pcsp, pcfile, pcln, npcdata, cu_off,
         start_line, fid, flag, _pad, nfuncdata) = _FUNC.unpack_from(self._pclntable, off)
        entry = self.text_start + entry_off
        name = self.funcname_at(name_off)
        raw = _RawFunc(pcsp, pcfile, pcln, npcdata, cu_off, nfuncdata, off + _FUNC.size)
        self._raw[off] = raw
        file = self._file(cu_off, self._value(pcfile, 0))
        end = self.text_start + self._entries[i + 1]
        return Func(name, entry, end, func_id_name(name, fid), flag, start_line, file, off)

    def func_for_pc(self, pc: int) -> Func | None:
        rel = pc - self.text_start
        if rel < 0 or rel >= self._entries[self.nfunc]:
            return None
        i = bisect_right(self._entries, rel, 0, self.nfunc) - 1
        return self._func_at(i) if i >= 0 else None

    def func_by_name(self, name: str) -> Func | None:
        if self._by_name is None:
            self._by_name = self._build_name_index()
        i = self._by_name.get(name)
        return None if i is None else self._func_at(i)

    def names(self) -> set[str]:
        """Every function name in the table (cheap: no Func is decoded)."""
        if self._by_name is None:
            self._by_name = self._build_name_index()
        return set(self._by_name)

    def _build_name_index(self) -> dict[str, int]:
        # Read nameOff straight from each _func: decoding full Funcs for 100k
        # functions would cost a second; this costs a few tens of ms.
        buf, start, index = self._buf, self._funcnametab, {}
        name_off = struct.Struct("<i").unpack_from
        table, funcoffs = self._pclntable, self._funcoffs
        for i in range(self.nfunc):
            at = start + name_off(table, funcoffs[i] + 4)[0]
            name = bytes(buf[at:buf.find(b"\0", at)]).decode("utf-8", "replace")
            index.setdefault(name, i)
        return index

    def funcs(self) -> Iterator[Func]:
        for i in range(self.nfunc):
            yield self._func_at(i)

    # -- pcvalue tables --------------------------------------------------------

    def _raw_of(self, fn: Func) -> _RawFunc:
        raw = self._raw.get(fn._off)
        if raw is None:  # a Func built elsewhere: find ours by its entry
            own = self.func_for_pc(fn.entry)
            if own is None or own.entry != fn.entry:
                raise BinaryError(f"{self._where}: no function at {fn.entry:#x} ({fn.name})")
            raw = self._raw[own._off]
        return raw

    def _decode_table(self, off: int) -> tuple[list[int], list[int]]:
        """A pcvalue table as (end pc offsets from entry, values), for bisect.

        Encoding (runtime.step): pairs of zig-zag varint value delta and varint
        pc delta (in units of minLC); a zero value delta ends it, except first."""
        p, tab, q = off, self._pctab, self.quantum
        ends, vals = [], []
        pc, val, first = 0, -1, True
        while True:
            uv, p = uleb128(tab, p)
            if uv == 0 and not first:
                break
            first = False
            val += -(uv >> 1) - 1 if uv & 1 else uv >> 1
            pcd, p = uleb128(tab, p)
            pc += pcd * q
            ends.append(pc)
            vals.append(val)
        return ends, vals

    def _value(self, off: int, rel_pc: int) -> int:
        """Value of the pcvalue table at pctab offset `off` for pc = entry + rel_pc."""
        if off == 0:
            return -1
        tab = self._tables.get(off)
        if tab is None:
            tab = self._decode_table(off)
            self._tables[off] = tab
        ends, vals = tab
        i = bisect_right(ends, rel_pc)
        return vals[i] if i < len(vals) else -1

    def sp_delta(self, fn: Func, pc: int) -> int | None:
        if not fn.entry <= pc < fn.end:
            return None
        v = self._value(self._raw_of(fn).pcsp, pc - fn.entry)
        # -1: no pcsp table, or pc in the int3 padding past the table's end.
        return None if v == -1 else v

    def file_line(self, fn: Func, pc: int) -> tuple[str, int]:
        raw, rel = self._raw_of(fn), pc - fn.entry
        fileno, line = self._value(raw.pcfile, rel), self._value(raw.pcln, rel)
        if fileno == -1 or line == -1:
            return "?", 0
        return self._file(raw.cu_offset, fileno), line

    def pcdata(self, fn: Func, table: int, pc: int) -> int:
        raw = self._raw_of(fn)
        if table >= raw.npcdata:
            return -1
        off = _U32.unpack_from(self._pclntable, raw.tables_off + 4 * table)[0]
        return self._value(off, pc - fn.entry)

    def funcdata_addr(self, fn: Func, index: int) -> int | None:
        """Address of FUNCDATA `index` of fn (in go:func.*), None if absent."""
        raw = self._raw_of(fn)
        if index >= raw.nfuncdata or self.gofunc is None:
            return None
        off = _U32.unpack_from(self._pclntable, raw.tables_off + 4 * (raw.npcdata + index))[0]
        return None if off == 0xFFFFFFFF else self.gofunc + off

    # -- inline tree -------------------------------------------------------------

    def _inlined_call(self, tree: int, index: int) -> tuple[int, str, str]:
        """(parentPc, name, func_id) of inline tree entry `index` at address tree."""
        key = tree + index * _INLINED_CALL.size
        hit = self._inl_cache.get(key)
        if hit is None:
            raw = self._read_static(key, _INLINED_CALL.size)
            fid, name_off, parent_pc, _start = _INLINED_CALL.unpack(raw)
            name = self.funcname_at(name_off)
            hit = (parent_pc, name, func_id_name(name, fid))
            self._inl_cache[key] = hit
        return hit

    def frames_at(self, fn: Func, pc: int) -> list[SourceFrame]:
        """Logical frames at pc, innermost first, as runtime's inlineUnwinder walks
        them: PCDATA_InlTreeIndex gives the inlined call at pc; its parentPc is a
        pc in fn whose position is the call site; repeat until the index is -1.

        Wrapper frames are kept (func_id "wrapper"): Go's printed tracebacks hide
        them, runtime.CallersFrames mostly does not; the caller chooses."""
        frames = []
        tree = self.funcdata_addr(fn, FUNCDATA_INL_TREE) if self._read_static else None
        index = self.pcdata(fn, PCDATA_INL_TREE_INDEX, pc) if tree is not None else -1
        while index >= 0:
            parent_pc, name, fid = self._inlined_call(tree, index)
            file, line = self.file_line(fn, pc)
            frames.append(SourceFrame(name, file, line, True, fid))
            pc = fn.entry + parent_pc
            index = self.pcdata(fn, PCDATA_INL_TREE_INDEX, pc)
            if len(frames) > 10000:
                raise BinaryError(f"{self._where}: inline tree of {fn.name} loops")
        file, line = self.file_line(fn, pc)
        frames.append(SourceFrame(fn.name, file, line, False, fn.func_id))
        return frames


# -- where functions were inlined (additions for inlined-frame captures) --------

def _inline_sites(tab: PcLnTab) -> dict[str, list[int]]:
    """Inlined function name -> indices of the functions whose inline tree
    names it, in one pass over every function's inline tree.

    A tree's length is not stored: the largest index its PCDATA_InlTreeIndex
    table takes bounds every entry a pc can reach (a parent is reached
    through a pc of the same table too)."""
    if tab._read_static is None or tab.gofunc is None:
        return {}
    table, funcoffs, hdr = tab._pclntable, tab._funcoffs, _FUNC
    u32 = _U32.unpack_from
    names: dict[int, str] = {}
    out: dict[str, list[int]] = {}
    for i in range(tab.nfunc):
        off = funcoffs[i]
        f = hdr.unpack_from(table, off)
        npcdata, nfuncdata = f[7], f[13]
        if npcdata <= PCDATA_INL_TREE_INDEX or nfuncdata <= FUNCDATA_INL_TREE:
            continue
        tables = off + hdr.size
        tree_off = u32(table, tables + 4 * (npcdata + FUNCDATA_INL_TREE))[0]
        pc_off = u32(table, tables + 4 * PCDATA_INL_TREE_INDEX)[0]
        if tree_off == 0xFFFFFFFF or pc_off == 0:
            continue
        vals = tab._tables.get(pc_off)
        if vals is None:
            vals = tab._tables[pc_off] = tab._decode_table(pc_off)
        n = max(vals[1], default=-1) + 1
        if n <= 0:
            continue
        try:
            raw = tab._read_static(tab.gofunc + tree_off, n * _INLINED_CALL.size)
        except BinaryError:
            continue
        seen = set()
        for _fid, name_off, _parent, _line in _INLINED_CALL.iter_unpack(raw):
            if name_off in seen:
                continue
            seen.add(name_off)
            name = names.get(name_off)
            if name is None:
                name = names[name_off] = tab.funcname_at(name_off)
            out.setdefault(name, []).append(i)
    return out


def _sites(tab: PcLnTab) -> dict[str, list[int]]:
    sites = getattr(tab, "_inline_sites", None)
    if sites is None:
        sites = tab._inline_sites = _inline_sites(tab)
    return sites


def inlined_into(tab: PcLnTab, name: str) -> list[Func]:
    """The functions (physical, out of line) into which `name` was inlined,
    at any nesting depth. The first call scans every inline tree (cached on
    the table: about a second on cmd/compile); later calls are lookups."""
    return [tab._func_at(i) for i in _sites(tab).get(name, ())]


def inlined_names(tab: PcLnTab) -> list[str]:
    """Every function inlined somewhere (some have no out-of-line copy)."""
    return list(_sites(tab))


# -- argument metadata for tracebacks (additions for spill-slot values) ---------

# internal/abi/symtab.go, the same in Go 1.21-1.27: the layout of a function's
# arguments as its traceback prints them, which of their register spill slots
# hold a stored value, and at which pcs that changes (see argspill.py).
PCDATA_ARG_LIVE_INDEX = 3
FUNCDATA_ARG_INFO = 5
FUNCDATA_ARG_LIVE_INFO = 6


def funcdata_bytes(tab: PcLnTab, fn: Func, index: int, size: int) -> bytes | None:
    """Up to `size` bytes of FUNCDATA `index` of fn; None when fn has none (or
    its bytes can't be reached: no go:func.* address, no static reader).
    Fewer bytes when the data sits at the end of its section."""
    if tab._read_static is None:
        return None
    addr = tab.funcdata_addr(fn, index)
    if addr is None:
        return None
    while size > 0:
        try:
            return tab._read_static(addr, size)
        except BinaryError:
            size //= 2
    return None


def pcdata_ranges(tab: PcLnTab, fn: Func, table: int) -> list[tuple[int, int, int]]:
    """PCDATA table `table` of fn as [(lo, hi, value)] with absolute pcs;
    empty when fn has no such table (the runtime reads -1 there)."""
    raw = tab._raw_of(fn)
    if table >= raw.npcdata:
        return []
    off = _U32.unpack_from(tab._pclntable, raw.tables_off + 4 * table)[0]
    if off == 0:
        return []
    ends, vals = tab._tables.get(off) or tab._decode_table(off)
    out, lo = [], fn.entry
    for end, v in zip(ends, vals):
        out.append((lo, fn.entry + end, v))
        lo = fn.entry + end
    return out
