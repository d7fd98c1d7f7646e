"""Fuzzing the spec loader: mutations of the repository's real specs and of
every doc example, through both ways Ex-Ray reads a spec (the CLI's
parse_spec, which stops at the first problem, and the editor's parse_spec
without SQL plus check_spec, which collects them all).

A fixed seed and a fixed count (EXRAY_FUZZ_SPECS, default 3,000): the same
inputs every run. Every input must end in a Spec or a SpecError, never in
another exception, and within a time bound; docs/security.md records the
count and the time of the last full run.
"""
from __future__ import annotations

import json
import os
import random
import re
import time
from pathlib import Path

import pytest
import yaml

from probe_compiler.errors import ProbeCompilerError
from probe_compiler.spec import parse_spec
from probe_compiler.spec_sql import check_spec
from test_doc_examples import _examples

ROOT = Path(__file__).resolve().parent.parent
COUNT = int(os.environ.get("EXRAY_FUZZ_SPECS", "3000"))
SEED = int(os.environ.get("EXRAY_FUZZ_SEED", "12"))
MAX_SECONDS_PER_INPUT = 10.0     # one input; a hang would show as far more


def _seeds() -> list[str]:
    files = sorted(ROOT.glob("examples/**/exray.yaml")) + sorted((ROOT / "tests/golden").rglob("*.yaml"))
    texts = [f.read_text() for f in files]
    for p in _examples():
        body = p.values[0]
        texts.append(body if re.search(r"^version:", body, re.M) else "version: 1\n" + body)
    return texts


# ------------------------------------------------------------ mutations of the text

TOKENS = ["\n", ": ", "- ", "[", "]", "{", "}", "&a ", "*a", "!!binary ", "!!python/object ", "? ",
          "|\n", ">-\n", "'", '"', "\\u0000", "\t", "#", "---\n", "...\n", "%YAML 1.1\n", "<<: *a\n",
          "version: 1\n", "include: ", "functions:\n", "reports:\n", "links:\n", "targets:\n",
          "capture: ", "columns: ", "sql: ", "SELECT ", "FROM ", "WITH RECURSIVE ", "(", ")", ";",
          "ATTACH ", "PRAGMA ", "0x", "-1", "1e999", "\u202e", "\ud800", "é", "\x00", "\x1b", "~",
          "null", "true", "99999999999999999999", "main.(*T).M", "*p", "&x", "x.(T)", "m[\"k\"]"]


def _text_mutation(rng: random.Random, text: str, seeds: list[str]) -> str:
    n = len(text)
    i, j = sorted((rng.randrange(n + 1), rng.randrange(n + 1)))
    op = rng.randrange(8)
    if op == 0:
        return text[:i] + text[j:]                                  # delete a range
    if op == 1:
        return text[:i] + rng.choice(TOKENS) + text[i:]             # insert a token
    if op == 2:
        return text[:i] + text[i:j] * rng.randint(2, 4) + text[j:]  # repeat a range
    if op == 3:
        other = rng.choice(seeds)
        k = rng.randrange(len(other) + 1)
        return text[:i] + other[k:k + rng.randint(1, 200)] + text[j:]   # splice another spec
    if op == 4 and n:
        k = rng.randrange(n)
        return text[:k] + chr(rng.randrange(0x20, 0x7f)) + text[k + 1:]   # one character
    if op == 5:                                                     # shift a line's indentation
        lines = text.split("\n")
        k = rng.randrange(len(lines))
        lines[k] = " " * rng.choice([0, 1, 2, 3, 4, 6, 8]) + lines[k].lstrip()
        return "\n".join(lines)
    if op == 6:                                                     # swap two lines
        lines = text.split("\n")
        a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[a], lines[b] = lines[b], lines[a]
        return "\n".join(lines)
    return text[:i] + "".join(rng.choice(TOKENS) for _ in range(rng.randint(2, 6))) + text[j:]


# ------------------------------------------------------------ mutations of the YAML structure

VALUES = [None, True, 0, -1, 2**70, 1.5, float("inf"), "", "x", "*p", "SELECT 1", "main.main",
          [], {}, [None], {"": None}, ["a", ["b"]], {"expr": 5}, {"sql": ["x"]}, "a" * 300,
          {"from": "t(", "to": 3}, {"exe": None, "pid": "1"}, "../../etc/passwd", "/**", "*.yaml"]
KEYS = ["version", "include", "functions", "reports", "links", "targets", "capture", "columns",
        "table", "expr", "name", "display", "sql", "description", "from", "to", "exe", "pid",
        "agent", "limits", "tabel", "", "main.(*T).M", "sqlite_x", "processes", "raw_x", "_errors"]


