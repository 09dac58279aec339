"""Names and DDL of a platform's merge schema (docs/concepts.md), and the schema-evolution rules.

Tables hold the model's columns with the model's types plus the mode's batch columns; views
`<table>_current` expose exactly the model's columns. An additive change (a new nullable column)
evolves table and view; any other change is refused with what changed and how to proceed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Literal, NamedTuple, get_args

from psycopg2 import sql
from psycopg2.extensions import cursor

from datasurface.db import PgConnection, idents
from datasurface.errors import DataSurfaceError
from datasurface.model import Dataset, Store
from datasurface.model.names import DatasetNames, dataset_names
from datasurface.pgtypes import same_type

# a platform keeps the current rows only (live), or every version with the batches it was current in
Mode = Literal["live", "forensic"]
MODES: tuple[Mode, ...] = get_args(Mode)
LIVE: Mode = "live"
FORENSIC: Mode = "forensic"
OPEN_END = 2147483647  # ds_batch_out of a current forensic version
MAX_IDENT = 63
_PLATFORM_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

LIVE_COLUMNS = ("ds_batch_id",)
FORENSIC_COLUMNS = ("ds_batch_in", "ds_batch_out")


class SchemaChangeError(DataSurfaceError):
    """The model changed in a way that cannot be applied to existing merge tables."""


def platform_schema(platform: str) -> str:
    if not _PLATFORM_RE.match(platform) or len(platform) > MAX_IDENT:
        raise DataSurfaceError(
            f"invalid platform name {platform!r}: letters, digits and _, starting with a letter, "
            f"at most {MAX_IDENT} characters"
        )
    return platform.lower()


def check_mode(mode: str) -> Mode:
    for known in MODES:
        if mode == known:
            return known
    raise DataSurfaceError(f"invalid mode {mode!r}: expected one of {', '.join(MODES)}")


def staging_name(table: str) -> str:
    """The staging table of merge table `table` (a `ds_` name: never a dataset's, model/names.py)."""
    digest = hashlib.sha1(table.encode()).hexdigest()[:8]
    return f"ds_stage_{table[:40]}_{digest}"


class DatasetLayout(NamedTuple):
    """Where one dataset lives in the platform schema."""

    schema: str
    store: str
    dataset: Dataset
    mode: Mode

    @property
    def names(self) -> DatasetNames:
        """The names of the dataset's objects (one rule, model/names.py; the validator keeps them unique)."""
        return dataset_names(self.store, self.dataset.name)

    @property
    def table(self) -> str:
        return self.names.table

    @property
    def view(self) -> str:
        return self.names.current

    @property
    def staging(self) -> str:
        return staging_name(self.table)

    @property
    def key(self) -> tuple[str, ...]:
        return self.dataset.primary_key

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.dataset.columns)

    @property
    def values(self) -> tuple[str, ...]:
        """The non-key columns: a change in any of them is an update."""
        return tuple(c.name for c in self.dataset.non_key_columns)

    def batch_values(self, batch_id: int) -> tuple[tuple[str, int], ...]:
        """The mode's batch columns and their values for a row that `batch_id` adds."""
        if self.mode == LIVE:
            return (("ds_batch_id", batch_id),)
        return (("ds_batch_in", batch_id), ("ds_batch_out", OPEN_END))

    def qualified(self, name: str) -> sql.Composable:
        return sql.Identifier(self.schema, name)

    def check_names(self) -> None:
        # reserved column names (ds_batch_*) are refused by the model validator, with their path
        if len(self.view) > MAX_IDENT:
            raise DataSurfaceError(
                f"store {self.store!r} dataset {self.dataset.name!r}: the view name {self.view!r} is longer "
                f"than PostgreSQL's {MAX_IDENT} characters; use shorter store or dataset names"
            )


def dataset_layouts(schema: str, store: Store, mode: Mode) -> list[DatasetLayout]:
    result = [DatasetLayout(schema, store.name, d, mode) for d in store.datasets]
    for layout in result:
        layout.check_names()
    return result


