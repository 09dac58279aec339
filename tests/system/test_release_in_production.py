"""The release as an operator installs it in production, run as processes: an external PostgreSQL that takes
TCP only over TLS (sslMode verify-full, the CA from a Secret), database passwords holding `@ / : %` and
spaces, the FAB auth manager, and an upgrade changing the Airflow image tag, applied by `helm upgrade` and
by `helm template | kubectl apply`.

The user's server (external_tls.py) -> the simulator (forced on: `auto` leaves it off with an external
database) fills the source -> migration Job -> api-server (its fab-admin init container), dag-processor,
scheduler -> the exporter -> a local-runner DAG run and the pod a kubernetes-runner DAG launches -> the
`helm test` pod -> a FAB login -> the upgrade.
"""

from __future__ import annotations

import copy
import http.cookiejar
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.support.helm import render_chart_text
from tests.system.external_tls import CA_SECRET, DB_SECRET, HOST, SERVICE, make_ca, server_objects
from tests.system.kubectl_apply import ApplyError, apply
from tests.system.kubelet import Manifests, Pod
from tests.system.release import AirflowApi, Release

pytestmark = pytest.mark.timeout(900)

# Every character a URL would need escaped, a space, and escapes that a URL decoder would turn into others.
PASSWORDS = {"source": "s@urce /:% pw", "merge": "m3rge@host/db:5432%20 x", "airflow": "a@f low/:%2F%"}
LOCAL = {"name": "YellowLive", "mode": "live", "stores": ["Store1"], "schedule": None,
         "infrastructureSchedule": None, "runner": "local", "retryDelaySeconds": 1}
# Its DAG's pod is built by KubernetesPodOperator in the scheduler and run here (no API server to create it).
PODS = {"name": "BlueLive", "mode": "live", "stores": ["Store1"], "schedule": None,
        "infrastructureSchedule": None, "runner": "kubernetes", "retryDelaySeconds": 1}
VALUES: dict[str, Any] = {
    "platforms": [LOCAL, PODS],
    "postgresql": {"enabled": False},
    "externalDatabase": {"host": HOST, "existingSecret": DB_SECRET, "sslMode": "verify-full",
                         "caSecret": {"name": CA_SECRET, "key": "ca.crt"}},
    "simulator": {"enabled": True},
    "metrics": {"enabled": True},
    "airflow": {"auth": {"manager": "fab"}},
}
CONNECTION = re.compile(r"connection authorized: user=(\S+) database=(\S+)(.*)$", re.MULTILINE)


class ExternalRelease(Release):
    """The release on the user's own server: the test's connections go through a port-forward, over TLS
    verifying the CA (verify-ca: the forwarded address is not the certificate's name)."""

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__(values)
        self.user_objects = server_objects(self.workdir / "tls", PASSWORDS)
        self.ca_file = self.workdir / "tls" / "ca.crt"
        self.manifests.add(*copy.deepcopy(self.user_objects))

    def render(self, values: dict[str, Any]) -> Manifests:
        manifests = super().render(values)
        manifests.add(*copy.deepcopy(getattr(self, "user_objects", [])))
        return manifests

    def start_server(self) -> ExternalRelease:
        self.cluster.start()
        self.cluster.start_pod("Pod", SERVICE).wait_ready(timeout=120)
        return self

    def connect(self, database: str, role: str, sslmode: str = "verify-ca") -> Any:
        import psycopg2

        if self._db_port is None:
            self._db_port = self.cluster.port_forward(SERVICE, 5432)
        conn = psycopg2.connect(host="127.0.0.1", port=self._db_port, dbname=database, user=role,
                                password=PASSWORDS[role], sslmode=sslmode, sslrootcert=str(self.ca_file),
                                connect_timeout=10, application_name="test")
        conn.autocommit = True
        return conn

    def server_sql(self, query: str) -> list[list[str]]:
        """A query as the server's superuser (on its socket, `kubectl exec` into the server's pod)."""
        out = self.cluster.pods[SERVICE].exec(["psql", "-X", "-At", "-F", "\t", "-h", "/var/run/postgresql",
                                               "-U", "postgres", "-d", "postgres", "-c", query])
        assert out.returncode == 0, out.stderr
        return [line.split("\t") for line in out.stdout.splitlines()]

    def server_log(self) -> str:
        return self.cluster.pods[SERVICE].logs()


