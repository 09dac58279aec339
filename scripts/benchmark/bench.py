"""`Bench`: one benchmark's databases on the throwaway PostgreSQL, its source data and model, the job run
as a subprocess, the floors it is measured against, and the correctness checks of every batch."""

# ruff: noqa: S608 - every SQL string here is built from the benchmark's own constants (shape and column
# names, quoted), never from input
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import yaml
from psycopg2 import sql

from datasurface.localpg import LocalPostgres
from datasurface.merge.diff import compared
from datasurface.merge.layout import dataset_layouts
from datasurface.model import parse_model

from .report import human
from .shapes import OPEN_END, SHAPES, STORE, UPDATE_SET, column_names, merge_table

PIPE_CHUNK = 1 << 16


class CheckFailed(Exception):
    pass


def pipe_copy(source: Any, merge: Any, copy_out: str, copy_in: str) -> None:
    """Binary COPY from the source session through an OS pipe into the merge session, as the job streams;
    the caller ends the source session's transaction."""
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            with source.cursor() as cur, os.fdopen(write_fd, "wb", buffering=PIPE_CHUNK) as writer:
                cur.copy_expert(copy_out, writer, size=PIPE_CHUNK)
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    with os.fdopen(read_fd, "rb", buffering=PIPE_CHUNK) as reader, merge.cursor() as cur:
        cur.copy_expert(copy_in, reader, size=PIPE_CHUNK)
    producer.join()
    if errors:
        raise errors[0]


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

    floor_on_load = False  # the load batch has no floor: nothing to diff against yet
    writes_floor = True  # floor_writes (the second floor) reuses this floor's staged snapshot

    def label(self, shape: str) -> str:
        return shape

    # ---- databases -------------------------------------------------------------------------

    def create_databases(self, tag: str) -> None:
        source_user, merge_user = f"bench_src_{tag}", f"bench_mrg_{tag}"
        source_password, merge_password = secrets.token_hex(12), secrets.token_hex(12)
        self.server.create_role(source_user, source_password)
        self.server.create_role(merge_user, merge_password)
        self.source_db, self.merge_db = f"bench_source_{tag}", f"bench_merge_{tag}"
        self.server.create_database(self.source_db, owner=source_user)
        self.server.create_database(self.merge_db, owner=merge_user)
        self.env = {"SOURCE_USER": source_user, "SOURCE_PASSWORD": source_password,
                    "MERGE_USER": merge_user, "MERGE_PASSWORD": merge_password}

    def drop_databases(self) -> None:
        conn = self.server.admin_connect()
        with conn.cursor() as cur:
            for database in (self.source_db, self.merge_db):
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            for role in (self.env["SOURCE_USER"], self.env["MERGE_USER"]):
                cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.close()

    def connect(self, which: str) -> Any:
        prefix, database = ("SOURCE", self.source_db) if which == "source" else ("MERGE", self.merge_db)
        return psycopg2.connect(host=self.server.socket_dir, port=self.server.port, dbname=database,
                                user=self.env[f"{prefix}_USER"], password=self.env[f"{prefix}_PASSWORD"])

    @contextmanager
    def conn(self, which: str) -> Iterator[Any]:
        connection = self.connect(which)
        try:
            yield connection
        finally:
            connection.close()

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
        columns = SHAPES[shape]
        definitions = ", ".join(f'"{n}" {t}' + (" PRIMARY KEY" if n == "id" else "") for n, t, _ in columns)
        expressions = ", ".join(e for _, _, e in columns)
        with self.conn("source") as connection, connection.cursor() as cur:
            cur.execute(f'CREATE TABLE "{table}" ({definitions})')
            cur.execute(f'INSERT INTO "{table}" SELECT {expressions} FROM generate_series(1, {int(size)}) g')
            connection.commit()
            connection.autocommit = True
            cur.execute(f'VACUUM ANALYZE "{table}"')

    def churn(self, shape: str, fraction: float, seed: int, table: str | None = None) -> dict[str, int]:
        """One third each of inserts, updates, deletes (of the current row count); exact counts."""
        table = table or shape
        expressions = ", ".join(e for _, _, e in SHAPES[shape])
        with self.conn("source") as connection, connection.cursor() as cur:
            cur.execute(f'SELECT count(*), coalesce(max(id), 0) FROM "{table}"')
            count, max_id = cur.fetchone()
            if fraction <= 0:
                return {"total": count, "inserted": 0, "updated": 0, "deleted": 0}
            third = fraction / 3
            threshold = int(third * 1_000_000)
            # disjoint pseudo-random sets per batch: hash of the key with the batch as seed
            key_hash = "(abs(hashint8extended(id, %s)) %% 1000000)"
            cur.execute(f'UPDATE "{table}" SET {UPDATE_SET[shape]} WHERE {key_hash} < %s', (seed, threshold))
            updated = cur.rowcount
            cur.execute(f'DELETE FROM "{table}" WHERE {key_hash} >= %s AND {key_hash} < %s',
                        (seed, threshold, seed, 2 * threshold))
            deleted = cur.rowcount
            insert_count = max(1, round(count * third))
            cur.execute(f'INSERT INTO "{table}" SELECT {expressions} '
                        f'FROM generate_series({int(max_id) + 1}, {int(max_id) + insert_count}) g')
            inserted = cur.rowcount
            connection.commit()
            return {"total": count + inserted - deleted, "inserted": inserted, "updated": updated,
                    "deleted": deleted}

    def prepare(self, shape: str, size: int, label: str) -> Path:
        """The source table generated (its time printed under `label`) and the model written; its folder."""
        started = time.monotonic()
        self.generate(shape, size)
        print(f"# {label} {human(size)}: source generated in {time.monotonic() - started:.1f}s", file=sys.stderr)
        return self.write_model(shape)

    # ---- model and job ---------------------------------------------------------------------

    def write_model(self, shape: str) -> Path:
        folder = self.workdir / f"model-{shape}"
        folder.mkdir(parents=True, exist_ok=True)
        model = {
            "apiVersion": "datasurface/v1", "kind": "Model",
            "stores": [{
                "name": STORE, "consistency": "multi_dataset",
                "source": self.source_block(),
                "datasets": [{
                    "name": shape, "primaryKey": ["id"],
                    "columns": [{"name": n, "type": t, **({"nullable": False} if n == "id" else {})}
                                for n, t, _ in SHAPES[shape]],
                }],
            }],
        }
        (folder / "datasurface.yaml").write_text(yaml.safe_dump(model, sort_keys=False))
        return folder

    def source_block(self) -> dict[str, Any]:
        """The model's `source` of the benchmark's stores (a subclass's source type and options go here)."""
        return {"host": self.server.socket_dir, "port": self.server.port, "database": self.source_db,
                "credential": "source"}

    def run_job(self, model: Path, mode: str, store: str = STORE, platform: str | None = None) -> tuple[float, float]:
        """Wall seconds and peak RSS (MB) of one `datasurface-job merge` process."""
        executable = Path(sys.executable).with_name("datasurface-job")
        command = ([str(executable)] if executable.exists()
                   else [sys.executable, "-c", "from datasurface.cli import _exit; _exit()"])
        command += ["merge", "--model", str(model), "--platform", platform or f"bench_{mode}", "--mode", mode,
                    "--store", store,
                    "--merge-host", self.server.socket_dir, "--merge-port", str(self.server.port),
                    "--merge-database", self.merge_db, "--merge-credential", "merge"]
        env = {**os.environ, **self.env}
        with tempfile.TemporaryFile() as out:
            started = time.monotonic()
            self.spawned_at = time.time()
            proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
            elapsed = time.monotonic() - started
            self.cpu_s = usage.ru_utime + usage.ru_stime
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                out.seek(0)
                raise CheckFailed(f"job exited {proc.returncode}: {out.read().decode(errors='replace')[-2000:]}")
        return elapsed, usage.ru_maxrss / 1024  # Linux: kilobytes

    # ---- the floors ------------------------------------------------------------------------

    def floor(self, shape: str, mode: str) -> tuple[float, int]:
        """COPY source -> pipe -> unlogged table in the merge db, plus one FULL JOIN diff; seconds, changes."""
        names = column_names(shape)
        definitions = ", ".join(f'"{n}" {t}' for n, t, _ in SHAPES[shape])
        with self.conn("source") as source, self.conn("merge") as merge:
            diff = self.floor_diff(merge, shape, mode, "SELECT count(*)")
            with merge.cursor() as cur:
                cur.execute("DROP TABLE IF EXISTS floor_stage")
                merge.commit()
            self.settle()
            started = time.monotonic()
            source.set_session(isolation_level="REPEATABLE READ", readonly=True)
            with merge.cursor() as cur:
                cur.execute(f"CREATE UNLOGGED TABLE floor_stage ({definitions})")
            pipe_copy(source, merge, f'COPY (SELECT {names} FROM "{shape}") TO STDOUT (FORMAT binary)',
                      f"COPY floor_stage ({names}) FROM STDIN (FORMAT binary, FREEZE)")
            source.rollback()
            self.copy_s = time.monotonic() - started
            with merge.cursor() as cur:
                cur.execute(diff)
                changes = int(cur.fetchone()[0])
            merge.commit()
            elapsed = time.monotonic() - started
        return elapsed, changes  # floor_stage stays for floor_writes

    def floor_diff(self, conn: Any, shape: str, mode: str, select: str) -> str:
        """The floor's one FULL JOIN of `floor_stage` against the current rows, comparing the values exactly
        as the job's diff does (merge/diff.py `compared`: numeric scale, floats and jsonb as text)."""
        merge_layout = self.layout(shape, mode)
        target = merge_table(mode, shape)
        current = target if mode == "live" else f"(SELECT * FROM {target} WHERE ds_batch_out = {OPEN_END})"
        return (f"{select} FROM floor_stage s FULL JOIN {current} c ON s.id = c.id "
                f"WHERE s.id IS NULL OR c.id IS NULL OR ROW({compared(merge_layout, 's').as_string(conn)}) "
                f"IS DISTINCT FROM ROW({compared(merge_layout, 'c').as_string(conn)})")

    def layout(self, shape: str, mode: str) -> Any:
        model = parse_model((self.workdir / f"model-{shape}" / "datasurface.yaml").read_text(), "bench")
        return dataset_layouts(f"bench_{mode}", model.stores[0], mode)[0]

    def floor_writes(self, shape: str, mode: str) -> float:
        """The second floor: the COPY (as measured by `floor`) + the diff materialised + the minimal writes
        (each kind of change in ONE statement, as many rows as the batch changes) on a copy of the merge
        table with the same indexes, made before the clock starts. Seconds of the diff and writes."""
        names = [n for n, _, _ in SHAPES[shape]]
        columns = ", ".join(f'"{n}"' for n in names)
        diff_columns = ", ".join(f'd."{n}"' for n in names)
        keyed = "FROM (SELECT * FROM floor_diff WHERE op IN ({})) d WHERE t.id = d.id"
        operation = "CASE WHEN c.id IS NULL THEN 'I' WHEN s.id IS NULL THEN 'D' ELSE 'U' END"

        def writes(cur: Any) -> None:
            cur.execute("CREATE TEMP TABLE floor_diff ON COMMIT DROP AS "
                        + self.floor_diff(cur.connection, shape, mode,
                                          f"SELECT {operation} AS op, coalesce(s.id, c.id) AS id, "
                                          + ", ".join(f's."{n}"' for n in names[1:])))
            if mode == "live":
                cur.execute("DELETE FROM floor_target t USING (SELECT * FROM floor_diff WHERE op = 'D') d "
                            "WHERE t.id = d.id")
                assignments = ", ".join(f'"{n}" = d."{n}"' for n in names[1:])
                cur.execute(f"UPDATE floor_target t SET {assignments}, ds_batch_id = 0 " + keyed.format("'U'"))
                cur.execute(f"INSERT INTO floor_target ({columns}, ds_batch_id) SELECT {diff_columns}, 0 "
                            "FROM floor_diff d WHERE op = 'I'")
            else:
                cur.execute(f"UPDATE floor_target t SET ds_batch_out = {OPEN_END - 1} " + keyed.format("'U', 'D'")
                            + f" AND t.ds_batch_out = {OPEN_END}")
                cur.execute(f"INSERT INTO floor_target ({columns}, ds_batch_in, ds_batch_out) "
                            f"SELECT {diff_columns}, -1, {OPEN_END} FROM floor_diff d WHERE op IN ('I', 'U')")

        return self.timed_writes(merge_table(mode, shape), writes, copy_rows=True)

    def timed_writes(self, target: str, writes: Callable[[Any], None], copy_rows: bool) -> float:
        """Seconds of `writes` (one transaction) on `floor_target`: a table LIKE the merge table `target`
        INCLUDING ALL (same indexes), with its rows when `copy_rows`, made before the clock starts. The
        floor's staged `floor_stage` and `floor_target` are dropped afterwards."""
        with self.conn("merge") as merge, merge.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS floor_target")
            cur.execute(f"CREATE TABLE floor_target (LIKE {target} INCLUDING ALL)")
            if copy_rows:
                cur.execute(f"INSERT INTO floor_target SELECT * FROM {target}")
                cur.execute("ANALYZE floor_target")
            merge.commit()
            self.settle()
            started = time.monotonic()
            writes(cur)
            merge.commit()
            elapsed = time.monotonic() - started
            cur.execute("DROP TABLE floor_target")
            cur.execute("DROP TABLE IF EXISTS floor_stage")
            merge.commit()
        return elapsed

    def load_writes(self, shape: str, mode: str) -> float | None:
        """The load batch's writes floor, measured after its job; None: this source has none."""
        return None

    # ---- correctness -----------------------------------------------------------------------

    def fingerprint(self, which: str, relation: str, names: str) -> tuple[int, int]:
        query = (f"SELECT count(*), coalesce(sum(hashtextextended(ROW({names})::text, 0)::numeric), 0) "
                 f"FROM {relation}")
        with self.conn(which) as connection, connection.cursor() as cur:
            cur.execute(query)
            count, row_hash = cur.fetchone()
        return int(count), int(row_hash)

    def check(self, shape: str, mode: str, expected: dict[str, int], floor_changes: int,
              versions: int | None) -> None:
        names = column_names(shape)
        source = self.fingerprint("source", f'"{shape}"', names)
        current_view = self.fingerprint("merge", f'"bench_{mode}"."{STORE.lower()}_{shape}_current"', names)
        if source != current_view:
            raise CheckFailed(f"{mode}: current view != source (count, hash): {current_view} vs {source}")
        self.check_ledger(shape, mode, expected, floor_changes, versions)

    def check_ledger(self, shape: str, mode: str, expected: dict[str, int], floor_changes: int,
                     versions: int | None) -> None:
        schema = f"bench_{mode}"
        with self.conn("merge") as connection, connection.cursor() as cur:
            cur.execute(f'SELECT batch_id, status, rows_total, rows_inserted, rows_updated, rows_deleted '
                        f'FROM "{schema}".ds_batches ORDER BY batch_id DESC LIMIT 1')
            _, status, total, inserted, updated, deleted = cur.fetchone()
            if versions is not None:
                cur.execute(f"SELECT count(*) FROM {merge_table(mode, shape)}")
                got_versions = int(cur.fetchone()[0])
                if got_versions != versions:
                    raise CheckFailed(f"{mode}: {got_versions} row versions, expected {versions}")
        got = {"total": total, "inserted": inserted, "updated": updated, "deleted": deleted}
        if status != "committed" or got != expected:
            raise CheckFailed(f"{mode}: ledger {status} {got}, churn applied {expected}")
        if floor_changes != inserted + updated + deleted:
            raise CheckFailed(f"{mode}: floor diff found {floor_changes} changes, "
                              f"ledger {inserted + updated + deleted}")
