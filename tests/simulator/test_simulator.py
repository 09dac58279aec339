"""The data change simulator (docs/cli.md) against a real PostgreSQL: tables, the invariant (on every source
type: MariaDB too), concurrency, --seed, signals, a restarted database and the error exits."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import psycopg2
import pytest
import yaml

from datasurface.credentials import resolve
from datasurface.model.schema import SOURCE_TYPES
from datasurface.simulator import Simulator, ensure_tables, invariant_violations
from datasurface.simulator.operations import OPERATIONS
from datasurface.simulator.tables import SEED_CUSTOMERS, TABLES
from tests.support.simulator import (
    OP_LINE,
    assert_consistent,
    assert_invariant_detects_breakage,
    assert_no_secrets,
    count,
    job_env,
    run_simulate,
    simulate_argv,
    simulated_source,
    summary_counts,
    table_rows,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)



# --- tables ---------------------------------------------------------------------------------------


def test_tables_match_the_example_model(repo_root: Path) -> None:
    """The ingest checks source types against the model: the simulator's tables must be the model's."""
    model = yaml.safe_load((repo_root / "examples/model/datasurface.yaml").read_text())
    datasets = {d["name"]: d for d in model["stores"][0]["datasets"]}
    for table in TABLES:
        ds = datasets[table.name]
        assert ds["primaryKey"] == list(table.primary_key)
        assert [(c["name"], c["type"], c.get("nullable", True)) for c in ds["columns"]] == [
            (c.name, c.type, c.nullable) for c in table.columns]


def test_create_tables_is_idempotent(dbs) -> None:  # type: ignore[no-untyped-def]
    conn = dbs.connect(dbs.source)
    assert ensure_tables(conn) == SEED_CUSTOMERS
    first = {t.name: table_rows(conn, t.name) for t in TABLES}
    assert len(first["customers"]) == SEED_CUSTOMERS
    assert invariant_violations(conn) == []

    assert ensure_tables(conn) == 0
    assert {t.name: table_rows(conn, t.name) for t in TABLES} == first
    with conn.cursor() as cur:
        cur.execute("""SELECT table_name, column_name, data_type, character_maximum_length, is_nullable
                       FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, ordinal_position""")
        columns = cur.fetchall()
    assert ("customers", "dob", "date", None, "YES") in columns
    assert ("addresses", "customerid", "character varying", 20, "NO") in columns
    assert ("addresses", "zipcode", "character varying", 30, "YES") in columns

    # through the CLI too: a second --create-tables neither fails nor seeds again
    proc = run_simulate(dbs, None, "--create-tables", "--max-changes", "1", "--max-interval", "0",
                        "--min-interval", "0")
    assert proc.returncode == 0, proc.stderr
    assert "seeded" not in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "DATASURFACE_RESULT_CODE=0"
    assert count(conn, "customers") in (SEED_CUSTOMERS, SEED_CUSTOMERS + 1)
    assert_invariant_detects_breakage(conn)
    conn.close()


# --- the invariant ----------------------------------------------------------------------------------


# hundreds of operations of every kind; fewer on MariaDB, whose statements take longer here
OPERATIONS_RUN = {"postgres": 600, "mysql": 300}


@pytest.mark.parametrize("source_type", SOURCE_TYPES)
def test_invariant_holds_after_hundreds_of_operations(source_type: str, request: pytest.FixtureRequest) -> None:
    source = simulated_source(source_type, request)
    sim = Simulator(source.endpoint, resolve("source", source.env), seed=5, backend=source.backend)
    sim.create_tables()
    counts = sim.run(OPERATIONS_RUN[source_type])
    sim.close()
    assert sum(counts.values()) == OPERATIONS_RUN[source_type]
    assert set(counts) == set(OPERATIONS), counts  # every kind of operation happened
    conn = source.connect()
    assert_consistent(conn, counts)
    with conn.cursor() as cur:  # some customers have a billing address that is not the primary one
        cur.execute("SELECT count(*) FROM customers WHERE billingaddressid <> primaryaddressid")
        assert cur.fetchone()[0] > 0
        cur.execute("SELECT count(*) FROM customers WHERE email IS NULL OR phone IS NULL OR dob IS NULL")
        assert cur.fetchone()[0] == 0
    conn.close()


def test_three_concurrent_simulators(dbs) -> None:  # type: ignore[no-untyped-def]
    argv = simulate_argv(dbs.host, dbs.port, dbs.source, "--create-tables", "--max-changes", "500",
                         "--min-interval", "0", "--max-interval", "0.01", "--verbose")
    procs = [subprocess.Popen(argv, env=job_env(dbs.env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=90) for p in procs]
    windows = []
    total: Counter[str] = Counter()
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        total += summary_counts(err)
        stamps = re.findall(r"^(\S+ \S+) INFO .*?: op \d+ ", err, re.M)
        windows.append((stamps[0], stamps[-1]))
    # the three really ran at the same time (else this test would prove nothing)
    assert max(w[0] for w in windows) < min(w[1] for w in windows), windows
    assert sum(total.values()) == 1500
    conn = dbs.connect(dbs.source)
    assert_consistent(conn, total)  # also: no lost or duplicated ids across the three
    conn.close()


# --- --seed -----------------------------------------------------------------------------------------


def test_seed_makes_the_operations_reproducible(dbs, pg_server) -> None:  # type: ignore[no-untyped-def]
    twin, other = f"{dbs.source}_twin", f"{dbs.source}_other"
    for name in (twin, other):
        pg_server.create_database(name, owner=dbs.env["SOURCE_USER"])
    runs = {}
    procs = {}
    for database, seed in ((dbs.source, "42"), (twin, "42"), (other, "43")):
        procs[database] = subprocess.Popen(
            simulate_argv(dbs.host, dbs.port, database, "--create-tables", "--seed", seed, "--max-changes",
                          "300", "--min-interval", "0", "--max-interval", "0", "--verbose"),
            env=job_env(dbs.env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for database, proc in procs.items():
        _out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        conn = dbs.connect(dbs.source) if database == dbs.source else psycopg2.connect(
            host=dbs.host, port=dbs.port, dbname=database, user=dbs.env["SOURCE_USER"],
            password=dbs.env["SOURCE_PASSWORD"])
        runs[database] = (OP_LINE.findall(err), {t.name: table_rows(conn, t.name) for t in TABLES})
        conn.close()
    assert len(runs[dbs.source][0]) == 300
    assert runs[dbs.source] == runs[twin]  # same operations, same resulting data
    assert runs[dbs.source][0] != runs[other][0]
    assert runs[dbs.source][1] != runs[other][1]


# --- signals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "interval"), [(signal.SIGTERM, "0"), (signal.SIGINT, "5"),
                                                  (signal.SIGTERM, "5")])
def test_signal_stops_within_a_second(dbs, tmp_path: Path, signum: int, interval: str) -> None:  # type: ignore[no-untyped-def]
    """Busy (no interval) or sleeping (5 s intervals): the run ends ≤ 1 s after the signal, cleanly."""
    log = tmp_path / "stderr.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            simulate_argv(dbs.host, dbs.port, dbs.source, "--create-tables", "--max-changes", "0",
                          "--min-interval", interval, "--max-interval", interval, "--verbose"),
            env=job_env(dbs.env), stdout=subprocess.PIPE, stderr=err, text=True)
        wait_for(log, r"op 1 " if interval != "0" else r"op 200 ")
        sent = time.monotonic()
        proc.send_signal(signum)
        proc.wait(timeout=10)
        elapsed = time.monotonic() - sent
    text = log.read_text()
    assert proc.returncode == 0, text
    assert elapsed <= 1.0, f"took {elapsed:.2f}s to stop"
    assert f"{signal.Signals(signum).name}: stopping" in text
    counts = summary_counts(text)
    assert sum(counts.values()) == len(OP_LINE.findall(text))  # every operation begun was finished
    conn = dbs.connect(dbs.source)
    assert_consistent(conn, counts)
    conn.close()


# --- the database goes away -------------------------------------------------------------------------


def test_survives_a_database_restart(tmp_path: Path) -> None:
    """A server of its own, stopped and started under a running simulator."""
    from datasurface.localpg import LocalPostgres, find_bin_dir

    server = LocalPostgres(find_bin_dir("any")).start()
    try:
        env = {"SOURCE_USER": "sim", "SOURCE_PASSWORD": "restart-test-pw"}
        server.create_role("sim", env["SOURCE_PASSWORD"])
        server.create_database("customer_db", owner="sim")
        log = tmp_path / "stderr.log"
        with log.open("w") as err:
            proc = subprocess.Popen(
                simulate_argv(server.socket_dir, server.port, "customer_db", "--create-tables",
                              "--max-changes", "0", "--min-interval", "0.005", "--max-interval", "0.01",
                              "--max-disconnected", "60", "--verbose"),
                env=job_env(env), stdout=subprocess.PIPE, stderr=err, text=True)
            try:
                wait_for(log, r"op 20 ")
                server.stop_server_only()
                time.sleep(1.5)
                assert proc.poll() is None, log.read_text()  # still alive without its database
                server.start_server_only()
                text = wait_for(log, r"reconnected to .*\n(.*\n)*.* op \d+ ", timeout=30)
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=10)
            finally:
                if proc.poll() is None:
                    proc.kill()
        text = log.read_text()
        assert proc.returncode == 0, text
        assert_no_secrets(text, env)
        outage = [line for line in text.splitlines() if "WARNING" in line and "reconnected" not in line]
        assert len(outage) == 1, outage  # one line for the outage, not one per retry
        assert text.count("reconnected to") == 1
        counts = summary_counts(text)
        conn = psycopg2.connect(host=server.socket_dir, port=server.port, dbname="customer_db",
                                user="sim", password=env["SOURCE_PASSWORD"])
        assert_consistent(conn, counts)
        conn.close()
    finally:
        server.stop()


def test_gives_up_after_max_disconnected(dbs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """No server behind the socket directory: retries, then exit 1 with one line after the limit."""
    started = time.monotonic()
    proc = subprocess.run(simulate_argv(str(tmp_path), 5432, "customer_db", "--max-disconnected", "1.5"),
                          env=job_env(dbs.env), capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    assert 1.5 <= elapsed < 20
    errors = [line for line in proc.stderr.splitlines() if line.startswith("datasurface-job: error:")]
    assert len(errors) == 1 and "no connection to" in errors[0] and "1.5s" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "DATASURFACE_RESULT_CODE=1"


def test_wrong_password_fails_at_once(dbs) -> None:  # type: ignore[no-untyped-def]
    env = dict(dbs.env, SOURCE_PASSWORD="not-the-password")
    started = time.monotonic()
    proc = run_simulate(dbs, None, "--create-tables", env=env)
    assert proc.returncode == 1
    assert time.monotonic() - started < 20  # no waiting for a password to become right
    assert "authentication failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "not-the-password" not in proc.stderr + proc.stdout


def test_db_type_choices_are_the_source_types() -> None:
    """`simulate --db-type` offers exactly the model's source types (the simulator drives each of them)."""
    from datasurface.cli.app import DbType

    assert [choice.value for choice in DbType] == list(SOURCE_TYPES)


