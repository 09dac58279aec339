"""`--mysql-sizes`: the main scenario with the source table in a throwaway MariaDB (Debian's mariadb-server);
the merge side stays PostgreSQL."""

# ruff: noqa: S608 - the SQL here is built from the benchmark's own constants
from __future__ import annotations

import io
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from datasurface.localpg import LocalPostgres

from .bench import PIPE_CHUNK, Bench, CheckFailed
from .churn import run_churn_levels
from .report import Result
from .shapes import OPEN_END, SHAPES, STORE, column_names, merge_table

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
        self.mysql_database = ""
        self.mysql_user = ""

    def create_databases(self, tag: str) -> None:
        super().create_databases(tag)  # the merge database (its source database stays unused)
        self.mysql_database, self.mysql_user = f"bench_{tag}", f"bench_{tag}"
        password = secrets.token_hex(12)
        self.mysql.create_database(self.mysql_database, self.mysql_user, password)
        self.env.update({"SOURCE_USER": self.mysql_user, "SOURCE_PASSWORD": password})

    def drop_databases(self) -> None:
        super().drop_databases()
        self.mysql.drop_database(self.mysql_database, self.mysql_user)

    def mysql_connect(self, **options: Any) -> Any:
        import pymysql

        return pymysql.connect(unix_socket=self.mysql.socket, user=self.mysql_user,
                               password=self.env["SOURCE_PASSWORD"], database=self.mysql_database,
                               charset="utf8mb4", **options)

    def generate(self, shape: str, size: int, table: str | None = None) -> None:
        definitions = ", ".join(f"`{n}` {t}" + (" PRIMARY KEY" if n == "id" else "") for n, t, _ in MYSQL_NARROW)
        expressions = ", ".join(e for _, _, e in MYSQL_NARROW)
        conn = self.mysql_connect()
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE `{shape}` ({definitions}) ENGINE=InnoDB")
            cur.execute(f"INSERT INTO `{shape}` SELECT {expressions} FROM seq_1_to_{int(size)}")
            conn.commit()
            cur.execute(f"ANALYZE TABLE `{shape}`")
        conn.close()

    def churn(self, shape: str, fraction: float, seed: int, table: str | None = None) -> dict[str, int]:
        conn = self.mysql_connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT count(*), coalesce(max(id), 0) FROM `{shape}`")
                count, max_id = cur.fetchone()
                if fraction <= 0:
                    return {"total": count, "inserted": 0, "updated": 0, "deleted": 0}
                threshold = int(fraction / 3 * 1_000_000)
                key_hash = "(CRC32(CONCAT(id, '/', %s)) %% 1000000)"
                cur.execute(f"UPDATE `{shape}` SET amount = amount + 1, note = MD5(note) WHERE {key_hash} < %s",
                            (seed, threshold))
                updated = cur.rowcount
                cur.execute(f"DELETE FROM `{shape}` WHERE {key_hash} >= %s AND {key_hash} < %s",
                            (seed, threshold, seed, 2 * threshold))
                deleted = cur.rowcount
                insert_count = max(1, round(count * fraction / 3))
                expressions = ", ".join(e.replace("seq", f"(seq + {int(max_id)})") for _, _, e in MYSQL_NARROW)
                cur.execute(f"INSERT INTO `{shape}` SELECT {expressions} FROM seq_1_to_{insert_count}")
                inserted = cur.rowcount
            conn.commit()
        finally:
            conn.close()
        return {"total": count + inserted - deleted, "inserted": inserted, "updated": updated, "deleted": deleted}

    def source_block(self) -> dict[str, Any]:
        return {"type": "mysql", "host": self.mysql.socket, "database": self.mysql_database, "credential": "source"}

    def floor(self, shape: str, mode: str) -> tuple[float, int]:
        import pymysql.converters
        import pymysql.cursors

        names = column_names(shape)
        definitions = ", ".join(f'"{n}" {t}' for n, t, _ in SHAPES[shape])
        # no decoders: every value stays the text the server sent (the encoders, for the connection's SETs)
        text_only = {k: v for k, v in pymysql.converters.conversions.items() if not isinstance(k, int)}
        source = self.mysql_connect(cursorclass=pymysql.cursors.SSCursor, conv=text_only)
        with self.conn("merge") as merge:
            with merge.cursor() as cur:
                cur.execute("DROP TABLE IF EXISTS floor_stage")
                cur.execute("SELECT to_regclass(%s)", (merge_table(mode, shape),))
                has_target = cur.fetchone()[0] is not None
                merge.commit()
            self.settle()
            started = time.monotonic()
            with merge.cursor() as cur:
                cur.execute(f"CREATE UNLOGGED TABLE floor_stage ({definitions})")
            source_cursor = source.cursor()
            source_cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            source_cursor.execute(f"SELECT {', '.join(f'`{n}`' for n, _, _ in SHAPES[shape])} FROM `{shape}`")
            with merge.cursor() as cur:
                cur.copy_expert(f"COPY floor_stage ({names}) FROM STDIN", CopyText(source_cursor), size=PIPE_CHUNK)
                copied = cur.rowcount
            source.rollback()
            source.close()
            changes = copied
            if has_target:
                with merge.cursor() as cur:
                    cur.execute(count_changes(shape, mode))
                    changes = int(cur.fetchone()[0])
            merge.commit()
            elapsed = time.monotonic() - started
            if has_target:  # a load's staged copy stays for `load_writes`
                with merge.cursor() as cur:
                    cur.execute("DROP TABLE floor_stage")
                merge.commit()
        return elapsed, changes

    def load_writes(self, shape: str, mode: str) -> float | None:
        """After the load batch's job (its merge table exists now): seconds of the one INSERT of the floor's
        staged rows into an empty table LIKE the merge table INCLUDING ALL (same indexes), made before the
        clock starts; the load's minimal writes."""
        columns = column_names(shape)
        batch_columns, batch_values = (("ds_batch_id", "0") if mode == "live"
                                       else ("ds_batch_in, ds_batch_out", f"1, {OPEN_END}"))
        insert = (f"INSERT INTO floor_target ({columns}, {batch_columns}) "
                  f"SELECT {columns}, {batch_values} FROM floor_stage")
        return self.timed_writes(merge_table(mode, shape), lambda cur: cur.execute(insert), copy_rows=False)

    def check(self, shape: str, mode: str, expected: dict[str, int], floor_changes: int,
              versions: int | None) -> None:
        """The current view against the MariaDB table: count and a sum per column (both sides)."""
        conn = self.mysql_connect()
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*), sum(id), sum(amount), sum(qty), sum(char_length(name)), "
                        f"sum(to_days(created)), sum(conv(substr(md5(note), 1, 8), 16, 10)) FROM `{shape}`")
            want = tuple(int(v) for v in cur.fetchone())
        conn.close()
        view = f'"bench_{mode}"."{STORE.lower()}_{shape}_current"'
        with self.conn("merge") as connection, connection.cursor() as cur:
            # to_days() counts from year 0; PostgreSQL's dates count from 2000-01-01 (730485 days later)
            cur.execute(f"SELECT count(*), sum(id), sum(amount), sum(qty), sum(char_length(name)), "
                        f"sum(created - date '2000-01-01' + 730485), "
                        f"sum(('x' || substr(md5(note), 1, 8))::bit(32)::bigint) FROM {view}")
            got = tuple(int(v) for v in cur.fetchone())
        if got != want:
            raise CheckFailed(f"{mode}: current view != MariaDB source (count and sums): {got} vs {want}")
        self.check_ledger(shape, mode, expected, floor_changes, versions)


