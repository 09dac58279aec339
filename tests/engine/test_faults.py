"""Crash safety: the job SIGKILLed at every named point of ingest, merge and ledger.

After each kill the merge tables show the state before the batch or after it, never in between;
the next run finishes the open batch (exit 10) — or, when the kill came before a batch was opened
or after it was committed, takes a fresh one (exit 0) — and the result equals the oracle.
"""

from __future__ import annotations

import random
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from datasurface.db import Endpoint
from datasurface.engine import run_merge
from datasurface.errors import EXIT_OK, EXIT_RECOVERED
from tests.support.engine import (
    DATASETS,
    create_source_tables,
    fetch,
    load_snapshot,
    merge_args,
    model_dict,
    next_snapshot,
    oracle_counts,
    run_job,
    write_model,
)

BEFORE_OPEN = ["model:loaded", "stream:locked", "batch:preflight", "source:checked", "batch:opening"]
OPEN = [
    "batch:opened",
    *(f"ingest:{d}:{step}" for d in DATASETS for step in ("start", "copied", "staged")),
    "ingest:before_commit", "after_ingest",
    *(f"merge:{d}:{step}" for d in DATASETS for step in ("diffed", "changed", "applied")),
    "ledger:updated", "ledger:before_commit",
]
AFTER_COMMIT = ["ledger:committed"]
POINTS = BEFORE_OPEN + OPEN + AFTER_COMMIT


def test_at_least_twenty_distinct_points() -> None:
    assert len(set(POINTS)) >= 20


@pytest.mark.parametrize("mode", ["live", "forensic"])
@pytest.mark.parametrize("point", POINTS)
def test_kill_and_recover(point: str, mode: str, dbs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in dbs.env.items():
        monkeypatch.setenv(k, v)
    src, mrg = dbs.connect(dbs.source), dbs.connect(dbs.merge)
    create_source_tables(src)
    model = write_model(tmp_path / "model", model_dict(dbs.host, dbs.port, dbs.source))
    endpoint = Endpoint(dbs.host, dbs.port, dbs.merge)
    platform, schema = "Crash", "crash"

    def merge() -> int:
        return run_merge(model=str(model), model_ref=None, model_path="datasurface.yaml", platform=platform,
                         mode=mode, store="Store1", merge=endpoint, merge_credential="merge")

    rng = random.Random(sum(map(ord, point)))  # not hash(): string hashing varies per process
    removed: dict[str, set[Any]] = defaultdict(set)
    snap_a = next_snapshot(rng, next_snapshot(rng, {}, removed), removed)
    load_snapshot(src, snap_a)
    a = {name: fetch(src, f'"{name}"', name) for name in DATASETS}
    assert merge() == EXIT_OK
    snap_b = next_snapshot(rng, snap_a, removed)
    load_snapshot(src, snap_b)
    b = {name: fetch(src, f'"{name}"', name) for name in DATASETS}

    killed = run_job(merge_args(model, platform, mode, dbs), dbs.env, {"DATASURFACE_TEST_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr

    current = {name: fetch(mrg, f"{schema}.store1_{name}_current", name) for name in DATASETS}
    assert current in (a, b), "a killed run left the merge tables between two batches"
    assert current == (b if point in AFTER_COMMIT else a)

    expected_code = EXIT_RECOVERED if point in OPEN else EXIT_OK
    assert merge() == expected_code
    for name, (_, key) in DATASETS.items():
        assert fetch(mrg, f"{schema}.store1_{name}_current", name) == b[name]
        if mode == "forensic":
            for n, snap in ((1, a), (2, b)):
                assert fetch(mrg, f"{schema}.store1_{name}", name, "WHERE ds_batch_in <= %s AND %s < ds_batch_out",
                             (n, n)) == snap[name]
        with mrg.cursor() as cur:
            cur.execute(f"""SELECT rows_total, rows_inserted, rows_updated, rows_deleted
                              FROM {schema}.ds_batch_datasets WHERE batch_id = 2 AND dataset = %s""", (name,))
            got = dict(zip(("total", "inserted", "updated", "deleted"), cur.fetchone(), strict=True))
        mrg.rollback()
        assert got == oracle_counts(a[name], b[name], len(key))

    # and the run after that takes a fresh snapshot, in which nothing changed
    assert merge() == EXIT_OK
    last = 4 if point in AFTER_COMMIT else 3  # a kill after the commit: the "recovery" run was a fresh batch
    with mrg.cursor() as cur:
        cur.execute(f"SELECT batch_id, status FROM {schema}.ds_batches ORDER BY batch_id")
        assert cur.fetchall() == [(n, "committed") for n in range(1, last + 1)]
        cur.execute(f"SELECT rows_inserted, rows_updated, rows_deleted FROM {schema}.ds_batches WHERE batch_id = %s",
                    (last,))
        assert cur.fetchone() == (0, 0, 0)
        # no staging tables are left behind
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename LIKE 'ds\\_stage\\_%%'",
                    (schema,))
        assert cur.fetchone() == (0,)
    mrg.rollback()
    src.close()
    mrg.close()