def column_defs(layout: DatasetLayout) -> list[sql.Composable]:
    """The model's columns; key columns and `nullable: false` ones are NOT NULL (staging tables too, so
    a snapshot with a NULL there is refused while it is copied)."""
    defs: list[sql.Composable] = []
    for c in layout.dataset.columns:
        not_null = " NOT NULL" if c.name in layout.key or not c.nullable else ""
        defs.append(sql.SQL("{} {}" + not_null).format(sql.Identifier(c.name), sql.SQL(c.type)))
    return defs


def create_table(cur: cursor, layout: DatasetLayout) -> None:
    defs = column_defs(layout)
    t = layout.qualified(layout.table)
    if layout.mode == LIVE:
        defs.append(sql.SQL("ds_batch_id integer NOT NULL"))
        defs.append(sql.SQL("CONSTRAINT {} PRIMARY KEY ({})").format(
            sql.Identifier(layout.names.primary_key_index), idents(layout.key)))
        cur.execute(sql.SQL("CREATE TABLE {} ({})").format(t, sql.SQL(", ").join(defs)))
    else:
        defs.append(sql.SQL("ds_batch_in integer NOT NULL"))
        defs.append(sql.SQL("ds_batch_out integer NOT NULL DEFAULT {}").format(sql.Literal(OPEN_END)))
        defs.append(sql.SQL("CONSTRAINT {} PRIMARY KEY ({}, ds_batch_in)").format(
            sql.Identifier(layout.names.primary_key_index), idents(layout.key)))
        defs.append(sql.SQL("CHECK (ds_batch_in < ds_batch_out)"))
        cur.execute(sql.SQL("CREATE TABLE {} ({})").format(t, sql.SQL(", ").join(defs)))
        # its secondary indexes come with its first rows (complete_indexes)


def secondary_indexes(layout: DatasetLayout) -> list[tuple[str, sql.Composable]]:
    """A table's indexes besides its primary key, by name. Forensic: the unique index of current versions
    (the database itself guarantees at most one current version per key) and the as-of index on
    (ds_batch_out, ds_batch_in) (consumers/history.py reads through it)."""
    if layout.mode != FORENSIC:
        return []
    t = layout.qualified(layout.table)
    current, batch = layout.names.current_index, layout.names.batch_index
    return [(current, sql.SQL("CREATE UNIQUE INDEX {} ON {} ({}) WHERE ds_batch_out = {}").format(
                sql.Identifier(current), t, idents(layout.key), sql.Literal(OPEN_END))),
            (batch, sql.SQL("CREATE INDEX {} ON {} (ds_batch_out, ds_batch_in)").format(sql.Identifier(batch), t))]


def complete_indexes(conn: PgConnection, layout: DatasetLayout, *, loaded: bool) -> bool:
    """Create the secondary indexes the table lacks (in the caller's transaction); True if it made any.

    A new table has its primary key only: its other indexes are built by the batch that loads its first rows,
    after them and in the same transaction (`loaded=True`), once over the loaded rows, which costs a
    fraction of keeping them up row by row through a first load (an index's every entry written to the WAL
    on its own). They need no DDL lock: the store's stream lock keeps every other run off the table, and
    building them locks out writers (none) but never readers. Before a batch (`loaded=False`) they are made
    only for a table that has rows and lacks one (it was dropped, or the table is older than the index)."""
    wanted = {sql.Identifier(layout.schema, name).as_string(conn): create for name, create in secondary_indexes(layout)}
    if not wanted:
        return False
    with conn.cursor() as cur:
        cur.execute("SELECT n FROM unnest(%s::text[]) AS n WHERE pg_catalog.to_regclass(n) IS NULL", (list(wanted),))
        missing = [row[0] for row in cur.fetchall()]
        if not missing:
            return False
        if not loaded:
            cur.execute(sql.SQL("SELECT NOT EXISTS (SELECT FROM {})").format(layout.qualified(layout.table)))
            if cur.fetchone()[0]:  # type: ignore[index]
                return False  # no rows yet: the batch that loads them makes the indexes
        for name in missing:
            cur.execute(wanted[name])
    return True


