"""The agent's errors. Every message says where it happened and what to do.

Callers catch AgentError; the subclasses say which kind of failure it was so the
server can put a useful `error` into the `processes` table.
"""
from __future__ import annotations


class AgentError(Exception):
    """Anything the agent could not do to one process."""


class ProcessNotFound(AgentError):
    """The pid does not exist (or is not a process we can see)."""


class PermissionDenied(AgentError):
    """The kernel refused ptrace or process_vm_readv on the target."""


class ProcessExited(AgentError):
    """The target exited while we were pausing it or reading it."""


class PauseDeadlineExceeded(AgentError):
    """The pause ran past its deadline; the target has been resumed."""


class MemoryReadError(AgentError):
    """A read of target memory failed or came back short."""

    def __init__(self, addr: int, size: int, msg: str = ""):
        self.addr = addr
        self.size = size
        super().__init__(msg or f"cannot read {size} bytes at {addr:#x}")
