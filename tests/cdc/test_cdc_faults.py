"""Exactly once: a change batch's run SIGKILLed at every named point, and SIGKILLed or SIGSTOPped inside its
long statements (the source's decoding read, the merge side's COPY of the changes, the net, the apply).
The merge tables show the state before the batch or after it; the slot is advanced only after the batch
committed (a run killed before that leaves it behind the ledger, and the next run catches up); the next run
finishes by the usual rules and the result equals the source, with every count as a snapshot would give."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.big_table import BigWorld
from tests.support.cdc import allow_replication, apply_as_changes, cdc_model, drop_slots
from tests.support.engine import (
    DATASETS,
    create_source_tables,
    fetch,
    merge_args,
    model_dict,
    next_snapshot,
    oracle_counts,
    run_job,
    write_model,
)

BEFORE_OPEN = ["model:loaded", "stream:locked", "batch:preflight", "source:checked", "batch:opening"]
OPEN = ["batch:opened", "cdc:copied", "ingest:before_commit", "after_ingest",
        *(f"merge:{d}:{step}" for d in DATASETS for step in ("diffed", "changed", "applied")),
        "ledger:updated", "ledger:before_commit"]
AFTER_COMMIT = ["ledger:committed", "cdc:before_advance"]


def slot_and_ledger(dbs: Any, mrg: Any, schema: str) -> tuple[str, str]:
    admin = dbs.server.admin_connect(dbs.source)
    with admin.cursor() as cur:
        cur.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                    (f"ds_{schema}_store1",))
        slot = cur.fetchone()[0]
    admin.close()
    with mrg.cursor() as cur:
        cur.execute(f"SELECT slot_lsn::text FROM {schema}.ds_batches WHERE status = 'committed' "
                    "ORDER BY batch_id DESC LIMIT 1")
        ledger = cur.fetchone()[0]
    mrg.rollback()
    return slot, ledger


# every point in live mode; in forensic mode, where its apply differs
POINT_CASES = [(p, "live") for p in BEFORE_OPEN + OPEN + AFTER_COMMIT] + [
    (p, "forensic") for p in ("cdc:copied", "merge:pairs:changed", "ledger:before_commit", "cdc:before_advance")]


@pytest.mark.parametrize(("point", "mode"), POINT_CASES)
def test_kill_at_every_point_of_a_change_batch(point: str, mode: str, dbs: Any, tmp_path: Path,
                                               request: pytest.FixtureRequest) -> None:
    allow_replication(dbs)
    request.addfinalizer(lambda: drop_slots(dbs))
    src, mrg = dbs.connect(dbs.source), dbs.connect(dbs.merge)
    create_source_tables(src)
    model = write_model(tmp_path / "model", cdc_model(model_dict(dbs.host, dbs.port, dbs.source)))
    platform, schema = "Crash", "crash"
    args = merge_args(model, platform, mode, dbs)
    rng = random.Random(sum(map(ord, point)))
    removed: dict[str, set[Any]] = defaultdict(set)
    snap_a = next_snapshot(rng, next_snapshot(rng, {}, removed), removed)
    apply_as_changes(src, {}, snap_a)
    a = {name: fetch(src, f'"{name}"', name) for name in DATASETS}
    assert run_job(args, dbs.env).returncode == 0  # batch 1: the snapshot
    snap_b = next_snapshot(rng, snap_a, removed)
    apply_as_changes(src, snap_a, snap_b, transactions=3)
    b = {name: fetch(src, f'"{name}"', name) for name in DATASETS}
    slot_before, _ = slot_and_ledger(dbs, mrg, schema)

    killed = run_job(args, dbs.env, {"DATASURFACE_TEST_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    current = {name: fetch(mrg, f"{schema}.store1_{name}_current", name) for name in DATASETS}
    assert current == (b if point in AFTER_COMMIT else a)
    slot, ledger = slot_and_ledger(dbs, mrg, schema)
    if point != "ledger:committed" or slot != ledger:  # advanced only after the commit
        assert slot == slot_before

    nxt = run_job(args, dbs.env)
    assert nxt.returncode == (10 if point in OPEN else 0), nxt.stdout + nxt.stderr
    for name, (_, key) in DATASETS.items():
        assert fetch(mrg, f"{schema}.store1_{name}_current", name) == b[name]
        with mrg.cursor() as cur:
            cur.execute(f"""SELECT rows_total, rows_inserted, rows_updated, rows_deleted
                              FROM {schema}.ds_batch_datasets WHERE batch_id = 2 AND dataset = %s""", (name,))
            got = dict(zip(("total", "inserted", "updated", "deleted"), cur.fetchone(), strict=True))
        mrg.rollback()
        assert got == oracle_counts(a[name], b[name], len(key))
    slot, ledger = slot_and_ledger(dbs, mrg, schema)
    assert slot == ledger  # caught up

    # the run after that reads no change twice
    assert run_job(args, dbs.env).returncode == 0
    with mrg.cursor() as cur:
        cur.execute(f"SELECT batch_id, status, rows_inserted, rows_updated, rows_deleted FROM {schema}.ds_batches "
                    "ORDER BY batch_id DESC LIMIT 1")
        last = cur.fetchone()
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename LIKE 'ds\\_changes\\_%%'",
                    (schema,))
        assert cur.fetchone() == (0,)  # no change table left behind
    mrg.rollback()
    assert last[1:] == ("committed", 0, 0, 0)
    assert last[0] == (4 if point in AFTER_COMMIT else 3)
    src.close()
    mrg.close()


ROWS = 100_000


class BigChanges(BigWorld):
    """A cdc store of ROWS rows whose every row changes in one source transaction before each batch."""

    rows = ROWS

    def prepare_source(self) -> None:
        allow_replication(self.dbs)

    def model_doc(self, doc: dict[str, Any]) -> dict[str, Any]:
        return cdc_model(doc)

    def wait_inside_source(self, proc: subprocess.Popen[str], timeout: float = 120) -> None:
        """Until the job's source session has been decoding for a moment."""
        admin = self.server.admin_connect(self.dbs.source)
        try:
            import time
            deadline = time.monotonic() + timeout
            with admin.cursor() as cur:
                while time.monotonic() < deadline:
                    assert proc.poll() is None, "the job ended before reaching the read"
                    cur.execute("""SELECT extract(epoch FROM clock_timestamp() - query_start) FROM pg_stat_activity
                                    WHERE datname = %s AND state = 'active'
                                      AND query LIKE '%%pg_logical_slot_peek_binary_changes%%'
                                      AND application_name LIKE 'datasurface-job source %%'""", (self.dbs.source,))
                    row = cur.fetchone()
                    if row is not None and row[0] >= 0.15:
                        return
                    time.sleep(0.05)
        finally:
            admin.close()
        raise AssertionError("the job never read its slot")


