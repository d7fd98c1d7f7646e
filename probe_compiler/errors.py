"""Errors of the probe compiler: each says where the problem is and what to do."""


class ProbeCompilerError(Exception):
    """Base of every error raised while reading a binary or compiling a plan."""


class BinaryError(ProbeCompilerError):
    """The file can't be read as the binary we expected (not ELF, truncated, ...)."""


class NotGoBinaryError(BinaryError):
    """The ELF has no Go symbol table (.gopclntab): it was not built by Go."""


class DebugInfoMissing(ProbeCompilerError):
    """The binary has no DWARF (built with -ldflags=-w or stripped).

    Stacks still work from pclntab; variables are unavailable."""


class SymbolNotFound(ProbeCompilerError):
    """A function, variable, type or field named by the user does not exist."""

    def __init__(self, message: str, suggestions: list[str] | None = None):
        self.suggestions = list(suggestions or [])
        if self.suggestions:
            message += f" (did you mean {', '.join(self.suggestions[:3])}?)"
        super().__init__(message)


class ExpressionError(ProbeCompilerError):
    """A capture expression does not parse or does not type-check."""


class SpecError(ProbeCompilerError):
    """exray.yaml is invalid. Carries the file, line and column (1-based)."""

    def __init__(self, message: str, path: str = "exray.yaml", line: int = 0, column: int = 0):
        self.path, self.line, self.column, self.detail = path, line, column, message
        where = f"{path}:{line}:{column}" if line else path
        super().__init__(f"{where}: {message}")


class DebugFileRejected(DebugInfoMissing):
    """A separate debug file was found but is not this build's (its CRC32 or
    build id differ) or holds no DWARF: it would describe other code."""


class DebuginfodError(DebugInfoMissing):
    """A debuginfod server did not deliver the debug file: unreachable, slower
    than the timeout, bigger than the size cap, or it has none for the build id."""


class UnsupportedGoBinary(NotGoBinaryError):
    """A Go binary Ex-Ray can't read: built by a Go release older than it
    supports, or by gccgo (no gc pclntab, a libgo runtime)."""
