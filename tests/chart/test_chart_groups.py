"""storesPerTask and parallelStores reach platform.json (a platform's own value over platformDefaults), only
when a platform groups its stores: one store per task renders platform.json as before."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.helm import find, render_chart

Render = Callable[..., list[dict[str, Any]]]
STORES = [f"S{i:03d}" for i in range(1, 8)]


def _settings(docs: list[dict[str, Any]], lower: str) -> dict[str, Any]:
    return json.loads(find(docs, "ConfigMap", f"mvp-datasurface-dags-{lower}")["data"]["platform.json"])  # type: ignore[no-any-return]


def test_grouping_per_platform_and_by_default(render: Render) -> None:
    docs = render({
        "platformDefaults": {"storesPerTask": 3},
        "platforms": [
            {"name": "Many", "mode": "live", "stores": STORES, "schedule": "* * * * *", "parallelStores": 2},
            {"name": "Alone", "mode": "live", "stores": STORES, "schedule": "@hourly", "storesPerTask": 1},
            {"name": "Big", "mode": "forensic", "stores": STORES, "schedule": "@hourly", "storesPerTask": 50},
        ]})
    many, alone, big = (_settings(docs, p) for p in ("many", "alone", "big"))
    assert (many["storesPerTask"], many["parallelStores"], many["stores"]) == (3, 2, STORES)
    assert (big["storesPerTask"], big["parallelStores"]) == (50, 1)
    assert "storesPerTask" not in alone and "parallelStores" not in alone


def test_one_store_per_task_renders_platform_json_as_before(defaults: list[dict[str, Any]]) -> None:
    for lower in ("yellowlive", "yellowforensic"):
        settings = _settings(defaults, lower)
        assert "storesPerTask" not in settings and "parallelStores" not in settings


@pytest.mark.parametrize("values", [{"platformDefaults": {"storesPerTask": 0}},
                                    {"platformDefaults": {"parallelStores": 0}},
                                    {"platforms": [{"name": "P", "mode": "live", "stores": ["S"], "schedule": "@daily",
                                                    "storesPerTask": "50"}]}])
def test_bad_values_are_refused_by_the_schema(values: dict[str, Any]) -> None:
    with pytest.raises(RuntimeError, match=r"storesPerTask|parallelStores"):
        render_chart(values)


def test_the_stale_alert_allows_a_groups_run() -> None:
    """A group's task may run executionTimeoutSeconds per round of parallelStores stores: the stale alert
    waits that long (the schedule's gap + the group's run + the grace), not one store's allowance."""
    stores = [f"S{i:03d}" for i in range(1, 8)]
    values = {"platforms": [
        {"name": "Single", "mode": "live", "stores": stores, "schedule": "@hourly", "executionTimeoutSeconds": 600},
        {"name": "Grouped", "mode": "live", "stores": stores, "schedule": "@hourly", "executionTimeoutSeconds": 600,
         "storesPerTask": 5, "parallelStores": 2},
        {"name": "Huge", "mode": "live", "stores": stores, "schedule": "@hourly", "executionTimeoutSeconds": 604800,
         "storesPerTask": 50}],
        "metrics": {"assumeMonitoringApi": True, "prometheusRule": {"enabled": True}}}
    rule = find(render_chart(values), "PrometheusRule", "mvp-datasurface-exporter")
    stale = {r["labels"]["platform"]: int(r["expr"].rsplit(" > ", 1)[1])
             for r in rule["spec"]["groups"][0]["rules"] if r["alert"] == "DataSurfaceStreamStale"}
    assert stale == {"Single": 3600 + 600 + 300, "Grouped": 3600 + 3 * 600 + 300, "Huge": 3600 + 604800 + 300}
