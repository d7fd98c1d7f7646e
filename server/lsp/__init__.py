"""Ex-Ray's language server (pygls 2): `python -m server.lsp` over stdio.

server.py     the server, its settings, snapshots and documents; create_server registers the rest
goviews.py    inlay hints, code lenses and hovers in Go files (handlers; register(server))
editing.py    code actions in Go files that edit exray.yaml; diagnostics of exray.yaml
agent.py      the agent interface (LocalAgent runs the engine in-process)
workspace.py  settings and state: root, spec, snapshots folder, current snapshot
sourcemap.py  frames' files (absolute build paths, -trimpath module paths) -> workspace files
hints.py      the per-snapshot index (SQL and aggregation) that goviews reads
documents.py  exray: virtual documents and their links
commands.py   exray.snapshot, exray.listSnapshots, exray.useSnapshot, exray.runQuery,
              exray.openFlameGraph, exray.openDocument
Pure modules (no server, tested on their own):
gosource.py   the one model of Go source (tree-sitter-go, one parse cache): functions,
              expressions, module paths; what hover and code actions both read
render.py     hint labels, lenses and hovers from the index; values, nil and ⊘ unavailable
specedit.py   round-trip edits of exray.yaml (ruamel.yaml), as LSP text edits
code_actions.py  the capture / capture arguments / stop capturing actions and their resolve
diagnostics.py   every problem of exray.yaml on its exact token, with quick fixes
"""
