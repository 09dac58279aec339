"""The simulator (`simulate --db-type mysql`) against the suite's real throwaway MariaDB: the tables and
their types, the invariant, concurrent simulators, --seed, signals, a restarted server, the error exits,
and end to end: what the simulator did to MariaDB is what `datasurface-job merge` ingests."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from datasurface.simulator import ensure_tables, invariant_violations
from datasurface.simulator.backends import backend_for
from datasurface.simulator.tables import SEED_CUSTOMERS, TABLES
from tests.support.engine import merge_args, run_job, write_model
from tests.support.simulator import (
    OP_LINE,
    assert_consistent,
    assert_invariant_detects_breakage,
    assert_no_secrets,
    count,
    job_env,
    run_simulate,
    simulate_argv,
    summary_counts,
    table_rows,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)
MYSQL = backend_for("mysql")


def argv(mysql_dbs: Any, *args: str, database: str | None = None) -> list[str]:
    return simulate_argv(mysql_dbs.host, None, database or mysql_dbs.source, "--db-type", "mysql", *args)


def test_create_tables_is_idempotent_and_has_the_model_types(mysql_dbs: Any) -> None:
    conn = mysql_dbs.connect_source()
    assert ensure_tables(conn, MYSQL) == SEED_CUSTOMERS
    first = {t.name: table_rows(conn, t.name) for t in TABLES}
    assert len(first["customers"]) == SEED_CUSTOMERS and len(first["addresses"]) == SEED_CUSTOMERS
    assert invariant_violations(conn) == []
    assert ensure_tables(conn, MYSQL) == 0
    assert {t.name: table_rows(conn, t.name) for t in TABLES} == first
    with conn.cursor() as cur:
        cur.execute("SELECT table_name, column_name, column_type, is_nullable FROM information_schema.columns "
                    "WHERE table_schema = DATABASE() ORDER BY 1, ordinal_position")
        columns = {(t, c): (ty, n) for t, c, ty, n in cur.fetchall()}
        cur.execute("SELECT table_name, engine, table_collation FROM information_schema.tables "
                    "WHERE table_schema = DATABASE()")
        tables = {t: (e, col) for t, e, col in cur.fetchall()}
    conn.rollback()
    for table in TABLES:  # exactly the model's types (README: varchar(n) and date map to themselves)
        for c in table.columns:
            assert columns[(table.name, c.name)] == (c.type, "YES" if c.nullable else "NO")
        assert tables[table.name][0] == "InnoDB" and tables[table.name][1].startswith("utf8mb4")
    # through the CLI too: a second --create-tables neither fails nor seeds again
    proc = run_simulate(mysql_dbs, None, "--db-type", "mysql", "--create-tables", "--max-changes", "1",
                        "--min-interval", "0", "--max-interval", "0")
    assert proc.returncode == 0, proc.stderr
    assert "seeded" not in proc.stderr and "MySQL database" in proc.stderr
    assert count(conn, "customers") in (SEED_CUSTOMERS, SEED_CUSTOMERS + 1)
    assert_invariant_detects_breakage(conn)
    conn.close()


def test_two_concurrent_simulators_create_and_change_the_same_tables(mysql_dbs: Any) -> None:
    """Both start on an empty database (the creation lock) and then work on the same rows."""
    procs = [subprocess.Popen(argv(mysql_dbs, "--create-tables", "--max-changes", "300", "--min-interval", "0",
                                   "--max-interval", "0.005", "--verbose"),
                              env=job_env(mysql_dbs.env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=90) for p in procs]
    total: Counter[str] = Counter()
    windows = []
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        total += summary_counts(err)
        stamps = re.findall(r"^(\S+ \S+) INFO .*?: op \d+ ", err, re.M)
        windows.append((stamps[0], stamps[-1]))
    assert sum("seeded" in err for _out, err in outputs) == 1  # one of them seeded, under the lock
    assert max(w[0] for w in windows) < min(w[1] for w in windows), windows  # they really overlapped
    assert sum(total.values()) == 600
    conn = mysql_dbs.connect_source()
    assert_consistent(conn, total)  # no lost or duplicated ids across the two
    conn.close()


def test_seed_makes_the_operations_reproducible(mysql_dbs: Any) -> None:
    twin, other = f"{mysql_dbs.source}_twin", f"{mysql_dbs.source}_other"
    for name in (twin, other):
        mysql_dbs.server.create_database(name, mysql_dbs.env["SOURCE_USER"], mysql_dbs.env["SOURCE_PASSWORD"])
    procs = {database: subprocess.Popen(
        argv(mysql_dbs, "--create-tables", "--seed", seed, "--max-changes", "200", "--min-interval", "0",
             "--max-interval", "0", "--verbose", database=database),
        env=job_env(mysql_dbs.env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for database, seed in ((mysql_dbs.source, "42"), (twin, "42"), (other, "43"))}
    runs = {}
    for database, proc in procs.items():
        _out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        conn = mysql_dbs.connect_source()
        conn.select_db(database)
        runs[database] = (OP_LINE.findall(err), {t.name: table_rows(conn, t.name) for t in TABLES})
        conn.close()
    assert len(runs[mysql_dbs.source][0]) == 200
    assert runs[mysql_dbs.source] == runs[twin]  # same operations, same resulting data
    assert runs[mysql_dbs.source][0] != runs[other][0]
    assert runs[mysql_dbs.source][1] != runs[other][1]


@pytest.mark.parametrize("interval", ["0", "5"])
def test_sigterm_stops_within_a_second(mysql_dbs: Any, tmp_path: Path, interval: str) -> None:
    log = tmp_path / "stderr.log"
    with log.open("w") as err:
        proc = subprocess.Popen(argv(mysql_dbs, "--create-tables", "--min-interval", interval, "--max-interval",
                                     interval, "--verbose"),
                                env=job_env(mysql_dbs.env), stdout=subprocess.PIPE, stderr=err, text=True)
        wait_for(log, r"op 1 " if interval != "0" else r"op 100 ")
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        elapsed = time.monotonic() - sent
    text = log.read_text()
    assert proc.returncode == 0, text
    assert elapsed <= 1.0, f"took {elapsed:.2f}s to stop"
    counts = summary_counts(text)
    assert sum(counts.values()) == len(OP_LINE.findall(text))  # every operation begun was finished
    conn = mysql_dbs.connect_source()
    assert_consistent(conn, counts)
    conn.close()


def test_survives_a_server_restart(mariadb: Any, tmp_path: Path) -> None:
    """A MariaDB of its own, shut down and started again under a running simulator."""
    from datasurface.localmysql import LocalMariaDB

    # a folder the server's user can reach (not pytest's tmp_path); kept across the restart, removed at the end
    root = Path(tempfile.mkdtemp(prefix="dsmy-restart-"))
    server = LocalMariaDB(mariadb.server, base_dir=root, buffer_pool="32M").start()
    try:
        env = {"SOURCE_USER": "sim", "SOURCE_PASSWORD": "restart-test-pw"}
        server.create_database("customer_db", "sim", env["SOURCE_PASSWORD"])
        log = tmp_path / "stderr.log"
        with log.open("w") as err:
            proc = subprocess.Popen(
                simulate_argv(server.socket, None, "customer_db", "--db-type", "mysql", "--create-tables",
                              "--min-interval", "0.005", "--max-interval", "0.01", "--max-disconnected", "60",
                              "--verbose"),
                env=job_env(env), stdout=subprocess.PIPE, stderr=err, text=True)
            try:
                wait_for(log, r"op 20 ")
                server.stop(remove=False)
                time.sleep(1.0)
                assert proc.poll() is None, log.read_text()  # still alive without its database
                server.start()
                wait_for(log, r"reconnected to .*\n(.*\n)*.* op \d+ ", timeout=30)
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=10)
            finally:
                if proc.poll() is None:
                    proc.kill()
        text = log.read_text()
        assert proc.returncode == 0, text
        assert_no_secrets(text, env)
        outage = [line for line in text.splitlines() if "WARNING" in line and "reconnected" not in line]
        assert 1 <= len(outage) <= 2, outage  # the lost connection (and the first failed reconnect), no more
        assert text.count("reconnected to") == 1
        import pymysql

        conn = pymysql.connect(unix_socket=server.socket, user="sim", password=env["SOURCE_PASSWORD"],
                               database="customer_db")
        assert_consistent(conn, summary_counts(text))
        conn.close()
    finally:
        server.stop(remove=True)


def test_bad_credentials_and_no_server_are_one_line(mysql_dbs: Any, tmp_path: Path) -> None:
    env = dict(mysql_dbs.env, SOURCE_PASSWORD="not-the-password")
    started = time.monotonic()
    proc = run_simulate(mysql_dbs, None, "--db-type", "mysql", "--create-tables", env=env)
    assert proc.returncode == 1
    assert time.monotonic() - started < 20  # no waiting for a password to become right
    errors = [line for line in proc.stderr.splitlines() if line.startswith("datasurface-job: error:")]
    assert len(errors) == 1 and "(1045) Access denied" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "not-the-password" not in proc.stderr + proc.stdout
    # the tables are missing and no --create-tables: one line that says what to do
    proc = run_simulate(mysql_dbs, None, "--db-type", "mysql", "--max-changes", "1")
    assert proc.returncode == 1
    assert "(1146)" in proc.stderr and "--create-tables" in proc.stderr and "Traceback" not in proc.stderr
    # no server behind the socket: retries, then one line after --max-disconnected
    proc = subprocess.run(simulate_argv(str(tmp_path / "none.sock"), None, "customer_db", "--db-type", "mysql",
                                        "--max-disconnected", "1"),
                          env=job_env(mysql_dbs.env), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("datasurface-job: error:")]
    assert len(errors) == 1 and "no connection to" in errors[0] and "(2003)" in errors[0], proc.stderr
    proc = run_simulate(mysql_dbs, None, "--db-type", "oracle")
    assert proc.returncode == 2 and "oracle" in proc.stderr


def _model(mysql_dbs: Any, repo_root: Path, folder: Path) -> Path:
    doc = yaml.safe_load((repo_root / "examples/model/datasurface.yaml").read_text())
    src = doc["stores"][0]["source"]
    src.update(type="mysql", host=mysql_dbs.host, database=mysql_dbs.source)
    del src["port"], src["schema"]
    return write_model(folder, doc)


def test_the_simulator_drives_mariadb_and_merge_ingests_it(mysql_dbs: Any, repo_root: Path, tmp_path: Path) -> None:
    """End to end: simulate → live and forensic merge → `_current` equals the source, twice over: first with
    the flags (--db-type mysql --host ...), then with the store of the model (--model M --store Store1:
    its source type, socket and database)."""
    model = _model(mysql_dbs, repo_root, tmp_path / "model")
    src = mysql_dbs.connect_source()
    mrg = mysql_dbs.connect_merge()
    for round_, changes in enumerate(("150", "100")):
        common = ["--create-tables", "--max-changes", changes, "--min-interval", "0", "--max-interval", "0",
                  "--seed", str(round_)]
        if round_ == 0:
            proc = run_simulate(mysql_dbs, None, "--db-type", "mysql", *common)
        else:
            proc = subprocess.run([sys.executable, "-m", "datasurface.cli", "simulate", "--model", str(model),
                                   "--store", "Store1", *common], env=job_env(mysql_dbs.env), capture_output=True,
                                  text=True, timeout=90)
            assert f"MySQL database '{mysql_dbs.source}'" in proc.stderr, proc.stderr
            assert "(store Store1)" in proc.stderr, proc.stderr
        assert proc.returncode == 0, proc.stderr
        for platform, mode in (("Live", "live"), ("Forensic", "forensic")):
            job = run_job(merge_args(model, platform, mode, mysql_dbs), mysql_dbs.env)
            assert job.returncode == 0, job.stderr
            for table in TABLES:
                cols = ", ".join(c.name for c in table.columns)
                with mrg.cursor() as cur:
                    cur.execute(f"SELECT {cols} FROM {platform.lower()}.store1_{table.name}_current ORDER BY id")
                    merged = cur.fetchall()
                mrg.rollback()
                with src.cursor() as cur:
                    cur.execute(f"SELECT {cols} FROM {table.name} ORDER BY id")
                    source = list(cur.fetchall())
                src.rollback()
                assert merged == source, (platform, table.name)
    with mrg.cursor() as cur:  # the forensic history has every version: more rows than are current
        cur.execute("SELECT (SELECT count(*) FROM forensic.store1_addresses),"
                    " (SELECT count(*) FROM forensic.store1_addresses_current)")
        history, current = cur.fetchone()
    assert history > current
    src.close()
    mrg.close()
