"""Where a Go binary's DWARF lives: in the binary, or in a separate debug file.

Distributions and many companies ship stripped binaries and keep the DWARF
apart. `find_dwarf` looks where gdb looks, in gdb's order:

1. the binary itself;
2. the file its `.gnu_debuglink` names: next to the real binary, in its
   `.debug/` folder, then under each debug root (`/usr/lib/debug/<dir>/`);
   the file's CRC32 must equal the link's;
3. `<root>/.build-id/xx/yyyy.debug`, by the GNU build id;
4. the debuginfod servers of `DEBUGINFOD_URLS`, by the GNU build id; a
   download lands once in a cache addressed by build id.

A candidate counts only when it is this build (CRC or build id) and holds
`.debug_info`. The answer names the file and every place looked at, so "no
variables" always comes with where Ex-Ray searched. Only DWARF comes from a
debug file: `objcopy --only-keep-debug` leaves its code and data NOBITS, so
static data is still read from the binary.
"""
from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from .errors import DebugFileRejected, DebuginfodError

DEBUG_ROOTS = ("/usr/lib/debug",)

_GNU_BUILD_ID = re.compile(r"[0-9a-f]{8,}")     # GoBinary.build_id: GNU note as hex
_PROC_EXE = re.compile(r"/proc/(\d+)/exe")
_PROC_ROOT = re.compile(r"(/proc/\d+/root)(/.*)")


@dataclass(frozen=True)
class Debuginfod:
    """How to ask debuginfod servers: one value, passed down.

    from_env reads the variables the elfutils client reads, so a machine set
    up for gdb works unchanged."""
    urls: tuple[str, ...] = ()
    cache_dir: str = ""
    # A snapshot must not wait on a slow server: one request (connect and
    # download) gets this long, give or take one read, then it is abandoned.
    timeout_s: float = 20.0
    # A debug file is a few tens of MB (cmd/compile's: 14 MB); a bigger answer
    # is a wrong URL or a misbehaving server, and must not fill the disk.
    max_bytes: int = 1 << 30

    @classmethod
    def from_env(cls, env=None) -> "Debuginfod":
        env = os.environ if env is None else env
        base = env.get("EXRAY_CACHE_DIR") or str(Path.home() / ".cache" / "exray")
        cfg = cls(tuple(env.get("DEBUGINFOD_URLS", "").split()), str(Path(base) / "debuginfod"))
        if env.get("DEBUGINFOD_TIMEOUT", "").isdigit():
            cfg = dataclasses.replace(cfg, timeout_s=float(env["DEBUGINFOD_TIMEOUT"]))
        if env.get("DEBUGINFOD_MAXSIZE", "").isdigit() and int(env["DEBUGINFOD_MAXSIZE"]) > 0:
            cfg = dataclasses.replace(cfg, max_bytes=int(env["DEBUGINFOD_MAXSIZE"]))
        return cfg

    def cached(self, build_id: str) -> Path:
        """Where the debug file of build_id is kept (the elfutils client's layout)."""
        return Path(self.cache_dir) / build_id / "debuginfo"


@dataclass(frozen=True)
class Looked:
    """One place searched, and why its DWARF was not used."""
    step: str       # "binary", "debuglink", "build-id", "debuginfod"
    place: str      # a path or a URL
    outcome: str

    def __str__(self) -> str:
        return f"{self.place} ({self.step}): {self.outcome}"


