"""Edits of exray.yaml for code actions, keeping its comments, order and quoting.

The text is loaded and dumped with ruamel.yaml's round-trip mode, with the
file's own indentation (detected; new files use the docs' style: mappings by
2, list dashes indented by 2). Unchanged parts come out byte for byte, and
`edit_for` turns old -> new text into the few TextEdits that differ, so the
change reviews like a hand edit.

Choices:
- a capture is "already there" when its expression is the same Go expression
  (probe_compiler.expr canonical form: `( *p )` == `*p`), in short or long
  form (`- {expr: x, name: y}`);
- `remove_capture` removes the capture; a `capture:` list left empty is
  removed, and a function entry left with nothing at all (no table, no
  columns) is removed too. An entry that keeps a `table:` or `columns:` stays:
  someone chose its table name or wrote SQL against it.

Every function takes the current text (None or "" for no file yet) and
returns the new text; text that can't be edited safely (YAML that does not
load, a `functions:` that isn't a mapping) raises SpecEditError.
"""
from __future__ import annotations

import difflib
import io
import re

from lsprotocol.types import (CreateFile, CreateFileOptions, OptionalVersionedTextDocumentIdentifier,
                              Position, Range, TextDocumentEdit, TextEdit, WorkspaceEdit)
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from probe_compiler.expr import format_expr, parse_expr


class SpecEditError(ValueError):
    """The spec can't be edited safely; the message says why."""


# ------------------------------------------------------------------ load / dump

