"""The chart's DAG ConfigMaps, loaded by a real Airflow 3 DagBag: ids, schedules, task graph, the job pods.

Each platform ConfigMap rendered by the real `helm template` is written to `<dags>/<platform lower>/`, as
the chart mounts it, and parsed as the dag-processor would.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from dag_support import DAG_MODULE, dag_bag, example_settings, write_platform

from tests.support import helm

INGESTION_GRAPH = {"merge": ["done", "retrigger"], "retrigger": [], "done": []}


def platform_configmaps(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rendered platform ConfigMaps by their datasurface.io/platform label."""
    return {d["metadata"]["labels"]["datasurface.io/platform"]: d for d in docs
            if d.get("kind") == "ConfigMap" and "datasurface.io/platform" in d["metadata"].get("labels", {})}


def write_dags_folder(configmaps: dict[str, dict[str, Any]], root: Path) -> Path:
    for platform, cm in configmaps.items():
        folder = root / platform
        folder.mkdir(parents=True)
        for name, text in cm["data"].items():
            (folder / name).write_text(text)
    return root


def graph(dag: Any) -> dict[str, list[str]]:
    return {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}


def env_of(task: Any) -> dict[str, Any]:
    """The task pod's env: name -> plain value, or ("secret", name, key, optional) for a secretKeyRef."""
    out: dict[str, Any] = {}
    for e in task.env_vars:
        ref = e.value_from.secret_key_ref if e.value_from else None
        out[e.name] = ("secret", ref.name, ref.key, bool(ref.optional)) if ref else e.value
    return out


@pytest.fixture(scope="module")
def default_render() -> list[dict[str, Any]]:
    return helm.render_chart()


def test_default_values_render_one_configmap_per_platform_with_the_module_verbatim(
        default_render: list[dict[str, Any]]) -> None:
    cms = platform_configmaps(default_render)
    assert sorted(cms) == ["yellowforensic", "yellowlive"]
    for platform, cm in cms.items():
        assert cm["metadata"]["name"] == f"mvp-datasurface-dags-{platform}"
        assert sorted(cm["data"]) == ["datasurface_dags.py", "platform.json"]
        assert cm["data"]["datasurface_dags.py"] == DAG_MODULE.read_text()
        assert json.loads(cm["data"]["platform.json"])["platform"].lower() == platform