def test_missing_credential_and_bad_arguments(dbs) -> None:  # type: ignore[no-untyped-def]
    proc = run_simulate(dbs, None, env={})
    assert proc.returncode == 1
    assert "SOURCE_USER" in proc.stderr and "SOURCE_PASSWORD" in proc.stderr
    proc = run_simulate(dbs, None, "--min-interval", "3", "--max-interval", "1")
    assert proc.returncode == 2
    assert "--min-interval 3 is larger than --max-interval 1" in proc.stderr
    proc = run_simulate(dbs, None, "--max-changes", "-1")
    assert proc.returncode == 2
    # tables missing and no --create-tables: one line that says what to do
    proc = run_simulate(dbs, None, "--max-changes", "1")
    assert proc.returncode == 1
    assert "--create-tables" in proc.stderr and "Traceback" not in proc.stderr


# --- the source of a store of the model (--model, --store) ------------------------------------------


def _example_model(repo_root: Path, folder: Path, **source: object) -> Path:
    from tests.support.engine import write_model

    doc = yaml.safe_load((repo_root / "examples/model/datasurface.yaml").read_text())
    doc["stores"][0]["source"].update(source)
    return write_model(folder, doc)


def _simulate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    import sys

    proc = subprocess.run([sys.executable, "-m", "datasurface.cli", "simulate", *args], env=job_env(env),
                          capture_output=True, text=True, timeout=90)
    assert_no_secrets(proc.stdout + proc.stderr, env)
    return proc


