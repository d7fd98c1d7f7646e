"""Turns physical frames into the logical frames Go prints, inlined ones expanded."""
from __future__ import annotations

from .records import FrameRecord
from .unwind import PhysFrame

# Go's showframe at the default traceback level: what `runtime.Stack` and a
# crash print unless GOTRACEBACK=system. Ex-Ray keeps every frame and marks
# these hidden, so users can see both views.
_ELIDE_WRAPPER_UNLESS_CALLEE = frozenset({"gopanic", "sigpanic", "panicwrap"})
_ALWAYS_SHOWN = frozenset({"runFinalizers", "runCleanups"})


def hidden(name: str, func_id: str, first: bool, callee_id: str) -> bool:
    if func_id == "wrapper" and callee_id not in _ELIDE_WRAPPER_UNLESS_CALLEE:
        return True
    if func_id in _ALWAYS_SHOWN or (name == "runtime.gopanic" and not first):
        return False
    if "." not in name:
        return True
    if name.startswith("runtime."):
        rest = name[len("runtime."):]
        return not (rest[:1].isupper())
    return False


def logical_frames(pcln, phys: list[PhysFrame], bias: int = 0) -> list[tuple[FrameRecord, int]]:
    """Every logical frame, innermost first, with the index of its physical frame.
    Records hold pcs as the process has them: link-time + bias (PIE)."""
    out: list[tuple[FrameRecord, int]] = []
    callee_id = "normal"
    for i, pf in enumerate(phys):
        for sf in pcln.frames_at(pf.fn, pf.lookup_pc):
            rec = FrameRecord(
                depth=len(out), function=sf.function, file=sf.file, line=sf.line,
                pc=pf.pc + bias, inlined=sf.inlined, entry=pf.fn.entry + bias,
                hidden=hidden(sf.function, sf.func_id, not out, callee_id))
            out.append((rec, i))
            callee_id = sf.func_id
    return out
