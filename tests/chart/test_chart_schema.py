"""values.schema.json is the chart's public API: strict (no unknown keys), every property described and
defaulted, the defaults equal values.yaml, and the values files validate against it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.helm import CHART_DIR, CI_VALUES, ci_id

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(path, schema node, inside an array item) for every property."""
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}".lstrip("."), child, False
        yield from walk(child, f"{path}.{name}")
    items = node.get("items")
    if isinstance(items, dict):
        for sub_path, sub, _ in walk(items, f"{path}[]"):
            yield sub_path, sub, True
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for sub_path, sub, _ in walk(extra, f"{path}.*"):
            yield sub_path, sub, True


def test_every_object_is_closed() -> None:
    def objects(node: dict[str, Any], path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
        if "properties" in node:
            yield path, node
        for name, child in node.get("properties", {}).items():
            yield from objects(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            yield from objects(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from objects(node["additionalProperties"], f"{path}.*")

    for path, node in objects(SCHEMA):
        assert node.get("additionalProperties") is False, path


def test_every_property_has_a_description_and_default() -> None:
    for path, node, in_item in walk(SCHEMA):
        assert node.get("description"), f"{path}: no description"
        if not in_item:
            assert "default" in node, f"{path}: no default"


def lookup(values: Any, path: str) -> Any:
    for part in path.split("."):
        values = values[part]
    return values


def test_defaults_equal_values_yaml() -> None:
    for path, node, in_item in walk(SCHEMA):
        if in_item or "*" in path or path == "global":
            continue
        assert node["default"] == lookup(VALUES, path), path


def test_values_yaml_keys_are_all_in_the_schema() -> None:
    assert set(VALUES) <= set(SCHEMA["properties"])


@pytest.mark.parametrize("values_file", [CHART_DIR / "values.yaml", *CI_VALUES],
                         ids=lambda p: ci_id(p) if p in CI_VALUES else "values.yaml")
def test_values_files_validate(values_file: Path) -> None:
    merged = json.loads(json.dumps(VALUES))
    override = yaml.safe_load(values_file.read_text()) or {}

    def merge(base: dict[str, Any], over: dict[str, Any]) -> None:
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value

    merge(merged, override)
    jsonschema.Draft7Validator(SCHEMA).validate(merged)


@pytest.mark.parametrize("name", ["YellowLive", "A", "a1_B2"])
def test_platform_name_pattern_accepts(name: str) -> None:
    item = {"name": name, "mode": "live", "stores": ["S"], "schedule": "@hourly"}
    jsonschema.Draft7Validator(SCHEMA).validate({"platforms": [item]})


@pytest.mark.parametrize("name", ["1abc", "bad-name", "with space", "", "_x"])
def test_platform_name_pattern_rejects(name: str) -> None:
    item = {"name": name, "mode": "live", "stores": ["S"], "schedule": "@hourly"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMA).validate({"platforms": [item]})


@pytest.mark.parametrize(("where", "seconds", "valid"), [
    ("platformDefaults", 60, True), ("platformDefaults", 604800, True), ("platformDefaults", 30, False),
    ("platformDefaults", 59, False), ("platformDefaults", 604801, False), ("platformDefaults", "3600", False),
    ("platform", 60, True), ("platform", 30, False), ("platform", 3600.5, False),
])
def test_execution_timeout_bounds(where: str, seconds: Any, valid: bool) -> None:
    """executionTimeoutSeconds: an integer from 60 s to a week, globally (platformDefaults) or per platform."""
    if where == "platformDefaults":
        values: dict[str, Any] = {"platformDefaults": {"executionTimeoutSeconds": seconds}}
    else:
        values = {"platforms": [{"name": "P", "mode": "live", "stores": ["S"], "schedule": "@hourly",
                                 "executionTimeoutSeconds": seconds}]}
    validator = jsonschema.Draft7Validator(SCHEMA)
    if valid:
        validator.validate(values)
    else:
        with pytest.raises(jsonschema.ValidationError) as err:
            validator.validate(values)
        assert err.value.path[-1] == "executionTimeoutSeconds"
