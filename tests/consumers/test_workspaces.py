"""Workspaces (docs/consumers.md) through the real job: setup creates and reconciles `ws_<name>` schemas, grants
exactly their objects to the workspace's role, never drops what the job did not create, and merge keeps the
views in step with an added column. The security checks log in AS the workspace role (a real login with its
password, not SET ROLE) and try what an attacker would. PostgreSQL 15 and 18."""

from __future__ import annotations

import collections
import copy
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from datasurface.consumers.workspaces import BATCH_COLUMNS
from tests.support.engine import (
    DATASETS,
    assert_one_line_error,
    create_source_tables,
    load_snapshot,
    model_dict,
    next_snapshot,
    random_row,
    run_job,
    write_model,
)


class World:
    def __init__(self, dbs: Any, tmp: Path) -> None:
        self.dbs = dbs
        self.tmp = tmp
        tag = secrets.token_hex(3)
        self.roles = {r: (f"ws_reader{r}_{tag}", secrets.token_hex(8)) for r in ("r1", "r2")}
        for name, pw in self.roles.values():
            dbs.server.create_role(name, pw)
        self.src = dbs.connect(dbs.source)
        create_source_tables(self.src)
        import random
        from collections import defaultdict
        self.rng, self.removed, self.snap = random.Random(3), defaultdict(set), {}
        self.mrg = dbs.connect(dbs.merge)
        self.mrg.autocommit = True
        doc = model_dict(dbs.host, dbs.port, dbs.source)
        store2 = copy.deepcopy(doc["stores"][0])
        store2["name"] = "Store2"
        store2["datasets"] = [d for d in store2["datasets"] if d["name"] == "pairs"]
        doc["stores"].append(store2)
        r1, r2 = self.roles["r1"][0], self.roles["r2"][0]
        doc["workspaces"] = [
            {"name": "Marketing", "platform": "Yellow", "role": r1,
             "datasets": [{"store": "Store1", "dataset": "pairs"}]},
            {"name": "Finance", "platform": "Yellow", "role": r2,
             "datasets": [{"store": "Store1", "dataset": "alltypes"}, {"store": "Store2", "dataset": "pairs"}]},
            {"name": "LiveWs", "platform": "YellowLive", "role": r1,
             "datasets": [{"store": "Store1", "dataset": "pairs"}]},
        ]
        self.doc = doc

    def write(self) -> Path:
        return write_model(self.tmp / "model", self.doc)

    def job(self, *args: str) -> Any:
        return run_job([*args, "--model", str(self.write()), *self.dbs.merge_args()], self.dbs.env)

    def setup(self, platform: str = "Yellow", mode: str = "forensic", *extra: str) -> Any:
        return self.job("setup", "--platform", platform, "--mode", mode, *extra)

    def merge(self, store: str, platform: str = "Yellow", mode: str = "forensic") -> None:
        proc = self.job("merge", "--platform", platform, "--mode", mode, "--store", store)
        assert proc.returncode == 0, proc.stderr

    def new_snapshot(self) -> None:
        self.snap = next_snapshot(self.rng, self.snap, self.removed)
        load_snapshot(self.src, self.snap)

    def login(self, role: str) -> Any:
        name, pw = self.roles[role]
        conn = psycopg2.connect(host=self.dbs.host, port=self.dbs.port, dbname=self.dbs.merge, user=name, password=pw)
        conn.autocommit = True
        return conn

    def rows(self, conn: Any, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with conn.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall()

    def objects(self, schema: str) -> set[str]:
        return {r[0] for r in self.rows(self.mrg, """
            SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s
            UNION ALL SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = %s""", schema, schema)}

    def acl(self, schema: str) -> set[tuple[str, str, str]]:
        """(object, grantee, privilege) in a schema and on it, the owner left out."""
        return set(self.rows(self.mrg, """
            SELECT n.nspname, coalesce(r.rolname, 'PUBLIC'), a.privilege_type FROM pg_namespace n,
                   aclexplode(n.nspacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee
             WHERE n.nspname = %(s)s AND a.grantee <> n.nspowner
            UNION ALL
            SELECT c.relname, coalesce(r.rolname, 'PUBLIC'), a.privilege_type FROM pg_class c
                   JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
                   LEFT JOIN pg_roles r ON r.oid = a.grantee WHERE n.nspname = %(s)s AND a.grantee <> c.relowner
            UNION ALL
            SELECT p.proname, coalesce(r.rolname, 'PUBLIC'), a.privilege_type FROM pg_proc p
                   JOIN pg_namespace n ON n.oid = p.pronamespace,
                   aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                   LEFT JOIN pg_roles r ON r.oid = a.grantee WHERE n.nspname = %(s)s AND a.grantee <> p.proowner
            """.replace("%(s)s", "%s"), schema, schema, schema))

    def close(self) -> None:
        self.src.close()
        self.mrg.close()


@pytest.fixture(params=[15, 18])
def world(request: pytest.FixtureRequest, pg_servers: dict[int, Any], databases_on: Any,
          tmp_path: Path) -> Iterator[World]:
    if request.param not in pg_servers:
        pytest.skip(f"PostgreSQL {request.param} not available here")
    w = World(databases_on(pg_servers[request.param]), tmp_path)
    yield w
    w.close()


def refused(conn: Any, query: str, error: type[Exception] = psycopg2.errors.InsufficientPrivilege) -> None:
    with pytest.raises(error):
        with conn.cursor() as cur:
            cur.execute(query)
            if cur.description:
                cur.fetchall()


def test_workspaces_reconcile_grant_and_resist_an_attacker(world: World) -> None:
    r1, r2 = world.roles["r1"][0], world.roles["r2"][0]
    first = world.setup()
    assert first.returncode == 0, first.stderr
    assert "ws_marketing: workspace Marketing, 1 dataset(s)" in first.stdout
    for i in range(2):
        world.new_snapshot()
        if i == 0:  # rows enough that the index a key filter takes means something (on 6 rows any index ties)
            world.snap["pairs"].update({k: random_row(world.rng, "pairs", k) for k in
                                        ((f"bulk{n % 7}", 100 + n) for n in range(700))})
            load_snapshot(world.src, world.snap)
        world.merge("Store1")
        world.merge("Store2")

    # what the workspace has, and exactly which grants
    assert world.objects("ws_marketing") == {"batches", "store1_pairs", "store1_pairs_history", "store1_pairs_as_of"}
    assert world.acl("ws_marketing") == {("ws_marketing", r1, "USAGE"), ("batches", r1, "SELECT"),
                                         ("store1_pairs", r1, "SELECT"), ("store1_pairs_history", r1, "SELECT"),
                                         ("store1_pairs_as_of", r1, "EXECUTE")}
    assert world.rows(world.mrg, "SELECT has_schema_privilege(%s, 'yellow', 'USAGE')", r1) == [(False,)]

    # the listed views and the function work for the role, through a real login
    me = world.login("r1")
    me.notices = collections.deque()  # every notice (psycopg2's own list keeps the last 50)
    current = world.rows(world.mrg, "SELECT * FROM yellow.store1_pairs_current ORDER BY region, code")
    assert current and world.rows(me, "SELECT * FROM ws_marketing.store1_pairs ORDER BY region, code") == current
    assert world.rows(me, "SELECT * FROM ws_marketing.store1_pairs_as_of(now()) ORDER BY region, code") == current
    first_batch = world.rows(world.mrg, "SELECT * FROM yellow.store1_pairs_as_of_batch(1) ORDER BY region, code")
    at1 = world.rows(world.mrg, "SELECT snapshot_at FROM yellow.ds_batches WHERE store = 'Store1' AND batch_id = 1")
    assert world.rows(me, "SELECT * FROM ws_marketing.store1_pairs_as_of(%s) ORDER BY region, code",
                      at1[0][0]) == first_batch
    assert world.rows(me, "SELECT count(*) FROM ws_marketing.store1_pairs_history") == world.rows(
        world.mrg, "SELECT count(*) FROM yellow.store1_pairs")
    with me.cursor() as cur:
        cur.execute("SELECT * FROM ws_marketing.batches ORDER BY batch_id")
        assert tuple(d.name for d in cur.description) == BATCH_COLUMNS
        assert [(r[0], r[1], r[2]) for r in cur.fetchall()] == [("Store1", None, 1), ("Store1", None, 2)]

    # a filter on the key reaches the primary key through the inlined functions and the barrier views
    region, code = current[0][0], current[0][1]
    for conn, relation in ((world.mrg, "yellow.store1_pairs_as_of(now())"), (world.mrg, "yellow.store1_pairs_history"),
                           (world.mrg, "yellow.store1_pairs_as_of_batch(2)"),
                           (me, "ws_marketing.store1_pairs_as_of(now())"), (me, "ws_marketing.store1_pairs_history")):
        with conn.cursor() as cur:
            cur.execute("SET enable_seqscan = off")
            cur.execute(f"EXPLAIN SELECT * FROM {relation} WHERE region = %s AND code = %s", (region, code))
            plan = "\n".join(r[0] for r in cur.fetchall())
            cur.execute("RESET enable_seqscan")
        assert "Index Scan using store1_pairs_pkey on store1_pairs" in plan and "Function Scan" not in plan, plan
        assert "Index Cond: (((region)::text = " in plan and "(code = " in plan, plan

    # refused: the platform's tables, views, functions and ledger
    for query in ("SELECT * FROM yellow.store1_pairs", "SELECT * FROM yellow.store1_pairs_current",
                  "SELECT * FROM yellow.store1_pairs_history", "SELECT * FROM yellow.ds_batches",
                  "SELECT * FROM yellow.ds_batch_datasets", "SELECT * FROM yellow.store1_pairs_as_of(now())",
                  "SELECT * FROM yellow.store1_pairs_as_of_batch(1)", "SELECT * FROM yellow.store1_alltypes"):
        refused(me, query)
    # another workspace, and the as-of function of a dataset it does not list
    for query in ("SELECT * FROM ws_finance.store1_alltypes", "SELECT * FROM ws_finance.batches",
                  "SELECT * FROM ws_finance.store1_alltypes_as_of(now())",
                  "SELECT * FROM ws_finance.store2_pairs_history"):
        refused(me, query)
    refused(me, "SELECT * FROM ws_marketing.store1_alltypes", psycopg2.errors.UndefinedTable)
    refused(me, "SELECT * FROM ws_marketing.store1_alltypes_as_of(now())", psycopg2.errors.UndefinedFunction)
    # creating or changing objects in its schema
    for query in ("CREATE TABLE ws_marketing.mine (x int)", "CREATE VIEW ws_marketing.mine AS SELECT 1 AS x",
                  "CREATE FUNCTION ws_marketing.mine() RETURNS int LANGUAGE sql RETURN 1",
                  "CREATE OR REPLACE FUNCTION ws_marketing.store1_pairs_as_of(at timestamptz) RETURNS SETOF "
                  "ws_marketing.store1_pairs LANGUAGE sql BEGIN ATOMIC SELECT * FROM ws_marketing.store1_pairs; END",
                  "ALTER VIEW ws_marketing.store1_pairs RENAME TO gone", "DROP VIEW ws_marketing.batches"):
        refused(me, query)
    granted = world.acl("ws_marketing")
    with me.cursor() as cur:  # PostgreSQL only warns "no privileges were granted": nothing may change
        cur.execute("GRANT SELECT ON ws_marketing.store1_pairs TO PUBLIC")
    assert world.acl("ws_marketing") == granted
    # a function of its own, in pg_temp, sees only rows the view returns (security_barrier): no other store
    with me.cursor() as cur:
        cur.execute("""CREATE FUNCTION pg_temp.leak(s text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS
                       $$BEGIN RAISE NOTICE 'saw %', s; RETURN true; END$$""")
        me.notices.clear()
        cur.execute("SELECT * FROM ws_marketing.batches WHERE pg_temp.leak(store)")
        assert me.notices and not any("Store2" in n for n in me.notices), me.notices
        me.notices.clear()
        cur.execute("SELECT * FROM ws_marketing.store1_pairs WHERE pg_temp.leak(note)")
        leaked = len(me.notices)
    assert leaked == len(current)  # only current rows, not the history behind the view
    me.close()

    # reconcile: Marketing swaps its dataset, Finance is renamed; objects the job did not create stay
    world.mrg.cursor().execute("CREATE TABLE ws_marketing.notes (x int)")
    world.mrg.cursor().execute("CREATE VIEW ws_finance.mine AS SELECT 1 AS one")
    world.mrg.cursor().execute(f'GRANT SELECT ON ws_marketing.store1_pairs TO "{r2}"')
    world.doc["workspaces"][0]["datasets"] = [{"store": "Store1", "dataset": "alltypes"}]
    world.doc["workspaces"][1]["name"] = "Finance2"
    second = world.setup()
    assert second.returncode == 0, second.stderr
    assert world.objects("ws_marketing") == {"batches", "notes", "store1_alltypes", "store1_alltypes_history",
                                             "store1_alltypes_as_of"}
    assert world.acl("ws_marketing") == {("ws_marketing", r1, "USAGE"), ("batches", r1, "SELECT"),
                                         ("store1_alltypes", r1, "SELECT"), ("store1_alltypes_history", r1, "SELECT"),
                                         ("store1_alltypes_as_of", r1, "EXECUTE")}
    assert world.objects("ws_finance") == {"mine"} and world.acl("ws_finance") == set()
    assert "ws_finance: the job's objects and grants removed" in second.stdout
    assert ("ws_finance2", r2, "USAGE") in world.acl("ws_finance2")
    me = world.login("r1")
    refused(me, "SELECT * FROM ws_marketing.store1_pairs", psycopg2.errors.UndefinedTable)
    assert world.rows(me, "SELECT count(*) FROM ws_marketing.store1_alltypes") == world.rows(
        world.mrg, "SELECT count(*) FROM yellow.store1_alltypes_current")
    me.close()

    # merge keeps workspace views in step: a column added to Store2.pairs appears in view, history, as_of
    world.src.cursor().execute("ALTER TABLE pairs ADD COLUMN extra text")
    world.src.commit()
    world.doc["stores"][1]["datasets"][0]["columns"].append({"name": "extra", "type": "text"})
    world.merge("Store2")
    them = world.login("r2")
    for rel in ("ws_finance2.store2_pairs", "ws_finance2.store2_pairs_history",
                "ws_finance2.store2_pairs_as_of(now())"):
        with them.cursor() as cur:
            cur.execute(f"SELECT * FROM {rel} LIMIT 0")
            names = [d.name for d in cur.description]
        assert "extra" in names, (rel, names)
    assert world.rows(them, "SELECT count(*) FROM ws_finance2.store2_pairs_as_of(now())") == world.rows(
        world.mrg, "SELECT count(*) FROM yellow.store2_pairs_current")
    them.close()

    # a workspace gone from the model: its schema goes when only the job's objects were in it
    del world.doc["workspaces"][1]
    third = world.setup()
    assert third.returncode == 0, third.stderr
    assert "ws_finance2: removed" in third.stdout
    assert world.rows(world.mrg, "SELECT count(*) FROM pg_namespace WHERE nspname = 'ws_finance2'") == [(0,)]


def test_live_workspace_has_no_history(world: World) -> None:
    proc = world.setup("YellowLive", "live")
    assert proc.returncode == 0, proc.stderr
    world.new_snapshot()
    world.merge("Store1", "YellowLive", "live")
    assert world.objects("ws_livews") == {"batches", "store1_pairs"}
    me = world.login("r1")
    assert world.rows(me, "SELECT count(*) FROM ws_livews.store1_pairs") == [(len(world.snap["pairs"]),)]
    refused(me, "SELECT * FROM yellowlive.store1_pairs")
    me.close()


def test_missing_role_and_store_not_on_platform_are_one_line_errors(world: World) -> None:
    world.doc["workspaces"][0]["role"] = "no_such_role_here"
    proc = world.setup()
    assert_one_line_error(proc, "workspace Marketing", "'no_such_role_here' does not exist")
    # nothing half-done: no workspace schema, no merge table (the run history, ds_runs, records the failure)
    assert world.rows(world.mrg, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'ws\\_%%'") == [(0,)]
    assert world.rows(world.mrg, "SELECT to_regclass('yellow.store1_pairs')") == [(None,)]
    world.doc["workspaces"][0]["role"] = world.roles["r1"][0]
    proc = world.setup("Yellow", "forensic", "--store", "Store2")
    assert_one_line_error(proc, "workspace Marketing", "lists store Store1", "does not ingest")


def test_consumer_object_on_a_removed_view_stops_the_drop(world: World) -> None:
    assert world.setup().returncode == 0
    world.mrg.cursor().execute("CREATE SCHEMA theirs")
    world.mrg.cursor().execute("CREATE VIEW theirs.v AS SELECT * FROM ws_marketing.store1_pairs")
    world.doc["workspaces"][0]["datasets"] = [{"store": "Store1", "dataset": "alltypes"}]
    proc = world.setup()
    assert_one_line_error(proc, "cannot drop ws_marketing.store1_pairs", "never drops objects it did not create")
    assert "store1_pairs" in world.objects("ws_marketing")  # nothing half-done
    assert world.rows(world.mrg, "SELECT count(*) FROM theirs.v") == [(0,)]
    assert DATASETS  # the datasets of the source
