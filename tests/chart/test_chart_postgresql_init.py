"""The bundled PostgreSQL's init script (rendered from the chart) run against a real throwaway server:
three databases, each owned by its own role, closed to the other roles; passwords only from env."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from helm import find, render_chart

from datasurface.localpg import SUPERUSER, LocalPostgres, find_bin_dir

PASSWORDS = {"source": "s'ource \"pw\" $x", "merge": "m3rge-pw;--", "airflow": "a1rflow:pw@/"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pg = LocalPostgres(find_bin_dir("any")).start()
    if pg.version < 15:
        pg.stop()
        pytest.skip("psql \\getenv needs PostgreSQL 15+")
    script = find(render_chart(show_only="templates/postgresql/initdb-configmap.yaml"), "ConfigMap",
                  "mvp-datasurface-postgresql-initdb")["data"]["10-datasurface.sh"]
    path = tmp_path_factory.mktemp("initdb") / "10-datasurface.sh"
    path.write_text(script)
    env = {**os.environ, "PATH": f"{pg._bin()}{os.pathsep}{os.environ['PATH']}", "POSTGRES_USER": SUPERUSER,
           "PGHOST": pg.socket_dir, "PGPORT": str(pg.port), "PGPASSWORD": pg.password}
    for role, password in PASSWORDS.items():
        env[f"DS_{role.upper()}_USERNAME"] = role
        env[f"DS_{role.upper()}_PASSWORD"] = password
    proc = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, timeout=60, check=False)
    pg.init_output = proc.stdout + proc.stderr
    assert proc.returncode == 0, pg.init_output
    yield pg
    pg.stop()


def connect(pg: Any, role: str, database: str) -> Any:
    return psycopg2.connect(host=pg.socket_dir, port=pg.port, dbname=database, user=role,
                            password=PASSWORDS[role])


@pytest.mark.parametrize(("role", "database"), [("source", "customer_db"), ("merge", "merge_db"),
                                                ("airflow", "airflow_db")])
def test_each_role_owns_its_database(server: Any, role: str, database: str) -> None:
    conn = connect(server, role, database)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()")
        assert cur.fetchone() == (role,)
        cur.execute('CREATE SCHEMA "probe"; CREATE TABLE "probe"."t" (id int); DROP SCHEMA "probe" CASCADE')
        cur.execute("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user")
        assert cur.fetchone() == (False, False, False)
    conn.close()


@pytest.mark.parametrize(("role", "database", "replication"), [("source", "customer_db", True),
                                                               ("merge", "merge_db", False),
                                                               ("airflow", "airflow_db", False)])
def test_only_the_source_role_may_read_replication_slots(server: Any, role: str, database: str,
                                                         replication: bool) -> None:
    """Change data capture reads the source's changes from a replication slot: REPLICATION, nothing more."""
    conn = connect(server, role, database)
    with conn.cursor() as cur:
        cur.execute("SELECT rolreplication FROM pg_roles WHERE rolname = current_user")
        assert cur.fetchone() == (replication,)
    conn.close()


@pytest.mark.parametrize(("role", "database"), [("source", "merge_db"), ("merge", "airflow_db"),
                                                ("airflow", "customer_db")])
def test_roles_cannot_connect_to_other_databases(server: Any, role: str, database: str) -> None:
    with pytest.raises(psycopg2.OperationalError, match="permission denied"):
        connect(server, role, database)


def test_no_password_in_the_output_or_the_server_log(server: Any) -> None:
    log = Path(server._root, "server.log").read_text()
    for password in PASSWORDS.values():
        assert password not in server.init_output
        assert password not in log