def test_default_chart_dags_load_in_airflow(default_render: list[dict[str, Any]], tmp_path: Path) -> None:
    configmaps = platform_configmaps(default_render)
    bag = dag_bag(write_dags_folder(configmaps, tmp_path / "dags"))
    assert bag.import_errors == {}
    assert sorted(bag.dags) == ["yellowforensic__Store1_ingestion", "yellowforensic_infrastructure",
                                "yellowlive__Store1_ingestion", "yellowlive_infrastructure"]
    for platform, mode in (("YellowLive", "live"), ("YellowForensic", "forensic")):
        lower = platform.lower()
        dag = bag.dags[f"{lower}__Store1_ingestion"]
        assert dag.schedule == "@hourly"
        assert (dag.max_active_runs, dag.catchup) == (1, False)
        assert set(dag.tags) == {"datasurface", f"platform:{lower}", mode, "ingestion"}
        assert graph(dag) == INGESTION_GRAPH
        merge, retrigger, done = (dag.get_task(t) for t in ("merge", "retrigger", "done"))
        assert type(merge).__name__ == "KubernetesPodOperator"
        assert merge.arguments == ["merge", "--platform", platform, "--mode", mode, "--store", "Store1"]
        assert merge.cmds == []  # the image's entrypoint (datasurface-job) runs
        assert list(merge.skip_on_exit_code) == [10]
        assert (merge.on_finish_action.value, merge.do_xcom_push, merge.get_logs) == ("delete_pod", False, True)
        assert (merge.retries, merge.retry_delay) == (2, timedelta(seconds=300))
        settings = json.loads(configmaps[lower]["data"]["platform.json"])
        assert merge.execution_timeout == timedelta(seconds=settings["executionTimeoutSeconds"]) == timedelta(hours=1)
        assert retrigger.execution_timeout is None and done.execution_timeout is None
        assert merge.image == json.loads(configmaps[lower]["data"]["platform.json"])["kubernetes"]["image"]
        assert merge.namespace == "default"
        env = env_of(merge)
        secret = "mvp-datasurface-postgresql"
        assert {k: v for k, v in env.items() if isinstance(v, tuple)} == {
            "MERGE_USER": ("secret", secret, "merge-username", False),
            "MERGE_PASSWORD": ("secret", secret, "merge-password", False),
            "SOURCE_USER": ("secret", secret, "source-username", False),
            "SOURCE_PASSWORD": ("secret", secret, "source-password", False),
        }
        assert env["DATASURFACE_MODEL"] == "/model"  # the chart's example model ConfigMap
        assert "DATASURFACE_MODEL_REF" not in env
        assert (env["DATASURFACE_MERGE_HOST"], env["DATASURFACE_MERGE_PORT"]) == (secret, "5432")
        assert (env["DATASURFACE_MERGE_DATABASE"], env["DATASURFACE_MERGE_CREDENTIAL"]) == ("merge_db", "merge")
        assert retrigger.trigger_dag_id == dag.dag_id
        assert retrigger.trigger_rule == "all_skipped" and retrigger.wait_for_completion is False
        assert done.trigger_rule == "all_success"
        assert merge.on_failure_callback in (None, [])  # no Slack webhook configured by default

        infra = bag.dags[f"{lower}_infrastructure"]
        assert infra.schedule == "@daily"
        assert graph(infra) == {"setup": []}
        setup = infra.get_task("setup")
        assert setup.arguments == ["setup", "--platform", platform, "--mode", mode, "--store", "Store1"]
        assert not setup.skip_on_exit_code
        assert setup.execution_timeout == timedelta(hours=1)
        assert env_of(setup) == env


THREE_PLATFORMS = {
    "airflow": {"enabled": False},
    "model": {"repo": "https://git.example.test/acme/model.git", "ref": "v2", "path": "models/ds.yaml",
              "tokenSecret": {"name": "model-git", "key": "token"}},
    "slack": {"webhookSecret": {"name": "slack", "key": "url"}},
    "platformDefaults": {"executionTimeoutSeconds": 7200},
    "platforms": [
        {"name": "YellowLive", "mode": "live", "stores": ["Store1"], "schedule": "@hourly"},
        {"name": "YellowForensic", "mode": "forensic", "stores": ["Store1", "Store2"],
         "schedule": "*/15 * * * *", "retries": 0, "retryDelaySeconds": 30},
        {"name": "Blue_Dev", "mode": "live", "stores": ["Orders"], "schedule": "0 3 * * *", "runner": "local",
         "infrastructureSchedule": "@weekly", "executionTimeoutSeconds": 120},
    ],
}


