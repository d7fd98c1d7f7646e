"""Lazy access to a Go binary's DWARF: names from a cached index, DIEs on demand.

`DwarfInfo.load` finds the file that holds the DWARF (the binary, or its
separate debug file: see debuginfo.py), then reads (or builds and caches) a
small name index; nothing else is parsed until asked. The pyelftools
DWARFInfo (which decompresses the debug sections) is only created on the
first DIE access, and DIEs, types and functions are cached by DIE offset.
This layer never reads process memory.
"""
from __future__ import annotations

import bisect
import difflib
from typing import Iterable

from elftools.dwarf.dwarf_expr import DWARFExprParser

from probe_compiler.dwarf import index as _index
from probe_compiler.dwarf.typebuild import TypeBuilder
from probe_compiler.dwarf.variables import (FunctionBuilder, FunctionInfo, InlinedCall,
                                            Location, Piece, Variable, VarRange)
from probe_compiler.debuginfo import DwarfSource, find_dwarf, has_dwarf
from probe_compiler.errors import BinaryError, DebugInfoMissing, SymbolNotFound
from probe_compiler.types import GoType, TypeTable

__all__ = ["DwarfInfo", "FunctionInfo", "InlinedCall", "Location", "Piece", "Variable",
           "VarRange"]


class DwarfInfo:
    def __init__(self, elf_path: str, idx: _index.NameIndex, from_cache: bool):
        self.elf_path = elf_path
        self.index = idx
        self.from_cache = from_cache       # True when the index came from disk
        self.source: DwarfSource | None = None   # where load found the DWARF
        self._elf_file = None
        self._dwarf = None
        self._parsers: dict[int, DWARFExprParser] = {}
        self._functions: dict[str, FunctionInfo] = {}
        self._files: dict[int, list[str]] = {}
        self.types = TypeBuilder(self._die)

    @classmethod
    def load(cls, elf_path: str, build_id: str, cache_dir: str | None = None,
             source: DwarfSource | None = None) -> "DwarfInfo":
        """The DWARF of the binary at elf_path, in it or in its separate debug file.

        source: where it is (debuginfo.find_dwarf), when the caller looked
        already. Raises DebugInfoMissing, naming every place looked at, when
        there is none. `elf_path` of the result is the file that has the DWARF."""
        source = source or _find_dwarf(str(elf_path))
        if source.path is None:
            raise DebugInfoMissing(source.missing_message())
        # Checked before the cache: a stripped binary shares its build id with
        # the unstripped twin, whose index must not make it look as if it had
        # DWARF. The index itself is the same whichever file holds the build's
        # DWARF (a debug file keeps the sections as they were), so it stays
        # keyed by build id; what matters is the file opened for DIEs.
        idx = _index.load_cached(build_id, cache_dir)
        cached = idx is not None
        if not cached:
            idx = _index.build_index(source.path, build_id)
            _index.store(idx, cache_dir)
        dwarf = cls(source.path, idx, cached)
        dwarf.source = source
        return dwarf

    # ---- names ----

    def function(self, name: str) -> FunctionInfo:
        fi = self._functions.get(name)
        if fi is not None:
            return fi
        entry = self.index.functions.get(name)
        if entry is None:
            raise SymbolNotFound(f"function {name!r} is not in the DWARF of {self.elf_path}",
                                 _suggest(name, self.index.functions))
        die_off, lo, hi = entry
        fi = FunctionBuilder(self, self._die(die_off), name, lo, hi).build()
        self._functions[name] = fi
        return fi

    def function_names(self) -> Iterable[str]:
        return self.index.functions.keys()

    def type_by_name(self, name: str) -> GoType:
        off = self.index.types.get(name)
        if off is None:
            raise SymbolNotFound(f"type {name!r} is not in the DWARF of {self.elf_path}",
                                 _suggest(name, self.index.types))
        return self.types.get(off)

    def type(self, type_id: int) -> GoType:
        return self.types.get(type_id)

    def type_table(self, root_ids: Iterable[int]) -> TypeTable:
        return self.types.table(root_ids)

    def global_var(self, name: str) -> tuple[int, GoType]:
        entry = self.index.globals.get(name)
        if entry is None:
            raise SymbolNotFound(f"global variable {name!r} is not in the DWARF of "
                                 f"{self.elf_path}", _suggest(name, self.index.globals))
        die_off, addr = entry
        die = self._die(die_off)
        from probe_compiler.dwarf.typebuild import ref
        return addr, self.types.get(ref(die, "DW_AT_type"))

    def has_global(self, name: str) -> bool:
        return name in self.index.globals

    def constant(self, name: str) -> int:
        v = self.index.constants.get(name)
        if v is None:
            raise SymbolNotFound(f"constant {name!r} is not in the DWARF of {self.elf_path}",
                                 _suggest(name, self.index.constants))
        return v

    def constants(self, prefix: str) -> dict[str, int]:
        return {k: v for k, v in self.index.constants.items() if k.startswith(prefix)}

    def type_by_runtime_type(self, rtype_off: int) -> GoType | None:
        off = self.index.runtime_types.get(rtype_off)
        return self.types.get(off) if off is not None else None

    def compile_units(self) -> list[tuple[int, str]]:
        return list(zip(self.index.cu_offsets, self.index.cu_names))

    # ---- lazy pyelftools access (used by typebuild/variables) ----

    def _dwarfinfo(self):
        if self._dwarf is None:
            try:
                self._elf_file = _index.DebugSections(self.elf_path)  # each inflated when read
                self._dwarf = self._elf_file.dwarfinfo()
            except OSError as e:
                raise BinaryError(f"{self.elf_path}: cannot reopen the binary to read its DWARF "
                                  f"({e}); the index was cached but the file is gone") from e
        return self._dwarf

    def _die(self, off: int):
        """The DIE at a .debug_info offset; pyelftools caches it per CU."""
        d = self._dwarfinfo()
        i = bisect.bisect_right(self.index.cu_offsets, off) - 1
        if i < 0:
            raise BinaryError(f"{self.elf_path}: DIE offset {off:#x} is before the first CU")
        cu = d.get_CU_at(self.index.cu_offsets[i])   # bounds-checked, then cached by offset
        return cu.get_DIE_from_refaddr(off)

    def _expr_parser(self, cu) -> DWARFExprParser:
        p = self._parsers.get(cu.cu_offset)
        if p is None:
            p = self._parsers[cu.cu_offset] = DWARFExprParser(cu.structs)
        return p

    def _sections(self) -> _index.DebugSections:
        """The raw sections, for location and range lists (locations.ListReader)."""
        self._dwarfinfo()
        return self._elf_file

    def _file_name(self, cu, index: int) -> str:
        """DW_AT_call_file index -> path, from the CU's line table header."""
        names = self._files.get(cu.cu_offset)
        if names is None:
            names = self._files[cu.cu_offset] = _line_files(self._dwarfinfo(), cu)
        if cu.header.get("version", 5) < 5:
            index -= 1  # DWARF 4 numbers files from 1, DWARF 5 from 0
        return names[index] if 0 <= index < len(names) else str(index)

    def close(self) -> None:
        if self._elf_file is not None:
            self._elf_file.close()
            self._elf_file, self._dwarf = None, None


