"""Unit tests of the DAG module's platform.json validation: what it accepts, what it rejects and how it says so."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from dag_support import EXAMPLE_SETTINGS, dag_bag, example_settings, write_platform


def test_the_interface_example_is_accepted(dags_module: ModuleType) -> None:
    s = dags_module.parse_settings(example_settings())
    assert (s.platform, s.mode, s.stores, s.runner) == ("YellowLive", "live", ("Store1",), "kubernetes")
    assert (s.schedule, s.infrastructure_schedule, s.retries, s.retry_delay_seconds) == ("@hourly", "@daily", 2, 300)
    assert s.execution_timeout_seconds == 3600
    assert s.id_prefix == "yellowlive"
    assert s.ingestion_dag_id("Store1") == "yellowlive__Store1_ingestion"
    assert s.infrastructure_dag_id == "yellowlive_infrastructure"
    assert [e.name for e in s.secret_env] == ["MERGE_USER", "MERGE_PASSWORD", "SOURCE_USER", "SOURCE_PASSWORD",
                                             "DATASURFACE_GIT_TOKEN"]
    assert s.secret_env[-1].optional and not s.secret_env[0].optional
    assert s.slack_webhook_env == "DATASURFACE_SLACK_WEBHOOK"
    k = s.kubernetes
    assert k.image == "ghcr.io/datasurface/datasurface-job:0.3.0"
    assert k.resources == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
    assert k.model_config_map is None and k.service_account_name is None
    assert s.job_env() == {
        "DATASURFACE_MODEL": "https://github.com/x/y.git", "DATASURFACE_MODEL_REF": "main",
        "DATASURFACE_MODEL_PATH": "datasurface.yaml", "DATASURFACE_MERGE_HOST": "mvp-datasurface-postgresql",
        "DATASURFACE_MERGE_PORT": "5432", "DATASURFACE_MERGE_DATABASE": "merge_db",
        "DATASURFACE_MERGE_CREDENTIAL": "merge",
    }
    assert s.merge_args("Store1") == ["merge", "--platform", "YellowLive", "--mode", "live", "--store", "Store1"]
    assert s.setup_args() == ["setup", "--platform", "YellowLive", "--mode", "live", "--store", "Store1"]


def test_minimal_local_platform_gets_the_documented_defaults(dags_module: ModuleType) -> None:
    s = dags_module.parse_settings({
        "version": 1, "platform": "Dev", "mode": "forensic", "stores": ["A", "B"], "runner": "local",
        "model": {"repo": "/srv/model"}, "merge": {"host": "/run/postgresql", "database": "m", "credential": "merge"},
    })
    assert (s.schedule, s.infrastructure_schedule, s.retries, s.retry_delay_seconds) == ("@hourly", "@daily", 2, 300)
    assert s.execution_timeout_seconds == 3600
    assert s.kubernetes is None and s.secret_env == () and s.slack_webhook_env is None
    assert (s.model.ref, s.model.path, s.merge.port) == (None, "datasurface.yaml", 5432)
    assert "DATASURFACE_MODEL_REF" not in s.job_env()  # null ref: the remote's default branch
    assert s.setup_args() == ["setup", "--platform", "Dev", "--mode", "forensic", "--store", "A", "--store", "B"]


@pytest.mark.parametrize("seconds", [60, 61, 3600, 86400, 604800])
def test_execution_timeout_accepted(dags_module: ModuleType, seconds: int) -> None:
    s = dags_module.parse_settings(example_settings(executionTimeoutSeconds=seconds))
    assert s.execution_timeout_seconds == seconds


def test_execution_timeout_is_on_every_job_task_of_both_runners(dags_module: ModuleType) -> None:
    """merge and setup carry executionTimeoutSeconds (pod and subprocess alike); retrigger and done do not."""
    from datetime import timedelta

    for runner in ("kubernetes", "local"):
        dags = dags_module.build_dags(dags_module.parse_settings(
            example_settings(runner=runner, executionTimeoutSeconds=900)))
        ingestion, infra = dags["yellowlive__Store1_ingestion"], dags["yellowlive_infrastructure"]
        for task in (ingestion.get_task("merge"), infra.get_task("setup")):
            kind = "LocalJobOperator" if runner == "local" else "KubernetesPodOperator"
            assert (type(task).__name__, task.execution_timeout) == (kind, timedelta(seconds=900))
        assert ingestion.get_task("retrigger").execution_timeout is None
        assert ingestion.get_task("done").execution_timeout is None


def test_null_schedule_means_manual_runs_only(dags_module: ModuleType) -> None:
    s = dags_module.parse_settings(example_settings(schedule=None, infrastructureSchedule=None))
    assert s.schedule is None and s.infrastructure_schedule is None


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Mutate the example at a dotted path (`kubernetes.image`, `secretEnv.0.name`); value DELETE removes it."""
    def apply(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = d
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return apply


DELETE = object()

REJECTED = [
    ("version", 2, "version: must be 1"),
    ("version", DELETE, "version: required"),
    ("platform", DELETE, "platform: required"),
    ("platform", "Yellow-Live", "platform: 'Yellow-Live' is not a valid name"),
    ("platform", "1Yellow", "platform: '1Yellow' is not a valid name"),
    ("platform", "Y" * 64, "platform: must be at most 63 characters"),
    ("mode", "scd2", "mode: must be one of live, forensic (got 'scd2')"),
    ("mode", None, "mode: must be a non-empty string"),
    ("stores", [], "stores: must name at least one store"),
    ("stores", "Store1", "stores: must be a list"),
    ("stores", ["Store1", "Store1"], "stores[1]: duplicate store 'Store1'"),
    ("stores", ["store one"], "stores[0]: must be a store name"),
    ("stores", ["S" * 41], "stores[0]: must be a store name"),
    ("schedule", "", "schedule: must be a non-empty string or null"),
    ("schedule", 3600, "schedule: must be a non-empty string or null"),
    ("runner", "docker", "runner: must be one of kubernetes, local (got 'docker')"),
    ("retries", -1, "retries: must be >= 0 (got -1)"),
    ("retries", "2", "retries: must be an integer (got the string '2')"),
    ("retries", True, "retries: must be an integer (got true)"),
    ("retryDelaySeconds", -5, "retryDelaySeconds: must be >= 0"),
    ("retryDelaySeconds", "300", "retryDelaySeconds: must be a number"),
    ("executionTimeoutSeconds", 30, "executionTimeoutSeconds: must be between 60 and 604800 (got 30)"),
    ("executionTimeoutSeconds", 59, "executionTimeoutSeconds: must be between 60 and 604800 (got 59)"),
    ("executionTimeoutSeconds", 0, "executionTimeoutSeconds: must be between 60 and 604800 (got 0)"),
    ("executionTimeoutSeconds", 604801, "executionTimeoutSeconds: must be between 60 and 604800 (got 604801)"),
    ("executionTimeoutSeconds", "3600", "executionTimeoutSeconds: must be an integer (got the string '3600')"),
    ("executionTimeoutSeconds", 3600.5, "executionTimeoutSeconds: must be an integer (got float 3600.5)"),
    ("executionTimeoutSeconds", True, "executionTimeoutSeconds: must be an integer (got true)"),
    ("executionTimeoutSeconds", None, "executionTimeoutSeconds: must be an integer (got null)"),
    ("model", DELETE, "model: required"),
    ("model", "https://x/y.git", "model: must be an object (got the string"),
    ("model.repo", "", "model.repo: must be a non-empty string"),
    ("model.branch", "main", "model.branch: unknown key (known keys: repo, ref, path)"),
    ("merge.host", DELETE, "merge.host: required"),
    ("merge.port", 70000, "merge.port: must be between 1 and 65535 (got 70000)"),
    ("merge.port", "5432", "merge.port: must be an integer"),
    ("merge.password", "x", "merge.password: unknown key"),
    ("secretEnv", {"MERGE_USER": "x"}, "secretEnv: must be a list"),
    ("secretEnv.0.name", "MERGE-USER", "secretEnv[0].name: 'MERGE-USER' is not a valid name"),
    ("secretEnv.0.secret", "Not_A_Secret_Name", "secretEnv[0].secret: 'Not_A_Secret_Name' is not a valid name"),
    ("secretEnv.0.key", DELETE, "secretEnv[0].key: required"),
    ("secretEnv.0.optional", "yes", "secretEnv[0].optional: must be true or false"),
    ("secretEnv.0.value", "hunter2", "secretEnv[0].value: unknown key"),
    ("secretEnv.1.name", "MERGE_USER", "secretEnv[1].name: duplicate env var 'MERGE_USER'"),
    ("secretEnv.0.name", "DATASURFACE_MODEL", "secretEnv[0].name: DATASURFACE_MODEL is set from the model/merge"),
    ("slackWebhookEnv", "", "slackWebhookEnv: must be a non-empty string or null"),
    ("slackWebhookEnv", "https://hooks.slack.com/x", "slackWebhookEnv: 'https://hooks.slack.com/x' is not a valid"),
    ("kubernetes", DELETE, "kubernetes: required"),
    ("kubernetes.image", DELETE, "kubernetes.image: required"),
    ("kubernetes.imagePullPolicy", "Sometimes", "kubernetes.imagePullPolicy: must be one of Always, IfNotPresent"),
    ("kubernetes.imagePullSecrets", ["regcred", "Bad_Name"], "kubernetes.imagePullSecrets[1]: must be a Secret name"),
    ("kubernetes.namespace", "Default", "kubernetes.namespace: 'Default' is not a valid name"),
    ("kubernetes.resources", {"requests": {"cpu": ["1"]}}, "kubernetes.resources.requests.cpu: must be a quantity"),
    ("kubernetes.resources", {"request": {"cpu": "1"}}, "kubernetes.resources.request: unknown key"),
    ("kubernetes.resources", {"limits": "1Gi"}, "kubernetes.resources.limits: must be an object"),
    ("kubernetes.labels", {"team": 7}, "kubernetes.labels.team: must be a string (got int 7)"),
    ("kubernetes.startupTimeoutSeconds", 0, "kubernetes.startupTimeoutSeconds: must be >= 1 (got 0)"),
    ("kubernetes.modelConfigMap", "", "kubernetes.modelConfigMap: must be a non-empty string or null"),
    ("kubernetes.securityContext", [], "kubernetes.securityContext: must be an object (got a list)"),
    ("kubernetes.hostNetwork", True, "kubernetes.hostNetwork: unknown key"),
    ("kubernetes.nodeSelector", {"pool": 1}, "kubernetes.nodeSelector.pool: must be a string (got int 1)"),
    ("kubernetes.tolerations", ["batch"], "kubernetes.tolerations[0]: must be an object (got the string 'batch')"),
    ("kubernetes.tolerations", {"key": "x"}, "kubernetes.tolerations: must be a list"),
    ("kubernetes.affinity", [], "kubernetes.affinity: must be an object (got a list)"),
    ("kubernetes.annotations", {"a": True}, "kubernetes.annotations.a: must be a string (got true)"),
    ("extra", 1, "extra: unknown key (known keys: version, platform"),
    ("env", {"PGSSLMODE": 1}, "env.PGSSLMODE: must be a string (got int 1)"),
    ("env", {"BAD-NAME": "x"}, "env.BAD-NAME: is not an env var name"),
    ("env", {"DATASURFACE_MERGE_HOST": "x"}, "env.DATASURFACE_MERGE_HOST: is set from the model/merge settings"),
    ("env", {"MERGE_PASSWORD": "x"}, "env.MERGE_PASSWORD: is set from the model/merge settings or secretEnv"),
    ("kubernetes.secretMounts", {"secret": "ca"}, "kubernetes.secretMounts: must be a list"),
    ("kubernetes.secretMounts", [{"secret": "ca", "key": "ca.crt", "path": "ca.crt"}],
     "kubernetes.secretMounts[0].mountPath: required"),
    ("kubernetes.secretMounts", [{"secret": "ca", "key": "k", "path": "p", "mountPath": "relative"}],
     "kubernetes.secretMounts[0].mountPath: must be an absolute folder other than /tmp and /model"),
    ("kubernetes.secretMounts", [{"secret": "ca", "key": "k", "path": "p", "mountPath": "/tmp"}],
     "kubernetes.secretMounts[0].mountPath: must be an absolute folder other than /tmp and /model"),
    ("kubernetes.secretMounts", [{"secret": "Bad_Name", "key": "k", "path": "p", "mountPath": "/ca"}],
     "kubernetes.secretMounts[0].secret: 'Bad_Name' is not a valid name"),
    ("kubernetes.secretMounts", [{"secret": "a", "key": "k", "path": "p", "mountPath": "/ca"},
                                 {"secret": "b", "key": "k", "path": "p", "mountPath": "/ca"}],
     "kubernetes.secretMounts[1].mountPath: duplicate mountPath '/ca'"),
    ("kubernetes.secretMounts", [{"secret": "a", "key": "k", "path": "p", "mountPath": "/ca", "mode": 1}],
     "kubernetes.secretMounts[0].mode: unknown key"),
]


@pytest.mark.parametrize(("path", "value", "message"), REJECTED, ids=[f"{p}={v!r}"[:60] for p, v, _ in REJECTED])
def test_rejected_settings_name_the_key_and_the_problem(dags_module: ModuleType, path: str, value: Any,
                                                        message: str) -> None:
    data = example_settings()
    _set(path, value)(data)
    with pytest.raises(dags_module.PlatformSettingsError) as err:
        dags_module.parse_settings(data)
    assert message in str(err.value)


@pytest.mark.parametrize("data", [[], "platform", None, 1])
def test_settings_must_be_an_object(dags_module: ModuleType, data: Any) -> None:
    with pytest.raises(dags_module.PlatformSettingsError, match=r"\(top level\): must be an object"):
        dags_module.parse_settings(data)


def test_every_problem_is_reported_at_once(dags_module: ModuleType) -> None:
    data = example_settings(mode="scd2", retries=-1)
    data["kubernetes"]["image"] = ""
    with pytest.raises(dags_module.PlatformSettingsError) as err:
        dags_module.parse_settings(data)
    text = str(err.value)
    assert "mode: must be one of" in text and "retries: must be >= 0" in text
    assert "kubernetes.image: must be a non-empty string" in text


def test_local_runner_needs_no_kubernetes_section_but_checks_one_given(dags_module: ModuleType) -> None:
    data = example_settings(runner="local")
    del data["kubernetes"]
    assert dags_module.parse_settings(data).kubernetes is None
    data = example_settings(runner="local")
    data["kubernetes"]["imagePullPolicy"] = "Sometimes"
    with pytest.raises(dags_module.PlatformSettingsError, match=r"kubernetes\.imagePullPolicy"):
        dags_module.parse_settings(data)


def test_load_settings_names_the_file(dags_module: ModuleType, tmp_path: Path) -> None:
    missing = tmp_path / "platform.json"
    error = dags_module.PlatformSettingsError
    with pytest.raises(error, match=re.escape(f"{missing}: cannot read the platform settings")):
        dags_module.load_settings(missing)
    missing.write_text("{not json")
    with pytest.raises(error, match=re.escape(f"{missing}: not valid JSON")):
        dags_module.load_settings(missing)
    missing.write_text(json.dumps(example_settings(mode="x")))
    with pytest.raises(error, match=re.escape(f"{missing}: mode: must be one of")):
        dags_module.load_settings(missing)
    missing.write_text(json.dumps(EXAMPLE_SETTINGS))
    assert dags_module.load_settings(missing).platform == "YellowLive"


@pytest.mark.parametrize(("settings", "message"), [
    (example_settings(mode="scd2"), "platform.json: mode: must be one of live, forensic"),
    (example_settings(schedule="every hour"), "platform.json: schedule: not a valid Airflow schedule"),
    (example_settings(infrastructureSchedule="61 * * * *"), "platform.json: infrastructureSchedule: not a valid"),
    ("{\"version\": 1,", "platform.json: not valid JSON"),
])
def test_bad_settings_are_an_airflow_import_error_naming_the_problem(tmp_path: Path, settings: Any,
                                                                     message: str) -> None:
    folder = write_platform(tmp_path / "yellowlive", settings)
    bag = dag_bag(tmp_path)
    assert bag.dags == {}
    assert list(bag.import_errors) == [str(folder / "datasurface_dags.py")]
    assert message in next(iter(bag.import_errors.values()))


def test_missing_settings_file_is_an_import_error(tmp_path: Path) -> None:
    folder = write_platform(tmp_path / "p", example_settings())
    (folder / "platform.json").unlink()
    bag = dag_bag(tmp_path)
    assert "platform.json: cannot read the platform settings" in bag.import_errors[str(folder / "datasurface_dags.py")]


def test_slack_notice_is_best_effort(dags_module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """No env var: no notice; an unreachable or invalid webhook: logged, never raised into Airflow."""
    import socket

    settings = dags_module.parse_settings(example_settings(slackWebhookEnv="DS_TEST_UNREACHABLE_HOOK"))
    notify = dags_module.slack_notifier(settings, "ingestion of store Store1")
    assert dags_module.slack_notifier(dags_module.parse_settings(example_settings(slackWebhookEnv=None)), "x") is None
    monkeypatch.delenv("DS_TEST_UNREACHABLE_HOOK", raising=False)
    notify({})
    with socket.socket() as s:  # a port nothing listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for url in (f"http://127.0.0.1:{port}/hook", "not a url", "file:///etc/passwd"):
        monkeypatch.setenv("DS_TEST_UNREACHABLE_HOOK", url)
        notify({"ti": None, "exception": RuntimeError("boom")})


def test_a_section_of_the_wrong_type_is_one_error(dags_module: ModuleType) -> None:
    with pytest.raises(dags_module.PlatformSettingsError) as err:
        dags_module.parse_settings(example_settings(merge=["mvp-datasurface-postgresql"]))
    assert str(err.value) == "merge: must be an object (got a list)"
