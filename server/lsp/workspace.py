"""The language server's state: the workspace root, its settings, the spec's
path, the snapshots folder and the current snapshot (with its index).

Settings come from `initializationOptions` and from the client's
`workspace/configuration` section "exray". `validate_settings` keeps the good
ones and says what was wrong with the others, which fall back to defaults.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.policy import EXECUTORS

SNAPSHOT_SUFFIX = ".sqlite"


@dataclass(frozen=True)
class Settings:
    specPath: str = "exray.yaml"            # relative to the workspace root
    snapshotsDir: str = ".exray/snapshots"  # relative to the workspace root
    maxHintLength: int = 120                # characters of one inlay hint
    maxHoverValues: int = 50                # frames listed in a hover
    binary: str = ""                        # the Go binary exray.yaml is checked against ("": see editing.py)
    # Snapshots through `exray agent`s (docs/agent.md): their addresses, and the
    # credentials `exray snapshot --agent-token-file/--agent-ca/…` takes
    # ("": that flag's $EXRAY_AGENT_* variable, as the CLI does).
    agents: tuple[str, ...] = ()            # host:port, tcp:host:port or unix:/path
    agentTokenFile: str = ""
    agentCa: str = ""
    agentCert: str = ""
    agentKey: str = ""
    agentServerName: str = ""
    agentDeadline: int = 30                 # seconds each agent may take (exray snapshot --deadline)
    # Who walks the stacks, locally and on the agents (exray snapshot --executor):
    # "ptrace", "ebpf", or "auto" (eBPF where the machine allows it, else ptrace,
    # and the snapshot says why).
    executor: str = "auto"


_LIMITS = {"maxHintLength": (20, 2000), "maxHoverValues": (1, 10000), "agentDeadline": (1, 600)}
# Settings that take one of a few words.
_CHOICES = {"executor": EXECUTORS}
MAX_AGENTS = 256


def validate_settings(raw: Any, base: Settings | None = None) -> tuple[Settings, list[str]]:
    """(settings, problems). `raw` is the "exray" object (or one holding it under
    "exray"); anything wrong is reported and left at its default."""
    base = base or Settings()
    problems: list[str] = []
    if raw is None:
        return base, problems
    if isinstance(raw, dict) and isinstance(raw.get("exray"), dict):
        raw = raw["exray"]
    if not isinstance(raw, dict):
        return base, [f"Ex-Ray settings must be an object, not {type(raw).__name__}; using defaults"]
    known = {f for f in Settings.__dataclass_fields__}
    values: dict[str, Any] = {}
    for key, v in raw.items():
        if key not in known:
            problems.append(f"unknown Ex-Ray setting {key!r} (known: {', '.join(sorted(known))})")
            continue
        default = getattr(Settings(), key)
        if isinstance(default, tuple):
            got, why = _addresses(v)
            if why:
                problems.append(f"setting exray.{key} {why}; using {list(default)}")
                continue
            v = got
        elif isinstance(default, int):
            if not isinstance(v, int) or isinstance(v, bool):
                problems.append(f"setting exray.{key} must be an integer, not {v!r}; using {default}")
                continue
            lo, hi = _LIMITS[key]
            if not lo <= v <= hi:
                problems.append(f"setting exray.{key} must be between {lo} and {hi}, not {v}; using {default}")
                continue
        elif key in _CHOICES:
            if v not in _CHOICES[key]:
                problems.append(f"setting exray.{key} must be one of {', '.join(_CHOICES[key])}, not {v!r}; "
                                f"using {default!r}")
                continue
        else:
            if not isinstance(v, str) or not v.strip() or "\0" in v:
                problems.append(f"setting exray.{key} must be a non-empty path, not {v!r}; using {default!r}")
                continue
        values[key] = v
    return replace(base, **values), problems


def _addresses(v: Any) -> tuple[tuple[str, ...], str | None]:
    """exray.agents: a list of agent addresses (a single string is one)."""
    from server.agent_client import AgentUnavailable, target_of
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or len(v) > MAX_AGENTS:
        return (), f"must be a list of at most {MAX_AGENTS} agent addresses, not {v!r}"
    for a in v:
        if not isinstance(a, str) or not a.strip() or "\0" in a or any(c.isspace() for c in a):
            return (), f"must hold addresses (host:port or unix:/path), not {a!r}"
        try:
            target_of(a)
        except AgentUnavailable as e:
            return (), f"has a bad address: {e}"
    return tuple(dict.fromkeys(v)), None


@dataclass
class Workspace:
    root: Path
    settings: Settings = field(default_factory=Settings)
    current: Any = None                      # hints.SnapshotIndex of the current snapshot
    queries: dict[int, str] = field(default_factory=dict)   # exray:/query/<id> -> SQL
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def spec_path(self) -> Path:
        return _under(self.root, self.settings.specPath)

    @property
    def snapshots_dir(self) -> Path:
        return _under(self.root, self.settings.snapshotsDir)

    def ensure_snapshots_dir(self) -> Path:
        """Create the snapshots folder: 0700, with a `.gitignore` of `*` in the
        topmost folder created (and in `.exray/`): server.snapdirs."""
        from server.snapdirs import ensure_snapshot_dir
        return ensure_snapshot_dir(self.snapshots_dir)

    def new_snapshot_path(self) -> Path:
        import time
        d = self.ensure_snapshots_dir()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        for i in range(1000):
            p = d / (f"{stamp}{'-' + str(i) if i else ''}{SNAPSHOT_SUFFIX}")
            if not p.exists():
                return p
        raise OSError(f"{d}: too many snapshots this second")

    def list_snapshots(self) -> list[dict]:
        """Snapshots in the folder, newest first."""
        d = self.snapshots_dir
        if not d.is_dir():
            return []
        out = []
        for p in d.iterdir():
            if p.suffix == SNAPSHOT_SUFFIX and p.is_file() and not p.name.startswith("."):
                st = p.stat()
                out.append({"path": str(p), "name": p.name, "size": st.st_size, "mtime": st.st_mtime,
                            "current": bool(self.current and Path(self.current.path) == p)})
        out.sort(key=lambda s: (s["mtime"], s["name"]), reverse=True)
        return out

    def add_query(self, sql: str) -> int:
        with self._lock:
            n = max(self.queries, default=0) + 1
            self.queries[n] = sql
            return n

    def resolve_path(self, path: str) -> Path:
        return _under(self.root, path)


def _under(root: Path, p: str) -> Path:
    p = os.path.expanduser(p)
    return Path(p) if os.path.isabs(p) else root / p
