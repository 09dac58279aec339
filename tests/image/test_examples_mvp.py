"""The example model and examples/values-mvp.yaml (issue 6 item 2), and what scripts/kind-up.sh feeds
the chart: validated with the project's own model validator, the chart's values.schema.json and the real
`helm template`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from datasurface.model import load_model, parse_model
from tests.support.dockerfile import DOCKERFILE, REPO_ROOT, key_values, stages
from tests.support.helm import CHART_DIR, find, render_chart
from tests.support.shell import commands

EXAMPLE_MODEL = REPO_ROOT / "examples" / "model" / "datasurface.yaml"
VALUES_MVP = REPO_ROOT / "examples" / "values-mvp.yaml"
KIND_UP = REPO_ROOT / "scripts" / "kind-up.sh"
VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
CONTRACT_KEYS = {"image", "model", "platforms", "postgresql", "airflow", "simulator"}


def platform_json(docs: list[dict[str, Any]], platform: str) -> dict[str, Any]:
    cm = find(docs, "ConfigMap", f"mvp-datasurface-dags-{platform.lower()}")
    assert cm["metadata"]["labels"]["datasurface.io/platform"] == platform.lower()
    return json.loads(cm["data"]["platform.json"])  # type: ignore[no-any-return]


# --- the example model ---------------------------------------------------------------------------------


def test_example_model_is_valid_for_the_job() -> None:
    model = parse_model(EXAMPLE_MODEL.read_text(), str(EXAMPLE_MODEL))
    assert load_model(str(EXAMPLE_MODEL.parent)).stores == model.stores
    store, changes = model.stores  # the same tables, as snapshots and as changes (ingestion: cdc)
    assert (store.name, store.source.ingestion) == ("Store1", "snapshot")
    assert (changes.name, changes.source.ingestion) == ("Store3", "cdc")
    assert changes.datasets == store.datasets
    assert changes.source == store.source._replace(ingestion="cdc", publication="ds_store3")
    assert (store.source.host, store.source.port, store.source.database) == (
        "mvp-datasurface-postgresql", 5432, "customer_db")
    assert store.source.credential == "source"
    assert [d.name for d in store.datasets] == ["customers", "addresses"]
    assert all(list(d.primary_key) == ["id"] for d in store.datasets)


# --- examples/values-mvp.yaml --------------------------------------------------------------------------


def values_mvp() -> dict[str, Any]:
    return yaml.safe_load(VALUES_MVP.read_text())  # type: ignore[no-any-return]


def test_values_mvp_is_the_reference_setup_in_public_keys() -> None:
    values = values_mvp()
    assert set(values) <= CONTRACT_KEYS
    assert values["platforms"] == [
        {"name": "YellowLive", "mode": "live", "stores": ["Store1"], "schedule": "@hourly"},
        {"name": "YellowForensic", "mode": "forensic", "stores": ["Store1"], "schedule": "@hourly"},
    ]
    assert values["simulator"]["enabled"] is True
    assert values["postgresql"]["enabled"] is True and values["airflow"]["enabled"] is True


def test_values_mvp_validates_against_the_chart_schema() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)
    errors = sorted(validator.iter_errors(values_mvp()), key=str)
    assert errors == []
    # The schema is strict: a misspelt key in the example would be caught.
    assert list(validator.iter_errors({**values_mvp(), "simulater": {"enabled": True}}))


def test_values_mvp_renders_both_platforms_and_the_simulator() -> None:
    docs = render_chart(values_files=[VALUES_MVP])
    for name, mode in (("YellowLive", "live"), ("YellowForensic", "forensic")):
        settings = platform_json(docs, name)
        assert (settings["platform"], settings["mode"], settings["stores"], settings["schedule"]) == (
            name, mode, ["Store1"], "@hourly")
        # The job pods run as the image's user.
        assert settings["kubernetes"]["securityContext"]["runAsUser"] == 10001
    dag_maps = [d for d in docs if d["kind"] == "ConfigMap" and "datasurface.io/platform" in d["metadata"]["labels"]]
    assert len(dag_maps) == 2
    assert [d for d in docs if d["kind"] == "Deployment" and "simulator" in d["metadata"]["name"]]


# --- the chart and the image agree ---------------------------------------------------------------------


def test_chart_app_version_and_image_labels_match_the_project() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["appVersion"] == VERSION  # build-image.sh tags datasurface-job:<pyproject version>
    final = stages(DOCKERFILE.read_text())[-1]
    args = {i.args.partition("=")[0]: i.args.partition("=")[2] for i in final.all("ARG")}
    assert args["SOURCE"] in chart.get("sources", [])
    assert [u.args for u in final.all("USER")] == ["10001:10001"]
    env: dict[str, str] = {}
    for ins in final.all("ENV"):
        env.update(key_values(ins.args))
    assert env["TMPDIR"] == "/tmp"  # the chart's job pods mount their writable emptyDir there


# --- what kind-up.sh gives the chart -------------------------------------------------------------------


def kind_up_overrides(model_url: str) -> dict[str, Any]:
    """The `--set-string k=v` pairs of kind-up.sh's `helm upgrade --install`, as values."""
    values: dict[str, Any] = {}
    text = KIND_UP.read_text().replace("$model_url", model_url).replace("$version", VERSION)
    pairs = re.findall(r'--set-string "([^=]+)=([^"]*)"', text)
    assert {k for k, _ in pairs} == {"model.repo", "model.ref", "image.repository", "image.tag",
                                     "image.pullPolicy"}
    for key, value in pairs:
        head, leaf = key.split(".")
        values.setdefault(head, {})[leaf] = value
    return values


