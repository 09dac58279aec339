"""MariaDB-source fixtures: a throwaway MariaDB server of the suite's own (private datadir and socket, no
TCP port, run as the `mysql` user; never the machine's system instance) beside the suite's PostgreSQL.

Each test gets a MariaDB source database with its own user, and a PostgreSQL merge database.
scripts/test.sh installs Debian's `mariadb-server` first; without it these tests skip, loudly.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.databases import make_databases

_counter = itertools.count()


@pytest.fixture(scope="session")
def mariadb() -> Iterator[Any]:
    from datasurface.localmysql import LocalMariaDB, find_server

    server = find_server()
    if server is None:
        pytest.skip("SKIPPED LOUDLY: no MariaDB server binary (install Debian's mariadb-server; "
                    "scripts/test.sh does)")
    db = LocalMariaDB(server).start()
    yield db
    db.stop()


@dataclass
class MySqlDatabases:
    """A MariaDB source database and a PostgreSQL merge database, with the job's credential env."""

    server: Any
    pg: Any  # the tests' Databases on PostgreSQL (its merge database is ours)
    source: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return str(self.server.socket)

    def connect_source(self, **kw: Any) -> Any:
        import pymysql

        return pymysql.connect(unix_socket=self.server.socket, user=self.env["SOURCE_USER"],
                               password=self.env["SOURCE_PASSWORD"], database=self.source, charset="utf8mb4",
                               init_command="SET time_zone = '+00:00'", **kw)

    def connect_merge(self) -> Any:
        return self.pg.connect(self.pg.merge)

    def merge_args(self) -> list[str]:
        return list(self.pg.merge_args())


def make_mysql_databases(server: Any, pg_server: Any) -> MySqlDatabases:
    pg = make_databases(pg_server)
    tag = f"{os.getpid()}_{next(_counter)}"
    user, password = f"src_{tag}", secrets.token_hex(8)
    source = f"source_{tag}"
    server.create_database(source, user, password)
    env = {**pg.env, "SOURCE_USER": user, "SOURCE_PASSWORD": password}
    return MySqlDatabases(server=server, pg=pg, source=source, env=env)


@pytest.fixture
def mdbs(mariadb: Any, pg_server: Any) -> MySqlDatabases:
    return make_mysql_databases(mariadb, pg_server)
