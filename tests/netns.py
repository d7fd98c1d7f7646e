"""Several "hosts" on one machine, with no containers: network namespaces on
one bridge, as tests/test_agent_netns.py uses them.

    with Fleet(["h1", "h2", "h3"]) as net:   # plus "ctl", the control plane's host
        net.ip("h1")                         # 10.213.N.1
        net.run("h1", ["exray", "agent", ...])   # argv run inside h1
        net.link("h1", up=False)             # partition h1 from everyone

The bridge lives in a namespace of its own (the "switch"), so nothing of the
machine's own network changes. Names carry this process's pid, so runs never
collide; everything is removed on exit.
"""
from __future__ import annotations

import os
import shutil
import subprocess


def missing() -> str | None:
    """Why this machine can't make the hosts, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "no `ip` command (Debian's iproute2)"
    probe = f"xrprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode:
        return f"the kernel refuses network namespaces: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sh(*argv: str) -> None:
    r = subprocess.run(list(argv), capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")


class Fleet:
    def __init__(self, hosts: list[str]):
        self.tag = f"xr{os.getpid() % 100000}"
        self.hosts = list(hosts) + ["ctl"]
        self.subnet = 10 + os.getpid() % 200     # 10.213.<subnet>.0/24, private to this run
        self.switch = f"{self.tag}sw"

    def ns(self, host: str) -> str:
        return f"{self.tag}{host}"

    def ip(self, host: str) -> str:
        return f"10.213.{self.subnet}.{self.hosts.index(host) + 1}"

    def _port(self, host: str) -> str:
        return f"{self.tag}{host}s"      # the switch's end of the host's cable

    def __enter__(self) -> "Fleet":
        try:
            sh("ip", "netns", "add", self.switch)
            sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.switch, "link", "set", "br0", "up")
            for h in self.hosts:
                ns, port = self.ns(h), self._port(h)
                sh("ip", "netns", "add", ns)
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port,
                   "netns", self.switch)
                sh("ip", "-n", ns, "addr", "add", f"{self.ip(h)}/24", "dev", "eth0")
                sh("ip", "-n", ns, "link", "set", "eth0", "up")
                sh("ip", "-n", self.switch, "link", "set", port, "master", "br0")
                sh("ip", "-n", self.switch, "link", "set", port, "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def argv(self, host: str, argv: list[str]) -> list[str]:
        """argv run inside `host` (ip netns exec execs it: the pid is the program's)."""
        return ["ip", "netns", "exec", self.ns(host), *map(str, argv)]

    def link(self, host: str, up: bool) -> None:
        sh("ip", "-n", self.switch, "link", "set", self._port(host), "up" if up else "down")

    def __exit__(self, *exc) -> None:
        for h in self.hosts:
            subprocess.run(["ip", "netns", "del", self.ns(h)], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True)