@dataclass(frozen=True)
class DwarfSource:
    """The answer of find_dwarf: which file to read DWARF from, and the search."""
    binary: str
    path: str | None          # the ELF file holding .debug_info; None: nowhere
    step: str = ""            # which of the four steps found it
    looked: tuple[Looked, ...] = field(default=())

    def describe(self) -> str:
        if self.path is None:
            return "no DWARF found; looked at:\n" + "\n".join(f"  {x}" for x in self.looked)
        if self.step == "binary":
            return "DWARF in the binary itself"
        return f"DWARF from {self.path} ({_STEP_WORDS[self.step]})"

    def unusable(self, why: str) -> "DwarfSource":
        """The same search, once the file it found turned out unreadable."""
        if self.path is None:
            return self
        return DwarfSource(self.binary, None, "", self.looked + (Looked(self.step, self.path, why),))

    def missing_message(self) -> str:
        """The DebugInfoMissing text: what was searched, and what to do."""
        places = "; ".join(str(x) for x in self.looked)
        return (f"{self.binary}: no DWARF found (looked at: {places}). Stacks still work from "
                "pclntab; for variables, install the binary's debug file next to it or under "
                "/usr/lib/debug/.build-id, or set DEBUGINFOD_URLS to a debuginfod server")


_STEP_WORDS = {"debuglink": ".gnu_debuglink", "build-id": "GNU build id under a debug root",
               "debuginfod": "debuginfod, by GNU build id"}


def find_dwarf(binary_path: str, binary, roots=DEBUG_ROOTS,
               debuginfod: Debuginfod | None = None) -> DwarfSource:
    """Where the DWARF of `binary` (a GoBinary opened from binary_path) is.

    Never raises for a missing or wrong candidate: each becomes a Looked."""
    if binary.has_dwarf:
        return DwarfSource(binary_path, binary_path, "binary")
    real = real_path(binary_path)      # named in Looked: /proc/PID/exe tells a user little
    looked = [Looked("binary", real, "no .debug_info (stripped, or built with -ldflags=-w)")]
    prefix, inside = _split_root(real)
    roots = _roots(prefix, roots)
    build_id = gnu_build_id(binary)
    steps = [("debuglink", lambda: _by_debuglink(binary, real, prefix, inside, roots, looked)),
             ("build-id", lambda: _by_build_id(build_id, roots, looked)),
             ("debuginfod", lambda: _by_debuginfod(build_id, debuginfod or Debuginfod.from_env(),
                                                   looked))]
    for step, search in steps:
        path = search()
        if path is not None:
            return DwarfSource(binary_path, path, step, tuple(looked))
    return DwarfSource(binary_path, None, "", tuple(looked))


def gnu_build_id(binary) -> str | None:
    """The GNU build id (hex) or None. GoBinary.build_id prefers the GNU note;
    its other forms (Go's "action/content" id, "sha256:...") are not hex."""
    bid = binary.build_id
    return bid if _GNU_BUILD_ID.fullmatch(bid) else None


# -- where the binary really is ---------------------------------------------

def real_path(exe: str) -> str:
    """The path of the binary's file, for looking next to it.

    /proc/PID/exe opens the right file, but its folder is /proc/PID: the debug
    file sits next to the path the link names. A process in another mount
    namespace (a container) names a path of its own root, which we reach
    through /proc/PID/root."""
    m = _PROC_EXE.fullmatch(exe)
    if m is None:
        return os.path.realpath(exe)
    pid = m.group(1)
    try:
        target = os.readlink(exe).removesuffix(" (deleted)")
    except OSError:
        return exe
    return target if _shares_root(pid) else f"/proc/{pid}/root{target}"


def _shares_root(pid: str) -> bool:
    try:
        ours, theirs = os.stat("/proc/self/ns/mnt"), os.stat(f"/proc/{pid}/ns/mnt")
        return ours.st_ino == theirs.st_ino and os.readlink(f"/proc/{pid}/root") == "/"
    except OSError:
        return True     # can't tell: the plain path is the better guess


def _split_root(path: str) -> tuple[str, str]:
    """("/proc/PID/root", path inside it), or ("", path) for our own root."""
    m = _PROC_ROOT.fullmatch(path)
    return (m.group(1), m.group(2)) if m else ("", path)


def _roots(prefix: str, roots) -> list[str]:
    """The debug roots, and inside a container its own ones first."""
    roots = [str(r) for r in roots]
    return [prefix + r for r in roots] + roots if prefix else roots


