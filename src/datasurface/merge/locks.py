"""Locks in a live merge database: the stream lock between runs, and bounded waits for consumers' locks.

`StreamLock` is a session-level advisory lock per (platform schema, stream), so two runs on one stream
never both apply. A holder is one of three things, and the lock tells them apart:
- a live run (its heartbeat answers, sessions.py): wait for it up to `lock_wait`, then refuse, naming it;
- a dead or frozen run (its heartbeat has stopped for `orphan_timeout`, or vanished): its sessions can
  never commit, so they are ended (`pg_terminate_backend`, allowed for sessions of one's own role) and this
  run takes over the stream — it finishes the open batch (exit 10);
- a session that is not a run of this job (no run id in its application name): never ended; waited for.

`LockRetry` runs one transaction step of the job with every lock wait bounded by `lock_timeout` (one
short step, sessions.py): a step that cannot get its locks is rolled back and retried with backoff up to
a total, so consumers are never queued behind the job for more than a moment and the job never waits
for ever. When the total runs out, the error names the sessions that hold what the step needs.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import psycopg2
from psycopg2 import sql

from datasurface.db import PgConnection
from datasurface.errors import DataSurfaceError, StreamBusyError
from datasurface.merge.ledger import Stream
from datasurface.sessions import SessionLimits, run_id_of

log = logging.getLogger(__name__)

T = TypeVar("T")


class LockTimeoutError(DataSurfaceError):
    """The job waited its whole lock budget for locks that other sessions hold."""


class Session(NamedTuple):
    """A server session as pg_stat_activity shows it to the job's role (other roles' details are hidden)."""

    pid: int
    user: str | None
    application: str | None
    client: str | None
    since: dt.datetime | None
    state: str | None
    state_change: dt.datetime | None
    mode: str | None = None
    relation: str | None = None

    def describe(self) -> str:
        parts = [f"backend pid {self.pid}"]
        if self.user:
            parts.append(f"user {self.user}")
        if self.application:
            parts.append(f"application {self.application!r}")
        if self.client:
            parts.append(f"client {self.client}")
        if self.mode and self.relation:
            parts.append(f"holding {self.mode} on {self.relation}")
        if self.since:
            parts.append(f"since {self.since.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC")
        if self.state:
            parts.append(self.state)
        return ", ".join(parts)


_SESSION_COLUMNS = sql.SQL("""a.pid, a.usename::text, nullif(a.application_name, ''),
    CASE WHEN a.client_addr IS NULL THEN CASE WHEN a.backend_start IS NULL THEN NULL ELSE 'local socket' END
         ELSE host(a.client_addr) || ':' || a.client_port END,
    coalesce(a.xact_start, a.backend_start), a.state, a.state_change""")


class StreamLock:
    """A session-level advisory lock per (schema, stream), held on the run's merge connection."""

    def __init__(self, conn: PgConnection, schema: str, stream: Stream, limits: SessionLimits):
        self.conn = conn
        self.name = f"datasurface/{schema}/{stream.key}"
        self.stream = stream
        self.limits = limits
        self.taken_over: str | None = None  # the run id of a dead or frozen run whose stream this run took

    def _try(self) -> bool:
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (self.name,))
            got = bool(cur.fetchone()[0])  # type: ignore[index]
        self.conn.commit()
        return got

    def holder(self) -> Session | None:
        """The session that holds the lock now, if any."""
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL(
                """WITH k AS (SELECT hashtextextended(%s, 0) AS h)
                    SELECT {}
                      FROM k, pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
                     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                       AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
                       AND l.classid = ((k.h >> 32) & 4294967295)::oid
                       AND l.objid = (k.h & 4294967295)::oid""").format(_SESSION_COLUMNS),
                (self.name,))
            row = cur.fetchone()
        self.conn.commit()
        return None if row is None else Session(*row)

    def _heartbeat(self, run_id: str) -> tuple[bool, bool]:
        """(present, fresh) of the run's heartbeat session: fresh when it answered within orphan_timeout."""
        with self.conn.cursor() as cur:
            cur.execute("""SELECT clock_timestamp() - state_change < make_interval(secs => %s)
                             FROM pg_catalog.pg_stat_activity WHERE application_name = %s""",
                        (self.limits.orphan_timeout, f"datasurface-job heartbeat {run_id}"))
            row = cur.fetchone()
        self.conn.commit()
        return row is not None, bool(row and row[0])

    def _end_run(self, run_id: str) -> None:
        """End the dead or frozen run's sessions of this role (its open transaction rolls back). Sessions of
        other roles (its source session, where source and merge share a server) are left to their server."""
        with self.conn.cursor() as cur:
            cur.execute("""SELECT pid, pg_terminate_backend(pid, 5000) FROM pg_catalog.pg_stat_activity
                            WHERE application_name LIKE %s AND pid <> pg_backend_pid()
                              AND pg_has_role(usesysid, 'MEMBER')""",
                        (f"datasurface-job % {run_id}",))
            ended = [r[0] for r in cur.fetchall() if r[1]]
        self.conn.commit()
        log.warning("%s: the run %s that held it stopped answering (no heartbeat for %gs); ended its sessions "
                    "(backend pids %s) and took over", self.stream.describe(), run_id, self.limits.orphan_timeout,
                    ", ".join(map(str, ended)) or "none left")

    def acquire(self) -> None:
        deadline = time.monotonic() + self.limits.lock_wait
        silent_since: dict[str, float] = {}
        while not self._try():
            holder = self.holder()
            run_id = run_id_of(holder.application if holder else None)
            if holder is not None and run_id is not None:
                present, fresh = self._heartbeat(run_id)
                if fresh:
                    silent_since.pop(run_id, None)
                else:
                    # stale: frozen or cut off. Gone: killed, or reconnecting after a network blip, which
                    # takes a live run a heartbeat interval or two: wait that long before taking over
                    first = silent_since.setdefault(run_id, time.monotonic())
                    grace = 0.0 if present else min(5 * self.limits.heartbeat_interval, self.limits.orphan_timeout)
                    if time.monotonic() - first >= grace:
                        self._end_run(run_id)
                        self.taken_over = run_id
                        silent_since.pop(run_id)
                        continue
            if time.monotonic() >= deadline:
                waited = f" after waiting {self.limits.lock_wait:g}s" if self.limits.lock_wait else ""
                who = holder.describe() if holder is not None else "a session that has just released it"
                raise StreamBusyError(f"another session holds {self.stream.describe()} of this platform{waited}: "
                                      f"{who} (use --lock-wait to wait longer)")
            time.sleep(min(0.5, max(0.05, deadline - time.monotonic())))

    def release(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (self.name,))
        self.conn.commit()


