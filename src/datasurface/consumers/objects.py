"""Views and functions the job creates for consumers, marked as the job's own.

Every such object carries the comment `datasurface-job <digest>`: the digest of its definition, so it is
replaced only when its definition changes (no needless DDL, which would wait for every reader), and the
mark that tells the job's objects from anyone else's: the job only ever drops objects with the mark.

Functions are SQL-standard bodies (`BEGIN ATOMIC`): the body is parsed and bound to its objects when it
is created, like a view, so the caller's search_path cannot change what it reads, and the planner inlines
it into the calling query, so a filter on the function's result reaches the table's indexes. (A `SET
search_path` clause would stop that inlining: the whole as-of result would be computed for every call.)
They are SECURITY INVOKER: they read only relations the caller may read itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

from psycopg2 import sql

from datasurface.db import PgConnection
from datasurface.merge import layout

MARK = "datasurface-job"


def digest(conn: PgConnection, *parts: sql.Composable | str) -> str:
    text = "\n".join(p if isinstance(p, str) else p.as_string(conn) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def mark(digest_: str) -> str:
    return f"{MARK} {digest_}"


class Owned(NamedTuple):
    """An object in a schema with the job's mark."""

    kind: str  # "view" | "function"
    name: str
    args: str  # a function's identity arguments ("" for a view)
    comment: str

    def ident(self, schema: str) -> sql.Composable:
        if self.kind == "view":
            return sql.Identifier(schema, self.name)
        return sql.SQL("{}({})").format(sql.Identifier(schema, self.name), sql.SQL(self.args))


def owned(conn: PgConnection, schema: str) -> dict[tuple[str, str], Owned]:
    """The job's views and functions in `schema`, by (kind, name)."""
    with conn.cursor() as cur:
        cur.execute("""
            SELECT 'view', c.relname, '', d.description
              FROM pg_catalog.pg_class c
              JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              JOIN pg_catalog.pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_catalog.pg_class'::regclass
                   AND d.objsubid = 0
             WHERE n.nspname = %(s)s AND c.relkind = 'v' AND d.description LIKE %(m)s
            UNION ALL
            SELECT 'function', p.proname, pg_catalog.oidvectortypes(p.proargtypes), d.description
              FROM pg_catalog.pg_proc p
              JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
              JOIN pg_catalog.pg_description d ON d.objoid = p.oid AND d.classoid = 'pg_catalog.pg_proc'::regclass
                   AND d.objsubid = 0
             WHERE n.nspname = %(s)s AND d.description LIKE %(m)s""", {"s": schema, "m": MARK + " %"})
        return {(k, n): Owned(k, n, a, c) for k, n, a, c in cur.fetchall()}


def comment_of(conn: PgConnection, kind: str, ident: sql.Composable) -> str | None:
    """The comment on a view (kind "view") or a function (kind "function", ident with its arguments)."""
    cast = "regclass" if kind == "view" else "regprocedure"
    catalog = "pg_class" if kind == "view" else "pg_proc"
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT pg_catalog.obj_description(pg_catalog.to_{}(%s)::pg_catalog.oid, {})").format(
            sql.SQL(cast), sql.Literal(catalog)), (ident.as_string(conn),))
        row = cur.fetchone()
    return None if row is None else row[0]


def ensure_view(conn: PgConnection, schema: str, view: str, columns: Sequence[tuple[str, sql.Composable]],
                rest: sql.Composable, *, barrier: bool = False) -> bool:
    """Create or evolve (layout.ensure_view: in place, never dropped) a view of the job's, marked; True if
    changed. `barrier`: a security_barrier view (a reader's own functions in a WHERE clause are applied only
    to the rows the view returns, never to the rows it filters out)."""
    d = digest(conn, rest, *(f"{n}={e.as_string(conn)}" for n, e in columns), f"barrier={barrier}")
    ident = sql.Identifier(schema, view)
    if comment_of(conn, "view", ident) == mark(d):
        return False
    layout.ensure_view(conn, schema, view, columns, rest, replace=True)
    with conn.cursor() as cur:
        if barrier:  # CREATE OR REPLACE VIEW resets a view's options: set again after every replace
            cur.execute(sql.SQL("ALTER VIEW {} SET (security_barrier = true)").format(ident))
        cur.execute(sql.SQL("COMMENT ON VIEW {} IS {}").format(ident, sql.Literal(mark(d))))
    return True


def ensure_function(conn: PgConnection, schema: str, name: str, arg: tuple[str, str], returns: sql.Composable,
                    body: sql.Composable, *, public: bool = False) -> bool:
    """`CREATE OR REPLACE FUNCTION schema.name(arg) RETURNS SETOF <returns>` with an SQL-standard body
    (see the module's notes), marked. True if changed. Unless `public`, EXECUTE is revoked from PUBLIC
    (PostgreSQL's default grants it); `public` keeps that default where it gives nothing away: a caller
    needs the rights on the relations the body reads anyway.

    `returns` is a view's row type: a column added to the view (in place) is added to the function's
    result by replacing its body, which keeps the function, its grants and what was built on it."""
    arg_name, arg_type = arg
    signature = sql.SQL("{}({} {})").format(sql.Identifier(schema, name), sql.Identifier(arg_name), sql.SQL(arg_type))
    ddl = sql.SQL("CREATE OR REPLACE FUNCTION {} RETURNS SETOF {} LANGUAGE sql STABLE PARALLEL SAFE "
                  "SECURITY INVOKER BEGIN ATOMIC {}; END").format(signature, returns, body)
    d = digest(conn, ddl)
    ident = sql.SQL("{}({})").format(sql.Identifier(schema, name), sql.SQL(arg_type))
    if comment_of(conn, "function", ident) == mark(d):
        return False
    with conn.cursor() as cur:
        cur.execute(ddl)
        if not public:
            cur.execute(sql.SQL("REVOKE ALL ON FUNCTION {} FROM PUBLIC").format(ident))
        cur.execute(sql.SQL("COMMENT ON FUNCTION {} IS {}").format(ident, sql.Literal(mark(d))))
    return True


def view_columns(conn: PgConnection, schema: str, view: str) -> list[str]:
    """A view's columns in their order (which, evolved in place, may differ from the model's)."""
    return list(layout.table_columns(conn, schema, view) or ())
