"""What one process's snapshot produces: plain records, no behaviour.

The executors (user-space reader now, eBPF later) fill these; the server's
store writes them into the SQLite snapshot. Field names are the column names
of the built-in tables (docs/snapshot-schema.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FrameRecord:
    depth: int                 # 0 = innermost; inlined frames get their own depth
    function: str
    file: str
    line: int
    pc: int                    # the physical frame's pc (return address for outer frames)
    inlined: bool = False
    hidden: bool = False       # Go's default traceback would not show it (runtime internals, wrappers)
    entry: int = 0             # entry pc of the physical function


@dataclass
class CaptureRecord:
    """The captured expressions of one frame of a captured function."""
    function: str              # Go symbol from the spec
    depth: int                 # frame depth, as in FrameRecord
    values: dict[str, Any]     # column name -> JSON-able value (None: not available at this pc)
    raw: dict[str, Any]        # column name -> value with pointer addresses kept (__addr)
    errors: dict[str, str] = field(default_factory=dict)  # column name -> why it is NULL
    instance: str | None = None  # the binary's function, where `function` is a generic's `[...]`


@dataclass
class GoroutineRecord:
    goid: int
    status: str                # "running", "runnable", "waiting", "syscall", ...: the runtime's own words
    wait_reason: str           # as Go prints it: "chan receive", "sleep", ""
    wait_since_ns: int | None  # how long it has waited, if the runtime knows
    created_by: str | None     # function that ran `go` (from gopc)
    created_by_file: str | None
    created_by_line: int | None
    parent_goid: int | None
    labels: dict[str, str]
    is_system: bool            # a runtime goroutine Go hides at GOTRACEBACK<system
    thread_id: int | None      # the OS thread running it, if running
    frames: list[FrameRecord] = field(default_factory=list)
    captures: list[CaptureRecord] = field(default_factory=list)
    error: str | None = None   # unwinding stopped early and why


@dataclass
class ProcessRecord:
    pid: int
    host: str
    exe: str
    build_id: str | None = None
    go_version: str | None = None
    main_module: str | None = None
    vcs_revision: str | None = None
    captured_at_ns: int = 0    # wall clock, ns since the epoch
    pause_ns: int | None = None
    error: str | None = None
    goroutines: list[GoroutineRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    truncated: bool = False    # the per-snapshot byte budget ran out
    load_bias: int | None = None  # where the binary was loaded minus its link address (PIE)
    # Filled by the control plane for a process snapshotted through an agent (server/fleet.py):
    agent: str | None = None          # the agent's address
    clock_offset_ns: int | None = None  # the host's clock minus the control plane's
    skew_ns: int | None = None        # capture start minus the agreed pause instant, control-plane clock
    # Filled by agent.snapshot.snapshot_processes, which pauses a snapshot's processes together:
    pause_start_ns: int | None = None   # CLOCK_MONOTONIC ns when every thread of it was stopped
    pause_skew_ns: int | None = None    # its pause start minus the earliest one of the same call
