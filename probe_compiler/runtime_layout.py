"""What an executor needs to walk goroutines, read from the binary's own DWARF.

Nothing here is hard-coded per Go version: field offsets come from the
runtime.g / runtime.m structs, statuses from runtime._G* constants (and the
runtime's own gStatusStrings when present), wait reasons from the statically
initialized runtime.waitReasonStrings array. Fields a Go version lacks are
simply absent from the offset maps.
"""
from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import Callable

from probe_compiler.errors import ProbeCompilerError, SymbolNotFound
from probe_compiler.types import GoType, Kind

ReadStatic = Callable[[int, int], bytes]

G_FIELDS = ("goid", "atomicstatus", "stack.lo", "stack.hi", "sched.sp", "sched.pc", "sched.bp",
            "sched.lr", "sched.g", "syscallsp", "syscallpc", "syscallbp", "m", "gopc",
            "parentGoid", "waitsince", "waitreason", "labels", "startpc", "lockedm",
            "ancestors", "sig", "param")
M_FIELDS = ("procid", "curg", "g0", "gsignal", "alllink", "id", "lockedg", "p", "tls", "mOS")


@dataclass(frozen=True)
class RuntimeLayout:
    allgs_addr: int
    allglen_addr: int
    allm_addr: int
    g_size: int
    g_offsets: dict[str, int]
    m_size: int
    m_offsets: dict[str, int]
    status_names: dict[int, str]            # the words tracebacks print (gStatusStrings)
    gscan: int
    wait_reasons: dict[int, str]
    labels_layout: dict | None = None        # see _labels_layout
    moduledata_types_addr: int | None = None  # value of firstmoduledata.types (runtime types base)
    firstmoduledata_addr: int | None = None
    errors: tuple[str, ...] = ()             # what could not be derived, and why
    # The runtime's own constant names (_Gdeadextra -> "deadextra"): what a
    # status means, where the printed word differs ("waiting for cgo callback").
    status_constants: dict[int, str] = dataclasses.field(default_factory=dict)

    # The fields that hold link-time addresses of the binary.
    ADDRESS_FIELDS = ("allgs_addr", "allglen_addr", "allm_addr", "moduledata_types_addr",
                      "firstmoduledata_addr")

    def rebased(self, bias: int) -> "RuntimeLayout":
        """This layout for a process that loaded the binary `bias` bytes away
        from its link-time addresses (PIE)."""
        if not bias:
            return self
        return dataclasses.replace(self, **{k: getattr(self, k) + bias for k in self.ADDRESS_FIELDS
                                            if getattr(self, k) is not None})

    def status_name(self, status: int) -> str:
        return self.status_names.get(status & ~self.gscan, f"status {status}")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("status_names", "wait_reasons", "status_constants"):
            d[k] = {str(n): s for n, s in d[k].items()}
        d["errors"] = list(self.errors)
        return d

    @staticmethod
    def from_json(d: dict) -> "RuntimeLayout":
        d = dict(d)
        for k in ("status_names", "wait_reasons", "status_constants"):
            d[k] = {int(n): s for n, s in d.get(k, {}).items()}
        d["errors"] = tuple(d.get("errors", ()))
        return RuntimeLayout(**d)


def read_runtime_layout(dwarf, read_static: ReadStatic) -> RuntimeLayout:
    """`dwarf` is a DwarfInfo; `read_static(addr, size)` reads initialized ELF data."""
    errors: list[str] = []
    g = _struct(dwarf, "runtime.g")
    m = _struct(dwarf, "runtime.m")
    gscan = dwarf.constant("runtime._Gscan")
    md_addr, md_types = _moduledata(dwarf, read_static, errors)
    constants = _status_constants(dwarf, gscan)
    return RuntimeLayout(
        allgs_addr=dwarf.global_var("runtime.allgs")[0],
        allglen_addr=dwarf.global_var("runtime.allglen")[0],
        allm_addr=dwarf.global_var("runtime.allm")[0],
        g_size=g.size, g_offsets=field_offsets(dwarf, g, G_FIELDS),
        m_size=m.size, m_offsets=field_offsets(dwarf, m, M_FIELDS),
        status_names=_status_names(dwarf, read_static, constants, errors), gscan=gscan,
        status_constants=constants,
        wait_reasons=_wait_reasons(dwarf, read_static, errors),
        labels_layout=_labels_layout(dwarf),
        moduledata_types_addr=md_types, firstmoduledata_addr=md_addr,
        errors=tuple(errors))


def _struct(dwarf, name: str) -> GoType:
    t = dwarf.type_by_name(name)
    if t.kind != Kind.STRUCT:
        raise ProbeCompilerError(f"{name} in the DWARF is a {t.kind.value}, not a struct; "
                                 "this runtime is not supported")
    return t


def field_offsets(dwarf, t: GoType, paths) -> dict[str, int]:
    """Offsets of dotted field paths ("sched.sp"); missing paths are left out."""
    out = {}
    for path in paths:
        cur, off = t, 0
        for i, part in enumerate(path.split(".")):
            f = cur.field(part)
            if f is None:
                break
            off += f.offset
            if i < path.count("."):
                cur = dwarf.type(f.type_id)
        else:
            out[path] = off
    return out


