"""Helpers of the simulator tests on every backend: the CLI's argv and env, its summary and op lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from datasurface.db import Endpoint
from datasurface.simulator import invariant_violations
from datasurface.simulator.backends import backend_for
from datasurface.simulator.backends.base import Backend
from datasurface.simulator.tables import SEED_CUSTOMERS
from tests.support.mysql import make_mysql_databases

SUMMARY = re.compile(r"summary: (\d+) operations in [\d.]+s: (.*?);")
OP_LINE = re.compile(r": (op \d+ \w+: .*)$", re.M)  # the message, without timestamp and logger


def simulate_argv(host: str, port: int | None, database: str, *args: str) -> list[str]:
    """`port` None: the --db-type's default."""
    where = ["--host", host, *([] if port is None else ["--port", str(port)])]
    return [sys.executable, "-m", "datasurface.cli", "simulate", *where, "--database", database,
            "--credential", "source", *args]


def job_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCE_", "DATASURFACE_"))}
    env.update(extra)
    return env


def run_simulate(dbs, database: str | None = None, *args: str, timeout: float = 90,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    # a MySQL source has no port attribute: the --db-type default
    proc = subprocess.run(simulate_argv(dbs.host, getattr(dbs, "port", None), database or dbs.source, *args),
                          env=job_env(dbs.env if env is None else env), capture_output=True, text=True,
                          timeout=timeout)
    assert_no_secrets(proc.stdout + proc.stderr, dbs.env)
    return proc


def assert_no_secrets(output: str, env: dict[str, str]) -> None:
    for key, value in env.items():
        if key.endswith("PASSWORD"):
            assert value not in output, f"{key} leaked into the output"


def summary_counts(stderr: str) -> Counter[str]:
    match = SUMMARY.search(stderr)
    assert match, f"no summary line in:\n{stderr}"
    counts = Counter({k: int(v) for k, v in (p.split("=") for p in match.group(2).split())})
    assert sum(counts.values()) == int(match.group(1))
    return counts


def wait_for(path: Path, pattern: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text()
        if re.search(pattern, text, re.M):
            return text
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not seen within {timeout}s:\n{path.read_text()}")


def table_rows(conn, table: str) -> list[tuple[object, ...]]:  # type: ignore[no-untyped-def]
    with conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {table} ORDER BY id")
        rows = cur.fetchall()
    conn.rollback()
    return rows


def count(conn, table: str) -> int:  # type: ignore[no-untyped-def]
    return len(table_rows(conn, table))


def assert_consistent(conn, counts: Counter[str]) -> None:  # type: ignore[no-untyped-def]
    """The referential invariant, and row counts that add up with what the simulator says it did."""
    assert invariant_violations(conn) == []
    assert count(conn, "customers") == SEED_CUSTOMERS + counts["create_customer"]
    assert count(conn, "addresses") == (SEED_CUSTOMERS + counts["create_customer"] + counts["add_address"]
                                        - counts["delete_address"])


def assert_invariant_detects_breakage(conn) -> None:  # type: ignore[no-untyped-def]
    """The invariant query does see a reference to no address, and a missing reference (then commits them)."""
    first_id, second_id = (r[0] for r in table_rows(conn, "customers")[:2])
    with conn.cursor() as cur:
        cur.execute("UPDATE customers SET billingaddressid = 'A999999999999' WHERE id = %s", [first_id])
        cur.execute("UPDATE customers SET primaryaddressid = NULL WHERE id = %s", [second_id])
    conn.commit()
    assert invariant_violations(conn) == [(first_id, "billing", "A999999999999"), (second_id, "primary", None)]


@dataclass
class SimulatedSource:
    """A source database of the given type for the simulator: where it is, the job's env, its backend."""

    endpoint: Endpoint
    env: dict[str, str]
    backend: Backend
    connect: Callable[[], Any]


def simulated_source(source_type: str, request: pytest.FixtureRequest) -> SimulatedSource:
    """A fresh source database of `source_type` (the suite's PostgreSQL, or its MariaDB) for one test."""
    pg_server = request.getfixturevalue("pg_server")
    if source_type == "mysql":
        mysql_dbs = make_mysql_databases(request.getfixturevalue("mariadb"), pg_server)
        return SimulatedSource(Endpoint(mysql_dbs.host, 3306, mysql_dbs.source), mysql_dbs.env,
                               backend_for("mysql"), mysql_dbs.connect_source)
    dbs = request.getfixturevalue("dbs")
    return SimulatedSource(Endpoint(dbs.host, dbs.port, dbs.source), dbs.env, backend_for("postgres"),
                           lambda: dbs.connect(dbs.source))
