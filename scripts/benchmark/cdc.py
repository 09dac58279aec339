"""Change data capture (`ingestion: cdc`): the merge benchmark's `--cdc` scenarios, against their floors.

A store with `ingestion: cdc` reads its changes from its replication slot; its batch is measured against a
floor of the same changes, in the same run:

- `floor s`: decoding the changes server-side (`count(*)` of `pg_logical_slot_peek_binary_changes` of a
  second slot, a copy of the job's slot made after the churn: it starts at the same point), plus the binary
  COPY of the net changed rows (prepared on the source before the clock starts) into an UNLOGGED table in
  the merge database, plus one join of them with the current rows of their keys, counting the changes;
- `floor+w s`: the same decode and COPY, that diff materialised and the minimal writes, exactly as the
  snapshot scenarios' `floor+w` (`Bench.floor_writes`).

A batch with changes has two ratios against `floor+w`: the whole job's (`ratio w`, process start included),
and the batch's (`batch ratio w`): the job less the job's fixed cost, which is a whole no-change batch of a
1k-row snapshot table beside it (store `Tiny`; the median of three runs right before the cdc batch). The
fixed cost is budgeted on its own (the no-change batch against it, below), so the 1% target (<= 1.5) is
judged on the batch ratio; both are printed, with the fixed cost subtracted.

Per size (`--cdc-sizes`): the narrow table, loaded by the cdc job (its first batch is a full snapshot) and
by a snapshot job of the same table on another platform; then per churn level (`--cdc-churn`, percent)
`--cdc-repeat` batches, each of its own churn, both floors and the cdc batch, then the snapshot batch of the
same table (the cdc speed-up over it, and changes per second). A level's targets are judged on the medians
of its batches (`# cdc … N batch(es):` lines): a batch of a second or less moves by tens of percent on a
shared machine. A 0% level is the batch with no changes, run `--cdc-idle` times, against the job's
fixed cost: the whole no-change batch of a 1k-row snapshot table beside it (its median of as many runs,
each right before one of the cdc runs), plus one round trip to the source. `--cdc-big` sizes: one source
transaction that UPDATEs every row of a table of that size, merged by the cdc job: its time and the job's
peak RSS (the kernel's, of that process). Every batch is checked like the snapshot scenarios' (the current
view equals the source, the ledger's counts equal the churn, the floor found as many changes).

The source database is on a PostgreSQL of its own (started beside the benchmark's, same binaries, same
cores): a slot's decoding reads every WAL record of its server, and the merge database's writes (loads,
staging, the floors' table copies) on the same server would be decoded, and skipped, by every batch.

    scripts/benchmark.sh --cdc --shapes '' --fixed-cost 0                 # only cdc: 1M rows, 1%, 0.1%, 0%
    scripts/benchmark.sh --cdc --shapes '' --cdc-sizes 10m --cdc-big 10m  # 10M rows; 10M-row transaction
"""

# ruff: noqa: S608 - every SQL string here is built from this script's own constants, never from input
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg2
import yaml
from psycopg2 import sql

from datasurface.localpg import LocalPostgres, find_bin_dir
from datasurface.merge.diff import compared

from .bench import Bench, CheckFailed, pipe_copy
from .churn import check_row
from .report import Result, emit, human, parse_size
from .serverlog import ServerLog, configure_server_log
from .shapes import NARROW, OPEN_END, SHAPES, STORE, UPDATE_SET

