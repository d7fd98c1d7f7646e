"""The control plane's on-disk cache of binaries fetched from agents.

Content-addressed: `objects/<sha256>` holds a file's bytes, `builds/<build
id>` names the object of a build id (many build ids may share nothing, many
agents one object). Reading an entry touches its object's mtime, and `put`
evicts least recently used objects until the cache fits `max_bytes`. Safe
for several processes at once: objects are written to a temporary name and
renamed, and every change happens under a lock file.

    cache = DebugInfoCache()                  # ~/.cache/exray/debuginfo, 4 GiB
    path = cache.get(build_id) or cache.put(build_id, lambda f: agent.fetch(build_id, f, 60))
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tempfile
from contextlib import contextmanager
from typing import Callable

DEFAULT_MAX_BYTES = 4 << 30


def default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("EXRAY_DEBUGINFO_CACHE") or os.path.join(base, "exray", "debuginfo")


_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _build_key(build_id: str) -> str:
    """A file name for a build id (Go's contain '/'): readable part + hash."""
    return _SAFE.sub("_", build_id)[:80] + "-" + hashlib.sha256(build_id.encode()).hexdigest()[:16]


class DebugInfoCache:
    def __init__(self, root: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = root or default_dir()
        self.max_bytes = max_bytes
        self.objects = os.path.join(self.root, "objects")
        self.builds = os.path.join(self.root, "builds")
        os.makedirs(self.objects, mode=0o700, exist_ok=True)
        os.makedirs(self.builds, mode=0o700, exist_ok=True)

    @contextmanager
    def _locked(self):
        fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def get(self, build_id: str) -> str | None:
        """The cached binary's path, or None. Counts as a use (LRU)."""
        try:
            with open(os.path.join(self.builds, _build_key(build_id))) as f:
                digest = f.read().strip()
        except OSError:
            return None
        path = os.path.join(self.objects, digest)
        try:
            os.utime(path)
        except OSError:
            return None          # evicted by someone else
        return path

    def put(self, build_id: str, write: Callable[[object], str]) -> str:
        """Fetch with `write(file) -> sha256 of what it wrote`, store, evict; the path."""
        fd, tmp = tempfile.mkstemp(dir=self.objects, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as f:
                digest = write(f)
            h = hashlib.sha256()
            with open(tmp, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            if digest != h.hexdigest():
                raise ValueError(f"debug info of {build_id}: sha256 {h.hexdigest()} differs from the "
                                 f"sender's {digest}")
            path = os.path.join(self.objects, h.hexdigest())
            with self._locked():
                os.replace(tmp, path)
                with open(os.path.join(self.builds, _build_key(build_id)), "w") as f:
                    f.write(h.hexdigest())
                self._evict(keep=path)
            return path
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def size(self) -> int:
        return sum(os.path.getsize(os.path.join(self.objects, n)) for n in os.listdir(self.objects)
                   if not n.startswith("."))

    def _evict(self, keep: str) -> None:
        objs = []
        for n in os.listdir(self.objects):
            if n.startswith("."):
                continue
            p = os.path.join(self.objects, n)
            try:
                st = os.stat(p)
            except OSError:
                continue
            objs.append((st.st_mtime_ns, st.st_size, p))
        total = sum(s for _, s, _ in objs)
        for _, s, p in sorted(objs):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue     # the one just fetched stays, even alone over the limit
            os.unlink(p)
            total -= s
        live = {os.path.basename(p) for _, _, p in objs if os.path.exists(p)}
        for n in os.listdir(self.builds):
            try:
                with open(os.path.join(self.builds, n)) as f:
                    if f.read().strip() not in live:
                        os.unlink(os.path.join(self.builds, n))
            except OSError:
                continue
