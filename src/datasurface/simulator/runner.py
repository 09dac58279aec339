"""The simulator's loop: connect, perform one operation per transaction, wait, repeat.

Stops cleanly on SIGTERM/SIGINT (the current transaction finishes, waits are interrupted at once),
survives the database going away (one log line, retries with backoff, gives up only after
`max_disconnected` seconds without a connection) and ends with a summary of operations by kind.
"""

from __future__ import annotations

import logging
import random
import secrets
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Any

from datasurface.credentials import Credential, resolve
from datasurface.db import Endpoint
from datasurface.errors import DatabaseError, DataSurfaceError, UsageError
from datasurface.model.schema import SOURCE_TYPES
from datasurface.simulator.backends import backend_for
from datasurface.simulator.backends.base import Backend
from datasurface.simulator.operations import OPERATIONS, Outcome, Tx, choose, create_customer
from datasurface.simulator.tables import SEED_CUSTOMERS, SEED_RNG, TABLES
from datasurface.simulator.target import ModelRef, resolve_target

log = logging.getLogger("datasurface.simulator")

_MAX_ATTEMPTS = 5
_BACKOFF_FIRST, _BACKOFF_MAX = 0.2, 5.0


class _ConnectionLost(Exception):
    pass


def _setup_logging() -> None:
    """Log lines to stderr unless the application configured logging already."""
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s simulate: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def ensure_tables(conn: Any, backend: Backend | None = None) -> int:
    """Create the tables and the id sequence if missing; seed a few customers if empty.

    Idempotent and safe when several simulators start at once (they serialise on the backend's lock).
    Returns the number of customers seeded (0 when there were rows already).
    """
    backend = backend or backend_for("postgres")
    try:
        with conn.cursor() as cur, backend.create_lock(cur):
            backend.create_tables(cur, TABLES)
            cur.execute("SELECT EXISTS (SELECT 1 FROM customers)")
            row = cur.fetchone()
            seeded = 0 if row is not None and row[0] else SEED_CUSTOMERS
            rng = random.Random(SEED_RNG)
            for _ in range(seeded):
                create_customer(Tx(cur, backend), rng)
            conn.commit()
    except BaseException:
        with suppress(Exception):
            conn.rollback()
        raise
    return seeded


