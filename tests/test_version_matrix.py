"""Every supported Go release, built the ways services are built, read as Go reads itself.

The states program parks goroutines in known states. It is built with each
release (gobuild.RELEASES, installed by scripts/setup.sh) as a plain
executable, a PIE and a cgo binary, plus race and static builds on the oldest
and the newest release and a few more build options on the newest. For each
build we snapshot the running program and then take Go's own crash traceback
of it (GOTRACEBACK=system, SIGQUIT). The oracle is that traceback:

- the goroutines are the same ones, none missing and none extra;
- every parked goroutine has Go's stack: functions, files, lines, inlining,
  pc offsets, and the pcs themselves (which a PIE's load bias would move);
- every waiting goroutine has Go's wait reason.
"""
from __future__ import annotations

import contextlib
import os

import pytest

from gobuild import RELEASES, build, go_exe
from oracle import parse_go_traceback
from stack_compare import NAMED, STABLE, assert_stacks_match, elide_like_go
from targets import run_target
from server.snapshot_job import snapshot_pids

OLDEST, NEWEST = RELEASES[0], RELEASES[-1]
CGO_FILE = {"cgo.go": 'package main\n\n// static int one(void) { return 1; }\nimport "C"\n\n'
                      'var cOne = int(C.one())\n'}

# Build mode -> (go build flags, environment, extra source files). "exe" is
# what `go build` gives where a C compiler exists (CGO_ENABLED=1: net links
# libc dynamically); "static" turns cgo off; "cgo" imports "C", which makes
# the linker link externally.
MODES = {
    "exe": ((), {"CGO_ENABLED": "1"}, None),
    "pie": (("-buildmode=pie",), {"CGO_ENABLED": "1"}, None),
    "cgo": ((), {"CGO_ENABLED": "1"}, CGO_FILE),
    "static": ((), {"CGO_ENABLED": "0"}, None),
    "race": (("-race",), {"CGO_ENABLED": "1"}, None),
    "pie-external": (("-buildmode=pie", "-ldflags=-linkmode=external"), {"CGO_ENABLED": "1"}, None),
    "trimpath": (("-trimpath",), {"CGO_ENABLED": "0"}, None),
    "amd64v3": ((), {"CGO_ENABLED": "0", "GOAMD64": "v3"}, None),
    "noopt": (("-gcflags=all=-N -l",), {"CGO_ENABLED": "0"}, None),
    # No DWARF, no symbols: the runtime layout comes from a reference build
    # by the same release (EXRAY_GO names its toolchain).
    "stripped": (("-ldflags=-s -w",), {"CGO_ENABLED": "0"}, None),
}

BUILDS = ([(r, m) for r in RELEASES for m in ("exe", "pie", "cgo")]
          + [(r, m) for r in (OLDEST, NEWEST) for m in ("static", "race", "stripped")]
          + [(NEWEST, m) for m in ("pie-external", "trimpath", "amd64v3", "noopt")]
          + [(OLDEST, "noopt")])


@contextlib.contextmanager
def _exray_go(go: str | None):
    """EXRAY_GO=go for the snapshot (the toolchain of a stripped binary's reference build)."""
    old = os.environ.get("EXRAY_GO")
    if go is not None:
        os.environ["EXRAY_GO"] = go
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("EXRAY_GO", None)
        else:
            os.environ["EXRAY_GO"] = old


def _build(release: str, mode: str):
    flags, env, files = MODES[mode]
    return build("states", flags, release=release, env=env, extra_files=files)


@pytest.fixture(scope="module", params=BUILDS, ids=[f"go{r}-{m}" for r, m in BUILDS])
def snapshot_and_go(request):
    release, mode = request.param
    binary = _build(release, mode)
    with run_target(binary, env={"GOTRACEBACK": "system"}) as t, \
            _exray_go(go_exe(release) if mode == "stripped" else None):
        [rec] = snapshot_pids([t.pid], None)
        level2 = parse_go_traceback(t.quit_dump())
    assert rec.error is None, f"Go {release} {mode}: {rec.error}"
    assert rec.go_version == f"go{release}"
    return rec, level2


def test_same_goroutines_as_go(snapshot_and_go):
    """Go's crash dump comes after the snapshot, and the states program starts
    nothing in between: the two sets of goroutines are the same."""
    rec, level2 = snapshot_and_go
    ours = {g.goid for g in rec.goroutines}
    theirs = set(level2) - {0}   # goroutine 0: the crashing M's g0, a system stack
    assert ours == theirs, f"missing {sorted(theirs - ours)}, extra {sorted(ours - theirs)}"


def test_parked_stacks_are_go_own(snapshot_and_go):
    rec, level2 = snapshot_and_go
    checked = assert_stacks_match(rec, level2)
    named = {f.function for g in rec.goroutines for f in g.frames}
    assert set(NAMED) <= named
    assert checked >= len(NAMED)


def test_pcs_are_the_process_own(snapshot_and_go):
    """Go prints each physical frame's pc at level 2; ours are the process's
    pcs too, PIE or not (frames.pc is not a link-time address)."""
    rec, level2 = snapshot_and_go
    compared = 0
    for g in rec.goroutines:
        go = level2.get(g.goid)
        if go is None or go.wait_reason not in STABLE:
            continue
        for f, gf in zip(elide_like_go(g.frames, go), go.frames):
            if gf.pc is not None and not gf.inlined:
                assert f.pc == gf.pc, f"goroutine {g.goid} {f.function}"
                compared += 1
    assert compared > 0
    pie = rec.load_bias not in (0, None)
    assert pie == any(f.pc > 1 << 40 for g in rec.goroutines for f in g.frames)


def test_wait_reasons_are_go_own(snapshot_and_go):
    rec, level2 = snapshot_and_go
    compared = 0
    for g in rec.goroutines:
        go = level2[g.goid]
        if g.status == "waiting" and go.wait_reason in STABLE:
            assert g.wait_reason == go.wait_reason, f"goroutine {g.goid}"
            compared += 1
    assert compared >= len(NAMED)


CHECKED_SPEC = """\
version: 1
functions:
  main.(*server).handle:
    capture: [s.name, s.reqs]
  main.recurse:
    capture: [n]
  main.recurze:
    capture: [n]
"""


@pytest.mark.parametrize("release", RELEASES)
def test_check_spec_reads_every_release(release):
    """check-spec walks the pclntab's inline trees and the DWARF of each
    release: the spec's real names pass and a typo gets a did-you-mean."""
    from probe_compiler.spec import parse_spec
    from probe_compiler.spec_check import check_against_binary

    errors = check_against_binary(parse_spec(CHECKED_SPEC), str(_build(release, "exe")))
    assert [(e.line, "did you mean main.recurse" in str(e)) for e in errors] == [(7, True)], errors
