"""`merge` of many stores in one run (`--store A --store B …`, `--parallel K`).

Each store is merged exactly as a run of its own would merge it: its streams' locks, batches, ledger rows
and run history rows are its own, and its failure (a source down, a refused snapshot, a stream held by
another run, a store the model lacks) is reported in one line naming it and never stops or rolls back
another store. What a group shares is what a run pays before its first stream: the process, the model
(read once), the heartbeat (one per run id, which every stream lock of the run points to), and, store
after store, its merge and history sessions (a session that saw a failure is closed, never reused).

With `parallel` K > 1, K workers take the stores in order: the first is the main thread (so Ctrl-C and
SIGTERM interrupt its stream as they interrupt a single run), the others are daemon threads with sessions
of their own. An interrupted group stops at once: the streams it committed stay committed, and a stream
still in flight in another worker is left as a killed run leaves it (the next run finishes its batch).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

import psycopg2

from datasurface import engine, interrupts
from datasurface.db import Endpoint, PgConnection, driver_error
from datasurface.errors import EXIT_FAILURE, EXIT_OK, EXIT_RECOVERED, DataSurfaceError, UsageError, failure_line
from datasurface.faults import killpoint
from datasurface.merge.layout import check_mode, platform_schema
from datasurface.model import Model, load_model
from datasurface.observe import runs
from datasurface.sessions import (
    Ahead,
    Heartbeat,
    SessionLimits,
    alive,
    merge_run_ahead,
    new_run_id,
    session,
    taken,
)

log = logging.getLogger("datasurface")


def run_merge(*, model: str, model_ref: str | None, model_path: str, platform: str, mode: str,
              store: str | Sequence[str], merge: Endpoint, merge_credential: str,
              limits: SessionLimits | None = None, run_id: str | None = None, ahead: Ahead | None = None,
              parallel: int = 1) -> int:
    """`datasurface-job merge`: one store (engine.run_merge), or several (a list, or names separated by commas):
    a group, each of whose stores is merged as a run of its own would merge it, up to `parallel` at once."""
    limits = limits or SessionLimits()
    run_id = run_id or new_run_id()
    ahead = ahead or merge_run_ahead(merge, merge_credential, run_id, limits)
    try:
        if parallel < 1:
            raise UsageError(f"--parallel must be at least 1 (got {parallel})")
        stores = [store] if isinstance(store, str) else list(store)
        if len(stores) == 1 and "," not in stores[0]:
            return engine.run_merge(model=model, model_ref=model_ref, model_path=model_path, platform=platform,
                                    mode=mode, store=stores[0], merge=merge, merge_credential=merge_credential,
                                    limits=limits, run_id=run_id, ahead=ahead)
        return Group(model, model_ref, model_path, platform, mode, stores, merge, merge_credential, limits,
                     run_id, parallel).run(ahead)
    finally:
        ahead.close()


def store_names(given: Sequence[str]) -> list[str]:
    """The stores of `--store` (repeated, or names separated by commas, as DATASURFACE_STORE holds them)."""
    names = [name.strip() for value in given for name in value.split(",") if name.strip()]
    if not names:
        raise UsageError("--store names no store")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UsageError(f"--store lists {', '.join(twice)} more than once")
    return names


class StoreFailed(DataSurfaceError):
    """A store of the group failed: the one line its run alone would print, naming the store."""

    def __init__(self, store: str, cause: BaseException):
        _, line = failure_line(cause)
        super().__init__(f"store {store}: " + line.removeprefix("datasurface-job: ").removeprefix("error: "))


class Group:
    """One `merge` run over several stores of a platform."""

    def __init__(self, model: str, model_ref: str | None, model_path: str, platform: str, mode: str,
                 stores: Sequence[str], merge: Endpoint, merge_credential: str, limits: SessionLimits, run_id: str,
                 parallel: int):
        self.model, self.model_ref, self.model_path = model, model_ref, model_path
        self.mode = mode
        self.stores = store_names(stores)
        self.schema = platform_schema(platform)
        self.merge = merge
        self.merge_credential = merge_credential
        self.limits = limits
        self.run_id = run_id
        self.parallel = parallel
        self.results: dict[str, int] = {}
        self._next = iter(self.stores)
        self._lock = threading.Lock()
        self.stop = threading.Event()

    def run(self, ahead: Ahead) -> int:
        """1 if any store failed, else 10 if any finished a batch left open, else 0."""
        with interrupts.sigterm_interrupts():
            try:
                check_mode(self.mode)
                model = load_model(self.model, self.model_ref, self.model_path)
                killpoint("model:loaded")
                beat = Heartbeat(self.merge, self.merge_credential, self.run_id, self.limits, ahead).start()
            except Exception as exc:  # what every store needs: each fails with it, as it would alone
                if isinstance(exc, psycopg2.Error):
                    exc = driver_error(exc, self.merge.named("merge"))
                self._all_failed(exc, ahead)
            else:
                try:
                    self._merge_all(model, ahead)
                finally:
                    beat.stop()
        codes = {self.results.get(store, EXIT_FAILURE) for store in self.stores}  # a store never merged: failed
        return EXIT_FAILURE if EXIT_FAILURE in codes else EXIT_RECOVERED if EXIT_RECOVERED in codes else EXIT_OK

    def _all_failed(self, exc: Exception, ahead: Ahead) -> None:
        worker = _Worker(self, None, ahead)
        try:
            for store in self.stores:
                self.results[store] = worker.fail(store, exc)
        finally:
            worker.close()

    def _merge_all(self, model: Model, ahead: Ahead) -> None:
        workers = [_Worker(self, model, ahead if i == 0 else None) for i in range(min(self.parallel, len(self.stores)))]
        threads = [threading.Thread(target=w.run, name=f"merge-{i}", daemon=True)
                   for i, w in enumerate(workers[1:], start=1)]
        for thread in threads:
            thread.start()
        try:
            workers[0].run()
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.5)
        except BaseException:
            self.stop.set()  # no worker starts another store; those in flight end with the process
            raise

    def next_store(self) -> str | None:
        with self._lock:
            return None if self.stop.is_set() else next(self._next, None)


class _Worker:
    """Merges stores one after another on sessions of its own, kept from store to store."""

    def __init__(self, group: Group, model: Model | None, ahead: Ahead | None):
        self.group = group
        self.model = model
        self.ahead = ahead  # the run's sessions opened ahead: the first worker takes them
        self.conn: PgConnection | None = None
        self.history = runs.RunHistory(group.merge, group.merge_credential, group.schema, runs.MERGE,
                                       group.run_id, ahead)

    def run(self) -> None:
        try:
            while (store := self.group.next_store()) is not None:
                self.group.results[store] = self.merge_store(store)
        except Exception as exc:  # a worker thread's own failure (its stores' are reported in merge_store)
            log.error("%s stopped: %s", threading.current_thread().name, exc)
        finally:
            self.close()

    def merge_store(self, store: str) -> int:
        group = self.group
        assert self.model is not None
        sources = Ahead()  # the store's source session opens while its merge side is checked (engine)
        try:
            with runs.recorded(group.merge, group.merge_credential, group.schema, runs.MERGE, store, group.run_id,
                               history=self.history) as history:
                try:
                    mode = check_mode(group.mode)  # checked once for the group in Group.run
                    model_store, layouts = engine.store_layouts(self.model, group.schema, store, mode)
                    with self.session() as conn:
                        return engine.merge_streams(conn, self.model, model_store, layouts, mode, history, group.merge,
                                                    group.run_id, group.limits, sources)
                except Exception as exc:
                    raise StoreFailed(store, exc) from exc
        except StoreFailed as exc:
            return _report(exc)
        finally:
            sources.close()

    def fail(self, store: str, cause: Exception) -> int:
        """Record and report the store as failed with what every store of the group needed."""
        group = self.group
        try:
            with runs.recorded(group.merge, group.merge_credential, group.schema, runs.MERGE, store, group.run_id,
                               history=self.history):
                raise StoreFailed(store, cause) from cause
        except StoreFailed as exc:
            return _report(exc)

    @contextmanager
    def session(self) -> Iterator[PgConnection]:
        """The worker's merge session for one store: the last store's, if that one succeeded and the server
        has not ended it; a driver error inside becomes one line naming the server, as `connection` does."""
        group = self.group
        where = group.merge.named("merge")
        if self.conn is not None and not alive(self.conn):
            self.close_session()
        if self.conn is None:
            ahead, self.ahead = self.ahead, None
            try:
                self.conn = taken(ahead, *session(group.merge, group.merge_credential, "merge", group.run_id,
                                                  group.limits))
            except psycopg2.Error as exc:
                raise driver_error(exc, where) from exc
        conn = self.conn
        try:
            yield conn
        except psycopg2.Error as exc:
            error = driver_error(exc, where, conn)
            self.close_session()
            raise error from exc
        except BaseException:
            self.close_session()
            raise

    def close_session(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with suppress(Exception):
                conn.close()

    def close(self) -> None:
        self.close_session()
        self.history.close()


def _report(exc: StoreFailed) -> int:
    code, line = failure_line(exc)
    log.debug("%s", line, exc_info=exc.__cause__)
    print(line, file=sys.stderr, flush=True)
    return code
