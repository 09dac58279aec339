"""A change batch's staging: the change table, and each dataset's net change per key.

The change table holds every change row of the batch in commit order (`seq`), for all the store's datasets:
the dataset's index, the operation (I, U, D, or T for a truncate), the 1-based positions of values an
UPDATE left out (unchanged TOASTed values) and the values as the source's text. Its values are cast with
each column's type on the way into the net changes, as COPY's text input would: the same values a snapshot
delivers. The net changes have one row per changed key: its last change, with every left-out value filled in
from the key's earlier changes in the batch or else from its current merged row (in `pg_temp.ds_net`); the
diff (merge/diff.py) then compares them with the current rows exactly as it compares a snapshot.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from psycopg2 import sql

from datasurface.db import PgConnection, idents
from datasurface.errors import DataSurfaceError
from datasurface.merge.layout import DatasetLayout

COPY_COLUMNS = ("seq", "ds", "op", "unchanged", "vals")
NET_TABLE = sql.Identifier("pg_temp", "ds_net")
# up to this many changes of a dataset, its diff reads them straight from the change table (the planner, which
# knows nothing of how many keys they hold, then probes the current rows by key: right for a few)
INLINE_NET_ROWS = 100_000


class UnresolvedValues(DataSurfaceError):
    """Left-out values whose row has no earlier version to take them from: only a snapshot can say them."""


def table_name(schema: str, store: str) -> str:
    digest = hashlib.sha1(f"{schema}.{store}".encode()).hexdigest()[:8]
    return f"ds_changes_{store.lower()[:36]}_{digest}"


def create(conn: PgConnection, schema: str, name: str) -> None:
    target = sql.Identifier(schema, name)
    with conn.cursor() as cur:  # one round trip
        cur.execute(sql.SQL('DROP TABLE IF EXISTS {0}; CREATE UNLOGGED TABLE {0} (seq bigint NOT NULL, ds smallint '
                            'NOT NULL, op "char" NOT NULL, unchanged smallint[], vals text[] NOT NULL)').format(target))


def staged_rows(conn: PgConnection, schema: str, name: str, layouts: list[DatasetLayout]) -> dict[str, int] | None:
    """The change rows per dataset, or None when the table is gone (unlogged data lost in a server crash)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))", (schema, name))
        if cur.fetchone()[0] is None:  # type: ignore[index]
            return None
        cur.execute(sql.SQL("SELECT ds, count(*) FROM {} GROUP BY ds").format(sql.Identifier(schema, name)))
        counts = dict(cur.fetchall())
    return {layout.dataset.name: int(counts.get(i, 0)) for i, layout in enumerate(layouts)}


def drop(conn: PgConnection, schema: str, name: str) -> None:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, name)))


def _typed(layout: DatasetLayout, alias: str) -> list[sql.Composable]:
    """The change row's values as the model's columns: `(vals[i])::type AS name`."""
    return [sql.SQL("({}[{}])::{} AS {}").format(sql.Identifier(alias, "vals"), sql.Literal(i), sql.SQL(c.type),
                                                 sql.Identifier(c.name))
            for i, c in enumerate(layout.dataset.columns, start=1)]


class Net(NamedTuple):
    """A dataset's net changes for the diff: a FROM item of its rows (`pg_temp.ds_net`, or the query that
    makes them), and whether the batch truncated the table (then every current key without a later change is
    gone)."""

    rows: sql.Composable
    truncated: bool


def build_net(conn: PgConnection, layout: DatasetLayout, changes: sql.Composable, index: int,
              current: sql.Composable, count: int) -> Net:
    """The dataset's last change per key after its last truncate (`count`: its change rows). One scan of the
    change table says whether the batch truncated it or left values out; without either, in a batch of up to
    INLINE_NET_ROWS changes (the usual batch), the diff reads the last changes straight from the change table,
    and probes the current rows of their keys. Otherwise they are made into `pg_temp.ds_net` first, filled in,
    analysed (the planner then sees how many there are, and joins many by hash) and, after a truncate, read
    twice."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT max(seq) FILTER (WHERE op = 'T'), bool_or(unchanged IS NOT NULL) FROM {} "
                            "WHERE ds = %s").format(changes), (index,))
        truncated_at, left_out = cur.fetchone()  # type: ignore[misc]
        after = -1 if truncated_at is None else truncated_at
        rows = sql.SQL("(SELECT seq, op, unchanged, {} FROM {} c WHERE c.ds = {} AND c.op <> 'T' AND c.seq > {}) s"
                       ).format(sql.SQL(", ").join(_typed(layout, "c")), changes, sql.Literal(index),
                                sql.Literal(after))
        last = sql.SQL("SELECT DISTINCT ON ({}) op AS _ds_op, unchanged AS _ds_unchanged, {} FROM {} ORDER BY {}, seq "
                       "DESC").format(idents(layout.key), idents(layout.columns), rows, idents(layout.key))
        if truncated_at is None and not left_out and count <= INLINE_NET_ROWS:
            return Net(sql.SQL("({})").format(last), False)
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(NET_TABLE))
        cur.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS {}").format(NET_TABLE, last))
        if left_out:
            cur.execute(sql.SQL("SELECT DISTINCT unnest(_ds_unchanged) FROM {}").format(NET_TABLE))
            positions = sorted(r[0] for r in cur.fetchall())
            for position in positions:
                _fill(cur, layout, position, rows, current)
            cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE _ds_op <> 'D' AND cardinality(_ds_unchanged) > 0")
                        .format(NET_TABLE))
            unresolved = cur.fetchone()[0]  # type: ignore[index]
            if unresolved:
                raise UnresolvedValues(f"{unresolved} changed row(s) of {layout.dataset.name} left out values that no "
                                       "earlier version of the row holds")
        cur.execute(sql.SQL("ANALYZE {}").format(NET_TABLE))
    return Net(NET_TABLE, truncated_at is not None)


def _fill(cur: object, layout: DatasetLayout, position: int, rows: sql.Composable, current: sql.Composable) -> None:
    """Fill column `position` where the last change left it out: from the key's latest change in the batch
    that has it, else from the current merged row."""
    column = sql.Identifier(layout.dataset.columns[position - 1].name)
    flag = sql.Literal(position)
    match = sql.SQL(" AND ").join(sql.SQL("n.{k} = p.{k}").format(k=sql.Identifier(k)) for k in layout.key)
    earlier = sql.SQL(
        "(SELECT DISTINCT ON ({key}) {key}, {col} FROM {rows} WHERE s.op IN ('I', 'U') "
        "AND NOT coalesce(s.unchanged @> ARRAY[{flag}::smallint], false) ORDER BY {key}, s.seq DESC) p").format(
        key=idents(layout.key), col=column, rows=rows, flag=flag)
    for source in (earlier, sql.SQL("{} p").format(current)):
        cur.execute(sql.SQL(  # type: ignore[attr-defined]
            "UPDATE {net} n SET {col} = p.{col}, _ds_unchanged = array_remove(n._ds_unchanged, {flag}::smallint) "
            "FROM {source} WHERE {match} AND n._ds_unchanged @> ARRAY[{flag}::smallint]").format(
            net=NET_TABLE, col=column, flag=flag, source=source, match=match))
