#!/usr/bin/env python3
"""Benchmark `datasurface-job merge` against the physical floor (issue 7).

The floor, measured in the same run on the same snapshot: COPY of the source table (binary, through an
OS pipe, like the job) into an UNLOGGED table in the merge database, plus ONE `FULL JOIN` diff of it
against the current rows. The job is `datasurface-job merge` run as a subprocess, end to end (process
start, model load, source check, ledger, staging, diff, apply, commit); its peak RSS comes from the
kernel (wait4 rusage of that child).

It starts its own throwaway PostgreSQL (one server, with a source and a merge database, as the test
suite does), generates the source tables server-side with `generate_series`, applies churn server-side
(a mixed batch: one third inserts, one third updates, one third deletes) and checks every run:
the `_current` view equals the source table (count + order-independent row hash), the ledger's counts
equal the churn applied, and the floor's diff found the same number of changes.

    scripts/benchmark.sh                                         # default: about a minute on 2 cores
    scripts/benchmark.sh --sizes 1m --wide-sizes 1m --churn 10,1,0  # wide at 1M, 10% churn
    scripts/benchmark.sh --sizes 10m --shapes narrow --churn 1,0    # 10M rows
    scripts/benchmark.sh --sizes 1m --shapes narrow --modes forensic --churn 1 --history 50
    scripts/benchmark.sh --sizes 1m --shapes narrow --modes forensic --churn 1 --history 50 --as-of
    scripts/benchmark.sh --fixed-cost 0 --sizes 1k --shapes narrow --churn 0 --streams 50 --stream-rounds 3
    scripts/benchmark.sh --fixed-cost 0 --no-postgres --groups 400   # 400 stores in one job vs a job each

`--as-of` (forensic): after the last batch, the consumer queries of contract §5 on that history, each with
its plan (EXPLAIN ANALYZE) and time: as_of(timestamptz) of the middle batch's snapshot (all rows, and one
key), as_of_batch, one key's `_history`, against the floor of counting the `_current` view.
"""

# ruff: noqa: S608 - every SQL string here is built from this script's own constants (shape and column
# names, quoted), never from input
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg2
import yaml
from psycopg2 import sql

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from datasurface.localpg import LocalPostgres, find_bin_dir  # noqa: E402
from datasurface.merge.diff import compared  # noqa: E402
from datasurface.merge.layout import layouts  # noqa: E402
from datasurface.model import parse_model  # noqa: E402

OPEN_END = 2147483647
STORE = "Bench"
PIPE_CHUNK = 1 << 16

# (name, type, generator expression over g = generate_series value); key column first.
NARROW = [
    ("id", "bigint", "g"),
    ("name", "varchar(40)", "'name-' || g"),
    ("amount", "numeric(12,2)", "(g % 100000) / 100.0"),
    ("qty", "integer", "(g % 997)::integer"),
    ("created", "date", "date '2020-01-01' + (g % 2000)::integer"),
    ("note", "text", "md5(g::text)"),
]


def _nullable(expr: str, salt: int) -> str:
    """About 10% NULLs, a different 10% per column."""
    return f"CASE WHEN (g * 7 + {salt}) % 10 = 0 THEN NULL ELSE {expr} END"


def _wide() -> list[tuple[str, str, str]]:
    cols = [("id", "bigint", "g"), ("version", "integer", "0")]
    kinds = [
        ("integer", "((g * {s}) % 100000)::integer"),
        ("bigint", "g * {s}"),
        ("numeric(14,4)", "((g * {s}) % 1000000) / 10000.0"),
        ("double precision", "(g * {s}) / 7.0"),
        ("boolean", "(g + {s}) % 3 = 0"),
        ("varchar(60)", "'v{s}-' || (g * {s})"),
        ("text", "md5((g + {s})::text)"),
        ("date", "date '2000-01-01' + ((g * {s}) % 9000)::integer"),
        ("timestamptz", "timestamptz '2020-01-01 00:00:00+00' + ((g * {s}) % 100000000) * interval '1 second'"),
        ("timestamp", "timestamp '2021-01-01' + ((g + {s}) % 1000000) * interval '1 minute'"),
        ("uuid", "md5((g * {s})::text)::uuid"),
        ("smallint", "((g + {s}) % 30000)::smallint"),
        ("jsonb", "jsonb_build_object('k', g % 100, 's', {s})"),
        ("char(8)", "lpad(((g + {s}) % 100000000)::text, 8, '0')"),
    ]
    salt = 1
    while len(cols) < 30:
        typ, expr = kinds[(len(cols) - 2) % len(kinds)]
        cols.append((f"c{len(cols):02d}", typ, _nullable(expr.format(s=salt), salt)))
        salt += 1
    return cols


SHAPES = {"narrow": NARROW, "wide": _wide()}
# the column each shape's updates change (never NULL, so the update always changes the row)
UPDATE_SET = {"narrow": "amount = amount + 1, note = md5(note)", "wide": "version = version + 1"}


def parse_size(text: str) -> int:
    t = text.strip().lower().replace("_", "")
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def human(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


@dataclass
class Result:
    shape: str
    nominal: int
    size: int
    churn: str
    mode: str
    batch: int
    floor_s: float
    job_s: float
    rss_mb: float
    changes: int
    check: str = "ok"
    shown: bool = True
    floor_w_s: float = float("nan")  # COPY + diff + the minimal writes
    table: dict[str, float] = field(default_factory=dict)  # --history: sizes, dead tuples, as-of queries

    @property
    def ratio(self) -> float:
        return self.job_s / self.floor_s if self.floor_s else float("nan")

    @property
    def ratio_w(self) -> float:
        return self.job_s / self.floor_w_s if self.floor_w_s else float("nan")

    @property
    def rows_per_s(self) -> float:
        return self.size / self.job_s if self.job_s else float("nan")


COLUMNS = ["shape", "rows", "churn", "mode", "batch", "floor s", "job s", "ratio", "floor+w s", "ratio w",
           "rows/s", "peak RSS MB", "changes", "check"]


def _num(x: float) -> str:
    return "-" if x != x else f"{x:.2f}"  # NaN: no floor for the initial load


def row_cells(r: Result) -> list[str]:
    return [r.shape, human(r.nominal), r.churn, r.mode, str(r.batch), _num(r.floor_s), f"{r.job_s:.2f}",
            _num(r.ratio), _num(r.floor_w_s), _num(r.ratio_w), f"{r.rows_per_s:,.0f}", f"{r.rss_mb:.0f}",
            f"{r.changes:,}", r.check]


def markdown_table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in results]
    return "\n".join(lines)


def plain_row(cells: list[str]) -> str:
    widths = [6, 5, 6, 8, 5, 7, 7, 6, 9, 7, 10, 11, 9, 5]
    return "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))


class CheckFailed(Exception):
    pass


