"""A consistent snapshot of a store's source tables, streamed into staging tables with COPY.

All datasets of a batch are read in ONE read-only REPEATABLE READ transaction, so they show the
source at a single point in time. Rows flow source COPY -> OS pipe -> merge COPY in binary format;
memory stays flat whatever the table size. The staging tables are the merge side's (merge/staging.py).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Sequence
from typing import BinaryIO

from psycopg2 import sql

from datasurface.db import PgConnection, first_line, idents
from datasurface.errors import SnapshotError
from datasurface.faults import killpoint
from datasurface.merge.layout import DatasetLayout
from datasurface.merge.staging import create_staging, staging_error
from datasurface.model import Column
from datasurface.pipe import PIPE_CHUNK, PipeError, copy_through_pipe

log = logging.getLogger(__name__)



def begin_snapshot(source: PgConnection) -> datetime.datetime:
    """Open the read-only REPEATABLE READ transaction every dataset of the batch is read in.

    Returns the snapshot time (docs/consumers.md: `snapshot_at`): the source server's clock at the first
    statement of the transaction, which is the one that takes the snapshot."""
    source.set_session(isolation_level="REPEATABLE READ", readonly=True, autocommit=False)
    with source.cursor() as cur:
        cur.execute("SELECT statement_timestamp()")
        at: datetime.datetime = cur.fetchone()[0]  # type: ignore[index]
    return at


def copy_dataset(source: PgConnection, merge: PgConnection, layout: DatasetLayout, source_schema: str) -> int:
    """Stream one source table into its (fresh) staging table; returns the number of rows."""
    started = time.monotonic()
    create_staging(merge, layout)
    cols = idents(layout.columns)
    out_sql = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)").format(
        select_list(layout.dataset.columns), sql.Identifier(source_schema, layout.dataset.table)).as_string(source)
    # FREEZE: the table was created in this transaction, so its rows are written frozen, hint bits set;
    # otherwise the diff's first read of them would dirty (and write back) every page of the snapshot
    in_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary, FREEZE)").format(
        layout.qualified(layout.staging), cols).as_string(merge)

    def produce(writer: BinaryIO) -> None:
        with source.cursor() as cur:
            cur.copy_expert(out_sql, writer, size=PIPE_CHUNK)

    try:
        rows = copy_through_pipe(source, produce, merge, in_sql, f"copy-{layout.table}")
    except PipeError as exc:
        failure = _source_error(layout, exc.cause) if exc.side == "source" else staging_error(layout, exc.cause)
        raise failure from exc.cause
    killpoint(f"ingest:{layout.dataset.name}:copied")
    log.info("snapshot %s: %s rows in %.1fs", layout.dataset.name, f"{rows:,}", time.monotonic() - started)
    return rows


def select_list(columns: Sequence[Column]) -> sql.Composable:
    """The source columns by their exact names, in the model's order. An enum column needs no cast into a
    text or varchar(n) one: its binary form is its label's text (a label too long for varchar(n) fails
    the merge side's COPY, it is never cut); a domain's binary form is its base type's."""
    return sql.SQL(", ").join(sql.Identifier(c.source_name) for c in columns)


def _source_error(layout: DatasetLayout, exc: BaseException) -> SnapshotError:
    return SnapshotError(f"reading source table {layout.dataset.table}: {first_line(exc)}")
