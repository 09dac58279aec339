"""The merge table's statistics follow its size: ANALYZE after the first load and after a batch that
moves the number of current rows by more than 50 + 10%, none after a batch that changes many rows but
leaves their number where it was (the 10%-churn case, where the ANALYZE cost as much as a write)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.engine import merge_args, one_dataset_model, run_job, write_model

COLUMNS = [("id", "integer"), ("v", "text")]


def _reltuples(mrg: Any, schema: str, table: str) -> float:
    with mrg.cursor() as cur:
        cur.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", (f"{schema}.{table}",))
        value = float(cur.fetchone()[0])
    mrg.rollback()
    return value


@pytest.mark.parametrize("mode", ["live", "forensic"])
def test_statistics_follow_the_current_row_count(dbs: Any, tmp_path: Path, mode: str) -> None:
    src, mrg = dbs.connect(dbs.source), dbs.connect(dbs.merge)
    with src.cursor() as cur:
        cur.execute("CREATE TABLE sized (id integer PRIMARY KEY, v text)")
        cur.execute("INSERT INTO sized SELECT g, 'v' || g FROM generate_series(1, 400) g")
    src.commit()
    model = write_model(tmp_path / "model", one_dataset_model(dbs, "Sizes", "sized", COLUMNS))
    platform, schema, table = f"Stats{mode}", f"stats{mode}", "sizes_sized"

    def merge() -> None:
        proc = run_job(merge_args(model, platform, mode, dbs, store="Sizes"), dbs.env)
        assert proc.returncode == 0, proc.stderr

    merge()
    assert _reltuples(mrg, schema, table) == 400  # analysed after the first load
    with mrg.cursor() as cur:  # only the job's own ANALYZE may change the statistics from here on
        cur.execute(f"ALTER TABLE {schema}.{table} SET (autovacuum_enabled = false)")
    mrg.commit()
    with src.cursor() as cur:  # 200 updates, 20 deletes: the current rows move by 20 (< 50 + 40)
        cur.execute("UPDATE sized SET v = v || '!' WHERE id <= 200")
        cur.execute("DELETE FROM sized WHERE id > 380")
    src.commit()
    merge()
    assert _reltuples(mrg, schema, table) == 400
    with src.cursor() as cur:  # 200 deletes: 380 -> 180 current rows
        cur.execute("DELETE FROM sized WHERE id > 180")
    src.commit()
    merge()
    current = 180 if mode == "live" else None
    got = _reltuples(mrg, schema, table)
    if current is not None:
        assert got == current
    else:  # forensic: every version stays (400 + 200 updated versions), 180 of them current
        assert got == 600
    src.close()
    mrg.close()
