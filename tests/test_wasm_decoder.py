"""The WebAssembly decoder against the Python decoder (the reference).

Same bytes in, same values out, plain and raw, with the byte budgets charged
the same: on random values in fake memory (holes, cycles, cut strings and
slices, invalid UTF-8, spent budgets), and on every value of the values
program that the module decodes. Malformed, truncated and hostile inputs end
in an error row; a value that runs out of fuel or memory too. The fuzz
inputs that found something are kept in tests/wasm_corpus and replayed.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytest.importorskip("wasmtime", reason="the wasmtime package is not installed (pyproject dependency)")

from probe_compiler.decode import Budgets, ByteBudget  # noqa: E402
from agent.wasm.decoder import (ST_OK, Image, TypeBlob, Unsupported, WasmDecoder,  # noqa: E402
                                encode_input)
from wasm_cases import random_case, random_error_case, reference  # noqa: E402

CORPUS = Path(__file__).parent / "wasm_corpus"


@pytest.fixture(scope="module")
def dec():
    return WasmDecoder()


def _wasm(dec, case):
    """(plain, raw, frame bytes used, refused flags) from the module; funcs'
    names and runtime types no type answers learned as the agent learns them
    (asked for when met, then the value again)."""
    names: dict = {}
    rtypes = dict(case.rtypes)
    while True:
        fb, sb = ByteBudget(case.frame_left), ByteBudget(case.snapshot_left)
        try:
            plain, raw = dec.decode_value(TypeBlob.build(case.types), case.type_id, case.data, case.addr,
                                          Image.of(case.memory.items()), case.budgets, frame_budget=fb,
                                          snapshot_budget=sb, rtypes=rtypes, funcs=names)
            return plain, raw, fb.used, (fb.refused, sb.refused)
        except Unsupported as e:
            if e.rtype and e.rtype not in rtypes:
                rtypes[e.rtype] = 0xFFFFFFFF        # no type has that address
                continue
            if not e.pcs or any(pc in names for pc in e.pcs):
                raise
            names.update((pc, case.funcs.get(pc)) for pc in e.pcs)


def test_random_values_decode_as_the_reference_does(dec):
    rng = random.Random(1414)
    compared, kinds = 0, set()
    for i in range(400):
        case = random_case(rng)
        want = reference(case)
        try:
            got = _wasm(dec, case)
        except Unsupported:
            continue
        assert got == want, f"case {i}: {json.dumps(want)[:300]} != {json.dumps(got)[:300]}"
        compared += 1
        text = json.dumps(want)
        kinds |= {k for k in ("__chan", "__type", "__cycle", "__truncated", "__error", '"real"', "__func",
                              '{"key"', '"__truncated": {"len"', "Z\"", "NaN") if k in text}
        kinds |= {case.types[case.type_id].kind.value}
    assert compared == 400                 # every one: nothing is handed back to Python
    # the cases reach them: markers, complex, funcs, list and object maps (cut), times, floats
    assert kinds >= {"__chan", "__type", "__truncated", "__error", '"real"', "__func", '{"key"',
                     '"__truncated": {"len"', "Z\"", "map", "float"}, kinds


def test_error_messages_are_added_as_the_reference_adds_them(dec):
    """Error interfaces (errors.New, fmt.Errorf %w chains, errors.Join with
    nil, cut and unreadable errs): the "__error" message the reference adds,
    or its failure on a nil err in a joinError, comes out of the module too."""
    rng = random.Random(303)
    seen = {"message": 0, "joined": 0, "nil err": 0}
    for i in range(300):
        case = random_error_case(rng)
        want = reference(case)
        got = _wasm(dec, case)
        assert got == want, f"case {i}: {json.dumps(want)[:300]} != {json.dumps(got)[:300]}"
        text = json.dumps(want[0])
        seen["message"] += '"__error": "' in text
        seen["joined"] += "joinError" in text and "\\n" in text
        seen["nil err"] += "NoneType" in text
    assert seen["message"] >= 100 and seen["joined"] >= 2 and seen["nil err"] >= 2, seen


@pytest.mark.parametrize("release", [None, "1.21.13", "1.24.11"], ids=["default", "go1.21.13", "go1.24.11"])
def test_values_program_decodes_as_the_reference_does(release, tmp_path, monkeypatch):
    """Every value of the values program (a local of every kind) goes through
    both decoders with the bytes the reference read, every one through the
    module too: the default Go's build, and with -N -l Go 1.21 (hmap maps,
    one of them mid-grow) and Go 1.24 (the first swiss tables)."""
    import agent.snapshot as snap
    import gobuild
    from values_compare import capture_values
    dec = WasmDecoder(fuel=200_000_000)   # ROOMY budgets: a 5,000-entry map whole is 16M instructions
    reference_decode = snap.decode_value
    seen = {"same": 0, "unsupported": 0, "interfaces": 0, "funcs": 0, "diff": [], "kinds": set()}

    def both(types, type_id, data, addr, read, budgets, *, frame_budget, snapshot_budget, **kw):
        fb, sb = ByteBudget(frame_budget.limit), ByteBudget(snapshot_budget.limit)
        fb.used, sb.used = frame_budget.used, snapshot_budget.used
        reads = []

        def recording(a, n):
            b = read(a, n)
            reads.append((a, bytes(b)))
            return b
        want = reference_decode(types, type_id, data, addr, recording, budgets, frame_budget=frame_budget,
                                snapshot_budget=snapshot_budget, **kw)
        learned, names, got = {}, {}, None
        for _ in range(16):                 # learn dynamic types and funcs' names, as the agent does
            try:
                f2, s2 = ByteBudget(fb.limit), ByteBudget(sb.limit)
                f2.used, s2.used = fb.used, sb.used
                got = dec.decode_value(TypeBlob.build(types), type_id, data, addr, Image.of(reads), budgets,
                                       frame_budget=f2, snapshot_budget=s2, rtypes=learned, funcs=names)
                fb = f2
                break
            except Unsupported as e:
                if e.pcs:
                    names.update((pc, kw["func_name"](pc) or None) for pc in e.pcs)
                    continue
                t = kw["type_by_rtype"](e.rtype) if e.rtype and e.rtype not in learned else None
                if t is None or t.id not in types:
                    break
                learned[e.rtype] = t.id
        if got is None:
            seen["unsupported"] += 1
            return want
        seen["interfaces"] += bool(learned)
        seen["funcs"] += bool(names)
        if got == want and fb.used == frame_budget.used:
            seen["same"] += 1
            seen["kinds"].add(types[type_id].kind.value if types[type_id].name not in ("time.Time", "time.Duration")
                              else types[type_id].name)
        else:
            seen["diff"].append((types[type_id].name, want, got))
        return want

    monkeypatch.setattr(snap, "decode_value", both)
    binary = gobuild.build("values") if release is None else gobuild.build(
        "values", ("-gcflags=all=-N -l",), release=release)
    capture_values(binary, tmp_path)
    assert not seen["diff"], seen["diff"][:3]
    assert seen["same"] >= 74 and not seen["unsupported"], seen
    assert seen["interfaces"] >= 3 and seen["funcs"] >= 3, seen
    assert seen["kinds"] >= {"float", "complex", "map", "func", "time.Time", "time.Duration"}, seen["kinds"]


def test_a_value_that_runs_out_of_fuel_is_an_error_row():
    rng = random.Random(7)
    case = next(c for c in (random_case(rng) for _ in range(500))
                if c.types[c.type_id].kind.value in ("struct", "slice", "array") and reference(c)[0])
    starved = WasmDecoder(fuel=50)
    fb, sb = ByteBudget(1 << 20), ByteBudget(1 << 20)
    plain, raw = starved.decode_value(TypeBlob.build(case.types), case.type_id, case.data, case.addr,
                                      Image.of(case.memory.items()), case.budgets,
                                      frame_budget=fb, snapshot_budget=sb)
    assert plain == raw and plain["__error"].startswith("wasm decoder: ran out of fuel")
    assert fb.used == 0                    # nothing charged for a value not decoded
    # the decoder is usable again after the trap
    assert _wasm(starved.__class__(), case) == reference(case)


def test_an_input_past_the_memory_limit_is_an_error_row():
    small = WasmDecoder(memory_bytes=256 << 10)
    case = random_case(random.Random(3))
    big = Image.of([(0x900000, b"\0" * (1 << 20))])
    plain, _ = small.decode_value(TypeBlob.build(case.types), case.type_id, case.data, case.addr, big,
                                  case.budgets, frame_budget=ByteBudget(1 << 20),
                                  snapshot_budget=ByteBudget(1 << 20))
    assert "memory limit" in plain["__error"]


def mutate(rng: random.Random, payload: bytes) -> bytes:
    b = bytearray(payload)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        op = rng.random()
        if op < 0.5 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op < 0.7 and len(b) > 8:          # a header or record field set to an extreme
            at = rng.randrange(0, min(len(b) - 4, 120)) & ~3
            b[at:at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\0\0\0\0", b"\0\0\0\x80"])
        elif op < 0.85:
            del b[rng.randrange(len(b) + 1):]   # truncated
        else:
            b += rng.randbytes(rng.randrange(64))
    return bytes(b)


def run_hostile(dec: WasmDecoder, payload: bytes) -> str:
    """One raw input through the module: 'ok', 'unsupported', 'malformed', 'trap'.
    Whatever it is, it must not raise anything but wasmtime's Trap, and an OK
    output must be JSON."""
    import wasmtime
    try:
        status, out, _, why = dec.run(payload)
    except wasmtime.Trap:
        return "trap"
    if status == ST_OK:
        json.loads(out)
        return "ok"
    return {1: "unsupported", 2: "malformed", 3: "output", 4: "skipped"}[status]


def seeds(n: int = 40) -> list[bytes]:
    rng = random.Random(99)
    out = []
    for i in range(n):
        c = random_case(rng) if i % 4 else random_error_case(rng)
        out.append(encode_input(TypeBlob.build(c.types), c.type_id, c.data, c.addr,
                                Image.of(c.memory.items()), c.budgets, c.frame_left, c.snapshot_left,
                                raw=rng.random() < 0.5, rtypes=c.rtypes, funcs=c.funcs))
    return out


def test_kept_fuzz_inputs_end_in_a_status():
    dec = WasmDecoder(fuel=2_000_000)
    files = sorted(CORPUS.glob("*.bin"))
    assert files, "the fuzz corpus is missing"
    for f in files:
        assert run_hostile(dec, f.read_bytes()) in ("ok", "unsupported", "malformed", "output", "skipped", "trap"), f


def test_mutated_inputs_never_crash_the_agent():
    dec = WasmDecoder(fuel=2_000_000)
    rng = random.Random(2026)
    outcomes: dict[str, int] = {}
    base = seeds()
    for _ in range(1500):
        got = run_hostile(dec, mutate(rng, rng.choice(base)))
        outcomes[got] = outcomes.get(got, 0) + 1
    assert outcomes.get("malformed", 0) > 0 and outcomes.get("ok", 0) > 0


def test_garbage_through_the_agent_entry_is_an_error_row():
    dec = WasmDecoder()
    blob = TypeBlob(b"\xff" * 56, b"", b"", 1, 0)
    plain, raw = dec.decode_value(blob, 0xFFFFFFFF - 1, b"\0" * 8, None, Image.of([]), Budgets(),
                                  frame_budget=ByteBudget(100), snapshot_budget=ByteBudget(100))
    assert plain == {"__error": "wasm decoder: a type id that is not in the table"} or "__error" in plain


def test_a_snapshot_decoded_by_the_module_has_the_reference_rows(monkeypatch):
    """EXRAY_DECODER=wasm: the read program's copies are decoded by the module
    (the request's fields, its tag slice, its session pointer, its body: an
    interface whose dynamic type the module learns on first sight, and the
    whole request, which holds a map); every row equals the Python
    decoder's: values, raw values, _errors."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.run import PauseMeter, build_pausemeter
    from probe_compiler.spec import parse_spec
    from server.snapshot_job import snapshot_pids
    spec = parse_spec("version: 1\nfunctions:\n  main.serve:\n"
                      "    capture: [req.ID, req.Method, req.Path, req.Tags, req.Session, req.Body, req]\n")
    pm = PauseMeter(build_pausemeter(), 40, requests=True)
    try:
        cache: dict = {}
        monkeypatch.delenv("EXRAY_DECODER", raising=False)
        [python] = snapshot_pids([pm.pid], spec, cache=cache)
        monkeypatch.setenv("EXRAY_DECODER", "wasm")
        before = dict(WasmDecoder.for_thread().stats)
        [wasm] = snapshot_pids([pm.pid], spec, cache=cache)
        after = WasmDecoder.for_thread().stats
    finally:
        pm.close()
    rows = lambda rec: [(g.goid, c.function, c.values, c.raw, c.errors)   # noqa: E731
                        for g in rec.goroutines for c in g.captures]
    assert len(rows(python)) == 40 and rows(wasm) == rows(python)
    decoded = (after["values"] - before["values"]) - (after["unsupported"] - before["unsupported"])
    assert decoded >= 7 * 40 and after["errors"] == before["errors"]   # all of them, req and req.Body too