def ensure_view(conn: PgConnection, schema: str, view: str, columns: Sequence[tuple[str, sql.Composable]],
                rest: sql.Composable, *, replace: bool = False) -> bool:
    """Create the view `SELECT <expr> AS <name>, ... <rest>`, or evolve it in place; True if changed.
    `replace`: replace it also when its columns are the same (its definition changed).

    Evolution is `CREATE OR REPLACE VIEW`, never DROP: views that consumers built on ours stay valid.
    PostgreSQL keeps a replaced view's columns in their order, so the existing columns keep their
    places and new ones are appended at the end. A column that disappeared is a SchemaChangeError.
    """
    existing = table_columns(conn, schema, view)
    names = [name for name, _ in columns]
    if existing is None:
        order = names
    else:
        gone = [c for c in existing if c not in names]
        if gone:
            raise SchemaChangeError(
                f"{schema}.{view} has column(s) {', '.join(gone)} that the model no longer has; a view is "
                f"only ever extended (views built on it must stay valid)")
        order = list(existing) + [n for n in names if n not in existing]
        if order == list(existing) and not replace:
            return False
    exprs = dict(columns)
    select = sql.SQL(", ").join(sql.SQL("{} AS {}").format(exprs[n], sql.Identifier(n)) for n in order)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE OR REPLACE VIEW {} AS SELECT {} {}").format(
            sql.Identifier(schema, view), select, rest))
    return True


def ensure_current_view(conn: PgConnection, layout: DatasetLayout) -> bool:
    """`<table>_current`: the model's columns of the current rows (both modes)."""
    where = sql.SQL("") if layout.mode == LIVE else sql.SQL(" WHERE ds_batch_out = {}").format(sql.Literal(OPEN_END))
    return ensure_view(conn, layout.schema, layout.view, [(c, sql.Identifier(c)) for c in layout.columns],
                       sql.SQL("FROM {}{}").format(layout.qualified(layout.table), where))


def table_columns(conn: PgConnection, schema: str, table: str) -> dict[str, str] | None:
    """Column name -> format_type of an existing table, in order; None when there is no such table."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT a.attname, format_type(a.atttypid, a.atttypmod)
                 FROM pg_attribute a
                WHERE a.attrelid = to_regclass(format('%%I.%%I', %s::text, %s::text))
                  AND a.attnum > 0 AND NOT a.attisdropped
                ORDER BY a.attnum""",
            (schema, table),
        )
        rows = cur.fetchall()
        if rows:
            return {name: typ for name, typ in rows}
        cur.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))", (schema, table))
        return {} if cur.fetchone()[0] is not None else None  # type: ignore[index]


def table_key(conn: PgConnection, schema: str, table: str) -> tuple[str, ...]:
    with conn.cursor() as cur:
        cur.execute(
            """SELECT a.attname
                 FROM pg_index i
                 JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                WHERE i.indrelid = to_regclass(format('%%I.%%I', %s::text, %s::text)) AND i.indisprimary
                ORDER BY k.ord""",
            (schema, table),
        )
        return tuple(r[0] for r in cur.fetchall())


