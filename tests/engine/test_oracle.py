"""The oracle test: random snapshot sequences through live and forensic merges, checked after every batch,
for each source type.

Datasets use every model type the source holds, a composite key, nullable columns flipping NULL / '' /
value, deletes and delete-then-re-add. After each batch: the live table and both views equal the snapshot,
forensic "as of N" equals snapshot N for every earlier N, and the ledger counts equal the oracle's.
PostgreSQL sources run on every major available here (system 15, embedded 16 and 18); MySQL sources on
the suite's MariaDB.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from datasurface.db import Endpoint
from tests.support import mysql
from tests.support.engine import (
    COMMON_DATASETS,
    DATASETS,
    Datasets,
    create_source_tables,
    fetch,
    load_snapshot,
    merge_both_and_check,
    model_dict,
    next_snapshot,
    write_model,
)

Snapshot = dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]


@dataclass
class OracleSource:
    """One source type's side of the test: its databases, its datasets and how a snapshot gets in."""

    source_type: str
    source: Any  # a connection to the source database
    merge: Any  # a connection to the merge database
    endpoint: Endpoint
    env: dict[str, str]
    model: dict[str, Any]
    datasets: Datasets
    snapshots: int

    def next_snapshot(self, rng: random.Random, previous: Snapshot, removed: dict[str, set[Any]]) -> Snapshot:
        snapshot = next_snapshot(rng, previous, removed, self.datasets)
        return mysql.rfc4122(snapshot) if self.source_type == "mysql" else snapshot

    def load(self, snapshot: Snapshot) -> dict[str, list[Any]]:
        """Load the snapshot; what the merge tables must then hold, per dataset."""
        if self.source_type == "mysql":
            mysql.load_mysql_snapshot(self.source, snapshot)
            return {name: mysql.expected_rows(name, snapshot[name]) for name in self.datasets}
        load_snapshot(self.source, snapshot)
        return {name: fetch(self.source, f'"{name}"', name) for name in self.datasets}


def postgres_source(pg_servers: dict[int, Any], databases_on: Any, version: int) -> OracleSource:
    if version not in pg_servers:
        pytest.skip(f"PostgreSQL {version} not available here")
    dbs = databases_on(pg_servers[version])
    source = dbs.connect(dbs.source)
    create_source_tables(source)
    return OracleSource("postgres", source, dbs.connect(dbs.merge), Endpoint(dbs.host, dbs.port, dbs.merge),
                        dbs.env, model_dict(dbs.host, dbs.port, dbs.source), DATASETS, 22)


def mysql_source(request: pytest.FixtureRequest, pg_server: Any) -> OracleSource:
    dbs = mysql.make_mysql_databases(request.getfixturevalue("mariadb"), pg_server)
    source = dbs.connect_source()
    mysql.create_mysql_tables(source)
    return OracleSource("mysql", source, dbs.connect_merge(), Endpoint(dbs.pg.host, dbs.pg.port, dbs.pg.merge),
                        dbs.env, mysql.mysql_model(dbs.host, dbs.source), COMMON_DATASETS, 14)


CASES = [("postgres", 15, 1), ("postgres", 15, 2), ("postgres", 15, 3), ("postgres", 16, 1), ("postgres", 18, 1),
         ("mysql", None, 1), ("mysql", None, 2)]


@pytest.mark.parametrize(("source_type", "version", "seed"), CASES,
                         ids=[f"{kind}{version or ''}-{seed}" for kind, version, seed in CASES])
def test_random_snapshots_match_oracle(source_type: str, version: int | None, seed: int,
                                       request: pytest.FixtureRequest, pg_servers: dict[int, Any], pg_server: Any,
                                       databases_on: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if source_type == "mysql":
        side = mysql_source(request, pg_server)
        rng = random.Random(7000 + seed)
    else:
        assert version is not None
        side = postgres_source(pg_servers, databases_on, version)
        rng = random.Random(version * 1000 + seed)
    for name, value in side.env.items():
        monkeypatch.setenv(name, value)
    model = write_model(tmp_path / "model", side.model)
    snapshot: Snapshot = {}
    removed: dict[str, set[Any]] = defaultdict(set)
    expected: dict[str, list[list[Any]]] = {name: [[]] for name in side.datasets}  # expected[name][N]

    for n in range(1, side.snapshots + 1):
        snapshot = side.next_snapshot(rng, snapshot, removed)
        for name, rows in side.load(snapshot).items():
            expected[name].append(rows)
        merge_both_and_check(side.merge, model, side.endpoint, expected, n, side.datasets)
    # the ledger: one committed batch per run, ids 1..N without gaps, each with its snapshot's time, totals =
    # sum of the datasets
    merge = side.merge
    for schema in ("oraclelive", "oracleforensic"):
        with merge.cursor() as cur:
            cur.execute(f"""SELECT b.batch_id, b.status, b.dataset, b.snapshot_at IS NOT NULL, b.rows_total,
                                   b.rows_inserted, b.rows_updated, b.rows_deleted,
                                   (SELECT array[sum(rows_total), sum(rows_inserted), sum(rows_updated),
                                   sum(rows_deleted)] FROM {schema}.ds_batch_datasets d
                                   WHERE d.batch_id = b.batch_id)
                              FROM {schema}.ds_batches b ORDER BY batch_id""")
            rows = cur.fetchall()
        merge.rollback()
        assert [r[0] for r in rows] == list(range(1, side.snapshots + 1))
        assert {r[1:4] for r in rows} == {("committed", None, True)}
        assert all(list(r[4:8]) == list(r[8]) for r in rows)
    # forensic: at most one current version per key is enforced by the database itself
    with merge.cursor() as cur, pytest.raises(Exception, match="duplicate key"):
        cur.execute("""INSERT INTO oracleforensic.store1_pairs (region, code, ds_batch_in)
                       SELECT region, code, 999 FROM oracleforensic.store1_pairs_current LIMIT 1""")
    merge.rollback()
    side.source.close()
    merge.close()
