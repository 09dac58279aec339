"""The simulator on PostgreSQL (psycopg2): a sequence for ids, a transaction-scoped advisory lock."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg2
from psycopg2.extensions import connection as PgConnection

from datasurface.credentials import Credential
from datasurface.db import Endpoint, connect, first_line, ident, sql
from datasurface.simulator.backends.base import Failure
from datasurface.simulator.tables import ID_SEQUENCE, Table

# serialization failure, deadlock, lock timeout: the transaction was rolled back, try it again
_RETRY_CODES = {"40001", "40P01", "55P03"}
_MISSING_CODES = {"42P01", "42703"}  # undefined table, undefined column
# connection errors that waiting will not fix
_FATAL_CONNECT = ("authentication failed", "does not exist", "no password supplied", "no pg_hba.conf entry",
                  "permission denied")
# An arbitrary constant: every simulator creating the tables at once serialises on it.
_CREATE_LOCK = 0x5D5_0001


class Postgres:
    name = "PostgreSQL"
    default_port = 5432
    error: type[Exception] = psycopg2.Error
    lock_join_rows = "FOR UPDATE OF a, c SKIP LOCKED"

    def connect(self, endpoint: Endpoint, credential: Credential, schema: str | None = None) -> PgConnection:
        conn = connect(endpoint, credential, application_name="datasurface-simulator", connect_timeout=5)
        with conn.cursor() as cur:
            # a lock held elsewhere must never keep a stop request waiting for long
            cur.execute("SET lock_timeout = '2s'")
            if schema is not None:  # the tables (and the id sequence) of a model store's schema
                cur.execute(sql.SQL("SET search_path = {}").format(ident(schema)))
        conn.commit()
        return conn

    def fatal_connect(self, reason: str) -> bool:
        return any(m in reason for m in _FATAL_CONNECT)

    def message(self, exc: BaseException) -> str:
        return first_line(exc)

    def is_closed(self, conn: Any) -> bool:
        return bool(conn.closed)

    def classify(self, exc: Exception, conn: Any) -> Failure:
        code = getattr(exc, "pgcode", None) or ""
        # 08: connection exception, 57P: operator intervention (shutdown, crash), none: lost mid-call
        if conn.closed or isinstance(exc, psycopg2.InterfaceError) or (
                isinstance(exc, psycopg2.OperationalError) and (not code or code.startswith(("08", "57P")))):
            return "lost"
        if code in _RETRY_CODES:
            return "retry"
        return "missing" if code in _MISSING_CODES else "other"

    @contextmanager
    def create_lock(self, cur: Any) -> Iterator[None]:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [_CREATE_LOCK])  # released by the commit
        yield

    def create_tables(self, cur: Any, tables: Sequence[Table]) -> None:
        cur.execute(sql.SQL("CREATE SEQUENCE IF NOT EXISTS {}").format(ident(ID_SEQUENCE)))
        for table in tables:
            cols = [sql.SQL("{} {}{}").format(ident(c.name), sql.SQL(c.type),
                                              sql.SQL("" if c.nullable else " NOT NULL")) for c in table.columns]
            cols.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(ident(k) for k in table.primary_key)))
            cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(ident(table.name),
                                                                            sql.SQL(", ").join(cols)))
            for index, columns in table.indexes:
                cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                    ident(index), ident(table.name), sql.SQL(", ").join(ident(c) for c in columns)))

    def next_id(self, cur: Any) -> int:
        cur.execute("SELECT nextval(%s)", [ID_SEQUENCE])
        row = cur.fetchone()
        assert row is not None
        return int(row[0])


POSTGRES = Postgres()
