"""Values of an optimized build: every argument Go's own traceback vouches for.

tests/goprogs/optvalues parks goroutines in functions taking arguments of
many kinds, built the usual way (no -N -l), and reports each argument's value
and the words Go's traceback prints for it. After the snapshot, the SIGQUIT
dump (GOTRACEBACK=system) prints every frame's arguments from the runtime's
argument metadata. Every argument Go prints without `?` must be in the
snapshot, equal to what the program reported, and its words equal to Go's.
The test prints how many captures are available per build mode, with and
without the spill-slot fallback (the counts are in docs/values.md).
"""
from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from gobuild import build
from oracle import parse_go_traceback
from targets import run_target
from probe_compiler.spec import parse_spec
from server.snapshot_job import snapshot_pids

# Captures in parameter order (receiver first): Go prints them in this order.
PARAMS = {
    "main.scalars": "a b c d e f", "main.text": "s bs xs", "main.pointers": "p q m ch",
    "main.aggregates": "p sm arr", "main.ifaces": "v err", "main.(*Box).method": "b n label",
    "main.Pair.valueMethod": "p k", "main.deadAfter": "a s p", "main.mixed": "a s",
    "main.many": "a b c d e f g h i j k l", "main.gen[...]": "x n", "main.sender": "msg",
    "main.sendPair": "p", "main.waitOn": "wg tag",
}
SPEC = "version: 1\nfunctions:\n" + "".join(
    f"  {fn}: {{capture: [{', '.join(ps.split())}]}}\n" for fn, ps in PARAMS.items())
NEWEST, OLDEST = None, "1.21.13"
MODES = {
    "exe": ((), None),
    "pie": (("-buildmode=pie",), {"CGO_ENABLED": "1"}),
    "noopt": (("-gcflags=all=-N -l",), None),
}


def _run(mode: str, release: str | None, tmp_path_factory):
    flags, env = MODES[mode]
    binary = build("optvalues", flags, release=release, env=env)
    d = tmp_path_factory.mktemp(f"optvalues-{mode}")
    with run_target(binary, "-values", str(d / "v.json")) as t:
        expected = json.loads((d / "v.json").read_text())
        [rec] = snapshot_pids([t.pid], parse_spec(SPEC))
        dump = t.quit_dump()
    assert rec.error is None, rec.error
    return rec, expected, parse_go_traceback(dump)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache = {}

    def get(mode: str, release: str | None = NEWEST):
        if (mode, release) not in cache:
            cache[mode, release] = _run(mode, release, tmp_path_factory)
        return cache[mode, release]
    return get


def _items(args: str) -> list[str]:
    """Go's printed arguments split at top-level commas."""
    out, depth, cur = [], 0, ""
    for ch in args:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += (ch == "{") - (ch == "}")
        cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def _words(item: str) -> list[str]:
    return [w for w in re.split(r"[{}, ]+", item) if w]


def _flat(words) -> list[str]:
    if words is None:
        return []
    if isinstance(words, str):
        return [words]
    return [w for x in words for w in _flat(x)]


def _report_key(fn: str, capture) -> str:
    if fn == "main.gen[...]":
        return "main.gen[" + capture.instance.split("go.shape.")[1].rstrip("]") + "]"
    return fn


def _mask(n: int, size: int) -> int:
    return n & ((1 << (8 * size)) - 1)


SLICES = {("main.text", "bs"), ("main.text", "xs")}


def _snapshot_words(value, raw, go_words: list[str], slice_: bool = False) -> list[int] | None:
    """The words our captured value stands for, where its JSON tells them
    (integers, bools, floats, pointers by their raw address, string and
    slice lengths); None where it doesn't (the value itself is compared)."""
    if isinstance(raw, dict) and "__addr" in raw:
        a = raw["__addr"]       # an integer (or, before issue 10, hex text)
        return [a if isinstance(a, int) else int(a, 16)]
    if isinstance(value, bool):
        return [int(value)]
    if isinstance(value, int):
        return [_mask(value, 8)]
    if isinstance(value, float):
        return [struct.unpack("<Q", struct.pack("<d", value))[0]]
    if isinstance(value, str) and len(go_words) == 2:
        return [None, len(value.encode())]
    if isinstance(value, list) and slice_:
        return [None, len(value), None]
    if isinstance(value, list) and all(isinstance(x, int) for x in value):   # an array
        return [_mask(x, 8) for x in value]
    return None


def _same_word(w: str, ours: int) -> bool:
    """Go prints a scalar's word masked to its size: compare in that many bytes."""
    digits = len(w) - 2
    size = next(n for n in (1, 2, 4, 8) if 2 * n >= digits)
    return int(w, 16) == _mask(ours, size)


