"""Every guarantee of docs/concepts.md with a MariaDB source: crash safety (SIGKILL in the middle of the MySQL
read), the stream lock, schema evolution, and one clear line for every bad input."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.engine import COMMON_DATASETS as DATASETS
from tests.support.engine import (
    assert_one_line_error,
    ctrl_c_when,
    fetch,
    merge_args,
    next_snapshot,
    run_job,
    write_model,
)
from tests.support.mysql import create_mysql_tables, expected_rows, load_mysql_snapshot, mysql_model, rfc4122

SMALL = {"pairs": DATASETS["pairs"]}
ONE = {"alltypes": DATASETS["alltypes"]}


@pytest.fixture
def world(mysql_dbs: Any, tmp_path: Path) -> Any:
    """A MariaDB source with the `pairs` dataset loaded, and its model."""
    src = mysql_dbs.connect_source()
    create_mysql_tables(src, SMALL)
    snap = next_snapshot(random.Random(3), {}, defaultdict(set), DATASETS)
    load_mysql_snapshot(src, {"pairs": snap["pairs"]})
    doc = mysql_model(mysql_dbs.host, mysql_dbs.source, datasets=SMALL)
    model = write_model(tmp_path / "model", doc)
    yield {"mysql_dbs": mysql_dbs, "src": src, "doc": doc, "model": model, "snap": snap, "tmp": tmp_path}
    src.close()


def _batches(mrg: Any, schema: str) -> list[tuple[Any, ...]]:
    with mrg.cursor() as cur:
        cur.execute(f"SELECT batch_id, status FROM {schema}.ds_batches ORDER BY batch_id")
        rows = cur.fetchall()
    mrg.rollback()
    return rows


# a first load goes straight into the merge tables in the batch's one transaction (a kill anywhere leaves the
# batch `ingesting`); a later batch is staged first (a kill after that leaves it `staged`)
KILLS = [("ingest:alltypes:reading", 1, "ingesting"), ("ingest:pairs:reading", 1, "ingesting"),
         ("ingest:pairs:copied", 1, "ingesting"), ("merge:pairs:applied", 1, "ingesting"),
         ("ledger:before_commit", 1, "ingesting"),
         ("ingest:alltypes:reading", 2, "ingesting"), ("ingest:pairs:copied", 2, "ingesting"),
         ("after_ingest", 2, "staged"), ("merge:pairs:applied", 2, "staged")]


@pytest.mark.parametrize(("point", "batch", "left"), KILLS)
def test_sigkill_during_the_read_leaves_the_batch_open_and_the_next_run_recovers(
        point: str, batch: int, left: str, mysql_dbs: Any, tmp_path: Path) -> None:
    src = mysql_dbs.connect_source()
    create_mysql_tables(src)
    rng = random.Random(11)
    snap = rfc4122(next_snapshot(rng, {}, defaultdict(set), DATASETS))
    with src.cursor() as cur:  # more rows than one fetch batch, so the kill lands mid-table
        cur.execute("INSERT INTO alltypes (id, c_text) SELECT seq + 1000, 'bulk' FROM seq_0_to_11999")
    src.commit()
    load_mysql_snapshot(src, {"pairs": snap["pairs"]})
    model = write_model(tmp_path / "model", mysql_model(mysql_dbs.host, mysql_dbs.source))
    args = merge_args(model, "Crash", "forensic", mysql_dbs)
    mrg = mysql_dbs.connect_merge()
    committed = []
    if batch == 2:
        assert run_job(args, mysql_dbs.env).returncode == 0
        committed = [(1, "committed")]
        snap = rfc4122(next_snapshot(rng, snap, defaultdict(set), DATASETS))
        load_mysql_snapshot(src, {"pairs": snap["pairs"]})
    killed = run_job(args, mysql_dbs.env, {"DATASURFACE_TEST_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _batches(mrg, "crash") == [*committed, (batch, left)]
    with mrg.cursor() as cur:  # nothing of the killed batch is visible
        cur.execute("SELECT count(*) FROM crash.store1_alltypes_current")
        assert cur.fetchone()[0] == (0 if batch == 1 else 12000)
    mrg.rollback()
    recovered = run_job(args, mysql_dbs.env)
    assert recovered.returncode == 10, recovered.stderr
    assert recovered.stdout.strip().splitlines()[-1] == "DATASURFACE_RESULT_CODE=10"
    assert _batches(mrg, "crash") == [*committed, (batch, "committed")]
    with mrg.cursor() as cur:
        cur.execute("SELECT count(*) FROM crash.store1_alltypes_current")
        assert cur.fetchone()[0] == 12000
    mrg.rollback()
    assert fetch(mrg, "crash.store1_pairs_current", "pairs", datasets=DATASETS) == expected_rows("pairs", snap["pairs"])
    again = run_job(args, mysql_dbs.env)
    assert again.returncode == 0, again.stderr
    assert _batches(mrg, "crash") == [*committed, (batch, "committed"), (batch + 1, "committed")]
    mrg.close()
    src.close()


def test_two_processes_never_both_apply(world: Any) -> None:
    mysql_dbs = world["mysql_dbs"]
    args = merge_args(world["model"], "Lock", "live", mysql_dbs)
    holder = subprocess.Popen([sys.executable, "-m", "datasurface.cli", *args],
                              env={**os.environ, **mysql_dbs.env, "DATASURFACE_TEST_PAUSE_AT": "batch:opened=3"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mrg = mysql_dbs.connect_merge()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if _batches(mrg, "lock"):
                break
        except Exception:
            mrg.rollback()
        time.sleep(0.1)
    loser = run_job([*args, "--lock-wait", "0"], mysql_dbs.env)
    assert_one_line_error(loser, "another session holds store Store1")
    waiter = subprocess.Popen([sys.executable, "-m", "datasurface.cli", *args], env={**os.environ, **mysql_dbs.env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _out, err = holder.communicate(timeout=60)
    assert holder.returncode == 0, err
    _wout, werr = waiter.communicate(timeout=60)  # by default a run waits for a live holder
    assert waiter.returncode == 0, werr
    assert _batches(mrg, "lock") == [(1, "committed"), (2, "committed")]
    mrg.close()


def test_added_nullable_column_evolves_the_merge_tables(world: Any) -> None:
    mysql_dbs, src, doc = world["mysql_dbs"], world["src"], world["doc"]
    for mode in ("live", "forensic"):
        assert run_job(merge_args(world["model"], f"Evo{mode}", mode, mysql_dbs), mysql_dbs.env).returncode == 0
    with src.cursor() as cur:
        cur.execute("ALTER TABLE pairs ADD COLUMN memo varchar(20) NULL")
        cur.execute("UPDATE pairs SET memo = 'm😀' WHERE code % 2 = 0")
        cur.execute("SELECT count(*) FROM pairs WHERE code % 2 = 0")
        (changed,) = cur.fetchone()
    src.commit()
    doc["stores"][0]["datasets"][0]["columns"].append({"name": "memo", "type": "varchar(20)"})
    (world["model"] / "datasurface.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    mrg = mysql_dbs.connect_merge()
    for mode in ("live", "forensic"):
        proc = run_job(merge_args(world["model"], f"Evo{mode}", mode, mysql_dbs), mysql_dbs.env)
        assert proc.returncode == 0, proc.stderr
        assert f"updated={changed} " in proc.stdout
        with mrg.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM evo{mode}.store1_pairs_current WHERE memo = 'm😀'")
            assert cur.fetchone()[0] == changed
        mrg.rollback()
    mrg.close()


# --- bad input: one line each ---------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rewrite(world: Any, **source: Any) -> None:
    doc = world["doc"]
    doc["stores"][0]["source"].update(source)
    (world["model"] / "datasurface.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def _merge(world: Any, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_job(merge_args(world["model"], "Bad", "live", world["mysql_dbs"]), world["mysql_dbs"].env, extra_env)


def test_unreachable_server(world: Any) -> None:
    port = _free_port()
    _rewrite(world, host="127.0.0.1", port=port)
    proc = _merge(world)
    assert_one_line_error(proc, "cannot connect to MySQL database", f"127.0.0.1:{port}", "(2003)")


def test_wrong_password_is_one_line_and_never_shows_a_password(world: Any) -> None:
    proc = _merge(world, {"SOURCE_PASSWORD": "not-the-Secret-42"})
    assert_one_line_error(proc, "cannot connect to MySQL database", "(1045) Access denied")
    assert "not-the-Secret-42" not in proc.stdout + proc.stderr
    assert world["mysql_dbs"].env["SOURCE_PASSWORD"] not in proc.stdout + proc.stderr


def test_missing_table(world: Any) -> None:
    with world["src"].cursor() as cur:
        cur.execute("RENAME TABLE pairs TO pairs_old")
    proc = _merge(world)
    assert_one_line_error(proc, f"source table {world['mysql_dbs'].source}.pairs", "does not exist")


def test_missing_column(world: Any) -> None:
    with world["src"].cursor() as cur:
        cur.execute("ALTER TABLE pairs DROP COLUMN note")
    proc = _merge(world)
    assert_one_line_error(proc, "column 'note' (model type text) is missing from the source")


def test_type_mismatch_names_both_types(world: Any) -> None:
    with world["src"].cursor() as cur:
        cur.execute("ALTER TABLE pairs MODIFY amount double")
    proc = _merge(world)
    assert_one_line_error(proc, "column 'amount' is double in the source but numeric(10,2) in the model")


def test_myisam_table_is_refused(world: Any) -> None:
    with world["src"].cursor() as cur:
        cur.execute("ALTER TABLE pairs ENGINE=MyISAM")
    proc = _merge(world)
    assert_one_line_error(proc, "uses storage engine MyISAM, which has no consistent snapshot")


@pytest.mark.parametrize(("values", "fragment"), [
    ([("north", 1), ("north", 1)], "has duplicate primary keys: Key (region, code)=(north, 1)"),
    ([("north", 1), (None, 2)], "has a NULL in column 'region', a primary key column"),
])
@pytest.mark.parametrize("mode", ["live", "forensic"])
def test_duplicate_or_null_keys(mysql_dbs: Any, tmp_path: Path, values: list[Any], fragment: str, mode: str) -> None:
    """Refused with the model's key named, also by a first load straight into the merge table (whose forensic
    primary key has the version's batch too)."""
    src = mysql_dbs.connect_source()
    create_mysql_tables(src, SMALL, primary_key=False)  # a table without a primary key can hold both
    with src.cursor() as cur:
        cur.executemany("INSERT INTO pairs (region, code) VALUES (%s, %s)", values)
    src.commit()
    model = write_model(tmp_path / "model", mysql_model(mysql_dbs.host, mysql_dbs.source, datasets=SMALL))
    proc = run_job(merge_args(model, "Keys", mode, mysql_dbs), mysql_dbs.env)
    assert_one_line_error(proc, fragment)
    assert "ds_batch_in" not in proc.stderr.strip().splitlines()[-1]
    mrg = mysql_dbs.connect_merge()
    assert _batches(mrg, "keys") == []  # nothing half-written
    mrg.close()
    src.close()


