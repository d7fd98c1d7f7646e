"""Report SQL, written in SQLite's dialect, run on PostgreSQL and DuckDB too.

Users write reports (derived tables) against the snapshot in SQLite's dialect.
`transpile` turns one statement into PostgreSQL or DuckDB with sqlglot, then
AST passes (pure functions, listed in PASSES) fix what sqlglot's plain
transpile gets wrong for snapshots; docs/sql-engines.md states the rules.
`copy_snapshot` loads a snapshot file into a psycopg or duckdb connection,
`run_reports` creates the reports there, and `rows` reads rows normalized so
the three engines can be compared.
"""
from __future__ import annotations

import decimal
import json
import sqlite3
from typing import Any, Callable, Iterable

import sqlglot
from sqlglot import exp

DIALECTS = ("sqlite", "postgres", "duckdb")


class UnsupportedSQL(ValueError):
    """The statement uses SQLite SQL outside the portable subset."""


def _check(dialect: str) -> None:
    if dialect not in DIALECTS:
        raise ValueError(f"unknown SQL dialect {dialect!r}; one of {', '.join(DIALECTS)}")


# ------------------------------------------------------------------ AST helpers

def _unparen(node: exp.Expression) -> exp.Expression:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _context(node: exp.Expression) -> tuple[exp.Expression | None, str | None]:
    """(parent, arg key) of a node, looking through parentheses."""
    while isinstance(node.parent, exp.Paren):
        node = node.parent
    return node.parent, node.arg_key


# Nodes SQLite evaluates to 0/1 and PostgreSQL/DuckDB to a boolean.
_PREDICATES = (exp.Predicate, exp.Connector, exp.Not, exp.Boolean)
# (parent type, arg key) slots where SQL wants a truth value; None = any key.
_BOOL_SLOTS: tuple[tuple[type, str | None], ...] = (
    (exp.Where, "this"), (exp.Having, "this"), (exp.Not, "this"), (exp.Connector, None),
    (exp.If, "this"), (exp.Join, "on"), (exp.Qualify, "this"),
)
_ARITH = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.Neg)
_COMPARE = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
_NUMERIC_AGGS = (exp.Sum, exp.Avg)
_NUMERIC_TYPES = {exp.DataType.Type.INT, exp.DataType.Type.BIGINT, exp.DataType.Type.SMALLINT,
                  exp.DataType.Type.DOUBLE, exp.DataType.Type.FLOAT, exp.DataType.Type.DECIMAL,
                  exp.DataType.Type.TINYINT}


def _in_bool_slot(node: exp.Expression) -> bool:
    parent, key = _context(node)
    if isinstance(parent, exp.If) and isinstance(parent.parent, exp.Case) and parent.parent.this:
        return False            # CASE x WHEN <value>: a value, not a condition
    return any(isinstance(parent, t) and (k is None or k == key) for t, k in _BOOL_SLOTS)


def _is_predicate(node: exp.Expression) -> bool:
    return isinstance(_unparen(node), _PREDICATES)


def _is_numeric(node: exp.Expression) -> bool:
    """Plainly a number by its syntax (no schema needed)."""
    n = _unparen(node)
    if isinstance(n, exp.Literal):
        return not n.is_string
    if isinstance(n, exp.Neg):
        return _is_numeric(n.this)
    if isinstance(n, (exp.Cast, exp.TryCast)):
        return n.to.this in _NUMERIC_TYPES
    return isinstance(n, _ARITH + (exp.Count, exp.Length))


def _replace_all(tree: exp.Expression, kinds, fn: Callable[[exp.Expression], exp.Expression | None]):
    """Apply fn to every node of `kinds`, innermost first; fn returns a
    replacement or None to keep the node."""
    for node in list(tree.find_all(kinds))[::-1]:
        new = fn(node)
        if new is not None and new is not node:
            if node is tree:
                tree = new
            else:
                node.replace(new)
    return tree


# ------------------------------------------------------------------ passes

