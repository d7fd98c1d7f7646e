"""GoBinary against the toolchain and binutils: `go version -m` (build info),
`go tool buildid` and `readelf -n` (build ids), `go tool nm` (symbols), and the
binary's own runtime.buildVersion (static data)."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path
import subprocess

import pytest

import gobuild
from probe_compiler.errors import BinaryError, NotGoBinaryError
from probe_compiler.gobinary import GoBinary

PROG = "pclntab_basic"


def run(*args, cwd=None) -> str:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=True,
                          env=gobuild.go_env(), cwd=cwd).stdout


def go(*args, cwd=None) -> str:
    return run(gobuild.go_exe(), *args, cwd=cwd)


def version_m(path) -> dict[str, object]:
    """`go version -m` as {"go": version, "path": ..., "mod": [...], "build": {k: v}}."""
    lines = go("version", "-m", path).splitlines()
    info: dict[str, object] = {"go": lines[0].rsplit(": ", 1)[1], "build": {}}
    for line in lines[1:]:
        kind, *cols = line.strip("\t").split("\t")
        if kind == "build":
            key, _, value = cols[0].partition("=")
            info["build"][key] = value
        else:
            info[kind] = cols
    return info


@pytest.fixture(scope="module")
def prog(go_build):
    return go_build(PROG)


@pytest.fixture(scope="module")
def stripped(go_build):
    return go_build(PROG, ("-ldflags=-s -w",))


def test_build_info_matches_go_version_m(prog):
    want = version_m(prog)
    with GoBinary.open(str(prog)) as b:
        assert b.go_version == want["go"] == gobuild.go_version()
        assert b.build_info.path == want["path"][0]
        assert b.main_module == want["mod"][0] == f"exray.test/{PROG}"
        assert b.build_info.settings == want["build"]
        assert b.vcs_revision is None and b.vcs_modified is None  # not built in a repo
        assert b.arch == "amd64" and b.has_dwarf


def test_vcs_settings_from_a_git_checkout(tmp_path):
    if not shutil.which("git"):
        pytest.skip("git not installed")
    src = tmp_path / "repo"
    src.mkdir()
    (src / "main.go").write_text('package main\n\nfunc main() { println("hi") }\n')
    (src / "go.mod").write_text("module exray.test/vcs\n\ngo 1.21\n")
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    run(*git, "init", "-q", cwd=src)
    run(*git, "add", ".", cwd=src)
    run(*git, "commit", "-q", "-m", "init", cwd=src)
    (src / "extra.txt").write_text("dirty")  # untracked: the tree is modified
    go("build", "-buildvcs=true", "-o", tmp_path / "vcs", ".", cwd=src)
    want = version_m(tmp_path / "vcs")["build"]
    with GoBinary.open(str(tmp_path / "vcs")) as b:
        assert b.vcs_revision == want["vcs.revision"] == run("git", "rev-parse", "HEAD",
                                                             cwd=src).strip()
        assert b.vcs_modified is (want["vcs.modified"] == "true") is True
        assert b.main_module == "exray.test/vcs"


def test_build_id_matches_readelf_and_go_tool_buildid(prog, stripped):
    for path in (prog, stripped):
        notes = run("readelf", "-n", path)
        gnu = [ln.split(":", 1)[1].strip() for ln in notes.splitlines()
               if "Build ID:" in ln]
        with GoBinary.open(str(path)) as b:
            if gnu:
                assert b.build_id == gnu[0]
            else:
                assert b.build_id == go("tool", "buildid", path).strip()
            # the Go build id is always there as well: check we read that note too
            assert dict(b._notes())[("Go", 4)].decode() == go("tool", "buildid", path).strip()


def test_symbols_match_nm(prog):
    nm = {}
    for line in go("tool", "nm", "-size", prog).splitlines():
        addr, size, kind, name = line.split(None, 3)
        nm.setdefault(name, (int(addr, 16), int(size)))
    with GoBinary.open(str(prog)) as b:
        for name in ("main.main", "main.(*T).M", "main.sink", "runtime.buildVersion",
                     "runtime.firstmoduledata", "main.Map[go.shape.int]"):
            assert b.symbol(name) == nm[name], name
        assert b.symbol("main.nothere") is None


def test_read_static_reads_runtime_build_version(prog, stripped):
    with GoBinary.open(str(prog)) as b:
        addr, size = b.symbol("runtime.buildVersion")
        ptr, n = struct.unpack("<QQ", b.read_static(addr, size))
        assert bytes(b.read_static(ptr, n)).decode() == b.go_version
        # main.sink is a zero-initialized global: in .noptrbss, not in the file
        with pytest.raises(BinaryError, match="not file-backed"):
            b.read_static(b.symbol("main.sink")[0], 8)
        pcheader = b.elf.get_section_by_name(".gopclntab")["sh_addr"]
    with GoBinary.open(str(stripped)) as s:
        assert s.symbol("runtime.buildVersion") is None and not s.has_dwarf
        assert bytes(s.read_static(pcheader, 4)) == b"\xf1\xff\xff\xff"
        assert s.go_version == gobuild.go_version()


def test_errors_say_what_to_do(tmp_path, prog):
    with pytest.raises(BinaryError, match="cannot open"):
        GoBinary.open(str(tmp_path / "missing"))
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(BinaryError, match="not an ELF"):
        GoBinary.open(str(script))
    truncated = tmp_path / "truncated"
    truncated.write_bytes(prog.read_bytes()[:100])
    with pytest.raises(BinaryError):
        GoBinary.open(str(truncated))
    with pytest.raises(NotGoBinaryError, match="not built by the Go toolchain"):
        GoBinary.open(shutil.which("true") or "/bin/true")


def test_old_pclntab_is_rejected_at_open(tmp_path, prog):
    with GoBinary.open(str(prog)) as b:
        off = b.elf.get_section_by_name(".gopclntab")["sh_offset"]
    raw = bytearray(prog.read_bytes())
    raw[off:off + 4] = struct.pack("<I", 0xFFFFFFF0)  # the Go 1.18-1.19 magic
    old = tmp_path / "old"
    old.write_bytes(raw)
    with pytest.raises(BinaryError, match="Go 1.18-1.19; rebuild it with Go 1.20"):
        GoBinary.open(str(old))


@pytest.mark.parametrize("name", ["states", "values", "inventory"])
def test_gofunc_from_moduledata_equals_symbol(go_build, name):
    """moduledata.types can start right at epclntab (it does in net/http
    programs), which once made a neighbouring word pass for gofunc."""
    path = go_build(name) if name != "inventory" else build_example("inventory")
    with GoBinary.open(str(path)) as b:
        assert b.gofunc == b.symbol("go:func.*")[0]


def build_example(name):
    return gobuild.build(Path(__file__).parent.parent / "examples" / name)


def test_build_info_strings_truncated_or_overlong_are_binary_errors():
    from probe_compiler.buildinfo import _read_string
    from probe_compiler.errors import BinaryError
    assert _read_string(b"\x03abcd", 0, "x") == ("abc", 4)
    assert _read_string(b"\x00" + b"\x81\x01" + b"a" * 129, 1, "x") == ("a" * 129, 132)   # two-byte length
    with pytest.raises(BinaryError, match="truncated build info string"):
        _read_string(b"\x80\x80", 0, "x")                  # the length's varint never ends
    with pytest.raises(BinaryError, match="runs past the end"):
        _read_string(b"\x05ab", 0, "x")


# -- binaries Ex-Ray must refuse by name ---------------------------------------

HELLO = 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hello") }\n'
GO119 = Path("/usr/lib/go-1.19/bin/go")   # Debian's golang-1.19-go (scripts/setup.sh)


def _hello(tmp_path: Path) -> Path:
    (tmp_path / "main.go").write_text(HELLO)
    (tmp_path / "go.mod").write_text("module exray.test/hello\n\ngo 1.19\n")
    return tmp_path


@pytest.mark.skipif(not GO119.exists(), reason="Debian's golang-1.19-go is not installed "
                                               "(scripts/setup.sh installs it)")
def test_a_release_older_than_supported_is_named(tmp_path):
    src = _hello(tmp_path)
    env = dict(gobuild.go_env(), GOROOT="/usr/lib/go-1.19")
    subprocess.run([str(GO119), "build", "-o", "hello", "."], cwd=src, env=env, check=True,
                   capture_output=True)
    with pytest.raises(NotGoBinaryError) as e:
        GoBinary.open(src / "hello")
    msg = str(e.value)
    assert "built by go1.19" in msg and "Go 1.21 to 1.27" in msg and "rebuild it with Go 1.21" in msg


@pytest.mark.skipif(shutil.which("gccgo") is None, reason="gccgo is not installed "
                                                          "(scripts/setup.sh installs it)")
def test_a_gccgo_binary_is_named(tmp_path):
    src = _hello(tmp_path)
    subprocess.run(["gccgo", "-g", "-o", "hello", "main.go"], cwd=src, check=True, capture_output=True)
    with pytest.raises(NotGoBinaryError) as e:
        GoBinary.open(src / "hello")
    assert "built by gccgo" in str(e.value) and "go build" in str(e.value)


def test_build_description_says_release_and_mode():
    pie = gobuild.build(PROG, ("-buildmode=pie",), env={"CGO_ENABLED": "1"})
    with GoBinary.open(pie) as b:
        assert b.build_description == f"{gobuild.go_version()}, PIE, cgo"
    static = gobuild.build(PROG, ("-ldflags=-s -w",))
    with GoBinary.open(static) as b:
        assert b.build_description == f"{gobuild.go_version()}, exe, stripped"