# -- step 2: .gnu_debuglink ----------------------------------------------------

def read_debuglink(elf: ELFFile) -> tuple[str, int] | None:
    """(file name, CRC32) from .gnu_debuglink: the name, NUL, padding to 4
    bytes, then the CRC in the file's byte order."""
    sec = elf.get_section_by_name(".gnu_debuglink")
    if sec is None:
        return None
    data = sec.data()
    end = data.find(b"\0")
    crc_at = (end + 4) & ~3
    if end <= 0 or crc_at + 4 > len(data):
        return None
    order = "little" if elf.little_endian else "big"
    return data[:end].decode("utf-8", "replace"), int.from_bytes(data[crc_at:crc_at + 4], order)


def debuglink_candidates(prefix: str, inside: str, name: str, roots) -> list[str]:
    """gdb's order: the binary's folder, its .debug/ folder, then <root>/<folder>/."""
    folder = os.path.dirname(inside)
    here = prefix + folder
    return ([os.path.join(here, name), os.path.join(here, ".debug", name)]
            + [os.path.join(r + folder, name) for r in roots])


def _by_debuglink(binary, real, prefix, inside, roots, looked) -> str | None:
    link = read_debuglink(binary.elf)
    if link is None:
        looked.append(Looked("debuglink", real, "no .gnu_debuglink section"))
        return None
    name, crc = link
    for path in debuglink_candidates(prefix, inside, name, roots):
        try:
            check_crc(path, crc)
            check_has_dwarf(path)
            return path
        except (OSError, DebugFileRejected) as e:
            looked.append(Looked("debuglink", path, _why(e)))
    return None


def file_crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def check_crc(path: str, want: int) -> None:
    got = file_crc32(path)
    if got != want:
        raise DebugFileRejected(
            f"{path}: CRC32 {got:08x} differs from the .gnu_debuglink's {want:08x}: it is the "
            "debug file of another build; install the one made with this binary")


# -- step 3: <root>/.build-id/xx/yyyy.debug -----------------------------------

def build_id_path(root: str, build_id: str) -> str:
    return os.path.join(root, ".build-id", build_id[:2], build_id[2:] + ".debug")


def _by_build_id(build_id, roots, looked) -> str | None:
    if build_id is None:
        looked.append(Looked("build-id", "", "the binary has no GNU build id note (link with "
                                             "-ldflags=-B gobuildid to get one)"))
        return None
    for root in roots:
        path = build_id_path(root, build_id)
        try:
            check_debug_file(path, build_id)
            return path
        except (OSError, DebugFileRejected) as e:
            looked.append(Looked("build-id", path, _why(e)))
    return None


# -- a candidate debug file --------------------------------------------------

def elf_facts(path: str) -> tuple[str | None, bool]:
    """(GNU build id or None, has .debug_info with contents) of an ELF file."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            return _note_build_id(elf), _has_dwarf(elf)
    except (ELFError, ValueError) as e:
        raise DebugFileRejected(f"{path}: not a readable ELF file ({e})") from e


def _note_build_id(elf: ELFFile) -> str | None:
    for sec in elf.iter_sections():
        if sec["sh_type"] == "SHT_NOTE":
            for note in sec.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID":
                    return note["n_desc"]
    return None


def _has_dwarf(elf: ELFFile) -> bool:
    # A NOBITS .debug_info is a stripped file's placeholder, not DWARF.
    sec = elf.get_section_by_name(".debug_info") or elf.get_section_by_name(".zdebug_info")
    return sec is not None and sec["sh_type"] != "SHT_NOBITS" and sec["sh_size"] > 0


def has_dwarf(path: str) -> bool:
    """Does the ELF file at path hold DWARF itself (cheap: headers only)?"""
    try:
        return elf_facts(path)[1]
    except (OSError, DebugFileRejected):
        return False


def check_has_dwarf(path: str) -> None:
    if not elf_facts(path)[1]:
        raise DebugFileRejected(f"{path}: has no .debug_info; it is not a debug file "
                                "(make one with objcopy --only-keep-debug)")


def check_debug_file(path: str, build_id: str) -> None:
    """Raises DebugFileRejected unless path is build_id's debug file."""
    got, dwarf = elf_facts(path)
    if got != build_id:
        raise DebugFileRejected(
            f"{path}: its build id is {got or 'missing'}, not {build_id}: the debug file of "
            "another build; replace it with the one made with this binary")
    if not dwarf:
        raise DebugFileRejected(f"{path}: has no .debug_info; it is not a debug file")