def fix_arrow_lambdas(tree: exp.Expression, dialect: str) -> exp.Expression:
    """sqlglot parses `f(col -> 'a')` (a SQLite JSON arrow inside a function
    call) as a lambda; SQLite has no lambdas, so it is always the arrow."""
    def fix(node: exp.Lambda):
        params = node.expressions
        if len(params) != 1 or not isinstance(node.this, exp.Literal) or not node.this.is_string:
            raise UnsupportedSQL(f"not SQLite SQL: {node.sql('sqlite')}")
        return sqlglot.parse_one(f"{params[0].sql('sqlite')} -> {node.this.sql('sqlite')}", read="sqlite")
    return _replace_all(tree, exp.Lambda, fix)


def _json_number(node: exp.JSONExtractScalar, dialect: str) -> exp.Expression:
    """The number a SQLite `->>` gives for a JSON number or boolean (true=1),
    NULL for anything else; a double on both engines."""
    as_json = exp.JSONExtract(this=node.this.copy(), expression=node.expression.copy())
    if dialect == "duckdb":
        return exp.TryCast(this=as_json, to=exp.DataType.build("DOUBLE"))
    # jsonb casts straight to a number or boolean; jsonb_typeof picks which
    return sqlglot.parse_one(
        "CASE JSONB_TYPEOF(j) WHEN 'number' THEN CAST(j AS DOUBLE PRECISION) "
        "WHEN 'boolean' THEN CAST(CAST(j AS BOOLEAN) AS INT) END", read="postgres",
    ).transform(lambda n: as_json.copy() if isinstance(n, exp.Column) and n.name == "j" else n)


def _numeric_context(node: exp.Expression) -> bool:
    parent, _ = _context(node)
    if isinstance(parent, _ARITH + _NUMERIC_AGGS) or _in_bool_slot(node):
        return True
    if isinstance(parent, _COMPARE):
        other = parent.expression if _unparen(parent.this) is _unparen(node) else parent.this
        return _is_numeric(other)
    if isinstance(parent, exp.Between):
        return _is_numeric(parent.args["low"]) or _is_numeric(parent.args["high"])
    if isinstance(parent, exp.In):
        return any(_is_numeric(e) for e in parent.expressions)
    return False


def json_numbers(tree: exp.Expression, dialect: str) -> exp.Expression:
    """`->>` / json_extract used as a number (arithmetic, SUM/AVG, a truth
    value, compared with a number) becomes a double: PostgreSQL and DuckDB
    return text where SQLite returns an integer or a real."""
    return _replace_all(tree, exp.JSONExtractScalar,
                        lambda n: _json_number(n, dialect) if _numeric_context(n) else None)


def truth_values(tree: exp.Expression, dialect: str) -> exp.Expression:
    """SQLite has no booleans: a 0/1 integer stands where a condition goes
    (`WHERE NOT hidden`), and a condition is an integer where a value goes
    (`SUM(wait_ns > 0)`). Make both explicit."""
    def fix(node: exp.Expression):
        if _in_bool_slot(node) and not _is_predicate(node):
            return exp.paren(exp.NEQ(this=exp.paren(node.copy(), copy=False), expression=exp.Literal.number(0)),
                             copy=False)
        if isinstance(node.parent, exp.Paren):
            return None         # judged at the outermost parenthesis
        if _is_predicate(node) and not _in_bool_slot(node):
            return exp.Cast(this=exp.paren(node.copy(), copy=False), to=exp.DataType.build("INT"))
        return None
    return _replace_all(tree, exp.Expression, fix)


def like_ignores_case(tree: exp.Expression, dialect: str) -> exp.Expression:
    """SQLite's LIKE ignores ASCII case; theirs does not, ILIKE does. SQLite
    also matches JSON text with LIKE; PostgreSQL needs jsonb cast to text."""
    def fix(node: exp.Like):
        args = dict(node.args)
        if dialect == "postgres":
            args["this"] = exp.Cast(this=args["this"], to=exp.DataType.build("TEXT"))
        return exp.ILike(**args)
    return _replace_all(tree, exp.Like, fix)


