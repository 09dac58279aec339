"""The chart in production, rendered with the real helm: names within Kubernetes' limits, the migration
Job named after what it runs, foot-guns that fail `helm install`, resources on every container, TLS to an
external PostgreSQL and the NetworkPolicies."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.support.helm import CHART_DIR, CI_VALUES, ci_id, find, render_chart, run_helm

Docs = list[dict[str, Any]]
Render = Callable[..., Docs]

RELEASE_33 = "r" * 33  # the length that once gave a 64-character Service name
RELEASE_53 = "a" * 53  # the longest release name Helm accepts
EXTERNAL_DB = {
    "postgresql": {"enabled": False},
    "externalDatabase": {"host": "db.example", "existingSecret": "dbcreds"},
}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]


def workloads(docs: Docs) -> Iterator[dict[str, Any]]:
    yield from (d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job", "Pod"))


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def helm_fails(values_args: list[str], release: str = "mvp") -> str:
    """stderr of a `helm template` that must fail."""
    proc = run_helm(["template", release, str(CHART_DIR), *values_args], check=False)
    assert proc.returncode != 0, "helm template succeeded"
    return proc.stderr


def platform_json(docs: Docs, lower: str) -> dict[str, Any]:
    cm = next(d for d in docs if d["kind"] == "ConfigMap"
              and d["metadata"]["labels"].get("datasurface.io/platform") == lower)
    settings: dict[str, Any] = json.loads(cm["data"]["platform.json"])
    return settings


# --- names within limits --------------------------------------------------------------------------

ALL_ON = {"metrics": {"enabled": True, "serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                      "dashboard": {"enabled": True}, "assumeMonitoringApi": True},
          "model": {"token": "t"}, "slack": {"webhook": "https://hooks.example/x"},
          "platforms": [{"name": "YellowLive", "mode": "live", "stores": ["Store1"], "schedule": "@hourly"},
                        {"name": "YellowForensic", "mode": "forensic", "stores": ["Store1"], "schedule": "@hourly"},
                        {"name": "A" * 40, "mode": "live", "stores": ["Store1"], "schedule": "@daily"},
                        {"name": "A" * 39 + "B", "mode": "live", "stores": ["Store1"], "schedule": "@daily"}]}


def labels_in(doc: dict[str, Any]) -> Iterator[dict[str, str]]:
    yield doc["metadata"].get("labels", {})
    spec = doc.get("spec", {})
    if isinstance(spec.get("template"), dict):
        yield spec["template"].get("metadata", {}).get("labels", {})
    if isinstance(spec.get("selector"), dict):
        yield spec["selector"].get("matchLabels", spec["selector"])


@pytest.mark.parametrize("release", [RELEASE_33, RELEASE_53], ids=["release-33", "release-53"])
def test_every_name_fits_kubernetes_limits(release: str) -> None:
    docs = render_chart(ALL_ON, release=release)
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "two objects with the same kind and name"
    for kind, name in names:
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), (kind, name, len(name))
    for sts in (d for d in docs if d["kind"] == "StatefulSet"):
        # the pods get the label controller-revision-hash: <name>-<10 characters>, at most 63
        assert len(sts["metadata"]["name"]) <= 52, sts["metadata"]["name"]
    for doc in docs:
        for labels in labels_in(doc):
            for key, value in labels.items():
                assert len(str(value)) <= 63, (doc["kind"], key, value)
    dag_cms = [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"
               and "datasurface.io/platform" in d["metadata"]["labels"]]
    assert len(dag_cms) == len(set(dag_cms)) == 4


@pytest.mark.parametrize("release", ["mvp", RELEASE_53], ids=["release-3", "release-53"])
def test_every_reference_names_a_rendered_object(release: str) -> None:
    """Shortened names are shortened the same way where they are used: Services, ConfigMaps, Secrets,
    the RoleBinding's Role and ServiceAccount, the api-server URL, the DAG settings."""
    docs = render_chart(ALL_ON, release=release)
    rendered = {(d["kind"], d["metadata"]["name"]) for d in docs}
    refs: list[tuple[str, str]] = []
    for doc in workloads(docs):
        spec = pod_spec(doc)
        if "serviceAccountName" in spec:
            refs.append(("ServiceAccount", spec["serviceAccountName"]))
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                refs.append(("ConfigMap", volume["configMap"]["name"]))
            for source in volume.get("projected", {}).get("sources", []):
                refs.append(("ConfigMap", source["configMap"]["name"]))
        for container in containers(doc):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.append(("Secret", ref["name"]))
            url = env_of(container).get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", {}).get("value")
            if url:
                refs.append(("Service", re.match(r"http://([^:/]+)", url).group(1)))  # type: ignore[union-attr]
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    refs.append(("Service", sts["spec"]["serviceName"]))
    for binding in (d for d in docs if d["kind"] == "RoleBinding"):
        refs.append(("Role", binding["roleRef"]["name"]))
        refs += [("ServiceAccount", s["name"]) for s in binding["subjects"]]
    settings = platform_json(docs, "yellowlive")
    refs.append(("Service", settings["merge"]["host"]))
    refs.append(("ConfigMap", settings["kubernetes"]["modelConfigMap"]))
    refs += [("Secret", e["secret"]) for e in settings["secretEnv"]]
    missing = {r for r in refs if r not in rendered}
    assert not missing, missing


