"""The package installs cleanly into an Airflow environment (issue 11, item 2).

scripts/airflow-venv.sh builds .venv-airflow as a user builds an Airflow image with the package: Airflow
(the chart's version) and its providers first, `pip list` kept as airflow-baseline.json, then the project
into that environment. Whatever the project's dependencies are (today and as they grow), installing it
must change none of Airflow's packages, leave `pip check` clean, and give a working `datasurface-job`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

VENV = Path(sys.prefix)
BASELINE = VENV / "airflow-baseline.json"
PROJECT = "datasurface-k8s"


def pip_list() -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(out)}


@pytest.fixture(scope="module")
def baseline() -> dict[str, str]:
    if not BASELINE.exists():
        pytest.fail(f"{BASELINE} missing: build the venv with scripts/airflow-venv.sh")
    return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(BASELINE.read_text())}


def test_airflow_is_the_charts_version_with_its_providers(baseline: dict[str, str]) -> None:
    values = (Path(__file__).resolve().parents[2] / "charts" / "datasurface" / "values.yaml").read_text()
    import yaml

    tag = yaml.safe_load(values)["airflow"]["image"]["tag"]
    assert baseline["apache-airflow"] == tag
    assert "apache-airflow-providers-cncf-kubernetes" in baseline
    assert PROJECT not in baseline, "the baseline is Airflow alone, before the project"


def test_installing_the_package_changed_none_of_airflows_packages(baseline: dict[str, str]) -> None:
    now = pip_list()
    assert PROJECT in now
    changed = {name: f"{version} -> {now.get(name, 'removed')}" for name, version in baseline.items()
               if now.get(name) != version}
    assert not changed, f"installing {PROJECT} changed Airflow's environment (pin less): {changed}"


def test_pip_check_is_clean() -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "check", "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_job_cli_runs_in_the_airflow_environment() -> None:
    proc = subprocess.run([str(VENV / "bin" / "datasurface-job"), "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in ("merge", "reset-batch", "setup", "status", "check", "simulate"):
        assert command in proc.stdout
    # a usage error is still exit 2 with the typer Airflow brings (its click exceptions, wherever they live)
    proc = subprocess.run([str(VENV / "bin" / "datasurface-job"), "merge", "--platform", "P"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "DATASURFACE_RESULT_CODE=2"
