"""The oracle test over a MariaDB source: random snapshot sequences (every model type, a composite key,
NULL / '' / value flips, deletes and re-adds) through live and forensic merges, checked after every batch
against the snapshot itself, including forensic "as of N" for every earlier N and the ledger's counts."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from datasurface.db import Endpoint
from tests.support.engine import COMMON_DATASETS as DATASETS
from tests.support.engine import merge_both_and_check, next_snapshot, write_model
from tests.support.mysql import create_mysql_tables, expected_rows, load_mysql_snapshot, mysql_model, rfc4122

SNAPSHOTS = 14


@pytest.mark.parametrize("seed", [1, 2])
def test_random_snapshots_match_oracle(mdbs: Any, seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in mdbs.env.items():
        monkeypatch.setenv(k, v)
    src, mrg = mdbs.connect_source(), mdbs.connect_merge()
    create_mysql_tables(src)
    model = write_model(tmp_path / "model", mysql_model(mdbs.host, mdbs.source))
    endpoint = Endpoint(mdbs.pg.host, mdbs.pg.port, mdbs.pg.merge)
    rng = random.Random(7000 + seed)
    snap: dict[str, Any] = {}
    removed: dict[str, set[Any]] = defaultdict(set)
    expected: dict[str, list[list[Any]]] = {name: [[]] for name in DATASETS}

    for n in range(1, SNAPSHOTS + 1):
        snap = rfc4122(next_snapshot(rng, snap, removed, DATASETS))
        load_mysql_snapshot(src, snap)
        for name in DATASETS:
            expected[name].append(expected_rows(name, snap[name]))
        merge_both_and_check(mrg, model, endpoint, expected, n, DATASETS)
    with mrg.cursor() as cur:
        cur.execute("SELECT batch_id, status, snapshot_at IS NOT NULL FROM oracleforensic.ds_batches ORDER BY 1")
        assert cur.fetchall() == [(i, "committed", True) for i in range(1, SNAPSHOTS + 1)]
    mrg.rollback()
    src.close()
    mrg.close()
