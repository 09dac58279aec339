"""The source side of change data capture: the store's publication and replication slot, and its changes
read into the merge database's change table.

Changes are read with `pg_logical_slot_peek_binary_changes`, which leaves the slot where it is: the slot is
advanced (`pg_replication_slot_advance`) only after the batch holding the changes has committed in the
merge database. Reading and advancing are two plain SQL calls on the run's ordinary source session (no
replication connection, no `replication` line in pg_hba.conf), and a run killed between them leaves the
slot behind the ledger, which the next run notices and advances. Rows stream from the source's COPY through
the decoder into the merge side's binary COPY: memory stays flat whatever the size of a source transaction.
"""

from __future__ import annotations

import datetime
import logging
import secrets
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import BinaryIO, NamedTuple

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import cursor

from datasurface.cdc.pgoutput import (
    NULL_ELEMENT,
    UNCHANGED,
    DecodeError,
    Decoder,
    Element,
    Relation,
    format_lsn,
    parse_lsn,
)
from datasurface.db import PgConnection, first_line
from datasurface.errors import DataSurfaceError
from datasurface.faults import killpoint
from datasurface.merge.changes import COPY_COLUMNS
from datasurface.model import Dataset, Store
from datasurface.pipe import PIPE_CHUNK, PipeError, copy_through_pipe
from datasurface.sessions import APP_PREFIX

log = logging.getLogger(__name__)

MARKER = "datasurface"  # the prefix of the logical message that marks where a batch ends


class CaptureError(DataSurfaceError):
    """The source cannot serve change data capture as it is configured; the message says what to change."""


def slot_name(platform_schema: str, store: str) -> str:
    """`ds_<platform lower>_<store lower>`: one slot per platform and store."""
    return f"ds_{platform_schema.lower()}_{store.lower()}"


def slot_prefix(platform_schema: str) -> str:
    return f"ds_{platform_schema.lower()}_"


class _Table(NamedTuple):
    relkind: str | None  # None: no such table
    identity: str | None  # relreplident: d(efault), i(ndex), f(ull), n(othing)
    columns: list[str]  # the columns of the replica identity's index


class _Facts(NamedTuple):
    """What the source says about change capture for a store (Capture._facts)."""

    wal_level: str
    role: str
    replication: bool
    pub_exists: bool
    pub_all_kinds: bool  # publishes inserts, updates, deletes and truncates
    pub_via_root: bool
    published: set[str]  # the store's schema's tables the publication holds
    tables: list[_Table]  # per dataset, in order


# a slot's row: confirmed_flush_lsn, lost, retained bytes, whether it is this database's, its database, plugin
_SLOT_COLUMNS = """s.confirmed_flush_lsn::text, s.wal_status = 'lost' OR (s.restart_lsn IS NULL),
                   pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint,
                   s.database = current_database(), s.database::text, s.plugin::text"""


class SlotState(NamedTuple):
    confirmed: int | None  # where the next peek starts: every commit before it has been merged
    lost: bool  # invalidated: the WAL it needed was removed (wal_status = lost)
    retained_bytes: int | None  # WAL the slot keeps on the source


# Everything the checks look at, in one row: the server's and the role's settings, the publication, and per
# table its kind, its replica identity (the setting and the columns of its index) and whether the publication
# holds it (the columns of _Facts, in order)
_FACTS = """SELECT current_setting('wal_level') AS wal_level, current_user::text AS role,
                  r.rolreplication OR r.rolsuper AS replication, p.oid IS NOT NULL AS pub_exists,
                  p.pubinsert AND p.pubupdate AND p.pubdelete AND p.pubtruncate AS pub_all_kinds,
                  p.pubviaroot AS pub_via_root,
                  ARRAY(SELECT c.relname::text FROM pg_get_publication_tables(p.pubname::text) g
                          JOIN pg_class c ON c.oid = g.relid
                         WHERE p.oid IS NOT NULL AND c.relnamespace = to_regnamespace(quote_ident(%(schema)s)))
                    AS published,
                  (SELECT json_agg(json_build_array(c.relkind, c.relreplident, ARRAY(
                            SELECT a.attname::text FROM pg_index i
                              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                             WHERE i.indrelid = c.oid
                               AND CASE c.relreplident WHEN 'd' THEN i.indisprimary
                                                       WHEN 'i' THEN i.indisreplident ELSE false END))
                            ORDER BY t.n)
                     FROM unnest(%(tables)s::text[]) WITH ORDINALITY t(name, n)
                     LEFT JOIN pg_class c ON c.oid = to_regclass(format('%%I.%%I', %(schema)s::text, t.name)))
                    AS tables
             FROM pg_roles r LEFT JOIN pg_publication p ON p.pubname = %(publication)s
            WHERE r.rolname = current_user"""


