"""exray.yaml: the parser, and golden error messages with file, line and column.

Each tests/golden/spec_errors/NAME.yaml has its expected error in NAME.err.
Regenerate with EXRAY_UPDATE_GOLDEN=1 (then review the diff).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

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
    assert list(TOP_KEYS) == ["version", "targets", "include", "functions", "reports", "links", "limits"]
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


# ------------------------------------------------------------ spec v1: the full form

FULL = """\
version: 1
targets:
  - exe: server
  - pid: 4242
  - agent: 10.0.0.7:7701
    exe: server
functions:
  main.(*server).handle:
    table: handle
    capture:
      - req.ID
      - expr: req.started
        name: started
        display: timestamp_ns
    columns:
      path: "req_ID->>'Path'"
      age:
        sql: "started - 5"
        display: duration_ns
  main.client:
    table: client_call
    capture: [req_id]
reports:
  blocked:
    sql: |
      SELECT h.goid, h.req_ID FROM handle h JOIN goroutines g USING (process_id, goid)
      WHERE g.wait_reason = 'sync.Mutex.Lock'
    description: requests waiting on a lock
  short: "SELECT * FROM blocked"
links:
  - name: client_to_server
    from: client_call(req_id)
    to: handle(req_ID)
    description: the server goroutine that serves this client request
  - from: short(goid)
    to: goroutines(goid)
"""


def test_full_example():
    from probe_compiler.spec import ColumnSpec, LinkEnd, TargetSpec
    spec = parse_spec(FULL, "svc/exray.yaml")
    assert spec.targets == [TargetSpec("server", None, None, 3, 5, "svc/exray.yaml"),
                            TargetSpec(None, 4242, None, 4, 5, "svc/exray.yaml"),
                            TargetSpec("server", None, "10.0.0.7:7701", 5, 5, "svc/exray.yaml")]
    handle = spec.functions[0]
    assert handle.captures[1].display == "timestamp_ns" and handle.path == "svc/exray.yaml"
    assert handle.columns == [ColumnSpec("path", "req_ID->>'Path'", 16, 7, None, "svc/exray.yaml"),
                              ColumnSpec("age", "started - 5", 17, 7, "duration_ns", "svc/exray.yaml")]
    blocked, short = spec.reports
    assert (blocked.name, blocked.line, blocked.description) == ("blocked", 24, "requests waiting on a lock")
    assert blocked.depends_on == ("handle", "goroutines") and short.depends_on == ("blocked",)
    link, default = spec.links
    assert (link.name, link.left, link.right) == ("client_to_server", LinkEnd("client_call", ("req_id",)),
                                                  LinkEnd("handle", ("req_ID",)))
    assert (link.left.line, link.left.column, link.line) == (32, 11, 31)
    assert default.name == "short_to_goroutines" and default.description == ""
    assert spec.files == ["svc/exray.yaml"]


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_include(tmp_path):
    _write(tmp_path, {
        "exray.yaml": "version: 1\ninclude: [services/*/exray.yaml, common.yaml]\n"
                      "functions:\n  main.main:\n",
        "services/a/exray.yaml": "version: 1\nfunctions:\n  a.Serve:\n    table: serve_a\n"
                                 "targets: [{exe: a}]\n",
        "services/b/exray.yaml": "version: 1\ninclude: ../../common.yaml\n"   # common twice: read once
                                 "reports:\n  b_frames: SELECT * FROM serve_a\n",
        "common.yaml": "version: 1\ninclude: exray.yaml\n"                    # a cycle: harmless
                       "links:\n  - {from: b_frames(goid), to: goroutines(goid)}\n",
    })
    spec = load_spec(tmp_path / "exray.yaml")
    root = str(tmp_path / "exray.yaml")
    a, b, common = (str(tmp_path / p) for p in ("services/a/exray.yaml", "services/b/exray.yaml", "common.yaml"))
    assert spec.files == [root, a, b, common]
    assert [(f.symbol, f.path) for f in spec.functions] == [("main.main", root), ("a.Serve", a)]
    assert [(r.name, r.path) for r in spec.reports] == [("b_frames", b)]
    assert [(t.exe, t.path) for t in spec.targets] == [("a", a)]
    assert [link.path for link in spec.links] == [common]
    assert spec.path == root and spec.text.startswith("version: 1\ninclude:")


def test_include_errors_name_the_included_file(tmp_path):
    _write(tmp_path, {"exray.yaml": "version: 1\ninclude: sub/x.yaml\n",
                      "sub/x.yaml": "version: 1\nfunctions:\n  f:\n    tabel: t\n"})
    with pytest.raises(SpecError) as e:
        load_spec(tmp_path / "exray.yaml")
    assert (e.value.path, e.value.line, e.value.column) == (str(tmp_path / "sub/x.yaml"), 4, 5)


def test_value_positions_of_every_style():
    from probe_compiler.spec import _Ctx
    text = 'a: plain text\nb: "q\\"x"\nc: \'it\'\'s\'\nd: |\n  one\n    two\n'
    ctx = _Ctx("x.yaml", text)
    nodes = {k.value: v for k, v in yaml.compose(text).value}
    assert ctx.value_positions(nodes["a"])[6] == (1, 10)        # 't' of text
    assert ctx.value_positions(nodes["b"])[2] == (2, 8)         # 'x' after the escaped quote
    assert ctx.value_positions(nodes["c"])[3] == (3, 9)         # 's' after ''
    assert ctx.value_positions(nodes["d"])[6] == (6, 5)         # 't' of two (value "one\n  two\n")


# ------------------------------------------------------------ JSON Schema

SCHEMA_INVALID = ["bad_display", "bad_version", "capture_not_list", "capture_number", "empty",
                  "functions_list", "links_mapping", "missing_expr", "missing_version", "report_not_string",
                  "table_not_string", "target_both", "target_bad_agent", "target_pid_string", "top_list",
                  "target_functions_number", "target_functions_mapping",
                  "unknown_capture_key", "unknown_function_key", "unknown_report_key", "unknown_top_key",
                  "version_string", "bad_column_name", "bad_table_name", "link_bad_end"]


def test_shipped_schema_is_generated():
    from probe_compiler.spec import SCHEMA_PATH, schema_text
    assert SCHEMA_PATH.read_text() == schema_text(), "run: python -m probe_compiler.spec --schema"


def _validator():
    import jsonschema
    from probe_compiler.spec import json_schema
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("text", [EXAMPLE, FULL, "version: 1\n", "version: 1\ninclude: a.yaml\n"])
def test_valid_specs_validate(text):
    errors = list(_validator().iter_errors(yaml.safe_load(text)))
    assert errors == []


@pytest.mark.parametrize("name", SCHEMA_INVALID)
def test_invalid_shapes_fail_the_schema(name):
    assert list(_validator().iter_errors(yaml.safe_load((GOLDEN / f"{name}.yaml").read_text())))


def test_schema_descriptions_come_from_the_key_tables():
    from probe_compiler.spec import json_schema
    schema = json_schema()
    assert schema["properties"]["functions"]["description"] == TOP_KEYS["functions"].doc
    assert schema["$defs"]["capture"]["properties"]["display"]["enum"] == [
        "bytes", "duration_ns", "hex", "timestamp_ns"]


def test_schema_command(capsys):
    from probe_compiler.spec import main, schema_text
    assert main(["--schema"]) == 0
    assert capsys.readouterr().out == schema_text()


def test_the_documented_example_loads(tmp_path):
    doc = (Path(__file__).parent.parent / "docs" / "spec.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    _write(tmp_path, {"exray.yaml": example, "services/a/exray.yaml": "version: 1\n"})
    spec = load_spec(tmp_path / "exray.yaml")
    assert [r.name for r in spec.reports] == ["blocked", "short"] and len(spec.links) == 1
    assert list(_validator().iter_errors(yaml.safe_load(example))) == []


TWO_BINARIES = """\
version: 1
targets:
  - exe: server
    functions: ["main.(*Server).*", main.main]
  - exe: client
    functions: main.runClient
  - pid: 77
