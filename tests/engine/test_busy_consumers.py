"""Consumers never hang the pipeline and the pipeline never hangs consumers: lock waits are short steps
retried up to a total (then one line naming the blocker, nothing applied); readers are never queued behind
the job for more than a moment; views consumers build on ours survive schema evolution; the job touches
only objects it created."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
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

VIEW = f"{SCHEMA}.store1_pairs_current"
TABLE = f"{SCHEMA}.store1_pairs"


def _consumer(world: dict[str, Any], app: str) -> Any:
    """A BI tool's session (a privileged one, so that it may also take strong table locks)."""
    dbs = world["dbs"]
    conn = dbs.server.admin_connect(dbs.merge)
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("SET application_name = %s", (app,))
    conn.commit()
    return conn


def _pid(conn: Any) -> int:
    return int(conn.get_backend_pid())


def _add_column(world: dict[str, Any]) -> Path:
    """An additive change in the source and the model: a new nullable column `memo`."""
    with world["src"].cursor() as cur:
        cur.execute("ALTER TABLE pairs ADD COLUMN memo varchar(20)")
        cur.execute("UPDATE pairs SET memo = 'm' || code")
    world["src"].commit()
    doc = yaml.safe_load(yaml.safe_dump(world["doc"]))
    doc["stores"][0]["datasets"][0]["columns"].append({"name": "memo", "type": "varchar(20)"})
    return write_model(world["tmp"] / "evolved", doc)


class ReaderProbe(threading.Thread):
    """Another consumer that keeps reading the view while the job runs; records its slowest read."""

    def __init__(self, world: dict[str, Any]):
        super().__init__(daemon=True)
        self.conn = _consumer(world, "bi-probe")
        self.conn.autocommit = True
        self.stop = threading.Event()
        self.slowest = 0.0
        self.reads = 0

    def run(self) -> None:
        with self.conn.cursor() as cur:
            while not self.stop.is_set():
                started = time.monotonic()
                cur.execute(f"SELECT count(*) FROM {VIEW}")
                cur.fetchone()
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.reads += 1
                time.sleep(0.05)

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=10)
        self.conn.close()


def test_a_reader_holding_a_transaction_never_hangs_schema_evolution(world: dict[str, Any]) -> None:
    dbs, mrg = world["dbs"], world["mrg"]
    model = _add_column(world)
    reader = _consumer(world, "bi-dashboard")
    with reader.cursor() as cur:  # an analyst's open transaction that has read the view
        cur.execute(f"SELECT count(*) FROM {VIEW}")
    before = merge_state(mrg, SCHEMA)
    probe = ReaderProbe(world)
    probe.start()
    started = time.monotonic()
    proc = run_job([*merge_args(model, PLATFORM, "live", dbs), "--lock-timeout", "6"], dbs.env, timeout=90)
    took = time.monotonic() - started
    probe.finish()
    print(f"evolution blocked by a reader: failed after {took:.1f}s; slowest of {probe.reads} other reads "
          f"{probe.slowest:.2f}s")
    assert_one_line_error(proc, f"backend pid {_pid(reader)}", "application 'bi-dashboard'",
                          "AccessShareLock on yellow.store1_pairs", "nothing was applied")
    assert 6 <= took < 40
    assert probe.reads > 20 and probe.slowest < 2.5, "readers were queued behind the job's lock wait"
    assert merge_state(mrg, SCHEMA) == before
    reader.commit()  # the analyst is done: the next run evolves the table and view
    reader.close()
    assert run_job(merge_args(model, PLATFORM, "live", dbs), dbs.env).returncode == 0
    with mrg.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {VIEW} WHERE memo IS NOT NULL")
        assert cur.fetchone()[0] > 0
    mrg.rollback()


