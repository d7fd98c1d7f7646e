"""Values and pprof labels on every supported Go release (issue 9).

Each release builds tests/goprogs/values with `-gcflags=all=-N -l` (every
local and parameter stays in DWARF), and every captured value of main.capture
must equal what the program itself reports, plain and raw: maps in both
runtime layouts (hmap buckets before Go 1.24, mid-grow included; swiss tables
after), interfaces resolved through the runtime type, time.Time, chans, funcs
and generic types. The generics program's instances are captured the same way
on each release, whatever its GC shape names.

pprof labels live in a map[string]string before Go 1.24 and a sorted []label
after; a small program (LABELS_GO) sets labels of every kind on each release.
Builds are cached (tests/gobuild.py), so only the first run pays for them.
"""
from __future__ import annotations

import json
import struct

import pytest

import gobuild
from agent.goroutines import RawG, read_labels
from agent.memory import FakeMemory
from targets import run_target
from test_generics import SPEC as GENERICS_SPEC
from values_compare import capture_values, mismatches, show
from probe_compiler.dwarf import DwarfInfo
from probe_compiler.gobinary import GoBinary
from probe_compiler.runtime_layout import read_runtime_layout
from probe_compiler.spec import parse_spec
from probe_compiler.types import TypeTable
from server.snapshot_job import snapshot_pids

NO_OPT = ("-gcflags=all=-N -l",)
RELEASES = pytest.mark.parametrize("release", gobuild.RELEASES, ids=lambda r: "go" + r)


# ------------------------------------------------------------------ values

@pytest.fixture(scope="module", params=gobuild.RELEASES, ids=lambda r: "go" + r)
def captured(request, tmp_path_factory):
    release = request.param
    binary = gobuild.build("values", NO_OPT, release=release)
    return release, capture_values(binary, tmp_path_factory.mktemp(f"values{release}"))


def test_every_variable_is_described(captured):
    release, c = captured
    # Without optimization the compiler keeps every local (Go 1.27's optimized
    # build drops a couple; tests/test_snapshot_values.py allows that there).
    assert not c.left_out, (release, c.left_out)
    assert {"growing", "bigKeys", "bigVals", "big", "mk", "times", "err2", "g", "gp"} <= set(c.names)


@pytest.mark.parametrize("form", ["plain", "raw"])
def test_every_value_matches_the_program(captured, form):
    release, c = captured
    wrong = mismatches(c, form)
    assert not wrong, f"Go {release}, {form}:\n{show(wrong)}"


# ------------------------------------------------------------------ generics

@RELEASES
def test_generic_instances_match_the_program(release, tmp_path):
    """Every instance of main.Park, main.(*Cache).Get and main.Wait, found by
    `[...]` whatever the release names its GC shapes."""
    binary = gobuild.build("generics", NO_OPT, release=release)
    with run_target(binary, "-values", str(tmp_path / "v.json")) as t:
        expected = {int(k): v for k, v in json.loads((tmp_path / "v.json").read_text()).items()}
        [rec] = snapshot_pids([t.pid], parse_spec(GENERICS_SPEC))
    assert rec.error is None, rec.error
    caps = [c for g in rec.goroutines for c in g.captures]
    by_id = {c.values["id"]: c for c in caps}
    assert sorted(by_id) == sorted(expected) and len(caps) == len(expected)
    for i, c in by_id.items():
        want = expected[i]
        if c.function == "main.Park[...]":
            assert (c.values["box"], c.values["box_V"], c.values["box_Note"]) == (
                want["box"], want["box"]["V"], want["box"]["Note"]), (release, c.instance)
            assert c.values["v"] == want["v"], (release, c.instance, c.errors)
        elif c.function == "main.(*Cache[...]).Get":
            assert (c.values["key"], c.values["c_Name"], c.values["c_Hits"]) == (
                want["key"], want["name"], want["hits"]), (release, c.instance)
        else:
            assert c.function == "main.Wait[...]", c.function
        assert not c.errors, (release, c.instance, c.errors)


# ------------------------------------------------------------------ pprof labels

LABELS_GO = r'''// Command labels parks goroutines under pprof labels of every kind, prints
// "READY pid=<pid>" and exits when stdin closes.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
)

var ready sync.WaitGroup

//go:noinline
func parkShared(c chan int) { ready.Done(); <-c }

//go:noinline
func parkNested(c chan int) { ready.Done(); <-c }

//go:noinline
func parkMany(c chan int) { ready.Done(); <-c }

//go:noinline
func parkLong(c chan int) { ready.Done(); <-c }

//go:noinline
func parkEmpty(c chan int) { ready.Done(); <-c }

//go:noinline
func parkNone(c chan int) { ready.Done(); <-c }

func main() {
	c := make(chan int)
	bg := context.Background()
	ready.Add(7)
	pprof.Do(bg, pprof.Labels("role", "api", "zone", "eu-ü"), func(context.Context) {
		go parkShared(c) // both share one labelMap
		go parkShared(c)
	})
	pprof.Do(bg, pprof.Labels("role", "outer", "inner", "x"), func(ctx context.Context) {
		pprof.Do(ctx, pprof.Labels("inner", "1", "__k", ""), func(context.Context) {
			go parkNested(c)
		})
	})
	var many []string
	for i := 0; i < 100; i++ {
		many = append(many, fmt.Sprintf("k%03d", i), fmt.Sprintf("v%d", i))
	}
	pprof.Do(bg, pprof.Labels(many...), func(context.Context) { go parkMany(c) })
	pprof.Do(bg, pprof.Labels("long", strings.Repeat("€", 300)), func(context.Context) { go parkLong(c) })
	pprof.Do(bg, pprof.Labels(), func(context.Context) { go parkEmpty(c) })
	go parkNone(c)
	ready.Wait()
	fmt.Printf("READY pid=%d\n", os.Getpid())
	io.Copy(io.Discard, os.Stdin)
	close(c)
}
'''