def plan_evolution(conn: PgConnection, layout: DatasetLayout) -> list[str] | None:
    """None: the table does not exist yet. Otherwise the new nullable columns to add (maybe none).

    Raises SchemaChangeError for anything that is not additive.
    """
    existing = table_columns(conn, layout.schema, layout.table)
    if existing is None:
        return None
    where = f"{layout.schema}.{layout.table}"
    mode_cols = LIVE_COLUMNS if layout.mode == LIVE else FORENSIC_COLUMNS
    other_cols = FORENSIC_COLUMNS if layout.mode == LIVE else LIVE_COLUMNS
    if any(c in existing for c in other_cols) or not all(c in existing for c in mode_cols):
        other = FORENSIC if layout.mode == LIVE else LIVE
        raise SchemaChangeError(
            f"{where} is a {other} table, but mode {layout.mode} was requested: a platform has one mode; "
            f"use another platform name for {layout.mode}"
        )
    problems = []
    model_cols = {c.name: c for c in layout.dataset.columns}
    for name, typ in existing.items():
        if name in mode_cols:
            continue
        col = model_cols.get(name)
        if col is None:
            problems.append(f"column {name!r} was removed from the model")
        elif not same_type(col.type, typ):
            problems.append(f"column {name!r} changed type from {typ} to {col.type}")
    key = table_key(conn, layout.schema, layout.table)
    if layout.mode == FORENSIC:
        key = key[:-1]  # the primary key is (key..., ds_batch_in)
    if key != layout.key:
        problems.append(f"primary key changed from ({', '.join(key)}) to ({', '.join(layout.key)})")
    added = [c for c in layout.dataset.columns if c.name not in existing]
    problems += [f"new column {c.name!r} is NOT NULL (only nullable columns can be added)"
                 for c in added if not c.nullable]
    if problems:
        raise SchemaChangeError(
            f"{where}: the model changed in a way that cannot be applied to existing data: "
            f"{'; '.join(problems)}. Only new nullable columns are applied automatically; to apply this "
            f"change, run `datasurface-job reset-store --platform {layout.schema} --store {layout.store}` "
            f"(it lists what it drops; with --yes the store starts again at batch 1 from a fresh snapshot, and a "
            f"forensic platform loses the store's history) or ingest into a new platform"
        )
    return [c.name for c in added]


def ensure_dataset(conn: PgConnection, layout: DatasetLayout) -> bool:
    """Create or evolve the dataset's table and view (in the caller's transaction). True if changed."""
    added = plan_evolution(conn, layout)
    with conn.cursor() as cur:
        if added is None:
            create_table(cur, layout)
        for name in added or ():
            col = layout.dataset.column(name)
            cur.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                    layout.qualified(layout.table), sql.Identifier(name), sql.SQL(col.type)
                )
            )
    nullability = added is not None and ensure_nullability(conn, layout)
    indexed = added is not None and complete_indexes(conn, layout, loaded=False)
    viewed = ensure_current_view(conn, layout)
    return added is None or bool(added) or nullability or indexed or viewed


def _not_null_check(column: str) -> str:
    return f"{column}_not_null"[:MAX_IDENT]


def ensure_nullability(conn: PgConnection, layout: DatasetLayout) -> bool:
    """An existing table follows the model's `nullable` of its non-key columns. Made NOT NULL, a column
    gets `CHECK (c IS NOT NULL) NOT VALID`: every row written from now on is checked, rows already
    there (forensic history from before) are not rescanned. Made nullable again, the rule is dropped."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT a.attname, a.attnotnull, c.conname IS NOT NULL
                 FROM pg_catalog.pg_attribute a
                 LEFT JOIN pg_catalog.pg_constraint c ON c.conrelid = a.attrelid AND c.contype = 'c'
                      AND c.conname = left(a.attname || '_not_null', 63)
                WHERE a.attrelid = to_regclass(format('%%I.%%I', %s::text, %s::text))
                  AND a.attnum > 0 AND NOT a.attisdropped""",
            (layout.schema, layout.table))
        actual = {name: (notnull, checked) for name, notnull, checked in cur.fetchall()}
        changed = False
        t = layout.qualified(layout.table)
        for col in layout.dataset.non_key_columns:
            notnull, checked = actual.get(col.name, (False, False))
            if not col.nullable and not (notnull or checked):
                cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({} IS NOT NULL) NOT VALID").format(
                    t, sql.Identifier(_not_null_check(col.name)), sql.Identifier(col.name)))
                changed = True
            elif col.nullable and (notnull or checked):
                if notnull:
                    cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(
                        t, sql.Identifier(col.name)))
                if checked:
                    cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                        t, sql.Identifier(_not_null_check(col.name))))
                changed = True
    return changed


def ensure_schema(conn: PgConnection, schema: str) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regnamespace(%s) IS NULL", (sql.Identifier(schema).as_string(conn),))
        if cur.fetchone()[0]:  # type: ignore[index]
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
