"""Render tests with the real helm: the exact set of objects, each enable switch, each public key,
the chart/DAG interface (platform.json), secrets handling and the built-in model (items 1-7, 10)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.support.helm import CHART_DIR, REPO_ROOT, find, render_chart, render_chart_text, run_helm

Docs = list[dict[str, Any]]
Render = Callable[..., Docs]

DEFAULT_OBJECTS = {
    ("ServiceAccount", "mvp-datasurface-airflow"),
    ("Secret", "mvp-datasurface-airflow"),
    ("Secret", "mvp-datasurface-postgresql"),
    ("ConfigMap", "mvp-datasurface-airflow-dags-root"),
    ("ConfigMap", "mvp-datasurface-airflow-executor"),
    ("ConfigMap", "mvp-datasurface-dags-yellowlive"),
    ("ConfigMap", "mvp-datasurface-dags-yellowforensic"),
    ("ConfigMap", "mvp-datasurface-model"),
    ("ConfigMap", "mvp-datasurface-postgresql-initdb"),
    ("Role", "mvp-datasurface-pod-launcher"),
    ("RoleBinding", "mvp-datasurface-pod-launcher"),
    ("Service", "mvp-datasurface-airflow-api-server"),
    ("Service", "mvp-datasurface-postgresql"),
    ("Deployment", "mvp-datasurface-airflow-api-server"),
    ("Deployment", "mvp-datasurface-airflow-scheduler"),
    ("Deployment", "mvp-datasurface-airflow-dag-processor"),
    ("Deployment", "mvp-datasurface-simulator"),
    ("StatefulSet", "mvp-datasurface-postgresql"),
    ("Job", "mvp-datasurface-airflow-migrate-<hash>"),
    ("Pod", "mvp-datasurface-check"),
    ("NetworkPolicy", "mvp-datasurface-postgresql"),
    ("NetworkPolicy", "mvp-datasurface-airflow-api-server"),
    ("NetworkPolicy", "mvp-datasurface-airflow-scheduler"),
    ("NetworkPolicy", "mvp-datasurface-no-ingress"),
}
POSTGRESQL_OBJECTS = {
    ("Secret", "mvp-datasurface-postgresql"),
    ("ConfigMap", "mvp-datasurface-postgresql-initdb"),
    ("Service", "mvp-datasurface-postgresql"),
    ("StatefulSet", "mvp-datasurface-postgresql"),
    ("NetworkPolicy", "mvp-datasurface-postgresql"),
}
AIRFLOW_OBJECTS = {
    ("ServiceAccount", "mvp-datasurface-airflow"),
    ("Secret", "mvp-datasurface-airflow"),
    ("ConfigMap", "mvp-datasurface-airflow-dags-root"),
    ("ConfigMap", "mvp-datasurface-airflow-executor"),
    ("Service", "mvp-datasurface-airflow-api-server"),
    ("Deployment", "mvp-datasurface-airflow-api-server"),
    ("Deployment", "mvp-datasurface-airflow-scheduler"),
    ("Deployment", "mvp-datasurface-airflow-dag-processor"),
    ("Job", "mvp-datasurface-airflow-migrate-<hash>"),
    ("NetworkPolicy", "mvp-datasurface-airflow-api-server"),
    ("NetworkPolicy", "mvp-datasurface-airflow-scheduler"),
}
EXTERNAL_DB = {
    "postgresql": {"enabled": False},
    "externalDatabase": {"host": "db.example", "port": 6543, "sourceDatabase": "src", "mergeDatabase": "mrg",
                         "airflowDatabase": "afl", "existingSecret": "dbcreds"},
}


def kinds(docs: Docs) -> set[tuple[str, str]]:
    """(kind, name) of each object; the migration Job's spec hash as <hash>."""
    return {(d["kind"], re.sub(r"-migrate-[0-9a-f]{10}$", "-migrate-<hash>", d["metadata"]["name"])) for d in docs}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def platform_json(docs: Docs, lower: str) -> dict[str, Any]:
    cm = find(docs, "ConfigMap", f"mvp-datasurface-dags-{lower}")
    settings: dict[str, Any] = json.loads(cm["data"]["platform.json"])
    return settings


# --- the set of objects ---------------------------------------------------------------------------


def test_defaults_render_exactly_these_objects(defaults: Docs) -> None:
    assert kinds(defaults) == DEFAULT_OBJECTS


def test_every_object_is_labelled_and_namespaced(defaults: Docs) -> None:
    for doc in defaults:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "mvp"
        assert labels["app.kubernetes.io/part-of"] == "datasurface"
        assert doc["metadata"]["namespace"] == "default"


def test_release_namespace_is_used() -> None:
    docs = render_chart(namespace="data")
    assert {d["metadata"]["namespace"] for d in docs} == {"data"}
    assert platform_json(docs, "yellowlive")["kubernetes"]["namespace"] == "data"


def test_selectors_have_no_chart_version(defaults: Docs) -> None:
    for doc in defaults:
        selector = doc.get("spec", {}).get("selector")
        if isinstance(selector, dict):
            labels = selector.get("matchLabels", selector)
            assert "helm.sh/chart" not in labels and "app.kubernetes.io/version" not in labels


