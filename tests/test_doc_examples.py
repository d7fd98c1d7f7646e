"""Every exray.yaml example in the README and docs/ is a spec Ex-Ray accepts.

A newcomer copies these first, so each ```yaml block is loaded the way
`exray check-spec` loads a file: YAML, schema, SQL of columns, reports and
links. A block without `version:` is a fragment of a spec and is checked
inside a minimal one; a block that includes other files gets them (as empty
specs) in a scratch folder. The README's spec is also checked against the
binary it is written for, the inventory example service.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import gobuild
from probe_compiler.spec import load_spec
from probe_compiler.spec_check import check_against_binary

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.S | re.M)


def _examples():
    for doc in DOCS:
        text = doc.read_text()
        for m in BLOCK.finditer(text):
            body = m.group(1)
            if not any(line.strip() and not line.lstrip().startswith("#") for line in body.splitlines()):
                continue            # a comment only (the yaml-language-server modeline)
            line = text.count("\n", 0, m.start()) + 2
            yield pytest.param(body, id=f"{doc.relative_to(ROOT)}:{line}")


def _as_spec_file(body: str, folder: Path) -> Path:
    if not re.search(r"^version:", body, re.M):
        body = "version: 1\n" + body
    for pattern in re.findall(r"include: \[(.*?)\]", body):
        for glob in pattern.split(","):
            f = folder / glob.strip().replace("*", "example")
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text("version: 1\n")
    path = folder / "exray.yaml"
    path.write_text(body)
    return path


@pytest.mark.parametrize("body", list(_examples()))
def test_doc_example_is_a_valid_spec(body, tmp_path):
    load_spec(_as_spec_file(body, tmp_path))


def test_readme_spec_fits_the_inventory_service(tmp_path):
    readme = (ROOT / "README.md").read_text()
    body = next(m.group(1) for m in BLOCK.finditer(readme) if "exe: inventory" in m.group(1))
    spec = load_spec(_as_spec_file(body, tmp_path))
    binary = gobuild.build(ROOT / "examples" / "inventory")
    assert check_against_binary(spec, str(binary)) == []


def test_an_integer_display_on_a_time_is_refused_where_it_is_written(tmp_path):
    """display: timestamp_ns on a time.Time would show text as a number and
    compare text with integers in SQL: check-spec refuses it, at its line."""
    spec = tmp_path / "exray.yaml"
    spec.write_text("version: 1\nfunctions:\n  main.(*store).lookup:\n    capture:\n"
                    "      - req.ID\n      - {expr: req.Started, display: timestamp_ns}\n"
                    "      - {expr: req.ID, name: id_hex, display: hex}\n")
    binary = gobuild.build(ROOT / "examples" / "inventory")
    [e] = check_against_binary(load_spec(spec), str(binary))
    assert (e.line, e.column) == (6, 9)
    assert "is a time.Time, but display 'timestamp_ns' shows an integer" in str(e)
    assert "RFC 3339 string in UTC" in str(e)
