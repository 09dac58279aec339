"""`--history N` and `--as-of` (forensic): what a long history costs the merge table and its consumers
(sizes, dead tuples, as-of queries with their plans), and batch N against the first 1% batch."""

# ruff: noqa: S608 - the SQL here is built from the benchmark's own constants
from __future__ import annotations

import statistics
import sys
import time

from .bench import Bench, CheckFailed
from .report import Result, human
from .shapes import STORE, merge_table


def table_stats(bench: Bench, shape: str, mode: str, batch: int) -> dict[str, float]:
    """The merge table after `batch` batches: sizes, live/dead tuples (as autovacuum left them), and
    two as-of queries at the middle batch: one key's version, and the whole table's row count."""
    target = merge_table(mode, shape)
    as_of = max(1, batch // 2)
    with bench.conn("merge") as connection, connection.cursor() as cur:
        cur.execute("SELECT pg_table_size(%s::regclass), pg_indexes_size(%s::regclass), n_live_tup, n_dead_tup, "
                    "autovacuum_count, autoanalyze_count FROM pg_stat_user_tables WHERE relid = %s::regclass",
                    (target, target, target))
        table_bytes, index_bytes, live, dead, vacuums, analyzes = cur.fetchone()
        timings = {}
        for name, query in (("asof_key_ms", f"SELECT * FROM {target} WHERE id = 4242 AND ds_batch_in <= {as_of} "
                                            f"AND ds_batch_out > {as_of}"),
                            ("asof_all_ms", f"SELECT count(*) FROM {target} WHERE ds_batch_in <= {as_of} "
                                            f"AND ds_batch_out > {as_of}")):
            best = float("inf")
            for _ in range(3):
                started = time.monotonic()
                cur.execute(query)
                cur.fetchall()
                best = min(best, (time.monotonic() - started) * 1000)
            timings[name] = best
        connection.rollback()
    return {"batch": batch, "table_mb": table_bytes / 2**20, "index_mb": index_bytes / 2**20, "live": live,
            "dead": dead, "autovacuums": vacuums, "autoanalyzes": analyzes, **timings}


def as_of_report(bench: Bench, shape: str, batches: int) -> None:
    """Plan and time of the consumer queries on the forensic history; a key query must use an index."""
    schema, table = "bench_forensic", f"{STORE.lower()}_{shape}"
    middle = max(1, batches // 2)
    with bench.conn("merge") as connection, connection.cursor() as cur:
        cur.execute(f'SELECT snapshot_at FROM "{schema}".ds_batches WHERE batch_id = %s', (middle,))
        at = cur.fetchone()[0]
        cur.execute(f'SELECT count(*), count(*) FILTER (WHERE ds_batch_out = 2147483647) FROM "{schema}"."{table}"')
        versions, current = cur.fetchone()
        cur.execute(f'SELECT id FROM "{schema}"."{table}" WHERE ds_batch_in > 1 ORDER BY id LIMIT 1')
        key = (cur.fetchone() or (1,))[0]
        connection.rollback()
        print(f"# as-of on {schema}.{table}: {versions:,} versions, {current:,} current, {batches} batches; "
              f"as of batch {middle}'s snapshot_at {at.isoformat()}, key id = {key}", file=sys.stderr)
        queries = [
            ("floor: count(*) of _current", f'SELECT count(*) FROM "{schema}"."{table}_current"', ()),
            ("count(*) of as_of(at), all rows", f'SELECT count(*) FROM "{schema}"."{table}_as_of"(%s)', (at,)),
            ("as_of(at) WHERE id = key", f'SELECT * FROM "{schema}"."{table}_as_of"(%s) WHERE id = %s', (at, key)),
            ("as_of_batch(mid) WHERE id = key",
             f'SELECT * FROM "{schema}"."{table}_as_of_batch"(%s) WHERE id = %s', (middle, key)),
            ("_history WHERE id = key", f'SELECT * FROM "{schema}"."{table}_history" WHERE id = %s', (key,)),
        ]
        for label, query, parameters in queries:
            for _ in range(2):  # the second run is reported: warm cache, as a consumer's repeated query
                cur.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + query, parameters)
                plan = [row[0] for row in cur.fetchall()]
            connection.rollback()
            milliseconds = next((line.split(":")[1].strip() for line in plan if line.startswith("Execution Time")),
                                "?")
            print(f"# {label}: {milliseconds}", file=sys.stderr)
            for line in plan:
                print(f"#     {line}", file=sys.stderr)
            if "id = " in label and not any("Index" in line for line in plan):
                raise CheckFailed(f"{label}: no index in the plan")


def print_history(results: list[Result], shape: str, size: int) -> None:
    """After the run: the last forensic 1% batch against the first (and, from ten batches on, the medians of
    the last five against the first five), then the table's state after the second and the last batch."""
    forensic = [r for r in results if r.shape == shape and r.mode == "forensic" and r.churn == "1%"
                and r.nominal == size]
    if len(forensic) >= 2:
        first, last = forensic[0], forensic[-1]
        print(f"# forensic {shape} {human(size)}: batch {last.batch} {last.job_s:.2f}s vs batch "
              f"{first.batch} {first.job_s:.2f}s = {last.job_s / first.job_s:.2f}x")
    if len(forensic) >= 10:  # one batch is noisy on a shared machine: medians of five as well
        early = statistics.median(r.job_s for r in forensic[:5])
        late = statistics.median(r.job_s for r in forensic[-5:])
        print(f"# forensic {shape} {human(size)}: median of batches {forensic[-5].batch}-{forensic[-1].batch} "
              f"{late:.2f}s vs batches {forensic[0].batch}-{forensic[4].batch} {early:.2f}s = {late / early:.2f}x")
    for result in results:
        if result.table and result.shape == shape and result.nominal == size:
            stats = result.table
            print(f"# forensic {shape} {human(size)} after batch {stats['batch']:.0f}: "
                  f"table {stats['table_mb']:.1f} MB, "
                  f"indexes {stats['index_mb']:.1f} MB, {stats['live']:,.0f} live / {stats['dead']:,.0f} dead "
                  f"tuples ({stats['autovacuums']:.0f} autovacuums, {stats['autoanalyzes']:.0f} autoanalyzes); "
                  f"as of batch {stats['batch'] // 2:.0f}: one key {stats['asof_key_ms']:.1f} ms, all rows "
                  f"{stats['asof_all_ms']:.0f} ms")
