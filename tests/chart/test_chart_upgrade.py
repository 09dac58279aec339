"""`helm upgrade` from 2 to 3 to 1 platforms: exactly the expected DAG ConfigMaps appear and disappear,
the Airflow pods' checksum/dags changes (so they roll), and nothing else changes."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

Docs = list[dict[str, Any]]
PLATFORMS = {
    "YellowLive": {"name": "YellowLive", "mode": "live", "stores": ["Store1"], "schedule": "@hourly"},
    "YellowForensic": {"name": "YellowForensic", "mode": "forensic", "stores": ["Store1"], "schedule": "@hourly"},
    "Blue": {"name": "Blue", "mode": "live", "stores": ["Store1"], "schedule": "*/15 * * * *"},
}
STEPS = [["YellowLive", "YellowForensic"], ["YellowLive", "YellowForensic", "Blue"], ["YellowLive"]]
DAG_PODS = ["mvp-datasurface-airflow-scheduler", "mvp-datasurface-airflow-dag-processor"]


def is_platform_cm(doc: dict[str, Any]) -> bool:
    return doc["kind"] == "ConfigMap" and "datasurface.io/platform" in doc["metadata"]["labels"]


def normalized_rest(docs: Docs) -> dict[tuple[str, str], Any]:
    """Everything but the platform ConfigMaps, with the parts expected to change blanked out: the
    checksum and the DAGs volume's sources (they name the ConfigMaps), and generated Secret values
    (`helm template` cannot `lookup`, so they are fresh on each render; a cluster keeps them)."""
    out = {}
    for doc in docs:
        if is_platform_cm(doc):
            continue
        doc = copy.deepcopy(doc)
        if doc["kind"] == "Secret":
            doc["data"] = dict.fromkeys(doc["data"], "<generated>")
        template = doc.get("spec", {}).get("template", {})
        template.get("metadata", {}).get("annotations", {}).pop("checksum/dags", None)
        for volume in template.get("spec", {}).get("volumes", []):
            if volume["name"] == "dags":
                volume["projected"]["sources"] = "<platform ConfigMaps>"
        out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


@pytest.fixture(scope="module")
def steps(render: Callable[..., Docs]) -> list[Docs]:
    return [render({"platforms": [PLATFORMS[name] for name in step]}) for step in STEPS]


def platform_cms(docs: Docs) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if is_platform_cm(d)}


def checksum(docs: Docs, name: str) -> str:
    doc = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
    value: str = doc["spec"]["template"]["metadata"]["annotations"]["checksum/dags"]
    return value


def test_configmaps_appear_and_disappear(steps: list[Docs]) -> None:
    expected = [{f"mvp-datasurface-dags-{name.lower()}" for name in step} for step in STEPS]
    assert [set(platform_cms(docs)) for docs in steps] == expected
    # a platform that stays keeps its ConfigMap byte for byte
    kept = "mvp-datasurface-dags-yellowlive"
    assert platform_cms(steps[0])[kept] == platform_cms(steps[1])[kept] == platform_cms(steps[2])[kept]


def test_checksum_changes_on_every_step(steps: list[Docs]) -> None:
    for name in DAG_PODS:
        sums = [checksum(docs, name) for docs in steps]
        assert len(set(sums)) == 3, name


def test_checksum_changes_when_a_platform_changes(render: Callable[..., Docs]) -> None:
    base = render({"platforms": [PLATFORMS["YellowLive"]]})
    changed = render({"platforms": [{**PLATFORMS["YellowLive"], "schedule": "@daily"}]})
    assert checksum(base, DAG_PODS[0]) != checksum(changed, DAG_PODS[0])
    again = render({"platforms": [dict(PLATFORMS["YellowLive"])], "simulator": {"verbose": False}})
    assert checksum(base, DAG_PODS[0]) == checksum(again, DAG_PODS[0]), "stable for the same platforms"


def test_dags_volume_follows_the_platforms(steps: list[Docs]) -> None:
    for step, docs in zip(STEPS, steps, strict=True):
        for name in DAG_PODS:
            doc = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
            volume = next(v for v in doc["spec"]["template"]["spec"]["volumes"] if v["name"] == "dags")
            names = [s["configMap"]["name"] for s in volume["projected"]["sources"][1:]]
            assert names == [f"mvp-datasurface-dags-{p.lower()}" for p in step]


def test_nothing_else_changes(steps: list[Docs]) -> None:
    first = normalized_rest(steps[0])
    for docs in steps[1:]:
        other = normalized_rest(docs)
        assert set(other) == set(first)
        changed = [key for key in first if first[key] != other[key]]
        assert not changed, changed