def test_three_platforms_without_airflow(tmp_path: Path) -> None:
    docs = helm.render_chart(values=THREE_PLATFORMS)
    cms = platform_configmaps(docs)
    assert sorted(cms) == ["blue_dev", "yellowforensic", "yellowlive"]
    assert not [d for d in docs if d["kind"] in ("Deployment", "StatefulSet") and "airflow" in d["metadata"]["name"]]
    bag = dag_bag(write_dags_folder(cms, tmp_path / "dags"))
    assert bag.import_errors == {}
    assert sorted(bag.dags) == [
        "blue_dev__Orders_ingestion", "blue_dev_infrastructure",
        "yellowforensic__Store1_ingestion", "yellowforensic__Store2_ingestion", "yellowforensic_infrastructure",
        "yellowlive__Store1_ingestion", "yellowlive_infrastructure",
    ]
    for store in ("Store1", "Store2"):
        dag = bag.dags[f"yellowforensic__{store}_ingestion"]
        assert dag.schedule == "*/15 * * * *" and graph(dag) == INGESTION_GRAPH
        merge = dag.get_task("merge")
        assert merge.arguments == ["merge", "--platform", "YellowForensic", "--mode", "forensic", "--store", store]
        assert (merge.retries, merge.retry_delay) == (0, timedelta(seconds=30))
        assert merge.execution_timeout == timedelta(hours=2)  # platformDefaults
        env = env_of(merge)
        assert env["DATASURFACE_GIT_TOKEN"] == ("secret", "model-git", "token", False)  # a missing Secret fails
        assert (env["DATASURFACE_MODEL"], env["DATASURFACE_MODEL_REF"], env["DATASURFACE_MODEL_PATH"]) == (
            "https://git.example.test/acme/model.git", "v2", "models/ds.yaml")
        assert callable(merge.on_failure_callback) or merge.on_failure_callback  # Slack configured
        assert not any(v.name == "model" for v in merge.volumes)  # a git model: no model ConfigMap
    infra = bag.dags["yellowforensic_infrastructure"]
    assert infra.get_task("setup").arguments == ["setup", "--platform", "YellowForensic", "--mode", "forensic",
                                                 "--store", "Store1", "--store", "Store2"]
    blue = bag.dags["blue_dev__Orders_ingestion"]
    assert graph(blue) == INGESTION_GRAPH
    local = blue.get_task("merge")
    assert type(local).__name__ == "LocalJobOperator"
    assert local.job_args == ["merge", "--platform", "Blue_Dev", "--mode", "live", "--store", "Orders"]
    assert local.run_again_on_10 is True
    assert local.execution_timeout == timedelta(seconds=120)  # the platform's own value
    assert bag.dags["blue_dev_infrastructure"].get_task("setup").execution_timeout == timedelta(seconds=120)
    assert local.job_env["DATASURFACE_MODEL"] == "https://git.example.test/acme/model.git"
    assert "MERGE_PASSWORD" in local.required_env and "DATASURFACE_GIT_TOKEN" in local.required_env
    assert bag.dags["blue_dev_infrastructure"].schedule == "@weekly"


def test_job_pod_spec(default_render: list[dict[str, Any]], tmp_path: Path, kubeconfig: Path) -> None:
    """The pod KubernetesPodOperator would create, built by the provider itself (no cluster contacted)."""
    from kubernetes.client import ApiClient

    configmaps = platform_configmaps(default_render)
    k8s_settings = json.loads(configmaps["yellowlive"]["data"]["platform.json"])["kubernetes"]
    bag = dag_bag(write_dags_folder(configmaps, tmp_path / "dags"))
    task = bag.dags["yellowlive__Store1_ingestion"].get_task("merge")
    pod = ApiClient().sanitize_for_serialization(task.build_pod_request_obj())
    spec = pod["spec"]
    assert pod["metadata"]["namespace"] == "default"
    assert pod["metadata"]["name"].startswith("ds-yellowlive-store1-")
    labels = pod["metadata"]["labels"]
    assert labels["datasurface.io/platform"] == "yellowlive" and labels["datasurface.io/store"] == "Store1"
    assert labels["app.kubernetes.io/part-of"] == "datasurface"
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec  # null in values: the namespace default
    assert spec["securityContext"] == k8s_settings["securityContext"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    [container] = spec["containers"]  # no XCom sidecar
    assert container["image"] == k8s_settings["image"]
    assert container["imagePullPolicy"] == k8s_settings["imagePullPolicy"] == "IfNotPresent"
    assert not container.get("command")  # empty: the image ENTRYPOINT (datasurface-job) runs
    assert container["args"] == ["merge", "--platform", "YellowLive", "--mode", "live", "--store", "Store1"]
    assert container["securityContext"] == k8s_settings["containerSecurityContext"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True  # hence the /tmp emptyDir
    assert container["resources"] == k8s_settings["resources"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MERGE_PASSWORD"] == {"name": "MERGE_PASSWORD", "valueFrom": {"secretKeyRef": {
        "name": "mvp-datasurface-postgresql", "key": "merge-password", "optional": False}}}
    assert env["TMPDIR"]["value"] == "/tmp"
    assert not [e for e in container["env"] if "PASSWORD" in e["name"] and "value" in e]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/tmp"]["name"]]["emptyDir"] == {}
    assert mounts["/model"]["readOnly"] is True
    assert volumes[mounts["/model"]["name"]]["configMap"]["name"] == "mvp-datasurface-model"


