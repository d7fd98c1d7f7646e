"""Can this machine run the eBPF executor? One answer, with the reason when not.

`auto` asks this before every snapshot and falls back to ptrace, saying why;
`--executor ebpf` turns the reason into the process's error. Checked, in the
order a user fixes them: privileges, the architecture, bcc, kernel headers
for bcc's compile, a way to make uprobes, kernel lockdown.
"""
from __future__ import annotations

import os
import platform
from functools import lru_cache

CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 19, 21, 38, 39


def _cap_eff() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def why_unavailable() -> str | None:
    """None when the eBPF executor can run here; else what the machine lacks."""
    return _why()


@lru_cache(maxsize=1)
def _why() -> str | None:
    caps = _cap_eff()
    has = lambda c: bool(caps >> c & 1)   # noqa: E731
    if not (has(CAP_BPF) or has(CAP_SYS_ADMIN)):
        return "no CAP_BPF (run the agent as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE)"
    if not (has(CAP_PERFMON) or has(CAP_SYS_ADMIN)):
        return "no CAP_PERFMON, which uprobes need (grant it, or run as root)"
    if not has(CAP_SYS_PTRACE):
        return "no CAP_SYS_PTRACE: the probe's pause stops threads with ptrace"
    if platform.machine() != "x86_64":
        return f"the probe is written for x86_64 (this machine is {platform.machine()})"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return ("bcc is not importable: install Debian's python3-bpfcc and make the venv with "
                "--system-site-packages (scripts/setup.sh does both)")
    release = os.uname().release
    build = f"/lib/modules/{release}/build"
    if not os.environ.get("BCC_KERNEL_SOURCE") and not os.path.exists(os.path.join(build, "include")) \
            and not _cached():
        return (f"no kernel headers at {build} for bcc's compile (and no compiled probe cached for this "
                "kernel): install linux-headers-amd64 and link build/source to its -amd64/-common "
                "folders (scripts/setup.sh does)")
    if not (os.path.exists("/sys/bus/event_source/devices/uprobe/type")
            or os.path.exists("/sys/kernel/tracing/uprobe_events")
            or os.path.exists("/sys/kernel/debug/tracing/uprobe_events")):
        return ("neither the uprobe perf PMU nor tracefs is available: mount -t tracefs nodev "
                "/sys/kernel/tracing (or build the kernel with CONFIG_UPROBE_EVENTS)")
    try:
        with open("/sys/kernel/security/lockdown") as f:
            if "[confidentiality]" in f.read():
                return "the kernel is locked down (confidentiality): BPF may not read memory"
    except OSError:
        pass
    return None


def _cached() -> bool:
    """A compiled probe for this kernel is in the cache (no compiler needed)."""
    from . import loader
    from .probe import cflags, SOURCE
    try:
        key = loader.cache_key(SOURCE.read_text(), cflags())
    except OSError:
        return False
    return (loader.cache_dir() / f"{key}.json").exists()

