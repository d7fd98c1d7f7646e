"""Shared helpers of test_ptrace.py and test_memory.py: run the ptrace_target Go program."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading


class Target:
    """The ptrace_target Go program, with its stdout read on a thread so reads time out."""

    def __init__(self, binary, *args: str):
        self.proc = subprocess.Popen([str(binary), *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.pid = self.proc.pid
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        ready = self.expect("READY")
        self.info = dict(kv.split("=") for kv in ready.split()[1:])

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def expect(self, prefix: str, timeout: float = 10.0) -> str:
        while True:
            line = self.lines.get(timeout=timeout)
            if line.startswith(prefix):
                return line

    def ask(self, cmd: str, prefix: str) -> dict[str, int]:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        line = self.expect(prefix)
        return {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except ChildProcessError:
            pass


def tasks(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def task_state(pid: int, tid: int) -> str:
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def tracer_pid(pid: int, tid: int | None = None) -> int:
    path = f"/proc/{pid}/task/{tid}/status" if tid else f"/proc/{pid}/status"
    with open(path) as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    raise AssertionError("no TracerPid")


def assert_free(pid: int) -> None:
    """Alive, no thread traced, no thread in a tracing stop."""
    for tid in tasks(pid):
        try:
            assert tracer_pid(pid, tid) == 0, f"tid {tid} still traced"
            assert task_state(pid, tid) not in ("t", "T"), f"tid {tid} still stopped"
        except (FileNotFoundError, ProcessLookupError):
            pass   # a thread that just exited (ENOENT or ESRCH, by when /proc noticed)


__all__ = ["Target", "tasks", "task_state", "tracer_pid", "assert_free", "signal"]
