"""A Go ELF executable, read from the file only (never from a live process).

What it gives: the build id (the cache key), build info, the pclntab and static
bytes at virtual addresses. Stripped binaries (-ldflags="-s -w") keep the
pclntab, so all of that still works; only `symbol()` and DWARF go away. When
even the section headers are gone, the pclntab and build info are found by
their magic numbers and moduledata by its pointer to the pclntab.
"""
from __future__ import annotations

import errno
import mmap
import os
import re
import struct
from functools import cached_property

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from . import buildinfo
from .errors import BinaryError, NotGoBinaryError, UnsupportedGoBinary
from .pclntab import GO120_MAGIC, KNOWN_MAGICS, PcLnTab, check_magic

_ARCH = {"EM_X86_64": "amd64", "EM_AARCH64": "arm64", "EM_386": "386", "EM_ARM": "arm",
         "EM_RISCV": "riscv64", "EM_PPC64": "ppc64le", "EM_S390": "s390x"}
_PT_LOAD, _PF_W = "PT_LOAD", 0x2
# moduledata starts: pcHeader, then 6 slices (funcnametab, cutab, filetab, pctab,
# pclntable, ftab), findfunctab, minpc, maxpc, text. Stable since Go 1.18.
_MD_FUNCNAMETAB, _MD_PCLNTABLE, _MD_TEXT = 1, 13, 22
# The Go releases Ex-Ray reads (the version matrix tests each of them).
OLDEST_GO, NEWEST_GO = (1, 21), (1, 27)


_PROC_EXE = re.compile(r"/proc/(\d+)/exe\Z")


def _open_failed(path: str, e: OSError) -> str:
    """Why a binary can't be opened, in the terms of what the user asked for:
    a process's /proc/PID/exe fails when the process exited, or when this
    user may not trace it (the kernel's ptrace access check guards the link)."""
    m = _PROC_EXE.match(path)
    if m is None:
        return f"{path}: cannot open the binary: {e.strerror}; check the path and read permission"
    pid = int(m.group(1))
    if e.errno in (errno.ENOENT, errno.ESRCH) or not os.path.exists(f"/proc/{pid}"):
        return (f"{path}: the process is not running (it exited, or never existed); "
                f"snapshot a running process (pgrep -a NAME lists them)")
    if e.errno in (errno.EACCES, errno.EPERM):
        try:
            owner = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            owner = None
        me = os.geteuid()
        whose = ("root's" if owner == 0 else f"uid {owner}'s") if owner is not None else "its"
        if me != 0:
            return (f"{path}: pid {pid} is {whose} process and this is uid {me}: reading a process takes "
                    f"ptrace permission over it, which the kernel gives root (or the process's "
                    f"own user, when kernel.yama.ptrace_scope allows): run exray as root, e.g. "
                    f"with sudo")
        return (f"{path}: the kernel refused to open the binary ({e.strerror}) even to root: "
                f"ptrace is restricted here (kernel.yama.ptrace_scope 3, a security module, "
                f"or another PID namespace)")
    return f"{path}: cannot open the process's binary: {e.strerror}"


