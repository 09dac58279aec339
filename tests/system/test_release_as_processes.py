"""An installed release run as processes (issue 12, section 2): every workload of the default chart from its
rendered manifests, in Kubernetes' order, on the chart's own PostgreSQL (its StatefulSet's pod, the
postgres image's first start running the rendered init script):

PostgreSQL -> simulator -> migration Job -> api-server, dag-processor, scheduler (probes answer) -> a user
logs in with the generated admin password and triggers each platform's ingestion through the REST API ->
the `helm test` pod -> `helm upgrade` with a platform added and one removed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from release import AirflowApi, Release

pytestmark = pytest.mark.timeout(900)

# retryDelaySeconds 1: the scheduler does not wait for the api-server, so the first scheduled tries can fail
# with "Connection refused" from the execution API and would otherwise wait the default 300 s to retry.
YELLOW = [{"name": "YellowLive", "mode": "live", "stores": ["Store1"], "schedule": "@daily", "runner": "local",
           "retryDelaySeconds": 1},
          {"name": "YellowForensic", "mode": "forensic", "stores": ["Store1"], "schedule": "@daily",
           "runner": "local", "retryDelaySeconds": 1}]
BLUE = {"name": "BlueLive", "mode": "live", "stores": ["Store1"], "schedule": "@daily", "runner": "local",
        "retryDelaySeconds": 1}
VALUES: dict[str, Any] = {"platforms": YELLOW, "postgresql": {"persistence": {"enabled": False}}}


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
