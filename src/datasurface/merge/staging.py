"""Staging tables: where a batch's snapshot waits, on the merge side, between the source's read and the diff.

Staging tables are UNLOGGED, with no index and no ANALYZE: the diff reads each of them once, in one hash
join, and duplicate keys are found by the diff (`duplicate_keys`) instead of by a unique index build, which
cost a sort of the whole snapshot. Each source dialect copies into the table `create_staging` makes.
"""

from __future__ import annotations

import psycopg2
from psycopg2 import sql

from datasurface.db import PgConnection, first_line, idents
from datasurface.errors import SnapshotError
from datasurface.merge.layout import DatasetLayout, column_defs


def create_staging(merge: PgConnection, layout: DatasetLayout) -> None:
    """A fresh, empty staging table for the dataset (one left by an earlier attempt is dropped)."""
    drop_staging(merge, layout)
    with merge.cursor() as cur:
        cur.execute(
            sql.SQL("CREATE UNLOGGED TABLE {} ({})").format(
                layout.qualified(layout.staging), sql.SQL(", ").join(column_defs(layout))
            )
        )


def staging_error(layout: DatasetLayout, exc: BaseException, load_batch: int | None = None) -> SnapshotError:
    """The error for a snapshot the merge side's COPY refused (a NULL key, a value out of range; a repeated
    key, for a first load copied straight into the merge table as batch `load_batch`)."""
    if isinstance(exc, psycopg2.errors.NotNullViolation):
        column = getattr(exc.diag, "column_name", None) or "?"
        why = "a primary key column" if column in layout.key else "declared `nullable: false` in the model"
        return SnapshotError(f"snapshot of {layout.dataset.table} (dataset {layout.dataset.name}) has a NULL in column "
                             f"{column!r}, {why}")
    if isinstance(exc, psycopg2.errors.UniqueViolation) and load_batch is not None:
        detail = getattr(exc.diag, "message_detail", None) or first_line(exc)
        return SnapshotError(f"snapshot of {layout.dataset.table} (dataset {layout.dataset.name}) has duplicate "
                             f"primary keys: {_model_key(detail, layout, load_batch)}")
    return SnapshotError(f"{'staging' if load_batch is None else 'loading'} {layout.dataset.name}: {first_line(exc)}")


def _model_key(detail: str, layout: DatasetLayout, batch_id: int) -> str:
    """`Key (a, b)=(1, 2) already exists.` for a forensic primary key's `Key (a, b, ds_batch_in)=(1, 2, 7) …`:
    the repeated key of the model, without the version's batch (which every row of the load shares)."""
    names, sep, rest = detail.partition(")=(")
    values, close, tail = rest.rpartition(")")
    suffix = f", {batch_id}"
    if sep and close and names.endswith(", ds_batch_in") and values.endswith(suffix):
        return f"{names.removesuffix(', ds_batch_in')})=({values.removesuffix(suffix)}){tail}"
    return detail


def duplicate_keys(merge: PgConnection, layout: DatasetLayout) -> SnapshotError:
    """The error for a staged snapshot the diff found duplicate keys in, naming one of them."""
    with merge.cursor() as cur:
        cur.execute(sql.SQL("SELECT {} FROM {} GROUP BY {} HAVING count(*) > 1 LIMIT 1").format(
            idents(layout.key), layout.qualified(layout.staging), idents(layout.key)))
        row = cur.fetchone()
    detail = ("Key ({})=({}) is duplicated.".format(", ".join(layout.key), ", ".join(str(v) for v in row))
              if row is not None else "the staged row count does not add up")
    return SnapshotError(
        f"snapshot of {layout.dataset.table} (dataset {layout.dataset.name}) has duplicate primary keys: {detail}")


def staged_rows(merge: PgConnection, layout: DatasetLayout) -> int | None:
    """Rows in the staging table, or None when it is gone (e.g. unlogged data lost in a server crash)."""
    with merge.cursor() as cur:
        cur.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))", (layout.schema, layout.staging))
        if cur.fetchone()[0] is None:  # type: ignore[index]
            return None
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(layout.qualified(layout.staging)))
        return int(cur.fetchone()[0])  # type: ignore[index]


def drop_staging(merge: PgConnection, layout: DatasetLayout) -> None:
    with merge.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(layout.qualified(layout.staging)))