def test_postgresql_disabled(render: Render) -> None:
    docs = render(EXTERNAL_DB)
    # simulator.enabled auto: never against an external (the user's own) database
    assert kinds(docs) == DEFAULT_OBJECTS - POSTGRESQL_OBJECTS - {("Deployment", "mvp-datasurface-simulator")}


def test_airflow_disabled_keeps_dag_configmaps_and_rbac(render: Render) -> None:
    docs = render({"airflow": {"enabled": False}})
    assert kinds(docs) == DEFAULT_OBJECTS - AIRFLOW_OBJECTS | {("ServiceAccount", "mvp-datasurface-airflow")}
    assert ("ConfigMap", "mvp-datasurface-dags-yellowlive") in kinds(docs)
    assert ("Role", "mvp-datasurface-pod-launcher") in kinds(docs)


def test_simulator_disabled(render: Render) -> None:
    assert kinds(render({"simulator": {"enabled": False}})) == DEFAULT_OBJECTS - {
        ("Deployment", "mvp-datasurface-simulator")}


def test_tests_disabled(render: Render) -> None:
    assert kinds(render({"tests": {"enabled": False}})) == DEFAULT_OBJECTS - {("Pod", "mvp-datasurface-check")}


def test_rbac_disabled(render: Render) -> None:
    assert kinds(render({"rbac": {"create": False}})) == DEFAULT_OBJECTS - {
        ("Role", "mvp-datasurface-pod-launcher"), ("RoleBinding", "mvp-datasurface-pod-launcher")}


def test_existing_secrets_are_not_rendered(render: Render) -> None:
    docs = render({"postgresql": {"auth": {"existingSecret": "pg"}}, "airflow": {"existingSecret": "af"}})
    assert kinds(docs) == DEFAULT_OBJECTS - {("Secret", "mvp-datasurface-postgresql"),
                                             ("Secret", "mvp-datasurface-airflow")}
    sts = find(docs, "StatefulSet", "mvp-datasurface-postgresql")
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in containers(sts)[0]["env"] if "valueFrom" in e}
    assert refs == {"pg"}
    sched = find(docs, "Deployment", "mvp-datasurface-airflow-scheduler")
    assert env_of(containers(sched)[-1])["AIRFLOW__CORE__FERNET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "af"


# --- platforms: the chart/DAG interface ---------------------------------------------------------


def test_one_configmap_per_platform_with_exactly_two_keys(defaults: Docs) -> None:
    dag_module = (CHART_DIR / "files" / "dags" / "datasurface_dags.py").read_text()
    cms = [d for d in defaults if d["kind"] == "ConfigMap" and "datasurface.io/platform" in d["metadata"]["labels"]]
    assert {c["metadata"]["labels"]["datasurface.io/platform"] for c in cms} == {"yellowlive", "yellowforensic"}
    for cm in cms:
        assert set(cm["data"]) == {"datasurface_dags.py", "platform.json"}
        assert cm["data"]["datasurface_dags.py"] == dag_module


def test_platform_json_defaults(defaults: Docs) -> None:
    settings = platform_json(defaults, "yellowlive")
    assert settings == {
        "version": 1,
        "platform": "YellowLive",
        "mode": "live",
        "stores": ["Store1"],
        "schedule": "@hourly",
        "infrastructureSchedule": "@daily",
        "runner": "kubernetes",
        "retries": 2,
        "retryDelaySeconds": 300,
        "executionTimeoutSeconds": 3600,
        "model": {"repo": "/model", "ref": None, "path": "datasurface.yaml"},
        "merge": {"host": "mvp-datasurface-postgresql", "port": 5432, "database": "merge_db",
                  "credential": "merge"},
        "env": {},
        "secretEnv": [
            {"name": "MERGE_USER", "secret": "mvp-datasurface-postgresql", "key": "merge-username"},
            {"name": "MERGE_PASSWORD", "secret": "mvp-datasurface-postgresql", "key": "merge-password"},
            {"name": "SOURCE_USER", "secret": "mvp-datasurface-postgresql", "key": "source-username"},
            {"name": "SOURCE_PASSWORD", "secret": "mvp-datasurface-postgresql", "key": "source-password"},
        ],
        "slackWebhookEnv": None,
        "kubernetes": {
            "namespace": "default",
            "image": "ghcr.io/datasurface/datasurface-job:0.3.0",
            "imagePullPolicy": "IfNotPresent",
            "imagePullSecrets": [],
            "serviceAccountName": None,
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
            "labels": {"app.kubernetes.io/part-of": "datasurface", "app.kubernetes.io/instance": "mvp",
                       "app.kubernetes.io/component": "job"},
            "startupTimeoutSeconds": 300,
            "modelConfigMap": "mvp-datasurface-model",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containerSecurityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                         "capabilities": {"drop": ["ALL"]},
                                         "seccompProfile": {"type": "RuntimeDefault"}},
            "secretMounts": [],
            "nodeSelector": {},
            "tolerations": [],
            "affinity": {},
            "annotations": {},
        },
    }
    assert platform_json(defaults, "yellowforensic")["mode"] == "forensic"


