"""The chart's executor (files/airflow/datasurface_executor.py) stops its workers however their exits
interleave with its stop messages; Airflow's own LocalExecutor hangs in one such order.

The order is forced, not waited for: two idle workers, B holding the queue's lock (so it takes the next
message) and A waiting for it; the executor looks at A first, and at B only once B has taken the message
sent for A and exited. Airflow's then counts B as gone, sends no message for it, and waits for A for ever;
the chart's executor has sent one message per worker beforehand.
Each case runs in a child interpreter (the executor forks its workers), bounded by a timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys

from dag_support import REPO_ROOT

EXECUTOR = REPO_ROOT / "charts" / "datasurface" / "files" / "airflow" / "datasurface_executor.py"

STOP_IN_A_RACE = """
import importlib.util, multiprocessing, os, sys, threading, time
multiprocessing.set_start_method("fork", force=True)
if sys.argv[1] == "airflow":
    from airflow.executors.local_executor import LocalExecutor
else:
    spec = importlib.util.spec_from_file_location("datasurface_executor", sys.argv[2])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    LocalExecutor = module.LocalExecutor

def state(pid):
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]

def reading(pid):  # in read(2) on the queue: it holds the queue's lock and takes the next message
    with open(f"/proc/{pid}/syscall") as syscall:
        return syscall.read().split()[0] == "0"

executor = LocalExecutor(parallelism=2)
executor.start()
deadline = time.monotonic() + 30
while not any(reading(pid) for pid in executor.workers) and time.monotonic() < deadline:
    time.sleep(0.05)
b_pid = next(pid for pid in executor.workers if reading(pid))
a_pid = next(pid for pid in executor.workers if pid != b_pid)
executor.workers = {a_pid: executor.workers[a_pid], b_pid: executor.workers[b_pid]}  # A is looked at first
b = executor.workers[b_pid]

def b_is_alive(original=b.is_alive, first=[True]):
    deadline = time.monotonic() + 10
    while first and state(b_pid) != "Z" and time.monotonic() < deadline:  # B took A's message and exited
        time.sleep(0.01)
    first.clear()
    return original()

b.is_alive = b_is_alive
ending = threading.Thread(target=executor.end, daemon=True)
ending.start()
ending.join(8)
if ending.is_alive():
    print("hung", flush=True)
    os.kill(a_pid, 9)
    ending.join(10)
    sys.exit(3)
print("stopped", flush=True)
"""


def stop_in_a_race(which: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": ""}
    return subprocess.run([sys.executable, "-c", STOP_IN_A_RACE, which, str(EXECUTOR)], capture_output=True,
                          text=True, timeout=90, env=env)


def test_the_charts_executor_stops_when_a_worker_takes_anothers_stop_message() -> None:
    proc = stop_in_a_race("chart")
    assert proc.returncode == 0 and proc.stdout.split()[-1:] == ["stopped"], proc.stdout + proc.stderr[-3000:]


def test_airflows_local_executor_hangs_in_that_order() -> None:
    """Why the chart has its own executor: when this fails, Airflow has fixed end() and it can go."""
    proc = stop_in_a_race("airflow")
    assert proc.returncode == 3 and proc.stdout.split()[-1:] == ["hung"], proc.stdout + proc.stderr[-3000:]


def test_airflow_loads_the_charts_executor_by_its_configured_name() -> None:
    """As the chart configures it: AIRFLOW__CORE__EXECUTOR names the module on PYTHONPATH."""
    code = ("from airflow.executors.executor_loader import ExecutorLoader as L; e = L.get_default_executor(); "
            "print(type(e).__module__, type(e).__name__, e.is_local, e.serve_logs)")
    env = {**os.environ, "PYTHONPATH": str(EXECUTOR.parent),
           "AIRFLOW__CORE__EXECUTOR": "datasurface_executor.LocalExecutor"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-4:] == ["datasurface_executor", "LocalExecutor", "True", "True"], proc.stdout
