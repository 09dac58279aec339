"""The helm-unittest suites (charts/datasurface/tests/*_test.yaml) are for users' CI, where the plugin is
installed. Here a small evaluator runs the same suites with the real `helm template` for the assertion
kinds they use, so the suites cannot silently rot."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.support.helm import CHART_DIR, render_chart_text

SUITES = sorted((CHART_DIR / "tests").glob("*_test.yaml"))
_TOKEN = re.compile(r'([^.\[\]]+)|\[(\d+)\]|\["([^"]+)"\]')


def get_path(doc: Any, path: str) -> Any:
    for key, index, quoted in _TOKEN.findall(path):
        if index:
            doc = doc[int(index)]
        else:
            doc = doc[quoted or key]
    return doc


def has_path(doc: Any, path: str) -> bool:
    try:
        get_path(doc, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


def set_path(values: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        values = values.setdefault(part, {})
    values[parts[-1]] = value


def render_template(template: str, values: dict[str, Any], release: dict[str, str]) -> list[dict[str, Any]]:
    text = render_chart_text(values, show_only=template, release=release.get("name", "RELEASE-NAME"),
                             namespace=release.get("namespace", "NAMESPACE"))
    return [d for d in yaml.safe_load_all(text) if d]


def check(assertion: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    (kind, spec), = ((k, v) for k, v in assertion.items() if k != "documentIndex")
    if kind == "hasDocuments":
        assert len(docs) == spec["count"]
        return
    targets = [docs[assertion["documentIndex"]]] if "documentIndex" in assertion else docs
    assert targets, f"{kind}: no document"
    for doc in targets:
        if kind == "isKind":
            assert doc["kind"] == spec["of"]
        elif kind == "equal":
            assert get_path(doc, spec["path"]) == spec["value"], spec["path"]
        elif kind == "exists":
            assert has_path(doc, spec["path"]), spec["path"]
        elif kind == "notExists":
            assert not has_path(doc, spec["path"]), spec["path"]
        elif kind == "contains":
            assert spec["content"] in get_path(doc, spec["path"]), spec
        elif kind == "notContains":
            assert spec["content"] not in get_path(doc, spec["path"]), spec
        elif kind == "matchRegex":
            assert re.search(spec["pattern"], get_path(doc, spec["path"])), spec
        else:
            raise AssertionError(f"assertion {kind} not supported by this evaluator")


def cases() -> list[Any]:
    out = []
    for suite_path in SUITES:
        suite = yaml.safe_load(suite_path.read_text())
        for test in suite["tests"]:
            out.append(pytest.param(suite, test, id=f"{suite_path.stem}: {test['it']}"))
    return out


def test_suites_exist_and_name_real_templates() -> None:
    assert len(SUITES) >= 4
    for suite_path in SUITES:
        suite = yaml.safe_load(suite_path.read_text())
        for template in suite["templates"]:
            assert (CHART_DIR / template).is_file(), f"{suite_path.name}: {template}"


@pytest.mark.parametrize(("suite", "test"), cases())
def test_unittest_case(suite: dict[str, Any], test: dict[str, Any]) -> None:
    values: dict[str, Any] = {}
    for dotted, value in (test.get("set") or {}).items():
        set_path(values, dotted, value)
    templates = [test["template"]] if "template" in test else suite["templates"]
    release = suite.get("release", {})
    if any("failedTemplate" in a for a in test["asserts"]):
        with pytest.raises(RuntimeError):
            render_template(templates[0], values, release)
        return
    for template in templates:
        try:
            docs = render_template(template, values, release)
        except RuntimeError as exc:
            if "could not find template" in str(exc):
                docs = []  # helm --show-only fails for a template that renders nothing
            else:
                raise
        for assertion in test["asserts"]:
            check(assertion, docs)