def test_a_share_lock_holder_is_waited_for_in_steps_then_named(world: dict[str, Any]) -> None:
    dbs, mrg = world["dbs"], world["mrg"]
    with world["src"].cursor() as cur:
        cur.execute("UPDATE pairs SET note = 'changed'")
    world["src"].commit()
    holder = _consumer(world, "nightly-export")
    with holder.cursor() as cur:
        cur.execute(f"LOCK TABLE {TABLE} IN SHARE MODE")
    before = merge_state(mrg, SCHEMA)
    proc = run_job([*merge_args(world["model"], PLATFORM, "live", dbs), "--lock-timeout", "4"], dbs.env, timeout=90)
    assert_one_line_error(proc, "merging batch 2 of store Store1", f"backend pid {_pid(holder)}",
                          "application 'nightly-export'", "ShareLock on yellow.store1_pairs")
    assert merge_state(mrg, SCHEMA) == before, "a run that gave up left something behind"
    # with time to wait, the run gets the lock once the holder lets go, and applies the batch
    job = subprocess.Popen([sys.executable, "-m", "datasurface.cli", *merge_args(world["model"], PLATFORM, "live",
                            dbs)], env={**os.environ, **dbs.env}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    assert job.poll() is None, "the run did not wait for the lock"
    holder.commit()
    holder.close()
    _out, err = job.communicate(timeout=60)
    assert job.returncode == 0, err
    assert "waiting for a lock held by backend pid" in err
    with mrg.cursor() as cur:
        cur.execute(f"SELECT DISTINCT note FROM {VIEW}")
        assert cur.fetchall() == [("changed",)]
    mrg.rollback()


def test_consumer_views_on_ours_survive_an_additive_change(world: dict[str, Any]) -> None:
    dbs, mrg = world["dbs"], world["mrg"]
    assert run_job(merge_args(world["model"], "YellowF", "forensic", dbs), dbs.env).returncode == 0
    with mrg.cursor() as cur:
        cur.execute("CREATE SCHEMA bi")
        cur.execute(f"CREATE VIEW bi.pairs_live AS SELECT * FROM {VIEW}")
        cur.execute("CREATE VIEW bi.pairs_forensic AS SELECT region, code FROM yellowf.store1_pairs_current")
    mrg.commit()
    model = _add_column(world)
    for platform, mode in ((PLATFORM, "live"), ("YellowF", "forensic")):
        proc = run_job(merge_args(model, platform, mode, dbs), dbs.env)
        assert proc.returncode == 0, proc.stderr
    with mrg.cursor() as cur:
        cur.execute("SELECT count(*) FROM bi.pairs_live")
        cur.execute("SELECT count(*) FROM bi.pairs_forensic")
        for view in (VIEW, "yellowf.store1_pairs_current"):  # the new column at the end, the others in place
            cur.execute(f"SELECT * FROM {view} LIMIT 0")
            assert [d.name for d in cur.description] == ["region", "code", "note", "amount", "memo"]
    mrg.rollback()


def test_the_job_never_touches_a_users_ds_diff(world: dict[str, Any]) -> None:
    dbs, mrg = world["dbs"], world["mrg"]
    with mrg.cursor() as cur:  # on the merge role's search path ("$user", public)
        cur.execute("CREATE TABLE public.ds_diff (keep text)")
        cur.execute("INSERT INTO public.ds_diff VALUES ('mine')")
    mrg.commit()
    with world["src"].cursor() as cur:
        cur.execute("UPDATE pairs SET note = 'x' || code")
    world["src"].commit()
    for platform, mode in ((PLATFORM, "live"), ("YellowF", "forensic")):
        assert run_job(merge_args(world["model"], platform, mode, dbs), dbs.env).returncode == 0
    with mrg.cursor() as cur:
        cur.execute("SELECT keep FROM public.ds_diff")
        assert cur.fetchall() == [("mine",)]
    mrg.rollback()


def _hold_ddl_lock(world: dict[str, Any]) -> Any:
    """Another run of the platform in the middle of its DDL: a session holding the platform's DDL lock."""
    holder = _consumer(world, "datasurface-job merge 0badc0de")
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"datasurface-ddl/{SCHEMA}",))
    return holder


def test_a_batch_whose_objects_are_in_place_does_not_wait_for_the_ddl_lock(world: dict[str, Any]) -> None:
    """Batches of a platform's stores are not serialised on its DDL lock: one that has nothing to create or
    evolve only reads the catalog, and goes on while another run holds the lock."""
    dbs = world["dbs"]
    holder = _hold_ddl_lock(world)
    try:
        proc = run_job([*merge_args(world["model"], PLATFORM, "live", dbs), "--lock-timeout", "3"], dbs.env,
                       timeout=60)
        assert proc.returncode == 0, proc.stderr
    finally:
        holder.rollback()
        holder.close()
    with world["mrg"].cursor() as cur:
        cur.execute(f"SELECT max(batch_id) FROM {SCHEMA}.ds_batches WHERE status = 'committed'")
        assert cur.fetchone()[0] == 2
    world["mrg"].rollback()


def test_a_change_waits_for_the_ddl_lock_then_sees_what_was_done_meanwhile(world: dict[str, Any]) -> None:
    """A run that must change the layout waits for the DDL lock and then checks again from the start: the
    column another run added while it waited is not added twice, and the view gains it."""
    dbs, mrg = world["dbs"], world["mrg"]
    model = _add_column(world)
    holder = _hold_ddl_lock(world)
    job = subprocess.Popen([sys.executable, "-m", "datasurface.cli", *merge_args(model, PLATFORM, "live", dbs)],
                           env={**os.environ, **dbs.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher = _consumer(world, "watcher")
    watcher.autocommit = True  # pg_stat_activity and pg_locks are read afresh by each statement only outside one
    try:
        deadline, waiting = time.monotonic() + 30, False
        while not waiting and time.monotonic() < deadline and job.poll() is None:
            with watcher.cursor() as cur:
                cur.execute("""SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                                WHERE l.locktype = 'advisory' AND NOT l.granted
                                  AND a.application_name LIKE 'datasurface-job merge %'""")
                waiting = cur.fetchone()[0] > 0
            time.sleep(0.05)
        assert waiting, "the run did not wait for the DDL lock"
        with holder.cursor() as cur:  # what the other run does before it commits
            cur.execute(f"ALTER TABLE {TABLE} ADD COLUMN memo varchar(20)")
        holder.commit()
    finally:
        holder.close()
        watcher.close()
    _out, err = job.communicate(timeout=60)
    assert job.returncode == 0, err
    with mrg.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {VIEW} WHERE memo IS NOT NULL")
        assert cur.fetchone()[0] > 0
    mrg.rollback()
