"""Reading a file that came with a repository: only a regular file, only up
to a size, and never blocking.

A repository can hold a FIFO named `exray.yaml` or `main.go` (an open()
blocks until a writer comes), a symlink to /dev/zero (a read() never ends),
or a file of many gigabytes. `read_regular` checks the type with stat before
the open, opens without blocking, checks the open file again with fstat (a
FIFO swapped in between is still refused) and reads at most `limit` + 1
bytes. docs/security.md lists where it is used and with which limits.
"""
from __future__ import annotations

import os
import stat

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


class FileRefused(OSError):
    """The file is not read: not a regular file, too large, or unreadable.
    str() is the reason, in words for the user (no errno prefix)."""

    def __str__(self) -> str:
        return self.args[0] if self.args else "refused"


def file_kind(mode: int) -> str:
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def read_regular(path: str | os.PathLike, limit: int, what: str = "the size limit") -> bytes:
    """The bytes of a regular file of at most `limit` bytes, or FileRefused
    saying why not (`what` names the limit in that message)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(f"it is {file_kind(st.st_mode)}, not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileRefused:
        raise
    except FileNotFoundError:
        raise FileRefused("no such file") from None
    except OSError as e:
        raise FileRefused(e.strerror or str(e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(f"it is {file_kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise FileRefused(f"it is {st.st_size:,} bytes, over {what} ({limit:,} bytes)")
        chunks, size = [], 0
        while size <= limit:
            b = os.read(fd, min(1 << 20, limit + 1 - size))
            if not b:
                break
            chunks.append(b)
            size += len(b)
        if size > limit:
            raise FileRefused(f"it grew past {what} ({limit:,} bytes) while being read")
        return b"".join(chunks)
    except FileRefused:
        raise
    except OSError as e:
        raise FileRefused(e.strerror or str(e)) from None
    finally:
        os.close(fd)
