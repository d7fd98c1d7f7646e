"""The probe's programs and maps: compiled once per machine and kernel, cached.

    obj = compiled(SOURCE_TEXT, cflags, PROGRAMS)   # the cache, else bcc's compile (then cached)
    kern = load(obj)                                # maps created, programs loaded: fds we own
    ... kern.maps["state"], kern.progs["gstart"] ...
    kern.close()

bcc compiles C each time a `BPF(text=...)` is made (clang: about 1 s here).
The probe's C never changes per binary or request (plan.py feeds it through
maps), so its bytecode depends only on the source, the flags, the kernel
headers and bcc: `compiled()` keys a cache file on all four
(`~/.cache/exray/ebpf/<key>.json`, or $EXRAY_EBPF_CACHE), and a cache hit
loads with no compiler at all. The cached bytecode refers to maps by
name: bcc's compile baked its own maps' fds into the `ld_imm64` map loads,
which are recorded as relocations and patched with the new maps' fds here.

`ProbeObject` is plain data (JSON); `Loaded` owns the kernel objects and
closes every fd (programs and maps) in `close()`, on every path.
"""
from __future__ import annotations

import ctypes as ct
import hashlib
import json
import os
import struct
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import AgentError

CACHE_VERSION = 1
BPF_PROG_TYPE_KPROBE = 2
BPF_PSEUDO_MAP_FD = 1
LD_IMM64 = 0x18
_INSN = struct.Struct("<BBhi")


class LoadError(AgentError):
    """The probe's programs or maps could not be made."""


@dataclass(frozen=True)
class MapSpec:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


@dataclass(frozen=True)
class ProgSpec:
    name: str
    insns: str                     # hex of the bytecode
    relocs: list = field(default_factory=list)   # [insn index, map name]: ld_imm64 of that map's fd


@dataclass(frozen=True)
class ProbeObject:
    key: str
    license: str
    kern_version: int
    maps: list
    progs: list

    def to_json(self) -> str:
        return json.dumps({"version": CACHE_VERSION, **asdict(self)})

    @staticmethod
    def from_json(text: str) -> "ProbeObject":
        d = json.loads(text)
        if d.pop("version", None) != CACHE_VERSION:
            raise ValueError("another cache version")
        return ProbeObject(d["key"], d["license"], d["kern_version"], [MapSpec(**m) for m in d["maps"]],
                           [ProgSpec(p["name"], p["insns"], [tuple(r) for r in p["relocs"]]) for p in d["progs"]])


def cache_dir() -> Path:
    return Path(os.environ.get("EXRAY_EBPF_CACHE") or Path.home() / ".cache" / "exray" / "ebpf")


