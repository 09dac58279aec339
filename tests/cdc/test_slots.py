"""Slot hygiene: `setup` drops a platform's slots of stores that no longer read changes, and no other slot
(a cdc store's own, another platform's whose name the platform's could be taken for, one on a database the
model does not name); `status` shows the WAL each cdc stream's slot retains."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from psycopg2 import sql

from tests.support.cdc import allow_replication, cdc_model, drop_slots
from tests.support.engine import SMALL, create_source_tables, merge_args, model_dict, run_job, write_model
from tests.support.exporter import wait_for


def slots(dbs: Any) -> set[str]:
    conn = dbs.server.admin_connect()
    with conn.cursor() as cur:
        cur.execute("SELECT slot_name::text FROM pg_replication_slots WHERE database = %s", (dbs.source,))
        names = {r[0] for r in cur.fetchall()}
    conn.close()
    return names


def setup(model: Path, platform: str, dbs: Any) -> Any:
    proc = run_job(["setup", "--model", str(model), "--platform", platform, "--mode", "live", *dbs.merge_args()],
                   dbs.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture
def cdc_world(dbs: Any, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Store1 read as changes by platforms Yellow and Yellow_EU: slots ds_yellow_store1, ds_yellow_eu_store1."""
    allow_replication(dbs)
    request.addfinalizer(lambda: drop_slots(dbs))
    src = dbs.connect(dbs.source)
    create_source_tables(src, SMALL)
    src.close()
    doc = cdc_model(model_dict(dbs.host, dbs.port, dbs.source, datasets=SMALL))
    model = write_model(tmp_path / "cdc", doc)
    for platform in ("Yellow", "Yellow_EU"):
        proc = run_job(merge_args(model, platform, "live", dbs), dbs.env)
        assert proc.returncode == 0, proc.stderr
    assert slots(dbs) == {"ds_yellow_store1", "ds_yellow_eu_store1"}
    return {"dbs": dbs, "doc": doc, "model": model, "tmp": tmp_path}


def snapshot_store(doc: dict[str, Any], name: str) -> dict[str, Any]:
    store = copy.deepcopy(doc["stores"][0])
    store["name"] = name
    store["source"].pop("ingestion", None)
    return store  # type: ignore[no-any-return]


def test_setup_drops_only_the_slots_of_stores_that_no_longer_read_changes(cdc_world: dict[str, Any]) -> None:
    dbs, doc, tmp = cdc_world["dbs"], cdc_world["doc"], cdc_world["tmp"]
    out = setup(cdc_world["model"], "Yellow", dbs)  # Store1 still reads changes: nothing to drop
    assert "slot" not in out
    assert slots(dbs) == {"ds_yellow_store1", "ds_yellow_eu_store1"}

    # Store1 now snapshot on Yellow; Yellow also has a store EU_Store1, whose slot name would be
    # ds_yellow_eu_store1: Yellow_EU's slot of Store1, which Yellow must not take for its own
    changed = {**doc, "stores": [snapshot_store(doc, "Store1"), snapshot_store(doc, "EU_Store1")]}
    out = setup(write_model(tmp / "snapshot", changed), "Yellow", dbs)
    print(out)
    assert slots(dbs) == {"ds_yellow_eu_store1"}
    assert "dropped replication slot ds_yellow_store1" in out and "store Store1 no longer reads changes" in out
    assert "replication slot ds_yellow_eu_store1" in out and "is kept" in out
    assert "platform yellow_eu's slot of store Store1" in out


