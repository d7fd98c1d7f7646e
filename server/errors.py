"""Errors of the control plane (the `exray` command and the language server).

Each says what is wrong and what to do; the CLI prints them as `error: ...`."""
from __future__ import annotations


class ServerError(Exception):
    """Base of the server's own errors."""


class NoTargets(ServerError):
    """A snapshot was asked for, but no process to take it of was named or found."""
