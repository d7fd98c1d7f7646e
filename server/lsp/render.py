"""What the editor shows from the current snapshot's index, as plain data:
inlay hint labels, code lenses, hovers. Pure functions of the index
(hints.SnapshotIndex) and of the Go source (gosource); no server, no I/O.

A captured value is one of three things, and each reads differently:

- a value: its JSON, compacted (`{ID:7, Path:"/x"}`, `"sku-001"`, `[1, 2, …]`);
- a real Go nil (a nil pointer, interface, map or slice at the top level):
  SQL NULL with no reason in the row's `_errors`: `nil`;
- unavailable (not live at this pc, in a register an outer frame does not
  have, optimized out, unreadable): SQL NULL with its reason in `_errors`:
  `⊘ not live at this pc`. Never `nil`.

A value whose `_errors` note says it is possibly stale (read from a stack
slot the runtime does not vouch for at that pc; docs/values.md) ends in `?`,
as Go's traceback prints it.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from probe_compiler import generics

from . import gosource
from .specedit import canonical as _canonical

PAUSE = "⏸"
UNAVAILABLE = "⊘"
NIL = "nil"
STALE = "?"


# ------------------------------------------------------------------ values

def value_text(text: str | None, reason: str | None = None, budget: int = 40) -> str:
    """A captured column's value as a hint shows it: compacted JSON, `nil`, or
    `⊘ <reason>` (the reason's first clause) when it is unavailable."""
    if text is None and reason:
        return _cut(f"{UNAVAILABLE} {reason.split(';')[0].strip()}", budget)
    if text is not None and reason and is_stale(reason):
        return compact_json(text, budget - 1) + STALE
    return compact_json(text, budget)


def is_stale(note: str | None) -> bool:
    """A note of `_errors` on a value that may not be the variable's (docs/values.md)."""
    return bool(note) and "possibly stale" in note


def cell_text(text: str | None, reason: str | None) -> str | None:
    """A captured column's cell in an exray: document: `⊘ <reason>` when
    unavailable, `nil` for a real nil, else None (show the cell as it is)."""
    if text is not None:
        return None
    return f"{UNAVAILABLE} {reason}" if reason else NIL


def row_errors(text: str | None) -> dict[str, str]:
    """A function table's `_errors` cell: column -> why its value is NULL."""
    if not text:
        return {}
    try:
        v = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return {str(k): str(r) for k, r in v.items() if r} if isinstance(v, dict) else {}


def compact_json(text: str | None, budget: int = 40) -> str:
    """A short view of a captured JSON value: 7, "widget", {ID:7, Path:"/x"}, [1, 2, …]."""
    if text is None:
        return NIL
    try:
        v = json.loads(text)
    except (TypeError, ValueError):
        return _cut(str(text), budget)
    return _cut(_compact(v, budget), budget)


def _compact(v, budget: int) -> str:
    t = v.__class__
    if t is str:                      # the common cases first, by exact type
        return _encode_str(v)
    if t is dict:
        return _compact_dict(v, budget)
    if v is None:
        return NIL
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return _encode_str(v)
    if isinstance(v, list):
        return _bounded(v, _compact, budget, "[]")
    if isinstance(v, dict):
        return _compact_dict(v, budget)
    return str(v)


def _compact_dict(v: dict, budget: int) -> str:
    if "__addr" in v and "value" in v:
        return _compact(v["value"], budget)
    fields = [(k, x) for k, x in v.items() if not k.startswith("__")]
    return _bounded(fields, _field, budget, "{}")


def _field(kx, budget: int) -> str:
    return f"{kx[0]}:{_compact(kx[1], budget)}"


_encode_str = json.encoder.encode_basestring    # what json.dumps(s, ensure_ascii=False) returns, in C


def _bounded(items, render, budget: int, brackets: str) -> str:
    """Items rendered and joined until the budget is spent, then `…`."""
    parts, used = [], 2
    for x in items:
        s = render(x, budget - used)
        if used + len(s) > budget:
            parts.append("…")
            break
        parts.append(s)
        used += len(s) + 2
    return brackets[0] + ", ".join(parts) + brackets[1]


def _cut(s: str, n: int) -> str:
    s = s.replace("\n", "\\n")
    return s if len(s) <= n else s[: max(1, n - 1)] + "…"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


# ------------------------------------------------------------------ inlay hints

def reasons_text(reasons: Counter) -> str:
    common = reasons.most_common()
    if len(common) == 1:
        return common[0][0]
    shown = [f"{r} ×{n}" for r, n in common[:2]]
    if len(common) > 2:
        shown.append(f"+{len(common) - 2}")
    return ", ".join(shown)


def values_text(values: dict, budget: int) -> str:
    parts = []
    for col, counter in values.items():
        distinct = [v for v, _ in counter.most_common()]
        s = f"{col}={distinct[0]}"
        for v in distinct[1:]:
            if len(s) + len(v) + 1 > max(budget // max(len(values), 1), 24):
                s += f"|+{len(distinct) - s.count('|') - 1}"
                break
            s += "|" + v
        parts.append(s)
    return ", ".join(parts)


def line_label(agg, max_len: int) -> str:
    """`⏸ 12 goroutines · chan receive · req_ID=7, sku="widget"`, at most max_len characters."""
    label = f"{PAUSE} {_plural(len(agg.goroutines), 'goroutine')} · {reasons_text(agg.reasons)}"
    if agg.values:
        label += " · " + values_text(agg.values, max_len - len(label) - 3)
    return _cut(label, max_len)


# ------------------------------------------------------------------ code lenses

@dataclass
class Lens:
    line: int                   # 0-based
    function: str
    goroutines: int
    table: str | None
    unavailable: str | None = None      # `⊘ req, state: not live at this pc`, when captures are missing


def lenses(idx, path: str, parsed: gosource.ParsedGo) -> list[Lens]:
    """One lens per function with frames in this file, above its `func` line
    (or at its first frame's line when the source does not say where it is).
    Functions the compiler made (gosource.is_compiler_wrapper) get none."""
    out = []
    for fn, fa in sorted(idx.functions.get(path, {}).items()):
        first = min(fa.lines) - 1
        f = gosource.function_on_line(parsed, first)
        if gosource.is_compiler_wrapper(fn, f):
            continue
        line = f.extent.start.line if f is not None and f.extent is not None else max(first, 0)
        cap = idx.captured.get((path, fn)) if fa.table else None
        out.append(Lens(line, fn, len(fa.goroutines), fa.table, unavailable_summary(cap)))
    return out


def unavailable_summary(cap) -> str | None:
    """`⊘ req, state: not live at this pc` for a captured function whose
    columns are unavailable in some of its frames (None when all are there)."""
    if cap is None:
        return None
    missing: dict[str, Counter] = {}
    for r in cap.rows:
        for col, reason in r.errors.items():
            if r.values.get(col) is None:
                missing.setdefault(col, Counter())[reason.split(";")[0].strip()] += 1
    if not missing:
        return None
    by_reason: dict[str, list[str]] = {}
    for col in cap.columns:
        if col in missing:
            reason = missing[col].most_common(1)[0][0]
            n = sum(missing[col].values())
            by_reason.setdefault(reason, []).append(col if n == len(cap.rows) else f"{col} ({n}/{len(cap.rows)})")
    return f"{UNAVAILABLE} " + "; ".join(f"{', '.join(cols)}: {reason}" for reason, cols in by_reason.items())


# ------------------------------------------------------------------ hover

def hover_captures(idx, path: str, parsed: gosource.ParsedGo, fn: gosource.GoFunction,
                   expr: str) -> list[tuple[object, str]]:
    """(captured function, column) pairs that the expression `expr` (as
    gosource.expression_at reads the cursor) stands for in the function `fn`
    (as gosource.function_in_file names it): the capture of `expr` itself, of
    a part of it (`req` for `req.ID`) or of something inside it (`req.ID`
    for `req`)."""
    out = []
    for (p, _), cap in idx.captured.items():
        if p != path or not _same_function(cap, fn, parsed):
            continue
        for col in cap.columns:
            if _relates(cap.exprs.get(col, col), expr):
                out.append((cap, col))
    # The capture of the expression itself first.
    out.sort(key=lambda cc: _canonical(cc[0].exprs.get(cc[1], cc[1])) != expr)
    return out


def _same_function(cap, fn: gosource.GoFunction, parsed: gosource.ParsedGo) -> bool:
    if cap.function == fn.symbol or (generics.is_generic_pattern(cap.function)
                                     and generics.spec_matches(cap.function, fn.symbol)):
        return True
    # Symbols that disagree (a closure numbered otherwise in an older build):
    # the frames' lines tell which source function they ran.
    return fn.extent is not None and any(
        (g := gosource.function_on_line(parsed, n - 1)) is not None and g.extent == fn.extent
        for n in cap.lines)


def _base(expr: str) -> str:
    """The path an expression reads: `*p` -> `p`, `len(xs)` -> `xs`, `(&x).f` -> `x.f`."""
    e = expr.strip()
    while True:
        if e.startswith(("len(", "cap(")) and e.endswith(")"):
            e = e[4:-1].strip()
        elif e[:1] in ("*", "&"):
            e = e[1:].strip()
        elif e.startswith("(") and ")" in e:
            close = e.index(")")
            e = (e[1:close] + e[close + 1:]).strip()
        else:
            return e


def _relates(captured: str, expr: str) -> bool:
    c = _canonical(captured)
    if c == expr:
        return True
    cb, eb = _base(c), _base(expr)
    return cb == eb or any(a.startswith(b + sep) for a, b in ((cb, eb), (eb, cb)) for sep in (".", "["))


def hover_markdown(hits: list, max_values: int) -> str:
    blocks = []
    for cap, col in hits:
        rows = cap.rows
        expr = cap.exprs.get(col, col)
        counts = cap.counts.get(col, Counter())
        head = (f"**`{expr}`** in `{cap.function}`: {_plural(len(rows), 'frame')} "
                f"(column `{cap.table}.{col}`)")
        summary = ", ".join(f"`{v}` ×{n}" if n > 1 else f"`{v}`" for v, n in counts.most_common(10))
        if len(counts) > 10:
            summary += f", … {len(counts) - 10} more distinct"
        shown = sorted(rows[:max_values], key=lambda r: (r.process_id, r.goid, r.depth))
        full = []
        for r in shown:
            v = r.values.get(col)
            item = {"process": r.process_id, "goroutine": r.goid, "line": r.line}
            if v is None and r.errors.get(col):
                item["unavailable"] = r.errors[col]
            else:
                item["value"] = _loads(v)
                if r.errors.get(col):          # where it came from: a spill slot, possibly stale
                    item["note"] = r.errors[col]
            full.append(item)
        body = json.dumps(full, indent=2, ensure_ascii=False)
        more = f"\n\n… and {len(rows) - len(shown)} more frames" if len(rows) > len(shown) else ""
        legend = ""
        if any(v.startswith(UNAVAILABLE) for v in counts):
            legend += (f"\n\n{UNAVAILABLE}: not captured in that frame, for the reason given "
                       f"(the column is NULL and `_errors` says why); `nil` is a real Go nil.")
        if any(v.endswith(STALE) for v in counts):
            legend += (f"\n\n`{STALE}` after a value: possibly stale, read from a stack slot the "
                       "runtime does not vouch for at that pc (Go's traceback prints `?` too).")
        blocks.append(f"{head}\n\n{summary}{legend}\n\n```json\n{body}\n```{more}")
    return "\n\n---\n\n".join(blocks)


def _loads(text):
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text