def _nodes(tree, path=()):
    yield path, tree
    if isinstance(tree, dict):
        for k, v in list(tree.items()):
            yield from _nodes(v, path + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _nodes(v, path + (i,))


def _structure_mutation(rng: random.Random, text: str) -> str | None:
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(tree, (dict, list)):
        return None
    nodes = list(_nodes(tree))
    for _ in range(rng.randint(1, 3)):
        path, node = rng.choice(nodes)
        parent = tree
        for p in path[:-1]:
            parent = parent[p]
        op = rng.randrange(6)
        if path and op == 0:                                   # replace a value by another type
            parent[path[-1]] = json.loads(json.dumps(rng.choice(VALUES)))
        elif path and op == 1 and isinstance(parent, dict):    # drop a key
            parent.pop(path[-1], None)
        elif isinstance(node, dict) and op == 2:               # add a key, known or not
            node[rng.choice(KEYS)] = json.loads(json.dumps(rng.choice(VALUES)))
        elif isinstance(node, list) and node and op == 3:      # duplicate items
            node.extend(node[: rng.randint(1, len(node))])
        elif path and op == 4:                                 # nest the value
            parent[path[-1]] = [node] if rng.random() < 0.5 else {"x": node}
        elif isinstance(node, dict) and node and op == 5:      # rename a key
            k = rng.choice(list(node))
            node[rng.choice(KEYS)] = node.pop(k)
        nodes = list(_nodes(tree))
    try:
        return yaml.safe_dump(tree, sort_keys=False, allow_unicode=rng.random() < 0.5,
                              default_flow_style=rng.choice([None, True, False]))
    except (yaml.YAMLError, ValueError, RecursionError):
        return None


def _loads(text: str) -> bool:
    try:
        parse_spec(text, "/nonexistent/exray.yaml")
        return True
    except ProbeCompilerError:
        return False


def inputs(count: int = COUNT, seed: int = SEED):
    rng = random.Random(seed)
    seeds = _seeds()
    valid = [s for s in seeds if _loads(s)]      # mutating these reaches the SQL checks more often
    made = 0
    while made < count:
        text = rng.choice(valid if rng.random() < 0.7 else seeds)
        structural = rng.random() < 0.35
        if structural:
            text = _structure_mutation(rng, text)
            if text is None:
                continue
        for _ in range(rng.randint(0 if structural else 1, 3)):
            text = _text_mutation(rng, text, seeds)
        made += 1
        yield text


def _load_both_ways(text: str, path: str) -> str:
    """'ok' or 'error'; any other exception propagates."""
    outcome = "ok"
    try:
        parse_spec(text, path)
    except ProbeCompilerError:
        outcome = "error"
    try:
        spec = parse_spec(text, path, check_sql=False)
    except ProbeCompilerError:
        return outcome
    for e in check_spec(spec):
        assert isinstance(e, ProbeCompilerError) and e.line >= 0
    return outcome


@pytest.mark.timeout(1800)
def test_fuzz_the_spec_loader(tmp_path):
    (tmp_path / "services" / "a").mkdir(parents=True)        # for includes that name real files
    (tmp_path / "services" / "a" / "exray.yaml").write_text("version: 1\nfunctions:\n  a.Serve:\n")
    (tmp_path / "common.yaml").write_text("version: 1\n")
    os.mkfifo(tmp_path / "pipe.yaml")                          # a glob may match it: never block
    path = str(tmp_path / "exray.yaml")
    tally = {"ok": 0, "error": 0}
    slowest = (0.0, "")
    t0 = time.monotonic()
    for n, text in enumerate(inputs()):
        t = time.monotonic()
        try:
            tally[_load_both_ways(text, path)] += 1
        except Exception as e:  # noqa: BLE001 - the failure shows the input
            raise AssertionError(f"input {n} raised {type(e).__name__}: {e}\n---\n{text[:2000]}") from e
        took = time.monotonic() - t
        slowest = max(slowest, (took, text[:200]))
        assert took < MAX_SECONDS_PER_INPUT, (n, took, text[:2000])
    total = time.monotonic() - t0
    print(f"\nspec fuzz: {COUNT} inputs (seed {SEED}), {tally['ok']} loaded, {tally['error']} SpecErrors, "
          f"{total:.1f} s, slowest {slowest[0] * 1000:.0f} ms")
    assert sum(tally.values()) == COUNT
    assert tally["error"] and tally["ok"]                       # both kinds happened: the mutations bite
