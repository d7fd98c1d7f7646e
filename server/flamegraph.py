"""A snapshot as a self-contained HTML flame graph of its goroutines.

One SVG, drawn here, with a little inline JavaScript for hover details and
click-to-zoom; no external resources, so the file can be mailed or attached.
The root (all goroutines) is at the bottom, then one block per process, then
each stack from its outermost frame up to its innermost; a block's width is
the number of goroutines whose stack passes through it. Frames that Go's
default traceback hides (runtime internals, wrappers) are left out, as
`exray goroutines` does without --all; a stack made only of such frames keeps
them, as Go's traceback does.
"""
from __future__ import annotations

import hashlib
import html
import os
from collections import Counter
from dataclasses import dataclass, field

from .export import Goroutine, Process, state_of

WIDTH = 1200          # SVG user units; the page scales it to the window
ROW = 18              # height of one frame row
PAD_TOP, PAD_BOTTOM = 8, 8
CHAR_W = 7.0          # average width of a 12px monospace character
KIND_COLORS = {"root": "hsl(0,0%,78%)", "process": "hsl(210,45%,72%)"}


@dataclass
class Node:
    name: str
    kind: str                          # root, process or frame
    detail: str = ""                   # extra tooltip line (exe, host)
    count: int = 0
    states: Counter = field(default_factory=Counter)
    lines: Counter = field(default_factory=Counter)     # "file:line" -> goroutines
    children: dict[str, "Node"] = field(default_factory=dict)

    def child(self, name: str, kind: str = "frame") -> "Node":
        c = self.children.get(name)
        if c is None:
            c = self.children[name] = Node(name, kind)
        return c


def _shown_frames(g: Goroutine):
    shown = [f for f in g.frames if not f.hidden]
    return shown or g.frames


def build_tree(procs: list[Process], gors: list[Goroutine]) -> Node:
    root = Node("all goroutines", "root")
    by_id = {}
    for p in procs:
        n = by_id[p.id] = root.child(f"pid {p.pid} {os.path.basename(p.exe) or '?'}", "process")
        n.detail = " ".join(x for x in (p.exe, f"on {p.host}" if p.host else "") if x)
    for g in gors:
        node = by_id.get(g.process_id)
        if node is None:
            continue
        state = state_of(g)
        path = [root, node]
        for f in reversed(_shown_frames(g)):          # outermost first: the graph grows upwards
            path.append(path[-1].child(f.function))
            path[-1].lines[f"{f.file}:{f.line}"] += 1
        for n in path:
            n.count += 1
            n.states[state] += 1
    return root


# ------------------------------------------------------------------ drawing

def _color(node: Node) -> str:
    if node.kind in KIND_COLORS:
        return KIND_COLORS[node.kind]
    # One stable warm hue per package, so a package's frames read as a group.
    pkg = node.name.rsplit("/", 1)[-1].split(".", 1)[0]
    h = int.from_bytes(hashlib.md5(pkg.encode()).digest()[:2], "big")
    return f"hsl({10 + h % 40},{70 + h % 20}%,{58 + (h >> 8) % 12}%)"


def _plural(n: int, word: str, words: str = "") -> str:
    return f"{n} {word if n == 1 else words or word + 's'}"


def _tooltip(node: Node, total: int) -> str:
    out = [node.name]
    if node.detail:
        out.append(node.detail)
    out += [f"{loc} ({n})" if len(node.lines) > 1 else loc for loc, n in node.lines.most_common(5)]
    if len(node.lines) > 5:
        out.append(f"… {len(node.lines) - 5} more lines")
    out.append(f"{_plural(node.count, 'goroutine')} ({100 * node.count / max(total, 1):.1f}%)")
    out.append(", ".join(f"{s}: {n}" for s, n in node.states.most_common()))
    return "\n".join(out)


