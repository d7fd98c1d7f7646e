"""Go build info (`go version -m`): the .go.buildinfo blob the linker writes.

Format (debug/buildinfo, Go 1.18+ "inline strings"): a 32-byte header that starts
with "\\xff Go buildinf:", then ptrSize (byte 14) and flags (byte 15, bit 1 set for
inline strings), then two varint-length-prefixed strings: the Go version and the
module info. The module info is framed by two 16-byte sentinels
(cmd/go/internal/modload infoStart/infoEnd) and has lines like
`path\\t...`, `mod\\t<path>\\t<version>\\t<sum>`, `dep\\t...`, `build\\tkey=value`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import BinaryError
from .leb128 import uleb128

MAGIC = b"\xff Go buildinf:"
HEADER_SIZE = 32
_FLAGS_INLINE = 0x2


@dataclass
class BuildInfo:
    go_version: str | None = None
    path: str | None = None          # main package path ("cmd/compile", "exray.test/x")
    main_module: str | None = None   # module path of the main module
    main_version: str | None = None
    settings: dict[str, str] = field(default_factory=dict)  # `build` lines
    deps: list[tuple[str, str]] = field(default_factory=list)

    @property
    def vcs_revision(self) -> str | None:
        return self.settings.get("vcs.revision")

    @property
    def vcs_modified(self) -> bool | None:
        v = self.settings.get("vcs.modified")
        return None if v is None else v == "true"


def find_blob(data, start: int = 0, end: int | None = None) -> int:
    """Offset of the buildinfo header in data[start:end], -1 if absent.

    The linker aligns the blob to 16 bytes (debug/buildinfo searchMagic)."""
    end = len(data) if end is None else end
    at = data.find(MAGIC, start, end)
    while at >= 0 and (at - start) % 16:
        at = data.find(MAGIC, at + 1, end)
    return at


def parse(data, at: int, where: str = "binary") -> BuildInfo:
    """Parse the blob whose header starts at data[at]."""
    header = bytes(data[at:at + HEADER_SIZE])
    if len(header) < HEADER_SIZE or not header.startswith(MAGIC):
        raise BinaryError(f"{where}: .go.buildinfo has no '\\xff Go buildinf:' header")
    if not header[15] & _FLAGS_INLINE:
        raise BinaryError(f"{where}: build info uses the pre-Go 1.18 pointer format; "
                          "rebuild with Go 1.18 or newer")
    version, p = _read_string(data, at + HEADER_SIZE, where)
    mod, _ = _read_string(data, p, where)
    info = BuildInfo(go_version=version or None)
    # Strip the sentinels only when the framing is there, as debug/buildinfo does.
    if len(mod) >= 33 and mod[-17] == "\n":
        _parse_mod(mod[16:-16], info)
    return info


def _read_string(data, p: int, where: str) -> tuple[str, int]:
    try:
        n, p = uleb128(data, p)
    except IndexError:
        raise BinaryError(f"{where}: truncated build info string") from None
    if p + n > len(data):
        raise BinaryError(f"{where}: build info string runs past the end of the file")
    return bytes(data[p:p + n]).decode("utf-8", "replace"), p + n


def _parse_mod(text: str, info: BuildInfo) -> None:
    for line in text.split("\n"):
        kind, _, rest = line.partition("\t")
        cols = rest.split("\t")
        if kind == "path":
            info.path = rest
        elif kind == "mod" and cols:
            info.main_module = cols[0]
            info.main_version = cols[1] if len(cols) > 1 else None
        elif kind == "dep" and len(cols) >= 2:
            info.deps.append((cols[0], cols[1]))
        elif kind == "build":
            key, _, value = rest.partition("=")
            info.settings[_unquote(key)] = _unquote(value)


def _unquote(s: str) -> str:
    # cmd/go quotes keys/values holding spaces, tabs, quotes or '=' (strconv.Quote).
    if len(s) >= 2 and s[0] == s[-1] == '"':
        import ast
        try:
            return ast.literal_eval(s)
        except (ValueError, SyntaxError):
            return s[1:-1]
    return s
