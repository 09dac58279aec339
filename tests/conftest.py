"""Shared fixtures: real PostgreSQL servers started by the suite itself (no mocks).

`pg_server` is the machine's PostgreSQL (15 here) or, without one, the embedded server;
`pg_servers` offers every version available (system 15, embedded 16 and 18) for range tests.
Each test gets its own source and merge databases with their own roles via `dbs`. `mariadb` is a
throwaway MariaDB server of the suite's own, for MySQL sources (skipped, loudly, without its binaries).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.databases import Databases, make_databases


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
