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
from datasurface.engine import run_merge
from datasurface.errors import EXIT_OK
from tests.engine.support import DATASETS, fetch, next_snapshot, oracle_counts, write_model
from tests.mysql.support import create_mysql_tables, expected_rows, load_mysql_snapshot, mysql_model, rfc4122

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
        snap = rfc4122(next_snapshot(rng, snap, removed))
        load_mysql_snapshot(src, snap)
        for name in DATASETS:
            expected[name].append(expected_rows(name, snap[name]))
        for platform, mode in (("OracleLive", "live"), ("OracleForensic", "forensic")):
            code = run_merge(model=str(model), model_ref=None, model_path="datasurface.yaml", platform=platform,
                             mode=mode, store="Store1", merge=endpoint, merge_credential="merge")
            assert code == EXIT_OK
        for name, (_cols, key) in DATASETS.items():
            want = expected[name][n]
            table = f"store1_{name}"
            assert fetch(mrg, f"oraclelive.{table}", name) == want, f"live table, batch {n}"
            assert fetch(mrg, f"oracleforensic.{table}_current", name) == want, f"forensic view, batch {n}"
            for m in range(1, n + 1):
                as_of = fetch(mrg, f"oracleforensic.{table}", name,
                              "WHERE ds_batch_in <= %s AND %s < ds_batch_out", (m, m))
                assert as_of == expected[name][m], f"forensic as of {m} after batch {n}"
            oracle = oracle_counts(expected[name][n - 1], want, len(key))
            for schema in ("oraclelive", "oracleforensic"):
                with mrg.cursor() as cur:
                    cur.execute(f"""SELECT rows_total, rows_inserted, rows_updated, rows_deleted
                                      FROM {schema}.ds_batch_datasets WHERE batch_id = %s AND dataset = %s""",
                                (n, name))
                    got = dict(zip(("total", "inserted", "updated", "deleted"), cur.fetchone(), strict=True))
                mrg.rollback()
                assert got == oracle, f"{schema} counts of {name}, batch {n}"
    with mrg.cursor() as cur:
        cur.execute("SELECT batch_id, status, snapshot_at IS NOT NULL FROM oracleforensic.ds_batches ORDER BY 1")
        assert cur.fetchall() == [(i, "committed", True) for i in range(1, SNAPSHOTS + 1)]
    mrg.rollback()
    src.close()
    mrg.close()