def test_a_batch_decodes_each_value_as_alone():
    rng = random.Random(8080)
    dec = WasmDecoder()
    for _ in range(60):
        case = random_case(rng)
        blob, image = TypeBlob.build(case.types), Image.of(case.memory.items())
        batch = dec.decode_batch(blob, image, [(case.type_id, case.data, case.addr, case.frame_left,
                                                case.snapshot_left)] * 3, case.budgets, case.rtypes, case.funcs)
        plain, raw, used, _ = reference(case)
        for got in batch:
            assert got is None or got == (plain, raw, used)


def test_a_frame_of_values_in_one_call_spends_the_budgets_as_one_by_one():
    """decode_values: a frame's values in one call into the module, each
    starting with what the one before it left of the frame's and the
    snapshot's budgets (so later values are cut where the reference cuts
    them); a value the module does not decode goes to the reference in its
    turn and the module goes on from the next."""
    from probe_compiler.decode import decode_value
    from wasm_cases import _read
    rng = random.Random(4242)
    dec = WasmDecoder()
    cut = fell_back = learned = 0
    for _ in range(120):
        case = random_case(rng)
        pool = [a for a in case.memory if a < 0x100000]
        values = [(case.type_id, case.data, case.addr)] * rng.choice([1, 3, 6])
        values += [(rng.choice(sorted(case.types.types)), None, rng.choice(pool)) for _ in range(rng.choice([0, 4]))]
        rng.shuffle(values)
        frame = rng.choice([60, 300, 2000, 1 << 16])
        read, by_rtype = _read(case.memory), lambda a: case.types[case.rtypes[a]] if a in case.rtypes else None

        def ref(i, fb, sb):
            tid, data, addr = values[i]
            return decode_value(case.types, tid, data, addr, read, case.budgets, frame_budget=fb,
                                snapshot_budget=sb, type_by_rtype=by_rtype, func_name=case.funcs.get)
        fb, sb = ByteBudget(frame), ByteBudget(case.snapshot_left)
        want = [ref(i, fb, sb) for i in range(len(values))]
        fb2, sb2 = ByteBudget(frame), ByteBudget(case.snapshot_left)
        used = []

        def fallback(i):
            used.append(i)
            return ref(i, fb2, sb2)
        learning = rng.random() < 0.5           # learn names and unknown types as the agent does, or hand back
        rtypes, funcs = dict(case.rtypes), ({} if learning else dict(case.funcs))

        def learn(e):
            if e.pcs and not all(pc in funcs for pc in e.pcs):
                funcs.update((pc, case.funcs.get(pc)) for pc in e.pcs)
                return True
            if e.rtype and e.rtype not in rtypes:
                rtypes[e.rtype] = 0xFFFFFFFF
                return True
            return False
        got = dec.decode_values(TypeBlob.build(case.types), Image.of(case.memory.items()), values, case.budgets,
                                frame_budget=fb2, snapshot_budget=sb2, rtypes=rtypes, funcs=funcs,
                                fallback=fallback, learn=learn if learning else None)
        assert got == want and (fb2.used, sb2.used, fb2.refused, sb2.refused) == (fb.used, sb.used, fb.refused,
                                                                                  sb.refused)
        cut += "budget" in json.dumps(want[-1])
        fell_back += bool(used)
        learned += learning and bool(funcs or len(rtypes) > len(case.rtypes))
    assert cut >= 10 and fell_back >= 5 and learned >= 5, (cut, fell_back, learned)


