"""A consistent snapshot of a store's source tables, streamed into staging tables with COPY.

All datasets of a batch are read in ONE read-only REPEATABLE READ transaction, so they show the
source at a single point in time. Rows flow source COPY -> OS pipe -> merge COPY in binary format;
memory stays flat whatever the table size. The staging tables are the merge side's (merge/staging.py).
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from collections.abc import Sequence

import psycopg2
from psycopg2 import sql

from datasurface import interrupts
from datasurface.db import PgConnection, first_line, idents
from datasurface.errors import SnapshotError
from datasurface.faults import killpoint
from datasurface.merge.layout import DatasetLayout
from datasurface.merge.staging import create_staging, staging_error
from datasurface.model import Column

log = logging.getLogger(__name__)

PIPE_CHUNK = 1 << 16


def begin_snapshot(source: PgConnection) -> datetime.datetime:
    """Open the read-only REPEATABLE READ transaction every dataset of the batch is read in.

    Returns the snapshot time (docs/consumers.md: `snapshot_at`): the source server's clock at the first
    statement of the transaction, which is the one that takes the snapshot."""
    source.set_session(isolation_level="REPEATABLE READ", readonly=True, autocommit=False)
    with source.cursor() as cur:
        cur.execute("SELECT statement_timestamp()")
        at: datetime.datetime = cur.fetchone()[0]  # type: ignore[index]
    return at


def copy_dataset(source: PgConnection, merge: PgConnection, lay: DatasetLayout, source_schema: str) -> int:
    """Stream one source table into its (fresh) staging table; returns the number of rows."""
    started = time.monotonic()
    create_staging(merge, lay)
    cols = idents(lay.columns)
    out_sql = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)").format(
        select_list(lay.dataset.columns), sql.Identifier(source_schema, lay.dataset.table)).as_string(source)
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


def select_list(columns: Sequence[Column]) -> sql.Composable:
    """The source columns by their exact names, in the model's order. An enum column needs no cast into a
    text or varchar(n) one: its binary form is its label's text (a label too long for varchar(n) fails
    the merge side's COPY, it is never cut); a domain's binary form is its base type's."""
    return sql.SQL(", ").join(sql.Identifier(c.source_name) for c in columns)


def _source_error(lay: DatasetLayout, exc: BaseException) -> SnapshotError:
    return SnapshotError(f"reading source table {lay.dataset.table}: {first_line(exc)}")
