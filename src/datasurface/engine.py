"""The job's commands: merge, reset-batch, setup, status, check.

One data path: model -> source check -> snapshot -> staging -> diff -> apply -> ledger.
A batch is opened (committed as `ingesting`), staged (one transaction with all its staging tables),
then merged and committed (one transaction for every dataset's changes and the ledger). A first load
from a source that can write the merge tables itself (MySQL: `loads_directly`) skips staging: its snapshot
goes into the merge tables in the transaction that commits the batch. A run killed anywhere leaves the
stream in one of those states; the next run finishes that batch and exits 10.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import psycopg2
from psycopg2 import sql

from datasurface import credentials
from datasurface.consumers import history as consumers_history
from datasurface.consumers import workspaces
from datasurface.db import Endpoint, PgConnection, driver_error, is_lost
from datasurface.errors import EXIT_OK, EXIT_RECOVERED, DatabaseError, DataSurfaceError, UsageError
from datasurface.faults import killpoint
from datasurface.ingest import dialects, snapshot
from datasurface.ingest.dialects import SourceSession
from datasurface.merge import ddl, layout
from datasurface.merge.diff import loaded, no_current_rows
from datasurface.merge.forensic import ForensicMerge
from datasurface.merge.layout import DatasetLayout
from datasurface.merge.ledger import COMMITTED, INGESTING, Batch, BatchLedger, Counts, Stream
from datasurface.merge.live import LiveMerge
from datasurface.merge.locks import LockRetry, StreamLock
from datasurface.model import Model, Store, load_model
from datasurface.observe import runs
from datasurface.sessions import Ahead, Heartbeat, SessionLimits, connection, merge_run_ahead, new_run_id

log = logging.getLogger("datasurface")


def find_store(model: Model, name: str) -> Store:
    try:
        return model.store(name)
    except KeyError:
        known = ", ".join(s.name for s in model.stores)
        raise DataSurfaceError(f"unknown store {name!r} (the model has: {known})") from None


def fingerprint(store: Store, datasets: tuple[str, ...]) -> str:
    """Identifies the model a batch was opened under: the datasets' definitions, nothing else (as JSON
    objects of their fields: the ledger's fingerprints from before the model's classes were tuples stay
    valid, tests/engine/test_model_meaning.py)."""
    defs = [_fields(store.dataset(d)) for d in datasets]
    return hashlib.sha256(json.dumps(defs, sort_keys=True).encode()).hexdigest()[:16]


def _fields(value: Any) -> Any:
    """A model value as plain JSON data: a model class (a NamedTuple) as an object of its fields."""
    if hasattr(value, "_asdict"):
        return {name: _fields(v) for name, v in value._asdict().items()}
    if isinstance(value, tuple | list):
        return [_fields(v) for v in value]
    return value


def layout_relations(schema: str, lays: list[DatasetLayout]) -> list[str]:
    """What creating or evolving the layout locks: to name the sessions that block it."""
    names = ["ds_batches", "ds_batch_datasets", *(n for lay in lays for n in (lay.table, lay.view))]
    return [f'"{schema}"."{n}"' for n in names] + [r for lay in lays for r in consumers_history.relations(lay)]


def ensure_layout(conn: PgConnection, schema: str, lays: list[DatasetLayout], stores: list[Store]) -> None:
    """Create or evolve schema, ledger, tables and views (and, forensic, the history view and as-of
    functions: consumers/history.py), in the caller's transaction. Under the platform's DDL lock (merge/ddl.py),
    which the caller takes."""
    layout.ensure_schema(conn, schema)
    BatchLedger(conn, schema).ensure()
    by_name = {s.name: s for s in stores}
    for lay in lays:
        if layout.ensure_dataset(conn, lay):
            log.info("evolved %s.%s", schema, lay.table)
        if consumers_history.ensure(conn, lay, by_name[lay.store]):
            log.info("history of %s.%s created or evolved", schema, lay.table)


class StreamRun:
    """Brings one stream forward by one committed batch."""

    def __init__(self, merge: PgConnection, store: Store, stream: Stream, lays: list[DatasetLayout],
                 mode: str, run_id: str, limits: SessionLimits, merge_where: str, taken_over: str | None = None,
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
        self.lays = lays
        self.mode = mode
        self.schema = lays[0].schema
        self.ledger = BatchLedger(merge, self.schema)
        self.fingerprint = fingerprint(store, tuple(lay.dataset.name for lay in lays))
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
        for lay in self.lays:
            layout.plan_evolution(self.merge, lay)  # raises on a non-additive change
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
            dialects.open_ahead(self.store, "source", self.run_id, self.limits, self.ahead)
        open_batch = self.preflight()
        killpoint("batch:preflight")
        what = f"{self.stream.describe()} of platform {self.schema}"
        with dialects.open_source(self.store, "source", self.run_id, self.limits, self.ahead) as source:
            if self.taken_over:  # the dead or frozen run's snapshot would hold back the source's vacuum
                source.end_run_sessions(self.taken_over)
            source.check(tuple(lay.dataset for lay in self.lays))
            killpoint("source:checked")
            batch = self.locks.run(f"preparing the merge tables of {what}", lambda: self._open(open_batch),
                                   lambda: layout_relations(self.schema, self.lays), exclusive=True)
            killpoint("batch:opened")
            opened_here = open_batch is None
            if not opened_here:
                log.warning("%s: finishing batch %s left %s by an interrupted run", self.stream.describe(),
                            batch.batch_id, batch.status)
            try:
                rows = self._staged_rows(batch)
                if rows is None and source.loads_directly and self._first_load():
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
                if opened_here or isinstance(exc, snapshot.SnapshotError):
                    self._discard(batch)  # a handled failure (or a bad staged snapshot) leaves nothing behind
                raise self._user_error(exc, source, f"batch {batch.batch_id} of {self.stream.describe()}") from exc
        self._report(batch, counts)
        return not opened_here

    def _open(self, open_batch: Batch | None) -> Batch:
        """Create or evolve the layout and open the batch (or keep the open one): one transaction. The layout is
        checked without the platform's DDL lock, which is taken only when something must change (merge/ddl.py):
        batches of the platform's other stores are not held up by this one's checks."""

        def objects() -> bool:
            ensure_layout(self.merge, self.schema, self.lays, [self.store])
            return self.model is not None and workspaces.evolve(self.merge, self.model, self.schema, self.store,
                                                                 self.lays)

        evolved, _ = ddl.ensure(self.merge, self.schema, objects)
        if evolved:
            log.info("workspace views of %s evolved", self.stream.describe())
        batch = open_batch or self.ledger.open_batch(self.stream, self.mode, self.fingerprint,
                                                     [lay.staging for lay in self.lays])
        self.batch_id = batch.batch_id
        killpoint("batch:opening")
        self.merge.commit()
        return batch

    def _merge_relations(self) -> list[str]:
        names = ("ds_batches", "ds_batch_datasets", *(lay.table for lay in self.lays))
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
        for lay in self.lays:
            n = snapshot.staged_rows(self.merge, lay)
            if n is None or n != batch.staged_rows.get(lay.dataset.name):
                log.warning("%s: staged data of batch %s is incomplete; taking the snapshot again",
                            self.stream.describe(), batch.batch_id)
                return None
            rows[lay.dataset.name] = n
        return rows

    def _stage(self, source: SourceSession, batch: Batch) -> dict[str, int]:
        try:
            snapshot_at = source.begin_snapshot()
            rows = {}
            for lay in self.lays:
                killpoint(f"ingest:{lay.dataset.name}:start")
                rows[lay.dataset.name] = source.copy_dataset(self.merge, lay)
                killpoint(f"ingest:{lay.dataset.name}:staged")
        finally:
            source.end_snapshot()  # read-only: nothing to keep
        self.ledger.mark_staged(batch, rows, snapshot_at)
        killpoint("ingest:before_commit")
        self.merge.commit()
        killpoint("after_ingest")
        return rows

    def _first_load(self) -> bool:
        """No dataset's merge table has current rows (the stream's first batch, or one after empty snapshots)."""
        return all(self.ledger.last_total(self.store.name, lay.dataset.name) == 0
                   and no_current_rows(self.merge, lay) for lay in self.lays)

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
            for lay in self.lays:
                killpoint(f"ingest:{lay.dataset.name}:start")
                rows[lay.dataset.name] = source.copy_dataset(self.merge, lay, batch.batch_id)
                per_dataset[lay.dataset.name] = loaded(self.merge, lay, rows[lay.dataset.name])
                killpoint(f"merge:{lay.dataset.name}:applied")
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
        strategy = LiveMerge if self.mode == layout.LIVE else ForensicMerge
        self._lock_merge_tables()
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


def streams_of(store: Store) -> list[Stream]:
    if store.consistency == "single_dataset":
        return [Stream(store.name, d.name) for d in store.datasets]
    return [Stream(store.name, None)]


def run_merge(*, model: str, model_ref: str | None, model_path: str, platform: str, mode: str,
              store: str | Sequence[str], merge: Endpoint, merge_credential: str, limits: SessionLimits | None = None,
              run_id: str | None = None, ahead: Ahead | None = None, parallel: int = 1) -> int:
    """Exit status: 0 a fresh batch was committed (per stream); 10 an open batch was finished.

    `store`: one store, or several (a list, or names separated by commas): a group, each of whose stores is
    merged as a run of its own would merge it, up to `parallel` at once (group.py).

    The run's sessions open ahead, in threads, while the model is read (sessions.Ahead); `ahead`: where
    they are already opening (`merge_run_ahead` with this `run_id`); the run closes what it does not take."""
    limits = limits or SessionLimits()
    run_id = run_id or new_run_id()
    ahead = ahead or merge_run_ahead(merge, merge_credential, run_id, limits)
    try:
        if parallel < 1:
            raise UsageError(f"--parallel must be at least 1 (got {parallel})")
        stores = [store] if isinstance(store, str) else list(store)
        if len(stores) != 1 or "," in stores[0]:
            from datasurface.group import Group

            return Group(model, model_ref, model_path, platform, mode, stores, merge, merge_credential, limits,
                         run_id, parallel).run(ahead)
        return _run_merge(model, model_ref, model_path, platform, mode, stores[0], merge, merge_credential,
                          limits, run_id, ahead)
    finally:
        ahead.close()


def _run_merge(model: str, model_ref: str | None, model_path: str, platform: str, mode: str, store: str,
               merge: Endpoint, merge_credential: str, limits: SessionLimits, run_id: str, ahead: Ahead) -> int:
    schema = layout.platform_schema(platform)
    with runs.recorded(merge, merge_credential, schema, runs.MERGE, store, run_id, ahead) as history:
        layout.check_mode(mode)
        mdl = load_model(model, model_ref, model_path)
        killpoint("model:loaded")
        st, lays = store_layouts(mdl, schema, store, mode)
        with heartbeat(merge, merge_credential, run_id, limits, ahead), \
                connection(merge, merge_credential, "merge", run_id, limits, ahead=ahead) as conn:
            return merge_streams(conn, mdl, st, lays, mode, history, merge, run_id, limits, ahead)


def store_layouts(mdl: Model, schema: str, store: str, mode: str) -> tuple[Store, list[DatasetLayout]]:
    """The store and its datasets' layouts; fails before touching the source or writing anything."""
    st = find_store(mdl, store)
    credentials.resolve(st.source.credential)
    return st, layout.layouts(schema, st, mode)


