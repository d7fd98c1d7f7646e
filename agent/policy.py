"""Who may ask the agent for what: the allow-list, the rate limit, the caps
and the audit log. Configured on the agent (flags or a JSON file), never
by the client: a control plane names pids, the agent decides.

A process is allowed when it matches every list that is configured: its exe
path one of `allow_exe`'s globs, its uid one of `allow_uid`, its cgroup path
under one of `allow_cgroup`'s prefixes. An agent with no list at all refuses
to start (`exray agent --allow-exe '*'` allows every process, on purpose).
"""
from __future__ import annotations

import fnmatch
import json
import os
import threading
import time
from dataclasses import dataclass, field


# Who may walk the stacks (agent/ebpf/executor.py EXECUTORS; tests hold the two equal).
EXECUTORS = ("ptrace", "ebpf", "auto")


class PolicyError(Exception):
    """The agent's configuration is unusable; it refuses to start."""


@dataclass(frozen=True)
class ProcFacts:
    """What the allow-list judges a process by, read from /proc."""
    pid: int
    exe: str                 # real path (" (deleted)" removed)
    uid: int
    cgroups: tuple[str, ...] # every hierarchy's path, the unified one first
    start_time_ns: int       # wall clock; identifies the process across pid reuse

    @property
    def cgroup(self) -> str:
        return self.cgroups[0] if self.cgroups else ""


_BOOT_NS: int | None = None


def _boot_ns() -> int:
    global _BOOT_NS
    if _BOOT_NS is None:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    _BOOT_NS = int(line.split()[1]) * 1_000_000_000
                    break
            else:
                _BOOT_NS = 0
    return _BOOT_NS


def proc_facts(pid: int, proc: str = "/proc") -> ProcFacts | None:
    """The process's facts, or None when it is gone or unreadable (a kernel thread)."""
    try:
        exe = os.readlink(f"{proc}/{pid}/exe").removesuffix(" (deleted)")
        with open(f"{proc}/{pid}/stat") as f:
            stat = f.read()
        with open(f"{proc}/{pid}/status") as f:
            uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
        with open(f"{proc}/{pid}/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f if line.strip()]
    except (OSError, StopIteration, ValueError):
        return None
    # Field 22 (starttime, clock ticks since boot) counted after the ")" of comm.
    fields = stat[stat.rfind(")") + 2:].split()
    start_ns = _boot_ns() + int(fields[19]) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    paths = [p[2] for p in lines if len(p) == 3]
    unified = [p[2] for p in lines if len(p) == 3 and p[0] == "0"]
    cgroups = tuple(dict.fromkeys(unified + paths))
    return ProcFacts(pid, exe, uid, cgroups, start_ns)


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/") or "/"
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


@dataclass
class Policy:
    allow_exe: list[str] = field(default_factory=list)     # fnmatch globs on the exe's real path
    allow_uid: list[int] = field(default_factory=list)
    allow_cgroup: list[str] = field(default_factory=list)  # path prefixes, as in /proc/PID/cgroup
    # At most one pause of a process per this many seconds, whoever asks.
    min_interval_s: float = 1.0
    # A request's own gRPC deadline is honoured up to this; past it the agent stops.
    max_request_s: float = 60.0
    # Bound on one process's pause, whatever the request says.
    max_pause_deadline_s: float = 2.0
    # How far ahead a request may schedule its pause instant.
    max_pause_lead_s: float = 10.0
    max_pids: int = 256
    # Stop every process of a request at the agreed instant, read each, then
    # resume all (one instant); False: one after another from it (each pause
    # only one process's, later instants).
    pause_together: bool = True
    # Cap on every gRPC message in either direction; records and binaries go in chunks below it.
    max_message_bytes: int = 8 << 20
    # The executors a request may name ("ptrace", "ebpf", "auto"); the first
    # serves a request that names none. "auto" may fall back to ptrace, so it
    # needs "ptrace" listed; without "ebpf" it uses ptrace and says why.
    executors: list[str] = field(default_factory=lambda: list(EXECUTORS))
    # Ceilings on a request's capture limits (probe_compiler/capture_limits.py
    # names, e.g. {"max_frames": 1000, "string_bytes": 1024}), below the hard
    # CEILINGS; the pause deadline's is max_pause_deadline_s. A request asking
    # more gets the ceiling, and its records' warnings say so.
    max_capture_limits: dict[str, float] = field(default_factory=dict)

    def check(self) -> None:
        if not (self.allow_exe or self.allow_uid or self.allow_cgroup):
            raise PolicyError("no allow-list: give --allow-exe GLOB, --allow-uid UID or --allow-cgroup PATH "
                              "(or \"allow_exe\" in --policy FILE); --allow-exe '*' allows every process")
        if self.min_interval_s < 0 or self.max_request_s <= 0 or self.max_pause_deadline_s <= 0:
            raise PolicyError("min_interval_s must be >= 0, max_request_s and max_pause_deadline_s > 0")
        if self.max_message_bytes < 64 << 10:
            raise PolicyError("max_message_bytes must be at least 64 KiB")
        if not isinstance(self.executors, (list, tuple)) or not isinstance(self.max_capture_limits, dict):
            raise PolicyError("executors must be a list of names, max_capture_limits an object of limits")
        unknown = [e for e in self.executors if e not in EXECUTORS]
        if not self.executors or unknown:
            raise PolicyError(f"executors must name some of {', '.join(EXECUTORS)}"
                              + (f", not {', '.join(map(repr, unknown))}" if unknown else ""))
        if "auto" in self.executors and "ptrace" not in self.executors:
            raise PolicyError("executors: \"auto\" falls back to ptrace where eBPF can't run; list \"ptrace\" too")
        from probe_compiler import capture_limits as cl
        for name, v in self.max_capture_limits.items():
            if name not in cl.key_names():
                raise PolicyError(f"max_capture_limits: unknown limit {name!r} (known: {', '.join(cl.key_names())})")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise PolicyError(f"max_capture_limits: {name} must be a number more than 0, not {v!r}")

    def limit_ceilings(self):
        """The most a request's capture limits may ask (a CaptureLimits): the
        hard CEILINGS, lowered by max_capture_limits and max_pause_deadline_s."""
        from probe_compiler import capture_limits as cl
        c = cl.CEILINGS
        low = {n: min(getattr(c, n), v) for n, v in self.max_capture_limits.items()}
        low["deadline_ms"] = min(low.get("deadline_ms", c.deadline_ms), self.max_pause_deadline_s * 1e3)
        return c.with_(**{n: int(v) if cl.is_integer_key(n) else float(v) for n, v in low.items()})

    def refusal(self, facts: ProcFacts) -> str | None:
        """Why the allow-list refuses this process, or None when it allows it."""
        if self.allow_exe and not any(fnmatch.fnmatchcase(facts.exe, g) for g in self.allow_exe):
            return f"its exe {facts.exe} matches no --allow-exe of this agent"
        if self.allow_uid and facts.uid not in self.allow_uid:
            return f"its uid {facts.uid} is not in this agent's --allow-uid"
        if self.allow_cgroup and not any(_under(c, p) for c in facts.cgroups for p in self.allow_cgroup):
            return f"its cgroup {facts.cgroup or '?'} is under no --allow-cgroup of this agent"
        return None

    @staticmethod
    def from_file(path: str) -> "Policy":
        """A JSON object with Policy's field names."""
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, ValueError) as e:
            raise PolicyError(f"{path}: {e}") from None
        if not isinstance(d, dict):
            raise PolicyError(f"{path}: expected a JSON object of policy settings")
        unknown = set(d) - set(Policy.__dataclass_fields__)
        if unknown:
            raise PolicyError(f"{path}: unknown settings {', '.join(sorted(unknown))}")
        return Policy(**d)