def cache_key(source: str, cflags: list[str]) -> str:
    """What the bytecode depends on: the C, the flags, the kernel (headers) and bcc."""
    try:
        import bcc
        bcc_version = getattr(bcc, "__version__", "?")
    except ImportError:
        bcc_version = "none"
    release = os.uname().release
    build = os.path.realpath(f"/lib/modules/{release}/build")
    h = hashlib.sha256()
    for part in (str(CACHE_VERSION), source, "\0".join(cflags), release, build, bcc_version):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def compiled(source: str, cflags: list[str], programs: list[str]) -> tuple[ProbeObject, bool]:
    """(the probe's object, whether it came from the cache)."""
    key = cache_key(source, cflags)
    path = cache_dir() / f"{key}.json"
    try:
        obj = ProbeObject.from_json(path.read_text())
        if obj.key == key and {p.name for p in obj.progs} >= set(programs):
            return obj, True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    obj = _compile(source, cflags, programs, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(obj.to_json())
        os.replace(tmp, path)
    except OSError:
        pass            # no cache: the next agent compiles again
    return obj, False


def _compile(source: str, cflags: list[str], programs: list[str], key: str) -> ProbeObject:
    """bcc's compile, kept as bytecode plus map specs; bcc's own maps are closed after."""
    try:
        from bcc import BPF
        from bcc.libbcc import lib
    except ImportError as e:
        raise LoadError("bcc is not importable (Debian's python3-bpfcc; run scripts/setup.sh)") from e
    try:
        bpf = BPF(text=source.encode(), cflags=cflags)   # bytes: bcc warns on str
    except Exception as e:   # bcc raises plain Exception for a failed compile
        raise LoadError(f"compiling the eBPF probe failed: {e}") from e
    try:
        maps, by_fd = [], {}
        for name in _table_names(bpf):
            t = bpf[name.encode()]
            key_size = ct.sizeof(t.Key) if t.Key is not None else 0
            leaf_size = ct.sizeof(t.Leaf) if t.Leaf is not None else 0
            if t.ttype == 27:        # BPF_MAP_TYPE_RINGBUF: no key or value
                key_size = leaf_size = 0
            maps.append(MapSpec(name, t.ttype, key_size, leaf_size, t.max_entries, t.flags))
            by_fd[t.map_fd] = name
        progs = []
        for name in programs:
            insns = bpf.dump_func(name.encode())
            relocs = []
            for i in range(0, len(insns), 8):
                op, regs, _, imm = _INSN.unpack_from(insns, i)
                if op == LD_IMM64 and (regs >> 4) == BPF_PSEUDO_MAP_FD:
                    if imm not in by_fd:
                        raise LoadError(f"{name}: instruction {i // 8} loads fd {imm}, which is no map of ours")
                    relocs.append((i // 8, by_fd[imm]))
            progs.append(ProgSpec(name, insns.hex(), relocs))
        license = (lib.bpf_module_license(bpf.module) or b"GPL").decode()
        return ProbeObject(key, license, lib.bpf_module_kern_version(bpf.module), maps, progs)
    finally:
        bpf.cleanup()


def _table_names(bpf) -> list[str]:
    lib = _libbcc()
    n = lib.bpf_num_tables(bpf.module)
    return [lib.bpf_table_name(bpf.module, i).decode() for i in range(n)]


def _libbcc():
    from bcc.libbcc import lib
    if not getattr(lib, "_exray_declared", False):
        lib.bcc_create_map.restype = ct.c_int
        lib.bcc_create_map.argtypes = [ct.c_int, ct.c_char_p, ct.c_int, ct.c_int, ct.c_int, ct.c_int]
        lib.bcc_prog_load.restype = ct.c_int
        lib.bcc_prog_load.argtypes = [ct.c_int, ct.c_char_p, ct.c_void_p, ct.c_int, ct.c_char_p, ct.c_uint,
                                      ct.c_int, ct.c_char_p, ct.c_uint]
        lib.bpf_num_tables.restype = ct.c_ulonglong
        lib.bpf_num_tables.argtypes = [ct.c_void_p]
        lib.bpf_table_name.restype = ct.c_char_p
        lib.bpf_table_name.argtypes = [ct.c_void_p, ct.c_ulonglong]
        lib._exray_declared = True
    return lib


class Loaded:
    """The kernel objects of one loaded probe: map and program fds, ours to close."""

    def __init__(self):
        self.maps: dict[str, int] = {}
        self.specs: dict[str, MapSpec] = {}
        self.progs: dict[str, int] = {}

    def close(self) -> None:
        for fds in (self.progs, self.maps):
            for name, fd in list(fds.items()):
                try:
                    os.close(fd)
                except OSError:
                    pass
                del fds[name]


def load(obj: ProbeObject) -> Loaded:
    """Create the maps, patch the programs' map loads, load the programs (the
    verifier runs here). Closes what it made before raising."""
    lib = _libbcc()
    out = Loaded()
    try:
        for m in obj.maps:
            fd = lib.bcc_create_map(m.type, m.name.encode(), m.key_size, m.value_size, m.max_entries, m.flags)
            if fd < 0:
                raise LoadError(f"creating map {m.name} failed ({os.strerror(ct.get_errno() or -fd)})")
            out.maps[m.name], out.specs[m.name] = fd, m
        for p in obj.progs:
            insns = bytearray(bytes.fromhex(p.insns))
            for index, name in p.relocs:
                struct.pack_into("<i", insns, index * 8 + 4, out.maps[name])
            out.progs[p.name] = _load_prog(lib, p.name, bytes(insns), obj)
        return out
    except BaseException:
        out.close()
        raise


def _load_prog(lib, name: str, insns: bytes, obj: ProbeObject) -> int:
    buf = ct.create_string_buffer(insns)
    fd = lib.bcc_prog_load(BPF_PROG_TYPE_KPROBE, name.encode(), buf, len(insns), obj.license.encode(),
                           obj.kern_version, 0, None, 0)
    if fd >= 0:
        return fd
    size = 1 << 24                 # again, for the verifier's words
    log = ct.create_string_buffer(size)
    fd = lib.bcc_prog_load(BPF_PROG_TYPE_KPROBE, name.encode(), buf, len(insns), obj.license.encode(),
                           obj.kern_version, 1, log, size)
    if fd >= 0:
        return fd
    tail = log.value.decode("utf-8", "replace").strip().splitlines()[-3:]
    raise LoadError(f"the verifier refused {name}: {' / '.join(tail) or 'no log'}")
