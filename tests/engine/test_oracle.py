"""The oracle test: random snapshot sequences through live and forensic merges, checked after every batch.

Datasets use every model type, a composite key, nullable columns flipping NULL / '' / value,
deletes and delete-then-re-add. After each batch: the live table and both views equal the snapshot,
forensic "as of N" equals snapshot N for every earlier N, and the ledger counts equal the oracle's.
Runs against every PostgreSQL major available (system 15, embedded 16 and 18).
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from datasurface.db import Endpoint
from tests.support.engine import (
    DATASETS,
    create_source_tables,
    fetch,
    load_snapshot,
    merge_both_and_check,
    model_dict,
    next_snapshot,
    write_model,
)

SNAPSHOTS = 22


@pytest.mark.parametrize(("version", "seed"), [(15, 1), (15, 2), (15, 3), (16, 1), (18, 1)])
def test_random_snapshots_match_oracle(pg_servers: dict[int, Any], databases_on: Any, version: int, seed: int,
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if version not in pg_servers:
        pytest.skip(f"PostgreSQL {version} not available here")
    dbs = databases_on(pg_servers[version])
    for k, v in dbs.env.items():
        monkeypatch.setenv(k, v)
    src, mrg = dbs.connect(dbs.source), dbs.connect(dbs.merge)
    create_source_tables(src)
    model = write_model(tmp_path / "model", model_dict(dbs.host, dbs.port, dbs.source))
    endpoint = Endpoint(dbs.host, dbs.port, dbs.merge)
    rng = random.Random(version * 1000 + seed)
    snap: dict[str, Any] = {}
    removed: dict[str, set[Any]] = defaultdict(set)
    expected: dict[str, list[list[Any]]] = {name: [[]] for name in DATASETS}  # expected[name][N]

    for n in range(1, SNAPSHOTS + 1):
        snap = next_snapshot(rng, snap, removed)
        load_snapshot(src, snap)
        for name in DATASETS:
            expected[name].append(fetch(src, f'"{name}"', name))
        merge_both_and_check(mrg, model, endpoint, expected, n)
    # the ledger: one committed batch per run, ids 1..N without gaps, totals = sum of the datasets
    for schema in ("oraclelive", "oracleforensic"):
        with mrg.cursor() as cur:
            cur.execute(f"""SELECT b.batch_id, b.status, b.dataset, b.rows_total, b.rows_inserted, b.rows_updated,
                                   b.rows_deleted, (SELECT array[sum(rows_total), sum(rows_inserted),
                                   sum(rows_updated), sum(rows_deleted)] FROM {schema}.ds_batch_datasets d
                                   WHERE d.batch_id = b.batch_id)
                              FROM {schema}.ds_batches b ORDER BY batch_id""")
            rows = cur.fetchall()
        mrg.rollback()
        assert [r[0] for r in rows] == list(range(1, SNAPSHOTS + 1))
        assert {r[1] for r in rows} == {"committed"}
        assert {r[2] for r in rows} == {None}
        assert all(list(r[3:7]) == list(r[7]) for r in rows)
    # forensic: at most one current version per key is enforced by the database itself
    with mrg.cursor() as cur, pytest.raises(Exception, match="duplicate key"):
        cur.execute("""INSERT INTO oracleforensic.store1_pairs (region, code, ds_batch_in)
                       SELECT region, code, 999 FROM oracleforensic.store1_pairs_current LIMIT 1""")
    mrg.rollback()
    src.close()
    mrg.close()
