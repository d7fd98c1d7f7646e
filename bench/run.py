"""Ex-Ray benchmark: DWARF load times and the pause a target observes.

    make bench                      # or: .venv/bin/python -m bench.run [--quick] [--no-profile]

Prints, in one run:
  1. the machine;
  2. the cold and warm DWARF load of the cmd/compile binary (GoBinary.open +
     DwarfInfo.load, each in a fresh Python process; cold = empty cache dir)
     and the first function lookup after a warm load, for a DWARF 5 build
     (Go's default) and a DWARF 4 one (GOEXPERIMENT=nodwarf5), with the ratios;
  3. the pause that a Go program (bench/goprogs/pausemeter) observes from inside,
     at 100, 1,000 and 10,000 parked goroutines, for an Ex-Ray snapshot and for
     Go's own full goroutine dump, plus Ex-Ray's own pause_ns, an idle baseline
     (the meter's largest gap over an equally long window with nothing going on)
     and one set with a small capture spec;
  4. where the pause goes: the steps of the paused section timed (wrapped in
     this process only), and a cProfile of it, at 10,000 goroutines without a
     spec and at 1,000 with captures.

This measures; it asserts nothing about time. Every wait is bounded, and the Go
program is killed and reaped in a `finally`.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
PAUSEMETER_SRC = Path(__file__).resolve().parent / "goprogs" / "pausemeter"
COMPILE_FN = "cmd/compile/internal/ssa.(*Func).Log"
CAPTURE_SPEC = "version: 1\nfunctions:\n  main.park:\n    capture: [id, name]\n"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ---- machine -----------------------------------------------------------------

def print_header(title: str, module: str, argv: list[str] | None) -> None:
    """What ran, when, and on which machine (with its load: these machines are noisy)."""
    m = machine()
    print(title, m["date"])
    print(f"machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, "
          f"Python {m['python']}, {m['go']}, load average {os.getloadavg()[0]:.2f}")
    print(f"command: {' '.join([Path(sys.executable).name, '-m', module, *(argv or sys.argv[1:])])}")
    sys.stdout.flush()


def machine() -> dict[str, str]:
    from tests.gobuild import go_version
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        go = go_version()
    except Exception as e:  # noqa: BLE001 - the table still prints
        go = f"? ({e})"
    return {"cpu": cpu, "cores": str(os.cpu_count()), "kernel": platform.release(),
            "python": platform.python_version(), "go": go,
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


# ---- stats / table -------------------------------------------------------------

class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, name: str, values: list[float], unit: str = "ms", scale: float = 1e3) -> None:
        if not values:
            self.rows.append((name, "n/a", "", "", "0"))
            return
        f = (lambda v: f"{v * scale:.3f}" if unit == "ms" else f"{v:.2f}")
        self.rows.append((name, f(statistics.median(values)), f(min(values)), f(max(values)),
                          str(len(values))))

    def note(self, name: str, text: str) -> None:
        self.rows.append((name, text, "", "", ""))

    def print(self, title: str) -> None:
        head = ("", "median", "min", "max", "n")
        w = [max(len(r[i]) for r in [head, *self.rows]) for i in range(5)]
        print(f"\n== {title}")
        print("  ".join(h.ljust(w[i]) if i == 0 else h.rjust(w[i]) for i, h in enumerate(head)))
        for r in self.rows:
            print("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))
        sys.stdout.flush()


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


# ---- 1. DWARF load of cmd/compile ---------------------------------------------------

def child_dwarf(binary: str, cache_dir: str, lookup: str | None) -> None:
    """Runs in a fresh interpreter: one load (and one lookup); prints JSON."""
    t0 = time.perf_counter()
    from probe_compiler.dwarf import DwarfInfo
    from probe_compiler.gobinary import GoBinary
    t1 = time.perf_counter()
    b = GoBinary.open(binary)
    t2 = time.perf_counter()
    d = DwarfInfo.load(binary, b.build_id, cache_dir=cache_dir)
    t3 = time.perf_counter()
    out = {"import_s": t1 - t0, "open_s": t2 - t1, "dwarf_s": t3 - t2, "load_s": t3 - t1,
           "from_cache": d.from_cache}
    if lookup:
        t4 = time.perf_counter()
        fi = d.function(lookup)
        out["lookup_s"] = time.perf_counter() - t4
        out["lookup_vars"] = len(fi.variables)
    print(json.dumps(out))


def _spawn_child(binary: str, cache_dir: str, lookup: str | None, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "bench.run", "--child-dwarf", binary, cache_dir]
    if lookup:
        cmd += ["--lookup", lookup]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"dwarf child failed ({p.returncode}): {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# The two DWARF versions Go 1.27 writes: DWARF 5 by default, DWARF 4 with
# GOEXPERIMENT=nodwarf5 (.debug_loc/.debug_ranges instead of the v5 lists).
DWARF_BUILDS = (("DWARF 5", None), ("DWARF 4", {"GOEXPERIMENT": "nodwarf5"}))


def bench_dwarf(cold_reps: int, warm_reps: int) -> None:
    """Both builds of cmd/compile, their repetitions interleaved (a noisy
    neighbour then hits both alike), then each build's table and the ratios."""
    from tests.gobuild import build_std_command
    runs = {}
    for label, env in DWARF_BUILDS:
        t = time.perf_counter()
        binary = str(build_std_command("cmd/compile", env=env))
        print(f"cmd/compile, {label}: {binary} ({os.path.getsize(binary) / 1e6:.1f} MB, "
              f"built/cached in {time.perf_counter() - t:.1f} s)")
        runs[label] = (binary, {k: [] for k in ("cold", "cold_dwarf", "warm", "warm_dwarf",
                                                  "warm_open", "lookup", "imports")},
                       tempfile.mkdtemp(prefix="exray-bench-warm-"))
    try:
        for _ in range(cold_reps):
            for binary, r, _ in runs.values():
                d = tempfile.mkdtemp(prefix="exray-bench-cold-")
                try:
                    out = _spawn_child(binary, d, None, timeout=600)
                    assert not out["from_cache"], "cold load found a cache"
                    r["cold"].append(out["load_s"])
                    r["cold_dwarf"].append(out["dwarf_s"])
                finally:
                    shutil.rmtree(d, ignore_errors=True)
        for binary, _, warm_dir in runs.values():
            _spawn_child(binary, warm_dir, None, timeout=600)          # fills the cache
        for _ in range(warm_reps):
            for binary, r, warm_dir in runs.values():
                out = _spawn_child(binary, warm_dir, COMPILE_FN, timeout=600)
                if not out["from_cache"]:
                    raise RuntimeError("warm load did not find the cache it just wrote")
                r["warm"].append(out["load_s"])
                r["warm_dwarf"].append(out["dwarf_s"])
                r["warm_open"].append(out["open_s"])
                r["lookup"].append(out["lookup_s"])
                r["imports"].append(out["import_s"])
    finally:
        for _, _, warm_dir in runs.values():
            shutil.rmtree(warm_dir, ignore_errors=True)
    for label, (_, r, _) in runs.items():
        t = Table()
        t.add("cold load (open + DwarfInfo.load, empty cache)", r["cold"])
        t.add("  of which DwarfInfo.load", r["cold_dwarf"])
        t.add("warm load (open + DwarfInfo.load, fresh process)", r["warm"])
        t.add("  of which GoBinary.open", r["warm_open"])
        t.add("  of which DwarfInfo.load", r["warm_dwarf"])
        t.add(f"first function() after warm load", r["lookup"])
        t.add("  (not counted: importing Ex-Ray's modules)", r["imports"])
        wm = med(r["warm"])
        t.note("goal: warm load < 300 ms", "met" if wm is not None and wm < 0.3 else
               f"MISSED ({wm * 1e3:.0f} ms)" if wm is not None else "n/a")
        t.print(f"1. DWARF of cmd/compile ({label}), lookup {COMPILE_FN}")
    (_, r5, _), (_, r4, _) = runs["DWARF 5"], runs["DWARF 4"]
    print("\n== 1b. DWARF 4 against DWARF 5 (medians; goal: load within 1.2x)")
    for key, what in (("cold", "cold load"), ("warm", "warm load"),
                      ("lookup", "first function() after warm load")):
        m5, m4 = med(r5[key]), med(r4[key])
        if m5 and m4 is not None:
            verdict = "" if key == "lookup" else ("  met" if m4 / m5 <= 1.2 else "  MISSED")
            print(f"{what:34} DWARF 5 {m5 * 1e3:8.1f} ms  DWARF 4 {m4 * 1e3:8.1f} ms  "
                  f"ratio {m4 / m5:.2f}{verdict}")
    sys.stdout.flush()


