"""The job's database sessions in a live cluster: bounded on the server side, and watched by a heartbeat.

A job pod can die mid-statement (OOM kill, eviction, execution timeout) or freeze (a partitioned node,
SIGSTOP). PostgreSQL then keeps the job's session, its transaction and its stream lock for as long as
it does not notice. Every session the job opens therefore tells the server to end it soon after its
client is gone or silent (`SessionLimits.statements`):

- `client_connection_check_interval`: a running statement checks its client socket every second and
  stops when the client has died (PostgreSQL 14+);
- `idle_in_transaction_session_timeout` / `idle_session_timeout`: a session whose client stopped
  sending ends after `idle_timeout` seconds (PostgreSQL 14+ for the latter);
- TCP keepalives (client and server side) and `tcp_user_timeout`: a peer that vanished from the network
  is noticed in about `keepalive` seconds;
- `lock_timeout`: no statement waits for a lock longer than one short step (see merge/locks.py), so the
  job never queues consumers behind it for more than a moment.

No server setting can tell a frozen client from a busy one while a COPY waits for its data, so each run
also keeps a heartbeat: a second connection, named after the run, that answers every
`heartbeat_interval` seconds. A run whose heartbeat has stopped is known to be dead or frozen; the next
run on its stream ends its sessions and takes over (merge/locks.py `StreamLock`).

Opening a session is a wait on the server (a backend forked, a password checked): 5-10 ms that a short
batch would pay four times over, one session after another. A run that knows which sessions it needs
opens them ahead (`Ahead`), in threads, while it imports the engine and reads the model.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, NamedTuple

import psycopg2

from datasurface import credentials
from datasurface.credentials import Credential
from datasurface.db import Endpoint, PgConnection, connect, driver_error, ended_by_server

log = logging.getLogger(__name__)

APP_PREFIX = "datasurface-job"
# the run history's session (observe/runs.py): every write it makes is bounded, so a slow or locked
# history never holds a run up for long
HISTORY_CONNECT_TIMEOUT_S = 5
HISTORY_STATEMENT_TIMEOUT = "5s"


class SessionLimits(NamedTuple):
    """How long the servers keep a silent job session, and how the job waits for locks (seconds)."""

    idle_timeout: float = 60.0  # a session idle (in a transaction or not) this long is ended by the server
    keepalive: float = 30.0  # a peer gone from the network is noticed within about this long
    lock_step: float = 0.5  # one lock wait; retried with backoff up to lock_timeout
    lock_timeout: float = 300.0  # total time a run waits for locks that consumers hold
    lock_wait: float = 60.0  # how long a run waits for another run that holds its stream
    orphan_timeout: float = 15.0  # a run whose heartbeat stopped this long is dead or frozen
    heartbeat_interval: float = 2.0

    def statements(self, server_version: int) -> list[tuple[str, str]]:
        """(setting, value) for this session; the PostgreSQL 14+ ones only where the server has them."""
        settings = [
            ("idle_in_transaction_session_timeout", ms(self.idle_timeout)),
            ("lock_timeout", ms(self.lock_step)),
            ("tcp_keepalives_idle", str(max(1, int(self.keepalive / 3)))),
            ("tcp_keepalives_interval", str(max(1, int(self.keepalive / 6)))),
            ("tcp_keepalives_count", "3"),
            ("tcp_user_timeout", ms(self.keepalive)),
            # every object the job names is schema-qualified; this keeps functions and operators too
            # from resolving to anything a user put on the search path
            ("search_path", "pg_catalog, pg_temp"),
            # floats print shortest-exact (the diff compares them as text; PostgreSQL's default, made sure)
            ("extra_float_digits", "1"),
        ]
        if server_version >= 140000:
            settings += [("idle_session_timeout", ms(self.idle_timeout)),
                         ("client_connection_check_interval", "1000")]
        return settings

    def libpq_keepalives(self) -> dict[str, int]:
        return {"keepalives": 1, "keepalives_idle": max(1, int(self.keepalive / 3)),
                "keepalives_interval": max(1, int(self.keepalive / 6)), "keepalives_count": 3}


def limits_from_options(lock_wait: float, lock_timeout: float, session_timeout: float,
                        orphan_timeout: float) -> SessionLimits:
    """The limits from the command line's options (seconds), refusing values that make no sense."""
    from datasurface.errors import UsageError

    for name, value, least in (("--lock-wait", lock_wait, 0), ("--lock-timeout", lock_timeout, 0),
                               ("--session-timeout", session_timeout, 1), ("--orphan-timeout", orphan_timeout, 1)):
        if not value >= least:
            raise UsageError(f"{name} must be at least {least} seconds (got {value:g})")
    return SessionLimits(lock_wait=lock_wait, lock_timeout=lock_timeout, idle_timeout=session_timeout,
                         orphan_timeout=orphan_timeout)


