"""Shared by the eBPF tests: skip with what the machine lacks, one loaded
probe per test module, and what the kernel still holds of ours."""
from __future__ import annotations

import glob
import os
import subprocess

import pytest

PROG_NAMES = ("on_sigtramp", "on_more", "gstart", "frames")


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


def our_bpf_programs(settle_s: float = 2.0) -> list[str]:
    """Loaded BPF programs named like the probe's, once the kernel's deferred
    frees had up to settle_s to run (bpftool, else /proc/*/fdinfo)."""
    import time
    deadline = time.monotonic() + settle_s
    while True:
        found = _our_bpf_programs()
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _our_bpf_programs() -> list[str]:
    try:
        out = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True,
                             timeout=30).stdout
        return [line for line in out.splitlines()
                if any(f" name {n} " in line + " " for n in PROG_NAMES)]
    except (OSError, subprocess.TimeoutExpired):
        pass
    found = []
    for fdinfo in glob.glob("/proc/[0-9]*/fdinfo/*"):
        try:
            with open(fdinfo) as f:
                text = f.read()
        except OSError:
            continue
        if "prog_type:" in text:
            found.append(fdinfo)
    return found


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
