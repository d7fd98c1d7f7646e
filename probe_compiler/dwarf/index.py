"""The name index: one fast pass over .debug_info, then a small file on disk.

pyelftools parses every attribute of every DIE through `construct`, which is
too slow for cmd/compile (585k DIEs). The index only needs the top-level DIEs of
each CU (functions, globals, constants, types), so this module walks the raw
bytes itself: it decodes the attributes of depth-1 DIEs and skips the bytes of
everything nested under them. The result is cached on disk keyed by build id,
so a warm load is one `marshal.load` and never touches the ELF file.
"""
from __future__ import annotations

import io
import marshal
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from elftools.dwarf.dwarfinfo import DebugSectionDescriptor, DWARFInfo, DwarfConfig
from elftools.elf.elffile import ELFFile

from probe_compiler.errors import BinaryError, DebugInfoMissing
from probe_compiler.leb128 import sleb128, uleb128

INDEX_VERSION = 4

# DWARF tags and attributes the index reads (DWARF 5, section 7.5).
TAG_COMPILE_UNIT = 0x11
TAG_SUBPROGRAM = 0x2E
TAG_VARIABLE = 0x34
TAG_CONSTANT = 0x27
AT_NAME = 0x03
AT_LOCATION = 0x02
AT_LOW_PC = 0x11
AT_HIGH_PC = 0x12
AT_CONST_VALUE = 0x1C
AT_INLINE = 0x20
AT_ABSTRACT_ORIGIN = 0x31
AT_ADDR_BASE = 0x73
AT_LANGUAGE = 0x13
DW_LANG_GO = 0x16
AT_GO_KIND = 0x2900
AT_GO_RUNTIME_TYPE = 0x2904
DW_OP_ADDR = 0x03

# Forms of a fixed size in a 32-bit DWARF unit with 8-byte addresses.
_FIXED = {0x01: 8, 0x05: 2, 0x06: 4, 0x07: 8, 0x0B: 1, 0x0C: 1, 0x0E: 4, 0x10: 4, 0x11: 1,
          0x12: 2, 0x13: 4, 0x14: 8, 0x17: 4, 0x19: 0, 0x1C: 4, 0x1D: 4, 0x1E: 16, 0x1F: 4,
          0x20: 8, 0x21: 0, 0x25: 1, 0x26: 2, 0x27: 3, 0x28: 4, 0x29: 1, 0x2A: 2, 0x2B: 3,
          0x2C: 4}
_ULEB_FORMS = {0x0F, 0x15, 0x1A, 0x1B, 0x22, 0x23}
_FORM_STRING, _FORM_SDATA, _FORM_IMPLICIT = 0x08, 0x0D, 0x21
_BLOCKS = {0x0A: 1, 0x03: 2, 0x04: 4}   # block1/2/4: length prefix size
_ULEB_BLOCKS = {0x09, 0x18}               # block, exprloc


@dataclass
class NameIndex:
    """Everything a warm load needs: plain dicts and lists, marshal-friendly."""
    build_id: str
    cu_offsets: list[int] = field(default_factory=list)   # sorted
    cu_names: list[str] = field(default_factory=list)
    functions: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> (die, lo, hi)
    globals: dict[str, tuple[int, int]] = field(default_factory=dict)         # name -> (die, addr)
    constants: dict[str, int] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)                       # name -> die
    runtime_types: dict[int, int] = field(default_factory=dict)               # rtype off -> die

    def to_blob(self) -> bytes:
        return marshal.dumps((INDEX_VERSION, self.build_id, self.cu_offsets, self.cu_names,
                              self.functions, self.globals, self.constants, self.types,
                              self.runtime_types))

    @staticmethod
    def from_blob(blob: bytes) -> "NameIndex | None":
        try:
            t = marshal.loads(blob)
        except (EOFError, ValueError, TypeError):
            return None
        if not isinstance(t, tuple) or len(t) != 9 or t[0] != INDEX_VERSION:
            return None
        return NameIndex(*t[1:])


def cache_path(build_id: str, cache_dir: str | None) -> Path:
    base = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "exray" / "dwarf"
    safe = "".join(c for c in build_id if c.isalnum() or c in "-_.") or "unknown"
    return base / f"{safe}.idx"