def test_a_store_gone_from_the_model_is_named_for_a_person_or_dropped_where_its_source_is_known(
        cdc_world: dict[str, Any]) -> None:
    dbs, doc, tmp = cdc_world["dbs"], cdc_world["doc"], cdc_world["tmp"]
    # the model has lost Store1 and names another database only: Store1's source is unknown
    elsewhere = snapshot_store(doc, "Other")
    elsewhere["source"].update({"database": dbs.merge, "credential": "merge"})
    out = setup(write_model(tmp / "elsewhere", {**doc, "stores": [elsewhere]}), "Yellow_EU", dbs)
    print(out)
    assert slots(dbs) == {"ds_yellow_store1", "ds_yellow_eu_store1"}
    assert ("store Store1 is no longer in the model and its source is unknown: if its replication slot "
            "ds_yellow_eu_store1 still exists there, drop it by hand: "
            "SELECT pg_drop_replication_slot('ds_yellow_eu_store1')") in " ".join(out.split())
    assert "ds_yellow_store1" not in out

    # a model naming Store1's database again (another store there): the ledger's Store1 slot is found, dropped
    there = snapshot_store(doc, "Other")
    out = setup(write_model(tmp / "there", {**doc, "stores": [there]}), "Yellow_EU", dbs)
    assert slots(dbs) == {"ds_yellow_store1"}
    assert "dropped replication slot ds_yellow_eu_store1" in out


def test_status_shows_the_wal_each_cdc_stream_retains(cdc_world: dict[str, Any]) -> None:
    dbs = cdc_world["dbs"]
    src = dbs.connect(dbs.source)
    with src.cursor() as cur:  # WAL the slot must keep until the next batch reads it
        cur.execute("INSERT INTO pairs (region, code, note) SELECT 'r', g, repeat('x', 500) "
                    "FROM generate_series(1, 4000) g")
    src.commit()
    with src.cursor() as cur:  # the test servers commit asynchronously: wait for the WAL to be written
        cur.execute("SELECT pg_current_wal_insert_lsn()")
        inserted = cur.fetchone()[0]

        def written() -> bool:
            cur.execute("SELECT pg_current_wal_lsn() >= %s::pg_lsn", (inserted,))
            return bool(cur.fetchone()[0])

        assert wait_for(written, timeout=10)
    src.close()
    proc = run_job(["status", "--platform", "Yellow", "--model", str(cdc_world["model"]), *dbs.merge_args()],
                   dbs.env, {"COLUMNS": "80", "TERM": "dumb"})
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    line = next(x for x in proc.stdout.splitlines() if "ds_yellow_store1" in x)
    assert "Store1" in line and "retains" in line
    size = line.split("retains ")[1].split()
    assert size[1] == "MiB" and float(size[0]) >= 1.0, line
    without = run_job(["status", "--platform", "Yellow", *dbs.merge_args()], dbs.env)
    assert without.returncode == 0 and "ds_yellow_store1" not in without.stdout
    broken = run_job(["status", "--platform", "Yellow", "--model", str(cdc_world["tmp"] / "none"),
                      *dbs.merge_args()], dbs.env, {"COLUMNS": "200"})
    assert broken.returncode == 0, broken.stderr
    assert "Store1" in broken.stdout and "the WAL that cdc streams' slots retain is not shown" in broken.stdout


def test_a_slot_setup_may_not_drop_or_a_source_it_cannot_reach_is_reported_and_setup_succeeds(
        cdc_world: dict[str, Any]) -> None:
    dbs, doc, tmp = cdc_world["dbs"], cdc_world["doc"], cdc_world["tmp"]
    conn = dbs.server.admin_connect()
    with conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER ROLE {} NOREPLICATION").format(sql.Identifier(dbs.env["SOURCE_USER"])))
    conn.close()
    unreachable = snapshot_store(doc, "Elsewhere")
    unreachable["source"].update({"database": "nowhere", "credential": "nobody"})
    model = write_model(tmp / "refused", {**doc, "stores": [snapshot_store(doc, "Store1"), unreachable]})
    out = " ".join(setup(model, "Yellow", dbs).split())
    print(out)
    assert slots(dbs) == {"ds_yellow_store1", "ds_yellow_eu_store1"}
    assert ("WARNING: replication slot ds_yellow_store1 on source database" in out
            and "could not be dropped (" in out
            and "drop it by hand: SELECT pg_drop_replication_slot('ds_yellow_store1')" in out)
    assert ("WARNING: source database 'nowhere'" in out and "not checked for stale replication slots: "
            "credential 'nobody': environment variable(s) NOBODY_USER, NOBODY_PASSWORD not set" in out)
