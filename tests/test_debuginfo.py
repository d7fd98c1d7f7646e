"""Stripped Go binaries whose DWARF lives elsewhere (probe_compiler/debuginfo.py).

Everything here is real: the Go program is built as a PIE with a GNU build
id (-ldflags=-B gobuildid), its debug file is made with objcopy
--only-keep-debug, the binary is stripped with objcopy --strip-debug, and the
debuginfod server is Debian's, started on a local port over a folder.
"""
from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from probe_compiler import debuginfo
from probe_compiler.debuginfo import Debuginfod, find_dwarf
from probe_compiler.dwarf import DwarfInfo
from probe_compiler.errors import DebugInfoMissing
from probe_compiler.gobinary import GoBinary
from probe_compiler.spec import parse_spec
from server.snapshot_job import snapshot_pids
from targets import run_target

PIE = ("-buildmode=pie", "-ldflags=-B gobuildid")
OTHER_BUILD = ("-ldflags=-B gobuildid",)       # not PIE: another build id
SPEC = parse_spec("version: 1\nfunctions:\n  main.waitSleep:\n    capture: [d]\n"
                  "  main.waitChan:\n    capture: [c]\n")
NOWHERE = Debuginfod()                          # no servers: the search stops at the roots


def objcopy(*args) -> None:
    if shutil.which("objcopy") is None:
        pytest.skip("objcopy (binutils) is not installed")
    subprocess.run(["objcopy", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(autouse=True)
def no_debuginfod_from_the_machine(monkeypatch, tmp_path):
    monkeypatch.delenv("DEBUGINFOD_URLS", raising=False)
    monkeypatch.setenv("EXRAY_CACHE_DIR", str(tmp_path / "exray-cache"))


@pytest.fixture(scope="module")
def build(go_build, tmp_path_factory):
    """The unstripped twin, its debug file, and the binary stripped two ways."""
    d = tmp_path_factory.mktemp("builds")
    plain = go_build("stripped_target", PIE)
    objcopy("--only-keep-debug", plain, d / "app.debug")
    objcopy("--strip-debug", plain, d / "app")
    (d / "linked").mkdir()     # the debuglink case: the debug file next to it
    shutil.copy(d / "app.debug", d / "linked" / "app.debug")
    objcopy("--strip-debug", f"--add-gnu-debuglink={d / 'app.debug'}", plain, d / "linked" / "app")
    with GoBinary.open(plain) as b:
        build_id = b.build_id
    assert debuginfo.elf_facts(str(d / "app.debug")) == (build_id, True)
    return dict(plain=plain, debug=d / "app.debug", stripped=d / "app",
                linked=d / "linked" / "app", build_id=build_id)


def find(path, roots=(), debuginfod=NOWHERE):
    with GoBinary.open(path) as b:
        return find_dwarf(str(path), b, roots=roots, debuginfod=debuginfod)


def test_debuginfod_settings_from_the_environment():
    cfg = Debuginfod.from_env({"DEBUGINFOD_URLS": " http://a:8002  https://b/ ",
                               "DEBUGINFOD_TIMEOUT": "5", "DEBUGINFOD_MAXSIZE": "1000",
                               "EXRAY_CACHE_DIR": "/var/cache/exray"})
    assert cfg == Debuginfod(("http://a:8002", "https://b/"), "/var/cache/exray/debuginfod", 5, 1000)
    assert str(cfg.cached("ab12")) == "/var/cache/exray/debuginfod/ab12/debuginfo"
    assert debuginfo.debuginfo_url("https://b/", "ab12") == "https://b/buildid/ab12/debuginfo"
    home = Debuginfod.from_env({"HOME": "/h"})
    assert home.urls == () and home.cache_dir.endswith("/.cache/exray/debuginfod")


def test_dwarf_in_the_binary_comes_first(build):
    src = find(build["plain"])
    assert (src.step, src.path, src.looked) == ("binary", str(build["plain"]), ())


@pytest.mark.parametrize("where", ["next to it", ".debug", "debug root"])
def test_debuglink(build, tmp_path, where):
    app = tmp_path / "bin" / "app"
    app.parent.mkdir()
    shutil.copy(build["linked"], app)
    root = tmp_path / "root"
    folder = {"next to it": app.parent, ".debug": app.parent / ".debug",
              "debug root": Path(f"{root}{app.parent}")}[where]
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(build["debug"], folder / "app.debug")
    src = find(app, roots=[root])
    assert (src.step, src.path) == ("debuglink", str(folder / "app.debug"))
    # gdb's order: the places before it were looked at, and said why not.
    candidates = debuginfo.debuglink_candidates("", str(app), "app.debug", [str(root)])
    assert [x.place for x in src.looked[1:]] == candidates[:candidates.index(src.path)]


def test_debuglink_with_the_wrong_crc_is_rejected(build, tmp_path):
    shutil.copy(build["linked"], tmp_path / "app")
    wrong = tmp_path / "app.debug"
    wrong.write_bytes(build["debug"].read_bytes() + b"\0")   # same DWARF, another file
    src = find(tmp_path / "app")
    assert src.path is None
    [why] = [x for x in src.looked if x.place == str(wrong)]
    assert "CRC32" in why.outcome and "another build" in why.outcome


def test_build_id_under_a_debug_root(build, tmp_path):
    path = Path(debuginfo.build_id_path(str(tmp_path), build["build_id"]))
    path.parent.mkdir(parents=True)
    shutil.copy(build["debug"], path)
    src = find(build["stripped"], roots=[tmp_path])
    assert (src.step, src.path) == ("build-id", str(path))
    assert [x.step for x in src.looked] == ["binary", "debuglink"]


def test_build_id_file_of_another_build_is_rejected(build, go_build, tmp_path):
    path = Path(debuginfo.build_id_path(str(tmp_path), build["build_id"]))
    path.parent.mkdir(parents=True)
    objcopy("--only-keep-debug", go_build("stripped_target", OTHER_BUILD), path)
    src = find(build["stripped"], roots=[tmp_path])
    assert src.path is None
    [why] = [x for x in src.looked if x.place == str(path)]
    assert f"not {build['build_id']}" in why.outcome, why


def test_no_dwarf_anywhere_says_where_it_looked(build, tmp_path):
    src = find(build["stripped"], roots=[tmp_path])
    assert src.path is None
    assert [x.step for x in src.looked] == ["binary", "debuglink", "build-id", "debuginfod"]
    with pytest.raises(DebugInfoMissing) as e:
        DwarfInfo.load(str(build["stripped"]), build["build_id"], str(tmp_path), source=src)
    msg = str(e.value)
    for part in ("no DWARF found", debuginfo.build_id_path(str(tmp_path), build["build_id"]),
                 "DEBUGINFOD_URLS", "Stacks still work"):
        assert part in msg, msg


def test_twin_index_in_the_cache_is_not_dwarf_for_a_stripped_binary(build, tmp_path):
    """The index cache is keyed by build id, which the stripped binary shares
    with its twin. It used to get the twin's index and crash on the first DIE."""
    cache = str(tmp_path / "idx")
    twin = DwarfInfo.load(str(build["plain"]), build["build_id"], cache)
    twin_vars = [v.name for v in twin.function("main.waitSleep").variables]
    with pytest.raises(DebugInfoMissing, match="no DWARF found"):
        DwarfInfo.load(str(build["stripped"]), build["build_id"], cache)
    linked = DwarfInfo.load(str(build["linked"]), build["build_id"], cache)
    assert linked.from_cache and linked.elf_path == str(build["linked"]) + ".debug"
    assert [v.name for v in linked.function("main.waitSleep").variables] == twin_vars == ["d"]


@pytest.mark.parametrize("sections", ["SHF_COMPRESSED", "plain", ".zdebug"])
def test_debug_file_sections_compressed_or_not(build, tmp_path, sections):
    """Go writes SHF_COMPRESSED debug sections and objcopy keeps them;
    packaging tools may decompress them, or compress them the old GNU way."""
    shutil.copy(build["linked"], tmp_path / "app")
    debug = tmp_path / "app.debug"
    how = {"SHF_COMPRESSED": [], "plain": ["--decompress-debug-sections"],
           ".zdebug": ["--compress-debug-sections=zlib-gnu"]}[sections]
    objcopy(*how, build["debug"], debug)
    assert debug_info_kind(debug) == sections
    objcopy("--remove-section=.gnu_debuglink", f"--add-gnu-debuglink={debug}",
            tmp_path / "app")   # the link's CRC is of this file
    dw = DwarfInfo.load(str(tmp_path / "app"), build["build_id"], str(tmp_path / "idx"))
    assert dw.elf_path == str(debug)
    assert [v.name for v in dw.function("main.waitChan").variables] == ["c"]
    assert dw.type_by_name("runtime.g").field("goid") is not None


def debug_info_kind(path) -> str:
    from elftools.elf.elffile import ELFFile
    with open(path, "rb") as f:
        elf = ELFFile(f)
        if elf.get_section_by_name(".zdebug_info") is not None:
            return ".zdebug"
        compressed = elf.get_section_by_name(".debug_info")["sh_flags"] & 0x800
        return "SHF_COMPRESSED" if compressed else "plain"


# -- processes ---------------------------------------------------------------

def user_goroutines(rec):
    """What must match between the twins: ids, states, stacks, captured values."""
    assert rec.error is None, rec.error
    return [(g.goid, g.status, g.wait_reason, g.created_by,
             [(f.function, f.file, f.line, f.inlined) for f in g.frames],
             [(c.function, c.values, c.errors) for c in g.captures])
            for g in sorted(rec.goroutines, key=lambda g: g.goid) if not g.is_system]


def snapshot(binary):
    # One P: goroutine ids come from per-P batches of 16, so with several Ps
    # the twins' ids depend on which P ran main, not on the binary.
    with run_target(binary, dump=False, env={"GOMAXPROCS": "1"}) as t:
        [rec] = snapshot_pids([t.pid], SPEC)
    return rec


def test_stripped_pie_with_debug_file_next_to_it_snapshots_like_its_twin(build):
    twin = user_goroutines(snapshot(build["plain"]))
    assert user_goroutines(snapshot(build["linked"])) == twin
    assert any(c for *_, c in twin if c and c[0][1]), "nothing was captured"


def test_without_dwarf_stacks_work_and_values_say_why(build):
    twin = user_goroutines(snapshot(build["plain"]))
    rec = snapshot(build["stripped"])
    bare = user_goroutines(rec)
    assert [g[:5] for g in bare] == [g[:5] for g in twin]
    caps = [c for *_, cs in bare for c in cs]
    assert caps and all(set(v.values()) == {None} for _, v, _ in caps)
    assert any("no DWARF found" in w and "DEBUGINFOD_URLS" in w for w in rec.warnings), rec.warnings


def test_process_whose_binary_was_deleted(build, tmp_path):
    """/proc/PID/exe names the old path with " (deleted)": look next to that."""
    shutil.copy(build["linked"], tmp_path / "app")
    shutil.copy(build["debug"], tmp_path / "app.debug")
    with run_target(tmp_path / "app", dump=False) as t:
        (tmp_path / "app").unlink()              # an upgrade replaced it on disk
        assert os.readlink(f"/proc/{t.pid}/exe").endswith(" (deleted)")
        src = find(f"/proc/{t.pid}/exe")
    assert (src.step, src.path) == ("debuglink", str(tmp_path / "app.debug"))


def test_process_in_another_mount_namespace(build, tmp_path):
    """The binary and its debug file exist only in the process's own mount
    namespace: found through /proc/PID/root."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    script = (f"mount -t tmpfs none {hidden} && cp {build['linked']} {build['debug']} {hidden}/ "
              f"&& exec {hidden}/app")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode()
        if not line.startswith("READY"):
            pytest.skip(f"cannot run a process in its own mount namespace (unshare): "
                        f"{proc.stderr.read().decode()[-300:]}")
        assert not (hidden / "app").exists()         # not from here
        exe = f"/proc/{proc.pid}/exe"
        src = find(exe)
        assert src.path == f"/proc/{proc.pid}/root{hidden}/app.debug", src.describe()
    finally:
        proc.stdin.close()
        proc.wait(10)


# -- debuginfod ---------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scanned_files(url: str) -> int:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=2).read().decode()
    for line in text.splitlines():
        if line.startswith('scanned_files_total{source="file"}'):
            return int(float(line.split()[-1]))
    return 0


@contextlib.contextmanager
def debuginfod_server(folder: Path, work: Path):
    """Debian's debuginfod over `folder` on a free local port, once it has
    indexed every file there."""
    exe = shutil.which("debuginfod")
    if exe is None:
        pytest.skip("Debian's debuginfod package is not installed (scripts/setup.sh installs it)")
    port, log = free_port(), open(work / "debuginfod.log", "wb")
    proc = subprocess.Popen([exe, "-F", str(folder), "-p", str(port), "-d", str(work / "db.sqlite"),
                             "-t", "1", "-g", "0"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_indexed(url, len(list(folder.iterdir())), proc, work / "debuginfod.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def wait_indexed(url: str, files: int, proc, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"debuginfod exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            if scanned_files(url) >= files:
                return
        time.sleep(0.2)
    raise AssertionError(f"debuginfod did not index {files} files in 60 s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def served(build, tmp_path_factory):
    folder = tmp_path_factory.mktemp("debuginfod-files")
    shutil.copy(build["debug"], folder / "app.debug")
    with debuginfod_server(folder, tmp_path_factory.mktemp("debuginfod")) as url:
        yield url


def test_stripped_pie_from_debuginfod_snapshots_like_its_twin(build, served, monkeypatch, tmp_path):
    twin = user_goroutines(snapshot(build["plain"]))
    monkeypatch.setenv("DEBUGINFOD_URLS", f"http://127.0.0.1:{free_port()} {served}")  # 1st: down
    rec = snapshot(build["stripped"])
    assert user_goroutines(rec) == twin
    assert (tmp_path / "exray-cache" / "debuginfod" / build["build_id"] / "debuginfo").is_file()
    assert not any("DWARF" in w for w in rec.warnings), rec.warnings


def test_debuginfod_cache_answers_once_the_server_is_gone(build, tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    shutil.copy(build["debug"], folder)
    with debuginfod_server(folder, tmp_path) as url:
        cfg = Debuginfod((url,), str(tmp_path / "cache"), timeout_s=5)
        first = find(build["stripped"], debuginfod=cfg)
    assert first.step == "debuginfod"
    assert first.path == str(cfg.cached(build["build_id"]))
    assert Path(first.path).read_bytes() == build["debug"].read_bytes()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/metrics", timeout=2)     # really gone
    again = find(build["stripped"], debuginfod=cfg)
    assert (again.step, again.path) == ("debuginfod", first.path)
    assert os.listdir(Path(first.path).parent) == ["debuginfo"]  # no download left behind


def test_debuginfod_without_the_build_says_so(build, served, tmp_path):
    cfg = Debuginfod((served,), str(tmp_path / "cache"), 5)
    with GoBinary.open(build["plain"]) as b:
        other = b.build_id[:-4] + "0000"
    with pytest.raises(DebugInfoMissing, match="no debug file for this build id"):
        debuginfo.fetch_debuginfo(served, other, cfg)
    assert not (tmp_path / "cache" / other / "debuginfo").exists()


def test_debuginfod_size_cap(build, served, tmp_path):
    cfg = Debuginfod((served,), str(tmp_path / "cache"), 5, max_bytes=1000)
    src = find(build["stripped"], debuginfod=cfg)
    assert src.path is None
    assert "over 1000 bytes" in src.looked[-1].outcome, src.looked
    assert not list((tmp_path / "cache").rglob("*debuginfo*"))


class Silent(threading.Thread):
    """A TCP server that accepts and then says nothing, or trickles a byte at a time."""

    def __init__(self, trickle: bool):
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.trickle, self.stop = trickle, threading.Event()

    def run(self):
        conn, _ = self.sock.accept()
        with conn:
            if self.trickle:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
            while not self.stop.wait(0.1):
                if self.trickle:
                    with contextlib.suppress(OSError):
                        conn.sendall(b"x")


@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickling"])
def test_slow_debuginfod_times_out_and_falls_back(build, tmp_path, trickle):
    server = Silent(trickle)
    server.start()
    cfg = Debuginfod((server.url,), str(tmp_path / "cache"), timeout_s=1)
    try:
        t0 = time.monotonic()
        src = find(build["stripped"], debuginfod=cfg)
        took = time.monotonic() - t0
    finally:
        server.stop.set()
    assert src.path is None
    assert "no complete answer within 1 s" in src.looked[-1].outcome, src.looked
    assert took < 3, took
    assert not list((tmp_path / "cache").rglob("*debuginfo*"))


def test_debuginfod_down_is_a_clear_miss(build, tmp_path):
    cfg = Debuginfod((f"http://127.0.0.1:{free_port()}",), str(tmp_path / "cache"), 2)
    src = find(build["stripped"], debuginfod=cfg)
    assert src.path is None
    assert "cannot reach the server" in src.looked[-1].outcome


def test_server_sending_another_builds_file_is_rejected(build, go_build, tmp_path):
    other = tmp_path / "other.debug"
    objcopy("--only-keep-debug", go_build("stripped_target", OTHER_BUILD), other)
    body = other.read_bytes()

    class Wrong(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Wrong)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        cfg = Debuginfod((f"http://127.0.0.1:{httpd.server_port}",), str(tmp_path / "cache"), 5)
        src = find(build["stripped"], debuginfod=cfg)
    finally:
        httpd.shutdown()
    assert src.path is None
    assert f"not {build['build_id']}" in src.looked[-1].outcome, src.looked
    assert not list((tmp_path / "cache").rglob("*debuginfo*"))


# -- check-spec ---------------------------------------------------------------

def check_spec(tmp_path, binary, capsys):
    from server import cli
    (tmp_path / "exray.yaml").write_text(SPEC.text)
    rc = cli.main(["check-spec", str(tmp_path / "exray.yaml"), "--binary", str(binary)])
    return rc, capsys.readouterr().out


def test_check_spec_says_where_the_dwarf_came_from(build, tmp_path, capsys):
    rc, out = check_spec(tmp_path, build["plain"], capsys)
    assert rc == 0 and "DWARF in the binary itself" in out, out
    rc, out = check_spec(tmp_path, build["linked"], capsys)
    assert rc == 0 and f"DWARF from {build['linked']}.debug (.gnu_debuglink)" in out, out


def test_check_spec_without_dwarf_says_where_it_looked(build, tmp_path, capsys):
    rc, out = check_spec(tmp_path, build["stripped"], capsys)
    assert rc == 0, out
    assert "no DWARF found; looked at:" in out
    assert debuginfo.build_id_path("/usr/lib/debug", build["build_id"]) in out
    assert "DEBUGINFOD_URLS (debuginfod): not set" in out
    assert "only the functions were checked" in out