def _find_dwarf(elf_path: str) -> DwarfSource:
    # Headers only when the file has DWARF itself (the warm load stays cheap,
    # and any ELF works); the search elsewhere needs the Go binary's notes.
    if has_dwarf(elf_path):
        return DwarfSource(elf_path, elf_path, "binary")
    from probe_compiler.gobinary import GoBinary
    with GoBinary.open(elf_path) as binary:
        return find_dwarf(elf_path, binary)


def _line_files(dwarf, cu) -> list[str]:
    lp = dwarf.line_program_for_CU(cu)
    if lp is None:
        return []
    dirs = [d.decode() if isinstance(d, bytes) else str(d)
            for d in lp.header.get("include_directory", [])]
    out = []
    for fe in lp.header.get("file_entry", []):
        name = fe.name.decode() if isinstance(fe.name, bytes) else str(fe.name)
        d = fe.get("dir_index", 0)
        if cu.header.get("version", 5) < 5:
            d -= 1  # DWARF 4: directory 0 is the CU's own, include_directory[0] is 1
        if not name.startswith("/") and 0 <= d < len(dirs) and dirs[d] not in ("", "."):
            name = f"{dirs[d]}/{name}"
        out.append(name)
    return out


def _suggest(name: str, candidates) -> list[str]:
    return difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
