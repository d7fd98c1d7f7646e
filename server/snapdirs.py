"""Folders that hold snapshots: private, and never committed by accident.

A snapshot holds process memory (captured values, strings, pprof labels,
paths and command lines of the binaries): docs/security.md. Every folder
Ex-Ray creates for snapshots is 0700 and gets a `.gitignore` of `*` (in the
topmost folder it created, which covers the ones below), so `git add .`
leaves them out. Ex-Ray's own `.exray/` folder is tightened to 0700 and gets
its `.gitignore` even when it already existed. The files are created 0600 by
server.store.write_snapshot.
"""
from __future__ import annotations

import os
from pathlib import Path

GITIGNORE = "# Ex-Ray snapshots and exports hold process memory: not for version control\n*\n"
EXRAY_DIR = ".exray"


def ensure_snapshot_dir(d: str | os.PathLike) -> Path:
    """Create `d` (and missing parents) for snapshots, as above; returns it."""
    d = Path(os.path.abspath(d))
    missing = []
    p = d
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for m in reversed(missing):
        try:
            m.mkdir(mode=0o700)
        except FileExistsError:        # made meanwhile (another snapshot): leave its mode
            continue
        os.chmod(m, 0o700)            # mkdir's mode goes through the umask; make it exact
    if missing:
        _gitignore(missing[-1])
    exray = next((a for a in [d, *d.parents] if a.name == EXRAY_DIR), None)
    if exray is not None:
        for a in [d, *d.parents]:     # Ex-Ray's own folders: private even if they existed
            _private(a)
            if a == exray:
                break
        _gitignore(exray)
    return d


def _private(d: Path) -> None:
    try:
        if d.is_dir() and not d.is_symlink() and d.stat().st_uid == os.geteuid():
            os.chmod(d, 0o700)
    except OSError:
        pass


def _gitignore(d: Path) -> None:
    g = d / ".gitignore"
    if g.exists() or g.is_symlink():
        return
    try:
        fd = os.open(g, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(GITIGNORE)
