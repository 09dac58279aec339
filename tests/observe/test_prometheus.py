"""The chart's alert rules and dashboard against a real Prometheus (Debian's `prometheus` package:
`prometheus` and `promtool`; scripts/test.sh installs it).

- `promtool check rules` on the rendered PrometheusRule;
- `promtool test rules`: each alert fires when it should and not before;
- a real Prometheus scraping a real exporter over real merges: the stored metrics are asserted, the
  rules load and evaluate, and every dashboard panel's query returns series;
- the dashboard's main panel is drawn to a PNG from that Prometheus' data (matplotlib; there is no
  Grafana here to render it).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.engine import (
    PLATFORM,
    SMALL,
    create_source_tables,
    load_snapshot,
    merge_args,
    model_dict,
    next_snapshot,
    run_job,
)
from tests.support.engine import write_model as write_model_dir
from tests.support.exporter import start_exporter, wait_for
from tests.support.helm import find, render_chart

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    not (PROMETHEUS and PROMTOOL),
    reason="PROMETHEUS TESTS SKIPPED: Debian's `prometheus` package is not installed (scripts/test.sh installs it)")

JOB = "mvp-datasurface-exporter"  # the ServiceMonitor's job: the Service's name
PLATFORMS = [  # Yellow is the platform the exporter below serves; the others test the allowances
    {"name": PLATFORM, "mode": "live", "stores": ["Store1"], "schedule": "@hourly"},
    {"name": "Quarter", "mode": "live", "stores": ["Store1"], "schedule": "*/15 * * * *",
     "executionTimeoutSeconds": 600},
    {"name": "Nightly", "mode": "forensic", "stores": ["Store1"], "schedule": "30 2 * * *"},
    {"name": "Manual", "mode": "live", "stores": ["Store1"], "schedule": "@once"},
]
# schedule's longest gap + executionTimeoutSeconds (default 3600) + staleGraceSeconds (300)
ALLOWANCE = {PLATFORM: 3600 + 3600 + 300, "Quarter": 900 + 600 + 300, "Nightly": 86400 + 3600 + 300}
VALUES = {"platforms": PLATFORMS,
          "metrics": {"enabled": True, "assumeMonitoringApi": True, "prometheusRule": {"enabled": True},
                      "serviceMonitor": {"enabled": True}, "dashboard": {"enabled": True}}}


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render_chart(VALUES)


@pytest.fixture(scope="module")
def rules_file(rendered: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    rule = find(rendered, "PrometheusRule", JOB)
    path = tmp_path_factory.mktemp("rules") / "rules.yml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return path


@pytest.fixture(scope="module")
def dashboard(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    cm = find(rendered, "ConfigMap", "mvp-datasurface-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    return json.loads(cm["data"]["datasurface.json"])  # type: ignore[no-any-return]


def test_promtool_checks_the_rendered_rules(rules_file: Path) -> None:
    proc = subprocess.run([PROMTOOL, "check", "rules", str(rules_file)], capture_output=True, text=True)  # type: ignore[list-item]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    # 3 stale (not @once), failing, 2 down, slot retaining WAL
    assert "SUCCESS: 7 rules found" in out and "Might cause" not in out, out


def _alert(name: str, at: str, *expected: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name,
            "exp_alerts": [{"exp_labels": {"severity": "warning", **e}} for e in expected]}


def _stream(platform: str) -> dict[str, str]:
    # the exporter's dataset="" (a multi_dataset stream) is no label at all once in Prometheus
    return {"job": JOB, "instance": "exporter:9108", "platform": platform, "store": "Store1"}


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def test_promtool_unit_tests_each_alert(rules_file: Path, tmp_path: Path) -> None:
    """Stale after the allowance and not before (per schedule), failing after N failed runs in a row,
    the exporter down (no target, or a target that does not answer), the database unreachable, a slot
    retaining more WAL than allowed."""
    # annotations are checked by promtool check rules and in the live Prometheus below; promtool's unit
    # tests compare them verbatim, so this copy of the rules goes without them
    spec = yaml.safe_load(rules_file.read_text())
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    bare = tmp_path / "rules.yml"
    bare.write_text(yaml.safe_dump(spec))
    minutes = {p: a // 60 for p, a in ALLOWANCE.items()}  # allowances are whole minutes here
    up = _series("up", {"job": JOB, "instance": "exporter:9108"}, "1x3000")
    stale_groups = [  # per platform: last commit at t=0; fine until its allowance, stale after it
        {"interval": "1m",
         "input_series": [_series("datasurface_last_commit_timestamp_seconds", _stream(p), "0x3000"), up],
         "alert_rule_test": [_alert("DataSurfaceStreamStale", f"{m - 1}m"),
                             _alert("DataSurfaceStreamStale", f"{m + 1}m", _stream(p)),
                             _alert("DataSurfaceExporterDown", f"{m + 1}m")]}
        for p, m in minutes.items()]
    never_stale = {  # @once has no allowance; a stream committing every 15 minutes is never stale
        "interval": "1m",
        "input_series": [_series("datasurface_last_commit_timestamp_seconds", _stream("Manual"), "0x3000"),
                         _series("datasurface_last_commit_timestamp_seconds", _stream("Quarter"),
                                 " ".join(str(900 * (i // 15)) for i in range(300))), up],
        "alert_rule_test": [_alert("DataSurfaceStreamStale", "290m")]}
    tests = {
        "rule_files": [str(bare)],
        "evaluation_interval": "1m",
        "tests": [
            *stale_groups,
            never_stale,
            {"interval": "1m",
             "input_series": [_series("datasurface_consecutive_failed_runs", _stream(PLATFORM), "0 1 2 3 3 0"),
                              _series("up", {"job": JOB, "instance": "exporter:9108"}, "1 1 0x10"),
                              _series("datasurface_up", {"job": JOB, "instance": "exporter:9108",
                                                         "platform": PLATFORM}, "1 0x10")],
             "alert_rule_test": [
                 _alert("DataSurfaceStreamFailing", "2m"),  # two failed runs in a row: not yet
                 _alert("DataSurfaceStreamFailing", "3m", _stream(PLATFORM)),
                 _alert("DataSurfaceStreamFailing", "5m"),  # a success resets it
                 _alert("DataSurfaceExporterDown", "6m"),  # down since 2m, for 5m
                 _alert("DataSurfaceExporterDown", "7m", {"job": JOB, "instance": "exporter:9108"}),
                 _alert("DataSurfaceMergeDatabaseUnreachable", "5m"),
                 _alert("DataSurfaceMergeDatabaseUnreachable", "6m",
                        {"job": JOB, "instance": "exporter:9108", "platform": PLATFORM}),
             ]},
            {"interval": "1m",  # a slot keeping more than metrics.slotRetainedBytesAlert (1 GiB) of WAL
             "input_series": [_series("datasurface_source_slot_retained_bytes", _stream(PLATFORM),
                                      f"0 {2**30} {2**30 + 1} {5 * 2**30} 1000"), up],
             "alert_rule_test": [_alert("DataSurfaceSlotRetainingWAL", "1m"),  # exactly 1 GiB: not yet
                                 _alert("DataSurfaceSlotRetainingWAL", "2m", _stream(PLATFORM)),
                                 _alert("DataSurfaceSlotRetainingWAL", "3m", _stream(PLATFORM)),
                                 _alert("DataSurfaceSlotRetainingWAL", "4m")]},  # a batch read the changes
            {"interval": "1m",  # no target at all (the Deployment is gone): absent(up)
             "input_series": [_series("datasurface_up", {"job": "other"}, "1x20")],
             "alert_rule_test": [_alert("DataSurfaceExporterDown", "4m"),
                                 _alert("DataSurfaceExporterDown", "6m", {"job": JOB})]},
        ],
    }
    test_file = tmp_path / "tests.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = subprocess.run([PROMTOOL, "test", "rules", str(test_file)], capture_output=True, text=True)  # type: ignore[list-item]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


# --- a real Prometheus scraping a real exporter over real merges -----------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]  # type: ignore[no-any-return]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None


@pytest.fixture(scope="module")
def stack(pg_server: Any, databases_on: Any, rules_file: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Real merges (2 ok, 1 failed), the exporter, and a Prometheus scraping it every second."""
    tmp = tmp_path_factory.mktemp("stack")
    dbs = databases_on(pg_server)
    src = dbs.connect(dbs.source)
    create_source_tables(src, SMALL)
    rng, removed = random.Random(11), defaultdict(set)
    snap = next_snapshot(rng, {}, removed)
    load_snapshot(src, {"pairs": snap["pairs"]})
    model = write_model_dir(tmp / "model", model_dict(dbs.host, dbs.port, dbs.source, datasets=SMALL))
    assert run_job(merge_args(model, PLATFORM, "live", dbs), dbs.env).returncode == 0
    exporter = start_exporter(dbs, [PLATFORM])
    port = _free_port()
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_file)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}],
    }))
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",  # type: ignore[list-item]
                             f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "prometheus.log", "w"))
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:
        assert wait_for(lambda: _ready(prom), timeout=30), (tmp / "prometheus.log").read_text()[-2000:]
        assert wait_for(lambda: prom.value(f'up{{job="{JOB}"}}') == 1, timeout=30)
        snap = next_snapshot(rng, snap, removed)
        load_snapshot(src, {"pairs": snap["pairs"]})
        assert run_job(merge_args(model, PLATFORM, "live", dbs), dbs.env).returncode == 0
        bad = run_job(merge_args(model, PLATFORM, "live", dbs), {**dbs.env, "SOURCE_PASSWORD": "wrong"})
        assert bad.returncode == 1
        assert wait_for(lambda: prom.value('datasurface_runs_total{result="failed"}') == 1, timeout=30)
        time.sleep(2)  # a few more samples of each series
        yield {"prom": prom, "dbs": dbs, "exporter": exporter, "tmp": tmp}
    finally:
        proc.terminate()
        proc.wait(10)
        exporter.stop()
        src.close()