def test_pod_spec_without_model_configmap_and_with_pull_secrets(tmp_path: Path, kubeconfig: Path) -> None:
    from kubernetes.client import ApiClient

    settings = example_settings()
    settings["kubernetes"].update(imagePullSecrets=["regcred"], serviceAccountName="datasurface-jobs",
                                  imagePullPolicy="Always", namespace="data")
    bag = dag_bag(write_platform(tmp_path / "dags" / "yellowlive", settings).parent)
    pod = ApiClient().sanitize_for_serialization(
        bag.dags["yellowlive_infrastructure"].get_task("setup").build_pod_request_obj())
    spec = pod["spec"]
    assert pod["metadata"]["namespace"] == "data"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["serviceAccountName"] == "datasurface-jobs"
    assert spec["automountServiceAccountToken"] is False
    assert spec["containers"][0]["imagePullPolicy"] == "Always"
    assert [m["mountPath"] for m in spec["containers"][0]["volumeMounts"]] == ["/tmp"]
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["DATASURFACE_GIT_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["DATASURFACE_MODEL_REF"]["value"] == "main"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """matchLabels and the In operator: what the chart's NetworkPolicies use."""
    return (all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
            and all(labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", [])))


def test_network_policies_select_the_job_pods_the_dags_make(default_render: list[dict[str, Any]], tmp_path: Path,
                                                            kubeconfig: Path) -> None:
    """The pods KubernetesPodOperator builds reach the bundled PostgreSQL and take no traffic themselves."""
    from kubernetes.client import ApiClient

    policies = {d["metadata"]["name"]: d["spec"] for d in default_render if d["kind"] == "NetworkPolicy"}
    postgresql, no_ingress = policies["mvp-datasurface-postgresql"], policies["mvp-datasurface-no-ingress"]
    peers = [peer["podSelector"] for rule in postgresql["ingress"] for peer in rule["from"]]
    bag = dag_bag(write_dags_folder(platform_configmaps(default_render), tmp_path / "dags"))
    for dag_id, task_id in (("yellowlive__Store1_ingestion", "merge"), ("yellowforensic_infrastructure", "setup")):
        pod = ApiClient().sanitize_for_serialization(bag.dags[dag_id].get_task(task_id).build_pod_request_obj())
        labels = pod["metadata"]["labels"]
        assert any(_selects(peer, labels) for peer in peers), labels
        assert _selects(no_ingress["podSelector"], labels), labels
        assert not any(_selects(peer, {**labels, "app.kubernetes.io/instance": "other"}) for peer in peers)


def test_job_pod_of_an_external_tls_database(tmp_path: Path, kubeconfig: Path) -> None:
    """externalDatabase.sslMode/caSecret reach the job pod: libpq's env and the CA mounted where it points."""
    from kubernetes.client import ApiClient

    docs = helm.render_chart(values_files=[helm.CHART_DIR / "ci" / "external-tls-values.yaml"])
    bag = dag_bag(write_dags_folder(platform_configmaps(docs), tmp_path / "dags"))
    for dag_id, task_id in (("yellowlive__Store1_ingestion", "merge"), ("yellowlive_infrastructure", "setup")):
        pod = ApiClient().sanitize_for_serialization(bag.dags[dag_id].get_task(task_id).build_pod_request_obj())
        [container] = pod["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert (env["PGSSLMODE"], env["PGSSLROOTCERT"]) == ("verify-full", "/etc/datasurface/db-ca/ca.crt")
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/datasurface/db-ca"]
        assert mount["readOnly"] is True
        [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"] == {"secretName": "datasurface-db-ca", "defaultMode": 0o444,
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}]}


def test_job_pod_placement_and_annotations(tmp_path: Path, kubeconfig: Path) -> None:
    """jobs.nodeSelector, tolerations, affinity and podAnnotations reach the pod the provider builds."""
    from kubernetes.client import ApiClient

    jobs = {"nodeSelector": {"pool": "batch"},
            "tolerations": [{"key": "batch", "operator": "Equal", "value": "yes", "effect": "NoSchedule",
                             "tolerationSeconds": 60}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
            "podAnnotations": {"example.com/team": "data"}}
    docs = helm.render_chart(values={"jobs": jobs})
    bag = dag_bag(write_dags_folder(platform_configmaps(docs), tmp_path / "dags"))
    pod = ApiClient().sanitize_for_serialization(
        bag.dags["yellowlive__Store1_ingestion"].get_task("merge").build_pod_request_obj())
    assert pod["spec"]["nodeSelector"] == jobs["nodeSelector"]
    assert pod["spec"]["tolerations"] == jobs["tolerations"]
    assert pod["spec"]["affinity"] == jobs["affinity"]
    assert pod["metadata"]["annotations"]["example.com/team"] == "data"


def test_parsing_a_platform_is_fast(default_render: list[dict[str, Any]], tmp_path: Path) -> None:
    """Parsing touches no database, network or model: well under a second once Airflow is imported."""
    folder = write_dags_folder(platform_configmaps(default_render), tmp_path / "dags") / "yellowlive"
    dag_bag(folder)  # warm: the provider and kubernetes client imports happen once per process
    started = time.monotonic()
    bag = dag_bag(folder)
    assert time.monotonic() - started < 1.0
    assert len(bag.dags) == 2


class _FakePodManager:
    """Stands in for the Kubernetes API (there is no cluster here): serves the finished pod, records deletes."""

    def __init__(self, pod: Any) -> None:
        self.pod = pod
        self.deleted: list[str] = []

    def read_pod(self, pod: Any) -> Any:
        return self.pod

    def delete_pod(self, pod: Any) -> None:
        self.deleted.append(pod.metadata.name)


@pytest.mark.parametrize(("phase", "exit_code", "outcome"), [
    ("Succeeded", 0, "success"), ("Failed", 10, "skipped"), ("Failed", 1, "failed"), ("Failed", 2, "failed")])
def test_the_provider_maps_the_job_exit_code_to_the_task_state(
        default_render: list[dict[str, Any]], tmp_path: Path, kubeconfig: Path, phase: str, exit_code: int,
        outcome: str) -> None:
    """The installed provider's own end-of-pod handling (cleanup) with our operator's settings: exit 10 skips
    `merge` (so `retrigger` runs), 0 succeeds, anything else fails; the pod is deleted every time."""
    from airflow.sdk.exceptions import AirflowException, AirflowSkipException
    from kubernetes.client import models as k8s

    bag = dag_bag(write_dags_folder(platform_configmaps(default_render), tmp_path / "dags"))
    task = bag.dags["yellowlive__Store1_ingestion"].get_task("merge")
    pod = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="ds-yellowlive-store1-abc", namespace="default"),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base")]),
        status=k8s.V1PodStatus(phase=phase, container_statuses=[k8s.V1ContainerStatus(
            name="base", image="job", image_id="job", ready=False, restart_count=0,
            state=k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=exit_code)))]))
    fake = _FakePodManager(pod)
    task.pod_manager = fake
    task.patch_already_checked = lambda *args, **kwargs: None  # a label patch: an API call
    raised: BaseException | None = None
    try:
        task.cleanup(pod=pod, remote_pod=pod)
    except (AirflowSkipException, AirflowException) as exc:
        raised = exc
    state = "success" if raised is None else "skipped" if isinstance(raised, AirflowSkipException) else "failed"
    assert state == outcome
    assert fake.deleted == ["ds-yellowlive-store1-abc"]
    setup = bag.dags["yellowlive_infrastructure"].get_task("setup")
    setup.pod_manager = _FakePodManager(pod)
    setup.patch_already_checked = lambda *args, **kwargs: None
    if exit_code == 0:
        setup.cleanup(pod=pod, remote_pod=pod)
    else:  # setup has no "run again": 10 is a failure there
        with pytest.raises(AirflowException) as err:
            setup.cleanup(pod=pod, remote_pod=pod)
        assert not isinstance(err.value, AirflowSkipException)