def test_platform_overrides_and_lower_case_names(render: Render) -> None:
    docs = render({"platforms": [
        {"name": "Blue_Live2", "mode": "forensic", "stores": ["Store1", "Store2"], "schedule": "5 * * * *",
         "infrastructureSchedule": "@weekly", "runner": "local", "retries": 0, "retryDelaySeconds": 7}]})
    cm = find(docs, "ConfigMap", "mvp-datasurface-dags-blue-live2")
    assert cm["metadata"]["labels"]["datasurface.io/platform"] == "blue_live2"
    settings = json.loads(cm["data"]["platform.json"])
    assert settings["platform"] == "Blue_Live2"
    assert (settings["stores"], settings["schedule"], settings["infrastructureSchedule"], settings["runner"],
            settings["retries"], settings["retryDelaySeconds"]) == (
        ["Store1", "Store2"], "5 * * * *", "@weekly", "local", 0, 7)
    sched = find(docs, "Deployment", "mvp-datasurface-airflow-scheduler")
    dags = next(v for v in pod_spec(sched)["volumes"] if v["name"] == "dags")
    paths = [i["path"] for s in dags["projected"]["sources"] for i in s["configMap"].get("items", [])]
    assert paths == ["blue_live2/datasurface_dags.py", "blue_live2/platform.json"]


def test_execution_timeout_global_default_and_per_platform(render: Render) -> None:
    """platformDefaults.executionTimeoutSeconds reaches every platform.json; a platform's own value wins."""
    docs = render({
        "platformDefaults": {"executionTimeoutSeconds": 5400},
        "platforms": [
            {"name": "Quick", "mode": "live", "stores": ["Store1"], "schedule": "@hourly",
             "executionTimeoutSeconds": 60},
            {"name": "Slow", "mode": "forensic", "stores": ["Store1"], "schedule": "@daily"},
        ]})
    assert platform_json(docs, "quick")["executionTimeoutSeconds"] == 60
    assert platform_json(docs, "slow")["executionTimeoutSeconds"] == 5400
    # --set gives an int64 (values files a float64): both render as a JSON integer
    text = render_chart_text(extra_args=["--set", "platformDefaults.executionTimeoutSeconds=7200"],
                             show_only="templates/dags/configmaps.yaml")
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert [platform_json(docs, p)["executionTimeoutSeconds"] for p in ("yellowlive", "yellowforensic")] == [
        7200, 7200]
    assert '"executionTimeoutSeconds": 7200,' in text


