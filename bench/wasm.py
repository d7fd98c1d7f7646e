"""The WebAssembly decoder: its throughput beside the Python decoder's, and fuzzing.

    .venv/bin/python -m bench.wasm                       # throughput, and 20,000 fuzz inputs
    .venv/bin/python -m bench.wasm --fuzz 200000 --save  # keep new findings in tests/wasm_corpus

Throughput: the same random values (tests/wasm_cases.py: structs, pointers,
slices, strings, maps, floats, funcs, times, interfaces, cycles, holes; only
those the module decodes) decoded by probe_compiler.decode.decode_value and
by the module (plain and raw, as the agent asks for both), one value a call
and many a call (decode_batch), in this process, interleaved; then by kind,
and one value in batches of growing size. Ratios are of times measured in
the same run. Fuzzing: encoded inputs
of random values, mutated (bytes flipped, header fields set to extremes,
truncated, extended), run through the module with a fuel budget; every
outcome is counted and nothing may escape but a status or a trap. With
--save, an input whose (status, reason) was not seen before is kept as a
regression input. Measures and prints; asserts nothing about time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def _category(case) -> str:
    from probe_compiler.types import Kind
    t = case.types[case.type_id]
    if t.name.startswith("time."):
        return "time.Time/Duration"
    if t.kind == Kind.INTERFACE and any(case.types[i].name.startswith(("*errors.", "*fmt."))
                                        for i in case.rtypes.values()):
        return "error interfaces"
    return {Kind.MAP: "maps", Kind.FLOAT: "floats", Kind.COMPLEX: "floats", Kind.FUNC: "funcs"}.get(
        t.kind, "other kinds")


def _prepared(n: int, rng, make, dec, want=None) -> list:
    """n random cases the module decodes (funcs named, as the agent names them), with their tables."""
    from probe_compiler.decode import ByteBudget
    from agent.wasm.decoder import Image, TypeBlob, Unsupported
    from wasm_cases import _read
    cases, tries = [], 0
    while len(cases) < n and tries < 200 * n:
        tries += 1
        c = make(rng)
        if want and _category(c) != want:
            continue
        c.frame_left = c.snapshot_left = 1 << 24
        prepared = (TypeBlob.build(c.types), Image.of(c.memory.items()), _read(c.memory))
        try:
            dec.decode_value(prepared[0], c.type_id, c.data, c.addr, prepared[1], c.budgets,
                             frame_budget=ByteBudget(1 << 24), snapshot_budget=ByteBudget(1 << 24),
                             rtypes=c.rtypes, funcs=c.funcs)
        except Unsupported:
            continue
        cases.append((c, prepared))
    return cases


def _time_all(cases, reps: int, same: int, dec) -> dict:
    """Median seconds over reps for: Python, wasm one value a call, wasm `same` values a call."""
    from probe_compiler.decode import ByteBudget, decode_value
    py, wa, wb, wf, nbytes = [], [], [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        used = 0
        for c, (blob, img, read) in cases:
            by_rtype = lambda a, c=c: c.types[c.rtypes[a]] if a in c.rtypes else None   # noqa: E731
            for _ in range(same):
                fb = ByteBudget(1 << 24)
                decode_value(c.types, c.type_id, c.data, c.addr, read, c.budgets, frame_budget=fb,
                             snapshot_budget=ByteBudget(1 << 24), type_by_rtype=by_rtype, func_name=c.funcs.get)
                used += fb.used
        py.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for c, (blob, img, read) in cases:
            for _ in range(same):
                dec.decode_value(blob, c.type_id, c.data, c.addr, img, c.budgets,
                                 frame_budget=ByteBudget(1 << 24), snapshot_budget=ByteBudget(1 << 24),
                                 rtypes=c.rtypes, funcs=c.funcs)
        wa.append(time.perf_counter() - t0)
        nbytes.append(used)
        t0 = time.perf_counter()
        for c, (blob, img, read) in cases:   # one call into the module for a value's `same` frames
            dec.decode_batch(blob, img, [(c.type_id, c.data, c.addr, 1 << 24, 1 << 24)] * same, c.budgets,
                             c.rtypes, c.funcs)
        wb.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for c, (blob, img, read) in cases:   # the same, budgets chained as one frame's values spend them
            dec.decode_values(blob, img, [(c.type_id, c.data, c.addr)] * same, c.budgets,
                              frame_budget=ByteBudget(1 << 24), snapshot_budget=ByteBudget(1 << 24),
                              rtypes=c.rtypes, funcs=c.funcs)
        wf.append(time.perf_counter() - t0)
    return {"py": statistics.median(py), "one": statistics.median(wa), "batch": statistics.median(wb),
            "frame": statistics.median(wf), "bytes": statistics.median(nbytes)}


def throughput(n: int, reps: int, same: int = 20) -> None:
    """Each value is decoded `same` times in a row with the same tables and
    image, as the frames of one captured function are in one snapshot (the
    module gets the tables and the copied bytes once per snapshot); then by
    kind (the kinds this module added: maps, floats, funcs, times, error
    interfaces), and one value in batches of 1 to 500 a call."""
    from agent.wasm.decoder import WasmDecoder
    from wasm_cases import random_case, random_error_case
    dec = WasmDecoder()
    cases = _prepared(n, random.Random(5), random_case, dec)
    r = _time_all(cases, reps, same, dec)
    total = n * same
    p, w, b = r["py"], r["one"], r["batch"]
    print(f"throughput over {total} values ({r['bytes'] / total:.0f} bytes read each; "
          f"{n} distinct, {same} frames each), median of {reps}:")
    print(f"  Python decoder:  {total / p:9,.0f} values/s  ({p / total * 1e6:6.1f} us a value)")
    print(f"  wasm decoder:    {total / w:9,.0f} values/s  ({w / total * 1e6:6.1f} us a value, plain + raw)")
    print(f"  wasm, batched:   {total / b:9,.0f} values/s  ({b / total * 1e6:6.1f} us a value, {same} values a call)")
    f = r["frame"]
    print(f"  wasm, one frame: {total / f:9,.0f} values/s  ({f / total * 1e6:6.1f} us a value, {same} a call,"
          " budgets chained: decode_values)")
    print(f"  ratio of times, wasm / Python: {w / p:.2f} one value a call, {b / p:.2f} batched, "
          f"{f / p:.2f} one frame a call")
    print("  (one call into wasmtime from Python costs 10-30 us here: the per-value path pays it,"
          " the batch spreads it)")
    print(f"by kind ({max(n // 5, 20)} distinct values each, {same} frames each), us a value "
          f"[ratio to Python]:")
    print(f"  {'kind':20} {'Python':>8} {'wasm 1/call':>18} {'wasm ' + str(same) + '/call':>18}")
    rng = random.Random(6)
    for cat in ("maps", "floats", "funcs", "time.Time/Duration", "error interfaces", "other kinds"):
        make = random_error_case if cat == "error interfaces" else random_case
        got = _prepared(max(n // 5, 20), rng, make, dec, want=cat)
        if not got:
            continue
        r = _time_all(got, reps, same, dec)
        k = len(got) * same
        print(f"  {cat:20} {r['py'] / k * 1e6:8.1f} {r['one'] / k * 1e6:10.1f} [{r['one'] / r['py']:4.2f}]"
              f" {r['batch'] / k * 1e6:10.1f} [{r['batch'] / r['py']:4.2f}]")
    print("one value (the first distinct) in batches, us a value [ratio to Python]:")
    c, (blob, img, read) = cases[0]
    for size in (1, 20, 100, 500):
        one = _time_all([(c, (blob, img, read))], reps, size, dec)
        print(f"  {size:4} a call: Python {one['py'] / size * 1e6:6.1f}, wasm batched "
              f"{one['batch'] / size * 1e6:6.1f} [{one['batch'] / one['py']:4.2f}]")


def fuzz(n: int, save: bool, seed: int) -> None:
    from test_wasm_decoder import CORPUS, mutate, seeds
    from agent.wasm.decoder import WasmDecoder
    dec = WasmDecoder(fuel=2_000_000)
    rng = random.Random(seed)
    base = seeds(200)
    outcomes: dict[str, int] = {}
    found: dict[tuple, bytes] = {}
    t0 = time.perf_counter()
    for _ in range(n):
        payload = mutate(rng, rng.choice(base))
        try:
            status, out, _, why = dec.run(payload)
            key = (status, why)
            got = {0: "ok", 1: "unsupported", 2: "malformed", 3: "output", 4: "skipped"}[status]
            if status == 0:
                json.loads(out)
        except Exception as e:   # noqa: BLE001 - a trap is an outcome; anything else is a bug
            import wasmtime
            if not isinstance(e, wasmtime.Trap):
                raise
            got, key = "trap", ("trap", str(e).splitlines()[-1].strip())
        outcomes[got] = outcomes.get(got, 0) + 1
        found.setdefault(key, payload)
    took = time.perf_counter() - t0
    print(f"fuzz: {n:,} mutated inputs in {took:.1f} s (seed {seed}); outcomes: "
          + ", ".join(f"{k} {v:,}" for k, v in sorted(outcomes.items())))
    print(f"  distinct (status, reason): {len(found)}")
    if save:
        CORPUS.mkdir(exist_ok=True)
        kept = 0
        for f in CORPUS.glob("*.bin"):        # reasons the corpus holds already are not kept again
            try:
                status, _, _, why = dec.run(f.read_bytes())
                found.pop((status, why), None)
            except Exception as e:   # noqa: BLE001 - a trap is a reason too
                found.pop(("trap", str(e).splitlines()[-1].strip()), None)
        for key, payload in found.items():
            name = hashlib.sha256(payload).hexdigest()[:16] + ".bin"
            if not (CORPUS / name).exists():
                (CORPUS / name).write_bytes(payload)
                kept += 1
        print(f"  kept {kept} new inputs in {CORPUS}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.wasm", description=__doc__.split("\n")[0])
    ap.add_argument("--values", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--fuzz", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args(argv)
    from bench.run import print_header
    print_header("Ex-Ray wasm decoder benchmark", "bench.wasm", argv)
    if args.values:
        throughput(args.values, args.reps)
    if args.fuzz:
        fuzz(args.fuzz, args.save, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