def _indents(text: str) -> tuple[int, int]:
    """(mapping indent, dash offset) as the file writes them; (2, 2) by default."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    mapping = offset = None
    for i, ln in enumerate(lines[:-1]):
        nxt = lines[i + 1]
        ind, nind = len(ln) - len(ln.lstrip()), len(nxt) - len(nxt.lstrip())
        if re.match(r"\s*[^\s-][^#]*:\s*(#.*)?$", ln):
            if mapping is None and nind > ind and not nxt.lstrip().startswith("- "):
                mapping = nind - ind
            if offset is None and nxt.lstrip().startswith("- "):
                offset = nind - ind
        if mapping is not None and offset is not None:
            break
    return mapping or 2, 2 if offset is None else offset


def _yaml(text: str) -> YAML:
    y = YAML()
    y.preserve_quotes = True
    y.width = 4096
    mapping, offset = _indents(text)
    y.indent(mapping=mapping, sequence=offset + 2, offset=offset)
    return y


def _load(text: str | None) -> tuple[YAML, CommentedMap]:
    text = text or ""
    y = _yaml(text)
    if not text.strip():
        doc = CommentedMap()
        doc["version"] = 1
        return y, doc
    try:
        doc = y.load(text)
    except YAMLError as e:
        raise SpecEditError(f"exray.yaml is not valid YAML; fix it first ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - ruamel raises assorted errors on odd input
        raise SpecEditError(f"exray.yaml can't be read: {e}") from None
    if doc is None:
        doc = CommentedMap()
        doc["version"] = 1
    if not isinstance(doc, CommentedMap):
        raise SpecEditError("exray.yaml is not a mapping (expected version: 1, functions: ...)")
    return y, doc


def _first_line(e: Exception) -> str:
    return " ".join(str(e).split())[:200]


def _dump(y: YAML, doc: CommentedMap) -> str:
    out = io.StringIO()
    y.dump(doc, out)
    return out.getvalue()


def _functions(doc: CommentedMap, create: bool) -> CommentedMap | None:
    fns = doc.get("functions")
    if fns is None:
        if not create:
            return None
        fns = CommentedMap()
        doc["functions"] = fns
    if not isinstance(fns, CommentedMap):
        raise SpecEditError("'functions' in exray.yaml is not a mapping; fix it first")
    return fns


def _function(fns: CommentedMap, symbol: str, create: bool) -> CommentedMap | None:
    if symbol not in fns or fns[symbol] is None:
        if not create:
            return None
        entry = CommentedMap()
        fns[symbol] = entry
        return entry
    entry = fns[symbol]
    if not isinstance(entry, CommentedMap):
        raise SpecEditError(f"the entry of {symbol} in exray.yaml is not a mapping; fix it first")
    return entry


def _captures(entry: CommentedMap, create: bool) -> CommentedSeq | None:
    caps = entry.get("capture")
    if caps is None:
        if not create:
            return None
        caps = CommentedSeq()
        entry["capture"] = caps
    if not isinstance(caps, CommentedSeq):
        raise SpecEditError("a 'capture' in exray.yaml is not a list; fix it first")
    return caps


def canonical(expr: str) -> str:
    """The canonical text of a capture expression (itself when it doesn't parse)."""
    try:
        return format_expr(parse_expr(str(expr).strip()))
    except Exception:  # noqa: BLE001
        return str(expr).strip()


def _item_expr(item) -> str | None:
    if isinstance(item, str):
        return str(item)
    if isinstance(item, dict) and isinstance(item.get("expr"), str):
        return str(item["expr"])
    return None


# ------------------------------------------------------------------ the edits

def captured_in(text: str | None, symbol: str) -> list[str]:
    """The expressions captured in `symbol`, as written; [] when none (or no file)."""
    if not text or not text.strip():
        return []
    _, doc = _load(text)
    fns = _functions(doc, create=False)
    entry = _function(fns, symbol, create=False) if fns is not None else None
    caps = _captures(entry, create=False) if entry is not None else None
    return [e for e in (_item_expr(i) for i in caps or []) if e is not None]


def is_captured(text: str | None, symbol: str, expr: str) -> bool:
    want = canonical(expr)
    return any(canonical(e) == want for e in captured_in(text, symbol))


def add_captures(text: str | None, symbol: str, exprs: list[str]) -> str:
    """Add each expression not captured yet to `symbol` (created if missing);
    a new file starts with `version: 1`. Expressions must parse."""
    for e in exprs:
        parse_expr(e)           # raises ExpressionError: never write a broken spec
    y, doc = _load(text)
    if "version" not in doc:
        doc.insert(0, "version", 1)
    entry = _function(_functions(doc, create=True), symbol, create=True)
    caps = _captures(entry, create=True)
    have = {canonical(e) for e in (_item_expr(i) for i in caps) if e is not None}
    for e in exprs:
        c = canonical(e)
        if c not in have:
            caps.append(c)
            have.add(c)
    return _dump(y, doc)


def add_capture(text: str | None, symbol: str, expr: str) -> str:
    return add_captures(text, symbol, [expr])


def add_arguments(text: str | None, symbol: str, params: list[str]) -> str:
    """Capture each of a function's parameters (those not captured yet)."""
    return add_captures(text, symbol, [p for p in params if p and p != "_"])


def remove_capture(text: str | None, symbol: str, expr: str) -> str:
    """Remove the capture of `expr` from `symbol` (see the module doc for what
    else goes); the text unchanged when it isn't captured."""
    if not text or not text.strip():
        return text or ""
    y, doc = _load(text)
    fns = _functions(doc, create=False)
    entry = _function(fns, symbol, create=False) if fns is not None else None
    caps = _captures(entry, create=False) if entry is not None else None
    if not caps:
        return text
    want = canonical(expr)
    keep = [i for i, item in enumerate(caps) if canonical(_item_expr(item) or "") != want]
    if len(keep) == len(caps):
        return text
    for i in reversed(range(len(caps))):
        if i not in keep:
            del caps[i]
    if not caps:
        del entry["capture"]
        if not entry:
            del fns[symbol]
    return _dump(y, doc)


# ------------------------------------------------------------------ edits for the client

def _position(text: str, index: int) -> Position:
    line = text.count("\n", 0, index)
    start = text.rfind("\n", 0, index) + 1
    return Position(line=line, character=sum(2 if ord(c) > 0xFFFF else 1 for c in text[start:index]))


def text_edits(old_text: str, new_text: str) -> list[TextEdit]:
    """The TextEdits that turn old_text into new_text: one per changed run of
    lines, each trimmed to the characters that differ."""
    old_lines, new_lines = old_text.splitlines(True), new_text.splitlines(True)
    starts = [0]
    for ln in old_lines:
        starts.append(starts[-1] + len(ln))
    edits = []
    sm = difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            continue
        a, b = starts[i1], starts[i2]
        old, new = old_text[a:b], "".join(new_lines[j1:j2])
        p = 0
        while p < min(len(old), len(new)) and old[p] == new[p]:
            p += 1
        s = 0
        while s < min(len(old), len(new)) - p and old[-1 - s] == new[-1 - s]:
            s += 1
        edits.append(TextEdit(range=Range(start=_position(old_text, a + p),
                                          end=_position(old_text, b - s)),
                              new_text=new[p:len(new) - s]))
    return edits


def apply_edits(text: str, edits: list[TextEdit]) -> str:
    """Apply TextEdits (non-overlapping, LSP positions) to text: for tests and previews."""
    lines = text.split("\n")
    starts = [0]
    for ln in lines:
        starts.append(starts[-1] + len(ln) + 1)

    def index(pos: Position) -> int:
        if pos.line >= len(lines):
            return len(text)
        ln, units, i = lines[pos.line], 0, 0
        while i < len(ln) and units < pos.character:
            units += 2 if ord(ln[i]) > 0xFFFF else 1
            i += 1
        return starts[pos.line] + i

    spans = sorted(((index(e.range.start), index(e.range.end), e.new_text) for e in edits), reverse=True)
    for a, b, new in spans:
        text = text[:a] + new + text[b:]
    return text


def edit_for(uri: str, old_text: str | None, new_text: str) -> WorkspaceEdit:
    """A WorkspaceEdit that makes the file at `uri` hold new_text: CreateFile and
    the whole text when there is no file (old_text None), otherwise the few
    TextEdits that differ (documentChanges, unversioned)."""
    doc = OptionalVersionedTextDocumentIdentifier(uri=uri, version=None)
    if old_text is None:
        return WorkspaceEdit(document_changes=[
            CreateFile(uri=uri, options=CreateFileOptions(overwrite=False, ignore_if_exists=True)),
            TextDocumentEdit(text_document=doc, edits=[
                TextEdit(range=Range(start=Position(0, 0), end=Position(0, 0)), new_text=new_text)]),
        ])
    return WorkspaceEdit(document_changes=[
        TextDocumentEdit(text_document=doc, edits=text_edits(old_text, new_text))])
