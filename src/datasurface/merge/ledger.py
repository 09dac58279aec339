"""The batch ledger (docs/concepts.md): `ds_batches` and `ds_batch_datasets`, and the stream lock.

A stream is a store (multi_dataset) or one dataset of a store (single_dataset). A batch moves
`ingesting` -> `staged` -> `committed`; each step is one transaction, so a run killed at any moment
leaves the stream in one of these states and the next run carries on from there. Batch ids are
assigned when a batch opens and a discarded open batch gives its id back: committed ids have no gaps.
The lock that keeps two runs off one stream is in locks.py.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from typing import Any, NamedTuple

from psycopg2 import sql

from datasurface.db import PgConnection
from datasurface.errors import DataSurfaceError
from datasurface.merge.layout import Mode

INGESTING, STAGED, COMMITTED = "ingesting", "staged", "committed"


class Stream(NamedTuple):
    store: str
    dataset: str | None  # None for a multi_dataset store

    @property
    def key(self) -> str:
        return self.store if self.dataset is None else f"{self.store}.{self.dataset}"

    def describe(self) -> str:
        return f"store {self.store}" + ("" if self.dataset is None else f" dataset {self.dataset}")


class Batch(NamedTuple):
    stream: Stream
    batch_id: int
    status: str
    mode: str
    fingerprint: str
    staged_rows: dict[str, int]
    staging_tables: tuple[str, ...] = ()
    source_lsn: str | None = None  # a change batch: every source commit up to this LSN (a snapshot batch: None)
    slot_lsn: str | None = None  # change capture: where the slot's next read starts once this batch committed


class Counts(NamedTuple):
    total: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0

    @staticmethod
    def of_all(counts: Iterable[Counts]) -> Counts:
        """The sums, field by field (a tuple's `+` concatenates); none: all zero."""
        return Counts(*(sum(column) for column in zip(*counts, strict=True)))


class BatchLedger:
    """The ledger tables of one platform schema."""

    def __init__(self, conn: PgConnection, schema: str):
        self.conn = conn
        self.schema = schema
        self._has_lsn = False

    def _lsn_columns(self) -> sql.Composable:
        """The batch's LSNs as text; NULLs from a ledger older than change data capture, until the batch that
        opens next adds the columns (`ensure`): a merge reads the ledger before it may change anything."""
        if not self._has_lsn:  # asked again until they exist: another BatchLedger's `ensure` may add them
            with self.conn.cursor() as cur:
                cur.execute("""SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute
                                               WHERE attrelid = to_regclass(format('%%I.ds_batches', %s::text))
                                                 AND attname = 'slot_lsn' AND NOT attisdropped)""", (self.schema,))
                self._has_lsn = bool(cur.fetchone()[0])  # type: ignore[index]
        return sql.SQL("source_lsn::text, slot_lsn::text" if self._has_lsn else "NULL::text, NULL::text")

    def _t(self, name: str) -> sql.Composable:
        return sql.Identifier(self.schema, name)

    def ensure(self) -> None:
        """Create the ledger tables where missing (in the caller's transaction). What is there is read first, in
        one statement: nothing is written (nor locked) when the ledger is complete."""
        with self.conn.cursor() as cur:
            cur.execute("""SELECT to_regclass(format('%%I.ds_batches', %s::text)) IS NOT NULL,
                                  to_regclass(format('%%I.ds_batch_datasets', %s::text)) IS NOT NULL,
                                  EXISTS (SELECT FROM pg_catalog.pg_attribute
                                           WHERE attrelid = to_regclass(format('%%I.ds_batches', %s::text))
                                             AND attname = 'snapshot_at' AND NOT attisdropped),
                                  EXISTS (SELECT FROM pg_catalog.pg_attribute
                                           WHERE attrelid = to_regclass(format('%%I.ds_batches', %s::text))
                                             AND attname = 'slot_lsn' AND NOT attisdropped)""",
                        (self.schema,) * 4)
            has_batches, has_datasets, has_snapshot_at, has_lsn = cur.fetchone()  # type: ignore[misc]
            if not has_batches:
                self._create_batches(cur)
            else:  # a ledger from an earlier version: its earlier batches keep the new columns NULL
                if not has_snapshot_at:
                    cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN snapshot_at timestamptz").format(
                        self._t("ds_batches")))
                if not has_lsn:
                    cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS source_lsn pg_lsn, "
                                        "ADD COLUMN IF NOT EXISTS slot_lsn pg_lsn").format(self._t("ds_batches")))
            self._has_lsn = True
            if not has_datasets:
                self._create_batch_datasets(cur)

    def _create_batches(self, cur: Any) -> None:
        cur.execute(sql.SQL("""
                CREATE TABLE IF NOT EXISTS {} (
                    stream text NOT NULL,
                    store text NOT NULL,
                    dataset text,
                    batch_id integer NOT NULL CHECK (batch_id > 0),
                    status text NOT NULL,
                    mode text NOT NULL,
                    model_fingerprint text NOT NULL,
                    staged_rows jsonb,
                    staging_tables text[],
                    started_at timestamptz NOT NULL DEFAULT now(),
                    finished_at timestamptz,
                    rows_total bigint,
                    rows_inserted bigint,
                    rows_updated bigint,
                    rows_deleted bigint,
                    snapshot_at timestamptz,
                    source_lsn pg_lsn,
                    slot_lsn pg_lsn,
                    PRIMARY KEY (stream, batch_id))""").format(self._t("ds_batches")))

    def _create_batch_datasets(self, cur: Any) -> None:
        cur.execute(sql.SQL("""
                CREATE TABLE IF NOT EXISTS {} (
                    store text NOT NULL,
                    batch_id integer NOT NULL,
                    dataset text NOT NULL,
                    rows_total bigint NOT NULL,
                    rows_inserted bigint NOT NULL,
                    rows_updated bigint NOT NULL,
                    rows_deleted bigint NOT NULL,
                    PRIMARY KEY (store, dataset, batch_id))""").format(self._t("ds_batch_datasets")))

    def exists(self) -> bool:
        with self.conn.cursor() as cur:
            cur.execute("SELECT to_regclass(format('%%I.ds_batches', %s::text))", (self.schema,))
            return cur.fetchone()[0] is not None  # type: ignore[index]

    def latest(self, stream: Stream) -> Batch | None:
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL("""SELECT batch_id, status, mode, model_fingerprint, staged_rows, staging_tables, {}
                             FROM {}
                            WHERE stream = %s ORDER BY batch_id DESC LIMIT 1""").format(
                    self._lsn_columns(), self._t("ds_batches")),
                (stream.key,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        return _batch(stream, row)

    def open_batch(self, stream: Stream, mode: Mode, fingerprint: str, staging_tables: list[str]) -> Batch:
        last = self.latest(stream)
        batch_id = 1 if last is None else last.batch_id + 1
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL("""INSERT INTO {} (stream, store, dataset, batch_id, status, mode, model_fingerprint,
                                          staging_tables)
                           VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""").format(self._t("ds_batches")),
                (stream.key, stream.store, stream.dataset, batch_id, INGESTING, mode, fingerprint, staging_tables),
            )
        return Batch(stream, batch_id, INGESTING, mode, fingerprint, {}, tuple(staging_tables))

    def mark_staged(self, batch: Batch, staged_rows: dict[str, int], snapshot_at: datetime.datetime,
                    source_lsn: str | None = None, slot_lsn: str | None = None) -> Batch:
        """The staged snapshot or changes, with the source's clock when they were fixed (kept when the batch is
        recovered) and, for change capture, the LSNs the batch reaches."""
        self._set(batch, "status = %s, staged_rows = %s, snapshot_at = %s, source_lsn = %s, slot_lsn = %s",
                  (STAGED, json.dumps(staged_rows), snapshot_at, source_lsn, slot_lsn))
        return batch._replace(status=STAGED, staged_rows=staged_rows, source_lsn=source_lsn, slot_lsn=slot_lsn)

    def last_committed(self, stream: Stream) -> Batch | None:
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL("""SELECT batch_id, status, mode, model_fingerprint, staged_rows, staging_tables, {}
                             FROM {}
                            WHERE stream = %s AND status = %s ORDER BY batch_id DESC LIMIT 1""").format(
                    self._lsn_columns(), self._t("ds_batches")), (stream.key, COMMITTED))
            row = cur.fetchone()
        return None if row is None else _batch(stream, row)

    def commit(self, batch: Batch, per_dataset: dict[str, Counts]) -> Counts:
        total = Counts.of_all(per_dataset.values())
        with self.conn.cursor() as cur:
            for dataset, c in per_dataset.items():
                cur.execute(
                    sql.SQL("""INSERT INTO {} (store, batch_id, dataset, rows_total, rows_inserted,
                               rows_updated, rows_deleted) VALUES (%s, %s, %s, %s, %s, %s, %s)""").format(
                        self._t("ds_batch_datasets")),
                    (batch.stream.store, batch.batch_id, dataset, c.total, c.inserted, c.updated, c.deleted),
                )
        self._set(
            batch,
            "status = %s, finished_at = clock_timestamp(), rows_total = %s, rows_inserted = %s, "
            "rows_updated = %s, rows_deleted = %s, staged_rows = NULL, staging_tables = NULL",
            (COMMITTED, total.total, total.inserted, total.updated, total.deleted),
        )
        return total

    def stream_shapes(self, store: str) -> set[str | None]:
        """The datasets of the store's streams on this platform: {None} for a multi_dataset store."""
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT DISTINCT dataset FROM {} WHERE store = %s").format(
                self._t("ds_batches")), (store,))
            return {r[0] for r in cur.fetchall()}

    def last_total(self, store: str, dataset: str) -> int:
        """Rows of the dataset's last committed snapshot: the merge table's current row count."""
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL("""SELECT rows_total FROM {} WHERE store = %s AND dataset = %s
                            ORDER BY batch_id DESC LIMIT 1""").format(self._t("ds_batch_datasets")),
                (store, dataset),
            )
            row = cur.fetchone()
        return 0 if row is None else int(row[0])

    def discard(self, batch: Batch) -> None:
        if batch.status == COMMITTED:
            raise DataSurfaceError(
                f"batch {batch.batch_id} of {batch.stream.describe()} is committed: committed batches are "
                f"never discarded (they are part of the forensic history)"
            )
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL("DELETE FROM {} WHERE stream = %s AND batch_id = %s AND status <> %s").format(
                    self._t("ds_batches")),
                (batch.stream.key, batch.batch_id, COMMITTED),
            )

    def get(self, stream: Stream, batch_id: int) -> Batch | None:
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL("""SELECT batch_id, status, mode, model_fingerprint, staged_rows, staging_tables, {}
                             FROM {}
                            WHERE stream = %s AND batch_id = %s""").format(
                    self._lsn_columns(), self._t("ds_batches")),
                (stream.key, batch_id),
            )
            row = cur.fetchone()
        return None if row is None else _batch(stream, row)

    def _set(self, batch: Batch, assignments: str, params: tuple[Any, ...]) -> None:
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL("UPDATE {} SET {} WHERE stream = %s AND batch_id = %s").format(
                    self._t("ds_batches"), sql.SQL(assignments)),
                (*params, batch.stream.key, batch.batch_id),
            )
            if cur.rowcount != 1:
                raise DataSurfaceError(f"batch {batch.batch_id} of {batch.stream.describe()} vanished")

    def recent(self, store: str | None, limit: int) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL("""SELECT store, dataset, batch_id, status, started_at, finished_at, rows_total,
                                  rows_inserted, rows_updated, rows_deleted FROM {}
                            WHERE %s::text IS NULL OR store = %s
                            ORDER BY started_at DESC, stream, batch_id DESC LIMIT %s""").format(
                    self._t("ds_batches")),
                (store, store, limit),
            )
            return list(cur.fetchall())


def _batch(stream: Stream, row: tuple[Any, ...]) -> Batch:
    return Batch(stream, row[0], row[1], row[2], row[3], dict(row[4] or {}), tuple(row[5] or ()), row[6], row[7])
