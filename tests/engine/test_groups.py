"""`merge` of several stores in one run, as a platform's group DAG runs it: each store as alone (its own
batch, ledger and run history rows), a failure that stops no other store, one stderr line per failed
store, the exit status over the group, --parallel, and an interrupted group."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.engine import ctrl_c_when, run_job, write_model

PLATFORM, SCHEMA = "Groups", "groups"
GOOD = ["S1", "S2", "S3"]
DATASET = {"S1": "pairs", "S2": "pairs2", "S3": "pairs3"}  # each its own: pause points of their own


@pytest.fixture
def group(world: dict[str, Any]) -> dict[str, Any]:
    """The world's source with a model of stores S1, S2, S3 (each ingesting its `pairs` table, as datasets
    pairs, pairs2, pairs3), Down (a source that does not answer) and Dupes (a table whose primary key has
    duplicates)."""
    src = world["src"]
    with src.cursor() as cur:
        cur.execute("CREATE TABLE dupes (LIKE pairs)")
        cur.execute("INSERT INTO dupes SELECT * FROM pairs")
        cur.execute("INSERT INTO dupes SELECT * FROM pairs LIMIT 1")
    src.commit()
    base = world["doc"]["stores"][0]
    stores = []
    for name in [*GOOD, "Down", "Dupes"]:
        st = copy.deepcopy(base)
        st["name"] = name
        if name == "Down":
            st["source"]["host"] = "/nonexistent/socket/dir"
        if name == "Dupes":
            st["datasets"][0]["table"] = "dupes"
        if name in ("S2", "S3"):
            st["datasets"][0].update(name=DATASET[name], table="pairs")
        stores.append(st)
    doc = {**world["doc"], "stores": stores}
    return {**world, "model": write_model(world["tmp"] / "groups", doc)}


def _args(g: dict[str, Any], *stores: str, platform: str = PLATFORM) -> list[str]:
    args = ["merge", "--model", str(g["model"]), "--platform", platform, "--mode", "live"]
    for store in stores:
        args += ["--store", store]
    return [*args, *g["dbs"].merge_args()]


def _query(conn: Any, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(query, params)
        rows = cur.fetchall()
    conn.rollback()
    return rows


def _batches(g: dict[str, Any], schema: str = SCHEMA) -> list[tuple[Any, ...]]:
    if _query(g["mrg"], "SELECT to_regclass(%s)", (f"{schema}.ds_batches",)) == [(None,)]:
        return []
    return _query(g["mrg"], f"SELECT store, batch_id, status FROM {schema}.ds_batches ORDER BY 1, 2")


def _runs(g: dict[str, Any], schema: str = SCHEMA) -> list[tuple[Any, ...]]:
    return _query(g["mrg"], f"SELECT store, dataset, exit_status, batch_id, error, run, finished_at IS NOT NULL "
                            f"FROM {schema}.ds_runs ORDER BY run_id")


def _error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("datasurface-job:")]


def _last(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout.strip().splitlines()[-1]


def test_repeated_store_and_the_env_list_merge_every_store(group: dict[str, Any]) -> None:
    dbs = group["dbs"]
    proc = run_job(_args(group, *GOOD), dbs.env)
    assert proc.returncode == 0, proc.stderr
    assert _last(proc) == "DATASURFACE_RESULT_CODE=0"
    assert not _error_lines(proc)
    for store in GOOD:
        assert f"{SCHEMA} {store}.{DATASET[store]} batch 1:" in proc.stdout
    assert _batches(group) == [(s, 1, "committed") for s in GOOD]
    # one ds_runs row per stream, all of this one run, each with its batch
    runs = _runs(group)
    assert [(r[0], r[1], r[2], r[3], r[4], r[6]) for r in runs] == [(s, None, 0, 1, None, True) for s in GOOD]
    assert len({r[5] for r in runs}) == 1

    env = {**dbs.env, "DATASURFACE_STORE": "S3,S1", "DATASURFACE_MODEL": str(group["model"]),
           "DATASURFACE_PLATFORM": PLATFORM, "DATASURFACE_MODE": "live"}
    proc = run_job(["merge", *dbs.merge_args()], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.index("S3.pairs3 batch 2") < proc.stdout.index("S1.pairs batch 2")  # in the listed order
    assert _batches(group) == [("S1", 1, "committed"), ("S1", 2, "committed"), ("S2", 1, "committed"),
                               ("S3", 1, "committed"), ("S3", 2, "committed")]
    # the same through the typer command (which --debug takes), names and spaces as a user may write them
    proc = run_job(["merge", *dbs.merge_args()], {**env, "DATASURFACE_STORE": "S2, S3", "DATASURFACE_DEBUG": "1"})
    assert proc.returncode == 0, proc.stderr
    assert [b for b in _batches(group) if b[1] > 1] == [("S1", 2, "committed"), ("S2", 2, "committed"),
                                                         ("S3", 2, "committed"), ("S3", 3, "committed")]


def test_a_store_listed_twice_or_no_parallelism_is_a_usage_error(group: dict[str, Any]) -> None:
    proc = run_job(_args(group, "S1", "S2", "S1"), group["dbs"].env)
    assert proc.returncode == 2, proc.stderr
    assert _error_lines(proc) == ["datasurface-job: error: --store lists S1 more than once"]
    proc = run_job([*_args(group, "S1", "S2"), "--parallel", "0"], group["dbs"].env)
    assert proc.returncode == 2, proc.stderr
    assert _error_lines(proc) == ["datasurface-job: error: --parallel must be at least 1 (got 0)"]
    assert _query(group["mrg"], "SELECT to_regclass(%s)", (f"{SCHEMA}.ds_batches",)) == [(None,)]


def test_failed_stores_stop_no_other(group: dict[str, Any]) -> None:
    """A source down, a refused snapshot, a store the model lacks and a stream held by another run, among
    good stores: one line each, naming the store; the good stores committed; exit 1."""
    dbs = group["dbs"]
    assert run_job(_args(group, "S2"), dbs.env).returncode == 0
    holder = subprocess.Popen([sys.executable, "-m", "datasurface.cli", *_args(group, "S2")],
                              env={**os.environ, **dbs.env, "DATASURFACE_TEST_PAUSE_AT": "batch:opened=8"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not any(s == "S2" and st != "committed" for s, _, st in _batches(group)):
            assert time.monotonic() < deadline, "the holder never opened its batch"
            time.sleep(0.1)
        proc = run_job([*_args(group, "S1", "Down", "Nope", "S2", "Dupes", "S3"), "--lock-wait", "0"], dbs.env)
    finally:
        holder.communicate(timeout=60)
    assert holder.returncode == 0
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert _last(proc) == "DATASURFACE_RESULT_CODE=1"
    assert "Traceback" not in proc.stderr
    lines = _error_lines(proc)
    assert len(lines) == 4, proc.stderr
    for line, store, fragment in zip(lines, ["Down", "Nope", "S2", "Dupes"],
                                     ["cannot connect", "unknown store 'Nope'", "another session holds store S2",
                                      "duplicate primary keys"], strict=True):
        assert line.startswith(f"datasurface-job: error: store {store}: "), line
        assert fragment in line, line
    assert [b for b in _batches(group) if b[0] != "S2"] == [("S1", 1, "committed"), ("S3", 1, "committed")]
    # the group's rows: one per store, each failure with the line printed for it
    group_run = _runs(group)[-1][5]
    rows = [(r[0], r[2], r[4]) for r in _runs(group) if r[5] == group_run]
    assert rows == [("S1", 0, None), ("Down", 1, lines[0]), ("Nope", 1, lines[1]), ("S2", 1, lines[2]),
                    ("Dupes", 1, lines[3]), ("S3", 0, None)]


def test_exit_10_when_a_store_finished_an_open_batch(group: dict[str, Any]) -> None:
    dbs = group["dbs"]
    assert run_job(_args(group, *GOOD), dbs.env).returncode == 0
    killed = run_job(_args(group, "S2"), dbs.env, {"DATASURFACE_TEST_KILL_AT": "ledger:before_commit"})
    assert killed.returncode == -9
    proc = run_job(_args(group, *GOOD), dbs.env)
    assert proc.returncode == 10, proc.stderr
    assert _last(proc) == "DATASURFACE_RESULT_CODE=10"
    assert "finishing batch 2" in proc.stderr
    assert _batches(group) == [(s, b, "committed") for s in GOOD for b in (1, 2)]
    assert [(r[0], r[2]) for r in _runs(group)[-3:]] == [("S1", 0), ("S2", 10), ("S3", 0)]
    # a failure wins over 10
    killed = run_job(_args(group, "S3"), dbs.env, {"DATASURFACE_TEST_KILL_AT": "ledger:before_commit"})
    assert killed.returncode == -9
    proc = run_job(_args(group, "S3", "Down"), dbs.env)
    assert proc.returncode == 1, proc.stderr
    assert [(r[0], r[2]) for r in _runs(group)[-2:]] == [("S3", 10), ("Down", 1)]


def test_parallel_gives_the_same_result(group: dict[str, Any]) -> None:
    dbs, src = group["dbs"], group["src"]
    stores = [*GOOD, "Down"]
    for _ in range(2):
        seq = run_job(_args(group, *stores, platform="Seq"), dbs.env)
        par = run_job([*_args(group, *stores, platform="Par"), "--parallel", "2"], dbs.env)
        for proc in (seq, par):
            assert proc.returncode == 1, proc.stderr
            assert [line.split(":")[2] for line in _error_lines(proc)] == [" store Down"]
        assert _batches(group, "seq") == _batches(group, "par")
        for store in GOOD:
            table = f"{store.lower()}_{DATASET[store]}"
            assert _query(group["mrg"], f"SELECT * FROM seq.{table} ORDER BY 1, 2") == \
                _query(group["mrg"], f"SELECT * FROM par.{table} ORDER BY 1, 2")
        runs = {schema: sorted((r[0], r[2], r[3]) for r in _runs(group, schema)) for schema in ("seq", "par")}
        assert runs["seq"] == runs["par"]
        with src.cursor() as cur:
            cur.execute("UPDATE pairs SET note = coalesce(note, '') || '+' WHERE code % 2 = 0")
        src.commit()
    assert _batches(group, "par") == [(s, b, "committed") for s in GOOD for b in (1, 2)]


def test_a_model_that_does_not_load_fails_every_store(group: dict[str, Any]) -> None:
    dbs = group["dbs"]
    args = _args(group, "S1", "S2")
    args[args.index("--model") + 1] = str(group["tmp"] / "nowhere")
    proc = run_job(args, dbs.env)
    assert proc.returncode == 1
    lines = _error_lines(proc)
    assert [line.split(":")[2] for line in lines] == [" store S1", " store S2"], proc.stderr
    assert [(r[0], r[2], r[4]) for r in _runs(group)] == [("S1", 1, lines[0]), ("S2", 1, lines[1])]


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_group_keeps_what_it_committed(group: dict[str, Any], how: str) -> None:
    dbs = group["dbs"]
    job = subprocess.Popen([sys.executable, "-m", "datasurface.cli", *_args(group, *GOOD)],
                           env={**os.environ, **dbs.env, "DATASURFACE_TEST_PAUSE_AT": "ingest:pairs2:start=30"},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def s2_opened() -> None:  # S1 committed, S2 paused with its batch open
        deadline = time.monotonic() + 60
        while ("S2", 1, "ingesting") not in _batches(group):
            assert time.monotonic() < deadline and job.poll() is None, "S2 never opened its batch"
            time.sleep(0.1)

    if how == "ctrl-c":
        ctrl_c_when(job, s2_opened)
    else:
        try:
            s2_opened()
            job.send_signal(signal.SIGTERM)
            out, err = job.communicate(timeout=30)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
        assert job.returncode == 130, out + err
        assert err.strip().splitlines()[-1] == "datasurface-job: interrupted"
        assert out.strip().splitlines()[-1] == "DATASURFACE_RESULT_CODE=130"
    # S1 stays committed; S2's batch is left open as a killed run leaves it; S3 never started
    assert _batches(group) == [("S1", 1, "committed"), ("S2", 1, "ingesting")]
    assert [(r[0], r[2], r[4]) for r in _runs(group)] == [("S1", 0, None), ("S2", 130, "datasurface-job: interrupted")]
    proc = run_job(_args(group, *GOOD), dbs.env)
    assert proc.returncode == 10, proc.stderr
    assert _batches(group) == [("S1", 1, "committed"), ("S1", 2, "committed"), ("S2", 1, "committed"),
                               ("S3", 1, "committed")]


# The last commit whose job knows no groups (its parsers keep the last of a repeated --store).
BEFORE_GROUPS = "70d80b11bd5cd52d3297857cb331c277abe1eb7f"


def test_an_older_job_refuses_a_group_dags_merge(group: dict[str, Any], repo_root: Path, tmp_path: Path) -> None:
    """A group DAG's arguments (--parallel, then --store repeated) given to the job as it was before groups:
    refused as a usage error (exit 2), nothing merged. Without --parallel it would have merged the last
    store alone and exited 0, which is why the DAGs always pass it."""
    archive = subprocess.run(["git", "-C", str(repo_root), "archive", BEFORE_GROUPS, "src"], capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"this checkout's history lacks {BEFORE_GROUPS[:7]}")
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive.stdout, check=True)
    old_env = {**group["dbs"].env, "PYTHONPATH": str(tmp_path / "src")}
    dag_args = ["merge", "--platform", PLATFORM, "--mode", "live", "--parallel", "1", "--store", "S1",
                "--store", "S2", "--model", str(group["model"]), *group["dbs"].merge_args()]
    refused = run_job(dag_args, old_env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "--parallel" in refused.stderr and _last(refused) == "DATASURFACE_RESULT_CODE=2"
    assert _batches(group) == []
    unsafe = run_job([a for a in dag_args if a not in ("--parallel", "1")], old_env)
    assert unsafe.returncode == 0 and _batches(group) == [("S2", 1, "committed")]
    assert run_job(dag_args, group["dbs"].env).returncode == 0  # today's job merges both
    assert _batches(group) == [("S1", 1, "committed"), ("S2", 1, "committed"), ("S2", 2, "committed")]


def test_ctrl_c_stops_a_parallel_group_at_once(group: dict[str, Any]) -> None:
    """With --parallel 2, Ctrl-C while a stream is in flight in one worker: the run ends at once (it never
    waits for that stream), which is left as a killed or interrupted run leaves it; the others are kept."""
    dbs = group["dbs"]
    job = subprocess.Popen([sys.executable, "-m", "datasurface.cli", *_args(group, *GOOD), "--parallel", "2"],
                           env={**os.environ, **dbs.env, "DATASURFACE_TEST_PAUSE_AT": "ingest:pairs:start=60"},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def others_committed() -> None:  # S1 paused in one worker while the other merged S2 and S3
        deadline = time.monotonic() + 60
        while [b for b in _batches(group) if b[2] == "committed"] != [("S2", 1, "committed"), ("S3", 1, "committed")]:
            assert time.monotonic() < deadline and job.poll() is None, "S2 and S3 were never committed"
            time.sleep(0.1)

    started = time.monotonic()
    ctrl_c_when(job, others_committed)
    assert time.monotonic() - started < 30, "the run waited for the paused stream"
    assert _batches(group) == [("S1", 1, "ingesting"), ("S2", 1, "committed"), ("S3", 1, "committed")]
    rows = sorted((r[0], r[2], r[6]) for r in _runs(group))
    # S1's row: interrupted (130) when the main thread's worker had it, unfinished when another worker had it
    assert rows[1:] == [("S2", 0, True), ("S3", 0, True)]
    assert rows[0] in (("S1", 130, True), ("S1", None, False)), rows
