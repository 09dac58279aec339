"""Fixtures of the DAG tests. Importing `dag_support` points Airflow at a private AIRFLOW_HOME; nothing here
imports airflow at module level, so that happens before Airflow reads its configuration."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from dag_support import AIRFLOW_HOME, DAGS_FOLDER, example_settings, write_platform


@pytest.fixture(scope="session")
def dags_module(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The DAG module imported as a library (beside a valid platform.json), for its unit tests."""
    folder = write_platform(tmp_path_factory.mktemp("module"), example_settings())
    spec = importlib.util.spec_from_file_location("datasurface_dags_under_test", folder / "datasurface_dags.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """`airflow db migrate` on the private SQLite database (once per session)."""
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                   capture_output=True, text=True, timeout=600)
    return AIRFLOW_HOME / "airflow.db"


@pytest.fixture
def dags_subfolder(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Path]]:
    """Folders inside the configured DAGS_FOLDER (dag.test() syncs that bundle); removed after the test."""
    made: list[Path] = []

    def make(name: str) -> Path:
        path = DAGS_FOLDER / f"{request.node.name[:40]}-{name}".replace("[", "_").replace("]", "_")
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kubeconfig naming a cluster that is never contacted: lets KPO build its pod spec offline."""
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": "https://kubernetes.invalid"}}],
        "users": [{"name": "test", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))
    # The provider's default connection, pointed at that file (KUBECONFIG is read when kubernetes is imported).
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": str(path)}}))
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(var, raising=False)
    return path
