"""`--streams N`: many streams on one merge server. N stores x 2 datasets, each round 1% churn on every
table and then every store's batch by K concurrent jobs: batches per minute, p50/p95, lock waits, CPU."""

from __future__ import annotations

import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from .bench import Bench, CheckFailed
from .report import human, number_cell
from .serverlog import ServerLog, autovacuum_runs, lock_waits
from .shapes import NARROW, column_names

DATASETS = ("a", "b")


def table_name(store: int, dataset: str) -> str:
    return f"s{store:03d}_{dataset}"


def streams_model(bench: Bench, stores: int) -> Path:
    folder = bench.workdir / "model-streams"
    folder.mkdir(parents=True, exist_ok=True)
    columns = [{"name": n, "type": t, **({"nullable": False} if n == "id" else {})} for n, t, _ in NARROW]
    model = {"apiVersion": "datasurface/v1", "kind": "Model", "stores": [{
        "name": f"S{i:03d}", "consistency": "multi_dataset",
        "source": bench.source_block(),
        "datasets": [{"name": d, "table": table_name(i, d), "primaryKey": ["id"], "columns": columns}
                     for d in DATASETS],
    } for i in range(stores)]}
    (folder / "datasurface.yaml").write_text(yaml.safe_dump(model, sort_keys=False))
    return folder


def cpu_busy() -> float:
    """Seconds of CPU the whole machine has spent busy since boot (all cores: /proc/stat's first line; user,
    nice, system, irq, softirq and steal: guest time is inside user already), to tell how many cores a round
    kept busy."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in stat.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_streams(bench: Bench, stores: int, rows: int, jobs: list[int], modes: list[str],
                rounds: int = 1) -> list[dict[str, Any]]:
    """N stores x 2 datasets x `rows` rows, one merge server; per K in `jobs`: 1% churn on every table,
    then every store's merge by K concurrent jobs. Batches per minute, p50/p95 batch time, lock waits, the
    CPU per batch, autovacuum's runs. Every round starts after a CHECKPOINT; the rounds after the first (the
    initial load, at the largest K) start from vacuumed and analyzed databases (`Bench.vacuum`).

    `rounds` > 1 repeats the K rounds, in turn forwards and backwards (1, 2, 4, 4, 2, 1, ...), so that a drift
    of the machine's speed falls on every K alike; a summary row per K (`"round": "median"`) then gives the
    median batches per minute and its speed-up against the first K's median."""
    bench.create_databases(f"streams_{os.getpid()}")
    report: list[dict[str, Any]] = []
    try:
        started = time.monotonic()
        for store in range(stores):
            for dataset in DATASETS:
                bench.generate("narrow", rows, table_name(store, dataset))
        print(f"# streams: {stores} stores x 2 x {human(rows)} rows generated in "
              f"{time.monotonic() - started:.1f}s", file=sys.stderr)
        model = streams_model(bench, stores)
        log = ServerLog(bench.server)
        seed = 0
        for mode in modes:
            order = [max(jobs)] + [k for r in range(rounds) for k in (jobs if r % 2 == 0 else jobs[::-1])]
            for number, concurrency in enumerate(order):  # the first round is the initial load
                seed += 1
                if seed > 1:
                    for store in range(stores):
                        for dataset in DATASETS:
                            bench.churn("narrow", 0.01, seed, table_name(store, dataset))
                row = run_round(bench, model, log, stores, mode, concurrency)
                row["round"], row["load"] = (number - 1) // len(jobs) + 1, number == 0
                report.append(row)
                if row["load"]:  # the rounds compared start from a settled server, not from the load's debt
                    bench.vacuum()
                print_round(row, report, jobs[0], stores)
            if rounds > 1:
                report += streams_medians([r for r in report if r["mode"] == mode and not r["load"]], jobs)
    finally:
        bench.drop_databases()
    return report