class Begun(NamedTuple):
    """A change batch's start on the source (Capture.check)."""

    state: SlotState | None  # the slot (None: there is none)
    fixed_at: datetime.datetime  # the source's clock when the batch's end was fixed
    repaired: list[str]  # tables the publication lacked until now: their changes so far are not in the slot


class Capture:
    """One store's changes on its source session (`conn`)."""

    def __init__(self, conn: PgConnection, store: Store, platform_schema: str):
        self.conn = conn
        self.store = store
        self.slot = slot_name(platform_schema, store.name)
        self.publication = store.source.publication
        self.marker = f"{self.slot} {secrets.token_hex(8)}"  # this run's: the batch ends at its commit

    # --- requirements, and the batch's start -----------------------------------------------------------

    def check(self, datasets: Sequence[Dataset], timeout: float) -> Begun:
        """Refuse, in one line saying what to change, a source that cannot serve this store's changes; create
        or complete the publication where the role may; and fix where the batch's changes end. One round trip
        (one statement, no transaction block around it), unless the publication must change or a killed run's
        session still reads the slot (`release` waits up to `timeout` seconds for it to go).

        The end is a marker transaction (a logical message of this run's own content), committed and flushed by
        the same statement: the batch holds every transaction committed up to the marker's commit, and none
        after it, however long the batch takes to open. Decoding reads flushed WAL only, and a server with
        asynchronous commits flushes a commit later than it acknowledges it; the marker's flushed commit is a
        record boundary every earlier commit precedes. The session's text settings for the decoder are set on
        the way. A batch that then takes a snapshot (or finishes a staged one) leaves an unread marker behind:
        the next read skips it like any message."""
        settings = sql.SQL(", ").join(sql.SQL("set_config({}, {}, false)").format(sql.Literal(k), sql.Literal(v))
                                      for k, v in _TEXT_SETTINGS)
        begin = sql.SQL(
            "SELECT {slot}, s.active_pid <> pg_backend_pid(), "
            "CASE WHEN s.active_pid <> pg_backend_pid() THEN CASE WHEN (SELECT a.application_name FROM "
            "pg_stat_get_activity(s.active_pid) a) LIKE %(app)s THEN pg_terminate_backend(s.active_pid) END END, "
            "set_config('synchronous_commit', 'local', true), {settings}, "
            "CASE WHEN f.wal_level = 'logical' AND f.replication THEN pg_logical_emit_message(true, %(marker)s, "
            "%(content)s) END, clock_timestamp() "
            "FROM (VALUES (1)) one (x) LEFT JOIN pg_replication_slots s ON s.slot_name = %(slot)s").format(
            slot=sql.SQL(_SLOT_COLUMNS), settings=settings)
        with self._single() as cur:
            cur.execute(sql.SQL("SELECT * FROM ({}) f CROSS JOIN LATERAL ({}) b").format(sql.SQL(_FACTS), begin),
                        {**self._facts_parameters(datasets), "app": f"{APP_PREFIX} %", "marker": MARKER,
                         "content": self.marker, "slot": self.slot})
            row = cur.fetchone()
            assert row is not None
            facts = self._facts_of(row[:len(_Facts._fields)])
            self._refuse(facts, datasets)
            repaired = self._ensure_publication(facts, datasets, f"store {self.store.name} (ingestion: cdc)")
        slot_row = row[len(_Facts._fields):]
        at: datetime.datetime = slot_row[-1]
        if slot_row[6]:  # held by another session: wait for it to go (a killed run's), then read the slot again
            self.release(timeout)
            return Begun(self.state(), at, repaired)
        return Begun(self._state(slot_row), at, repaired)

    def requirements(self, datasets: Sequence[Dataset]) -> None:
        """The checks that change nothing: wal_level, the REPLICATION attribute, each table's replica identity."""
        with self.conn.cursor() as cur:
            cur.execute(_FACTS, self._facts_parameters(datasets))
            row = cur.fetchone()
        assert row is not None
        self._refuse(self._facts_of(row), datasets)
        self.conn.rollback()

    def _facts_parameters(self, datasets: Sequence[Dataset]) -> dict[str, object]:
        return {"schema": self.store.source.schema, "tables": [d.table for d in datasets],
                "publication": self.publication}

    @staticmethod
    def _facts_of(row: Sequence[object]) -> _Facts:
        tables = [_Table(*t) for t in row[7] or []]  # type: ignore[attr-defined]
        return _Facts(str(row[0]), str(row[1]), bool(row[2]), bool(row[3]), bool(row[4]), bool(row[5]),
                      set(row[6]), tables)  # type: ignore[call-overload]

    def _refuse(self, facts: _Facts, datasets: Sequence[Dataset]) -> None:
        where = f"store {self.store.name} (ingestion: cdc)"
        if facts.wal_level != "logical":
            raise CaptureError(f"{where}: the source has wal_level = {facts.wal_level}; change data capture needs "
                               "`ALTER SYSTEM SET wal_level = logical` and a restart of the source server")
        if not facts.replication:
            raise CaptureError(f"{where}: role {facts.role} may not read replication slots; run "
                               f"`ALTER ROLE {self._quoted(facts.role)} REPLICATION`")
        for dataset, table in zip(datasets, facts.tables, strict=True):
            self._check_kind(dataset, table, where)
            self._check_identity(dataset, table, where)

    def _check_kind(self, dataset: Dataset, table: _Table, where: str) -> None:
        """Only tables have changes to read: a view or materialized view is read by snapshots."""
        if table.relkind in ("v", "m"):
            kind = "a view" if table.relkind == "v" else "a materialized view"
            raise CaptureError(f"{where}: source table {self.store.source.schema}.{dataset.table} is {kind}, whose "
                               "changes cannot be captured; read it with `ingestion: snapshot` in a store of its own")

    def _quoted(self, *names: str) -> str:
        return sql.Identifier(*names).as_string(self.conn)

    def _table(self, dataset: Dataset) -> str:
        return self._quoted(self.store.source.schema, dataset.table)

    def _check_identity(self, dataset: Dataset, table: _Table, where: str) -> None:
        """Deletes and key changes carry the row's replica identity only: it must hold the model's key."""
        if table.relkind is None:
            return  # a missing table is the source check's to report
        setting, columns = str(table.identity), table.columns
        if setting == "f" or {dataset.column(k).source_name for k in dataset.primary_key} <= set(columns):
            return
        has = {"n": "no replica identity", "d": "a replica identity (its primary key) of "
               f"({', '.join(columns) or 'none'})", "i": f"a replica identity index on ({', '.join(columns)})"}
        raise CaptureError(
            f"{where}: source table {self.store.source.schema}.{dataset.table} has {has.get(setting, setting)}, "
            f"which does not hold the model's primary key ({', '.join(dataset.primary_key)}): its deletes could "
            f"not be told apart; run `ALTER TABLE {self._table(dataset)} REPLICA IDENTITY FULL`")

    def _ensure_publication(self, facts: _Facts, datasets: Sequence[Dataset], where: str) -> list[str]:
        """Create the publication, or add the tables it lacks, where the role may; the tables it lacked."""
        schema = self.store.source.schema
        missing = [d for d in datasets if d.table not in facts.published]
        tables = sql.SQL(", ").join(sql.Identifier(schema, d.table) for d in missing)
        pub = sql.Identifier(self.publication)
        if facts.pub_exists and not facts.pub_all_kinds:
            raise CaptureError(f"{where}: publication {self.publication} does not publish every kind of change; run "
                               f"`ALTER PUBLICATION {self._quoted(self.publication)} SET (publish = 'insert, update, "
                               "delete, truncate')`")
        partitioned = any(t.relkind == "p" for t in facts.tables)
        if facts.pub_exists and not facts.pub_via_root and partitioned:  # its changes would name its partitions
            raise CaptureError(f"{where}: publication {self.publication} publishes the changes of a partitioned "
                               "table under its partitions' names; run `ALTER PUBLICATION "
                               f"{self._quoted(self.publication)} SET (publish_via_partition_root = true)`")
        if not missing:
            return []
        statement = (sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)")
                     if not facts.pub_exists
                     else sql.SQL("ALTER PUBLICATION {} ADD TABLE {}")).format(pub, tables)
        try:
            with self.conn.cursor() as cur:
                cur.execute(statement)
        except psycopg2.errors.InsufficientPrivilege as exc:
            with suppress(psycopg2.Error):
                self.conn.rollback()
            raise CaptureError(f"{where}: publication {self.publication} lacks "
                               f"{', '.join(d.table for d in missing)} and role may not change it ({first_line(exc)}); "
                               f"have its owner run `{statement.as_string(self.conn)}`") from None
        log.info("%s: %s", where, statement.as_string(self.conn))
        return [d.table for d in missing]

    # --- the slot -----------------------------------------------------------------------------------

    def state(self) -> SlotState | None:
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT {} FROM pg_replication_slots s WHERE slot_name = %s").format(
                sql.SQL(_SLOT_COLUMNS)), (self.slot,))
            row = cur.fetchone()
        self.conn.commit()
        return self._state(row)

    def _state(self, row: Sequence[object] | None) -> SlotState | None:
        """A SlotState of the `_SLOT_COLUMNS` of the slot's row; None: no slot."""
        if row is None or row[4] is None:
            return None
        if not row[3] or row[5] != "pgoutput":  # slot names are the server's: another database may hold it
            raise CaptureError(f"store {self.store.name}: replication slot {self.slot} on the source belongs to "
                               f"database {row[4]} ({row[5]}), not to {self.store.source.database}: two platforms "
                               "of the same name read this server; rename one, or drop the slot if it is stale")
        return SlotState(parse_lsn(str(row[0])) if row[0] else None, bool(row[1]), row[2])  # type: ignore[arg-type]

    @contextmanager
    def _single(self) -> Iterator[cursor]:
        """A cursor whose statements each commit on their own: no BEGIN and COMMIT round trips around a
        statement that is a transaction of its own."""
        self.conn.autocommit = True
        try:
            with self.conn.cursor() as cur:
                yield cur
        finally:
            with suppress(psycopg2.Error):  # a lost session keeps its own error
                self.conn.autocommit = False

    def release(self, timeout: float) -> None:
        """Wait, up to `timeout` seconds, until no other session reads the slot. The run holds the stream's
        lock, so a job's session still reading it is a killed run's, whose backend goes on decoding until it
        notices its client is gone: it is ended. Anything else holding the slot is named."""
        deadline = time.monotonic() + timeout
        while True:
            with self.conn.cursor() as cur:
                cur.execute("""SELECT s.active_pid, a.application_name,
                                      CASE WHEN a.application_name LIKE %s THEN pg_terminate_backend(s.active_pid) END
                                 FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid
                                WHERE s.slot_name = %s AND s.active_pid IS NOT NULL
                                  AND s.active_pid <> pg_backend_pid()""", (f"{APP_PREFIX} %", self.slot))
                row = cur.fetchone()
            self.conn.commit()
            if row is None:
                return
            if time.monotonic() > deadline:
                raise CaptureError(f"store {self.store.name}: replication slot {self.slot} is in use by process "
                                   f"{row[0]} ({row[1] or 'not a session of this job'}) on the source")
            time.sleep(0.1)

    def create(self, timeout: float) -> int:
        """Create the slot; where it starts (every change committed after it is decoded). Creating waits for the
        transactions running on the source to end: up to `timeout` seconds."""
        with self.conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = %s", (f"{int(timeout * 1000)}ms",))
            cur.execute("SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (self.slot,))
            lsn = parse_lsn(cur.fetchone()[0])  # type: ignore[index]
        self.conn.commit()
        log.info("store %s: replication slot %s created at %s", self.store.name, self.slot, format_lsn(lsn))
        return lsn

    def drop(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                        (self.slot,))
        self.conn.commit()

    def advance(self, lsn: int) -> None:
        """Give the source back the WAL of every change up to `lsn`: they are merged."""
        with self._single() as cur:
            cur.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, format_lsn(lsn)))

    # --- the changes --------------------------------------------------------------------------------

    def copy_changes(self, merge: PgConnection, target: sql.Composable, datasets: Sequence[Dataset],
                     prepare: Callable[[], None]) -> tuple[dict[str, int], int]:
        """Stream every change committed up to this run's marker (`check`) into `target` (the batch's change
        table, made by `prepare()` once there is a change row: a batch without changes makes nothing on the
        merge side); the change rows per dataset and the batch's end: the end of the marker's commit."""
        encoder = _Encoder(self.store.source.schema, datasets, self.marker)
        out_sql = sql.SQL(
            "COPY (SELECT lsn, data FROM pg_logical_slot_peek_binary_changes({}, pg_current_wal_flush_lsn(), NULL, "
            "'proto_version', '1', 'publication_names', {}, 'messages', 'true')) TO STDOUT (FORMAT binary)").format(
            sql.Literal(self.slot),
            sql.Literal(sql.Identifier(self.publication).as_string(self.conn))).as_string(self.conn)
        in_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
            target, sql.SQL(", ").join(map(sql.Identifier, COPY_COLUMNS))).as_string(merge)

        def produce(out: BinaryIO) -> None:
            with self.conn.cursor() as cur:
                encoder.out = out
                cur.copy_expert(out_sql, encoder, size=PIPE_CHUNK)
                encoder.finish()

        try:
            with self._single():  # the read is a transaction of its own
                copy_through_pipe(self.conn, produce, merge, in_sql, "cdc-read", prepare)
        except PipeError as exc:
            if isinstance(exc.cause, DataSurfaceError):
                raise exc.cause from None
            side = "reading" if exc.side == "source" else "staging"
            raise CaptureError(f"{side} the changes of slot {self.slot}: {first_line(exc.cause)}") from exc.cause
        if not encoder.ended:
            raise CaptureError(f"the changes of slot {self.slot} lack the batch's own marker transaction")
        killpoint("cdc:copied")
        log.info("changes of store %s up to %s: %s", self.store.name, format_lsn(encoder.last_commit),
                 ", ".join(f"{name} {n:,}" for name, n in encoder.rows.items()))
        return encoder.rows, encoder.last_commit


