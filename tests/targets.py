"""Runs a Go test program as a target: waits for READY, asks for dumps, and
always kills and reaps it.

    with run_target(go_build("states"), "-extra", "100") as t:
        t.pid             # the target's pid
        text = t.dump()   # runtime.Stack(all) via SIGUSR1 (Go's traceback level 1)
        text = t.quit_dump()  # SIGQUIT crash dump at GOTRACEBACK=system (level 2);
                              # the process exits

The programs follow one protocol: "READY pid=<pid>" on stdout once every
goroutine is parked; on SIGUSR1 they write runtime.Stack(buf, true) to their
-dump path and print "DUMPED"; they exit when stdin closes.
"""
from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator


class TargetError(RuntimeError):
    pass


class Target:
    def __init__(self, proc: subprocess.Popen, workdir: Path, stderr_path: Path,
                 dump_path: Path | None):
        self.proc = proc
        self.pid = proc.pid
        self.workdir = workdir
        self._stderr_path = stderr_path
        self._dump_path = dump_path
        self._buf = b""

    # -- stdout protocol -------------------------------------------------
    def stderr(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def _fail(self, msg: str) -> TargetError:
        rc = self.proc.poll()
        return TargetError(f"{msg} (exit code {rc}); stderr:\n{self.stderr()[-4000:]}")

    def wait_line(self, prefix: str, timeout: float) -> str:
        """Read stdout until a line starting with `prefix`; return that line."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                if text.startswith(prefix):
                    return text
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fail(f"timed out after {timeout}s waiting for {prefix!r}")
            r, _, _ = select.select([fd], [], [], min(left, 0.5))
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise self._fail(f"program closed stdout before {prefix!r}")
                self._buf += chunk
            elif self.proc.poll() is not None:
                raise self._fail(f"program exited before {prefix!r}")

    # -- dumps -------------------------------------------------------------
    def dump(self, timeout: float = 60) -> str:
        """runtime.Stack(buf, true) of the live process (SIGUSR1 -> DUMPED).

        runtime.Stack always prints at traceback level 1, whatever GOTRACEBACK
        says: no runtime frames (unless a stack has nothing else), no fp/sp/pc,
        no system goroutines. The world is stopped while it runs, so a goroutine
        that was running shows as "runnable".
        """
        if self._dump_path is None:
            raise TargetError("dump() needs the program started with a -dump path")
        with contextlib.suppress(FileNotFoundError):
            self._dump_path.unlink()
        os.kill(self.pid, signal.SIGUSR1)
        self.wait_line("DUMPED", timeout)
        return self._dump_path.read_text(errors="replace")

    def quit_dump(self, timeout: float = 60) -> str:
        """SIGQUIT: Go's crash traceback on stderr, at the GOTRACEBACK level
        the process was started with (run_target sets "system": every frame with
        fp/sp/pc, system goroutines, gp=/m= in headers). The process exits."""
        os.kill(self.pid, signal.SIGQUIT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self._fail("program did not exit after SIGQUIT") from None
        return self.stderr()

    # -- teardown ----------------------------------------------------------
    def close(self) -> None:
        p = self.proc
        if p.poll() is None:
            with contextlib.suppress(OSError):
                p.stdin.close()  # the programs exit when stdin closes
            try:
                p.wait(1)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in (p.stdin, p.stdout):
            with contextlib.suppress(Exception):
                f.close()


@contextlib.contextmanager
def run_target(binary, *args: str, env: dict[str, str] | None = None,
               ready_timeout: float = 20, dump: bool = True) -> Iterator[Target]:
    """Start `binary args...`, wait for its READY line, yield a Target, and
    always kill and reap it on exit.

    `env` adds to (and overrides) the current environment; GOTRACEBACK
    defaults to "system". With dump=True a -dump path in a private temp
    folder is added to the arguments (unless args already hold -dump).
    """
    workdir = Path(tempfile.mkdtemp(prefix="exray-target-"))
    full_env = dict(os.environ)
    full_env.setdefault("GOTRACEBACK", "system")
    full_env.update(env or {})
    argv = [str(binary), *map(str, args)]
    dump_path = None
    if "-dump" in args:
        dump_path = Path(args[list(args).index("-dump") + 1])
    elif dump:
        dump_path = workdir / "dump.txt"
        argv[1:1] = ["-dump", str(dump_path)]
    stderr_path = workdir / "stderr.txt"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err, env=full_env, cwd=workdir)
    t = Target(proc, workdir, stderr_path, dump_path)
    try:
        line = t.wait_line("READY", ready_timeout)
        if f"pid={proc.pid}" not in line:
            raise t._fail(f"unexpected READY line {line!r}")
        yield t
    finally:
        t.close()
        shutil.rmtree(workdir, ignore_errors=True)
