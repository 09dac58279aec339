"""`reset-store` through the real CLI: it drops exactly one store's objects on one platform (tables, views,
history views and functions, workspace objects, staging tables, ledger and run rows), leaves every other object
and row as it was, and the next merge starts again at batch 1. Two stores (multi_dataset and single_dataset)
on a live and a forensic platform, with workspaces on both."""

from __future__ import annotations

import copy
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datasurface.merge.layout import staging_name
from tests.support.engine import (
    DATASETS,
    assert_one_line_error,
    create_source_tables,
    fetch,
    load_snapshot,
    model_dict,
    next_snapshot,
    run_job,
    write_model,
)

TS, INT = "timestamp with time zone", "integer"
LINE = re.compile(r"^  drop (?P<kind>[a-z ]+?) (?P<schema>[a-z0-9_]+)\.(?P<name>[a-z0-9_]+(\(.*\))?)$")


class World:
    """Store1 (multi_dataset) and Store2 (single_dataset), both on Hist (forensic) and Live (live)."""

    def __init__(self, dbs: Any, tmp: Path) -> None:
        import random

        self.dbs, self.tmp = dbs, tmp
        self.role = f"ws_reset_{secrets.token_hex(3)}"
        dbs.server.create_role(self.role, secrets.token_hex(8))
        self.src = dbs.connect(dbs.source)
        create_source_tables(self.src)
        self.rng, self.removed = random.Random(11), defaultdict(set)
        self.snap = next_snapshot(self.rng, {}, self.removed)
        load_snapshot(self.src, self.snap)
        self.mrg = dbs.connect(dbs.merge)
        self.mrg.autocommit = True
        doc = model_dict(dbs.host, dbs.port, dbs.source)
        store2 = copy.deepcopy(doc["stores"][0])
        store2.update(name="Store2", consistency="single_dataset")
        doc["stores"].append(store2)
        doc["workspaces"] = [
            {"name": "WsHist", "platform": "Hist", "role": self.role,
             "datasets": [{"store": "Store1", "dataset": "pairs"}, {"store": "Store2", "dataset": "pairs"}]},
            {"name": "WsLive", "platform": "Live", "role": self.role,
             "datasets": [{"store": "Store1", "dataset": "pairs"}, {"store": "Store2", "dataset": "alltypes"}]},
        ]
        self.doc = doc
        self.model = write_model(tmp / "model", doc)
        for platform, mode in (("Hist", "forensic"), ("Live", "live")):
            self.ok("setup", "--platform", platform, "--mode", mode)
            for store in ("Store1", "Store2"):
                self.merge(store, platform, mode)
        self.snap = next_snapshot(self.rng, self.snap, self.removed)
        load_snapshot(self.src, self.snap)
        for store in ("Store1", "Store2"):
            self.merge(store, "Hist", "forensic")
        # a user's own view on a store that is not reset: it must be left exactly as it is
        self.sql("CREATE VIEW public.user_report AS SELECT region, code FROM hist.store2_pairs_current")

    def job(self, *args: str, model: Path | None = None, extra_env: dict[str, str] | None = None) -> Any:
        return run_job([*args, "--model", str(model or self.model), *self.dbs.merge_args()], self.dbs.env, extra_env)

    def ok(self, *args: str) -> Any:
        proc = self.job(*args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def merge(self, store: str, platform: str, mode: str) -> Any:
        return self.ok("merge", "--platform", platform, "--mode", mode, "--store", store)

    def reset(self, platform: str, store: str, *extra: str, model: Path | None = None) -> Any:
        return self.job("reset-store", "--platform", platform, "--store", store, *extra, model=model)

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.mrg.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall() if cur.description else []

    def catalog(self) -> dict[tuple[str, str, str], tuple[Any, ...]]:
        """Every schema, relation and function outside PostgreSQL's own schemas, with its definition, columns,
        indexes, grants and comment."""
        rows = self.sql("""
            SELECT n.nspname, '', 'schema', n.nspacl::text, obj_description(n.oid, 'pg_namespace'), NULL, NULL
              FROM pg_namespace n WHERE n.nspname !~ '^(pg_|information_schema)'
            UNION ALL
            SELECT n.nspname, c.relname, c.relkind::text,
                   CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
                   (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || a.attnotnull::text,
                                      ', ' ORDER BY a.attnum)
                      FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
                   (SELECT string_agg(pg_get_indexdef(i.indexrelid), '; ' ORDER BY 1)
                      FROM pg_index i WHERE i.indrelid = c.oid),
                   concat_ws(' ', c.relacl::text, obj_description(c.oid, 'pg_class'), c.reloptions::text)
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname !~ '^(pg_|information_schema)' AND c.relkind IN ('r', 'v', 'm', 'p', 'S', 'f')
            UNION ALL
            SELECT n.nspname, p.proname || '(' || oidvectortypes(p.proargtypes) || ')', 'function',
                   pg_get_functiondef(p.oid), p.proacl::text, obj_description(p.oid, 'pg_proc'), NULL
              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname !~ '^(pg_|information_schema)'""")
        return {(r[0], r[1], r[2]): r[3:] for r in rows}

    def rows(self, platform_schema: str, store: str) -> dict[tuple[str, str], list[str]]:
        """Every row of every relation outside PostgreSQL's own schemas; in the reset platform's schema and its
        workspaces, the rows of the reset store's ledger and runs left out (those are meant to go)."""
        spaces = {platform_schema} | {r[0] for r in self.sql(
            "SELECT nspname FROM pg_namespace WHERE obj_description(oid, 'pg_namespace') = %s",
            f"datasurface-job workspace of platform {platform_schema}")}
        result = {}
        for schema, rel in self.sql("""SELECT n.nspname, c.relname FROM pg_class c
                                         JOIN pg_namespace n ON n.oid = c.relnamespace
                                        WHERE n.nspname !~ '^(pg_|information_schema)'
                                          AND c.relkind IN ('r', 'v', 'm', 'p')"""):
            with self.mrg.cursor() as cur:
                cur.execute(f'SELECT * FROM "{schema}"."{rel}"')
                names = [d.name for d in cur.description]
                data = cur.fetchall()
            if schema in spaces and "store" in names:
                data = [r for r in data if r[names.index("store")] != store]
            result[(schema, rel)] = sorted(repr(tuple(bytes(v) if isinstance(v, memoryview) else v for v in r))
                                           for r in data)
        return result

    def state(self, platform_schema: str, store: str) -> tuple[Any, Any]:
        return self.catalog(), self.rows(platform_schema, store)

    def hold(self, lock: str) -> Any:
        """A session (not a run of the job) holding an advisory lock of the job's, until it is closed."""
        holder = self.dbs.connect(self.dbs.merge)
        holder.autocommit = True
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (lock,))
        return holder

    def batches(self, schema: str, store: str) -> list[tuple[Any, ...]]:
        return self.sql(f"SELECT stream, batch_id, status FROM {schema}.ds_batches WHERE store = %s ORDER BY 1, 2",
                        store)


