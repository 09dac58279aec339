"""A real Airflow 3 for the DAG tests, in a private AIRFLOW_HOME (SQLite metadata database), and helpers.

Airflow reads its configuration when it is first imported, so the environment is set when this module is
imported: first thing in conftest.py, before any test module imports airflow. These tests run in `.venv-airflow`
(scripts/airflow-venv.sh), whose bin folder holds `airflow` and `datasurface-job`.
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="ds-airflow-home-"))
DAGS_FOLDER = AIRFLOW_HOME / "dags"
DAGS_FOLDER.mkdir()
LOG_BASE_URL = "http://airflow.example.test:8080"
os.environ.update({
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
    "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(AIRFLOW_HOME / "logs"),
    "AIRFLOW__API__BASE_URL": LOG_BASE_URL,
})
# The local runner finds `datasurface-job` on PATH: the one installed beside this interpreter.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
atexit.register(shutil.rmtree, AIRFLOW_HOME, True)

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_MODULE = REPO_ROOT / "charts" / "datasurface" / "files" / "dags" / "datasurface_dags.py"

# platform.json as the chart renders it (the chart/DAG interface), for YellowLive.
EXAMPLE_SETTINGS: dict[str, Any] = {
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
    "model": {"repo": "https://github.com/x/y.git", "ref": "main", "path": "datasurface.yaml"},
    "merge": {"host": "mvp-datasurface-postgresql", "port": 5432, "database": "merge_db", "credential": "merge"},
    "secretEnv": [
        {"name": "MERGE_USER", "secret": "mvp-datasurface-postgresql", "key": "merge-username"},
        {"name": "MERGE_PASSWORD", "secret": "mvp-datasurface-postgresql", "key": "merge-password"},
        {"name": "SOURCE_USER", "secret": "mvp-datasurface-postgresql", "key": "source-username"},
        {"name": "SOURCE_PASSWORD", "secret": "mvp-datasurface-postgresql", "key": "source-password"},
        {"name": "DATASURFACE_GIT_TOKEN", "secret": "git", "key": "token", "optional": True},
    ],
    "slackWebhookEnv": "DATASURFACE_SLACK_WEBHOOK",
    "kubernetes": {
        "namespace": "default",
        "image": "ghcr.io/datasurface/datasurface-job:0.3.0",
        "imagePullPolicy": "IfNotPresent",
        "imagePullSecrets": [],
        "serviceAccountName": None,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "labels": {"app.kubernetes.io/part-of": "datasurface"},
        "startupTimeoutSeconds": 300,
        "modelConfigMap": None,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
        "containerSecurityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                     "capabilities": {"drop": ["ALL"]},
                                     "seccompProfile": {"type": "RuntimeDefault"}},
    },
}


def example_settings(**overrides: Any) -> dict[str, Any]:
    """A deep copy of EXAMPLE_SETTINGS with top-level keys replaced."""
    settings = copy.deepcopy(EXAMPLE_SETTINGS)
    settings.update(copy.deepcopy(overrides))
    return settings


def write_platform(folder: Path, settings: dict[str, Any] | str, module: str | None = None) -> Path:
    """A platform's folder as Airflow sees the mounted ConfigMap: the DAG module and platform.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "datasurface_dags.py").write_text(module if module is not None else DAG_MODULE.read_text())
    text = settings if isinstance(settings, str) else json.dumps(settings, indent=2)
    (folder / "platform.json").write_text(text)
    return folder


def dag_bag(folder: Path) -> Any:
    """A real DagBag over the folder (what the dag-processor does)."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(folder))
