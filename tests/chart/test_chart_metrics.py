"""metrics.* (docs/monitoring.md): the exporter Deployment + Service, ServiceMonitor, PrometheusRule (stale
allowance derived from each platform's schedule) and the Grafana dashboard; all off by default."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.helm import CHART_DIR, find, render_chart, render_chart_text

Docs = list[dict[str, Any]]
Render = Callable[..., Docs]
ON = {"metrics": {"enabled": True}}
CRDS = {"assumeMonitoringApi": True}
ALL = {"metrics": {"enabled": True, **CRDS, "serviceMonitor": {"enabled": True},
                   "prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}}}
CONTRACT_METRICS = {
    "datasurface_up", "datasurface_last_commit_timestamp_seconds", "datasurface_snapshot_age_seconds",
    "datasurface_batch_duration_seconds", "datasurface_batch_rows", "datasurface_runs_total",
    "datasurface_open_batch_age_seconds", "datasurface_consecutive_failed_runs",
}
EXPORTER_OBJECTS = {("Deployment", "mvp-datasurface-exporter"), ("Service", "mvp-datasurface-exporter")}


def helm_error(values: dict[str, Any], *extra: str) -> str:
    with pytest.raises(RuntimeError) as err:
        render_chart_text(values, extra_args=extra)
    return str(err.value)


def exporter_container(docs: Docs) -> dict[str, Any]:
    return find(docs, "Deployment", "mvp-datasurface-exporter")["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_nothing_of_metrics_by_default(defaults: Docs) -> None:
    assert not [d for d in defaults if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "exporter"]


def test_everything_enabled_adds_exactly_these_objects(defaults: Docs, render: Render) -> None:
    added = {(d["kind"], d["metadata"]["name"]) for d in render(ALL)} - {(d["kind"], d["metadata"]["name"])
                                                                            for d in defaults}
    assert added == EXPORTER_OBJECTS | {("ServiceMonitor", "mvp-datasurface-exporter"),
                                        ("PrometheusRule", "mvp-datasurface-exporter"),
                                        ("ConfigMap", "mvp-datasurface-dashboard"),
                                        ("NetworkPolicy", "mvp-datasurface-exporter")}


def test_the_exporter_pod_is_locked_down_and_probed(render: Render) -> None:
    docs = render(ON)
    deploy = find(docs, "Deployment", "mvp-datasurface-exporter")
    pod = deploy["spec"]["template"]["spec"]
    c = exporter_container(docs)
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert c["ports"] == [{"name": "http-metrics", "containerPort": 9108, "protocol": "TCP"}]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert c["args"] == ["exporter", "--port", "9108", "--scrape-timeout", "5",
                         "--platform", "YellowLive", "--platform", "YellowForensic"]
    svc = find(docs, "Service", "mvp-datasurface-exporter")
    assert svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http-metrics"
    assert "helm.sh/chart" not in svc["spec"]["selector"]


def platform_settings(docs: Docs) -> dict[str, Any]:
    return json.loads(find(docs, "ConfigMap", "mvp-datasurface-dags-yellowlive")["data"]["platform.json"])  # type: ignore[no-any-return]


@pytest.mark.parametrize("model", [{}, {"repo": "https://git.example/model.git", "ref": "v2", "path": "m/ds.yaml",
                                        "token": "t0ken"}], ids=["built-in", "git"])
def test_the_exporter_gets_the_job_pods_model_and_credentials_via_secret_key_ref(render: Render,
                                                                                model: dict[str, Any]) -> None:
    """The model says which stores are cdc stores and where their sources are; the sources' credentials read
    the WAL their slots retain: the same settings and secrets as the job pods (platform.json)."""
    docs = render({**ON, "model": model})
    c = exporter_container(docs)
    env = {e["name"]: e for e in c["env"]}
    settings = platform_settings(docs)
    assert {s["name"]: s for s in settings["secretEnv"]}.keys() == {n for n in env if "valueFrom" in env[n]}
    for secret in settings["secretEnv"]:
        ref = {"name": secret["secret"], "key": secret["key"], **({"optional": True} if secret.get("optional") else {})}
        assert env[secret["name"]]["valueFrom"]["secretKeyRef"] == ref
    assert {"SOURCE_USER", "SOURCE_PASSWORD", "MERGE_USER", "MERGE_PASSWORD"} <= env.keys()
    assert ("DATASURFACE_GIT_TOKEN" in env) == bool(model)
    assert all("value" not in e for n, e in env.items() if n.endswith(("_USER", "_PASSWORD", "_TOKEN")))
    assert env["DATASURFACE_MODEL"]["value"] == settings["model"]["repo"]
    assert env["DATASURFACE_MODEL_PATH"]["value"] == settings["model"]["path"]
    assert env.get("DATASURFACE_MODEL_REF", {}).get("value") == settings["model"]["ref"]
    assert env["DATASURFACE_MERGE_HOST"]["value"] == settings["merge"]["host"] == "mvp-datasurface-postgresql"
    assert env["DATASURFACE_MERGE_DATABASE"]["value"] == settings["merge"]["database"] == "merge_db"
    assert env["DATASURFACE_MERGE_CREDENTIAL"]["value"] == settings["merge"]["credential"] == "merge"
    pod = find(docs, "Deployment", "mvp-datasurface-exporter")["spec"]["template"]["spec"]
    mounted = {m["name"]: m for m in c["volumeMounts"]}
    if model:
        assert "model" not in mounted and all(v["name"] != "model" for v in pod["volumes"])
    else:
        assert mounted["model"] == {"name": "model", "mountPath": "/model", "readOnly": True}
        assert {"name": "model", "configMap": {"name": settings["kubernetes"]["modelConfigMap"]}} in pod["volumes"]


def test_the_exporter_follows_an_external_database_and_its_own_merge_secret(render: Render) -> None:
    values = {**ON, "postgresql": {"enabled": False},
              "externalDatabase": {"host": "db.example", "port": 6543, "mergeDatabase": "mrg",
                                   "existingSecret": "dbcreds"},
              "credentials": {"merge": {"secretName": "mergecreds", "usernameKey": "u", "passwordKey": "p"},
                              "source": {"secretName": "", "usernameKey": "su", "passwordKey": "sp"}}}
    env = {e["name"]: e for e in exporter_container(render(values))["env"]}
    assert (env["DATASURFACE_MERGE_HOST"]["value"], env["DATASURFACE_MERGE_PORT"]["value"],
            env["DATASURFACE_MERGE_DATABASE"]["value"]) == ("db.example", "6543", "mrg")
    assert env["MERGE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mergecreds", "key": "p"}


@pytest.mark.parametrize("what", ["serviceMonitor", "prometheusRule"])
def test_monitoring_objects_need_the_monitoring_api(what: str) -> None:
    values = {"metrics": {"enabled": True, what: {"enabled": True}}}
    assert (f"metrics.{what}.enabled: this cluster does not serve the monitoring.coreos.com/v1 API"
            in helm_error(values))
    # `helm template --api-versions` stands for a cluster that serves it
    docs = render_chart_docs(values, "--api-versions", "monitoring.coreos.com/v1")
    kind = what[0].upper() + what[1:]
    assert find(docs, kind, "mvp-datasurface-exporter")["apiVersion"] == "monitoring.coreos.com/v1"


def render_chart_docs(values: dict[str, Any], *extra: str) -> Docs:
    import yaml

    return [d for d in yaml.safe_load_all(render_chart_text(values, extra_args=extra)) if d]


def test_a_service_monitor_needs_the_exporter() -> None:
    err = helm_error({"metrics": {**CRDS, "serviceMonitor": {"enabled": True}}})
    assert "metrics.serviceMonitor.enabled needs metrics.enabled" in err


def test_the_service_monitor_selects_the_exporter_service(render: Render) -> None:
    docs = render({"metrics": {"enabled": True, **CRDS, "serviceMonitor": {
        "enabled": True, "interval": "30s", "scrapeTimeout": "20s", "labels": {"release": "kps"}}}})
    sm = find(docs, "ServiceMonitor", "mvp-datasurface-exporter")
    svc = find(docs, "Service", "mvp-datasurface-exporter")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"] == [{"port": "http-metrics", "path": "/metrics", "interval": "30s",
                                        "scrapeTimeout": "20s"}]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["default"]}
    assert sm["metadata"]["labels"]["release"] == "kps"


SCHEDULE_GAPS = [
    ("@hourly", 3600), ("@daily", 86400), ("@midnight", 86400), ("@weekly", 604800), ("@monthly", 2678400),
    ("@quarterly", 7948800), ("@yearly", 31622400), ("@continuous", 0),
    ("* * * * *", 60), ("*/5 * * * *", 300), ("15 * * * *", 3600), ("0,30 * * * *", 3600),
    ("0 */6 * * *", 21600), ("30 2 * * *", 86400), ("0 9,17 * * *", 86400), ("0 2 * * 1-5", 604800),
    ("0 0 1 * *", 2678400), ("0 0 1 1 *", 31622400), ("  0   3  * * *  ", 86400),
]


def rules_of(platforms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    values = {"platforms": [{"mode": "live", "stores": ["Store1"], **p} for p in platforms],
              "metrics": {**CRDS, "prometheusRule": {"enabled": True}}}
    rule = find(render_chart(values), "PrometheusRule", "mvp-datasurface-exporter")
    return rule["spec"]["groups"][0]["rules"]  # type: ignore[no-any-return]


def stale_after(rules: list[dict[str, Any]]) -> dict[str, int]:
    out = {}
    for r in rules:
        if r["alert"] == "DataSurfaceStreamStale":
            m = re.fullmatch(r'time\(\) - datasurface_last_commit_timestamp_seconds\{job="mvp-datasurface-exporter", '
                             r'platform="(\w+)"\} > (\d+)', r["expr"])
            assert m and r["labels"]["platform"] == m.group(1), r
            out[m.group(1)] = int(m.group(2))
    return out


def test_the_stale_allowance_is_the_schedules_gap_plus_a_run_plus_grace() -> None:
    platforms = [{"name": f"P{i}", "schedule": schedule} for i, (schedule, _) in enumerate(SCHEDULE_GAPS)]
    platforms += [{"name": f"T{i}", "schedule": schedule, "executionTimeoutSeconds": 600}
                  for i, (schedule, _) in enumerate(SCHEDULE_GAPS)]
    expected = {f"P{i}": gap + 3600 + 300 for i, (_, gap) in enumerate(SCHEDULE_GAPS)}
    expected |= {f"T{i}": gap + 600 + 300 for i, (_, gap) in enumerate(SCHEDULE_GAPS)}
    assert stale_after(rules_of(platforms)) == expected


def test_a_schedule_that_never_repeats_has_no_stale_alert() -> None:
    rules = rules_of([{"name": "Once", "schedule": "@once"}, {"name": "Never", "schedule": None}])
    assert [r["alert"] for r in rules] == ["DataSurfaceStreamFailing", "DataSurfaceExporterDown",
                                           "DataSurfaceMergeDatabaseUnreachable", "DataSurfaceSlotRetainingWAL"]


@pytest.mark.parametrize(("limit", "expected"), [(None, 1073741824), (50 * 2**30, 53687091200)])
def test_the_slot_alert_fires_above_metrics_slot_retained_bytes_alert(limit: int | None, expected: int) -> None:
    metrics: dict[str, Any] = {**CRDS, "prometheusRule": {"enabled": True}}
    if limit is not None:
        metrics["slotRetainedBytesAlert"] = limit
    values = {"platforms": [{"name": "P", "mode": "live", "stores": ["Store1"], "schedule": "@hourly"}],
              "metrics": metrics}
    rules = find(render_chart(values), "PrometheusRule", "mvp-datasurface-exporter")["spec"]["groups"][0]["rules"]
    rule = next(r for r in rules if r["alert"] == "DataSurfaceSlotRetainingWAL")
    assert rule["expr"] == f'datasurface_source_slot_retained_bytes{{job="mvp-datasurface-exporter"}} > {expected}'


def test_an_allowance_that_cannot_be_derived_fails_unless_given() -> None:
    values = {"platforms": [{"name": "P", "mode": "live", "stores": ["Store1"], "schedule": "0 0 * *"}],
              "metrics": {**CRDS, "prometheusRule": {"enabled": True}}}
    assert 'schedule "0 0 * *": not a cron expression' in helm_error(values)
    values["platforms"][0]["schedule"] = "0 0 * * *"  # type: ignore[index]
    values["metrics"]["prometheusRule"]["staleAfterSeconds"] = {"P": 5000}  # type: ignore[index]
    rule = find(render_chart(values), "PrometheusRule", "mvp-datasurface-exporter")
    assert rule["spec"]["groups"][0]["rules"][0]["expr"].endswith("> 5000")
    values["metrics"]["prometheusRule"]["staleAfterSeconds"] = {"Q": 5000}  # type: ignore[index]
    values["platforms"][0]["schedule"] = "@hourly"  # type: ignore[index]
    assert 'staleAfterSeconds: "Q" is not a platform name' in helm_error(values)
    assert 'schedule "@fortnightly": unknown preset' in helm_error(
        {"platforms": [{"name": "P", "mode": "live", "stores": ["S"], "schedule": "@fortnightly"}],
         "metrics": {**CRDS, "prometheusRule": {"enabled": True}}})


def test_the_failing_and_down_alerts_follow_their_values() -> None:
    values = {"metrics": {**CRDS, "prometheusRule": {"enabled": True, "failingRuns": 5, "exporterDownFor": "10m",
                                                     "severity": "critical", "labels": {"release": "kps"}}}}
    rule = find(render_chart(values), "PrometheusRule", "mvp-datasurface-exporter")
    rules = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert rules["DataSurfaceStreamFailing"]["expr"] == \
        'datasurface_consecutive_failed_runs{job="mvp-datasurface-exporter"} >= 5'
    assert rules["DataSurfaceExporterDown"]["for"] == "10m"
    assert rules["DataSurfaceExporterDown"]["expr"] == \
        'up{job="mvp-datasurface-exporter"} == 0 or absent(up{job="mvp-datasurface-exporter"})'
    assert {r["labels"]["severity"] for r in rule["spec"]["groups"][0]["rules"]} == {"critical"}
    assert rule["metadata"]["labels"]["release"] == "kps"


def test_the_dashboard_config_map_holds_the_dashboard_file(render: Render) -> None:
    docs = render({"metrics": {"dashboard": {"enabled": True, "annotations": {"grafana_folder": "DataSurface"}}}})
    cm = find(docs, "ConfigMap", "mvp-datasurface-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "DataSurface"}
    dashboard = json.loads(cm["data"]["datasurface.json"])
    assert dashboard == json.loads((CHART_DIR / "files" / "dashboards" / "datasurface.json").read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Freshness: age of the data consumers see", "Rows changed per batch", "Batch duration",
            "Runs by result"} <= titles
    used = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"datasurface_\w+", t["expr"])}
    assert used == CONTRACT_METRICS
    for p in dashboard["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert all('platform=~"$platform"' in t["expr"] for t in p["targets"]), p["title"]