# the decoder prints values with the session's settings: the text of a snapshot's values (instants in
# UTC, ISO dates, round-tripping floats and intervals)
_TEXT_SETTINGS = (("TimeZone", "UTC"), ("DateStyle", "ISO, YMD"), ("IntervalStyle", "postgres"),
                  ("extra_float_digits", "1"), ("bytea_output", "hex"))
_COPY_HEADER = b"PGCOPY\n\xff\r\n\0" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_TEXT_OID, _INT2_OID = 25, 21
# a change row up to its values' elements: 5 fields; seq (8 bytes); dataset (int2); op ("char", 1 byte);
# unchanged (NULL); vals: its length, then a one-dimensional text[] (flags 0: array_recv reads the NULLs from
# the elements) of n elements from index 1
_ROW = struct.Struct(">hiqihiBiiiiIii")
_ROW_HEAD = struct.Struct(">hiqihiB")  # the same up to op, for a row with an unchanged column
_ARRAY_HEAD = struct.Struct(">iiiIii")  # vals: length, ndim, flags, element type, n, lower bound
_SOURCE_ROW = struct.Struct(">hiqi")  # the source's COPY row: 2 fields, lsn (8 bytes), the message's length
_NULL = struct.pack(">i", -1)
_INSERT, _UPDATE, _DELETE = ord("I"), ord("U"), ord("D")
_ROW_CHANGES = frozenset((_INSERT, _UPDATE, _DELETE))
_NEW, _KEY = ord("N"), ord("K")  # a change's tuple: the new row; a delete's old key
_I32, _U32 = struct.Struct(">i"), struct.Struct(">I")


