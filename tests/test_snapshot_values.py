"""Captured values must equal what the program itself reports about them.

The values program holds a local or parameter of every kind in
docs/values.md and writes, with its own reflect-based encoder (an independent
implementation of the same format), the JSON it expects for each. We capture
every one of them from a real snapshot and compare, plain and raw.
"""
from __future__ import annotations

import json

import pytest

from targets import run_target
from values_compare import capture_values, mismatches, show
from probe_compiler.decode import Budgets
from probe_compiler.spec import parse_spec
from server.snapshot_job import snapshot_pids


@pytest.fixture(scope="module")
def captured(go_build, tmp_path_factory):
    return capture_values(go_build("values"), tmp_path_factory.mktemp("values"))


def test_the_compiler_describes_almost_every_variable(captured):
    names, left_out = captured.names, captured.left_out
    # Go 1.27 leaves a few dead-store locals (a time.Time it never addresses) out
    # of DWARF; the program reaches the same values another way (`times`).
    assert len(left_out) <= 2, left_out
    assert {"times", "tptr", "d", "err2", "big", "ring", "mk"} <= set(names)


@pytest.mark.parametrize("form", ["plain", "raw"])
def test_every_kind_matches_the_program(captured, form):
    wrong = mismatches(captured, form)
    assert not wrong, show(wrong)


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
