"""The `exray` command.

    exray snapshot [--pid PID ...] [--agent ADDR ...] [--spec exray.yaml] [-o snap.sqlite]
    exray agent [--listen unix:/run/exray/agent.sock | tcp:HOST:PORT] --allow-exe GLOB ...
    exray goroutines SNAP [--all] [--function PAT] [--status S] [--value T.COL=V] [--label K=V]
    exray sql SNAP "SELECT ..."
    exray check-spec [exray.yaml] [--binary GO_BINARY ...]
    exray links SNAP TABLE ROWID
    exray export SNAP --format pprof|flamegraph -o FILE

Errors from our own exception hierarchies print `error: <message>` and exit 1;
a failing SQL query exits 2. Never a traceback for those.
"""
from __future__ import annotations

import argparse
import errno
import os
import sqlite3
import sys
from typing import Sequence

from probe_compiler.errors import ProbeCompilerError

from . import format as fmt
from .sqlguard import SQL_ERRORS, check_statement, describe, fetch, is_damage, quote_ident
from .store import SnapshotError, read_error, read_goroutines, reading


def _our_errors() -> tuple[type[BaseException], ...]:
    from .errors import ServerError
    errs: list[type[BaseException]] = [ProbeCompilerError, SnapshotError, ServerError]
    try:
        from agent.errors import AgentError
        errs.append(AgentError)
    except ImportError:
        pass
    return tuple(errs)


class _SQLFailed(Exception):
    pass


def cmd_goroutines(args: argparse.Namespace) -> int:
    with reading(args.snapshot) as db:
        procs, gors, frames = read_goroutines(db)
        filt = _goroutine_filter(db, args)
        value_hits = [_value_hits(db, v) for v in filt.values]
    matched = filt.matching(gors, frames, value_hits)
    sys.stdout.write(fmt.format_goroutines(procs, gors, frames, show_all=args.all,
                                           matched=matched, filter_text=filt.describe()))
    return 0


def _goroutine_filter(db: sqlite3.Connection, args: argparse.Namespace) -> fmt.GoroutineFilter:
    from .store import function_tables
    tables = function_tables(db, extras=True) if args.value else []
    return fmt.GoroutineFilter(
        functions=list(args.function or []), statuses=list(args.status or []),
        values=[fmt.parse_value_filter(v, tables) for v in args.value or []],
        labels=[fmt.parse_label_filter(v) for v in args.label or []])


def _value_hits(db: sqlite3.Connection, v: fmt.ValueFilter) -> set[tuple[int, int]]:
    """The goroutines with a frame in v.table whose column passes v. Compared in
    Python: the column holds JSON text and the user typed a bare value."""
    q, c = quote_ident(v.table), quote_ident(v.column)
    return {(pid, goid) for pid, goid, cell in db.execute(f"SELECT process_id, goid, {c} FROM {q}")
            if v.matches(cell)}


def cmd_sql(args: argparse.Namespace) -> int:
    """The query runs read-only, under the read bounds (docs/security.md): a
    statement that writes, attaches or vacuums is refused, one that runs too
    long is stopped, and at most limits.table_rows rows are read."""
    with reading(args.snapshot, limits=_read_limits(args)) as db:
        try:
            check_statement(db, args.query)
            cur = db.execute(args.query)
            cols = [d[0] for d in cur.description] if cur.description else []
            rows, more = fetch(cur, db.limits.table_rows)
        except (*SQL_ERRORS, sqlite3.Warning) as e:
            if is_damage(e):
                raise SnapshotError(read_error(args.snapshot, e, db)) from None
            raise _SQLFailed(describe(e, db)) from None
        if cols and not args.raw:
            rows = _displayed(db, args.query, cols, rows)
        max_rows = db.limits.table_rows
    if not cols:
        print("(statement returned no columns)")
        return 0
    sys.stdout.write(fmt.format_table(cols, rows, max_width=args.max_width))
    if more:
        print(f"note: only the first {max_rows:,} rows are shown (the read limit; docs/security.md)",
              file=sys.stderr)
    return 0


def _read_limits(args: argparse.Namespace):
    from probe_compiler.sql_limits import CEILINGS, DEFAULTS
    t = getattr(args, "timeout", None)
    if t is None:
        return DEFAULTS
    if not 0 < t <= CEILINGS.statement_seconds:
        raise _SQLFailed(f"--timeout must be more than 0 and at most {CEILINGS.statement_seconds:g} s")
    return DEFAULTS.with_(statement_seconds=t, total_seconds=max(t, DEFAULTS.total_seconds))


def _displayed(db: sqlite3.Connection, query: str, cols: list[str], rows: list) -> list:
    """Rows with display types applied (durations, timestamps, bytes, hex).

    Only for a query over one table, where a result column named like a
    column of that table is that column; joins keep the stored integers."""
    from probe_compiler.spec_sql import tables_read
    from server.display import display_types, format_value
    try:
        tables = tables_read(query)
    except Exception:           # not parseable by sqlglot: SQLite ran it, show it as stored
        return rows
    if len(tables) != 1:
        return rows
    types = display_types(db)
    shown = [types.get((tables[0], c)) for c in cols]
    if not any(shown):
        return rows
    return [tuple(v if d is None or v is None else format_value(v, d) for v, d in zip(r, shown))
            for r in rows]