def test_model_repo_and_token(render: Render) -> None:
    docs = render({"model": {"repo": "https://git.example/m.git", "ref": "v2", "path": "m/ds.yaml",
                             "tokenSecret": {"name": "git", "key": "token"}}})
    settings = platform_json(docs, "yellowlive")
    assert settings["model"] == {"repo": "https://git.example/m.git", "ref": "v2", "path": "m/ds.yaml"}
    assert settings["kubernetes"]["modelConfigMap"] is None
    assert settings["secretEnv"][-1] == {"name": "DATASURFACE_GIT_TOKEN", "secret": "git", "key": "token"}
    assert ("ConfigMap", "mvp-datasurface-model") not in kinds(docs)
    check = find(docs, "Pod", "mvp-datasurface-check")
    env = env_of(check["spec"]["containers"][0])
    assert env["DATASURFACE_MODEL"]["value"] == "https://git.example/m.git"
    assert env["DATASURFACE_MODEL_REF"]["value"] == "v2"
    assert env["DATASURFACE_MODEL_PATH"]["value"] == "m/ds.yaml"
    assert env["DATASURFACE_GIT_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "git", "key": "token"}
    assert not [v for v in check["spec"]["volumes"] if v["name"] == "model"]


def test_model_token_value_creates_a_secret(render: Render) -> None:
    docs = render({"model": {"repo": "https://git.example/m.git", "token": "s3cr3t-token"}})
    secret = find(docs, "Secret", "mvp-datasurface-git")
    assert base64.b64decode(secret["data"]["token"]).decode() == "s3cr3t-token"
    assert platform_json(docs, "yellowlive")["secretEnv"][-1]["secret"] == "mvp-datasurface-git"


def test_image_values(render: Render) -> None:
    docs = render({"image": {"repository": "registry.example/ds", "tag": "9.9.9", "pullPolicy": "Always"},
                   "imagePullSecrets": [{"name": "regcred"}]})
    k8s = platform_json(docs, "yellowlive")["kubernetes"]
    assert (k8s["image"], k8s["imagePullPolicy"], k8s["imagePullSecrets"]) == (
        "registry.example/ds:9.9.9", "Always", ["regcred"])
    sim = find(docs, "Deployment", "mvp-datasurface-simulator")
    assert containers(sim)[0]["image"] == "registry.example/ds:9.9.9"
    assert pod_spec(sim)["imagePullSecrets"] == [{"name": "regcred"}]


def test_credentials_mapping(render: Render) -> None:
    docs = render({"credentials": {
        "source": {"secretName": "src", "usernameKey": "u", "passwordKey": "p"},
        "merge": {"secretName": "", "usernameKey": "merge-username", "passwordKey": "merge-password"},
        "crm-db": {"secretName": "crm", "usernameKey": "user", "passwordKey": "pass"}}})
    assert platform_json(docs, "yellowlive")["secretEnv"] == [
        {"name": "CRM_DB_USER", "secret": "crm", "key": "user"},
        {"name": "CRM_DB_PASSWORD", "secret": "crm", "key": "pass"},
        {"name": "MERGE_USER", "secret": "mvp-datasurface-postgresql", "key": "merge-username"},
        {"name": "MERGE_PASSWORD", "secret": "mvp-datasurface-postgresql", "key": "merge-password"},
        {"name": "SOURCE_USER", "secret": "src", "key": "u"},
        {"name": "SOURCE_PASSWORD", "secret": "src", "key": "p"},
    ]
    sim_env = env_of(containers(find(docs, "Deployment", "mvp-datasurface-simulator"))[0])
    assert sim_env["SOURCE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "src", "key": "p"}


def test_slack_webhook(render: Render) -> None:
    docs = render({"slack": {"webhookSecret": {"name": "slack", "key": "url"}}})
    assert platform_json(docs, "yellowlive")["slackWebhookEnv"] == "DATASURFACE_SLACK_WEBHOOK"
    for name in ("scheduler", "dag-processor"):
        env = env_of(containers(find(docs, "Deployment", f"mvp-datasurface-airflow-{name}"))[-1])
        assert env["DATASURFACE_SLACK_WEBHOOK"]["valueFrom"]["secretKeyRef"] == {"name": "slack", "key": "url"}


def test_external_database(render: Render) -> None:
    docs = render({**EXTERNAL_DB, "simulator": {"enabled": True}})
    settings = platform_json(docs, "yellowlive")
    assert settings["merge"] == {"host": "db.example", "port": 6543, "database": "mrg", "credential": "merge"}
    assert {e["secret"] for e in settings["secretEnv"]} == {"dbcreds"}
    sim_env = env_of(containers(find(docs, "Deployment", "mvp-datasurface-simulator"))[0])
    assert (sim_env["DATASURFACE_SIM_HOST"]["value"], sim_env["DATASURFACE_SIM_PORT"]["value"],
            sim_env["DATASURFACE_SIM_DATABASE"]["value"]) == ("db.example", "6543", "src")
    sched_env = env_of(containers(find(docs, "Deployment", "mvp-datasurface-airflow-scheduler"))[-1])
    assert sched_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]["value"] == (
        "postgresql+psycopg2://db.example:6543/afl")
    assert sched_env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "dbcreds"
    model = yaml.safe_load(find(docs, "ConfigMap", "mvp-datasurface-model")["data"]["datasurface.yaml"])
    assert model["stores"][0]["source"]["host"] == "db.example"


@pytest.mark.parametrize(("values", "message"), [
    ({"postgresql": {"enabled": False}}, "externalDatabase.host"),
    ({"postgresql": {"enabled": False}, "externalDatabase": {"host": "h"}}, "externalDatabase.existingSecret"),
    ({"platforms": [{"name": "Dup", "mode": "live", "stores": ["S"], "schedule": "@daily"},
                    {"name": "DUP", "mode": "live", "stores": ["S"], "schedule": "@daily"}]}, "same name"),
    ({"merge": {"credential": "nope"}}, "merge.credential"),
    ({"platforms": [{"name": "bad-name", "mode": "live", "stores": ["S"], "schedule": "@daily"}]}, "pattern"),
    ({"platforms": [{"name": "X", "mode": "live", "stores": ["S"], "schedule": "@daily", "extra": 1}]},
     "extra"),
    ({"unknownKey": 1}, "unknownKey"),
    ({"simulator": {"replicas": "3"}}, "replicas"),
    ({"platformDefaults": {"executionTimeoutSeconds": 30}}, "executionTimeoutSeconds"),
    ({"platforms": [{"name": "X", "mode": "live", "stores": ["S"], "schedule": "@daily",
                     "executionTimeoutSeconds": 30}]}, "executionTimeoutSeconds"),
    ({"platforms": [{"name": "X", "mode": "live", "stores": ["S"], "schedule": "@daily",
                     "executionTimeoutSeconds": "1h"}]}, "executionTimeoutSeconds"),
])
def test_bad_values_fail(values: dict[str, Any], message: str) -> None:
    with pytest.raises(RuntimeError, match=re.escape(message)):
        render_chart(values)


# --- components --------------------------------------------------------------------------------


def test_simulator_replicas_only_when_set(defaults: Docs, render: Render) -> None:
    sim = find(defaults, "Deployment", "mvp-datasurface-simulator")
    assert "replicas" not in sim["spec"]
    spec = pod_spec(sim)
    assert spec["terminationGracePeriodSeconds"] == 10
    container = spec["containers"][0]
    assert container["args"][:2] == ["simulate", "--create-tables"]
    env = env_of(container)
    assert env["DATASURFACE_SIM_HOST"]["value"] == "mvp-datasurface-postgresql"
    assert env["DATASURFACE_SIM_DATABASE"]["value"] == "customer_db"
    assert env["DATASURFACE_SIM_CREDENTIAL"]["value"] == "source"
    assert env["SOURCE_USER"]["valueFrom"]["secretKeyRef"] == {"name": "mvp-datasurface-postgresql",
                                                               "key": "source-username"}
    scaled = find(render({"simulator": {"replicas": 3}}), "Deployment", "mvp-datasurface-simulator")
    assert scaled["spec"]["replicas"] == 3
    assert find(render({"simulator": {"replicas": 0}}), "Deployment", "mvp-datasurface-simulator")[
        "spec"]["replicas"] == 0


def test_rbac_is_exactly_what_the_pod_operator_needs(defaults: Docs, render: Render) -> None:
    role = find(defaults, "Role", "mvp-datasurface-pod-launcher")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "delete", "patch"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
    ]
    assert not [d for d in defaults if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    binding = find(defaults, "RoleBinding", "mvp-datasurface-pod-launcher")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mvp-datasurface-airflow",
                                    "namespace": "default"}]
    extra = {"kind": "ServiceAccount", "name": "airflow-worker", "namespace": "airflow"}
    docs = render({"rbac": {"extraSubjects": [extra]}})
    assert extra in find(docs, "RoleBinding", "mvp-datasurface-pod-launcher")["subjects"]
    sched = find(defaults, "Deployment", "mvp-datasurface-airflow-scheduler")
    assert pod_spec(sched)["serviceAccountName"] == "mvp-datasurface-airflow"
    assert pod_spec(sched)["automountServiceAccountToken"] is True
    for doc in defaults:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job", "Pod") and doc is not sched:
            assert pod_spec(doc)["automountServiceAccountToken"] is False, doc["metadata"]["name"]


