"""`reset-batch`: discard a stream's open batch (and its staging tables), never a committed one."""

from __future__ import annotations

from psycopg2 import sql

from datasurface.db import Endpoint
from datasurface.engine import heartbeat
from datasurface.errors import DataSurfaceError
from datasurface.merge import layout
from datasurface.merge.ledger import COMMITTED, BatchLedger, Stream
from datasurface.merge.locks import StreamLock
from datasurface.sessions import SessionLimits, connection, new_run_id


def run_reset_batch(*, platform: str, store: str, dataset: str | None, merge: Endpoint, merge_credential: str,
                    batch_id: int | None = None, limits: SessionLimits | None = None) -> None:
    limits = limits or SessionLimits()
    schema = layout.platform_schema(platform)
    stream = Stream(store, dataset)
    run_id = new_run_id()
    with heartbeat(merge, merge_credential, run_id, limits), \
            connection(merge, merge_credential, "merge", run_id, limits) as conn:
        ledger = BatchLedger(conn, schema)
        if not ledger.exists():
            print(f"{schema}: no batches yet; nothing to reset")
            return
        check_stream_form(ledger, stream, platform)
        lock = StreamLock(conn, schema, stream, limits)
        lock.acquire()
        try:
            batch = ledger.get(stream, batch_id) if batch_id is not None else ledger.latest(stream)
            if batch_id is not None and batch is None:
                raise DataSurfaceError(f"{stream.describe()} has no batch {batch_id}")
            if batch is None or (batch_id is None and batch.status == COMMITTED):
                print(f"{stream.describe()}: no open batch; nothing to reset")
                return
            ledger.discard(batch)  # refuses a committed batch
            for name in batch.staging_tables:
                with conn.cursor() as cur:
                    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, name)))
            conn.commit()
            print(f"{stream.describe()}: discarded open batch {batch.batch_id} ({batch.status})")
        finally:
            conn.rollback()
            lock.release()


def check_stream_form(ledger: BatchLedger, stream: Stream, platform: str) -> None:
    """A multi_dataset store has one stream (no --dataset), a single_dataset store one per dataset: the wrong
    form would find nothing to reset while a batch stays open."""
    shapes = ledger.stream_shapes(stream.store)
    base = f"datasurface-job reset-batch --platform {platform} --store {stream.store}"
    if stream.dataset is not None and shapes == {None}:
        raise DataSurfaceError(f"store {stream.store} is ingested as one multi_dataset stream on platform "
                               f"{platform}: its datasets have no batches of their own; run `{base}` (no --dataset)")
    if stream.dataset is None and shapes and None not in shapes:
        hint = ", ".join(sorted(str(d) for d in shapes))
        raise DataSurfaceError(f"store {stream.store} is single_dataset on platform {platform}: each dataset is "
                               f"its own stream ({hint}); run `{base} --dataset <dataset>`")