def _check_out_path(out: str | None) -> None:
    """Refuse an output path that can't be written, before anything is paused."""
    if out is None:
        return
    from .errors import ServerError
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise ServerError(f"-o {out}: that is a directory; give a file name, e.g. {os.path.join(out, 'snap.sqlite')}")
    if not os.path.isdir(folder):
        raise ServerError(f"-o {out}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ServerError(f"-o {out}: this user may not create files in {folder}; choose another folder")


def cmd_snapshot(args: argparse.Namespace) -> int:
    from server import snapshot_job  # lazy: pulls in the agent and the probe compiler
    _check_out_path(args.out)
    spec = args.spec
    if spec is None and not args.pid and os.path.exists("exray.yaml"):
        spec = "exray.yaml"     # no arguments at all: the spec here says what to snapshot
    from server import fleet    # through agents (--agent, or targets that name agents)
    limits = _capture_limits(args)
    through_agents = fleet.snapshot_command(args, spec, limits)
    if through_agents is not None:
        return through_agents
    executor = args.executor or os.environ.get("EXRAY_EXECUTOR") or "auto"
    return int(snapshot_job.run(list(args.pid or []), spec, args.out, executor=executor,
                                limits=limits) or 0)


def _capture_limits(args: argparse.Namespace) -> dict:
    """The capture bounds given as flags (--deadline-ms 50 ...), within their ceilings."""
    from probe_compiler import capture_limits as cl
    from .errors import ServerError
    out = {}
    for name in cl.key_names():
        v = getattr(args, name, None)
        if v is None:
            continue
        flag = "--" + name.replace("_", "-")
        if not v > 0:
            raise ServerError(f"{flag} must be more than 0")
        if v > getattr(cl.CEILINGS, name):
            raise ServerError(f"{flag} {cl.text(v)} is above its ceiling {cl.text(getattr(cl.CEILINGS, name))}")
        out[name] = v
    return out


def _add_capture_limit_arguments(s: argparse.ArgumentParser) -> None:
    from probe_compiler import capture_limits as cl
    g = s.add_argument_group("capture limits", "bounds on the pause and what it reads; they override "
                                               "the spec's limits: (docs/read-program.md)")
    for name in cl.key_names():
        default = getattr(cl.DEFAULTS, name)
        g.add_argument("--" + name.replace("_", "-"), type=int if cl.is_integer_key(name) else float,
                       default=None, metavar="N", dest=name,
                       help=f"{cl.DOCS[name]} (default {cl.text(default)}, "
                            f"at most {cl.text(getattr(cl.CEILINGS, name))})")


def cmd_agent(args: argparse.Namespace) -> int:
    from agent.main import run     # the gRPC agent of this machine (docs/agent.md)
    return run(args)


def cmd_check_spec(args: argparse.Namespace) -> int:
    from probe_compiler.spec import load_spec
    spec = load_spec(args.spec)
    binaries = list(args.binary or [])
    if binaries:
        from probe_compiler.spec_check import check_binaries
        checked = check_binaries(spec, binaries)
        nowhere = set.intersection(*(set(b.absent) for b in checked.binaries))
        for b in checked.binaries:
            # Said either way: "no variables" is often a debug file not found.
            print(f"{b.path}: {b.dwarf.describe()}")
            if b.dwarf.path is None:
                print("  so only the functions were checked: captures need DWARF")
            elsewhere = [s for s in b.absent if s not in nowhere]   # in no binary: an error below
            if elsewhere:
                print(f"  has no {', '.join(elsewhere)}: its processes get no rows there")
            for w in b.warnings:   # captures no wait point of their function can read
                print(f"  warning: {w}")
        for p in checked.errors:
            print(f"error: {p}", file=sys.stderr)
        if checked.errors:
            return 1
    sys.stdout.write(fmt.format_spec_summary(args.spec, spec, ", ".join(binaries) or None))
    return 0


def cmd_links(args: argparse.Namespace) -> int:
    from server import links  # lazy, like the other heavy commands
    return int(links.cmd_links(args) or 0)


def cmd_export(args: argparse.Namespace) -> int:
    from server import export
    return int(export.cmd_export(args) or 0)


def cmd_lsp(args: argparse.Namespace) -> int:
    from server.lsp.server import main as serve  # pygls loads only for the editor
    serve()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exray", description="Ex-Ray: snapshots of running Go services.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("snapshot", help="take a snapshot of one or more Go processes")
    s.add_argument("--pid", type=int, action="append", metavar="PID",
                   help="process to snapshot (repeat for several; default: the spec's targets)")
    s.add_argument("--spec", metavar="exray.yaml", default=None,
                   help="what to capture (default: ./exray.yaml when no --pid is given; "
                        "else stacks only)")
    s.add_argument("-o", "--out", metavar="SNAP.sqlite",
                   help="snapshot file to write (default: .exray/snapshots/<time>.sqlite "
                        "next to the spec)")
    s.add_argument("--executor", choices=("ptrace", "ebpf", "auto"), default=None,
                   help="who walks the stacks and reads the captures: ptrace (user space), ebpf (a "
                        "probe in the kernel, the walk shared by one thread per CPU), auto (eBPF where the "
                        "kernel and privileges allow, else ptrace, saying why); default: $EXRAY_EXECUTOR, "
                        "else auto (through agents: each agent's default)")
    __import__("server.fleet").fleet.add_snapshot_arguments(s)
    _add_capture_limit_arguments(s)
    s.set_defaults(func=cmd_snapshot)

    a = sub.add_parser("agent", help="serve this machine's Go processes to Ex-Ray over gRPC (docs/agent.md)")
    __import__("agent.main").main.add_arguments(a)
    a.set_defaults(func=cmd_agent)

    g = sub.add_parser("goroutines", help="goroutines of a snapshot, identical stacks grouped")
    g.add_argument("snapshot", metavar="SNAP")
    g.add_argument("--all", action="store_true",
                   help="also system goroutines and hidden (runtime) frames")
    g.add_argument("--function", action="append", metavar="PAT",
                   help="a function on the stack contains PAT, or matches it as a glob (* ? [); "
                        "repeat: all of them")
    g.add_argument("--status", action="append", metavar="S",
                   help="status (running, runnable, waiting, syscall, ...) or wait reason "
                        "('chan receive', sync.Mutex.Lock), any case; repeat: any of them")
    g.add_argument("--value", action="append", metavar="TABLE.COLUMN=VALUE",
                   help="a captured value: TABLE is a function table or its Go symbol, "
                        "COLUMN may go on with .json.path; operators = != < <= > >= ~ (contains); "
                        "repeat: all of them")
    g.add_argument("--label", action="append", metavar="KEY=VALUE",
                   help="a pprof label of the goroutine; repeat: all of them")
    g.set_defaults(func=cmd_goroutines)

    q = sub.add_parser("sql", help="run a SQL query on a snapshot")
    q.add_argument("snapshot", metavar="SNAP")
    q.add_argument("query", metavar="QUERY")
    q.add_argument("--max-width", type=int, default=60, help="cut cells longer than this (default 60)")
    q.add_argument("--raw", action="store_true",
                   help="show stored values (no display types: nanoseconds stay integers)")
    q.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="stop the query after SECONDS (default 30, at most 300; docs/security.md)")
    q.set_defaults(func=cmd_sql)

    c = sub.add_parser("check-spec", help="validate exray.yaml and list the tables it makes")
    c.add_argument("spec", nargs="?", default="exray.yaml", metavar="exray.yaml")
    c.add_argument("--binary", action="append", metavar="GO_BINARY",
                   help="also check functions, variables and fields against this binary's debug info; "
                        "repeat for a spec that spans binaries (a function needs to be in one of "
                        "them, or in each whose target expects it)")
    c.set_defaults(func=cmd_check_spec)

    k = sub.add_parser("links", help="rows (and their goroutine frames) linked to one row of a table")
    k.add_argument("snapshot", metavar="SNAP")
    k.add_argument("table", metavar="TABLE")
    k.add_argument("rowid", type=int, metavar="ROWID")
    k.set_defaults(func=cmd_links)

    e = sub.add_parser("export", help="write a snapshot as a pprof goroutine profile or a flame graph")
    e.add_argument("snapshot", metavar="SNAP")
    e.add_argument("--format", required=True, choices=["pprof", "flamegraph"])
    e.add_argument("-o", "--out", required=True, metavar="FILE")
    e.set_defaults(func=cmd_export)

    l = sub.add_parser("lsp", help="run the language server over stdio (what editors start; see docs/editor.md)")
    l.set_defaults(func=cmd_lsp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ours = _our_errors()
    try:
        return args.func(args)
    except _SQLFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ours as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:             # `exray sql ... | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second complaint when Python flushes at exit
        return 141
    except OSError as e:                # a file of the user's: say which, and why
        print(f"error: {_os_error(e)}", file=sys.stderr)
        return 1
    except MemoryError:
        print("error: out of memory; the input is larger than this machine can hold", file=sys.stderr)
        return 1
    except Exception as e:              # noqa: BLE001 - a bug: one line, and how to see more
        if os.environ.get("EXRAY_DEBUG"):
            raise
        print(f"error: internal error in exray {args.command}: {type(e).__name__}: {e}; this is a "
              f"bug in Ex-Ray: please report it with the command (EXRAY_DEBUG=1 shows the "
              f"traceback)", file=sys.stderr)
        return 70                       # EX_SOFTWARE


def _os_error(e: OSError) -> str:
    what = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    why = e.strerror or str(e)
    hint = {errno.EACCES: "check its permissions", errno.EPERM: "check its permissions",
            errno.ENOSPC: "free some space", errno.EISDIR: "give a file, not a directory",
            errno.ENOENT: "check the path", errno.EROFS: "choose a writable place"}.get(e.errno)
    return f"{what + ': ' if what else ''}{why}{'; ' + hint if hint else ''}"


if __name__ == "__main__":
    sys.exit(main())
