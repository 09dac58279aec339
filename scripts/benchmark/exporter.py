"""`scripts/benchmark.sh --exporter`: per-scrape time and memory of `datasurface-job exporter` with large
ledgers.

On a throwaway PostgreSQL it starts itself, it fills three platform schemas with synthetic ledgers of
the job's own layout (`ds_batches`, `ds_runs`, `ds_run_totals`, created by the job's code): 1 stream x
1 batch, STREAMS x 1 batch (the same streams without history) and STREAMS x BATCHES (default 100 x
1000, as many runs, some failed). It runs the real exporter process on each and scrapes it over HTTP:
the median and p95 of the whole scrape (what Prometheus waits for), the ratios against the floors
measured in the same run (flat in the history: STREAMS x BATCHES against STREAMS x 1 stays near 1),
and the exporter's resident memory (VmRSS) after the first and after the last scrape, which shows
whether memory grows with scrapes.

    scripts/benchmark.sh --exporter                       # 100 streams x 1000 batches, 200 scrapes
    scripts/benchmark.sh --exporter --streams 500 --batches 2000 --scrapes 50
"""

# ruff: noqa: S608 - the SQL here is built from this script's own constants
from __future__ import annotations

import argparse
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg2

from datasurface.localpg import LocalPostgres, find_bin_dir
from datasurface.merge.ledger import BatchLedger
from datasurface.observe import runs

REPO = Path(__file__).resolve().parents[2]


def fill(conn: Any, schema: str, streams: int, batches: int) -> None:
    """STREAMS x BATCHES committed batches (the last one of every tenth stream open) and as many runs."""
    with conn.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{schema}"')
        BatchLedger(conn, schema).ensure()
        runs.ensure(conn, schema)
        cur.execute(f"""
            INSERT INTO "{schema}".ds_batches (stream, store, dataset, batch_id, status, mode, model_fingerprint,
                   started_at, finished_at, snapshot_at, rows_total, rows_inserted, rows_updated, rows_deleted)
            SELECT 'Store' || s, 'Store' || s, NULL, b,
                   CASE WHEN b = %(b)s AND s %% 10 = 0 THEN 'staged' ELSE 'committed' END, 'live', 'f',
                   now() - ((%(b)s - b) * interval '1 hour') - interval '5 minutes',
                   CASE WHEN b = %(b)s AND s %% 10 = 0 THEN NULL
                        ELSE now() - ((%(b)s - b) * interval '1 hour') END,
                   now() - ((%(b)s - b) * interval '1 hour') - interval '4 minutes',
                   100000 + b, b %% 100, b %% 50, b %% 10
              FROM generate_series(1, %(s)s) s, generate_series(1, %(b)s) b""", {"s": streams, "b": batches})
        cur.execute(f"""
            INSERT INTO "{schema}".ds_runs (store, dataset, command, started_at, finished_at, exit_status,
                   batch_id, error)
            SELECT 'Store' || s, NULL, 'merge', now() - ((%(b)s - b) * interval '1 hour') - interval '5 minutes',
                   now() - ((%(b)s - b) * interval '1 hour'),
                   CASE WHEN b %% 20 = 0 THEN 1 WHEN b %% 50 = 1 THEN 10 ELSE 0 END, b,
                   CASE WHEN b %% 20 = 0 THEN 'datasurface-job: error: synthetic failure' END
              FROM generate_series(1, %(s)s) s, generate_series(1, %(b)s) b""", {"s": streams, "b": batches})
        cur.execute(f"""
            INSERT INTO "{schema}".ds_run_totals (command, store, dataset, ok, recovered, failed, failed_in_a_row,
                   last_failed_run_id)
            SELECT 'merge', store, '', count(*) FILTER (WHERE exit_status = 0),
                   count(*) FILTER (WHERE exit_status = 10), count(*) FILTER (WHERE exit_status = 1),
                   0, max(run_id) FILTER (WHERE exit_status = 1)
              FROM "{schema}".ds_runs GROUP BY store""")
        cur.execute(f'ANALYZE "{schema}".ds_batches')
        cur.execute(f'ANALYZE "{schema}".ds_runs')
    conn.commit()


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    if match is None:
        raise RuntimeError(f"no VmRSS in /proc/{pid}/status")
    return int(match.group(1)) / 1024


