"""Turns physical frames into the logical frames Go prints, inlined ones expanded."""
from __future__ import annotations

from .records import FrameRecord, GoroutineRecord
from .unwind import PhysFrame, Unwound

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


def goroutine_record(target, f: dict, status: str, unwound: Unwound, *, thread_id, labels,
                     error: str | None, now_mono: int) -> tuple[GoroutineRecord, list]:
    """A goroutine as the snapshot stores it, from its g struct's fields `f`
    and its unwound stack, whichever executor copied them; also the logical
    frames with their physical frame's index (captures are placed on them).
    Pcs read from the process are moved back by the target's load bias."""
    layout, pcln = target.layout, target.pcln
    wr, since = f.get("waitreason", 0), f.get("waitsince", 0)
    # Go prints no creator for goroutine 1: runtime.main is started by the runtime itself.
    created = (created_by(pcln, f.get("gopc", 0) - target.bias) if f["goid"] != 1 and f.get("gopc")
               else (None, None, None))
    start_fn = pcln.func_for_pc(f.get("startpc", 0) - target.bias)
    rec = GoroutineRecord(
        goid=f["goid"], status=status,
        wait_reason=layout.wait_reasons.get(wr, "") if status == "waiting" and wr else "",
        wait_since_ns=(now_mono - since) if since and status in ("waiting", "syscall") else None,
        created_by=created[0], created_by_file=created[1], created_by_line=created[2],
        parent_goid=f.get("parentGoid") or None, labels=labels or {},
        is_system=bool(start_fn and start_fn.name.startswith("runtime.") and start_fn.name != "runtime.main"),
        thread_id=thread_id, error=error)
    logical = logical_frames(pcln, unwound.frames, target.bias)
    rec.frames = [frame for frame, _ in logical]
    return rec, logical


def created_by(pcln, gopc: int) -> tuple:
    """(function, file, line) of the go statement at gopc (link-time), Nones if unknown."""
    fn = pcln.func_for_pc(gopc) if gopc > 0 else None
    if fn is None:
        return None, None, None
    file, line = pcln.file_line(fn, gopc - 1 if gopc > fn.entry else gopc)
    return fn.name, file, line
