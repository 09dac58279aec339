"""The snapshot against the current rows: ONE full outer join per dataset, into a temp table.

`pg_temp.ds_diff` holds one row per changed key with `_ds_op` I (new key), U (a non-key value differs,
NULL-safe: NULL, '' and a value are all different) or D (key gone), and the snapshot's values.
Both merges apply it with set-based statements; its counts are the batch's counts.

The staging table has no unique index (building one sorts the whole snapshot); the diff finds
duplicate keys instead. Each staged row appears once in the join (the current rows have unique
keys), so without duplicates `staged = current - deleted + inserted`; a duplicate of a key that is
in the current rows breaks that identity, and a duplicate of a new key makes the apply's INSERT
violate the merge table's own unique key (`duplicates_refused`). Either way: duplicate primary keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import cursor

from datasurface.db import PgConnection, first_line, idents
from datasurface.errors import SnapshotError
from datasurface.faults import killpoint
from datasurface.merge.layout import LIVE, OPEN_END, DatasetLayout, complete_indexes
from datasurface.merge.ledger import Counts
from datasurface.merge.staging import duplicate_keys

# Always schema-qualified: an unqualified name would reach any `ds_diff` on the search path (a user's
# `public.ds_diff` was dropped by every merge). pg_temp is the session's own temporary schema.
DIFF_TABLE = sql.Identifier("pg_temp", "ds_diff")


def key_match(layout: DatasetLayout, left: str, right: str) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(left, k), sql.Identifier(right, k)) for k in layout.key
    )


def current_rows(layout: DatasetLayout) -> sql.Composable:
    """The current versions: the whole live table, or the open versions of the forensic one."""
    if layout.mode == LIVE:
        return layout.qualified(layout.table)
    return sql.SQL("(SELECT * FROM {} WHERE ds_batch_out = {})").format(
        layout.qualified(layout.table), sql.Literal(OPEN_END))


_BY_TEXT = frozenset({"real", "double precision", "jsonb", "json", "interval"})


def compared(layout: DatasetLayout, alias: str) -> sql.Composable:
    """The non-key values as the diff compares them: as consumers see them, not only as `=` does.

    `=` calls 1.0 and 1.00 (numeric), 0 and -0 (floats) and {"x": 1.0} and {"x": 1.00} (jsonb) equal,
    yet consumers see different text: such a change is an update. Unconstrained numeric is compared
    with its scale too (cheap; numeric(p,s) has one scale), floats and jsonb by their text (floats print
    shortest-exact with extra_float_digits >= 1, the job's session setting; jsonb text is canonical, so
    reordered keys are no change). json has no `=` and keeps its text: any change to it is an update.
    `=` calls interval '1 day' and '24 hours' equal; they print differently, so intervals too are compared
    by text. An array is compared by its text: each element is printed by its type's output, which is
    exactly the rule above for every element type (and shows NULL elements and bounds). Everything else
    is exact under `=` (char(n) pads both sides alike, timestamptz compares instants, inet/cidr/macaddr
    equal exactly when their canonical text is equal), so NaN, padding, key order and time zones make no
    phantom updates. See docs/concepts.md, "What counts as a change".
    """
    parts: list[sql.Composable] = []
    for col in layout.dataset.non_key_columns:
        ref = sql.Identifier(alias, col.name)
        if col.type == "numeric":
            parts += [ref, sql.SQL("scale({})").format(ref)]
        elif col.type in _BY_TEXT or col.type.endswith("[]"):
            parts.append(sql.SQL("{}::text").format(ref))
        else:
            parts.append(ref)
    return sql.SQL(", ").join(parts)


def materialize_diff(conn: PgConnection, query: sql.Composable, analyzed: list[str] | None = None) -> dict[str, int]:
    """Run the CREATE TEMP TABLE of a diff into `pg_temp.ds_diff`, analyze it (only the columns `analyzed`,
    when given); its rows per `_ds_op`."""
    columns = sql.SQL("") if analyzed is None else sql.SQL(" ({})").format(idents(analyzed))
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(DIFF_TABLE))
        cur.execute(query)
        cur.execute(sql.SQL("ANALYZE {}{}").format(DIFF_TABLE, columns))
        cur.execute(sql.SQL("SELECT _ds_op, count(*) FROM {} GROUP BY _ds_op").format(DIFF_TABLE))
        return {row[0]: int(row[1]) for row in cur.fetchall()}


def current_count(conn: PgConnection, layout: DatasetLayout) -> int:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {} t").format(current_rows(layout)))
        return int(cur.fetchone()[0])  # type: ignore[index]


def compute_diff(conn: PgConnection, layout: DatasetLayout, snapshot_rows: int,
                 current_hint: int | None = None) -> Counts:
    """`current_hint`: the current row count as the ledger knows it (the last committed batch's total),
    which spares counting the current rows; they are counted only when the identity does not hold."""
    first_key = sql.Identifier("t", layout.key[0])
    op = sql.SQL("CASE WHEN {tk} IS NULL THEN 'I' WHEN {sk} IS NULL THEN 'D' ELSE 'U' END").format(
        tk=first_key, sk=sql.Identifier("s", layout.key[0]))
    keys = sql.SQL(", ").join(
        sql.SQL("COALESCE({}, {}) AS {}").format(sql.Identifier("s", k), sql.Identifier("t", k), sql.Identifier(k))
        for k in layout.key
    )
    changed: sql.Composable = sql.SQL("{} IS NULL OR {} IS NULL").format(first_key, sql.Identifier("s", layout.key[0]))
    select_values: sql.Composable = sql.SQL("")
    if layout.values:
        changed = changed + sql.SQL(" OR ROW({}) IS DISTINCT FROM ROW({})").format(
            compared(layout, "s"), compared(layout, "t"))
        select_values = sql.SQL(", ") + idents(layout.values, "s")
    query = sql.SQL(
        "CREATE TEMP TABLE {diff} ON COMMIT DROP AS "
        "SELECT {op} AS _ds_op, {keys}{values} FROM {staging} s FULL JOIN {current} t ON {match} WHERE {changed}"
    ).format(
        diff=DIFF_TABLE, op=op, keys=keys, values=select_values,
        staging=layout.qualified(layout.staging), current=current_rows(layout), match=key_match(layout, "s", "t"),
        changed=changed,
    )
    by_op = materialize_diff(conn, query)
    counts = Counts(total=snapshot_rows, inserted=by_op.get("I", 0), updated=by_op.get("U", 0),
                    deleted=by_op.get("D", 0))
    if current_hint is None or snapshot_rows != current_hint - counts.deleted + counts.inserted:
        if snapshot_rows != current_count(conn, layout) - counts.deleted + counts.inserted:
            raise duplicate_keys(conn, layout)
    return counts


def compute_change_diff(conn: PgConnection, layout: DatasetLayout, net: sql.Composable, truncated: bool,
                        current_hint: int | None) -> Counts:
    """The diff of a change batch: `net` (merge/changes.py: a FROM item of the last change of each changed key)
    against the current rows, compared as a snapshot's rows are; keys without a change keep their rows, unless
    the batch truncated the table (`net` is then a table, read twice). The total follows from the last one:
    current - deleted + inserted. The diff is analysed for what plans the writes: how many rows of each kind,
    their keys (the values' statistics, which nothing reads, would cost more than the diff)."""
    first_key = sql.Identifier("t", layout.key[0])
    present = sql.SQL("s._ds_op <> 'D'")
    changed: sql.Composable = sql.SQL("{} IS NULL").format(first_key)
    if layout.values:
        changed = changed + sql.SQL(" OR ROW({}) IS DISTINCT FROM ROW({})").format(
            compared(layout, "s"), compared(layout, "t"))
    values = sql.SQL(", ") + idents(layout.values, "s") if layout.values else sql.SQL("")
    query = sql.SQL(
        "CREATE TEMP TABLE {diff} ON COMMIT DROP AS "
        "SELECT CASE WHEN NOT ({present}) THEN 'D' WHEN {tk} IS NULL THEN 'I' ELSE 'U' END AS _ds_op, {keys}{values} "
        "FROM {net} s LEFT JOIN {current} t ON {match} "
        "WHERE CASE WHEN {present} THEN {changed} ELSE {tk} IS NOT NULL END"
    ).format(diff=DIFF_TABLE, present=present, tk=first_key, keys=idents(layout.key, "s"), values=values, net=net,
             current=current_rows(layout), match=key_match(layout, "s", "t"), changed=changed)
    if truncated:  # every current key the batch did not write again is gone
        nulls = sql.SQL("").join(sql.SQL(", NULL") for _ in layout.values)
        query = query + sql.SQL(" UNION ALL SELECT 'D', {keys}{nulls} FROM {current} t WHERE NOT EXISTS "
                                "(SELECT FROM {net} s WHERE {match})").format(
            keys=idents(layout.key, "t"), nulls=nulls, current=current_rows(layout), net=net,
            match=key_match(layout, "s", "t"))
    by_op = materialize_diff(conn, query, ["_ds_op", *layout.key])
    if current_hint is None:
        current_hint = current_count(conn, layout)
    inserted, deleted = by_op.get("I", 0), by_op.get("D", 0)
    return Counts(total=current_hint - deleted + inserted, inserted=inserted, updated=by_op.get("U", 0),
                  deleted=deleted)


@contextmanager
def duplicates_refused(layout: DatasetLayout) -> Iterator[None]:
    """Around the INSERT of new keys: a unique violation there means the snapshot repeats a new key."""
    try:
        yield
    except psycopg2.errors.UniqueViolation as exc:
        detail = getattr(exc.diag, "message_detail", None) or first_line(exc)
        raise SnapshotError(f"snapshot of {layout.dataset.table} (dataset {layout.dataset.name}) has duplicate "
                            f"primary keys: {detail}") from exc


def diff_rows(op_filter: tuple[str, ...]) -> sql.Composable:
    """`pg_temp.ds_diff d WHERE d._ds_op IN (...)` as a FROM item for the apply statements. The op column starts
    with `_`, which no model column can (model names start with a letter), so it never collides."""
    return sql.SQL("(SELECT * FROM {} WHERE _ds_op IN ({})) d").format(
        DIFF_TABLE, sql.SQL(", ").join(sql.Literal(o) for o in op_filter))


@contextmanager
def keyed_apply(conn: PgConnection) -> Iterator[None]:
    """Around the apply statements: they touch the diff's keys through the merge table's key index,
    whose pages the diff has just read. At the default random_page_cost (4) the planner scans the whole
    table (with all forensic history) to close 1% of the versions; at 1.1 (the usual SSD/cached value)
    it probes the index for small diffs and still hashes large ones. Only for these statements."""
    with conn.cursor() as cur:
        cur.execute("SET LOCAL random_page_cost = 1.1")
    yield
    with conn.cursor() as cur:
        cur.execute("SET LOCAL random_page_cost TO DEFAULT")


def refresh_stats(conn: PgConnection, layout: DatasetLayout, counts: Counts) -> None:
    """ANALYZE the merge table when its number of current rows moved by more than autovacuum's threshold
    (50 rows + 10%), so the next batch's diff and apply are planned with its real size (e.g. after the
    first load, planned for ~3k rows instead of 1M without it). A batch that changes many rows but
    leaves the count where it was (10% churn: as many inserts as deletes) needs none: the planner scales
    the last statistics by the table's current size, and autovacuum's own ANALYZE follows the changes."""
    before = counts.total - counts.inserted + counts.deleted
    if abs(counts.inserted - counts.deleted) > 50 + before // 10:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("ANALYZE {}").format(layout.qualified(layout.table)))


def no_current_rows(conn: PgConnection, layout: DatasetLayout) -> bool:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT NOT EXISTS (SELECT FROM {} t)").format(current_rows(layout)))
        return bool(cur.fetchone()[0])  # type: ignore[index]


def loaded(conn: PgConnection, layout: DatasetLayout, rows: int) -> Counts:
    """The counts of a batch that inserted its whole snapshot of `rows` into a table without current rows
    (its secondary indexes built if it had none yet, its statistics refreshed: the table grew from nothing)."""
    complete_indexes(conn, layout, loaded=True)
    counts = Counts(total=rows, inserted=rows, updated=0, deleted=0)
    refresh_stats(conn, layout, counts)
    return counts


class DiffMerge:
    """Diff the staged snapshot against the current rows, then write the changes: first what the diff
    retires (deleted keys, old values), then what it adds (new keys, new values). Each mode says how."""

    def __init__(self, conn: PgConnection, layout: DatasetLayout):
        self.conn = conn
        self.layout = layout
        self.target = layout.qualified(layout.table)

    def apply(self, batch_id: int, snapshot_rows: int, current_hint: int | None = None) -> Counts:
        if current_hint == 0 and no_current_rows(self.conn, self.layout):
            return self.load(batch_id, snapshot_rows)
        counts = compute_diff(self.conn, self.layout, snapshot_rows, current_hint)
        killpoint(f"merge:{self.layout.dataset.name}:diffed")
        with keyed_apply(self.conn), self.conn.cursor() as cur:
            self.retire(cur, counts, batch_id)
            killpoint(f"merge:{self.layout.dataset.name}:changed")
            with duplicates_refused(self.layout):
                self.add(cur, counts, batch_id)
        refresh_stats(self.conn, self.layout, counts)
        drop_diff(self.conn)
        return counts

    def apply_changes(self, batch_id: int, net: sql.Composable, truncated: bool, current_hint: int | None) -> Counts:
        """A change batch's net changes (`net`: merge/changes.py), through the same diff and writes as a snapshot."""
        with keyed_apply(self.conn):  # a few keys' current rows: through the key index, not a scan of the table
            counts = compute_change_diff(self.conn, self.layout, net, truncated, current_hint)
        killpoint(f"merge:{self.layout.dataset.name}:diffed")
        with keyed_apply(self.conn), self.conn.cursor() as cur:
            self.retire(cur, counts, batch_id)
            killpoint(f"merge:{self.layout.dataset.name}:changed")
            self.add(cur, counts, batch_id)
        refresh_stats(self.conn, self.layout, counts)
        drop_diff(self.conn)
        return counts

    def load(self, batch_id: int, snapshot_rows: int) -> Counts:
        """No current rows (the first batch, or one after an empty snapshot): every staged row is new, so the
        snapshot is inserted straight from staging, without a diff table that would copy all of it once more.
        A repeated key violates the merge table's unique key on the way in; the error names that key."""
        killpoint(f"merge:{self.layout.dataset.name}:diffed")
        with self.conn.cursor() as cur:
            killpoint(f"merge:{self.layout.dataset.name}:changed")
            cur.execute("SAVEPOINT ds_load")
            try:
                self.add_all(cur, batch_id)
            except psycopg2.errors.UniqueViolation:  # name the repeated key itself (not a forensic version's)
                cur.execute("ROLLBACK TO SAVEPOINT ds_load")
                raise duplicate_keys(self.conn, self.layout) from None
            inserted = cur.rowcount
            cur.execute("RELEASE SAVEPOINT ds_load")
        if inserted != snapshot_rows:  # the staged count is the ledger's; the two can only differ by a bug
            raise SnapshotError(f"loading {self.layout.dataset.table}: {inserted} rows inserted, "
                                f"{snapshot_rows} staged")
        return loaded(self.conn, self.layout, snapshot_rows)

    def add_all(self, cur: cursor, batch_id: int) -> None:
        """Insert every staged row as of `batch_id`."""
        self._insert(cur, batch_id, self.layout.qualified(self.layout.staging))

    def _insert(self, cur: cursor, batch_id: int, rows: sql.Composable) -> None:
        """Insert `rows` (the model's columns) as rows `batch_id` adds: with the mode's batch columns."""
        cols = idents(self.layout.columns)
        names, values = zip(*self.layout.batch_values(batch_id), strict=True)
        cur.execute(sql.SQL("INSERT INTO {} ({}, {}) SELECT {}, {} FROM {}").format(
            self.target, cols, idents(names), cols, sql.SQL(", ").join(sql.Literal(v) for v in values), rows))

    def retire(self, cur: cursor, counts: Counts, batch_id: int) -> None:
        raise NotImplementedError

    def add(self, cur: cursor, counts: Counts, batch_id: int) -> None:
        raise NotImplementedError


def drop_diff(conn: PgConnection) -> None:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(DIFF_TABLE))