# ---- 2. the pause the target observes ------------------------------------------------

def build_pausemeter() -> Path:
    """bench/goprogs/pausemeter, built with the venv's toolchain, cached by source hash."""
    import hashlib
    from tests.gobuild import CACHE, go_env, go_exe, go_version
    src = (PAUSEMETER_SRC / "main.go").read_bytes()
    key = hashlib.sha256(go_version().encode() + b"\0" + src).hexdigest()[:20]
    out = CACHE / "bin" / f"bench-pausemeter-{key}" / "pausemeter"
    if out.exists():
        return out
    work = Path(tempfile.mkdtemp(prefix="exray-pausemeter-"))
    try:
        shutil.copy(PAUSEMETER_SRC / "main.go", work / "main.go")
        (work / "go.mod").write_text("module exray.bench/pausemeter\n\ngo 1.21\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        subprocess.run([go_exe(), "build", "-o", str(tmp), "."], cwd=work, env=go_env(),
                       check=True, capture_output=True, text=True, timeout=600)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


class PauseMeter:
    """The running pausemeter program: line commands with bounded waits."""

    def __init__(self, binary: Path, n: int, timeout: float = 60.0, requests: bool = False):
        env = dict(os.environ)
        env.pop("GOMAXPROCS", None)
        self.proc = subprocess.Popen([str(binary), "-n", str(n), "-timeout", "30m"]
                                     + (["-requests"] if requests else []),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env)
        self.pid = self.proc.pid
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        ready = self._line(timeout)
        if not ready.startswith("READY"):
            raise RuntimeError(f"pausemeter: unexpected first line {ready!r}")
        self.banner = ready

    def _line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"pausemeter (pid {self.pid}) did not answer in {timeout} s")
            if not self._sel.select(left):
                continue
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"pausemeter (pid {self.pid}) exited: {self.proc.poll()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def cmd(self, c: str, timeout: float = 60.0) -> str:
        self.proc.stdin.write(c.encode() + b"\n")
        self.proc.stdin.flush()
        return self._line(timeout)

    def reset(self) -> None:
        if self.cmd("reset") != "ok":
            raise RuntimeError("pausemeter: reset failed")

    def gap_s(self) -> float:
        return int(self.cmd("gap")) / 1e9

    def close(self) -> None:
        try:
            self._sel.close()
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            if self.proc.stdout:
                self.proc.stdout.close()