@pytest.fixture(scope="module")
def release() -> Iterator[ExternalRelease]:
    rel = ExternalRelease(VALUES).start_server()
    try:
        rel.fill_source()
        rel.start_airflow()
        exporter = next(d["metadata"]["name"] for d in rel.manifests.of_kind("Deployment")
                        if d["metadata"]["name"].endswith("-exporter"))
        rel.pods["exporter"] = rel.cluster.start_pod("Deployment", exporter)
        rel.pods["exporter"].wait_ready(60)
        yield rel
    finally:
        rel.stop()


@pytest.fixture(scope="module")
def api(release: ExternalRelease) -> AirflowApi:
    return AirflowApi(release)  # POST /auth/token: the FAB manager's admin, password from the chart's Secret


# --- TLS ---------------------------------------------------------------------------------------------------


def test_simulator_auto_is_off_with_an_external_database() -> None:
    """`auto` renders no simulator next to a user's own database (the release here forces it on to fill
    the source), and one next to the bundled server."""
    def simulators(values: dict[str, Any]) -> list[str]:
        return [d["metadata"]["name"] for d in Manifests.from_text(render_chart_text(values)).of_kind("Deployment")
                if d["metadata"]["name"].endswith("-simulator")]

    assert simulators({**VALUES, "simulator": {"enabled": "auto"}}) == []
    assert simulators({"platforms": [LOCAL], "simulator": {"enabled": "auto"}}) == ["mvp-datasurface-simulator"]


def test_the_server_refuses_plain_tcp(release: ExternalRelease) -> None:
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="no encryption"):
        release.connect("merge_db", "merge", sslmode="disable")
    with closing(release.connect("merge_db", "merge")) as conn, conn.cursor() as cur:
        cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert cur.fetchone()[0] is True


def test_every_client_works_over_verified_tls(release: ExternalRelease, api: AirflowApi) -> None:
    """The simulator filled the source; Airflow (migration Job, api-server, dag-processor, scheduler) runs
    on its metadata database; a local-runner DAG run merges; the pod a kubernetes-runner DAG launches (its
    env and the CA mount from platform.json) merges; the exporter scrapes; the `helm test` pod passes. Every
    connection of theirs the server logged was over TLS, and each of them verifies the server's name."""
    assert release.source_rows >= 5

    dag_id = "yellowlive__Store1_ingestion"
    api.wait_for_dag(dag_id, 120)
    run_id = api.trigger(dag_id)
    assert api.wait_for_run(dag_id, run_id, 240) == "success", release.pods["scheduler"].logs()[-4000:]
    assert release.current_rows("yellowlive") == source_count(release)

    pod = launch_job_pod(release, "bluelive__Store1_ingestion")
    assert pod.wait(180) == {"base": 0}, pod.all_logs()[-4000:]
    assert release.current_rows("bluelive") == source_count(release)

    scrape = http_get(release.cluster.port_forward(release.pods["exporter"].workload["metadata"]["name"],
                                                   release.values.get("metrics", {}).get("port", 9108)), "/metrics")
    assert re.search(r"^datasurface_up(\{[^}]*\})? 1(\.0)?$", scrape, re.MULTILINE), scrape[:3000]

    check = release.cluster.start_pod("Pod", f"{release.fullname}-check")
    assert check.wait(120) == {"check": 0}, check.logs()[-3000:]

    # the server's log: every client's connections, all over TLS; pg_stat_ssl for the sessions open now
    connections = CONNECTION.findall(release.server_log())
    seen = {(user, database) for user, database, _ in connections}
    assert {("airflow", "airflow_db"), ("merge", "merge_db"), ("source", "customer_db")} <= seen, seen
    # the superuser's sessions are the init script's, on the socket, before the server listened on TCP
    plain = [c for c in connections if "SSL enabled" not in c[2] and c[0] != "postgres"]
    assert not plain, plain
    sessions = release.server_sql("""SELECT a.usename, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                                      WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()""")
    assert ["airflow", "t"] in sessions and all(ssl == "t" for _, ssl in sessions), sessions

    # verify-full, not just TLS: each running client refuses a name its certificate does not hold (a
    # client left at libpq's default `prefer` would connect without a word)
    for name in ("scheduler", "api-server", "dag-processor", "exporter"):
        out = release.pods[name].exec(["python", "-c", WRONG_NAME, "pg-tls.default.svc"], timeout=60)
        assert out.returncode == 3 and "does not match host name" in out.stderr, (name, out.stderr)