def concat_text(tree: exp.Expression, dialect: str) -> exp.Expression:
    """SQLite's `||` turns any operand into text; PostgreSQL has no int || int
    and treats jsonb || x as JSON concatenation. Cast every non-text operand."""
    def fix(node: exp.DPipe):
        for key in ("this", "expression"):
            side = node.args[key]
            keep = isinstance(side, exp.DPipe) or (isinstance(side, exp.Literal) and side.is_string)
            if not keep:
                side.replace(exp.Cast(this=side.copy(), to=exp.DataType.build("TEXT")))
        return None
    return _replace_all(tree, exp.DPipe, fix)


# SQLite type name in a CAST -> the engine type with SQLite's meaning (its
# INTEGER is 64-bit, its REAL a double); names not listed pass through.
CAST_TYPES: dict[str, str] = {"INT": "BIGINT", "INTEGER": "BIGINT", "REAL": "DOUBLE",
                              "FLOAT": "DOUBLE", "DOUBLE": "DOUBLE", "NUMERIC": "DOUBLE"}


def sqlite_cast_types(tree: exp.Expression, dialect: str) -> exp.Expression:
    """CAST(x AS INTEGER) must not become a 32-bit int (goids, pcs, trace ids)."""
    def fix(node: exp.Cast):
        new = CAST_TYPES.get(node.to.sql("sqlite").upper())
        if new:
            node.set("to", exp.DataType.build(new))
        return None
    return _replace_all(tree, exp.Cast, fix)


