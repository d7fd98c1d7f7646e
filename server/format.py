"""Text formatting for the CLI: pure functions from rows to strings.

`format_goroutines` groups identical stacks the way people read Go tracebacks;
`format_table` prints query results as an aligned table.
"""
from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

ELLIPSIS = "…"


# ------------------------------------------------------------------ durations

def format_duration(ns: int | None) -> str:
    """A short human duration: 850ns, 12.3µs, 45.2ms, 12.3s, 5m12s, 2h5m12s."""
    if ns is None:
        return ""
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.3g}µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.3g}ms"
    s = ns / 1e9
    if s < 60:
        return f"{s:.3g}s"
    total = int(s)
    h, rem = divmod(total, 3600)
    m, sec = divmod(rem, 60)
    return (f"{h}h" if h else "") + f"{m}m{sec}s"


# ------------------------------------------------------------------ goroutines

@dataclass
class Group:
    status: str
    wait_reason: str
    frames: tuple[tuple[str, str, int], ...]       # (function, file, line)
    created_by: tuple[str, str, int | None, int | None] | None  # function, file, line, parent goid
    error: str | None
    goids: list[int] = field(default_factory=list)
    longest_ns: int | None = None
    longest_goid: int | None = None

    @property
    def count(self) -> int:
        return len(self.goids)


def group_goroutines(goroutines: Iterable[dict], frames: dict[int, list[dict]],
                     show_all: bool = False) -> list[Group]:
    """Group one process's goroutines by status, wait reason, frames and creator.

    `goroutines`: rows with the columns of the goroutines table; `frames`: goid ->
    its frame rows, innermost first. Without `show_all`, system goroutines and
    hidden frames are left out, as in Go's default traceback. Groups come out
    largest first, then by longest wait."""
    groups: dict[tuple, Group] = {}
    for g in goroutines:
        if g.get("is_system") and not show_all:
            continue
        fs = tuple((f["function"], f["file"], f["line"]) for f in frames.get(g["goid"], [])
                   if show_all or not f.get("hidden"))
        created = None
        if g.get("created_by"):
            created = (g["created_by"], g.get("created_by_file") or "?", g.get("created_by_line"),
                       g.get("parent_goid"))
        key = (g.get("status") or "", g.get("wait_reason") or "", fs,
               created[:3] if created else None, g.get("error"))
        grp = groups.get(key)
        if grp is None:
            grp = groups[key] = Group(key[0], key[1], fs, created, g.get("error"))
        grp.goids.append(g["goid"])
        w = g.get("wait_ns")
        if w is not None and (grp.longest_ns is None or w > grp.longest_ns
                              or (w == grp.longest_ns and g["goid"] < grp.longest_goid)):
            grp.longest_ns, grp.longest_goid = w, g["goid"]
    out = list(groups.values())
    for grp in out:
        grp.goids.sort()
    out.sort(key=lambda gr: (-gr.count, -(gr.longest_ns or -1), gr.goids[0]))
    return out


def _state(grp: Group) -> str:
    if grp.wait_reason and grp.status in ("waiting", ""):
        return grp.wait_reason
    if grp.wait_reason:
        return f"{grp.status}, {grp.wait_reason}"
    return grp.status or "unknown"


def format_group(grp: Group) -> str:
    n = grp.count
    head = f"{n} goroutine{'s' if n != 1 else ''} [{_state(grp)}]"
    if grp.longest_ns is not None:
        who = f"goroutine {grp.longest_goid}"
        head += f" waiting up to {format_duration(grp.longest_ns)} ({who})" if n > 1 \
            else f" waiting {format_duration(grp.longest_ns)} ({who})"
    else:
        head += f" (goroutine {grp.goids[0]}" + (", …" if n > 1 else "") + ")"
    lines = [head + ":"]
    for fn, file, line in grp.frames:
        lines.append(fn)
        lines.append(f"\t{file}:{line}")
    if not grp.frames:
        lines.append("\t(no frames)")
    if grp.error:
        lines.append(f"\t(stack incomplete: {grp.error})")
    if grp.created_by:
        fn, file, line, parent = grp.created_by
        lines.append(f"created by {fn}" + (f" in goroutine {parent}" if parent and n == 1 else ""))
        lines.append(f"\t{file}:{line if line is not None else '?'}")
    return "\n".join(lines)


