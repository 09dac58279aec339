"""The source types: how a store's source database is checked, snapshotted and copied into staging.

One package per source type (`source.type` in the model), each of the same shape: `__init__.py` the
session (`open_source`, `describe`), `check.py` the source check, `snapshot.py` the read, and `types.py`
where the type mapping is the dialect's own. `postgres` (psycopg2, binary COPY through an OS pipe) and
`mysql` (SQLAlchemy 2 + PyMySQL, a server-side cursor into the merge side's COPY). The engine asks the
store's dialect for a `SourceSession` and never touches the source connection itself.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol, assert_never

from psycopg2 import Error as PgError

from datasurface.db import PgConnection
from datasurface.errors import DatabaseError
from datasurface.merge.layout import DatasetLayout
from datasurface.model import Dataset, Store
from datasurface.sessions import Ahead, SessionLimits


class SourceSession(Protocol):
    """One open connection to a store's source."""

    loads_directly: bool
    """Whether `copy_dataset` can write a first load straight into the merge table (`load_batch`)."""

    def check(self, datasets: Sequence[Dataset]) -> None:
        """Refuse (SourceMismatchError) a missing table or column or a type that does not match the model."""

    def end_run_sessions(self, run_id: str) -> None:
        """End the source sessions of a dead or frozen run this one takes over (where the server allows)."""

    def begin_snapshot(self) -> datetime.datetime:
        """Start the one consistent snapshot every dataset of the batch is read in; its time (§5)."""

    def copy_dataset(self, merge: PgConnection, layout: DatasetLayout, load_batch: int | None = None) -> int:
        """Stream one dataset of the snapshot into its fresh staging table, or, with `load_batch`, straight
        into its merge table as that batch's rows (a first load: the table has no current rows); the number
        of rows."""

    def end_snapshot(self) -> None:
        """End the (read-only) snapshot; never raises."""

    def lost_error(self, exc: PgError) -> DatabaseError | None:
        """The one-line error naming the source when its connection is gone (else None)."""


def open_source(store: Store, role: str, run_id: str | None = None, limits: SessionLimits | None = None,
                ahead: Ahead | None = None) -> AbstractContextManager[SourceSession]:
    """A session on the store's source; `role` names the connection (e.g. its application_name). `ahead`:
    where `open_ahead` may have started opening it."""
    kind = store.source.type
    if kind == "postgres":
        from datasurface.ingest import postgres

        return postgres.open_source(store, role, run_id, limits, ahead)
    if kind == "mysql":
        from datasurface.ingest import mysql

        return mysql.open_source(store, role, run_id, limits)
    assert_never(kind)


def open_ahead(store: Store, role: str, run_id: str, limits: SessionLimits, ahead: Ahead) -> None:
    """Start opening the session `open_source` will open, while the run does other work: a PostgreSQL
    source's (a MySQL source's engine connects when `open_source` needs it)."""
    kind = store.source.type
    if kind == "postgres":
        from datasurface.ingest import postgres

        postgres.open_ahead(store, role, run_id, limits, ahead)
    elif kind != "mysql":
        assert_never(kind)


def describe(store: Store) -> str:
    kind = store.source.type
    if kind == "postgres":
        from datasurface.ingest import postgres

        return postgres.describe(store)
    if kind == "mysql":
        from datasurface.ingest import mysql

        return mysql.describe(store)
    assert_never(kind)


__all__ = ["SourceSession", "describe", "open_ahead", "open_source"]