class Simulator:
    """Performs operations against one database; `run` may be called again to do more (the demo)."""

    def __init__(
        self,
        endpoint: Endpoint,
        credential: Credential,
        *,
        min_interval: float = 0.0,
        max_interval: float = 0.0,
        seed: int | None = None,
        max_disconnected: float = 300.0,
        verbose: bool = False,
        stop: threading.Event | None = None,
        backend: Backend | None = None,
        schema: str | None = None,
    ) -> None:
        self.backend = backend or backend_for("postgres")
        self.endpoint = endpoint
        self.schema = schema
        self.credential = credential
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.seed = seed if seed is not None else secrets.randbelow(2**31)
        self.max_disconnected = max_disconnected
        self.verbose = verbose
        self.stop = stop or threading.Event()
        self.rng = random.Random(self.seed)
        # waits use their own generator: other intervals must not change the operations
        self.interval_rng = random.Random(f"{self.seed}/intervals")
        self.counts: Counter[str] = Counter()
        self.retried = 0
        self.reconnects = 0
        self.performed = 0
        self._conn: Any = None
        self._down_since: float | None = None

    # --- connection -----------------------------------------------------------------------------

    def connection(self) -> Any:
        """An open connection, reconnecting with backoff; None when asked to stop while waiting."""
        if self._conn is not None and not self.backend.is_closed(self._conn):
            return self._conn
        delay = _BACKOFF_FIRST
        while True:
            try:
                self._conn = self.backend.connect(self.endpoint, self.credential, self.schema)
            except DatabaseError as exc:
                reason = str(exc)
                if self.backend.fatal_connect(reason):
                    raise
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                    log.warning("%s; retrying for up to %gs", reason, self.max_disconnected)
                if now - self._down_since >= self.max_disconnected:
                    where = self.endpoint.describe()
                    raise DatabaseError(f"no connection to {where} for {self.max_disconnected:g}s: {reason}"
                                        ) from None
                if self.stop.wait(min(delay, self.max_disconnected - (now - self._down_since))):
                    return None
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            if self._down_since is not None:
                self.reconnects += 1
                log.warning("reconnected to %s after %.1fs", self.endpoint.describe(),
                            time.monotonic() - self._down_since)
                self._down_since = None
            return self._conn

    def _lost(self, exc: BaseException) -> None:
        log.warning("lost the connection to %s (%s); reconnecting for up to %gs", self.endpoint.describe(),
                    self.backend.message(exc), self.max_disconnected)
        self._down_since = time.monotonic()
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except self.backend.error:
                pass
            self._conn = None

    # --- operations -----------------------------------------------------------------------------

    def create_tables(self) -> None:
        conn = self.connection()
        if conn is None:
            return
        try:
            seeded = ensure_tables(conn, self.backend)
        except self.backend.error as exc:
            where = self.endpoint.describe()
            raise DatabaseError(f"cannot create the tables in {where}: {self.backend.message(exc)}") from exc
        log.info("tables customers and addresses ready%s",
                 f" (seeded {seeded} customers)" if seeded else "")

    def _execute(self, conn: Any, kind: str) -> Outcome:
        """One operation in one transaction, retried when the database rolled it back for concurrency."""
        operation = OPERATIONS[kind][1]
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                with conn.cursor() as cur:
                    outcome = operation(Tx(cur, self.backend), self.rng)
                conn.commit()
                return outcome
            except self.backend.error as exc:
                try:
                    if not self.backend.is_closed(conn):
                        conn.rollback()
                except self.backend.error:
                    pass
                failure = self.backend.classify(exc, conn)
                if failure == "lost":
                    raise _ConnectionLost() from exc
                if failure == "retry" and attempt < _MAX_ATTEMPTS:
                    self.retried += 1
                    self.stop.wait(0.01 * attempt)
                    continue
                hint = " (run with --create-tables)" if failure == "missing" else ""
                raise DatabaseError(f"{kind} failed: {self.backend.message(exc)}{hint}") from exc
        raise AssertionError("unreachable")

    def run(self, max_changes: int) -> Counter[str]:
        """Perform `max_changes` operations (0: until `stop` is set); returns this call's counts by kind."""
        counts: Counter[str] = Counter()
        while not self.stop.is_set() and (max_changes == 0 or sum(counts.values()) < max_changes):
            conn = self.connection()
            if conn is None:
                break
            kind = choose(self.rng)
            try:
                outcome = self._execute(conn, kind)
            except _ConnectionLost as lost:
                self._lost(lost.__cause__ or lost)
                continue
            counts[outcome.kind] += 1
            self.counts[outcome.kind] += 1
            self.performed += 1
            log.log(logging.INFO if self.verbose else logging.DEBUG, "op %d %s: %s",
                    self.performed, outcome.kind, outcome.detail)
            if max_changes == 0 or sum(counts.values()) < max_changes:
                self.stop.wait(self.interval_rng.uniform(self.min_interval, self.max_interval))
        return counts

    def summary(self, elapsed: float) -> str:
        kinds = " ".join(f"{k}={self.counts.get(k, 0)}" for k in OPERATIONS)
        return (f"summary: {self.performed} operations in {elapsed:.1f}s: {kinds}; "
                f"{self.retried} retried, {self.reconnects} reconnects")


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set `stop` (the loop finishes its transaction and ends) instead of killing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            log.info("%s: stopping after the current operation", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _validate(db_type: str | None, port: int | None, max_changes: int, min_interval: float, max_interval: float,
              max_disconnected: float) -> None:
    if db_type is not None and db_type not in SOURCE_TYPES:
        raise UsageError(f"--db-type {db_type}: must be one of {', '.join(SOURCE_TYPES)}")
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"--port {port}: not a TCP port")
    if max_changes < 0:
        raise UsageError(f"--max-changes {max_changes}: must be 0 (run until stopped) or more")
    if min_interval < 0 or max_interval < 0:
        raise UsageError("--min-interval and --max-interval must not be negative")
    if min_interval > max_interval:
        raise UsageError(f"--min-interval {min_interval:g} is larger than --max-interval {max_interval:g}")
    if max_disconnected < 0:
        raise UsageError("--max-disconnected must not be negative")


def run_simulator(
    *,
    host: str | None,
    port: int | None,
    database: str | None,
    credential: str | None,
    create_tables: bool,
    max_changes: int,
    min_interval: float,
    max_interval: float,
    seed: int | None,
    max_disconnected: float,
    verbose: bool,
    db_type: str | None = None,
    model: ModelRef | None = None,
) -> None:
    """`datasurface-job simulate` (docs/cli.md). Raises DataSurfaceError on failure.
    `port` None: the model's, else the backend's default (5432, or 3306 for MySQL); `db_type` None: the
    model store's source type, else postgres. `model`: take what the flags leave out from a store of it."""
    _validate(db_type, port, max_changes, min_interval, max_interval, max_disconnected)
    target = resolve_target(model=model, db_type=db_type, host=host, port=port, database=database,
                            credential=credential)
    backend = backend_for(target.db_type)
    cred = resolve(target.credential)
    _setup_logging()
    stop = threading.Event()
    sim = Simulator(Endpoint(target.host, backend.default_port if target.port is None else target.port,
                             target.database), cred,
                    min_interval=min_interval, max_interval=max_interval, seed=seed,
                    max_disconnected=max_disconnected, verbose=verbose, stop=stop, backend=backend,
                    schema=target.schema)
    started = time.monotonic()
    log.info("simulating changes in %s %s%s%s as %s (seed %d, %s)", backend.name, sim.endpoint.describe(),
             f" schema {target.schema}" if target.schema else "", f" (store {model.store})" if model else "", cred.user,
             sim.seed,
             f"{max_changes} operations" if max_changes else "until SIGTERM/SIGINT")
    try:
        with _stop_on_signals(stop):
            if create_tables:
                sim.create_tables()
            sim.run(max_changes)
    except DataSurfaceError:
        raise
    except backend.error as exc:  # anything the loop did not classify: still one line, no traceback
        raise DatabaseError(backend.message(exc)) from exc
    finally:
        sim.close()
        log.info("%s", sim.summary(time.monotonic() - started))