def format_process_header(p: dict, total: int, shown: int, groups: int) -> str:
    parts = [f"process {p['id']}: pid {p['pid']}"]
    if p.get("host"):
        parts[0] += f" on {p['host']}"
    parts.append(p.get("exe") or "?")
    if p.get("go_version"):
        parts.append(p["go_version"])
    if p.get("pause_ns") is not None:
        parts.append(f"paused {format_duration(p['pause_ns'])}")
    line = "== " + ", ".join(parts)
    if p.get("error"):
        return line + f"\nerror: {p['error']}"
    tail = f"{total} goroutine{'s' if total != 1 else ''} in {groups} group{'s' if groups != 1 else ''}"
    if shown != total:
        tail += f" ({total - shown} system goroutine{'s' if total - shown != 1 else ''} hidden; --all shows them)"
    out = line + "\n" + tail
    for w in p.get("warnings") or []:
        out += f"\nwarning: {w}"
    return out


def format_goroutines(processes: Sequence[dict], goroutines: dict[int, list[dict]],
                      frames: dict[tuple[int, int], list[dict]], show_all: bool = False) -> str:
    """The `exray goroutines` report. `goroutines`: process id -> rows;
    `frames`: (process id, goid) -> frame rows, innermost first."""
    blocks = []
    for p in processes:
        gs = goroutines.get(p["id"], [])
        fr = {goid: v for (pid, goid), v in frames.items() if pid == p["id"]}
        groups = group_goroutines(gs, fr, show_all)
        shown = sum(g.count for g in groups)
        blocks.append(format_process_header(p, len(gs), shown, len(groups)))
        blocks.extend(format_group(g) for g in groups)
    return "\n\n".join(blocks) + "\n"


# ----------------------------------------------------------------------- tables

def _char_width(c: str) -> int:
    if unicodedata.combining(c):
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


def text_width(s: str) -> int:
    if s.isascii():
        return len(s)
    return sum(_char_width(c) for c in s)


def cut(s: str, width: int) -> str:
    if text_width(s) <= width:
        return s
    out, w = [], 0
    for c in s:
        cw = _char_width(c)
        if w + cw > width - 1:
            break
        out.append(c)
        w += cw
    return "".join(out) + ELLIPSIS


def format_cell(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bytes):
        return "x'" + v.hex() + "'"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        s = v
        if s[:1] in ("{", "[") and s[-1:] in ("}", "]"):
            try:
                s = json.dumps(json.loads(s), separators=(",", ":"), ensure_ascii=False)
            except ValueError:
                pass
        return s.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return str(v)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 60) -> str:
    """An aligned text table; numbers right-aligned, long cells cut with …."""
    if not columns:
        return "(no result columns)\n"
    cells = [[cut(format_cell(v), max_width) for v in row] for row in rows]
    heads = [cut(c, max_width) for c in columns]
    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    numeric = [any(is_num(r[i]) for r in rows) and all(is_num(r[i]) or r[i] is None for r in rows)
               for i in range(len(columns))]
    widths = [max([text_width(h)] + [text_width(r[i]) for r in cells]) for i, h in enumerate(heads)]

    def line(vals: Sequence[str]) -> str:
        out = []
        for i, v in enumerate(vals):
            pad = " " * (widths[i] - text_width(v))
            out.append(pad + v if numeric[i] else v + pad)
        return "  ".join(out).rstrip()

    lines = [line(heads), "  ".join("-" * w for w in widths)]
    lines += [line(r) for r in cells]
    n = len(rows)
    lines.append(f"({n} row{'s' if n != 1 else ''})")
    return "\n".join(lines) + "\n"
