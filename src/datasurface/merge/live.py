"""The live merge: the table holds exactly the snapshot's rows; `ds_batch_id` is the batch that last
inserted or changed a row."""

from __future__ import annotations

from psycopg2 import sql

from datasurface.db import PgConnection
from datasurface.faults import killpoint
from datasurface.merge.diff import (
    compute_diff,
    diff_rows,
    drop_diff,
    duplicates_refused,
    key_match,
    keyed_apply,
    refresh_stats,
)
from datasurface.merge.layout import DatasetLayout
from datasurface.merge.ledger import Counts


def _ids(names: tuple[str, ...]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


class LiveMerge:
    def __init__(self, conn: PgConnection, lay: DatasetLayout):
        self.conn = conn
        self.lay = lay

    def apply(self, batch_id: int, snapshot_rows: int) -> Counts:
        lay, target = self.lay, self.lay.qualified(self.lay.table)
        counts = compute_diff(self.conn, lay, snapshot_rows)
        killpoint(f"merge:{lay.dataset.name}:diffed")
        with keyed_apply(self.conn), self.conn.cursor() as cur:
            if counts.deleted:
                cur.execute(sql.SQL("DELETE FROM {} t USING {} WHERE {}").format(
                    target, diff_rows(("D",)), key_match(lay, "t", "d")))
            if counts.updated:
                sets = sql.SQL(", ").join(
                    sql.SQL("{} = {}").format(sql.Identifier(c), sql.Identifier("d", c)) for c in lay.values)
                cur.execute(sql.SQL("UPDATE {} t SET {}, ds_batch_id = {} FROM {} WHERE {}").format(
                    target, sets, sql.Literal(batch_id), diff_rows(("U",)), key_match(lay, "t", "d")))
            killpoint(f"merge:{lay.dataset.name}:changed")
            if counts.inserted:
                with duplicates_refused(lay):
                    cur.execute(sql.SQL("INSERT INTO {} ({}, ds_batch_id) SELECT {}, {} FROM {}").format(
                        target, _ids(lay.columns), _ids(lay.columns), sql.Literal(batch_id), diff_rows(("I",))))
        refresh_stats(self.conn, lay, counts)
        drop_diff(self.conn)
        return counts