def test_postgresql_statefulset(defaults: Docs, render: Render) -> None:
    sts = find(defaults, "StatefulSet", "mvp-datasurface-postgresql")
    container = containers(sts)[0]
    assert re.fullmatch(r"postgres:1[5-8]\.\d+", container["image"])
    assert container["readinessProbe"]["exec"]["command"][0] == "pg_isready"
    assert container["livenessProbe"]["exec"]["command"][0] == "pg_isready"
    assert pod_spec(sts)["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    env = env_of(container)
    for var in ("POSTGRES_PASSWORD", "DS_SOURCE_PASSWORD", "DS_MERGE_PASSWORD", "DS_AIRFLOW_PASSWORD",
                "DS_SOURCE_USERNAME"):
        assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "mvp-datasurface-postgresql"
    docs = render({"postgresql": {"persistence": {"existingClaim": "mine", "storageClass": "fast"}}})
    sts = find(docs, "StatefulSet", "mvp-datasurface-postgresql")
    assert "volumeClaimTemplates" not in sts["spec"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "mine"}} in pod_spec(sts)["volumes"]
    docs = render({"postgresql": {"persistence": {"storageClass": "fast", "size": "1Gi"}}})
    claim = find(docs, "StatefulSet", "mvp-datasurface-postgresql")["spec"]["volumeClaimTemplates"][0]
    assert (claim["spec"]["storageClassName"], claim["spec"]["resources"]["requests"]["storage"]) == ("fast", "1Gi")


def test_postgresql_init_creates_three_databases_without_passwords(defaults: Docs) -> None:
    script = find(defaults, "ConfigMap", "mvp-datasurface-postgresql-initdb")["data"]["10-datasurface.sh"]
    for db, role in (("customer_db", "source"), ("airflow_db", "airflow"), ("merge_db", "merge")):
        assert f'CREATE DATABASE "{db}" OWNER :"{role}_user";' in script
        assert f'REVOKE ALL ON DATABASE "{db}" FROM PUBLIC;' in script
        assert f"\\getenv {role}_password DS_{role.upper()}_PASSWORD" in script
    secret = find(defaults, "Secret", "mvp-datasurface-postgresql")
    for value in secret["data"].values():
        assert base64.b64decode(value).decode() not in script or len(base64.b64decode(value)) < 10


def test_generated_secrets(defaults: Docs) -> None:
    """Each generated secret as strong as its consumer needs (issue 11): Fernet 32 random bytes, the JWT
    secret at least 64 bytes (Airflow signs with HS512), passwords URL-safe letters and digits."""
    pg = find(defaults, "Secret", "mvp-datasurface-postgresql")["data"]
    assert set(pg) == {"postgres-password", "source-username", "source-password", "merge-username",
                       "merge-password", "airflow-username", "airflow-password"}
    assert base64.b64decode(pg["source-username"]) == b"source"
    for key in ("postgres-password", "source-password", "merge-password", "airflow-password"):
        assert re.fullmatch(r"[A-Za-z0-9]{32,}", base64.b64decode(pg[key]).decode()), key
    af = find(defaults, "Secret", "mvp-datasurface-airflow")["data"]
    assert set(af) == {"fernet-key", "api-secret-key", "jwt-secret", "admin-password"}
    fernet = base64.b64decode(af["fernet-key"])
    assert re.fullmatch(rb"[A-Za-z0-9_-]{43}=", fernet), "url-safe base64 of 32 bytes"
    assert len(base64.urlsafe_b64decode(fernet)) == 32
    assert len(base64.b64decode(af["jwt-secret"])) >= 64
    assert len(base64.b64decode(af["api-secret-key"])) >= 32
    assert re.fullmatch(r"[A-Za-z0-9]{24,}", base64.b64decode(af["admin-password"]).decode())


