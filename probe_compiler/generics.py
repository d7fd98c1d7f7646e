"""Generic functions: the source's `[...]` against the binary's instances.

Go compiles a generic function into one instance per GC shape of its type
arguments. The binary (pclntab, DWARF, tracebacks) names each instance with
the shapes: `main.Map[go.shape.int]`, `main.(*Cache[go.shape.string,go.shape.int]).Get`,
`main.Map[go.shape.int].func1` (a closure in it). Source, the editor and the
spec write `main.Map[...]` for all of them, as Go's tracebacks elide them.

Two relations, both pure string functions:

- `symbol_matches` is the editor's (server/lsp/gosource.py): any symbol
  with brackets stands for every bracket content, so a source symbol
  `Map[...]`, `Map[T]` or one instance's name all relate to every instance.
- `spec_matches` is the spec's: a symbol with `[...]` means every instance
  the compiler made (shape arguments only, not the compiler's wrappers with
  concrete types such as `main.(*Cache[string,int]).Get`); any other symbol,
  `main.Map[go.shape.int]` included, means exactly that function.
"""
from __future__ import annotations

from typing import Iterable

ANY = "[...]"
SHAPE = "go.shape."


def _groups(symbol: str) -> list[tuple[int, int]]:
    """[start, end) of every outermost balanced `[...]` group (brackets nest:
    `go.shape.[]int`, `go.shape.map[string]int`). An unclosed `[` ends the scan."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(symbol):
        if ch == "[":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
            if depth == 0:
                out.append((start, i + 1))
    return out


def generic_pattern(symbol: str) -> str:
    """`[go.shape.int]`, `[T]` and `[...]` all become `[...]`."""
    parts, last = [], 0
    for lo, hi in _groups(symbol):
        parts += [symbol[last:lo], ANY]
        last = hi
    return "".join(parts) + symbol[last:]


def symbol_matches(symbol: str, binary_name: str) -> bool:
    """A source symbol (`G[...]`) against a binary's name (`G[go.shape.int]`): the editor's relation."""
    if symbol == binary_name:
        return True
    return "[" in symbol and generic_pattern(symbol) == generic_pattern(binary_name)


def is_generic_pattern(symbol: str) -> bool:
    """Does a spec symbol stand for every instance (`main.Map[...]`)?"""
    return ANY in symbol


def is_shape_instance(name: str) -> bool:
    """A binary name whose every type argument list is the compiler's shapes."""
    groups = _groups(name)
    return bool(groups) and all(name.startswith(SHAPE, lo + 1) for lo, _ in groups)


def spec_matches(symbol: str, binary_name: str) -> bool:
    """The spec's relation: `[...]` symbols match every shape instance, others only themselves."""
    if symbol == binary_name:
        return True
    return (is_generic_pattern(symbol) and is_shape_instance(binary_name)
            and generic_pattern(symbol) == generic_pattern(binary_name))


def spec_instances(symbol: str, names: Iterable[str]) -> list[str]:
    """The names among `names` that a spec symbol captures, sorted, each once."""
    pattern = generic_pattern(symbol)
    return sorted({n for n in names if "[" in n and generic_pattern(n) == pattern
                   and spec_matches(symbol, n)})


def suggestion_names(names: Iterable[str]) -> set[str]:
    """Names to suggest from: each name, and `[...]` for each generic one's instances."""
    out = set()
    for n in names:
        out.add(n)
        if "[" in n and is_shape_instance(n):
            out.add(generic_pattern(n))
    return out
