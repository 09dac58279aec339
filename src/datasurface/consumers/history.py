"""History in time on forensic platforms (docs/consumers.md), per dataset beside `<table>_current`:

- view `<table>_history`: every version with `ds_batch_in`, `ds_batch_out` (NULL while current),
  `valid_from` / `valid_to` (the ledger's snapshot_at of those batches), `is_current` and `ended_by`
  ('update' when the key has a version starting where this one ends, else 'delete'; NULL while current);
- function `<table>_as_of(at timestamptz)`: the rows of the latest committed batch whose snapshot_at <= at;
- function `<table>_as_of_batch(batch integer)`: the rows as of that committed batch (none for a batch that
  is not committed).

A version is valid for batches N with ds_batch_in <= N < ds_batch_out, so "as of B" reads the versions with
ds_batch_out > B and ds_batch_in <= B: the index `<table>_by_batch` on (ds_batch_out, ds_batch_in) (one of the
table's secondary indexes, merge/layout.py) finds them without reading the versions that ended before B, and a
filter on the key reaches the primary key (key..., ds_batch_in) because the functions are inlined (objects.py).
They read the platform's tables with the caller's rights (SECURITY INVOKER), so who may call them is who may
read the tables: EXECUTE stays PostgreSQL's default (PUBLIC), and the platform schema itself grants nobody
anything. Workspaces read through their own views instead (workspaces.py).
"""

from __future__ import annotations

from psycopg2 import sql

from datasurface.db import PgConnection
from datasurface.errors import DataSurfaceError
from datasurface.merge.layout import FORENSIC, MAX_IDENT, OPEN_END, DatasetLayout
from datasurface.merge.ledger import Stream
from datasurface.model import Store

from . import objects

EXTRA_COLUMNS = ("ds_batch_in", "ds_batch_out", "valid_from", "valid_to", "is_current", "ended_by")


def history_view(layout: DatasetLayout) -> str:
    return layout.names.history


def as_of_function(layout: DatasetLayout) -> str:
    return layout.names.as_of


def as_of_batch_function(layout: DatasetLayout) -> str:
    return layout.names.as_of_batch


def stream_key(store: Store, dataset: str) -> str:
    """The ledger's stream of a dataset: the store's one stream, or the dataset's own (single_dataset)."""
    return Stream(store.name, dataset if store.consistency == "single_dataset" else None).key


def check_names(layout: DatasetLayout) -> None:
    for name in (history_view(layout), as_of_batch_function(layout)):
        if len(name) > MAX_IDENT:
            raise DataSurfaceError(
                f"store {layout.store!r} dataset {layout.dataset.name!r}: the name {name!r} is longer than "
                f"PostgreSQL's "
                f"{MAX_IDENT} characters; use shorter store or dataset names")


def relations(layout: DatasetLayout) -> list[str]:
    return [f'"{layout.schema}"."{history_view(layout)}"'] if layout.mode == FORENSIC else []


def _open_end() -> sql.Composable:
    return sql.Literal(OPEN_END)


def history_columns(layout: DatasetLayout, stream: str) -> tuple[list[tuple[str, sql.Composable]], sql.Composable]:
    """The history view's (name, expression) columns and its FROM clause, over the forensic table."""
    t = layout.qualified(layout.table)
    ledger = layout.qualified("ds_batches")
    same_key = sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier("n", k), sql.Identifier("t", k)) for k in layout.key)
    ended_by = sql.SQL(
        "CASE WHEN t.ds_batch_out = {end} THEN NULL::text "
        "WHEN EXISTS (SELECT 1 FROM {t} n WHERE {same_key} AND n.ds_batch_in = t.ds_batch_out) THEN 'update'::text "
        "ELSE 'delete'::text END").format(end=_open_end(), t=t, same_key=same_key)
    columns: list[tuple[str, sql.Composable]] = [(c, sql.Identifier("t", c)) for c in layout.columns]
    columns += [
        ("ds_batch_in", sql.SQL("t.ds_batch_in")),
        ("ds_batch_out", sql.SQL("NULLIF(t.ds_batch_out, {})").format(_open_end())),
        ("valid_from", sql.SQL("bi.snapshot_at")),
        ("valid_to", sql.SQL("bo.snapshot_at")),
        ("is_current", sql.SQL("(t.ds_batch_out = {})").format(_open_end())),
        ("ended_by", ended_by),
    ]
    rest = sql.SQL("FROM {t} t LEFT JOIN {l} bi ON bi.stream = {s} AND bi.batch_id = t.ds_batch_in "
                   "LEFT JOIN {l} bo ON bo.stream = {s} AND bo.batch_id = t.ds_batch_out").format(
        t=t, l=ledger, s=sql.Literal(stream))
    return columns, rest


def _select(columns: list[str], alias: str) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, c) for c in columns)


def ensure(conn: PgConnection, layout: DatasetLayout, store: Store) -> bool:
    """Create or evolve the dataset's history view and as-of functions (the caller's transaction;
    after its `_current` view). True if anything changed."""
    if layout.mode != FORENSIC:
        return False
    check_names(layout)
    stream = stream_key(store, layout.dataset.name)
    columns, rest = history_columns(layout, stream)
    changed = objects.ensure_view(conn, layout.schema, history_view(layout), columns, rest)
    cols = objects.view_columns(conn, layout.schema, layout.view)  # the result's columns: the _current view's order
    returns = layout.qualified(layout.view)
    t, ledger = layout.qualified(layout.table), layout.qualified("ds_batches")
    body = sql.SQL("SELECT {cols} FROM {t} t WHERE t.ds_batch_out > $1 AND t.ds_batch_in <= $1 AND EXISTS "
                   "(SELECT 1 FROM {l} b WHERE b.stream = {s} AND b.batch_id = $1 AND b.status = 'committed')"
                   ).format(cols=_select(cols, "t"), t=t, l=ledger, s=sql.Literal(stream))
    changed |= objects.ensure_function(conn, layout.schema, as_of_batch_function(layout), ("batch", "integer"), returns,
                                       body, public=True)
    latest = sql.SQL("(SELECT max(b.batch_id) FROM {l} b WHERE b.stream = {s} AND b.status = 'committed' "
                     "AND b.snapshot_at <= $1)").format(l=ledger, s=sql.Literal(stream))
    body = sql.SQL("SELECT {cols} FROM {t} t WHERE t.ds_batch_out > {b} AND t.ds_batch_in <= {b}").format(
        cols=_select(cols, "t"), t=t, b=latest)
    changed |= objects.ensure_function(conn, layout.schema, as_of_function(layout), ("at", "timestamptz"), returns,
                                       body, public=True)
    return changed