SHAPE = "narrow"
FIXED_RUNS = 3  # runs of the fixed-cost batch before a batch with changes (median)
FLOOR_SLOT = "bench_cdc_floor"
CDC_KEYS = "cdc_floor_keys"  # the keys the churn touches: unlogged, so the slot never sees them
CDC_NET = "cdc_floor_net"  # their rows after the churn: what the floor copies


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "change data capture (scripts/benchmark/cdc.py)",
        "a store with `ingestion: cdc` against its floor (server-side decode of a copy of its slot + COPY of the "
        "net changed rows + the minimal writes) and against a snapshot batch of the same table; e.g. "
        "`--cdc --shapes '' --cdc-sizes 10m --cdc-big 10m`")
    g.add_argument("--cdc", action="store_true",
                   help="also run the change-data-capture scenarios (with --shapes '' only them)")
    g.add_argument("--cdc-sizes", default="1m", help="--cdc: table sizes, comma-separated (e.g. 1m,10m)")
    g.add_argument("--cdc-churn", default="1,0.1,0",
                   help="--cdc: churn levels per batch in percent, in order; 0: the batch with no changes")
    g.add_argument("--cdc-repeat", type=int, default=3, metavar="N",
                   help="--cdc: batches per churn level with changes, each of its own churn, floors and fixed cost; "
                        "the targets are judged on their medians (one batch of a second or less moves by tens of "
                        "percent on a shared machine)")
    g.add_argument("--cdc-idle", type=int, default=5, metavar="N",
                   help="--cdc: runs of the no-change batch and of the fixed-cost batch it is held against "
                        "(medians)")
    g.add_argument("--cdc-big", default="",
                   help="--cdc: sizes of the one-transaction scenario: a single UPDATE of every row of a table "
                        "this big, merged by the cdc job (time, peak RSS); e.g. 10m")
    g.add_argument("--cdc-modes", default="live", help="--cdc: live and/or forensic")
    g.add_argument("--cdc-profile", action="store_true",
                   help="--cdc: where each cdc batch's time goes: the servers' durations of the job's statements "
                        "(both servers log them during the batch), grouped, beside the job's own CPU")