def exray_once(pm: PauseMeter, spec=None, opts=None, cache: dict | None = None) -> tuple[float, float, float, object]:
    """reset -> snapshot -> gap: (gap the target saw, Ex-Ray's pause_ns, wall time, record).
    `cache`: targets kept across snapshots, as the agent and the editor keep them.

    The gap is asked for right after the processes are resumed, before the
    decoding (which takes a core for up to seconds: on a busy 2-core VM the
    meter then sees scheduling gaps that are not the pause); the gap over the
    whole snapshot is kept in PAUSE_GAPS["whole"]."""
    from agent.ptrace import PausedProcess
    from server.snapshot_job import snapshot_pids
    orig, got = PausedProcess.__exit__, []

    def resumed(pp, *exc):
        try:
            return orig(pp, *exc)
        finally:
            got.append(pm.gap_s())
    pm.reset()
    t0 = time.perf_counter()
    PausedProcess.__exit__ = resumed
    try:
        [rec] = snapshot_pids([pm.pid], spec, opts, cache=cache)
    finally:
        PausedProcess.__exit__ = orig
    wall = time.perf_counter() - t0
    whole = pm.gap_s()
    PAUSE_GAPS["whole"].append(max(whole, got[0]) if got else whole)
    gap = got[0] if got else whole
    if rec.error:
        raise RuntimeError(f"snapshot of pid {pm.pid} failed: {rec.error}")
    return gap, (rec.pause_ns or 0) / 1e9, wall, rec


