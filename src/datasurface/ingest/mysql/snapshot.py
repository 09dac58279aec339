"""The snapshot of a MySQL / MariaDB source, and each dataset's read into the merge side's COPY.

- Snapshot: `START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY` under REPEATABLE READ: every dataset
  of a batch is read in that one InnoDB read view. `snapshot_at` is the server's UTC clock right after it.
- Reads: PyMySQL's unbuffered cursor (`SSCursor`) on the session's own DBAPI connection (under
  SQLAlchemy's, inside the snapshot's transaction), `fetchmany` in bounded batches, written straight into
  the merge side's `COPY ... FROM STDIN` in its text format (MySQL has no COPY), encoded a column at a
  time with `str` methods in C (`_CopyRows`): no Python code runs per row, only per column of a batch.
  Integers, decimals, doubles, dates and date-times are not converted at all: the server's own text of
  each value is what PostgreSQL parses into exactly the value PyMySQL would have built (a zero date stays
  the text PostgreSQL refuses). Only bytea and time columns get per-value work. A thread reads and
  encodes ahead of the COPY, by at most AHEAD_BYTES: memory is a few batches, whatever the table size.
"""

from __future__ import annotations

import collections
import datetime
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from typing import Any

from psycopg2 import sql
from pymysql.constants import FIELD_TYPE
from pymysql.cursors import SSCursor

from datasurface import interrupts
from datasurface.db import PgConnection, idents
from datasurface.errors import DatabaseError, DataSurfaceError, SnapshotError
from datasurface.faults import killpoint
from datasurface.ingest.mysql import types
from datasurface.merge.layout import DatasetLayout
from datasurface.merge.staging import create_staging, staging_error
from datasurface.model import Dataset, Store
from datasurface.mysqldb import driver_message, quote

log = logging.getLogger(__name__)

BATCH_ROWS = 5000  # rows per fetch from the server-side cursor: memory is one batch
# result types read as the server's text, unconverted (see `_read`); `time` keeps PyMySQL's timedelta
AS_TEXT = frozenset({FIELD_TYPE.TINY, FIELD_TYPE.SHORT, FIELD_TYPE.INT24, FIELD_TYPE.LONG, FIELD_TYPE.LONGLONG,
                     FIELD_TYPE.DECIMAL, FIELD_TYPE.NEWDECIMAL, FIELD_TYPE.FLOAT, FIELD_TYPE.DOUBLE,
                     FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE, FIELD_TYPE.DATETIME, FIELD_TYPE.TIMESTAMP})
CHUNK = 1 << 16
AHEAD_BYTES = 2 << 20  # encoded bytes the reading thread may be ahead of the COPY (at least one batch)
FINISH_WAIT = 5.0  # seconds a failed COPY waits for the reading thread before it drops the source's connection


