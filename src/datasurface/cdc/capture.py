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
import struct
import time
from collections.abc import Sequence
from typing import BinaryIO, NamedTuple

import psycopg2
from psycopg2 import sql

from datasurface.cdc.pgoutput import (
    UNCHANGED,
    Change,
    Commit,
    Decoder,
    Relation,
    Truncate,
    Value,
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


class SlotState(NamedTuple):
    confirmed: int | None  # where the next peek starts: every commit before it has been merged
    lost: bool  # invalidated: the WAL it needed was removed (wal_status = lost)
    retained_bytes: int | None  # WAL the slot keeps on the source


class Capture:
    """One store's changes on its source session (`conn`)."""

    def __init__(self, conn: PgConnection, store: Store, platform_schema: str):
        self.conn = conn
        self.store = store
        self.slot = slot_name(platform_schema, store.name)
        self.publication = store.source.publication

    # --- requirements -------------------------------------------------------------------------------

    def check(self, datasets: Sequence[Dataset]) -> None:
        """Refuse, in one line saying what to change, a source that cannot serve this store's changes; create
        or complete the publication where the role may."""
        self.requirements(datasets)
        self._ensure_publication(datasets, f"store {self.store.name} (ingestion: cdc)")
        self.conn.commit()

    def requirements(self, datasets: Sequence[Dataset]) -> None:
        """The checks that change nothing: wal_level, the REPLICATION attribute, each table's replica identity."""
        with self.conn.cursor() as cur:
            cur.execute("""SELECT current_setting('wal_level'), current_user, r.rolreplication OR r.rolsuper
                             FROM pg_roles r WHERE r.rolname = current_user""")
            wal_level, role, replication = cur.fetchone()  # type: ignore[misc]
        where = f"store {self.store.name} (ingestion: cdc)"
        if wal_level != "logical":
            raise CaptureError(f"{where}: the source has wal_level = {wal_level}; change data capture needs "
                               "`ALTER SYSTEM SET wal_level = logical` and a restart of the source server")
        if not replication:
            raise CaptureError(f"{where}: role {role} may not read replication slots; run "
                               f"`ALTER ROLE {self._quoted(role)} REPLICATION`")
        for dataset in datasets:
            self._check_kind(dataset, where)
            self._check_identity(dataset, where)
        self.conn.rollback()

    def _relkind(self, dataset: Dataset) -> str | None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(format('%%I.%%I', %s::text, "
                        "%s::text))", (self.store.source.schema, dataset.table))
            row = cur.fetchone()
        return None if row is None else str(row[0])

    def _check_kind(self, dataset: Dataset, where: str) -> None:
        """Only tables have changes to read: a view or materialized view is read by snapshots."""
        relkind = self._relkind(dataset)
        if relkind in ("v", "m"):
            kind = "a view" if relkind == "v" else "a materialized view"
            raise CaptureError(f"{where}: source table {self.store.source.schema}.{dataset.table} is {kind}, whose "
                               "changes cannot be captured; read it with `ingestion: snapshot` in a store of its own")

    def _quoted(self, *names: str) -> str:
        return sql.Identifier(*names).as_string(self.conn)

    def _table(self, dataset: Dataset) -> str:
        return self._quoted(self.store.source.schema, dataset.table)

    def _check_identity(self, dataset: Dataset, where: str) -> None:
        """Deletes and key changes carry the row's replica identity only: it must hold the model's key."""
        with self.conn.cursor() as cur:
            cur.execute(
                """SELECT c.relreplident,
                          ARRAY(SELECT a.attname::text FROM pg_index i
                                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                                 WHERE i.indrelid = c.oid
                                   AND CASE c.relreplident WHEN 'd' THEN i.indisprimary
                                                           WHEN 'i' THEN i.indisreplident ELSE false END)
                     FROM pg_class c WHERE c.oid = to_regclass(format('%%I.%%I', %s::text, %s::text))""",
                (self.store.source.schema, dataset.table))
            row = cur.fetchone()
        if row is None:
            return  # a missing table is the source check's to report
        setting, columns = row
        if setting == "f" or {dataset.column(k).source_name for k in dataset.primary_key} <= set(columns):
            return
        has = {"n": "no replica identity", "d": "a replica identity (its primary key) of "
               f"({', '.join(columns) or 'none'})", "i": f"a replica identity index on ({', '.join(columns)})"}
        raise CaptureError(
            f"{where}: source table {self.store.source.schema}.{dataset.table} has {has.get(setting, setting)}, "
            f"which does not hold the model's primary key ({', '.join(dataset.primary_key)}): its deletes could "
            f"not be told apart; run `ALTER TABLE {self._table(dataset)} REPLICA IDENTITY FULL`")

    def _ensure_publication(self, datasets: Sequence[Dataset], where: str) -> None:
        schema = self.store.source.schema
        with self.conn.cursor() as cur:
            cur.execute("""SELECT puballtables, pubinsert AND pubupdate AND pubdelete AND pubtruncate, pubviaroot
                             FROM pg_publication WHERE pubname = %s""", (self.publication,))
            row = cur.fetchone()
            cur.execute("SELECT tablename::text FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s",
                        (self.publication, schema))
            present = {r[0] for r in cur.fetchall()}
        missing = [d for d in datasets if d.table not in present]
        tables = sql.SQL(", ").join(sql.Identifier(schema, d.table) for d in missing)
        pub = sql.Identifier(self.publication)
        if row is not None and not row[1]:
            raise CaptureError(f"{where}: publication {self.publication} does not publish every kind of change; run "
                               f"`ALTER PUBLICATION {self._quoted(self.publication)} SET (publish = 'insert, update, "
                               "delete, truncate')`")
        partitioned = any(self._relkind(d) == "p" for d in datasets)
        if row is not None and not row[2] and partitioned:  # its changes would name its partitions
            raise CaptureError(f"{where}: publication {self.publication} publishes the changes of a partitioned "
                               "table under its partitions' names; run `ALTER PUBLICATION "
                               f"{self._quoted(self.publication)} SET (publish_via_partition_root = true)`")
        if not missing:
            return
        statement = (sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)")
                     if row is None
                     else sql.SQL("ALTER PUBLICATION {} ADD TABLE {}")).format(pub, tables)
        try:
            with self.conn.cursor() as cur:
                cur.execute(statement)
        except psycopg2.errors.InsufficientPrivilege as exc:
            self.conn.rollback()
            raise CaptureError(f"{where}: publication {self.publication} lacks "
                               f"{', '.join(d.table for d in missing)} and role may not change it ({first_line(exc)}); "
                               f"have its owner run `{statement.as_string(self.conn)}`") from None
        log.info("%s: %s", where, statement.as_string(self.conn))

    # --- the slot -----------------------------------------------------------------------------------

    def state(self) -> SlotState | None:
        with self.conn.cursor() as cur:
            cur.execute("""SELECT confirmed_flush_lsn::text, wal_status = 'lost' OR (restart_lsn IS NULL),
                                  pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
                                  database = current_database(), database, plugin
                             FROM pg_replication_slots WHERE slot_name = %s""", (self.slot,))
            row = cur.fetchone()
        self.conn.commit()
        if row is None:
            return None
        if not row[3] or row[5] != "pgoutput":  # slot names are the server's: another database may hold it
            raise CaptureError(f"store {self.store.name}: replication slot {self.slot} on the source belongs to "
                               f"database {row[4]} ({row[5]}), not to {self.store.source.database}: two platforms "
                               "of the same name read this server; rename one, or drop the slot if it is stale")
        return SlotState(parse_lsn(row[0]) if row[0] else None, bool(row[1]), row[2])

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
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, format_lsn(lsn)))
        self.conn.commit()

    def mark(self) -> datetime.datetime:
        """Fix where the batch ends: a marker transaction, committed and flushed now, whose commit the batch's
        read reaches. Decoding reads flushed WAL only, and a server with asynchronous commits flushes a commit
        later than it acknowledges it; the marker's flushed commit is a record boundary every earlier commit
        precedes. The session's text settings for the decoder are set on the way. Returns the source's clock
        at the marker."""
        settings = (sql.SQL("set_config({}, {}, false)").format(sql.Literal(k), sql.Literal(v))
                    for k, v in _TEXT_SETTINGS)
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("SET LOCAL synchronous_commit = local; SELECT {}, "
                                "pg_logical_emit_message(true, {}, {}), clock_timestamp()").format(
                sql.SQL(", ").join(settings), sql.Literal(MARKER), sql.Literal(self.slot)))
            at: datetime.datetime = cur.fetchone()[-1]  # type: ignore[index]
        self.conn.commit()
        return at

    # --- the changes --------------------------------------------------------------------------------

    def copy_changes(self, merge: PgConnection, target: sql.Composable,
                     datasets: Sequence[Dataset]) -> tuple[dict[str, int], int]:
        """Stream every change flushed by now (the marker's commit included) into `target` (the batch's change
        table); the change rows per dataset and the batch's end: the end of the last commit read (the
        marker's, or a later one)."""
        encoder = _Encoder(self.store.source.schema, datasets)
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
                out.write(_COPY_HEADER)
                cur.copy_expert(out_sql, encoder, size=PIPE_CHUNK)
                encoder.finish()
                out.write(_COPY_TRAILER)

        try:
            copy_through_pipe(self.conn, produce, merge, in_sql, "cdc-read")
        except PipeError as exc:
            if isinstance(exc.cause, DataSurfaceError):
                raise exc.cause from None
            side = "reading" if exc.side == "source" else "staging"
            raise CaptureError(f"{side} the changes of slot {self.slot}: {first_line(exc.cause)}") from exc.cause
        self.conn.commit()
        if not encoder.last_commit:
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
_ROW = struct.Struct(">hiqihiB")  # 5 fields; seq (8 bytes); dataset (int2); op ("char", 1 byte)
_NULL = struct.pack(">i", -1)