def test_floats_are_written_as_the_reference_writes_them(dec):
    """float32 and float64 of every exponent (subnormals, the largest, NaN,
    the infinities, -0.0, integers, short decimals): the same JSON text as
    the reference's, so the same float once read back, sign of zero too."""
    import struct
    from probe_compiler.decode import decode_value
    from probe_compiler.types import GoType, Kind, TypeTable
    rng = random.Random(64)
    table = TypeTable({1: GoType(1, "float64", Kind.FLOAT, 8), 2: GoType(2, "float32", Kind.FLOAT, 4),
                       3: GoType(3, "[64]float64", Kind.ARRAY, 512, elem=1, length=64),
                       4: GoType(4, "[128]float32", Kind.ARRAY, 512, elem=2, length=128),
                       5: GoType(5, "complex64", Kind.COMPLEX, 8),
                       6: GoType(6, "[64]complex64", Kind.ARRAY, 512, elem=5, length=64)})
    blob, image, budgets = TypeBlob.build(table), Image.of([]), Budgets(elements=128)
    for _ in range(100):
        words = []
        for _ in range(64):
            r = rng.random()
            if r < 0.4:
                words.append(rng.getrandbits(64))
            elif r < 0.6:
                x = rng.choice([rng.uniform(-1e6, 1e6), 10.0 ** rng.randint(-320, 308), rng.randint(-10**6, 10**6) / 1000])
                words.append(struct.unpack("<Q", struct.pack("<d", x))[0])
            elif r < 0.8:
                words.append(rng.getrandbits(12) << 52 | rng.getrandbits(rng.choice([1, 5, 20, 52])))
            else:
                pair = (rng.uniform(-1e3, 1e3), 10.0 ** rng.randint(-45, 38))
                words.append(struct.unpack("<Q", struct.pack("<ff", *pair))[0])
        data = b"".join(w.to_bytes(8, "little") for w in words)
        for tid in (3, 4, 6):
            want = decode_value(table, tid, data, None, lambda a, n: None, budgets,
                                frame_budget=ByteBudget(1 << 20), snapshot_budget=ByteBudget(1 << 20))
            got = dec.decode_value(blob, tid, data, None, image, budgets, frame_budget=ByteBudget(1 << 20),
                                   snapshot_budget=ByteBudget(1 << 20))
            assert json.dumps(got) == json.dumps(want)


