"""The source check of a PostgreSQL source: each table's `format_type()` spellings against the model, and no
row-level security that could hide rows from the job's role."""

from __future__ import annotations

from typing import NamedTuple

from psycopg2 import sql

from datasurface.db import PgConnection
from datasurface.errors import DataSurfaceError
from datasurface.ingest.check import check_columns, missing_table, table_where
from datasurface.model import Column, Dataset, Store
from datasurface.pgtypes import catalog_spelling, same_type


class SourceType(NamedTuple):
    spelling: str  # format_type() of the column
    kind: str  # pg_type.typtype: b(ase), e(num), d(omain), ...
    base: str | None  # a domain's base type, spelled by format_type()


def source_columns(conn: PgConnection, schema: str, table: str) -> dict[str, SourceType] | None:
    """Column -> type of the source table, partitioned table, view or materialized view; None when it does
    not exist (or is not visible)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))", (schema, table))
        if cur.fetchone()[0] is None:  # type: ignore[index]
            return None
        cur.execute(
            """SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typtype::text,
                      CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                WHERE a.attrelid = to_regclass(format('%%I.%%I', %s::text, %s::text))
                  AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
            (schema, table),
        )
        return {name: SourceType(typ, kind, base) for name, typ, kind, base in cur.fetchall()}


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


def _mismatch(col: Column, actual: SourceType) -> str | None:
    if same_type(col.type, actual.spelling):
        return None
    # an enum's labels are text (a varchar(n) too short for one is refused by the merge side's COPY);
    # a domain holds values of its base type (its constraints only narrow them)
    if actual.kind == "e" and (col.type == "text" or col.type.startswith("varchar(")):
        return None
    if actual.kind == "d" and actual.base is not None and same_type(col.type, actual.base):
        return None
    shown = actual.spelling if actual.base is None else f"{actual.spelling} (a domain over {actual.base})"
    return f"column {col.name!r} is {shown} in the source but {col.type} ({catalog_spelling(col.type)}) in the model"


def check_store(conn: PgConnection, store: Store, datasets: tuple[Dataset, ...] | None = None) -> None:
    for dataset in datasets or store.datasets:
        check_dataset(conn, store, dataset)
