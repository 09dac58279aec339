"""The whole at scale: one platform of many small stores on a one-minute schedule, in the emulated release
(release.py: the chart's Airflow, its scheduler running the jobs with the local runner, and its exporter),
measured over a window of minutes.

Measured, over the window that follows a warm-up (every stream has committed a batch):
- the data age of every stream, as the exporter reports it (`datasurface_snapshot_age_seconds`, scraped
  every SCRAPE_SECONDS through the exporter's Service): per stream its p95 over the window;
- the CPU of Airflow's processes (api-server, dag-processor, scheduler with its task processes,
  triggerer) and of the jobs (the `datasurface-job` processes and their children), from two cpuacct
  cgroups: every Airflow container's processes are moved into one when the window opens (their children
  follow), and a watcher moves each new job process into the other within JOB_POLL_SECONDS of its start
  (what it spent before the move, at most that long of an interpreter's start, counts as Airflow's);
- the machine's load average and its busy cores (shared with whatever else runs on it).

The PostgreSQL server (source and merge databases, Airflow's metadata) and the exporter are not counted.
Targets (`check`): every stream has batches in the window, every stream's p95 data age under
AGE_TARGET_S, Airflow plus jobs under CPU_TARGET_CORES on average.

Run by `scripts/scale.sh` (as root, in .venv-airflow) and, small, by test_scale.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.system.kubelet import _mnt_ns
from tests.system.release import Release

AGE_TARGET_S = 120.0
CPU_TARGET_CORES = 1.0
SCRAPE_SECONDS = 10
JOB_POLL_SECONDS = 0.05
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
PLATFORM = "Scale"
ROWS = 5  # a small store: one table of a few rows
AGE_METRIC = re.compile(r'^datasurface_snapshot_age_seconds\{([^}]*)\} (\S+)$', re.MULTILINE)


@dataclass
class Figures:
    stores: int
    per_task: int
    parallel: int
    window_s: float
    streams: int = 0  # streams with a committed batch in the window
    age_p95_s: dict[str, float] = field(default_factory=dict)  # per stream, over the window's scrapes
    scrapes: int = 0
    airflow_cpu_s: float = 0.0
    jobs_cpu_s: float = 0.0
    jobs: int = 0  # job processes started in the window
    failed_runs: int = 0
    errors: list[str] = field(default_factory=list)  # a few distinct errors of the failed runs
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)  # the machine's load average at the end
    machine_busy_cores: float = 0.0  # every process of the machine, over the window

    @property
    def airflow_cores(self) -> float:
        return self.airflow_cpu_s / self.window_s

    @property
    def jobs_cores(self) -> float:
        return self.jobs_cpu_s / self.window_s

    @property
    def worst_age_p95_s(self) -> float:
        return max(self.age_p95_s.values(), default=math.inf)

    def check(self) -> dict[str, bool]:
        return {"every stream has batches": self.streams == self.stores,
                f"every stream's p95 data age < {AGE_TARGET_S:.0f} s": self.worst_age_p95_s < AGE_TARGET_S,
                f"Airflow + jobs < {CPU_TARGET_CORES:g} core": self.airflow_cores + self.jobs_cores < CPU_TARGET_CORES}

    def report(self) -> str:
        ages = sorted(self.age_p95_s.values())
        median = ages[len(ages) // 2] if ages else math.nan
        lines = [
            f"scale: {self.stores} stores, storesPerTask {self.per_task}, parallelStores {self.parallel}, "
            f"one-minute schedule, {self.window_s / 60:.1f} min window",
            f"  streams with batches: {self.streams}/{self.stores}; failed runs: {self.failed_runs}",
            *(f"    failed: {e}" for e in self.errors),
            f"  data age p95 per stream ({self.scrapes} scrapes): median {median:.0f} s, "
            f"worst {self.worst_age_p95_s:.0f} s",
            f"  CPU: Airflow {self.airflow_cores:.2f} cores ({self.airflow_cpu_s / self.window_s * 60:.1f} s a minute),"
            f" jobs {self.jobs_cores:.2f} cores ({self.jobs_cpu_s / self.window_s * 60:.1f} s a minute,"
            f" {self.jobs} job processes), together {self.airflow_cores + self.jobs_cores:.2f}",
            f"  machine: load average {self.load[0]:.2f} {self.load[1]:.2f} {self.load[2]:.2f}, "
            f"{self.machine_busy_cores:.2f} of {os.cpu_count()} cores busy (shared)",
        ]
        lines += [f"  target {name}: {'met' if ok else 'NOT MET'}" for name, ok in self.check().items()]
        return "\n".join(lines)


def store_names(n: int) -> list[str]:
    return [f"S{i:04d}" for i in range(1, n + 1)]


def model_yaml(stores: list[str], host: str) -> str:
    columns = [{"name": "id", "type": "integer", "nullable": False}, {"name": "v", "type": "varchar(40)"}]
    return yaml.safe_dump({"apiVersion": "datasurface/v1", "kind": "Model", "stores": [{
        "name": name,
        "source": {"host": host, "port": 5432, "database": "customer_db", "schema": "public",
                   "credential": "source"},
        "datasets": [{"name": "t", "table": name.lower(), "primaryKey": ["id"], "columns": columns}],
    } for name in stores]}, sort_keys=False)


def values(stores: list[str], per_task: int, parallel: int) -> dict[str, Any]:
    return {
        "platforms": [{"name": PLATFORM, "mode": "live", "stores": stores, "schedule": "* * * * *",
                       "infrastructureSchedule": None, "runner": "local", "retries": 1,
                       "retryDelaySeconds": 5, "storesPerTask": per_task, "parallelStores": parallel}],
        "postgresql": {"persistence": {"enabled": False}},
        "metrics": {"enabled": True},
        "airflow": {"triggerer": {"enabled": True}, "pool": {"name": "datasurface", "slots": 16}},
    }


class CpuGroups:
    """Two cpuacct cgroups, airflow and jobs (see the module docstring)."""

    def __init__(self, name: str) -> None:
        if not (CPUACCT / "cgroup.procs").exists():
            raise RuntimeError(f"no cgroup v1 cpuacct hierarchy at {CPUACCT}: cannot measure CPU")
        self.root = CPUACCT / name
        self.groups = {g: self.root / g for g in ("airflow", "jobs")}
        for path in self.groups.values():
            path.mkdir(parents=True, exist_ok=True)

    def move(self, group: str, pid: int) -> bool:
        try:
            (self.groups[group] / "cgroup.procs").write_text(str(pid))
            return True
        except OSError:  # gone already
            return False

    def usage(self, group: str) -> float:
        return int((self.groups[group] / "cpuacct.usage").read_text()) / 1e9

    def remove(self) -> None:
        """Processes still inside go back to the root group, then the groups are removed."""
        for path in self.groups.values():
            for pid in (path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (CPUACCT / "cgroup.procs").write_text(pid)
            with contextlib.suppress(OSError):
                path.rmdir()
        with contextlib.suppress(OSError):
            self.root.rmdir()


def _is_job(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(a.endswith(b"/datasurface-job") for a in argv[:2]) and b"merge" in argv


class JobWatcher(threading.Thread):
    """Moves every new job process of the scheduler container (its mount namespace `ns`) into the jobs
    group as soon as it is seen. A process is looked at until it is a second old: a job starts as a fork
    of its task process and becomes `datasurface-job` only at its exec, a moment later."""

    def __init__(self, cgroups: CpuGroups, ns: str) -> None:
        super().__init__(name="job-watcher", daemon=True)
        self.cgroups = cgroups
        self.ns = ns
        self.settled: set[int] = set()  # moved, or older than a second and not a job
        self.moved = 0
        self.stopping = threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")

    def _age(self, pid: int) -> float:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return math.inf
        start = int(stat.rsplit(")", 1)[1].split()[19]) / self.tick
        return float(Path("/proc/uptime").read_text().split()[0]) - start

    def run(self) -> None:
        while not self.stopping.wait(JOB_POLL_SECONDS):
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or (pid := int(entry)) in self.settled:
                    continue
                if _is_job(pid) and _mnt_ns(pid) == self.ns:
                    self.settled.add(pid)
                    self.moved += self.cgroups.move("jobs", pid)
                elif self._age(pid) > 1.0:
                    self.settled.add(pid)


def _busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def scrape_ages(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    ages = {}
    for labels, value in AGE_METRIC.findall(text):
        store = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        ages[store["store"]] = float(value)
    return ages


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def create_sources(release: Release, stores: list[str]) -> None:
    with release.connect("customer_db", "source") as conn, conn.cursor() as cur:
        for name in stores:
            table = name.lower()
            cur.execute(f'CREATE TABLE IF NOT EXISTS public."{table}" (id integer PRIMARY KEY, v varchar(40))')
            cur.execute(f'INSERT INTO public."{table}" SELECT g, md5(g::text) FROM generate_series(1, %s) g '
                        "ON CONFLICT DO NOTHING", [ROWS])


def run_errors(release: Release, since: float) -> list[str]:
    """A few distinct errors of the merge runs that failed since `since` (Unix time)."""
    with release.connect("merge_db", "merge") as conn, conn.cursor() as cur:
        cur.execute(f'SELECT DISTINCT left(error, 300) FROM "{PLATFORM.lower()}".ds_runs WHERE exit_status '
                    "NOT IN (0, 10) AND started_at >= to_timestamp(%s) LIMIT 5", [since])
        return [str(row[0]) for row in cur.fetchall()]


def committed(release: Release) -> dict[str, int]:
    """Committed batches per store, and (key "") the failed merge runs."""
    schema = PLATFORM.lower()
    with release.connect("merge_db", "merge") as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", [f"{schema}.ds_batches"])
        if cur.fetchone()[0] is None:
            return {}
        cur.execute(f'SELECT store, count(*) FROM "{schema}".ds_batches WHERE status = %s GROUP BY store',
                    ["committed"])
        counts = dict(cur.fetchall())
        cur.execute(f'SELECT count(*) FROM "{schema}".ds_runs WHERE exit_status NOT IN (0, 10)')
        counts[""] = cur.fetchone()[0]
    return counts


@contextlib.contextmanager
def scaled_release(stores: list[str], per_task: int, parallel: int) -> Iterator[Release]:
    """The release up: database with the sources, Airflow (with the triggerer) and the exporter."""
    release = Release(values(stores, per_task, parallel))
    model = next(cm for cm in release.manifests.of_kind("ConfigMap") if "datasurface.yaml" in (cm.get("data") or {}))
    model["data"]["datasurface.yaml"] = model_yaml(stores, f"{release.fullname}-postgresql")
    try:
        release.start()
        create_sources(release, stores)
        release.start_airflow()
        triggerer = release.cluster.start_pod("Deployment", f"{release.fullname}-airflow-triggerer")
        triggerer.wait_ready(240)  # its liveness probe: the triggerer's job heartbeats
        release.pods["triggerer"] = triggerer
        exporter = release.cluster.start_pod("Deployment", f"{release.fullname}-exporter")
        exporter.wait_ready(120)
        yield release
    finally:
        release.stop()


def measure(release: Release, stores: list[str], per_task: int, parallel: int, minutes: float,
            warmup_timeout: float, say: Callable[[str], None] = print) -> Figures:
    """Wait for every stream's first batch (the scheduled runs start once the DAGs are parsed), then
    measure for `minutes`."""
    say(f"scale: waiting for every stream's first batch (at most {warmup_timeout:.0f} s)")
    deadline = time.monotonic() + warmup_timeout
    while len({s for s in committed(release) if s}) < len(stores):
        if time.monotonic() > deadline:
            done = len({s for s in committed(release) if s})
            raise RuntimeError(f"only {done}/{len(stores)} streams have a batch after {warmup_timeout:.0f} s")
        time.sleep(2)
    port = release.cluster.port_forward(f"{release.fullname}-exporter", 9108)
    cgroups = CpuGroups(f"ds-scale-{os.getpid()}")
    scheduler_ns = release.pods["scheduler"].container().ns
    assert scheduler_ns is not None
    watcher = JobWatcher(cgroups, scheduler_ns)
    try:
        for pod in release.pods.values():
            for container in pod.containers.values():
                for pid in container.processes():
                    if not _is_job(pid):
                        cgroups.move("airflow", pid)
        watcher.start()
        before = committed(release)
        figures = Figures(stores=len(stores), per_task=per_task, parallel=parallel, window_s=minutes * 60)
        say(f"scale: every stream has a batch; measuring for {minutes:g} min")
        samples: dict[str, list[float]] = {s: [] for s in stores}
        busy0, total0 = _busy_ticks()
        cpu0 = {g: cgroups.usage(g) for g in cgroups.groups}
        started, since = time.monotonic(), time.time()
        end = started + figures.window_s
        while (now := time.monotonic()) < end:
            for store, age in scrape_ages(port).items():
                samples.setdefault(store, []).append(age)
            figures.scrapes += 1
            time.sleep(max(0.0, min(SCRAPE_SECONDS, end - time.monotonic())))
        figures.window_s = now - started
        cpu1 = {g: cgroups.usage(g) for g in cgroups.groups}
        busy1, total1 = _busy_ticks()
        figures.airflow_cpu_s = cpu1["airflow"] - cpu0["airflow"]
        figures.jobs_cpu_s = cpu1["jobs"] - cpu0["jobs"]
        figures.jobs = watcher.moved
        figures.machine_busy_cores = (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)
        figures.load = os.getloadavg()
        after = committed(release)
        figures.streams = sum(1 for s in stores if after.get(s, 0) > before.get(s, 0))
        figures.failed_runs = after.get("", 0) - before.get("", 0)
        figures.errors = run_errors(release, since) if figures.failed_runs else []
        figures.age_p95_s = {s: p95(v) for s, v in samples.items() if v}
        return figures
    finally:
        watcher.stopping.set()
        watcher.join(5)
        cgroups.remove()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scale.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", type=int, default=400, help="stores of the platform (default 400)")
    parser.add_argument("--per-task", type=int, default=50, help="storesPerTask (default 50)")
    parser.add_argument("--parallel", type=int, default=1, help="parallelStores (default 1)")
    parser.add_argument("--minutes", type=float, default=5, help="the measured window (default 5)")
    parser.add_argument("--warmup-timeout", type=float, default=900,
                        help="seconds to wait for every stream's first batch (default 900)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    stores = store_names(args.stores)
    with scaled_release(stores, args.per_task, args.parallel) as release:
        figures = measure(release, stores, args.per_task, args.parallel, args.minutes, args.warmup_timeout)
    print(figures.report(), flush=True)
    if args.json:
        args.json.write_text(json.dumps({**asdict(figures), "checks": figures.check()}, indent=1))
    return 0 if all(figures.check().values()) else 1


if __name__ == "__main__":
    sys.exit(main())