def test_short_names_are_unchanged(defaults: Docs) -> None:
    names = {d["metadata"]["name"] for d in defaults}
    assert {"mvp-datasurface-airflow-api-server", "mvp-datasurface-postgresql",
            "mvp-datasurface-dags-yellowlive"} <= names


# --- the migration Job ----------------------------------------------------------------------------


def migrate_job(docs: Docs) -> dict[str, Any]:
    [job] = [d for d in docs if d["kind"] == "Job"]
    return job


def test_migration_job_is_named_after_what_it_runs(defaults: Docs, render: Render) -> None:
    name = migrate_job(defaults)["metadata"]["name"]
    assert re.fullmatch(r"mvp-datasurface-airflow-migrate-[0-9a-f]{10}", name), name
    assert migrate_job(render_chart())["metadata"]["name"] == name, "the same spec, the same Job"
    unrelated = render({"simulator": {"verbose": True}, "platforms": [
        {"name": "Other", "mode": "live", "stores": ["Store1"], "schedule": "@daily"}]})
    assert migrate_job(unrelated)["metadata"]["name"] == name
    new_image = migrate_job(render({"airflow": {"image": {"tag": "3.3.3"}}}))
    assert new_image["metadata"]["name"] != name, "a new Airflow image is a new Job (its pod template is immutable)"
    assert new_image["spec"]["template"]["spec"]["containers"][0]["image"] == "apache/airflow:3.3.3"


def test_no_name_follows_the_revision() -> None:
    """`helm template` always renders revision 1, so a name built from the revision would differ between
    `helm upgrade` and `helm template | kubectl apply`: no template may use it."""
    for path in (CHART_DIR / "templates").rglob("*"):
        if path.is_file():
            assert ".Release.Revision" not in path.read_text(), path


# --- foot-guns ------------------------------------------------------------------------------------


def simulators(docs: Docs) -> list[str]:
    return [d["metadata"]["name"] for d in docs if d["kind"] == "Deployment" and "simulator" in d["metadata"]["name"]]


@pytest.mark.parametrize(("enabled", "bundled", "runs"), [
    ("auto", True, True), ("auto", False, False), (True, False, True), (False, True, False), (True, True, True),
])
def test_simulator_auto_runs_only_against_the_bundled_database(render: Render, enabled: Any, bundled: bool,
                                                                 runs: bool) -> None:
    values: dict[str, Any] = {"simulator": {"enabled": enabled}}
    if not bundled:
        values.update(EXTERNAL_DB)
    assert bool(simulators(render(values))) is runs


def test_simulator_defaults_to_auto(defaults: Docs) -> None:
    assert yaml.safe_load((CHART_DIR / "values.yaml").read_text())["simulator"]["enabled"] == "auto"
    assert simulators(defaults) == ["mvp-datasurface-simulator"]


def role_subjects(docs: Docs) -> list[dict[str, Any]]:
    [binding] = [d for d in docs if d["kind"] == "RoleBinding"]
    subjects: list[dict[str, Any]] = binding["subjects"]
    return subjects