WRONG_NAME = """
import sys, psycopg2
try:
    psycopg2.connect(host=sys.argv[1], dbname="postgres", user="nobody", password="x", connect_timeout=10)
except psycopg2.OperationalError as exc:
    sys.exit(print(exc, file=sys.stderr) or 3)
"""


def test_a_client_with_another_ca_refuses_the_server(release: ExternalRelease, tmp_path: Path) -> None:
    """The CA Secret is what the clients trust: with another CA in it, the `helm test` pod fails."""
    other = make_ca(tmp_path, "other").read_text()
    manifests = release.cluster.manifests
    ca = manifests.get("Secret", CA_SECRET)
    saved = ca["stringData"]
    ca["stringData"] = {"ca.crt": other}
    # the test pod again (helm deletes the previous one first: a pod of its own name here)
    again = copy.deepcopy(manifests.get("Pod", f"{release.fullname}-check"))
    again["metadata"]["name"] += "-again"
    manifests.add(again)
    try:
        check = release.cluster.start_pod("Pod", again["metadata"]["name"])
        assert check.wait(120) != {"check": 0}
        assert "certificate verify failed" in check.logs(), check.logs()[-3000:]
    finally:
        ca["stringData"] = saved


def source_count(release: ExternalRelease) -> int:
    with closing(release.connect("customer_db", "source")) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM public.customers")
        return int(cur.fetchone()[0])


BUILD_POD = """
import json, os, sys, tempfile
# KubernetesPodOperator builds its pod from a kube config; one naming a server never contacted
home = tempfile.mkdtemp()
config = os.path.join(home, "kubeconfig")
with open(config, "w") as f:
    json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "c",
               "clusters": [{"name": "c", "cluster": {"server": "https://kubernetes.invalid"}}],
               "users": [{"name": "u", "user": {"token": "t"}}],
               "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}, f)
os.environ["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = json.dumps({"conn_type": "kubernetes",
                                                            "extra": {"kube_config_path": config}})
from airflow.dag_processing.dagbag import DagBag
from kubernetes.client import ApiClient
dag_id, task_id = sys.argv[1:3]
bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
pod = bag.dags[dag_id].get_task(task_id).build_pod_request_obj()
print("POD" + json.dumps(ApiClient().sanitize_for_serialization(pod)))
"""


def launch_job_pod(release: ExternalRelease, dag_id: str) -> Pod:
    """The pod the DAG's merge task would create: built by the provider in the scheduler container from the
    mounted platform.json, then run by the kubelet emulation."""
    out = release.pods["scheduler"].exec(["python", "-c", BUILD_POD, dag_id, "merge"], timeout=180)
    line = next((x for x in out.stdout.splitlines() if x.startswith("POD")), None)
    assert line is not None, out.stdout[-2000:] + out.stderr[-3000:]
    pod = json.loads(line[3:])
    pod.update(apiVersion="v1", kind="Pod")
    release.cluster.manifests.add(pod)
    return release.cluster.start_pod("Pod", pod["metadata"]["name"])


def http_get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return str(response.read().decode())


# --- FAB -----------------------------------------------------------------------------------------------------


def test_fab_login(release: ExternalRelease, api: AirflowApi) -> None:
    """The FAB auth manager's admin, created by the api-server's fab-admin init container from the chart's
    Secret: logs in through the login page and reaches a page that needs a login; the token API answers
    the same password with a token and a wrong one with 401."""
    port = api.port
    password = release.secret(f"{release.fullname}-airflow", "admin-password")
    base = f"http://127.0.0.1:{port}"

    def session(secret: str) -> tuple[str, str]:
        """Log in through the page; (the last URL, the user-info page's text)."""
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        page = opener.open(f"{base}/auth/login/", timeout=30).read().decode()
        csrf = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
        assert csrf, page[:2000]
        form = urllib.parse.urlencode({"username": "admin", "password": secret, "csrf_token": csrf.group(1)})
        landed = opener.open(f"{base}/auth/login/", data=form.encode(), timeout=30)
        try:
            info = opener.open(f"{base}/auth/users/userinfo/", timeout=30)
            return landed.url, info.url + "\n" + info.read().decode()
        except urllib.error.HTTPError as exc:
            return landed.url, f"{exc.code}"

    _, info = session(password)
    assert "/auth/users/userinfo/" in info.splitlines()[0] and "admin" in info, info[:2000]
    _, info = session(password + "-wrong")
    assert "/auth/login/" in info.splitlines()[0] or info.startswith(("401", "403")), info[:2000]

    assert api.call("GET", "/api/v2/dags")["total_entries"] >= 2  # the token of AirflowApi's own login
    with pytest.raises(AssertionError, match="401"):
        api.call("POST", "/auth/token", {"username": "admin", "password": password + "-wrong"}, auth=False)
    with pytest.raises(AssertionError, match="401"):
        api.call("GET", "/api/v2/dags", auth=False)


