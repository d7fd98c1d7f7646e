"""Frames' files -> workspace files.

A Go binary records each file either as an absolute path on the machine that
built it (`/home/ci/build/src/internal/db/db.go`, maybe not this machine) or,
built with `-trimpath`, as a module path (`example.com/svc/internal/db/db.go`).
`SourceMap` resolves both through the module path in the workspace's go.mod:

1. a path inside the workspace root that exists: itself;
2. `<module path>/<rest>`: `<root>/<rest>` (the -trimpath form);
3. an absolute path under a build root learned from a frame whose function's
   package is in the module (`example.com/svc/internal/db.Get` in
   `/b/x/internal/db/db.go` means the module was built at `/b/x`);
4. otherwise the longest suffix of the path that exists under the root.

Files of other modules and of the standard library never map into the
workspace: when the frame's function is known, its package must be `main` or
inside the module.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from probe_compiler.files import read_regular

_MODULE_RE = re.compile(r'^\s*module\s+("?)([^\s"]+)\1\s*(?://.*)?$', re.M)


def read_module_path(root: str | os.PathLike) -> str | None:
    """The `module` line of root/go.mod, or None."""
    try:
        text = read_regular(Path(root) / "go.mod", 1 << 20).decode("utf-8", "replace")
    except OSError:
        return None
    m = _MODULE_RE.search(text)
    return m.group(2) if m else None


def package_of(function: str) -> str:
    """Package path of a Go symbol: `example.com/a/b.(*T).M` -> `example.com/a/b`."""
    slash = function.rfind("/")
    dot = function.find(".", slash + 1)
    return function if dot < 0 else function[:dot]


class SourceMap:
    def __init__(self, root: str | os.PathLike, module: str | None = None):
        self.root = Path(root).resolve()
        self.module = module if module is not None else read_module_path(self.root)
        self.build_roots: set[str] = set()
        self._cache: dict[tuple[str, bool], Path | None] = {}

    # ------------------------------------------------------------ the module
    def in_module(self, function: str | None) -> bool:
        """Whether a frame of `function` may be in this workspace."""
        if not function:
            return True
        pkg = package_of(function)
        if pkg == "main" or pkg.startswith("main."):
            return True
        if self.module is None:
            return "." not in pkg.split("/")[0] and pkg.split("/")[0] not in _STD_ROOTS
        return pkg == self.module or pkg.startswith(self.module + "/")

    def learn(self, function: str, file: str) -> None:
        """Learn where the module was built from a frame of a package in it."""
        if not self.module or not file.startswith("/"):
            return
        pkg = package_of(function)
        if pkg != self.module and not pkg.startswith(self.module + "/"):
            return
        rel = pkg[len(self.module):].strip("/")
        d = os.path.dirname(file)
        if rel:
            if not d.endswith("/" + rel):
                return
            d = d[: -len(rel) - 1]
        if d and d not in self.build_roots:
            self.build_roots.add(d)
            self._cache.clear()

    # ------------------------------------------------------------- resolving
    def resolve(self, file: str | None, function: str | None = None) -> Path | None:
        """The workspace file a frame's `file` stands for, or None."""
        if not file or not self.in_module(function):
            return None
        key = (file, function is not None)
        if key in self._cache:
            return self._cache[key]
        found = self._resolve(file)
        self._cache[key] = found
        return found

    def _resolve(self, file: str) -> Path | None:
        root = self.root
        if file.startswith("/"):
            p = Path(file)
            try:
                if p.is_relative_to(root) and p.is_file():
                    return p
            except OSError:
                pass
            for b in sorted(self.build_roots, key=len, reverse=True):
                if file.startswith(b + "/"):
                    cand = root / file[len(b) + 1:]
                    if cand.is_file():
                        return cand
        elif self.module and file.startswith(self.module + "/"):
            cand = root / file[len(self.module) + 1:]
            if cand.is_file():
                return cand
        return self._suffix(file)

    def _suffix(self, file: str) -> Path | None:
        parts = [p for p in file.split("/") if p and p not in (".", "..")]
        for i in range(len(parts)):
            cand = root_join(self.root, parts[i:])
            if cand.is_file():
                return cand
        return None


def root_join(root: Path, parts: list[str]) -> Path:
    return root.joinpath(*parts)


# Top-level standard library import path elements without a dot, so that a
# workspace with no go.mod still leaves runtime frames alone.
_STD_ROOTS = {
    "archive", "bufio", "bytes", "cmp", "compress", "container", "context", "crypto", "database",
    "debug", "embed", "encoding", "errors", "expvar", "flag", "fmt", "go", "hash", "html", "image",
    "index", "internal", "io", "iter", "log", "maps", "math", "mime", "net", "os", "path", "plugin",
    "reflect", "regexp", "runtime", "slices", "sort", "strconv", "strings", "structs", "sync",
    "syscall", "testing", "text", "time", "unicode", "unique", "unsafe", "weak", "vendor", "type",
}
