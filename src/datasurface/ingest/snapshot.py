"""A consistent snapshot of a store's source tables, streamed into staging tables with COPY.

All datasets of a batch are read in ONE read-only REPEATABLE READ transaction, so they show the
source at a single point in time. Rows flow source COPY -> OS pipe -> merge COPY in binary format;
memory stays flat whatever the table size. Staging tables are UNLOGGED, with no index and no
ANALYZE: the diff reads each of them once, in one hash join, and duplicate keys are found by the diff
(`duplicate_keys`) instead of by a unique index build, which cost a sort of the whole snapshot.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time

import psycopg2
from psycopg2 import sql

from datasurface import interrupts
from datasurface.db import PgConnection, first_line, idents
from datasurface.errors import DataSurfaceError
from datasurface.faults import killpoint
from datasurface.merge.layout import DatasetLayout, column_defs

log = logging.getLogger(__name__)

PIPE_CHUNK = 1 << 16


class SnapshotError(DataSurfaceError):
    """The snapshot could not be read or violates the model (duplicate or NULL keys)."""


def begin_snapshot(source: PgConnection) -> datetime.datetime:
    """Open the read-only REPEATABLE READ transaction every dataset of the batch is read in.

    Returns the snapshot time (contract §5 `snapshot_at`): the source server's clock at the first
    statement of the transaction, which is the one that takes the snapshot."""
    source.set_session(isolation_level="REPEATABLE READ", readonly=True, autocommit=False)
    with source.cursor() as cur:
        cur.execute("SELECT statement_timestamp()")
        at: datetime.datetime = cur.fetchone()[0]  # type: ignore[index]
    return at


def create_staging(merge: PgConnection, lay: DatasetLayout) -> None:
    with merge.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(lay.qualified(lay.staging)))
        cur.execute(
            sql.SQL("CREATE UNLOGGED TABLE {} ({})").format(
                lay.qualified(lay.staging), sql.SQL(", ").join(column_defs(lay))
            )
        )


def copy_dataset(source: PgConnection, merge: PgConnection, lay: DatasetLayout, source_schema: str) -> int:
    """Stream one source table into its (fresh) staging table; returns the number of rows."""
    started = time.monotonic()
    create_staging(merge, lay)
    cols = idents(lay.columns)
    out_sql = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)").format(
        cols, sql.Identifier(source_schema, lay.dataset.table)).as_string(source)
    # FREEZE: the table was created in this transaction, so its rows are written frozen, hint bits set;
    # otherwise the diff's first read of them would dirty (and write back) every page of the snapshot
    in_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary, FREEZE)").format(
        lay.qualified(lay.staging), cols).as_string(merge)

    read_fd, write_fd = os.pipe()
    producer_error: list[BaseException] = []

    def produce() -> None:
        try:
            with source.cursor() as cur, os.fdopen(write_fd, "wb", buffering=PIPE_CHUNK) as writer:
                cur.copy_expert(out_sql, writer, size=PIPE_CHUNK)
        except BaseException as exc:  # reported by the consuming thread
            producer_error.append(exc)

    thread = threading.Thread(target=produce, name=f"copy-{lay.table}", daemon=True)
    thread.start()
    consumer_error: psycopg2.Error | None = None
    reader = os.fdopen(read_fd, "rb", buffering=PIPE_CHUNK)
    interrupted_before = interrupts.count()
    try:
        with merge.cursor() as cur:
            cur.copy_expert(in_sql, reader, size=PIPE_CHUNK)
            rows = cur.rowcount
    except psycopg2.Error as exc:
        consumer_error = exc
        source.cancel()  # stop the source from sending more
    finally:
        reader.close()  # unblocks a producer waiting on a full pipe
        thread.join()
    if consumer_error is not None:
        interrupts.raise_if_interrupted(interrupted_before)  # Ctrl-C inside a read of the pipe
    # a producer error we caused (cancel, closed pipe) is not the cause: report the consumer's
    if producer_error and not (
        consumer_error is not None
        and isinstance(producer_error[0], psycopg2.extensions.QueryCanceledError | OSError)
    ):
        raise _source_error(lay, producer_error[0]) from producer_error[0]
    if consumer_error is not None:
        raise staging_error(lay, consumer_error) from consumer_error
    killpoint(f"ingest:{lay.dataset.name}:copied")
    log.info("snapshot %s: %s rows in %.1fs", lay.dataset.name, f"{rows:,}", time.monotonic() - started)
    return rows


def staging_error(lay: DatasetLayout, exc: BaseException, load_batch: int | None = None) -> SnapshotError:
    """The error for a snapshot the merge side's COPY refused (a NULL key, a value out of range; a repeated
    key, for a first load copied straight into the merge table as batch `load_batch`)."""
    if isinstance(exc, psycopg2.errors.NotNullViolation):
        column = getattr(exc.diag, "column_name", None) or "?"
        why = "a primary key column" if column in lay.key else "declared `nullable: false` in the model"
        return SnapshotError(f"snapshot of {lay.dataset.table} (dataset {lay.dataset.name}) has a NULL in column "
                             f"{column!r}, {why}")
    if isinstance(exc, psycopg2.errors.UniqueViolation) and load_batch is not None:
        detail = getattr(exc.diag, "message_detail", None) or first_line(exc)
        return SnapshotError(f"snapshot of {lay.dataset.table} (dataset {lay.dataset.name}) has duplicate "
                             f"primary keys: {_model_key(detail, lay, load_batch)}")
    return SnapshotError(f"{'staging' if load_batch is None else 'loading'} {lay.dataset.name}: {first_line(exc)}")


def _model_key(detail: str, lay: DatasetLayout, batch_id: int) -> str:
    """`Key (a, b)=(1, 2) already exists.` for a forensic primary key's `Key (a, b, ds_batch_in)=(1, 2, 7) …`:
    the repeated key of the model, without the version's batch (which every row of the load shares)."""
    names, sep, rest = detail.partition(")=(")
    values, close, tail = rest.rpartition(")")
    suffix = f", {batch_id}"
    if sep and close and names.endswith(", ds_batch_in") and values.endswith(suffix):
        return f"{names.removesuffix(', ds_batch_in')})=({values.removesuffix(suffix)}){tail}"
    return detail