def measure(env: dict[str, str], merge_args: list[str], platform: str, scrapes: int) -> dict[str, float]:
    proc = subprocess.Popen([sys.executable, "-m", "datasurface.cli", "exporter", "--address", "127.0.0.1",
                             "--port", "0", "--platform", platform, *merge_args],
                            env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first_line = proc.stdout.readline()
        match = re.search(r":(\d+)/metrics", first_line)
        if match is None:
            raise RuntimeError(f"the exporter did not say where it listens: {first_line!r}")
        port = int(match.group(1))
        url = f"http://127.0.0.1:{port}/metrics"
        times, size = [], 0
        rss_first = 0.0
        for i in range(scrapes):
            started = time.perf_counter()
            with urllib.request.urlopen(url, timeout=30) as resp:
                body = resp.read()
            times.append(time.perf_counter() - started)
            assert b"datasurface_up" in body and b" 1.0" in body.split(b"datasurface_up{")[1][:80], body[:500]
            size = len(body)
            if i == 0:
                rss_first = rss_mb(proc.pid)
        times_sorted = sorted(times[1:]) or times  # the first scrape opens the connection
        return {"median_ms": statistics.median(times_sorted) * 1000,
                "p95_ms": times_sorted[int(0.95 * (len(times_sorted) - 1))] * 1000,
                "rss_first_mb": rss_first, "rss_last_mb": rss_mb(proc.pid), "bytes": size}
    finally:
        proc.terminate()
        proc.wait(10)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/benchmark.sh --exporter", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=100, metavar="N",
                        help="streams in the large ledger (and in the one without history)")
    parser.add_argument("--batches", type=int, default=1000, metavar="N", help="batches (and runs) per stream")
    parser.add_argument("--scrapes", type=int, default=200, metavar="N",
                        help="scrapes of each exporter; the first (it opens the connection) is left out")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with LocalPostgres(find_bin_dir("any")) as server:
        user, password = "bench", secrets.token_hex(8)
        server.create_role(user, password)
        server.create_database("merge", owner=user)
        conn = psycopg2.connect(host=server.socket_dir, port=server.port, dbname="merge", user=user,
                                password=password)
        started = time.monotonic()
        fill(conn, "floor", 1, 1)
        fill(conn, "short", args.streams, 1)
        fill(conn, "large", args.streams, args.batches)
        conn.close()
        print(f"ledgers filled in {time.monotonic() - started:.1f}s: floor 1 x 1, "
              f"large {args.streams} x {args.batches} ({args.streams * args.batches:,} batches and runs)", flush=True)
        env = {**os.environ, "BENCH_USER": user, "BENCH_PASSWORD": password,
               "PYTHONPATH": str(REPO / "src")}
        merge_args = ["--merge-host", server.socket_dir, "--merge-port", str(server.port),
                      "--merge-database", "merge", "--merge-credential", "bench"]
        floor = measure(env, merge_args, "Floor", args.scrapes)
        short = measure(env, merge_args, "Short", args.scrapes)
        large = measure(env, merge_args, "Large", args.scrapes)
    print("| streams x batches | scrapes | median ms | p95 ms | ratio to 1 x 1 | ratio to same streams x 1 "
          "| RSS first MB | RSS last MB | body KB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in (("1 x 1", floor), (f"{args.streams} x 1", short), (f"{args.streams} x {args.batches}", large)):
        same = "" if r is floor else f"{r['median_ms'] / short['median_ms']:.2f}"
        print(f"| {name} | {args.scrapes} | {r['median_ms']:.1f} | {r['p95_ms']:.1f} | "
              f"{r['median_ms'] / floor['median_ms']:.2f} | {same} | {r['rss_first_mb']:.1f} | "
              f"{r['rss_last_mb']:.1f} | {r['bytes'] / 1024:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