@dataclass
class Bench:
    server: LocalPostgres
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    source_db: str = ""
    merge_db: str = ""
    copy_s: float = 0.0  # the last floor's COPY alone
    spawned_at: float = 0.0  # wall clock (epoch) when the last job was started
    cpu_s: float = 0.0  # the last job's user + system CPU seconds (less sensitive to a busy machine than wall)

    # ---- databases -------------------------------------------------------------------------

    def create_databases(self, tag: str) -> None:
        src_user, mrg_user = f"bench_src_{tag}", f"bench_mrg_{tag}"
        src_pw, mrg_pw = secrets.token_hex(12), secrets.token_hex(12)
        self.server.create_role(src_user, src_pw)
        self.server.create_role(mrg_user, mrg_pw)
        self.source_db, self.merge_db = f"bench_source_{tag}", f"bench_merge_{tag}"
        self.server.create_database(self.source_db, owner=src_user)
        self.server.create_database(self.merge_db, owner=mrg_user)
        self.env = {"SOURCE_USER": src_user, "SOURCE_PASSWORD": src_pw,
                    "MERGE_USER": mrg_user, "MERGE_PASSWORD": mrg_pw}

    def drop_databases(self) -> None:
        conn = self.server.admin_connect()
        with conn.cursor() as cur:
            for db in (self.source_db, self.merge_db):
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
            for role in (self.env["SOURCE_USER"], self.env["MERGE_USER"]):
                cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.close()

    def connect(self, which: str) -> Any:
        prefix, db = ("SOURCE", self.source_db) if which == "source" else ("MERGE", self.merge_db)
        conn = psycopg2.connect(host=self.server.socket_dir, port=self.server.port, dbname=db,
                                user=self.env[f"{prefix}_USER"], password=self.env[f"{prefix}_PASSWORD"])
        return conn

    @contextmanager
    def conn(self, which: str) -> Iterator[Any]:
        c = self.connect(which)
        try:
            yield c
        finally:
            c.close()

    def settle(self) -> None:
        """Before each timed step: write the server's dirty buffers out (CHECKPOINT) and the kernel's dirty
        pages to disk (sync), so that no step pays for the writes of the one before it (a 1M-row floor leaves
        ~100 MB of its table dirty in the 128 MB of shared buffers, which the next step would evict)."""
        conn = self.server.admin_connect()
        with conn.cursor() as cur:
            cur.execute("CHECKPOINT")
        conn.close()
        os.sync()

    def vacuum(self) -> None:
        """`VACUUM (ANALYZE)` of the source and the merge database: after a bulk load, the maintenance that
        autovacuum would otherwise do a minute or so later (`autovacuum_naptime`), inside whichever timed step
        happened to run then."""
        for database in (self.source_db, self.merge_db):
            conn = self.server.admin_connect(database)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("VACUUM (ANALYZE)")
            conn.close()

    # ---- source data -----------------------------------------------------------------------

    def generate(self, shape: str, size: int, table: str | None = None) -> None:
        table = table or shape
        cols = SHAPES[shape]
        defs = ", ".join(f'"{n}" {t}' + (" PRIMARY KEY" if n == "id" else "") for n, t, _ in cols)
        exprs = ", ".join(e for _, _, e in cols)
        with self.conn("source") as c, c.cursor() as cur:
            cur.execute(f'CREATE TABLE "{table}" ({defs})')
            cur.execute(f'INSERT INTO "{table}" SELECT {exprs} FROM generate_series(1, {int(size)}) g')
            c.commit()
            c.autocommit = True
            cur.execute(f'VACUUM ANALYZE "{table}"')

    def churn(self, shape: str, fraction: float, seed: int, table: str | None = None) -> dict[str, int]:
        """One third each of inserts, updates, deletes (of the current row count); exact counts."""
        table = table or shape
        cols = SHAPES[shape]
        exprs = ", ".join(e for _, _, e in cols)
        with self.conn("source") as c, c.cursor() as cur:
            cur.execute(f'SELECT count(*), coalesce(max(id), 0) FROM "{table}"')
            count, max_id = cur.fetchone()
            if fraction <= 0:
                return {"total": count, "inserted": 0, "updated": 0, "deleted": 0}
            third = fraction / 3
            threshold = int(third * 1_000_000)
            # disjoint pseudo-random sets per batch: hash of the key with the batch as seed
            h = "(abs(hashint8extended(id, %s)) %% 1000000)"
            cur.execute(f'UPDATE "{table}" SET {UPDATE_SET[shape]} WHERE {h} < %s', (seed, threshold))
            updated = cur.rowcount
            cur.execute(f'DELETE FROM "{table}" WHERE {h} >= %s AND {h} < %s',
                        (seed, threshold, seed, 2 * threshold))
            deleted = cur.rowcount
            n_ins = max(1, round(count * third))
            cur.execute(f'INSERT INTO "{table}" SELECT {exprs} '
                        f'FROM generate_series({int(max_id) + 1}, {int(max_id) + n_ins}) g')
            inserted = cur.rowcount
            c.commit()
            return {"total": count + inserted - deleted, "inserted": inserted, "updated": updated,
                    "deleted": deleted}

    # ---- model and job ---------------------------------------------------------------------

    def write_model(self, shape: str) -> Path:
        folder = self.workdir / f"model-{shape}"
        folder.mkdir(parents=True, exist_ok=True)
        model = {
            "apiVersion": "datasurface/v1", "kind": "Model",
            "stores": [{
                "name": STORE, "consistency": "multi_dataset",
                "source": {"host": self.server.socket_dir, "port": self.server.port, "database": self.source_db,
                           "credential": "source"},
                "datasets": [{
                    "name": shape, "primaryKey": ["id"],
                    "columns": [{"name": n, "type": t, **({"nullable": False} if n == "id" else {})}
                                for n, t, _ in SHAPES[shape]],
                }],
            }],
        }
        (folder / "datasurface.yaml").write_text(yaml.safe_dump(model, sort_keys=False))
        return folder

    def run_job(self, model: Path, mode: str, store: str = STORE, platform: str | None = None) -> tuple[float, float]:
        """Wall seconds and peak RSS (MB) of one `datasurface-job merge` process."""
        exe = Path(sys.executable).with_name("datasurface-job")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from datasurface.cli import _exit; _exit()"]
        cmd += ["merge", "--model", str(model), "--platform", platform or f"bench_{mode}", "--mode", mode,
                "--store", store,
                "--merge-host", self.server.socket_dir, "--merge-port", str(self.server.port),
                "--merge-database", self.merge_db, "--merge-credential", "merge"]
        env = {**os.environ, **self.env}
        with tempfile.TemporaryFile() as out:
            started = time.monotonic()
            self.spawned_at = time.time()
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
            elapsed = time.monotonic() - started
            self.cpu_s = usage.ru_utime + usage.ru_stime
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                out.seek(0)
                raise CheckFailed(f"job exited {proc.returncode}: {out.read().decode(errors='replace')[-2000:]}")
        return elapsed, usage.ru_maxrss / 1024  # Linux: kilobytes

    # ---- consumer queries (contract §5) ----------------------------------------------------

    def as_of_report(self, shape: str, batches: int) -> None:
        """Plan and time of the as-of queries on the forensic history; a key query must use an index."""
        schema, t = "bench_forensic", f"{STORE.lower()}_{shape}"
        mid = max(1, batches // 2)
        with self.conn("merge") as c, c.cursor() as cur:
            cur.execute(f'SELECT snapshot_at FROM "{schema}".ds_batches WHERE batch_id = %s', (mid,))
            at = cur.fetchone()[0]
            cur.execute(f'SELECT count(*), count(*) FILTER (WHERE ds_batch_out = 2147483647) FROM "{schema}"."{t}"')
            versions, current = cur.fetchone()
            cur.execute(f'SELECT id FROM "{schema}"."{t}" WHERE ds_batch_in > 1 ORDER BY id LIMIT 1')
            key = (cur.fetchone() or (1,))[0]
            c.rollback()
            print(f"# as-of on {schema}.{t}: {versions:,} versions, {current:,} current, {batches} batches; "
                  f"as of batch {mid}'s snapshot_at {at.isoformat()}, key id = {key}", file=sys.stderr)
            queries = [
                ("floor: count(*) of _current", f'SELECT count(*) FROM "{schema}"."{t}_current"', ()),
                ("count(*) of as_of(at), all rows", f'SELECT count(*) FROM "{schema}"."{t}_as_of"(%s)', (at,)),
                ("as_of(at) WHERE id = key", f'SELECT * FROM "{schema}"."{t}_as_of"(%s) WHERE id = %s', (at, key)),
                ("as_of_batch(mid) WHERE id = key",
                 f'SELECT * FROM "{schema}"."{t}_as_of_batch"(%s) WHERE id = %s', (mid, key)),
                ("_history WHERE id = key", f'SELECT * FROM "{schema}"."{t}_history" WHERE id = %s', (key,)),
            ]
            for label, query, args in queries:
                for _ in range(2):  # the second run is reported: warm cache, as a consumer's repeated query
                    cur.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + query, args)
                    plan = [r[0] for r in cur.fetchall()]
                c.rollback()
                ms = next((ln.split(":")[1].strip() for ln in plan if ln.startswith("Execution Time")), "?")
                print(f"# {label}: {ms}", file=sys.stderr)
                for line in plan:
                    print(f"#     {line}", file=sys.stderr)
                if "id = " in label and not any("Index" in ln for ln in plan):
                    raise CheckFailed(f"{label}: no index in the plan")

    # ---- the floor -------------------------------------------------------------------------

    def floor(self, shape: str, mode: str) -> tuple[float, int]:
        """COPY source -> pipe -> unlogged table in the merge db, plus one FULL JOIN diff; seconds, changes."""
        cols = SHAPES[shape]
        names = ", ".join(f'"{n}"' for n, _, _ in cols)
        defs = ", ".join(f'"{n}" {t}' for n, t, _ in cols)
        with self.conn("source") as src, self.conn("merge") as mrg:
            diff = self.floor_diff(mrg, shape, mode, "SELECT count(*)")
            with mrg.cursor() as cur:
                cur.execute("DROP TABLE IF EXISTS floor_stage")
                mrg.commit()
            self.settle()
            started = time.monotonic()
            src.set_session(isolation_level="REPEATABLE READ", readonly=True)
            with mrg.cursor() as cur:
                cur.execute(f"CREATE UNLOGGED TABLE floor_stage ({defs})")
            read_fd, write_fd = os.pipe()
            errors: list[BaseException] = []

            def produce() -> None:
                try:
                    with src.cursor() as c, os.fdopen(write_fd, "wb", buffering=PIPE_CHUNK) as w:
                        c.copy_expert(f'COPY (SELECT {names} FROM "{shape}") TO STDOUT (FORMAT binary)', w,
                                      size=PIPE_CHUNK)
                except BaseException as exc:  # re-raised below
                    errors.append(exc)

            t = threading.Thread(target=produce, daemon=True)
            t.start()
            with os.fdopen(read_fd, "rb", buffering=PIPE_CHUNK) as r, mrg.cursor() as cur:
                cur.copy_expert(f"COPY floor_stage ({names}) FROM STDIN (FORMAT binary, FREEZE)", r,
                                size=PIPE_CHUNK)
            t.join()
            if errors:
                raise errors[0]
            src.rollback()
            self.copy_s = time.monotonic() - started
            with mrg.cursor() as cur:
                cur.execute(diff)
                changes = int(cur.fetchone()[0])
            mrg.commit()
            elapsed = time.monotonic() - started
        return elapsed, changes  # floor_stage stays for floor_writes

    def floor_diff(self, conn: Any, shape: str, mode: str, select: str) -> str:
        """The floor's one FULL JOIN of `floor_stage` against the current rows, comparing the values exactly
        as the job's diff does (merge/diff.py `compared`: numeric scale, floats and jsonb as text)."""
        lay = self.layout(shape, mode)
        target = f'"bench_{mode}"."{STORE.lower()}_{shape}"'
        current = target if mode == "live" else f"(SELECT * FROM {target} WHERE ds_batch_out = {OPEN_END})"
        return (f"{select} FROM floor_stage s FULL JOIN {current} c ON s.id = c.id "
                f"WHERE s.id IS NULL OR c.id IS NULL OR ROW({compared(lay, 's').as_string(conn)}) "
                f"IS DISTINCT FROM ROW({compared(lay, 'c').as_string(conn)})")

    def layout(self, shape: str, mode: str) -> Any:
        model = parse_model((self.workdir / f"model-{shape}" / "datasurface.yaml").read_text(), "bench")
        return layouts(f"bench_{mode}", model.stores[0], mode)[0]

    def floor_writes(self, shape: str, mode: str) -> float:
        """The second floor: the COPY (as measured by `floor`) + the diff materialised + the minimal writes
        (each kind of change in ONE statement, as many rows as the batch changes) on a copy of the merge
        table with the same indexes, made before the clock starts. Seconds of the diff and writes."""
        target = f'"bench_{mode}"."{STORE.lower()}_{shape}"'
        names = [n for n, _, _ in SHAPES[shape]]
        cols = ", ".join(f'"{n}"' for n in names)
        dcols = ", ".join(f'd."{n}"' for n in names)
        keyed = "FROM (SELECT * FROM floor_diff WHERE op IN ({})) d WHERE t.id = d.id"
        with self.conn("merge") as mrg, mrg.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS floor_target")
            cur.execute(f"CREATE TABLE floor_target (LIKE {target} INCLUDING ALL)")
            cur.execute(f"INSERT INTO floor_target SELECT * FROM {target}")
            cur.execute("ANALYZE floor_target")
            mrg.commit()
            self.settle()
            started = time.monotonic()
            op = "CASE WHEN c.id IS NULL THEN 'I' WHEN s.id IS NULL THEN 'D' ELSE 'U' END"
            cur.execute("CREATE TEMP TABLE floor_diff ON COMMIT DROP AS "
                        + self.floor_diff(mrg, shape, mode, f"SELECT {op} AS op, coalesce(s.id, c.id) AS id, "
                                          + ", ".join(f's."{n}"' for n in names[1:])))
            if mode == "live":
                cur.execute("DELETE FROM floor_target t USING (SELECT * FROM floor_diff WHERE op = 'D') d "
                            "WHERE t.id = d.id")
                sets = ", ".join(f'"{n}" = d."{n}"' for n in names[1:])
                cur.execute(f"UPDATE floor_target t SET {sets}, ds_batch_id = 0 " + keyed.format("'U'"))
                cur.execute(f"INSERT INTO floor_target ({cols}, ds_batch_id) SELECT {dcols}, 0 "
                            "FROM floor_diff d WHERE op = 'I'")
            else:
                cur.execute(f"UPDATE floor_target t SET ds_batch_out = {OPEN_END - 1} " + keyed.format("'U', 'D'")
                            + f" AND t.ds_batch_out = {OPEN_END}")
                cur.execute(f"INSERT INTO floor_target ({cols}, ds_batch_in, ds_batch_out) "
                            f"SELECT {dcols}, -1, {OPEN_END} FROM floor_diff d WHERE op IN ('I', 'U')")
            mrg.commit()
            elapsed = time.monotonic() - started
            cur.execute("DROP TABLE floor_target")
            cur.execute("DROP TABLE IF EXISTS floor_stage")
            mrg.commit()
        return elapsed

    def table_stats(self, shape: str, mode: str, batch: int) -> dict[str, float]:
        """The merge table after `batch` batches: sizes, live/dead tuples (as autovacuum left them), and
        two as-of queries at the middle batch: one key's version, and the whole table's row count."""
        target = f'"bench_{mode}"."{STORE.lower()}_{shape}"'
        asof = max(1, batch // 2)
        with self.conn("merge") as c, c.cursor() as cur:
            cur.execute("SELECT pg_table_size(%s::regclass), pg_indexes_size(%s::regclass), n_live_tup, n_dead_tup, "
                        "autovacuum_count, autoanalyze_count FROM pg_stat_user_tables WHERE relid = %s::regclass",
                        (target, target, target))
            table_b, index_b, live, dead, vacuums, analyzes = cur.fetchone()
            timings = {}
            for name, q in (("asof_key_ms", f"SELECT * FROM {target} WHERE id = 4242 AND ds_batch_in <= {asof} "
                                            f"AND ds_batch_out > {asof}"),
                            ("asof_all_ms", f"SELECT count(*) FROM {target} WHERE ds_batch_in <= {asof} "
                                            f"AND ds_batch_out > {asof}")):
                best = float("inf")
                for _ in range(3):
                    t0 = time.monotonic()
                    cur.execute(q)
                    cur.fetchall()
                    best = min(best, (time.monotonic() - t0) * 1000)
                timings[name] = best
            c.rollback()
        return {"batch": batch, "table_mb": table_b / 2**20, "index_mb": index_b / 2**20, "live": live,
                "dead": dead, "autovacuums": vacuums, "autoanalyzes": analyzes, **timings}

    floor_on_load = False  # the load batch has no floor: nothing to diff against yet
    writes_floor = True  # floor_writes (the second floor) reuses this floor's staged snapshot

    def label(self, shape: str) -> str:
        return shape

    # ---- correctness -----------------------------------------------------------------------

    def fingerprint(self, which: str, relation: str, names: str) -> tuple[int, int]:
        q = (f"SELECT count(*), coalesce(sum(hashtextextended(ROW({names})::text, 0)::numeric), 0) "
             f"FROM {relation}")
        with self.conn(which) as c, c.cursor() as cur:
            cur.execute(q)
            n, h = cur.fetchone()
        return int(n), int(h)

    def check(self, shape: str, mode: str, expected: dict[str, int], floor_changes: int,
              versions: int | None) -> None:
        names = ", ".join(f'"{n}"' for n, _, _ in SHAPES[shape])
        schema = f"bench_{mode}"
        src = self.fingerprint("source", f'"{shape}"', names)
        cur_view = self.fingerprint("merge", f'"{schema}"."{STORE.lower()}_{shape}_current"', names)
        if src != cur_view:
            raise CheckFailed(f"{mode}: current view != source (count, hash): {cur_view} vs {src}")
        self._check_ledger(shape, mode, expected, floor_changes, versions)

    def _check_ledger(self, shape: str, mode: str, expected: dict[str, int], floor_changes: int,
                      versions: int | None) -> None:
        schema = f"bench_{mode}"
        with self.conn("merge") as c, c.cursor() as cur:
            cur.execute(f'SELECT batch_id, status, rows_total, rows_inserted, rows_updated, rows_deleted '
                        f'FROM "{schema}".ds_batches ORDER BY batch_id DESC LIMIT 1')
            _, status, total, ins, upd, dele = cur.fetchone()
            if versions is not None:
                cur.execute(f'SELECT count(*) FROM "{schema}"."{STORE.lower()}_{shape}"')
                got_versions = int(cur.fetchone()[0])
                if got_versions != versions:
                    raise CheckFailed(f"{mode}: {got_versions} row versions, expected {versions}")
        got = {"total": total, "inserted": ins, "updated": upd, "deleted": dele}
        if status != "committed" or got != expected:
            raise CheckFailed(f"{mode}: ledger {status} {got}, churn applied {expected}")
        if floor_changes != ins + upd + dele:
            raise CheckFailed(f"{mode}: floor diff found {floor_changes} changes, ledger {ins + upd + dele}")


# ---- MariaDB sources (--mysql-sizes) ----------------------------------------------------------------

# the narrow shape in MySQL types, generated server-side from MariaDB's sequence engine (seq = 1..N)
MYSQL_NARROW = [
    ("id", "bigint", "seq"),
    ("name", "varchar(40)", "CONCAT('name-', seq)"),
    ("amount", "decimal(12,2)", "(seq % 100000) / 100.0"),
    ("qty", "int", "seq % 997"),
    ("created", "date", "DATE '2020-01-01' + INTERVAL (seq % 2000) DAY"),
    ("note", "text", "MD5(seq)"),
]
MYSQL_SHAPE = "narrow"  # the model's columns are NARROW's


class MySqlBench(Bench):
    """The same scenario with the source table in a throwaway MariaDB; the merge side stays PostgreSQL.

    Floor: the fastest plain read of the table through the same driver (PyMySQL, an unbuffered cursor,
    5,000-row fetches, every value left as the server's text: no conversion, no per-value work, each batch
    tab-joined into COPY text without escaping) into a PostgreSQL COPY, plus, for a churn batch, the same
    one FULL JOIN diff as the PostgreSQL floor. The load batch has a second floor too (`load_writes`): that
    read plus the one INSERT of its rows into a table like the merge table (same columns and indexes)."""

    floor_on_load = True
    writes_floor = False  # a churn batch's writes floor is the PostgreSQL rows'; the load's is `load_writes`

    def label(self, shape: str) -> str:
        return f"mysql-{shape}"

    def __init__(self, server: LocalPostgres, workdir: Path, mysql: Any):
        super().__init__(server, workdir)
        self.mysql = mysql
        self.my_db = ""
        self.my_user = ""

    def create_databases(self, tag: str) -> None:
        super().create_databases(tag)  # the merge database (its source database stays unused)
        self.my_db, self.my_user = f"bench_{tag}", f"bench_{tag}"
        password = secrets.token_hex(12)
        self.mysql.create_database(self.my_db, self.my_user, password)
        self.env.update({"SOURCE_USER": self.my_user, "SOURCE_PASSWORD": password})

    def drop_databases(self) -> None:
        super().drop_databases()
        self.mysql.drop_database(self.my_db, self.my_user)

    def my_connect(self, **kw: Any) -> Any:
        import pymysql

        return pymysql.connect(unix_socket=self.mysql.socket, user=self.my_user,
                               password=self.env["SOURCE_PASSWORD"], database=self.my_db, charset="utf8mb4", **kw)

    def generate(self, shape: str, size: int) -> None:
        defs = ", ".join(f"`{n}` {t}" + (" PRIMARY KEY" if n == "id" else "") for n, t, _ in MYSQL_NARROW)
        exprs = ", ".join(e for _, _, e in MYSQL_NARROW)
        conn = self.my_connect()
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE `{shape}` ({defs}) ENGINE=InnoDB")
            cur.execute(f"INSERT INTO `{shape}` SELECT {exprs} FROM seq_1_to_{int(size)}")
            conn.commit()
            cur.execute(f"ANALYZE TABLE `{shape}`")
        conn.close()

    def churn(self, shape: str, fraction: float, seed: int) -> dict[str, int]:
        conn = self.my_connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT count(*), coalesce(max(id), 0) FROM `{shape}`")
                count, max_id = cur.fetchone()
                if fraction <= 0:
                    return {"total": count, "inserted": 0, "updated": 0, "deleted": 0}
                threshold = int(fraction / 3 * 1_000_000)
                h = "(CRC32(CONCAT(id, '/', %s)) %% 1000000)"
                cur.execute(f"UPDATE `{shape}` SET amount = amount + 1, note = MD5(note) WHERE {h} < %s",
                            (seed, threshold))
                updated = cur.rowcount
                cur.execute(f"DELETE FROM `{shape}` WHERE {h} >= %s AND {h} < %s",
                            (seed, threshold, seed, 2 * threshold))
                deleted = cur.rowcount
                n_ins = max(1, round(count * fraction / 3))
                exprs = ", ".join(e.replace("seq", f"(seq + {int(max_id)})") for _, _, e in MYSQL_NARROW)
                cur.execute(f"INSERT INTO `{shape}` SELECT {exprs} FROM seq_1_to_{n_ins}")
                inserted = cur.rowcount
            conn.commit()
        finally:
            conn.close()
        return {"total": count + inserted - deleted, "inserted": inserted, "updated": updated, "deleted": deleted}

    def write_model(self, shape: str) -> Path:
        folder = super().write_model(shape)
        doc = yaml.safe_load((folder / "datasurface.yaml").read_text())
        doc["stores"][0]["source"] = {"type": "mysql", "host": self.mysql.socket, "database": self.my_db,
                                      "credential": "source"}
        (folder / "datasurface.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        return folder

    def floor(self, shape: str, mode: str) -> tuple[float, int]:
        import io

        import pymysql.converters
        import pymysql.cursors

        cols = SHAPES[shape]
        names = ", ".join(f'"{n}"' for n, _, _ in cols)
        defs = ", ".join(f'"{n}" {t}' for n, t, _ in cols)
        # no decoders: every value stays the text the server sent (the encoders, for the connection's SETs)
        text_only = {k: v for k, v in pymysql.converters.conversions.items() if not isinstance(k, int)}
        src = self.my_connect(cursorclass=pymysql.cursors.SSCursor, conv=text_only)
        with self.conn("merge") as mrg:
            with mrg.cursor() as cur:
                cur.execute("DROP TABLE IF EXISTS floor_stage")
                cur.execute("SELECT to_regclass(%s)", (f'"bench_{mode}"."{STORE.lower()}_{shape}"',))
                has_target = cur.fetchone()[0] is not None
                mrg.commit()
            self.settle()
            started = time.monotonic()
            with mrg.cursor() as cur:
                cur.execute(f"CREATE UNLOGGED TABLE floor_stage ({defs})")
            scur = src.cursor()
            scur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            scur.execute(f"SELECT {', '.join(f'`{n}`' for n, _, _ in cols)} FROM `{shape}`")

            class Rows(io.RawIOBase):
                """The rows as COPY text as they came: tab-joined server text, no escaping, no NULLs (the
                generated table has none), no Python code per row."""

                def __init__(self) -> None:
                    self.pending = b""

                def readable(self) -> bool:
                    return True

                def read(self, size: int = -1) -> bytes:
                    while len(self.pending) < size:
                        batch = scur.fetchmany(5000)
                        if not batch:
                            break
                        self.pending += ("\n".join(map("\t".join, batch)) + "\n").encode()
                    out, self.pending = self.pending[:size], self.pending[size:]
                    return out

            with mrg.cursor() as cur:
                cur.copy_expert(f"COPY floor_stage ({names}) FROM STDIN", Rows(), size=PIPE_CHUNK)
                copied = cur.rowcount
            src.rollback()
            src.close()
            changes = copied
            if has_target:
                with mrg.cursor() as cur:
                    cur.execute(floor_diff(shape, mode))
                    changes = int(cur.fetchone()[0])
            mrg.commit()
            elapsed = time.monotonic() - started
            if has_target:  # a load's staged copy stays for `load_writes`
                with mrg.cursor() as cur:
                    cur.execute("DROP TABLE floor_stage")
                mrg.commit()
        return elapsed, changes

    def load_writes(self, shape: str, mode: str) -> float:
        """After the load batch's job (its merge table exists now): seconds of the one INSERT of the floor's
        staged rows into an empty table LIKE the merge table INCLUDING ALL (same indexes), made before the
        clock starts; the load's minimal writes."""
        target = f'"bench_{mode}"."{STORE.lower()}_{shape}"'
        cols = ", ".join(f'"{n}"' for n, _, _ in SHAPES[shape])
        batch_cols, batch_vals = (("ds_batch_id", "0") if mode == "live"
                                  else ("ds_batch_in, ds_batch_out", f"1, {OPEN_END}"))
        with self.conn("merge") as mrg, mrg.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS floor_target")
            cur.execute(f"CREATE TABLE floor_target (LIKE {target} INCLUDING ALL)")
            mrg.commit()
            self.settle()
            started = time.monotonic()
            cur.execute(f"INSERT INTO floor_target ({cols}, {batch_cols}) SELECT {cols}, {batch_vals} FROM floor_stage")
            mrg.commit()
            elapsed = time.monotonic() - started
            cur.execute("DROP TABLE floor_target")
            cur.execute("DROP TABLE floor_stage")
            mrg.commit()
        return elapsed

    def check(self, shape: str, mode: str, expected: dict[str, int], floor_changes: int,
              versions: int | None) -> None:
        """The current view against the MariaDB table: count and a sum per column (both sides)."""
        conn = self.my_connect()
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*), sum(id), sum(amount), sum(qty), sum(char_length(name)), "
                        f"sum(to_days(created)), sum(conv(substr(md5(note), 1, 8), 16, 10)) FROM `{shape}`")
            want = tuple(int(v) for v in cur.fetchone())
        conn.close()
        view = f'"bench_{mode}"."{STORE.lower()}_{shape}_current"'
        with self.conn("merge") as c, c.cursor() as cur:
            # to_days() counts from year 0; PostgreSQL's dates count from 2000-01-01 (730485 days later)
            cur.execute(f"SELECT count(*), sum(id), sum(amount), sum(qty), sum(char_length(name)), "
                        f"sum(created - date '2000-01-01' + 730485), "
                        f"sum(('x' || substr(md5(note), 1, 8))::bit(32)::bigint) FROM {view}")
            got = tuple(int(v) for v in cur.fetchone())
        if got != want:
            raise CheckFailed(f"{mode}: current view != MariaDB source (count and sums): {got} vs {want}")
        self._check_ledger(shape, mode, expected, floor_changes, versions)