def _ready(prom: Prometheus) -> bool:
    try:
        with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_prometheus_stores_what_the_merges_did(stack: dict[str, Any]) -> None:
    prom, dbs = stack["prom"], stack["dbs"]
    conn = dbs.connect(dbs.merge)
    with conn.cursor() as cur:
        cur.execute("""SELECT extract(epoch FROM finished_at), rows_total, rows_inserted, rows_updated, rows_deleted
                         FROM yellow.ds_batches WHERE batch_id = 2""")
        finished, *counts = (float(v) for v in cur.fetchone())
    conn.close()
    sel = f'job="{JOB}", platform="{PLATFORM}", store="Store1", dataset=""'
    assert prom.value(f'datasurface_up{{job="{JOB}", platform="{PLATFORM}"}}') == 1
    assert prom.value(f"datasurface_last_batch_id{{{sel}}}") == 2
    assert prom.value(f"datasurface_last_commit_timestamp_seconds{{{sel}}}") == pytest.approx(finished, abs=1e-3)
    for op, n in zip(("total", "inserted", "updated", "deleted"), counts, strict=True):
        assert prom.value(f'datasurface_batch_rows{{{sel}, op="{op}"}}') == n
    assert 0 < prom.value(f"datasurface_snapshot_age_seconds{{{sel}}}") < 300  # type: ignore[operator]
    assert prom.value(f"datasurface_batch_duration_seconds{{{sel}}}") is not None
    assert prom.value(f"datasurface_open_batch_age_seconds{{{sel}}}") == 0
    assert {r["metric"]["result"]: float(r["value"][1]) for r in prom.query(f"datasurface_runs_total{{{sel}}}")} \
        == {"ok": 2.0, "recovered": 0.0, "failed": 1.0}
    assert prom.value(f"datasurface_consecutive_failed_runs{{{sel}}}") == 1
    # the chart's rules load and evaluate in a real Prometheus; nothing fires for a healthy stream
    groups = prom.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 7 and all(r["health"] == "ok" for r in rules), rules
    assert prom.query('ALERTS{alertstate="firing"}') == []


