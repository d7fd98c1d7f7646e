"""A bad LSP client, byte by byte: the real server process over stdio.

Every framing error is skipped and the next valid message is answered; every
request gets a reply or an error; a Content-Length past the limit is refused
without allocating it; a body cut short ends the session cleanly. The
server's peak memory (VmHWM) is held to a bound: docs/security.md quotes it.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path

import pytest

from lsp_helpers import ROOT, SERVER_COMMAND, server_env
from server.lsp.framing import MAX_CONTENT_LENGTH, MAX_HEADER_LINE, FrameReader, FramingError

pytestmark = pytest.mark.timeout(120)

# The server's peak RSS (VmHWM). Measured: 50 MB after initialize, still
# 50 MB after every refused frame (one allocation of the 99999999999-byte
# Content-Length would be 93 GB); 111 MB after a 20 MB didOpen.
MAX_PEAK_AFTER_FRAMING_ERRORS_KB = 100 << 10
MAX_PEAK_AFTER_20MB_KB = 200 << 10


def frame(obj) -> bytes:
    body = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def request(i, method: str, params=None) -> bytes:
    return frame({"jsonrpc": "2.0", "id": i, "method": method, "params": params or {}})


INIT = {"processId": None, "rootUri": None, "capabilities": {}}


class Session:
    """The server as a process; `send` writes raw bytes, `reply` reads framed answers."""

    def __init__(self, tmp: Path):
        self.p = subprocess.Popen(SERVER_COMMAND, cwd=tmp, env=server_env(), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self.p.stdout], [], [], left)[0]:
            raise TimeoutError(f"no answer from the server; stderr: {self.stderr()}")
        chunk = os.read(self.p.stdout.fileno(), 1 << 16)
        if not chunk:
            raise EOFError(f"the server closed stdout; stderr: {self.stderr()}")
        self.buf += chunk

    def message(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        n = int(dict(line.split(b": ", 1) for line in head.split(b"\r\n"))[b"Content-Length"])
        while len(rest) < n:
            self._fill(deadline)
            head, _, rest = self.buf.partition(b"\r\n\r\n")
        self.buf = rest[n:]
        return json.loads(rest[:n])

    def reply(self, msg_id, timeout: float = 30) -> dict:
        """The response to msg_id, skipping notifications (log messages...)."""
        while True:
            m = self.message(timeout)
            if "method" not in m and m.get("id") == msg_id:
                return m

    def peak_kb(self) -> int:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def stderr(self) -> str:
        if self.p.poll() is None:
            return "(still running)"
        return self.p.stderr.read().decode(errors="replace")[-3000:]

    def wait(self, timeout: float = 20) -> int:
        self.p.stdin.close()
        return self.p.wait(timeout)

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


@pytest.fixture
def session(tmp_path):
    s = Session(tmp_path)
    yield s
    s.close()


def alive(s: Session, i: int) -> None:
    """The server answers a request (an unknown method: 'method not found')."""
    s.send(request(i, "exray/noSuchMethod"))
    r = s.reply(i)
    assert r["error"]["code"] == -32601, r


def test_framing_errors_resynchronize(session):
    s = session
    s.send(request(1, "initialize", INIT))
    assert "capabilities" in s.reply(1)["result"]
    cases = [
        b"Content-Length: 99999999999\r\n\r\n",                 # refused, never allocated
        b"this is not a header\r\n\r\n",                       # garbage header line
        b"Content-Type: application/json\r\n\r\n{\"x\": 1}",    # no Content-Length (body glued to the next)
        b"Content-Length: -5\r\n\r\n{}",                        # negative
        b"Content-Length: ten\r\n\r\n{}",                       # not a number
        b"Content-Length: 0x10\r\n\r\n{}",
        b"x" * (MAX_HEADER_LINE * 4) + b"\r\n",                 # an overlong line
        b"\r\n\r\n",                                            # stray blank lines
        b"Content-Length: %d\r\n\r\n" % (MAX_CONTENT_LENGTH + 1),
    ]
    for i, bad in enumerate(cases, start=10):
        s.send(bad)
        alive(s, i)
    assert s.peak_kb() < MAX_PEAK_AFTER_FRAMING_ERRORS_KB, s.peak_kb()
    s.send(request(99, "shutdown"))
    assert s.reply(99)["result"] is None
    s.send(frame({"jsonrpc": "2.0", "method": "exit"}))
    assert s.wait() == 0


def test_every_request_gets_an_answer(session):
    s = session
    s.send(request(1, "initialize", INIT))
    s.reply(1)
    s.send(frame({"jsonrpc": "2.0", "method": "initialized", "params": {}}))
    s.send(frame(b"{not json"))
    r = s.reply(None)
    assert r["error"]["code"] == -32700
    s.send(frame(b"[1, 2]"))                                   # a batch: not LSP
    assert s.reply(None)["error"]["code"] == -32600
    s.send(frame(b"42"))
    assert s.reply(None)["error"]["code"] == -32600
    s.send(frame({"id": 3, "method": "textDocument/hover"}))   # no jsonrpc
    assert s.reply(3)["error"]["code"] == -32600
    s.send(frame({"jsonrpc": "2.0", "id": 4, "method": 17}))   # method not a string
    assert s.reply(4)["error"]["code"] == -32600
    s.send(frame({"jsonrpc": "2.0", "id": {"x": 1}, "method": "shutdown"}))   # id of a bad type
    assert s.reply(None)["error"]["code"] == -32600
    s.send(request(5, "textDocument/hover", {"textDocument": 5, "position": "x"}))
    r = s.reply(5)
    assert r["error"]["code"] == -32602 and "position.line" in r["error"]["message"], r
    s.send(request(6, "textDocument/inlayHint", {"textDocument": {"uri": []}, "range": None}))
    assert s.reply(6)["error"]["code"] == -32602
    s.send(request(7, "workspace/executeCommand", {"command": "exray.runQuery", "arguments": 5}))
    assert "error" in s.reply(7)
    s.send(request(8, "textDocument/hover",
                   {"textDocument": {"uri": "file:///nonexistent/x.go"}, "position": {"line": -1, "character": 0}}))
    assert s.reply(8)["id"] == 8
    s.send(frame(b'{"jsonrpc": "2.0", "id": 9, "method": "x", "params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"))
    assert s.reply(None)["error"]["code"] == -32700            # too deep for the parser: no id known
    s.send(request(10, "shutdown"))
    s.reply(10)
    s.send(request(11, "textDocument/hover", {}))             # after shutdown: an error, not silence
    assert s.reply(11)["error"]["code"] == -32600
    s.send(frame({"jsonrpc": "2.0", "method": "exit"}))
    assert s.wait() == 0


@pytest.mark.parametrize("tail", [
    b"Content-Length: 100\r\n\r\n{\"jsonrpc\": \"2.0\"",          # a body cut short
    b"Content-Length: 10\r\n",                                   # headers cut short
    b"Content-Len",                                              # a header line cut short
    b"",
])
def test_the_end_of_input_ends_the_session(session, tail):
    s = session
    s.send(request(1, "initialize", INIT))
    s.reply(1)
    s.send(tail)
    t = time.monotonic()
    assert s.wait(timeout=20) == 0
    assert time.monotonic() - t < 15


def test_a_huge_body_within_the_limit_is_read_and_answered(session):
    """A 20 MB body (a didOpen of a huge file): read, handled, memory bounded."""
    s = session
    s.send(request(1, "initialize", INIT))
    s.reply(1)
    text = "x" * (20 << 20)
    s.send(frame({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
        "uri": "file:///tmp/huge.txt", "languageId": "plaintext", "version": 1, "text": text}}}))
    alive(s, 2)
    assert s.peak_kb() < MAX_PEAK_AFTER_20MB_KB, s.peak_kb()


# ------------------------------------------------------------ the reader alone, without a process

def _frames(data: bytes) -> list:
    import io
    r = FrameReader(io.BufferedReader(io.BytesIO(data)), max_length=1000)
    out = []
    while (f := r.next()) is not None:
        out.append(f if isinstance(f, bytes) else "ERR")
    return out + ([r.ended] if r.ended else [])


def test_reader_resynchronizes_on_the_next_content_length():
    ok = frame(b'{"a": 1}')
    assert _frames(ok + ok) == [b'{"a": 1}'] * 2
    assert _frames(b"garbage\r\n" + ok) == ["ERR", b'{"a": 1}']
    assert _frames(b"X: 1\r\n\r\n{}" + ok) == ["ERR", b'{"a": 1}']            # glued to the next header
    assert _frames(b"Content-Length: 5000\r\n\r\n" + b"y" * 5000 + ok) == ["ERR", b'{"a": 1}']
    assert _frames(b"content-length: 8\r\n\r\n{\"a\": 1}") == [b'{"a": 1}']      # names: any case
    assert _frames(b"Content-Length: 9\r\n\r\n{}") == ["the input ended 7 bytes before the end of a message's body"]
    assert isinstance(FramingError("x"), FramingError)


def _open_spec(s, root, text: str, wanted) -> list:
    """Initialize the server on `root`, open its exray.yaml with `text`, and
    return the first diagnostics published for it that satisfy `wanted`."""
    s.send(request(1, "initialize", {**INIT, "rootUri": root.as_uri()}))
    s.reply(1)
    s.send(frame({"jsonrpc": "2.0", "method": "initialized", "params": {}}))
    uri = (root / "exray.yaml").as_uri()
    s.send(frame({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
        "uri": uri, "languageId": "yaml", "version": 1, "text": text}}}))
    deadline = time.monotonic() + 60
    while True:
        m = s.message(timeout=max(deadline - time.monotonic(), 0.1))
        if m.get("method") == "textDocument/publishDiagnostics" and m["params"]["uri"] == uri \
                and wanted(m["params"]["diagnostics"]):
            return m["params"]["diagnostics"]


# ------------------------------------------------------------ a hostile spec in the workspace

@pytest.mark.parametrize("include,words", [
    ("pipe.yaml", "FIFO"), ("/dev/zero", "outside the module root"), ("/**", "outside the module root")])
def test_a_hostile_include_is_a_diagnostic_and_the_server_still_shuts_down(tmp_path, include, words):
    """The editor opens a repository whose exray.yaml includes a FIFO (a
    worker blocked for good, and shutdown was ignored), /dev/zero (3.35 GB
    in 5 s) or /**: a diagnostic at the include, then a prompt shutdown."""
    os.mkfifo(tmp_path / "pipe.yaml")
    text = f'version: 1\ninclude: ["{include}"]\n'
    (tmp_path / "exray.yaml").write_text(text)
    s = Session(tmp_path)
    try:
        diags = _open_spec(s, tmp_path, text, lambda ds: bool(ds))
        (d,) = [d for d in diags if words in d["message"]]
        assert d["range"]["start"]["line"] == 1, d
        assert s.peak_kb() < MAX_PEAK_AFTER_FRAMING_ERRORS_KB, s.peak_kb()
        t = time.monotonic()
        s.send(request(2, "shutdown"))
        s.reply(2, timeout=15)
        s.send(frame({"jsonrpc": "2.0", "method": "exit"}))
        assert s.wait() == 0 and time.monotonic() - t < 15
    finally:
        s.close()


def test_reader_fuzz():
    """2,000 mutated streams of valid messages (seeded): the reader returns
    bodies, framing errors or the end, never raises, and never hands out a
    body over its limit."""
    import io
    import random
    rng = random.Random(12)
    valid = b"".join([request(1, "initialize", INIT), frame({"jsonrpc": "2.0", "method": "initialized"}),
                      request(2, "textDocument/hover", {"textDocument": {"uri": "file:///x.go"},
                                                        "position": {"line": 1, "character": 2}}),
                      request(3, "shutdown")])
    pieces = [b"\r\n", b"\n", b"Content-Length: ", b"Content-Length: 99999999999\r\n", b":", b"-1",
              b"\r\n\r\n", b"\x00", b"\xff" * 10, b"content-length:5\r\n", b" " * 50, b"x" * 9000]
    for _ in range(2000):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(data) + 1)
            op = rng.randrange(3)
            if op == 0:
                del data[i:i + rng.randint(1, 40)]
            elif op == 1:
                data[i:i] = rng.choice(pieces)
            elif data:
                data[min(i, len(data) - 1)] = rng.randrange(256)
        r = FrameReader(io.BufferedReader(io.BytesIO(bytes(data))), max_length=4096)
        for _ in range(10_000):
            f = r.next()
            if f is None:
                break
            assert isinstance(f, (bytes, FramingError)) and (not isinstance(f, bytes) or len(f) <= 4096)
        else:
            raise AssertionError("the reader did not reach the end of a finite stream")


def test_hostile_workspace_files_neither_hang_nor_fill_the_server(tmp_path):
    """Go files and .git files the server reads on its own: a FIFO named
    pipe.go, a link named zero.go to /dev/zero, a FIFO as .git/HEAD. The
    spec's diagnostics still come (from the real main.go), memory stays
    bounded, and shutdown is prompt."""
    (tmp_path / "go.mod").write_text("module example.com/m\n\ngo 1.21\n")
    (tmp_path / "main.go").write_text("package main\n\nfunc main() {}\n")
    os.mkfifo(tmp_path / "pipe.go")
    os.symlink("/dev/zero", tmp_path / "zero.go")
    (tmp_path / ".git").mkdir()
    os.mkfifo(tmp_path / ".git" / "HEAD")
    text = "version: 1\nfunctions:\n  main.main:\n  main.nothere:\n"
    (tmp_path / "exray.yaml").write_text(text)
    s = Session(tmp_path)
    try:
        diags = _open_spec(s, tmp_path, text, lambda ds: any("nothere" in d["message"] for d in ds))
        assert not any("main.main " in d["message"] for d in diags), diags
        alive(s, 2)
        assert s.peak_kb() < MAX_PEAK_AFTER_FRAMING_ERRORS_KB, s.peak_kb()
        t = time.monotonic()
        s.send(request(3, "shutdown"))
        s.reply(3, timeout=15)
        s.send(frame({"jsonrpc": "2.0", "method": "exit"}))
        assert s.wait() == 0 and time.monotonic() - t < 15
    finally:
        s.close()


def test_a_100_mb_spec_on_disk_is_not_read(tmp_path):
    """The server checks the workspace's exray.yaml at start-up, from the
    file (on its event loop): a 100 MB one is refused by its size, said in
    the log, and the server answers at once."""
    with open(tmp_path / "exray.yaml", "wb") as f:
        f.truncate(100 << 20)
    s = Session(tmp_path)
    try:
        s.send(request(1, "initialize", {**INIT, "rootUri": tmp_path.as_uri()}))
        s.reply(1)
        s.send(frame({"jsonrpc": "2.0", "method": "initialized", "params": {}}))
        deadline = time.monotonic() + 60
        while True:
            m = s.message(timeout=max(deadline - time.monotonic(), 0.1))
            if m.get("method") == "window/logMessage" and "not reading the spec" in m["params"]["message"]:
                break
        assert "over the limit of one spec file" in m["params"]["message"], m
        alive(s, 2)
        assert s.peak_kb() < MAX_PEAK_AFTER_FRAMING_ERRORS_KB, s.peak_kb()
    finally:
        s.close()