def test_fernet_keys_are_random_bytes(render: Render) -> None:
    """Not letters and digits only (fewer bits than the key's 32 bytes): over a few renders every byte
    value range shows up."""
    keys = [base64.urlsafe_b64decode(base64.b64decode(find(render_chart(show_only="templates/secrets/airflow.yaml"),
                                                           "Secret", "mvp-datasurface-airflow")["data"]["fernet-key"]))
            for _ in range(4)]
    assert len(set(keys)) == 4
    assert any(b > 127 for key in keys for b in key)


# --- GitOps: helm template | kubectl apply, Argo CD, Flux (no lookup) ------------------------------------

GITOPS = {"postgresql": {"auth": {"existingSecret": "datasurface-db"}},
          "airflow": {"existingSecret": "datasurface-airflow"}}


def test_gitops_renders_are_identical_and_hold_nothing_random() -> None:
    """With the existing-Secret values set, `helm template` twice gives the same bytes and renders no
    Secret at all: nothing generated remains (every generated secret has an existing-Secret value)."""
    first, second = render_chart_text(GITOPS), render_chart_text(GITOPS)
    assert first == second
    assert [d for d in yaml.safe_load_all(first) if d and d["kind"] == "Secret"] == []
    external = render_chart_text({**EXTERNAL_DB, "airflow": GITOPS["airflow"]})
    assert external == render_chart_text({**EXTERNAL_DB, "airflow": GITOPS["airflow"]})


@pytest.mark.parametrize("leave_out", ["postgresql", "airflow"])
def test_without_an_existing_secret_renders_differ(leave_out: str) -> None:
    """The check above can fail: leave one existing-Secret value out and that Secret is generated anew."""
    values = {k: v for k, v in GITOPS.items() if k != leave_out}
    assert render_chart_text(values) != render_chart_text(values)


def test_readme_gitops_commands_create_the_secrets_the_chart_reads(defaults: Docs) -> None:
    """docs/install.md "GitOps install": one `kubectl create secret generic` per Secret, with exactly the keys the
    chart's generated Secret of the same role has."""
    readme = (REPO_ROOT / "docs" / "install.md").read_text()
    section = readme.split("### GitOps install", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    commands = {m.group(1): set(re.findall(r"--from-literal=([a-z-]+)=", m.group(0)))
                for m in re.finditer(r"kubectl (?:-n \S+ )?create secret generic (\S+)[^\n]*", section)}
    generated = {"datasurface-db": "mvp-datasurface-postgresql", "datasurface-airflow": "mvp-datasurface-airflow"}
    assert set(commands) == set(generated)
    for name, rendered in generated.items():
        assert commands[name] == set(find(defaults, "Secret", rendered)["data"]), name
    for name in generated:
        assert f"existingSecret={name}" in section or f"existingSecret: {name}" in section


def test_no_secret_value_outside_secrets(defaults: Docs) -> None:
    """Generated passwords appear only in Secrets: not in ConfigMaps, env values or args."""
    secrets = [base64.b64decode(v).decode() for d in defaults if d["kind"] == "Secret"
               for k, v in d["data"].items() if not k.endswith("-username")]
    others = yaml.safe_dump_all([d for d in defaults if d["kind"] != "Secret"])
    for value in secrets:
        assert value not in others
    for doc in defaults:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job", "Pod"):
            for c in containers(doc):
                for e in c.get("env", []):
                    if re.search(r"(PASSWORD|SECRET|_KEY|TOKEN|WEBHOOK)$", e["name"]):
                        assert "valueFrom" in e, (doc["metadata"]["name"], e["name"])


def test_airflow_components(defaults: Docs) -> None:
    for name, args in (("api-server", ["api-server", "--port", "8080"]), ("scheduler", ["scheduler"]),
                       ("dag-processor", ["dag-processor"])):
        dep = find(defaults, "Deployment", f"mvp-datasurface-airflow-{name}")
        main = pod_spec(dep)["containers"][0]
        assert re.fullmatch(r"apache/airflow:3\.\d+\.\d+", main["image"])
        assert main["args"] == args
        env = env_of(main)
        assert env["AIRFLOW__CORE__EXECUTOR"]["value"] == "datasurface_executor.LocalExecutor"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]["value"] == (
            "http://mvp-datasurface-airflow-api-server:8080/execution/")
        init = pod_spec(dep)["initContainers"][0]
        assert init["args"][:2] == ["db", "check-migrations"]
    [job] = [d for d in defaults if d["kind"] == "Job"]
    assert "helm.sh/hook" not in job["metadata"].get("annotations", {})
    assert pod_spec(job)["containers"][0]["args"] == ["db", "migrate"]
    svc = find(defaults, "Service", "mvp-datasurface-airflow-api-server")
    assert svc["spec"]["ports"][0]["port"] == 8080


