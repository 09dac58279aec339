"""Helm 4 first, and Helm 3.18+ still works: the chart lints and renders the same objects with Helm 3.18
as with Helm 4 for every chart-testing values set."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.helm import CHART_DIR, CI_VALUES, REPO_ROOT, ci_id, helm_env, render_chart


@pytest.fixture(scope="module")
def helm3() -> str:
    out = subprocess.run([str(REPO_ROOT / "scripts" / "get-helm.sh"), "--helm3"], check=True, capture_output=True,
                         text=True)
    path = out.stdout.strip().splitlines()[-1]
    version = subprocess.run([path, "version", "--short"], check=True, capture_output=True, text=True).stdout
    major, minor = (int(x) for x in version.strip().lstrip("v").split(".")[:2])
    assert (major, minor) >= (3, 18) and major == 3, version
    return path


def _comparable(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Generated secrets differ on every render: compare everything else."""
    for doc in docs:
        if doc.get("kind") == "Secret":
            doc["data"] = sorted(doc.get("data") or {})
    return sorted(docs, key=lambda d: (d["kind"], d["metadata"]["name"]))


@pytest.mark.parametrize("values", CI_VALUES, ids=ci_id)
def test_helm3_lints_and_renders_like_helm4(helm3: str, values: Path) -> None:
    env = helm_env()
    lint = subprocess.run([helm3, "lint", "--strict", str(CHART_DIR), "--values", str(values)], env=env,
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = subprocess.run([helm3, "template", "mvp", str(CHART_DIR), "--namespace", "default", "--values",
                               str(values)], env=env, capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    helm3_docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert _comparable(helm3_docs) == _comparable(render_chart(values_files=[values]))
