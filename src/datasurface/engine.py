"""The job's commands: merge, reset-batch, setup, status, check.

One data path: model -> source check -> snapshot -> staging -> diff -> apply -> ledger.
A batch is opened (committed as `ingesting`), staged (one transaction with all its staging tables),
then merged and committed (one transaction for every dataset's changes and the ledger). A run killed
anywhere leaves the stream in one of those states; the next run finishes that batch and exits 10.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict

import psycopg2
from psycopg2 import sql

from datasurface import credentials
from datasurface.db import Endpoint, PgConnection, connect, first_line
from datasurface.errors import EXIT_OK, EXIT_RECOVERED, DatabaseError, DataSurfaceError
from datasurface.faults import killpoint
from datasurface.ingest import snapshot
from datasurface.ingest.source import check_store
from datasurface.merge import layout
from datasurface.merge.forensic import ForensicMerge
from datasurface.merge.layout import DatasetLayout
from datasurface.merge.ledger import COMMITTED, INGESTING, Batch, BatchLedger, Counts, Stream, StreamLock
from datasurface.merge.live import LiveMerge
from datasurface.model import Model, Store, load_model

log = logging.getLogger("datasurface")


def find_store(model: Model, name: str) -> Store:
    try:
        return model.store(name)
    except KeyError:
        known = ", ".join(s.name for s in model.stores)
        raise DataSurfaceError(f"unknown store {name!r} (the model has: {known})") from None


def fingerprint(store: Store, datasets: tuple[str, ...]) -> str:
    """Identifies the model a batch was opened under: the datasets' definitions, nothing else."""
    defs = [asdict(store.dataset(d)) for d in datasets]
    return hashlib.sha256(json.dumps(defs, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def connection(endpoint: Endpoint, credential_name: str, role: str) -> Iterator[PgConnection]:
    cred = credentials.resolve(credential_name)
    conn = connect(endpoint, cred, application_name=f"datasurface-job {role}")
    try:
        yield conn
    finally:
        with suppress(Exception):
            conn.close()


def source_endpoint(store: Store) -> Endpoint:
    return Endpoint(store.source.host, store.source.port, store.source.database)


def _ddl_lock(conn: PgConnection, schema: str) -> None:
    """Serialises DDL on one platform schema between concurrent runs of different streams."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"datasurface-ddl/{schema}",))


def ensure_layout(conn: PgConnection, schema: str, lays: list[DatasetLayout]) -> None:
    """Create or evolve schema, ledger, tables and views, in the caller's transaction."""
    _ddl_lock(conn, schema)
    layout.ensure_schema(conn, schema)
    BatchLedger(conn, schema).ensure()
    for lay in lays:
        if layout.ensure_dataset(conn, lay):
            log.info("evolved %s.%s", schema, lay.table)


class StreamRun:
    """Brings one stream forward by one committed batch."""

    def __init__(self, merge: PgConnection, store: Store, stream: Stream, lays: list[DatasetLayout],
                 mode: str):
        self.merge = merge
        self.store = store
        self.stream = stream
        self.lays = lays
        self.mode = mode
        self.schema = lays[0].schema
        self.ledger = BatchLedger(merge, self.schema)
        self.fingerprint = fingerprint(store, tuple(lay.dataset.name for lay in lays))

    def preflight(self) -> Batch | None:
        """Read-only checks before anything is written; returns the open batch, if any."""
        open_batch = None
        if self.ledger.exists():
            latest = self.ledger.latest(self.stream)
            if latest is not None and latest.status != COMMITTED:
                open_batch = latest
                if latest.fingerprint != self.fingerprint or latest.mode != self.mode:
                    raise DataSurfaceError(
                        f"batch {latest.batch_id} of {self.stream.describe()} was opened under a different "
                        f"model or mode and is never merged under this one; run `datasurface-job reset-batch "
                        f"--platform {self.schema} --store {self.stream.store}"
                        + (f" --dataset {self.stream.dataset}" if self.stream.dataset else "")
                        + "` to discard it, then merge again"
                    )
        for lay in self.lays:
            layout.plan_evolution(self.merge, lay)  # raises on a non-additive change
        self.merge.rollback()
        return open_batch

    def run(self) -> bool:
        """Returns True when it finished a batch left open by an earlier run."""
        open_batch = self.preflight()
        with connection(source_endpoint(self.store), self.store.source.credential, "source") as source:
            check_store(source, self.store, tuple(lay.dataset for lay in self.lays))
            source.rollback()
            killpoint("source:checked")
            ensure_layout(self.merge, self.schema, self.lays)
            opened_here = open_batch is None
            batch = open_batch or self.ledger.open_batch(self.stream, self.mode, self.fingerprint,
                                                         [lay.staging for lay in self.lays])
            killpoint("batch:opening")
            self.merge.commit()
            killpoint("batch:opened")
            if open_batch is not None:
                log.warning("%s: finishing batch %s left %s by an interrupted run", self.stream.describe(),
                            batch.batch_id, batch.status)
            try:
                rows = self._staged_rows(batch)
                if rows is None:
                    rows = self._stage(source, batch)
                counts = self._merge(batch, rows)
            except Exception as exc:
                with suppress(Exception):
                    self.merge.rollback()
                if opened_here or isinstance(exc, snapshot.SnapshotError):
                    self._discard(batch)  # a handled failure (or a bad staged snapshot) leaves nothing behind
                raise as_user_error(exc, f"batch {batch.batch_id} of {self.stream.describe()}") from exc
        self._report(batch, counts)
        return not opened_here

    def _staged_rows(self, batch: Batch) -> dict[str, int] | None:
        """The staged snapshot of an open batch, if it is complete; None means (re)ingest."""
        if batch.status == INGESTING:
            return None
        rows = {}
        for lay in self.lays:
            n = snapshot.staged_rows(self.merge, lay)
            if n is None or n != batch.staged_rows.get(lay.dataset.name):
                log.warning("%s: staged data of batch %s is incomplete; taking the snapshot again",
                            self.stream.describe(), batch.batch_id)
                return None
            rows[lay.dataset.name] = n
        return rows

    def _stage(self, source: PgConnection, batch: Batch) -> dict[str, int]:
        snapshot_at = snapshot.begin_snapshot(source)
        rows = {}
        for lay in self.lays:
            killpoint(f"ingest:{lay.dataset.name}:start")
            rows[lay.dataset.name] = snapshot.copy_dataset(source, self.merge, lay, self.store.source.schema)
            killpoint(f"ingest:{lay.dataset.name}:staged")
        source.rollback()  # read-only: ends the snapshot
        self.ledger.mark_staged(batch, rows, snapshot_at)
        killpoint("ingest:before_commit")
        self.merge.commit()
        killpoint("after_ingest")
        return rows

    def _merge(self, batch: Batch, rows: dict[str, int]) -> dict[str, Counts]:
        """All datasets' changes and the ledger entry: one transaction."""
        per_dataset = {}
        strategy = LiveMerge if self.mode == layout.LIVE else ForensicMerge
        for lay in self.lays:
            name = lay.dataset.name
            per_dataset[name] = strategy(self.merge, lay).apply(
                batch.batch_id, rows[name], self.ledger.last_total(self.store.name, name))
            killpoint(f"merge:{lay.dataset.name}:applied")
        self.ledger.commit(batch, per_dataset)
        killpoint("ledger:updated")
        for lay in self.lays:
            snapshot.drop_staging(self.merge, lay)
        killpoint("ledger:before_commit")
        self.merge.commit()
        killpoint("ledger:committed")
        return per_dataset

    def _discard(self, batch: Batch) -> None:
        with suppress(Exception):
            for lay in self.lays:
                snapshot.drop_staging(self.merge, lay)
            self.ledger.discard(batch)
            self.merge.commit()

    def _report(self, batch: Batch, per_dataset: dict[str, Counts]) -> None:
        for name, c in per_dataset.items():
            print(f"{self.schema} {self.stream.store}.{name} batch {batch.batch_id}: total={c.total} "
                  f"inserted={c.inserted} updated={c.updated} deleted={c.deleted}")


def as_user_error(exc: BaseException, what: str) -> BaseException:
    """Driver errors become one clear line; our own errors pass through."""
    if isinstance(exc, DataSurfaceError):
        return exc
    if isinstance(exc, psycopg2.Error):
        return DatabaseError(f"{what}: {first_line(exc)}")
    return exc


def streams_of(store: Store) -> list[Stream]:
    if store.consistency == "single_dataset":
        return [Stream(store.name, d.name) for d in store.datasets]
    return [Stream(store.name, None)]


def run_merge(*, model: str, model_ref: str | None, model_path: str, platform: str, mode: str, store: str,
              merge: Endpoint, merge_credential: str, lock_wait: float = 0.0) -> int:
    """Exit status: 0 a fresh batch was committed (per stream); 10 an open batch was finished."""
    schema = layout.platform_schema(platform)
    layout.check_mode(mode)
    mdl = load_model(model, model_ref, model_path)
    st = find_store(mdl, store)
    credentials.resolve(st.source.credential)  # fail before touching anything
    lays = layout.layouts(schema, st, mode)
    recovered = False
    with connection(merge, merge_credential, "merge") as conn:
        for stream in streams_of(st):
            stream_lays = [lay for lay in lays if stream.dataset in (None, lay.dataset.name)]
            lock = StreamLock(conn, schema, stream, lock_wait)
            lock.acquire()
            killpoint("stream:locked")
            try:
                recovered |= StreamRun(conn, st, stream, stream_lays, mode).run()
            finally:
                with suppress(Exception):
                    conn.rollback()
                    lock.release()
    return EXIT_RECOVERED if recovered else EXIT_OK


def run_reset_batch(*, platform: str, store: str, dataset: str | None, merge: Endpoint, merge_credential: str,
                    batch_id: int | None = None, lock_wait: float = 0.0) -> None:
    schema = layout.platform_schema(platform)
    stream = Stream(store, dataset)
    with connection(merge, merge_credential, "merge") as conn:
        ledger = BatchLedger(conn, schema)
        if not ledger.exists():
            print(f"{schema}: no batches yet; nothing to reset")
            return
        lock = StreamLock(conn, schema, stream, lock_wait)
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


def run_setup(*, model: str, model_ref: str | None, model_path: str, platform: str, mode: str,
              stores: list[str] | None, merge: Endpoint, merge_credential: str) -> None:
    schema = layout.platform_schema(platform)
    layout.check_mode(mode)
    mdl = load_model(model, model_ref, model_path)
    chosen = [find_store(mdl, s) for s in stores] if stores else list(mdl.stores)
    lays = [lay for st in chosen for lay in layout.layouts(schema, st, mode)]
    with connection(merge, merge_credential, "merge") as conn:
        for lay in lays:
            layout.plan_evolution(conn, lay)  # refuse before changing anything
        ensure_layout(conn, schema, lays)
        conn.commit()
    print(f"{schema}: {len(lays)} dataset(s) of {len(chosen)} store(s) ready ({mode})")


def run_status(*, platform: str, store: str | None, limit: int, merge: Endpoint, merge_credential: str) -> None:
    from rich.console import Console
    from rich.table import Table

    schema = layout.platform_schema(platform)
    with connection(merge, merge_credential, "merge") as conn:
        ledger = BatchLedger(conn, schema)
        if not ledger.exists():
            raise DataSurfaceError(f"platform {platform}: schema {schema} has no batch ledger yet "
                                   f"(run `datasurface-job setup` or `merge` first)")
        rows = ledger.recent(store, limit)
    table = Table(title=f"{platform}: last {limit} batches")
    for col in ("store", "dataset", "batch", "status", "started", "seconds", "total", "inserted", "updated",
                "deleted"):
        table.add_column(col, justify="right" if col in ("batch", "seconds", "total", "inserted", "updated",
                                                         "deleted") else "left")
    for st, ds, batch_id, status, started, finished, *counts in rows:
        secs = f"{(finished - started).total_seconds():.1f}" if finished else ""
        table.add_row(st, ds or "", str(batch_id), status, started.strftime("%Y-%m-%d %H:%M:%S"), secs,
                      *("" if c is None else f"{c:,}" for c in counts))
    Console(width=140).print(table)


def run_check(*, model: str, model_ref: str | None, model_path: str, merge: Endpoint,
              merge_credential: str) -> None:
    """Connectivity to model, every source and the merge database; one line each; fails if any fails."""
    failures = []
    try:
        mdl = load_model(model, model_ref, model_path)
        print(f"ok   model {mdl.origin or model}: {len(mdl.stores)} store(s)")
    except DataSurfaceError as exc:
        raise DataSurfaceError(f"model: {exc}") from exc
    for st in mdl.stores:
        try:
            with connection(source_endpoint(st), st.source.credential, "check") as conn:
                check_store(conn, st)
            print(f"ok   source of store {st.name}: {source_endpoint(st).describe()}")
        except DataSurfaceError as exc:
            print(f"FAIL source of store {st.name}: {exc}")
            failures.append(f"store {st.name}")
    try:
        with connection(merge, merge_credential, "check") as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        print(f"ok   merge {merge.describe()}")
    except DataSurfaceError as exc:
        print(f"FAIL merge: {exc}")
        failures.append("merge database")
    if failures:
        raise DataSurfaceError(f"check failed for: {', '.join(failures)}")
