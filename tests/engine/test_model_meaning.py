"""The model means what it says: `nullable: false` is enforced, a store's consistency cannot change under
its batches, and reset-batch refuses the form that would find nothing while a batch stays open."""

from __future__ import annotations

import signal
from typing import Any

import yaml

from tests.support.engine import (
    PLATFORM,
    SCHEMA,
    assert_one_line_error,
    merge_args,
    merge_state,
    on_every_version,
    run_job,
    write_model,
)

world = on_every_version()

def _model(world: dict[str, Any], name: str, change: Any) -> Any:
    doc = yaml.safe_load(yaml.safe_dump(world["doc"]))
    change(doc)
    return write_model(world["tmp"] / name, doc)


def _not_null_note(doc: dict[str, Any]) -> None:
    for col in doc["stores"][0]["datasets"][0]["columns"]:
        if col["name"] == "note":
            col["nullable"] = False


def test_nullable_false_is_enforced_on_new_and_existing_tables(world: dict[str, Any]) -> None:
    dbs, src, mrg = world["dbs"], world["src"], world["mrg"]
    model = _model(world, "notnull", _not_null_note)
    with src.cursor() as cur:
        cur.execute("UPDATE pairs SET note = coalesce(note, 'n')")
    src.commit()
    # a new table has NOT NULL; the existing one gets the rule for every row written from now on
    for platform, mode in (("Fresh", "live"), (PLATFORM, "live")):
        assert run_job(merge_args(model, platform, mode, dbs), dbs.env).returncode == 0
    with mrg.cursor() as cur:
        cur.execute("""SELECT is_nullable FROM information_schema.columns
                        WHERE table_schema = 'fresh' AND table_name = 'store1_pairs' AND column_name = 'note'""")
        assert cur.fetchone() == ("NO",)
        cur.execute("""SELECT pg_get_constraintdef(oid) FROM pg_constraint
                        WHERE conrelid = %s::regclass AND contype = 'c'""", (f"{SCHEMA}.store1_pairs",))
        assert cur.fetchall() == [("CHECK ((note IS NOT NULL)) NOT VALID",)]
    mrg.rollback()
    # a snapshot with a NULL there is refused like a NULL key, and changes nothing
    with src.cursor() as cur:
        cur.execute("UPDATE pairs SET note = NULL WHERE code = (SELECT min(code) FROM pairs)")
    src.commit()
    for platform in ("Fresh", PLATFORM):
        before = merge_state(mrg, platform.lower())
        proc = run_job(merge_args(model, platform, "live", dbs), dbs.env)
        assert_one_line_error(proc, "has a NULL in column 'note'", "nullable: false")
        assert merge_state(mrg, platform.lower()) == before
    # made nullable again, the rule goes and the NULL merges
    proc = run_job(merge_args(world["model"], PLATFORM, "live", dbs), dbs.env)
    assert proc.returncode == 0, proc.stderr
    with mrg.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {SCHEMA}.store1_pairs_current WHERE note IS NULL")
        assert cur.fetchone()[0] > 0
    mrg.rollback()


def test_changing_consistency_under_existing_batches_is_refused(world: dict[str, Any]) -> None:
    dbs, mrg = world["dbs"], world["mrg"]
    model = _model(world, "single", lambda d: d["stores"][0].update(consistency="single_dataset"))
    before = merge_state(mrg, SCHEMA)
    proc = run_job(merge_args(model, PLATFORM, "live", dbs), dbs.env)
    assert_one_line_error(proc, "has batches on platform yellow as a multi_dataset store",
                          "consistency: single_dataset", "Set consistency back to multi_dataset")
    assert merge_state(mrg, SCHEMA) == before
    # a new platform takes the store as single_dataset, and is held to it in turn
    assert run_job(merge_args(model, "YellowS", "live", dbs), dbs.env).returncode == 0
    proc = run_job(merge_args(world["model"], "YellowS", "live", dbs), dbs.env)
    assert_one_line_error(proc, "as a single_dataset store", "Set consistency back to single_dataset")


