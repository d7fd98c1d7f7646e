"""The stack probe's plan: plain data, filled from the binary's RuntimeLayout.

The probe (probe.bpf.c) is one fixed program; what it needs to know about a
target lives here and is written into its `plan` map before the pause: the
g/m field offsets, where allgs is (load bias added), which status codes mean
a dead or a running goroutine, and the budgets. Nothing here touches the
kernel: `pack()` gives the bytes of `struct plan`, and tests compare them
with no BPF at all.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from probe_compiler.capture_limits import DEFAULTS

# Must match the probe's sizes (probe.bpf.c).
G_MAX = 1024
TOP_MAX = 8192
FULL_BYTES = 1024              # with captures, a whole stack kept for its chain walk is at most this
WORK_MAX = 65536
ABSENT = 0xFFFFFFFF            # an offset the layout lacks: the probe reads 0 there

# struct plan: 5 u64, 19 u32 and padding; then the captures' 3 u64, 8 u32 and 4 u64 (200 bytes).
_PLAN = struct.Struct("<5Q19I4x3Q8I4Q")
NO_PROG = 0xFFFFFFFF           # plan.prog of a stacks-only walk

# The g fields the probe reads itself (the rest are parsed from its copy).
_PROBE_G_FIELDS = ("atomicstatus", "stack.lo", "stack.hi", "m", "sched.pc", "sched.sp", "sched.bp",
                   "syscallsp", "syscallpc", "syscallbp")
DEAD = ("dead", "deadextra", "idle")
PARKED = ("waiting",)


@dataclass(frozen=True)
class StackBudgets:
    """How much the stack probe copies; one value, passed down (docs/ebpf.md)."""
    max_frames: int = DEFAULTS.max_frames   # frames per goroutine: the unwinder's own limit
    max_gs: int = WORK_MAX     # allgs entries looked at; the rest are reported as cut
    top_parked: int = 64       # bytes at sp of a parked goroutine (g.sched with a frame pointer)
    top_other: int = 2048      # bytes at sp otherwise: running, in a syscall, no frame pointer
    # A stack using at most this many bytes is copied whole instead of walked
    # by frame pointers: one read instead of one per frame (0: always walk).
    full_stack: int = 1024


@dataclass(frozen=True)
class CapturePlan:
    """Where a target's capture tables sit in the probe, and the budgets the
    probe copies by (plain data; capplan.py loads the tables)."""
    at: "Placement"            # capplan.Placement: the tables' slot and array runs
    types_base: int            # moduledata.types as the process sees it
    bias: int                  # load bias
    cap_bytes: int             # bytes all captures may copy
    depth: int
    elements: int
    string_bytes: int
    site_lo: int = 0           # the least and the greatest return address with a site (link-time)
    site_hi: int = 0
    # The binary's read-only data as the process maps it: bytes wholly inside
    # (string literals) are not copied; the decoder reads them from the file.
    ro_lo: int = 0
    ro_hi: int = 0

    def pack_fields(self) -> tuple:
        a = self.at
        return (self.types_base, self.bias, self.cap_bytes, a.slot, self.depth, self.elements,
                self.string_bytes, a.shape_base, a.n_shapes, a.map_base, a.n_maps, self.site_lo, self.site_hi,
                self.ro_lo, self.ro_hi)


@dataclass(frozen=True)
class StackPlan:
    tgid: int
    allgs_addr: int            # runtime addresses: the layout already rebased by the load bias
    allglen_addr: int
    g_copy: int                # bytes of each g to copy: through the last field Python parses
    g_offsets: dict
    m_off_procid: int
    gscan: int
    dead_mask: int
    running_mask: int
    parked_mask: int = 0       # statuses gopark leaves (their g.sched is a call site)
    budgets: StackBudgets = StackBudgets()
    captures: "CapturePlan | None" = None    # the read program's place in the probe (capplan.py)

    @staticmethod
    def from_layout(layout, tgid: int, g_fields: dict[str, int], budgets: StackBudgets | None = None
                    ) -> "StackPlan":
        """`layout` is the RuntimeLayout as the process sees it (rebased);
        `g_fields` the g fields Python parses (name -> width)."""
        offs = layout.g_offsets
        missing = [f for f in ("atomicstatus", "stack.lo", "stack.hi", "sched.pc", "sched.sp", "sched.bp")
                   if f not in offs]
        if missing:
            raise ValueError(f"runtime.g lacks {', '.join(missing)}: the stack probe can't walk it")
        if "procid" not in layout.m_offsets:
            raise ValueError("runtime.m lacks procid: running goroutines can't be matched to threads")
        end = max(offs[k] + w for k, w in g_fields.items() if k in offs)
        g_copy = -(-end // 8) * 8
        if g_copy >= G_MAX:
            raise ValueError(f"the g fields end at byte {end}; the probe copies at most {G_MAX - 8}")
        return StackPlan(
            tgid=tgid, allgs_addr=layout.allgs_addr, allglen_addr=layout.allglen_addr, g_copy=g_copy,
            g_offsets={k: offs[k] for k in _PROBE_G_FIELDS if k in offs},
            m_off_procid=layout.m_offsets["procid"], gscan=layout.gscan,
            dead_mask=_mask(layout, DEAD), running_mask=_mask(layout, ("running",)),
            parked_mask=_mask(layout, PARKED),
            budgets=budgets or StackBudgets())

    def pack(self) -> bytes:
        o, b = self.g_offsets, self.budgets
        return _PLAN.pack(
            self.allgs_addr, self.allglen_addr, self.dead_mask, self.running_mask, self.parked_mask,
            self.tgid, self.gscan, self.g_copy,
            o["atomicstatus"], o["stack.lo"], o["stack.hi"], o.get("m", ABSENT),
            o["sched.pc"], o["sched.sp"], o["sched.bp"],
            o.get("syscallsp", ABSENT), o.get("syscallpc", ABSENT), o.get("syscallbp", ABSENT),
            self.m_off_procid, min(b.top_parked, TOP_MAX - 8) & ~7, min(b.top_other, TOP_MAX - 8) & ~7,
            b.max_frames, min(b.max_gs, WORK_MAX),
            min(b.full_stack, FULL_BYTES - 8 if self.captures else TOP_MAX - 8),   # captures: kept for their chain
            *(self.captures.pack_fields() if self.captures else (0, 0, 0, NO_PROG, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)))


def _mask(layout, names) -> int:
    """Status codes (as the binary's runtime numbers them) named `names`, as a bit set."""
    codes = {code for table in (layout.status_names, layout.status_constants)
             for code, name in table.items() if name in names}
    bad = [c for c in codes if not 0 <= c < 64]
    if bad:
        raise ValueError(f"status codes {bad} don't fit the probe's 64-bit status masks")
    return sum(1 << c for c in codes)
