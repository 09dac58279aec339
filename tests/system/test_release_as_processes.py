"""An installed release run as processes (issue 12, section 2): every workload of the default chart from its
rendered manifests, in Kubernetes' order, on the chart's own PostgreSQL (its StatefulSet's pod, the
postgres image's first start running the rendered init script):

PostgreSQL -> simulator -> migration Job -> api-server, dag-processor, scheduler (probes answer) -> a user
logs in with the generated admin password and triggers each platform's ingestion through the REST API ->
a job killed inside its merge (exit 10 on the retry, the DAG re-triggers itself, a fresh batch) -> the
`helm test` pod -> `helm upgrade` with a platform added and one removed.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest

from tests.system.release import AirflowApi, Release, job_processes

pytestmark = pytest.mark.timeout(900)

# retryDelaySeconds 1: the scheduler does not wait for the api-server, so the first scheduled tries can fail
# with "Connection refused" from the execution API and would otherwise wait the default 300 s to retry.
YELLOW = [{"name": "YellowLive", "mode": "live", "stores": ["Store1"], "schedule": "@daily", "runner": "local",
           "retryDelaySeconds": 1},
          {"name": "YellowForensic", "mode": "forensic", "stores": ["Store1"], "schedule": "@daily",
           "runner": "local", "retryDelaySeconds": 1}]
BLUE = {"name": "BlueLive", "mode": "live", "stores": ["Store1"], "schedule": "@daily", "runner": "local",
        "retryDelaySeconds": 1}
# Store3 of the example model reads Store1's tables as changes (ingestion: cdc), on a platform of its own
CDC = {"name": "CdcLive", "mode": "live", "stores": ["Store3"], "schedule": "@daily", "runner": "local",
       "retryDelaySeconds": 1}
VALUES: dict[str, Any] = {"platforms": [*YELLOW, CDC], "postgresql": {"persistence": {"enabled": False}}}
# Customers added to the source before the kill, so that the merge's COPY into staging runs long enough
# (well over a second here) to be caught in the act.
BULK_CUSTOMERS = 200_000
CUSTOMER_COLUMNS = "id, firstname, lastname, dob, email, phone, primaryaddressid, billingaddressid"


@pytest.fixture(scope="module")
def release() -> Iterator[Release]:
    rel = Release(VALUES).start_bundled()
    try:
        rel.fill_source()
        rel.start_airflow()
        yield rel
    finally:
        rel.stop()


@pytest.fixture(scope="module")
def api(release: Release) -> AirflowApi:
    return AirflowApi(release)  # POST /auth/token with the admin password of the generated Secret


def test_every_probe_answers(release: Release) -> None:
    pods = [*release.pods.values(), *(p for p in release.cluster.pods.values() if p.name.endswith("postgresql-0"))]
    assert len(pods) == 4
    for pod in pods:
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if kind in pod.container().spec:
                assert pod.probe(kind), (pod.name, kind)


@pytest.mark.parametrize("platform", ["YellowLive", "YellowForensic"])
def test_each_platform_ingests_through_the_rest_api(release: Release, api: AirflowApi, platform: str) -> None:
    dag_id = f"{platform.lower()}__Store1_ingestion"
    api.wait_for_dag(dag_id, 120)
    run_id = api.trigger(dag_id)
    assert api.wait_for_run(dag_id, run_id, 300) == "success", release.pods["scheduler"].logs()[-4000:]
    assert api.task_instances(dag_id, run_id)["merge"]["state"] == "success"
    schema = platform.lower()
    with release.connect("merge_db", "merge") as conn, conn.cursor() as cur:
        cur.execute(f'SELECT count(*) FROM "{schema}"."ds_batches" WHERE status = %s', ["committed"])
        assert cur.fetchone()[0] >= 1
        cur.execute(f'SELECT count(*) FROM "{schema}"."store1_customers_current"')
        assert cur.fetchone()[0] == release.source_rows


def add_bulk_customers(release: Release, count: int) -> int:
    """`count` more customers in the source (as its owner, in one statement); the new customers count."""
    with release.connect("customer_db", "source") as conn, conn.cursor() as cur:
        cur.execute(f"""INSERT INTO public.customers ({CUSTOMER_COLUMNS})
                        SELECT 'bulk' || n, 'First' || n, 'Last' || n, date '1950-01-01' + n %% 20000,
                               'c' || n || '@example.invalid', '+1-555-' || n, NULL, NULL
                          FROM generate_series(1, %s) AS n""", [count])
        cur.execute("SELECT count(*) FROM public.customers")
        release.source_rows = int(cur.fetchone()[0])
    return release.source_rows


def table_digest(conn: Any, relation: str) -> tuple[int, str]:
    """Row count and an md5 of every customer row in key order: equal digests, equal contents."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*), md5(coalesce(string_agg(row({CUSTOMER_COLUMNS})::text, '|' ORDER BY id), ''))"
                    f" FROM {relation}")
        count, digest = cur.fetchone()
    return int(count), str(digest)


