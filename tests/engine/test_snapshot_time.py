"""`ds_batches.snapshot_at` (docs/consumers.md): the source server's clock at the batch's consistent snapshot."""

from __future__ import annotations

import signal
from typing import Any

from tests.support.engine import PLATFORM, SCHEMA, merge_args, run_job


def _ledger(mrg: Any) -> list[tuple[Any, ...]]:
    with mrg.cursor() as cur:
        cur.execute(f"SELECT batch_id, status, started_at, snapshot_at, finished_at FROM {SCHEMA}.ds_batches "
                    "ORDER BY batch_id")
        rows = cur.fetchall()
    mrg.rollback()
    return rows


def _source_now(src: Any) -> Any:
    with src.cursor() as cur:
        cur.execute("SELECT clock_timestamp()")
        now = cur.fetchone()[0]
    src.rollback()
    return now


def test_every_batch_has_the_snapshot_time_between_its_start_and_finish(world: dict[str, Any]) -> None:
    dbs, src, mrg = world["dbs"], world["src"], world["mrg"]
    before = _source_now(src)
    assert run_job(merge_args(world["model"], PLATFORM, "live", dbs), dbs.env).returncode == 0
    after = _source_now(src)
    rows = _ledger(mrg)
    assert [r[0] for r in rows] == [1, 2]
    for _, status, started, snap, finished in rows:
        assert status == "committed" and snap is not None
        assert started <= snap <= finished
    assert before <= rows[1][3] <= after


def test_a_recovered_staged_batch_keeps_the_time_of_its_snapshot(world: dict[str, Any]) -> None:
    dbs, mrg = world["dbs"], world["mrg"]
    args = merge_args(world["model"], PLATFORM, "live", dbs)
    killed = run_job(args, dbs.env, {"DATASURFACE_TEST_KILL_AT": "after_ingest"})
    assert killed.returncode == -signal.SIGKILL
    open_batch = _ledger(mrg)[-1]
    assert open_batch[1] == "staged" and open_batch[3] is not None
    assert run_job(args, dbs.env).returncode == 10
    assert _ledger(mrg)[-1][:2] == (2, "committed")
    assert _ledger(mrg)[-1][3] == open_batch[3]
