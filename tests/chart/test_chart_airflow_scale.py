"""Airflow at scale in the chart: parallelism and max active tasks reach every Airflow container, the job
tasks' pool is created by the scheduler's init container, the triggerer runs when enabled, and `deferrable`
reaches platform.json only with a triggerer and the kubernetes runner."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.helm import CHART_DIR, find, run_helm

Render = Callable[..., list[dict[str, Any]]]
AF = "mvp-datasurface-airflow"
AT_SCALE = {"platformDefaults": {"deferrable": True},
            "airflow": {"parallelism": 12, "maxActiveTasksPerDag": 3,
                        "triggerer": {"enabled": True},
                        "pool": {"name": "datasurface", "slots": 8, "includeDeferred": True}}}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _pod(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return find(docs, "Deployment", f"{AF}-{component}")["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _settings(docs: list[dict[str, Any]], lower: str) -> dict[str, Any]:
    return json.loads(find(docs, "ConfigMap", f"mvp-datasurface-dags-{lower}")["data"]["platform.json"])  # type: ignore[no-any-return]


def test_defaults_keep_airflows_own_behaviour(defaults: list[dict[str, Any]]) -> None:
    assert not [d for d in defaults if d["metadata"]["name"] == f"{AF}-triggerer"]
    scheduler = _pod(defaults, "scheduler")
    assert [c["name"] for c in scheduler["initContainers"]] == ["wait-for-migrations"]
    assert _env(scheduler["containers"][0])["AIRFLOW__CORE__PARALLELISM"] == "32"  # Airflow's own default
    assert _env(scheduler["containers"][0])["AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG"] == "16"
    for lower in ("yellowlive", "yellowforensic"):
        assert not {"deferrable", "pool"} & set(_settings(defaults, lower))


def test_at_scale(render: Render) -> None:
    docs = render(AT_SCALE)
    for component in ("scheduler", "dag-processor", "api-server", "triggerer"):
        env = _env(_pod(docs, component)["containers"][0])
        assert (env["AIRFLOW__CORE__PARALLELISM"], env["AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG"]) == ("12", "3")
    scheduler = _pod(docs, "scheduler")
    wait, pool = scheduler["initContainers"]
    assert wait["name"] == "wait-for-migrations"  # the pool is written once the schema is there
    assert pool["name"] == "create-pool"
    assert pool["args"] == ["pools", "set", "datasurface", "8", "DataSurface job tasks", "--include-deferred"]
    assert pool["image"] == scheduler["containers"][0]["image"]
    assert pool["securityContext"]["readOnlyRootFilesystem"] is True
    triggerer = _pod(docs, "triggerer")
    [container] = triggerer["containers"]
    assert container["args"] == ["triggerer"]
    assert [c["name"] for c in triggerer["initContainers"]] == ["wait-for-migrations"]
    # the triggers read the job pods with the scheduler's ServiceAccount (bound to the pod-launcher Role)
    assert triggerer["automountServiceAccountToken"] is True
    assert triggerer["serviceAccountName"] == scheduler["serviceAccountName"]
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    assert container["livenessProbe"]["exec"]["command"][:4] == ["airflow", "jobs", "check", "--job-type"]
    for lower in ("yellowlive", "yellowforensic"):
        settings = _settings(docs, lower)
        assert (settings["deferrable"], settings["pool"]) == (True, "datasurface")


def test_extra_env_still_wins(render: Render) -> None:
    docs = render({"airflow": {"extraEnv": [{"name": "AIRFLOW__CORE__PARALLELISM", "value": "64"}]}})
    names = [e["name"] for e in _pod(docs, "scheduler")["containers"][0]["env"]]
    assert names.index("AIRFLOW__CORE__PARALLELISM") < len(names) - 1 - names[::-1].index(
        "AIRFLOW__CORE__PARALLELISM")  # the later entry is the one Kubernetes keeps
    assert _env(_pod(docs, "scheduler")["containers"][0])["AIRFLOW__CORE__PARALLELISM"] == "64"


def test_a_platforms_own_deferrable(render: Render) -> None:
    docs = render({"airflow": {"triggerer": {"enabled": True}}, "platforms": [
        {"name": "Pods", "mode": "live", "stores": ["S1"], "schedule": "@hourly", "deferrable": True},
        {"name": "Local", "mode": "live", "stores": ["S1"], "schedule": "@hourly", "runner": "local"}]})
    assert _settings(docs, "pods")["deferrable"] is True
    assert "deferrable" not in _settings(docs, "local")


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "platformDefaults.deferrable=true"], "set airflow.triggerer.enabled=true"),
    (["--set", "platformDefaults.deferrable=true", "--set", "airflow.triggerer.enabled=true",
      "--set", "platformDefaults.runner=local"], "only the kubernetes runner's pod tasks can be deferred"),
    (["--set", "airflow.pool.name=has space"], "pool"),
    (["--set", "airflow.parallelism=0"], "parallelism"),
    (["--set", "airflow.triggerer.replicas=2"], "triggerer"),
])
def test_refused(args: list[str], message: str) -> None:
    proc = run_helm(["template", "mvp", str(CHART_DIR), *args], check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
