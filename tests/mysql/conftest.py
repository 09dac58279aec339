"""MariaDB-source fixtures: the suite's throwaway MariaDB server (`mariadb`, tests/conftest.py: private
datadir and socket, no TCP port, run as the `mysql` user; never the machine's system instance) beside the
suite's PostgreSQL. Each test gets a MariaDB source database with its own user, and a PostgreSQL merge
database. scripts/test.sh installs Debian's `mariadb-server` first; without it these tests skip, loudly.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.mysql import MySqlDatabases, make_mysql_databases


@pytest.fixture
def mysql_dbs(mariadb: Any, pg_server: Any) -> MySqlDatabases:
    return make_mysql_databases(mariadb, pg_server)