class CopyText(io.RawIOBase):
    """The rows of an open PyMySQL cursor as COPY text as they came: tab-joined server text, no escaping, no
    NULLs (the generated table has none), no Python code per row."""

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor
        self.pending = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while len(self.pending) < size:
            rows = self.cursor.fetchmany(5000)
            if not rows:
                break
            self.pending += ("\n".join(map("\t".join, rows)) + "\n").encode()
        out, self.pending = self.pending[:size], self.pending[size:]
        return out


def count_changes(shape: str, mode: str) -> str:
    """The floor's one FULL JOIN diff of `floor_stage` against the current rows; counts the changes."""
    values = [n for n, _, _ in SHAPES[shape] if n != "id"]
    target = merge_table(mode, shape)
    current = target if mode == "live" else f"(SELECT * FROM {target} WHERE ds_batch_out = {OPEN_END})"
    staged_values = ", ".join(f's."{n}"' for n in values)
    current_values = ", ".join(f'c."{n}"' for n in values)
    return (f"SELECT count(*) FROM floor_stage s FULL JOIN {current} c ON s.id = c.id "
            f"WHERE s.id IS NULL OR c.id IS NULL OR ({staged_values}) IS DISTINCT FROM ({current_values})")


def run_mysql(server: LocalPostgres, workdir: Path, sizes: list[int], modes: list[str], churns: list[float],
              results: list[Result]) -> bool:
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
                results += run_churn_levels(bench, MYSQL_SHAPE, size, modes, churns, 0)
            except CheckFailed as exc:
                print(f"CORRECTNESS CHECK FAILED: {exc}", file=sys.stderr)
                return True
    return False