def merge_runs(release: Release, schema: str, after_run: int = 0) -> list[tuple[int, int | None, int | None, bool]]:
    """The platform's `merge` rows of ds_runs after run `after_run`: (run_id, exit_status, batch_id,
    finished); [] before its first run."""
    with release.connect("merge_db", "merge") as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", [f"{schema}.ds_runs"])
        if cur.fetchone()[0] is None:
            return []
        cur.execute(f"""SELECT run_id, exit_status, batch_id, finished_at IS NOT NULL FROM "{schema}"."ds_runs"
                         WHERE command = 'merge' AND run_id > %s ORDER BY run_id""", [after_run])
        return list(cur.fetchall())


def kill_job_inside(release: Release, platform: str, statement_prefix: str, timeout: float) -> str:
    """Waits until a `datasurface-job merge` session of the merge database runs a statement starting with
    `statement_prefix`, then SIGKILLs the platform's job process in the scheduler container (as an OOM kill
    would: no handler runs) while the statement is still running. Returns the statement."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()  # every statement of the job's sessions seen meanwhile (for the failure message)
    # closing(), not `with conn`: psycopg2's connection block is one transaction even in autocommit, and
    # PostgreSQL keeps a transaction's first look at pg_stat_activity for the rest of it
    pid = None  # the job's process, found before its statement is looked for: the kill then follows at once
    with closing(release.connect("merge_db", "merge")) as conn, conn.cursor() as cur:
        while time.monotonic() < deadline:
            if pid is not None and not os.path.exists(f"/proc/{pid}"):  # it ended: another run's job comes
                pid = None
            if pid is None:
                pids = job_processes(release.pods["scheduler"], platform)
                assert len(pids) <= 1, f"one {platform} job expected in the scheduler container, found {pids}"
                pid = pids[0] if pids else None
            cur.execute("""SELECT query FROM pg_stat_activity
                            WHERE datname = current_database() AND state = 'active'
                              AND application_name LIKE 'datasurface-job merge %'""")
            queries = [q for (q,) in cur.fetchall()]
            seen.update(q[:120] for q in queries)
            statement = next((q for q in queries if q.startswith(statement_prefix)), None)
            if statement is not None and pid is not None:
                os.kill(pid, signal.SIGKILL)
                cur.execute("""SELECT count(*) FROM pg_stat_activity WHERE state = 'active'
                                  AND application_name LIKE 'datasurface-job merge %%' AND query = %s""", [statement])
                assert cur.fetchone()[0] == 1, "the statement had ended before the job was killed"
                return statement
            time.sleep(0.005)  # the COPY of 200,000 rows lasts about 0.2 s on an idle machine
    raise AssertionError(f"no merge session ran {statement_prefix}... within {timeout} s; seen: {sorted(seen)}")


def test_a_job_killed_inside_its_merge_recovers_and_reruns(release: Release, api: AirflowApi) -> None:
    """The job is SIGKILLed while its COPY into the staging table runs in the merge database: that try
    fails (killed by signal 9) with its batch open and its ds_runs row unfinished; Airflow's retry finishes
    that batch and exits 10, so `merge` is skipped and `retrigger` runs; the re-triggered DAG run commits a
    fresh batch, and `_current` equals the source, row for row."""
    schema, dag_id = "yellowlive", "yellowlive__Store1_ingestion"
    api.wait_for_dag(dag_id, 120)
    api.wait_until_idle(dag_id, 300)  # no scheduled run in the way: the next one is ours
    add_bulk_customers(release, BULK_CUSTOMERS)
    before = release.batches(schema)
    last_run = max([0, *(r[0] for r in merge_runs(release, schema))])
    runs_before = {r["dag_run_id"] for r in api.runs(dag_id)}
    run_id = api.trigger(dag_id)

    statement = kill_job_inside(release, "YellowLive", f'COPY "{schema}".', 120)
    assert "FROM STDIN" in statement, statement
    opened = release.batches(schema)
    assert len(opened) == len(before) + 1 and opened[-1][1] != "committed", opened
    killed = opened[-1][0]

    assert api.wait_for_run(dag_id, run_id, 300) == "success", release.pods["scheduler"].logs()[-4000:]
    tis = api.task_instances(dag_id, run_id)
    # try 1 killed, try 2 (the retry) exited 10: merge skipped, retrigger ran, done skipped
    assert (tis["merge"]["state"], tis["merge"]["try_number"]) == ("skipped", 2), tis["merge"]
    assert (tis["retrigger"]["state"], tis["done"]["state"]) == ("success", "skipped"), tis

    after = release.wait_for_recovery(schema, killed, 300)
    assert after[0] == (killed, "committed"), after  # the killed batch, finished by the retry
    assert len(after) == 2 and after[1][1] == "committed", after  # the re-triggered run's fresh batch
    retriggered = [r for r in api.runs(dag_id) if r["dag_run_id"] not in runs_before | {run_id}]
    assert len(retriggered) == 1, retriggered
    assert api.wait_for_run(dag_id, retriggered[0]["dag_run_id"], 300) == "success"
    assert api.task_instances(dag_id, retriggered[0]["dag_run_id"])["merge"]["state"] == "success"

    # the history: the killed run never finished; the retry recovered the batch (10); then a fresh one (0)
    runs = [r[1:] for r in merge_runs(release, schema, last_run)]
    assert runs == [(None, None, False), (10, killed, True), (0, after[1][0], True)], runs
    with release.connect("merge_db", "merge") as mrg, release.connect("customer_db", "source") as src:
        assert table_digest(mrg, f'"{schema}"."store1_customers_current"') == table_digest(src, "public.customers")


def test_a_cdc_job_killed_inside_its_changes_recovers_and_reruns(release: Release, api: AirflowApi) -> None:
    """Store3 reads its changes from a replication slot on the chart's own PostgreSQL: its first batch is a
    snapshot; the job of the next batch is SIGKILLed while the changes it read are copied into the merge
    database; the retry finishes that batch (exit 10), the re-triggered run takes a fresh one, and
    `_current` equals the source, row for row."""
    schema, dag_id = "cdclive", "cdclive__Store3_ingestion"
    api.wait_for_dag(dag_id, 120)
    api.wait_until_idle(dag_id, 300)
    if not release.batches(schema):
        first = api.trigger(dag_id)
        assert api.wait_for_run(dag_id, first, 300) == "success", release.pods["scheduler"].logs()[-4000:]
    with release.connect("customer_db", "source") as conn, conn.cursor() as cur:  # 100,000 changes to read
        cur.execute(f"""INSERT INTO public.customers ({CUSTOMER_COLUMNS})
                        SELECT 'cdc' || n, 'First' || n, 'Last' || n, date '1960-01-01' + n % 20000,
                               'd' || n || '@example.invalid', '+1-556-' || n, NULL, NULL
                          FROM generate_series(1, 100000) AS n""")
    before = release.batches(schema)
    runs_before = {r["dag_run_id"] for r in api.runs(dag_id)}
    run_id = api.trigger(dag_id)
    kill_job_inside(release, "CdcLive", f'COPY "{schema}"."ds_changes_', 180)
    opened = release.batches(schema)
    assert len(opened) == len(before) + 1 and opened[-1][1] != "committed", opened
    killed = opened[-1][0]
    assert api.wait_for_run(dag_id, run_id, 300) == "success", release.pods["scheduler"].logs()[-4000:]
    assert api.task_instances(dag_id, run_id)["merge"]["state"] == "skipped"  # the retry exited 10
    after = release.wait_for_recovery(schema, killed, 300)
    assert len(after) == 2 and all(status == "committed" for _, status in after), after
    retriggered = [r for r in api.runs(dag_id) if r["dag_run_id"] not in runs_before | {run_id}]
    assert len(retriggered) == 1 and api.wait_for_run(dag_id, retriggered[0]["dag_run_id"], 300) == "success"
    with release.connect("merge_db", "merge") as mrg, release.connect("customer_db", "source") as src:
        assert table_digest(mrg, f'"{schema}"."store3_customers_current"') == table_digest(src, "public.customers")
        with mrg.cursor() as cur:
            cur.execute(f'SELECT count(*) FROM "{schema}"."ds_batches" WHERE source_lsn IS NOT NULL '
                        "AND batch_id >= %s", [killed])
            assert cur.fetchone()[0] == 2  # both read from the slot


def test_the_helm_test_pod_passes(release: Release) -> None:
    pod = release.cluster.start_pod("Pod", f"{release.fullname}-check")
    codes = pod.wait(120)
    assert codes == {"check": 0}, pod.logs()[-3000:]


def test_upgrade_adds_and_removes_platforms(release: Release, api: AirflowApi) -> None:
    """YellowForensic removed, BlueLive added: the DAG pods roll (checksum/dags), BlueLive's DAGs appear and
    run, YellowForensic's go stale (Airflow keeps their history)."""
    upgraded = release.render({**VALUES, "platforms": [YELLOW[0], BLUE]})
    names = [f"{release.fullname}-airflow-{c}" for c in ("dag-processor", "scheduler")]
    for name in names:
        before = release.manifests.get("Deployment", name)["spec"]["template"]["metadata"]["annotations"]
        after = upgraded.get("Deployment", name)["spec"]["template"]["metadata"]["annotations"]
        assert before["checksum/dags"] != after["checksum/dags"], name
    release.cluster.stop_pods([release.pods["dag-processor"], release.pods["scheduler"]])
    release.cluster.manifests = release.manifests = upgraded
    pods = release.cluster.start_pods([("Deployment", name) for name in names])
    for pod in pods:
        pod.wait_ready(240)
    release.pods.update(zip(("dag-processor", "scheduler"), pods, strict=True))
    api.wait_for_dag("bluelive__Store1_ingestion", 180)
    run_id = api.trigger("bluelive__Store1_ingestion")
    assert api.wait_for_run("bluelive__Store1_ingestion", run_id, 300) == "success"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if api.call("GET", "/api/v2/dags/yellowforensic__Store1_ingestion").get("is_stale"):
            break
        time.sleep(2)
    assert api.call("GET", "/api/v2/dags/yellowforensic__Store1_ingestion")["is_stale"] is True
    assert api.call("GET", "/api/v2/dags/yellowlive__Store1_ingestion")["is_stale"] is False