class MySqlSnapshot:
    """The snapshot side of a MySQL source's session (`MySqlSource`): begin, copy datasets, end."""

    loads_directly = True

    def __init__(self, store: Store, engine: Any, conn: Any, name: str):
        self.store = store
        self.engine = engine
        self.conn = conn  # an SQLAlchemy Connection in AUTOCOMMIT: transactions are ours, explicit
        self.name = name  # the source in messages (`MySQL host:port/database`)
        self.types: dict[str, dict[str, types.MySqlType]] = {}  # dataset -> column -> source type, by the check

    # ---- the snapshot --------------------------------------------------------------------------

    def begin_snapshot(self) -> datetime.datetime:
        try:
            if self.conn.invalidated:  # dropped by a failed copy: a retried staging step reconnects
                self.conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self.conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            self.conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            at = self.conn.exec_driver_sql("SELECT UTC_TIMESTAMP(6)").scalar()
        except Exception as exc:
            raise DatabaseError(f"starting the snapshot on {self.name}: {driver_message(exc)}") from exc
        return at.replace(tzinfo=datetime.UTC)  # type: ignore[no-any-return]

    def end_snapshot(self) -> None:
        with suppress(Exception):
            self.conn.exec_driver_sql("ROLLBACK")  # read-only: nothing to keep

    def copy_dataset(self, merge: PgConnection, layout: DatasetLayout, load_batch: int | None = None) -> int:
        """Stream one source table into its (fresh) staging table or, for a first load (`load_batch`), into
        the merge table with the batch's columns; returns the number of rows. The rows are read and written
        once either way: a load straight into the merge table saves copying them from staging.

        Values PostgreSQL cannot hold (a zero date, a tinyint(1) of 2, a time of 100:00:00) make its COPY
        fail, and `_diagnose` then names the first such row by its key."""
        started = time.monotonic()
        into = layout.staging
        extra: tuple[tuple[str, int], ...] = ()  # a first load's batch columns and their values
        if load_batch is None:
            create_staging(merge, layout)
        else:
            into, extra = layout.table, layout.batch_values(load_batch)
        table = f"{quote(self.store.source.database)}.{quote(layout.dataset.table)}"
        kinds = self._column_kinds(layout.dataset)
        # a float column is read as the double it converts to exactly (MySQL prints a float's text rounded)
        exprs = [f"({quote(c.source_name)} + 0e0)" if kind == "float" else quote(c.source_name)
                 for c, kind in zip(layout.dataset.columns, kinds, strict=True)]
        select = f"SELECT {', '.join(exprs)} FROM {table}"  # noqa: S608 - quoted identifiers of the model
        # the text format (tab-separated, NULL is \N); staging, created in this transaction, with FREEZE (as
        # postgres/snapshot.py: the diff's first read would otherwise dirty and write back all of its pages)
        copy_in = sql.SQL("COPY {} ({}) FROM STDIN{}").format(
            layout.qualified(into), idents((*layout.columns, *(name for name, _ in extra))),
            sql.SQL(" (FREEZE)" if load_batch is None else "")).as_string(merge)
        cursor = None
        try:
            cursor = self._read(select, layout)
            # the server's number and date text needs no escaping; bytea and time are made COPY text
            escaped = [i for i, (desc, kind) in enumerate(zip(cursor.description, kinds, strict=True))
                       if desc[1] not in AS_TEXT and kind not in _TRANSFORMS]
            with merge.cursor() as cur:
                # `timestamp` columns are read in the session time zone +00:00: UTC, for timestamptz
                cur.execute("SET LOCAL TimeZone = 'UTC'")
                interrupted_before = interrupts.count()
                reader = _CopyRows(self._batches(cursor, layout), _transforms(kinds), escaped,
                                   tuple(value for _, value in extra))
                try:
                    cur.copy_expert(copy_in, reader, size=CHUNK)
                except Exception:
                    interrupts.raise_if_interrupted(interrupted_before)  # Ctrl-C inside a read
                    raise
                finally:
                    reader.finish(FINISH_WAIT)
            cursor.close()
        except BaseException as exc:
            # the unread rest of the result would be drained on close: drop the connection instead (also when
            # the run is interrupted: Ctrl-C, SIGTERM's KeyboardInterrupt-like exits)
            with suppress(Exception):
                self.conn.invalidate()
            if cursor is not None:  # its result went with the connection: nothing to drain when it is collected
                cursor.connection = None
                # nor by the result itself: collected later (by the reading thread's end, or at exit), an active
                # unbuffered result reads its rest from the closed socket and prints a traceback to stderr
                result = getattr(cursor, "_result", None)
                if result is not None:
                    result.unbuffered_active = False
            if isinstance(exc, DataSurfaceError) or not isinstance(exc, Exception):  # the source's read failed
                raise
            raise (self._diagnose(layout, kinds) or staging_error(layout, exc, load_batch)) from exc
        killpoint(f"ingest:{layout.dataset.name}:copied")
        log.info("snapshot %s: %s rows in %.1fs", layout.dataset.name, f"{reader.rows:,}", time.monotonic() - started)
        return reader.rows

    def _column_kinds(self, dataset: Dataset) -> list[str]:
        """How each column's values are turned into COPY text (see _TRANSFORMS); after `check`."""
        reflected = self.types[dataset.name]
        kinds = []
        for col in dataset.columns:
            src = reflected[col.source_name]
            if src.name == "float":
                kinds.append("float")
            elif col.type == "boolean":
                kinds.append("boolean")
            elif src.name in ("date", "datetime", "timestamp", "time"):
                kinds.append(src.name)
            elif col.type == "bytea":
                kinds.append("bytea")
            elif src.name in ("char", "varchar", *types.TEXT_TYPES):
                kinds.append("text")
            else:
                kinds.append("plain")
        return kinds

    def _read(self, select: str, layout: DatasetLayout) -> Any:
        """The executed SELECT on an unbuffered cursor of the session's DBAPI connection (no SQLAlchemy
        `Row` per row), inside the snapshot's transaction.

        The values of the AS_TEXT types stay the server's text: PyMySQL picks each result column's
        converter from the connection's `decoders` when it reads the result's column descriptions (during
        `execute`), so they are left out of it for this one statement. Each such text is exactly the value
        PyMySQL would build (int, Decimal, the double of a float's repr, date, datetime), and PostgreSQL
        parses it into the same value; the csv writer then has only strings to write."""
        try:
            raw = self.conn.connection.dbapi_connection
            cursor = raw.cursor(SSCursor)
            decoders = raw.decoders
            raw.decoders = {code: conv for code, conv in decoders.items() if code not in AS_TEXT}
            try:
                cursor.execute(select)
            finally:
                raw.decoders = decoders
        except Exception as exc:
            raise self._read_error(layout, exc) from exc
        return cursor

    def _batches(self, cursor: Any, layout: DatasetLayout) -> Iterator[Sequence[Any]]:
        """The result's rows, BATCH_ROWS at a time."""
        try:
            first = True
            while batch := cursor.fetchmany(BATCH_ROWS):
                yield batch
                if first:
                    killpoint(f"ingest:{layout.dataset.name}:reading")
                    first = False
        except GeneratorExit:
            raise
        except Exception as exc:
            raise self._read_error(layout, exc) from exc

    def _read_error(self, layout: DatasetLayout, exc: BaseException) -> SnapshotError:
        return SnapshotError(f"reading source table {layout.dataset.table} from {self.name}: "
                             f"{driver_message(exc)}")

    def _diagnose(self, layout: DatasetLayout, kinds: list[str]) -> SnapshotError | None:
        """After a failed COPY: the first row holding a value PostgreSQL cannot hold, named by its key
        (read on a fresh connection: the snapshot's one is gone)."""
        keys = ", ".join(quote(layout.dataset.column(k).source_name) for k in layout.key)
        table = f"{quote(self.store.source.database)}.{quote(layout.dataset.table)}"
        try:
            with self.engine.connect() as conn:
                for col, kind in zip(layout.dataset.columns, kinds, strict=True):
                    test, why = _INVALID.get(kind, ("", ""))
                    if not test:
                        continue
                    column, c = col.name, quote(col.source_name)
                    row = conn.exec_driver_sql(
                        f"SELECT {keys}, CAST({c} AS CHAR) FROM {table} "  # noqa: S608 - quoted identifiers
                        f"WHERE {c} IS NOT NULL AND ({test.format(c=c)}) LIMIT 1").first()
                    if row is not None:
                        key = ", ".join(str(v) for v in row[:-1])
                        return SnapshotError(
                            f"source table {layout.dataset.table} (dataset {layout.dataset.name}), key "
                            f"({', '.join(layout.key)})=({key}): column {column!r} holds {row[-1]!r}, {why}")
        except Exception as exc:  # the diagnosis is best effort: the COPY's own error is reported then
            log.debug("diagnosing %s: %s", layout.dataset.table, driver_message(exc))
        return None