PAUSE_GAPS: dict[str, list] = {"whole": []}


def dump_once(pm: PauseMeter) -> tuple[float, float]:
    """reset -> Go's full goroutine dump -> gap: (gap the target saw, dump's own duration)."""
    pm.reset()
    took = int(pm.cmd("dump")) / 1e9
    return pm.gap_s(), took


def idle_once(pm: PauseMeter, window: float) -> float:
    pm.reset()
    time.sleep(window)
    return pm.gap_s()


def _ebpf_why() -> str | None:
    from agent.ebpf.availability import why_unavailable
    return why_unavailable()


def _ebpf_options():
    """SnapshotOptions for the eBPF executor, or None where it can't run."""
    from agent.snapshot import SnapshotOptions
    return None if _ebpf_why() else SnapshotOptions(executor="ebpf")


def bench_pause(binary: Path, n: int, reps: int, results: dict, with_captures: bool) -> None:
    pm = PauseMeter(binary, n)
    try:
        print(f"pausemeter: {pm.banner}", flush=True)
        _, _, _, rec = exray_once(pm)  # warm-up: builds the DWARF index cache of pausemeter
        parked = sum(1 for g in rec.goroutines if any(f.function == "main.park" for f in g.frames))
        print(f"  warm-up snapshot: {len(rec.goroutines)} goroutines, {parked} in main.park",
              flush=True)
        dump_once(pm)
        ex_gap, ex_pause, ex_wall, dump_gap, dump_took, idle = [], [], [], [], [], []
        ebpf = _ebpf_options()          # the eBPF executor beside ptrace, where it can run
        bpf_gap, bpf_pause, bpf_probe = [], [], []
        if ebpf is not None:
            exray_once(pm, None, ebpf)  # warm-up: loads the probe
        for i in range(reps):  # interleaved, so drifting noise hits both alike
            g, p, w, _ = exray_once(pm)
            ex_gap.append(g)
            ex_pause.append(p)
            ex_wall.append(w)
            if ebpf is not None:
                g, p, _, rec = exray_once(pm, None, ebpf)
                bpf_gap.append(g)
                bpf_pause.append(p)
                bpf_probe.append(rec.probe_report.probe_ns / 1e9)
            g, took = dump_once(pm)
            dump_gap.append(g)
            dump_took.append(took)
        window = min(statistics.median(ex_wall), 2.0)
        for _ in range(max(3, reps // 3)):
            idle.append(idle_once(pm, window))
        r = results[n] = {"ex_gap": ex_gap, "ex_pause": ex_pause, "ex_wall": ex_wall,
                          "dump_gap": dump_gap, "dump_took": dump_took, "idle": idle,
                          "window": window}
        if bpf_gap:
            r.update(bpf_gap=bpf_gap, bpf_pause=bpf_pause, bpf_probe=bpf_probe)
        if with_captures:
            from probe_compiler.spec import parse_spec
            spec = parse_spec(CAPTURE_SPEC)
            _, _, _, rec = exray_once(pm, spec)  # warm-up
            caps = [c for g in rec.goroutines for c in g.captures]
            sample = next((c.values for c in caps if c.values.get("name")), None)
            print(f"  capture warm-up: {len(caps)} main.park rows, e.g. {sample}", flush=True)
            cg, cp = [], []
            for _ in range(reps):
                g, p, _, _ = exray_once(pm, spec)
                cg.append(g)
                cp.append(p)
            r["cap_gap"], r["cap_pause"], r["cap_rows"] = cg, cp, len(caps)
    finally:
        pm.close()


REQUEST_SPEC = "version: 1\nfunctions:\n  main.serve:\n    capture: [req]\n"


def bench_capture(binary: Path, n: int, reps: int, executors: list[str]) -> dict:
    """Issue 11's capture load: n goroutines parked in main.serve, each frame
    capturing its whole request; Ex-Ray's pause per executor, and without a
    spec ("stacks"), beside Go's own dump of the same process, interleaved.
    Targets are kept across snapshots (as the agent keeps them): the pause
    is the same, the wall time leaves out loading the binary each time."""
    from agent.snapshot import SnapshotOptions
    from probe_compiler.spec import parse_spec
    spec = parse_spec(REQUEST_SPEC)
    pm = PauseMeter(binary, n, requests=True)
    # ebpf: the walk shared by one runner per CPU (docs/ebpf.md, Runners);
    # ebpf-1: the same with one runner, for comparison
    kinds = [*executors, "stacks"] + (["ebpf", "ebpf-1", "ebpf-stacks"] if _ebpf_why() is None else [])
    out: dict = {e: {"gap": [], "pause": [], "wall": []} for e in kinds}
    out["dump"] = {"gap": [], "took": []}
    caches = {e: {} for e in kinds}

    def once(e):
        if e in ("stacks", "ebpf-stacks"):
            return exray_once(pm, None, SnapshotOptions(executor="ebpf" if e == "ebpf-stacks" else "ptrace"),
                              caches[e])
        if e in ("ebpf", "ebpf-1"):
            with mock.patch.dict(os.environ, {"EXRAY_EBPF_RUNNERS": "1"} if e == "ebpf-1" else {}):
                got = exray_once(pm, spec, SnapshotOptions(executor="ebpf"), caches[e])
            out[e].setdefault("retries", 0)
            out[e]["retries"] += bool(getattr(got[3], "ebpf_retry", None))
            if hasattr(got[3], "probe_report"):
                out[e].setdefault("probe", []).append(got[3].probe_report.probe_ns / 1e9)
                out[e].setdefault("runners", []).append(got[3].probe_report.runners)
            return got
        return exray_once(pm, spec, SnapshotOptions(executor="ptrace", capture_executor=e), caches[e])
    try:
        for e in kinds:   # warm-up: DWARF index, plan, read program
            _, _, _, rec = once(e)
            caps = [c for g in rec.goroutines for c in g.captures]
            bad = [c.errors for c in caps if c.errors]
            print(f"  {e} warm-up: {len(caps)} main.serve rows, {len(bad)} with _errors"
                  + (f" (e.g. {bad[0]})" if bad else "") + f"; warnings {rec.warnings[:2]}", flush=True)
            if caps:
                print(f"    e.g. {json.dumps(caps[-1].values)[:300]}", flush=True)
        for _ in range(reps):
            for e in kinds:
                g, p, w, _ = once(e)
                out[e]["gap"].append(g); out[e]["pause"].append(p); out[e]["wall"].append(w)
                out[e].setdefault("whole", []).append(PAUSE_GAPS["whole"][-1])
            g, took = dump_once(pm)
            out["dump"]["gap"].append(g); out["dump"]["took"].append(took)
    finally:
        pm.close()
    return out


def bench_skew(binary: Path, n: int, reps: int) -> dict:
    """Two pausemeter processes (n goroutines each, whole-request captures)
    in one snapshot: each one's pause and how far apart the pauses started."""
    from probe_compiler.spec import parse_spec
    from server.snapshot_job import snapshot_pids
    spec = parse_spec(REQUEST_SPEC)
    a, b = PauseMeter(binary, n, requests=True), PauseMeter(binary, n, requests=True)
    out: dict = {"skew": [], "pause": []}
    try:
        cache: dict = {}
        snapshot_pids([a.pid, b.pid], spec, cache=cache)    # warm-up
        for _ in range(reps):
            recs = snapshot_pids([a.pid, b.pid], spec, cache=cache)
            if any(r.error for r in recs):
                raise RuntimeError(f"two-process snapshot failed: {[r.error for r in recs]}")
            out["skew"].append(max(r.pause_skew_ns for r in recs) / 1e9)
            out["pause"] += [r.pause_ns / 1e9 for r in recs]
    finally:
        a.close()
        b.close()
    return out


def print_capture(results: dict) -> None:
    t = Table()
    for n, r in results.items():
        for e, v in r.items():
            if e == "dump":
                t.add(f"N={n} Go dump: gap the target saw", v["gap"])
                t.add(f"N={n} Go dump: its own duration", v["took"])
            else:
                t.add(f"N={n} Ex-Ray {e}: gap the target saw (to the resume)", v["gap"])
                t.add(f"N={n} Ex-Ray {e}: gap over the whole snapshot", v.get("whole", []))
                t.add(f"N={n} Ex-Ray {e}: pause_ns", v["pause"])
                t.add(f"N={n} Ex-Ray {e}: snapshot wall time", v["wall"])
                if v.get("probe"):
                    t.add(f"N={n} Ex-Ray {e}: the probe's run (bpf_ktime)", v["probe"])
                if v.get("runners"):
                    t.note(f"N={n} Ex-Ray {e}: runners", f"{min(v['runners'])}-{max(v['runners'])}")
                if "retries" in v:
                    t.note(f"N={n} Ex-Ray {e}: snapshots taken again with ptrace",
                           f"{v['retries']} of {len(v['gap'])} (their pause is ptrace's)")
        d = med(r["dump"]["gap"])
        for e, v in r.items():
            if e not in ("dump", "skew") and d:
                t.note(f"N={n} {e} / Go dump (gap medians)", f"{med(v['gap']) / d:.2f}")
        for e, most, goal in (("program", 1.0, "issue 11: ptrace captures <= Go's dump"),
                              ("ebpf", 1.0, "issue 11: captures <= Go's dump (the eBPF executor)"),
                              ("ebpf", 0.5, "issue 14: eBPF captures <= half of Go's dump")):
            if e in r and d:
                # by the gap the target saw, and by pause_ns (first thread
                # stopped to last resumed: what any thread could have seen;
                # with eBPF the meter's thread is usually the one that runs
                # the probe, so its gap leaves out the stop and the resume):
                # met only by both
                ratio, strict = med(r[e]["gap"]) / d, med(r[e]["pause"]) / d
                verdict = "met" if max(ratio, strict) <= most else "MISSED"
                t.note(f"N={n} goal {goal}", f"{verdict} (gap ratio {ratio:.2f}; pause_ns ratio {strict:.2f})")
    t.print("2b. Whole-request captures (issues 11, 14): Ex-Ray's pause beside Go's dump")


def print_pause(results: dict) -> None:
    t = Table()
    for n, r in results.items():
        t.add(f"N={n:>6}  Ex-Ray: gap the target saw", r["ex_gap"])
        t.add(f"N={n:>6}  Ex-Ray: its own pause_ns", r["ex_pause"])
        t.add(f"N={n:>6}  Ex-Ray: snapshot_pids wall time", r["ex_wall"])
        t.add(f"N={n:>6}  Go dump: gap the target saw", r["dump_gap"])
        t.add(f"N={n:>6}  Go dump: WriteTo duration", r["dump_took"])
        t.add(f"N={n:>6}  idle: gap over {r['window'] * 1e3:.0f} ms", r["idle"])
        ratio = med(r["ex_gap"]) / med(r["dump_gap"]) if med(r["dump_gap"]) else float("nan")
        t.note(f"N={n:>6}  ratio of medians Ex-Ray gap / Go dump gap", f"{ratio:.2f}")
        if "bpf_gap" in r:      # the eBPF executor (docs/ebpf.md), stacks only
            t.add(f"N={n:>6}  Ex-Ray eBPF: gap the target saw", r["bpf_gap"])
            t.add(f"N={n:>6}  Ex-Ray eBPF: its own pause_ns", r["bpf_pause"])
            t.add(f"N={n:>6}  Ex-Ray eBPF: the probe's walk (bpf_ktime)", r["bpf_probe"])
        if "cap_gap" in r:
            t.add(f"N={n:>6}  Ex-Ray + captures ({r['cap_rows']} rows): gap", r["cap_gap"])
            t.add(f"N={n:>6}  Ex-Ray + captures: its own pause_ns", r["cap_pause"])
    mid = results.get(1000)
    if mid and "bpf_pause" in mid:
        t.note("goal: eBPF pause_ns <= 1 ms at N=1000, stacks only",
               "met" if med(mid["bpf_pause"]) <= 1e-3 else f"MISSED ({med(mid['bpf_pause']) * 1e3:.2f} ms)")
    elif mid:
        t.note("eBPF executor", f"not run: {_ebpf_why()}")
    big = results.get(10000)
    if big:
        ratio = med(big["ex_gap"]) / med(big["dump_gap"])
        t.note("goal: Ex-Ray pause <= Go dump at N=10000",
               "met" if ratio <= 1 else f"MISSED (ratio {ratio:.2f})")
    t.print("2. pause observed by the target (pausemeter's largest clock gap)")


# ---- 3. where the pause goes ---------------------------------------------------------

class Phases:
    """Times the steps of the paused section by wrapping them in this process only.

    Wraps PausedProcess's stop/registers/release steps and the reads and
    column work of the paused section; everything is restored on exit. Calls
    made outside the paused section (the unwind after resuming) are not counted.
    """

    def __init__(self):
        import agent.goroutines as gr
        import agent.memory as mem
        import agent.ptrace as pt
        import agent.snapshot as snap
        self.targets = [(pt.PausedProcess, "_seize_and_stop", "stop every thread (seize+interrupt)"),
                        (pt.PausedProcess, "_read_regs", "read registers"),
                        (pt.PausedProcess, "_release", "detach every thread"),
                        (gr, "read_allgs", "read allgs"),
                        (gr, "GTable", "read g structs (runs)"),
                        (gr.GTable, "live_rows", "live goroutines (status column)"),
                        (gr, "read_ms", "read + decode m structs"),
                        (gr, "start_sps", "stack start per g (columns)"),
                        (gr, "stack_ranges", "stack ranges to copy"),
                        (gr, "read_labels", "pprof labels"),
                        (mem.ProcessMemory, "read_into", "  all bulk reads (read_into)"),
                        (mem.ProcessMemory, "read_many", "  all batched reads (read_many)"),
                        (snap, "_unwind", "unwind in the pause (captures)"),
                        (snap, "_capture", "read + decode captures"),
                        (pt.PausedProcess, "__exit__", "= whole paused section")]
        self.totals: dict[str, float] = {}
        self.inside = False
        self._saved = []
        self._entered = 0.0

    def _wrap(self, owner, attr, label):
        orig = getattr(owner, attr)
        me = self

        def timed(*a, **kw):
            if not me.inside:
                return orig(*a, **kw)
            t = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                me.totals[label] = me.totals.get(label, 0.0) + time.perf_counter() - t
        self._saved.append((owner, attr, orig))
        setattr(owner, attr, timed)

    def _bracket(self, cls, label):
        """From PausedProcess.__enter__ to the end of its __exit__: the paused section."""
        enter, exit_ = cls.__enter__, cls.__exit__
        me = self

        def entered(pp):
            me._entered, me.inside = time.perf_counter(), True
            return enter(pp)

        def exited(pp, *exc):
            try:
                return exit_(pp, *exc)
            finally:
                me.inside = False
                me.totals[label] = me.totals.get(label, 0.0) + time.perf_counter() - me._entered
        self._saved += [(cls, "__enter__", enter), (cls, "__exit__", exit_)]
        cls.__enter__, cls.__exit__ = entered, exited

    def __enter__(self):
        for owner, attr, label in self.targets:
            if attr == "__exit__":
                self._bracket(owner, label)
            else:
                self._wrap(owner, attr, label)
        return self

    def __exit__(self, *exc):
        for owner, attr, orig in reversed(self._saved):
            setattr(owner, attr, orig)
        self._saved.clear()
        return False


def phase_breakdown(binary: Path, n: int, reps: int, spec_text: str | None = None) -> None:
    from probe_compiler.spec import parse_spec
    spec = parse_spec(spec_text) if spec_text else None
    pm = PauseMeter(binary, n)
    runs: list[dict[str, float]] = []
    gaps, pauses = [], []
    try:
        exray_once(pm, spec)  # warm-up
        for _ in range(reps):
            with Phases() as ph:
                g, p, _, _ = exray_once(pm, spec)
            runs.append(ph.totals)
            gaps.append(g)
            pauses.append(p)
    finally:
        pm.close()
    t = Table()
    labels = [label for _, _, label in Phases().targets]
    for label in labels:
        vals = [r[label] for r in runs if label in r]
        if vals:
            t.add(label, vals)
    t.add("gap the target saw (timed runs)", gaps)
    t.add("Ex-Ray pause_ns (timed runs)", pauses)
    what = "with captures" if spec_text else "no spec"
    t.print(f"3a. where the pause goes: timed steps of the paused section, N={n}, {what}")


def profile_pause(binary: Path, n: int, spec_text: str | None = None, top: int = 18) -> None:
    """cProfile of agent.snapshot._read_in_pause (the paused section) in one snapshot."""
    import agent.snapshot as snap
    from probe_compiler.spec import parse_spec
    spec = parse_spec(spec_text) if spec_text else None
    pm = PauseMeter(binary, n)
    orig = snap._read_in_pause
    prof = cProfile.Profile()

    def profiled(*a, **kw):
        prof.enable()
        try:
            return orig(*a, **kw)
        finally:
            prof.disable()
    try:
        exray_once(pm, spec)  # warm-up, unprofiled
        snap._read_in_pause = profiled
        try:
            g, p, _, _ = exray_once(pm, spec)
        finally:
            snap._read_in_pause = orig
    finally:
        pm.close()
    what = "with captures" if spec_text else "no spec"
    print(f"\n== 3b. cProfile of the paused section (agent.snapshot._read_in_pause), N={n}, {what}")
    print(f"(profiled run: gap {g * 1e3:.1f} ms, pause_ns {p * 1e3:.1f} ms; cProfile inflates both)")
    for key in ("tottime", "cumulative"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).strip_dirs().sort_stats(key).print_stats(top)
        lines = s.getvalue().splitlines()
        start = next((i for i, l in enumerate(lines) if l.lstrip().startswith("ncalls")), 0)
        print(f"-- by {key}")
        print("\n".join(lines[start:]).rstrip())
    sys.stdout.flush()


# ---- main -----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repetitions, for a smoke run")
    ap.add_argument("--no-dwarf", action="store_true", help="skip the cmd/compile loads")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile section")
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--capture-sizes", default="1000,10000",
                    help="goroutines of the whole-request capture load (section 2b)")
    ap.add_argument("--only-captures", action="store_true", help="run sections 2b and 2c only")
    ap.add_argument("--no-reference", action="store_true",
                    help="2b without the reference executor (about 0.6 s a pause at 1,000)")
    ap.add_argument("--child-dwarf", nargs=2, metavar=("BINARY", "CACHE_DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--lookup", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_dwarf:
        child_dwarf(*args.child_dwarf, args.lookup)
        return 0

    print_header("Ex-Ray benchmark", "bench.run", argv)

    if args.only_captures:
        args.no_dwarf, args.sizes = True, ""

    if not args.no_dwarf:
        bench_dwarf(cold_reps=2 if args.quick else 5, warm_reps=3 if args.quick else 11)

    binary = build_pausemeter()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results: dict = {}
    for n in sizes:
        reps = (3 if args.quick else 15) if n < 10000 else (3 if args.quick else 11)
        print(f"\nN={n}: {reps} repetitions", flush=True)
        bench_pause(binary, n, reps, results, with_captures=(n == 1000))
    if results:
        print_pause(results)

    cap_results: dict = {}
    for n in [int(s) for s in args.capture_sizes.split(",") if s]:
        reps = 3 if args.quick else 11
        executors = ["program", "reference"] if n <= 1000 and not args.no_reference else ["program"]
        print(f"\nwhole-request captures, N={n}: {reps} repetitions of {executors}, stacks only "
              "and Go's dump", flush=True)
        cap_results[n] = bench_capture(binary, n, reps, executors)
    if cap_results:
        print_capture(cap_results)
        n = min(cap_results)
        reps = 3 if args.quick else 11
        print(f"\ntwo processes of N={n} in one snapshot: {reps} repetitions", flush=True)
        r = bench_skew(binary, n, reps)
        t = Table()
        t.add(f"N={n} x 2: pause start skew (max of the two)", r["skew"])
        t.add(f"N={n} x 2: each process's pause_ns", r["pause"])
        t.print("2c. Two processes paused together (issue 11)")

    if not args.no_profile and sizes:
        n = max(sizes)
        reps = 3 if args.quick else 5
        phase_breakdown(binary, n, reps)
        if 1000 in sizes:
            phase_breakdown(binary, 1000, reps, CAPTURE_SPEC)
        profile_pause(binary, n)
        if 1000 in sizes:
            profile_pause(binary, 1000, CAPTURE_SPEC, top=12)
    return 0


if __name__ == "__main__":
    sys.exit(main())
