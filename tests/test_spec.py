"""exray.yaml: the parser, and golden error messages with file, line and column.

Each tests/golden/spec_errors/NAME.yaml has its expected error in NAME.err.
Regenerate with EXRAY_UPDATE_GOLDEN=1 (then review the diff).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from probe_compiler.errors import SpecError
from probe_compiler.expr import Selector, Name
from probe_compiler.spec import (CAPTURE_KEYS, FUNCTION_KEYS, TOP_KEYS, CaptureSpec,
                                 default_table_name, load_spec, parse_spec)

GOLDEN = Path(__file__).parent / "golden" / "spec_errors"
UPDATE = os.environ.get("EXRAY_UPDATE_GOLDEN") == "1"

EXAMPLE = """\
version: 1
functions:
  main.(*server).GetInfo:        # Go symbol
    table: getinfo               # optional
    capture:
      - req.ID                   # shorthand
      - expr: s.mu.state
        name: mu_state
      - "*p"
      - len(s.tags)
  net/http.(*conn).serve:
    capture: []
  main.main:
"""


def test_example(tmp_path):
    path = tmp_path / "exray.yaml"
    path.write_text(EXAMPLE)
    spec = load_spec(path)
    assert spec.version == 1 and spec.path == str(path) and spec.text == EXAMPLE
    get, serve, main = spec.functions
    assert (get.symbol, get.table, get.line, get.column) == ("main.(*server).GetInfo", "getinfo", 3, 3)
    assert get.captures == [
        CaptureSpec("req.ID", "req_ID", 6, 9),
        CaptureSpec("s.mu.state", "mu_state", 7, 9),
        CaptureSpec("*p", "p", 9, 9),
        CaptureSpec("len(s.tags)", "len_s_tags", 10, 9),
    ]
    assert get.captures[0].ast == Selector(Name("req", 1), "ID", 5)
    assert (serve.table, serve.captures, serve.line) == ("net_http_conn_serve", [], 11)
    assert (main.table, main.captures) == ("main_main", [])
    assert spec.function("main.main") is main and spec.function("nope") is None


@pytest.mark.parametrize("symbol, table", [
    ("main.(*server).GetInfo", "main_server_GetInfo"),
    ("net/http.(*conn).serve", "net_http_conn_serve"),
    ("main.main.func1", "main_main_func1"),
    ("main.pair[...].Get", "main_pair_Get"),
    ("gopkg.in/yaml.v3.(*parser).parse", "gopkg_in_yaml_v3_parser_parse"),
])
def test_default_table_names(symbol, table):
    assert default_table_name(symbol) == table


def test_empty_functions_are_allowed():
    assert parse_spec("version: 1\n").functions == []
    assert parse_spec("version: 1\nfunctions:\n").functions == []
    assert parse_spec("version: 1\nfunctions: {}\n").functions == []


def test_keys_are_table_entries():
    # Growing the spec is adding an entry to these tables.
    assert list(TOP_KEYS) == ["version", "targets", "include", "functions", "reports", "links"]
    assert list(FUNCTION_KEYS) == ["table", "capture", "columns"]
    assert list(CAPTURE_KEYS) == ["expr", "name", "display"]


def test_error_carries_position():
    with pytest.raises(SpecError) as e:
        parse_spec("version: 1\nfunctions:\n  f:\n    tabel: x\n", "svc/exray.yaml")
    err = e.value
    assert (err.path, err.line, err.column) == ("svc/exray.yaml", 4, 5)
    assert err.detail == ("unknown key 'tabel' in function 'f' "
                          "(did you mean 'table'? expected one of table, capture, columns)")


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "exray.yaml")


def test_not_utf8(tmp_path):
    p = tmp_path / "exray.yaml"
    p.write_bytes(b"version: 1\n\xff\n")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(p)


CASES = sorted(p.stem for p in GOLDEN.glob("*.yaml"))


def test_golden_cases_exist():
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", CASES)
def test_golden_errors(name, monkeypatch):
    # Included files are found relative to the spec's path: the cases' folder.
    monkeypatch.chdir(GOLDEN)
    text = (GOLDEN / f"{name}.yaml").read_text()
    with pytest.raises(SpecError) as e:
        parse_spec(text, "exray.yaml")
    got = str(e.value) + "\n"
    want_path = GOLDEN / f"{name}.err"
    if UPDATE or not want_path.exists():
        want_path.write_text(got)
    assert got == want_path.read_text()
    # Every error points into the file (line and column 1-based, on an existing line).
    lines = text.splitlines() or [""]
    assert 1 <= e.value.line <= len(lines) + 1 and e.value.column >= 1