def test_pod_launcher_is_bound_to_the_schedulers_own_account(defaults: Docs) -> None:
    [scheduler] = [d for d in defaults if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-scheduler")]
    assert role_subjects(defaults) == [{"kind": "ServiceAccount", "name": pod_spec(scheduler)["serviceAccountName"],
                                        "namespace": "default"}]
    assert pod_spec(scheduler)["serviceAccountName"] != "default"


def test_an_existing_airflow_binds_only_its_own_account(render: Render) -> None:
    [values_file] = [p for p in CI_VALUES if ci_id(p) == "airflow-disabled"]
    subjects = role_subjects(render(values_file=values_file))
    assert subjects == [{"kind": "ServiceAccount", "name": "airflow-worker", "namespace": "airflow"}]


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "airflow.serviceAccount.create=false"], "airflow.serviceAccount.name: the pod-launching Role would "
                                                       "be bound to the namespace's default ServiceAccount"),
    (["--set", "airflow.serviceAccount.create=false", "--set", "airflow.serviceAccount.name=default"],
     "airflow.serviceAccount.name: the pod-launching Role would be bound"),
    (["--set", "airflow.enabled=false", "--set", "airflow.serviceAccount.create=false"],
     "rbac.create: the pod-launching Role has no subject"),
    (["--set", "rbac.extraSubjects[0].kind=ServiceAccount", "--set", "rbac.extraSubjects[0].name=default"],
     "rbac.extraSubjects: the pod-launching Role is never bound to a default ServiceAccount"),
])
def test_the_default_service_account_never_gets_the_pod_launcher(args: list[str], message: str) -> None:
    assert message in helm_fails(args)


def test_a_configured_git_token_secret_is_required(render: Render) -> None:
    """A missing Secret fails the job pod (and the local runner's scheduler): never a clone without it."""
    docs = render({"model": {"repo": "https://git.example/m.git", "tokenSecret": {"name": "git", "key": "token"}},
                   "platformDefaults": {"runner": "local"}})
    [token] = [e for e in platform_json(docs, "yellowlive")["secretEnv"] if e["name"] == "DATASURFACE_GIT_TOKEN"]
    assert token == {"name": "DATASURFACE_GIT_TOKEN", "secret": "git", "key": "token"}
    for doc in workloads(docs):
        for container in containers(doc):
            ref = env_of(container).get("DATASURFACE_GIT_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref == {"name": "git", "key": "token"}, doc["metadata"]["name"]


GOOD_SCHEDULES = ["@hourly", "@daily", "@once", "@continuous", "@weekly", "@monthly", "@yearly", None,
                  "*/15 * * * *", "0 3 * * MON-FRI", "5,35 1-5/2 1 JAN,JUL 0", "0 0 L * *", "0 0 * * 5#2"]
BAD_SCHEDULES = [("every hour", "not a cron expression"), ("@hourl", "unknown preset"),
                 ("61 * * * *", "minute 61 is out of range 0-59"), ("0 24 * * *", "hour 24 is out of range 0-23"),
                 ("0 0 0 * *", "day of month 0 is out of range 1-31"), ("0 0 * 13 *", "month 13 is out of range"),
                 ("* * * *", "not a cron expression"), ("0 0 * * * *", "not a cron expression"),
                 ("0 0 ! * *", "day of month field \"!\" is not valid cron syntax"), ("None", "not a cron expression")]


def one_platform(schedule: Any, **extra: Any) -> dict[str, Any]:
    return {"platforms": [{"name": "Ledger", "mode": "live", "stores": ["Store1"], "schedule": schedule, **extra}]}


@pytest.mark.parametrize("schedule", GOOD_SCHEDULES)
def test_good_schedules_render(schedule: Any) -> None:
    docs = render_chart(one_platform(schedule), show_only="templates/dags/configmaps.yaml")
    assert platform_json(docs, "ledger")["schedule"] == schedule


@pytest.mark.parametrize(("schedule", "reason"), BAD_SCHEDULES)
def test_a_bad_schedule_fails_naming_the_platform(schedule: str, reason: str, tmp_path: Any) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(one_platform(schedule)))
    [line] = [x for x in helm_fails(["--values", str(values)]).splitlines() if x.startswith("Error")]
    assert f'platform "Ledger": schedule "{schedule}": {reason}' in line


def test_a_bad_infrastructure_schedule_fails_naming_the_key(tmp_path: Any) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(one_platform("@hourly", infrastructureSchedule="@sometimes")))
    assert 'platform "Ledger": infrastructureSchedule "@sometimes": unknown preset' in helm_fails(
        ["--values", str(values)])
    assert 'platformDefaults.infrastructureSchedule "daily": not a cron expression' in helm_fails(
        ["--set", "platformDefaults.infrastructureSchedule=daily"])


