"""What Go files show from the current snapshot: inlay hints, code lenses and
hovers. Thin handlers (document -> engine -> convert): the index is
hints.SnapshotIndex, the Go source model is gosource (parsed once per buffer
version in gosource.CACHE, the cache code actions use too), the rendering is
render.py. Parsing and symbol work run in a worker thread.

- textDocument/inlayHint: at the end of each line where frames sit, how many
  goroutines, their wait reasons and the values captured there.
- textDocument/codeLens: above each function with frames (compiler-made
  wrappers get none): its goroutines, all stacks, its table, and what its
  captures miss (`⊘ req: not live at this pc`).
- textDocument/hover: on an expression inside a captured function, the values
  of the captures it stands for. The expression and the function are the ones
  the "Capture …" code action names at the same place.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from lsprotocol import types

from . import commands, documents, gosource, render

if TYPE_CHECKING:
    from .server import ExrayServer


# ------------------------------------------------------------------ engine

def inlay_hints(idx, path: str, text: str | None, lo: int, hi: int, max_len: int) -> list[types.InlayHint]:
    """The hints of lines lo..hi (0-based) of a file the index has frames in."""
    src = text.split("\n") if text is not None else []
    out = []
    for line, agg in idx.lines[path].items():
        l0 = line - 1
        if not lo <= l0 <= hi or l0 >= max(len(src), 1) and src:
            continue
        end = gosource.utf16_len(src[l0].rstrip("\r")) if l0 < len(src) else 0
        out.append(types.InlayHint(
            position=types.Position(line=l0, character=end),
            label=render.line_label(agg, max_len), padding_left=True,
            tooltip=f"Ex-Ray: {len(agg.goroutines)} goroutine(s) at this line in "
                    f"{', '.join(sorted(agg.functions))}"))
    out.sort(key=lambda h: h.position.line)
    return out


def code_lenses(idx, path: str, parsed: gosource.ParsedGo) -> list[types.CodeLens]:
    out = []
    for lens_ in render.lenses(idx, path, parsed):
        rng = types.Range(types.Position(lens_.line, 0), types.Position(lens_.line, 0))

        def lens(title: str, uri: str, **kw) -> types.CodeLens:
            return types.CodeLens(range=rng, command=types.Command(
                title=title, command=commands.OPEN_DOCUMENT, arguments=[uri]), **kw)
        n = lens_.goroutines
        out.append(lens(f"{n} goroutine{'s' if n != 1 else ''}", documents.stacks_uri(lens_.function),
                        data={"function": lens_.function}))
        out.append(lens("open stacks", documents.stacks_uri()))
        if lens_.table:
            out.append(lens("open table", documents.table_uri(lens_.table)))
        if lens_.unavailable:
            out.append(lens(lens_.unavailable, documents.table_uri(lens_.table)))
    return out


def hover(idx, root: str | None, uri: str, path: str, parsed: gosource.ParsedGo,
          line: int, character: int, max_values: int) -> str | None:
    """Markdown for the cursor: the function and the expression there are
    gosource's, as the code actions read them."""
    fn = gosource.function_in_file(root, uri, parsed, line, character)
    if not fn:
        return None
    expr = gosource.expression_at(parsed, line, character)
    if not expr:
        return None
    hits = render.hover_captures(idx, path, parsed, fn, expr)
    return render.hover_markdown(hits, max_values) if hits else None


# ------------------------------------------------------------------ handlers

async def parsed_go(ls: "ExrayServer", uri: str) -> gosource.ParsedGo:
    """The buffer's parse (off the loop); a file that does not parse is said once."""
    try:
        doc = ls.workspace.get_text_document(uri)
        version, text = doc.version, doc.source
    except (OSError, UnicodeDecodeError):
        version, text = None, ""
    parsed = await asyncio.to_thread(gosource.CACHE.get, uri, version, text)
    if parsed.errors and uri not in ls.told_unparsed:
        ls.told_unparsed.add(uri)
        ls.log(f"Ex-Ray: {uri} does not parse ({parsed.errors[0].message}); hints and lenses use "
               "the lines the snapshot records", types.MessageType.Warning)
    return parsed


def on_inlay_hint(ls: "ExrayServer", params: types.InlayHintParams):
    found = ls.in_snapshot(params.text_document.uri, "lines")
    if found is None:
        return []
    idx, path = found
    return inlay_hints(idx, path, ls.text_of(params.text_document.uri), params.range.start.line,
                       params.range.end.line, ls.state.settings.maxHintLength)


async def on_code_lens(ls: "ExrayServer", params: types.CodeLensParams):
    uri = params.text_document.uri
    found = ls.in_snapshot(uri, "functions")
    if found is None:
        return []
    idx, path = found
    parsed = await parsed_go(ls, uri)
    return await asyncio.to_thread(code_lenses, idx, path, parsed)


async def on_hover(ls: "ExrayServer", params: types.HoverParams):
    uri = params.text_document.uri
    found = ls.in_snapshot(uri, "functions")
    if found is None or ls.text_of(uri) is None:
        return None
    idx, path = found
    parsed = await parsed_go(ls, uri)
    pos = params.position
    md = await asyncio.to_thread(hover, idx, str(ls.state.root), uri, path, parsed, pos.line, pos.character,
                                 ls.state.settings.maxHoverValues)
    if md is None:
        return None
    return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=md))


def register(server: "ExrayServer") -> None:
    server.feature(types.TEXT_DOCUMENT_INLAY_HINT)(on_inlay_hint)
    server.feature(types.TEXT_DOCUMENT_CODE_LENS)(on_code_lens)
    server.feature(types.TEXT_DOCUMENT_HOVER)(on_hover)
