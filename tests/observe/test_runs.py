"""ds_runs (docs/monitoring.md): one row per run of merge or setup for a stream, also failed and killed runs;
recording never changes a run's outcome."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from tests.support.engine import (
    DATASETS,
    PLATFORM,
    SCHEMA,
    SMALL,
    assert_one_line_error,
    create_source_tables,
    load_snapshot,
    merge_args,
    model_dict,
    next_snapshot,
    run_job,
    write_model,
)

COLS = "store, dataset, command, exit_status, batch_id, error, finished_at IS NOT NULL, finished_at >= started_at"


def runs(conn: Any, schema: str = SCHEMA) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(f'SELECT {COLS} FROM "{schema}".ds_runs ORDER BY run_id')
        rows = cur.fetchall()
    conn.rollback()
    return rows


def last_stderr_line(proc: Any) -> str:
    return str(proc.stderr.strip().splitlines()[-1])


def test_a_successful_merge_leaves_one_finished_row(world: dict[str, Any]) -> None:
    assert runs(world["mrg"]) == [("Store1", None, "merge", 0, 1, None, True, True)]
    second = run_job(merge_args(world["model"], PLATFORM, "live", world["dbs"]), world["dbs"].env)
    assert second.returncode == 0
    assert runs(world["mrg"])[1] == ("Store1", None, "merge", 0, 2, None, True, True)


def test_a_failed_run_records_the_line_it_printed(world: dict[str, Any]) -> None:
    dbs = world["dbs"]
    proc = run_job(merge_args(world["model"], PLATFORM, "live", dbs), {**dbs.env, "SOURCE_PASSWORD": "wrong"})
    assert_one_line_error(proc, "password authentication failed")
    assert runs(world["mrg"])[-1] == ("Store1", None, "merge", 1, None, last_stderr_line(proc), True, True)


def test_a_failure_inside_the_batch_keeps_its_row_after_the_rollback(world: dict[str, Any]) -> None:
    """Duplicate keys in the snapshot: the batch (2) is rolled back and discarded; its run row stays."""
    src = world["src"]
    with src.cursor() as cur:
        cur.execute("ALTER TABLE pairs DROP CONSTRAINT pairs_pkey")
        cur.execute("INSERT INTO pairs SELECT * FROM pairs LIMIT 1")
    src.commit()
    proc = run_job(merge_args(world["model"], PLATFORM, "live", world["dbs"]), world["dbs"].env)
    assert_one_line_error(proc, "duplicate primary keys")
    assert runs(world["mrg"])[-1] == ("Store1", None, "merge", 1, 2, last_stderr_line(proc), True, True)
    with world["mrg"].cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {SCHEMA}.ds_batches")
        assert cur.fetchone()[0] == 1  # the failed batch is gone, its run is not
    world["mrg"].rollback()


def test_a_failure_before_any_stream_is_recorded_for_the_store(world: dict[str, Any]) -> None:
    dbs = world["dbs"]
    proc = run_job(merge_args(world["model"], PLATFORM, "live", dbs, store="Nope"), dbs.env)
    assert_one_line_error(proc, "unknown store 'Nope'")
    assert runs(world["mrg"])[-1] == ("Nope", None, "merge", 1, None, last_stderr_line(proc), True, True)


def test_a_killed_run_leaves_finished_at_null_and_the_next_run_is_not_confused(world: dict[str, Any]) -> None:
    dbs = world["dbs"]
    killed = run_job(merge_args(world["model"], PLATFORM, "live", dbs), dbs.env,
                     {"DATASURFACE_TEST_KILL_AT": "after_ingest"})
    assert killed.returncode == -9
    assert runs(world["mrg"])[-1] == ("Store1", None, "merge", None, None, None, False, None)
    again = run_job(merge_args(world["model"], PLATFORM, "live", dbs), dbs.env)
    assert again.returncode == 10, again.stderr
    fresh = run_job(merge_args(world["model"], PLATFORM, "live", dbs), dbs.env)
    assert fresh.returncode == 0, fresh.stderr
    assert runs(world["mrg"]) == [
        ("Store1", None, "merge", 0, 1, None, True, True),
        ("Store1", None, "merge", None, None, None, False, None),  # the killed run stays as it died
        ("Store1", None, "merge", 10, 2, None, True, True),
        ("Store1", None, "merge", 0, 3, None, True, True),
    ]


def test_an_unwritable_history_changes_nothing_in_the_run(world: dict[str, Any]) -> None:
    """No privilege on ds_runs: the merge still commits with the same output and exit status, and a
    failing run still ends with its own error line."""
    dbs = world["dbs"]
    admin = dbs.server.admin_connect(dbs.merge)
    with admin.cursor() as cur:
        cur.execute(f"ALTER TABLE {SCHEMA}.ds_runs OWNER TO postgres")
    before = runs(admin)
    ok = run_job(merge_args(world["model"], PLATFORM, "live", dbs), dbs.env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().splitlines()[-1] == "DATASURFACE_RESULT_CODE=0"
    assert "batch 2: total=" in ok.stdout
    assert "run history (yellow.ds_runs) not recorded" in ok.stderr
    bad = run_job(merge_args(world["model"], PLATFORM, "live", dbs), {**dbs.env, "SOURCE_PASSWORD": "wrong"})
    assert_one_line_error(bad, "password authentication failed")
    assert runs(admin) == before
    admin.close()


def test_a_merge_database_that_is_down_gives_the_runs_own_error(databases_on: Any, tmp_path: Any) -> None:
    from datasurface.localpg import LocalPostgres, find_bin_dir

    with LocalPostgres(find_bin_dir("any")) as server:
        dbs = databases_on(server)
        model = write_model(tmp_path / "model", model_dict(dbs.host, dbs.port, dbs.source, datasets=SMALL))
        server.stop_server_only()
        proc = run_job(merge_args(model, PLATFORM, "live", dbs), dbs.env)
        assert_one_line_error(proc, "cannot connect to database")
        # the run's own line says it all: no second line about the history it could not write either
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip().splitlines()[-1]]
        server.start_server_only()


def test_setup_is_recorded(world: dict[str, Any]) -> None:
    dbs = world["dbs"]
    args = ["setup", "--model", str(world["model"]), "--platform", PLATFORM, "--mode", "live", *dbs.merge_args()]
    assert run_job(args, dbs.env).returncode == 0
    bad = run_job([*args[:-1], "nobody"], dbs.env)
    assert_one_line_error(bad, "NOBODY_USER")
    assert runs(world["mrg"])[1:] == [(None, None, "setup", 0, None, None, True, True)]  # no credential, no row


def test_single_dataset_streams_get_a_row_each(dbs: Any, tmp_path: Any) -> None:
    src = dbs.connect(dbs.source)
    create_source_tables(src)
    load_snapshot(src, next_snapshot(random.Random(3), {}, defaultdict(set)))
    model = write_model(tmp_path / "model", model_dict(dbs.host, dbs.port, dbs.source, consistency="single_dataset"))
    assert run_job(merge_args(model, PLATFORM, "forensic", dbs), dbs.env).returncode == 0
    mrg = dbs.connect(dbs.merge)
    assert sorted(runs(mrg)) == sorted(("Store1", name, "merge", 0, 1, None, True, True) for name in DATASETS)
    src.close()
    mrg.close()


def merge_terminating(world: dict[str, Any], role: str) -> tuple[bool, int, str, str]:
    """A merge that pauses once it holds its stream, while its `role` session (merge, history) is terminated
    from outside: whether one was, and the process's exit status, stdout and stderr."""
    import os
    import subprocess
    import sys
    import time

    dbs = world["dbs"]
    proc = subprocess.Popen([sys.executable, "-m", "datasurface.cli", *merge_args(world["model"], PLATFORM, "live",
                                                                                  dbs)],
                            env={**os.environ, **dbs.env, "DATASURFACE_TEST_PAUSE_AT": "stream:locked=3"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    admin = dbs.server.admin_connect(dbs.merge)
    deadline, killed = time.monotonic() + 20, 0
    while not killed and time.monotonic() < deadline:
        with admin.cursor() as cur:  # once the run holds its stream (its sessions open ahead, before that)
            cur.execute("""SELECT count(pg_terminate_backend(a.pid)) FROM pg_stat_activity a
                            WHERE a.datname = %s AND a.application_name LIKE %s
                              AND EXISTS (SELECT FROM pg_locks l JOIN pg_stat_activity h USING (pid)
                                           WHERE l.locktype = 'advisory' AND l.granted
                                             AND h.application_name LIKE 'datasurface-job merge %%')""",
                        (dbs.merge, f"datasurface-job {role} %"))
            killed = cur.fetchone()[0]
        time.sleep(0.1)
    admin.close()
    out, err = proc.communicate(timeout=60)
    return bool(killed), proc.returncode, out, err


def test_a_driver_error_is_recorded_as_the_line_the_run_printed(world: dict[str, Any]) -> None:
    """The run's merge session is terminated while it holds the stream: the driver error becomes its one
    line on the way out of the connection, and that line (not the raw driver text) is what ds_runs has."""
    killed, code, out, err = merge_terminating(world, "merge")
    assert killed and code == 1, out + err
    line = err.strip().splitlines()[-1]
    assert line.startswith("datasurface-job: error: lost the connection to the merge database"), err
    assert runs(world["mrg"])[-1] == ("Store1", None, "merge", 1, None, line, True, True)


def test_a_history_session_the_server_ended_during_the_run_is_replaced(world: dict[str, Any]) -> None:
    """The history keeps its session from a run's start to its finish; one the server ended meanwhile (an idle
    timeout during a long merge, a restart) is replaced, and the run's row is still completed."""
    killed, code, out, err = merge_terminating(world, "history")
    assert killed and code == 0, out + err
    assert "not recorded" not in err, err
    assert runs(world["mrg"])[-1] == ("Store1", None, "merge", 0, 2, None, True, True)


def test_a_history_from_before_the_run_counts_gains_them(world: dict[str, Any]) -> None:
    """A platform whose ds_runs predates ds_run_totals (docs/monitoring.md): the next run creates the counts table
    and counts itself in it."""
    mrg = world["mrg"]
    with mrg.cursor() as cur:
        cur.execute(f'DROP TABLE "{SCHEMA}".ds_run_totals')
    mrg.commit()
    assert run_job(merge_args(world["model"], PLATFORM, "live", world["dbs"]), world["dbs"].env).returncode == 0
    with mrg.cursor() as cur:
        cur.execute(f"""SELECT ok, failed FROM "{SCHEMA}".ds_run_totals WHERE command = 'merge' AND store = 'Store1'""")
        assert cur.fetchall() == [(1, 0)]
    mrg.rollback()