@pytest.fixture(scope="module")
def big(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigChanges]:
    world = BigChanges(pg_server, tmp_path_factory.mktemp("bigcdc"))
    yield world
    drop_slots(world.dbs)


STATEMENTS = {"copy": 'COPY "%"."ds_changes_%FROM STDIN%', "diff": "CREATE TEMP TABLE %ds_diff%",
              "apply": 'UPDATE "%"."store1_big" t %'}
CASES = [(signal.SIGKILL, s, "live") for s in ("read", *STATEMENTS)] + \
    [(signal.SIGKILL, "apply", "forensic"), (signal.SIGSTOP, "copy", "live"), (signal.SIGSTOP, "apply", "forensic")]


@pytest.mark.parametrize(("sig", "statement", "mode"), CASES, ids=[f"{s.name}-{st}-{m}" for s, st, m in CASES])
def test_fault_inside_a_statement_of_a_change_batch(big: BigChanges, sig: signal.Signals, statement: str,
                                                    mode: str) -> None:
    big.flip()
    job = subprocess.Popen([sys.executable, "-m", "datasurface.cli", *big.args(mode)],
                           env={**os.environ, **big.dbs.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if statement == "read":
            big.wait_inside_source(job)
        else:
            big.wait_inside(job, STATEMENTS[statement])
        os.kill(job.pid, sig)
        nxt = run_job(big.args(mode), big.dbs.env, timeout=180)
        assert nxt.returncode in (0, 10), nxt.stdout + nxt.stderr
        big.assert_merged_equals_source(mode)
        if nxt.returncode == 10:
            assert run_job(big.args(mode), big.dbs.env, timeout=180).returncode == 0
            big.assert_merged_equals_source(mode)
        ledger = big.ledger(mode)
        assert all(status == "committed" for _, status, *_ in ledger)
        assert [b for b, *_ in ledger] == list(range(1, len(ledger) + 1))
        assert {updated for *_, updated in ledger[1:]} <= {0, ROWS}  # a flip's rows counted once, whole
        if sig == signal.SIGSTOP:
            os.kill(job.pid, signal.SIGCONT)
            _out, err = job.communicate(timeout=60)
            assert job.returncode == 1, err
            assert "Traceback" not in err
            assert big.ledger(mode) == ledger
            big.assert_merged_equals_source(mode)
        else:
            job.wait(timeout=10)
    finally:
        if job.poll() is None:
            os.kill(job.pid, signal.SIGCONT)
            job.kill()
            job.wait()