def _pg_path(path: exp.Expression) -> exp.Literal:
    """sqlglot's JSONPath -> PostgreSQL's text[] path literal '{a,b,0}'."""
    if not isinstance(path, exp.JSONPath):
        raise UnsupportedSQL(f"JSON path must be a literal: {path.sql('sqlite')}")
    parts = []
    for p in path.expressions:
        if isinstance(p, exp.JSONPathRoot):
            continue
        if isinstance(p, exp.JSONPathKey) and isinstance(p.this, str):
            parts.append('"' + p.this.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif isinstance(p, exp.JSONPathSubscript) and isinstance(p.this, int) and p.this >= 0:
            parts.append(str(p.this))
        else:
            raise UnsupportedSQL(f"JSON path step {p.sql('sqlite') or p} is not portable")
    return exp.Literal.string("{" + ",".join(parts) + "}")


def pg_jsonb_paths(tree: exp.Expression, dialect: str) -> exp.Expression:
    """sqlglot writes json_extract_path(...), which takes json, not the jsonb
    our columns hold; use `#>` / `#>>` with a text[] path."""
    def fix(node):
        kind = exp.JSONBExtractScalar if isinstance(node, exp.JSONExtractScalar) else exp.JSONBExtract
        this = node.this
        if isinstance(this, exp.Literal):   # SQLite reads JSON from any text
            this = exp.Cast(this=this, to=exp.DataType.build("JSONB"))
        return kind(this=this, expression=_pg_path(node.expression))
    return _replace_all(tree, (exp.JSONExtract, exp.JSONExtractScalar), fix)


# SQLite function -> the engine's name for it (same arguments, same meaning).
FUNCTION_NAMES: dict[str, dict[str, str]] = {
    "postgres": {"json_array_length": "jsonb_array_length"},
    "duckdb": {},
}


def rename_functions(tree: exp.Expression, dialect: str) -> exp.Expression:
    names = FUNCTION_NAMES[dialect]

    def fix(node: exp.Anonymous):
        new = names.get(node.name.lower())
        if new is None:
            return None
        if node.name.lower() == "json_array_length" and len(node.expressions) > 1 and dialect == "postgres":
            raise UnsupportedSQL("json_array_length(x, path): write json_array_length(x -> path)")
        return exp.Anonymous(this=new, expressions=node.expressions)
    return _replace_all(tree, exp.Anonymous, fix)


def fold_identifiers(tree: exp.Expression, dialect: str) -> exp.Expression:
    """SQLite names are case-insensitive even when quoted; copy_snapshot
    creates every name in lower case, so refer to them that way."""
    def fix(node: exp.Identifier):
        node.set("this", node.this.lower())
        return None
    return _replace_all(tree, exp.Identifier, fix)


# (pass, dialects it runs for), in order: later passes see earlier output.
PASSES: list[tuple[Callable[[exp.Expression, str], exp.Expression], tuple[str, ...]]] = [
    (fix_arrow_lambdas, ("postgres", "duckdb")),
    (sqlite_cast_types, ("postgres", "duckdb")),
    (json_numbers, ("postgres", "duckdb")),
    (truth_values, ("postgres", "duckdb")),
    (like_ignores_case, ("postgres", "duckdb")),
    (concat_text, ("postgres", "duckdb")),
    (pg_jsonb_paths, ("postgres",)),
    (rename_functions, ("postgres", "duckdb")),
    (fold_identifiers, ("postgres", "duckdb")),
]


def transpile(sql: str, dialect: str) -> str:
    """One SQLite statement in `dialect` ("sqlite" returns it unchanged)."""
    _check(dialect)
    if dialect == "sqlite":
        return sql
    trees = sqlglot.parse(sql, read="sqlite")
    if len(trees) != 1 or trees[0] is None:
        raise UnsupportedSQL("a report is exactly one SQL statement")
    tree = trees[0]
    for fn, dialects in PASSES:
        if dialect in dialects:
            tree = fn(tree, dialect)
    return tree.sql(dialect=dialect)


# ------------------------------------------------------------------ sessions

# Per-connection settings that make the engine behave like SQLite.
SESSION_SETTINGS: dict[str, list[str]] = {
    "sqlite": [],
    "postgres": [],
    # SQLite: int / int is an integer (truncated), x / 0 and x % 0 are NULL
    "duckdb": ["SET integer_division = true", "SET error_on_division_by_zero = false"],
}


def prepare(conn, dialect: str) -> None:
    """Apply SESSION_SETTINGS; copy_snapshot, run_reports and rows call it."""
    _check(dialect)
    for stmt in SESSION_SETTINGS[dialect]:
        conn.execute(stmt)


# ------------------------------------------------------------------ loading

# Engine column type for a SQLite declared type, and for JSON-text columns.
COLUMN_TYPES: dict[str, dict[str, str]] = {
    "postgres": {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "TEXT": "TEXT", "JSON": "JSONB",
                 "": "TEXT"},
    "duckdb": {"INTEGER": "BIGINT", "REAL": "DOUBLE", "TEXT": "TEXT", "JSON": "JSON", "": "TEXT"},
}
# Built-in columns holding JSON text (docs/snapshot-schema.md).
BUILTIN_JSON_COLUMNS = {("processes", "warnings"), ("goroutines", "labels")}


def _json_columns(src: sqlite3.Connection) -> set[tuple[str, str]]:
    """Every JSON-text column: built-in ones, and each function table's
    captures, their raw_ twins and _errors (from meta.function_tables)."""
    from server.store import function_tables
    cols = set(BUILTIN_JSON_COLUMNS)
    for t in function_tables(src):
        for c in t.columns:
            cols |= {(t.table, c), (t.table, "raw_" + c)}
        cols.add((t.table, "_errors"))
    return {(t.lower(), c.lower()) for t, c in cols}


def _q(name: str) -> str:
    return '"' + name.lower().replace('"', '""') + '"'


def _sqlite_objects(src: sqlite3.Connection, kind: str) -> list[tuple[str, str]]:
    return src.execute("SELECT name, sql FROM sqlite_master WHERE type = ? AND name NOT LIKE 'sqlite_%' "
                       "ORDER BY rowid", (kind,)).fetchall()


def _create_table(dest, dialect: str, src: sqlite3.Connection, table: str, json_cols) -> int:
    info = src.execute(f"PRAGMA table_info({_q(table)})").fetchall()
    types = COLUMN_TYPES[dialect]
    cols = [(name, types["JSON"] if (table.lower(), name.lower()) in json_cols
             else types.get((decl or "").upper(), "TEXT")) for _, name, decl, *_ in info]
    dest.execute(f"CREATE TABLE {_q(table)} ({', '.join(f'{_q(c)} {t}' for c, t in cols)})")
    return len(cols)


def _copy_rows(dest, dialect: str, src: sqlite3.Connection, table: str, n: int) -> None:
    cur = src.execute(f"SELECT * FROM {_q(table)}")
    if dialect == "postgres":
        with dest.cursor().copy(f"COPY {_q(table)} FROM STDIN") as copy:
            for row in cur:
                copy.write_row(row)
    else:
        marks = ", ".join("?" * n)
        batch = cur.fetchall()
        if batch:
            dest.executemany(f"INSERT INTO {_q(table)} VALUES ({marks})", batch)


def copy_snapshot(sqlite_db: sqlite3.Connection | str, dest, dialect: str) -> list[str]:
    """Create every table (and view) of a snapshot in `dest` (a psycopg or
    duckdb connection) with engine types and copy the rows. Names become
    lower case. Returns the table names."""
    _check(dialect)
    if dialect == "sqlite":
        raise ValueError("a snapshot already is a SQLite database")
    src = sqlite3.connect(sqlite_db) if isinstance(sqlite_db, str) else sqlite_db
    prepare(dest, dialect)
    json_cols = _json_columns(src)
    tables = [name for name, _ in _sqlite_objects(src, "table")]
    for table in tables:
        n = _create_table(dest, dialect, src, table, json_cols)
        _copy_rows(dest, dialect, src, table, n)
    for name, sql in _sqlite_objects(src, "view"):
        select = sqlglot.parse_one(sql, read="sqlite").expression
        dest.execute(f"CREATE VIEW {_q(name)} AS {transpile(select.sql('sqlite'), dialect)}")
    _commit(dest)
    return tables


def _commit(conn) -> None:
    if getattr(conn, "autocommit", True) is False:
        conn.commit()


def run_reports(conn, dialect: str, reports: Iterable[tuple[str, str]]) -> None:
    """CREATE TABLE name AS (sql, transpiled), for each report in order, so a
    report may read the ones before it."""
    _check(dialect)
    prepare(conn, dialect)
    for name, sql in reports:
        conn.execute(f"CREATE TABLE {_q(name)} AS {transpile(sql, dialect)}")
    _commit(conn)


# ------------------------------------------------------------------ reading

_JSON_TYPE_CODES = {114, 3802}          # PostgreSQL json, jsonb
_FLOAT_DIGITS = 12


def _canonical_json(text: str) -> str:
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _number(v):
    """Numbers compare by value: integral ones as int, others as a float to
    12 significant digits (engines differ in the last bits of AVG and such)."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else _number(float(v))
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 2 ** 53:
            return int(v)
        return float(f"{v:.{_FLOAT_DIGITS}g}")
    return v


def _normalize(v, is_json: bool):
    if v is None:
        return None
    if is_json:
        return _canonical_json(v if isinstance(v, str) else json.dumps(v))
    if isinstance(v, str) and v[:1] in "{[":
        # SQLite has no JSON type: JSON objects and arrays arrive as text
        try:
            return _canonical_json(v)
        except ValueError:
            return v
    return _number(v)


def _json_flags(dialect: str, description) -> list[bool]:
    if dialect == "postgres":
        return [d.type_code in _JSON_TYPE_CODES for d in description]
    if dialect == "duckdb":
        return [str(d[1]).upper() == "JSON" for d in description]
    return [False] * len(description)


def rows(conn, dialect: str, sql: str) -> list[tuple[Any, ...]]:
    """Run `sql` (SQLite dialect) on conn and return its rows, normalized:
    JSON values (engine JSON columns, and SQLite text holding a JSON object or
    array) become canonical JSON text (sorted keys, no spaces); booleans
    become 0/1; numbers compare by value (see _number)."""
    _check(dialect)
    prepare(conn, dialect)
    if dialect == "postgres":
        cur = conn.cursor()
        _raw_json(cur)
        cur.execute(transpile(sql, dialect))
    else:
        cur = conn.execute(transpile(sql, dialect))
    flags = _json_flags(dialect, cur.description)
    return [tuple(_normalize(v, f) for v, f in zip(row, flags)) for row in cur.fetchall()]


def _raw_json(cur) -> None:
    """Read json/jsonb as their text: we canonicalize it ourselves."""
    from psycopg.types.string import TextLoader
    for name in ("json", "jsonb"):
        cur.adapters.register_loader(name, TextLoader)
