"""Text formatting for the CLI: pure functions from rows to strings.

`format_goroutines` groups identical stacks the way people read Go tracebacks;
`format_table` prints query results as an aligned table.
"""
from __future__ import annotations

import fnmatch
import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from probe_compiler import generics

from .store import SnapshotError

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


def _goroutines(n: int) -> str:
    return f"{n} goroutine{'s' if n != 1 else ''}"


def format_process_header(p: dict, total: int, shown: int, groups: int, matched: int | None = None) -> str:
    """`matched`: how many goroutines passed the filters (None: no filters)."""
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
    in_groups = f"in {groups} group{'s' if groups != 1 else ''}"
    if matched is None:
        tail, kept, which = f"{_goroutines(total)} {in_groups}", total, ""
    else:
        tail, kept, which = f"{matched} of {_goroutines(total)} match, {in_groups}", matched, " matching"
    if shown != kept:
        n = kept - shown
        tail += f" ({n}{which} system goroutine{'s' if n != 1 else ''} hidden; --all shows them)"
    out = line + "\n" + tail
    for w in p.get("warnings") or []:
        out += f"\nwarning: {w}"
    return out


def format_goroutines(processes: Sequence[dict], goroutines: dict[int, list[dict]],
                      frames: dict[tuple[int, int], list[dict]], show_all: bool = False,
                      matched: set[tuple[int, int]] | None = None, filter_text: str = "") -> str:
    """The `exray goroutines` report. `goroutines`: process id -> rows;
    `frames`: (process id, goid) -> frame rows, innermost first; `matched`:
    the (process id, goid) pairs that passed the filters described by
    `filter_text` (None: no filters, every goroutine)."""
    blocks = []
    if matched is not None:
        total = sum(len(gs) for gs in goroutines.values())
        blocks.append(f"{len(matched)} of {_goroutines(total)} match {filter_text}")
    for p in processes:
        gs = goroutines.get(p["id"], [])
        kept = gs if matched is None else [g for g in gs if (p["id"], g["goid"]) in matched]
        fr = {goid: v for (pid, goid), v in frames.items() if pid == p["id"]}
        groups = group_goroutines(kept, fr, show_all)
        shown = sum(g.count for g in groups)
        blocks.append(format_process_header(p, len(gs), shown, len(groups),
                                            None if matched is None else len(kept)))
        blocks.extend(format_group(g) for g in groups)
    return "\n\n".join(blocks) + "\n"


# ------------------------------------------------------------ goroutine filters
#
# `exray goroutines --function PAT --status S --value TABLE.COLUMN=VALUE --label K=V`.
# Different filters combine with AND. Repeating --function or --value or --label
# asks for all of them; repeating --status asks for any of them (a goroutine has
# one state). Bad filters raise FilterError, which the CLI prints as `error: …`.

GLOB_CHARS = "*?["


class FilterError(SnapshotError):
    """A goroutine filter that cannot apply to this snapshot (syntax, table, column)."""


def _is_glob(pat: str) -> bool:
    return any(c in pat for c in GLOB_CHARS)


def function_matches(pat: str, function: str) -> bool:
    """Go symbols are case-sensitive: a substring, or a glob over the whole name.
    `[...]` stands for any type arguments, as in the spec: `main.Map[...]`
    matches `main.Map[go.shape.int]` (not a glob: brackets are Go's here)."""
    if generics.ANY in pat:
        return pat in generics.generic_pattern(function)
    return fnmatch.fnmatchcase(function, pat) if _is_glob(pat) else pat in function


def status_matches(pat: str, status: str, wait_reason: str) -> bool:
    """`running`, `waiting`, … or a wait reason (`chan receive`, `sync.Mutex.Lock`),
    as Go prints them but in any case; a glob when it has * ? [."""
    p = " ".join(pat.split()).lower()
    for have in (status or "", wait_reason or ""):
        h = have.lower()
        if (fnmatch.fnmatchcase(h, p) if _is_glob(p) else h == p) and h:
            return True
    return False


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _equal(cell: Any, want: Any, raw: str) -> bool:
    # `id=42` matches the number 42 and the string "42"; `name=srv` the string "srv".
    if _num(cell) and _num(want):
        return cell == want
    if type(cell) is not type(want) and isinstance(cell, str):
        return cell == raw
    return type(cell) is type(want) and cell == want     # True is not 1 here


def _order(op: str, cell: Any, want: Any) -> bool:
    if not ((_num(cell) and _num(want)) or (isinstance(cell, str) and isinstance(want, str))):
        return False      # no order between a number and a string: no match, not an error
    return VALUE_ORDERS[op](cell, want)


VALUE_ORDERS = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
                ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
# Longest first, so `<=` is not read as `<`.
VALUE_OPS = ("!=", "<=", ">=", "=", "<", ">", "~")


@dataclass
class ValueFilter:
    """TABLE.COLUMN[.json.path] OP VALUE over one function table's plain column."""
    text: str
    table: str
    column: str
    path: tuple[str, ...]
    op: str
    raw: str        # what the user typed after the operator
    want: Any       # the same read as JSON when it is JSON, else the string

    def cell(self, text: Any) -> Any:
        v = text
        if isinstance(text, str):   # captured columns hold JSON; extra columns any SQL value
            try:
                v = json.loads(text)
            except ValueError:
                pass
        for key in self.path:
            if isinstance(v, dict):
                v = v.get(key)
            elif isinstance(v, list) and key.isdigit() and int(key) < len(v):
                v = v[int(key)]
            else:
                return None
        return v

    def matches(self, text: str | None) -> bool:
        cell = self.cell(text)
        if self.op == "~":
            return cell is not None and self.raw.lower() in (
                cell if isinstance(cell, str) else json.dumps(cell)).lower()
        if self.op in ("=", "!="):
            return _equal(cell, self.want, self.raw) == (self.op == "=")
        return cell is not None and _order(self.op, cell, self.want)