@pytest.mark.parametrize("key", ["image.tag", "airflow.image.tag", "postgresql.image.tag"])
@pytest.mark.parametrize("tag", ["", " "])
def test_an_empty_image_tag_fails_naming_the_key(key: str, tag: str) -> None:
    stderr = helm_fails(["--set-string", f"{key}={tag}"])
    assert f"{key} is empty: set the image tag" in stderr


def test_the_job_image_tag_defaults_to_the_app_version(defaults: Docs) -> None:
    version = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
    assert yaml.safe_load((CHART_DIR / "values.yaml").read_text())["image"]["tag"] == version
    assert platform_json(defaults, "yellowlive")["kubernetes"]["image"].endswith(f":{version}")


# --- resources ------------------------------------------------------------------------------------


def assert_requests_and_limits(resources: dict[str, Any], where: str) -> None:
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources.get(part, {})), f"{where}: {part} {resources}"


@pytest.mark.parametrize("values_file", CI_VALUES, ids=ci_id)
def test_every_container_has_requests_and_limits(values_file: Any, render: Render) -> None:
    """A namespace whose ResourceQuota covers cpu and memory requires both on every container."""
    docs = render(values_file=values_file)
    seen = 0
    for doc in workloads(docs):
        for container in containers(doc):
            assert_requests_and_limits(container.get("resources", {}), f"{doc['metadata']['name']}/{container['name']}")
            seen += 1
    assert seen
    for cm in (d for d in docs if d["kind"] == "ConfigMap" and "platform.json" in d.get("data", {})):
        settings = json.loads(cm["data"]["platform.json"])
        assert_requests_and_limits(settings["kubernetes"]["resources"], f"job pods of {settings['platform']}")


SETTABLE = [
    ("postgresql.resources", "StatefulSet", "postgresql", ["postgresql"]),
    ("airflow.apiServer.resources", "Deployment", "airflow-api-server", ["api-server"]),
    ("airflow.scheduler.resources", "Deployment", "airflow-scheduler", ["scheduler"]),
    ("airflow.dagProcessor.resources", "Deployment", "airflow-dag-processor", ["dag-processor"]),
    ("airflow.migrations.resources", "Job", "airflow-migrate", ["migrate"]),
    ("airflow.initContainers.resources", "Deployment", "airflow-api-server", ["wait-for-migrations", "auth-passwords"]),
    ("airflow.initContainers.resources", "Deployment", "airflow-scheduler", ["wait-for-migrations"]),
    ("simulator.resources", "Deployment", "simulator", ["simulator"]),
    ("tests.resources", "Pod", "check", ["check"]),
    ("metrics.resources", "Deployment", "exporter", ["exporter"]),
]


@pytest.mark.parametrize(("key", "kind", "component", "names"), SETTABLE, ids=[f"{s[0]}-{s[2]}" for s in SETTABLE])
def test_each_containers_resources_are_settable(key: str, kind: str, component: str, names: list[str]) -> None:
    wanted = {"requests": {"cpu": "7m", "memory": "77Mi"}, "limits": {"cpu": "77m", "memory": "777Mi"}}
    values: dict[str, Any] = {"metrics": {"enabled": True}}
    node = values
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = wanted
    docs = render_chart(values)
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(f"mvp-datasurface-{component}")]
    by_name = {c["name"]: c for c in containers(doc)}
    for name in names:
        assert by_name[name]["resources"] == wanted, name


def test_job_pod_resources_are_settable(render: Render) -> None:
    wanted = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    docs = render({"jobs": {"resources": wanted}})
    assert platform_json(docs, "yellowlive")["kubernetes"]["resources"] == wanted


# --- TLS to an external PostgreSQL ----------------------------------------------------------------

CA_FILE = "/etc/datasurface/db-ca/ca.crt"


