"""The DAGs run by a real Airflow 3 (`dag.test()`, local runner) against a real PostgreSQL and model folder.

Proves the result handling end to end: exit 0 commits a batch and does not retrigger; an interrupted batch
makes the job exit 10, the merge task is skipped and the DAG triggers itself; the next run commits a fresh
batch; a broken model fails the task (after its retries) and sends exactly one Slack notice; a hung job is
stopped by the task's execution_timeout and the next run finishes its batch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from dag_support import LOG_BASE_URL, dag_bag, write_platform
from psycopg2 import sql

# Not pytest-timeout's default SIGALRM method: Airflow's execution_timeout takes over SIGALRM in the task.
pytestmark = pytest.mark.timeout(600, method="thread")

SLACK_ENV = "DS_TEST_SLACK_WEBHOOK"

MODEL = """\
apiVersion: datasurface/v1
kind: Model
stores:
  - name: Store1
    source:
      host: {host}
      port: {port}
      database: {database}
      credential: source
    datasets:
      - name: customers
        primaryKey: [id]
        columns:
          - {{name: id, type: "varchar(20)", nullable: false}}
          - {{name: firstname, type: "varchar(100)"}}
"""


def write_model(folder: Path, dbs: Any, column_type: str = "varchar(100)") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = MODEL.format(host=dbs.host, port=dbs.port, database=dbs.source)
    (folder / "datasurface.yaml").write_text(text.replace('type: "varchar(100)"', f'type: "{column_type}"'))
    return folder


def local_platform(name: str, dbs: Any, model: Path, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "version": 1, "platform": name, "mode": "live", "stores": ["Store1"], "schedule": "@hourly",
        "runner": "local", "retries": 0, "retryDelaySeconds": 0,
        "model": {"repo": str(model), "ref": None, "path": "datasurface.yaml"},
        "merge": {"host": dbs.host, "port": dbs.port, "database": dbs.merge, "credential": "merge"},
        "secretEnv": [{"name": n, "secret": "db", "key": n.lower().replace("_", "-")}
                      for n in ("MERGE_USER", "MERGE_PASSWORD", "SOURCE_USER", "SOURCE_PASSWORD")],
        "slackWebhookEnv": SLACK_ENV,
    }
    settings.update(overrides)
    return settings


@pytest.fixture
def source(dbs: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The source database with a customers table of three rows; the worker's env holds the credentials."""
    for key, value in dbs.env.items():
        monkeypatch.setenv(key, value)
    with dbs.connect(dbs.source) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE customers (id varchar(20) PRIMARY KEY, firstname varchar(100))")
        cur.execute("INSERT INTO customers VALUES ('c1', 'Ann'), ('c2', 'Bob'), ('c3', NULL)")
    conn.close()
    return dbs


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """A local HTTP endpoint standing in for the Slack webhook; yields the JSON bodies it received."""
    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(SLACK_ENV, f"http://127.0.0.1:{server.server_address[1]}/hook")
    yield received
    server.shutdown()
    server.server_close()


