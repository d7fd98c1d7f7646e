"""Ex-Ray's language server (pygls 2): `python -m server.lsp` over stdio.

server.py     the server, its handlers, and the hook for code actions and
              exray.yaml diagnostics (register_spec_features)
agent.py      the agent interface (LocalAgent runs the engine in-process)
workspace.py  settings and state: root, spec, snapshots folder, current snapshot
sourcemap.py  frames' files (absolute build paths, -trimpath module paths) -> workspace files
hints.py      the per-snapshot index; inlay hints, code lenses and hovers from it
documents.py  exray: virtual documents and their links
commands.py   exray.snapshot, exray.listSnapshots, exray.useSnapshot, exray.runQuery,
              exray.openFlameGraph, exray.openDocument
"""