# --- upgrade -------------------------------------------------------------------------------------------------


def test_an_upgrade_changing_the_airflow_image_tag(release: ExternalRelease) -> None:
    """A new Airflow image tag renders a new migration Job (its name follows its spec) beside the old one:
    `kubectl apply` of the new render creates it and leaves the old Job as it was (a Job of the old name
    with the new pod template is refused as immutable: what a fixed name did); the new Job migrates, and
    the Airflow pods (wait-for-migrations first) come back healthy with a working login."""
    old_job = release.migrate_job
    values = copy.deepcopy(release.values)
    values["airflow"]["image"] = {"tag": "3.3.2-python3.11"}
    upgraded = release.render(values)
    new_job = next(j["metadata"]["name"] for j in upgraded.of_kind("Job") if "-migrate-" in j["metadata"]["name"])
    assert new_job != old_job
    live = Manifests(copy.deepcopy(release.cluster.manifests.docs))
    old_spec = copy.deepcopy(live.get("Job", old_job))

    # a Job that kept its name across the change: the API server refuses it, so `kubectl apply` fails
    fixed = Manifests(copy.deepcopy(upgraded.docs))
    fixed.get("Job", new_job)["metadata"]["name"] = old_job
    with pytest.raises(ApplyError, match=f'Job "{old_job}" is invalid: spec.template: field is immutable'):
        apply(live, fixed)

    applied = apply(live, upgraded)
    assert applied.get("Job", old_job) == old_spec
    assert applied.get("Job", new_job) == upgraded.get("Job", new_job)
    for name in ("api-server", "dag-processor", "scheduler"):
        image = applied.get("Deployment", f"{release.fullname}-airflow-{name}")["spec"]["template"]["spec"]
        assert {c["image"] for c in image["containers"]} == {"apache/airflow:3.3.2-python3.11"}

    # the rollout: the old pods stop; the new Job and the new pods start together, as applied objects do
    # (the pods' wait-for-migrations init container waits for the schema the Job brings to head)
    components = ("api-server", "dag-processor", "scheduler")
    release.cluster.stop_pods([release.pods[n] for n in components])
    release.cluster.manifests = applied
    release.manifests = upgraded
    release.values = values
    with ThreadPoolExecutor(max_workers=1) as pool:
        job = pool.submit(release.cluster.run_job, new_job, 300)
        pods = release.cluster.start_pods([("Deployment", f"{release.fullname}-airflow-{c}") for c in components])
        assert job.result().container("migrate").exit_code == 0
    for pod in pods:
        assert pod.init_containers["wait-for-migrations"].exit_code == 0
        pod.wait_ready(240)
    release.pods.update(zip(components, pods, strict=True))

    fresh = AirflowApi(release)  # a new login through the new api-server
    health = fresh.call("GET", "/api/v2/monitor/health", auth=False)
    assert health["metadatabase"]["status"] == "healthy", health
    deadline = time.monotonic() + 60
    while health["scheduler"]["status"] != "healthy" and time.monotonic() < deadline:
        time.sleep(1)
        health = fresh.call("GET", "/api/v2/monitor/health", auth=False)
    assert health["scheduler"]["status"] == "healthy", health
    dag_id = "yellowlive__Store1_ingestion"
    run_id = fresh.trigger(dag_id)
    assert fresh.wait_for_run(dag_id, run_id, 240) == "success", release.pods["scheduler"].logs()[-4000:]
