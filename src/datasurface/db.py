"""Connections to PostgreSQL (source and merge databases), with errors a user can act on.

psycopg2 directly: the merge is set-based SQL plus COPY streaming, which an ORM layer would only
wrap. The password is passed as a keyword, never inside a DSN string that could be logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection as PgConnection

from datasurface.credentials import Credential
from datasurface.errors import DatabaseError


@dataclass(frozen=True)
class Endpoint:
    """Where a database is: `host` is a hostname or a Unix-socket directory (starts with /)."""

    host: str
    port: int
    database: str

    def describe(self) -> str:
        where = f"socket {self.host}" if self.host.startswith("/") else f"{self.host}:{self.port}"
        return f"database {self.database!r} at {where}"


def connect(
    endpoint: Endpoint,
    credential: Credential,
    *,
    application_name: str = "datasurface-job",
    connect_timeout: int = 10,
) -> PgConnection:
    """Open a psycopg2 connection; any failure becomes one clear DatabaseError line."""
    try:
        conn = psycopg2.connect(
            host=endpoint.host,
            port=endpoint.port,
            dbname=endpoint.database,
            user=credential.user,
            password=credential.password,
            application_name=application_name,
            connect_timeout=connect_timeout,
        )
    except psycopg2.Error as exc:
        raise DatabaseError(f"cannot connect to {endpoint.describe()}: {first_line(exc)}") from exc
    return conn


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
