"""DDL on a platform schema: serialised between concurrent runs, and only when there is DDL to do.

Runs of different stores of one platform create and evolve objects in the same schema (the ledger, their
tables, views and functions, workspace views): two runs creating the ledger at once would collide, so every
change is made under the platform's DDL lock (a transaction-level advisory lock). But nearly every batch
finds everything in place already, and a lock taken by every batch for its checks would serialise the
opening of batches of all the platform's stores. So `ensure` runs its step twice at most: first with DDL
refused, as read-only checks that need no lock; only when the step reaches a DDL statement is it stopped
there (before that statement runs: nothing has been changed) and run again from its start under the lock,
so that it sees what another run committed meanwhile.

Every step given to `ensure` must be "check, then change what is not as wanted", reading before it writes,
which is how layout.py, consumers/ and the ledger are written. A DDL statement is recognised by its first
keyword, and every such statement goes through `cursor.execute` of a cursor made from the connection.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from psycopg2 import sql
from psycopg2.extensions import cursor

from datasurface.db import PgConnection

T = TypeVar("T")

_DDL = re.compile(r"\s*(CREATE|ALTER|DROP|COMMENT|GRANT|REVOKE|SECURITY\s+LABEL|REINDEX|TRUNCATE)\b", re.IGNORECASE)


class _NeedsLock(BaseException):  # a signal, never an error; BaseException: no `except Exception` eats it
    """Raised by the read-only pass at its first DDL statement."""


class _ReadOnly(cursor):
    """A cursor that refuses DDL (raising `_NeedsLock` before sending it), and runs everything else."""

    def execute(self, query: Any, vars: Any = None) -> None:  # `vars`: psycopg2's own parameter name
        text = query.as_string(self.connection) if isinstance(query, sql.Composable) else query
        if isinstance(text, bytes):
            text = text.decode()
        if _DDL.match(text):
            raise _NeedsLock
        super().execute(query, vars)


def lock(conn: PgConnection, schema: str) -> None:
    """The platform's DDL lock, until the end of the caller's transaction (also taken by observe/runs.py)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"datasurface-ddl/{schema}",))


def ensure(conn: PgConnection, schema: str, step: Callable[[], T]) -> tuple[T, bool]:
    """Run `step` in the caller's transaction, under the platform's DDL lock only if it changes something;
    its result, and whether it ran under the lock."""
    factory = conn.cursor_factory
    conn.cursor_factory = _ReadOnly
    try:
        return step(), False
    except _NeedsLock:
        pass
    finally:
        conn.cursor_factory = factory
    lock(conn, schema)
    return step(), True