def _label(text: str, width: float) -> str:
    fit = int((width - 6) // CHAR_W)
    if fit < 3:
        return ""
    return text if len(text) <= fit else text[:fit - 1] + "…"


def _layout(node: Node, offset: int, depth: int, out: list) -> int:
    out.append((node, offset, depth))
    deepest = depth
    o = offset
    for c in sorted(node.children.values(), key=lambda c: (-c.count, c.name)):
        deepest = max(deepest, _layout(c, o, depth + 1, out))
        o += c.count
    return deepest


def _svg(root: Node) -> str:
    placed: list[tuple[Node, int, int]] = []
    depth = _layout(root, 0, 0, placed)
    total = max(root.count, 1)
    height = PAD_TOP + (depth + 1) * ROW + PAD_BOTTOM
    parts = [f'<svg id="fg" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
             f'width="100%" data-total="{total}" data-height="{height}">']
    for node, o, d in placed:
        x, w = WIDTH * o / total, WIDTH * node.count / total
        y = height - PAD_BOTTOM - (d + 1) * ROW
        text = f"{node.name} ({node.count})"
        parts.append(
            f'<g class="f {node.kind}" data-o="{o}" data-n="{node.count}" data-d="{d}" '
            f'data-name="{html.escape(node.name)}" data-label="{html.escape(text)}">'
            f'<title>{html.escape(_tooltip(node, total))}</title>'
            f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{ROW - 1}" rx="2" fill="{_color(node)}"/>'
            f'<text x="{x + 3:.2f}" y="{y + ROW - 5}">{html.escape(_label(text, w))}</text></g>')
    parts.append("</svg>")
    return "\n".join(parts)


STYLE = """
body { font: 13px sans-serif; margin: 12px; background: #fff; color: #222; }
h1 { font-size: 16px; margin: 0 0 4px; }
#summary, #details { color: #444; margin: 4px 0; white-space: pre-wrap; min-height: 1.2em; }
#fg text { font: 12px monospace; fill: #000; pointer-events: none; }
#fg g.f { cursor: pointer; }
#fg g.f:hover rect { stroke: #000; stroke-width: 0.6; }
#fg g.hide { display: none; }
#fg g.above rect { opacity: 0.55; }
button { font: inherit; }
"""

# Zoom keeps integer offsets (data-o, data-n: goroutine counts) so that
# "inside the clicked block" is exact, not a float comparison.
SCRIPT = """
(function () {
  const svg = document.getElementById('fg');
  const W = %(width)d, CW = %(char_w)s;
  const total = +svg.dataset.total;
  const blocks = Array.from(svg.querySelectorAll('g.f'));
  const details = document.getElementById('details');
  function fit(text, w) {
    const n = Math.floor((w - 6) / CW);
    if (n < 3) return '';
    return text.length <= n ? text : text.slice(0, n - 1) + '\\u2026';
  }
  function place(g, x, w) {
    const r = g.querySelector('rect'), t = g.querySelector('text');
    r.setAttribute('x', x.toFixed(2)); r.setAttribute('width', w.toFixed(2));
    t.setAttribute('x', (x + 3).toFixed(2)); t.textContent = fit(g.dataset.label, w);
  }
  function zoom(z) {
    const o0 = +z.dataset.o, n0 = +z.dataset.n, d0 = +z.dataset.d;
    for (const g of blocks) {
      const o = +g.dataset.o, n = +g.dataset.n, d = +g.dataset.d;
      g.classList.remove('hide', 'above');
      if (d < d0 && o <= o0 && o + n >= o0 + n0) { g.classList.add('above'); place(g, 0, W); }
      else if (d >= d0 && o >= o0 && o + n <= o0 + n0) place(g, W * (o - o0) / n0, W * n / n0);
      else g.classList.add('hide');
    }
    document.getElementById('reset').disabled = (n0 === total && d0 === 0);
  }
  for (const g of blocks) {
    g.addEventListener('click', () => zoom(g));
    g.addEventListener('mouseover', () => { details.textContent = g.querySelector('title').textContent; });
    g.addEventListener('mouseout', () => { details.textContent = ''; });
  }
  const root = blocks.find(g => g.dataset.d === '0');
  document.getElementById('reset').addEventListener('click', () => zoom(root));
  document.addEventListener('keydown', e => { if (e.key === 'Escape') zoom(root); });
  // #zoom=FUNCTION in the address zooms on that function's widest block:
  // a link that opens the graph where the reader should look.
  const want = decodeURIComponent((location.hash.match(/^#zoom=(.+)$/) || [])[1] || '');
  const named = blocks.filter(g => g.dataset.name === want).sort((a, b) => b.dataset.n - a.dataset.n);
  zoom(named[0] || root);
  svg.dataset.ready = '1';
})();
"""


def render(procs: list[Process], gors: list[Goroutine], title: str = "") -> str:
    root = build_tree(procs, gors)
    summary = (f"{_plural(root.count, 'goroutine')} in {_plural(len(procs), 'process', 'processes')}"
               "; system goroutines and hidden runtime frames left out. "
               "Hover a block for details, click to zoom, Escape or Reset to zoom out.")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Ex-Ray goroutines: {html.escape(title)}</title>
<style>{STYLE}</style></head>
<body>
<h1>Ex-Ray goroutines: {html.escape(title)}</h1>
<div id="summary">{html.escape(summary)} <button id="reset" disabled>Reset zoom</button></div>
{_svg(root)}
<div id="details"></div>
<script>{SCRIPT % {"width": WIDTH, "char_w": CHAR_W}}</script>
</body></html>
"""


def write(path: str | os.PathLike, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