def ms(seconds: float) -> str:
    return str(max(1, int(seconds * 1000)))


def new_run_id() -> str:
    return os.urandom(4).hex()


def application_name(role: str, run_id: str) -> str:
    """`datasurface-job merge 1a2b3c4d`: what pg_stat_activity shows, and how a run's sessions are found."""
    return f"{APP_PREFIX} {role} {run_id}"


def run_id_of(app_name: str | None) -> str | None:
    """The run id in one of our application names, else None (not a session of this job)."""
    parts = (app_name or "").split(" ")
    if len(parts) == 3 and parts[0] == APP_PREFIX and len(parts[2]) == 8:
        return parts[2]
    return None


def open_session(endpoint: Endpoint, credential: Credential, role: str, run_id: str,
                 limits: SessionLimits) -> PgConnection:
    """A connection with the job's session limits in force: ONE statement after connecting, in autocommit
    (no BEGIN/COMMIT around it); `set_config(..., false)` lasts for the session."""
    conn = connect(endpoint, credential, application_name=application_name(role, run_id),
                   extra=limits.libpq_keepalives())
    try:
        settings = limits.statements(conn.server_version)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT " + ", ".join(["set_config(%s, %s, false)"] * len(settings)),
                        [part for setting in settings for part in setting])
        conn.autocommit = False
    except psycopg2.Error:
        conn.close()
        raise
    return conn


def open_history_session(endpoint: Endpoint, credential: Credential, run_id: str) -> PgConnection:
    """The run history's session: short keepalives, every statement and lock wait bounded."""
    conn = connect(endpoint, credential, application_name=application_name("history", run_id),
                   connect_timeout=HISTORY_CONNECT_TIMEOUT_S,
                   extra={"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2,
                          "tcp_user_timeout": HISTORY_CONNECT_TIMEOUT_S * 1000})
    try:
        conn.autocommit = True  # one round trip: no BEGIN / COMMIT around the session's settings
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)",
                        (HISTORY_STATEMENT_TIMEOUT, HISTORY_STATEMENT_TIMEOUT))
        conn.autocommit = False
    except BaseException:
        with suppress(Exception):
            conn.close()
        raise
    return conn


def alive(conn: PgConnection) -> bool:
    """Still usable, as far as can be told without a round trip: `poll` reads what the server sent while the
    session was idle. A server that ended the session (an idle timeout, a terminated backend, a restart) sent
    a FATAL notice and closed the socket: the first read finds the notice, the next one the end of the stream."""
    if conn.closed:
        return False
    try:
        seen = len(conn.notices)
        conn.poll()
        if any(n.startswith("FATAL") for n in conn.notices[seen:]):
            return False
        conn.poll()
    except psycopg2.Error:
        return False
    return not conn.closed


# which session an opening is: (role, where, credential name, run id, limits; None for the history's own)
SessionKey = tuple[str, Endpoint, str, str, SessionLimits | None]