def test_check_command_reports_the_mysql_source(world: Any) -> None:
    mysql_dbs = world["mysql_dbs"]
    args = ["check", "--model", str(world["model"]), *mysql_dbs.merge_args()]
    ok = run_job(args, mysql_dbs.env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"ok   source of store Store1: MySQL database '{mysql_dbs.source}' at socket {mysql_dbs.host}" in ok.stdout
    with world["src"].cursor() as cur:
        cur.execute("ALTER TABLE pairs DROP COLUMN note")
    bad = run_job(args, mysql_dbs.env)
    assert bad.returncode == 1
    assert "FAIL source of store Store1: " in bad.stdout and "column 'note'" in bad.stdout


def test_the_source_session_is_bounded_and_named_like_the_job_s_others(world: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A frozen or vanished job cannot hold a MySQL read view (and the metadata locks of its reads) for
    hours: the server ends its session after --session-timeout, and a read waits for a metadata lock at
    most the run's lock budget. The session carries the run's name, as on PostgreSQL."""
    from datasurface.ingest.mysql import open_source
    from datasurface.model.validate import parse_model
    from datasurface.sessions import SessionLimits

    store = parse_model(yaml.safe_dump(world["doc"]), "model").stores[0]
    for key, value in world["mysql_dbs"].env.items():
        monkeypatch.setenv(key, value)
    with open_source(store, "source", "1a2b3c4d", SessionLimits(idle_timeout=42, lock_timeout=77)) as src:
        row = src.conn.exec_driver_sql(
            "SELECT @@session.wait_timeout, @@session.net_write_timeout, @@session.net_read_timeout, "
            "@@session.lock_wait_timeout, @@session.time_zone").one()
        assert tuple(row) == (42, 42, 42, 77, "+00:00")
    with open_source(store, "source", "1a2b3c4d", SessionLimits(idle_timeout=1)) as src:
        time.sleep(2.5)  # the server has ended the silent session by now
        with pytest.raises(Exception, match=r"(?i)lost|gone away|closed"):
            src.conn.exec_driver_sql("SELECT 1").one()


def _merge_session_locks(mrg: Any, schema: str) -> set[tuple[str, str]]:
    """(relation, lock mode) of the relations the job's merge session holds locks on while it is paused (idle in
    its transaction for a moment: not between two statements of another one, e.g. the layout's DDL); a
    relation created in its open transaction shows as its oid only."""
    with mrg.cursor() as cur:
        cur.execute("""SELECT coalesce(c.relname, l.relation::text), l.mode
                         FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                         LEFT JOIN pg_class c ON c.oid = l.relation
                        WHERE l.locktype = 'relation' AND a.application_name LIKE 'datasurface-job merge %%'
                          AND a.state = 'idle in transaction'
                          AND clock_timestamp() - a.state_change > interval '300 milliseconds'
                          AND (c.oid IS NULL OR c.relnamespace = to_regnamespace(%s))""", (schema,))
        found = {(str(r), str(m)) for r, m in cur.fetchall()}
    mrg.rollback()
    return found


def test_a_first_load_goes_straight_into_the_merge_table(world: Any) -> None:
    """The first batch's COPY writes the merge table itself, under the apply's ROW EXCLUSIVE lock, and creates
    no staging table; a later batch stages its snapshot (a table of its own, created in the COPY's
    transaction) and takes the merge tables' locks only to apply it."""
    mysql_dbs, model = world["mysql_dbs"], world["model"]
    mrg = mysql_dbs.connect_merge()
    args = [sys.executable, "-m", "datasurface.cli", *merge_args(model, "Direct", "forensic", mysql_dbs)]
    seen = []
    for _ in range(2):
        env = {**os.environ, **mysql_dbs.env, "DATASURFACE_TEST_PAUSE_AT": "ingest:pairs:copied=2"}
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        locks: set[tuple[str, str]] = set()
        while not locks and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            locks = _merge_session_locks(mrg, "direct")
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        seen.append(locks)
    first, second = seen
    assert ("store1_pairs", "RowExclusiveLock") in first
    assert not any(mode == "AccessExclusiveLock" for _, mode in first), first
    assert ("store1_pairs", "RowExclusiveLock") not in second
    assert any(mode == "AccessExclusiveLock" for _, mode in second), second  # the staging table, being created
    assert _batches(mrg, "direct") == [(1, "committed"), (2, "committed")]
    mrg.close()


@pytest.mark.parametrize("batch", [1, 2])
def test_ctrl_c_inside_the_read_is_an_interruption(batch: int, mysql_dbs: Any, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) while the merge side's COPY waits for rows that the reading thread has not read yet
    (it is held after its first fetch): the run stops as interrupted (exit 130, one line) without waiting
    for that thread, nothing of the batch is visible, and the next merge goes on. Batch 1 is a first load
    (straight into the merge table), batch 2 a staged one."""
    src = mysql_dbs.connect_source()
    create_mysql_tables(src, ONE)
    with src.cursor() as cur:  # several fetch batches
        cur.execute("INSERT INTO alltypes (id, c_text) SELECT seq, 'bulk' FROM seq_1_to_12000")
    src.commit()
    model = write_model(tmp_path / "model", mysql_model(mysql_dbs.host, mysql_dbs.source, datasets=ONE))
    args = merge_args(model, "Intr", "forensic", mysql_dbs)
    mrg = mysql_dbs.connect_merge()
    before = []
    if batch == 2:
        assert run_job(args, mysql_dbs.env).returncode == 0
        before = _batches(mrg, "intr")
    env = {**os.environ, **mysql_dbs.env, "DATASURFACE_TEST_PAUSE_AT": "ingest:alltypes:reading=120"}
    job = subprocess.Popen([sys.executable, "-m", "datasurface.cli", *args], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def copying() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and job.poll() is None:
            with mrg.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY %%' AND state = 'active'")
                found = cur.fetchone()[0] > 0
            mrg.rollback()
            if found:
                return
            time.sleep(0.1)
        raise AssertionError("the job never reached its COPY")

    ctrl_c_when(job, copying)  # within 60 s, not the 120 s the reading thread is held for
    assert [b for b in _batches(mrg, "intr") if b[1] == "committed"] == [b for b in before if b[1] == "committed"]
    nxt = run_job(args, mysql_dbs.env)
    assert nxt.returncode in (0, 10), nxt.stdout + nxt.stderr
    with mrg.cursor() as cur:
        cur.execute("SELECT count(*) FROM intr.store1_alltypes_current")
        assert cur.fetchone()[0] == 12000
    mrg.close()
    src.close()


def test_a_staged_snapshot_is_written_frozen(mysql_dbs: Any, tmp_path: Path) -> None:
    """A later batch's staging table is created in the COPY's transaction and copied with FREEZE, as a
    PostgreSQL source's is: its pages are all-frozen in the visibility map, so the diff's first read of it
    sets no hint bits (which would dirty, and write back, every page of the snapshot)."""
    src = mysql_dbs.connect_source()
    create_mysql_tables(src, ONE)
    with src.cursor() as cur:
        cur.execute("INSERT INTO alltypes (id, c_text) SELECT seq, 'bulk' FROM seq_1_to_12000")
    src.commit()
    model = write_model(tmp_path / "model", mysql_model(mysql_dbs.host, mysql_dbs.source, datasets=ONE))
    args = merge_args(model, "Frozen", "live", mysql_dbs)
    assert run_job(args, mysql_dbs.env).returncode == 0
    staged = run_job(args, mysql_dbs.env, {"DATASURFACE_TEST_KILL_AT": "after_ingest"})
    assert staged.returncode == -signal.SIGKILL, staged.stderr
    admin = mysql_dbs.pg.server.admin_connect(mysql_dbs.pg.merge)
    try:
        with admin.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS pg_visibility")
            cur.execute("SELECT staging_tables[1] FROM frozen.ds_batches WHERE status = 'staged'")
            table = cur.fetchone()[0]
            cur.execute("SELECT count(*), bool_and(all_frozen) FROM pg_visibility_map(%s::regclass)",
                        (f'frozen."{table}"',))
            pages, frozen = cur.fetchone()
    finally:
        admin.close()
    assert pages > 10 and frozen, (pages, frozen)
    assert run_job(args, mysql_dbs.env).returncode == 10
