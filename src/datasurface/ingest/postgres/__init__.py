"""PostgreSQL sources: psycopg2, a read-only REPEATABLE READ transaction, binary COPY through an OS pipe.

Rows never become Python objects (snapshot.py); the source check compares `format_type()` spellings and
refuses row-level security that applies to the job's role (check.py). The session has the job's limits
(sessions.py) like every other session of the run.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

import psycopg2

from datasurface.db import Endpoint, PgConnection, driver_error, is_lost
from datasurface.errors import DatabaseError
from datasurface.ingest.postgres import snapshot
from datasurface.ingest.postgres.check import check_store
from datasurface.merge.layout import DatasetLayout
from datasurface.merge.locks import end_run_sessions
from datasurface.model import Dataset, Store
from datasurface.sessions import Ahead, SessionLimits, connection, new_run_id


def endpoint(store: Store) -> Endpoint:
    return Endpoint(store.source.host, store.source.port, store.source.database)


def describe(store: Store) -> str:
    return endpoint(store).describe()


class PostgresSource:
    loads_directly = False  # the binary COPY is passed through unread: it cannot add the batch's columns

    def __init__(self, store: Store, conn: PgConnection):
        self.store = store
        self.conn = conn

    def check(self, datasets: Sequence[Dataset]) -> None:
        check_store(self.conn, self.store, tuple(datasets))
        self.conn.rollback()

    def end_run_sessions(self, run_id: str) -> None:
        with suppress(psycopg2.Error):
            end_run_sessions(self.conn, run_id)

    def begin_snapshot(self) -> datetime.datetime:
        return snapshot.begin_snapshot(self.conn)

    def copy_dataset(self, merge: PgConnection, layout: DatasetLayout, load_batch: int | None = None) -> int:
        if load_batch is not None:
            raise ValueError("a PostgreSQL source always stages (loads_directly is False)")
        return snapshot.copy_dataset(self.conn, merge, layout, self.store.source.schema)

    def end_snapshot(self) -> None:
        with suppress(psycopg2.Error):
            self.conn.rollback()

    def lost_error(self, exc: psycopg2.Error) -> DatabaseError | None:
        if not is_lost(self.conn):
            return None
        return driver_error(exc, endpoint(self.store).named("source"), self.conn)


def open_ahead(store: Store, role: str, run_id: str, limits: SessionLimits, ahead: Ahead) -> None:
    ahead.session(endpoint(store), store.source.credential, role, run_id, limits)


@contextmanager
def open_source(store: Store, role: str, run_id: str | None = None, limits: SessionLimits | None = None,
                ahead: Ahead | None = None) -> Iterator[PostgresSource]:
    with connection(endpoint(store), store.source.credential, role, run_id or new_run_id(), limits, side="source",
                    ahead=ahead) as conn:
        yield PostgresSource(store, conn)
