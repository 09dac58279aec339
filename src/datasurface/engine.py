"""The batch pipeline: `merge` brings each stream of a store forward by one committed batch.

One data path: model -> source check -> snapshot -> staging -> diff -> apply -> ledger.
A batch is opened (committed as `ingesting`), staged (one transaction with all its staging tables),
then merged and committed (one transaction for every dataset's changes and the ledger). A first load
from a source that can write the merge tables itself (MySQL: `loads_directly`) skips staging: its snapshot
goes into the merge tables in the transaction that commits the batch. A run killed anywhere leaves the
stream in one of those states; the next run finishes that batch and exits 10.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

import psycopg2
from psycopg2 import sql

from datasurface import credentials
from datasurface.consumers import history as consumers_history
from datasurface.consumers import workspaces
from datasurface.db import Endpoint, PgConnection, driver_error, first_line, is_lost
from datasurface.errors import EXIT_OK, EXIT_RECOVERED, DatabaseError, DataSurfaceError, SnapshotError
from datasurface.faults import killpoint
from datasurface.ingest import sources
from datasurface.ingest.sources import SourceSession
from datasurface.merge import changes, ddl, staging
from datasurface.merge.diff import current_count, current_rows, loaded, no_current_rows
from datasurface.merge.forensic import ForensicMerge
from datasurface.merge.layout import (
    LIVE,
    DatasetLayout,
    Mode,
    check_mode,
    dataset_layouts,
    ensure_dataset,
    ensure_schema,
    plan_evolution,
    platform_schema,
)
from datasurface.merge.ledger import COMMITTED, INGESTING, STAGED, Batch, BatchLedger, Counts, Stream
from datasurface.merge.live import LiveMerge
from datasurface.merge.locks import LockRetry, StreamLock
from datasurface.model import Model, Store, find_store, load_model
from datasurface.observe import runs
from datasurface.sessions import Ahead, Heartbeat, SessionLimits, connection, merge_run_ahead, new_run_id

if TYPE_CHECKING:  # change data capture is imported where a store reads changes: other merges start without it
    from datasurface.cdc.capture import Begun, Capture, SlotState

log = logging.getLogger("datasurface")


def fingerprint(store: Store, datasets: tuple[str, ...]) -> str:
    """Identifies the model a batch was opened under: the datasets' definitions, nothing else (as JSON
    objects of their fields: the ledger's fingerprints from before the model's classes were tuples stay
    valid, tests/engine/test_model_meaning.py)."""
    defs = [_fields(store.dataset(d)) for d in datasets]
    return hashlib.sha256(json.dumps(defs, sort_keys=True).encode()).hexdigest()[:16]


def _fields(value: Any) -> Any:
    """A model value as plain JSON data: a model class (a NamedTuple) as an object of its fields. A field the
    model leaves out (None: a column's `source`) is left out, so a field added to the model keeps the
    fingerprints of the batches opened before it."""
    if hasattr(value, "_asdict"):
        return {name: _fields(v) for name, v in value._asdict().items() if v is not None}
    if isinstance(value, tuple | list):
        return [_fields(v) for v in value]
    return value


def layout_relations(schema: str, layouts: list[DatasetLayout]) -> list[str]:
    """What creating or evolving the layout locks: to name the sessions that block it."""
    names = ["ds_batches", "ds_batch_datasets", *(n for layout in layouts for n in (layout.table, layout.view))]
    return [f'"{schema}"."{n}"' for n in names] + [r for layout in layouts for r in consumers_history.relations(layout)]


def ensure_layout(conn: PgConnection, schema: str, layouts: list[DatasetLayout], stores: list[Store]) -> None:
    """Create or evolve schema, ledger, tables and views (and, forensic, the history view and as-of
    functions: consumers/history.py), in the caller's transaction. Under the platform's DDL lock (merge/ddl.py),
    which the caller takes."""
    ensure_schema(conn, schema)
    BatchLedger(conn, schema).ensure()
    by_name = {s.name: s for s in stores}
    for layout in layouts:
        if ensure_dataset(conn, layout):
            log.info("evolved %s.%s", schema, layout.table)
        if consumers_history.ensure(conn, layout, by_name[layout.store]):
            log.info("history of %s.%s created or evolved", schema, layout.table)


class StreamRun:
    """Brings one stream forward by one committed batch."""

    def __init__(self, merge: PgConnection, store: Store, stream: Stream, layouts: list[DatasetLayout],
                 mode: Mode, run_id: str, limits: SessionLimits, merge_where: str, taken_over: str | None = None,
                 model: Model | None = None, ahead: Ahead | None = None):
        self.merge = merge
        self.ahead = ahead
        self.model = model
        self.merge_where = merge_where
        self.run_id = run_id
        self.limits = limits
        self.taken_over = taken_over
        self.locks = LockRetry(merge, limits)
        self.store = store
        self.stream = stream
        self.layouts = layouts
        self.mode = mode
        self.schema = layouts[0].schema
        self.ledger = BatchLedger(merge, self.schema)
        self.fingerprint = fingerprint(store, tuple(layout.dataset.name for layout in layouts))
        self.batch_id: int | None = None  # the batch this run opened or resumed (for the run history)

    def preflight(self) -> Batch | None:
        """Read-only checks before anything is written; returns the open batch, if any."""
        open_batch = None
        if self.ledger.exists():
            self._check_consistency()
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
        for layout in self.layouts:
            plan_evolution(self.merge, layout)  # raises on a non-additive change
        self.merge.rollback()
        return open_batch

    def _check_consistency(self) -> None:
        """A store's streams cannot change shape under existing batches: a multi_dataset store's one stream
        and a single_dataset store's per-dataset streams number their batches independently, so carrying
        the history over would break the batch ids that forensic versions and the ledger key on."""
        shapes = self.ledger.stream_shapes(self.store.name)
        was_multi = None in shapes
        if not shapes or was_multi == (self.stream.dataset is None):
            return
        before = "multi_dataset" if was_multi else "single_dataset"
        raise DataSurfaceError(
            f"store {self.store.name} has batches on platform {self.schema} as a {before} store, but the model now "
            f"says consistency: {self.store.consistency}; a platform cannot carry a store's batches over to another "
            f"consistency. Set consistency back to {before}, or ingest the store into a new platform")

    def run(self) -> bool:
        """Returns True when it finished a batch left open by an earlier run."""
        if self.ahead is not None:  # the source's session opens while the merge side is checked
            sources.open_ahead(self.store, "source", self.run_id, self.limits, self.ahead)
        open_batch = self.preflight()
        killpoint("batch:preflight")
        what = f"{self.stream.describe()} of platform {self.schema}"
        with sources.open_source(self.store, "source", self.run_id, self.limits, self.ahead) as source:
            if self.taken_over:  # the dead or frozen run's snapshot would hold back the source's vacuum
                source.end_run_sessions(self.taken_over)
            source.check(tuple(layout.dataset for layout in self.layouts))
            begun = None
            if self.store.source.ingestion == "cdc":  # before the batch opens: a refusal changes nothing
                from datasurface.cdc.capture import Capture

                capture = Capture(source.conn, self.store, self.schema)  # type: ignore[attr-defined]
                begun = capture.check([layout.dataset for layout in self.layouts], self.limits.lock_wait)
            killpoint("source:checked")
            batch = self.locks.run(f"preparing the merge tables of {what}", lambda: self._open(open_batch),
                                   lambda: layout_relations(self.schema, self.layouts), exclusive=True)
            killpoint("batch:opened")
            opened_here = open_batch is None
            if not opened_here:
                log.warning("%s: finishing batch %s left %s by an interrupted run", self.stream.describe(),
                            batch.batch_id, batch.status)
            try:
                rows = None if begun is not None else self._staged_rows(batch)
                if begun is not None:
                    counts = self._capture_batch(source, capture, begun, batch, what)
                elif rows is None and source.loads_directly and self._first_load():
                    counts = self.locks.run(f"loading batch {batch.batch_id} of {what}",
                                            lambda: self._load(source, batch), lambda: self._merge_relations())
                else:
                    if rows is None:
                        rows = self.locks.run(f"staging batch {batch.batch_id} of {what}",
                                              lambda: self._stage(source, batch), lambda: [])
                    staged = rows
                    counts = self.locks.run(f"merging batch {batch.batch_id} of {what}",
                                            lambda: self._merge(batch, staged), lambda: self._merge_relations())
            except Exception as exc:
                with suppress(Exception):
                    self.merge.rollback()
                if opened_here or isinstance(exc, SnapshotError):
                    self._discard(batch)  # a handled failure (or a bad staged snapshot) leaves nothing behind
                raise self._user_error(exc, source, f"batch {batch.batch_id} of {self.stream.describe()}") from exc
        self._report(batch, counts)
        return not opened_here

    def _open(self, open_batch: Batch | None) -> Batch:
        """Create or evolve the layout and open the batch (or keep the open one): one transaction. The layout is
        checked without the platform's DDL lock, which is taken only when something must change (merge/ddl.py):
        batches of the platform's other stores are not held up by this one's checks."""

        def objects() -> bool:
            ensure_layout(self.merge, self.schema, self.layouts, [self.store])
            return self.model is not None and workspaces.evolve(self.merge, self.model, self.schema, self.store,
                                                                 self.layouts)

        evolved, _ = ddl.ensure(self.merge, self.schema, objects)
        if evolved:
            log.info("workspace views of %s evolved", self.stream.describe())
        staging_tables = [layout.staging for layout in self.layouts] + self._changes_tables()
        batch = open_batch or self.ledger.open_batch(self.stream, self.mode, self.fingerprint, staging_tables)
        self.batch_id = batch.batch_id
        killpoint("batch:opening")
        self.merge.commit()
        return batch

    def _merge_relations(self) -> list[str]:
        names = ("ds_batches", "ds_batch_datasets", *(layout.table for layout in self.layouts))
        return [f'"{self.schema}"."{n}"' for n in names]

    def _user_error(self, exc: BaseException, source: SourceSession, what: str) -> BaseException:
        """Driver errors become one clear line naming the server; our own errors pass through. A lost
        connection is named as such whichever side reported it first (the merge COPY sees a pipe that
        ended, the source's producer an error "with no message from the libpq")."""
        cause = exc if isinstance(exc, psycopg2.Error) else exc.__cause__
        driver = cause if isinstance(cause, psycopg2.Error) else psycopg2.OperationalError()
        lost_source = source.lost_error(driver)
        if lost_source is not None:
            return DatabaseError(f"{what}: {lost_source}")
        if is_lost(self.merge) or isinstance(exc, psycopg2.Error):
            return DatabaseError(f"{what}: {driver_error(driver, self.merge_where, self.merge)}")
        return exc

    def _staged_rows(self, batch: Batch) -> dict[str, int] | None:
        """The staged snapshot of an open batch, if it is complete; None means (re)ingest."""
        if batch.status == INGESTING:
            return None
        rows = {}
        for layout in self.layouts:
            n = staging.staged_rows(self.merge, layout)
            if n is None or n != batch.staged_rows.get(layout.dataset.name):
                log.warning("%s: staged data of batch %s is incomplete; taking the snapshot again",
                            self.stream.describe(), batch.batch_id)
                return None
            rows[layout.dataset.name] = n
        return rows

    def _changes_tables(self) -> list[str]:
        return [changes.table_name(self.schema, self.store.name)] if self.store.source.ingestion == "cdc" else []

    def _capture_batch(self, source: SourceSession, capture: Capture, begun: Begun, batch: Batch,
                       what: str) -> dict[str, Counts]:
        """A batch of a store that reads changes (cdc/): the slot's changes since the last batch, or a full
        snapshot where the changes cannot say the whole truth (cdc/plan.py). The slot is advanced only after the
        batch committed; a run stopped before that leaves it behind the ledger, and the next run catches up.
        `begun`: the batch's start on the source (Capture.check), which also ended a killed run's read of
        the slot."""
        from datasurface.cdc import pgoutput, plan

        table = changes.table_name(self.schema, self.store.name)
        counts: dict[str, Counts] | None = None
        if batch.status == STAGED and batch.source_lsn is not None \
                and changes.staged_rows(self.merge, self.schema, table, self.layouts) == batch.staged_rows:
            staged = batch
        elif batch.status == STAGED and batch.source_lsn is None and self._staged_rows(batch) is not None:
            return self.locks.run(f"merging batch {batch.batch_id} of {what}",
                                  lambda: self._merge(batch, batch.staged_rows), lambda: self._merge_relations())
        else:
            decided = plan.plan(capture.slot, begun.state, self.ledger.last_committed(self.stream), self.fingerprint,
                                begun.repaired)
            if decided.snapshot:
                return self._capture_snapshot(source, capture, begun.state, batch, what, decided.reason)
            if decided.catch_up is not None:
                capture.advance(decided.catch_up)
            staged, counts = self.locks.run(f"staging changes of batch {batch.batch_id} of {what}",
                                            lambda: self._stage_changes(capture, batch, table, begun.fixed_at),
                                            lambda: self._merge_relations())
        if counts is None:
            try:
                counts = self.locks.run(f"merging batch {batch.batch_id} of {what}",
                                        lambda: self._merge_changes(staged, table), lambda: self._merge_relations())
            except changes.UnresolvedValues as exc:
                self.merge.rollback()
                return self._capture_snapshot(source, capture, capture.state(), batch, what, str(exc))
        killpoint("cdc:before_advance")
        try:
            capture.advance(pgoutput.parse_lsn(staged.slot_lsn or ""))
        except psycopg2.Error as exc:  # the batch is merged; the next run advances the slot
            log.warning("%s: batch %s is merged but replication slot %s was not advanced (%s); the next run "
                        "advances it", self.stream.describe(), staged.batch_id, capture.slot, first_line(exc))
            with suppress(psycopg2.Error):
                source.conn.rollback()  # type: ignore[attr-defined]
        return counts

    def _capture_snapshot(self, source: SourceSession, capture: Capture,
                          state: SlotState | None, batch: Batch, what: str,
                          reason: str | None) -> dict[str, Counts]:
        from datasurface.cdc import pgoutput

        if reason is not None:
            log.warning("%s: %s; this batch is a full snapshot", self.stream.describe(), reason)
        if state is not None and (state.lost or state.confirmed is None):
            capture.drop()
            state = None
        start = capture.create(self.limits.lock_timeout) if state is None else state.confirmed
        assert start is not None
        slot_lsn = pgoutput.format_lsn(start)
        for table in self._changes_tables():  # changes staged before the snapshot was called for
            changes.drop(self.merge, self.schema, table)
        rows = self.locks.run(f"staging batch {batch.batch_id} of {what}",
                              lambda: self._stage(source, batch, slot_lsn), lambda: [])
        return self.locks.run(f"merging batch {batch.batch_id} of {what}",
                              lambda: self._merge(batch, rows), lambda: self._merge_relations())

    def _stage_changes(self, capture: Capture, batch: Batch, table: str,
                       fixed_at: datetime.datetime) -> tuple[Batch, dict[str, Counts] | None]:
        """The batch's changes staged (committed), or, when there were none, the whole batch merged in the
        same transaction (its counts): an empty batch makes no change table and commits once."""
        from datasurface.cdc import pgoutput

        rows, end = capture.copy_changes(self.merge, sql.Identifier(self.schema, table),
                                         [layout.dataset for layout in self.layouts],
                                         lambda: changes.create(self.merge, self.schema, table))
        lsn = pgoutput.format_lsn(end)
        staged = self.ledger.mark_staged(batch, rows, fixed_at, source_lsn=lsn, slot_lsn=lsn)
        if not any(rows.values()):
            return staged, self._merge_changes(staged, table)
        killpoint("ingest:before_commit")
        self.merge.commit()
        killpoint("after_ingest")
        return staged, None

    def _merge_changes(self, batch: Batch, table: str) -> dict[str, Counts]:
        """Every dataset's net changes and the ledger entry: one transaction."""
        per_dataset = {}
        strategy = LiveMerge if self.mode == LIVE else ForensicMerge
        target = sql.Identifier(self.schema, table)
        self._lock_merge_tables()
        for index, layout in enumerate(self.layouts):
            name = layout.dataset.name
            total = self.ledger.last_total(self.store.name, name)
            if batch.staged_rows.get(name) == 0:  # no change: nothing to diff or write
                total = total if total is not None else current_count(self.merge, layout)
                per_dataset[name] = Counts(total=total, inserted=0, updated=0, deleted=0)
            else:
                net = changes.build_net(self.merge, layout, target, index, current_rows(layout),
                                        batch.staged_rows.get(name, 0))
                per_dataset[name] = strategy(self.merge, layout).apply_changes(batch.batch_id, net.rows,
                                                                               net.truncated, total)
            killpoint(f"merge:{name}:applied")
        self.ledger.commit(batch, per_dataset)
        killpoint("ledger:updated")
        if any(batch.staged_rows.values()):  # a batch without changes made no change table
            changes.drop(self.merge, self.schema, table)
        killpoint("ledger:before_commit")
        self.merge.commit()
        killpoint("ledger:committed")
        return per_dataset

    def _stage(self, source: SourceSession, batch: Batch, slot_lsn: str | None = None) -> dict[str, int]:
        try:
            snapshot_at = source.begin_snapshot()
            rows = {}
            for layout in self.layouts:
                killpoint(f"ingest:{layout.dataset.name}:start")
                rows[layout.dataset.name] = source.copy_dataset(self.merge, layout)
                killpoint(f"ingest:{layout.dataset.name}:staged")
        finally:
            source.end_snapshot()  # read-only: nothing to keep
        self.ledger.mark_staged(batch, rows, snapshot_at, slot_lsn=slot_lsn)
        killpoint("ingest:before_commit")
        self.merge.commit()
        killpoint("after_ingest")
        return rows

    def _first_load(self) -> bool:
        """No dataset's merge table has current rows (the stream's first batch, or one after empty snapshots)."""
        return all(self.ledger.last_total(self.store.name, layout.dataset.name) == 0
                   and no_current_rows(self.merge, layout) for layout in self.layouts)

    def _lock_merge_tables(self) -> None:
        """Every lock the apply needs, first: a wait (bounded, retried) then happens before the batch's work."""
        with self.merge.cursor() as cur:
            cur.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(
                sql.SQL(", ").join(sql.SQL(r) for r in self._merge_relations())))

    def _load(self, source: SourceSession, batch: Batch) -> dict[str, Counts]:
        """A first load from a source that can (`loads_directly`): the snapshot is copied straight into the
        merge tables, in the transaction that commits the batch; nothing is staged. A run killed on the way
        leaves the batch `ingesting`, like one killed while staging: the next run loads it again (exit 10)."""
        self._lock_merge_tables()
        rows, per_dataset = {}, {}
        try:
            snapshot_at = source.begin_snapshot()
            for layout in self.layouts:
                killpoint(f"ingest:{layout.dataset.name}:start")
                rows[layout.dataset.name] = source.copy_dataset(self.merge, layout, batch.batch_id)
                per_dataset[layout.dataset.name] = loaded(self.merge, layout, rows[layout.dataset.name])
                killpoint(f"merge:{layout.dataset.name}:applied")
        finally:
            source.end_snapshot()  # read-only: nothing to keep
        self.ledger.mark_staged(batch, rows, snapshot_at)  # the snapshot's time and counts, as a staged batch's
        self.ledger.commit(batch, per_dataset)
        killpoint("ledger:before_commit")
        self.merge.commit()
        killpoint("ledger:committed")
        return per_dataset

    def _merge(self, batch: Batch, rows: dict[str, int]) -> dict[str, Counts]:
        """All datasets' changes and the ledger entry: one transaction."""
        per_dataset = {}
        strategy = LiveMerge if self.mode == LIVE else ForensicMerge
        self._lock_merge_tables()
        for layout in self.layouts:
            name = layout.dataset.name
            per_dataset[name] = strategy(self.merge, layout).apply(
                batch.batch_id, rows[name], self.ledger.last_total(self.store.name, name))
            killpoint(f"merge:{layout.dataset.name}:applied")
        self.ledger.commit(batch, per_dataset)
        killpoint("ledger:updated")
        for layout in self.layouts:
            staging.drop_staging(self.merge, layout)
        killpoint("ledger:before_commit")
        self.merge.commit()
        killpoint("ledger:committed")
        return per_dataset

    def _discard(self, batch: Batch) -> None:
        with suppress(Exception):
            for layout in self.layouts:
                staging.drop_staging(self.merge, layout)
            for table in self._changes_tables():
                changes.drop(self.merge, self.schema, table)
            self.ledger.discard(batch)
            self.merge.commit()

    def _report(self, batch: Batch, per_dataset: dict[str, Counts]) -> None:
        for name, c in per_dataset.items():
            print(f"{self.schema} {self.stream.store}.{name} batch {batch.batch_id}: total={c.total} "
                  f"inserted={c.inserted} updated={c.updated} deleted={c.deleted}")


def streams_of(store: Store) -> list[Stream]:
    if store.consistency == "single_dataset":
        return [Stream(store.name, d.name) for d in store.datasets]
    return [Stream(store.name, None)]


def run_merge(*, model: str, model_ref: str | None, model_path: str, platform: str, mode: str, store: str,
              merge: Endpoint, merge_credential: str, limits: SessionLimits | None = None, run_id: str | None = None,
              ahead: Ahead | None = None) -> int:
    """Exit status: 0 a fresh batch was committed (per stream); 10 an open batch was finished. One store;
    several in one run: group.py.

    The run's sessions open ahead, in threads, while the model is read (sessions.Ahead); `ahead`: where
    they are already opening (`merge_run_ahead` with this `run_id`); the run closes what it does not take."""
    limits = limits or SessionLimits()
    run_id = run_id or new_run_id()
    ahead = ahead or merge_run_ahead(merge, merge_credential, run_id, limits)
    try:
        return _run_merge(model, model_ref, model_path, platform, mode, store, merge, merge_credential,
                          limits, run_id, ahead)
    finally:
        ahead.close()


def _run_merge(model_source: str, model_ref: str | None, model_path: str, platform: str, mode_name: str,
               store_name: str, merge: Endpoint, merge_credential: str, limits: SessionLimits, run_id: str,
               ahead: Ahead) -> int:
    schema = platform_schema(platform)
    with runs.recorded(merge, merge_credential, schema, runs.MERGE, store_name, run_id, ahead) as history:
        mode = check_mode(mode_name)
        model = load_model(model_source, model_ref, model_path)
        killpoint("model:loaded")
        store, layouts = store_layouts(model, schema, store_name, mode)
        with heartbeat(merge, merge_credential, run_id, limits, ahead), \
                connection(merge, merge_credential, "merge", run_id, limits, ahead=ahead) as conn:
            return merge_streams(conn, model, store, layouts, mode, history, merge, run_id, limits, ahead)


def store_layouts(model: Model, schema: str, store_name: str, mode: Mode) -> tuple[Store, list[DatasetLayout]]:
    """The store and its datasets' layouts; fails before touching the source or writing anything."""
    store = find_store(model, store_name)
    credentials.resolve(store.source.credential)
    return store, dataset_layouts(schema, store, mode)


def merge_streams(conn: PgConnection, model: Model, store: Store, layouts: list[DatasetLayout], mode: Mode,
                  history: runs.CommandRuns, merge: Endpoint, run_id: str, limits: SessionLimits,
                  ahead: Ahead | None) -> int:
    """Each stream of the store forward by one batch, under its stream lock, on the run's merge session."""
    schema = history.history.schema
    recovered = False
    for stream in streams_of(store):
        with history.stream(stream.dataset) as record:
            stream_layouts = [layout for layout in layouts if stream.dataset in (None, layout.dataset.name)]
            lock = StreamLock(conn, schema, stream, limits)
            lock.acquire()
            killpoint("stream:locked")
            try:
                stream_run = StreamRun(conn, store, stream, stream_layouts, mode, run_id, limits,
                                       merge.named("merge"), lock.taken_over, model, ahead)
                record.watch(stream_run)
                if stream_run.run():
                    record.exit_status = EXIT_RECOVERED
                    recovered = True
            finally:
                with suppress(Exception):
                    conn.rollback()
                    lock.release()
    return EXIT_RECOVERED if recovered else EXIT_OK


@contextmanager
def heartbeat(endpoint: Endpoint, credential_name: str, run_id: str, limits: SessionLimits,
              ahead: Ahead | None = None) -> Iterator[None]:
    """The run's heartbeat (sessions.py) for as long as it holds or waits for a stream lock."""
    try:
        beat = Heartbeat(endpoint, credential_name, run_id, limits, ahead).start()
    except psycopg2.Error as exc:
        raise driver_error(exc, endpoint.named("merge")) from exc
    try:
        yield
    finally:
        beat.stop()
