"""Where the kernel put a process's executable: the load bias of PIE builds.

A position-independent Go binary is linked at 0x400000 like any other, but
the kernel maps it at a random base. Every address the binary states (pcs in
the pclntab and DWARF, runtime globals, moduledata.types) is then off by the
same amount in the live process: bias = where the first mapped segment is
minus where the binary says it is. Fixed-address executables have bias 0.
"""
from __future__ import annotations

import os

from .errors import AgentError, ProcessNotFound


def load_bias(pid: int, binary) -> int:
    """The bias of `binary` (a GoBinary) in process pid, from /proc/PID/maps."""
    if not binary.is_pie:
        return 0
    try:
        exe = os.stat(f"/proc/{pid}/exe")
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read()
    except FileNotFoundError as e:
        raise ProcessNotFound(f"pid {pid} exited before its mappings could be read") from e
    except OSError as e:
        raise AgentError(f"pid {pid}: cannot read /proc/{pid}/maps ({e.strerror}); "
                         "run as root or with CAP_SYS_PTRACE") from e
    page = os.sysconf("SC_PAGE_SIZE")
    for start, offset in _exe_mappings(maps, exe.st_ino):
        for seg_off, seg_vaddr in binary.segments():
            if seg_off - seg_off % page == offset:
                return start - (seg_vaddr - seg_vaddr % page)
    raise AgentError(f"pid {pid}: no mapping of its executable in /proc/{pid}/maps matches a "
                     f"segment of {binary.path}; was the binary replaced by a different build?")


def _exe_mappings(maps: str, inode: int):
    """(start, file offset) of each mapping of the file with this inode, in order.

    Matched by inode alone: on overlayfs the device number in maps is not the
    one stat reports for /proc/PID/exe."""
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) >= 5 and fields[4].isdigit() and int(fields[4]) == inode:
            yield int(fields[0].split("-", 1)[0], 16), int(fields[2], 16)
