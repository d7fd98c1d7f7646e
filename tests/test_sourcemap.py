"""server.lsp.sourcemap: frames' files -> workspace files, for absolute build
paths (this machine or another) and -trimpath module paths."""
from __future__ import annotations

from pathlib import Path

import pytest

from server.lsp.sourcemap import SourceMap, package_of, read_module_path


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    (tmp_path / "go.mod").write_text("// the service\nmodule example.com/svc // comment\n\ngo 1.21\n")
    for rel in ("main.go", "internal/db/db.go", "cmd/tool/main.go", "proc.go"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("package x\n")
    return tmp_path


def test_module_path(ws):
    assert read_module_path(ws) == "example.com/svc"
    assert read_module_path(ws / "internal") is None


def test_package_of():
    assert package_of("example.com/svc/internal/db.(*DB).Get") == "example.com/svc/internal/db"
    assert package_of("main.main.func1") == "main"
    assert package_of("runtime.gopark") == "runtime"


def test_trimpath_form(ws):
    sm = SourceMap(ws)
    assert sm.resolve("example.com/svc/main.go", "main.main") == ws / "main.go"
    assert sm.resolve("example.com/svc/internal/db/db.go",
                      "example.com/svc/internal/db.(*DB).Get") == ws / "internal/db/db.go"
    assert sm.resolve("example.com/svc/cmd/tool/main.go", "main.run") == ws / "cmd/tool/main.go"
    assert sm.resolve("example.com/svc/gone.go", "main.f") is None


def test_absolute_path_here(ws):
    sm = SourceMap(ws)
    assert sm.resolve(str(ws / "internal/db/db.go"), "example.com/svc/internal/db.Open") == ws / "internal/db/db.go"


def test_absolute_path_of_another_machine_through_the_module(ws):
    sm = SourceMap(ws)
    # A frame of a package in the module tells where the module was built ...
    sm.learn("example.com/svc/internal/db.(*DB).Get", "/home/ci/work/svc-123/internal/db/db.go")
    assert sm.build_roots == {"/home/ci/work/svc-123"}
    # ... so a main-package file there maps by its path under that root,
    assert sm.resolve("/home/ci/work/svc-123/main.go", "main.main") == ws / "main.go"
    assert sm.resolve("/home/ci/work/svc-123/cmd/tool/main.go", "main.run") == ws / "cmd/tool/main.go"


def test_longest_suffix_fallback(ws):
    sm = SourceMap(ws)
    assert sm.resolve("/build/elsewhere/cmd/tool/main.go", "main.main") == ws / "cmd/tool/main.go"
    assert sm.resolve("/build/elsewhere/main.go", "main.main") == ws / "main.go"


def test_other_modules_and_the_standard_library_stay_out(ws):
    sm = SourceMap(ws)
    # proc.go exists in the workspace, but runtime's proc.go is not it.
    assert sm.resolve("/usr/lib/go/src/runtime/proc.go", "runtime.gopark") is None
    assert sm.resolve("example.org/dep/proc.go", "example.org/dep.F") is None
    assert sm.resolve("/root/go/pkg/mod/example.com/svcx@v1/proc.go", "example.com/svcx.F") is None
    # Without a function, the file alone decides.
    assert sm.resolve("/usr/lib/go/src/runtime/proc.go") == ws / "proc.go"


def test_no_go_mod(tmp_path):
    (tmp_path / "main.go").write_text("package main\n")
    sm = SourceMap(tmp_path)
    assert sm.module is None
    assert sm.resolve("/x/y/main.go", "main.main") == tmp_path / "main.go"
    assert sm.resolve("/usr/lib/go/src/runtime/main.go", "runtime.main") is None
