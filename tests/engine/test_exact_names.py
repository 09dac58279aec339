"""Exact source names: a table named as an ORM or a person would name it, columns read by `source:` names,
model names that are SQL keywords — through snapshots (live and forensic, with the history view and the
as-of functions) and change data capture. The merge side keeps the model's names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.cdc import allow_replication, cdc_model, drop_slots
from tests.support.engine import run_job, write_model

TABLE = 'Customer Orders "2026" ✓'
SOURCE_DDL = (
    'CREATE TABLE "Customer Orders ""2026"" ✓" ("CustomerID" integer, "user" integer, "Straße Name" text, '
    '"order" text, "Sel""ect" text, PRIMARY KEY ("CustomerID", "user"))')
COLUMNS = [
    {"name": "customer_id", "source": "CustomerID", "type": "integer"},
    {"name": "user", "type": "integer"},
    {"name": "street", "source": "Straße Name", "type": "text"},
    {"name": "order", "type": "text"},
    {"name": "quoted", "source": 'Sel"ect', "type": "text"},
]
READ = 'SELECT customer_id, "user", street, "order", quoted FROM {} ORDER BY 1, 2'
SOURCE_READ = ('SELECT "CustomerID", "user", "Straße Name", "order", "Sel""ect" FROM "Customer Orders ""2026"" ✓" '
               "ORDER BY 1, 2")


def _model(dbs: Any, tmp: Path, cdc: bool = False) -> Path:
    doc = {"apiVersion": "datasurface/v1", "kind": "Model", "stores": [{
        "name": "S", "source": {"host": dbs.host, "port": dbs.port, "database": dbs.source, "credential": "source"},
        "datasets": [{"name": "orders", "table": TABLE, "primaryKey": ["customer_id", "user"], "columns": COLUMNS}]}]}
    return write_model(tmp / "model", cdc_model(doc) if cdc else doc)


def _rows(conn: Any, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(query, args)
        rows = cur.fetchall()
    conn.rollback()
    return rows


def _change(src: Any, *statements: str) -> None:
    with src.cursor() as cur:
        for s in statements:
            cur.execute(s.replace("{t}", '"Customer Orders ""2026"" ✓"'))
    src.commit()


def _cdc_source(version: int, pg_servers: dict[int, Any], databases_on: Any,
                request: pytest.FixtureRequest) -> tuple[Any, Any, Any]:
    """Databases on `version` whose source role may read replication slots (dropped at the end), and a
    connection to each."""
    if version not in pg_servers:
        pytest.skip(f"PostgreSQL {version} is not available here")
    dbs = databases_on(pg_servers[version])
    allow_replication(dbs)
    request.addfinalizer(lambda: drop_slots(dbs))
    return dbs, dbs.connect(dbs.source), dbs.connect(dbs.merge)


FIRST = ("INSERT INTO {t} VALUES (1, 10, 'Hauptstraße 1', 'o1', 'q1'), (2, 20, 'Elm', 'o2', NULL), "
         "(3, 30, NULL, NULL, 'q3')")
SECOND = ("UPDATE {t} SET \"Straße Name\" = 'Elm 2', \"order\" = 'o2b' WHERE \"CustomerID\" = 2",
          "DELETE FROM {t} WHERE \"CustomerID\" = 3",
          "INSERT INTO {t} VALUES (4, 40, 'New', 'o4', 'q4')")


@pytest.mark.parametrize("version", [15, 18])
def test_exact_names_and_keywords_through_snapshots(version: int, pg_servers: dict[int, Any], databases_on: Any,
                                                    tmp_path: Path) -> None:
    if version not in pg_servers:
        pytest.skip(f"PostgreSQL {version} is not available here")
    dbs = databases_on(pg_servers[version])
    src, mrg = dbs.connect(dbs.source), dbs.connect(dbs.merge)
    _change(src, SOURCE_DDL, FIRST)
    model = _model(dbs, tmp_path)

    def merge(platform: str, mode: str) -> None:
        proc = run_job(["merge", "--model", str(model), "--platform", platform, "--mode", mode, "--store", "S",
                        *dbs.merge_args()], dbs.env)
        assert proc.returncode == 0, proc.stderr

    for platform, mode in (("Live", "live"), ("Hist", "forensic")):
        merge(platform, mode)
    first = _rows(src, SOURCE_READ)
    _change(src, *SECOND)
    for platform, mode in (("Live", "live"), ("Hist", "forensic")):
        merge(platform, mode)
    second = _rows(src, SOURCE_READ)
    assert _rows(mrg, READ.format("live.s_orders_current")) == second
    assert _rows(mrg, READ.format("hist.s_orders_current")) == second
    assert _rows(mrg, READ.format("hist.s_orders_as_of_batch(1)")) == first
    assert _rows(mrg, READ.format("hist.s_orders_as_of(now())")) == second
    assert _rows(mrg, 'SELECT customer_id, "user", ended_by FROM hist.s_orders_history WHERE NOT is_current '
                      "ORDER BY 1") == [(2, 20, "update"), (3, 30, "delete")]
    assert [r[0] for r in _rows(mrg, """SELECT attname FROM pg_attribute WHERE attrelid = 'live.s_orders'::regclass
                                         AND attnum > 0 ORDER BY attnum""")] == [
        "customer_id", "user", "street", "order", "quoted", "ds_batch_id"]
    # a source name that matches nothing is named in one line
    COLUMNS[2]["source"] = "straße name"
    try:
        model = _model(dbs, tmp_path)
        proc = run_job(["merge", "--model", str(model), "--platform", "Live", "--mode", "live", "--store", "S",
                        *dbs.merge_args()], dbs.env)
    finally:
        COLUMNS[2]["source"] = "Straße Name"
    assert proc.returncode == 1
    assert "column 'street' (source name 'straße name') (model type text) is missing from the source" in proc.stderr


@pytest.mark.parametrize("version", [15, 18])
def test_exact_names_through_change_data_capture(version: int, pg_servers: dict[int, Any], databases_on: Any,
                                                 tmp_path: Path, request: pytest.FixtureRequest) -> None:
    dbs, src, mrg = _cdc_source(version, pg_servers, databases_on, request)
    _change(src, SOURCE_DDL, FIRST)
    model = _model(dbs, tmp_path, cdc=True)
    args = ["merge", "--model", str(model), "--platform", "Cdc", "--mode", "forensic", "--store", "S",
            *dbs.merge_args()]
    proc = run_job(args, dbs.env)
    assert proc.returncode == 0, proc.stderr
    _change(src, *SECOND)
    _change(src, "UPDATE {t} SET \"user\" = 21 WHERE \"CustomerID\" = 2")  # a key change: delete and insert
    proc = run_job(args, dbs.env)
    assert proc.returncode == 0, proc.stderr
    assert _rows(mrg, READ.format("cdc.s_orders_current")) == _rows(src, SOURCE_READ)
    assert _rows(mrg, """SELECT rows_total, rows_inserted, rows_updated, rows_deleted FROM cdc.ds_batch_datasets
                          WHERE batch_id = 2""") == [(3, 2, 0, 2)]


@pytest.mark.parametrize("version", [15, 18])
def test_change_data_capture_of_a_partitioned_table_and_a_view_refused(
        version: int, pg_servers: dict[int, Any], databases_on: Any, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    dbs, src, mrg = _cdc_source(version, pg_servers, databases_on, request)
    _change(src, "CREATE TABLE orders (id integer NOT NULL, status text NOT NULL) PARTITION BY LIST (status)",
            "CREATE TABLE orders_open PARTITION OF orders FOR VALUES IN ('open')",
            "CREATE TABLE orders_closed PARTITION OF orders FOR VALUES IN ('closed')",
            "ALTER TABLE orders REPLICA IDENTITY FULL", "ALTER TABLE orders_open REPLICA IDENTITY FULL",
            "ALTER TABLE orders_closed REPLICA IDENTITY FULL",
            "INSERT INTO orders VALUES (1, 'open'), (2, 'open'), (3, 'closed')",
            "CREATE VIEW open_orders AS SELECT id, status FROM orders WHERE status = 'open'")
    cols = [{"name": "id", "type": "integer"}, {"name": "status", "type": "text"}]
    doc = cdc_model({"apiVersion": "datasurface/v1", "kind": "Model", "stores": [{
        "name": "S", "source": {"host": dbs.host, "port": dbs.port, "database": dbs.source, "credential": "source"},
        "datasets": [{"name": "orders", "primaryKey": ["id"], "columns": cols}]}]})
    model = write_model(tmp_path / "model", doc)
    args = ["merge", "--model", str(model), "--platform", "Part", "--mode", "live", "--store", "S",
            *dbs.merge_args()]
    proc = run_job(args, dbs.env)
    assert proc.returncode == 0, proc.stderr
    _change(src, "UPDATE orders SET status = 'closed' WHERE id = 1", "INSERT INTO orders VALUES (4, 'closed')",
            "DELETE FROM orders WHERE id = 2")
    proc = run_job(args, dbs.env)
    assert proc.returncode == 0, proc.stderr
    assert _rows(mrg, "SELECT id, status FROM part.s_orders_current ORDER BY 1") == _rows(
        src, "SELECT id, status FROM orders ORDER BY 1")
    assert _rows(mrg, """SELECT rows_total, rows_inserted, rows_updated, rows_deleted FROM part.ds_batch_datasets
                          WHERE batch_id = 2""") == [(3, 1, 1, 1)]  # the row that moved partitions: an update
    doc["stores"][0]["datasets"].append({"name": "open_orders", "primaryKey": ["id"], "columns": cols})
    write_model(tmp_path / "model", doc)
    proc = run_job(args, dbs.env)
    assert proc.returncode == 1
    assert "public.open_orders is a view, whose changes cannot be captured" in proc.stderr.strip().splitlines()[-1]
