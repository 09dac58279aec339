"""MySQL 8 / MariaDB 10.6+ sources, through SQLAlchemy 2 and PyMySQL: the session a run opens on one.

- Connection: an SQLAlchemy `URL.create(...)` (the password is a URL attribute, never text in a URL
  string; SQLAlchemy renders it as `***`), no pool, bounded connect/read/write timeouts, the session's
  `time_zone` set to `+00:00` so `timestamp` columns are read in UTC.
- Source check: check.py, with the type mapping of types.py.
- Snapshot and reads: snapshot.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from datasurface import credentials
from datasurface.db import Endpoint
from datasurface.errors import DatabaseError
from datasurface.ingest.mysql.check import check_dataset
from datasurface.ingest.mysql.snapshot import MySqlSnapshot
from datasurface.model import Dataset, Store
from datasurface.mysqldb import driver_message
from datasurface.sessions import SessionLimits, application_name, new_run_id

DRIVER = "mysql+pymysql"
CONNECT_TIMEOUT = 10
IO_TIMEOUT = 600  # seconds a read or write on the source socket may wait (a dead server, not a slow query)


def session_settings(limits: SessionLimits) -> str:
    """The MySQL counterparts of the job's PostgreSQL session limits (sessions.py), as one SET: the server
    ends a session whose client went silent (`wait_timeout` between statements, `net_read_timeout` /
    `net_write_timeout` while a result streams to a frozen or vanished client), and a read waits for a
    metadata lock (a source DDL in progress) at most the run's lock budget instead of a year."""
    idle = max(1, int(limits.idle_timeout))
    return (f"SET time_zone = '+00:00', wait_timeout = {idle}, net_write_timeout = {idle}, "
            f"net_read_timeout = {idle}, lock_wait_timeout = {max(1, int(limits.lock_timeout))}")


def engine_for(store: Store, cred: credentials.Credential, limits: SessionLimits | None = None,
               program: str = "datasurface-job") -> Any:
    """An SQLAlchemy engine for the store's source; `host` starting with / is the server's socket file.
    `program` names the session (performance_schema.session_connect_attrs `program_name`)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import URL
    from sqlalchemy.pool import NullPool

    src = store.source
    query = {"charset": "utf8mb4"}
    if src.host.startswith("/"):
        url = URL.create(DRIVER, username=cred.user, password=cred.password, database=src.database,
                         query={**query, "unix_socket": src.host})
    else:
        url = URL.create(DRIVER, username=cred.user, password=cred.password, host=src.host, port=src.port,
                         database=src.database, query=query)
    return create_engine(url, poolclass=NullPool, hide_parameters=True, connect_args={
        "connect_timeout": CONNECT_TIMEOUT, "read_timeout": IO_TIMEOUT, "write_timeout": IO_TIMEOUT,
        "program_name": program, "init_command": session_settings(limits or SessionLimits())})


def describe(store: Store) -> str:
    return "MySQL " + Endpoint(store.source.host, store.source.port, store.source.database).describe()


class MySqlSource(MySqlSnapshot):
    """One connection to a MySQL/MariaDB source: check (check.py), snapshot and copy datasets (snapshot.py), end."""

    def __init__(self, store: Store, engine: Any, conn: Any):
        super().__init__(store, engine, conn, describe(store))
        self.mariadb = bool(conn.dialect.is_mariadb)

    def check(self, datasets: Sequence[Dataset]) -> None:
        for dataset in datasets:
            self.types[dataset.name] = check_dataset(self.conn, self.store, dataset, self.mariadb)

    def end_run_sessions(self, run_id: str) -> None:
        """Nothing to do: a dead run's MySQL session ends by itself (its socket is gone, or the bounded
        net_write_timeout / wait_timeout of its session run out), and its read view with it."""

    def lost_error(self, exc: Any) -> DatabaseError | None:
        return None  # MySQL errors are already one line naming this source (SnapshotError, DatabaseError)


@contextmanager
def open_source(store: Store, role: str, run_id: str | None = None,
                limits: SessionLimits | None = None) -> Iterator[MySqlSource]:
    """A session on the store's MySQL source, named and bounded like the run's PostgreSQL sessions
    (`session_settings`; the client's own bounds are CONNECT_TIMEOUT and IO_TIMEOUT)."""
    cred = credentials.resolve(store.source.credential)
    engine = engine_for(store, cred, limits, application_name(role, run_id or new_run_id()))
    try:
        try:
            conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except Exception as exc:
            raise DatabaseError(f"cannot connect to {describe(store)}: {driver_message(exc)}") from exc
        try:
            yield MySqlSource(store, engine, conn)
        finally:
            with suppress(Exception):
                conn.close()
    finally:
        engine.dispose()