def _why(e: Exception) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return str(e).split(": ", 1)[-1]    # the path is already the Looked's place


# -- step 4: debuginfod ------------------------------------------------------

def _by_debuginfod(build_id, cfg: Debuginfod, looked) -> str | None:
    if not cfg.urls:
        looked.append(Looked("debuginfod", "DEBUGINFOD_URLS", "not set"))
        return None
    if build_id is None:
        looked.append(Looked("debuginfod", " ".join(cfg.urls), "the binary has no GNU build id"))
        return None
    cached = cfg.cached(build_id)
    if cached.is_file():
        return str(cached)
    for url in cfg.urls:
        try:
            return fetch_debuginfo(url, build_id, cfg)
        except (DebuginfodError, DebugFileRejected) as e:
            looked.append(Looked("debuginfod", debuginfo_url(url, build_id), _why(e)))
    return None


def debuginfo_url(server: str, build_id: str) -> str:
    return f"{server.rstrip('/')}/buildid/{build_id}/debuginfo"


def fetch_debuginfo(server: str, build_id: str, cfg: Debuginfod) -> str:
    """Download build_id's debug file from one server into the cache; its path.

    The file is checked (build id, DWARF) before it is renamed into place, so
    the cache only ever holds whole, right files."""
    url = debuginfo_url(server, build_id)
    final = cfg.cached(build_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".download-", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            _download(url, out, cfg)
        check_debug_file(tmp, build_id)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return str(final)


def _download(url: str, out, cfg: Debuginfod) -> None:
    deadline = time.monotonic() + cfg.timeout_s
    try:
        with urllib.request.urlopen(url, timeout=cfg.timeout_s) as resp:
            size = resp.headers.get("Content-Length")
            if size and size.isdigit() and int(size) > cfg.max_bytes:
                raise _too_big(url, cfg)
            got = 0
            # read1 returns after one socket read, so the deadline is checked
            # between reads even when the server trickles bytes.
            while chunk := resp.read1(1 << 20):
                got += len(chunk)
                if got > cfg.max_bytes:
                    raise _too_big(url, cfg)
                if time.monotonic() > deadline:
                    raise _too_slow(url, cfg)
                out.write(chunk)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise DebuginfodError(f"{url}: the server has no debug file for this build id") from e
        raise DebuginfodError(f"{url}: HTTP {e.code} {e.reason}") from e
    except TimeoutError as e:
        raise _too_slow(url, cfg) from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            raise _too_slow(url, cfg) from e
        raise DebuginfodError(f"{url}: cannot reach the server ({reason}); check "
                              "DEBUGINFOD_URLS and that the server is up") from e


def _too_big(url: str, cfg: Debuginfod) -> DebuginfodError:
    return DebuginfodError(f"{url}: the debug file is over {cfg.max_bytes} bytes; raise "
                           "DEBUGINFOD_MAXSIZE if it is right")


def _too_slow(url: str, cfg: Debuginfod) -> DebuginfodError:
    return DebuginfodError(f"{url}: no complete answer within {cfg.timeout_s:g} s; the server "
                           "is slow or stuck (raise DEBUGINFOD_TIMEOUT to wait longer)")