def _read_string_array(dwarf, read_static: ReadStatic, name: str) -> list[str]:
    """A statically initialized [N]string global, decoded from the ELF file."""
    addr, t = dwarf.global_var(name)
    if t.kind != Kind.ARRAY or t.length is None:
        raise ProbeCompilerError(f"{name} is a {t.kind.value}, expected an array of strings")
    elem = dwarf.type(t.elem)
    ptr_off, len_off = elem.field("str").offset, elem.field("len").offset
    raw = read_static(addr, t.length * elem.size)
    out = []
    for i in range(t.length):
        base = i * elem.size
        ptr = struct.unpack_from("<Q", raw, base + ptr_off)[0]
        ln = struct.unpack_from("<q", raw, base + len_off)[0]
        out.append(read_static(ptr, ln).decode("utf-8", "replace") if ptr and ln > 0 else "")
    return out


def _wait_reasons(dwarf, read_static: ReadStatic, errors: list[str]) -> dict[int, str]:
    try:
        return dict(enumerate(_read_string_array(dwarf, read_static, "runtime.waitReasonStrings")))
    except (SymbolNotFound, ProbeCompilerError, struct.error, ValueError) as e:
        errors.append(f"wait reasons unavailable: {e}")
        return {}


def _status_constants(dwarf, gscan: int) -> dict[int, str]:
    """runtime._G* status constants by value: _Grunnable -> "runnable"."""
    names = {}
    for cname, v in dwarf.constants("runtime._G").items():
        short = cname[len("runtime._G"):]
        # _G<lowercase> are statuses; _GoidCacheBatch and friends are not.
        if v >= gscan or not short.isalpha() or not short.islower() or short.startswith("scan"):
            continue
        names[v] = short.lower()
    return names


def _status_names(dwarf, read_static: ReadStatic, constants: dict[int, str],
                  errors: list[str]) -> dict[int, str]:
    # The constant names, then the runtime's own gStatusStrings on top,
    # since those are the words tracebacks print.
    names = dict(constants)
    if dwarf.has_global("runtime.gStatusStrings"):
        try:
            for i, s in enumerate(_read_string_array(dwarf, read_static, "runtime.gStatusStrings")):
                if s:
                    names[i] = s
        except (ProbeCompilerError, struct.error, ValueError) as e:
            errors.append(f"runtime.gStatusStrings unreadable, using constant names: {e}")
    return names


def _moduledata(dwarf, read_static: ReadStatic, errors: list[str]) -> tuple[int | None, int | None]:
    """firstmoduledata is initialized by the linker, so .types is in the file."""
    try:
        addr, t = dwarf.global_var("runtime.firstmoduledata")
        f = t.field("types")
        if f is None:
            errors.append("runtime.moduledata has no 'types' field")
            return addr, None
        return addr, struct.unpack("<Q", read_static(addr + f.offset, 8))[0]
    except (SymbolNotFound, struct.error, ValueError) as e:
        errors.append(f"moduledata.types unavailable: {e}")
        return None, None


def _labels_layout(dwarf) -> dict | None:
    """How g.labels (an unsafe.Pointer to runtime/pprof.labelMap) is laid out.

    Go >= 1.24: a struct holding (through embedded structs) a []Label of
    {Key, Value string}: {"kind": "slice", "type": id, "list_offset", "elem_size",
    "key_offset", "value_offset"}. Older: a map[string]string: {"kind": "map",
    "type": id, "types": the TypeTable JSON of the map (its hmap header and
    bucket types included)}, for the decoder's map walk: the pause builds no
    types. None when pprof labels are not linked in.
    """
    try:
        t = dwarf.type_by_name("runtime/pprof.labelMap")
    except SymbolNotFound:
        return None
    if t.kind == Kind.MAP:
        return {"kind": "map", "type": t.id, "types": dwarf.type_table([t.id]).to_json()}
    found = _find_label_slice(dwarf, t, 0, depth=0)
    if found is None:
        return {"kind": "unknown", "type": t.id}
    off, slice_t = found
    elem = dwarf.type(slice_t.elem)
    strs = [f for f in elem.fields if dwarf.type(f.type_id).kind == Kind.STRING]
    return {"kind": "slice", "type": t.id, "list_offset": off, "elem_size": elem.size,
            "key_offset": strs[0].offset, "value_offset": strs[1].offset}


def _find_label_slice(dwarf, t: GoType, base: int, depth: int):
    if depth > 4:
        return None
    for f in t.fields:
        ft = dwarf.type(f.type_id)
        if ft.kind == Kind.SLICE and ft.elem is not None:
            elem = dwarf.type(ft.elem)
            if sum(dwarf.type(x.type_id).kind == Kind.STRING for x in elem.fields) >= 2:
                return base + f.offset, ft
        if ft.kind == Kind.STRUCT:
            found = _find_label_slice(dwarf, ft, base + f.offset, depth + 1)
            if found:
                return found
    return None
