"""Airflow at scale, as the chart renders it and the real Airflow loads it: `deferrable` makes the job pod
tasks defer to the triggerer once their pod is created (the worker slot is freed while the pod runs), and
`airflow.pool.name` puts every job task in that pool."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from dag_support import dag_bag, example_settings
from test_dag_bag import platform_configmaps, write_dags_folder

from tests.support import helm

pytestmark = pytest.mark.timeout(300, method="thread")

AT_SCALE = {"platformDefaults": {"deferrable": True},
            "airflow": {"triggerer": {"enabled": True}, "pool": {"name": "datasurface", "slots": 8}}}


class _TaskInstance:
    """What execute() reads of its task instance before deferring: the start date, the XCom pushes."""

    def __init__(self) -> None:
        self.start_date = datetime.now(UTC)
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def _rendered_bag(tmp_path: Path, values: dict[str, Any]) -> Any:
    return dag_bag(write_dags_folder(platform_configmaps(helm.render_chart(values)), tmp_path / "dags"))


def test_deferrable_pod_tasks_defer_to_the_triggerer_once_the_pod_runs(tmp_path: Path, kubeconfig: Path) -> None:
    """The provider's own execute(): it creates the pod (here a stand-in for the API call) and then raises
    TaskDeferred with a KubernetesPodTrigger for that pod, to resume in trigger_reentry (which reads the exit
    code: 10 still skips merge). Its timeout covers the task's execution timeout."""
    from airflow.providers.cncf.kubernetes.triggers.pod import KubernetesPodTrigger
    from airflow.sdk.exceptions import TaskDeferred
    from kubernetes.client import models as k8s

    bag = _rendered_bag(tmp_path, AT_SCALE)
    task = bag.dags["yellowlive__Store1_ingestion"].get_task("merge")
    assert task.deferrable is True and task.skip_on_exit_code == [10]
    created: list[Any] = []

    def create(pod_request_obj: Any, context: Any) -> Any:
        pod = pod_request_obj
        pod.status = k8s.V1PodStatus(phase="Running", container_statuses=[k8s.V1ContainerStatus(
            name="base", image="job", image_id="job", ready=True, restart_count=0,
            state=k8s.V1ContainerState(running=k8s.V1ContainerStateRunning()))])
        created.append(pod)
        return pod

    task.get_or_create_pod = create
    task.pod_request_obj = task.build_pod_request_obj()  # as test_dag_bag builds it: no run's labels
    ti = _TaskInstance()
    with pytest.raises(TaskDeferred) as deferred:
        task.execute({"ti": ti})
    [pod] = created
    trigger = deferred.value.trigger
    assert isinstance(trigger, KubernetesPodTrigger)
    assert deferred.value.method_name == "trigger_reentry"
    assert (trigger.pod_name, trigger.pod_namespace) == (pod.metadata.name, "default")
    assert pod.metadata.name.startswith("ds-yellowlive-store1-")
    assert deferred.value.timeout >= task.execution_timeout  # the pod may run as long as the task may
    assert ti.pushed["pod_name"] == pod.metadata.name
    # what the triggerer gets: the trigger, serialised
    classpath, kwargs = trigger.serialize()
    assert classpath.endswith("KubernetesPodTrigger") and kwargs["pod_name"] == pod.metadata.name


def test_pool_and_deferrable_reach_every_job_task(tmp_path: Path) -> None:
    bag = _rendered_bag(tmp_path, {**AT_SCALE, "platforms": [
        {"name": "Big", "mode": "live", "stores": [f"S{i}" for i in range(5)], "schedule": "@hourly",
         "storesPerTask": 2}]})
    jobs = [dag.get_task(t) for dag in bag.dags.values() for t in ("merge", "setup") if dag.has_task(t)]
    assert len(jobs) == 4  # three groups and setup
    assert {(t.pool, t.deferrable) for t in jobs} == {("datasurface", True)}
    # the other tasks stay out of the job pool: they take no worker slot for long
    others = [t for dag in bag.dags.values() for t in dag.tasks if t.task_id in ("retrigger", "done")]
    assert others and {t.pool for t in others} == {"default_pool"}


def test_by_default_tasks_hold_their_slot_in_the_default_pool(tmp_path: Path) -> None:
    bag = _rendered_bag(tmp_path, {})
    task = bag.dags["yellowlive__Store1_ingestion"].get_task("merge")
    assert (task.deferrable, task.pool) == (False, "default_pool")
    settings = json.loads(platform_configmaps(helm.render_chart())["yellowlive"]["data"]["platform.json"])
    assert "deferrable" not in settings and "pool" not in settings  # platform.json as before


def test_deferrable_needs_the_kubernetes_runner(dags_module: Any) -> None:
    with pytest.raises(dags_module.PlatformSettingsError, match="deferrable: only the kubernetes runner"):
        dags_module.parse_settings(example_settings(runner="local", deferrable=True))
    with pytest.raises(dags_module.PlatformSettingsError, match=r"pool: .* not a valid name"):
        dags_module.parse_settings(example_settings(pool="no spaces"))
    s = dags_module.parse_settings(example_settings(deferrable=True, pool="p1"))
    assert (s.deferrable, s.pool) == (True, "p1")