def load_cached(build_id: str, cache_dir: str | None) -> NameIndex | None:
    path = cache_path(build_id, cache_dir)
    try:
        idx = NameIndex.from_blob(path.read_bytes())
    except OSError:
        return None
    return idx if idx is not None and idx.build_id == build_id else None


def store(idx: NameIndex, cache_dir: str | None) -> None:
    """Best effort: a read-only cache dir only costs a cold load next time."""
    path = cache_path(idx.build_id, cache_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(idx.to_blob())
        os.replace(tmp, path)
    except OSError:
        pass


def build_index(elf_path: str, build_id: str) -> NameIndex:
    try:
        secs = DebugSections(elf_path)
    except OSError:
        raise
    except Exception as e:  # pyelftools raises several types on garbage
        raise BinaryError(f"{elf_path}: not a readable ELF file ({e})") from e
    with secs:
        info = secs.data(".debug_info")
        if not info:
            raise DebugInfoMissing(
                f"{elf_path}: no .debug_info section; rebuild without -ldflags=-w / -s "
                "to capture variables (stacks still work from pclntab)")
        return _Scanner(info, secs.data(".debug_abbrev"), secs.data(".debug_addr"),
                        build_id).run()


# ---- the debug sections, each decompressed when first read --------------------------

_SHF_COMPRESSED = 0x800
_ELFCOMPRESS_ZLIB = 1

class DebugSections:
    """The .debug_* sections of one ELF file, read (and decompressed: SHF_COMPRESSED
    zlib, or GNU .zdebug_*) only when asked, and only as far as asked.

    `data(name)` is the whole section; `prefix(name, end)` is at least its
    first `end` bytes (fewer only at the section's end), inflating more of a
    compressed section only when a read goes past what is already there."""

    def __init__(self, elf_path: str):
        self.path = elf_path
        self._file = open(elf_path, "rb")
        try:
            self._elf = ELFFile(self._file)
            self._headers = {}
            for sec in self._elf.iter_sections():
                name = sec.name
                if name.startswith(".zdebug_"):
                    name = "." + name[2:]
                if name.startswith(".debug_") and sec["sh_type"] != "SHT_NOBITS":
                    self._headers[name] = sec
        except BaseException:
            self._file.close()
            raise
        self._full: dict[str, bytes] = {}
        self._partial: dict[str, _Inflater] = {}

    def __enter__(self) -> "DebugSections":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def has(self, name: str) -> bool:
        return name in self._headers

    def data(self, name: str) -> bytes:
        """The whole section (b"" when the file has none)."""
        d = self._full.get(name)
        if d is None:
            inf = self._partial.pop(name, None)
            if inf is not None:
                d = inf.all()
            else:
                d = self._read(name, None)
            self._full[name] = d
        return d

    def prefix(self, name: str, end: int) -> bytes | bytearray:
        """At least the first `end` bytes of the section (all of it if shorter)."""
        d = self._full.get(name)
        if d is not None:
            return d
        inf = self._partial.get(name)
        if inf is None:
            got = self._read(name, end)
            if isinstance(got, bytes):   # not compressed, or not by zlib: read whole
                self._full[name] = got
                return got
            inf = self._partial[name] = got
        return inf.upto(end)

    def _read(self, name: str, end: int | None) -> "bytes | _Inflater":
        sec = self._headers.get(name)
        if sec is None:
            return b""
        self._file.seek(sec["sh_offset"])
        raw = self._file.read(sec["sh_size"])
        if sec["sh_flags"] & _SHF_COMPRESSED:
            ch_type, = struct.unpack_from("<I", raw, 0)   # Elf64_Chdr: type, reserved, size, align
            size, = struct.unpack_from("<Q", raw, 8)
            if ch_type != _ELFCOMPRESS_ZLIB or self._elf.elfclass != 64:
                return sec.data()   # pyelftools knows the rest (or says why not)
            inf = _Inflater(raw, 24, size)
        elif sec.name.startswith(".zdebug_") and raw[:4] == b"ZLIB":
            inf = _Inflater(raw, 12, struct.unpack_from(">Q", raw, 4)[0])
        else:
            return raw
        return inf if end is not None else inf.all()

    def _size(self, sec) -> int:
        """Inflated size: pyelftools knows SHF_COMPRESSED; a GNU .zdebug section
        says it big-endian after its "ZLIB" magic."""
        if sec.name.startswith(".zdebug_"):
            self._file.seek(sec["sh_offset"])
            head = self._file.read(12)
            if head[:4] == b"ZLIB":
                return struct.unpack_from(">Q", head, 4)[0]
        return sec.data_size if hasattr(sec, "data_size") else sec["sh_size"]

    def dwarfinfo(self) -> DWARFInfo:
        """A pyelftools DWARFInfo whose sections are each inflated on first read.

        pyelftools' own ELFFile.get_dwarf_info inflates every section up front;
        DWARF 4's .debug_loc and .debug_ranges are 3x the size of DWARF 5's
        lists, and that made a first lookup on a DWARF 4 build 1.6x slower.
        DIEs and line tables come from pyelftools; the lists it would read
        are read by locations.ListReader, from prefix()."""
        def desc(name: str) -> DebugSectionDescriptor | None:
            sec = self._headers.get(name)
            if sec is None:
                return None
            return DebugSectionDescriptor(_LazyStream(lambda: self.data(name)), name,
                                          sec["sh_offset"], self._size(sec), sec["sh_addr"])
        elf = self._elf
        return DWARFInfo(
            config=DwarfConfig(little_endian=elf.little_endian,
                               default_address_size=elf.elfclass // 8,
                               machine_arch=elf.get_machine_arch()),
            debug_info_sec=desc(".debug_info"), debug_aranges_sec=desc(".debug_aranges"),
            debug_abbrev_sec=desc(".debug_abbrev"), debug_frame_sec=desc(".debug_frame"),
            eh_frame_sec=None, debug_str_sec=desc(".debug_str"),
            debug_loc_sec=desc(".debug_loc"), debug_ranges_sec=desc(".debug_ranges"),
            debug_line_sec=desc(".debug_line"), debug_pubtypes_sec=desc(".debug_pubtypes"),
            debug_pubnames_sec=desc(".debug_pubnames"), debug_addr_sec=desc(".debug_addr"),
            debug_str_offsets_sec=desc(".debug_str_offsets"),
            debug_line_str_sec=desc(".debug_line_str"),
            debug_loclists_sec=desc(".debug_loclists"),
            debug_rnglists_sec=desc(".debug_rnglists"), debug_sup_sec=None,
            gnu_debugaltlink_sec=None, debug_types_sec=desc(".debug_types"))




class _Inflater:
    """A zlib stream inflated on demand, in steps of at least 1 MiB."""

    STEP = 1 << 20

    def __init__(self, raw: bytes, start: int, size: int):
        self._z = zlib.decompressobj()
        self._tail = memoryview(raw)[start:]
        self.out = bytearray()
        self.size = size

    def upto(self, end: int) -> bytearray:
        end = min(end, self.size)
        while len(self.out) < end and not self._z.eof:
            want = max(end - len(self.out), self.STEP)
            chunk = self._z.decompress(self._tail, want)
            self._tail = self._z.unconsumed_tail
            if not chunk and not self._tail:
                break   # a truncated stream: the caller sees the short section
            self.out += chunk
        return self.out

    def all(self) -> bytes:
        return bytes(self.upto(self.size))


class _LazyStream:
    """A file-like view of a section that reads it only on first use."""

    def __init__(self, load):
        self._load, self._io = load, None

    def __getattr__(self, name):   # seek, read, tell...: whatever pyelftools calls
        if self._io is None:
            self._io = io.BytesIO(self._load())
        value = getattr(self._io, name)
        setattr(self, name, value)   # found directly from now on
        return value


class _Abbrev:
    __slots__ = ("tag", "children", "attrs", "fixed")

    def __init__(self, tag: int, children: bool, attrs: list[tuple[int, int, int]]):
        self.tag, self.children, self.attrs = tag, children, attrs
        # Total size when every form is fixed: skipping is then one addition.
        sizes = [_FIXED.get(form) for _, form, _ in attrs]
        self.fixed = sum(sizes) if all(s is not None for s in sizes) else None


def parse_abbrevs(data: bytes, pos: int) -> dict[int, _Abbrev]:
    table = {}
    while True:
        code, pos = uleb128(data, pos)
        if code == 0:
            return table
        tag, pos = uleb128(data, pos)
        children = data[pos] == 1
        pos += 1
        attrs = []
        while True:
            at, pos = uleb128(data, pos)
            form, pos = uleb128(data, pos)
            implicit = 0
            if form == _FORM_IMPLICIT:
                implicit, pos = sleb128(data, pos)
            if at == 0 and form == 0:
                break
            attrs.append((at, form, implicit))
        table[code] = _Abbrev(tag, children, attrs)


class _Scanner:
    """One pass over .debug_info, decoding only the depth-0/1 DIEs."""

    def __init__(self, info: bytes, abbrev: bytes, addr: bytes, build_id: str):
        self.info, self.abbrev, self.addr = info, abbrev, addr
        self.idx = NameIndex(build_id)
        self.abbrev_cache: dict[int, dict[int, _Abbrev]] = {}
        self.sub_names: dict[int, str] = {}                  # subprogram die -> name
        self.by_origin: list[tuple[int, int, int, int]] = []  # (origin, die, lo, hi)
        self.type_has_kind: set[str] = set()

    def run(self) -> NameIndex:
        pos, info = 0, self.info
        while pos + 12 <= len(info):
            unit_len, version = struct.unpack_from("<IH", info, pos)
            if unit_len >= 0xFFFFFFF0:
                raise BinaryError("64-bit DWARF is not supported (Go never writes it)")
            end = pos + 4 + unit_len
            if version >= 5:
                abbrev_off = struct.unpack_from("<I", info, pos + 8)[0]
                die_pos = pos + 12
            else:
                abbrev_off = struct.unpack_from("<I", info, pos + 6)[0]
                die_pos = pos + 11
            self._scan_cu(pos, die_pos, end, abbrev_off)
            pos = end
        # Out-of-line copies of inlinable functions name themselves only via
        # their abstract origin, which may sit in any CU: resolve them last.
        for origin, die, lo, hi in self.by_origin:
            name = self.sub_names.get(origin)
            if name and name not in self.idx.functions:
                self.idx.functions[name] = (die, lo, hi)
        return self.idx

    def _abbrevs(self, off: int) -> dict[int, _Abbrev]:
        table = self.abbrev_cache.get(off)
        if table is None:
            table = self.abbrev_cache[off] = parse_abbrevs(self.abbrev, off)
        return table

    def _scan_cu(self, cu_off: int, pos: int, end: int, abbrev_off: int) -> None:
        abbrevs = self._abbrevs(abbrev_off)
        info = self.info
        depth = 0
        addr_base = 8
        while pos < end:
            die_off = pos
            code, pos = uleb128(info, pos)
            if code == 0:
                depth -= 1
                continue
            ab = abbrevs[code]
            if depth <= 1:
                attrs, pos = self._decode(ab, pos)
                if depth == 0:
                    name = attrs.get(AT_NAME, "")
                    self.idx.cu_offsets.append(cu_off)
                    self.idx.cu_names.append(name if isinstance(name, str) else "")
                    addr_base = attrs.get(AT_ADDR_BASE, 8)
                    if attrs.get(AT_LANGUAGE, DW_LANG_GO) != DW_LANG_GO:
                        return  # C of cgo (gcc's DWARF): its names are not Go symbols
                else:
                    self._record(ab.tag, die_off, attrs, addr_base)
            elif ab.fixed is not None:
                pos += ab.fixed
            else:
                pos = self._skip(ab, pos)
            if ab.children:
                depth += 1

    def _address(self, attrs: dict, at: int, addr_base: int) -> int | None:
        v = attrs.get(at)
        if isinstance(v, tuple):  # ("x", index) from an addrx form
            return struct.unpack_from("<Q", self.addr, addr_base + 8 * v[1])[0]
        return v

    def _record(self, tag: int, die: int, attrs: dict, addr_base: int) -> None:
        name = attrs.get(AT_NAME)
        idx = self.idx
        if tag == TAG_SUBPROGRAM:
            lo = self._address(attrs, AT_LOW_PC, addr_base)
            if name:
                self.sub_names[die] = name
            if lo is None:
                return  # abstract (inlined-only) instance: no code of its own
            hi = attrs.get(AT_HIGH_PC, 0)
            hi = hi if hi > lo else lo + hi  # DWARF 4+: high_pc is often a length
            if name:
                idx.functions.setdefault(name, (die, lo, hi))
            elif AT_ABSTRACT_ORIGIN in attrs:
                self.by_origin.append((attrs[AT_ABSTRACT_ORIGIN], die, lo, hi))
        elif not name:
            return
        elif tag == TAG_VARIABLE:
            loc = attrs.get(AT_LOCATION)
            if isinstance(loc, bytes) and len(loc) == 9 and loc[0] == DW_OP_ADDR:
                idx.globals.setdefault(name, (die, int.from_bytes(loc[1:9], "little")))
        elif tag == TAG_CONSTANT:
            v = attrs.get(AT_CONST_VALUE)
            if isinstance(v, int):
                idx.constants.setdefault(name, v)
        else:
            self._record_type(name, die, attrs)

    def _record_type(self, name: str, die: int, attrs: dict) -> None:
        # Several DIEs share a Go type name (a typedef naming a struct, or an
        # alias typedef of a kinded typedef); prefer the one that carries the
        # Go kind, since that's the DIE that describes the type itself.
        kinded = AT_GO_KIND in attrs
        if name not in self.idx.types or (kinded and name not in self.type_has_kind):
            self.idx.types[name] = die
        if kinded:
            self.type_has_kind.add(name)
            rt = attrs.get(AT_GO_RUNTIME_TYPE)
            if rt:
                self.idx.runtime_types.setdefault(rt, die)

    def _decode(self, ab: _Abbrev, pos: int) -> tuple[dict, int]:
        info, out = self.info, {}
        for at, form, implicit in ab.attrs:
            if form == _FORM_STRING:
                e = info.index(b"\0", pos)
                out[at] = info[pos:e].decode("utf-8", "replace")
                pos = e + 1
            elif form in (0x0B, 0x0C, 0x11, 0x25):
                out[at] = info[pos]
                pos += 1
            elif form in (0x05, 0x12, 0x26):
                out[at] = int.from_bytes(info[pos:pos + 2], "little")
                pos += 2
            elif form in (0x06, 0x13, 0x10, 0x17, 0x28, 0x0E, 0x1F):
                out[at] = int.from_bytes(info[pos:pos + 4], "little")
                pos += 4
            elif form in (0x07, 0x14, 0x01, 0x20):
                out[at] = int.from_bytes(info[pos:pos + 8], "little")
                pos += 8
            elif form == 0x1B:
                v, pos = uleb128(info, pos)
                out[at] = ("x", v)
            elif form in (0x29, 0x2A, 0x2B, 0x2C):
                n = {0x29: 1, 0x2A: 2, 0x2B: 3, 0x2C: 4}[form]
                out[at] = ("x", int.from_bytes(info[pos:pos + n], "little"))
                pos += n
            elif form in _ULEB_FORMS:
                out[at], pos = uleb128(info, pos)
            elif form == _FORM_SDATA:
                out[at], pos = sleb128(info, pos)
            elif form in _BLOCKS:
                n = _BLOCKS[form]
                ln = int.from_bytes(info[pos:pos + n], "little")
                out[at] = info[pos + n:pos + n + ln]
                pos += n + ln
            elif form in _ULEB_BLOCKS:
                ln, pos = uleb128(info, pos)
                out[at] = info[pos:pos + ln]
                pos += ln
            elif form == _FORM_IMPLICIT:
                out[at] = implicit
            elif form in _FIXED:
                pos += _FIXED[form]
            else:
                raise BinaryError(f"DWARF form {form:#x} at .debug_info+{pos:#x} is not supported")
        return out, pos

    def _skip(self, ab: _Abbrev, pos: int) -> int:
        info = self.info
        for _, form, _ in ab.attrs:
            n = _FIXED.get(form)
            if n is not None:
                pos += n
            elif form == _FORM_STRING:
                pos = info.index(b"\0", pos) + 1
            elif form in _ULEB_FORMS or form == _FORM_SDATA:
                while info[pos] & 0x80:
                    pos += 1
                pos += 1
            elif form in _BLOCKS:
                n = _BLOCKS[form]
                pos += n + int.from_bytes(info[pos:pos + n], "little")
            elif form in _ULEB_BLOCKS:
                ln, pos = uleb128(info, pos)
                pos += ln
            else:
                raise BinaryError(f"DWARF form {form:#x} at .debug_info+{pos:#x} is not supported")
        return pos
