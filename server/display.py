"""How a column's integer is shown: `display:` in the spec (timestamp_ns,
duration_ns, bytes, hex). The stored value stays the integer; these are the
strings the CLI and the editor show for it.

`display_types(db)` says which columns of a snapshot have a display type: the
built-in ones below plus what `exray_columns` (written by server.reports)
records for captures, extra columns and derived tables.
"""
from __future__ import annotations

import datetime as _dt
import json
import sqlite3

# Built-in columns whose meaning fixes their display (docs/snapshot-schema.md).
BUILTIN_DISPLAY: dict[tuple[str, str], str] = {
    ("processes", "captured_at"): "timestamp_ns",
    ("processes", "pause_ns"): "duration_ns",
    ("goroutines", "wait_ns"): "duration_ns",
    ("frames", "pc"): "hex",
}

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_value(value, display: str | None) -> str:
    """`value` as `display` shows it; values that are not integers (NULL, text,
    JSON that is not a number) and unknown display types fall back to str()."""
    if value is None:
        return "NULL"
    n = _as_int(value)
    fmt = _FORMATS.get(display or "")
    if n is None or fmt is None:
        return str(value)
    try:
        return fmt(n)
    except (OverflowError, ValueError):    # a timestamp outside datetime's years
        return str(value)


def _as_int(value) -> int | None:
    # Captured columns hold JSON text ("123"); extra columns hold SQL integers.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, (str, bytes)):
        try:
            v = json.loads(value)
        except ValueError:
            return None
        return _as_int(v) if not isinstance(v, (str, list, dict)) else None
    return None


def format_timestamp_ns(ns: int) -> str:
    """RFC 3339 in UTC with all nine digits of nanoseconds."""
    secs, frac = divmod(ns, 1_000_000_000)      # floor: pre-1970 instants stay exact
    t = _EPOCH + _dt.timedelta(seconds=secs)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def format_duration_ns(ns: int) -> str:
    """Go's time.Duration.String(): 1h0m0s, 1.5ms, 250ns, 0s, -2µs.

    Below a second: one unit (ns, µs, ms) with the fraction's trailing zeros
    dropped. From a second up: h, m and s, the seconds with up to nine
    fractional digits; hours are the largest unit (days vary in length)."""
    ns = max(min(ns, 2**63 - 1), -2**63)       # a time.Duration is an int64
    sign, u = ("-", -ns) if ns < 0 else ("", ns)
    if u == 0:
        return "0s"
    if u < 1_000_000_000:
        for unit, scale in (("ns", 1), ("µs", 1_000), ("ms", 1_000_000)):
            if u < scale * 1_000:
                return sign + _with_fraction(u, scale) + unit
    secs = _with_fraction(u % 60_000_000_000, 1_000_000_000) + "s"
    minutes = u // 60_000_000_000
    if minutes == 0:
        return sign + secs
    hours, minutes = divmod(minutes, 60)
    return sign + (f"{hours}h" if hours else "") + f"{minutes}m" + secs


def _with_fraction(n: int, scale: int) -> str:
    whole, frac = divmod(n, scale)
    if not frac:
        return str(whole)
    digits = f"{frac:0{len(str(scale)) - 1}d}".rstrip("0")
    return f"{whole}.{digits}"


def format_bytes(n: int) -> str:
    """512 B, 1.5 KiB, 3 MiB: binary units, at most one decimal."""
    sign, u = ("-", -n) if n < 0 else ("", n)
    if u < 1024:
        return f"{sign}{u} B"
    value = float(u)
    for unit in _BYTE_UNITS:
        value /= 1024
        shown = round(value, 1)
        # 1023.96 KiB rounds to 1024.0: show it as 1 MiB instead.
        if shown < 1024 or unit == _BYTE_UNITS[-1]:
            text = f"{shown:.1f}".removesuffix(".0")
            return f"{sign}{text} {unit}"
    raise AssertionError("unreachable")


def format_hex(n: int) -> str:
    return f"-0x{-n:x}" if n < 0 else f"0x{n:x}"


_FORMATS = {
    "timestamp_ns": format_timestamp_ns,
    "duration_ns": format_duration_ns,
    "bytes": format_bytes,
    "hex": format_hex,
}


def display_types(db: sqlite3.Connection) -> dict[tuple[str, str], str]:
    """(table, column) -> display type, for every column of `db` that has one."""
    out = dict(BUILTIN_DISPLAY)
    has = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='exray_columns'").fetchone()
    if has:
        out.update({(t, c): d for t, c, d in db.execute(
            "SELECT table_name, column_name, display FROM exray_columns WHERE display IS NOT NULL")})
        # An address (`&x`) is stored as an integer and shown as Go's %p shows it.
        for t, c in db.execute("SELECT table_name, column_name FROM exray_columns WHERE source = "
                               "'capture' AND display IS NULL AND ltrim(expr) LIKE '&%'"):
            out.setdefault((t, c), "hex")
            out.setdefault((t, "raw_" + c), "hex")
    return out