def database_clients(docs: Docs) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container that logs in to the database."""
    for doc in workloads(docs):
        for container in containers(doc):
            env = env_of(container)
            if {"PGPASSWORD", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "MERGE_PASSWORD", "SOURCE_PASSWORD"} & set(env):
                yield doc, container


def test_every_database_client_verifies_the_external_server(render: Render) -> None:
    [values_file] = [p for p in CI_VALUES if ci_id(p) == "external-tls"]
    docs = render(values_file=values_file)
    clients = list(database_clients(docs))
    names = {(d["metadata"]["name"].removeprefix("mvp-datasurface-"), c["name"]) for d, c in clients}
    assert {("airflow-api-server", "api-server"), ("airflow-api-server", "wait-for-migrations"),
            ("airflow-scheduler", "scheduler"), ("airflow-dag-processor", "dag-processor"),
            ("simulator", "simulator"), ("exporter", "exporter"), ("check", "check")} <= names, names
    assert any(n[0].startswith("airflow-migrate-") for n in names)
    for doc, container in clients:
        where = f"{doc['metadata']['name']}/{container['name']}"
        env = env_of(container)
        assert env["PGSSLMODE"]["value"] == "verify-full", where
        assert env["PGSSLROOTCERT"]["value"] == CA_FILE, where
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/datasurface/db-ca"]
        assert mount["readOnly"] is True
        [volume] = [v for v in pod_spec(doc)["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == "datasurface-db-ca", where
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}], where
    settings = platform_json(docs, "yellowlive")
    assert settings["env"] == {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": CA_FILE}
    assert settings["kubernetes"]["secretMounts"] == [
        {"secret": "datasurface-db-ca", "key": "ca.crt", "mountPath": "/etc/datasurface/db-ca", "path": "ca.crt"}]


def test_ssl_mode_alone_reaches_every_client(render: Render) -> None:
    docs = render({**EXTERNAL_DB, "externalDatabase": {**EXTERNAL_DB["externalDatabase"], "sslMode": "require"},
                   "simulator": {"enabled": True}})
    clients = list(database_clients(docs))
    assert len(clients) >= 8
    for doc, container in clients:
        env = env_of(container)
        assert env["PGSSLMODE"]["value"] == "require" and "PGSSLROOTCERT" not in env, doc["metadata"]["name"]
        assert not [m for m in container["volumeMounts"] if "db-ca" in m["mountPath"]]
    assert platform_json(docs, "yellowlive")["env"] == {"PGSSLMODE": "require"}
    assert platform_json(docs, "yellowlive")["kubernetes"]["secretMounts"] == []


def test_the_bundled_database_gets_no_tls_settings(defaults: Docs) -> None:
    for doc, container in database_clients(defaults):
        assert not {"PGSSLMODE", "PGSSLROOTCERT"} & set(env_of(container)), doc["metadata"]["name"]
    assert platform_json(defaults, "yellowlive")["env"] == {}


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
def test_verifying_the_server_needs_a_ca(mode: str) -> None:
    stderr = helm_fails(["--set", "postgresql.enabled=false", "--set", "externalDatabase.host=h",
                         "--set", "externalDatabase.existingSecret=s", "--set", f"externalDatabase.sslMode={mode}"])
    assert f"externalDatabase.sslMode {mode} verifies the server's certificate: set externalDatabase.caSecret.name" \
        in stderr


def test_airflow_login_is_never_inside_its_database_url(defaults: Docs) -> None:
    for _, container in database_clients(defaults):
        env = env_of(container)
        if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env:
            continue
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]["value"] == \
            "postgresql+psycopg2://mvp-datasurface-postgresql:5432/airflow_db"
        assert env["PGUSER"]["valueFrom"]["secretKeyRef"] == {"name": "mvp-datasurface-postgresql",
                                                              "key": "airflow-username"}
        assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mvp-datasurface-postgresql",
                                                                  "key": "airflow-password"}


def test_any_password_logs_airflow_in(pg_server: Any, render: Render, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rendered Airflow connection (URL + PGUSER/PGPASSWORD) against a real PostgreSQL, with a password
    of the characters a URL would need escaped."""
    import secrets

    import sqlalchemy

    user, password = f"af_{secrets.token_hex(3)}", "p@ss/w:rd% with spaces?#&=" + secrets.token_hex(2)
    pg_server.create_role(user, password)
    database = f"afdb_{secrets.token_hex(3)}"
    pg_server.create_database(database, owner=user)
    docs = render({"postgresql": {"enabled": False}, "externalDatabase": {
        "host": "db.example", "port": pg_server.port, "airflowDatabase": database, "existingSecret": "s"}})
    [(_, scheduler)] = [(d, c) for d, c in database_clients(docs) if c["name"] == "scheduler"]
    env = env_of(scheduler)
    secret_values = {"airflow-username": user, "airflow-password": password}
    process_env = {name: secret_values[e["valueFrom"]["secretKeyRef"]["key"]]
                   for name, e in env.items() if e.get("valueFrom", {}).get("secretKeyRef", {}).get("key")
                   in secret_values}
    assert set(process_env) == {"PGUSER", "PGPASSWORD"}
    url = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]["value"]
    for name, value in process_env.items():
        monkeypatch.setenv(name, value)
    # the server listens on its socket only: point the host there, keep everything else as rendered
    engine = sqlalchemy.create_engine(url, connect_args={"host": pg_server.socket_dir}, poolclass=sqlalchemy.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT current_user, current_database()")).one() == (user, database)


# --- NetworkPolicies ------------------------------------------------------------------------------


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes' label selector semantics (matchLabels and matchExpressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def policies(docs: Docs) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"].removeprefix("mvp-datasurface-"): d for d in docs if d["kind"] == "NetworkPolicy"}


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = doc["metadata"]["labels"] if doc["kind"] == "Pod" else \
        doc["spec"]["template"]["metadata"]["labels"]
    return labels


def job_pod_labels(settings: dict[str, Any], store: str) -> dict[str, str]:
    """What the DAG module labels a job pod with (tests/dags checks the same against the pod it builds)."""
    return {**settings["kubernetes"]["labels"], "datasurface.io/platform": settings["platform"].lower(),
            "datasurface.io/store": store}


def allowed_from(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    return any(selects(peer["podSelector"], labels) for rule in policy["spec"].get("ingress", [])
               for peer in rule.get("from", []) if "podSelector" in peer)


def test_postgresql_takes_traffic_only_from_this_release(defaults: Docs) -> None:
    pg = policies(defaults)["postgresql"]
    [sts] = [d for d in defaults if d["kind"] == "StatefulSet"]
    assert selects(pg["spec"]["podSelector"], pod_labels(sts))
    assert pg["spec"]["policyTypes"] == ["Ingress"]
    assert [p["port"] for r in pg["spec"]["ingress"] for p in r["ports"]] == ["postgresql"]
    assert {"name": "postgresql", "containerPort": 5432, "protocol": "TCP"} in sts["spec"]["template"]["spec"][
        "containers"][0]["ports"]
    for doc in workloads(defaults):
        if doc["kind"] != "StatefulSet":
            assert allowed_from(pg, pod_labels(doc)), doc["metadata"]["name"]
    settings = platform_json(defaults, "yellowlive")
    assert allowed_from(pg, job_pod_labels(settings, "Store1"))
    other = render_chart(release="other")
    for doc in workloads(other):
        assert not allowed_from(pg, pod_labels(doc)), doc["metadata"]["name"]
    assert not allowed_from(pg, job_pod_labels(platform_json(other, "yellowlive"), "Store1"))


def test_job_pods_keep_access_with_their_own_labels(render: Render) -> None:
    docs = render({"jobs": {"labels": {"team": "data", "app.kubernetes.io/component": "mine"}}})
    labels = job_pod_labels(platform_json(docs, "yellowlive"), "Store1")
    assert labels["team"] == "data"
    assert allowed_from(policies(docs)["postgresql"], labels)


def test_every_pod_of_the_release_is_selected_and_only_servers_take_traffic(render: Render) -> None:
    docs = render({"metrics": {"enabled": True}})
    pols = policies(docs)
    assert set(pols) == {"postgresql", "airflow-api-server", "airflow-scheduler", "exporter", "no-ingress"}
    pods = {d["metadata"]["name"].removeprefix("mvp-datasurface-"): pod_labels(d) for d in workloads(docs)}
    pods["job"] = job_pod_labels(platform_json(docs, "yellowlive"), "Store1")
    for name, labels in pods.items():
        selected = [p for p, pol in pols.items() if selects(pol["spec"]["podSelector"], labels)]
        assert len(selected) == 1, (name, selected)
        open_ports = [port["port"] for rule in pols[selected[0]]["spec"].get("ingress", []) for port in rule["ports"]]
        expected = {"postgresql": ["postgresql"], "airflow-api-server": ["http"], "airflow-scheduler": ["worker-logs"],
                    "exporter": ["http-metrics"]}.get(name, [])
        assert open_ports == expected, name
    # the api-server and exporter from anywhere; the scheduler's task logs from the api-server only
    assert all("from" not in r for r in pols["airflow-api-server"]["spec"]["ingress"])
    assert all("from" not in r for r in pols["exporter"]["spec"]["ingress"])
    [rule] = pols["airflow-scheduler"]["spec"]["ingress"]
    assert [selects(rule["from"][0]["podSelector"], labels) for labels in pods.values()].count(True) == 1
    assert selects(rule["from"][0]["podSelector"], pods["airflow-api-server"])


def test_network_policies_can_be_turned_off_or_widened(render: Render) -> None:
    assert not policies(render({"networkPolicy": {"enabled": False}}))
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "airflow"}}}
    pg = policies(render({"networkPolicy": {"postgresql": {"extraFrom": [peer]}}}))["postgresql"]
    assert pg["spec"]["ingress"][0]["from"][-1] == peer
    assert "postgresql" not in policies(render(EXTERNAL_DB))


