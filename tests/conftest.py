"""Shared fixtures: real PostgreSQL servers started by the suite itself (no mocks).

`pg_server` is the machine's PostgreSQL (15 here) or, without one, the embedded server;
`pg_servers` offers every version available (system 15, embedded 16 and 18) for range tests.
Each test gets its own source and merge databases with their own roles via `dbs`.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_counter = itertools.count()


@dataclass
class Databases:
    """A source and a merge database on one server, with credential env vars for the job."""

    server: object  # LocalPostgres
    source: str
    merge: str
    host: str
    port: int
    env: dict[str, str] = field(default_factory=dict)

    def connect(self, database: str):  # type: ignore[no-untyped-def]
        import psycopg2

        role = "src" if database == self.source else "mrg"
        prefix = "SOURCE" if role == "src" else "MERGE"
        return psycopg2.connect(host=self.host, port=self.port, dbname=database,
                                user=self.env[f"{prefix}_USER"], password=self.env[f"{prefix}_PASSWORD"])

    def merge_args(self) -> list[str]:
        return ["--merge-host", self.host, "--merge-port", str(self.port), "--merge-database", self.merge,
                "--merge-credential", "merge"]


def _start(prefer: str):  # type: ignore[no-untyped-def]
    from datasurface.localpg import LocalPostgres, find_bin_dir

    return LocalPostgres(find_bin_dir(prefer)).start()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    server = _start("any")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_servers(pg_server: object) -> Iterator[dict[int, object]]:
    """Every PostgreSQL major available here: the system one plus the embedded wheels' (16, 18)."""
    from datasurface.localpg import LocalPostgres, embedded_bin_dirs, server_version

    servers = {pg_server.version: pg_server}  # type: ignore[attr-defined]
    extra = []
    for bin_dir in embedded_bin_dirs():
        if server_version(bin_dir) not in servers:
            server = LocalPostgres(bin_dir).start()
            servers[server.version] = server
            extra.append(server)
    yield servers
    for s in extra:
        s.stop()


def make_databases(server: object) -> Databases:
    # `from tests.conftest import make_databases` loads this file a second time (pytest's own copy is module
    # `conftest`), with a counter of its own: the random part keeps the names of both copies apart
    n = next(_counter)
    tag = f"{os.getpid()}_{n}_{secrets.token_hex(2)}"
    src_user, mrg_user = f"src_{tag}", f"mrg_{tag}"
    src_pw, mrg_pw = secrets.token_hex(8), secrets.token_hex(8)
    server.create_role(src_user, src_pw)  # type: ignore[attr-defined]
    server.create_role(mrg_user, mrg_pw)  # type: ignore[attr-defined]
    source, merge = f"source_{tag}", f"merge_{tag}"
    server.create_database(source, owner=src_user)  # type: ignore[attr-defined]
    server.create_database(merge, owner=mrg_user)  # type: ignore[attr-defined]
    env = {"SOURCE_USER": src_user, "SOURCE_PASSWORD": src_pw, "MERGE_USER": mrg_user, "MERGE_PASSWORD": mrg_pw}
    return Databases(server=server, source=source, merge=merge,
                     host=server.socket_dir, port=server.port, env=env)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def databases_on() -> object:
    """A factory: fresh source and merge databases on a given server."""
    return make_databases


@pytest.fixture
def dbs(pg_server: object) -> Databases:
    return make_databases(pg_server)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
