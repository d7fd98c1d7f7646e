"""A throw-away PostgreSQL server for tests: initdb into a temp folder, listen
on a unix socket in that folder only, and always stop and delete it.

    with temp_postgres() as conninfo:
        conn = psycopg.connect(conninfo)

PostgreSQL refuses to run as root, so as root every server command runs as the
`postgres` OS user (runuser) and the folder is handed to that user. Nothing
listens on TCP (listen_addresses=''), and durability is off (fsync, -N), as
the data dies with the test session. `postgres_missing()` says why there is
no server to run, for a skip message.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

PG_GLOB = "/usr/lib/postgresql/*/bin/initdb"
OS_USER = "postgres"

# Server settings: fast start and stop, nothing durable, nothing on the network.
SERVER_OPTS = ("-c listen_addresses='' -c fsync=off -c synchronous_commit=off "
               "-c full_page_writes=off -c max_connections=20 -c shared_buffers=16MB")


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(glob.glob(PG_GLOB), key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    return Path(found[-1]).parent if found else None


def postgres_missing() -> str | None:
    """Why no test server can run here, or None when one can."""
    if pg_bin() is None:
        return f"PostgreSQL is not installed (no {PG_GLOB})"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            return f"running as root and there is no '{OS_USER}' OS user to run PostgreSQL as"
        if not shutil.which("runuser"):
            return "running as root and runuser is missing"
    return None


def _as_server_user(argv: list[str]) -> list[str]:
    # root can't run postgres; anyone else runs it as themselves
    return ["runuser", "-u", OS_USER, "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str], timeout: float = 30) -> None:
    r = subprocess.run(_as_server_user(argv), capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"{' '.join(argv[:2])} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")


def _make_home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="exray-pg-"))
    if os.geteuid() == 0:
        u = pwd.getpwnam(OS_USER)
        os.chown(home, u.pw_uid, u.pw_gid)
    return home


@contextlib.contextmanager
def temp_postgres() -> Iterator[str]:
    """Start a private server; yield a psycopg conninfo; stop and delete it on exit."""
    why = postgres_missing()
    if why:
        raise RuntimeError(why)
    bin_ = pg_bin()
    home = _make_home()
    data, log = home / "data", home / "server.log"
    started = False
    try:
        _run([str(bin_ / "initdb"), "-D", str(data), "-U", OS_USER, "-A", "trust",
              "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"])
        _run([str(bin_ / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "20",
              "-o", f"{SERVER_OPTS} -c unix_socket_directories='{home}'", "start"])
        started = True
        yield f"host={home} dbname=postgres user={OS_USER}"
    finally:
        if started:
            # immediate: the data is thrown away, so skip the shutdown checkpoint
            with contextlib.suppress(Exception):
                _run([str(bin_ / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(home, ignore_errors=True)