class _Target(NamedTuple):
    """Where a relation's changes go: the dataset (its index) and where each model column stands in the
    relation's tuples (`identity`: in the model's order, nothing else)."""

    ds: int  # the dataset's index
    dataset: Dataset
    columns: list[int]
    key: list[int]
    identity: bool


class _Encoder:
    """Reads the source's binary COPY of (lsn, message) rows, decodes each message and writes the batch's
    change rows in COPY's binary format: (seq, dataset, op, unchanged columns, values as text[]). A change's
    values are its tuple's columns as they stand in the message (binary array elements, cdc/pgoutput.py)."""

    def __init__(self, schema: str, datasets: Sequence[Dataset], marker: str):
        self.decoder = Decoder()
        self.marker = marker.encode()
        self.at_marker = False  # inside the marker's transaction: its commit ends the batch
        self.ended = False  # past it: what follows belongs to the next batch
        self.tables = {d.table: (i, d) for i, d in enumerate(datasets)}
        self.schema = schema
        self.counts = [0] * len(datasets)
        self.names = [d.name for d in datasets]
        self.seq = 0
        self.last_commit = 0
        self.pending = b""  # the start of a row the last chunk cut
        self.received: list[bytes] = []  # the source's messages not decoded yet
        self.received_bytes = 0
        self.header_read = False
        self.out: object = None
        self._targets: dict[int, tuple[Relation, _Target | None]] = {}
        self._plain: dict[int, tuple[int, int]] = {}  # relation id: (dataset, columns) of a table in the model's order

    @property
    def rows(self) -> dict[str, int]:
        return dict(zip(self.names, self.counts, strict=True))

    # psycopg2 writes the COPY's data here, a call per row: they are decoded a chunk at a time
    def write(self, data: bytes) -> int:
        self.received.append(data)
        self.received_bytes += len(data)
        if self.received_bytes >= PIPE_CHUNK:
            self._decode()
        return len(data)

    def _decode(self) -> None:
        buf = b"".join((self.pending, *self.received))
        self.received, self.received_bytes = [], 0
        pos = 0
        if not self.header_read:
            if len(buf) < 19:
                self.pending = buf
                return
            (ext,) = struct.unpack_from(">i", buf, 15)
            pos = 19 + ext
            self.header_read = True
        parts: list[bytes] = []
        push, source_row, length_at, relid_at, pack = parts.append, _SOURCE_ROW.unpack_from, _I32.unpack_from, \
            _U32.unpack_from, _ROW.pack
        plain, counts, seq = self._plain, self.counts, self.seq
        written = seq > 0  # change rows (and the COPY's header) went out with an earlier chunk
        size = len(buf)
        while size - pos >= 18:
            _, _, lsn, length = source_row(buf, pos)
            start = pos + 18
            end = start + length
            if size < end:
                break
            kind = buf[start]
            known = plain.get(relid_at(buf, start + 1)[0]) if kind in _ROW_CHANGES else None
            if known is not None and buf[start + 5] == (_KEY if kind == _DELETE else _NEW):
                # nearly every change: an insert or update of a table whose columns are the model's, in order
                # (its one tuple), or a delete (the old key's): its columns' text (t) or NULL (n) as the
                # array's elements, in a loop of its own (anything else takes `_change`)
                index, ncols = known
                at = start + 8
                elements: list[bytes] = []
                add = elements.append
                for _ in range(ncols):
                    column = buf[at]
                    if column == 0x74:  # 't'
                        stop = at + 5 + length_at(buf, at + 1)[0]
                        add(buf[at + 1:stop])
                        at = stop
                    elif column == 0x6E:  # 'n'
                        add(NULL_ELEMENT)
                        at += 1
                    else:
                        break
                else:
                    seq += 1
                    counts[index] += 1
                    body = b"".join(elements)
                    push(pack(5, 8, seq, 2, index, 1, kind, -1, 20 + len(body), 1, 0, _TEXT_OID, ncols, 1))
                    push(body)
                    pos = end
                    continue
            self.seq = seq
            if kind in _ROW_CHANGES:
                self._change(buf, start, parts)
            else:
                self._message(lsn, buf, start, parts)
            seq = self.seq
            pos = end
        else:
            if buf[pos:pos + 2] == b"\xff\xff":  # the source's trailer
                pos += 2
        self.seq = seq
        self.pending = buf[pos:]
        if parts:
            if not written:  # the COPY's header, with the first change rows: no rows, no COPY at all
                parts.insert(0, _COPY_HEADER)
            self.out.write(b"".join(parts))  # type: ignore[attr-defined]

    def finish(self) -> None:
        """Decode what is left; the COPY's trailer after the change rows (no rows: no COPY at all)."""
        self._decode()
        if self.pending:
            raise CaptureError("the source's change stream ended inside a row")
        if self.seq:
            self.out.write(_COPY_TRAILER)  # type: ignore[attr-defined]

    def _message(self, lsn: int, data: bytes, start: int, parts: list[bytes]) -> None:
        """A message other than a row change."""
        kind = data[start]
        if kind == 0x43:  # 'C': the row's lsn for a commit is the end of its commit record
            if not self.ended:
                self.last_commit = lsn
                self.ended = self.at_marker
                if self.ended:
                    self._plain.clear()  # every later change takes `_change`, which skips it
        elif kind == 0x52:  # 'R'
            self.decoder.relation(data, start)
            self._plain.pop(_U32.unpack_from(data, start + 1)[0], None)
        elif kind == 0x4D:  # 'M': flags, lsn, prefix, content
            self.at_marker |= self.decoder.message(data, start) == (MARKER, self.marker)
        elif kind == 0x54 and not self.ended:  # 'T'
            for rel in self.decoder.truncated(data, start):
                found = self.tables.get(rel.table) if rel.schema == self.schema else None
                if found is not None:
                    self._emit(parts, found[0], ord("T"), [], [])
        elif kind not in b"BOYT":  # begin, origin, type (and a truncate past the batch): nothing a batch needs
            raise DecodeError(f"pgoutput message of unknown type {chr(kind)!r} at {format_lsn(lsn)}")

    def _target(self, relid: int, relation: Relation) -> _Target | None:
        """The relation's dataset and column positions (None: not one of the store's tables), kept per relation
        id until a Relation message changes it."""
        cached = self._targets.get(relid)
        if cached is not None and cached[0] is relation:
            return cached[1]
        found = self.tables.get(relation.table) if relation.schema == self.schema else None
        if found is None:
            self._targets[relid] = (relation, None)
            return None
        index, dataset = found
        where = {name: i for i, name in enumerate(relation.columns)}
        missing = [c.source_name for c in dataset.columns if c.source_name not in where]
        if missing:
            raise CaptureError(f"changes of {self.schema}.{dataset.table} lack column(s) {', '.join(missing)} of "
                               f"the model (the table changed on the source)")
        columns = [where[c.source_name] for c in dataset.columns]
        target = _Target(index, dataset, columns,
                         [where[dataset.column(k).source_name] for k in dataset.primary_key],
                         columns == list(range(len(relation.columns))))
        self._targets[relid] = (relation, target)
        if target.identity:
            self._plain[relid] = (index, len(columns))
        return target

    def _change(self, data: bytes, start: int, parts: list[bytes]) -> None:
        if self.ended:
            return
        relation, relid, new, old, old_full, left_out = self.decoder.elements(data, start)
        target = self._target(relid, relation)
        if target is None:
            return
        key = target.key
        if new is None or (old is not None and any(old[p] != new[p] for p in key)):  # a delete, or a new key
            assert old is not None
            self._emit(parts, target.ds, _DELETE, [], [old[p] if p in key else NULL_ELEMENT
                                                          for p in target.columns])
            if new is None:
                return
        values = [new[p] for p in target.columns]
        unchanged = []
        for i, value in enumerate(values if left_out else ()):
            if value is UNCHANGED:
                before = old[target.columns[i]] if old is not None and old_full else UNCHANGED
                if before is UNCHANGED:  # the merge side takes it from the row's last known version
                    unchanged.append(i + 1)
                    values[i] = NULL_ELEMENT
                else:
                    values[i] = before
        self._emit(parts, target.ds, data[start], unchanged, values)

    def _emit(self, parts: list[bytes], index: int, op: int, unchanged: list[int], values: list[Element]) -> None:
        self.seq += 1
        self.counts[index] += 1
        body = b"".join(values)  # type: ignore[arg-type]
        if unchanged:
            parts += (_ROW_HEAD.pack(5, 8, self.seq, 2, index, 1, op), _int2_array(unchanged),
                      _ARRAY_HEAD.pack(20 + len(body), 1, 0, _TEXT_OID, len(values), 1), body)
        else:
            parts += (_ROW.pack(5, 8, self.seq, 2, index, 1, op, -1, 20 + len(body), 1, 0, _TEXT_OID, len(values), 1),
                      body)


def _int2_array(items: list[int]) -> bytes:
    body = b"".join(struct.pack(">ih", 2, v) for v in items)
    head = struct.pack(">iiiii", 1, 0, _INT2_OID, len(items), 1)
    return struct.pack(">i", len(head) + len(body)) + head + body