def merge_streams(conn: PgConnection, mdl: Model, st: Store, lays: list[DatasetLayout], mode: str,
                  history: runs.CommandRuns, merge: Endpoint, run_id: str, limits: SessionLimits,
                  ahead: Ahead | None) -> int:
    """Each stream of the store forward by one batch, under its stream lock, on the run's merge session."""
    schema = history.history.schema
    recovered = False
    for stream in streams_of(st):
        with history.stream(stream.dataset) as record:
            stream_lays = [lay for lay in lays if stream.dataset in (None, lay.dataset.name)]
            lock = StreamLock(conn, schema, stream, limits)
            lock.acquire()
            killpoint("stream:locked")
            try:
                stream_run = StreamRun(conn, st, stream, stream_lays, mode, run_id, limits,
                                       merge.named("merge"), lock.taken_over, mdl, ahead)
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


def run_setup(*, model: str, model_ref: str | None, model_path: str, platform: str, mode: str,
              stores: list[str] | None, merge: Endpoint, merge_credential: str,
              limits: SessionLimits | None = None) -> None:
    limits = limits or SessionLimits()
    schema = layout.platform_schema(platform)
    history = runs.RunHistory(merge, merge_credential, schema, runs.SETUP)
    lines: list[str] = []
    with history.run(stores[0] if stores and len(stores) == 1 else None):
        layout.check_mode(mode)
        mdl = load_model(model, model_ref, model_path)
        chosen = [find_store(mdl, s) for s in stores] if stores else list(mdl.stores)
        lays = [lay for st in chosen for lay in layout.layouts(schema, st, mode)]
        for lay in lays:
            if mode == layout.FORENSIC:
                consumers_history.check_names(lay)
        spaces = workspaces.targets(mdl, schema, lays, chosen)
        with connection(merge, merge_credential, "merge", limits=limits) as conn:
            for lay in lays:
                layout.plan_evolution(conn, lay)  # refuse before changing anything
            workspaces.check_roles(conn, spaces)
            conn.rollback()

            def step() -> None:
                ddl.lock(conn, schema)  # setup reconciles grants and workspaces too: always under the lock
                ensure_layout(conn, schema, lays, chosen)
                lines[:] = workspaces.reconcile(conn, mdl, schema, spaces)
                conn.commit()

            LockRetry(conn, limits).run(f"setting up platform {schema}", step,
                                        lambda: layout_relations(schema, lays) + workspaces.relations(spaces),
                                        exclusive=True)
    print(f"{schema}: {len(lays)} dataset(s) of {len(chosen)} store(s) ready ({mode})")
    for line in lines:
        print(line)


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
            with dialects.open_source(st, "check") as source:
                source.check(st.datasets)
            print(f"ok   source of store {st.name}: {dialects.describe(st)}")
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