def test_reset_batch_refuses_the_wrong_form_for_the_store(world: dict[str, Any]) -> None:
    dbs = world["dbs"]
    reset = ["reset-batch", "--platform", PLATFORM, "--store", "Store1", *dbs.merge_args()]
    killed = run_job(merge_args(world["model"], PLATFORM, "live", dbs), dbs.env,
                     {"DATASURFACE_TEST_KILL_AT": "after_ingest"})
    assert killed.returncode == -signal.SIGKILL
    proc = run_job([*reset, "--dataset", "pairs"], dbs.env)
    assert_one_line_error(proc, "is ingested as one multi_dataset stream", "(no --dataset)")
    proc = run_job(reset, dbs.env)
    assert proc.returncode == 0 and "discarded open batch 2" in proc.stdout

    single = _model(world, "single", lambda d: d["stores"][0].update(consistency="single_dataset"))
    assert run_job(merge_args(single, "YellowS", "live", dbs), dbs.env).returncode == 0
    killed = run_job(merge_args(single, "YellowS", "live", dbs), dbs.env, {"DATASURFACE_TEST_KILL_AT": "after_ingest"})
    assert killed.returncode == -signal.SIGKILL
    reset_s = ["reset-batch", "--platform", "YellowS", "--store", "Store1", *dbs.merge_args()]
    proc = run_job(reset_s, dbs.env)
    assert_one_line_error(proc, "is single_dataset on platform YellowS", "--dataset <dataset>", "(pairs)")
    proc = run_job([*reset_s, "--dataset", "pairs"], dbs.env)
    assert proc.returncode == 0 and "discarded open batch 2" in proc.stdout


# the test datasets as they were when the fingerprints below were stored (the suite's have grown since)
EARLIER_DATASETS = {
    "alltypes": ([
        ("id", "integer"), ("c_smallint", "smallint"), ("c_integer", "integer"), ("c_bigint", "bigint"),
        ("c_numeric_ps", "numeric(12,3)"), ("c_numeric", "numeric"), ("c_real", "real"),
        ("c_double", "double precision"), ("c_boolean", "boolean"), ("c_varchar", "varchar(30)"),
        ("c_char", "char(5)"), ("c_text", "text"), ("c_date", "date"), ("c_timestamp", "timestamp"),
        ("c_timestamptz", "timestamptz"), ("c_time", "time"), ("c_uuid", "uuid"), ("c_jsonb", "jsonb"),
        ("c_bytea", "bytea")], ("id",)),
    "pairs": ([("region", "varchar(10)"), ("code", "integer"), ("note", "text"), ("amount", "numeric(10,2)")],
              ("region", "code")),
}


def test_a_batch_fingerprint_is_the_one_earlier_versions_stored() -> None:
    """The fingerprint an open batch was stored with must be computed the same by every later version of the
    job, or an upgrade would refuse to finish a batch an interrupted run left open ("opened under a different
    model"). These values were computed by the job before its model classes became tuples."""
    from datasurface.engine import fingerprint
    from datasurface.model.loader import parse_model
    from tests.support.engine import model_dict

    doc = model_dict("db.example", 5432, "src", datasets=EARLIER_DATASETS)
    doc["stores"][0]["datasets"][1]["columns"][2]["nullable"] = False
    store = parse_model(yaml.safe_dump(doc), "test").stores[0]
    assert fingerprint(store, ("alltypes", "pairs")) == "bc692fe22bf7d6e6"
    assert fingerprint(store, ("pairs",)) == "98e478eaee345456"
    doc["stores"][0]["datasets"][1]["columns"][2]["nullable"] = True  # and a change of the model changes it
    assert fingerprint(parse_model(yaml.safe_dump(doc), "test").stores[0], ("pairs",)) != "98e478eaee345456"
