"""The agent's deployment files: the systemd unit passes `systemd-analyze
verify`, and the unit's and the DaemonSet's command lines are ones `exray
agent` accepts, with the security settings docs/agent.md promises."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.main import add_arguments, policy_from_args

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "exray-agent.service"
DAEMONSET = ROOT / "deploy" / "kubernetes" / "exray-agent-daemonset.yaml"


def agent_args(argv: list[str]):
    import argparse
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(argv)
    policy_from_args(args)      # raises when the allow-list is missing or a setting is wrong
    return args


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="this machine lacks systemd-analyze (Debian's systemd)")
def test_systemd_unit_verifies(tmp_path):
    exray = Path(sys.prefix) / "bin" / "exray"
    unit = tmp_path / "exray-agent.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/exray", str(exray)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_systemd_unit_command_line():
    text = UNIT.read_text()
    [env] = re.findall(r'^Environment="EXRAY_AGENT_ARGS=(.*)"$', text, re.M)
    [cmd] = re.findall(r"^ExecStart=(.*)$", text, re.M)
    argv = shlex.split(cmd.replace("$EXRAY_AGENT_ARGS", env))
    assert argv[:2] == ["/usr/local/bin/exray", "agent"]
    args = agent_args(argv[2:])
    assert args.listen == "unix:/run/exray/agent.sock" and args.allow_uid == [1000]
    for setting in ("NoNewPrivileges=yes", "UMask=0077", "ProtectSystem=strict", "RuntimeDirectoryMode=0700"):
        assert setting in text
    caps = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1).split()
    assert "CAP_SYS_PTRACE" in caps and "CAP_SYS_ADMIN" not in caps


def test_daemonset_least_privilege():
    docs = list(yaml.safe_load_all(DAEMONSET.read_text()))
    [ds] = [d for d in docs if d["kind"] == "DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True and not spec.get("hostNetwork")
    [c] = spec["containers"]
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE", "BPF", "PERFMON"]}
    assert c["args"][0] == "agent"
    args = agent_args([a.replace("$(POD_IP)", "10.1.2.3").replace("$(NODE_NAME)", "node-1") for a in c["args"][1:]])
    assert args.listen == "tcp:10.1.2.3:7701" and args.client_ca and args.tls_cert and args.tls_key
    assert any(d["kind"] == "NetworkPolicy" for d in docs)
