"""The source check of a PostgreSQL source: each table's `format_type()` spellings against the model, and no
row-level security that could hide rows from the job's role."""

from __future__ import annotations

from psycopg2 import sql

from datasurface.db import PgConnection
from datasurface.errors import DataSurfaceError
from datasurface.ingest.check import check_columns, missing_table, table_where
from datasurface.model import Column, Dataset, Store
from datasurface.pgtypes import catalog_spelling, same_type


def source_columns(conn: PgConnection, schema: str, table: str) -> dict[str, str] | None:
    """Column -> format_type of the source table or view; None when it does not exist (or is not visible)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))", (schema, table))
        if cur.fetchone()[0] is None:  # type: ignore[index]
            return None
        cur.execute(
            """SELECT a.attname, format_type(a.atttypid, a.atttypmod)
                 FROM pg_attribute a
                WHERE a.attrelid = to_regclass(format('%%I.%%I', %s::text, %s::text))
                  AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
            (schema, table),
        )
        return {name: typ for name, typ in cur.fetchall()}


class RowSecurityError(DataSurfaceError):
    """Row-level security applies to the source role: a read would return a subset without any error."""


def check_row_security(conn: PgConnection, schema: str, table: str, where: str) -> None:
    """Refuse a table whose row-level security applies to the job's role: its policies may hide rows, and a
    merge would then delete them from the merge tables. It applies when it is enabled and the role neither
    bypasses it (superuser or BYPASSRLS) nor owns the table without FORCE. A policy cannot prove it shows
    every row, so the policies themselves are not looked at."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT c.relrowsecurity
                      AND NOT (r.rolsuper OR r.rolbypassrls)
                      AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE')),
                      pg_has_role(c.relowner, 'USAGE'), current_user
                 FROM pg_class c, pg_roles r
                WHERE c.oid = to_regclass(format('%%I.%%I', %s::text, %s::text)) AND r.rolname = current_user""",
            (schema, table))
        row = cur.fetchone()
    if row is None or not row[0]:
        return
    _, owns, role = row
    table_sql = sql.Identifier(schema, table).as_string(conn)
    role_sql = sql.Identifier(role).as_string(conn)
    # the owner is exempt unless FORCE is set: for the owner, NO FORCE is enough
    off = f"ALTER TABLE {table_sql} {'NO FORCE' if owns else 'DISABLE'} ROW LEVEL SECURITY"
    raise RowSecurityError(
        f"{where}: row-level security applies to role {role} and could hide rows, which a merge would then "
        f"delete; run `ALTER ROLE {role_sql} BYPASSRLS` or `{off}`")


def check_dataset(conn: PgConnection, store: Store, dataset: Dataset) -> None:
    schema = store.source.schema
    where = table_where(store, schema, dataset)
    cols = source_columns(conn, schema, dataset.table)
    if cols is None:
        raise missing_table(where, store.source.database)
    check_row_security(conn, schema, dataset.table, where)
    check_columns(where, dataset, cols, _mismatch)


def _mismatch(col: Column, actual: str) -> str | None:
    if same_type(col.type, actual):
        return None
    return f"column {col.name!r} is {actual} in the source but {col.type} ({catalog_spelling(col.type)}) in the model"


def check_store(conn: PgConnection, store: Store, datasets: tuple[Dataset, ...] | None = None) -> None:
    for dataset in datasets or store.datasets:
        check_dataset(conn, store, dataset)
