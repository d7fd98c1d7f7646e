"""LEB128 varints, as DWARF (ULEB128/SLEB128) and Go (uvarint: pclntab,
build info) write them. Each returns (value, position after it); reading past
the end of `buf` raises IndexError, which callers turn into their own error."""
from __future__ import annotations


def uleb128(buf, p: int) -> tuple[int, int]:
    b = buf[p]
    if b < 0x80:                # most values are small: one byte
        return b, p + 1
    v, shift = 0, 0
    while True:
        b = buf[p]
        p += 1
        v |= (b & 0x7F) << shift
        if b < 0x80:
            return v, p
        shift += 7


def sleb128(buf, p: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        b = buf[p]
        p += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            if b & 0x40:
                v -= 1 << shift
            return v, p
