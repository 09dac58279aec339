"""Generated names (model.names): the `ds_` prefix is the job's, and no two datasets of a model can own the
same relation or function name in the merge schema — checked by the validator with both paths named, and
against what the engine really creates in PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from datasurface.errors import ModelError
from datasurface.merge import layout
from datasurface.model import Dataset, parse_model
from datasurface.model.names import IDENTIFIER_MAX, RESERVED_PREFIX, dataset_names, is_reserved
from tests.support.engine import DATASETS, create_source_tables, merge_args, model_dict, run_job, write_model

FILE = "datasurface.yaml"


def store(name: str, *datasets: str) -> dict[str, Any]:
    return {"name": name, "source": {"host": "pg", "database": "db", "credential": "source"},
            "datasets": [{"name": d, "primaryKey": ["id"], "columns": [{"name": "id", "type": "integer"}]}
                         for d in datasets]}


def parse(*stores: dict[str, Any]) -> Any:
    doc = {"apiVersion": "datasurface/v1", "kind": "Model", "stores": list(stores)}
    return parse_model(yaml.safe_dump(doc, sort_keys=False), FILE)


def problem(*stores: dict[str, Any]) -> str:
    with pytest.raises(ModelError) as info:
        parse(*stores)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", ["ds", "DS", "Ds_x", "ds_stage", "ds_batches", "dS_Runs", "ds_"])
def test_store_names_of_the_job_are_reserved(name: str) -> None:
    message = problem(store("Store1", "a"), store(name, "batches"))
    assert message.startswith(f"{FILE}: stores[1].name: {name!r} is reserved: store names `ds` and `ds_…`")
    assert message.endswith("rename the store (line 16)")


@pytest.mark.parametrize("name", ["dsx", "d_s", "xds_", "d", "D5_x"])
def test_names_near_the_reservation_are_fine(name: str) -> None:
    assert parse(store(name, "ds", "ds_stage_x", "batches")).stores[0].name == name  # dataset names are free


def test_no_valid_model_name_can_start_with_the_job_prefix() -> None:
    """The reservation is exactly what makes `<store>_<dataset>` unable to start with `ds_`."""
    for s in ("d", "ds", "DS", "dS_x", "dsa", "Dx", "ds_"):
        for d in ("s", "ds", "stage", "x"):
            assert dataset_names(s, d).table.startswith(RESERVED_PREFIX) == is_reserved(s)


@pytest.mark.parametrize(("first", "second", "message"), [
    # store a + dataset b_c and store a_b + dataset c: both tables are a_b_c
    (("a", "b_c"), ("a_b", "c"),
     "its table 'a_b_c' is also the table of stores[0].datasets[0] (store 'a', dataset 'b_c')"),
    (("A", "B_c"), ("a_b", "C"),
     "its table 'a_b_c' is also the table of stores[0].datasets[0] (store 'A', dataset 'B_c')"),
    (("a", "b"), ("a", "b_current"), "its table 'a_b_current' is also the view of stores[0].datasets[0]"),
    (("a", "b_current"), ("a", "b"), "its view 'a_b_current' is also the table of stores[0].datasets[0]"),
    (("a", "b"), ("a", "b_history"), "its table 'a_b_history' is also the history view of stores[0].datasets[0]"),
    (("a", "b"), ("a", "b_as_of"), "its table 'a_b_as_of' is also the as-of function of stores[0].datasets[0]"),
    (("a", "b"), ("a", "b_as_of_batch"), "its table 'a_b_as_of_batch' is also the as-of-batch function of"),
    (("a", "b_as_of"), ("a", "b"), "its as-of function 'a_b_as_of' is also the table of stores[0].datasets[0]"),
    (("a", "b"), ("a", "b_pkey"), "its table 'a_b_pkey' is also the primary-key index of stores[0].datasets[0]"),
    (("a", "b"), ("a", "b_one_current"), "its table 'a_b_one_current' is also the current-version index of"),
    (("a", "b"), ("a", "b_by_batch"), "its table 'a_b_by_batch' is also the as-of index of stores[0].datasets[0]"),
    # PostgreSQL keeps 63 bytes of a name: these two tables are one
    (("S" + "s" * 39, "D" + "d" * 21 + "x"), ("S" + "s" * 39, "D" + "d" * 21 + "y"),
     f"its table {('s' * 40 + '_' + 'd' * 22)!r} is also the table of stores[0].datasets[0]"),
])
def test_generated_names_never_collide(first: tuple[str, str], second: tuple[str, str], message: str) -> None:
    if first[0] == second[0]:
        stores = [store(first[0], first[1], second[1])]
        where = "stores[0].datasets[1].name"
    else:
        stores = [store(*first), store(*second)]
        where = "stores[1].datasets[0].name"
    text = problem(*stores)
    assert text.startswith(f"{FILE}: {where}: {message}"), text
    assert "rename a store or a dataset (line " in text


def test_a_collision_is_reported_once_per_dataset_and_all_are_listed() -> None:
    message = problem(store("a", "b", "b_current", "b_history"), store("a_b", "current"))
    assert message.count("rename a store or a dataset") == 3
    assert "stores[0].datasets[1].name" in message and "stores[0].datasets[2].name" in message
    assert "stores[1].datasets[0].name" in message


def test_as_of_batch_cut_at_63_bytes_collides_with_what_postgresql_keeps() -> None:
    """A 55-character table's `_as_of_batch` is cut to `<table>_as_of_b`: another dataset's table."""
    s, d = "S" + "s" * 39, "D" + "d" * 13  # table of 40 + 1 + 14 = 55 characters
    table = dataset_names(s, d).table
    assert len(table) == 55 and len(dataset_names(s, d).as_of_batch) > IDENTIFIER_MAX
    other = d + "_as_of_b"
    message = problem(store(s, d, other))
    assert f"its table {table + '_as_of_b'!r} is also the as-of-batch function of stores[0].datasets[0]" in message


def test_distinct_names_are_fine() -> None:
    model = parse(store("a", "b", "bcurrent", "b_curr", "history"), store("a_c", "b"), store("ab", "c"))
    assert [len(s.datasets) for s in model.stores] == [4, 1, 1]


def test_names_are_the_engines_names() -> None:
    """merge.layout builds its names from model.names, and its own objects start with ds_."""
    dataset = Dataset(name="Customers", table="customers", primary_key=("id",), columns=())
    for s in ("Store1", "S" + "x" * 39):
        lay = layout.DatasetLayout("p", s, dataset, layout.FORENSIC)
        names = dataset_names(s, dataset.name)
        assert (lay.table, lay.view) == (names.table, names.current)
        assert lay.staging.startswith(RESERVED_PREFIX)


@pytest.mark.parametrize("mode", ["live", "forensic"])
def test_every_object_the_engine_creates_is_a_generated_name_or_the_jobs_own(
        dbs: Any, tmp_path: Path, mode: str) -> None:
    """Run the real job, then list what the platform schema holds: each relation (tables, views, indexes,
    types) and function is a name some dataset owns, or starts with `ds_`. An engine that starts creating
    another name fails here, before a model can collide with it."""
    datasets = {"pairs": DATASETS["pairs"], "pairs_2": DATASETS["pairs"]}
    src = dbs.connect(dbs.source)
    create_source_tables(src, datasets)
    src.close()
    doc = model_dict(dbs.host, dbs.port, dbs.source, store="Store1", datasets=datasets)
    model = write_model(tmp_path / "model", doc)
    platform = f"Names{mode.capitalize()}"
    done = run_job(merge_args(model, platform, mode, dbs), dbs.env)
    assert done.returncode == 0, done.stderr
    owned: dict[str, str] = {}
    for d in doc["stores"][0]["datasets"]:
        owned.update(dataset_names("Store1", d["name"]).owned())
    conn = dbs.connect(dbs.merge)
    try:
        with conn.cursor() as cur:
            cur.execute("""SELECT c.relname, c.relkind::text FROM pg_class c WHERE c.relnamespace = %s::regnamespace
                           UNION ALL SELECT p.proname, 'function' FROM pg_proc p WHERE p.pronamespace = %s::regnamespace
                           UNION ALL SELECT t.typname, 'type' FROM pg_type t
                            WHERE t.typnamespace = %s::regnamespace AND t.typrelid = 0 AND t.typelem = 0""",
                        (platform.lower(),) * 3)
            found = cur.fetchall()
    finally:
        conn.close()
    assert {"store1_pairs", "store1_pairs_current", "store1_pairs_2_current", "ds_batches"} <= {n for n, _ in found}
    strays = [(n, k) for n, k in found if n not in owned and not n.startswith(RESERVED_PREFIX)]
    assert strays == [], f"objects outside model.names' rule: {strays}"

