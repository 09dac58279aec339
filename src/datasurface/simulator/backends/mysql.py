"""The simulator on MySQL 8 / MariaDB 10.6+ (PyMySQL, InnoDB, utf8mb4).

Ids come from a one-row counter table (`UPDATE … SET v = LAST_INSERT_ID(v + 1)`, then
`SELECT LAST_INSERT_ID()`, which is per session): portable to both servers, unlike MariaDB's sequences.
Sessions run READ COMMITTED, like PostgreSQL's default: no gap locks, so the `FOR UPDATE SKIP LOCKED`
picks of concurrent simulators do not block each other's inserts; lock waits are bounded at 2 s.
The source `host` starting with `/` is the server's socket FILE (as for the ingest's MySQL sources).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pymysql

from datasurface.credentials import Credential
from datasurface.db import Endpoint
from datasurface.errors import DatabaseError
from datasurface.mysqldb import driver_message, error_code, quote
from datasurface.simulator.backends.base import Failure
from datasurface.simulator.tables import ID_SEQUENCE, Table

_RETRY_CODES = {1213, 1205}  # deadlock, lock wait timeout: the statement or transaction was rolled back
_MISSING_CODES = {1146, 1054}  # no such table, unknown column
# the server is unreachable, went away or is shutting down, or the session was killed
_LOST_CODES = {2002, 2003, 2006, 2013, 2014, 2055, 1053, 1927, 4031}
# a connection refused for these may work later (too many connections, the server starting up or going down);
# any other server error (access denied, no such database) will not
_TRANSIENT_CONNECT = _LOST_CODES | {1040, 1203, 1080}
_CODE = re.compile(r": \((\d+)\) ")
_CREATE_LOCK = "datasurface-simulator-create"
_CREATE_LOCK_WAIT = 10  # seconds


class MySql:
    name = "MySQL"
    default_port = 3306
    error: type[Exception] = pymysql.Error
    lock_join_rows = "FOR UPDATE SKIP LOCKED"  # locks the rows of every table of the join

    def connect(self, endpoint: Endpoint, credential: Credential, schema: str | None = None) -> Any:
        where = {"unix_socket": endpoint.host} if endpoint.host.startswith("/") else {
            "host": endpoint.host, "port": endpoint.port}
        try:
            conn = pymysql.connect(
                **where, user=credential.user, password=credential.password, database=endpoint.database,
                charset="utf8mb4", autocommit=False, connect_timeout=5, read_timeout=30, write_timeout=30,
                program_name="datasurface-simulator")
            with conn.cursor() as cur:
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                # a lock held elsewhere must never keep a stop request waiting for long (DDL: a bit longer)
                cur.execute("SET SESSION innodb_lock_wait_timeout = 2, lock_wait_timeout = 10")
            conn.commit()
            return conn
        except pymysql.Error as exc:
            raise DatabaseError(f"cannot connect to MySQL {endpoint.describe()}: {driver_message(exc)}") from None

    def fatal_connect(self, reason: str) -> bool:
        match = _CODE.search(reason)
        return match is not None and int(match.group(1)) not in _TRANSIENT_CONNECT

    def message(self, exc: BaseException) -> str:
        return driver_message(exc)

    def is_closed(self, conn: Any) -> bool:
        return not conn.open

    def classify(self, exc: Exception, conn: Any) -> Failure:
        code = error_code(exc)
        if not conn.open or isinstance(exc, pymysql.InterfaceError) or code in _LOST_CODES:
            return "lost"
        if code in _RETRY_CODES:
            return "retry"
        return "missing" if code in _MISSING_CODES else "other"

    @contextmanager
    def create_lock(self, cur: Any) -> Iterator[None]:
        # a session lock (DDL commits implicitly, so no transaction could hold it): released explicitly
        cur.execute("SELECT GET_LOCK(%s, %s)", [_CREATE_LOCK, _CREATE_LOCK_WAIT])
        row = cur.fetchone()
        if row is None or row[0] != 1:
            raise DatabaseError(f"another simulator held the table-creation lock for {_CREATE_LOCK_WAIT}s")
        try:
            yield
        finally:
            cur.execute("SELECT RELEASE_LOCK(%s)", [_CREATE_LOCK])
            cur.fetchall()

    def create_tables(self, cur: Any, tables: Sequence[Table]) -> None:
        counter = quote(ID_SEQUENCE)
        cur.execute(f"CREATE TABLE IF NOT EXISTS {counter} (id tinyint NOT NULL PRIMARY KEY, v bigint NOT NULL)"
                    " ENGINE=InnoDB")
        cur.execute(f"INSERT IGNORE INTO {counter} (id, v) VALUES (1, 0)")  # noqa: S608 - a quoted constant
        for table in tables:
            parts = [f"{quote(c.name)} {c.type}{'' if c.nullable else ' NOT NULL'}" for c in table.columns]
            parts.append(f"PRIMARY KEY ({', '.join(quote(k) for k in table.primary_key)})")
            parts += [f"KEY {quote(index)} ({', '.join(quote(c) for c in columns)})"
                      for index, columns in table.indexes]
            cur.execute(f"CREATE TABLE IF NOT EXISTS {quote(table.name)} ({', '.join(parts)})"
                        " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")

    def next_id(self, cur: Any) -> int:
        cur.execute(f"UPDATE {quote(ID_SEQUENCE)} SET v = LAST_INSERT_ID(v + 1) WHERE id = 1")  # noqa: S608
        cur.execute("SELECT LAST_INSERT_ID()")
        row = cur.fetchone()
        assert row is not None
        return int(row[0])


MYSQL = MySql()