def floor_diff(shape: str, mode: str) -> str:
    """The floor's one FULL JOIN diff of `floor_stage` against the current rows; counts the changes."""
    values = [n for n, _, _ in SHAPES[shape] if n != "id"]
    target = f'"bench_{mode}"."{STORE.lower()}_{shape}"'
    current = target if mode == "live" else f"(SELECT * FROM {target} WHERE ds_batch_out = {OPEN_END})"
    s_vals = ", ".join(f's."{n}"' for n in values)
    c_vals = ", ".join(f'c."{n}"' for n in values)
    return (f"SELECT count(*) FROM floor_stage s FULL JOIN {current} c ON s.id = c.id "
            f"WHERE s.id IS NULL OR c.id IS NULL OR ({s_vals}) IS DISTINCT FROM ({c_vals})")


def churn_label(fraction: float | None) -> str:
    return "load" if fraction is None else f"{fraction * 100:g}%"


def run_scenario(bench: Bench, shape: str, size: int, modes: list[str], churns: list[float], history: int,
                 emit: Any, as_of: bool = False) -> list[Result]:
    tag = f"{shape}_{size}_{os.getpid()}"
    bench.create_databases(tag)
    results: list[Result] = []
    try:
        t0 = time.monotonic()
        bench.generate(shape, size)
        print(f"# {shape} {human(size)}: source generated in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        model = bench.write_model(shape)
        versions = {m: 0 for m in modes}
        batch = {m: 0 for m in modes}
        expected = {"total": size, "inserted": size, "updated": 0, "deleted": 0}
        steps: list[float | None] = [None, *churns]
        if history:
            steps += [0.01] * max(0, history - len(steps))
        for i, fraction in enumerate(steps):
            if fraction is not None:
                expected = bench.churn(shape, fraction, seed=i)
            shown = i <= len(churns) or i == len(steps) - 1 or i % 10 == 0
            for mode in modes:
                floor_s, floor_changes = (bench.floor(shape, mode) if fraction is not None or bench.floor_on_load
                                          else (0.0, size))
                floor_w = float("nan")
                if fraction is not None and shown and bench.writes_floor:  # a copy of the merge table: shown rows
                    floor_w = bench.copy_s + bench.floor_writes(shape, mode)
                bench.settle()
                job_s, rss = bench.run_job(model, mode)
                if fraction is None and isinstance(bench, MySqlBench):  # the load's second floor
                    floor_w = floor_s + bench.load_writes(shape, mode)
                batch[mode] += 1
                versions[mode] += expected["inserted"] + expected["updated"]
                res = Result(bench.label(shape), size, expected["total"], churn_label(fraction), mode, batch[mode],
                             floor_s, job_s, rss, expected["inserted"] + expected["updated"] + expected["deleted"],
                             floor_w_s=floor_w)
                try:
                    bench.check(shape, mode, expected, floor_changes,
                                versions[mode] if mode == "forensic" else None)
                except CheckFailed:
                    res.check = "FAIL"
                    emit(res)
                    raise
                if fraction is None and not bench.floor_on_load:
                    res.floor_s = float("nan")  # no merge table yet: the first batch is the initial load
                res.shown = shown
                if history and mode == "forensic" and (batch[mode] == 2 or i == len(steps) - 1):
                    res.table = bench.table_stats(shape, mode, batch[mode])
                if res.shown:
                    emit(res)
                results.append(res)
        if as_of and "forensic" in modes:
            bench.as_of_report(shape, batch["forensic"])
    finally:
        bench.drop_databases()
    return results


def print_medians(results: list[Result]) -> None:
    """`--repeat`: per shape, size, churn level and mode, the medians of its batches (one batch's ratio swings
    by 10-20% on a shared machine; the small tables' most)."""
    groups: dict[tuple[str, int, str, str], list[Result]] = {}
    for r in results:
        if r.churn != "load" and r.shape != "fixed":
            groups.setdefault((r.shape, r.nominal, r.churn, r.mode), []).append(r)
    for (shape, size, churn, mode), rs in groups.items():
        ratios, ratios_w = [r.ratio for r in rs], [r.ratio_w for r in rs]
        print(f"# median of {len(rs)} batches: {shape} {human(size)} {churn} {mode}: floor "
              f"{statistics.median(r.floor_s for r in rs):.3f}s, job {statistics.median(r.job_s for r in rs):.3f}s, "
              f"ratio {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}), ratio w "
              f"{statistics.median(ratios_w):.2f} (range {min(ratios_w):.2f}-{max(ratios_w):.2f})", flush=True)


def run_mysql(server: LocalPostgres, workdir: Path, sizes: list[int], modes: list[str], churns: list[float],
              emit: Any, results: list[Result]) -> bool:
    """The MariaDB-source scenarios; True when a correctness check failed."""
    from datasurface.localmysql import LocalMariaDB, find_server

    binary = find_server()
    if binary is None:
        print("MARIADB NOT INSTALLED: --mysql-sizes needs Debian's mariadb-server", file=sys.stderr)
        return True
    with LocalMariaDB(binary) as mysql:
        print(f"# MariaDB at {mysql.socket} (source); merge database on the PostgreSQL above", file=sys.stderr)
        bench = MySqlBench(server, workdir, mysql)
        for size in sizes:
            try:
                results += run_scenario(bench, MYSQL_SHAPE, size, modes, churns, 0, emit)
            except CheckFailed as exc:
                print(f"CORRECTNESS CHECK FAILED: {exc}", file=sys.stderr)
                return True
    return False


# ---- the server log: first statements, lock waits ----------------------------------------------------

LOG_PREFIX = "%n [%p] %a: "  # epoch seconds with milliseconds, backend pid, application name
LOG_LINE = re.compile(r"^(\d+\.\d{3}) \[\d+\] (.*?): (LOG|ERROR|FATAL|WARNING):  (.*)$")


def configure_server_log(server: LocalPostgres) -> None:
    """Every lock wait longer than 100 ms is logged (log_lock_waits reports a wait once it passes
    deadlock_timeout), so is every run of autovacuum, and log lines carry a millisecond timestamp and the
    application name."""
    conn = server.admin_connect()
    with conn.cursor() as cur:
        for name, value in (("log_line_prefix", LOG_PREFIX), ("log_lock_waits", "on"),
                            ("deadlock_timeout", "100ms"), ("log_autovacuum_min_duration", "0")):
            cur.execute(sql.SQL("ALTER SYSTEM SET {} = %s").format(sql.Identifier(name)), (value,))
        cur.execute("SELECT pg_reload_conf()")
    conn.close()
    time.sleep(0.2)


class ServerLog:
    def __init__(self, server: LocalPostgres):
        self.path = server.data_dir.parent / "server.log"
        self.offset = self.path.stat().st_size

    def new_lines(self) -> list[tuple[float, str, str, str]]:
        """(epoch, application, level, message) of the lines written since the last call."""
        with open(self.path, errors="replace") as f:
            f.seek(self.offset)
            text = f.read()
            self.offset = f.tell()
        out = []
        for line in text.splitlines():
            m = LOG_LINE.match(line)
            if m:
                out.append((float(m.group(1)), m.group(2), m.group(3), m.group(4)))
        return out


def first_statement(lines: list[tuple[float, str, str, str]], app_prefix: str) -> float:
    return min(t for t, app, _, msg in lines if app.startswith(app_prefix) and msg.startswith("statement: "))


def lock_waits(lines: list[tuple[float, str, str, str]]) -> tuple[list[str], float]:
    """The lock waits longer than deadlock_timeout (100 ms) that the server logged (one "still waiting"
    line each), and the longest of them that ended ("acquired ... after N ms"), in milliseconds."""
    waits = [msg for _, _, _, msg in lines if "still waiting for" in msg]
    ended = [float(m.group(1)) for _, _, _, msg in lines if (m := re.search(r" acquired .* after ([\d.]+) ms", msg))]
    return waits, max(ended, default=0.0)


def set_statement_logging(server: LocalPostgres, role: str, on: bool) -> None:
    conn = server.admin_connect()
    with conn.cursor() as cur:
        if on:
            cur.execute(sql.SQL("ALTER ROLE {} SET log_statement = 'all'").format(sql.Identifier(role)))
        else:
            cur.execute(sql.SQL("ALTER ROLE {} RESET log_statement").format(sql.Identifier(role)))
    conn.close()


# ---- the job's fixed cost (--fixed-cost) --------------------------------------------------------------

FLOOR_START = """import os, psycopg2
c = psycopg2.connect(host=os.environ['H'], port=os.environ['P'], dbname=os.environ['D'],
                     user=os.environ['MERGE_USER'], password=os.environ['MERGE_PASSWORD'], application_name='floor')
c.cursor().execute('SELECT 1')
"""


def run_fixed_cost(bench: Bench, runs: int, emit: Any) -> list[Result]:
    """Process start -> the first statement the merge server receives, for `datasurface-job merge` (a 1k-row
    table with no changes) and for its floor (the interpreter, `import psycopg2`, one connection, one query),
    each timed by the server log's millisecond clock against the moment the process was started. The job
    opens its sessions while it imports the engine and reads the model (sessions.Ahead), so its first
    statement is a session's settings; the time to its first statement of the batch's own work (taking
    the stream lock) is reported beside it."""
    bench.create_databases(f"fixed_{os.getpid()}")
    results: list[Result] = []
    try:
        bench.generate("narrow", 1000)
        model = bench.write_model("narrow")
        bench.run_job(model, "live")
        log = ServerLog(bench.server)
        set_statement_logging(bench.server, bench.env["MERGE_USER"], True)
        job, work, floor, rss, job_cpu, floor_cpu = [], [], [], [], [], []
        env = {**os.environ, **bench.env, "H": bench.server.socket_dir, "P": str(bench.server.port),
               "D": bench.merge_db}
        for _ in range(runs):
            log.new_lines()
            _, peak = bench.run_job(model, "live")
            lines = log.new_lines()
            job.append(first_statement(lines, "datasurface-job") - bench.spawned_at)
            work.append(min(t for t, app, _, msg in lines if app.startswith("datasurface-job merge")
                            and "pg_try_advisory_lock" in msg) - bench.spawned_at)
            rss.append(peak)
            job_cpu.append(bench.cpu_s)
            started = time.time()
            proc = subprocess.Popen([sys.executable, "-c", FLOOR_START], env=env)
            _, status, usage = os.wait4(proc.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise CheckFailed("the fixed-cost floor failed")
            floor.append(first_statement(log.new_lines(), "floor") - started)
            floor_cpu.append(usage.ru_utime + usage.ru_stime)
        set_statement_logging(bench.server, bench.env["MERGE_USER"], False)
        res = Result("fixed", 1000, 1000, "0%", "live", runs, statistics.median(floor), statistics.median(job),
                     max(rss), 0)
        res.table = {"job_min": min(job), "job_max": max(job), "floor_min": min(floor), "floor_max": max(floor),
                     "job_cpu": statistics.median(job_cpu), "floor_cpu": statistics.median(floor_cpu),
                     "stream_lock": statistics.median(work)}
        emit(res)
        print(f"# fixed cost (process start -> first query), {runs} runs: job median {res.job_s * 1000:.0f} ms "
              f"(range {min(job) * 1000:.0f}-{max(job) * 1000:.0f}), floor median {res.floor_s * 1000:.0f} ms "
              f"(range {min(floor) * 1000:.0f}-{max(floor) * 1000:.0f}); the job's first statement of the batch "
              f"(the stream lock) at {statistics.median(work) * 1000:.0f} ms (range {min(work) * 1000:.0f}-"
              f"{max(work) * 1000:.0f}); CPU of the whole process (user + system, "
              f"the least a busy machine distorts): job {statistics.median(job_cpu) * 1000:.0f} ms for its whole "
              f"batch, floor {statistics.median(floor_cpu) * 1000:.0f} ms")
        results.append(res)
    finally:
        bench.drop_databases()
    return results


# ---- many streams (--streams) -------------------------------------------------------------------------

def streams_model(bench: Bench, stores: int) -> Path:
    folder = bench.workdir / "model-streams"
    folder.mkdir(parents=True, exist_ok=True)
    columns = [{"name": n, "type": t, **({"nullable": False} if n == "id" else {})} for n, t, _ in NARROW]
    model = {"apiVersion": "datasurface/v1", "kind": "Model", "stores": [{
        "name": f"S{i:03d}", "consistency": "multi_dataset",
        "source": {"host": bench.server.socket_dir, "port": bench.server.port, "database": bench.source_db,
                   "credential": "source"},
        "datasets": [{"name": d, "table": f"s{i:03d}_{d}", "primaryKey": ["id"], "columns": columns}
                     for d in ("a", "b")],
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
    names = ", ".join(f'"{n}"' for n, _, _ in NARROW)
    try:
        t0 = time.monotonic()
        for i in range(stores):
            for d in ("a", "b"):
                bench.generate("narrow", rows, f"s{i:03d}_{d}")
        print(f"# streams: {stores} stores x 2 x {human(rows)} rows generated in {time.monotonic() - t0:.1f}s",
              file=sys.stderr)
        model = streams_model(bench, stores)
        log = ServerLog(bench.server)
        store_names = [f"S{i:03d}" for i in range(stores)]
        seed = 0
        for mode in modes:
            platform = f"bench_streams_{mode}"
            order = [max(jobs)] + [k for r in range(rounds) for k in (jobs if r % 2 == 0 else jobs[::-1])]
            for n, k in enumerate(order):  # the first round is the initial load
                seed += 1
                if seed > 1:
                    for i in range(stores):
                        for d in ("a", "b"):
                            bench.churn("narrow", 0.01, seed, f"s{i:03d}_{d}")
                bench.settle()
                log.new_lines()
                def one(store: str, mode: str = mode, platform: str = platform) -> tuple[float, float, float]:
                    mine = replace(bench)  # its own copy: spawned_at, cpu_s
                    return (*mine.run_job(model, mode, store, platform), mine.cpu_s)

                started, busy_before = time.monotonic(), cpu_busy()
                with ThreadPoolExecutor(max_workers=k) as pool:
                    done = list(pool.map(one, store_names))
                wall = time.monotonic() - started
                busy = cpu_busy() - busy_before
                cores = busy / wall  # the machine's cores kept busy, on average
                times = [t for t, _, _ in done]
                rss = [r for _, r, _ in done]
                job_cpu = sum(c for _, _, c in done)  # the jobs' processes (user + system); the rest: the server
                lines = log.new_lines()
                waits, longest = lock_waits(lines)
                autovacuum = sum(1 for *_, msg in lines if msg.startswith(("automatic vacuum", "automatic analyze")))
                for i in range(stores):
                    for d in ("a", "b"):
                        view = f'"{platform}"."s{i:03d}_{d}_current"'
                        if bench.fingerprint("source", f'"s{i:03d}_{d}"', names) != bench.fingerprint(
                                "merge", view, names):
                            raise CheckFailed(f"streams {mode}: {view} != source")
                times.sort()
                row = {"mode": mode, "jobs": k, "batches": stores, "wall_s": wall,
                       "per_min": stores / wall * 60, "p50_s": statistics.median(times), "cores": cores,
                       "job_cpu_ms": job_cpu / stores * 1000, "other_cpu_ms": (busy - job_cpu) / stores * 1000,
                       "p95_s": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))],
                       "lock_waits": len(waits), "longest_wait_ms": longest, "rss_mb": max(rss),
                       "wait_lines": waits[:5], "autovacuum": autovacuum, "round": (n - 1) // len(jobs) + 1,
                       "load": n == 0}
                report.append(row)
                if row["load"]:  # the rounds compared start from a settled server, not from the load's debt
                    bench.vacuum()
                base = next((r for r in report[::-1] if r["mode"] == mode and not r["load"]
                             and r["jobs"] == jobs[0]), None)  # the latest round of the first K
                speed = row["per_min"] / base["per_min"] if base and not row["load"] else float("nan")
                print(f"# streams {mode} {'load' if row['load'] else '1%  '} K={k}: {stores} batches in {wall:.1f}s "
                      f"= {row['per_min']:.0f}/min, p50 {row['p50_s']:.2f}s, p95 {row['p95_s']:.2f}s, "
                      f"{_num(speed)}x K={jobs[0]}, {cores:.2f} of {os.cpu_count()} cores busy "
                      f"(CPU per batch: jobs {row['job_cpu_ms']:.0f} ms, server and the rest "
                      f"{row['other_cpu_ms']:.0f} ms), "
                      f"lock waits > 100 ms: {len(waits)} (longest {longest:.0f} ms), "
                      f"autovacuum runs: {autovacuum}, "
                      f"peak RSS {row['rss_mb']:.0f} MB",
                      flush=True)
                for w in waits[:5]:
                    print(f"#   {w}")
            if rounds > 1:
                report += streams_medians([r for r in report if r["mode"] == mode and not r["load"]], jobs)
    finally:
        bench.drop_databases()
    return report


def streams_medians(rows: list[dict[str, Any]], jobs: list[int]) -> list[dict[str, Any]]:
    """Per K: the median of its rounds (batches per minute, p50, p95, cores, CPU per batch), the speed-up of
    the medians against the first K's, and the worst of the lock waits and the peak RSS."""
    out: list[dict[str, Any]] = []
    for k in jobs:
        mine = [r for r in rows if r["jobs"] == k]
        med = {key: statistics.median(r[key] for r in mine)
               for key in ("per_min", "p50_s", "p95_s", "cores", "job_cpu_ms", "other_cpu_ms")}
        out.append({"mode": mine[0]["mode"], "jobs": k, "batches": sum(r["batches"] for r in mine), **med,
                    "lock_waits": sum(r["lock_waits"] for r in mine),
                    "longest_wait_ms": max(r["longest_wait_ms"] for r in mine),
                    "autovacuum": sum(r["autovacuum"] for r in mine), "rss_mb": max(r["rss_mb"] for r in mine),
                    "round": "median", "load": False, "rounds": [round(r["per_min"]) for r in mine]})
    for row in out:
        row["speed_up"] = row["per_min"] / out[0]["per_min"]
        print(f"# streams {row['mode']} median of {len(row['rounds'])} rounds K={row['jobs']}: "
              f"{row['per_min']:.0f}/min (rounds: {', '.join(map(str, row['rounds']))}), "
              f"{row['speed_up']:.2f}x K={jobs[0]}, p50 {row['p50_s']:.2f}s, p95 {row['p95_s']:.2f}s, "
              f"{row['cores']:.2f} cores busy (CPU per batch: jobs {row['job_cpu_ms']:.0f} ms, server and the "
              f"rest {row['other_cpu_ms']:.0f} ms), lock waits > 100 ms: {row['lock_waits']} (longest "
              f"{row['longest_wait_ms']:.0f} ms), autovacuum runs: {row['autovacuum']}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100k,1m", help="row counts, comma-separated (k, m suffixes); e.g. 10m")
    p.add_argument("--shapes", default="narrow,wide", help="narrow (6 columns) and/or wide (30 columns)")
    p.add_argument("--wide-sizes", default="100k",
                   help="sizes for the wide shape (default 100k only; e.g. 100k,1m)")
    p.add_argument("--modes", default="live,forensic", help="live and/or forensic")
    p.add_argument("--churn", default="1,0", help="churn per batch in percent, comma-separated; e.g. 1,0,10")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run each churn level's batch N times in a row (fresh churn before each, the floor "
                        "measured before each), then print the median ratios of each level (e.g. 5)")
    p.add_argument("--history", type=int, default=0,
                   help="forensic-after-N-batches: run N batches in total at 1%% churn and report batch N "
                        "next to the first 1%% batch (e.g. 50)")
    p.add_argument("--mysql-sizes", default="",
                   help="also run the narrow shape from a MariaDB source table of these sizes (e.g. 1m); "
                        "needs Debian's mariadb-server. Its floor: the fastest plain read of the table through "
                        "the same driver into a PostgreSQL COPY (plus the diff, for churn batches)")
    p.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL-source scenarios")
    p.add_argument("--as-of", action="store_true",
                   help="forensic: after the last batch, show plan and time of the as-of and history queries")
    p.add_argument("--fixed-cost", type=int, default=9, metavar="N",
                   help="runs of the fixed-cost row: process start -> first query, job against its floor "
                        "(median of N; 0: skip)")
    p.add_argument("--streams", type=int, default=0, metavar="N",
                   help="many-streams mode: N stores x 2 datasets, merged by K concurrent jobs (see --jobs)")
    p.add_argument("--jobs", default="1,2,4", help="K values for --streams, comma-separated")
    p.add_argument("--stream-rows", default="20k", help="rows per dataset for --streams")
    p.add_argument("--stream-rounds", type=int, default=1, metavar="R",
                   help="--streams: R rounds per K, in turn forwards and backwards (1,2,4,4,2,1,...), then the "
                        "median per K and the speed-up of the medians (e.g. 3)")
    p.add_argument("--groups", type=int, default=0, metavar="N",
                   help="also N small stores merged by one job against one job per store (bench_groups.py)")
    p.add_argument("--group-rows", type=int, default=100, help="rows of each store's table for --groups")
    p.add_argument("--group-parallel", default="1,2", help="--parallel values for --groups, comma-separated")
    p.add_argument("--group-sample", type=int, default=40, metavar="M",
                   help="stores merged by separate processes for --groups (per-stream medians)")
    p.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = p.parse_args(argv)

    sizes = [parse_size(s) for s in args.sizes.split(",") if s and not args.no_postgres]
    mysql_sizes = [parse_size(s) for s in args.mysql_sizes.split(",") if s]
    wide_sizes = [parse_size(s) for s in args.wide_sizes.split(",") if s and not args.no_postgres]
    shapes = [s for s in args.shapes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    churns = [float(c) / 100 for c in args.churn.split(",") if c for _ in range(args.repeat)]
    for s in shapes:
        if s not in SHAPES:
            p.error(f"unknown shape {s!r}")
    for m in modes:
        if m not in ("live", "forensic"):
            p.error(f"unknown mode {m!r}")

    # the job's bytecode, compiled once (PYTHONDONTWRITEBYTECODE=1 would otherwise make every job of an
    # editable install compile its modules from source at start; the image ships none: about 0.1 s a start)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src")], check=True, stdout=subprocess.DEVNULL)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server (finally below) on SIGTERM too
    workdir = Path(tempfile.mkdtemp(prefix="ds-bench-"))
    server = LocalPostgres(find_bin_dir()).start()  # its own temp folder, readable by the server user
    print(f"# PostgreSQL {server.version} at {server.socket_dir} (one server: source and merge databases)",
          file=sys.stderr)
    configure_server_log(server)
    print(plain_row(COLUMNS), flush=True)
    results: list[Result] = []
    streams: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []

    def emit(r: Result) -> None:
        print(plain_row(row_cells(r)), flush=True)

    failed = False
    try:
        bench = Bench(server, workdir)
        if args.fixed_cost and not args.no_postgres:  # the PostgreSQL path's fixed cost
            results += run_fixed_cost(bench, args.fixed_cost, emit)
        for shape in shapes:
            for size in (wide_sizes if shape == "wide" else sizes):
                try:
                    results += run_scenario(bench, shape, size, modes, churns, args.history, emit, args.as_of)
                except CheckFailed as exc:
                    print(f"CORRECTNESS CHECK FAILED: {exc}", file=sys.stderr)
                    failed = True
        if mysql_sizes:
            failed |= run_mysql(server, workdir, mysql_sizes, modes, churns, emit, results)
        if args.streams:
            try:
                streams = run_streams(bench, args.streams, parse_size(args.stream_rows),
                                      [int(k) for k in args.jobs.split(",") if k], modes, args.stream_rounds)
            except CheckFailed as exc:
                print(f"CORRECTNESS CHECK FAILED: {exc}", file=sys.stderr)
                failed = True
        if args.groups:
            from bench_groups import run_groups

            try:
                groups = run_groups(bench, args.groups, args.group_rows,
                                    [int(k) for k in args.group_parallel.split(",") if k],
                                    min(args.group_sample, args.groups), NARROW)
            except RuntimeError as exc:
                print(f"CORRECTNESS CHECK FAILED: {exc}", file=sys.stderr)
                failed = True
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.history:
        for shape in shapes:
            for size in (wide_sizes if shape == "wide" else sizes):
                fr = [r for r in results if r.shape == shape and r.mode == "forensic" and r.churn == "1%"
                      and r.nominal == size]
                if len(fr) >= 2:
                    first, last = fr[0], fr[-1]
                    print(f"# forensic {shape} {human(size)}: batch {last.batch} {last.job_s:.2f}s vs batch "
                          f"{first.batch} {first.job_s:.2f}s = {last.job_s / first.job_s:.2f}x")
                if len(fr) >= 10:  # one batch is noisy on a shared machine: medians of five as well
                    early = statistics.median(r.job_s for r in fr[:5])
                    late = statistics.median(r.job_s for r in fr[-5:])
                    print(f"# forensic {shape} {human(size)}: median of batches {fr[-5].batch}-{fr[-1].batch} "
                          f"{late:.2f}s vs batches {fr[0].batch}-{fr[4].batch} {early:.2f}s = {late / early:.2f}x")
                for r in results:
                    if r.table and r.shape == shape and r.nominal == size:
                        t = r.table
                        print(f"# forensic {shape} {human(size)} after batch {t['batch']:.0f}: "
                              f"table {t['table_mb']:.1f} MB, "
                              f"indexes {t['index_mb']:.1f} MB, {t['live']:,.0f} live / {t['dead']:,.0f} dead tuples "
                              f"({t['autovacuums']:.0f} autovacuums, {t['autoanalyzes']:.0f} autoanalyzes); as of "
                              f"batch {t['batch'] // 2:.0f}: one key {t['asof_key_ms']:.1f} ms, all rows "
                              f"{t['asof_all_ms']:.0f} ms")
    if args.repeat > 1:
        print_medians(results)
    if args.markdown:
        args.markdown.write_text(markdown_table([r for r in results if r.shown]) + "\n")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ | {"ratio": r.ratio, "ratio_w": r.ratio_w,
                                                       "rows_per_s": r.rows_per_s} for r in results]
                                        + [{"streams": r} for r in streams] + [{"groups": r} for r in groups],
                                        indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