def load_dags(folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    bag = dag_bag(write_platform(folder, settings))
    assert bag.import_errors == {}
    return bag.dags


def ti_states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def dag_runs(dag_id: str) -> list[Any]:
    from airflow.models.dagrun import DagRun

    return list(DagRun.find(dag_id=dag_id))


def batches(dbs: Any, schema: str) -> list[tuple[Any, ...]]:
    with dbs.connect(dbs.merge) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(format('%%I.ds_batches', %s::text))", (schema,))
        if cur.fetchone()[0] is None:
            return []
        cur.execute(sql.SQL("SELECT batch_id, status, rows_total, rows_inserted FROM {} WHERE store = 'Store1' "
                            "ORDER BY batch_id").format(sql.Identifier(schema, "ds_batches")))
        rows = cur.fetchall()
    conn.close()
    return rows


def run_job_killed_after_ingest(settings: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`datasurface-job merge` as the DAG runs it, SIGKILLed by the job itself after staging the snapshot."""
    merge = settings["merge"]
    env = {**os.environ, "DATASURFACE_TEST_KILL_AT": "after_ingest", "DATASURFACE_MODEL": settings["model"]["repo"],
           "DATASURFACE_MERGE_HOST": merge["host"], "DATASURFACE_MERGE_PORT": str(merge["port"]),
           "DATASURFACE_MERGE_DATABASE": merge["database"], "DATASURFACE_MERGE_CREDENTIAL": merge["credential"]}
    return subprocess.run(["datasurface-job", "merge", "--platform", settings["platform"], "--mode", "live",
                           "--store", "Store1"], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_exit_0_commits_exit_10_retriggers_then_a_fresh_batch(
        airflow_db: Path, source: Any, slack: list[dict[str, Any]], tmp_path: Path,
        dags_subfolder: Callable[[str], Path]) -> None:
    settings = local_platform("RunLive", source, write_model(tmp_path / "model", source))
    dags = load_dags(dags_subfolder("runlive"), settings)
    ingestion = dags["runlive__Store1_ingestion"]

    # The infrastructure DAG sets up the schema without ingesting.
    infra_run = dags["runlive_infrastructure"].test()
    assert (str(infra_run.state), ti_states(infra_run)) == ("success", {"setup": "success"})
    assert batches(source, "runlive") == []

    # Exit 0: batch 1 committed; merge and done succeed; retrigger is skipped and triggers nothing.
    first = ingestion.test()
    assert str(first.state) == "success"
    assert ti_states(first) == {"merge": "success", "done": "success", "retrigger": "skipped"}
    assert batches(source, "runlive") == [(1, "committed", 3, 3)]
    assert len(dag_runs(ingestion.dag_id)) == 1

    # A run killed after staging its snapshot leaves batch 2 open ...
    killed = run_job_killed_after_ingest(settings)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [(b, s) for b, s, *_ in batches(source, "runlive") if s == "committed"] == [(1, "committed")]
    with source.connect(source.source) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO customers VALUES ('c4', 'Dee')")  # after the snapshot: not in batch 2
    conn.close()

    # ... so the next run finishes it and exits 10: merge skipped, the DAG triggers itself, run succeeds.
    second = ingestion.test()
    assert str(second.state) == "success"
    assert ti_states(second) == {"merge": "skipped", "done": "skipped", "retrigger": "success"}
    assert batches(source, "runlive") == [(1, "committed", 3, 3), (2, "committed", 3, 0)]
    runs = dag_runs(ingestion.dag_id)
    triggered = [r for r in runs if r.run_id not in (first.run_id, second.run_id)]
    assert len(runs) == 3 and len(triggered) == 1
    assert str(triggered[0].triggered_by) in ("operator", "DagRunTriggeredByType.OPERATOR")
    assert str(triggered[0].state) == "queued"  # max_active_runs=1: the scheduler starts it next

    # The triggered run commits a fresh batch that sees the row added after batch 2's snapshot.
    third = ingestion.test()
    assert ti_states(third) == {"merge": "success", "done": "success", "retrigger": "skipped"}
    assert batches(source, "runlive")[-1] == (3, "committed", 4, 1)
    assert slack == []  # no failure, no notice


def test_broken_model_fails_the_task_after_retries_with_one_slack_notice(
        airflow_db: Path, source: Any, slack: list[dict[str, Any]], tmp_path: Path,
        dags_subfolder: Callable[[str], Path]) -> None:
    model = write_model(tmp_path / "model", source, column_type="varchar(100) primary")  # not a type
    settings = local_platform("RunBroken", source, model, retries=1)
    dags = load_dags(dags_subfolder("runbroken"), settings)
    ingestion = dags["runbroken__Store1_ingestion"]

    run = ingestion.test()
    assert str(run.state) == "failed"  # the `done` leaf is upstream_failed
    assert ti_states(run) == {"merge": "failed", "done": "upstream_failed", "retrigger": "skipped"}
    merge_ti = next(ti for ti in run.get_task_instances() if ti.task_id == "merge")
    assert merge_ti.try_number == 2  # retries: 1
    assert batches(source, "runbroken") == []
    assert len(dag_runs(ingestion.dag_id)) == 1  # a failure does not retrigger

    assert len(slack) == 1  # on the final failure only, not on the retry
    text = slack[0]["text"]
    assert "platform RunBroken" in text and "store Store1" in text
    assert f"{LOG_BASE_URL}/dags/runbroken__Store1_ingestion/runs/" in text and "/tasks/merge" in text
    assert "exited with status 1: error:" in text and "columns[1].type: unknown type" in text

    infra = dags["runbroken_infrastructure"].test()
    assert (str(infra.state), ti_states(infra)) == ("failed", {"setup": "failed"})
    assert len(slack) == 2 and "infrastructure" in slack[1]["text"]


def test_local_runner_without_the_credentials_fails_clearly(
        airflow_db: Path, source: Any, slack: list[dict[str, Any]], tmp_path: Path,
        dags_subfolder: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = local_platform("RunNoCreds", source, write_model(tmp_path / "model", source))
    monkeypatch.delenv("MERGE_PASSWORD")
    dags = load_dags(dags_subfolder("runnocreds"), settings)
    run = dags["runnocreds__Store1_ingestion"].test()
    assert ti_states(run)["merge"] == "failed"
    assert len(slack) == 1 and "MERGE_PASSWORD (secretEnv) not set on the worker" in slack[0]["text"]
    assert batches(source, "runnocreds") == []


def job_processes(platform: str) -> list[int]:
    """Pids of running `datasurface-job ... --platform <platform>` processes (zombies excluded)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and platform.encode() in argv and any(a.endswith(b"datasurface-job") for a in argv):
            pids.append(int(proc.name))
    return pids


def test_a_hung_job_is_stopped_by_the_execution_timeout_and_the_next_run_finishes_its_batch(
        airflow_db: Path, source: Any, slack: list[dict[str, Any]], tmp_path: Path,
        dags_subfolder: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A real dag.test() whose job sleeps (DATASURFACE_TEST_PAUSE_AT) right after opening its batch.

    platform.json can say no less than 60 s; to keep the suite fast the DAGs are built by the module's own
    build_dags from its parsed settings with only the timeout lowered (dataclasses.replace): the same
    operators, the same Airflow task runner applying execution_timeout and calling on_kill."""
    settings = local_platform("RunTimeout", source, write_model(tmp_path / "model", source),
                              executionTimeoutSeconds=60)
    folder = dags_subfolder("runtimeout")
    parsed = load_dags(folder, settings)["runtimeout__Store1_ingestion"]
    assert parsed.get_task("merge").execution_timeout.total_seconds() == 60
    spec = importlib.util.spec_from_file_location("datasurface_dags_runtimeout", folder / "datasurface_dags.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        quick = dataclasses.replace(module.load_settings(folder / "platform.json"), execution_timeout_seconds=10)
        ingestion = module.build_dags(quick)["runtimeout__Store1_ingestion"]
    finally:
        del sys.modules[spec.name]

    monkeypatch.setenv("DATASURFACE_TEST_PAUSE_AT", "batch:opened=120")
    started = time.monotonic()
    hung = ingestion.test()
    elapsed = time.monotonic() - started
    assert elapsed < 60  # stopped at the timeout (10 s), not after the job's 120 s pause
    assert str(hung.state) == "failed"
    assert ti_states(hung) == {"merge": "failed", "done": "upstream_failed", "retrigger": "skipped"}
    assert job_processes("RunTimeout") == []  # on timeout the job was terminated, not left running
    assert [status for _, status, *_ in batches(source, "runtimeout")] != []  # it had opened its batch ...
    assert [status for _, status, *_ in batches(source, "runtimeout")][-1] != "committed"  # ... and hung there
    assert len(slack) == 1 and "Timeout" in slack[0]["text"]

    monkeypatch.delenv("DATASURFACE_TEST_PAUSE_AT")
    finished = parsed.test()  # the chart's DAG (60 s): finishes the open batch, exits 10, retriggers
    assert ti_states(finished) == {"merge": "skipped", "done": "skipped", "retrigger": "success"}
    assert [status for _, status, *_ in batches(source, "runtimeout")] == ["committed"]