def run_round(bench: Bench, model: Path, log: ServerLog, stores: int, mode: str, concurrency: int) -> dict[str, Any]:
    """Every store's batch, `concurrency` jobs at a time, each store's views checked against its source."""
    platform = f"bench_streams_{mode}"
    bench.settle()
    log.new_lines()

    def one(store: str) -> tuple[float, float, float]:
        mine = replace(bench)  # its own copy: spawned_at, cpu_s
        return (*mine.run_job(model, mode, store, platform), mine.cpu_s)

    started, busy_before = time.monotonic(), cpu_busy()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        done = list(pool.map(one, [f"S{i:03d}" for i in range(stores)]))
    wall = time.monotonic() - started
    busy = cpu_busy() - busy_before
    times = sorted(t for t, _, _ in done)
    job_cpu = sum(c for _, _, c in done)  # the jobs' processes (user + system); the rest: the server
    lines = log.new_lines()
    waits, longest = lock_waits(lines)
    names = column_names("narrow")
    for store in range(stores):
        for dataset in DATASETS:
            view = f'"{platform}"."{table_name(store, dataset)}_current"'
            if bench.fingerprint("source", f'"{table_name(store, dataset)}"', names) != bench.fingerprint(
                    "merge", view, names):
                raise CheckFailed(f"streams {mode}: {view} != source")
    return {"mode": mode, "jobs": concurrency, "batches": stores, "wall_s": wall,
            "per_min": stores / wall * 60, "p50_s": statistics.median(times), "cores": busy / wall,
            "job_cpu_ms": job_cpu / stores * 1000, "other_cpu_ms": (busy - job_cpu) / stores * 1000,
            "p95_s": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))],
            "lock_waits": len(waits), "longest_wait_ms": longest, "rss_mb": max(r for _, r, _ in done),
            "wait_lines": waits[:5], "autovacuum": autovacuum_runs(lines)}


def print_round(row: dict[str, Any], report: list[dict[str, Any]], first_jobs: int, stores: int) -> None:
    """One round's line, with its speed-up against the latest round of the first K (`first_jobs`)."""
    mode = row["mode"]
    base = next((r for r in report[::-1] if r["mode"] == mode and not r["load"]
                 and r["jobs"] == first_jobs), None)
    speed = row["per_min"] / base["per_min"] if base and not row["load"] else float("nan")
    print(f"# streams {mode} {'load' if row['load'] else '1%  '} K={row['jobs']}: {stores} batches in "
          f"{row['wall_s']:.1f}s = {row['per_min']:.0f}/min, p50 {row['p50_s']:.2f}s, p95 {row['p95_s']:.2f}s, "
          f"{number_cell(speed)}x K={first_jobs}, {row['cores']:.2f} of {os.cpu_count()} cores busy "
          f"(CPU per batch: jobs {row['job_cpu_ms']:.0f} ms, server and the rest "
          f"{row['other_cpu_ms']:.0f} ms), "
          f"lock waits > 100 ms: {row['lock_waits']} (longest {row['longest_wait_ms']:.0f} ms), "
          f"autovacuum runs: {row['autovacuum']}, "
          f"peak RSS {row['rss_mb']:.0f} MB",
          flush=True)
    for wait in row["wait_lines"]:
        print(f"#   {wait}")


def streams_medians(rows: list[dict[str, Any]], jobs: list[int]) -> list[dict[str, Any]]:
    """Per K: the median of its rounds (batches per minute, p50, p95, cores, CPU per batch), the speed-up of
    the medians against the first K's, and the worst of the lock waits and the peak RSS."""
    medians: list[dict[str, Any]] = []
    for concurrency in jobs:
        mine = [r for r in rows if r["jobs"] == concurrency]
        middle = {key: statistics.median(r[key] for r in mine)
                  for key in ("per_min", "p50_s", "p95_s", "cores", "job_cpu_ms", "other_cpu_ms")}
        medians.append({"mode": mine[0]["mode"], "jobs": concurrency, "batches": sum(r["batches"] for r in mine),
                        **middle, "lock_waits": sum(r["lock_waits"] for r in mine),
                        "longest_wait_ms": max(r["longest_wait_ms"] for r in mine),
                        "autovacuum": sum(r["autovacuum"] for r in mine), "rss_mb": max(r["rss_mb"] for r in mine),
                        "round": "median", "load": False, "rounds": [round(r["per_min"]) for r in mine]})
    for row in medians:
        row["speed_up"] = row["per_min"] / medians[0]["per_min"]
        print(f"# streams {row['mode']} median of {len(row['rounds'])} rounds K={row['jobs']}: "
              f"{row['per_min']:.0f}/min (rounds: {', '.join(map(str, row['rounds']))}), "
              f"{row['speed_up']:.2f}x K={jobs[0]}, p50 {row['p50_s']:.2f}s, p95 {row['p95_s']:.2f}s, "
              f"{row['cores']:.2f} cores busy (CPU per batch: jobs {row['job_cpu_ms']:.0f} ms, server and the "
              f"rest {row['other_cpu_ms']:.0f} ms), lock waits > 100 ms: {row['lock_waits']} (longest "
              f"{row['longest_wait_ms']:.0f} ms), autovacuum runs: {row['autovacuum']}", flush=True)
    return medians