def _check(rec, expected, traceback, label: str) -> dict:
    """Compare; return the availability counts of this run."""
    counts = {"captures": 0, "dwarf": 0, "dwarf_stale": 0, "spill": 0, "stale": 0, "vouched": 0,
              "go_wrong": [], "wrong": []}
    by_goid = {g.goid: g for g in rec.goroutines}
    problems = []
    for gg in traceback.values():
        for frame in gg.frames:
            if frame.function not in PARAMS or frame.inlined:
                continue
            ours = [c for c in by_goid[gg.goid].captures if c.function == frame.function]
            assert len(ours) == 1, (label, frame.function, gg.goid)
            cap = ours[0]
            report = expected[_report_key(frame.function, cap)]
            names = PARAMS[frame.function].split()
            for name in names:
                counts["captures"] += 1
                note = cap.errors.get(name, "")
                if cap.values.get(name) is not None or (note.startswith("spill slot") and name in cap.values):
                    if note.startswith("spill slot"):
                        counts["stale" if "possibly stale" in note else "spill"] += 1
                    elif note.startswith("possibly stale"):
                        counts["dwarf_stale"] += 1
                    elif not note:
                        counts["dwarf"] += 1
                want = report[name]["value"]
                if cap.values.get(name) is not None and want is not None and cap.values[name] != want:
                    counts["wrong"].append(f"{frame.function} {name}: {cap.values[name]} "
                                           f"({cap.errors.get(name) or 'DWARF'}), program {want}")
                    if "possibly stale" not in note:   # a wrong value must never look trusted
                        problems.append(f"{label}: {frame.function} {name}: {cap.values[name]!r} "
                                        f"differs from the program's {want!r} and is not marked stale")
            for name, item in zip(names, _items(frame.args)):
                words = _words(item)
                if any(w.endswith("?") or w in ("_", "...") for w in words):
                    continue
                counts["vouched"] += 1
                where = f"{label}: {frame.function} {name} (Go prints {item})"
                mine = _flat(report[name]["words"])
                if mine and mine != words:   # Go's traceback itself printed a stale slot
                    counts["go_wrong"].append(f"{frame.function} {name}: Go {item}, program {mine}")
                if name not in cap.values or (cap.values[name] is None and report[name]["value"] is not None):
                    problems.append(f"{where}: missing ({cap.errors.get(name)})")
                    continue
                if report[name]["value"] is not None and cap.values[name] != report[name]["value"]:
                    problems.append(f"{where}: {cap.values[name]!r} != {report[name]['value']!r}")
                    continue
                got = _snapshot_words(cap.values[name], cap.raw.get(name), words,
                                      (frame.function, name) in SLICES)
                if got is not None and (not mine or mine == words):
                    for w, g in zip(words, got):
                        if g is not None and not _same_word(w, g):
                            problems.append(f"{where}: word {w} != {g:#x}")
    assert not problems, "\n".join(problems)
    return counts


def _summary(mode: str, release: str | None, c: dict) -> str:
    n, spilled, dwarf = c["captures"], c["spill"] + c["stale"], c["dwarf"] + c["dwarf_stale"]
    return (f"optvalues {mode} go{release or 'default'}: {dwarf + spilled}/{n} captures available "
            f"({dwarf} from DWARF, {c['dwarf_stale']} of those possibly stale; {spilled} from spill "
            f"slots, {c['stale']} of those possibly stale); DWARF alone {dwarf}/{n}; "
            f"Go's traceback vouches for {c['vouched']}; "
            f"differ from the program's own report: {len(c['wrong'])} {c['wrong']}"
            + (f"; Go's traceback printed stale words without '?': {c['go_wrong']}" if c["go_wrong"] else ""))


@pytest.mark.parametrize("release", [NEWEST, OLDEST], ids=["newest", "oldest"])
@pytest.mark.parametrize("mode", list(MODES))
def test_every_value_go_vouches_for_is_captured(runs, mode, release):
    rec, expected, tb = runs(mode, release)
    counts = _check(rec, expected, tb, f"{mode} {release or 'default'}")
    print(_summary(mode, release, counts))
    assert counts["vouched"] >= 30
    if mode == "noopt":
        assert counts["spill"] + counts["stale"] == 0   # -N -l: DWARF has everything


def test_spill_slot_values_say_so(runs):
    """The issue's case: main.sender(msg string) blocked in a channel send."""
    rec, expected, _ = runs("exe")
    [cap] = [c for g in rec.goroutines for c in g.captures if c.function == "main.sender"]
    assert cap.values["msg"] == "from sender"
    assert cap.errors["msg"].startswith("spill slot")
    [cap] = [c for g in rec.goroutines for c in g.captures if c.function == "main.sendPair"]
    assert cap.values["p"] == {"A": 61, "B": "sent"}


def test_words_of_values():
    assert _snapshot_words(2.5, 2.5, ["0x4004000000000000"]) == [0x4004000000000000]
    assert _same_word("0xfd", _snapshot_words(-3, -3, ["0xfd"])[0])
    assert _same_word("0xfffffffffffffff9", _snapshot_words(-7, -7, ["0xfffffffffffffff9"])[0])
    assert not _same_word("0x1", 2)


def test_check_spec_warns_where_no_wait_point_has_it():
    from probe_compiler.spec_check import check_binary

    spec = parse_spec("version: 1\nfunctions:\n  main.strWords: {capture: [s]}\n"
                      "  main.sender: {capture: [msg]}\n")
    checked = check_binary(spec, str(build("optvalues")))
    assert checked.errors == []
    [w] = checked.warnings     # sender's msg is in its spill slot at the send
    assert w.startswith("main.strWords: 's' is available at none of its") and "entry" in w


def test_check_spec_cli_prints_the_warning(tmp_path):
    spec = tmp_path / "exray.yaml"
    spec.write_text("version: 1\nfunctions:\n  main.strWords: {capture: [s]}\n")
    r = subprocess.run([str(Path(sys.prefix) / "bin" / "exray"), "check-spec", str(spec),
                        "--binary", str(build("optvalues"))], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "  warning: main.strWords: 's' is available at none of its" in r.stdout
