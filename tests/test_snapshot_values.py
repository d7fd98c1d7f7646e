"""Captured values must equal what the program itself reports about them.

The values program holds a local or parameter of every kind in
docs/values.md and writes, with its own reflect-based encoder (an independent
implementation of the same format), the JSON it expects for each. We capture
every one of them from a real snapshot and compare, plain and raw.
"""
from __future__ import annotations

import json
import math
import struct

import pytest

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


@pytest.fixture(scope="module")
def captured(go_build, tmp_path_factory):
    binary = go_build("values")
    d = tmp_path_factory.mktemp("values")
    with run_target(binary, "-values", str(d / "v.json"), "-raw", str(d / "raw.json")) as t:
        expected = json.loads((d / "v.json").read_text())
        expected_raw = json.loads((d / "raw.json").read_text())
        with GoBinary.open(str(binary)) as b:
            described = {v.name.lstrip("&") for v in
                         DwarfInfo.load(str(binary), b.build_id).function("main.capture").variables}
        names = [k for k in expected if k in described]
        spec = parse_spec("version: 1\nfunctions:\n  main.capture:\n    capture:\n"
                          + "".join(f"      - {k}\n" for k in names))
        [rec] = snapshot_pids([t.pid], spec, budgets=ROOMY)
    assert rec.error is None
    [cap] = [c for g in rec.goroutines for c in g.captures]
    return names, expected, expected_raw, cap, set(expected) - described


def test_the_compiler_describes_almost_every_variable(captured):
    names, expected, _, _, left_out = captured
    # Go 1.27 leaves a few dead-store locals (a time.Time it never addresses) out
    # of DWARF; the program reaches the same values another way (`times`).
    assert len(left_out) <= 2, left_out
    assert {"times", "tptr", "d", "err2", "big", "ring", "mk"} <= set(names)


@pytest.mark.parametrize("form", ["plain", "raw"])
def test_every_kind_matches_the_program(captured, form):
    names, expected, expected_raw, cap, _ = captured
    want = expected if form == "plain" else expected_raw
    got = cap.values if form == "plain" else cap.raw
    wrong = {k: (got.get(k), want[k], cap.errors.get(k)) for k in names if not same(got.get(k), want[k])}
    assert not wrong, json.dumps(wrong, indent=1)[:4000]


def test_default_budgets_cut_and_mark(go_build, tmp_path):
    binary = go_build("values")
    with run_target(binary, "-values", str(tmp_path / "v.json")) as t:
        expected = json.loads((tmp_path / "v.json").read_text())
        spec = parse_spec("version: 1\nfunctions:\n  main.capture:\n    capture: [long, big, ring]\n")
        [rec] = snapshot_pids([t.pid], spec)
    [cap] = [c for g in rec.goroutines for c in g.captures]
    long = cap.values["long"]
    assert long["__truncated"] == "bytes" and long["len"] == len(expected["long"])
    assert expected["long"].startswith(long["value"]) and len(long["value"]) == Budgets().string_bytes
    big = cap.values["big"]
    assert big["__truncated"] == {"len": len(expected["big"])}
    assert len(big) - 1 == Budgets().elements
    assert all(expected["big"][k] == v for k, v in big.items() if k != "__truncated")