def test_kind_up_overrides_render_a_cloned_model_and_the_local_image() -> None:
    url = "git://model-git.datasurface.svc.cluster.local/model.git"
    docs = render_chart(values=kind_up_overrides(url), values_files=[VALUES_MVP], namespace="datasurface")
    settings = platform_json(docs, "YellowLive")
    assert settings["model"] == {"repo": url, "ref": "main", "path": "datasurface.yaml"}
    assert settings["kubernetes"]["image"] == f"datasurface-job:{VERSION}"
    assert settings["kubernetes"]["modelConfigMap"] is None
    assert settings["kubernetes"]["namespace"] == "datasurface"


def status_pod_builder() -> str:
    match = re.search(r"<<'PY'\n(.*?)\nPY\n", KIND_UP.read_text(), re.S)
    assert match, "kind-up.sh: no status pod builder"
    return match.group(1)


def test_kind_up_status_pod_is_a_valid_restricted_job_pod(tmp_path: Path) -> None:
    """kind-up.sh builds its `datasurface-job status` pod from the chart's platform.json."""
    docs = render_chart(values_files=[VALUES_MVP])
    raw = find(docs, "ConfigMap", "mvp-datasurface-dags-yellowlive")["data"]["platform.json"]
    proc = subprocess.run([sys.executable, "-", raw, "datasurface-status-1"], input=status_pod_builder(),
                          capture_output=True, text=True, check=True)
    overrides = json.loads(proc.stdout)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "datasurface-status-1"},
           "spec": overrides["spec"]}
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(pod))
    validate = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "--quiet",
                               "-k", "1.30.0", str(manifest)], capture_output=True, text=True)
    assert validate.returncode == 0, validate.stdout + validate.stderr

    (container,) = pod["spec"]["containers"]
    assert container["name"] == "datasurface-status-1"
    assert container["args"][0] == "status"
    env = {e["name"]: e for e in container["env"]}
    assert env["DATASURFACE_PLATFORM"]["value"] == "YellowLive"
    assert env["DATASURFACE_MERGE_HOST"]["value"] == "mvp-datasurface-postgresql"
    assert env["MERGE_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mvp-datasurface-postgresql"
    assert all("value" not in e for n, e in env.items() if n.endswith(("_USER", "_PASSWORD")))
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_kind_up_finds_the_scheduler_by_the_charts_labels() -> None:
    """kind-up.sh execs `airflow dags trigger` in the pod labelled instance=<release>, component=scheduler."""
    selectors = [argv[argv.index("-l") + 1] for argv in commands(KIND_UP.read_text())
                 if "pods" in argv and "-l" in argv[:-1]]
    assert "app.kubernetes.io/instance=$release,app.kubernetes.io/component=scheduler" in selectors
    docs = render_chart(values_files=[VALUES_MVP])
    matching = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
                and d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "scheduler"
                and d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/instance") == "mvp"]
    assert len(matching) == 1
