"""The agent interface: what the language server asks of the machine its targets run on.

`Agent` is the contract; `LocalAgent` implements it in this process with the
engine of `server.snapshot_job` (ptrace + process_vm_readv, as `exray
snapshot` does). The gRPC agent of a later issue implements the same three
calls remotely: list processes, fetch debug info by build id, run a plan.
Every call may block (seconds for a big binary's DWARF): the server calls
them from a worker thread, never from its event loop.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

from agent.records import ProcessRecord


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    exe: str                    # path of the executable (" (deleted)" kept when replaced)
    build_id: str | None        # Go build id; None when it could not be read
    go_version: str | None


class Cancelled(Exception):
    """run_plan stopped because its `cancel` event was set."""


@runtime_checkable
class Agent(Protocol):
    def list_processes(self) -> list[ProcessInfo]:
        """The Go processes this agent can snapshot."""
        ...

    def debug_info(self, build_id: str) -> str | bytes | None:
        """The binary (with its DWARF) of `build_id`: a local path, or its bytes
        for a remote agent; None when no running process has that build id."""
        ...

    def run_plan(self, pids: list[int], spec, options=None,
                 cancel: threading.Event | None = None,
                 on_process: Callable[[int, int, ProcessRecord], None] | None = None
                 ) -> list[ProcessRecord]:
        """Snapshot `pids` with the probes `spec` asks for. A process that cannot be
        snapshotted gets a record with its error. Raises Cancelled when `cancel`
        is set before the last process; `on_process(i, n, record)` after each."""
        ...


def _is_go(exe: str) -> tuple[str | None, str | None] | None:
    from probe_compiler.gobinary import GoBinary
    try:
        b = GoBinary.open(exe)
    except Exception:           # not ELF, not Go, unreadable: not ours
        return None
    try:
        return b.build_id, getattr(b, "go_version", None)
    finally:
        b.close()


class LocalAgent:
    """The agent for processes on this machine, run in-process.

    Targets (binary, DWARF index, plan) are cached per spec text, so a second
    snapshot with an unchanged exray.yaml loads nothing again. `delay_s` slows
    each process down (tests of cancellation use it; EXRAY_LSP_TEST_DELAY)."""

    MAX_SPECS = 4

    def __init__(self, delay_s: float | None = None):
        self._caches: dict[str, dict] = {}
        self._lock = threading.Lock()
        if delay_s is None:
            try:
                delay_s = float(os.environ.get("EXRAY_LSP_TEST_DELAY", "0") or 0)
            except ValueError:
                delay_s = 0.0
        self.delay_s = delay_s

    def list_processes(self) -> list[ProcessInfo]:
        from server.snapshot_job import _processes
        out = []
        for pid, exe in _processes():
            info = _is_go(f"/proc/{pid}/exe")
            if info:
                out.append(ProcessInfo(pid, exe, info[0], info[1]))
        return out

    def debug_info(self, build_id: str) -> str | None:
        for p in self.list_processes():
            if p.build_id == build_id:
                return f"/proc/{p.pid}/exe"
        return None

    def _cache_for(self, spec) -> dict:
        key = spec.text if spec is not None else ""
        with self._lock:
            cache = self._caches.pop(key, None)
            if cache is None:
                cache = {}
            self._caches[key] = cache           # most recent last
            while len(self._caches) > self.MAX_SPECS:
                self._caches.pop(next(iter(self._caches)))
            return cache

    def run_plan(self, pids, spec, options=None, cancel=None, on_process=None):
        from agent.records import ProcessRecord
        from agent.snapshot import snapshot_process
        from server.snapshot_job import load_targets
        cache = self._cache_for(spec)
        # The spec against every binary at once (a function only some have is
        # no error), before any process is paused; then one process at a time
        # for progress and cancellation.
        loaded = load_targets(pids, spec, cache)
        records = []
        for i, pid in enumerate(pids):
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"cancelled after {i} of {len(pids)} processes")
            if self.delay_s:
                if cancel is not None and cancel.wait(self.delay_s):
                    raise Cancelled(f"cancelled after {i} of {len(pids)} processes")
                if cancel is None:
                    time.sleep(self.delay_s)
            t = loaded[pid]
            rec = t if isinstance(t, ProcessRecord) else snapshot_process(pid, t, options)
            records.append(rec)
            if on_process is not None:
                on_process(i + 1, len(pids), rec)
        return records
