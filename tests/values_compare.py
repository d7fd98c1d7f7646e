"""Captures the values program's main.capture and compares it with the
program's own report (tests/goprogs/values): shared by test_snapshot_values
(the default Go) and test_version_values (every release, -N -l builds)."""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from targets import run_target
from probe_compiler.decode import Budgets
from probe_compiler.dwarf import DwarfInfo
from probe_compiler.gobinary import GoBinary
from probe_compiler.spec import parse_spec
from server.snapshot_job import snapshot_pids

ROOMY = Budgets(string_bytes=1 << 20, elements=100_000, depth=16, frame_bytes=64 << 20)


def f32(x):
    """The program prints float32s in their shortest float32 form."""
    return struct.unpack("<f", struct.pack("<f", x))[0] if isinstance(x, float) else x


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and (
            a == b or f32(float(a)) == f32(float(b)) or (math.isnan(a) and math.isnan(b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@dataclass
class Captured:
    names: list[str]        # the variables both reported and described by DWARF
    expected: dict          # the program's own plain report
    expected_raw: dict      # ... and raw
    cap: object             # the snapshot's capture of main.capture
    left_out: set[str]      # reported, but not in main.capture's DWARF


def capture_values(binary: Path, workdir: Path) -> Captured:
    """Run the values program, snapshot main.capture with every variable that
    its DWARF describes, and return the capture beside the program's report."""
    with run_target(binary, "-values", str(workdir / "v.json"), "-raw", str(workdir / "raw.json")) as t:
        expected = json.loads((workdir / "v.json").read_text())
        expected_raw = json.loads((workdir / "raw.json").read_text())
        with GoBinary.open(str(binary)) as b:
            described = {v.name.lstrip("&") for v in
                         DwarfInfo.load(str(binary), b.build_id).function("main.capture").variables}
        names = [k for k in expected if k in described]
        spec = parse_spec("version: 1\nfunctions:\n  main.capture:\n    capture:\n"
                          + "".join(f"      - {k}\n" for k in names))
        [rec] = snapshot_pids([t.pid], spec, budgets=ROOMY)
    assert rec.error is None, rec.error
    [cap] = [c for g in rec.goroutines for c in g.captures]
    return Captured(names, expected, expected_raw, cap, set(expected) - described)


def mismatches(c: Captured, form: str) -> dict:
    """{name: (captured, expected, capture error)} of every value that differs."""
    want = c.expected if form == "plain" else c.expected_raw
    got = c.cap.values if form == "plain" else c.cap.raw
    return {k: (got.get(k), want[k], c.cap.errors.get(k)) for k in c.names if not same(got.get(k), want[k])}


def show(wrong: dict) -> str:
    return json.dumps(wrong, indent=1, ensure_ascii=False)[:4000]