# --- operators' knobs -----------------------------------------------------------------------------

AIRFLOW_PODS = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-migrate")


def airflow_pods(docs: Docs) -> dict[str, dict[str, Any]]:
    out = {}
    for doc in workloads(docs):
        name = doc["metadata"]["name"].removeprefix("mvp-datasurface-")
        for component in AIRFLOW_PODS:
            if name.startswith(component):
                out[component] = doc
    assert set(out) == set(AIRFLOW_PODS)
    return out


def test_task_logs_persist_on_one_shared_claim(render: Render) -> None:
    docs = render({"airflow": {"logs": {"persistence": {"enabled": True, "size": "20Gi", "storageClass": "nfs"}}}})
    pvc = find(docs, "PersistentVolumeClaim", "mvp-datasurface-airflow-logs")
    assert pvc["spec"] == {"accessModes": ["ReadWriteMany"], "storageClassName": "nfs",
                           "resources": {"requests": {"storage": "20Gi"}}}
    for name, doc in airflow_pods(docs).items():
        [logs] = [v for v in pod_spec(doc)["volumes"] if v["name"] == "logs"]
        assert logs == {"name": "logs", "persistentVolumeClaim": {"claimName": "mvp-datasurface-airflow-logs"}}, name
        for container in containers(doc):
            if container["name"] != "auth-passwords":
                assert {"name": "logs", "mountPath": "/opt/airflow/logs"} in container["volumeMounts"], name
    existing = render({"airflow": {"logs": {"persistence": {"enabled": True, "existingClaim": "mine"}}}})
    assert not [d for d in existing if d["kind"] == "PersistentVolumeClaim" and "logs" in d["metadata"]["name"]]
    for doc in airflow_pods(existing).values():
        assert {"name": "logs", "persistentVolumeClaim": {"claimName": "mine"}} in pod_spec(doc)["volumes"]