def test_every_airflow_container_can_import_the_executor(defaults: Docs) -> None:
    """AIRFLOW__CORE__EXECUTOR names a module of the chart's: each container given Airflow's env (the
    components, their init containers, the migration Job) has it mounted on its PYTHONPATH."""
    [cm] = [d for d in defaults if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-executor")]
    module = (CHART_DIR / "files" / "airflow" / "datasurface_executor.py").read_text()
    assert cm["data"]["datasurface_executor.py"].strip() == module.strip()
    seen = 0
    for doc in defaults:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        spec = pod_spec(doc)
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            env = env_of(c)
            if "AIRFLOW__CORE__EXECUTOR" not in env:
                continue
            seen += 1
            name = f"{doc['metadata']['name']}/{c['name']}"
            assert env["AIRFLOW__CORE__EXECUTOR"]["value"] == "datasurface_executor.LocalExecutor", name
            mount = next(m for m in c["volumeMounts"] if m["name"] == "executor")
            assert mount["mountPath"] == env["PYTHONPATH"]["value"] and mount.get("readOnly"), name
            volume = next(v for v in spec["volumes"] if v["name"] == "executor")
            assert volume["configMap"]["name"] == cm["metadata"]["name"], name
    assert seen >= 7  # api-server, dag-processor, scheduler, their init containers, the migration Job


def test_dags_folder_mount(defaults: Docs) -> None:
    for name in ("scheduler", "dag-processor"):
        dep = find(defaults, "Deployment", f"mvp-datasurface-airflow-{name}")
        spec = pod_spec(dep)
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "dags")
        assert mount["mountPath"] == "/opt/airflow/dags" and "subPath" not in mount
        dags = next(v for v in spec["volumes"] if v["name"] == "dags")
        sources = dags["projected"]["sources"]
        assert sources[0]["configMap"] == {"name": "mvp-datasurface-airflow-dags-root"}
        assert [(s["configMap"]["name"], [i["path"] for i in s["configMap"]["items"]]) for s in sources[1:]] == [
            ("mvp-datasurface-dags-yellowlive", ["yellowlive/datasurface_dags.py", "yellowlive/platform.json"]),
            ("mvp-datasurface-dags-yellowforensic",
             ["yellowforensic/datasurface_dags.py", "yellowforensic/platform.json"]),
        ]
        assert re.fullmatch(r"[0-9a-f]{64}", dep["spec"]["template"]["metadata"]["annotations"]["checksum/dags"])
    root = find(defaults, "ConfigMap", "mvp-datasurface-airflow-dags-root")
    assert root["data"][".airflowignore"].split() == ["..*"]


def test_helm_test_pod(defaults: Docs) -> None:
    pod = find(defaults, "Pod", "mvp-datasurface-check")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    assert container["args"] == ["check"]
    env = env_of(container)
    assert env["DATASURFACE_MODEL"]["value"] == "/model"
    assert env["DATASURFACE_MERGE_HOST"]["value"] == "mvp-datasurface-postgresql"
    assert env["DATASURFACE_MERGE_DATABASE"]["value"] == "merge_db"
    assert env["DATASURFACE_MERGE_CREDENTIAL"]["value"] == "merge"
    settings = platform_json(defaults, "yellowlive")
    assert {e["name"] for e in settings["secretEnv"]} <= set(env)
    assert {"name": "model", "mountPath": "/model", "readOnly": True} in container["volumeMounts"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001


def test_builtin_model_is_examples_model_except_host(defaults: Docs) -> None:
    example = (REPO_ROOT / "examples" / "model" / "datasurface.yaml").read_text()
    assert (CHART_DIR / "files" / "model" / "datasurface.yaml").read_text() == example, \
        "charts/datasurface/files/model/datasurface.yaml must be a copy of examples/model/datasurface.yaml"
    docs = render_chart(release="other")
    rendered = find(docs, "ConfigMap", "other-datasurface-model")["data"]["datasurface.yaml"]
    host_line = re.compile(r"^(\s+host:).*$", re.MULTILINE)
    assert host_line.sub(r"\1 X", rendered) == host_line.sub(r"\1 X", example)
    assert yaml.safe_load(rendered)["stores"][0]["source"]["host"] == "other-datasurface-postgresql"


def test_fullname_override(render: Render) -> None:
    docs = render({"fullnameOverride": "ds"})
    assert ("ConfigMap", "ds-dags-yellowlive") in kinds(docs)
    assert platform_json_named(docs, "ds-dags-yellowlive")["merge"]["host"] == "ds-postgresql"


def platform_json_named(docs: Docs, name: str) -> dict[str, Any]:
    settings: dict[str, Any] = json.loads(find(docs, "ConfigMap", name)["data"]["platform.json"])
    return settings


def test_notes_explain_access() -> None:
    proc = run_helm(["install", "mvp", str(CHART_DIR), "--dry-run=client", "--namespace", "default"])
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "port-forward service/mvp-datasurface-airflow-api-server" in notes
    assert "admin-password" in notes
    assert "yellowlive__Store1_ingestion" in notes
    assert "scale deployment/mvp-datasurface-simulator" in notes


def test_auth_passwords_init_writes_the_simple_auth_manager_file(defaults: Docs, tmp_path: Any) -> None:
    """The api-server's init container builds the simple auth manager's password file from env only."""
    import os
    import subprocess
    import sys

    dep = find(defaults, "Deployment", "mvp-datasurface-airflow-api-server")
    init = next(c for c in pod_spec(dep)["initContainers"] if c["name"] == "auth-passwords")
    assert init["args"][0] == "python"
    env = env_of(init)
    assert env["ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mvp-datasurface-airflow",
                                                                  "key": "admin-password"}
    path = tmp_path / "passwords.json"
    run_env = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(path), "ADMIN_USERNAME": "admin",
               "ADMIN_PASSWORD": "p\"w'x"}
    subprocess.run([sys.executable, *init["args"][1:]], env=run_env, check=True)
    assert json.loads(path.read_text()) == {"admin": "p\"w'x"}
    assert os.stat(path).st_mode & 0o777 == 0o600
    main_env = env_of(pod_spec(dep)["containers"][0])
    assert main_env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]["value"] == str(
        env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]["value"])
    assert main_env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]["value"] == "admin:admin"


