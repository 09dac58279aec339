"""A batch that finds no current rows (a platform's first, or one after an empty snapshot) inserts the snapshot
straight from staging (merge/diff.py `DiffMerge.load`): the same counts, history and refusals as a diff."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.engine import assert_one_line_error, fetch, merge_args, run_job


def _batches(mrg: Any, schema: str) -> list[tuple[Any, ...]]:
    with mrg.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f"{schema}.ds_batches",))
        if cur.fetchone()[0] is None:
            mrg.rollback()
            return []
        cur.execute(f"""SELECT batch_id, status, rows_total, rows_inserted, rows_updated, rows_deleted
                          FROM {schema}.ds_batches ORDER BY batch_id""")
        rows = cur.fetchall()
    mrg.rollback()
    return rows


@pytest.mark.parametrize("mode", ["live", "forensic"])
def test_a_first_load_that_repeats_a_key_is_refused_and_leaves_nothing(world: dict[str, Any], mode: str) -> None:
    src, mrg, dbs = world["src"], world["mrg"], world["dbs"]
    with src.cursor() as cur:
        cur.execute("ALTER TABLE pairs DROP CONSTRAINT pairs_pkey")
        cur.execute("INSERT INTO pairs SELECT * FROM pairs ORDER BY region, code DESC LIMIT 1")
    src.commit()
    proc = run_job(merge_args(world["model"], f"Load{mode}", mode, dbs), dbs.env)
    assert_one_line_error(proc, "snapshot of pairs (dataset pairs) has duplicate primary keys: Key (region, code)=(")
    assert [b[1] for b in _batches(mrg, f"load{mode}")] == []
    with mrg.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM load{mode}.store1_pairs")
        assert cur.fetchone()[0] == 0
    mrg.rollback()


def test_a_snapshot_after_an_empty_one_is_loaded_and_history_kept(world: dict[str, Any]) -> None:
    src, mrg, dbs = world["src"], world["mrg"], world["dbs"]
    schema, args = "loadforensic", merge_args(world["model"], "LoadForensic", "forensic", dbs)
    first = fetch(src, "pairs", "pairs")
    assert run_job(args, dbs.env).returncode == 0
    with src.cursor() as cur:
        cur.execute("CREATE TABLE pairs_kept AS SELECT * FROM pairs")
        cur.execute("DELETE FROM pairs")
    src.commit()
    assert run_job(args, dbs.env).returncode == 0  # the source is empty: every key's version is closed
    with src.cursor() as cur:  # the same keys come back, half of them with other values
        cur.execute("INSERT INTO pairs SELECT * FROM pairs_kept")
        cur.execute("UPDATE pairs SET note = 'back' WHERE code % 2 = 0")
    src.commit()
    third = fetch(src, "pairs", "pairs")
    assert run_job(args, dbs.env).returncode == 0
    n = len(first)
    assert _batches(mrg, schema) == [(1, "committed", n, n, 0, 0), (2, "committed", 0, 0, 0, n),
                                     (3, "committed", n, n, 0, 0)]
    assert fetch(mrg, f"{schema}.store1_pairs_current", "pairs") == third
    for batch, want in ((1, first), (2, []), (3, third)):
        assert fetch(mrg, f"{schema}.store1_pairs", "pairs", "WHERE ds_batch_in <= %s AND %s < ds_batch_out",
                     (batch, batch)) == want


def _indexes(mrg: Any, table: str) -> dict[str, bool]:
    """The table's indexes -> valid."""
    with mrg.cursor() as cur:
        cur.execute("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE i.indrelid = %s::regclass", (table,))
        found = dict(cur.fetchall())
    mrg.rollback()
    return found


def test_a_forensic_tables_secondary_indexes_come_with_its_first_rows(world: dict[str, Any]) -> None:
    """A new forensic table has its primary key only; the batch that loads its first rows builds the unique
    index of current versions and the as-of index after them, in its own transaction (merge/layout.py
    `complete_indexes`). One missing from a table with rows is made again before the next batch."""
    mrg, dbs = world["mrg"], world["dbs"]
    args = merge_args(world["model"], "IdxForensic", "forensic", dbs)
    setup = ["setup", *args[1:args.index("--store")], *dbs.merge_args()]
    assert run_job(setup, dbs.env).returncode == 0
    table = "idxforensic.store1_pairs"
    assert _indexes(mrg, table) == {"store1_pairs_pkey": True}
    assert run_job(args, dbs.env).returncode == 0
    everything = {"store1_pairs_pkey": True, "store1_pairs_one_current": True, "store1_pairs_by_batch": True}
    assert _indexes(mrg, table) == everything
    with mrg.cursor() as cur, pytest.raises(Exception, match="store1_pairs_one_current"):
        cur.execute(f"INSERT INTO {table} (region, code, ds_batch_in) SELECT region, code, 99 FROM {table} LIMIT 1")
    mrg.rollback()
    with mrg.cursor() as cur:
        cur.execute("DROP INDEX idxforensic.store1_pairs_by_batch")
    mrg.commit()
    assert run_job(args, dbs.env).returncode == 0
    assert _indexes(mrg, table) == everything