# kind -> (SQL condition on {c} true for a value PostgreSQL cannot hold, why)
_ZERO_DATE = "MONTH({c}) = 0 OR DAYOFMONTH({c}) = 0"
_INVALID = {
    "date": (_ZERO_DATE, "a zero or invalid date, which PostgreSQL cannot hold"),
    "datetime": (_ZERO_DATE, "a zero or invalid datetime, which PostgreSQL cannot hold"),
    "timestamp": (_ZERO_DATE, "a zero timestamp, which PostgreSQL cannot hold"),
    "boolean": ("{c} NOT IN (0, 1)", "a tinyint(1) that is neither 0 nor 1, so not a boolean"),
    "time": ("{c} < '00:00:00' OR {c} >= '24:00:00'",
             "a time outside 00:00:00..23:59:59.999999 (MySQL's time is also a duration)"),
    "text": ("INSTR({c}, CHAR(0)) > 0", "a NUL character, which PostgreSQL text cannot hold"),
}
DAY = datetime.timedelta(days=1)


def _time(value: datetime.timedelta) -> str:
    """`HH:MM:SS.ffffff` for a time of day; a duration outside one day is left for PostgreSQL to refuse."""
    if not datetime.timedelta(0) <= value < DAY:
        return str(value)
    secs, micros = value.seconds, value.microseconds
    return f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{micros:06d}"


# kind -> what a batch's column of values becomes (None stays None)
_TRANSFORMS: dict[str, Callable[[Sequence[Any]], list[Any]]] = {
    "bytea": lambda col: [None if v is None else "\\\\x" + bytes(v).hex() for v in col],  # COPY text: \\x
    "time": lambda col: [None if v is None else _time(v) for v in col],
}
NULL = "\\N"  # COPY text's NULL
SEP = "\x00"  # joins a column's values to escape them at once: PostgreSQL text cannot hold it either


def _transforms(kinds: list[str]) -> list[tuple[int, Callable[..., Any]]]:
    """The columns whose values need a change: bytea and time."""
    return [(i, _TRANSFORMS[kind]) for i, kind in enumerate(kinds) if kind in _TRANSFORMS]


def _escaped(values: Sequence[Any]) -> list[str]:
    """Strings as COPY text fields: backslash, tab, newline and carriage return escaped. The column is
    joined into one string, escaped by `str.replace` and split again (in C, not a call per value); a value
    holding SEP itself (which PostgreSQL then refuses) is escaped on its own, so no value is ever split."""
    try:
        text = SEP.join(values)
    except TypeError:  # not only strings (no accepted type reads so; still written as their text)
        return [_escape(str(v)) for v in values]
    if text.count(SEP) != len(values) - 1:
        return [_escape(v) for v in values]
    return _escape(text).split(SEP)


