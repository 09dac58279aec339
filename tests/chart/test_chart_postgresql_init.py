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

from datasurface.localpg import SUPERUSER, LocalPostgres, find_bin_dir
from tests.support.helm import find, render_chart

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


def server_args(values: dict[str, Any] | None = None) -> list[str]:
    sts = find(render_chart(values, show_only="templates/postgresql/statefulset.yaml"), "StatefulSet",
               "mvp-datasurface-postgresql")
    return sts["spec"]["template"]["spec"]["containers"][0]["args"]  # type: ignore[no-any-return]


def settings_of(args: list[str]) -> dict[str, str]:
    assert args[::2] == ["-c"] * (len(args) // 2)  # the image's entrypoint passes them to postgres
    return dict(a.split("=", 1) for a in args[1::2])


def test_the_server_has_room_for_the_platforms_slots() -> None:
    """Change data capture: wal_level=logical and room for replication slots, a fixed number (adding a platform
    must not change the StatefulSet, which would restart PostgreSQL), or the number given."""
    assert settings_of(server_args()) == {"wal_level": "logical", "max_replication_slots": "32",
                                          "max_wal_senders": "32", "max_slot_wal_keep_size": "-1"}
    platforms = [{"name": "A", "mode": "live", "stores": ["S1", "S2", "S3"], "schedule": "@hourly"},
                 {"name": "B", "mode": "live", "stores": ["S1", "S2"], "schedule": "@hourly"}]
    assert settings_of(server_args({"platforms": platforms})) == settings_of(server_args())
    given = settings_of(server_args({"platforms": platforms,
                                     "postgresql": {"replication": {"maxSlots": 64, "maxSlotWalKeepSize": "20GB"}}}))
    assert (given["max_replication_slots"], given["max_wal_senders"], given["max_slot_wal_keep_size"]) == \
        ("64", "64", "20GB")


def test_a_real_server_takes_the_settings_and_serves_change_data_capture() -> None:
    """The rendered arguments on a real server: they take effect (over the configuration files) and a
    logical replication slot can be created."""
    args = server_args({"postgresql": {"replication": {"maxSlots": 7, "maxSlotWalKeepSize": "3GB"}}})
    pg = LocalPostgres(find_bin_dir("any")).start()
    try:
        pg.stop_server_only()
        pg._run([str(pg._bin() / "pg_ctl"), "-D", str(pg.data_dir), "-l", str(Path(pg._root, "server.log")),
                 "-o", " ".join(args), "-w", "-t", "60", "start"])
        conn = pg.admin_connect()
        with conn.cursor() as cur:
            shown = {}
            for name in ("wal_level", "max_replication_slots", "max_wal_senders", "max_slot_wal_keep_size"):
                cur.execute(f"SHOW {name}")
                shown[name] = cur.fetchone()[0]
            assert shown == {"wal_level": "logical", "max_replication_slots": "7", "max_wal_senders": "7",
                             "max_slot_wal_keep_size": "3GB"}
            cur.execute("SELECT pg_create_logical_replication_slot('ds_probe', 'pgoutput')")
            cur.execute("SELECT pg_drop_replication_slot('ds_probe')")
        conn.close()
    finally:
        pg.stop()
