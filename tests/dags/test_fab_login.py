"""The chart's FAB auth manager (airflow.auth.manager fab) lets its admin log in: the api-server's fab-admin
init container, as rendered, run against a migrated metadata database, then a login through Airflow's own
API app (POST /auth/token). Real Airflow, real FAB provider; SQLite stands in for PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import helm

LOGIN = """
import os, sys
from fastapi.testclient import TestClient
from airflow.api_fastapi.app import create_app
client = TestClient(create_app("all"))
for password in sys.argv[1:]:
    reply = client.post("/auth/token", json={"username": os.environ["ADMIN_USERNAME"], "password": password})
    print("STATUS", reply.status_code, "token" if "access_token" in reply.json() else "-")
"""


def _fab_admin(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    api = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-api-server"))
    [admin] = [c for c in api["spec"]["template"]["spec"]["initContainers"] if c["name"] == "fab-admin"]
    return admin, {e["name"]: e for e in admin["env"]}


def test_the_fab_admin_logs_in_with_the_secrets_password(tmp_path: Path) -> None:
    docs = helm.render_chart(values_files=[helm.CHART_DIR / "ci" / "fab-ingress-values.yaml"])
    admin, env = _fab_admin(docs)
    assert admin["args"][:2] == ["python", "-c"]
    bin_dir = Path(sys.executable).parent
    base = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
            "AIRFLOW__API_AUTH__JWT_SECRET": "j" * 86, "AIRFLOW__API__SECRET_KEY": "s" * 64,
            "AIRFLOW__CORE__AUTH_MANAGER": env["AIRFLOW__CORE__AUTH_MANAGER"]["value"],
            "ADMIN_USERNAME": env["ADMIN_USERNAME"]["value"], "ADMIN_EMAIL": env["ADMIN_EMAIL"]["value"]}

    def run(args: list[str], **extra: str) -> str:
        proc = subprocess.run(args, env={**base, **extra}, capture_output=True, text=True, timeout=300,
                              check=False)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc.stdout

    run([str(bin_dir / "airflow"), "db", "migrate"])  # the migration Job: FAB's tables come with it
    first, second = "p@ss w/rd:%1", "an0ther p@ss/word%"
    run([str(bin_dir / "python"), "-c", admin["args"][2]], ADMIN_PASSWORD=first)   # creates the admin
    run([str(bin_dir / "python"), "-c", admin["args"][2]], ADMIN_PASSWORD=second)  # the Secret changed: reset
    out = run([str(bin_dir / "python"), "-c", LOGIN, second, first])
    assert [line for line in out.splitlines() if line.startswith("STATUS")] == ["STATUS 201 token",
                                                                                 "STATUS 401 -"]