def _escape(text: str) -> str:
    for raw, escaped in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
        if raw in text:
            text = text.replace(raw, escaped)
    return text


def _escape_column(col: Sequence[Any]) -> list[Any]:
    """A text column's values escaped, its NULLs kept as None."""
    if None not in col:
        return _escaped(col)
    done = iter(_escaped([v for v in col if v is not None]))
    return [None if v is None else next(done) for v in col]


class _CopyRows(io.RawIOBase):
    """A readable file of the rows as PostgreSQL's COPY text format, for psycopg2's copy_expert (which pulls
    from it), read and encoded by a thread of its own up to AHEAD_BYTES ahead of the COPY (or one batch, if
    a batch is larger: memory stays a few batches, whatever the rows' width).

    The thread keeps reading from the source while the merge server is busy with the rows it has (psycopg2
    sends them without the GIL), and the COPY keeps sending while the thread waits for the source: on a
    merge server that writes a logged, indexed table the two sides take turns otherwise. Whatever the
    thread raises is raised by `read`, in the COPY; `finish` stops it and waits for it.

    Each batch is encoded column by column: the columns that need a change are transformed (`_TRANSFORMS`),
    the text ones escaped (`_escaped`), a column's NULLs become `\\N` (only in a column that holds one,
    found by a scan in C), and the rows are joined by `"\\t".join` mapped over them: no Python code runs
    per row. The values of the server's own number and date text (AS_TEXT) need no escaping."""

    def __init__(self, batches: Iterator[Sequence[Any]], transforms: list[tuple[int, Callable[..., Any]]],
                 escaped: list[int], extra: tuple[int, ...] = ()):
        super().__init__()
        self.batches = batches
        self.transforms = transforms
        self.escaped = escaped  # the text columns (by position)
        self.extra = tuple(str(int(v)) for v in extra)  # values appended to every row (a first load's batch columns)
        self.buffer = b""  # COPY bytes not yet read, from `self.pos`
        self.pos = 0
        self.rows = 0
        self.done = False
        self.ahead: collections.deque[bytes | BaseException | None] = collections.deque()  # made, not yet read
        self.ahead_bytes = 0
        self.turn = threading.Condition()  # a chunk was made or taken
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="mysql-read", daemon=True)
        self.thread.start()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self.done and (size < 0 or len(self.buffer) - self.pos < size):
            with self.turn:
                while not self.ahead:
                    self.turn.wait()
                chunk = self.ahead.popleft()
                if isinstance(chunk, bytes):
                    self.ahead_bytes -= len(chunk)
                self.turn.notify()
            if isinstance(chunk, BaseException):
                self.done = True
                raise chunk
            if chunk is None:
                self.done = True
                break
            self.buffer = self.buffer[self.pos:] + chunk
            self.pos = 0
        end = len(self.buffer) if size < 0 else min(len(self.buffer), self.pos + size)
        out = self.buffer[self.pos:end]
        self.pos = end
        return out

    def finish(self, wait: float | None = None) -> None:
        """Stop the thread (it is done already when the COPY read everything) and wait for it; `wait`: at
        most that many seconds (a thread blocked on a silent source ends with its connection)."""
        self.stop.set()
        with self.turn:
            self.turn.notify_all()
        self.thread.join(wait)

    def _produce(self) -> None:
        try:
            for batch in self.batches:
                if not self._put(self._encode(batch)):
                    return
            self._put(None)
        except BaseException as exc:  # raised again by `read`, in the COPY
            self._put(exc)

    def _put(self, item: bytes | BaseException | None) -> bool:
        """Queue `item` once it fits into AHEAD_BYTES (or nothing else is queued), unless the reader stopped
        (the COPY failed or was interrupted): False then."""
        size = len(item) if isinstance(item, bytes) else 0
        with self.turn:
            while self.ahead and self.ahead_bytes + size > AHEAD_BYTES and not self.stop.is_set():
                self.turn.wait(0.1)
            if self.stop.is_set():
                return False
            self.ahead.append(item)
            self.ahead_bytes += size
            self.turn.notify()
        return True

    def _encode(self, batch: Sequence[Any]) -> bytes:
        n = len(batch)
        self.rows += n
        columns: list[Sequence[Any]] = list(zip(*batch, strict=True))
        for i, transform in self.transforms:
            columns[i] = transform(columns[i])
        for i in self.escaped:
            columns[i] = _escape_column(columns[i])
        for i, col in enumerate(columns):
            if None in col:
                columns[i] = [NULL if v is None else v for v in col]
        columns += [(value,) * n for value in self.extra]
        return ("\n".join(map("\t".join, zip(*columns, strict=True))) + "\n").encode()
