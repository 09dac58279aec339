"""Checks a store's source tables against the model before anything is read or written."""

from __future__ import annotations

from datasurface.db import PgConnection
from datasurface.errors import DataSurfaceError
from datasurface.model import Dataset, Store
from datasurface.pgtypes import catalog_spelling, same_type


class SourceMismatchError(DataSurfaceError):
    """The source table does not match the model."""


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


def check_dataset(conn: PgConnection, store: Store, dataset: Dataset) -> None:
    schema = store.source.schema
    where = f"source table {schema}.{dataset.table} (store {store.name}, dataset {dataset.name})"
    cols = source_columns(conn, schema, dataset.table)
    if cols is None:
        raise SourceMismatchError(f"{where} does not exist in database {store.source.database!r}")
    problems = []
    for col in dataset.columns:
        actual = cols.get(col.name)
        if actual is None:
            problems.append(f"column {col.name!r} (model type {col.type}) is missing from the source")
        elif not same_type(col.type, actual):
            problems.append(
                f"column {col.name!r} is {actual} in the source but {col.type} "
                f"({catalog_spelling(col.type)}) in the model"
            )
    if problems:
        raise SourceMismatchError(f"{where}: {'; '.join(problems)}")


def check_store(conn: PgConnection, store: Store, datasets: tuple[Dataset, ...] | None = None) -> None:
    for dataset in datasets or store.datasets:
        check_dataset(conn, store, dataset)
