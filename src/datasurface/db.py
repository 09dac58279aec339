"""Connections to PostgreSQL (source and merge databases), with errors a user can act on.

psycopg2 directly: the merge is set-based SQL plus COPY streaming, which an ORM layer would only
wrap. The password is passed as a keyword, never inside a DSN string that could be logged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection as PgConnection

from datasurface.credentials import Credential
from datasurface.errors import DatabaseError


class Endpoint(NamedTuple):
    """Where a database is: `host` is a hostname or a Unix-socket directory (starts with /)."""

    host: str
    port: int
    database: str

    def describe(self) -> str:
        where = f"socket {self.host}" if self.host.startswith("/") else f"{self.host}:{self.port}"
        return f"database {self.database!r} at {where}"

    def named(self, role: str) -> str:
        """`the merge database 'merge_db' at pg:5432`: which server a message is about."""
        return f"the {role} {self.describe()}"


def connect(
    endpoint: Endpoint,
    credential: Credential,
    *,
    application_name: str = "datasurface-job",
    connect_timeout: int = 10,
    extra: Mapping[str, int | str] | None = None,
) -> PgConnection:
    """Open a psycopg2 connection; any failure becomes one clear DatabaseError line.

    `extra`: further libpq connection parameters (e.g. TCP keepalives)."""
    params: dict[str, Any] = dict(extra or {})
    try:
        conn: PgConnection = psycopg2.connect(
            host=endpoint.host,
            port=endpoint.port,
            dbname=endpoint.database,
            user=credential.user,
            password=credential.password,
            application_name=application_name,
            connect_timeout=connect_timeout,
            **params,
        )
    except psycopg2.Error as exc:
        raise DatabaseError(f"cannot connect to {endpoint.describe()}: {first_line(exc)}") from exc
    return conn


def is_lost(conn: PgConnection) -> bool:
    """True when the connection to the server is gone (closed, reset, or the server ended the session)."""
    if conn.closed:
        return True
    return bool(conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN)


def driver_error(exc: psycopg2.Error, where: str, conn: PgConnection | None = None) -> DatabaseError:
    """A driver error as one line a user can act on. `where` names the database and server; `conn` is the
    connection the error came from, to tell a lost connection from an error the server reported."""
    detail = first_line(exc)
    if "no message from the libpq" in detail or not detail.strip():
        detail = "the server closed the connection"
    lost = conn is not None and is_lost(conn)
    if lost or (isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError) and _looks_lost(detail)):
        return DatabaseError(f"lost the connection to {where}: {detail}")
    if isinstance(exc, psycopg2.errors.InsufficientPrivilege):
        return DatabaseError(f"{where}: {detail} (the job's role needs this privilege; grant it or use a role "
                             f"that has it)")
    return DatabaseError(f"{where}: {detail}")


def ended_by_server(exc: psycopg2.Error) -> bool:
    """The error says the session was lost (the server ended it, the connection broke), not refused."""
    return isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError) and _looks_lost(first_line(exc))


def _looks_lost(detail: str) -> bool:
    text = detail.lower()
    return any(s in text for s in ("server closed the connection", "terminating connection", "connection already "
                                   "closed", "could not receive data", "could not send data", "connection reset"))


def first_line(exc: BaseException) -> str:
    """The first meaningful line of a driver error, without psycopg2's LINE/HINT detail."""
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line.removeprefix("FATAL:  ").removeprefix("ERROR:  ")
    return type(exc).__name__


def ident(*parts: str) -> sql.Composable:
    """A quoted (optionally schema-qualified) identifier."""
    return sql.Identifier(*parts)


def idents(names: Sequence[str], prefix: str | None = None) -> sql.Composable:
    """`"a", "b"` or, with a prefix, `"t"."a", "t"."b"`: a quoted column list."""
    return sql.SQL(", ").join(sql.Identifier(n) if prefix is None else sql.Identifier(prefix, n) for n in names)


__all__ = ["Endpoint", "PgConnection", "connect", "first_line", "ident", "idents", "psycopg2", "sql"]
