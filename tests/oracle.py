"""Parses Go's own goroutine tracebacks: the oracle Ex-Ray's stacks are compared with.

It reads both forms Go 1.27 prints:

* runtime.Stack(buf, true) (tests/targets.py Target.dump()): always traceback
  level 1, whatever GOTRACEBACK says. Headers are `goroutine 7 [chan receive]:`,
  frames are `pkg.fn(args)` + `\\tfile:line +0xoff`, runtime frames are hidden
  unless a stack has nothing else, system goroutines are left out.
* crash dumps (SIGQUIT, Target.quit_dump()) at GOTRACEBACK=system (level 2):
  headers carry `gp=0x… m=<id>|nil [mp=0x…]`, every frame, runtime ones too,
  ends with ` fp=0x… sp=0x… pc=0x…`, and goroutine 0 (an M's g0) may appear.

Forms handled: inlined frames (`fn(...)` and no `+0x` offset), `+0x..` offsets,
fp/sp/pc suffixes, `created by X in goroutine N` (or without "in goroutine"),
`...N frames elided...` (Go prints the 50 innermost and 50 outermost frames of a
deeper stack; `elided` counts the rest and `elided_at` is where they were),
`...additional frames elided...` (ancestor stacks), `goroutine running on other
thread; stack unavailable`, the `[status, N minutes, locked to thread]` bracket
(plus ` (scan)`, ` (leaked)`, ` (durable)`, `synctest bubble N`), pprof labels
`{k: v}` after it, and `[originating from goroutine N]:` ancestor blocks
(GODEBUG=tracebackancestors).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["GoFrame", "GoCreatedBy", "GoGoroutine", "parse_go_traceback",
           "parse_go_traceback_list", "split_call", "goroutines_in"]


@dataclass
class GoFrame:
    function: str            # as printed: "main.(*server).handle", "main.genericWait[...]"
    file: str
    line: int
    pc_offset: int | None    # the "+0x.." (pc - function entry); None for inlined frames
    inlined: bool = False    # printed as "fn(...)" with no offset
    args: str = ""           # the text between the parentheses
    fp: int | None = None    # level >= 2 only
    sp: int | None = None
    pc: int | None = None

    @property
    def tuple(self) -> tuple[str, str, int, int | None]:
        return (self.function, self.file, self.line, self.pc_offset)


@dataclass
class GoCreatedBy:
    function: str
    goid: int | None         # "in goroutine N"; None when Go does not print it
    file: str
    line: int
    pc_offset: int | None


@dataclass
class GoAncestor:
    goid: int
    frames: list[GoFrame] = field(default_factory=list)
    created_by: GoCreatedBy | None = None
    truncated: bool = False  # "...additional frames elided..."


@dataclass
class GoGoroutine:
    goid: int
    status: str                  # the whole bracket, as printed: "sleep, 5 minutes, locked to thread"
    wait_reason: str             # its first part without markers: "chan receive", "running", "syscall"
    minutes: int | None = None   # "N minutes" (Go prints it from 1 minute on)
    locked_to_thread: bool = False
    scan: bool = False           # " (scan)"
    leaked: bool = False         # " (leaked)"
    durable: bool = False        # " (durable)" added by Go (not part of a wait reason's own name)
    bubble: int | None = None    # "synctest bubble N"
    labels: dict[str, str] = field(default_factory=dict)
    gp: int | None = None        # level >= 2 header fields
    m: int | None = None         # None for "m=nil" or level 1
    mp: int | None = None
    frames: list[GoFrame] = field(default_factory=list)
    elided: int = 0              # "...N frames elided..."
    elided_at: int | None = None  # index in frames where the elided frames were
    created_by: GoCreatedBy | None = None
    stack_unavailable: bool = False  # "goroutine running on other thread; stack unavailable"
    ancestors: list[GoAncestor] = field(default_factory=list)

    @property
    def functions(self) -> list[str]:
        return [f.function for f in self.frames]

    def has_function(self, name: str) -> bool:
        return any(f.function == name for f in self.frames)


_HEADER = re.compile(
    r"^goroutine (\d+)"
    r"(?: gp=(0x[0-9a-f]+) m=(nil|\d+)(?: mp=(0x[0-9a-f]+))?)?"
    r" \[([^\]]*)\]"
    r"(?: \{(.*)\})?:$")
_FILELINE = re.compile(
    r"^\t(.*):(\d+)(?: \+0x([0-9a-f]+))?"
    r"(?: fp=0x([0-9a-f]+) sp=0x([0-9a-f]+) pc=0x([0-9a-f]+))?$")
_CREATED = re.compile(r"^created by (.+?)(?: in goroutine (\d+))?$")
_ELIDED = re.compile(r"^\.\.\.(\d+) frames elided\.\.\.$")
_ANCESTOR = re.compile(r"^\[originating from goroutine (\d+)\]:$")
_UNAVAILABLE = "goroutine running on other thread; stack unavailable"
_MINUTES = re.compile(r"^(\d+) minutes$")
_BUBBLE = re.compile(r"^synctest bubble (\d+)$")


def split_call(line: str) -> tuple[str, str]:
    """'main.(*s).f({0x1, 0x2}, 0x3)' -> ('main.(*s).f', '{0x1, 0x2}, 0x3')."""
    if not line.endswith(")"):
        raise ValueError(f"not a frame line: {line!r}")
    depth = 0
    for i in range(len(line) - 1, -1, -1):
        c = line[i]
        if c == ")":
            depth += 1
        elif c == "(":
            depth -= 1
            if depth == 0:
                if i == 0:
                    break
                return line[:i], line[i + 1:-1]
    raise ValueError(f"unbalanced frame line: {line!r}")


def _parse_status(g: GoGoroutine, text: str) -> None:
    parts = text.split(", ")
    reason = parts[0]
    for marker, attr in ((" (scan)", "scan"), (" (leaked)", "leaked")):
        if marker in reason:
            reason = reason.replace(marker, "")
            setattr(g, attr, True)
    g.wait_reason = reason
    for p in parts[1:]:
        if m := _MINUTES.match(p):
            g.minutes = int(m.group(1))
        elif p == "locked to thread":
            g.locked_to_thread = True
        elif m := _BUBBLE.match(p):
            g.bubble = int(m.group(1))
        else:
            raise ValueError(f"unknown goroutine status part {p!r} in [{text}]")


def _parse_labels(text: str) -> dict[str, str]:
    # Go prints `{k: v, k2: "quoted v"}`; quoting only where needed.
    out: dict[str, str] = {}
    tok = re.compile(r'\s*("(?:[^"\\]|\\.)*"|[^:,]+):\s*("(?:[^"\\]|\\.)*"|[^,]*)\s*(?:,|$)')
    pos = 0
    while pos < len(text):
        m = tok.match(text, pos)
        if not m:
            raise ValueError(f"bad labels {{{text}}}")
        k, v = (s[1:-1].encode().decode("unicode_escape") if s.startswith('"') else s.strip()
                for s in m.groups())
        out[k] = v
        pos = m.end()
    return out


def _fileline(line: str) -> re.Match:
    m = _FILELINE.match(line)
    if not m:
        raise ValueError(f"expected a '\\tfile:line' line, got {line!r}")
    return m


def _hex(s: str | None) -> int | None:
    return int(s, 16) if s is not None else None


def parse_go_traceback_list(text: str) -> list[GoGoroutine]:
    """Every goroutine block in `text`, in order (goroutine 0 may repeat)."""
    lines = text.splitlines()
    out: list[GoGoroutine] = []
    g: GoGoroutine | None = None
    frames: list[GoFrame] | None = None   # where frames go (the goroutine or an ancestor)
    owner = None                           # GoGoroutine or GoAncestor for created_by
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if m := _HEADER.match(line):
            g = GoGoroutine(goid=int(m.group(1)), status=m.group(5), wait_reason="")
            g.gp = _hex(m.group(2))
            if m.group(3) not in (None, "nil"):
                g.m = int(m.group(3))
            g.mp = _hex(m.group(4))
            _parse_status(g, m.group(5))
            if m.group(6):
                g.labels = _parse_labels(m.group(6))
            out.append(g)
            frames, owner = g.frames, g
            continue
        if g is None:
            continue                        # crash preamble, register dumps, ...
        if not line.strip():
            g = frames = owner = None       # a blank line ends the block
            continue
        if line.strip() == _UNAVAILABLE:
            g.stack_unavailable = True
            continue
        if m := _ELIDED.match(line):
            g.elided = int(m.group(1))
            g.elided_at = len(g.frames)
            continue
        if line == "...additional frames elided...":
            if isinstance(owner, GoAncestor):
                owner.truncated = True
            continue
        if m := _ANCESTOR.match(line):
            anc = GoAncestor(goid=int(m.group(1)))
            g.ancestors.append(anc)
            frames, owner = anc.frames, anc
            continue
        if m := _CREATED.match(line):
            if i >= len(lines):
                raise ValueError(f"'created by' without a file line: {line!r}")
            fl = _fileline(lines[i])
            i += 1
            owner.created_by = GoCreatedBy(
                function=m.group(1), goid=int(m.group(2)) if m.group(2) else None,
                file=fl.group(1), line=int(fl.group(2)), pc_offset=_hex(fl.group(3)))
            continue
        if line.startswith("non-Go function at pc="):
            continue                        # cgo frames without a symbolizer
        if line.startswith("\t"):
            raise ValueError(f"file line without a function line: {line!r}")
        fn, args = split_call(line)
        if i >= len(lines):
            raise ValueError(f"frame without a file line: {line!r}")
        fl = _fileline(lines[i])
        i += 1
        off = _hex(fl.group(3))
        frames.append(GoFrame(
            function=fn, file=fl.group(1), line=int(fl.group(2)), pc_offset=off,
            inlined=(args == "..." and off is None), args=args,
            fp=_hex(fl.group(4)), sp=_hex(fl.group(5)), pc=_hex(fl.group(6))))
    return out


def parse_go_traceback(text: str) -> dict[int, GoGoroutine]:
    """{goid: GoGoroutine}. For crash dumps where several Ms print a goroutine 0
    (their g0), the first one is kept; use parse_go_traceback_list for all."""
    out: dict[int, GoGoroutine] = {}
    for g in parse_go_traceback_list(text):
        out.setdefault(g.goid, g)
    return out


def goroutines_in(parsed: dict[int, GoGoroutine], function: str) -> list[GoGoroutine]:
    """The goroutines with a frame of `function` (as Go prints it)."""
    return [g for g in parsed.values() if g.has_function(function)]
