"""Change data capture as users meet it: values as they really are (unchanged TOASTed values, key changes,
truncates, updates back to the old values), source transactions never split, the slot never the only copy
of the truth (a dropped slot or a model change makes a full snapshot, with one warning line), and refusals
that say what to change and change nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from psycopg2 import sql

from tests.support.cdc import allow_replication, cdc_model, drop_slots
from tests.support.engine import assert_one_line_error, merge_state, one_dataset_model, run_job, write_model

PLATFORM, SCHEMA = "Cdc", "cdc"
DOCS = [("id", "integer"), ("title", "text"), ("body", "text"), ("n", "integer")]


class Source:
    """A cdc store of one or more datasets on `dbs`, merged through the CLI."""

    def __init__(self, dbs: Any, tmp: Path, tables: dict[str, list[tuple[str, str]]], mode: str = "live",
                 replication: bool = True, **source: Any):
        self.dbs = dbs
        self.tmp = tmp
        self.mode = mode
        if replication:
            allow_replication(dbs)
        self.src = dbs.connect(dbs.source)
        self.mrg = dbs.connect(dbs.merge)
        self.tables = tables
        for name, cols in tables.items():
            defs = ", ".join(f'"{c}" {t}' for c, t in cols)
            self.sql(f'CREATE TABLE "{name}" ({defs}, PRIMARY KEY (id))')
        self.doc = one_dataset_model(dbs, "Store1", *next(iter(tables.items())))
        for name, cols in list(tables.items())[1:]:
            self.doc["stores"][0]["datasets"].append(
                one_dataset_model(dbs, "Store1", name, cols)["stores"][0]["datasets"][0])
        self.doc = cdc_model(self.doc, **source)
        self.model = write_model(tmp / "model", self.doc)

    def sql(self, *statements: str | sql.Composable, params: tuple[Any, ...] = ()) -> None:
        with self.src.cursor() as cur:
            for statement in statements:
                cur.execute(statement, params or None)
        self.src.commit()

    def admin(self, statement: str | sql.Composable, database: str | None = None) -> None:
        conn = self.dbs.server.admin_connect(database or self.dbs.source)
        with conn.cursor() as cur:
            cur.execute(statement)
        conn.close()

    def merge(self, expect: int = 0) -> Any:
        proc = run_job(["merge", "--model", str(self.model), "--platform", PLATFORM, "--mode", self.mode,
                        "--store", "Store1", *self.dbs.merge_args()], self.dbs.env)
        assert proc.returncode == expect, proc.stdout + proc.stderr
        return proc

    def rows(self, table: str, merged: bool = True, columns: str = "*") -> list[tuple[Any, ...]]:
        conn = self.mrg if merged else self.src
        relation = f'{SCHEMA}."store1_{table}_current"' if merged else f'"{table}"'
        with conn.cursor() as cur:
            cur.execute(f"SELECT {columns} FROM {relation} ORDER BY id")
            rows = cur.fetchall()
        conn.rollback()
        return rows

    def same(self, table: str) -> bool:
        cols = ", ".join(f'"{c}"' for c, _ in self.tables[table])
        return self.rows(table, True, cols) == self.rows(table, False, cols)

    def counts(self) -> tuple[int, int, int, int]:
        with self.mrg.cursor() as cur:
            cur.execute(f"SELECT rows_total, rows_inserted, rows_updated, rows_deleted FROM {SCHEMA}.ds_batches "
                        "ORDER BY batch_id DESC LIMIT 1")
            row = cur.fetchone()
        self.mrg.rollback()
        return tuple(row)  # type: ignore[return-value]


@pytest.fixture
def make(dbs: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    request.addfinalizer(lambda: drop_slots(dbs))

    def factory(tables: dict[str, list[tuple[str, str]]] | None = None, **kw: Any) -> Source:
        return Source(dbs, tmp_path, tables or {"docs": DOCS}, **kw)

    return factory


BIG = "SELECT string_agg(md5(random()::text || g::text), '') FROM generate_series(1, 4000) g"  # 128 kB, TOASTed


@pytest.mark.parametrize("mode", ["live", "forensic"])
def test_an_unchanged_toasted_value_keeps_its_merged_value(make: Any, mode: str) -> None:
    s = make(mode=mode)
    s.sql(f"INSERT INTO docs SELECT 1, 'a', ({BIG}), 0", f"INSERT INTO docs SELECT 2, 'b', ({BIG}), 0")
    s.merge()
    s.sql("UPDATE docs SET n = n + 1 WHERE id = 1")  # body is sent as 'unchanged'
    s.sql("UPDATE docs SET title = 'a2' WHERE id = 1", "UPDATE docs SET n = 5, body = 'short' WHERE id = 2",
          "UPDATE docs SET n = 6 WHERE id = 2")  # later changes in the batch: the earlier value is taken
    s.merge()
    assert s.same("docs")
    assert s.counts() == (2, 0, 2, 0)
    s.sql("UPDATE docs SET n = n + 1")
    s.merge()
    assert s.same("docs")


@pytest.mark.parametrize("identity", ["DEFAULT", "FULL"])
def test_a_changed_primary_key_is_a_delete_and_an_insert(make: Any, identity: str) -> None:
    s = make()
    s.sql(f"ALTER TABLE docs REPLICA IDENTITY {identity}")
    s.sql(f"INSERT INTO docs SELECT 1, 'a', ({BIG}), 0", "INSERT INTO docs VALUES (2, 'b', 'small', 0)")
    s.merge()
    s.sql("UPDATE docs SET id = 11 WHERE id = 1", "UPDATE docs SET id = 12 WHERE id = 2")
    proc = s.merge()
    assert s.same("docs")
    assert s.counts() == (2, 2, 0, 2)
    # under DEFAULT the new key's unchanged TOASTed value has no earlier version: the batch is a snapshot
    assert ("this batch is a full snapshot" in proc.stderr) == (identity == "DEFAULT")
    with s.mrg.cursor() as cur:  # the changes staged before the snapshot was called for are gone
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename LIKE 'ds\\_changes%%'",
                    (SCHEMA,))
        assert cur.fetchone()[0] == 0
    s.mrg.rollback()


def test_counts_are_net_per_key(make: Any) -> None:
    s = make()
    s.sql("INSERT INTO docs VALUES (1, 'a', 'x', 0), (2, 'b', 'y', 0)")
    s.merge()
    s.sql("INSERT INTO docs VALUES (3, 'c', 'z', 0)", "DELETE FROM docs WHERE id = 3",  # inserted and deleted
          "UPDATE docs SET title = 'changed' WHERE id = 1", "UPDATE docs SET title = 'a' WHERE id = 1",  # back
          "DELETE FROM docs WHERE id = 2", "INSERT INTO docs VALUES (2, 'b', 'y', 0)")  # deleted, same again
    s.merge()
    assert s.counts() == (2, 0, 0, 0)
    s.sql("TRUNCATE docs", "INSERT INTO docs VALUES (2, 'b', 'y', 1), (4, 'd', 'w', 0)")
    s.merge()
    assert s.same("docs")
    assert s.counts() == (2, 1, 1, 1)


def test_a_batch_never_splits_a_source_transaction(make: Any) -> None:
    """A writer moves amounts between two tables while batches run: the merged total never changes."""
    s = make({"a": [("id", "integer"), ("amount", "integer")], "b": [("id", "integer"), ("amount", "integer")]})
    s.sql("INSERT INTO a SELECT g, 100 FROM generate_series(1, 50) g", "INSERT INTO b SELECT g, 100 FROM "
          "generate_series(1, 50) g")
    s.merge()
    stop = threading.Event()

    def writer() -> None:
        conn = s.dbs.connect(s.dbs.source)
        i = 0
        while not stop.is_set():
            i += 1
            with conn.cursor() as cur:
                cur.execute("UPDATE a SET amount = amount - 7 WHERE id = %s", (i % 50 + 1,))
                cur.execute("UPDATE b SET amount = amount + 7 WHERE id = %s", ((i * 7) % 50 + 1,))
            conn.commit()
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(6):
            s.merge()
            with s.mrg.cursor() as cur:
                cur.execute(f"SELECT (SELECT sum(amount) FROM {SCHEMA}.store1_a_current) + "
                            f"(SELECT sum(amount) FROM {SCHEMA}.store1_b_current)")
                assert cur.fetchone()[0] == 10000
            s.mrg.rollback()
    finally:
        stop.set()
        thread.join()
    s.merge()
    assert s.same("a") and s.same("b")


def test_a_batch_ends_at_its_marker_however_long_it_takes_to_open(make: Any) -> None:
    """The batch's end is fixed (and its time read) before the batch opens; a change committed while it opens
    (here: a pause of the run) belongs to the next batch, so `snapshot_at` tells the truth for as-of queries."""
    s = make()
    s.sql("INSERT INTO docs VALUES (1, 'a', 'x', 0)")
    s.merge()
    args = ["merge", "--model", str(s.model), "--platform", PLATFORM, "--mode", s.mode, "--store", "Store1",
            *s.dbs.merge_args()]
    done: list[Any] = []
    run = threading.Thread(target=lambda: done.append(
        run_job(args, s.dbs.env, {"DATASURFACE_TEST_PAUSE_AT": "batch:opened=3"})))
    run.start()
    try:
        deadline = time.monotonic() + 60
        while True:  # the batch is open: its end is fixed
            with s.mrg.cursor() as cur:
                cur.execute(f"SELECT count(*) FROM {SCHEMA}.ds_batches WHERE batch_id = 2")
                opened = cur.fetchone()[0]
            s.mrg.rollback()
            if opened or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        s.sql("UPDATE docs SET n = 1")
        with s.src.cursor() as cur:
            cur.execute("SELECT clock_timestamp()")
            changed_at = cur.fetchone()[0]
    finally:
        run.join()
    assert done[0].returncode == 0, done[0].stdout + done[0].stderr
    assert s.counts() == (1, 0, 0, 0)  # not in batch 2
    with s.mrg.cursor() as cur:
        cur.execute(f"SELECT snapshot_at FROM {SCHEMA}.ds_batches WHERE batch_id = 2")
        assert cur.fetchone()[0] < changed_at
    s.mrg.rollback()
    s.merge()
    assert s.counts() == (1, 0, 1, 0) and s.same("docs")  # batch 3


def _drop_slot(s: Source) -> None:
    s.admin("SELECT pg_drop_replication_slot('ds_cdc_store1')")


def _unpublish(s: Source) -> None:  # a DBA takes the table out of the job's publication
    with s.src.cursor() as cur:
        cur.execute("SELECT pubname FROM pg_publication")
        (publication,) = cur.fetchone()
    s.sql(sql.SQL("ALTER PUBLICATION {} DROP TABLE docs").format(sql.Identifier(publication)))


@pytest.mark.parametrize(("lose", "why"), [(_drop_slot, "replication slot ds_cdc_store1 is missing"),
                                           (_unpublish, "the publication lacked table(s) docs until now")],
                         ids=["slot dropped", "table unpublished"])
def test_changes_missing_from_the_slot_make_a_full_snapshot_with_a_warning(make: Any, lose: Any, why: str) -> None:
    """A slot dropped, or a table out of the publication for a while (the job adds it back): the changes in
    between are not in the slot, so that batch is a full snapshot, with one warning line saying why."""
    s = make()
    s.sql("INSERT INTO docs VALUES (1, 'a', 'x', 0), (2, 'b', 'y', 0)")
    s.merge()
    s.sql("UPDATE docs SET n = 1 WHERE id = 1")
    lose(s)
    s.sql("DELETE FROM docs WHERE id = 2")  # after the loss: only a snapshot sees it
    proc = s.merge()
    warnings = [line for line in proc.stderr.splitlines() if "full snapshot" in line]
    assert len(warnings) == 1 and why in warnings[0], proc.stderr
    assert s.same("docs")
    assert s.counts() == (1, 0, 1, 1)
    s.sql("INSERT INTO docs VALUES (3, 'c', 'z', 0)")
    proc = s.merge()
    assert "full snapshot" not in proc.stderr
    assert s.same("docs")
    assert s.counts() == (2, 1, 0, 0)


def test_a_model_change_makes_a_full_snapshot(make: Any) -> None:
    s = make()
    s.sql("INSERT INTO docs VALUES (1, 'a', 'x', 0)")
    s.merge()
    s.sql("ALTER TABLE docs ADD COLUMN extra text DEFAULT 'e'", "UPDATE docs SET n = 2")
    s.doc["stores"][0]["datasets"][0]["columns"].append({"name": "extra", "type": "text"})
    write_model(s.model, s.doc)
    s.tables["docs"] = [*DOCS, ("extra", "text")]
    proc = s.merge()
    assert "the model's datasets of the store changed; this batch is a full snapshot" in proc.stderr
    assert s.same("docs")
    s.sql("UPDATE docs SET extra = 'f'")
    s.merge()
    assert s.same("docs")


def test_a_batch_without_changes_makes_no_table_and_commits_once(make: Any, dbs: Any) -> None:
    """Streams on a one-minute schedule mostly have nothing new: such a batch creates and drops no change
    table on the merge side (no catalog churn) and writes its ledger entry in one transaction."""
    s = make()
    s.sql("INSERT INTO docs VALUES (1, 'a', 'x', 0)")
    s.merge()
    admin = dbs.server.admin_connect(dbs.merge)
    admin.autocommit = True
    with admin.cursor() as cur:  # every DDL command on the merge database, and every ledger write, logged
        cur.execute("""CREATE TABLE public.ddl_seen (tag text, at xid8 DEFAULT pg_current_xact_id());
                       CREATE FUNCTION public.ddl_seen() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER
                           AS $$ BEGIN INSERT INTO public.ddl_seen (tag) VALUES (tg_tag); END $$;
                       CREATE EVENT TRIGGER ddl_seen ON ddl_command_end EXECUTE FUNCTION public.ddl_seen();
                       CREATE FUNCTION public.ledger_seen() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
                           AS $$ BEGIN INSERT INTO public.ddl_seen (tag) VALUES (TG_OP || ' ' || NEW.status);
                                       RETURN NEW; END $$;
                       CREATE TRIGGER ledger_seen AFTER INSERT OR UPDATE ON cdc.ds_batches
                           FOR EACH ROW EXECUTE FUNCTION public.ledger_seen();
                       TRUNCATE public.ddl_seen""")
    try:
        s.merge()
        assert s.counts() == (1, 0, 0, 0)
        with admin.cursor() as cur:
            cur.execute("SELECT tag, at FROM public.ddl_seen ORDER BY at")
            seen = cur.fetchall()
            cur.execute("TRUNCATE public.ddl_seen")
        # the batch opens (committed on its own), then is staged and committed in one transaction
        assert [tag for tag, _ in seen] == ["INSERT ingesting", "UPDATE staged", "UPDATE committed"], seen
        assert seen[0][1] != seen[1][1] == seen[2][1]
        s.sql("UPDATE docs SET n = 1")
        s.merge()  # a change: the change table is made (the log sees what it logs)
        with admin.cursor() as cur:
            cur.execute("SELECT tag FROM public.ddl_seen WHERE tag = 'CREATE TABLE'")
            assert cur.fetchall() == [("CREATE TABLE",)]
        assert s.same("docs")
    finally:
        with admin.cursor() as cur:
            cur.execute("""DROP EVENT TRIGGER ddl_seen; DROP TRIGGER ledger_seen ON cdc.ds_batches;
                           DROP TABLE public.ddl_seen; DROP FUNCTION public.ddl_seen(), public.ledger_seen()""")
        admin.close()


def test_the_ledger_records_each_batchs_lsn(make: Any) -> None:
    s = make()
    for i in range(3):
        s.sql(f"INSERT INTO docs VALUES ({i}, 't', 'b', 0)")
        s.merge()
    with s.mrg.cursor() as cur:
        cur.execute(f"SELECT source_lsn, snapshot_at IS NOT NULL FROM {SCHEMA}.ds_batches ORDER BY batch_id")
        rows = cur.fetchall()
        cur.execute(f"SELECT bool_and(a.source_lsn <= b.source_lsn) FROM {SCHEMA}.ds_batches a "
                    f"JOIN {SCHEMA}.ds_batches b ON b.batch_id = a.batch_id + 1 WHERE a.source_lsn IS NOT NULL")
        assert cur.fetchone()[0]
    assert rows[0][0] is None and all(r[0] is not None for r in rows[1:])
    assert all(r[1] for r in rows)


# --- refusals -----------------------------------------------------------------------------------

def _refused(s: Source, *fragments: str) -> None:
    before = merge_state(s.mrg, SCHEMA)
    proc = run_job(["merge", "--model", str(s.model), "--platform", PLATFORM, "--mode", "live", "--store", "Store1",
                    *s.dbs.merge_args()], s.dbs.env)
    assert_one_line_error(proc, *fragments)
    assert merge_state(s.mrg, SCHEMA) == before


def test_a_role_without_replication_is_refused(make: Any) -> None:
    s = make(replication=False)
    _refused(s, f'ALTER ROLE "{s.dbs.env["SOURCE_USER"]}" REPLICATION')


@pytest.mark.parametrize("identity", ["NOTHING", "USING INDEX docs_title"])
def test_a_replica_identity_without_the_key_is_refused(make: Any, identity: str) -> None:
    s = make()
    s.sql("ALTER TABLE docs ALTER COLUMN title SET NOT NULL", "CREATE UNIQUE INDEX docs_title ON docs (title)",
          f"ALTER TABLE docs REPLICA IDENTITY {identity}")
    _refused(s, "source table public.docs", 'ALTER TABLE "public"."docs" REPLICA IDENTITY FULL')


def test_a_publication_the_role_may_not_complete_is_refused(make: Any) -> None:
    s = make({"docs": DOCS, "more": [("id", "integer"), ("v", "text")]})
    s.admin("ALTER TABLE docs OWNER TO postgres")
    s.admin(sql.SQL("GRANT SELECT ON docs TO {}").format(sql.Identifier(s.dbs.env["SOURCE_USER"])))
    s.admin("CREATE PUBLICATION ds_store1 FOR TABLE more")
    _refused(s, "publication ds_store1 lacks docs", 'ALTER PUBLICATION "ds_store1" ADD TABLE "public"."docs"')


def test_the_job_creates_the_publication_it_may(make: Any) -> None:
    s = make(publication="my_pub")
    s.merge()
    with s.src.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_publication_tables WHERE pubname = 'my_pub'")
        assert cur.fetchall() == [("docs",)]
    s.src.rollback()


def test_wal_level_replica_is_refused(tmp_path: Path) -> None:
    from datasurface.localpg import LocalPostgres, find_bin_dir
    from tests.support.databases import make_databases

    server = LocalPostgres(find_bin_dir("any")).start()
    try:
        conn = server.admin_connect()
        with conn.cursor() as cur:
            cur.execute("ALTER SYSTEM SET wal_level = replica")
        conn.close()
        server.stop_server_only()
        server.start_server_only()
        s = Source(make_databases(server), tmp_path, {"docs": DOCS})
        _refused(s, "wal_level = replica", "ALTER SYSTEM SET wal_level = logical")
    finally:
        server.stop()


@pytest.mark.parametrize(("change", "path"), [
    ({"consistency": "single_dataset"}, "stores[0].consistency"),
    ({"source": {"type": "mysql"}}, "stores[0].source.ingestion"),
])
def test_cdc_needs_one_consistent_postgresql_stream(dbs: Any, tmp_path: Path, change: dict[str, Any],
                                                   path: str) -> None:
    doc = cdc_model(one_dataset_model(dbs, "Store1", "docs", DOCS))
    store = doc["stores"][0]
    store.update({k: v for k, v in change.items() if k != "source"})
    store["source"].update(change.get("source", {}))
    store["source"].pop("schema", None)
    model = write_model(tmp_path / "bad", doc)
    proc = run_job(["merge", "--model", str(model), "--platform", PLATFORM, "--mode", "live", "--store", "Store1",
                    *dbs.merge_args()], dbs.env)
    assert_one_line_error(proc, path)
    assert yaml.safe_load((model / "datasurface.yaml").read_text())  # the model itself is well-formed YAML


def test_check_reports_what_a_merge_would_refuse(make: Any) -> None:
    s = make(replication=False)
    proc = run_job(["check", "--model", str(s.model), *s.dbs.merge_args()], s.dbs.env)
    assert proc.returncode == 1
    assert f'FAIL source of store Store1: store Store1 (ingestion: cdc): role {s.dbs.env["SOURCE_USER"]} may not ' \
           "read replication slots" in proc.stdout
    allow_replication(s.dbs)
    proc = run_job(["check", "--model", str(s.model), *s.dbs.merge_args()], s.dbs.env)
    assert proc.returncode == 0, proc.stdout


def test_reset_store_drops_the_slot_and_the_next_merge_starts_again(make: Any) -> None:
    s = make()
    s.sql("INSERT INTO docs VALUES (1, 'a', 'x', 0)")
    s.merge()
    s.sql("UPDATE docs SET n = 1")
    s.merge()
    reset = ["reset-store", "--model", str(s.model), "--platform", PLATFORM, "--store", "Store1", *s.dbs.merge_args()]
    dry = run_job([*reset, "--dry-run"], s.dbs.env)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "drop replication slot ds_cdc_store1" in dry.stdout

    def slots() -> list[tuple[str]]:
        with s.src.cursor() as cur:
            cur.execute("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()")
            rows = cur.fetchall()
        s.src.rollback()
        return rows

    assert slots() == [("ds_cdc_store1",)]
    done = run_job([*reset, "--yes"], s.dbs.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert slots() == []
    proc = s.merge()
    assert "full snapshot" not in proc.stderr  # a first batch again, not a lost slot
    assert s.same("docs") and slots() == [("ds_cdc_store1",)]
    with s.mrg.cursor() as cur:
        cur.execute(f"SELECT batch_id, source_lsn IS NULL FROM {SCHEMA}.ds_batches")
        assert cur.fetchall() == [(1, True)]
    s.mrg.rollback()


def _hold_slot(s: Source, application_name: str) -> Any:
    """A replication connection streaming from the store's slot: the slot is active while it is open."""
    import psycopg2
    from psycopg2.extras import LogicalReplicationConnection

    conn = psycopg2.connect(host=s.dbs.host, port=s.dbs.port, dbname=s.dbs.source,
                            user=s.dbs.env["SOURCE_USER"], password=s.dbs.env["SOURCE_PASSWORD"],
                            application_name=application_name, connection_factory=LogicalReplicationConnection)
    cur = conn.cursor()
    cur.start_replication(slot_name="ds_cdc_store1", decode=False,
                          options={"proto_version": "1", "publication_names": "ds_store1"})
    return conn


def test_a_killed_runs_session_still_reading_the_slot_is_ended(make: Any) -> None:
    """A killed run's backend goes on decoding until it notices its client is gone, and the slot stays active
    meanwhile: the next run (which holds the stream's lock) ends it instead of failing on the busy slot; a
    session that is not the job's is named after --lock-wait and left alone."""
    s = make()
    s.sql("INSERT INTO docs VALUES (1, 'a', 'x', 0)")
    s.merge()
    held = _hold_slot(s, "datasurface-job source deadbeef")
    try:
        s.sql("UPDATE docs SET n = 1")
        s.merge()
        assert s.same("docs")
    finally:
        held.close()
    other = _hold_slot(s, "a DBA's pg_recvlogical")
    try:
        proc = run_job(["merge", "--model", str(s.model), "--platform", PLATFORM, "--mode", "live", "--store",
                        "Store1", "--lock-wait", "1", *s.dbs.merge_args()], s.dbs.env)
        assert_one_line_error(proc, "replication slot ds_cdc_store1 is in use by process", "a DBA's pg_recvlogical")
    finally:
        other.close()
