"""What consumers see is what the source shows: a change visible only in the text form of a value
(numeric scale, the sign of a float zero, a jsonb number's scale) is an update in both modes, and values
that are the same (NaN, char padding, jsonb key order, one instant in another time zone) are not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.engine import one_dataset_model, run_job, write_model

COLUMNS = [("id", "integer"), ("n", "numeric"), ("ns", "numeric(10,2)"), ("f", "double precision"),
           ("r", "real"), ("j", "jsonb"), ("c", "char(5)"), ("ts", "timestamptz")]
FIRST = [
    (1, "1.0", "1.5", "1", "1", '{"x": 1}', "a", "2026-01-01 12:00+00"),
    (2, "2.50", "2.5", "0", "0", '{"x": 1.0}', "ab", "2026-01-01 12:00+00"),
    (3, "NaN", "3", "NaN", "NaN", '{"a": 1, "b": [1, 2]}', "abc", "2026-01-01 12:00+00"),
    (4, "0", "4", "Infinity", "-Infinity", '{"k": "v"}', "abcd", "2026-06-01 00:00:00.123456+00"),
]
# only the text form changes in rows 1 and 2; rows 3 and 4 get the same values written differently
SECOND = [
    (1, "1.00", "1.50", "1", "1", '{"x": 1}', "a", "2026-01-01 12:00+00"),
    (2, "2.5", "2.50", "-0", "-0", '{"x": 1.00}', "ab", "2026-01-01 12:00+00"),
    (3, "NaN", "3.00", "NaN", "NaN", '{"b": [1, 2], "a": 1}', "abc  ", "2026-01-01 13:00+01"),
    (4, "-0", "4.0", "Infinity", "-Infinity", '{ "k" : "v" }', "abcd ", "2026-06-01 02:00:00.123456+02"),
]


def _load(src: Any, rows: list[tuple[Any, ...]]) -> None:
    with src.cursor() as cur:
        cur.execute("TRUNCATE vals")
        cur.executemany("INSERT INTO vals VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", rows)
    src.commit()


def _text(conn: Any, relation: str) -> list[tuple[Any, ...]]:
    cols = ", ".join(f"{c}::text" for c, _ in COLUMNS)
    with conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
        cur.execute(f"SELECT {cols} FROM {relation} ORDER BY id")
        rows = cur.fetchall()
    conn.rollback()
    return rows


@pytest.mark.parametrize("mode", ["live", "forensic"])
@pytest.mark.parametrize("version", [15, 18])
def test_text_only_changes_are_updates_and_equal_values_are_not(mode: str, version: int, pg_servers: dict[int, Any],
                                                                 databases_on: Any, tmp_path: Path) -> None:
    if version not in pg_servers:
        pytest.skip(f"PostgreSQL {version} is not available here")
    dbs = databases_on(pg_servers[version])
    src, mrg = dbs.connect(dbs.source), dbs.connect(dbs.merge)
    with src.cursor() as cur:
        cur.execute("CREATE TABLE vals (" + ", ".join(f"{c} {t}" for c, t in COLUMNS) + ", PRIMARY KEY (id))")
    src.commit()
    model = write_model(tmp_path / "model", one_dataset_model(dbs, "S", "vals", COLUMNS))
    args = ["merge", "--model", str(model), "--platform", "Exact", "--mode", mode, "--store", "S", *dbs.merge_args()]

    def merge() -> str:
        proc = run_job(args, dbs.env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()[0]

    _load(src, FIRST)
    assert "inserted=4 updated=0" in merge()
    _load(src, SECOND)
    assert "updated=2 deleted=0" in merge()
    assert _text(mrg, "exact.s_vals_current") == _text(src, "vals")
    assert "updated=0 deleted=0" in merge()  # and nothing phantom afterwards
    if mode == "forensic":
        with mrg.cursor() as cur:
            cur.execute("SELECT id, count(*) FROM exact.s_vals GROUP BY id ORDER BY id")
            assert cur.fetchall() == [(1, 2), (2, 2), (3, 1), (4, 1)]
        mrg.rollback()
