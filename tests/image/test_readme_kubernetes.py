"""docs/install.md "Run on Kubernetes" stays true: the objects it names are the ones the chart
renders, its values snippets are valid values that render, and the script options it lists exist."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import yaml

from tests.support.dockerfile import REPO_ROOT
from tests.support.helm import CHART_DIR, find, render_chart

README = (REPO_ROOT / "docs" / "install.md").read_text()
VALUES_MVP = REPO_ROOT / "examples" / "values-mvp.yaml"


def section() -> str:
    start = README.index("## Run on Kubernetes")
    end = README.find("\n## ", start + 1)
    return README[start:] if end < 0 else README[start:end]


def yaml_blocks() -> list[dict[str, Any]]:
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section(), re.S)]


def test_readme_names_what_the_chart_renders() -> None:
    docs = render_chart(values_files=[VALUES_MVP], namespace="datasurface")
    api = find(docs, "Service", "mvp-datasurface-airflow-api-server")
    assert 8080 in [p["port"] for p in api["spec"]["ports"]]
    assert "admin-password" in find(docs, "Secret", "mvp-datasurface-airflow")["data"]
    assert "replicas" not in find(docs, "Deployment", "mvp-datasurface-simulator")["spec"]
    for kind, name in (("StatefulSet", "mvp-datasurface-postgresql"), ("Pod", "mvp-datasurface-check"),
                       ("Role", "mvp-datasurface-pod-launcher"), ("Secret", "mvp-datasurface-postgresql"),
                       ("Deployment", "mvp-datasurface-airflow-scheduler"),
                       ("Deployment", "mvp-datasurface-airflow-dag-processor"),
                       ("ConfigMap", "mvp-datasurface-dags-yellowlive")):
        find(docs, kind, name)
        assert name.replace("mvp-datasurface-", "").replace("yellowlive", "<platform>") in section()


def test_readme_values_snippets_are_valid_and_render() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    blocks = yaml_blocks()
    assert len(blocks) == 2
    platforms, external = blocks
    mvp = yaml.safe_load(VALUES_MVP.read_text())
    for snippet in (platforms, external):
        jsonschema.validate({**mvp, **snippet}, schema)

    docs = render_chart(values_files=[VALUES_MVP], values=platforms)
    assert sorted(d["metadata"]["labels"]["datasurface.io/platform"] for d in docs
                  if d["kind"] == "ConfigMap" and "datasurface.io/platform" in d["metadata"]["labels"]) == [
        "bluelive", "yellowforensic", "yellowlive"]

    docs = render_chart(values_files=[VALUES_MVP], values=external)
    assert not [d for d in docs if d["kind"] == "StatefulSet"]
    settings = json.loads(find(docs, "ConfigMap", "mvp-datasurface-dags-yellowlive")["data"]["platform.json"])
    assert settings["merge"]["host"] == external["externalDatabase"]["host"]
    assert {e["secret"] for e in settings["secretEnv"] if e["name"].startswith("MERGE_")} == {
        external["externalDatabase"]["existingSecret"]}


def test_readme_script_options_exist() -> None:
    usage = (REPO_ROOT / "scripts" / "kind-up.sh").read_text()
    for option in re.findall(r"`(--[a-z-]+)`", section()):
        assert f"#   {option}" in usage, option
    assert "scripts/kind-down.sh" in section() and (REPO_ROOT / "scripts" / "kind-down.sh").exists()
