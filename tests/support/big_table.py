"""A big table for faults inside long statements: a store of one table whose every row changes between
batches, the merged result checked against the source by checksum, and a wait until the job's session is
inside a given statement."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.databases import make_databases
from tests.support.engine import one_dataset_model, run_job, write_model

COLUMNS = [("id", "integer"), ("grp", "integer"), ("note", "text"), ("amount", "numeric(12,2)")]
PLATFORMS = {"live": "BigLive", "forensic": "BigForensic"}


class BigWorld:
    """A store of one big table (`rows` rows) with one committed batch on a live and a forensic platform."""

    rows = 500_000

    def __init__(self, server: Any, tmp: Path):
        self.server = server
        self.dbs = make_databases(server)
        self.prepare_source()
        self.src = self.dbs.connect(self.dbs.source)
        self.flips = 0
        with self.src.cursor() as cur:
            cur.execute("CREATE TABLE big (id integer PRIMARY KEY, grp integer, note text, amount numeric(12,2))")
            cur.execute("""INSERT INTO big SELECT g, g %% 97, md5(g::text) || repeat('x', 160), g / 100.0
                             FROM generate_series(1, %s) g""", (self.rows,))
        self.src.commit()
        self.model = write_model(tmp / "model", self.model_doc(one_dataset_model(self.dbs, "Store1", "big", COLUMNS)))
        for mode in PLATFORMS:
            proc = run_job(self.args(mode), self.dbs.env, timeout=300)
            assert proc.returncode == 0, proc.stderr

    def prepare_source(self) -> None:
        """What the source needs before the table is made (nothing here)."""

    def model_doc(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The model the store runs under (the one-dataset model as it is here)."""
        return doc

    def args(self, mode: str) -> list[str]:
        return ["merge", "--model", str(self.model), "--platform", PLATFORMS[mode], "--mode", mode,
                "--store", "Store1", *self.dbs.merge_args()]

    def flip(self) -> None:
        """Change every row, so that the diff and the apply of the next batch are long."""
        self.flips += 1
        with self.src.cursor() as cur:
            cur.execute("UPDATE big SET note = md5(note || %s), amount = amount + 1", (str(self.flips),))
        self.src.commit()

    def checksum(self, conn: Any, relation: str) -> str:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) || ':' || md5(string_agg(t::text, '|' ORDER BY id)) FROM {relation} t")
            value = cur.fetchone()[0]
        conn.rollback()
        return str(value)

    def assert_merged_equals_source(self, mode: str) -> None:
        merge = self.dbs.connect(self.dbs.merge)
        try:
            current = self.checksum(merge, f"{PLATFORMS[mode].lower()}.store1_big_current")
        finally:
            merge.close()
        assert current == self.checksum(self.src, "big")

    def ledger(self, mode: str) -> list[tuple[Any, ...]]:
        merge = self.dbs.connect(self.dbs.merge)
        try:
            with merge.cursor() as cur:
                cur.execute(f"SELECT batch_id, status, rows_total, rows_updated FROM {PLATFORMS[mode].lower()}"
                            ".ds_batches ORDER BY batch_id")
                return list(cur.fetchall())
        finally:
            merge.close()

    def wait_inside(self, proc: subprocess.Popen[str], pattern: str, timeout: float = 120) -> float:
        """Wait until the job's merge session has been executing a statement matching `pattern` for a
        moment (0.15 s, so the fault lands inside it); returns how long that statement had been running."""
        admin = self.server.admin_connect(self.dbs.merge)
        admin.autocommit = True
        deadline = time.monotonic() + timeout
        try:
            with admin.cursor() as cur:
                while time.monotonic() < deadline:
                    assert proc.poll() is None, "the job ended before reaching the statement"
                    cur.execute("""SELECT extract(epoch FROM clock_timestamp() - query_start) FROM pg_stat_activity
                                    WHERE datname = %s AND application_name LIKE 'datasurface-job merge %%'
                                      AND state = 'active' AND query LIKE %s""", (self.dbs.merge, pattern))
                    row = cur.fetchone()
                    if row is not None and row[0] >= 0.15:
                        return float(row[0])
                    time.sleep(0.05)
        finally:
            admin.close()
        raise AssertionError(f"the job never ran {pattern!r}")