def test_task_logs_are_per_pod_by_default(defaults: Docs) -> None:
    for doc in airflow_pods(defaults).values():
        assert {"name": "logs", "emptyDir": {}} in pod_spec(doc)["volumes"]
    assert not [d for d in defaults if d["kind"] == "PersistentVolumeClaim"]


def test_job_pod_placement_and_annotations_reach_platform_json(render: Render) -> None:
    placement = {
        "nodeSelector": {"pool": "batch"},
        "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        "podAnnotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
    }
    k8s = platform_json(render({"jobs": placement}), "yellowlive")["kubernetes"]
    assert (k8s["nodeSelector"], k8s["tolerations"], k8s["affinity"], k8s["annotations"]) == (
        placement["nodeSelector"], placement["tolerations"], placement["affinity"], placement["podAnnotations"])


def test_pod_annotations_and_extra_volumes(render: Render) -> None:
    volume = {"name": "extra-ca", "configMap": {"name": "corp-ca"}}
    mount = {"name": "extra-ca", "mountPath": "/etc/corp-ca", "readOnly": True}
    docs = render({"airflow": {"podAnnotations": {"a": "1"}, "extraVolumes": [volume], "extraVolumeMounts": [mount]},
                   "postgresql": {"podAnnotations": {"p": "2"}}, "simulator": {"podAnnotations": {"s": "3"}},
                   "metrics": {"enabled": True, "podAnnotations": {"m": "4"}}})
    for name, doc in airflow_pods(docs).items():
        assert doc["spec"]["template"]["metadata"]["annotations"]["a"] == "1", name
        assert volume in pod_spec(doc)["volumes"], name
        for container in containers(doc):
            assert (mount in container["volumeMounts"]) is (container["name"] != "auth-passwords"), name
    for kind, name, key in (("StatefulSet", "postgresql", "p"), ("Deployment", "simulator", "s"),
                            ("Deployment", "exporter", "m")):
        doc = find(docs, kind, f"mvp-datasurface-{name}")
        assert key in doc["spec"]["template"]["metadata"]["annotations"], name
    sched = airflow_pods(docs)["airflow-scheduler"]
    assert "checksum/dags" in sched["spec"]["template"]["metadata"]["annotations"]


