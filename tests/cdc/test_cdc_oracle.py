"""The oracle test for change data capture: random changes (row by row over several transactions, or a
TRUNCATE and a reload) read from the slot give, after every batch, exactly what a snapshot would: the live
table and views, every forensic as-of, and the ledger's counts."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from datasurface.db import Endpoint
from tests.support.cdc import allow_replication, apply_as_changes, cdc_model, drop_slots
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

BATCHES = 12


@pytest.mark.parametrize(("version", "seed"), [(15, 1), (15, 2), (18, 1)])
def test_random_changes_match_oracle(pg_servers: dict[int, Any], databases_on: Any, version: int, seed: int,
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     request: pytest.FixtureRequest) -> None:
    if version not in pg_servers:
        pytest.skip(f"PostgreSQL {version} not available here")
    dbs = databases_on(pg_servers[version])
    allow_replication(dbs)
    request.addfinalizer(lambda: drop_slots(dbs))
    for k, v in dbs.env.items():
        monkeypatch.setenv(k, v)
    src, mrg = dbs.connect(dbs.source), dbs.connect(dbs.merge)
    create_source_tables(src)
    model = write_model(tmp_path / "model", cdc_model(model_dict(dbs.host, dbs.port, dbs.source)))
    endpoint = Endpoint(dbs.host, dbs.port, dbs.merge)
    rng = random.Random(version * 1000 + seed)
    snap: dict[str, Any] = {}
    removed: dict[str, set[Any]] = defaultdict(set)
    expected: dict[str, list[list[Any]]] = {name: [[]] for name in DATASETS}

    for n in range(1, BATCHES + 1):
        before = snap
        snap = next_snapshot(rng, snap, removed)
        if n % 4 == 0:
            load_snapshot(src, snap)  # TRUNCATE and reload
        else:
            apply_as_changes(src, before, snap, transactions=rng.randint(1, 4))
        for name in DATASETS:
            expected[name].append(fetch(src, f'"{name}"', name))
        merge_both_and_check(mrg, model, endpoint, expected, n)
    with mrg.cursor() as cur:
        cur.execute("SELECT batch_id, source_lsn IS NULL, slot_lsn IS NULL FROM oraclelive.ds_batches ORDER BY 1")
        rows = cur.fetchall()
    assert rows[0] == (1, True, False)  # the first batch is a snapshot, read once the slot existed
    assert all(r[1:] == (False, False) for r in rows[1:])
    src.close()
    mrg.close()