class _Opening:
    """One session being opened in a daemon thread: its connection, or what opening it raised."""

    def __init__(self, opener: Callable[[], PgConnection]):
        self._opener = opener
        self._conn: PgConnection | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._abandoned = False
        self._thread = threading.Thread(target=self._open, name="open-session", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        try:
            conn = self._opener()
        except BaseException as exc:  # handed to the thread that takes the session
            self._error = exc
            return
        with self._lock:
            self._conn = conn
            abandoned = self._abandoned
        if abandoned:
            _close_quietly(conn)

    def result(self) -> PgConnection:
        self._thread.join()  # bounded by the connect timeout (and interruptible)
        if self._error is not None:
            raise self._error
        assert self._conn is not None
        return self._conn

    def abandon(self) -> None:
        """Close the session now if it is open, else as soon as it is: a run that failed early never waits
        for a server that does not answer."""
        with self._lock:
            self._abandoned = True
            conn = self._conn
        if conn is not None:
            _close_quietly(conn)


def _close_quietly(conn: PgConnection) -> None:
    with suppress(Exception):
        conn.close()


class Ahead:
    """Sessions opened ahead of need, in threads (the driver releases the GIL while it connects).

    `take` hands an opened session over, or raises exactly what opening it raised, at the point where
    the run would have opened it itself: errors keep their order and their wording. A session that is not
    taken (the run failed before it needed it) is closed by `close`. Used from one thread."""

    def __init__(self) -> None:
        self._pending: dict[SessionKey, _Opening] = {}

    def open(self, key: SessionKey, opener: Callable[[], PgConnection]) -> None:
        if key not in self._pending:
            self._pending[key] = _Opening(opener)

    def session(self, endpoint: Endpoint, credential_name: str, role: str, run_id: str,
                limits: SessionLimits) -> None:
        """Start opening the session that `connection(endpoint, credential_name, role, run_id, limits)` opens."""
        self.open(*_session(endpoint, credential_name, role, run_id, limits))

    def history(self, endpoint: Endpoint, credential_name: str, run_id: str) -> None:
        self.open(*history_session(endpoint, credential_name, run_id))

    def take(self, key: SessionKey, opener: Callable[[], PgConnection]) -> PgConnection:
        """The session opened ahead, if it is still alive (a slow model, e.g. a large git clone, may have kept
        it idle past the server's idle_session_timeout; the server may have ended it while it was opening),
        else one opened now."""
        opening = self._pending.pop(key, None)
        if opening is None:
            return opener()
        try:
            conn = opening.result()
        except psycopg2.Error as exc:
            if not ended_by_server(exc):
                raise
            return opener()  # ended by the server while it was being opened (its settings): as if ended idle
        if alive(conn):
            return conn
        _close_quietly(conn)
        return opener()

    def close(self) -> None:
        pending, self._pending = self._pending, {}
        for opening in pending.values():
            opening.abandon()


def taken(ahead: Ahead | None, key: SessionKey, opener: Callable[[], PgConnection]) -> PgConnection:
    """The session opened ahead under `key`, else one opened now."""
    return opener() if ahead is None else ahead.take(key, opener)


def _session(endpoint: Endpoint, credential_name: str, role: str, run_id: str,
             limits: SessionLimits) -> tuple[SessionKey, Callable[[], PgConnection]]:
    def opener() -> PgConnection:
        return open_session(endpoint, credentials.resolve(credential_name), role, run_id, limits)
    return (role, endpoint, credential_name, run_id, limits), opener


def session(endpoint: Endpoint, credential_name: str, role: str, run_id: str,
            limits: SessionLimits) -> tuple[SessionKey, Callable[[], PgConnection]]:
    """The key and opener of the session `connection` opens with these arguments (for `taken`)."""
    return _session(endpoint, credential_name, role, run_id, limits)


def history_session(endpoint: Endpoint, credential_name: str,
                    run_id: str) -> tuple[SessionKey, Callable[[], PgConnection]]:
    def opener() -> PgConnection:
        return open_history_session(endpoint, credentials.resolve(credential_name), run_id)
    return ("history", endpoint, credential_name, run_id, None), opener


def merge_run_ahead(endpoint: Endpoint, credential_name: str, run_id: str, limits: SessionLimits) -> Ahead:
    """A `merge` run's sessions on the merge database, opening: its heartbeat, its merge session, its history."""
    ahead = Ahead()
    ahead.session(endpoint, credential_name, "heartbeat", run_id, limits)
    ahead.session(endpoint, credential_name, "merge", run_id, limits)
    ahead.history(endpoint, credential_name, run_id)
    return ahead


@contextmanager
def connection(endpoint: Endpoint, credential_name: str, role: str, run_id: str | None = None,
               limits: SessionLimits | None = None, side: str | None = None,
               ahead: Ahead | None = None) -> Iterator[PgConnection]:
    """A session with the job's limits; a driver error inside becomes one line naming the server
    (`role`: merge, source, check; `side`: source or merge, by default from the role). `ahead`: where
    the session may already be opening (`Ahead.session` with the same arguments)."""
    where = endpoint.named(side or ("source" if role == "source" else "merge"))
    key, opener = _session(endpoint, credential_name, role, run_id or new_run_id(), limits or SessionLimits())
    try:
        conn = taken(ahead, key, opener)
    except psycopg2.Error as exc:
        raise driver_error(exc, where) from exc
    try:
        yield conn
    except psycopg2.Error as exc:
        raise driver_error(exc, where, conn) from exc
    finally:
        with suppress(Exception):
            conn.close()


class Heartbeat:
    """A connection of its own that answers every few seconds while the run is alive.

    It lives in a daemon thread: a frozen process freezes it too, and a killed one closes it, which is
    exactly what the next run looks for. A lost heartbeat connection is reopened (a live run must not
    look dead because of one network blip).
    """

    def __init__(self, endpoint: Endpoint, credential_name: str, run_id: str, limits: SessionLimits,
                 ahead: Ahead | None = None):
        self._key, self._opener = _session(endpoint, credential_name, "heartbeat", run_id, limits)
        self._limits = limits
        self._stop = threading.Event()
        self._conn: Any = self._open(ahead)
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def _open(self, ahead: Ahead | None = None) -> PgConnection:
        conn = taken(ahead, self._key, self._opener)
        conn.autocommit = True  # a setting of the client: no round trip
        return conn

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self._limits.heartbeat_interval):
            try:
                if self._conn is None:
                    self._conn = self._open()
                with self._conn.cursor() as cur:
                    cur.execute("SELECT 1")
            except Exception as exc:  # reopened at the next beat
                log.debug("heartbeat: %s", exc)
                self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # already gone
                log.debug("heartbeat close: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._close()
