"""History in time (docs/consumers.md) against an oracle: random snapshots with updates, deletes and re-adds through
forensic merges; after every batch the `_history` view, `_as_of_batch(n)` for every batch and `_as_of(at)` for
instants before, at and between the snapshots equal what the oracle derives from the snapshots and the
ledger's snapshot_at. PostgreSQL 15 (one multi_dataset stream) and 18 (single_dataset streams)."""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from datasurface.db import Endpoint
from datasurface.engine import run_merge
from datasurface.errors import EXIT_OK
from tests.support.engine import (
    AS_TEXT,
    DATASETS,
    create_source_tables,
    fetch,
    load_snapshot,
    model_dict,
    next_snapshot,
    write_model,
)

SNAPSHOTS = 9
US = dt.timedelta(microseconds=1)


class Oracle:
    """Versions per key as docs/consumers.md defines them: [values, batch_in, batch_out or None]."""

    def __init__(self, nkey: int) -> None:
        self.nkey = nkey
        self.versions: dict[tuple[Any, ...], list[list[Any]]] = defaultdict(list)

    def apply(self, batch: int, rows: list[tuple[Any, ...]]) -> None:
        snap = {r[:self.nkey]: r for r in rows}
        for key, versions in self.versions.items():
            last = versions[-1]
            if last[2] is None and (key not in snap or snap[key] != last[0]):
                last[2] = batch
        for key, row in snap.items():
            versions = self.versions[key]
            if not versions or versions[-1][2] is not None:
                versions.append([row, batch, None])

    def history(self, snapshot_at: dict[int, dt.datetime]) -> list[tuple[Any, ...]]:
        out = []
        for _key, versions in sorted(self.versions.items()):
            starts = {v[1] for v in versions}
            for row, b_in, b_out in versions:
                ended = None if b_out is None else ("update" if b_out in starts else "delete")
                out.append((*row, b_in, b_out, snapshot_at[b_in], snapshot_at.get(b_out) if b_out else None,
                            b_out is None, ended))
        return out


def history_rows(conn: Any, schema: str, table: str, name: str) -> list[tuple[Any, ...]]:
    """The history view's rows in (key, ds_batch_in) order: the model's columns (as support.fetch reads them)
    and the six."""
    cols, key = DATASETS[name]
    colsql = ", ".join(f'"{c}"::text' if t in AS_TEXT or t.endswith("[]") else f'"{c}"' for c, t in cols)
    with conn.cursor() as cur:
        cur.execute(f"SELECT {colsql}, ds_batch_in, ds_batch_out, valid_from, valid_to, is_current, ended_by "
                    f"FROM {schema}.{table}_history ORDER BY {', '.join(key)}, ds_batch_in")
        rows = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in cur.fetchall()]
    conn.rollback()
    return rows


@pytest.mark.parametrize(("version", "consistency"), [(15, "multi_dataset"), (18, "single_dataset")])
def test_history_and_as_of_match_oracle(pg_servers: dict[int, Any], databases_on: Any, version: int,
                                        consistency: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if version not in pg_servers:
        pytest.skip(f"PostgreSQL {version} not available here")
    dbs = databases_on(pg_servers[version])
    for k, v in dbs.env.items():
        monkeypatch.setenv(k, v)
    src, mrg = dbs.connect(dbs.source), dbs.connect(dbs.merge)
    create_source_tables(src)
    model = write_model(tmp_path / "model", model_dict(dbs.host, dbs.port, dbs.source, consistency=consistency))
    endpoint = Endpoint(dbs.host, dbs.port, dbs.merge)
    rng = random.Random(version * 7 + 13)
    snap: dict[str, Any] = {}
    removed: dict[str, set[Any]] = defaultdict(set)
    expected: dict[str, list[list[Any]]] = {name: [[]] for name in DATASETS}
    oracles = {name: Oracle(len(key)) for name, (_c, key) in DATASETS.items()}
    readded = 0

    for n in range(1, SNAPSHOTS + 1):
        snap = next_snapshot(rng, snap, removed)
        load_snapshot(src, snap)
        for name in DATASETS:
            expected[name].append(fetch(src, f'"{name}"', name))
            before = {r[:len(DATASETS[name][1])] for v in oracles[name].versions.values() for r in [v[-1][0]]
                      if v[-1][2] is not None}
            oracles[name].apply(n, expected[name][n])
            readded += sum(1 for k in before if oracles[name].versions[k][-1][1] == n)
        code = run_merge(model=str(model), model_ref=None, model_path="datasurface.yaml", platform="Hist",
                         mode="forensic", store="Store1", merge=endpoint, merge_credential="merge")
        assert code == EXIT_OK
        for name in DATASETS:
            table = f"store1_{name}"
            with mrg.cursor() as cur:
                cur.execute("SELECT batch_id, snapshot_at FROM hist.ds_batches WHERE stream = %s ORDER BY 1",
                            ("Store1" if consistency == "multi_dataset" else f"Store1.{name}",))
                snapshot_at = dict(cur.fetchall())
            mrg.rollback()
            assert sorted(snapshot_at) == list(range(1, n + 1))
            times = [snapshot_at[b] for b in range(1, n + 1)]
            assert times == sorted(times) and len(set(times)) == n

            assert history_rows(mrg, "hist", table, name) == oracles[name].history(snapshot_at), f"history, batch {n}"
            for m in range(1, n + 1):
                assert fetch(mrg, f"hist.{table}_as_of_batch(%s)", name, "", (m,)) == expected[name][m], \
                    f"as_of_batch({m}) after batch {n}"
                at = snapshot_at[m]
                assert fetch(mrg, f"hist.{table}_as_of(%s)", name, "", (at,)) == expected[name][m], \
                    f"as_of(snapshot {m}) after batch {n}"
                assert fetch(mrg, f"hist.{table}_as_of(%s)", name, "", (at - US,)) == expected[name][m - 1], \
                    f"as_of(just before snapshot {m}) after batch {n}"
                between = at + (snapshot_at[m + 1] - at) / 2 if m < n else at + dt.timedelta(days=1)
                assert fetch(mrg, f"hist.{table}_as_of(%s)", name, "", (between,)) == expected[name][m], \
                    f"as_of(after snapshot {m}) after batch {n}"
            for not_committed in (0, n + 1, -5):
                assert fetch(mrg, f"hist.{table}_as_of_batch(%s)", name, "", (not_committed,)) == []
    assert readded > 0, "the random sequence re-added no deleted key: pick another seed"
    src.close()
    mrg.close()
