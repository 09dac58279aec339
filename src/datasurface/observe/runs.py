"""The run history (docs/monitoring.md): one `ds_runs` row per run of `merge` or `setup` for a stream.

A row is written when the run starts (finished_at NULL) and completed when it ends, each write its own
short transaction on a connection of the history's own: never inside the batch's transactions, so a
rolled-back batch keeps its run row, and a run killed on the way leaves finished_at NULL. Rows are
addressed by their own `run_id`, so such a leftover row never confuses a later run. The connection is
kept from the start of a run to its finish (a short run pays one connection, not two); one the server
has ended meanwhile (its idle timeout during a long merge) is noticed without a round trip and
replaced, and a peer gone from the network fails a write within seconds (TCP keepalives and
`tcp_user_timeout`), never holding the run up.

Recording never changes a run's outcome: when the history cannot be written (database down, no
privilege, a lock held too long), the run logs one warning and goes on; its exit status and error line
are exactly what they would have been. The error recorded is the line the CLI prints
(`errors.failure_line`).
"""

from __future__ import annotations

import datetime
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Protocol

import psycopg2
from psycopg2 import sql

from datasurface.db import Endpoint, PgConnection, first_line
from datasurface.errors import EXIT_OK, EXIT_RECOVERED, DataSurfaceError, failure_line
from datasurface.merge import ddl
from datasurface.sessions import Ahead, alive, history_session, new_run_id, taken

log = logging.getLogger("datasurface.observe")

MERGE, SETUP = "merge", "setup"

DDL = """
CREATE TABLE IF NOT EXISTS {runs} (
    run_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    store text,
    dataset text,
    command text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    exit_status integer,
    batch_id integer,
    error text,
    host text,
    run text)
"""
INDEX = "CREATE INDEX IF NOT EXISTS {name} ON {runs} (command, store, dataset, run_id)"
# Per stream and command, the finished runs by result, kept with each finish (same transaction): what the
# exporter reads at every scrape, in time that does not grow with the history (and stays monotonic if old
# ds_runs rows are ever pruned). dataset is '' for a multi_dataset stream or a whole-store run.
TOTALS_DDL = """
CREATE TABLE IF NOT EXISTS {totals} (
    command text NOT NULL,
    store text NOT NULL,
    dataset text NOT NULL,
    ok bigint NOT NULL DEFAULT 0,
    recovered bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    failed_in_a_row integer NOT NULL DEFAULT 0,
    last_failed_run_id bigint,
    PRIMARY KEY (command, store, dataset))
"""
COUNT_RUN = """
INSERT INTO {totals} AS t (command, store, dataset, ok, recovered, failed, failed_in_a_row, last_failed_run_id)
VALUES (%(command)s, %(store)s, %(dataset)s, %(ok)s, %(recovered)s, %(failed)s, %(failed)s, %(failed_run)s)
ON CONFLICT (command, store, dataset) DO UPDATE SET
    ok = t.ok + excluded.ok, recovered = t.recovered + excluded.recovered, failed = t.failed + excluded.failed,
    failed_in_a_row = CASE WHEN excluded.failed = 1 THEN t.failed_in_a_row + 1 ELSE 0 END,
    last_failed_run_id = coalesce(excluded.last_failed_run_id, t.last_failed_run_id)
"""


class HasBatch(Protocol):
    batch_id: int | None


def table(schema: str) -> sql.Composable:
    return sql.Identifier(schema, "ds_runs")


def totals(schema: str) -> sql.Composable:
    return sql.Identifier(schema, "ds_run_totals")


