"""Source tables as they are in real databases: the value rules of the newer types (what is an update and
what is not), enum and domain columns, partitioned tables, views and materialized views, and exact source
names (a table and columns that are not plain identifiers, model names that are SQL keywords)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.engine import assert_one_line_error, one_dataset_model, run_job, write_model

VERSIONS = [15, 18]

COLUMNS = [("id", "integer"), ("j", "json"), ("iv", "interval"), ("ip", "inet"), ("cn", "cidr"),
           ("mac", "macaddr"), ("na", "numeric[]"), ("fa", "double precision[]"), ("ja", "jsonb[]"),
           ("ta", "text[]"), ("ia", "integer[]")]
BASE = ('{"a":1}', "1 day", "10.0.0.1", "10.0.0.0/8", "08:00:2b:01:02:03", "{1.0}", "{0}",
        '{"{\\"a\\": 1, \\"b\\": 2}"}', "{a,b}", "{1,2}")
# (column, new spelling, an update?): the source shows a different value, or the same one written otherwise
CHANGES = [
    ("j", '{"a": 1}', True),  # json keeps its text
    ("iv", "24 hours", True),  # = calls them equal, they print differently
    ("na", "{1.00}", True),  # an element's scale
    ("fa", "{-0}", True),  # an element's sign of zero
    ("ia", "{2,1}", True),
    ("ta", "{a,NULL}", True),
    ("iv", "+1 days", False),
    ("ip", "10.0.0.1/32", False),  # inet, cidr and macaddr print one canonical text per value
    ("cn", "10/8", False),
    ("mac", "08-00-2B-01-02-03", False),
    ("ja", '{"{\\"b\\": 2, \\"a\\": 1}"}', False),  # jsonb's text is canonical
    ("ta", '{"a","b"}', False),
]


def _versions(pg_servers: dict[int, Any], version: int) -> None:
    if version not in pg_servers:
        pytest.skip(f"PostgreSQL {version} is not available here")


def _merge(args: list[str], env: dict[str, str]) -> str:
    proc = run_job(args, env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()[0]


def _texts(conn: Any, relation: str, columns: list[str]) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(f'{c}::text' for c in columns)} FROM {relation} ORDER BY 1")
        rows = cur.fetchall()
    conn.rollback()
    return rows


@pytest.mark.parametrize("mode", ["live", "forensic"])
@pytest.mark.parametrize("version", VERSIONS)
def test_new_types_compare_as_the_source_shows_them(mode: str, version: int, pg_servers: dict[int, Any],
                                                     databases_on: Any, tmp_path: Path) -> None:
    _versions(pg_servers, version)
    dbs = databases_on(pg_servers[version])
    src, mrg = dbs.connect(dbs.source), dbs.connect(dbs.merge)
    names = [c for c, _ in COLUMNS]
    with src.cursor() as cur:
        cur.execute("CREATE TABLE vals (" + ", ".join(f"{c} {t}" for c, t in COLUMNS) + ", PRIMARY KEY (id))")
        for i in range(len(CHANGES)):
            cur.execute(f"INSERT INTO vals VALUES ({', '.join(['%s'] * len(COLUMNS))})", (i, *BASE))
    src.commit()
    model = write_model(tmp_path / "model", one_dataset_model(dbs, "S", "vals", COLUMNS))
    args = ["merge", "--model", str(model), "--platform", "Exact", "--mode", mode, "--store", "S", *dbs.merge_args()]
    assert f"inserted={len(CHANGES)} updated=0" in _merge(args, dbs.env)
    with src.cursor() as cur:
        for i, (column, value, _) in enumerate(CHANGES):
            cur.execute(f"UPDATE vals SET {column} = %s WHERE id = %s", (value, i))
    src.commit()
    updates = sum(1 for _, _, update in CHANGES if update)
    assert f"updated={updates} deleted=0" in _merge(args, dbs.env)
    assert _texts(mrg, "exact.s_vals_current", names) == _texts(src, "vals", names)
    assert "updated=0 deleted=0" in _merge(args, dbs.env)
    if mode == "forensic":
        with mrg.cursor() as cur:
            cur.execute("SELECT id FROM exact.s_vals GROUP BY id HAVING count(*) = 2 ORDER BY id")
            assert [r[0] for r in cur.fetchall()] == [i for i, (_, _, u) in enumerate(CHANGES) if u]
        mrg.rollback()


@pytest.mark.parametrize("version", VERSIONS)
def test_enum_and_domain_columns(version: int, pg_servers: dict[int, Any], databases_on: Any, tmp_path: Path) -> None:
    _versions(pg_servers, version)
    dbs = databases_on(pg_servers[version])
    src, mrg = dbs.connect(dbs.source), dbs.connect(dbs.merge)
    with src.cursor() as cur:
        cur.execute("CREATE TYPE mood AS ENUM ('ok', 'very happy')")
        cur.execute("CREATE DOMAIN amount AS numeric(12,2) CHECK (VALUE >= 0)")
        cur.execute("CREATE DOMAIN email AS text")
        cur.execute("CREATE TABLE people (id integer PRIMARY KEY, m mood, mv mood, amt amount, e email)")
        cur.execute("INSERT INTO people VALUES (1, 'ok', 'very happy', 1.5, 'a@b'), (2, NULL, 'ok', NULL, NULL)")
    src.commit()
    columns = [("id", "integer"), ("m", "text"), ("mv", "varchar(10)"), ("amt", "numeric(12,2)"), ("e", "text")]
    model = write_model(tmp_path / "model", one_dataset_model(dbs, "S", "people", columns))
    args = ["merge", "--model", str(model), "--platform", "Kinds", "--mode", "live", "--store", "S",
            *dbs.merge_args()]
    assert "inserted=2" in _merge(args, dbs.env)
    with mrg.cursor() as cur:
        cur.execute("SELECT id, m, mv, amt::text, e FROM kinds.s_people ORDER BY id")
        assert cur.fetchall() == [(1, "ok", "very happy", "1.50", "a@b"), (2, None, "ok", None, None)]
        cur.execute("""SELECT format_type(atttypid, atttypmod) FROM pg_attribute
                        WHERE attrelid = 'kinds.s_people'::regclass AND attname IN ('m', 'mv') ORDER BY attname""")
        assert [r[0] for r in cur.fetchall()] == ["text", "character varying(10)"]  # the model's types
    mrg.rollback()
    # a label longer than varchar(n) is refused, never cut
    short = write_model(tmp_path / "short", one_dataset_model(dbs, "S", "people", [
        *columns[:2], ("mv", "varchar(3)"), *columns[3:]]))
    proc = run_job(["merge", "--model", str(short), "--platform", "Short", "--mode", "live", "--store", "S",
                    *dbs.merge_args()], dbs.env)
    assert_one_line_error(proc, "too long")
    # an enum is no integer, a domain over numeric(12,2) no numeric(10,2): both named
    wrong = write_model(tmp_path / "wrong", one_dataset_model(dbs, "S", "people", [
        columns[0], ("m", "integer"), columns[2], ("amt", "numeric(10,2)"), columns[4]]))
    proc = run_job(["merge", "--model", str(wrong), "--platform", "Wrong", "--mode", "live", "--store", "S",
                    *dbs.merge_args()], dbs.env)
    assert_one_line_error(proc, "'m' is public.mood in the source but integer",
                          "'amt' is public.amount (a domain over numeric(12,2)) in the source but numeric(10,2)")


@pytest.mark.parametrize("version", VERSIONS)
def test_partitioned_tables_views_and_materialized_views(version: int, pg_servers: dict[int, Any],
                                                         databases_on: Any, tmp_path: Path) -> None:
    _versions(pg_servers, version)
    dbs = databases_on(pg_servers[version])
    src, mrg = dbs.connect(dbs.source), dbs.connect(dbs.merge)
    with src.cursor() as cur:
        cur.execute("CREATE TABLE orders (id integer NOT NULL, status text NOT NULL, amount numeric(10,2)) "
                    "PARTITION BY LIST (status)")
        cur.execute("CREATE TABLE orders_open PARTITION OF orders FOR VALUES IN ('open')")
        cur.execute("CREATE TABLE orders_closed PARTITION OF orders FOR VALUES IN ('closed')")
        cur.execute("INSERT INTO orders VALUES (1, 'open', 1), (2, 'open', 2), (3, 'closed', 3)")
        cur.execute("CREATE VIEW big_orders AS SELECT id, status, amount FROM orders WHERE amount >= 2")
        cur.execute("CREATE MATERIALIZED VIEW order_totals AS SELECT status, sum(amount) AS total FROM orders "
                    "GROUP BY status")
    src.commit()
    cols = [{"name": "id", "type": "integer"}, {"name": "status", "type": "text"},
            {"name": "amount", "type": "numeric(10,2)"}]
    doc = one_dataset_model(dbs, "S", "orders", [])
    doc["stores"][0]["datasets"] = [
        {"name": "orders", "primaryKey": ["id"], "columns": cols},
        {"name": "big", "table": "big_orders", "primaryKey": ["id"], "columns": cols},
        {"name": "totals", "table": "order_totals", "primaryKey": ["status"],
         "columns": [{"name": "status", "type": "text"}, {"name": "total", "type": "numeric"}]},
    ]
    model = write_model(tmp_path / "model", doc)
    args = ["merge", "--model", str(model), "--platform", "Shapes", "--mode", "forensic", "--store", "S",
            *dbs.merge_args()]
    _merge(args, dbs.env)

    def counts(batch: int) -> dict[str, tuple[int, int, int, int]]:
        with mrg.cursor() as cur:
            cur.execute("""SELECT dataset, rows_total, rows_inserted, rows_updated, rows_deleted
                             FROM shapes.ds_batch_datasets WHERE batch_id = %s""", (batch,))
            out = {r[0]: tuple(r[1:]) for r in cur.fetchall()}
        mrg.rollback()
        return out

    assert counts(1) == {"orders": (3, 3, 0, 0), "big": (2, 2, 0, 0), "totals": (2, 2, 0, 0)}
    with src.cursor() as cur:  # row 1 moves to the other partition; the materialized view is refreshed
        cur.execute("UPDATE orders SET status = 'closed' WHERE id = 1")
        cur.execute("REFRESH MATERIALIZED VIEW order_totals")
    src.commit()
    _merge(args, dbs.env)
    assert counts(2) == {"orders": (3, 0, 1, 0), "big": (2, 0, 0, 0), "totals": (2, 0, 2, 0)}
    with mrg.cursor() as cur:
        cur.execute("SELECT id, status FROM shapes.s_orders_current ORDER BY id")
        assert cur.fetchall() == [(1, "closed"), (2, "open"), (3, "closed")]
    mrg.rollback()
    # a view repeating a key is refused in one line, in a later batch and in a first one; nothing changes
    with src.cursor() as cur:
        cur.execute("CREATE OR REPLACE VIEW big_orders AS SELECT id, status, amount FROM orders WHERE amount >= 2 "
                    "UNION ALL SELECT id, status, amount FROM orders WHERE id = 3")
    src.commit()
    assert_one_line_error(run_job(args, dbs.env), "big_orders", "duplicate")
    assert_one_line_error(run_job([*args[:4], "Fresh", *args[5:]], dbs.env), "big_orders", "duplicate")
    with mrg.cursor() as cur:
        cur.execute("SELECT max(batch_id) FROM shapes.ds_batches WHERE status = 'committed'")
        assert cur.fetchone() == (2,)
    mrg.rollback()