def _panel_query(expr: str) -> str:
    """A panel's query as Grafana sends it: variables at their "All" value, the range at 1h."""
    return (expr.replace("$platform", ".*").replace("$store", ".*").replace("$__range", "1h")
            .replace("$__rate_interval", "1m").replace("$__interval", "15s"))


def test_every_dashboard_panel_query_returns_series(stack: dict[str, Any], dashboard: dict[str, Any]) -> None:
    prom = stack["prom"]
    targets = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    assert len(targets) == len(dashboard["panels"]) >= 8
    for title, expr in targets:
        result = prom.query(_panel_query(expr))
        assert result, f"panel {title!r}: {expr} returned no series"
    for var in dashboard["templating"]["list"][1:]:  # label_values(metric, label) of the variables
        metric, label = var["definition"].removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
        values = prom.api("series", **{"match[]": _panel_query(metric)})
        assert {s[label] for s in values} >= ({PLATFORM} if label == "platform" else {"Store1"})


def test_the_main_panel_renders_to_png(stack: dict[str, Any], dashboard: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        pytest.skip("PNG NOT RENDERED: matplotlib is not installed (no Grafana renderer here either)")
    prom = stack["prom"]
    panel = dashboard["panels"][0]
    end = time.time()
    data = prom.api("query_range", query=_panel_query(panel["targets"][0]["expr"]), start=str(end - 60),
                    end=str(end), step="1")["result"]
    assert data
    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=100)
    for series in data:
        xs = [float(t) - end for t, _ in series["values"]]
        ys = [float(v) for _, v in series["values"]]
        m = series["metric"]
        ax.plot(xs, ys, label=f"{m['platform']} {m['store']} {m.get('dataset', '')}".strip())
    ax.set_title(panel["title"])
    ax.set_xlabel("seconds before now")
    ax.set_ylabel("seconds")
    ax.legend(loc="upper left")
    fig.tight_layout()
    out = Path(os.environ.get("DATASURFACE_TEST_OUTPUT", stack["tmp"])) / "dashboard-freshness.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    assert out.stat().st_size > 5000
    print(f"main panel rendered to {out}")
