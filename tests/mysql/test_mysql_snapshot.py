"""One consistent snapshot on MariaDB: writers keep a cross-table invariant in their transactions while
batches are taken; every batch (live tables, forensic history as of every batch) keeps the invariant.

Each writer transaction moves an amount from an `accounts` row to a `ledger` row (the sum over both
tables stays TOTAL) and adds or removes a pair of rows with the same id in both tables. The job pauses
between reading the two tables (DATASURFACE_TEST_PAUSE_AT), so writers commit between the two reads:
only one InnoDB read view for the whole batch keeps the invariant."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.engine import merge_args, run_job, write_model
from tests.support.mysql import mysql_model

PAIR = [("id", "integer"), ("amount", "bigint")]
DATASETS = {"accounts": (PAIR, ("id",)), "ledger": (PAIR, ("id",))}
ROWS, TOTAL_EACH = 200, 1000  # row 1 of each table starts with TOTAL_EACH: the sum is 2 * TOTAL_EACH
BATCHES = 3


def _writer(mysql_dbs: Any, stop: threading.Event, seed: int, errors: list[BaseException], commits: list[int]) -> None:
    import pymysql

    rng = random.Random(seed)
    conn = mysql_dbs.connect_source(autocommit=False)
    next_id = 10_000 * (seed + 1)
    try:
        with conn.cursor() as cur:
            while not stop.is_set():
                try:
                    _transaction(cur, rng, next_id := next_id + 1)
                    conn.commit()
                except pymysql.err.OperationalError as exc:
                    if exc.args[0] != 1213:  # a deadlock between writers: InnoDB rolled it back, go on
                        raise
                    conn.rollback()
                    continue
                commits.append(1)
                time.sleep(0.002)
    except BaseException as exc:  # reported by the test
        errors.append(exc)
    finally:
        conn.close()


def _transaction(cur: Any, rng: random.Random, next_id: int) -> None:
    """Move an amount from accounts to ledger; add or remove a pair of rows with the same id."""
    a, b, x = rng.randint(1, ROWS), rng.randint(1, ROWS), rng.randint(1, 50)
    cur.execute("UPDATE accounts SET amount = amount - %s WHERE id = %s", (x, a))
    cur.execute("UPDATE ledger SET amount = amount + %s WHERE id = %s", (x, b))
    if rng.random() < 0.5:
        cur.execute("INSERT INTO accounts VALUES (%s, 0)", (next_id,))
        cur.execute("INSERT INTO ledger VALUES (%s, 0)", (next_id,))
    else:
        cur.execute("SELECT id FROM accounts WHERE id > %s AND amount = 0 LIMIT 1 FOR UPDATE", (ROWS,))
        row = cur.fetchone()
        if row:
            cur.execute("SELECT amount FROM ledger WHERE id = %s FOR UPDATE", row)
            (amount,) = cur.fetchone()
            cur.execute("DELETE FROM accounts WHERE id = %s", row)
            cur.execute("DELETE FROM ledger WHERE id = %s", row)
            cur.execute("UPDATE ledger SET amount = amount + %s WHERE id = 1", (amount,))


def _invariant(mrg: Any, accounts: str, ledger: str) -> tuple[int, bool]:
    with mrg.cursor() as cur:
        cur.execute(f"SELECT (SELECT coalesce(sum(amount), 0) FROM {accounts}) + "
                    f"(SELECT coalesce(sum(amount), 0) FROM {ledger}), "
                    f"NOT EXISTS (SELECT id FROM {accounts} EXCEPT SELECT id FROM {ledger}) AND "
                    f"NOT EXISTS (SELECT id FROM {ledger} EXCEPT SELECT id FROM {accounts})")
        total, same_ids = cur.fetchone()
    mrg.rollback()
    return int(total), bool(same_ids)


def test_invariant_holds_in_every_batch(mysql_dbs: Any, tmp_path: Path) -> None:
    src = mysql_dbs.connect_source()
    with src.cursor() as cur:
        for t in DATASETS:
            cur.execute(f"CREATE TABLE `{t}` (id int PRIMARY KEY, amount bigint NOT NULL) ENGINE=InnoDB")
            cur.executemany(f"INSERT INTO `{t}` VALUES (%s, %s)",
                            [(i, TOTAL_EACH if i == 1 else 0) for i in range(1, ROWS + 1)])
    src.commit()
    model = write_model(tmp_path / "model", mysql_model(mysql_dbs.host, mysql_dbs.source, datasets=DATASETS))
    stop, errors, commits = threading.Event(), [], []
    writers = [threading.Thread(target=_writer, args=(mysql_dbs, stop, s, errors, commits)) for s in range(3)]
    for w in writers:
        w.start()
    try:
        time.sleep(0.3)
        for _ in range(BATCHES):
            for mode in ("live", "forensic"):
                before = len(commits)
                proc = run_job(merge_args(model, f"Inv{mode}", mode, mysql_dbs), mysql_dbs.env,
                               {"DATASURFACE_TEST_PAUSE_AT": "ingest:accounts:staged=0.3"})
                assert proc.returncode == 0, proc.stderr
                assert len(commits) > before, "writers must commit while the batch is read"
    finally:
        stop.set()
        for w in writers:
            w.join()
    assert not errors, errors
    mrg = mysql_dbs.connect_merge()
    for n in range(1, BATCHES + 1):
        as_of = f"(SELECT * FROM invforensic.store1_{{0}} WHERE ds_batch_in <= {n} AND {n} < ds_batch_out) v"
        total, same = _invariant(mrg, as_of.format("accounts"), as_of.format("ledger"))
        assert (total, same) == (2 * TOTAL_EACH, True), f"forensic batch {n}: sum {total}, same ids {same}"
    total, same = _invariant(mrg, "invlive.store1_accounts", "invlive.store1_ledger")
    assert (total, same) == (2 * TOTAL_EACH, True)
    mrg.close()
    src.close()
