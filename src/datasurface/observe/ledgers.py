"""What `status` and the exporter read: per stream of a platform, its last committed batch, its open
batch and its merge runs, from `ds_batches`, `ds_run_totals` and `ds_runs`, in statements whose cost
follows the number of streams, not the length of the history.

Time is the merge database's clock (`statement_timestamp()`), so ages never depend on the reader's.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from psycopg2 import sql

from datasurface.db import PgConnection
from datasurface.merge.ledger import COMMITTED

StreamKey = tuple[str, str]  # (store, dataset or "" for a multi_dataset stream)

# The latest two batches per stream (an open batch is always a stream's latest), found with a loose
# index scan on the primary key (stream, batch_id): its cost follows the number of streams, not batches.
LATEST_BATCHES = """
WITH RECURSIVE streams AS (
    (SELECT stream FROM {batches} ORDER BY stream LIMIT 1)
    UNION ALL
    SELECT (SELECT b.stream FROM {batches} b WHERE b.stream > s.stream ORDER BY b.stream LIMIT 1)
      FROM streams s WHERE s.stream IS NOT NULL)
SELECT b.store, coalesce(b.dataset, ''), b.batch_id, b.status, b.started_at, b.finished_at, b.snapshot_at,
       b.rows_total, b.rows_inserted, b.rows_updated, b.rows_deleted
  FROM streams s CROSS JOIN LATERAL (
       SELECT * FROM {batches} x WHERE x.stream = s.stream AND (x.status = %s OR x.batch_id = (
              SELECT max(batch_id) FROM {batches} y WHERE y.stream = s.stream))
        ORDER BY x.batch_id DESC LIMIT 2) b
 WHERE s.stream IS NOT NULL
 ORDER BY 1, 2, b.batch_id DESC
"""

# Merge runs per stream (ds_run_totals, kept by the run history) and the last failure's row.
RUNS = """
SELECT t.store, t.dataset, t.ok, t.recovered, t.failed, t.failed_in_a_row,
       f.started_at, f.finished_at, f.error, f.batch_id
  FROM {totals} t LEFT JOIN {runs} f ON f.run_id = t.last_failed_run_id
 WHERE t.command = 'merge'
 ORDER BY 1, 2
"""


@dataclass
class BatchInfo:
    batch_id: int
    status: str
    started_at: datetime.datetime
    finished_at: datetime.datetime | None
    snapshot_at: datetime.datetime | None
    counts: tuple[int, int, int, int] | None  # total, inserted, updated, deleted

    @property
    def duration(self) -> float | None:
        return None if self.finished_at is None else (self.finished_at - self.started_at).total_seconds()


@dataclass
class Failure:
    started_at: datetime.datetime
    finished_at: datetime.datetime | None
    error: str | None
    batch_id: int | None


@dataclass
class StreamState:
    store: str
    dataset: str
    committed: BatchInfo | None = None
    open: BatchInfo | None = None
    runs: dict[str, int] = field(default_factory=lambda: {"ok": 0, "recovered": 0, "failed": 0})
    failures_in_a_row: int = 0
    last_failure: Failure | None = None

    @property
    def name(self) -> str:
        return self.store + (f".{self.dataset}" if self.dataset else "")


@dataclass
class PlatformState:
    schema: str
    now: datetime.datetime
    has_ledger: bool
    streams: dict[StreamKey, StreamState]

    def snapshot_age(self, stream: StreamState) -> float | None:
        """Seconds since the snapshot of the last committed batch (its start, for batches from before
        snapshot_at existed: an upper bound of the age)."""
        if stream.committed is None:
            return None
        return (self.now - (stream.committed.snapshot_at or stream.committed.started_at)).total_seconds()

    def open_age(self, stream: StreamState) -> float:
        return 0.0 if stream.open is None else max(0.0, (self.now - stream.open.started_at).total_seconds())


def _exists(conn: PgConnection, schema: str, table: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))", (schema, table))
        return cur.fetchone()[0] is not None  # type: ignore[index]


def read_platform(conn: PgConnection, schema: str) -> PlatformState:
    """Every stream of the platform schema (in the caller's transaction; read-only)."""
    with conn.cursor() as cur:
        # these statements take milliseconds: JIT compiling them would take a second or more
        cur.execute("SET LOCAL jit = off")
        cur.execute("SELECT statement_timestamp()")
        now = cur.fetchone()[0]  # type: ignore[index]
    streams: dict[StreamKey, StreamState] = {}

    def stream(store: str, dataset: str) -> StreamState:
        return streams.setdefault((store, dataset), StreamState(store, dataset))

    has_ledger = _exists(conn, schema, "ds_batches")
    if has_ledger:
        with conn.cursor() as cur:
            cur.execute(sql.SQL(LATEST_BATCHES).format(batches=sql.Identifier(schema, "ds_batches")), (COMMITTED,))
            rows: list[Any] = cur.fetchall()
        for store, dataset, batch_id, status, started, finished, snap, *counts in rows:
            info = BatchInfo(batch_id, status, started, finished, snap,
                             None if counts[0] is None else tuple(int(c) for c in counts))  # type: ignore[arg-type]
            state = stream(store, dataset)
            if status == COMMITTED:
                if state.committed is None:
                    state.committed = info
            elif state.open is None and state.committed is None:
                state.open = info
    if _exists(conn, schema, "ds_run_totals"):
        with conn.cursor() as cur:
            cur.execute(sql.SQL(RUNS).format(runs=sql.Identifier(schema, "ds_runs"),
                                             totals=sql.Identifier(schema, "ds_run_totals")))
            run_rows: list[Any] = cur.fetchall()
        for store, dataset, ok, recovered, failed, in_a_row, f_start, f_end, f_error, f_batch in run_rows:
            state = stream(store, dataset)
            state.runs = {"ok": int(ok), "recovered": int(recovered), "failed": int(failed)}
            state.failures_in_a_row = int(in_a_row)
            if f_start is not None:
                state.last_failure = Failure(f_start, f_end, f_error, f_batch)
    return PlatformState(schema, now, has_ledger, dict(sorted(streams.items())))

