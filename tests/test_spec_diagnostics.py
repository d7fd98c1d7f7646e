"""server.lsp.diagnostics: each kind of problem of exray.yaml on its exact
token, quick fixes applied and re-validated, against the real lspsymbols binary."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from lsprotocol.types import DiagnosticSeverity, Range

import gobuild
from probe_compiler.spec import parse_spec
from probe_compiler.spec_check import check_against_binary
from probe_compiler.spec_sql import check_spec
from server.lsp import diagnostics as dg
from server.lsp import specedit as se

PROG = Path(__file__).parent / "goprogs" / "lspsymbols"
URI = (PROG / "exray.yaml").as_uri()

SPEC = """\
version: 1
functions:
  example.com/svc/store.(*Store).Putt:
    capture: [key]
  example.com/svc/store.(*Store).Get:
    table: get
    capture:
      - s.itemz
      - {expr: kee, name: k}
    columns:
      kk: "k || '🙂' || kx"
  main.wrok:
reports:
  r1: "SELECT goid, k FROM gett"
  r2: |
    SELECT goid, kk
    FROM get WHERE kz = 1
  r3: SELECT goid, k FROM get
links:
  - {from: get(k), to: r3(gooid)}
"""


def token(text: str, r: Range) -> str:
    return dg._Text(text).slice(r)


def fix_all(text: str, diags) -> str:
    """Apply the preferred quick fix of each diagnostic, last first."""
    edits = []
    for d in diags:
        fixes = dg.quick_fixes(d, text)
        if fixes:
            assert fixes[0].is_preferred and fixes[0].kind == "quickfix"
            (e,) = fixes[0].edit.changes[URI]
            edits.append(e)
    return se.apply_edits(text, edits)


@pytest.fixture(scope="module")
def binary(go_build):
    return str(go_build("lspsymbols"))


def test_every_kind_on_its_token(binary):
    diags = dg.spec_diagnostics(URI, SPEC, binary_path=binary)
    got = [(d.code, d.range.start.line, d.range.start.character, d.range.end.character,
            token(SPEC, d.range)) for d in diags]
    assert got == [
        ("sql", 10, 24, 26, "kx"),            # after a 🙂: two UTF-16 units
        ("sql", 13, 27, 31, "gett"),
        ("sql", 16, 19, 21, "kz"),            # inside a block scalar
        ("link", 19, 26, 31, "gooid"),
        ("binary", 2, 2, 37, "example.com/svc/store.(*Store).Putt"),
        ("binary", 7, 10, 15, "itemz"),
        ("binary", 8, 15, 18, "kee"),
        ("binary", 11, 2, 11, "main.wrok"),
    ]
    assert all(d.severity == DiagnosticSeverity.Error and d.source == "exray" for d in diags)
    assert all(d.data["suggestions"] for d in diags)
    # the quick fixes make a spec with no problem left, in SQL or against the binary
    fixed = fix_all(SPEC, diags)
    assert "(*Store).Put:" in fixed and "s.items" in fixed and "expr: key" in fixed
    assert "main.work:" in fixed and "FROM get\"" in fixed and "r3(goid)" in fixed
    spec = parse_spec(fixed, str(PROG / "exray.yaml"))
    assert check_spec(spec) == [] and check_against_binary(spec, binary) == []
    assert dg.spec_diagnostics(URI, fixed, binary_path=binary) == []


def test_schema_and_yaml_errors_ranges():
    cases = [
        ("version: 1\nfunctions:\n  main.f:\n    tabel: x\n", (3, 4, 3, 9), "table"),
        ("version: 1\nfunctions:\n  main.f:\n    capture:\n      - expr: x\n        display: hexx\n",
         (5, 17, 5, 21), "hex"),
        ("version: 2\n", (0, 9, 0, 10), None),
        ("version: 1\nfunctions:\n  main.f:\n    capture: [a +]\n", (3, 16, 3, 17), None),
        ("version: 1\nfunctions:\n  main.f:\n    capture:\n      - *p\n", (4, 8, 4, 10), None),
        ("version: 1\nfunctions:\n  'main.(*s).Get':\n    table: 1abc\n", (3, 11, 3, 15), None),
        ("functions: {}\n", (0, 0, 0, 9), None),
    ]
    for text, (l1, c1, l2, c2), suggestion in cases:
        (d,) = dg.spec_diagnostics("file:///tmp/x/exray.yaml", text)
        assert d.code == "yaml", text
        assert (d.range.start.line, d.range.start.character, d.range.end.line, d.range.end.character) \
            == (l1, c1, l2, c2), (text, d.message)
        if suggestion:
            (fix, *_) = dg.quick_fixes(d, text)
            out = se.apply_edits(text, fix.edit.changes["file:///tmp/x/exray.yaml"])
            parse_spec(out)
            assert suggestion in out
        else:
            assert dg.quick_fixes(d, text) == []


def test_stale_fix_is_dropped():
    text = "version: 1\nfunctions:\n  main.f:\n    tabel: x\n"
    (d,) = dg.spec_diagnostics("file:///tmp/x/exray.yaml", text)
    assert dg.quick_fixes(d, text.replace("tabel", "tabul")) == []


def test_included_file_errors_point_at_include(tmp_path):
    (tmp_path / "sub.yaml").write_text("version: 1\nfunctions:\n  main.f:\n    bogus: 1\n")
    text = "version: 1\ninclude: [sub.yaml]\nfunctions:\n"
    (d,) = dg.spec_diagnostics((tmp_path / "exray.yaml").as_uri(), text)
    assert d.range.start.line == 1 and "sub.yaml:4:5" in d.message and "bogus" in d.message
    (d,) = dg.spec_diagnostics((tmp_path / "exray.yaml").as_uri(), "version: 1\ninclude: nope.yaml\n")
    assert token("version: 1\ninclude: nope.yaml\n", d.range) == "nope.yaml"


def test_workspace_functions():
    text = ("version: 1\nfunctions:\n  example.com/svc/store.(*Store).Gett:\n  main.sum-range1:\n"
            "  example.com/svc/store.Map[go.shape.int,go.shape.string]:\n  main.Apply[...]:\n"
            "  net/http.(*conn).serve:\n")
    diags = dg.spec_diagnostics(URI, text, workspace_root=str(PROG))
    (d,) = diags
    assert d.code == "workspace" and d.severity == DiagnosticSeverity.Warning
    assert token(text, d.range) == "example.com/svc/store.(*Store).Gett"
    assert d.data["suggestions"][0] == "example.com/svc/store.(*Store).Get"
    fixed = fix_all(text, diags)
    assert dg.spec_diagnostics(URI, fixed, workspace_root=str(PROG)) == []


def test_bad_binary_and_bad_input_never_raise(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an elf")
    (d,) = dg.spec_diagnostics(URI, "version: 1\nfunctions:\n  main.f:\n", binary_path=str(junk))
    assert d.code == "binary" and d.severity == DiagnosticSeverity.Warning
    for text in ["", "\x00\x01", "- a\n", "version: 1\nfunctions:\n  main.f: [\n", "{{{{"]:
        for d in dg.spec_diagnostics("file:///tmp/x/exray.yaml", text, binary_path="/nonexistent"):
            assert d.range.start.line >= 0


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to make a repository")
def test_vcs_revision_warning_and_git_head(tmp_path):
    repo = tmp_path / "svc"
    shutil.copytree(PROG, repo)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    exe = tmp_path / "svc.bin"
    subprocess.run([gobuild.go_exe(), "build", "-buildvcs=true", "-o", str(exe), "."], cwd=repo,
                   env=gobuild.go_env(), check=True, capture_output=True)
    head = dg.git_head(repo)
    real = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert head == real
    assert dg.git_head(repo / "store") == real          # from a subdirectory
    text = "version: 1\nfunctions:\n  main.main:\n"
    assert dg.spec_diagnostics(URI, text, binary_path=str(exe), workspace_head=head) == []
    _git(repo, "commit", "-q", "--allow-empty", "-m", "two")
    _git(repo, "pack-refs", "--all")                    # the ref now lives in packed-refs only
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    new_head = dg.git_head(repo)
    assert new_head != head and len(new_head) == 40
    (d,) = dg.spec_diagnostics(URI, text, binary_path=str(exe), workspace_head=new_head)
    assert d.code == "vcs" and d.severity == DiagnosticSeverity.Warning
    assert head[:12] in d.message and new_head[:12] in d.message and "moved" in d.message
    _git(repo, "checkout", "-q", "--detach", "HEAD~1")
    assert dg.git_head(repo) == head
    assert dg.git_head(tmp_path / "nowhere") is None          # /tmp is in no repository
