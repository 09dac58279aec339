"""A rendered release, its database and its pods as processes: the building blocks of the system tests.

`Release` renders the chart (real helm), starts a throwaway PostgreSQL from datasurface.localpg in place
of the bundled StatefulSet (the rendered init script run against it with the StatefulSet's own env, so the
roles and passwords are the rendered Secret's) and exposes it under the postgresql Service's name; then
pods start in the order Kubernetes would run them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from datasurface.localpg import SUPERUSER, LocalPostgres, find_bin_dir
from tests.support.helm import render_chart_text
from tests.system.kubelet import Cluster, KubeletError, Manifests, Pod, airflow_image, job_image, postgres_image

VENV = Path(os.environ.get("VIRTUAL_ENV") or Path(__import__("sys").executable).parents[1])


class Release:
    def __init__(self, values: dict[str, Any], release: str = "mvp", workdir: Path | None = None) -> None:
        self.release = release
        self.values = values
        self.fullname = f"{release}-datasurface"
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="ds-system-"))
        os.chmod(self.workdir, 0o755)
        self.manifests = self.render(values)
        self.pg: LocalPostgres | None = None
        self.pods: dict[str, Pod] = {}  # the Airflow components by name (start_airflow)
        self.source_rows = 0  # what the test put into the source
        self.cluster = Cluster(self.manifests, self.workdir / "node",
                               images={"apache/airflow": airflow_image(VENV),
                                       "ghcr.io/datasurface/datasurface-job": job_image(VENV),
                                       "postgres": postgres_image(find_bin_dir("system"))})
        self._db_port: int | None = None

    def render(self, values: dict[str, Any]) -> Manifests:
        """`helm template`; generated Secret values are then kept from the current render, as the chart's
        `lookup` keeps them on `helm upgrade` (helm template cannot look anything up)."""
        manifests = Manifests.from_text(render_chart_text(values, release=self.release))
        current = getattr(self, "manifests", None)
        for doc in manifests.of_kind("Secret") if current else []:
            old = current.find("Secret", doc["metadata"]["name"])
            if old is not None:
                doc["data"] = {**doc.get("data", {}), **{k: v for k, v in (old.get("data") or {}).items()
                                                         if k in (doc.get("data") or {})}}
        return manifests

    def start(self) -> Release:
        self.cluster.start()
        self.pg = LocalPostgres(find_bin_dir("any")).start()
        self._init_database()
        self.cluster.expose(f"{self.fullname}-postgresql", 5432,
                            unix_socket=f"{self.pg.socket_dir}/.s.PGSQL.{self.pg.port}")
        return self

    def start_bundled(self) -> Release:
        """The chart's own PostgreSQL: its StatefulSet's pod (the postgres image's first start runs the
        rendered init script), until its startup probe (pg_isready) passes."""
        self.cluster.start()
        pod = self.cluster.start_pod("StatefulSet", f"{self.fullname}-postgresql")
        pod.wait_ready(timeout=120)
        return self

    def connect(self, database: str, role: str) -> Any:
        """psycopg2 to a database of the release as one of its roles (autocommit)."""
        import psycopg2

        secret = f"{self.fullname}-postgresql"
        if self.pg is not None:
            host, port = self.pg.socket_dir, self.pg.port
        else:
            if self._db_port is None:
                self._db_port = self.cluster.port_forward(secret, 5432)
            host, port = "127.0.0.1", self._db_port
        conn = psycopg2.connect(host=host, port=port, dbname=database, user=self.secret(secret, f"{role}-username"),
                                password=self.secret(secret, f"{role}-password"), connect_timeout=10)
        conn.autocommit = True
        return conn

    def fill_source(self) -> int:
        """The simulator's container (the job image's `simulate --create-tables`) fills the source, then
        is stopped as a Deployment's pod is (SIGTERM; it stops within a second). The customers count."""
        pod = self.cluster.start_pod("Deployment", f"{self.fullname}-simulator")
        deadline = time.monotonic() + 60
        count = 0
        while time.monotonic() < deadline and count < 5:
            time.sleep(0.5)
            with self.connect("customer_db", "source") as conn, conn.cursor() as cur:
                cur.execute("SELECT to_regclass('public.customers')")
                if cur.fetchone()[0] is not None:
                    cur.execute("SELECT count(*) FROM public.customers")
                    count = cur.fetchone()[0]
        took = pod.stop()
        if count < 5:
            raise KubeletError(f"the simulator made no customers:\n{pod.all_logs()[-3000:]}")
        if took >= 5:
            raise KubeletError(f"the simulator took {took:.1f} s to stop")
        with self.connect("customer_db", "source") as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM public.customers")
            self.source_rows = int(cur.fetchone()[0])
        return self.source_rows

    # The merge database's ledger, as a test reads it ------------------------------------------------

    def batches(self, schema: str) -> list[tuple[int, str]]:
        """The platform's ds_batches as (batch_id, status), oldest first; [] before its first setup."""
        with self.connect("merge_db", "merge") as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", [f"{schema}.ds_batches"])
            if cur.fetchone()[0] is None:
                return []
            cur.execute(f'SELECT batch_id, status FROM "{schema}"."ds_batches" ORDER BY batch_id')
            return list(cur.fetchall())

    def current_rows(self, schema: str) -> int:
        with self.connect("merge_db", "merge") as conn, conn.cursor() as cur:
            cur.execute(f'SELECT count(*) FROM "{schema}"."store1_customers_current"')
            return int(cur.fetchone()[0])

    def wait_for_recovery(self, schema: str, interrupted: int, timeout: float) -> list[tuple[int, str]]:
        """After a run was interrupted with batch `interrupted` open: waits until that batch is committed
        (the retry finished it and exited 10) and one fresh batch after it too (the re-triggered run).
        Returns the batches from `interrupted` on; the caller asserts them."""
        deadline = time.monotonic() + timeout
        while True:
            after = [b for b in self.batches(schema) if b[0] >= interrupted]
            done = len(after) >= 2 and all(status == "committed" for _, status in after)
            if done or time.monotonic() > deadline:
                return after
            time.sleep(1)

    def _init_database(self) -> None:
        """The postgres image's first start: the initdb.d script with the StatefulSet container's env."""
        assert self.pg is not None
        sts = self.manifests.get("StatefulSet", f"{self.fullname}-postgresql")
        pod = Pod(self.cluster, sts, "postgresql-env", "127.0.1.2")
        env = pod.container_env(sts["spec"]["template"]["spec"]["containers"][0])
        script = self.manifests.config_data("ConfigMap", f"{self.fullname}-postgresql-initdb")
        assert script is not None
        path = self.workdir / "10-datasurface.sh"
        path.write_bytes(script["10-datasurface.sh"])
        run_env = {k: v for k, v in env.items() if k.startswith("DS_")}
        run_env.update(PATH=f"{self.pg._bin()}{os.pathsep}{os.environ['PATH']}", POSTGRES_USER=SUPERUSER,
                       PGHOST=self.pg.socket_dir, PGPORT=str(self.pg.port), PGPASSWORD=self.pg.password)
        proc = subprocess.run(["bash", str(path)], env=run_env, capture_output=True, text=True, timeout=60)
        if proc.returncode:
            raise KubeletError(f"initdb script failed: {proc.stdout}{proc.stderr}")

    def stop(self) -> None:
        """Stop every pod and the database; the folder (logs, runtime specs holding env) is removed unless
        DATASURFACE_KEEP_SYSTEM_DIR is set, to look at the pods' logs after a failure."""
        self.cluster.stop()
        if self.pg is not None:
            self.pg.stop()
        if not os.environ.get("DATASURFACE_KEEP_SYSTEM_DIR"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    # Airflow -----------------------------------------------------------------------------------------

    def start_airflow(self) -> dict[str, Pod]:
        """Migration Job, then api-server, dag-processor and scheduler (their init containers wait for the
        schema), each until its probe passes."""
        af = f"{self.fullname}-airflow"
        self.cluster.run_job(self.migrate_job, timeout=600)
        components = ("api-server", "dag-processor", "scheduler")
        pods = dict(zip(components, self.cluster.start_pods([("Deployment", f"{af}-{c}") for c in components]),
                        strict=True))
        for pod in pods.values():
            pod.wait_ready(timeout=240)
        self.pods = pods
        return pods

    @property
    def migrate_job(self) -> str:
        """The migration Job's name (a hash of its spec)."""
        job = next(j for j in self.manifests.of_kind("Job") if "-migrate-" in j["metadata"]["name"])
        name: str = job["metadata"]["name"]
        return name

    def secret(self, name: str, key: str) -> str:
        data = self.manifests.config_data("Secret", name)
        assert data is not None, name
        return data[key].decode()


def job_processes(pod: Pod, platform: str | None = None) -> list[int]:
    """The pids of the `datasurface-job merge` processes (of that platform) running in the pod's (first)
    container, e.g. the local runner's jobs in the scheduler's."""
    found = []
    for pid in pod.container().processes():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not (any(a.endswith(b"/datasurface-job") for a in argv[:2]) and b"merge" in argv):
            continue
        if platform is None or any(argv[i:i + 2] == [b"--platform", platform.encode()] for i in range(len(argv))):
            found.append(pid)
    return found


class AirflowApi:
    """The api-server's REST API through a port-forward, logged in as the chart's admin user."""

    def __init__(self, release: Release) -> None:
        self.port = release.cluster.port_forward(f"{release.fullname}-airflow-api-server", 8080)
        password = release.secret(f"{release.fullname}-airflow", "admin-password")
        token = self.call("POST", "/auth/token", {"username": "admin", "password": password}, auth=False)
        self.token = token["access_token"]

    def call(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        # a read that lost its connection (the port-forward or a recycled api-server worker closed it without a
        # response) is asked again, as any client of a REST API would; a write is never repeated
        attempts = 5 if method == "GET" else 1
        for attempt in range(1, attempts + 1):
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return json.loads(response.read() or b"null")
            except urllib.error.HTTPError as exc:
                raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None
            except (ConnectionError, TimeoutError, urllib.error.URLError):
                if attempt == attempts:
                    raise
                time.sleep(attempt)
        raise AssertionError("unreachable")

    def wait_for_dag(self, dag_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                self.call("GET", f"/api/v2/dags/{dag_id}")
                return
            except (AssertionError, ConnectionError, TimeoutError, urllib.error.URLError) as exc:
                last = exc  # not parsed yet (404), or the api-server did not answer: asked again until the deadline
                time.sleep(1)
        raise AssertionError(f"DAG {dag_id} not parsed after {timeout} s (last answer: {last!r})")

    def trigger(self, dag_id: str) -> str:
        run = self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None})
        return str(run["dag_run_id"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        state = "?"
        while time.monotonic() < deadline:
            try:
                state = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]
            except (ConnectionError, TimeoutError, urllib.error.URLError) as exc:  # asked again until the deadline
                state = f"? ({exc!r})"
            if state in ("success", "failed"):
                return str(state)
            time.sleep(1)
        raise AssertionError(f"{dag_id} run {run_id} still {state} after {timeout} s")

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        """The DAG's runs, oldest first."""
        runs = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=run_after&limit=100")["dag_runs"]
        return list(runs)

    def wait_until_idle(self, dag_id: str, timeout: float) -> None:
        """Until no run of the DAG is queued or running (e.g. a scheduled one)."""
        deadline = time.monotonic() + timeout
        while any(r["state"] in ("queued", "running") for r in self.runs(dag_id)):
            if time.monotonic() > deadline:
                raise AssertionError(f"{dag_id} still has active runs after {timeout} s")
            time.sleep(1)

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        tis = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti for ti in tis}