def ensure(conn: PgConnection, schema: str) -> None:
    """Create the schema and `ds_runs` if missing (in the caller's transaction)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(format('%%I.ds_run_totals', %s::text))", (schema,))
        if cur.fetchone()[0] is not None:  # type: ignore[index]
            return
        ddl.lock(conn, schema)  # concurrent runs of one platform create objects one at a time
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        cur.execute(sql.SQL(DDL).format(runs=table(schema)))
        cur.execute(sql.SQL(INDEX).format(name=sql.Identifier("ds_runs_stream"), runs=table(schema)))
        cur.execute(sql.SQL(TOTALS_DDL).format(totals=totals(schema)))


class RunRecord:
    """One row of `ds_runs`; `exit_status` is set by the code it watches (0 unless told otherwise)."""

    def __init__(self, history: RunHistory, store: str | None, dataset: str | None):
        self.history = history
        self.store = store
        self.dataset = dataset
        self.started_at = datetime.datetime.now(datetime.UTC)
        self.exit_status = EXIT_OK
        self.run_id: int | None = None
        self.watched: HasBatch | None = None
        self.start_error: BaseException | None = None  # why the row could not be started (said at finish)

    def watch(self, obj: HasBatch) -> None:
        """The batch of `obj` (read when the run ends) is the run's batch_id."""
        self.watched = obj

    @property
    def batch_id(self) -> int | None:
        return None if self.watched is None else self.watched.batch_id


class RunHistory:
    """Records the runs of one command on one platform's merge database."""

    def __init__(self, endpoint: Endpoint, credential_name: str, schema: str, command: str,
                 run_id: str | None = None, ahead: Ahead | None = None):
        self.endpoint = endpoint
        self.credential_name = credential_name
        self.schema = schema
        self.command = command
        self.run_id = run_id or new_run_id()  # the job's run id: its sessions' application_name ends with it
        self.host = socket.gethostname()
        self._warned = False
        self._conn: PgConnection | None = None
        self._ahead = ahead  # where its first session may already be opening (sessions.Ahead)

    @contextmanager
    def _connection(self) -> Iterator[PgConnection]:
        """The history's session, for one write (the caller commits); any failure closes it."""
        conn = self._conn if self._conn is not None and alive(self._conn) else self._open()
        self._conn = conn
        try:
            yield conn
        except BaseException:
            self.close()
            raise

    def _open(self) -> PgConnection:
        conn = taken(self._ahead, *history_session(self.endpoint, self.credential_name, self.run_id))
        self._ahead = None  # opened ahead once: a session replaced later is opened when it is needed
        return conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(Exception):
                conn.close()

    def _warn(self, what: str, exc: BaseException, run_failed: bool) -> None:
        """A run that failed reports its own one line (usually the same cause: the database is down, a
        credential is missing), so a history it could not write is only a debug line then; a run that
        succeeded but left no history says so, once."""
        known = isinstance(exc, psycopg2.Error | DataSurfaceError)
        reason = first_line(exc) if known else f"{type(exc).__name__}: {exc}"
        if run_failed:
            log.debug("run history (%s.ds_runs) not recorded: %s: %s", self.schema, what, reason)
        elif not self._warned:
            log.warning("run history (%s.ds_runs) not recorded: %s: %s", self.schema, what, reason)
            self._warned = True

    def start(self, record: RunRecord) -> None:
        # one round trip; it also tells whether the run counts' table is there (a history from before it)
        insert = sql.SQL("""INSERT INTO {} (store, dataset, command, host, run) VALUES (%s, %s, %s, %s, %s)
                            RETURNING run_id, started_at,
                                      to_regclass(format('%%I.ds_run_totals', %s::text)) IS NOT NULL""").format(
            table(self.schema))
        values = (record.store, record.dataset, self.command, self.host, self.run_id, self.schema)
        try:
            with self._connection() as conn:
                with conn.cursor() as cur:
                    try:
                        cur.execute(insert, values)
                    except psycopg2.errors.UndefinedTable:  # the platform's first run: create the history
                        conn.rollback()
                        ensure(conn, self.schema)
                        conn.commit()
                        cur.execute(insert, values)
                    record.run_id, record.started_at, complete = cur.fetchone()  # type: ignore[misc]
                    if not complete:
                        ensure(conn, self.schema)
                conn.commit()
        except Exception as exc:  # whatever goes wrong here, the run goes on as it would have
            record.start_error = exc  # said at finish, once the run's outcome is known

    def finish(self, record: RunRecord, exit_status: int, error: str | None) -> None:
        """Complete the run's row; without one (its start could not be written) insert the whole row."""
        run_failed = exit_status not in (EXIT_OK, EXIT_RECOVERED)
        if record.start_error is not None:
            self._warn("start", record.start_error, run_failed)
        try:
            with self._connection() as conn:
                with conn.cursor() as cur:
                    if record.run_id is not None:
                        cur.execute(
                            sql.SQL("""UPDATE {} SET finished_at = clock_timestamp(), exit_status = %s,
                                       batch_id = %s, error = %s WHERE run_id = %s""").format(table(self.schema)),
                            (exit_status, record.batch_id, error, record.run_id))
                        done = cur.rowcount == 1
                    else:
                        done = False
                    if not done:
                        ensure(conn, self.schema)
                        cur.execute(
                            sql.SQL("""INSERT INTO {} (store, dataset, command, started_at, finished_at,
                                       exit_status, batch_id, error, host, run)
                                       VALUES (%s, %s, %s, %s, clock_timestamp(), %s, %s, %s, %s, %s)
                                       RETURNING run_id""").format(table(self.schema)),
                            (record.store, record.dataset, self.command, record.started_at, exit_status,
                             record.batch_id, error, self.host, self.run_id))
                        record.run_id = cur.fetchone()[0]  # type: ignore[index]
                    if record.store is not None:
                        failed = exit_status not in (EXIT_OK, EXIT_RECOVERED)
                        cur.execute(sql.SQL(COUNT_RUN).format(totals=totals(self.schema)), {
                            "command": self.command, "store": record.store, "dataset": record.dataset or "",
                            "ok": int(exit_status == EXIT_OK), "recovered": int(exit_status == EXIT_RECOVERED),
                            "failed": int(failed), "failed_run": record.run_id if failed else None})
                conn.commit()  # the row and its count together
        except Exception as exc:  # recording a run never changes its outcome
            self._warn("finish", exc, run_failed)

    @contextmanager
    def run(self, store: str | None, dataset: str | None = None) -> Iterator[RunRecord]:
        """Records the run of the body: started now, finished with its exit status and error line."""
        record = RunRecord(self, store, dataset)
        self.start(record)
        try:
            try:
                yield record
            except BaseException as exc:
                status, line = failure_line(exc)
                self.finish(record, status, line)
                raise
            self.finish(record, record.exit_status, None)
        finally:
            self.close()