def test_postgresql_image_is_a_full_version_with_the_pull_secrets(render: Render) -> None:
    docs = render({"imagePullSecrets": [{"name": "regcred"}]})
    spec = pod_spec(find(docs, "StatefulSet", "mvp-datasurface-postgresql"))
    assert re.fullmatch(r"postgres:\d+\.\d+", spec["containers"][0]["image"]), spec["containers"][0]["image"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]


# --- the Airflow UI behind an Ingress -------------------------------------------------------------


def test_ingress_routes_to_the_api_server(render: Render) -> None:
    [values_file] = [p for p in CI_VALUES if ci_id(p) == "ingress"]
    docs = render(values_file=values_file)
    ingress = find(docs, "Ingress", "mvp-datasurface-airflow-api-server")
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["airflow.example.com"], "secretName": "airflow-example-com-tls"}]
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "airflow.example.com"
    [path] = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    service = find(docs, "Service", path["backend"]["service"]["name"])
    assert path["backend"]["service"]["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    api = containers(find(docs, "Deployment", "mvp-datasurface-airflow-api-server"))[-1]
    assert env_of(api)["AIRFLOW__API__BASE_URL"]["value"] == "https://airflow.example.com/"


def test_no_ingress_by_default_and_any_host_without_one(defaults: Docs, render: Render) -> None:
    assert not [d for d in defaults if d["kind"] == "Ingress"]
    docs = render({"airflow": {"ingress": {"enabled": True}}})
    ingress = find(docs, "Ingress", "mvp-datasurface-airflow-api-server")
    assert "host" not in ingress["spec"]["rules"][0] and "tls" not in ingress["spec"]
    assert "ingressClassName" not in ingress["spec"]
    api = containers(find(docs, "Deployment", "mvp-datasurface-airflow-api-server"))[-1]
    assert "AIRFLOW__API__BASE_URL" not in env_of(api)
    assert "airflow.ingress.tls.secretName needs airflow.ingress.host" in helm_fails(
        ["--set", "airflow.ingress.enabled=true", "--set", "airflow.ingress.tls.secretName=x"])


# --- the FAB auth manager -------------------------------------------------------------------------

FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"


def test_fab_auth_manager_creates_the_admin_from_the_secret(render: Render) -> None:
    [values_file] = [p for p in CI_VALUES if ci_id(p) == "fab-ingress"]
    docs = render(values_file=values_file)
    for name, doc in airflow_pods(docs).items():
        for container in containers(doc):
            env = env_of(container)
            assert env["AIRFLOW__CORE__AUTH_MANAGER"]["value"] == FAB, (name, container["name"])
            assert not [e for e in env if e.startswith("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER")], name
    api = airflow_pods(docs)["airflow-api-server"]
    assert [c["name"] for c in pod_spec(api)["initContainers"]] == ["wait-for-migrations", "fab-admin"]
    [admin] = [c for c in pod_spec(api)["initContainers"] if c["name"] == "fab-admin"]
    env = env_of(admin)
    assert env["ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mvp-datasurface-airflow",
                                                                  "key": "admin-password"}
    assert (env["ADMIN_USERNAME"]["value"], env["ADMIN_EMAIL"]["value"]) == ("admin", "ops@example.com")
    assert not [a for a in admin["args"] if "ADMIN_PASSWORD=" in a], "no password on the command line"
    assert find(docs, "Ingress", "mvp-datasurface-airflow-api-server")["spec"]["rules"][0]["host"] == \
        "airflow.internal.example"


def test_simple_auth_manager_is_the_default(defaults: Docs) -> None:
    api = airflow_pods(defaults)["airflow-api-server"]
    assert [c["name"] for c in pod_spec(api)["initContainers"]] == ["wait-for-migrations", "auth-passwords"]
    env = env_of(pod_spec(api)["containers"][0])
    assert env["AIRFLOW__CORE__AUTH_MANAGER"]["value"].endswith(".SimpleAuthManager")