@pytest.fixture
def world(dbs: Any, tmp_path: Path) -> Iterator[World]:
    yield from _world(dbs, tmp_path)


@pytest.fixture(params=[15, 18], ids=["pg15", "pg18"])
def world_each(request: pytest.FixtureRequest, pg_servers: dict[int, Any], databases_on: Any,
               tmp_path: Path) -> Iterator[World]:
    """`world` on PostgreSQL 15 and on 18 (what reset-store reads of the catalog differs between versions)."""
    if request.param not in pg_servers:
        pytest.skip(f"PostgreSQL {request.param} is not available here")
    yield from _world(databases_on(pg_servers[request.param]), tmp_path)


def _world(dbs: Any, tmp_path: Path) -> Iterator[World]:
    w = World(dbs, tmp_path)
    yield w
    w.src.close()
    w.mrg.close()


def expected_drops(platform: str, store: str) -> set[str]:
    """The objects of a store on Hist or Live, as reset-store lists them."""
    s, lines = store.lower(), set()
    for d in DATASETS:
        t = f"{s}_{d}"
        lines |= {f"  drop table {platform}.{t}", f"  drop view {platform}.{t}_current"}
        if platform == "hist":
            lines |= {f"  drop history view hist.{t}_history", f"  drop function hist.{t}_as_of({TS})",
                      f"  drop function hist.{t}_as_of_batch({INT})"}
    in_ws = {("hist", "store1"): ["pairs"], ("hist", "store2"): ["pairs"], ("live", "store1"): ["pairs"],
             ("live", "store2"): ["alltypes"]}[(platform, s)]
    ws = "ws_wshist" if platform == "hist" else "ws_wslive"
    for d in in_ws:
        lines.add(f"  drop workspace view {ws}.{s}_{d}")
        if platform == "hist":
            lines |= {f"  drop workspace view {ws}.{s}_{d}_history",
                      f"  drop workspace function {ws}.{s}_{d}_as_of({TS})"}
    return lines


