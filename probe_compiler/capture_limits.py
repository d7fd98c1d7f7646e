"""Bounds on what a snapshot reads from a paused process (docs/read-program.md).

One value, passed down (Delve's LoadConfig, dyninst's CaptureConfig):
`CaptureLimits` says how long a process may stay paused and how much of its
memory a snapshot may copy and decode. The decoder's part is `Budgets`
(probe_compiler/decode.py), taken from it by `budgets()`; the agent's
pause, stack copies, unwinder and pprof labels read the rest. `DEFAULTS`
hold when nobody says otherwise. A spec's `limits:` (beside the SQL bounds
of probe_compiler/sql_limits.py) and `exray snapshot`'s flags may raise or
lower them, never past `CEILINGS`: a committed spec is untrusted input, and
a pause or a copy without a bound is how a debugger hurts the service it
looks at.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

KiB, MiB = 1 << 10, 1 << 20


@dataclass(frozen=True)
class CaptureLimits:
    # -- the pause
    # Hard bound on one process's pause: past it the process is resumed and
    # the snapshot of it fails with an error that says so (agent/ptrace.py).
    deadline_ms: float = 2000.0
    # Captures stop once the pause has used this share of the deadline; the
    # frames not read get rows saying why, and the stacks (already copied)
    # complete the snapshot instead of the deadline failing all of it.
    capture_share: float = 0.5

    # -- stacks
    # Bytes of one goroutine's stack copied in the pause (from its sp up);
    # a deeper stack is read on word by word only by the reference reader.
    stack_copy_bytes: int = 256 * KiB
    # Frames one goroutine's unwind walks (a corrupt or endless chain stops
    # here with an error on the goroutine, as Go's traceback cuts at 100).
    max_frames: int = 4096
    # pprof label pairs read per goroutine, and the bytes of each key and
    # value (labels are user strings: a huge one must not stretch the pause).
    max_labels: int = 64
    label_bytes: int = 256

    # -- captured values (the decoder's Budgets)
    # Bytes of one string (or []byte shown as text); the rest is cut with a
    # "bytes" truncation marker.
    string_bytes: int = 256
    # Elements of one slice, array or map; more are cut with an "elements" marker.
    elements: int = 64
    # Indirections (pointers, slice arrays, maps, interface data) followed
    # from a root: cycles and deep structures stop with a "depth" marker.
    depth: int = 8
    # Bytes one captured frame may read in all, so one frame's huge value
    # can't starve the others of the snapshot's budget.
    frame_bytes: int = 64 * KiB
    # Bytes all captured frames of one process may read, in goroutine order.
    snapshot_bytes: int = 16 * MiB

    # -- the agent's own memory and look-ups
    # The buffer faulted in before a pause for its bulk reads (sized from
    # allglen and what a goroutine cost last time), at most this much.
    reserve_bytes: int = 256 * MiB
    # Captured functions spanning more pcs than this are not kept as a pc
    # set (the reference reader then unwinds every goroutine in the pause).
    max_capture_pcs: int = 1 << 20

    def with_(self, **kw) -> "CaptureLimits":
        return replace(self, **kw)

    @property
    def deadline_s(self) -> float:
        return self.deadline_ms / 1e3

    def budgets(self):
        """The decoder's part (probe_compiler.decode.Budgets)."""
        from .decode import Budgets
        return Budgets(string_bytes=self.string_bytes, elements=self.elements, depth=self.depth,
                       frame_bytes=self.frame_bytes, snapshot_bytes=self.snapshot_bytes)

    def over_ceiling(self) -> list[str]:
        """The bounds that are out of range, as 'name is v, above its ceiling c' texts."""
        out = []
        for name in key_names():
            v, c = getattr(self, name), getattr(CEILINGS, name)
            if not v > 0:
                out.append(f"{name} must be more than 0")
            elif v > c:
                out.append(f"{name} is {text(v)}, above its ceiling {text(c)}")
        return out

    def checked(self) -> "CaptureLimits":
        bad = self.over_ceiling()
        if bad:
            raise ValueError("capture limits: " + "; ".join(bad))
        return self


DEFAULTS = CaptureLimits()
# What neither a spec nor a flag can raise a bound past.
CEILINGS = CaptureLimits(deadline_ms=10_000.0, capture_share=1.0, stack_copy_bytes=8 * MiB,
                         max_frames=100_000, max_labels=1024, label_bytes=64 * KiB,
                         string_bytes=1 * MiB, elements=100_000, depth=64, frame_bytes=64 * MiB,
                         snapshot_bytes=1024 * MiB, reserve_bytes=2048 * MiB, max_capture_pcs=1 << 24)

# Why each bound exists, in a line, for the JSON Schema and the CLI's help (keys as in the spec).
DOCS = {
    "deadline_ms": "milliseconds one process may stay paused (past it: resumed, an error)",
    "capture_share": "share of the deadline the captures may use before the rest are skipped",
    "stack_copy_bytes": "bytes of each goroutine's stack copied in the pause",
    "max_frames": "frames one goroutine's unwind walks",
    "max_labels": "pprof label pairs read per goroutine",
    "label_bytes": "bytes of each pprof label key and value",
    "string_bytes": "bytes of one captured string",
    "elements": "elements of one captured slice, array or map",
    "depth": "pointer indirections followed from a captured root",
    "frame_bytes": "bytes one captured frame may read",
    "snapshot_bytes": "bytes all captured frames of a process may read",
    "reserve_bytes": "bytes of read buffer faulted in before a pause",
    "max_capture_pcs": "pcs of captured code kept as a set for the pause's candidate test",
}


WHERE = "docs/read-program.md"        # where the bounds are explained


def key_names() -> list[str]:
    return [f.name for f in fields(CaptureLimits)]


def is_integer_key(name: str) -> bool:
    return name not in ("deadline_ms", "capture_share")


def text(v: float) -> str:
    if isinstance(v, float) and v.is_integer() and v >= 1:
        v = int(v)
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"