# --- the local runner and the scheduler's shutdown (issue 11) ---------------------------------------------

LOCAL = [{"name": "YellowLive", "mode": "live", "stores": ["Store1"], "schedule": "@hourly", "runner": "local"},
         {"name": "YellowForensic", "mode": "forensic", "stores": ["Store1"], "schedule": "@hourly"}]


def scheduler(docs: Docs) -> dict[str, Any]:
    main: dict[str, Any] = pod_spec(find(docs, "Deployment", "mvp-datasurface-airflow-scheduler"))["containers"][0]
    return main


def secret_refs(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}


def test_scheduler_has_no_job_credentials_with_job_pods(defaults: Docs) -> None:
    refs = secret_refs(scheduler(defaults))
    assert not {e["name"] for e in platform_json(defaults, "yellowlive")["secretEnv"]} & set(refs)
    assert "model" not in {m["name"] for m in scheduler(defaults)["volumeMounts"]}


@pytest.mark.parametrize("values", [{"platforms": LOCAL}, {"platformDefaults": {"runner": "local"}}],
                         ids=["one-platform", "platformDefaults"])
def test_local_runner_gives_the_scheduler_what_a_job_pod_gets(render: Render, values: dict[str, Any]) -> None:
    """The LocalExecutor worker runs the job itself: exactly the platforms' secretEnv via secretKeyRef, and
    the built-in model mounted where platform.json's model.repo says."""
    docs = render(values)
    main, spec = scheduler(docs), pod_spec(find(docs, "Deployment", "mvp-datasurface-airflow-scheduler"))
    settings = platform_json(docs, "yellowlive")
    assert settings["runner"] == "local"
    expected = {e["name"]: {"name": e["secret"], "key": e["key"], **({"optional": True} if e.get("optional") else {})}
                for e in settings["secretEnv"]}
    refs = secret_refs(main)
    assert {k: v for k, v in refs.items() if k in expected} == expected
    airflow_own = {"AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET",
                   "PGUSER", "PGPASSWORD"}
    assert set(refs) == set(expected) | airflow_own
    mount = next(m for m in main["volumeMounts"] if m["name"] == "model")
    assert mount == {"name": "model", "mountPath": settings["model"]["repo"], "readOnly": True}
    assert {"name": "model", "configMap": {"name": "mvp-datasurface-model"}} in spec["volumes"]


def test_local_runner_with_a_model_repo_mounts_no_model(render: Render) -> None:
    docs = render({"platforms": LOCAL, "model": {"repo": "https://example.test/m.git",
                                                 "tokenSecret": {"name": "git", "key": "token"}}})
    refs = secret_refs(scheduler(docs))
    assert refs["DATASURFACE_GIT_TOKEN"] == {"name": "git", "key": "token"}
    assert "model" not in {m["name"] for m in scheduler(docs)["volumeMounts"]}


def test_scheduler_shutdown_is_fast_and_bounded(defaults: Docs, render: Render) -> None:
    """On SIGTERM the image's dumb-init signals the whole group (DUMB_INIT_SETSID=1): the task supervisors
    forward it to running tasks, which stop their jobs; the grace period only bounds that."""
    dep = find(defaults, "Deployment", "mvp-datasurface-airflow-scheduler")
    assert dep["spec"]["strategy"] == {"type": "Recreate"}, "one scheduler at a time (LocalExecutor runs tasks in it)"
    assert pod_spec(dep)["terminationGracePeriodSeconds"] == 30
    assert env_of(scheduler(defaults))["DUMB_INIT_SETSID"] == {"name": "DUMB_INIT_SETSID", "value": "1"}
    docs = render({"airflow": {"scheduler": {"terminationGracePeriodSeconds": 45}}})
    spec = pod_spec(find(docs, "Deployment", "mvp-datasurface-airflow-scheduler"))
    assert spec["terminationGracePeriodSeconds"] == 45


def test_notes_name_the_image_the_local_runner_needs() -> None:
    def notes(*args: str) -> str:
        proc = run_helm(["install", "mvp", str(CHART_DIR), "--dry-run=client", "--namespace", "default", *args])
        return proc.stdout.split("NOTES:", 1)[1]

    assert "local runner" not in notes()
    text = notes("--set", "platformDefaults.runner=local")
    assert "The local runner (YellowLive, YellowForensic)" in text
    assert "apache/airflow:3.3.2 must contain the datasurface-k8s package" in " ".join(text.split())
