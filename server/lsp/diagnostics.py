"""Diagnostics of exray.yaml, each on the exact token, with quick fixes.

`spec_diagnostics` collects, for one spec file:
- schema and YAML errors (the loader stops at the first: one diagnostic);
- every SQL problem of extra columns and reports, and broken links;
- with `binary_path`: functions, variables and fields missing from the bound
  binary (probe_compiler.spec_check), with its did-you-mean;
- with `workspace_root`: functions that no Go file of the workspace defines
  (only for symbols of the workspace's own packages: `net/http.(*conn).serve`
  is not ours to judge), with the closest workspace symbols;
- with `binary_path` and `workspace_head`: a warning when the binary was
  built from another VCS revision than the workspace's HEAD.

Ranges are LSP ranges (0-based, UTF-16). A diagnostic whose message names a
thing (`unknown column 'req_Idd'`, `no field 'Idd'`, `no function main.fo`)
covers exactly that name; otherwise the YAML token at the error's position.
When there is a "did you mean", Diagnostic.data carries
{"spec_uri", "name", "suggestions"} and `quick_fixes` offers one replacing
edit per suggestion. Nothing here raises on bad input.

`source` is "exray"; `code` is one of: yaml (schema/YAML), sql, link,
binary, workspace, vcs.
"""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from lsprotocol.types import (CodeAction, CodeActionKind, Diagnostic, DiagnosticSeverity, Position,
                              Range, TextEdit, WorkspaceEdit)

from probe_compiler.errors import SpecError
from probe_compiler.files import read_regular
from probe_compiler.spec import parse_spec

from . import gosource
from .code_actions import uri_to_path

SOURCE = "exray"

_NAMED = [
    re.compile(r"unknown key '([^']+)'"), re.compile(r"duplicate key '([^']+)'"),
    re.compile(r"unknown display type '([^']+)'"), re.compile(r"unknown column '([^']+)'"),
    re.compile(r"unknown table '([^']+)'"), re.compile(r"has no column '([^']+)'"),
    re.compile(r"ambiguous column '([^']+)'"), re.compile(r"unknown table or alias '([^']+)'"),
    re.compile(r"no field '([^']+)'"), re.compile(r"no variable '([^']+)'"),
    re.compile(r"no function (\S+) in "), re.compile(r"duplicate function '([^']+)'"),
    re.compile(r"duplicate (?:table|link|column) '([^']+)'"), re.compile(r"unexpected '([^']+)'"),
    re.compile(r"function (\S+) is not defined"), re.compile(r"include '([^']+)'"),
]
_MEAN = re.compile(r"did you mean (.+?)\?")


def _suggestions(message: str) -> list[str]:
    m = _MEAN.search(message)
    if not m:
        return []
    return [s.strip().strip("'\"") for s in m.group(1).split(", ") if s.strip().strip("'\"")]


def _name(message: str) -> str | None:
    for rx in _NAMED:
        m = rx.search(message)
        if m:
            return m.group(1)
    return None


# ------------------------------------------------------------------ positions

class _Text:
    def __init__(self, text: str):
        self.text = text
        self.lines = text.split("\n")

    def line(self, i: int) -> str:
        return self.lines[i] if 0 <= i < len(self.lines) else ""

    def pos(self, line: int, col: int) -> Position:
        return Position(line=line, character=gosource.utf16_len(self.line(line)[:col]))

    def rng(self, line: int, a: int, b: int) -> Range:
        return Range(start=self.pos(line, a), end=self.pos(line, b))

    def slice(self, r: Range) -> str:
        if r.start.line != r.end.line:
            return ""
        ln = self.line(r.start.line)
        a, b = _index(ln, r.start.character), _index(ln, r.end.character)
        return ln[a:b]


def _index(line: str, units: int) -> int:
    u = i = 0
    while i < len(line) and u < units:
        u += 2 if ord(line[i]) > 0xFFFF else 1
        i += 1
    return i


def _scalar_end(line: str, col: int) -> int:
    """End of the YAML token that starts at `col` (quoted or plain)."""
    if col >= len(line):
        return len(line)
    q = line[col]
    if q in "'\"":
        i = col + 1
        while i < len(line):
            if line[i] == q and not (q == '"' and line[i - 1] == "\\"):
                if q == "'" and i + 1 < len(line) and line[i + 1] == "'":
                    i += 2
                    continue
                return i + 1
            i += 1
        return len(line)
    flow = "[" in line[:col] or "{" in line[:col]
    i = col
    while i < len(line):
        if line.startswith(": ", i) or line.startswith(" #", i) or (line[i] == ":" and i + 1 == len(line)):
            break
        if flow and line[i] in ",]}":
            break
        i += 1
    while i > col + 1 and line[i - 1] == " ":
        i -= 1
    return max(i, col + 1)


