"""Code actions in Go files that edit exray.yaml: capture, capture the
arguments, stop capturing. The server lists them without edits (`data` set)
and fills the WorkspaceEdit in codeAction/resolve.

Kinds: gopls offers quickfix, refactor.extract.*, refactor.inline.*,
refactor.rewrite.*, source.organizeImports, source.fixAll and other source.*
kinds. Ours live under `refactor.exray.*`, a namespace gopls does not use:
clients that ask for `refactor` (VS Code's light bulb, Neovim's code action
menu) still show them, and none of them is mistaken for a gopls action.
"""
from __future__ import annotations

from lsprotocol.types import CodeAction, Range

from . import gosource, specedit

KIND_CAPTURE = "refactor.exray.capture"
KIND_CAPTURE_ARGUMENTS = "refactor.exray.captureArguments"
KIND_STOP_CAPTURE = "refactor.exray.stopCapture"
KINDS = (KIND_CAPTURE, KIND_CAPTURE_ARGUMENTS, KIND_STOP_CAPTURE)


def uri_to_path(uri: str) -> str:
    return gosource.file_path(uri)


def _action(title: str, kind: str, data: dict) -> CodeAction:
    return CodeAction(title=title, kind=kind, data={"exray": kind, **data})


def code_actions(workspace_root: str | None, go_uri: str, source: str | bytes, range: Range,
                 spec_text: str | None, spec_uri: str,
                 parsed: "gosource.ParsedGo | None" = None) -> list[CodeAction]:
    """The Ex-Ray actions at `range` in a Go file (edits left to resolve_code_action).

    `spec_text` None means there is no exray.yaml yet (the capture creates
    it). A spec that can't be edited safely gives no actions; so does a Go
    file that doesn't parse around the cursor. Never raises."""
    try:
        parsed = parsed or gosource.parse(source)
        pos = range.start
        fn = gosource.function_in_file(workspace_root, go_uri, parsed, pos.line, pos.character)
        if not fn:
            return []
        try:
            captured = specedit.captured_in(spec_text, fn.symbol)
        except specedit.SpecEditError:
            return []
        have = {specedit.canonical(e) for e in captured}
        base = {"spec_uri": spec_uri, "symbol": fn.symbol, "go_uri": go_uri}
        out = []
        sel = range if range.start != range.end else None
        on_name = sel is None and gosource._contains(fn.name_range, pos.line, pos.character) \
            and fn.kind != "range"
        expr = None if on_name else gosource.expression_at(parsed, pos.line, pos.character, sel)
        if expr is not None:
            if expr in have:
                out.append(_action(f"Stop capturing `{expr}` in `{fn.symbol}`", KIND_STOP_CAPTURE,
                                   {**base, "expr": expr}))
            else:
                out.append(_action(f"Capture `{expr}` in `{fn.symbol}`", KIND_CAPTURE,
                                   {**base, "expr": expr}))
        if on_name and fn.params:
            missing = [p for p in fn.params if p not in have]
            if missing:
                out.append(_action(f"Capture the arguments of `{fn.symbol}`", KIND_CAPTURE_ARGUMENTS,
                                   {**base, "params": missing}))
        return out
    except Exception:  # noqa: BLE001 - a code action request never fails the server
        return []


def resolve_code_action(action: CodeAction, spec_text: str | None) -> CodeAction:
    """Fill in the WorkspaceEdit on exray.yaml, from the current spec text
    (None: no file yet, it is created). An action whose edit can't be made
    (the spec became unreadable) comes back without an edit and with
    `disabled` saying why."""
    from lsprotocol.types import CodeActionDisabled

    data = action.data if isinstance(action.data, dict) else {}
    kind, symbol, uri = data.get("exray"), data.get("symbol"), data.get("spec_uri")
    try:
        if kind == KIND_CAPTURE:
            new = specedit.add_capture(spec_text, symbol, data["expr"])
        elif kind == KIND_CAPTURE_ARGUMENTS:
            new = specedit.add_arguments(spec_text, symbol, list(data["params"]))
        elif kind == KIND_STOP_CAPTURE:
            new = specedit.remove_capture(spec_text, symbol, data["expr"])
        else:
            return action
    except Exception as e:  # noqa: BLE001 - SpecEditError, ExpressionError, a bad `data`
        action.disabled = CodeActionDisabled(reason=str(e))
        return action
    action.edit = specedit.edit_for(uri, spec_text if spec_text is not None else None, new)
    return action