def _split_op(text: str) -> tuple[str, str, str]:
    at = min(((i, op) for op in VALUE_OPS if (i := text.find(op)) > 0), default=None,
             key=lambda t: (t[0], -len(t[1])))
    if at is None:
        raise FilterError(f"--value {text!r}: expected TABLE.COLUMN=VALUE "
                          f"(operators: {' '.join(VALUE_OPS)})")
    i, op = at
    return text[:i].strip(), op, text[i + len(op):].strip()


def parse_value_filter(text: str, tables: Sequence[Any]) -> ValueFilter:
    """`tables`: the snapshot's FunctionTableDefs. TABLE is a table name or the
    Go symbol of its function (`main_store_lookup.sku` or `main.(*store).lookup.sku`)."""
    lhs, op, raw = _split_op(text)
    names = sorted(((t.table, t) for t in tables), key=lambda kv: -len(kv[0]))
    names += sorted(((t.function, t) for t in tables), key=lambda kv: -len(kv[0]))
    for name, t in names:
        if lhs.startswith(name + "."):
            column, *path = lhs[len(name) + 1:].split(".")
            if column not in t.columns:
                cols = ", ".join(t.columns) or "none"
                raise FilterError(f"--value {text!r}: table {t.table} has no column {column!r} "
                                  f"(columns: {cols})")
            try:
                want = json.loads(raw)
            except ValueError:
                want = raw
            return ValueFilter(text, t.table, column, tuple(path), op, raw, want)
    known = ", ".join(t.table for t in tables) or "none: the snapshot captured no values"
    raise FilterError(f"--value {text!r}: no function table {lhs.split('.')[0]!r} in this snapshot "
                      f"(tables: {known})")


def parse_label_filter(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise FilterError(f"--label {text!r}: expected KEY=VALUE")
    return key.strip(), value.strip()


@dataclass
class GoroutineFilter:
    functions: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    values: list[ValueFilter] = field(default_factory=list)
    labels: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.functions or self.statuses or self.values or self.labels)

    def describe(self) -> str:
        parts = [f"function {f}" for f in self.functions]
        if self.statuses:
            parts.append("status " + " or ".join(self.statuses))
        parts += [f"value {v.text}" for v in self.values]
        parts += [f"label {k}={v}" for k, v in self.labels]
        return " and ".join(parts)

    def matches(self, g: dict, frames: Sequence[dict], value_hits: Sequence[set]) -> bool:
        """`value_hits`: per value filter, the (process_id, goid) pairs it matched."""
        key = (g["process_id"], g["goid"])
        labels = json.loads(g["labels"]) if g.get("labels") else {}
        return (all(any(function_matches(p, f["function"] or "") for f in frames) for p in self.functions)
                and (not self.statuses
                     or any(status_matches(s, g.get("status"), g.get("wait_reason")) for s in self.statuses))
                and all(key in hits for hits in value_hits)
                and all(str(labels.get(k)) == v for k, v in self.labels))

    def matching(self, gors: dict[int, list[dict]], frames: dict, value_hits: Sequence[set]) -> set | None:
        """The (process_id, goid) pairs that match; None when there is no filter."""
        if not self:
            return None
        return {(g["process_id"], g["goid"]) for gs in gors.values() for g in gs
                if self.matches(g, frames.get((g["process_id"], g["goid"]), []), value_hits)}


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


def hex_addresses(v: Any) -> Any:
    """A raw value as people read it: every `__addr` (stored as an integer, so
    SQL can join on it) shown in hex, as Go's %p prints it."""
    if isinstance(v, dict):
        return {k: (f"0x{x:x}" if k == "__addr" and isinstance(x, int) and not isinstance(x, bool)
                    else hex_addresses(x)) for k, x in v.items()}
    if isinstance(v, list):
        return [hex_addresses(x) for x in v]
    return v


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
                s = json.dumps(hex_addresses(json.loads(s)), separators=(",", ":"), ensure_ascii=False)
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


def format_spec_summary(path: str, spec, binary: str | None = None) -> str:
    """What `exray check-spec` prints: the tables, reports, links and targets a spec makes."""
    n = len(spec.functions)
    checked = f", checked against {binary}" if binary else ""
    out = [f"{path}: ok, {n} function{'s' if n != 1 else ''}{checked}"]
    for f in spec.functions:
        cols = ", ".join([c.name for c in f.captures] + [c.name for c in f.columns]) or "(no captures)"
        out.append(f"  {f.symbol} -> table {f.table}: {cols}")
    for r in spec.reports:
        reads = f" (reads {', '.join(r.depends_on)})" if r.depends_on else ""
        out.append(f"  report {r.name}{reads}")
    for k in spec.links:
        out.append(f"  link {k.name}: {k.left.table}({', '.join(k.left.columns)}) <-> "
                   f"{k.right.table}({', '.join(k.right.columns)})")
    for t in spec.targets:
        what = f"exe {t.exe}" if t.exe else f"pid {t.pid}"
        out.append(f"  target {what}" + (f" on agent {t.agent}" if t.agent else ""))
    if len(spec.files) > 1:
        out.append(f"  files: {', '.join(spec.files)}")
    return "\n".join(out) + "\n"