class GoBinary:
    def __init__(self, path: str, fileobj, elf: ELFFile, data: mmap.mmap):
        self.path = path
        self._file, self.elf, self._data = fileobj, elf, data
        self._sections = {s.name: s for s in elf.iter_sections()} if elf.num_sections() else {}
        self._loads = [s for s in elf.iter_segments() if s["p_type"] == _PT_LOAD]
        self.arch = _ARCH.get(elf["e_machine"], str(elf["e_machine"]))
        self.ptr_size = 8 if elf.elfclass == 64 else 4
        self._check_toolchain()
        self._pcln_off, self._pcln_size = self._locate_pclntab()
        # Fail at open, not at the first stack: an old binary is a user error.
        check_magic(struct.unpack_from("<I", data, self._pcln_off)[0], path)

    @classmethod
    def open(cls, path: str) -> "GoBinary":
        path = str(path)
        try:
            f = open(path, "rb")
        except OSError as e:
            raise BinaryError(_open_failed(path, e)) from e
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            if data[:4] != b"\x7fELF":
                raise BinaryError(f"{path}: not an ELF file; point Ex-Ray at a Linux Go "
                                  "executable (not a script or wrapper)")
            return cls(path, f, ELFFile(f), data)
        except (ELFError, ValueError, struct.error) as e:
            f.close()
            raise BinaryError(f"{path}: unreadable ELF ({e}); is the file truncated?") from e
        except BaseException:
            f.close()
            raise

    def close(self) -> None:
        for closer in (getattr(self, "_data", None), getattr(self, "_file", None)):
            if closer is not None:
                try:
                    closer.close()
                except (BufferError, ValueError):
                    pass  # memoryviews into the mmap are still alive; GC frees it

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- which toolchain built it ---------------------------------------------

    def _check_toolchain(self) -> None:
        """Refuse, by name, what Ex-Ray can't read: gccgo output and releases
        before OLDEST_GO (Go 1.20 shares 1.21's pclntab magic, so the magic
        alone can't tell)."""
        if ".go_export" in self._sections or self._needs_libgo():
            raise UnsupportedGoBinary(
                f"{self.path}: built by gccgo (GCC's Go front end, runtime in libgo), which has "
                "no gc symbol table; Ex-Ray reads binaries of the gc toolchain: build it with "
                f"`go build` (Go {_release(OLDEST_GO)} to {_release(NEWEST_GO)})")
        version = self.go_version
        release = go_release(version)
        if release is not None and release < OLDEST_GO:
            raise UnsupportedGoBinary(
                f"{self.path}: built by {version}; Ex-Ray reads Go {_release(OLDEST_GO)} to "
                f"{_release(NEWEST_GO)}: rebuild it with Go {_release(OLDEST_GO)} or newer")

    def _needs_libgo(self) -> bool:
        dynamic = self._sections.get(".dynamic")
        if dynamic is None or not hasattr(dynamic, "iter_tags"):
            return False
        return any(t.entry.d_tag == "DT_NEEDED" and t.needed.startswith("libgo.so")
                   for t in dynamic.iter_tags())

    @property
    def build_description(self) -> str:
        """What a person needs to know about how it was built: "go1.24.11, PIE, cgo"."""
        settings = self.build_info.settings
        parts = [self.go_version or "unknown Go release", "PIE" if self.is_pie else "exe"]
        if settings.get("CGO_ENABLED") == "1":
            parts.append("cgo")
        if settings.get("-race") == "true":
            parts.append("race")
        if not self.has_dwarf:
            parts.append("stripped")   # its DWARF may still be found elsewhere
        return ", ".join(parts)

    # -- locating .gopclntab -------------------------------------------------

    def _locate_pclntab(self) -> tuple[int, int]:
        # PIE builds before Go 1.26 put it in relro: ".data.rel.ro.gopclntab".
        sec = self._sections.get(".gopclntab") or next(
            (s for name, s in self._sections.items() if name.endswith(".gopclntab")), None)
        if sec is not None:
            return sec["sh_offset"], sec["sh_size"]
        # With section headers, a missing .gopclntab means "not Go"; scan the file
        # only when the headers were stripped away (sstrip and friends).
        off = self._scan_pcheader() if not self._sections else -1
        if off < 0:
            raise NotGoBinaryError(
                f"{self.path}: no Go symbol table (.gopclntab) found: this ELF was not "
                "built by the Go toolchain (or was built by gccgo); Ex-Ray needs a gc-built "
                "Go binary")
        return off, self._segment_end(off) - off

    def _scan_pcheader(self) -> int:
        """File offset of a plausible runtime.pcHeader, -1 if none.

        The magic (little-endian) is followed by two zero pad bytes, minLC and
        ptrSize; the linker aligns the table to pointer size."""
        for magic in (GO120_MAGIC, *KNOWN_MAGICS):  # old ones: to say "too old"
            needle = struct.pack("<I", magic) + b"\0\0"
            at = self._data.find(needle)
            while at >= 0:
                if at % self.ptr_size == 0 and self._data[at + 6] in (1, 2, 4) \
                        and self._data[at + 7] == self.ptr_size:
                    return at
                at = self._data.find(needle, at + 1)
        return -1

    def _segment_end(self, off: int) -> int:
        for seg in self._loads:
            if seg["p_offset"] <= off < seg["p_offset"] + seg["p_filesz"]:
                return seg["p_offset"] + seg["p_filesz"]
        return len(self._data)

    # -- address translation ---------------------------------------------------

    @property
    def is_pie(self) -> bool:
        """Position independent: the kernel loads it at a random base (ET_DYN)."""
        return self.elf["e_type"] == "ET_DYN"

    def segments(self) -> list[tuple[int, int]]:
        """(file offset, link-time address) of each loaded segment."""
        return [(seg["p_offset"], seg["p_vaddr"]) for seg in self._loads]

    def _file_offset(self, addr: int, size: int) -> int | None:
        for seg in self._loads:
            start = seg["p_vaddr"]
            if start <= addr and addr + size <= start + seg["p_filesz"]:
                return seg["p_offset"] + addr - start
        return None

    def _vaddr(self, off: int) -> int | None:
        for seg in self._loads:
            if seg["p_offset"] <= off < seg["p_offset"] + seg["p_filesz"]:
                return seg["p_vaddr"] + off - seg["p_offset"]
        return None

    def read_static(self, addr: int, size: int) -> bytes:
        """Bytes at virtual address addr as the loader maps them from the file."""
        off = self._file_offset(addr, size)
        if off is None:
            raise BinaryError(
                f"{self.path}: {size} bytes at {addr:#x} are not file-backed (bss, heap or "
                "outside the binary); read them from the live process instead")
        return self._data[off:off + size]

    # -- moduledata: text start and gofunc, as the runtime sees them ----------

    @cached_property
    def _moduledata(self) -> list[int] | None:
        """Words of runtime.firstmoduledata, found as the pointer to pcHeader
        whose funcnametab slice points into the same pclntab."""
        pcheader = self._vaddr(self._pcln_off)
        if pcheader is None:
            return None
        fmt = "<Q" if self.ptr_size == 8 else "<I"
        needle, ps = struct.pack(fmt, pcheader), self.ptr_size
        name_off = struct.unpack_from(fmt, self._data, self._pcln_off + 8 + 3 * ps)[0]
        for seg in self._loads:
            if not seg["p_flags"] & _PF_W:
                continue
            start, end = seg["p_offset"], seg["p_offset"] + seg["p_filesz"]
            at = self._data.find(needle, start, end)
            while at >= 0:
                if (at - start) % ps == 0:
                    words = self._words(at, 64)
                    if words[_MD_FUNCNAMETAB] == pcheader + name_off:
                        return words
                at = self._data.find(needle, at + 1, end)
        return None

    def _words(self, off: int, n: int) -> list[int]:
        n = min(n, (len(self._data) - off) // self.ptr_size)
        fmt = "<%d%s" % (n, "Q" if self.ptr_size == 8 else "I")
        return list(struct.unpack_from(fmt, self._data, off))

    @cached_property
    def text_start(self) -> int:
        md = self._moduledata
        if md is not None:
            return md[_MD_TEXT]
        sym = self.symbol("runtime.text")
        if sym is not None:
            return sym[0]
        sec = self._sections.get(".text")
        if sec is not None:
            return sec["sh_addr"]
        raise BinaryError(f"{self.path}: cannot find the start of Go text (no moduledata, "
                          "runtime.text or .text); the binary looks damaged")

    @cached_property
    def gofunc(self) -> int | None:
        """moduledata.gofunc (go:func.*): base of FUNCDATA offsets.

        In every moduledata layout from Go 1.20 on, gofunc is the word right
        after rodata (1.27 moved both, together). rodata's value also appears
        earlier as `types` (types start rodata), so the last occurrence is the
        field. From moduledata first: parsing .symtab costs ~20 ms on a big
        binary."""
        md, rodata = self._moduledata, self._rodata_start()
        if md is not None and rodata is not None and rodata in md[_MD_TEXT:-1]:
            last = len(md) - 1 - md[::-1].index(rodata)
            if last + 1 < len(md):
                return md[last + 1]
        sym = self.symbol("go:func.*")
        return None if sym is None else sym[0]

    def _rodata_start(self) -> int | None:
        """Where the linker put rodata: the .rodata section, or without section
        headers the read-only, non-executable PT_LOAD segment that starts it."""
        sec = self._sections.get(".rodata")
        if sec is not None:
            return sec["sh_addr"]
        for seg in self._loads:
            if seg["p_flags"] & 0x7 == 0x4:   # R only
                return seg["p_vaddr"]
        return None

    @cached_property
    def rodata_span(self) -> tuple[int, int] | None:
        """[lo, hi) link-time addresses of the read-only, non-executable
        segment that holds rodata (string literals among it): bytes there
        never change while the process runs, so they can be read from the file."""
        start = self._rodata_start()
        for seg in self._loads:
            lo = seg["p_vaddr"]
            if seg["p_flags"] & 0x7 == 0x4 and start is not None and lo <= start < lo + seg["p_filesz"]:
                return lo, lo + seg["p_filesz"]
        return None

    @cached_property
    def pclntab(self) -> PcLnTab:
        return PcLnTab(self._data, self.text_start, self._pcln_off, self._pcln_size,
                       read_static=self.read_static, gofunc=self.gofunc, where=self.path)

    # -- symbols and debug info -------------------------------------------------

    @cached_property
    def _symtab(self) -> dict[str, tuple[int, int]]:
        sec = self._sections.get(".symtab")
        if sec is None or sec["sh_type"] != "SHT_SYMTAB":
            return {}
        strtab = self.elf.get_section(sec["sh_link"])
        stroff = strtab["sh_offset"]
        ent = struct.Struct("<IBBHQQ" if self.ptr_size == 8 else "<IIIBBH")
        data, table = self._data, {}
        start, end = sec["sh_offset"], sec["sh_offset"] + sec["sh_size"]
        for rec in ent.iter_unpack(data[start:end]):
            if self.ptr_size == 8:
                name, value, size = rec[0], rec[4], rec[5]
            else:
                name, value, size = rec[0], rec[1], rec[2]
            if name:
                at = stroff + name
                key = data[at:data.find(b"\0", at)].decode("utf-8", "replace")
                table.setdefault(key, (value, size))
        return table

    def symbol(self, name: str) -> tuple[int, int] | None:
        """(address, size) from the ELF .symtab; None if absent or stripped."""
        return self._symtab.get(name)

    @property
    def has_dwarf(self) -> bool:
        return ".debug_info" in self._sections or ".zdebug_info" in self._sections

    # -- identity -------------------------------------------------------------

    @cached_property
    def build_id(self) -> str:
        notes = dict(self._notes())
        if ("GNU", 3) in notes:
            return notes[("GNU", 3)].hex()
        if ("Go", 4) in notes:
            return notes[("Go", 4)].decode("utf-8", "replace")
        # No note: the file's identity is the best cache key we have.
        import hashlib
        return "sha256:" + hashlib.sha256(self._data[:]).hexdigest()

    def _notes(self):
        """((owner, type), desc) of every ELF note, from sections or PT_NOTE."""
        areas = [(s["sh_offset"], s["sh_size"]) for s in self._sections.values()
                 if s["sh_type"] == "SHT_NOTE"]
        if not areas:
            areas = [(g["p_offset"], g["p_filesz"]) for g in self.elf.iter_segments()
                     if g["p_type"] == "PT_NOTE"]
            # Go's PT_NOTE covers only the Go note; the GNU build-id note sits
            # in the headers page without a segment of its own: find it there.
            at = self._data.find(b"\x03\x00\x00\x00GNU\x00", 0, 1 << 16)
            if at >= 8 and self._data[at - 8:at - 4] == b"\x04\x00\x00\x00":
                areas.append((at - 8, 16 + self._data[at - 4]))
        for off, size in areas:
            p, end = off, off + size
            while p + 12 <= end:
                namesz, descsz, ntype = struct.unpack_from("<III", self._data, p)
                p += 12
                owner = self._data[p:p + namesz].rstrip(b"\0").decode("ascii", "replace")
                p += (namesz + 3) & ~3
                yield (owner, ntype), self._data[p:p + descsz]
                p += (descsz + 3) & ~3

    @cached_property
    def build_info(self) -> buildinfo.BuildInfo:
        sec = self._sections.get(".go.buildinfo")
        if sec is not None:
            at = buildinfo.find_blob(self._data, sec["sh_offset"],
                                     sec["sh_offset"] + sec["sh_size"])
        else:
            at = buildinfo.find_blob(self._data)
        if at < 0:
            return buildinfo.BuildInfo()
        return buildinfo.parse(self._data, at, self.path)

    @property
    def go_version(self) -> str | None:
        return self.build_info.go_version

    @property
    def main_module(self) -> str | None:
        return self.build_info.main_module

    @property
    def vcs_revision(self) -> str | None:
        return self.build_info.vcs_revision

    @property
    def vcs_modified(self) -> bool | None:
        return self.build_info.vcs_modified

    def __repr__(self) -> str:
        return f"GoBinary({self.path!r}, {self.go_version}, {self.arch})"


def go_release(version: str | None) -> tuple[int, int] | None:
    """(1, 21) from "go1.21.13", "go1.22rc1" or "devel go1.23-abc"; None if unknown."""
    m = re.search(r"go(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def _release(r: tuple[int, int]) -> str:
    return f"{r[0]}.{r[1]}"
