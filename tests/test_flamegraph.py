"""`exray export --format flamegraph`, rendered by headless Chromium.

The graph of a real snapshot (two tests/goprogs/parkers processes) is loaded
from file://; the DOM Chromium dumps after the inline script ran must hold each
process's main.parkChan block with its goroutine count, and the screenshot must
show the graph (decoded here with zlib and struct). The screenshot stays in
the pytest tmp dir for a human look. Skipped when chromium is missing.
"""
from __future__ import annotations

import html
import re
import shutil
import sqlite3
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from test_export_pprof import CHAN, exray, parkers_snap  # noqa: F401  (a fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / "chromium-profile"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--window-size=1400,900", *args],
        capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def graph(parkers_snap):  # noqa: F811
    snap, _ = parkers_snap
    out = snap.parent / "graph.html"
    r = exray("export", snap, "--format", "flamegraph", "-o", out)
    assert r.returncode == 0, r.stderr
    return out


def blocks(dom: str) -> list[dict]:
    """Every <g class="f …"> of the dumped DOM: its data-* and the rect's geometry."""
    out = []
    for m in re.finditer(r'<g class="f ([a-z ]+)"([^>]*)>.*?<rect([^>]*)>.*?<text[^>]*>([^<]*)</text>', dom, re.S):
        attrs = dict(re.findall(r'(?<![\w-])(data-\w+|x|width)="([^"]*)"', m.group(2) + m.group(3)))
        attrs = {k: html.unescape(v) for k, v in attrs.items()}
        attrs["class"] = m.group(1)
        attrs["text"] = html.unescape(m.group(4))
        out.append(attrs)
    return out


def parkchan_per_process(snap: Path) -> dict[str, int]:
    db = sqlite3.connect(snap)
    try:
        return dict(db.execute(
            "SELECT 'pid ' || p.pid, count(*) FROM frames f JOIN goroutines g USING (process_id, goid) "
            "JOIN processes p ON p.id = f.process_id "
            "WHERE f.function = 'main.parkChan' AND NOT g.is_system GROUP BY p.pid"))
    finally:
        db.close()


def test_self_contained(graph):
    text = graph.read_text()
    assert not re.search(r'\b(src|href)\s*=', text)          # no scripts, styles or images from elsewhere
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text)
    assert "<svg" in text and "<script>" in text


@needs_chromium
def test_dom_has_the_frames_with_counts(graph, parkers_snap, tmp_path):  # noqa: F811
    snap, pids = parkers_snap
    r = chromium(tmp_path, "--dump-dom", graph.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    assert 'data-ready="1"' in dom, "the inline script did not run"
    bs = blocks(dom)
    procs = {b["data-name"].split(" ")[0] + " " + b["data-name"].split(" ")[1]: b
             for b in bs if "process" in b["class"]}
    assert set(procs) == {f"pid {p}" for p in pids}
    want = parkchan_per_process(snap)
    assert sorted(want.values()) == sorted(CHAN)
    for name, n in want.items():
        p = procs[name]
        lo, hi = int(p["data-o"]), int(p["data-o"]) + int(p["data-n"])
        [chan] = [b for b in bs if b["data-name"] == "main.parkChan" and lo <= int(b["data-o"]) < hi]
        assert int(chan["data-n"]) == n
        label = f"main.parkChan ({n})"
        assert chan["data-label"] == label
        if float(chan["width"]) >= 7 * len(label) + 6:        # room for it all: the whole label
            assert chan["text"] == label
        else:                                                # else cut, with an ellipsis
            assert chan["text"].endswith("…") and label.startswith(chan["text"][:-1])
    # the tooltip: function, file:line, count, state breakdown
    m = re.search(r"<title>(main\.parkChan\n[^<]*)</title>", dom)
    assert m, "no tooltip for main.parkChan"
    tip = html.unescape(m.group(1))
    assert re.search(r"main\.go:\d+", tip) and "chan receive: " in tip and " goroutines (" in tip
    # hidden runtime frames are left out
    assert not any(b["data-name"] in ("runtime.gopark", "runtime.goexit") for b in bs)


@needs_chromium
def test_zoom_from_the_address(graph, tmp_path):
    r = chromium(tmp_path, "--dump-dom", graph.as_uri() + "#zoom=main.parkMutex")
    assert r.returncode == 0, r.stderr[-2000:]
    bs = blocks(r.stdout)
    [mutex] = [b for b in bs if b["data-name"] == "main.parkMutex" and "hide" not in b["class"]]
    assert (float(mutex["x"]), float(mutex["width"])) == (0.0, 1200.0)
    assert all("hide" in b["class"] for b in bs if b["data-name"] == "main.parkChan")


# ------------------------------------------------------------ the screenshot

def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, color, _, _, interlace = ihdr
    assert depth == 8 and color in (2, 6) and interlace == 0, ihdr
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    rows, prev, stride = [], bytearray(w * bpp), w * bpp
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + UNFILTER[f](a, b, c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return w, h, [r if bpp == 3 else b"".join(r[i:i + 3] for i in range(0, len(r), 4)) for r in rows]


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


UNFILTER = {0: lambda a, b, c: 0, 1: lambda a, b, c: a, 2: lambda a, b, c: b,
            3: lambda a, b, c: (a + b) // 2, 4: _paeth}


@needs_chromium
def test_screenshot_is_not_blank(graph, tmp_path):
    shot = tmp_path / "flamegraph.png"       # kept in the pytest tmp dir, to look at
    r = chromium(tmp_path, f"--screenshot={shot}", graph.as_uri())
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    w, h, rows = png_pixels(shot.read_bytes())
    assert (w, h) == (1400, 900)
    colors = {row[i:i + 3] for row in rows[::4] for i in range(0, len(row), 12)}
    assert len(colors) > 10
    white = b"\xff\xff\xff"
    inked = sum(row[i:i + 3] != white for row in rows for i in range(0, len(row), 3))
    assert inked > w * h // 50, f"only {inked} non-white pixels"
    # the process bars (hsl(210,45%,72%) ≈ rgb(151,184,216)) are drawn
    assert any(abs(p[0] - 151) < 8 and abs(p[1] - 184) < 8 and abs(p[2] - 216) < 8 for p in colors)