def _source_error(lay: DatasetLayout, exc: BaseException) -> SnapshotError:
    return SnapshotError(f"reading source table {lay.dataset.table}: {first_line(exc)}")


def duplicate_keys(merge: PgConnection, lay: DatasetLayout) -> SnapshotError:
    """The error for a staged snapshot the diff found duplicate keys in, naming one of them."""
    with merge.cursor() as cur:
        cur.execute(sql.SQL("SELECT {} FROM {} GROUP BY {} HAVING count(*) > 1 LIMIT 1").format(
            idents(lay.key), lay.qualified(lay.staging), idents(lay.key)))
        row = cur.fetchone()
    detail = ("Key ({})=({}) is duplicated.".format(", ".join(lay.key), ", ".join(str(v) for v in row))
              if row is not None else "the staged row count does not add up")
    return SnapshotError(
        f"snapshot of {lay.dataset.table} (dataset {lay.dataset.name}) has duplicate primary keys: {detail}")


def staged_rows(merge: PgConnection, lay: DatasetLayout) -> int | None:
    """Rows in the staging table, or None when it is gone (e.g. unlogged data lost in a server crash)."""
    with merge.cursor() as cur:
        cur.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))", (lay.schema, lay.staging))
        if cur.fetchone()[0] is None:  # type: ignore[index]
            return None
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(lay.qualified(lay.staging)))
        return int(cur.fetchone()[0])  # type: ignore[index]


def drop_staging(merge: PgConnection, lay: DatasetLayout) -> None:
    with merge.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(lay.qualified(lay.staging)))
