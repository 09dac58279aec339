"""Many small stores merged by one job (`merge --store … --parallel K`) against one job per store.

`scripts/benchmark.sh --groups N`: N stores of one small table each (`--group-rows` rows) on one
server; after the initial load and 1% churn on every table, a sample of the stores is merged by separate
processes one after another (what a DAG per store costs the job itself: a process start, the model read,
sessions opened, per stream), then every store by ONE process for each K of `--group-parallel`. Reported
per stream: the job's CPU (user + system of its process) and wall time; each group round is checked
(every store's current view equals its source table, every store has its batch) and against the targets:
at most 40 ms of CPU a stream, at most 1/4 of the separate processes' wall time a stream, and K = 2
faster than K = 1.
"""

# ruff: noqa: S608 - every SQL string here is built from this script's own constants
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from .bench import Bench

CPU_PER_STREAM_S = 0.040  # the targets
WALL_RATIO = 0.25


def _model(bench: Bench, stores: list[str], columns: list[tuple[str, str, str]]) -> Path:
    folder = bench.workdir / "model-groups"
    folder.mkdir(parents=True, exist_ok=True)
    cols = [{"name": n, "type": t, **({"nullable": False} if n == "id" else {})} for n, t, _ in columns]
    model = {"apiVersion": "datasurface/v1", "kind": "Model", "stores": [{
        "name": name, "source": {"host": bench.server.socket_dir, "port": bench.server.port,
                                 "database": bench.source_db, "credential": "source"},
        "datasets": [{"name": "t", "table": name.lower(), "primaryKey": ["id"], "columns": cols}],
    } for name in stores]}
    (folder / "datasurface.yaml").write_text(yaml.safe_dump(model, sort_keys=False))
    return folder


def _job(bench: Bench, model: Path, platform: str, stores: list[str], parallel: int | None) -> tuple[float, float, str]:
    """Wall and CPU seconds of one `datasurface-job merge` process, and its output; raises on a failure."""
    exe = Path(sys.executable).with_name("datasurface-job")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from datasurface.cli import _exit; _exit()"]
    cmd += ["merge", "--model", str(model), "--platform", platform, "--mode", "live",
            "--merge-host", bench.server.socket_dir, "--merge-port", str(bench.server.port),
            "--merge-database", bench.merge_db, "--merge-credential", "merge"]
    if parallel is not None:
        cmd += ["--parallel", str(parallel)]
    for store in stores:
        cmd += ["--store", store]
    with tempfile.TemporaryFile() as out:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, env={**os.environ, **bench.env}, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        out.seek(0)
        text = out.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"job exited {os.waitstatus_to_exitcode(status)}: {text[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, text


def _check(bench: Bench, platform: str, stores: list[str], batch: int, names: str) -> None:
    """Every store's current view equals its source table, and its latest committed batch is `batch`."""
    query = "SELECT count(*), coalesce(sum(hashtextextended(ROW({})::text, 0)::numeric), 0) FROM {}"
    with bench.conn("source") as src, bench.conn("merge") as mrg, src.cursor() as s, mrg.cursor() as m:
        m.execute(f'SELECT store, max(batch_id) FROM "{platform}".ds_batches WHERE status = %s GROUP BY store',
                  ("committed",))
        latest = dict(m.fetchall())
        for store in stores:
            s.execute(query.format(names, f'"{store.lower()}"'))
            m.execute(query.format(names, f'"{platform}"."{store.lower()}_t_current"'))
            if s.fetchone() != m.fetchone():
                raise RuntimeError(f"groups: {platform}.{store.lower()}_t_current != source")
            if latest.get(store) != batch:
                raise RuntimeError(f"groups: {platform} store {store} at batch {latest.get(store)}, not {batch}")


def run_groups(bench: Bench, stores: int, rows: int, parallels: list[int], sample: int,
               columns: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """The scenario (module docstring); one report row per way of merging, and the verdicts printed."""
    bench.create_databases(f"groups_{os.getpid()}")
    names = [f"G{i:03d}" for i in range(stores)]
    cols = ", ".join(f'"{n}"' for n, _, _ in columns)
    report: list[dict[str, Any]] = []
    try:
        t0 = time.monotonic()
        for name in names:
            bench.generate("narrow", rows, name.lower())
        model = _model(bench, names, columns)
        print(f"# groups: {stores} stores x {rows} rows generated in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        platforms = {"separate": "bench_groups_separate", **{f"K={k}": f"bench_groups_k{k}" for k in parallels}}
        for platform in platforms.values():  # the initial loads, not timed
            _job(bench, model, platform, names if platform != platforms["separate"] else names[:sample],
                 max(parallels))
        bench.vacuum()
        for seed, name in enumerate(names, start=1):
            bench.churn("narrow", 0.01, seed, name.lower())

        bench.settle()
        walls, cpus = [], []
        for name in names[:sample]:
            wall, cpu, _ = _job(bench, model, platforms["separate"], [name], None)
            walls.append(wall)
            cpus.append(cpu)
        _check(bench, platforms["separate"], names[:sample], 2, cols)
        separate = {"how": "separate", "streams": sample, "wall_s": sum(walls), "cpu_s": sum(cpus),
                    "wall_ms": statistics.median(walls) * 1000, "cpu_ms": statistics.median(cpus) * 1000}
        report.append(separate)
        for k in parallels:
            bench.settle()
            wall, cpu, _ = _job(bench, model, platforms[f"K={k}"], names, k)
            _check(bench, platforms[f"K={k}"], names, 2, cols)
            report.append({"how": f"group K={k}", "streams": stores, "wall_s": wall, "cpu_s": cpu,
                           "wall_ms": wall / stores * 1000, "cpu_ms": cpu / stores * 1000})
    finally:
        bench.drop_databases()
    for row in report:
        print(f"# groups {row['how']}: {row['streams']} streams in {row['wall_s']:.1f}s: per stream "
              f"{row['wall_ms']:.0f} ms wall, {row['cpu_ms']:.1f} ms CPU of the job"
              + (" (medians)" if row["how"] == "separate" else ""), flush=True)
    groups = report[1:]
    for row in groups:
        row["cpu_ok"] = row["cpu_ms"] <= CPU_PER_STREAM_S * 1000
        row["wall_ratio"] = row["wall_ms"] / separate["wall_ms"]
        row["wall_ok"] = row["wall_ratio"] <= WALL_RATIO
        print(f"# groups {row['how']}: CPU a stream {row['cpu_ms']:.1f} ms "
              f"({'ok' if row['cpu_ok'] else 'OVER'} the {CPU_PER_STREAM_S * 1000:.0f} ms target); wall a stream "
              f"{row['wall_ratio']:.3f} of separate processes' ({'ok' if row['wall_ok'] else 'OVER'} the "
              f"{WALL_RATIO} target)", flush=True)
    by_k = {int(r["how"].split("=")[1]): r for r in groups}
    if 1 in by_k and 2 in by_k:
        speed = by_k[1]["wall_s"] / by_k[2]["wall_s"]
        by_k[2]["speed_up"] = speed
        print(f"# groups: --parallel 2 is {speed:.2f}x --parallel 1 ({'scales' if speed > 1.1 else 'DOES NOT SCALE'}"
              f" on {os.cpu_count()} cores, shared with the server)", flush=True)
    return report