class RateLimiter:
    """At most one pause per process (pid and start time, so a reused pid is a
    new process) per `interval_s`. Thread-safe; forgets processes it has not
    seen for a while."""

    def __init__(self, interval_s: float, clock=time.monotonic):
        self.interval_s, self._clock = interval_s, clock
        self._last: dict[tuple[int, int], float] = {}
        self._lock = threading.Lock()

    def acquire(self, pid: int, start_time_ns: int) -> str | None:
        """None when this process may be paused now (and counts it), else why not."""
        now = self._clock()
        with self._lock:
            last = self._last.get((pid, start_time_ns))
            if last is not None and now - last < self.interval_s:
                return (f"rate limited: paused {now - last:.2f} s ago; this agent pauses a process "
                        f"at most once per {self.interval_s:g} s")
            self._last[(pid, start_time_ns)] = now
            if len(self._last) > 4096:
                self._last = {k: t for k, t in self._last.items() if now - t < self.interval_s}
            return None


class AuditLog:
    """One JSON line per request: when, who, what, which pids, the outcome.

    The file is created 0600 and appended to; every line is flushed before
    the request's answer is sent. `path` None writes to stderr."""

    def __init__(self, path: str | None):
        self.path = path
        self._lock = threading.Lock()
        self._f = None
        if path:
            d = os.path.dirname(os.path.abspath(path))
            os.makedirs(d, mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.fchmod(fd, 0o600)
            self._f = os.fdopen(fd, "a", buffering=1)

    def write(self, **entry) -> None:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9 // 10**6:03d}Z",
                 **entry}
        line = json.dumps(entry, separators=(",", ":"), default=str)
        with self._lock:
            if self._f is not None:
                self._f.write(line + "\n")
                self._f.flush()
            else:
                import sys
                print(f"audit: {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
