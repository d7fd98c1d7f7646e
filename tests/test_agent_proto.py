"""The checked-in gRPC modules are what scripts/gen_proto.sh makes of the proto."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_regenerating_changes_nothing(tmp_path):
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True,
                   env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    for name in ("exray_agent_pb2.py", "exray_agent_pb2_grpc.py"):
        assert (tmp_path / name).read_text() == (ROOT / "agent" / "proto" / name).read_text(), \
            f"agent/proto/{name} is stale: run scripts/gen_proto.sh"