def _find_name(t: _Text, line: int, col: int, name: str) -> Range | None:
    """`name` at or after (line, col), on that line or the next few."""
    word = re.escape(name)
    if re.match(r"\w", name[0]):
        word = r"(?<![\w.])" + word if "." in name or "/" in name else r"(?<!\w)" + word
    if re.match(r"\w", name[-1]):
        word += r"(?!\w)"
    rx = re.compile(word)
    for ln in range(line, min(line + 4, len(t.lines))):
        text = t.line(ln)
        start = col if ln == line else 0
        m = rx.search(text, start)
        if m is None and ln == line:
            m = rx.search(text, max(0, col - len(name)))
        if m:
            return t.rng(ln, m.start(), m.end())
    return None


def _range_for(t: _Text, line1: int, col1: int, message: str) -> tuple[Range, str | None]:
    """(range, the name it covers or None) for a 1-based position and message."""
    if line1 <= 0:
        return t.rng(0, 0, len(t.line(0))), None
    line, col = line1 - 1, max(col1 - 1, 0)
    name = _name(message)
    if name:
        r = _find_name(t, line, col, name)
        if r is not None:
            return r, name
    text = t.line(line)
    if col >= len(text):
        return t.rng(line, max(len(text) - 1, 0), len(text)), None
    return t.rng(line, col, _scalar_end(text, col)), None


def _diagnostic(t: _Text, spec_uri: str, err: SpecError, code: str,
                severity: DiagnosticSeverity = DiagnosticSeverity.Error) -> Diagnostic:
    message = err.detail
    r, name = _range_for(t, err.line, err.column, message)
    data = None
    sugg = _suggestions(message)
    if name and sugg and t.slice(r) == name:
        data = {"spec_uri": spec_uri, "name": name, "suggestions": sugg}
    return Diagnostic(range=r, message=message, severity=severity, source=SOURCE, code=code, data=data)


def _code_of(err: SpecError) -> str:
    """check_spec's errors: links, else SQL of extra columns and reports."""
    return "link" if err.detail.startswith("link '") else "sql"


# ------------------------------------------------------------------ git

def _git_text(path: Path, limit: int = 64 << 10) -> str:
    """A small file of .git, read without blocking (a FIFO) or without end (/dev/zero)."""
    return read_regular(path, limit).decode("utf-8", "replace")


def git_head(root: str | os.PathLike) -> str | None:
    """The commit the workspace's HEAD points at, read from .git (no git run):
    HEAD, loose refs, packed-refs; .git files of worktrees and submodules."""
    try:
        d = Path(root).resolve()
        while not (d / ".git").exists():
            if d.parent == d:
                return None
            d = d.parent
        gitdir = d / ".git"
        if gitdir.is_file():
            m = re.match(r"gitdir:\s*(.+)", _git_text(gitdir).strip())
            if not m:
                return None
            gitdir = (d / m.group(1).strip()).resolve()
        common = gitdir
        if (gitdir / "commondir").is_file():
            common = (gitdir / _git_text(gitdir / "commondir").strip()).resolve()
        head = _git_text(gitdir / "HEAD").strip()
        for _ in range(10):             # symbolic refs may chain
            if not head.startswith("ref:"):
                return head if re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", head) else None
            ref = head[4:].strip()
            for base in (gitdir, common):
                loose = base / ref
                if loose.is_file():
                    head = _git_text(loose).strip()
                    break
            else:
                packed = common / "packed-refs"
                if not packed.is_file():
                    return None
                for ln in _git_text(packed, 256 << 20).splitlines():
                    parts = ln.split()
                    if len(parts) == 2 and parts[1] == ref and not ln.startswith(("#", "^")):
                        return parts[0]
                return None
        return None
    except OSError:
        return None


# ------------------------------------------------------------------ the checks

def _include_line(t: _Text) -> int:
    for i, ln in enumerate(t.lines):
        if re.match(r"include\s*:", ln):
            return i + 1
    return 1


def _rebase(t: _Text, err: SpecError, path: str) -> SpecError:
    """An error of another file (an include) shown at this file's `include:`."""
    if os.path.realpath(err.path) == os.path.realpath(path):
        return err
    where = f"{err.path}:{err.line}:{err.column}" if err.line else err.path
    return SpecError(f"in included {where}: {err.detail}", path, _include_line(t), 1)


def _binary_diagnostics(t: _Text, spec_uri: str, spec, path: str, binary_path: str) -> list[Diagnostic]:
    from probe_compiler.spec_check import check_against_binary
    try:
        errs = check_against_binary(spec, binary_path)
    except Exception as e:  # noqa: BLE001 - gone, unreadable, not Go
        return [Diagnostic(range=t.rng(0, 0, len(t.line(0))), severity=DiagnosticSeverity.Warning,
                           source=SOURCE, code="binary",
                           message=f"cannot check against the binary {binary_path}: {e}")]
    return [_diagnostic(t, spec_uri, _rebase(t, e, path), "binary") for e in errs]


