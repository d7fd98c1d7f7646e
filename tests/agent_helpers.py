"""Helpers for the agent tests: credentials, and how a target looks after."""
from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path


def tracer_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("TracerPid:"))


def write_token(path: Path, name: str) -> Path:
    path.write_text(f"{name} {secrets.token_hex(24)}\n")
    os.chmod(path, 0o600)
    return path


def make_certs(d: Path) -> dict[str, str]:
    """A CA, an agent certificate (CN exray-agent), a client one signed by the
    CA (CN control-plane) and a rogue client one signed by another CA."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    for ca in ("ca", "rogueca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ca}",
            "-keyout", f"{ca}.key", "-out", f"{ca}.crt")
    for name, cn, ca in (("server", "exray-agent", "ca"), ("client", "control-plane", "ca"),
                         ("rogue", "control-plane", "rogueca")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        ext = d / f"{name}.ext"
        ext.write_text(f"subjectAltName=DNS:{cn}\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", str(ext))
    return {f: str(d / f) for f in os.listdir(d)}


# linkpair's client calls and server handlers, linked by request id: the
# spec the fleet tests snapshot across agents.
LINKPAIR_SPEC = """\
version: 1
functions:
  main.call:
    table: calls
    capture: [id, path]
  main.handle:
    table: handles
    capture: [req]
    columns:
      req_id: "req ->> 'ID'"
links:
  - from: calls(id)
    to: handles(req_id)
    description: the server goroutine holding this request
"""