def test_float_keys_sort_as_the_reference_sorts_them(dec):
    """map[float64]int and map[float32]int are lists sorted by the key's
    JSON text, which is Python's repr of the float: the module writes a
    key's floats so (the shortest digits that read back), and sorts alike."""
    import struct
    from probe_compiler.decode import computed_group_layout, decode_value
    from probe_compiler.types import Field, GoType, Kind, MapLayout, TypeTable
    rng = random.Random(65)
    base = {1: GoType(1, "float64", Kind.FLOAT, 8), 2: GoType(2, "float32", Kind.FLOAT, 4),
            3: GoType(3, "int", Kind.INT, 8), 4: GoType(4, "unsafe.Pointer", Kind.UNSAFE_POINTER, 8),
            5: GoType(5, "internal/runtime/maps.Map", Kind.STRUCT, 32, fields=(
                Field("used", 0, 3), Field("dirPtr", 16, 4), Field("dirLen", 24, 3)))}
    base[6] = GoType(6, "map[float64]int", Kind.MAP, 8, key=1, elem=3, map_layout=MapLayout("swiss", 5))
    base[7] = GoType(7, "map[float32]int", Kind.MAP, 8, key=2, elem=3, map_layout=MapLayout("swiss", 5))
    table = TypeTable(base)
    blob, budgets = TypeBlob.build(table), Budgets()
    for i in range(150):
        tid = 6 if i % 2 else 7
        lay = computed_group_layout(table, table[table[tid].key], table[3])
        group = bytearray(lay.size)
        for s in range(8):
            r = rng.random()
            if r < 0.5:
                bits = rng.getrandbits(64)
            elif r < 0.8:
                bits = struct.unpack("<Q", struct.pack("<d", rng.choice(
                    [10.0 ** rng.randint(-330, 308), rng.randint(-10**6, 10**6) / rng.choice([1, 10, 3, 1000])])))[0]
            else:
                bits = rng.getrandbits(11) << 52 | rng.choice([0, 1, (1 << 52) - 1])
            if tid == 7:
                bits &= 0xFFFFFFFF
            size = table[table[tid].key].size
            group[lay.keys + s * lay.key_stride:lay.keys + s * lay.key_stride + size] = bits.to_bytes(size, "little")
            group[lay.elems + s * lay.elem_stride:lay.elems + s * lay.elem_stride + 8] = s.to_bytes(8, "little")
        memory = {0x1000: (8).to_bytes(8, "little") + bytes(8) + (0x2000).to_bytes(8, "little") + bytes(8),
                  0x2000: bytes(group)}
        read = lambda a, n, m=memory: next(b[a - s:a - s + n] for s, b in m.items() if s <= a and a + n <= s + len(b))  # noqa: E731
        want = decode_value(table, tid, (0x1000).to_bytes(8, "little"), None, read, budgets,
                            frame_budget=ByteBudget(1 << 20), snapshot_budget=ByteBudget(1 << 20))
        got = dec.decode_value(blob, tid, (0x1000).to_bytes(8, "little"), None, Image.of(memory.items()), budgets,
                               frame_budget=ByteBudget(1 << 20), snapshot_budget=ByteBudget(1 << 20))
        assert json.dumps(got) == json.dumps(want), i
        assert len(want[0]) == 8



