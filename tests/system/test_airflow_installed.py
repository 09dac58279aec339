"""The chart's Airflow as installed (issue 11): rendered by helm, its pods run as processes by kubelet.py on a
real PostgreSQL, in Kubernetes' order: the migration Job, then api-server, dag-processor and scheduler
(init containers first, until their probes pass).

- item 1: with `runner: local` the scheduler (the LocalExecutor worker) runs the job itself: the DAGs,
  triggered through the REST API, commit batches from the chart alone (secretEnv, model at /model);
- item 3: no security warning in any component's output, the generated secrets being strong enough;
- item 5: an upgrade's SIGTERM stops the scheduler within seconds also while a job task runs; the job is
  stopped with it and the next scheduler finishes the batch (exit 10, the DAG re-triggers itself).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.system.release import AirflowApi, Release, job_processes

pytestmark = pytest.mark.timeout(900)

PLATFORMS = [
    {"name": "YellowLive", "mode": "live", "stores": ["Store1"], "schedule": "@daily", "runner": "local",
     "retryDelaySeconds": 1},
    {"name": "YellowForensic", "mode": "forensic", "stores": ["Store1"], "schedule": "@daily", "runner": "local",
     "retryDelaySeconds": 1},
]
VALUES: dict[str, Any] = {"platforms": PLATFORMS, "postgresql": {"persistence": {"enabled": False}}}
# What a security warning looks like in Airflow's, PyJWT's, cryptography's and the job's output.
SECURITY_WARNING = re.compile(r"InsecureKeyLengthWarning|HMAC key|minimum recommended length|SecurityWarning|"
                              r"insecure|[Ff]ernet|secret[_ ]key|jwt[_ ]secret|plaintext", re.IGNORECASE)
# Known and documented (README "Airflow UI"): the chart's single-admin SimpleAuthManager warns on any
# non-SQLite deployment that it is meant for development; replacing it (FAB) is outside this chart's scope.
KNOWN_WARNINGS = [re.compile(r"SimpleAuthManager is active but the deployment shape looks like production")]
STOP_SECONDS = 15  # an upgrade's SIGTERM must stop the scheduler well within this


@pytest.fixture(scope="module")
def release() -> Iterator[Release]:
    rel = Release(VALUES).start()
    try:
        rel.fill_source()  # before Airflow: the database comes first
        rel.start_airflow()
        yield rel
    finally:
        rel.stop()


@pytest.fixture(scope="module")
def api(release: Release) -> AirflowApi:
    return AirflowApi(release)


def run_dag(api: AirflowApi, dag_id: str, timeout: float = 240) -> str:
    api.wait_for_dag(dag_id, 120)
    run_id = api.trigger(dag_id)
    state = api.wait_for_run(dag_id, run_id, timeout)
    return state


def test_the_scheduler_gets_the_jobs_secret_env_and_the_model(release: Release) -> None:
    scheduler = release.pods["scheduler"].container()
    for name in ("MERGE_USER", "MERGE_PASSWORD", "SOURCE_USER", "SOURCE_PASSWORD"):
        assert scheduler.env[name], name
    listing = release.pods["scheduler"].exec(["ls", "/model"])
    assert listing.stdout.split() == ["datasurface.yaml"], listing


@pytest.mark.parametrize(("platform", "mode"), [("YellowLive", "live"), ("YellowForensic", "forensic")])
def test_local_runner_ingests_from_the_chart_alone(release: Release, api: AirflowApi, platform: str,
                                                   mode: str) -> None:
    dag_id = f"{platform.lower()}__Store1_ingestion"
    state = run_dag(api, dag_id)
    assert state == "success", release.pods["scheduler"].logs()[-5000:]
    assert any(status == "committed" for _, status in release.batches(platform.lower()))
    assert release.current_rows(platform.lower()) == release.source_rows


def test_upgrade_stops_the_scheduler_fast_while_a_job_runs(release: Release, api: AirflowApi) -> None:
    """The job holds its batch open (a test fault point) when the upgrade's SIGTERM arrives: the scheduler
    and the job are gone within seconds, the batch stays open; the new scheduler's retry finishes it
    (exit 10) and the DAG re-triggers itself for a fresh batch."""
    schema, dag_id = "yellowlive", "yellowlive__Store1_ingestion"
    before = release.batches(schema)
    holding = release.render({**VALUES, "airflow": {"extraEnv": [
        {"name": "DATASURFACE_TEST_PAUSE_AT", "value": "batch:opened=600"}]}})
    name = f"{release.fullname}-airflow-scheduler"
    took = release.pods["scheduler"].stop()  # (scheduled runs may be running)
    assert took < STOP_SECONDS, f"scheduler took {took:.1f} s to stop"
    release.cluster.manifests = holding
    pod = release.cluster.start_pod("Deployment", name)
    pod.wait_ready(240)
    run_id = api.trigger(dag_id)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(release.batches(schema)) == len(before):
        time.sleep(0.5)
    opened = release.batches(schema)
    assert len(opened) == len(before) + 1 and opened[-1][1] != "committed", pod.logs()[-4000:]
    assert job_processes(pod), "the job runs inside the scheduler container"

    took = pod.stop()  # the upgrade: the old pod gets SIGTERM
    assert took < STOP_SECONDS, f"scheduler took {took:.1f} s to stop:\n{pod.logs()[-4000:]}"
    assert release.batches(schema)[-1] == opened[-1], "the job was stopped with its batch still open"

    release.cluster.manifests = release.render(VALUES)  # the upgraded release
    release.pods["scheduler"] = release.cluster.start_pod("Deployment", name)
    release.pods["scheduler"].wait_ready(240)
    assert api.wait_for_run(dag_id, run_id, 300) == "success"
    after = release.wait_for_recovery(schema, opened[-1][0], 300)
    assert after[0] == (opened[-1][0], "committed"), after  # the interrupted batch, finished
    assert len(after) == 2 and after[1][1] == "committed", after  # then a fresh one


def test_no_security_warning_in_any_components_output(release: Release) -> None:
    """After the runs above (the api-server and scheduler sign and check task tokens with the JWT secret):
    no component, init container or the migration Job printed a security warning."""
    logs = sorted((release.cluster.workdir / "pods").glob("*/*.log"))
    assert {p.parent.name.rsplit("-", 1)[0] for p in logs} >= {
        *(f"{release.fullname}-airflow-{c}" for c in ("api-server", "dag-processor", "scheduler")),
        release.migrate_job}
    found = []
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if SECURITY_WARNING.search(line) and not any(k.search(line) for k in KNOWN_WARNINGS):
                found.append(f"{path.parent.name}/{path.name}: {line[:300]}")
    assert not found, "\n".join(found[:20])
