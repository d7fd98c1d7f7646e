"""Shared by the eBPF tests: skip with what the machine lacks, one loaded
probe per test module, and what the kernel still holds of ours."""
from __future__ import annotations

import glob
import os
import subprocess

import pytest


def require_ebpf():
    from agent.ebpf.availability import why_unavailable
    why = why_unavailable()
    if why:
        pytest.skip(f"the eBPF executor can't run here: {why}")


def our_uprobes() -> list[str]:
    """uprobe_events lines of Ex-Ray's probe (bcc's PMU attach makes none; a
    tracefs fallback would be named exray_...)."""
    for path in ("/sys/kernel/tracing/uprobe_events", "/sys/kernel/debug/tracing/uprobe_events"):
        try:
            with open(path) as f:
                return [line for line in f.read().splitlines() if "exray" in line]
        except OSError:
            continue
    return []


def uprobe_fds_of(pid: int) -> int:
    """perf-event fds this process holds (a uprobe is one)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[perf_event]":
                n += 1
        except OSError:
            pass
    return n


def prog_ids(probe) -> set[int]:
    """The kernel ids of a StackProbe's programs (from this process's fdinfo):
    what a leak check looks for, whatever other probes run beside it."""
    ids = set()
    for fd in probe._kern.progs.values():
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
    return ids


def loaded_prog_ids(ids: set[int], settle_s: float = 2.0) -> set[int]:
    """Which of `ids` are still loaded (bpftool; else any process's fdinfo),
    once the kernel's deferred frees had settle_s to run."""
    import time
    deadline = time.monotonic() + settle_s
    while True:
        left = ids & _live_prog_ids()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _live_prog_ids() -> set[int]:
    try:
        out = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True,
                             timeout=30).stdout
        return {int(line.split(":", 1)[0]) for line in out.splitlines()
                if line[:1].isdigit() and ":" in line}
    except (OSError, subprocess.TimeoutExpired):
        pass
    live = set()
    for fdinfo in glob.glob("/proc/[0-9]*/fdinfo/*"):
        try:
            with open(fdinfo) as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        live.add(int(line.split()[1]))
        except (OSError, ValueError):
            continue
    return live
