"""A snapshot as a pprof goroutine profile (gzip-compressed profile.proto).

It looks like Go's own goroutine profile (sample type goroutine/count, one
sample per distinct stack and label set, its value the number of goroutines),
with more labels: `state`, `wait_reason`, the process (`pid`, `exe`, `host`)
and the goroutine's own pprof labels. Processes stay apart through those
labels and through a Mapping of their own (`go tool pprof -tagroot=pid` draws
one root per process). Inlined calls are Lines of one Location, innermost first.
"""
from __future__ import annotations

import gzip
import os
from collections import Counter

from .export import Frame, Goroutine, Process
from .proto import profile_pb2 as pb

PAGE = 4096


class _Strings:
    """The profile's string table: index 0 is always ""."""

    def __init__(self, table):
        self.table = table
        self.index: dict[str, int] = {}
        self("")

    def __call__(self, s: str) -> int:
        i = self.index.get(s)
        if i is None:
            i = self.index[s] = len(self.table)
            self.table.append(s)
        return i


def _physical_frames(frames: list[Frame]) -> list[tuple[Frame, ...]]:
    """Runs of inlined frames ending with the frame they were inlined into:
    one run per Location, innermost first (how pprof wants inline chains)."""
    out, run = [], []
    for f in frames:
        run.append(f)
        if not f.inlined:
            out.append(tuple(run))
            run = []
    if run:                       # a stack cut short inside an inline chain
        out.append(tuple(run))
    return out


def _process_labels(p: Process) -> list[tuple[str, str]]:
    pairs = [("pid", str(p.pid)), ("exe", p.exe), ("host", p.host)]
    return [(k, v) for k, v in pairs if v]


def _goroutine_labels(g: Goroutine) -> tuple[tuple[str, str], ...]:
    ours = [("state", g.status or "unknown")]
    if g.wait_reason:
        ours.append(("wait_reason", g.wait_reason))
    return tuple(ours) + tuple(sorted(g.labels.items()))


class _Builder:
    def __init__(self, procs: list[Process]):
        self.prof = pb.Profile()
        self.s = _Strings(self.prof.string_table)
        self.procs = {p.id: p for p in procs}
        self.functions: dict[tuple[str, str], int] = {}
        self.locations: dict[tuple, int] = {}
        self.pcs: dict[int, list[int]] = {}   # process id -> pcs seen, for its Mapping

    def function(self, f: Frame) -> int:
        key = (f.function, f.file)
        fid = self.functions.get(key)
        if fid is None:
            fid = self.functions[key] = len(self.functions) + 1
            name = self.s(f.function)
            self.prof.function.add(id=fid, name=name, system_name=name, filename=self.s(f.file))
        return fid

    def location(self, process_id: int, run: tuple[Frame, ...]) -> int:
        pc = run[-1].pc
        key = (process_id, pc, tuple((f.function, f.file, f.line) for f in run))
        lid = self.locations.get(key)
        if lid is None:
            lid = self.locations[key] = len(self.locations) + 1
            loc = self.prof.location.add(id=lid, mapping_id=process_id, address=pc)
            for f in run:
                loc.line.add(function_id=self.function(f), line=f.line)
            self.pcs.setdefault(process_id, []).append(pc)
        return lid

    def mappings(self) -> None:
        # The snapshot does not record where the executable was loaded, so the
        # Mapping spans the pcs seen, page-aligned: enough for pprof, which has
        # every function and line already (has_* = true: nothing to symbolize).
        for pid, p in self.procs.items():
            pcs = self.pcs.get(pid) or [0]
            lo = min(pcs) // PAGE * PAGE
            hi = (max(pcs) // PAGE + 1) * PAGE
            self.prof.mapping.add(id=pid, memory_start=lo, memory_limit=hi, filename=self.s(p.exe),
                                  build_id=self.s(p.build_id), has_functions=True, has_filenames=True,
                                  has_line_numbers=True, has_inline_frames=True)

    def sample(self, process_id: int, locs: tuple[int, ...], labels: tuple, count: int) -> None:
        s = self.prof.sample.add(location_id=locs, value=[count])
        for k, v in _process_labels(self.procs[process_id]) + list(labels):
            s.label.add(key=self.s(k), str=self.s(v))


def build(procs: list[Process], gors: list[Goroutine], source: str = "") -> pb.Profile:
    b = _Builder(procs)
    prof = b.prof
    prof.sample_type.add(type=b.s("goroutine"), unit=b.s("count"))
    prof.period_type.type, prof.period_type.unit = b.s("goroutine"), b.s("count")
    prof.period = 1
    counts: Counter = Counter()
    for g in gors:
        if g.process_id not in b.procs:
            continue
        locs = tuple(b.location(g.process_id, run) for run in _physical_frames(g.frames))
        counts[g.process_id, locs, _goroutine_labels(g)] += 1
    for (process_id, locs, labels), n in sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1])):
        b.sample(process_id, locs, labels, n)
    b.mappings()
    times = [p.captured_at for p in procs if p.captured_at]
    prof.time_nanos = min(times) if times else 0
    if source:
        prof.comment.append(b.s(f"Ex-Ray snapshot {source} (system goroutines left out)"))
    return prof


def write(path: str | os.PathLike, prof: pb.Profile) -> None:
    with open(path, "wb") as f:
        f.write(gzip.compress(prof.SerializeToString()))