class _Encoder:
    """Reads the source's binary COPY of (lsn, message) rows, decodes each message and writes the batch's
    change rows in COPY's binary format: (seq, dataset, op, unchanged columns, values as text[])."""

    def __init__(self, schema: str, datasets: Sequence[Dataset]):
        self.decoder = Decoder()
        self.tables = {d.table: (i, d) for i, d in enumerate(datasets)}
        self.schema = schema
        self.rows = {d.name: 0 for d in datasets}
        self.seq = 0
        self.last_commit = 0
        self.buffer = bytearray()
        self.header_read = False
        self.out: object = None
        self._positions: dict[tuple[Relation, int], tuple[list[int], list[int]]] = {}

    # psycopg2 writes the COPY's data here
    def write(self, data: bytes) -> int:
        self.buffer += data
        self._parse()
        return len(data)

    def _parse(self) -> None:
        buf = self.buffer
        pos = 0
        if not self.header_read:
            if len(buf) < 19:
                return
            (ext,) = struct.unpack_from(">i", buf, 15)
            pos = 19 + ext
            self.header_read = True
        while len(buf) - pos >= 2:
            (fields,) = struct.unpack_from(">h", buf, pos)
            if fields == -1:
                pos += 2
                break
            # lsn: length 8 + int8; data: length + bytes
            if len(buf) - pos < 2 + 4 + 8 + 4:
                break
            (lsn,) = struct.unpack_from(">q", buf, pos + 6)
            (size,) = struct.unpack_from(">i", buf, pos + 14)
            end = pos + 18 + size
            if len(buf) < end:
                break
            self._message(lsn, bytes(buf[pos + 18:end]))
            pos = end
        del buf[:pos]

    def finish(self) -> None:
        if self.buffer:
            raise CaptureError("the source's change stream ended inside a row")

    def _message(self, lsn: int, data: bytes) -> None:
        for event in self.decoder.decode(lsn, data):
            if isinstance(event, Commit):
                self.last_commit = event.end_lsn
            elif isinstance(event, Truncate):
                for rel in event.relations:
                    found = self._dataset(rel.schema, rel.table)
                    if found is not None:
                        self._emit(found[0], found[1], "T", [], ())
            else:
                self._change(event)

    def _dataset(self, schema: str, table: str) -> tuple[int, Dataset] | None:
        return self.tables.get(table) if schema == self.schema else None

    def _columns(self, change: Change, index: int, dataset: Dataset) -> tuple[list[int], list[int]]:
        """Where each model column (and each key column) stands in the relation's tuples."""
        cached = self._positions.get((change.relation, index))  # a relation is its name and columns
        if cached is not None:
            return cached
        where = {name: i for i, name in enumerate(change.relation.columns)}
        missing = [c.source_name for c in dataset.columns if c.source_name not in where]
        if missing:
            raise CaptureError(f"changes of {self.schema}.{dataset.table} lack column(s) {', '.join(missing)} of "
                               f"the model (the table changed on the source)")
        positions = ([where[c.source_name] for c in dataset.columns],
                     [where[dataset.column(k).source_name] for k in dataset.primary_key])
        self._positions[(change.relation, index)] = positions
        return positions

    def _change(self, change: Change) -> None:
        found = self._dataset(change.relation.schema, change.relation.table)
        if found is None:
            return
        index, dataset = found
        columns, key = self._columns(change, index, dataset)
        old, new = change.old, change.new
        if change.op == "D":
            assert old is not None
            self._emit(index, dataset, "D", [], tuple(old[p] if p in key else None for p in columns))
            return
        assert new is not None
        if old is not None and any(old[p] != new[p] for p in key):  # a new key: the old one is gone
            self._emit(index, dataset, "D", [], tuple(old[p] if p in key else None for p in columns))
        values: list[Value] = [new[p] for p in columns]
        unchanged = []
        for i, value in enumerate(values):
            if value is UNCHANGED:
                before = old[columns[i]] if old is not None and change.old_full else UNCHANGED
                if before is UNCHANGED:  # the merge side takes it from the row's last known version
                    unchanged.append(i + 1)
                    values[i] = None
                else:
                    values[i] = before
        self._emit(index, dataset, change.op, unchanged, tuple(values))

    def _emit(self, index: int, dataset: Dataset, op: str, unchanged: list[int], values: Sequence[Value]) -> None:
        self.seq += 1
        self.rows[dataset.name] += 1
        out = self.out
        parts = [_ROW.pack(5, 8, self.seq, 2, index, 1, ord(op))]
        parts.append(_int2_array(unchanged) if unchanged else _NULL)
        parts.append(_text_array(values))
        out.write(b"".join(parts))  # type: ignore[attr-defined]


def _int2_array(items: list[int]) -> bytes:
    body = b"".join(struct.pack(">ih", 2, v) for v in items)
    head = struct.pack(">iiiii", 1, 0, _INT2_OID, len(items), 1)
    return struct.pack(">i", len(head) + len(body)) + head + body


def _text_array(values: Sequence[Value]) -> bytes:
    has_null = any(v is None for v in values)
    parts = [struct.pack(">iiiii", 1, int(has_null), _TEXT_OID, len(values), 1)]
    for v in values:
        if v is None or v is UNCHANGED:
            parts.append(_NULL)
        else:
            assert isinstance(v, bytes)
            parts.append(struct.pack(">i", len(v)))
            parts.append(v)
    body = b"".join(parts)
    return struct.pack(">i", len(body)) + body
