"""The VS Code extension (vscode-extension/) without VS Code: its Node tests
(`node --test vscode-extension/test`) load extension.js with a FAKE `vscode`
module and the real vscode-languageclient, which starts the REAL language
server over stdio on a workspace made here: tests/goprogs/linkpair with go.mod
and exray.yaml, two snapshots of the running program taken by the engine.

What VS Code itself would do (render, open editors, follow links) is not
tested; the extension's wiring and what crosses the wire are.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lsp_helpers import make_workspace
from targets import run_target

ROOT = Path(__file__).resolve().parent.parent
EXT = ROOT / "vscode-extension"
NODE, NPM = shutil.which("node"), shutil.which("npm")

pytestmark = [pytest.mark.skipif(NODE is None or NPM is None, reason="no node/npm (scripts/setup.sh installs them)"),
              pytest.mark.timeout(240)]

SPEC = """\
version: 1
targets:
  - pid: {pid}
functions:
  main.handle:
    table: handles
    capture: [req]
"""


@pytest.fixture(scope="module")
def node_modules():
    if not (EXT / "node_modules" / "vscode-languageclient").is_dir():
        r = subprocess.run([NPM, "ci", "--no-audit", "--no-fund"], cwd=EXT, capture_output=True, text=True,
                           timeout=180)
        if r.returncode != 0:
            pytest.skip(f"npm ci in vscode-extension failed: {r.stderr.strip()[-500:]}")
    # The schema copy that yamlValidation names, and the bundle package.json's
    # main names (npm ci made both; the sources may be newer).
    subprocess.run([NODE, "scripts/prepare.js"], cwd=EXT, check=True, timeout=30)
    subprocess.run([NPM, "run", "bundle"], cwd=EXT, check=True, timeout=120, capture_output=True)
    return EXT / "node_modules"


@pytest.fixture(scope="module")
def workspace(go_build, tmp_path_factory):
    """linkpair's workspace with two snapshots of it in .exray/snapshots."""
    from probe_compiler.spec import load_spec
    from server.snapshot_job import snapshot_pids, write
    ws = make_workspace(tmp_path_factory.mktemp("vscode") / "linkpair")
    binary = go_build(ws)
    with run_target(binary, "-self", "3", dump=False) as t:
        (ws / "exray.yaml").write_text(SPEC.format(pid=t.pid))
        spec = load_spec(ws / "exray.yaml")
        snaps = ws / ".exray" / "snapshots"
        snaps.mkdir(parents=True)
        out = []
        for name in ("first.sqlite", "second.sqlite"):
            records = snapshot_pids([t.pid], spec)
            assert not records[0].error, records[0].error
            write(str(snaps / name), records, spec)
            out.append(snaps / name)
    return ws, out


def test_vscode_extension_node_tests_with_fake_vscode_and_real_server(node_modules, workspace):
    ws, (first, second) = workspace
    env = dict(os.environ, EXRAY_TEST_WORKSPACE=str(ws), EXRAY_TEST_SNAPSHOT=str(first),
               EXRAY_TEST_SNAPSHOT2=str(second), EXRAY_TEST_PYTHON=sys.executable,
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([NODE, "--test", "--test-reporter=tap", "test/"], cwd=EXT, env=env,
                       capture_output=True, text=True, timeout=180)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    counts = {k: int(v) for k, v in re.findall(r"^# (pass|fail|skipped|todo|cancelled) (\d+)$", out, re.M)}
    # Every test ran (the Node side skips when the environment above is missing).
    assert counts.get("fail") == 0 and counts.get("skipped") == 0 and counts.get("cancelled") == 0, out
    assert counts.get("pass", 0) >= 11, out
    names = re.findall(r"^\s*ok \d+ - (.*)$", out, re.M)
    for want in ("exray:/snapshot/overview through the content provider", "exray.listSnapshots",
                 "provider fires onDidChange"):
        assert any(want in n for n in names), (want, out)


def test_vscode_settings_are_the_servers_settings_plus_server_command():
    """package.json's exray.* settings: Settings' fields, types and defaults, and exray.serverCommand."""
    import dataclasses
    import json
    from server.lsp.workspace import _LIMITS, Settings
    props = json.loads((EXT / "package.json").read_text())["contributes"]["configuration"]["properties"]
    assert set(props) == {f"exray.{f.name}" for f in dataclasses.fields(Settings)} | {"exray.serverCommand"}
    for f in dataclasses.fields(Settings):
        p = props[f"exray.{f.name}"]
        if isinstance(f.default, tuple):          # exray.agents: a list of strings
            assert p["type"] == "array" and p["items"] == {"type": "string"}, f.name
            assert p["default"] == list(f.default), f.name
            continue
        assert p["default"] == f.default, f.name
        assert p["type"] == ("integer" if isinstance(f.default, int) else "string"), f.name
        if f.name in _LIMITS:
            assert (p["minimum"], p["maximum"]) == _LIMITS[f.name], f.name
    # A workspace can't choose the files Ex-Ray reads credentials from (its
    # token would go to the agents it names): user (machine) settings only.
    for name in ("agentTokenFile", "agentCa", "agentCert", "agentKey", "agentServerName"):
        assert props[f"exray.{name}"]["scope"] == "machine", name
    # The extension sends the server every setting it knows, and only those.
    js = (EXT / "extension.js").read_text()
    listed = re.search(r"const SERVER_SETTINGS = \[(.*?)\];", js, re.S).group(1)
    assert set(re.findall(r"'(\w+)'", listed)) == {f.name for f in dataclasses.fields(Settings)}
    cmd = props["exray.serverCommand"]
    assert cmd["type"] == "array" and cmd["default"] == ["${exrayRoot}/.venv/bin/exray", "lsp"]


def test_package_builds_a_bundled_vsix_without_a_terminal(tmp_path):
    """`npm run package` (vsce, a devDependency) needs no terminal and packs
    the esbuild bundle, not node_modules."""
    import zipfile
    r = subprocess.run([NPM, "run", "package", "--", "--out", str(tmp_path / "exray.vsix")], cwd=EXT,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    names = set(zipfile.ZipFile(tmp_path / "exray.vsix").namelist())
    assert {"extension/package.json", "extension/dist/extension.js", "extension/exray.schema.json",
            "extension/exray-root.json"} <= names
    assert not any("node_modules" in n or n.endswith("/extension.js") and "dist" not in n for n in names)
