"""The job CLI as users and the DAGs run it: exit codes, one-line errors, an unchanged merge database
on bad input, concurrency between two real processes, schema evolution, and the other commands."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.engine import (
    DATASETS,
    PLATFORM,
    SCHEMA,
    assert_one_line_error,
    create_source_tables,
    fetch,
    load_snapshot,
    merge_args,
    merge_state,
    model_dict,
    next_snapshot,
    run_job,
    write_model,
)


def test_success_prints_result_code_last(world: dict[str, Any]) -> None:
    dbs = world["dbs"]
    proc = run_job(merge_args(world["model"], PLATFORM, "live", dbs), dbs.env)
    assert proc.returncode == 0
    assert proc.stdout.strip().splitlines()[-1] == "DATASURFACE_RESULT_CODE=0"
    assert "batch 2" in proc.stdout


def _bad_model(world: dict[str, Any], mutate: Any) -> Path:
    doc = yaml.safe_load(yaml.safe_dump(world["doc"]))
    mutate(doc)
    return write_model(world["tmp"] / "bad", doc)


def _run_bad(world: dict[str, Any], model: Path | str, env: dict[str, str] | None = None,
             extra: list[str] | None = None, mode: str = "live",
             store: str = "Store1") -> subprocess.CompletedProcess[str]:
    dbs = world["dbs"]
    args = ["merge", "--model", str(model), "--platform", PLATFORM, "--mode", mode, "--store", store,
            *(extra if extra is not None else dbs.merge_args())]
    return run_job(args, env if env is not None else dbs.env)


def _set_source(**kw: Any) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        doc["stores"][0]["source"].update(kw)
    return mutate


def _set_column_type(name: str, typ: str) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        for col in doc["stores"][0]["datasets"][0]["columns"]:
            if col["name"] == name:
                col["type"] = typ
    return mutate


def _add_column(name: str, typ: str) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        doc["stores"][0]["datasets"][0]["columns"].append({"name": name, "type": typ})
    return mutate


BAD_INPUT = {
    "malformed yaml": (None, ["datasurface.yaml"]),
    "invalid model": (lambda d: d["stores"][0]["datasets"][0]["columns"][2].update(type="varchar2(3)"),
                      ["stores[0].datasets[0].columns[2].type"]),
    "unknown store": ("store", ["unknown store 'Nope'"]),
    "unknown mode": ("mode", ["invalid mode 'sideways'"]),
    "source unreachable": (_set_source(host="/nonexistent/socket/dir"), ["cannot connect"]),
    "wrong source password": ("source-password", ["password authentication failed"]),
    "wrong merge password": ("merge-password", ["password authentication failed"]),
    "merge unreachable": ("merge-host", ["cannot connect"]),
    "missing credential env": ("no-env", ["SOURCE_PASSWORD"]),
    "missing source table": (lambda d: d["stores"][0]["datasets"][0].update(table="nothere"), ["does not exist"]),
    "missing source column": (_add_column("extra", "text"), ["'extra'", "missing from the source"]),
    "type mismatch": (_set_column_type("note", "varchar(10)"), ["'note'", "text", "varchar(10)"]),
    "duplicate keys": ("dupes", ["duplicate primary keys"]),
    "null keys": ("nulls", ["has a NULL in column", "a primary key column"]),
    "git url does not exist": ("git-url", ["file:///nonexistent/repo.git"]),
    "git ref does not exist": ("git-ref", ["no-such-ref"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_fails_cleanly_and_changes_nothing(world: dict[str, Any], case: str) -> None:
    dbs, mrg = world["dbs"], world["mrg"]
    before = merge_state(mrg, SCHEMA)
    action, fragments = BAD_INPUT[case]
    env, extra, mode, store, model = dict(dbs.env), None, "live", "Store1", world["model"]
    if case == "malformed yaml":
        model = world["tmp"] / "bad"
        model.mkdir()
        (model / "datasurface.yaml").write_text("stores: [\n  - name: x\n   bad indent")
    elif callable(action):
        model = _bad_model(world, action)
    elif action == "store":
        store = "Nope"
    elif action == "mode":
        mode = "sideways"
    elif action == "source-password":
        env["SOURCE_PASSWORD"] = "wrong"
    elif action == "merge-password":
        env["MERGE_PASSWORD"] = "wrong"
    elif action == "merge-host":
        extra = [a if a != dbs.host else "/nonexistent/socket/dir" for a in dbs.merge_args()]
    elif action == "no-env":
        del env["SOURCE_PASSWORD"]
    elif action in ("dupes", "nulls"):
        src = world["src"]
        with src.cursor() as cur:
            cur.execute("ALTER TABLE pairs DROP CONSTRAINT pairs_pkey")
            if action == "dupes":
                cur.execute("INSERT INTO pairs SELECT * FROM pairs LIMIT 1")
            else:
                cur.execute("ALTER TABLE pairs ALTER COLUMN code DROP NOT NULL")
                cur.execute("INSERT INTO pairs (region, code) VALUES ('north', NULL)")
        src.commit()
    elif action == "git-url":
        model = "file:///nonexistent/repo.git"
    elif action == "git-ref":
        repo = world["tmp"] / "repo"
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
        (repo / "datasurface.yaml").write_text((world["model"] / "datasurface.yaml").read_text())
        subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m"],
                       check=True)
        model = f"file://{repo}"
    args = None
    if action == "git-ref":
        args = [*dbs.merge_args(), "--model-ref", "no-such-ref"]
    proc = _run_bad(world, model, env, args if args else extra, mode, store)
    assert_one_line_error(proc, *fragments)
    assert "wrong" not in proc.stderr.replace("wrong password", "")  # the password itself is never shown
    assert merge_state(mrg, SCHEMA) == before


def test_traceback_only_with_debug(world: dict[str, Any]) -> None:
    dbs = world["dbs"]
    env = {**dbs.env, "SOURCE_PASSWORD": "wrong"}
    proc = run_job(["--debug", *merge_args(world["model"], PLATFORM, "live", dbs)], env)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr


def test_usage_error_exits_2(world: dict[str, Any]) -> None:
    proc = run_job(["merge", "--platform", PLATFORM], world["dbs"].env)
    assert proc.returncode == 2
    assert proc.stdout.strip().splitlines()[-1] == "DATASURFACE_RESULT_CODE=2"


def test_two_processes_never_both_apply(world: dict[str, Any]) -> None:
    dbs, mrg = world["dbs"], world["mrg"]
    args = [sys.executable, "-m", "datasurface.cli", *merge_args(world["model"], PLATFORM, "live", dbs)]
    import os

    holder = subprocess.Popen(args, env={**os.environ, **dbs.env, "DATASURFACE_TEST_PAUSE_AT": "batch:opened=4"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the holder has opened batch 2
        with mrg.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {SCHEMA}.ds_batches WHERE status <> 'committed'")
            opened = cur.fetchone()[0]
        mrg.rollback()
        if opened:
            break
        time.sleep(0.1)
    started = time.monotonic()
    loser = run_job([*merge_args(world["model"], PLATFORM, "live", dbs), "--lock-wait", "0"], dbs.env)
    assert time.monotonic() - started < 3.5, "the loser must fail at once"
    # names who holds the stream, and claims nothing it cannot know (such as "it will commit")
    assert_one_line_error(loser, "another session holds store Store1", "backend pid ",
                          "application 'datasurface-job merge ", "client local socket", " UTC")
    assert "commit" not in loser.stderr
    # by default a run waits for a live holder (its heartbeat answers) and never ends it
    waiter = subprocess.Popen(args, env={**os.environ, **dbs.env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    _out, err = holder.communicate(timeout=60)
    assert holder.returncode == 0, err
    _wout, werr = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, werr
    with mrg.cursor() as cur:
        cur.execute(f"SELECT batch_id, status FROM {SCHEMA}.ds_batches ORDER BY batch_id")
        assert cur.fetchall() == [(1, "committed"), (2, "committed"), (3, "committed")]
    mrg.rollback()


def test_additive_change_evolves_table_and_view(world: dict[str, Any]) -> None:
    dbs, src, mrg = world["dbs"], world["src"], world["mrg"]
    for mode, platform in (("live", PLATFORM), ("forensic", "YellowF")):
        assert run_job(merge_args(world["model"], platform, mode, dbs), dbs.env).returncode == 0
    with src.cursor() as cur:
        cur.execute("ALTER TABLE pairs ADD COLUMN memo varchar(20)")
        cur.execute("UPDATE pairs SET memo = 'm' WHERE code % 2 = 0")
    src.commit()
    model = _bad_model(world, _add_column("memo", "varchar(20)"))
    for mode, platform, schema in (("live", PLATFORM, SCHEMA), ("forensic", "YellowF", "yellowf")):
        proc = run_job(merge_args(model, platform, mode, dbs), dbs.env)
        assert proc.returncode == 0, proc.stderr
        with mrg.cursor() as cur:
            cur.execute(f"SELECT memo FROM {schema}.store1_pairs_current ORDER BY region, code")
            got = [r[0] for r in cur.fetchall()]
        mrg.rollback()
        with src.cursor() as cur:
            cur.execute("SELECT memo FROM pairs ORDER BY region, code")
            want = [r[0] for r in cur.fetchall()]
        src.rollback()
        assert got == want
    with mrg.cursor() as cur:  # old forensic versions get NULL
        cur.execute("SELECT count(*) FROM yellowf.store1_pairs WHERE ds_batch_out < 2147483647 AND memo IS NOT NULL")
        assert cur.fetchone() == (0,)
    mrg.rollback()


@pytest.mark.parametrize("change,fragments", [
    (_set_column_type("amount", "numeric(12,2)"), ["'amount' changed type", "numeric(10,2)", "numeric(12,2)",
                                                   "reset-store --platform yellow --store Store1"]),
    (lambda d: d["stores"][0]["datasets"][0]["columns"].pop(3), ["'amount' was removed"]),
    (lambda d: d["stores"][0]["datasets"][0].update(primaryKey=["region"]), ["primary key changed"]),
])
def test_non_additive_change_is_refused(world: dict[str, Any], change: Any, fragments: list[str]) -> None:
    dbs, src, mrg = world["dbs"], world["src"], world["mrg"]
    if "numeric(12,2)" in fragments:
        with src.cursor() as cur:
            cur.execute("ALTER TABLE pairs ALTER COLUMN amount TYPE numeric(12,2)")
        src.commit()
    before = merge_state(mrg, SCHEMA)
    proc = run_job(merge_args(_bad_model(world, change), PLATFORM, "live", dbs), dbs.env)
    assert_one_line_error(proc, *fragments)
    assert merge_state(mrg, SCHEMA) == before


def test_open_batch_is_never_merged_under_a_new_model(world: dict[str, Any]) -> None:
    dbs, src, mrg = world["dbs"], world["src"], world["mrg"]
    killed = run_job(merge_args(world["model"], PLATFORM, "live", dbs), dbs.env,
                     {"DATASURFACE_TEST_KILL_AT": "after_ingest"})
    assert killed.returncode == -9
    with src.cursor() as cur:
        cur.execute("ALTER TABLE pairs ADD COLUMN memo text")
    src.commit()
    model = _bad_model(world, _add_column("memo", "text"))
    before = merge_state(mrg, SCHEMA)
    proc = run_job(merge_args(model, PLATFORM, "live", dbs), dbs.env)
    assert_one_line_error(proc, "batch 2", "different model", "reset-batch")
    assert merge_state(mrg, SCHEMA) == before
    reset = run_job(["reset-batch", "--platform", PLATFORM, "--store", "Store1", *dbs.merge_args()], dbs.env)
    assert reset.returncode == 0, reset.stderr
    assert "discarded open batch 2" in reset.stdout
    proc = run_job(merge_args(model, PLATFORM, "live", dbs), dbs.env)
    assert proc.returncode == 0, proc.stderr
    with mrg.cursor() as cur:
        cur.execute(f"SELECT batch_id, status FROM {SCHEMA}.ds_batches ORDER BY 1")
        assert cur.fetchall() == [(1, "committed"), (2, "committed")]
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename LIKE 'ds\\_stage%%'", (SCHEMA,))
        assert cur.fetchone() == (0,)
    mrg.rollback()


def test_reset_batch_refuses_committed_and_accepts_nothing_open(world: dict[str, Any]) -> None:
    dbs, mrg = world["dbs"], world["mrg"]
    before = merge_state(mrg, SCHEMA)
    refused = run_job(["reset-batch", "--platform", PLATFORM, "--store", "Store1", "--batch", "1",
                       *dbs.merge_args()], dbs.env)
    assert_one_line_error(refused, "batch 1", "committed")
    nothing = run_job(["reset-batch", "--platform", PLATFORM, "--store", "Store1", *dbs.merge_args()], dbs.env)
    assert nothing.returncode == 0
    assert "nothing to reset" in nothing.stdout
    assert merge_state(mrg, SCHEMA) == before


def test_status_shows_recent_batches(world: dict[str, Any]) -> None:
    dbs = world["dbs"]
    assert run_job(merge_args(world["model"], PLATFORM, "live", dbs), dbs.env).returncode == 0
    proc = run_job(["status", "--platform", PLATFORM, *dbs.merge_args()], dbs.env)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "Store1" in line]
    # the stream's summary (its last batch 2), then the two recent batches
    assert len(lines) == 3 and lines[0].split()[:2] == ["Store1", "2"]
    assert all("committed" in line for line in lines[1:])


def test_setup_creates_layout_without_ingesting(world: dict[str, Any]) -> None:
    dbs, mrg = world["dbs"], world["mrg"]
    proc = run_job(["setup", "--model", str(world["model"]), "--platform", "Blue", "--mode", "forensic",
                    *dbs.merge_args()], dbs.env)
    assert proc.returncode == 0, proc.stderr
    with mrg.cursor() as cur:
        cur.execute("SELECT count(*) FROM blue.ds_batches")
        assert cur.fetchone() == (0,)
        cur.execute("SELECT count(*) FROM blue.store1_pairs_current")
        assert cur.fetchone() == (0,)
        cur.execute("""SELECT column_name FROM information_schema.columns
                        WHERE table_schema = 'blue' AND table_name = 'store1_pairs' ORDER BY ordinal_position""")
        assert [r[0] for r in cur.fetchall()] == ["region", "code", "note", "amount", "ds_batch_in", "ds_batch_out"]
        cur.execute("""SELECT column_name FROM information_schema.columns
                        WHERE table_schema = 'blue' AND table_name = 'store1_pairs_current'
                        ORDER BY ordinal_position""")
        assert [r[0] for r in cur.fetchall()] == ["region", "code", "note", "amount"]
    mrg.rollback()


def test_check_reports_each_connection(world: dict[str, Any]) -> None:
    dbs = world["dbs"]
    ok = run_job(["check", "--model", str(world["model"]), *dbs.merge_args()], dbs.env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok   source of store Store1" in ok.stdout and "ok   merge" in ok.stdout
    bad = run_job(["check", "--model", str(world["model"]), *dbs.merge_args()], {**dbs.env, "SOURCE_PASSWORD": "x"})
    assert bad.returncode == 1
    assert "FAIL source of store Store1" in bad.stdout


def test_help_names_every_option_and_env_var() -> None:
    proc = run_job(["merge", "--help"], {})
    assert proc.returncode == 0
    for opt, env in (("--model", "DATASURFACE_MODEL"), ("--model-ref", "DATASURFACE_MODEL_REF"),
                     ("--platform", "DATASURFACE_PLATFORM"), ("--mode", "DATASURFACE_MODE"),
                     ("--store", "DATASURFACE_STORE"), ("--merge-host", "DATASURFACE_MERGE_HOST"),
                     ("--merge-port", "DATASURFACE_MERGE_PORT"), ("--merge-database", "DATASURFACE_MERGE_DATABASE"),
                     ("--merge-credential", "DATASURFACE_MERGE_CREDENTIAL")):
        assert opt in proc.stdout and env in proc.stdout, (opt, env)


def test_options_from_env(world: dict[str, Any]) -> None:
    dbs = world["dbs"]
    env = {**dbs.env, "DATASURFACE_MODEL": str(world["model"]), "DATASURFACE_PLATFORM": PLATFORM,
           "DATASURFACE_MODE": "live", "DATASURFACE_STORE": "Store1", "DATASURFACE_MERGE_HOST": dbs.host,
           "DATASURFACE_MERGE_PORT": str(dbs.port), "DATASURFACE_MERGE_DATABASE": dbs.merge,
           "DATASURFACE_MERGE_CREDENTIAL": "merge"}
    proc = run_job(["merge"], env)
    assert proc.returncode == 0, proc.stderr
    assert "batch 2" in proc.stdout


def test_single_dataset_store_has_a_stream_per_dataset(dbs: Any, tmp_path: Path) -> None:
    import random
    from collections import defaultdict

    src, mrg = dbs.connect(dbs.source), dbs.connect(dbs.merge)
    create_source_tables(src)
    rng = random.Random(9)
    load_snapshot(src, next_snapshot(rng, {}, defaultdict(set)))
    model = write_model(tmp_path / "m", model_dict(dbs.host, dbs.port, dbs.source, consistency="single_dataset"))
    for _ in range(2):
        proc = run_job(merge_args(model, "Solo", "forensic", dbs), dbs.env)
        assert proc.returncode == 0, proc.stderr
    with mrg.cursor() as cur:
        cur.execute("SELECT dataset, batch_id FROM solo.ds_batches WHERE status = 'committed' ORDER BY 1, 2")
        assert cur.fetchall() == [("alltypes", 1), ("alltypes", 2), ("pairs", 1), ("pairs", 2)]
    mrg.close()
    src.close()


def test_model_from_git_by_tag_and_commit(world: dict[str, Any]) -> None:
    dbs, tmp = world["dbs"], world["tmp"]
    bare, work = tmp / "model.git", tmp / "work"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True, capture_output=True)
    (work / "models").mkdir()
    (work / "models" / "m.yaml").write_text((world["model"] / "datasurface.yaml").read_text())
    subprocess.run([*git, "-C", str(work), "add", "."], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "model"], check=True)
    subprocess.run([*git, "-C", str(work), "tag", "v1"], check=True)
    subprocess.run([*git, "-C", str(work), "push", "-q", "origin", "main", "v1"], check=True, capture_output=True)
    sha = subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], check=True, capture_output=True,
                         text=True).stdout.strip()
    for ref in ("v1", sha, "main"):
        proc = run_job(["merge", "--model", f"file://{bare}", "--model-ref", ref, "--model-path", "models/m.yaml",
                        "--platform", PLATFORM, "--mode", "live", "--store", "Store1", *dbs.merge_args()], dbs.env)
        assert proc.returncode == 0, proc.stderr


def test_source_and_merge_on_different_postgresql_versions(pg_servers: dict[int, Any], databases_on: Any,
                                                           tmp_path: Path) -> None:
    if len(pg_servers) < 2:
        pytest.skip("needs two PostgreSQL majors")
    import random
    from collections import defaultdict

    versions = sorted(pg_servers)
    for src_v, mrg_v in ((versions[0], versions[-1]), (versions[-1], versions[0])):
        s, m = databases_on(pg_servers[src_v]), databases_on(pg_servers[mrg_v])
        src = s.connect(s.source)
        create_source_tables(src)
        rng = random.Random(src_v)
        snap = next_snapshot(rng, next_snapshot(rng, {}, defaultdict(set)), defaultdict(set))
        load_snapshot(src, snap)
        model = write_model(tmp_path / f"m{src_v}", model_dict(s.host, s.port, s.source))
        env = {"SOURCE_USER": s.env["SOURCE_USER"], "SOURCE_PASSWORD": s.env["SOURCE_PASSWORD"],
               "MERGE_USER": m.env["MERGE_USER"], "MERGE_PASSWORD": m.env["MERGE_PASSWORD"]}
        proc = run_job(merge_args(model, "Xver", "forensic", m), env)
        assert proc.returncode == 0, proc.stderr
        mrg = m.connect(m.merge)
        for name in DATASETS:
            assert fetch(mrg, f"xver.store1_{name}_current", name) == fetch(src, f'"{name}"', name)
        mrg.close()
        src.close()


def test_cli_exits_10_after_finishing_an_interrupted_batch(world: dict[str, Any]) -> None:
    dbs = world["dbs"]
    args = merge_args(world["model"], "YellowHistory", "forensic", dbs)
    assert run_job(args, dbs.env).returncode == 0
    killed = run_job(args, dbs.env, {"DATASURFACE_TEST_KILL_AT": "ledger:before_commit"})
    assert killed.returncode == -9
    recovered = run_job(args, dbs.env)
    assert recovered.returncode == 10, recovered.stderr
    assert recovered.stdout.strip().splitlines()[-1] == "DATASURFACE_RESULT_CODE=10"
    assert "finishing batch 2" in recovered.stderr
    fresh = run_job(args, dbs.env)
    assert fresh.returncode == 0
    assert "batch 3" in fresh.stdout


def test_a_platform_keeps_its_mode(world: dict[str, Any]) -> None:
    dbs, mrg = world["dbs"], world["mrg"]
    before = merge_state(mrg, SCHEMA)
    proc = run_job(merge_args(world["model"], PLATFORM, "forensic", dbs), dbs.env)
    assert_one_line_error(proc, "is a live table", "mode forensic")
    assert merge_state(mrg, SCHEMA) == before


def test_dropping_a_merge_table_rebuilds_it_from_the_next_snapshot(world: dict[str, Any]) -> None:
    """A merge table dropped by hand (with its view) is rebuilt from the next snapshot."""
    dbs, src, mrg = world["dbs"], world["src"], world["mrg"]
    with mrg.cursor() as cur:
        cur.execute(f"DROP VIEW {SCHEMA}.store1_pairs_current")
        cur.execute(f"DROP TABLE {SCHEMA}.store1_pairs")
    mrg.commit()
    proc = run_job(merge_args(world["model"], PLATFORM, "live", dbs), dbs.env)
    assert proc.returncode == 0, proc.stderr
    assert fetch(mrg, f"{SCHEMA}.store1_pairs_current", "pairs") == fetch(src, "pairs", "pairs")
    with mrg.cursor() as cur:
        cur.execute(f"SELECT rows_total, rows_inserted FROM {SCHEMA}.ds_batch_datasets WHERE batch_id = 2")
        total, inserted = cur.fetchone()
    mrg.rollback()
    assert total == inserted > 0