# read_labels' defaults: 64 pairs, 256 bytes per string.
MANY = {f"k{i:03d}": f"v{i}" for i in range(100)}
WANT = {
    "main.parkShared": {"role": "api", "zone": "eu-ü"},
    "main.parkNested": {"__k": "", "inner": "1", "role": "outer"},
    "main.parkLong": {"long": "€" * 85},  # 256 bytes keep 85 whole runes
}


@pytest.fixture(scope="module")
def labels_program(tmp_path_factory):
    src = tmp_path_factory.mktemp("labelsprog") / "labels"
    src.mkdir()
    (src / "main.go").write_text(LABELS_GO)
    return src


@RELEASES
def test_pprof_labels_are_the_ones_the_program_set(release, labels_program):
    binary = gobuild.build(labels_program, release=release)
    with run_target(binary, dump=False) as t:
        [rec] = snapshot_pids([t.pid], None)
    assert rec.error is None, rec.error
    by_func: dict[str, list] = {}
    for g in rec.goroutines:
        fn = next((f.function for f in g.frames if f.function.startswith("main.park")), None)
        if fn:
            by_func.setdefault(fn, []).append(g.labels)
    for fn, want in WANT.items():
        assert by_func.get(fn) == [want] * (2 if fn == "main.parkShared" else 1), (release, fn, by_func.get(fn))
    # Cut at 64 pairs: Go >= 1.24 keeps them sorted (the first 64), a map keeps
    # them in memory order (some 64).
    [many] = by_func["main.parkMany"]
    assert len(many) == 64 and all(MANY[k] == v for k, v in many.items()), (release, many)
    if gobuild.RELEASES.index(release) >= gobuild.RELEASES.index("1.24.11"):
        assert list(many) == list(MANY)[:64]
    assert len(by_func["main.parkEmpty"]) == len(by_func["main.parkNone"]) == 1
    assert not any(by_func["main.parkEmpty"] + by_func["main.parkNone"]), (release, by_func)
    labeled = {fn for g in rec.goroutines if g.labels
               for fn in [next((f.function for f in g.frames if f.function.startswith("main.")), "")]}
    assert labeled == set(WANT) | {"main.parkMany"}, (release, labeled)


def test_map_labels_in_bad_memory_stay_bounded():
    """Go < 1.24's labels are a map: a header that claims 2^40 buckets and a
    billion entries, strings of a megabyte, then unreadable memory, give
    what could be read, cut at read_labels' bounds, and never raise."""
    binary = gobuild.build("stripped_target", release=gobuild.RELEASES[0])
    with GoBinary.open(str(binary)) as b:
        layout = read_runtime_layout(DwarfInfo.load(str(binary), b.build_id), b.read_static)
    lay = layout.labels_layout
    assert lay["kind"] == "map"
    types = TypeTable.from_json(lay["types"])
    hdr = types[types[lay["type"]].map_layout.header]
    bucket = types[types[lay["type"]].map_layout.bucket]
    off = {f.name: f.offset for f in hdr.fields}
    h = bytearray(hdr.size)
    struct.pack_into("<Q", h, off["count"], 10**9)
    h[off["B"]] = 40
    struct.pack_into("<Q", h, off["buckets"], 0x3000)
    bk = bytearray(bucket.size)
    keys, vals = (next(f.offset for f in bucket.fields if f.name == n) for n in ("keys", "values"))
    for i in range(8):
        bk[i] = 5 + i                                    # every slot full
        struct.pack_into("<QQ", bk, keys + 16 * i, 0x10000 + i, 1 << 20)
        struct.pack_into("<QQ", bk, vals + 16 * i, 0x10000, 1 << 20)
    mem = FakeMemory({0x1000: (0x2000).to_bytes(8, "little"), 0x2000: bytes(h), 0x3000: bytes(bk),
                      0x10000: bytes(97 + i % 26 for i in range(4096))})
    got = read_labels(layout, mem, [RawG(0xc000, {"labels": 0x1000})], max_labels=4, max_bytes=32)
    [labels] = got.values()
    assert len(labels) == 4 and all(len(k) == len(v) == 32 for k, v in labels.items())
    assert mem.bytes_read < 4096
    assert read_labels(layout, FakeMemory(), [RawG(0xc000, {"labels": 0x1000})]) == {}