class CdcBench(Bench):
    """The benchmark's databases with a cdc store (platform `bench_<mode>`, so `Bench.check` and
    `Bench.floor_writes` apply unchanged) and a snapshot store of the same table (platform `snap_<mode>`).

    The source database lives on its own server (`source_server`) where one is given: decoding reads every
    WAL record of the source server, so a merge database on the same server would put its own writes
    (loads, staging, the floors' copies) into every decode, which no real source carries."""

    profile = False  # --cdc-profile
    decode_s: float = 0.0  # the last floor's server-side decode alone
    messages: int = 0  # the pgoutput messages it decoded

    def __init__(self, server: LocalPostgres, workdir: Path, source_server: LocalPostgres | None = None):
        super().__init__(server, workdir)
        self.source_server = source_server or server

    def create_databases(self, tag: str) -> None:
        super().create_databases(tag)  # with a source server of its own, the merge server's source db stays empty
        user = self.env["SOURCE_USER"]
        if self.source_server is not self.server:
            self.source_server.create_role(user, self.env["SOURCE_PASSWORD"])
            self.source_server.create_database(self.source_db, owner=user)
        conn = self.source_server.admin_connect()
        with conn.cursor() as cur:
            cur.execute(sql.SQL("ALTER ROLE {} REPLICATION").format(sql.Identifier(user)))
        conn.close()

    def drop_databases(self) -> None:
        conn = self.source_server.admin_connect()  # slots belong to the server and keep their database in use
        with conn.cursor() as cur:
            cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s",
                        (self.source_db,))
            if self.source_server is not self.server:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.source_db)))
                cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(self.env["SOURCE_USER"])))
        conn.close()
        super().drop_databases()

    def connect(self, which: str) -> Any:
        if which != "source":  # the floors' joins of a few keys probe the key index, as the job's do
            conn = super().connect(which)
            with conn.cursor() as cur:
                cur.execute("SET random_page_cost = 1.1")
            conn.commit()
            return conn
        return psycopg2.connect(host=self.source_server.socket_dir, port=self.source_server.port,
                                dbname=self.source_db, user=self.env["SOURCE_USER"],
                                password=self.env["SOURCE_PASSWORD"])

    def settle(self) -> None:
        super().settle()
        if self.source_server is not self.server:
            conn = self.source_server.admin_connect()
            with conn.cursor() as cur:
                cur.execute("CHECKPOINT")
            conn.close()

    def write_model(self, shape: str) -> Path:
        folder = super().write_model(shape)
        doc = yaml.safe_load((folder / "datasurface.yaml").read_text())
        doc["stores"][0]["source"].update({"host": self.source_server.socket_dir, "port": self.source_server.port})
        snap = self.workdir / f"model-snap-{shape}"
        snap.mkdir(exist_ok=True)
        (snap / "datasurface.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        doc["stores"][0]["source"]["ingestion"] = "cdc"
        (folder / "datasurface.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        return folder

    # ---- the churn, and what the floor copies ---------------------------------------------

    def churn_keys(self, fraction: float | None, seed: int) -> dict[str, int]:
        """`Bench.churn` (or, with `fraction` None, one UPDATE of every row in one transaction), remembering
        the keys it touches in an unlogged table, then the net changed rows in another: prepared work, before
        any clock starts."""
        h = "(abs(hashint8extended(id, %s)) %% 1000000)"
        threshold = int((fraction or 0) / 3 * 1_000_000)
        with self.conn("source") as c, c.cursor() as cur:
            cur.execute(f'DROP TABLE IF EXISTS "{CDC_KEYS}", "{CDC_NET}"')
            cur.execute(f'CREATE UNLOGGED TABLE "{CDC_KEYS}" (id bigint)')
            cur.execute('SELECT coalesce(max(id), 0) FROM "narrow"')
            max_id = cur.fetchone()[0]
            keys = f'INSERT INTO "{CDC_KEYS}" SELECT id FROM "narrow"'
            cur.execute(keys if fraction is None else f"{keys} WHERE {h} < %s", (seed, 2 * threshold))
            c.commit()
        if fraction is None:
            with self.conn("source") as c, c.cursor() as cur:
                cur.execute(f'UPDATE "narrow" SET {UPDATE_SET[SHAPE]}')
                updated = cur.rowcount
                c.commit()
                cur.execute('SELECT count(*) FROM "narrow"')
                expected = {"total": cur.fetchone()[0], "inserted": 0, "updated": updated, "deleted": 0}
        else:
            expected = self.churn(SHAPE, fraction, seed)
        names = ", ".join(f't."{n}"' for n, _, _ in NARROW[1:])
        with self.conn("source") as c, c.cursor() as cur:
            cur.execute(f'INSERT INTO "{CDC_KEYS}" SELECT id FROM "narrow" WHERE id > %s', (max_id,))
            cur.execute(f'CREATE UNLOGGED TABLE "{CDC_NET}" AS SELECT k.id, t.id IS NULL AS _gone, {names} '
                        f'FROM "{CDC_KEYS}" k LEFT JOIN "narrow" t ON t.id = k.id')
            c.commit()
        return expected

    # ---- the floor -------------------------------------------------------------------------

    def floor(self, shape: str, mode: str) -> tuple[float, int]:
        """Decode (server-side, a copy of the job's slot) + COPY of the net changed rows + a count of the
        changes among them; seconds, changes. `floor_stage` stays for `floor_writes`."""
        cols = SHAPES[shape]
        names = ", ".join(f'"{n}"' for n, _, _ in cols)
        defs = ", ".join(f'"{n}" {t}' for n, t, _ in cols)
        slot = f"ds_bench_{mode}_{STORE.lower()}"
        with self.conn("source") as src, self.conn("merge") as mrg:
            diff = self.floor_diff(mrg, shape, mode, "SELECT count(*)")
            with mrg.cursor() as cur:
                cur.execute("DROP TABLE IF EXISTS floor_stage")
                mrg.commit()
            with src.cursor() as cur:
                cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                            "WHERE slot_name = %s", (FLOOR_SLOT,))
                cur.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", (slot, FLOOR_SLOT))
                cur.execute("SELECT pubname FROM pg_publication")
                publication = sql.Identifier(cur.fetchone()[0]).as_string(src)
                src.commit()
            self.settle()
            started = time.monotonic()
            with src.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
                            "'proto_version', '1', 'publication_names', %s, 'messages', 'true')",
                            (FLOOR_SLOT, publication))
                self.messages = int(cur.fetchone()[0])
            src.commit()
            self.decode_s = time.monotonic() - started
            with mrg.cursor() as cur:
                cur.execute(f"CREATE UNLOGGED TABLE floor_stage (_gone boolean, {defs})")
            pipe_copy(src, mrg, f'COPY "{CDC_NET}" (_gone, {names}) TO STDOUT (FORMAT binary)',
                      f"COPY floor_stage (_gone, {names}) FROM STDIN (FORMAT binary)")
            src.commit()
            with mrg.cursor() as cur:
                cur.execute("ANALYZE floor_stage")
            mrg.commit()
            self.copy_s = time.monotonic() - started
            with mrg.cursor() as cur:
                cur.execute(diff)
                changes = int(cur.fetchone()[0])
            mrg.commit()
            elapsed = time.monotonic() - started
            with src.cursor() as cur:
                cur.execute("SELECT pg_drop_replication_slot(%s)", (FLOOR_SLOT,))
            src.commit()
        return elapsed, changes

    def floor_diff(self, conn: Any, shape: str, mode: str, select: str) -> str:
        """The snapshot floor's FULL JOIN, restricted to the changed keys: their rows after the churn against
        their current rows (a deleted key has no row after it), compared as the job compares."""
        layout = self.layout(shape, mode)
        target = f'"bench_{mode}"."{STORE.lower()}_{shape}"'
        still_open = "" if mode == "live" else f" WHERE c.ds_batch_out = {OPEN_END}"
        return (f"{select} FROM (SELECT * FROM floor_stage WHERE NOT _gone) s FULL JOIN "
                f"(SELECT c.* FROM {target} c JOIN floor_stage k ON k.id = c.id{still_open}) c ON s.id = c.id "
                f"WHERE s.id IS NULL OR c.id IS NULL OR ROW({compared(layout, 's').as_string(conn)}) "
                f"IS DISTINCT FROM ROW({compared(layout, 'c').as_string(conn)})")

    # ---- the snapshot job of the same table ----------------------------------------------------

    def run_snapshot(self, mode: str) -> tuple[float, float]:
        return self.run_job(self.workdir / f"model-snap-{SHAPE}", mode, platform=f"snap_{mode}")

    def check_snapshot(self, mode: str) -> None:
        names = ", ".join(f'"{n}"' for n, _, _ in NARROW)
        view = f'"snap_{mode}"."{STORE.lower()}_{SHAPE}_current"'
        if self.fingerprint("source", f'"{SHAPE}"', names) != self.fingerprint("merge", view, names):
            raise CheckFailed(f"snapshot {mode}: {view} != source")

    def fixed_batch(self) -> float:
        """Wall seconds of a whole batch with nothing to do of a 1k-row snapshot table beside the cdc one
        (store `Tiny`, platform `tiny_live`; loaded by the first call): the job's fixed cost per batch."""
        folder = self.workdir / "model-tiny"
        if not folder.exists():
            self.generate(SHAPE, 1000, table="tiny")
            doc = yaml.safe_load((self.workdir / f"model-snap-{SHAPE}" / "datasurface.yaml").read_text())
            doc["stores"][0].update(name="Tiny")
            doc["stores"][0]["datasets"][0]["table"] = "tiny"
            folder.mkdir()
            (folder / "datasurface.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
            self.run_job(folder, "live", store="Tiny", platform="tiny_live")
        return self.run_job(folder, "live", store="Tiny", platform="tiny_live")[0]

    def round_trip(self, n: int = 50) -> float:
        """Seconds of one round trip to the source on an open session (`SELECT 1`; median of `n`)."""
        times = []
        with self.conn("source") as c, c.cursor() as cur:
            for _ in range(n):
                t0 = time.monotonic()
                cur.execute("SELECT 1")
                cur.fetchone()
                times.append(time.monotonic() - t0)
        return statistics.median(times)


PHASES = ("read: peek + decode + send (source COPY TO)", "stage: COPY into the change table (merge)",
          "net per key (scan of the change table; ds_net when it is made)", "diff (with the net per key)", "apply",
          "source: other", "merge: other")


def phase(side: str, statement: str) -> str:
    """Which part of the batch one of the job's statements is. The usual batch's diff reads the last change
    per key straight from the change table (merge/changes.py): its net is part of the diff statement."""
    if side == "source":
        return PHASES[0] if "pg_logical_slot_peek_binary_changes" in statement else PHASES[5]
    if "FROM STDIN" in statement:
        return PHASES[1]
    if "ds_diff" in statement:  # the diff reads ds_net too
        return PHASES[4] if statement.startswith(("DELETE", "UPDATE", "INSERT")) else PHASES[3]
    if "ds_net" in statement or "FILTER (WHERE op = 'T')" in statement:
        return PHASES[2]
    return PHASES[6]


class Profile:
    """Both servers log the duration of every statement of the job's roles while it is on."""

    def __init__(self, bench: CdcBench):
        self.bench = bench
        self.logs = {"source": ServerLog(bench.source_server), "merge": ServerLog(bench.server)}

    def switch(self, on: bool) -> None:
        for server, role in ((self.bench.source_server, self.bench.env["SOURCE_USER"]),
                             (self.bench.server, self.bench.env["MERGE_USER"])):
            conn = server.admin_connect()
            with conn.cursor() as cur:
                name = sql.Identifier(role)
                cur.execute(sql.SQL("ALTER ROLE {} SET log_min_duration_statement = 0").format(name) if on
                            else sql.SQL("ALTER ROLE {} RESET log_min_duration_statement").format(name))
            conn.close()
        for log in self.logs.values():
            log.new_lines()

    def phases(self) -> dict[str, list[float]]:
        """Seconds and statements per phase since `switch(True)`; `slowest`: the three longest statements."""
        out: dict[str, list[float]] = {label: [0.0, 0] for label in PHASES}
        self.slowest: list[tuple[float, str]] = []
        for side, log in self.logs.items():
            for _, _, _, msg in log.new_lines():
                if not msg.startswith("duration: "):
                    continue
                ms, _, statement = msg[len("duration: "):].partition(" ms  statement: ")
                label = phase(side, statement)
                self.slowest = sorted([*self.slowest, (float(ms) / 1000, f"{side}: {statement[:90]}")])[-3:]
                out[label][0] += float(ms) / 1000
                out[label][1] += 1
        return out


def percent(fraction: float | None) -> str:
    return "all, 1 tx" if fraction is None else f"{fraction * 100:g}%"


def run_size(bench: CdcBench, size: int, modes: list[str], churns: list[float | None], idle: int,
             budget: dict[str, float], repeat: int = 1) -> list[Result]:
    """Load, then each churn level (None: one transaction updating every row): floors, the cdc batch, the
    snapshot batch (after the last of `repeat` batches of a level with changes)."""
    bench.create_databases(f"cdc_{size}_{os.getpid()}")
    results: list[Result] = []
    try:
        model = bench.prepare(SHAPE, size, "cdc")
        versions = {m: size for m in modes}
        for mode in modes:
            bench.settle()
            job_s, rss = bench.run_job(model, mode)
            load = Result("cdc", size, size, "load", mode, 1, float("nan"), job_s, rss, size)
            bench.check(SHAPE, mode, {"total": size, "inserted": size, "updated": 0, "deleted": 0}, size,
                        versions[mode] if mode == "forensic" else None)
            emit(load)
            results.append(load)
            if any(f is not None for f in churns):
                bench.run_snapshot(mode)
        batch = 1
        for i, fraction in enumerate(churns, start=1):
            runs = repeat if fraction else 1
            measured: dict[str, list[Result]] = {mode: [] for mode in modes}
            for run in range(runs):
                expected = bench.churn_keys(fraction, seed=i + 1000 * run)
                batch += 1
                for mode in modes:
                    rows = one_batch(bench, size, mode, fraction, batch, expected, versions, idle, budget,
                                     snapshot=run == runs - 1)
                    measured[mode].append(rows[0])
                    results += rows
                if fraction == 0:
                    batch += idle - 1
            if fraction != 0:
                for mode in modes:
                    verdict(measured[mode])
    finally:
        bench.drop_databases()
    return results


def one_batch(bench: CdcBench, size: int, mode: str, fraction: float | None, batch: int,
              expected: dict[str, int], versions: dict[str, int], idle: int,
              budget: dict[str, float], snapshot: bool = True) -> list[Result]:
    """One churn level's floors, cdc batch (`idle` runs of a batch with no changes) and, with `snapshot`, the
    snapshot batch of the same table. The one-transaction scenario (`fraction` None) has neither the snapshot
    batch nor the writes floor: its figures are the time and the memory of the cdc batch."""
    model = bench.workdir / f"model-{SHAPE}"
    changes = expected["inserted"] + expected["updated"] + expected["deleted"]
    floor_s, floor_changes = bench.floor(SHAPE, mode)
    decode_s, copy_s, messages = bench.decode_s, bench.copy_s, bench.messages
    floor_w = floor_s if not changes else float("nan") if fraction is None else \
        bench.copy_s + bench.floor_writes(SHAPE, mode)
    if fraction is None:
        with bench.conn("merge") as c, c.cursor() as cur:  # floor_writes would have dropped it
            cur.execute("DROP TABLE floor_stage")
            c.commit()
    runs = idle if fraction == 0 else 1
    times, rss, cpu = [], 0.0, []
    profile = Profile(bench) if bench.profile else None
    fixed: list[float] = []
    fixed_cpu: list[float] = []
    if fraction:  # the job's fixed cost, subtracted for the batch ratio: measured here, right before the batch
        for _ in range(FIXED_RUNS):
            bench.settle()
            fixed.append(bench.fixed_batch())
            fixed_cpu.append(bench.cpu_s)
    for _ in range(runs):
        if fraction == 0:  # the fixed cost it is held against, right before each run: the same machine
            bench.settle()
            fixed.append(bench.fixed_batch())
            fixed_cpu.append(bench.cpu_s)
        bench.settle()
        if profile:
            profile.switch(True)
        job_s, peak = bench.run_job(model, mode)
        if profile:
            phases = profile.phases()
            profile.switch(False)
        times.append(job_s)
        cpu.append(bench.cpu_s)
        rss = max(rss, peak)
    versions[mode] += expected["inserted"] + expected["updated"]
    res = Result("cdc", size, expected["total"], percent(fraction), mode, batch + runs - 1, floor_s,
                 statistics.median(times), rss, changes, floor_w_s=floor_w)
    check_row(bench, res, SHAPE, expected, floor_changes, versions[mode])
    if profile:
        res.table = {f"profile: {label}": value for label, value in phases.items()}
        print(f"# cdc profile {human(size)} {percent(fraction)} {mode} (the last run): wall {times[-1]:.2f}s, "
              f"the job's CPU {cpu[-1]:.2f}s (start, decoder, driver); the servers' statements: "
              + ", ".join(f"{label} {secs:.3f}s ({int(n)})" for label, (secs, n) in phases.items())
              + "; the longest: " + "; ".join(f"{secs:.3f}s {text}" for secs, text in profile.slowest[::-1]),
              flush=True)
    res.table = {**res.table, "decode_s": decode_s, "copy_s": copy_s - decode_s, "messages": messages,
                 "changes_per_s": changes / res.job_s, "job_cpu_s": statistics.median(cpu),
                 "job_min_s": min(times), "job_max_s": max(times), "runs": runs}
    if fixed:
        res.table.update(fixed_s=statistics.median(fixed), fixed_cpu_s=statistics.median(fixed_cpu),
                         round_trip_s=bench.round_trip())
        if changes and res.floor_w_s == res.floor_w_s:  # the batch alone: the job less its fixed cost
            res.table.update(batch_s=res.job_s - res.table["fixed_s"],
                             batch_ratio_w=(res.job_s - res.table["fixed_s"]) / res.floor_w_s)
    emit(res)
    out = [res]
    if fraction is not None and snapshot:
        bench.settle()
        snap_s, snap_rss = bench.run_snapshot(mode)
        bench.check_snapshot(mode)
        res.table.update({"snapshot_s": snap_s, "speed_up": snap_s / res.job_s})
        out.append(Result("snap", size, expected["total"], res.churn, mode, batch, float("nan"), snap_s,
                          snap_rss, changes))
        emit(out[-1])
    summary(res, budget)
    return out


def summary(res: Result, budget: dict[str, float]) -> None:
    t = res.table
    head = f"# cdc {human(res.nominal)} {res.churn} {res.mode}:"
    if res.changes == 0:
        fixed, rtt = t["fixed_s"], t["round_trip_s"]
        t["budget_s"] = fixed + rtt
        t["budget_ratio"] = res.job_s / t["budget_s"]
        first = f"{budget['first_query_s'] * 1000:.0f} ms" if budget.get("first_query_s") else "not measured"
        print(f"{head} no-change batch {res.job_s * 1000:.0f} ms (median of {t['runs']} "
              f"runs, {t['job_min_s'] * 1000:.0f}-{t['job_max_s'] * 1000:.0f}; CPU {t['job_cpu_s'] * 1000:.0f} ms) "
              f"against the job's fixed cost {fixed * 1000:.0f} ms (a whole no-change batch of a 1k-row snapshot "
              f"table, median of as many runs, each right before one of them; process start to first query: "
              f"{first}) + one source round trip {rtt * 1000:.2f} ms = "
              f"{t['budget_s'] * 1000:.0f} ms: {t['budget_ratio']:.2f}x (target <= 1); the same in CPU (what a "
              f"shared machine distorts least): {t['job_cpu_s'] * 1000:.0f} against {t['fixed_cpu_s'] * 1000:.0f} ms, "
              f"{t['job_cpu_s'] / t['fixed_cpu_s']:.2f}x; snapshot batch {t['snapshot_s']:.2f}s", flush=True)
        return
    line = (f"{head} cdc batch {res.job_s:.2f}s (CPU {t['job_cpu_s']:.2f}s), {res.changes:,} changes = "
            f"{t['changes_per_s']:,.0f} changes/s, peak RSS {res.rss_mb:.0f} MB; floor {res.floor_s:.2f}s: server "
            f"decode {t['decode_s']:.2f}s of {t['messages']:,} messages, COPY {t['copy_s']:.2f}s")
    if res.floor_w_s == res.floor_w_s:
        line += (f"; floor+w {res.floor_w_s:.2f}s (diff + writes {res.floor_w_s - t['decode_s'] - t['copy_s']:.2f}s): "
                 f"ratio w {res.ratio_w:.2f}, ratio {res.ratio:.2f} (the whole job)")
    if "batch_ratio_w" in t:
        line += (f"; batch ratio w {t['batch_ratio_w']:.2f} = (job {res.job_s:.2f}s - the job's fixed cost "
                 f"{t['fixed_s']:.2f}s [a whole no-change batch of a 1k-row snapshot store, median of {FIXED_RUNS} "
                 f"right before it]) / floor+w {res.floor_w_s:.2f}s")
    if "speed_up" in t:
        line += f"; snapshot batch {t['snapshot_s']:.2f}s: cdc {t['speed_up']:.1f}x faster"
    print(line, flush=True)


def verdict(runs: list[Result]) -> None:
    """A churn level's targets, judged on the medians of its batches (each of its own churn and floors): the
    batch ratio at 1%, the speed-up over the snapshot batch (measured after the last) at 0.1%, the peak RSS
    of the one-transaction scenario."""
    last = runs[-1]
    head = f"# cdc {human(last.nominal)} {last.churn} {last.mode}, {len(runs)} batch(es):"

    def spread(values: list[float], digits: int = 2) -> str:
        if len(values) == 1:
            return f"{values[0]:.{digits}f}"
        return f"median {statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"

    ratios = [r.table["batch_ratio_w"] for r in runs if "batch_ratio_w" in r.table]
    job = statistics.median(r.job_s for r in runs)
    line = f"{head} cdc batch {spread([r.job_s for r in runs])}s"
    if ratios:
        line += (f"; batch ratio w {spread(ratios)}; whole-job ratio w {spread([r.ratio_w for r in runs])}")
    if "snapshot_s" in last.table:
        speed_up = last.table["snapshot_s"] / job
        line += f"; snapshot batch {last.table['snapshot_s']:.2f}s: cdc {speed_up:.1f}x faster"
    if last.churn == "1%" and ratios:
        median = statistics.median(ratios)
        line += f" (target batch ratio w <= 1.5: {'met' if median <= 1.5 else 'MISSED'})"
    elif last.churn == "0.1%" and last.nominal >= 10_000_000 and "snapshot_s" in last.table:
        line += f" (target >= 20x the snapshot: {'met' if speed_up >= 20 else 'MISSED'})"
    elif last.churn == "0.1%":
        line += " (the >= 20x target is for 10M rows)"
    elif last.churn.startswith("all"):
        rss = max(r.rss_mb for r in runs)
        line += (f"; ratio {spread([r.ratio for r in runs])}; peak RSS {rss:.0f} MB (target < 250 MB: "
                 f"{'met' if rss < 250 else 'MISSED'})")
    print(line, flush=True)


def run(server: LocalPostgres, workdir: Path, args: argparse.Namespace, results: list[Result]) -> bool:
    """The cdc scenarios, after the snapshot ones; True when a correctness check failed."""
    sizes = [parse_size(s) for s in args.cdc_sizes.split(",") if s]
    big = [parse_size(s) for s in args.cdc_big.split(",") if s]
    churns: list[float | None] = [float(c) / 100 for c in args.cdc_churn.split(",") if c]
    modes = [m for m in args.cdc_modes.split(",") if m]
    fixed = next((r for r in results if r.shape == "fixed"), None)
    budget = {"first_query_s": fixed.job_s if fixed else 0.0}
    source = LocalPostgres(find_bin_dir()).start()
    print(f"# cdc: source database on its own PostgreSQL {source.version} at {source.socket_dir}", file=sys.stderr)
    configure_server_log(source)
    bench = CdcBench(server, workdir, source)
    bench.profile = args.cdc_profile
    try:
        for size in sizes:
            results += run_size(bench, size, modes, churns, args.cdc_idle, budget, args.cdc_repeat)
        for size in big:
            results += run_size(bench, size, modes, [None], 1, budget)
    except CheckFailed as exc:
        print(f"CORRECTNESS CHECK FAILED: {exc}", file=sys.stderr)
        return True
    finally:
        source.stop()
    return False
