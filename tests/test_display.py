"""Display types: durations checked against Go's own time.Duration.String()."""
from __future__ import annotations

import random
import sqlite3
import subprocess

import pytest

from server.display import BUILTIN_DISPLAY, display_types, format_value


def duration_samples() -> list[int]:
    ns = [0, 1, -1, 999, 1000, 1001, 1500, 999_999, 1_000_000, 1_500_000, 1_234_567,
          999_999_999, 1_000_000_000, 1_000_000_001, 59_999_999_999, 60_000_000_000,
          61_500_000_000, 3_599_999_999_999, 3_600_000_000_000, 3_600_000_000_001,
          86_400_000_000_000, 2**63 - 1, -2**63, -2**63 + 1, -1_500_000, 250]
    for p in range(19):                         # every power of ten, and its neighbours
        for k in (1, 2, 5, 9):
            for d in (-1, 0, 1):
                ns += [k * 10**p + d, -(k * 10**p + d)]
    rng = random.Random(3)
    for bits in range(1, 64):
        ns += [rng.getrandbits(bits), -rng.getrandbits(bits)]
    return [n for n in ns if -2**63 <= n < 2**63]


def test_durations_match_go(go_build):
    ns = duration_samples()
    out = subprocess.run([str(go_build("durations"))], input="".join(f"{n}\n" for n in ns),
                         capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    assert len(out) == len(ns)
    wrong = [(n, format_value(n, "duration_ns"), go) for n, go in zip(ns, out)
             if format_value(n, "duration_ns") != go]
    assert not wrong, wrong[:20]


@pytest.mark.parametrize("value, display, shown", [
    (0, "timestamp_ns", "1970-01-01T00:00:00.000000000Z"),
    (1_700_000_000_123_456_789, "timestamp_ns", "2023-11-14T22:13:20.123456789Z"),
    (-1, "timestamp_ns", "1969-12-31T23:59:59.999999999Z"),
    ("1700000000000000000", "timestamp_ns", "2023-11-14T22:13:20.000000000Z"),  # JSON text
    (3_600_000_000_000, "duration_ns", "1h0m0s"),
    (1_500_000, "duration_ns", "1.5ms"),
    (250, "duration_ns", "250ns"),
    (0, "bytes", "0 B"), (1023, "bytes", "1023 B"), (1024, "bytes", "1 KiB"),
    (1536, "bytes", "1.5 KiB"), (1024 * 1024 - 1, "bytes", "1 MiB"),
    (5 * 2**30 + 2**29, "bytes", "5.5 GiB"), (-2048, "bytes", "-2 KiB"),
    (0xC000123456, "hex", "0xc000123456"), (str(0xC000123456), "hex", "0xc000123456"),
    (-16, "hex", "-0x10"),
    (None, "hex", "NULL"), ('"a string"', "hex", '"a string"'), ('{"a":1}', "bytes", '{"a":1}'),
    (1.5, "duration_ns", "1.5"), (7, None, "7"), (7, "no-such-type", "7"),
    (10**30, "timestamp_ns", str(10**30)),            # beyond datetime: shown as is
])
def test_format_value(value, display, shown):
    assert format_value(value, display) == shown


def test_display_types():
    db = sqlite3.connect(":memory:")
    assert display_types(db) == BUILTIN_DISPLAY
    db.execute("CREATE TABLE exray_columns (table_name, column_name, source, expr, display)")
    db.executemany("INSERT INTO exray_columns VALUES (?,?,?,?,?)", [
        ("calls", "started", "capture", "req.Started", "timestamp_ns"),
        ("calls", "id", "capture", "id", None),
        ("slow", "waited", "report", None, "duration_ns")])
    got = display_types(db)
    assert got[("calls", "started")] == "timestamp_ns" and got[("slow", "waited")] == "duration_ns"
    assert ("calls", "id") not in got and got[("goroutines", "wait_ns")] == "duration_ns"
