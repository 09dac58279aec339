"""The local runner never leaves its job running: on Airflow's execution_timeout, on on_kill (the task killed
from outside), and when the job ignores SIGTERM. The job is a stand-in `datasurface-job` script on PATH that
starts a child of its own and sleeps, so the tests see the whole process group go (no waiting for 60 s)."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from dag_support import example_settings

# Airflow's timeout uses SIGALRM in the main thread: keep pytest-timeout off that signal.
pytestmark = pytest.mark.timeout(120, method="thread")

HANGING_JOB = """\
#!/bin/sh
{trap}
sleep 300 &
echo "$$ $!" > "$PIDS_FILE"
echo "datasurface-job: started"
wait
"""


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a container's init may not reap orphans at once)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def hanging_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """make(ignore_sigterm) -> (operator kwargs, pids file): a `datasurface-job` on PATH that hangs."""
    def make(module: ModuleType, ignore_sigterm: bool = False) -> tuple[Any, Path]:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        job = bin_dir / "datasurface-job"
        job.write_text(HANGING_JOB.format(trap="trap '' TERM" if ignore_sigterm else ""))
        job.chmod(job.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        pids = tmp_path / "pids"
        task = module.LocalJobOperator(task_id="merge", job_args=["merge", "--platform", "P"],
                                       job_env={"PIDS_FILE": str(pids)}, run_again_on_10=True)
        return task, pids
    return make


def job_pids(pids: Path) -> list[int]:
    assert wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, 10), "the job did not start"
    return [int(p) for p in pids.read_text().split()]


def test_execution_timeout_stops_the_job_and_its_children(dags_module: ModuleType, hanging_job: Any) -> None:
    """Airflow's own timeout (what the task runner wraps execute in) ends execute; the job group is gone."""
    from airflow.sdk.exceptions import AirflowTaskTimeout
    from airflow.sdk.execution_time.timeout import timeout

    task, pids = hanging_job(dags_module)
    started = time.monotonic()
    with pytest.raises(AirflowTaskTimeout), timeout(2):
        task.execute(context={})
    assert time.monotonic() - started < 10
    job, child = job_pids(pids)
    assert not alive(job) and wait_for(lambda: not alive(child), 5)
    task.on_kill()  # what the task runner calls next: nothing left to stop, no error


def test_on_kill_stops_a_running_job(dags_module: ModuleType, hanging_job: Any) -> None:
    """on_kill from elsewhere (the supervisor's SIGTERM handler): the job is stopped and the task fails."""
    task, pids = hanging_job(dags_module)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            task.execute(context={})
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    job, child = job_pids(pids)
    assert alive(job) and alive(child)
    task.on_kill()
    thread.join(10)
    assert not thread.is_alive()
    assert not alive(job) and wait_for(lambda: not alive(child), 5)
    [error] = outcome
    assert isinstance(error, dags_module.JobFailed)
    assert "was stopped by signal 15" in str(error)


def test_a_job_ignoring_sigterm_is_killed(dags_module: ModuleType, hanging_job: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowTaskTimeout
    from airflow.sdk.execution_time.timeout import timeout

    monkeypatch.setattr(dags_module, "STOP_GRACE_SECONDS", 1)
    task, pids = hanging_job(dags_module, ignore_sigterm=True)
    started = time.monotonic()
    with pytest.raises(AirflowTaskTimeout), timeout(2):
        task.execute(context={})
    assert 3 <= time.monotonic() - started < 10  # 2 s timeout + 1 s grace, then SIGKILL
    job, child = job_pids(pids)
    assert not alive(job) and wait_for(lambda: not alive(child), 5)


def test_the_pod_task_deletes_its_pod_on_kill(dags_module: ModuleType) -> None:
    """KubernetesPodOperator's on_kill (called after its execution_timeout) deletes the pod it started."""
    from kubernetes.client import models as k8s

    dags = dags_module.build_dags(dags_module.parse_settings(example_settings()))
    task = dags["yellowlive__Store1_ingestion"].get_task("merge")
    deleted: list[dict[str, Any]] = []

    class Client:
        def delete_namespaced_pod(self, **kwargs: Any) -> None:
            deleted.append(kwargs)

    task.__dict__["client"] = Client()  # the API client (cached_property): no cluster here
    task.pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="ds-yellowlive-store1-abc", namespace="default"))
    task.on_kill()
    assert deleted == [{"name": "ds-yellowlive-store1-abc", "namespace": "default"}]