def _workspace_diagnostics(t: _Text, spec_uri: str, spec, path: str, root: str) -> list[Diagnostic]:
    syms = gosource.workspace_symbols(root)
    if not syms:
        return []
    ours = {gosource.package_of_symbol(s) for s in syms}
    patterns = {gosource.generic_pattern(s) for s in syms}
    out = []
    for fn in spec.functions:
        if os.path.realpath(fn.path) != os.path.realpath(path):
            continue
        if gosource.package_of_symbol(fn.symbol) not in ours:
            continue
        if fn.symbol in syms or gosource.generic_pattern(fn.symbol) in patterns:
            continue
        close = difflib.get_close_matches(fn.symbol, sorted(syms), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        err = SpecError(f"function {fn.symbol} is not defined in the workspace's Go code{hint}",
                        path, fn.line, fn.column)
        out.append(_diagnostic(t, spec_uri, err, "workspace", DiagnosticSeverity.Warning))
    return out


def _vcs_diagnostics(t: _Text, binary_path: str, workspace_head: str) -> list[Diagnostic]:
    from probe_compiler.gobinary import GoBinary
    try:
        with GoBinary.open(binary_path) as b:
            rev, modified = b.vcs_revision, b.vcs_modified
    except Exception:  # noqa: BLE001 - reported by the binary check
        return []
    r = t.rng(0, 0, len(t.line(0)))
    if rev and workspace_head and not (rev.startswith(workspace_head) or workspace_head.startswith(rev)):
        return [Diagnostic(range=r, severity=DiagnosticSeverity.Warning, source=SOURCE, code="vcs",
                           message=f"the binary {os.path.basename(binary_path)} was built from revision "
                                   f"{rev[:12]}, but the workspace is at {workspace_head[:12]}: frames "
                                   f"may point at lines that have moved")]
    if rev and modified:
        return [Diagnostic(range=r, severity=DiagnosticSeverity.Information, source=SOURCE, code="vcs",
                           message=f"the binary {os.path.basename(binary_path)} was built from revision "
                                   f"{rev[:12]} with uncommitted changes: frames may point at lines "
                                   f"that differ from the workspace")]
    return []


def spec_diagnostics(spec_uri: str, text: str, binary_path: str | None = None,
                     workspace_head: str | None = None,
                     workspace_root: str | None = None) -> list[Diagnostic]:
    """Every diagnostic of one exray.yaml (see the module doc). Never raises."""
    t = _Text(text)
    path = uri_to_path(spec_uri)
    out: list[Diagnostic] = []
    try:
        try:
            spec = parse_spec(text, path, check_sql=False)
        except SpecError as e:
            out.append(_diagnostic(t, spec_uri, _rebase(t, e, path), "yaml"))
            spec = None
        if spec is not None:
            from probe_compiler.spec_sql import check_spec
            for e in check_spec(spec):
                out.append(_diagnostic(t, spec_uri, _rebase(t, e, path), _code_of(e)))
            if binary_path:
                out += _binary_diagnostics(t, spec_uri, spec, path, binary_path)
            if workspace_root:
                taken = {(d.range.start.line, d.range.start.character) for d in out if d.code == "binary"}
                out += [d for d in _workspace_diagnostics(t, spec_uri, spec, path, workspace_root)
                        if (d.range.start.line, d.range.start.character) not in taken]
        if binary_path and workspace_head:
            out += _vcs_diagnostics(t, binary_path, workspace_head)
    except Exception as e:  # noqa: BLE001 - a diagnostic pass never takes the server down
        out.append(Diagnostic(range=t.rng(0, 0, len(t.line(0))), severity=DiagnosticSeverity.Error,
                              source=SOURCE, code="internal",
                              message=f"exray could not check this spec: {type(e).__name__}: {e}"))
    return out


def quick_fixes(diagnostic: Diagnostic, text: str, spec_uri: str | None = None) -> list[CodeAction]:
    """One quick fix per "did you mean" suggestion: replace the misspelt name.
    None when the text at the range no longer holds that name (stale)."""
    data = diagnostic.data if isinstance(diagnostic.data, dict) else None
    if not data or not data.get("suggestions") or not data.get("name"):
        return []
    if _Text(text).slice(diagnostic.range) != data["name"]:
        return []
    uri = spec_uri or data.get("spec_uri")
    out = []
    for i, s in enumerate(data["suggestions"]):
        out.append(CodeAction(
            title=f"Replace '{data['name']}' with '{s}'", kind=CodeActionKind.QuickFix,
            diagnostics=[diagnostic], is_preferred=(i == 0),
            edit=WorkspaceEdit(changes={uri: [TextEdit(range=diagnostic.range, new_text=s)]})))
    return out