functions:
  main.(*Server).getClient:
  main.runClient:
  main.main:
  main.Map[...]:
"""


def test_targets_expect_functions():
    from probe_compiler.spec import FunctionPattern
    spec = parse_spec(TWO_BINARIES)
    server, client, pid = spec.targets
    assert server.functions == (FunctionPattern("main.(*Server).*", 4, 18), FunctionPattern("main.main", 4, 37))
    assert client.functions == (FunctionPattern("main.runClient", 6, 16),)
    assert pid.functions == ()
    # Only `*` is special: parentheses, dots and [...] are literal.
    assert server.expects("main.(*Server).getClient").pattern == "main.(*Server).*"
    assert server.expects("main.(*Server).a.b") is not None
    assert server.expects("main.runClient") is None and server.expects("main.mainx") is None
    assert FunctionPattern("main.Map[...]").matches("main.Map[...]")
    assert not FunctionPattern("main.Map[...]").matches("main.Map[go.shape.int]")
    assert FunctionPattern("net/http.*").matches("net/http.(*conn).serve")
    # Which processes a target stands for: exe base names (deleted too), pids.
    assert server.names("server") and server.names("server (deleted)") and not server.names("client")
    assert pid.names("server", 77) and not pid.names("server", 78) and not pid.names("x")
    assert list(_validator().iter_errors(yaml.safe_load(TWO_BINARIES))) == []


def test_target_expectations_across_included_files(tmp_path):
    """An expectation may name a function of an included file; one that
    matches no function of the merged spec is an error at its entry."""
    _write(tmp_path, {"exray.yaml": "version: 1\ninclude: [client.yaml]\n"
                                    "targets: [{exe: client, functions: [main.runClient]}]\n",
                      "client.yaml": "version: 1\nfunctions:\n  main.runClient:\n"})
    assert load_spec(tmp_path / "exray.yaml").targets[0].expects("main.runClient")
    (tmp_path / "client.yaml").write_text("version: 1\nfunctions:\n  main.runClien:\n")
    with pytest.raises(SpecError) as e:
        load_spec(tmp_path / "exray.yaml")
    assert (e.value.path, e.value.line, e.value.column) == (str(tmp_path / "exray.yaml"), 3, 37)
    assert "did you mean main.runClien?" in str(e.value)
