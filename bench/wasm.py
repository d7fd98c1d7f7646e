"""The WebAssembly decoder: its throughput beside the Python decoder's, and fuzzing.

    .venv/bin/python -m bench.wasm                       # throughput, and 20,000 fuzz inputs
    .venv/bin/python -m bench.wasm --fuzz 200000 --save  # keep new findings in tests/wasm_corpus

Throughput: the same random values (tests/wasm_cases.py: structs, pointers,
slices, strings, cycles, holes; only those the module decodes) decoded by
probe_compiler.decode.decode_value and by the module (plain and raw, as the
agent asks for both), in this process, interleaved. Fuzzing: encoded inputs
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


def throughput(n: int, reps: int, same: int = 20) -> None:
    """Each value is decoded `same` times in a row with the same tables and
    image, as the frames of one captured function are in one snapshot (the
    module gets the tables and the copied bytes once per snapshot)."""
    from probe_compiler.decode import ByteBudget, decode_value
    from agent.wasm.decoder import Image, TypeBlob, Unsupported, WasmDecoder
    from wasm_cases import _read, random_case
    rng = random.Random(5)
    dec = WasmDecoder()
    cases = []
    while len(cases) < n:
        c = random_case(rng)
        c.frame_left = c.snapshot_left = 1 << 24
        prepared = (TypeBlob.build(c.types), Image.of(c.memory.items()), _read(c.memory))
        try:
            dec.decode_value(prepared[0], c.type_id, c.data, c.addr, prepared[1], c.budgets,
                             frame_budget=ByteBudget(1 << 24), snapshot_budget=ByteBudget(1 << 24),
                             rtypes=c.rtypes)
        except Unsupported:
            continue
        cases.append((c, prepared))
    py, wa, wb, nbytes = [], [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        used = 0
        for c, (blob, img, read) in cases:
            by_rtype = lambda a, c=c: c.types[c.rtypes[a]] if a in c.rtypes else None   # noqa: E731
            for _ in range(same):
                fb = ByteBudget(1 << 24)
                decode_value(c.types, c.type_id, c.data, c.addr, read, c.budgets, frame_budget=fb,
                             snapshot_budget=ByteBudget(1 << 24), type_by_rtype=by_rtype)
                used += fb.used
        py.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for c, (blob, img, read) in cases:
            for _ in range(same):
                dec.decode_value(blob, c.type_id, c.data, c.addr, img, c.budgets,
                                 frame_budget=ByteBudget(1 << 24), snapshot_budget=ByteBudget(1 << 24),
                                 rtypes=c.rtypes)
        wa.append(time.perf_counter() - t0)
        nbytes.append(used)
        t0 = time.perf_counter()
        for c, (blob, img, read) in cases:   # one call into the module for a value's `same` frames
            dec.decode_batch(blob, img, [(c.type_id, c.data, c.addr, 1 << 24, 1 << 24)] * same, c.budgets,
                             c.rtypes)
        wb.append(time.perf_counter() - t0)
    p, w = statistics.median(py), statistics.median(wa)
    n *= same
    print(f"throughput over {n} values ({statistics.median(nbytes) / n:.0f} bytes read each; "
          f"{n // same} distinct, {same} frames each), median of {reps}:")
    print(f"  Python decoder:  {n / p:9,.0f} values/s  ({p / n * 1e6:6.1f} us a value)")
    print(f"  wasm decoder:    {n / w:9,.0f} values/s  ({w / n * 1e6:6.1f} us a value, plain + raw)")
    b = statistics.median(wb)
    print(f"  wasm, batched:   {n / b:9,.0f} values/s  ({b / n * 1e6:6.1f} us a value, {same} values a call)")
    print(f"  ratio of times, wasm / Python: {w / p:.2f} one value a call, {b / p:.2f} batched")
    print("  (one call into wasmtime from Python costs 10-30 us here: the per-value path pays it,"
          " the batch spreads it)")


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
            got = {0: "ok", 1: "unsupported", 2: "malformed", 3: "output"}[status]
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
    throughput(args.values, args.reps)
    if args.fuzz:
        fuzz(args.fuzz, args.save, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
