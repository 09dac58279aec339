"""The local runner's job gets exactly what a job pod gets (issue 11, item 1): the platform's DATASURFACE_*
settings and secretEnv, plus what a process needs to run, and never the worker's own Airflow secrets."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import ModuleType

import pytest
from dag_support import example_settings

DUMP_ENV = """#!/bin/sh
exec {python} -c 'import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], "w"))' {out}
"""
WORKER_ENV = {
    "MERGE_USER": "m", "MERGE_PASSWORD": "mpw", "SOURCE_USER": "s", "SOURCE_PASSWORD": "spw",
    "DATASURFACE_GIT_TOKEN": "tok", "PGSSLMODE": "require", "LC_ALL": "C.UTF-8", "TZ": "UTC",
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
    # the worker's own: never for the job
    "AIRFLOW__CORE__FERNET_KEY": "fernet", "AIRFLOW__API_AUTH__JWT_SECRET": "jwt",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://db/airflow", "PGUSER": "airflow", "PGPASSWORD": "pw",
    "PGPASSFILE": "/x/.pgpass", "PGDATABASE": "airflow_db", "PGHOST": "db",
    "DATASURFACE_SLACK_WEBHOOK": "https://hooks.example/x", "KUBERNETES_SERVICE_HOST": "10.0.0.1",
}


def fake_job_on_a_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `datasurface-job` on PATH that dumps its env to the returned file; the worker's env is WORKER_ENV."""
    import sys

    out = tmp_path / "env.json"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    job = bin_dir / "datasurface-job"
    job.write_text(DUMP_ENV.format(python=sys.executable, out=out))
    job.chmod(job.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for name, value in WORKER_ENV.items():
        monkeypatch.setenv(name, value)
    return out


def test_local_job_env_is_the_job_settings_secret_env_and_basics(dags_module: ModuleType, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = fake_job_on_a_worker(tmp_path, monkeypatch)
    settings = dags_module.parse_settings(example_settings(runner="local"))
    task = dags_module.job_task(settings, task_id="merge", args=settings.merge_args("Store1"), store="Store1",
                                run_again_on_10=True)
    task.execute({})
    env = json.loads(out.read_text())
    for name in ("MERGE_USER", "MERGE_PASSWORD", "SOURCE_USER", "SOURCE_PASSWORD", "DATASURFACE_GIT_TOKEN",
                 "PGSSLMODE", "LC_ALL", "TZ", "GIT_SSH_COMMAND", "PATH"):
        assert env[name] == os.environ[name], name
    for name, value in settings.job_env().items():
        assert env[name] == value
    for name in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                 "PGUSER", "PGPASSWORD", "PGPASSFILE", "PGDATABASE", "PGHOST", "DATASURFACE_SLACK_WEBHOOK",
                 "KUBERNETES_SERVICE_HOST"):
        assert name not in env, name
    assert not [n for n in env if n.startswith("AIRFLOW")], "no Airflow setting reaches the job"


def test_local_job_gets_the_platforms_env_over_the_workers(dags_module: ModuleType, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings' `env` (libpq's TLS settings for an external database) reaches the local job too."""
    out = fake_job_on_a_worker(tmp_path, monkeypatch)
    data = example_settings(runner="local")
    data["env"] = {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": "/etc/datasurface/db-ca/ca.crt"}
    settings = dags_module.parse_settings(data)
    dags_module.job_task(settings, task_id="setup", args=settings.setup_args(), store=None,
                         run_again_on_10=False).execute({})
    env = json.loads(out.read_text())
    assert (env["PGSSLMODE"], env["PGSSLROOTCERT"]) == ("verify-full", "/etc/datasurface/db-ca/ca.crt")
    assert "PGPASSWORD" not in env and "PGUSER" not in env