def end_run_sessions(conn: PgConnection, run_id: str) -> None:
    """End a dead or frozen run's sessions on another server (its source snapshot), where this role may."""
    with conn.cursor() as cur:
        cur.execute("""SELECT count(pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity
                        WHERE application_name LIKE %s AND pid <> pg_backend_pid()
                          AND pg_has_role(usesysid, 'MEMBER')""",
                    (f"datasurface-job % {run_id}",))
    conn.commit()


# --- bounded waits for consumers' locks ---------------------------------------------------------

_BLOCKERS = sql.SQL("""SELECT {}, l.mode, l.relation::regclass::text
      FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
     WHERE l.granted AND l.pid <> pg_backend_pid() AND l.locktype = 'relation'
       AND l.relation = ANY(%s::regclass[]) AND (%s OR l.mode <> 'AccessShareLock')
       AND coalesce(a.application_name, '') NOT LIKE 'datasurface-job %%'
     ORDER BY a.xact_start NULLS LAST LIMIT 3""").format(_SESSION_COLUMNS)


class LockRetry:
    """Runs transaction steps whose lock waits are bounded by lock_timeout, retrying them with backoff.

    One budget per run: the time spent waiting for locks, over all steps, is at most `limits.lock_timeout`.
    """

    def __init__(self, conn: PgConnection, limits: SessionLimits):
        self.conn = conn
        self.limits = limits
        self.waited = 0.0

    def run(self, what: str, step: Callable[[], T], relations: Callable[[], Sequence[str]],
            exclusive: bool = False) -> T:
        """Run `step` (which commits its own transaction); on a lock timeout roll back, wait, run it again.

        `relations` names (schema-qualified) what the step locks, to name the blockers when giving up;
        `exclusive`: the step takes ACCESS EXCLUSIVE locks, so even readers block it.
        """
        delay = 0.1
        while True:
            started = time.monotonic()
            try:
                return step()
            except psycopg2.errors.LockNotAvailable:
                self.conn.rollback()
                self.waited += time.monotonic() - started
                blockers = self._blockers(relations(), exclusive)
                if self.waited >= self.limits.lock_timeout:
                    who = "; ".join(b.describe() for b in blockers) or "sessions that released their locks just now"
                    raise LockTimeoutError(
                        f"{what}: gave up after waiting {self.waited:.0f}s in total for locks held by other "
                        f"sessions: {who}; nothing was applied (--lock-timeout sets the total)") from None
                pause = min(delay, max(0.0, self.limits.lock_timeout - self.waited)) * random.uniform(0.8, 1.2)
                log.info("%s: waiting for a lock held by %s; retrying in %.1fs", what,
                         blockers[0].describe() if blockers else "another session", pause)
                time.sleep(pause)
                self.waited += pause
                delay = min(delay * 2, 5.0)

    def _blockers(self, relations: Sequence[str], exclusive: bool) -> list[Session]:
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT array_agg(r) FROM unnest(%s::text[]) r WHERE to_regclass(r) IS NOT NULL",
                            (list(relations),))
                existing = cur.fetchone()[0] or []  # type: ignore[index]
                cur.execute(_BLOCKERS, (existing, exclusive))
                rows: list[Any] = cur.fetchall()
            self.conn.rollback()
        except psycopg2.Error:
            self.conn.rollback()
            return []
        return [Session(*r) for r in rows]