def test_map_keys_sort_and_collide_as_the_reference_does(dec):
    """Object maps of string, duration, bool, uint and int keys (one group or
    a directory): keys starting "__", escapes, invalid UTF-8 that collides
    as U+FFFD, equal keys (the first one's place, the last one's value),
    cut strings that make the map a list, extreme ints, small budgets: the
    same JSON text, key order included, and the same bytes spent."""
    from probe_compiler.decode import computed_group_layout, decode_value
    from probe_compiler.types import Field, GoType, Kind, MapLayout, TypeTable
    le = lambda v, n=8: (v % (1 << 64)).to_bytes(n, "little")   # noqa: E731
    base = {1: GoType(1, "string", Kind.STRING, 16, fields=(Field("str", 0, 8), Field("len", 8, 3))),
            2: GoType(2, "time.Duration", Kind.INT, 8), 3: GoType(3, "int", Kind.INT, 8),
            4: GoType(4, "unsafe.Pointer", Kind.UNSAFE_POINTER, 8),
            5: GoType(5, "internal/runtime/maps.Map", Kind.STRUCT, 32, fields=(
                Field("used", 0, 3), Field("dirPtr", 16, 4), Field("dirLen", 24, 3))),
            8: GoType(8, "*uint8", Kind.POINTER, 8, elem=9), 9: GoType(9, "uint8", Kind.UINT, 1),
            10: GoType(10, "bool", Kind.BOOL, 1), 11: GoType(11, "uint", Kind.UINT, 8)}
    for tid, key in ((6, 1), (7, 2), (12, 10), (13, 11), (14, 3)):
        base[tid] = GoType(tid, "map[K]int", Kind.MAP, 8, key=key, elem=3, map_layout=MapLayout("swiss", 5))
    table = TypeTable(base)
    blob = TypeBlob.build(table)
    words = ["__a", "___b", "_c", "", "\x00", "\n", "\"", "\\", "é", "\ud7ff", "\U0001F600", "a", "a", "b\tc",
             "\x7f", "\u2028", "Z", "z"]
    texts = [w.encode("utf-8", "surrogatepass") for w in words] + [b"\xff", b"\xfe", b"\xe2\x82", b"x\xc3"]
    ints = [0, 1, -1, 5, 2**63 - 1, -2**63, 10**9, 3600 * 10**9, 7, 7, 3]
    rng = random.Random(1)
    for i in range(600):
        tid = rng.choice([6, 6, 6, 7, 12, 13, 14])
        lay = computed_group_layout(table, table[table[tid].key], table[3])
        memory, strs, groups = {}, 0x5000, b""
        ngroups = rng.choice([1, 1, 2])
        for _ in range(ngroups):
            group = bytearray(lay.size)
            for s in range(8):
                group[s] = rng.randrange(0x80) if rng.random() < 0.8 else 0x80    # full or empty
                if tid == 6:
                    text = rng.choice(texts)
                    memory[strs] = text or b"-"
                    key = le(strs) + le(len(text))
                    strs += 0x40
                elif tid == 12:
                    key = bytes([rng.choice([0, 1, 2])])
                else:
                    key = le(rng.choice(ints + ([2**64 - 1] if tid == 13 else [])))
                k, e = lay.keys + s * lay.key_stride, lay.elems + s * lay.elem_stride
                group[k:k + len(key)] = key
                group[e:e + 8] = le(s)
            groups += bytes(group)
        memory[0x2000] = groups
        if ngroups == 1:
            memory[0x1000] = le(rng.choice([3, 8, 20])) + le(0) + le(0x2000) + le(0)
        else:    # a directory of two entries, both the one table of two groups
            memory[0x3000] = bytes(16) + le(0x2000) + le(1)
            memory[0x3100] = le(0x3000) * 2
            memory[0x1000] = le(16) + le(0) + le(0x3100) + le(2)
        budgets = Budgets(string_bytes=rng.choice([2, 256]), elements=rng.choice([3, 64]))
        read = lambda a, n, m=memory: next(   # noqa: E731
            b[a - s:a - s + n] for s, b in m.items() if s <= a and a + n <= s + len(b))
        fb, fb2 = ByteBudget(rng.choice([100, 1 << 20])), None
        want = decode_value(table, tid, le(0x1000), None, read, budgets, frame_budget=fb,
                            snapshot_budget=ByteBudget(1 << 20))
        fb2 = ByteBudget(fb.limit)
        got = dec.decode_value(blob, tid, le(0x1000), None, Image.of(memory.items()), budgets, frame_budget=fb2,
                               snapshot_budget=ByteBudget(1 << 20))
        assert (json.dumps(got), fb2.used) == (json.dumps(want), fb.used), i