class CommandRuns:
    """The runs of one command invocation: one row per stream it worked on or, when it failed before
    reaching any stream (a model that does not load, an unknown store), one row for the store.

    A stream's failure is recorded by `recorded()`, outside the command's connections, so the error is
    the one the command reports (a driver error becomes its one line on the way out of a connection)."""

    def __init__(self, history: RunHistory, store: str | None):
        self.history = history
        self.store = store
        self.streams = 0
        self.failed: RunRecord | None = None

    @contextmanager
    def stream(self, dataset: str | None) -> Iterator[RunRecord]:
        self.streams += 1
        record = RunRecord(self.history, self.store, dataset)
        self.history.start(record)
        try:
            yield record
        except BaseException:
            self.failed = record
            raise
        self.history.finish(record, record.exit_status, None)


@contextmanager
def recorded(endpoint: Endpoint, credential_name: str, schema: str, command: str, store: str | None,
             run_id: str | None = None, ahead: Ahead | None = None,
             history: RunHistory | None = None) -> Iterator[CommandRuns]:
    """The run history of a command; record each stream's run with `runs.stream(dataset)`. `history`: one
    to write with and keep open (a run that merges several stores keeps its session from store to store)."""
    own = history is None
    if history is None:
        history = RunHistory(endpoint, credential_name, schema, command, run_id, ahead)
    runs = CommandRuns(history, store)
    try:
        yield runs
    except BaseException as exc:
        status, line = failure_line(exc)
        if runs.failed is not None:
            history.finish(runs.failed, status, line)
        elif runs.streams == 0:
            history.finish(RunRecord(history, store, None), status, line)
        raise
    finally:
        if own:
            history.close()