def test_the_source_of_a_model_store_then_merge_ingests_it(dbs, repo_root: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`simulate --model M --store S` takes host, port, database, schema and credential from the store (here a
    schema other than public), and what it did is what `merge` of that store ingests."""
    from tests.support.engine import merge_args, run_job

    src = dbs.connect(dbs.source)
    with src.cursor() as cur:
        cur.execute("CREATE SCHEMA crm")
    src.commit()
    model = _example_model(repo_root, tmp_path / "model", host=dbs.host, port=dbs.port, database=dbs.source,
                           schema="crm", credential="crmsrc")
    env = {"CRMSRC_USER": dbs.env["SOURCE_USER"], "CRMSRC_PASSWORD": dbs.env["SOURCE_PASSWORD"],
           **{k: v for k, v in dbs.env.items() if k.startswith("MERGE_")}}
    proc = _simulate(env, "--model", str(model), "--store", "Store1", "--create-tables", "--max-changes", "60",
                     "--min-interval", "0", "--max-interval", "0", "--seed", "4")
    assert proc.returncode == 0, proc.stderr
    assert "schema crm (store Store1)" in proc.stderr
    with src.cursor() as cur:
        cur.execute("SELECT table_schema, count(*) FROM information_schema.tables "
                    "WHERE table_name IN ('customers', 'addresses') GROUP BY 1")
        assert cur.fetchall() == [("crm", 2)]
    src.rollback()
    job = run_job(merge_args(model, "Live", "live", dbs), env)
    assert job.returncode == 0, job.stderr
    mrg = dbs.connect(dbs.merge)
    for table in TABLES:
        with src.cursor() as cur:
            cur.execute(f"SELECT * FROM crm.{table.name} ORDER BY id")
            source = cur.fetchall()
        with mrg.cursor() as cur:
            cur.execute(f"SELECT * FROM live.store1_{table.name}_current ORDER BY id")
            assert cur.fetchall() == source and len(source) > SEED_CUSTOMERS
    # an explicit flag overrides the model's value: --database names a database without the tables
    proc = _simulate(env, "--model", str(model), "--store", "Store1", "--database", dbs.merge, "--max-changes", "1")
    assert proc.returncode == 1 and "--create-tables" in proc.stderr, proc.stderr
    src.close()
    mrg.close()


def test_model_store_errors_are_one_line(dbs, repo_root: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _example_model(repo_root, tmp_path / "model", host=dbs.host, port=dbs.port, database=dbs.source)
    cases = [
        (["--model", str(model), "--store", "Nope"], 1, "unknown store 'Nope' (the model has: Store1, Store3)"),
        (["--model", str(model)], 2, "--model needs --store"),
        (["--store", "Store1", "--host", dbs.host], 2, "give --model too"),
        (["--model", str(model), "--store", "Store1", "--db-type", "mysql"], 2,
         "--db-type mysql: store 'Store1' of the model reads a postgres source"),
        (["--model", str(tmp_path / "missing"), "--store", "Store1"], 1, "missing"),
        ([], 2, "simulate needs --host, --database, --credential (or --model and --store"),
    ]
    for args, code, fragment in cases:
        proc = _simulate(dbs.env, *args, "--max-changes", "1")
        errors = [line for line in proc.stderr.splitlines() if line.startswith("datasurface-job: error:")]
        assert proc.returncode == code and len(errors) == 1 and fragment in errors[0], (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    other = _example_model(repo_root, tmp_path / "other", host=dbs.host, port=dbs.port, database=dbs.source)
    doc = yaml.safe_load((other / "datasurface.yaml").read_text())
    for dataset in doc["stores"][0]["datasets"]:
        dataset["table"] = f"x_{dataset['name']}"
    (other / "datasurface.yaml").write_text(yaml.safe_dump(doc))
    proc = _simulate(dbs.env, "--model", str(other), "--store", "Store1")
    assert proc.returncode == 2 and "reads none of the simulator's tables (addresses, customers)" in proc.stderr