def listed(stdout: str) -> set[str]:
    return {line for line in stdout.splitlines() if line.startswith("  drop ")}


def dropped_keys(lines: set[str]) -> set[tuple[str, str, str]]:
    keys = set()
    for line in lines:
        m = LINE.match(line)
        assert m, line
        kind = {"function": "function", "workspace function": "function"}.get(m["kind"])
        keys.add((m["schema"], m["name"], kind or ("r" if "table" in m["kind"] else "v")))
    return keys


def assert_only_dropped(before: Any, after: Any, lines: set[str]) -> None:
    (cat_before, rows_before), (cat_after, rows_after) = before, after
    gone = dropped_keys(lines)
    assert gone <= set(cat_before)
    assert cat_after == {k: v for k, v in cat_before.items() if k not in gone}
    kept = {(s, n) for s, n, _ in gone}
    assert rows_after == {k: v for k, v in rows_before.items() if k not in kept}


@pytest.mark.parametrize(("platform", "store", "streams"), [("Hist", "Store1", ["Store1"]),
                                                            ("Live", "Store2", ["Store2.alltypes", "Store2.pairs"])])
def test_reset_drops_exactly_one_store_of_one_platform(world_each: World, platform: str, store: str,
                                                       streams: list[str]) -> None:
    world = world_each
    schema = platform.lower()
    before = world.state(schema, store)
    other = "Live" if platform == "Hist" else "Hist"
    other_batches = world.batches(other.lower(), store)
    assert other_batches and world.batches(schema, store)

    proc = world.reset(platform, store, "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert listed(proc.stdout) == expected_drops(schema, store)
    assert_only_dropped(before, world.state(schema, store), listed(proc.stdout))
    assert world.batches(schema, store) == []
    assert world.sql(f"SELECT count(*) FROM {schema}.ds_runs WHERE store = %s", store) == [(0,)]
    assert world.sql(f"SELECT count(*) FROM {schema}.ds_run_totals WHERE store = %s", store) == [(0,)]
    assert world.batches(other.lower(), store) == other_batches
    forensic_lost = f"the store's forensic history on platform {schema} is lost"
    assert (forensic_lost in proc.stdout) == (platform == "Hist")

    # the next merge starts again at batch 1 from a full snapshot, every row inserted
    mode = "forensic" if platform == "Hist" else "live"
    again = world.merge(store, platform, mode)
    source = {name: fetch(world.src, name, name) for name in DATASETS}
    for name in DATASETS:
        n = len(source[name])
        assert f"{schema} {store}.{name} batch 1: total={n} inserted={n} updated=0 deleted=0" in again.stdout
        assert fetch(world.mrg, f"{schema}.{store.lower()}_{name}_current", name) == source[name]
    assert world.batches(schema, store) == [(s, 1, "committed") for s in streams]


def test_a_change_merge_refuses_is_applied_by_resetting_the_store(world: World) -> None:
    """A type change: merge refuses it and names reset-store; after the reset the next merge applies it."""
    with world.src.cursor() as cur:
        cur.execute("ALTER TABLE pairs ALTER COLUMN amount TYPE numeric(12,2)")
    world.src.commit()
    doc = copy.deepcopy(world.doc)
    for col in doc["stores"][0]["datasets"][1]["columns"]:
        if col["name"] == "amount":
            col["type"] = "numeric(12,2)"
    model = write_model(world.tmp / "wider", doc)
    merge = ["merge", "--platform", "Hist", "--mode", "forensic", "--store", "Store1"]
    assert_one_line_error(world.job(*merge, model=model), "changed type",
                          "datasurface-job reset-store --platform hist --store Store1")
    assert world.reset("Hist", "Store1", "--yes", model=model).returncode == 0
    proc = world.job(*merge, model=model)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "hist Store1.pairs batch 1:" in proc.stdout
    assert world.sql("""SELECT format_type(atttypid, atttypmod) FROM pg_attribute
                         WHERE attrelid = 'hist.store1_pairs'::regclass AND attname = 'amount'""") \
        == [("numeric(12,2)",)]


def test_dry_run_lists_exactly_what_yes_drops_and_changes_nothing(world: World) -> None:
    before = world.state("hist", "Store1")
    proc = world.reset("Hist", "Store1", "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert listed(proc.stdout) == expected_drops("hist", "Store1")
    assert "dry run: nothing was changed" in proc.stdout
    assert "forensic history on platform hist is lost" in proc.stdout
    assert "delete 2 row(s) of hist.ds_batches" in proc.stdout
    assert "delete 4 row(s) of hist.ds_batch_datasets" in proc.stdout
    assert world.state("hist", "Store1") == before
    assert len(world.batches("hist", "Store1")) == 2

    done = world.reset("Hist", "Store1", "--yes")
    assert listed(done.stdout) == listed(proc.stdout)


def test_without_yes_lists_and_refuses_with_exit_2(world: World) -> None:
    before = world.state("live", "Store1")
    proc = world.reset("Live", "Store1")
    assert_one_line_error(proc, "--yes", code=2)
    assert listed(proc.stdout) == expected_drops("live", "Store1")
    assert world.state("live", "Store1") == before


def test_a_held_stream_lock_is_waited_for_then_one_line(world: World) -> None:
    """Store2 is single_dataset: each dataset's stream is locked, the second one too."""
    before = world.state("live", "Store2")
    holder = world.hold("datasurface/live/Store2.pairs")
    started = time.monotonic()
    proc = world.reset("Live", "Store2", "--yes", "--lock-wait", "1")
    elapsed = time.monotonic() - started
    holder.close()
    assert_one_line_error(proc, "another session holds store Store2 dataset pairs", "after waiting 1s")
    assert elapsed < 30
    assert world.state("live", "Store2") == before


def test_a_running_merge_is_never_raced(world: World) -> None:
    """A merge that holds the store's stream (paused right after taking it) is waited for, then named."""
    merge = subprocess.Popen(
        [sys.executable, "-m", "datasurface.cli", "merge", "--platform", "Hist", "--mode", "forensic", "--store",
         "Store1", "--model", str(world.model), *world.dbs.merge_args()],
        env={**os.environ, **world.dbs.env, "DATASURFACE_TEST_PAUSE_AT": "stream:locked=60"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not world.sql("""SELECT EXISTS (SELECT FROM pg_locks l, (SELECT hashtextextended(%s, 0) AS h) k
                                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                                   AND l.classid = ((k.h >> 32) & 4294967295)::oid
                                   AND l.objid = (k.h & 4294967295)::oid)""", "datasurface/hist/Store1")[0][0]:
            assert merge.poll() is None and time.monotonic() < deadline, "the merge never took its stream"
            time.sleep(0.1)
        before = world.state("hist", "Store1")
        proc = world.reset("Hist", "Store1", "--yes", "--lock-wait", "1")
        assert_one_line_error(proc, "another session holds store Store1", "application 'datasurface-job merge")
        assert world.state("hist", "Store1") == before
    finally:
        merge.kill()
        merge.wait()


def test_a_consumer_reading_the_store_is_waited_for_then_named(world: World) -> None:
    before = world.state("hist", "Store1")
    reader = world.dbs.connect(world.dbs.merge)  # a transaction left open after reading a workspace view
    with reader.cursor() as cur:
        cur.execute("SET application_name = 'report-tool'")
        cur.execute("SELECT count(*) FROM ws_wshist.store1_pairs")
    try:
        proc = world.reset("Hist", "Store1", "--yes", "--lock-timeout", "2")
        assert_one_line_error(proc, "resetting store Store1 on platform hist", "gave up after waiting",
                              "application 'report-tool'")
        assert world.state("hist", "Store1") == before
    finally:
        reader.close()


def test_a_consumer_of_the_ledger_and_other_stores_does_not_hold_the_reset(world: World) -> None:
    """Only the store's own relations are locked: not the ledger its history views read, nor anything else."""
    reader = world.dbs.connect(world.dbs.merge)
    with reader.cursor() as cur:
        cur.execute("SELECT count(*) FROM hist.ds_batches")
        cur.execute("SELECT count(*) FROM ws_wshist.batches")
        cur.execute("SELECT count(*) FROM hist.store2_pairs_history")
    try:
        proc = world.reset("Hist", "Store1", "--yes", "--lock-timeout", "2")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        reader.close()
    assert world.batches("hist", "Store1") == []


def test_killed_after_dropping_before_commit_drops_nothing(world: World) -> None:
    """One transaction: a run killed after every DROP and DELETE ran, before the commit, leaves all of it."""
    before = world.state("hist", "Store1")
    proc = world.job("reset-store", "--platform", "Hist", "--store", "Store1", "--yes",
                     extra_env={"DATASURFACE_TEST_KILL_AT": "reset-store:dropped"})
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert world.state("hist", "Store1") == before


def test_a_held_ddl_lock_is_waited_for_then_one_line(world: World) -> None:
    before = world.state("hist", "Store1")
    holder = world.hold("datasurface-ddl/hist")
    proc = world.reset("Hist", "Store1", "--yes", "--lock-timeout", "2")
    holder.close()
    assert_one_line_error(proc, "resetting store Store1 on platform hist", "gave up after waiting")
    assert world.state("hist", "Store1") == before


def test_a_store_no_longer_in_the_model(world: World) -> None:
    doc = copy.deepcopy(world.doc)
    doc["stores"] = [s for s in doc["stores"] if s["name"] != "Store1"]
    for ws in doc["workspaces"]:
        ws["datasets"] = [d for d in ws["datasets"] if d["store"] != "Store1"]
    model = write_model(world.tmp / "without_store1", doc)
    before = world.state("hist", "Store1")
    proc = world.reset("Hist", "Store1", "--yes", model=model)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no longer in the model" in proc.stdout
    assert listed(proc.stdout) == expected_drops("hist", "Store1")
    assert_only_dropped(before, world.state("hist", "Store1"), listed(proc.stdout))
    assert world.batches("hist", "Store1") == []


def test_a_dataset_no_longer_in_the_model_goes_too(world: World) -> None:
    """Store1 without alltypes in the model: its table, left by the merges before, is still the store's."""
    doc = copy.deepcopy(world.doc)
    doc["stores"][0]["datasets"] = [d for d in doc["stores"][0]["datasets"] if d["name"] != "alltypes"]
    model = write_model(world.tmp / "without_alltypes", doc)
    before = world.state("hist", "Store1")
    proc = world.reset("Hist", "Store1", "--yes", model=model)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert listed(proc.stdout) == expected_drops("hist", "Store1")
    assert_only_dropped(before, world.state("hist", "Store1"), listed(proc.stdout))


def test_an_open_batch_loses_its_staging_tables_too(world: World) -> None:
    world.snap = next_snapshot(world.rng, world.snap, world.removed)
    load_snapshot(world.src, world.snap)
    killed = world.job("merge", "--platform", "Hist", "--mode", "forensic", "--store", "Store1",
                       extra_env={"DATASURFACE_TEST_KILL_AT": "after_ingest"})
    assert killed.returncode != 0
    assert world.batches("hist", "Store1")[-1][1:] == (3, "staged")
    staging = {f"  drop staging table hist.{staging_name(f'store1_{d}')}" for d in DATASETS}
    before = world.state("hist", "Store1")
    proc = world.reset("Hist", "Store1", "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert listed(proc.stdout) == expected_drops("hist", "Store1") | staging
    assert_only_dropped(before, world.state("hist", "Store1"), listed(proc.stdout))
    again = world.merge("Store1", "Hist", "forensic")
    assert "batch 1:" in again.stdout and world.batches("hist", "Store1") == [("Store1", 1, "committed")]


def test_an_object_of_someone_elses_on_the_store_refuses_naming_it(world_each: World) -> None:
    world = world_each
    world.sql("CREATE VIEW public.my_report AS SELECT region FROM ws_wshist.store1_pairs")
    world.sql("CREATE FUNCTION public.versions() RETURNS bigint LANGUAGE sql BEGIN ATOMIC "
              "SELECT count(*) FROM hist.store1_alltypes; END")
    world.sql("CREATE TABLE public.keep (id integer PRIMARY KEY, last hist.store1_pairs_current)")
    # a user's index on the store's own table is a part of it: it goes with the table, and the listing says so
    world.sql("CREATE INDEX user_index ON hist.store1_pairs (note)")
    index_line = "  with it: index user_index on table hist.store1_pairs (not the job's)"
    before = world.state("hist", "Store1")
    for flags in (["--yes"], ["--dry-run"], []):
        proc = world.reset("Hist", "Store1", *flags)
        assert_one_line_error(proc, "view public.my_report (on view ws_wshist.store1_pairs)",
                              "function public.versions() (on table hist.store1_alltypes)",
                              "table public.keep (on view hist.store1_pairs_current)",
                              "CASCADE")
        assert "user_index" not in proc.stderr
        assert world.state("hist", "Store1") == before
        if flags != ["--yes"]:  # the listing shows what the reset would drop, and the refusal why it does not
            assert listed(proc.stdout) == expected_drops("hist", "Store1")
            assert index_line in proc.stdout.splitlines()

    world.sql("DROP VIEW public.my_report; DROP FUNCTION public.versions(); DROP TABLE public.keep")
    proc = world.reset("Hist", "Store1", "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert index_line in proc.stdout.splitlines()
    assert world.sql("SELECT to_regclass('hist.user_index')") == [(None,)]


@pytest.mark.parametrize(("platform", "store", "fragments"), [
    ("Hist", "Nope", ["unknown store 'Nope'", "Store1, Store2"]),
    ("Nowhere", "Store1", ["platform nowhere", "no schema nowhere"]),
])
def test_unknown_store_or_platform_is_one_line(world: World, platform: str, store: str,
                                               fragments: list[str]) -> None:
    before = world.state("hist", store)
    proc = world.reset(platform, store, "--yes")
    assert_one_line_error(proc, *fragments)
    assert world.state("hist", store) == before


def test_a_store_with_nothing_on_the_platform_is_nothing_to_reset(world: World) -> None:
    assert world.reset("Hist", "Store1", "--yes").returncode == 0
    proc = world.reset("Hist", "Store1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "store Store1 on platform hist: nothing to reset" in proc.stdout


def test_help_says_what_it_drops_and_when_to_use_it() -> None:
    proc = run_job(["reset-store", "--help"], {"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for fragment in ("merge tables", "_history views and as-of functions", "workspaces", "ds_batches",
                     "replication slot", "history is lost", "a column's type, the primary key, a removed column",
                     "CASCADE", "--dry-run"):
        assert fragment in text, fragment
